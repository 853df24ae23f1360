//! `POST /api/v2/write`: InfluxDB line protocol as InfluxDB 2 takes it, at the gateway
//! and at a site relay, checked in the table: every field type and precision, gzip,
//! partial writes with line numbers, resends landing once, and `/ingest`'s limits.

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use lakegate::databricks::Value;
use lakegate_testkit::TABLE;
use lakegate_testkit::emulator_config;
use serde_json::Value as Json;

use crate::relay::Site;
use lakegate_testkit::gateway::{Harness, respond};

/// 2026-12-01T10:00:00Z in seconds.
const SECOND: i64 = 1_796_119_200;

/// A write of `lines` to `url` (the gateway's or a relay's) as an Influx client sends
/// it: `Authorization: Token`, org and bucket in the query.
fn write(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    key: &str,
    lines: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    http.post(format!("{url}/api/v2/write?org=site&bucket=plant&{query}"))
        .header("Authorization", format!("Token {key}"))
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(lines)
}

/// The answer: status, and the JSON body or Null for an empty one.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Json) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = match text.is_empty() {
        true => Json::Null,
        false => serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}")),
    };
    (status, body)
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// (line number, reason) of each line an answer lists as rejected.
fn refused_lines(body: &Json) -> Vec<(u64, &str)> {
    (body["rejected"].as_array().unwrap().iter())
        .map(|r| (r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect()
}

/// Rows of the table: (device, metric, value, value_str, ts as RFC 3339).
async fn rows(gateway: &Harness) -> Vec<(String, String, Value, Value, Value)> {
    let sql = format!(
        "SELECT device_id, metric, value, value_str, ts FROM {TABLE} ORDER BY device_id, metric, ts, value"
    );
    gateway
        .query(&sql)
        .await
        .into_iter()
        .map(|row| {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => panic!("expected a string, got {other:?}"),
            };
            (
                text(&row[0]),
                text(&row[1]),
                row[2].clone(),
                row[3].clone(),
                row[4].clone(),
            )
        })
        .collect()
}

fn at(ts: &str) -> Value {
    Value::Timestamp(ts.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_of_every_field_type_and_precision_land_once() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let send = |query: &str, lines: String| write(&gateway.http, &gateway.url, query, &key, lines);

    // Every field type, escapes, a comment and a blank line; precision s.
    let lines = format!(
        "# a comment\n\nweather,site=north temp=21.5,count=7i,total=9u,open=t,\
         state=\"say \\\"hi\\\"\" {SECOND}\n"
    );
    let (status, body) = answer(send("precision=s", lines.clone())).await;
    assert_eq!((status, body), (204, Json::Null));
    // 204 means committed: no waiting.
    let ts = at("2026-12-01T10:00:00Z");
    let expected = |metric: &str, value: Value, value_str: Value| {
        (
            "sensor-1".to_owned(),
            metric.to_owned(),
            value,
            value_str,
            ts.clone(),
        )
    };
    assert_eq!(
        rows(&gateway).await,
        [
            expected("weather.count", Value::Float(7.0), Value::Null),
            expected("weather.open", Value::Float(1.0), Value::Null),
            expected(
                "weather.state",
                Value::Null,
                Value::String("say \"hi\"".into())
            ),
            expected("weather.temp", Value::Float(21.5), Value::Null),
            expected("weather.total", Value::Float(9.0), Value::Null),
        ]
    );

    // The same instant at every other precision, gzipped and not, and under
    // X-API-Key: the same readings, written once.
    let instant = [
        ("precision=ms", SECOND * 1_000),
        ("precision=us", SECOND * 1_000_000),
        ("precision=ns", SECOND * 1_000_000_000),
        ("", SECOND * 1_000_000_000),
    ];
    for (query, timestamp) in instant {
        let resent = lines.replace(&SECOND.to_string(), &timestamp.to_string());
        let (status, body) = answer(send(query, resent.clone())).await;
        assert_eq!((status, &body), (204, &Json::Null), "{query}");
        let zipped = send(query, String::new())
            .header("Content-Encoding", "gzip")
            .body(gzip(&resent));
        assert_eq!(answer(zipped).await, (204, Json::Null), "{query}");
    }
    let by_api_key = gateway
        .post_to("/api/v2/write?precision=s", &key)
        .body(lines);
    assert_eq!(answer(by_api_key).await, (204, Json::Null));
    assert_eq!(gateway.row_count().await, 5);

    // Sub-second timestamps keep their fraction; another
    // tag value is another series, so another reading at the same instant.
    let (status, _) = answer(send(
        "precision=ns",
        format!(
            "weather,site=north temp=1 {0}123000000\nweather,site=south temp=2 {0}123000000\n",
            SECOND
        ),
    ))
    .await;
    assert_eq!(status, 204);
    let temps: Vec<(Value, Value)> = rows(&gateway)
        .await
        .into_iter()
        .filter(|row| row.1 == "weather.temp")
        .map(|row| (row.2, row.4))
        .collect();
    let fine = at("2026-12-01T10:00:00.123Z");
    assert_eq!(
        temps,
        [
            (Value::Float(21.5), ts),
            (Value::Float(1.0), fine.clone()),
            (Value::Float(2.0), fine),
        ]
    );

    // ?ack=accept answers once queued.
    let (status, body) = answer(send(
        "precision=s&ack=accept",
        format!("weather door=f {}", SECOND + 1),
    ))
    .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    gateway.wait_for_rows(8, Duration::from_secs(30)).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partial_write_lands_its_valid_lines_and_names_the_others_by_line() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let send = |query: &str, lines: String| write(&gateway.http, &gateway.url, query, &key, lines);

    let lines = format!(
        "# header\nm,a=1 v=1 {SECOND}\nm,a=1 v=oops {SECOND}\nbad\\ name v=1 {SECOND}\n\n\
         m,a=2 v=2 {SECOND}\nm v=1 12\n"
    );
    let (status, body) = answer(send("precision=s", lines)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), &body["committed"]),
        (Some(2), &Json::Bool(true))
    );
    let refused = refused_lines(&body);
    assert_eq!(
        refused,
        [
            (3, "invalid_line_protocol"),
            (4, "invalid_metric_name"),
            (7, "ts_out_of_range"),
        ]
    );
    assert!(
        body["rejected"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3: field \"v\" is not a float"),
        "{body}"
    );
    assert_eq!(gateway.row_count().await, 2);

    // None valid: 400, with the same list.
    let (status, body) = answer(send("", "nonsense\nm v=\"open\n".to_owned())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("no_valid_readings")),
        "{body}"
    );
    assert_eq!(body["rejected"][1]["line"], 2);

    // The request's own errors, as /ingest answers them.
    let (status, body) = answer(send("precision=h", "m v=1".to_owned())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, body) = answer(
        send("", String::new())
            .header("Content-Encoding", "gzip")
            .body("not gzip"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_encoding"))
    );
    let (status, body) = answer(write(&gateway.http, &gateway.url, "", "nope", "m v=1")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(gateway.row_count().await, 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_limit_of_ingest_applies() {
    let mut config = emulator_config();
    config.faults.statement_latency = Duration::from_millis(1500);
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_QUEUE_MAX_BYTES", "7000")
        .env("LAKEGATE_MAX_BODY_BYTES", "4500")
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "1")
        .env("LAKEGATE_MAX_METRICS_PER_READING", "4")
        .start()
        .await;
    let key = gateway.keys.sensor.clone();
    let send = |query: &str, key: &str, lines: String| {
        write(&gateway.http, &gateway.url, query, key, lines)
    };

    // Body and readings caps, before and after gzip.
    let (status, body) = answer(send("", &key, "m v=1\n".repeat(1000))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let bomb = send("", &key, String::new())
        .header("Content-Encoding", "gzip")
        .body(gzip(&"m v=1\n".repeat(10_000)));
    let (status, body) = answer(bomb).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let (status, body) = answer(send("", &key, "m v=1\nm v=2\n".to_owned())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_many_readings"))
    );

    // Queue bytes: long strings fill the budget after one request.
    let long = "x".repeat(1000);
    let heavy = |n: i64| {
        format!(
            "m a=\"{long}\",b=\"{long}\",c=\"{long}\",d=\"{long}\" {}",
            SECOND + n
        )
    };
    let (status, body) = answer(send("precision=s&ack=accept", &key, heavy(1))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = answer(send("precision=s&ack=accept", &key, heavy(2))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    gateway.wait_for_rows(4, Duration::from_secs(30)).await;

    // The device's request rate (slow-1: burst 3, 1/s), with Retry-After.
    let slow = gateway.keys.slow.clone();
    let mut limited = None;
    for n in 0..6 {
        let response = send(
            "precision=s&ack=accept",
            &slow,
            format!("s v=1 {}", SECOND + n),
        )
        .send()
        .await
        .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the slow device was never limited");
    assert!(limited.headers().contains_key("retry-after"));
    let (_, body) = respond(limited).await;
    assert_eq!(body["error"], "device_rate_limited", "{body}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_takes_lines_from_devices_and_from_a_relay_key_naming_them() {
    let site = Site::new();
    let gateway = site.gateway().await;
    let relay = site.relay(&gateway.url, &[]);
    let pump = site.key("pump-1").to_owned();

    // A device's own lines: 204 once spooled, forwarded, written.
    let lines = format!("flow,line=a rate=1.5 {SECOND}\nflow,line=b rate=2.5 {SECOND}\n");
    let request = write(&relay.http, &relay.url, "precision=s", &pump, lines.clone());
    assert_eq!(answer(request).await, (204, Json::Null));
    gateway.wait_for_rows(2, Duration::from_secs(30)).await;

    // The same lines straight to the gateway: the same identities, nothing new.
    let request = write(&gateway.http, &gateway.url, "precision=s", &pump, lines);
    assert_eq!(answer(request).await, (204, Json::Null));
    assert_eq!(gateway.row_count().await, 2);

    // A relay key: each line names its device in a device_id tag, checked against the
    // devices the relay may speak for.
    let named = format!(
        "flow,device_id=pump-2 rate=3 {SECOND}\nflow,device_id=other-9 rate=4 {SECOND}\n\
         flow rate=5 {SECOND}\n"
    );
    let request = write(
        &relay.http,
        &relay.url,
        "precision=s",
        &site.relay_key,
        named,
    );
    let (status, body) = answer(request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), &body["spooled"]),
        (Some(1), &Json::Bool(true))
    );
    let refused = refused_lines(&body);
    assert_eq!(
        refused,
        [(2, "device_not_allowed"), (3, "missing_device_id")]
    );
    gateway.wait_for_rows(3, Duration::from_secs(30)).await;
    let devices: Vec<String> = rows(&gateway).await.into_iter().map(|row| row.0).collect();
    assert_eq!(devices, ["pump-1", "pump-1", "pump-2"]);
}
