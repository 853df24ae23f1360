//! A gateway on a loopback port in front of an in-process emulator, built by name
//! ([`Harness::builder`]), and requests to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lakegate::app::Gateway;
use lakegate::config::GatewayConfig;
use lakegate::databricks::{Client, StatementRequest, Value};
use lakegate::devices::{generate_key, hash_key};
use lakegate_emulator::{Emulator, EmulatorConfig};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::workspace::{reader, row_count};
use crate::{TABLE, TempDir, emulator_config, gateway_env, poll, start_emulator};

/// Device keys of the test registry.
pub struct Keys {
    pub sensor: String,
    /// The sensor's second key (rotation).
    pub sensor_next: String,
    pub other: String,
    pub disabled: String,
    /// rate 1/s, burst 3.
    pub slow: String,
}

impl Keys {
    /// Fresh keys, none of them in any registry yet.
    pub fn new() -> Keys {
        let key = || generate_key().key.expose_secret().to_owned();
        Keys {
            sensor: key(),
            sensor_next: key(),
            other: key(),
            disabled: key(),
            slow: key(),
        }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new()
    }
}

/// The registry with the test devices, and the devices and relays of `additions`
/// (`{"devices": {...}, "relays": {...}}`, either optional), written to a file the
/// gateway reloads.
fn write_registry(keys: &Keys, path: &Path, sensor_keys: &[&str], additions: &Json) {
    let mut registry = json!({"devices": {
        "sensor-1": {"keys": sensor_keys.iter().map(|k| hash_key(k)).collect::<Vec<_>>()},
        "sensor-2": {"keys": [hash_key(&keys.other)]},
        "retired-1": {"keys": [hash_key(&keys.disabled)], "disabled": true},
        "slow-1": {"keys": [hash_key(&keys.slow)], "rate_per_sec": 1, "burst": 3},
    }});
    if let Some(devices) = additions.get("devices").and_then(Json::as_object) {
        let all = registry["devices"].as_object_mut().unwrap();
        all.extend(devices.clone());
    }
    if let Some(relays) = additions.get("relays") {
        registry["relays"] = relays.clone();
    }
    std::fs::write(path, registry.to_string()).unwrap();
}

/// What a test gateway differs in, named: `Harness::builder().env(..).start()`.
/// Unset, it is the test workspace ([`emulator_config`]), the test devices only, the
/// environment of [`gateway_env`] and a fresh loopback port.
#[must_use = "a builder does nothing until `start`"]
pub struct HarnessBuilder {
    emulator: EmulatorConfig,
    env: Vec<(String, String)>,
    registry: Json,
    listener: Option<TcpListener>,
    zerobus: bool,
}

impl HarnessBuilder {
    /// Write through Zerobus Ingest (`LAKEGATE_SINK=zerobus`) into the emulator's Zerobus
    /// service, which this starts on a loopback port of its own.
    pub fn zerobus(mut self) -> Self {
        self.zerobus = true;
        self
    }

    /// The workspace behind the gateway (faults, latency, refused values).
    pub fn emulator(mut self, config: EmulatorConfig) -> Self {
        self.emulator = config;
        self
    }

    /// A gateway setting, replacing the test default of the same name.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Several settings at once (see [`HarnessBuilder::env`]).
    pub fn envs(self, settings: &[(&str, &str)]) -> Self {
        settings
            .iter()
            .fold(self, |builder, (name, value)| builder.env(name, value))
    }

    /// Devices and relays the registry holds besides the test devices:
    /// `{"devices": {...}, "relays": {...}}`, either optional.
    pub fn registry(mut self, additions: Json) -> Self {
        self.registry = additions;
        self
    }

    /// Serve on `listener` (a port chosen beforehand, where nothing answered until now)
    /// instead of a fresh one.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Starts the emulator, writes the registry and starts the gateway.
    pub async fn start(self) -> Harness {
        let listener = match self.listener {
            Some(listener) => listener,
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let mut emulator_config = self.emulator;
        if self.zerobus {
            emulator_config.zerobus = Some(([127, 0, 0, 1], 0).into());
        }
        let emulator = start_emulator(emulator_config).await;
        let keys = Keys::new();
        let dir = crate::temp_dir();
        let registry_file = dir.path().join("devices.json");
        let sensor_keys = [keys.sensor.as_str(), keys.sensor_next.as_str()];
        write_registry(&keys, &registry_file, &sensor_keys, &self.registry);
        let mut settings = self.env.clone();
        if let Some(addr) = emulator.zerobus_addr().filter(|_| self.zerobus) {
            settings.insert(0, ("LAKEGATE_SINK".into(), "zerobus".into()));
            settings.insert(
                1,
                ("LAKEGATE_ZEROBUS_ENDPOINT".into(), format!("http://{addr}")),
            );
        }
        let overrides: Vec<(&str, &str)> = settings
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let env = gateway_env(&emulator, &registry_file, &overrides);
        let config = GatewayConfig::from_map(&env).expect("valid gateway config");
        let reader = reader(&env);

        let gateway = Gateway::start(config).await.expect("gateway starts");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(gateway.run(listener, async {
            let _ = signal.await;
        }));
        Harness {
            emulator,
            url,
            http: lakegate::databricks::http_client().unwrap(),
            keys,
            registry_file,
            registry_additions: self.registry,
            reader,
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: dir,
        }
    }
}

pub struct Harness {
    pub emulator: Emulator,
    pub url: String,
    pub http: reqwest::Client,
    pub keys: Keys,
    pub registry_file: PathBuf,
    /// Entries added to the test registry ([`HarnessBuilder::registry`]).
    registry_additions: Json,
    reader: Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// Holds the registry file; removed when the harness is dropped, after the gateway.
    _dir: TempDir,
}

impl Harness {
    /// A gateway to configure by name; see [`HarnessBuilder`].
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            emulator: emulator_config(),
            env: Vec::new(),
            registry: Json::Null,
            listener: None,
            zerobus: false,
        }
    }

    /// The gateway with every test default: `Harness::builder().start()`.
    pub async fn start() -> Harness {
        Self::builder().start().await
    }

    /// Rewrites the registry file with these keys for sensor-1 and waits for a reload.
    pub async fn rotate_sensor_keys(&self, sensor_keys: &[&str]) {
        write_registry(
            &self.keys,
            &self.registry_file,
            sensor_keys,
            &self.registry_additions,
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    /// A POST to `/ingest` carrying a device key, to complete (body, headers) and send.
    pub fn post(&self, key: &str) -> reqwest::RequestBuilder {
        self.post_to("/ingest", key)
    }

    /// A POST to `path` (with its query) carrying a device key.
    pub fn post_to(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .header("X-API-Key", key)
    }

    /// Sends `body` as JSON to `path` (with its query) with a device key: the response,
    /// for its status and headers.
    pub async fn send_json(
        &self,
        path: &str,
        key: &str,
        body: &impl Serialize,
    ) -> reqwest::Response {
        self.post_to(path, key).json(body).send().await.unwrap()
    }

    /// [`Harness::send_json`] to `path`, answered as (status, JSON body).
    pub async fn post_json_to(&self, path: &str, key: &str, body: &impl Serialize) -> (u16, Json) {
        respond(self.send_json(path, key, body).await).await
    }

    /// `POST /ingest` of `body` as JSON with a device key: (status, JSON body).
    pub async fn post_json(&self, key: &str, body: &impl Serialize) -> (u16, Json) {
        self.post_json_to("/ingest", key, body).await
    }

    /// `POST /ingest?ack=accept`: the answer once the readings are queued.
    pub async fn accept(&self, key: &str, body: &impl Serialize) -> reqwest::Response {
        self.send_json("/ingest?ack=accept", key, body).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// The value of an unlabelled metric, or of one series given with its labels.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.http, &self.url, series).await
    }

    /// Rows of the table, in a stable order: (device, reading, metric, value, value_str).
    pub async fn rows(&self) -> Vec<(String, String, String, Value, Value)> {
        let sql = format!(
            "SELECT device_id, reading_id, metric, value, value_str FROM {TABLE} \
             ORDER BY device_id, reading_id, metric"
        );
        self.query(&sql)
            .await
            .into_iter()
            .map(|row| {
                let text = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    other => panic!("expected a string, got {other:?}"),
                };
                (
                    text(&row[0]),
                    text(&row[1]),
                    text(&row[2]),
                    row[3].clone(),
                    row[4].clone(),
                )
            })
            .collect()
    }

    /// A client of the workspace behind the gateway, for checking what was written.
    pub fn reader(&self) -> &Client {
        &self.reader
    }

    pub async fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        self.reader
            .statements()
            .execute(StatementRequest::new(sql))
            .await
            .expect("query runs")
            .collect_rows()
            .await
            .unwrap()
    }

    pub async fn row_count(&self) -> i64 {
        row_count(&self.reader, TABLE)
            .await
            .expect("the table's rows are counted")
    }

    /// Waits until the table holds `rows` rows.
    pub async fn wait_for_rows(&self, rows: i64, within: Duration) {
        let every = Duration::from_millis(100);
        let count = async || self.row_count().await;
        if let Err(count) = poll(within, every, count, |n| *n == rows).await {
            panic!("table has {count} rows, expected {rows}");
        }
    }

    /// Sends the shutdown signal without waiting for the gateway to stop.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Sends the shutdown signal and waits for the gateway to drain and stop.
    pub async fn stop(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// The value of a metric (see [`Harness::metric`]) of the gateway at `url`.
pub async fn metric_at(http: &reqwest::Client, url: &str, series: &str) -> f64 {
    let metrics = http.get(format!("{url}/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

/// A response as (status, JSON body), `null` when the body is not JSON.
pub async fn respond(response: reqwest::Response) -> (u16, Json) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Json::Null);
    (status, body)
}

/// One reading of `temperature`, at a fixed time.
pub fn reading(id: &str, temperature: f64) -> Json {
    json!({"id": id, "ts": "2026-11-29T12:00:00Z", "metrics": {"temperature": temperature}})
}
