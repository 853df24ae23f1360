//! Device keys: unknown and missing keys, disabled devices, rotation with
//! reloads, limits, and the `keys new` subcommand.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lakegate::config::GatewayConfig;
use lakegate::devices::{KeyKind, Registry, generate_key_of};
use lakegate_testkit::{gateway_env, temp_dir};
use secrecy::ExposeSecret;
use serde_json::json;

use lakegate_testkit::gateway::{Harness, reading, respond};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_and_unknown_keys_get_the_same_401_and_disabled_devices_403() {
    let mut gateway = Harness::start().await;
    let missing = gateway
        .http
        .post(format!("{}/ingest", gateway.url))
        .json(&reading("x", 1.0))
        .send()
        .await
        .unwrap();
    let missing = respond(missing).await;
    let unknown = gateway.post_json("lgk_not-a-key", &reading("x", 1.0)).await;
    assert_eq!(missing.0, 401);
    assert_eq!(missing, unknown);

    let (status, answer) = gateway
        .post_json(&gateway.keys.disabled, &reading("x", 1.0))
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("retired-1"),
        "{answer}"
    );
    assert_eq!(gateway.row_count().await, 0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_keeps_both_keys_until_the_old_one_is_removed() {
    let mut gateway = Harness::start().await;
    let (old, new) = (
        gateway.keys.sensor.clone(),
        gateway.keys.sensor_next.clone(),
    );
    assert_eq!(gateway.post_json(&old, &reading("k-1", 1.0)).await.0, 200);
    assert_eq!(gateway.post_json(&new, &reading("k-2", 1.0)).await.0, 200);

    gateway.rotate_sensor_keys(&[&new]).await;
    assert_eq!(gateway.post_json(&old, &reading("k-3", 1.0)).await.0, 401);
    assert_eq!(gateway.post_json(&new, &reading("k-4", 1.0)).await.0, 200);

    // A broken registry file keeps the last good one.
    std::fs::write(&gateway.registry_file, "{ not json").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(gateway.post_json(&new, &reading("k-5", 1.0)).await.0, 200);
    let metrics = gateway.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lakegate_registry_reloads_total{outcome=\"failed\"}")),
        "{metrics}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_rate_limit_answers_429_with_retry_after() {
    let mut gateway = Harness::start().await;
    let key = gateway.keys.slow.clone();
    // Burst 3: three readings pass, the fourth waits about a second.
    assert_eq!(
        gateway
            .post_json(&key, &json!([reading("s-1", 1.0), reading("s-2", 1.0)]))
            .await
            .0,
        200
    );
    assert_eq!(gateway.post_json(&key, &reading("s-3", 1.0)).await.0, 200);
    let response = gateway
        .post(&key)
        .json(&reading("s-4", 1.0))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, answer) = respond(response).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "device_rate_limited");
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    // More than the burst in one request can never pass (once the device has the
    // budget for a request at all: a device over its rate hears 429 before its body is read).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let four = json!(
        (0..4)
            .map(|i| reading(&format!("b-{i}"), 1.0))
            .collect::<Vec<_>>()
    );
    assert_eq!(gateway.post_json(&key, &four).await.0, 413);

    // Other devices are not affected.
    assert_eq!(
        gateway
            .post_json(&gateway.keys.other, &reading("o-1", 1.0))
            .await
            .0,
        200
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_guessing_is_limited_per_client_address() {
    let mut gateway = Harness::builder()
        .env("LAKEGATE_AUTH_FAILURES_PER_MIN", "1")
        .env("LAKEGATE_AUTH_FAILURE_BURST", "3")
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(
            gateway.post_json("lgk_guess", &reading("x", 1.0)).await.0,
            401
        );
    }
    // The burst is spent by the fourth failure at the latest.
    let mut response = gateway
        .post("lgk_guess")
        .json(&reading("x", 1.0))
        .send()
        .await
        .unwrap();
    if response.status() == 401 {
        response = gateway
            .post("lgk_guess")
            .json(&reading("x", 1.0))
            .send()
            .await
            .unwrap();
    }
    assert!(response.headers().contains_key("retry-after"));
    let (status, answer) = respond(response).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "too_many_failed_authentications");
    // The right key is checked first and gets through: only failures are slowed.
    assert_eq!(
        gateway
            .post_json(&gateway.keys.sensor, &reading("x", 1.0))
            .await
            .0,
        200
    );
    gateway.stop().await;
}

#[test]
fn keys_new_prints_a_key_once_with_its_registry_entry() {
    let output = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["keys", "new", "pump-7"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let key = text
        .split_whitespace()
        .find(|word| word.starts_with("lgd_"))
        .expect("the key is printed");
    // The printed entry is a fragment of the registry's "devices" object.
    let entry = text
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with('{'))
        .expect("the registry entry is printed");
    let registry = format!("{{\"devices\": {entry}}}");
    let registry = Registry::parse(registry.as_bytes()).unwrap();
    assert_eq!(&**registry.authenticate(key).unwrap().id(), "pump-7");

    let bad = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["keys", "new", "bad id"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let reader = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["keys", "new-reader"])
        .output()
        .unwrap();
    let text = String::from_utf8(reader.stdout).unwrap();
    assert!(
        text.split_whitespace().any(|word| word.starts_with("lgt_")),
        "{text}"
    );
}

/// Each kind of key has its prefix; one pasted where another kind belongs is refused
/// with a message that says what it is, and `lgk_` keys of earlier versions still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_of_the_wrong_kind_is_refused_saying_what_it_is() {
    let reader = generate_key_of(KeyKind::Reader);
    let reader_hash = reader.hash.clone();
    let mut gateway = Harness::builder()
        .env("LAKEGATE_READER_TOKENS", &reader_hash)
        .start()
        .await;
    assert!(gateway.keys.sensor.starts_with("lgk_"));
    assert_eq!(
        gateway
            .post_json(&gateway.keys.sensor, &reading("a", 1.0))
            .await
            .0,
        200
    );

    let token = reader.key.expose_secret();
    let (status, body) = gateway.post_json(token, &reading("b", 1.0)).await;
    assert_eq!(status, 401);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("this is a reader token (lgt_...)"),
        "{body}"
    );
    assert!(!message.contains(token));

    // Local mode's workspace client secret, pasted as a device key.
    let workspace = generate_key_of(KeyKind::LocalWorkspace);
    let workspace = workspace.key.expose_secret();
    assert!(workspace.starts_with("lgw_"));
    let (status, body) = gateway.post_json(workspace, &reading("c", 1.0)).await;
    assert_eq!(status, 401);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("this is a client secret of local mode's workspace (lgw_...)"),
        "{body}"
    );
    assert!(!message.contains(workspace));

    let device = generate_key_of(KeyKind::Device);
    let device = device.key.expose_secret();
    let response = (gateway.http.get(format!("{}/api/devices", gateway.url)))
        .bearer_auth(device)
        .send()
        .await
        .unwrap();
    let (status, body) = respond(response).await;
    assert_eq!(status, 401);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("this is a device key (lgd_...)"),
        "{body}"
    );
    // The reader token still reads.
    let response = (gateway.http.get(format!("{}/api/devices", gateway.url)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop().await;

    // A relay's key pasted among the reader tokens' hashes.
    let relay = generate_key_of(KeyKind::Relay);
    let mut env = gateway_env(&gateway.emulator, Path::new("devices.json"), &[]);
    env.insert(
        "LAKEGATE_READER_TOKENS".into(),
        relay.key.expose_secret().into(),
    );
    let refused = GatewayConfig::from_map(&env).unwrap_err().to_string();
    assert!(
        refused.contains("is a site relay's key (lgr_...)"),
        "{refused}"
    );
    assert!(!refused.contains(relay.key.expose_secret()));

    // A device's key as a relay's: the relay does not start, and says why.
    let dir = temp_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .arg("relay")
        .env_clear()
        .envs([
            ("LAKEGATE_UPSTREAM", "http://127.0.0.1:9"),
            ("LAKEGATE_SPOOL_DIR", dir.path().to_str().unwrap()),
            ("LAKEGATE_RELAY_KEY", device),
            ("LAKEGATE_LOG_FORMAT", "text"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("is a device key (lgd_...), not a relay's key"),
        "{stderr}"
    );
    assert!(!stderr.contains(device));
}
