//! One ingest request from raw body to valid readings and a per-index report
//! of the refused ones.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::body::{BodyCaps, BodyError, BodyFormat, split_readings};
use super::reading::{Reading, reject_duplicate_ids, validate};
use super::rejection::{RejectReason, Rejection};

/// A refused reading, by its position in the request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RejectedReading {
    pub index: usize,
    pub reason: RejectReason,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct ParsedRequest {
    pub readings: Vec<Reading>,
    pub rejected: Vec<RejectedReading>,
}

/// Splits and validates a decoded body for the authenticated `device_id`.
pub fn parse_request(
    body: &[u8],
    format: BodyFormat,
    device_id: &str,
    caps: &BodyCaps,
    now: DateTime<Utc>,
) -> Result<ParsedRequest, BodyError> {
    let mut results: Vec<Result<Reading, Rejection>> = split_readings(body, format, caps)?
        .into_iter()
        .map(|item| item.and_then(|value| validate(value, device_id, caps, now)))
        .collect();
    reject_duplicate_ids(&mut results);
    let mut parsed = ParsedRequest::default();
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(reading) => parsed.readings.push(reading),
            Err(rejection) => parsed.rejected.push(RejectedReading {
                index,
                reason: rejection.reason,
                message: rejection.message,
            }),
        }
    }
    Ok(parsed)
}
