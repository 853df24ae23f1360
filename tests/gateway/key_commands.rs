//! `lakegate keys add|rotate|revoke-old|revoke|disable|enable|list` against the
//! registry where it lives (a file a running gateway reloads, a Databricks secret),
//! run as the real binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lakegate::devices::Registry;
use secrecy::ExposeSecret;

use lakegate_testkit::{SP_ID, SP_SECRET};

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
async fn keys_are_managed_in_a_databricks_secret() {
    let mut gateway = Harness::start().await;
    let url = gateway.emulator.url();
    let warehouse = gateway.emulator.warehouse_id().to_owned();
    let env = [
        ("DATABRICKS_HOST", url.as_str()),
        ("DATABRICKS_CLIENT_ID", SP_ID),
        ("DATABRICKS_CLIENT_SECRET", SP_SECRET),
        ("DATABRICKS_WAREHOUSE_ID", warehouse.as_str()),
    ];
    let secrets = gateway.reader().secrets();
    secrets.create_scope("fleet").await.unwrap();

    let secret = ["--secret", "fleet/devices"];
    let added = lakegate(&[&["keys", "add", "pump-7"][..], &secret].concat(), &env);
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{stderr}");
    assert!(!stderr.contains(SP_SECRET), "{stderr}");
    let key = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("lgk_"));

    let stored = secrets.get("fleet", "devices").await.unwrap();
    let stored = stored.expose_secret();
    assert!(!String::from_utf8_lossy(stored).contains(&key));
    let registry = Registry::parse(stored).unwrap();
    assert_eq!(&*registry.authenticate(&key).unwrap().id, "pump-7");

    let listed = lakegate(&[&["keys", "list"][..], &secret].concat(), &env);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("pump-7\t1\tfalse"));

    // Credentials from the environment only: without them, a clear error.
    let no_workspace = lakegate(&[&["keys", "list"][..], &secret].concat(), &[]);
    assert!(!no_workspace.status.success());
    assert!(!String::from_utf8_lossy(&no_workspace.stderr).is_empty());
    gateway.stop().await;
}
