//! Gateway settings, read from the environment and validated at start-up: a
//! bad or missing setting stops the process with a message naming it.
//!
//! Databricks' own names where they exist (`DATABRICKS_*`, resolved by the
//! client's unified configuration), ours prefixed `LAKEGATE_`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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
    pub rejected_table: TableName,
    /// `None` only in local mode, where a demo registry is created.
    pub(crate) device_keys: Option<KeySource>,
    pub(crate) keys_refresh: Duration,
    pub(crate) batch: BatchSettings,
    /// Batch writers, each with at most one statement in flight; a device's rows always
    /// go to the same one.
    pub(crate) writers: usize,
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
    /// On SIGTERM, how long queued readings may take to flush (Databricks kills at 15 s).
    pub(crate) shutdown: ShutdownDeadlines,
    pub(crate) read: ReadSettings,
    /// Header and idle timeouts, and how many connections may be open.
    pub(crate) connections: ConnectionLimits,
    /// Set when this process is a site relay (`lakegate relay`): it spools and forwards
    /// instead of writing the table, and serves no reads.
    pub(crate) relay: Option<RelaySettings>,
}

/// The shutdown timeline, all from one grace period (measured from the signal): requests
/// in flight may finish during the first half, a request waiting for its commit is answered
/// by the first third (before its connection is cut), and the writer flushes until the end.
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

    /// How long queued rows may take to be written.
    pub(crate) fn flush(&self) -> Duration {
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
    Invalid { name: &'static str, problem: String },
    #[error("Databricks workspace: {0}")]
    Workspace(#[from] databricks::ConfigError),
}

fn invalid(name: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        problem: problem.into(),
    }
}

/// Reads typed settings from an environment map; empty values count as unset.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|err| invalid(name, format!("{raw:?} is not valid: {err}"))),
        }
    }

    fn positive(&self, name: &'static str, default: u32) -> Result<NonZeroU32, ConfigError> {
        let value: u32 = self.parse(name, default)?;
        NonZeroU32::new(value).ok_or_else(|| invalid(name, "must be at least 1"))
    }

    fn count(&self, name: &'static str, default: usize) -> Result<usize, ConfigError> {
        match self.parse(name, default)? {
            0 => Err(invalid(name, "must be at least 1")),
            value => Ok(value),
        }
    }

    fn within(
        &self,
        name: &'static str,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let value = self.parse(name, default)?;
        if !range.contains(&value) {
            return Err(invalid(
                name,
                format!("must be from {} to {}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(
            self.count(name, default as usize)? as u64
        ))
    }

    fn secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(
            self.count(name, default as usize)? as u64
        ))
    }
}

/// Most a batch's JSON may take: the statement limit is 16 MiB, SQL text included.
const MAX_BATCH_BYTES: usize = 12 * 1024 * 1024;

impl GatewayConfig {
    /// From the process environment.
    /// Whether this runs on the embedded workspace (no workspace configured).
    pub fn is_local(&self) -> bool {
        !matches!(self.workspace, Workspace::Remote { .. } | Workspace::None)
    }

    /// Whether this process is a site relay (`lakegate relay`).
    pub fn is_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// The gateway's settings from an environment map.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Env(vars);
        let workspace = workspace(&env, vars)?;
        GatewayConfig::build(&env, workspace, None)
    }

    /// A site relay's settings (`lakegate relay`): the gateway's API, validation and
    /// limits, plus `LAKEGATE_UPSTREAM`, `LAKEGATE_SPOOL_DIR`, `LAKEGATE_SPOOL_MAX_BYTES`,
    /// `LAKEGATE_RELAY_KEY`, `LAKEGATE_RELAY_BATCH` and `LAKEGATE_RELAY_LANES`; a workspace (`DATABRICKS_HOST` or a
    /// profile) only for OAuth tokens in front of an App or a registry in secrets.
    pub fn relay_from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Env(vars);
        let upstream = env
            .raw("LAKEGATE_UPSTREAM")
            .ok_or_else(|| invalid("LAKEGATE_UPSTREAM", "is required (the gateway's URL)"))?;
        let url = reqwest::Url::parse(upstream)
            .map_err(|err| invalid("LAKEGATE_UPSTREAM", format!("is not a URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return Err(invalid(
                "LAKEGATE_UPSTREAM",
                "must be an http:// or https:// URL without credentials",
            ));
        }
        let relay = RelaySettings {
            upstream: upstream.trim_end_matches('/').to_owned(),
            spool_dir: env
                .raw("LAKEGATE_SPOOL_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| invalid("LAKEGATE_SPOOL_DIR", "is required (a directory)"))?,
            spool_max_bytes: env.count("LAKEGATE_SPOOL_MAX_BYTES", 1024 * 1024 * 1024)? as u64,
            key: relay_key(&env)?,
            batch: env.within("LAKEGATE_RELAY_BATCH", 500, 1..=10_000)?,
            // As many as the gateway's default writers: each takes one lane's devices.
            lanes: env.within("LAKEGATE_RELAY_LANES", 4, 1..=16)?,
        };
        let workspace = match workspace_configured(&env) {
            true => Workspace::Remote {
                client: Box::new(databricks::Config::resolve(
                    databricks::Settings::default(),
                    vars,
                )?),
            },
            false => Workspace::None,
        };
        if matches!(workspace, Workspace::None) && env.raw("LAKEGATE_DEVICE_KEYS_SECRET").is_some()
        {
            return Err(invalid(
                "LAKEGATE_DEVICE_KEYS_SECRET",
                "needs a workspace to read the secret from: set DATABRICKS_HOST (or a profile)",
            ));
        }
        GatewayConfig::build(&env, workspace, Some(relay))
    }

    fn build(
        env: &Env,
        workspace: Workspace,
        relay: Option<RelaySettings>,
    ) -> Result<Self, ConfigError> {
        let local = !matches!(workspace, Workspace::Remote { .. } | Workspace::None);

        let table = match env.raw("LAKEGATE_TABLE") {
            Some(raw) => raw.parse().map_err(|p| invalid("LAKEGATE_TABLE", p))?,
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
        let rejected_table = match env.raw("LAKEGATE_REJECTED_TABLE") {
            Some(raw) => raw
                .parse()
                .map_err(|p| invalid("LAKEGATE_REJECTED_TABLE", p))?,
            None => format!("{table}_rejected").parse().map_err(|p| {
                invalid(
                    "LAKEGATE_REJECTED_TABLE",
                    format!("the default (LAKEGATE_TABLE + \"_rejected\") is invalid: {p}"),
                )
            })?,
        };
        if rejected_table == table {
            return Err(invalid(
                "LAKEGATE_REJECTED_TABLE",
                "must differ from LAKEGATE_TABLE",
            ));
        }
        let device_keys = device_keys(env)?;
        if device_keys.is_none() && !local {
            return Err(invalid(
                "LAKEGATE_DEVICE_KEYS",
                "one of LAKEGATE_DEVICE_KEYS, LAKEGATE_DEVICE_KEYS_SECRET or LAKEGATE_DEVICE_KEYS_FILE is required",
            ));
        }

        let batch = BatchSettings {
            // Defaults from docs/benchmark.md ("Writers under statement latency"): a short
            // linger keeps a lone reading's commit near one statement; batches of 25,000
            // rows (about 3.5 MiB) let four writers land over 40,000 rows/s through
            // 1.5 s statements.
            flush_interval: env.millis("LAKEGATE_FLUSH_MS", 20)?,
            max_rows: env.count("LAKEGATE_BATCH_MAX_ROWS", 25_000)?,
            max_bytes: env.count("LAKEGATE_BATCH_MAX_BYTES", 8 * 1024 * 1024)?,
        };
        // A warehouse runs about ten statements at once; more writers only queue there.
        let writers = env.within("LAKEGATE_WRITERS", 4, 1..=16)?;
        let queue = QueueCapacity {
            // Room for every writer's batch in flight and the next one filling.
            rows: env.count("LAKEGATE_QUEUE_MAX_ROWS", 400_000)?,
            bytes: env.count("LAKEGATE_QUEUE_MAX_BYTES", 256 * 1024 * 1024)?,
        };
        if batch.max_bytes > MAX_BATCH_BYTES {
            return Err(invalid(
                "LAKEGATE_BATCH_MAX_BYTES",
                format!(
                    "must be at most {MAX_BATCH_BYTES} (Databricks' statement limit is 16 MiB)"
                ),
            ));
        }
        let body = BodyCaps {
            max_body_bytes: env.count("LAKEGATE_MAX_BODY_BYTES", 1024 * 1024)?,
            max_readings: env.count("LAKEGATE_MAX_READINGS_PER_REQUEST", 1000)?,
            max_metrics: env.count("LAKEGATE_MAX_METRICS_PER_READING", 100)?,
            max_name_len: env.count("LAKEGATE_MAX_NAME_LEN", 128)?,
            max_string_len: env.count("LAKEGATE_MAX_STRING_LEN", 1024)?,
            max_id_len: 128,
        };
        let uploads = upload_settings(env, body.max_body_bytes)?;
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
            device_rate_per_sec: env.positive("LAKEGATE_DEVICE_RATE_PER_SEC", 50)?,
            device_burst: env.positive("LAKEGATE_DEVICE_BURST", 1000)?,
            // Above what the default writers land, so that the writers, not this, bind.
            global_rate_per_sec: env.positive("LAKEGATE_GLOBAL_RATE_PER_SEC", 250_000)?,
            global_burst: env.positive("LAKEGATE_GLOBAL_BURST", 500_000)?,
            auth_failures_per_min: env.positive("LAKEGATE_AUTH_FAILURES_PER_MIN", 30)?,
            auth_failure_burst: env.positive("LAKEGATE_AUTH_FAILURE_BURST", 10)?,
            reader_requests_per_min: env.positive("LAKEGATE_READER_REQUESTS_PER_MIN", 600)?,
            reader_burst: env.positive("LAKEGATE_READER_BURST", 60)?,
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
        let on_databricks_apps = env.raw("DATABRICKS_APP_NAME").is_some() || behind_local_proxy;
        let apps_proxy_auth = env.parse("LAKEGATE_APPS_PROXY_AUTH", on_databricks_apps)?;
        let (identity, readers) = read_identity(env, apps_proxy_auth)?;

        Ok(GatewayConfig {
            // A local trial stays on this machine; an app must listen on every interface.
            listen: SocketAddr::new(
                env.parse(
                    "LAKEGATE_LISTEN_ADDR",
                    IpAddr::V4(if local {
                        Ipv4Addr::LOCALHOST
                    } else {
                        Ipv4Addr::UNSPECIFIED
                    }),
                )?,
                env.parse("DATABRICKS_APP_PORT", 8000u16)?,
            ),
            workspace,
            table,
            rejected_table,
            device_keys,
            keys_refresh: env.secs("LAKEGATE_KEYS_REFRESH_SECS", 60)?,
            batch,
            writers,
            queue,
            body,
            uploads,
            rate_limits,
            trusted_proxies: trusted_proxies(env, on_databricks_apps)?,
            ack_timeout: env.secs("LAKEGATE_ACK_TIMEOUT_SECS", 30)?,
            shutdown: ShutdownDeadlines::new(env.secs("LAKEGATE_SHUTDOWN_GRACE_SECS", 12)?),
            read: ReadSettings {
                reader_tokens: reader_tokens(env)?,
                apps_proxy_auth,
                identity,
                readers,
                max_devices: env.within("LAKEGATE_QUERY_MAX_DEVICES", 1000, 1..=100_000)?,
                // The automatic bucket choice gives up to 500 points.
                max_points: env.within("LAKEGATE_QUERY_MAX_POINTS", 2000, 500..=100_000)?,
                query_concurrency: env.within("LAKEGATE_QUERY_CONCURRENCY", 4, 1..=64)?,
                query_wait: env.secs("LAKEGATE_QUERY_WAIT_SECS", 10)?,
                // 0: no cache (callers arriving together still share one query).
                device_list_ttl: Duration::from_secs(
                    env.parse("LAKEGATE_DEVICE_LIST_CACHE_SECS", 5u64)?,
                ),
                device_list_window: Duration::from_secs(
                    24 * 3600
                        * env.within("LAKEGATE_DEVICE_LIST_WINDOW_DAYS", 365, 1..=36500)? as u64,
                ),
            },
            connections: ConnectionLimits {
                header_timeout: env.secs("LAKEGATE_HEADER_TIMEOUT_SECS", 10)?,
                idle_timeout: env.secs("LAKEGATE_IDLE_TIMEOUT_SECS", 60)?,
                max_connections: env.within("LAKEGATE_MAX_CONNECTIONS", 4096, 1..=1_000_000)?,
                h2_keepalive: env.secs("LAKEGATE_H2_KEEPALIVE_SECS", 20)?,
            },
            relay,
        })
    }
}

/// Bounds on body bytes in flight. The defaults leave a normal fleet far below them
/// (a device sends one request at a time, a relay one per lane) and hold the bytes a
/// flood of held-open uploads can pin to 64 bodies.
fn upload_settings(env: &Env, max_body_bytes: usize) -> Result<UploadSettings, ConfigError> {
    let uploads = UploadSettings {
        max_bytes: env.count(
            "LAKEGATE_MAX_BODY_BYTES_IN_FLIGHT",
            max_body_bytes.saturating_mul(64),
        )?,
        max_bytes_per_sender: env.count(
            "LAKEGATE_MAX_BODY_BYTES_PER_SENDER",
            max_body_bytes.saturating_mul(4),
        )?,
    };
    // A body as large as the cap must fit, or some requests could never be read.
    if uploads.max_bytes_per_sender < max_body_bytes {
        return Err(invalid(
            "LAKEGATE_MAX_BODY_BYTES_PER_SENDER",
            format!("must hold one body of LAKEGATE_MAX_BODY_BYTES ({max_body_bytes})"),
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
    Ok(uploads)
}

/// Whether `DATABRICKS_HOST` or a profile names a workspace.
fn workspace_configured(env: &Env) -> bool {
    env.raw("DATABRICKS_HOST").is_some() || env.raw("DATABRICKS_CONFIG_PROFILE").is_some()
}

/// A workspace is configured by `DATABRICKS_HOST` or a profile; without one a
/// build with the `local` feature runs on the embedded emulator.
fn workspace(env: &Env, vars: &HashMap<String, String>) -> Result<Workspace, ConfigError> {
    if !workspace_configured(env) {
        #[cfg(feature = "local")]
        {
            let data_dir = env.parse("LAKEGATE_LOCAL_DIR", PathBuf::from(".lakegate-local"))?;
            let apps_proxy = env.parse("LAKEGATE_LOCAL_APPS_PROXY", false)?;
            return Ok(Workspace::Local {
                data_dir,
                apps_proxy,
            });
        }
        #[cfg(not(feature = "local"))]
        return Err(invalid(
            "DATABRICKS_HOST",
            "is required: this build has no embedded emulator (built without the `local` feature)",
        ));
    }
    let mut client = databricks::Config::resolve(databricks::Settings::default(), vars)?;
    if client.warehouse_id.is_none() {
        return Err(invalid("DATABRICKS_WAREHOUSE_ID", "is required"));
    }
    // A throttling answer pauses every writer for its Retry-After, at most this long.
    let most = databricks::MAX_RETRY_AFTER.as_millis() as usize;
    let max_retry_after = env.within("LAKEGATE_MAX_RETRY_AFTER_MS", most, 1..=most)?;
    client.retry.max_retry_after = Duration::from_millis(max_retry_after as u64);
    Ok(Workspace::Remote {
        client: Box::new(client),
    })
}

/// Whose identity reads run with behind the Apps proxy, and (with the app's) who may read.
fn read_identity(
    env: &Env,
    apps_proxy_auth: bool,
) -> Result<(ReadIdentity, ReaderList), ConfigError> {
    // The former switch: `true` is today's default; `false` meant the app's identity for everyone.
    match env.raw("LAKEGATE_QUERY_AS_USER") {
        None | Some("true") => {}
        Some(_) => {
            return Err(invalid(
                "LAKEGATE_QUERY_AS_USER",
                "is replaced by LAKEGATE_READ_IDENTITY: reads run as the signed-in user by \
                 default; LAKEGATE_READ_IDENTITY=app with LAKEGATE_READERS runs them as the app \
                 for the listed users only",
            ));
        }
    }
    let identity: ReadIdentity = env.parse("LAKEGATE_READ_IDENTITY", ReadIdentity::User)?;
    let readers = match env.raw("LAKEGATE_READERS") {
        None => ReaderList::default(),
        Some(list) => {
            ReaderList::parse(list).map_err(|problem| invalid("LAKEGATE_READERS", problem))?
        }
    };
    match (identity, readers.is_empty()) {
        (ReadIdentity::App, _) if !apps_proxy_auth => Err(invalid(
            "LAKEGATE_READ_IDENTITY",
            "`app` applies only behind the Databricks Apps proxy (LAKEGATE_APPS_PROXY_AUTH)",
        )),
        (ReadIdentity::App, true) => Err(invalid(
            "LAKEGATE_READERS",
            "is required with LAKEGATE_READ_IDENTITY=app: the e-mail addresses or user ids \
             that may read with the app's identity",
        )),
        (ReadIdentity::User, false) => Err(invalid(
            "LAKEGATE_READERS",
            "applies only with LAKEGATE_READ_IDENTITY=app (as the user, Unity Catalog decides)",
        )),
        _ => Ok((identity, readers)),
    }
}

/// On Databricks Apps every peer is the Apps proxy; `LAKEGATE_TRUSTED_PROXIES`
/// names (further) proxies by network.
fn trusted_proxies(env: &Env, on_databricks_apps: bool) -> Result<TrustedProxies, ConfigError> {
    if env.raw("LAKEGATE_TRUST_PROXY_HEADERS").is_some() {
        return Err(invalid(
            "LAKEGATE_TRUST_PROXY_HEADERS",
            "is replaced by LAKEGATE_TRUSTED_PROXIES: the proxies' networks as comma-separated \
             CIDRs (on Databricks Apps the Apps proxy is trusted without it)",
        ));
    }
    let networks = match env.raw("LAKEGATE_TRUSTED_PROXIES") {
        None => Vec::new(),
        Some(list) => TrustedProxies::parse_networks(list)
            .map_err(|problem| invalid("LAKEGATE_TRUSTED_PROXIES", problem))?,
    };
    Ok(TrustedProxies {
        every_peer: on_databricks_apps,
        networks,
    })
}

fn device_keys(env: &Env) -> Result<Option<KeySource>, ConfigError> {
    let inline = env.raw("LAKEGATE_DEVICE_KEYS");
    let secret = env.raw("LAKEGATE_DEVICE_KEYS_SECRET");
    let file = env.raw("LAKEGATE_DEVICE_KEYS_FILE");
    match (inline, secret, file) {
        (None, None, None) => Ok(None),
        (Some(json), None, None) => Ok(Some(KeySource::Inline(SecretString::from(json)))),
        (None, Some(reference), None) => KeySource::parse_secret_ref(reference)
            .map(Some)
            .map_err(|err| invalid("LAKEGATE_DEVICE_KEYS_SECRET", err.to_string())),
        (None, None, Some(path)) => Ok(Some(KeySource::File(PathBuf::from(path)))),
        _ => Err(invalid(
            "LAKEGATE_DEVICE_KEYS",
            "set only one of LAKEGATE_DEVICE_KEYS, LAKEGATE_DEVICE_KEYS_SECRET and LAKEGATE_DEVICE_KEYS_FILE",
        )),
    }
}

/// The relay's own key: a device's key or a reader token there is refused by its
/// prefix, saying what it is (never echoing it).
fn relay_key(env: &Env) -> Result<SecretString, ConfigError> {
    let key = env.raw("LAKEGATE_RELAY_KEY").ok_or_else(|| {
        invalid(
            "LAKEGATE_RELAY_KEY",
            "is required (the relay's key, from `lakegate keys add-relay`)",
        )
    })?;
    match KeyKind::of(key) {
        Some(kind @ (KeyKind::Device | KeyKind::Reader)) => Err(invalid(
            "LAKEGATE_RELAY_KEY",
            format!(
                "is {}, not a relay's key (from `lakegate keys add-relay`)",
                kind.describe()
            ),
        )),
        _ => Ok(SecretString::from(key)),
    }
}

/// Comma-separated `sha256:<hex>` hashes; messages name the entry, never echo it.
fn reader_tokens(env: &Env) -> Result<HashSet<KeyHash>, ConfigError> {
    let Some(raw) = env.raw("LAKEGATE_READER_TOKENS") else {
        return Ok(HashSet::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| {
            entry.parse().map_err(|err| {
                let problem = match err {
                    BadHash::RawKey => match KeyKind::of(entry) {
                        Some(kind @ (KeyKind::Device | KeyKind::Relay)) => format!(
                            "is {}, not a reader token's hash (see `lakegate keys new-reader`)",
                            kind.describe()
                        ),
                        _ => "is a token, not its hash (see `lakegate keys new-reader`)".into(),
                    },
                    BadHash::Format => err.to_string(),
                };
                invalid(
                    "LAKEGATE_READER_TOKENS",
                    format!("entry {} {problem}", index + 1),
                )
            })
        })
        .collect()
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
            config.rejected_table.to_string(),
            "iot.raw.readings_rejected"
        );
        assert_eq!(config.batch.flush_interval, Duration::from_millis(20));
        assert_eq!(config.trusted_proxies, TrustedProxies::default());
        assert!(matches!(config.device_keys, Some(KeySource::Secret(_))));
        let Workspace::Remote { client } = config.workspace else {
            panic!("expected a remote workspace");
        };
        assert_eq!(client.host, "https://adb-1.azuredatabricks.net");
        assert_eq!(client.warehouse_id.as_deref(), Some("wh"));
        assert_eq!(client.retry.max_retry_after, databricks::MAX_RETRY_AFTER);
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
        assert_eq!(config.rejected_table.to_string(), "iot.errors.refused");

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
