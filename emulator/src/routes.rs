//! The HTTP routes: every handler module mounted on one router, with the bearer check
//! and fault injection in front of `/api/`.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

use crate::error::ErrorReply;
use crate::state::App;
use crate::{auth, faults, secrets, statements};

/// Statement texts may be up to 16 MiB, plus parameters and JSON escaping.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route(
            "/api/2.0/secrets/scopes/create",
            post(secrets::create_scope),
        )
        .route("/api/2.0/secrets/scopes/list", get(secrets::list_scopes))
        .route(
            "/api/2.0/secrets/scopes/delete",
            post(secrets::delete_scope),
        )
        .route("/api/2.0/secrets/put", post(secrets::put))
        .route("/api/2.0/secrets/get", get(secrets::get))
        .route("/api/2.0/secrets/list", get(secrets::list))
        .route("/api/2.0/secrets/delete", post(secrets::delete))
        .route("/api/2.0/sql/statements", post(statements::execute))
        .route("/api/2.0/sql/statements/", post(statements::execute))
        .route("/api/2.0/sql/statements/{id}", get(statements::get))
        .route(
            "/api/2.0/sql/statements/{id}/result/chunks/{chunk_index}",
            get(statements::chunk),
        )
        .route(
            "/api/2.0/sql/statements/{id}/cancel",
            post(statements::cancel),
        )
        .fallback(endpoint_not_found)
        .layer(from_fn_with_state(Arc::clone(&app), auth::require_bearer))
        .layer(from_fn_with_state(Arc::clone(&app), faults::inject));
    Router::new()
        .route("/.well-known/databricks-config", get(auth::host_metadata))
        .route(
            "/oidc/.well-known/oauth-authorization-server",
            get(auth::discovery),
        )
        .route(
            "/oidc/.well-known/openid-configuration",
            get(auth::discovery),
        )
        .route("/oidc/v1/token", post(auth::token))
        .route("/external/{token}", get(statements::download))
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

async fn endpoint_not_found(method: Method, uri: Uri) -> ErrorReply {
    ErrorReply::new(
        axum::http::StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
        format!("No API found for '{method} {}'", uri.path()),
    )
}
