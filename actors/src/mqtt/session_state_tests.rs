//! Unit and property tests of the session state machine.

use super::*;
use crate::mqtt::auth::Authorizer;

fn limits() -> SessionLimits {
    SessionLimits {
        max_inflight: 2,
        max_queued: 3,
        overflow: QueueOverflow::DropOldest,
        max_topic_alias: 10,
        retain_available: true,
    }
}

fn params(version: ProtocolVersion) -> ConnectionParams {
    ConnectionParams {
        version,
        receive_maximum: 65535,
        max_packet_size: None,
        topic_alias_max: 0,
        identity: Identity { client_id: "c".into(), username: None },
        will: None,
    }
}

fn delivery(topic_name: &str, qos: u8) -> Delivery {
    Delivery {
        message: Arc::new(Message {
            topic: topic_name.into(),
            payload: Bytes::from_static(b"p"),
            qos,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
            received_at_ms: 0,
            publisher: "other".into(),
        }),
        qos,
        retain: false,
        subscription_ids: vec![],
    }
}

fn sent_pkids(effects: &[Effect]) -> Vec<u16> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(Packet::Publish(p)) => Some(p.pkid),
            _ => None,
        })
        .collect()
}

#[test]
fn qos1_window_queues_and_acks_release() {
    let mut state = SessionState::new("c".into(), limits());
    state.attach(params(ProtocolVersion::V5), 0);
    let mut pkids = Vec::new();
    for _ in 0..4 {
        pkids.extend(sent_pkids(&state.deliver(delivery("t", 1), 0)));
    }
    assert_eq!(pkids, vec![1, 2], "only the window of 2 is sent");
    assert_eq!(state.queued_len(), 2);
    let effects = state.handle_packet(Packet::PubAck(PubAck::new(1)), 0, &Authorizer::allow_all());
    assert_eq!(sent_pkids(&effects), vec![3]);
    assert_eq!(state.inflight_len(), 2);
}
