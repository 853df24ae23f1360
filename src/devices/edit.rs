//! The changes `lakegate keys` makes to a registry document: what an operator asks
//! for ([`KeyChange`]), how it is made ([`apply`]), why it was refused
//! ([`AdminError`]), and the listing. Where the document lives is `store.rs`.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::document::{DeviceEntry, RegistryDocument, RelayEntry};
use super::ids::is_valid_device_id;
use super::keys::{KeyHash, KeyKind, NewKey, generate_key_of, looks_like_key};
use super::registry::Registry;
use super::relays::{DevicePattern, parse_pattern};

/// One change an operator asks for: an action on a device or a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub subject: Subject,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new entry with one key.
    Add(NewEntry),
    /// A second key; both work until `RevokeOld`.
    Rotate,
    /// Keeps only the newest key.
    RevokeOld,
    /// Removes the entry and all its keys.
    Revoke,
    /// Refuses the entry's keys (403) until `Enable`.
    Disable,
    Enable,
    /// Replaces a relay's device patterns.
    SetDevices(Vec<String>),
}

/// What a new entry holds besides its key: a device's own limits, a relay's patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewEntry {
    Device {
        rate_per_sec: Option<NonZeroU32>,
        burst: Option<NonZeroU32>,
    },
    /// Device ids, or prefixes ending in `*`.
    Relay { devices: Vec<String> },
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
    pub fn device(id: impl Into<String>) -> Subject {
        Subject {
            kind: EntryKind::Device,
            id: id.into(),
        }
    }

    pub fn relay(id: impl Into<String>) -> Subject {
        Subject {
            kind: EntryKind::Relay,
            id: id.into(),
        }
    }

    /// The `lakegate keys` command that does `action` to this kind of entry.
    fn command(&self, action: &str) -> String {
        format!("lakegate keys {} {action}", self.noun())
    }

    fn noun(&self) -> &'static str {
        match self.kind {
            EntryKind::Device => "device",
            EntryKind::Relay => "relay",
        }
    }

    /// The kind of key a new entry of this kind gets.
    fn key_kind(&self) -> KeyKind {
        match self.kind {
            EntryKind::Device => KeyKind::Device,
            EntryKind::Relay => KeyKind::Relay,
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
        "{0} does not exist (check the path; `lakegate keys device add` or `lakegate keys relay add` creates a registry)"
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

impl KeyChange {
    pub fn new(subject: Subject, action: Action) -> KeyChange {
        KeyChange { subject, action }
    }

    /// Whether the change adds an entry.
    pub(crate) fn adds(&self) -> bool {
        matches!(self.action, Action::Add(_))
    }

    /// The new key the change makes, of its subject's kind, if it makes one.
    pub(crate) fn new_key(&self) -> Option<NewKey> {
        matches!(self.action, Action::Add(_) | Action::Rotate)
            .then(|| generate_key_of(self.subject.key_kind()))
    }
}

/// What was done, for the operator: `added relay "site-a" with a new key`.
impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = &self.subject;
        match &self.action {
            Action::Add(_) => write!(f, "added {subject} with a new key"),
            Action::Rotate => write!(
                f,
                "{subject} has a new key; the old one works until `{}`",
                subject.command("revoke-old")
            ),
            Action::RevokeOld => write!(f, "{subject} keeps only its newest key"),
            Action::Revoke => write!(f, "removed {subject} and its keys"),
            Action::Disable => write!(f, "disabled {subject}"),
            Action::Enable => write!(f, "enabled {subject}"),
            Action::SetDevices(devices) => {
                write!(f, "{subject} now sends for {}", devices.join(","))
            }
        }
    }
}

/// Applies `change` to a registry document; the result is checked as the gateway
/// would index it. A refused change leaves the document as it was.
pub(crate) fn apply(
    document: &mut RegistryDocument,
    change: &KeyChange,
) -> Result<Applied, AdminError> {
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
pub(crate) fn apply_keyed(
    document: &mut RegistryDocument,
    change: &KeyChange,
    key: Option<&NewKey>,
) -> Result<Effect, AdminError> {
    let mut changed = document.clone();
    let effect = apply_to(&mut changed, change, key)?;
    Registry::from_document(changed.clone()).map_err(|err| AdminError::Invalid(err.to_string()))?;
    *document = changed;
    Ok(effect)
}

/// What a change leaves in its entry, to recognise it on a later attempt: an
/// attempt whose write was overwritten by one that carried it along must not make it
/// twice (an add would find its own entry "already in the registry").
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// The entry holds this key hash.
    HasKey(KeyHash),
    /// The entry is there and holds none of these key hashes.
    LacksKeys(Vec<KeyHash>),
    /// There is no entry.
    Removed,
    /// The entry is (or is not) disabled.
    Disabled(bool),
    /// The relay's device patterns are these.
    Patterns(Vec<DevicePattern>),
}

/// One entry of either kind, as the edits see it.
enum EntryRef<'a> {
    Device(&'a DeviceEntry),
    Relay(&'a RelayEntry),
}

impl EntryRef<'_> {
    fn keys(&self) -> &[KeyHash] {
        match self {
            EntryRef::Device(entry) => &entry.keys,
            EntryRef::Relay(entry) => &entry.keys,
        }
    }

    fn disabled(&self) -> bool {
        match self {
            EntryRef::Device(entry) => entry.disabled,
            EntryRef::Relay(entry) => entry.disabled,
        }
    }
}

/// The entry of `subject`, if the document holds it.
pub(crate) fn holds(document: &RegistryDocument, subject: &Subject) -> bool {
    entry(document, subject).is_some()
}

fn entry<'a>(document: &'a RegistryDocument, subject: &Subject) -> Option<EntryRef<'a>> {
    match subject.kind {
        EntryKind::Device => document.devices.get(&subject.id).map(EntryRef::Device),
        EntryKind::Relay => document.relays.get(&subject.id).map(EntryRef::Relay),
    }
}

impl Effect {
    pub(crate) fn shown_in(&self, document: &RegistryDocument, subject: &Subject) -> bool {
        let entry = entry(document, subject);
        match self {
            Effect::HasKey(hash) => entry.is_some_and(|entry| entry.keys().contains(hash)),
            Effect::LacksKeys(gone) => {
                entry.is_some_and(|entry| !entry.keys().iter().any(|k| gone.contains(k)))
            }
            Effect::Removed => entry.is_none(),
            Effect::Disabled(disabled) => entry.is_some_and(|entry| entry.disabled() == *disabled),
            Effect::Patterns(patterns) => matches!(
                entry,
                Some(EntryRef::Relay(relay)) if relay.devices == *patterns
            ),
        }
    }
}

fn apply_to(
    document: &mut RegistryDocument,
    change: &KeyChange,
    key: Option<&NewKey>,
) -> Result<Effect, AdminError> {
    let subject = &change.subject;
    let hash = || {
        let key = key.expect("a change that makes a key is given one");
        key.hash
            .parse::<KeyHash>()
            .expect("a new key's hash parses")
    };
    let (keys, disabled) = match &change.action {
        Action::Add(new) => {
            if !is_valid_device_id(&subject.id) {
                return Err(AdminError::InvalidId(subject.clone()));
            }
            let id = subject.id.clone();
            match (subject.kind, new) {
                (
                    EntryKind::Device,
                    NewEntry::Device {
                        rate_per_sec,
                        burst,
                    },
                ) => {
                    if document.devices.contains_key(&id) {
                        return Err(AdminError::Exists(subject.clone()));
                    }
                    let entry = DeviceEntry {
                        keys: vec![hash()],
                        disabled: false,
                        rate_per_sec: *rate_per_sec,
                        burst: *burst,
                    };
                    document.devices.insert(id, entry);
                }
                (EntryKind::Relay, NewEntry::Relay { devices }) => {
                    let devices = patterns(devices)?;
                    if document.relays.contains_key(&id) {
                        return Err(AdminError::Exists(subject.clone()));
                    }
                    let entry = RelayEntry {
                        keys: vec![hash()],
                        devices,
                        disabled: false,
                    };
                    document.relays.insert(id, entry);
                }
                _ => return Err(mismatch(subject)),
            }
            return Ok(Effect::HasKey(hash()));
        }
        Action::Revoke => {
            let removed = match subject.kind {
                EntryKind::Device => document.devices.remove(&subject.id).is_some(),
                EntryKind::Relay => document.relays.remove(&subject.id).is_some(),
            };
            return match removed {
                true => Ok(Effect::Removed),
                false => Err(AdminError::Unknown(subject.clone())),
            };
        }
        Action::SetDevices(devices) => {
            let relay = (subject.kind == EntryKind::Relay)
                .then(|| document.relays.get_mut(&subject.id))
                .ok_or_else(|| mismatch(subject))?
                .ok_or_else(|| AdminError::Unknown(subject.clone()))?;
            relay.devices = patterns(devices)?;
            return Ok(Effect::Patterns(relay.devices.clone()));
        }
        _ => match subject.kind {
            EntryKind::Device => document
                .devices
                .get_mut(&subject.id)
                .map(|entry| (&mut entry.keys, &mut entry.disabled)),
            EntryKind::Relay => document
                .relays
                .get_mut(&subject.id)
                .map(|entry| (&mut entry.keys, &mut entry.disabled)),
        }
        .ok_or_else(|| AdminError::Unknown(subject.clone()))?,
    };
    match &change.action {
        Action::Rotate => {
            if keys.len() >= 2 {
                return Err(AdminError::RotationPending(subject.clone(), keys.len()));
            }
            keys.push(hash());
            Ok(Effect::HasKey(hash()))
        }
        Action::RevokeOld => {
            let Some(newest) = keys.pop().filter(|_| !keys.is_empty()) else {
                return Err(AdminError::OnlyKey(subject.clone()));
            };
            Ok(Effect::LacksKeys(std::mem::replace(keys, vec![newest])))
        }
        Action::Disable | Action::Enable => {
            *disabled = change.action == Action::Disable;
            Ok(Effect::Disabled(*disabled))
        }
        Action::Add(_) | Action::Revoke | Action::SetDevices(_) => {
            unreachable!("made above")
        }
    }
}

/// A change that names the wrong kind of entry (a device's limits for a relay).
fn mismatch(subject: &Subject) -> AdminError {
    AdminError::Usage(format!("that change is not one for a {}", subject.noun()))
}

/// The patterns of `--devices`: trimmed, without empties and repeats, each checked as
/// the gateway will parse it.
fn patterns(devices: &[String]) -> Result<Vec<DevicePattern>, AdminError> {
    let mut patterns: Vec<DevicePattern> = Vec::new();
    for text in devices.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let pattern = parse_pattern(text).map_err(|bad| {
            let shown = match looks_like_key(text) {
                true => "(a pattern that looks like a key)".to_owned(),
                false => format!("{text:?}"),
            };
            AdminError::InvalidPattern(format!("device pattern {shown} {bad}"))
        })?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    if patterns.is_empty() {
        return Err(AdminError::InvalidPattern(
            "a relay needs at least one device pattern: --devices 'pump-7,line-3-*'".into(),
        ));
    }
    Ok(patterns)
}

/// One line per device for `lakegate keys list`, then one per relay with its device
/// patterns: never a key or a hash.
pub fn listing(document: &RegistryDocument) -> String {
    let limit =
        |limit: Option<NonZeroU32>| limit.map_or_else(|| "default".to_owned(), |n| n.to_string());
    let mut text = String::from("device\tkeys\tdisabled\trate_per_sec\tburst\n");
    for (id, entry) in &document.devices {
        text.push_str(&format!(
            "{id}\t{}\t{}\t{}\t{}\n",
            entry.keys.len(),
            entry.disabled,
            limit(entry.rate_per_sec),
            limit(entry.burst)
        ));
    }
    if !document.relays.is_empty() {
        text.push_str("\nrelay\tkeys\tdisabled\tdevices\n");
        for (id, entry) in &document.relays {
            let patterns: Vec<String> = entry.devices.iter().map(ToString::to_string).collect();
            text.push_str(&format!(
                "{id}\t{}\t{}\t{}\n",
                entry.keys.len(),
                entry.disabled,
                patterns.join(",")
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::devices::{Sender, generate_key, hash_key};

    fn empty() -> RegistryDocument {
        RegistryDocument::default()
    }

    fn device(id: &str, action: Action) -> KeyChange {
        KeyChange::new(Subject::device(id), action)
    }

    fn relay(id: &str, action: Action) -> KeyChange {
        KeyChange::new(Subject::relay(id), action)
    }

    fn add_device(id: &str) -> KeyChange {
        let new = NewEntry::Device {
            rate_per_sec: None,
            burst: None,
        };
        device(id, Action::Add(new))
    }

    fn add(document: &mut RegistryDocument, id: &str) -> String {
        let key = apply(document, &add_device(id)).unwrap().new_key.unwrap();
        key.key.expose_secret().to_owned()
    }

    /// The document as the gateway reads it, from its JSON.
    fn loaded(document: &RegistryDocument) -> Registry {
        Registry::parse(document.to_json().as_bytes()).unwrap()
    }

    fn authenticates(document: &RegistryDocument, key: &str) -> Option<String> {
        (loaded(document).authenticate(key).ok()).map(|d| d.id().to_string())
    }

    fn add_relay(
        document: &mut RegistryDocument,
        id: &str,
        devices: &[&str],
    ) -> Result<String, AdminError> {
        let devices = devices.iter().map(|d| d.to_string()).collect();
        let change = relay(id, Action::Add(NewEntry::Relay { devices }));
        let key = apply(document, &change)?.new_key.unwrap();
        Ok(key.key.expose_secret().to_owned())
    }

    /// Whether `key` is a relay's that may speak for `device`.
    fn relays_for(document: &RegistryDocument, key: &str, device: &str) -> Option<bool> {
        match loaded(document).authenticate(key) {
            Ok(Sender::Relay(relay)) => Some(relay.speaks_for(device)),
            _ => None,
        }
    }

    #[test]
    fn add_stores_only_the_hash_and_the_limits() {
        let mut document = empty();
        let new = NewEntry::Device {
            rate_per_sec: NonZeroU32::new(5),
            burst: NonZeroU32::new(10),
        };
        let change = device("pump-7", Action::Add(new));
        let key = apply(&mut document, &change).unwrap().new_key.unwrap();
        let key = key.key.expose_secret();
        assert!(key.starts_with("lgd_"));
        let text = document.to_json();
        assert!(!text.contains(key));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::json!({"devices": {"pump-7":
                {"keys": [hash_key(key)], "rate_per_sec": 5, "burst": 10}}})
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
        let rotate = device("pump-7", Action::Rotate);
        let new = apply(&mut document, &rotate).unwrap().new_key.unwrap();
        let new = new.key.expose_secret().to_owned();
        assert_eq!(authenticates(&document, &old).as_deref(), Some("pump-7"));
        assert_eq!(authenticates(&document, &new).as_deref(), Some("pump-7"));
        assert!(matches!(
            apply(&mut document, &rotate),
            Err(AdminError::RotationPending(_, 2))
        ));

        let revoke_old = device("pump-7", Action::RevokeOld);
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
        apply(&mut document, &device("pump-7", Action::Disable)).unwrap();
        assert_eq!(authenticates(&document, &key), None);
        apply(&mut document, &device("pump-7", Action::Enable)).unwrap();
        assert_eq!(authenticates(&document, &key).as_deref(), Some("pump-7"));
        // Enabled is the absence of "disabled", as operators write it.
        assert!(!document.to_json().contains("disabled"));
        apply(&mut document, &device("pump-7", Action::Revoke)).unwrap();
        assert_eq!(authenticates(&document, &key), None);
        assert_eq!(authenticates(&document, &other).as_deref(), Some("pump-8"));
        assert!(matches!(
            apply(&mut document, &device("pump-7", Action::Revoke)),
            Err(AdminError::Unknown(_))
        ));
    }

    #[test]
    fn the_listing_shows_no_key_material() {
        let mut document = empty();
        let key = add(&mut document, "pump-7");
        apply(&mut document, &device("pump-7", Action::Rotate)).unwrap();
        let listing = listing(&document);
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
        let key = add_relay(
            &mut document,
            "site-a",
            &[" pump-7", "line-3-*", "", "pump-7"],
        )
        .unwrap();
        let text = document.to_json();
        assert!(!text.contains(&key));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["relays"]["site-a"],
            serde_json::json!({"keys": [hash_key(&key)], "devices": ["pump-7", "line-3-*"]})
        );
        assert_eq!(relays_for(&document, &key, "line-3-x"), Some(true));
        assert_eq!(relays_for(&document, &key, "pump-8"), Some(false));
        // A relay and a device may share an id: they are different things.
        add_relay(&mut document, "pump-7", &["pump-7"]).unwrap();
        let exists = add_relay(&mut document, "site-a", &["x"]).unwrap_err();
        assert_eq!(
            exists.to_string(),
            "relay \"site-a\" is already in the registry (use `lakegate keys relay rotate` for a new key)"
        );

        let rotate = relay("site-a", Action::Rotate);
        let next = apply(&mut document, &rotate).unwrap().new_key.unwrap();
        let next = next.key.expose_secret().to_owned();
        assert!(next.starts_with("lgr_"));
        assert_eq!(relays_for(&document, &key, "pump-7"), Some(true));
        assert_eq!(relays_for(&document, &next, "pump-7"), Some(true));
        let pending = apply(&mut document, &rotate).unwrap_err();
        assert!(
            pending
                .to_string()
                .contains("with `lakegate keys relay revoke-old` first"),
            "{pending}"
        );
        let revoke_old = relay("site-a", Action::RevokeOld);
        apply(&mut document, &revoke_old).unwrap();
        assert_eq!(relays_for(&document, &key, "pump-7"), None);
        assert_eq!(
            apply(&mut document, &revoke_old).unwrap_err().to_string(),
            "relay \"site-a\" has only one key; `lakegate keys relay revoke` removes the relay"
        );

        let repoint = relay("site-a", Action::SetDevices(vec!["line-4-*".into()]));
        apply(&mut document, &repoint).unwrap();
        assert_eq!(relays_for(&document, &next, "pump-7"), Some(false));
        assert_eq!(relays_for(&document, &next, "line-4-1"), Some(true));

        apply(&mut document, &relay("site-a", Action::Disable)).unwrap();
        assert_eq!(relays_for(&document, &next, "line-4-1"), None);
        apply(&mut document, &relay("site-a", Action::Enable)).unwrap();
        assert_eq!(relays_for(&document, &next, "line-4-1"), Some(true));

        let listed = listing(&document);
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

        apply(&mut document, &relay("site-a", Action::Revoke)).unwrap();
        assert_eq!(relays_for(&document, &next, "line-4-1"), None);
        assert!(matches!(
            apply(&mut document, &relay("site-a", Action::Revoke)),
            Err(AdminError::Unknown(_))
        ));
        // The device of the same name was never touched.
        assert!(document.devices.contains_key("pump-7"));
    }

    #[test]
    fn relay_changes_are_refused_with_reasons_that_show_no_key() {
        let mut document = empty();
        let unknown = apply(&mut document, &relay("site-z", Action::Rotate));
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
            apply(&mut document, &add_device(key)).unwrap_err(),
            apply(&mut document, &relay(key, Action::Disable)).unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(!message.contains(&key[4..12]), "{message}");
        }
    }

    #[test]
    fn a_change_for_the_other_kind_of_entry_is_refused() {
        let mut document = empty();
        add(&mut document, "pump-7");
        let relay_add = device("pump-8", Action::Add(NewEntry::Relay { devices: vec![] }));
        let repoint = device("pump-7", Action::SetDevices(vec!["pump-1".into()]));
        for change in [relay_add, repoint] {
            let error = apply(&mut document, &change).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{error}");
        }
        assert_eq!(document.devices.len(), 1);
    }

    #[test]
    fn each_change_says_what_it_did() {
        let said = |change: KeyChange| change.to_string();
        assert_eq!(
            said(device("pump-7", Action::Rotate)),
            "device \"pump-7\" has a new key; the old one works until `lakegate keys device revoke-old`"
        );
        assert_eq!(
            said(relay(
                "site-a",
                Action::SetDevices(vec!["a".into(), "b-*".into()])
            )),
            "relay \"site-a\" now sends for a,b-*"
        );
        let key = generate_key();
        let shown = said(device(key.key.expose_secret(), Action::Disable));
        assert_eq!(shown, "disabled device (an id that looks like a key)");
    }
}
