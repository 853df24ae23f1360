//! Statement results: the manifest, typed values for `JSON_ARRAY`, Arrow record
//! batches for `ARROW_STREAM`, and a cursor that walks the chunks.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;

use super::error::Error;
use super::http::{ApiClient, Call};
use super::wire::Format;

/// One SQL value of a `JSON_ARRAY` result, typed by the manifest's column type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    String(String),
    /// LONG/BIGINT, INT, SHORT, BYTE.
    Int(i64),
    /// DOUBLE, FLOAT.
    Float(f64),
    Bool(bool),
    Timestamp(DateTime<Utc>),
    Date(NaiveDate),
    /// Kept as text so no precision is lost.
    Decimal(String),
}

pub type ResultRow = Vec<Value>;

/// Shape of the result set.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Manifest {
    pub format: Option<Format>,
    #[serde(default)]
    pub schema: Schema,
    #[serde(default)]
    pub total_chunk_count: u64,
    #[serde(default)]
    pub total_row_count: u64,
    /// Cut by row_limit.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Schema {
    #[serde(default)]
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(default)]
    pub position: usize,
    /// `LONG`, `STRING`, `DECIMAL`, … (what decoding follows).
    #[serde(default)]
    pub type_name: String,
    /// The SQL spelling, e.g. `BIGINT`, `DECIMAL(10,2)`.
    #[serde(default)]
    pub type_text: String,
}

/// One chunk as the API returns it: inline rows or links to them.
#[derive(Default, Deserialize)]
pub(crate) struct ResultData {
    data_array: Option<Vec<Vec<Option<String>>>>,
    #[serde(default)]
    external_links: Vec<ExternalLink>,
    next_chunk_index: Option<u64>,
}

impl ResultData {
    /// With external links the index of the next chunk sits on the links.
    fn next_chunk_index(&self) -> Option<u64> {
        self.next_chunk_index.or_else(|| {
            self.external_links
                .last()
                .and_then(|link| link.next_chunk_index)
        })
    }
}

/// A presigned download link. No `Debug`: the URL is a credential.
#[derive(Deserialize)]
struct ExternalLink {
    chunk_index: u64,
    external_link: String,
    expiration: Option<String>,
    #[serde(default)]
    http_headers: HashMap<String, String>,
    next_chunk_index: Option<u64>,
}

/// Links this close to their expiration are fetched again before use.
const LINK_EXPIRY_MARGIN: Duration = Duration::from_secs(2);

impl ExternalLink {
    fn is_expired(&self, now: DateTime<Utc>) -> bool {
        let Some(expiration) = self.expiration.as_deref() else {
            return false;
        };
        DateTime::parse_from_rfc3339(expiration)
            .is_ok_and(|at| at.with_timezone(&Utc) <= now + LINK_EXPIRY_MARGIN)
    }
}

/// The result of a SUCCEEDED statement, read chunk by chunk.
#[derive(Debug)]
pub struct StatementResult {
    api: ApiClient,
    statement_id: String,
    manifest: Manifest,
    first: Option<ResultData>,
    next_chunk: Option<u64>,
}

impl std::fmt::Debug for ResultData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultData")
            .field("links", &self.external_links.len())
            .field("next_chunk_index", &self.next_chunk_index())
            .finish_non_exhaustive()
    }
}

impl StatementResult {
    pub(crate) fn new(
        api: ApiClient,
        statement_id: String,
        manifest: Manifest,
        first: Option<ResultData>,
    ) -> Self {
        // Without the first chunk in hand, start from chunk 0 if there is one.
        let next_chunk = (first.is_none() && manifest.total_chunk_count > 0).then_some(0);
        StatementResult {
            api,
            statement_id,
            manifest,
            first,
            next_chunk,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn columns(&self) -> &[Column] {
        &self.manifest.schema.columns
    }

    /// Rows of the next chunk of a `JSON_ARRAY` result (inline or behind
    /// links), or `None` after the last chunk.
    pub async fn next_rows(&mut self) -> Result<Option<Vec<ResultRow>>, Error> {
        self.expect_format(Format::JsonArray)?;
        let Some(data) = self.next_data().await? else {
            return Ok(None);
        };
        let mut raw_rows = data.data_array.unwrap_or_default();
        for link in data.external_links {
            let bytes = self.download(link).await?;
            let rows: Vec<Vec<Option<String>>> = serde_json::from_slice(&bytes)
                .map_err(|err| Error::Decode(format!("JSON_ARRAY chunk: {err}")))?;
            raw_rows.extend(rows);
        }
        decode_rows(self.columns(), raw_rows).map(Some)
    }

    /// Record batches of the next chunk of an `ARROW_STREAM` result, or `None`
    /// after the last chunk.
    pub async fn next_batches(&mut self) -> Result<Option<Vec<RecordBatch>>, Error> {
        self.expect_format(Format::ArrowStream)?;
        let Some(data) = self.next_data().await? else {
            return Ok(None);
        };
        let mut batches = Vec::new();
        for link in data.external_links {
            batches.extend(decode_arrow(self.download(link).await?)?);
        }
        Ok(Some(batches))
    }

    /// Every remaining row.
    pub async fn collect_rows(mut self) -> Result<Vec<ResultRow>, Error> {
        let mut rows = Vec::new();
        while let Some(chunk) = self.next_rows().await? {
            rows.extend(chunk);
        }
        Ok(rows)
    }

    /// Every remaining record batch.
    pub async fn collect_batches(mut self) -> Result<Vec<RecordBatch>, Error> {
        let mut batches = Vec::new();
        while let Some(chunk) = self.next_batches().await? {
            batches.extend(chunk);
        }
        Ok(batches)
    }

    fn expect_format(&self, wanted: Format) -> Result<(), Error> {
        match self.manifest.format {
            Some(format) if format != wanted => Err(Error::InvalidRequest(format!(
                "the result is {format:?}, not {wanted:?}"
            ))),
            _ => Ok(()),
        }
    }

    async fn next_data(&mut self) -> Result<Option<ResultData>, Error> {
        let data = match (self.first.take(), self.next_chunk) {
            (Some(first), _) => first,
            (None, Some(index)) => self.fetch_chunk(index).await?,
            (None, None) => return Ok(None),
        };
        self.next_chunk = data.next_chunk_index();
        Ok(Some(data))
    }

    async fn fetch_chunk(&self, index: u64) -> Result<ResultData, Error> {
        let path = format!(
            "/api/2.0/sql/statements/{}/result/chunks/{index}",
            self.statement_id
        );
        self.api.call(Call::get(path)).await
    }

    async fn download(&self, link: ExternalLink) -> Result<Bytes, Error> {
        let link = if link.is_expired(Utc::now()) {
            tracing::debug!(
                chunk = link.chunk_index,
                "external link expired; fetching a fresh one"
            );
            self.fetch_chunk(link.chunk_index)
                .await?
                .external_links
                .into_iter()
                .find(|fresh| fresh.chunk_index == link.chunk_index)
                .ok_or_else(|| {
                    Error::Decode(format!(
                        "chunk {} came back without a link",
                        link.chunk_index
                    ))
                })?
        } else {
            link
        };
        self.api
            .download(&link.external_link, &link.http_headers)
            .await
    }
}

fn decode_arrow(bytes: Bytes) -> Result<Vec<RecordBatch>, Error> {
    let arrow_error = |err: arrow_schema::ArrowError| Error::Decode(format!("Arrow stream: {err}"));
    StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(arrow_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow_error)
}

/// How the text of a `JSON_ARRAY` cell is read, from the column's `type_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Float,
    Bool,
    Timestamp,
    Date,
    Decimal,
}

impl Kind {
    fn of(type_name: &str) -> Kind {
        match type_name.to_ascii_uppercase().as_str() {
            "LONG" | "BIGINT" | "INT" | "INTEGER" | "SHORT" | "SMALLINT" | "BYTE" | "TINYINT" => {
                Kind::Int
            }
            "DOUBLE" | "FLOAT" | "REAL" => Kind::Float,
            "BOOLEAN" => Kind::Bool,
            "TIMESTAMP" | "TIMESTAMP_NTZ" => Kind::Timestamp,
            "DATE" => Kind::Date,
            "DECIMAL" => Kind::Decimal,
            // STRING, and types without a dedicated variant (BINARY, INTERVAL, ARRAY, ...) stay text.
            _ => Kind::Text,
        }
    }

    fn parse(self, text: String) -> Option<Value> {
        Some(match self {
            Kind::Text => Value::String(text),
            Kind::Int => Value::Int(text.parse().ok()?),
            // Rust reads Spark's "NaN", "Infinity" and "-Infinity" too.
            Kind::Float => Value::Float(text.parse().ok()?),
            Kind::Bool => Value::Bool(match text.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return None,
            }),
            Kind::Timestamp => Value::Timestamp(parse_timestamp(&text)?),
            Kind::Date => Value::Date(NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok()?),
            Kind::Decimal => Value::Decimal(text),
        })
    }
}

/// RFC 3339 (`2024-05-01T12:00:00.000Z`), or a zoneless time read as UTC.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|naive| naive.and_utc())
}

fn decode_rows(
    columns: &[Column],
    rows: Vec<Vec<Option<String>>>,
) -> Result<Vec<ResultRow>, Error> {
    let kinds: Vec<Kind> = columns
        .iter()
        .map(|column| Kind::of(&column.type_name))
        .collect();
    rows.into_iter()
        .map(|row| {
            if row.len() != kinds.len() {
                return Err(Error::Decode(format!(
                    "row has {} values for {} columns",
                    row.len(),
                    kinds.len()
                )));
            }
            row.into_iter()
                .zip(&kinds)
                .zip(columns)
                .map(|((cell, kind), column)| match cell {
                    None => Ok(Value::Null),
                    Some(text) => kind.parse(text).ok_or_else(|| {
                        Error::Decode(format!(
                            "column {} is not a valid {}",
                            column.name, column.type_name
                        ))
                    }),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, type_name: &str) -> Column {
        Column {
            name: name.into(),
            position: 0,
            type_name: type_name.into(),
            type_text: type_name.into(),
        }
    }

    fn cells(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn decodes_every_supported_type() {
        let columns: Vec<Column> = [
            "STRING",
            "LONG",
            "INT",
            "SHORT",
            "BYTE",
            "DOUBLE",
            "FLOAT",
            "BOOLEAN",
            "TIMESTAMP",
            "DATE",
            "DECIMAL",
        ]
        .iter()
        .map(|t| column(t, t))
        .collect();
        let row = cells(&[
            Some("a"),
            Some("-9000000000"),
            Some("7"),
            Some("-3"),
            Some("1"),
            Some("2.5"),
            Some("NaN"),
            Some("true"),
            Some("2024-05-01T12:00:00.250Z"),
            Some("2024-05-01"),
            Some("12.30"),
        ]);
        let rows = decode_rows(&columns, vec![row]).unwrap();
        let at = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            rows[0][..6],
            [
                Value::String("a".into()),
                Value::Int(-9_000_000_000),
                Value::Int(7),
                Value::Int(-3),
                Value::Int(1),
                Value::Float(2.5),
            ]
        );
        assert!(matches!(rows[0][6], Value::Float(f) if f.is_nan()));
        assert_eq!(
            rows[0][7..],
            [
                Value::Bool(true),
                Value::Timestamp(at),
                Value::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap()),
                Value::Decimal("12.30".into()),
            ]
        );
    }

    #[test]
    fn nulls_and_zoneless_timestamps() {
        let columns = [column("t", "TIMESTAMP"), column("n", "LONG")];
        let rows =
            decode_rows(&columns, vec![cells(&[Some("2024-05-01 12:00:00"), None])]).unwrap();
        let at = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rows, vec![vec![Value::Timestamp(at), Value::Null]]);
    }

    #[test]
    fn rejects_malformed_cells_and_rows() {
        let columns = [column("n", "LONG")];
        let err = decode_rows(&columns, vec![cells(&[Some("x")])]).unwrap_err();
        assert!(err.to_string().contains("column n"), "{err}");
        assert!(decode_rows(&columns, vec![cells(&[Some("1"), Some("2")])]).is_err());
    }

    #[test]
    fn link_expiry_has_a_margin() {
        let now = Utc::now();
        let link = |expiration: Option<String>| ExternalLink {
            chunk_index: 0,
            external_link: String::new(),
            expiration,
            http_headers: HashMap::new(),
            next_chunk_index: None,
        };
        let at = |secs: i64| Some((now + chrono::Duration::seconds(secs)).to_rfc3339());
        assert!(link(at(-1)).is_expired(now));
        assert!(link(at(1)).is_expired(now));
        assert!(!link(at(60)).is_expired(now));
        assert!(!link(None).is_expired(now));
    }
}
