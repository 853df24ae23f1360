//! Device authentication as an extractor: a handler that takes
//! `AuthenticatedDevice` only runs for a known, enabled device's key, and the
//! key is checked before the body is read.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::devices::{AuthFailure, Device};
use crate::limits::client_address;

pub const API_KEY_HEADER: &str = "x-api-key";

pub struct AuthenticatedDevice(pub Device);

impl FromRequestParts<AppState> for AuthenticatedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let client = client_of(parts, app);
        // Refuse addresses that keep guessing before looking at their key.
        app.limits.check_auth_allowed(client)?;
        let key = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        match app.keys.current().authenticate(key) {
            Ok(device) => Ok(AuthenticatedDevice(device)),
            Err(AuthFailure::UnknownKey) => {
                app.limits.record_auth_failure(client);
                Err(ApiError::unauthorized())
            }
            Err(AuthFailure::Disabled { device_id }) => Err(ApiError::device_disabled(&device_id)),
        }
    }
}

/// The client's address: the peer's, or behind a trusted proxy the one it forwarded.
pub(super) fn client_of(parts: &Parts, app: &AppState) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    client_address(&parts.headers, peer, app.config.trust_proxy_headers)
}
