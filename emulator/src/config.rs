//! Emulator settings, shared by the CLI and in-process tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How an emulator instance is set up. `Debug` leaves out secrets and tokens.
#[derive(Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// Service principals as `(client_id, client_secret)`.
    pub service_principals: Vec<(String, String)>,
    /// Accepted personal access tokens; they never expire.
    pub tokens: Vec<String>,
    pub warehouse_id: String,
    /// Where catalogs and tables persist; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Lifetime of issued OAuth tokens.
    pub token_lifetime: Duration,
    /// Rows per result chunk.
    pub rows_per_chunk: usize,
    /// Lifetime of external (presigned-style) result links.
    pub link_lifetime: Duration,
    /// Where to serve the Zerobus gRPC service (`databricks.zerobus.Zerobus`); `None` serves
    /// none. Port 0 picks one: [`crate::Emulator::zerobus_addr`] says which.
    pub zerobus: Option<SocketAddr>,
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            service_principals: Vec::new(),
            tokens: Vec::new(),
            warehouse_id: "emulator".to_string(),
            data_dir: None,
            token_lifetime: Duration::from_secs(3600),
            rows_per_chunk: 10_000,
            link_lifetime: Duration::from_secs(15 * 60),
            zerobus: None,
            faults: Faults::default(),
        }
    }
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client_ids: Vec<&str> = self
            .service_principals
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("service_principals", &client_ids)
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("warehouse_id", &self.warehouse_id)
            .field("data_dir", &self.data_dir)
            .field("token_lifetime", &self.token_lifetime)
            .field("rows_per_chunk", &self.rows_per_chunk)
            .field("link_lifetime", &self.link_lifetime)
            .field("zerobus", &self.zerobus)
            .field("faults", &self.faults)
            .finish()
    }
}

/// Injected failures and latency; replaceable at run time with [`crate::Emulator::set_faults`].
#[derive(Clone, Debug)]
pub struct Faults {
    /// Extra time every statement spends RUNNING (cancellable).
    pub statement_latency: Duration,
    /// Share (0.0..=1.0) of `/api/` requests answered 429 REQUEST_LIMIT_EXCEEDED.
    pub throttle_share: f64,
    /// `Retry-After` on those 429s.
    pub throttle_retry_after_secs: u64,
    /// A window of 503 TEMPORARILY_UNAVAILABLE on `/api/`, starting when the faults are set.
    pub unavailable_for: Option<Duration>,
    pub unavailable_retry_after_secs: u64,
    /// The next N token-endpoint calls answer 503 (with `Retry-After: 1`).
    pub token_failures: u32,
    /// The next N statement submissions run to the end, then their answer is lost
    /// (the connection breaks mid-response): an outcome the caller cannot observe.
    pub lost_statement_responses: u32,
    /// The token endpoint answers this `expires_in` (seconds) instead of the tokens' real
    /// lifetime, e.g. `u64::MAX` to test a client's clock arithmetic.
    pub token_expires_in: Option<u64>,
    /// Rows a table refuses, like a CHECK constraint: see [`RejectRows`].
    pub reject_rows: Option<RejectRows>,
    /// Whether concurrent writes into one table can fail as Delta's optimistic concurrency
    /// makes them fail: see [`WriteConflicts`].
    pub write_conflicts: WriteConflicts,
    /// Time a write (INSERT, MERGE) spends RUNNING for its size, on top of
    /// `statement_latency`: see [`StatementCost`].
    pub statement_cost: Option<StatementCost>,
    /// Time each Secrets API call (get, put, list, delete) takes, half before it reads or
    /// changes the secret and half after, as a remote service's calls do: concurrent
    /// read-modify-writes of one secret then overlap as they would against a workspace.
    pub secrets_latency: Duration,
    /// A window in which every write ends FAILED with a given error: see [`FailingWrites`].
    pub failing_writes: Option<FailingWrites>,
    /// Faults of the Zerobus service: see [`ZerobusFaults`].
    pub zerobus: ZerobusFaults,
}

/// Faults of the Zerobus service, each as the real service shows it to a client.
#[derive(Clone, Debug, Default)]
pub struct ZerobusFaults {
    /// Every stream is closed by the server this long after it was created: first a
    /// `CloseStreamSignal` announcing `close_grace`, then, `close_grace` later (records sent
    /// meanwhile are still written and acknowledged), gRPC UNAVAILABLE with
    /// "Stream timeout reached ... Error Code: 6002", as the service ends long-lived streams.
    pub stream_lifetime: Option<Duration>,
    pub close_grace: Duration,
    /// The next N record messages are written to the table, then the stream breaks
    /// (UNAVAILABLE) without acknowledging them: the client must re-send, duplicating them.
    pub lost_acks: u32,
    /// Share (0.0..=1.0) of stream creations and record messages refused with
    /// RESOURCE_EXHAUSTED before anything is written, ending the stream.
    pub throttle_share: f64,
    /// How long after a write its acknowledgement is sent (acknowledgements stay in order).
    pub durability_latency: Duration,
}

/// For `window` after the faults are set, every write (INSERT, MERGE, DDL) that reaches its
/// commit ends FAILED instead, with `[class] detail SQLSTATE: sql_state` in
/// `status.error.message` and the SQLSTATE in `status.sql_state`, as a warehouse reports a
/// failure of its own (`INTERNAL_ERROR`, SQLSTATE XX000) or of the data. Nothing is committed;
/// reads run normally.
#[derive(Clone, Debug)]
pub struct FailingWrites {
    pub class: &'static str,
    pub sql_state: &'static str,
    pub detail: &'static str,
    pub window: Duration,
}

impl FailingWrites {
    /// Databricks' answer to a statement that failed inside the warehouse.
    pub fn internal_error(window: Duration) -> Self {
        FailingWrites {
            class: "INTERNAL_ERROR",
            sql_state: "XX000",
            detail: "The warehouse failed to run the statement (injected).",
            window,
        }
    }
}

/// How the emulator resolves two writes into one table that overlap in time.
///
/// Every write reads first (a MERGE its target, an INSERT ... SELECT its query), noting the
/// table version it read, spends its latency and cost, then validates and commits, one
/// commit at a time. Only writes that read their target can conflict: a plain INSERT (VALUES,
/// or a SELECT from other tables) appends blindly, as on Delta.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteConflicts {
    /// Never fail: a write whose target changed since it read reads again at commit (the
    /// emulator's behaviour before conflicts were modelled).
    #[default]
    Off,
    /// Row-level concurrency (deletion vectors, liquid clustering; Databricks' default for
    /// new clustered tables): a MERGE fails only if a row committed since it read is one its
    /// ON condition matches, i.e. another writer inserted the same rows
    /// (`[DELTA_CONCURRENT_APPEND.ROW_LEVEL_CHANGES]`). An INSERT ... SELECT reading its
    /// target fails if the number of rows it would insert changed.
    RowLevel,
    /// File-level concurrency: a MERGE fails if any row committed since it read satisfies the
    /// ON condition's conjuncts on the target alone (its read range, e.g. a `ts` range), whatever
    /// the source holds (`[DELTA_CONCURRENT_APPEND.NO_HINT]`); with no such conjunct, and for an
    /// INSERT ... SELECT reading its target, any append to the table conflicts
    /// (`[DELTA_CONCURRENT_APPEND.WHOLE_TABLE_READ]`). Rows are tested one by one, where
    /// Databricks tests files (by their statistics), so the emulator conflicts at most as
    /// often as Databricks.
    FileLevel,
}

impl std::str::FromStr for WriteConflicts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "off" => Ok(WriteConflicts::Off),
            "row-level" | "row" => Ok(WriteConflicts::RowLevel),
            "file-level" | "file" => Ok(WriteConflicts::FileLevel),
            _ => Err(format!(
                "{text:?} is not a conflict mode: off, row-level or file-level"
            )),
        }
    }
}

/// A write's running time for its size: `fixed + per_row * rows`, where `rows` is what the
/// statement inserts (for a MERGE, its source rows not in the table yet). The write sleeps
/// that long between its read and its commit (cancellable, like `statement_latency`), so a
/// benchmark sees the trade-off between few large statements and many small ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatementCost {
    pub fixed: Duration,
    pub per_row: Duration,
}

impl StatementCost {
    /// The running time of a write inserting `rows` rows.
    pub fn of(&self, rows: usize) -> Duration {
        let rows = u32::try_from(rows).unwrap_or(u32::MAX);
        self.fixed
            .saturating_add(self.per_row.checked_mul(rows).unwrap_or(Duration::MAX))
    }
}

/// A write into `table` (`catalog.schema.table`, any case) whose parameter values contain
/// `marker` ends FAILED with `[DELTA_VIOLATE_CONSTRAINT_WITH_VALUES]` (SQLSTATE 23001), as a
/// CHECK constraint violated by one of its rows does on Databricks. Writes into other tables,
/// and writes without the marker, run normally.
#[derive(Clone, Debug)]
pub struct RejectRows {
    pub table: String,
    pub marker: String,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            statement_latency: Duration::ZERO,
            throttle_share: 0.0,
            throttle_retry_after_secs: 1,
            unavailable_for: None,
            unavailable_retry_after_secs: 1,
            token_failures: 0,
            lost_statement_responses: 0,
            token_expires_in: None,
            reject_rows: None,
            write_conflicts: WriteConflicts::Off,
            statement_cost: None,
            secrets_latency: Duration::ZERO,
            failing_writes: None,
            zerobus: ZerobusFaults::default(),
        }
    }
}
