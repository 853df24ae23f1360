//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::readiness::{Checks, Readiness};
use super::state::{AppState, Backend};
use crate::config::Sink;
use crate::databricks::{self, StatementRequest};

/// The process is up and serving.
pub(super) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// The warehouse check with the Zerobus sink.
const NOT_PROBED: &str = "not_probed";

/// Batch writes that keep failing this long make the gateway unready; shorter blips
/// (a throttled statement, a token refresh) don't.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(30);

/// Ready when the registry has at least one device and, at a gateway, a token is
/// obtainable, the warehouse answers (not probed with the Zerobus sink, whose writes do not
/// need it) and batches are being written; at a relay, the
/// upstream answers and the spool can be written; never once shutdown has begun, so that
/// the platform stops routing requests here at once.
pub(super) async fn readyz(State(app): State<AppState>) -> Response {
    // A probe waiting on a slow check also hears at once that shutdown began.
    let readiness = tokio::select! {
        biased;
        () = app.shutting_down.cancelled() => {
            Readiness::shutting_down(app.keys.current().device_count(), app.relay_state().is_some())
        }
        readiness = app.readiness.get_or_check(check(&app)) => readiness,
    };
    let status = match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(readiness)).into_response()
}

async fn check(app: &AppState) -> Readiness {
    let devices = app.keys.current().device_count();
    let checks = match &app.backend {
        Backend::Table(client) => gateway_checks(app, client).await,
        Backend::Relay(site) => {
            let health = site.health().await;
            Checks::Relay {
                upstream: health.upstream,
                spool: health.spool,
                forwarding: health.forwarding,
            }
        }
    };
    let ready = devices > 0
        && match &checks {
            Checks::Gateway {
                warehouse, writes, ..
            } => matches!(*warehouse, "ok" | NOT_PROBED) && *writes == "ok",
            Checks::Relay {
                upstream,
                spool,
                forwarding,
            } => [upstream, spool, forwarding]
                .iter()
                .all(|check| **check == "ok"),
        };
    Readiness {
        ready,
        checks,
        devices,
        shutting_down: false,
    }
}

async fn gateway_checks(app: &AppState, client: &databricks::Client) -> Checks {
    let warehouse = match app.config.sink {
        // Writes do not need the warehouse, and a probe every few seconds would keep it
        // running around the clock: what this sink exists to avoid.
        Sink::Zerobus { .. } => NOT_PROBED,
        Sink::Statements => {
            let probe = StatementRequest::new("SELECT 1").deadline(Duration::from_secs(10));
            match client.statements().execute(probe).await {
                Ok(_) => "ok",
                Err(err) => {
                    tracing::warn!(error = %err, "readiness: warehouse check failed");
                    "unreachable"
                }
            }
        }
    };
    let reason = match app.metrics.stats.writes_failing_for() {
        _ if app.writes.is_unwritable() => Some("table_unwritable"),
        Some(failing) if failing > WRITE_FAILURE_GRACE => Some("write_errors"),
        _ => None,
    };
    let writes = if reason.is_some() { "failing" } else { "ok" };
    Checks::Gateway {
        warehouse,
        writes,
        reason,
    }
}

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.queue_rows.set(app.queue.depth() as i64);
    app.metrics.queue_bytes.set(app.queue.depth_bytes() as i64);
    app.metrics.upload_bytes.set(app.uploads.in_flight() as i64);
    let tokens = match &app.backend {
        Backend::Table(client) => client.token_fetches(),
        Backend::Relay(site) => {
            site.observe(&app.metrics.relay).await;
            site.token_fetches()
        }
    };
    let text = app.metrics.render(tokens, app.writes.is_unwritable());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
