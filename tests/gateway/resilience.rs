//! Back-pressure, workspace faults and shutdown: every acknowledged reading
//! ends up in the table exactly once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lakegate::databricks::Value;
use lakegate_emulator::{Emulator, Faults};
use lakegate_testkit::{
    LakegateProcess, TABLE, emulator_config, eventually_async, gateway_env, poll, start_emulator,
    workspace,
};
use serde_json::json;

use lakegate_testkit::gateway::{Harness, Keys, reading, respond};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_and_loses_nothing_accepted() {
    let mut config = emulator_config();
    config.faults.statement_latency = Duration::from_millis(1500);
    // Room for one request of up to 4 rows.
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_QUEUE_MAX_ROWS", "4")
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "1")
        .env("LAKEGATE_MAX_METRICS_PER_READING", "4")
        .start()
        .await;
    let url = format!("{}/ingest?ack=accept", gateway.url);
    let post = |id: &str| {
        gateway
            .http
            .post(&url)
            .header("X-API-Key", &gateway.keys.sensor)
            .json(&json!({"id": id, "ts": "2026-11-29T12:00:00Z", "metrics": {"a": 1, "b": 2, "c": 3}}))
            .send()
    };
    assert_eq!(post("first").await.unwrap().status(), 202);
    let refused = post("second").await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let (status, answer) = respond(refused).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable");

    gateway.wait_for_rows(3, Duration::from_secs(10)).await;
    // Space is back once the batch is committed.
    assert_eq!(post("second").await.unwrap().status(), 202);
    gateway.wait_for_rows(6, Duration::from_secs(10)).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_short_tokens_and_slow_statements_write_each_reading_once() {
    let mut config = emulator_config();
    config.token_lifetime = Duration::from_secs(3);
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_LINGER_MS", "200")
        .start()
        .await;
    // A storm: every workspace call is refused for a while, then a third of them.
    let storm = |share| Faults {
        throttle_share: share,
        throttle_retry_after_secs: 1,
        statement_latency: Duration::from_millis(300),
        ..Faults::default()
    };
    gateway.emulator.set_faults(storm(1.0));

    let started = Instant::now();
    let mut acknowledged = HashSet::new();
    let devices = [gateway.keys.sensor.clone(), gateway.keys.other.clone()];
    let mut tasks = Vec::new();
    for (d, key) in devices.iter().enumerate() {
        for client in 0..4 {
            let http = gateway.http.clone();
            let url = format!("{}/ingest", gateway.url);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for request in 0..5 {
                    let ids: Vec<String> = (0..4)
                        .map(|i| format!("d{d}-c{client}-r{request}-{i}"))
                        .collect();
                    let body = json!(ids.iter().map(|id| reading(id, 1.0)).collect::<Vec<_>>());
                    // A device resends until it gets its 200, as real devices do.
                    loop {
                        let response = http
                            .post(&url)
                            .header("X-API-Key", &key)
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        match response.status().as_u16() {
                            200 => break,
                            429 | 503 => tokio::time::sleep(Duration::from_millis(500)).await,
                            other => {
                                panic!("unexpected {other}: {}", response.text().await.unwrap())
                            }
                        }
                    }
                    done.extend(ids.into_iter().map(|id| (d, id)));
                }
                done
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.emulator.set_faults(storm(0.3));
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 2 * 4 * 5 * 4);
    let stats = gateway.emulator.stats();
    assert!(stats.throttled > 0, "no 429 was injected: {stats:?}");
    assert!(
        stats.tokens_issued >= 2 || started.elapsed() < Duration::from_secs(3),
        "tokens were not refreshed: {stats:?}"
    );

    let rows = gateway
        .query(&format!(
            "SELECT count(*), count(DISTINCT reading_id) FROM {TABLE}"
        ))
        .await;
    let expected = lakegate::databricks::Value::Int(acknowledged.len() as i64);
    assert_eq!(
        rows[0],
        [expected.clone(), expected],
        "each reading exactly once"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_whose_answer_was_lost_are_not_written_twice() {
    let mut gateway = Harness::start().await;
    // The warehouse commits, but the gateway never hears back: it must try again
    // without knowing whether the first attempt went through.
    gateway.emulator.set_faults(Faults {
        lost_statement_responses: 3,
        ..Faults::default()
    });
    for request in 0..4 {
        let body = json!(
            (0..5)
                .map(|i| reading(&format!("l-{request}-{i}"), 1.0))
                .collect::<Vec<_>>()
        );
        let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(gateway.emulator.stats().lost_responses, 3);
    let rows = gateway
        .query(&format!(
            "SELECT count(*), count(DISTINCT reading_id) FROM {TABLE}"
        ))
        .await;
    let twenty = lakegate::databricks::Value::Int(20);
    assert_eq!(rows[0], [twenty.clone(), twenty]);
    gateway.stop().await;
}

/// The `lakegate` binary as its own process in front of `emulator`.
/// Devices of a [`GatewayProcess`]: enough that every writer lane gets some.
pub(crate) const FLEET: usize = 8;

pub(crate) struct GatewayProcess {
    pub(crate) process: LakegateProcess,
    env: std::collections::HashMap<String, String>,
    /// The key of device `sensor-{n + 1}` at `n`.
    pub(crate) keys: Vec<String>,
}

impl GatewayProcess {
    pub(crate) fn start(emulator: &Emulator, extra: &[(&str, &str)]) -> GatewayProcess {
        let keys: Vec<String> = (0..FLEET).map(|_| Keys::new().sensor).collect();
        let devices: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .enumerate()
            .map(|(n, key)| {
                let entry = json!({"keys": [lakegate::devices::hash_key(key)]});
                (format!("sensor-{}", n + 1), entry)
            })
            .collect();
        let registry = json!({ "devices": devices });
        let mut env = gateway_env(emulator, &std::path::PathBuf::new(), extra);
        env.remove("LAKEGATE_DEVICE_KEYS_FILE");
        env.insert("LAKEGATE_DEVICE_KEYS".into(), registry.to_string());
        let process = LakegateProcess::spawn(env!("CARGO_BIN_EXE_lakegate"), &env, |_| {}).unwrap();
        GatewayProcess { process, env, keys }
    }

    /// A request of device `sensor-1`.
    fn post(
        &self,
        http: &reqwest::Client,
        query: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.post_as(0, http, query, body)
    }

    /// A request of device `sensor-{device + 1}`.
    pub(crate) fn post_as(
        &self,
        device: usize,
        http: &reqwest::Client,
        query: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        http.post(format!("http://{}/ingest{query}", self.process.address))
            .header("X-API-Key", &self.keys[device])
            .json(body)
    }

    /// SIGKILL, then the same gateway (settings, keys) started again, on a new port.
    pub(crate) fn kill_and_restart(&mut self) {
        self.process.child.kill().unwrap(); // SIGKILL
        self.process.child.wait().unwrap();
        self.process =
            LakegateProcess::spawn(env!("CARGO_BIN_EXE_lakegate"), &self.env, |_| {}).unwrap();
    }

    /// A client of the workspace, for checking what was written.
    pub(crate) fn reader(&self) -> lakegate::databricks::Client {
        workspace::reader(&self.env)
    }

    /// Sends SIGTERM; returns how long the process took to exit (successfully).
    pub(crate) async fn terminate(self) -> Duration {
        let (status, took) = self.process.terminate().await.unwrap();
        assert!(status.success(), "{status:?}");
        took
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_flushes_every_queued_reading() {
    let mut config = emulator_config();
    config.faults.statement_latency = Duration::from_millis(300);
    let emulator = start_emulator(config).await;
    sigterm_flushes_queued_readings(&emulator, &[], TABLE).await;
}

/// Readings of every device queued (202) in a gateway (with `extra` settings), then
/// SIGTERM: it exits 0 within 15 s and `from` (the table, or its `_dedup` view) holds
/// every one of them.
pub(crate) async fn sigterm_flushes_queued_readings(
    emulator: &Emulator,
    extra: &[(&str, &str)],
    from: &str,
) {
    // Long flush interval: the readings are surely still queued at SIGTERM, in every
    // writer's lane (the fleet's devices spread over the 4 default writers).
    let settings: Vec<_> = [("LAKEGATE_LINGER_MS", "20000")]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let gateway = GatewayProcess::start(emulator, &settings);

    let http = lakegate::databricks::http_client().unwrap();
    for request in 0..10 {
        for device in 0..FLEET {
            let body = json!(
                (0..3)
                    .map(|i| reading(&format!("t-{request}-{i}"), 1.0))
                    .collect::<Vec<_>>()
            );
            let response = gateway
                .post_as(device, &http, "?ack=accept", &body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    }
    let reader = gateway.reader();
    let took = gateway.terminate().await;
    assert!(took < Duration::from_secs(15), "{took:?}");
    let expected = (10 * FLEET * 3) as i64;
    assert_eq!(workspace::row_count(&reader, from).await.unwrap(), expected);
    let sql = format!("SELECT count(DISTINCT device_id) FROM {from}");
    let devices = reader
        .statements()
        .execute(lakegate::databricks::StatementRequest::new(sql))
        .await
        .unwrap()
        .collect_rows()
        .await
        .unwrap();
    assert_eq!(
        devices[0][0],
        Value::Int(FLEET as i64),
        "every writer's lane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_is_bounded_when_the_warehouse_hangs() {
    let emulator = start_emulator(emulator_config()).await;
    let gateway = GatewayProcess::start(&emulator, &[("LAKEGATE_LINGER_MS", "50")]);
    // Statements now take longer than Databricks Apps waits after SIGTERM (15 s).
    emulator.set_faults(Faults {
        statement_latency: Duration::from_secs(60),
        ..Faults::default()
    });
    let http = lakegate::databricks::http_client().unwrap();
    let waiting = gateway.post(&http, "", &reading("hung-1", 1.0)).send();
    let waiting = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let took = gateway.terminate().await;
    assert!(took < Duration::from_secs(14), "{took:?}");
    // The waiting device heard that its reading is not committed yet, not a hang-up.
    let (status, answer) = respond(waiting.await.unwrap().unwrap()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("not_yet_committed")),
        "{answer}"
    );
}

/// `(reading_id, ts)` of a device's rows, in time order.
async fn identities(gateway: &Harness, device: &str) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT DISTINCT reading_id, ts FROM {TABLE} WHERE device_id = '{device}' ORDER BY ts, reading_id"
    );
    gateway
        .query(&sql)
        .await
        .into_iter()
        .map(|row| match (&row[0], &row[1]) {
            (Value::String(id), Value::Timestamp(ts)) => (id.clone(), ts.to_rfc3339()),
            other => panic!("unexpected row {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_id_with_a_new_ts_is_a_new_reading_even_in_a_wide_batch() {
    // A long flush interval, so both devices' requests below share one batch.
    let mut gateway = Harness::builder()
        .env("LAKEGATE_LINGER_MS", "1000")
        .start()
        .await;
    let at = |id: &str, ts: &str| json!({"id": id, "ts": ts, "metrics": {"count": 1}});
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &at("c-1", "2026-11-29T12:00:00Z"))
        .await;
    assert_eq!(status, 200, "{answer}");

    // The sensor's counter restarted: `c-1` again, an hour later, while another device's
    // backfill makes the batch's time range cover the first `c-1`.
    let backfill = gateway
        .accept(
            &gateway.keys.other,
            &json!([
                at("b-0", "2026-11-29T11:00:00Z"),
                at("b-1", "2026-11-29T14:00:00Z")
            ]),
        )
        .await;
    assert_eq!(backfill.status(), 202);
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &at("c-1", "2026-11-29T13:00:00Z"))
        .await;
    assert_eq!(
        (status, &answer["committed"]),
        (200, &json!(true)),
        "{answer}"
    );
    let expected = [
        ("c-1".to_owned(), "2026-11-29T12:00:00+00:00".to_owned()),
        ("c-1".to_owned(), "2026-11-29T13:00:00+00:00".to_owned()),
    ];
    assert_eq!(identities(&gateway, "sensor-1").await, expected);

    // One request may carry the same id at two times; an identical repeat is refused, and
    // identical resends stay written once.
    let body = json!([
        at("c-1", "2026-11-29T13:00:00Z"),
        at("c-2", "2026-11-29T13:30:00Z"),
        at("c-2", "2026-11-29T13:45:00Z"),
        at("c-2", "2026-11-29T13:45:00.000Z"),
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 3, "{answer}");
    assert_eq!(answer["rejected"][0]["reason"], "duplicate_id", "{answer}");
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(identities(&gateway, "sensor-1").await.len(), 4);
    let sensor_rows = gateway
        .query(&format!(
            "SELECT count(*) FROM {TABLE} WHERE device_id = 'sensor-1'"
        ))
        .await;
    assert_eq!(sensor_rows[0][0], Value::Int(4), "one row per reading");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_retry_after_does_not_park_the_writer() {
    let mut gateway = Harness::start().await;
    // A warehouse briefly unavailable, asking to come back in 2^64 - 1 seconds.
    gateway.emulator.set_faults(Faults {
        unavailable_for: Some(Duration::from_secs(2)),
        unavailable_retry_after_secs: u64::MAX,
        ..Faults::default()
    });
    let response = gateway
        .accept(&gateway.keys.sensor, &reading("patient-1", 1.0))
        .await;
    assert_eq!(response.status(), 202);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Written once the capped wait (60 s) is over, not in 584 billion years.
    gateway.wait_for_rows(1, Duration::from_secs(120)).await;
    gateway.stop().await;
}

const REJECTED: &str = "main.lakegate.readings_rejected";

async fn count(gateway: &Harness, sql: &str) -> i64 {
    match gateway.query(sql).await[0][0] {
        Value::Int(n) => n,
        ref other => panic!("count is {other:?}"),
    }
}

/// The gateway's `/readyz` answer, polled until `until` holds (or `within` passes).
async fn readiness_until(
    gateway: &Harness,
    within: Duration,
    until: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let every = Duration::from_millis(250);
    let readiness = async || respond(gateway.get("/readyz").await).await;
    poll(within, every, readiness, |(status, body)| {
        until(*status, body)
    })
    .await
    .unwrap_or_else(|(status, body)| panic!("readiness stayed {status} {body}"))
}

fn refusing(marker: &str) -> lakegate_emulator::EmulatorConfig {
    let mut config = emulator_config();
    config.faults.reject_rows = Some(lakegate_emulator::RejectRows {
        table: TABLE.into(),
        marker: marker.into(),
    });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_the_table_refuses_is_dead_lettered_and_the_rest_is_written() {
    let reader_token = lakegate::devices::generate_key().key;
    let reader_hash =
        lakegate::devices::hash_key(secrecy::ExposeSecret::expose_secret(&reader_token));
    let mut gateway = Harness::builder()
        .emulator(refusing("poison"))
        .env("LAKEGATE_LINGER_MS", "300")
        .env("LAKEGATE_ACK_TIMEOUT_SECS", "20")
        .env("LAKEGATE_READER_TOKENS", reader_hash.as_str())
        .start()
        .await;
    let mut body: Vec<_> = (0..6).map(|i| reading(&format!("ok-{i}"), 1.0)).collect();
    body.insert(
        3,
        json!({"id": "bad-1", "ts": "2026-11-29T12:00:00Z", "metrics": {"state": "poison pill", "t": 1}}),
    );
    let body = json!(body);
    // Another device's reading in the same batch.
    let other = gateway
        .accept(&gateway.keys.other, &json!([reading("other-1", 2.0)]))
        .await;
    assert_eq!(other.status(), 202);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(
        (status, &answer["committed"]),
        (200, &json!(true)),
        "{answer}"
    );

    // The refused row (a batch is halved down to single rows) is in the dead-letter table
    // with the error; everything else, the same reading's other metric too, is in the table.
    gateway.wait_for_rows(8, Duration::from_secs(10)).await;
    let written: HashSet<(String, String)> = gateway
        .rows()
        .await
        .into_iter()
        .map(|r| (r.1, r.2))
        .collect();
    assert!(
        written.contains(&("bad-1".into(), "t".into())),
        "{written:?}"
    );
    assert!(
        !written.contains(&("bad-1".into(), "state".into())),
        "{written:?}"
    );
    assert!(
        written.contains(&("other-1".into(), "temperature".into())),
        "{written:?}"
    );
    let rejected = gateway
        .query(&format!(
            "SELECT reading_id, metric, value_str, error_code, error_message FROM {REJECTED} ORDER BY metric"
        ))
        .await;
    assert_eq!(
        rejected.len(),
        1,
        "only the row holding the marker: {rejected:?}"
    );
    let row = &rejected[0];
    assert_eq!(row[0], Value::String("bad-1".into()));
    assert_eq!(row[1], Value::String("state".into()));
    assert_eq!(row[2], Value::String("poison pill".into()));
    assert_eq!(
        row[3],
        Value::String("DELTA_VIOLATE_CONSTRAINT_WITH_VALUES".into())
    );
    assert!(
        matches!(&row[4], Value::String(m) if m.contains("CHECK constraint")),
        "{row:?}"
    );
    assert_eq!(
        gateway.metric("lakegate_rows_dead_lettered_total").await,
        1.0
    );
    let stats = gateway
        .http
        .get(format!("{}/api/stats", gateway.url))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&reader_token))
        .send()
        .await
        .unwrap();
    let (status, stats) = respond(stats).await;
    assert_eq!(
        (status, &stats["rows_dead_lettered"]),
        (200, &json!(1)),
        "{stats}"
    );
    let (status, ready) = respond(gateway.get("/readyz").await).await;
    assert_eq!((status, &ready["writes"]), (200, &json!("ok")), "{ready}");

    // A resend writes nothing twice, in either table.
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(gateway.row_count().await, 8);
    assert_eq!(
        count(&gateway, &format!("SELECT count(*) FROM {REJECTED}")).await,
        1
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_table_keeps_the_rows_turns_unready_and_recovers() {
    let mut gateway = Harness::start().await;
    let (status, _) = gateway
        .post_json(&gateway.keys.sensor, &reading("before", 1.0))
        .await;
    assert_eq!(status, 200);
    gateway.query(&format!("DROP TABLE {TABLE}")).await;

    let kept = gateway
        .accept(&gateway.keys.sensor, &reading("kept-1", 1.0))
        .await;
    assert_eq!(kept.status(), 202);
    let (_, ready) =
        readiness_until(&gateway, Duration::from_secs(30), |status, _| status == 503).await;
    assert_eq!(ready["writes"], "failing", "{ready}");
    assert_eq!(ready["reason"], "table_unwritable", "{ready}");
    assert_eq!(gateway.metric("lakegate_writes_unwritable").await, 1.0);

    // New readings are refused with a stable code while nothing can be written.
    let refused = gateway
        .send_json("/ingest", &gateway.keys.sensor, &reading("new-1", 1.0))
        .await;
    assert!(refused.headers().contains_key("retry-after"));
    let (status, answer) = respond(refused).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("writes_failing")),
        "{answer}"
    );

    // The table is back: the kept reading is written and the gateway is ready again.
    let config = lakegate::config::GatewayConfig::from_map(&gateway_env(
        &gateway.emulator,
        &gateway.registry_file,
        &[],
    ))
    .unwrap();
    lakegate::table::ensure_tables(&gateway.reader().statements(), config.tables())
        .await
        .unwrap();
    gateway.wait_for_rows(1, Duration::from_secs(60)).await;
    let ids: Vec<String> = gateway.rows().await.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, ["kept-1"]);
    readiness_until(&gateway, Duration::from_secs(30), |status, _| status == 200).await;
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &reading("after", 1.0))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        count(&gateway, &format!("SELECT count(*) FROM {REJECTED}")).await,
        0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_row_without_a_dead_letter_table_is_kept_until_there_is_one() {
    let mut gateway = Harness::builder()
        .emulator(refusing("poison"))
        .start()
        .await;
    gateway.query(&format!("DROP TABLE {REJECTED}")).await;
    let body = json!([
        reading("fine-1", 1.0),
        {"id": "bad-1", "ts": "2026-11-29T12:00:00Z", "metrics": {"state": "poison"}},
    ]);
    let response = gateway.accept(&gateway.keys.sensor, &body).await;
    assert_eq!(response.status(), 202);
    // The good row is written; the refused one cannot be put anywhere: kept, unready.
    gateway.wait_for_rows(1, Duration::from_secs(10)).await;
    let (_, ready) =
        readiness_until(&gateway, Duration::from_secs(30), |status, _| status == 503).await;
    assert_eq!(ready["reason"], "table_unwritable", "{ready}");

    let config = lakegate::config::GatewayConfig::from_map(&gateway_env(
        &gateway.emulator,
        &gateway.registry_file,
        &[],
    ))
    .unwrap();
    lakegate::table::ensure_tables(&gateway.reader().statements(), config.tables())
        .await
        .unwrap();
    let dead_lettered =
        async || count(&gateway, &format!("SELECT count(*) FROM {REJECTED}")).await >= 1;
    eventually_async(
        Duration::from_secs(60),
        "the refused row's dead-lettering",
        dead_lettered,
    )
    .await;
    readiness_until(&gateway, Duration::from_secs(30), |status, _| status == 200).await;
    assert_eq!(gateway.row_count().await, 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_while_handling_a_request_fails_that_request_only() {
    let emulator = start_emulator(emulator_config()).await;
    // A long linger: the accepted readings are surely still queued when the panic comes.
    let gateway = GatewayProcess::start(
        &emulator,
        &[
            ("LAKEGATE_LINGER_MS", "3000"),
            ("LAKEGATE_TEST_PANIC_ROUTE", "1"),
        ],
    );
    let http = lakegate::databricks::http_client().unwrap();
    for device in 0..FLEET {
        let body = json!([reading("before", 1.0)]);
        let response = gateway
            .post_as(device, &http, "?ack=accept", &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }

    let panicked = http
        .post(format!("http://{}/__test/panic", gateway.process.address))
        .header("X-Request-Id", "panic-1")
        .send()
        .await
        .unwrap();
    assert_eq!(panicked.headers()["x-request-id"], "panic-1");
    let (status, answer) = respond(panicked).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"], "internal_error", "{answer}");

    // The process serves on, and takes more readings.
    let health = http
        .get(format!("http://{}/healthz", gateway.process.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let after = gateway
        .post(&http, "", &json!([reading("after", 2.0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "committed after the panic");

    // Everything accepted before the panic is written, once.
    let reader = workspace::reader(&gateway.env);
    let expected = (FLEET + 1) as i64;
    eventually_async(
        Duration::from_secs(30),
        "every accepted reading in the table",
        async || workspace::row_count(&reader, TABLE).await.unwrap() == expected,
    )
    .await;
    gateway.terminate().await;
    assert_eq!(
        workspace::row_count(&reader, TABLE).await.unwrap(),
        expected
    );
}
