//! External links: presigned-style URLs (`{url}/external/{token}`) for EXTERNAL_LINKS results.
//!
//! They behave like cloud storage rather than the workspace: a request that carries an
//! `Authorization` header is refused with 400 (as S3 refuses a second auth mechanism), the
//! headers listed in `http_headers` are required (403 otherwise), and an expired link answers 403
//! with an XML error body.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::{App, LinkRefusal};
use crate::stats::bump;

/// The header every link requires, listed in the link's `http_headers`.
pub(super) const KEY_HEADER: &str = "x-emulator-link-key";

/// `GET /external/{token}`
pub(crate) async fn download(
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
    let key = headers.get(KEY_HEADER).and_then(|v| v.to_str().ok());
    let (result, chunk) = match app.links.resolve(&token, key) {
        Ok(found) => found,
        Err(LinkRefusal::Unknown) => {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request has expired or the link is invalid.",
            );
        }
        Err(LinkRefusal::Expired) => {
            return storage_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request has expired.",
            );
        }
        Err(LinkRefusal::WrongKey) => {
            return storage_error(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature does not match: send the link's http_headers.",
            );
        }
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
