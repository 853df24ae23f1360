//! InfluxDB line protocol (`POST /api/v2/write`): each line is parsed by the spec's
//! rules and becomes the JSON reading a device would have sent, so that every check of
//! a reading (`reading.rs`: metric names, caps, the time range) applies unchanged.
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//! A line becomes one reading: metric `<measurement>.<field>` per field, `ts` the
//! line's timestamp at the request's precision (the arrival time when it has none),
//! and the reading id `lp-` + a hash of the series key (measurement and tags but
//! `device_id`, sorted) and the timestamp in nanoseconds, so that a resent line lands
//! once and two series that differ only in their tags stay two readings. A
//! `device_id` tag is the reading's `device_id`. Lines are split on `\n`: a string
//! field cannot hold a raw newline.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::rejection::{RejectReason, Rejection, excerpt};

/// The `precision` query parameter: the unit of the lines' timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    /// InfluxDB 2's names (and v1's `u`/`us` spellings).
    pub(crate) fn parse(text: &str) -> Option<Precision> {
        match text {
            "ns" | "n" => Some(Precision::Nanoseconds),
            "us" | "u" | "µs" => Some(Precision::Microseconds),
            "ms" => Some(Precision::Milliseconds),
            "s" => Some(Precision::Seconds),
            _ => None,
        }
    }

    fn nanos(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
        }
    }
}

/// The lines of a body that hold a point, with their 1-based line numbers: blank lines
/// and comments are skipped. The n-th item is the n-th reading of the request.
pub(crate) fn point_lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|&byte| byte == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| {
            let text = line.trim_ascii_start();
            !text.is_empty() && !text.starts_with(b"#")
        })
}

/// One JSON reading per point line, or that line's rejection; `now` is the time of
/// the lines without a timestamp.
pub(super) fn line_readings(
    body: &[u8],
    precision: Precision,
    now: DateTime<Utc>,
) -> impl Iterator<Item = Result<Value, Rejection>> {
    point_lines(body).map(move |(number, line)| {
        parse_line(line)
            .and_then(|point| point.into_reading(precision, now))
            .map_err(|problem| {
                Rejection::new(
                    RejectReason::InvalidLineProtocol,
                    format!("line {number}: {problem}"),
                )
            })
    })
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point {
    pub measurement: String,
    /// Sorted by key.
    pub tags: Vec<(String, String)>,
    /// In the line's order; a repeated key keeps its last value, as InfluxDB does.
    pub fields: Vec<(String, FieldValue)>,
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum FieldValue {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Bool(bool),
    Text(String),
}

impl Point {
    fn into_reading(self, precision: Precision, now: DateTime<Utc>) -> Result<Value, String> {
        let ts_nanos = match self.timestamp {
            Some(timestamp) => timestamp.checked_mul(precision.nanos()).ok_or_else(|| {
                format!("timestamp {timestamp} at this precision is out of range")
            })?,
            None => now
                .timestamp_nanos_opt()
                .ok_or("the arrival time is out of range")?,
        };
        let ts = DateTime::from_timestamp_nanos(ts_nanos);
        let mut reading = Map::new();
        let mut series = Vec::new();
        for (key, value) in &self.tags {
            if key == "device_id" {
                reading.insert("device_id".to_owned(), Value::String(value.clone()));
            } else {
                series.push((key.as_str(), value.as_str()));
            }
        }
        reading.insert(
            "id".to_owned(),
            Value::String(series_id(&self.measurement, &series, ts_nanos)),
        );
        reading.insert(
            "ts".to_owned(),
            Value::String(ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        );
        let mut metrics = Map::new();
        for (field, value) in self.fields {
            let value = match value {
                FieldValue::Float(number) => {
                    Value::Number(Number::from_f64(number).ok_or("a float is not finite")?)
                }
                FieldValue::Integer(number) => Value::from(number),
                FieldValue::Unsigned(number) => Value::from(number),
                FieldValue::Bool(flag) => Value::Bool(flag),
                FieldValue::Text(text) => Value::String(text),
            };
            metrics.insert(format!("{}.{field}", self.measurement), value);
        }
        reading.insert("metrics".to_owned(), Value::Object(metrics));
        Ok(Value::Object(reading))
    }
}

/// "lp-" + 32 hex characters of SHA-256 over the series key and the timestamp, each
/// part length-prefixed so that no two series encode alike.
fn series_id(measurement: &str, sorted_tags: &[(&str, &str)], ts_nanos: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"lakegate line protocol v1\0");
    let mut put = |text: &str| {
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    };
    put(measurement);
    for (key, value) in sorted_tags {
        put(key);
        put(value);
    }
    hasher.update(ts_nanos.to_be_bytes());
    format!("lp-{}", hex::encode(&hasher.finalize()[..16]))
}

/// Parses one line (without its newline) by the spec's rules, or says what is wrong.
pub(super) fn parse_line(line: &[u8]) -> Result<Point, String> {
    let line = std::str::from_utf8(line).map_err(|_| "the line is not valid UTF-8".to_owned())?;
    let mut cursor = Cursor {
        rest: line.trim_start().as_bytes(),
    };
    let measurement = cursor.identifier(b", ", b", ");
    if measurement.is_empty() {
        return Err("the measurement is missing".to_owned());
    }
    let mut tags = Vec::new();
    while cursor.eat(b',') {
        let key = cursor.identifier(b",= ", b",= ");
        if key.is_empty() {
            return Err(format!("a tag of {} has no key", excerpt(&measurement)));
        }
        if !cursor.eat(b'=') {
            return Err(format!("tag {} has no `=value`", excerpt(&key)));
        }
        let value = cursor.identifier(b", ", b",= ");
        if value.is_empty() {
            return Err(format!("tag {} has an empty value", excerpt(&key)));
        }
        tags.push((key, value));
    }
    if !cursor.spaces() || cursor.rest.is_empty() {
        return Err("the line has no fields (`measurement[,tags] field=value`)".to_owned());
    }
    let mut fields: Vec<(String, FieldValue)> = Vec::new();
    loop {
        let key = cursor.identifier(b",= ", b",= ");
        if key.is_empty() {
            return Err("a field has no key".to_owned());
        }
        if !cursor.eat(b'=') {
            return Err(format!("field {} has no `=value`", excerpt(&key)));
        }
        let value = cursor.field_value(&key)?;
        fields.retain(|(earlier, _)| *earlier != key);
        fields.push((key, value));
        if !cursor.eat(b',') {
            break;
        }
    }
    let timestamp = match (cursor.spaces(), cursor.rest) {
        (_, []) => None,
        (false, rest) => {
            return Err(format!(
                "unexpected {} after the fields",
                excerpt(&String::from_utf8_lossy(rest))
            ));
        }
        (true, rest) => {
            let text = std::str::from_utf8(rest)
                .expect("a part of a str")
                .trim_end();
            if text.is_empty() {
                None
            } else {
                Some(
                    text.parse::<i64>()
                        .map_err(|_| format!("timestamp {} is not an integer", excerpt(text)))?,
                )
            }
        }
    };
    tags.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    Ok(Point {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    /// Skips spaces; true if there was at least one.
    fn spaces(&mut self) -> bool {
        let count = self.rest.iter().take_while(|&&b| b == b' ').count();
        self.rest = &self.rest[count..];
        count > 0
    }

    /// A name up to an unescaped byte of `stops`; `\` before a byte of `escapable`
    /// stands for that byte, before any other it is a backslash.
    fn identifier(&mut self, stops: &[u8], escapable: &[u8]) -> String {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(&byte) = self.rest.get(at) {
            if byte == b'\\'
                && let Some(&next) = self.rest.get(at + 1)
                && escapable.contains(&next)
            {
                out.push(next);
                at += 2;
                continue;
            }
            if stops.contains(&byte) {
                break;
            }
            out.push(byte);
            at += 1;
        }
        self.rest = &self.rest[at..];
        // Only ASCII bytes were removed from valid UTF-8.
        String::from_utf8(out).expect("valid UTF-8")
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue, String> {
        if self.eat(b'"') {
            return self.string(key);
        }
        let end = self
            .rest
            .iter()
            .position(|&b| b == b',' || b == b' ')
            .unwrap_or(self.rest.len());
        let token = std::str::from_utf8(&self.rest[..end]).expect("a part of a str");
        self.rest = &self.rest[end..];
        let invalid =
            |kind: &str| format!("field {} is not {kind}: {}", excerpt(key), excerpt(token));
        if token.is_empty() {
            return Err(format!("field {} has no value", excerpt(key)));
        }
        if let Some(digits) = token.strip_suffix('i') {
            return digits
                .parse()
                .map(FieldValue::Integer)
                .map_err(|_| invalid("a 64-bit integer"));
        }
        if let Some(digits) = token.strip_suffix('u') {
            return digits
                .parse()
                .map(FieldValue::Unsigned)
                .map_err(|_| invalid("an unsigned 64-bit integer"));
        }
        match token {
            "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
            "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
            _ => {}
        }
        // Rust also reads "inf" and "NaN", which the protocol has no spelling for.
        let numeric = token
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
        match token.parse::<f64>() {
            Ok(number) if numeric && number.is_finite() => Ok(FieldValue::Float(number)),
            _ => Err(invalid(
                "a float, an integer (`1i`), an unsigned (`1u`), a boolean or a \"string\"",
            )),
        }
    }

    /// The rest of a string after its opening quote: `\"` and `\\` are escapes.
    fn string(&mut self, key: &str) -> Result<FieldValue, String> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            match self.rest.get(at) {
                None => {
                    return Err(format!(
                        "the string of field {} is not closed",
                        excerpt(key)
                    ));
                }
                Some(b'"') => break,
                Some(b'\\') if matches!(self.rest.get(at + 1), Some(b'"' | b'\\')) => {
                    out.push(self.rest[at + 1]);
                    at += 2;
                }
                Some(&byte) => {
                    out.push(byte);
                    at += 1;
                }
            }
        }
        self.rest = &self.rest[at + 1..];
        Ok(FieldValue::Text(
            String::from_utf8(out).expect("valid UTF-8"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn point(line: &str) -> Point {
        parse_line(line.as_bytes()).unwrap_or_else(|err| panic!("{line}: {err}"))
    }

    fn problem(line: &str) -> String {
        parse_line(line.as_bytes()).expect_err(line)
    }

    fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_specs_example() {
        let parsed = point(
            "myMeasurement,tag1=value1,tag2=value2 fieldKey=\"fieldValue\" 1556813561098000000",
        );
        assert_eq!(parsed.measurement, "myMeasurement");
        assert_eq!(
            parsed.tags,
            strings(&[("tag1", "value1"), ("tag2", "value2")])
        );
        assert_eq!(
            parsed.fields,
            [(
                "fieldKey".to_owned(),
                FieldValue::Text("fieldValue".to_owned())
            )]
        );
        assert_eq!(parsed.timestamp, Some(1_556_813_561_098_000_000));
    }

    #[test]
    fn every_field_type() {
        let parsed = point(
            "m f1=1,f2=-1.5e3,f3=12i,f4=-7i,f5=18446744073709551615u,f6=t,f7=FALSE,f8=True,f9=\"s\",f10=.5",
        );
        use FieldValue::*;
        let values: Vec<FieldValue> = parsed.fields.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                Float(1.0),
                Float(-1500.0),
                Integer(12),
                Integer(-7),
                Unsigned(u64::MAX),
                Bool(true),
                Bool(false),
                Bool(true),
                Text("s".to_owned()),
                Float(0.5),
            ]
        );
        assert_eq!(parsed.timestamp, None);
    }

    #[test]
    fn escapes_by_the_spec() {
        // The spec's examples: commas and spaces in measurements; commas, equals signs
        // and spaces in tag keys, tag values and field keys; quotes and backslashes in
        // strings.
        let parsed = point(
            r#"my\ Measurement,tag\ Key1=tag\ Value1,tag\,Key2=tag\,Value2,tag\=Key3=tag\=Value3 field\ Key="string \"value\" \\ here",f\,k=1i 1556813561098000000"#,
        );
        assert_eq!(parsed.measurement, "my Measurement");
        assert_eq!(
            parsed.tags,
            strings(&[
                ("tag Key1", "tag Value1"),
                ("tag,Key2", "tag,Value2"),
                ("tag=Key3", "tag=Value3"),
            ])
        );
        assert_eq!(
            parsed.fields,
            [
                (
                    "field Key".to_owned(),
                    FieldValue::Text(r#"string "value" \ here"#.to_owned())
                ),
                ("f,k".to_owned(), FieldValue::Integer(1)),
            ]
        );
        // A backslash before anything else is itself; a string may hold commas, spaces
        // and equals signs as they are.
        let parsed = point(r#"a\b,t=c:\dir f="x, y=z\n" 5"#);
        assert_eq!(parsed.measurement, r"a\b");
        assert_eq!(parsed.tags, strings(&[("t", r"c:\dir")]));
        assert_eq!(parsed.fields[0].1, FieldValue::Text(r"x, y=z\n".to_owned()));
        assert_eq!(parsed.timestamp, Some(5));
    }

    #[test]
    fn tags_sort_and_repeated_fields_keep_the_last() {
        let parsed = point("m,b=2,a=1 x=1,x=2i -5");
        assert_eq!(parsed.tags, strings(&[("a", "1"), ("b", "2")]));
        assert_eq!(parsed.fields, [("x".to_owned(), FieldValue::Integer(2))]);
        assert_eq!(parsed.timestamp, Some(-5));
    }

    #[test]
    fn each_error_says_what_is_wrong() {
        for (line, needle) in [
            ("m", "no fields"),
            ("m ", "no fields"),
            (",t=1 f=1", "measurement is missing"),
            ("m,t f=1", "has no `=value`"),
            ("m,t= f=1", "empty value"),
            ("m f", "has no `=value`"),
            ("m f=", "has no value"),
            ("m f=1x", "is not a float"),
            ("m f=inf", "is not a float"),
            ("m f=NaN", "is not a float"),
            ("m f=1.5i", "not a 64-bit integer"),
            ("m f=-1u", "not an unsigned"),
            ("m f=99999999999999999999i", "not a 64-bit integer"),
            ("m f=\"open", "not closed"),
            ("m f=1 12ab", "not an integer"),
            ("m f=1 1 2", "not an integer"),
            ("m f=\"a\"x", "unexpected"),
            ("m f=1,", "no key"),
        ] {
            let problem = problem(line);
            assert!(problem.contains(needle), "{line:?}: {problem:?}");
        }
    }

    fn now() -> DateTime<Utc> {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn lines_become_readings_with_line_numbers_in_their_refusals() {
        let body = b"# a comment\n\ncpu,host=a,device_id=d-1 usage=0.5,up=t,fw=\"1.2\",n=3i 1748779200\r\n  \nbad line\ncpu,host=b usage=1u\n";
        let entries: Vec<_> = line_readings(body, Precision::Seconds, now()).collect();
        assert_eq!(entries.len(), 3);
        let first = entries[0].as_ref().unwrap();
        assert_eq!(first["device_id"], json!("d-1"));
        assert_eq!(first["ts"], json!("2025-06-01T12:00:00Z"));
        assert_eq!(
            first["metrics"],
            json!({"cpu.usage": 0.5, "cpu.up": true, "cpu.fw": "1.2", "cpu.n": 3})
        );
        let refused = entries[1].as_ref().unwrap_err();
        assert_eq!(refused.reason, RejectReason::InvalidLineProtocol);
        assert!(
            refused.message.starts_with("line 5: "),
            "{}",
            refused.message
        );
        // Without a timestamp: the arrival time.
        let last = entries[2].as_ref().unwrap();
        assert_eq!(last["ts"], json!("2025-06-01T12:00:00Z"));
        let lines: Vec<usize> = point_lines(body).map(|(n, _)| n).collect();
        assert_eq!(lines, [3, 5, 6]);
    }

    #[test]
    fn identity_is_the_series_key_and_the_timestamp() {
        let id = |line: &str, precision: Precision| {
            let entries: Vec<_> = line_readings(line.as_bytes(), precision, now()).collect();
            entries[0].as_ref().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let ns = Precision::Nanoseconds;
        let base = id("m,a=1,b=2 f=1 1748779200000000000", ns);
        assert!(base.starts_with("lp-") && base.len() == 35, "{base}");
        // Tag order, field values and the device_id tag do not change it; the same
        // instant at another precision is the same reading.
        assert_eq!(base, id("m,b=2,a=1 f=2,g=3 1748779200000000000", ns));
        assert_eq!(
            base,
            id("m,a=1,device_id=x,b=2 f=1 1748779200000000000", ns)
        );
        assert_eq!(base, id("m,a=1,b=2 f=1 1748779200", Precision::Seconds));
        assert_eq!(
            base,
            id("m,a=1,b=2 f=1 1748779200000", Precision::Milliseconds)
        );
        assert_eq!(
            base,
            id("m,a=1,b=2 f=1 1748779200000000", Precision::Microseconds)
        );
        // Another tag value, measurement or instant is another reading.
        assert_ne!(base, id("m,a=1,b=3 f=1 1748779200000000000", ns));
        assert_ne!(base, id("n,a=1,b=2 f=1 1748779200000000000", ns));
        assert_ne!(base, id("m,a=1,b=2 f=1 1748779200000000001", ns));
        // Escapes cannot make two series alike.
        assert_ne!(id("m,a=1\\,b=2 f=1 1", ns), id("m,a=1,b=2 f=1 1", ns));
    }

    #[test]
    fn precision_scales_and_overflow_is_refused() {
        let ts = |line: &str, precision| {
            let entries: Vec<_> = line_readings(line.as_bytes(), precision, now()).collect();
            entries[0].clone().map(|reading| reading["ts"].clone())
        };
        assert_eq!(
            ts("m f=1 1748779200123456789", Precision::Nanoseconds).unwrap(),
            json!("2025-06-01T12:00:00.123456789Z")
        );
        assert_eq!(
            ts("m f=1 1748779200123456", Precision::Microseconds).unwrap(),
            json!("2025-06-01T12:00:00.123456Z")
        );
        assert_eq!(
            ts("m f=1 1748779200123", Precision::Milliseconds).unwrap(),
            json!("2025-06-01T12:00:00.123Z")
        );
        let refused = ts("m f=1 1748779200123", Precision::Seconds).unwrap_err();
        assert!(
            refused.message.contains("out of range"),
            "{}",
            refused.message
        );
        assert_eq!(Precision::parse("ms"), Some(Precision::Milliseconds));
        assert_eq!(Precision::parse("h"), None);
    }
}
