//! `cargo run` with no workspace: the embedded emulator stands in for Databricks,
//! with its data in a local folder. The demo device's key, the page's reader token and
//! the workspace's throwaway credentials are made once and kept in `local.json` there
//! (0600), so a restart prints the same ones. `attach` is all `app.rs` sees of it. With
//! `--behind-apps-proxy` the emulated Databricks Apps proxy stands in front: devices
//! get its OAuth tokens with a fleet service principal that may only send, and a reader
//! principal, the only one the gateway lets read through the proxy.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use lakegate_emulator::{AppsProxy, AppsProxyConfig, Emulator, EmulatorConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{GatewayConfig, ReadIdentity, ReaderList, Sink};
use crate::databricks;
use crate::devices::{DeviceEntry, KeyHash, KeyKind, KeySource, RegistryDocument, generate_key_of};

const DEMO_DEVICE: &str = "demo-sensor-1";
/// The app's service principal: it writes the table (and reads it for the page).
const CLIENT_ID: &str = "lakegate-local";
const WAREHOUSE_ID: &str = "local";
/// The service principal devices get proxy tokens with, behind the emulated proxy.
const FLEET_CLIENT_ID: &str = "lakegate-fleet";
/// Behind the emulated proxy, the one principal the gateway lets read.
const READER_CLIENT_ID: &str = "lakegate-reader";
/// The embedded workspace's port when free, so its address stays the same.
const WORKSPACE_PORT: u16 = 8787;
/// In the local folder: the credentials above and where the workspace listens.
const STATE_FILE: &str = "local.json";

/// What local mode keeps across restarts, in `local.json` (0600; all of it is local
/// and throwaway). `workspace_url` is where this run's workspace listens, for `lakegate sql`.
#[derive(Serialize, Deserialize, Clone)]
pub struct LocalState {
    pub workspace_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub warehouse_id: String,
    demo_key: String,
    reader_token: String,
    fleet_secret: String,
    reader_secret: String,
}

// Never print the secrets by accident.
impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("workspace_url", &self.workspace_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl LocalState {
    fn new() -> LocalState {
        let of = |kind| generate_key_of(kind).key.expose_secret().to_owned();
        LocalState {
            workspace_url: String::new(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: of(KeyKind::LocalWorkspace),
            warehouse_id: WAREHOUSE_ID.to_owned(),
            demo_key: of(KeyKind::Device),
            reader_token: of(KeyKind::Reader),
            fleet_secret: of(KeyKind::LocalWorkspace),
            reader_secret: of(KeyKind::LocalWorkspace),
        }
    }

    /// The state local mode left in `data_dir`, if it ever ran there.
    pub fn read(data_dir: &Path) -> anyhow::Result<Option<LocalState>> {
        let path = data_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} is not what local mode writes (delete it to start afresh: new keys)",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces the file whole, readable by its owner only.
    fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_replacing(&data_dir.join(STATE_FILE), &bytes, Some(0o600))
    }
}

/// The local folder `lakegate sql` looks in: LAKEGATE_LOCAL_DIR, as local mode's.
pub fn local_dir(vars: &std::collections::HashMap<String, String>) -> PathBuf {
    PathBuf::from(
        vars.get("LAKEGATE_LOCAL_DIR")
            .map_or(".lakegate-local", String::as_str),
    )
}

/// What the banner says of the demo device's key.
enum DemoKey {
    /// The registry is configured elsewhere: no demo device.
    None,
    /// The key in `local.json`, in the registry; `replaced` when that replaced another.
    Kept { replaced: bool },
    /// The registry's demo entry has other keys (rotated by hand): the stored key is not shown.
    Changed,
}

pub struct LocalWorkspace {
    /// Held while running: one local mode per folder.
    _lock: std::fs::File,
    emulator: Emulator,
    state: LocalState,
    keys: KeySource,
    demo: DemoKey,
    /// Set when `local.json` was made this run (so every credential is new).
    fresh: bool,
    /// `Some` when the workspace could not have its usual port, with the reason.
    port_taken: Option<String>,
    /// With `--behind-apps-proxy`: set once the proxy runs.
    behind_proxy: bool,
    apps_proxy: Option<AppsProxy>,
}

/// Starts the embedded workspace for `config`, lets the stored reader token read, and
/// returns the workspace with the client settings and the registry source to use.
/// Call it only once the gateway's port is claimed: it writes to `data_dir`.
pub(crate) async fn attach(
    config: &mut GatewayConfig,
    data_dir: &Path,
    apps_proxy: bool,
) -> anyhow::Result<(LocalWorkspace, databricks::Config, KeySource)> {
    let zerobus = matches!(config.sink, Sink::Zerobus { .. });
    let workspace =
        LocalWorkspace::start(data_dir, config.device_keys.clone(), apps_proxy, zerobus).await?;
    if let Sink::Zerobus { endpoint } = &mut config.sink {
        let addr = workspace
            .emulator
            .zerobus_addr()
            .context("the embedded workspace serves no Zerobus")?;
        *endpoint = Some(format!("http://{addr}"));
    }
    // The page link printed in local mode carries the stored reader token.
    config
        .read
        .reader_tokens
        .insert(KeyHash::of(&workspace.state.reader_token));
    if apps_proxy {
        // Through the proxy, reads run as the app for the reader principal only: the
        // fleet's token, which every device holds, must not read the fleet's data.
        config.read.identity = ReadIdentity::App;
        config.read.readers = ReaderList::parse(READER_CLIENT_ID)
            .map_err(|problem| anyhow::anyhow!("the local reader principal: {problem}"))?;
    }
    let client = workspace.client_config()?;
    let keys = workspace.keys.clone();
    Ok((workspace, client, keys))
}

impl LocalWorkspace {
    /// Starts the emulator on port 8787 of loopback (another free one if taken) with data
    /// under `data_dir`, and with `zerobus` its Zerobus service on another loopback port.
    /// Without a configured key source, `data_dir/devices.json` holds the demo device
    /// with the stored key.
    async fn start(
        data_dir: &Path,
        keys: Option<KeySource>,
        apps_proxy: bool,
        zerobus: bool,
    ) -> anyhow::Result<LocalWorkspace> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let lock = lock(data_dir)?;
        let (mut state, fresh) = match LocalState::read(data_dir)? {
            Some(state) => (state, false),
            None => (LocalState::new(), true),
        };
        let mut service_principals = vec![(CLIENT_ID.to_owned(), state.client_secret.clone())];
        if apps_proxy {
            service_principals.push((FLEET_CLIENT_ID.to_owned(), state.fleet_secret.clone()));
            service_principals.push((READER_CLIENT_ID.to_owned(), state.reader_secret.clone()));
        }
        let config = |port| EmulatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            service_principals: service_principals.clone(),
            warehouse_id: WAREHOUSE_ID.to_owned(),
            data_dir: Some(data_dir.join("workspace")),
            zerobus: zerobus.then_some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            ..EmulatorConfig::default()
        };
        // A stable address, so what was printed (and `lakegate sql`) goes on working.
        let (emulator, port_taken) = match Emulator::start(config(WORKSPACE_PORT)).await {
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => (
                Emulator::start(config(0)).await,
                Some(format!("port {WORKSPACE_PORT} was in use")),
            ),
            started => (started, None),
        };
        let emulator = emulator.context("starting the embedded workspace emulator")?;
        let (keys, demo) = match keys {
            Some(keys) => (keys, DemoKey::None),
            None => {
                let path = data_dir.join("devices.json");
                let demo = keep_demo_key(&path, &state.demo_key, fresh)?;
                (KeySource::File(path), demo)
            }
        };
        if fresh || state.workspace_url != emulator.url() {
            state.workspace_url = emulator.url();
            state.write(data_dir)?;
        }
        Ok(LocalWorkspace {
            _lock: lock,
            emulator,
            state,
            keys,
            demo,
            fresh,
            port_taken,
            behind_proxy: apps_proxy,
            apps_proxy: None,
        })
    }
    fn client_config(&self) -> anyhow::Result<databricks::Config> {
        self.state.client_config()
    }

    /// With `--behind-apps-proxy`: starts the emulated Apps proxy in front of the
    /// gateway at `app_url`, with on-behalf-of-user authorization as apps have it.
    pub async fn start_apps_proxy(&mut self, app_url: &str) -> anyhow::Result<()> {
        if !self.behind_proxy || self.apps_proxy.is_some() {
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

    /// How to try the gateway listening at `gateway_url` whose reads query `read_source`
    /// (the table, or its `_dedup` view), for the console; `lakegate` is how to run this
    /// binary (its path).
    pub fn instructions(
        &self,
        gateway_url: &str,
        read_source: &str,
        zerobus: bool,
        lakegate: &str,
    ) -> String {
        let state = &self.state;
        let workspace = &state.workspace_url;
        let kept = match self.fresh {
            true => "new; kept in local.json for the next runs",
            false => "the same as the last run's, from local.json",
        };
        let mut text = format!(
            "lakegate is running in local mode, on the embedded workspace emulator.\n\
             Fleet page ({kept}): {gateway_url}/#token={}\n",
            state.reader_token,
        );
        match self.demo {
            DemoKey::None => {}
            DemoKey::Kept { replaced } => {
                let kept = match replaced {
                    true => "new: it REPLACES the demo key printed by earlier runs",
                    false => kept,
                };
                text.push_str(&format!(
                    "Demo device {DEMO_DEVICE:?}, key ({kept}): {}\n",
                    state.demo_key
                ));
            }
            DemoKey::Changed => text.push_str(&format!(
                "Demo device {DEMO_DEVICE:?}: its keys were changed in devices.json, so the key \
                 local mode made for it is not shown; use the one you made\n"
            )),
        }
        let port_note = match &self.port_taken {
            Some(why) => format!(" ({why}, so the address differs from the usual one)"),
            None => String::new(),
        };
        text.push_str(&format!(
            "Workspace{port_note}: DATABRICKS_HOST={workspace} DATABRICKS_CLIENT_ID={} \
             DATABRICKS_CLIENT_SECRET={} DATABRICKS_WAREHOUSE_ID={} (local and throwaway)\n",
            state.client_id, state.client_secret, state.warehouse_id,
        ));
        if zerobus {
            text.push_str(
                "Writes go through the embedded workspace's Zerobus Ingest service \
                 (LAKEGATE_SINK=zerobus): a row may be in the table twice, never in the view \
                 below.\n",
            );
        }
        text.push_str(&format!(
            "Look at the table:\n  {lakegate} sql \"SELECT device_id, ts, metric, value, \
             value_str FROM {read_source} ORDER BY ts DESC LIMIT 10\"\n"
        ));
        let key = match self.demo {
            DemoKey::Kept { .. } => &state.demo_key,
            DemoKey::None | DemoKey::Changed => return text,
        };
        match &self.apps_proxy {
            None => text.push_str(&format!(
                "Send a reading:\n  curl -s -X POST {gateway_url}/ingest -H 'X-API-Key: {key}' \
                 -H 'Content-Type: application/json' \
                 -d '{{\"ts\": \"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'\", \"metrics\": {{\"temperature\": 21.5, \"door_open\": false}}}}'\n\
                 Or with the device agent:\n  \
                 echo '{{\"ts\": '$(date +%s000)', \"metrics\": {{\"temperature\": 21.5}}}}' | \
                 LAKEGATE_DEVICE_KEY={key} {lakegate} send --upstream {gateway_url}\n"
            )),
            Some(proxy) => {
                let proxy = proxy.url();
                let (fleet, reader) = (&state.fleet_secret, &state.reader_secret);
                let token = |id: &str, secret: &str| {
                    format!(
                        "$(curl -s -u {id}:{secret} -d 'grant_type=client_credentials&scope=all-apis' \
                         {workspace}/oidc/v1/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')"
                    )
                };
                text.push_str(&format!(
                    "Behind the emulated Databricks Apps proxy at {proxy}, which (as on Databricks) \
                     admits only OAuth tokens of the workspace. The app is {CLIENT_ID}; devices get \
                     tokens with the fleet's service principal {FLEET_CLIENT_ID}, which may send but \
                     not read; only {READER_CLIENT_ID} may read through the proxy.\n\
                     A device sends with its key:\n  \
                     TOKEN={}\n  \
                     curl -s -X POST {proxy}/api/ingest -H \"Authorization: Bearer $TOKEN\" -H 'X-API-Key: {key}' \
                     -H 'Content-Type: application/json' \
                     -d '{{\"ts\": '$(date +%s000)', \"metrics\": {{\"temperature\": 21.5}}}}'\n\
                     Or lets the device agent keep the token fresh:\n  \
                     echo '{{\"ts\": '$(date +%s000)', \"metrics\": {{\"temperature\": 21.5}}}}' | \
                     DATABRICKS_HOST={workspace} DATABRICKS_CLIENT_ID={FLEET_CLIENT_ID} \
                     DATABRICKS_CLIENT_SECRET={fleet} LAKEGATE_DEVICE_KEY={key} \
                     {lakegate} send --upstream {proxy}\n\
                     A reader lists the devices:\n  \
                     READER_TOKEN={}\n  \
                     curl -s {proxy}/api/devices -H \"Authorization: Bearer $READER_TOKEN\"\n",
                    token(FLEET_CLIENT_ID, fleet),
                    token(READER_CLIENT_ID, reader),
                ));
            }
        }
        text
    }
}

impl LocalState {
    /// The client settings for this workspace: the app's service principal.
    pub fn client_config(&self) -> anyhow::Result<databricks::Config> {
        let settings = databricks::Settings {
            host: Some(self.workspace_url.clone()),
            client_id: Some(self.client_id.clone()),
            client_secret: Some(SecretString::from(self.client_secret.clone())),
            warehouse_id: Some(self.warehouse_id.clone()),
            ..databricks::Settings::default()
        };
        // An empty environment: a developer's ~/.databrickscfg must not leak in.
        Ok(databricks::Config::resolve(settings, &Default::default())?)
    }
}

/// Makes sure the registry file lets the demo device in with `key`, keeping other
/// devices. The first run (`fresh`, or no registry yet) sets the demo entry; later
/// runs leave a demo entry changed by hand as it is.
fn keep_demo_key(path: &Path, key: &str, fresh: bool) -> anyhow::Result<DemoKey> {
    let (mut registry, existed) = match std::fs::read(path) {
        Ok(bytes) => (
            RegistryDocument::parse(&bytes)
                .with_context(|| format!("{} is not a device registry", path.display()))?,
            true,
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            (RegistryDocument::default(), false)
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let hash = KeyHash::of(key);
    let entry = registry.devices.get(DEMO_DEVICE);
    if entry.is_some_and(|entry| entry.keys.contains(&hash)) {
        return Ok(DemoKey::Kept { replaced: false });
    }
    if existed && !fresh {
        return Ok(DemoKey::Changed);
    }
    let replaced = entry.is_some();
    registry.devices.insert(
        DEMO_DEVICE.to_owned(),
        DeviceEntry {
            keys: vec![hash],
            disabled: false,
            rate_per_sec: None,
            burst: None,
        },
    );
    write_replacing(path, registry.to_pretty_json().as_bytes(), None)?;
    Ok(DemoKey::Kept { replaced })
}

/// Locks `data_dir` for this process, or says which folder another local mode uses.
fn lock(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another lakegate in local mode uses {}: stop it, or set LAKEGATE_LOCAL_DIR to \
             another folder",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Writes `bytes` to a temporary file and renames it over `path`, so a crash leaves the
/// old file or the new one, never half of one; `mode` (unix) for a new file.
fn write_replacing(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}
