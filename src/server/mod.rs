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
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::error_code::ErrorCode;
use crate::metrics::RequestLabels;
use error::HttpError;
#[cfg(test)]
pub(crate) use error::body_error_code;
pub(crate) use state::{AppState, Backend};

pub fn router(state: AppState) -> Router {
    // Longest a request may take: a body trickling in, or waiting for its commit.
    let request_timeout = state.config.ack_timeout + Duration::from_secs(30);
    let ingest_and_ops = Router::new()
        .route("/ingest", post(ingest::ingest))
        .route("/api/ingest", post(ingest::ingest))
        .route("/api/whoami", get(auth::whoami))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    // A site relay takes readings only: the table and its page are the gateway's.
    let routes = match state.site() {
        Some(_) => ingest_and_ops,
        None => ingest_and_ops
            .route("/api/devices", get(read::devices))
            .route("/api/devices/{device_id}/series", get(read::series))
            .route("/api/devices/{device_id}/latest", get(read::latest))
            .route("/api/stats", get(read::stats))
            .route("/", get(page::index))
            .route("/static/{file}", get(page::static_file)),
    };
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
        .layer(PropagateRequestIdLayer::x_request_id())
        // Behind the Apps proxy X-Request-Id is already set and kept.
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        // Outermost: an id that could flood or garble logs is replaced by a fresh one.
        .layer(middleware::map_request(drop_unfit_request_id))
}

/// Longest incoming `X-Request-Id` kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes an incoming `X-Request-Id` that is too long or not printable ASCII,
/// so that `SetRequestIdLayer` generates one instead.
async fn drop_unfit_request_id(mut request: Request) -> Request {
    let fits = |id: &axum::http::HeaderValue| is_fit_request_id(id.as_bytes());
    let headers = request.headers_mut();
    let all_fit = headers.get_all("x-request-id").iter().count() == 1
        && headers.get("x-request-id").is_some_and(fits);
    if !all_fit {
        headers.remove("x-request-id");
    }
    request
}

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

#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("{:032x}", rand::random::<u128>());
        Some(RequestId::new(
            id.parse().expect("hex is a valid header value"),
        ))
    }
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
