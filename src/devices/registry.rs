//! The device registry: which key hashes belong to which device, and its quotas.
//!
//! Parsed by hand from a `serde_json::Value` rather than with derived
//! deserializers, because serde's messages quote the offending value and an
//! operator may have pasted a key where a hash belongs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::keys::{KeyHash, looks_like_key};

/// An authenticated device. Quotas of `None` use the gateway defaults.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: Arc<str>,
    pub rate_per_sec: Option<NonZeroU32>,
    pub burst: Option<NonZeroU32>,
}

/// A missing key and a wrong key are the same failure, so callers cannot tell them apart.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownKey,
    Disabled { device_id: Arc<str> },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Syntax only: serde_json's syntax messages give a position, never content.
    #[error("device registry is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("device registry: {0}")]
    Invalid(String),
    #[error("device registry, device {device}: {problem}")]
    Device { device: String, problem: String },
    #[error("cannot read device registry file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read device registry secret {scope}/{key}: {source}")]
    Secret {
        scope: String,
        key: String,
        source: Box<crate::databricks::Error>,
    },
    #[error("device registry secret reference {0:?} is not \"<scope>/<key>\"")]
    SecretRef(String),
}

/// The parsed registry, indexed by key hash.
#[derive(Clone)]
pub struct Registry {
    by_hash: HashMap<KeyHash, Registered>,
    devices: HashSet<Arc<str>>,
}

#[derive(Clone)]
struct Registered {
    device: Device,
    disabled: bool,
}

impl Registry {
    pub fn parse(json: &[u8]) -> Result<Registry, RegistryError> {
        let Value::Object(mut root) = serde_json::from_slice(json)? else {
            return Err(invalid("must be an object {\"devices\": {...}}"));
        };
        let devices = root
            .remove("devices")
            .ok_or_else(|| invalid("missing \"devices\""))?;
        if let Some(field) = root.keys().next() {
            return Err(invalid(&format!("unknown field {}", quoted(field))));
        }
        let Value::Object(devices) = devices else {
            return Err(invalid(
                "\"devices\" must be an object of device id to entry",
            ));
        };

        let mut registry = Registry {
            by_hash: HashMap::with_capacity(devices.len()),
            devices: HashSet::with_capacity(devices.len()),
        };
        for (id, entry) in devices {
            let id: Arc<str> = id.into();
            let fail = |problem: String| RegistryError::Device {
                device: quoted(&id),
                problem,
            };
            if !is_valid_device_id(&id) {
                return Err(fail(
                    "invalid id: use 1 to 128 characters of A-Z a-z 0-9 . _ : - (not a key)".into(),
                ));
            }
            let Value::Object(entry) = entry else {
                return Err(fail("entry must be an object".into()));
            };
            let entry = parse_entry(entry).map_err(fail)?;
            registry.devices.insert(id.clone());
            let device = Device {
                id: id.clone(),
                rate_per_sec: entry.rate_per_sec,
                burst: entry.burst,
            };
            for hash in entry.keys {
                let registered = Registered {
                    device: device.clone(),
                    disabled: entry.disabled,
                };
                if let Some(other) = registry.by_hash.insert(hash, registered) {
                    return Err(fail(format!(
                        "key {hash:?} is also listed for device {:?}",
                        other.device.id
                    )));
                }
            }
        }
        Ok(registry)
    }

    /// Hashes the presented key and looks the hash up. Comparing hashes keeps
    /// lookup timing independent of how much of a real key was guessed.
    pub fn authenticate(&self, presented_key: &str) -> Result<Device, AuthFailure> {
        match self.by_hash.get(&KeyHash::of(presented_key)) {
            None => Err(AuthFailure::UnknownKey),
            Some(Registered {
                device,
                disabled: true,
            }) => Err(AuthFailure::Disabled {
                device_id: device.id.clone(),
            }),
            Some(Registered { device, .. }) => Ok(device.clone()),
        }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// An empty registry, to absorb parts into.
    pub(crate) fn empty() -> Registry {
        Registry {
            by_hash: HashMap::new(),
            devices: HashSet::new(),
        }
    }

    /// The key hashes and device ids of this registry, to take them out again later.
    pub(crate) fn contents(&self) -> (Vec<KeyHash>, Vec<Arc<str>>) {
        (
            self.by_hash.keys().copied().collect(),
            self.devices.iter().cloned().collect(),
        )
    }

    /// Takes in the entries of `part` (a shard of a large fleet): a device or a key may
    /// be in one part only.
    pub(crate) fn absorb(&mut self, part: Registry) -> Result<(), RegistryError> {
        self.by_hash.reserve(part.by_hash.len());
        self.devices.reserve(part.devices.len());
        for id in part.devices {
            if !self.devices.insert(id.clone()) {
                return Err(RegistryError::Device {
                    device: quoted(&id),
                    problem: "is listed in two parts of the registry".into(),
                });
            }
        }
        for (hash, registered) in part.by_hash {
            let device = registered.device.id.clone();
            if let Some(other) = self.by_hash.insert(hash, registered) {
                return Err(RegistryError::Device {
                    device: quoted(&device),
                    problem: format!(
                        "key {hash:?} is also listed for device {:?}",
                        other.device.id
                    ),
                });
            }
        }
        Ok(())
    }

    /// Takes out what [`Registry::contents`] listed of a part.
    pub(crate) fn remove(&mut self, keys: &[KeyHash], devices: &[Arc<str>]) {
        for hash in keys {
            self.by_hash.remove(hash);
        }
        for id in devices {
            self.devices.remove(id);
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.devices.len())
            .field("keys", &self.by_hash.len())
            .finish()
    }
}

/// 1..=128 characters of `[A-Za-z0-9._:-]`. Ids end up in logs and tables,
/// so one that contains a key (`lgk_`) is refused.
pub fn is_valid_device_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !looks_like_key(id)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

struct Entry {
    keys: Vec<KeyHash>,
    disabled: bool,
    rate_per_sec: Option<NonZeroU32>,
    burst: Option<NonZeroU32>,
}

fn parse_entry(mut fields: Map<String, Value>) -> Result<Entry, String> {
    let Some(Value::Array(keys)) = fields.remove("keys") else {
        return Err("\"keys\" must be an array of \"sha256:<hex>\" strings".into());
    };
    let keys = keys
        .iter()
        .enumerate()
        .map(|(index, key)| match key {
            Value::String(key) => key.parse().map_err(|bad| format!("key #{index} {bad}")),
            _ => Err(format!("key #{index} is not a string")),
        })
        .collect::<Result<_, _>>()?;
    let disabled = match fields.remove("disabled") {
        None => false,
        Some(Value::Bool(disabled)) => disabled,
        Some(_) => return Err("\"disabled\" must be true or false".into()),
    };
    let rate_per_sec = positive(&mut fields, "rate_per_sec")?;
    let burst = positive(&mut fields, "burst")?;
    if let Some(field) = fields.keys().next() {
        return Err(format!("unknown field {}", quoted(field)));
    }
    Ok(Entry {
        keys,
        disabled,
        rate_per_sec,
        burst,
    })
}

fn positive(fields: &mut Map<String, Value>, name: &str) -> Result<Option<NonZeroU32>, String> {
    fields
        .remove(name)
        .map(|value| {
            value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("{name:?} must be an integer from 1 to {}", u32::MAX))
        })
        .transpose()
}

fn invalid(problem: &str) -> RegistryError {
    RegistryError::Invalid(problem.to_owned())
}

/// Quotes a name from the registry for an error message, unless it looks like
/// a key pasted in the wrong place.
fn quoted(name: &str) -> String {
    if looks_like_key(name) {
        "(a name that looks like a device key)".to_owned()
    } else {
        format!("{name:?}")
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
        let a = registry.authenticate("ka").unwrap();
        assert_eq!((&*a.id, a.rate_per_sec, a.burst), ("a", None, None));
        assert_eq!(format!("{registry:?}"), "Registry { devices: 2, keys: 1 }");
    }

    #[test]
    fn rejects_bad_json_and_shapes() {
        assert!(error("{").starts_with("device registry is not valid JSON: EOF"));
        assert!(error("[]").contains("must be an object"));
        assert!(error("{}").contains("missing \"devices\""));
        assert!(error(r#"{"devices": {}, "extra": 1}"#).contains("unknown field \"extra\""));
        assert!(error(r#"{"devices": []}"#).contains("\"devices\" must be an object"));
    }

    #[test]
    fn errors_name_the_device_and_the_problem() {
        let hash = hash_key("k");
        let cases = [
            (
                r#""a": {"keys": ["sha256:00"]}"#.to_owned(),
                "device \"a\": key #0 is not",
            ),
            (
                format!(r#""a": {{"keys": ["{hash}", 7]}}"#),
                "device \"a\": key #1 is not a string",
            ),
            (
                r#""a": {}"#.to_owned(),
                "device \"a\": \"keys\" must be an array",
            ),
            (
                r#""a": {"keys": [], "color": 1}"#.to_owned(),
                "device \"a\": unknown field \"color\"",
            ),
            (
                r#""a": {"keys": [], "burst": 0}"#.to_owned(),
                "device \"a\": \"burst\" must be an integer",
            ),
            (
                r#""a": {"keys": [], "disabled": 1}"#.to_owned(),
                "device \"a\": \"disabled\" must be",
            ),
            (
                r#""a": 1"#.to_owned(),
                "device \"a\": entry must be an object",
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
        let new = generate_key();
        let key = secrecy::ExposeSecret::expose_secret(&new.key);
        for json in [
            format!(r#"{{"devices": {{"a": {{"keys": ["{key}"]}}}}}}"#),
            format!(r#"{{"devices": {{"{key}": {{"keys": []}}}}}}"#),
            format!(r#"{{"devices": {{"a": {{"keys": [], "{key}": 1}}}}}}"#),
            format!(r#"{{"devices": "{key}"}}"#),
            format!(r#""{key}""#),
            key.to_owned(),
        ] {
            let message = error(&json);
            assert!(!message.contains(&key[4..12]), "{message}");
        }
        assert!(
            error(&format!(r#"{{"devices": {{"a": {{"keys": ["{key}"]}}}}}}"#))
                .contains("is a key, not its hash")
        );
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
            let device = registry.authenticate(key).unwrap();
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
        assert_eq!(&*registry.authenticate(key).unwrap().id, "d");
    }
}
