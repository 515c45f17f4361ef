//! The MQTT session protocol, sans-IO.
//!
//! [`SessionState`] holds everything a session remembers (subscriptions, QoS 1/2 in flight
//! both ways, the queue for an offline or slow client) and the state of its current
//! connection (aliases, flow-control window, will). It takes packets and deliveries in and
//! gives [`Effect`]s out; the `MqttSession` actor performs them (socket writes, routing,
//! storage). No clocks, sockets or actors here: the current time is an argument.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::lookup::LookupMap;
use crate::mqtt::auth::{Authorizer, Identity};
use crate::mqtt::codec::{
    self, DisconnectReasonCode, LastWill, Packet, ProtocolVersion, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use crate::mqtt::message::{Delivery, Message, MessageProperties, RetainHandling, SubOptions};
use crate::mqtt::topic::{self, TopicError};
use crate::rate_limit::TokenBucket;

/// What to do when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOverflow {
    /// Drop the oldest queued message to make room.
    DropOldest,
    /// Drop the message that does not fit.
    DropNew,
}

/// Broker-wide limits a session enforces.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// The node's memory budget, which the queues of all sessions share.
    pub budget: std::sync::Arc<crate::memory::MemoryBudget>,
    /// Receive Maximum advertised, and the cap on messages in flight to a client.
    pub max_inflight: u16,
    /// Messages queued per session beyond those in flight.
    pub max_queued: usize,
    /// Bytes (topic and payload) queued per session beyond those in flight, at most.
    pub max_queued_bytes: usize,
    /// What happens when the queue is full.
    pub overflow: QueueOverflow,
    /// Topic Alias Maximum advertised to v5 clients.
    pub max_topic_alias: u16,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Most levels of a topic name or filter.
    pub max_topic_levels: usize,
    /// Most subscriptions the session may hold.
    pub max_subscriptions: usize,
    /// PUBLISH packets a connection may send a second.
    pub max_publish_rate: Option<u32>,
    /// PUBLISH payload bytes a connection may send a second.
    pub max_publish_bytes_rate: Option<u64>,
}

/// What the client said about itself in CONNECT that governs this connection.
#[derive(Debug, Clone)]
pub struct ConnectionParams {
    /// Protocol version of the connection.
    pub version: ProtocolVersion,
    /// The client's Receive Maximum (65535 when absent).
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size.
    pub max_packet_size: Option<u32>,
    /// The client's Topic Alias Maximum.
    pub topic_alias_max: u16,
    /// Who the client is.
    pub identity: Identity,
    /// The will message and its delay (seconds).
    pub will: Option<(LastWill, u32)>,
}

/// A side effect the session asks its host to perform, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Write a packet to the client. Boxed: a `Packet` is 384 B, and an effect is moved
    /// half a dozen times on its way to the encoder (one allocation costs less than those
    /// copies, which were 13 % of the broker's CPU at 550k msg/s).
    Send(Box<Packet>),
    /// Route a message accepted from the client to subscribers and bound streams.
    Route {
        /// The message.
        message: Arc<Message>,
        /// The packet id it came with (0 at QoS 0).
        pkid: u16,
    },
    /// A subscription was added or replaced; the host updates the router and, per the
    /// options, delivers retained messages (not for shared subscriptions).
    Subscribed {
        /// The filter as the client wrote it (with any `$share/group/` prefix).
        raw_filter: String,
        /// The options granted.
        options: SubOptions,
        /// Whether the subscription did not exist before.
        is_new: bool,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// The filter as the client wrote it.
        raw_filter: String,
    },
    /// The client sent DISCONNECT: the connection ends; publish the will if asked.
    ClientDisconnected {
        /// Reason code 0x04: publish the will.
        publish_will: bool,
    },
    /// Close the connection after telling a v5 client why.
    Close(DisconnectReasonCode),
    /// Persist part of the session (only acted on for sessions that outlive their connection).
    Persist(PersistOp),
    /// A message was dropped (metric label).
    Dropped(&'static str),
    /// The ACL refused the client a publish or a subscription (logged, rate-limited).
    Denied {
        /// `publish` or `subscribe`
        action: &'static str,
        /// the topic or filter
        topic: String,
    },
}

impl Effect {
    /// Writes `packet` to the client.
    pub fn send(packet: Packet) -> Effect {
        Effect::Send(Box::new(packet))
    }
}

/// A change to the persisted session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistOp {
    /// Write the session record (expiry, subscriptions).
    Session,
    /// Write the outgoing entry with this sequence number.
    PutOutgoing(u64),
    /// Delete the outgoing entry with this sequence number.
    DeleteOutgoing(u64),
    /// Remember an incoming QoS 2 packet id awaiting PUBREL.
    PutIncoming(u16),
    /// Forget an incoming QoS 2 packet id.
    DeleteIncoming(u16),
}

/// Where an outgoing message is in its exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutgoingPhase {
    /// Not sent yet.
    Queued,
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck(u16),
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitComp(u16),
}

impl Outgoing {
    /// What the entry counts against `mqtt.max_queued_bytes`: its topic and payload.
    pub fn queued_bytes(&self) -> usize {
        self.message.bytes()
    }
}

/// A message on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The message.
    pub message: Arc<Message>,
    /// QoS it is delivered with.
    pub qos: u8,
    /// RETAIN flag it is delivered with.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// Where the exchange is.
    pub phase: OutgoingPhase,
}

struct Connection {
    params: ConnectionParams,
    writable: bool,
    inbound_aliases: LookupMap<u16, String>,
    outbound_aliases: LookupMap<String, u16>,
    /// `max_publish_rate` and `max_publish_bytes_rate`, when set
    publish_rate: Option<TokenBucket>,
    publish_bytes_rate: Option<TokenBucket>,
}

/// The state of one MQTT session.
pub struct SessionState {
    client_id: Arc<str>,
    limits: SessionLimits,
    /// Session Expiry Interval in seconds (0 = ends with the connection).
    expiry_secs: u32,
    subscriptions: BTreeMap<String, SubOptions>,
    outgoing: BTreeMap<u64, Outgoing>,
    queued: VecDeque<u64>,
    /// Topic and payload bytes of the queued messages.
    queued_bytes: usize,
    inflight: BTreeMap<u16, u64>,
    incoming_qos2: BTreeSet<u16>,
    next_seq: u64,
    next_pkid: u16,
    connection: Option<Connection>,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        // what the queue held leaves the node's budget with it
        self.limits.budget.unqueue(self.queued_bytes);
    }
}

impl SessionState {
    /// Counts `bytes` more in the queue, and in the node's budget whatever its share (a
    /// restored session, a message put back at the queue's head).
    fn count_queued(&mut self, bytes: usize) {
        self.queued_bytes += bytes;
        self.limits.budget.force_queue(bytes);
    }

    /// Counts `bytes` fewer in the queue and in the node's budget.
    fn uncount_queued(&mut self, bytes: usize) {
        let bytes = bytes.min(self.queued_bytes);
        self.queued_bytes -= bytes;
        self.limits.budget.unqueue(bytes);
    }

    /// A new, empty, offline session.
    pub fn new(client_id: String, limits: SessionLimits) -> Self {
        Self {
            client_id: Arc::from(client_id),
            limits,
            expiry_secs: 0,
            subscriptions: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            inflight: BTreeMap::new(),
            incoming_qos2: BTreeSet::new(),
            next_seq: 0,
            next_pkid: 1,
            connection: None,
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Session Expiry Interval in seconds.
    pub fn expiry_secs(&self) -> u32 {
        self.expiry_secs
    }

    /// Sets the Session Expiry Interval.
    pub fn set_expiry_secs(&mut self, secs: u32) {
        self.expiry_secs = secs;
    }

    /// Whether the session outlives its connection and so is persisted.
    pub fn is_persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// The protocol version of the attached connection.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.connection.as_ref().map(|c| c.params.version)
    }

    /// The identity of the attached connection.
    pub fn identity(&self) -> Option<&Identity> {
        self.connection.as_ref().map(|c| &c.params.identity)
    }

    /// The will of the attached connection and its delay.
    pub fn will(&self) -> Option<&(LastWill, u32)> {
        self.connection.as_ref().and_then(|c| c.params.will.as_ref())
    }

    /// Forgets the will of the attached connection (normal DISCONNECT).
    pub fn clear_will(&mut self) {
        if let Some(connection) = &mut self.connection {
            connection.params.will = None;
        }
    }

    /// The subscriptions, by raw filter.
    pub fn subscriptions(&self) -> &BTreeMap<String, SubOptions> {
        &self.subscriptions
    }

    /// An outgoing entry by sequence number (for persistence).
    pub fn outgoing(&self, seq: u64) -> Option<&Outgoing> {
        self.outgoing.get(&seq)
    }

    /// Sequence numbers of every outgoing entry, queued or in flight.
    pub fn outgoing_seqs(&self) -> Vec<u64> {
        self.outgoing.keys().copied().collect()
    }

    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub fn incoming_qos2(&self) -> &BTreeSet<u16> {
        &self.incoming_qos2
    }

    /// Messages queued (not in flight).
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Messages in flight to the client.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Drops all state (clean start).
    pub fn reset(&mut self) -> Vec<Effect> {
        let mut effects: Vec<Effect> = self
            .subscriptions
            .keys()
            .map(|raw_filter| Effect::Unsubscribed { raw_filter: raw_filter.clone() })
            .collect();
        effects.extend(self.outgoing.keys().map(|seq| Effect::Persist(PersistOp::DeleteOutgoing(*seq))));
        effects.extend(self.incoming_qos2.iter().map(|pkid| Effect::Persist(PersistOp::DeleteIncoming(*pkid))));
        self.subscriptions.clear();
        self.outgoing.clear();
        self.queued.clear();
        self.uncount_queued(self.queued_bytes);
        self.inflight.clear();
        self.incoming_qos2.clear();
        effects
    }

    /// Restores persisted state (at node start).
    pub fn restore(
        &mut self,
        expiry_secs: u32,
        subscriptions: BTreeMap<String, SubOptions>,
        outgoing: BTreeMap<u64, Outgoing>,
        incoming_qos2: BTreeSet<u16>,
    ) {
        self.expiry_secs = expiry_secs;
        self.subscriptions = subscriptions;
        self.incoming_qos2 = incoming_qos2;
        for (seq, entry) in outgoing {
            match entry.phase {
                OutgoingPhase::Queued => {
                    self.count_queued(entry.queued_bytes());
                    self.queued.push_back(seq);
                }
                OutgoingPhase::AwaitAck(pkid) | OutgoingPhase::AwaitComp(pkid) => {
                    self.inflight.insert(pkid, seq);
                }
            }
            self.next_seq = self.next_seq.max(seq + 1);
            self.outgoing.insert(seq, entry);
        }
    }

    /// Attaches a new connection: resends what is in flight (DUP) and pumps the queue.
    pub fn attach(&mut self, params: ConnectionParams, now_ms: i64) -> Vec<Effect> {
        self.connection = Some(Connection {
            params,
            writable: true,
            inbound_aliases: LookupMap::new(),
            outbound_aliases: LookupMap::new(),
            publish_rate: self.limits.max_publish_rate.map(|rate| TokenBucket::per_second(rate.into(), now_ms)),
            publish_bytes_rate: self.limits.max_publish_bytes_rate.map(|rate| TokenBucket::per_second(rate, now_ms)),
        });
        let mut effects = Vec::new();
        // re-send in the order first sent (sequence order), not packet id order: ids wrap
        let inflight: Vec<(u64, OutgoingPhase)> = self
            .outgoing
            .iter()
            .filter(|(_, entry)| entry.phase != OutgoingPhase::Queued)
            .map(|(seq, entry)| (*seq, entry.phase))
            .collect();
        for (seq, phase) in inflight {
            match phase {
                OutgoingPhase::AwaitAck(pkid) => {
                    let entry = self.outgoing[&seq].clone();
                    match self.build_publish(&entry, pkid, true, now_ms) {
                        Some(packet) => effects.push(Effect::send(packet)),
                        None => {
                            // too large for this connection: discard as if delivered [MQTT-3.1.2-25]
                            self.complete(pkid, seq, &mut effects);
                            effects.push(Effect::Dropped("packet_too_large"));
                        }
                    }
                }
                OutgoingPhase::AwaitComp(pkid) => effects.push(Effect::send(pubrel(pkid))),
                OutgoingPhase::Queued => {}
            }
        }
        self.pump(now_ms, &mut effects);
        effects
    }

    /// Detaches the connection (closed for any reason).
    pub fn detach(&mut self) {
        self.connection = None;
    }

    /// Marks the connection's writer as able (or not) to take more bytes.
    pub fn set_writable(&mut self, writable: bool, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(connection) = &mut self.connection {
            connection.writable = writable;
        }
        if writable {
            self.pump(now_ms, &mut effects);
        }
        effects
    }

    /// Handles one packet from the client.
    pub fn handle_packet(&mut self, packet: Packet, now_ms: i64, authorizer: &Authorizer) -> Vec<Effect> {
        let mut effects = Vec::new();
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, now_ms, authorizer, &mut effects),
            Packet::PubAck(ack) => self.on_puback(ack.pkid, now_ms, &mut effects),
            Packet::PubRec(rec) => self.on_pubrec(rec, now_ms, &mut effects),
            Packet::PubRel(rel) => self.on_pubrel(rel.pkid, &mut effects),
            Packet::PubComp(comp) => self.on_pubcomp(comp.pkid, now_ms, &mut effects),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe, authorizer, &mut effects),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, &mut effects),
            Packet::PingReq => effects.push(Effect::send(Packet::PingResp)),
            Packet::Disconnect(disconnect) => {
                let new_expiry = disconnect.properties.as_ref().and_then(|p| p.session_expiry_interval);
                if let Some(new_expiry) = new_expiry {
                    if self.expiry_secs == 0 && new_expiry != 0 {
                        effects.push(Effect::Close(DisconnectReasonCode::ProtocolError));
                        return effects;
                    }
                    self.expiry_secs = new_expiry;
                    effects.push(Effect::Persist(PersistOp::Session));
                }
                let publish_will = disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                effects.push(Effect::ClientDisconnected { publish_will });
            }
            Packet::Connect(_) => effects.push(Effect::Close(DisconnectReasonCode::ProtocolError)),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                effects.push(Effect::Close(DisconnectReasonCode::ProtocolError))
            }
        }
        effects
    }

    fn on_publish(&mut self, mut publish: Publish, now_ms: i64, authorizer: &Authorizer, effects: &mut Vec<Effect>) {
        let Some(connection) = self.connection.as_mut() else { return };
        let version = connection.params.version;
        let over_rate = connection.publish_rate.as_mut().is_some_and(|bucket| !bucket.take(1, now_ms));
        let over_bytes = connection
            .publish_bytes_rate
            .as_mut()
            .is_some_and(|bucket| !bucket.take(publish.payload.len() as u64, now_ms));
        if over_rate || over_bytes {
            crate::metrics::limit_hit(if over_rate { "publish_rate" } else { "publish_bytes_rate" });
            effects.push(Effect::Close(DisconnectReasonCode::MessageRateTooHigh));
            return;
        }
        // topic alias (v5): resolve or record
        let alias = publish.properties.as_ref().and_then(|p| p.topic_alias);
        if let Some(alias) = alias {
            if alias == 0 || alias > self.limits.max_topic_alias {
                effects.push(Effect::Close(DisconnectReasonCode::TopicAliasInvalid));
                return;
            }
            if publish.topic.is_empty() {
                match connection.inbound_aliases.get(&alias) {
                    Some(topic_name) => publish.topic = topic_name.clone(),
                    None => {
                        effects.push(Effect::Close(DisconnectReasonCode::ProtocolError));
                        return;
                    }
                }
            } else {
                connection.inbound_aliases.insert(alias, publish.topic.clone());
            }
        }
        if let Err(error) = topic::validate_topic_name(&publish.topic) {
            let reason = match error {
                TopicError::Empty if version == ProtocolVersion::V5 => DisconnectReasonCode::ProtocolError,
                _ => DisconnectReasonCode::TopicNameInvalid,
            };
            effects.push(Effect::Close(reason));
            return;
        }
        if topic::levels(&publish.topic) > self.limits.max_topic_levels {
            crate::metrics::limit_hit("topic_levels");
            effects.push(Effect::Close(DisconnectReasonCode::TopicNameInvalid));
            return;
        }
        if publish.retain && !self.limits.retain_available {
            effects.push(Effect::Close(DisconnectReasonCode::RetainNotSupported));
            return;
        }
        let qos = publish.qos as u8;
        let pkid = publish.pkid;
        if qos == 2 {
            if self.incoming_qos2.contains(&pkid) {
                // a retransmission of a message already routed: acknowledge again, route nothing
                effects.push(Effect::send(Packet::PubRec(pubrec(pkid, PubRecReason::Success))));
                return;
            }
            // MQTT 5 advertises Receive Maximum; 3.1.1 has no way to tell the client a limit
            if version == ProtocolVersion::V5 && self.incoming_qos2.len() >= usize::from(self.limits.max_inflight) {
                effects.push(Effect::Close(DisconnectReasonCode::ReceiveMaximumExceeded));
                return;
            }
        }
        let allowed = authorizer.may_publish(&connection.params.identity, &publish.topic);
        if allowed {
            effects.push(Effect::Route {
                message: Arc::new(message_from_publish(publish, &self.client_id, now_ms)),
                pkid,
            });
        } else {
            effects.push(Effect::Dropped("not_authorized"));
            effects.push(Effect::Denied { action: "publish", topic: publish.topic.clone() });
        }
        let denied_v5 = !allowed && version == ProtocolVersion::V5;
        match qos {
            1 => {
                let reason = if denied_v5 { PubAckReason::NotAuthorized } else { PubAckReason::Success };
                effects.push(Effect::send(Packet::PubAck(PubAck { pkid, reason, properties: None })));
            }
            2 => {
                if denied_v5 {
                    // a PUBREC with a failure reason ends the exchange: no PUBREL follows
                    effects.push(Effect::send(Packet::PubRec(pubrec(pkid, PubRecReason::NotAuthorized))));
                } else {
                    self.incoming_qos2.insert(pkid);
                    effects.push(Effect::Persist(PersistOp::PutIncoming(pkid)));
                    effects.push(Effect::send(Packet::PubRec(pubrec(pkid, PubRecReason::Success))));
                }
            }
            _ => {}
        }
    }

    /// Forgets an incoming QoS 2 packet id whose PUBREC was withheld because storing the
    /// message failed, so that the client's retry is stored again instead of acknowledged.
    pub fn forget_incoming_qos2(&mut self, pkid: u16) -> Vec<Effect> {
        if self.incoming_qos2.remove(&pkid) {
            return vec![Effect::Persist(PersistOp::DeleteIncoming(pkid))];
        }
        Vec::new()
    }

    fn on_puback(&mut self, pkid: u16, now_ms: i64, effects: &mut Vec<Effect>) {
        if let Some(seq) = self.inflight.get(&pkid).copied()
            && matches!(self.outgoing.get(&seq), Some(entry) if entry.qos == 1)
        {
            self.complete(pkid, seq, effects);
            self.pump(now_ms, effects);
        }
    }

    fn on_pubrec(&mut self, rec: PubRec, now_ms: i64, effects: &mut Vec<Effect>) {
        let pkid = rec.pkid;
        let Some(seq) = self.inflight.get(&pkid).copied() else {
            effects.push(Effect::send(Packet::PubRel(PubRel {
                pkid,
                reason: PubRelReason::PacketIdentifierNotFound,
                properties: None,
            })));
            return;
        };
        if (rec.reason as u8) >= 0x80 {
            self.complete(pkid, seq, effects);
            self.pump(now_ms, effects);
            return;
        }
        if let Some(entry) = self.outgoing.get_mut(&seq)
            && entry.qos == 2
        {
            entry.phase = OutgoingPhase::AwaitComp(pkid);
            effects.push(Effect::Persist(PersistOp::PutOutgoing(seq)));
            effects.push(Effect::send(pubrel(pkid)));
        }
    }

    fn on_pubrel(&mut self, pkid: u16, effects: &mut Vec<Effect>) {
        let reason = if self.incoming_qos2.remove(&pkid) {
            effects.push(Effect::Persist(PersistOp::DeleteIncoming(pkid)));
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        };
        effects.push(Effect::send(Packet::PubComp(PubComp { pkid, reason, properties: None })));
    }

    fn on_pubcomp(&mut self, pkid: u16, now_ms: i64, effects: &mut Vec<Effect>) {
        if let Some(seq) = self.inflight.get(&pkid).copied()
            && matches!(self.outgoing.get(&seq), Some(entry) if entry.phase == OutgoingPhase::AwaitComp(pkid))
        {
            self.complete(pkid, seq, effects);
            self.pump(now_ms, effects);
        }
    }

    fn complete(&mut self, pkid: u16, seq: u64, effects: &mut Vec<Effect>) {
        self.inflight.remove(&pkid);
        self.outgoing.remove(&seq);
        effects.push(Effect::Persist(PersistOp::DeleteOutgoing(seq)));
    }

    fn on_subscribe(&mut self, subscribe: Subscribe, authorizer: &Authorizer, effects: &mut Vec<Effect>) {
        let Some(connection) = self.connection.as_ref() else { return };
        let version = connection.params.version;
        if subscribe.filters.is_empty() {
            effects.push(Effect::Close(DisconnectReasonCode::ProtocolError));
            return;
        }
        let subscription_id = subscribe.properties.as_ref().and_then(|p| p.id).map(|id| id as u32);
        if subscription_id == Some(0) {
            effects.push(Effect::Close(DisconnectReasonCode::ProtocolError));
            return;
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        let mut held = self.subscriptions.len();
        for filter in subscribe.filters {
            let parsed = match topic::parse_filter(&filter.path) {
                Ok(parsed) => parsed,
                Err(_) => {
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if topic::levels(parsed.filter) > self.limits.max_topic_levels {
                crate::metrics::limit_hit("topic_levels");
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            // a filter held already is replaced, not added
            let adds = !self.subscriptions.contains_key(&filter.path)
                && !granted.iter().any(|(path, _): &(String, SubOptions)| *path == filter.path);
            if adds && held >= self.limits.max_subscriptions {
                crate::metrics::limit_hit("subscriptions");
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            if parsed.share_group.is_some() && filter.nolocal && version == ProtocolVersion::V5 {
                // MQTT 5 §3.8.3.1: No Local on a shared subscription is a protocol error
                effects.push(Effect::Close(DisconnectReasonCode::ProtocolError));
                return;
            }
            if !authorizer.may_subscribe(&connection.params.identity, parsed.filter) {
                codes.push(SubscribeReasonCode::NotAuthorized);
                effects.push(Effect::Denied { action: "subscribe", topic: filter.path.clone() });
                continue;
            }
            let qos = filter.qos as u8;
            let options = SubOptions {
                qos,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                retain_handling: match filter.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => RetainHandling::SendAlways,
                    RetainForwardRule::OnNewSubscribe => RetainHandling::SendIfNew,
                    RetainForwardRule::Never => RetainHandling::Never,
                },
                subscription_id,
            };
            codes.push(match qos {
                0 => SubscribeReasonCode::QoS0,
                1 => SubscribeReasonCode::QoS1,
                _ => SubscribeReasonCode::QoS2,
            });
            if adds {
                held += 1;
            }
            granted.push((filter.path, options));
        }
        // the subscriptions before their SUBACK: in a cluster the SUBACK waits for their routes
        let mut changed = false;
        for (raw_filter, options) in granted {
            let is_new = self.subscriptions.insert(raw_filter.clone(), options.clone()).is_none();
            changed = true;
            effects.push(Effect::Subscribed { raw_filter, options, is_new });
        }
        effects.push(Effect::send(Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
            properties: None,
        })));
        if changed {
            effects.push(Effect::Persist(PersistOp::Session));
        }
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe, effects: &mut Vec<Effect>) {
        if unsubscribe.filters.is_empty() {
            effects.push(Effect::Close(DisconnectReasonCode::ProtocolError));
            return;
        }
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        let mut removed = Vec::new();
        for raw_filter in unsubscribe.filters {
            if self.subscriptions.remove(&raw_filter).is_some() {
                reasons.push(UnsubAckReason::Success);
                removed.push(raw_filter);
            } else if topic::parse_filter(&raw_filter).is_err() {
                reasons.push(UnsubAckReason::TopicFilterInvalid);
            } else {
                reasons.push(UnsubAckReason::NoSubscriptionExisted);
            }
        }
        effects.push(Effect::send(Packet::UnsubAck(UnsubAck { pkid: unsubscribe.pkid, reasons, properties: None })));
        if !removed.is_empty() {
            effects.extend(removed.into_iter().map(|raw_filter| Effect::Unsubscribed { raw_filter }));
            effects.push(Effect::Persist(PersistOp::Session));
        }
    }

    /// Takes a message routed to this session.
    pub fn deliver(&mut self, delivery: Delivery, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if delivery.message.is_expired(now_ms) {
            effects.push(Effect::Dropped("expired"));
            return effects;
        }
        let entry = Outgoing {
            message: delivery.message,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids,
            phase: OutgoingPhase::Queued,
        };
        let can_send_now = self.queued.is_empty()
            && self.connection.as_ref().is_some_and(|c| c.writable)
            && (entry.qos == 0 || self.inflight.len() < self.window());
        if can_send_now {
            self.send_entry(entry, None, now_ms, &mut effects);
            return effects;
        }
        let bytes = entry.queued_bytes();
        let full = |state: &Self| {
            state.queued.len() >= state.limits.max_queued || state.queued_bytes + bytes > state.limits.max_queued_bytes
        };
        // the session's own bounds first, then the node's budget for every session's queue
        // (which `try_queue` reserves the bytes in): past either, the overflow policy applies,
        // but a QoS 0 message past the budget goes itself rather than push out another
        loop {
            let own_full = full(self);
            if !own_full && self.limits.budget.try_queue(bytes, entry.qos) {
                break;
            }
            let reason = if own_full { "queue_full" } else { "memory_budget" };
            let drop_new = self.limits.overflow == QueueOverflow::DropNew || (!own_full && entry.qos == 0);
            if drop_new || bytes > self.limits.max_queued_bytes {
                effects.push(Effect::Dropped(reason));
                return effects;
            }
            // the oldest go until the new one fits (by count, one; by bytes, as many as it takes)
            let Some(oldest) = self.queued.pop_front() else {
                // nothing queued to make room (a bound of 0 messages, or the node's budget
                // taken by other sessions): the new one goes
                effects.push(Effect::Dropped(reason));
                return effects;
            };
            if let Some(removed) = self.outgoing.remove(&oldest) {
                self.uncount_queued(removed.queued_bytes());
            }
            effects.push(Effect::Persist(PersistOp::DeleteOutgoing(oldest)));
            effects.push(Effect::Dropped(reason));
        }
        let seq = self.take_seq();
        self.outgoing.insert(seq, entry);
        self.queued_bytes += bytes;
        self.queued.push_back(seq);
        effects.push(Effect::Persist(PersistOp::PutOutgoing(seq)));
        effects
    }

    /// Sends what the flow-control window allows from the queue.
    fn pump(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        while self.connection.as_ref().is_some_and(|c| c.writable) {
            let Some(&seq) = self.queued.front() else { break };
            let Some(entry) = self.outgoing.get(&seq) else {
                self.queued.pop_front();
                continue;
            };
            if entry.qos > 0 && self.inflight.len() >= self.window() {
                break;
            }
            self.queued.pop_front();
            let entry = self.outgoing.remove(&seq).expect("queued entry present");
            self.uncount_queued(entry.queued_bytes());
            if entry.message.is_expired(now_ms) {
                effects.push(Effect::Persist(PersistOp::DeleteOutgoing(seq)));
                effects.push(Effect::Dropped("expired"));
                continue;
            }
            self.send_entry(entry, Some(seq), now_ms, effects);
        }
    }

    fn send_entry(&mut self, mut entry: Outgoing, seq: Option<u64>, now_ms: i64, effects: &mut Vec<Effect>) {
        if entry.qos == 0 {
            if let Some(seq) = seq {
                effects.push(Effect::Persist(PersistOp::DeleteOutgoing(seq)));
            }
            match self.build_publish(&entry, 0, false, now_ms) {
                Some(packet) => effects.push(Effect::send(packet)),
                None => effects.push(Effect::Dropped("packet_too_large")),
            }
            return;
        }
        let Some(pkid) = self.take_pkid() else {
            // every packet id is in flight: keep it queued
            let seq = seq.unwrap_or_else(|| self.take_seq());
            self.count_queued(entry.queued_bytes());
            self.outgoing.insert(seq, entry);
            self.queued.push_front(seq);
            return;
        };
        let Some(packet) = self.build_publish(&entry, pkid, false, now_ms) else {
            if let Some(seq) = seq {
                effects.push(Effect::Persist(PersistOp::DeleteOutgoing(seq)));
            }
            effects.push(Effect::Dropped("packet_too_large"));
            return;
        };
        let seq = seq.unwrap_or_else(|| self.take_seq());
        entry.phase = OutgoingPhase::AwaitAck(pkid);
        self.outgoing.insert(seq, entry);
        self.inflight.insert(pkid, seq);
        effects.push(Effect::Persist(PersistOp::PutOutgoing(seq)));
        effects.push(Effect::send(packet));
    }

    fn window(&self) -> usize {
        let client = self.connection.as_ref().map_or(u16::MAX, |c| c.params.receive_maximum);
        usize::from(client.min(self.limits.max_inflight).max(1))
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn take_pkid(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            if !self.inflight.contains_key(&pkid) {
                return Some(pkid);
            }
        }
    }

    /// Builds the PUBLISH for an entry, or `None` when it exceeds the client's maximum packet size.
    fn build_publish(&mut self, entry: &Outgoing, pkid: u16, dup: bool, now_ms: i64) -> Option<Packet> {
        let connection = self.connection.as_mut()?;
        let message = &entry.message;
        let version = connection.params.version;
        let mut new_alias = None;
        let mut publish = Publish::from_bytes(message.topic.clone(), qos_from(entry.qos), message.payload.clone());
        publish.pkid = pkid;
        publish.dup = dup;
        publish.retain = entry.retain;
        if version == ProtocolVersion::V5 {
            let mut properties = publish_properties(message, now_ms);
            properties.subscription_identifiers = entry.subscription_ids.iter().map(|id| *id as usize).collect();
            let max_alias = connection.params.topic_alias_max;
            if max_alias > 0 {
                if let Some(alias) = connection.outbound_aliases.get(&message.topic) {
                    properties.topic_alias = Some(*alias);
                    publish.topic = String::new();
                } else if connection.outbound_aliases.len() < usize::from(max_alias) {
                    // registered below, once the packet is known to fit
                    new_alias = Some(connection.outbound_aliases.len() as u16 + 1);
                    properties.topic_alias = new_alias;
                }
            }
            let empty = properties.payload_format_indicator.is_none()
                && properties.message_expiry_interval.is_none()
                && properties.topic_alias.is_none()
                && properties.response_topic.is_none()
                && properties.correlation_data.is_none()
                && properties.user_properties.is_empty()
                && properties.subscription_identifiers.is_empty()
                && properties.content_type.is_none();
            if !empty {
                publish.properties = Some(properties);
            }
        }
        let packet = Packet::Publish(publish);
        if let Some(max) = connection.params.max_packet_size
            && codec::encoded_len(&packet, version) > max as usize
        {
            return None;
        }
        if let Some(alias) = new_alias {
            connection.outbound_aliases.insert(message.topic.clone(), alias);
        }
        Some(packet)
    }
}

/// Converts an accepted PUBLISH into the broker's message.
pub fn message_from_publish(publish: Publish, publisher: &Arc<str>, now_ms: i64) -> Message {
    let (properties, expires_at_ms) = match publish.properties {
        Some(p) => (
            MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
            },
            p.message_expiry_interval.map(|secs| now_ms + i64::from(secs) * 1000),
        ),
        None => (MessageProperties::default(), None),
    };
    Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos as u8,
        retain: publish.retain,
        properties,
        expires_at_ms,
        received_at_ms: now_ms,
        publisher: Arc::clone(publisher),
    }
}

/// Converts a will into the broker's message.
pub fn message_from_will(will: &LastWill, publisher: &str, now_ms: i64) -> Message {
    let (properties, expires_at_ms) = match &will.properties {
        Some(p) => (
            MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
            p.message_expiry_interval.map(|secs| now_ms + i64::from(secs) * 1000),
        ),
        None => (MessageProperties::default(), None),
    };
    Message {
        topic: will.topic.clone(),
        payload: Bytes::clone(&will.message),
        qos: will.qos as u8,
        retain: will.retain,
        properties,
        expires_at_ms,
        received_at_ms: now_ms,
        publisher: Arc::from(publisher),
    }
}

fn publish_properties(message: &Message, now_ms: i64) -> PublishProperties {
    let p = &message.properties;
    PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: message.remaining_expiry_secs(now_ms),
        topic_alias: None,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: Vec::new(),
        content_type: p.content_type.clone(),
    }
}

/// The QoS enum for a numeric level (levels above 2 are capped).
pub fn qos_from(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn pubrec(pkid: u16, reason: PubRecReason) -> PubRec {
    PubRec { pkid, reason, properties: None }
}

fn pubrel(pkid: u16) -> Packet {
    Packet::PubRel(PubRel { pkid, reason: PubRelReason::Success, properties: None })
}

#[cfg(test)]
#[path = "session_state_tests.rs"]
mod tests;
