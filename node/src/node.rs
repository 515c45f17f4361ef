//! Wiring one node: storage, context, listeners, and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tidewater_actors::seams::{Net, NodeRng, SystemClock, TokioNet};
use tidewater_actors::{NodeContext, NodeParts};
use tidewater_storage::{FjallStore, LogStore, StateStore};
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{self, HttpState};

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    tidewater_actors::metrics::describe();

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = Arc::new(
        FjallStore::open(&config.data_dir.join("store"), config.fsync_policy()?)
            .with_context(|| format!("cannot open storage in {}", config.data_dir.display()))?,
    );
    let state_store: Arc<dyn StateStore> = store.clone();
    let log_store: Arc<dyn LogStore> = store.clone();
    let net: Arc<dyn Net> = Arc::new(TokioNet);

    let ctx = NodeContext::new(NodeParts {
        node_id: config.node_id,
        mqtt: config.mqtt.clone(),
        kafka: config.kafka_settings(),
        authorizer: config.authorizer(),
        state_store: Arc::clone(&state_store),
        log_store,
        net: Arc::clone(&net),
        clock: Arc::new(SystemClock),
        rng: NodeRng::from_os(),
    });
    let span = tracing::info_span!("node", node = config.node_id);
    let _entered = span.enter();

    let retained = ctx.router.load_retained().context("cannot load retained messages")?;
    let sessions = ctx.sessions.restore(&ctx).await.context("cannot load persistent sessions")?;
    let streams = ctx.streams.restore(&config.streams).await.context("cannot start streams")?;
    let groups = ctx.groups.restore(&ctx).await;
    tracing::info!(retained, sessions, streams, groups, data_dir = %config.data_dir.display(), "storage opened");
    if config.auth.allow_anonymous {
        tracing::warn!("anonymous access is on: clients without a username may connect (auth.allow_anonymous)");
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mqtt_listener = net
        .bind(config.listeners.mqtt)
        .await
        .with_context(|| format!("cannot listen for MQTT on {}", config.listeners.mqtt))?;
    tracing::info!(addr = %mqtt_listener.local_addr()?, "mqtt listening");
    let mqtt_task =
        tokio::spawn(tidewater_actors::mqtt::connection::run_listener(ctx.clone(), mqtt_listener, shutdown_rx.clone()));

    let kafka_listener = net
        .bind(config.listeners.kafka)
        .await
        .with_context(|| format!("cannot listen for Kafka on {}", config.listeners.kafka))?;
    tracing::info!(addr = %kafka_listener.local_addr()?, advertised = %format!("{}:{}", ctx.kafka.advertised_host, ctx.kafka.advertised_port), "kafka listening");
    let kafka_task =
        tokio::spawn(tidewater_actors::kafka::server::run_listener(ctx.clone(), kafka_listener, shutdown_rx.clone()));

    let ready = Arc::new(AtomicBool::new(false));
    let http_listener = tokio::net::TcpListener::bind(config.listeners.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.listeners.http))?;
    tracing::info!(addr = %http_listener.local_addr()?, "http listening");
    let http_state = HttpState { metrics, ready: Arc::clone(&ready), ctx: ctx.clone() };
    let http_task = tokio::spawn(http::serve(http_listener, http_state, shutdown_rx.clone()));
    tracing::info!(
        rpc = %config.listeners.rpc,
        gossip = %config.listeners.gossip,
        "rpc and gossip listeners are not served yet: this build runs a single node"
    );

    let retention_task = tokio::spawn(run_retention(
        ctx.clone(),
        Duration::from_millis(config.kafka.retention_check_ms),
        shutdown_rx.clone(),
    ));

    ready.store(true, Ordering::Release);
    tracing::info!(node_id = config.node_id, "tidewater node ready");

    wait_for_signal().await;
    tracing::info!("shutting down");
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), kafka_task).await;
    ctx.sessions.shutdown().await;
    state_store.sync().context("cannot flush storage")?;
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    retention_task.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Applies stream retention every `period` until shutdown.
async fn run_retention(ctx: NodeContext, period: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = ticker.tick() => ctx.streams.apply_retention(ctx.now_ms()),
        }
    }
}
