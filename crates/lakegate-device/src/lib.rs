//! # lakegate-device
//!
//! What a device (or a site gateway) needs to send readings to a lakegate gateway
//! without holding a Databricks token itself, and without the gateway's server or SQL
//! dependencies:
//!
//! - [`Upstream`] (`upstream.rs`): batches to a gateway's `POST /api/ingest`, gzip
//!   compressed, with the default commit acknowledgement, the device's key and, in
//!   front of a Databricks App, an OAuth token kept fresh by the `lakegate-databricks`
//!   client's token source; [`Upstream::deliver_retrying`] retries what the gateway did
//!   not take (readings keep their identity, so a batch sent twice is written once).
//! - [`Spool`] (`spool.rs`): a durable, bounded queue on disk: records fsync'd before
//!   [`Spool::append`] returns, forwarded from an atomic cursor, a torn tail cut after a
//!   crash, and a damaged record moved aside to `damaged/` (counted in
//!   [`Spool::damaged`]) while every record after it is kept.
//! - [`forward_next`] (`forward.rs`): the oldest spooled readings upstream, off the
//!   spool once the upstream took them; what it did not take goes back on the spool and
//!   is never sent with what it took; the agent and the site relay (`lakegate relay`)
//!   both use it.
//! - [`send`] (`send.rs`): the device agent behind `lakegate send`: NDJSON from files
//!   or stdin through an optional spool to the upstream.
//!
//! `examples/send_readings.rs` sends readings from Rust.

mod forward;
mod send;
mod spool;
mod upstream;

pub use forward::{Forwarded, Pacing, forward_next};
pub use send::{DEFAULT_BATCH, SendError, SendOptions, SendReport, send};
pub use spool::{Damaged, Pending, Position, RECORD_HEADER, Spool, SpoolError};
pub use upstream::{Delivery, KeyCheck, Refused, Settled, Upstream};

/// `n` things for a person to read: "1 reading", "2 readings".
pub fn counted(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
