//! The gateway's life: start (workspace, registry, table, writer, reloads),
//! serve, and drain on shutdown.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{GatewayConfig, Workspace};
use crate::databricks;
use crate::devices::{DeviceKeys, KeySource, reload_loop};
use crate::ingest::queue::IngestQueue;
use crate::ingest::sink::StatementSink;
use crate::ingest::writer::Writer;
use crate::metrics::Metrics;
use crate::server::{self, AppState};
use crate::table::ensure_tables;

pub struct Gateway {
    state: AppState,
    writer: JoinHandle<()>,
    /// Tells the writer that no request can queue rows any more.
    writer_closing: CancellationToken,
    /// Stops registry reloads and limiter housekeeping.
    background: CancellationToken,
    #[cfg(feature = "local")]
    local: Option<crate::local::LocalWorkspace>,
}

impl Gateway {
    /// Connects to the workspace (or starts the embedded one), loads the device
    /// registry, creates the table when missing and starts the writer.
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Gateway> {
        #[cfg(feature = "local")]
        let mut local = None;
        let (client_config, key_source) = match &config.workspace {
            Workspace::Remote { client, .. } => (
                (**client).clone(),
                config
                    .device_keys
                    .clone()
                    .context("no device key source configured")?,
            ),
            #[cfg(feature = "local")]
            Workspace::Local { data_dir } => {
                let workspace =
                    crate::local::LocalWorkspace::start(data_dir, config.device_keys.clone())
                        .await?;
                let settings = (workspace.client_config()?, workspace.key_source());
                local = Some(workspace);
                settings
            }
            #[cfg(not(feature = "local"))]
            Workspace::Local { .. } => anyhow::bail!("this build has no embedded emulator"),
        };
        // The page link printed in local mode carries this run's reader token.
        #[cfg(feature = "local")]
        let config = {
            let mut config = config;
            if let Some(workspace) = &local {
                config
                    .read
                    .reader_tokens
                    .insert(workspace.reader_token_hash());
            }
            config
        };

        let client =
            databricks::Client::new(&client_config).context("building the Databricks client")?;
        let secrets = client.secrets();
        let registry = key_source
            .load(Some(&secrets))
            .await
            .context("loading the device registry")?;
        let metrics = Arc::new(Metrics::default());
        metrics.registry_devices.set(registry.device_count() as i64);
        let keys = DeviceKeys::new(registry);
        ensure_tables(&client.statements(), &config.table, &config.rejected_table)
            .await
            .with_context(|| {
                format!(
                    "creating tables {} and {}",
                    config.table, config.rejected_table
                )
            })?;

        let (queue, receiver) = IngestQueue::new(config.queue);
        let writer_closing = CancellationToken::new();
        let sink = StatementSink::new(client.statements(), &config.table, &config.rejected_table);
        let writer = tokio::spawn(
            Writer::new(
                receiver,
                sink,
                config.batch.clone(),
                metrics.clone(),
                writer_closing.clone(),
            )
            .run(),
        );

        let background = CancellationToken::new();
        spawn_reloads(
            &config,
            keys.clone(),
            key_source,
            secrets,
            metrics.clone(),
            background.clone(),
        );
        let state = AppState::new(config, client, keys, queue, metrics);
        spawn_limit_pruning(state.clone(), background.clone());
        Ok(Gateway {
            state,
            writer,
            writer_closing,
            background,
            #[cfg(feature = "local")]
            local,
        })
    }

    /// The demo device of the embedded workspace, to print how to try it.
    #[cfg(feature = "local")]
    pub fn local_workspace(&self) -> Option<&crate::local::LocalWorkspace> {
        self.local.as_ref()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish and flushes every queued reading (within the grace period).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutting_down = self.state.shutting_down.clone();
        let router = server::router(self.state.clone());
        let grace = self.state.config.shutdown_grace;
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
        // Requests in flight get half the grace period; then their connections are
        // dropped (rows they queued stay queued), so the flush below still fits.
        let drain_bound = async {
            self.state.shutting_down.cancelled().await;
            tokio::time::sleep(grace / 2).await;
        };
        tokio::select! {
            served = serve => served.context("serving HTTP")?,
            () = drain_bound => tracing::warn!("requests still running after {:?}; closing them", grace / 2),
        }

        self.writer_closing.cancel();
        let queued = self.state.queue.depth();
        let deadline = signalled_at.get().copied().unwrap_or_else(Instant::now) + grace;
        match tokio::time::timeout_at(deadline, self.writer).await {
            Ok(_) => tracing::info!(rows = queued, "queue flushed; stopped"),
            Err(_) => tracing::error!(
                rows = self.state.queue.depth(),
                "shutdown grace period passed with rows not yet written"
            ),
        }
        self.background.cancel();
        Ok(())
    }
}

fn spawn_reloads(
    config: &GatewayConfig,
    keys: DeviceKeys,
    source: KeySource,
    secrets: databricks::Secrets,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let on_outcome = move |outcome: Result<usize, &_>| match outcome {
        Ok(devices) => {
            Metrics::outcome(&metrics.registry_reloads, "ok");
            metrics.registry_devices.set(devices as i64);
        }
        Err(_) => Metrics::outcome(&metrics.registry_reloads, "failed"),
    };
    let interval = config.keys_refresh;
    tokio::spawn(async move {
        reload_loop(
            keys,
            source,
            Some(secrets),
            interval,
            on_outcome,
            stop.cancelled_owned(),
        )
        .await
    });
}

fn spawn_limit_pruning(state: AppState, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = every.tick() => state.rate_limits.prune(),
                () = stop.cancelled() => return,
            }
        }
    });
}
