//! Databricks functions the dashboards' read queries use: `unix_seconds`, `unix_millis` and
//! `unix_micros`, and the time bucket expression built from them.

mod common;

use common::Workspace;
use lakegate_testkit::emulator_config;
use serde_json::json;

#[tokio::test]
async fn unix_time_functions_round_down_to_whole_units() {
    let ws = Workspace::start(emulator_config()).await;
    let body = ws
        .sql(
            "SELECT unix_micros(TIMESTAMP '1970-01-01 00:00:01Z') AS micros, \
             unix_millis(TIMESTAMP '2025-11-29 12:00:00.1239Z') AS millis, \
             unix_seconds(TIMESTAMP '2025-11-29 12:00:00.999Z') AS seconds, \
             unix_millis(TIMESTAMP '1969-12-31 23:59:59.9995Z') AS before_epoch, \
             unix_micros(CAST(NULL AS TIMESTAMP)) AS null_in",
        )
        .await;
    let types: Vec<&str> = body["manifest"]["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type_text"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["BIGINT"; 5]);
    assert_eq!(
        body["result"]["data_array"][0],
        json!(["1000000", "1764417600123", "1764417600", "-1", null])
    );
}

#[tokio::test]
async fn time_buckets_from_unix_micros_and_parameters() {
    let ws = Workspace::start(emulator_config()).await;
    let (status, body) = ws
        .execute(json!({
            "statement": "SELECT timestamp_micros(CAST(floor(unix_micros(:ts) / :bucket_us) AS BIGINT) \
                          * :bucket_us) AS t, :ts - INTERVAL 1 HOUR AS hour_ago",
            "parameters": [
                {"name": "ts", "value": "2025-11-29T12:07:59.999999Z", "type": "TIMESTAMP"},
                {"name": "bucket_us", "value": "300000000", "type": "BIGINT"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"]["data_array"][0],
        json!(["2025-11-29T12:05:00.000Z", "2025-11-29T11:07:59.999Z"]),
        "{body}"
    );
}
