//! The emulator's shared state: one [`App`] holding every store, and the [`BaseUrl`]
//! extractor. The stores are leaves (`tokens.rs`, `secrets.rs`, `statements.rs`,
//! `links.rs`, `faults.rs`) that know nothing of the handlers above them.

mod faults;
mod links;
mod secrets;
mod statements;
mod tokens;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

pub(crate) use self::faults::FaultState;
pub(crate) use self::links::{LinkRefusal, LinkStore};
pub(crate) use self::secrets::{Secret, SecretStore};
pub(crate) use self::statements::{Phase, Statement, StatementStore};
pub(crate) use self::tokens::TokenStore;
use crate::config::EmulatorConfig;
use crate::sql::Engine;
use crate::stats::Counters;

pub(crate) struct App {
    /// The URL the emulator was started on; requests use their `Host` instead when they have one.
    pub url: String,
    pub warehouse_id: String,
    pub rows_per_chunk: usize,
    pub tokens: TokenStore,
    pub secrets: SecretStore,
    pub statements: StatementStore,
    pub links: LinkStore,
    pub engine: Engine,
    pub faults: FaultState,
    pub stats: Counters,
}

impl App {
    pub(crate) fn new(config: EmulatorConfig, engine: Engine, url: String) -> Self {
        Self {
            url,
            warehouse_id: config.warehouse_id,
            rows_per_chunk: config.rows_per_chunk,
            tokens: TokenStore::new(
                &config.service_principals,
                &config.tokens,
                config.token_lifetime,
            ),
            secrets: SecretStore::default(),
            statements: StatementStore::default(),
            links: LinkStore::new(config.link_lifetime),
            engine,
            faults: FaultState::new(config.faults),
            stats: Counters::default(),
        }
    }
}

/// The workspace URL as the caller sees it (from `Host`), for links and OIDC metadata.
pub(crate) struct BaseUrl(pub String);

impl FromRequestParts<Arc<App>> for BaseUrl {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let host = host.or_else(|| parts.uri.authority().map(|a| a.as_str()));
        Ok(BaseUrl(host.map_or_else(
            || app.url.clone(),
            |host| format!("http://{host}"),
        )))
    }
}
