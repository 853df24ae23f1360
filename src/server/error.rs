//! The one error type of the HTTP surface: every refusal is JSON naming the
//! problem, with `Retry-After` where waiting helps.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ingest::{BodyError, QueueError, RejectedReading};
use crate::query::ParamError;
use crate::rate_limits::{RateLimitKind, RateLimited};

#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    rejected: Vec<RejectedReading>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            rejected: Vec::new(),
        }
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// One answer for a missing and an unknown key, so that neither can be told apart.
    pub fn unauthorized() -> Self {
        HttpError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid device key is required in the X-API-Key header",
        )
    }

    pub fn device_disabled(device_id: &str) -> Self {
        HttpError::new(
            StatusCode::FORBIDDEN,
            "device_disabled",
            format!("device {device_id:?} is disabled"),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
    }

    /// Every reading of the request was refused; the list says why.
    pub fn all_rejected(rejected: Vec<RejectedReading>) -> Self {
        HttpError {
            rejected,
            ..HttpError::new(
                StatusCode::BAD_REQUEST,
                "no_valid_readings",
                "no reading in the request is valid; see `rejected`",
            )
        }
    }
}

impl From<BodyError> for HttpError {
    fn from(err: BodyError) -> Self {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
        HttpError::new(status, err.code(), err.to_string())
    }
}

impl From<ParamError> for HttpError {
    fn from(err: ParamError) -> Self {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            err.to_string(),
        )
    }
}

impl From<RateLimited> for HttpError {
    fn from(err: RateLimited) -> Self {
        let (code, message) = match err.limit {
            RateLimitKind::Device => (
                "device_rate_limited",
                "this device sends faster than its rate limit",
            ),
            RateLimitKind::Global => (
                "gateway_rate_limited",
                "the gateway is at its global rate limit",
            ),
            RateLimitKind::AuthFailures => (
                "too_many_failed_authentications",
                "too many failed authentications from this address",
            ),
            RateLimitKind::BatchLargerThanBurst => {
                return HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "more_readings_than_burst",
                    "the request carries more readings than the device's burst allows at once; send smaller requests",
                );
            }
        };
        HttpError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(err.retry_after)
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
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .retry_after(Duration::from_secs(2))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if !self.rejected.is_empty() {
            body["rejected"] = json!(self.rejected);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long gets through.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
