//! Result sets: a statement's output cut into chunks of `rows_per_chunk` rows, each encoded once
//! in the requested format, plus the manifest that describes them.
//!
//! Assumptions: JSON_ARRAY renders every non-null value as a string; TIMESTAMP values in UTC as
//! `2026-11-29T12:00:00.000Z` (millisecond precision, like the samples Databricks returns), DATE
//! as `2026-11-29`, booleans `true`/`false`, DECIMAL with its scale. CSV chunks carry no header
//! row (the manifest has the schema). ARROW_STREAM chunks are one IPC stream each, with the
//! engine's Arrow types (TIMESTAMP is `timestamp[us, tz=UTC]`).

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sql::{Output, SqlError, column_type};

const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";
const TIMESTAMP_NTZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3f";

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Format {
    #[default]
    JsonArray,
    ArrowStream,
    Csv,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::JsonArray => "application/json",
            Format::ArrowStream => "application/vnd.apache.arrow.stream",
            Format::Csv => "text/csv",
        }
    }
}

pub(crate) struct ResultSet {
    pub format: Format,
    pub columns: Vec<Value>,
    pub chunks: Vec<Chunk>,
    pub truncated: bool,
}

pub(crate) struct Chunk {
    pub row_offset: usize,
    pub row_count: usize,
    pub data: ChunkData,
}

pub(crate) enum ChunkData {
    /// JSON_ARRAY rows, kept as JSON to embed them in INLINE responses.
    Rows(Value),
    /// ARROW_STREAM or CSV bytes, or serialized JSON_ARRAY rows for download.
    Bytes(Vec<u8>),
}

impl Chunk {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        match &self.data {
            ChunkData::Rows(rows) => serde_json::to_vec(rows).unwrap_or_default(),
            ChunkData::Bytes(bytes) => bytes.clone(),
        }
    }

    pub(crate) fn byte_count(&self) -> usize {
        match &self.data {
            ChunkData::Rows(rows) => rows.to_string().len(),
            ChunkData::Bytes(bytes) => bytes.len(),
        }
    }
}

impl ResultSet {
    /// Cuts `output` into chunks; at most `row_limit` rows are kept (`truncated` says if any
    /// were dropped). There is always at least one chunk, possibly empty.
    pub(crate) fn build(
        output: Output,
        format: Format,
        rows_per_chunk: usize,
        row_limit: Option<usize>,
    ) -> Result<Self, SqlError> {
        let all = concat_batches(&output.schema, &output.batches).map_err(arrow_error)?;
        let kept = row_limit.map_or(all.num_rows(), |limit| limit.min(all.num_rows()));
        let truncated = kept < all.num_rows();
        let rows_per_chunk = rows_per_chunk.max(1);
        let mut chunks = Vec::new();
        let mut row_offset = 0;
        loop {
            let row_count = rows_per_chunk.min(kept - row_offset);
            let slice = all.slice(row_offset, row_count);
            chunks.push(Chunk {
                row_offset,
                row_count,
                data: encode(&slice, format).map_err(arrow_error)?,
            });
            row_offset += row_count;
            if row_offset >= kept {
                break;
            }
        }
        let columns = output
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(position, field)| {
                let ty = column_type(field.data_type());
                let mut column = serde_json::json!({
                    "name": field.name(),
                    "position": position,
                    "type_name": ty.name,
                    "type_text": ty.text,
                });
                if let (Some(precision), Some(scale)) = (ty.precision, ty.scale) {
                    column["type_precision"] = precision.into();
                    column["type_scale"] = scale.into();
                }
                column
            })
            .collect();
        Ok(Self {
            format,
            columns,
            chunks,
            truncated,
        })
    }

    pub(crate) fn total_rows(&self) -> usize {
        self.chunks.iter().map(|c| c.row_count).sum()
    }

    pub(crate) fn total_bytes(&self) -> usize {
        self.chunks.iter().map(Chunk::byte_count).sum()
    }
}

fn arrow_error(err: ArrowError) -> SqlError {
    SqlError {
        class: None,
        sql_state: None,
        detail: format!("encoding the result failed: {err}"),
    }
}

fn encode(batch: &RecordBatch, format: Format) -> Result<ChunkData, ArrowError> {
    match format {
        Format::JsonArray => json_rows(batch).map(ChunkData::Rows),
        Format::ArrowStream => {
            let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
            writer.write(batch)?;
            writer.into_inner().map(ChunkData::Bytes)
        }
        Format::Csv => {
            let mut writer = WriterBuilder::new()
                .with_header(false)
                .with_timestamp_tz_format(TIMESTAMP_FORMAT.to_string())
                .with_timestamp_format(TIMESTAMP_NTZ_FORMAT.to_string())
                .build(Vec::new());
            writer.write(batch)?;
            Ok(ChunkData::Bytes(writer.into_inner()))
        }
    }
}

/// `[["a","1",null], ...]`: every non-null value as a string.
fn json_rows(batch: &RecordBatch) -> Result<Value, ArrowError> {
    let options = FormatOptions::new()
        .with_timestamp_tz_format(Some(TIMESTAMP_FORMAT))
        .with_timestamp_format(Some(TIMESTAMP_NTZ_FORMAT));
    let formatters = batch
        .columns()
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(column, formatter)| {
                    if column.is_null(row) {
                        Value::Null
                    } else {
                        Value::String(formatter.value(row).to_string())
                    }
                })
                .collect()
        })
        .collect();
    Ok(Value::Array(rows))
}
