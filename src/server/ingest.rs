//! `POST /ingest` (also `/api/ingest`, the path the Apps proxy documents for token access).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::auth::AuthenticatedDevice;
use super::error::HttpError;
use super::state::AppState;
use crate::error_code::ErrorCode;
use crate::ingest::{BodyError, BodyFormat, Encoding, decode, parse_request};
use crate::table::TableRow;

/// `?ack=commit` (default): answer 200 once the readings are committed to the
/// table. `?ack=accept`: answer 202 as soon as they are queued.
#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    #[default]
    Commit,
    Accept,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    #[serde(default)]
    ack: Ack,
}

/// A header's text; one that is not visible ASCII becomes a value no parser accepts (415).
fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or("(not visible ASCII)"))
}

/// Whether reading the body stopped at the size cap (rather than the client going away).
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

pub async fn ingest(
    State(app): State<AppState>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    params: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(|err| {
        HttpError::new(
            ErrorCode::InvalidQuery,
            format!("{err}; use ack=commit or ack=accept"),
        )
    })?;
    // A device over its rate is refused before its body is read.
    app.rate_limits.admit_request(&device)?;
    let caps = &app.config.body;
    let format = BodyFormat::from_content_type(header_str(&headers, header::CONTENT_TYPE))?;
    let encoding = Encoding::from_header(header_str(&headers, header::CONTENT_ENCODING))?;
    let raw = axum::body::to_bytes(body, caps.max_body_bytes)
        .await
        .map_err(|err| match is_length_limit(&err) {
            true => HttpError::from(BodyError::TooLarge {
                limit: caps.max_body_bytes,
            }),
            false => HttpError::new(
                ErrorCode::BodyUnreadable,
                "the request body could not be read to its end",
            ),
        })?;
    let decoded = decode(raw, encoding, caps)?;
    let parsed = parse_request(&decoded, format, &device.id, caps, Utc::now())?;
    for rejected in &parsed.rejected {
        app.metrics.reject(&device.id, rejected.reason.as_str());
    }
    if parsed.readings.is_empty() {
        return Err(HttpError::all_rejected(parsed.rejected));
    }

    // The table refuses writes for good (dropped, permission revoked): what is queued is
    // kept and retried, but taking more would only fill the queue.
    if app.metrics.writes.is_unwritable() {
        return Err(HttpError::new(
            ErrorCode::WritesFailing,
            "the gateway cannot write to its table at the moment; nothing from this request \
             was accepted; retry later",
        )
        .retry_after(std::time::Duration::from_secs(30)));
    }
    let accepted = parsed.readings.len();
    let rows: Vec<TableRow> = parsed
        .readings
        .into_iter()
        .flat_map(|reading| reading.into_rows(&device.id))
        .collect();
    // Room first: a request the queue refuses must not spend more of the rate budgets.
    let room = app.queue.reserve(&rows)?;
    app.rate_limits
        .admit(&device, accepted as u32, rows.len() as u32)?;
    let committed = room.submit(rows, params.ack == Ack::Commit)?;
    app.metrics.accept(accepted as u64);

    let Some(committed) = committed else {
        let body = json!({"accepted": accepted, "rejected": parsed.rejected, "committed": false});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    };
    // Answer before the server stops waiting for requests.
    let shutdown_bound = async {
        app.shutting_down.cancelled().await;
        tokio::time::sleep(app.config.shutdown.answer_waiting()).await;
    };
    tokio::select! {
        done = tokio::time::timeout(app.config.ack_timeout, committed) => match done {
            Ok(Ok(())) => {
                let body = json!({"accepted": accepted, "rejected": parsed.rejected, "committed": true});
                Ok((StatusCode::OK, Json(body)).into_response())
            }
            Err(_) if !app.shutting_down.is_cancelled() => Err(HttpError::new(
                ErrorCode::NotYetCommitted,
                "the readings are queued but not committed yet; the gateway keeps writing them \
                 while it runs, and resending them is safe because repeated readings are \
                 written once",
            )
            .retry_after(Duration::from_secs(5))),
            // The writer let go of the rows: the gateway is stopping.
            _ => Err(not_committed_at_shutdown()),
        },
        () = shutdown_bound => Err(not_committed_at_shutdown()),
    }
}

/// No promise that the rows will still be written: the grace period may end first.
fn not_committed_at_shutdown() -> HttpError {
    HttpError::new(
        ErrorCode::NotYetCommitted,
        "the gateway is shutting down and the readings are not committed; they may not be \
         written before it stops, so resend them (repeated readings are written once)",
    )
    .retry_after(Duration::from_secs(5))
}
