//! The Secrets API (`/api/2.0/secrets/...`) with Databricks' validation rules and error codes:
//! scope and key names `[A-Za-z0-9-_.]{1,128}`, values up to 128 KB, at most 1000 secrets per
//! scope and 1000 scopes per workspace. Secrets live in memory only. Each call can be made
//! slow ([`crate::Faults::secrets_latency`]), its effect landing mid-call.
//!
//! Assumptions: empty lists are answered as `{}` (Databricks omits empty repeated fields);
//! messages follow the wording the Databricks CLI shows ("Scope x does not exist!").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiJson, ErrorReply};
use crate::state::{App, Secret};

const MAX_NAME_LEN: usize = 128;
const MAX_VALUE_BYTES: usize = 128 * 1024;
const MAX_SECRETS_PER_SCOPE: usize = 1000;
const MAX_SCOPES: usize = 1000;

type Reply = Result<Json<Value>, ErrorReply>;

#[derive(Deserialize)]
pub(crate) struct ScopeBody {
    scope: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct PutBody {
    scope: Option<String>,
    key: Option<String>,
    string_value: Option<String>,
    bytes_value: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct KeyBody {
    scope: Option<String>,
    key: Option<String>,
}

pub(crate) async fn create_scope(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<ScopeBody>,
) -> Reply {
    let scope = valid_name(body.scope, "scope")?;
    let mut scopes = app.secrets.lock();
    if scopes.contains_key(&scope) {
        return Err(ErrorReply::new(
            StatusCode::BAD_REQUEST,
            "RESOURCE_ALREADY_EXISTS",
            format!("Scope {scope} already exists!"),
        ));
    }
    if scopes.len() >= MAX_SCOPES {
        return Err(limit_exceeded(format!(
            "The maximum number of scopes ({MAX_SCOPES}) has been reached."
        )));
    }
    scopes.insert(scope, BTreeMap::new());
    Ok(Json(json!({})))
}

pub(crate) async fn list_scopes(State(app): State<Arc<App>>) -> Reply {
    let scopes: Vec<Value> = app
        .secrets
        .lock()
        .keys()
        .map(|name| json!({"name": name, "backend_type": "DATABRICKS"}))
        .collect();
    Ok(Json(non_empty("scopes", scopes)))
}

pub(crate) async fn delete_scope(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<ScopeBody>,
) -> Reply {
    let scope = required(body.scope, "scope")?;
    app.secrets
        .lock()
        .remove(&scope)
        .ok_or_else(|| no_scope(&scope))?;
    Ok(Json(json!({})))
}

pub(crate) async fn put(State(app): State<Arc<App>>, ApiJson(body): ApiJson<PutBody>) -> Reply {
    slowly(&app, || put_now(&app, body)).await
}

fn put_now(app: &App, body: PutBody) -> Reply {
    let scope = required(body.scope, "scope")?;
    let key = valid_name(body.key, "key")?;
    let value = match (body.string_value, body.bytes_value) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => STANDARD
            .decode(encoded)
            .map_err(|_| ErrorReply::invalid_parameter("bytes_value must be base64-encoded."))?,
        (Some(_), Some(_)) => {
            return Err(ErrorReply::malformed(
                "Exactly one of string_value and bytes_value must be specified.",
            ));
        }
        (None, None) => {
            return Err(ErrorReply::invalid_parameter(
                "Exactly one of string_value and bytes_value must be specified.",
            ));
        }
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(ErrorReply::invalid_parameter(format!(
            "Size of the secret value ({} bytes) exceeds the limit of {MAX_VALUE_BYTES} bytes.",
            value.len()
        )));
    }
    let mut scopes = app.secrets.lock();
    let secrets = scopes.get_mut(&scope).ok_or_else(|| no_scope(&scope))?;
    if !secrets.contains_key(&key) && secrets.len() >= MAX_SECRETS_PER_SCOPE {
        return Err(limit_exceeded(format!(
            "The maximum number of secrets ({MAX_SECRETS_PER_SCOPE}) in scope {scope} has been reached."
        )));
    }
    let last_updated_ms = chrono::Utc::now().timestamp_millis();
    secrets.insert(
        key,
        Secret {
            value,
            last_updated_ms,
        },
    );
    Ok(Json(json!({})))
}

pub(crate) async fn get(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
) -> Reply {
    slowly(&app, || get_now(&app, &query)).await
}

fn get_now(app: &App, query: &HashMap<String, String>) -> Reply {
    let scope = required(query.get("scope").cloned(), "scope")?;
    let key = required(query.get("key").cloned(), "key")?;
    let scopes = app.secrets.lock();
    let secret = scopes
        .get(&scope)
        .ok_or_else(|| no_scope(&scope))?
        .get(&key)
        .ok_or_else(|| no_secret(&scope, &key))?;
    Ok(Json(
        json!({"key": key, "value": STANDARD.encode(&secret.value)}),
    ))
}

pub(crate) async fn list(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
) -> Reply {
    slowly(&app, || list_now(&app, &query)).await
}

fn list_now(app: &App, query: &HashMap<String, String>) -> Reply {
    let scope = required(query.get("scope").cloned(), "scope")?;
    let scopes = app.secrets.lock();
    let secrets: Vec<Value> = scopes
        .get(&scope)
        .ok_or_else(|| no_scope(&scope))?
        .iter()
        .map(|(key, secret)| json!({"key": key, "last_updated_timestamp": secret.last_updated_ms}))
        .collect();
    Ok(Json(non_empty("secrets", secrets)))
}

pub(crate) async fn delete(State(app): State<Arc<App>>, ApiJson(body): ApiJson<KeyBody>) -> Reply {
    slowly(&app, || delete_now(&app, body)).await
}

fn delete_now(app: &App, body: KeyBody) -> Reply {
    let scope = required(body.scope, "scope")?;
    let key = required(body.key, "key")?;
    let mut scopes = app.secrets.lock();
    let secrets = scopes.get_mut(&scope).ok_or_else(|| no_scope(&scope))?;
    secrets
        .remove(&key)
        .ok_or_else(|| no_secret(&scope, &key))?;
    Ok(Json(json!({})))
}

/// Runs a secret call's effect between the two halves of the injected latency
/// ([`crate::Faults::secrets_latency`]), so it lands in the middle of the call as on a
/// remote service.
async fn slowly(app: &App, effect: impl FnOnce() -> Reply) -> Reply {
    let half = app.faults.secrets_latency() / 2;
    if !half.is_zero() {
        tokio::time::sleep(half).await;
    }
    let reply = effect();
    if !half.is_zero() {
        tokio::time::sleep(half).await;
    }
    reply
}

fn required(value: Option<String>, field: &str) -> Result<String, ErrorReply> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ErrorReply::missing(field))
}

fn valid_name(value: Option<String>, field: &str) -> Result<String, ErrorReply> {
    let name = required(value, field)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
        return Err(ErrorReply::invalid_parameter(format!(
            "Invalid {field} name '{name}': it must consist of alphanumeric characters, dashes, underscores, and periods, and may not exceed {MAX_NAME_LEN} characters."
        )));
    }
    Ok(name)
}

fn no_scope(scope: &str) -> ErrorReply {
    ErrorReply::not_found(format!("Scope {scope} does not exist!"))
}

fn no_secret(scope: &str, key: &str) -> ErrorReply {
    ErrorReply::not_found(format!(
        "Secret does not exist with scope: {scope} and key: {key}"
    ))
}

fn limit_exceeded(message: String) -> ErrorReply {
    ErrorReply::new(StatusCode::BAD_REQUEST, "RESOURCE_LIMIT_EXCEEDED", message)
}

fn non_empty(field: &str, items: Vec<Value>) -> Value {
    if items.is_empty() {
        json!({})
    } else {
        json!({ field: items })
    }
}
