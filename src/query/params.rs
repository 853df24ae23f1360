//! Query parameters as readers send them, validated into queries: time ranges,
//! bucket choice and the caps that bound what one request may fetch.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::devices::is_valid_device_id;
use crate::table::is_metric_name_char;

/// Longest range one series may cover.
const MAX_RANGE: TimeDelta = TimeDelta::days(90);
/// Range of a series without `from`.
const DEFAULT_RANGE: TimeDelta = TimeDelta::hours(1);
/// Most points an automatically chosen bucket gives.
const AUTO_POINTS: u64 = 500;
const MAX_LATEST: u32 = 500;
const DEFAULT_LATEST: u32 = 20;

/// A parameter that is missing or invalid; the message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamError {
    pub parameter: &'static str,
    pub problem: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.parameter, self.problem)
    }
}

fn param_error(parameter: &'static str, problem: impl Into<String>) -> ParamError {
    ParamError {
        parameter,
        problem: problem.into(),
    }
}

/// Width of a series' time buckets; buckets start at multiples of it since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Bucket {
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl Bucket {
    /// Smallest first.
    const ALL: [Bucket; 4] = [
        Bucket::Minute,
        Bucket::FiveMinutes,
        Bucket::Hour,
        Bucket::Day,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Bucket::Minute => "1m",
            Bucket::FiveMinutes => "5m",
            Bucket::Hour => "1h",
            Bucket::Day => "1d",
        }
    }

    pub(crate) fn width(self) -> TimeDelta {
        match self {
            Bucket::Minute => TimeDelta::minutes(1),
            Bucket::FiveMinutes => TimeDelta::minutes(5),
            Bucket::Hour => TimeDelta::hours(1),
            Bucket::Day => TimeDelta::days(1),
        }
    }

    fn parse(text: &str) -> Option<Bucket> {
        Bucket::ALL.into_iter().find(|bucket| bucket.name() == text)
    }

    /// The smallest bucket that gives at most [`AUTO_POINTS`] points over `range`.
    pub(crate) fn auto(range: TimeDelta) -> Bucket {
        Bucket::ALL
            .into_iter()
            .find(|bucket| points(range, *bucket) <= AUTO_POINTS)
            .unwrap_or(Bucket::Day)
    }
}

/// Buckets needed to cover `range` (rounded up).
fn points(range: TimeDelta, bucket: Bucket) -> u64 {
    let micros = |delta: TimeDelta| {
        delta
            .num_microseconds()
            .map_or(u64::MAX, |us| us.max(0) as u64)
    };
    micros(range).div_ceil(micros(bucket.width()))
}

/// The parameters a route takes, said to a reader whose query string cannot be read.
pub(crate) trait Described {
    fn parameters() -> String;
}

/// `GET /api/devices/{device_id}/series` as sent; empty values count as absent.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SeriesParams {
    pub metric: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub bucket: Option<String>,
}

impl Described for SeriesParams {
    fn parameters() -> String {
        let buckets: Vec<&str> = Bucket::ALL.iter().map(|bucket| bucket.name()).collect();
        format!(
            "metric (a metric name, required), from and to (RFC 3339 \
        times such as 2026-11-29T12:00:00Z; the last hour by default) and bucket ({}; chosen \
             from the range by default)",
            buckets.join(", ")
        )
    }
}

/// One device's metric, aggregated per bucket over `[from, to)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesQuery {
    pub device_id: String,
    pub metric: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: Bucket,
}

impl SeriesQuery {
    pub(crate) fn new(
        device_id: String,
        params: SeriesParams,
        now: DateTime<Utc>,
        max_points: usize,
    ) -> Result<SeriesQuery, ParamError> {
        let device_id = valid_device_id(device_id)?;
        let metric = present(params.metric).ok_or_else(|| param_error("metric", "is required"))?;
        // Only the characters: the value is a parameter, and an unknown name finds nothing.
        if !metric.chars().all(is_metric_name_char) {
            return Err(param_error(
                "metric",
                "must be made of A-Z a-z 0-9 _ . : / -",
            ));
        }
        let to = present(params.to).map_or(Ok(now), |to| timestamp("to", &to))?;
        let from =
            present(params.from).map_or(Ok(to - DEFAULT_RANGE), |from| timestamp("from", &from))?;
        if from >= to {
            return Err(param_error("from", "must be before to"));
        }
        let range = to - from;
        if range > MAX_RANGE {
            return Err(param_error(
                "from",
                format!(
                    "the range from..to is longer than {} days",
                    MAX_RANGE.num_days()
                ),
            ));
        }
        let bucket = match present(params.bucket) {
            None => Bucket::auto(range),
            Some(text) => Bucket::parse(&text)
                .ok_or_else(|| param_error("bucket", "must be one of 1m, 5m, 1h, 1d"))?,
        };
        let count = points(range, bucket);
        if count > max_points as u64 {
            return Err(param_error(
                "bucket",
                format!(
                    "{} over this range gives {count} points, more than {max_points}; \
                     choose a larger bucket or a shorter range",
                    bucket.name()
                ),
            ));
        }
        Ok(SeriesQuery {
            device_id,
            metric,
            from,
            to,
            bucket,
        })
    }

    /// Most buckets `[from, to)` can touch: one more than it needs when it
    /// does not start on a bucket boundary.
    pub(crate) fn max_rows(&self) -> u64 {
        points(self.to - self.from, self.bucket) + 1
    }
}

/// `GET /api/devices/{device_id}/latest` as sent.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LatestParams {
    pub limit: Option<String>,
}

impl Described for LatestParams {
    fn parameters() -> String {
        format!("limit (a whole number from 1 to {MAX_LATEST}; {DEFAULT_LATEST} by default)")
    }
}

/// A device's newest readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LatestQuery {
    pub device_id: String,
    pub limit: u32,
}

impl LatestQuery {
    pub(crate) fn new(device_id: String, params: LatestParams) -> Result<LatestQuery, ParamError> {
        let device_id = valid_device_id(device_id)?;
        let limit = match present(params.limit) {
            None => DEFAULT_LATEST,
            Some(text) => text
                .parse()
                .ok()
                .filter(|limit| (1..=MAX_LATEST).contains(limit))
                .ok_or_else(|| {
                    param_error(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LATEST}"),
                    )
                })?,
        };
        Ok(LatestQuery { device_id, limit })
    }
}

fn valid_device_id(device_id: String) -> Result<String, ParamError> {
    if is_valid_device_id(&device_id) {
        Ok(device_id)
    } else {
        Err(param_error(
            "device_id",
            "must be 1 to 128 of A-Z a-z 0-9 . _ : -",
        ))
    }
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

fn timestamp(parameter: &'static str, text: &str) -> Result<DateTime<Utc>, ParamError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            param_error(
                parameter,
                "must be an RFC 3339 time, e.g. 2026-11-29T12:00:00Z",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn series(params: &[(&str, &str)]) -> Result<SeriesQuery, ParamError> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        };
        let params = SeriesParams {
            metric: get("metric"),
            from: get("from"),
            to: get("to"),
            bucket: get("bucket"),
        };
        SeriesQuery::new("pump-7".into(), params, at("2026-11-29T12:00:00Z"), 2000)
    }

    fn problem(params: &[(&str, &str)]) -> (&'static str, String) {
        let err = series(params).unwrap_err();
        (err.parameter, err.problem)
    }

    #[test]
    fn series_defaults_to_the_last_hour_in_minutes() {
        let query = series(&[("metric", "temp")]).unwrap();
        assert_eq!(
            query,
            SeriesQuery {
                device_id: "pump-7".into(),
                metric: "temp".into(),
                from: at("2026-11-29T11:00:00Z"),
                to: at("2026-11-29T12:00:00Z"),
                bucket: Bucket::Minute,
            }
        );
        assert_eq!(query.max_rows(), 61);
        let query = series(&[
            ("metric", "t"),
            ("to", "2026-01-01T02:00:00+02:00"),
            ("from", ""),
        ])
        .unwrap();
        assert_eq!(
            (query.from, query.to),
            (at("2025-12-31T23:00:00Z"), at("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn automatic_bucket_is_the_smallest_within_500_points() {
        let cases = [
            (TimeDelta::minutes(500), Bucket::Minute),
            (TimeDelta::minutes(501), Bucket::FiveMinutes),
            (TimeDelta::minutes(2500), Bucket::FiveMinutes),
            (TimeDelta::minutes(2501), Bucket::Hour),
            (TimeDelta::hours(500), Bucket::Hour),
            (TimeDelta::hours(501), Bucket::Day),
            (MAX_RANGE, Bucket::Day),
        ];
        for (range, bucket) in cases {
            assert_eq!(Bucket::auto(range), bucket, "{range}");
        }
        let query = series(&[("metric", "t"), ("from", "2026-11-10T00:00:00Z")]).unwrap();
        assert_eq!(query.bucket, Bucket::Hour);
    }

    #[test]
    fn explicit_buckets_are_capped_by_points() {
        let day = [("metric", "t"), ("from", "2026-11-28T12:00:00Z")];
        assert_eq!(
            series(&[day[0], day[1], ("bucket", "5m")]).unwrap().bucket,
            Bucket::FiveMinutes
        );
        assert_eq!(
            series(&[day[0], day[1], ("bucket", "1m")])
                .unwrap()
                .max_rows(),
            1441
        );
        let week = [
            ("metric", "t"),
            ("from", "2026-11-22T12:00:00Z"),
            ("bucket", "1m"),
        ];
        let (parameter, message) = problem(&week);
        assert_eq!(parameter, "bucket");
        assert!(
            message.contains("10080 points, more than 2000"),
            "{message}"
        );
        assert_eq!(points(TimeDelta::seconds(61), Bucket::Minute), 2);
    }

    #[test]
    fn bad_series_parameters_are_named() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[], "metric"),
            (&[("metric", "")], "metric"),
            (&[("metric", "a b")], "metric"),
            (&[("metric", "t"), ("from", "yesterday")], "from"),
            (&[("metric", "t"), ("to", "2026-11-29 12:00")], "to"),
            (&[("metric", "t"), ("from", "2026-11-29T12:00:00Z")], "from"),
            (&[("metric", "t"), ("from", "2026-11-29T13:00:00Z")], "from"),
            (&[("metric", "t"), ("from", "2026-08-01T00:00:00Z")], "from"),
            (&[("metric", "t"), ("bucket", "2m")], "bucket"),
        ];
        for (params, parameter) in cases {
            assert_eq!(problem(params).0, parameter, "{params:?}");
        }
        let params = SeriesParams {
            metric: Some("t".into()),
            ..SeriesParams::default()
        };
        let key = crate::devices::generate_key();
        let key = secrecy::ExposeSecret::expose_secret(&key.key).to_owned();
        let err = SeriesQuery::new(key, params, Utc::now(), 2000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device_id: must be 1 to 128 of A-Z a-z 0-9 . _ : -"
        );
    }

    #[test]
    fn latest_limit_defaults_and_bounds() {
        let latest = |limit: Option<&str>| {
            let params = LatestParams {
                limit: limit.map(str::to_owned),
            };
            LatestQuery::new("pump-7".into(), params).map(|query| query.limit)
        };
        assert_eq!(latest(None), Ok(20));
        assert_eq!(latest(Some("1")), Ok(1));
        assert_eq!(latest(Some("500")), Ok(500));
        for bad in ["0", "501", "-1", "ten", "2.5"] {
            assert_eq!(latest(Some(bad)).unwrap_err().parameter, "limit", "{bad}");
        }
    }
}
