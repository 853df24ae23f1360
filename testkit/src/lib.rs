//! Test support shared by every test tree of the workspace and the benchmarks: the
//! test workspace's credentials, an emulator started with them, the environment of a
//! gateway in front of it, waiting for a condition, temporary directories and the
//! `lakegate` binary as a process ([`LakegateProcess`]).
//!
//! Two parts are behind features, so that a crate's tests build only what they use:
//! `databricks` ([`workspace`]: clients of the Databricks client crate for the
//! emulator, reading a table back), and `gateway` ([`gateway`]: an in-process gateway
//! built by name with [`gateway::Harness::builder`], and requests to it). `gateway`
//! depends on the `lakegate` crate, which dev-depends on this one: cargo allows that
//! cycle for tests and benchmarks, which link the same `lakegate` library.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lakegate_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

pub use tempfile::TempDir;

#[cfg(feature = "gateway")]
pub mod gateway;
mod process;
#[cfg(feature = "databricks")]
pub mod workspace;

pub use process::LakegateProcess;

/// The client id of the test workspace's service principal.
pub const SP_ID: &str = "lakegate-test-sp";
/// The secret of [`SP_ID`]; tests check that it is never logged.
pub const SP_SECRET: &str = "sp-secret-do-not-print";
/// A personal access token the test workspace accepts.
pub const PAT: &str = "dapi-test-token-do-not-print";
/// The readings table a test gateway writes.
pub const TABLE: &str = "main.lakegate.readings";

/// A workspace that knows the test service principal ([`SP_ID`]) and [`PAT`].
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        service_principals: vec![(SP_ID.into(), SP_SECRET.into())],
        tokens: vec![PAT.into()],
        ..EmulatorConfig::default()
    }
}

/// Starts an in-process emulator on a loopback port; panics if it cannot.
pub async fn start_emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

/// A builder of plain HTTP clients. reqwest is built with `rustls-no-provider`
/// (the workspace's feature set), so building a client panics unless a crypto
/// provider is installed first: this installs ring's, if none is yet.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A plain HTTP client with reqwest's defaults (see [`http_client_builder`]).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("an HTTP client")
}

/// An OAuth access token for the test service principal from the workspace at `url`.
pub async fn fetch_token(http: &reqwest::Client, url: &str) -> String {
    let response = http
        .post(format!("{url}/oidc/v1/token"))
        .basic_auth(SP_ID, Some(SP_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// The environment of a gateway in front of `emulator`: its host, the test service
/// principal, its warehouse, [`TABLE`], the device registry at `registry_file`
/// (reloaded every second), 50 ms flushes and a loopback listener. `overrides`
/// replace or add variables.
pub fn gateway_env(
    emulator: &Emulator,
    registry_file: &Path,
    overrides: &[(&str, &str)],
) -> HashMap<String, String> {
    let defaults = [
        ("DATABRICKS_HOST", emulator.url()),
        ("DATABRICKS_CLIENT_ID", SP_ID.into()),
        ("DATABRICKS_CLIENT_SECRET", SP_SECRET.into()),
        ("DATABRICKS_WAREHOUSE_ID", emulator.warehouse_id().into()),
        ("LAKEGATE_TABLE", TABLE.into()),
        (
            "LAKEGATE_DEVICE_KEYS_FILE",
            registry_file.display().to_string(),
        ),
        ("LAKEGATE_KEYS_REFRESH_SECS", "1".into()),
        ("LAKEGATE_LINGER_MS", "50".into()),
        ("LAKEGATE_LISTEN_ADDR", "127.0.0.1".into()),
    ];
    let overrides = overrides
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()));
    defaults
        .into_iter()
        .chain(overrides)
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// Looks at `observe` every `every` until `done` holds for what it saw, for at most
/// `within`: `Ok` with the observation that satisfied `done`, or `Err` with the last
/// one when time ran out. It looks at least once, and once more after `within`.
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut observe: impl AsyncFnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let started = Instant::now();
    loop {
        let seen = observe().await;
        if done(&seen) {
            return Ok(seen);
        }
        if started.elapsed() >= within {
            return Err(seen);
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until `condition` holds, looking every 20 ms; fails the test, naming `what`,
/// after `within`.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let waited = poll(
        within,
        Duration::from_millis(20),
        async || condition(),
        |holds| *holds,
    );
    assert!(waited.await.is_ok(), "timed out waiting for {what}");
}

/// [`eventually`] for a condition that awaits (a request, a query), looking every 100 ms.
pub async fn eventually_async(within: Duration, what: &str, condition: impl AsyncFnMut() -> bool) {
    let waited = poll(within, Duration::from_millis(100), condition, |holds| {
        *holds
    });
    assert!(waited.await.is_ok(), "timed out waiting for {what}");
}

/// A fresh temporary directory, removed with everything in it when dropped: keep it
/// alive for as long as anything (a gateway, a browser, an emulator) uses it.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("lakegate-test-")
        .tempdir()
        .expect("a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_gives_the_first_observation_that_is_done_or_the_last_one() {
        let mut seen = 0;
        let counting = async || {
            seen += 1;
            seen
        };
        let every = Duration::from_millis(1);
        let done = poll(Duration::from_secs(5), every, counting, |n| *n == 3).await;
        assert_eq!(done, Ok(3));
        let never = poll(Duration::from_millis(30), every, async || 7, |_| false).await;
        assert_eq!(never, Err(7));
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for nothing")]
    async fn eventually_names_what_it_waited_for() {
        eventually(Duration::from_millis(50), "nothing", || false).await;
    }

    #[tokio::test]
    async fn gateway_env_takes_overrides_and_temp_dirs_go_when_dropped() {
        let emulator = start_emulator(emulator_config()).await;
        let dir = temp_dir();
        let registry = dir.path().join("devices.json");
        let env = gateway_env(&emulator, &registry, &[("LAKEGATE_LINGER_MS", "7")]);
        assert_eq!(env["DATABRICKS_HOST"], emulator.url());
        assert_eq!(env["DATABRICKS_CLIENT_SECRET"], SP_SECRET);
        assert_eq!(env["LAKEGATE_LINGER_MS"], "7");
        assert_eq!(
            env["LAKEGATE_DEVICE_KEYS_FILE"],
            registry.display().to_string()
        );
        let token = fetch_token(&http_client(), &emulator.url()).await;
        assert!(!token.is_empty());
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
