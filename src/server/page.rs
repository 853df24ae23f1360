//! The fleet page: `/` and `/static/{file}`, served from files embedded in the
//! binary. The page holds no data (it reads the API with the viewer's
//! credentials), so these routes need no authentication.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::HttpError;
use crate::error_code::ErrorCode;

/// Only our own files and our own API: no inline script or style, no third party.
/// `data:` images are not needed (the icon is a file), framing is left to the
/// platform (Databricks may embed apps).
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../static/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../static/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../static/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../static/favicon.svg"),
    },
];

/// `GET /`: the page itself.
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /static/{file}`: the page's script, style sheet and icon.
pub(super) async fn static_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|asset| asset.name == file) {
        Some(index) => serve(index, &headers),
        None => {
            HttpError::new(ErrorCode::NotFound, format!("no static file {file:?}")).into_response()
        }
    }
}

/// The ETag of every asset, computed once from its content.
fn etag(index: usize) -> &'static HeaderValue {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    &ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.body.as_bytes());
                let tag = format!("\"{}\"", hex::encode(&digest[..12]));
                HeaderValue::from_str(&tag).expect("hex is a valid header value")
            })
            .collect()
    })[index]
}

/// The asset `ASSETS[index]`, or 304 when the browser's copy is current.
fn serve(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = etag(index);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = match fresh {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.clone());
    // Revalidate every time: a new deployment is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_name_and_etag() {
        for (i, asset) in ASSETS.iter().enumerate() {
            assert!(!asset.body.is_empty(), "{} is empty", asset.name);
            for (j, other) in ASSETS.iter().enumerate().skip(i + 1) {
                assert_ne!(asset.name, other.name);
                assert_ne!(etag(i), etag(j));
            }
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let html = ASSETS[0].body;
        for needle in ["static/app.js", "static/style.css", "static/favicon.svg"] {
            assert!(html.contains(needle), "index.html misses {needle}");
        }
        for asset in ASSETS {
            // The SVG namespace is a name, not an address that is fetched.
            let body = asset.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} refers to another origin",
                asset.name
            );
        }
    }

    #[tokio::test]
    async fn unknown_files_are_the_json_404() {
        let response = static_file(Path("secrets.txt".into()), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = static_file(Path("app.js".into()), HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag(1).clone());
        let response = static_file(Path("app.js".into()), headers).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    }
}
