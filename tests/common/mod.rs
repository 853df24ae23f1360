//! Shared setup: an in-process emulator and clients configured for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lakegate::databricks::{Client, Config, RetryPolicy, Settings};
use lakegate_emulator::{Emulator, EmulatorConfig};

pub const SP_ID: &str = "lakegate-test-sp";
pub const SP_SECRET: &str = "sp-secret-do-not-print";
pub const PAT: &str = "dapi-test-token-do-not-print";

pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        service_principals: vec![(SP_ID.into(), SP_SECRET.into())],
        tokens: vec![PAT.into()],
        ..EmulatorConfig::default()
    }
}

pub async fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

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

/// Waits until `condition` holds, failing the test after `within`.
pub async fn eventually(within: Duration, what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
