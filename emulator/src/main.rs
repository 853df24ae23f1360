//! `lakegate-emulator`: the command line around [`lakegate_emulator::Emulator`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lakegate_emulator::{Emulator, EmulatorConfig, Faults};

/// A local Databricks workspace emulator (OAuth M2M, Secrets, SQL Statement Execution).
#[derive(Parser)]
#[command(name = "lakegate-emulator", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// A service principal as CLIENT_ID:SECRET (repeatable).
    #[arg(long = "service-principal", value_name = "CLIENT_ID:SECRET", value_parser = parse_principal)]
    service_principals: Vec<(String, String)>,
    /// An accepted personal access token (repeatable).
    #[arg(long = "token", value_name = "PAT")]
    tokens: Vec<String>,
    /// The one SQL warehouse id the emulator accepts.
    #[arg(long, default_value = "emulator")]
    warehouse_id: String,
    /// Persist catalogs and tables in this directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Lifetime of issued OAuth tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// Rows per result chunk.
    #[arg(long, default_value_t = 10_000)]
    rows_per_chunk: usize,
    /// Lifetime of external result links, in seconds.
    #[arg(long, default_value_t = 900)]
    link_lifetime_secs: u64,
    /// Extra time every statement spends RUNNING, in milliseconds.
    #[arg(long, default_value_t = 0)]
    statement_latency_ms: u64,
    /// Share (0.0 to 1.0) of /api/ requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    throttle_share: f64,
    /// Retry-After on injected 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    throttle_retry_after_secs: u64,
    /// The first N token requests answer 503.
    #[arg(long, default_value_t = 0)]
    token_failures: u32,
}

fn parse_principal(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok((id.to_string(), secret.to_string()))
        }
        _ => Err("expected CLIENT_ID:SECRET".to_string()),
    }
}

impl From<Cli> for EmulatorConfig {
    fn from(cli: Cli) -> Self {
        EmulatorConfig {
            listen: cli.listen,
            service_principals: cli.service_principals,
            tokens: cli.tokens,
            warehouse_id: cli.warehouse_id,
            data_dir: cli.data_dir,
            token_lifetime: Duration::from_secs(cli.token_lifetime_secs),
            rows_per_chunk: cli.rows_per_chunk,
            link_lifetime: Duration::from_secs(cli.link_lifetime_secs),
            faults: Faults {
                statement_latency: Duration::from_millis(cli.statement_latency_ms),
                throttle_share: cli.throttle_share.clamp(0.0, 1.0),
                throttle_retry_after_secs: cli.throttle_retry_after_secs,
                token_failures: cli.token_failures,
                ..Faults::default()
            },
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let emulator = Emulator::start(Cli::parse().into()).await?;
    println!("lakegate-emulator listening on {}", emulator.url());
    shutdown_signal().await?;
    emulator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
