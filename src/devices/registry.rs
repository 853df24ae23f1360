//! The device registry: which key hashes belong to which device or site relay, and
//! the devices' quotas.
//!
//! Built from the one [`RegistryDocument`] type (`document.rs`), indexed for lookups.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::document::RegistryDocument;
use super::error::RegistryError;
use super::ids::quoted;
use super::keys::KeyHash;
use super::relays::Relay;

/// An authenticated device. Quotas of `None` use the gateway defaults.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: Arc<str>,
    pub rate_per_sec: Option<NonZeroU32>,
    pub burst: Option<NonZeroU32>,
}

/// Who an `X-API-Key` belongs to: a device sending its own readings, or a site relay
/// forwarding readings that each name their device.
#[derive(Clone, Debug)]
pub enum Sender {
    Device(Device),
    Relay(Relay),
}

impl Sender {
    /// The device's or the relay's id.
    pub fn id(&self) -> &Arc<str> {
        match self {
            Sender::Device(device) => &device.id,
            Sender::Relay(relay) => &relay.id,
        }
    }
}

/// A missing key and a wrong key are the same failure, so callers cannot tell them apart.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownKey,
    Disabled { device_id: Arc<str> },
    RelayDisabled { relay_id: Arc<str> },
}

/// A device as a relay names it: what the registry says of it.
#[derive(Debug)]
pub enum Relayed {
    Enabled(Device),
    Disabled,
    Unknown,
}

/// The parsed registry, indexed by key hash, and its devices by id (for the readings
/// a relay forwards).
#[derive(Clone)]
pub struct Registry {
    by_hash: HashMap<KeyHash, Holder>,
    /// Kept small: at 100,000 devices each byte here is 100 KB of heap.
    devices: HashMap<Arc<str>, Standing>,
    relays: HashSet<Arc<str>>,
}

/// A device's quotas and whether it is disabled, without its id (the map's key).
#[derive(Clone, Copy)]
struct Standing {
    rate_per_sec: Option<NonZeroU32>,
    burst: Option<NonZeroU32>,
    disabled: bool,
}

/// Who holds a key.
#[derive(Clone)]
enum Holder {
    Device(Registered),
    Relay(Arc<RegisteredRelay>),
}

impl Holder {
    /// For an error message: `device "pump-7"`, `relay "site-a"`.
    fn describe(&self) -> String {
        match self {
            Holder::Device(registered) => format!("device {:?}", registered.device.id),
            Holder::Relay(registered) => format!("relay {:?}", registered.relay.id),
        }
    }

    /// An error about this holder's entry.
    fn error(&self, problem: String) -> RegistryError {
        match self {
            Holder::Device(registered) => RegistryError::Device {
                device: quoted(&registered.device.id),
                problem,
            },
            Holder::Relay(registered) => RegistryError::Relay {
                relay: quoted(&registered.relay.id),
                problem,
            },
        }
    }
}

#[derive(Clone)]
struct Registered {
    device: Device,
    disabled: bool,
}

struct RegisteredRelay {
    relay: Relay,
    disabled: bool,
}

/// What one shard of a sharded registry put into the combined one, to take it out again.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    keys: Vec<KeyHash>,
    devices: Vec<Arc<str>>,
    relays: Vec<Arc<str>>,
}

impl Registry {
    pub fn parse(json: &[u8]) -> Result<Registry, RegistryError> {
        RegistryDocument::parse(json).map(Registry::from_document)?
    }

    /// Indexes a document's entries by key hash; a key may belong to one entry only.
    pub(crate) fn from_document(document: RegistryDocument) -> Result<Registry, RegistryError> {
        let mut registry = Registry {
            by_hash: HashMap::with_capacity(document.devices.len()),
            devices: HashMap::with_capacity(document.devices.len()),
            relays: HashSet::with_capacity(document.relays.len()),
        };
        for (id, entry) in document.devices {
            let id: Arc<str> = id.into();
            let registered = Registered {
                device: Device {
                    id: id.clone(),
                    rate_per_sec: entry.rate_per_sec,
                    burst: entry.burst,
                },
                disabled: entry.disabled,
            };
            let standing = Standing {
                rate_per_sec: entry.rate_per_sec,
                burst: entry.burst,
                disabled: entry.disabled,
            };
            registry.devices.insert(id, standing);
            for hash in entry.keys {
                registry.hold(hash, Holder::Device(registered.clone()))?;
            }
        }
        for (id, entry) in document.relays {
            let id: Arc<str> = id.into();
            let registered = Arc::new(RegisteredRelay {
                relay: Relay::new(id.clone(), entry.devices),
                disabled: entry.disabled,
            });
            registry.relays.insert(id);
            for hash in entry.keys {
                registry.hold(hash, Holder::Relay(registered.clone()))?;
            }
        }
        Ok(registry)
    }

    /// Gives `hash` to `holder`, unless another entry holds it already.
    fn hold(&mut self, hash: KeyHash, holder: Holder) -> Result<(), RegistryError> {
        if let Some(other) = self.by_hash.get(&hash) {
            return Err(holder.error(format!(
                "key {hash:?} is also listed for {}",
                other.describe()
            )));
        }
        self.by_hash.insert(hash, holder);
        Ok(())
    }

    /// Hashes the presented key and looks the hash up. Comparing hashes keeps
    /// lookup timing independent of how much of a real key was guessed.
    pub fn authenticate(&self, presented_key: &str) -> Result<Sender, AuthFailure> {
        match self.by_hash.get(&KeyHash::of(presented_key)) {
            None => Err(AuthFailure::UnknownKey),
            Some(Holder::Device(Registered { device, disabled })) => match disabled {
                true => Err(AuthFailure::Disabled {
                    device_id: device.id.clone(),
                }),
                false => Ok(Sender::Device(device.clone())),
            },
            Some(Holder::Relay(registered)) => match registered.disabled {
                true => Err(AuthFailure::RelayDisabled {
                    relay_id: registered.relay.id.clone(),
                }),
                false => Ok(Sender::Relay(registered.relay.clone())),
            },
        }
    }

    /// A device by its id, as a relay names it.
    pub fn relayed(&self, device_id: &str) -> Relayed {
        match self.devices.get_key_value(device_id) {
            None => Relayed::Unknown,
            Some((_, Standing { disabled: true, .. })) => Relayed::Disabled,
            Some((id, standing)) => Relayed::Enabled(Device {
                id: id.clone(),
                rate_per_sec: standing.rate_per_sec,
                burst: standing.burst,
            }),
        }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }

    /// An empty registry, to absorb shards into.
    pub(crate) fn empty() -> Registry {
        Registry {
            by_hash: HashMap::new(),
            devices: HashMap::new(),
            relays: HashSet::new(),
        }
    }

    /// The key hashes, device ids and relay ids of this registry, to take them out
    /// again later.
    pub(crate) fn contents(&self) -> Contents {
        Contents {
            keys: self.by_hash.keys().copied().collect(),
            devices: self.devices.keys().cloned().collect(),
            relays: self.relays.iter().cloned().collect(),
        }
    }

    /// Takes in the entries of `shard` (a shard of a large fleet): a device, a relay or
    /// a key may be in one shard only.
    pub(crate) fn absorb(&mut self, shard: Registry) -> Result<(), RegistryError> {
        self.by_hash.reserve(shard.by_hash.len());
        self.devices.reserve(shard.devices.len());
        for (id, standing) in shard.devices {
            if self.devices.insert(id.clone(), standing).is_some() {
                return Err(RegistryError::Device {
                    device: quoted(&id),
                    problem: "is listed in two shards of the registry".into(),
                });
            }
        }
        for id in shard.relays {
            if !self.relays.insert(id.clone()) {
                return Err(RegistryError::Relay {
                    relay: quoted(&id),
                    problem: "is listed in two shards of the registry".into(),
                });
            }
        }
        for (hash, holder) in shard.by_hash {
            self.hold(hash, holder)?;
        }
        Ok(())
    }

    /// Takes out what [`Registry::contents`] listed of a shard.
    pub(crate) fn remove(&mut self, contents: &Contents) {
        for hash in &contents.keys {
            self.by_hash.remove(hash);
        }
        for id in &contents.devices {
            self.devices.remove(id);
        }
        for id in &contents.relays {
            self.relays.remove(id);
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.devices.len())
            .field("relays", &self.relays.len())
            .field("keys", &self.by_hash.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::{generate_key, hash_key};
    use super::*;

    fn registry(json: &str) -> Result<Registry, RegistryError> {
        Registry::parse(json.as_bytes())
    }

    fn error(json: &str) -> String {
        registry(json).unwrap_err().to_string()
    }

    #[test]
    fn parses_devices_with_optional_fields() {
        let json = format!(
            r#"{{"devices": {{
                "a": {{"keys": ["{}"]}},
                "b.2:x-y_z": {{"keys": [], "disabled": true, "rate_per_sec": 5, "burst": 10}}
            }}}}"#,
            hash_key("ka")
        );
        let registry = registry(&json).unwrap();
        assert_eq!(registry.device_count(), 2);
        let Ok(Sender::Device(a)) = registry.authenticate("ka") else {
            panic!("a device");
        };
        assert_eq!((&*a.id, a.rate_per_sec, a.burst), ("a", None, None));
        assert_eq!(
            format!("{registry:?}"),
            "Registry { devices: 2, relays: 0, keys: 1 }"
        );
    }

    #[test]
    fn rejects_bad_json_and_shapes() {
        assert!(error("{").starts_with("device registry is not valid JSON: EOF"));
        assert!(error("[]").contains("expected an object {\"devices\": {...}}"));
        assert!(error("{}").contains("missing field `devices`"));
        assert!(error(r#"{"devices": {}, "extra": 1}"#).contains("unknown field `extra`"));
        assert!(error(r#"{"devices": []}"#).contains("expected an object of device id to entry"));
    }

    #[test]
    fn errors_name_the_device_and_the_problem() {
        let hash = hash_key("k");
        let cases = [
            (
                r#""a": {"keys": ["sha256:00"]}"#.to_owned(),
                "device \"a\": key #0: is not \"sha256:<64",
            ),
            (
                format!(r#""a": {{"keys": ["{hash}", 7]}}"#),
                "device \"a\": key #1: invalid type: integer `7`, expected a key hash",
            ),
            (
                r#""a": {}"#.to_owned(),
                "device \"a\": missing field `keys`",
            ),
            (
                r#""a": {"keys": [], "color": 1}"#.to_owned(),
                "device \"a\": unknown field `color`, expected one of",
            ),
            (
                r#""a": {"keys": [], "burst": 0}"#.to_owned(),
                "device \"a\": \"burst\": invalid value: integer `0`",
            ),
            (
                r#""a": {"keys": [], "disabled": 1}"#.to_owned(),
                "device \"a\": \"disabled\": invalid type: integer `1`, expected a boolean",
            ),
            (
                r#""a": 1"#.to_owned(),
                "device \"a\": invalid type: integer `1`, expected an entry object",
            ),
            (
                r#""a b": {"keys": []}"#.to_owned(),
                "device \"a b\": invalid id",
            ),
            (r#""": {"keys": []}"#.to_owned(), "device \"\": invalid id"),
            (
                format!(r#""{}": {{"keys": []}}"#, "x".repeat(129)),
                "invalid id",
            ),
            (
                format!(r#""a": {{"keys": ["{hash}"]}}, "b": {{"keys": ["{hash}"]}}"#),
                "device \"b\": key sha256:",
            ),
        ];
        for (devices, expected) in cases {
            let message = error(&format!(r#"{{"devices": {{{devices}}}}}"#));
            assert!(message.contains(expected), "{message} !~ {expected}");
        }
    }

    #[test]
    fn errors_never_echo_a_key() {
        use super::super::keys::{KeyKind, generate_key_of};
        let keys = [
            generate_key(),
            generate_key_of(KeyKind::Device),
            generate_key_of(KeyKind::Relay),
            generate_key_of(KeyKind::Reader),
        ];
        for new in &keys {
            let key = secrecy::ExposeSecret::expose_secret(&new.key);
            let hash = hash_key("k");
            for json in [
                format!(r#"{{"devices": {{"a": {{"keys": ["{key}"]}}}}}}"#),
                format!(r#"{{"devices": {{"a": {{"keys": ["{hash}", "{key}"]}}}}}}"#),
                format!(r#"{{"devices": {{"a": {{"keys": "{key}"}}}}}}"#),
                format!(r#"{{"devices": {{"{key}": {{"keys": []}}}}}}"#),
                format!(r#"{{"devices": {{"a": {{"keys": [], "{key}": 1}}}}}}"#),
                format!(r#"{{"devices": {{"a": {{"keys": [], "disabled": "{key}"}}}}}}"#),
                format!(r#"{{"devices": {{"a": {{"keys": [], "rate_per_sec": "{key}"}}}}}}"#),
                format!(r#"{{"devices": {{"a": {{"keys": [], "burst": "{key}"}}}}}}"#),
                format!(r#"{{"devices": {{"a": "{key}"}}}}"#),
                format!(r#"{{"devices": {{"a": ["x{key}y"]}}}}"#),
                format!(r#"{{"devices": "{key}"}}"#),
                format!(r#"{{"devices": {{}}, "{key}": {{}}}}"#),
                format!(r#"{{"devices": {{}}, "relays": "{key}"}}"#),
                format!(r#""{key}""#),
                format!(r#"["{key}"]"#),
                key.to_owned(),
            ] {
                let message = error(&json);
                assert!(!message.contains(&key[4..12]), "{message}");
            }
            assert!(
                error(&format!(r#"{{"devices": {{"a": {{"keys": ["{key}"]}}}}}}"#))
                    .contains("device \"a\": key #0: is a key, not its hash")
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let relay = r#""s": {"keys": [], "devices": ["a"]"#;
        for (json, expected) in [
            (
                r#"{"devices": {}, "readers": {}}"#.to_owned(),
                "unknown field `readers`, expected `devices` or `relays`",
            ),
            (
                r#"{"devices": {"a": {"keys": [], "rate": 5}}}"#.to_owned(),
                "device \"a\": unknown field `rate`",
            ),
            (
                format!(r#"{{"devices": {{}}, "relays": {{{relay}, "burst": 1}}}}}}"#),
                "relay \"s\": unknown field `burst`",
            ),
        ] {
            let message = error(&json);
            assert!(message.contains(expected), "{message} !~ {expected}");
        }
    }

    /// Every shape today's writers produce (`lakegate keys` pretty-printed, with fields
    /// in any order; local mode; hand-written with `"relays": {}` and `"disabled": false`)
    /// loads, and reads back as the same document.
    #[test]
    fn registries_written_before_still_load() {
        let (a, b, r) = (hash_key("a"), hash_key("b"), hash_key("r"));
        let written = format!(
            r#"{{
  "devices": {{
    "pump-7": {{
      "burst": 10,
      "keys": ["{a}", "{b}"],
      "rate_per_sec": 5
    }},
    "pump-8": {{"disabled": true, "keys": []}},
    "pump-9": {{"keys": [], "disabled": false}},
    "lgw_0016c001f11d0d3a": {{"keys": []}}
  }},
  "relays": {{
    "site-a": {{"devices": ["pump-7", "line-3-*", "lgw_*"], "disabled": true, "keys": ["{r}"]}}
  }}
}}"#
        );
        let registry = registry(&written).unwrap();
        assert_eq!((registry.device_count(), registry.relay_count()), (4, 1));
        let Ok(Sender::Device(device)) = registry.authenticate("b") else {
            panic!("pump-7's second key");
        };
        assert_eq!(
            (&*device.id, device.rate_per_sec, device.burst),
            ("pump-7", NonZeroU32::new(5), NonZeroU32::new(10))
        );
        assert!(matches!(registry.relayed("pump-8"), Relayed::Disabled));
        assert!(matches!(registry.relayed("pump-9"), Relayed::Enabled(_)));
        assert!(matches!(
            registry.authenticate("r"),
            Err(AuthFailure::RelayDisabled { .. })
        ));
        for empty in [r#"{"devices": {}}"#, r#"{"devices": {}, "relays": {}}"#] {
            assert_eq!(registry_of(empty).device_count(), 0);
        }

        // Read and written again, the same entries.
        let document = RegistryDocument::parse(written.as_bytes()).unwrap();
        let again = RegistryDocument::parse(document.to_pretty_json().as_bytes()).unwrap();
        assert_eq!(again, document);
    }

    fn registry_of(json: &str) -> Registry {
        registry(json).unwrap()
    }

    #[test]
    fn authenticates_by_hash() {
        let json = format!(
            r#"{{"devices": {{
                "rotating": {{"keys": ["{}", "{}"], "rate_per_sec": 3}},
                "off": {{"keys": ["{}"], "disabled": true}}
            }}}}"#,
            hash_key("old"),
            hash_key("new"),
            hash_key("off-key"),
        );
        let registry = registry(&json).unwrap();
        for key in ["old", "new"] {
            let Ok(Sender::Device(device)) = registry.authenticate(key) else {
                panic!("a device");
            };
            assert_eq!(&*device.id, "rotating");
            assert_eq!(device.rate_per_sec, NonZeroU32::new(3));
        }
        assert_eq!(
            registry.authenticate("off-key").unwrap_err(),
            AuthFailure::Disabled {
                device_id: "off".into()
            }
        );
        for unknown in ["", "nope", &hash_key("old")] {
            assert_eq!(
                registry.authenticate(unknown).unwrap_err(),
                AuthFailure::UnknownKey
            );
        }
    }

    #[test]
    fn generated_key_authenticates_through_its_hash() {
        let new = generate_key();
        let json = format!(r#"{{"devices": {{"d": {{"keys": ["{}"]}}}}}}"#, new.hash);
        let registry = registry(&json).unwrap();
        let key = secrecy::ExposeSecret::expose_secret(&new.key);
        assert_eq!(&**registry.authenticate(key).unwrap().id(), "d");
    }

    fn with_relays(relays: &str) -> String {
        format!(
            r#"{{"devices": {{"pump-7": {{"keys": ["{}"]}}, "line-3-a": {{"keys": [], "rate_per_sec": 2}},
                "line-3-b": {{"keys": [], "disabled": true}}}},
              "relays": {{{relays}}}}}"#,
            hash_key("kp")
        )
    }

    #[test]
    fn relays_authenticate_with_their_own_keys() {
        let json = with_relays(&format!(
            r#""site-a": {{"keys": ["{}", "{}"], "devices": ["pump-7", "line-3-*"]}},
               "site-b": {{"keys": ["{}"], "devices": [], "disabled": true}}"#,
            hash_key("ra"),
            hash_key("ra2"),
            hash_key("rb"),
        ));
        let registry = registry(&json).unwrap();
        assert_eq!((registry.device_count(), registry.relay_count()), (3, 2));
        // Debug counts; it shows no hash.
        assert_eq!(
            format!("{registry:?}"),
            "Registry { devices: 3, relays: 2, keys: 4 }"
        );
        for key in ["ra", "ra2"] {
            let Ok(Sender::Relay(relay)) = registry.authenticate(key) else {
                panic!("a relay");
            };
            assert_eq!(&*relay.id, "site-a");
            assert!(relay.speaks_for("pump-7") && relay.speaks_for("line-3-z"));
            assert!(!relay.speaks_for("pump-8"));
        }
        assert_eq!(
            registry.authenticate("rb").unwrap_err(),
            AuthFailure::RelayDisabled {
                relay_id: "site-b".into()
            }
        );
        assert!(matches!(
            registry.authenticate("kp"),
            Ok(Sender::Device(Device { ref id, .. })) if &**id == "pump-7"
        ));
        assert_eq!(
            registry.authenticate(&hash_key("ra")).unwrap_err(),
            AuthFailure::UnknownKey
        );

        // Devices by id, as a relay names them (a device without keys is still one).
        assert!(
            matches!(registry.relayed("line-3-a"), Relayed::Enabled(d) if d.rate_per_sec == NonZeroU32::new(2))
        );
        assert!(matches!(registry.relayed("line-3-b"), Relayed::Disabled));
        assert!(matches!(registry.relayed("line-3-c"), Relayed::Unknown));
        assert!(matches!(registry.relayed("site-a"), Relayed::Unknown));

        // Without "relays", none.
        let plain = registry_of_devices();
        assert_eq!(plain.relay_count(), 0);
    }

    fn registry_of_devices() -> Registry {
        registry(r#"{"devices": {"a": {"keys": []}}}"#).unwrap()
    }

    #[test]
    fn relay_entries_are_checked_like_devices() {
        let hash = hash_key("k");
        let cases = [
            (
                r#""relays": []"#.to_owned(),
                "expected an object of relay id to entry",
            ),
            (
                r#""relays": {"a b": {"keys": [], "devices": []}}"#.to_owned(),
                "relay \"a b\": invalid id",
            ),
            (
                r#""relays": {"s": 1}"#.to_owned(),
                "relay \"s\": invalid type: integer `1`, expected an entry object",
            ),
            (
                r#""relays": {"s": {"devices": []}}"#.to_owned(),
                "relay \"s\": missing field `keys`",
            ),
            (
                r#""relays": {"s": {"keys": []}}"#.to_owned(),
                "relay \"s\": missing field `devices`",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": "pump-7"}}"#.to_owned(),
                "relay \"s\": invalid type: string \"pump-7\", expected an array of device patterns",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": [], "rate_per_sec": 5}}"#.to_owned(),
                "relay \"s\": unknown field `rate_per_sec`",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": [], "disabled": "no"}}"#.to_owned(),
                "relay \"s\": \"disabled\": invalid type: string \"no\"",
            ),
            (
                r#""relays": {"s": {"keys": ["sha256:00"], "devices": []}}"#.to_owned(),
                "relay \"s\": key #0: is not",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": ["ok", 7]}}"#.to_owned(),
                "relay \"s\": device pattern #1: invalid type: integer `7`",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": ["*"]}}"#.to_owned(),
                "relay \"s\": device pattern #0: \"*\" is \"*\" alone",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": ["line-*-a"]}}"#.to_owned(),
                "device pattern #0: \"line-*-a\" may hold one \"*\", only at its end",
            ),
            (
                r#""relays": {"s": {"keys": [], "devices": ["pump 7"]}}"#.to_owned(),
                "device pattern #0: \"pump 7\" is not a device id",
            ),
            // A key belongs to one device or one relay.
            (
                format!(
                    r#""relays": {{"s": {{"keys": ["{hash}"], "devices": []}}, "t": {{"keys": ["{hash}"], "devices": []}}}}"#
                ),
                "is also listed for relay",
            ),
            (
                format!(
                    r#""relays": {{"s": {{"keys": ["{}"], "devices": []}}}}"#,
                    hash_key("kp")
                ),
                "relay \"s\": key sha256:",
            ),
        ];
        for (relays, expected) in cases {
            let json = format!(
                r#"{{"devices": {{"pump-7": {{"keys": ["{}"]}}}}, {relays}}}"#,
                hash_key("kp")
            );
            let message = error(&json);
            assert!(message.contains(expected), "{message} !~ {expected}");
        }
        let shared = error(&format!(
            r#"{{"devices": {{"pump-7": {{"keys": ["{}"]}}}}, "relays": {{"s": {{"keys": ["{}"], "devices": []}}}}}}"#,
            hash_key("kp"),
            hash_key("kp")
        ));
        assert!(
            shared.contains("also listed for device \"pump-7\""),
            "{shared}"
        );
    }

    #[test]
    fn relay_errors_never_echo_a_key() {
        let new = generate_key();
        let key = secrecy::ExposeSecret::expose_secret(&new.key);
        for relays in [
            format!(r#"{{"s": {{"keys": ["{key}"], "devices": []}}}}"#),
            format!(r#"{{"{key}": {{"keys": [], "devices": []}}}}"#),
            format!(r#"{{"s": {{"keys": [], "devices": ["{key}"]}}}}"#),
            format!(r#"{{"s": {{"keys": [], "devices": ["{key}*"]}}}}"#),
            format!(r#"{{"s": {{"keys": [], "devices": [], "{key}": 1}}}}"#),
            format!(r#"{{"s": {{"keys": [], "devices": [], "disabled": "{key}"}}}}"#),
            format!(r#"{{"s": {{"keys": [], "devices": "{key}"}}}}"#),
            format!(r#"{{"s": "{key}"}}"#),
            format!(r#""{key}""#),
        ] {
            let message = error(&format!(r#"{{"devices": {{}}, "relays": {relays}}}"#));
            assert!(!message.contains(&key[4..12]), "{message}");
        }
    }

    #[test]
    fn parts_with_relays_combine_and_come_apart() {
        let loaded = |json: String| registry(&json).unwrap();
        let base = loaded(format!(
            r#"{{"devices": {{"a": {{"keys": ["{}"]}}}}, "relays": {{"site-a": {{"keys": ["{}"], "devices": ["b"]}}}}}}"#,
            hash_key("ka"),
            hash_key("ra")
        ));
        let shard = loaded(format!(
            r#"{{"devices": {{"b": {{"keys": ["{}"]}}}}}}"#,
            hash_key("kb")
        ));
        let mut combined = Registry::empty();
        let base_contents = base.contents();
        combined.absorb(base).unwrap();
        combined.absorb(shard).unwrap();
        assert_eq!((combined.device_count(), combined.relay_count()), (2, 1));
        assert!(matches!(combined.authenticate("ra"), Ok(Sender::Relay(_))));
        assert!(matches!(combined.relayed("b"), Relayed::Enabled(_)));

        // A relay id in two shards is an error, as a device id is.
        let mut twice = combined.clone();
        let again = loaded(format!(
            r#"{{"devices": {{}}, "relays": {{"site-a": {{"keys": ["{}"], "devices": []}}}}}}"#,
            hash_key("other")
        ));
        let message = twice.absorb(again).unwrap_err().to_string();
        assert!(
            message.contains("relay \"site-a\": is listed in two shards"),
            "{message}"
        );
        // So is a key of a relay in one shard and of a device in another.
        let mut shared = combined.clone();
        let stolen = loaded(format!(
            r#"{{"devices": {{"c": {{"keys": ["{}"]}}}}}}"#,
            hash_key("ra")
        ));
        let message = shared.absorb(stolen).unwrap_err().to_string();
        assert!(
            message.contains("device \"c\": key sha256:")
                && message.contains("also listed for relay \"site-a\""),
            "{message}"
        );

        combined.remove(&base_contents);
        assert_eq!((combined.device_count(), combined.relay_count()), (1, 0));
        assert_eq!(
            combined.authenticate("ra").unwrap_err(),
            AuthFailure::UnknownKey
        );
        assert!(matches!(combined.relayed("a"), Relayed::Unknown));
    }
}
