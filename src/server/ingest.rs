//! `POST /ingest` (also `/api/ingest`, the path the Apps proxy documents for token
//! access), from a device or a site relay: the request's parts are read (`upload.rs`),
//! admission decides what it queues (`ingest/intake.rs`), and the answer waits for
//! the acknowledgement asked for.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;

use super::auth::AuthenticatedSender;
use super::error::{HttpError, retry_after_secs};
use super::state::AppState;
use super::upload::{Ack, ack_of, header_str, read_body};
use crate::devices::Sender;
use crate::ingest::{BodyFormat, Encoding, RejectedReading, Taken, Unwritten, decode, notes_on};

pub(super) async fn ingest(
    State(app): State<AppState>,
    AuthenticatedSender { sender, registry }: AuthenticatedSender,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let ack = ack_of(query)?;
    // Refused before the body is read: at a site relay, a device whose readings it would
    // not forward; anywhere, a sender over its request rate.
    if let (Some(site), Sender::Device(device)) = (app.relay_state(), &sender) {
        site.admission.check(&device.id, &registry)?;
    }
    let intake = app.intake();
    intake.admit_request(&sender)?;
    let format = BodyFormat::from_content_type(header_str(&headers, header::CONTENT_TYPE))?;
    let encoding = Encoding::from_header(header_str(&headers, header::CONTENT_ENCODING))?;
    let (raw, upload) = read_body(&app, &sender, body).await?;
    let decoded = decode(raw, encoding, &app.config.body)?;
    // A first look; the spooler checks again against the records it writes.
    if let Some(site) = app.relay_state()
        && !site.has_room_for(decoded.len() as u64)
    {
        return Err(HttpError::spool_full());
    }
    let taken = intake.take(&sender, &registry, &decoded, format, Utc::now())?;
    // The body is parsed: its bytes, and their room in the budgets, go before any wait.
    drop((decoded, upload));
    answer(&app, &sender, taken, ack).await
}

/// Queues what was taken and answers: at once with `?ack=accept`, else once the rows are
/// committed (or, at a relay, spooled), within the acknowledgement's time.
async fn answer(
    app: &AppState,
    sender: &Sender,
    Taken {
        room,
        rows,
        accepted,
        rejected,
        retry_after,
    }: Taken,
    ack: Ack,
) -> Result<Response, HttpError> {
    let notes = notes_on(&rows);
    // A relay answers once the readings are on disk, whatever the acknowledgement asked.
    let relay = app.relay_state().is_some();
    let committed = room.submit(rows, relay || ack == Ack::Commit)?;
    app.metrics.accept(accepted as u64);
    if let Sender::Relay(relay) = sender {
        app.metrics.relay_accepted(&relay.id, accepted as u64);
    }
    let answer = |status: StatusCode, answer: Answer| {
        let mut response = (status, Json(answer)).into_response();
        if let Some(wait) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(wait));
        }
        Ok(response)
    };
    let taken = Answer::new(accepted, &rejected, &notes);
    let Some(committed) = committed else {
        return answer(StatusCode::ACCEPTED, taken);
    };
    // Answer before the server stops waiting for requests.
    let shutdown_bound = async {
        app.shutting_down.cancelled().await;
        tokio::time::sleep(app.config.shutdown.answer_waiting()).await;
    };
    tokio::select! {
        done = tokio::time::timeout(app.config.ack_timeout, committed) => match done {
            Ok(Ok(Err(Unwritten::NoRoom))) => Err(HttpError::spool_full()),
            Ok(Ok(Ok(()))) if relay => answer(
                StatusCode::ACCEPTED,
                Answer { spooled: Some(true), ..taken },
            ),
            Ok(Ok(Ok(()))) => answer(StatusCode::OK, Answer { committed: true, ..taken }),
            Err(_) if !app.shutting_down.is_cancelled() => {
                Err(HttpError::not_yet_committed(relay))
            }
            // The writer let go of the rows: the gateway is stopping.
            _ => Err(HttpError::not_committed_at_shutdown()),
        },
        () = shutdown_bound => Err(HttpError::not_committed_at_shutdown()),
    }
}

/// The answer to a request whose readings were taken: how many, the ones refused, and
/// whether they are committed (or, from a relay, spooled).
#[derive(Serialize)]
struct Answer<'a> {
    accepted: usize,
    rejected: &'a [RejectedReading],
    /// Readings taken as sent that may not be what the device meant.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
    committed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    spooled: Option<bool>,
}

impl<'a> Answer<'a> {
    fn new(accepted: usize, rejected: &'a [RejectedReading], notes: &'a [String]) -> Self {
        Answer {
            accepted,
            rejected,
            notes,
            committed: false,
            spooled: None,
        }
    }
}
