//! One ingest request from raw body to valid readings and a per-index report
//! of the refused ones: from a device, or from a site relay whose readings each name
//! their device.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::body::{BodyCaps, BodyError, BodyFormat, split_readings};
use super::reading::{Reading, reject_duplicate_ids, validate};
use super::rejection::{RejectReason, Rejection, excerpt};
use crate::table::TableRow;

/// A refused reading, by its position in the request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct RejectedReading {
    pub index: usize,
    /// Line protocol's line number (1-based), which its clients report by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub reason: RejectReason,
    pub message: String,
}

#[derive(Debug, Default)]
pub(super) struct ParsedRequest {
    /// The valid readings, each with its position in the request.
    pub readings: Vec<(usize, Reading)>,
    pub rejected: Vec<RejectedReading>,
}

/// Splits and validates a decoded body for the authenticated `device_id`.
pub(super) fn parse_request(
    body: &[u8],
    format: BodyFormat,
    device_id: &Arc<str>,
    caps: &BodyCaps,
    now: DateTime<Utc>,
) -> Result<ParsedRequest, BodyError> {
    parse_with(body, format, caps, now, |value| {
        validate(value, device_id, caps, now)
    })
}

/// Splits and validates a decoded body from a site relay. Every reading must name its
/// device in `device_id`; `resolve` decides from it which device the reading is of (or
/// why the relay may not send it), and the reading is then validated as if that device
/// had sent it, so that its derived id is the same.
pub(super) fn parse_relayed_request(
    body: &[u8],
    format: BodyFormat,
    caps: &BodyCaps,
    now: DateTime<Utc>,
    mut resolve: impl FnMut(&str) -> Result<Arc<str>, Rejection>,
) -> Result<ParsedRequest, BodyError> {
    parse_with(body, format, caps, now, |value| {
        let Value::Object(fields) = &value else {
            return Err(Rejection::not_an_object(&value));
        };
        let device_id = match fields.get("device_id") {
            Some(Value::String(device_id)) => resolve(device_id)?,
            None | Some(Value::Null) => {
                return Err(Rejection::new(
                    RejectReason::MissingDeviceId,
                    "device_id is missing: a reading sent by a relay names its device",
                ));
            }
            Some(other) => {
                return Err(Rejection::new(
                    RejectReason::MissingDeviceId,
                    format!(
                        "device_id must be a string naming the device, found {}",
                        super::rejection::type_name(other)
                    ),
                ));
            }
        };
        validate(value, &device_id, caps, now)
    })
}

fn parse_with(
    body: &[u8],
    format: BodyFormat,
    caps: &BodyCaps,
    now: DateTime<Utc>,
    mut check: impl FnMut(Value) -> Result<Reading, Rejection>,
) -> Result<ParsedRequest, BodyError> {
    let mut results: Vec<Result<Reading, Rejection>> = split_readings(body, format, caps, now)?
        .into_iter()
        .map(|item| item.and_then(&mut check))
        .collect();
    reject_duplicate_ids(&mut results);
    let mut parsed = ParsedRequest::default();
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(reading) => parsed.readings.push((index, reading)),
            Err(rejection) => parsed.rejected.push(RejectedReading {
                index,
                line: None,
                reason: rejection.reason,
                message: rejection.message,
            }),
        }
    }
    Ok(parsed)
}

/// Most notes one answer carries: a device that sends every value as text hears so
/// without an answer the size of its request.
const MAX_NOTES: usize = 10;

/// What the device should know about readings taken as sent: a string that reads as a
/// number is kept as text (`value_str`), which no chart plots.
pub(crate) fn notes_on(rows: &[TableRow]) -> Vec<String> {
    let mut numeric_text = rows.iter().filter_map(|row| {
        let text = row.value_str.as_deref()?;
        let numeric = text.trim().parse::<f64>().is_ok_and(f64::is_finite);
        numeric.then_some((row, text))
    });
    let mut notes: Vec<String> = numeric_text
        .by_ref()
        .take(MAX_NOTES)
        .map(|(row, text)| {
            format!(
                "metric {:?} of reading {} is the string {}: it is stored as text and will \
                 not chart; send it as a JSON number to chart it",
                row.metric,
                excerpt(&row.reading_id),
                excerpt(text)
            )
        })
        .collect();
    let more = numeric_text.count();
    if more > 0 {
        notes.push(format!(
            "and {}",
            lakegate_device::counted(more as u64, "more like it", "more like them")
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    /// A relay that may speak for "pump-*" devices.
    fn resolve(device_id: &str) -> Result<Arc<str>, Rejection> {
        match device_id.starts_with("pump-") {
            true => Ok(device_id.into()),
            false => Err(Rejection::new(RejectReason::DeviceNotAllowed, "not yours")),
        }
    }

    fn relayed(body: &Value) -> ParsedRequest {
        let body = body.to_string();
        let caps = BodyCaps {
            max_readings: 10,
            ..BodyCaps::for_tests()
        };
        parse_relayed_request(body.as_bytes(), BodyFormat::Json, &caps, now(), resolve).unwrap()
    }

    #[test]
    fn a_relays_readings_each_name_their_device() {
        let ts = "2025-06-01T11:00:00Z";
        let parsed = relayed(&json!([
            {"device_id": "pump-1", "id": "r-1", "ts": ts, "metrics": {"t": 1}},
            {"device_id": "pump-2", "id": "r-1", "ts": ts, "metrics": {"t": 1}},
            {"id": "r-2", "ts": ts, "metrics": {"t": 1}},
            {"device_id": null, "ts": ts, "metrics": {"t": 1}},
            {"device_id": 7, "ts": ts, "metrics": {"t": 1}},
            {"device_id": "line-1", "ts": ts, "metrics": {"t": 1}},
            {"device_id": "pump-1", "ts": "yesterday", "metrics": {"t": 1}},
            {"device_id": "pump-1", "id": "r-1", "ts": ts, "metrics": {"t": 2}},
            [1],
        ]));
        let valid: Vec<(usize, &str, &str)> = parsed
            .readings
            .iter()
            .map(|(index, r)| (*index, &*r.device_id, r.reading_id.as_str()))
            .collect();
        assert_eq!(valid, [(0, "pump-1", "r-1"), (1, "pump-2", "r-1")]);
        let rejected: Vec<(usize, RejectReason)> = parsed
            .rejected
            .iter()
            .map(|r| (r.index, r.reason))
            .collect();
        use RejectReason::*;
        assert_eq!(
            rejected,
            [
                (2, MissingDeviceId),
                (3, MissingDeviceId),
                (4, MissingDeviceId),
                (5, DeviceNotAllowed),
                (6, InvalidTs),
                (7, DuplicateId),
                (8, NotAnObject),
            ]
        );
        assert!(parsed.rejected[2].message.contains("found a number"));
    }

    #[test]
    fn a_relayed_reading_gets_the_id_the_device_would_have_derived() {
        let reading = json!({"ts": 1748775600000_i64, "metrics": {"b": "x", "a": 1.5}});
        let caps = BodyCaps::for_tests();
        let direct = parse_request(
            reading.to_string().as_bytes(),
            BodyFormat::Json,
            &"pump-1".into(),
            &caps,
            now(),
        )
        .unwrap();
        let mut named = reading.clone();
        named["device_id"] = json!("pump-1");
        let via_relay = relayed(&named);
        let id = |parsed: &ParsedRequest| parsed.readings[0].1.reading_id.clone();
        assert!(id(&direct).starts_with("h-"));
        assert_eq!(id(&direct), id(&via_relay));
        // Another device's identical reading is another reading.
        named["device_id"] = json!("pump-2");
        assert_ne!(id(&direct), id(&relayed(&named)));
    }

    #[test]
    fn numeric_text_is_taken_with_a_note() {
        let body = json!([
            {"id": "r-1", "ts": "2025-06-01T11:00:00Z",
             "metrics": {"temp": "21.5", "fw": "1.4.2", "n": 3, "flag": "NaN"}},
        ])
        .to_string();
        let parsed = parse_request(
            body.as_bytes(),
            BodyFormat::Json,
            &"dev-1".into(),
            &BodyCaps::for_tests(),
            now(),
        )
        .unwrap();
        assert!(parsed.rejected.is_empty());
        let rows: Vec<TableRow> = parsed
            .readings
            .into_iter()
            .flat_map(|(_, reading)| reading.into_rows())
            .collect();
        let temp = rows.iter().find(|row| row.metric == "temp").unwrap();
        assert_eq!(temp.value_str.as_deref(), Some("21.5"));
        assert_eq!(
            notes_on(&rows),
            [
                "metric \"temp\" of reading \"r-1\" is the string \"21.5\": it is stored as \
              text and will not chart; send it as a JSON number to chart it"
            ]
        );
    }

    #[test]
    fn notes_are_bounded() {
        let row = |n: usize| TableRow {
            device_id: "dev-1".into(),
            reading_id: format!("r-{n}").into(),
            ts_us: 0,
            metric: "t".to_owned(),
            value: None,
            value_str: Some(n.to_string()),
        };
        let rows: Vec<TableRow> = (0..MAX_NOTES + 3).map(row).collect();
        let notes = notes_on(&rows);
        assert_eq!(notes.len(), MAX_NOTES + 1);
        assert_eq!(notes[MAX_NOTES], "and 3 more like them");
        assert_eq!(
            notes_on(&rows[..MAX_NOTES + 1])[MAX_NOTES],
            "and 1 more like it"
        );
    }
}
