//! Forwarding what a spool holds: the oldest records first, as one batch upstream, and
//! off the spool only once the upstream has committed them. Shared by the device agent
//! (`send.rs`) and the site relay (`lakegate relay`), so both keep one rule: a record
//! leaves the spool after the upstream's 200, never before.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use crate::spool::{Spool, SpoolError};
use crate::upstream::{Refused, Settled, Upstream};

/// How long a device over its rate is held back when the upstream named no time.
const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);

/// Bytes of records taken from the spool for one batch, at most.
const SPOOL_READ_BYTES: u64 = 4 * 1024 * 1024;

/// What one step of forwarding did.
#[derive(Debug)]
pub enum Forwarded {
    /// The spool holds nothing.
    Nothing,
    /// The upstream took (or refused for good) some of the oldest readings: they are off
    /// the spool; the ones it did not take were appended to the spool again, to go later.
    Batch {
        readings: Vec<Value>,
        /// Readings the upstream refused for good (by index in `readings`): retrying
        /// cannot fix them.
        refused: Vec<Refused>,
        /// Readings the upstream did not take (yet), kept in the spool.
        left: usize,
        /// Why some were left, and when they may go again if the upstream said.
        why: Option<String>,
        retry_after: Option<Duration>,
        /// Records that were not readings (only a bug or a hand-edited spool makes one).
        unreadable: usize,
    },
    /// The upstream took nothing: the batch stays spooled, first in line.
    NotTaken {
        why: String,
        retry_after: Option<Duration>,
        /// Only because the readings' devices are over their rates: nothing is failing,
        /// the batch goes again at the upstream's pace.
        rate_limited: bool,
    },
}

/// When each device's readings may go upstream again: set when the upstream left some
/// of them over the device's rate, for as long as it asked (`Retry-After`). A forwarder
/// keeps one across steps, so that a device's backlog goes at its own rate while the
/// other devices' readings go at once.
#[derive(Debug, Default)]
pub struct Pacing {
    not_before: HashMap<String, Instant>,
}

impl Pacing {
    /// When `device`'s readings may go again, if not now.
    fn held_until(&self, device: &str, now: Instant) -> Option<Instant> {
        self.not_before.get(device).copied().filter(|&at| at > now)
    }
}

/// Sends the oldest spooled readings (up to `batch` readings a request, each record a
/// reading or an array of readings) and removes them from the spool once the upstream
/// took them. With `lanes` > 1, up to `lanes` requests go at once, each for its own
/// devices, so that every device's readings still arrive in order. Retries within
/// `deadline` (`None`: one attempt).
///
/// What the upstream took is never sent again: when it took only part of the batch (some
/// devices over their rate, one lane failing), the readings it did not take are appended
/// to the spool again and the cursor moves past the whole batch. A crash in between
/// leaves both copies, which the upstream writes once. Readings of a device that
/// `pacing` holds back are not sent this time, but kept the same way.
pub async fn forward_next(
    upstream: &Upstream,
    spool: &Arc<Spool>,
    batch: usize,
    lanes: usize,
    deadline: Option<Instant>,
    pacing: &mut Pacing,
) -> Result<Forwarded, SpoolError> {
    let batch = batch.max(1);
    let records = batch * lanes.max(1);
    let pending =
        on_blocking_thread(spool, move |spool| spool.peek(records, SPOOL_READ_BYTES)).await?;
    if pending.records.is_empty() {
        return Ok(Forwarded::Nothing);
    }
    let (readings, unreadable) = readings_of(&pending.records);
    let now = Instant::now();
    pacing.not_before.retain(|_, at| *at > now);
    let device_of = |reading: &Value| reading["device_id"].as_str().unwrap_or_default().to_owned();
    // Readings of devices held back: kept without a request.
    let mut settled = Settled::default();
    let mut soonest: Option<Instant> = None;
    let mut lanes = by_device(&readings, lanes);
    for lane in &mut lanes {
        lane.retain(
            |&i| match pacing.held_until(&device_of(&readings[i]), now) {
                Some(until) => {
                    settled.left.push(i);
                    settled.rate_limited.push(i);
                    soonest = Some(soonest.map_or(until, |s| s.min(until)));
                    false
                }
                None => true,
            },
        );
    }
    // Each lane sends its requests one after another; the lanes go at once.
    let sent = join_all(lanes.into_iter().map(|lane| {
        let readings = &readings;
        async move {
            let mut settled = Settled::default();
            let mut failed = false;
            for indices in lane.chunks(batch) {
                if failed {
                    // The lane's earlier part was not taken: keep its devices' order.
                    settled.left.extend_from_slice(indices);
                    continue;
                }
                let part: Vec<Value> = indices.iter().map(|&i| readings[i].clone()).collect();
                let outcome = upstream.deliver_paced(&part, deadline).await;
                failed =
                    outcome.took_nothing(part.len()) && outcome.rate_limited.len() < part.len();
                settled.merge(outcome, indices);
            }
            settled
        }
    }))
    .await;
    let identity: Vec<usize> = (0..readings.len()).collect();
    let mut newly_limited = Vec::new();
    for lane in sent {
        newly_limited.extend(lane.rate_limited.iter().copied());
        settled.merge(lane, &identity);
    }
    let pause = settled.retry_after.unwrap_or(RATE_LIMITED_PAUSE);
    for &i in &newly_limited {
        pacing
            .not_before
            .insert(device_of(&readings[i]), now + pause);
        soonest = Some(soonest.map_or(now + pause, |s| s.min(now + pause)));
    }
    if let Some(until) = soonest {
        // When the first device held back may go again.
        let wait = until.saturating_duration_since(Instant::now());
        settled.retry_after = Some(settled.retry_after.map_or(wait, |w| w.min(wait)));
    }
    if !readings.is_empty() && settled.took_nothing(readings.len()) {
        return Ok(Forwarded::NotTaken {
            rate_limited: settled.rate_limited.len() == readings.len(),
            why: settled
                .why
                .unwrap_or_else(|| "the upstream took nothing".to_owned()),
            retry_after: settled.retry_after,
        });
    }
    settled.refused.sort_by_key(|r| r.index);
    settled.left.sort_unstable();
    let keep: Vec<Vec<u8>> = settled
        .left
        .iter()
        .map(|&i| serde_json::to_vec(&readings[i]).expect("JSON values serialize"))
        .collect();
    let (end, taken) = (pending.end, pending.records.len() as u64);
    on_blocking_thread(spool, move |spool| {
        let keep: Vec<&[u8]> = keep.iter().map(Vec::as_slice).collect();
        spool.commit_keeping(end, taken, &keep)
    })
    .await?;
    Ok(Forwarded::Batch {
        left: settled.left.len(),
        readings,
        refused: settled.refused,
        why: settled.why,
        retry_after: settled.retry_after,
        unreadable,
    })
}

/// Runs a spool's file work on the runtime's blocking threads: reading megabytes of
/// records or syncing the cursor would otherwise hold up every task on the worker (a
/// relay's requests among them). Dropped midway, the work still finishes.
async fn on_blocking_thread<T: Send + 'static>(
    spool: &Arc<Spool>,
    work: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    let shared = Arc::clone(spool);
    match tokio::task::spawn_blocking(move || work(&shared)).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(SpoolError::Io {
            path: spool.dir().to_path_buf(),
            source: io::Error::other("the runtime is shutting down"),
        }),
    }
}

/// Splits readings (by index) into `lanes` lanes, each device's readings in one lane,
/// in their order.
fn by_device(readings: &[Value], lanes: usize) -> Vec<Vec<usize>> {
    let lanes = lanes.max(1);
    let mut by_lane: Vec<Vec<usize>> = vec![Vec::new(); lanes];
    for (index, reading) in readings.iter().enumerate() {
        let device = reading["device_id"].as_str().unwrap_or_default();
        let lane = device.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        by_lane[lane % lanes].push(index);
    }
    by_lane.retain(|lane| !lane.is_empty());
    by_lane
}

/// The readings in spooled records, and how many records are not readings.
fn readings_of(records: &[Vec<u8>]) -> (Vec<Value>, usize) {
    let mut readings = Vec::with_capacity(records.len());
    let mut unreadable = 0;
    for record in records {
        match serde_json::from_slice::<Value>(record) {
            Ok(Value::Array(batch)) => readings.extend(batch),
            Ok(reading @ Value::Object(_)) => readings.push(reading),
            // Only we write records, each checked by its CRC.
            _ => unreadable += 1,
        }
    }
    (readings, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_hold_a_reading_or_an_array_of_them() {
        let records = vec![
            br#"{"id": "a"}"#.to_vec(),
            br#"[{"id": "b"}, {"id": "c"}]"#.to_vec(),
            b"not json".to_vec(),
            b"42".to_vec(),
        ];
        let (readings, unreadable) = readings_of(&records);
        let ids: Vec<&str> = readings.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(unreadable, 2);
    }

    #[test]
    fn each_devices_readings_stay_in_one_lane_in_order() {
        let readings: Vec<Value> = (0..40)
            .map(|n| serde_json::json!({"device_id": format!("d-{}", n % 5), "n": n}))
            .collect();
        let lanes = by_device(&readings, 3);
        assert!(lanes.len() <= 3);
        assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), 40);
        for device in 0..5 {
            let name = format!("d-{device}");
            let holding: Vec<&Vec<usize>> = lanes
                .iter()
                .filter(|lane| lane.iter().any(|&i| readings[i]["device_id"] == *name))
                .collect();
            assert_eq!(holding.len(), 1, "{name} in one lane");
            let order: Vec<usize> = holding[0]
                .iter()
                .copied()
                .filter(|&i| readings[i]["device_id"] == *name)
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{name} in order");
        }
    }
}
