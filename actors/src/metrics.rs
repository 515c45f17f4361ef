//! Every metric this crate emits, in one place (documented in the README).

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
/// Messages dropped, by `reason` (counter): `queue_full`, `expired`, `packet_too_large`,
/// `not_authorized`.
pub const MQTT_MESSAGES_DROPPED: &str = "tidewater_mqtt_messages_dropped_total";
/// Connections refused or closed for a protocol reason, by `reason` (counter).
pub const MQTT_CONNECTIONS_REFUSED: &str = "tidewater_mqtt_connections_refused_total";

/// Registers descriptions so that `/metrics` shows every metric from the start.
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
    describe_counter!(MQTT_MESSAGES_DROPPED, "messages dropped, by reason");
    describe_counter!(MQTT_CONNECTIONS_REFUSED, "connections refused or closed for a protocol reason");
    for qos in ["0", "1", "2"] {
        metrics::counter!(MQTT_MESSAGES_RECEIVED, "qos" => qos).absolute(0);
        metrics::counter!(MQTT_MESSAGES_SENT, "qos" => qos).absolute(0);
    }
    for reason in ["queue_full", "expired", "packet_too_large", "not_authorized"] {
        metrics::counter!(MQTT_MESSAGES_DROPPED, "reason" => reason).absolute(0);
    }
    metrics::counter!(MQTT_BYTES_RECEIVED).absolute(0);
    metrics::counter!(MQTT_BYTES_SENT).absolute(0);
    metrics::gauge!(MQTT_CONNECTIONS).set(0.0);
    metrics::gauge!(MQTT_SESSIONS).set(0.0);
    metrics::gauge!(MQTT_SUBSCRIPTIONS).set(0.0);
    metrics::gauge!(MQTT_RETAINED).set(0.0);
}
