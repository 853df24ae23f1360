//! The gateway's exactly-once batch write: an insert-only MERGE fed by `from_json` + `explode`.

mod common;

use std::sync::Arc;

use common::{Workspace, config};
use serde_json::{Value, json};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.lakegate.readings (\
    device_id STRING NOT NULL, reading_id STRING NOT NULL, ts TIMESTAMP NOT NULL, \
    metric STRING NOT NULL, value DOUBLE, value_str STRING, ingested_at TIMESTAMP NOT NULL) \
    USING DELTA CLUSTER BY (device_id, ts) COMMENT 'sensor readings' \
    TBLPROPERTIES ('delta.enableRowTracking' = 'true')";

const MERGE: &str = "MERGE INTO main.lakegate.readings AS t
USING (
  SELECT r.device_id AS device_id, r.reading_id AS reading_id, timestamp_micros(r.ts_us) AS ts,
         r.metric AS metric, r.value AS value, r.value_str AS value_str
  FROM (SELECT explode(from_json(:rows, 'ARRAY<STRUCT<device_id: STRING, reading_id: STRING, ts_us: BIGINT, metric: STRING, value: DOUBLE, value_str: STRING>>')) AS r)
) AS s
ON t.device_id = s.device_id AND t.reading_id = s.reading_id AND t.metric = s.metric
   AND t.ts >= :ts_min AND t.ts <= :ts_max
WHEN NOT MATCHED THEN INSERT (device_id, reading_id, ts, metric, value, value_str, ingested_at)
  VALUES (s.device_id, s.reading_id, s.ts, s.metric, s.value, s.value_str, current_timestamp())";

/// 2025-11-29T12:00:00Z in microseconds.
const NOON_US: i64 = 1_764_417_600_000_000;

async fn workspace() -> Workspace {
    let ws = Workspace::start(config()).await;
    ws.sql("CREATE SCHEMA IF NOT EXISTS main.lakegate").await;
    ws.sql(CREATE).await;
    ws
}

fn reading(reading_id: &str, offset_us: i64, value: Option<f64>, value_str: Option<&str>) -> Value {
    json!({
        "device_id": "d1", "reading_id": reading_id, "ts_us": NOON_US + offset_us,
        "metric": "temp", "value": value, "value_str": value_str,
    })
}

/// Runs the gateway's MERGE on `rows` (a JSON array, as text) and returns the response.
async fn merge(ws: &Workspace, rows: &str) -> Value {
    let (status, body) = ws
        .execute(json!({
            "statement": MERGE,
            "parameters": [
                {"name": "rows", "value": rows},
                {"name": "ts_min", "value": "2025-11-29T11:00:00Z", "type": "TIMESTAMP"},
                {"name": "ts_max", "value": "2025-11-29T13:00:00Z", "type": "TIMESTAMP"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The MERGE's `num_inserted_rows`, after checking Databricks' result shape.
async fn inserted(ws: &Workspace, rows: &Value) -> i64 {
    let body = merge(ws, &rows.to_string()).await;
    assert_eq!(body["status"]["state"], "SUCCEEDED", "{body}");
    let columns: Vec<&str> = body["manifest"]["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "num_affected_rows",
            "num_updated_rows",
            "num_deleted_rows",
            "num_inserted_rows"
        ]
    );
    let row = &body["result"]["data_array"][0];
    assert_eq!((&row[1], &row[2]), (&json!("0"), &json!("0")), "{body}");
    assert_eq!(row[0], row[3], "{body}");
    row[3].as_str().unwrap().parse().unwrap()
}

async fn stored(ws: &Workspace) -> Value {
    ws.sql(
        "SELECT device_id, reading_id, ts, metric, value, value_str, ingested_at IS NOT NULL \
         FROM main.lakegate.readings ORDER BY reading_id",
    )
    .await["result"]["data_array"]
        .clone()
}

#[tokio::test]
async fn merge_inserts_each_reading_exactly_once() {
    let ws = workspace().await;
    let first = json!([
        reading("r1", 0, Some(21.5), None),
        reading("r2", 1_500, None, Some("door open")),
    ]);
    assert_eq!(inserted(&ws, &first).await, 2);
    assert_eq!(
        stored(&ws).await,
        json!([
            [
                "d1",
                "r1",
                "2025-11-29T12:00:00.000Z",
                "temp",
                "21.5",
                null,
                "true"
            ],
            [
                "d1",
                "r2",
                "2025-11-29T12:00:00.001Z",
                "temp",
                null,
                "door open",
                "true"
            ]
        ])
    );
    let body = ws
        .sql(&format!(
            "SELECT reading_id FROM main.lakegate.readings WHERE ts = timestamp_micros({})",
            NOON_US + 1_500
        ))
        .await;
    assert_eq!(
        body["result"]["data_array"],
        json!([["r2"]]),
        "microseconds survive"
    );

    // A retried batch inserts nothing; an overlapping one only its new readings.
    assert_eq!(inserted(&ws, &first).await, 0);
    let overlapping = json!([
        reading("r2", 1_500, None, Some("door open")),
        reading("r3", 2_000, Some(-4.0), None),
    ]);
    assert_eq!(inserted(&ws, &overlapping).await, 1);
    let body = ws
        .sql("SELECT reading_id, count(*) FROM main.lakegate.readings GROUP BY reading_id ORDER BY reading_id")
        .await;
    assert_eq!(
        body["result"]["data_array"],
        json!([["r1", "1"], ["r2", "1"], ["r3", "1"]])
    );

    // Source rows that duplicate each other are all inserted, as on Databricks.
    let twins = json!([reading("r9", 0, None, None), reading("r9", 0, None, None)]);
    assert_eq!(inserted(&ws, &twins).await, 2);
    assert_eq!(inserted(&ws, &json!([])).await, 0);
}

#[tokio::test]
async fn malformed_json_inserts_nothing() {
    let ws = workspace().await;
    for rows in ["not json", "[{\"device_id\": \"d1\"", "{} {}", ""] {
        let body = merge(&ws, rows).await;
        assert_eq!(body["status"]["state"], "SUCCEEDED", "{rows}: {body}");
        assert_eq!(body["result"]["data_array"][0][3], "0", "{rows}: {body}");
    }
    assert_eq!(stored(&ws).await, Value::Null);

    // A reading without a NOT NULL field fails the whole statement and writes nothing.
    let body = merge(
        &ws,
        r#"[{"device_id": "d1", "reading_id": "r1", "metric": "m"}]"#,
    )
    .await;
    assert_eq!(body["status"]["state"], "FAILED", "{body}");
    let message = body["status"]["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("[DELTA_NOT_NULL_CONSTRAINT_VIOLATED]")
            && message.contains("column: ts."),
        "{message}"
    );
    assert_eq!(stored(&ws).await, Value::Null);
}

#[tokio::test]
async fn json_and_timestamp_functions() {
    let ws = Workspace::start(config()).await;
    let body = ws
        .sql(
            "SELECT from_json('{\"a\": 1, \"b\": [true, null], \"c\": \"2025-11-29\"}', \
             'a INT, b ARRAY<BOOLEAN>, c DATE') AS v, \
             p IS NOT NULL AND p.a IS NULL AS permissive, \
             from_json('[1, 2', 'ARRAY<BIGINT>') IS NULL AS malformed, \
             timestamp_millis(1764417600123) AS millis, timestamp_micros(0) AS micros \
             FROM (SELECT from_json('{\"a\" 1}', 'STRUCT<a: INT>') AS p)",
        )
        .await;
    let types: Vec<&str> = body["manifest"]["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type_text"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "STRUCT<a: INT, b: ARRAY<BOOLEAN>, c: DATE>",
            "BOOLEAN",
            "BOOLEAN",
            "TIMESTAMP",
            "TIMESTAMP"
        ]
    );
    let row = &body["result"]["data_array"][0];
    assert_eq!(
        (&row[1], &row[2], &row[3], &row[4]),
        (
            &json!("true"),
            &json!("true"),
            &json!("2025-11-29T12:00:00.123Z"),
            &json!("1970-01-01T00:00:00.000Z")
        ),
        "{body}"
    );
    let body = ws
        .sql("SELECT r.n FROM (SELECT explode(from_json('[{\"n\": 2}, {\"n\": 1}]', 'ARRAY<STRUCT<n BIGINT>>')) AS r) ORDER BY r.n")
        .await;
    assert_eq!(body["result"]["data_array"], json!([["1"], ["2"]]));
}

#[tokio::test]
async fn insert_star_and_condition() {
    let ws = workspace().await;
    ws.sql("CREATE TABLE main.lakegate.staged AS SELECT * FROM main.lakegate.readings")
        .await;
    ws.sql(
        "INSERT INTO main.lakegate.staged VALUES \
         ('d1', 'r1', TIMESTAMP '2025-11-29 12:00:00', 'temp', 1.0, NULL, current_timestamp()), \
         ('d2', 'r2', TIMESTAMP '2025-11-29 12:00:00', 'temp', 2.0, NULL, current_timestamp())",
    )
    .await;
    let statement = "MERGE INTO main.lakegate.readings t USING main.lakegate.staged s \
        ON t.reading_id = s.reading_id WHEN NOT MATCHED AND s.device_id = 'd1' THEN INSERT *";
    let body = ws.sql(statement).await;
    assert_eq!(body["result"]["data_array"], json!([["1", "0", "0", "1"]]));
    let body = ws
        .sql(&statement.replace(" AND s.device_id = 'd1'", ""))
        .await;
    assert_eq!(body["result"]["data_array"], json!([["1", "0", "0", "1"]]));
    let body = ws
        .sql("SELECT reading_id, value FROM main.lakegate.readings ORDER BY reading_id")
        .await;
    assert_eq!(
        body["result"]["data_array"],
        json!([["r1", "1.0"], ["r2", "2.0"]])
    );
}

#[tokio::test]
async fn other_merge_clauses_fail_clearly() {
    let ws = workspace().await;
    let using = "MERGE INTO main.lakegate.readings t USING main.lakegate.readings s \
        ON t.reading_id = s.reading_id";
    for clauses in [
        "WHEN MATCHED THEN UPDATE SET value = s.value",
        "WHEN MATCHED THEN UPDATE SET *",
        "WHEN MATCHED AND s.value IS NULL THEN DELETE",
        "WHEN NOT MATCHED BY SOURCE THEN DELETE",
        "WHEN NOT MATCHED THEN INSERT * WHEN MATCHED THEN DELETE",
    ] {
        let (_, body) = ws
            .execute(json!({"statement": format!("{using} {clauses}")}))
            .await;
        assert_eq!(body["status"]["state"], "FAILED", "{clauses}: {body}");
        let message = body["status"]["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("[UNSUPPORTED_FEATURE]")
                && message.contains("not supported by the emulator"),
            "{clauses}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_merges_insert_each_reading_once() {
    let ws = Arc::new(workspace().await);
    let rows: Vec<Value> = (0..50)
        .map(|i| reading(&format!("r{i:02}"), i, Some(i as f64), None))
        .collect();
    let rows = Value::from(rows).to_string();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (ws, rows) = (Arc::clone(&ws), rows.clone());
            tokio::spawn(async move { merge(&ws, &rows).await })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        let body = task.await.unwrap();
        assert_eq!(body["status"]["state"], "SUCCEEDED", "{body}");
        total += body["result"]["data_array"][0][3]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap();
    }
    assert_eq!(total, 50);
    let body = ws
        .sql("SELECT count(*), count(DISTINCT reading_id) FROM main.lakegate.readings")
        .await;
    assert_eq!(body["result"]["data_array"], json!([["50", "50"]]));
}
