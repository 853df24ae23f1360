//! Site relays at the gateway: a relay's key ingests readings for the devices its
//! patterns name, each reading refused or taken on its own (device not the relay's,
//! unknown, disabled, over its own rate), rows carrying each reading's device, the
//! same derived id whichever way a reading came, and `lakegate keys ...-relay` run as
//! the real binary against a running gateway.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lakegate::databricks::Value;
use lakegate::devices::{generate_key, hash_key};
use lakegate_testkit::TABLE;
use secrecy::ExposeSecret;
use serde_json::{Value as Json, json};

use lakegate_testkit::gateway::{Harness, respond};

/// Keys of the site's relays and devices.
struct Site {
    /// `site-a`: for `pump-7` and `line-3-*`.
    relay: String,
    /// `site-off`: disabled.
    disabled_relay: String,
    /// `pump-7`'s own key.
    pump: String,
    /// `line-3-slow`'s own key (1 reading a second, burst 2).
    slow: String,
}

fn key() -> String {
    generate_key().key.expose_secret().to_owned()
}

fn site_registry(site: &Site) -> Json {
    json!({
        "devices": {
            "pump-7": {"keys": [hash_key(&site.pump)]},
            "line-3-a": {"keys": []},
            "line-3-off": {"keys": [], "disabled": true},
            "line-3-slow": {"keys": [hash_key(&site.slow)], "rate_per_sec": 1, "burst": 2},
            "other-9": {"keys": []},
        },
        "relays": {
            "site-a": {"keys": [hash_key(&site.relay)], "devices": ["pump-7", "line-3-*"]},
            "site-off": {"keys": [hash_key(&site.disabled_relay)], "devices": ["pump-7"], "disabled": true},
        }
    })
}

async fn start_site(extra: &[(&str, &str)]) -> (Harness, Site) {
    let site = Site {
        relay: key(),
        disabled_relay: key(),
        pump: key(),
        slow: key(),
    };
    let gateway = Harness::builder()
        .envs(extra)
        .registry(site_registry(&site))
        .start()
        .await;
    (gateway, site)
}

/// A reading a relay forwards for `device`.
fn relayed(device: &str, id: &str, temperature: f64) -> Json {
    json!({"device_id": device, "id": id, "ts": "2026-11-29T12:00:00Z", "metrics": {"temperature": temperature}})
}

/// `(index, reason)` of each refused reading in an answer.
fn rejections(answer: &Json) -> Vec<(u64, String)> {
    answer["rejected"]
        .as_array()
        .unwrap_or_else(|| panic!("no rejected list in {answer}"))
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn refused(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|&(i, r)| (i, r.to_owned())).collect()
}

/// (device, reading id, value) of every row, in a stable order.
async fn rows(gateway: &Harness) -> Vec<(String, String, f64)> {
    let sql = format!(
        "SELECT device_id, reading_id, value FROM {TABLE} ORDER BY device_id, reading_id, metric"
    );
    gateway
        .query(&sql)
        .await
        .into_iter()
        .map(|row| match &row[..] {
            [
                Value::String(device),
                Value::String(id),
                Value::Float(value),
            ] => (device.clone(), id.clone(), *value),
            other => panic!("unexpected row {other:?}"),
        })
        .collect()
}

fn row(device: &str, id: &str, value: f64) -> (String, String, f64) {
    (device.to_owned(), id.to_owned(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_key_ingests_a_batch_for_its_devices() {
    let (mut gateway, site) = start_site(&[]).await;
    // The same reading id from two devices is two readings.
    let batch = json!([
        relayed("pump-7", "r-1", 1.0),
        relayed("line-3-a", "r-1", 2.0)
    ]);
    let (status, answer) = gateway.post_json(&site.relay, &batch).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 2, "rejected": [], "committed": true})
    );
    assert_eq!(
        rows(&gateway).await,
        [row("line-3-a", "r-1", 2.0), row("pump-7", "r-1", 1.0)]
    );

    // The same body formats, gzip and acknowledgement modes as a device's.
    let ndjson = format!(
        "{}\n{}\n",
        relayed("line-3-a", "r-2", 3.0),
        relayed("pump-7", "r-2", 4.0)
    );
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, ndjson.as_bytes()).unwrap();
    let response = gateway
        .post_to("/api/ingest?ack=accept", &site.relay)
        .header("Content-Type", "application/x-ndjson")
        .header("Content-Encoding", "gzip")
        .body(gzip.finish().unwrap())
        .send()
        .await
        .unwrap();
    let (status, answer) = respond(response).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2);
    gateway.wait_for_rows(4, Duration::from_secs(10)).await;
    assert_eq!(
        rows(&gateway).await,
        [
            row("line-3-a", "r-1", 2.0),
            row("line-3-a", "r-2", 3.0),
            row("pump-7", "r-1", 1.0),
            row("pump-7", "r-2", 4.0)
        ]
    );
    let accepted = r#"lakegate_relay_readings_accepted_total{relay="site-a"}"#;
    assert_eq!(gateway.metric(accepted).await, 4.0);
    assert_eq!(
        gateway.metric("lakegate_readings_accepted_total").await,
        4.0
    );

    // The device's own key works as before, and a relay key is no device key.
    let own = json!({"id": "own-1", "ts": "2026-11-29T12:00:00Z", "metrics": {"temperature": 5.0}});
    assert_eq!(gateway.post_json(&site.pump, &own).await.0, 200);
    let (status, answer) = gateway.post_json(&site.relay, &own).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(rejections(&answer), refused(&[(0, "missing_device_id")]));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_a_relay_may_not_send_are_refused_one_by_one() {
    let (mut gateway, site) = start_site(&[]).await;
    let batch = json!([
        relayed("pump-7", "ok-1", 1.0),
        relayed("other-9", "x-1", 1.0),
        relayed("line-3-zz", "x-2", 1.0),
        {"id": "x-3", "ts": "2026-11-29T12:00:00Z", "metrics": {"temperature": 1.0}},
        relayed("line-3-off", "x-4", 1.0),
        relayed("sensor-1", "x-5", 1.0),
        {"device_id": "line-3-a", "id": "x-6", "ts": "yesterday", "metrics": {"t": 1}},
        relayed("line-3-a", "ok-2", 2.0),
    ]);
    let (status, answer) = gateway.post_json(&site.relay, &batch).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(
        rejections(&answer),
        refused(&[
            (1, "device_not_allowed"),
            (2, "unknown_device"),
            (3, "missing_device_id"),
            (4, "device_disabled"),
            (5, "device_not_allowed"),
            (6, "invalid_ts"),
        ])
    );
    // Beyond its patterns, the relay learns nothing of the device, not even its id back.
    let messages = answer["rejected"].to_string();
    assert!(
        !messages.contains("other-9") && !messages.contains("line-3-zz"),
        "{messages}"
    );
    assert_eq!(
        rows(&gateway).await,
        [row("line-3-a", "ok-2", 2.0), row("pump-7", "ok-1", 1.0)]
    );

    // Nothing the relay may send: 400, nothing written.
    let (status, answer) = gateway
        .post_json(&site.relay, &json!([relayed("other-9", "y-1", 1.0)]))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("no_valid_readings"))
    );
    assert_eq!(gateway.row_count().await, 2);

    let metric = |reason: &str| {
        format!(r#"lakegate_relay_readings_rejected_total{{relay="site-a",reason="{reason}"}}"#)
    };
    assert_eq!(gateway.metric(&metric("device_not_allowed")).await, 3.0);
    assert_eq!(gateway.metric(&metric("unknown_device")).await, 1.0);
    assert_eq!(
        gateway
            .metric(r#"lakegate_readings_rejected_total{reason="device_disabled"}"#)
            .await,
        1.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_devices_own_rate_limit_applies_to_readings_relayed_for_it() {
    let (mut gateway, site) = start_site(&[]).await;
    // line-3-slow: burst 2, one more a second. Its first two readings pass, the others
    // are refused one by one while pump-7's pass.
    let batch = json!([
        relayed("line-3-slow", "s-1", 1.0),
        relayed("line-3-slow", "s-2", 2.0),
        relayed("line-3-slow", "s-3", 3.0),
        relayed("pump-7", "p-1", 4.0),
        relayed("line-3-slow", "s-4", 5.0),
    ]);
    let (status, answer) = gateway
        .post_json_to("/ingest?ack=accept", &site.relay, &batch)
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 3);
    assert_eq!(
        rejections(&answer),
        refused(&[(2, "device_rate_limited"), (4, "device_rate_limited")])
    );
    // The budget the relay spent is the device's own: the device itself is refused now.
    let own = json!({"id": "own", "ts": "2026-11-29T12:00:00Z", "metrics": {"t": 1}});
    let (status, answer) = gateway.post_json(&site.slow, &own).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("device_rate_limited"))
    );

    // A batch with nothing but readings over their devices' rates: 429 for the batch,
    // with the list and Retry-After.
    let response = gateway
        .send_json(
            "/ingest",
            &site.relay,
            &json!([relayed("line-3-slow", "s-5", 6.0)]),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, answer) = respond(response).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "device_rate_limited");
    assert_eq!(rejections(&answer), refused(&[(0, "device_rate_limited")]));

    // Refused readings are sent again later and taken.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = json!([
        relayed("line-3-slow", "s-3", 3.0),
        relayed("line-3-slow", "s-4", 5.0)
    ]);
    let (status, answer) = gateway.post_json(&site.relay, &again).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    gateway.wait_for_rows(5, Duration::from_secs(10)).await;
    let ids: Vec<String> = rows(&gateway).await.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, ["s-1", "s-2", "s-3", "s-4", "p-1"]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_batch_over_the_global_rate_is_refused_whole() {
    // 6 rows of global burst, one more a second; requests of up to 2 readings of 3 metrics.
    let (mut gateway, site) = start_site(&[
        ("LAKEGATE_MAX_READINGS_PER_REQUEST", "2"),
        ("LAKEGATE_MAX_METRICS_PER_READING", "3"),
        ("LAKEGATE_GLOBAL_RATE_PER_SEC", "1"),
        ("LAKEGATE_GLOBAL_BURST", "6"),
    ])
    .await;
    let three = |device: &str, id: &str| json!({"device_id": device, "id": id, "ts": "2026-11-29T12:00:00Z", "metrics": {"a": 1, "b": 2, "c": 3}});
    let full = json!([three("pump-7", "g-1"), three("line-3-a", "g-1")]);
    assert_eq!(gateway.post_json(&site.relay, &full).await.0, 200);
    let over = json!([three("pump-7", "g-2"), three("line-3-a", "g-2")]);
    let response = gateway.send_json("/ingest", &site.relay, &over).await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, answer) = respond(response).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("gateway_rate_limited"))
    );
    assert_eq!(gateway.row_count().await, 6, "nothing of the refused batch");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_reading_sent_directly_and_through_the_relay_is_written_once() {
    let (mut gateway, site) = start_site(&[]).await;
    // No id: the gateway derives one from the device, the time and the metrics.
    let direct = json!({"ts": "2026-11-29T12:00:00.250Z", "metrics": {"t": 1, "u": "on"}});
    let (status, answer) = gateway.post_json(&site.pump, &direct).await;
    assert_eq!(status, 200, "{answer}");
    // The relay spools it and forwards it later, written another way: once all the same.
    let forwarded =
        json!({"metrics": {"u": "on", "t": 1.0}, "ts": 1795953600250_i64, "device_id": "pump-7"});
    let (status, answer) = gateway.post_json(&site.relay, &json!([forwarded])).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let ids = gateway
        .query(&format!("SELECT DISTINCT reading_id FROM {TABLE}"))
        .await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(matches!(&ids[0][0], Value::String(id) if id.starts_with("h-")));
    assert_eq!(gateway.row_count().await, 2, "two metrics of one reading");

    // The same content of another device is another reading.
    let mut other = forwarded.clone();
    other["device_id"] = json!("line-3-a");
    assert_eq!(gateway.post_json(&site.relay, &json!([other])).await.0, 200);
    assert_eq!(gateway.row_count().await, 4);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_relay_is_refused_under_its_own_budget() {
    // The default device quota (2 at once, 1 a second) is also a relay's, in requests.
    let (mut gateway, site) = start_site(&[
        ("LAKEGATE_DEVICE_RATE_PER_SEC", "1"),
        ("LAKEGATE_DEVICE_BURST", "2"),
        ("LAKEGATE_AUTH_FAILURES_PER_MIN", "1"),
        ("LAKEGATE_AUTH_FAILURE_BURST", "1"),
    ])
    .await;
    let reading = json!([relayed("pump-7", "d-1", 1.0)]);
    for _ in 0..2 {
        let (status, answer) = gateway.post_json(&site.disabled_relay, &reading).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"], "relay_disabled");
        assert!(answer["message"].as_str().unwrap().contains("site-off"));
    }
    let response = gateway
        .send_json("/ingest", &site.disabled_relay, &reading)
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, answer) = respond(response).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("relay_rate_limited"))
    );
    assert_eq!(
        gateway
            .metric(r#"lakegate_auth_failures_total{kind="relay",outcome="disabled"}"#)
            .await,
        3.0
    );
    // None of that was charged to the address's failure budget: an unknown key gets
    // its 401 (the budget's one failure), only then 429.
    assert_eq!(gateway.post_json("lgk_unknown", &reading).await.0, 401);
    assert_eq!(gateway.post_json("lgk_unknown", &reading).await.0, 429);
    // An enabled relay over its own budget is refused before its body is read.
    let garbled = || {
        gateway
            .post(&site.relay)
            .header("Content-Type", "application/json")
            .body("{not json")
    };
    for _ in 0..2 {
        let (status, answer) = respond(garbled().send().await.unwrap()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_json"))
        );
    }
    let (status, answer) = respond(garbled().send().await.unwrap()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("relay_rate_limited"))
    );
    assert_eq!(gateway.row_count().await, 0);
    gateway.stop().await;
}

fn lakegate(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(args)
        .args(["--file", file.to_str().unwrap()])
        .env_remove("DATABRICKS_CONFIG_PROFILE")
        .output()
        .expect("lakegate runs")
}

/// Runs a change that must succeed; returns the key it printed, if any.
fn change(args: &[&str], file: &Path) -> Option<String> {
    let output = lakegate(args, file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    assert!(!stderr.contains("lgr_"), "no key on stderr: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    match stdout.lines().collect::<Vec<_>>()[..] {
        [] => None,
        [key] if key.starts_with("lgr_") => Some(key.to_owned()),
        _ => panic!("one key line at most: {stdout}"),
    }
}

/// Waits past the gateway's registry reload (every second in the harness).
async fn reload() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_gateway_follows_the_relay_key_commands() {
    let mut gateway = Harness::start().await;
    let file = gateway.registry_file.clone();
    let send = async |key: &str, device: &str, id: &str| {
        gateway
            .post_json(key, &json!([relayed(device, id, 1.0)]))
            .await
    };
    let first = change(
        &[
            "keys",
            "add-relay",
            "site-b",
            "--devices",
            "sensor-1, slow-*",
        ],
        &file,
    )
    .expect("a new key");
    reload().await;
    assert_eq!(send(&first, "sensor-1", "b-1").await.0, 200);
    assert_eq!(send(&first, "slow-1", "b-2").await.0, 200);
    let (status, answer) = send(&first, "sensor-2", "b-3").await;
    assert_eq!(status, 400);
    assert_eq!(rejections(&answer), refused(&[(0, "device_not_allowed")]));

    let next = change(&["keys", "rotate-relay", "site-b"], &file).expect("a second key");
    reload().await;
    assert_eq!(send(&first, "sensor-1", "b-4").await.0, 200);
    assert_eq!(send(&next, "sensor-1", "b-5").await.0, 200);
    assert_eq!(change(&["keys", "revoke-old-relay", "site-b"], &file), None);
    reload().await;
    assert_eq!(send(&first, "sensor-1", "b-6").await.0, 401);
    assert_eq!(send(&next, "sensor-1", "b-7").await.0, 200);

    change(
        &["keys", "relay-devices", "site-b", "--devices", "sensor-2"],
        &file,
    );
    reload().await;
    let (status, answer) = send(&next, "sensor-1", "b-8").await;
    assert_eq!(status, 400);
    assert_eq!(rejections(&answer), refused(&[(0, "device_not_allowed")]));
    assert_eq!(send(&next, "sensor-2", "b-9").await.0, 200);

    change(&["keys", "disable-relay", "site-b"], &file);
    reload().await;
    let (status, answer) = send(&next, "sensor-2", "b-10").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("relay_disabled"))
    );
    change(&["keys", "enable-relay", "site-b"], &file);
    reload().await;
    assert_eq!(send(&next, "sensor-2", "b-11").await.0, 200);

    let listed = String::from_utf8(lakegate(&["keys", "list"], &file).stdout).unwrap();
    assert!(
        listed.contains("\nrelay\tkeys\tdisabled\tdevices\nsite-b\t1\tfalse\tsensor-2\n"),
        "{listed}"
    );
    assert!(listed.contains("sensor-1\t2\tfalse"), "{listed}");
    assert!(
        !listed.contains("lgk_") && !listed.contains("sha256"),
        "{listed}"
    );

    // Refused changes say why, never echo a key, and write nothing.
    let before = std::fs::read(&file).unwrap();
    let secret = key();
    for (args, says) in [
        (
            vec!["keys", "add-relay", "site-c", "--devices", "pu*mp"],
            "may hold one \"*\", only at its end",
        ),
        (
            vec!["keys", "add-relay", "site-c", "--devices", "*"],
            "is \"*\" alone",
        ),
        (
            vec!["keys", "add-relay", "site-c", "--devices", secret.as_str()],
            "looks like a key",
        ),
        (
            vec!["keys", "add-relay", "site-b", "--devices", "x"],
            "relay \"site-b\" is already in the registry (use `lakegate keys relay rotate`",
        ),
        (
            vec!["keys", "rotate-relay", "site-z"],
            "relay \"site-z\" is not in the registry",
        ),
        (
            vec!["keys", "relay-devices", "site-b", "--devices", " , "],
            "at least one device pattern",
        ),
    ] {
        let output = lakegate(&args, &file);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(&secret[4..]), "{stderr}");
        assert!(output.stdout.is_empty());
    }
    assert_eq!(std::fs::read(&file).unwrap(), before);

    change(&["keys", "revoke-relay", "site-b"], &file);
    reload().await;
    assert_eq!(send(&next, "sensor-2", "b-12").await.0, 401);
    // The devices were never touched.
    let own = lakegate_testkit::gateway::reading("own-1", 1.0);
    assert_eq!(gateway.post_json(&gateway.keys.sensor, &own).await.0, 200);
    gateway.stop().await;
}

/// A relay built from `lakegate-device`: `Upstream::deliver_retrying` with the relay key
/// sends the readings refused with `device_rate_limited` again until they are taken,
/// and each is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_built_from_lakegate_device_sends_rate_limited_readings_again() {
    let (mut gateway, site) = start_site(&[]).await;
    let upstream =
        lakegate_device::Upstream::new(&gateway.url, site.relay.clone().into(), None).unwrap();
    // line-3-slow takes two readings at once, then one a second.
    let mut batch: Vec<Json> = (1..=4)
        .map(|n| relayed("line-3-slow", &format!("s-{n}"), f64::from(n)))
        .collect();
    batch.push(relayed("pump-7", "p-1", 9.0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let settled = upstream.deliver_retrying(&batch, Some(deadline)).await;
    assert_eq!(settled.refused, []);
    assert_eq!(settled.left, [0usize; 0]);
    let rows = gateway
        .query(&format!(
            "SELECT device_id, count(*), count(DISTINCT reading_id) FROM {TABLE} \
             GROUP BY device_id ORDER BY device_id"
        ))
        .await;
    let counts: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|row| match &row[..] {
            [
                Value::String(device),
                Value::Int(rows),
                Value::Int(readings),
            ] => (device.clone(), *rows, *readings),
            other => panic!("unexpected row {other:?}"),
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("line-3-slow".to_owned(), 4, 4),
            ("pump-7".to_owned(), 1, 1)
        ]
    );
    gateway.stop().await;
}
