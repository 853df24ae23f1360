//! One reading: validation of the JSON a device sent, and its reading id.
//!
//! ```json
//! {"id": "r-17", "ts": "2025-06-01T12:00:00Z", "metrics": {"temp_c": 21.5, "door_open": false, "fw": "1.4.2"}}
//! ```
//! `id` and `device_id` are optional (a relay's readings must name `device_id`); `ts`
//! may also be epoch milliseconds.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::body::BodyCaps;
use super::rejection::{RejectReason, Rejection, excerpt, type_name};
use crate::table::{TableRow, is_metric_name_char};

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reading {
    /// The device the reading is from: the authenticated device, or the one a relay named.
    pub device_id: Arc<str>,
    pub reading_id: String,
    pub ts: DateTime<Utc>,
    /// Sorted by name; names are unique.
    pub metrics: Vec<(String, ReadingValue)>,
}

impl Reading {
    /// One table row per metric; booleans become 1.0 / 0.0 in `value`, strings go to
    /// `value_str`.
    pub(super) fn into_rows(self) -> impl Iterator<Item = TableRow> {
        let reading_id: Arc<str> = self.reading_id.into();
        let ts_us = self.ts.timestamp_micros();
        let device_id = self.device_id;
        self.metrics.into_iter().map(move |(metric, value)| {
            let (value, value_str) = match value {
                ReadingValue::Number(number) => (Some(number), None),
                ReadingValue::Bool(flag) => (Some(if flag { 1.0 } else { 0.0 }), None),
                ReadingValue::Text(text) => (None, Some(text)),
            };
            TableRow {
                device_id: device_id.clone(),
                reading_id: reading_id.clone(),
                ts_us,
                metric,
                value,
                value_str,
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ReadingValue {
    /// Always finite.
    Number(f64),
    Bool(bool),
    Text(String),
}

const FIELDS: [&str; 4] = ["id", "ts", "metrics", "device_id"];

/// Readings older than this are almost certainly a device with an unset clock.
const EARLIEST_TS: DateTime<Utc> = DateTime::from_timestamp(946_684_800, 0).unwrap();

/// How far ahead of our clock a device's clock may run.
const MAX_CLOCK_AHEAD: TimeDelta = TimeDelta::days(1);

/// Validates one reading of `device_id`: the authenticated device, or the device a
/// relay named (the reading id derived from it is then the same either way). `now`
/// injected for tests.
pub(super) fn validate(
    value: Value,
    device_id: &Arc<str>,
    caps: &BodyCaps,
    now: DateTime<Utc>,
) -> Result<Reading, Rejection> {
    let mut fields = match value {
        Value::Object(fields) => fields,
        other => return Err(Rejection::not_an_object(&other)),
    };
    reject_unknown_fields(&fields)?;
    if let Some(claimed) = fields.get("device_id") {
        check_device_id(claimed, device_id)?;
    }
    let given_id = fields
        .remove("id")
        .map(|id| parse_id(id, caps.max_id_len))
        .transpose()?;
    let ts = parse_ts(fields.remove("ts"), now)?;
    let metrics = parse_metrics(fields.remove("metrics"), caps)?;
    let reading_id = given_id.unwrap_or_else(|| derived_id(device_id, ts, &metrics));
    Ok(Reading {
        device_id: device_id.clone(),
        reading_id,
        ts,
        metrics,
    })
}

/// Marks later readings in one request that repeat an earlier reading's identity, its
/// `(device_id, reading_id, ts)`, as DuplicateId. The same id with another `ts` is
/// another reading (a device whose counter restarted), as in the table; so is the same
/// id of another device (in a relay's batch).
pub(super) fn reject_duplicate_ids(results: &mut [Result<Reading, Rejection>]) {
    type Identity<'a> = (&'a str, &'a str, DateTime<Utc>);
    let mut first_seen: HashMap<Identity, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for (index, result) in results.iter().enumerate() {
        if let Ok(reading) = result {
            let identity = (&*reading.device_id, reading.reading_id.as_str(), reading.ts);
            if let Some(&first) = first_seen.get(&identity) {
                duplicates.push((index, first));
            } else {
                first_seen.insert(identity, index);
            }
        }
    }
    for (index, first) in duplicates {
        results[index] = Err(Rejection::new(
            RejectReason::DuplicateId,
            format!("reading id and ts repeat those of reading {first} in this request"),
        ));
    }
}

fn reject_unknown_fields(fields: &Map<String, Value>) -> Result<(), Rejection> {
    match fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        Some(unknown) => Err(Rejection::new(
            RejectReason::UnknownField,
            format!(
                "unknown field {}; a reading has {}",
                excerpt(unknown),
                FIELDS.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn check_device_id(claimed: &Value, authenticated: &str) -> Result<(), Rejection> {
    if claimed.as_str() == Some(authenticated) {
        return Ok(());
    }
    // Never echo the claimed id: the report goes to whoever holds this key.
    Err(Rejection::new(
        RejectReason::DeviceMismatch,
        format!("device_id must be omitted or equal the authenticated device {authenticated:?}"),
    ))
}

fn parse_id(id: Value, max_len: usize) -> Result<String, Rejection> {
    let invalid =
        |problem: String| Rejection::new(RejectReason::InvalidId, format!("id {problem}"));
    let Value::String(id) = id else {
        return Err(invalid(format!(
            "must be a string, found {}",
            type_name(&id)
        )));
    };
    if id.is_empty() || exceeds_chars(&id, max_len) {
        return Err(invalid(format!("must be 1 to {max_len} characters long")));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".to_owned()));
    }
    Ok(id)
}

fn parse_ts(ts: Option<Value>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Rejection> {
    match ts {
        None => Err(Rejection::new(RejectReason::MissingTs, "ts is missing")),
        Some(Value::String(text)) => check_ts_range(parse_rfc3339(&text)?, now),
        Some(Value::Number(number)) => from_epoch_millis(&number, now),
        Some(other) => Err(invalid_ts(format!(
            "ts must be an RFC 3339 string or epoch milliseconds, found {}",
            type_name(&other)
        ))),
    }
}

fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, Rejection> {
    DateTime::parse_from_rfc3339(text)
        .map(|ts| ts.with_timezone(&Utc))
        .map_err(|err| {
            let hint = if is_zoneless(text) {
                "it has no time zone: add a time zone (Z or +hh:mm)".to_owned()
            } else {
                err.to_string()
            };
            invalid_ts(format!(
                "ts {} is not an RFC 3339 timestamp ({hint})",
                excerpt(text)
            ))
        })
}

/// A date and time without an offset, as many loggers write local time.
fn is_zoneless(text: &str) -> bool {
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .any(|format| NaiveDateTime::parse_from_str(text, format).is_ok())
}

fn from_epoch_millis(number: &Number, now: DateTime<Utc>) -> Result<DateTime<Utc>, Rejection> {
    if number.is_f64() {
        return Err(invalid_ts(format!(
            "ts {number} must be whole epoch milliseconds, without fraction or exponent"
        )));
    }
    let too_large = |hint: &str| {
        invalid_ts(format!(
            "ts {number} is too large for epoch milliseconds{hint}"
        ))
    };
    let Some(millis) = number.as_i64() else {
        return Err(too_large(""));
    };
    if millis < 0 {
        return Err(invalid_ts(format!(
            "ts {number} is negative; epoch milliseconds count from 1970"
        )));
    }
    match DateTime::from_timestamp_millis(millis) {
        None => Err(too_large(unit_hint(millis, now))),
        Some(ts) => check_ts_range(ts, now).map_err(|mut rejection| {
            rejection.message.push_str(unit_hint(millis, now));
            rejection
        }),
    }
}

/// For a number out of range as epoch milliseconds: the unit it is plausible in.
fn unit_hint(number: i64, now: DateTime<Utc>) -> &'static str {
    let plausible = |ts: Option<DateTime<Utc>>| {
        ts.is_some_and(|ts| (EARLIEST_TS..=now + MAX_CLOCK_AHEAD).contains(&ts))
    };
    if plausible(DateTime::from_timestamp(number, 0)) {
        " (numeric ts are epoch milliseconds; this looks like seconds)"
    } else if plausible(DateTime::from_timestamp_micros(number)) {
        " (numeric ts are epoch milliseconds; this looks like microseconds)"
    } else if plausible(Some(DateTime::from_timestamp_nanos(number))) {
        " (numeric ts are epoch milliseconds; this looks like nanoseconds)"
    } else {
        " (numeric ts are epoch milliseconds)"
    }
}

fn check_ts_range(ts: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Rejection> {
    let show = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let problem = if ts < EARLIEST_TS {
        format!("is before {}", show(EARLIEST_TS))
    } else if ts > now + MAX_CLOCK_AHEAD {
        format!(
            "is more than a day ahead of the gateway's clock ({})",
            show(now)
        )
    } else {
        return Ok(ts);
    };
    Err(Rejection::new(
        RejectReason::TsOutOfRange,
        format!("ts {} {problem}", show(ts)),
    ))
}

fn invalid_ts(message: String) -> Rejection {
    Rejection::new(RejectReason::InvalidTs, message)
}

/// Metrics sorted by name, so that the derived id does not depend on field order.
fn parse_metrics(
    metrics: Option<Value>,
    caps: &BodyCaps,
) -> Result<Vec<(String, ReadingValue)>, Rejection> {
    let metrics = match metrics {
        Some(Value::Object(metrics)) => metrics,
        None => {
            return Err(Rejection::new(
                RejectReason::MissingMetrics,
                "metrics is missing",
            ));
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::MissingMetrics,
                format!(
                    "metrics must be an object of name to value, found {}",
                    type_name(&other)
                ),
            ));
        }
    };
    if metrics.is_empty() {
        return Err(Rejection::new(RejectReason::NoMetrics, "metrics is empty"));
    }
    if metrics.len() > caps.max_metrics {
        return Err(Rejection::new(
            RejectReason::TooManyMetrics,
            format!(
                "{} metrics, at most {} allowed per reading",
                metrics.len(),
                caps.max_metrics
            ),
        ));
    }
    let mut parsed = metrics
        .into_iter()
        .map(|(name, value)| {
            check_metric_name(&name, caps.max_name_len)?;
            let value = metric_value(&name, value, caps.max_string_len)?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, Rejection>>()?;
    parsed.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    Ok(parsed)
}

fn check_metric_name(name: &str, max_len: usize) -> Result<(), Rejection> {
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if let Some(bad) = name.chars().find(|&c| !is_metric_name_char(c)) {
        format!("contains {bad:?}; allowed are A-Z a-z 0-9 _ . : / -")
    } else if name.len() > max_len {
        // Only ASCII is left, so bytes are characters.
        format!("is longer than {max_len} characters")
    } else {
        return Ok(());
    };
    Err(Rejection::new(
        RejectReason::InvalidMetricName,
        format!("metric name {} {problem}", excerpt(name)),
    ))
}

fn metric_value(
    name: &str,
    value: Value,
    max_string_len: usize,
) -> Result<ReadingValue, Rejection> {
    match value {
        Value::Number(number) => finite(name, number.as_f64()),
        Value::Bool(flag) => Ok(ReadingValue::Bool(flag)),
        Value::String(text) if exceeds_chars(&text, max_string_len) => Err(Rejection::new(
            RejectReason::StringTooLong,
            format!("metric {name:?} is longer than {max_string_len} characters"),
        )),
        Value::String(text) => Ok(ReadingValue::Text(text)),
        other => Err(Rejection::new(
            RejectReason::InvalidMetricValue,
            format!(
                "metric {name:?} must be a number, boolean or string, found {}",
                type_name(&other)
            ),
        )),
    }
}

/// serde_json refuses 1e999 outright, but with its `arbitrary_precision` feature
/// (which any dependency may switch on) it would parse as infinity.
fn finite(name: &str, number: Option<f64>) -> Result<ReadingValue, Rejection> {
    match number {
        Some(number) if number.is_finite() => Ok(ReadingValue::Number(number)),
        _ => Err(Rejection::new(
            RejectReason::NonFiniteNumber,
            format!("metric {name:?} is not a finite number"),
        )),
    }
}

/// Compares in bytes first: a string is never longer in characters than in bytes.
fn exceeds_chars(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

/// "h-" + 32 hex chars of SHA-256 over an unambiguous encoding of the reading, so
/// that an identical resend gets the same id. Each variable-length field is
/// length-prefixed and each value carries a type tag: no two different readings
/// encode to the same bytes.
fn derived_id(
    device_id: &str,
    ts: DateTime<Utc>,
    sorted_metrics: &[(String, ReadingValue)],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"lakegate reading v1\0");
    put_str(&mut hasher, device_id);
    // Micros: the table's TIMESTAMP precision, so ids agree with stored rows.
    hasher.update(ts.timestamp_micros().to_be_bytes());
    for (name, value) in sorted_metrics {
        put_str(&mut hasher, name);
        match value {
            ReadingValue::Number(number) => {
                hasher.update(b"n");
                hasher.update(number.to_bits().to_be_bytes());
            }
            ReadingValue::Bool(flag) => hasher.update([b'b', u8::from(*flag)]),
            ReadingValue::Text(text) => {
                hasher.update(b"s");
                put_str(&mut hasher, text);
            }
        }
    }
    format!("h-{}", hex::encode(&hasher.finalize()[..16]))
}

fn put_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_be_bytes());
    hasher.update(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DEVICE: &str = "dev-1";

    fn now() -> DateTime<Utc> {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn check(value: Value) -> Result<Reading, Rejection> {
        validate(value, &DEVICE.into(), &BodyCaps::for_tests(), now())
    }

    fn valid() -> Value {
        json!({"ts": "2025-06-01T11:00:00Z", "metrics": {"t": 1}})
    }

    /// A valid reading with `field` set to `value`.
    fn with(field: &str, value: Value) -> Value {
        let mut reading = valid();
        reading[field] = value;
        reading
    }

    fn without(field: &str) -> Value {
        let mut reading = valid();
        reading.as_object_mut().unwrap().remove(field);
        reading
    }

    #[track_caller]
    fn rejected(value: Value, reason: RejectReason, needle: &str) {
        let rejection = check(value).expect_err("expected a rejection");
        assert_eq!(rejection.reason, reason, "{}", rejection.message);
        assert!(
            rejection.message.contains(needle),
            "{:?} does not contain {needle:?}",
            rejection.message
        );
    }

    fn id_of(value: Value) -> String {
        check(value).unwrap().reading_id
    }

    #[test]
    fn valid_reading() {
        let reading = check(json!({
            "id": "r-17",
            "device_id": DEVICE,
            "ts": "2025-06-01T13:00:00.123456+02:00",
            "metrics": {"temp_c": 21.5, "door_open": false, "fw": "1.4.2", "count": 7}
        }))
        .unwrap();
        assert_eq!(reading.reading_id, "r-17");
        assert_eq!(&*reading.device_id, DEVICE);
        assert_eq!(
            reading.ts,
            "2025-06-01T11:00:00.123456Z"
                .parse::<DateTime<Utc>>()
                .unwrap()
        );
        assert_eq!(
            reading.metrics,
            vec![
                ("count".to_owned(), ReadingValue::Number(7.0)),
                ("door_open".to_owned(), ReadingValue::Bool(false)),
                ("fw".to_owned(), ReadingValue::Text("1.4.2".to_owned())),
                ("temp_c".to_owned(), ReadingValue::Number(21.5)),
            ]
        );
    }

    #[test]
    fn reason_names_match_serde() {
        for reason in RejectReason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                json!(reason.as_str())
            );
        }
        let distinct: std::collections::HashSet<_> = RejectReason::ALL.iter().collect();
        assert_eq!(distinct.len(), RejectReason::ALL.len());
        assert_eq!(
            serde_json::to_value(Rejection::new(RejectReason::NoMetrics, "m")).unwrap(),
            json!({"reason": "no_metrics", "message": "m"})
        );
    }

    #[test]
    fn not_an_object() {
        rejected(json!([1]), RejectReason::NotAnObject, "found an array");
        rejected(json!("x"), RejectReason::NotAnObject, "found a string");
    }

    #[test]
    fn unknown_field() {
        rejected(
            with("temp", json!(1)),
            RejectReason::UnknownField,
            "unknown field \"temp\"",
        );
        let long_name = "x".repeat(10_000);
        let rejection = check(with(&long_name, json!(1))).unwrap_err();
        assert!(rejection.message.len() < 200, "{}", rejection.message);
    }

    #[test]
    fn invalid_id() {
        rejected(
            with("id", json!("")),
            RejectReason::InvalidId,
            "1 to 128 characters",
        );
        rejected(
            with("id", json!("x".repeat(129))),
            RejectReason::InvalidId,
            "1 to 128",
        );
        rejected(
            with("id", json!(17)),
            RejectReason::InvalidId,
            "must be a string, found a number",
        );
        rejected(
            with("id", json!(null)),
            RejectReason::InvalidId,
            "found null",
        );
        rejected(
            with("id", json!("a\nb")),
            RejectReason::InvalidId,
            "control characters",
        );
    }

    #[test]
    fn id_length_counts_characters() {
        let id = "é".repeat(128);
        assert_eq!(id_of(with("id", json!(id))), id);
        rejected(
            with("id", json!("é".repeat(129))),
            RejectReason::InvalidId,
            "1 to 128",
        );
    }

    #[test]
    fn missing_ts() {
        rejected(without("ts"), RejectReason::MissingTs, "ts is missing");
    }

    #[test]
    fn invalid_ts() {
        for (ts, needle) in [
            (json!("yesterday"), "not an RFC 3339 timestamp"),
            (json!("2025-06-01 11:00"), "not an RFC 3339 timestamp"),
            (
                json!("2026-12-07 16:30:00"),
                "add a time zone (Z or +hh:mm)",
            ),
            (
                json!("2026-12-07T16:30:00"),
                "add a time zone (Z or +hh:mm)",
            ),
            (
                json!("2026-12-07T16:30:00.250"),
                "add a time zone (Z or +hh:mm)",
            ),
            (json!(1.7e12), "without fraction or exponent"),
            (json!(1_748_775_600_000.5), "without fraction or exponent"),
            (json!(-1), "negative"),
            (json!(u64::MAX), "too large"),
            (json!(i64::MAX), "too large"),
            (json!(null), "found null"),
            (json!(true), "found a boolean"),
        ] {
            rejected(with("ts", ts), RejectReason::InvalidTs, needle);
        }
    }

    #[test]
    fn ts_out_of_range() {
        rejected(
            with("ts", json!("1999-12-31T23:59:59Z")),
            RejectReason::TsOutOfRange,
            "before 2000-01-01T00:00:00Z",
        );
        // Epoch seconds by mistake: 1970.
        rejected(
            with("ts", json!(1_748_775_600)),
            RejectReason::TsOutOfRange,
            "this looks like seconds",
        );
        // Microseconds by mistake: tens of thousands of years ahead.
        rejected(
            with("ts", json!(1_748_775_600_000_000_i64)),
            RejectReason::TsOutOfRange,
            "numeric ts are epoch milliseconds; this looks like microseconds",
        );
        // Nanoseconds by mistake: past any date chrono holds.
        rejected(
            with("ts", json!(1_748_775_600_000_000_000_i64)),
            RejectReason::InvalidTs,
            "too large for epoch milliseconds (numeric ts are epoch milliseconds; this looks \
             like nanoseconds)",
        );
        // A string before 2000 is no unit mistake.
        let early = check(with("ts", json!("1999-12-31T23:59:59Z"))).unwrap_err();
        assert!(!early.message.contains("looks like"), "{}", early.message);
        rejected(
            with("ts", json!("2025-06-02T12:00:00.001Z")),
            RejectReason::TsOutOfRange,
            "more than a day ahead",
        );
        for edge in ["2000-01-01T00:00:00Z", "2025-06-02T12:00:00Z"] {
            assert!(check(with("ts", json!(edge))).is_ok(), "{edge}");
        }
    }

    #[test]
    fn metrics_missing_or_empty_or_too_many() {
        rejected(
            without("metrics"),
            RejectReason::MissingMetrics,
            "metrics is missing",
        );
        rejected(
            with("metrics", json!([1])),
            RejectReason::MissingMetrics,
            "found an array",
        );
        rejected(with("metrics", json!({})), RejectReason::NoMetrics, "empty");
        rejected(
            with("metrics", json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})),
            RejectReason::TooManyMetrics,
            "5 metrics, at most 4",
        );
        assert!(check(with("metrics", json!({"a": 1, "b": 2, "c": 3, "d": 4}))).is_ok());
    }

    #[test]
    fn invalid_metric_name() {
        for (name, needle) in [
            ("", "is empty"),
            ("temp c", "contains ' '"),
            ("température", "contains 'é'"),
            ("a\u{0}", "contains '\\0'"),
            ("abcdefghijklmnopq", "longer than 16"),
        ] {
            rejected(
                with("metrics", json!({ name: 1 })),
                RejectReason::InvalidMetricName,
                needle,
            );
        }
        assert!(check(with("metrics", json!({"S-2/t_c:a.1": 1}))).is_ok());
    }

    #[test]
    fn invalid_metric_value_names_the_metric() {
        for (value, found) in [
            (json!(null), "null"),
            (json!([1]), "an array"),
            (json!({"v": 1}), "an object"),
        ] {
            rejected(
                with("metrics", json!({"ok": 1, "temp": value})),
                RejectReason::InvalidMetricValue,
                &format!("metric \"temp\" must be a number, boolean or string, found {found}"),
            );
        }
    }

    #[test]
    fn non_finite_number() {
        // JSON text cannot carry these without serde_json's arbitrary_precision.
        for number in [
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(f64::NAN),
            None,
        ] {
            let rejection = finite("temp", number).unwrap_err();
            assert_eq!(rejection.reason, RejectReason::NonFiniteNumber);
            assert!(
                rejection.message.contains("\"temp\""),
                "{}",
                rejection.message
            );
        }
        assert_eq!(finite("temp", Some(-0.5)), Ok(ReadingValue::Number(-0.5)));
        let big = check(with("metrics", json!({"n": u64::MAX}))).unwrap();
        assert_eq!(big.metrics[0].1, ReadingValue::Number(u64::MAX as f64));
    }

    #[test]
    fn string_too_long_counts_characters() {
        // The test limit is 8 characters; each of these is 3 bytes.
        assert!(check(with("metrics", json!({"s": "日本語日本語日本"}))).is_ok());
        rejected(
            with("metrics", json!({"s": "日本語日本語日本語"})),
            RejectReason::StringTooLong,
            "metric \"s\" is longer than 8 characters",
        );
    }

    #[test]
    fn device_mismatch() {
        assert!(check(with("device_id", json!(DEVICE))).is_ok());
        for claimed in [json!("dev-2"), json!(1), json!(null)] {
            rejected(
                with("device_id", claimed),
                RejectReason::DeviceMismatch,
                "authenticated device \"dev-1\"",
            );
        }
    }

    #[test]
    fn derived_id_is_stable_across_ts_notations() {
        let from_rfc3339 = id_of(with("ts", json!("2025-06-01T11:00:00.250Z")));
        let from_offset = id_of(with("ts", json!("2025-06-01T13:00:00.25+02:00")));
        let from_millis = id_of(with("ts", json!(1_748_775_600_250_i64)));
        assert_eq!(from_rfc3339, from_millis);
        assert_eq!(from_rfc3339, from_offset);
        assert!(from_rfc3339.starts_with("h-"));
        assert_eq!(from_rfc3339.len(), 34);
        assert!(
            from_rfc3339[2..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn derived_id_ignores_metric_order() {
        let ordered = id_of(
            serde_json::from_str(r#"{"ts": 1748775600000, "metrics": {"a": 1, "b": "x"}}"#)
                .unwrap(),
        );
        let swapped = id_of(
            serde_json::from_str(r#"{"metrics": {"b": "x", "a": 1}, "ts": 1748775600000}"#)
                .unwrap(),
        );
        assert_eq!(ordered, swapped);
    }

    #[test]
    fn derived_id_differs_when_anything_differs() {
        let base = id_of(with("metrics", json!({"t": 1})));
        let variants = [
            with("metrics", json!({"t": 2})),
            with("metrics", json!({"t": true})),
            with("metrics", json!({"t": "1"})),
            with("metrics", json!({"u": 1})),
            with("metrics", json!({"t": 1, "u": 1})),
            with("ts", json!("2025-06-01T11:00:00.000001Z")),
        ];
        for variant in variants {
            assert_ne!(id_of(variant.clone()), base, "{variant}");
        }
        let other_device = validate(
            with("metrics", json!({"t": 1})),
            &"dev-2".into(),
            &BodyCaps::for_tests(),
            now(),
        );
        assert_ne!(other_device.unwrap().reading_id, base);
    }

    #[test]
    fn derived_id_has_no_concatenation_ambiguity() {
        // Same bytes when naively concatenated: "a" + "bc" vs "ab" + "c", and a string
        // value swallowing the next metric's name.
        let pairs = [
            (json!({"a": "bc"}), json!({"ab": "c"})),
            (json!({"a": "s", "b": "t"}), json!({"a": "sbt"})),
        ];
        for (left, right) in pairs {
            assert_ne!(id_of(with("metrics", left)), id_of(with("metrics", right)));
        }
    }

    #[test]
    fn duplicate_ids_are_marked_after_the_first() {
        let reading = |id: Option<&str>, t: i64| {
            let mut value = with("metrics", json!({ "t": t }));
            if let Some(id) = id {
                value["id"] = json!(id);
            }
            check(value)
        };
        let at = |id: &str, ts: &str| {
            let mut value = with("id", json!(id));
            value["ts"] = json!(ts);
            check(value)
        };
        let mut results = vec![
            reading(Some("r-1"), 1),
            reading(None, 5),
            Err(Rejection::new(RejectReason::InvalidTs, "bad")),
            reading(Some("r-1"), 2),
            reading(None, 5),
            reading(Some("r-2"), 1),
            reading(Some("r-1"), 3),
            // The same id at another time is another reading.
            at("r-1", "2025-06-01T11:30:00Z"),
            at("r-1", "2025-06-01T11:30:00.000Z"),
        ];
        reject_duplicate_ids(&mut results);
        let reasons: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.reason))
            .collect();
        use RejectReason::{DuplicateId, InvalidTs};
        assert_eq!(
            reasons,
            [
                None,
                None,
                Some(InvalidTs),
                Some(DuplicateId),
                Some(DuplicateId),
                None,
                Some(DuplicateId),
                None,
                Some(DuplicateId),
            ]
        );
        assert_eq!(
            results[4].as_ref().unwrap_err().message,
            "reading id and ts repeat those of reading 1 in this request"
        );
        assert!(
            results[6]
                .as_ref()
                .unwrap_err()
                .message
                .contains("reading 0")
        );
        assert!(
            results[8]
                .as_ref()
                .unwrap_err()
                .message
                .contains("reading 7")
        );
    }

    #[test]
    fn the_same_id_of_two_devices_is_two_readings() {
        let of = |device: &str| {
            validate(
                with("id", json!("r-1")),
                &device.into(),
                &BodyCaps::for_tests(),
                now(),
            )
        };
        let mut results = vec![of("dev-1"), of("dev-2"), of("dev-1")];
        reject_duplicate_ids(&mut results);
        let reasons: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.reason))
            .collect();
        assert_eq!(reasons, [None, None, Some(RejectReason::DuplicateId)]);
    }

    #[test]
    fn a_reading_names_its_device_in_its_rows() {
        let reading = check(with("metrics", json!({"a": 1, "b": "x"}))).unwrap();
        let rows: Vec<TableRow> = reading.into_rows().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|row| &*row.device_id == DEVICE));
    }
}
