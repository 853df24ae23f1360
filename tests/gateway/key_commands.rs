//! `lakegate keys add|rotate|revoke-old|revoke|disable|enable|list` against the
//! registry where it lives (a file a running gateway reloads, a Databricks secret),
//! run as the real binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use secrecy::ExposeSecret;

use lakegate::app::Gateway;
use lakegate::config::GatewayConfig;
use lakegate_testkit::{SP_ID, SP_SECRET, emulator_config, gateway_env, start_emulator, temp_dir};
use tokio::net::TcpListener;

use crate::common;
use crate::harness::{Harness, reading};

fn lakegate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lakegate"));
    command.args(args).env_remove("DATABRICKS_CONFIG_PROFILE");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("lakegate runs")
}

/// Runs a change against the registry file; returns the key it printed, if any.
fn change(args: &[&str], file: &Path) -> Option<String> {
    let mut args = args.to_vec();
    args.extend(["--file", file.to_str().unwrap()]);
    let output = lakegate(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stderr.contains("lgk_"), "no key on stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    match lines[..] {
        [] => None,
        [key] => {
            assert!(key.starts_with("lgk_"), "{stdout}");
            Some(key.to_owned())
        }
        _ => panic!("one key line at most: {stdout}"),
    }
}

async fn ingest(gateway: &Harness, key: &str, id: &str) -> (u16, serde_json::Value) {
    gateway.post_json(key, &reading(id, 1.0)).await
}

/// Waits past the gateway's registry reload (every second in the harness).
async fn reload() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_gateway_follows_the_key_commands() {
    let mut gateway = Harness::start().await;
    let file = gateway.registry_file.clone();
    let key = change(
        &["keys", "add", "field-9", "--rate", "5", "--burst", "10"],
        &file,
    )
    .expect("a new key");
    reload().await;
    assert_eq!(ingest(&gateway, &key, "f-1").await.0, 200);

    let next = change(&["keys", "rotate", "field-9"], &file).expect("a second key");
    reload().await;
    assert_eq!(ingest(&gateway, &key, "f-2").await.0, 200);
    assert_eq!(ingest(&gateway, &next, "f-3").await.0, 200);

    assert_eq!(change(&["keys", "revoke-old", "field-9"], &file), None);
    reload().await;
    assert_eq!(ingest(&gateway, &key, "f-4").await.0, 401);
    assert_eq!(ingest(&gateway, &next, "f-5").await.0, 200);

    change(&["keys", "disable", "field-9"], &file);
    reload().await;
    assert_eq!(ingest(&gateway, &next, "f-6").await.0, 403);
    change(&["keys", "enable", "field-9"], &file);
    reload().await;
    assert_eq!(ingest(&gateway, &next, "f-7").await.0, 200);

    let listed = lakegate(&["keys", "list", "--file", file.to_str().unwrap()], &[]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("field-9\t1\tfalse\t5\t10"), "{listed}");
    assert!(
        listed.contains("sensor-1\t2\tfalse\tdefault\tdefault"),
        "{listed}"
    );
    assert!(
        !listed.contains("lgk_") && !listed.contains("sha256"),
        "{listed}"
    );

    change(&["keys", "revoke", "field-9"], &file);
    reload().await;
    assert_eq!(ingest(&gateway, &next, "f-8").await.0, 401);
    // The devices that were there all along still work.
    assert_eq!(ingest(&gateway, &gateway.keys.sensor, "s-1").await.0, 200);

    // A refused change says why and writes nothing.
    let before = std::fs::read(&file).unwrap();
    let refused = lakegate(
        &[
            "keys",
            "rotate",
            "no-such-device",
            "--file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("\"no-such-device\" is not in the registry")
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_follows_keys_managed_in_a_databricks_secret() {
    let emulator = start_emulator(emulator_config()).await;
    let url = emulator.url();
    let warehouse = emulator.warehouse_id().to_owned();
    let workspace = [
        ("DATABRICKS_HOST", url.as_str()),
        ("DATABRICKS_CLIENT_ID", SP_ID),
        ("DATABRICKS_CLIENT_SECRET", SP_SECRET),
        ("DATABRICKS_WAREHOUSE_ID", warehouse.as_str()),
    ];
    let dir = temp_dir();
    let mut env = gateway_env(&emulator, &dir.path().join("unused.json"), &[]);
    env.remove("LAKEGATE_DEVICE_KEYS_FILE");
    env.insert("LAKEGATE_DEVICE_KEYS_SECRET".into(), "fleet/devices".into());
    let secrets = common::reader(&env).secrets();
    secrets.create_scope("fleet").await.unwrap();

    let secret = ["--secret", "fleet/devices"];
    let keys = |action: &[&str]| lakegate(&[&["keys"][..], action, &secret].concat(), &workspace);
    let added = keys(&["add", "pump-7"]);
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{stderr}");
    assert!(!stderr.contains(SP_SECRET), "{stderr}");
    let key = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("lgk_"));
    let stored = secrets.get("fleet", "devices").await.unwrap();
    assert!(!String::from_utf8_lossy(stored.expose_secret()).contains(&key));
    let listed = keys(&["list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("pump-7\t1\tfalse"));

    let config = GatewayConfig::from_map(&env).expect("valid gateway config");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.run(listener, async {
        let _ = stopped.await;
    }));
    let http = lakegate::databricks::http_client().unwrap();
    let ingest = async |id: &str| {
        let response = http
            .post(&ingest_url)
            .header("X-API-Key", &key)
            .json(&reading(id, 1.0))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    };
    assert_eq!(ingest("p-1").await, 200);
    assert!(keys(&["revoke", "pump-7"]).status.success());
    reload().await;
    assert_eq!(ingest("p-2").await, 401);

    // Credentials come from the environment or a profile: without them, a clear error.
    let no_workspace = lakegate(&[&["keys", "list"][..], &secret].concat(), &[]);
    assert!(!no_workspace.status.success());
    assert!(!String::from_utf8_lossy(&no_workspace.stderr).is_empty());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
