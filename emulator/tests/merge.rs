//! The gateway's exactly-once batch write: an insert-only MERGE fed by `from_json` + `explode`.

mod common;

use std::sync::Arc;

use common::Workspace;
use lakegate_testkit::emulator_config;
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
    let ws = Workspace::start(emulator_config()).await;
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
    let ws = Workspace::start(emulator_config()).await;
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
        // A MERGE that deletes is emulated (merge_delete.rs), with one DELETE clause.
        "WHEN MATCHED THEN DELETE WHEN MATCHED THEN DELETE",
        "WHEN MATCHED THEN DELETE WHEN MATCHED THEN UPDATE SET *",
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

/// A FAILED statement's error class (from the message) and SQLSTATE.
fn failure(body: &Value) -> (String, String) {
    assert_eq!(body["status"]["state"], "FAILED", "{body}");
    let message = body["status"]["error"]["message"].as_str().unwrap();
    let class = message
        .strip_prefix('[')
        .and_then(|m| m.split(']').next())
        .unwrap_or_else(|| panic!("no error class in {message}"));
    (
        class.to_owned(),
        body["status"]["sql_state"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn from_json_is_permissive_by_default_and_fails_fast_on_request() {
    let ws = Workspace::start(emulator_config()).await;
    // PERMISSIVE (default, or asked for): malformed input is NULL, and exploding NULL
    // yields no rows at all.
    let body = ws
        .sql(
            "SELECT from_json('[1, 2', 'ARRAY<BIGINT>') IS NULL AS by_default, \
             from_json('[1, 2', 'ARRAY<BIGINT>', map('mode', 'PERMISSIVE')) IS NULL AS asked, \
             from_json('[1, 2]', 'ARRAY<BIGINT>', map('mode', 'FAILFAST')) AS well_formed",
        )
        .await;
    assert_eq!(
        body["result"]["data_array"][0].as_array().unwrap()[..2],
        [json!("true"), json!("true")],
        "{body}"
    );
    let body = ws
        .sql("SELECT count(*) AS n FROM (SELECT explode(from_json('oops', 'ARRAY<BIGINT>')) AS r)")
        .await;
    assert_eq!(body["result"]["data_array"], json!([["0"]]));

    // FAILFAST: the statement fails as Databricks' does.
    for malformed in ["'[1, 2'", "'[\"x\"]'", "'{}'"] {
        let (status, body) = ws
            .execute(json!({"statement": format!(
                "SELECT explode(from_json({malformed}, 'ARRAY<BIGINT>', map('mode', 'FAILFAST'))) AS r"
            )}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            failure(&body),
            (
                "MALFORMED_RECORD_IN_PARSING.WITHOUT_SUGGESTION".to_owned(),
                "22023".to_owned()
            ),
            "{malformed}"
        );
    }
    let (_, body) = ws
        .execute(json!({"statement": "SELECT from_json('[1]', 'ARRAY<BIGINT>', map('mode', 'DROPMALFORMED')) AS r"}))
        .await;
    assert_eq!(body["status"]["state"], "FAILED", "{body}");
    assert!(
        body["status"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PARSE_MODE_UNSUPPORTED"),
        "{body}"
    );
}

#[tokio::test]
async fn a_failfast_merge_of_a_malformed_batch_fails_and_writes_nothing() {
    let ws = workspace().await;
    let failfast = MERGE.replace(
        "value_str: STRING>>')",
        "value_str: STRING>>', map('mode', 'FAILFAST'))",
    );
    assert_ne!(failfast, MERGE);
    let (status, body) = ws
        .execute(json!({
            "statement": failfast,
            "parameters": [
                {"name": "rows", "value": "[{\"device_id\": \"d1\", \"reading_id\": \"r1\""},
                {"name": "ts_min", "value": "2025-11-29T11:00:00Z", "type": "TIMESTAMP"},
                {"name": "ts_max", "value": "2025-11-29T13:00:00Z", "type": "TIMESTAMP"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        failure(&body).0,
        "MALFORMED_RECORD_IN_PARSING.WITHOUT_SUGGESTION"
    );
    assert_eq!(stored(&ws).await, Value::Null);
}

#[tokio::test]
async fn reject_rows_fails_writes_of_marked_rows_into_one_table_only() {
    let mut config = emulator_config();
    config.faults.reject_rows = Some(lakegate_emulator::RejectRows {
        table: "MAIN.lakegate.readings".into(),
        marker: "poison".into(),
    });
    let ws = Workspace::start(config).await;
    ws.sql("CREATE SCHEMA IF NOT EXISTS main.lakegate").await;
    ws.sql(CREATE).await;
    ws.sql("CREATE TABLE main.lakegate.readings_rejected AS SELECT * FROM main.lakegate.readings")
        .await;

    let marked = json!([
        reading("ok", 0, Some(1.0), None),
        reading("r", 1, None, Some("poison pill"))
    ]);
    let body = merge(&ws, &marked.to_string()).await;
    assert_eq!(
        failure(&body),
        (
            "DELTA_VIOLATE_CONSTRAINT_WITH_VALUES".to_owned(),
            "23001".to_owned()
        )
    );
    assert_eq!(body["status"]["error"]["error_code"], "BAD_REQUEST");
    assert_eq!(
        stored(&ws).await,
        Value::Null,
        "nothing of the batch is written"
    );
    // Without the marker, or into another table, writes go through.
    assert_eq!(
        inserted(&ws, &json!([reading("ok", 0, Some(1.0), None)])).await,
        1
    );
    let other = MERGE.replace(
        "MERGE INTO main.lakegate.readings ",
        "MERGE INTO main.lakegate.readings_rejected ",
    );
    let (_, body) = ws
        .execute(json!({
            "statement": other,
            "parameters": [
                {"name": "rows", "value": marked.to_string()},
                {"name": "ts_min", "value": "2025-11-29T11:00:00Z", "type": "TIMESTAMP"},
                {"name": "ts_max", "value": "2025-11-29T13:00:00Z", "type": "TIMESTAMP"},
            ],
        }))
        .await;
    assert_eq!(body["status"]["state"], "SUCCEEDED", "{body}");
    // Reading a marked value is no write.
    ws.sql("SELECT 'poison' AS p FROM main.lakegate.readings")
        .await;
}

#[tokio::test]
async fn a_merge_into_a_dropped_table_fails_as_table_not_found() {
    let ws = workspace().await;
    ws.sql("DROP TABLE main.lakegate.readings").await;
    let body = merge(&ws, &json!([reading("r1", 0, Some(1.0), None)]).to_string()).await;
    assert_eq!(
        failure(&body),
        ("TABLE_OR_VIEW_NOT_FOUND".to_owned(), "42P01".to_owned())
    );
    // Back again: writes work.
    ws.sql(CREATE).await;
    assert_eq!(
        inserted(&ws, &json!([reading("r1", 0, Some(1.0), None)])).await,
        1
    );
}
