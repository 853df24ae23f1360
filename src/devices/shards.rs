//! A registry larger than one Databricks secret. A secret holds at most 128 KB, about
//! 650 device entries with room for each to rotate and be disabled, and a scope at
//! most 1,000 secrets. A registry named
//! `scope/key` is the secret `key` (the base, where a small fleet lives whole) plus up
//! to [`SHARD_COUNT`] shards `key.000` ... `key.255`. A device lives in the base, or
//! in the one shard its id hashes to, so finding it takes two reads however large
//! the fleet, and 256 shards of 120 KB hold about 160,000 devices.

use sha2::{Digest, Sha256};

/// How many shards a registry may spread over.
pub(crate) const SHARD_COUNT: u16 = 256;

/// Most bytes a shard is planned to hold, below Databricks' 128 KB per secret: a device
/// is added to a shard only while every entry in it could still grow to two keys and
/// disabled within this budget (see `store.rs`).
pub(crate) const SHARD_BUDGET: usize = 120_000;

/// Databricks' limit on one secret's value: the most a change to an entry already in a
/// shard may write.
pub(crate) const SECRET_LIMIT: usize = 128 * 1024;

/// The secret key of the shard that `device_id` belongs in.
pub fn shard_key(base: &str, device_id: &str) -> String {
    let digest = Sha256::digest(device_id.as_bytes());
    let shard = u16::from_be_bytes([digest[0], digest[1]]) % SHARD_COUNT;
    format!("{base}.{shard:03}")
}

/// Whether the secret `key` is a shard of the registry at `base`: the base itself (the
/// first shard) or one of its numbered shards.
pub(crate) fn is_shard(base: &str, key: &str) -> bool {
    match key.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|n| n.len() == 3 && n.parse::<u16>().is_ok_and(|n| n < SHARD_COUNT)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(
            shard_key("devices", "pump-7"),
            shard_key("devices", "pump-7")
        );
        let mut used = std::collections::HashSet::new();
        for n in 0..10_000 {
            let key = shard_key("devices", &format!("pump-{n}"));
            assert!(is_shard("devices", &key), "{key}");
            used.insert(key);
        }
        assert_eq!(used.len(), usize::from(SHARD_COUNT));
    }

    #[test]
    fn only_the_base_and_its_shards_are_parts() {
        assert!(is_shard("devices", "devices"));
        assert!(is_shard("devices", "devices.000"));
        assert!(is_shard("devices", "devices.255"));
        for other in [
            "devices.256",
            "devices.1",
            "devices.0001",
            "devices-old",
            "other",
            "devices.abc",
        ] {
            assert!(!is_shard("devices", other), "{other}");
        }
    }
}
