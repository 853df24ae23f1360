//! The table contract and the statements that write it.
//!
//! Values never appear in SQL text: a batch travels as ONE string parameter
//! holding a JSON array, expanded on the warehouse with `from_json`. That keeps
//! a batch of thousands of rows under the API's 255-parameter limit, bounded
//! only by the statement size (see `BatchSettings::max_bytes`).

use std::time::Duration;

use chrono::DateTime;

use super::writer::{BatchSink, EncodedBatch};
use crate::config::TableName;
use crate::databricks::{self, OnWaitTimeout, Param, StatementRequest, Statements};

/// The row layout dashboards depend on.
const COLUMNS: &str = "device_id STRING NOT NULL COMMENT 'Device that sent the reading', \
    reading_id STRING NOT NULL COMMENT 'The device''s reading id, or one derived from its content', \
    ts TIMESTAMP NOT NULL COMMENT 'When the device measured', \
    metric STRING NOT NULL, \
    value DOUBLE COMMENT 'Numbers, and booleans as 1.0 / 0.0', \
    value_str STRING COMMENT 'String values', \
    ingested_at TIMESTAMP NOT NULL COMMENT 'When lakegate committed the row'";

/// Inserts only rows whose (device, reading, ts, metric) key is not in the table yet,
/// so a retried batch or a device's resend is a no-op, while the same reading id at
/// another time is a new reading. The `ts` bounds only prune the scan to the batch's
/// time range (the table is clustered by device and time).
/// `FAILFAST`: a batch the warehouse cannot parse fails loudly; the default (PERMISSIVE)
/// would turn it into NULL, `explode(NULL)` into no rows, and the MERGE would commit nothing.
fn merge_sql(table: &TableName, extra_columns: &str, extra_values: &str) -> String {
    format!(
        "MERGE INTO {table} AS t \
         USING (SELECT r.device_id AS device_id, r.reading_id AS reading_id, \
                timestamp_micros(r.ts_us) AS ts, r.metric AS metric, r.value AS value, \
                r.value_str AS value_str \
                FROM (SELECT explode(from_json(:rows, 'ARRAY<STRUCT<device_id: STRING, \
                reading_id: STRING, ts_us: BIGINT, metric: STRING, value: DOUBLE, \
                value_str: STRING>>', map('mode', 'FAILFAST'))) AS r)) AS s \
         ON t.device_id = s.device_id AND t.reading_id = s.reading_id AND t.ts = s.ts \
            AND t.metric = s.metric AND t.ts >= :ts_min AND t.ts <= :ts_max \
         WHEN NOT MATCHED THEN INSERT (device_id, reading_id, ts, metric, value, value_str, \
            ingested_at{extra_columns}) \
            VALUES (s.device_id, s.reading_id, s.ts, s.metric, s.value, s.value_str, \
            current_timestamp(){extra_values})"
    )
}

/// The dead-letter table: the same columns, plus why the table refused the row.
const REJECTED_COLUMNS: &str = "error_code STRING COMMENT 'Databricks error class of the refusal', \
    error_message STRING COMMENT 'The warehouse''s message'";

/// Longest error message kept in the dead-letter table.
const MAX_ERROR_MESSAGE: usize = 4000;

/// Writes batches to the table through the Statement Execution API.
pub struct StatementSink {
    statements: Statements,
    merge_sql: String,
    reject_sql: String,
}

impl StatementSink {
    pub fn new(statements: Statements, table: &TableName, rejected: &TableName) -> Self {
        StatementSink {
            statements,
            merge_sql: merge_sql(table, "", ""),
            reject_sql: merge_sql(
                rejected,
                ", error_code, error_message",
                ", :error_code, :error_message",
            ),
        }
    }

    fn request(&self, sql: &str, batch: &EncodedBatch) -> StatementRequest {
        let bound = |name: &str, micros: i64| {
            let ts = DateTime::from_timestamp_micros(micros).expect("validated timestamps");
            Param::timestamp(name, ts)
        };
        StatementRequest::new(sql)
            .param(Param::string("rows", batch.json.as_str()))
            .param(bound("ts_min", batch.ts_min_us))
            .param(bound("ts_max", batch.ts_max_us))
            .wait_timeout(Duration::from_secs(30), OnWaitTimeout::Continue)
            .deadline(STATEMENT_DEADLINE)
    }
}

/// A statement stuck longer than this is cancelled and the batch tried again.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(300);

impl BatchSink for StatementSink {
    async fn write(&self, batch: &EncodedBatch) -> Result<(), databricks::Error> {
        let request = self.request(&self.merge_sql, batch);
        self.statements.execute(request).await.map(drop)
    }

    async fn write_rejected(
        &self,
        batch: &EncodedBatch,
        refusal: &databricks::Error,
    ) -> Result<(), databricks::Error> {
        let code = refusal.error_class().unwrap_or("UNKNOWN");
        let message: String = refusal
            .to_string()
            .chars()
            .take(MAX_ERROR_MESSAGE)
            .collect();
        let request = self
            .request(&self.reject_sql, batch)
            .param(Param::string("error_code", code))
            .param(Param::string("error_message", message));
        self.statements.execute(request).await.map(drop)
    }
}

/// Creates the table and its dead-letter table when missing.
pub async fn ensure_tables(
    statements: &Statements,
    table: &TableName,
    rejected: &TableName,
) -> Result<(), databricks::Error> {
    ensure_table(
        statements,
        table,
        COLUMNS,
        "Device readings ingested by lakegate, one row per metric",
    )
    .await?;
    let columns = format!("{COLUMNS}, {REJECTED_COLUMNS}");
    ensure_table(
        statements,
        rejected,
        &columns,
        "Readings the table refused, with the error",
    )
    .await
}

/// Creates the schema and the table when missing. A service principal that may
/// write the table but not create schemas only gets a warning for the first step.
async fn ensure_table(
    statements: &Statements,
    table: &TableName,
    columns: &str,
    comment: &str,
) -> Result<(), databricks::Error> {
    let schema = format!(
        "CREATE SCHEMA IF NOT EXISTS {}.{}",
        table.catalog, table.schema
    );
    if let Err(err) = statements.execute(StatementRequest::new(schema)).await {
        tracing::warn!(error = %err, "could not create the schema; assuming it exists");
    }
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {table} ({columns}) USING DELTA CLUSTER BY (device_id, ts) \
         COMMENT '{comment}'"
    );
    statements
        .execute(StatementRequest::new(create))
        .await
        .map(drop)
}
