//! The fleet page in a real browser: Debian's Chromium, headless, against the
//! gateway in front of the in-process emulator, reading the API with a reader token.

mod common;
#[allow(dead_code)]
#[path = "gateway/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use harness::Harness;
use lakegate::devices::{generate_key, hash_key};
use lakegate_testkit::{emulator_config, poll};
use secrecy::ExposeSecret;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long one browser run may take before the test gives up on it.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Minutes ago (from the start of the current minute) of the readings of sensor-1:
/// every one in its own 1-minute bucket of the page's default range (the last hour),
/// in runs of consecutive buckets (a line) and alone (a bar).
const MINUTES_AGO: [i64; 12] = [2, 3, 4, 5, 20, 21, 22, 23, 40, 41, 42, 57];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_lists_devices_and_draws_the_series() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the page test needs Debian's Chromium \
         (`sudo apt-get install chromium`; .ci/run installs it)"
    );

    let token = generate_key().key.expose_secret().to_owned();
    let mut gateway = Harness::start_with(
        emulator_config(),
        &[
            ("LAKEGATE_READER_TOKENS", &hash_key(&token)),
            // The list is read below before the readings exist; the page must see them.
            ("LAKEGATE_DEVICE_LIST_CACHE_SECS", "0"),
        ],
    )
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

    // sensor-1: two readings in each of 12 minutes of the last hour; humidity is its
    // first metric (sorted), so the page charts it without a click.
    let minute = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    let mut readings = Vec::new();
    for (i, ago) in MINUTES_AGO.iter().enumerate() {
        let bucket = minute - Span::minutes(*ago);
        for (second, offset) in [(10, 0.0), (40, 2.0)] {
            readings.push(json!({
                "id": format!("r-{i}-{second}"),
                "ts": rfc3339(bucket + Span::seconds(second)),
                "metrics": {"humidity": 40.0 + i as f64 + offset, "temperature": 20.5, "state": "idle"},
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
    let (status, body) = gateway
        .post_json(
            &gateway.keys.other,
            &json!({"ts": rfc3339(Utc::now() - Span::hours(3)), "metrics": {"pressure": 1.2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let url = format!("{}/#token={token}", gateway.url);
    let dom = chromium(&["--dump-dom".to_owned(), url.clone()]).await;

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
    assert!(row.contains("humidity, state, temperature"), "{row}");
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
    assert!(dom.contains("class=\"avg\""), "the average line is drawn");
    assert!(dom.contains("class=\"band\""), "the min-max band is drawn");

    // A screenshot for people (artifacts/ is git-ignored).
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("fleet-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1280,900".to_owned(),
        url,
    ])
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

/// Runs headless Chromium with its own profile; returns its standard output.
async fn chromium(args: &[String]) -> String {
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
