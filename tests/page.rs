//! The fleet page in a real browser: Debian's Chromium, headless, against the
//! gateway in front of the in-process emulator, reading the API with a reader token.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use lakegate::devices::{generate_key, hash_key};
use lakegate_testkit::gateway::Harness;
use lakegate_testkit::poll;
use secrecy::ExposeSecret;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long one browser run may take before the test gives up on it.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Minutes ago (from the start of the current minute) of the readings of sensor-1:
/// every one in its own 1-minute bucket of the page's default range (the last hour):
/// consecutive buckets, buckets two apart (still one line) and one alone (a bar).
const MINUTES_AGO: [i64; 12] = [2, 3, 4, 5, 20, 22, 24, 26, 40, 41, 42, 57];
/// The lines the chart draws for MINUTES_AGO: 2-5, 20-26, 40-42 and 57 on its own.
const LINES: usize = 4;
/// The browser's zone in the test, not UTC, so the axis must say which it is (one
/// without summer time and that ICU does not rename).
const BROWSER_ZONE: &str = "Asia/Tokyo";
const BROWSER_ZONE_NAME: &str = "Asia/Tokyo, UTC+09:00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_lists_devices_and_draws_the_series() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the page test needs Debian's Chromium \
         (`sudo apt-get install chromium`; .ci/run installs it)"
    );

    let token = generate_key().key.expose_secret().to_owned();
    let mut gateway = Harness::builder()
        .env("LAKEGATE_READER_TOKENS", &hash_key(&token))
        // The list is read below before the readings exist; the page must see them.
        .env("LAKEGATE_DEVICE_LIST_CACHE_SECS", "0")
        .start()
        .await;

    // The API answers, with the token only (the page shows the error otherwise).
    let devices = gateway
        .http
        .get(format!("{}/api/devices", gateway.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        devices.status(),
        200,
        "GET /api/devices must answer before the page can: {}",
        devices.text().await.unwrap_or_default()
    );

    // sensor-1: two readings in each of 12 minutes of the last hour. The page charts
    // temperature without a click: door_open (first by name) is in as many readings but
    // only 0/1, humidity (before temperature by name) is in half of them.
    let minute = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    let mut readings = Vec::new();
    for (i, ago) in MINUTES_AGO.iter().enumerate() {
        let bucket = minute - Span::minutes(*ago);
        for (second, offset) in [(10, 0.0), (40, 2.0)] {
            let mut metrics = json!({
                "temperature": 40.0 + i as f64 + offset,
                "door_open": second == 10,
                "state": "idle",
            });
            if second == 10 {
                metrics["humidity"] = json!(55);
            }
            readings.push(json!({
                "id": format!("r-{i}-{second}"),
                "ts": rfc3339(bucket + Span::seconds(second)),
                "metrics": metrics,
            }));
        }
    }
    // One refused reading: the page shows it as rejected since start.
    readings.push(json!({"id": "bad", "ts": "yesterday", "metrics": {"humidity": 1}}));
    let (status, body) = gateway
        .post_json(&gateway.keys.sensor, &json!(readings))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 24, "{body}");
    // sensor-2: three readings in one minute three hours ago, whose average has no end.
    let long_ago = minute - Span::hours(3);
    let pressures: Vec<_> = [1.2, 1.3, 1.5]
        .iter()
        .enumerate()
        .map(|(i, pressure)| {
            json!({"ts": rfc3339(long_ago + Span::seconds(i as i64)), "metrics": {"pressure": pressure}})
        })
        .collect();
    let (status, body) = gateway
        .post_json(&gateway.keys.other, &json!(pressures))
        .await;
    assert_eq!(status, 200, "{body}");

    // What the API answers is rounded at the source: times to the millisecond, the
    // average to the values' decimals plus two, latencies to 0.1 ms and 1 ms.
    let read = async |path: &str| {
        let response = gateway
            .http
            .get(format!("{}{path}", gateway.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json::<serde_json::Value>().await.unwrap()
    };
    let devices = read("/api/devices").await;
    let generated_at = devices["generated_at"].as_str().unwrap();
    let fraction = generated_at
        .split_once('.')
        .map_or("", |(_, fraction)| fraction.trim_end_matches('Z'));
    assert!(fraction.len() <= 3, "to the millisecond: {generated_at}");
    let series = read(&format!(
        "/api/devices/sensor-2/series?metric=pressure&bucket=1m&from={}&to={}",
        rfc3339(long_ago - Span::minutes(5)),
        rfc3339(long_ago + Span::minutes(5)),
    ))
    .await;
    assert_eq!(series["points"][0]["avg"], 1.333, "{series}");
    assert_eq!(series["points"][0]["count"], 3, "{series}");
    let stats = read("/api/stats").await;
    let avg_ms = stats["batch_latency_ms_avg"].as_f64().unwrap();
    let last_ms = stats["batch_latency_ms_last"].as_f64().unwrap();
    assert!(
        avg_ms > 0.0 && (avg_ms * 10.0).fract() == 0.0 && last_ms.fract() == 0.0,
        "{stats}"
    );

    let url = format!("{}/#token={token}", gateway.url);
    let dom = chromium_in(BROWSER_ZONE, &["--dump-dom".to_owned(), url.clone()]).await;

    // The page loaded, read the API without errors, and removed nothing it should keep.
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded:\n{dom}"
    );
    assert!(
        dom.contains("id=\"status-line\" class=\"status\" data-state=\"ok\""),
        "the status line reports a problem:\n{}",
        excerpt(&dom, "id=\"status-line\"")
    );
    assert!(!dom.contains(&token), "the token must not stay in the page");

    // Both devices are listed, sensor-1 first, with its counts and its refused reading.
    let first = dom
        .find("data-device=\"sensor-1\"")
        .expect("sensor-1 is listed");
    let second = dom
        .find("data-device=\"sensor-2\"")
        .expect("sensor-2 is listed");
    assert!(first < second, "devices are sorted");
    let row = &dom[first..second];
    assert!(
        row.contains("aria-pressed=\"true\""),
        "sensor-1 is selected: {row}"
    );
    assert!(row.contains("badge reporting"), "sensor-1 reports: {row}");
    assert!(
        row.contains("door_open, humidity, state, temperature"),
        "{row}"
    );
    assert!(
        row.contains("<td class=\"num\">24</td><td class=\"num\">24</td>"),
        "24 readings in the last hour and day: {row}"
    );
    assert!(
        row.ends_with("<td class=\"num\">1</td></tr><tr "),
        "1 rejected: {row}"
    );
    assert!(excerpt(&dom, "data-device=\"sensor-2\"").contains("badge silent"));

    // The chart: one point per bucket, with the bucket's aggregate.
    let points: Vec<&str> = dom
        .match_indices("<circle class=\"point\"")
        .map(|(at, _)| &dom[at..])
        .collect();
    assert_eq!(
        points.len(),
        MINUTES_AGO.len(),
        "points drawn:\n{}",
        excerpt(&dom, "id=\"chart\"")
    );
    let oldest = minute - Span::minutes(MINUTES_AGO[MINUTES_AGO.len() - 1]);
    let first_point = &points[0][..points[0].find('>').unwrap()];
    assert!(
        first_point.contains(&format!("data-avg=\"{}\"", 40.0 + 11.0 + 1.0))
            && first_point.contains("data-min=\"51\"")
            && first_point.contains("data-max=\"53\"")
            && first_point.contains("data-count=\"2\""),
        "the oldest bucket ({oldest}) aggregates its two readings: {first_point}"
    );
    assert!(dom.contains("class=\"band\""), "the min-max band is drawn");
    // Buckets two apart are one line; only the long gaps break it.
    let line = excerpt(&dom, "class=\"avg\"");
    let line = &line[..line.find('>').expect("the average line is drawn")];
    assert_eq!(line.matches('M').count(), LINES, "lines drawn: {line}");

    // What the user reads: the metric charted, the axis's zone, what the panel counts.
    let caption = excerpt(&dom, "id=\"chart-caption\"");
    assert!(
        caption
            .starts_with("id=\"chart-caption\" class=\"muted\">temperature of sensor-1, last 1 h:"),
        "temperature, the numeric metric in most readings, is charted first: {caption}"
    );
    let zone = format!("Time ({BROWSER_ZONE_NAME})");
    assert!(
        excerpt(&dom, "class=\"zone\"").contains(&format!(">{zone}</text>")),
        "the time axis names the browser's zone ({zone}):\n{}",
        excerpt(&dom, "class=\"axis x-axis\"")
    );
    assert!(
        dom.contains(&format!(
            "id=\"points-zone\" class=\"nowrap\">({BROWSER_ZONE_NAME})<"
        )),
        "the table of points names the zone too"
    );
    let panel = excerpt(&dom, "id=\"gateway-title\"");
    assert!(
        panel.starts_with(
            "id=\"gateway-title\">Gateway <small class=\"muted\">since this process started</small>"
        ),
        "the gateway panel says it counts this process only: {panel}"
    );

    // A screenshot for people (artifacts/ is git-ignored).
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("fleet-page.png");
    let _ = std::fs::remove_file(&png);
    chromium_in(
        BROWSER_ZONE,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,900".to_owned(),
            url,
        ],
    )
    .await;
    let size = std::fs::metadata(&png)
        .map(|m| m.len())
        .unwrap_or_else(|err| panic!("no screenshot at {}: {err}", png.display()));
    assert!(size > 20_000, "the screenshot is only {size} bytes");

    gateway.stop().await;
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Some text around the first `needle`, for failure messages.
fn excerpt<'a>(text: &'a str, needle: &str) -> &'a str {
    let at = text.find(needle).unwrap_or(0);
    let end = (at + 3000).min(text.len());
    let end = (end..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap();
    &text[at..end]
}

/// Runs headless Chromium in time zone `zone` with its own profile; returns its
/// standard output.
async fn chromium_in(zone: &str, args: &[String]) -> String {
    let dir = lakegate_testkit::temp_dir();
    let profile = dir.path().join("profile");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .env("TZ", zone)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("{CHROMIUM} does not start: {err}"));
    let every = Duration::from_millis(100);
    let exited = async || child.try_wait().unwrap();
    let Ok(Some(status)) = poll(BROWSER_TIMEOUT, every, exited, Option::is_some).await else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "chromium did not finish within {BROWSER_TIMEOUT:?}:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    stdout
}
