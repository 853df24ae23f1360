//! Site relays: a relay holds its own key and forwards readings for the devices its
//! patterns name, each reading naming its `device_id`. A pattern is an exact device
//! id (`pump-7`) or a prefix ending in one trailing `*` (`line-3-*`).

use std::fmt;
use std::sync::Arc;

use super::ids::{is_valid_device_id, quoted};
use super::keys::looks_like_key;

/// An authenticated relay and the devices it may speak for.
#[derive(Clone)]
pub struct Relay {
    pub id: Arc<str>,
    patterns: Arc<[DevicePattern]>,
}

impl Relay {
    pub(crate) fn new(id: Arc<str>, patterns: Vec<DevicePattern>) -> Relay {
        Relay {
            id,
            patterns: patterns.into(),
        }
    }

    /// The relay's patterns as an operator writes them (`pump-7`, `line-3-*`).
    pub fn patterns(&self) -> Vec<String> {
        self.patterns.iter().map(ToString::to_string).collect()
    }

    /// Whether one of the relay's patterns names `device_id`.
    pub fn speaks_for(&self, device_id: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| pattern.matches(device_id))
    }
}

/// Patterns are device ids and prefixes, not secrets: Debug shows them.
impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("devices", &self.patterns)
            .finish()
    }
}

/// Which devices a relay may speak for.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum DevicePattern {
    Exact(Box<str>),
    /// The part before the trailing `*`, never empty.
    Prefix(Box<str>),
}

impl DevicePattern {
    fn matches(&self, device_id: &str) -> bool {
        match self {
            DevicePattern::Exact(id) => **id == *device_id,
            DevicePattern::Prefix(prefix) => device_id.starts_with(&**prefix),
        }
    }
}

/// As an operator writes it: `pump-7`, `line-3-*`.
impl fmt::Display for DevicePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevicePattern::Exact(id) => write!(f, "{id}"),
            DevicePattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl fmt::Debug for DevicePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for DevicePattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Checked as [`parse_pattern`] checks it; a pattern that looks like a key is not echoed.
impl<'de> serde::Deserialize<'de> for DevicePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DevicePattern, D::Error> {
        struct PatternText;
        impl serde::de::Visitor<'_> for PatternText {
            type Value = DevicePattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device id, or a prefix of one ending in \"*\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DevicePattern, E> {
                parse_pattern(text).map_err(|bad| E::custom(format!("{} {bad}", quoted(text))))
            }
        }
        d.deserialize_str(PatternText)
    }
}

/// Why a string is not a device pattern; never echoes the string, which may be a
/// key pasted in the wrong place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPattern {
    LooksLikeKey,
    /// `*` alone: a relay speaks for named devices, never for the whole fleet.
    Everything,
    /// A `*` elsewhere than at the end, or more than one.
    Wildcard,
    /// Not a device id (or, before its `*`, not the start of one).
    NotAnId,
}

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadPattern::LooksLikeKey => "looks like a device key, not a device id",
            BadPattern::Everything => {
                "is \"*\" alone: name devices, or a prefix before the \"*\" (such as \"line-3-*\")"
            }
            BadPattern::Wildcard => "may hold one \"*\", only at its end (a prefix such as \"line-3-*\")",
            BadPattern::NotAnId => {
                "is not a device id (1-128 of A-Z a-z 0-9 . _ : -), nor such a prefix followed by \"*\""
            }
        })
    }
}

/// Parses one pattern: an exact device id, or a non-empty prefix of one followed by `*`.
pub(crate) fn parse_pattern(text: &str) -> Result<DevicePattern, BadPattern> {
    if looks_like_key(text) {
        return Err(BadPattern::LooksLikeKey);
    }
    match text.strip_suffix('*') {
        Some("") => Err(BadPattern::Everything),
        Some(prefix) if prefix.contains('*') => Err(BadPattern::Wildcard),
        // A prefix is the start of a device id: the same characters, and room for one more.
        Some(prefix) if is_valid_device_id(prefix) && prefix.len() < 128 => {
            Ok(DevicePattern::Prefix(prefix.into()))
        }
        Some(_) => Err(BadPattern::NotAnId),
        None if text.contains('*') => Err(BadPattern::Wildcard),
        None if is_valid_device_id(text) => Ok(DevicePattern::Exact(text.into())),
        None => Err(BadPattern::NotAnId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(patterns: &[&str]) -> Relay {
        let patterns = patterns.iter().map(|p| parse_pattern(p).unwrap()).collect();
        Relay::new("site-a".into(), patterns)
    }

    #[test]
    fn exact_ids_and_prefixes_match() {
        let site = relay(&["pump-7", "line-3-*"]);
        for allowed in ["pump-7", "line-3-a", "line-3-", "line-3-b.x:y_z"] {
            assert!(site.speaks_for(allowed), "{allowed}");
        }
        for refused in [
            "pump-70",
            "pump-",
            "Pump-7",
            "line-3",
            "line-4-a",
            "xline-3-a",
            "",
        ] {
            assert!(!site.speaks_for(refused), "{refused}");
        }
        assert!(!relay(&[]).speaks_for("pump-7"));
        assert_eq!(
            format!("{site:?}"),
            r#"Relay { id: "site-a", devices: [pump-7, line-3-*] }"#
        );
    }

    #[test]
    fn only_one_trailing_star_after_a_prefix() {
        use BadPattern::*;
        let cases = [
            ("*", Everything),
            ("**", Wildcard),
            ("line-*-a", Wildcard),
            ("*-a", Wildcard),
            ("line**", Wildcard),
            ("li*ne*", Wildcard),
            ("line 3-*", NotAnId),
            ("pump 7", NotAnId),
            ("", NotAnId),
            ("pümp-*", NotAnId),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_pattern(text), Err(expected), "{text:?}");
        }
        let longest = "x".repeat(128);
        assert_eq!(
            parse_pattern(&longest),
            Ok(DevicePattern::Exact(longest.clone().into()))
        );
        // A prefix leaves room for at least one more character of an id.
        assert_eq!(parse_pattern(&format!("{longest}*")), Err(NotAnId));
        assert!(parse_pattern(&format!("{}*", &longest[1..])).is_ok());
    }

    #[test]
    fn a_key_is_refused_without_being_echoed() {
        let new = super::super::keys::generate_key();
        let key = secrecy::ExposeSecret::expose_secret(&new.key);
        // A key's prefix alone names ids (`lgk_abcd*`); a key, or most of one, is refused.
        assert!(parse_pattern(&format!("{}*", &key[..8])).is_ok());
        for text in [
            key.to_owned(),
            format!("{key}*"),
            format!("{}*", &key[..44]),
        ] {
            let error = parse_pattern(&text).unwrap_err();
            assert_eq!(error, BadPattern::LooksLikeKey);
            assert!(!error.to_string().contains(&key[4..12]));
        }
    }
}
