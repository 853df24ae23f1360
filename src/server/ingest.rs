//! `POST /ingest` (also `/api/ingest`, the path the Apps proxy documents for token
//! access), and `POST /api/v2/write` (InfluxDB line protocol), from a device or a site
//! relay: the request's parts are read (`upload.rs`),
//! admission decides what it queues (`ingest/intake.rs`), and the answer waits for
//! the acknowledgement asked for.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use super::auth::AuthenticatedSender;
use super::error::{HttpError, retry_after_secs};
use super::state::AppState;
use super::upload::{Ack, ack_of, header_str, read_body};
use crate::devices::{Registry, Sender};
use crate::error_code::ErrorCode;
use crate::ingest::{
    BodyError, BodyFormat, Encoding, IntakeRefusal, Precision, RejectedReading, Reservation, Taken,
    Unwritten, decode, excerpt, notes_on, point_lines,
};
use crate::table::TableRow;

pub(super) async fn ingest(
    State(app): State<AppState>,
    AuthenticatedSender { sender, registry }: AuthenticatedSender,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let ack = ack_of(query)?;
    let format = |headers: &HeaderMap| {
        BodyFormat::from_content_type(header_str(headers, header::CONTENT_TYPE))
    };
    let taken = take(&app, &sender, &registry, &headers, body, format).await?;
    let notes = notes_on(&taken.rows);
    let answer = Answer::new(taken.accepted, &taken.rejected, &notes);
    let retry_after = taken.retry_after;
    let status = match settle(&app, &sender, taken.room, taken.rows, taken.accepted, ack).await? {
        Settled::Queued => (StatusCode::ACCEPTED, answer),
        Settled::Spooled => (
            StatusCode::ACCEPTED,
            Answer {
                spooled: Some(true),
                ..answer
            },
        ),
        Settled::Committed => (
            StatusCode::OK,
            Answer {
                committed: true,
                ..answer
            },
        ),
    };
    Ok(respond(status, retry_after))
}

/// `POST /api/v2/write`: InfluxDB line protocol, as InfluxDB 2 takes it, through the
/// same admission. Every line written answers 204; some lines refused, 200 with the
/// refused lines (InfluxDB 3's partial write); none written, 400 with them.
pub(super) async fn write_lines(
    State(app): State<AppState>,
    AuthenticatedSender { sender, registry }: AuthenticatedSender,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (precision, ack) = write_params(query)?;
    let mut lines = Vec::new();
    let format = |_: &HeaderMap| Ok(BodyFormat::LineProtocol(precision));
    let mut taken = take_lines(&app, &sender, &registry, &headers, body, format, &mut lines)
        .await
        .map_err(|refusal| match refusal {
            Refused::Http(err) => err,
            Refused::Intake(mut refusal) => {
                if let IntakeRefusal::NoValidReadings(rejected)
                | IntakeRefusal::RelayedDevicesRateLimited { rejected, .. } = &mut refusal
                {
                    number_lines(rejected, &lines);
                }
                refusal.into()
            }
        })?;
    number_lines(&mut taken.rejected, &lines);
    let all = taken.rejected.is_empty();
    let answer = Answer::new(taken.accepted, &taken.rejected, &[]);
    let retry_after = taken.retry_after;
    let settled = settle(&app, &sender, taken.room, taken.rows, taken.accepted, ack).await?;
    Ok(match settled {
        Settled::Committed | Settled::Spooled if all => StatusCode::NO_CONTENT.into_response(),
        Settled::Queued => respond((StatusCode::ACCEPTED, answer), retry_after),
        Settled::Spooled => respond(
            (
                StatusCode::OK,
                Answer {
                    spooled: Some(true),
                    ..answer
                },
            ),
            retry_after,
        ),
        Settled::Committed => respond(
            (
                StatusCode::OK,
                Answer {
                    committed: true,
                    ..answer
                },
            ),
            retry_after,
        ),
    })
}

/// The query of `/api/v2/write`: `precision` (ns by default) and `ack` are read; `org`
/// and `bucket` are taken and ignored, since the key says where the lines go.
fn write_params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<(Precision, Ack), HttpError> {
    let invalid = |problem: String| {
        HttpError::new(
            ErrorCode::InvalidParameter,
            format!(
                "{problem}; /api/v2/write takes precision (ns, us, ms or s), org and bucket \
                 (ignored) and ack (commit or accept)"
            ),
        )
    };
    let Query(pairs) =
        query.map_err(|_| invalid("the query string cannot be decoded".to_owned()))?;
    let mut precision = Precision::default();
    let mut ack = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "org" | "orgID" | "bucket" => {}
            "precision" => {
                precision = Precision::parse(&value).ok_or_else(|| {
                    invalid(format!("precision={} is not a choice", excerpt(&value)))
                })?;
            }
            "ack" => ack.push((name, value)),
            _ => {
                return Err(invalid(format!(
                    "unknown query parameter {}",
                    excerpt(&name)
                )));
            }
        }
    }
    Ok((precision, ack_of(Ok(Query(ack)))?))
}

/// Each refused reading's line number, from its position among the point lines.
fn number_lines(rejected: &mut [RejectedReading], lines: &[usize]) {
    for refused in rejected {
        refused.line = lines.get(refused.index).copied();
    }
}

enum Refused {
    Http(HttpError),
    Intake(IntakeRefusal),
}

impl From<HttpError> for Refused {
    fn from(err: HttpError) -> Self {
        Refused::Http(err)
    }
}

/// [`take_lines`] for a body whose readings carry no line numbers.
async fn take(
    app: &AppState,
    sender: &Sender,
    registry: &Arc<Registry>,
    headers: &HeaderMap,
    body: Body,
    format: impl FnOnce(&HeaderMap) -> Result<BodyFormat, BodyError>,
) -> Result<Taken, HttpError> {
    take_lines(
        app,
        sender,
        registry,
        headers,
        body,
        format,
        &mut Vec::new(),
    )
    .await
    .map_err(|refused| match refused {
        Refused::Http(err) => err,
        Refused::Intake(refusal) => refusal.into(),
    })
}

/// What a request may queue: its sender checked and its rate spent before the body is
/// read, then the body read within the budgets, decoded and admitted. `lines` gets the
/// line number of each reading of a line-protocol body.
async fn take_lines(
    app: &AppState,
    sender: &Sender,
    registry: &Arc<Registry>,
    headers: &HeaderMap,
    body: Body,
    format: impl FnOnce(&HeaderMap) -> Result<BodyFormat, BodyError>,
    lines: &mut Vec<usize>,
) -> Result<Taken, Refused> {
    // Refused before the body is read: at a site relay, a device whose readings it would
    // not forward; anywhere, a sender over its request rate.
    if let (Some(site), Sender::Device(device)) = (app.relay_state(), sender) {
        site.admission
            .check(&device.id, registry)
            .map_err(HttpError::from)?;
    }
    let intake = app.intake();
    intake.admit_request(sender).map_err(HttpError::from)?;
    let format = format(headers).map_err(HttpError::from)?;
    let encoding = Encoding::from_header(header_str(headers, header::CONTENT_ENCODING))
        .map_err(HttpError::from)?;
    let (raw, upload) = read_body(app, sender, body).await?;
    let decoded = decode(raw, encoding, &app.config.body).map_err(HttpError::from)?;
    // A first look; the spooler checks again against the records it writes.
    if let Some(site) = app.relay_state()
        && !site.has_room_for(decoded.len() as u64)
    {
        return Err(HttpError::spool_full().into());
    }
    if let BodyFormat::LineProtocol(_) = format {
        lines.extend(point_lines(&decoded).map(|(number, _)| number));
    }
    let taken = intake
        .take(sender, registry, &decoded, format, Utc::now())
        .map_err(Refused::Intake)?;
    // The body is parsed: its bytes, and their room in the budgets, go before any wait.
    drop((decoded, upload));
    Ok(taken)
}

/// How the rows of a request were acknowledged.
enum Settled {
    /// `?ack=accept`: queued, not yet written.
    Queued,
    Committed,
    /// At a relay: on its disk.
    Spooled,
}

/// Queues what was taken and waits as the acknowledgement asks: not at all with
/// `?ack=accept`, else until the rows are committed (or, at a relay, spooled), within
/// the acknowledgement's time.
async fn settle(
    app: &AppState,
    sender: &Sender,
    room: Reservation,
    rows: Vec<TableRow>,
    accepted: usize,
    ack: Ack,
) -> Result<Settled, HttpError> {
    // A relay answers once the readings are on disk, whatever the acknowledgement asked.
    let relay = app.relay_state().is_some();
    let committed = room.submit(rows, relay || ack == Ack::Commit)?;
    app.metrics.accept(accepted as u64);
    if let Sender::Relay(relay) = sender {
        app.metrics.relay_accepted(&relay.id, accepted as u64);
    }
    let Some(committed) = committed else {
        return Ok(Settled::Queued);
    };
    // Answer before the server stops waiting for requests.
    let shutdown_bound = async {
        app.shutting_down.cancelled().await;
        tokio::time::sleep(app.config.shutdown.answer_waiting()).await;
    };
    tokio::select! {
        done = tokio::time::timeout(app.config.ack_timeout, committed) => match done {
            Ok(Ok(Err(Unwritten::NoRoom))) => Err(HttpError::spool_full()),
            Ok(Ok(Ok(()))) if relay => Ok(Settled::Spooled),
            Ok(Ok(Ok(()))) => Ok(Settled::Committed),
            Err(_) if !app.shutting_down.is_cancelled() => {
                Err(HttpError::not_yet_committed(relay))
            }
            // The writer let go of the rows: the gateway is stopping.
            _ => Err(HttpError::not_committed_at_shutdown()),
        },
        () = shutdown_bound => Err(HttpError::not_committed_at_shutdown()),
    }
}

/// The answer as JSON, with `Retry-After` when readings refused for now may go again.
fn respond((status, answer): (StatusCode, Answer), retry_after: Option<Duration>) -> Response {
    let mut response = (status, Json(answer)).into_response();
    if let Some(wait) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after_secs(wait));
    }
    response
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
