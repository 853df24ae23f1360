//! What a request costs before it is queued: rate budgets (the device's before its
//! body is read, the gateway's in rows), queue room in bytes, and what readiness
//! and a waiting device hear when the gateway stops.

use std::time::{Duration, Instant};

use lakegate_emulator::Faults;
use lakegate_testkit::{emulator_config, gateway_env, start_emulator};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use lakegate_testkit::gateway::{Harness, reading, respond};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_limit_counts_rows_not_readings() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_GLOBAL_RATE_PER_SEC", "1")
        .env("LAKEGATE_GLOBAL_BURST", "10")
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "2")
        .env("LAKEGATE_MAX_METRICS_PER_READING", "5")
        .start()
        .await;
    let five_metrics = |id: &str| {
        json!({"id": id, "ts": "2026-11-29T12:00:00Z",
               "metrics": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}})
    };
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &five_metrics("r-1"))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = gateway
        .post_json(&gateway.keys.other, &five_metrics("r-2"))
        .await;
    assert_eq!(status, 200, "{answer}");
    // Two readings so far, but ten rows: the global burst is spent.
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &reading("r-3", 1.0))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("gateway_rate_limited")),
        "{answer}"
    );
    gateway.stop().await;
}

/// Sends only the head of a request announcing a large body, and reads the answer.
async fn answer_to_headers_only(url: &str, key: &str) -> String {
    let address = url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("the gateway answers without waiting for the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_over_its_rate_is_refused_before_its_body_is_read() {
    let mut gateway = Harness::start().await;
    // slow-1: burst 3, one reading a second.
    let burst = json!([
        reading("s-1", 1.0),
        reading("s-2", 1.0),
        reading("s-3", 1.0)
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.slow, &burst).await;
    assert_eq!(status, 200, "{answer}");

    let answer = answer_to_headers_only(&gateway.url, &gateway.keys.slow).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("device_rate_limited"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_is_bounded_in_bytes() {
    let mut config = emulator_config();
    config.faults.statement_latency = Duration::from_millis(1500);
    // Rows are few, but long strings fill the byte budget after one request.
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_QUEUE_MAX_BYTES", "7000")
        .env("LAKEGATE_MAX_BODY_BYTES", "4500")
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "1")
        .env("LAKEGATE_MAX_METRICS_PER_READING", "4")
        .start()
        .await;
    let long = "x".repeat(1000);
    let body = |id: &str| {
        json!({"id": id, "ts": "2026-11-29T12:00:00Z",
               "metrics": {"a": long, "b": long, "c": long, "d": long}})
    };
    let url = format!("{}/ingest?ack=accept", gateway.url);
    let post = |id: &str| {
        gateway
            .http
            .post(&url)
            .header("X-API-Key", &gateway.keys.sensor)
            .json(&body(id))
            .send()
    };
    let (status, answer) = respond(post("first").await.unwrap()).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = respond(post("second").await.unwrap()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("unavailable")),
        "{answer}"
    );

    gateway.wait_for_rows(4, Duration::from_secs(10)).await;
    let (status, answer) = respond(post("second").await.unwrap()).await;
    assert_eq!(status, 202, "{answer}");
    gateway.wait_for_rows(8, Duration::from_secs(10)).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_up_setting_too_small_for_one_request_is_named() {
    let emulator = start_emulator(emulator_config()).await;
    let env = gateway_env(
        &emulator,
        std::path::Path::new("/nonexistent/devices.json"),
        &[("LAKEGATE_QUEUE_MAX_BYTES", "100000")],
    );
    let err = lakegate::config::GatewayConfig::from_map(&env).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("LAKEGATE_QUEUE_MAX_BYTES: must hold the largest request"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readiness_probes_share_one_check() {
    let mut gateway = Harness::start().await;
    let before = gateway.emulator.stats().statements;
    let probes: Vec<_> = (0..20)
        .map(|_| tokio::spawn(gateway.http.get(format!("{}/readyz", gateway.url)).send()))
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(gateway.emulator.stats().statements - before, 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_makes_the_gateway_unready_and_says_resending_is_needed() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_SHUTDOWN_GRACE_SECS", "6")
        .start()
        .await;
    // The warehouse hangs: the probe's check and the device's commit never finish.
    gateway.emulator.set_faults(Faults {
        statement_latency: Duration::from_secs(60),
        ..Faults::default()
    });
    let probe = tokio::spawn(gateway.http.get(format!("{}/readyz", gateway.url)).send());
    let waiting = tokio::spawn(
        gateway
            .post(&gateway.keys.sensor)
            .json(&reading("late-1", 1.0))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    gateway.begin_shutdown();
    let (status, readiness) = respond(probe.await.unwrap().unwrap()).await;
    assert_eq!(
        (status, &readiness["shutting_down"]),
        (503, &json!(true)),
        "{readiness}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );

    let (status, answer) = respond(waiting.await.unwrap().unwrap()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("not_yet_committed")),
        "{answer}"
    );
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("resend"), "{message}");
    assert!(!message.contains("will still be written"), "{message}");
    gateway.stop().await;
}
