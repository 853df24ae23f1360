//! Slow and abusive clients: half-sent headers, too many connections, idle
//! keep-alives and dead HTTP/2 peers, on raw sockets.

use std::time::Duration;

use lakegate_testkit::{emulator_config, eventually_async};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use lakegate_testkit::gateway::{Harness, reading};

async fn connect(gateway: &Harness) -> TcpStream {
    TcpStream::connect(gateway.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (end of stream or reset), within `bound`;
/// returns what arrived. Panics if the connection is still open after `bound`.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {bound:?}");
    received
}

/// Reads one response whose body is `Content-Length` long; returns it as text.
pub(crate) async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before the response");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_headers_are_closed_after_the_header_timeout_while_devices_are_served() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_HEADER_TIMEOUT_SECS", "2")
        .start()
        .await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = connect(&gateway).await;
        stream
            .write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // A device on a fresh connection is served meanwhile.
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &reading("served-1", 1.0))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(gateway.metric("lakegate_connections_open").await >= 300.0);

    // Closed by the server, without a response: the requests never began.
    for stream in &mut slow {
        let received = read_until_closed(stream, Duration::from_secs(30)).await;
        assert!(
            received.is_empty(),
            "{}",
            String::from_utf8_lossy(&received)
        );
    }
    let timed_out = "lakegate_connections_timed_out_total{reason=\"header_timeout\"}";
    assert!(gateway.metric(timed_out).await >= 300.0);
    assert!(gateway.metric("lakegate_connections_open").await < 10.0);
    gateway.wait_for_rows(1, Duration::from_secs(10)).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_the_connection_cap_a_new_connection_gets_503_and_is_closed() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_MAX_CONNECTIONS", "3")
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&gateway).await;
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }

    let mut refused = connect(&gateway).await;
    // Whether or not the request is read, the answer arrives and the socket closes.
    let _ = refused.write_all(HEALTHZ).await;
    let answer = read_until_closed(&mut refused, Duration::from_secs(10)).await;
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let body: Json = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    assert!(body["message"].as_str().unwrap().contains("connections"));

    // A slot frees when a connection goes; service resumes.
    drop(held.pop());
    // Until the slot is free, these are refused (and counted) too.
    let served = async || {
        let metrics = gateway.http.get(format!("{}/metrics", gateway.url));
        matches!(metrics.send().await, Ok(response) if response.status() == 200)
    };
    eventually_async(Duration::from_secs(5), "a free slot", served).await;
    // Free every slot first: the metrics request below may need a connection of its own.
    drop(held);
    assert!(gateway.metric("lakegate_connections_refused_total").await >= 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout_not_the_header_timeout() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_HEADER_TIMEOUT_SECS", "1")
        .env("LAKEGATE_IDLE_TIMEOUT_SECS", "8")
        .start()
        .await;
    let mut stream = connect(&gateway).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout: the connection is still usable.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Then left idle, it is closed.
    let received = read_until_closed(&mut stream, Duration::from_secs(30)).await;
    assert!(received.is_empty());
    let idle = "lakegate_connections_timed_out_total{reason=\"idle_timeout\"}";
    assert!(gateway.metric(idle).await >= 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_longer_than_the_timeouts_is_not_cut() {
    let mut config = emulator_config();
    config.faults.statement_latency = Duration::from_millis(2500);
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_HEADER_TIMEOUT_SECS", "1")
        .env("LAKEGATE_IDLE_TIMEOUT_SECS", "1")
        .start()
        .await;
    // Waits for its commit, which takes longer than either timeout.
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &reading("slow-commit-1", 1.0))
        .await;
    assert_eq!(status, 200, "{answer}");
    gateway.stop().await;
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// HPACK literal header fields without indexing (names and values under 127 bytes).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_http2_peer_is_noticed_by_keep_alive_pings() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_H2_KEEPALIVE_SECS", "1")
        .env("LAKEGATE_IDLE_TIMEOUT_SECS", "300")
        .start()
        .await;
    let mut stream = connect(&gateway).await;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    // A request whose body never comes: it stays in flight.
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/ingest"),
        (":authority", "x"),
        ("x-api-key", &gateway.keys.sensor),
    ]);
    hello.extend(h2_frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
    stream.write_all(&hello).await.unwrap();
    // The peer now answers nothing, pings included; the gateway gives up on it.
    read_until_closed(&mut stream, Duration::from_secs(20)).await;

    // Live HTTP/2 clients answer the pings and are served as before.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(format!("{}/ingest", gateway.url))
        .header("X-API-Key", &gateway.keys.sensor)
        .json(&reading("h2-alive-1", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = h2
        .post(format!("{}/ingest", gateway.url))
        .header("X-API-Key", &gateway.keys.sensor)
        .json(&reading("h2-alive-2", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_closes_idle_and_half_sent_connections_at_once() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_HEADER_TIMEOUT_SECS", "60")
        .env("LAKEGATE_SHUTDOWN_GRACE_SECS", "12")
        .start()
        .await;
    let mut idle = connect(&gateway).await;
    idle.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut half_sent = connect(&gateway).await;
    half_sent
        .write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Neither holds the shutdown for the drain bound (half the grace period, 6 s).
    let started = std::time::Instant::now();
    gateway.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    read_until_closed(&mut idle, Duration::from_secs(1)).await;
    read_until_closed(&mut half_sent, Duration::from_secs(1)).await;
}
