//! The lakegate binary: `lakegate` (or `lakegate serve [--behind-apps-proxy]`) runs
//! the gateway; `lakegate keys ...` manages devices and site relays in the registry
//! where it lives (or prints a key, `keys new`, or a reader token, `keys new-reader`);
//! `lakegate send` is the device agent (`lakegate-device`); `lakegate relay` is the
//! site relay (`relay/`); `lakegate sql` runs one statement on the workspace.

use std::collections::HashMap;
use std::ffi::OsString;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use lakegate::app::Gateway;
use lakegate::config::{GatewayConfig, RelayCommandArgs, ServeArgs};
use lakegate::devices::{
    Action, AdminError, KeyChange, KeyKind, NewEntry, RegistryStore, Subject, change_registry,
    generate_key_of, listing, new_key_instructions, new_reader_instructions,
    secrets_from_environment,
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
    /// Local mode only (no DATABRICKS_HOST): put the emulated Databricks Apps proxy in
    /// front of the gateway, as `lakegate serve --behind-apps-proxy` does.
    #[arg(long)]
    behind_apps_proxy: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default); configured by environment variables (or the
    /// flags of the same names, which win), listed below with their defaults.
    Serve {
        /// Local mode only: put the emulated Databricks Apps proxy in front, so that
        /// devices meet what they meet on Databricks (sets LAKEGATE_LOCAL_APPS_PROXY).
        #[arg(long)]
        behind_apps_proxy: bool,
        /// Declared here for `--help` and the flags; `GatewayConfig::serve` reads them
        /// from the matches, with the environment.
        #[command(flatten)]
        _settings: Box<ServeArgs>,
    },
    /// Manage the fleet's registry: devices and site relays and their keys; print a
    /// key (`new`) or a reader token for the read API and the page (`new-reader`).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// The device agent: send readings (NDJSON, from files or stdin) to a gateway with
    /// this device's key, optionally through a durable spool.
    Send(SendArgs),
    /// A site relay: takes readings from the site's devices with their own keys, as the
    /// gateway does, spools them on disk and forwards them with the relay's key
    /// (LAKEGATE_RELAY_KEY); configured like the gateway, by environment variables (or
    /// the flags of the same names), listed below with their defaults.
    Relay(RelayCli),
    /// Run one SQL statement and print its rows as a table: on the workspace of the
    /// DATABRICKS_* variables (or --profile), else on the one local mode runs (its
    /// address and credentials are in LAKEGATE_LOCAL_DIR, `.lakegate-local/`).
    Sql(SqlArgs),
    /// Remove duplicate rows from the table (a row a sink wrote twice): for each reading's
    /// metric, keep the row the `<table>_dedup` view keeps; safe while ingest goes on,
    /// and a second run removes nothing. Prints how many rows it removed.
    Compact(CompactArgs),
}

#[derive(clap::Args)]
struct CompactArgs {
    /// The table, `catalog.schema.table`.
    #[arg(long, env = "LAKEGATE_TABLE")]
    table: String,
    /// Only rows measured (`ts`) at or after this time, RFC 3339 (e.g. 2026-12-01T00:00:00Z),
    /// to bound the work; default: the whole table.
    #[arg(long)]
    since: Option<String>,
    /// The ~/.databrickscfg profile of the workspace (with its warehouse_id).
    #[arg(long)]
    profile: Option<String>,
}

#[derive(clap::Args)]
struct SqlArgs {
    /// The statement, e.g. "SELECT device_id, ts FROM main.lakegate.readings LIMIT 10".
    statement: String,
    /// The ~/.databrickscfg profile of the workspace (with its warehouse_id).
    #[arg(long)]
    profile: Option<String>,
}

#[derive(clap::Args)]
struct RelayCli {
    /// Address and port to listen on; default LAKEGATE_LISTEN_ADDR (0.0.0.0) and
    /// DATABRICKS_APP_PORT (8000).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// A file holding the relay's key; default: the LAKEGATE_RELAY_KEY variable.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Declared here for `--help` and the flags (with `--profile`, the ~/.databrickscfg
    /// profile that gets OAuth tokens for the Databricks Apps proxy);
    /// `GatewayConfig::relay` reads them from the matches, with the environment.
    #[command(flatten)]
    _settings: Box<RelayCommandArgs>,
}

#[derive(clap::Args)]
struct SendArgs {
    /// The gateway: a Databricks App's URL, or a gateway of one's own.
    #[arg(long, env = "LAKEGATE_UPSTREAM")]
    upstream: String,
    /// A file holding the device key; default: the LAKEGATE_DEVICE_KEY variable.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Keep readings on disk here until the gateway has committed them; what is not
    /// committed by the timeout is sent on the next run.
    #[arg(long, env = "LAKEGATE_SPOOL_DIR")]
    spool: Option<PathBuf>,
    /// Most bytes the spool holds.
    #[arg(long, env = "LAKEGATE_SPOOL_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    spool_max_bytes: u64,
    /// Readings per request.
    #[arg(long, default_value_t = lakegate_device::DEFAULT_BATCH)]
    batch: usize,
    /// How long one batch may keep retrying (and, with a spool, how long the backlog
    /// is sent at the end), in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Get OAuth tokens for the Databricks Apps proxy from this ~/.databrickscfg profile
    /// (else from DATABRICKS_HOST, DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET
    /// when set).
    #[arg(long)]
    profile: Option<String>,
    /// NDJSON files, one reading (or an array of readings) a line; default: stdin.
    files: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add, rotate, revoke, disable or enable a device and its keys.
    Device {
        #[command(subcommand)]
        action: DeviceCommand,
    },
    /// Add, rotate, revoke, disable or enable a site relay and its keys, or change the
    /// devices it may send readings for.
    Relay {
        #[command(subcommand)]
        action: RelayCommand,
    },
    /// List the devices (keys, disabled, limits) and relays (keys, disabled, devices):
    /// never a key or a hash.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print a key and the registry entry to add by hand, touching no registry.
    New {
        /// The device's id (1-128 of A-Z a-z 0-9 . _ : -), as in its readings.
        device_id: String,
    },
    /// Create a reader token for the read API and the page: prints the token once and
    /// the hash to add to LAKEGATE_READER_TOKENS.
    NewReader,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Add a device with a new key: prints the key once, on its own line.
    Add {
        #[command(flatten)]
        device: DeviceTarget,
        /// The device's own rate (readings per second); default: the gateway's.
        #[arg(long)]
        rate: Option<NonZeroU32>,
        /// The device's own burst; default: the gateway's.
        #[arg(long)]
        burst: Option<NonZeroU32>,
    },
    /// Give a device a second key; the old one works until `revoke-old`.
    Rotate(DeviceTarget),
    /// Keep only the device's newest key.
    RevokeOld(DeviceTarget),
    /// Remove the device and all its keys.
    Revoke(DeviceTarget),
    /// Refuse the device's keys (403) until `enable`.
    Disable(DeviceTarget),
    /// Accept the device's keys again after `disable`.
    Enable(DeviceTarget),
}

#[derive(clap::Args)]
struct DeviceTarget {
    /// The device's id (1-128 of A-Z a-z 0-9 . _ : -), as in its readings.
    device_id: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Add a site relay with a new key: prints the key once, on its own line.
    Add(RelayDevicesTarget),
    /// Give a relay a second key; the old one works until `revoke-old`.
    Rotate(RelayTarget),
    /// Keep only the relay's newest key.
    RevokeOld(RelayTarget),
    /// Remove the relay and all its keys.
    Revoke(RelayTarget),
    /// Refuse the relay's keys (403) until `enable`.
    Disable(RelayTarget),
    /// Accept the relay's keys again after `disable`.
    Enable(RelayTarget),
    /// Replace the devices a relay may send readings for.
    Devices(RelayDevicesTarget),
}

#[derive(clap::Args)]
struct RelayTarget {
    /// The relay's id (1-128 of A-Z a-z 0-9 . _ : -).
    relay_id: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args)]
struct RelayDevicesTarget {
    #[command(flatten)]
    relay: RelayTarget,
    /// The devices the relay may send readings for: device ids, or prefixes
    /// ending in `*`, comma-separated ('pump-7,line-3-*').
    #[arg(long, value_delimiter = ',', required = true)]
    devices: Vec<String>,
}

impl DeviceCommand {
    fn change(self) -> (KeyChange, RegistryArgs) {
        let (action, args) = match self {
            DeviceCommand::Add {
                device,
                rate,
                burst,
            } => {
                let new = NewEntry::Device {
                    rate_per_sec: rate,
                    burst,
                };
                (Action::Add(new), device)
            }
            DeviceCommand::Rotate(args) => (Action::Rotate, args),
            DeviceCommand::RevokeOld(args) => (Action::RevokeOld, args),
            DeviceCommand::Revoke(args) => (Action::Revoke, args),
            DeviceCommand::Disable(args) => (Action::Disable, args),
            DeviceCommand::Enable(args) => (Action::Enable, args),
        };
        let subject = Subject::device(args.device_id);
        (KeyChange::new(subject, action), args.registry)
    }
}

impl RelayCommand {
    fn change(self) -> (KeyChange, RegistryArgs) {
        let (action, args) = match self {
            RelayCommand::Add(RelayDevicesTarget { relay, devices }) => {
                (Action::Add(NewEntry::Relay { devices }), relay)
            }
            RelayCommand::Devices(RelayDevicesTarget { relay, devices }) => {
                (Action::SetDevices(devices), relay)
            }
            RelayCommand::Rotate(args) => (Action::Rotate, args),
            RelayCommand::RevokeOld(args) => (Action::RevokeOld, args),
            RelayCommand::Revoke(args) => (Action::Revoke, args),
            RelayCommand::Disable(args) => (Action::Disable, args),
            RelayCommand::Enable(args) => (Action::Enable, args),
        };
        let subject = Subject::relay(args.relay_id);
        (KeyChange::new(subject, action), args.registry)
    }
}

/// The `keys` commands as spelled before `keys device ...` and `keys relay ...`, still
/// accepted (and not shown in the help) so that operators' scripts keep working.
const OLD_KEYS_SPELLINGS: &[(&str, [&str; 2])] = &[
    ("add", ["device", "add"]),
    ("rotate", ["device", "rotate"]),
    ("revoke-old", ["device", "revoke-old"]),
    ("revoke", ["device", "revoke"]),
    ("disable", ["device", "disable"]),
    ("enable", ["device", "enable"]),
    ("add-relay", ["relay", "add"]),
    ("rotate-relay", ["relay", "rotate"]),
    ("revoke-old-relay", ["relay", "revoke-old"]),
    ("revoke-relay", ["relay", "revoke"]),
    ("disable-relay", ["relay", "disable"]),
    ("enable-relay", ["relay", "enable"]),
    ("relay-devices", ["relay", "devices"]),
];

/// The command line with an old `keys` spelling (`keys add-relay`) in its new one
/// (`keys relay add`).
fn with_new_keys_spellings(mut args: Vec<OsString>) -> Vec<OsString> {
    // The subcommand is the first argument that is not an option (the top level's
    // options take no values).
    let command = (args.iter().enumerate().skip(1))
        .find(|(_, arg)| !arg.to_string_lossy().starts_with('-'))
        .map(|(at, _)| at);
    if let Some(at) = command.filter(|&at| args[at] == "keys")
        && let Some(old) = args.get(at + 1)
        && let Some((_, new)) = OLD_KEYS_SPELLINGS.iter().find(|(name, _)| old == name)
    {
        args.splice(at + 1..at + 2, new.iter().map(OsString::from));
    }
    args
}

/// Where the registry lives: `--file`, or `--secret` in the workspace `--profile` names.
#[derive(clap::Args)]
struct RegistryArgs {
    #[command(flatten)]
    location: RegistryLocation,
    /// The ~/.databrickscfg profile whose workspace holds the --secret (it names no
    /// registry by itself).
    #[arg(long, requires = "secret")]
    profile: Option<String>,
}

/// One of the two places a registry can be; none is refused in `change_keys`, with a
/// message that also covers a lone `--profile`.
#[derive(clap::Args)]
#[group(multiple = false)]
struct RegistryLocation {
    /// A registry file (what LAKEGATE_DEVICE_KEYS_FILE names); `device add` and `relay
    /// add` create it, the other commands need it to exist.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A Databricks secret, `scope/key` (what LAKEGATE_DEVICE_KEYS_SECRET names); the
    /// workspace comes from DATABRICKS_* variables or a ~/.databrickscfg profile.
    #[arg(long)]
    secret: Option<String>,
}

fn main() -> ExitCode {
    let (cli, matches) = parse_command_line();
    match cli.command {
        Some(Command::Keys { action }) => keys(action),
        Some(Command::Send(args)) => send(args),
        Some(Command::Serve {
            behind_apps_proxy, ..
        }) => serve_or_stop(
            behind_apps_proxy || cli.behind_apps_proxy,
            matches.subcommand_matches("serve"),
        ),
        None => serve_or_stop(cli.behind_apps_proxy, None),
        Some(Command::Relay(args)) => run_service(
            log_format(false),
            relay(args, matches.subcommand_matches("relay")),
        ),
        Some(Command::Sql(args)) => sql(args),
        Some(Command::Compact(args)) => compact(args),
    }
}

/// The command line, with the settings of `serve` and `relay` read from the flags only:
/// `GatewayConfig` reads their variables itself, so that a bad value's message names the
/// variable it came from.
fn parse_command_line() -> (Cli, ArgMatches) {
    fn without_env(command: clap::Command) -> clap::Command {
        command.mut_args(|arg| arg.env(None))
    }
    let parsing = Cli::command()
        .mut_subcommand("serve", without_env)
        .mut_subcommand("relay", without_env);
    let args = with_new_keys_spellings(std::env::args_os().collect());
    let matches = match parsing.try_get_matches_from(&args) {
        Ok(matches) => matches,
        // Help from the whole declaration, which lists each setting's variable.
        Err(err)
            if matches!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            Cli::command().get_matches_from(args)
        }
        // clap's own message quotes the value, which may be a secret (`--relay-key`).
        Err(err) if err.kind() == clap::error::ErrorKind::ValueValidation => {
            exit_without_the_value(&err)
        }
        Err(err) => err.exit(),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    (cli, matches)
}

/// Says which option's value is wrong and why (our parsers never quote it), then exits 2
/// as clap does.
fn exit_without_the_value(err: &clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue};
    let option = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(option)) => option.clone(),
        _ => "an option".to_owned(),
    };
    let why = std::error::Error::source(err).map_or_else(String::new, |why| format!(": {why}"));
    eprintln!("error: the value of {option} is not valid{why}");
    std::process::exit(2)
}

fn serve_or_stop(behind_apps_proxy: bool, command_line: Option<&ArgMatches>) -> ExitCode {
    match serve_config(behind_apps_proxy, command_line) {
        // A local trial is read by a person; a deployed gateway by the log viewer.
        Ok(config) => run_service(log_format(config.is_local()), serve(config)),
        Err(err) => run_service(log_format(false), async { Err(err) }),
    }
}

/// Runs the gateway or the relay to its end, logging why it stopped if it failed.
fn run_service(
    format: LogFormat,
    service: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let for_people = format == LogFormat::TextOnStderr;
    init_logging(format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(service) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // On stderr already, the log line would say it twice.
            if !for_people {
                tracing::error!(error = format!("{err:#}"), "lakegate stopped");
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
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
            let key = generate_key_of(KeyKind::Device);
            print!("{}", new_key_instructions(&device_id, &key));
            return ExitCode::SUCCESS;
        }
        KeysCommand::NewReader => {
            let token = generate_key_of(KeyKind::Reader);
            print!("{}", new_reader_instructions(&token));
            return ExitCode::SUCCESS;
        }
        KeysCommand::List { registry } => (None, registry),
        KeysCommand::Device { action } => {
            let (change, registry) = action.change();
            (Some(change), registry)
        }
        KeysCommand::Relay { action } => {
            let (change, registry) = action.change();
            (Some(change), registry)
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(change_keys(change, registry)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn send(args: SendArgs) -> ExitCode {
    // Warnings only, as text on stderr: stdout is the device's, and the summary says the rest.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let options = match send_options(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let spool = options
        .spool
        .as_ref()
        .map(|(dir, _)| dir.display().to_string());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = match runtime.block_on(lakegate_device::send(options)) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    for line in report.skipped.iter().chain(&report.refused) {
        eprintln!("refused: {line}");
    }
    let readings = |n: usize| lakegate_device::counted(n as u64, "reading", "readings");
    eprintln!(
        "{} read: {} committed, {} refused, {} skipped",
        readings(report.read),
        report.committed,
        report.refused.len(),
        lakegate_device::counted(report.skipped.len() as u64, "input line", "input lines"),
    );
    if let Some(dir) = spool {
        let waiting = match report.spooled {
            1 => "1 spooled batch waits".to_owned(),
            n => format!("{n} spooled batches wait"),
        };
        eprintln!("{waiting} in {dir} for the next run");
    }
    if report.undelivered > 0 {
        let verb = if report.undelivered == 1 {
            "was"
        } else {
            "were"
        };
        eprintln!("{} {verb} NOT delivered", readings(report.undelivered));
    }
    if let Some(why) = &report.stopped {
        eprintln!("stopped: {why}");
    }
    ExitCode::from(report.exit_code())
}

fn send_options(args: SendArgs) -> anyhow::Result<lakegate_device::SendOptions> {
    let key = match &args.key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("LAKEGATE_DEVICE_KEY")
            .context("no device key: set LAKEGATE_DEVICE_KEY or pass --key-file")?,
    };
    anyhow::ensure!(!key.is_empty(), "the device key is empty");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    if let Some(profile) = &args.profile {
        vars.insert("DATABRICKS_CONFIG_PROFILE".into(), profile.clone());
    }
    let workspace = if vars.contains_key("DATABRICKS_HOST") || args.profile.is_some() {
        let config = lakegate::databricks::Config::resolve(Default::default(), &vars)
            .context("the workspace for OAuth tokens")?;
        Some(config)
    } else {
        None
    };
    Ok(lakegate_device::SendOptions {
        upstream: args.upstream,
        key: key.into(),
        spool: args.spool.map(|dir| (dir, args.spool_max_bytes)),
        workspace,
        batch: args.batch,
        deadline: std::time::Duration::from_secs(args.timeout),
        inputs: args.files,
    })
}

/// Lists, or makes one change and says what it did; a new key goes to stdout alone
/// on its line, everything else to stderr.
async fn change_keys(change: Option<KeyChange>, args: RegistryArgs) -> Result<(), AdminError> {
    let store = match (args.location.file, args.location.secret) {
        (Some(_), None) if args.profile.is_some() => {
            return Err(AdminError::Usage(
                "--profile selects the workspace of a --secret registry; a --file needs none"
                    .into(),
            ));
        }
        (Some(path), None) => RegistryStore::File(path),
        (None, Some(reference)) => {
            let (scope, key) = reference
                .split_once('/')
                .filter(|(scope, key)| !scope.is_empty() && !key.is_empty() && !key.contains('/'))
                .ok_or_else(|| {
                    AdminError::Usage(format!("--secret {reference:?} is not scope/key"))
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
        (None, None) => {
            let profile = match args.profile {
                Some(_) => " (--profile only selects the workspace of a --secret)",
                None => "",
            };
            return Err(AdminError::Usage(format!(
                "say where the registry is: --file PATH or --secret scope/key{profile}"
            )));
        }
        // clap refuses both at once; an error rather than a panic if that ever changes.
        (Some(_), Some(_)) => {
            return Err(AdminError::Usage(
                "--file and --secret cannot be used together".into(),
            ));
        }
    };
    let Some(change) = change else {
        print!("{}", listing(&store.read_all().await?));
        return Ok(());
    };
    // Returns once the change is confirmed in the registry, so a key printed works.
    let applied = change_registry(&store, &change).await?;
    if applied.created {
        eprintln!("{store} did not exist: created it");
    }
    eprintln!("{change} in {store}");
    eprintln!("{}", pickup(&store));
    if let Some(key) = applied.new_key {
        eprintln!("The key, shown once (the registry holds only its hash):");
        println!("{}", key.key.expose_secret());
    }
    match applied.overran {
        Some(took) => Err(AdminError::Overran(took)),
        None => Ok(()),
    }
}

/// When a running gateway sees a change: it watches a file, and reloads a secret every
/// LAKEGATE_KEYS_REFRESH_SECS (read here as the operator's best guess of the gateway's).
fn pickup(store: &RegistryStore) -> String {
    match store {
        RegistryStore::File(_) => {
            "A running gateway reading this file picks this up within about a second.".into()
        }
        RegistryStore::Secret { .. } => {
            let refresh = std::env::var("LAKEGATE_KEYS_REFRESH_SECS")
                .ok()
                .and_then(|secs| secs.trim().parse::<u64>().ok())
                .unwrap_or(60);
            format!(
                "A running gateway picks this up within {refresh} s (its LAKEGATE_KEYS_REFRESH_SECS, 60 unless set)."
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// JSON lines on stdout, which the Apps log viewer keeps.
    Json,
    /// For people, on stdout.
    Text,
    /// For people, on stderr: local mode's stdout is its banner alone.
    TextOnStderr,
}

/// `LAKEGATE_LOG_FORMAT` (`json` or `text`) decides; unset, JSON lines unless `local`
/// and not on Databricks Apps (DATABRICKS_APP_NAME).
fn log_format(local: bool) -> LogFormat {
    match std::env::var("LAKEGATE_LOG_FORMAT").as_deref() {
        Ok("text") => LogFormat::Text,
        Ok("json") => LogFormat::Json,
        _ if local && std::env::var_os("DATABRICKS_APP_NAME").is_none() => LogFormat::TextOnStderr,
        _ => LogFormat::Json,
    }
}

fn init_logging(format: LogFormat) {
    // The Zerobus SDK logs a routine stream end as an error; the writer logs every failed
    // write itself, with the SDK's error (LAKEGATE_LOG can turn the SDK's own logs on).
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG")
        .unwrap_or_else(|_| "info,lakegate=info,databricks_zerobus_ingest_sdk=off".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::TextOnStderr => {
            use std::io::IsTerminal;
            let colours = std::io::stderr().is_terminal();
            builder
                .with_writer(std::io::stderr)
                .with_ansi(colours)
                .init();
        }
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn serve_config(
    behind_apps_proxy: bool,
    command_line: Option<&ArgMatches>,
) -> anyhow::Result<GatewayConfig> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    if behind_apps_proxy {
        vars.insert("LAKEGATE_LOCAL_APPS_PROXY".into(), "true".into());
    }
    let config = GatewayConfig::serve(command_line, &vars).context("configuration")?;
    anyhow::ensure!(
        !behind_apps_proxy || cfg!(feature = "local") && config.is_local(),
        "--behind-apps-proxy runs the emulated Apps proxy of local mode: unset DATABRICKS_HOST"
    );
    Ok(config)
}

/// Once, at start-up: former setting names still in use.
fn warn_deprecations(config: &GatewayConfig) {
    for deprecation in config.deprecations() {
        tracing::warn!("{deprecation}");
    }
}

async fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    warn_deprecations(&config);
    let listen = config.listen;
    // The port first: a second local run that cannot have it changes nothing on disk.
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    #[cfg(feature = "local")]
    let (read_source, zerobus) = (
        config.read_source().to_string(),
        config.writes_through_zerobus(),
    );
    #[cfg_attr(not(feature = "local"), expect(unused_mut))]
    let mut gateway = Gateway::start(config).await?;
    tracing::info!(%address, "lakegate listening");
    #[cfg(feature = "local")]
    if let Some(local) = gateway.local_workspace() {
        let url = format!("http://{address}");
        local.start_apps_proxy(&url).await?;
        println!(
            "{}",
            local.instructions(&url, &read_source, zerobus, &this_binary())
        );
    }
    gateway.run(listener, shutdown_signal()).await
}

/// How to run this binary again from a shell: its path (after `cargo run`, under target/).
#[cfg(feature = "local")]
fn this_binary() -> String {
    let path = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "lakegate".to_owned());
    match path.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
        true => format!("'{}'", path.replace('\'', "'\\''")),
        false => path,
    }
}

fn sql(args: SqlArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run_sql(args)) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_sql(args: SqlArgs) -> anyhow::Result<String> {
    use lakegate::databricks::StatementRequest;

    let result = workspace_client(args.profile.as_deref())?
        .statements()
        .execute(StatementRequest::new(args.statement))
        .await?;
    let columns: Vec<String> = result.columns().iter().map(|c| c.name.clone()).collect();
    let rows = result.collect_rows().await?;
    Ok(text_table(&columns, &rows))
}

/// The workspace of the DATABRICKS_* variables or `profile`, else the local one.
fn workspace_client(profile: Option<&str>) -> anyhow::Result<lakegate::databricks::Client> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    if let Some(profile) = profile {
        vars.insert("DATABRICKS_CONFIG_PROFILE".into(), profile.to_owned());
    }
    let config = if vars.contains_key("DATABRICKS_HOST") || profile.is_some() {
        lakegate::databricks::Config::resolve(Default::default(), &vars).context("the workspace")?
    } else {
        local_workspace_config(&vars)?
    };
    Ok(lakegate::databricks::Client::new(&config)?)
}

/// `lakegate compact`: 0 done, 1 the workspace failed, 2 bad options.
fn compact(args: CompactArgs) -> ExitCode {
    let table = match args.table.parse::<lakegate::table::TableName>() {
        Ok(table) => table,
        Err(err) => {
            eprintln!("error: --table (LAKEGATE_TABLE): {err}");
            return ExitCode::from(2);
        }
    };
    let since = match args
        .since
        .as_deref()
        .map(chrono::DateTime::parse_from_rfc3339)
    {
        None => None,
        Some(Ok(since)) => Some(since.to_utc()),
        Some(Err(err)) => {
            eprintln!("error: --since: not an RFC 3339 time ({err}), e.g. 2026-12-01T00:00:00Z");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let run = async {
        let client = workspace_client(args.profile.as_deref())?;
        let removed = lakegate::table::compact(&client.statements(), &table, since)
            .await
            .with_context(|| format!("compacting {table}"))?;
        anyhow::Ok(removed)
    };
    match runtime.block_on(run) {
        Ok(removed) => {
            println!("removed {removed} duplicate rows from {table}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rows as a table of aligned columns, with a header and the row count.
fn text_table(columns: &[String], rows: &[lakegate::databricks::ResultRow]) -> String {
    use lakegate::databricks::Value;
    let cell = |value: &Value| match value {
        Value::Null => "NULL".to_owned(),
        Value::String(text) | Value::Decimal(text) => text.clone(),
        Value::Int(number) => number.to_string(),
        Value::Float(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Timestamp(at) => at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        Value::Date(day) => day.to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(cell).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|name| name.chars().count()).collect();
    for row in &cells {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let line = |texts: &[String]| {
        let padded: Vec<String> = texts
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    let mut text = line(columns) + &rule.join("-+-") + "\n";
    for row in &cells {
        text.push_str(&line(row));
    }
    let count = rows.len();
    text.push_str(&format!(
        "({count} row{})\n",
        if count == 1 { "" } else { "s" }
    ));
    text
}

/// The workspace local mode runs (or last ran) in LAKEGATE_LOCAL_DIR.
#[cfg(feature = "local")]
fn local_workspace_config(
    vars: &HashMap<String, String>,
) -> anyhow::Result<lakegate::databricks::Config> {
    let dir = lakegate::local::local_dir(vars);
    let state = lakegate::local::LocalState::read(&dir)?.with_context(|| {
        format!(
            "no workspace: set DATABRICKS_HOST (or pass --profile), or start local mode \
             (`cargo run`) here first, which keeps its workspace's address in {}",
            dir.display()
        )
    })?;
    // Not running: say so now rather than after the client's retries.
    let address = state.workspace_url.trim_start_matches("http://");
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()
        .and_then(|mut addresses| addresses.next())
        .is_some_and(|address| {
            std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))
                .is_ok()
        });
    anyhow::ensure!(
        reachable,
        "local mode's workspace ({}) does not answer: start local mode (`cargo run`) first",
        state.workspace_url
    );
    state.client_config()
}

#[cfg(not(feature = "local"))]
fn local_workspace_config(
    _: &HashMap<String, String>,
) -> anyhow::Result<lakegate::databricks::Config> {
    anyhow::bail!("no workspace: set DATABRICKS_HOST (or pass --profile)")
}

async fn relay(args: RelayCli, command_line: Option<&ArgMatches>) -> anyhow::Result<()> {
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    if let Some(path) = &args.key_file {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("reading the relay key file {}", path.display()))?;
        vars.insert("LAKEGATE_RELAY_KEY".into(), key.trim().to_owned());
    }
    let mut config = GatewayConfig::relay(command_line, &vars).context("configuration")?;
    warn_deprecations(&config);
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listen = config.listen;
    let relay = Gateway::start(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, role = "relay", "lakegate listening");
    relay.run(listener, shutdown_signal()).await
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
