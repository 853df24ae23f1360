//! Fleet key management (`lakegate keys ...`): changes to the registry where it
//! lives, a file or a Databricks secret, as read-modify-write. The registry is read,
//! changed, checked the way the gateway will parse it, and written only if nobody
//! changed it in between; a new key is returned once and never stored.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::keys::{NewKey, generate_key};
use super::registry::{Registry, is_valid_device_id};
use super::shards::{PART_BUDGET, is_part, shard_key};
use crate::databricks::{self, Secrets};

/// One change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A new device with one key, and optionally its own limits.
    Add {
        device: String,
        rate_per_sec: Option<NonZeroU32>,
        burst: Option<NonZeroU32>,
    },
    /// A second key for a device; both work until `RevokeOld`.
    Rotate {
        device: String,
    },
    /// Keeps only the device's newest key.
    RevokeOld {
        device: String,
    },
    /// Removes the device and all its keys.
    Revoke {
        device: String,
    },
    Disable {
        device: String,
    },
    Enable {
        device: String,
    },
}

/// Why a change was not made. Never carries a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("device {0:?} is already in the registry (use `rotate` for a new key)")]
    Exists(String),
    #[error("device {0:?} is not in the registry")]
    Unknown(String),
    #[error("{0:?} is not a valid device id (1-128 of A-Z a-z 0-9 . _ : -)")]
    InvalidId(String),
    #[error("device {0:?} already has {1} keys: finish the last rotation with `revoke-old` first")]
    RotationPending(String, usize),
    #[error("device {0:?} has only one key; `revoke` removes the device")]
    OnlyKey(String),
    #[error("the registry is not valid: {0}")]
    Invalid(String),
    #[error(
        "the registry changed while this change was being made (another operator?); nothing was written: run the command again"
    )]
    Conflict,
    #[error("{0} is full; its device entries need another shard")]
    Full(String),
    #[error("{0}")]
    Store(String),
}

/// What applying a change produced: the new key, when there is one.
#[derive(Debug)]
pub struct Applied {
    pub new_key: Option<NewKey>,
}

/// Applies `change` to a registry document; the result is checked as the gateway
/// would parse it.
pub fn apply(document: &mut Value, change: &KeyChange) -> Result<Applied, AdminError> {
    let devices = devices_of(document)?;
    let mut new_key = None;
    match change {
        KeyChange::Add {
            device,
            rate_per_sec,
            burst,
        } => {
            if !is_valid_device_id(device) {
                return Err(AdminError::InvalidId(device.clone()));
            }
            if devices.contains_key(device) {
                return Err(AdminError::Exists(device.clone()));
            }
            let key = generate_key();
            let mut entry = json!({"keys": [key.hash]});
            if let Some(rate) = rate_per_sec {
                entry["rate_per_sec"] = json!(rate.get());
            }
            if let Some(burst) = burst {
                entry["burst"] = json!(burst.get());
            }
            devices.insert(device.clone(), entry);
            new_key = Some(key);
        }
        KeyChange::Rotate { device } => {
            let keys = keys_of(devices, device)?;
            if keys.len() >= 2 {
                return Err(AdminError::RotationPending(device.clone(), keys.len()));
            }
            let key = generate_key();
            keys.push(json!(key.hash));
            new_key = Some(key);
        }
        KeyChange::RevokeOld { device } => {
            let keys = keys_of(devices, device)?;
            let Some(newest) = keys.pop().filter(|_| !keys.is_empty()) else {
                return Err(AdminError::OnlyKey(device.clone()));
            };
            *keys = vec![newest];
        }
        KeyChange::Revoke { device } => {
            if devices.remove(device).is_none() {
                return Err(AdminError::Unknown(device.clone()));
            }
        }
        KeyChange::Disable { device } | KeyChange::Enable { device } => {
            let entry = entry_of(devices, device)?;
            if matches!(change, KeyChange::Disable { .. }) {
                entry.insert("disabled".into(), json!(true));
            } else {
                entry.remove("disabled");
            }
        }
    }
    let text = serde_json::to_vec(document).expect("JSON values serialize");
    Registry::parse(&text).map_err(|err| AdminError::Invalid(err.to_string()))?;
    Ok(Applied { new_key })
}

fn devices_of(document: &mut Value) -> Result<&mut Map<String, Value>, AdminError> {
    document
        .get_mut("devices")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| AdminError::Invalid("it has no \"devices\" object".into()))
}

fn entry_of<'a>(
    devices: &'a mut Map<String, Value>,
    device: &str,
) -> Result<&'a mut Map<String, Value>, AdminError> {
    devices
        .get_mut(device)
        .ok_or_else(|| AdminError::Unknown(device.to_owned()))?
        .as_object_mut()
        .ok_or_else(|| AdminError::Invalid(format!("the entry of {device:?} is not an object")))
}

fn keys_of<'a>(
    devices: &'a mut Map<String, Value>,
    device: &str,
) -> Result<&'a mut Vec<Value>, AdminError> {
    entry_of(devices, device)?
        .get_mut("keys")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| AdminError::Invalid(format!("{device:?} has no \"keys\" list")))
}

/// One line per device for `lakegate keys list`: never a key or a hash.
pub fn listing(document: &Value) -> Result<String, AdminError> {
    let devices = document
        .get("devices")
        .and_then(Value::as_object)
        .ok_or_else(|| AdminError::Invalid("it has no \"devices\" object".into()))?;
    let mut ids: Vec<&String> = devices.keys().collect();
    ids.sort();
    let mut text = String::from("device\tkeys\tdisabled\trate_per_sec\tburst\n");
    for id in ids {
        let entry = &devices[id];
        let keys = entry["keys"].as_array().map_or(0, Vec::len);
        let disabled = entry["disabled"].as_bool().unwrap_or(false);
        let limit = |name: &str| {
            entry[name]
                .as_u64()
                .map_or_else(|| "default".to_owned(), |n| n.to_string())
        };
        text.push_str(&format!(
            "{id}\t{keys}\t{disabled}\t{}\t{}\n",
            limit("rate_per_sec"),
            limit("burst")
        ));
    }
    Ok(text)
}

/// Where the registry lives, for `--file` and `--secret`.
pub enum RegistryStore {
    File(PathBuf),
    /// The base secret `key` and its shards (see `shards.rs`).
    Secret {
        secrets: Secrets,
        scope: String,
        key: String,
    },
}

impl fmt::Display for RegistryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryStore::File(path) => write!(f, "file {}", path.display()),
            RegistryStore::Secret { scope, key, .. } => write!(f, "secret {scope}/{key}"),
        }
    }
}

/// One part of the registry as read (the file, or one secret), and a fingerprint
/// of exactly what was read.
pub struct Snapshot {
    pub document: Value,
    /// The secret's key; empty for a file.
    part: String,
    version: Option<[u8; 32]>,
}

impl Snapshot {
    fn holds(&self, device: &str) -> bool {
        self.document["devices"].get(device).is_some()
    }
}

impl RegistryStore {
    /// The whole registry as one document: the file, or the base secret with every
    /// shard merged in (for listing).
    pub async fn read_all(&self) -> Result<Value, AdminError> {
        let RegistryStore::Secret {
            secrets,
            scope,
            key,
        } = self
        else {
            return Ok(self.read("").await?.document);
        };
        let listing = secrets
            .list(scope)
            .await
            .map_err(|err| AdminError::Store(format!("listing scope {scope}: {err}")))?;
        let mut merged = Map::new();
        for secret in listing.iter().filter(|secret| is_part(key, &secret.key)) {
            let part = self.read(&secret.key).await?;
            if let Some(devices) = part.document.get("devices").and_then(Value::as_object) {
                merged.extend(devices.clone());
            }
        }
        Ok(json!({ "devices": merged }))
    }

    /// Reads one part (`part` is a secret key; ignored for a file); a missing one reads
    /// as empty and is created on write.
    pub async fn read(&self, part: &str) -> Result<Snapshot, AdminError> {
        let bytes = self.read_bytes(part).await?;
        let Some(bytes) = bytes else {
            return Ok(Snapshot {
                document: json!({"devices": {}}),
                part: part.to_owned(),
                version: None,
            });
        };
        let document = serde_json::from_slice(&bytes).map_err(|err| {
            AdminError::Invalid(format!("{} is not JSON: {err}", self.name(part)))
        })?;
        Ok(Snapshot {
            document,
            part: part.to_owned(),
            version: Some(Sha256::digest(&bytes).into()),
        })
    }

    /// Writes `document` to the part `read_as` came from if it is still what was read;
    /// otherwise [`AdminError::Conflict`] and nothing is written.
    pub async fn write(&self, document: &Value, read_as: &Snapshot) -> Result<(), AdminError> {
        let part = read_as.part.as_str();
        let now = self
            .read_bytes(part)
            .await?
            .map(|bytes| <[u8; 32]>::from(Sha256::digest(&bytes)));
        if now != read_as.version {
            return Err(AdminError::Conflict);
        }
        let name = self.name(part);
        match self {
            RegistryStore::File(path) => {
                let text = serde_json::to_string_pretty(document).expect("JSON values serialize");
                // Written aside and renamed, so that a gateway reloading meanwhile reads
                // the old registry or the new one, never half of one.
                let staged = path.with_extension("json.staged");
                std::fs::write(&staged, text.as_bytes())
                    .and_then(|()| std::fs::rename(&staged, path))
                    .map_err(|err| AdminError::Store(format!("writing {name}: {err}")))
            }
            RegistryStore::Secret { secrets, scope, .. } => {
                let text = serde_json::to_string(document).expect("JSON values serialize");
                if text.len() > PART_BUDGET {
                    return Err(AdminError::Full(name));
                }
                secrets
                    .put_string(scope, part, &text)
                    .await
                    .map_err(|err| AdminError::Store(format!("writing {name}: {err}")))
            }
        }
    }

    fn name(&self, part: &str) -> String {
        match self {
            RegistryStore::File(path) => format!("file {}", path.display()),
            RegistryStore::Secret { scope, .. } => format!("secret {scope}/{part}"),
        }
    }

    async fn read_bytes(&self, part: &str) -> Result<Option<Vec<u8>>, AdminError> {
        let name = self.name(part);
        match self {
            RegistryStore::File(path) => match std::fs::read(path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(AdminError::Store(format!("reading {name}: {err}"))),
            },
            RegistryStore::Secret { secrets, scope, .. } => match secrets.get(scope, part).await {
                Ok(bytes) => Ok(Some(bytes.expose_secret().to_vec())),
                Err(err) if err.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(None),
                Err(err) => Err(AdminError::Store(format!("reading {name}: {err}"))),
            },
        }
    }

    /// The part `change` is made in: where the device is, or for a new device the base
    /// while it has room, then the device's shard.
    async fn part_for(&self, change: &KeyChange) -> Result<Snapshot, AdminError> {
        let RegistryStore::Secret { key, .. } = self else {
            return self.read("").await;
        };
        let device = change.device();
        let base = self.read(key).await?;
        let shard = self.read(&shard_key(key, device)).await?;
        match (base.holds(device), shard.holds(device)) {
            (true, true) => Err(AdminError::Invalid(format!(
                "device {device:?} is in both {} and {}",
                self.name(&base.part),
                self.name(&shard.part)
            ))),
            (true, false) => Ok(base),
            (false, true) => Ok(shard),
            (false, false) if matches!(change, KeyChange::Add { .. }) => {
                let mut grown = base.document.clone();
                apply(&mut grown, change)?;
                let fits =
                    serde_json::to_string(&grown).map_or(0, |text| text.len()) <= PART_BUDGET;
                Ok(if fits { base } else { shard })
            }
            (false, false) => Err(AdminError::Unknown(device.to_owned())),
        }
    }
}

impl KeyChange {
    fn device(&self) -> &str {
        match self {
            KeyChange::Add { device, .. }
            | KeyChange::Rotate { device }
            | KeyChange::RevokeOld { device }
            | KeyChange::Revoke { device }
            | KeyChange::Disable { device }
            | KeyChange::Enable { device } => device,
        }
    }
}

/// Reads the part the change belongs in, applies it and writes it back, refusing to
/// overwrite a part that changed in between.
pub async fn change_registry(
    store: &RegistryStore,
    change: &KeyChange,
) -> Result<Applied, AdminError> {
    let snapshot = store.part_for(change).await?;
    let mut document = snapshot.document.clone();
    let applied = apply(&mut document, change)?;
    store.write(&document, &snapshot).await?;
    Ok(applied)
}

/// A Secrets client from Databricks' unified configuration (environment, then the
/// `~/.databrickscfg` profile).
pub fn secrets_from_environment(
    vars: &std::collections::HashMap<String, String>,
) -> Result<Secrets, AdminError> {
    let config = databricks::Config::resolve(databricks::Settings::default(), vars)
        .map_err(|err| AdminError::Store(err.to_string()))?;
    let client =
        databricks::Client::new(&config).map_err(|err| AdminError::Store(err.to_string()))?;
    Ok(client.secrets())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::hash_key;

    fn empty() -> Value {
        json!({"devices": {}})
    }

    fn add(document: &mut Value, device: &str) -> String {
        let change = KeyChange::Add {
            device: device.into(),
            rate_per_sec: None,
            burst: None,
        };
        let key = apply(document, &change).unwrap().new_key.unwrap();
        key.key.expose_secret().to_owned()
    }

    fn authenticates(document: &Value, key: &str) -> Option<String> {
        let registry = Registry::parse(&serde_json::to_vec(document).unwrap()).unwrap();
        registry.authenticate(key).ok().map(|d| d.id().to_string())
    }

    #[test]
    fn add_stores_only_the_hash_and_the_limits() {
        let mut document = empty();
        let change = KeyChange::Add {
            device: "pump-7".into(),
            rate_per_sec: NonZeroU32::new(5),
            burst: NonZeroU32::new(10),
        };
        let key = apply(&mut document, &change).unwrap().new_key.unwrap();
        let key = key.key.expose_secret();
        assert!(key.starts_with("lgk_"));
        let text = document.to_string();
        assert!(!text.contains(key));
        assert_eq!(
            document["devices"]["pump-7"],
            json!({"keys": [hash_key(key)], "rate_per_sec": 5, "burst": 10})
        );
        assert!(matches!(
            apply(&mut document, &change),
            Err(AdminError::Exists(_))
        ));
    }

    #[test]
    fn rotation_keeps_the_old_key_until_revoke_old() {
        let mut document = empty();
        let old = add(&mut document, "pump-7");
        let rotate = KeyChange::Rotate {
            device: "pump-7".into(),
        };
        let new = apply(&mut document, &rotate).unwrap().new_key.unwrap();
        let new = new.key.expose_secret().to_owned();
        assert_eq!(authenticates(&document, &old).as_deref(), Some("pump-7"));
        assert_eq!(authenticates(&document, &new).as_deref(), Some("pump-7"));
        assert!(matches!(
            apply(&mut document, &rotate),
            Err(AdminError::RotationPending(_, 2))
        ));

        let revoke_old = KeyChange::RevokeOld {
            device: "pump-7".into(),
        };
        apply(&mut document, &revoke_old).unwrap();
        assert_eq!(authenticates(&document, &old), None);
        assert_eq!(authenticates(&document, &new).as_deref(), Some("pump-7"));
        assert!(matches!(
            apply(&mut document, &revoke_old),
            Err(AdminError::OnlyKey(_))
        ));
    }

    #[test]
    fn disable_enable_and_revoke() {
        let mut document = empty();
        let key = add(&mut document, "pump-7");
        let other = add(&mut document, "pump-8");
        let device = || "pump-7".to_owned();
        apply(&mut document, &KeyChange::Disable { device: device() }).unwrap();
        assert_eq!(authenticates(&document, &key), None);
        apply(&mut document, &KeyChange::Enable { device: device() }).unwrap();
        assert_eq!(authenticates(&document, &key).as_deref(), Some("pump-7"));
        apply(&mut document, &KeyChange::Revoke { device: device() }).unwrap();
        assert_eq!(authenticates(&document, &key), None);
        assert_eq!(authenticates(&document, &other).as_deref(), Some("pump-8"));
        assert!(matches!(
            apply(&mut document, &KeyChange::Revoke { device: device() }),
            Err(AdminError::Unknown(_))
        ));
    }

    #[test]
    fn the_listing_shows_no_key_material() {
        let mut document = empty();
        let key = add(&mut document, "pump-7");
        let change = KeyChange::Rotate {
            device: "pump-7".into(),
        };
        apply(&mut document, &change).unwrap();
        let listing = listing(&document).unwrap();
        assert_eq!(
            listing,
            "device\tkeys\tdisabled\trate_per_sec\tburst\npump-7\t2\tfalse\tdefault\tdefault\n"
        );
        assert!(!listing.contains(&key) && !listing.contains("sha256"));
    }

    #[tokio::test]
    async fn a_full_base_secret_spills_new_devices_into_their_shards() {
        use crate::devices::KeySource;
        use crate::devices::source::tests::secrets_of;

        let emulator = lakegate_emulator::Emulator::start(lakegate_testkit::emulator_config())
            .await
            .unwrap();
        let secrets = secrets_of(&emulator);
        secrets.create_scope("fleet").await.unwrap();
        let store = RegistryStore::Secret {
            secrets: secrets.clone(),
            scope: "fleet".into(),
            key: "devices".into(),
        };
        let add = |device: &str| KeyChange::Add {
            device: device.into(),
            rate_per_sec: None,
            burst: None,
        };
        // A small fleet lives in the base secret.
        let first = change_registry(&store, &add("pump-0")).await.unwrap();
        assert!(store.read("devices").await.unwrap().holds("pump-0"));

        // Fill the base to just under its budget.
        let mut base = store.read("devices").await.unwrap();
        let devices = base.document["devices"].as_object_mut().unwrap();
        let size = |devices: &Map<String, Value>| serde_json::to_string(devices).unwrap().len();
        let mut n = 0;
        while size(devices) < PART_BUDGET - 200 {
            // Forty at a time while far from the budget, then one by one.
            let step = if size(devices) < PART_BUDGET - 5_000 {
                40
            } else {
                1
            };
            for _ in 0..step {
                n += 1;
                let entry = json!({"keys": [hash_key(&format!("k-{n}"))]});
                devices.insert(format!("filler-{n:05}"), entry);
            }
        }
        let full = base.document.clone();
        store.write(&full, &base).await.unwrap();

        let added = change_registry(&store, &add("pump-9")).await.unwrap();
        let shard = shard_key("devices", "pump-9");
        assert!(store.read(&shard).await.unwrap().holds("pump-9"));
        assert!(!store.read("devices").await.unwrap().holds("pump-9"));
        // Found where it lives for later changes, and listed with the others.
        let rotate = KeyChange::Rotate {
            device: "pump-9".into(),
        };
        change_registry(&store, &rotate).await.unwrap();
        assert!(matches!(
            change_registry(&store, &add("pump-9")).await,
            Err(AdminError::Exists(_))
        ));
        let listed = listing(&store.read_all().await.unwrap()).unwrap();
        assert!(listed.contains("pump-9\t2\t"), "{listed}");
        assert!(listed.contains("pump-0\t1\t"));

        // The gateway's loader sees both parts.
        let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
        let registry = source.load(&secrets).await.unwrap();
        for key in [first.new_key.unwrap(), added.new_key.unwrap()] {
            assert!(registry.authenticate(key.key.expose_secret()).is_ok());
        }
        emulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_registry_changed_in_between_is_not_overwritten() {
        let dir = lakegate_testkit::temp_dir();
        let store = RegistryStore::File(dir.path().join("devices.json"));
        let first = store.read("").await.unwrap();
        let mut document = first.document.clone();
        add(&mut document, "pump-7");
        store.write(&document, &first).await.unwrap();

        // Two operators read the same registry; the second to write is refused.
        let seen_by_ana = store.read("").await.unwrap();
        let seen_by_bo = store.read("").await.unwrap();
        let mut ana = seen_by_ana.document.clone();
        add(&mut ana, "pump-8");
        store.write(&ana, &seen_by_ana).await.unwrap();
        let mut bo = seen_by_bo.document.clone();
        add(&mut bo, "pump-9");
        assert!(matches!(
            store.write(&bo, &seen_by_bo).await,
            Err(AdminError::Conflict)
        ));
        let now = store.read("").await.unwrap().document;
        let mut ids: Vec<_> = now["devices"].as_object().unwrap().keys().collect();
        ids.sort();
        assert_eq!(ids, ["pump-7", "pump-8"]);
    }
}
