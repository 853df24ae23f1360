//! lakegate: ingests readings from field devices into Delta tables on Databricks.

pub mod databricks;
