//! The one HTTP client for workspace calls: bearer token, User-Agent, per-call
//! timeout, typed errors and the retry policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::TokenSource;
use super::error::{Error, ErrorResponse};
use super::retry::{self, RetryPolicy, SharedPause};
use super::transport::{MAX_API_BODY, MAX_DOWNLOAD_BODY, read_body, read_response};

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
    /// Shared by every clone: a throttling answer to one caller pauses them all.
    pause: Arc<SharedPause>,
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
            pause: Arc::default(),
            timeout,
        }
    }

    /// The same connection pool, host and retry policy, authenticating with `tokens`.
    /// Another identity is throttled on its own: it gets its own pause, so a user's
    /// queries never hold up the app's writes.
    pub fn with_tokens(&self, tokens: Arc<dyn TokenSource>) -> Self {
        ApiClient {
            tokens,
            pause: Arc::default(),
            ..self.clone()
        }
    }

    pub fn token_source(&self) -> &Arc<dyn TokenSource> {
        &self.tokens
    }

    /// Sends `call` (with retries) and decodes the JSON answer; an empty body reads as `{}`.
    pub async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, Error> {
        let url = format!("{}{}", self.host, call.path);
        let body = retry::run(&self.retry, call.retry_ambiguous, Some(&self.pause), || {
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
                Error::Api(api) => Error::Api(ErrorResponse {
                    message: "external link download refused".into(),
                    ..api
                }),
                other => other,
            })
        };
        // Storage, not the workspace: its throttling is its own.
        retry::run(&self.retry, true, None, attempt).await
    }
}
