//! The writer's way to the table over Zerobus Ingest (`LAKEGATE_SINK=zerobus`), through
//! Databricks' Rust SDK: no warehouse runs to write.
//!
//! Each writer lane has its own stream to the table (and one to the dead-letter table),
//! opened on its first batch. A batch is one `ingest_records_offset` call, all or nothing,
//! and [`BatchSink::write`] returns once the server acknowledged its offset as durable: that
//! is when a `?ack=commit` request hears 200. With one batch in flight per lane, the SDK
//! never holds more than the batch the writer already holds, so the queue's byte budget
//! bounds memory.
//!
//! Zerobus writes at least once. A stream that breaks before acknowledging a batch (the
//! server ends streams after some minutes with error 6002, a connection drops, the service
//! throttles) leaves the batch's outcome unknown: the SDK's own recovery is off, and the
//! writer's retry sends the batch again on a new stream, after its backoff. Rows sent
//! again are counted (`lakegate_zerobus_resent_records_total`); any that were written
//! twice are removed by the `<table>_dedup` view for readers and by `lakegate compact`
//! in the table. Recovering here rather than in the SDK makes every re-send visible and
//! puts throttling under the writer's exponential backoff and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use databricks_zerobus_ingest_sdk::{
    GrpcCode, JsonString, NoTlsConfig, OffsetId, ZerobusError, ZerobusSdk, ZerobusStream,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::Mutex;

use super::writer::{BatchSink, RowBatch, WriteFailure};
use crate::databricks::FailureKind;
use crate::metrics::Metrics;
use crate::table::{TableName, TableRow};

/// Longest error message kept in the dead-letter table (as the statement sink does).
const MAX_ERROR_MESSAGE: usize = 4000;

/// The Zerobus service, shared by every writer's streams (one OAuth token cache).
#[derive(Clone)]
pub(crate) struct ZerobusService {
    sdk: Arc<ZerobusSdk>,
    client_id: String,
    client_secret: SecretString,
}

impl std::fmt::Debug for ZerobusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZerobusService")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ZerobusService {
    /// The service at `endpoint` (`https://<workspace-id>.zerobus.<region>...`, or plain
    /// `http://` on loopback), with table-scoped tokens from `workspace_url`.
    pub(crate) fn new(
        endpoint: &str,
        workspace_url: &str,
        client_id: &str,
        client_secret: SecretString,
    ) -> Result<Self, ZerobusWriteError> {
        let mut builder = ZerobusSdk::builder()
            .endpoint(endpoint)
            .unity_catalog_url(workspace_url)
            .application_name(concat!("lakegate/", env!("CARGO_PKG_VERSION")));
        // The configuration allows http:// only for loopback addresses.
        if endpoint.starts_with("http://") {
            builder = builder.tls_config(Arc::new(NoTlsConfig));
        }
        let sdk = builder.build().map_err(ZerobusWriteError::opening)?;
        Ok(ZerobusService {
            sdk: Arc::new(sdk),
            client_id: client_id.to_owned(),
            client_secret,
        })
    }

    async fn open(&self, table: &str) -> Result<ZerobusStream, ZerobusWriteError> {
        self.sdk
            .stream_builder()
            .table(table)
            .oauth(&self.client_id, self.client_secret.expose_secret())
            .json()
            // The writer recovers: it sees every re-send and backs off as it does for the
            // warehouse (see the module docs).
            .recovery(false)
            // One batch in flight per stream.
            .max_inflight_requests(4)
            .server_lack_of_ack_timeout_ms(ACK_TIMEOUT.as_millis() as u64)
            .flush_timeout_ms(ACK_TIMEOUT.as_millis() as u64)
            .build()
            .await
            .map_err(ZerobusWriteError::opening)
    }
}

/// A batch unacknowledged this long is taken for lost and sent again on a new stream.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// One writer lane's streams: to the table and to the dead-letter table.
pub(crate) struct ZerobusSink {
    service: ZerobusService,
    readings: Lane,
    rejected: Lane,
    metrics: Arc<Metrics>,
}

impl ZerobusSink {
    pub(crate) fn new(
        service: ZerobusService,
        table: &TableName,
        dead_letter: &TableName,
        metrics: Arc<Metrics>,
    ) -> Self {
        ZerobusSink {
            service,
            readings: Lane::new(table),
            rejected: Lane::new(dead_letter),
            metrics,
        }
    }
}

impl BatchSink for ZerobusSink {
    type Error = ZerobusWriteError;

    async fn write(&self, batch: &RowBatch<'_>) -> Result<(), ZerobusWriteError> {
        let ingested_at = now_micros();
        let records = || {
            (batch.rows.iter())
                .map(|row| Record::of(row, ingested_at, None).json())
                .collect()
        };
        self.readings
            .send(&self.service, records, batch.rows.len(), &self.metrics)
            .await
    }

    async fn write_dead_letter(
        &self,
        batch: &RowBatch<'_>,
        refusal: &ZerobusWriteError,
    ) -> Result<(), ZerobusWriteError> {
        let message: String = refusal
            .to_string()
            .chars()
            .take(MAX_ERROR_MESSAGE)
            .collect();
        let refusal = Refusal {
            error_code: refusal.error_class().unwrap_or("UNKNOWN"),
            error_message: &message,
        };
        let ingested_at = now_micros();
        let records = || {
            (batch.rows.iter())
                .map(|row| Record::of(row, ingested_at, Some(&refusal)).json())
                .collect()
        };
        self.rejected
            .send(&self.service, records, batch.rows.len(), &self.metrics)
            .await
    }

    async fn close(&self) {
        self.readings.close().await;
        self.rejected.close().await;
    }
}

/// A stream to one table, opened on demand and dropped when it breaks.
struct Lane {
    table: String,
    stream: Mutex<Option<ZerobusStream>>,
    /// The last batch sent here broke its stream before its acknowledgement: the next send
    /// is that batch again, and may write it twice.
    outcome_unknown: AtomicBool,
}

impl Lane {
    fn new(table: &TableName) -> Self {
        Lane {
            table: table.to_string(),
            stream: Mutex::new(None),
            outcome_unknown: AtomicBool::new(false),
        }
    }

    /// Sends the batch `records` makes and waits until it is durable.
    async fn send(
        &self,
        service: &ZerobusService,
        records: impl Fn() -> Vec<JsonString>,
        rows: usize,
        metrics: &Metrics,
    ) -> Result<(), ZerobusWriteError> {
        let mut slot = self.stream.lock().await;
        // Until the acknowledgement the batch may be written or not: a failure below drops
        // the stream, and the writer sends the batch again on a new one.
        let (stream, offset) = match slot.take() {
            Some(stream) => match stream.ingest_records_offset(records()).await {
                Ok(offset) => (stream, offset),
                // Refused before it was queued, so nothing was sent: the stream ended since
                // the last batch (the service ends streams after some minutes). A new one
                // at once, rather than after the writer's backoff.
                Err(err) if !is_refused_batch(&err) => {
                    tracing::debug!(table = %self.table, error = %err, "the Zerobus stream ended; opening another");
                    drop(stream);
                    self.open_and_ingest(service, records(), metrics).await?
                }
                Err(err) => return Err(ZerobusWriteError::records(err)),
            },
            None => self.open_and_ingest(service, records(), metrics).await?,
        };
        if self.outcome_unknown.swap(false, Ordering::Relaxed) {
            metrics.zerobus_resent_records.inc_by(rows as u64);
        }
        if let Some(offset) = offset
            && let Err(err) = stream.wait_for_offset(offset).await
        {
            let err = ZerobusWriteError::records(err);
            // Refused records were not written; anything else may have been.
            if !err.is_data_error() {
                self.outcome_unknown.store(true, Ordering::Relaxed);
            }
            return Err(err);
        }
        *slot = Some(stream);
        Ok(())
    }

    /// Opens a stream and queues `records` on it.
    async fn open_and_ingest(
        &self,
        service: &ZerobusService,
        records: Vec<JsonString>,
        metrics: &Metrics,
    ) -> Result<(ZerobusStream, Option<OffsetId>), ZerobusWriteError> {
        let stream = service.open(&self.table).await?;
        metrics.zerobus_streams_opened.inc();
        match stream.ingest_records_offset(records).await {
            Ok(offset) => Ok((stream, offset)),
            Err(err) => Err(ZerobusWriteError::records(err)),
        }
    }

    /// Closes the stream gracefully, once every batch sent on it was acknowledged.
    async fn close(&self) {
        if let Some(mut stream) = self.stream.lock().await.take()
            && let Err(err) = stream.close().await
        {
            tracing::debug!(table = %self.table, error = %err, "closing a Zerobus stream");
        }
    }
}

/// The reason a dead-lettered row carries.
struct Refusal<'a> {
    error_code: &'a str,
    error_message: &'a str,
}

/// A row as a Zerobus JSON record: timestamps as microseconds since the epoch, absent
/// values left out (NULL).
#[derive(Serialize)]
struct Record<'a> {
    device_id: &'a str,
    reading_id: &'a str,
    ts: i64,
    metric: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_str: Option<&'a str>,
    ingested_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
}

impl<'a> Record<'a> {
    fn of(row: &'a TableRow, ingested_at: i64, refusal: Option<&Refusal<'a>>) -> Self {
        Record {
            device_id: &row.device_id,
            reading_id: &row.reading_id,
            ts: row.ts_us,
            metric: &row.metric,
            value: row.value,
            value_str: row.value_str.as_deref(),
            ingested_at,
            error_code: refusal.map(|r| r.error_code),
            error_message: refusal.map(|r| r.error_message),
        }
    }

    fn json(&self) -> JsonString {
        JsonString(serde_json::to_string(self).expect("records serialize"))
    }
}

/// The SDK refused the batch itself (too large), not the stream.
fn is_refused_batch(err: &ZerobusError) -> bool {
    matches!(err, ZerobusError::InvalidArgument(_))
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A Zerobus write that failed, and whether it failed opening a stream or on its records.
#[derive(Debug, thiserror::Error)]
#[error("Zerobus: {source}")]
pub(crate) struct ZerobusWriteError {
    source: ZerobusError,
    /// While opening a stream, an invalid argument is the table's or the request's (the
    /// table's layout, its name), never the rows'.
    opening: bool,
}

impl ZerobusWriteError {
    fn opening(source: ZerobusError) -> Self {
        ZerobusWriteError {
            source,
            opening: true,
        }
    }

    fn records(source: ZerobusError) -> Self {
        ZerobusWriteError {
            source,
            opening: false,
        }
    }

    /// The gRPC status the server ended the stream with (or refused to open it with).
    fn status_code(&self) -> Option<GrpcCode> {
        match &self.source {
            ZerobusError::CreateStreamError(status) | ZerobusError::StreamClosedError(status) => {
                Some(status.code())
            }
            _ => None,
        }
    }
}

impl WriteFailure for ZerobusWriteError {
    fn kind(&self) -> FailureKind {
        if self.is_data_error() {
            return FailureKind::Request;
        }
        match &self.source {
            ZerobusError::CreateStreamError(_) | ZerobusError::StreamClosedError(_) => {
                match self.status_code() {
                    Some(
                        GrpcCode::InvalidArgument
                        | GrpcCode::NotFound
                        | GrpcCode::PermissionDenied
                        | GrpcCode::Unauthenticated
                        | GrpcCode::FailedPrecondition
                        | GrpcCode::OutOfRange
                        | GrpcCode::Unimplemented,
                    ) => FailureKind::Target,
                    // Throttling, unavailability (6002 included), timeouts, unknown codes.
                    _ => FailureKind::Transient,
                }
            }
            ZerobusError::InvalidTableName(_)
            | ZerobusError::InvalidZerobusEndpointError(_)
            | ZerobusError::InvalidUCEndpointError(_)
            | ZerobusError::InvalidUCTokenError(_)
            | ZerobusError::InvalidSchema { .. } => FailureKind::Target,
            ZerobusError::InvalidArgument(_) if self.opening => FailureKind::Target,
            _ => FailureKind::Transient,
        }
    }

    fn is_data_error(&self) -> bool {
        if self.opening {
            return false;
        }
        match &self.source {
            // Too large a batch, refused before it was sent: halving it helps.
            ZerobusError::InvalidArgument(_) => true,
            // The server refused a record of the batch (a value the column does not take).
            ZerobusError::StreamClosedError(status) => status.code() == GrpcCode::InvalidArgument,
            _ => false,
        }
    }

    fn is_write_conflict(&self) -> bool {
        false
    }

    fn retry_after(&self) -> Option<Duration> {
        None
    }

    fn error_class(&self) -> Option<&str> {
        Some(match self.status_code() {
            Some(code) => grpc_code_name(code),
            None => match &self.source {
                ZerobusError::InvalidArgument(_) => "INVALID_ARGUMENT",
                ZerobusError::InvalidUCTokenError(_) | ZerobusError::TokenFetchError(_) => {
                    "TOKEN_REFUSED"
                }
                ZerobusError::ChannelCreationError(_)
                | ZerobusError::FailedToEstablishTlsConnectionError
                | ZerobusError::ConnectionTimeout(_) => "UNREACHABLE",
                ZerobusError::InvalidSchema { .. } => "INVALID_SCHEMA",
                _ => "ZEROBUS_ERROR",
            },
        })
    }
}

fn grpc_code_name(code: GrpcCode) -> &'static str {
    match code {
        GrpcCode::Ok => "OK",
        GrpcCode::Cancelled => "CANCELLED",
        GrpcCode::Unknown => "UNKNOWN",
        GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
        GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
        GrpcCode::NotFound => "NOT_FOUND",
        GrpcCode::AlreadyExists => "ALREADY_EXISTS",
        GrpcCode::PermissionDenied => "PERMISSION_DENIED",
        GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
        GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
        GrpcCode::Aborted => "ABORTED",
        GrpcCode::OutOfRange => "OUT_OF_RANGE",
        GrpcCode::Unimplemented => "UNIMPLEMENTED",
        GrpcCode::Internal => "INTERNAL",
        GrpcCode::Unavailable => "UNAVAILABLE",
        GrpcCode::DataLoss => "DATA_LOSS",
        GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        #[allow(unreachable_patterns)]
        _ => "UNKNOWN",
    }
}
