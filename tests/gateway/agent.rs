//! `lakegate send`, the device agent, as a real process against a real gateway:
//! delivery, refusals and exit status, exactly once on resend, and the spool
//! carrying readings over an upstream outage to the next run.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use lakegate_testkit::temp_dir;

use lakegate_testkit::gateway::Harness;

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

/// The URL of a port where nothing listens: an upstream that is down.
fn closed_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
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
    let closed = closed_upstream();

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
        stderr(&spooled).contains("1 spooled batch waits"),
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
async fn a_rate_limited_devices_spool_drains_over_short_runs() {
    use lakegate::devices::{generate_key, hash_key};
    use secrecy::ExposeSecret;
    let key = generate_key().key.expose_secret().to_owned();
    // `docs/device-keys.md`'s example limits: 5 readings a second after a burst of 10.
    let registry = serde_json::json!({
        "devices": {"meter-1": {"keys": [hash_key(&key)], "rate_per_sec": 5, "burst": 10}}
    });
    let mut gateway = Harness::builder().registry(registry).start().await;
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
    // 100 readings take about 20 s at that rate: runs of 6 s each must carry on from
    // where the last stopped, never spending the budget on readings already committed.
    let spool_dir = spool.path().to_str().unwrap();
    let args = [
        "--upstream",
        &gateway.url,
        "--spool",
        spool_dir,
        "--timeout",
        "6",
    ];
    let mut said = String::new();
    let mut input = input.as_str();
    for _ in 0..8 {
        let sent = send(&key, &args, input);
        said = stderr(&sent);
        assert_eq!(sent.status.code(), Some(0), "{said}");
        input = "";
        if said.contains("0 spooled batches wait") {
            break;
        }
    }
    assert!(said.contains("0 spooled batches wait"), "{said}");
    assert_eq!(gateway.row_count().await, 100);
    gateway.stop().await;
}

/// The readings of the table, by id.
async fn reading_ids(gateway: &Harness) -> Vec<String> {
    gateway.rows().await.into_iter().map(|row| row.1).collect()
}

/// The spool's one segment file.
fn only_segment(spool: &std::path::Path) -> std::path::PathBuf {
    let segments: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_spool_record_is_moved_aside_and_every_other_reading_lands_once() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let spool = temp_dir();
    let spool_dir = spool.path().to_str().unwrap();
    let closed = closed_upstream();
    let ids: Vec<String> = (1..=9).map(|n| format!("sp-{n}")).collect();
    let input: String = ids
        .iter()
        .map(|id| format!("{{\"id\": \"{id}\", \"ts\": \"2026-11-29T12:00:00Z\", \"metrics\": {{\"t\": 1}}}}\n"))
        .collect();
    // One record a reading, spooled while the gateway cannot be reached.
    let spooled = send(
        &key,
        &[
            "--upstream",
            &closed,
            "--spool",
            spool_dir,
            "--batch",
            "1",
            "--timeout",
            "1",
        ],
        &input,
    );
    assert_eq!(spooled.status.code(), Some(0), "{}", stderr(&spooled));
    assert!(
        stderr(&spooled).contains("9 spooled batches wait"),
        "{}",
        stderr(&spooled)
    );

    // The disk flips one byte of the fifth record's payload.
    let segment = only_segment(spool.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 0..4 {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let payload = &bytes[at + 8..at + 8 + len];
    assert!(String::from_utf8_lossy(payload).contains("sp-5"));
    bytes[at + 8 + len - 1] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    let next = send(
        &key,
        &["--upstream", &gateway.url, "--spool", spool_dir],
        "",
    );
    let said = stderr(&next);
    assert_eq!(next.status.code(), Some(1), "{said}");
    assert!(said.contains("1 damaged spool region(s)"), "{said}");
    assert!(said.contains("0 spooled batches wait"), "{said}");
    let mut landed = reading_ids(&gateway).await;
    landed.sort();
    let intact: Vec<String> = ids.iter().filter(|id| *id != "sp-5").cloned().collect();
    assert_eq!(landed, intact);
    let kept: Vec<_> = std::fs::read_dir(spool.path().join("damaged"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(String::from_utf8_lossy(&kept[0]).contains("\"sp-5\""));

    // Mended for good: the next run finds nothing more, and nothing lands twice.
    let again = send(
        &key,
        &["--upstream", &gateway.url, "--spool", spool_dir],
        "",
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(gateway.row_count().await, 8);
    gateway.stop().await;
}

/// The peak resident memory of a running process, in bytes (Linux).
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_input_line_is_refused_by_number_and_memory_stays_bounded() {
    let mut gateway = Harness::start().await;
    let spool = temp_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["send", "--upstream", gateway.url.as_str(), "--spool"])
        .arg(spool.path())
        .env("LAKEGATE_DEVICE_KEY", &gateway.keys.sensor)
        .env_remove("DATABRICKS_HOST")
        .env_remove("DATABRICKS_CONFIG_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lakegate runs");
    let reading = |id: &str| {
        format!("{{\"id\": \"{id}\", \"ts\": \"2026-11-29T12:00:00Z\", \"metrics\": {{\"t\": 1}}")
    };
    // A valid reading of 80 MiB: no gateway takes it, and no agent should hold it.
    let huge_bytes = 80 * 1024 * 1024;
    let mut input = format!("{}}}\n{}, \"note\": \"", reading("h-1"), reading("h-2")).into_bytes();
    input.reserve(huge_bytes + 256);
    input.resize(input.len() + huge_bytes, b'x');
    input.extend_from_slice(format!("\"}}\n{}}}\n", reading("h-3")).as_bytes());
    let mut stdin = child.stdin.take().unwrap();
    let stdin = tokio::task::spawn_blocking(move || {
        stdin.write_all(&input).unwrap();
        stdin.flush().unwrap();
        // Kept open: the process must still run when its memory is read.
        stdin
    })
    .await
    .unwrap();

    gateway
        .wait_for_rows(2, std::time::Duration::from_secs(30))
        .await;
    let peak = peak_memory(child.id());
    assert!(
        peak < 64 * 1024 * 1024,
        "the agent peaked at {} MiB reading an 80 MiB line",
        peak / (1024 * 1024)
    );
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("stdin line 2: longer than"), "{said}");
    let mut landed = reading_ids(&gateway).await;
    landed.sort();
    assert_eq!(landed, ["h-1", "h-3"]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_reading_is_named_by_its_input_file_and_line() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let dir = temp_dir();
    let input = dir.path().join("backfill.ndjson");
    // The bad reading has no id: only its line tells the operator which one it was.
    std::fs::write(
        &input,
        "{\"id\": \"c-1\", \"ts\": \"2026-11-29T14:00:00Z\", \"metrics\": {\"t\": 1}}\n\
         \n\
         {\"ts\": \"2026-11-29T14:00:01Z\", \"metrics\": {\"bad name\": 1}}\n",
    )
    .unwrap();
    let file = input.to_str().unwrap();
    let spool = temp_dir();
    let spool_dir = spool.path().to_str().unwrap();
    for args in [
        vec!["--upstream", gateway.url.as_str(), file],
        // Through the spool, the reading comes back from disk without its line.
        vec![
            "--upstream",
            gateway.url.as_str(),
            "--spool",
            spool_dir,
            file,
        ],
    ] {
        let sent = send(&key, &args, "");
        let said = stderr(&sent);
        assert_eq!(sent.status.code(), Some(1), "{said}");
        assert!(
            said.contains(&format!(
                "refused: {file} line 3: reading at ts \"2026-11-29T14:00:01Z\": \
                 invalid_metric_name"
            )),
            "{args:?}: {said}"
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_input_file_is_a_bad_option() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.sensor.clone();
    let dir = temp_dir();
    let present = dir.path().join("present.ndjson");
    std::fs::write(&present, THREE).unwrap();
    let missing = dir.path().join("missing.ndjson");
    let sent = send(
        &key,
        &[
            "--upstream",
            &gateway.url,
            present.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        "",
    );
    let said = stderr(&sent);
    assert_eq!(sent.status.code(), Some(2), "{said}");
    assert!(said.contains("missing.ndjson"), "{said}");
    // Refused before anything is sent, the present file included.
    assert_eq!(gateway.row_count().await, 0);
    gateway.stop().await;
}
