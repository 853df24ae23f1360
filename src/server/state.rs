//! The state every handler shares.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::readiness::ReadinessCache;
use crate::config::GatewayConfig;
use crate::databricks;
use crate::devices::LiveRegistry;
use crate::health::WriteHealth;
use crate::ingest::{IngestQueue, Intake};
use crate::metrics::Metrics;
use crate::query::ReadGate;
use crate::rate_limits::RateLimits;
use crate::relay::RelayState;
use crate::uploads::UploadBudget;

/// Everything a request may need; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState(Arc<App>);

/// What the queue's rows go to.
pub(crate) enum Backend {
    /// A gateway: the table, and the reads, through this client.
    Table(databricks::Client),
    /// A site relay: the spool, and the upstream it forwards to.
    Relay(Arc<RelayState>),
}

pub(crate) struct App {
    pub config: GatewayConfig,
    pub backend: Backend,
    pub keys: LiveRegistry,
    pub rate_limits: RateLimits,
    /// Bytes of request bodies being read and parsed, in all and per sender.
    pub(crate) uploads: UploadBudget,
    pub queue: IngestQueue,
    /// Read statements' slots and the cached device lists.
    pub reads: ReadGate,
    pub metrics: Arc<Metrics>,
    /// Whether the table takes writes: set by the writers, read by `/readyz`, `/metrics`
    /// and the intake (which takes no more while it does not).
    pub(crate) writes: Arc<WriteHealth>,
    /// Cancelled when the shutdown signal arrives.
    pub shutting_down: CancellationToken,
    /// The last readiness check; held while a check runs, so that checks don't pile up.
    pub(super) readiness: ReadinessCache,
}

impl AppState {
    pub(crate) fn new(
        config: GatewayConfig,
        backend: Backend,
        keys: LiveRegistry,
        queue: IngestQueue,
        metrics: Arc<Metrics>,
        writes: Arc<WriteHealth>,
    ) -> Self {
        AppState(Arc::new(App {
            rate_limits: RateLimits::new(config.rate_limits.clone()),
            uploads: UploadBudget::new(config.uploads),
            reads: ReadGate::new(
                config.read.query_concurrency,
                config.read.query_wait,
                config.read.device_list_ttl,
            ),
            config,
            backend,
            keys,
            queue,
            metrics,
            writes,
            shutting_down: CancellationToken::new(),
            readiness: ReadinessCache::default(),
        }))
    }
}

impl App {
    /// Admission, over this gateway's queue, budgets and write health.
    pub(crate) fn intake(&self) -> Intake<'_> {
        Intake {
            caps: &self.config.body,
            queue: &self.queue,
            rate_limits: &self.rate_limits,
            metrics: &self.metrics,
            writes: &self.writes,
        }
    }

    /// The relay's spool and upstream; `None` in a gateway.
    pub(crate) fn relay_state(&self) -> Option<&Arc<RelayState>> {
        match &self.backend {
            Backend::Relay(site) => Some(site),
            Backend::Table(_) => None,
        }
    }
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}
