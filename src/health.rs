//! Whether the table can be written: set by the batch writer, read by `/readyz`, the
//! ingest route (503 while unwritable) and the metrics scrape.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the table can be written, shared by the writer, `/readyz` and the ingest route.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    unwritable: Mutex<Option<Unwritable>>,
}

#[derive(Debug, Clone)]
struct Unwritable {
    since: Instant,
    error_class: String,
    logged_at: Instant,
}

/// While the table stays unwritable, its error is logged at most this often.
const UNWRITABLE_LOG_EVERY: Duration = Duration::from_secs(60);

impl WriteHealth {
    /// Whether the table has been refusing writes permanently (since the last success).
    pub(crate) fn is_unwritable(&self) -> bool {
        self.lock().is_some()
    }

    /// A write failed in a way retrying the same thing cannot fix. Logged at ERROR when
    /// the state begins, when the error class changes, and then once a minute.
    pub(crate) fn failing(
        &self,
        class: Option<&str>,
        err: &dyn std::fmt::Display,
        what: &str,
        rows: usize,
    ) {
        let class = class.unwrap_or("UNKNOWN").to_owned();
        let now = Instant::now();
        let mut state = self.lock();
        let log = match state.as_mut() {
            None => {
                *state = Some(Unwritable {
                    since: now,
                    error_class: class.clone(),
                    logged_at: now,
                });
                true
            }
            Some(current) => {
                let due = current.error_class != class
                    || now.duration_since(current.logged_at) >= UNWRITABLE_LOG_EVERY;
                if due {
                    current.error_class = class.clone();
                    current.logged_at = now;
                }
                due
            }
        };
        drop(state);
        if log {
            tracing::error!(error_code = %class, error = %err, rows, "{what}; the rows are kept and retried");
        } else {
            tracing::debug!(error_code = %class, rows, "{what}; retrying");
        }
    }

    pub(crate) fn recovered(&self) {
        if let Some(was) = self.lock().take() {
            tracing::info!(
                after = ?was.since.elapsed(),
                error_code = %was.error_class,
                "the table takes writes again"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Unwritable>> {
        self.unwritable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
