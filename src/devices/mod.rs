//! Device identity: the registry of device keys (stored as SHA-256 hashes),
//! where it is loaded from, and the live handle that reloads swap.

mod keys;
mod live;
mod registry;
mod source;

use std::num::NonZeroU32;
use std::sync::Arc;

pub use keys::{
    BadHash, KeyHash, NewKey, generate_key, hash_key, new_key_instructions, new_reader_instructions,
};
pub use live::{DeviceKeys, reload_loop};
pub use registry::{Registry, RegistryError, is_valid_device_id};
pub use source::KeySource;

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
