//! Device readings on their way in: request bodies and per-reading validation.

pub mod body;
pub mod queue;
pub mod reading;
pub mod rejection;
pub mod request;
pub mod sink;
pub mod writer;
