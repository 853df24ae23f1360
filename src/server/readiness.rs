//! The readiness answer, and its cache: one check in flight at a time, however many
//! probes ask.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Readiness {
    pub ready: bool,
    #[serde(flatten)]
    pub checks: Checks,
    pub devices: usize,
    /// Present (true) once shutdown has begun.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shutting_down: bool,
}

/// What was checked: a gateway's warehouse and writes, or a relay's upstream and spool.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(super) enum Checks {
    Gateway {
        /// `ok` when a token was obtained and the warehouse ran `SELECT 1`, else
        /// `unreachable` (the details go to the log: this route needs no credentials);
        /// `not_probed` with the Zerobus sink, whose writes do not need the warehouse.
        warehouse: &'static str,
        /// `ok`, or `failing` when batch writes have failed for longer than a grace
        /// period, or the table refuses them for good.
        writes: &'static str,
        /// Why writes are `failing`: `table_unwritable` (the table refuses every write:
        /// it is missing, or permission is denied; rows are kept and retried) or
        /// `write_errors` (failures retrying may fix, for longer than the grace period).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    Relay {
        /// `ok` when the upstream's `/healthz` answered, else `unreachable`.
        upstream: &'static str,
        /// `ok`, `full` (devices get 503 until the forwarder makes room) or `failing`.
        spool: &'static str,
        /// `ok`, or `failing` when the upstream has committed nothing for 30 s.
        forwarding: &'static str,
    },
}

impl Readiness {
    pub(super) fn shutting_down(devices: usize, relay: bool) -> Readiness {
        let checks = match relay {
            false => Checks::Gateway {
                warehouse: "not_checked",
                writes: "not_checked",
                reason: None,
            },
            true => Checks::Relay {
                upstream: "not_checked",
                spool: "not_checked",
                forwarding: "not_checked",
            },
        };
        Readiness {
            ready: false,
            checks,
            devices,
            shutting_down: true,
        }
    }
}

/// Readiness is cached this long so that probes don't keep a warehouse busy.
const READINESS_TTL: Duration = Duration::from_secs(5);

/// The last readiness check; held while a check runs, so that checks don't pile up.
#[derive(Default)]
pub(super) struct ReadinessCache(tokio::sync::Mutex<Option<(Instant, Readiness)>>);

impl ReadinessCache {
    /// The cached answer while fresh; otherwise runs `check`. Callers that arrive while
    /// it runs wait for it and share its answer.
    pub(super) async fn get_or_check(&self, check: impl Future<Output = Readiness>) -> Readiness {
        let mut cache = self.0.lock().await;
        if let Some((at, readiness)) = &*cache
            && at.elapsed() < READINESS_TTL
        {
            return readiness.clone();
        }
        let readiness = check.await;
        *cache = Some((Instant::now(), readiness.clone()));
        readiness
    }
}
