//! The HTTP transport under every workspace call: the reqwest client, and reading
//! an answer within a byte cap into its body or the typed error.

use std::sync::Once;
use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::RETRY_AFTER;

use super::error::{Error, ErrorResponse};
use super::retry::parse_retry_after;

pub(crate) const USER_AGENT: &str = concat!("lakegate/", env!("CARGO_PKG_VERSION"));

/// Byte caps of what the workspace sends back, so that no answer, however long, can
/// exhaust memory. API answers: INLINE results are at most 25 MiB of data.
pub(crate) const MAX_API_BODY: usize = 64 * 1024 * 1024;
/// OAuth token and discovery answers are a few hundred bytes.
pub(crate) const MAX_TOKEN_BODY: usize = 1024 * 1024;
/// External-link result chunks: Databricks documents no chunk size (observed chunks are
/// tens of MiB at most), so this leaves a wide margin.
pub(crate) const MAX_DOWNLOAD_BODY: usize = 256 * 1024 * 1024;

/// A reqwest client for Databricks and for a lakegate upstream. reqwest is built without
/// a bundled crypto provider, so install ring once per process before the first client.
///
/// It never follows redirects: a machine client that follows one can take a login
/// page's 200 for an answer (a commit that never happened). A 3xx is an answer like any
/// other non-2xx, for the caller to judge.
pub fn http_client() -> Result<reqwest::Client, Error> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only when another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(Error::transport)
}

/// The body of a 2xx answer (at most `limit` bytes of it), or the typed error for any
/// other status.
pub(crate) async fn read_response(
    response: reqwest::Response,
    what: &'static str,
    limit: usize,
) -> Result<Bytes, Error> {
    read_body(response, what, limit, Error::transport).await
}

pub(crate) async fn read_body(
    mut response: reqwest::Response,
    what: &'static str,
    limit: usize,
    transport_error: impl Fn(reqwest::Error) -> Error,
) -> Result<Bytes, Error> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let too_large = || Error::TooLarge { what, limit };
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(&transport_error)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    if status.is_success() {
        Ok(body)
    } else {
        Err(ErrorResponse::from_body(status.as_u16(), &body, retry_after).into())
    }
}
