//! The gateway's life: start (workspace, registry, table, writers, reloads),
//! serve, and drain on shutdown. Every task it starts is owned here and awaited
//! before [`Gateway::run`] returns.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{GatewayConfig, Sink, Workspace};
use crate::databricks;
use crate::devices::{KeySource, LiveRegistry, reload_loop};
use crate::health::WriteHealth;
use crate::ingest::{
    BatchSettings, BatchSink, IngestQueue, Lane, LayoutCheck, StatementSink, Writer,
    ZerobusService, ZerobusSink,
};
use crate::metrics::Metrics;
use crate::relay::{RelayState, forward_loop, spool_loop};
use crate::server::{self, AppState, Backend};
use crate::table::ensure_tables;

pub struct Gateway {
    state: AppState,
    /// One batch writer per queue lane.
    writers: TaskTracker,
    /// Tells the writers that no request can queue rows any more.
    writer_closing: CancellationToken,
    /// Registry reloads and limiter housekeeping, stopped by `background_stop`.
    background: TaskTracker,
    background_stop: CancellationToken,
    #[cfg(feature = "local")]
    local: Option<crate::local::LocalWorkspace>,
}

/// The workspace to talk to and where the registry lives, once local mode had its say.
struct ResolvedWorkspace {
    /// `None`: a relay without a workspace.
    client: Option<databricks::Config>,
    keys: KeySource,
    #[cfg(feature = "local")]
    local: Option<crate::local::LocalWorkspace>,
}

impl Gateway {
    /// Connects to the workspace (or starts the embedded one), loads the device
    /// registry, creates the table when missing and starts the writer.
    pub async fn start(mut config: GatewayConfig) -> anyhow::Result<Gateway> {
        let workspace = resolve_workspace(&mut config).await?;
        let client = workspace
            .client
            .as_ref()
            .map(databricks::Client::new)
            .transpose()
            .context("building the Databricks client")?;
        let secrets = client.as_ref().map(databricks::Client::secrets);
        let registry = workspace
            .keys
            .load(secrets.as_ref())
            .await
            .context("loading the device registry")?;
        let metrics = Arc::new(match config.is_relay() {
            true => Metrics::for_relay(),
            false => Metrics::default(),
        });
        metrics.registry_devices.set(registry.device_count() as i64);
        let keys = LiveRegistry::new(registry.clone());
        let writes = Arc::new(WriteHealth::default());

        let writer_closing = CancellationToken::new();
        let writers = TaskTracker::new();
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let (backend, queue) = match (&config.relay, client) {
            (Some(relay), _) => {
                let site = RelayState::open(relay, workspace.client.as_ref())
                    .with_context(|| format!("opening the spool {}", relay.spool_dir.display()))?;
                let site = Arc::new(site);
                site.check_key().await.map_err(anyhow::Error::msg)?;
                if !site.admission.knows_own_entry(&registry) {
                    tracing::warn!(
                        "the site's registry has no entry for this relay's key, so the relay \
                         cannot tell which devices the upstream lets it speak for: readings of \
                         others are taken here and refused upstream (kept in refused.ndjson); \
                         copy the relay's entry from the gateway's registry to check them here"
                    );
                }
                // One lane: one spooler appends everything, in arrival order.
                let (queue, lanes) = IngestQueue::new(config.queue, 1);
                for lane in lanes {
                    writers.spawn(spool_loop(
                        lane,
                        site.clone(),
                        metrics.clone(),
                        writer_closing.clone(),
                    ));
                }
                background.spawn(forward_loop(
                    site.clone(),
                    metrics.clone(),
                    background_stop.clone(),
                ));
                (Backend::Relay(site), queue)
            }
            (None, Some(client)) => {
                let queue = start_table_writers(
                    &config,
                    workspace
                        .client
                        .as_ref()
                        .expect("a client has its settings"),
                    &client,
                    &metrics,
                    &writes,
                    &writers,
                    &writer_closing,
                )
                .await?;
                (Backend::Table(client), queue)
            }
            (None, None) => anyhow::bail!("a gateway needs a workspace"),
        };
        writers.close();

        background.spawn(reloads(
            &config,
            keys.clone(),
            workspace.keys,
            secrets,
            metrics.clone(),
            background_stop.clone(),
        ));
        let state = AppState::new(config, backend, keys, queue, metrics, writes);
        background.spawn(prune_rate_limits(state.clone(), background_stop.clone()));
        background.close();
        Ok(Gateway {
            state,
            writers,
            writer_closing,
            background,
            background_stop,
            #[cfg(feature = "local")]
            local: workspace.local,
        })
    }

    /// The embedded workspace in local mode, to start its Apps proxy and print how to
    /// try it.
    #[cfg(feature = "local")]
    pub fn local_workspace(&mut self) -> Option<&mut crate::local::LocalWorkspace> {
        self.local.as_mut()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish and drains every queued reading to the table (within the grace period).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutting_down = self.state.shutting_down.clone();
        let router = server::router(self.state.clone());
        let deadlines = self.state.config.shutdown;
        let signalled_at = Arc::new(OnceLock::new());
        let signal = {
            let signalled_at = signalled_at.clone();
            async move {
                shutdown.await;
                let _ = signalled_at.set(Instant::now());
                tracing::info!("shutting down: no new connections, draining requests");
                shutting_down.cancel();
            }
        };
        let serve = crate::connections::serve(
            listener,
            router,
            self.state.config.connections.clone(),
            self.state.metrics.connections.clone(),
            signal,
        );
        // Past their share of the grace period, request connections are dropped (rows
        // they queued stay queued), so the drain below still fits.
        let drain_bound = async {
            self.state.shutting_down.cancelled().await;
            tokio::time::sleep(deadlines.drain_requests()).await;
        };
        tokio::select! {
            served = serve => served.context("serving HTTP")?,
            () = drain_bound => tracing::warn!(
                "requests still running after {:?}; closing them",
                deadlines.drain_requests()
            ),
        }

        self.writer_closing.cancel();
        let queued = self.state.queue.depth();
        let deadline =
            signalled_at.get().copied().unwrap_or_else(Instant::now) + deadlines.drain_queue();
        match tokio::time::timeout_at(deadline, self.writers.wait()).await {
            Ok(_) => tracing::info!(rows = queued, "queue drained; stopped"),
            Err(_) => tracing::error!(
                rows = self.state.queue.depth(),
                "shutdown grace period passed with rows not yet written"
            ),
        }
        self.background_stop.cancel();
        self.background.wait().await;
        #[cfg(feature = "local")]
        if let Some(local) = self.local {
            local.stop().await;
        }
        Ok(())
    }
}

/// Creates the tables when missing and starts one batch writer per queue lane, each with
/// its own sink: statements on the warehouse, or its own Zerobus streams.
async fn start_table_writers(
    config: &GatewayConfig,
    settings: &databricks::Config,
    client: &databricks::Client,
    metrics: &Arc<Metrics>,
    writes: &Arc<WriteHealth>,
    writers: &TaskTracker,
    closing: &CancellationToken,
) -> anyhow::Result<IngestQueue> {
    ensure_tables(&client.statements(), config.tables())
        .await
        .with_context(|| {
            format!(
                "creating tables {} and {} and the view {}",
                config.table, config.dead_letter_table, config.dedup_view
            )
        })?;
    let (queue, lanes) = IngestQueue::new(config.queue, config.writers);
    let shared = WriterShared {
        batch: &config.batch,
        metrics,
        writes,
        writers,
        closing,
    };
    match &config.sink {
        Sink::Statements => {
            let sink = StatementSink::new(
                client.statements(),
                &config.table,
                &config.dead_letter_table,
            );
            shared.spawn(lanes, || sink.clone());
        }
        Sink::Zerobus { endpoint } => {
            let endpoint = endpoint
                .as_deref()
                .context("no Zerobus endpoint (LAKEGATE_ZEROBUS_ENDPOINT)")?;
            let databricks::Credentials::OAuthM2m {
                client_id,
                client_secret,
            } = &settings.credentials
            else {
                anyhow::bail!("the Zerobus sink needs OAuth client credentials");
            };
            let service =
                ZerobusService::new(endpoint, &settings.host, client_id, client_secret.clone())
                    .context("connecting to Zerobus Ingest")?;
            // A wrong endpoint, grant or credential fails start-up, as a missing warehouse
            // does for the SQL sink, rather than the first device's request.
            service
                .check(&config.table)
                .await
                .with_context(|| format!("opening a Zerobus stream to {}", config.table))?;
            tracing::info!(endpoint, table = %config.table, "writing through Zerobus Ingest");
            let layout = Arc::new(LayoutCheck::new(client.statements(), &config.table));
            shared.spawn(lanes, || {
                ZerobusSink::new(
                    service.clone(),
                    &config.table,
                    &config.dead_letter_table,
                    layout.clone(),
                    metrics.clone(),
                )
            });
        }
    }
    Ok(queue)
}

/// What every writer shares, whatever its sink.
struct WriterShared<'a> {
    batch: &'a BatchSettings,
    metrics: &'a Arc<Metrics>,
    writes: &'a Arc<WriteHealth>,
    writers: &'a TaskTracker,
    closing: &'a CancellationToken,
}

impl WriterShared<'_> {
    /// One writer per lane, each with the sink `sink_for_lane` makes.
    fn spawn<S: BatchSink>(&self, lanes: Vec<Lane>, sink_for_lane: impl Fn() -> S) {
        for lane in lanes {
            let writer = Writer::new(
                lane,
                sink_for_lane(),
                self.batch.clone(),
                self.metrics.clone(),
                self.writes.clone(),
                self.closing.clone(),
            );
            self.writers.spawn(writer.run());
        }
    }
}

/// The workspace client's settings and the registry's source: the configured ones, or in
/// local mode the embedded workspace's.
async fn resolve_workspace(config: &mut GatewayConfig) -> anyhow::Result<ResolvedWorkspace> {
    let configured_keys = || {
        config
            .device_keys
            .clone()
            .context("no device key source configured")
    };
    match &config.workspace {
        Workspace::Remote { client } => Ok(ResolvedWorkspace {
            client: Some((**client).clone()),
            keys: configured_keys()?,
            #[cfg(feature = "local")]
            local: None,
        }),
        Workspace::None => Ok(ResolvedWorkspace {
            client: None,
            keys: configured_keys()?,
            #[cfg(feature = "local")]
            local: None,
        }),
        #[cfg(feature = "local")]
        Workspace::Local {
            data_dir,
            apps_proxy,
        } => {
            let (data_dir, apps_proxy) = (data_dir.clone(), *apps_proxy);
            let (local, client, keys) = crate::local::attach(config, &data_dir, apps_proxy).await?;
            Ok(ResolvedWorkspace {
                client: Some(client),
                keys,
                local: Some(local),
            })
        }
    }
}

/// Reloads the registry every `keys_refresh` until `stop`, counting the outcomes.
fn reloads(
    config: &GatewayConfig,
    keys: LiveRegistry,
    source: KeySource,
    secrets: Option<databricks::Secrets>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let on_outcome = move |outcome: Result<usize, &_>| match outcome {
        Ok(devices) => {
            Metrics::outcome(&metrics.registry_reloads, "ok");
            metrics.registry_devices.set(devices as i64);
        }
        Err(_) => Metrics::outcome(&metrics.registry_reloads, "failed"),
    };
    reload_loop(
        keys,
        source,
        secrets,
        config.keys_refresh,
        on_outcome,
        stop.cancelled_owned(),
    )
}

/// Forgets idle per-device and per-address limiters once a minute until `stop`.
async fn prune_rate_limits(state: AppState, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => state.rate_limits.prune(),
            () = stop.cancelled() => return,
        }
    }
}
