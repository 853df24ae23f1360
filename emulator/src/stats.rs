//! Request counters, readable by tests through [`crate::Emulator::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the emulator's counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Calls to the token endpoint (all, including failed ones).
    pub token_requests: u64,
    pub tokens_issued: u64,
    /// Calls under `/api/`.
    pub api_requests: u64,
    /// 429s answered by fault injection.
    pub throttled: u64,
    /// 503s answered by fault injection.
    pub unavailable: u64,
    /// Statements accepted by `POST /api/2.0/sql/statements`.
    pub statements: u64,
    /// `POST .../cancel` calls.
    pub cancels: u64,
    /// External link downloads served.
    pub link_downloads: u64,
    /// Statement answers lost by fault injection (the statement itself ran).
    pub lost_responses: u64,
}

#[derive(Default)]
pub struct Counters {
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub api_requests: AtomicU64,
    pub throttled: AtomicU64,
    pub unavailable: AtomicU64,
    pub statements: AtomicU64,
    pub cancels: AtomicU64,
    pub link_downloads: AtomicU64,
    pub lost_responses: AtomicU64,
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            token_requests: get(&self.token_requests),
            tokens_issued: get(&self.tokens_issued),
            api_requests: get(&self.api_requests),
            throttled: get(&self.throttled),
            unavailable: get(&self.unavailable),
            statements: get(&self.statements),
            cancels: get(&self.cancels),
            link_downloads: get(&self.link_downloads),
            lost_responses: get(&self.lost_responses),
        }
    }
}
