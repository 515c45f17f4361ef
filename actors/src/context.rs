//! The per-node context: everything a node's actors share, passed explicitly (no globals),
//! so that many simulated nodes can live in one process.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tidewater_storage::{LogStore, StateStore};

use crate::kafka::group::GroupRegistry;
use crate::kafka::producer_ids::ProducerIds;
use crate::mqtt::auth::Authorizer;
use crate::mqtt::registry::SessionRegistry;
use crate::mqtt::router::Router;
use crate::mqtt::session_state::{QueueOverflow, SessionLimits};
use crate::seams::{Clock, Net, NodeRng};
use crate::stream::registry::StreamRegistry;

/// MQTT limits and behaviour: the `[mqtt]` section of the node's configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// Maximum packet size accepted and advertised (bytes).
    pub max_packet_size: u32,
    /// Receive Maximum advertised and outgoing in-flight window per session.
    pub max_inflight: u16,
    /// Messages queued per session beyond those in flight.
    pub max_queued_messages: usize,
    /// Bytes (topic and payload) queued per session beyond those in flight: with
    /// `max_queued_messages`, whichever is reached first applies `queue_overflow`.
    pub max_queued_bytes: usize,
    /// What happens when a session's queue is full.
    pub queue_overflow: QueueOverflow,
    /// Maximum concurrent connections.
    pub max_connections: usize,
    /// Keepalive ceiling; v5 clients asking more (or 0) are told this as Server Keep Alive.
    pub max_keepalive: u16,
    /// Topic Alias Maximum advertised.
    pub max_topic_alias: u16,
    /// Ceiling on Session Expiry Interval (seconds).
    pub max_session_expiry: u32,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// How long a new connection has to send CONNECT (ms).
    pub connect_timeout_ms: u64,
    /// Longest client identifier accepted (bytes): a longer one is refused with CONNACK 0x85
    /// (3.1.1: 0x02), as EMQX's `max_clientid_len`; a persistent session keeps its id in
    /// every key it stores.
    pub max_client_id_len: usize,
    /// Most levels a topic name or filter may have (EMQX's `max_topic_levels`): a PUBLISH or
    /// will past it is refused as an invalid topic name (0x90), a filter with SUBACK 0x8F.
    pub max_topic_levels: usize,
    /// Most subscriptions one session may hold (EMQX's `max_subscriptions`): a SUBSCRIBE of a
    /// new filter past it gets SUBACK 0x97 Quota exceeded (3.1.1: 0x80).
    pub max_subscriptions: usize,
    /// Most connections from one IP address at once (none when unset): one more is refused
    /// with CONNACK 0x97 Quota exceeded (3.1.1: 0x03).
    pub max_connections_per_address: Option<usize>,
    /// Most CONNECTs the node accepts a second, with a second's worth as burst (EMQX's
    /// `max_conn_rate`; none when unset): one more is refused with CONNACK 0x9F Connection rate
    /// exceeded (3.1.1: 0x03).
    pub max_connect_rate: Option<u32>,
    /// Most PUBLISH packets a connection may send a second, with a second's worth as burst
    /// (none when unset): past it the connection is closed, v5 with DISCONNECT 0x96 Message
    /// rate too high.
    pub max_publish_rate: Option<u32>,
    /// Most bytes of PUBLISH payload a connection may send a second, as `max_publish_rate`.
    pub max_publish_bytes_rate: Option<u64>,
    /// Test-only, never read from configuration: acknowledge PUBLISH before what it promises
    /// is durable, so that the simulation can show its checker catches a lost acknowledgement.
    #[serde(skip)]
    pub test_ack_before_durable: bool,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 64 << 20,
            queue_overflow: QueueOverflow::DropOldest,
            max_connections: 100_000,
            max_keepalive: u16::MAX,
            max_topic_alias: 64,
            max_session_expiry: u32::MAX,
            retain_available: true,
            connect_timeout_ms: 10_000,
            max_client_id_len: 1024,
            max_topic_levels: 128,
            max_subscriptions: 100_000,
            max_connections_per_address: None,
            max_connect_rate: None,
            max_publish_rate: None,
            max_publish_bytes_rate: None,
            test_ack_before_durable: false,
        }
    }
}

impl MqttSettings {
    /// How long a new connection has to send CONNECT.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The limits each session enforces, its queue counted against `budget`.
    pub fn session_limits(&self, budget: &Arc<crate::memory::MemoryBudget>) -> SessionLimits {
        SessionLimits {
            budget: Arc::clone(budget),
            max_inflight: self.max_inflight,
            max_queued: self.max_queued_messages,
            max_queued_bytes: self.max_queued_bytes,
            overflow: self.queue_overflow,
            max_topic_alias: self.max_topic_alias,
            retain_available: self.retain_available,
            max_topic_levels: self.max_topic_levels,
            max_subscriptions: self.max_subscriptions,
            max_publish_rate: self.max_publish_rate,
            max_publish_bytes_rate: self.max_publish_bytes_rate,
        }
    }
}

/// Kafka protocol settings, from the node's configuration.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Host clients are told to connect to.
    pub advertised_host: String,
    /// Port clients are told to connect to.
    pub advertised_port: i32,
    /// Create a free stream when a client asks for an unknown topic.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created stream.
    pub default_partitions: u32,
    /// Replication factor of a stream of the cluster created without one.
    pub default_replication_factor: u16,
    /// Largest produce payload per partition (bytes).
    pub max_message_bytes: usize,
    /// Largest Fetch response (bytes), whatever the client asks.
    pub fetch_max_bytes: usize,
    /// How long a follower may lag before it leaves the ISR (ms).
    pub replica_lag_time_max_ms: u64,
    /// A client connection with no request for this long is closed (ms).
    pub connections_max_idle_ms: u64,
    /// `kafka.max_connections_per_address` (Kafka's `max.connections.per.ip`).
    pub max_connections_per_address: Option<usize>,
    /// `kafka.request_read_timeout_ms`: a request begun must arrive whole within this.
    pub request_read_timeout_ms: u64,
    /// `kafka.max_connect_rate`: new Kafka connections a second on the node.
    pub max_connect_rate: Option<u32>,
    /// `kafka.max_produce_bytes_rate`: Produce bytes a second per connection (a quota).
    pub max_produce_bytes_rate: Option<u64>,
    /// `kafka.max_fetch_bytes_rate`: fetched bytes a second per connection (a quota).
    pub max_fetch_bytes_rate: Option<u64>,
    /// Delay before the first rebalance of an empty group (ms).
    pub group_initial_rebalance_delay_ms: u64,
    /// Smallest and largest session timeout a consumer may ask for (ms).
    pub group_session_timeout_ms: (i32, i32),
    /// How long `__consumer_offsets` keeps what was written (ms), as Kafka's
    /// `offsets.retention.minutes`: a group with members rewrites its offsets before that.
    pub offsets_retention_ms: i64,
    /// Names the cluster in the cluster id.
    pub cluster_name: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: 9092,
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 3,
            max_message_bytes: 1024 * 1024,
            fetch_max_bytes: 55 << 20,
            replica_lag_time_max_ms: 10_000,
            connections_max_idle_ms: 600_000,
            max_connections_per_address: None,
            request_read_timeout_ms: 30_000,
            max_connect_rate: None,
            max_produce_bytes_rate: None,
            max_fetch_bytes_rate: None,
            group_initial_rebalance_delay_ms: 0,
            group_session_timeout_ms: (6_000, 1_800_000),
            offsets_retention_ms: 7 * 24 * 3_600_000,
            cluster_name: "local".to_string(),
        }
    }
}

/// What a node's actors share.
pub struct NodeInner {
    /// This node's id.
    pub node_id: u64,
    /// MQTT settings.
    pub mqtt: MqttSettings,
    /// Kafka settings.
    pub kafka: KafkaSettings,
    /// Users and ACL.
    pub authorizer: Authorizer,
    /// Producer ids for idempotent producers.
    pub producer_ids: ProducerIds,
    /// Keyed state (sessions, retained).
    pub state_store: Arc<dyn StateStore>,
    /// Partition logs.
    pub log_store: Arc<dyn LogStore>,
    /// Sockets.
    pub net: Arc<dyn Net>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub rng: NodeRng,
    /// Subscriptions and retained messages.
    pub router: Router,
    /// Which nodes of the cluster subscribe to what; messages forwarded between them.
    pub routes: Arc<crate::mqtt::cluster_routes::ClusterRoutes>,
    /// Sessions by client id.
    pub sessions: SessionRegistry,
    /// Streams and their partitions.
    pub streams: StreamRegistry,
    /// Consumer groups.
    pub groups: GroupRegistry,
    /// Open MQTT connections.
    pub connections: AtomicUsize,
    /// Open MQTT connections per IP address, counted when `mqtt.max_connections_per_address`
    /// is set.
    pub connections_by_address: Arc<crate::rate_limit::AddressCounts>,
    /// Open Kafka connections per IP address, counted when `kafka.max_connections_per_address`
    /// is set.
    pub kafka_connections_by_address: Arc<crate::rate_limit::AddressCounts>,
    /// The node's CONNECT bucket, when `mqtt.max_connect_rate` is set.
    pub connect_rate: std::sync::Mutex<Option<crate::rate_limit::TokenBucket>>,
    /// The node's bucket of new Kafka connections, when `kafka.max_connect_rate` is set.
    pub kafka_connect_rate: std::sync::Mutex<Option<crate::rate_limit::TokenBucket>>,
    /// The memory budget of message data.
    pub memory: Arc<crate::memory::MemoryBudget>,
    /// MQTT counters, registered once.
    pub mqtt_counters: crate::metrics::MqttCounters,
    /// The node's tracing span (`node = <id>`): actors run their messages inside it, since
    /// ractor starts an actor's loop outside the spawning task's span.
    pub span: tracing::Span,
    /// The cluster this node is part of, set once the node has joined it (before any
    /// listener serves).
    pub cluster: std::sync::OnceLock<Arc<dyn crate::stream::catalog::ClusterCatalog>>,
}

/// A cheap handle on the node's shared state.
#[derive(Clone)]
pub struct NodeContext(Arc<NodeInner>);

impl std::ops::Deref for NodeContext {
    type Target = NodeInner;

    fn deref(&self) -> &NodeInner {
        &self.0
    }
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext").field("node_id", &self.node_id).finish()
    }
}

/// The parts a node is built from.
pub struct NodeParts {
    /// This node's id.
    pub node_id: u64,
    /// MQTT settings.
    pub mqtt: MqttSettings,
    /// Kafka settings.
    pub kafka: KafkaSettings,
    /// Users and ACL.
    pub authorizer: Authorizer,
    /// Keyed state.
    pub state_store: Arc<dyn StateStore>,
    /// Partition logs.
    pub log_store: Arc<dyn LogStore>,
    /// Sockets.
    pub net: Arc<dyn Net>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub rng: NodeRng,
    /// Bytes of message data the node may hold (`memory.budget_bytes`).
    pub memory_budget: usize,
}

impl NodeContext {
    /// Builds a node's context from its seams and settings.
    pub fn new(parts: NodeParts) -> Self {
        let mqtt_counters = crate::metrics::MqttCounters::register(parts.node_id);
        let streams = StreamRegistry::new(Arc::clone(&parts.state_store), Arc::clone(&parts.log_store));
        // (captured by NodeContext::new's caller, Node::start, inside the node's span)
        Self(Arc::new_cyclic(|inner| {
            let routes = Arc::new(crate::mqtt::cluster_routes::ClusterRoutes::new(parts.node_id, inner.clone()));
            let router = Router::new(Arc::clone(&parts.state_store), &mqtt_counters, Arc::clone(&routes));
            let bucket =
                |rate: Option<u32>| rate.map(|rate| crate::rate_limit::TokenBucket::per_second(rate.into(), 0));
            let (connect_rate, kafka_connect_rate) =
                (bucket(parts.mqtt.max_connect_rate), bucket(parts.kafka.max_connect_rate));
            NodeInner {
                node_id: parts.node_id,
                mqtt: parts.mqtt,
                kafka: parts.kafka,
                authorizer: parts.authorizer,
                producer_ids: ProducerIds::new(Arc::clone(&parts.state_store), parts.node_id),
                state_store: parts.state_store,
                log_store: parts.log_store,
                net: parts.net,
                clock: parts.clock,
                rng: parts.rng,
                router,
                routes,
                sessions: SessionRegistry::default(),
                streams,
                groups: GroupRegistry::default(),
                connections: AtomicUsize::new(0),
                connections_by_address: Arc::default(),
                kafka_connections_by_address: Arc::default(),
                connect_rate: std::sync::Mutex::new(connect_rate),
                kafka_connect_rate: std::sync::Mutex::new(kafka_connect_rate),
                memory: crate::memory::MemoryBudget::new(parts.memory_budget),
                mqtt_counters,
                span: tracing::Span::current(),
                cluster: std::sync::OnceLock::new(),
            }
        }))
    }

    /// The context of `inner` (from a weak reference held where a strong one would be a cycle).
    pub fn from_inner(inner: Arc<NodeInner>) -> Self {
        Self(inner)
    }

    /// Milliseconds since the epoch, from the clock seam.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_millis()
    }

    /// A node with default settings and in-memory storage, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::for_tests_with(Arc::new(tidewater_storage::MemoryStore::new()))
    }

    /// [`NodeContext::for_tests`] on a given in-memory store (to arm its faults).
    #[cfg(test)]
    pub(crate) fn for_tests_with(store: Arc<tidewater_storage::MemoryStore>) -> Self {
        Self::new(NodeParts {
            node_id: 1,
            mqtt: MqttSettings::default(),
            kafka: KafkaSettings::default(),
            authorizer: Authorizer::allow_all(),
            state_store: store.clone(),
            log_store: store,
            net: Arc::new(crate::seams::TokioNet),
            clock: Arc::new(crate::seams::MonotonicClock::from_system()),
            rng: NodeRng::seeded(7),
            memory_budget: crate::memory::DEFAULT_BUDGET,
        })
    }
}
