//! `cargo run` with no workspace: the embedded emulator stands in for Databricks,
//! with its data in a local folder, a demo device gets a fresh key and the page a
//! fresh reader token. `attach` is all `app.rs` sees of it.

use std::path::Path;

use anyhow::Context;
use lakegate_emulator::{Emulator, EmulatorConfig};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::config::GatewayConfig;
use crate::databricks;
use crate::devices::{KeyHash, KeySource, NewKey, generate_key};

const DEMO_DEVICE: &str = "demo-sensor-1";
const CLIENT_ID: &str = "lakegate-local";
const WAREHOUSE_ID: &str = "local";

pub struct LocalWorkspace {
    emulator: Emulator,
    client_secret: SecretString,
    keys: KeySource,
    /// Set when lakegate manages the registry file and made a demo key this run.
    demo_key: Option<NewKey>,
    /// A reader token for this run only, printed in the page's URL.
    reader: NewKey,
}

/// Starts the embedded workspace for `config`, lets this run's reader token read, and
/// returns the workspace with the client settings and the registry source to use.
pub(crate) async fn attach(
    config: &mut GatewayConfig,
    data_dir: &Path,
) -> anyhow::Result<(LocalWorkspace, databricks::Config, KeySource)> {
    let workspace = LocalWorkspace::start(data_dir, config.device_keys.clone()).await?;
    // The page link printed in local mode carries this run's reader token.
    config
        .read
        .reader_tokens
        .insert(workspace.reader_token_hash());
    let client = workspace.client_config()?;
    let keys = workspace.keys.clone();
    Ok((workspace, client, keys))
}

impl LocalWorkspace {
    /// Starts the emulator on a loopback port with data under `data_dir`. Without
    /// a configured key source, `data_dir/devices.json` gets the demo device
    /// with a new key (the file holds only hashes, so old keys can't be shown).
    async fn start(data_dir: &Path, keys: Option<KeySource>) -> anyhow::Result<LocalWorkspace> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let client_secret = generate_key().key;
        let emulator = Emulator::start(EmulatorConfig {
            service_principals: vec![(
                CLIENT_ID.to_owned(),
                client_secret.expose_secret().to_owned(),
            )],
            warehouse_id: WAREHOUSE_ID.to_owned(),
            data_dir: Some(data_dir.join("workspace")),
            ..EmulatorConfig::default()
        })
        .await
        .context("starting the embedded workspace emulator")?;
        let (keys, demo_key) = match keys {
            Some(keys) => (keys, None),
            None => {
                let path = data_dir.join("devices.json");
                let key = add_demo_key(&path)?;
                (KeySource::File(path), Some(key))
            }
        };
        Ok(LocalWorkspace {
            emulator,
            client_secret,
            keys,
            demo_key,
            reader: generate_key(),
        })
    }

    fn client_config(&self) -> anyhow::Result<databricks::Config> {
        let settings = databricks::Settings {
            host: Some(self.emulator.url()),
            client_id: Some(CLIENT_ID.to_owned()),
            client_secret: Some(self.client_secret.clone()),
            warehouse_id: Some(WAREHOUSE_ID.to_owned()),
            ..databricks::Settings::default()
        };
        // An empty environment: a developer's ~/.databrickscfg must not leak in.
        Ok(databricks::Config::resolve(settings, &Default::default())?)
    }

    /// To add to the accepted reader tokens.
    fn reader_token_hash(&self) -> KeyHash {
        KeyHash::of(self.reader.key.expose_secret())
    }

    /// Stops the embedded workspace once the gateway is done with it.
    pub(crate) async fn stop(self) {
        self.emulator.shutdown().await;
    }

    /// How to try the gateway listening at `gateway_url`, for the console.
    pub fn instructions(&self, gateway_url: &str) -> String {
        let mut text = format!(
            "lakegate is running on the embedded workspace emulator ({}).\n\
             Dashboard (the token in the link is valid until lakegate stops): {gateway_url}/#token={}\n",
            self.emulator.url(),
            self.reader.key.expose_secret(),
        );
        if let Some(key) = &self.demo_key {
            let key = key.key.expose_secret();
            text.push_str(&format!(
                "Demo device {DEMO_DEVICE:?}, key (shown once): {key}\n\
                 Try:\n  curl -s -X POST {gateway_url}/ingest -H 'X-API-Key: {key}' \
                 -H 'Content-Type: application/json' \
                 -d '{{\"ts\": \"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'\", \"metrics\": {{\"temperature\": 21.5, \"door_open\": false}}}}'\n"
            ));
        }
        text
    }
}

/// Gives the demo device one new key in the registry file, keeping other devices.
fn add_demo_key(path: &Path) -> anyhow::Result<NewKey> {
    let mut registry: Value = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => json!({"devices": {}}),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let key = generate_key();
    let devices = registry
        .get_mut("devices")
        .and_then(Value::as_object_mut)
        .with_context(|| format!("{} has no \"devices\" object", path.display()))?;
    devices.insert(DEMO_DEVICE.to_owned(), json!({"keys": [key.hash]}));
    std::fs::write(path, serde_json::to_vec_pretty(&registry)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}
