//! What a device or relay id may be, and how a name from the registry is shown in a
//! message: the rules the registry, the relays' patterns and the keys CLI share.

use super::keys::looks_like_key;

/// 1..=128 characters of `[A-Za-z0-9._:-]`. Ids end up in logs and tables,
/// so one that contains a key (`lgk_`) is refused. Relay ids follow the same rules.
pub fn is_valid_device_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !looks_like_key(id)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Quotes a name from the registry for an error message, unless it looks like
/// a key pasted in the wrong place.
pub(crate) fn quoted(name: &str) -> String {
    if looks_like_key(name) {
        "(a name that looks like a device key)".to_owned()
    } else {
        format!("{name:?}")
    }
}
