//! Request bodies: content negotiation, capped gzip decoding, and splitting a body
//! into one JSON value per reading.
//!
//! Whole-body problems are a [`BodyError`] (the request fails); a problem with one
//! reading is a [`Rejection`] at that reading's position, so the rest of the batch
//! still goes through.

use std::fmt;
use std::io::Read;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::line_protocol::{Precision, line_readings};
use super::rejection::{RejectReason, Rejection, excerpt};

/// Caps on what one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyCaps {
    /// After decompression.
    pub max_body_bytes: usize,
    pub max_readings: usize,
    pub max_metrics: usize,
    /// Metric names, in characters.
    pub max_name_len: usize,
    /// String metric values, in characters.
    pub max_string_len: usize,
    /// Device-supplied reading ids, in characters.
    pub max_id_len: usize,
}

/// The body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    pub(crate) fn from_header(value: Option<&str>) -> Result<Encoding, BodyError> {
        let Some(value) = value else {
            return Ok(Encoding::Identity);
        };
        let token = value.trim();
        if token.eq_ignore_ascii_case("identity") {
            Ok(Encoding::Identity)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Ok(Encoding::Gzip)
        } else {
            Err(BodyError::UnsupportedEncoding(excerpt(value)))
        }
    }
}

/// The body's `Content-Type`: one JSON document, or newline-delimited JSON; or, on
/// `POST /api/v2/write`, InfluxDB line protocol with its timestamps' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    Json,
    NdJson,
    LineProtocol(Precision),
}

impl BodyFormat {
    /// A missing header means JSON. A charset parameter must name UTF-8 (or its
    /// subset ASCII), because that is what the parser reads.
    pub(crate) fn from_content_type(value: Option<&str>) -> Result<BodyFormat, BodyError> {
        let Some(value) = value else {
            return Ok(BodyFormat::Json);
        };
        let unsupported = || BodyError::UnsupportedMediaType(excerpt(value));
        let mut parts = value.split(';');
        let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if !parts.all(is_utf8_compatible_param) {
            return Err(unsupported());
        }
        match media_type.as_str() {
            "application/json" => Ok(BodyFormat::Json),
            "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::NdJson),
            other if other.starts_with("application/") && other.ends_with("+json") => {
                Ok(BodyFormat::Json)
            }
            _ => Err(unsupported()),
        }
    }
}

/// True for any parameter except a charset other than UTF-8 / ASCII.
fn is_utf8_compatible_param(param: &str) -> bool {
    match param.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = charset.trim().trim_matches('"');
            ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|ok| charset.eq_ignore_ascii_case(ok))
        }
        _ => true,
    }
}

/// A problem with the request body as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("unsupported Content-Encoding {0}: send gzip or identity")]
    UnsupportedEncoding(String),
    #[error("unsupported Content-Type {0}: send application/json or application/x-ndjson in UTF-8")]
    UnsupportedMediaType(String),
    #[error(
        "body is larger than {limit} bytes (after decompression), the limit \
         LAKEGATE_MAX_BODY_BYTES sets; send fewer readings per request"
    )]
    TooLarge { limit: usize },
    #[error("body is not valid gzip: {0}")]
    BadEncoding(String),
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the body holds no readings")]
    Empty,
    #[error(
        "more than {} in one request, the limit LAKEGATE_MAX_READINGS_PER_REQUEST sets; \
         send fewer readings per request",
        lakegate_device::counted(*limit as u64, "reading", "readings")
    )]
    TooManyReadings { limit: usize },
}

/// Undoes the content encoding. `max_body_bytes` caps the decoded size, and gzip
/// is never decoded past it, so a small compressed bomb cannot exhaust memory.
pub(crate) fn decode(raw: Bytes, encoding: Encoding, caps: &BodyCaps) -> Result<Bytes, BodyError> {
    let limit = caps.max_body_bytes;
    match encoding {
        Encoding::Identity if raw.len() > limit => Err(BodyError::TooLarge { limit }),
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => gunzip(&raw, limit),
    }
}

fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, BodyError> {
    // Multi-member, because concatenated gzip streams are valid gzip (pigz, appenders).
    let decoder = flate2::bufread::MultiGzDecoder::new(compressed);
    let mut decoded = Vec::new();
    // One byte past the cap tells "exactly at the limit" from "over it".
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|err| BodyError::BadEncoding(err.to_string()))?;
    if decoded.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(decoded.into())
}

/// The value at one reading position, or why that position was rejected.
type Entry = Result<Value, Rejection>;

/// One JSON object, a JSON array of objects, NDJSON, or line protocol (whose lines
/// without a timestamp take `now`). Returns one entry per reading position: the
/// object, or the rejection of that position (a bad NDJSON line or line of line
/// protocol, an array element that is not an object).
pub(super) fn split_readings(
    body: &[u8],
    format: BodyFormat,
    caps: &BodyCaps,
    now: DateTime<Utc>,
) -> Result<Vec<Result<Value, Rejection>>, BodyError> {
    // RFC 8259 lets parsers ignore a BOM; some Windows tools write one.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if is_blank(body) {
        return Err(BodyError::Empty);
    }
    let entries = match format {
        BodyFormat::Json => split_json(body, caps.max_readings)?,
        BodyFormat::NdJson => split_ndjson(body, caps.max_readings)?,
        BodyFormat::LineProtocol(precision) => {
            capped(line_readings(body, precision, now), caps.max_readings)?
        }
    };
    if entries.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(entries)
}

/// Every entry, or TooManyReadings as soon as there are more than `max_readings`.
fn capped(
    entries: impl Iterator<Item = Entry>,
    max_readings: usize,
) -> Result<Vec<Entry>, BodyError> {
    let mut taken = Vec::new();
    for entry in entries {
        if taken.len() == max_readings {
            return Err(BodyError::TooManyReadings {
                limit: max_readings,
            });
        }
        taken.push(entry);
    }
    Ok(taken)
}

fn split_json(body: &[u8], max_readings: usize) -> Result<Vec<Entry>, BodyError> {
    let mut too_many = false;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let seed = TopLevel {
        max_readings,
        too_many: &mut too_many,
    };
    let entries = match seed.deserialize(&mut deserializer) {
        Ok(entries) => entries,
        Err(_) if too_many => {
            return Err(BodyError::TooManyReadings {
                limit: max_readings,
            });
        }
        Err(err) => return Err(invalid_json(&err, "")),
    };
    // A complete value followed by more is most likely NDJSON sent as JSON.
    deserializer.end().map_err(|err| {
        invalid_json(
            &err,
            " (for one reading per line, send Content-Type: application/x-ndjson)",
        )
    })?;
    Ok(entries)
}

fn split_ndjson(body: &[u8], max_readings: usize) -> Result<Vec<Entry>, BodyError> {
    let mut entries = Vec::new();
    for (index, line) in body.split(|&byte| byte == b'\n').enumerate() {
        if is_blank(line) {
            continue;
        }
        if entries.len() == max_readings {
            return Err(BodyError::TooManyReadings {
                limit: max_readings,
            });
        }
        entries.push(parse_line(line, index + 1));
    }
    Ok(entries)
}

fn parse_line(line: &[u8], line_number: usize) -> Entry {
    let mut deserializer = serde_json::Deserializer::from_slice(line);
    let parsed = Shape::Reading
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(value) => object_entry(value),
        Err(err) => Err(Rejection::new(
            RejectReason::InvalidJson,
            format!(
                "invalid JSON on line {line_number}, column {}: {}",
                err.column(),
                error_text(&err)
            ),
        )),
    }
}

fn object_entry(value: Value) -> Entry {
    if value.is_object() {
        Ok(value)
    } else {
        Err(Rejection::not_an_object(&value))
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

fn invalid_json(err: &serde_json::Error, hint: &str) -> BodyError {
    BodyError::InvalidJson {
        line: err.line(),
        column: err.column(),
        message: format!("{}{hint}", error_text(err)),
    }
}

/// serde_json's message without its " at line L column C" suffix, so that we can
/// state the position ourselves (NDJSON lines are parsed one by one: their own line
/// number is always 1).
fn error_text(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Reads the top level of a JSON body: an object is one reading, an array is one
/// reading per element. Elements are taken one at a time, so an array longer than
/// the cap is refused without materialising the rest of it.
struct TopLevel<'a> {
    max_readings: usize,
    /// Set when the cap stopped the parse, to tell that apart from a syntax error.
    too_many: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Vec<Entry>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Entry>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Vec<Entry>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reading object or an array of reading objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<Entry>, A::Error> {
        let reading = Shape::Reading.deserialize(MapAccessDeserializer::new(map))?;
        Ok(vec![Ok(reading)])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Entry>, A::Error> {
        let mut entries = Vec::new();
        while let Some(value) = seq.next_element_seed(Shape::Reading)? {
            if entries.len() == self.max_readings {
                *self.too_many = true;
                return Err(de::Error::custom("too many readings"));
            }
            entries.push(object_entry(value));
        }
        Ok(entries)
    }
}

/// How much of a JSON value is kept while parsing. A reading is an object whose
/// `metrics` is an object of scalars, and every other field a scalar: anything
/// else nested in it is skipped as it streams past and stands as an empty array or
/// object, so validation can still name its type but a huge one costs no memory
/// (a parsed `Value` takes about 16 times the bytes of a small number's text).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Reading,
    Metrics,
    Scalar,
}

impl Shape {
    /// The shape of a field's value inside an object of this shape.
    fn field(self, name: &str) -> Shape {
        match (self, name) {
            (Shape::Reading, "metrics") => Shape::Metrics,
            _ => Shape::Scalar,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Shape {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Value, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Value, E> {
        Ok(Value::from(number))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Value, E> {
        Ok(Value::from(number))
    }

    fn visit_f64<E>(self, number: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.to_owned()))
    }

    fn visit_string<E>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Value::Array(Vec::new()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        if self == Shape::Scalar {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(Value::Object(fields));
        }
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.field(&name))?;
            fields.insert(name, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
impl BodyCaps {
    /// Small caps, so tests can reach each of them.
    pub(crate) fn for_tests() -> BodyCaps {
        BodyCaps {
            max_body_bytes: 64 * 1024,
            max_readings: 5,
            max_metrics: 4,
            max_name_len: 16,
            max_string_len: 8,
            max_id_len: 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crate::server::body_error_code;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use serde_json::json;

    use super::*;

    fn gzip(chunks: impl IntoIterator<Item = Vec<u8>>) -> Bytes {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        for chunk in chunks {
            encoder.write_all(&chunk).unwrap();
        }
        encoder.finish().unwrap().into()
    }

    fn caps_with_body(max_body_bytes: usize) -> BodyCaps {
        BodyCaps {
            max_body_bytes,
            ..BodyCaps::for_tests()
        }
    }

    fn split(body: &str, format: BodyFormat) -> Result<Vec<Entry>, BodyError> {
        split_readings(body.as_bytes(), format, &BodyCaps::for_tests(), Utc::now())
    }

    fn rejection(entry: &Entry) -> &Rejection {
        entry.as_ref().expect_err("expected a rejection")
    }

    #[test]
    fn encodings() {
        for (header, expected) in [
            (None, Encoding::Identity),
            (Some("identity"), Encoding::Identity),
            (Some("gzip"), Encoding::Gzip),
            (Some(" GZip "), Encoding::Gzip),
            (Some("x-gzip"), Encoding::Gzip),
        ] {
            assert_eq!(
                Encoding::from_header(header).unwrap(),
                expected,
                "{header:?}"
            );
        }
        for header in ["br", "deflate", "zstd", "gzip, br", ""] {
            let err = Encoding::from_header(Some(header)).unwrap_err();
            assert!(matches!(err, BodyError::UnsupportedEncoding(_)), "{header}");
            assert_eq!(
                (
                    body_error_code(&err).status().as_u16(),
                    body_error_code(&err).as_str()
                ),
                (415, "unsupported_encoding")
            );
        }
    }

    #[test]
    fn content_types() {
        for (header, expected) in [
            (None, BodyFormat::Json),
            (Some("application/json"), BodyFormat::Json),
            (Some("application/json; charset=utf-8"), BodyFormat::Json),
            (Some("Application/JSON;Charset=\"UTF-8\""), BodyFormat::Json),
            (Some("application/vnd.acme.reading+json"), BodyFormat::Json),
            (Some("application/x-ndjson"), BodyFormat::NdJson),
            (
                Some("application/ndjson; charset=us-ascii"),
                BodyFormat::NdJson,
            ),
            (Some("application/x-ndjson; boundary=x"), BodyFormat::NdJson),
        ] {
            assert_eq!(
                BodyFormat::from_content_type(header).unwrap(),
                expected,
                "{header:?}"
            );
        }
        for header in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=iso-8859-1",
            "application/jsonl",
            "text/x+json",
            "",
        ] {
            let err = BodyFormat::from_content_type(Some(header)).unwrap_err();
            assert!(
                matches!(err, BodyError::UnsupportedMediaType(_)),
                "{header}"
            );
            assert_eq!(
                (
                    body_error_code(&err).status().as_u16(),
                    body_error_code(&err).as_str()
                ),
                (415, "unsupported_media_type")
            );
        }
    }

    #[test]
    fn unsupported_header_is_quoted_and_shortened() {
        let long = format!("text/{}", "x".repeat(1000));
        let message = BodyFormat::from_content_type(Some(&long))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("unsupported Content-Type \"text/xxx"),
            "{message}"
        );
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn identity_passes_through_without_copy() {
        let raw = Bytes::from_static(b"{\"ts\": 1}");
        let decoded = decode(raw.clone(), Encoding::Identity, &caps_with_body(raw.len())).unwrap();
        assert_eq!(decoded.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn identity_over_the_cap_is_too_large() {
        let raw = Bytes::from(vec![b' '; 11]);
        let err = decode(raw, Encoding::Identity, &caps_with_body(10)).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }));
        assert_eq!(
            (
                body_error_code(&err).status().as_u16(),
                body_error_code(&err).as_str()
            ),
            (413, "body_too_large")
        );
    }

    #[test]
    fn gzip_round_trip() {
        let body = br#"[{"ts": 1, "metrics": {"t": 1}}]"#.to_vec();
        let decoded = decode(gzip([body.clone()]), Encoding::Gzip, &caps_with_body(1024)).unwrap();
        assert_eq!(decoded, body);
    }

    #[test]
    fn gzip_exactly_at_the_cap_is_accepted() {
        let decoded = decode(
            gzip([vec![b'a'; 100]]),
            Encoding::Gzip,
            &caps_with_body(100),
        )
        .unwrap();
        assert_eq!(decoded.len(), 100);
        let err = decode(
            gzip([vec![b'a'; 101]]),
            Encoding::Gzip,
            &caps_with_body(100),
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 100 }));
    }

    #[test]
    fn concatenated_gzip_members_are_one_body() {
        let mut raw = gzip([b"[{},".to_vec()]).to_vec();
        raw.extend_from_slice(&gzip([b"{}]".to_vec()]));
        let decoded = decode(raw.into(), Encoding::Gzip, &caps_with_body(1024)).unwrap();
        assert_eq!(decoded, &b"[{},{}]"[..]);
    }

    #[test]
    fn gzip_bomb_is_cut_at_the_cap() {
        const MIB: usize = 1024 * 1024;
        // 10 MiB of zeros, fed in 64 KiB chunks so the test itself stays small.
        let bomb = gzip((0..160).map(|_| vec![0u8; 64 * 1024]));
        assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
        let err = decode(bomb, Encoding::Gzip, &caps_with_body(MIB)).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: MIB }), "{err}");
    }

    #[test]
    fn corrupt_gzip_is_bad_encoding() {
        let good = gzip([b"{\"ts\": 1}".to_vec()]);
        let truncated = good.slice(..good.len() - 6);
        let mut flipped = good.to_vec();
        flipped[12] ^= 0xff;
        let cases: [(&str, Bytes); 4] = [
            ("not gzip at all", Bytes::from_static(b"{\"ts\": 1}")),
            ("truncated", truncated),
            ("corrupt deflate data", flipped.into()),
            ("trailing garbage", [&good[..], b"garbage"].concat().into()),
        ];
        for (case, raw) in cases {
            let err = decode(raw, Encoding::Gzip, &caps_with_body(1024)).unwrap_err();
            assert!(matches!(err, BodyError::BadEncoding(_)), "{case}: {err:?}");
            assert_eq!(
                (
                    body_error_code(&err).status().as_u16(),
                    body_error_code(&err).as_str()
                ),
                (400, "bad_encoding"),
                "{case}"
            );
        }
    }

    #[test]
    fn single_object_is_one_reading() {
        let entries = split(r#" {"ts": 1, "metrics": {"t": 2}} "#, BodyFormat::Json).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].as_ref().unwrap(),
            &json!({"ts": 1, "metrics": {"t": 2}})
        );
    }

    #[test]
    fn array_mixing_objects_and_other_values() {
        let entries = split(r#"[{"a": 1}, 2, {"b": 2}, [], null]"#, BodyFormat::Json).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].as_ref().unwrap(), &json!({"a": 1}));
        assert_eq!(entries[2].as_ref().unwrap(), &json!({"b": 2}));
        for (index, found) in [(1, "a number"), (3, "an array"), (4, "null")] {
            let rejection = rejection(&entries[index]);
            assert_eq!(rejection.reason, RejectReason::NotAnObject);
            assert!(rejection.message.contains(found), "{}", rejection.message);
        }
    }

    #[test]
    fn nested_values_are_skipped_while_parsing_but_keep_their_type() {
        let big: Vec<u32> = (0..10_000).collect();
        let body =
            json!({"id": {"x": 1}, "ts": [1], "metrics": {"a": big, "b": {"c": [2]}, "d": 1.5}});
        for format in [BodyFormat::Json, BodyFormat::NdJson] {
            let entries = split(&body.to_string(), format).unwrap();
            assert_eq!(
                entries[0].as_ref().unwrap(),
                &json!({"id": {}, "ts": [], "metrics": {"a": [], "b": {}, "d": 1.5}})
            );
        }
        let entries = split("[[1, [2, 3]], {\"metrics\": {\"t\": 1}}]", BodyFormat::Json).unwrap();
        assert_eq!(rejection(&entries[0]).reason, RejectReason::NotAnObject);
        assert_eq!(entries[1].as_ref().unwrap(), &json!({"metrics": {"t": 1}}));
    }

    #[test]
    fn empty_bodies() {
        for (body, format) in [
            ("", BodyFormat::Json),
            (" \r\n\t", BodyFormat::Json),
            ("[]", BodyFormat::Json),
            ("[ ]", BodyFormat::Json),
            ("", BodyFormat::NdJson),
            ("\n\r\n  \n", BodyFormat::NdJson),
            ("\u{feff}", BodyFormat::Json),
        ] {
            let err = split(body, format).unwrap_err();
            assert!(matches!(err, BodyError::Empty), "{body:?}: {err:?}");
            assert_eq!(
                (
                    body_error_code(&err).status().as_u16(),
                    body_error_code(&err).as_str()
                ),
                (400, "empty_body")
            );
        }
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let entries = split("\u{feff}{\"a\": 1}", BodyFormat::Json).unwrap();
        assert_eq!(entries[0].as_ref().unwrap(), &json!({"a": 1}));
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let err = split("[\n  {\"a\": 1},\n  {\"b\": }\n]", BodyFormat::Json).unwrap_err();
        let BodyError::InvalidJson { line, column, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*line, *column), (3, 9));
        assert_eq!(
            err.to_string(),
            "invalid JSON at line 3, column 9: expected value"
        );
        assert_eq!(
            (
                body_error_code(&err).status().as_u16(),
                body_error_code(&err).as_str()
            ),
            (400, "invalid_json")
        );
    }

    #[test]
    fn top_level_scalar_is_invalid() {
        let err = split("42", BodyFormat::Json).unwrap_err();
        assert!(matches!(err, BodyError::InvalidJson { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("expected a reading object or an array"),
            "{err}"
        );
    }

    #[test]
    fn ndjson_sent_as_json_gets_a_hint() {
        let err = split("{\"a\": 1}\n{\"b\": 2}\n", BodyFormat::Json).unwrap_err();
        assert!(
            matches!(err, BodyError::InvalidJson { line: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("application/x-ndjson"), "{err}");
    }

    #[test]
    fn out_of_range_number_is_invalid_json() {
        // Without serde_json's arbitrary_precision, 1e999 cannot be parsed at all.
        let err = split(r#"{"ts": 1, "metrics": {"t": 1e999}}"#, BodyFormat::Json).unwrap_err();
        assert!(matches!(err, BodyError::InvalidJson { .. }), "{err:?}");
        assert!(err.to_string().contains("number out of range"), "{err}");
        assert_eq!(body_error_code(&err).status().as_u16(), 400);
    }

    #[test]
    fn deep_nesting_is_a_client_error_not_a_crash() {
        let deep =
            |open: &str, close: &str| format!("{}{}", open.repeat(100_000), close.repeat(100_000));
        // Nesting where no reading has any is skipped as it streams past (without
        // recursion): what is left is refused by validation like any other wrong type.
        let entries = split(&deep("[", "]"), BodyFormat::Json).unwrap();
        assert_eq!(rejection(&entries[0]).reason, RejectReason::NotAnObject);
        let in_metrics = format!("[{{\"metrics\": {{\"a\": {}}}}}]", deep("[", "]"));
        let entries = split(&in_metrics, BodyFormat::Json).unwrap();
        assert_eq!(entries[0].as_ref().unwrap(), &json!({"metrics": {"a": []}}));
        // Malformed deep down is still found, and is the client's error.
        let err = split(&deep("{\"a\":", "}"), BodyFormat::Json).unwrap_err();
        assert_eq!(body_error_code(&err).status().as_u16(), 400);
        let ndjson = format!("{{\"a\": 1}}\n{}\n", deep("[", "]"));
        let entries = split(&ndjson, BodyFormat::NdJson).unwrap();
        assert!(entries[0].is_ok());
        assert_eq!(rejection(&entries[1]).reason, RejectReason::NotAnObject);
    }

    #[test]
    fn ndjson_bad_line_rejects_only_that_line() {
        let body = "{\"a\": 1}\r\n\n{\"b\": oops}\n  \n[1]\n{\"c\": 3}";
        let entries = split(body, BodyFormat::NdJson).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].as_ref().unwrap(), &json!({"a": 1}));
        let bad_line = rejection(&entries[1]);
        assert_eq!(bad_line.reason, RejectReason::InvalidJson);
        assert_eq!(
            bad_line.message,
            "invalid JSON on line 3, column 7: expected value"
        );
        assert_eq!(rejection(&entries[2]).reason, RejectReason::NotAnObject);
        assert_eq!(entries[3].as_ref().unwrap(), &json!({"c": 3}));
    }

    #[test]
    fn too_many_readings() {
        let caps = BodyCaps::for_tests();
        let objects = |n: usize| vec!["{}"; n];
        let line_protocol = BodyFormat::LineProtocol(Precision::Nanoseconds);
        for format in [BodyFormat::Json, BodyFormat::NdJson, line_protocol] {
            let body = |n| match format {
                BodyFormat::Json => format!("[{}]", objects(n).join(",")),
                BodyFormat::NdJson => objects(n).join("\n"),
                // Comments and blank lines are no readings.
                BodyFormat::LineProtocol(_) => {
                    format!("# header\n\n{}", vec!["m f=1"; n].join("\n"))
                }
            };
            let at_cap = split_readings(
                body(caps.max_readings).as_bytes(),
                format,
                &caps,
                Utc::now(),
            );
            assert_eq!(at_cap.unwrap().len(), caps.max_readings);
            let err = split_readings(
                body(caps.max_readings + 1).as_bytes(),
                format,
                &caps,
                Utc::now(),
            )
            .unwrap_err();
            assert!(
                matches!(err, BodyError::TooManyReadings { limit: 5 }),
                "{err:?}"
            );
            assert_eq!(
                (
                    body_error_code(&err).status().as_u16(),
                    body_error_code(&err).as_str()
                ),
                (413, "too_many_readings")
            );
            assert!(
                err.to_string().starts_with(
                    "more than 5 readings in one request, the limit \
                                  LAKEGATE_MAX_READINGS_PER_REQUEST sets"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn line_protocol_of_only_comments_holds_no_readings() {
        let format = BodyFormat::LineProtocol(Precision::Nanoseconds);
        let err = split("# a comment\n\n  # another\n", format).unwrap_err();
        assert!(matches!(err, BodyError::Empty), "{err:?}");
    }

    #[test]
    fn limits_name_their_settings_and_count_in_english() {
        let one = BodyError::TooManyReadings { limit: 1 }.to_string();
        assert!(
            one.starts_with("more than 1 reading in one request"),
            "{one}"
        );
        assert!(one.contains("LAKEGATE_MAX_READINGS_PER_REQUEST"), "{one}");
        let large = BodyError::TooLarge { limit: 10 }.to_string();
        assert!(large.contains("LAKEGATE_MAX_BODY_BYTES"), "{large}");
    }

    #[test]
    fn too_many_readings_stops_before_parsing_the_rest() {
        // The element after the cap is refused even though a later one is malformed.
        let body = "[{},{},{},{},{},{},{\"broken\"]";
        let err = split(body, BodyFormat::Json).unwrap_err();
        assert!(matches!(err, BodyError::TooManyReadings { .. }), "{err:?}");
    }
}
