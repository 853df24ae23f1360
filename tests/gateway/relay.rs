//! `lakegate relay` as a real process between a site's devices and a gateway: devices
//! hold only their own keys; the relay answers 202 once readings are on its disk and
//! forwards them with its relay key. Killed with SIGKILL mid-stream, cut off from its
//! upstream, filled to its cap, or in front of an Apps proxy whose tokens live seconds:
//! every reading it acknowledged lands exactly once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lakegate::databricks::Value;
use lakegate::devices::{generate_key, hash_key};
use lakegate_emulator::{AppsProxy, AppsProxyConfig, EmulatorConfig};
use lakegate_testkit::{
    LakegateProcess, SP_ID, SP_SECRET, TABLE, TempDir, emulator_config, eventually_async, poll,
};
use secrecy::ExposeSecret;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;

use lakegate_testkit::gateway::{Harness, respond};

/// The site: `pump-1` … `pump-4` and `other-9` with their own keys, and relay `site-a`
/// that the gateway lets speak for `pump-*` only.
pub(crate) struct Site {
    pub(crate) relay_key: String,
    /// (device id, key), the pumps first, `other-9` last.
    devices: Vec<(String, String)>,
    dir: TempDir,
}

impl Site {
    pub(crate) fn new() -> Site {
        let key = || generate_key().key.expose_secret().to_owned();
        let mut devices: Vec<(String, String)> =
            (1..=4).map(|n| (format!("pump-{n}"), key())).collect();
        devices.push(("other-9".to_owned(), key()));
        let site = Site {
            relay_key: key(),
            devices,
            dir: lakegate_testkit::temp_dir(),
        };
        // The relay validates device keys from a registry of its own.
        std::fs::write(site.registry_file(), site.registry().to_string()).unwrap();
        site
    }

    fn registry(&self) -> Json {
        let devices: serde_json::Map<String, Json> = self
            .devices
            .iter()
            .map(|(id, key)| (id.clone(), json!({"keys": [hash_key(key)]})))
            .collect();
        json!({
            "devices": devices,
            "relays": {"site-a": {"keys": [hash_key(&self.relay_key)], "devices": ["pump-*"]}},
        })
    }

    fn registry_file(&self) -> std::path::PathBuf {
        self.dir.path().join("site-devices.json")
    }

    fn spool(&self) -> std::path::PathBuf {
        self.dir.path().join("spool")
    }

    pub(crate) fn key(&self, device: &str) -> &str {
        &self.devices.iter().find(|(id, _)| id == device).unwrap().1
    }

    /// A gateway whose registry knows the site's devices and relay.
    pub(crate) async fn gateway(&self) -> Harness {
        Harness::builder().registry(self.registry()).start().await
    }

    /// The environment of a relay of this site.
    fn relay_env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            (
                "LAKEGATE_DEVICE_KEYS_FILE",
                self.registry_file().display().to_string(),
            ),
            ("LAKEGATE_RELAY_KEY", self.relay_key.clone()),
            ("LAKEGATE_LISTEN_ADDR", "127.0.0.1".to_owned()),
            ("LAKEGATE_KEYS_REFRESH_SECS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        env.extend(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        env
    }

    /// Starts `lakegate relay` in front of `upstream`, on this site's spool.
    pub(crate) fn relay(&self, upstream: &str, extra: &[(&str, &str)]) -> Relay {
        let spool = self.spool().display().to_string();
        let args = ["relay", "--upstream", upstream, "--spool", &spool];
        let process = LakegateProcess::spawn_command(
            env!("CARGO_BIN_EXE_lakegate"),
            &args,
            &self.relay_env(extra),
            |_| {},
        )
        .expect("relay starts");
        Relay {
            url: format!("http://{}", process.address),
            process,
            http: lakegate::databricks::http_client().unwrap(),
        }
    }

    /// Runs `lakegate relay` expecting it not to start: its exit status and what it said.
    fn relay_refusing_to_start(&self, upstream: &str, extra: &[(&str, &str)]) -> (bool, String) {
        let spool = self.spool().display().to_string();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lakegate"))
            .args(["relay", "--upstream", upstream, "--spool", &spool])
            .env_clear()
            .envs(self.relay_env(extra))
            .env("DATABRICKS_APP_PORT", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), said)
    }
}

pub(crate) struct Relay {
    process: LakegateProcess,
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
}

impl Relay {
    async fn post(&self, key: &str, readings: &Json) -> (u16, Json) {
        let response = self
            .http
            .post(format!("{}/ingest", self.url))
            .header("X-API-Key", key)
            .json(readings)
            .send()
            .await
            .unwrap();
        respond(response).await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The value of a metric series of the relay (given with its labels, if any).
    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    }
}

fn reading(id: &str, second: usize, value: f64) -> Json {
    json!({
        "id": id,
        "ts": format!("2026-12-01T10:{:02}:{:02}Z", (second / 60) % 60, second % 60),
        "metrics": {"flow": value},
    })
}

/// A port where nothing listens (yet): the upstream is down.
async fn free_port() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The gateway, started late on `address` (the relay's upstream that was down).
async fn gateway_on(address: std::net::SocketAddr, site: &Site) -> Harness {
    let listener = TcpListener::bind(address).await.unwrap();
    Harness::builder()
        .listener(listener)
        .registry(site.registry())
        .start()
        .await
}

/// (device, reading id) of every row, and how many rows there are.
async fn landed(gateway: &Harness) -> (BTreeSet<(String, String)>, usize) {
    let rows = gateway
        .query(&format!("SELECT device_id, reading_id FROM {TABLE}"))
        .await;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => panic!("expected a string, got {other:?}"),
    };
    let count = rows.len();
    let set = rows.iter().map(|r| (text(&r[0]), text(&r[1]))).collect();
    (set, count)
}

/// Waits until every reading in `acknowledged` is in the table, then checks none is
/// there twice (each reading has one metric, so one row).
async fn assert_landed_once(gateway: &Harness, acknowledged: &BTreeSet<(String, String)>) {
    let landed_sets = async || landed(gateway).await;
    let (set, count) = match poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        landed_sets,
        |(set, _)| acknowledged.is_subset(set),
    )
    .await
    {
        Ok(landed) => landed,
        Err((set, _)) => panic!(
            "{} of {} acknowledged readings missing",
            acknowledged.difference(&set).count(),
            acknowledged.len()
        ),
    };
    assert_eq!(count, set.len(), "a reading was written twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_with_only_its_key_reaches_the_table_through_the_relay() {
    let site = Site::new();
    let gateway = site.gateway().await;
    let relay = site.relay(&gateway.url, &[]);
    let pump = site.key("pump-1");

    // With an id and without one; a boolean, a string and a number.
    let readings = json!([
        {"id": "r-1", "ts": "2026-12-01T10:00:00.123456Z", "metrics": {"flow": 1.5, "open": true, "state": "run"}},
        {"ts": "2026-12-01T10:00:01Z", "metrics": {"flow": 2.5}},
    ]);
    let (status, body) = relay.post(pump, &readings).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["spooled"], true);
    gateway.wait_for_rows(4, Duration::from_secs(30)).await;
    let rows = gateway.rows().await;
    assert!(rows.iter().all(|row| row.0 == "pump-1"), "{rows:?}");
    assert!(rows.contains(&(
        "pump-1".into(),
        "r-1".into(),
        "open".into(),
        Value::Float(1.0),
        Value::Null
    )));

    // The same readings straight to the gateway: the same identities (the derived id
    // too), so nothing new is written.
    let (status, body) = gateway.post_json(pump, &readings).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.row_count().await, 4);

    // The gateway's validation and refusals, at the relay.
    let bad = json!([{"id": "b", "ts": "2026-12-01T10:00:00Z", "metrics": {"bad name": 1}}]);
    let (relay_status, relay_body) = relay.post(pump, &bad).await;
    let (gateway_status, gateway_body) = gateway.post_json(pump, &bad).await;
    assert_eq!(relay_status, gateway_status);
    assert_eq!(relay_body["error"], gateway_body["error"]);
    assert_eq!(relay_body["rejected"], gateway_body["rejected"]);
    let (status, body) = relay.post("not-a-key", &readings).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    // The relay forwards with its own key: the device's never leaves the site.
    let spooled = std::fs::read_dir(site.spool())
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap_or_default())
        .any(|bytes| String::from_utf8_lossy(&bytes).contains(pump));
    assert!(!spooled, "a device key was written to the spool");

    // Operations: ready (upstream and spool), counted; no reads at a relay.
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let ready: Json = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        (ready["upstream"].as_str(), ready["spool"].as_str()),
        (Some("ok"), Some("ok"))
    );
    eventually_async(
        Duration::from_secs(30),
        "the relay counted its forwarded readings",
        async || {
            relay
                .metric("lakegate_relay_forwarded_readings_total")
                .await
                == 2.0
        },
    )
    .await;
    assert_eq!(relay.metric("lakegate_spool_readings").await, 0.0);
    assert_eq!(relay.get("/api/devices").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_stream_and_restarted_writes_every_acknowledged_reading_once() {
    let site = Site::new();
    let gateway = site.gateway().await;
    let relay = site.relay(&gateway.url, &[]);
    let url = Arc::new(Mutex::new(relay.url.clone()));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let http = lakegate::databricks::http_client().unwrap();

    // Four pumps, each sending one reading a request and resending it until a 202.
    let senders: Vec<_> = site.devices[..4]
        .iter()
        .map(|(device, key)| {
            let (device, key) = (device.clone(), key.clone());
            let (url, acknowledged, stop, http) = (
                url.clone(),
                acknowledged.clone(),
                stop.clone(),
                http.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{device}-{n}");
                    let target = format!("{}/ingest", url.lock().unwrap());
                    let sent = http
                        .post(target)
                        .header("X-API-Key", &key)
                        .timeout(Duration::from_secs(5))
                        .json(&json!([reading(&id, n, n as f64)]))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 202 => {
                            acknowledged.lock().unwrap().insert((device.clone(), id));
                            n += 1;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let Relay { mut process, .. } = relay;
    process.child.kill().unwrap(); // SIGKILL
    process.child.wait().unwrap();
    let at_kill = acknowledged.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = site.relay(&gateway.url, &[]);
    *url.lock().unwrap() = restarted.url.clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(at_kill > 20, "only {at_kill} readings before the kill");
    assert!(acknowledged.len() > at_kill, "none after the restart");
    assert_landed_once(&gateway, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_upstream_is_down_devices_get_202_and_the_spool_drains_after_a_restart() {
    let site = Site::new();
    let upstream = free_port().await;
    let relay = site.relay(&format!("http://{upstream}"), &[]);
    let mut acknowledged = BTreeSet::new();
    for n in 0..10 {
        let (device, key) = &site.devices[n % 4];
        let id = format!("{device}-{n}");
        let (status, body) = relay.post(key, &json!([reading(&id, n, 1.0)])).await;
        assert_eq!(status, 202, "{body}");
        acknowledged.insert((device.clone(), id));
    }
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains(r#""upstream":"unreachable""#), "{ready}");
    assert_eq!(relay.metric("lakegate_spool_readings").await, 10.0);
    eventually_async(
        Duration::from_secs(30),
        "the relay counted the upstream's failures",
        async || relay.metric("lakegate_relay_upstream_failures_total").await >= 1.0,
    )
    .await;

    // A clean stop and a restart on the same spool, still without the upstream: the
    // spool is all there is, and nothing in it is lost.
    let (status, took) = relay.process.terminate().await.unwrap();
    assert!(status.success(), "the relay stopped with {status}");
    assert!(
        took < Duration::from_secs(15),
        "the relay took {took:?} to stop"
    );
    let relay = site.relay(&format!("http://{upstream}"), &[]);
    assert_eq!(relay.metric("lakegate_spool_readings").await, 10.0);

    let gateway = gateway_on(upstream, &site).await;
    assert_landed_once(&gateway, &acknowledged).await;
    eventually_async(Duration::from_secs(30), "the spool emptied", async || {
        relay.metric("lakegate_spool_readings").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_answers_503_and_loses_nothing() {
    let site = Site::new();
    let upstream = free_port().await;
    let relay = site.relay(
        &format!("http://{upstream}"),
        &[("LAKEGATE_SPOOL_MAX_BYTES", "3000")],
    );
    let (device, key) = &site.devices[0];
    let mut acknowledged = BTreeSet::new();
    let mut refused = None;
    for n in 0..100 {
        let readings: Vec<Json> = (0..5)
            .map(|i| reading(&format!("{device}-{n}-{i}"), n * 5 + i, 1.0))
            .collect();
        let response = relay
            .http
            .post(format!("{}/ingest", relay.url))
            .header("X-API-Key", key)
            .json(&readings)
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = respond(response).await;
        if status == 503 {
            refused = Some((body, retry_after));
            break;
        }
        assert_eq!(status, 202, "{body}");
        acknowledged.extend((0..5).map(|i| (device.clone(), format!("{device}-{n}-{i}"))));
    }
    let (body, retry_after) = refused.expect("the spool filled up");
    assert_eq!(body["error"], "spool_full", "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert!(!acknowledged.is_empty());
    let (_, ready) = relay.get("/readyz").await;
    assert!(ready.contains(r#""spool":"full""#), "{ready}");

    let gateway = gateway_on(upstream, &site).await;
    assert_landed_once(&gateway, &acknowledged).await;
    // Room again once forwarded.
    eventually_async(
        Duration::from_secs(30),
        "the relay takes readings again",
        async || {
            let again = json!([reading("after", 0, 2.0)]);
            relay.post(key, &again).await.0 == 202
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readings_the_upstream_refuses_for_good_are_kept_and_their_device_turned_away() {
    let site = Site::new();
    // The gateway does not know pump-3; the site does.
    let mut registry = site.registry();
    registry["devices"]
        .as_object_mut()
        .unwrap()
        .remove("pump-3");
    let gateway = Harness::builder().registry(registry).start().await;
    let relay = site.relay(&gateway.url, &[]);
    // `other-9` has a valid key at the site, but the relay's entry there (as at the
    // gateway) names pump-* only: refused up front, nothing spooled.
    let (status, body) = relay
        .post(site.key("other-9"), &json!([reading("o-1", 1, 9.0)]))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "device_not_allowed");
    assert_eq!(relay.metric("lakegate_spool_readings").await, 0.0);

    let (status, body) = relay
        .post(site.key("pump-3"), &json!([reading("u-1", 1, 3.0)]))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = relay
        .post(site.key("pump-2"), &json!([reading("p-1", 1, 2.0)]))
        .await;
    assert_eq!(status, 202, "{body}");

    assert_landed_once(
        &gateway,
        &BTreeSet::from([("pump-2".to_owned(), "p-1".to_owned())]),
    )
    .await;
    let refused_file = site.spool().join("refused.ndjson");
    eventually_async(Duration::from_secs(30), "refused.ndjson", async || {
        refused_file.exists()
    })
    .await;
    let refused: Json = serde_json::from_str(
        std::fs::read_to_string(&refused_file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(refused["reading"]["device_id"], "pump-3");
    assert_eq!(refused["reading"]["id"], "u-1");
    assert_eq!(refused["reason"], "unknown_device");
    assert_eq!(
        relay.metric("lakegate_relay_refused_readings_total").await,
        1.0
    );
    // The relay takes no more of pump-3's readings: it says so instead of a 202 that
    // would only fill refused.ndjson.
    let (status, body) = relay
        .post(site.key("pump-3"), &json!([reading("u-2", 2, 3.0)]))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "refused_upstream");
    assert!(
        body["message"].as_str().unwrap().contains("unknown_device"),
        "{body}"
    );
    let (set, _) = landed(&gateway).await;
    assert!(!set.iter().any(|(device, _)| device != "pump-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_the_apps_proxy_with_tokens_of_seconds_no_send_fails() {
    let site = Site::new();
    let emulator = EmulatorConfig {
        token_lifetime: Duration::from_secs(3),
        ..emulator_config()
    };
    let gateway = Harness::builder()
        .emulator(emulator)
        .registry(site.registry())
        .start()
        .await;
    let proxy = AppsProxy::start(AppsProxyConfig::new(&gateway.url), &gateway.emulator)
        .await
        .expect("the proxy starts");
    let emulator_url = gateway.emulator.url();
    let relay = site.relay(
        &proxy.url(),
        &[
            ("DATABRICKS_HOST", emulator_url.as_str()),
            ("DATABRICKS_CLIENT_ID", SP_ID),
            ("DATABRICKS_CLIENT_SECRET", SP_SECRET),
        ],
    );
    let mut acknowledged = BTreeSet::new();
    // Eight seconds of readings: the relay's token must be renewed twice or more.
    for n in 0..16 {
        let (device, key) = &site.devices[n % 4];
        let id = format!("{device}-{n}");
        let (status, body) = relay.post(key, &json!([reading(&id, n, 1.0)])).await;
        assert_eq!(status, 202, "{body}");
        acknowledged.insert((device.clone(), id));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_landed_once(&gateway, &acknowledged).await;
    assert_eq!(
        relay.metric("lakegate_relay_upstream_failures_total").await,
        0.0,
        "a send failed"
    );
    let fetched = relay
        .metric(r#"lakegate_token_fetches_total{outcome="succeeded"}"#)
        .await;
    assert!(fetched >= 2.0, "{fetched} token fetches");
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 200, "through the proxy: {ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_whose_key_the_gateway_refuses_does_not_start_and_one_revoked_later_turns_unready()
{
    let site = Site::new();
    // The gateway knows the devices but not this relay's key.
    let mut refusing = site.registry();
    refusing["relays"]["site-a"]["keys"] = json!([hash_key("some-other-key")]);
    let gateway = Harness::builder().registry(refusing.clone()).start().await;
    let (started, said) = site.relay_refusing_to_start(&gateway.url, &[]);
    assert!(!started, "{said}");
    assert!(said.contains("refuses the relay key"), "{said}");
    assert!(said.contains("LAKEGATE_RELAY_KEY"), "{said}");
    assert!(!said.contains(&site.relay_key), "the key is never printed");
    // A device's key in the relay's place is named for what it is.
    let (started, said) =
        site.relay_refusing_to_start(&gateway.url, &[("LAKEGATE_RELAY_KEY", site.key("pump-1"))]);
    assert!(!started, "{said}");
    assert!(said.contains("device \"pump-1\"'s key"), "{said}");
    assert_eq!(gateway.row_count().await, 0);

    // The operator adds the key at the gateway: the relay starts and forwards.
    std::fs::write(&gateway.registry_file, site.registry().to_string()).unwrap();
    let relay = eventually_relay(&site, &gateway.url).await;
    let (status, body) = relay
        .post(site.key("pump-1"), &json!([reading("k-1", 1, 1.0)]))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_landed_once(
        &gateway,
        &BTreeSet::from([("pump-1".to_owned(), "k-1".to_owned())]),
    )
    .await;

    // Revoked while the relay runs: reachable but refusing, so unready once that has
    // lasted 30 s; what it took stays spooled.
    std::fs::write(&gateway.registry_file, refusing.to_string()).unwrap();
    let mut acknowledged = BTreeSet::from([("pump-1".to_owned(), "k-1".to_owned())]);
    eventually_async(
        Duration::from_secs(60),
        "forwarding reported failing",
        async || {
            let id = format!("k-{}", acknowledged.len() + 1);
            let (status, _) = relay
                .post(
                    site.key("pump-1"),
                    &json!([reading(&id, acknowledged.len() + 1, 1.0)]),
                )
                .await;
            if status == 202 {
                acknowledged.insert(("pump-1".to_owned(), id));
            }
            let (status, ready) = relay.get("/readyz").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            status == 503
                && ready.contains(r#""forwarding":"failing""#)
                && ready.contains(r#""upstream":"ok""#)
        },
    )
    .await;
    assert!(relay.metric("lakegate_spool_readings").await >= 1.0);

    // The key is back: what was kept lands, the relay is ready.
    std::fs::write(&gateway.registry_file, site.registry().to_string()).unwrap();
    assert_landed_once(&gateway, &acknowledged).await;
    eventually_async(Duration::from_secs(15), "ready again", async || {
        relay.get("/readyz").await.0 == 200
    })
    .await;
}

/// Starts a relay once the gateway's registry reload has taken its key.
async fn eventually_relay(site: &Site, upstream: &str) -> Relay {
    for _ in 0..30 {
        if site.relay_refusing_to_start_probe(upstream).await {
            return site.relay(upstream, &[]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the gateway never took the relay key")
}

impl Site {
    /// Whether the upstream knows the relay key now (`GET /api/whoami`).
    async fn relay_refusing_to_start_probe(&self, upstream: &str) -> bool {
        let response = lakegate::databricks::http_client()
            .unwrap()
            .get(format!("{upstream}/api/whoami"))
            .header("X-API-Key", &self.relay_key)
            .send()
            .await
            .unwrap();
        let (status, body) = respond(response).await;
        status == 200 && body["sender"] == "relay" && body["id"] == "site-a"
    }
}

/// `pump-1` held by the gateway to `docs/device-keys.md`'s `rate_per_sec` 5 and `burst` 10.
fn rate_limited_registry(site: &Site) -> Json {
    let mut registry = site.registry();
    registry["devices"]["pump-1"]["rate_per_sec"] = json!(5);
    registry["devices"]["pump-1"]["burst"] = json!(10);
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_devices_backlog_drains_through_the_relay_once() {
    let site = Site::new();
    let upstream = free_port().await;
    let relay = site.relay(&format!("http://{upstream}"), &[]);
    let pump = site.key("pump-1");
    // 60 readings spooled during an outage.
    let mut acknowledged = BTreeSet::new();
    for n in 0..60 {
        let id = format!("b-{n}");
        let (status, body) = relay.post(pump, &json!([reading(&id, n, 1.0)])).await;
        assert_eq!(status, 202, "{body}");
        acknowledged.insert(("pump-1".to_owned(), id));
    }
    let listener = TcpListener::bind(upstream).await.unwrap();
    let gateway = Harness::builder()
        .listener(listener)
        .registry(rate_limited_registry(&site))
        .start()
        .await;
    // At 5 a second after a burst of 10, the backlog takes 10 s: what the gateway took
    // is never sent again, so every reading's turn comes.
    assert_landed_once(&gateway, &acknowledged).await;
    eventually_async(Duration::from_secs(30), "the spool emptied", async || {
        relay.metric("lakegate_spool_readings").await == 0.0
    })
    .await;
    assert_eq!(
        relay
            .metric("lakegate_relay_forwarded_readings_total")
            .await,
        60.0
    );
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains(r#""forwarding":"ok""#), "{ready}");
    assert!(!site.spool().join("refused.ndjson").exists());
}

/// An upstream that answers every ingest with a redirect to a login page that says 200,
/// as a sign-in wall in front of a wrong URL does. Returns its URL.
async fn login_wall() -> String {
    use axum::response::{Html, Redirect};
    use axum::routing::{get, post};
    let login = || async { Html("<html><body>Sign in to continue</body></html>") };
    let app = axum::Router::new()
        .route(
            "/api/ingest",
            post(|| async { Redirect::temporary("/login") }),
        )
        .route("/login", get(login).post(login))
        .route("/healthz", get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_to_a_login_page_is_not_a_commit() {
    let site = Site::new();
    let wall = login_wall().await;
    let relay = site.relay(&wall, &[]);
    let mut acknowledged = BTreeSet::new();
    for n in 0..3 {
        let id = format!("w-{n}");
        let (status, body) = relay
            .post(site.key("pump-2"), &json!([reading(&id, n, 1.0)]))
            .await;
        assert_eq!(status, 202, "{body}");
        acknowledged.insert(("pump-2".to_owned(), id));
    }
    eventually_async(
        Duration::from_secs(30),
        "the relay counted the redirects as failures",
        async || relay.metric("lakegate_relay_upstream_failures_total").await >= 2.0,
    )
    .await;
    assert_eq!(
        relay
            .metric("lakegate_relay_forwarded_readings_total")
            .await,
        0.0
    );
    assert_eq!(relay.metric("lakegate_spool_readings").await, 3.0);

    // The agent without a spool: not committed, so exit status 3.
    let sent = std::process::Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["send", "--upstream", &wall, "--timeout", "2"])
        .env("LAKEGATE_DEVICE_KEY", site.key("pump-3"))
        .env_remove("DATABRICKS_HOST")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = sent;
    {
        use std::io::Write;
        let mut stdin = sent.stdin.take().unwrap();
        writeln!(stdin, "{}", reading("s-1", 1, 1.0)).unwrap();
    }
    let output = sent.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{said}");
    assert!(said.contains("redirect"), "{said}");

    // Pointed at the real gateway, the relay sends what it kept, once.
    relay.process.terminate().await.unwrap();
    let gateway = site.gateway().await;
    let relay = site.relay(&gateway.url, &[]);
    assert_landed_once(&gateway, &acknowledged).await;
    eventually_async(Duration::from_secs(30), "the spool emptied", async || {
        relay.metric("lakegate_spool_readings").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reading_the_upstream_never_takes_is_kept_aside_and_its_lane_moves_on() {
    let site = Site::new();
    // The gateway takes bodies of 8 KiB; the relay, 1 MiB.
    let gateway = Harness::builder()
        .env("LAKEGATE_MAX_BODY_BYTES", "8192")
        .registry(site.registry())
        .start()
        .await;
    let relay = site.relay(&gateway.url, &[]);
    let pump = site.key("pump-1");
    // Text that gzip cannot shrink below the gateway's cap.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = || {
        (0..1000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect::<String>()
    };
    let metrics: serde_json::Map<String, Json> =
        (0..40).map(|n| (format!("m{n}"), json!(noise()))).collect();
    let large = json!([{"id": "large", "ts": "2026-12-01T10:00:00Z", "metrics": metrics}]);
    let (status, body) = relay.post(pump, &large).await;
    assert_eq!(status, 202, "{body}");
    // Behind it in the same device's lane.
    let (status, body) = relay.post(pump, &json!([reading("small", 1, 1.0)])).await;
    assert_eq!(status, 202, "{body}");

    assert_landed_once(
        &gateway,
        &BTreeSet::from([("pump-1".to_owned(), "small".to_owned())]),
    )
    .await;
    let refused_file = site.spool().join("refused.ndjson");
    eventually_async(Duration::from_secs(30), "refused.ndjson", async || {
        refused_file.exists()
    })
    .await;
    let kept = std::fs::read_to_string(&refused_file).unwrap();
    let kept: Json = serde_json::from_str(kept.lines().next().unwrap()).unwrap();
    assert_eq!(kept["reading"]["id"], "large");
    assert_eq!(kept["reason"], "body_too_large");
    eventually_async(Duration::from_secs(30), "the spool emptied", async || {
        relay.metric("lakegate_spool_readings").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_devices_resend_is_a_success_not_a_refusal() {
    let site = Site::new();
    let upstream = free_port().await;
    let relay = site.relay(&format!("http://{upstream}"), &[]);
    let pump = site.key("pump-4");
    // The device did not hear the first 202 and sends the same readings again: both
    // copies are spooled. After a restart they go up in one batch.
    let readings = json!([reading("again-1", 1, 1.0), reading("again-2", 2, 2.0)]);
    for _ in 0..2 {
        let (status, body) = relay.post(pump, &readings).await;
        assert_eq!(status, 202, "{body}");
    }
    relay.process.terminate().await.unwrap();
    let gateway = gateway_on(upstream, &site).await;
    let relay = site.relay(&format!("http://{upstream}"), &[]);
    let acknowledged = BTreeSet::from([
        ("pump-4".to_owned(), "again-1".to_owned()),
        ("pump-4".to_owned(), "again-2".to_owned()),
    ]);
    assert_landed_once(&gateway, &acknowledged).await;
    eventually_async(Duration::from_secs(30), "the spool emptied", async || {
        relay.metric("lakegate_spool_readings").await == 0.0
    })
    .await;
    assert_eq!(
        relay.metric("lakegate_relay_refused_readings_total").await,
        0.0
    );
    assert!(!site.spool().join("refused.ndjson").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_records_cannot_fit_is_refused_alone() {
    let site = Site::new();
    let gateway = site.gateway().await;
    // A spool of 80 KB. A request of 1,000 short readings is a 35 KB body, but its
    // records (each with its device, derived id and full timestamp) take far more.
    let relay = site.relay(&gateway.url, &[("LAKEGATE_SPOOL_MAX_BYTES", "80000")]);
    let start_ms: u64 = 1_764_590_400_000;
    let many: Vec<Json> = (0..1000)
        .map(|n| json!({"ts": start_ms + n, "metrics": {"t": n}}))
        .collect();
    let body = Json::Array(many);
    assert!(body.to_string().len() < 80_000);
    let (status, answer) = relay.post(site.key("pump-4"), &body).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "spool_full");

    // The spooler is not wedged: every other request goes through and lands (from the
    // other pumps: pump-4 spent its burst at the relay on the refused request).
    let mut acknowledged = BTreeSet::new();
    for n in 0..5 {
        let (device, key) = &site.devices[n % 3];
        let id = format!("after-{n}");
        let (status, answer) = relay.post(key, &json!([reading(&id, n, 1.0)])).await;
        assert_eq!(status, 202, "{answer}");
        acknowledged.insert((device.clone(), id));
    }
    assert_landed_once(&gateway, &acknowledged).await;
}
