//! The wire contract of every refusal `docs/api.md` documents: status, whether
//! `Retry-After` is set, and the JSON body, pinned by snapshots
//! (`tests/gateway/snapshots/`). A change to any of them fails here and has to be
//! accepted on purpose (`INSTA_UPDATE=always`, then review the diff).

use std::io::Write;
use std::time::Duration;

use lakegate::devices::{generate_key, hash_key};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value as Json, json};

use lakegate_testkit::{TABLE, emulator_config, poll};

use crate::uploads::HeldUpload;
use lakegate_testkit::gateway::{Harness, reading};

/// What a client sees of a refusal.
#[derive(Serialize)]
struct Refusal {
    case: &'static str,
    status: u16,
    retry_after: bool,
    body: Json,
}

async fn refusal(case: &'static str, response: reqwest::Response) -> Refusal {
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.json().await.expect("every refusal is JSON");
    Refusal {
        case,
        status,
        retry_after,
        body,
    }
}

async fn sent(case: &'static str, request: reqwest::RequestBuilder) -> Refusal {
    refusal(case, request.send().await.unwrap()).await
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_of_requests_and_credentials() {
    let reader_token = generate_key().key.expose_secret().to_owned();
    let reader_hash = hash_key(&reader_token);
    let mut gateway = Harness::builder()
        .env("LAKEGATE_MAX_BODY_BYTES", "2048")
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "5")
        .env("LAKEGATE_AUTH_FAILURES_PER_MIN", "1")
        .env("LAKEGATE_AUTH_FAILURE_BURST", "2")
        .env("LAKEGATE_READER_TOKENS", &reader_hash)
        .start()
        .await;
    let sensor = gateway.keys.sensor.clone();
    let json_body = |body: &str| {
        gateway
            .post(&sensor)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
    };
    let mut refusals = Vec::new();

    refusals.push(
        sent(
            "invalid_json",
            json_body(r#"{"ts": "2026-11-29T12:00:00Z", "metrics": {"#),
        )
        .await,
    );
    refusals.push(sent("empty_body", json_body("")).await);
    refusals.push(
        sent(
            "bad_encoding",
            json_body("not gzip").header("Content-Encoding", "gzip"),
        )
        .await,
    );
    refusals.push(
        sent(
            "unsupported_encoding",
            json_body("{}").header("Content-Encoding", "br"),
        )
        .await,
    );
    refusals.push(
        sent(
            "unsupported_media_type",
            gateway
                .post(&sensor)
                .header("Content-Type", "text/plain")
                .body("temperature=21.5"),
        )
        .await,
    );
    refusals.push(sent("body_too_large", json_body(&" ".repeat(2049))).await);
    let bomb = gzip(&vec![b' '; 1 << 20]);
    refusals.push(
        sent(
            "body_too_large_after_gzip",
            json_body("").header("Content-Encoding", "gzip").body(bomb),
        )
        .await,
    );
    let six: Vec<Json> = (0..6).map(|i| reading(&format!("r-{i}"), 1.0)).collect();
    refusals.push(sent("too_many_readings", gateway.post(&sensor).json(&six)).await);
    refusals.push(sent(
        "no_valid_readings",
        gateway.post(&sensor).json(&json!([
            {"id": "no-ts", "metrics": {"t": 1}},
            {"id": "bad-name", "ts": "2026-11-29T12:00:00Z", "metrics": {"t e": 1}},
            {"id": "other-device", "device_id": "sensor-2", "ts": "2026-11-29T12:00:00Z", "metrics": {"t": 1}},
            {"id": "nanos", "ts": 1_764_417_600_000_000_000_i64, "metrics": {"t": 1}},
            {"id": "local-time", "ts": "2026-11-29 12:00:00", "metrics": {"t": 1}},
        ])),
    ).await);
    refusals.push(
        sent(
            "invalid_query",
            gateway
                .post_to("/ingest?ack=eventually", &sensor)
                .json(&reading("q", 1.0)),
        )
        .await,
    );
    refusals.push(
        sent(
            "invalid_query_unknown_parameter",
            gateway
                .post_to("/ingest?acks=accept", &sensor)
                .json(&reading("q", 1.0)),
        )
        .await,
    );
    refusals.push(
        sent(
            "more_readings_than_burst",
            gateway.post(&gateway.keys.slow).json(&[
                reading("s-1", 1.0),
                reading("s-2", 1.0),
                reading("s-3", 1.0),
                reading("s-4", 1.0),
            ]),
        )
        .await,
    );
    // The slow device (1/s, burst 3) spent one unit on the request above.
    let mut limited = None;
    for i in 0..5 {
        let response = gateway
            .send_json(
                "/ingest",
                &gateway.keys.slow,
                &reading(&format!("slow-{i}"), 1.0),
            )
            .await;
        if response.status() == 429 {
            limited = Some(refusal("device_rate_limited", response).await);
            break;
        }
        assert!(response.status().is_success(), "{i}");
    }
    refusals.push(limited.expect("the slow device is limited"));
    refusals.push(
        sent(
            "device_disabled",
            gateway
                .post(&gateway.keys.disabled)
                .json(&reading("d", 1.0)),
        )
        .await,
    );
    refusals.push(
        sent(
            "unauthorized_without_key",
            gateway
                .http
                .post(format!("{}/ingest", gateway.url))
                .json(&reading("k", 1.0)),
        )
        .await,
    );
    refusals.push(
        sent(
            "unauthorized_unknown_key",
            gateway.post("lgk_unknown").json(&reading("k", 1.0)),
        )
        .await,
    );
    refusals.push(
        sent(
            "too_many_failed_authentications",
            gateway.post("lgk_unknown").json(&reading("k", 1.0)),
        )
        .await,
    );
    refusals.push(
        sent(
            "not_found",
            gateway.http.get(format!("{}/no/such/route", gateway.url)),
        )
        .await,
    );
    refusals.push(
        sent(
            "method_not_allowed",
            gateway.http.get(format!("{}/ingest", gateway.url)),
        )
        .await,
    );
    refusals.push(
        sent(
            "invalid_parameter",
            gateway
                .http
                .get(format!(
                    "{}/api/devices/sensor-1/series?bucket=week",
                    gateway.url
                ))
                .bearer_auth(&reader_token),
        )
        .await,
    );

    refusals.push(
        sent(
            "invalid_parameter_query_string",
            gateway
                .http
                .get(format!(
                    "{}/api/devices/sensor-1/series?metric=t&metric=h",
                    gateway.url
                ))
                .bearer_auth(&reader_token),
        )
        .await,
    );

    insta::assert_json_snapshot!("requests_and_credentials", refusals);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_of_a_site_relay() {
    let relay_key = generate_key().key.expose_secret().to_owned();
    let disabled_key = generate_key().key.expose_secret().to_owned();
    let registry = json!({
        "devices": {
            "pump-7": {"keys": []},
            "line-3-off": {"keys": [], "disabled": true},
            "line-3-slow": {"keys": [], "rate_per_sec": 1, "burst": 1},
        },
        "relays": {
            "site-a": {"keys": [hash_key(&relay_key)], "devices": ["pump-7", "line-3-*"]},
            "site-off": {"keys": [hash_key(&disabled_key)], "devices": ["pump-7"], "disabled": true},
        }
    });
    // A relay's own budget is the default device quota, in requests: 8 at once.
    let mut gateway = Harness::builder()
        .env("LAKEGATE_DEVICE_RATE_PER_SEC", "1")
        .env("LAKEGATE_DEVICE_BURST", "8")
        .registry(registry)
        .start()
        .await;
    let relayed = |device: &str, id: &str| json!({"device_id": device, "id": id, "ts": "2026-11-29T12:00:00Z", "metrics": {"t": 1}});
    let mut refusals = Vec::new();
    let batch = json!([
        relayed("pump-7", "ok"),
        {"id": "no-device", "ts": "2026-11-29T12:00:00Z", "metrics": {"t": 1}},
        relayed("other-9", "not-the-relays"),
        relayed("line-3-zz", "unknown"),
        relayed("line-3-off", "disabled"),
        relayed("line-3-slow", "within-burst"),
        relayed("line-3-slow", "over-rate"),
    ]);
    let partly = gateway
        .post_to("/ingest?ack=accept", &relay_key)
        .json(&batch);
    refusals.push(sent("relay_readings_refused_one_by_one", partly).await);
    let nothing = gateway
        .post(&relay_key)
        .json(&json!([relayed("other-9", "x")]));
    refusals.push(sent("relay_no_valid_readings", nothing).await);
    // line-3-slow (burst 1, one more a second) spent its budget above.
    let mut limited = None;
    for i in 0..3 {
        let response = gateway
            .accept(
                &relay_key,
                &json!([relayed("line-3-slow", &format!("slow-{i}"))]),
            )
            .await;
        if response.status() == 429 {
            limited = Some(refusal("relay_devices_rate_limited", response).await);
            break;
        }
        assert!(response.status().is_success(), "{i}");
    }
    refusals.push(limited.expect("the slow device is limited"));
    refusals.push(
        sent(
            "relay_disabled",
            gateway
                .post(&disabled_key)
                .json(&json!([relayed("pump-7", "d")])),
        )
        .await,
    );
    let mut limited = None;
    for i in 0..10 {
        let response = gateway
            .post(&relay_key)
            .header("Content-Type", "application/json")
            .body("[")
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(refusal("relay_rate_limited", response).await);
            break;
        }
        assert_eq!(response.status(), 400, "{i}");
    }
    refusals.push(limited.expect("the relay is limited"));

    insta::assert_json_snapshot!("relay", refusals);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_of_uploads_in_flight() {
    // Bodies of up to 1000 bytes: one in flight per device, two in all.
    let mut gateway = Harness::builder()
        .env("LAKEGATE_MAX_BODY_BYTES", "1000")
        .env("LAKEGATE_MAX_BODY_BYTES_PER_SENDER", "1000")
        .env("LAKEGATE_MAX_BODY_BYTES_IN_FLIGHT", "2000")
        .start()
        .await;
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let mut refusals = Vec::new();
    // Held open without a length, each holds the whole cap.
    let sensor = HeldUpload::admitted(&address, &gateway.keys.sensor, None).await;
    let again = gateway
        .post(&gateway.keys.sensor)
        .json(&reading("u-1", 1.0));
    refusals.push(sent("too_many_uploads", again).await);
    let other = HeldUpload::admitted(&address, &gateway.keys.other, None).await;
    let third = gateway.post(&gateway.keys.slow).json(&reading("u-2", 1.0));
    refusals.push(sent("uploads_full", third).await);

    insta::assert_json_snapshot!("uploads_in_flight", refusals);
    drop((sensor, other));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_of_a_gateway_that_cannot_keep_up() {
    let mut config = emulator_config();
    config.faults.statement_latency = Duration::from_millis(2500);
    // Requests of up to 6 rows; a queue of 8 rows; 6 rows of global burst, one more a second.
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "2")
        .env("LAKEGATE_MAX_METRICS_PER_READING", "3")
        .env("LAKEGATE_QUEUE_MAX_ROWS", "8")
        .env("LAKEGATE_GLOBAL_RATE_PER_SEC", "1")
        .env("LAKEGATE_GLOBAL_BURST", "6")
        .env("LAKEGATE_ACK_TIMEOUT_SECS", "1")
        .start()
        .await;
    let rows = |id: &str, metrics: usize| {
        let metrics: serde_json::Map<String, Json> =
            (0..metrics).map(|m| (format!("m{m}"), json!(m))).collect();
        json!({"id": id, "ts": "2026-11-29T12:00:00Z", "metrics": metrics})
    };
    let mut refusals = Vec::new();
    let accepted = gateway
        .accept(&gateway.keys.sensor, &[rows("a", 3), rows("b", 3)])
        .await;
    assert_eq!(accepted.status(), 202);
    // The queue has room for 2 more rows, but the global budget is spent.
    let over_rate = gateway.post(&gateway.keys.other).json(&rows("c", 1));
    refusals.push(refusal("gateway_rate_limited", over_rate.send().await.unwrap()).await);
    // 3 rows do not fit the 2 rows of room left.
    let full = gateway.post(&gateway.keys.other).json(&rows("d", 3));
    refusals.push(refusal("unavailable", full.send().await.unwrap()).await);
    gateway.wait_for_rows(6, Duration::from_secs(20)).await;
    // Admitted, but the warehouse takes longer than the one second it may wait.
    let waiting = gateway.post(&gateway.keys.other).json(&rows("e", 1));
    refusals.push(refusal("not_yet_committed", waiting.send().await.unwrap()).await);

    insta::assert_json_snapshot!("cannot_keep_up", refusals);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusal_while_the_table_cannot_be_written() {
    let mut gateway = Harness::start().await;
    gateway.query(&format!("DROP TABLE {TABLE}")).await;
    let kept = gateway
        .accept(&gateway.keys.sensor, &reading("kept", 1.0))
        .await;
    assert_eq!(kept.status(), 202);
    // Accepted (and kept) until the writer finds the table gone; refused from then on.
    let refused = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let response = gateway
                .accept(&gateway.keys.sensor, &reading("new", 1.0))
                .await;
            refusal("writes_failing", response).await
        },
        |answer| answer.status == 503,
    );
    let answer = refused
        .await
        .unwrap_or_else(|_| panic!("writes_failing within 30 s"));
    insta::assert_json_snapshot!("table_unwritable", [answer]);
    gateway.stop().await;
}
