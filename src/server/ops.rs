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
}

/// Batch writes that keep failing this long make the gateway unready; shorter blips
/// (a throttled statement, a token refresh) don't.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(30);

/// Readiness is cached this long so that probes don't keep a warehouse busy.
const READINESS_TTL: Duration = Duration::from_secs(5);

/// Ready when a token is obtainable, the warehouse answers, batches are being written
/// and the registry has at least one device.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let cached = app
        .readiness
        .lock()
        .expect("readiness cache poisoned")
        .clone()
        .filter(|(at, _)| at.elapsed() < READINESS_TTL);
    let readiness = match cached {
        Some((_, readiness)) => readiness,
        None => {
            let readiness = check(&app).await;
            *app.readiness.lock().expect("readiness cache poisoned") =
                Some((Instant::now(), readiness.clone()));
            readiness
        }
    };
    let status = match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(readiness)).into_response()
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
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.queue_rows.set(app.queue.depth() as i64);
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
