//! `POST /ingest`: formats, acknowledgements, partial batches and every refusal.

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use lakegate::databricks::Value;
use serde_json::json;

use lakegate_testkit::gateway::{Harness, reading, respond};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_reading_is_committed_before_the_200() {
    let mut gateway = Harness::start().await;
    let body = json!({
        "id": "r-1",
        "ts": "2026-11-29T12:00:00.250Z",
        "device_id": "sensor-1",
        "metrics": {"temperature": 21.5, "door_open": true, "state": "idle"}
    });
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["committed"], true);

    // Committed means visible: no waiting here.
    let rows = gateway.rows().await;
    let expected = [
        ("door_open", Value::Float(1.0), Value::Null),
        ("state", Value::Null, Value::String("idle".into())),
        ("temperature", Value::Float(21.5), Value::Null),
    ];
    assert_eq!(rows.len(), 3);
    for (row, (metric, value, value_str)) in rows.iter().zip(expected) {
        assert_eq!(
            (row.0.as_str(), row.1.as_str(), row.2.as_str()),
            ("sensor-1", "r-1", metric)
        );
        assert_eq!((&row.3, &row.4), (&value, &value_str));
    }
    let ts = gateway
        .query("SELECT ts, ingested_at IS NOT NULL FROM main.lakegate.readings LIMIT 1")
        .await;
    assert_eq!(
        ts[0][0],
        Value::Timestamp("2026-11-29T12:00:00.250Z".parse().unwrap())
    );
    assert_eq!(ts[0][1], Value::Bool(true));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arrays_ndjson_and_gzip_are_accepted() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();

    // Sends one body and checks that it was committed with `expected` readings.
    let committed = |request: reqwest::RequestBuilder, expected: u64| async move {
        let (status, answer) = respond(request.send().await.unwrap()).await;
        assert_eq!(
            (status, answer["accepted"].as_u64()),
            (200, Some(expected)),
            "{answer}"
        );
    };

    let array = json!([reading("a-1", 1.0), reading("a-2", 2.0)]);
    committed(gateway.post(&key).json(&array), 2).await;

    let ndjson = format!(
        "{}\n\n{}\n",
        reading("n-1", 3.0),
        json!({"ts": 1764417600000i64, "metrics": {"rpm": 900}})
    );
    let ndjson_request = gateway
        .post(&key)
        .header("Content-Type", "application/x-ndjson")
        .body(ndjson);
    committed(ndjson_request, 2).await;

    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(json!([reading("g-1", 4.0)]).to_string().as_bytes())
        .unwrap();
    let gzip_request = gateway
        .post(&key)
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(gzip.finish().unwrap());
    committed(gzip_request, 1).await;

    let ids: Vec<String> = gateway.rows().await.into_iter().map(|row| row.1).collect();
    assert_eq!(ids.len(), 5);
    for id in ["a-1", "a-2", "g-1", "n-1"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    // The reading without an id got one derived from its content.
    assert!(ids.iter().any(|i| i.starts_with("h-")), "{ids:?}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valid_readings_are_written_when_others_are_bad() {
    let mut gateway = Harness::start().await;
    let body = json!([
        reading("ok-1", 1.0),
        {"id": "bad-ts", "ts": "yesterday", "metrics": {"t": 1}},
        {"id": "bad-device", "ts": "2026-11-29T12:00:00Z", "device_id": "sensor-2", "metrics": {"t": 1}},
        "not an object",
        reading("ok-2", 2.0),
        reading("ok-1", 1.0),
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    let rejected: Vec<(u64, String)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (1, "invalid_ts".to_owned()),
            (2, "device_mismatch".to_owned()),
            (3, "not_an_object".to_owned()),
            (5, "duplicate_id".to_owned()),
        ]
    );
    let ids: Vec<String> = gateway.rows().await.into_iter().map(|row| row.1).collect();
    assert_eq!(ids, ["ok-1", "ok-2"]);

    // Nothing valid at all: 400 with the same report, nothing written.
    let (status, answer) = gateway
        .post_json(
            &gateway.keys.sensor,
            &json!([{"ts": 5, "metrics": {"t": 1e300, "bad name": 1}}]),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "no_valid_readings");
    assert_eq!(answer["rejected"][0]["index"], 0);
    assert_eq!(gateway.row_count().await, 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accept_mode_answers_202_and_writes_soon_after() {
    let mut gateway = Harness::start().await;
    let (status, answer) = gateway
        .post_json_to(
            "/api/ingest?ack=accept",
            &gateway.keys.sensor,
            &reading("q-1", 1.0),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["committed"], false);
    gateway.wait_for_rows(1, Duration::from_secs(10)).await;

    let (status, answer) = gateway
        .post_json_to(
            "/ingest?ack=whenever",
            &gateway.keys.sensor,
            &reading("q-2", 1.0),
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_parameter")),
        "{answer}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resent_readings_are_written_once() {
    let mut gateway = Harness::start().await;
    let with_id = reading("same", 1.0);
    let without_id = json!({"ts": "2026-11-29T12:00:00Z", "metrics": {"t": 1, "u": 2}});
    for _ in 0..3 {
        let (status, answer) = gateway
            .post_json(&gateway.keys.sensor, &json!([with_id, without_id]))
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(gateway.row_count().await, 3);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_json_errors_naming_the_problem() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_MAX_BODY_BYTES", "2000")
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "5")
        .start()
        .await;
    let json = "application/json";
    let big = format!("[{}]", vec![reading("x", 1.0).to_string(); 40].join(","));
    // A small gzip body that inflates past the cap.
    let mut bomb = GzEncoder::new(Vec::new(), Compression::best());
    bomb.write_all(&vec![b' '; 1_000_000]).unwrap();
    let many = json!(
        (0..6)
            .map(|i| reading(&format!("m-{i}"), 1.0))
            .collect::<Vec<_>>()
    );
    // (Content-Type, Content-Encoding, body, expected status, text the message names)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (json, None, b"{\"ts\": ".to_vec(), 400, "line 1"),
        ("text/csv", None, b"a,b".to_vec(), 415, "text/csv"),
        (json, Some("br"), b"x".to_vec(), 415, "br"),
        (json, Some("gzip"), b"not gzip".to_vec(), 400, "gzip"),
        (json, None, big.into_bytes(), 413, "2000"),
        (json, Some("gzip"), bomb.finish().unwrap(), 413, "2000"),
        (json, None, many.to_string().into_bytes(), 413, "5"),
    ];
    for (content_type, encoding, body, expected, named) in cases {
        let mut request = gateway
            .post(&gateway.keys.sensor)
            .header("Content-Type", content_type);
        if let Some(encoding) = encoding {
            request = request.header("Content-Encoding", encoding);
        }
        let (status, answer) = respond(request.body(body).send().await.unwrap()).await;
        // Every refusal is JSON with a stable code and a message naming the problem.
        assert_eq!(status, expected, "{content_type} {encoding:?}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(named), "{named:?} not in {message:?}");
    }
    assert_eq!(gateway.row_count().await, 0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleartext_http2_is_served() {
    let mut gateway = Harness::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(format!("{}/ingest", gateway.url))
        .header("X-API-Key", &gateway.keys.sensor)
        .json(&reading("h2-1", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_numeric_string_is_stored_as_text_and_the_answer_says_it_will_not_chart() {
    let mut gateway = Harness::start().await;
    let body = json!({
        "id": "r-text",
        "ts": "2026-11-29T12:00:00Z",
        "metrics": {"temperature": "21.5", "state": "idle"}
    });
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(
        answer["notes"],
        json!([
            "metric \"temperature\" of reading \"r-text\" is the string \"21.5\": it is stored \
             as text and will not chart; send it as a JSON number to chart it"
        ])
    );
    let rows = gateway.rows().await;
    let temperature = rows.iter().find(|row| row.2 == "temperature").unwrap();
    assert_eq!(
        (&temperature.3, &temperature.4),
        (&Value::Null, &Value::String("21.5".into()))
    );

    // Numbers as numbers: no notes at all.
    let (status, answer) = gateway
        .post_json(&gateway.keys.sensor, &reading("r-number", 21.5))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("notes").is_none(), "{answer}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_of_one_reading_is_said_in_english_with_its_setting() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_MAX_READINGS_PER_REQUEST", "1")
        .start()
        .await;
    let two = json!([reading("a", 1.0), reading("b", 2.0)]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &two).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        answer["message"],
        "more than 1 reading in one request, the limit LAKEGATE_MAX_READINGS_PER_REQUEST \
         sets; send fewer readings per request"
    );
    gateway.stop().await;
}
