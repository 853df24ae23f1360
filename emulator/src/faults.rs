//! Fault injection in front of `/api/`: the faults in force live in the shared state
//! (`state/faults.rs`); this middleware answers with them.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::App;
use crate::stats::{LoggedRequest, bump};

/// Middleware on `/api/`: counts and logs the request and answers injected faults before
/// anything else.
pub(crate) async fn inject(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let at = std::time::Instant::now();
    bump(&app.stats.api_requests);
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = match app.faults.api_fault(&app.stats) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    };
    app.stats.log_request(LoggedRequest {
        at,
        method,
        path,
        status: response.status().as_u16(),
    });
    response
}
