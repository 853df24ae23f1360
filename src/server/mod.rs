//! The HTTP surface: routes, the shared state, and the layers around them.

mod auth;
mod error;
mod ingest;
mod ops;
mod page;
mod read;
mod readiness;
mod state;
mod upload;

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::error_code::ErrorCode;
use crate::metrics::RequestLabels;
use error::HttpError;
#[cfg(test)]
pub(crate) use error::body_error_code;
pub(crate) use state::{AppState, Backend};

pub(crate) fn router(state: AppState) -> Router {
    // Longest a request may take: a body trickling in, or waiting for its commit.
    let request_timeout = state.config.ack_timeout + Duration::from_secs(30);
    let ingest_and_ops = Router::new()
        .route("/ingest", post(ingest::ingest))
        .route("/api/ingest", post(ingest::ingest))
        .route("/api/v2/write", post(ingest::write_lines))
        .route("/api/whoami", get(auth::whoami))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    // A site relay takes readings only: the table and its page are the gateway's.
    let routes = match state.relay_state() {
        Some(_) => ingest_and_ops,
        None => ingest_and_ops
            .route("/api/devices", get(read::devices))
            .route("/api/devices/{device_id}/series", get(read::series))
            .route("/api/devices/{device_id}/latest", get(read::latest))
            .route("/api/stats", get(read::stats))
            .route("/", get(page::index))
            .route("/static/{file}", get(page::static_file)),
    };
    with_test_faults(routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A bug that panics fails its own request (500), not the process: readings
        // other requests queued stay queued and are written.
        .layer(CatchPanicLayer::custom(answer_panic))
        // A layer, not a route_layer: unmatched requests (404) are counted too.
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|id| id.to_str().ok())
                        .unwrap_or_default();
                    // The path only: query strings and headers (keys, tokens) are never logged.
                    tracing::info_span!("request", method = %request.method(), path = request.uri().path(), request_id)
                })
                // 503s are deliberate push-back, and come in floods exactly when the gateway
                // is overloaded; real failures are logged where they happen.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        // Outermost, so the span above and every answer carry the id.
        .layer(middleware::from_fn(request_id))
}

/// A route that panics, in debug builds only and only when the test asks for it
/// (`LAKEGATE_TEST_PANIC_ROUTE` set): the tests prove with it that a panic while
/// handling one request neither stops the process nor loses queued readings.
fn with_test_faults(routes: Router<AppState>) -> Router<AppState> {
    if cfg!(debug_assertions) && std::env::var_os("LAKEGATE_TEST_PANIC_ROUTE").is_some() {
        routes.route("/__test/panic", post(panic_on_request))
    } else {
        routes
    }
}

async fn panic_on_request() -> Response {
    panic!("a test asked this request to panic")
}

fn answer_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    tracing::error!(panic = what, "handling a request panicked; answered 500");
    HttpError::new(
        ErrorCode::InternalError,
        "the gateway failed while handling this request; readings it carried may or may \
         not be queued: send them again (a resent reading is written once)",
    )
    .into_response()
}

/// Longest incoming `X-Request-Id` kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Gives every request an `X-Request-Id` and echoes it on the answer. Behind the Apps
/// proxy the header is already set and kept; an id that could flood or garble logs
/// (too long, not printable ASCII, or more than one) is replaced by a fresh one.
async fn request_id(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    let given = match headers.get_all(X_REQUEST_ID).iter().count() {
        1 => headers
            .get(X_REQUEST_ID)
            .filter(|id| is_fit_request_id(id.as_bytes()))
            .cloned(),
        _ => None,
    };
    let id = given.unwrap_or_else(|| {
        let fresh = format!("{:032x}", rand::random::<u128>());
        HeaderValue::try_from(fresh).expect("hex is a valid header value")
    });
    headers.insert(X_REQUEST_ID, id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().entry(X_REQUEST_ID).or_insert(id);
    response
}

const X_REQUEST_ID: &str = "x-request-id";

fn is_fit_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

/// Answers 408 (in the gateway's error shape) once a request has taken `limit`.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => HttpError::new(
            ErrorCode::RequestTimeout,
            format!("the request took longer than {limit:?}"),
        )
        .into_response(),
    }
}

async fn not_found() -> HttpError {
    HttpError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// Requests by matched route and status.
async fn count_request(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_over_its_time_answers_408_in_the_error_shape() {
        let slow = Router::new()
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(5))))
            .layer(middleware::from_fn_with_state(
                Duration::from_millis(50),
                time_limit,
            ));
        let request = axum::http::Request::get("/slow")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = slow.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        insta::assert_json_snapshot!("request_timeout", (status.as_u16(), body));
    }

    #[test]
    fn only_short_printable_request_ids_are_kept() {
        assert!(is_fit_request_id(b"0b5c3e9e-7f7a-4a51-9a43-2f3c5a1b6d20"));
        assert!(is_fit_request_id(&[b'a'; 128]));
        assert!(!is_fit_request_id(&[b'a'; 129]));
        assert!(!is_fit_request_id(b""));
        assert!(!is_fit_request_id(b"two words"));
        assert!(!is_fit_request_id("caf\u{e9}".as_bytes()));
        assert!(!is_fit_request_id(b"a\tb"));
    }
}
