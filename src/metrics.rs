//! Prometheus metrics of one gateway. Each `Metrics` owns its Prometheus registry (no
//! globals), so tests can run several gateways in one process. `stats` keeps
//! what `/api/stats` needs beyond the counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
// Prometheus' registry of metrics, not the device registry (`devices`).
use prometheus_client::registry::Registry as PrometheusRegistry;

use crate::databricks::TokenFetches;
use crate::stats::GatewayStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RelayLabels {
    pub relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RelayReasonLabels {
    pub relay: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Connection counts, handed to the accept loop.
#[derive(Clone, Default)]
pub(crate) struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
    timed_out: Family<ReasonLabels, Counter>,
}

impl ConnectionMetrics {
    pub(crate) fn timed_out(&self, reason: &str) {
        self.timed_out
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthFailureLabels {
    /// `device` (any `X-API-Key` that matched nothing), `relay` (a disabled relay's) or `reader`.
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// What a site relay (`lakegate relay`) adds: its spool and its forwarding.
#[derive(Clone, Default)]
pub(crate) struct RelayMetrics {
    /// Bytes and readings spooled and not yet committed upstream; set at scrape time.
    pub spool_bytes: Gauge,
    pub spool_readings: Gauge,
    /// Age by its own `ts` of the oldest reading waiting to be forwarded (0 when none):
    /// how far the table lags behind this site.
    pub oldest_reading_age_seconds: Gauge,
    pub forwarded: Counter,
    /// Readings the upstream refused for good (kept in the spool's `refused.ndjson`).
    pub refused_upstream: Counter,
    /// Refused readings let go when `refused.ndjson` rotated twice (its bound).
    pub refused_discarded: Counter,
    /// Forwarding attempts the upstream did not commit (each is retried).
    pub upstream_failures: Counter,
    /// Spool appends that failed (the rows stay queued and are tried again).
    pub spool_write_failures: Counter,
    /// Damaged regions of the spool moved aside to `damaged/` since the relay started;
    /// set at scrape time.
    pub spool_damaged_regions: Gauge,
}

pub(crate) struct Metrics {
    prometheus: PrometheusRegistry,
    /// Registered only in a site relay.
    pub relay: RelayMetrics,
    pub connections: ConnectionMetrics,
    pub requests: Family<RequestLabels, Counter>,
    pub readings_accepted: Counter,
    pub readings_rejected: Family<ReasonLabels, Counter>,
    /// Readings site relays forwarded that were accepted, per relay (also in `readings_accepted`).
    pub relay_readings_accepted: Family<RelayLabels, Counter>,
    /// Readings site relays forwarded that were refused, per relay and reason (also in
    /// `readings_rejected`).
    pub relay_readings_rejected: Family<RelayReasonLabels, Counter>,
    pub batches: Family<OutcomeLabels, Counter>,
    pub batch_rows: Histogram,
    pub statement_seconds: Histogram,
    pub queue_rows: Gauge,
    pub queue_bytes: Gauge,
    /// Bytes reserved for request bodies being read and parsed; set at scrape time.
    pub upload_bytes: Gauge,
    /// Requests refused unread because their body would pass a bound, by bound.
    uploads_refused: Family<LimitLabels, Counter>,
    pub registry_reloads: Family<OutcomeLabels, Counter>,
    pub registry_devices: Gauge,
    token_fetches: Family<OutcomeLabels, Counter>,
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    /// Rows the table refused, stored in the dead-letter table.
    pub rows_dead_lettered: Counter,
    /// Batch attempts that failed on a Delta write conflict (another writer committed first).
    pub batch_conflicts: Counter,
    /// Zerobus streams opened (`LAKEGATE_SINK=zerobus`): one per writer, again after each break.
    pub zerobus_streams_opened: Counter,
    /// Rows sent again after a Zerobus stream broke before acknowledging them: each may be
    /// in the table twice (never in the `_dedup` view).
    pub zerobus_resent_records: Counter,
    /// 1 while the table refuses writes for good (see `WriteHealth`), read at scrape time.
    writes_unwritable: Gauge,
    pub stats: GatewayStats,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::default();
        let readings_accepted = Counter::default();
        let readings_rejected = Family::default();
        let relay_readings_accepted = Family::default();
        let relay_readings_rejected = Family::default();
        let batches = Family::default();
        let batch_rows = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        let statement_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let queue_rows = Gauge::default();
        let queue_bytes = Gauge::default();
        let upload_bytes = Gauge::default();
        let uploads_refused = Family::default();
        let registry_reloads = Family::default();
        let registry_devices = Gauge::default();
        let token_fetches = Family::default();
        let connections = ConnectionMetrics::default();
        let auth_failures = Family::default();
        let rows_dead_lettered = Counter::default();
        let batch_conflicts = Counter::default();
        let zerobus_streams_opened = Counter::default();
        let zerobus_resent_records = Counter::default();
        let writes_unwritable = Gauge::default();

        let mut prometheus = PrometheusRegistry::with_prefix("lakegate");
        prometheus.register(
            "connections_open",
            "Open client connections",
            connections.open.clone(),
        );
        prometheus.register(
            "connections_refused",
            "Connections refused with 503 because too many were open",
            connections.refused.clone(),
        );
        prometheus.register(
            "connections_timed_out",
            "Connections closed for sending headers too slowly or idling, by reason",
            connections.timed_out.clone(),
        );
        prometheus.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        prometheus.register(
            "readings_accepted",
            "Readings accepted into the write queue",
            readings_accepted.clone(),
        );
        prometheus.register(
            "readings_rejected",
            "Readings rejected, by reason",
            readings_rejected.clone(),
        );
        prometheus.register(
            "relay_readings_accepted",
            "Readings accepted from site relays, by relay",
            relay_readings_accepted.clone(),
        );
        prometheus.register(
            "relay_readings_rejected",
            "Readings from site relays rejected, by relay and reason",
            relay_readings_rejected.clone(),
        );
        prometheus.register(
            "batches",
            "Batch write attempts by outcome",
            batches.clone(),
        );
        prometheus.register(
            "batch_rows",
            "Rows (one per metric) in each committed batch",
            batch_rows.clone(),
        );
        prometheus.register(
            "statement_seconds",
            "Latency of one batch statement",
            statement_seconds.clone(),
        );
        prometheus.register(
            "queue_rows",
            "Rows queued and not yet committed",
            queue_rows.clone(),
        );
        prometheus.register(
            "queue_bytes",
            "Bytes the queued rows take in memory",
            queue_bytes.clone(),
        );
        prometheus.register(
            "upload_bytes",
            "Bytes reserved for request bodies being read and parsed",
            upload_bytes.clone(),
        );
        prometheus.register(
            "uploads_refused",
            "Requests refused unread because their body would pass the bytes in flight of \
             its sender or of the gateway, by limit (sender, gateway)",
            uploads_refused.clone(),
        );
        prometheus.register(
            "registry_reloads",
            "Device registry reloads by outcome",
            registry_reloads.clone(),
        );
        prometheus.register(
            "registry_devices",
            "Devices in the live registry",
            registry_devices.clone(),
        );
        prometheus.register(
            "token_fetches",
            "OAuth token fetches by outcome",
            token_fetches.clone(),
        );
        prometheus.register(
            "auth_failures",
            "Failed authentications by kind (device, reader) and outcome",
            auth_failures.clone(),
        );

        prometheus.register(
            "zerobus_streams_opened",
            "Zerobus streams opened by the writers (LAKEGATE_SINK=zerobus)",
            zerobus_streams_opened.clone(),
        );
        prometheus.register(
            "zerobus_resent_records",
            "Rows sent again on a new Zerobus stream after one broke before acknowledging \
             them; each may be in the table twice, never in the _dedup view",
            zerobus_resent_records.clone(),
        );
        prometheus.register(
            "rows_dead_lettered",
            "Rows the table refused, written to the dead-letter table",
            rows_dead_lettered.clone(),
        );
        prometheus.register(
            "batch_conflicts",
            "Batch attempts that failed on a Delta concurrent-write conflict (retried at once)",
            batch_conflicts.clone(),
        );
        prometheus.register(
            "writes_unwritable",
            "1 while the table refuses writes for good (rows are kept and retried)",
            writes_unwritable.clone(),
        );

        Metrics {
            prometheus,
            connections,
            requests,
            readings_accepted,
            readings_rejected,
            relay_readings_accepted,
            relay_readings_rejected,
            batches,
            batch_rows,
            statement_seconds,
            queue_rows,
            queue_bytes,
            upload_bytes,
            uploads_refused,
            registry_reloads,
            registry_devices,
            token_fetches,
            auth_failures,
            rows_dead_lettered,
            batch_conflicts,
            zerobus_streams_opened,
            zerobus_resent_records,
            writes_unwritable,
            stats: GatewayStats::default(),
            relay: RelayMetrics::default(),
        }
    }
}

impl Metrics {
    /// A site relay's metrics: the gateway's, and the spool's and forwarding's.
    pub(crate) fn for_relay() -> Metrics {
        let mut metrics = Metrics::default();
        let site = metrics.relay.clone();
        let prometheus = &mut metrics.prometheus;
        prometheus.register(
            "spool_bytes",
            "Bytes spooled and not yet committed upstream",
            site.spool_bytes,
        );
        prometheus.register(
            "spool_readings",
            "Readings spooled and not yet committed upstream",
            site.spool_readings,
        );
        prometheus.register(
            "spool_damaged_regions",
            "Damaged regions of the spool moved aside to damaged/ since the relay started",
            site.spool_damaged_regions,
        );
        prometheus.register(
            "spool_oldest_reading_age_seconds",
            "Age (by its ts) of the oldest reading waiting to be forwarded; 0 when none",
            site.oldest_reading_age_seconds,
        );
        prometheus.register(
            "relay_forwarded_readings",
            "Readings the upstream committed",
            site.forwarded,
        );
        prometheus.register(
            "relay_refused_readings",
            "Readings the upstream refused for good (kept in refused.ndjson)",
            site.refused_upstream,
        );
        prometheus.register(
            "relay_refused_discarded_readings",
            "Refused readings let go from refused.ndjson.1 when refused.ndjson rotated (its bound)",
            site.refused_discarded,
        );
        prometheus.register(
            "relay_upstream_failures",
            "Forwarding attempts the upstream did not commit (retried)",
            site.upstream_failures,
        );
        prometheus.register(
            "spool_write_failures",
            "Spool appends that failed (retried)",
            site.spool_write_failures,
        );
        metrics
    }
}

impl Metrics {
    /// `reason` is the rejection's snake_case name, as devices see it.
    pub(crate) fn reject(&self, device_id: &Arc<str>, reason: &'static str) {
        self.count_rejection(reason);
        self.stats.rejected(device_id);
    }

    /// A reading a relay forwarded was refused: counted for the relay, and for the
    /// device when the registry knows which one it is (`None` when the reading named no
    /// device the relay may speak for, or was refused before its device was known).
    pub(crate) fn reject_relayed(
        &self,
        relay_id: &str,
        device_id: Option<&Arc<str>>,
        reason: &'static str,
    ) {
        self.count_rejection(reason);
        self.relay_readings_rejected
            .get_or_create(&RelayReasonLabels {
                relay: relay_id.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
        if let Some(device_id) = device_id {
            self.stats.rejected(device_id);
        }
    }

    fn count_rejection(&self, reason: &'static str) {
        self.readings_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Readings a relay forwarded were accepted (after [`Metrics::accept`]).
    pub(crate) fn relay_accepted(&self, relay_id: &str, readings: u64) {
        self.relay_readings_accepted
            .get_or_create(&RelayLabels {
                relay: relay_id.to_owned(),
            })
            .inc_by(readings);
    }

    pub(crate) fn accept(&self, readings: u64) {
        self.readings_accepted.inc_by(readings);
        self.stats.accepted(readings);
    }

    pub(crate) fn batch_committed(&self, rows: usize, latency: Duration) {
        self.statement_seconds.observe(latency.as_secs_f64());
        self.batch_rows.observe(rows as f64);
        Self::outcome(&self.batches, "committed");
        self.stats.batch_committed(latency);
    }

    pub(crate) fn batch_failed(&self) {
        Self::outcome(&self.batches, "failed_attempt");
        self.stats.batch_failed();
    }

    /// Rejections so far of each of `reasons`, only the reasons that occurred.
    pub(crate) fn rejected_by_reason(
        &self,
        reasons: impl IntoIterator<Item = &'static str>,
    ) -> BTreeMap<&'static str, u64> {
        reasons
            .into_iter()
            .filter_map(|reason| {
                let label = ReasonLabels {
                    reason: reason.to_owned(),
                };
                let count = self.readings_rejected.get(&label)?.get();
                Some((reason, count))
            })
            .collect()
    }

    /// Batch write attempts that failed (each is retried).
    pub(crate) fn batch_failures(&self) -> u64 {
        self.batches
            .get(&OutcomeLabels {
                outcome: "failed_attempt",
            })
            .map_or(0, |counter| counter.get())
    }

    pub(crate) fn upload_refused(&self, limit: &'static str) {
        self.uploads_refused
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub(crate) fn auth_failure(&self, kind: &'static str, outcome: &'static str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels { kind, outcome })
            .inc();
    }

    pub(crate) fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Prometheus text exposition; token fetch counts are read from the client, and
    /// whether the table is unwritable from its `WriteHealth`, at scrape time.
    pub(crate) fn render(&self, tokens: TokenFetches, table_unwritable: bool) -> String {
        set_counter(&self.token_fetches, "succeeded", tokens.succeeded);
        set_counter(&self.token_fetches, "failed", tokens.failed);
        self.writes_unwritable.set(i64::from(table_unwritable));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.prometheus)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Raises a counter to a total kept elsewhere (counters only go up).
fn set_counter(family: &Family<OutcomeLabels, Counter>, outcome: &'static str, total: u64) {
    let counter = family.get_or_create(&OutcomeLabels { outcome });
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}
