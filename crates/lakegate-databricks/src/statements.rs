//! SQL Statement Execution API: submit, poll until a terminal state, cancel
//! when the caller gives up.
//!
//! Cancellation: the statement is cancelled (`POST .../cancel`, sent from a
//! spawned task) whenever the future of [`Statements::execute`] is dropped
//! before the statement finished: the caller gave up, a `tokio::select!` on a
//! shutdown signal won, or [`StatementRequest::deadline`] passed. On shutdown,
//! drop pending executions and keep the runtime alive briefly so the cancels go
//! out. A drop during the initial POST cannot cancel: there is no id yet.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::error::{Error, StatementError};
use super::http::{ApiClient, Call};
use super::results::{Manifest, ResultData, StatementResult};
use super::wire::{Disposition, Format, OnWaitTimeout, StatementState};

/// Databricks refuses statements with more parameters (see facts §6).
pub(crate) const MAX_PARAMETERS: usize = 255;

/// A named parameter, referenced as `:name` in the SQL text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    name: String,
    /// Absent means NULL.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(rename = "type")]
    sql_type: String,
}

impl Param {
    /// Any SQL type by name, e.g. `DECIMAL(10,2)` or `DATE`, with its text value.
    pub fn typed(
        name: impl Into<String>,
        value: Option<String>,
        sql_type: impl Into<String>,
    ) -> Self {
        Param {
            name: name.into(),
            value,
            sql_type: sql_type.into(),
        }
    }

    pub fn string(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::typed(name, Some(value.into()), "STRING")
    }

    pub fn i64(name: impl Into<String>, value: i64) -> Self {
        Self::typed(name, Some(value.to_string()), "BIGINT")
    }

    pub fn f64(name: impl Into<String>, value: f64) -> Self {
        // Spark spells the infinities out; Rust prints "inf".
        let text = match value {
            f64::INFINITY => "Infinity".to_owned(),
            f64::NEG_INFINITY => "-Infinity".to_owned(),
            finite_or_nan => finite_or_nan.to_string(),
        };
        Self::typed(name, Some(text), "DOUBLE")
    }

    pub fn bool(name: impl Into<String>, value: bool) -> Self {
        Self::typed(name, Some(value.to_string()), "BOOLEAN")
    }

    /// ISO 8601 in UTC with microseconds (`2024-05-01T12:00:00.000000Z`), a
    /// TIMESTAMP literal Databricks reads independently of the session time zone.
    pub fn timestamp(name: impl Into<String>, value: DateTime<Utc>) -> Self {
        Self::typed(
            name,
            Some(value.to_rfc3339_opts(SecondsFormat::Micros, true)),
            "TIMESTAMP",
        )
    }

    /// A typed NULL.
    pub fn null(name: impl Into<String>, sql_type: impl Into<String>) -> Self {
        Self::typed(name, None, sql_type)
    }
}

/// A statement to run; built with chained setters.
#[derive(Debug, Clone)]
pub struct StatementRequest {
    sql: String,
    params: Vec<Param>,
    catalog: Option<String>,
    schema: Option<String>,
    wait_timeout: Duration,
    on_wait_timeout: OnWaitTimeout,
    disposition: Disposition,
    format: Format,
    row_limit: Option<u64>,
    deadline: Option<Duration>,
    retry_ambiguous: bool,
}

impl StatementRequest {
    /// Defaults: INLINE JSON_ARRAY, wait 10 s then poll, no deadline.
    pub fn new(sql: impl Into<String>) -> Self {
        StatementRequest {
            sql: sql.into(),
            params: Vec::new(),
            catalog: None,
            schema: None,
            wait_timeout: Duration::from_secs(10),
            on_wait_timeout: OnWaitTimeout::Continue,
            disposition: Disposition::Inline,
            format: Format::JsonArray,
            row_limit: None,
            deadline: None,
            retry_ambiguous: true,
        }
    }

    pub fn param(mut self, param: Param) -> Self {
        self.params.push(param);
        self
    }

    pub fn params(mut self, params: impl IntoIterator<Item = Param>) -> Self {
        self.params.extend(params);
        self
    }

    pub fn catalog(mut self, catalog: impl Into<String>) -> Self {
        self.catalog = Some(catalog.into());
        self
    }

    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// How long the server holds the POST open: 0 s, or 5 s to 50 s (whole seconds).
    pub fn wait_timeout(mut self, wait: Duration, on_timeout: OnWaitTimeout) -> Self {
        self.wait_timeout = wait;
        self.on_wait_timeout = on_timeout;
        self
    }

    pub fn disposition(mut self, disposition: Disposition, format: Format) -> Self {
        self.disposition = disposition;
        self.format = format;
        self
    }

    pub fn row_limit(mut self, rows: u64) -> Self {
        self.row_limit = Some(rows);
        self
    }

    /// Give up (and cancel the statement) after this long, submission included.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Whether to re-send the POST after a timeout or a connection lost after
    /// sending. Databricks may then have accepted the first copy, so the
    /// statement could run twice: turn this off for statements that are not
    /// idempotent (plain INSERTs). 429 and 503 are always retried: they mean
    /// the request was not processed.
    pub fn retry_ambiguous(mut self, retry: bool) -> Self {
        self.retry_ambiguous = retry;
        self
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    statement: &'a str,
    warehouse_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Param]>::is_empty")]
    parameters: &'a [Param],
    wait_timeout: String,
    on_wait_timeout: OnWaitTimeout,
    disposition: Disposition,
    format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    row_limit: Option<u64>,
}

#[derive(Deserialize)]
struct StatementResponse {
    statement_id: String,
    status: Status,
    #[serde(default)]
    manifest: Manifest,
    result: Option<ResultData>,
}

#[derive(Deserialize)]
struct Status {
    state: StatementState,
    error: Option<ServiceError>,
    sql_state: Option<String>,
}

#[derive(Deserialize)]
struct ServiceError {
    error_code: Option<String>,
    message: Option<String>,
    /// Some answers carry the SQLSTATE here rather than beside the error.
    sql_state: Option<String>,
}

/// Polling starts fast for short statements and settles at a few seconds.
const POLL_INITIAL: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(3);
/// Extra time for a POST beyond the server's wait_timeout, so that the HTTP
/// timeout never fires first (which would make the POST ambiguous).
const WAIT_TIMEOUT_SLACK: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Statements {
    api: ApiClient,
    warehouse_id: Option<String>,
}

impl Statements {
    pub fn new(api: ApiClient, warehouse_id: Option<String>) -> Self {
        Statements { api, warehouse_id }
    }

    /// Runs the statement to a terminal state. SUCCEEDED gives the result;
    /// FAILED, CANCELED and CLOSED give [`Error::Statement`].
    pub async fn execute(&self, request: StatementRequest) -> Result<StatementResult, Error> {
        let mut guard = CancelGuard {
            api: self.api.clone(),
            statement_id: None,
        };
        let Some(deadline) = request.deadline else {
            return self.run(request, &mut guard).await;
        };
        match tokio::time::timeout(deadline, self.run(request, &mut guard)).await {
            Ok(outcome) => outcome,
            // The guard, still armed, sends the cancel when it drops.
            Err(_) => Err(Error::DeadlineExceeded {
                statement_id: guard.statement_id.clone(),
                deadline,
            }),
        }
    }

    async fn run(
        &self,
        request: StatementRequest,
        guard: &mut CancelGuard,
    ) -> Result<StatementResult, Error> {
        let warehouse_id = self
            .warehouse_id
            .as_deref()
            .ok_or_else(|| Error::InvalidRequest("no warehouse id configured".into()))?;
        if request.params.len() > MAX_PARAMETERS {
            return Err(Error::InvalidRequest(format!(
                "{} parameters; Databricks accepts at most {MAX_PARAMETERS}",
                request.params.len()
            )));
        }
        let wire = WireRequest {
            statement: &request.sql,
            warehouse_id,
            catalog: request.catalog.as_deref(),
            schema: request.schema.as_deref(),
            parameters: &request.params,
            wait_timeout: format!("{}s", request.wait_timeout.as_secs()),
            on_wait_timeout: request.on_wait_timeout,
            disposition: request.disposition,
            format: request.format,
            row_limit: request.row_limit,
        };
        let call = Call::post("/api/2.0/sql/statements")
            .json(&wire)?
            .retry_ambiguous(request.retry_ambiguous)
            .timeout(request.wait_timeout + WAIT_TIMEOUT_SLACK);
        let mut response: StatementResponse = self.api.call(call).await?;
        guard.statement_id = Some(response.statement_id.clone());

        let mut poll = ExponentialBuilder::new()
            .with_min_delay(POLL_INITIAL)
            .with_max_delay(POLL_MAX)
            .with_factor(1.5)
            .without_max_times()
            .build();
        while !response.status.state.is_terminal() {
            tokio::time::sleep(poll.next().unwrap_or(POLL_MAX)).await;
            let path = format!("/api/2.0/sql/statements/{}", response.statement_id);
            response = self.api.call(Call::get(path)).await?;
        }
        guard.statement_id = None;

        let StatementResponse {
            statement_id,
            status,
            manifest,
            result,
        } = response;
        if status.state == StatementState::Succeeded {
            return Ok(StatementResult::new(
                self.api.clone(),
                statement_id,
                manifest,
                result,
            ));
        }
        let (error_code, message, error_sql_state) =
            status.error.map_or((None, None, None), |error| {
                (error.error_code, error.message, error.sql_state)
            });
        Err(StatementError {
            statement_id,
            state: status.state,
            error_code,
            message,
            sql_state: status.sql_state.or(error_sql_state),
        }
        .into())
    }
}

async fn cancel(api: &ApiClient, statement_id: &str) -> Result<(), Error> {
    let call = Call::post(format!("/api/2.0/sql/statements/{statement_id}/cancel"));
    api.call::<serde::de::IgnoredAny>(call).await.map(drop)
}

/// Holds the id of a submitted, unfinished statement and cancels it on drop.
struct CancelGuard {
    api: ApiClient,
    statement_id: Option<String>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(statement_id) = self.statement_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%statement_id, "no runtime to cancel an abandoned statement");
            return;
        };
        let api = self.api.clone();
        runtime.spawn(async move {
            match cancel(&api, &statement_id).await {
                Ok(()) => tracing::info!(%statement_id, "cancelled abandoned statement"),
                Err(err) => tracing::warn!(%statement_id, error = %err, "cancelling abandoned statement failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(param: Param) -> serde_json::Value {
        serde_json::to_value(param).unwrap()
    }

    #[test]
    fn params_serialize_as_databricks_expects() {
        use serde_json::json as j;
        assert_eq!(
            json(Param::string("s", "x")),
            j!({"name": "s", "value": "x", "type": "STRING"})
        );
        assert_eq!(
            json(Param::i64("n", -5)),
            j!({"name": "n", "value": "-5", "type": "BIGINT"})
        );
        assert_eq!(
            json(Param::f64("d", 0.5)),
            j!({"name": "d", "value": "0.5", "type": "DOUBLE"})
        );
        assert_eq!(
            json(Param::f64("d", f64::NEG_INFINITY))["value"],
            "-Infinity"
        );
        assert_eq!(
            json(Param::bool("b", true)),
            j!({"name": "b", "value": "true", "type": "BOOLEAN"})
        );
        let at = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.25+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            json(Param::timestamp("t", at))["value"],
            "2024-05-01T10:00:00.250000Z"
        );
        assert_eq!(
            json(Param::null("x", "INT")),
            j!({"name": "x", "type": "INT"})
        );
    }

    #[test]
    fn only_pending_and_running_are_not_terminal() {
        use StatementState::*;
        for state in [Pending, Running] {
            assert!(!state.is_terminal());
        }
        for state in [Succeeded, Failed, Canceled, Closed] {
            assert!(state.is_terminal());
        }
    }
}
