//! The lakegate binary: `lakegate` (or `lakegate serve`) runs the gateway;
//! `lakegate keys new <device-id>` creates a device key, `lakegate keys new-reader`
//! a token for the read API.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lakegate::app::Gateway;
use lakegate::config::GatewayConfig;
use lakegate::devices::{generate_key, new_key_instructions, new_reader_instructions};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    version,
    about = "Ingests readings from field devices into Databricks tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default); configured by environment variables.
    Serve,
    /// Manage device keys.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a device: prints the key once and the registry entry to add.
    New { device_id: String },
    /// Create a reader token for the read API and the page: prints the token once and
    /// the hash to add to LAKEGATE_READER_TOKENS.
    NewReader,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys {
            action: KeysCommand::New { device_id },
        } => {
            if !lakegate::devices::is_valid_device_id(&device_id) {
                eprintln!(
                    "error: {device_id:?} is not a valid device id (1-128 of A-Z a-z 0-9 . _ : -)"
                );
                return ExitCode::FAILURE;
            }
            print!("{}", new_key_instructions(&device_id, &generate_key()));
            ExitCode::SUCCESS
        }
        Command::Keys {
            action: KeysCommand::NewReader,
        } => {
            print!("{}", new_reader_instructions(&generate_key()));
            ExitCode::SUCCESS
        }
        Command::Serve => {
            init_logging();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(serve()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "lakegate stopped");
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// JSON lines by default (the Apps log viewer keeps stdout); `LAKEGATE_LOG_FORMAT=text` for people.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG")
        .unwrap_or_else(|_| "info,lakegate=info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var("LAKEGATE_LOG_FORMAT").as_deref() {
        Ok("text") => builder.init(),
        _ => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = GatewayConfig::from_env().context("configuration")?;
    let listen = config.listen;
    let gateway = Gateway::start(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "lakegate listening");
    #[cfg(feature = "local")]
    if let Some(local) = gateway.local_workspace() {
        println!("{}", local.instructions(&format!("http://{address}")));
    }
    gateway.run(listener, shutdown_signal()).await
}

/// SIGTERM (Databricks Apps, then SIGKILL after 15 s) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
