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
use std::time::{Duration, Instant};

use databricks_zerobus_ingest_sdk::{
    GrpcCode, JsonString, NoTlsConfig, OffsetId, ZerobusError, ZerobusSdk, ZerobusStream,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::Mutex;

use super::writer::{BatchSink, RowBatch, WriteFailure};
use crate::databricks::{FailureKind, Statements};
use crate::metrics::Metrics;
use crate::table::{self, TableName, TableRow};

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

    /// Opens a stream to `table` and closes it: the endpoint answers, the credentials get
    /// a token for the table, and the table takes streams. Transient failures are retried
    /// a few times.
    pub(crate) async fn check(&self, table: &TableName) -> Result<(), ZerobusWriteError> {
        let mut attempt = 1;
        loop {
            match self.open(&table.to_string()).await {
                Ok(mut stream) => {
                    // Nothing was sent: a failed close loses nothing.
                    let _ = stream.close().await;
                    return Ok(());
                }
                Err(err) if err.kind() == FailureKind::Transient && attempt < CHECK_ATTEMPTS => {
                    tracing::warn!(error = %err, attempt, "opening a Zerobus stream; trying again");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
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

/// Attempts of the start-up check before a transient failure fails start-up.
const CHECK_ATTEMPTS: u64 = 4;

/// A batch unacknowledged this long is taken for lost and sent again on a new stream.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// One writer lane's streams: to the table and to the dead-letter table.
pub(crate) struct ZerobusSink {
    service: ZerobusService,
    readings: Lane,
    rejected: Lane,
    layout: Arc<LayoutCheck>,
    metrics: Arc<Metrics>,
}

impl ZerobusSink {
    /// `layout` is shared by every lane's sink.
    pub(crate) fn new(
        service: ZerobusService,
        table: &TableName,
        dead_letter: &TableName,
        layout: Arc<LayoutCheck>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ZerobusSink {
            service,
            readings: Lane::new(table),
            rejected: Lane::new(dead_letter),
            layout,
            metrics,
        }
    }
}

/// Before refused records are taken for the rows' fault (and dead-lettered), whether the
/// table still has lakegate's columns: a column dropped or retyped by hand makes Zerobus
/// refuse every record, which is the table's fault, and its rows must be kept. Asks the
/// warehouse (the only statement this sink runs), at most once a minute while the answer
/// is yes.
pub(crate) struct LayoutCheck {
    statements: Statements,
    table: TableName,
    confirmed_at: Mutex<Option<Instant>>,
}

/// How long a confirmed layout is trusted.
const LAYOUT_TRUSTED_FOR: Duration = Duration::from_secs(60);

impl LayoutCheck {
    pub(crate) fn new(statements: Statements, table: &TableName) -> Self {
        LayoutCheck {
            statements,
            table: table.clone(),
            confirmed_at: Mutex::new(None),
        }
    }

    /// `refusal` (records the table refused) if the table is as lakegate made it; else why
    /// the rows are not to blame.
    async fn blame_rows(&self, refusal: ZerobusWriteError) -> ZerobusWriteError {
        let mut confirmed_at = self.confirmed_at.lock().await;
        if confirmed_at.is_some_and(|at| at.elapsed() < LAYOUT_TRUSTED_FOR) {
            return refusal;
        }
        match table::check_layout(&self.statements, &self.table).await {
            Ok(Ok(())) => {
                *confirmed_at = Some(Instant::now());
                refusal
            }
            Ok(Err(difference)) => ZerobusWriteError::Layout(difference),
            Err(check) => ZerobusWriteError::Unverified {
                refusal: refusal.to_string(),
                check: Box::new(check),
            },
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
        match (self.readings)
            .send(&self.service, records, batch.rows.len(), &self.metrics)
            .await
        {
            Err(refusal) if refusal.is_data_error() => Err(self.layout.blame_rows(refusal).await),
            written => written,
        }
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
        // The service ends every stream after some minutes (error 6002): a batch caught by
        // that goes again at once on a new stream, not after the writer's backoff.
        let mut rotations_left = 1;
        loop {
            let (stream, offset) = match slot.take() {
                Some(stream) => match stream.ingest_records_offset(records()).await {
                    Ok(offset) => (stream, offset),
                    Err(err) if is_refused_batch(&err) => {
                        // Refused before it was sent; the stream is fine.
                        *slot = Some(stream);
                        return Err(ZerobusWriteError::records(err));
                    }
                    // Refused before it was queued, so nothing was sent: the stream ended
                    // since the last batch. A new one at once.
                    Err(err) => {
                        tracing::debug!(table = %self.table, error = %err, "the Zerobus stream ended; opening another");
                        drop(stream);
                        self.open_and_ingest(service, records(), metrics).await?
                    }
                },
                None => self.open_and_ingest(service, records(), metrics).await?,
            };
            // Sent: until the acknowledgement the batch may be written or not.
            if self.outcome_unknown.swap(false, Ordering::Relaxed) {
                metrics.zerobus_resent_records.inc_by(rows as u64);
            }
            let Some(offset) = offset else {
                *slot = Some(stream);
                return Ok(());
            };
            let err = match stream.wait_for_offset(offset).await {
                Ok(()) => {
                    *slot = Some(stream);
                    return Ok(());
                }
                Err(err) => ZerobusWriteError::records(err),
            };
            // The stream is dropped here; refused records were not written, anything
            // else may have been.
            if !err.is_data_error() {
                self.outcome_unknown.store(true, Ordering::Relaxed);
            }
            if err.is_stream_rotation() && rotations_left > 0 {
                rotations_left -= 1;
                tracing::debug!(table = %self.table, "the service ended the stream under a batch; sending it again");
                continue;
            }
            return Err(err);
        }
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

/// A Zerobus write that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZerobusWriteError {
    /// The SDK's error, opening a stream or on a batch's records.
    #[error("Zerobus: {source}")]
    Sdk {
        source: ZerobusError,
        /// While opening a stream, an invalid argument is the table's or the request's
        /// (its layout, its name), never the rows'.
        opening: bool,
    },
    /// Records were refused, and the table's columns are not lakegate's: the table's
    /// fault, not the rows'.
    #[error("Zerobus refused the records: {0}")]
    Layout(String),
    /// Records were refused, and whether the table is to blame could not be checked.
    #[error(
        "Zerobus refused the records ({refusal}), and the table's columns could not be checked: {check}"
    )]
    Unverified {
        refusal: String,
        check: Box<crate::databricks::Error>,
    },
}

impl ZerobusWriteError {
    fn opening(source: ZerobusError) -> Self {
        ZerobusWriteError::Sdk {
            source,
            opening: true,
        }
    }

    fn records(source: ZerobusError) -> Self {
        ZerobusWriteError::Sdk {
            source,
            opening: false,
        }
    }

    fn sdk(&self) -> Option<&ZerobusError> {
        match self {
            ZerobusWriteError::Sdk { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The gRPC status the server ended the stream with (or refused to open it with).
    fn status_code(&self) -> Option<GrpcCode> {
        match self.sdk()? {
            ZerobusError::CreateStreamError(status) | ZerobusError::StreamClosedError(status) => {
                Some(status.code())
            }
            _ => None,
        }
    }

    /// The service ended the stream as it ends every stream after some minutes.
    fn is_stream_rotation(&self) -> bool {
        matches!(self.sdk(), Some(ZerobusError::StreamClosedError(status))
            if status.code() == GrpcCode::Unavailable && status.message().contains("6002"))
    }
}

/// What the SDK reports as an invalid argument of its own (an acknowledgement it cannot
/// place), not the server's refusal of records: the batch may well be written.
const SDK_PROTOCOL_ERRORS: [&str; 3] = [
    "Invalid durability ACK offset",
    "Pending batch count",
    "Greatest sent offset",
];

/// The token endpoint's answers the SDK calls invalid credentials though retrying may
/// work: throttling, a timeout, a connection cut or an answer that did not parse.
const TRANSIENT_TOKEN_ERRORS: [&str; 4] = ["(429)", "(408)", "Request failed", "Parse failed"];

impl WriteFailure for ZerobusWriteError {
    fn kind(&self) -> FailureKind {
        if self.is_data_error() {
            return FailureKind::Request;
        }
        let (source, opening) = match self {
            ZerobusWriteError::Layout(_) => return FailureKind::Target,
            ZerobusWriteError::Unverified { check, .. } => {
                return match check.kind() {
                    // The check itself was refused: the warehouse is for the operator to fix.
                    FailureKind::Target | FailureKind::Request => FailureKind::Target,
                    FailureKind::Transient => FailureKind::Transient,
                };
            }
            ZerobusWriteError::Sdk { source, opening } => (source, *opening),
        };
        match source {
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
            ZerobusError::InvalidUCTokenError(message)
                if TRANSIENT_TOKEN_ERRORS.iter().any(|m| message.contains(m)) =>
            {
                FailureKind::Transient
            }
            ZerobusError::InvalidTableName(_)
            | ZerobusError::InvalidZerobusEndpointError(_)
            | ZerobusError::InvalidUCEndpointError(_)
            | ZerobusError::InvalidUCTokenError(_)
            | ZerobusError::InvalidSchema { .. } => FailureKind::Target,
            ZerobusError::InvalidArgument(_) if opening => FailureKind::Target,
            _ => FailureKind::Transient,
        }
    }

    fn is_data_error(&self) -> bool {
        match self {
            // The SDK's too-large batch (halving helps), or the server's refusal of a
            // record (the SDK reports a stream ended with INVALID_ARGUMENT so too).
            ZerobusWriteError::Sdk {
                source: ZerobusError::InvalidArgument(message),
                opening: false,
            } => !SDK_PROTOCOL_ERRORS.iter().any(|m| message.contains(m)),
            ZerobusWriteError::Sdk {
                source: ZerobusError::StreamClosedError(status),
                opening: false,
            } => {
                status.code() == GrpcCode::InvalidArgument
                    && !SDK_PROTOCOL_ERRORS
                        .iter()
                        .any(|m| status.message().contains(m))
            }
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
        let source = match self {
            ZerobusWriteError::Layout(_) => return Some("TABLE_LAYOUT_CHANGED"),
            ZerobusWriteError::Unverified { .. } => return Some("INVALID_ARGUMENT"),
            ZerobusWriteError::Sdk { source, .. } => source,
        };
        Some(match self.status_code() {
            Some(code) => grpc_code_name(code),
            None => match source {
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

#[cfg(test)]
mod tests {
    use databricks_zerobus_ingest_sdk::GrpcStatus;

    use super::*;

    fn on_records(source: ZerobusError) -> ZerobusWriteError {
        ZerobusWriteError::records(source)
    }

    fn closed(code: GrpcCode, message: &str) -> ZerobusError {
        ZerobusError::StreamClosedError(GrpcStatus::new(code, message))
    }

    #[test]
    fn only_a_refusal_of_the_records_is_the_rows_fault() {
        let refused = on_records(ZerobusError::InvalidArgument(
            "Record 3 of the message is invalid: column value: not a number".into(),
        ));
        assert!(refused.is_data_error());
        assert_eq!(refused.kind(), FailureKind::Request);
        let too_large = on_records(ZerobusError::InvalidArgument(
            "Ingest payload too large: 11000000 bytes".into(),
        ));
        assert!(too_large.is_data_error());
        // The SDK's own complaints about acknowledgements: the batch may be written.
        for message in [
            "Invalid durability ACK offset 7; expected 2..=3",
            "Pending batch count exceeds the supported offset range",
        ] {
            for source in [
                ZerobusError::InvalidArgument(message.into()),
                closed(GrpcCode::InvalidArgument, message),
            ] {
                let err = on_records(source);
                assert!(!err.is_data_error(), "{err}");
            }
        }
        // Opening a stream, an invalid argument is the table's (its layout, its name).
        let opening = ZerobusWriteError::opening(ZerobusError::InvalidArgument("x".into()));
        assert!(!opening.is_data_error());
        assert_eq!(opening.kind(), FailureKind::Target);
        let layout = ZerobusWriteError::Layout("value_str is missing".into());
        assert!(!layout.is_data_error());
        assert_eq!(layout.kind(), FailureKind::Target);
    }

    #[test]
    fn throttling_and_unavailability_are_transient_refusals_of_access_are_not() {
        let transient = [
            closed(GrpcCode::ResourceExhausted, "Too many requests"),
            // Whatever the server answers that says nothing against the table: retried.
            closed(GrpcCode::Unknown, "something new"),
            closed(GrpcCode::Internal, "oops"),
            closed(GrpcCode::Ok, "Stream closed by server without errors."),
            closed(
                GrpcCode::Unavailable,
                "Stream timeout reached. Please recreate the stream. Error Code: 6002",
            ),
            ZerobusError::TokenFetchError("Unity catalog server error (503): busy".into()),
            ZerobusError::InvalidUCTokenError("Client error (429): slow down".into()),
            ZerobusError::InvalidUCTokenError("Request failed: connection reset".into()),
        ];
        for source in transient {
            let err = on_records(source);
            assert_eq!(err.kind(), FailureKind::Transient, "{err}");
        }
        let target = [
            closed(GrpcCode::PermissionDenied, "no MODIFY"),
            closed(GrpcCode::NotFound, "Table 'a.b.c' does not exist."),
            ZerobusError::InvalidUCTokenError("Client error (401): invalid_client".into()),
        ];
        for source in target {
            let err = ZerobusWriteError::opening(source);
            assert_eq!(err.kind(), FailureKind::Target, "{err}");
        }
    }

    #[test]
    fn a_stream_ended_by_the_service_is_told_apart() {
        let rotation = on_records(closed(
            GrpcCode::Unavailable,
            "Stream timeout reached. Please recreate the stream. Error Code: 6002",
        ));
        assert!(rotation.is_stream_rotation());
        let dropped = on_records(closed(GrpcCode::Unavailable, "connection reset"));
        assert!(!dropped.is_stream_rotation());
    }

    #[test]
    fn records_leave_absent_values_out_and_carry_microseconds() {
        let row = TableRow {
            device_id: "d-1".into(),
            reading_id: "r-1".into(),
            ts_us: 1_700_000_000_123_456,
            metric: "temp".into(),
            value: Some(21.5),
            value_str: None,
        };
        let json = Record::of(&row, 42, None).json().0;
        assert_eq!(
            json,
            r#"{"device_id":"d-1","reading_id":"r-1","ts":1700000000123456,"metric":"temp","value":21.5,"ingested_at":42}"#
        );
        let refusal = Refusal {
            error_code: "INVALID_ARGUMENT",
            error_message: "no",
        };
        let json = Record::of(&row, 42, Some(&refusal)).json().0;
        assert!(
            json.ends_with(
                r#""ingested_at":42,"error_code":"INVALID_ARGUMENT","error_message":"no"}"#
            ),
            "{json}"
        );
    }
}
