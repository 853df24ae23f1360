//! Accepting and serving connections: HTTP/1.1 and cleartext HTTP/2 (prior
//! knowledge) on one port, with a cap on open connections, a deadline for request
//! headers, an idle timeout for keep-alive connections, HTTP/2 keep-alive pings,
//! and graceful shutdown.
//!
//! hyper's own `header_read_timeout` also bounds the idle wait between keep-alive
//! requests, so both timeouts are kept here, per connection: a watchdog looks at
//! what the connection is doing (requests in flight, bytes arriving) and closes it
//! when it has waited too long.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error_code::ErrorCode;
use crate::metrics::ConnectionMetrics;

/// How connections are bounded; from `LAKEGATE_*` settings (see `config`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnectionLimits {
    /// Longest a client may take to send a request's headers: from the connection's
    /// start for its first request, from the first byte for later ones.
    pub header_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request (HTTP/1.1), or
    /// stay without streams (HTTP/2).
    pub idle_timeout: Duration,
    /// Open connections; beyond it a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// HTTP/2 ping interval, and how long the answer may take before the
    /// connection is given up as dead.
    pub h2_keepalive: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            h2_keepalive: Duration::from_secs(20),
        }
    }
}

/// How long a refused connection may linger to get its 503 out, and how many may.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const MAX_LINGERING_REFUSALS: usize = 64;
/// After a connection was asked to close (timeout or shutdown) with no request in
/// flight, how long before its socket is simply closed.
const CLOSE_BOUND: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting,
/// closes idle connections, and returns once the requests in flight have finished.
/// Dropping the returned future closes every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Kept by the watchdog below: hyper's would also cut idle keep-alives short.
        .header_read_timeout(None)
        .timer(TokioTimer::new())
        .http2()
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(limits.h2_keepalive)
        .timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    let stopping = CancellationToken::new();
    // Dropped with this future: aborts every connection task.
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if !is_connection_error(&err) {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::error!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            tracing::debug!(%peer, "too many connections; refusing one");
            refuse(stream, &lingering);
            continue;
        };
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
        };
        connections.spawn(async move {
            connection.serve(stream, peer).await;
            drop(slot);
        });
    }

    drop(listener);
    stopping.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors about one connection (not the listener), after which accepting goes on.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The 503 a connection beyond the cap gets, in the gateway's error shape.
fn overloaded_response() -> Vec<u8> {
    let code = ErrorCode::Overloaded;
    let body = serde_json::json!({
        "error": code.as_str(),
        "message": "the gateway has too many open connections; retry shortly",
    })
    .to_string();
    format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        code.status(),
        body.len()
    )
    .into_bytes()
}

/// Answers 503 and closes. Closing a socket with unread input resets it, which can
/// discard the answer before the client reads it; so the request is read and thrown
/// away for a moment first, by a bounded number of lingering tasks.
fn refuse(mut stream: TcpStream, lingering: &Arc<Semaphore>) {
    let answer = overloaded_response();
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        // The answer fits any fresh socket's send buffer.
        let _ = stream.try_write(&answer);
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut discard = [0u8; 1024];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut discard).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
        drop(permit);
    });
}

/// One accepted connection and what it needs to be served.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stopping: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let _open = OpenConnection::new(&self.metrics.open);
        let idle = Arc::new(IdleWatch::new(Instant::now()));
        let io = TokioIo::new(Watched {
            inner: stream,
            idle: idle.clone(),
        });
        let service = {
            let idle = idle.clone();
            let router = self.router.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // Handlers take the client address from here (`ConnectInfo<SocketAddr>`).
                request.extensions_mut().insert(ConnectInfo(peer));
                let in_flight = idle.request_started();
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(Body::new)).await?;
                    // The request counts as in flight until its response is written.
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &in_flight;
                            frame
                        }))
                    }))
                }
            })
        };
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        let mut connection = pin!(connection);

        // When the connection was asked to close (timeout or shutdown). Once it has no
        // request in flight, its socket is closed shortly after, even if the client
        // does not go; the pause lets a last response flush.
        let mut close_requested: Option<Instant> = None;
        loop {
            let force_close_at = close_requested.and_then(|requested| {
                let quiet_since = idle.quiet_since()?;
                Some(quiet_since.max(requested) + CLOSE_BOUND)
            });
            let wake_at = force_close_at.unwrap_or_else(|| idle.deadline(&self.limits).0);
            tokio::select! {
                _ = connection.as_mut() => break,
                () = self.stopping.cancelled(), if close_requested.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    close_requested = Some(Instant::now());
                }
                () = idle.changed.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {
                    // Unless a request slipped in meanwhile (HTTP/2, before its GOAWAY).
                    if force_close_at.is_some() && idle.quiet_since().is_some() {
                        break;
                    }
                    // Looked at again: a request may have started meanwhile.
                    let now = Instant::now();
                    let (deadline, expiry) = idle.deadline(&self.limits);
                    let Some(expiry) = expiry.filter(|_| now >= deadline && close_requested.is_none()) else {
                        continue;
                    };
                    self.metrics.timed_out(expiry.as_str());
                    tracing::debug!(%peer, reason = expiry.as_str(), "closing connection");
                    if expiry == Expiry::HeaderTimeout {
                        // A slow client gets no more time.
                        break;
                    }
                    connection.as_mut().graceful_shutdown();
                    close_requested = Some(now);
                }
            }
        }
    }
}

/// Counts a connection as open for as long as it lives (also when it is aborted).
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderTimeout,
    Idle,
}

impl Expiry {
    fn as_str(self) -> &'static str {
        match self {
            Expiry::HeaderTimeout => "header_timeout",
            Expiry::Idle => "idle_timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Not enough bytes yet to tell.
    Unknown,
    Http1,
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one connection is doing, for its watchdog.
struct IdleWatch {
    state: Mutex<IdleState>,
    /// Woken when a deadline may have moved earlier.
    changed: Notify,
}

struct IdleState {
    protocol: Protocol,
    preface_bytes: usize,
    /// Requests whose responses are not yet written.
    in_flight: usize,
    requests: u64,
    /// When the connection last had no request in flight (or was opened).
    idle_since: Instant,
    /// When the first byte arrived since then (HTTP/1.1: the next request begins).
    head_started: Option<Instant>,
}

impl IdleWatch {
    fn new(now: Instant) -> Self {
        IdleWatch {
            state: Mutex::new(IdleState {
                protocol: Protocol::Unknown,
                preface_bytes: 0,
                in_flight: 0,
                requests: 0,
                idle_since: now,
                head_started: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Since when no request has been in flight; `None` while one is.
    fn quiet_since(&self) -> Option<Instant> {
        let state = self.lock();
        (state.in_flight == 0).then_some(state.idle_since)
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.requests += 1;
        state.head_started = None;
        InFlight(self.clone())
    }

    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.lock();
        if state.protocol == Protocol::Unknown {
            let seen = state.preface_bytes;
            let compared = bytes.len().min(H2_PREFACE.len() - seen);
            if bytes[..compared] == H2_PREFACE[seen..seen + compared] {
                state.preface_bytes += compared;
                if state.preface_bytes == H2_PREFACE.len() {
                    state.protocol = Protocol::Http2;
                }
            } else {
                state.protocol = Protocol::Http1;
            }
        }
        // HTTP/2 control frames (pings, settings) are not the start of a request.
        if state.protocol != Protocol::Http2
            && state.in_flight == 0
            && state.requests > 0
            && state.head_started.is_none()
        {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// When the connection must next be looked at, and whether it is then to be
    /// closed (and why). A connection with requests in flight never expires here
    /// (requests have their own timeout), and wakes again when they finish.
    fn deadline(&self, limits: &ConnectionLimits) -> (Instant, Option<Expiry>) {
        let state = self.lock();
        if state.in_flight > 0 {
            return (Instant::now() + limits.idle_timeout, None);
        }
        let header = |since: Instant| (since + limits.header_timeout, Some(Expiry::HeaderTimeout));
        match (state.protocol, state.requests, state.head_started) {
            (Protocol::Http2, _, _) => (state.idle_since + limits.idle_timeout, Some(Expiry::Idle)),
            // The first request (or the HTTP/2 preface) is due soon after connecting.
            (_, 0, _) => header(state.idle_since),
            (_, _, Some(started)) => header(started),
            (_, _, None) => (state.idle_since + limits.idle_timeout, Some(Expiry::Idle)),
        }
    }
}

/// A request in flight; dropped once its response is written (or abandoned).
struct InFlight(Arc<IdleWatch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.head_started = None;
            drop(state);
            self.0.changed.notify_one();
        }
    }
}

/// The socket, telling the connection's `IdleWatch` what arrives.
struct Watched {
    inner: TcpStream,
    idle: Arc<IdleWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.idle.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn a_new_connection_must_send_its_first_headers_within_the_header_timeout() {
        let opened = Instant::now();
        let idle = Arc::new(IdleWatch::new(opened));
        let first_headers_due = (
            opened + Duration::from_secs(10),
            Some(Expiry::HeaderTimeout),
        );
        assert_eq!(idle.deadline(&limits()), first_headers_due);
        idle.on_read(b"POST /ingest HTTP/1.1\r\n");
        assert_eq!(idle.deadline(&limits()), first_headers_due);
    }

    #[test]
    fn between_requests_the_idle_timeout_applies_until_bytes_arrive() {
        let idle = Arc::new(IdleWatch::new(Instant::now()));
        idle.on_read(b"GET / HTTP/1.1\r\n\r\n");
        let request = idle.request_started();
        assert_eq!(idle.deadline(&limits()).1, None, "never while in flight");

        let finished = Instant::now();
        drop(request);
        let (idle_until, expiry) = idle.deadline(&limits());
        assert_eq!(expiry, Some(Expiry::Idle));
        assert!(idle_until >= finished + Duration::from_secs(60));
        assert!(idle_until <= Instant::now() + Duration::from_secs(60));

        idle.on_read(b"GET");
        let (headers_due, expiry) = idle.deadline(&limits());
        assert_eq!(expiry, Some(Expiry::HeaderTimeout));
        assert!(headers_due <= Instant::now() + Duration::from_secs(10));
    }

    #[test]
    fn http2_connections_without_streams_get_the_idle_timeout() {
        let opened = Instant::now();
        let idle = Arc::new(IdleWatch::new(opened));
        idle.on_read(&H2_PREFACE[..10]);
        assert_eq!(idle.deadline(&limits()).1, Some(Expiry::HeaderTimeout));
        idle.on_read(&H2_PREFACE[10..]);
        // Control frames after the preface (settings, ping answers) change nothing.
        idle.on_read(&[0, 0, 8, 6, 1, 0, 0, 0, 0]);
        assert_eq!(
            idle.deadline(&limits()),
            (opened + Duration::from_secs(60), Some(Expiry::Idle))
        );
    }

    #[test]
    fn the_overload_answer_is_a_complete_http_response_in_the_error_shape() {
        let answer = String::from_utf8(overloaded_response()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "overloaded");
        insta::assert_snapshot!("overloaded", answer);
    }
}
