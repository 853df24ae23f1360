//! lakegate: ingests readings from field devices into Delta tables on Databricks.

pub mod activity;
pub mod app;
pub mod config;
pub mod connections;
pub mod databricks;
pub mod devices;
pub mod health;
pub mod ingest;
#[cfg(feature = "local")]
pub mod local;
pub mod metrics;
pub mod query;
pub mod rate_limits;
pub mod server;
pub mod table;
