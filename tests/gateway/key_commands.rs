//! `lakegate keys device|relay add|rotate|revoke-old|revoke|disable|enable` and
//! `keys list` (and the old spellings, `keys add`, `keys add-relay`, ...) against the
//! registry where it lives (a file a running gateway reloads, a Databricks secret),
//! run as the real binary, also many at once.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use lakegate::app::Gateway;
use lakegate::config::GatewayConfig;
use lakegate::devices::{AuthFailure, KeySource, Registry, Sender, generate_key, shard_key};
use lakegate_emulator::Faults;
use lakegate_testkit::{
    LakegateProcess, SP_ID, SP_SECRET, emulator_config, eventually_async, gateway_env,
    start_emulator, temp_dir, workspace,
};
use tokio::net::TcpListener;

use lakegate_testkit::gateway::{Harness, metric_at, reading};

fn command<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lakegate"));
    command.args(args).env_remove("DATABRICKS_CONFIG_PROFILE");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn lakegate(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("lakegate runs")
}

/// Runs `lakegate` once per argument list, all started before any is waited for.
fn concurrently(runs: &[Vec<String>], env: &[(&str, &str)]) -> Vec<Output> {
    let children: Vec<_> = (runs.iter())
        .map(|args| {
            let mut command = command(args, env);
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            command.spawn().expect("lakegate starts")
        })
        .collect();
    (children.into_iter())
        .map(|child| child.wait_with_output().expect("lakegate runs"))
        .collect()
}

/// Eight `keys add` and four `keys revoke` of devices already there, as processes
/// started at once against one registry.
struct Race {
    /// The devices to revoke, with their keys.
    victims: Vec<(String, String)>,
}

impl Race {
    fn new() -> Race {
        let victims = (0..4)
            .map(|n| {
                let key = generate_key();
                (format!("old-{n}"), key.key.expose_secret().to_owned())
            })
            .collect();
        Race { victims }
    }

    /// The registry to start from: the victims.
    fn registry(&self) -> Value {
        let devices: serde_json::Map<String, Value> = (self.victims.iter())
            .map(|(id, key)| {
                (
                    id.clone(),
                    json!({"keys": [lakegate::devices::hash_key(key)]}),
                )
            })
            .collect();
        json!({ "devices": devices })
    }

    fn run(&self, registry: &[&str], env: &[(&str, &str)]) -> Vec<(Vec<String>, Output)> {
        let adds = (0..8).map(|n| vec!["add".to_owned(), format!("new-{n}")]);
        let revokes = (self.victims.iter()).map(|(id, _)| vec!["revoke".to_owned(), id.clone()]);
        let runs: Vec<Vec<String>> = adds
            .chain(revokes)
            .map(|change| {
                let registry = registry.iter().map(|arg| arg.to_string());
                ["keys".to_owned()]
                    .into_iter()
                    .chain(change)
                    .chain(registry)
                    .collect()
            })
            .collect();
        let outputs = concurrently(&runs, env);
        runs.into_iter().zip(outputs).collect()
    }

    /// Every change that exited 0 is in `registry`: a printed key authenticates its
    /// device, a revoked device's key is unknown. A change that failed printed no key
    /// and said it could not be confirmed. Returns how many succeeded.
    fn check(&self, runs: &[(Vec<String>, Output)], registry: &Registry) -> usize {
        let mut succeeded = 0;
        for (args, output) in runs {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let (action, id) = (args[1].as_str(), args[2].as_str());
            if !output.status.success() {
                assert!(stdout.is_empty(), "{args:?} failed but printed {stdout}");
                assert!(
                    stderr.contains("could not be confirmed"),
                    "{args:?}: {stderr}"
                );
                continue;
            }
            succeeded += 1;
            match action {
                "add" => match registry.authenticate(stdout.trim()) {
                    Ok(Sender::Device(device)) => assert_eq!(&*device.id, id),
                    _ => panic!("{args:?} exited 0 but its key does not authenticate: {stderr}"),
                },
                _ => {
                    let (_, key) = self
                        .victims
                        .iter()
                        .find(|(victim, _)| victim == id)
                        .unwrap();
                    assert!(
                        matches!(registry.authenticate(key), Err(AuthFailure::UnknownKey)),
                        "{args:?} exited 0 but the device's key still works"
                    );
                }
            }
        }
        succeeded
    }
}

/// Runs a change against the registry file; returns the key it printed, if any.
fn change(args: &[&str], file: &Path) -> Option<String> {
    let mut args = args.to_vec();
    args.extend(["--file", file.to_str().unwrap()]);
    let output = lakegate(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stderr.contains("lgd_"), "no key on stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    match lines[..] {
        [] => None,
        [key] => {
            assert!(key.starts_with("lgd_"), "a device key: {stdout}");
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
        &[
            "keys", "device", "add", "field-9", "--rate", "5", "--burst", "10",
        ],
        &file,
    )
    .expect("a new key");
    reload().await;
    assert_eq!(ingest(&gateway, &key, "f-1").await.0, 200);

    let next = change(&["keys", "device", "rotate", "field-9"], &file).expect("a second key");
    reload().await;
    assert_eq!(ingest(&gateway, &key, "f-2").await.0, 200);
    assert_eq!(ingest(&gateway, &next, "f-3").await.0, 200);

    assert_eq!(
        change(&["keys", "device", "revoke-old", "field-9"], &file),
        None
    );
    reload().await;
    assert_eq!(ingest(&gateway, &key, "f-4").await.0, 401);
    assert_eq!(ingest(&gateway, &next, "f-5").await.0, 200);

    change(&["keys", "device", "disable", "field-9"], &file);
    reload().await;
    assert_eq!(ingest(&gateway, &next, "f-6").await.0, 403);
    change(&["keys", "device", "enable", "field-9"], &file);
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
        !listed.contains("lgd_") && !listed.contains("sha256"),
        "{listed}"
    );

    change(&["keys", "device", "revoke", "field-9"], &file);
    reload().await;
    assert_eq!(ingest(&gateway, &next, "f-8").await.0, 401);
    // The devices that were there all along still work.
    assert_eq!(ingest(&gateway, &gateway.keys.sensor, "s-1").await.0, 200);

    // A refused change says why and writes nothing.
    let before = std::fs::read(&file).unwrap();
    let refused = lakegate(
        &[
            "keys",
            "device",
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
    let secrets = workspace::reader(&env).secrets();
    secrets.create_scope("fleet").await.unwrap();

    let secret = ["--secret", "fleet/devices"];
    let keys_at = |action: &[&str], at: &str| {
        lakegate(
            &[&["keys"][..], action, &["--secret", at]].concat(),
            &workspace,
        )
    };
    let keys = |action: &[&str]| keys_at(action, secret[1]);
    let added = keys(&["add", "pump-7"]);
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{stderr}");
    assert!(!stderr.contains(SP_SECRET), "{stderr}");
    let key = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("lgd_"));
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

    // A mistyped secret is not an empty fleet.
    let absent = keys_at(&["list"], "fleet/absent");
    assert_eq!(absent.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&absent.stderr).contains("secret fleet/absent does not exist"));

    // Credentials come from the environment or a profile: without them, a clear error.
    let no_workspace = lakegate(&[&["keys", "list"][..], &secret].concat(), &[]);
    assert!(!no_workspace.status.success());
    assert!(!String::from_utf8_lossy(&no_workspace.stderr).is_empty());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_commands_on_a_file_lose_no_change() {
    let dir = temp_dir();
    let file = dir.path().join("devices.json");
    let race = Race::new();
    std::fs::write(&file, race.registry().to_string()).unwrap();
    let runs = race.run(&["--file", file.to_str().unwrap()], &[]);
    let registry = Registry::parse(&std::fs::read(&file).unwrap()).unwrap();
    // Under the file's lock every change waits its turn: none fails.
    assert_eq!(race.check(&runs, &registry), runs.len());
}

/// A workspace whose Secrets API calls take 200 ms, as remote calls do, with a `fleet`
/// scope; the variables `lakegate keys --secret` needs to reach it.
async fn slow_secrets_workspace() -> (
    lakegate_emulator::Emulator,
    lakegate::databricks::Secrets,
    Vec<(&'static str, String)>,
) {
    let mut config = emulator_config();
    config.faults = Faults {
        secrets_latency: Duration::from_millis(200),
        ..Faults::default()
    };
    let emulator = start_emulator(config).await;
    let workspace = vec![
        ("DATABRICKS_HOST", emulator.url()),
        ("DATABRICKS_CLIENT_ID", SP_ID.to_owned()),
        ("DATABRICKS_CLIENT_SECRET", SP_SECRET.to_owned()),
    ];
    let secrets = workspace::m2m_client(&emulator).secrets();
    secrets.create_scope("fleet").await.unwrap();
    (emulator, secrets, workspace)
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    vars.iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_commands_on_a_secret_lose_no_change() {
    let (emulator, secrets, workspace) = slow_secrets_workspace().await;
    let race = Race::new();
    let seed = race.registry().to_string();
    secrets.put_string("fleet", "devices", &seed).await.unwrap();
    let env = borrowed(&workspace);
    // The processes are waited for on this thread; the emulator runs on the others.
    let runs = tokio::task::block_in_place(|| race.run(&["--secret", "fleet/devices"], &env));
    // Read as the gateway reads it: the base and every shard.
    let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
    let registry = source.load(Some(&secrets)).await.unwrap();
    let succeeded = race.check(&runs, &registry);
    eprintln!("{succeeded} of {} changes succeeded", runs.len());
    // Most get through; a command that runs out of attempts says so (checked above).
    assert!(
        succeeded * 2 >= runs.len(),
        "{succeeded} of {} succeeded",
        runs.len()
    );
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_in_a_full_base_secret_can_still_be_disabled_and_rotated() {
    let (emulator, secrets, workspace) = slow_secrets_workspace().await;
    let env = borrowed(&workspace);
    let keys = |action: &[&str]| {
        let output = lakegate(
            &[&["keys"][..], action, &["--secret", "fleet/devices"]].concat(),
            &env,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{action:?}: {stderr}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let early = [keys(&["add", "pump-0"]), keys(&["add", "pump-1"])];
    // The base as `keys add` used to leave it: devices of one key each added while the
    // base stayed within its 120 KB budget.
    let mut base: Value = serde_json::from_slice(
        secrets
            .get("fleet", "devices")
            .await
            .unwrap()
            .expose_secret(),
    )
    .unwrap();
    for n in 0.. {
        let hash = lakegate::devices::hash_key(&format!("k-{n}"));
        let mut grown = base.clone();
        // Ids as long as "pump-9": no such device fits after the last.
        grown["devices"][format!("f-{n:04}")] = json!({"keys": [hash]});
        if grown.to_string().len() > 120_000 {
            break;
        }
        base = grown;
    }
    secrets
        .put_string("fleet", "devices", &base.to_string())
        .await
        .unwrap();

    // New devices go to their shards now; the early ones are changed where they are.
    let late = keys(&["add", "pump-9"]);
    let shard = secrets
        .get("fleet", &shard_key("devices", "pump-9"))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(shard.expose_secret()).contains("pump-9"));
    let mut next = Vec::new();
    for device in ["pump-0", "pump-1"] {
        keys(&["disable", device]);
        next.push(keys(&["rotate", device]));
    }

    let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
    let registry = source.load(Some(&secrets)).await.unwrap();
    for key in early.iter().chain(&next) {
        assert!(
            matches!(
                registry.authenticate(key),
                Err(AuthFailure::Disabled { .. })
            ),
            "the early devices are disabled with both keys"
        );
    }
    assert!(registry.authenticate(&late).is_ok());
    emulator.shutdown().await;
}

/// Every `keys` command that touches a registry, with its other arguments: in the
/// spellings the help shows, then in the old ones, which still work.
const REGISTRY_COMMANDS: &[&[&str]] = &[
    &["device", "add", "pump-3"],
    &["device", "rotate", "pump-3"],
    &["device", "revoke-old", "pump-3"],
    &["device", "revoke", "pump-3"],
    &["device", "disable", "pump-3"],
    &["device", "enable", "pump-3"],
    &["relay", "add", "site-a", "--devices", "pump-3"],
    &["relay", "rotate", "site-a"],
    &["relay", "revoke-old", "site-a"],
    &["relay", "revoke", "site-a"],
    &["relay", "disable", "site-a"],
    &["relay", "enable", "site-a"],
    &["relay", "devices", "site-a", "--devices", "pump-3"],
    &["add", "pump-3"],
    &["rotate", "pump-3"],
    &["revoke-old", "pump-3"],
    &["revoke", "pump-3"],
    &["disable", "pump-3"],
    &["enable", "pump-3"],
    &["list"],
    &["add-relay", "site-a", "--devices", "pump-3"],
    &["rotate-relay", "site-a"],
    &["revoke-old-relay", "site-a"],
    &["revoke-relay", "site-a"],
    &["disable-relay", "site-a"],
    &["enable-relay", "site-a"],
    &["relay-devices", "site-a", "--devices", "pump-3"],
];

/// Runs `keys <command> <options>`; asserts a refusal with exit status 2 whose message
/// contains `names`, never a panic.
fn assert_refused(command: &[&str], options: &[&str], names: &str) {
    let args = [&["keys"][..], command, options].concat();
    let output = lakegate(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(names),
        "{args:?} should name {names:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?}: no key, no listing");
}

#[test]
fn every_keys_command_refuses_wrong_registry_options_with_status_2() {
    let dir = temp_dir();
    let file = dir.path().join("devices.json");
    std::fs::write(&file, r#"{"devices": {}}"#).unwrap();
    let file = file.to_str().unwrap();
    // Each wrong combination, and what its message must name.
    let wrong: &[(&[&str], &str)] = &[
        (&[], "--file PATH or --secret scope/key"),
        (&["--profile", "x"], "--secret"),
        (
            &["--file", file, "--secret", "fleet/devices"],
            "cannot be used with",
        ),
        (&["--file", file, "--profile", "x"], "--profile"),
        (&["--secret", "fleet"], "is not scope/key"),
        (
            &["--secret", "fleet/a/b", "--profile", "x"],
            "is not scope/key",
        ),
        (
            &[
                "--file",
                file,
                "--secret",
                "fleet/devices",
                "--profile",
                "x",
            ],
            "cannot be used with",
        ),
    ];
    for command in REGISTRY_COMMANDS {
        for (options, names) in wrong {
            assert_refused(command, options, names);
        }
    }
    assert_eq!(std::fs::read_to_string(file).unwrap(), r#"{"devices": {}}"#);
}

/// The help shows `keys device ...` and `keys relay ...`, each id described; the old
/// spellings are not shown, and each does what its new spelling does.
#[test]
fn the_keys_help_shows_the_new_spellings_and_the_old_ones_still_work() {
    let help = |args: &[&str]| {
        let output = lakegate(&[&["keys"][..], args, &["--help"]].concat(), &[]);
        assert!(output.status.success(), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let top = help(&[]);
    for shown in ["device", "relay", "list", "new", "new-reader"] {
        assert!(top.contains(&format!("\n  {shown} ")), "{shown}: {top}");
    }
    for hidden in [
        "add",
        "add-relay",
        "rotate-relay",
        "relay-devices",
        "revoke",
    ] {
        assert!(!top.contains(&format!("\n  {hidden} ")), "{hidden}: {top}");
    }
    let device = help(&["device"]);
    for action in ["add", "rotate", "revoke-old", "revoke", "disable", "enable"] {
        assert!(
            device.contains(&format!("\n  {action} ")),
            "{action}: {device}"
        );
    }
    assert!(help(&["relay"]).contains("\n  devices "));
    for (args, id) in [
        (
            &["device", "add"][..],
            "<DEVICE_ID>  The device's id (1-128 of",
        ),
        (&["add"][..], "<DEVICE_ID>  The device's id (1-128 of"),
        (
            &["relay", "rotate"][..],
            "<RELAY_ID>  The relay's id (1-128 of",
        ),
        (
            &["rotate-relay"][..],
            "<RELAY_ID>  The relay's id (1-128 of",
        ),
    ] {
        let text = help(args);
        assert!(text.contains(id), "{args:?}: {text}");
    }

    // An old spelling and its new one make the same change.
    let dir = temp_dir();
    let file = dir.path().join("devices.json");
    let file = file.to_str().unwrap();
    let run = |args: &[&str]| {
        let output = lakegate(&[&["keys"][..], args, &["--file", file]].concat(), &[]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {stderr}");
        stderr
    };
    run(&["add", "pump-1"]);
    run(&["device", "add", "pump-2"]);
    run(&["add-relay", "site-a", "--devices", "pump-1"]);
    run(&["relay", "add", "site-b", "--devices", "pump-2"]);
    assert!(run(&["disable-relay", "site-a"]).contains("disabled relay \"site-a\""));
    assert!(run(&["relay", "disable", "site-b"]).contains("disabled relay \"site-b\""));
    run(&["relay-devices", "site-a", "--devices", "pump-3"]);
    run(&["relay", "devices", "site-b", "--devices", "pump-3"]);
    assert!(run(&["disable", "pump-1"]).contains("disabled device \"pump-1\""));
    run(&["device", "disable", "pump-2"]);
    let listed = lakegate(&["keys", "list", "--file", file], &[]);
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "device\tkeys\tdisabled\trate_per_sec\tburst\n\
         pump-1\t1\ttrue\tdefault\tdefault\n\
         pump-2\t1\ttrue\tdefault\tdefault\n\
         \nrelay\tkeys\tdisabled\tdevices\n\
         site-a\t1\ttrue\tpump-3\n\
         site-b\t1\ttrue\tpump-3\n"
    );
    // `relay` as a device id is still a device id, not the subcommand.
    run(&["add", "relay"]);
    run(&["device", "add", "device"]);
}

#[test]
fn a_missing_registry_file_is_an_error_except_for_add() {
    let dir = temp_dir();
    let file = dir.path().join("devcies.json");
    let path = file.to_str().unwrap();
    for command in REGISTRY_COMMANDS {
        if matches!(**command, ["add" | "add-relay", ..] | [_, "add", ..]) {
            continue;
        }
        assert_refused(command, &["--file", path], "does not exist");
        // A mistyped path leaves nothing behind, not even a lock file.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{command:?} left {left:?}");
    }
    for command in [
        &["add", "pump-3"][..],
        &["add-relay", "site-a", "--devices", "pump-3"],
        &["device", "add", "pump-3"],
        &["relay", "add", "site-a", "--devices", "pump-3"],
    ] {
        let file = dir.path().join(format!("{}.json", command.join("-")));
        let args = [&["keys"][..], command, &["--file", file.to_str().unwrap()]].concat();
        let output = lakegate(&args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("did not exist: created it"), "{stderr}");
        let registry = Registry::parse(&std::fs::read(&file).unwrap()).unwrap();
        let key = String::from_utf8(output.stdout).unwrap();
        assert!(registry.authenticate(key.trim()).is_ok());
    }
}

/// A real gateway with the default 60 s reload: a key `keys add` prints works within
/// 3 s, because the gateway watches its registry file, and the command says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_added_to_a_watched_file_works_within_seconds() {
    let emulator = start_emulator(emulator_config()).await;
    let dir = temp_dir();
    let file = dir.path().join("devices.json");
    std::fs::write(&file, r#"{"devices": {}}"#).unwrap();
    let mut env = gateway_env(&emulator, &file, &[]);
    env.remove("LAKEGATE_KEYS_REFRESH_SECS");
    let gateway = LakegateProcess::spawn(env!("CARGO_BIN_EXE_lakegate"), &env, |_| {}).unwrap();
    let url = format!("http://{}", gateway.address);
    let http = lakegate::databricks::http_client().unwrap();
    let devices = async || metric_at(&http, &url, "lakegate_registry_devices").await;
    assert_eq!(devices().await, 0.0);

    let path = file.to_str().unwrap();
    let added = lakegate(&["keys", "add", "pump-3", "--file", path], &[]);
    let changed = std::time::Instant::now();
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{stderr}");
    assert!(
        stderr.contains("picks this up within about a second"),
        "{stderr}"
    );
    let key = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    // Waits on the gauge rather than on 401s, which spend the address's failure budget.
    eventually_async(Duration::from_secs(30), "the registry reload", async || {
        devices().await == 1.0
    })
    .await;
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(3), "picked up after {took:?}");
    let response = http
        .post(format!("{url}/ingest"))
        .header("X-API-Key", &key)
        .json(&reading("p-1", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gateway.terminate().await.unwrap();
}
