//! Every metric this crate emits, in one place (documented in the README).
//!
//! Every series carries a `node` label: several simulated nodes share one process (and one
//! recorder, when one is installed), and their series must not overwrite each other.

/// Open MQTT network connections (gauge).
pub const MQTT_CONNECTIONS: &str = "tidewater_mqtt_connections";
/// MQTT sessions held, connected or not (gauge).
pub const MQTT_SESSIONS: &str = "tidewater_mqtt_sessions";
/// Subscriptions held by all sessions (gauge).
pub const MQTT_SUBSCRIPTIONS: &str = "tidewater_mqtt_subscriptions";
/// Retained messages stored (gauge).
pub const MQTT_RETAINED: &str = "tidewater_mqtt_retained_messages";
/// PUBLISH packets accepted from clients, by `qos` (counter).
pub const MQTT_MESSAGES_RECEIVED: &str = "tidewater_mqtt_messages_received_total";
/// PUBLISH packets sent to clients, by `qos` (counter).
pub const MQTT_MESSAGES_SENT: &str = "tidewater_mqtt_messages_sent_total";
/// Bytes read from MQTT connections (counter).
pub const MQTT_BYTES_RECEIVED: &str = "tidewater_mqtt_bytes_received_total";
/// Bytes written to MQTT connections (counter).
pub const MQTT_BYTES_SENT: &str = "tidewater_mqtt_bytes_sent_total";
/// Messages forwarded to (`out`) and from (`in`) other nodes of the cluster.
pub const MQTT_FORWARDED: &str = "tidewater_mqtt_forwarded_messages_total";
/// Messages dropped, by `reason` (counter): `queue_full`, `memory_budget`, `expired`,
/// `packet_too_large`, `not_authorized`.
pub const MQTT_MESSAGES_DROPPED: &str = "tidewater_mqtt_messages_dropped_total";
/// Connections refused or closed for a protocol reason, by `reason` (counter).
pub const MQTT_CONNECTIONS_REFUSED: &str = "tidewater_mqtt_connections_refused_total";
/// Times a publisher's connection paused reading because deliveries between sessions filled
/// their share of the memory budget (counter).
pub const MQTT_PUBLISHER_PAUSES: &str = "tidewater_mqtt_publisher_pauses_total";
/// Requests refused for a limit of the node's configuration, by `limit`: `topic_levels`,
/// `subscriptions` (counter).
pub const LIMITS_HIT: &str = "tidewater_limits_hit_total";
/// Bytes of message data the node holds, by `part`: `session_queues`, `deliveries` (gauge).
pub const MEMORY_BYTES: &str = "tidewater_memory_bytes";
/// The node's memory budget, `memory.budget_bytes` (gauge).
pub const MEMORY_BUDGET: &str = "tidewater_memory_budget_bytes";

/// Registers descriptions of every metric (once per process, by `main`).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(MQTT_CONNECTIONS, "open MQTT network connections");
    describe_gauge!(MQTT_SESSIONS, "MQTT sessions held, connected or not");
    describe_gauge!(MQTT_SUBSCRIPTIONS, "subscriptions held by all sessions");
    describe_gauge!(MQTT_RETAINED, "retained messages stored");
    describe_counter!(MQTT_MESSAGES_RECEIVED, "PUBLISH packets accepted from clients");
    describe_counter!(MQTT_MESSAGES_SENT, "PUBLISH packets sent to clients");
    describe_counter!(MQTT_BYTES_RECEIVED, "bytes read from MQTT connections");
    describe_counter!(MQTT_BYTES_SENT, "bytes written to MQTT connections");
    describe_counter!(MQTT_FORWARDED, "MQTT messages forwarded to (out) and from (in) other nodes");
    describe_counter!(MQTT_MESSAGES_DROPPED, "messages dropped, by reason");
    describe_counter!(MQTT_CONNECTIONS_REFUSED, "connections refused or closed for a protocol reason");
    describe_counter!(MQTT_PUBLISHER_PAUSES, "publisher connections paused by the memory budget's delivery share");
    describe_counter!(LIMITS_HIT, "requests refused for a configured limit, by limit");
    describe_gauge!(MEMORY_BYTES, "bytes of message data held, by part (session_queues, deliveries)");
    describe_gauge!(MEMORY_BUDGET, "the node's memory budget (memory.budget_bytes)");
    describe_counter!(tidewater_cluster::invariants::INVARIANT_VIOLATIONS, "invariant violations seen by the node");
}

/// Counts a request refused for the configured limit `limit` (rare: the labelled lookup is
/// fine here).
pub fn limit_hit(limit: &'static str) {
    metrics::counter!(LIMITS_HIT, "limit" => limit).increment(1);
}

/// Counter handles registered once per node, so the per-message path does no key hashing
/// or label allocation (a labelled `counter!` costs both on every call).
#[derive(Clone)]
pub struct MqttCounters {
    received: [metrics::Counter; 3],
    sent: [metrics::Counter; 3],
    /// Bytes read from MQTT connections.
    pub bytes_received: metrics::Counter,
    /// Bytes written to MQTT connections.
    pub bytes_sent: metrics::Counter,
    dropped: [(&'static str, metrics::Counter); 5],
    /// Publisher connections paused by the memory budget.
    pub publisher_pauses: metrics::Counter,
    /// Open MQTT connections.
    pub connections: metrics::Gauge,
    /// MQTT sessions (connected or not).
    pub sessions: metrics::Gauge,
    /// Subscriptions held.
    pub subscriptions: metrics::Gauge,
    /// Retained messages stored.
    pub retained: metrics::Gauge,
    node: String,
}

impl MqttCounters {
    /// Registers node `node_id`'s handles with the installed recorder, every series at zero.
    pub fn register(node_id: u64) -> Self {
        let node = node_id.to_string();
        let by_qos = |name: &'static str| {
            ["0", "1", "2"].map(|qos| metrics::counter!(name, "node" => node.clone(), "qos" => qos))
        };
        let counters = Self {
            received: by_qos(MQTT_MESSAGES_RECEIVED),
            sent: by_qos(MQTT_MESSAGES_SENT),
            bytes_received: metrics::counter!(MQTT_BYTES_RECEIVED, "node" => node.clone()),
            bytes_sent: metrics::counter!(MQTT_BYTES_SENT, "node" => node.clone()),
            dropped: ["queue_full", "memory_budget", "expired", "packet_too_large", "not_authorized"].map(|reason| {
                (reason, metrics::counter!(MQTT_MESSAGES_DROPPED, "node" => node.clone(), "reason" => reason))
            }),
            connections: metrics::gauge!(MQTT_CONNECTIONS, "node" => node.clone()),
            sessions: metrics::gauge!(MQTT_SESSIONS, "node" => node.clone()),
            subscriptions: metrics::gauge!(MQTT_SUBSCRIPTIONS, "node" => node.clone()),
            retained: metrics::gauge!(MQTT_RETAINED, "node" => node.clone()),
            publisher_pauses: metrics::counter!(MQTT_PUBLISHER_PAUSES, "node" => node.clone()),
            node,
        };
        for counter in counters.received.iter().chain(&counters.sent).chain(counters.dropped.iter().map(|(_, c)| c)) {
            counter.increment(0);
        }
        counters.bytes_received.increment(0);
        counters.bytes_sent.increment(0);
        counters.publisher_pauses.increment(0);
        counters.connections.increment(0.0);
        counters.sessions.increment(0.0);
        counters.subscriptions.set(0.0);
        counters.retained.set(0.0);
        counters
    }

    /// Counts a connection refused or closed for a protocol reason.
    pub fn refused(&self, reason: &'static str) {
        metrics::counter!(MQTT_CONNECTIONS_REFUSED, "node" => self.node.clone(), "reason" => reason).increment(1);
    }

    /// Counts a PUBLISH accepted from a client.
    pub fn received(&self, qos: u8) {
        self.received[usize::from(qos.min(2))].increment(1);
    }

    /// Counts a PUBLISH sent to a client.
    pub fn sent(&self, qos: u8) {
        self.sent[usize::from(qos.min(2))].increment(1);
    }

    /// Counts a dropped message.
    pub fn dropped(&self, reason: &'static str) {
        match self.dropped.iter().find(|(known, _)| *known == reason) {
            Some((_, counter)) => counter.increment(1),
            None => {
                metrics::counter!(MQTT_MESSAGES_DROPPED, "node" => self.node.clone(), "reason" => reason).increment(1)
            }
        }
    }
}

impl std::fmt::Debug for MqttCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MqttCounters")
    }
}

/// Sets node `node_id`'s memory gauges from its budget (before each scrape of `/metrics`).
pub fn memory_gauges(node_id: u64, budget: &crate::memory::MemoryBudget) {
    let node = node_id.to_string();
    metrics::gauge!(MEMORY_BUDGET, "node" => node.clone()).set(budget.budget() as f64);
    metrics::gauge!(MEMORY_BYTES, "node" => node.clone(), "part" => "session_queues").set(budget.queued() as f64);
    metrics::gauge!(MEMORY_BYTES, "node" => node, "part" => "deliveries").set(budget.delivering() as f64);
}
