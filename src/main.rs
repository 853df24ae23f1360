//! The lakegate binary: `lakegate` (or `lakegate serve`) runs the gateway;
//! `lakegate keys add/rotate/revoke-old/revoke/disable/enable/list` manage the
//! device registry where it lives;
//! `lakegate keys new <device-id>` creates a device key, `lakegate keys new-reader`
//! a token for the read API.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lakegate::app::Gateway;
use lakegate::config::GatewayConfig;
use lakegate::devices::{
    AdminError, KeyChange, RegistryStore, change_registry, generate_key, listing,
    new_key_instructions, new_reader_instructions, secrets_from_environment,
};
use secrecy::ExposeSecret;
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
    /// Add a device with a new key: prints the key once, on its own line.
    Add {
        device_id: String,
        /// The device's own rate (readings per second); default: the gateway's.
        #[arg(long)]
        rate: Option<NonZeroU32>,
        /// The device's own burst; default: the gateway's.
        #[arg(long)]
        burst: Option<NonZeroU32>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Give a device a second key; the old one works until `revoke-old`.
    Rotate {
        device_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Keep only the device's newest key.
    RevokeOld {
        device_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Remove the device and all its keys.
    Revoke {
        device_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Refuse the device's keys (403) until `enable`.
    Disable {
        device_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    Enable {
        device_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List the devices (keys, disabled, limits) and relays (keys, disabled, devices):
    /// never a key or a hash.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Add a site relay with a new key: prints the key once, on its own line.
    AddRelay {
        relay_id: String,
        /// The devices the relay may send readings for: device ids, or prefixes
        /// ending in `*`, comma-separated ('pump-7,line-3-*').
        #[arg(long, value_delimiter = ',', required = true)]
        devices: Vec<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Give a relay a second key; the old one works until `revoke-old-relay`.
    RotateRelay {
        relay_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Keep only the relay's newest key.
    RevokeOldRelay {
        relay_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Remove the relay and all its keys.
    RevokeRelay {
        relay_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Refuse the relay's keys (403) until `enable-relay`.
    DisableRelay {
        relay_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    EnableRelay {
        relay_id: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Replace the devices a relay may send readings for.
    RelayDevices {
        relay_id: String,
        /// Device ids, or prefixes ending in `*`, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        devices: Vec<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print a key and the registry entry to add by hand, touching no registry.
    New { device_id: String },
    /// Create a reader token for the read API and the page: prints the token once and
    /// the hash to add to LAKEGATE_READER_TOKENS.
    NewReader,
}

/// Where the registry lives: one of `--file` or `--secret`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct RegistryArgs {
    /// A registry file (what LAKEGATE_DEVICE_KEYS_FILE names).
    #[arg(long)]
    file: Option<PathBuf>,
    /// A Databricks secret, `scope/key` (what LAKEGATE_DEVICE_KEYS_SECRET names); the
    /// workspace comes from DATABRICKS_* variables or a ~/.databrickscfg profile.
    #[arg(long)]
    secret: Option<String>,
    /// The ~/.databrickscfg profile to use with --secret.
    #[arg(long, requires = "secret")]
    profile: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys { action } => keys(action),
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

fn keys(action: KeysCommand) -> ExitCode {
    let (change, registry) = match action {
        KeysCommand::New { device_id } => {
            if !lakegate::devices::is_valid_device_id(&device_id) {
                eprintln!(
                    "error: {device_id:?} is not a valid device id (1-128 of A-Z a-z 0-9 . _ : -)"
                );
                return ExitCode::FAILURE;
            }
            print!("{}", new_key_instructions(&device_id, &generate_key()));
            return ExitCode::SUCCESS;
        }
        KeysCommand::NewReader => {
            print!("{}", new_reader_instructions(&generate_key()));
            return ExitCode::SUCCESS;
        }
        KeysCommand::List { registry } => (None, registry),
        KeysCommand::Add {
            device_id,
            rate,
            burst,
            registry,
        } => (
            Some(KeyChange::Add {
                device: device_id,
                rate_per_sec: rate,
                burst,
            }),
            registry,
        ),
        KeysCommand::Rotate {
            device_id,
            registry,
        } => (Some(KeyChange::Rotate { device: device_id }), registry),
        KeysCommand::RevokeOld {
            device_id,
            registry,
        } => (Some(KeyChange::RevokeOld { device: device_id }), registry),
        KeysCommand::Revoke {
            device_id,
            registry,
        } => (Some(KeyChange::Revoke { device: device_id }), registry),
        KeysCommand::Disable {
            device_id,
            registry,
        } => (Some(KeyChange::Disable { device: device_id }), registry),
        KeysCommand::Enable {
            device_id,
            registry,
        } => (Some(KeyChange::Enable { device: device_id }), registry),
        KeysCommand::AddRelay {
            relay_id,
            devices,
            registry,
        } => (
            Some(KeyChange::AddRelay {
                relay: relay_id,
                devices,
            }),
            registry,
        ),
        KeysCommand::RotateRelay { relay_id, registry } => {
            (Some(KeyChange::RotateRelay { relay: relay_id }), registry)
        }
        KeysCommand::RevokeOldRelay { relay_id, registry } => (
            Some(KeyChange::RevokeOldRelay { relay: relay_id }),
            registry,
        ),
        KeysCommand::RevokeRelay { relay_id, registry } => {
            (Some(KeyChange::RevokeRelay { relay: relay_id }), registry)
        }
        KeysCommand::DisableRelay { relay_id, registry } => {
            (Some(KeyChange::DisableRelay { relay: relay_id }), registry)
        }
        KeysCommand::EnableRelay { relay_id, registry } => {
            (Some(KeyChange::EnableRelay { relay: relay_id }), registry)
        }
        KeysCommand::RelayDevices {
            relay_id,
            devices,
            registry,
        } => (
            Some(KeyChange::RelayDevices {
                relay: relay_id,
                devices,
            }),
            registry,
        ),
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(change_keys(change, registry)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Lists, or makes one change and says what it did; a new key goes to stdout alone
/// on its line, everything else to stderr.
async fn change_keys(change: Option<KeyChange>, args: RegistryArgs) -> Result<(), AdminError> {
    let store = match (args.file, args.secret) {
        (Some(path), _) => RegistryStore::File(path),
        (None, Some(reference)) => {
            let (scope, key) = reference
                .split_once('/')
                .filter(|(scope, key)| !scope.is_empty() && !key.is_empty() && !key.contains('/'))
                .ok_or_else(|| {
                    AdminError::Store(format!("--secret {reference:?} is not scope/key"))
                })?;
            let mut vars: HashMap<String, String> = std::env::vars().collect();
            if let Some(profile) = args.profile {
                vars.insert("DATABRICKS_CONFIG_PROFILE".into(), profile);
            }
            RegistryStore::Secret {
                secrets: secrets_from_environment(&vars)?,
                scope: scope.to_owned(),
                key: key.to_owned(),
            }
        }
        (None, None) => unreachable!("clap requires --file or --secret"),
    };
    let Some(change) = change else {
        print!("{}", listing(&store.read_all().await?)?);
        return Ok(());
    };
    let applied = change_registry(&store, &change).await?;
    eprintln!("{change_done} in {store}", change_done = describe(&change));
    if let Some(key) = applied.new_key {
        eprintln!("The key, shown once (the registry holds only its hash):");
        println!("{}", key.key.expose_secret());
    }
    Ok(())
}

fn describe(change: &KeyChange) -> String {
    match change {
        KeyChange::Add { device, .. } => format!("added {device:?} with a new key"),
        KeyChange::Rotate { device } => {
            format!("{device:?} has a new key; the old one works until `revoke-old`")
        }
        KeyChange::RevokeOld { device } => format!("{device:?} keeps only its newest key"),
        KeyChange::Revoke { device } => format!("removed {device:?} and its keys"),
        KeyChange::Disable { device } => format!("disabled {device:?}"),
        KeyChange::Enable { device } => format!("enabled {device:?}"),
        KeyChange::AddRelay { relay, .. } => format!("added relay {relay:?} with a new key"),
        KeyChange::RotateRelay { relay } => {
            format!("relay {relay:?} has a new key; the old one works until `revoke-old-relay`")
        }
        KeyChange::RevokeOldRelay { relay } => {
            format!("relay {relay:?} keeps only its newest key")
        }
        KeyChange::RevokeRelay { relay } => format!("removed relay {relay:?} and its keys"),
        KeyChange::DisableRelay { relay } => format!("disabled relay {relay:?}"),
        KeyChange::EnableRelay { relay } => format!("enabled relay {relay:?}"),
        KeyChange::RelayDevices { relay, devices } => {
            format!("relay {relay:?} now sends for {}", devices.join(","))
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
