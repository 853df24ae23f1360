//! The edge, for devices that cannot hold a Databricks token: a durable spool of
//! accepted readings (`spool.rs`), the way up to a gateway with a device's or a
//! relay's key and, in front of a Databricks App, an OAuth token (`upstream.rs`), and
//! the device agent `lakegate send` built from both (`send.rs`).

mod send;
mod spool;
mod upstream;

pub use send::{DEFAULT_BATCH, SendError, SendOptions, SendReport, send};
