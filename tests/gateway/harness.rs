//! A gateway on a loopback port in front of an in-process emulator.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lakegate::app::Gateway;
use lakegate::config::GatewayConfig;
use lakegate::databricks::{self, Client, StatementRequest, Value};
use lakegate::devices::generate_key;
use lakegate_emulator::{Emulator, EmulatorConfig};
use secrecy::ExposeSecret;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SP_ID: &str = "gateway-test-sp";
pub const SP_SECRET: &str = "gateway-sp-secret-do-not-print";
pub const TABLE: &str = "main.lakegate.readings";

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

pub struct Harness {
    pub emulator: Emulator,
    pub url: String,
    pub http: reqwest::Client,
    pub keys: Keys,
    pub registry_file: PathBuf,
    reader: Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        service_principals: vec![(SP_ID.into(), SP_SECRET.into())],
        ..EmulatorConfig::default()
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lakegate-test-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The registry with the test devices, written to a file the gateway reloads.
fn write_registry(keys: &Keys, path: &PathBuf, sensor_keys: &[&str]) {
    let hash = lakegate::devices::hash_key;
    let registry = json!({"devices": {
        "sensor-1": {"keys": sensor_keys.iter().map(|k| hash(k)).collect::<Vec<_>>()},
        "sensor-2": {"keys": [hash(&keys.other)]},
        "retired-1": {"keys": [hash(&keys.disabled)], "disabled": true},
        "slow-1": {"keys": [hash(&keys.slow)], "rate_per_sec": 1, "burst": 3},
    }});
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(registry.to_string().as_bytes()).unwrap();
}

/// Environment for a gateway in front of `emulator`; `extra` overrides.
pub fn gateway_env(
    emulator: &Emulator,
    registry_file: &Path,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DATABRICKS_HOST", emulator.url()),
        ("DATABRICKS_CLIENT_ID", SP_ID.into()),
        ("DATABRICKS_CLIENT_SECRET", SP_SECRET.into()),
        ("DATABRICKS_WAREHOUSE_ID", emulator.warehouse_id().into()),
        ("LAKEGATE_TABLE", TABLE.into()),
        (
            "LAKEGATE_DEVICE_KEYS_FILE",
            registry_file.display().to_string(),
        ),
        ("LAKEGATE_KEYS_REFRESH_SECS", "1".into()),
        ("LAKEGATE_FLUSH_MS", "50".into()),
        ("LAKEGATE_LISTEN_ADDR", "127.0.0.1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in extra {
        env.insert((*name).to_owned(), (*value).to_owned());
    }
    env
}

pub fn new_keys() -> Keys {
    let key = || generate_key().key.expose_secret().to_owned();
    Keys {
        sensor: key(),
        sensor_next: key(),
        other: key(),
        disabled: key(),
        slow: key(),
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(emulator_config(), &[]).await
    }

    pub async fn start_with(emulator: EmulatorConfig, extra: &[(&str, &str)]) -> Harness {
        let emulator = Emulator::start(emulator).await.expect("emulator starts");
        let keys = new_keys();
        let registry_file = temp_path("devices.json");
        write_registry(&keys, &registry_file, &[&keys.sensor, &keys.sensor_next]);
        let env = gateway_env(&emulator, &registry_file, extra);
        let config = GatewayConfig::from_map(&env).expect("valid gateway config");
        let reader =
            Client::new(&databricks::Config::resolve(Default::default(), &env).unwrap()).unwrap();

        let gateway = Gateway::start(config).await.expect("gateway starts");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
            reader,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Rewrites the registry file with these keys for sensor-1 and waits for a reload.
    pub async fn rotate_sensor_keys(&self, sensor_keys: &[&str]) {
        write_registry(&self.keys, &self.registry_file, sensor_keys);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    pub fn post(&self, key: &str) -> reqwest::RequestBuilder {
        self.post_to("/ingest", key)
    }

    /// A POST to `path` (with its query) carrying a device key.
    pub fn post_to(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .header("X-API-Key", key)
    }

    pub async fn post_json(&self, key: &str, body: &Json) -> (u16, Json) {
        let response = self.post(key).json(body).send().await.unwrap();
        respond(response).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
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
        match self.query(&format!("SELECT count(*) FROM {TABLE}")).await[0][0] {
            Value::Int(n) => n,
            ref other => panic!("count is {other:?}"),
        }
    }

    /// Waits until the table holds `rows` rows.
    pub async fn wait_for_rows(&self, rows: i64, within: Duration) {
        let started = Instant::now();
        loop {
            let count = self.row_count().await;
            if count == rows {
                return;
            }
            assert!(
                started.elapsed() < within,
                "table has {count} rows, expected {rows}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
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

pub async fn respond(response: reqwest::Response) -> (u16, Json) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Json::Null);
    (status, body)
}

pub fn reading(id: &str, temperature: f64) -> Json {
    json!({"id": id, "ts": "2026-11-29T12:00:00Z", "metrics": {"temperature": temperature}})
}
