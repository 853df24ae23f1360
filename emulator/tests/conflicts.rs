//! Delta's optimistic concurrency, as the `write_conflicts` fault models it: writes read
//! concurrently and commit one at a time, and a write whose read a concurrent commit
//! changed fails with `DELTA_CONCURRENT_APPEND`; plus the statement cost model.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Workspace;
use lakegate_emulator::{Faults, StatementCost, WriteConflicts};
use lakegate_testkit::emulator_config;
use serde_json::{Value, json};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.lakegate.readings (\
    device_id STRING NOT NULL, reading_id STRING NOT NULL, ts TIMESTAMP NOT NULL, \
    metric STRING NOT NULL, value DOUBLE, ingested_at TIMESTAMP NOT NULL) \
    USING DELTA CLUSTER BY (device_id, ts)";

/// The gateway's MERGE, keyed on (device, reading, ts, metric), its scan bounded by a ts range.
const MERGE: &str = "MERGE INTO main.lakegate.readings AS t
USING (
  SELECT r.device_id AS device_id, r.reading_id AS reading_id, timestamp_micros(r.ts_us) AS ts,
         r.metric AS metric, r.value AS value
  FROM (SELECT explode(from_json(:rows, 'ARRAY<STRUCT<device_id: STRING, reading_id: STRING, ts_us: BIGINT, metric: STRING, value: DOUBLE>>')) AS r)
) AS s
ON t.device_id = s.device_id AND t.reading_id = s.reading_id AND t.ts = s.ts
   AND t.metric = s.metric AND t.ts >= :ts_min AND t.ts <= :ts_max
WHEN NOT MATCHED THEN INSERT (device_id, reading_id, ts, metric, value, ingested_at)
  VALUES (s.device_id, s.reading_id, s.ts, s.metric, s.value, current_timestamp())";

/// 2025-11-29T12:00:00Z in microseconds.
const NOON_US: i64 = 1_764_417_600_000_000;
const HOUR_US: i64 = 3_600_000_000;

async fn workspace(faults: Faults) -> Arc<Workspace> {
    let ws = Workspace::start(emulator_config()).await;
    ws.sql("CREATE SCHEMA IF NOT EXISTS main.lakegate").await;
    ws.sql(CREATE).await;
    ws.emulator.set_faults(faults);
    Arc::new(ws)
}

/// `count` readings of `device`, a second apart from `start_us`.
fn rows(device: &str, start_us: i64, count: usize) -> (String, i64, i64) {
    let rows: Vec<Value> = (0..count)
        .map(|i| {
            json!({"device_id": device, "reading_id": format!("r{i}"),
                   "ts_us": start_us + i as i64 * 1_000_000, "metric": "temp", "value": 1.5})
        })
        .collect();
    let last = start_us + (count as i64 - 1) * 1_000_000;
    (Value::from(rows).to_string(), start_us, last)
}

fn timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339()
}

/// Runs the MERGE of `batch` to its end; returns the final response.
async fn merge(ws: &Workspace, batch: &(String, i64, i64)) -> Value {
    let (rows, ts_min, ts_max) = batch;
    let (status, body) = ws
        .execute(json!({
            "statement": MERGE,
            "parameters": [
                {"name": "rows", "value": rows},
                {"name": "ts_min", "value": timestamp(*ts_min), "type": "TIMESTAMP"},
                {"name": "ts_max", "value": timestamp(*ts_max), "type": "TIMESTAMP"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs the MERGEs of `batches` at the same time; returns their responses in order.
async fn concurrently(ws: &Arc<Workspace>, batches: Vec<(String, i64, i64)>) -> Vec<Value> {
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let ws = Arc::clone(ws);
            tokio::spawn(async move { merge(&ws, &batch).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn state(body: &Value) -> &str {
    body["status"]["state"].as_str().unwrap_or_default()
}

fn inserted(body: &Value) -> i64 {
    assert_eq!(state(body), "SUCCEEDED", "{body}");
    body["result"]["data_array"][0][3]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Rows in the table, and distinct keys among them.
async fn counts(ws: &Workspace) -> (i64, i64) {
    let body = ws
        .sql(
            "SELECT count(*), count(DISTINCT concat(device_id, '/', reading_id, '/', \
             CAST(unix_micros(ts) AS STRING), '/', metric)) FROM main.lakegate.readings",
        )
        .await;
    let row = &body["result"]["data_array"][0];
    let number = |v: &Value| v.as_str().unwrap().parse::<i64>().unwrap();
    (number(&row[0]), number(&row[1]))
}

fn assert_conflict(body: &Value, subclass: &str) {
    assert_eq!(state(body), "FAILED", "{body}");
    let message = body["status"]["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("[DELTA_CONCURRENT_APPEND.{subclass}] ")),
        "{message}"
    );
    assert!(message.ends_with("SQLSTATE: 2D521"), "{message}");
    assert_eq!(body["status"]["sql_state"], "2D521", "{body}");
}

fn faults(mode: WriteConflicts) -> Faults {
    Faults {
        write_conflicts: mode,
        statement_latency: Duration::from_millis(400),
        ..Faults::default()
    }
}

#[tokio::test]
async fn row_level_identical_concurrent_merges_one_commits_the_other_conflicts() {
    let ws = workspace(faults(WriteConflicts::RowLevel)).await;
    let batch = rows("d1", NOON_US, 50);
    let answers = concurrently(&ws, vec![batch.clone(), batch.clone()]).await;
    let succeeded: Vec<&Value> = answers.iter().filter(|b| state(b) == "SUCCEEDED").collect();
    let failed: Vec<&Value> = answers.iter().filter(|b| state(b) == "FAILED").collect();
    assert_eq!((succeeded.len(), failed.len()), (1, 1), "{answers:?}");
    assert_eq!(inserted(succeeded[0]), 50);
    assert_conflict(failed[0], "ROW_LEVEL_CHANGES");
    let message = failed[0]["status"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("A concurrent MERGE added data to table main.lakegate.readings"),
        "{message}"
    );
    assert_eq!(counts(&ws).await, (50, 50));
    assert_eq!(ws.emulator.stats().write_conflicts, 1);

    // The MERGE is idempotent: the retry commits and inserts nothing.
    assert_eq!(inserted(&merge(&ws, &batch).await), 0);
    assert_eq!(counts(&ws).await, (50, 50));
}

#[tokio::test]
async fn row_level_concurrent_merges_of_other_rows_all_commit() {
    let ws = workspace(faults(WriteConflicts::RowLevel)).await;
    let batches = (0..4)
        .map(|d| rows(&format!("d{d}"), NOON_US, 20))
        .collect();
    let started = Instant::now();
    let answers = concurrently(&ws, batches).await;
    for answer in &answers {
        assert_eq!(inserted(answer), 20);
    }
    // They overlapped: four serialized 400 ms statements would take 1.6 s.
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(counts(&ws).await, (80, 80));
    assert_eq!(ws.emulator.stats().write_conflicts, 0);
}

#[tokio::test]
async fn file_level_merges_conflict_when_their_time_ranges_overlap() {
    let ws = workspace(faults(WriteConflicts::FileLevel)).await;
    // Other devices, overlapping times: the second to commit read rows the first added.
    let answers = concurrently(
        &ws,
        vec![
            rows("d1", NOON_US, 30),
            rows("d2", NOON_US + 10_000_000, 30),
        ],
    )
    .await;
    let failed: Vec<&Value> = answers.iter().filter(|b| state(b) == "FAILED").collect();
    assert_eq!(failed.len(), 1, "{answers:?}");
    assert_conflict(failed[0], "NO_HINT");
    assert_eq!(counts(&ws).await, (30, 30));

    // Disjoint time ranges read disjoint rows: both commit.
    let answers = concurrently(
        &ws,
        vec![
            rows("d3", NOON_US + HOUR_US, 30),
            rows("d4", NOON_US + 2 * HOUR_US, 30),
        ],
    )
    .await;
    for answer in &answers {
        assert_eq!(inserted(answer), 30);
    }
    assert_eq!(counts(&ws).await, (90, 90));
    assert_eq!(ws.emulator.stats().write_conflicts, 1);
}

#[tokio::test]
async fn insert_select_reading_its_target_conflicts_and_blind_inserts_never_do() {
    let ws = workspace(faults(WriteConflicts::FileLevel)).await;
    let copy = "INSERT INTO main.lakegate.readings \
        SELECT device_id, concat(reading_id, '-copy'), ts, metric, value, ingested_at \
        FROM main.lakegate.readings WHERE device_id = 'd1'";
    let blind = |id: &str| {
        format!(
            "INSERT INTO main.lakegate.readings VALUES \
             ('d9', '{id}', TIMESTAMP '2025-11-29 12:00:00', 'temp', 1.0, current_timestamp())"
        )
    };
    let statements = [copy.to_string(), blind("a"), blind("b")];
    let tasks: Vec<_> = statements
        .into_iter()
        .enumerate()
        .map(|(i, statement)| {
            let ws = Arc::clone(&ws);
            tokio::spawn(async move {
                // The copy reads after the blind inserts started and before they commit.
                tokio::time::sleep(Duration::from_millis(if i == 0 { 100 } else { 0 })).await;
                ws.execute(json!({ "statement": statement })).await.1
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert_conflict(&answers[0], "WHOLE_TABLE_READ");
    assert_eq!(state(&answers[1]), "SUCCEEDED", "{}", answers[1]);
    assert_eq!(state(&answers[2]), "SUCCEEDED", "{}", answers[2]);
    assert_eq!(counts(&ws).await, (2, 2));
}

#[tokio::test]
async fn without_conflicts_concurrent_identical_merges_all_commit_once() {
    let ws = workspace(faults(WriteConflicts::Off)).await;
    let batch = rows("d1", NOON_US, 40);
    let answers = concurrently(&ws, vec![batch.clone(), batch.clone(), batch]).await;
    let total: i64 = answers.iter().map(inserted).sum();
    assert_eq!(total, 40, "the rows were inserted by exactly one MERGE");
    assert_eq!(counts(&ws).await, (40, 40));
    assert_eq!(ws.emulator.stats().write_conflicts, 0);
}

#[tokio::test]
async fn a_cancelled_write_commits_nothing() {
    let ws = workspace(Faults {
        statement_latency: Duration::from_secs(5),
        ..Faults::default()
    })
    .await;
    let (rows, ts_min, ts_max) = rows("d1", NOON_US, 10);
    let (status, body) = ws
        .execute(json!({
            "statement": MERGE,
            "wait_timeout": "0s",
            "parameters": [
                {"name": "rows", "value": rows},
                {"name": "ts_min", "value": timestamp(ts_min), "type": "TIMESTAMP"},
                {"name": "ts_max", "value": timestamp(ts_max), "type": "TIMESTAMP"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["statement_id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = ws
        .post(&format!("/api/2.0/sql/statements/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(state(&ws.poll_until_done(id).await), "CANCELED");
    ws.emulator.set_faults(Faults::default());
    assert_eq!(counts(&ws).await, (0, 0));
}

#[tokio::test]
async fn a_write_takes_its_fixed_cost_plus_its_cost_per_row() {
    let ws = workspace(Faults {
        statement_cost: Some(StatementCost {
            fixed: Duration::from_millis(100),
            per_row: Duration::from_millis(2),
        }),
        ..Faults::default()
    })
    .await;
    let batch = rows("d1", NOON_US, 300);
    let started = Instant::now();
    assert_eq!(inserted(&merge(&ws, &batch).await), 300);
    let big = started.elapsed();
    assert!(big >= Duration::from_millis(700), "{big:?}");

    // Nothing left to insert: only the fixed part.
    let started = Instant::now();
    assert_eq!(inserted(&merge(&ws, &batch).await), 0);
    let empty = started.elapsed();
    assert!(empty >= Duration::from_millis(100), "{empty:?}");
    assert!(empty < big, "{empty:?} vs {big:?}");
}
