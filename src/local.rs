//! `cargo run` with no workspace: the embedded emulator stands in for Databricks,
//! with its data in a local folder, a demo device gets a fresh key and the page a
//! fresh reader token. `attach` is all `app.rs` sees of it. With
//! `--behind-apps-proxy` the emulated Databricks Apps proxy stands in front, and a
//! fleet service principal lets devices get the OAuth token it demands.

use std::path::Path;

use anyhow::Context;
use lakegate_emulator::{AppsProxy, AppsProxyConfig, Emulator, EmulatorConfig};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::config::GatewayConfig;
use crate::databricks;
use crate::devices::{KeyHash, KeySource, NewKey, generate_key};

const DEMO_DEVICE: &str = "demo-sensor-1";
const CLIENT_ID: &str = "lakegate-local";
const WAREHOUSE_ID: &str = "local";
/// The service principal devices get proxy tokens with, behind the emulated proxy.
const FLEET_CLIENT_ID: &str = "lakegate-fleet";

pub struct LocalWorkspace {
    emulator: Emulator,
    client_secret: SecretString,
    keys: KeySource,
    /// Set when lakegate manages the registry file and made a demo key this run.
    demo_key: Option<NewKey>,
    /// A reader token for this run only, printed in the page's URL.
    reader: NewKey,
    /// With `--behind-apps-proxy`: the fleet principal's secret, then the running proxy.
    fleet_secret: Option<SecretString>,
    apps_proxy: Option<AppsProxy>,
}

/// Starts the embedded workspace for `config`, lets this run's reader token read, and
/// returns the workspace with the client settings and the registry source to use.
pub(crate) async fn attach(
    config: &mut GatewayConfig,
    data_dir: &Path,
    apps_proxy: bool,
) -> anyhow::Result<(LocalWorkspace, databricks::Config, KeySource)> {
    let workspace = LocalWorkspace::start(data_dir, config.device_keys.clone(), apps_proxy).await?;
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
    async fn start(
        data_dir: &Path,
        keys: Option<KeySource>,
        apps_proxy: bool,
    ) -> anyhow::Result<LocalWorkspace> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let client_secret = generate_key().key;
        let fleet_secret = apps_proxy.then(|| generate_key().key);
        let mut service_principals = vec![(
            CLIENT_ID.to_owned(),
            client_secret.expose_secret().to_owned(),
        )];
        if let Some(secret) = &fleet_secret {
            service_principals.push((
                FLEET_CLIENT_ID.to_owned(),
                secret.expose_secret().to_owned(),
            ));
        }
        let emulator = Emulator::start(EmulatorConfig {
            service_principals,
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
            fleet_secret,
            apps_proxy: None,
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

    /// With `--behind-apps-proxy`: starts the emulated Apps proxy in front of the
    /// gateway at `app_url`, with on-behalf-of-user authorization as apps have it.
    pub async fn start_apps_proxy(&mut self, app_url: &str) -> anyhow::Result<()> {
        if self.fleet_secret.is_none() || self.apps_proxy.is_some() {
            return Ok(());
        }
        let config = AppsProxyConfig {
            user_authorization: true,
            ..AppsProxyConfig::new(app_url)
        };
        let proxy = AppsProxy::start(config, &self.emulator)
            .await
            .context("starting the emulated Apps proxy")?;
        self.apps_proxy = Some(proxy);
        Ok(())
    }

    /// Stops the Apps proxy and the embedded workspace once the gateway is done.
    pub(crate) async fn stop(self) {
        if let Some(proxy) = self.apps_proxy {
            proxy.shutdown().await;
        }
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
        if let (Some(proxy), Some(secret), Some(key)) =
            (&self.apps_proxy, &self.fleet_secret, &self.demo_key)
        {
            let (proxy, workspace) = (proxy.url(), self.emulator.url());
            let (secret, key) = (secret.expose_secret(), key.key.expose_secret());
            text.push_str(&format!(
                "\nBehind the emulated Databricks Apps proxy at {proxy}, which (as on Databricks) \
                 admits only OAuth tokens of the workspace. A device gets one with the fleet's \
                 service principal, then sends with its key:\n  \
                 TOKEN=$(curl -s -u {FLEET_CLIENT_ID}:{secret} -d 'grant_type=client_credentials&scope=all-apis' \
                 {workspace}/oidc/v1/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n  \
                 curl -s -X POST {proxy}/api/ingest -H \"Authorization: Bearer $TOKEN\" -H 'X-API-Key: {key}' \
                 -H 'Content-Type: application/json' \
                 -d '{{\"ts\": '$(date +%s000)', \"metrics\": {{\"temperature\": 21.5}}}}'\n\
                 Or let the device agent keep the token fresh:\n  \
                 echo '{{\"ts\": '$(date +%s000)', \"metrics\": {{\"temperature\": 21.5}}}}' | \
                 DATABRICKS_HOST={workspace} DATABRICKS_CLIENT_ID={FLEET_CLIENT_ID} \
                 DATABRICKS_CLIENT_SECRET={secret} LAKEGATE_DEVICE_KEY={key} \
                 lakegate send --upstream {proxy}\n"
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
