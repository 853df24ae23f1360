//! `lakegate-emulator`: the command line around [`lakegate_emulator::Emulator`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use lakegate_emulator::{
    AppsProxy, AppsProxyConfig, Emulator, EmulatorConfig, Faults, StatementCost, WriteConflicts,
    ZerobusFaults,
};

/// A local Databricks workspace emulator (OAuth M2M, Secrets, SQL Statement Execution),
/// optionally with a Databricks Apps proxy in front of a local app.
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
    /// How concurrent writes into one table conflict: off, row-level or file-level.
    #[arg(long, default_value = "off")]
    write_conflicts: WriteConflicts,
    /// Fixed running time of every write (INSERT, MERGE), in milliseconds.
    #[arg(long, default_value_t = 0)]
    statement_cost_fixed_ms: u64,
    /// Running time of a write per row it inserts, in microseconds.
    #[arg(long, default_value_t = 0)]
    statement_cost_per_row_us: u64,
    /// Share (0.0 to 1.0) of /api/ requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    throttle_share: f64,
    /// Retry-After on injected 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    throttle_retry_after_secs: u64,
    /// The first N token requests answer 503.
    #[arg(long, default_value_t = 0)]
    token_failures: u32,
    #[command(flatten)]
    zerobus: ZerobusArgs,
    #[command(flatten)]
    apps_proxy: AppsProxyArgs,
}

/// The Zerobus Ingest service (gRPC, plain text) and its faults.
#[derive(Args)]
struct ZerobusArgs {
    /// Also serve Zerobus (`databricks.zerobus.Zerobus`) on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    zerobus_listen: Option<SocketAddr>,
    /// The server closes every Zerobus stream this many seconds after it opens
    /// (a close signal, then UNAVAILABLE with error 6002).
    #[arg(long, value_name = "SECS")]
    zerobus_stream_lifetime_secs: Option<f64>,
    /// Seconds between the close signal and the end of the stream.
    #[arg(long, default_value_t = 1.0)]
    zerobus_close_grace_secs: f64,
    /// The first N Zerobus record messages are written but never acknowledged (the stream breaks).
    #[arg(long, default_value_t = 0)]
    zerobus_lost_acks: u32,
    /// Share (0.0 to 1.0) of Zerobus requests refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 0.0)]
    zerobus_throttle_share: f64,
    /// Time between a Zerobus write and its acknowledgement, in milliseconds.
    #[arg(long, default_value_t = 0)]
    zerobus_durability_latency_ms: u64,
}

impl ZerobusArgs {
    fn faults(&self) -> ZerobusFaults {
        ZerobusFaults {
            stream_lifetime: self
                .zerobus_stream_lifetime_secs
                .map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            close_grace: Duration::from_secs_f64(self.zerobus_close_grace_secs.max(0.0)),
            lost_acks: self.zerobus_lost_acks,
            throttle_share: self.zerobus_throttle_share.clamp(0.0, 1.0),
            durability_latency: Duration::from_millis(self.zerobus_durability_latency_ms),
        }
    }
}

/// The Apps proxy runs in this process, so it checks tokens against the token store
/// that issued them.
#[derive(Args)]
struct AppsProxyArgs {
    /// Also run a Databricks Apps proxy on this address, in front of --apps-proxy-app.
    #[arg(long, value_name = "ADDR:PORT", requires = "apps_proxy_app")]
    apps_proxy_listen: Option<SocketAddr>,
    /// The app behind the proxy, as http://HOST:PORT.
    #[arg(long, value_name = "URL", requires = "apps_proxy_listen")]
    apps_proxy_app: Option<String>,
    /// On-behalf-of-user authorization: send the app X-Forwarded-Access-Token.
    #[arg(long, requires = "apps_proxy_listen")]
    apps_proxy_user_authorization: bool,
    /// A principal with CAN USE on the app: an application id or an email (repeatable;
    /// without any, every principal of the workspace may use it).
    #[arg(
        long = "apps-proxy-can-use",
        value_name = "PRINCIPAL",
        requires = "apps_proxy_listen"
    )]
    apps_proxy_can_use: Vec<String>,
    /// Strip custom X- headers (X-API-Key, ...) instead of passing them to the app.
    #[arg(long, requires = "apps_proxy_listen")]
    apps_proxy_strip_custom_headers: bool,
    /// How long the app has to answer, in seconds.
    #[arg(long, default_value_t = 120)]
    apps_proxy_timeout_secs: u64,
    /// The largest request body the proxy forwards, in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    apps_proxy_max_body_bytes: u64,
}

impl AppsProxyArgs {
    /// The proxy's settings, when one was asked for.
    fn config(&self) -> Option<AppsProxyConfig> {
        let (listen, app) = (self.apps_proxy_listen?, self.apps_proxy_app.clone()?);
        Some(AppsProxyConfig {
            listen,
            user_authorization: self.apps_proxy_user_authorization,
            can_use: (!self.apps_proxy_can_use.is_empty()).then(|| self.apps_proxy_can_use.clone()),
            forward_custom_headers: !self.apps_proxy_strip_custom_headers,
            request_timeout: Duration::from_secs(self.apps_proxy_timeout_secs),
            max_body_bytes: self.apps_proxy_max_body_bytes,
            ..AppsProxyConfig::new(app)
        })
    }
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
            zerobus: cli.zerobus.zerobus_listen,
            faults: Faults {
                zerobus: cli.zerobus.faults(),
                statement_latency: Duration::from_millis(cli.statement_latency_ms),
                throttle_share: cli.throttle_share.clamp(0.0, 1.0),
                throttle_retry_after_secs: cli.throttle_retry_after_secs,
                token_failures: cli.token_failures,
                write_conflicts: cli.write_conflicts,
                statement_cost: (cli.statement_cost_fixed_ms > 0
                    || cli.statement_cost_per_row_us > 0)
                    .then(|| StatementCost {
                        fixed: Duration::from_millis(cli.statement_cost_fixed_ms),
                        per_row: Duration::from_micros(cli.statement_cost_per_row_us),
                    }),
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
    let cli = Cli::parse();
    let proxy_config = cli.apps_proxy.config();
    let emulator = Emulator::start(cli.into()).await?;
    println!("lakegate-emulator listening on {}", emulator.url());
    if let Some(addr) = emulator.zerobus_addr() {
        println!("lakegate-emulator zerobus listening on http://{addr}");
    }
    let proxy = match proxy_config {
        Some(config) => {
            let app = config.app_url.clone();
            let proxy = AppsProxy::start(config, &emulator).await?;
            println!(
                "lakegate-emulator apps proxy listening on {} for {app}",
                proxy.url()
            );
            Some(proxy)
        }
        None => None,
    };
    shutdown_signal().await?;
    if let Some(proxy) = proxy {
        proxy.shutdown().await;
    }
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
