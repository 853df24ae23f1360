//! Forwarding what a spool holds: the oldest records first, as one batch upstream, and
//! off the spool only once the upstream has committed them. Shared by the device agent
//! (`send.rs`) and the site relay (`lakegate relay`), so both keep one rule: a record
//! leaves the spool after the upstream's 200, never before.

use std::io;
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use crate::spool::{Spool, SpoolError};
use crate::upstream::{Refused, Upstream};

/// Bytes of records taken from the spool for one batch, at most.
const SPOOL_READ_BYTES: u64 = 4 * 1024 * 1024;

/// What one step of forwarding did.
#[derive(Debug)]
pub enum Forwarded {
    /// The spool holds nothing.
    Nothing,
    /// A batch was committed upstream and is off the spool.
    Batch {
        readings: Vec<Value>,
        /// Readings the upstream refused for good (by index in `readings`): retrying
        /// cannot fix them.
        refused: Vec<Refused>,
        /// Records that were not readings (only a bug or a hand-edited spool makes one).
        unreadable: usize,
    },
    /// The upstream did not commit the batch: it stays spooled, first in line.
    NotTaken { why: String },
}

/// Sends the oldest spooled readings (up to `batch` records a request, each record a
/// reading or an array of readings) and removes them from the spool once committed.
/// With `lanes` > 1, up to `lanes` requests go at once, each for its own devices, so
/// that every device's readings still arrive in order. Retries within `deadline`
/// (`None`: one attempt, a few immediate ones for readings over their device's rate
/// excepted).
pub async fn forward_next(
    upstream: &Upstream,
    spool: &Arc<Spool>,
    batch: usize,
    lanes: usize,
    deadline: Option<Instant>,
) -> Result<Forwarded, SpoolError> {
    let batch = batch.max(1);
    let records = batch * lanes.max(1);
    let pending =
        on_blocking_thread(spool, move |spool| spool.peek(records, SPOOL_READ_BYTES)).await?;
    if pending.records.is_empty() {
        return Ok(Forwarded::Nothing);
    }
    let (readings, unreadable) = readings_of(&pending.records);
    // Each lane sends its requests one after another; the lanes go at once.
    let answers = join_all(by_device(&readings, lanes).into_iter().map(|lane| {
        let readings = &readings;
        async move {
            let mut refused = Vec::new();
            for indices in lane.chunks(batch) {
                let part: Vec<Value> = indices.iter().map(|&i| readings[i].clone()).collect();
                let settled = upstream.deliver_retrying(&part, deadline).await?;
                // Readings still over their device's rate at the deadline: the whole
                // batch stays first in line (what was committed is written once again).
                if settled.iter().any(Refused::is_transient) {
                    return Err(
                        "readings over their device's rate; the batch goes again".to_owned()
                    );
                }
                refused.extend(settled.into_iter().map(|r| Refused {
                    index: indices[r.index],
                    ..r
                }));
            }
            Ok(refused)
        }
    }))
    .await;
    let mut refused = Vec::new();
    for answer in answers {
        match answer {
            Ok(lane) => refused.extend(lane),
            Err(why) => return Ok(Forwarded::NotTaken { why }),
        }
    }
    refused.sort_by_key(|r| r.index);
    let (end, taken) = (pending.end, pending.records.len() as u64);
    on_blocking_thread(spool, move |spool| spool.commit(end, taken)).await?;
    Ok(Forwarded::Batch {
        readings,
        refused,
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
