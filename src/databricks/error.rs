//! The one error type of the Databricks client.
//!
//! It is `Clone` so that a single token fetch can hand the same failure to every
//! caller waiting on it. No variant ever holds a token, a secret or a presigned URL.

use std::{fmt, sync::Arc, time::Duration};

use super::retry::Failure;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The workspace answered with a non-2xx status.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No HTTP answer at all: connection refused or reset, timeout, TLS failure.
    #[error("HTTP transport: {0}")]
    Transport(Arc<reqwest::Error>),
    /// Getting an OAuth token failed (already retried by the token source).
    #[error("OAuth token: {0}")]
    Auth(Box<Error>),
    /// The statement ended FAILED, CANCELED or CLOSED.
    #[error(transparent)]
    Statement(#[from] StatementError),
    /// The caller's overall deadline passed; a cancel was sent for the statement.
    #[error("statement {} did not finish within {deadline:?}", statement_id.as_deref().unwrap_or("(not yet submitted)"))]
    DeadlineExceeded {
        statement_id: Option<String>,
        deadline: Duration,
    },
    /// Refused before sending: the request cannot be valid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A 2xx answer we could not understand.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl Error {
    pub(crate) fn transport(err: reqwest::Error) -> Self {
        Error::Transport(Arc::new(err))
    }

    /// The API error behind this error, looking through token-source failures.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Api(api) => Some(api),
            Error::Auth(inner) => inner.api_error(),
            _ => None,
        }
    }

    /// HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        self.api_error().map(|api| api.status)
    }

    /// Databricks error code of a refused request or a failed statement.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Error::Statement(stmt) => stmt.error_code.as_deref(),
            _ => self.api_error().map(|api| api.error_code.as_str()),
        }
    }

    /// How the retry policy sees this error; `None` means never retry.
    pub(crate) fn failure(&self) -> Option<Failure> {
        match self {
            Error::Api(api) => Some(Failure::Status(api.status)),
            Error::Transport(err) if err.is_builder() => None,
            // Not even connected: the request was certainly not processed.
            Error::Transport(err) if err.is_connect() => Some(Failure::Connect),
            Error::Transport(_) => Some(Failure::Ambiguous),
            _ => None,
        }
    }

    /// How long the workspace asked to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.api_error().and_then(|api| api.retry_after)
    }
}

/// A refused request: `{"error_code": ..., "message": ...}` plus the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status} {error_code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub error_code: String,
    pub message: String,
    /// The server's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// Longest excerpt of a non-JSON error body kept in a message.
const MAX_BODY_EXCERPT: usize = 300;

impl ApiError {
    /// Parses a Databricks error body; also the OAuth form (`error`,
    /// `error_description`) and bodies that are not JSON at all (proxies, HTML).
    pub(crate) fn from_body(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let json = serde_json::from_slice::<serde_json::Value>(body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let error_code = field("error_code")
            .or_else(|| field("error"))
            .unwrap_or_else(|| canonical_code(status).to_owned());
        let message = field("message")
            .or_else(|| field("error_description"))
            .unwrap_or_else(|| body_excerpt(body, status));
        ApiError {
            status,
            error_code,
            message,
            retry_after,
        }
    }
}

/// The code Databricks uses for a status, for answers without a JSON body.
fn canonical_code(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "RESOURCE_CONFLICT",
        429 => "TOO_MANY_REQUESTS",
        499 => "CANCELLED",
        500 => "INTERNAL_ERROR",
        501 => "NOT_IMPLEMENTED",
        503 => "TEMPORARILY_UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn body_excerpt(body: &[u8], status: u16) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("HTTP {status} with an empty body");
    }
    match text.char_indices().nth(MAX_BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Where a statement ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("statement {statement_id} {state}: {}{}", message.as_deref().unwrap_or("no message"), SqlState(sql_state.as_deref()))]
pub struct StatementError {
    pub statement_id: String,
    pub state: super::statements::StatementState,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub sql_state: Option<String>,
}

struct SqlState<'a>(Option<&'a str>);

impl fmt::Display for SqlState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(state) => write!(f, " (SQLSTATE {state})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_databricks_error_body() {
        let body =
            br#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no such secret","details":[]}"#;
        let err = ApiError::from_body(404, body, None);
        assert_eq!(err.error_code, "RESOURCE_DOES_NOT_EXIST");
        assert_eq!(err.message, "no such secret");
    }

    #[test]
    fn parses_oauth_error_body() {
        let body =
            br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#;
        let err = ApiError::from_body(401, body, None);
        assert_eq!(err.error_code, "invalid_client");
        assert_eq!(err.message, "Client authentication failed");
    }

    #[test]
    fn non_json_body_gets_canonical_code_and_excerpt() {
        let err = ApiError::from_body(503, b"<html>upstream down</html>", None);
        assert_eq!(err.error_code, "TEMPORARILY_UNAVAILABLE");
        assert_eq!(err.message, "<html>upstream down</html>");

        let long = "x".repeat(1000);
        let err = ApiError::from_body(502, long.as_bytes(), None);
        assert_eq!(err.message.chars().count(), MAX_BODY_EXCERPT + 1);

        let err = ApiError::from_body(500, b"", None);
        assert_eq!(err.message, "HTTP 500 with an empty body");
    }
}
