//! The writer's way to the table: each batch as one MERGE through the Statement
//! Execution API (the statements themselves are in `table.rs`).

use std::time::Duration;

use chrono::DateTime;

use super::writer::{BatchSink, EncodedBatch, RowBatch};
use crate::databricks::{self, OnWaitTimeout, Param, StatementRequest, Statements};
use crate::table::{self, TableName};

/// Longest error message kept in the dead-letter table.
const MAX_ERROR_MESSAGE: usize = 4000;

/// Writes batches to the table through the Statement Execution API.
#[derive(Clone)]
pub(crate) struct StatementSink {
    statements: Statements,
    merge_sql: String,
    dead_letter_sql: String,
}

impl StatementSink {
    pub(crate) fn new(statements: Statements, table: &TableName, dead_letter: &TableName) -> Self {
        StatementSink {
            statements,
            merge_sql: table::merge_sql(table),
            dead_letter_sql: table::merge_dead_letter_sql(dead_letter),
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
    type Error = databricks::Error;

    async fn write(&self, batch: &RowBatch<'_>) -> Result<(), databricks::Error> {
        let request = self.request(&self.merge_sql, &batch.encoded);
        self.statements.execute(request).await.map(drop)
    }

    async fn write_dead_letter(
        &self,
        batch: &RowBatch<'_>,
        refusal: &databricks::Error,
    ) -> Result<(), databricks::Error> {
        let code = refusal.error_class().unwrap_or("UNKNOWN");
        let message: String = refusal
            .to_string()
            .chars()
            .take(MAX_ERROR_MESSAGE)
            .collect();
        let request = self
            .request(&self.dead_letter_sql, &batch.encoded)
            .param(Param::string("error_code", code))
            .param(Param::string("error_message", message));
        self.statements.execute(request).await.map(drop)
    }
}
