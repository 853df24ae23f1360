//! Device keys: generation, hashing and the hash type the registry is indexed by.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The prefix of keys made before each kind had its own: they work as any kind.
const KEY_PREFIX: &str = "lgk_";
const HASH_PREFIX: &str = "sha256:";

/// What a key is for, as its prefix says, so that a key pasted into the wrong place is
/// refused with a message that says what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `lgd_`: a device's, in X-API-Key.
    Device,
    /// `lgr_`: a site relay's, in LAKEGATE_RELAY_KEY and then X-API-Key.
    Relay,
    /// `lgt_`: a reader token, in `Authorization: Bearer` of the read API and the page.
    Reader,
    /// `lgw_`: a client secret of local mode's workspace (DATABRICKS_CLIENT_SECRET), no key
    /// of the gateway's at all.
    LocalWorkspace,
}

impl KeyKind {
    const ALL: [KeyKind; 4] = [
        KeyKind::Device,
        KeyKind::Relay,
        KeyKind::Reader,
        KeyKind::LocalWorkspace,
    ];

    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Device => "lgd_",
            KeyKind::Relay => "lgr_",
            KeyKind::Reader => "lgt_",
            KeyKind::LocalWorkspace => "lgw_",
        }
    }

    /// The kind `key`'s prefix names; `None` for an `lgk_` key (any kind) or a foreign one.
    pub fn of(key: &str) -> Option<KeyKind> {
        let key = key.trim();
        KeyKind::ALL
            .into_iter()
            .find(|kind| key.starts_with(kind.prefix()))
    }

    /// `a device key (lgd_...)`, for messages; never the key itself.
    pub fn describe(self) -> String {
        let noun = match self {
            KeyKind::Device => "a device key",
            KeyKind::Relay => "a site relay's key",
            KeyKind::Reader => "a reader token",
            KeyKind::LocalWorkspace => "a client secret of local mode's workspace",
        };
        format!("{noun} ({}...)", self.prefix())
    }
}

/// SHA-256 of a key string. The registry (and the reader token list) holds these, never keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyHash([u8; 32]);

impl KeyHash {
    pub(crate) fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }
}

/// `sha256:<64 lowercase hex>`.
impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HASH_PREFIX}{}", hex::encode(self.0))
    }
}

/// Short: enough to tell hashes apart in a log.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HASH_PREFIX}{}…", hex::encode(&self.0[..4]))
    }
}

/// Why a registry entry is not a key hash; never echoes the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadHash {
    RawKey,
    Format,
}

impl fmt::Display for BadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadHash::RawKey => {
                "is a key, not its hash: the registry holds \"sha256:<hex>\" (see `lakegate keys new`)"
            }
            BadHash::Format => "is not \"sha256:<64 lowercase hex digits>\"",
        })
    }
}

impl FromStr for KeyHash {
    type Err = BadHash;

    fn from_str(s: &str) -> Result<KeyHash, BadHash> {
        if looks_like_key(s) {
            return Err(BadHash::RawKey);
        }
        let digits = s.strip_prefix(HASH_PREFIX).ok_or(BadHash::Format)?;
        // hex::decode also takes upper case; the registry format is lower case only.
        if !digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(BadHash::Format);
        }
        let mut bytes = [0; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| BadHash::Format)?;
        Ok(KeyHash(bytes))
    }
}

/// As the registry document holds it: `"sha256:<hex>"`.
impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Refuses a key where its hash belongs without echoing either (see [`BadHash`]).
impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<KeyHash, D::Error> {
        struct HashText;
        impl serde::de::Visitor<'_> for HashText {
            type Value = KeyHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key hash \"sha256:<hex>\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<KeyHash, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(HashText)
    }
}

/// The prefixes a key may carry: any kind's, and the kindless `lgk_`.
fn key_prefixes() -> impl Iterator<Item = &'static str> {
    std::iter::once(KEY_PREFIX).chain(KeyKind::ALL.iter().map(|kind| kind.prefix()))
}

/// Whether a registry string may hold a key, so must not be accepted or echoed: a key's
/// prefix followed by at least [`KEY_LIKE_TAIL`] key characters. A prefix alone is no key
/// (`site3-lgw_01` and `lgw_0016c001f11d0d3a` are ids fleets use).
pub(super) fn looks_like_key(s: &str) -> bool {
    key_prefixes().any(|prefix| {
        s.match_indices(prefix).any(|(at, _)| {
            let tail = &s[at + prefix.len()..];
            tail.chars().take_while(|&c| is_key_char(c)).count() >= KEY_LIKE_TAIL
        })
    })
}

/// A key's 32 random bytes are 43 characters of base64url; a few may have been cut off.
const KEY_LIKE_TAIL: usize = 40;

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `text` with whatever follows a key's prefix cut out: for messages that quote input
/// (serde's do), which may be a key pasted in the wrong place.
pub(super) fn redact_keys(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = key_prefixes()
        .filter_map(|prefix| rest.find(prefix).map(|at| (at, prefix)))
        .min()
    {
        redacted.push_str(&rest[..at]);
        redacted.push_str(&prefix[..3]);
        redacted.push_str("…(a key, not shown)");
        let after = &rest[at + prefix.len()..];
        let key_len = after.find(|c: char| !is_key_char(c)).unwrap_or(after.len());
        rest = &after[key_len..];
    }
    redacted.push_str(rest);
    redacted
}

/// A freshly generated key and the hash to put in the registry.
pub struct NewKey {
    pub key: SecretString,
    pub hash: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &"[REDACTED]")
            .field("hash", &KeyHash::of(self.key.expose_secret()))
            .finish()
    }
}

/// `lgk_` + base64url (no padding) of 32 bytes from the thread-local CSPRNG: a key of
/// no particular kind (local mode's throwaway secrets, tests).
pub fn generate_key() -> NewKey {
    generate_with(KEY_PREFIX)
}

/// A new key of `kind`: its prefix + base64url (no padding) of 32 random bytes.
pub fn generate_key_of(kind: KeyKind) -> NewKey {
    generate_with(kind.prefix())
}

fn generate_with(prefix: &str) -> NewKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    bytes.zeroize();
    let hash = hash_key(&key);
    NewKey {
        key: SecretString::from(key),
        hash,
    }
}

/// `sha256:<64 lowercase hex>` of the key string.
pub fn hash_key(key: &str) -> String {
    KeyHash::of(key).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_prefixed_lowercase_sha256_hex() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let parsed: KeyHash = hash_key("abc").parse().unwrap();
        assert_eq!(parsed, KeyHash::of("abc"));
        assert_eq!(format!("{parsed:?}"), "sha256:ba7816bf…");
    }

    #[test]
    fn malformed_hashes_are_rejected() {
        let upper = hash_key("abc").to_uppercase().replace("SHA256", "sha256");
        for bad in ["", "sha256:", "sha256:abc", &upper, &hash_key("abc")[7..]] {
            assert_eq!(bad.parse::<KeyHash>(), Err(BadHash::Format), "{bad}");
        }
        let key = generate_key();
        assert_eq!(
            key.key.expose_secret().parse::<KeyHash>(),
            Err(BadHash::RawKey)
        );
    }

    #[test]
    fn generated_key_has_documented_format() {
        let new = generate_key();
        let key = new.key.expose_secret();
        let encoded = key.strip_prefix("lgk_").unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(encoded).unwrap().len(), 32);
        assert_eq!(new.hash, hash_key(key));
        assert_ne!(key, generate_key().key.expose_secret());
        assert_eq!(KeyKind::of(key), None, "an lgk_ key is any kind");
        for kind in KeyKind::ALL {
            let new = generate_key_of(kind);
            let key = new.key.expose_secret();
            assert_eq!(KeyKind::of(key), Some(kind));
            assert_eq!(key.parse::<KeyHash>(), Err(BadHash::RawKey));
            assert!(!kind.describe().contains(&key[4..]));
        }
    }

    #[test]
    fn redaction_cuts_every_key_out_of_a_message() {
        let device = generate_key_of(KeyKind::Device);
        let any = generate_key();
        let (device, any) = (device.key.expose_secret(), any.key.expose_secret());
        let message = format!("unknown field `{device}`, then string \"x{any}\" and lgd");
        let redacted = redact_keys(&message);
        assert_eq!(
            redacted,
            "unknown field `lgd…(a key, not shown)`, then string \"xlgk…(a key, not shown)\" and lgd"
        );
        assert!(!looks_like_key(&redacted));
        assert_eq!(redact_keys("no key here"), "no key here");
    }

    #[test]
    fn a_prefix_alone_is_no_key_but_a_key_anywhere_is() {
        for id in [
            "site3-lgw_01",
            "lgw_0016c001f11d0d3a",
            "pump-lgd_7",
            "lgk_",
            "x_lgt_y",
        ] {
            assert!(!looks_like_key(id), "{id}");
        }
        for kind in KeyKind::ALL {
            let new = generate_key_of(kind);
            let key = new.key.expose_secret();
            assert!(looks_like_key(key), "{kind:?}");
            assert!(looks_like_key(&format!("pump-{key}")), "{kind:?}");
            // A few characters cut off are still a key.
            assert!(looks_like_key(&key[..key.len() - 3]), "{kind:?}");
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let new = generate_key();
        assert!(!format!("{new:?}").contains(new.key.expose_secret()));
    }
}
