//! Bearer tokens: personal access tokens, and OAuth M2M tokens cached the way
//! the Databricks SDKs cache them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::error::Error;
use super::retry::{self, RetryPolicy};
use super::transport::{MAX_TOKEN_BODY, read_response};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Hands out the bearer token for the next request.
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, Error>>;

    /// Token fetches so far, for metrics; a static token never fetches.
    fn fetches(&self) -> TokenFetches {
        TokenFetches::default()
    }
}

/// How many token fetches succeeded and failed (each after its own retries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenFetches {
    pub succeeded: u64,
    pub failed: u64,
}

/// A personal access token: never refreshed.
#[derive(Debug)]
pub struct Pat(SecretString);

impl Pat {
    pub fn new(token: SecretString) -> Self {
        Pat(token)
    }
}

impl TokenSource for Pat {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// Tuning of the OAuth token source.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthSettings {
    /// Retries of the token endpoint itself (429/502/503/504, connection errors).
    pub retry: RetryPolicy,
    /// After a failed background refresh, wait this long before trying again
    /// (the still-valid token keeps being served meanwhile).
    pub refresh_backoff: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            retry: RetryPolicy::token_endpoint(),
            refresh_backoff: Duration::from_secs(60),
        }
    }
}

/// OAuth machine-to-machine (client credentials) with a shared token cache.
///
/// * A token is *stale* `min(TTL/2, 20 min)` before it expires: the first caller
///   to notice starts one background refresh and everybody keeps using the
///   current token.
/// * It counts as *expired* `min(40 s, TTL/10)` early and is never sent then;
///   callers without a valid token wait for a single fetch (one request, however
///   many callers) and share its result, success or error.
#[derive(Clone)]
pub struct OAuthM2m {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    host: String,
    client_id: String,
    client_secret: SecretString,
    settings: OAuthSettings,
    call_timeout: Duration,
    token_endpoint: OnceCell<String>,
    cache: Mutex<Cache>,
    fetches: Mutex<TokenFetches>,
}

/// One fetch of a token, awaited by everyone who needs its result.
type Flight = OnceCell<Result<SecretString, Error>>;

#[derive(Default)]
struct Cache {
    token: Option<CachedToken>,
    flight: Option<Arc<Flight>>,
    /// Background refreshes wait until then after a failure.
    next_background_refresh: Option<Instant>,
}

struct CachedToken {
    value: SecretString,
    stale_at: Instant,
    expires_at: Instant,
}

impl CachedToken {
    /// `requested_at` is taken before the request so that the lifetime is never overestimated.
    /// `ttl` comes from the token endpoint: it is capped at [`MAX_TOKEN_TTL`], so that no
    /// answer can overflow the clock arithmetic (a panic) or keep a token for ever.
    fn new(value: SecretString, requested_at: Instant, ttl: Duration) -> Self {
        const MAX_STALE_WINDOW: Duration = Duration::from_secs(20 * 60);
        const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(40);
        let ttl = ttl.min(MAX_TOKEN_TTL);
        let end = requested_at.checked_add(ttl).unwrap_or(requested_at);
        CachedToken {
            value,
            stale_at: end - (ttl / 2).min(MAX_STALE_WINDOW),
            expires_at: end - (ttl / 10).min(MAX_EXPIRY_MARGIN),
        }
    }
}

/// Longest token lifetime we believe; Databricks' OAuth tokens live an hour.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

impl OAuthM2m {
    pub fn new(
        http: reqwest::Client,
        host: &str,
        client_id: &str,
        client_secret: SecretString,
        settings: OAuthSettings,
        call_timeout: Duration,
    ) -> Self {
        OAuthM2m {
            inner: Arc::new(Inner {
                http,
                host: host.to_owned(),
                client_id: client_id.to_owned(),
                client_secret,
                settings,
                call_timeout,
                token_endpoint: OnceCell::new(),
                cache: Mutex::new(Cache::default()),
                fetches: Mutex::default(),
            }),
        }
    }

    async fn current_token(&self) -> Result<SecretString, Error> {
        let flight = {
            let mut cache = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if let Some(token) = cache.token.as_ref().filter(|t| now < t.expires_at) {
                let value = token.value.clone();
                let refresh_due = now >= token.stale_at
                    && cache.flight.is_none()
                    && cache.next_background_refresh.is_none_or(|at| now >= at);
                if refresh_due {
                    let flight = Arc::new(Flight::new());
                    cache.flight = Some(flight.clone());
                    let inner = self.inner.clone();
                    tokio::spawn(async move { inner.join(&flight).await });
                }
                return Ok(value);
            }
            cache.flight.get_or_insert_with(Default::default).clone()
        };
        self.inner.join(&flight).await
    }
}

impl std::fmt::Debug for OAuthM2m {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthM2m")
            .field("host", &self.inner.host)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource for OAuthM2m {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, Error>> {
        Box::pin(self.current_token())
    }

    fn fetches(&self) -> TokenFetches {
        *self
            .inner
            .fetches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Waits for the flight's result, running the fetch if nobody does yet
    /// (if that caller is dropped, a waiting one takes over).
    async fn join(&self, flight: &Arc<Flight>) -> Result<SecretString, Error> {
        flight.get_or_init(|| self.refresh(flight)).await.clone()
    }

    async fn refresh(&self, flight: &Arc<Flight>) -> Result<SecretString, Error> {
        let requested_at = Instant::now();
        let fetched = self.fetch().await;
        {
            let mut fetches = self.fetches.lock().unwrap_or_else(PoisonError::into_inner);
            match fetched {
                Ok(_) => fetches.succeeded += 1,
                Err(_) => fetches.failed += 1,
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            cache.flight = None;
        }
        match fetched {
            Ok(response) => {
                let value = SecretString::from(response.access_token);
                let ttl = Duration::from_secs(response.expires_in);
                cache.token = Some(CachedToken::new(value.clone(), requested_at, ttl));
                cache.next_background_refresh = None;
                Ok(value)
            }
            Err(err) => {
                tracing::warn!(error = %err, "OAuth token refresh failed");
                let now = Instant::now();
                cache.next_background_refresh = Some(
                    now.checked_add(self.settings.refresh_backoff)
                        .unwrap_or(now),
                );
                Err(err)
            }
        }
    }

    async fn fetch(&self) -> Result<TokenResponse, Error> {
        let endpoint = self.token_endpoint.get_or_init(|| self.discover()).await;
        // Asking twice for a token is harmless, so ambiguous failures are retried too.
        retry::run(&self.settings.retry, true, None, || {
            self.request_token(endpoint)
        })
        .await
        .map_err(|err| Error::Auth(Box::new(err)))
    }

    /// The token endpoint from OIDC discovery, or the well-known path when
    /// discovery fails.
    async fn discover(&self) -> String {
        let url = format!("{}/oidc/.well-known/oauth-authorization-server", self.host);
        let discovered = async {
            let response = self
                .http
                .get(&url)
                .timeout(self.call_timeout)
                .send()
                .await
                .map_err(Error::transport)?;
            let body = read_response(response, "OIDC discovery", MAX_TOKEN_BODY).await?;
            serde_json::from_slice::<Discovery>(&body).map_err(|err| Error::Decode(err.to_string()))
        };
        match discovered.await {
            Ok(discovery) => discovery.token_endpoint,
            Err(err) => {
                tracing::debug!(error = %err, "OIDC discovery failed; using the default token endpoint");
                format!("{}/oidc/v1/token", self.host)
            }
        }
    }

    async fn request_token(&self, endpoint: &str) -> Result<TokenResponse, Error> {
        let response = self
            .http
            .post(endpoint)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
            .timeout(self.call_timeout)
            .send()
            .await
            .map_err(Error::transport)?;
        let body = read_response(response, "token response", MAX_TOKEN_BODY).await?;
        serde_json::from_slice(&body).map_err(|err| Error::Decode(format!("token response: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_expiry_follow_the_sdk_rules() {
        let now = Instant::now();
        let hour = CachedToken::new("t".into(), now, Duration::from_secs(3600));
        assert_eq!(hour.stale_at - now, Duration::from_secs(40 * 60));
        assert_eq!(hour.expires_at - now, Duration::from_secs(3560));

        let forever = CachedToken::new("t".into(), now, Duration::from_secs(u64::MAX));
        assert_eq!(
            forever.expires_at - now,
            MAX_TOKEN_TTL - Duration::from_secs(40)
        );

        let short = CachedToken::new("t".into(), now, Duration::from_secs(4));
        assert_eq!(short.stale_at - now, Duration::from_secs(2));
        assert_eq!(short.expires_at - now, Duration::from_millis(3600));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let http = super::super::transport::http_client().unwrap();
        let source = OAuthM2m::new(
            http,
            "https://h",
            "id",
            "s3cr3t".into(),
            OAuthSettings::default(),
            Duration::from_secs(1),
        );
        assert!(!format!("{source:?}").contains("s3cr3t"));
        assert!(!format!("{:?}", Pat::new("dapi-xyz".into())).contains("dapi-xyz"));
    }
}
