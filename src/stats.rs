//! What the running gateway has seen, kept in memory for `GET /api/stats` and the
//! devices list: rejections per device, the accepted rate over the last minute and
//! batch latencies. Prometheus counters stay in `metrics`; this holds what they can't
//! answer cheaply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Devices whose rejections are counted one by one; the registry bounds the devices
/// that can send at all, this bounds the memory if it is huge.
const MAX_TRACKED_DEVICES: usize = 10_000;

pub(crate) struct GatewayStats {
    started: Instant,
    rejected_by_device: Mutex<HashMap<Arc<str>, u64>>,
    accepted: Mutex<MinuteWindow>,
    batches: Mutex<BatchLatency>,
    /// Since when batch writes have been failing (none committed since); `None` when healthy.
    failing_since: Mutex<Option<Instant>>,
}

/// Latencies of committed batch statements.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct BatchLatency {
    pub committed: u64,
    pub total: Duration,
    pub last: Duration,
}

impl Default for GatewayStats {
    fn default() -> Self {
        GatewayStats {
            started: Instant::now(),
            rejected_by_device: Mutex::default(),
            accepted: Mutex::default(),
            batches: Mutex::default(),
            failing_since: Mutex::default(),
        }
    }
}

impl GatewayStats {
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub(crate) fn accepted(&self, readings: u64) {
        let second = self.second();
        lock(&self.accepted).add(second, readings);
    }

    /// Readings accepted per second, averaged over the last 60 seconds, to 0.01 (one
    /// reading in the minute is 0.0167/s; more digits would only be the division's).
    pub(crate) fn accepted_per_sec(&self) -> f64 {
        round_to(lock(&self.accepted).per_sec(self.second()), 2)
    }

    pub(crate) fn rejected(&self, device_id: &Arc<str>) {
        let mut counts = lock(&self.rejected_by_device);
        if let Some(count) = counts.get_mut(device_id) {
            *count += 1;
        } else if counts.len() < MAX_TRACKED_DEVICES {
            counts.insert(device_id.clone(), 1);
        }
    }

    pub(crate) fn rejected_by(&self, device_id: &str) -> u64 {
        lock(&self.rejected_by_device)
            .get(device_id)
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn batch_committed(&self, latency: Duration) {
        let mut batches = lock(&self.batches);
        batches.committed += 1;
        batches.total += latency;
        batches.last = latency;
        *lock(&self.failing_since) = None;
    }

    pub(crate) fn batch_failed(&self) {
        lock(&self.failing_since).get_or_insert_with(Instant::now);
    }

    /// How long batch writes have been failing without one committing.
    pub(crate) fn writes_failing_for(&self) -> Option<Duration> {
        lock(&self.failing_since).map(|since| since.elapsed())
    }

    pub(crate) fn batch_latency(&self) -> BatchLatency {
        *lock(&self.batches)
    }
}

impl BatchLatency {
    /// The mean latency in milliseconds to 0.1 ms (0 before the first batch).
    pub(crate) fn avg_ms(&self) -> f64 {
        match self.committed {
            0 => 0.0,
            n => round_to(self.total.as_secs_f64() * 1000.0 / n as f64, 1),
        }
    }

    /// The last batch's latency in whole milliseconds.
    pub(crate) fn last_ms(&self) -> f64 {
        round_to(self.last.as_secs_f64() * 1000.0, 0)
    }
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Counters are plain numbers, so a panic elsewhere cannot leave them inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const WINDOW_SECS: u64 = 60;

/// Counts of the last 60 seconds, one slot per second, reused as time moves on.
struct MinuteWindow {
    /// (second the slot counts, count) at index second % 60.
    slots: [(u64, u64); WINDOW_SECS as usize],
}

impl Default for MinuteWindow {
    fn default() -> Self {
        MinuteWindow {
            slots: [(0, 0); WINDOW_SECS as usize],
        }
    }
}

impl MinuteWindow {
    fn add(&mut self, second: u64, count: u64) {
        let slot = &mut self.slots[(second % WINDOW_SECS) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += count;
    }

    fn per_sec(&self, now: u64) -> f64 {
        let since = now.saturating_sub(WINDOW_SECS - 1);
        let total: u64 = self
            .slots
            .iter()
            .filter(|(second, _)| (since..=now).contains(second))
            .map(|(_, count)| count)
            .sum();
        total as f64 / WINDOW_SECS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_window_forgets_what_is_older_than_a_minute() {
        let mut window = MinuteWindow::default();
        window.add(0, 60);
        window.add(30, 60);
        window.add(30, 60);
        assert_eq!(window.per_sec(30), 3.0);
        assert_eq!(window.per_sec(59), 3.0);
        assert_eq!(window.per_sec(60), 2.0);
        // Second 60 reuses second 0's slot.
        window.add(60, 6);
        assert_eq!(window.per_sec(60), 2.1);
        assert_eq!(window.per_sec(90), 0.1);
        assert_eq!(window.per_sec(200), 0.0);
    }

    #[test]
    fn rejections_are_counted_per_device_up_to_the_cap() {
        let stats = GatewayStats::default();
        let pump: Arc<str> = "pump-7".into();
        stats.rejected(&pump);
        stats.rejected(&pump);
        assert_eq!(stats.rejected_by("pump-7"), 2);
        assert_eq!(stats.rejected_by("other"), 0);
        for n in 0..MAX_TRACKED_DEVICES {
            stats.rejected(&Arc::from(format!("d-{n}")));
        }
        assert_eq!(
            stats.rejected_by(&format!("d-{}", MAX_TRACKED_DEVICES - 2)),
            1
        );
        assert_eq!(
            stats.rejected_by(&format!("d-{}", MAX_TRACKED_DEVICES - 1)),
            0
        );
        stats.rejected(&pump);
        assert_eq!(stats.rejected_by("pump-7"), 3);
    }

    #[test]
    fn batch_latency_keeps_total_and_last() {
        let stats = GatewayStats::default();
        stats.batch_committed(Duration::from_millis(30));
        stats.batch_committed(Duration::from_millis(10));
        assert_eq!(
            stats.batch_latency(),
            BatchLatency {
                committed: 2,
                total: Duration::from_millis(40),
                last: Duration::from_millis(10),
            }
        );
    }

    #[test]
    fn latencies_and_rates_are_rounded_for_people() {
        let stats = GatewayStats::default();
        assert_eq!(stats.batch_latency().avg_ms(), 0.0);
        stats.batch_committed(Duration::from_micros(30_456));
        stats.batch_committed(Duration::from_micros(10_123));
        stats.batch_committed(Duration::from_micros(10_000));
        let batches = stats.batch_latency();
        assert_eq!(batches.avg_ms(), 16.9);
        assert_eq!(batches.last_ms(), 10.0);
        stats.accepted(7);
        assert_eq!(stats.accepted_per_sec(), 0.12);
    }
}
