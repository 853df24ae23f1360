//! The one error type of the Databricks client.
//!
//! It is `Clone` so that a single token fetch can hand the same failure to every
//! caller waiting on it. No variant ever holds a token, a secret or a presigned URL.

use std::{fmt, sync::Arc, time::Duration};

use super::wire::StatementState;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The workspace answered with a non-2xx status.
    #[error(transparent)]
    Api(#[from] ErrorResponse),
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
    /// The workspace sent more than we read for this kind of answer.
    #[error("{what} is larger than {limit} bytes; not read further")]
    TooLarge { what: &'static str, limit: usize },
}

impl Error {
    pub(crate) fn transport(err: reqwest::Error) -> Self {
        Error::Transport(Arc::new(err))
    }

    /// The API error behind this error, looking through token-source failures.
    pub fn error_response(&self) -> Option<&ErrorResponse> {
        match self {
            Error::Api(api) => Some(api),
            Error::Auth(inner) => inner.error_response(),
            _ => None,
        }
    }

    /// HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        self.error_response().map(|api| api.status)
    }

    /// Databricks error code of a refused request or a failed statement.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Error::Statement(stmt) => stmt.error_code.as_deref(),
            _ => self.error_response().map(|api| api.error_code.as_str()),
        }
    }

    /// How long the workspace asked to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.error_response().and_then(|api| api.retry_after)
    }

    /// The most specific name Databricks gave the failure: a failed statement's error
    /// class (`TABLE_OR_VIEW_NOT_FOUND`), else the error code.
    pub fn error_class(&self) -> Option<&str> {
        match self {
            Error::Statement(stmt) => stmt.error_class(),
            _ => self.error_code(),
        }
    }

    /// Whether a statement failed on a Delta concurrent-write conflict
    /// (`DELTA_CONCURRENT_APPEND`, `ConcurrentAppendException`, ...): another writer
    /// committed first; an idempotent statement can run again at once.
    pub fn is_write_conflict(&self) -> bool {
        matches!(self, Error::Statement(stmt) if stmt.is_write_conflict())
    }

    /// Whether a statement failed because of its rows' data (SQLSTATE class 22 or 23, or
    /// a named data error class): the only failure for which rows may be set aside.
    pub fn is_data_error(&self) -> bool {
        matches!(self, Error::Statement(stmt) if stmt.kind() == FailureKind::Request)
    }

    /// What retrying can do about this failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Api(api) => match api.status {
                429 | 500 | 502 | 503 | 504 => FailureKind::Transient,
                // A redirect (not followed): a login page or a moved host, not an answer.
                401 | 403 | 404 | 300..=399 => FailureKind::Target,
                // A request the API refuses as such (too large, a bad value): this request.
                _ => FailureKind::Request,
            },
            Error::Transport(_) | Error::DeadlineExceeded { .. } | Error::Decode(_) => {
                FailureKind::Transient
            }
            // The token source already retried what it could; what is left (a refused
            // client secret, say) stops every request.
            Error::Auth(inner) => match inner.kind() {
                FailureKind::Transient => FailureKind::Transient,
                _ => FailureKind::Target,
            },
            Error::InvalidRequest(_) | Error::TooLarge { .. } => FailureKind::Request,
            Error::Statement(stmt) => stmt.kind(),
        }
    }
}

/// What retrying can do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The same request may succeed later: throttling, unavailability, timeouts, answers
    /// that never arrived, a statement cancelled, Delta concurrent-write conflicts.
    Transient,
    /// Nothing sent to this target succeeds until someone fixes it: the table, schema or
    /// warehouse is missing, permission is denied, the credentials are refused.
    Target,
    /// This request cannot succeed as it is: its data breaks a type or a constraint, it
    /// does not parse, it is too large. Another request may. For a failed statement only
    /// known data errors (SQLSTATE class 22 or 23, named parse, cast and constraint
    /// classes); see [`Error::is_data_error`].
    Request,
}

/// Error classes (or their prefixes) of failed statements that concern the target
/// rather than the statement's data.
const TARGET_CLASSES: [&str; 9] = [
    "TABLE_OR_VIEW_NOT_FOUND",
    "SCHEMA_NOT_FOUND",
    "NO_SUCH_CATALOG_EXCEPTION",
    "CATALOG_NOT_FOUND",
    "DELTA_TABLE_NOT_FOUND",
    "DELTA_MISSING_DELTA_TABLE",
    "PERMISSION_DENIED",
    "INSUFFICIENT_PERMISSIONS",
    "UNAUTHORIZED_ACCESS",
];

/// Error classes that Databricks documents as the data's fault (SQLSTATE class 22, data
/// exception, or 23, integrity constraint violation): a value that does not parse, cast
/// or fit, or a row that breaks a constraint. Named here for failures that arrive
/// without a SQLSTATE; with one, its class decides. Not here: compile-time errors such
/// as `DATATYPE_MISMATCH` (42K09), which do not depend on any row's values, so that
/// splitting the batch would only dead-letter every row.
const DATA_CLASSES: [&str; 14] = [
    "DELTA_VIOLATE_CONSTRAINT_WITH_VALUES", // 23001
    "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",   // 23502
    "CAST_INVALID_INPUT",                   // 22018
    "CAST_OVERFLOW",                        // 22003
    "CAST_OVERFLOW_IN_TABLE_INSERT",        // 22003
    "NUMERIC_VALUE_OUT_OF_RANGE",           // 22003
    "ARITHMETIC_OVERFLOW",                  // 22003
    "DIVIDE_BY_ZERO",                       // 22012
    "MALFORMED_RECORD_IN_PARSING",          // 22023
    "CANNOT_PARSE_JSON_FIELD",              // 2203G
    "CANNOT_PARSE_TIMESTAMP",               // 22007
    "INVALID_JSON_ROOT_FIELD",              // 22032
    "INVALID_JSON_SCHEMA_MAP_TYPE",         // 22032
    "DATETIME_OVERFLOW",                    // 22008
];

/// SQLSTATE classes of data errors: 22 data exception, 23 integrity constraint violation.
const DATA_SQLSTATE_CLASSES: [&str; 2] = ["22", "23"];

/// Service error codes of failed statements that a later attempt may not meet.
const TRANSIENT_CODES: [&str; 5] = [
    "TEMPORARILY_UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "REQUEST_LIMIT_EXCEEDED",
    "DEADLINE_EXCEEDED",
    "ABORTED",
];

/// Service error codes of failed statements that concern the target.
const TARGET_CODES: [&str; 4] = [
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "NOT_FOUND",
    "RESOURCE_DOES_NOT_EXIST",
];

/// A refused request: `{"error_code": ..., "message": ...}` plus the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status} {error_code}: {message}")]
pub struct ErrorResponse {
    pub status: u16,
    pub error_code: String,
    pub message: String,
    /// The server's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// Longest excerpt of a non-JSON error body kept in a message.
const MAX_BODY_EXCERPT: usize = 300;

impl ErrorResponse {
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
        ErrorResponse {
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
    pub state: StatementState,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub sql_state: Option<String>,
}

impl StatementError {
    /// The error class Databricks puts in brackets at the start of the message
    /// (`[DELTA_CONCURRENT_APPEND.WHOLE_TABLE_READ] ...`), else the service error code.
    pub fn error_class(&self) -> Option<&str> {
        let bracketed = self
            .message
            .as_deref()
            .and_then(|m| m.trim_start().strip_prefix('['))
            .and_then(|m| m.split_once(']'))
            .map(|(class, _)| class)
            .filter(|class| {
                !class.is_empty()
                    && class.bytes().all(|b| {
                        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                    })
            });
        bracketed.or(self.error_code.as_deref())
    }

    /// Delta's optimistic concurrency: another writer won.
    pub fn is_write_conflict(&self) -> bool {
        let class = self.error_class().unwrap_or_default();
        let message = self.message.as_deref().unwrap_or_default();
        self.state == StatementState::Failed
            && (class.starts_with("DELTA_CONCURRENT")
                || class.contains("CONCURRENT_WRITE")
                || message.contains("ConcurrentAppendException")
                || message.contains("ConcurrentDeleteReadException")
                || message.contains("ConcurrentTransactionException"))
    }

    /// The SQLSTATE of a failed statement: `status.sql_state`, else the `SQLSTATE: XXXXX`
    /// Databricks appends to the message.
    pub fn sql_state(&self) -> Option<&str> {
        let from_message = || {
            let message = self.message.as_deref()?;
            let (_, after) = message.rsplit_once("SQLSTATE")?;
            let state = after.trim_start_matches([':', ' ']).get(..5)?;
            state
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                .then_some(state)
        };
        self.sql_state
            .as_deref()
            .filter(|state| state.len() == 5)
            .or_else(from_message)
    }

    /// Whether the statement failed for its data: SQLSTATE class 22 or 23, or an error
    /// class Databricks documents as such. Nothing else is the rows' fault.
    fn failed_for_its_data(&self) -> bool {
        if self.state != StatementState::Failed {
            return false;
        }
        match self.sql_state() {
            Some(state) => DATA_SQLSTATE_CLASSES.contains(&&state[..2]),
            None => {
                let class = self.error_class().unwrap_or_default();
                DATA_CLASSES.contains(&class.split('.').next().unwrap_or_default())
            }
        }
    }

    /// Classified by what is known: the target's fault for missing objects and refused
    /// permissions, the rows' fault only for data errors; everything else (internal
    /// errors, SQLSTATE classes XX, 08, 40, 53, 57, classes we have never seen) may pass
    /// and is transient, so that acknowledged rows are never dead-lettered for it.
    fn kind(&self) -> FailureKind {
        if self.state != StatementState::Failed {
            // Cancelled by someone else, or its result expired: running it again can work.
            return FailureKind::Transient;
        }
        let class = self.error_class().unwrap_or_default();
        let code = self.error_code.as_deref().unwrap_or_default();
        // A write conflict: the MERGE is idempotent, so running it again is safe.
        if self.is_write_conflict()
            || TRANSIENT_CODES.contains(&code)
            || TRANSIENT_CODES.contains(&class)
        {
            return FailureKind::Transient;
        }
        let family = class.split('.').next().unwrap_or_default();
        if TARGET_CLASSES.contains(&family) || TARGET_CODES.contains(&code) {
            return FailureKind::Target;
        }
        if self.failed_for_its_data() {
            return FailureKind::Request;
        }
        FailureKind::Transient
    }
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

    fn failed(code: &str, message: &str) -> Error {
        Error::Statement(StatementError {
            statement_id: "s".into(),
            state: super::super::wire::StatementState::Failed,
            error_code: Some(code.into()),
            message: Some(message.into()),
            sql_state: None,
        })
    }

    #[test]
    fn failures_are_classified_by_what_retrying_can_do() {
        use FailureKind::*;
        let api = |status| Error::Api(ErrorResponse::from_body(status, b"", None));
        for (status, kind) in [
            (429, Transient),
            (503, Transient),
            (500, Transient),
            (504, Transient),
        ] {
            assert_eq!(api(status).kind(), kind, "{status}");
        }
        for status in [401, 403, 404] {
            assert_eq!(api(status).kind(), Target, "{status}");
        }
        assert_eq!(api(400).kind(), Request);
        assert_eq!(Error::Auth(Box::new(api(401))).kind(), Target);
        assert_eq!(Error::Auth(Box::new(api(503))).kind(), Transient);
        let cases = [
            (
                "BAD_REQUEST",
                "[DELTA_CONCURRENT_APPEND.WHOLE_TABLE_READ] Files were added",
                Transient,
            ),
            (
                "BAD_REQUEST",
                "io.delta.exceptions.ConcurrentAppendException: Files were added",
                Transient,
            ),
            ("TEMPORARILY_UNAVAILABLE", "warehouse restarting", Transient),
            (
                "BAD_REQUEST",
                "[TABLE_OR_VIEW_NOT_FOUND] The table `a`.`b` cannot be found.",
                Target,
            ),
            (
                "BAD_REQUEST",
                "[INSUFFICIENT_PERMISSIONS] User does not have MODIFY on Table",
                Target,
            ),
            ("PERMISSION_DENIED", "no MODIFY", Target),
            (
                "BAD_REQUEST",
                "[DELTA_VIOLATE_CONSTRAINT_WITH_VALUES] CHECK constraint",
                Request,
            ),
            (
                "BAD_REQUEST",
                "[DELTA_NOT_NULL_CONSTRAINT_VIOLATED] NOT NULL",
                Request,
            ),
            (
                "BAD_REQUEST",
                "[MALFORMED_RECORD_IN_PARSING.WITHOUT_SUGGESTION] Malformed",
                Request,
            ),
            ("BAD_REQUEST", "[CAST_INVALID_INPUT] The value", Request),
            (
                "BAD_REQUEST",
                "[NUMERIC_VALUE_OUT_OF_RANGE.WITH_SUGGESTION] 1e400",
                Request,
            ),
            (
                "BAD_REQUEST",
                "[ARITHMETIC_OVERFLOW] long overflow",
                Request,
            ),
            // What we do not know is not the rows' fault: it may pass.
            ("INTERNAL_ERROR", "something broke", Transient),
            (
                "BAD_REQUEST",
                "[INTERNAL_ERROR] The warehouse failed",
                Transient,
            ),
            (
                "BAD_REQUEST",
                "[SOME_CLASS_FROM_NEXT_YEAR] whatever",
                Transient,
            ),
            ("BAD_REQUEST", "no class at all", Transient),
            // A compile-time type error does not depend on any row: never split for it.
            (
                "BAD_REQUEST",
                "[DATATYPE_MISMATCH.CAST_WITHOUT_SUGGESTION] x",
                Transient,
            ),
        ];
        for (code, message, kind) in cases {
            assert_eq!(failed(code, message).kind(), kind, "{message}");
            assert_eq!(
                failed(code, message).is_data_error(),
                kind == Request,
                "{message}"
            );
        }
        assert_eq!(
            failed("BAD_REQUEST", "[TABLE_OR_VIEW_NOT_FOUND] x").error_class(),
            Some("TABLE_OR_VIEW_NOT_FOUND")
        );
        assert_eq!(
            failed("BAD_REQUEST", "[not a class] x").error_class(),
            Some("BAD_REQUEST")
        );
        let cancelled = Error::Statement(StatementError {
            statement_id: "s".into(),
            state: super::super::wire::StatementState::Canceled,
            error_code: None,
            message: None,
            sql_state: None,
        });
        assert_eq!(cancelled.kind(), Transient);
    }

    fn failed_with_state(message: &str, sql_state: Option<&str>) -> Error {
        Error::Statement(StatementError {
            statement_id: "s".into(),
            state: super::super::wire::StatementState::Failed,
            error_code: Some("BAD_REQUEST".into()),
            message: Some(message.into()),
            sql_state: sql_state.map(str::to_owned),
        })
    }

    #[test]
    fn the_sqlstate_class_decides_whose_fault_a_failed_statement_is() {
        use FailureKind::*;
        let cases = [
            // Data exceptions and integrity constraint violations: the rows'.
            ("[ANY_DATA_CLASS] x", Some("22003"), Request),
            ("[ANY_CONSTRAINT_CLASS] x", Some("23505"), Request),
            // Internal errors, connection exceptions, transaction rollbacks, insufficient
            // resources, operator intervention: transient, whatever the class says.
            ("[INTERNAL_ERROR] x", Some("XX000"), Transient),
            ("[CAST_INVALID_INPUT] x", Some("XX000"), Transient),
            ("[CONNECTION_LOST] x", Some("08006"), Transient),
            ("[SERIALIZATION] x", Some("40001"), Transient),
            ("[OUT_OF_MEMORY] x", Some("53200"), Transient),
            ("[QUERY_CANCELED] x", Some("57014"), Transient),
            ("[UNKNOWN] x", Some("HY000"), Transient),
            // From the message when the status carries none, as Databricks appends it.
            (
                "[INTERNAL_ERROR] The warehouse failed. SQLSTATE: XX000",
                None,
                Transient,
            ),
            ("[SOMETHING] bad value. SQLSTATE: 22018", None, Request),
            (
                "[SOMETHING] x. SQLSTATE: 22018; line 1 pos 7",
                None,
                Request,
            ),
            // A malformed state falls back to the class.
            ("[CAST_INVALID_INPUT] x", Some("22"), Request),
            ("[INTERNAL_ERROR] x", Some("bogus"), Transient),
            // Target classes keep their meaning whatever the state.
            ("[TABLE_OR_VIEW_NOT_FOUND] x", Some("42P01"), Target),
        ];
        for (message, state, kind) in cases {
            let err = failed_with_state(message, state);
            assert_eq!(err.kind(), kind, "{message} {state:?}");
        }
        let Error::Statement(stmt) = failed_with_state("[A] x SQLSTATE: XX000", None) else {
            unreachable!()
        };
        assert_eq!(stmt.sql_state(), Some("XX000"));
    }

    #[test]
    fn parses_databricks_error_body() {
        let body =
            br#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"no such secret","details":[]}"#;
        let err = ErrorResponse::from_body(404, body, None);
        assert_eq!(err.error_code, "RESOURCE_DOES_NOT_EXIST");
        assert_eq!(err.message, "no such secret");
    }

    #[test]
    fn parses_oauth_error_body() {
        let body =
            br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#;
        let err = ErrorResponse::from_body(401, body, None);
        assert_eq!(err.error_code, "invalid_client");
        assert_eq!(err.message, "Client authentication failed");
    }

    #[test]
    fn non_json_body_gets_canonical_code_and_excerpt() {
        let err = ErrorResponse::from_body(503, b"<html>upstream down</html>", None);
        assert_eq!(err.error_code, "TEMPORARILY_UNAVAILABLE");
        assert_eq!(err.message, "<html>upstream down</html>");

        let long = "x".repeat(1000);
        let err = ErrorResponse::from_body(502, long.as_bytes(), None);
        assert_eq!(err.message.chars().count(), MAX_BODY_EXCERPT + 1);

        let err = ErrorResponse::from_body(500, b"", None);
        assert_eq!(err.message, "HTTP 500 with an empty body");
    }
}
