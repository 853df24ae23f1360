//! # lakegate
//!
//! Ingests readings from field devices into a Delta table on Databricks, and serves
//! them back to dashboards. This page is the map: it follows a reading from the
//! socket to the table, and a dashboard query back, naming the file of each step.
//! Modules read bottom-up; no file imports a file that imports it back, directly or
//! around a loop (`tests/architecture.rs` checks every library of the workspace).
//!
//! ## Start-up (`main.rs`, `app.rs`)
//!
//! `main.rs` reads [`config::GatewayConfig`] from the environment and the command line
//! (`config.rs`: every setting declared once with clap, its variable, flag, default and
//! help, the cross-field checks in one `validate`; Databricks' unified configuration
//! for the workspace in `crates/lakegate-databricks/src/config.rs`) and hands it to
//! [`app::Gateway::start`]. That
//! builds the workspace client (the `lakegate-databricks` crate in
//! `crates/lakegate-databricks/`, re-exported here as [`databricks`]), loads the device registry
//! (`devices/source.rs`), creates the tables when missing (`table.rs`), starts the
//! batch writer and the registry reloads, then [`app::Gateway::run`] serves until the
//! shutdown signal and drains. With no workspace configured, `local.rs` starts the
//! embedded emulator (`emulator/`) in its place.
//!
//! ## A reading's way in
//!
//! 1. **Connection** (`connections.rs`): our accept loop serves HTTP/1.1 and h2c on
//!    one port, with a connection cap (503 `overloaded` beyond it), header and idle
//!    timeouts, and a graceful close at shutdown.
//! 2. **Router and layers** (`server/mod.rs`): request ids, a time limit per
//!    request, request metrics (`metrics.rs`), a panic caught as that request's 500
//!    (the process and every queued reading go on), then `POST /ingest` (and
//!    `POST /api/v2/write`, the same way in for InfluxDB line protocol).
//! 3. **Who is sending** (`server/auth.rs`): the `X-API-Key` is hashed and looked up
//!    in the registry (the JSON is `devices/document.rs`, one serde type; indexed by
//!    key hash in `devices/registry.rs`, swapped whole by reloads in
//!    `devices/live.rs`): a device, or a site relay forwarding readings for the devices
//!    its patterns name (`devices/relays.rs`); failed attempts count against the client
//!    address's budget (`rate_limits.rs`; which address a request comes from, behind
//!    trusted proxies, is `client_address.rs`'s to say).
//! 4. **The handler** (`server/ingest.rs`, kept thin: it extracts, calls admission,
//!    waits for the acknowledgement). The device's (or the relay's) request rate is
//!    checked before the body is read (`ingest/intake.rs` over `rate_limits.rs`), and
//!    the bytes the body may take are reserved from the sender's and the gateway's
//!    budgets of bodies in flight (`server/upload.rs` over `uploads.rs`; 429 or 503
//!    unread beyond them); the body is decoded and split into readings
//!    (`ingest/body.rs`: size caps, gzip, JSON or NDJSON; or InfluxDB line protocol on
//!    `POST /api/v2/write`, each line turned into the JSON reading it stands for by
//!    `ingest/line_protocol.rs`).
//! 5. **Admission** (`ingest/intake.rs`): each reading is validated and turned into
//!    rows, one per metric (`ingest/reading.rs`, `ingest/request.rs`, reasons in
//!    `ingest/rejection.rs`; the row is [`table`]'s `TableRow`, and the characters a
//!    metric name may hold are `table.rs`'s); a relay's readings each name their
//!    device, checked against the relay's patterns and the registry
//!    (`ingest/relayed.rs`), and each spends its device's own rate. Admission returns
//!    what to queue, or an `IntakeRefusal`, knowing nothing of HTTP.
//! 6. **Queue** (`ingest/queue.rs`): the rows take room in a queue bounded in rows
//!    and bytes, all or nothing (503 `unavailable` when full), then the global rate.
//!    With `?ack=accept` the device hears 202 now; by default it waits for step 8.
//! 7. **Writers** (`ingest/writer.rs`, one per queue lane; a device's rows always in
//!    the same lane): group commit, one statement in flight each; batches sized as
//!    they travel, writes each through a sink (`ingest/sink.rs` or `ingest/zerobus.rs`,
//!    behind the `BatchSink` trait) and retries by what
//!    failed: transient errors again, refused rows isolated and dead-lettered, an
//!    unwritable table kept and reported (`health.rs`'s `WriteHealth`, shared through
//!    the state: `/readyz` and admission read it).
//! 8. **Statement** (`table.rs`, `crates/lakegate-databricks/src/statements.rs`): one MERGE per batch,
//!    the whole batch as one JSON string parameter expanded by `from_json`, keyed on
//!    (device, reading id, ts, metric) so that a retry or a resend is written once.
//!    The client (`crates/lakegate-databricks/src/http.rs`) keeps the OAuth token fresh
//!    (`crates/lakegate-databricks/src/auth.rs`), retries 429/503 by its policy (`crates/lakegate-databricks/src/retry.rs`)
//!    and polls the statement to its end. On commit the waiting request answers 200.
//!    With `LAKEGATE_SINK=zerobus` (`ingest/zerobus.rs`) the batch is instead one call on
//!    the lane's Zerobus Ingest stream (Databricks' SDK), and the request answers once
//!    Zerobus acknowledged it durable; a stream that broke first has its batch sent again
//!    (counted), so reads go through the `<table>_dedup` view (`table.rs`).
//!
//! Every refusal on the way is a JSON body with a code from `error_code.rs`; the
//! domain's refusals (`IntakeRefusal`, `BodyError`, rate limits, a full queue) become
//! HTTP answers in one place, `server/error.rs`, with the same codes `docs/api.md` lists.
//!
//! ## A dashboard query back
//!
//! 1. `GET /api/devices`, `/api/devices/{id}/series`, `/api/devices/{id}/latest`
//!    (`server/read.rs`): the `Reader` extractor decides whose credentials the query
//!    runs with: a reader token (the app's identity), or behind the Apps proxy the
//!    signed-in user's own token, so Unity Catalog decides what they see.
//! 2. Parameters are checked and capped (`query/params.rs`); the statements are in
//!    `table.rs` (`table::reads`).
//! 3. `query/reader.rs` runs them with a row limit: small answers inline as JSON,
//!    long series as Arrow through external links (`crates/lakegate-databricks/src/results.rs`), and
//!    shapes the JSON the page reads (`query/answers.rs`).
//! 4. The fleet page itself (`static/`) is served from the binary by
//!    `server/page.rs`; `/api/stats` answers from memory (`stats.rs`).
//!
//! ## Devices without a Databricks token (`relay/`, `crates/lakegate-device/`)
//!
//! `lakegate relay` is the same process as a site relay (`config::GatewayConfig::relay_from_map`):
//! steps 1 to 6 above as they are, after checking that the relay would forward the
//! device at all (`relay/admission.rs`: its own entry's patterns, devices the upstream
//! refused for good); then instead of the writers and the table the spooler
//! (`relay/spooler.rs`) appends each queued reading as one record to a durable spool,
//! one fsync per group (a request whose records do not fit is refused alone), and only
//! then do devices hear 202; the forwarder (`relay/forwarder.rs`) sends the spool's
//! oldest records upstream with the relay key, moves the spool's cursor past what the
//! upstream took and puts back what it did not; both share the relay's spool and
//! upstream client (`relay/state.rs`). At start-up the relay checks its key
//! with the upstream's `GET /api/whoami` (`server/auth.rs`). The relay's
//! [`app::Gateway`] holds a `Backend::Relay` in place of the table's client
//! (`server/state.rs`), so the router serves no reads and `/readyz` checks the upstream
//! and the spool.
//!
//! `lakegate send` is the device agent, from the `lakegate-device` crate that device
//! makers can embed without this crate's server or SQL dependencies: readings from
//! stdin or files, spooled on disk (`spool.rs`: fsync'd records, an atomic cursor,
//! damaged records moved aside), forwarded from it (`forward.rs`, which the relay
//! shares: each device paced to its own rate) and sent to a gateway with the device's
//! key and, in front of a Databricks App, an OAuth token from the client's token source
//! (`upstream.rs`, which counts readings as taken only from a lakegate answer that says
//! so and never follows a redirect).
//!
//! ## Rows written twice (`table.rs`)
//!
//! Next to the table, start-up creates the view `<table>_dedup`, one row per reading's
//! metric (the earliest ingested); `LAKEGATE_READ_FROM=dedup` points the reads above at it.
//! `lakegate compact` (`main.rs` over `table::compact`) removes the other rows from the
//! table itself with one MERGE through the warehouse.
//!
//! ## Operations
//!
//! `/healthz`, `/readyz` (`server/ops.rs`, cached single-flight in
//! `server/readiness.rs`) and `/metrics` (`metrics.rs`). Shutdown (`app.rs`) follows
//! one timeline computed from the grace period (`config::ShutdownDeadlines`):
//! requests drain, waiting devices are told the truth, the writers drain the queue to
//! the table, and every background task is awaited.

pub mod app;
pub(crate) mod client_address;
pub mod config;
pub(crate) mod connections;
pub use lakegate_databricks as databricks;
pub mod devices;
pub(crate) mod error_code;
pub(crate) mod health;
pub(crate) mod ingest;
#[cfg(feature = "local")]
pub mod local;
pub(crate) mod metrics;
pub(crate) mod query;
pub(crate) mod rate_limits;
pub(crate) mod relay;
pub(crate) mod server;
pub(crate) mod stats;
pub mod table;
pub(crate) mod uploads;
