//! Gateway settings, declared once with clap: each has its environment variable, its
//! `--flag`, its default and its help (`lakegate serve --help`, docs/configuration.md),
//! and a bad or missing setting stops the process with a message naming its variable.
//! Checks that involve several settings live in one place, [`GatewayConfig::validate`].
//!
//! Databricks' own names where they exist (`DATABRICKS_*`, resolved by the
//! client's unified configuration), ours prefixed `LAKEGATE_`.

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use secrecy::SecretString;

use crate::client_address::TrustedProxies;
use crate::connections::ConnectionLimits;
use crate::databricks;
use crate::devices::{BadHash, KeyHash, KeyKind, KeySource};
use crate::ingest::{BatchSettings, BodyCaps, QueueCapacity};
use crate::rate_limits::RateLimitSettings;
use crate::table::{TableName, TableRow};
use crate::uploads::UploadSettings;
/// Where the gateway writes.
#[derive(Debug, Clone)]
pub(crate) enum Workspace {
    /// A real workspace (or an emulator started separately).
    Remote { client: Box<databricks::Config> },
    /// The embedded emulator, with data under this folder (`cargo run` with no workspace).
    #[cfg(feature = "local")]
    Local {
        data_dir: PathBuf,
        /// Put the emulated Databricks Apps proxy in front, as on Databricks.
        apps_proxy: bool,
    },
    /// None: a site relay whose registry is a file or a variable and whose upstream takes
    /// no OAuth token.
    None,
}

/// What `lakegate relay` adds: where accepted readings wait on disk, and where they go.
#[derive(Debug, Clone)]
pub(crate) struct RelaySettings {
    /// The gateway the relay forwards to: a Databricks App's URL or a gateway of one's own.
    pub(crate) upstream: String,
    pub(crate) spool_dir: PathBuf,
    /// Bytes of readings spooled and not yet forwarded; beyond this devices get 503.
    pub(crate) spool_max_bytes: u64,
    /// The relay's own key for the upstream (`Debug` shows no secret).
    pub(crate) key: SecretString,
    /// Readings per upstream request.
    pub(crate) batch: usize,
    /// Upstream requests in flight at once, each for its own devices.
    pub(crate) lanes: usize,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub(crate) workspace: Workspace,
    pub table: TableName,
    /// Where rows the table refuses for good go (same columns plus the error).
    pub dead_letter_table: TableName,
    /// The view next to the table with one row per reading's metric (`<table>_dedup`).
    pub dedup_view: TableName,
    /// `None` only in local mode, where a demo registry is created.
    pub(crate) device_keys: Option<KeySource>,
    pub(crate) keys_refresh: Duration,
    pub(crate) batch: BatchSettings,
    /// Batch writers, each with at most one statement in flight; a device's rows always
    /// go to the same one.
    pub(crate) writers: usize,
    pub(crate) sink: Sink,
    /// Rows queued and not yet committed, and their bytes; beyond either, requests get 503.
    pub(crate) queue: QueueCapacity,
    pub(crate) body: BodyCaps,
    /// Bytes of request bodies being read or held at once, in all and per sender.
    pub(crate) uploads: UploadSettings,
    pub(crate) rate_limits: RateLimitSettings,
    /// Peers whose `X-Forwarded-For` / `X-Real-Ip` name the client (the Apps proxy).
    pub(crate) trusted_proxies: TrustedProxies,
    /// How long a request with the default acknowledgement waits for its commit.
    pub(crate) ack_timeout: Duration,
    /// On SIGTERM, how long queued readings may take to drain (Databricks kills at 15 s).
    pub(crate) shutdown: ShutdownDeadlines,
    pub(crate) read: ReadSettings,
    /// Header and idle timeouts, and how many connections may be open.
    pub(crate) connections: ConnectionLimits,
    /// Set when this process is a site relay (`lakegate relay`): it spools and forwards
    /// instead of writing the table, and serves no reads.
    pub(crate) relay: Option<RelaySettings>,
    /// Former names still accepted, each with what to use instead: logged once at start-up.
    deprecations: Vec<String>,
}

/// The shutdown timeline, all from one grace period (measured from the signal): requests
/// in flight may finish during the first half, a request waiting for its commit is answered
/// by the first third (before its connection is cut), and the queue drains to the table
/// until the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShutdownDeadlines {
    grace: Duration,
}

impl ShutdownDeadlines {
    pub(crate) fn new(grace: Duration) -> Self {
        ShutdownDeadlines { grace }
    }

    /// How long requests in flight may keep their connections.
    pub(crate) fn drain_requests(&self) -> Duration {
        self.grace / 2
    }

    /// How long a request waiting for its commit waits once the signal came.
    pub(crate) fn answer_waiting(&self) -> Duration {
        self.grace / 3
    }

    /// How long queued rows may take to be written: the queue's drain.
    pub(crate) fn drain_queue(&self) -> Duration {
        self.grace
    }
}

/// Who may use the read API and how much one query may return.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadSettings {
    /// Hashes of the tokens readers send as `Authorization: Bearer`. Empty (and not
    /// behind the Apps proxy): the read API is off.
    pub(crate) reader_tokens: HashSet<KeyHash>,
    /// Trust the Apps proxy's `X-Forwarded-User` / `X-Forwarded-Email` as a sign-in.
    /// Separate from `trusted_proxies`: a generic reverse proxy passes a client's own
    /// copies of these headers through.
    pub(crate) apps_proxy_auth: bool,
    /// Behind the Apps proxy, whose identity queries run with.
    pub(crate) identity: ReadIdentity,
    /// With `ReadIdentity::App`, who may read (everyone else gets 403).
    pub(crate) readers: ReaderList,
    /// What the read API and the fleet page query: the table or its dedup view.
    pub(crate) source: TableName,
    /// Devices listed by `GET /api/devices`.
    pub(crate) max_devices: usize,
    /// Points of one series.
    pub(crate) max_points: usize,
    /// Read statements running at once; the rest wait `query_wait`, then 503.
    pub(crate) query_concurrency: usize,
    pub(crate) query_wait: Duration,
    /// How long one identity's device list is served from memory.
    pub(crate) device_list_ttl: Duration,
    /// The device list covers devices seen within this window (no dashboard scans the
    /// whole table).
    pub(crate) device_list_window: Duration,
}

/// What reads query: the table, or the view that keeps one row per identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    Table,
    Dedup,
}

impl FromStr for ReadFrom {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "table" => Ok(ReadFrom::Table),
            "dedup" => Ok(ReadFrom::Dedup),
            _ => Err("must be `table` or `dedup`".to_owned()),
        }
    }
}

/// Where the writers send batches (`LAKEGATE_SINK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    Sql,
    Zerobus,
}

impl FromStr for SinkKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "sql" => Ok(SinkKind::Sql),
            "zerobus" => Ok(SinkKind::Zerobus),
            _ => Err("must be `sql` or `zerobus`".to_owned()),
        }
    }
}

/// How batches reach the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sink {
    /// MERGE statements on the SQL warehouse: each row exactly once in the table.
    Statements,
    /// Zerobus Ingest streams: no warehouse runs to write; at least once in the table,
    /// exactly once in the `_dedup` view.
    Zerobus {
        /// `None` in local mode until the embedded workspace's service listens.
        endpoint: Option<String>,
    },
}

/// Behind the Apps proxy, whose identity a signed-in user's queries run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadIdentity {
    /// The user's own (`X-Forwarded-Access-Token`): Unity Catalog decides what they see.
    User,
    /// The app's service principal, for the users and groups of `LAKEGATE_READERS` only.
    App,
}

impl FromStr for ReadIdentity {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "user" => Ok(ReadIdentity::User),
            "app" => Ok(ReadIdentity::App),
            _ => Err("must be `user` or `app`".to_owned()),
        }
    }
}

/// Who may read with the app's identity: e-mail addresses (any case) or user ids
/// as the Apps proxy forwards them (`X-Forwarded-Email`, `X-Forwarded-User`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReaderList {
    /// Lowercase, to match `X-Forwarded-Email` in any case.
    emails: HashSet<String>,
    /// Exact, to match `X-Forwarded-User`.
    users: HashSet<String>,
}

impl ReaderList {
    /// Comma-separated entries; `group:` entries are refused (group membership is not looked up).
    pub(crate) fn parse(list: &str) -> Result<Self, String> {
        let mut readers = ReaderList::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.starts_with("group:") {
                return Err(format!(
                    "{entry:?}: groups are not supported (lakegate does not look up group \
                     membership); list the users' e-mail addresses or user ids"
                ));
            }
            readers.emails.insert(entry.to_lowercase());
            readers.users.insert(entry.to_owned());
        }
        Ok(readers)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the signed-in user (as the proxy forwarded them) is on the list.
    pub(crate) fn admits(&self, email: Option<&str>, user: Option<&str>) -> bool {
        email.is_some_and(|email| self.emails.contains(&email.trim().to_lowercase()))
            || user.is_some_and(|user| self.users.contains(user.trim()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("Databricks workspace: {0}")]
    Workspace(#[from] databricks::ConfigError),
}

fn invalid(name: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

/// The settings of `lakegate serve` (and of `lakegate relay`, which adds [`RelayArgs`]).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    workspace: WorkspaceArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    writer: WriterArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    rates: RateArgs,
    #[command(flatten)]
    reads: ReadArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
    #[command(flatten)]
    retired: RetiredArgs,
}

/// Where the gateway listens and how it is shut down.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Server")]
struct ServerArgs {
    /// Listening address. Default: 0.0.0.0 (127.0.0.1 in local mode).
    #[arg(long = "listen-addr", env = "LAKEGATE_LISTEN_ADDR", value_name = "IP", value_parser = value::<IpAddr>)]
    listen_addr: Option<IpAddr>,
    /// Listening port (set by Databricks Apps).
    #[arg(long = "port", env = "DATABRICKS_APP_PORT", default_value = "8000", value_parser = value::<u16>)]
    port: u16,
    /// Set by Databricks Apps: every peer is then the Apps proxy, trusted for the client
    /// address and, by default, for sign-in headers.
    #[arg(long = "app-name", env = "DATABRICKS_APP_NAME", value_name = "NAME", value_parser = text)]
    app_name: Option<String>,
    /// On SIGTERM, the time the queue has to drain to the table (Databricks kills at 15 s);
    /// requests in flight get half of it, a request waiting for its commit is answered
    /// within a third.
    #[arg(long = "shutdown-grace-secs", env = "LAKEGATE_SHUTDOWN_GRACE_SECS", default_value = "12", value_name = "SECS", value_parser = at_least_1::<u64>)]
    shutdown_grace_secs: u64,
    /// Local mode's data folder (no workspace configured).
    #[arg(long = "local-dir", env = "LAKEGATE_LOCAL_DIR", default_value = ".lakegate-local", value_name = "DIR", value_parser = value::<PathBuf>)]
    local_dir: PathBuf,
    /// Local mode only: put the emulated Databricks Apps proxy in front of the gateway
    /// (what `--behind-apps-proxy` sets).
    #[arg(long = "local-apps-proxy", env = "LAKEGATE_LOCAL_APPS_PROXY", default_value = "false", value_name = "BOOL", action = ArgAction::Set, value_parser = value::<bool>)]
    local_apps_proxy: bool,
}

/// The workspace: without `DATABRICKS_HOST` or a profile, local mode starts the embedded
/// emulator. Further `DATABRICKS_*` variables (`DATABRICKS_AUTH_TYPE`,
/// `DATABRICKS_CONFIG_FILE`) follow the unified configuration.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Workspace")]
struct WorkspaceArgs {
    /// The workspace's URL. Unset (and no profile): local mode.
    #[arg(long = "host", env = "DATABRICKS_HOST", value_name = "URL", value_parser = text)]
    host: Option<String>,
    /// A ~/.databrickscfg profile naming the workspace and its credentials.
    #[arg(long = "profile", env = "DATABRICKS_CONFIG_PROFILE", value_name = "PROFILE", value_parser = text)]
    profile: Option<String>,
    /// The OAuth client (a service principal; injected on Databricks Apps).
    #[arg(long = "client-id", env = "DATABRICKS_CLIENT_ID", value_name = "ID", value_parser = text)]
    client_id: Option<String>,
    /// The OAuth client's secret (injected on Databricks Apps).
    #[arg(long = "client-secret", env = "DATABRICKS_CLIENT_SECRET", hide_env_values = true, value_name = "SECRET", value_parser = secret)]
    client_secret: Option<SecretString>,
    /// A personal access token, in place of an OAuth client.
    #[arg(long = "token", env = "DATABRICKS_TOKEN", hide_env_values = true, value_name = "TOKEN", value_parser = secret)]
    token: Option<SecretString>,
    /// The SQL warehouse that writes the table; required with a workspace.
    #[arg(long = "warehouse-id", env = "DATABRICKS_WAREHOUSE_ID", value_name = "ID", value_parser = text)]
    warehouse_id: Option<String>,
    /// The longest a workspace's `Retry-After` pauses the writers (all of them share the
    /// pause), 1 to 60000.
    #[arg(long = "max-retry-after-ms", env = "LAKEGATE_MAX_RETRY_AFTER_MS", default_value = "60000", value_name = "MS", value_parser = within::<1, 60_000>)]
    max_retry_after_ms: u64,
}

/// The device registry: exactly one source (none in local mode, which creates a demo one).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Device registry")]
struct RegistryArgs {
    /// The registry JSON itself (as an app.yaml `secret` resource injects it).
    #[arg(long = "device-keys", env = "LAKEGATE_DEVICE_KEYS", hide_env_values = true, value_name = "JSON", value_parser = secret)]
    device_keys: Option<SecretString>,
    /// `scope/key` of a secret holding the registry, read through the Secrets API.
    #[arg(long = "device-keys-secret", env = "LAKEGATE_DEVICE_KEYS_SECRET", value_name = "SCOPE/KEY", value_parser = secret_ref)]
    device_keys_secret: Option<KeySource>,
    /// A registry file (local development, a site relay).
    #[arg(long = "device-keys-file", env = "LAKEGATE_DEVICE_KEYS_FILE", value_name = "PATH", value_parser = value::<PathBuf>)]
    device_keys_file: Option<PathBuf>,
    /// Registry reload interval; a registry file is also watched, and a change applies
    /// within about a second.
    #[arg(long = "keys-refresh-secs", env = "LAKEGATE_KEYS_REFRESH_SECS", default_value = "60", value_name = "SECS", value_parser = at_least_1::<u64>)]
    keys_refresh_secs: u64,
}

/// The tables and the writers that fill them.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Table and writers")]
struct WriterArgs {
    /// `catalog.schema.table`, plain identifiers; created at start-up when missing.
    /// Required with a workspace (default `main.lakegate.readings` in local mode and for a relay).
    #[arg(long = "table", env = "LAKEGATE_TABLE", value_name = "TABLE", value_parser = value::<TableName>)]
    table: Option<TableName>,
    /// The dead-letter table for rows the table refuses (created at start-up); not the
    /// table itself. Default: LAKEGATE_TABLE + `_rejected`.
    #[arg(long = "rejected-table", env = "LAKEGATE_REJECTED_TABLE", value_name = "TABLE", value_parser = value::<TableName>)]
    dead_letter_table: Option<TableName>,
    /// Batch writers, each with one statement in flight (1 to 16); a warehouse runs
    /// about ten statements at once, more writers only queue there.
    #[arg(long = "writers", env = "LAKEGATE_WRITERS", default_value = "4", value_name = "N", value_parser = within::<1, 16>)]
    writers: u64,
    /// Where batches go: `sql`, one MERGE statement per batch on the SQL warehouse (each
    /// row exactly once in the table), or `zerobus`, Zerobus Ingest streams (no warehouse
    /// runs to write; a row may be in the table twice after a broken stream, never in the
    /// LAKEGATE_TABLE + `_dedup` view, which reads then use by default).
    #[arg(long = "sink", env = "LAKEGATE_SINK", default_value = "sql", value_name = "sql|zerobus", value_parser = value::<SinkKind>)]
    sink: SinkKind,
    /// The workspace's Zerobus Ingest endpoint, `<workspace-id>.zerobus.<region>.<domain>`
    /// (https), or `http://` on a loopback address; required with LAKEGATE_SINK=zerobus
    /// and a workspace (local mode serves its own).
    #[arg(
        long = "zerobus-endpoint",
        env = "LAKEGATE_ZEROBUS_ENDPOINT",
        value_name = "URL"
    )]
    zerobus_endpoint: Option<String>,
    /// The linger: longest a reading that finds the writer idle waits for others to share
    /// its statement (formerly LAKEGATE_FLUSH_MS).
    #[arg(long = "linger-ms", env = LINGER, default_value = "20", value_name = "MS", value_parser = at_least_1::<u64>)]
    linger_ms: u64,
    /// Rows (one per metric) per statement.
    #[arg(long = "batch-max-rows", env = "LAKEGATE_BATCH_MAX_ROWS", default_value = "25000", value_name = "ROWS", value_parser = at_least_1::<usize>)]
    batch_max_rows: usize,
    /// Bytes of batch JSON per statement (at most 12 MiB).
    #[arg(long = "batch-max-bytes", env = "LAKEGATE_BATCH_MAX_BYTES", default_value = "8388608", value_name = "BYTES", value_parser = at_least_1::<usize>)]
    batch_max_bytes: usize,
    /// Rows queued and not yet committed; beyond it, 503 (must hold one largest request).
    #[arg(long = "queue-max-rows", env = "LAKEGATE_QUEUE_MAX_ROWS", default_value = "400000", value_name = "ROWS", value_parser = at_least_1::<usize>)]
    queue_max_rows: usize,
    /// Bytes those rows take in memory; beyond it, 503 (must hold one largest request).
    #[arg(long = "queue-max-bytes", env = "LAKEGATE_QUEUE_MAX_BYTES", default_value = "268435456", value_name = "BYTES", value_parser = at_least_1::<usize>)]
    queue_max_bytes: usize,
    /// How long a request with the default acknowledgement waits for its commit.
    #[arg(long = "ack-timeout-secs", env = "LAKEGATE_ACK_TIMEOUT_SECS", default_value = "30", value_name = "SECS", value_parser = at_least_1::<u64>)]
    ack_timeout_secs: u64,
}

/// What one request may carry.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Request limits")]
struct LimitArgs {
    /// Body size after decompression; a `Content-Length` over it is refused (413) before
    /// the body is read.
    #[arg(long = "max-body-bytes", env = "LAKEGATE_MAX_BODY_BYTES", default_value = "1048576", value_name = "BYTES", value_parser = at_least_1::<usize>)]
    max_body_bytes: usize,
    /// Bytes of request bodies one device or relay may have being read at once (a body
    /// without a length counts as LAKEGATE_MAX_BODY_BYTES); beyond it 429
    /// `too_many_uploads`, unread, with `Retry-After`. Default: 4 × LAKEGATE_MAX_BODY_BYTES.
    #[arg(long = "max-body-bytes-per-sender", env = "LAKEGATE_MAX_BODY_BYTES_PER_SENDER", value_name = "BYTES", value_parser = at_least_1::<usize>)]
    max_body_bytes_per_sender: Option<usize>,
    /// The same over the whole gateway; beyond it 503 `uploads_full`, unread, with
    /// `Retry-After`. Default: 64 × LAKEGATE_MAX_BODY_BYTES.
    #[arg(long = "max-body-bytes-in-flight", env = "LAKEGATE_MAX_BODY_BYTES_IN_FLIGHT", value_name = "BYTES", value_parser = at_least_1::<usize>)]
    max_body_bytes_in_flight: Option<usize>,
    /// Readings in one request.
    #[arg(long = "max-readings-per-request", env = "LAKEGATE_MAX_READINGS_PER_REQUEST", default_value = "1000", value_name = "N", value_parser = at_least_1::<usize>)]
    max_readings_per_request: usize,
    /// Metrics in one reading.
    #[arg(long = "max-metrics-per-reading", env = "LAKEGATE_MAX_METRICS_PER_READING", default_value = "100", value_name = "N", value_parser = at_least_1::<usize>)]
    max_metrics_per_reading: usize,
    /// Length of a metric name.
    #[arg(long = "max-name-len", env = "LAKEGATE_MAX_NAME_LEN", default_value = "128", value_name = "CHARS", value_parser = at_least_1::<usize>)]
    max_name_len: usize,
    /// Length of a string value.
    #[arg(long = "max-string-len", env = "LAKEGATE_MAX_STRING_LEN", default_value = "1024", value_name = "CHARS", value_parser = at_least_1::<usize>)]
    max_string_len: usize,
}

/// Rates and bursts, and whose address a request comes from.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Rates")]
struct RateArgs {
    /// Readings per second of one device (the registry may override).
    #[arg(long = "device-rate-per-sec", env = "LAKEGATE_DEVICE_RATE_PER_SEC", default_value = "50", value_name = "N", value_parser = positive)]
    device_rate_per_sec: NonZeroU32,
    /// Burst of one device (the registry may override).
    #[arg(long = "device-burst", env = "LAKEGATE_DEVICE_BURST", default_value = "1000", value_name = "N", value_parser = positive)]
    device_burst: NonZeroU32,
    /// Rows (one per metric) per second over all devices; above what the default writers
    /// land, so that the writers bind.
    #[arg(long = "global-rate-per-sec", env = "LAKEGATE_GLOBAL_RATE_PER_SEC", default_value = "250000", value_name = "N", value_parser = positive)]
    global_rate_per_sec: NonZeroU32,
    /// Burst of rows over all devices; must hold one largest request.
    #[arg(long = "global-burst", env = "LAKEGATE_GLOBAL_BURST", default_value = "500000", value_name = "N", value_parser = positive)]
    global_burst: NonZeroU32,
    /// Failed authentications per minute from one client address (an IPv6 address's
    /// /64) before further failures get 429; device keys and reader tokens have separate
    /// budgets.
    #[arg(long = "auth-failures-per-min", env = "LAKEGATE_AUTH_FAILURES_PER_MIN", default_value = "30", value_name = "N", value_parser = positive)]
    auth_failures_per_min: NonZeroU32,
    /// Burst of failed authentications from one client address.
    #[arg(long = "auth-failure-burst", env = "LAKEGATE_AUTH_FAILURE_BURST", default_value = "10", value_name = "N", value_parser = positive)]
    auth_failure_burst: NonZeroU32,
    /// Read API requests per minute of one reader (a reader token, a signed-in user);
    /// past it 429 `reader_rate_limited`.
    #[arg(long = "reader-requests-per-min", env = "LAKEGATE_READER_REQUESTS_PER_MIN", default_value = "600", value_name = "N", value_parser = positive)]
    reader_requests_per_min: NonZeroU32,
    /// Burst of read API requests of one reader.
    #[arg(long = "reader-burst", env = "LAKEGATE_READER_BURST", default_value = "60", value_name = "N", value_parser = positive)]
    reader_burst: NonZeroU32,
    /// Comma-separated CIDRs (or addresses) of the proxies in front of the gateway. From
    /// a trusted peer the client address is the right-most `X-Forwarded-For` hop (over all
    /// its header lines) outside these networks, or without that header `X-Real-Ip`; from
    /// any other peer, the peer. On Databricks Apps (DATABRICKS_APP_NAME set) every peer
    /// is the Apps proxy and is trusted.
    #[arg(long = "trusted-proxies", env = "LAKEGATE_TRUSTED_PROXIES", value_name = "CIDRS", value_parser = proxy_networks)]
    trusted_proxies: Option<TrustedProxies>,
}

/// Who may read, and how much one query may cost.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Reads")]
struct ReadArgs {
    /// Comma-separated `sha256:<hex>` hashes of reader tokens (`lakegate keys
    /// new-reader`); none and not behind the Apps proxy: the read API is off.
    #[arg(long = "reader-tokens", env = "LAKEGATE_READER_TOKENS", value_name = "HASHES", value_parser = reader_tokens)]
    reader_tokens: Option<ReaderTokens>,
    /// Believe the Apps proxy's sign-in headers (`X-Forwarded-Email` /
    /// `X-Forwarded-User`); only behind the Apps proxy, which sets them itself. Default:
    /// true on Databricks Apps (and behind local mode's emulated proxy), else false.
    #[arg(long = "apps-proxy-auth", env = "LAKEGATE_APPS_PROXY_AUTH", value_name = "BOOL", action = ArgAction::Set, value_parser = value::<bool>)]
    apps_proxy_auth: Option<bool>,
    /// Behind the Apps proxy, `user`: reads run with the signed-in user's
    /// `X-Forwarded-Access-Token`, so Unity Catalog decides; `app`: with the app's service
    /// principal, for LAKEGATE_READERS only.
    #[arg(long = "read-identity", env = "LAKEGATE_READ_IDENTITY", default_value = "user", value_name = "user|app", value_parser = value::<ReadIdentity>)]
    read_identity: ReadIdentity,
    /// Comma-separated e-mail addresses or user ids; an entry matches `X-Forwarded-Email`
    /// in any case or `X-Forwarded-User` exactly; `group:` entries are refused. Required
    /// with LAKEGATE_READ_IDENTITY=app.
    #[arg(long = "readers", env = "LAKEGATE_READERS", value_name = "USERS", value_parser = readers)]
    readers: Option<ReaderList>,
    /// What the read API and the fleet page query: `table`, or `dedup`, the view
    /// LAKEGATE_TABLE + `_dedup` (created at start-up), which keeps one row per reading's
    /// metric, the earliest ingested, where a sink may have written a row twice.
    #[arg(long = "read-from", env = "LAKEGATE_READ_FROM", default_value = "table", value_name = "table|dedup", value_parser = value::<ReadFrom>)]
    read_from: ReadFrom,
    /// Devices `GET /api/devices` lists (1 to 100000).
    #[arg(long = "query-max-devices", env = "LAKEGATE_QUERY_MAX_DEVICES", default_value = "1000", value_name = "N", value_parser = within::<1, 100_000>)]
    query_max_devices: u64,
    /// Points of one series (500 to 100000; the automatic bucket choice gives up to 500).
    #[arg(long = "query-max-points", env = "LAKEGATE_QUERY_MAX_POINTS", default_value = "2000", value_name = "N", value_parser = within::<500, 100_000>)]
    query_max_points: u64,
    /// Read statements running at once (1 to 64); the rest wait.
    #[arg(long = "query-concurrency", env = "LAKEGATE_QUERY_CONCURRENCY", default_value = "4", value_name = "N", value_parser = within::<1, 64>)]
    query_concurrency: u64,
    /// How long a read waits for a slot before 503 `reads_busy`.
    #[arg(long = "query-wait-secs", env = "LAKEGATE_QUERY_WAIT_SECS", default_value = "10", value_name = "SECS", value_parser = at_least_1::<u64>)]
    query_wait_secs: u64,
    /// `GET /api/devices` lists devices seen within this many days (1 to 36500).
    #[arg(long = "device-list-window-days", env = "LAKEGATE_DEVICE_LIST_WINDOW_DAYS", default_value = "365", value_name = "DAYS", value_parser = within::<1, 36_500>)]
    device_list_window_days: u64,
    /// How long one reader view's device list is served from memory (0: not kept;
    /// callers arriving together still share one query).
    #[arg(long = "device-list-cache-secs", env = "LAKEGATE_DEVICE_LIST_CACHE_SECS", default_value = "5", value_name = "SECS", value_parser = value::<u64>)]
    device_list_cache_secs: u64,
}

/// Connections: timeouts and how many may be open.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connections")]
struct ConnectionArgs {
    /// Time to send a request's headers: from connecting for the first request, from its
    /// first byte for later ones; then the connection is closed.
    #[arg(long = "header-timeout-secs", env = "LAKEGATE_HEADER_TIMEOUT_SECS", default_value = "10", value_name = "SECS", value_parser = at_least_1::<u64>)]
    header_timeout_secs: u64,
    /// A keep-alive connection waiting for its next request (HTTP/1.1) or without streams
    /// (HTTP/2) is closed after this.
    #[arg(long = "idle-timeout-secs", env = "LAKEGATE_IDLE_TIMEOUT_SECS", default_value = "60", value_name = "SECS", value_parser = at_least_1::<u64>)]
    idle_timeout_secs: u64,
    /// Open connections (1 to 1000000); beyond it a new connection gets 503 `overloaded`.
    #[arg(long = "max-connections", env = "LAKEGATE_MAX_CONNECTIONS", default_value = "4096", value_name = "N", value_parser = within::<1, 1_000_000>)]
    max_connections: u64,
    /// HTTP/2 ping interval, and how long a ping's answer may take before the connection
    /// is closed as dead.
    #[arg(long = "h2-keepalive-secs", env = "LAKEGATE_H2_KEEPALIVE_SECS", default_value = "20", value_name = "SECS", value_parser = at_least_1::<u64>)]
    h2_keepalive_secs: u64,
}

/// Former names, hidden from help: one still works (with a warning), the others stop
/// start-up saying what replaced them.
#[derive(Args, Debug, Clone)]
struct RetiredArgs {
    /// Deprecated name of LAKEGATE_LINGER_MS.
    #[arg(long = "flush-ms", env = FORMER_LINGER, hide = true, value_parser = at_least_1::<u64>)]
    flush_ms: Option<u64>,
    // Their parsers refuse every value but the harmless one, so only `Some(())` arrives.
    #[arg(long = "trust-proxy-headers", env = "LAKEGATE_TRUST_PROXY_HEADERS", hide = true, value_parser = retired_trust_proxy_headers)]
    trust_proxy_headers: Option<Retired>,
    #[arg(long = "query-as-user", env = "LAKEGATE_QUERY_AS_USER", hide = true, value_parser = retired_query_as_user)]
    query_as_user: Option<Retired>,
}

/// What `lakegate relay` adds: where accepted readings wait on disk, and where they go.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Relay")]
pub struct RelayArgs {
    /// The gateway to forward to: a Databricks App's URL, or a gateway of one's own
    /// (http:// or https://, without credentials). Required.
    #[arg(long = "upstream", env = "LAKEGATE_UPSTREAM", value_name = "URL", value_parser = upstream)]
    upstream: Option<String>,
    /// Where accepted readings wait on disk until the upstream has committed them. Required.
    #[arg(long = "spool", env = "LAKEGATE_SPOOL_DIR", value_name = "DIR", value_parser = value::<PathBuf>)]
    spool: Option<PathBuf>,
    /// Bytes of readings spooled and not yet forwarded; beyond this devices get 503.
    #[arg(long = "spool-max-bytes", env = "LAKEGATE_SPOOL_MAX_BYTES", default_value = "1073741824", value_name = "BYTES", value_parser = at_least_1::<u64>)]
    spool_max_bytes: u64,
    /// The relay's own key for the upstream (from `lakegate keys relay add`). Required;
    /// `--key-file` reads it from a file.
    #[arg(long = "relay-key", env = "LAKEGATE_RELAY_KEY", hide_env_values = true, value_name = "KEY", value_parser = relay_key)]
    relay_key: Option<SecretString>,
    /// Readings per upstream request (1 to 10000).
    #[arg(long = "relay-batch", env = "LAKEGATE_RELAY_BATCH", default_value = "500", value_name = "N", value_parser = within::<1, 10_000>)]
    relay_batch: u64,
    /// Upstream requests in flight at once, each for its own devices (1 to 16; as many
    /// as the gateway's default writers: each takes one lane's devices).
    #[arg(long = "relay-lanes", env = "LAKEGATE_RELAY_LANES", default_value = "4", value_name = "N", value_parser = within::<1, 16>)]
    relay_lanes: u64,
}

/// The settings of `lakegate relay`: the gateway's and the relay's own.
#[derive(Args, Debug, Clone)]
pub struct RelayCommandArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    relay: RelayArgs,
}

const LINGER: &str = "LAKEGATE_LINGER_MS";
const FORMER_LINGER: &str = "LAKEGATE_FLUSH_MS";

/// A former setting whose value is refused or ignored.
#[derive(Debug, Clone)]
struct Retired;

/// Hashes of reader tokens (a type of its own, so clap takes the set as one value).
#[derive(Debug, Clone)]
struct ReaderTokens(HashSet<KeyHash>);

// Value parsers: each gets the variable's (or flag's) value and says what is wrong with
// it; the caller puts the variable's name in front.

fn value<T: FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    let raw = raw.trim();
    raw.parse()
        .map_err(|err| format!("{raw:?} is not valid: {err}"))
}

fn text(raw: &str) -> Result<String, String> {
    Ok(raw.trim().to_owned())
}

fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw.trim()))
}

fn at_least_1<T: TryFrom<u64>>(raw: &str) -> Result<T, String> {
    let number: u64 = value(raw)?;
    if number == 0 {
        return Err("must be at least 1".to_owned());
    }
    T::try_from(number).map_err(|_| format!("{:?} is not valid: too large", raw.trim()))
}

fn positive(raw: &str) -> Result<NonZeroU32, String> {
    let number: u32 = at_least_1(raw)?;
    Ok(NonZeroU32::new(number).expect("at least 1"))
}

fn within<const LOW: u64, const HIGH: u64>(raw: &str) -> Result<u64, String> {
    let number: u64 = value(raw)?;
    if !(LOW..=HIGH).contains(&number) {
        return Err(format!("must be from {LOW} to {HIGH}"));
    }
    Ok(number)
}

fn secret_ref(raw: &str) -> Result<KeySource, String> {
    KeySource::parse_secret_ref(raw.trim()).map_err(|err| err.to_string())
}

fn proxy_networks(raw: &str) -> Result<TrustedProxies, String> {
    Ok(TrustedProxies {
        every_peer: false,
        networks: TrustedProxies::parse_networks(raw.trim())?,
    })
}

fn readers(raw: &str) -> Result<ReaderList, String> {
    ReaderList::parse(raw.trim())
}

/// Comma-separated `sha256:<hex>` hashes; messages name the entry, never echo it.
fn reader_tokens(raw: &str) -> Result<ReaderTokens, String> {
    let hashes = raw
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| {
            entry.parse().map_err(|err| {
                let problem = match err {
                    BadHash::RawKey => match KeyKind::of(entry) {
                        Some(
                            kind @ (KeyKind::Device | KeyKind::Relay | KeyKind::LocalWorkspace),
                        ) => format!(
                            "is {}, not a reader token's hash (see `lakegate keys new-reader`)",
                            kind.describe()
                        ),
                        _ => "is a token, not its hash (see `lakegate keys new-reader`)".into(),
                    },
                    BadHash::Format => err.to_string(),
                };
                format!("entry {} {problem}", index + 1)
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ReaderTokens(hashes))
}

/// The relay's own key: a device's key or a reader token there is refused by its
/// prefix, saying what it is (never echoing it).
fn relay_key(raw: &str) -> Result<SecretString, String> {
    let key = raw.trim();
    match KeyKind::of(key) {
        Some(kind @ (KeyKind::Device | KeyKind::Reader | KeyKind::LocalWorkspace)) => Err(format!(
            "is {}, not a relay's key (from `lakegate keys relay add`)",
            kind.describe()
        )),
        _ => Ok(SecretString::from(key)),
    }
}

fn upstream(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let url = reqwest::Url::parse(raw).map_err(|err| format!("is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
        return Err("must be an http:// or https:// URL without credentials".to_owned());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

fn retired_trust_proxy_headers(_: &str) -> Result<Retired, String> {
    Err(
        "is replaced by LAKEGATE_TRUSTED_PROXIES: the proxies' networks as comma-separated \
         CIDRs (on Databricks Apps the Apps proxy is trusted without it)"
            .to_owned(),
    )
}

/// The former switch: `true` is today's default; `false` meant the app's identity for everyone.
fn retired_query_as_user(raw: &str) -> Result<Retired, String> {
    match raw.trim() {
        "true" => Ok(Retired),
        _ => Err(
            "is replaced by LAKEGATE_READ_IDENTITY: reads run as the signed-in user by \
             default; LAKEGATE_READ_IDENTITY=app with LAKEGATE_READERS runs them as the app \
             for the listed users only"
                .to_owned(),
        ),
    }
}

/// Settings parsed from the environment map, plus any given on the command line (which
/// win). Clap reads no variable itself: each set one (empty counts as unset) becomes its
/// flag, so that a bad value's message names the variable it came from.
fn gather<A: Args + FromArgMatches>(
    command_line: Option<&ArgMatches>,
    vars: &HashMap<String, String>,
) -> Result<(A, ArgMatches), ConfigError> {
    let declared = A::augment_args(Command::new("lakegate").no_binary_name(true));
    let mut argv: Vec<OsString> = Vec::new();
    let mut variables: HashMap<String, String> = HashMap::new();
    for arg in declared.get_arguments() {
        let (Some(long), Some(variable)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let variable = variable.to_string_lossy().into_owned();
        let id = arg.get_id().as_str();
        let given = command_line
            .filter(|matches| matches.value_source(id) == Some(ValueSource::CommandLine))
            .and_then(|matches| matches.get_raw(id));
        match given {
            Some(values) => {
                argv.extend(values.map(|value| {
                    let mut flag = OsString::from(format!("--{long}="));
                    flag.push(value);
                    flag
                }));
                variables.insert(long.to_owned(), format!("--{long}"));
            }
            None => {
                let Some(value) = vars.get(&variable).filter(|v| !v.trim().is_empty()) else {
                    continue;
                };
                argv.push(format!("--{long}={value}").into());
                variables.insert(long.to_owned(), variable);
            }
        }
    }
    let matches = declared
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(argv)
        .map_err(|err| named(&err, &variables))?;
    let args = A::from_arg_matches(&matches).map_err(|err| named(&err, &variables))?;
    Ok((args, matches))
}

/// A clap error about one setting, as "VARIABLE: problem".
fn named(err: &clap::Error, variables: &HashMap<String, String>) -> ConfigError {
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.as_str(),
        _ => "",
    };
    let long = arg
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let problem = match err.source() {
        Some(source) => source.to_string(),
        None => err.kind().to_string(),
    };
    ConfigError::Invalid {
        name: variables
            .get(long)
            .cloned()
            .unwrap_or_else(|| arg.to_owned()),
        problem,
    }
}

/// Most a batch's JSON may take: the statement limit is 16 MiB, SQL text included.
const MAX_BATCH_BYTES: usize = 12 * 1024 * 1024;
/// A batch's records grow a little over its statement JSON (a timestamp per row); this
/// keeps them under Zerobus' 10 MiB per call.
const MAX_ZEROBUS_BATCH_BYTES: usize = 8 * 1024 * 1024;

impl GatewayConfig {
    /// Whether this runs on the embedded workspace (no workspace configured).
    pub fn is_local(&self) -> bool {
        !matches!(self.workspace, Workspace::Remote { .. } | Workspace::None)
    }

    /// Whether this process is a site relay (`lakegate relay`).
    pub fn is_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// What reads query: the table, or its `_dedup` view.
    pub fn read_source(&self) -> &TableName {
        &self.read.source
    }

    /// Whether the writers go through Zerobus Ingest rather than the warehouse.
    pub fn writes_through_zerobus(&self) -> bool {
        matches!(self.sink, Sink::Zerobus { .. })
    }

    /// What start-up creates: the tables and the dedup view (required when reads go to it).
    pub fn tables(&self) -> crate::table::Tables<'_> {
        crate::table::Tables {
            table: &self.table,
            dead_letter: &self.dead_letter_table,
            dedup_view: &self.dedup_view,
            required_view: self.read.source == self.dedup_view,
        }
    }

    /// Former setting names in use, each with its replacement: for the start-up log.
    pub fn deprecations(&self) -> &[String] {
        &self.deprecations
    }

    /// The gateway's settings from an environment map.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        GatewayConfig::serve(None, vars)
    }

    /// `lakegate serve`: the flags given on its command line (`ServeArgs`' matches, clap
    /// having read no variable), then the environment map.
    pub fn serve(
        command_line: Option<&ArgMatches>,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let (serve, matches) = gather::<ServeArgs>(command_line, vars)?;
        GatewayConfig::validate(serve, None, &matches, vars)
    }

    /// A site relay's settings (`lakegate relay`): the gateway's API, validation and
    /// limits, plus [`RelayArgs`]; a workspace (`DATABRICKS_HOST` or a profile) only for
    /// OAuth tokens in front of an App or a registry in secrets.
    pub fn relay_from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        GatewayConfig::relay(None, vars)
    }

    /// `lakegate relay`: as [`GatewayConfig::serve`], with `RelayCommandArgs`' matches.
    pub fn relay(
        command_line: Option<&ArgMatches>,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let (args, matches) = gather::<RelayCommandArgs>(command_line, vars)?;
        GatewayConfig::validate(args.serve, Some(args.relay), &matches, vars)
    }

    /// Turns the parsed settings into the configuration; every check that involves more
    /// than one setting is here.
    fn validate(
        args: ServeArgs,
        relay: Option<RelayArgs>,
        matches: &ArgMatches,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let ServeArgs {
            server,
            workspace,
            registry,
            writer,
            limits,
            rates,
            reads,
            connections,
            retired,
        } = args;
        let mut deprecations = Vec::new();

        let relay = relay.map(RelaySettings::validate).transpose()?;
        // A throttling answer pauses the writers for its Retry-After, at most this long:
        // the client's retries and the writers' own backoff alike.
        let max_retry_after =
            Duration::from_millis(workspace.max_retry_after_ms).min(databricks::MAX_RETRY_AFTER);
        let workspace = workspace.resolve(&server, relay.is_some(), vars)?;
        let local = !matches!(workspace, Workspace::Remote { .. } | Workspace::None);
        if matches!(workspace, Workspace::None) && registry.device_keys_secret.is_some() {
            return Err(invalid(
                "LAKEGATE_DEVICE_KEYS_SECRET",
                "needs a workspace to read the secret from: set DATABRICKS_HOST (or a profile)",
            ));
        }

        let table = match writer.table {
            Some(table) => table,
            // A relay writes no table.
            None if local || relay.is_some() => {
                "main.lakegate.readings".parse().expect("valid default")
            }
            None => {
                return Err(invalid(
                    "LAKEGATE_TABLE",
                    "is required (catalog.schema.table)",
                ));
            }
        };
        let dead_letter_table = match writer.dead_letter_table {
            Some(table) => table,
            None => format!("{table}_rejected").parse().map_err(|p| {
                invalid(
                    "LAKEGATE_REJECTED_TABLE",
                    format!("the default (LAKEGATE_TABLE + \"_rejected\") is invalid: {p}"),
                )
            })?,
        };
        if dead_letter_table == table {
            return Err(invalid(
                "LAKEGATE_REJECTED_TABLE",
                "must differ from LAKEGATE_TABLE",
            ));
        }
        let dedup_view = crate::table::dedup_view_name(&table).map_err(|p| {
            invalid(
                "LAKEGATE_TABLE",
                format!("its dedup view (LAKEGATE_TABLE + \"_dedup\") is invalid: {p}"),
            )
        })?;
        if dead_letter_table == dedup_view {
            return Err(invalid(
                "LAKEGATE_REJECTED_TABLE",
                "must differ from the dedup view, LAKEGATE_TABLE + \"_dedup\"",
            ));
        }
        let device_keys = match (
            registry.device_keys,
            registry.device_keys_secret,
            registry.device_keys_file,
        ) {
            (None, None, None) if local => None,
            (None, None, None) => {
                return Err(invalid(
                    "LAKEGATE_DEVICE_KEYS",
                    "one of LAKEGATE_DEVICE_KEYS, LAKEGATE_DEVICE_KEYS_SECRET or LAKEGATE_DEVICE_KEYS_FILE is required",
                ));
            }
            (Some(json), None, None) => Some(KeySource::Inline(json)),
            (None, Some(secret), None) => Some(secret),
            (None, None, Some(path)) => Some(KeySource::File(path)),
            _ => {
                return Err(invalid(
                    "LAKEGATE_DEVICE_KEYS",
                    "set only one of LAKEGATE_DEVICE_KEYS, LAKEGATE_DEVICE_KEYS_SECRET and LAKEGATE_DEVICE_KEYS_FILE",
                ));
            }
        };

        // The former name of the linger still works; the new one wins when both are set.
        let linger_given = matches.value_source("linger_ms") != Some(ValueSource::DefaultValue);
        let linger_ms = match retired.flush_ms {
            Some(former) if !linger_given => {
                deprecations.push(format!(
                    "{FORMER_LINGER} is deprecated: rename it {LINGER} (its value {former} is used)"
                ));
                former
            }
            Some(_) => {
                deprecations.push(format!(
                    "{FORMER_LINGER} is deprecated and ignored: {LINGER} is set too and wins"
                ));
                writer.linger_ms
            }
            None => writer.linger_ms,
        };
        let batch = BatchSettings {
            // Defaults from docs/benchmark.md ("Writers under statement latency"): a short
            // linger keeps a lone reading's commit near one statement; batches of 25,000
            // rows (about 3.5 MiB) let four writers land over 40,000 rows/s through
            // 1.5 s statements.
            linger: Duration::from_millis(linger_ms),
            max_rows: writer.batch_max_rows,
            max_bytes: writer.batch_max_bytes,
            max_retry_after,
        };
        if batch.max_bytes > MAX_BATCH_BYTES {
            return Err(invalid(
                "LAKEGATE_BATCH_MAX_BYTES",
                format!(
                    "must be at most {MAX_BATCH_BYTES} (Databricks' statement limit is 16 MiB)"
                ),
            ));
        }
        let sink = match (writer.sink, writer.zerobus_endpoint) {
            (SinkKind::Sql, None) => Sink::Statements,
            (SinkKind::Sql, Some(_)) => {
                return Err(invalid(
                    "LAKEGATE_ZEROBUS_ENDPOINT",
                    "applies only with LAKEGATE_SINK=zerobus",
                ));
            }
            (SinkKind::Zerobus, _) if relay.is_some() => {
                return Err(invalid(
                    "LAKEGATE_SINK",
                    "a relay forwards to a gateway, which writes the table: set the sink there",
                ));
            }
            (SinkKind::Zerobus, Some(_)) if local => {
                return Err(invalid(
                    "LAKEGATE_ZEROBUS_ENDPOINT",
                    "local mode serves Zerobus from its embedded workspace: leave it unset, or \
                     name the workspace with DATABRICKS_HOST",
                ));
            }
            (SinkKind::Zerobus, endpoint) => {
                if let Workspace::Remote { client } = &workspace
                    && !matches!(client.credentials, databricks::Credentials::OAuthM2m { .. })
                {
                    return Err(invalid(
                        "LAKEGATE_SINK",
                        "`zerobus` needs the service principal's OAuth credentials \
                         (DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET): Zerobus takes only \
                         tokens scoped to the table, which a personal access token cannot get",
                    ));
                }
                let endpoint = match endpoint {
                    Some(raw) => Some(databricks::normalize_host(&raw).map_err(|_| {
                        invalid(
                            "LAKEGATE_ZEROBUS_ENDPOINT",
                            "must be `<workspace-id>.zerobus.<region>.<domain>` (https), or an \
                             http:// address on loopback",
                        )
                    })?),
                    None if local => None,
                    None => {
                        return Err(invalid(
                            "LAKEGATE_ZEROBUS_ENDPOINT",
                            "is required with LAKEGATE_SINK=zerobus: the workspace's Zerobus \
                             endpoint, `<workspace-id>.zerobus.<region>.<domain>`",
                        ));
                    }
                };
                if batch.max_bytes > MAX_ZEROBUS_BATCH_BYTES {
                    return Err(invalid(
                        "LAKEGATE_BATCH_MAX_BYTES",
                        format!(
                            "must be at most {MAX_ZEROBUS_BATCH_BYTES} with LAKEGATE_SINK=zerobus \
                             (Zerobus takes at most 10 MiB of records per batch)"
                        ),
                    ));
                }
                Sink::Zerobus { endpoint }
            }
        };
        // Where a sink may write a row twice, reads go through the view unless told otherwise.
        let read_from = match (&sink, matches.value_source("read_from")) {
            (Sink::Zerobus { .. }, Some(ValueSource::DefaultValue) | None) => ReadFrom::Dedup,
            _ => reads.read_from,
        };
        let queue = QueueCapacity {
            // Room for every writer's batch in flight and the next one filling.
            rows: writer.queue_max_rows,
            bytes: writer.queue_max_bytes,
        };
        let body = BodyCaps {
            max_body_bytes: limits.max_body_bytes,
            max_readings: limits.max_readings_per_request,
            max_metrics: limits.max_metrics_per_reading,
            max_name_len: limits.max_name_len,
            max_string_len: limits.max_string_len,
            max_id_len: 128,
        };
        // The defaults leave a normal fleet far below them (a device sends one request at a
        // time, a relay one per lane) and hold the bytes a flood of held-open uploads can
        // pin to 64 bodies.
        let uploads = UploadSettings {
            max_bytes: limits
                .max_body_bytes_in_flight
                .unwrap_or(body.max_body_bytes.saturating_mul(64)),
            max_bytes_per_sender: limits
                .max_body_bytes_per_sender
                .unwrap_or(body.max_body_bytes.saturating_mul(4)),
        };
        // A body as large as the cap must fit, or some requests could never be read.
        if uploads.max_bytes_per_sender < body.max_body_bytes {
            return Err(invalid(
                "LAKEGATE_MAX_BODY_BYTES_PER_SENDER",
                format!(
                    "must hold one body of LAKEGATE_MAX_BODY_BYTES ({})",
                    body.max_body_bytes
                ),
            ));
        }
        if uploads.max_bytes < uploads.max_bytes_per_sender {
            return Err(invalid(
                "LAKEGATE_MAX_BODY_BYTES_IN_FLIGHT",
                format!(
                    "must be at least LAKEGATE_MAX_BODY_BYTES_PER_SENDER ({})",
                    uploads.max_bytes_per_sender
                ),
            ));
        }
        let largest_request = body.max_readings.saturating_mul(body.max_metrics);
        let rows_named = format!(
            "must hold the largest request: LAKEGATE_MAX_READINGS_PER_REQUEST × \
             LAKEGATE_MAX_METRICS_PER_READING = {largest_request} rows"
        );
        if queue.rows < largest_request {
            return Err(invalid("LAKEGATE_QUEUE_MAX_ROWS", rows_named));
        }
        // Names and strings come from the body; ids are charged to every row (up
        // to four bytes a character).
        let largest_request_bytes = largest_request
            .saturating_mul(std::mem::size_of::<TableRow>() + 4 * body.max_id_len)
            .saturating_add(body.max_body_bytes);
        if queue.bytes < largest_request_bytes {
            return Err(invalid(
                "LAKEGATE_QUEUE_MAX_BYTES",
                format!(
                    "must hold the largest request: {largest_request_bytes} bytes \
                     ({largest_request} rows and a body of LAKEGATE_MAX_BODY_BYTES)"
                ),
            ));
        }
        let rate_limits = RateLimitSettings {
            device_rate_per_sec: rates.device_rate_per_sec,
            device_burst: rates.device_burst,
            global_rate_per_sec: rates.global_rate_per_sec,
            global_burst: rates.global_burst,
            auth_failures_per_min: rates.auth_failures_per_min,
            auth_failure_burst: rates.auth_failure_burst,
            reader_requests_per_min: rates.reader_requests_per_min,
            reader_burst: rates.reader_burst,
        };
        if (rate_limits.global_burst.get() as usize) < largest_request {
            return Err(invalid("LAKEGATE_GLOBAL_BURST", rows_named));
        }

        // Behind the Apps proxy the peer is always the proxy; elsewhere headers could be forged.
        // Locally behind the emulated proxy the same holds: local mode listens on loopback.
        #[cfg(feature = "local")]
        let behind_local_proxy = matches!(
            workspace,
            Workspace::Local {
                apps_proxy: true,
                ..
            }
        );
        #[cfg(not(feature = "local"))]
        let behind_local_proxy = false;
        let on_databricks_apps = server.app_name.is_some() || behind_local_proxy;
        let apps_proxy_auth = reads.apps_proxy_auth.unwrap_or(on_databricks_apps);
        let readers = reads.readers.unwrap_or_default();
        match (reads.read_identity, readers.is_empty()) {
            (ReadIdentity::App, _) if !apps_proxy_auth => {
                return Err(invalid(
                    "LAKEGATE_READ_IDENTITY",
                    "`app` applies only behind the Databricks Apps proxy (LAKEGATE_APPS_PROXY_AUTH)",
                ));
            }
            (ReadIdentity::App, true) => {
                return Err(invalid(
                    "LAKEGATE_READERS",
                    "is required with LAKEGATE_READ_IDENTITY=app: the e-mail addresses or user ids \
                     that may read with the app's identity",
                ));
            }
            (ReadIdentity::User, false) => {
                return Err(invalid(
                    "LAKEGATE_READERS",
                    "applies only with LAKEGATE_READ_IDENTITY=app (as the user, Unity Catalog decides)",
                ));
            }
            _ => {}
        }
        // On Databricks Apps every peer is the Apps proxy; LAKEGATE_TRUSTED_PROXIES names
        // (further) proxies by network.
        let trusted_proxies = TrustedProxies {
            every_peer: on_databricks_apps,
            ..rates.trusted_proxies.unwrap_or_default()
        };

        Ok(GatewayConfig {
            // A local trial stays on this machine; an app must listen on every interface.
            listen: SocketAddr::new(
                server.listen_addr.unwrap_or(IpAddr::V4(if local {
                    Ipv4Addr::LOCALHOST
                } else {
                    Ipv4Addr::UNSPECIFIED
                })),
                server.port,
            ),
            workspace,
            read: ReadSettings {
                source: match read_from {
                    ReadFrom::Table => table.clone(),
                    ReadFrom::Dedup => dedup_view.clone(),
                },
                reader_tokens: reads.reader_tokens.map(|t| t.0).unwrap_or_default(),
                apps_proxy_auth,
                identity: reads.read_identity,
                readers,
                max_devices: reads.query_max_devices as usize,
                max_points: reads.query_max_points as usize,
                query_concurrency: reads.query_concurrency as usize,
                query_wait: Duration::from_secs(reads.query_wait_secs),
                device_list_ttl: Duration::from_secs(reads.device_list_cache_secs),
                device_list_window: Duration::from_secs(24 * 3600 * reads.device_list_window_days),
            },
            table,
            dead_letter_table,
            dedup_view,
            device_keys,
            keys_refresh: Duration::from_secs(registry.keys_refresh_secs),
            batch,
            writers: writer.writers as usize,
            sink,
            queue,
            body,
            uploads,
            rate_limits,
            trusted_proxies,
            ack_timeout: Duration::from_secs(writer.ack_timeout_secs),
            shutdown: ShutdownDeadlines::new(Duration::from_secs(server.shutdown_grace_secs)),
            connections: ConnectionLimits {
                header_timeout: Duration::from_secs(connections.header_timeout_secs),
                idle_timeout: Duration::from_secs(connections.idle_timeout_secs),
                max_connections: connections.max_connections as usize,
                h2_keepalive: Duration::from_secs(connections.h2_keepalive_secs),
            },
            relay,
            deprecations,
        })
    }
}

impl RelaySettings {
    fn validate(args: RelayArgs) -> Result<Self, ConfigError> {
        Ok(RelaySettings {
            upstream: args
                .upstream
                .ok_or_else(|| invalid("LAKEGATE_UPSTREAM", "is required (the gateway's URL)"))?,
            spool_dir: args
                .spool
                .ok_or_else(|| invalid("LAKEGATE_SPOOL_DIR", "is required (a directory)"))?,
            spool_max_bytes: args.spool_max_bytes,
            key: args.relay_key.ok_or_else(|| {
                invalid(
                    "LAKEGATE_RELAY_KEY",
                    "is required (the relay's key, from `lakegate keys relay add`)",
                )
            })?,
            batch: args.relay_batch as usize,
            lanes: args.relay_lanes as usize,
        })
    }
}

impl WorkspaceArgs {
    /// A workspace is configured by `DATABRICKS_HOST` or a profile. Without one, a gateway
    /// built with the `local` feature runs on the embedded emulator, and a relay has none.
    fn resolve(
        self,
        server: &ServerArgs,
        relay: bool,
        vars: &HashMap<String, String>,
    ) -> Result<Workspace, ConfigError> {
        let configured = self.host.is_some() || self.profile.is_some();
        if !configured && relay {
            return Ok(Workspace::None);
        }
        if !configured {
            #[cfg(feature = "local")]
            return Ok(Workspace::Local {
                data_dir: server.local_dir.clone(),
                apps_proxy: server.local_apps_proxy,
            });
            #[cfg(not(feature = "local"))]
            return {
                // Only local mode has settings of its own in the server section.
                let _ = server;
                Err(invalid(
                    "DATABRICKS_HOST",
                    "is required: this build has no embedded emulator (built without the `local` feature)",
                ))
            };
        }
        let explicit = databricks::Settings {
            host: self.host,
            token: self.token,
            client_id: self.client_id,
            client_secret: self.client_secret,
            warehouse_id: self.warehouse_id,
            profile: self.profile,
            ..databricks::Settings::default()
        };
        let mut client = databricks::Config::resolve(explicit, vars)?;
        if relay {
            return Ok(Workspace::Remote {
                client: Box::new(client),
            });
        }
        if client.warehouse_id.is_none() {
            return Err(invalid("DATABRICKS_WAREHOUSE_ID", "is required"));
        }
        // A throttling answer pauses every writer for its Retry-After, at most this long.
        client.retry.max_retry_after =
            Duration::from_millis(self.max_retry_after_ms).min(databricks::MAX_RETRY_AFTER);
        Ok(Workspace::Remote {
            client: Box::new(client),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn remote() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DATABRICKS_HOST", "adb-1.azuredatabricks.net"),
            ("DATABRICKS_CLIENT_ID", "sp"),
            ("DATABRICKS_CLIENT_SECRET", "s3cr3t"),
            ("DATABRICKS_WAREHOUSE_ID", "wh"),
            ("LAKEGATE_TABLE", "iot.raw.readings"),
            ("LAKEGATE_DEVICE_KEYS_SECRET", "lakegate/devices"),
        ]
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        GatewayConfig::from_map(&vars(pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn remote_settings_resolve_with_defaults() {
        let config = GatewayConfig::from_map(&vars(&remote())).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.table.to_string(), "iot.raw.readings");
        assert_eq!(
            config.dead_letter_table.to_string(),
            "iot.raw.readings_rejected"
        );
        assert_eq!(config.batch.linger, Duration::from_millis(20));
        assert_eq!(config.trusted_proxies, TrustedProxies::default());
        assert!(matches!(config.device_keys, Some(KeySource::Secret(_))));
        let Workspace::Remote { client } = config.workspace else {
            panic!("expected a remote workspace");
        };
        assert_eq!(client.host, "https://adb-1.azuredatabricks.net");
        assert_eq!(client.warehouse_id.as_deref(), Some("wh"));
        assert_eq!(client.retry.max_retry_after, databricks::MAX_RETRY_AFTER);
    }

    /// The reference tables of docs/configuration.md, one per help heading, from the
    /// declaration itself.
    fn settings_tables() -> String {
        let command = RelayCommandArgs::augment_args(Command::new("lakegate"));
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let (Some(long), Some(variable)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let heading = arg.get_help_heading().unwrap_or("Other").to_owned();
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| format!("`{}`", value.to_string_lossy()))
                .collect();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let row = format!(
                "| `{}` | `--{long}` | {} | {} |",
                variable.to_string_lossy(),
                default.join(", "),
                help.replace('\n', " ").replace('|', "\\|"),
            );
            match sections.iter_mut().find(|(name, _)| *name == heading) {
                Some((_, rows)) => rows.push(row),
                None => sections.push((heading, vec![row])),
            }
        }
        let mut text = String::new();
        for (heading, rows) in sections {
            let only = if heading == "Relay" {
                " (`lakegate relay` only)"
            } else {
                ""
            };
            text.push_str(&format!(
                "\n### {heading}{only}\n\n| variable | flag | default | meaning |\n| --- | --- | --- | --- |\n"
            ));
            for row in rows {
                text.push_str(&row);
                text.push('\n');
            }
        }
        text
    }

    /// docs/configuration.md's tables are the declaration's: a changed setting changes them.
    #[test]
    fn configuration_doc() {
        const BEGIN: &str = "<!-- BEGIN generated from src/config.rs -->\n";
        const END: &str = "<!-- END generated -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md");
        let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
            panic!("docs/configuration.md lacks the markers {BEGIN:?} and {END:?}");
        };
        let start = start + BEGIN.len();
        let expected = settings_tables();
        if doc[start..end] == expected {
            return;
        }
        if std::env::var_os("LAKEGATE_WRITE_DOCS").is_some() {
            let updated = format!("{}{expected}{}", &doc[..start], &doc[end..]);
            std::fs::write(path, updated).expect("writing docs/configuration.md");
            return;
        }
        panic!(
            "docs/configuration.md does not match the settings declared in src/config.rs; \
             regenerate it with `LAKEGATE_WRITE_DOCS=1 cargo test -p lakegate --lib configuration_doc`"
        );
    }

    #[test]
    fn the_former_linger_name_still_works_with_a_warning() {
        let config = GatewayConfig::from_map(&vars(&remote())).unwrap();
        assert!(config.deprecations().is_empty());

        let mut pairs = remote();
        pairs.push(("LAKEGATE_FLUSH_MS", "70"));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        assert_eq!(config.batch.linger, Duration::from_millis(70));
        let [warning] = config.deprecations() else {
            panic!("one warning: {:?}", config.deprecations());
        };
        assert!(
            warning.starts_with("LAKEGATE_FLUSH_MS is deprecated: rename it LAKEGATE_LINGER_MS"),
            "{warning}"
        );

        // Both set: the new name wins, and the warning says so.
        pairs.push(("LAKEGATE_LINGER_MS", "30"));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        assert_eq!(config.batch.linger, Duration::from_millis(30));
        let [warning] = config.deprecations() else {
            panic!("one warning: {:?}", config.deprecations());
        };
        assert!(warning.contains("ignored: LAKEGATE_LINGER_MS is set too and wins"));
    }

    #[test]
    fn blank_values_are_unset_and_flags_win_over_variables() {
        let mut pairs = remote();
        pairs.extend([("LAKEGATE_WRITERS", "  "), ("LAKEGATE_LINGER_MS", " 40 ")]);
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        assert_eq!(config.writers, 4);
        assert_eq!(config.batch.linger, Duration::from_millis(40));

        let command_line = ServeArgs::augment_args(Command::new("serve"))
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(["serve", "--linger-ms", "5", "--writers=2"])
            .unwrap();
        let config = GatewayConfig::serve(Some(&command_line), &vars(&pairs)).unwrap();
        assert_eq!(config.batch.linger, Duration::from_millis(5));
        assert_eq!(config.writers, 2);
        assert!(config.deprecations().is_empty());
    }

    #[test]
    fn the_longest_retry_after_pause_is_a_setting_within_the_clients_cap() {
        let mut pairs = remote();
        pairs.push(("LAKEGATE_MAX_RETRY_AFTER_MS", "1500"));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        let Workspace::Remote { client } = config.workspace else {
            panic!("expected a remote workspace");
        };
        assert_eq!(client.retry.max_retry_after, Duration::from_millis(1500));
        assert_eq!(config.batch.max_retry_after, Duration::from_millis(1500));
        for beyond in ["0", "60001"] {
            let mut pairs = remote();
            pairs.push(("LAKEGATE_MAX_RETRY_AFTER_MS", beyond));
            let message = error_of(&pairs);
            assert!(
                message.starts_with("LAKEGATE_MAX_RETRY_AFTER_MS:"),
                "{message}"
            );
        }
    }

    #[test]
    fn reads_go_to_the_table_or_its_dedup_view() {
        let config = GatewayConfig::from_map(&vars(&remote())).unwrap();
        assert_eq!(config.read.source, config.table);
        assert!(!config.tables().required_view);
        let mut pairs = remote();
        pairs.push(("LAKEGATE_READ_FROM", "dedup"));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        assert_eq!(config.read.source.to_string(), "iot.raw.readings_dedup");
        assert!(config.tables().required_view);

        pairs.push(("LAKEGATE_READ_FROM", "view"));
        let message = error_of(&pairs);
        assert!(
            message.starts_with("LAKEGATE_READ_FROM:") && message.contains("`table` or `dedup`"),
            "{message}"
        );
        let mut pairs = remote();
        pairs.push(("LAKEGATE_REJECTED_TABLE", "iot.raw.readings_dedup"));
        assert!(error_of(&pairs).contains("must differ from the dedup view"));
    }

    #[test]
    fn bad_settings_are_named() {
        let mut pairs = remote();
        pairs.push(("LAKEGATE_FLUSH_MS", "soon"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_FLUSH_MS:"));

        let mut pairs = remote();
        pairs.push(("DATABRICKS_APP_PORT", "70000"));
        assert!(error_of(&pairs).starts_with("DATABRICKS_APP_PORT:"));

        let mut pairs = remote();
        pairs.retain(|(k, _)| *k != "LAKEGATE_TABLE");
        assert!(error_of(&pairs).starts_with("LAKEGATE_TABLE: is required"));

        let mut pairs = remote();
        pairs.push(("LAKEGATE_TABLE", "readings"));
        let message = error_of(&pairs);
        assert!(message.contains("catalog.schema.table"), "{message}");

        let mut pairs = remote();
        pairs.push(("LAKEGATE_REJECTED_TABLE", "iot.raw"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_REJECTED_TABLE:"));
        let mut pairs = remote();
        pairs.push(("LAKEGATE_REJECTED_TABLE", "iot.raw.readings"));
        assert!(error_of(&pairs).contains("must differ from LAKEGATE_TABLE"));
        let mut pairs = remote();
        pairs.push(("LAKEGATE_REJECTED_TABLE", "iot.errors.refused"));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        assert_eq!(config.dead_letter_table.to_string(), "iot.errors.refused");

        let mut pairs = remote();
        pairs.push(("LAKEGATE_DEVICE_KEYS_FILE", "/etc/keys.json"));
        assert!(error_of(&pairs).contains("set only one"));

        let mut pairs = remote();
        pairs.retain(|(k, _)| *k != "DATABRICKS_WAREHOUSE_ID");
        assert!(error_of(&pairs).starts_with("DATABRICKS_WAREHOUSE_ID:"));

        let mut pairs = remote();
        pairs.push(("LAKEGATE_QUEUE_MAX_ROWS", "1000"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_QUEUE_MAX_ROWS: must hold"));

        let mut pairs = remote();
        pairs.push(("LAKEGATE_BATCH_MAX_ROWS", "0"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_BATCH_MAX_ROWS: must be at least 1"));
    }

    #[test]
    fn body_bytes_in_flight_follow_the_body_cap_and_hold_one_body() {
        let config = GatewayConfig::from_map(&vars(&remote())).unwrap();
        let cap = config.body.max_body_bytes;
        assert_eq!(
            config.uploads,
            UploadSettings {
                max_bytes: 64 * cap,
                max_bytes_per_sender: 4 * cap,
            }
        );
        let mut pairs = remote();
        pairs.push(("LAKEGATE_MAX_BODY_BYTES", "1000"));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        assert_eq!(config.uploads.max_bytes_per_sender, 4000);

        let mut pairs = remote();
        pairs.extend([
            ("LAKEGATE_MAX_BODY_BYTES", "1000"),
            ("LAKEGATE_MAX_BODY_BYTES_PER_SENDER", "999"),
        ]);
        let message = error_of(&pairs);
        assert!(
            message.starts_with("LAKEGATE_MAX_BODY_BYTES_PER_SENDER: must hold one body"),
            "{message}"
        );
        let mut pairs = remote();
        pairs.extend([
            ("LAKEGATE_MAX_BODY_BYTES_PER_SENDER", "2000000"),
            ("LAKEGATE_MAX_BODY_BYTES_IN_FLIGHT", "1999999"),
        ]);
        let message = error_of(&pairs);
        assert!(
            message.starts_with("LAKEGATE_MAX_BODY_BYTES_IN_FLIGHT: must be at least"),
            "{message}"
        );
    }

    #[test]
    fn apps_runtime_trusts_proxy_headers() {
        let mut pairs = remote();
        pairs.push(("DATABRICKS_APP_NAME", "lakegate"));
        let trusted = GatewayConfig::from_map(&vars(&pairs))
            .unwrap()
            .trusted_proxies;
        assert!(trusted.every_peer && trusted.networks.is_empty());
    }

    #[test]
    fn trusted_proxies_are_networks() {
        let mut pairs = remote();
        pairs.push(("LAKEGATE_TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8"));
        let trusted = GatewayConfig::from_map(&vars(&pairs))
            .unwrap()
            .trusted_proxies;
        assert!(!trusted.every_peer);
        assert_eq!(trusted.networks.len(), 2);

        let mut pairs = remote();
        pairs.push(("LAKEGATE_TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.0/40"));
        let error = error_of(&pairs);
        assert!(
            error.starts_with("LAKEGATE_TRUSTED_PROXIES: \"10.0.0.0/40\" is not a CIDR"),
            "{error}"
        );
        // The old switch is refused with its replacement named.
        let mut pairs = remote();
        pairs.push(("LAKEGATE_TRUST_PROXY_HEADERS", "true"));
        let error = error_of(&pairs);
        assert!(
            error.starts_with(
                "LAKEGATE_TRUST_PROXY_HEADERS: is replaced by LAKEGATE_TRUSTED_PROXIES"
            ),
            "{error}"
        );
    }

    #[test]
    fn debug_hides_the_client_secret_and_inline_keys() {
        let mut pairs = remote();
        pairs.retain(|(k, _)| *k != "LAKEGATE_DEVICE_KEYS_SECRET");
        pairs.push((
            "LAKEGATE_DEVICE_KEYS",
            r#"{"devices":{"d":{"keys":["sha256:abc"]}}}"#,
        ));
        let config = GatewayConfig::from_map(&vars(&pairs)).unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("sha256:abc"),
            "{debug}"
        );
    }

    #[test]
    fn read_settings_default_and_validate() {
        let config = GatewayConfig::from_map(&vars(&remote())).unwrap();
        assert!(config.read.reader_tokens.is_empty());
        assert_eq!(config.read.identity, ReadIdentity::User);
        assert_eq!(
            (config.read.max_devices, config.read.max_points),
            (1000, 2000)
        );

        let token = crate::devices::generate_key();
        let other = crate::devices::hash_key("other");
        let list = format!(" {} ,{other},", token.hash);
        let mut pairs = remote();
        pairs.extend([
            ("LAKEGATE_READER_TOKENS", list.as_str()),
            ("LAKEGATE_QUERY_MAX_DEVICES", "5"),
            ("LAKEGATE_QUERY_MAX_POINTS", "500"),
        ]);
        let read = GatewayConfig::from_map(&vars(&pairs)).unwrap().read;
        assert_eq!((read.max_devices, read.max_points), (5, 500));
        let expected: HashSet<KeyHash> =
            [token.hash.parse().unwrap(), other.parse().unwrap()].into();
        assert_eq!(read.reader_tokens, expected);

        let raw = secrecy::ExposeSecret::expose_secret(&token.key).to_owned();
        for (name, value, message) in [
            (
                "LAKEGATE_READER_TOKENS",
                raw.as_str(),
                "entry 1 is a token, not its hash",
            ),
            (
                "LAKEGATE_READER_TOKENS",
                "sha256:00",
                "entry 1 is not \"sha256:",
            ),
            (
                "LAKEGATE_QUERY_AS_USER",
                "false",
                "is replaced by LAKEGATE_READ_IDENTITY",
            ),
            (
                "LAKEGATE_READ_IDENTITY",
                "service",
                "must be `user` or `app`",
            ),
            ("LAKEGATE_READ_IDENTITY", "app", "applies only behind"),
            ("LAKEGATE_READERS", "ana@example.com", "applies only with"),
            (
                "LAKEGATE_QUERY_MAX_DEVICES",
                "0",
                "must be from 1 to 100000",
            ),
            (
                "LAKEGATE_QUERY_MAX_POINTS",
                "499",
                "must be from 500 to 100000",
            ),
            ("LAKEGATE_QUERY_MAX_POINTS", "many", "is not valid"),
        ] {
            let mut pairs = remote();
            pairs.push((name, value));
            let error = error_of(&pairs);
            assert!(error.starts_with(&format!("{name}: ")), "{error}");
            assert!(error.contains(message), "{error}");
            assert!(!error.contains(&raw), "{error}");
        }
    }

    #[test]
    fn reading_as_the_app_needs_a_list_of_readers() {
        let apps = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = remote();
            pairs.push(("DATABRICKS_APP_NAME", "lakegate"));
            pairs.extend_from_slice(extra);
            pairs
        };
        let read = GatewayConfig::from_map(&vars(&apps(&[]))).unwrap().read;
        assert!(read.apps_proxy_auth);
        assert_eq!(read.identity, ReadIdentity::User);
        // The former switch's `true` is the default now.
        let read = GatewayConfig::from_map(&vars(&apps(&[("LAKEGATE_QUERY_AS_USER", "true")])))
            .unwrap()
            .read;
        assert_eq!(read.identity, ReadIdentity::User);

        let error = error_of(&apps(&[("LAKEGATE_READ_IDENTITY", "app")]));
        assert!(
            error.starts_with("LAKEGATE_READERS: is required with LAKEGATE_READ_IDENTITY=app"),
            "{error}"
        );
        let error = error_of(&apps(&[
            ("LAKEGATE_READ_IDENTITY", "app"),
            ("LAKEGATE_READERS", "ana@example.com, group:fleet-ops"),
        ]));
        assert!(
            error.starts_with("LAKEGATE_READERS: \"group:fleet-ops\": groups are not supported"),
            "{error}"
        );

        let read = GatewayConfig::from_map(&vars(&apps(&[
            ("LAKEGATE_READ_IDENTITY", "app"),
            ("LAKEGATE_READERS", " Ana@Example.com ,, 1234@5678"),
        ])))
        .unwrap()
        .read;
        assert_eq!(read.identity, ReadIdentity::App);
        let readers = read.readers;
        assert!(readers.admits(Some("ana@example.COM"), None));
        assert!(readers.admits(None, Some("1234@5678")));
        assert!(readers.admits(Some("eve@example.com"), Some("1234@5678")));
        assert!(!readers.admits(Some("eve@example.com"), Some("9999@5678")));
        assert!(!readers.admits(None, None));
        // A user id matches exactly; an address in any case.
        assert!(!readers.admits(None, Some("ana@example.com")));
    }

    #[cfg(feature = "local")]
    #[test]
    fn no_workspace_means_local_mode() {
        let config = GatewayConfig::from_map(&HashMap::new()).unwrap();
        assert!(matches!(config.workspace, Workspace::Local { .. }));
        assert_eq!(config.table.to_string(), "main.lakegate.readings");
    }

    #[test]
    fn connection_settings_default_and_validate() {
        let config = GatewayConfig::from_map(&vars(&remote())).unwrap();
        assert_eq!(config.connections, ConnectionLimits::default());
        assert_eq!(config.connections.header_timeout, Duration::from_secs(10));
        assert_eq!(config.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.connections.max_connections, 4096);

        let mut pairs = remote();
        pairs.push(("LAKEGATE_MAX_CONNECTIONS", "0"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_MAX_CONNECTIONS: must be from 1"));
        let mut pairs = remote();
        pairs.push(("LAKEGATE_HEADER_TIMEOUT_SECS", "0"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_HEADER_TIMEOUT_SECS: must be at least 1"));
        let mut pairs = remote();
        pairs.push(("LAKEGATE_IDLE_TIMEOUT_SECS", "a minute"));
        assert!(error_of(&pairs).starts_with("LAKEGATE_IDLE_TIMEOUT_SECS:"));
    }
}
