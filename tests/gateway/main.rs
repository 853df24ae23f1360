//! The gateway end to end: a real socket in front, the in-process workspace
//! emulator behind, readings checked in the table through the SQL API.

mod admission;
mod agent;
mod apps_proxy;
mod auth;
mod conflicts;
mod connections;
mod dashboard_sql;
mod dedup;
mod ingest;
mod key_commands;
mod keys;
mod line_protocol;
mod local_mode;
mod logs;
mod operations;
mod query;
mod refusals;
mod relay;
mod relay_entries;
mod request_id;
mod resilience;
mod uploads;
mod warehouse_failures;
mod zerobus;
mod zerobus_processes;
