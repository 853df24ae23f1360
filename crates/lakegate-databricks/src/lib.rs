//! Our Databricks workspace client, behaving like the official SDKs: unified
//! configuration, PAT or OAuth M2M with a shared token cache, retries on 429 and
//! 503 honouring `Retry-After`, Secrets and SQL Statement Execution.

mod auth;
mod config;
mod error;
mod http;
#[cfg(feature = "sql")]
mod results;
mod retry;
mod secrets;
#[cfg(feature = "sql")]
mod statements;
mod transport;
mod wire;

use std::sync::Arc;

use secrecy::SecretString;

pub use auth::{OAuthM2m, OAuthSettings, Pat, TokenFetches, TokenSource};
pub use config::{AuthType, Config, ConfigError, Credentials, Settings, normalize_host};
pub use error::{Error, ErrorResponse, FailureKind, StatementError};
pub use http::{ApiClient, Call};
#[cfg(feature = "sql")]
pub use results::{Column, Manifest, ResultRow, StatementResult, Value};
pub use retry::{MAX_RETRY_AFTER, RetryPolicy, Schedule, parse_retry_after};
pub use secrets::{SecretMetadata, Secrets};
#[cfg(feature = "sql")]
pub use statements::{Param, StatementRequest, Statements};
pub use transport::http_client;
pub use wire::{Disposition, Format, OnWaitTimeout, StatementState};

/// Entry point: one per workspace, cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    api: ApiClient,
    tokens: Arc<dyn TokenSource>,
    warehouse_id: Option<String>,
}

impl Client {
    pub fn new(config: &Config) -> Result<Client, Error> {
        let http = transport::http_client()?;
        let tokens: Arc<dyn TokenSource> = match &config.credentials {
            Credentials::Pat { token } => Arc::new(Pat::new(token.clone())),
            Credentials::OAuthM2m {
                client_id,
                client_secret,
            } => Arc::new(OAuthM2m::new(
                http.clone(),
                &config.host,
                client_id,
                client_secret.clone(),
                config.oauth.clone(),
                config.http_timeout,
            )),
        };
        let api = ApiClient::new(
            http,
            &config.host,
            tokens.clone(),
            config.retry.clone(),
            config.http_timeout,
        );
        Ok(Client {
            api,
            tokens,
            warehouse_id: config.warehouse_id.clone(),
        })
    }

    /// A client for the same workspace and warehouse that authenticates with `token`
    /// (e.g. a user's, for on-behalf-of-user queries), sharing this client's connections.
    pub fn with_token(&self, token: SecretString) -> Client {
        let tokens: Arc<dyn TokenSource> = Arc::new(Pat::new(token));
        Client {
            api: self.api.with_tokens(tokens.clone()),
            tokens,
            warehouse_id: self.warehouse_id.clone(),
        }
    }

    pub fn secrets(&self) -> Secrets {
        Secrets::new(self.api.clone())
    }

    #[cfg(feature = "sql")]
    pub fn statements(&self) -> Statements {
        Statements::new(self.api.clone(), self.warehouse_id.clone())
    }

    /// Token fetches of this client's token source.
    pub fn token_fetches(&self) -> TokenFetches {
        self.tokens.fetches()
    }

    /// For calls without a dedicated wrapper, and for the token source.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }
}
