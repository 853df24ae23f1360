//! The one HTTP client for workspace calls: bearer token, User-Agent, per-call
//! timeout, typed errors and the retry policy.

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::TokenSource;
use super::error::{ApiError, Error};
use super::retry::{self, RetryPolicy, parse_retry_after};

pub const USER_AGENT: &str = concat!("lakegate/", env!("CARGO_PKG_VERSION"));

/// Byte caps of what the workspace sends back, so that no answer, however long, can
/// exhaust memory. API answers: INLINE results are at most 25 MiB of data.
pub const MAX_API_BODY: usize = 64 * 1024 * 1024;
/// OAuth token and discovery answers are a few hundred bytes.
pub const MAX_TOKEN_BODY: usize = 1024 * 1024;
/// External-link result chunks: Databricks documents no chunk size (observed chunks are
/// tens of MiB at most), so this leaves a wide margin.
pub const MAX_DOWNLOAD_BODY: usize = 256 * 1024 * 1024;

/// A reqwest client for Databricks. reqwest is built without a bundled crypto
/// provider, so install ring once per process before the first client.
pub fn http_client() -> Result<reqwest::Client, Error> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only when another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .build()
        .map_err(Error::transport)
}

/// One API call, kept as data so that a retry re-sends exactly the same request.
#[derive(Clone)]
pub struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Bytes>,
    retry_ambiguous: bool,
    timeout: Option<Duration>,
}

/// Leaves the body out: it may carry a secret value.
impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Call {
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path.into())
    }

    /// A POST; without [`Call::json`] the body is empty.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path.into())
    }

    fn new(method: Method, path: String) -> Self {
        Call {
            method,
            path,
            query: Vec::new(),
            body: None,
            retry_ambiguous: true,
            timeout: None,
        }
    }

    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn json(mut self, body: &impl Serialize) -> Result<Self, Error> {
        let body =
            serde_json::to_vec(body).map_err(|err| Error::InvalidRequest(err.to_string()))?;
        self.body = Some(body.into());
        Ok(self)
    }

    /// Whether to retry after a timeout or a connection broken *after* sending,
    /// when the server may have acted on the request. On by default (as in the
    /// SDKs); turn it off for calls that must not run twice.
    pub fn retry_ambiguous(mut self, retry: bool) -> Self {
        self.retry_ambiguous = retry;
        self
    }

    /// Overrides the client's per-call timeout (e.g. for calls the server holds open).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Cheap to clone; all clones share the connection pool and the token cache.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    host: Arc<str>,
    tokens: Arc<dyn TokenSource>,
    retry: Arc<RetryPolicy>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(
        http: reqwest::Client,
        host: &str,
        tokens: Arc<dyn TokenSource>,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Self {
        ApiClient {
            http,
            host: host.into(),
            tokens,
            retry: Arc::new(retry),
            timeout,
        }
    }

    /// The same connection pool, host and retry policy, authenticating with `tokens`.
    pub fn with_tokens(&self, tokens: Arc<dyn TokenSource>) -> Self {
        ApiClient {
            tokens,
            ..self.clone()
        }
    }

    pub fn token_source(&self) -> &Arc<dyn TokenSource> {
        &self.tokens
    }

    /// Sends `call` (with retries) and decodes the JSON answer; an empty body reads as `{}`.
    pub async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, Error> {
        let url = format!("{}{}", self.host, call.path);
        let body = retry::run(&self.retry, call.retry_ambiguous, || {
            self.attempt(&url, &call)
        })
        .await?;
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        serde_json::from_slice(body)
            .map_err(|err| Error::Decode(format!("{} {}: {err}", call.method, call.path)))
    }

    async fn attempt(&self, url: &str, call: &Call) -> Result<Bytes, Error> {
        let token = self.tokens.token().await?;
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .bearer_auth(token.expose_secret())
            .timeout(call.timeout.unwrap_or(self.timeout))
            .query(&call.query);
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = request.send().await.map_err(Error::transport)?;
        read_response(response, "API response", MAX_API_BODY).await
    }

    /// Downloads a presigned link: no Authorization header (the link carries its
    /// own credentials), only the headers Databricks listed. Errors leave the URL out.
    pub async fn download(
        &self,
        url: &str,
        headers: &HashMap<String, String>,
    ) -> Result<Bytes, Error> {
        let attempt = || async {
            let mut request = self.http.get(url).timeout(self.timeout);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let hide_url = |err: reqwest::Error| Error::transport(err.without_url());
            let response = request.send().await.map_err(hide_url)?;
            // Storage error bodies may echo parts of the signed request: keep only the status.
            read_body(
                response,
                "external link download",
                MAX_DOWNLOAD_BODY,
                hide_url,
            )
            .await
            .map_err(|err| match err {
                Error::Api(api) => Error::Api(ApiError {
                    message: "external link download refused".into(),
                    ..api
                }),
                other => other,
            })
        };
        retry::run(&self.retry, true, attempt).await
    }
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

async fn read_body(
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
        Err(ApiError::from_body(status.as_u16(), &body, retry_after).into())
    }
}
