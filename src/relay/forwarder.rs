//! The forwarder: the spool's oldest readings upstream until the relay stops, in up to
//! `LAKEGATE_RELAY_LANES` requests at once, each device's readings in one lane (so in
//! order). A batch leaves the spool only once the upstream committed it; what the
//! upstream did not take is tried again with backoff (honouring `Retry-After`), and
//! readings it refused for good are kept in `refused.ndjson` beside the spool and logged.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lakegate_device::{Forwarded, Pacing, forward_next};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::RelayState;
use crate::databricks::RetryPolicy;
use crate::metrics::Metrics;

/// How long one batch may keep retrying (honouring `Retry-After`) before the forwarder
/// counts a failure and backs off.
const ATTEMPT_WINDOW: Duration = Duration::from_secs(5);

/// Longest wait between attempts while the upstream does not commit.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Wait before readings left over their device's rate go again, when the upstream named
/// no time.
const RATE_LIMITED_PACE: Duration = Duration::from_secs(1);

/// How often an idle forwarder looks at the spool without being woken.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Forwards until `stop` is cancelled. A batch in flight then is dropped: it stays
/// spooled and goes again on the next start (the upstream writes it once).
pub(crate) async fn forward_loop(
    site: Arc<RelayState>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let policy = RetryPolicy::batch_writes();
    let mut schedule = policy.schedule();
    let mut pacing = Pacing::default();
    loop {
        let step = tokio::select! {
            () = stop.cancelled() => return,
            step = forward_next(
                &site.upstream,
                &site.spool,
                site.batch,
                site.lanes,
                Some(Instant::now() + ATTEMPT_WINDOW),
                &mut pacing,
            ) => step,
        };
        let wait = match step {
            Ok(Forwarded::Nothing) => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = site.appended.notified() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            Ok(Forwarded::Batch {
                readings,
                refused,
                left,
                why,
                retry_after,
                unreadable,
            }) => {
                let taken = readings.len().saturating_sub(refused.len() + left);
                if site.forwarding_worked() {
                    tracing::info!("the upstream takes readings again");
                }
                schedule = policy.schedule();
                site.turned_away.store(false, Ordering::Relaxed);
                metrics.relay.forwarded.inc_by(taken as u64);
                if unreadable > 0 {
                    tracing::error!(
                        records = unreadable,
                        "spooled records that are not readings were skipped"
                    );
                }
                if !refused.is_empty() {
                    keep_refused(&site, &metrics, &readings, &refused);
                }
                if left == 0 {
                    continue;
                }
                // Readings the upstream did not take (their devices over their rates):
                // back on the spool; pace them to what the upstream asked.
                tracing::debug!(
                    left,
                    why = why.as_deref().unwrap_or_default(),
                    "readings left for later"
                );
                Some(retry_after.unwrap_or(RATE_LIMITED_PACE))
            }
            Ok(Forwarded::NotTaken {
                retry_after,
                rate_limited: true,
                ..
            }) => Some(retry_after.unwrap_or(RATE_LIMITED_PACE)),
            Ok(Forwarded::NotTaken {
                why, retry_after, ..
            }) => {
                metrics.relay.upstream_failures.inc();
                let failing_for = site.forwarding_failed();
                tracing::warn!(%why, ?failing_for, "the upstream did not take a batch; it stays spooled");
                schedule.next_wait(failing_for, retry_after)
            }
            Err(err) => {
                tracing::error!(error = %err, "the spool cannot be read; retrying");
                schedule.next_wait(Duration::ZERO, None)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait.unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)) => {}
        }
    }
}

/// Readings the upstream refused for good (a device it does not know, one the relay may
/// not speak for, a disabled device): appended to `refused.ndjson` in the spool
/// directory with why, counted and logged, so that an operator can act and resend.
fn keep_refused(
    site: &RelayState,
    metrics: &Metrics,
    readings: &[Value],
    refused: &[lakegate_device::Refused],
) {
    metrics.relay.refused_upstream.inc_by(refused.len() as u64);
    let mut lines = Vec::new();
    for refusal in refused {
        let reading = readings.get(refusal.index).cloned().unwrap_or(Value::Null);
        let device_id = reading["device_id"].as_str().unwrap_or_default();
        if site
            .admission
            .upstream_refused(device_id, &refusal.reason, &refusal.message)
        {
            tracing::warn!(
                device_id,
                reason = %refusal.reason,
                "the upstream refuses this device's readings; the relay takes none until its registry is reloaded"
            );
        }
        tracing::warn!(
            device_id = reading["device_id"].as_str().unwrap_or_default(),
            reading_id = reading["id"].as_str().unwrap_or_default(),
            reason = %refusal.reason,
            message = %refusal.message,
            "the upstream refused a reading for good; it is kept in refused.ndjson"
        );
        let line =
            json!({"reason": refusal.reason, "message": refusal.message, "reading": reading});
        lines.extend_from_slice(line.to_string().as_bytes());
        lines.push(b'\n');
    }
    let dir = site.spool.dir();
    // Bounded: beyond its share of the spool's budget, the file becomes refused.ndjson.1
    // and the one before that goes (counted).
    let cap = site.refused_cap;
    match rotate_if_full(dir, cap, lines.len() as u64) {
        Ok(0) => {}
        Ok(discarded) => {
            metrics.relay.refused_discarded.inc_by(discarded);
            tracing::warn!(
                discarded,
                "refused.ndjson reached its bound; the oldest refused readings were let go"
            );
        }
        Err(err) => tracing::error!(error = %err, "cannot rotate refused.ndjson"),
    }
    let path = dir.join("refused.ndjson");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(&lines).and_then(|()| file.sync_data()));
    if let Err(err) = written {
        tracing::error!(error = %err, path = %path.display(), "cannot keep refused readings");
    }
}

/// When `more` bytes would take `refused.ndjson` past `cap`, moves it to
/// `refused.ndjson.1` (replacing the one there); returns how many readings that let go.
fn rotate_if_full(dir: &std::path::Path, cap: u64, more: u64) -> std::io::Result<u64> {
    let current = dir.join("refused.ndjson");
    let len = match std::fs::metadata(&current) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    if len + more <= cap {
        return Ok(0);
    }
    let previous = dir.join("refused.ndjson.1");
    let discarded = match std::fs::read(&previous) {
        Ok(bytes) => bytes.iter().filter(|&&b| b == b'\n').count() as u64,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err),
    };
    std::fs::rename(&current, &previous)?;
    Ok(discarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_readings_rotate_once_at_their_bound_and_what_goes_is_counted() {
        let temp = lakegate_testkit::temp_dir();
        let dir = temp.path();
        let current = dir.join("refused.ndjson");
        std::fs::write(&current, "{\"a\":1}\n{\"a\":2}\n").unwrap();
        // Fits: nothing moves.
        assert_eq!(rotate_if_full(dir, 100, 10).unwrap(), 0);
        // Would pass the bound: the file becomes .1, nothing was there to let go.
        assert_eq!(rotate_if_full(dir, 20, 10).unwrap(), 0);
        assert!(!current.exists());
        std::fs::write(&current, "{\"a\":3}\n").unwrap();
        // Again: the two readings in .1 are let go, and counted.
        assert_eq!(rotate_if_full(dir, 8, 10).unwrap(), 2);
        let kept = std::fs::read_to_string(dir.join("refused.ndjson.1")).unwrap();
        assert_eq!(kept, "{\"a\":3}\n");
    }
}
