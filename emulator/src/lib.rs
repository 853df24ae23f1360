//! # lakegate-emulator
//!
//! A local fake Databricks workspace that speaks Databricks' wire format, for tests and offline
//! development. The official Databricks SDKs work against it unmodified. SQL runs on DataFusion.
//!
//! ## What it serves
//!
//! - **Host metadata and OAuth M2M**: `GET /.well-known/databricks-config`,
//!   `GET /oidc/.well-known/oauth-authorization-server`, and `POST /oidc/v1/token`
//!   (`grant_type=client_credentials`, client credentials by HTTP Basic or in the form body).
//!   Every `/api/` call needs `Authorization: Bearer` with an issued, unexpired token or a
//!   configured personal access token; otherwise 401 `UNAUTHENTICATED`.
//! - **Secrets** (`/api/2.0/secrets/...`): scopes create/list/delete, put (`string_value` or
//!   `bytes_value`), get, list, delete, with Databricks' name rules, limits and error codes.
//! - **SQL Statement Execution** (`/api/2.0/sql/statements`): a real state machine with
//!   `wait_timeout`/`on_wait_timeout`, cancel, parameters (`:name`), `row_limit`, INLINE +
//!   JSON_ARRAY results in chunks, and EXTERNAL_LINKS with JSON_ARRAY, ARROW_STREAM (Arrow IPC
//!   stream per chunk) or CSV, served from presigned-style links under `/external/`.
//! - **SQL**: three-part names (default `main.default`; the request's `catalog`/`schema` set the
//!   defaults), `CREATE CATALOG`, `CREATE SCHEMA`, `CREATE [OR REPLACE] TABLE [IF NOT EXISTS]` with
//!   Delta clauses accepted and ignored (`USING DELTA`, `CLUSTER BY`, `PARTITIONED BY`, `COMMENT`,
//!   `TBLPROPERTIES`, `OPTIONS`, `LOCATION`), `CREATE TABLE ... AS SELECT`, `INSERT INTO ... VALUES`
//!   and `INSERT INTO ... SELECT` with NOT NULL enforcement, `SELECT` with what DataFusion offers
//!   (joins, aggregates, `date_trunc('HOUR', ts)`, `current_timestamp()`, ...), `DROP TABLE`,
//!   `DROP SCHEMA`, `SHOW TABLES`, `DESCRIBE`. Types: STRING, BIGINT, INT, SMALLINT, TINYINT,
//!   DOUBLE, FLOAT, BOOLEAN, DATE, TIMESTAMP (UTC microseconds), TIMESTAMP_NTZ, DECIMAL(p,s),
//!   BINARY.
//! - **Insert-only MERGE**, the exactly-once append: `MERGE INTO target [AS t] USING table or
//!   (subquery) [AS s] ON cond WHEN NOT MATCHED [AND cond] THEN INSERT (cols) VALUES (...)` or
//!   `INSERT *`. The check and the insert are one atomic step, so concurrent MERGEs never
//!   duplicate a row; source rows that duplicate each other are all inserted, as on Databricks.
//! - **Optimistic concurrency** (`sql/commit.rs`): a write reads first, noting the version of
//!   its target, spends its latency and cost, then validates and commits, one commit at a time;
//!   writes overlap in time. With the [`WriteConflicts`] fault a MERGE or an INSERT ... SELECT
//!   whose read a concurrent commit changed fails FAILED with
//!   `[DELTA_CONCURRENT_APPEND.<subclass>] ... SQLSTATE: 2D521` (`ROW_LEVEL_CHANGES`:
//!   another commit inserted rows its ON condition matches; `NO_HINT`: rows in its read range,
//!   the ON conjuncts on the target alone; `WHOLE_TABLE_READ`: no such range), counted in
//!   [`Stats::write_conflicts`]; blind INSERTs never conflict. Off (the default), such a write
//!   reads again at commit instead.
//!   The result row is `num_affected_rows`, `num_updated_rows`, `num_deleted_rows`,
//!   `num_inserted_rows`.
//! - **Databricks functions** DataFusion lacks: `from_json(json, schema)` with a literal schema in
//!   Databricks type syntax (`ARRAY<STRUCT<a: STRING, b BIGINT>>`, `STRUCT<...>`, `a INT, ...`;
//!   scalar types as above), which returns NULL for malformed JSON (a struct of NULLs for a STRUCT
//!   schema) like Spark's default PERMISSIVE mode, or with `map('mode', 'FAILFAST')` fails the
//!   statement with `MALFORMED_RECORD_IN_PARSING.WITHOUT_SUGGESTION` (SQLSTATE 22023); `explode(array)` in the select list (as
//!   DataFusion's `unnest`, with `r.field` access on exploded structs); `timestamp_millis` and
//!   `timestamp_micros`; `unix_seconds`, `unix_millis` and `unix_micros` (rounded down).
//! - **Zerobus Ingest** (`zerobus/`, with [`EmulatorConfig::zerobus`]): the gRPC service
//!   `databricks.zerobus.Zerobus/EphemeralStream` ([`proto`]) writing JSON and PROTO records as rows
//!   of the engine's tables, acknowledged cumulatively by offset, for tokens the token
//!   endpoint scoped to the table (the SDKs' `resource` and `authorization_details`), with
//!   errors as gRPC statuses and the faults of [`ZerobusFaults`]. See the README.
//! - **A Databricks Apps proxy** ([`AppsProxy`], `apps_proxy/`), in front of an app on
//!   a local port: it admits only live OAuth tokens this emulator issued (never PATs) of
//!   principals with CAN USE on the app (401 `UNAUTHENTICATED`, 403
//!   `PERMISSION_DENIED`), strips `Authorization` and any client-sent `X-Forwarded-*`
//!   and `X-Real-Ip`, sets its own `X-Forwarded-Host`, `X-Forwarded-User`,
//!   `X-Forwarded-Email`, `X-Forwarded-Preferred-Username`, `X-Real-Ip`, `X-Request-Id`
//!   and, with user authorization, `X-Forwarded-Access-Token`; it streams bodies both
//!   ways over HTTP/1.1 or h2c, with its own request timeout (504) and body cap (413).
//!   User tokens for tests come from [`Emulator::user_token`]; [`Emulator::token_owner`]
//!   says whose a token is, and [`Stats::statements_by`] whose tokens statements ran with.
//! - **Persistence** with `--data-dir`: catalogs and schemas as directories, each table as an
//!   Arrow IPC file plus one file of the rows each write appended since (folded into it every
//!   64 writes), all loaded at start.
//! - **Fault injection**: a share of `/api/` calls answered 429 `REQUEST_LIMIT_EXCEEDED`, a window
//!   of 503 `TEMPORARILY_UNAVAILABLE` (both with a `Retry-After` of the caller's choice), failing
//!   token calls, a token `expires_in` of the caller's choice, lost statement answers, rows a
//!   table refuses as a CHECK constraint would ([`RejectRows`]), extra statement latency
//!   (cancellable), write conflicts ([`WriteConflicts`]) and a cost model for writes
//!   ([`StatementCost`]: a fixed time plus a time per inserted row, spent between a write's read
//!   and its commit, so batch-size trade-offs show in benchmarks), latency on Secrets API calls,
//!   and a window in which every write fails with an error of the caller's choice
//!   ([`FailingWrites`], e.g. `INTERNAL_ERROR`, SQLSTATE XX000), all changeable at run time
//!   from Rust. [`Stats::requests`] logs the latest `/api/` calls with the time each arrived.
//!
//! ## Command line
//!
//! ```text
//! lakegate-emulator [--listen 127.0.0.1:8787] [--service-principal CLIENT_ID:SECRET]...
//!                   [--token PAT]... [--warehouse-id emulator] [--data-dir DIR]
//!                   [--token-lifetime-secs 3600] [--rows-per-chunk 10000]
//!                   [--link-lifetime-secs 900] [--statement-latency-ms 0]
//!                   [--throttle-share 0.0] [--throttle-retry-after-secs 1]
//!                   [--token-failures 0] [--write-conflicts off|row-level|file-level]
//!                   [--statement-cost-fixed-ms 0] [--statement-cost-per-row-us 0]
//!                   [--zerobus-listen ADDR [--zerobus-stream-lifetime-secs F]
//!                    [--zerobus-close-grace-secs 1] [--zerobus-lost-acks 0]
//!                    [--zerobus-throttle-share 0.0] [--zerobus-durability-latency-ms 0]]
//!                   [--apps-proxy-listen ADDR --apps-proxy-app http://HOST:PORT
//!                    [--apps-proxy-user-authorization] [--apps-proxy-can-use PRINCIPAL]...
//!                    [--apps-proxy-strip-custom-headers] [--apps-proxy-timeout-secs 120]
//!                    [--apps-proxy-max-body-bytes 33554432]]
//! ```
//!
//! It prints `lakegate-emulator listening on http://ADDR` once listening (and
//! `lakegate-emulator apps proxy listening on http://ADDR for APP` with a proxy) and stops
//! gracefully on SIGINT or SIGTERM. From Rust, [`Emulator::start`] takes the same settings
//! as [`EmulatorConfig`] (use port 0 in tests), and [`AppsProxy::start`] those of
//! [`AppsProxyConfig`].
//!
//! The proxy runs in the emulator's process, in the binary too: it checks tokens
//! against the very store that issued them, so the workspace needs no token
//! introspection endpoint (Databricks has none to emulate), and tokens never travel
//! between processes.
//!
//! ## Map
//!
//! Modules read bottom-up; none imports a module that imports it back.
//!
//! - **Leaves**: `config.rs` (the settings the CLI, `main.rs`, and [`Emulator::start`]
//!   share), `error.rs` (errors in Databricks' shape), `stats.rs` (what tests ask
//!   about), `clock.rs`, the engine `sql/` and `results.rs` (a statement's output cut
//!   into chunks in its format).
//! - **Shared state** (`state/mod.rs`): one `App` holding every store, each store a
//!   leaf of its own: issued tokens and credentials (`state/tokens.rs`), secrets
//!   (`state/secrets.rs`), statements and their phases (`state/statements.rs`),
//!   external links (`state/links.rs`) and the faults in force (`state/faults.rs`).
//! - **Handlers**, over the state: `auth.rs` (the OAuth endpoints and the bearer check),
//!   `secrets.rs` (the Secrets API), `faults.rs` (the middleware answering injected
//!   failures), `statements/mod.rs` (the statement state machine: submit, wait, poll,
//!   cancel) and `statements/links.rs` (external link downloads).
//! - **Zerobus** (`zerobus/`), beside the routes over the same state, on its own
//!   listener: the stream (`mod.rs`) and records (JSON, or PROTO decoded with the stream's
//!   descriptor) into INSERTs (`records.rs`).
//! - **Routes** (`routes.rs`): mounts the handlers; a call under `/api/` meets
//!   `faults.rs` first, then the bearer check, then its handler.
//! - [`Emulator`] (this file) binds the socket and serves the routes.
//! - **The Apps proxy** (`apps_proxy/`), beside the routes over the same state: who
//!   passes (`admission.rs`, against the token store), the headers the app gets
//!   (`headers.rs`), bodies streamed under a cap and a deadline (`body.rs`), and the
//!   forwarding itself (`mod.rs`).
//!
//! The engine (`sql/mod.rs`) runs Databricks SQL on DataFusion: DDL that sqlparser cannot
//! read (`sql/ddl.rs`), the insert-only MERGE (`sql/merge.rs`), `:name` parameters
//! (`sql/params.rs`), Databricks functions (`sql/functions.rs`), types
//! (`sql/types.rs`), persistence (`sql/store.rs`) and errors in Databricks' shape
//! (`sql/error.rs`).
//!
//! ## Not supported
//!
//! - `MERGE` with `WHEN MATCHED` or `WHEN NOT MATCHED BY SOURCE` clauses, or with more than one
//!   `WHEN NOT MATCHED` clause (FAILED with `UNSUPPORTED_FEATURE`); `UPDATE`, `DELETE`, Delta
//!   time travel, `COPY INTO`, volumes and the Files API.
//! - Other Databricks-only functions (`inline`, `get_json_object`, `timestampdiff`, ...),
//!   `from_json` options other than `mode`, `explode` of a MAP, generators in FROM that refer to
//!   another table's columns (LATERAL), field access on a function result (`from_json(...).a`;
//!   alias it in a subquery first), and ARRAY/MAP/STRUCT columns and parameters; nested values
//!   in results are printed Arrow's way, not as JSON.
//! - Literal types: `1` is a BIGINT and `2.5` a DOUBLE (Databricks: INT and DECIMAL(2,1)), so
//!   arithmetic on decimal literals gives DOUBLEs where Databricks gives DECIMALs. DECIMAL `/`
//!   keeps DataFusion's precision and scale; `try_divide` of DECIMALs gives a DOUBLE; `div` also
//!   takes DOUBLEs (truncating).
//! - Un-aliased result columns get Databricks' names (`count(1)`, `(a + 1)`, `FLOOR(x)`) except
//!   window functions, parameter markers, INTERVAL literals and functions whose Databricks name
//!   shows arguments the call leaves out (`substr(s, 2)`, `lag(x)`, ...), which keep
//!   DataFusion's; alias those.
//! - Datetime patterns: the letters `V`, `v` and `g` (zone IDs, generic zone names, Julian
//!   days), and `z` when parsing, are refused (UNSUPPORTED_FEATURE). Patterns Java's formatter
//!   refuses (`yyyy-MM-ddTHH`) fail with INVALID_DATETIME_PATTERN.WITH_SUGGESTION (Databricks
//!   documents INVALID_DATETIME_PATTERN) and unparseable values with CANNOT_PARSE_TIMESTAMP; the
//!   text after the class may be worded otherwise.
//! - Transactions: a write that fails midway may leave rows behind; commits are serialized
//!   (reads are not). Conflicts are decided row by row where Databricks decides file by file,
//!   so the emulator conflicts at most as often; an INSERT ... SELECT reading its target
//!   conflicts at row level only when the number of rows it would insert changed; metadata
//!   conflicts (ALTER, OPTIMIZE) are not modelled, a table replaced under a write is
//!   `WHOLE_TABLE_REPLACE`.
//! - Permissions and ACLs (every authenticated caller may do everything), PAT management,
//!   secret ACLs, Azure Key Vault scopes; secrets are not persisted.
//! - Result expiry (CLOSED), `byte_limit`, statement purging; multiple statements per request.
//! - Other REST APIs (clusters, jobs, warehouses, Unity Catalog REST, ...): 404 `ENDPOINT_NOT_FOUND`.
//! - TLS: the emulator speaks plain HTTP.
//! - In the Apps proxy: browser sign-in (the U2M flow, session cookies, the redirect to
//!   the login page), token scopes (the forwarded user token can do all its owner can),
//!   IdP user ids in `X-Forwarded-User` (it carries the email or application id), and
//!   WebSocket upgrades.

mod apps_proxy;
mod auth;
mod clock;
mod config;
mod error;
mod faults;
mod identity;
mod results;
mod routes;
mod secrets;
mod sql;
mod state;
mod statements;
mod stats;
mod zerobus;

pub mod proto;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use apps_proxy::{AppsProxy, AppsProxyConfig};
pub use config::{
    EmulatorConfig, FailingWrites, Faults, RejectRows, StatementCost, WriteConflicts, ZerobusFaults,
};
pub use identity::TokenOwner;
pub use stats::{LoggedRequest, Stats};

/// A running emulator. Dropping it without [`Emulator::shutdown`] leaves the server running
/// until the runtime stops.
pub struct Emulator {
    addr: SocketAddr,
    app: Arc<state::App>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<io::Result<()>>,
    zerobus: Option<ZerobusServer>,
}

/// The Zerobus gRPC listener, beside the REST one.
struct ZerobusServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Emulator {
    /// Binds `config.listen`, loads `config.data_dir` and starts serving.
    pub async fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let engine = sql::Engine::open(config.data_dir.as_deref())?;
        let zerobus_listener = match config.zerobus {
            Some(at) => Some(TcpListener::bind(at).await?),
            None => None,
        };
        let app = Arc::new(state::App::new(config, engine, format!("http://{addr}")));
        let zerobus = zerobus_listener
            .map(|listener| serve_zerobus(listener, Arc::clone(&app)))
            .transpose()?;
        let router = routes::router(Arc::clone(&app));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Emulator {
            addr,
            app,
            stop,
            server,
            zerobus,
        })
    }

    /// Where the Zerobus service listens, when [`EmulatorConfig::zerobus`] asked for it.
    pub fn zerobus_addr(&self) -> Option<SocketAddr> {
        self.zerobus.as_ref().map(|z| z.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR:PORT`, the workspace host for clients.
    pub fn url(&self) -> String {
        self.app.url.clone()
    }

    pub fn warehouse_id(&self) -> &str {
        &self.app.warehouse_id
    }

    /// Replaces the injected faults; an unavailability window starts now.
    pub fn set_faults(&self, faults: Faults) {
        self.app.faults.set(faults);
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.app.tokens.set_lifetime(lifetime);
    }

    /// A new OAuth token of the user `email`, as if they had signed in (U2M), with the
    /// lifetime of issued tokens. The emulator has no sign-in flow of its own: tests mint
    /// user tokens here, for the workspace's API and for [`AppsProxy`].
    pub fn user_token(&self, email: &str) -> String {
        self.app.tokens.issue(TokenOwner::User(email.to_owned())).0
    }

    /// Whose `token` is, if the workspace accepts it now (a configured PAT, or an issued
    /// OAuth token that has not expired); `None` for unknown and expired tokens.
    pub fn token_owner(&self, token: &str) -> Option<TokenOwner> {
        self.app.tokens.lookup(token).map(|grant| grant.owner)
    }

    pub fn stats(&self) -> Stats {
        self.app.stats.snapshot()
    }

    /// Stops accepting connections and waits for open requests to finish.
    pub async fn shutdown(self) {
        if let Some(zerobus) = self.zerobus {
            let _ = zerobus.stop.send(());
            match zerobus.server.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "zerobus server stopped with an error")
                }
                Err(err) => tracing::warn!(error = %err, "zerobus server task failed"),
            }
        }
        let _ = self.stop.send(());
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "emulator server stopped with an error"),
            Err(err) => tracing::warn!(error = %err, "emulator server task failed"),
        }
    }
}

fn serve_zerobus(listener: TcpListener, app: Arc<state::App>) -> io::Result<ZerobusServer> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(zerobus::service(app))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(ZerobusServer { addr, stop, server })
}
