//! The Zerobus sink (`LAKEGATE_SINK=zerobus`) against the emulator's Zerobus service: the
//! same rows as the SQL sink, acknowledged once durable; re-sends after a broken stream
//! counted and seen once through the `_dedup` view; `lakegate compact` cleans the table.

use std::time::Duration;

use lakegate::databricks::Value;
use lakegate::devices::hash_key;
use lakegate_emulator::{Faults, RejectRows, ZerobusFaults};
use lakegate_testkit::gateway::{Harness, Keys};
use lakegate_testkit::{TABLE, emulator_config, eventually_async};
use serde_json::json;

use super::dedup::{compact_command, removed};
use super::zerobus_processes::{Fleet, VIEW, assert_each_once_in_the_view};

async fn count(gateway: &Harness, from: &str) -> i64 {
    let rows = gateway.query(&format!("SELECT count(*) FROM {from}")).await;
    match rows[0][0] {
        Value::Int(n) => n,
        ref other => panic!("not a count: {other:?}"),
    }
}

fn readings(prefix: &str, n: usize) -> serde_json::Value {
    let readings: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "id": format!("{prefix}-{i}"),
                "ts": chrono::Utc::now().to_rfc3339(),
                "metrics": {"temp": i as f64, "state": "ok"},
            })
        })
        .collect();
    json!(readings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_acks_come_once_the_rows_are_durable_and_the_table_holds_them() {
    let mut gateway = Harness::builder().zerobus().start().await;
    let statements = gateway.emulator.stats().statements;
    let (status, body) = gateway
        .post_json(&gateway.keys.sensor, &readings("a", 3))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["committed"], true, "{body}");
    // Neither the writes nor readiness probes need the warehouse, which may stop.
    let ready = gateway.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["warehouse"], "not_probed", "{ready}");
    let stats = gateway.emulator.stats();
    assert_eq!(stats.statements, statements, "no statement wrote the rows");
    assert_eq!(stats.zerobus_records, 6);
    // Acknowledged means durable: the rows are there now, with no wait.
    assert_eq!(count(&gateway, TABLE).await, 6);
    let rows = gateway
        .query(&format!(
            "SELECT device_id, reading_id, metric, value, value_str, ingested_at IS NOT NULL \
             FROM {TABLE} WHERE reading_id = 'a-1' ORDER BY metric"
        ))
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let text = |s: &str| Value::String(s.to_owned());
    assert_eq!(rows[0][..3], [text("sensor-1"), text("a-1"), text("state")]);
    assert_eq!(rows[0][3..], [Value::Null, text("ok"), Value::Bool(true)]);
    assert_eq!(
        rows[1][3..],
        [Value::Float(1.0), Value::Null, Value::Bool(true)]
    );
    assert!(
        gateway
            .metric("lakegate_zerobus_streams_opened_total")
            .await
            >= 1.0
    );
    assert_eq!(
        gateway
            .metric("lakegate_zerobus_resent_records_total")
            .await,
        0.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_acknowledgement_is_resent_counted_seen_once_in_the_view_and_compacted_away() {
    let mut gateway = Harness::builder()
        .zerobus()
        .emulator(zerobus_faults(ZerobusFaults {
            lost_acks: 1,
            ..ZerobusFaults::default()
        }))
        .start()
        .await;
    let (status, body) = gateway
        .post_json(&gateway.keys.sensor, &readings("b", 2))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.emulator.stats().zerobus_lost_acks, 1);
    // The batch was written, its acknowledgement lost, and written again on a new stream.
    assert_eq!(count(&gateway, TABLE).await, 8);
    assert_eq!(count(&gateway, VIEW).await, 4);
    assert_eq!(
        gateway
            .metric("lakegate_zerobus_resent_records_total")
            .await,
        4.0
    );
    assert!(
        gateway
            .metric("lakegate_zerobus_streams_opened_total")
            .await
            >= 2.0
    );

    let output = compact_command(&gateway, &[]).output().unwrap();
    assert_eq!(removed(&output), 4);
    assert_eq!(count(&gateway, TABLE).await, 4);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_the_table_refuses_goes_to_the_dead_letter_table_and_the_rest_land() {
    let mut config = emulator_config();
    config.faults.reject_rows = Some(RejectRows {
        table: TABLE.to_owned(),
        marker: "refuse-me".to_owned(),
    });
    let mut gateway = Harness::builder().zerobus().emulator(config).start().await;
    let now = chrono::Utc::now().to_rfc3339();
    let body = json!([
        {"id": "c-1", "ts": now, "metrics": {"temp": 1.0}},
        {"id": "c-2", "ts": now, "metrics": {"note": "refuse-me"}},
        {"id": "c-3", "ts": now, "metrics": {"temp": 3.0}},
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(count(&gateway, TABLE).await, 2);
    let rejected = gateway
        .query(&format!(
            "SELECT reading_id, value_str, error_code FROM {TABLE}_rejected"
        ))
        .await;
    let text = |s: &str| Value::String(s.to_owned());
    assert_eq!(
        rejected,
        [vec![
            text("c-2"),
            text("refuse-me"),
            text("INVALID_ARGUMENT")
        ]]
    );
    assert_eq!(
        gateway.metric("lakegate_rows_dead_lettered_total").await,
        1.0
    );
    // Refused records were not written: nothing was re-sent.
    assert_eq!(
        gateway
            .metric("lakegate_zerobus_resent_records_total")
            .await,
        0.0
    );
    gateway.stop().await;
}

/// `n` devices (`zb-1` ...) with fresh keys, and the registry entries that admit them.
fn devices(n: usize) -> (Vec<(String, String)>, serde_json::Value) {
    let devices: Vec<(String, String)> = (1..=n)
        .map(|d| (format!("zb-{d}"), Keys::new().sensor))
        .collect();
    let entries: serde_json::Map<String, serde_json::Value> = (devices.iter())
        .map(|(device, key)| (device.clone(), json!({"keys": [hash_key(key)]})))
        .collect();
    (devices, json!({ "devices": entries }))
}

fn zerobus_faults(faults: ZerobusFaults) -> lakegate_emulator::EmulatorConfig {
    let mut config = emulator_config();
    config.faults.zerobus = faults;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_the_server_closes_under_load_lose_nothing_and_duplicate_only_in_the_table() {
    let (devices, registry) = devices(6);
    let mut gateway = Harness::builder()
        .zerobus()
        .emulator(zerobus_faults(ZerobusFaults {
            stream_lifetime: Some(Duration::from_secs(2)),
            close_grace: Duration::from_millis(300),
            durability_latency: Duration::from_millis(50),
            // Besides: three batches written whose acknowledgement never comes.
            lost_acks: 3,
            ..ZerobusFaults::default()
        }))
        .registry(registry)
        .start()
        .await;
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let fleet = Fleet::start(&address, &devices, |_| "?ack=commit");
    // Load for as long as the server ends several streams (about 10 s).
    let emulator = &gateway.emulator;
    eventually_async(
        Duration::from_secs(60),
        "5 streams ended by the server",
        async || emulator.stats().zerobus_timeouts >= 5,
    )
    .await;
    let refused = fleet.refused();
    let acks = fleet.stop().await;
    assert_eq!(refused, 0, "a commit request was refused or cut off");
    assert!(acks.len() >= 50, "only {} readings", acks.len());

    assert_each_once_in_the_view(gateway.reader(), &acks).await;
    let (table, view) = (count(&gateway, TABLE).await, count(&gateway, VIEW).await);
    let resent = gateway
        .metric("lakegate_zerobus_resent_records_total")
        .await;
    assert!(table > view, "no duplicate in the table");
    assert!(
        (table - view) as f64 <= resent,
        "{table} rows, {view} in the view, {resent} resent"
    );
    let opened = gateway
        .metric("lakegate_zerobus_streams_opened_total")
        .await;
    eprintln!("{table} rows, {view} in the view, {resent} resent, {opened} streams opened");
    assert!(opened >= 5.0, "streams were not replaced: {opened} opened");

    let output = compact_command(&gateway, &[]).output().unwrap();
    assert_eq!(removed(&output) as i64, table - view);
    assert_eq!(count(&gateway, TABLE).await, view);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_is_honoured_with_backoff_and_every_commit_still_gets_its_200() {
    let (devices, registry) = devices(4);
    let mut gateway = Harness::builder()
        .zerobus()
        .registry(registry)
        // A batch refused several times in a row waits seconds between attempts (the
        // backoff under test); on a busy machine that can pass the default 30 s.
        .env("LAKEGATE_ACK_TIMEOUT_SECS", "120")
        .start()
        .await;
    let throttle = |share| Faults {
        zerobus: ZerobusFaults {
            throttle_share: share,
            ..ZerobusFaults::default()
        },
        ..Faults::default()
    };
    // A storm: every stream creation and record refused for 2 s, then a third of them.
    gateway.emulator.set_faults(throttle(1.0));
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let fleet = Fleet::start(&address, &devices, |_| "?ack=commit");
    // The storm's length, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_storm = gateway.emulator.stats().zerobus_throttled;
    gateway.emulator.set_faults(throttle(0.3));
    fleet.wait_for(80).await;
    let refused = fleet.refused();
    let acks = fleet.stop().await;
    eprintln!("{in_storm} refusals in the storm, {} readings", acks.len());

    // The writers' lanes (4) retried with exponential backoff (200 ms, 400 ms, 800 ms ...):
    // a handful of attempts each, not one per round trip.
    assert!(in_storm >= 2, "the storm refused only {in_storm}");
    assert!(in_storm <= 40, "{in_storm} refusals in 2 s: no backoff");
    assert!(gateway.emulator.stats().zerobus_throttled > in_storm);
    // Within the ack timeout, every commit request heard 200.
    assert_eq!(refused, 0, "a commit request was refused or cut off");
    assert_each_once_in_the_view(gateway.reader(), &acks).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_the_server_ended_between_batches_is_replaced_at_once_without_a_resend() {
    let mut gateway = Harness::builder()
        .zerobus()
        .emulator(zerobus_faults(ZerobusFaults {
            // Long enough that a new stream takes its batch before it ends, however busy
            // the machine.
            stream_lifetime: Some(Duration::from_secs(1)),
            close_grace: Duration::from_millis(200),
            ..ZerobusFaults::default()
        }))
        .start()
        .await;
    for round in 0..3 {
        let (status, body) = gateway
            .post_json(&gateway.keys.sensor, &readings(&format!("d{round}"), 1))
            .await;
        assert_eq!(status, 200, "{body}");
        // The stream the batch went on ends meanwhile (error 6002).
        lakegate_testkit::eventually(
            Duration::from_secs(30),
            "the server ended the stream",
            || gateway.emulator.stats().zerobus_timeouts > round,
        )
        .await;
    }
    assert_eq!(count(&gateway, TABLE).await, 6);
    // Each batch found its stream ended and went straight to a new one: no failed attempt
    // (which would wait for the backoff), nothing re-sent.
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("failed_attempt"), "{metrics}");
    assert_eq!(
        gateway
            .metric("lakegate_zerobus_resent_records_total")
            .await,
        0.0
    );
    assert!(
        gateway
            .metric("lakegate_zerobus_streams_opened_total")
            .await
            >= 3.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_whose_columns_changed_keeps_the_rows_instead_of_dead_lettering_them() {
    let mut gateway = Harness::builder().zerobus().start().await;
    // Someone recreates the table without a column lakegate writes: Zerobus now refuses
    // every record that sets it, which says nothing against the rows.
    let columns = "device_id STRING NOT NULL, reading_id STRING NOT NULL, \
                   ts TIMESTAMP NOT NULL, metric STRING NOT NULL, value DOUBLE";
    gateway.query(&format!("DROP TABLE {TABLE}")).await;
    gateway
        .query(&format!(
            "CREATE TABLE {TABLE} ({columns}, ingested_at TIMESTAMP NOT NULL)"
        ))
        .await;
    let response = gateway
        .accept(&gateway.keys.sensor, &readings("e", 2))
        .await;
    assert_eq!(response.status(), 202);
    eventually_async(
        Duration::from_secs(30),
        "the table is reported unwritable",
        async || gateway.metric("lakegate_writes_unwritable").await == 1.0,
    )
    .await;
    let ready: serde_json::Value = gateway.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["reason"], "table_unwritable", "{ready}");
    assert_eq!(
        gateway.metric("lakegate_rows_dead_lettered_total").await,
        0.0
    );
    assert_eq!(count(&gateway, &format!("{TABLE}_rejected")).await, 0);

    // Put back, the table takes the rows that were kept.
    gateway.query(&format!("DROP TABLE {TABLE}")).await;
    gateway
        .query(&format!(
            "CREATE TABLE {TABLE} ({columns}, value_str STRING, ingested_at TIMESTAMP NOT NULL)"
        ))
        .await;
    // (The table itself: the emulator's view still points at the dropped one.)
    eventually_async(Duration::from_secs(60), "the kept rows land", async || {
        count(&gateway, TABLE).await == 4
    })
    .await;
    assert_eq!(gateway.metric("lakegate_writes_unwritable").await, 0.0);
    assert_eq!(
        gateway.metric("lakegate_rows_dead_lettered_total").await,
        0.0
    );
    gateway.stop().await;
}
