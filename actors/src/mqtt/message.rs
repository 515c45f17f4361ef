//! The broker's in-memory message: what a PUBLISH carries once it is accepted, shared by
//! every subscriber it is delivered to (`Arc<Message>`), and what persistent sessions store.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// MQTT 5 properties that travel with a message from publisher to subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    /// Payload Format Indicator (1 = UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }
}

/// An accepted application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The topic name.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// MQTT 5 properties passed through.
    pub properties: MessageProperties,
    /// When the message expires (ms since the epoch), from Message Expiry Interval.
    pub expires_at_ms: Option<i64>,
    /// When the broker received it (ms since the epoch).
    pub received_at_ms: i64,
    /// The client id of the publisher (for no-local), shared with its session.
    pub publisher: std::sync::Arc<str>,
}

impl Message {
    /// Whether the message has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|deadline| now_ms >= deadline)
    }

    /// Its topic and payload bytes: what queues and forwards count against their byte bounds.
    pub fn bytes(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// Seconds left before expiry (rounded up), for the forwarded Message Expiry Interval.
    pub fn remaining_expiry_secs(&self, now_ms: i64) -> Option<u32> {
        self.expires_at_ms.map(|deadline| ((deadline - now_ms).max(0) as u64).div_ceil(1000) as u32)
    }
}

/// How a subscriber's retained messages are sent at subscribe time (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetainHandling {
    /// Send retained messages at every subscribe.
    SendAlways,
    /// Send them only if the subscription did not exist.
    SendIfNew,
    /// Never send them.
    Never,
}

/// The options of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: u8,
    /// Do not deliver the subscriber's own publishes.
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    /// When retained messages are sent.
    pub retain_handling: RetainHandling,
    /// Subscription Identifier, if given.
    pub subscription_id: Option<u32>,
}

/// One delivery of a message to one session: the options merged over all of the session's
/// matching subscriptions.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: std::sync::Arc<Message>,
    /// QoS to deliver with (the maximum over matching subscriptions, capped by the message's).
    pub qos: u8,
    /// RETAIN flag to deliver with.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
}
