//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::databricks::StatementRequest;

/// The process is up and serving.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// `ok` when a token was obtained and the warehouse ran `SELECT 1`, else `unreachable`
    /// (the details go to the log: this route needs no credentials).
    pub warehouse: &'static str,
    /// `ok`, or `failing` when batch writes have failed for longer than a grace period,
    /// or the table refuses them for good.
    pub writes: &'static str,
    /// Why writes are `failing`: `table_unwritable` (the table refuses every write: it is
    /// missing, or permission is denied; rows are kept and retried) or `write_errors`
    /// (failures retrying may fix, for longer than the grace period).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub devices: usize,
    /// Present (true) once shutdown has begun.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shutting_down: bool,
}

impl Readiness {
    fn shutting_down(devices: usize) -> Readiness {
        Readiness {
            ready: false,
            warehouse: "not_checked",
            writes: "not_checked",
            reason: None,
            devices,
            shutting_down: true,
        }
    }
}

/// Batch writes that keep failing this long make the gateway unready; shorter blips
/// (a throttled statement, a token refresh) don't.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(30);

/// Readiness is cached this long so that probes don't keep a warehouse busy.
const READINESS_TTL: Duration = Duration::from_secs(5);

/// Ready when a token is obtainable, the warehouse answers, batches are being written
/// and the registry has at least one device; never once shutdown has begun, so that
/// the platform stops routing requests here at once.
pub async fn readyz(State(app): State<AppState>) -> Response {
    // A probe waiting on a slow check also hears at once that shutdown began.
    let readiness = tokio::select! {
        biased;
        () = app.shutting_down.cancelled() => {
            Readiness::shutting_down(app.keys.current().device_count())
        }
        readiness = cached_check(&app) => readiness,
    };
    let status = match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(readiness)).into_response()
}

/// One check in flight at a time, however many probes ask: callers that arrive
/// while it runs wait for it and share its answer.
async fn cached_check(app: &AppState) -> Readiness {
    let mut cache = app.readiness.lock().await;
    if let Some((at, readiness)) = &*cache
        && at.elapsed() < READINESS_TTL
    {
        return readiness.clone();
    }
    let readiness = check(app).await;
    *cache = Some((Instant::now(), readiness.clone()));
    readiness
}

async fn check(app: &AppState) -> Readiness {
    let probe = StatementRequest::new("SELECT 1").deadline(Duration::from_secs(10));
    let warehouse = match app.client.statements().execute(probe).await {
        Ok(_) => "ok",
        Err(err) => {
            tracing::warn!(error = %err, "readiness: warehouse check failed");
            "unreachable"
        }
    };
    let reason = match app.metrics.activity.writes_failing_for() {
        _ if app.metrics.writes.is_unwritable() => Some("table_unwritable"),
        Some(failing) if failing > WRITE_FAILURE_GRACE => Some("write_errors"),
        _ => None,
    };
    let writes = if reason.is_some() { "failing" } else { "ok" };
    let devices = app.keys.current().device_count();
    Readiness {
        ready: warehouse == "ok" && writes == "ok" && devices > 0,
        warehouse,
        writes,
        reason,
        devices,
        shutting_down: false,
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.queue_rows.set(app.queue.depth() as i64);
    app.metrics.queue_bytes.set(app.queue.depth_bytes() as i64);
    let text = app.metrics.render(app.client.token_fetches());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
