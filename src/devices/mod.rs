//! Device identity: the registry of device and site relay keys (stored as SHA-256
//! hashes), where it is loaded from, the live handle that reloads swap, and the changes
//! `lakegate keys` makes to it.
//!
//! Files read bottom-up, none importing one that imports it back: `keys.rs` and
//! `ids.rs` (what a key, a hash and an id are), `relays.rs` (device patterns),
//! `error.rs`, `document.rs` (the JSON, one serde type), `registry.rs` (a document
//! indexed by key hash), `shards.rs`, `source.rs` (where it is loaded from),
//! `live.rs` (the current one, swapped by reloads), `edit.rs` (the changes),
//! `store.rs` (where `lakegate keys` makes them) and `instructions.rs` (what
//! `keys new` and `keys new-reader` print).

mod document;
mod edit;
mod error;
mod ids;
mod instructions;
mod keys;
mod live;
mod registry;
mod relays;
mod shards;
mod source;
mod store;

#[cfg(feature = "local")]
pub(crate) use document::{DeviceEntry, RegistryDocument};
pub use edit::{Action, AdminError, KeyChange, NewEntry, Subject, listing};
pub use error::RegistryError;
pub use ids::is_valid_device_id;
pub use instructions::{new_key_instructions, new_reader_instructions};
pub(crate) use keys::{BadHash, KeyHash};
pub use keys::{KeyKind, generate_key, generate_key_of, hash_key};
pub(crate) use live::{LiveRegistry, reload_loop};
pub use registry::{AuthFailure, Device, Registry, Relayed, Sender};
pub use relays::Relay;
pub use shards::shard_key;
pub use source::KeySource;
pub use store::{RegistryStore, change_registry, secrets_from_environment};
