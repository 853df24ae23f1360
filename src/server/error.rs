//! The one error type of the HTTP surface: every refusal is JSON naming the
//! problem with a code from [`ErrorCode`] (which fixes the status), with
//! `Retry-After` where waiting helps.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error_code::ErrorCode;
use crate::ingest::{BodyError, IntakeRefusal, QueueError, RejectedReading};
use crate::query::{ParamError, ReadsBusy};
use crate::rate_limits::{RateLimitKind, RateLimited};
use crate::relay::NotForwarded;
use crate::uploads::UploadRefused;

#[derive(Debug)]
pub(super) struct HttpError {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
    rejected: Vec<RejectedReading>,
}

impl HttpError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError {
            code,
            message: message.into(),
            retry_after: None,
            rejected: Vec::new(),
        }
    }

    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// One answer for a missing and an unknown key, so that neither can be told apart.
    pub(crate) fn unauthorized() -> Self {
        HttpError::new(
            ErrorCode::Unauthorized,
            "a valid device or relay key is required in the X-API-Key header",
        )
    }

    pub(crate) fn device_disabled(device_id: &str) -> Self {
        HttpError::new(
            ErrorCode::DeviceDisabled,
            format!("device {device_id:?} is disabled"),
        )
    }

    pub(crate) fn relay_disabled(relay_id: &str) -> Self {
        HttpError::new(
            ErrorCode::RelayDisabled,
            format!("relay {relay_id:?} is disabled"),
        )
    }

    fn with_rejected(self, rejected: Vec<RejectedReading>) -> Self {
        HttpError { rejected, ..self }
    }

    /// The relay's spool has no room for the request's readings.
    pub(crate) fn spool_full() -> Self {
        HttpError::new(
            ErrorCode::SpoolFull,
            "the relay's spool is full while the upstream catches up; nothing from this \
             request was accepted; retry later",
        )
        .retry_after(SPOOL_FULL_RETRY)
    }

    /// The acknowledgement's wait ran out; `relay` says where the readings wait.
    pub(crate) fn not_yet_committed(relay: bool) -> Self {
        HttpError::new(
            ErrorCode::NotYetCommitted,
            match relay {
                false => {
                    "the readings are queued but not committed yet; the gateway keeps \
                          writing them while it runs, and resending them is safe because \
                          repeated readings are written once"
                }
                true => {
                    "the readings are queued but not on the relay's disk yet; the relay \
                         keeps trying while it runs, and resending them is safe because \
                         repeated readings are written once"
                }
            },
        )
        .retry_after(Duration::from_secs(5))
    }

    /// No promise that the rows will still be written: the grace period may end first.
    pub(crate) fn not_committed_at_shutdown() -> Self {
        HttpError::new(
            ErrorCode::NotYetCommitted,
            "the gateway is shutting down and the readings are not committed; they may not be \
             written before it stops, so resend them (repeated readings are written once)",
        )
        .retry_after(Duration::from_secs(5))
    }
}

/// When a device may try again after finding the relay's spool full.
const SPOOL_FULL_RETRY: Duration = Duration::from_secs(30);

impl From<IntakeRefusal> for HttpError {
    fn from(refusal: IntakeRefusal) -> Self {
        match refusal {
            IntakeRefusal::Body(err) => err.into(),
            IntakeRefusal::NoValidReadings(rejected) => HttpError::new(
                ErrorCode::NoValidReadings,
                "no reading in the request is valid; see `rejected`",
            )
            .with_rejected(rejected),
            IntakeRefusal::TableUnwritable => HttpError::new(
                ErrorCode::WritesFailing,
                "the gateway cannot write to its table at the moment; nothing from this \
                 request was accepted; retry later",
            )
            .retry_after(Duration::from_secs(30)),
            IntakeRefusal::Queue(err) => err.into(),
            IntakeRefusal::RateLimited(err) => err.into(),
            IntakeRefusal::RelayedDevicesRateLimited {
                rejected,
                retry_after,
            } => HttpError::new(
                ErrorCode::DeviceRateLimited,
                "every reading that could be taken is for a device over its rate limit; \
                 see `rejected`, and send those readings again later",
            )
            .retry_after(retry_after)
            .with_rejected(rejected),
        }
    }
}

impl From<BodyError> for HttpError {
    fn from(err: BodyError) -> Self {
        HttpError::new(body_error_code(&err), err.to_string())
    }
}

/// A body refusal's code (and with it the status).
pub(crate) fn body_error_code(err: &BodyError) -> ErrorCode {
    match err {
        BodyError::UnsupportedEncoding(_) => ErrorCode::UnsupportedEncoding,
        BodyError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
        BodyError::TooLarge { .. } => ErrorCode::BodyTooLarge,
        BodyError::BadEncoding(_) => ErrorCode::BadEncoding,
        BodyError::InvalidJson { .. } => ErrorCode::InvalidJson,
        BodyError::Empty => ErrorCode::EmptyBody,
        BodyError::TooManyReadings { .. } => ErrorCode::TooManyReadings,
    }
}

impl From<NotForwarded> for HttpError {
    fn from(why: NotForwarded) -> Self {
        match why {
            NotForwarded::NotThisRelays { relay } => HttpError::new(
                ErrorCode::DeviceNotAllowed,
                format!(
                    "this site relay ({relay:?}) does not forward readings of this device: its \
                     entry in the registry does not name it"
                ),
            ),
            NotForwarded::RefusedUpstream { reason, message } => HttpError::new(
                ErrorCode::RefusedUpstream,
                format!(
                    "the relay's upstream refuses this device's readings ({reason}: {message}); \
                     the relay takes none until its registry is reloaded"
                ),
            ),
        }
    }
}

impl From<ParamError> for HttpError {
    fn from(err: ParamError) -> Self {
        HttpError::new(ErrorCode::InvalidParameter, err.to_string())
    }
}

impl From<ReadsBusy> for HttpError {
    fn from(err: ReadsBusy) -> Self {
        HttpError::new(ErrorCode::ReadsBusy, err.to_string()).retry_after(Duration::from_secs(5))
    }
}

impl From<RateLimited> for HttpError {
    fn from(err: RateLimited) -> Self {
        let (code, message) = match err.limit {
            RateLimitKind::Device => (
                ErrorCode::DeviceRateLimited,
                "this device sends faster than its rate limit",
            ),
            RateLimitKind::Relay => (
                ErrorCode::RelayRateLimited,
                "this relay sends more requests than its rate limit; send fewer, larger batches",
            ),
            RateLimitKind::Global => (
                ErrorCode::GatewayRateLimited,
                "the gateway is at its global rate limit",
            ),
            RateLimitKind::AuthFailures => (
                ErrorCode::TooManyFailedAuthentications,
                "too many failed authentications from this address",
            ),
            RateLimitKind::Reader => (
                ErrorCode::ReaderRateLimited,
                "this reader sends more requests than its rate limit",
            ),
            RateLimitKind::BatchLargerThanBurst => {
                return HttpError::new(
                    ErrorCode::MoreReadingsThanBurst,
                    "the request carries more readings than the device's burst allows at once \
                     (its `burst` in the device registry, else LAKEGATE_DEVICE_BURST); send \
                     smaller requests",
                );
            }
        };
        HttpError::new(code, message).retry_after(err.retry_after)
    }
}

impl From<UploadRefused> for HttpError {
    fn from(refused: UploadRefused) -> Self {
        let (code, message) = match refused {
            UploadRefused::Sender => (
                ErrorCode::TooManyUploads,
                "this sender has too many request bodies in flight at once; the body was not \
                 read; send it again once an earlier request has been answered",
            ),
            UploadRefused::Gateway => (
                ErrorCode::UploadsFull,
                "the gateway is reading as many request bodies as it holds at once; the body \
                 was not read; retry later",
            ),
        };
        HttpError::new(code, message).retry_after(Duration::from_secs(2))
    }
}

impl From<QueueError> for HttpError {
    fn from(err: QueueError) -> Self {
        let message = match err {
            QueueError::Full => "the write queue is full; nothing from this request was accepted",
            QueueError::Closed => {
                "the gateway is shutting down; nothing from this request was accepted"
            }
        };
        HttpError::new(ErrorCode::Unavailable, message).retry_after(Duration::from_secs(2))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code.as_str(), "message": self.message});
        if !self.rejected.is_empty() {
            body["rejected"] = json!(self.rejected);
        }
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(wait));
        }
        response
    }
}

/// A `Retry-After` value: whole seconds, rounded up, so that a client that waits that
/// long gets through.
pub(crate) fn retry_after_secs(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}
