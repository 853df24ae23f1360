//! An emulated Databricks Apps proxy, to run an app locally the way Databricks fronts it.
//!
//! A Databricks App is never public: every request reaches it through the Apps proxy,
//! which admits only a Databricks OAuth token (`Authorization: Bearer`) of a principal
//! with CAN USE on the app, and tells the app who called. This proxy does the same in
//! front of a local app, against the emulator's own token store:
//!
//! - **Admission** (`admission.rs`): a missing, unknown or expired token is answered 401
//!   `UNAUTHENTICATED`, and so is a personal access token (the real proxy refuses them);
//!   a principal not on the CAN USE list gets 403 `PERMISSION_DENIED`. Refused requests
//!   never reach the app.
//! - **Headers** (`headers.rs`): `Authorization` is stripped, and so is every
//!   `X-Forwarded-*` and `X-Real-Ip` the client sent; the proxy sets its own
//!   `X-Forwarded-Host`, `X-Forwarded-User`, `X-Forwarded-Email`,
//!   `X-Forwarded-Preferred-Username` (a service principal's application id, or a
//!   user's email, in all three), `X-Real-Ip` (the client's address) and, with user
//!   authorization on, `X-Forwarded-Access-Token`: a token of the caller's own
//!   identity, not the one they presented, expiring with it. An incoming `X-Request-Id`
//!   is kept, otherwise one is made (a UUID). Custom headers such as `X-API-Key` pass,
//!   unless [`AppsProxyConfig::forward_custom_headers`] is off: whether the real proxy
//!   forwards them is not documented, so a test can look at both.
//! - **Forwarding**: clients may speak HTTP/1.1 or h2c; an HTTP/2 request goes to the
//!   app over h2c (prior knowledge), any other over HTTP/1.1, so a test chooses the
//!   app-side protocol by its client's. Bodies stream both ways, never buffered whole
//!   (`body.rs`).
//! - **Limits**: a request body over [`AppsProxyConfig::max_body_bytes`] is answered 413
//!   `REQUEST_ENTITY_TOO_LARGE` (at once when `Content-Length` says so, otherwise when
//!   the stream passes the cap, if the app has not answered yet). A request the app has
//!   not answered within [`AppsProxyConfig::request_timeout`] (120 s by default, as
//!   reported for Databricks) is answered 504 `DEADLINE_EXCEEDED`; a response body
//!   still streaming at that point is cut off. An unreachable app is 502
//!   `TEMPORARILY_UNAVAILABLE`.
//!
//! Assumptions where Databricks is silent: the codes of 413, 502 and 504 (the real proxy
//! shows HTML pages for some of them); X-Forwarded-User carries the email or application
//! id rather than an IdP user id; the proxy answers 401 (not a redirect to the sign-in
//! page) on every path, as callers with tokens see on `/api/` routes.
//!
//! The proxy needs the emulator's token store in the same process: [`AppsProxy::start`]
//! takes the running [`Emulator`], and the binary starts both with
//! `--apps-proxy-listen ADDR --apps-proxy-app URL`.

mod admission;
mod body;
mod config;
mod headers;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::uri::{Authority, Scheme};
use axum::http::{StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::body::{Capped, Deadline};
pub use self::config::AppsProxyConfig;
use crate::Emulator;
use crate::error::ErrorReply;
use crate::state::App;

/// A running Apps proxy. Dropping it without [`AppsProxy::shutdown`] leaves it serving
/// until the runtime stops.
pub struct AppsProxy {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<io::Result<()>>,
}

impl AppsProxy {
    /// Binds `config.listen` and starts forwarding to `config.app_url`, admitting the
    /// tokens `emulator` has issued.
    pub async fn start(config: AppsProxyConfig, emulator: &Emulator) -> io::Result<AppsProxy> {
        let (scheme, authority) = app_origin(&config.app_url)?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let proxy = Arc::new(Proxy {
            config,
            scheme,
            authority,
            workspace: Arc::clone(&emulator.app),
            http1: client(false),
            h2c: client(true),
        });
        let service = Router::new()
            .fallback(forward)
            .with_state(proxy)
            .into_make_service_with_connect_info::<SocketAddr>();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(AppsProxy { addr, stop, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR:PORT`, the app's address for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for open requests to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "apps proxy stopped with an error"),
            Err(err) => tracing::warn!(error = %err, "apps proxy task failed"),
        }
    }
}

struct Proxy {
    config: AppsProxyConfig,
    scheme: Scheme,
    authority: Authority,
    /// The emulator's state, for its token store.
    workspace: Arc<App>,
    http1: Client<HttpConnector, Capped>,
    h2c: Client<HttpConnector, Capped>,
}

/// The scheme and authority of `url`, which must be plain HTTP without a path.
fn app_origin(url: &str) -> io::Result<(Scheme, Authority)> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("app URL {url:?}: {why}"),
        )
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(invalid(
            "must start with http:// (the proxy speaks plain HTTP to the app)",
        ));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(invalid("must not have a path"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid("has no host"))?;
    Ok((Scheme::HTTP, authority))
}

impl Proxy {
    /// The request for the app: the client's method, path and body with the proxy's
    /// headers, over HTTP/2 (h2c) when the client spoke HTTP/2.
    fn app_request(
        &self,
        client: &Parts,
        identity: &headers::Identity<'_>,
        body: Capped,
    ) -> Option<axum::http::Request<Capped>> {
        let mut uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if let Some(path) = client.uri.path_and_query() {
            uri = uri.path_and_query(path.clone());
        }
        let version = if client.version == Version::HTTP_2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let mut request = axum::http::Request::builder()
            .method(client.method.clone())
            .uri(uri.build().ok()?)
            .version(version)
            .body(body)
            .ok()?;
        *request.headers_mut() =
            headers::to_app(client, identity, self.config.forward_custom_headers);
        Some(request)
    }
}

fn client(h2c: bool) -> Client<HttpConnector, Capped> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .http2_only(h2c)
        .build_http()
}

/// Every request: admit the caller, then forward to the app with the proxy's headers.
async fn forward(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let deadline = Instant::now() + proxy.config.request_timeout;
    let tokens = &proxy.workspace.tokens;
    let caller = match admission::admit(tokens, &proxy.config, request.headers()) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let (parts, body) = request.into_parts();
    let max = proxy.config.max_body_bytes;
    if declared_length(&parts.headers).is_some_and(|length| length > max) {
        return too_large(max).into_response();
    }
    let access_token = if proxy.config.user_authorization {
        tokens.delegate(&caller.token)
    } else {
        None
    };
    let identity = headers::Identity {
        name: &caller.name,
        client_ip: peer.ip(),
        access_token: access_token.as_deref(),
    };
    let body = Capped::new(body, max);
    let exceeded = body.exceeded();
    let Some(upstream) = proxy.app_request(&parts, &identity, body) else {
        return unavailable("the request could not be forwarded").into_response();
    };
    let client = if upstream.version() == Version::HTTP_2 {
        &proxy.h2c
    } else {
        &proxy.http1
    };
    match tokio::time::timeout_at(deadline, client.request(upstream)).await {
        Err(_) => ErrorReply::new(
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            format!(
                "The app did not answer within {} s.",
                proxy.config.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
        Ok(Err(_)) if exceeded.load(Ordering::Relaxed) => too_large(max).into_response(),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "apps proxy: the app is not reachable");
            unavailable("the app is not reachable").into_response()
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            parts.version = Version::default();
            Response::from_parts(parts, Body::new(Deadline::new(body, deadline)))
        }
    }
}

fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(max: u64) -> ErrorReply {
    ErrorReply::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "REQUEST_ENTITY_TOO_LARGE",
        format!("The request body exceeds the limit of {max} bytes."),
    )
}

fn unavailable(why: &str) -> ErrorReply {
    ErrorReply::new(
        StatusCode::BAD_GATEWAY,
        "TEMPORARILY_UNAVAILABLE",
        format!("App not available: {why}."),
    )
}
