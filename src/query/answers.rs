//! What the read API answers, serialized as the JSON dashboards and the fleet page read.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use super::params::Bucket;

/// `GET /api/devices`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceList {
    #[serde(serialize_with = "rfc3339")]
    pub generated_at: DateTime<Utc>,
    pub devices: Vec<DeviceSummary>,
    /// More devices exist than were listed.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSummary {
    pub device_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: DateTime<Utc>,
    pub readings_last_hour: i64,
    pub readings_last_day: i64,
    /// Sorted.
    pub metrics: Vec<String>,
    /// Counted in memory by this gateway process, not read from the table.
    pub rejected_since_start: u64,
}

/// `GET /api/devices/{device_id}/series`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub device_id: String,
    pub metric: String,
    pub bucket: Bucket,
    #[serde(serialize_with = "rfc3339")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub to: DateTime<Utc>,
    pub points: Vec<Point>,
}

/// One bucket's numeric values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The bucket's start.
    #[serde(serialize_with = "rfc3339")]
    pub t: DateTime<Utc>,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    /// Readings in the bucket.
    pub count: i64,
}

/// `GET /api/devices/{device_id}/latest`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latest {
    pub device_id: String,
    /// Newest first.
    pub readings: Vec<LatestReading>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestReading {
    pub reading_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub ingested_at: DateTime<Utc>,
    pub metrics: BTreeMap<String, StoredValue>,
}

/// Numbers (booleans were stored as 1.0 / 0.0) or strings, as the table holds them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StoredValue {
    Number(f64),
    Text(String),
}

/// RFC 3339 in UTC with as many fraction digits as needed (`2026-11-29T12:00:00Z`, `...:00.250Z`).
fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}
