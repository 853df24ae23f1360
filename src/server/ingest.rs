//! `POST /ingest` (also `/api/ingest`, the path the Apps proxy documents for token
//! access), from a device or a site relay (`relayed.rs`).

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;

use super::auth::AuthenticatedSender;
use super::error::{HttpError, retry_after_secs};
use super::relayed::from_relay;
use super::state::{App, AppState};
use crate::devices::{Device, Sender};
use crate::error_code::ErrorCode;
use crate::ingest::{
    BodyError, BodyFormat, Encoding, RejectedReading, Reservation, Unwritten, decode, excerpt,
    notes_on, parse_request,
};
use crate::table::TableRow;
use crate::uploads::{UploadReservation, Uploader};

/// `?ack=commit` (default): answer 200 once the readings are committed to the
/// table. `?ack=accept`: answer 202 as soon as they are queued. A site relay answers
/// 202 once they are spooled on disk, either way.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub enum Ack {
    #[default]
    Commit,
    Accept,
}

/// What `/ingest` takes, for a client whose query string it cannot use.
const ACK_CHOICES: &str = "/ingest takes only ack=commit (the default: answer once the \
                           readings are committed) or ack=accept (answer once they are queued)";

/// The acknowledgement a query string asks for, read by hand so that a mistake is
/// answered in lakegate's words rather than the deserializer's.
fn ack_of(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Ack, HttpError> {
    let invalid = |problem: String| {
        HttpError::new(ErrorCode::InvalidQuery, format!("{problem}; {ACK_CHOICES}"))
    };
    let Query(pairs) =
        query.map_err(|_| invalid("the query string cannot be decoded".to_owned()))?;
    let mut ack = None;
    for (name, value) in pairs {
        if name != "ack" {
            return Err(invalid(format!(
                "unknown query parameter {}",
                excerpt(&name)
            )));
        }
        if ack.is_some() {
            return Err(invalid("ack is given more than once".to_owned()));
        }
        ack = Some(match value.as_str() {
            "commit" => Ack::Commit,
            "accept" => Ack::Accept,
            _ => return Err(invalid(format!("ack={} is not a choice", excerpt(&value)))),
        });
    }
    Ok(ack.unwrap_or_default())
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

/// The body, read after its bytes are reserved from the sender's and the gateway's
/// budgets of bodies in flight: its declared length (over the cap: refused unread), or
/// the cap when it declares none. A body that would pass either budget is refused
/// unread. The reservation is to be held while the body's bytes are in memory; decoding
/// and parsing run without awaiting, so a gzip body's decoded bytes (at most the cap)
/// never wait in memory beyond it.
async fn read_body<'a>(
    app: &'a App,
    sender: &Sender,
    body: Body,
) -> Result<(Bytes, UploadReservation<'a>), HttpError> {
    let cap = app.config.body.max_body_bytes;
    let too_large = || HttpError::from(BodyError::TooLarge { limit: cap });
    let declared = body.size_hint();
    if declared.lower() > cap as u64 {
        return Err(too_large());
    }
    let bytes = declared
        .upper()
        .map_or(cap, |upper| upper.min(cap as u64) as usize);
    let upload = app
        .uploads
        .reserve(Uploader::from(sender), bytes)
        .map_err(|refused| {
            app.metrics.upload_refused(refused.as_str());
            HttpError::from(refused)
        })?;
    // Never more than reserved: a body that declared its length cannot outgrow it.
    let raw =
        axum::body::to_bytes(body, bytes)
            .await
            .map_err(|err| match is_length_limit(&err) {
                true => too_large(),
                false => HttpError::new(
                    ErrorCode::BodyUnreadable,
                    "the request body could not be read to its end",
                ),
            })?;
    Ok((raw, upload))
}

pub async fn ingest(
    State(app): State<AppState>,
    AuthenticatedSender { sender, registry }: AuthenticatedSender,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let ack = ack_of(query)?;
    // A device over its rate, or a relay over its own, is refused before its body is read;
    // so is, at a site relay, a device whose readings it would not forward.
    match &sender {
        Sender::Device(device) => {
            if let Some(site) = app.site() {
                site.admission.check(&device.id, &registry)?;
            }
            app.rate_limits.admit_request(device)?;
        }
        Sender::Relay(relay) => app.rate_limits.admit_relay_request(&relay.id)?,
    }
    let caps = &app.config.body;
    let format = BodyFormat::from_content_type(header_str(&headers, header::CONTENT_TYPE))?;
    let encoding = Encoding::from_header(header_str(&headers, header::CONTENT_ENCODING))?;
    let (raw, upload) = read_body(&app, &sender, body).await?;
    let decoded = decode(raw, encoding, caps)?;
    // A first look; the spooler checks again against the records it writes.
    if let Some(site) = app.site()
        && !site.has_room_for(decoded.len() as u64)
    {
        return Err(spool_full());
    }
    let Taken {
        room,
        rows,
        accepted,
        rejected,
        retry_after,
    } = match &sender {
        Sender::Device(device) => from_device(&app, device, &decoded, format)?,
        Sender::Relay(relay) => from_relay(&app, relay, &registry, &decoded, format)?,
    };
    // The body is parsed: its bytes, and their room in the budgets, go before any wait.
    drop((decoded, upload));
    let notes = notes_on(&rows);
    // A relay answers once the readings are on disk, whatever the acknowledgement asked.
    let relay = app.site().is_some();
    let committed = room.submit(rows, relay || ack == Ack::Commit)?;
    app.metrics.accept(accepted as u64);
    if let Sender::Relay(relay) = &sender {
        app.metrics.relay_accepted(&relay.id, accepted as u64);
    }

    let pace = |mut response: Response| {
        if let Some(wait) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(wait));
        }
        response
    };
    let Some(committed) = committed else {
        let answer = Answer::new(accepted, &rejected, &notes);
        return Ok(pace((StatusCode::ACCEPTED, Json(answer)).into_response()));
    };
    // Answer before the server stops waiting for requests.
    let shutdown_bound = async {
        app.shutting_down.cancelled().await;
        tokio::time::sleep(app.config.shutdown.answer_waiting()).await;
    };
    tokio::select! {
        done = tokio::time::timeout(app.config.ack_timeout, committed) => match done {
            Ok(Ok(Err(Unwritten::NoRoom))) => Err(spool_full()),
            Ok(Ok(Ok(()))) if relay => {
                let answer = Answer {
                    spooled: Some(true),
                    ..Answer::new(accepted, &rejected, &notes)
                };
                Ok(pace((StatusCode::ACCEPTED, Json(answer)).into_response()))
            }
            Ok(Ok(Ok(()))) => {
                let answer = Answer {
                    committed: true,
                    ..Answer::new(accepted, &rejected, &notes)
                };
                Ok(pace((StatusCode::OK, Json(answer)).into_response()))
            }
            Err(_) if !app.shutting_down.is_cancelled() => Err(HttpError::new(
                ErrorCode::NotYetCommitted,
                match relay {
                    false => "the readings are queued but not committed yet; the gateway keeps \
                              writing them while it runs, and resending them is safe because \
                              repeated readings are written once",
                    true => "the readings are queued but not on the relay's disk yet; the relay \
                             keeps trying while it runs, and resending them is safe because \
                             repeated readings are written once",
                },
            )
            .retry_after(Duration::from_secs(5))),
            // The writer let go of the rows: the gateway is stopping.
            _ => Err(not_committed_at_shutdown()),
        },
        () = shutdown_bound => Err(not_committed_at_shutdown()),
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

/// What a request may queue: its rows, the room they take, and the report of the
/// readings taken and refused.
pub(super) struct Taken {
    pub(super) room: Reservation,
    pub(super) rows: Vec<TableRow>,
    pub(super) accepted: usize,
    pub(super) rejected: Vec<RejectedReading>,
    /// When readings refused for now (a relay's devices over their rates) may go again:
    /// sent as `Retry-After` with the answer, so that a relay paces them.
    pub(super) retry_after: Option<Duration>,
}

/// A device's own readings: all of them within its rate and the global rate, or none.
fn from_device(
    app: &AppState,
    device: &Device,
    decoded: &[u8],
    format: BodyFormat,
) -> Result<Taken, HttpError> {
    let parsed = parse_request(decoded, format, &device.id, &app.config.body, Utc::now())?;
    for rejected in &parsed.rejected {
        app.metrics.reject(&device.id, rejected.reason.as_str());
    }
    if parsed.readings.is_empty() {
        return Err(HttpError::all_rejected(parsed.rejected));
    }
    writable(app)?;
    let accepted = parsed.readings.len();
    let rows: Vec<TableRow> = parsed
        .readings
        .into_iter()
        .flat_map(|(_, reading)| reading.into_rows())
        .collect();
    // Room first: a request the queue refuses must not spend more of the rate budgets.
    let room = app.queue.reserve(&rows)?;
    app.rate_limits
        .admit(device, accepted as u32, rows.len() as u32)?;
    Ok(Taken {
        room,
        rows,
        accepted,
        rejected: parsed.rejected,
        retry_after: None,
    })
}

/// The table refuses writes for good (dropped, permission revoked): what is queued is
/// kept and retried, but taking more would only fill the queue.
pub(super) fn writable(app: &AppState) -> Result<(), HttpError> {
    if app.metrics.writes.is_unwritable() {
        return Err(HttpError::new(
            ErrorCode::WritesFailing,
            "the gateway cannot write to its table at the moment; nothing from this request \
             was accepted; retry later",
        )
        .retry_after(Duration::from_secs(30)));
    }
    Ok(())
}

/// When a device may try again after finding the relay's spool full.
const SPOOL_FULL_RETRY: Duration = Duration::from_secs(30);

fn spool_full() -> HttpError {
    HttpError::new(
        ErrorCode::SpoolFull,
        "the relay's spool is full while the upstream catches up; nothing from this request \
         was accepted; retry later",
    )
    .retry_after(SPOOL_FULL_RETRY)
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
