//! A relay's spool and upstream, shared by the handlers, the spooler and the forwarder,
//! and how both ends are doing.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lakegate_device::{KeyCheck, Spool, SpoolError, Upstream};
use tokio::sync::Notify;

use super::admission::Admission;
use crate::config::RelaySettings;
use crate::databricks;
use crate::metrics::RelayMetrics;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SiteError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the upstream client: {0}")]
    Upstream(#[from] databricks::Error),
}

/// A relay's spool and upstream, shared by the handlers, the spooler and the forwarder.
pub(crate) struct RelayState {
    /// Which devices' readings the relay takes.
    pub(crate) admission: Admission,
    /// Bytes `refused.ndjson` (and `refused.ndjson.1`) may each take.
    pub(super) refused_cap: u64,
    pub(super) spool: Arc<Spool>,
    pub(super) upstream: Upstream,
    /// Readings per upstream request.
    pub(super) batch: usize,
    /// Upstream requests at once, each for its own devices.
    pub(super) lanes: usize,
    /// Set while spool appends fail; cleared by the next that works.
    pub(super) spool_failing: AtomicBool,
    /// Woken by each append, so that an idle forwarder sends at once.
    pub(super) appended: Notify,
    /// Set when a request was turned away for room; cleared when the forwarder frees some.
    pub(super) turned_away: AtomicBool,
    /// Since when the upstream has not committed what the forwarder sends; `None` while
    /// it does.
    pub(super) failing_since: Mutex<Option<Instant>>,
}

/// How the relay's two ends are doing, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayHealth {
    /// `ok` or `unreachable` (the reason goes to the log).
    pub(crate) upstream: &'static str,
    /// `ok`, `full`, or `failing` (appends or a test write fail).
    pub(crate) spool: &'static str,
    /// `ok`, or `failing` when the upstream has committed nothing the forwarder sent for
    /// longer than [`FORWARDING_GRACE`] (a refused relay key, a gateway that cannot
    /// write): reachable is not enough.
    pub(crate) forwarding: &'static str,
}

/// `refused.ndjson` and `refused.ndjson.1` each take at most this share of
/// `LAKEGATE_SPOOL_MAX_BYTES`.
const REFUSED_SHARE: u64 = 16;

/// Forwarding that keeps failing this long makes the relay unready; blips don't.
const FORWARDING_GRACE: Duration = Duration::from_secs(30);

impl RelayState {
    /// Opens the spool (cutting a record torn by a crash) and the upstream client.
    pub(crate) fn open(
        settings: &RelaySettings,
        workspace: Option<&databricks::Config>,
    ) -> Result<RelayState, SiteError> {
        // The spool's budget holds the refused readings' files too: each takes at most a
        // sixteenth of it, and the readings not yet forwarded the rest.
        let refused_cap = settings.spool_max_bytes / REFUSED_SHARE;
        let spool = Spool::open(
            &settings.spool_dir,
            settings.spool_max_bytes - 2 * refused_cap,
        )?;
        let upstream = Upstream::new(&settings.upstream, settings.key.clone(), workspace)?;
        Ok(RelayState {
            admission: Admission::new(settings.key.clone()),
            refused_cap,
            spool: Arc::new(spool),
            upstream,
            batch: settings.batch,
            lanes: settings.lanes,
            spool_failing: AtomicBool::new(false),
            appended: Notify::new(),
            turned_away: AtomicBool::new(false),
            failing_since: Mutex::new(None),
        })
    }

    /// Whether about `bytes` more fit in the spool; when they don't, the spool counts as
    /// full until the forwarder next makes room.
    pub(crate) fn has_room_for(&self, bytes: u64) -> bool {
        let room = self.spool.backlog().0.saturating_add(bytes) <= self.spool.max_bytes();
        if !room {
            self.turned_away.store(true, Ordering::Relaxed);
        }
        room
    }

    /// The forwarder's attempt failed; returns how long forwarding has been failing.
    pub(crate) fn forwarding_failed(&self) -> Duration {
        let mut since = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since.get_or_insert_with(Instant::now).elapsed()
    }

    /// The upstream committed a batch; returns whether forwarding had been failing.
    pub(crate) fn forwarding_worked(&self) -> bool {
        let mut since = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since.take().is_some()
    }

    /// Checks the relay key with the upstream, writing nothing: an error when the upstream
    /// refuses it or it is a device's key; a warning when the upstream cannot tell now
    /// (the forwarder finds out when it can).
    pub(crate) async fn check_key(&self) -> Result<(), String> {
        match self.upstream.check_key().await {
            KeyCheck::Relay { id } => {
                tracing::info!(relay_id = %id, "the upstream knows the relay key");
                Ok(())
            }
            KeyCheck::Device { id } => Err(format!(
                "the relay key (LAKEGATE_RELAY_KEY or --key-file) is device {id:?}'s key, not a \
                 relay's: give the relay its own with `lakegate keys relay add`"
            )),
            KeyCheck::Refused { why } => Err(format!(
                "the upstream refuses the relay key (LAKEGATE_RELAY_KEY or --key-file): {why}. \
                 A key just added reaches a running gateway at its next registry reload"
            )),
            KeyCheck::Unchecked { why } => {
                tracing::warn!(%why, "could not check the relay key with the upstream now; forwarding will tell");
                Ok(())
            }
        }
    }

    pub(crate) fn token_fetches(&self) -> databricks::TokenFetches {
        self.upstream.token_fetches()
    }

    /// Checks the upstream (its `/healthz`) and the spool (a test write in its directory).
    pub(crate) async fn health(&self) -> RelayHealth {
        let upstream = match self.upstream.check_reachable().await {
            Ok(()) => "ok",
            Err(why) => {
                tracing::warn!(%why, "readiness: the upstream is not reachable");
                "unreachable"
            }
        };
        let dir = self.spool.dir().to_owned();
        let writable = tokio::task::spawn_blocking(move || probe_write(&dir))
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join)));
        let spool = match writable {
            Err(err) => {
                tracing::warn!(error = %err, "readiness: the spool directory cannot be written");
                "failing"
            }
            Ok(()) if self.spool_failing.load(Ordering::Relaxed) => "failing",
            Ok(()) if self.turned_away.load(Ordering::Relaxed) => "full",
            Ok(()) => "ok",
        };
        let failing_for = *self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let forwarding = match failing_for {
            Some(since) if since.elapsed() > FORWARDING_GRACE => "failing",
            _ => "ok",
        };
        RelayHealth {
            upstream,
            spool,
            forwarding,
        }
    }

    /// Sets the spool's gauges (read at scrape time).
    pub(crate) async fn observe(self: &Arc<Self>, metrics: &RelayMetrics) {
        let (bytes, readings) = self.spool.backlog();
        metrics.spool_bytes.set(bytes as i64);
        metrics.spool_readings.set(readings as i64);
        let damaged = self.spool.damaged();
        metrics.spool_damaged_regions.set(damaged.regions as i64);
        let site = Arc::clone(self);
        let oldest = tokio::task::spawn_blocking(move || site.oldest_reading_ts())
            .await
            .ok()
            .flatten();
        let age = oldest.map_or(0, |ts| (Utc::now() - ts).num_seconds().max(0));
        metrics.oldest_reading_age_seconds.set(age);
    }

    /// The `ts` of the first reading waiting to be forwarded.
    fn oldest_reading_ts(&self) -> Option<DateTime<Utc>> {
        let pending = self.spool.peek(1, 1).ok()?;
        let record: serde_json::Value = serde_json::from_slice(pending.records.first()?).ok()?;
        record["ts"].as_str()?.parse().ok()
    }
}

/// Creates, syncs and removes a small file in `dir`.
fn probe_write(dir: &std::path::Path) -> io::Result<()> {
    let path = dir.join(".lakegate-probe");
    std::fs::write(&path, b"ok")?;
    std::fs::File::open(&path)?.sync_all()?;
    std::fs::remove_file(&path)
}
