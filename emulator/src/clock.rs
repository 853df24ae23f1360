//! Time helpers shared by the stores.

use std::time::{Duration, Instant};

/// An instant no test outlives, for durations too long to add to `now`.
pub(crate) fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600))
        .unwrap_or(now)
}
