//! lakegate: ingests readings from field devices into Delta tables on Databricks.

pub(crate) mod activity;
pub mod app;
pub mod config;
pub(crate) mod connections;
pub mod databricks;
pub mod devices;
pub(crate) mod error_code;
pub(crate) mod health;
pub(crate) mod ingest;
#[cfg(feature = "local")]
pub mod local;
pub(crate) mod metrics;
pub(crate) mod query;
pub(crate) mod rate_limits;
pub(crate) mod server;
pub mod table;
