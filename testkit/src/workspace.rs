//! Clients of the Databricks client crate configured for an in-process emulator, and
//! reading a table back: for the client's own tests and the gateway's.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use lakegate_databricks::{Client, Config, RetryPolicy, Settings, StatementRequest, Value};
use lakegate_emulator::Emulator;

use crate::{PAT, SP_ID, SP_SECRET};

/// Retries fast enough for tests; Retry-After still wins when it is longer.
fn fast(policy: RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..policy
    }
}

/// Resolves explicit settings against an empty environment: no process
/// variables, no home directory, so no `~/.databrickscfg` either.
pub fn config(emulator: &Emulator, credentials: Settings) -> Config {
    let settings = Settings {
        host: Some(emulator.url()),
        warehouse_id: Some(emulator.warehouse_id().to_owned()),
        ..credentials
    };
    let mut config = Config::resolve(settings, &HashMap::new()).expect("valid config");
    config.http_timeout = Duration::from_secs(10);
    config.retry = fast(config.retry);
    config.oauth.retry = fast(config.oauth.retry);
    config
}

pub fn m2m(client_id: &str, client_secret: &str) -> Settings {
    Settings {
        client_id: Some(client_id.into()),
        client_secret: Some(client_secret.into()),
        ..Settings::default()
    }
}

pub fn pat(token: &str) -> Settings {
    Settings {
        token: Some(token.into()),
        ..Settings::default()
    }
}

pub fn m2m_client(emulator: &Emulator) -> Client {
    Client::new(&config(emulator, m2m(SP_ID, SP_SECRET))).unwrap()
}

pub fn pat_client(emulator: &Emulator) -> Client {
    Client::new(&config(emulator, pat(PAT))).unwrap()
}

/// A client of the workspace a gateway's environment ([`crate::gateway_env`]) names,
/// for reading back what the gateway wrote.
pub fn reader(env: &HashMap<String, String>) -> Client {
    Client::new(&Config::resolve(Settings::default(), env).expect("valid workspace settings"))
        .expect("a workspace client")
}

/// The number of rows in `table`.
pub async fn row_count(client: &Client, table: &str) -> anyhow::Result<i64> {
    let rows = client
        .statements()
        .execute(StatementRequest::new(format!(
            "SELECT count(*) FROM {table}"
        )))
        .await?
        .collect_rows()
        .await?;
    match rows.first().and_then(|row| row.first()) {
        Some(Value::Int(count)) => Ok(*count),
        other => bail!("count(*) returned {other:?}"),
    }
}
