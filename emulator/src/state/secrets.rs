//! Secret scopes and their secrets, in memory only.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Scopes by name, each with its secrets by key.
pub(super) type Scopes = BTreeMap<String, BTreeMap<String, Secret>>;

#[derive(Default)]
pub(crate) struct SecretStore {
    scopes: Mutex<Scopes>,
}

pub(crate) struct Secret {
    pub value: Vec<u8>,
    pub last_updated_ms: i64,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStore { .. }")
    }
}

impl SecretStore {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Scopes> {
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
