//! The ready queries in sql/ run against data ingested through the gateway.

use std::path::Path;

use chrono::{Duration, Utc};
use lakegate::databricks::{Param, StatementRequest, Value};
use serde_json::json;

use lakegate_testkit::gateway::Harness;

/// Runs `sql/<name>` with `params` and returns its rows.
async fn run(gateway: &Harness, name: &str, params: Vec<Param>) -> Vec<Vec<Value>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql").join(name);
    let sql = std::fs::read_to_string(&path).unwrap();
    gateway
        .reader()
        .statements()
        .execute(StatementRequest::new(sql).params(params))
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
        .collect_rows()
        .await
        .unwrap()
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn text(value: &Value) -> &str {
    match value {
        Value::String(text) => text,
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_queries_run_on_ingested_data() {
    let mut gateway = Harness::start().await;
    let now = Utc::now();
    let at = |minutes_ago: i64| (now - Duration::minutes(minutes_ago)).to_rfc3339();
    let readings = json!([
        {"id": "a", "ts": at(2), "metrics": {"temperature": 20.0, "state": "idle"}},
        {"id": "b", "ts": at(1), "metrics": {"temperature": 22.0, "state": "busy"}},
    ]);
    assert_eq!(
        gateway.post_json(&gateway.keys.sensor, &readings).await.0,
        200
    );
    let quiet = json!({"id": "c", "ts": at(30), "metrics": {"temperature": 5.0}});
    assert_eq!(gateway.post_json(&gateway.keys.other, &quiet).await.0, 200);

    let fleet = run(&gateway, "fleet_freshness.sql", vec![]).await;
    let states: Vec<(&str, &str)> = fleet
        .iter()
        .map(|row| (text(&row[0]), text(&row[6])))
        .collect();
    assert_eq!(states, [("sensor-1", "reporting"), ("sensor-2", "quiet")]);
    assert_eq!(
        fleet[0][3],
        Value::Int(2),
        "sensor-1 readings in the last hour"
    );

    let series = run(
        &gateway,
        "metric_timeseries.sql",
        vec![
            Param::string("device_id", "sensor-1"),
            Param::string("metric", "temperature"),
            Param::string("bucket", "HOUR"),
            Param::timestamp("from_ts", now - Duration::hours(2)),
            Param::timestamp("to_ts", now + Duration::minutes(1)),
        ],
    )
    .await;
    let samples: i64 = series.iter().map(|row| int(&row[4])).sum();
    assert_eq!(samples, 2);

    let latest = run(&gateway, "latest_values.sql", vec![]).await;
    let sensor_state = latest
        .iter()
        .find(|row| text(&row[0]) == "sensor-1" && text(&row[1]) == "state")
        .unwrap();
    assert_eq!(text(&sensor_state[4]), "busy");
    assert_eq!(latest.len(), 3);

    let hourly = run(&gateway, "fleet_hourly_by_metric.sql", vec![]).await;
    assert!(hourly.iter().any(|row| text(&row[1]) == "temperature"));

    let volume = run(&gateway, "ingestion_volume.sql", vec![]).await;
    let rows: i64 = volume.iter().map(|row| int(&row[1])).sum();
    assert_eq!(rows, 5);
    gateway.stop().await;
}
