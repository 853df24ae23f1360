//! The injected faults in force: throttling and an unavailability window on `/api/`,
//! failing token calls, lost statement answers, refused rows, a window of failing writes
//! and statement latency.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::clock::far_future;
use crate::config::{Faults, StatementCost, WriteConflicts, ZerobusFaults};
use crate::error::ErrorReply;
use crate::sql::SqlError;
use crate::stats::{Counters, bump};

pub(crate) struct FaultState {
    active: Mutex<Active>,
}

struct Active {
    faults: Faults,
    unavailable_until: Option<Instant>,
    writes_fail_until: Option<Instant>,
    token_failures_left: u32,
    lost_responses_left: u32,
    lost_acks_left: u32,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> Self {
        Self {
            active: Mutex::new(Active::from(faults)),
        }
    }

    pub(crate) fn set(&self, faults: Faults) {
        *self.lock() = Active::from(faults);
    }

    pub(crate) fn statement_latency(&self) -> Duration {
        self.lock().faults.statement_latency
    }

    pub(crate) fn write_conflicts(&self) -> WriteConflicts {
        self.lock().faults.write_conflicts
    }

    pub(crate) fn statement_cost(&self) -> Option<StatementCost> {
        self.lock().faults.statement_cost
    }

    pub(crate) fn secrets_latency(&self) -> Duration {
        self.lock().faults.secrets_latency
    }

    pub(crate) fn token_expires_in(&self) -> Option<u64> {
        self.lock().faults.token_expires_in
    }

    /// Whether a write into `table` with these parameter values must fail as if a
    /// constraint refused one of its rows.
    pub(crate) fn rejects_rows<'a>(
        &self,
        table: &str,
        mut values: impl Iterator<Item = &'a str>,
    ) -> bool {
        let active = self.lock();
        let Some(reject) = &active.faults.reject_rows else {
            return false;
        };
        reject.table.eq_ignore_ascii_case(table)
            && values.any(|value| value.contains(reject.marker.as_str()))
    }

    /// The error a write reaching its commit now must fail with, if any.
    pub(crate) fn failing_write(&self) -> Option<SqlError> {
        let active = self.lock();
        let failing = active.faults.failing_writes.as_ref()?;
        active
            .writes_fail_until
            .is_some_and(|until| Instant::now() < until)
            .then(|| SqlError::new(failing.class, failing.sql_state, failing.detail))
    }

    /// Whether this token call must fail; counts the failure down.
    pub(crate) fn take_token_failure(&self) -> bool {
        take(&mut self.lock().token_failures_left)
    }

    /// Whether this statement's answer must be lost; counts down.
    pub(crate) fn take_lost_response(&self) -> bool {
        take(&mut self.lock().lost_responses_left)
    }

    /// The Zerobus faults in force.
    pub(crate) fn zerobus(&self) -> ZerobusFaults {
        self.lock().faults.zerobus.clone()
    }

    /// Whether this Zerobus write's acknowledgement must be lost; counts down.
    pub(crate) fn take_lost_ack(&self) -> bool {
        take(&mut self.lock().lost_acks_left)
    }

    /// The injected answer for an `/api/` request, if any, counted in `stats`.
    pub(crate) fn api_fault(&self, stats: &Counters) -> Option<ErrorReply> {
        let active = self.lock();
        if active
            .unavailable_until
            .is_some_and(|until| Instant::now() < until)
        {
            bump(&stats.unavailable);
            let error = ErrorReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TEMPORARILY_UNAVAILABLE",
                "The service is temporarily unavailable. Please try again later.",
            );
            return Some(error.retry_after(active.faults.unavailable_retry_after_secs));
        }
        if active.faults.throttle_share > 0.0
            && rand::random::<f64>() < active.faults.throttle_share
        {
            bump(&stats.throttled);
            let error = ErrorReply::new(
                StatusCode::TOO_MANY_REQUESTS,
                "REQUEST_LIMIT_EXCEEDED",
                "The request rate limit was exceeded. Please retry later.",
            );
            return Some(error.retry_after(active.faults.throttle_retry_after_secs));
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a "next N calls" fault down; true while any is left.
fn take(left: &mut u32) -> bool {
    let fail = *left > 0;
    *left = left.saturating_sub(1);
    fail
}

impl From<Faults> for Active {
    fn from(faults: Faults) -> Self {
        Self {
            unavailable_until: faults
                .unavailable_for
                .map(|d| Instant::now().checked_add(d).unwrap_or_else(far_future)),
            writes_fail_until: faults.failing_writes.as_ref().map(|f| {
                Instant::now()
                    .checked_add(f.window)
                    .unwrap_or_else(far_future)
            }),
            token_failures_left: faults.token_failures,
            lost_responses_left: faults.lost_statement_responses,
            lost_acks_left: faults.zerobus.lost_acks,
            faults,
        }
    }
}
