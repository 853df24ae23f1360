//! `lakegate send`, the device agent, as a real process against a real gateway:
//! delivery, refusals and exit status, exactly once on resend, and the spool
//! carrying readings over an upstream outage to the next run.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use lakegate_testkit::temp_dir;

use crate::harness::Harness;

/// Runs `lakegate send` with `args`, the device key in the environment and `input`
/// on stdin.
fn send(key: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .arg("send")
        .args(args)
        .env("LAKEGATE_DEVICE_KEY", key)
        .env_remove("DATABRICKS_HOST")
        .env_remove("DATABRICKS_CONFIG_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lakegate runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const THREE: &str = r#"{"id": "a-1", "ts": "2026-11-29T12:00:00Z", "metrics": {"t": 1.5}}
{"ts": "2026-11-29T12:00:01Z", "metrics": {"t": 2.5, "door": true}}

[{"id": "a-3", "ts": 1764417602000, "metrics": {"state": "idle"}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_are_delivered_once_and_refusals_set_the_exit_status() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let upstream = ["--upstream", gateway.url.as_str()];

    let sent = send(&key, &upstream, THREE);
    assert_eq!(sent.status.code(), Some(0), "{}", stderr(&sent));
    assert!(
        stderr(&sent).contains("3 readings read: 3 committed"),
        "{}",
        stderr(&sent)
    );
    assert_eq!(gateway.row_count().await, 4);

    // The same input again (a device resending after a lost answer): written once.
    let again = send(&key, &upstream, THREE);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(gateway.row_count().await, 4);

    // A line that is not a reading and a reading the gateway refuses: reported, the
    // rest delivered, exit status 1.
    let mixed = "{\"id\": \"b-1\", \"ts\": \"2026-11-29T13:00:00Z\", \"metrics\": {\"t\": 1}}\n\
                 not json\n\
                 {\"id\": \"b-2\", \"ts\": \"2026-11-29T13:00:00Z\", \"metrics\": {\"bad name\": 1}}\n";
    let partly = send(&key, &upstream, mixed);
    let said = stderr(&partly);
    assert_eq!(partly.status.code(), Some(1), "{said}");
    assert!(said.contains("stdin line 2: not JSON"), "{said}");
    assert!(
        said.contains("reading id \"b-2\": invalid_metric_name"),
        "{said}"
    );
    assert_eq!(gateway.row_count().await, 5);
    assert!(!said.contains(&key), "the key is never printed");

    // A key the gateway does not know: nothing delivered, exit status 3.
    let refused = send("lgk_not-a-key", &upstream, THREE);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("401 unauthorized"),
        "{}",
        stderr(&refused)
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spool_keeps_readings_over_an_outage_until_the_next_run() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let spool = temp_dir();
    let spool_dir = spool.path().to_str().unwrap();
    // Nothing listens here.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };

    // Without a spool the readings are not delivered: exit status 3.
    let lost = send(&key, &["--upstream", &closed, "--timeout", "1"], THREE);
    assert_eq!(lost.status.code(), Some(3), "{}", stderr(&lost));
    assert!(stderr(&lost).contains("3 readings were NOT delivered"));

    // With a spool they are on disk: exit status 0, sent on the next run.
    let spooled = send(
        &key,
        &[
            "--upstream",
            &closed,
            "--spool",
            spool_dir,
            "--timeout",
            "1",
        ],
        THREE,
    );
    assert_eq!(spooled.status.code(), Some(0), "{}", stderr(&spooled));
    assert!(
        stderr(&spooled).contains("1 spooled batches wait"),
        "{}",
        stderr(&spooled)
    );
    assert_eq!(gateway.row_count().await, 0);

    let next = send(
        &key,
        &["--upstream", &gateway.url, "--spool", spool_dir],
        "",
    );
    assert_eq!(next.status.code(), Some(0), "{}", stderr(&next));
    assert!(
        stderr(&next).contains("0 spooled batches wait"),
        "{}",
        stderr(&next)
    );
    assert_eq!(gateway.row_count().await, 4);

    // Nothing is sent twice from the spool.
    let idle = send(
        &key,
        &["--upstream", &gateway.url, "--spool", spool_dir],
        "",
    );
    assert_eq!(idle.status.code(), Some(0), "{}", stderr(&idle));
    assert_eq!(gateway.row_count().await, 4);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_piping_readings_in_is_served_as_it_writes_them() {
    let mut gateway = Harness::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["send", "--upstream", gateway.url.as_str()])
        .env("LAKEGATE_DEVICE_KEY", &gateway.keys.sensor)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lakegate runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"{\"id\": \"live-1\", \"ts\": \"2026-11-29T12:00:00Z\", \"metrics\": {\"t\": 1}}\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    // Written while the pipe is still open (within the agent's one-second linger).
    gateway
        .wait_for_rows(1, std::time::Duration::from_secs(15))
        .await;
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_devices_spool_drains_in_one_run() {
    use lakegate::devices::{generate_key, hash_key};
    use secrecy::ExposeSecret;
    let key = generate_key().key.expose_secret().to_owned();
    // The README's own limits: 5 readings a second after a burst of 10.
    let registry = serde_json::json!({
        "devices": {"meter-1": {"keys": [hash_key(&key)], "rate_per_sec": 5, "burst": 10}}
    });
    let mut gateway =
        Harness::start_with_registry(lakegate_testkit::emulator_config(), &[], registry).await;
    let spool = temp_dir();
    let input: String = (0..100)
        .map(|n| {
            format!(
                "{{\"id\": \"m-{n}\", \"ts\": \"2026-12-01T10:{:02}:{:02}Z\", \"metrics\": {{\"kwh\": {n}}}}}\n",
                n / 60,
                n % 60
            )
        })
        .collect();
    let sent = send(
        &key,
        &[
            "--upstream",
            &gateway.url,
            "--spool",
            spool.path().to_str().unwrap(),
            "--timeout",
            "90",
        ],
        &input,
    );
    let said = stderr(&sent);
    assert_eq!(sent.status.code(), Some(0), "{said}");
    assert!(said.contains("100 committed"), "{said}");
    assert!(said.contains("0 spooled batches wait"), "{said}");
    assert_eq!(gateway.row_count().await, 100);
    gateway.stop().await;
}
