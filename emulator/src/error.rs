//! REST errors in Databricks' shape: `{"error_code": "...", "message": "..."}` with the HTTP
//! status Databricks uses for that code, and `Retry-After` on 429/503.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug)]
pub(crate) struct ErrorReply {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ErrorReply {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MALFORMED_REQUEST", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)
    }

    pub(crate) fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A required field that is absent, worded as Databricks words it.
    pub(crate) fn missing(field: &str) -> Self {
        Self::invalid_parameter(format!("Missing required field: {field}"))
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON body whose rejection is a Databricks `MALFORMED_REQUEST` rather than axum's plain text.
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ErrorReply;

    async fn from_request(req: Request, state: &S) -> Result<Self, ErrorReply> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|err| ErrorReply::malformed(err.body_text()))?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|err| {
            ErrorReply::malformed(format!(
                "Invalid JSON given in the body of the request - {err}"
            ))
        })
    }
}
