//! The site relay (`lakegate relay`): the gateway's front half in front of a durable
//! spool instead of the table, so that devices at a site hold only their own key.
//!
//! A device's request goes through the same connection handling, authentication,
//! limits, validation and queue as at the gateway (`server/`, `ingest/`), after
//! `admission.rs` checked that the relay forwards that device at all. Then, over the
//! spool and upstream the [`RelayState`] holds (`state.rs`):
//! 1. **Spooler** (`spooler.rs`): takes the queue's rows, turns each reading back into
//!    one JSON record with its full identity (device, id — given or derived — and
//!    microsecond `ts`) and appends what queued meanwhile with one fsync (group commit).
//!    Only then do the waiting requests hear 202.
//! 2. **Forwarder** (`forwarder.rs`): sends the oldest records upstream in batches
//!    (`lakegate_device::forward_next`: gzip, the relay's key, an OAuth token for the
//!    Apps proxy when configured, `?ack=commit`) and moves the spool's cursor only after
//!    the upstream's 200. Oldest first, a few requests at once, each device's readings
//!    in one of them: they stay in order. Readings the upstream refuses for good go to `refused.ndjson` in the
//!    spool directory.
//!
//! A reading keeps its identity from the device to the table, so a relay killed at any
//! point and restarted on its spool, or an upstream whose answer was lost, writes it
//! once; device keys never reach the spool or the upstream.

mod admission;
mod forwarder;
mod spooler;
mod state;

pub(crate) use admission::NotForwarded;
pub(crate) use forwarder::forward_loop;
pub(crate) use spooler::spool_loop;
pub(crate) use state::RelayState;
