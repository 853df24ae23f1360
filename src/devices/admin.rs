//! Fleet key management (`lakegate keys ...`): changes to the registry where it
//! lives, a file or a Databricks secret, as read-modify-write. The registry is read,
//! changed, checked the way the gateway will parse it, and written; a new key is
//! returned once, only after the write is known to have stuck, and never stored.
//!
//! Two operators at once: a file is changed under an exclusive lock on a file beside it
//! and replaced by an atomic rename. The Secrets API has no compare-and-swap (a put
//! overwrites), so a change to a secret is written, then read back after a settle delay
//! longer than any writer's read-to-write window: a concurrent writer that read before
//! our write and wrote after it shows up as different content, and the change is made
//! again on what is there now, a bounded number of times (see [`change_registry`]).

use std::fmt;
use std::fs::File;
use std::io::ErrorKind;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::keys::{KeyKind, NewKey, generate_key_of, looks_like_key};
use super::registry::{Registry, is_valid_device_id};
use super::relays::check_pattern;
use super::shards::{PART_BUDGET, SECRET_LIMIT, is_part, shard_key};
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
        "the registry kept changing while this change was being made (other operators?) and it could not be confirmed after {0} attempts: it may or may not be in the registry, and a new key was not shown; check with `lakegate keys list` and run the command again (after `revoke` if an added entry is there)"
    )]
    Conflict(u32),
    #[error(
        "the change was made and confirmed, but one of its writes took {0:?} from reading to being acknowledged, longer than other operators' commands allow for: a change another operator made in that time may have been overwritten; check with `lakegate keys list`"
    )]
    Overran(Duration),
    #[error("{0} has no room for this change (a secret holds at most 128 KB)")]
    Full(String),
    #[error("{0}")]
    Store(String),
    /// The command line is wrong (exit status 2, as for clap's own refusals).
    #[error("{0}")]
    Usage(String),
    /// A mistyped path must not read as an empty fleet.
    #[error(
        "{0} does not exist (check the path; `lakegate keys add` or `add-relay` creates a registry)"
    )]
    NoRegistry(String),
}

impl AdminError {
    /// The process's exit status: 2 for a wrong command line or registry location, as
    /// for every refusal of bad options; 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Usage(_) | AdminError::NoRegistry(_) => 2,
            _ => 1,
        }
    }
}

/// What applying a change produced: the new key, when there is one.
#[derive(Debug)]
pub struct Applied {
    pub new_key: Option<NewKey>,
    /// A write of the change to a secret took this long from its read to its
    /// acknowledgement, longer than other operators' commands allow for: it may have
    /// overwritten another operator's change (see [`AdminError::Overran`]).
    pub overran: Option<Duration>,
    /// The registry did not exist and the change created it (a file `add`).
    pub created: bool,
}

/// Applies `change` to a registry document; the result is checked as the gateway
/// would parse it. A refused change leaves the document as it was.
pub fn apply(document: &mut Value, change: &KeyChange) -> Result<Applied, AdminError> {
    let new_key = change.new_key();
    apply_keyed(document, change, new_key.as_ref())?;
    Ok(Applied {
        new_key,
        overran: None,
        created: false,
    })
}

/// [`apply`] with the new key made beforehand, so that every attempt at a change
/// writes the same key; returns how to recognise the change in a registry.
fn apply_keyed(
    document: &mut Value,
    change: &KeyChange,
    key: Option<&NewKey>,
) -> Result<Effect, AdminError> {
    let mut changed = document.clone();
    let effect = apply_to(&mut changed, change, key)?;
    *document = changed;
    Ok(effect)
}

/// What a change leaves in its entry, to recognise it on a later attempt: an
/// attempt whose write was overwritten by one that carried it along must not make it
/// twice (an add would find its own entry "already in the registry").
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    /// The entry holds this key hash.
    HasKey(String),
    /// The entry is there and holds none of these key hashes.
    LacksKeys(Vec<Value>),
    /// There is no entry.
    Removed,
    /// The entry is (or is not) disabled.
    Disabled(bool),
    /// The relay's device patterns are these.
    Patterns(Vec<String>),
}

impl Effect {
    fn shown_in(&self, document: &Value, subject: &Subject) -> bool {
        let entry = document
            .get(subject.section())
            .and_then(|entries| entries.get(&subject.id));
        let keys = || entry.and_then(|entry| entry["keys"].as_array());
        match self {
            Effect::HasKey(hash) => keys().is_some_and(|keys| keys.iter().any(|k| k == hash)),
            Effect::LacksKeys(gone) => {
                keys().is_some_and(|keys| !keys.iter().any(|k| gone.contains(k)))
            }
            Effect::Removed => entry.is_none(),
            Effect::Disabled(disabled) => {
                entry.is_some_and(|entry| entry["disabled"].as_bool().unwrap_or(false) == *disabled)
            }
            Effect::Patterns(patterns) => {
                entry.is_some_and(|entry| entry["devices"] == json!(patterns))
            }
        }
    }
}

fn apply_to(
    document: &mut Value,
    change: &KeyChange,
    key: Option<&NewKey>,
) -> Result<Effect, AdminError> {
    let subject = change.subject();
    let entries = entries_of(document, &subject, change.adds())?;
    let id = subject.id.clone();
    let hash = || {
        key.map(|key| key.hash.clone())
            .expect("a change that makes a key is given one")
    };
    let effect = match change {
        KeyChange::Add {
            rate_per_sec,
            burst,
            ..
        } => {
            check_new_entry(entries, &subject)?;
            let mut entry = json!({"keys": [hash()]});
            if let Some(rate) = rate_per_sec {
                entry["rate_per_sec"] = json!(rate.get());
            }
            if let Some(burst) = burst {
                entry["burst"] = json!(burst.get());
            }
            entries.insert(id, entry);
            Effect::HasKey(hash())
        }
        KeyChange::AddRelay { devices, .. } => {
            let patterns = patterns(devices)?;
            check_new_entry(entries, &subject)?;
            entries.insert(id, json!({"keys": [hash()], "devices": patterns}));
            Effect::HasKey(hash())
        }
        KeyChange::Rotate { .. } | KeyChange::RotateRelay { .. } => {
            let keys = keys_of(entries, &subject)?;
            if keys.len() >= 2 {
                return Err(AdminError::RotationPending(subject, keys.len()));
            }
            keys.push(json!(hash()));
            Effect::HasKey(hash())
        }
        KeyChange::RevokeOld { .. } | KeyChange::RevokeOldRelay { .. } => {
            let keys = keys_of(entries, &subject)?;
            let Some(newest) = keys.pop().filter(|_| !keys.is_empty()) else {
                return Err(AdminError::OnlyKey(subject));
            };
            let removed = std::mem::replace(keys, vec![newest]);
            Effect::LacksKeys(removed)
        }
        KeyChange::Revoke { .. } | KeyChange::RevokeRelay { .. } => {
            if entries.remove(&id).is_none() {
                return Err(AdminError::Unknown(subject));
            }
            Effect::Removed
        }
        KeyChange::Disable { .. }
        | KeyChange::Enable { .. }
        | KeyChange::DisableRelay { .. }
        | KeyChange::EnableRelay { .. } => {
            let entry = entry_of(entries, &subject)?;
            let disable = matches!(
                change,
                KeyChange::Disable { .. } | KeyChange::DisableRelay { .. }
            );
            if disable {
                entry.insert("disabled".into(), json!(true));
            } else {
                entry.remove("disabled");
            }
            Effect::Disabled(disable)
        }
        KeyChange::RelayDevices { devices, .. } => {
            let patterns = patterns(devices)?;
            entry_of(entries, &subject)?.insert("devices".into(), json!(patterns));
            Effect::Patterns(patterns)
        }
    };
    let text = serde_json::to_vec(document).expect("JSON values serialize");
    Registry::parse(&text).map_err(|err| AdminError::Invalid(err.to_string()))?;
    Ok(effect)
}

/// Refuses a new entry whose id is invalid or taken.
fn check_new_entry(entries: &Map<String, Value>, subject: &Subject) -> Result<(), AdminError> {
    if !is_valid_device_id(&subject.id) {
        return Err(AdminError::InvalidId(subject.clone()));
    }
    if entries.contains_key(&subject.id) {
        return Err(AdminError::Exists(subject.clone()));
    }
    Ok(())
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

/// One part of the registry as read: the file, or one secret.
pub struct Snapshot {
    pub document: Value,
    /// The secret's key; empty for a file.
    part: String,
}

impl Snapshot {
    fn holds(&self, subject: &Subject) -> bool {
        (self.document.get(subject.section()))
            .and_then(|entries| entries.get(&subject.id))
            .is_some()
    }
}

/// The pace of a change to a secret (see [`change_registry`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Longest a write may take from the start of its read to its acknowledgement. A
    /// read older than half of it is not written over; a write that takes longer is
    /// still checked, but may have overwritten a change another operator confirmed
    /// meanwhile, and says so ([`AdminError::Overran`]).
    window: Duration,
    /// How long after its write a change is read back: longer than `window`, so that a
    /// writer that read before our write landed has written by then.
    settle: Duration,
    /// Attempts before giving up with [`AdminError::Conflict`].
    attempts: u32,
}

impl Timing {
    /// What `lakegate keys` uses: a Secrets API call takes a few hundred milliseconds.
    pub(crate) const OPERATOR: Timing = Timing {
        window: Duration::from_millis(1500),
        settle: Duration::from_millis(2000),
        attempts: 12,
    };
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
            return match self.read_bytes("").await? {
                None => Err(AdminError::NoRegistry(self.to_string())),
                bytes => parse_part(&self.name(""), bytes),
            };
        };
        let listing = secrets
            .list(scope)
            .await
            .map_err(|err| AdminError::Store(format!("listing scope {scope}: {err}")))?;
        let mut parts = listing.iter().filter(|secret| is_part(key, &secret.key));
        let Some(first) = parts.next() else {
            return Err(AdminError::NoRegistry(self.to_string()));
        };
        let (mut devices, mut relays) = (Map::new(), Map::new());
        for secret in std::iter::once(first).chain(parts) {
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
        Ok(Snapshot {
            document: parse_part(&self.name(part), bytes)?,
            part: part.to_owned(),
        })
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
            RegistryStore::File(path) => read_file(path),
            RegistryStore::Secret { secrets, scope, .. } => match secrets.get(scope, part).await {
                Ok(bytes) => Ok(Some(bytes.expose_secret().to_vec())),
                Err(err) if err.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(None),
                Err(err) => Err(AdminError::Store(format!("reading {name}: {err}"))),
            },
        }
    }

    /// Writes one secret whole.
    async fn put(&self, part: &str, text: &str) -> Result<(), AdminError> {
        let RegistryStore::Secret { secrets, scope, .. } = self else {
            unreachable!("files are written by change_file");
        };
        (secrets.put_string(scope, part, text).await)
            .map_err(|err| AdminError::Store(format!("writing {}: {err}", self.name(part))))
    }

    /// A change to a registry in secrets, made so that it is known to have stuck when
    /// this returns. Each attempt reads the parts the change may be made in, makes it in
    /// one (or finds it there already, carried along by another writer), writes that
    /// part, waits `settle` and reads it back: the change stuck if the part holds
    /// exactly what was written. Otherwise another operator wrote in between, and the
    /// next attempt starts over from what is there now.
    ///
    /// Why that is enough: for a writer to undo our change after our read-back, it must
    /// have read the part before our write landed (else it carries our change along)
    /// and written it after the read-back, so its read-to-write time exceeds `settle`,
    /// which exceeds `window`: every writer measures its own and reports when it
    /// overran. Not caught: a part written back to exactly the bytes we wrote while we
    /// wait (only a writer making the very same change from the very same registry
    /// could), and a Secrets API that answers a read with less than the last
    /// acknowledged write.
    async fn change_secret(
        &self,
        change: &KeyChange,
        timing: Timing,
    ) -> Result<Applied, AdminError> {
        let new_key = change.new_key();
        let (mut effect, mut last_part, mut overran) = (None, None, None);
        let mut collided = false;
        for _ in 0..timing.attempts {
            if collided {
                // Spread out the writers we collided with, so that the next round has a winner.
                let spread = rand::random_range(Duration::ZERO..=timing.settle * 2);
                tokio::time::sleep(spread).await;
            }
            let started = Instant::now();
            let (part, document) =
                (self.plan(change, new_key.as_ref(), &mut effect, last_part.as_deref())).await?;
            if started.elapsed() > timing.window / 2 {
                // Too slow a read to write over: the part may have changed since.
                collided = false;
                continue;
            }
            let text = serde_json::to_string(&document).expect("JSON values serialize");
            self.put(&part, &text).await?;
            let took = started.elapsed();
            if took > timing.window {
                overran = overran.max(Some(took));
            }
            tokio::time::sleep(timing.settle).await;
            if self.read_bytes(&part).await?.as_deref() == Some(text.as_bytes()) {
                return Ok(Applied {
                    new_key,
                    overran,
                    created: false,
                });
            }
            collided = true;
            last_part = Some(part);
        }
        Err(AdminError::Conflict(timing.attempts))
    }

    /// The part to write and what to write there: the part holding the entry, changed;
    /// for a new device the base while it has room, else the device's shard. Relays
    /// live in the base: they are few. `effect` is the change as made by an earlier
    /// attempt in `last_part`: where it shows already, the part is written as it is.
    async fn plan(
        &self,
        change: &KeyChange,
        key: Option<&NewKey>,
        effect: &mut Option<Effect>,
        last_part: Option<&str>,
    ) -> Result<(String, Value), AdminError> {
        let RegistryStore::Secret { key: base, .. } = self else {
            unreachable!("files are changed by change_file");
        };
        let subject = change.subject();
        let shard = (subject.kind == EntryKind::Device).then(|| shard_key(base, &subject.id));
        let read_shard = async {
            match &shard {
                Some(shard) => self.read(shard).await.map(Some),
                None => Ok(None),
            }
        };
        let (base, shard) = tokio::try_join!(self.read(base), read_shard)?;
        let parts: Vec<Snapshot> = std::iter::once(base).chain(shard).collect();
        let holding: Vec<&Snapshot> = parts.iter().filter(|part| part.holds(&subject)).collect();
        let home = match holding[..] {
            [one, other] => {
                return Err(AdminError::Invalid(format!(
                    "{subject} is in both {} and {}",
                    self.name(&one.part),
                    self.name(&other.part)
                )));
            }
            [part] => Some(part),
            // Removed by an earlier attempt: that part is written again, as it is.
            _ => (parts.iter())
                .filter(|part| Some(part.part.as_str()) == last_part)
                .find(|part| {
                    effect
                        .as_ref()
                        .is_some_and(|e| e.shown_in(&part.document, &subject))
                }),
        };
        if let Some(part) = home {
            return self.make_in(part, change, key, effect);
        }
        if let Some((last, others)) = parts.split_last().filter(|_| change.adds()) {
            for part in others {
                match self.make_in(part, change, key, effect) {
                    Err(AdminError::Full(_)) => continue,
                    made => return made,
                }
            }
            return self.make_in(last, change, key, effect);
        }
        // Refused as the base refuses it (not in the registry).
        self.make_in(&parts[0], change, key, effect)
    }

    /// `part` with the change made in it, if it fits (see [`has_room`]).
    fn make_in(
        &self,
        part: &Snapshot,
        change: &KeyChange,
        key: Option<&NewKey>,
        effect: &mut Option<Effect>,
    ) -> Result<(String, Value), AdminError> {
        let mut document = part.document.clone();
        let shown = (effect.as_ref()).is_some_and(|e| e.shown_in(&document, &change.subject()));
        if !shown {
            *effect = Some(apply_keyed(&mut document, change, key)?);
        }
        if !has_room(&document, !shown && change.adds()) {
            return Err(AdminError::Full(self.name(&part.part)));
        }
        Ok((part.part.clone(), document))
    }
}

/// Whether a part may be written as `document`. A new entry only while every entry in
/// the part could still get its second key and be disabled within [`PART_BUDGET`], so
/// that a change to an entry already there always fits; other changes up to
/// Databricks' limit, which leaves room in parts filled before this rule.
fn has_room(document: &Value, adds_entry: bool) -> bool {
    let size = serde_json::to_string(document).map_or(usize::MAX, |text| text.len());
    match adds_entry {
        true => size.saturating_add(growth(document)) <= PART_BUDGET,
        false => size <= SECRET_LIMIT,
    }
}

/// Bytes the entries of a part may still grow by: each to two keys, and disabled.
fn growth(document: &Value) -> usize {
    const KEY: usize = r#","sha256:""#.len() + 64;
    const DISABLED: usize = r#","disabled":true"#.len();
    let entries = ["devices", "relays"]
        .into_iter()
        .filter_map(|section| document.get(section)?.as_object())
        .flat_map(Map::values);
    entries
        .map(|entry| {
            let keys = entry["keys"].as_array().map_or(0, Vec::len);
            let disabled = entry["disabled"].as_bool().unwrap_or(false);
            2usize.saturating_sub(keys) * KEY + if disabled { 0 } else { DISABLED }
        })
        .sum()
}

fn parse_part(name: &str, bytes: Option<Vec<u8>>) -> Result<Value, AdminError> {
    match bytes {
        None => Ok(json!({"devices": {}})),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|err| AdminError::Invalid(format!("{name} is not JSON: {err}"))),
    }
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, AdminError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(AdminError::Store(format!(
            "reading file {}: {err}",
            path.display()
        ))),
    }
}

/// A change to a registry file, under an exclusive lock on `<file>.lock`, so that
/// other `lakegate keys` commands wait for it. The lock file stays: removing it would
/// let two commands hold locks on two different files.
fn change_file(path: &Path, change: &KeyChange) -> Result<Applied, AdminError> {
    let failed = |what: &str, err: std::io::Error| {
        AdminError::Store(format!("{what} file {}: {err}", path.display()))
    };
    let name = format!("file {}", path.display());
    let missing = || AdminError::NoRegistry(name.clone());
    // Before the lock, so that a mistyped path leaves no `.lock` file behind.
    let absent = std::fs::metadata(path).is_err_and(|err| err.kind() == ErrorKind::NotFound);
    if absent && !change.adds() {
        return Err(missing());
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(path, ".lock"))
        .map_err(|err| failed("locking", err))?;
    lock.lock().map_err(|err| failed("locking", err))?;
    let bytes = read_file(path)?;
    let created = bytes.is_none();
    if created && !change.adds() {
        return Err(missing());
    }
    let mut document = parse_part(&name, bytes)?;
    let applied = Applied {
        created,
        ..apply(&mut document, change)?
    };
    let text = serde_json::to_string_pretty(&document).expect("JSON values serialize");
    replace_file(path, text.as_bytes()).map_err(|err| failed("writing", err))?;
    Ok(applied)
}

/// Writes `bytes` beside `path`, flushed to disk, and renames it over `path`: a gateway
/// reloading meanwhile, or a crash, finds the old registry or the new one, never half.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;

    let staged = beside(path, ".staged");
    let mut file = File::create(&staged)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)?;
    // The rename is durable once the directory is.
    let dir = (path.parent())
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// `path` with `suffix` added to its name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
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

    /// The new key the change makes, of its subject's kind, if it makes one.
    fn new_key(&self) -> Option<NewKey> {
        match self {
            KeyChange::Add { .. } | KeyChange::Rotate { .. } => {
                Some(generate_key_of(KeyKind::Device))
            }
            KeyChange::AddRelay { .. } | KeyChange::RotateRelay { .. } => {
                Some(generate_key_of(KeyKind::Relay))
            }
            _ => None,
        }
    }
}

/// Makes `change` where the registry lives, and returns only once it is known to be
/// there: a file under a lock, a secret written and read back (see
/// `RegistryStore::change_secret` for what two operators at once can and cannot do).
/// A new key is returned only then; an error means the change is not confirmed.
pub async fn change_registry(
    store: &RegistryStore,
    change: &KeyChange,
) -> Result<Applied, AdminError> {
    change_timed(store, change, Timing::OPERATOR).await
}

pub(crate) async fn change_timed(
    store: &RegistryStore,
    change: &KeyChange,
    timing: Timing,
) -> Result<Applied, AdminError> {
    match store {
        RegistryStore::File(path) => {
            let (path, change) = (path.clone(), change.clone());
            tokio::task::spawn_blocking(move || change_file(&path, &change))
                .await
                .unwrap_or_else(|join| Err(AdminError::Store(join.to_string())))
        }
        RegistryStore::Secret { .. } => store.change_secret(change, timing).await,
    }
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
    use crate::devices::{generate_key, hash_key};

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
        assert!(key.starts_with("lgd_"));
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

    /// One operator alone: nobody to wait for.
    const ALONE: Timing = Timing {
        window: Duration::from_secs(3600),
        settle: Duration::ZERO,
        attempts: 1,
    };

    fn add_change(device: &str) -> KeyChange {
        KeyChange::Add {
            device: device.into(),
            rate_per_sec: None,
            burst: None,
        }
    }

    fn device(id: &str) -> Subject {
        Subject {
            kind: EntryKind::Device,
            id: id.into(),
        }
    }

    #[tokio::test]
    async fn a_base_filled_by_adds_still_takes_a_rotation_and_a_disable_of_each_device() {
        let (emulator, _secrets, store) = fleet_secret_store().await;
        // Long ids fill the base in fewer adds.
        let id = |n: usize| format!("pump-{n:04}-{}", "x".repeat(118));
        let mut in_base = Vec::new();
        let spilled = loop {
            let next = id(in_base.len());
            change_timed(&store, &add_change(&next), ALONE)
                .await
                .unwrap();
            if !store.read("devices").await.unwrap().holds(&device(&next)) {
                break next;
            }
            in_base.push(next);
            assert!(in_base.len() < 2_000, "the base never fills");
        };
        let shard = store.read(&shard_key("devices", &spilled)).await.unwrap();
        assert!(shard.holds(&device(&spilled)));

        // The earliest device gets a second key and is disabled, in the base.
        for change in [
            KeyChange::Rotate { device: id(0) },
            KeyChange::Disable { device: id(0) },
        ] {
            change_timed(&store, &change, ALONE).await.unwrap();
        }
        // And so could every other device in it, all at once.
        let mut base = store.read("devices").await.unwrap().document;
        assert_eq!(base["devices"][id(0)]["keys"].as_array().unwrap().len(), 2);
        for device in &in_base[1..] {
            apply(
                &mut base,
                &KeyChange::Rotate {
                    device: device.clone(),
                },
            )
            .unwrap();
            apply(
                &mut base,
                &KeyChange::Disable {
                    device: device.clone(),
                },
            )
            .unwrap();
        }
        assert_eq!(base["devices"].as_object().unwrap().len(), in_base.len());
        assert!(base.to_string().len() <= PART_BUDGET);
        emulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_base_secret_spills_new_devices_into_their_shards() {
        use crate::devices::KeySource;

        let (emulator, secrets, store) = fleet_secret_store().await;
        // A small fleet lives in the base secret.
        let first = change_registry(&store, &add_change("pump-0"))
            .await
            .unwrap();
        assert!(
            store
                .read("devices")
                .await
                .unwrap()
                .holds(&device("pump-0"))
        );

        // Fill the base to just under its budget, as adds did before they kept room for
        // rotations and disables.
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
        let full = serde_json::to_string(&base.document).unwrap();
        store.put("devices", &full).await.unwrap();

        let added = change_timed(&store, &add_change("pump-9"), ALONE)
            .await
            .unwrap();
        let shard = shard_key("devices", "pump-9");
        assert!(store.read(&shard).await.unwrap().holds(&device("pump-9")));
        assert!(
            !store
                .read("devices")
                .await
                .unwrap()
                .holds(&device("pump-9"))
        );
        // Found where it lives for later changes, and listed with the others.
        let rotate = KeyChange::Rotate {
            device: "pump-9".into(),
        };
        change_timed(&store, &rotate, ALONE).await.unwrap();
        assert!(matches!(
            change_timed(&store, &add_change("pump-9"), ALONE).await,
            Err(AdminError::Exists(_))
        ));
        // The devices in the full base can still be disabled and rotated.
        for change in [
            KeyChange::Disable {
                device: "pump-0".into(),
            },
            KeyChange::Rotate {
                device: "pump-0".into(),
            },
        ] {
            change_timed(&store, &change, ALONE).await.unwrap();
        }
        let listed = listing(&store.read_all().await.unwrap()).unwrap();
        assert!(listed.contains("pump-9\t2\tfalse"), "{listed}");
        assert!(listed.contains("pump-0\t2\ttrue"), "{listed}");

        // The gateway's loader sees both parts.
        let source = KeySource::parse_secret_ref("fleet/devices").unwrap();
        let registry = source.load(Some(&secrets)).await.unwrap();
        let first = first.new_key.unwrap();
        assert!(matches!(
            registry.authenticate(first.key.expose_secret()),
            Err(crate::devices::AuthFailure::Disabled { .. })
        ));
        assert!(
            registry
                .authenticate(added.new_key.unwrap().key.expose_secret())
                .is_ok()
        );
        emulator.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_changes_to_a_file_all_stick() {
        let dir = lakegate_testkit::temp_dir();
        let path = dir.path().join("devices.json");
        let store = std::sync::Arc::new(RegistryStore::File(path.clone()));
        let changes = (0..16).map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let change = add_change(&format!("pump-{n}"));
                change_registry(&store, &change)
                    .await
                    .map(|applied| applied.new_key.unwrap())
            })
        });
        let keys = futures::future::join_all(changes).await;
        let registry = Registry::parse(&std::fs::read(&path).unwrap()).unwrap();
        for key in keys {
            let key = key.unwrap().expect("every change sticks");
            assert!(registry.authenticate(key.key.expose_secret()).is_ok());
        }
        assert!(!beside(&path, ".staged").exists());
    }
}
