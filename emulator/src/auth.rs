//! OAuth machine-to-machine: host metadata, OIDC discovery, the client-credentials token endpoint,
//! and the bearer check in front of every `/api/` route.
//!
//! Assumptions: unauthenticated API calls get 401 with `error_code` `UNAUTHENTICATED` (the
//! documented mapping; real workspaces have also been seen answering a numeric `error_code` and
//! 403 for bad tokens). Token endpoint errors use the OAuth shape (`error`, `error_description`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use crate::error::ErrorReply;
use crate::identity::TokenOwner;
use crate::state::{App, BaseUrl};
use crate::stats::bump;

const SCOPE: &str = "all-apis";

/// `GET /.well-known/databricks-config`: newer SDKs read the OIDC root from here.
pub(crate) async fn host_metadata(BaseUrl(url): BaseUrl) -> Json<serde_json::Value> {
    Json(json!({
        "oidc_endpoint": format!("{url}/oidc"),
        "workspace_id": "1",
        "cloud": "AWS",
        "host_type": "workspace",
    }))
}

/// `GET /oidc/.well-known/oauth-authorization-server` (RFC 8414).
pub(crate) async fn discovery(BaseUrl(url): BaseUrl) -> Json<serde_json::Value> {
    Json(json!({
        "issuer": format!("{url}/oidc"),
        "authorization_endpoint": format!("{url}/oidc/v1/authorize"),
        "token_endpoint": format!("{url}/oidc/v1/token"),
        "jwks_uri": format!("{url}/oidc/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["code"],
        "scopes_supported": [SCOPE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}

#[derive(Deserialize)]
pub(crate) struct TokenForm {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// The Zerobus SDKs' table-scoped request: `api://databricks/workspaces/<id>/zerobusDirectWriteApi`.
    resource: Option<String>,
    /// With `resource`: a JSON list of Unity Catalog privileges, one entry granting MODIFY
    /// on the table (`object_type` TABLE, `object_full_path` `catalog.schema.table`).
    authorization_details: Option<String>,
}

/// `POST /oidc/v1/token`: client credentials by HTTP Basic or in the form body.
pub(crate) async fn token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    bump(&app.stats.token_requests);
    if app.faults.take_token_failure() {
        let mut response = oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The token service is temporarily unavailable.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
        return response;
    }
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body must be application/x-www-form-urlencoded.",
        );
    };
    let credentials = basic_credentials(&headers)
        .or_else(|| Some((form.client_id.clone()?, form.client_secret.clone()?)));
    let Some((client_id, client_secret)) = credentials else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed: no client credentials were sent.",
        );
    };
    if !app.tokens.authenticate_client(&client_id, &client_secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
    }
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only grant_type=client_credentials is supported.",
        );
    }
    let zerobus_table = match form.resource.as_deref() {
        None => None,
        Some(resource) => match zerobus_table(resource, form.authorization_details.as_deref()) {
            Ok(table) => Some(table),
            Err(description) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description);
            }
        },
    };
    let (access_token, lifetime) = app
        .tokens
        .issue_scoped(TokenOwner::ServicePrincipal(client_id), zerobus_table);
    bump(&app.stats.tokens_issued);
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": app.faults.token_expires_in().unwrap_or(lifetime.as_secs()),
        "scope": form.scope.as_deref().unwrap_or(SCOPE),
    });
    Json(body).into_response()
}

/// The table a Zerobus token request is scoped to. The workspace id in `resource` is not
/// checked: a local endpoint (`http://127.0.0.1:PORT`) gives the SDKs no real one.
fn zerobus_table(resource: &str, details: Option<&str>) -> Result<String, &'static str> {
    let valid_resource = resource
        .strip_prefix("api://databricks/workspaces/")
        .and_then(|rest| rest.strip_suffix("/zerobusDirectWriteApi"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    if !valid_resource {
        return Err(
            "Unknown resource: only the Zerobus API (api://databricks/workspaces/<id>/zerobusDirectWriteApi) is supported.",
        );
    }
    let details: Vec<serde_json::Value> = details
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or("authorization_details must be a JSON list.")?;
    details
        .iter()
        .find(|entry| {
            entry["object_type"].as_str() == Some("TABLE")
                && entry["privileges"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p.as_str() == Some("MODIFY")))
        })
        .and_then(|entry| entry["object_full_path"].as_str())
        .filter(|path| path.split('.').count() == 3)
        .map(str::to_owned)
        .ok_or("authorization_details must grant MODIFY on a table (catalog.schema.table).")
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Middleware on `/api/`: requires a valid `Authorization: Bearer` token, and hands the
/// handler its owner (a [`TokenOwner`] request extension).
pub(crate) async fn require_bearer(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        return ErrorReply::unauthenticated(
            "Credential was not sent or was of an unsupported type for this API.",
        )
        .into_response();
    };
    match app.tokens.lookup(token.trim()) {
        None => ErrorReply::unauthenticated("Invalid access token.").into_response(),
        Some(grant) => {
            request.extensions_mut().insert(grant.owner);
            next.run(request).await
        }
    }
}
