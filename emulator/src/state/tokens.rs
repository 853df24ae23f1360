//! Credentials the emulator accepts and the OAuth tokens it has issued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::clock::far_future;

pub struct TokenStore {
    principals: HashMap<String, String>,
    personal_tokens: Vec<String>,
    issued: Mutex<HashMap<String, Instant>>,
    lifetime_millis: AtomicU64,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("principals", &self.principals.keys())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    pub fn new(
        principals: &[(String, String)],
        personal_tokens: &[String],
        lifetime: Duration,
    ) -> Self {
        Self {
            principals: principals.iter().cloned().collect(),
            personal_tokens: personal_tokens.to_vec(),
            issued: Mutex::new(HashMap::new()),
            lifetime_millis: AtomicU64::new(millis(lifetime)),
        }
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lifetime_millis
            .store(millis(lifetime), Ordering::Relaxed);
    }

    fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_millis.load(Ordering::Relaxed))
    }

    pub fn authenticate_client(&self, client_id: &str, client_secret: &str) -> bool {
        self.principals
            .get(client_id)
            .is_some_and(|secret| secret == client_secret)
    }

    pub fn issue(&self) -> (String, Duration) {
        let token = format!("emu{}", uuid::Uuid::new_v4().simple());
        let lifetime = self.lifetime();
        let now = Instant::now();
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued.retain(|_, expires| *expires > now);
        let expires = now.checked_add(lifetime).unwrap_or_else(far_future);
        issued.insert(token.clone(), expires);
        (token, lifetime)
    }

    pub fn check(&self, token: &str) -> bool {
        if self.personal_tokens.iter().any(|t| t == token) {
            return true;
        }
        let issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
