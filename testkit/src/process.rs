//! The `lakegate` binary as its own process, for the tests that need a real process
//! (SIGTERM, a relay, the keys commands) and the load benchmarks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::poll;

/// The `lakegate` binary as its own process; killed if still running when dropped
/// (a failed test, an early error).
pub struct LakegateProcess {
    pub child: Child,
    /// `IP:PORT`, as its "lakegate listening" log line says.
    pub address: String,
}

impl LakegateProcess {
    /// Starts the binary `bin` (a test's `env!("CARGO_BIN_EXE_lakegate")`: only the test
    /// target knows where cargo built it) with exactly `env` (a [`crate::gateway_env`]),
    /// on a free port and logging JSON, and waits up to 60 s for the line saying where
    /// it listens.
    /// A thread reads the log for the process's whole life, so it never blocks on a full
    /// pipe, and hands every JSON line to `on_log`.
    pub fn spawn(
        bin: impl AsRef<Path>,
        env: &HashMap<String, String>,
        on_log: impl FnMut(&serde_json::Value) + Send + 'static,
    ) -> anyhow::Result<LakegateProcess> {
        Self::spawn_command(bin, &[], env, on_log)
    }

    /// [`LakegateProcess::spawn`] with these arguments (`relay --upstream ...`).
    pub fn spawn_command(
        bin: impl AsRef<Path>,
        args: &[&str],
        env: &HashMap<String, String>,
        mut on_log: impl FnMut(&serde_json::Value) + Send + 'static,
    ) -> anyhow::Result<LakegateProcess> {
        let mut child = Command::new(bin.as_ref())
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
