//! Request counters, readable by tests through [`crate::Emulator::stats`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::identity::TokenOwner;

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
    /// Those statements by the owner of the token they were submitted with; see
    /// [`Stats::statements_by`].
    pub statements_by_owner: HashMap<TokenOwner, u64>,
    /// `POST .../cancel` calls.
    pub cancels: u64,
    /// External link downloads served.
    pub link_downloads: u64,
    /// Statement answers lost by fault injection (the statement itself ran).
    pub lost_responses: u64,
    /// Writes that committed rows or DDL (INSERT, MERGE, CREATE, ...).
    pub commits: u64,
    /// Writes that failed with `DELTA_CONCURRENT_APPEND` (see `WriteConflicts`).
    pub write_conflicts: u64,
    /// Writes failed by the `failing_writes` fault.
    pub failed_writes: u64,
    /// Zerobus streams created (their `create_stream` accepted).
    pub zerobus_streams: u64,
    /// Zerobus records written into tables (a re-sent record counts again).
    pub zerobus_records: u64,
    /// Zerobus stream creations and record messages refused RESOURCE_EXHAUSTED by the
    /// throttling fault.
    pub zerobus_throttled: u64,
    /// Zerobus record messages written whose acknowledgement the `lost_acks` fault dropped.
    pub zerobus_lost_acks: u64,
    /// Zerobus streams the server ended with error 6002 (the `stream_lifetime` fault).
    pub zerobus_timeouts: u64,
    /// The latest `/api/` calls (at most [`REQUEST_LOG_LEN`]), in the order they were
    /// answered, each with the time it arrived: to see when callers sent what.
    pub requests: Vec<LoggedRequest>,
}

/// How many `/api/` calls [`Stats::requests`] keeps.
pub(crate) const REQUEST_LOG_LEN: usize = 10_000;

/// One `/api/` call as the emulator saw it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// When it arrived, before any fault or handler.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl LoggedRequest {
    /// A statement submission (`POST /api/2.0/sql/statements`), answered or refused.
    pub fn is_statement_submission(&self) -> bool {
        self.method == "POST" && self.path.trim_end_matches('/') == "/api/2.0/sql/statements"
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub token_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub api_requests: AtomicU64,
    pub throttled: AtomicU64,
    pub unavailable: AtomicU64,
    pub statements: AtomicU64,
    statements_by_owner: Mutex<HashMap<TokenOwner, u64>>,
    pub cancels: AtomicU64,
    pub link_downloads: AtomicU64,
    pub lost_responses: AtomicU64,
    pub commits: AtomicU64,
    pub write_conflicts: AtomicU64,
    pub failed_writes: AtomicU64,
    pub zerobus_streams: AtomicU64,
    pub zerobus_records: AtomicU64,
    pub zerobus_throttled: AtomicU64,
    pub zerobus_lost_acks: AtomicU64,
    pub zerobus_timeouts: AtomicU64,
    requests: Mutex<VecDeque<LoggedRequest>>,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Statements submitted with a token of `owner`: whose credentials a caller's
    /// queries ran with.
    pub fn statements_by(&self, owner: &TokenOwner) -> u64 {
        self.statements_by_owner.get(owner).copied().unwrap_or(0)
    }
}

impl Counters {
    /// Counts an accepted statement, in total and for the owner of its token.
    pub(crate) fn statement_by(&self, owner: &TokenOwner) {
        bump(&self.statements);
        let mut by_owner = self
            .statements_by_owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *by_owner.entry(owner.clone()).or_default() += 1;
    }

    /// Logs an answered `/api/` call, forgetting the oldest beyond [`REQUEST_LOG_LEN`].
    pub(crate) fn log_request(&self, request: LoggedRequest) {
        let mut log = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == REQUEST_LOG_LEN {
            log.pop_front();
        }
        log.push_back(request);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            token_requests: get(&self.token_requests),
            tokens_issued: get(&self.tokens_issued),
            api_requests: get(&self.api_requests),
            throttled: get(&self.throttled),
            unavailable: get(&self.unavailable),
            statements: get(&self.statements),
            statements_by_owner: self
                .statements_by_owner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            cancels: get(&self.cancels),
            link_downloads: get(&self.link_downloads),
            lost_responses: get(&self.lost_responses),
            commits: get(&self.commits),
            write_conflicts: get(&self.write_conflicts),
            failed_writes: get(&self.failed_writes),
            zerobus_streams: get(&self.zerobus_streams),
            zerobus_records: get(&self.zerobus_records),
            zerobus_throttled: get(&self.zerobus_throttled),
            zerobus_lost_acks: get(&self.zerobus_lost_acks),
            zerobus_timeouts: get(&self.zerobus_timeouts),
            requests: self
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }
}
