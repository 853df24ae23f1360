//! Runs the read statements with one client's credentials and decodes the
//! results: small ones inline as `JSON_ARRAY`, long series as Arrow through
//! external links. Every statement has a row limit, so no answer exceeds the caps.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use chrono::{DateTime, Utc};

use super::answers::{
    DeviceList, DeviceSummary, Latest, LatestReading, Point, Series, StoredValue,
};
use super::params::{LatestQuery, SeriesQuery};
use crate::databricks::{
    Disposition, Error, Format, Param, ResultRow, StatementRequest, StatementResult, Statements,
    Value,
};
use crate::table::{TableName, reads};

/// A dashboard query that takes longer is cancelled.
const QUERY_DEADLINE: Duration = Duration::from_secs(50);
/// Answers that may have more rows come through external links.
const INLINE_MAX_ROWS: u64 = 1000;
/// Room for this many metrics per listed device, on average.
const METRICS_PER_DEVICE: u64 = 100;

pub(crate) struct TableReader<'a> {
    statements: Statements,
    table: &'a TableName,
}

impl<'a> TableReader<'a> {
    pub(crate) fn new(statements: Statements, table: &'a TableName) -> Self {
        TableReader { statements, table }
    }

    /// The first `max_devices` devices by id seen since `since`, with their metrics;
    /// `now` anchors "last hour" and "last day". Rejection counts are left at 0 for the
    /// caller.
    pub(crate) async fn devices(
        &self,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
        max_devices: usize,
    ) -> Result<DeviceList, Error> {
        let request = StatementRequest::new(reads::devices(self.table)).params([
            Param::timestamp("now", now),
            Param::timestamp("since", since),
        ]);
        let (rows, mut truncated) = self.rows(request, max_devices as u64).await?;
        let mut devices = rows
            .iter()
            .map(device_summary)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(last) = devices.last() {
            let request = StatementRequest::new(reads::device_metrics(self.table)).params([
                Param::string("last_device", last.device_id.as_str()),
                Param::timestamp("since", since),
            ]);
            let max_rows = max_devices as u64 * METRICS_PER_DEVICE;
            let (rows, metrics_truncated) = self.rows(request, max_rows).await?;
            truncated |= metrics_truncated;
            let mut metrics: HashMap<String, Vec<String>> = HashMap::new();
            for row in rows {
                let [Value::String(device_id), Value::String(metric)] = &row[..] else {
                    return Err(unexpected("device metrics", &row));
                };
                // Rows come sorted by device and metric, so each list is sorted.
                metrics
                    .entry(device_id.clone())
                    .or_default()
                    .push(metric.clone());
            }
            for device in &mut devices {
                device.metrics = metrics.remove(&device.device_id).unwrap_or_default();
            }
        }
        Ok(DeviceList {
            generated_at: now,
            devices,
            truncated,
        })
    }

    pub(crate) async fn series(&self, query: SeriesQuery) -> Result<Series, Error> {
        let bucket_us = query
            .bucket
            .width()
            .num_microseconds()
            .expect("a day of microseconds fits");
        let max_rows = query.max_rows();
        let request = StatementRequest::new(reads::series(self.table))
            .params([
                Param::string("device_id", query.device_id.as_str()),
                Param::string("metric", query.metric.as_str()),
                Param::timestamp("from", query.from),
                Param::timestamp("to", query.to),
                Param::i64("bucket_us", bucket_us),
            ])
            .row_limit(max_rows);
        let points = if max_rows > INLINE_MAX_ROWS {
            let request = request.disposition(Disposition::ExternalLinks, Format::ArrowStream);
            let batches = self.execute(request).await?.collect_batches().await?;
            let mut points = Vec::new();
            for batch in &batches {
                points.extend(points_of_batch(batch)?);
            }
            points
        } else {
            let (rows, _) = self.rows(request, max_rows).await?;
            rows.iter().map(point).collect::<Result<_, _>>()?
        };
        Ok(Series {
            device_id: query.device_id,
            metric: query.metric,
            bucket: query.bucket,
            from: query.from,
            to: query.to,
            points,
        })
    }

    /// `max_metrics` is the ingest limit of metrics per reading, which bounds the
    /// rows of one reading.
    pub(crate) async fn latest(
        &self,
        query: LatestQuery,
        max_metrics: usize,
    ) -> Result<Latest, Error> {
        let request = StatementRequest::new(reads::latest(self.table))
            .param(Param::string("device_id", query.device_id.as_str()))
            .param(Param::i64("limit", query.limit.into()));
        let max_rows = u64::from(query.limit) * max_metrics as u64;
        let (rows, _) = self.rows(request, max_rows).await?;
        let mut readings: Vec<LatestReading> = Vec::new();
        for row in &rows {
            let [
                Value::String(reading_id),
                Value::Timestamp(ts),
                Value::Timestamp(ingested_at),
                Value::String(metric),
                value,
                value_str,
            ] = &row[..]
            else {
                return Err(unexpected("latest", row));
            };
            // A reading's rows are adjacent: ordered by (ts, reading_id).
            let same = |last: &LatestReading| last.reading_id == *reading_id && last.ts == *ts;
            if !readings.last().is_some_and(same) {
                readings.push(LatestReading {
                    reading_id: reading_id.clone(),
                    ts: *ts,
                    ingested_at: *ingested_at,
                    metrics: BTreeMap::new(),
                });
            }
            let value = match (value, value_str) {
                (Value::Float(number), _) => StoredValue::Number(*number),
                (Value::Null, Value::String(text)) => StoredValue::Text(text.clone()),
                // Not written by lakegate; the reading is still listed.
                (Value::Null, Value::Null) => continue,
                _ => return Err(unexpected("latest", row)),
            };
            let reading = readings.last_mut().expect("pushed above");
            reading.metrics.insert(metric.clone(), value);
        }
        Ok(Latest {
            device_id: query.device_id,
            readings,
        })
    }

    async fn execute(&self, request: StatementRequest) -> Result<StatementResult, Error> {
        self.statements
            .execute(request.deadline(QUERY_DEADLINE))
            .await
    }

    /// At most `max_rows` rows as `JSON_ARRAY`, and whether the limit cut them. Inline
    /// results fail past 25 MiB, so answers that may be long come through external links.
    async fn rows(
        &self,
        request: StatementRequest,
        max_rows: u64,
    ) -> Result<(Vec<ResultRow>, bool), Error> {
        let mut request = request.row_limit(max_rows);
        if max_rows > INLINE_MAX_ROWS {
            request = request.disposition(Disposition::ExternalLinks, Format::JsonArray);
        }
        let result = self.execute(request).await?;
        let truncated = result.manifest().truncated;
        Ok((result.collect_rows().await?, truncated))
    }
}

fn device_summary(row: &ResultRow) -> Result<DeviceSummary, Error> {
    let [
        Value::String(device_id),
        Value::Timestamp(last_seen),
        Value::Int(readings_last_hour),
        Value::Int(readings_last_day),
    ] = &row[..]
    else {
        return Err(unexpected("devices", row));
    };
    Ok(DeviceSummary {
        device_id: device_id.clone(),
        last_seen: *last_seen,
        readings_last_hour: *readings_last_hour,
        readings_last_day: *readings_last_day,
        metrics: Vec::new(),
        rejected_since_start: 0,
    })
}

fn point(row: &ResultRow) -> Result<Point, Error> {
    let [
        Value::Timestamp(t),
        Value::Float(min),
        Value::Float(avg),
        Value::Float(max),
        Value::Int(count),
    ] = &row[..]
    else {
        return Err(unexpected("series", row));
    };
    Ok(Point::new(*t, *min, *avg, *max, *count))
}

/// The same columns as [`point`], from Arrow (timestamps in microseconds).
fn points_of_batch(batch: &RecordBatch) -> Result<Vec<Point>, Error> {
    let t = column::<TimestampMicrosecondType>(batch, 0)?;
    let min = column::<Float64Type>(batch, 1)?;
    let avg = column::<Float64Type>(batch, 2)?;
    let max = column::<Float64Type>(batch, 3)?;
    let count = column::<Int64Type>(batch, 4)?;
    (0..batch.num_rows())
        .map(|i| {
            let t = DateTime::from_timestamp_micros(t.value(i))
                .ok_or_else(|| Error::Decode("series: bucket time out of range".into()))?;
            Ok(Point::new(
                t,
                min.value(i),
                avg.value(i),
                max.value(i),
                count.value(i),
            ))
        })
        .collect()
}

/// Column `index` as a primitive array without NULLs (every bucket has a value).
fn column<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    index: usize,
) -> Result<&PrimitiveArray<T>, Error> {
    batch
        .columns()
        .get(index)
        .and_then(|array| array.as_primitive_opt::<T>())
        .filter(|array| array.null_count() == 0)
        .ok_or_else(|| {
            Error::Decode(format!(
                "series: column {index} is not {} without NULLs",
                T::DATA_TYPE
            ))
        })
}

fn unexpected(query: &str, row: &ResultRow) -> Error {
    Error::Decode(format!("{query}: unexpected row {row:?}"))
}
