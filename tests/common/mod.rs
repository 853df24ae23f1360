//! Helpers built on lakegate's own types: clients configured for an in-process
//! emulator, reading a table back, and the `lakegate` binary as a process. What does not need the `lakegate` crate
//! (credentials, the emulator, the gateway environment, waiting) is in
//! `lakegate_testkit`.

#![allow(dead_code)] // each test target uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use lakegate::databricks::{Client, Config, RetryPolicy, Settings, StatementRequest, Value};
use lakegate_emulator::Emulator;
use lakegate_testkit::{PAT, SP_ID, SP_SECRET, poll};

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

/// A client of the workspace a gateway's environment (`lakegate_testkit::gateway_env`)
/// names, for reading back what the gateway wrote.
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

/// The `lakegate` binary as its own process; killed if still running when dropped
/// (a failed test, an early error).
pub struct LakegateProcess {
    pub child: Child,
    /// `IP:PORT`, as its "lakegate listening" log line says.
    pub address: String,
}

impl LakegateProcess {
    /// Starts the binary with exactly `env` (a `lakegate_testkit::gateway_env`), on a free
    /// port and logging JSON, and waits up to 60 s for the line saying where it listens.
    /// A thread reads the log for the process's whole life, so it never blocks on a full
    /// pipe, and hands every JSON line to `on_log`.
    pub fn spawn(
        env: &HashMap<String, String>,
        on_log: impl FnMut(&serde_json::Value) + Send + 'static,
    ) -> anyhow::Result<LakegateProcess> {
        Self::spawn_command(&[], env, on_log)
    }

    /// [`LakegateProcess::spawn`] with these arguments (`relay --upstream ...`).
    pub fn spawn_command(
        args: &[&str],
        env: &HashMap<String, String>,
        mut on_log: impl FnMut(&serde_json::Value) + Send + 'static,
    ) -> anyhow::Result<LakegateProcess> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
            .args(args)
            .env_clear()
            .envs(env)
            .envs([
                ("DATABRICKS_APP_PORT", "0"),
                ("LAKEGATE_LOG_FORMAT", "json"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the lakegate binary")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut process = LakegateProcess {
            child,
            address: String::new(),
        };
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if log["message"] == "lakegate listening" {
                    let _ = address_tx.send(log["address"].as_str().unwrap_or("").to_owned());
                }
                on_log(&log);
            }
        });
        process.address = address_rx
            .recv_timeout(Duration::from_secs(60))
            .context("lakegate did not log its address within 60 s")?;
        Ok(process)
    }

    /// SIGTERM, as Databricks Apps stops an app; waits up to 30 s for the process to
    /// exit and returns how it exited and how long that took.
    pub async fn terminate(mut self) -> anyhow::Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !sent.success() {
            bail!("kill -TERM failed");
        }
        let (within, every) = (Duration::from_secs(30), Duration::from_millis(20));
        let exited = async || self.child.try_wait();
        let status = poll(within, every, exited, |exit| !matches!(exit, Ok(None)))
            .await
            .map_err(|_| anyhow!("lakegate still running 30 s after SIGTERM"))??
            .expect("exited");
        Ok((status, started.elapsed()))
    }
}

impl Drop for LakegateProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
