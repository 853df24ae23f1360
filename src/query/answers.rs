//! What the read API answers, serialized as the JSON dashboards and the fleet page read.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use serde::{Serialize, Serializer};

use super::params::Bucket;

/// `GET /api/devices`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeviceList {
    #[serde(serialize_with = "rfc3339")]
    pub generated_at: DateTime<Utc>,
    pub devices: Vec<DeviceSummary>,
    /// More devices exist than were listed.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeviceSummary {
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
pub(crate) struct Series {
    pub device_id: String,
    pub metric: String,
    pub bucket: Bucket,
    #[serde(serialize_with = "rfc3339")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub to: DateTime<Utc>,
    pub points: Vec<Point>,
}

/// One bucket's numeric values; build it with [`Point::new`], which rounds the average.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Point {
    /// The bucket's start.
    #[serde(serialize_with = "rfc3339")]
    pub t: DateTime<Utc>,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    /// Readings in the bucket.
    pub count: i64,
}

impl Point {
    pub(crate) fn new(t: DateTime<Utc>, min: f64, avg: f64, max: f64, count: i64) -> Point {
        Point {
            t,
            min,
            avg: round_average(avg, min, max),
            max,
            count,
        }
    }
}

/// Decimal places beyond the values' own that an average keeps: `[20.5, 21.0, 21.1]`
/// averages to `20.867`, not `20.866666666666667`.
const AVERAGE_EXTRA_DECIMALS: usize = 2;

/// `avg` with the decimals of `min` and `max` (what the devices sent, as written) plus
/// [`AVERAGE_EXTRA_DECIMALS`]: the precision the data has, without the division's noise.
fn round_average(avg: f64, min: f64, max: f64) -> f64 {
    if !avg.is_finite() {
        return avg;
    }
    // Display gives the shortest text that reads back as the same f64, never an exponent.
    let decimals = |value: f64| {
        let text = value.to_string();
        text.find('.').map_or(0, |dot| text.len() - dot - 1)
    };
    // f64 holds 17 significant digits at most: more decimals would change nothing.
    let places = (decimals(min).max(decimals(max)) + AVERAGE_EXTRA_DECIMALS).min(17);
    format!("{avg:.places$}").parse().unwrap_or(avg)
}

/// `GET /api/devices/{device_id}/latest`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Latest {
    pub device_id: String,
    /// Newest first.
    pub readings: Vec<LatestReading>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LatestReading {
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
pub(crate) enum StoredValue {
    Number(f64),
    Text(String),
}

/// RFC 3339 in UTC to the millisecond at most (`2026-11-29T12:00:00Z`, `...:00.250Z`):
/// truncated, never rounded up, so a time never moves into the next bucket or second.
fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let millis = at.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(*at);
    serializer.serialize_str(&millis.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_keep_the_values_precision_plus_two_decimals() {
        let t = DateTime::UNIX_EPOCH;
        let avg = |min, avg, max| Point::new(t, min, avg, max, 3).avg;
        assert_eq!(avg(20.5, 62.6 / 3.0, 21.1), 20.867);
        assert_eq!(avg(0.0, 2.0 / 3.0, 1.0), 0.67);
        assert_eq!(avg(1.0, 3.0, 5.0), 3.0);
        assert_eq!(avg(0.125, 0.1 + 0.2, 0.5), 0.3);
        assert_eq!(avg(1e-7, 2e-7 / 3.0, 1e-7), 6.7e-8);
    }

    #[test]
    fn times_are_given_to_the_millisecond() {
        let at = DateTime::parse_from_rfc3339("2026-11-29T12:00:05.120987654Z")
            .unwrap()
            .with_timezone(&Utc);
        let json = serde_json::to_value(Series {
            device_id: "d".into(),
            metric: "m".into(),
            bucket: Bucket::Minute,
            from: at,
            to: at.duration_trunc(TimeDelta::seconds(1)).unwrap(),
            points: vec![],
        })
        .unwrap();
        assert_eq!(json["from"], "2026-11-29T12:00:05.120Z");
        assert_eq!(json["to"], "2026-11-29T12:00:05Z");
    }
}
