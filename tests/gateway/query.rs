//! The read API: readings ingested through `POST /ingest`, read back route by
//! route and value by value; every refusal; who may read.

use chrono::{DateTime, DurationRound, SecondsFormat, TimeDelta, Utc};
use lakegate::devices::{generate_key, hash_key};
use lakegate_testkit::emulator_config;
use secrecy::ExposeSecret;
use serde_json::{Value as Json, json};

use lakegate_testkit::gateway::{Harness, respond};

/// A gateway that accepts `token` as a reader token, with `extra` settings.
async fn gateway_with_reader(extra: &[(&str, &str)]) -> (Harness, String) {
    let token = generate_key().key.expose_secret().to_owned();
    let hash = hash_key(&token);
    let mut env = vec![("LAKEGATE_READER_TOKENS", hash.as_str())];
    env.extend_from_slice(extra);
    (Harness::builder().envs(&env).start().await, token)
}

async fn read(gateway: &Harness, path: &str, token: &str) -> (u16, Json) {
    let response = gateway
        .http
        .get(format!("{}{path}", gateway.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    respond(response).await
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time(value: &Json) -> DateTime<Utc> {
    value.as_str().expect("a time string").parse().unwrap()
}

fn reading(id: &str, ts: DateTime<Utc>, metrics: Json) -> Json {
    json!({"id": id, "ts": rfc3339(ts), "metrics": metrics})
}

/// (t, min, avg, max, count) of each point.
fn points(series: &Json) -> Vec<(DateTime<Utc>, f64, f64, f64, i64)> {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                time(&p["t"]),
                p["min"].as_f64().unwrap(),
                p["avg"].as_f64().unwrap(),
                p["max"].as_f64().unwrap(),
                p["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_reads_back_what_was_ingested() {
    let (mut gateway, token) = gateway_with_reader(&[]).await;
    let now = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap();
    // Three 5-minute buckets two hours ago (A, B, and C after an empty one), plus the last hour.
    let t0 = (now - TimeDelta::hours(2))
        .duration_trunc(TimeDelta::minutes(5))
        .unwrap();
    let s = TimeDelta::seconds;
    let sensor_1 = json!([
        reading("a-1", t0 + s(10), json!({"temp": 1.0})),
        reading("a-2", t0 + s(20), json!({"temp": "n/a"})),
        reading("a-3", t0 + s(70), json!({"temp": 3.0})),
        reading("a-4", t0 + s(290), json!({"temp": 5.0})),
        reading("b-1", t0 + s(300), json!({"temp": 10.0})),
        reading("c-1", t0 + s(900), json!({"temp": 2.0})),
        reading("c-2", t0 + s(1199), json!({"temp": 4.0, "rpm": 900})),
        reading("h-1", now - TimeDelta::minutes(10), json!({"temp": 7.0})),
        reading(
            "h-2",
            now - TimeDelta::minutes(5),
            json!({"temp": 8.0, "door_open": true, "state": "idle"})
        ),
    ]);
    let (status, answer) = gateway.post_json(&gateway.keys.sensor, &sensor_1).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(9)), "{answer}");
    let sensor_2 = json!([
        reading("old-1", now - TimeDelta::days(2), json!({"level": 0.5})),
        reading(
            "new-1",
            now - TimeDelta::minutes(30),
            json!({"level": 0.75})
        ),
    ]);
    assert_eq!(
        gateway.post_json(&gateway.keys.other, &sensor_2).await.0,
        200
    );
    // Rejections: one from sensor-1 (in a partly valid request), two from sensor-2.
    let partly = json!([{"ts": "soon", "metrics": {"temp": 1}}, reading("a-1", t0 + s(10), json!({"temp": 1.0}))]);
    assert_eq!(
        gateway.post_json(&gateway.keys.sensor, &partly).await.0,
        200
    );
    let bad = json!([{"ts": "x", "metrics": {"a": 1}}, {"ts": "y", "metrics": {"a": 1}}]);
    assert_eq!(gateway.post_json(&gateway.keys.other, &bad).await.0, 400);

    let (status, devices) = read(&gateway, "/api/devices", &token).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["truncated"], false);
    assert!((time(&devices["generated_at"]) - Utc::now()).abs() < TimeDelta::minutes(1));
    let listed = devices["devices"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{devices}");
    let expected = [
        (
            "sensor-1",
            now - TimeDelta::minutes(5),
            2,
            9,
            json!(["door_open", "rpm", "state", "temp"]),
            1,
        ),
        (
            "sensor-2",
            now - TimeDelta::minutes(30),
            1,
            1,
            json!(["level"]),
            2,
        ),
    ];
    for (device, (id, last_seen, hour, day, metrics, rejected)) in listed.iter().zip(expected) {
        assert_eq!(device["device_id"], id);
        assert_eq!(time(&device["last_seen"]), last_seen, "{device}");
        assert_eq!(device["readings_last_hour"], hour, "{device}");
        assert_eq!(device["readings_last_day"], day, "{device}");
        assert_eq!(device["metrics"], metrics, "{device}");
        assert_eq!(device["rejected_since_start"], rejected, "{device}");
    }

    // Explicit 5-minute buckets over A, B, (empty), C: string values are left out.
    let path = format!(
        "/api/devices/sensor-1/series?metric=temp&bucket=5m&from={}&to={}",
        rfc3339(t0),
        rfc3339(t0 + TimeDelta::minutes(20))
    );
    let (status, series) = read(&gateway, &path, &token).await;
    assert_eq!(status, 200, "{series}");
    assert_eq!(
        (&series["device_id"], &series["metric"], &series["bucket"]),
        (&json!("sensor-1"), &json!("temp"), &json!("5m"))
    );
    assert_eq!(
        (time(&series["from"]), time(&series["to"])),
        (t0, t0 + TimeDelta::minutes(20))
    );
    assert_eq!(
        points(&series),
        [
            (t0, 1.0, 3.0, 5.0, 3),
            (t0 + TimeDelta::minutes(5), 10.0, 10.0, 10.0, 1),
            (t0 + TimeDelta::minutes(15), 2.0, 3.0, 4.0, 2),
        ]
    );

    // Without `to` and `from`: the last hour, in minutes.
    let (_, series) = read(&gateway, "/api/devices/sensor-1/series?metric=temp", &token).await;
    assert_eq!(series["bucket"], "1m");
    let minute = |at: DateTime<Utc>| at.duration_trunc(TimeDelta::minutes(1)).unwrap();
    assert_eq!(
        points(&series),
        [
            (minute(now - TimeDelta::minutes(10)), 7.0, 7.0, 7.0, 1),
            (minute(now - TimeDelta::minutes(5)), 8.0, 8.0, 8.0, 1),
        ]
    );
    assert!(time(&series["to"]) - now < TimeDelta::minutes(1));
    assert_eq!(
        time(&series["to"]) - time(&series["from"]),
        TimeDelta::hours(1)
    );

    // Automatic buckets: the smallest that gives at most 500 points.
    for (range, bucket) in [
        (TimeDelta::hours(8), "1m"),
        (TimeDelta::hours(41), "5m"),
        (TimeDelta::days(3), "1h"),
        (TimeDelta::days(30), "1d"),
    ] {
        let path = format!(
            "/api/devices/sensor-1/series?metric=temp&from={}",
            rfc3339(now - range)
        );
        let (status, series) = read(&gateway, &path, &token).await;
        assert_eq!(
            (status, &series["bucket"]),
            (200, &json!(bucket)),
            "{series}"
        );
        let total: i64 = points(&series).iter().map(|p| p.4).sum();
        assert_eq!(total, 8, "{bucket}: every numeric temp reading, once");
    }

    // Latest: newest first, one entry per reading with all its metrics.
    let (status, latest) = read(&gateway, "/api/devices/sensor-1/latest?limit=3", &token).await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["device_id"], "sensor-1");
    let readings = latest["readings"].as_array().unwrap();
    let ids: Vec<&str> = readings
        .iter()
        .map(|r| r["reading_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h-2", "h-1", "c-2"]);
    assert_eq!(
        readings[0]["metrics"],
        json!({"door_open": 1.0, "state": "idle", "temp": 8.0})
    );
    assert_eq!(time(&readings[0]["ts"]), now - TimeDelta::minutes(5));
    assert!((time(&readings[0]["ingested_at"]) - Utc::now()).abs() < TimeDelta::minutes(1));
    assert_eq!(readings[2]["metrics"], json!({"rpm": 900.0, "temp": 4.0}));
    let (_, latest) = read(&gateway, "/api/devices/sensor-1/latest", &token).await;
    let readings = latest["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 9);
    assert_eq!(readings[8]["reading_id"], "a-1");
    assert_eq!(readings[7]["metrics"], json!({"temp": "n/a"}));

    // Unknown devices and metrics: the table is the truth, so empty rather than 404.
    let (status, series) = read(&gateway, "/api/devices/nobody/series?metric=temp", &token).await;
    assert_eq!((status, &series["points"]), (200, &json!([])));
    let (status, latest) = read(&gateway, "/api/devices/nobody/latest", &token).await;
    assert_eq!((status, &latest["readings"]), (200, &json!([])));

    let (status, stats) = read(&gateway, "/api/stats", &token).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["readings_accepted_total"], 12, "{stats}");
    assert_eq!(stats["readings_per_sec_1m"], 12.0 / 60.0, "{stats}");
    assert_eq!(stats["rejected_total"], 3);
    assert_eq!(stats["rejected_by_reason"], json!({"invalid_ts": 3}));
    assert_eq!(stats["queue_rows"], 0);
    assert_eq!(stats["devices_in_registry"], 4);
    assert_eq!(stats["batch_failures"], 0);
    assert!(stats["batches_committed"].as_u64().unwrap() >= 3, "{stats}");
    assert!(
        stats["batch_latency_ms_last"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert!(
        stats["batch_latency_ms_avg"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert!(stats["uptime_secs"].as_u64().is_some());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_parameters_are_400_naming_the_parameter() {
    let (mut gateway, token) = gateway_with_reader(&[]).await;
    let now = Utc::now();
    let ago = |delta: TimeDelta| rfc3339(now - delta);
    let series = "/api/devices/sensor-1/series?metric=temp";
    let cases = [
        (format!("{series}&from=yesterday"), "from"),
        (format!("{series}&to=2026-11-29"), "to"),
        (
            format!(
                "{series}&from={}&to={}",
                ago(TimeDelta::zero()),
                ago(TimeDelta::hours(1))
            ),
            "from",
        ),
        (
            format!(
                "{series}&from={}&to={}",
                ago(TimeDelta::hours(1)),
                ago(TimeDelta::hours(1))
            ),
            "from",
        ),
        (
            format!("{series}&from={}", ago(TimeDelta::days(91))),
            "from",
        ),
        (format!("{series}&bucket=2m"), "bucket"),
        (
            format!("{series}&bucket=1m&from={}", ago(TimeDelta::days(2))),
            "bucket",
        ),
        ("/api/devices/sensor-1/series".to_owned(), "metric"),
        ("/api/devices/sensor-1/series?metric=".to_owned(), "metric"),
        ("/api/devices/sensor-1/latest?limit=0".to_owned(), "limit"),
        ("/api/devices/sensor-1/latest?limit=501".to_owned(), "limit"),
        (
            "/api/devices/sensor-1/latest?limit=many".to_owned(),
            "limit",
        ),
        ("/api/devices/bad%20id/latest".to_owned(), "device_id"),
    ];
    for (path, parameter) in cases {
        let (status, body) = read(&gateway, &path, &token).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("invalid_parameter")),
            "{path}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{parameter}: ")),
            "{path}: {message}"
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_readers_may_read() {
    // Room for every refusal below before failed authentications are rate limited.
    let (mut gateway, token) = gateway_with_reader(&[("LAKEGATE_AUTH_FAILURE_BURST", "100")]).await;
    let routes = [
        "/api/devices",
        "/api/devices/sensor-1/series?metric=temp",
        "/api/devices/sensor-1/latest",
        "/api/stats",
    ];
    for route in routes {
        let url = format!("{}{route}", gateway.url);
        let (status, body) = respond(gateway.http.get(&url).send().await.unwrap()).await;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("unauthorized")),
            "{route}"
        );
        assert_eq!(read(&gateway, route, "lgk_wrong").await.0, 401, "{route}");
        // A device key grants writing only, in either header.
        let device_key = gateway
            .http
            .get(&url)
            .header("X-API-Key", &gateway.keys.sensor);
        assert_eq!(device_key.send().await.unwrap().status(), 401, "{route}");
        assert_eq!(
            read(&gateway, route, &gateway.keys.sensor).await.0,
            401,
            "{route}"
        );
        // Not behind the Apps proxy, its headers mean nothing.
        let forged = gateway
            .http
            .get(&url)
            .header("X-Forwarded-Email", "eve@example.com");
        assert_eq!(forged.send().await.unwrap().status(), 401, "{route}");
        assert_eq!(read(&gateway, route, &token).await.0, 200, "{route}");
    }
    gateway.stop().await;

    // No reader tokens and no proxy: the read API is off, and says how to turn it on.
    let mut gateway = Harness::start().await;
    let (status, body) = read(&gateway, "/api/devices", &token).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("read_api_disabled")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("LAKEGATE_READER_TOKENS")
    );
    gateway.stop().await;
}

/// `GET /api/devices` with these headers only.
async fn devices_with(gateway: &Harness, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut request = gateway.http.get(format!("{}/api/devices", gateway.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    respond(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_sign_in_headers_alone_read_nothing() {
    // On Apps every principal that may use the app passes the proxy, the fleet's
    // device principal too: being signed in is no permission to read.
    let mut gateway = Harness::builder()
        .env("LAKEGATE_APPS_PROXY_AUTH", "true")
        .start()
        .await;
    let statements_before = gateway.emulator.stats().statements;
    for signed_in in [
        [("X-Forwarded-Email", "fleet-sp@example.com")],
        [("X-Forwarded-User", "1234@5678")],
    ] {
        let (status, body) = devices_with(&gateway, &signed_in).await;
        assert_eq!(
            (status, &body["error"]),
            (403, &json!("no_user_token")),
            "{body}"
        );
    }
    assert_eq!(gateway.emulator.stats().statements, statements_before);
    // No sign-in and no reader token configured: the read API is off.
    assert_eq!(devices_with(&gateway, &[]).await.0, 404);
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    let counted = r#"lakegate_auth_failures_total{kind="reader",outcome="no_user_token"} 2"#;
    assert!(metrics.contains(counted), "{metrics}");
    gateway.stop().await;

    // Behind some other reverse proxy, the same headers are only the client's claims.
    let mut gateway = Harness::builder()
        .env("LAKEGATE_TRUSTED_PROXIES", "127.0.0.0/8")
        .start()
        .await;
    let (status, body) = devices_with(&gateway, &[("X-Forwarded-Email", "ana@example.com")]).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("read_api_disabled")),
        "{body}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_listed_users_read_with_the_apps_identity() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_APPS_PROXY_AUTH", "true")
        .env("LAKEGATE_READ_IDENTITY", "app")
        .env("LAKEGATE_READERS", "ana@example.com, 4321@5678")
        .start()
        .await;
    // The app's identity, not the user's token (which the workspace would refuse).
    let (status, body) = devices_with(
        &gateway,
        &[
            ("X-Forwarded-Email", "Ana@Example.com"),
            ("X-Forwarded-Access-Token", "not-a-workspace-token"),
        ],
    )
    .await;
    assert_eq!((status, &body["devices"]), (200, &json!([])), "{body}");
    assert_eq!(
        devices_with(&gateway, &[("X-Forwarded-User", "4321@5678")])
            .await
            .0,
        200
    );

    let statements_before = gateway.emulator.stats().statements;
    for not_listed in [
        [
            ("X-Forwarded-Email", "fleet-sp@example.com"),
            ("X-Forwarded-User", "1234@5678"),
        ],
        [
            ("X-Forwarded-Email", "eve@example.com"),
            ("X-Forwarded-User", "9999@5678"),
        ],
    ] {
        let (status, body) = devices_with(&gateway, &not_listed).await;
        assert_eq!(
            (status, &body["error"]),
            (403, &json!("not_a_reader")),
            "{body}"
        );
    }
    assert_eq!(gateway.emulator.stats().statements, statements_before);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_behalf_of_user_queries_carry_the_users_token() {
    const USER_PAT: &str = "dapi-user-token-never-logged";
    const BAD_TOKEN: &str = "expired-user-token-never-logged";
    let logs = crate::logs::capture();
    let emulator = lakegate_emulator::EmulatorConfig {
        tokens: vec![USER_PAT.into()],
        ..emulator_config()
    };
    // On behalf of the user is the default behind the Apps proxy.
    let mut gateway = Harness::builder()
        .emulator(emulator)
        .env("LAKEGATE_APPS_PROXY_AUTH", "true")
        .start()
        .await;
    let email = ("X-Forwarded-Email", "ana@example.com");
    // The workspace checks the user's token: a valid one reads, a bad one is refused there.
    let (status, body) =
        devices_with(&gateway, &[email, ("X-Forwarded-Access-Token", USER_PAT)]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        devices_with(&gateway, &[email, ("X-Forwarded-Access-Token", BAD_TOKEN)]).await;
    assert_eq!(
        (status, &body["error"]),
        (502, &json!("query_failed")),
        "{body}"
    );
    assert!(!body.to_string().contains(BAD_TOKEN), "{body}");
    // Without a user token there is no falling back to the app's own identity.
    let (status, body) = devices_with(&gateway, &[email]).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("no_user_token")),
        "{body}"
    );
    gateway.stop().await;

    // The failed query was logged, the tokens never.
    let logged = logs.text();
    assert!(logged.contains("read query failed"), "{logged}");
    for token in [USER_PAT, BAD_TOKEN] {
        assert!(!logged.contains(token), "{token} logged:\n{logged}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_series_come_as_arrow() {
    let (mut gateway, token) = gateway_with_reader(&[
        ("LAKEGATE_DEVICE_RATE_PER_SEC", "5000"),
        ("LAKEGATE_DEVICE_BURST", "5000"),
    ])
    .await;
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let from = now - TimeDelta::minutes(1100);
    // One reading per minute: 1100 one-minute buckets.
    let readings: Vec<Json> = (0..1100)
        .map(|i| {
            reading(
                &format!("m-{i}"),
                from + TimeDelta::minutes(i) + TimeDelta::seconds(30),
                json!({"temp": i as f64}),
            )
        })
        .collect();
    for chunk in readings.chunks(550) {
        let (status, answer) = gateway.post_json(&gateway.keys.sensor, &json!(chunk)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let downloads = gateway.emulator.stats().link_downloads;
    let path = format!(
        "/api/devices/sensor-1/series?metric=temp&bucket=1m&from={}&to={}",
        rfc3339(from),
        rfc3339(now)
    );
    let (status, series) = read(&gateway, &path, &token).await;
    assert_eq!(status, 200, "{series}");
    assert!(
        gateway.emulator.stats().link_downloads > downloads,
        "read through external links"
    );
    let points = points(&series);
    assert_eq!(points.len(), 1100);
    for (i, point) in points.iter().enumerate() {
        let value = i as f64;
        assert_eq!(
            *point,
            (from + TimeDelta::minutes(i as i64), value, value, value, 1)
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_device_list_is_capped() {
    let (mut gateway, token) = gateway_with_reader(&[("LAKEGATE_QUERY_MAX_DEVICES", "1")]).await;
    let now = Utc::now();
    for key in [&gateway.keys.sensor, &gateway.keys.other] {
        let body = reading("r-1", now, json!({"temp": 1.0}));
        assert_eq!(gateway.post_json(key, &body).await.0, 200);
    }
    let (status, devices) = read(&gateway, "/api/devices", &token).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["truncated"], true);
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
    assert_eq!(devices["devices"][0]["device_id"], "sensor-1");
    assert_eq!(devices["devices"][0]["metrics"], json!(["temp"]));
    gateway.stop().await;
}

/// Reads never starve writes: the device list is computed once for many dashboards and
/// kept briefly, covers a recent window only, read statements have their own few slots,
/// and each reader its own rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_share_one_device_list_query_within_a_recent_window() {
    let (mut gateway, token) = gateway_with_reader(&[
        ("LAKEGATE_DEVICE_LIST_CACHE_SECS", "60"),
        ("LAKEGATE_DEVICE_LIST_WINDOW_DAYS", "1"),
    ])
    .await;
    let now = Utc::now();
    let recent = reading("r-1", now, json!({"temp": 1.0}));
    let old = reading("o-1", now - TimeDelta::days(3), json!({"temp": 1.0}));
    assert_eq!(
        gateway.post_json(&gateway.keys.sensor, &recent).await.0,
        200
    );
    assert_eq!(gateway.post_json(&gateway.keys.other, &old).await.0, 200);

    let before = gateway.emulator.stats().statements;
    let asking = (0..20).map(|_| read(&gateway, "/api/devices", &token));
    let answers = futures::future::join_all(asking).await;
    for (status, devices) in &answers {
        assert_eq!(*status, 200, "{devices}");
        let listed = devices["devices"].as_array().unwrap();
        // sensor-2 last sent three days ago: outside the one-day window.
        assert_eq!(listed.len(), 1, "{devices}");
        assert_eq!(listed[0]["device_id"], "sensor-1");
    }
    // One list and one metrics query for all twenty, and none for a repeat.
    assert_eq!(gateway.emulator.stats().statements - before, 2);
    assert_eq!(read(&gateway, "/api/devices", &token).await.0, 200);
    assert_eq!(gateway.emulator.stats().statements - before, 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_reader_has_its_own_rate_and_read_slots_run_out_politely() {
    let second = generate_key().key.expose_secret().to_owned();
    let second_hash = hash_key(&second);
    let mut config = emulator_config();
    config.faults.statement_latency = std::time::Duration::from_millis(1500);
    let token = generate_key().key.expose_secret().to_owned();
    let hashes = format!("{},{second_hash}", hash_key(&token));
    let mut gateway = Harness::builder()
        .emulator(config)
        .env("LAKEGATE_READER_TOKENS", hashes.as_str())
        .env("LAKEGATE_READER_REQUESTS_PER_MIN", "1")
        .env("LAKEGATE_READER_BURST", "2")
        .env("LAKEGATE_QUERY_CONCURRENCY", "1")
        .env("LAKEGATE_QUERY_WAIT_SECS", "1")
        .start()
        .await;
    let latest = "/api/devices/sensor-1/latest";
    // Two reads at once with one slot: the second waits a second, then hears 503.
    let (first, busy) = tokio::join!(read(&gateway, latest, &token), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        read(&gateway, latest, &token).await
    });
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(
        (busy.0, busy.1["error"].as_str()),
        (503, Some("reads_busy")),
        "{}",
        busy.1
    );

    // The third request of this reader is over its burst of two; another reader is not.
    let (status, answer) = read(&gateway, latest, &token).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("reader_rate_limited")),
        "{answer}"
    );
    assert_eq!(read(&gateway, latest, &second).await.0, 200);
    gateway.stop().await;
}
