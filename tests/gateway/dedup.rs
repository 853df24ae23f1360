//! The `<table>_dedup` view: created at start-up next to the table, and what reads query
//! with `LAKEGATE_READ_FROM=dedup`, so a row a sink wrote twice is seen once.

use chrono::{DurationRound, SecondsFormat, TimeDelta, Utc};
use lakegate::databricks::Value;
use lakegate::devices::{generate_key, hash_key};
use lakegate_testkit::TABLE;
use lakegate_testkit::gateway::{Harness, respond};
use secrecy::ExposeSecret;
use serde_json::{Value as Json, json};

const VIEW: &str = "main.lakegate.readings_dedup";

fn text(value: &str) -> Value {
    Value::String(value.to_owned())
}

async fn read(gateway: &Harness, path: &str, token: &str) -> Json {
    let response = (gateway.http.get(format!("{}{path}", gateway.url)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, body) = respond(response).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_from_the_dedup_view_see_a_row_written_twice_once() {
    let token = generate_key().key.expose_secret().to_owned();
    let hash = hash_key(&token);
    let mut gateway = Harness::builder()
        .envs(&[
            ("LAKEGATE_READER_TOKENS", hash.as_str()),
            ("LAKEGATE_READ_FROM", "dedup"),
        ])
        .start()
        .await;
    let ts = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::minutes(5);
    let at = ts.to_rfc3339_opts(SecondsFormat::Secs, true);
    let body = json!([
        {"id": "r-1", "ts": at, "metrics": {"temp": 1.0, "state": "ok"}},
        {"id": "r-2", "ts": at, "metrics": {"temp": 2.0}},
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    // What a re-sent stream leaves: r-1's rows again, ingested later, one value changed.
    gateway
        .query(&format!(
            "INSERT INTO {TABLE} SELECT device_id, reading_id, ts, metric, \
             CASE WHEN value IS NULL THEN NULL ELSE value + 100 END, value_str, \
             ingested_at + INTERVAL 1 SECOND FROM {TABLE} WHERE reading_id = 'r-1'"
        ))
        .await;
    assert_eq!(gateway.row_count().await, 5);

    // The view keeps each identity's earliest row.
    let kept = gateway
        .query(&format!(
            "SELECT reading_id, metric, value, value_str FROM {VIEW} \
             ORDER BY reading_id, metric"
        ))
        .await;
    assert_eq!(
        kept,
        [
            vec![text("r-1"), text("state"), Value::Null, text("ok")],
            vec![text("r-1"), text("temp"), Value::Float(1.0), Value::Null],
            vec![text("r-2"), text("temp"), Value::Float(2.0), Value::Null],
        ]
    );

    // And the read API reads the view: the series holds 1.0 and 2.0, not 101.0.
    let from = (ts - TimeDelta::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let series = read(
        &gateway,
        &format!("/api/devices/sensor-1/series?metric=temp&from={from}&bucket=1h"),
        &token,
    )
    .await;
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{series}");
    assert_eq!(points[0]["max"], json!(2.0), "{series}");
    assert_eq!(points[0]["avg"], json!(1.5), "{series}");
    let latest = read(&gateway, "/api/devices/sensor-1/latest", &token).await;
    let metrics: Vec<&Json> = latest["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["metrics"])
        .collect();
    assert_eq!(
        metrics,
        [&json!({"temp": 2.0}), &json!({"state": "ok", "temp": 1.0})],
        "{latest}"
    );

    // The ready queries run on the view as they are, with the table's name replaced.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/fleet_hourly_by_metric.sql");
    let sql = std::fs::read_to_string(path)
        .unwrap()
        .replace(&format!("FROM {TABLE}"), &format!("FROM {VIEW}"));
    let hourly = gateway.query(&sql).await;
    let temp = hourly
        .iter()
        .find(|row| row[1] == text("temp"))
        .expect("temp's hour");
    assert_eq!(
        temp[3],
        Value::Int(2),
        "two samples of temp, not three: {hourly:?}"
    );
    gateway.stop().await;
}

/// Two gateways starting on one workspace both create the view if missing; neither fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_gateway_starts_on_an_existing_view() {
    let mut first = Harness::start().await;
    let config = lakegate::config::GatewayConfig::from_map(&lakegate_testkit::gateway_env(
        &first.emulator,
        &first.registry_file,
        &[("LAKEGATE_READ_FROM", "dedup")],
    ))
    .unwrap();
    lakegate::table::ensure_tables(&first.reader().statements(), config.tables())
        .await
        .expect("the view exists already, which is no failure");
    let (status, answer) = first
        .post_json(
            &first.keys.sensor,
            &json!({"id": "x", "ts": Utc::now().to_rfc3339(), "metrics": {"t": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let rows = first.query(&format!("SELECT count(*) FROM {VIEW}")).await;
    assert_eq!(rows, [vec![Value::Int(1)]]);
    first.stop().await;
}

/// Runs `lakegate compact` on the harness's workspace and table with `args`.
pub(crate) fn compact_command(gateway: &Harness, args: &[&str]) -> std::process::Command {
    let env = lakegate_testkit::gateway_env(&gateway.emulator, &gateway.registry_file, &[]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lakegate"));
    command
        .arg("compact")
        .args(args)
        .env_remove("DATABRICKS_CONFIG_PROFILE");
    command.envs(env);
    command
}

/// The rows a finished `lakegate compact` removed, from what it printed; panics unless it
/// succeeded.
pub(crate) fn removed(output: &std::process::Output) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let count = stdout
        .trim()
        .strip_prefix("removed ")
        .and_then(|rest| rest.split(' ').next());
    count
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"))
}

/// (device, reading, ts, metric, value, value_str, ingested_at) of every row, in order.
async fn all_rows(gateway: &Harness, from: &str) -> Vec<Vec<Value>> {
    gateway
        .query(&format!(
            "SELECT device_id, reading_id, ts, metric, value, value_str, ingested_at FROM {from} \
             ORDER BY device_id, reading_id, ts, metric"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_removes_duplicates_while_ingest_goes_on_and_a_second_run_removes_none() {
    let mut gateway = Harness::start().await;
    let now = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
    let at = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let body = json!([
        {"id": "r-1", "ts": at(now - TimeDelta::minutes(5)), "metrics": {"temp": 1.0, "state": "ok"}},
        {"id": "r-2", "ts": at(now - TimeDelta::minutes(4)), "metrics": {"temp": 2.0}},
        {"id": "old", "ts": at(now - TimeDelta::days(2)), "metrics": {"temp": 9.0}},
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    let kept = all_rows(&gateway, TABLE).await;
    // r-1's rows again, ingested later with other values; r-2's and old's exactly again.
    gateway
        .query(&format!(
            "INSERT INTO {TABLE} SELECT device_id, reading_id, ts, metric, \
             CASE WHEN value IS NULL THEN NULL ELSE value + 100 END, value_str, \
             ingested_at + INTERVAL 1 SECOND FROM {TABLE} WHERE reading_id = 'r-1'"
        ))
        .await;
    for id in ["r-2", "old"] {
        let copy = format!("INSERT INTO {TABLE} SELECT * FROM {TABLE} WHERE reading_id = '{id}'");
        gateway.query(&copy).await;
    }
    assert_eq!(gateway.row_count().await, 8);

    // Bounded by --since, the old reading's copy stays.
    let since = at(now - TimeDelta::days(1));
    let output = compact_command(&gateway, &["--since", &since])
        .output()
        .unwrap();
    assert_eq!(removed(&output), 3);
    assert_eq!(gateway.row_count().await, 5);

    // Two compacts at once while the gateway writes new readings: the new readings all
    // stay, once each, and the two remove the old copy once between them.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut command = compact_command(&gateway, &[]);
            command
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    for n in 0..20 {
        let reading = json!({"id": format!("new-{n}"), "ts": at(now), "metrics": {"temp": n}});
        let (status, answer) = gateway.post_json(&gateway.keys.other, &reading).await;
        assert_eq!(status, 200, "{answer}");
    }
    let outputs: Vec<_> = runs
        .into_iter()
        .map(|run| run.wait_with_output().unwrap())
        .collect();
    assert_eq!(outputs.iter().map(removed).sum::<u64>(), 1);
    assert_eq!(gateway.row_count().await, 4 + 20);

    // The table now holds exactly what the view shows, and the first rows as written.
    let table = all_rows(&gateway, TABLE).await;
    assert_eq!(table, all_rows(&gateway, VIEW).await);
    let first: Vec<_> = (table.iter())
        .filter(|row| row[0] == text("sensor-1"))
        .cloned()
        .collect();
    assert_eq!(first, kept);
    let output = compact_command(&gateway, &[]).output().unwrap();
    assert_eq!(removed(&output), 0);
    assert_eq!(all_rows(&gateway, TABLE).await, table);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_exits_2_on_bad_options_and_1_when_the_workspace_fails() {
    let mut gateway = Harness::start().await;
    let output = compact_command(&gateway, &["--since", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--since"));
    let output = compact_command(&gateway, &["--table", "main.lakegate.no-such"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = compact_command(&gateway, &["--table", "main.lakegate.missing"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("compacting main.lakegate.missing"),
        "{stderr}"
    );
    gateway.stop().await;
}

/// A Delta write conflict is retried (five attempts in all), any other failure is not; a
/// run that gives up has removed nothing, and the next one does the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_retries_write_conflicts_only() {
    use lakegate_emulator::{FailingWrites, Faults};
    use std::time::Duration;

    let mut gateway = Harness::start().await;
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let reading = json!({"id": "r-1", "ts": now, "metrics": {"temp": 1.0}});
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &reading).await;
    assert_eq!(status, 200, "{answer}");
    gateway
        .query(&format!(
            "INSERT INTO {TABLE} SELECT * FROM {TABLE} WHERE reading_id = 'r-1'"
        ))
        .await;

    let failing = |failing_writes| Faults {
        failing_writes: Some(failing_writes),
        ..Faults::default()
    };
    let conflict = FailingWrites {
        class: "DELTA_CONCURRENT_DELETE_DELETE",
        sql_state: "2D521",
        detail: "A concurrent MERGE deleted the same rows (injected).",
        window: Duration::from_secs(60),
    };
    for (fault, attempts) in [
        (conflict, 5),
        (FailingWrites::internal_error(Duration::from_secs(60)), 1),
    ] {
        gateway.emulator.set_faults(failing(fault));
        let before = gateway.emulator.stats().failed_writes;
        let output = compact_command(&gateway, &[]).output().unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(gateway.emulator.stats().failed_writes - before, attempts);
    }
    gateway.emulator.set_faults(Faults::default());
    assert_eq!(gateway.row_count().await, 2);
    assert_eq!(
        removed(&compact_command(&gateway, &[]).output().unwrap()),
        1
    );
    gateway.stop().await;
}
