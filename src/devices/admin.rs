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

use super::keys::{NewKey, generate_key, looks_like_key};
use super::registry::{Registry, is_valid_device_id};
use super::relays::check_pattern;
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
    /// A new site relay with one key, speaking for the devices its patterns name
    /// (device ids, or prefixes ending in `*`).
    AddRelay {
        relay: String,
        devices: Vec<String>,
    },
    /// A second key for a relay; both work until `RevokeOldRelay`.
    RotateRelay {
        relay: String,
    },
    /// Keeps only the relay's newest key.
    RevokeOldRelay {
        relay: String,
    },
    /// Removes the relay and all its keys.
    RevokeRelay {
        relay: String,
    },
    DisableRelay {
        relay: String,
    },
    EnableRelay {
        relay: String,
    },
    /// Replaces the relay's device patterns.
    RelayDevices {
        relay: String,
        devices: Vec<String>,
    },
}

/// What a change is about: a device or a relay, by id. Shown in messages as
/// `device "pump-7"`; an id that looks like a key is never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: EntryKind,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Device,
    Relay,
}

impl Subject {
    /// The `lakegate keys` command that does `action` to this kind of entry.
    fn command(&self, action: &str) -> String {
        match self.kind {
            EntryKind::Device => action.to_owned(),
            EntryKind::Relay => format!("{action}-relay"),
        }
    }

    fn noun(&self) -> &'static str {
        match self.kind {
            EntryKind::Device => "device",
            EntryKind::Relay => "relay",
        }
    }

    /// The registry's object holding this kind of entry.
    fn section(&self) -> &'static str {
        match self.kind {
            EntryKind::Device => "devices",
            EntryKind::Relay => "relays",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match looks_like_key(&self.id) {
            true => write!(f, "{} (an id that looks like a key)", self.noun()),
            false => write!(f, "{} {:?}", self.noun(), self.id),
        }
    }
}

/// Why a change was not made. Never carries a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} is already in the registry (use `{rotate}` for a new key)", rotate = .0.command("rotate"))]
    Exists(Subject),
    #[error("{0} is not in the registry")]
    Unknown(Subject),
    #[error("{0} has no valid id (1-128 of A-Z a-z 0-9 . _ : -)")]
    InvalidId(Subject),
    #[error(
        "{0} already has {1} keys: finish the last rotation with `{revoke_old}` first",
        revoke_old = .0.command("revoke-old")
    )]
    RotationPending(Subject, usize),
    #[error(
        "{0} has only one key; `{revoke}` removes the {noun}",
        revoke = .0.command("revoke"),
        noun = .0.noun()
    )]
    OnlyKey(Subject),
    #[error("{0}")]
    InvalidPattern(String),
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
/// would parse it. A refused change leaves the document as it was.
pub fn apply(document: &mut Value, change: &KeyChange) -> Result<Applied, AdminError> {
    let mut changed = document.clone();
    let applied = apply_to(&mut changed, change)?;
    *document = changed;
    Ok(applied)
}

fn apply_to(document: &mut Value, change: &KeyChange) -> Result<Applied, AdminError> {
    let subject = change.subject();
    let entries = entries_of(document, &subject, change.adds())?;
    let id = subject.id.clone();
    let mut new_key = None;
    match change {
        KeyChange::Add {
            rate_per_sec,
            burst,
            ..
        } => {
            let key = add_entry(entries, &subject)?;
            let mut entry = json!({"keys": [key.hash]});
            if let Some(rate) = rate_per_sec {
                entry["rate_per_sec"] = json!(rate.get());
            }
            if let Some(burst) = burst {
                entry["burst"] = json!(burst.get());
            }
            entries.insert(id, entry);
            new_key = Some(key);
        }
        KeyChange::AddRelay { devices, .. } => {
            let patterns = patterns(devices)?;
            let key = add_entry(entries, &subject)?;
            entries.insert(id, json!({"keys": [key.hash], "devices": patterns}));
            new_key = Some(key);
        }
        KeyChange::Rotate { .. } | KeyChange::RotateRelay { .. } => {
            let keys = keys_of(entries, &subject)?;
            if keys.len() >= 2 {
                return Err(AdminError::RotationPending(subject, keys.len()));
            }
            let key = generate_key();
            keys.push(json!(key.hash));
            new_key = Some(key);
        }
        KeyChange::RevokeOld { .. } | KeyChange::RevokeOldRelay { .. } => {
            let keys = keys_of(entries, &subject)?;
            let Some(newest) = keys.pop().filter(|_| !keys.is_empty()) else {
                return Err(AdminError::OnlyKey(subject));
            };
            *keys = vec![newest];
        }
        KeyChange::Revoke { .. } | KeyChange::RevokeRelay { .. } => {
            if entries.remove(&id).is_none() {
                return Err(AdminError::Unknown(subject));
            }
        }
        KeyChange::Disable { .. }
        | KeyChange::Enable { .. }
        | KeyChange::DisableRelay { .. }
        | KeyChange::EnableRelay { .. } => {
            let entry = entry_of(entries, &subject)?;
            if matches!(
                change,
                KeyChange::Disable { .. } | KeyChange::DisableRelay { .. }
            ) {
                entry.insert("disabled".into(), json!(true));
            } else {
                entry.remove("disabled");
            }
        }
        KeyChange::RelayDevices { devices, .. } => {
            let patterns = patterns(devices)?;
            entry_of(entries, &subject)?.insert("devices".into(), json!(patterns));
        }
    }
    let text = serde_json::to_vec(document).expect("JSON values serialize");
    Registry::parse(&text).map_err(|err| AdminError::Invalid(err.to_string()))?;
    Ok(Applied { new_key })
}

/// A key for a new entry, once its id is checked and free.
fn add_entry(entries: &Map<String, Value>, subject: &Subject) -> Result<NewKey, AdminError> {
    if !is_valid_device_id(&subject.id) {
        return Err(AdminError::InvalidId(subject.clone()));
    }
    if entries.contains_key(&subject.id) {
        return Err(AdminError::Exists(subject.clone()));
    }
    Ok(generate_key())
}

/// The patterns of `--devices`: trimmed, without empties and repeats, each checked as
/// the gateway will parse it.
fn patterns(devices: &[String]) -> Result<Vec<String>, AdminError> {
    let mut patterns: Vec<String> = Vec::new();
    for pattern in devices.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        check_pattern(pattern).map_err(|bad| {
            let shown = match looks_like_key(pattern) {
                true => "(a pattern that looks like a key)".to_owned(),
                false => format!("{pattern:?}"),
            };
            AdminError::InvalidPattern(format!("device pattern {shown} {bad}"))
        })?;
        if !patterns.iter().any(|p| p == pattern) {
            patterns.push(pattern.to_owned());
        }
    }
    if patterns.is_empty() {
        return Err(AdminError::InvalidPattern(
            "a relay needs at least one device pattern: --devices 'pump-7,line-3-*'".into(),
        ));
    }
    Ok(patterns)
}

/// The object of devices or of relays; `"relays"` is optional, so adding the first
/// relay creates it.
fn entries_of<'a>(
    document: &'a mut Value,
    subject: &Subject,
    create: bool,
) -> Result<&'a mut Map<String, Value>, AdminError> {
    let section = subject.section();
    let Some(root) = document.as_object_mut() else {
        return Err(AdminError::Invalid("it is not a JSON object".into()));
    };
    if subject.kind == EntryKind::Relay && !root.contains_key(section) {
        if !create {
            return Err(AdminError::Unknown(subject.clone()));
        }
        root.insert(section.into(), json!({}));
    }
    root.get_mut(section)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| AdminError::Invalid(format!("it has no {section:?} object")))
}

fn entry_of<'a>(
    entries: &'a mut Map<String, Value>,
    subject: &Subject,
) -> Result<&'a mut Map<String, Value>, AdminError> {
    entries
        .get_mut(&subject.id)
        .ok_or_else(|| AdminError::Unknown(subject.clone()))?
        .as_object_mut()
        .ok_or_else(|| AdminError::Invalid(format!("the entry of {subject} is not an object")))
}

fn keys_of<'a>(
    entries: &'a mut Map<String, Value>,
    subject: &Subject,
) -> Result<&'a mut Vec<Value>, AdminError> {
    entry_of(entries, subject)?
        .get_mut("keys")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| AdminError::Invalid(format!("{subject} has no \"keys\" list")))
}

/// One line per device for `lakegate keys list`, then one per relay with its device
/// patterns: never a key or a hash.
pub fn listing(document: &Value) -> Result<String, AdminError> {
    let devices = document
        .get("devices")
        .and_then(Value::as_object)
        .ok_or_else(|| AdminError::Invalid("it has no \"devices\" object".into()))?;
    let mut ids: Vec<&String> = devices.keys().collect();
    ids.sort();
    let keys = |entry: &Value| entry["keys"].as_array().map_or(0, Vec::len);
    let disabled = |entry: &Value| entry["disabled"].as_bool().unwrap_or(false);
    let mut text = String::from("device\tkeys\tdisabled\trate_per_sec\tburst\n");
    for id in ids {
        let entry = &devices[id];
        let limit = |name: &str| {
            entry[name]
                .as_u64()
                .map_or_else(|| "default".to_owned(), |n| n.to_string())
        };
        text.push_str(&format!(
            "{id}\t{}\t{}\t{}\t{}\n",
            keys(entry),
            disabled(entry),
            limit("rate_per_sec"),
            limit("burst")
        ));
    }
    let relays = document.get("relays").and_then(Value::as_object);
    if let Some(relays) = relays.filter(|relays| !relays.is_empty()) {
        let mut ids: Vec<&String> = relays.keys().collect();
        ids.sort();
        text.push_str("\nrelay\tkeys\tdisabled\tdevices\n");
        for id in ids {
            let entry = &relays[id];
            let patterns: Vec<&str> = entry["devices"]
                .as_array()
                .map(|patterns| patterns.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            text.push_str(&format!(
                "{id}\t{}\t{}\t{}\n",
                keys(entry),
                disabled(entry),
                patterns.join(",")
            ));
        }
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
        let (mut devices, mut relays) = (Map::new(), Map::new());
        for secret in listing.iter().filter(|secret| is_part(key, &secret.key)) {
            let part = self.read(&secret.key).await?;
            for (section, merged) in [("devices", &mut devices), ("relays", &mut relays)] {
                if let Some(entries) = part.document.get(section).and_then(Value::as_object) {
                    merged.extend(entries.clone());
                }
            }
        }
        Ok(json!({ "devices": devices, "relays": relays }))
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
    /// while it has room, then the device's shard. Relays live in the base: they are few.
    async fn part_for(&self, change: &KeyChange) -> Result<Snapshot, AdminError> {
        let RegistryStore::Secret { key, .. } = self else {
            return self.read("").await;
        };
        let subject = change.subject();
        if subject.kind == EntryKind::Relay {
            return self.read(key).await;
        }
        let device = subject.id.as_str();
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
            (false, false) => Err(AdminError::Unknown(subject)),
        }
    }
}

impl KeyChange {
    /// The device or relay the change is about.
    pub fn subject(&self) -> Subject {
        let (kind, id) = match self {
            KeyChange::Add { device, .. }
            | KeyChange::Rotate { device }
            | KeyChange::RevokeOld { device }
            | KeyChange::Revoke { device }
            | KeyChange::Disable { device }
            | KeyChange::Enable { device } => (EntryKind::Device, device),
            KeyChange::AddRelay { relay, .. }
            | KeyChange::RotateRelay { relay }
            | KeyChange::RevokeOldRelay { relay }
            | KeyChange::RevokeRelay { relay }
            | KeyChange::DisableRelay { relay }
            | KeyChange::EnableRelay { relay }
            | KeyChange::RelayDevices { relay, .. } => (EntryKind::Relay, relay),
        };
        Subject {
            kind,
            id: id.clone(),
        }
    }

    /// Whether the change adds an entry.
    fn adds(&self) -> bool {
        matches!(self, KeyChange::Add { .. } | KeyChange::AddRelay { .. })
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

    fn add_relay(
        document: &mut Value,
        relay: &str,
        devices: &[&str],
    ) -> Result<String, AdminError> {
        let change = KeyChange::AddRelay {
            relay: relay.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        };
        let key = apply(document, &change)?.new_key.unwrap();
        Ok(key.key.expose_secret().to_owned())
    }

    /// Whether `key` is a relay's that may speak for `device`.
    fn relays_for(document: &Value, key: &str, device: &str) -> Option<bool> {
        let registry = Registry::parse(&serde_json::to_vec(document).unwrap()).unwrap();
        match registry.authenticate(key) {
            Ok(crate::devices::Sender::Relay(relay)) => Some(relay.speaks_for(device)),
            _ => None,
        }
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

    #[test]
    fn relays_are_added_rotated_disabled_repointed_and_revoked() {
        let mut document = empty();
        add(&mut document, "pump-7");
        let relay = |id: &str| id.to_owned();
        let key = add_relay(
            &mut document,
            "site-a",
            &[" pump-7", "line-3-*", "", "pump-7"],
        )
        .unwrap();
        assert!(!document.to_string().contains(&key));
        assert_eq!(
            document["relays"]["site-a"],
            json!({"keys": [hash_key(&key)], "devices": ["pump-7", "line-3-*"]})
        );
        assert_eq!(relays_for(&document, &key, "line-3-x"), Some(true));
        assert_eq!(relays_for(&document, &key, "pump-8"), Some(false));
        // A relay and a device may share an id: they are different things.
        add_relay(&mut document, "pump-7", &["pump-7"]).unwrap();
        let exists = add_relay(&mut document, "site-a", &["x"]).unwrap_err();
        assert_eq!(
            exists.to_string(),
            "relay \"site-a\" is already in the registry (use `rotate-relay` for a new key)"
        );

        let rotate = KeyChange::RotateRelay {
            relay: relay("site-a"),
        };
        let next = apply(&mut document, &rotate).unwrap().new_key.unwrap();
        let next = next.key.expose_secret().to_owned();
        assert_eq!(relays_for(&document, &key, "pump-7"), Some(true));
        assert_eq!(relays_for(&document, &next, "pump-7"), Some(true));
        let pending = apply(&mut document, &rotate).unwrap_err();
        assert!(
            pending
                .to_string()
                .contains("with `revoke-old-relay` first"),
            "{pending}"
        );
        let revoke_old = KeyChange::RevokeOldRelay {
            relay: relay("site-a"),
        };
        apply(&mut document, &revoke_old).unwrap();
        assert_eq!(relays_for(&document, &key, "pump-7"), None);
        assert_eq!(
            apply(&mut document, &revoke_old).unwrap_err().to_string(),
            "relay \"site-a\" has only one key; `revoke-relay` removes the relay"
        );

        let repoint = KeyChange::RelayDevices {
            relay: relay("site-a"),
            devices: vec!["line-4-*".into()],
        };
        apply(&mut document, &repoint).unwrap();
        assert_eq!(relays_for(&document, &next, "pump-7"), Some(false));
        assert_eq!(relays_for(&document, &next, "line-4-1"), Some(true));

        apply(
            &mut document,
            &KeyChange::DisableRelay {
                relay: relay("site-a"),
            },
        )
        .unwrap();
        assert_eq!(relays_for(&document, &next, "line-4-1"), None);
        apply(
            &mut document,
            &KeyChange::EnableRelay {
                relay: relay("site-a"),
            },
        )
        .unwrap();
        assert_eq!(relays_for(&document, &next, "line-4-1"), Some(true));

        let listed = listing(&document).unwrap();
        assert!(
            listed.ends_with(
                "\nrelay\tkeys\tdisabled\tdevices\npump-7\t1\tfalse\tpump-7\nsite-a\t1\tfalse\tline-4-*\n"
            ),
            "{listed}"
        );
        assert!(
            !listed.contains("sha256") && !listed.contains(&next),
            "{listed}"
        );

        apply(
            &mut document,
            &KeyChange::RevokeRelay {
                relay: relay("site-a"),
            },
        )
        .unwrap();
        assert_eq!(relays_for(&document, &next, "line-4-1"), None);
        assert!(matches!(
            apply(
                &mut document,
                &KeyChange::RevokeRelay {
                    relay: relay("site-a")
                }
            ),
            Err(AdminError::Unknown(_))
        ));
        // The device of the same name was never touched.
        assert!(document["devices"]["pump-7"].is_object());
    }

    #[test]
    fn relay_changes_are_refused_with_reasons_that_show_no_key() {
        let mut document = empty();
        let unknown = apply(
            &mut document,
            &KeyChange::RotateRelay {
                relay: "site-z".into(),
            },
        );
        assert_eq!(
            unknown.unwrap_err().to_string(),
            "relay \"site-z\" is not in the registry"
        );
        for (devices, expected) in [
            (&["*"][..], "device pattern \"*\" is \"*\" alone"),
            (
                &["pu*mp"][..],
                "device pattern \"pu*mp\" may hold one \"*\"",
            ),
            (&["a b"][..], "is not a device id"),
            (&[" ", ""][..], "a relay needs at least one device pattern"),
            (&[][..], "a relay needs at least one device pattern"),
        ] {
            let error = add_relay(&mut document, "site-a", devices).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} !~ {expected}"
            );
        }
        assert_eq!(document, empty(), "nothing changed");

        let secret = generate_key();
        let key = secret.key.expose_secret();
        for error in [
            add_relay(&mut document, "site-a", &[key]).unwrap_err(),
            add_relay(&mut document, &format!("{key}*"), &["pump-7"]).unwrap_err(),
            add_relay(&mut document, key, &["pump-7"]).unwrap_err(),
            apply(
                &mut document,
                &KeyChange::Add {
                    device: key.into(),
                    rate_per_sec: None,
                    burst: None,
                },
            )
            .unwrap_err(),
            apply(
                &mut document,
                &KeyChange::DisableRelay { relay: key.into() },
            )
            .unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(!message.contains(&key[4..12]), "{message}");
        }
    }

    /// An emulator with a `fleet` secret scope, and the registry store `fleet/devices` in it.
    async fn fleet_secret_store() -> (lakegate_emulator::Emulator, Secrets, RegistryStore) {
        let emulator = lakegate_emulator::Emulator::start(lakegate_testkit::emulator_config())
            .await
            .unwrap();
        let secrets = crate::devices::source::tests::secrets_of(&emulator);
        secrets.create_scope("fleet").await.unwrap();
        let store = RegistryStore::Secret {
            secrets: secrets.clone(),
            scope: "fleet".into(),
            key: "devices".into(),
        };
        (emulator, secrets, store)
    }

    #[tokio::test]
    async fn relays_live_in_the_base_secret() {
        use crate::devices::KeySource;

        let (emulator, secrets, store) = fleet_secret_store().await;
        // A device in its shard (as in a fleet that outgrew the base), a relay for it.
        let shard = shard_key("devices", "pump-7");
        let device_key = generate_key();
        let in_shard = json!({"devices": {"pump-7": {"keys": [device_key.hash]}}});
        secrets
            .put_string("fleet", &shard, &in_shard.to_string())
            .await
            .unwrap();
        let add = KeyChange::AddRelay {
            relay: "site-a".into(),
            devices: vec!["pump-*".into()],
        };
        let relay_key = change_registry(&store, &add)
            .await
            .unwrap()
            .new_key
            .unwrap();
        let base = store.read("devices").await.unwrap().document;
        assert!(base["relays"]["site-a"].is_object(), "{base}");
        let disable = KeyChange::DisableRelay {
            relay: "site-a".into(),
        };
        change_registry(&store, &disable).await.unwrap();
        let enable = KeyChange::EnableRelay {
            relay: "site-a".into(),
        };
        change_registry(&store, &enable).await.unwrap();
        let listed = listing(&store.read_all().await.unwrap()).unwrap();
        assert!(listed.contains("pump-7\t1\tfalse"), "{listed}");
        assert!(listed.contains("site-a\t1\tfalse\tpump-*"), "{listed}");

        let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
        let registry = source.load(Some(&secrets)).await.unwrap();
        let Ok(crate::devices::Sender::Relay(relay)) =
            registry.authenticate(relay_key.key.expose_secret())
        else {
            panic!("the relay's key authenticates it");
        };
        assert!(relay.speaks_for("pump-7"));
        assert!(matches!(
            registry.relayed("pump-7"),
            crate::devices::Relayed::Enabled(_)
        ));
        emulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_base_secret_spills_new_devices_into_their_shards() {
        use crate::devices::KeySource;

        let (emulator, secrets, store) = fleet_secret_store().await;
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
        let registry = source.load(Some(&secrets)).await.unwrap();
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
