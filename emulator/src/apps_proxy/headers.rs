//! The headers the app gets: the client's, less credentials, hop-by-hop headers and
//! anything claiming an identity or address, plus the proxy's own.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

/// Per-connection headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(super) const FORWARDED_HOST: &str = "x-forwarded-host";
pub(super) const FORWARDED_USER: &str = "x-forwarded-user";
pub(super) const FORWARDED_EMAIL: &str = "x-forwarded-email";
pub(super) const FORWARDED_PREFERRED_USERNAME: &str = "x-forwarded-preferred-username";
pub(super) const FORWARDED_ACCESS_TOKEN: &str = "x-forwarded-access-token";
pub(super) const REAL_IP: &str = "x-real-ip";
pub(super) const REQUEST_ID: &str = "x-request-id";

/// Who called, as the proxy tells the app.
pub(super) struct Identity<'a> {
    /// The service principal's application id or the user's email.
    pub name: &'a str,
    pub client_ip: IpAddr,
    /// With user authorization: a token of the caller's identity.
    pub access_token: Option<&'a str>,
}

/// The headers for the app's request.
pub(super) fn to_app(request: &Parts, identity: &Identity<'_>, forward_custom: bool) -> HeaderMap {
    let incoming = &request.headers;
    let named_by_connection = connection_options(incoming);
    let mut headers = HeaderMap::new();
    for (name, value) in incoming {
        let custom = name.as_str().starts_with("x-");
        let dropped = is_hop_by_hop(name)
            || named_by_connection.contains(name.as_str())
            || *name == header::AUTHORIZATION
            || *name == header::HOST
            || name.as_str().starts_with("x-forwarded-")
            || name == REAL_IP
            || name == REQUEST_ID
            || (custom && !forward_custom);
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    let host = incoming
        .get(header::HOST)
        .cloned()
        .or_else(|| HeaderValue::from_str(request.uri.authority()?.as_str()).ok());
    if let Some(host) = host {
        headers.insert(FORWARDED_HOST, host);
    }
    if let Ok(name) = HeaderValue::from_str(identity.name) {
        for header in [
            FORWARDED_USER,
            FORWARDED_EMAIL,
            FORWARDED_PREFERRED_USERNAME,
        ] {
            headers.insert(header, name.clone());
        }
    }
    if let Ok(ip) = HeaderValue::from_str(&identity.client_ip.to_string()) {
        headers.insert(REAL_IP, ip);
    }
    headers.insert(REQUEST_ID, request_id(incoming));
    if let Some(token) = identity.access_token
        && let Ok(mut token) = HeaderValue::from_str(token)
    {
        token.set_sensitive(true);
        headers.insert(FORWARDED_ACCESS_TOKEN, token);
    }
    headers
}

/// Removes per-connection headers from the app's response.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_options(headers) {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Header names listed in `Connection`, lowercased: per-connection too.
fn connection_options(headers: &HeaderMap) -> HashSet<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The client's one non-empty `X-Request-Id`, otherwise a new UUID.
fn request_id(incoming: &HeaderMap) -> HeaderValue {
    let mut sent = incoming.get_all(REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(id), None) if !id.as_bytes().trim_ascii().is_empty() => id.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-0000-0000-000000000000")),
    }
}
