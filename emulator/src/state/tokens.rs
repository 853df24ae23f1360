//! Credentials the emulator accepts and the tokens it has issued, each with its owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::clock::far_future;
use crate::identity::TokenOwner;

pub(crate) struct TokenStore {
    principals: HashMap<String, String>,
    personal_tokens: Vec<String>,
    issued: Mutex<Issued>,
    lifetime_millis: AtomicU64,
}

#[derive(Default)]
struct Issued {
    grants: HashMap<String, Grant>,
    /// Tokens handed on for a presented one (see [`TokenStore::delegate`]), by the
    /// presented token.
    delegated: HashMap<String, String>,
}

/// What an accepted token stands for.
#[derive(Clone)]
pub(crate) struct Grant {
    pub owner: TokenOwner,
    /// `None` for personal access tokens, which never expire.
    pub expires: Option<Instant>,
    /// For a token requested for Zerobus (table-scoped), the one table (`catalog.schema.table`)
    /// it may write there; `None` for every other token.
    pub zerobus_table: Option<String>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("principals", &self.principals.keys())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    pub(crate) fn new(
        principals: &[(String, String)],
        personal_tokens: &[String],
        lifetime: Duration,
    ) -> Self {
        Self {
            principals: principals.iter().cloned().collect(),
            personal_tokens: personal_tokens.to_vec(),
            issued: Mutex::new(Issued::default()),
            lifetime_millis: AtomicU64::new(millis(lifetime)),
        }
    }

    pub(crate) fn set_lifetime(&self, lifetime: Duration) {
        self.lifetime_millis
            .store(millis(lifetime), Ordering::Relaxed);
    }

    fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_millis.load(Ordering::Relaxed))
    }

    pub(crate) fn authenticate_client(&self, client_id: &str, client_secret: &str) -> bool {
        self.principals
            .get(client_id)
            .is_some_and(|secret| secret == client_secret)
    }

    /// A new OAuth token for `owner` with the current lifetime.
    pub(crate) fn issue(&self, owner: TokenOwner) -> (String, Duration) {
        self.issue_scoped(owner, None)
    }

    /// A new OAuth token for `owner`, for Zerobus writes into `zerobus_table` when given.
    pub(crate) fn issue_scoped(
        &self,
        owner: TokenOwner,
        zerobus_table: Option<String>,
    ) -> (String, Duration) {
        let lifetime = self.lifetime();
        let expires = Instant::now()
            .checked_add(lifetime)
            .unwrap_or_else(far_future);
        let token = self.lock().insert(owner, expires, zerobus_table);
        (token, lifetime)
    }

    /// What `token` stands for, if it is a configured PAT or an issued token that has
    /// not expired.
    pub(crate) fn lookup(&self, token: &str) -> Option<Grant> {
        if self.personal_tokens.iter().any(|t| t == token) {
            return Some(Grant {
                owner: TokenOwner::PersonalAccessToken,
                expires: None,
                zerobus_table: None,
            });
        }
        self.lock().live(token).cloned()
    }

    /// A token of the same owner as the live OAuth token `presented`, expiring with it,
    /// and the same one for every call with `presented`: what a proxy hands on to the
    /// app it fronts, instead of the caller's own token.
    pub(crate) fn delegate(&self, presented: &str) -> Option<String> {
        let mut issued = self.lock();
        let grant = issued.live(presented)?.clone();
        if let Some(delegated) = issued.delegated.get(presented)
            && issued.live(delegated).is_some()
        {
            return Some(delegated.clone());
        }
        let expires = grant.expires.unwrap_or_else(far_future);
        let delegated = issued.insert(grant.owner, expires, grant.zerobus_table);
        issued
            .delegated
            .insert(presented.to_owned(), delegated.clone());
        Some(delegated)
    }

    fn lock(&self) -> MutexGuard<'_, Issued> {
        self.issued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Issued {
    /// Stores a fresh token, forgetting expired ones first.
    fn insert(
        &mut self,
        owner: TokenOwner,
        expires: Instant,
        zerobus_table: Option<String>,
    ) -> String {
        let now = Instant::now();
        self.grants
            .retain(|_, grant| grant.expires.is_none_or(|at| at > now));
        let grants = &self.grants;
        self.delegated
            .retain(|presented, _| grants.contains_key(presented));
        let token = format!("emu{}", uuid::Uuid::new_v4().simple());
        let expires = Some(expires);
        self.grants.insert(
            token.clone(),
            Grant {
                owner,
                expires,
                zerobus_table,
            },
        );
        token
    }

    fn live(&self, token: &str) -> Option<&Grant> {
        self.grants
            .get(token)
            .filter(|grant| grant.expires.is_none_or(|at| Instant::now() < at))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
