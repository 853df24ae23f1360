//! The read API under `/api/`: who may read (the `Reader` extractor) and thin
//! handlers over `crate::query`. `/api/stats` answers from memory, once the reader has
//! passed the same rules as on the other routes.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use chrono::Utc;
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::failed_authentication;
use super::error::HttpError;
use super::state::{App, AppState, Backend};
use crate::config::ReadIdentity;
use crate::databricks;
use crate::devices::{KeyHash, KeyKind};
use crate::error_code::ErrorCode;
use crate::ingest::RejectReason;
use crate::query::{
    Described, DeviceList, Latest, LatestParams, LatestQuery, Series, SeriesParams, SeriesQuery,
    TableReader,
};
use crate::rate_limits::Credential;

/// Set by the Databricks Apps proxy once it has signed the user in.
const FORWARDED_EMAIL: &str = "x-forwarded-email";
const FORWARDED_USER: &str = "x-forwarded-user";
/// The signed-in user's token, with on-behalf-of-user authorization.
const FORWARDED_ACCESS_TOKEN: &str = "x-forwarded-access-token";

/// The view of readers whose queries run as the app.
const APP_VIEW: &str = "app";

/// Someone allowed to read, and the client their queries run with.
pub(super) struct Reader {
    client: databricks::Client,
    /// Whose view of the table the client sees: `app`, or that of the user's token
    /// (Unity Catalog may show users different rows), for caching answers.
    view: Arc<str>,
}

impl Reader {
    fn table<'a>(&self, app: &'a App) -> TableReader<'a> {
        TableReader::new(self.client.statements(), &app.config.read.source)
    }

    /// Whether the queries run with a token the proxy forwarded (the signed-in user's),
    /// which only the workspace can tell good from made up.
    fn runs_as_user(&self) -> bool {
        &*self.view != APP_VIEW
    }

    /// The device list this reader sees: served from memory while fresh (per view, so
    /// per user token), else queried with the reader's own credentials.
    async fn device_list(&self, app: &App) -> Result<Arc<DeviceList>, HttpError> {
        let settings = &app.config.read;
        let fetch = async {
            let _slot = app.reads.slot().await?;
            let since = Utc::now() - settings.device_list_window;
            let table = self.table(app);
            let list = table.devices(Utc::now(), since, settings.max_devices).await;
            list.map_err(query_failed)
        };
        app.reads.device_list(&self.view, fetch).await
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, HttpError> {
        let (reader, who) = authenticate_reader(parts, app)?;
        app.rate_limits.admit_reader(&who)?;
        Ok(reader)
    }
}

/// The reader, and who it is for its rate limit (a token's hash, a user).
fn authenticate_reader(parts: &Parts, app: &AppState) -> Result<(Reader, Arc<str>), HttpError> {
    // A relay routes no reads; this only makes the type say so.
    let Backend::Table(client) = &app.backend else {
        return Err(HttpError::new(
            ErrorCode::NotFound,
            "a site relay serves no reads; read from the gateway",
        ));
    };
    let headers = &parts.headers;
    let settings = &app.config.read;
    // Only the Apps proxy may vouch for a user: elsewhere anyone could send these.
    if settings.apps_proxy_auth {
        let email = header_text(headers, FORWARDED_EMAIL);
        let user = header_text(headers, FORWARDED_USER);
        if email.is_some() || user.is_some() {
            return signed_in_reader(app, client, headers, email, user);
        }
    }
    if settings.reader_tokens.is_empty() {
        return Err(HttpError::new(
            ErrorCode::ReadApiDisabled,
            "the read API is off: set LAKEGATE_READER_TOKENS to the hash of a reader token \
             (`lakegate keys new-reader`), or run behind the Databricks Apps proxy",
        ));
    }
    // The token first: a valid one is never held up by its address's failures.
    if let Some(hash) = bearer_token(headers)
        .map(KeyHash::of)
        .filter(|hash| settings.reader_tokens.contains(hash))
    {
        let reader = Reader {
            client: client.clone(),
            view: APP_VIEW.into(),
        };
        return Ok((reader, format!("token:{hash}").into()));
    }
    let message = match bearer_token(headers).and_then(KeyKind::of) {
        // A device's or relay's key pasted as a reader token: say what it is.
        Some(kind @ (KeyKind::Device | KeyKind::Relay)) => format!(
            "this is {}, for X-API-Key on /ingest: the read API takes a reader token \
             (`lakegate keys new-reader`) as Authorization: Bearer <token>",
            kind.describe()
        ),
        Some(KeyKind::LocalWorkspace) => format!(
            "this is {}, for the workspace's API: the read API takes a reader token \
             (`lakegate keys new-reader`) as Authorization: Bearer <token>",
            KeyKind::LocalWorkspace.describe()
        ),
        _ => "a valid reader token is required: Authorization: Bearer <token>".into(),
    };
    Err(failed_authentication(
        parts,
        app,
        Credential::Reader,
        HttpError::new(ErrorCode::Unauthorized, message),
    ))
}

/// A user the Apps proxy signed in. Every principal that may use the app passes
/// the proxy (the fleet's device principal too), so being signed in grants
/// nothing by itself: the user's own token reads, or the app's for listed readers.
fn signed_in_reader(
    app: &AppState,
    client: &databricks::Client,
    headers: &HeaderMap,
    email: Option<&str>,
    user: Option<&str>,
) -> Result<(Reader, Arc<str>), HttpError> {
    let settings = &app.config.read;
    let who: Arc<str> = format!("user:{}", email.or(user).unwrap_or_default()).into();
    let refuse = |outcome: &'static str, error: HttpError| {
        app.metrics
            .auth_failure(Credential::Reader.as_str(), outcome);
        Err(error)
    };
    match settings.identity {
        // Never the app's own identity: Unity Catalog decides what the user sees.
        ReadIdentity::User => match header_text(headers, FORWARDED_ACCESS_TOKEN) {
            Some(token) => {
                // The user's view is what the token may read: cached per token.
                let reader = Reader {
                    client: client.with_token(SecretString::from(token)),
                    view: format!("token:{}", KeyHash::of(token)).into(),
                };
                Ok((reader, who))
            }
            None => refuse(
                "no_user_token",
                HttpError::new(
                    ErrorCode::NoUserToken,
                    "reads run as the signed-in user, but the proxy sent no user token: \
                     enable on-behalf-of-user authorization for the app",
                ),
            ),
        },
        ReadIdentity::App if settings.readers.admits(email, user) => {
            let reader = Reader {
                client: client.clone(),
                view: APP_VIEW.into(),
            };
            Ok((reader, who))
        }
        ReadIdentity::App => refuse(
            "not_a_reader",
            HttpError::new(
                ErrorCode::NotAReader,
                "the signed-in user is not in LAKEGATE_READERS",
            ),
        ),
    }
}

/// A header's text, when present, visible ASCII and not blank.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|text| !text.is_empty())
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(super) async fn devices(
    State(app): State<AppState>,
    reader: Reader,
) -> Result<Json<DeviceList>, HttpError> {
    let mut list = DeviceList::clone(&*reader.device_list(&app).await?);
    for device in &mut list.devices {
        device.rejected_since_start = app.metrics.stats.rejected_by(&device.device_id);
    }
    Ok(Json(list))
}

/// The `{device_id}` of the path and the query parameters of a per-device route;
/// malformed ones are a JSON 400.
pub(super) struct DeviceRequest<P> {
    device_id: String,
    params: P,
}

impl<P: DeserializeOwned + Described + Send> FromRequestParts<AppState> for DeviceRequest<P> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, HttpError> {
        let Path(device_id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(bad_request)?;
        // The deserializer's words name Rust types; the reader needs the parameters.
        let Query(params) = Query::<P>::from_request_parts(parts, app)
            .await
            .map_err(|_| {
                HttpError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "the query string cannot be read: a parameter is given more than once or \
                         cannot be decoded; this route takes {}",
                        P::parameters()
                    ),
                )
            })?;
        Ok(DeviceRequest { device_id, params })
    }
}

pub(super) async fn series(
    State(app): State<AppState>,
    reader: Reader,
    DeviceRequest { device_id, params }: DeviceRequest<SeriesParams>,
) -> Result<Json<Series>, HttpError> {
    let query = SeriesQuery::new(device_id, params, Utc::now(), app.config.read.max_points)?;
    let _slot = app.reads.slot().await?;
    let series = reader
        .table(&app)
        .series(query)
        .await
        .map_err(query_failed)?;
    Ok(Json(series))
}

pub(super) async fn latest(
    State(app): State<AppState>,
    reader: Reader,
    DeviceRequest { device_id, params }: DeviceRequest<LatestParams>,
) -> Result<Json<Latest>, HttpError> {
    let query = LatestQuery::new(device_id, params)?;
    let _slot = app.reads.slot().await?;
    let latest = reader
        .table(&app)
        .latest(query, app.config.body.max_metrics)
        .await
        .map_err(query_failed)?;
    Ok(Json(latest))
}

/// `GET /api/stats`: this gateway process since it started.
#[derive(Debug, Serialize)]
pub(super) struct Stats {
    uptime_secs: u64,
    readings_accepted_total: u64,
    readings_per_sec_1m: f64,
    rejected_total: u64,
    rejected_by_reason: BTreeMap<&'static str, u64>,
    queue_rows: usize,
    batches_committed: u64,
    batch_failures: u64,
    rows_dead_lettered: u64,
    batch_latency_ms_avg: f64,
    batch_latency_ms_last: f64,
    devices_in_registry: usize,
}

pub(super) async fn stats(
    State(app): State<AppState>,
    reader: Reader,
) -> Result<Json<Stats>, HttpError> {
    // Stats run no SQL, so a forwarded user token would be believed unchecked: it must
    // first read what `/api/devices` reads (cached per token), so the workspace and Unity
    // Catalog decide here as they do on every other read route.
    if reader.runs_as_user() {
        reader.device_list(&app).await?;
    }
    let metrics = &app.metrics;
    let rejected_by_reason =
        metrics.rejected_by_reason(RejectReason::ALL.iter().map(RejectReason::as_str));
    let batches = metrics.stats.batch_latency();
    Ok(Json(Stats {
        uptime_secs: metrics.stats.uptime().as_secs(),
        readings_accepted_total: metrics.readings_accepted.get(),
        readings_per_sec_1m: metrics.stats.accepted_per_sec(),
        rejected_total: rejected_by_reason.values().sum(),
        rejected_by_reason,
        queue_rows: app.queue.depth(),
        batches_committed: batches.committed,
        batch_failures: metrics.batch_failures(),
        rows_dead_lettered: metrics.rows_dead_lettered.get(),
        batch_latency_ms_avg: batches.avg_ms(),
        batch_latency_ms_last: batches.last_ms(),
        devices_in_registry: app.keys.current().device_count(),
    }))
}

fn bad_request(err: impl Display) -> HttpError {
    HttpError::new(ErrorCode::InvalidParameter, err.to_string())
}

/// Logged here; the reader gets a generic answer.
fn query_failed(err: databricks::Error) -> HttpError {
    tracing::error!(error = %err, "read query failed");
    HttpError::new(
        ErrorCode::QueryFailed,
        "the warehouse could not answer the query; the error has been logged",
    )
}
