//! External links: presigned-style URLs (`{url}/external/{token}`) for EXTERNAL_LINKS results.
//!
//! They behave like cloud storage rather than the workspace: a request that carries an
//! `Authorization` header is refused with 400 (as S3 refuses a second auth mechanism), the
//! headers listed in `http_headers` are required (403 otherwise), and an expired link answers 403
//! with an XML error body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};

use super::results::ResultSet;
use crate::app::App;
use crate::stats::bump;

/// The header every link requires, listed in the link's `http_headers`.
pub const KEY_HEADER: &str = "x-emulator-link-key";

pub struct LinkStore {
    lifetime: Duration,
    links: Mutex<HashMap<String, Link>>,
}

struct Link {
    result: Arc<ResultSet>,
    chunk: usize,
    key: String,
    expires: Instant,
}

/// A link as the response describes it.
pub struct Issued {
    pub path: String,
    pub key: String,
    pub expiration: DateTime<Utc>,
}

impl LinkStore {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh link to one chunk; every response hands out a new one, as Databricks does.
    pub fn issue(&self, result: Arc<ResultSet>, chunk: usize) -> Issued {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let key = uuid::Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let expires = now + self.lifetime;
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired links would only answer 403, which unknown ones do too.
        links.retain(|_, link| link.expires > now);
        links.insert(
            token.clone(),
            Link {
                result,
                chunk,
                key: key.clone(),
                expires,
            },
        );
        let expiration = Utc::now() + self.lifetime;
        Issued {
            path: format!("/external/{token}"),
            key,
            expiration,
        }
    }
}

impl Issued {
    pub fn expiration_text(&self) -> String {
        self.expiration.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// `GET /external/{token}`
pub async fn download(
    State(app): State<Arc<App>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return storage_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the presigned URL may authenticate this request.",
        );
    }
    let (result, chunk) = {
        let links = app
            .links
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(link) = links.get(&token) else {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request has expired or the link is invalid.",
            );
        };
        if Instant::now() >= link.expires {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request has expired.",
            );
        }
        if headers.get(KEY_HEADER).and_then(|v| v.to_str().ok()) != Some(link.key.as_str()) {
            return storage_error(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature does not match: send the link's http_headers.",
            );
        }
        (Arc::clone(&link.result), link.chunk)
    };
    bump(&app.stats.link_downloads);
    let body = result.chunks[chunk].bytes();
    ([(header::CONTENT_TYPE, result.format.content_type())], body).into_response()
}

fn storage_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}
