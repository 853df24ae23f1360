//! Device identity: the registry of device and site relay keys (stored as SHA-256
//! hashes), where it is loaded from, and the live handle that reloads swap.

mod admin;
mod keys;
mod live;
mod registry;
mod relays;
mod shards;
mod source;

pub use admin::{
    AdminError, EntryKind, KeyChange, RegistryStore, Subject, apply, change_registry, listing,
    secrets_from_environment,
};
pub(crate) use keys::{BadHash, KeyHash};
pub use keys::{
    KeyKind, NewKey, generate_key, generate_key_of, hash_key, new_key_instructions,
    new_reader_instructions,
};
pub(crate) use live::{DeviceKeys, reload_loop};
pub use registry::{
    AuthFailure, Device, Registry, RegistryError, Relayed, Sender, is_valid_device_id,
};
pub use relays::{BadPattern, Relay, check_pattern};
pub use shards::shard_key;
pub use source::KeySource;
