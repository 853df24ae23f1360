//! What the warehouse answers, against what the gateway does with acknowledged rows: a
//! failure of the warehouse itself keeps them (retried, never dead-lettered), only a data
//! error sets a row aside; and a throttling answer pauses every writer, not only the one
//! that met it, for at most the configured cap.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lakegate::databricks::Value;
use lakegate_emulator::{FailingWrites, Faults, LoggedRequest, RejectRows};
use lakegate_testkit::{TABLE, emulator_config, eventually_async};
use serde_json::json;

use lakegate_testkit::gateway::{Harness, Keys, reading};

const REJECTED: &str = "main.lakegate.readings_rejected";

async fn count(gateway: &Harness, sql: &str) -> i64 {
    match gateway.query(sql).await[0][0] {
        Value::Int(n) => n,
        ref other => panic!("count is {other:?}"),
    }
}

/// Devices `fleet-0` .. `fleet-{n-1}`, enough to spread over every writer's lane: their
/// keys, and the registry entries to start a harness with.
fn fleet(n: usize) -> (Vec<String>, serde_json::Value) {
    let keys: Vec<String> = (0..n).map(|_| Keys::new().sensor).collect();
    let devices: serde_json::Map<_, _> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let entry = json!({"keys": [lakegate::devices::hash_key(key)]});
            (format!("fleet-{i}"), entry)
        })
        .collect();
    (keys, json!({ "devices": devices }))
}

/// Posts `body` as the device with `key` and checks that it is committed.
async fn post_committed(gateway: &Harness, key: &str, body: &serde_json::Value) {
    let (status, answer) = gateway.post_json_to("/ingest?ack=commit", key, body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_internal_warehouse_error_dead_letters_nothing_and_a_data_error_only_its_row() {
    let (keys, devices) = fleet(4);
    let mut config = emulator_config();
    // Also a real data error, for the row holding the marker.
    config.faults.reject_rows = Some(RejectRows {
        table: TABLE.into(),
        marker: "poison".into(),
    });
    let mut gateway = Harness::builder()
        .emulator(config.clone())
        .env("LAKEGATE_LINGER_MS", "50")
        .env("LAKEGATE_ACK_TIMEOUT_SECS", "30")
        .registry(devices)
        .start()
        .await;
    // For 3 s every write, into the table and into the dead-letter table, ends FAILED
    // with [INTERNAL_ERROR] ... SQLSTATE: XX000.
    gateway.emulator.set_faults(Faults {
        failing_writes: Some(FailingWrites::internal_error(Duration::from_secs(3))),
        ..config.faults.clone()
    });

    let mut sends = Vec::new();
    for (d, key) in keys.iter().enumerate() {
        for request in 0..3 {
            let mut body: Vec<_> = (0..4)
                .map(|i| reading(&format!("f{d}-r{request}-{i}"), 1.0))
                .collect();
            if d == 0 && request == 0 {
                body.push(json!({"id": "bad-1", "ts": "2026-11-29T12:00:00Z",
                                 "metrics": {"state": "poison pill"}}));
            }
            let body = json!(body);
            let gateway = &gateway;
            sends.push(async move { post_committed(gateway, key, &body).await });
        }
    }
    futures::future::join_all(sends).await;
    let stats = gateway.emulator.stats();
    assert!(stats.failed_writes > 0, "no write met the fault: {stats:?}");

    // Every acknowledged reading is in the table once; only the poisoned row is set aside.
    let acknowledged = 4 * 3 * 4;
    let rows = gateway
        .query(&format!(
            "SELECT count(*), count(DISTINCT reading_id) FROM {TABLE}"
        ))
        .await;
    let expected = Value::Int(acknowledged);
    assert_eq!(rows[0], [expected.clone(), expected], "each reading once");
    let rejected = gateway
        .query(&format!(
            "SELECT reading_id, error_code FROM {REJECTED} ORDER BY reading_id"
        ))
        .await;
    assert_eq!(
        rejected,
        [[
            Value::String("bad-1".into()),
            Value::String("DELTA_VIOLATE_CONSTRAINT_WITH_VALUES".into())
        ]],
        "only the row the table refuses for its data"
    );
    assert_eq!(
        count(
            &gateway,
            &format!("SELECT count(*) FROM {TABLE} WHERE reading_id = 'bad-1'")
        )
        .await,
        0
    );
    assert_eq!(
        gateway.metric("lakegate_rows_dead_lettered_total").await,
        1.0
    );
    gateway.stop().await;
}

/// Throttles the workspace until one statement submission meets a 429 with
/// `Retry-After: retry_after_secs`, sent by the writer of device `key`; then lifts the
/// throttling. Returns when that 429's request arrived, and the device's pending request.
async fn throttle_one_writer(
    gateway: &Harness,
    key: &str,
    retry_after_secs: u64,
) -> (Instant, tokio::task::JoinHandle<u16>) {
    gateway.emulator.set_faults(Faults {
        throttle_share: 1.0,
        throttle_retry_after_secs: retry_after_secs,
        ..Faults::default()
    });
    let first = {
        let request = gateway
            .post_to("/ingest?ack=commit", key)
            .json(&json!([reading("first", 1.0)]));
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    let throttled = async || {
        let stats = gateway.emulator.stats();
        stats.requests.iter().any(is_throttled_submission)
    };
    eventually_async(Duration::from_secs(30), "a throttled statement", throttled).await;
    // The workspace takes statements again: only the announced pause holds writers back.
    gateway.emulator.set_faults(Faults::default());
    let throttled_at = gateway
        .emulator
        .stats()
        .requests
        .iter()
        .filter(|r| is_throttled_submission(r))
        .map(|r| r.at)
        .min()
        .unwrap();
    (throttled_at, first)
}

fn is_throttled_submission(request: &LoggedRequest) -> bool {
    request.is_statement_submission() && request.status == 429
}

/// Every device but the first sends a reading and waits for its commit.
async fn every_other_device_sends(gateway: &Harness, keys: &[String]) {
    let sends = keys.iter().enumerate().skip(1).map(|(d, key)| async move {
        post_committed(gateway, key, &json!([reading(&format!("other-{d}"), 2.0)])).await
    });
    futures::future::join_all(sends).await;
}

/// Statements submitted after the throttling answer, and when each arrived.
fn submissions_after(gateway: &Harness, throttled_at: Instant) -> Vec<Instant> {
    let stats = gateway.emulator.stats();
    let mut after: Vec<Instant> = stats
        .requests
        .iter()
        .filter(|r| r.is_statement_submission() && r.status != 429 && r.at > throttled_at)
        .map(|r| r.at)
        .collect();
    after.sort();
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_statement_pauses_every_writer_for_the_retry_after() {
    let (keys, devices) = fleet(8);
    let mut gateway = Harness::builder()
        .env("LAKEGATE_WRITERS", "4")
        .env("LAKEGATE_LINGER_MS", "10")
        .env("LAKEGATE_ACK_TIMEOUT_SECS", "30")
        .registry(devices)
        .start()
        .await;
    let retry_after = Duration::from_secs(3);
    let (throttled_at, first) = throttle_one_writer(&gateway, &keys[0], 3).await;
    // The other devices' writers (other lanes) have rows now and a workspace that would
    // take them, but the workspace asked for 3 s.
    every_other_device_sends(&gateway, &keys).await;
    assert_eq!(first.await.unwrap(), 200);

    let after = submissions_after(&gateway, throttled_at);
    assert!(after.len() >= 2, "{after:?}");
    for at in &after {
        assert!(
            *at >= throttled_at + retry_after,
            "a statement was sent {:?} after the 429 that asked for {retry_after:?}",
            *at - throttled_at
        );
    }
    gateway.wait_for_rows(8, Duration::from_secs(30)).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_retry_after_pauses_the_writers_no_longer_than_the_cap() {
    let (keys, devices) = fleet(8);
    let cap = Duration::from_secs(2);
    let mut gateway = Harness::builder()
        .env("LAKEGATE_WRITERS", "4")
        .env("LAKEGATE_LINGER_MS", "10")
        .env("LAKEGATE_ACK_TIMEOUT_SECS", "30")
        .env("LAKEGATE_MAX_RETRY_AFTER_MS", "2000")
        .registry(devices)
        .start()
        .await;
    // An hour: a broken or hostile answer.
    let (throttled_at, first) = throttle_one_writer(&gateway, &keys[0], 3600).await;
    every_other_device_sends(&gateway, &keys).await;
    // The throttled writer itself waited the cap, not the hour (nor the client's 60 s).
    assert_eq!(first.await.unwrap(), 200);
    let settled = throttled_at.elapsed();
    assert!(settled < Duration::from_secs(30), "{settled:?}");

    let after = submissions_after(&gateway, throttled_at);
    assert!(after.len() >= 2, "{after:?}");
    for at in &after {
        assert!(
            *at >= throttled_at + cap,
            "a statement was sent {:?} after the 429, within the {cap:?} pause",
            *at - throttled_at
        );
    }
    // Every reading is in, once.
    let written: HashSet<String> = gateway.rows().await.into_iter().map(|r| r.1).collect();
    assert_eq!(written.len(), 8, "{written:?}");
    gateway.stop().await;
}
