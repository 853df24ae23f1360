//! The one error type of the HTTP surface: every refusal is JSON naming the
//! problem with a code from [`ErrorCode`] (which fixes the status), with
//! `Retry-After` where waiting helps.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error_code::ErrorCode;
use crate::ingest::{BodyError, QueueError, RejectedReading};
use crate::query::{ParamError, ReadsBusy};
use crate::rate_limits::{RateLimitKind, RateLimited};
use crate::relay::NotForwarded;
use crate::uploads::UploadRefused;

#[derive(Debug)]
pub struct HttpError {
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

    /// Every reading of a relay's request that could be taken was for a device over its
    /// rate: push-back for the whole request, with the list of what was refused and why.
    pub(crate) fn relayed_devices_rate_limited(
        rejected: Vec<RejectedReading>,
        retry_after: Duration,
    ) -> Self {
        HttpError {
            rejected,
            ..HttpError::new(
                ErrorCode::DeviceRateLimited,
                "every reading that could be taken is for a device over its rate limit; \
                 see `rejected`, and send those readings again later",
            )
            .retry_after(retry_after)
        }
    }

    /// Every reading of the request was refused; the list says why.
    pub(crate) fn all_rejected(rejected: Vec<RejectedReading>) -> Self {
        HttpError {
            rejected,
            ..HttpError::new(
                ErrorCode::NoValidReadings,
                "no reading in the request is valid; see `rejected`",
            )
        }
    }
}

impl From<BodyError> for HttpError {
    fn from(err: BodyError) -> Self {
        HttpError::new(err.code(), err.to_string())
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
