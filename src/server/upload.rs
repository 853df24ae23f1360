//! The parts of an ingest request read before admission: the acknowledgement it asks
//! for, its body's format and encoding headers, and the body itself, read within the
//! upload budgets (`uploads.rs`).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, header};

use super::error::HttpError;
use super::state::App;
use crate::devices::Sender;
use crate::error_code::ErrorCode;
use crate::ingest::{BodyError, excerpt};
use crate::uploads::{UploadReservation, Uploader};

/// `?ack=commit` (default): answer 200 once the readings are committed to the
/// table. `?ack=accept`: answer 202 as soon as they are queued. A site relay answers
/// 202 once they are spooled on disk, either way.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub(super) enum Ack {
    #[default]
    Commit,
    Accept,
}

/// What `/ingest` takes, for a client whose query string it cannot use.
const ACK_CHOICES: &str = "/ingest takes only ack=commit (the default: answer once the \
                           readings are committed) or ack=accept (answer once they are queued)";

/// The acknowledgement a query string asks for, read by hand so that a mistake is
/// answered in lakegate's words rather than the deserializer's.
pub(super) fn ack_of(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Ack, HttpError> {
    let invalid = |problem: String| {
        HttpError::new(
            ErrorCode::InvalidParameter,
            format!("{problem}; {ACK_CHOICES}"),
        )
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
pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
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
pub(super) async fn read_body<'a>(
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
