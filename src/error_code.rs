//! The stable error codes of every refusal, each with its one HTTP status: the
//! wire contract that devices and dashboards program against (the tables in
//! `docs/api.md`). Every error body is `{"error": <code>, "message": ...}`; a code never
//! changes its meaning or status once released.

use axum::http::StatusCode;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = ($code:literal, $status:ident),)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the list.
            #[cfg(test)]
            pub(crate) const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as sent in `"error"`.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            pub(crate) fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    // The request as a whole.
    /// A query parameter the route does not take, or a bad value (`?ack=`, `?from=`).
    /// One code on every route; `/ingest` answered `invalid_query` before.
    InvalidParameter = ("invalid_parameter", BAD_REQUEST),
    /// The connection broke while the body was being read.
    BodyUnreadable = ("body_unreadable", BAD_REQUEST),
    UnsupportedEncoding = ("unsupported_encoding", UNSUPPORTED_MEDIA_TYPE),
    UnsupportedMediaType = ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE),
    /// Over the body cap, counted after decompression.
    BodyTooLarge = ("body_too_large", PAYLOAD_TOO_LARGE),
    /// Not valid gzip.
    BadEncoding = ("bad_encoding", BAD_REQUEST),
    InvalidJson = ("invalid_json", BAD_REQUEST),
    EmptyBody = ("empty_body", BAD_REQUEST),
    TooManyReadings = ("too_many_readings", PAYLOAD_TOO_LARGE),
    /// Every reading was refused; `rejected` says why, one by one.
    NoValidReadings = ("no_valid_readings", BAD_REQUEST),
    /// The request took longer than the route allows (a body trickling in).
    RequestTimeout = ("request_timeout", REQUEST_TIMEOUT),
    NotFound = ("not_found", NOT_FOUND),
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED),

    // Who is asking.
    /// A missing or unknown device key or reader token: one answer for both.
    Unauthorized = ("unauthorized", UNAUTHORIZED),
    DeviceDisabled = ("device_disabled", FORBIDDEN),
    /// A site relay's key, and the relay is disabled.
    RelayDisabled = ("relay_disabled", FORBIDDEN),
    /// A site relay does not forward this device: its entry does not name it.
    DeviceNotAllowed = ("device_not_allowed", FORBIDDEN),
    /// A site relay's upstream refused this device's readings for good.
    RefusedUpstream = ("refused_upstream", FORBIDDEN),
    /// The read API has no way to authenticate anyone.
    ReadApiDisabled = ("read_api_disabled", NOT_FOUND),
    /// Behind the Apps proxy, reads run as the user, and the proxy sent no user token.
    NoUserToken = ("no_user_token", FORBIDDEN),
    /// Reads run as the app, and the signed-in user is not in the readers list.
    NotAReader = ("not_a_reader", FORBIDDEN),

    // Push-back: wait and retry (`Retry-After`).
    /// The device is over its rate; from a relay: every reading it could take was for a
    /// device over its rate (`rejected` lists them).
    DeviceRateLimited = ("device_rate_limited", TOO_MANY_REQUESTS),
    /// A site relay sends more requests than its own budget.
    RelayRateLimited = ("relay_rate_limited", TOO_MANY_REQUESTS),
    GatewayRateLimited = ("gateway_rate_limited", TOO_MANY_REQUESTS),
    /// One reader (a token, a signed-in user) asks the read API too often.
    ReaderRateLimited = ("reader_rate_limited", TOO_MANY_REQUESTS),
    TooManyFailedAuthentications = ("too_many_failed_authentications", TOO_MANY_REQUESTS),
    /// More readings in one request than the device's burst could ever admit.
    MoreReadingsThanBurst = ("more_readings_than_burst", PAYLOAD_TOO_LARGE),
    /// The sender (a device, a site relay) has as many request bodies being read at once
    /// as it may; this one was refused unread.
    TooManyUploads = ("too_many_uploads", TOO_MANY_REQUESTS),
    /// The gateway holds as many request bodies being read as it may; this one was
    /// refused unread.
    UploadsFull = ("uploads_full", SERVICE_UNAVAILABLE),
    /// The write queue is full or closed; nothing from the request was accepted.
    Unavailable = ("unavailable", SERVICE_UNAVAILABLE),
    /// The table refuses writes; nothing from the request was accepted.
    WritesFailing = ("writes_failing", SERVICE_UNAVAILABLE),
    /// A site relay's spool is full while its upstream catches up; nothing was accepted.
    SpoolFull = ("spool_full", SERVICE_UNAVAILABLE),
    /// Accepted and queued, but not committed in time (or the gateway is stopping); at a
    /// relay, not on disk in time.
    NotYetCommitted = ("not_yet_committed", SERVICE_UNAVAILABLE),
    /// More connections open than the cap; answered as the connection opens.
    Overloaded = ("overloaded", SERVICE_UNAVAILABLE),

    // Reads.
    /// The warehouse failed the query; the details are logged, not sent.
    QueryFailed = ("query_failed", BAD_GATEWAY),
    /// Every read statement slot stayed taken while the request waited: writes come first.
    ReadsBusy = ("reads_busy", SERVICE_UNAVAILABLE),

    // Any route.
    /// A bug: handling the request panicked. The process goes on; the sender resends.
    InternalError = ("internal_error", INTERNAL_SERVER_ERROR),
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_errors() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text}"
            );
            let status = code.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{text}"
            );
        }
    }
}
