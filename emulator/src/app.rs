//! Shared state and the HTTP routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, Uri, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

use crate::auth::{self, TokenStore};
use crate::config::EmulatorConfig;
use crate::error::ErrorReply;
use crate::faults::{self, FaultState};
use crate::secrets::{self, SecretStore};
use crate::sql::Engine;
use crate::statements::{
    self, StatementStore,
    links::{self, LinkStore},
};
use crate::stats::Counters;

/// Statement texts may be up to 16 MiB, plus parameters and JSON escaping.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub struct App {
    /// The URL the emulator was started on; requests use their `Host` instead when they have one.
    pub url: String,
    pub warehouse_id: String,
    pub rows_per_chunk: usize,
    pub tokens: TokenStore,
    pub secrets: SecretStore,
    pub statements: StatementStore,
    pub links: LinkStore,
    pub engine: Engine,
    pub faults: FaultState,
    pub stats: Counters,
}

impl App {
    pub fn new(config: EmulatorConfig, engine: Engine, url: String) -> Self {
        Self {
            url,
            warehouse_id: config.warehouse_id,
            rows_per_chunk: config.rows_per_chunk,
            tokens: TokenStore::new(
                &config.service_principals,
                &config.tokens,
                config.token_lifetime,
            ),
            secrets: SecretStore::default(),
            statements: StatementStore::default(),
            links: LinkStore::new(config.link_lifetime),
            engine,
            faults: FaultState::new(config.faults),
            stats: Counters::default(),
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
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
        .route("/external/{token}", get(links::download))
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

/// The workspace URL as the caller sees it (from `Host`), for links and OIDC metadata.
pub struct BaseUrl(pub String);

impl FromRequestParts<Arc<App>> for BaseUrl {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let host = host.or_else(|| parts.uri.authority().map(|a| a.as_str()));
        Ok(BaseUrl(host.map_or_else(
            || app.url.clone(),
            |host| format!("http://{host}"),
        )))
    }
}
