//! Parallel batch writers against a warehouse whose concurrent MERGEs conflict
//! (`DELTA_CONCURRENT_APPEND`), with lost answers, an outage and throttling on top: every reading the
//! gateway acknowledged lands exactly once.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use lakegate::databricks::Value;
use lakegate::devices::{generate_key, hash_key};
use lakegate_emulator::{Faults, StatementCost, WriteConflicts};
use lakegate_testkit::TABLE;
use secrecy::ExposeSecret;
use serde_json::json;

use lakegate_testkit::gateway::Harness;

const DEVICES: usize = 16;
const REQUESTS_PER_DEVICE: usize = 6;
const READINGS_PER_REQUEST: usize = 5;
/// Each reading has two metrics, so two rows.
const ROWS_PER_READING: usize = 2;

/// `DEVICES` devices with a key each, written over the harness's registry.
async fn register_devices(gateway: &Harness) -> Vec<(String, String)> {
    let devices: Vec<(String, String)> = (0..DEVICES)
        .map(|d| {
            let key = generate_key().key.expose_secret().to_owned();
            (format!("dev-{d:02}"), key)
        })
        .collect();
    let registry: serde_json::Map<String, serde_json::Value> = devices
        .iter()
        .map(|(id, key)| (id.clone(), json!({"keys": [hash_key(key)]})))
        .collect();
    let mut file = std::fs::File::create(&gateway.registry_file).unwrap();
    file.write_all(json!({ "devices": registry }).to_string().as_bytes())
        .unwrap();
    drop(file);
    // Wait for the reload to serve the new devices.
    let (_, last_key) = devices.last().unwrap();
    let probe = json!([{"id": "probe", "ts": "2026-11-29T11:00:00Z", "metrics": {"t": 0.0}}]);
    for _ in 0..100 {
        let (status, _) = gateway.post_json(last_key, &probe).await;
        if status == 200 {
            return devices;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the registry with the new devices was not loaded");
}

/// Sends every device's requests, devices in parallel; returns the readings acknowledged.
async fn send_all(gateway: &Arc<Harness>, devices: &[(String, String)]) -> usize {
    let tasks: Vec<_> = devices
        .iter()
        .map(|(device, key)| {
            let (gateway, device, key) = (Arc::clone(gateway), device.clone(), key.clone());
            tokio::spawn(async move {
                let mut acknowledged = 0;
                for request in 0..REQUESTS_PER_DEVICE {
                    let readings: Vec<_> = (0..READINGS_PER_REQUEST)
                        .map(|i| {
                            // Every device's readings span the same minutes, so the
                            // writers' time ranges overlap.
                            let second = request * READINGS_PER_REQUEST + i;
                            json!({
                                "id": format!("{device}-{request}-{i}"),
                                "ts": format!("2026-11-29T12:{:02}:{:02}Z", second / 60, second % 60),
                                "metrics": {"temperature": 20.5, "humidity": second as f64},
                            })
                        })
                        .collect();
                    let (status, body) = gateway.post_json(&key, &readings).await;
                    assert_eq!(status, 200, "{device}: {body}");
                    acknowledged += readings.len();
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = 0;
    for task in tasks {
        acknowledged += task.await.unwrap();
    }
    acknowledged
}

/// Rows of the sent readings (not the probes) and their distinct keys.
async fn landed(gateway: &Harness) -> (i64, i64) {
    let rows = gateway
        .query(&format!(
            "SELECT count(*), count(DISTINCT concat(device_id, '/', reading_id, '/', \
             CAST(unix_micros(ts) AS STRING), '/', metric)) FROM {TABLE} \
             WHERE reading_id <> 'probe'"
        ))
        .await;
    let number = |v: &Value| match v {
        Value::Int(n) => *n,
        other => panic!("expected a count, got {other:?}"),
    };
    (number(&rows[0][0]), number(&rows[0][1]))
}

/// Sends every device's readings through 4 writers into a warehouse that conflicts as `mode`
/// says, loses `lost_answers` statement answers and pushes back; checks each acknowledged
/// reading landed once and returns the number of conflicts the warehouse raised.
async fn parallel_writers_land_every_reading_once(
    mode: WriteConflicts,
    lost_answers: u32,
) -> (Arc<Harness>, u64) {
    let gateway = Harness::builder()
        .env("LAKEGATE_WRITERS", "4")
        .env("LAKEGATE_LINGER_MS", "20")
        .start()
        .await;
    let devices = register_devices(&gateway).await;
    gateway.emulator.set_faults(Faults {
        write_conflicts: mode,
        statement_latency: Duration::from_millis(150),
        // Time between each write's read and its commit, so that writers' MERGEs overlap
        // there whatever the machine's load (else a busy machine may run them apart).
        statement_cost: Some(StatementCost {
            fixed: Duration::from_millis(100),
            per_row: Duration::ZERO,
        }),
        lost_statement_responses: lost_answers,
        throttle_share: 0.05,
        // Group commit makes few statements, so some 5 % may never hit: the first half
        // second of calls is refused for sure.
        unavailable_for: Some(Duration::from_millis(500)),
        throttle_retry_after_secs: 0,
        ..Faults::default()
    });
    let gateway = Arc::new(gateway);
    let acknowledged = send_all(&gateway, &devices).await;
    assert_eq!(
        acknowledged,
        DEVICES * REQUESTS_PER_DEVICE * READINGS_PER_REQUEST
    );

    let stats = gateway.emulator.stats();
    assert_eq!(
        stats.lost_responses,
        u64::from(lost_answers),
        "answers were lost"
    );
    assert!(
        stats.throttled + stats.unavailable > 0,
        "requests were pushed back"
    );
    let rows = (acknowledged * ROWS_PER_READING) as i64;
    assert_eq!(
        landed(&gateway).await,
        (rows, rows),
        "each reading exactly once"
    );
    (gateway, stats.write_conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_writers_retry_file_level_conflicts_and_write_each_reading_once() {
    // No lost answers here: a conflict whose answer is lost looks like a lost answer to the
    // gateway, and the first statements after the outage (the likeliest to conflict, all
    // four writers starting at once) would be the ones lost.
    let (gateway, conflicts) =
        parallel_writers_land_every_reading_once(WriteConflicts::FileLevel, 0).await;
    // The writers' MERGEs overlapped and read each other's time ranges.
    assert!(conflicts > 0, "no write conflicts happened");
    let counted = gateway.metric("lakegate_batch_conflicts_total").await;
    assert!(
        (1.0..=conflicts as f64).contains(&counted),
        "the gateway counted {counted} of {conflicts} conflicts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_row_level_concurrency_writers_of_different_devices_never_conflict() {
    // A device's rows always go through the same writer, so two writers never MERGE
    // the same rows: with row-level concurrency their statements never conflict.
    let (gateway, conflicts) =
        parallel_writers_land_every_reading_once(WriteConflicts::RowLevel, 4).await;
    assert_eq!(conflicts, 0);
    assert_eq!(gateway.metric("lakegate_batch_conflicts_total").await, 0.0);
}
