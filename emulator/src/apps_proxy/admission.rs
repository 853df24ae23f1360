//! Who may pass: a live Databricks OAuth token of a principal with CAN USE on the app.

use axum::http::{HeaderMap, StatusCode, header};

use super::config::AppsProxyConfig;
use crate::error::ErrorReply;
use crate::identity::TokenOwner;
use crate::state::TokenStore;

/// An admitted caller. Holds the presented token, so it is never printed.
pub(super) struct Caller {
    /// The token the caller presented.
    pub token: String,
    /// The service principal's application id or the user's email.
    pub name: String,
}

/// Admits the bearer of `headers`' token, or answers 401 (no token, an unknown or
/// expired one, a personal access token) or 403 (no CAN USE on the app).
pub(super) fn admit(
    tokens: &TokenStore,
    config: &AppsProxyConfig,
    headers: &HeaderMap,
) -> Result<Caller, ErrorReply> {
    let token = bearer(headers).ok_or_else(|| {
        ErrorReply::unauthenticated(
            "Credential was not sent or was of an unsupported type for this API: \
             send a Databricks OAuth token as Authorization: Bearer.",
        )
    })?;
    let grant = tokens
        .lookup(token)
        .ok_or_else(|| ErrorReply::unauthenticated("Invalid access token."))?;
    let name = match &grant.owner {
        TokenOwner::PersonalAccessToken => {
            return Err(ErrorReply::unauthenticated(
                "Personal access tokens are not accepted by Databricks Apps: \
                 use a Databricks OAuth token.",
            ));
        }
        owner => owner.name().unwrap_or_default().to_owned(),
    };
    if !may_use(config.can_use.as_deref(), &grant.owner) {
        return Err(ErrorReply::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!("{} does not have CAN USE on this app.", grant.owner),
        ));
    }
    Ok(Caller {
        token: token.to_owned(),
        name,
    })
}

/// A service principal is listed by application id (exactly), a user by email (in any
/// case); no list admits everyone.
fn may_use(can_use: Option<&[String]>, owner: &TokenOwner) -> bool {
    let Some(listed) = can_use else {
        return true;
    };
    listed.iter().any(|entry| match owner {
        TokenOwner::ServicePrincipal(id) => entry == id,
        TokenOwner::User(email) => entry.eq_ignore_ascii_case(email),
        TokenOwner::PersonalAccessToken => false,
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
