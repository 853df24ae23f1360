//! Sender authentication as an extractor: a handler that takes
//! `AuthenticatedSender` only runs for the key of a known, enabled device or site
//! relay, and the key is checked before the body is read.
//!
//! The key is checked first: a valid key is never held up by failures from its
//! address (a site's NAT, a carrier gateway, the Apps proxy), only by its own
//! device's (or relay's) and the global limits. The address's failure budget slows
//! failures only. A device key and a relay key are one kind of credential: a key that
//! matches neither gets the same 401 whether it was missing or wrong.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::error::HttpError;
use super::state::AppState;
use crate::client_address::{address_block, client_address};
use crate::devices::{AuthFailure, KeyKind, Registry, Sender};
use crate::error_code::ErrorCode;
use crate::rate_limits::Credential;

pub(super) const API_KEY_HEADER: &str = "x-api-key";

/// Who sent the request, and the registry that said so: a relay's readings name their
/// devices, which are looked up in that same registry (a reload meanwhile does not
/// change what the request sees).
pub(super) struct AuthenticatedSender {
    pub sender: Sender,
    pub registry: Arc<Registry>,
}

impl FromRequestParts<AppState> for AuthenticatedSender {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, HttpError> {
        let key = sender_key(&parts.headers);
        let registry = app.keys.current();
        match registry.authenticate(key) {
            Ok(sender) => Ok(AuthenticatedSender { sender, registry }),
            Err(AuthFailure::UnknownKey) => {
                // The prefix says what was pasted here by mistake; it tells nothing
                // about the registry.
                let refusal = match KeyKind::of(key) {
                    Some(KeyKind::Reader) => HttpError::new(
                        ErrorCode::Unauthorized,
                        format!(
                            "this is {}: it goes in the read API's Authorization header; \
                             X-API-Key takes a device or relay key",
                            KeyKind::Reader.describe()
                        ),
                    ),
                    Some(KeyKind::LocalWorkspace) => HttpError::new(
                        ErrorCode::Unauthorized,
                        format!(
                            "this is {}, DATABRICKS_CLIENT_SECRET for `lakegate sql` and \
                             the SDKs; X-API-Key takes a device or relay key",
                            KeyKind::LocalWorkspace.describe()
                        ),
                    ),
                    _ => HttpError::unauthorized(),
                };
                Err(failed_authentication(
                    parts,
                    app,
                    Credential::Device,
                    refusal,
                ))
            }
            Err(AuthFailure::Disabled { device_id }) => {
                // Not its neighbours' failure budget, but its own device budget:
                // a disabled device cannot send without limit either.
                app.metrics
                    .auth_failure(Credential::Device.as_str(), "disabled");
                app.rate_limits.admit_disabled(&device_id)?;
                Err(HttpError::device_disabled(&device_id))
            }
            Err(AuthFailure::RelayDisabled { relay_id }) => {
                // The same for a relay: its own request budget, not its address's.
                app.metrics.auth_failure("relay", "disabled");
                app.rate_limits.admit_relay_request(&relay_id)?;
                Err(HttpError::relay_disabled(&relay_id))
            }
        }
    }
}

/// The key in `X-API-Key`, or else in `Authorization: Token <key>`, the header
/// InfluxDB's clients and Telegraf send (`POST /api/v2/write`).
fn sender_key(headers: &axum::http::HeaderMap) -> &str {
    if let Some(key) = headers.get(API_KEY_HEADER) {
        return key.to_str().unwrap_or_default();
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("token"))
        .map_or("", |(_, key)| key.trim())
}

/// A credential that matched nothing: charged to the failure budget of the
/// client's address, counted, and logged at most once a minute per address (the
/// address only, never what was sent). `refusal` is the answer while the budget
/// lasts; then 429 with `Retry-After`.
pub(super) fn failed_authentication(
    parts: &Parts,
    app: &AppState,
    kind: Credential,
    refusal: HttpError,
) -> HttpError {
    let client = client_of(parts, app);
    let verdict = app.rate_limits.auth_failed(kind, client);
    let outcome = match verdict {
        Ok(()) => "unknown_key",
        Err(_) => "blocked",
    };
    app.metrics.auth_failure(kind.as_str(), outcome);
    if let Some(unlogged) = app.rate_limits.failure_log_line(kind, client) {
        tracing::warn!(
            kind = kind.as_str(),
            client = %address_block(client),
            outcome,
            unlogged_since_last_line = unlogged,
            "failed authentication"
        );
    }
    match verdict {
        Ok(()) => refusal,
        Err(limit) => limit.into(),
    }
}

/// The client's address: the peer's, or behind a trusted proxy the one it forwarded.
pub(super) fn client_of(parts: &Parts, app: &AppState) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    client_address(&parts.headers, peer, &app.config.trusted_proxies)
}

/// Who a key belongs to, as `GET /api/whoami` tells its holder: a site relay checks its
/// key (and learns its patterns) at start-up with it, writing nothing.
#[derive(serde::Serialize)]
pub(super) struct KeyHolder {
    sender: &'static str,
    id: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Vec<String>>,
}

/// `GET /api/whoami`: the holder of the `X-API-Key`, or the same 401 as ingest.
pub(super) async fn whoami(
    AuthenticatedSender { sender, .. }: AuthenticatedSender,
) -> axum::Json<KeyHolder> {
    axum::Json(match sender {
        Sender::Device(device) => KeyHolder {
            sender: "device",
            id: device.id,
            devices: None,
        },
        Sender::Relay(relay) => KeyHolder {
            sender: "relay",
            devices: Some(relay.patterns()),
            id: relay.id,
        },
    })
}
