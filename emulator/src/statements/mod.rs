//! The SQL Statement Execution API (`/api/2.0/sql/statements`).
//!
//! Every statement runs as a background task through PENDING → RUNNING → SUCCEEDED | FAILED |
//! CANCELED; the submitting request waits up to `wait_timeout` for it. A cancel stops a statement
//! while it is queued or in its injected latency, and stops reads at any time; a write that has
//! started runs to completion, as a Delta commit would (Databricks documents that a cancel may
//! silently fail). Results are kept in memory; CLOSED (expired results) is not modelled.
//!
//! Assumptions: an unknown `warehouse_id` is answered 404 `RESOURCE_DOES_NOT_EXIST`; more than 255
//! parameters and a statement (text plus parameter values) over 16 MiB are answered 400
//! `INVALID_PARAMETER_VALUE`; `byte_limit` is accepted and ignored; a result always has at least
//! one (possibly empty) chunk, and empty `data_array`s are omitted.

mod links;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

pub(crate) use self::links::download;
use crate::error::{ApiJson, ErrorReply};
use crate::identity::TokenOwner;
use crate::results::{self, Format, ResultSet};
use crate::sql::{Output, Parameter, Request, SqlError};
use crate::state::{App, BaseUrl, Phase, Statement};
use crate::stats::bump;

const MAX_PARAMETERS: usize = 255;
const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024;
const MAX_INLINE_BYTES: usize = 25 * 1024 * 1024;
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub(crate) struct ExecuteRequest {
    statement: Option<String>,
    warehouse_id: Option<String>,
    catalog: Option<String>,
    schema: Option<String>,
    #[serde(default)]
    parameters: Vec<Parameter>,
    wait_timeout: Option<String>,
    on_wait_timeout: Option<String>,
    disposition: Option<String>,
    format: Option<String>,
    row_limit: Option<i64>,
    byte_limit: Option<i64>,
}

/// What the background task needs to run a statement.
struct Job {
    statement: String,
    parameters: Vec<Parameter>,
    catalog: Option<String>,
    schema: Option<String>,
    format: Format,
    inline: bool,
    row_limit: Option<usize>,
}

/// `POST /api/2.0/sql/statements`
pub(crate) async fn execute(
    State(app): State<Arc<App>>,
    Extension(owner): Extension<TokenOwner>,
    BaseUrl(url): BaseUrl,
    ApiJson(request): ApiJson<ExecuteRequest>,
) -> Result<Response, ErrorReply> {
    let (job, wait, cancel_on_timeout) = validate(&app, request)?;
    let statement = Arc::new(Statement {
        id: uuid::Uuid::new_v4().to_string(),
        inline: job.inline,
        phase: watch::Sender::new(Phase::Pending),
        cancel: watch::Sender::new(false),
        finished_at: OnceLock::new(),
    });
    app.statements.insert(Arc::clone(&statement));
    app.stats.statement_by(&owner);
    // Answer "0s" from the state before the task starts, so the caller always sees it pending.
    let immediate = wait.is_zero().then(|| response(&app, &url, &statement));
    tokio::spawn(run(Arc::clone(&app), Arc::clone(&statement), job));
    if app.faults.take_lost_response() {
        // The statement runs to its end; the caller never learns its id or outcome.
        statement.finished().await;
        bump(&app.stats.lost_responses);
        return Ok(broken_response());
    }
    if let Some(body) = immediate {
        return Ok(Json(body).into_response());
    }
    if !statement.wait(wait).await && cancel_on_timeout {
        statement.cancel.send_replace(true);
        statement.finished().await;
    }
    Ok(Json(response(&app, &url, &statement)).into_response())
}

/// A 200 whose body fails mid-stream, so the connection breaks before any answer arrives.
fn broken_response() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<axum::body::Bytes, _>(std::io::Error::other("injected: answer lost"))
    });
    Response::new(axum::body::Body::from_stream(failing))
}

/// `GET /api/2.0/sql/statements/{id}`
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    BaseUrl(url): BaseUrl,
    Path(id): Path<String>,
) -> Result<Json<Value>, ErrorReply> {
    let statement = app.statements.get(&id)?;
    Ok(Json(response(&app, &url, &statement)))
}

/// `GET /api/2.0/sql/statements/{id}/result/chunks/{chunk_index}`
pub(crate) async fn chunk(
    State(app): State<Arc<App>>,
    BaseUrl(url): BaseUrl,
    Path((id, index)): Path<(String, String)>,
) -> Result<Json<Value>, ErrorReply> {
    let statement = app.statements.get(&id)?;
    let Phase::Succeeded(result) = statement.phase.borrow().clone() else {
        return Err(ErrorReply::invalid_parameter(format!(
            "Statement {id} has no result: it is not in state SUCCEEDED."
        )));
    };
    let index = index
        .parse::<usize>()
        .ok()
        .filter(|i| *i < result.chunks.len())
        .ok_or_else(|| {
            ErrorReply::invalid_parameter(format!(
                "Chunk index {index} is out of range for statement {id}."
            ))
        })?;
    Ok(Json(result_data(&app, &url, &statement, &result, index)))
}

/// `POST /api/2.0/sql/statements/{id}/cancel`
pub(crate) async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ErrorReply> {
    bump(&app.stats.cancels);
    app.statements.get(&id)?.cancel.send_replace(true);
    Ok(Json(json!({})))
}

fn validate(app: &App, request: ExecuteRequest) -> Result<(Job, Duration, bool), ErrorReply> {
    let statement = request
        .statement
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ErrorReply::missing("statement"))?;
    let warehouse_id = request
        .warehouse_id
        .filter(|w| !w.is_empty())
        .ok_or_else(|| ErrorReply::missing("warehouse_id"))?;
    if warehouse_id != app.warehouse_id {
        return Err(ErrorReply::not_found(format!(
            "SQL warehouse {warehouse_id} does not exist."
        )));
    }
    let wait = parse_wait_timeout(request.wait_timeout.as_deref())?;
    let cancel_on_timeout = match request.on_wait_timeout.as_deref() {
        None | Some("CONTINUE") => false,
        Some("CANCEL") => true,
        Some(other) => {
            return Err(ErrorReply::invalid_parameter(format!(
                "on_wait_timeout must be CONTINUE or CANCEL, not '{other}'."
            )));
        }
    };
    let inline = match request.disposition.as_deref() {
        None | Some("INLINE") => true,
        Some("EXTERNAL_LINKS") => false,
        Some(other) => {
            return Err(ErrorReply::invalid_parameter(format!(
                "disposition must be INLINE or EXTERNAL_LINKS, not '{other}'."
            )));
        }
    };
    let format = match request.format.as_deref() {
        None => Format::JsonArray,
        Some(text) => {
            serde_json::from_value::<Format>(Value::String(text.to_string())).map_err(|_| {
                ErrorReply::invalid_parameter(format!(
                    "format must be JSON_ARRAY, ARROW_STREAM or CSV, not '{text}'."
                ))
            })?
        }
    };
    if inline && format != Format::JsonArray {
        return Err(ErrorReply::invalid_parameter(
            "The INLINE disposition supports only the JSON_ARRAY format; use EXTERNAL_LINKS for ARROW_STREAM and CSV.",
        ));
    }
    if request.parameters.len() > MAX_PARAMETERS {
        return Err(ErrorReply::invalid_parameter(format!(
            "A statement can have at most {MAX_PARAMETERS} parameters; this one has {}.",
            request.parameters.len()
        )));
    }
    let size = statement.len()
        + request
            .parameters
            .iter()
            .map(|p| p.value.as_deref().map_or(0, str::len))
            .sum::<usize>();
    if size > MAX_STATEMENT_BYTES {
        return Err(ErrorReply::invalid_parameter(format!(
            "The statement is {size} bytes; the limit is {MAX_STATEMENT_BYTES} bytes."
        )));
    }
    let row_limit = match request.row_limit {
        Some(limit) => Some(
            usize::try_from(limit)
                .map_err(|_| ErrorReply::invalid_parameter("row_limit must not be negative."))?,
        ),
        None => None,
    };
    if request.byte_limit.is_some_and(|limit| limit < 0) {
        return Err(ErrorReply::invalid_parameter(
            "byte_limit must not be negative.",
        ));
    }
    let job = Job {
        statement,
        parameters: request.parameters,
        catalog: request.catalog,
        schema: request.schema,
        format,
        inline,
        row_limit,
    };
    Ok((job, wait, cancel_on_timeout))
}

/// `"0s"`, or `"5s"` to `"50s"`; absent means 10 s.
fn parse_wait_timeout(value: Option<&str>) -> Result<Duration, ErrorReply> {
    let Some(text) = value else {
        return Ok(DEFAULT_WAIT);
    };
    match text.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
        Some(seconds) if seconds == 0 || (5..=50).contains(&seconds) => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(ErrorReply::invalid_parameter(format!(
            "wait_timeout must be 0s or between 5s and 50s, not '{text}'."
        ))),
    }
}

async fn run(app: Arc<App>, statement: Arc<Statement>, job: Job) {
    statement.phase.send_replace(Phase::Running);
    let mut cancel = statement.cancel.subscribe();
    let output = execute_job(&app, &job, &mut cancel).await;
    let phase = match output {
        None => Phase::Canceled,
        Some(output) => match output
            .and_then(|o| ResultSet::build(o, job.format, app.rows_per_chunk, job.row_limit))
        {
            Ok(result) if job.inline && result.total_bytes() > MAX_INLINE_BYTES => {
                Phase::Failed(SqlError::new(
                    "INLINE_RESULT_TOO_LARGE",
                    "54000",
                    "The result exceeds the 25 MiB limit of the INLINE disposition; use EXTERNAL_LINKS.",
                ))
            }
            Ok(result) => Phase::Succeeded(Arc::new(result)),
            Err(err) => Phase::Failed(err),
        },
    };
    let _ = statement.finished_at.set(Instant::now());
    statement.phase.send_replace(phase);
}

/// Runs the job's statement; `None` if it was cancelled first. A read spends the injected
/// latency, then runs (cancellable throughout). A write reads (`Engine::stage`), spends the
/// latency and its cost (cancellable: nothing is committed), then validates and commits
/// (`Engine::commit`), which a cancel no longer stops, as with a Delta commit; so writes into
/// one table overlap in time, and conflict as the `write_conflicts` fault says.
async fn execute_job(
    app: &App,
    job: &Job,
    cancel: &mut watch::Receiver<bool>,
) -> Option<Result<Output, SqlError>> {
    let request = Request {
        statement: &job.statement,
        parameters: &job.parameters,
        catalog: job.catalog.as_deref(),
        schema: job.schema.as_deref(),
    };
    let latency = app.faults.statement_latency();
    let prepared = match app.engine.prepare(&request) {
        Ok(prepared) => prepared,
        Err(err) => {
            pause(latency, cancel).await?;
            return Some(Err(err));
        }
    };
    if prepared.is_read_only() {
        pause(latency, cancel).await?;
        return tokio::select! {
            _ = cancel.wait_for(|c| *c) => None,
            output = app.engine.run(prepared) => Some(output),
        };
    }
    let rejected = rejected_by_constraint(app, &prepared, job);
    let staged = match app.engine.stage(prepared).await {
        Ok(staged) => staged,
        Err(err) => {
            pause(latency, cancel).await?;
            return Some(Err(err));
        }
    };
    let cost = app
        .faults
        .statement_cost()
        .map_or(Duration::ZERO, |cost| cost.of(staged.rows()));
    pause(latency.saturating_add(cost), cancel).await?;
    if let Some(failure) = app.faults.failing_write() {
        bump(&app.stats.failed_writes);
        return Some(Err(failure));
    }
    if rejected {
        return Some(Err(SqlError::new(
            "DELTA_VIOLATE_CONSTRAINT_WITH_VALUES",
            "23001",
            "CHECK constraint emulator_reject_rows violated by row with values: \
             (a row holding the rejected marker).",
        )));
    }
    let result = app
        .engine
        .commit(staged, app.faults.write_conflicts())
        .await;
    match &result {
        Ok(_) => bump(&app.stats.commits),
        Err(err) if err.is_write_conflict() => bump(&app.stats.write_conflicts),
        Err(_) => {}
    }
    Some(result)
}

/// Sleeps `duration`; `None` if the statement is cancelled first.
async fn pause(duration: Duration, cancel: &mut watch::Receiver<bool>) -> Option<()> {
    if duration.is_zero() {
        return (!*cancel.borrow()).then_some(());
    }
    tokio::select! {
        _ = cancel.wait_for(|c| *c) => None,
        () = tokio::time::sleep(duration) => Some(()),
    }
}

/// The `reject_rows` fault: a write into its table carrying its marker.
fn rejected_by_constraint(app: &App, prepared: &crate::sql::Prepared, job: &Job) -> bool {
    prepared.written_table().is_some_and(|table| {
        app.faults.rejects_rows(
            &table,
            job.parameters.iter().filter_map(|p| p.value.as_deref()),
        )
    })
}

fn response(app: &App, url: &str, statement: &Statement) -> Value {
    let phase = statement.phase.borrow().clone();
    let mut body = json!({"statement_id": statement.id, "status": {"state": phase.state()}});
    match phase {
        Phase::Failed(err) => {
            body["status"]["error"] =
                json!({"error_code": err.error_code(), "message": err.message()});
            if let Some(sql_state) = err.sql_state {
                body["status"]["sql_state"] = sql_state.into();
            }
        }
        Phase::Succeeded(result) => {
            body["manifest"] = manifest(&result);
            body["result"] = result_data(app, url, statement, &result, 0);
        }
        Phase::Pending | Phase::Running | Phase::Canceled => {}
    }
    body
}

fn manifest(result: &ResultSet) -> Value {
    let chunks: Vec<Value> = result
        .chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            json!({"chunk_index": index, "row_offset": chunk.row_offset, "row_count": chunk.row_count, "byte_count": chunk.byte_count()})
        })
        .collect();
    json!({
        "format": result.format,
        "schema": {"column_count": result.columns.len(), "columns": result.columns},
        "total_chunk_count": chunks.len(),
        "chunks": chunks,
        "total_row_count": result.total_rows(),
        "total_byte_count": result.total_bytes(),
        "truncated": result.truncated,
    })
}

/// One chunk of a result: rows inline, or a link to download them.
fn result_data(
    app: &App,
    url: &str,
    statement: &Statement,
    result: &Arc<ResultSet>,
    index: usize,
) -> Value {
    let chunk = &result.chunks[index];
    let mut data = json!({
        "chunk_index": index,
        "row_offset": chunk.row_offset,
        "row_count": chunk.row_count,
        "byte_count": chunk.byte_count(),
    });
    if index + 1 < result.chunks.len() {
        data["next_chunk_index"] = (index + 1).into();
        data["next_chunk_internal_link"] = format!(
            "/api/2.0/sql/statements/{}/result/chunks/{}",
            statement.id,
            index + 1
        )
        .into();
    }
    if !statement.inline {
        let link = app.links.issue(Arc::clone(result), index);
        data["external_link"] = format!("{url}{}", link.path).into();
        data["expiration"] = link.expiration_text().into();
        data["http_headers"] = json!({ links::KEY_HEADER: link.key });
        return json!({"external_links": [data]});
    }
    if let results::ChunkData::Rows(rows) = &chunk.data
        && chunk.row_count > 0
    {
        data["data_array"] = rows.clone();
    }
    data
}
