//! The spooler: the relay's writer. Takes the rows that queued, turns each reading back
//! into one JSON record and appends them all with one fsync; waiting requests hear 202
//! only once their readings are on disk. An append that fails keeps the rows and tries
//! again: nothing accepted is dropped (the requests waiting meanwhile time out with 503
//! `not_yet_committed` and may resend; repeated readings are written once).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use lakegate_device::{Spool, SpoolError};

use super::state::RelayState;
use crate::ingest::{Submission, Unwritten};
use crate::metrics::Metrics;
use crate::table::TableRow;

/// Submissions appended with one fsync, at most.
const MAX_GROUP: usize = 1024;

/// Wait after a failed append before the next attempt.
const RETRY_APPEND: Duration = Duration::from_millis(500);

/// Runs until `closing` is cancelled and every queued reading is on disk.
pub(crate) async fn spool_loop(
    mut lane: mpsc::UnboundedReceiver<Submission>,
    site: Arc<RelayState>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            next = lane.recv() => next,
            () = closing.cancelled() => lane.try_recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        // Group commit: what queued during the last fsync goes with this one.
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match lane.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let records: Vec<Vec<Vec<u8>>> = group
            .iter()
            .map(|submission| reading_records(&submission.rows))
            .collect();
        let fitted = append_until_done(&site, &metrics, records).await;
        site.appended.notify_one();
        for (submission, fitted) in group.into_iter().zip(fitted) {
            let Some(completion) = submission.completion else {
                continue;
            };
            match fitted {
                true => completion.part_committed(),
                false => completion.part_unwritten(Unwritten::NoRoom),
            }
        }
    }
}

/// Appends each submission's records, the group with one fsync when it fits, else each
/// submission on its own, so that one that cannot fit is refused alone and never holds
/// up the others. Retries a failing disk until it works (it may come back). Says, by
/// submission, whether its records are on disk (`false`: no room for them).
async fn append_until_done(
    site: &Arc<RelayState>,
    metrics: &Metrics,
    records: Vec<Vec<Vec<u8>>>,
) -> Vec<bool> {
    let records = Arc::new(records);
    loop {
        let (spool, group) = (Arc::clone(&site.spool), Arc::clone(&records));
        let appended = tokio::task::spawn_blocking(move || append_group(&spool, &group)).await;
        match appended {
            Ok(Ok(fitted)) => {
                site.spool_failing.store(false, Ordering::Relaxed);
                if fitted.contains(&false) {
                    site.turned_away.store(true, Ordering::Relaxed);
                }
                return fitted;
            }
            Ok(Err(err)) => {
                site.spool_failing.store(true, Ordering::Relaxed);
                tracing::warn!(error = %err, requests = records.len(), "spool append failed; retrying");
            }
            Err(join) => tracing::error!(error = %join, "spool append task failed; retrying"),
        }
        metrics.relay.spool_write_failures.inc();
        tokio::time::sleep(RETRY_APPEND).await;
    }
}

/// The group's records with one write when they fit; when they do not, each
/// submission's on its own, those that do not fit left out.
fn append_group(spool: &Spool, group: &[Vec<Vec<u8>>]) -> Result<Vec<bool>, SpoolError> {
    let all: Vec<&[u8]> = group.iter().flatten().map(Vec::as_slice).collect();
    match spool.append_all(&all) {
        Ok(()) => return Ok(vec![true; group.len()]),
        Err(err) if !does_not_fit(&err) => return Err(err),
        Err(_) if group.len() == 1 => return Ok(vec![false]),
        Err(_) => {}
    }
    group
        .iter()
        .map(|records| {
            let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            match spool.append_all(&payloads) {
                Ok(()) => Ok(true),
                Err(err) if does_not_fit(&err) => Ok(false),
                Err(err) => Err(err),
            }
        })
        .collect()
}

/// A refusal of these records, not a failing disk: retrying them cannot help now.
fn does_not_fit(err: &SpoolError) -> bool {
    matches!(
        err,
        SpoolError::Full { .. } | SpoolError::TooLarge { .. } | SpoolError::Unfit(_)
    )
}

/// One record per reading of one request's rows: a reading's rows are adjacent, one per
/// metric. The record names the device and carries the reading id (given or derived)
/// and the microsecond `ts`, so the upstream writes the same rows the gateway would.
/// Booleans arrive as 1.0 / 0.0, which the table holds for them anyway.
pub(crate) fn reading_records(rows: &[TableRow]) -> Vec<Vec<u8>> {
    let same_reading = |a: &TableRow, b: &TableRow| {
        a.ts_us == b.ts_us && a.reading_id == b.reading_id && a.device_id == b.device_id
    };
    rows.chunk_by(same_reading)
        .map(|reading| {
            let first = &reading[0];
            let metrics: Map<String, Value> = reading
                .iter()
                .map(|row| {
                    let value = match (&row.value, &row.value_str) {
                        (Some(number), _) => json!(number),
                        (None, Some(text)) => json!(text),
                        (None, None) => Value::Null,
                    };
                    (row.metric.clone(), value)
                })
                .collect();
            let ts = DateTime::from_timestamp_micros(first.ts_us)
                .expect("validated timestamps")
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            let record = json!({
                "device_id": &*first.device_id,
                "id": &*first.reading_id,
                "ts": ts,
                "metrics": metrics,
            });
            serde_json::to_vec(&record).expect("JSON values serialize")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, id: &str, ts_us: i64, metric: &str, value: Value) -> TableRow {
        TableRow {
            device_id: device.into(),
            reading_id: id.into(),
            ts_us,
            metric: metric.into(),
            value: value.as_f64(),
            value_str: value.as_str().map(str::to_owned),
        }
    }

    #[test]
    fn each_reading_becomes_one_record_with_its_identity() {
        let rows = [
            row("pump-7", "r1", 1_764_000_000_123_456, "flow", json!(2.5)),
            row("pump-7", "r1", 1_764_000_000_123_456, "state", json!("on")),
            // The same id a microsecond later is another reading.
            row("pump-7", "r1", 1_764_000_000_123_457, "flow", json!(3.0)),
            row("line-3", "r1", 1_764_000_000_123_457, "flow", json!(1.0)),
        ];
        let records: Vec<Value> = reading_records(&rows)
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            json!({"device_id": "pump-7", "id": "r1", "ts": "2025-11-24T16:00:00.123456Z",
                   "metrics": {"flow": 2.5, "state": "on"}})
        );
        assert_eq!(records[1]["ts"], "2025-11-24T16:00:00.123457Z");
        assert_eq!(records[2]["device_id"], "line-3");
    }
}
