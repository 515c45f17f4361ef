//! Unit and property tests of the session state machine.

use super::*;
use crate::mqtt::auth::{AclAction, AclRule, Authorizer, Permission};
use crate::mqtt::codec::{Disconnect, DisconnectProperties, SubscribeFilter, SubscribeProperties};

fn limits() -> SessionLimits {
    SessionLimits {
        budget: crate::memory::MemoryBudget::unlimited(),
        max_inflight: 2,
        max_queued: 3,
        max_queued_bytes: usize::MAX,
        overflow: QueueOverflow::DropOldest,
        max_topic_alias: 10,
        retain_available: true,
        max_topic_levels: 128,
        max_subscriptions: 100_000,
        max_publish_rate: None,
        max_publish_bytes_rate: None,
    }
}

fn limits_with(max_inflight: u16, max_queued: usize, overflow: QueueOverflow) -> SessionLimits {
    SessionLimits { max_inflight, max_queued, overflow, ..limits() }
}

fn params(version: ProtocolVersion) -> ConnectionParams {
    ConnectionParams {
        version,
        receive_maximum: 65535,
        max_packet_size: None,
        topic_alias_max: 0,
        identity: Identity { client_id: "c".into(), username: None, ..Default::default() },
        will: None,
    }
}

fn v5() -> ConnectionParams {
    params(ProtocolVersion::V5)
}

fn message(topic_name: &str, payload: &str, expires_at_ms: Option<i64>) -> Arc<Message> {
    Arc::new(Message {
        topic: topic_name.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: 2,
        retain: false,
        properties: Default::default(),
        expires_at_ms,
        received_at_ms: 0,
        publisher: "other".into(),
    })
}

fn delivery_of(message: Arc<Message>, qos: u8) -> Delivery {
    Delivery { message, qos, retain: false, subscription_ids: vec![] }
}

fn delivery(topic_name: &str, qos: u8) -> Delivery {
    delivery_of(message(topic_name, "p", None), qos)
}

fn payload_delivery(payload: &str, qos: u8) -> Delivery {
    delivery_of(message("t", payload, None), qos)
}

fn connected(limits: SessionLimits, params: ConnectionParams) -> SessionState {
    let mut state = SessionState::new("c".into(), limits);
    let effects = state.attach(params, 0);
    assert!(effects.is_empty(), "attaching an empty session does nothing: {effects:?}");
    state
}

fn handle(state: &mut SessionState, packet: Packet) -> Vec<Effect> {
    state.handle_packet(packet, 0, &Authorizer::allow_all())
}

/// The values that effects matching a pattern yield, in order.
macro_rules! pick {
    ($effects:expr, $pattern:pat $(if $guard:expr)? => $value:expr) => {
        $effects
            .iter()
            .filter_map(|e| match e {
                $pattern $(if $guard)? => Some($value),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

fn publishes(effects: &[Effect]) -> Vec<&Publish> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(packet) => match &**packet {
                Packet::Publish(p) => Some(p),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn sent_pkids(effects: &[Effect]) -> Vec<u16> {
    publishes(effects).iter().map(|p| p.pkid).collect()
}

fn sent_payloads(effects: &[Effect]) -> Vec<String> {
    publishes(effects).iter().map(|p| String::from_utf8(p.payload.to_vec()).unwrap()).collect()
}

fn persists(effects: &[Effect]) -> Vec<PersistOp> {
    pick!(effects, Effect::Persist(op) => *op)
}

fn dropped(effects: &[Effect]) -> Vec<&'static str> {
    pick!(effects, Effect::Dropped(reason) => *reason)
}

fn closes(effects: &[Effect]) -> Vec<DisconnectReasonCode> {
    pick!(effects, Effect::Close(code) => *code)
}

fn routes(effects: &[Effect]) -> Vec<Arc<Message>> {
    pick!(effects, Effect::Route { message, .. } => Arc::clone(message))
}

/// Packets other than PUBLISH that were sent, in order.
fn acks(effects: &[Effect]) -> Vec<Packet> {
    pick!(effects, Effect::Send(packet) if !matches!(**packet, Packet::Publish(_)) => (**packet).clone())
}

fn pubrel_packet(pkid: u16, reason: PubRelReason) -> Packet {
    Packet::PubRel(PubRel { pkid, reason, properties: None })
}

fn incoming(topic_name: &str, qos: QoS, pkid: u16) -> Publish {
    let mut publish = Publish::new(topic_name, qos, "hello");
    publish.pkid = pkid;
    publish
}

fn with_alias(mut publish: Publish, alias: u16) -> Packet {
    let no_properties = message("t", "", None);
    publish.properties = Some(PublishProperties { topic_alias: Some(alias), ..publish_properties(&no_properties, 0) });
    Packet::Publish(publish)
}

fn sub_options(qos: u8) -> SubOptions {
    SubOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAlways,
        subscription_id: None,
    }
}

fn deny(action: AclAction, topic_filter: &str) -> Authorizer {
    let rule =
        AclRule { permission: Permission::Deny, action, topic: topic_filter.into(), username: None, client_id: None };
    Authorizer::new(true, Permission::Allow, [], vec![rule])
}

fn disconnect(reason_code: DisconnectReasonCode, session_expiry_interval: Option<u32>) -> Packet {
    let properties = session_expiry_interval
        .map(|secs| DisconnectProperties { session_expiry_interval: Some(secs), ..DisconnectProperties::new() });
    Packet::Disconnect(Disconnect { reason_code, properties })
}

#[test]
fn qos1_window_is_the_smaller_of_client_receive_maximum_and_limit() {
    let mut client_smaller =
        connected(limits_with(3, 10, QueueOverflow::DropOldest), ConnectionParams { receive_maximum: 2, ..v5() });
    let mut limit_smaller = connected(limits_with(2, 10, QueueOverflow::DropOldest), v5());
    for state in [&mut client_smaller, &mut limit_smaller] {
        let mut pkids = Vec::new();
        for _ in 0..4 {
            pkids.extend(sent_pkids(&state.deliver(delivery("t", 1), 0)));
        }
        assert_eq!(pkids, vec![1, 2], "only a window of 2 is sent");
        assert_eq!((state.inflight_len(), state.queued_len()), (2, 2));
        let qos0 = state.deliver(delivery("t", 0), 0);
        assert!(publishes(&qos0).is_empty(), "QoS 0 does not overtake the queue");
    }
    let mut idle_queue = connected(limits_with(1, 10, QueueOverflow::DropOldest), v5());
    idle_queue.deliver(delivery("t", 1), 0);
    assert_eq!(sent_pkids(&idle_queue.deliver(delivery("t", 0), 0)), vec![0], "QoS 0 needs no window");
}

#[test]
fn puback_releases_the_next_queued_and_unknown_puback_does_nothing() {
    let mut state = connected(limits(), v5());
    let first = state.deliver(payload_delivery("a", 1), 0);
    assert_eq!(persists(&first), vec![PersistOp::PutOutgoing(0)]);
    let publish = publishes(&first)[0];
    assert_eq!((publish.pkid, publish.dup, publish.qos, publish.retain), (1, false, QoS::AtLeastOnce, false));
    assert_eq!((publish.topic.as_str(), publish.properties.as_ref()), ("t", None));
    state.deliver(payload_delivery("b", 1), 0);
    let queued = state.deliver(payload_delivery("c", 1), 0);
    assert_eq!(persists(&queued), vec![PersistOp::PutOutgoing(2)]);
    assert!(publishes(&queued).is_empty());

    let unknown = handle(&mut state, Packet::PubAck(PubAck::new(9)));
    assert!(unknown.is_empty(), "{unknown:?}");
    assert_eq!((state.inflight_len(), state.queued_len()), (2, 1));

    let effects = handle(&mut state, Packet::PubAck(PubAck::new(1)));
    assert_eq!(persists(&effects), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(2)]);
    assert_eq!((sent_pkids(&effects), sent_payloads(&effects)), (vec![3], vec!["c".to_string()]));
    assert_eq!(state.outgoing(2).unwrap().phase, OutgoingPhase::AwaitAck(3));
    assert!(handle(&mut state, Packet::PubAck(PubAck::new(1))).is_empty(), "a second PUBACK is ignored");
}

#[test]
fn qos2_outgoing_exchange_persists_each_phase() {
    let mut state = connected(limits(), v5());
    let sent = state.deliver(delivery("t", 2), 0);
    assert_eq!(publishes(&sent)[0].qos, QoS::ExactlyOnce);
    assert_eq!(sent_pkids(&sent), vec![1]);
    assert!(handle(&mut state, Packet::PubComp(PubComp::new(1))).is_empty(), "PUBCOMP before PUBREC is ignored");

    let rec = handle(&mut state, Packet::PubRec(PubRec::new(1)));
    assert_eq!(persists(&rec), vec![PersistOp::PutOutgoing(0)]);
    assert_eq!(acks(&rec), vec![pubrel_packet(1, PubRelReason::Success)]);
    assert_eq!(state.outgoing(0).unwrap().phase, OutgoingPhase::AwaitComp(1));
    assert!(handle(&mut state, Packet::PubAck(PubAck::new(1))).is_empty(), "PUBACK does not end a QoS 2 exchange");

    let comp = handle(&mut state, Packet::PubComp(PubComp::new(1)));
    assert_eq!(persists(&comp), vec![PersistOp::DeleteOutgoing(0)]);
    assert!(acks(&comp).is_empty());
    assert_eq!((state.inflight_len(), state.outgoing_seqs()), (0, vec![]));
    assert!(handle(&mut state, Packet::PubComp(PubComp::new(1))).is_empty());
}

#[test]
fn pubrec_with_failure_reason_completes_and_unknown_pkid_is_not_found() {
    let mut state = connected(limits_with(1, 10, QueueOverflow::DropOldest), v5());
    state.deliver(delivery("t", 2), 0);
    state.deliver(payload_delivery("next", 2), 0);
    let rec = PubRec { pkid: 1, reason: PubRecReason::QuotaExceeded, properties: None };
    let effects = handle(&mut state, Packet::PubRec(rec));
    assert!(acks(&effects).is_empty(), "no PUBREL after a failed PUBREC: {effects:?}");
    assert_eq!(persists(&effects), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(1)]);
    assert_eq!((sent_pkids(&effects), sent_payloads(&effects)), (vec![2], vec!["next".to_string()]));
    let unknown = handle(&mut state, Packet::PubRec(PubRec::new(42)));
    assert_eq!(acks(&unknown), vec![pubrel_packet(42, PubRelReason::PacketIdentifierNotFound)]);
    assert!(persists(&unknown).is_empty());
}

#[test]
fn qos2_incoming_routes_once_until_pubrel() {
    let mut state = connected(limits(), v5());
    let first = handle(&mut state, Packet::Publish(incoming("a/b", QoS::ExactlyOnce, 7)));
    let routed = routes(&first);
    assert_eq!(routed.len(), 1);
    assert_eq!((routed[0].topic.as_str(), routed[0].qos, &*routed[0].publisher), ("a/b", 2, "c"));
    assert_eq!(persists(&first), vec![PersistOp::PutIncoming(7)]);
    assert_eq!(acks(&first), vec![Packet::PubRec(PubRec::new(7))]);

    let mut again = incoming("a/b", QoS::ExactlyOnce, 7);
    again.dup = true;
    let retransmission = handle(&mut state, Packet::Publish(again));
    assert!(routes(&retransmission).is_empty(), "a retransmission is not routed again");
    assert_eq!(acks(&retransmission), vec![Packet::PubRec(PubRec::new(7))]);
    assert!(persists(&retransmission).is_empty());

    let rel = handle(&mut state, Packet::PubRel(PubRel::new(7)));
    assert_eq!(persists(&rel), vec![PersistOp::DeleteIncoming(7)]);
    assert_eq!(acks(&rel), vec![Packet::PubComp(PubComp::new(7))]);
    assert!(state.incoming_qos2().is_empty());

    let reused = handle(&mut state, Packet::Publish(incoming("a/b", QoS::ExactlyOnce, 7)));
    assert_eq!(routes(&reused).len(), 1, "after PUBREL the pkid starts a new message");
    let stray = handle(&mut state, Packet::PubRel(PubRel::new(8)));
    let not_found = PubComp { pkid: 8, reason: PubCompReason::PacketIdentifierNotFound, properties: None };
    assert_eq!(acks(&stray), vec![Packet::PubComp(not_found)]);
}

#[test]
fn qos2_incoming_beyond_receive_maximum_closes() {
    let mut state = connected(limits(), v5());
    for pkid in [1, 2] {
        assert_eq!(routes(&handle(&mut state, Packet::Publish(incoming("t", QoS::ExactlyOnce, pkid)))).len(), 1);
    }
    let third = handle(&mut state, Packet::Publish(incoming("t", QoS::ExactlyOnce, 3)));
    assert_eq!(closes(&third), vec![DisconnectReasonCode::ReceiveMaximumExceeded]);
    assert!(routes(&third).is_empty() && acks(&third).is_empty());
    assert_eq!(state.incoming_qos2().iter().copied().collect::<Vec<_>>(), vec![1, 2]);
    let retransmitted = handle(&mut state, Packet::Publish(incoming("t", QoS::ExactlyOnce, 2)));
    assert!(closes(&retransmitted).is_empty(), "a retransmission of an unreleased pkid is not a new one");
}

#[test]
fn reconnect_resends_inflight_with_dup_then_pumps_the_queue() {
    let mut state = connected(limits_with(3, 10, QueueOverflow::DropOldest), v5());
    state.deliver(payload_delivery("a", 1), 0);
    state.deliver(payload_delivery("b", 2), 0);
    handle(&mut state, Packet::PubRec(PubRec::new(2)));
    state.detach();
    for payload in ["c", "d", "e"] {
        let effects = state.deliver(payload_delivery(payload, 1), 0);
        assert!(publishes(&effects).is_empty(), "nothing is sent while offline");
    }
    let effects = state.attach(v5(), 0);
    let sent: Vec<(u16, bool, String)> =
        publishes(&effects).iter().map(|p| (p.pkid, p.dup, String::from_utf8(p.payload.to_vec()).unwrap())).collect();
    assert_eq!(sent, vec![(1, true, "a".into()), (3, false, "c".into())]);
    assert_eq!(acks(&effects), vec![pubrel_packet(2, PubRelReason::Success)]);
    let resend_at = effects
        .iter()
        .position(|e| matches!(e, Effect::Send(packet) if matches!(&**packet, Packet::Publish(p) if p.dup)))
        .unwrap();
    let pumped_at = effects
        .iter()
        .position(|e| matches!(e, Effect::Send(packet) if matches!(&**packet, Packet::Publish(p) if !p.dup)))
        .unwrap();
    assert!(resend_at < pumped_at, "in-flight messages are re-sent before the queue is pumped");
    assert_eq!((state.inflight_len(), state.queued_len()), (3, 2));
    let comp = handle(&mut state, Packet::PubComp(PubComp::new(2)));
    assert_eq!((sent_pkids(&comp), sent_payloads(&comp)), (vec![4], vec!["d".to_string()]));
}

#[test]
fn drop_oldest_keeps_the_newest_and_deletes_the_dropped() {
    let mut state = SessionState::new("c".into(), limits_with(10, 3, QueueOverflow::DropOldest));
    for payload in ["1", "2", "3"] {
        assert!(dropped(&state.deliver(payload_delivery(payload, 1), 0)).is_empty());
    }
    let fourth = state.deliver(payload_delivery("4", 1), 0);
    assert_eq!(dropped(&fourth), vec!["queue_full"]);
    assert_eq!(persists(&fourth), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(3)]);
    let fifth = state.deliver(payload_delivery("5", 1), 0);
    assert_eq!(persists(&fifth), vec![PersistOp::DeleteOutgoing(1), PersistOp::PutOutgoing(4)]);
    assert_eq!(state.queued_len(), 3);
    assert_eq!(sent_payloads(&state.attach(v5(), 0)), vec!["3", "4", "5"]);
}

#[test]
fn drop_new_keeps_the_oldest() {
    let mut state = SessionState::new("c".into(), limits_with(10, 3, QueueOverflow::DropNew));
    for payload in ["1", "2", "3"] {
        state.deliver(payload_delivery(payload, 2), 0);
    }
    let fourth = state.deliver(payload_delivery("4", 2), 0);
    assert_eq!(dropped(&fourth), vec!["queue_full"]);
    assert!(persists(&fourth).is_empty());
    assert_eq!(sent_payloads(&state.attach(v5(), 0)), vec!["1", "2", "3"]);
}

#[test]
fn the_queue_is_bounded_in_bytes_too() {
    // topic "t" and 9-byte payloads: 10 bytes each, 25 bytes of room
    let bytes = |limits: SessionLimits| SessionLimits { max_queued_bytes: 25, ..limits };
    let mut state = SessionState::new("c".into(), bytes(limits_with(10, 100, QueueOverflow::DropOldest)));
    for payload in ["payload-1", "payload-2"] {
        assert!(dropped(&state.deliver(payload_delivery(payload, 1), 0)).is_empty());
    }
    // the third does not fit: the oldest goes
    let third = state.deliver(payload_delivery("payload-3", 1), 0);
    assert_eq!(dropped(&third), vec!["queue_full"]);
    assert_eq!(persists(&third), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(2)]);
    // one larger than the whole bound is dropped itself, and keeps the queue
    let large = "x".repeat(30);
    assert_eq!(dropped(&state.deliver(payload_delivery(&large, 1), 0)), vec!["queue_full"]);
    // a big one pushes out as many as it takes
    let big = "y".repeat(19);
    let pushed = state.deliver(payload_delivery(&big, 1), 0);
    assert_eq!(dropped(&pushed), vec!["queue_full", "queue_full"]);
    assert_eq!(sent_payloads(&state.attach(v5(), 0)), vec![big.clone()]);
    // drop-new keeps what is queued
    let mut keep = SessionState::new("c".into(), bytes(limits_with(10, 100, QueueOverflow::DropNew)));
    for payload in ["payload-1", "payload-2", "payload-3"] {
        keep.deliver(payload_delivery(payload, 1), 0);
    }
    assert_eq!(sent_payloads(&keep.attach(v5(), 0)), vec!["payload-1", "payload-2"]);
}

#[test]
fn every_sessions_queue_shares_the_nodes_memory_budget() {
    // a budget of 64 bytes: QoS 0 may fill the queues to 32 (three 10-byte messages), QoS 1
    // and 2 to 40 (four)
    let budget = crate::memory::MemoryBudget::new(64);
    let shared = |overflow| SessionLimits { budget: Arc::clone(&budget), ..limits_with(10, 100, overflow) };
    let mut first = SessionState::new("a".into(), shared(QueueOverflow::DropOldest));
    for payload in ["payload-1", "payload-2", "payload-3"] {
        assert!(dropped(&first.deliver(payload_delivery(payload, 0), 0)).is_empty());
    }
    assert_eq!(budget.queued(), 30);
    // past the QoS 0 share a QoS 0 message goes itself, even under drop-oldest
    let qos0 = first.deliver(payload_delivery("payload-4", 0), 0);
    assert_eq!((dropped(&qos0), persists(&qos0)), (vec!["memory_budget"], vec![]));
    // a QoS 1 message still finds room, in a session of its own
    let mut second = SessionState::new("b".into(), shared(QueueOverflow::DropOldest));
    assert!(dropped(&second.deliver(payload_delivery("payload-5", 1), 0)).is_empty());
    assert_eq!(budget.queued(), 40);
    // then a second session finds the node's share taken: nothing of its own to drop but
    // what it holds, so under drop-new the new message goes
    let mut third = SessionState::new("c".into(), shared(QueueOverflow::DropNew));
    assert_eq!(dropped(&third.deliver(payload_delivery("payload-6", 1), 0)), vec!["memory_budget"]);
    // the first drops its oldest to make room under its drop-oldest policy
    let qos1 = first.deliver(payload_delivery("payload-7", 1), 0);
    assert_eq!(dropped(&qos1), vec!["memory_budget"]);
    assert_eq!(persists(&qos1), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(3)]);
    assert_eq!(budget.queued(), 40);
    // what is sent leaves the budget; so does what an ended session held
    assert_eq!(sent_payloads(&first.attach(v5(), 0)), vec!["payload-2", "payload-3", "payload-7"]);
    assert_eq!(budget.queued(), 10);
    drop(second);
    assert_eq!(budget.queued(), 0);
    assert!(dropped(&third.deliver(payload_delivery("payload-8", 1), 0)).is_empty());
    assert_eq!(budget.queued(), 10);
    drop(third);
    assert_eq!(budget.queued(), 0);
}

#[test]
fn queue_bound_applies_behind_a_full_window() {
    let mut state = connected(limits_with(1, 1, QueueOverflow::DropNew), v5());
    state.deliver(payload_delivery("inflight", 1), 0);
    assert!(dropped(&state.deliver(payload_delivery("queued", 1), 0)).is_empty());
    assert_eq!(dropped(&state.deliver(payload_delivery("over", 1), 0)), vec!["queue_full"]);
    let released = handle(&mut state, Packet::PubAck(PubAck::new(1)));
    assert_eq!(sent_payloads(&released), vec!["queued"]);
}

#[test]
fn qos0_to_an_offline_session_is_queued_and_delivered_on_attach() {
    let mut state = SessionState::new("c".into(), limits());
    assert_eq!(persists(&state.deliver(delivery("t", 0), 0)), vec![PersistOp::PutOutgoing(0)]);
    assert_eq!(state.queued_len(), 1);
    let effects = state.attach(v5(), 0);
    assert_eq!(persists(&effects), vec![PersistOp::DeleteOutgoing(0)]);
    let publish = publishes(&effects)[0];
    assert_eq!((publish.qos, publish.pkid, publish.dup), (QoS::AtMostOnce, 0, false));
    assert_eq!((state.queued_len(), state.inflight_len()), (0, 0));
}

#[test]
fn unwritable_connection_queues_until_writable() {
    let mut state = connected(limits(), v5());
    assert!(state.set_writable(false, 0).is_empty());
    assert!(publishes(&state.deliver(delivery("t", 0), 0)).is_empty());
    assert_eq!(state.queued_len(), 1);
    assert_eq!(publishes(&state.set_writable(true, 0)).len(), 1);
}

#[test]
fn message_expiry_drops_and_forwards_the_remaining_interval() {
    let mut state = connected(limits(), v5());
    let expired = state.deliver(delivery_of(message("t", "old", Some(1_000)), 1), 1_000);
    assert_eq!(dropped(&expired), vec!["expired"]);
    assert!(publishes(&expired).is_empty() && persists(&expired).is_empty());

    let fresh = state.deliver(delivery_of(message("t", "fresh", Some(10_000)), 1), 3_500);
    let interval = publishes(&fresh)[0].properties.as_ref().and_then(|p| p.message_expiry_interval);
    assert_eq!(interval, Some(7), "6.5 s left is forwarded rounded up");

    let mut offline = SessionState::new("c".into(), limits());
    offline.deliver(delivery_of(message("t", "short", Some(5_000)), 1), 0);
    offline.deliver(delivery_of(message("t", "long", Some(20_000)), 1), 0);
    let effects = offline.attach(v5(), 6_000);
    assert_eq!(dropped(&effects), vec!["expired"]);
    assert_eq!(persists(&effects), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(1)]);
    assert_eq!(sent_payloads(&effects), vec!["long"]);
    let interval = publishes(&effects)[0].properties.as_ref().and_then(|p| p.message_expiry_interval);
    assert_eq!(interval, Some(14));
}

#[test]
fn inbound_topic_alias_registers_resolves_and_rejects() {
    let mut state = connected(limits(), v5());
    for bad in [0, 11] {
        let effects = handle(&mut state, with_alias(incoming("a/b", QoS::AtMostOnce, 0), bad));
        assert_eq!(closes(&effects), vec![DisconnectReasonCode::TopicAliasInvalid], "alias {bad}");
        assert!(routes(&effects).is_empty());
    }
    let registered = handle(&mut state, with_alias(incoming("a/b", QoS::AtMostOnce, 0), 3));
    assert_eq!(routes(&registered)[0].topic, "a/b");
    let resolved = handle(&mut state, with_alias(incoming("", QoS::AtLeastOnce, 5), 3));
    assert_eq!(routes(&resolved)[0].topic, "a/b", "the routed message carries the full topic");
    assert_eq!(acks(&resolved), vec![Packet::PubAck(PubAck::new(5))]);
    let unknown = handle(&mut state, with_alias(incoming("", QoS::AtMostOnce, 0), 4));
    assert_eq!(closes(&unknown), vec![DisconnectReasonCode::ProtocolError]);
    assert!(routes(&unknown).is_empty());
    let no_alias = handle(&mut state, Packet::Publish(incoming("", QoS::AtMostOnce, 0)));
    assert_eq!(closes(&no_alias), vec![DisconnectReasonCode::ProtocolError], "empty topic without alias");
    state.detach();
    state.attach(v5(), 0);
    let forgotten = handle(&mut state, with_alias(incoming("", QoS::AtMostOnce, 0), 3));
    assert_eq!(closes(&forgotten), vec![DisconnectReasonCode::ProtocolError], "aliases end with the connection");
}

#[test]
fn outbound_topic_alias_is_assigned_up_to_the_client_maximum() {
    let mut state =
        connected(limits_with(10, 10, QueueOverflow::DropOldest), ConnectionParams { topic_alias_max: 2, ..v5() });
    let mut sent = Vec::new();
    for topic_name in ["x", "x", "y", "z", "y"] {
        let effects = state.deliver(delivery(topic_name, 1), 0);
        let publish = publishes(&effects)[0].clone();
        sent.push((publish.topic, publish.properties.and_then(|p| p.topic_alias)));
    }
    let expected = [("x", Some(1)), ("", Some(1)), ("y", Some(2)), ("z", None), ("", Some(2))];
    assert_eq!(sent, expected.map(|(t, a)| (t.to_string(), a)).to_vec());
}

#[test]
fn delivery_carries_retain_and_subscription_identifiers_but_311_no_properties() {
    for params in [params(ProtocolVersion::V311), v5()] {
        let v5 = params.version == ProtocolVersion::V5;
        let mut state = connected(limits(), params);
        let delivery = Delivery { retain: true, subscription_ids: vec![3, 5], ..delivery("x", 1) };
        let effects = state.deliver(delivery, 0);
        let publish = publishes(&effects)[0];
        assert_eq!((publish.retain, publish.topic.as_str()), (true, "x"));
        let ids = publish.properties.as_ref().map(|p| p.subscription_identifiers.clone());
        assert_eq!(ids, v5.then(|| vec![3, 5]));
        assert_eq!(publish.properties.as_ref().and_then(|p| p.topic_alias), None, "the client allows no alias");
    }
}

#[test]
fn delivery_larger_than_client_maximum_packet_size_is_dropped() {
    let big = "x".repeat(100);
    let small_max = ConnectionParams { max_packet_size: Some(50), ..v5() };
    let mut state = connected(limits(), small_max.clone());
    for qos in [0, 1, 2] {
        let effects = state.deliver(payload_delivery(&big, qos), 0);
        assert_eq!(dropped(&effects), vec!["packet_too_large"], "qos {qos}");
        assert!(publishes(&effects).is_empty() && persists(&effects).is_empty());
    }
    assert_eq!((state.inflight_len(), state.queued_len()), (0, 0));
    assert_eq!(sent_payloads(&state.deliver(payload_delivery("small", 1), 0)), vec!["small"]);

    let mut offline = SessionState::new("c".into(), limits());
    offline.deliver(payload_delivery(&big, 1), 0);
    offline.deliver(payload_delivery("small", 1), 0);
    let effects = offline.attach(small_max, 0);
    assert_eq!(dropped(&effects), vec!["packet_too_large"]);
    assert_eq!(persists(&effects), vec![PersistOp::DeleteOutgoing(0), PersistOp::PutOutgoing(1)]);
    assert_eq!(sent_payloads(&effects), vec!["small"]);
}

#[test]
fn subscribe_grants_per_filter_and_persists() {
    let authorizer = deny(AclAction::Subscribe, "secret/#");
    let mut state = connected(limits(), v5());
    let mut filters = vec![SubscribeFilter::new("a/+".into(), QoS::AtLeastOnce)];
    filters.push(SubscribeFilter::new("a/#/b".into(), QoS::AtLeastOnce));
    filters.push(SubscribeFilter::new("secret/x".into(), QoS::AtLeastOnce));
    filters.push(SubscribeFilter::new("$share/g/b".into(), QoS::ExactlyOnce));
    let properties = Some(SubscribeProperties { id: Some(7), user_properties: vec![] });
    let effects = state.handle_packet(Packet::Subscribe(Subscribe { pkid: 4, filters, properties }), 0, &authorizer);
    let codes = vec![
        SubscribeReasonCode::QoS1,
        SubscribeReasonCode::TopicFilterInvalid,
        SubscribeReasonCode::NotAuthorized,
        SubscribeReasonCode::QoS2,
    ];
    assert_eq!(acks(&effects), vec![Packet::SubAck(SubAck { pkid: 4, return_codes: codes, properties: None })]);
    let subscribed = pick!(effects, Effect::Subscribed { raw_filter, options, is_new } =>
        (raw_filter.clone(), options.subscription_id, *is_new));
    assert_eq!(subscribed, vec![("a/+".into(), Some(7), true), ("$share/g/b".into(), Some(7), true)]);
    assert_eq!(persists(&effects), vec![PersistOp::Session]);
    assert_eq!(state.subscriptions().keys().cloned().collect::<Vec<_>>(), vec!["$share/g/b", "a/+"]);
    assert_eq!(state.subscriptions()["a/+"].subscription_id, Some(7));

    let mut filter = SubscribeFilter::new("a/+".into(), QoS::AtMostOnce);
    filter.retain_forward_rule = RetainForwardRule::Never;
    filter.preserve_retain = true;
    let again = handle(&mut state, Packet::Subscribe(Subscribe { pkid: 5, filters: vec![filter], properties: None }));
    let expected = SubOptions { retain_as_published: true, retain_handling: RetainHandling::Never, ..sub_options(0) };
    let replaced =
        pick!(again, Effect::Subscribed { raw_filter, options, is_new } => (raw_filter.as_str(), options, *is_new));
    assert_eq!(replaced, vec![("a/+", &expected, false)]);
    assert_eq!(state.subscriptions()["a/+"], expected, "a re-subscribe replaces the options");

    let refused = state.handle_packet(Packet::Subscribe(Subscribe::new("secret/y", QoS::AtMostOnce)), 0, &authorizer);
    assert!(persists(&refused).is_empty(), "nothing granted, nothing persisted");
    assert!(!refused.iter().any(|e| matches!(e, Effect::Subscribed { .. })));
}

#[test]
fn topic_levels_and_subscriptions_per_session_are_bounded() {
    let mut state = connected(SessionLimits { max_topic_levels: 3, max_subscriptions: 2, ..limits() }, v5());
    let subscribe = |pkid: u16, paths: &[&str]| {
        let filters = paths.iter().map(|path| SubscribeFilter::new(path.to_string(), QoS::AtLeastOnce)).collect();
        Packet::Subscribe(Subscribe { pkid, filters, properties: None })
    };
    let codes = |effects: &[Effect]| match acks(effects).as_slice() {
        [Packet::SubAck(ack)] => ack.return_codes.clone(),
        other => panic!("{other:?}"),
    };
    use SubscribeReasonCode::{QoS1, QuotaExceeded, TopicFilterInvalid};
    // four levels are one too many, wherever the wildcards are; a shared filter counts its own
    let effects = handle(&mut state, subscribe(1, &["a/b/c/d", "a/+/#", "$share/g/a/b/c/+"]));
    assert_eq!(codes(&effects), vec![TopicFilterInvalid, QoS1, TopicFilterInvalid]);
    // the second new filter fills the quota; the same filter twice in one packet adds one
    let effects = handle(&mut state, subscribe(2, &["x", "x", "y"]));
    assert_eq!(codes(&effects), vec![QoS1, QoS1, QuotaExceeded]);
    // a filter held already is replaced, within the quota
    let effects = handle(&mut state, subscribe(3, &["a/+/#", "z"]));
    assert_eq!(codes(&effects), vec![QoS1, QuotaExceeded]);
    assert_eq!(state.subscriptions().len(), 2);
    // a publish with too many levels is an invalid topic name
    let effects = handle(&mut state, Packet::Publish(incoming("a/b/c/d", QoS::AtLeastOnce, 9)));
    assert_eq!(closes(&effects), vec![DisconnectReasonCode::TopicNameInvalid]);
    assert!(routes(&effects).is_empty());
}

#[test]
fn a_connection_past_its_publish_rate_is_closed_with_0x96() {
    let limits = SessionLimits { max_publish_rate: Some(3), max_publish_bytes_rate: Some(100), ..limits() };
    let mut state = connected(limits.clone(), v5());
    let publish = |pkid: u16, payload: &str| {
        let mut publish = incoming("rate/t", QoS::AtLeastOnce, pkid);
        publish.payload = Bytes::from(payload.to_string());
        Packet::Publish(publish)
    };
    for pkid in 1..=3 {
        let effects = state.handle_packet(publish(pkid, "x"), 0, &Authorizer::allow_all());
        assert!(closes(&effects).is_empty(), "three a second may pass at once");
    }
    // a second later the bucket holds three again
    assert!(closes(&state.handle_packet(publish(4, "x"), 1_000, &Authorizer::allow_all())).is_empty());
    let effects = state.handle_packet(publish(5, "x"), 1_000, &Authorizer::allow_all());
    assert!(closes(&effects).is_empty());
    let effects = state.handle_packet(publish(6, "x"), 1_000, &Authorizer::allow_all());
    assert!(closes(&effects).is_empty());
    let effects = state.handle_packet(publish(7, "x"), 1_001, &Authorizer::allow_all());
    assert_eq!(closes(&effects), vec![DisconnectReasonCode::MessageRateTooHigh]);
    assert!(routes(&effects).is_empty(), "the publish past the rate goes nowhere");
    // bytes: 100 a second
    let mut state = connected(limits, v5());
    let effects = state.handle_packet(publish(1, &"b".repeat(80)), 0, &Authorizer::allow_all());
    assert!(closes(&effects).is_empty());
    let effects = state.handle_packet(publish(2, &"b".repeat(30)), 50, &Authorizer::allow_all());
    assert_eq!(closes(&effects), vec![DisconnectReasonCode::MessageRateTooHigh]);
}

#[test]
fn subscribe_shared_with_no_local_is_a_v5_protocol_error() {
    let mut filter = SubscribeFilter::new("$share/g/t".into(), QoS::AtLeastOnce);
    filter.nolocal = true;
    let subscribe = Subscribe { pkid: 1, filters: vec![filter], properties: None };
    let mut state = connected(limits(), v5());
    let effects = handle(&mut state, Packet::Subscribe(subscribe));
    assert_eq!(closes(&effects), vec![DisconnectReasonCode::ProtocolError]);
    assert!(acks(&effects).is_empty() && persists(&effects).is_empty());
    assert!(state.subscriptions().is_empty());
}

#[test]
fn subscribe_with_identifier_zero_or_no_filters_is_a_protocol_error() {
    let mut state = connected(limits(), v5());
    let mut subscribe = Subscribe::new("t", QoS::AtMostOnce);
    subscribe.properties = Some(SubscribeProperties { id: Some(0), user_properties: vec![] });
    assert_eq!(closes(&handle(&mut state, Packet::Subscribe(subscribe))), vec![DisconnectReasonCode::ProtocolError]);
    let empty = Subscribe { pkid: 1, filters: vec![], properties: None };
    assert_eq!(closes(&handle(&mut state, Packet::Subscribe(empty))), vec![DisconnectReasonCode::ProtocolError]);
}

#[test]
fn unsubscribe_reports_per_filter() {
    let mut state = connected(limits(), v5());
    handle(&mut state, Packet::Subscribe(Subscribe::new("a", QoS::AtLeastOnce)));
    let unsubscribe = Unsubscribe { pkid: 9, filters: vec!["a".into(), "b".into(), "a".into()], properties: None };
    let effects = handle(&mut state, Packet::Unsubscribe(unsubscribe));
    let reasons =
        vec![UnsubAckReason::Success, UnsubAckReason::NoSubscriptionExisted, UnsubAckReason::NoSubscriptionExisted];
    assert_eq!(acks(&effects), vec![Packet::UnsubAck(UnsubAck { pkid: 9, reasons, properties: None })]);
    assert_eq!(pick!(effects, Effect::Unsubscribed { raw_filter } => raw_filter.as_str()), vec!["a"]);
    assert_eq!(persists(&effects), vec![PersistOp::Session]);
    let nothing = handle(&mut state, Packet::Unsubscribe(Unsubscribe::new("b")));
    assert!(persists(&nothing).is_empty());
}

#[test]
fn publish_denied_by_acl_is_not_routed() {
    let authorizer = deny(AclAction::Publish, "secret/#");
    let mut state = connected(limits(), v5());
    let effects = state.handle_packet(Packet::Publish(incoming("secret/x", QoS::AtLeastOnce, 3)), 0, &authorizer);
    let not_authorized = PubAck { pkid: 3, reason: PubAckReason::NotAuthorized, properties: None };
    assert_eq!(acks(&effects), vec![Packet::PubAck(not_authorized)]);
    assert_eq!(dropped(&effects), vec!["not_authorized"]);
    assert!(routes(&effects).is_empty());

    let effects = state.handle_packet(Packet::Publish(incoming("secret/x", QoS::ExactlyOnce, 4)), 0, &authorizer);
    let refused = PubRec { pkid: 4, reason: PubRecReason::NotAuthorized, properties: None };
    assert_eq!(acks(&effects), vec![Packet::PubRec(refused)]);
    assert!(state.incoming_qos2().is_empty() && persists(&effects).is_empty() && routes(&effects).is_empty());

    let mut v311 = connected(limits(), params(ProtocolVersion::V311));
    let effects = v311.handle_packet(Packet::Publish(incoming("secret/x", QoS::AtLeastOnce, 3)), 0, &authorizer);
    assert_eq!(acks(&effects), vec![Packet::PubAck(PubAck::new(3))], "3.1.1 has no way to refuse");
    assert!(routes(&effects).is_empty());
    let allowed = v311.handle_packet(Packet::Publish(incoming("open", QoS::AtLeastOnce, 4)), 0, &authorizer);
    assert_eq!(routes(&allowed).len(), 1);
}

#[test]
fn publish_with_wildcard_or_unsupported_retain_closes() {
    let mut state = connected(limits(), v5());
    for topic_name in ["a/+", "a/#"] {
        let effects = handle(&mut state, Packet::Publish(incoming(topic_name, QoS::AtLeastOnce, 1)));
        assert_eq!(closes(&effects), vec![DisconnectReasonCode::TopicNameInvalid]);
        assert!(routes(&effects).is_empty() && acks(&effects).is_empty());
    }
    let mut no_retain = connected(SessionLimits { retain_available: false, ..limits() }, v5());
    let mut retained = incoming("t", QoS::AtMostOnce, 0);
    retained.retain = true;
    let effects = handle(&mut no_retain, Packet::Publish(retained.clone()));
    assert_eq!(closes(&effects), vec![DisconnectReasonCode::RetainNotSupported]);
    assert!(routes(&effects).is_empty());
    let effects = handle(&mut state, Packet::Publish(retained));
    assert!(routes(&effects)[0].retain);
}

#[test]
fn disconnect_reports_will_and_checks_session_expiry() {
    let mut state = connected(limits(), v5());
    let with_will = handle(&mut state, disconnect(DisconnectReasonCode::DisconnectWithWillMessage, None));
    assert!(matches!(with_will.as_slice(), [Effect::ClientDisconnected { publish_will: true }]));
    let normal = handle(&mut state, disconnect(DisconnectReasonCode::NormalDisconnection, None));
    assert!(matches!(normal.as_slice(), [Effect::ClientDisconnected { publish_will: false }]));

    let raised = handle(&mut state, disconnect(DisconnectReasonCode::NormalDisconnection, Some(60)));
    assert!(matches!(raised.as_slice(), [Effect::Close(DisconnectReasonCode::ProtocolError)]), "{raised:?}");
    assert_eq!(state.expiry_secs(), 0);

    state.set_expiry_secs(30);
    let changed = handle(&mut state, disconnect(DisconnectReasonCode::NormalDisconnection, Some(0)));
    assert!(matches!(
        changed.as_slice(),
        [Effect::Persist(PersistOp::Session), Effect::ClientDisconnected { publish_will: false }]
    ));
    assert!(!state.is_persistent());
}

#[test]
fn pingreq_and_unexpected_packets() {
    let mut state = connected(limits(), v5());
    assert!(
        matches!(handle(&mut state, Packet::PingReq).as_slice(), [Effect::Send(packet)] if matches!(**packet, Packet::PingResp))
    );
    assert_eq!(closes(&handle(&mut state, Packet::PingResp)), vec![DisconnectReasonCode::ProtocolError]);
}

#[test]
fn reset_unsubscribes_and_deletes_everything_persisted() {
    let mut state = connected(limits_with(1, 10, QueueOverflow::DropOldest), v5());
    handle(&mut state, Packet::Subscribe(Subscribe::new("a", QoS::AtLeastOnce)));
    handle(&mut state, Packet::Subscribe(Subscribe::new("b/#", QoS::AtLeastOnce)));
    state.deliver(delivery("a", 1), 0);
    state.deliver(delivery("a", 1), 0);
    handle(&mut state, Packet::Publish(incoming("x", QoS::ExactlyOnce, 5)));
    let effects = state.reset();
    let unsubscribed = pick!(effects, Effect::Unsubscribed { raw_filter } => raw_filter.as_str());
    assert_eq!(unsubscribed, vec!["a", "b/#"]);
    let expected = vec![PersistOp::DeleteOutgoing(0), PersistOp::DeleteOutgoing(1), PersistOp::DeleteIncoming(5)];
    assert_eq!(persists(&effects), expected);
    assert!(state.subscriptions().is_empty() && state.outgoing_seqs().is_empty() && state.incoming_qos2().is_empty());
    assert_eq!((state.inflight_len(), state.queued_len()), (0, 0));
}

fn outgoing_entry(payload: &str, qos: u8, phase: OutgoingPhase) -> Outgoing {
    Outgoing { message: message("t", payload, None), qos, retain: false, subscription_ids: vec![], phase }
}

#[test]
fn restore_then_attach_resends_restored_inflight() {
    let mut state = SessionState::new("c".into(), limits_with(3, 10, QueueOverflow::DropOldest));
    let outgoing = BTreeMap::from([
        (5, outgoing_entry("acked-never", 1, OutgoingPhase::AwaitAck(9))),
        (6, outgoing_entry("received", 2, OutgoingPhase::AwaitComp(10))),
        (7, outgoing_entry("queued", 1, OutgoingPhase::Queued)),
    ]);
    let subscriptions = BTreeMap::from([("a".to_string(), sub_options(1))]);
    state.restore(60, subscriptions, outgoing, BTreeSet::from([3]));
    assert_eq!((state.expiry_secs(), state.inflight_len(), state.queued_len()), (60, 2, 1));
    let effects = state.attach(v5(), 0);
    let sent: Vec<(u16, bool)> = publishes(&effects).iter().map(|p| (p.pkid, p.dup)).collect();
    assert_eq!(sent, vec![(9, true), (1, false)]);
    assert_eq!(sent_payloads(&effects), vec!["acked-never", "queued"]);
    assert_eq!(acks(&effects), vec![pubrel_packet(10, PubRelReason::Success)]);
    assert_eq!(persists(&effects), vec![PersistOp::PutOutgoing(7)]);
    let retransmitted = handle(&mut state, Packet::Publish(incoming("x", QoS::ExactlyOnce, 3)));
    assert!(routes(&retransmitted).is_empty(), "restored incoming QoS 2 ids still deduplicate");
    handle(&mut state, Packet::PubComp(PubComp::new(10)));
    assert_eq!(persists(&state.deliver(delivery("t", 1), 0)), vec![PersistOp::PutOutgoing(8)]);
}

mod properties {
    //! Random interleavings of deliveries, acks, detaches and attaches against the invariants.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Deliver { qos: u8, ttl_secs: Option<u8> },
        Ack { pick: usize, fail: bool },
        StrayAck(u16),
        Detach,
        Attach,
        Tick(u16),
    }

    fn op(expiring: bool) -> impl Strategy<Value = Op> {
        let ttl = if expiring { proptest::option::weighted(0.3, 1u8..4).boxed() } else { Just(None).boxed() };
        prop_oneof![
            5 => (0u8..3, ttl).prop_map(|(qos, ttl_secs)| Op::Deliver { qos, ttl_secs }),
            5 => (any::<usize>(), proptest::bool::weighted(0.1)).prop_map(|(pick, fail)| Op::Ack { pick, fail }),
            1 => (1u16..20).prop_map(Op::StrayAck),
            1 => Just(Op::Detach),
            1 => Just(Op::Attach),
            1 => (0u16..3000).prop_map(Op::Tick),
        ]
    }

    /// One outgoing entry the session holds; a message's id is its payload.
    #[derive(Debug, Clone, Copy)]
    struct Held {
        seq: u64,
        id: u64,
        qos: u8,
        phase: OutgoingPhase,
    }

    impl Held {
        fn pkid(&self) -> Option<u16> {
            match self.phase {
                OutgoingPhase::AwaitAck(pkid) | OutgoingPhase::AwaitComp(pkid) => Some(pkid),
                OutgoingPhase::Queued => None,
            }
        }
    }

    fn id_of(payload: &[u8]) -> u64 {
        std::str::from_utf8(payload).unwrap().parse().unwrap()
    }

    fn held(state: &SessionState) -> Vec<Held> {
        let entries = state.outgoing_seqs().into_iter().map(|seq| (seq, state.outgoing(seq).unwrap()));
        entries.map(|(seq, o)| Held { seq, id: id_of(&o.message.payload), qos: o.qos, phase: o.phase }).collect()
    }

    /// What the host persisted mirrors what the session holds.
    fn check_persistence(before: &[Held], after: &[Held], effects: &[Effect]) {
        let mut last = BTreeMap::new();
        for op in persists(effects) {
            if let PersistOp::PutOutgoing(seq) | PersistOp::DeleteOutgoing(seq) = op {
                last.insert(seq, op);
            }
        }
        let before: BTreeMap<u64, OutgoingPhase> = before.iter().map(|h| (h.seq, h.phase)).collect();
        let after: BTreeMap<u64, OutgoingPhase> = after.iter().map(|h| (h.seq, h.phase)).collect();
        for seq in before.keys().chain(after.keys()).chain(last.keys()) {
            match last.get(seq) {
                Some(PersistOp::PutOutgoing(_)) => assert!(after.contains_key(seq), "seq {seq} written then gone"),
                Some(_) => assert!(!after.contains_key(seq), "seq {seq} deleted but held"),
                None => assert_eq!(before.get(seq), after.get(seq), "seq {seq} changed without a persist op"),
            }
        }
    }

    struct Run {
        state: SessionState,
        params: ConnectionParams,
        window: usize,
        now: i64,
        qos_of: BTreeMap<u64, u8>,
        sends: BTreeMap<u64, usize>,
        acked: BTreeSet<u64>,
        dropped: BTreeSet<u64>,
        sent_qos0: BTreeSet<u64>,
    }

    impl Run {
        /// Accounts for one step's effects and checks that nothing vanished silently.
        fn step(&mut self, before: &[Held], new_id: Option<u64>, effects: &[Effect]) {
            for publish in publishes(effects) {
                let id = id_of(&publish.payload);
                let qos = self.qos_of[&id];
                assert_eq!(publish.qos, qos_from(qos), "message {id} is sent with its delivery qos");
                let count = self.sends.entry(id).or_default();
                if qos == 0 {
                    assert_eq!((publish.pkid, *count), (0, 0), "QoS 0 message {id} is sent once without pkid");
                    self.sent_qos0.insert(id);
                } else {
                    assert_ne!(publish.pkid, 0);
                    assert_eq!(publish.dup, *count > 0, "DUP is set exactly on re-sends of message {id}");
                }
                *count += 1;
            }
            let after = held(&self.state);
            let gone = before.iter().map(|h| h.id).chain(new_id).filter(|id| after.iter().all(|h| h.id != *id));
            // acked messages were recorded by `complete` before this step
            let silent: Vec<u64> = gone.filter(|id| !self.acked.contains(id) && !self.sent_qos0.contains(id)).collect();
            assert_eq!(silent.len(), dropped(effects).len(), "every vanished message is reported: {silent:?}");
            self.dropped.extend(silent);
            check_persistence(before, &after, effects);
            self.check_invariants(&after);
        }

        fn check_invariants(&self, held: &[Held]) {
            let pkids: Vec<u16> = held.iter().filter_map(Held::pkid).collect();
            let distinct: BTreeSet<u16> = pkids.iter().copied().collect();
            assert_eq!(distinct.len(), pkids.len(), "no pkid is used by two in-flight messages: {pkids:?}");
            assert_eq!((self.state.inflight_len(), self.state.queued_len()), (pkids.len(), held.len() - pkids.len()));
            assert!(held.iter().all(|h| h.qos > 0 || h.pkid().is_none()), "QoS 0 is never in flight");
            if self.state.is_connected() {
                assert!(self.state.inflight_len() <= self.window, "in flight beyond the window");
                if self.state.queued_len() > 0 {
                    assert_eq!(
                        self.state.inflight_len(),
                        self.window,
                        "connected, it queues only behind a full window"
                    );
                }
            }
            for id in self.qos_of.keys() {
                let places = [
                    self.acked.contains(id),
                    self.dropped.contains(id),
                    self.sent_qos0.contains(id),
                    held.iter().any(|h| h.id == *id),
                ];
                assert_eq!(places.iter().filter(|p| **p).count(), 1, "message {id} is in one place: {places:?}");
            }
        }

        fn deliver(&mut self, qos: u8, ttl_secs: Option<u8>) {
            let id = self.qos_of.len() as u64;
            self.qos_of.insert(id, qos);
            let expires = ttl_secs.map(|secs| self.now + i64::from(secs) * 1000);
            let before = held(&self.state);
            let effects = self.state.deliver(delivery_of(message("t", &id.to_string(), expires), qos), self.now);
            self.step(&before, Some(id), &effects);
        }

        fn client_sends(&mut self, packet: Packet, completes: Option<u64>) -> Vec<Effect> {
            let before = held(&self.state);
            let effects = self.state.handle_packet(packet, self.now, &Authorizer::allow_all());
            if let Some(id) = completes {
                assert!(held(&self.state).iter().all(|h| h.id != id), "the ack completes message {id}");
                self.acked.insert(id);
            }
            self.step(&before, None, &effects);
            effects
        }

        fn ack(&mut self, pick: usize, fail: bool) {
            let inflight: Vec<Held> = held(&self.state).into_iter().filter(|h| h.pkid().is_some()).collect();
            if !self.state.is_connected() || inflight.is_empty() {
                return;
            }
            let Held { id, qos, phase, .. } = inflight[pick % inflight.len()];
            match phase {
                OutgoingPhase::AwaitAck(pkid) if qos == 1 => {
                    self.client_sends(Packet::PubAck(PubAck::new(pkid)), Some(id));
                }
                OutgoingPhase::AwaitAck(pkid) if fail => {
                    let rec = PubRec { pkid, reason: PubRecReason::UnspecifiedError, properties: None };
                    assert!(acks(&self.client_sends(Packet::PubRec(rec), Some(id))).is_empty());
                }
                OutgoingPhase::AwaitAck(pkid) => {
                    let effects = self.client_sends(Packet::PubRec(PubRec::new(pkid)), None);
                    assert_eq!(acks(&effects), vec![pubrel_packet(pkid, PubRelReason::Success)]);
                }
                OutgoingPhase::AwaitComp(pkid) => {
                    self.client_sends(Packet::PubComp(PubComp::new(pkid)), Some(id));
                }
                OutgoingPhase::Queued => unreachable!("filtered out"),
            }
        }

        fn stray_ack(&mut self, pkid: u16) {
            if !self.state.is_connected() || held(&self.state).iter().any(|h| h.pkid() == Some(pkid)) {
                return;
            }
            for packet in [Packet::PubAck(PubAck::new(pkid)), Packet::PubComp(PubComp::new(pkid))] {
                assert!(self.client_sends(packet, None).is_empty(), "an ack for unknown pkid {pkid} does nothing");
            }
        }

        /// Attaches a connection (taking over any attached one).
        fn attach(&mut self) {
            self.state.detach();
            let before = held(&self.state);
            let effects = self.state.attach(self.params.clone(), self.now);
            let pubrels = pick!(acks(&effects), Packet::PubRel(rel) => rel.pkid);
            let awaiting_comp = before.iter().filter(|h| matches!(h.phase, OutgoingPhase::AwaitComp(_)));
            assert_eq!(pubrels, awaiting_comp.filter_map(Held::pkid).collect::<Vec<_>>(), "PUBREL is re-sent");
            assert_eq!(acks(&effects).len(), pubrels.len(), "only PUBREL besides PUBLISH on attach");
            let resent = publishes(&effects).iter().filter(|p| p.dup).count();
            let awaiting_ack = before.iter().filter(|h| matches!(h.phase, OutgoingPhase::AwaitAck(_))).count();
            assert_eq!(resent, awaiting_ack, "every unacknowledged PUBLISH is re-sent");
            self.step(&before, None, &effects);
        }

        /// With the client connected, acks until nothing is left.
        fn drain(&mut self) {
            if !self.state.is_connected() {
                self.attach();
            }
            while self.state.inflight_len() > 0 {
                self.ack(0, false);
            }
            assert_eq!((self.state.inflight_len(), self.state.queued_len()), (0, 0), "everything was delivered");
            for (id, qos) in &self.qos_of {
                if *qos > 0 && !self.dropped.contains(id) {
                    assert!(self.sends.get(id).is_some_and(|n| *n > 0), "QoS {qos} message {id} was sent");
                    assert!(self.acked.contains(id));
                }
            }
        }
    }

    fn run(limits: SessionLimits, receive_maximum: u16, ops: Vec<Op>) -> Run {
        let window = usize::from(receive_maximum.min(limits.max_inflight).max(1));
        let mut run = Run {
            state: SessionState::new("c".into(), limits),
            params: ConnectionParams { receive_maximum, ..v5() },
            window,
            now: 0,
            qos_of: BTreeMap::new(),
            sends: BTreeMap::new(),
            acked: BTreeSet::new(),
            dropped: BTreeSet::new(),
            sent_qos0: BTreeSet::new(),
        };
        run.attach();
        for op in ops {
            match op {
                Op::Deliver { qos, ttl_secs } => run.deliver(qos, ttl_secs),
                Op::Ack { pick, fail } => run.ack(pick, fail),
                Op::StrayAck(pkid) => run.stray_ack(pkid),
                Op::Detach => run.state.detach(),
                Op::Attach => run.attach(),
                Op::Tick(ms) => run.now += i64::from(ms),
            }
        }
        run.drain();
        run
    }

    fn overflow() -> impl Strategy<Value = QueueOverflow> {
        prop_oneof![Just(QueueOverflow::DropOldest), Just(QueueOverflow::DropNew)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_interleavings_keep_the_invariants(
            max_inflight in 1u16..5,
            receive_maximum in 1u16..6,
            max_queued in 0usize..6,
            overflow in overflow(),
            ops in proptest::collection::vec(op(true), 0..80),
        ) {
            // every other case bounds the queue in bytes too (a few messages' worth)
            let max_queued_bytes = if max_queued % 2 == 0 { 48 } else { usize::MAX };
            run(SessionLimits { max_inflight, max_queued, max_queued_bytes, overflow, ..limits() }, receive_maximum, ops);
        }

        #[test]
        fn without_limits_hit_every_message_is_delivered(
            max_inflight in 1u16..5,
            ops in proptest::collection::vec(op(false), 0..80),
        ) {
            let run = run(SessionLimits { max_inflight, max_queued: 1000, ..limits() }, 65535, ops);
            prop_assert!(run.dropped.is_empty(), "dropped {:?}", run.dropped);
        }
    }
}

#[test]
fn reconnect_resends_in_original_order_across_pkid_wrap() {
    let mut state = connected(limits_with(2, 10, QueueOverflow::DropOldest), v5());
    for pkid in 1..u16::MAX {
        state.deliver(delivery("t", 1), 0);
        handle(&mut state, Packet::PubAck(PubAck::new(pkid)));
    }
    state.deliver(payload_delivery("first", 1), 0);
    state.deliver(payload_delivery("second", 1), 0);
    state.detach();
    let effects = state.attach(v5(), 0);
    assert_eq!(sent_pkids(&effects), vec![u16::MAX, 1]);
    assert_eq!(sent_payloads(&effects), vec!["first", "second"]);
}

#[test]
fn oversized_delivery_does_not_register_an_outbound_alias() {
    let mut state = connected(limits(), ConnectionParams { topic_alias_max: 2, max_packet_size: Some(50), ..v5() });
    assert_eq!(dropped(&state.deliver(payload_delivery(&"x".repeat(100), 0), 0)), vec!["packet_too_large"]);
    let effects = state.deliver(payload_delivery("small", 0), 0);
    assert_eq!(publishes(&effects)[0].topic, "t");
}

#[test]
fn inflight_too_large_for_the_new_connection_is_dropped_on_attach() {
    let mut state = connected(limits(), v5());
    assert_eq!(sent_pkids(&state.deliver(payload_delivery(&"x".repeat(100), 1), 0)), vec![1]);
    state.detach();
    let effects = state.attach(ConnectionParams { max_packet_size: Some(50), ..v5() }, 0);
    assert_eq!(dropped(&effects), vec!["packet_too_large"]);
    assert_eq!(state.inflight_len(), 0);
}

#[test]
fn qos2_incoming_beyond_the_limit_is_accepted_from_a_311_client() {
    // 3.1.1 has no Receive Maximum to tell the client, so the server must not close on it
    let mut state = connected(limits(), ConnectionParams { version: ProtocolVersion::V311, ..v5() });
    for pkid in 1..=5 {
        let effects = handle(&mut state, Packet::Publish(incoming("t", QoS::ExactlyOnce, pkid)));
        assert!(closes(&effects).is_empty());
        assert_eq!(routes(&effects).len(), 1);
    }
    assert_eq!(state.incoming_qos2().len(), 5);
}
