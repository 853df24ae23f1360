//! The registry document: the JSON that operators, `lakegate keys` and local mode
//! write, and that the gateway and the relay read. One serde type for all of them:
//!
//! ```json
//! {"devices": {"pump-7": {"keys": ["sha256:…"], "disabled": true, "rate_per_sec": 5, "burst": 10}},
//!  "relays": {"site-a": {"keys": ["sha256:…"], "devices": ["pump-7", "line-3-*"]}}}
//! ```
//!
//! `"relays"`, `"disabled"` and the limits are optional; any other field is refused.
//! serde's messages quote what they did not expect, and an operator may have pasted a
//! key where a hash belongs: every message is passed through [`redact_keys`] and every
//! id through [`quoted`], and a key where a hash belongs is refused by [`KeyHash`]'s
//! own parser, which never echoes.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use super::ids::{is_valid_device_id, quoted};
use super::keys::{KeyHash, redact_keys};
use super::relays::DevicePattern;

/// A whole registry, or one shard of a sharded one (see `shards.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object {\"devices\": {...}}")]
pub struct RegistryDocument {
    #[serde(deserialize_with = "device_entries")]
    pub(crate) devices: BTreeMap<String, DeviceEntry>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "relay_entries"
    )]
    pub(crate) relays: BTreeMap<String, RelayEntry>,
}

/// A device's keys (two while rotating), whether it is refused, its own limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an entry object")]
pub(crate) struct DeviceEntry {
    #[serde(deserialize_with = "key_hashes")]
    pub(crate) keys: Vec<KeyHash>,
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "disabled"
    )]
    pub(crate) disabled: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rate_per_sec"
    )]
    pub(crate) rate_per_sec: Option<NonZeroU32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "burst"
    )]
    pub(crate) burst: Option<NonZeroU32>,
}

/// A site relay's keys, the devices it may speak for, whether it is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an entry object")]
pub(crate) struct RelayEntry {
    #[serde(deserialize_with = "key_hashes")]
    pub(crate) keys: Vec<KeyHash>,
    #[serde(deserialize_with = "device_patterns")]
    pub(crate) devices: Vec<DevicePattern>,
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "disabled"
    )]
    pub(crate) disabled: bool,
}

impl RegistryDocument {
    pub fn parse(json: &[u8]) -> Result<RegistryDocument, RegistryError> {
        // In two steps, so that a syntax error (a position, never content) is told apart.
        let value: serde_json::Value = serde_json::from_slice(json)?;
        RegistryDocument::deserialize(value)
            .map_err(|err| RegistryError::Invalid(redact_keys(&err.to_string())))
    }

    /// Compact, as a secret holds it.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a registry document serializes")
    }

    /// Indented, as a file an operator may read holds it.
    pub(crate) fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a registry document serializes")
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The entries of one section, each checked with its id named in the message.
struct Entries<E> {
    noun: &'static str,
    entry: PhantomData<E>,
}

impl<'de, E: DeserializeOwned> Visitor<'de> for Entries<E> {
    type Value = BTreeMap<String, E>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object of {} id to entry", self.noun)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some(id) = map.next_key::<String>()? {
            let fail = |problem: &dyn fmt::Display| {
                de::Error::custom(format!("{} {}: {problem}", self.noun, quoted(&id)))
            };
            if !is_valid_device_id(&id) {
                return Err(fail(
                    &"invalid id: use 1 to 128 characters of A-Z a-z 0-9 . _ : - (not a key)",
                ));
            }
            let entry = map.next_value::<E>().map_err(|err| fail(&err))?;
            entries.insert(id, entry);
        }
        Ok(entries)
    }
}

fn device_entries<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, DeviceEntry>, D::Error> {
    d.deserialize_map(Entries {
        noun: "device",
        entry: PhantomData,
    })
}

fn relay_entries<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, RelayEntry>, D::Error> {
    d.deserialize_map(Entries {
        noun: "relay",
        entry: PhantomData,
    })
}

/// A list whose items are named by their place in messages: `key #1: ...`.
struct Indexed<T> {
    noun: &'static str,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Indexed<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}s", self.noun)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        loop {
            let index = items.len();
            let item = seq
                .next_element::<T>()
                .map_err(|err| de::Error::custom(format!("{} #{index}: {err}", self.noun)))?;
            match item {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
    }
}

fn key_hashes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeyHash>, D::Error> {
    d.deserialize_seq(Indexed {
        noun: "key",
        item: PhantomData,
    })
}

fn device_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DevicePattern>, D::Error> {
    d.deserialize_seq(Indexed {
        noun: "device pattern",
        item: PhantomData,
    })
}

/// Deserializes a field, naming it in the message (serde's own names only the type).
fn named<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, name: &str) -> Result<T, D::Error> {
    T::deserialize(d).map_err(|err| de::Error::custom(format!("{name:?}: {err}")))
}

fn disabled<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    named(d, "disabled")
}

fn rate_per_sec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroU32>, D::Error> {
    named(d, "rate_per_sec")
}

fn burst<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroU32>, D::Error> {
    named(d, "burst")
}
