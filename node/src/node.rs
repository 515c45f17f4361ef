//! Assembling one node from its parts, and stopping it again.
//!
//! [`Node::start`] takes everything process-wide from its caller (storage already open, the
//! socket, clock and randomness seams, the metrics renderer), so that `main` runs one node on
//! real sockets and fjall while the simulation runs several in one process on simulated
//! ones. [`NodeHandle::shutdown`] stops every listener, connection, actor and task it started.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidewater_actors::seams::{Clock, Net, NodeRng};
use tidewater_actors::{NodeContext, NodeParts};
use tidewater_cluster::controller::ClusterMetadata;
use tidewater_storage::{LogStore, StateStore, StorageError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cluster::{Addresses, ClusterNode, Gossip, advertised};
use crate::config::Config;
use crate::controller::{Controller, ControllerParts};
use crate::http::{self, ClusterView, HttpState, MetricsRender};
use crate::replication::{NodeCatalog, StreamParts, spawn_follow};

/// How long each listener has to stop accepting at shutdown.
const LISTENER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node looks for partitions of the offsets stream it came to lead, to take over
/// their consumer groups.
const TAKE_OVER_EVERY: Duration = Duration::from_secs(1);

/// What a node is built from: its configuration and every process-wide resource.
pub struct Parts {
    /// The node's configuration (listeners, limits, streams, users).
    pub config: Config,
    /// Keyed state, already open.
    pub state_store: Arc<dyn StateStore>,
    /// Partition logs, already open.
    pub log_store: Arc<dyn LogStore>,
    /// Sockets (every listener goes through it, HTTP included).
    pub net: Arc<dyn Net>,
    /// Wall and monotonic time.
    pub clock: Arc<dyn Clock>,
    /// The node's random numbers.
    pub rng: NodeRng,
    /// Renders `/metrics` (the process's recorder); `None` serves an empty page.
    pub metrics: Option<MetricsRender>,
    /// How the node gossips (chitchat in production, the deterministic detector in simulation).
    pub gossip: Gossip,
    /// The server certificate of `[tls]`, loaded (`None`: no TLS listener).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener could not bind.
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Listen {
        /// mqtt, kafka or http.
        protocol: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Stored state could not be loaded.
    #[error("cannot load {what}: {detail}")]
    Restore {
        /// What was being loaded.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A part of the node could not start.
    #[error("cannot start {what}: {detail}")]
    Start {
        /// What was being started.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Storage could not be flushed at shutdown.
    #[error("cannot flush storage: {0}")]
    Flush(#[from] StorageError),
}

/// Starts nodes.
pub struct Node;

/// A running node: its addresses and the means to stop it.
pub struct NodeHandle {
    ctx: NodeContext,
    span: tracing::Span,
    mqtt_addr: SocketAddr,
    kafka_addr: SocketAddr,
    http_addr: SocketAddr,
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    cluster: Option<(ClusterNode, Controller)>,
    /// stops serving the cluster's streams, and the task that serves them
    cluster_streams: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Node {
    /// Loads the node's state from its stores, binds its listeners and starts serving.
    pub async fn start(parts: Parts) -> Result<NodeHandle, NodeError> {
        let span = tracing::info_span!("node", node = parts.config.node_id);
        Self::start_in_span(parts, span.clone()).instrument(span).await
    }

    async fn start_in_span(parts: Parts, span: tracing::Span) -> Result<NodeHandle, NodeError> {
        let Parts { config, state_store, log_store, net, clock, rng, metrics, gossip, tls } = parts;
        let generation = clock.now_millis().max(0) as u64;
        let ctx = NodeContext::new(NodeParts {
            node_id: config.node_id,
            mqtt: config.mqtt.clone(),
            kafka: config.kafka_settings(),
            authorizer: config.authorizer(),
            state_store,
            log_store,
            net: Arc::clone(&net),
            clock,
            rng,
            memory_budget: config.memory.budget_bytes,
        });
        let (retained, sessions, streams, groups) = match restore(&ctx, &config).await {
            Ok(counts) => counts,
            Err(error) => {
                // what was restored before the failure must not live on beside a later start
                stop_actors(&ctx).await;
                return Err(error);
            }
        };
        ctx.sessions.resume().await;
        tracing::info!(retained, sessions, streams, groups, data_dir = %config.data_dir.display(), "storage opened");
        if !ctx.authorizer.admin_api_protected() {
            tracing::warn!(
                "open for a first try: MQTT and Kafka clients need no credentials and anyone who reaches the HTTP \
                 listener may create and delete streams (set auth.allow_anonymous = false, a user with admin = true, \
                 or auth.admin_token_hash)"
            );
        } else if config.auth.allow_anonymous {
            tracing::warn!("anonymous access is on: clients without a username may connect (auth.allow_anonymous)");
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let bind = |protocol: &'static str, addr: SocketAddr| {
            let net = Arc::clone(&net);
            async move { net.bind(addr).await.map_err(|source| NodeError::Listen { protocol, addr, source }) }
        };
        let mqtt_listener = bind("mqtt", config.listeners.mqtt).await?;
        let kafka_listener = bind("kafka", config.listeners.kafka).await?;
        let mut http_listener = bind("http", config.listeners.http).await?;
        let local = |listener: &dyn tidewater_actors::seams::Listener, configured: SocketAddr| {
            listener.local_addr().unwrap_or(configured)
        };
        // MQTT over TLS, WebSocket and secure WebSocket: each a listener whose handshakes run
        // before the MQTT code sees the connection
        let mut mqtt_more = Vec::new();
        let clock = || Arc::clone(&ctx.clock);
        let ws = |protocol, inner| {
            let path: Arc<str> = Arc::from(config.listeners.ws_path.as_str());
            let max_message = config.mqtt.max_packet_size as usize + 16;
            crate::ws::listener(protocol, inner, path, max_message, ctx.mqtt.connect_timeout(), clock())
        };
        if let Some(addr) = config.listeners.ws {
            let listener = bind("ws", addr).await?;
            tracing::info!(addr = %local(listener.as_ref(), addr), path = %config.listeners.ws_path, "mqtt over websocket listening");
            mqtt_more.push(ws("ws", listener));
        }
        let kafka_listener = match &tls {
            Some(tls) => {
                let mqtts = bind("mqtts", config.listeners.mqtts).await?;
                tracing::info!(addr = %local(mqtts.as_ref(), config.listeners.mqtts), "mqtts listening");
                mqtt_more.push(tls.listener("mqtts", mqtts, clock()));
                if let Some(addr) = config.listeners.wss {
                    let listener = bind("wss", addr).await?;
                    tracing::info!(addr = %local(listener.as_ref(), addr), path = %config.listeners.ws_path, "mqtt over secure websocket listening");
                    mqtt_more.push(ws("wss", tls.listener("wss", listener, clock())));
                }
                if config.tls.http {
                    http_listener = tls.listener("https", http_listener, clock());
                }
                if config.tls.kafka { tls.listener("kafka", kafka_listener, clock()) } else { kafka_listener }
            }
            None => kafka_listener,
        };
        let mqtt_addr = local(mqtt_listener.as_ref(), config.listeners.mqtt);
        let kafka_addr = local(kafka_listener.as_ref(), config.listeners.kafka);
        let http_addr = local(http_listener.as_ref(), config.listeners.http);
        tracing::info!(addr = %mqtt_addr, "mqtt listening");
        tracing::info!(addr = %kafka_addr, advertised = %format!("{}:{}", ctx.kafka.advertised_host, ctx.kafka.advertised_port), tls = tls.is_some() && config.tls.kafka, "kafka listening");
        tracing::info!(addr = %http_addr, tls = tls.is_some() && config.tls.http, "http listening");
        let kafka_advertised = format!("{}:{}", ctx.kafka.advertised_host, ctx.kafka.advertised_port)
            .parse()
            .unwrap_or_else(|_| advertised(kafka_addr, config.cluster.advertise_host.as_deref()));
        let addresses = Addresses {
            mqtt: mqtt_addr,
            kafka: kafka_advertised,
            http: http_addr,
            rpc: config.listeners.rpc,
            gossip: config.listeners.gossip,
        };
        // tls.cluster: the data plane is mutual TLS
        let data_plane =
            tls.as_ref().and_then(|tls| tls.cluster_net(Arc::clone(&net), clock())).unwrap_or_else(|| Arc::clone(&net));
        let cluster =
            match ClusterNode::start(&config, addresses, data_plane, gossip, generation, shutdown_rx.clone()).await {
                Ok(cluster) => cluster,
                Err(error) => {
                    stop_actors(&ctx).await;
                    return Err(error);
                }
            };
        let routing = match ctx.routes.attach(&cluster.forwarder, generation, shutdown_rx.clone()).await {
            Ok(task) => task,
            Err(error) => {
                cluster.leave().await;
                stop_actors(&ctx).await;
                return Err(NodeError::Start { what: "MQTT routes", detail: error.to_string() });
            }
        };
        let controller_parts = ControllerParts {
            node_id: config.node_id,
            generation,
            voters: config.controller_voters(),
            log: Arc::clone(&ctx.log_store),
            state: Arc::clone(&ctx.state_store),
            router: Arc::clone(&cluster.router),
            links: Arc::clone(&cluster.links),
            members: cluster.members(),
            clock: Arc::clone(&ctx.clock),
            rng: ctx.rng.clone(),
            replace_dead_after: Duration::from_millis(config.cluster.replace_dead_after_ms),
        };
        let controller = match Controller::start(controller_parts, shutdown_rx.clone()).await {
            Ok(controller) => controller,
            Err(error) => {
                cluster.leave().await;
                stop_actors(&ctx).await;
                return Err(error);
            }
        };
        let (served_sender, served) = watch::channel(std::collections::BTreeMap::new());
        let view = controller.view();
        let caught_up = config
            .clustered()
            .then(|| caught_up_with_the_cluster(config.node_id, generation, view.metadata.clone(), served.clone()));
        if view.replica.is_some() {
            let catalog = NodeCatalog {
                clustered: config.clustered(),
                voters: config.controller_voters().len(),
                members: cluster.members(),
                metadata: view.metadata.clone(),
                controller_leadership: view.leadership.clone(),
                forwarder: Arc::clone(&cluster.forwarder),
                served,
                clock: Arc::clone(&ctx.clock),
            };
            let _ = ctx.cluster.set(Arc::new(catalog));
        }
        let (acls_in_force, acls_ready) = watch::channel(false);
        let following_acls = crate::replication::spawn_follow_acls(
            ctx.clone(),
            config.node_id,
            generation,
            view.metadata.clone(),
            acls_in_force,
            shutdown_rx.clone(),
        );
        let (streams_stop, streams_stopped) = watch::channel(false);
        let following = spawn_follow(
            StreamParts {
                ctx: ctx.clone(),
                router: Arc::clone(&cluster.router),
                links: Arc::clone(&cluster.links),
                forwarder: Arc::clone(&cluster.forwarder),
                metadata: view.metadata.clone(),
                controller_leadership: view.leadership.clone(),
                generation,
                served: served_sender,
            },
            streams_stopped,
        );
        let cluster_view = ClusterView {
            node_id: cluster.node_id,
            name: cluster.name.clone(),
            members: cluster.members(),
            links: Arc::clone(&cluster.links),
            controller: controller.view(),
        };

        let ready = Arc::new(AtomicBool::new(false));
        let listeners = vec![
            tokio::spawn({
                let (ctx, shutdown, mut acls_ready) = (ctx.clone(), shutdown_rx.clone(), acls_ready.clone());
                async move {
                    // devices wait in the listener's backlog until the node knows the cluster's
                    // streams: a publish must not be acknowledged for lack of a stream it missed
                    if let Some(caught_up) = caught_up {
                        caught_up.await;
                    }
                    let _ = acls_ready.wait_for(|ready| *ready).await;
                    use tidewater_actors::mqtt::connection::run_listener;
                    let more =
                        mqtt_more.into_iter().map(|listener| run_listener(ctx.clone(), listener, shutdown.clone()));
                    let plain = run_listener(ctx.clone(), mqtt_listener, shutdown.clone());
                    futures::future::join(plain, futures::future::join_all(more)).await;
                }
                .in_current_span()
            }),
            tokio::spawn({
                let (ctx, shutdown, mut acls_ready) = (ctx.clone(), shutdown_rx.clone(), acls_ready.clone());
                async move {
                    // no request is served before the ACL bindings are
                    let _ = acls_ready.wait_for(|ready| *ready).await;
                    tidewater_actors::kafka::server::run_listener(ctx, kafka_listener, shutdown).await
                }
                .in_current_span()
            }),
        ];
        let http_state =
            HttpState { metrics, ready: Arc::clone(&ready), ctx: ctx.clone(), cluster: Some(cluster_view) };
        let mut background = vec![
            routing,
            following_acls,
            tokio::spawn(http::serve(http_listener, http_state, shutdown_rx.clone()).in_current_span()),
            tokio::spawn(
                run_retention(ctx.clone(), Duration::from_millis(config.kafka.retention_check_ms), shutdown_rx)
                    .in_current_span(),
            ),
        ];
        background.push(tokio::spawn(
            tidewater_actors::kafka::group::run_take_over(ctx.clone(), TAKE_OVER_EVERY, shutdown.subscribe())
                .in_current_span(),
        ));
        if let Some(tls) = tls {
            background.push(tokio::spawn(crate::tls::run_reload(tls, shutdown.subscribe()).in_current_span()));
        }
        if !config.clustered() {
            // a node alone is ready once its ACL bindings are in force (its controller, the
            // only voter, leads at once); a node of a cluster may wait for the others, and is
            // ready before: its listeners wait
            let _ = acls_ready.clone().wait_for(|ready| *ready).await;
        }
        ready.store(true, Ordering::Release);
        tracing::info!(node_id = config.node_id, "tidewater node ready");
        Ok(NodeHandle {
            ctx,
            span,
            mqtt_addr,
            kafka_addr,
            http_addr,
            ready,
            shutdown,
            listeners,
            background,
            cluster: Some((cluster, controller)),
            cluster_streams: Some((streams_stop, following)),
        })
    }
}

impl NodeHandle {
    /// The node's shared context (streams, sessions, stores).
    pub fn context(&self) -> &NodeContext {
        &self.ctx
    }

    /// The controller group as this node sees it.
    pub fn controller(&self) -> Option<crate::controller::ControllerView> {
        self.cluster.as_ref().map(|(_, controller)| controller.view())
    }

    /// The bound MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The bound Kafka address.
    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops the node: listeners and connections first, then sessions (persisted), consumer
    /// groups and partitions (after writing what they hold), then flushes storage.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let span = self.span.clone();
        self.stop().instrument(span).await
    }

    async fn stop(mut self) -> Result<(), NodeError> {
        tracing::info!("shutting down");
        self.ready.store(false, Ordering::Release);
        // the cluster's partitions first (their replicas write their raft records), then the
        // controller; the others hear first, so that they stop counting on this node
        if let Some((stop, following)) = self.cluster_streams.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(10), following).await.is_err() {
                tracing::warn!("the cluster's partitions did not stop in time");
            }
        }
        if let Some((cluster, controller)) = self.cluster.take() {
            controller.stop(&cluster.router).await;
            cluster.leave().await;
        }
        let _ = self.shutdown.send(true);
        for task in self.listeners {
            let _ = tokio::time::timeout(LISTENER_STOP_TIMEOUT, task).await;
        }
        stop_actors(&self.ctx).await;
        self.ctx.state_store.sync()?;
        self.ctx.log_store.sync()?;
        for mut task in self.background {
            if tokio::time::timeout(LISTENER_STOP_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long a node of a cluster waits to catch up with the controller before it serves MQTT
/// anyway (a node that cannot reach a majority still serves what it knows).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// Resolves once this node's registration at `generation` is applied (so every command the
/// controller committed before it is applied too: a stream created while the node was down
/// is known) and every stream of the metadata is served; or after [`CATCH_UP_WAIT`].
async fn caught_up_with_the_cluster(
    node_id: u64,
    generation: u64,
    mut metadata: watch::Receiver<ClusterMetadata>,
    mut served: watch::Receiver<crate::replication::Served>,
) {
    let caught_up = async {
        let _ = metadata
            .wait_for(|metadata| metadata.nodes.get(&node_id).is_some_and(|node| node.generation == generation))
            .await;
        let streams: Vec<String> = metadata.borrow().streams.keys().cloned().collect();
        let _ = served.wait_for(|served| streams.iter().all(|name| served.contains_key(name))).await;
    };
    match tokio::time::timeout(CATCH_UP_WAIT, caught_up).await {
        Ok(()) => tracing::info!("caught up with the cluster's metadata: serving MQTT"),
        Err(_) => tracing::warn!(
            "the cluster's metadata is not caught up within {CATCH_UP_WAIT:?}: serving MQTT with what this node knows"
        ),
    }
}

/// Loads retained messages, sessions, streams and groups; their counts.
async fn restore(ctx: &NodeContext, config: &Config) -> Result<(usize, usize, usize, usize), NodeError> {
    let failed = |what: &'static str| move |error: String| NodeError::Restore { what, detail: error };
    let retained = ctx.router.load_retained().map_err(|e| failed("retained messages")(e.to_string()))?;
    let sessions = ctx.sessions.restore(ctx).await.map_err(|e| failed("persistent sessions")(e.to_string()))?;
    let streams = ctx.streams.restore(&config.streams).await.map_err(|e| failed("streams")(e.to_string()))?;
    let groups = ctx.groups.restore(ctx).await;
    Ok((retained, sessions, streams, groups))
}

/// Stops sessions (persisting them), consumer groups and partitions (after what they hold).
async fn stop_actors(ctx: &NodeContext) {
    ctx.sessions.shutdown().await;
    ctx.groups.shutdown().await;
    ctx.streams.shutdown().await;
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
