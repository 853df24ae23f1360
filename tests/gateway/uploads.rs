//! Bodies in flight: uploads held open on raw sockets cannot pin the gateway's memory,
//! one key's or everyone's; a body over the cap is refused before it is read.

use std::time::Duration;

use lakegate_testkit::{emulator_config, eventually_async, start_emulator};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connections::read_response;
use crate::resilience::GatewayProcess;
use lakegate_testkit::gateway::{Harness, metric_at, reading, respond};

const MIB: usize = 1024 * 1024;

/// `POST /ingest` on its own connection, sent as far as the test says and held there.
pub(crate) struct HeldUpload {
    stream: TcpStream,
    chunked: bool,
}

/// What the gateway answered to a held upload.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Json,
}

impl HeldUpload {
    /// Sends the head, declaring `length` (`None`: chunked, without a length), and the
    /// body's `first` bytes; the rest waits.
    pub(crate) async fn start(
        address: &str,
        key: &str,
        length: Option<usize>,
        first: &[u8],
    ) -> HeldUpload {
        let mut upload = HeldUpload::open(address, key, length, "").await;
        upload.send(first).await.unwrap();
        upload
    }

    /// An upload the gateway has begun to read: its head asks for `100 Continue`, which
    /// the server sends only once the handler reads the body. Nothing of the body is sent.
    pub(crate) async fn admitted(address: &str, key: &str, length: Option<usize>) -> HeldUpload {
        let expect = "Expect: 100-continue\r\n";
        let mut upload = HeldUpload::open(address, key, length, expect).await;
        let interim = read_head(&mut upload.stream).await;
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
        upload
    }

    async fn open(address: &str, key: &str, length: Option<usize>, extra: &str) -> HeldUpload {
        let stream = TcpStream::connect(address)
            .await
            .expect("the gateway listens");
        let framing = match length {
            Some(length) => format!("Content-Length: {length}"),
            None => "Transfer-Encoding: chunked".to_owned(),
        };
        let head = format!(
            "POST /ingest HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {key}\r\n\
             Content-Type: application/json\r\n{extra}{framing}\r\n\r\n"
        );
        let mut upload = HeldUpload {
            stream,
            chunked: length.is_none(),
        };
        upload.stream.write_all(head.as_bytes()).await.unwrap();
        upload
    }

    /// More of the body (one chunk when chunked).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.chunked {
            return self.stream.write_all(bytes).await;
        }
        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
        chunk.extend_from_slice(bytes);
        chunk.extend_from_slice(b"\r\n");
        self.stream.write_all(&chunk).await
    }

    /// Ends a chunked body.
    pub(crate) async fn finish(&mut self) {
        assert!(self.chunked, "only a chunked body ends by itself");
        self.stream.write_all(b"0\r\n\r\n").await.unwrap();
    }

    /// The gateway's answer, whether or not the body was all sent.
    pub(crate) async fn answer(&mut self) -> Answer {
        let text = read_response(&mut self.stream).await;
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
        let retry_after = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().to_owned())
        });
        Answer {
            status: status.unwrap_or_else(|| panic!("a status line in {head}")),
            retry_after,
            body: serde_json::from_str(body).unwrap_or(Json::Null),
        }
    }
}

/// One response head, read byte by byte so that nothing after it is taken, within 30 s.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("a response head"));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a response head within 30 s");
    String::from_utf8_lossy(&head).into_owned()
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("VmRSS in\n{status}"))
}

/// Waits until the gateway at `url` holds `bytes` of bodies in flight.
async fn wait_for_upload_bytes(http: &reqwest::Client, url: &str, bytes: usize) {
    let what = format!("{bytes} bytes of bodies in flight");
    eventually_async(Duration::from_secs(30), &what, async || {
        metric_at(http, url, "lakegate_upload_bytes").await == bytes as f64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_cannot_pin_memory_with_held_open_uploads() {
    const OVER: usize = 200;
    let emulator = start_emulator(emulator_config()).await;
    // The defaults: bodies of up to 1 MiB, 4 MiB in flight per sender, 64 MiB in all.
    let gateway = GatewayProcess::start(&emulator, &[]);
    let address = gateway.process.address.clone();
    let url = format!("http://{address}");
    let http = lakegate_testkit::http_client();
    let sensor = gateway.keys[0].clone();
    let pid = gateway.process.child.id();
    let rss_before = rss_kib(pid);
    let rest = vec![b' '; MIB - 2];

    // Up to its bound the device's uploads are read: four of 1 MiB, each one byte short.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut upload = HeldUpload::admitted(&address, &sensor, Some(MIB)).await;
        upload.send(b"[").await.unwrap();
        upload.send(&rest).await.expect("an admitted body is read");
        held.push(upload);
    }

    // Beyond it, however many the device opens and whatever they write, each is answered
    // before its body is read, and the gateway's memory stays put.
    let mut over = Vec::new();
    for _ in 0..OVER {
        over.push(HeldUpload::start(&address, &sensor, Some(MIB), b"[").await);
    }
    for upload in &mut over {
        // The gateway may have closed the connection already.
        let _ = upload.send(&rest).await;
    }
    let grown_mib = rss_kib(pid).saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 48,
        "the gateway grew by {grown_mib} MiB with {OVER} uploads of one key held open"
    );
    for upload in &mut over {
        let answer = upload.answer().await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (429, &json!("too_many_uploads")),
            "{}",
            answer.body
        );
        assert_eq!(answer.retry_after.as_deref(), Some("2"));
    }
    assert_eq!(
        metric_at(&http, &url, "lakegate_upload_bytes").await,
        (4 * MIB) as f64
    );
    let refused = r#"lakegate_uploads_refused_total{limit="sender"}"#;
    assert_eq!(metric_at(&http, &url, refused).await, OVER as f64);

    // Another device is not held up by them.
    let other = gateway.post_as(1, &http, "", &reading("other-1", 1.0));
    let (status, body) = respond(other.send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // Once the held uploads are gone, the device's budget is back.
    drop(held);
    drop(over);
    eventually_async(
        Duration::from_secs(30),
        "the device sends again",
        async || {
            let request = gateway.post_as(0, &http, "", &reading("sensor-1", 1.0));
            request.send().await.unwrap().status() == 200
        },
    )
    .await;
    assert_eq!(metric_at(&http, &url, "lakegate_upload_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_without_a_length_hold_the_cap_and_a_length_over_it_is_refused_unread() {
    const CAP: usize = 100_000;
    let mut gateway = Harness::builder()
        .env("LAKEGATE_MAX_BODY_BYTES", "100000")
        .env("LAKEGATE_MAX_BODY_BYTES_PER_SENDER", "200000")
        .start()
        .await;
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let sensor = gateway.keys.sensor.clone();

    // Without a length an upload holds the whole cap: two fill the device's bound, with
    // either of its keys.
    let mut first = HeldUpload::admitted(&address, &sensor, None).await;
    let second = HeldUpload::admitted(&address, &gateway.keys.sensor_next, None).await;
    first.send(b"[").await.unwrap();
    let mut third = HeldUpload::start(&address, &sensor, None, b"[").await;
    let answer = third.answer().await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (429, &json!("too_many_uploads")),
        "{}",
        answer.body
    );
    assert!(answer.retry_after.is_some());
    wait_for_upload_bytes(&gateway.http, &gateway.url, 2 * CAP).await;

    // A declared length over the cap is refused at once, its body unread.
    let mut too_long = HeldUpload::start(&address, &gateway.keys.other, Some(CAP + 1), b"[").await;
    let answer = too_long.answer().await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (413, &json!("body_too_large")),
        "{}",
        answer.body
    );

    // A held upload that ends is taken like any other and gives its bytes back.
    let rest = format!("{}]", reading("chunked-1", 1.0));
    first.send(rest.as_bytes()).await.unwrap();
    first.finish().await;
    let answer = first.answer().await;
    assert_eq!(
        (answer.status, &answer.body["committed"]),
        (200, &json!(true)),
        "{}",
        answer.body
    );
    wait_for_upload_bytes(&gateway.http, &gateway.url, CAP).await;
    drop(second);
    wait_for_upload_bytes(&gateway.http, &gateway.url, 0).await;
    let (status, body) = gateway.post_json(&sensor, &reading("after", 1.0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.row_count().await, 2);
    gateway.stop().await;
}
