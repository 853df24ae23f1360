//! Forwarding what a spool holds: the oldest records first, as one batch upstream, and
//! off the spool only once the upstream has committed them. Shared by the device agent
//! (`send.rs`) and the site relay (`lakegate relay`), so both keep one rule: a record
//! leaves the spool after the upstream's 200, never before.

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

/// Sends the oldest spooled readings (up to `batch` records, each a reading or an
/// array of readings) and removes them from the spool once committed. Retries within
/// `deadline` (`None`: one attempt, a few immediate ones for readings over their
/// device's rate excepted).
pub async fn forward_next(
    upstream: &Upstream,
    spool: &Spool,
    batch: usize,
    deadline: Option<Instant>,
) -> Result<Forwarded, SpoolError> {
    let pending = spool.peek(batch.max(1), SPOOL_READ_BYTES)?;
    if pending.records.is_empty() {
        return Ok(Forwarded::Nothing);
    }
    let (readings, unreadable) = readings_of(&pending.records);
    if !readings.is_empty() {
        match upstream.deliver_retrying(&readings, deadline).await {
            // Readings still over their device's rate at the deadline: the whole batch
            // stays first in line (what was committed of it is written once again).
            Ok(refused) if refused.iter().any(Refused::is_transient) => {
                return Ok(Forwarded::NotTaken {
                    why: "readings over their device's rate; the batch goes again".to_owned(),
                });
            }
            Ok(refused) => {
                spool.commit(pending.end, pending.records.len() as u64)?;
                return Ok(Forwarded::Batch {
                    readings,
                    refused,
                    unreadable,
                });
            }
            Err(why) => return Ok(Forwarded::NotTaken { why }),
        }
    }
    spool.commit(pending.end, pending.records.len() as u64)?;
    Ok(Forwarded::Batch {
        readings,
        refused: Vec::new(),
        unreadable,
    })
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
}
