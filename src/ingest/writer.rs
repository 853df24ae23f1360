//! The batch writer, by group commit: one statement in flight; the rows that queue
//! meanwhile make up the next batch, which starts as soon as the statement ends. A row
//! that finds the writer idle waits at most the linger (`LAKEGATE_LINGER_MS`) for
//! others to share its statement. Each batch is one statement, retried until the
//! warehouse commits.
//!
//! Retrying is safe because the sink writes exactly once (a MERGE keyed on
//! device, reading, ts and metric), even when an earlier attempt's outcome was never
//! observed and that attempt is still running.
//!
//! Failures are told apart by what retrying can do ([`FailureKind`]):
//! * transient (throttling, unavailability, lost answers, write conflicts): the same
//!   batch again, with backoff; a Delta write conflict (another writer committed first)
//!   is retried at once, up to [`IMMEDIATE_CONFLICT_RETRIES`] times in a row, since the
//!   MERGE is idempotent and the other writer is done: waiting would only delay the rows;
//!   conflicts beyond that take the backoff too (`lakegate_batch_conflicts_total` counts
//!   them all);
//! * the batch itself, known only by a data error (SQLSTATE class 22 or 23, or a named
//!   parse, cast or constraint class): the batch is halved until the rows the table
//!   refuses are alone, and those go to the dead-letter table, so one bad row never
//!   blocks the others; any other failure, however permanent it looks, keeps the rows;
//! * the table (dropped, permission revoked), a request the API refuses, or a refused row
//!   that the dead-letter table does not take either: the rows are kept and retried with
//!   backoff, and [`WriteHealth`](crate::health::WriteHealth) says the table is unwritable (`/readyz` unready, devices get 503) until a write works.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::Submission;
use crate::databricks::{self, FailureKind, RetryPolicy};
use crate::health::WriteHealth;
use crate::metrics::Metrics;
use crate::table::TableRow;

/// Write conflicts in a row retried without waiting before the backoff applies.
pub(crate) const IMMEDIATE_CONFLICT_RETRIES: u32 = 3;

/// Rows of one statement, encoded as the JSON array the statement expands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EncodedBatch {
    pub json: String,
    /// Bytes `json` takes in the request, where it travels as a JSON string: every `"`
    /// and `\` is escaped once more. This, not `json.len()`, must fit the statement limit.
    pub wire_bytes: usize,
    pub rows: usize,
    pub ts_min_us: i64,
    pub ts_max_us: i64,
}

/// Why a sink's write failed, as far as the writer's retries need to know.
pub(crate) trait WriteFailure: std::fmt::Display + Send + Sync {
    /// What retrying can do.
    fn kind(&self) -> FailureKind;
    /// The rows' own fault (the batch is halved and the refused rows dead-lettered);
    /// anything else keeps the rows and is retried.
    fn is_data_error(&self) -> bool;
    /// Another writer committed first: retrying at once is safe and soon succeeds.
    fn is_write_conflict(&self) -> bool;
    /// How long the server asked to wait.
    fn retry_after(&self) -> Option<Duration>;
    /// A short code for logs and the dead-letter table.
    fn error_class(&self) -> Option<&str>;
}

impl WriteFailure for databricks::Error {
    fn kind(&self) -> FailureKind {
        databricks::Error::kind(self)
    }
    fn is_data_error(&self) -> bool {
        databricks::Error::is_data_error(self)
    }
    fn is_write_conflict(&self) -> bool {
        databricks::Error::is_write_conflict(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        databricks::Error::retry_after(self)
    }
    fn error_class(&self) -> Option<&str> {
        databricks::Error::error_class(self)
    }
}

/// Where batches go: MERGE statements on a warehouse (`sink.rs`) or Zerobus streams
/// (`zerobus.rs`). One sink serves one writer, which calls it one batch at a time.
pub(crate) trait BatchSink: Send + Sync + 'static {
    type Error: WriteFailure;

    /// Writes the batch; `Ok` once it is committed (or durable). The writer calls it again
    /// with the same batch after a failure whose outcome it could not see.
    fn write(&self, batch: &RowBatch<'_>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Writes rows the table refused (`refusal` says why) to the dead-letter table.
    fn write_dead_letter(
        &self,
        batch: &RowBatch<'_>,
        refusal: &Self::Error,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Called once the writer is done: closes what the sink holds open.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Rows of one statement and their encoding; the rows are kept to split the batch.
#[derive(Debug, Clone)]
pub(crate) struct RowBatch<'a> {
    pub(super) rows: Vec<&'a TableRow>,
    pub(super) encoded: EncodedBatch,
}

impl<'a> RowBatch<'a> {
    fn of(rows: &[&'a TableRow]) -> RowBatch<'a> {
        let mut batch: Option<RowBatch<'a>> = None;
        for row in rows {
            let encoded = serde_json::to_string(row).expect("rows serialize");
            let wire = wire_len(&encoded);
            match &mut batch {
                Some(batch) => batch.push(row, &encoded, wire),
                None => batch = Some(RowBatch::start(row, &encoded, wire)),
            }
        }
        batch.expect("a batch has at least one row").close()
    }

    fn start(row: &'a TableRow, encoded: &str, wire: usize) -> Self {
        RowBatch {
            rows: vec![row],
            encoded: EncodedBatch {
                json: format!("[{encoded}"),
                // The opening bracket, and the quotes around the whole string.
                wire_bytes: 3 + wire,
                rows: 1,
                ts_min_us: row.ts_us,
                ts_max_us: row.ts_us,
            },
        }
    }

    fn push(&mut self, row: &'a TableRow, encoded: &str, wire: usize) {
        let batch = &mut self.encoded;
        batch.json.push(',');
        batch.json.push_str(encoded);
        batch.wire_bytes += 1 + wire;
        batch.rows += 1;
        batch.ts_min_us = batch.ts_min_us.min(row.ts_us);
        batch.ts_max_us = batch.ts_max_us.max(row.ts_us);
        self.rows.push(row);
    }

    fn close(mut self) -> Self {
        self.encoded.json.push(']');
        self.encoded.wire_bytes += 1;
        self
    }

    /// The two halves, each encoded on its own.
    fn split(&self) -> (RowBatch<'a>, RowBatch<'a>) {
        let (left, right) = self.rows.split_at(self.rows.len() / 2);
        (RowBatch::of(left), RowBatch::of(right))
    }
}

/// Splits rows into statement-sized batches, dropping rows that repeat a
/// (device, reading, ts, metric) key already in this set: a MERGE that inserts
/// only unmatched rows would otherwise insert both copies.
pub(super) fn batches_of<'a>(
    rows: impl IntoIterator<Item = &'a TableRow>,
    max_rows: usize,
    max_bytes: usize,
) -> Vec<RowBatch<'a>> {
    let mut seen = HashSet::new();
    let mut batches = Vec::new();
    let mut current: Option<RowBatch<'a>> = None;
    for row in rows {
        if !seen.insert((
            &*row.device_id,
            &*row.reading_id,
            row.ts_us,
            row.metric.as_str(),
        )) {
            continue;
        }
        let encoded = serde_json::to_string(row).expect("rows serialize");
        let wire = wire_len(&encoded);
        // +1 for the separator, +1 for the closing bracket.
        let full = current.as_ref().is_some_and(|batch| {
            batch.encoded.rows >= max_rows || batch.encoded.wire_bytes + 1 + wire + 1 > max_bytes
        });
        if full {
            batches.extend(current.take().map(RowBatch::close));
        }
        match &mut current {
            Some(batch) => batch.push(row, &encoded, wire),
            None => current = Some(RowBatch::start(row, &encoded, wire)),
        }
    }
    batches.extend(current.map(RowBatch::close));
    batches
}

/// Length of `json` once escaped as a JSON string. Serialized rows hold no raw control
/// characters (serde escapes them with a backslash), so only `"` and `\` grow.
fn wire_len(json: &str) -> usize {
    json.len() + json.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchSettings {
    /// Longest a reading that finds the writer idle waits for others to share its
    /// statement (the linger). Rows that queued while a statement ran wait for nothing.
    pub linger: Duration,
    /// Rows (one per metric) per statement.
    pub max_rows: usize,
    /// Size of the JSON parameter carrying a batch; Databricks allows 16 MiB per statement.
    pub max_bytes: usize,
    /// The longest a `Retry-After` delays the next attempt (`LAKEGATE_MAX_RETRY_AFTER_MS`).
    pub max_retry_after: Duration,
}

pub(crate) struct Writer<S> {
    receiver: mpsc::UnboundedReceiver<Submission>,
    sink: S,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    /// Whether the table takes writes, for `/readyz` and the ingest route.
    writes: Arc<WriteHealth>,
    /// Cancelled once no request can queue rows any more: drain what is left and stop.
    closing: CancellationToken,
}

impl<S: BatchSink> Writer<S> {
    pub(crate) fn new(
        receiver: mpsc::UnboundedReceiver<Submission>,
        sink: S,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
        writes: Arc<WriteHealth>,
        closing: CancellationToken,
    ) -> Self {
        Writer {
            receiver,
            sink,
            settings,
            metrics,
            writes,
            closing,
        }
    }

    /// Runs until `closing` is cancelled and every queued row is committed.
    pub(crate) async fn run(mut self) {
        while let Some(submissions) = self.collect().await {
            self.commit(submissions).await;
        }
        self.sink.close().await;
    }

    /// The next batch's submissions, or `None` when closing with nothing left.
    async fn collect(&mut self) -> Option<Vec<Submission>> {
        // Group commit: rows that queued while the last statement ran go at once.
        let mut submissions = Vec::new();
        let mut rows = 0;
        while rows < self.settings.max_rows {
            let Ok(submission) = self.receiver.try_recv() else {
                break;
            };
            rows += submission.rows.len();
            submissions.push(submission);
        }
        if !submissions.is_empty() {
            return Some(submissions);
        }
        // Idle: the first row to arrive waits at most the linger for company.
        let first = tokio::select! {
            biased;
            next = self.receiver.recv() => next?,
            () = self.closing.cancelled() => {
                let rest = self.drain();
                return (!rest.is_empty()).then_some(rest);
            }
        };
        let linger_until = tokio::time::Instant::now() + self.settings.linger;
        rows = first.rows.len();
        submissions.push(first);
        while rows < self.settings.max_rows {
            tokio::select! {
                biased;
                next = self.receiver.recv() => match next {
                    Some(submission) => {
                        rows += submission.rows.len();
                        submissions.push(submission);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(linger_until) => break,
                () = self.closing.cancelled() => {
                    submissions.extend(self.drain());
                    break;
                }
            }
        }
        Some(submissions)
    }

    fn drain(&mut self) -> Vec<Submission> {
        std::iter::from_fn(|| self.receiver.try_recv().ok()).collect()
    }

    /// Writes every row of `submissions` (to the table, or the ones it refuses to the
    /// dead-letter table), then tells waiting requests and frees queue space.
    async fn commit(&self, submissions: Vec<Submission>) {
        let rows = submissions.iter().flat_map(|s| &s.rows);
        for batch in batches_of(rows, self.settings.max_rows, self.settings.max_bytes) {
            self.write_isolating_refused_rows(batch).await;
        }
        for submission in submissions {
            if let Some(completion) = submission.completion {
                completion.part_committed();
            }
        }
    }

    /// Writes the batch; when the table refuses it for its data, halves it until the
    /// refused rows are alone and dead-letters them.
    async fn write_isolating_refused_rows(&self, batch: RowBatch<'_>) {
        let mut pending = vec![batch];
        while let Some(batch) = pending.pop() {
            let Err(refusal) = self.write_until_settled(&batch).await else {
                continue;
            };
            if batch.rows.len() > 1 {
                tracing::warn!(
                    error_code = refusal.error_class().unwrap_or("UNKNOWN"),
                    rows = batch.rows.len(),
                    "the table refused a batch; splitting it to find the rows it refuses"
                );
                let (left, right) = batch.split();
                pending.push(right);
                pending.push(left);
            } else {
                self.dead_letter(&batch, &refusal).await;
            }
        }
    }

    /// Retries until the batch is committed (`Ok`) or refused for its data (`Err`, only
    /// for [`databricks::Error::is_data_error`]: an internal error, an unknown class or a
    /// refused request keeps the rows and is retried).
    async fn write_until_settled(&self, batch: &RowBatch<'_>) -> Result<(), S::Error> {
        let rows = batch.rows.len();
        let mut backoff = Backoff::new(self.settings.max_retry_after);
        let mut conflicts_in_a_row = 0;
        loop {
            let started = Instant::now();
            let err = match self.sink.write(batch).await {
                Ok(()) => {
                    self.metrics.batch_committed(rows, started.elapsed());
                    self.writes.recovered();
                    tracing::debug!(rows, "batch committed");
                    return Ok(());
                }
                Err(err) => err,
            };
            self.metrics.batch_failed();
            if err.is_write_conflict() {
                self.metrics.batch_conflicts.inc();
                conflicts_in_a_row += 1;
                if conflicts_in_a_row <= IMMEDIATE_CONFLICT_RETRIES {
                    tracing::debug!(error = %err, rows, "write conflict; retrying at once");
                    continue;
                }
            } else {
                conflicts_in_a_row = 0;
            }
            // Only a known data error is the rows' fault; anything else keeps them.
            if err.is_data_error() {
                return Err(err);
            }
            match err.kind() {
                FailureKind::Target | FailureKind::Request => {
                    self.writes.failing(
                        err.error_class(),
                        &err,
                        "the table cannot be written",
                        rows,
                    );
                }
                FailureKind::Transient => {
                    tracing::warn!(error = %err, rows, "batch write failed; retrying");
                }
            }
            backoff.wait(&err).await;
        }
    }

    /// Stores a row the table refused in the dead-letter table, retrying until it is.
    async fn dead_letter(&self, batch: &RowBatch<'_>, refusal: &S::Error) {
        let mut backoff = Backoff::new(self.settings.max_retry_after);
        loop {
            let err = match self.sink.write_dead_letter(batch, refusal).await {
                Ok(()) => {
                    self.metrics
                        .rows_dead_lettered
                        .inc_by(batch.rows.len() as u64);
                    self.writes.recovered();
                    for row in &batch.rows {
                        tracing::warn!(
                            device_id = %row.device_id,
                            reading_id = %row.reading_id,
                            metric = %row.metric,
                            error_code = refusal.error_class().unwrap_or("UNKNOWN"),
                            error = %refusal,
                            "the table refused a row; it is in the dead-letter table"
                        );
                    }
                    return;
                }
                Err(err) => err,
            };
            self.metrics.batch_failed();
            match err.kind() {
                FailureKind::Transient => {
                    tracing::warn!(error = %err, "dead-letter write failed; retrying");
                }
                FailureKind::Target | FailureKind::Request => {
                    self.writes.failing(
                        err.error_class(),
                        &err,
                        "the table refuses a row and the dead-letter table cannot take it",
                        batch.rows.len(),
                    );
                }
            }
            backoff.wait(&err).await;
        }
    }
}

/// The writer's waits between attempts: exponential, honouring `Retry-After`, never
/// giving up.
struct Backoff {
    policy: RetryPolicy,
    schedule: crate::databricks::Schedule,
    first_attempt: Instant,
}

impl Backoff {
    fn new(max_retry_after: Duration) -> Self {
        let policy = RetryPolicy {
            max_retry_after,
            ..RetryPolicy::batch_writes()
        };
        Backoff {
            schedule: policy.schedule(),
            policy,
            first_attempt: Instant::now(),
        }
    }

    async fn wait(&mut self, err: &impl WriteFailure) {
        let delay = self
            .schedule
            .next_wait(self.first_attempt.elapsed(), err.retry_after())
            .unwrap_or(self.policy.max_backoff);
        tracing::debug!(retry_in = ?delay, "waiting before the next write attempt");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// [`batches_of`], encodings only.
    fn encode_batches<'a>(
        rows: impl IntoIterator<Item = &'a TableRow>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Vec<EncodedBatch> {
        batches_of(rows, max_rows, max_bytes)
            .into_iter()
            .map(|batch| batch.encoded)
            .collect()
    }

    fn row(device: &str, reading: &str, metric: &str, ts_us: i64) -> TableRow {
        TableRow {
            device_id: device.into(),
            reading_id: reading.into(),
            ts_us,
            metric: metric.into(),
            value: Some(1.5),
            value_str: None,
        }
    }

    #[test]
    fn batches_respect_row_and_byte_caps_and_drop_repeated_keys() {
        let rows = vec![
            row("d1", "r1", "t", 30),
            row("d1", "r1", "t", 30), // same key: dropped
            row("d1", "r1", "h", 10),
            row("d2", "r1", "t", 20),
            row("d1", "r1", "t", 99), // same id at another time: another reading
        ];
        let batches = encode_batches(&rows, 2, 1 << 20);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].rows, 2);
        assert_eq!((batches[0].ts_min_us, batches[0].ts_max_us), (10, 30));
        assert_eq!(batches[1].rows, 2);
        assert_eq!((batches[1].ts_min_us, batches[1].ts_max_us), (20, 99));
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&batches[0].json).unwrap();
        assert_eq!(parsed[0]["reading_id"], "r1");
        assert_eq!(parsed[0]["ts_us"], 30);
        assert!(parsed[0]["value_str"].is_null());

        // Byte caps count the batch as it travels: inside a JSON string parameter.
        let quoted = |batch: &EncodedBatch| serde_json::to_string(&batch.json).unwrap().len();
        let one_row = quoted(&encode_batches(&rows[..1], 1, 1 << 20)[0]);
        let by_bytes = encode_batches(&rows, 100, one_row * 2);
        assert_eq!(by_bytes.len(), 2);
        for batch in &by_bytes {
            assert_eq!(batch.wire_bytes, quoted(batch));
            assert!(batch.wire_bytes <= one_row * 2);
        }
        let mut noisy = row("d1", "q", "note", 1);
        noisy.value_str = Some("\"\\".repeat(50));
        let noisy = encode_batches([&noisy], 1, 1 << 20);
        assert_eq!(noisy[0].wire_bytes, quoted(&noisy[0]));
    }

    /// Fails its first `failures` writes (503s, or Delta write conflicts with
    /// `conflicts`), then records what it was given.
    #[derive(Default)]
    struct FlakySink {
        failures: std::sync::Mutex<u32>,
        conflicts: bool,
        /// The `Retry-After` each failure carries.
        retry_after: Option<Duration>,
        written: std::sync::Mutex<Vec<EncodedBatch>>,
    }

    fn write_conflict() -> databricks::Error {
        databricks::Error::Statement(databricks::StatementError {
            statement_id: "s".into(),
            state: databricks::StatementState::Failed,
            error_code: Some("BAD_REQUEST".into()),
            message: Some(
                "[DELTA_CONCURRENT_APPEND.ROW_LEVEL_CHANGES] Transaction conflict detected. \
                 SQLSTATE: 2D521"
                    .into(),
            ),
            sql_state: Some("2D521".into()),
        })
    }

    impl BatchSink for Arc<FlakySink> {
        type Error = databricks::Error;

        async fn write(&self, batch: &RowBatch<'_>) -> Result<(), databricks::Error> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                if self.conflicts {
                    return Err(write_conflict());
                }
                return Err(databricks::Error::Api(databricks::ErrorResponse {
                    status: 503,
                    error_code: "TEMPORARILY_UNAVAILABLE".into(),
                    message: "injected".into(),
                    retry_after: self.retry_after,
                }));
            }
            self.written.lock().unwrap().push(batch.encoded.clone());
            Ok(())
        }

        async fn write_dead_letter(
            &self,
            _: &RowBatch<'_>,
            _: &databricks::Error,
        ) -> Result<(), databricks::Error> {
            unreachable!("transient failures are never dead-lettered")
        }
    }

    const CAPACITY: super::super::queue::QueueCapacity = super::super::queue::QueueCapacity {
        rows: 100,
        bytes: 1 << 20,
    };

    /// A writer over `sink` with a linger of `linger_ms`, running on a queue of one lane.
    struct Running {
        queue: super::super::queue::IngestQueue,
        closing: CancellationToken,
        metrics: Arc<Metrics>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start_writer<S: BatchSink>(sink: S, linger_ms: u64) -> Running {
        start_writer_with(sink, settings(linger_ms))
    }

    fn start_writer_with<S: BatchSink>(sink: S, settings: BatchSettings) -> Running {
        let (queue, mut lanes) = super::super::queue::IngestQueue::new(CAPACITY, 1);
        let closing = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let writer = Writer::new(
            lanes.remove(0),
            sink,
            settings,
            metrics.clone(),
            Arc::default(),
            closing.clone(),
        );
        let task = tokio::spawn(writer.run());
        Running {
            queue,
            closing,
            metrics,
            task,
        }
    }

    fn settings(linger_ms: u64) -> BatchSettings {
        BatchSettings {
            linger: Duration::from_millis(linger_ms),
            max_rows: 100,
            max_bytes: 1 << 20,
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn failed_writes_are_retried_before_the_request_hears_committed() {
        let sink = Arc::new(FlakySink {
            failures: 2.into(),
            ..FlakySink::default()
        });
        let Running {
            queue,
            closing,
            task,
            ..
        } = start_writer(sink.clone(), 10);

        let committed = queue
            .submit(vec![row("d", "r", "t", 1)], true)
            .unwrap()
            .unwrap();
        committed
            .await
            .expect("committed after the retries")
            .unwrap();
        assert_eq!(sink.written.lock().unwrap().len(), 1);
        assert_eq!(queue.depth(), 0, "queue space is returned");
        closing.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_retry_after_waits_no_longer_than_the_setting() {
        let sink = Arc::new(FlakySink {
            failures: 1.into(),
            retry_after: Some(Duration::from_secs(30)),
            ..FlakySink::default()
        });
        let Running {
            queue,
            closing,
            task,
            ..
        } = start_writer_with(
            sink.clone(),
            BatchSettings {
                max_retry_after: Duration::from_millis(200),
                ..settings(10)
            },
        );
        let started = Instant::now();
        let committed = queue
            .submit(vec![row("d", "r", "t", 1)], true)
            .unwrap()
            .unwrap();
        committed.await.unwrap().unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "waited {took:?} for a 30 s Retry-After"
        );
        closing.cancel();
        task.await.unwrap();
    }

    /// Commits one row through a writer over `sink`; returns the time it took and the
    /// conflicts counted.
    async fn commit_through(sink: Arc<FlakySink>) -> (Duration, u64) {
        let Running {
            queue,
            closing,
            metrics,
            task,
        } = start_writer(sink.clone(), 10);
        let started = tokio::time::Instant::now();
        let committed = queue
            .submit(vec![row("d", "r", "t", 1)], true)
            .unwrap()
            .unwrap();
        committed
            .await
            .expect("committed after the retries")
            .unwrap();
        let took = started.elapsed();
        assert_eq!(sink.written.lock().unwrap().len(), 1);
        closing.cancel();
        task.await.unwrap();
        (took, metrics.batch_conflicts.get())
    }

    #[tokio::test]
    async fn write_conflicts_are_retried_at_once_then_with_backoff() {
        let conflicts = |n: u32| {
            Arc::new(FlakySink {
                failures: n.into(),
                conflicts: true,
                ..FlakySink::default()
            })
        };
        // Up to the bound, conflicts cost no wait beyond the linger (10 ms); the first
        // backoff is at least 200 ms.
        let (took, counted) = commit_through(conflicts(IMMEDIATE_CONFLICT_RETRIES)).await;
        assert!(took < Duration::from_millis(190), "{took:?}");
        assert_eq!(counted, u64::from(IMMEDIATE_CONFLICT_RETRIES));

        // Beyond it, the backoff applies.
        let (took, counted) = commit_through(conflicts(IMMEDIATE_CONFLICT_RETRIES + 2)).await;
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert_eq!(counted, u64::from(IMMEDIATE_CONFLICT_RETRIES + 2));

        // Other transient failures wait from the first, and are no conflicts.
        let unavailable = Arc::new(FlakySink {
            failures: 1.into(),
            ..FlakySink::default()
        });
        let (took, counted) = commit_through(unavailable).await;
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert_eq!(counted, 0);
    }

    fn failed_statement(message: &str, sql_state: &str) -> databricks::Error {
        databricks::Error::Statement(databricks::StatementError {
            statement_id: "s".into(),
            state: databricks::StatementState::Failed,
            error_code: Some("BAD_REQUEST".into()),
            message: Some(format!("{message} SQLSTATE: {sql_state}")),
            sql_state: Some(sql_state.into()),
        })
    }

    /// Fails its first `internal_errors` writes, and its first `dead_letter_internal_errors`
    /// dead-letter writes, with `[INTERNAL_ERROR]` (SQLSTATE XX000); refuses every batch
    /// holding a row whose reading id is `bad` with a constraint violation (SQLSTATE 23001).
    struct WarehouseSink {
        internal_errors: std::sync::Mutex<u32>,
        dead_letter_internal_errors: std::sync::Mutex<u32>,
        bad: &'static str,
        written: std::sync::Mutex<Vec<String>>,
        dead_lettered: std::sync::Mutex<Vec<String>>,
    }

    impl WarehouseSink {
        fn internal_error(left: &std::sync::Mutex<u32>) -> Option<databricks::Error> {
            let mut left = left.lock().unwrap();
            (*left > 0).then(|| {
                *left -= 1;
                failed_statement("[INTERNAL_ERROR] The warehouse failed.", "XX000")
            })
        }

        fn reading_ids(batch: &EncodedBatch) -> Vec<String> {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&batch.json).unwrap();
            rows.iter()
                .map(|row| row["reading_id"].as_str().unwrap().to_owned())
                .collect()
        }
    }

    impl BatchSink for Arc<WarehouseSink> {
        type Error = databricks::Error;

        async fn write(&self, batch: &RowBatch<'_>) -> Result<(), databricks::Error> {
            if let Some(err) = WarehouseSink::internal_error(&self.internal_errors) {
                return Err(err);
            }
            let ids = WarehouseSink::reading_ids(&batch.encoded);
            if ids.iter().any(|id| id == self.bad) {
                return Err(failed_statement(
                    "[DELTA_VIOLATE_CONSTRAINT_WITH_VALUES] CHECK constraint violated.",
                    "23001",
                ));
            }
            self.written.lock().unwrap().extend(ids);
            Ok(())
        }

        async fn write_dead_letter(
            &self,
            batch: &RowBatch<'_>,
            refusal: &databricks::Error,
        ) -> Result<(), databricks::Error> {
            assert!(refusal.is_data_error(), "dead-lettered for {refusal}");
            if let Some(err) = WarehouseSink::internal_error(&self.dead_letter_internal_errors) {
                return Err(err);
            }
            self.dead_lettered
                .lock()
                .unwrap()
                .extend(WarehouseSink::reading_ids(&batch.encoded));
            Ok(())
        }
    }

    #[tokio::test]
    async fn internal_errors_keep_the_rows_and_only_data_errors_dead_letter() {
        let sink = Arc::new(WarehouseSink {
            internal_errors: 3.into(),
            dead_letter_internal_errors: 2.into(),
            bad: "r2",
            written: std::sync::Mutex::default(),
            dead_lettered: std::sync::Mutex::default(),
        });
        let Running {
            queue,
            closing,
            metrics,
            task,
        } = start_writer(sink.clone(), 10);
        let rows: Vec<TableRow> = (0..4).map(|i| row("d", &format!("r{i}"), "t", i)).collect();
        let committed = queue.submit(rows, true).unwrap().unwrap();
        committed.await.expect("committed").expect("written");
        let mut written = sink.written.lock().unwrap().clone();
        written.sort();
        assert_eq!(
            written,
            ["r0", "r1", "r3"],
            "the internal errors kept every row"
        );
        // The dead-letter write's own internal errors were retried, not taken for a refusal.
        assert_eq!(*sink.dead_lettered.lock().unwrap(), ["r2"]);
        assert_eq!(*sink.dead_letter_internal_errors.lock().unwrap(), 0);
        assert_eq!(metrics.rows_dead_lettered.get(), 1);
        closing.cancel();
        task.await.unwrap();
    }

    /// Holds every write until released, and records the batches.
    struct GatedSink {
        release: tokio::sync::Semaphore,
        started: tokio::sync::Notify,
        written: std::sync::Mutex<Vec<EncodedBatch>>,
    }

    impl BatchSink for Arc<GatedSink> {
        type Error = databricks::Error;

        async fn write(&self, batch: &RowBatch<'_>) -> Result<(), databricks::Error> {
            self.started.notify_one();
            self.release.acquire().await.unwrap().forget();
            self.written.lock().unwrap().push(batch.encoded.clone());
            Ok(())
        }

        async fn write_dead_letter(
            &self,
            _: &RowBatch<'_>,
            _: &databricks::Error,
        ) -> Result<(), databricks::Error> {
            unreachable!("nothing is refused")
        }
    }

    #[tokio::test]
    async fn rows_queued_during_a_statement_are_written_right_after_it() {
        let sink = Arc::new(GatedSink {
            release: tokio::sync::Semaphore::new(0),
            started: tokio::sync::Notify::new(),
            written: std::sync::Mutex::default(),
        });
        let linger = Duration::from_secs(3);
        let Running {
            queue,
            closing,
            task,
            ..
        } = start_writer(sink.clone(), linger.as_millis() as u64);
        let first = queue.submit(vec![row("d", "a", "t", 1)], true).unwrap();
        // The first row found the writer idle: it lingers, then its statement starts.
        sink.started.notified().await;
        let second = queue.submit(vec![row("d", "b", "t", 2)], true).unwrap();
        let third = queue.submit(vec![row("e", "c", "t", 3)], true).unwrap();
        sink.release.add_permits(1);
        first.unwrap().await.unwrap().unwrap();

        // The rows that queued meanwhile start their statement without a linger.
        let released = Instant::now();
        tokio::time::timeout(linger / 2, sink.started.notified())
            .await
            .expect("the next statement starts at once");
        sink.release.add_permits(1);
        second.unwrap().await.unwrap().unwrap();
        third.unwrap().await.unwrap().unwrap();
        assert!(released.elapsed() < linger / 2);
        let batches: Vec<usize> = sink
            .written
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.rows)
            .collect();
        assert_eq!(
            batches,
            [1, 2],
            "one statement for the rows that waited together"
        );
        closing.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn closing_drains_queued_rows_without_waiting_for_the_linger() {
        let sink = Arc::new(FlakySink::default());
        let Running {
            queue,
            closing,
            task,
            ..
        } = start_writer(sink.clone(), 60_000);
        queue.submit(vec![row("d", "r1", "t", 1)], false).unwrap();
        queue.submit(vec![row("d", "r2", "t", 2)], false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        closing.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer stops promptly")
            .unwrap();
        let written = sink.written.lock().unwrap();
        assert_eq!(written.iter().map(|b| b.rows).sum::<usize>(), 2);
    }
}
