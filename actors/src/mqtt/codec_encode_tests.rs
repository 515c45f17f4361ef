//! Encoding tests for the MQTT codec: the v5 encoders checked byte for byte against the
//! specification, the v5 → 3.1.1 conversions, and property tests (round trips, robustness).

use super::super::decode::{pub_ack_reason, pub_comp_reason, pub_rec_reason, pub_rel_reason, unsub_ack_reason};
use super::*;
use proptest::prelude::*;

// ----- encoders checked against the specification's byte layout -----

#[test]
fn connack_v5_encoding() {
    // mqttbytes omits the property length when there are no properties; it is mandatory
    assert_eq!(
        encode(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, true)), V5),
        [0x20, 0x03, 0x01, 0x00, 0x00]
    );
    assert_eq!(
        encode(&Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, true)), V5),
        [0x20, 0x03, 0x00, 0x87, 0x00]
    );
    let mut properties = ConnAckProperties::new();
    properties.assigned_client_identifier = Some("auto-1".into());
    properties.server_keep_alive = Some(30);
    properties.receive_max = Some(100);
    properties.topic_alias_max = Some(10);
    properties.max_packet_size = Some(1 << 20);
    properties.retain_available = Some(1);
    properties.reason_string = Some("ok".into());
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ConnectReturnCode::Success,
        properties: Some(properties),
    });
    let expected = frame(
        0x20,
        &[
            &[0x00, 0x00],
            &props(&[
                &[0x21, 0, 100],
                &[0x25, 1],
                &[0x27, 0, 0x10, 0, 0],
                &[&[0x12], &s("auto-1")[..]].concat(),
                &[0x22, 0, 10],
                &[&[0x1F], &s("ok")[..]].concat(),
                &[0x13, 0, 30],
            ]),
        ],
    );
    assert_eq!(encode(&connack, V5), expected);
    assert_eq!(decode_one(&expected, V5), connack);
}

#[test]
fn publish_v5_encoding() {
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(3),
        response_topic: Some("r".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![user("k", "v")],
        subscription_identifiers: vec![1, 300],
        content_type: Some("t".into()),
    };
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: String::new(),
        pkid: 5,
        properties: Some(properties),
        payload: Bytes::from_static(b"p"),
    };
    let expected = frame(
        0x33,
        &[
            &s(""),
            &[0, 5],
            &props(&[
                &[0x01, 1],
                &[0x02, 0, 0, 0, 60],
                &[0x23, 0, 3],
                &[&[0x08], &s("r")[..]].concat(),
                &[&[0x09], &s("c")[..]].concat(),
                &[&[0x26], &s("k")[..], &s("v")].concat(),
                &[0x0B, 1],
                &[0x0B, 0xAC, 0x02],
                &[&[0x03], &s("t")[..]].concat(),
            ]),
            b"p",
        ],
    );
    let packet = Packet::Publish(publish);
    assert_eq!(encode(&packet, V5), expected);
    assert_eq!(decode_one(&expected, V5), packet);
    let qos0 = Publish { dup: true, ..Publish::new("a", QoS::AtMostOnce, "x") };
    assert_eq!(encode(&Packet::Publish(qos0), V5), [0x30, 0x05, 0, 1, b'a', 0, b'x'], "no dup at qos 0");
}

#[test]
fn ack_v5_encoding() {
    let reason = |p: &str| Some(PubAckProperties { reason_string: Some(p.into()), user_properties: vec![] });
    let ack = |reason, properties| Packet::PubAck(PubAck { pkid: 7, reason, properties });
    assert_eq!(encode(&ack(PubAckReason::Success, None), V5), [0x40, 0x02, 0, 7]);
    assert_eq!(encode(&ack(PubAckReason::QuotaExceeded, None), V5), [0x40, 0x03, 0, 7, 0x97]);
    let empty = Some(PubAckProperties { reason_string: None, user_properties: vec![] });
    assert_eq!(encode(&ack(PubAckReason::Success, empty), V5), [0x40, 0x04, 0, 7, 0, 0]);
    assert_eq!(
        encode(&ack(PubAckReason::NotAuthorized, reason("x")), V5),
        [0x40, 0x08, 0, 7, 0x87, 0x04, 0x1F, 0, 1, b'x']
    );
    let rec = PubRec { pkid: 7, reason: PubRecReason::NoMatchingSubscribers, properties: None };
    assert_eq!(encode(&Packet::PubRec(rec), V5), [0x50, 0x03, 0, 7, 0x10]);
    assert_eq!(encode(&Packet::PubRec(PubRec::new(7)), V5), [0x50, 0x02, 0, 7]);
    let rel = PubRel { pkid: 7, reason: PubRelReason::PacketIdentifierNotFound, properties: None };
    assert_eq!(encode(&Packet::PubRel(rel), V5), [0x62, 0x03, 0, 7, 0x92]);
    assert_eq!(encode(&Packet::PubRel(PubRel::new(7)), V5), [0x62, 0x02, 0, 7]);
    let comp = PubComp {
        pkid: 7,
        reason: PubCompReason::Success,
        properties: Some(PubCompProperties { reason_string: None, user_properties: vec![user("a", "b")] }),
    };
    assert_eq!(encode(&Packet::PubComp(comp), V5), [0x70, 0x0B, 0, 7, 0, 0x07, 0x26, 0, 1, b'a', 0, 1, b'b']);
    assert!(write_packet(&Packet::PubAck(PubAck::new(0)), V5, &mut BytesMut::new()).is_err());
}

#[test]
fn suback_unsuback_and_disconnect_v5_encoding() {
    let suback =
        SubAck::new(9, vec![SubscribeReasonCode::QoS1, SubscribeReasonCode::QoS0, SubscribeReasonCode::NotAuthorized]);
    assert_eq!(encode(&Packet::SubAck(suback), V5), [0x90, 0x06, 0, 9, 0, 0x01, 0x00, 0x87]);
    let unsuback = UnsubAck {
        pkid: 9,
        reasons: vec![UnsubAckReason::Success, UnsubAckReason::NoSubscriptionExisted],
        properties: None,
    };
    assert_eq!(encode(&Packet::UnsubAck(unsuback), V5), [0xB0, 0x05, 0, 9, 0, 0x00, 0x11]);
    // mqttbytes' UnsubAck::new has no reason codes and would encode an invalid packet
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert!(is_protocol(write_packet(&Packet::UnsubAck(UnsubAck::new(9)), V5, &mut buf)));
    assert!(is_protocol(write_packet(&Packet::SubAck(SubAck::new(9, vec![])), V5, &mut buf)));
    assert_eq!(&buf[..], b"keep");
    let shutdown = Disconnect { reason_code: DisconnectReasonCode::ServerShuttingDown, properties: None };
    assert_eq!(encode(&Packet::Disconnect(shutdown), V5), [0xE0, 0x01, 0x8B]);
    assert_eq!(encode(&Packet::Disconnect(Disconnect::new()), V5), [0xE0, 0x00]);
    let mut properties = DisconnectProperties::new();
    properties.reason_string = Some("bye".into());
    let taken = Disconnect { reason_code: DisconnectReasonCode::SessionTakenOver, properties: Some(properties) };
    assert_eq!(encode(&Packet::Disconnect(taken), V5), [0xE0, 0x08, 0x8E, 0x06, 0x1F, 0, 3, b'b', b'y', b'e']);
    assert_eq!(encode(&Packet::PingResp, V5), [0xD0, 0x00]);
}

#[test]
fn v311_conversions() {
    let connack = |code| encode(&Packet::ConnAck(ConnAck::new(code, true)), V311);
    assert_eq!(connack(ConnectReturnCode::Success), [0x20, 0x02, 0x01, 0]);
    assert_eq!(connack(ConnectReturnCode::UnsupportedProtocolVersion), [0x20, 0x02, 0x00, 1]);
    assert_eq!(connack(ConnectReturnCode::ClientIdentifierNotValid), [0x20, 0x02, 0x00, 2]);
    for unavailable in [
        ConnectReturnCode::ServerUnavailable,
        ConnectReturnCode::ServerBusy,
        ConnectReturnCode::QuotaExceeded,
        ConnectReturnCode::Banned,
    ] {
        assert_eq!(connack(unavailable), [0x20, 0x02, 0x00, 3]);
    }
    assert_eq!(connack(ConnectReturnCode::BadUserNamePassword), [0x20, 0x02, 0x00, 4]);
    assert_eq!(connack(ConnectReturnCode::NotAuthorized), [0x20, 0x02, 0x00, 5]);
    let codes = vec![
        SubscribeReasonCode::QoS0,
        SubscribeReasonCode::QoS1,
        SubscribeReasonCode::QoS2,
        SubscribeReasonCode::NotAuthorized,
        SubscribeReasonCode::QuotaExceeded,
    ];
    assert_eq!(encode(&Packet::SubAck(SubAck::new(3, codes)), V311), [0x90, 0x07, 0, 3, 0, 1, 2, 0x80, 0x80]);
    let ack = PubAck {
        pkid: 7,
        reason: PubAckReason::NotAuthorized,
        properties: Some(PubAckProperties { reason_string: Some("x".into()), user_properties: vec![] }),
    };
    assert_eq!(encode(&Packet::PubAck(ack), V311), [0x40, 0x02, 0, 7]);
    assert_eq!(encode(&Packet::PubRel(PubRel::new(7)), V311), [0x62, 0x02, 0, 7]);
    assert_eq!(encode(&Packet::UnsubAck(UnsubAck::new(9)), V311), [0xB0, 0x02, 0, 9]);
    assert_eq!(encode(&Packet::Disconnect(Disconnect::new()), V311), b"");
    let publish = Publish {
        properties: Some(PublishProperties { message_expiry_interval: Some(5), ..no_publish_properties() }),
        pkid: 1,
        ..Publish::new("a", QoS::AtLeastOnce, "x")
    };
    assert_eq!(encode(&Packet::Publish(publish.clone()), V311), [0x32, 0x06, 0, 1, b'a', 0, 1, b'x']);
    let aliased = Publish { topic: String::new(), ..publish };
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert!(is_protocol(write_packet(&Packet::Publish(aliased), V311, &mut buf)), "3.1.1 has no topic alias");
    assert_eq!(&buf[..], b"keep");
}

// ----- property tests -----

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn topic() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{1,24}"
}

fn users() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..3)
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn publish_properties() -> impl Strategy<Value = Option<PublishProperties>> {
    let fields = (
        prop::option::of(0..=1u8),
        prop::option::of(any::<u32>()),
        prop::option::of(1..=u16::MAX),
        prop::option::of(topic()),
        prop::option::of(binary()),
        users(),
        prop::collection::vec(1..=MAX_REMAINING_LENGTH, 0..4),
        prop::option::of(text()),
    );
    fields.prop_map(|(pfi, expiry, alias, response, correlation, users, ids, content)| {
        let p = PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: expiry,
            topic_alias: alias,
            response_topic: response,
            correlation_data: correlation,
            user_properties: users,
            subscription_identifiers: ids,
            content_type: content,
        };
        (p != no_publish_properties()).then_some(p)
    })
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![topic(), Just(String::new())],
        1..=u16::MAX,
        publish_properties(),
        binary(),
    )
        .prop_map(|(qos, dup, retain, topic, pkid, mut properties, payload)| {
            if topic.is_empty() {
                properties.get_or_insert_with(no_publish_properties).topic_alias.get_or_insert(1);
            }
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                pkid: if at_most_once { 0 } else { pkid },
                properties,
                payload,
            }
        })
}

fn subscribe() -> impl Strategy<Value = Subscribe> {
    let rule = prop_oneof![
        Just(RetainForwardRule::OnEverySubscribe),
        Just(RetainForwardRule::OnNewSubscribe),
        Just(RetainForwardRule::Never)
    ];
    let filter = ("[^\u{0}]{1,24}", qos(), any::<bool>(), any::<bool>(), rule).prop_map(
        |(path, qos, nolocal, preserve_retain, retain_forward_rule)| SubscribeFilter {
            path,
            qos,
            nolocal,
            preserve_retain,
            retain_forward_rule,
        },
    );
    let properties = (prop::option::of(1..=MAX_REMAINING_LENGTH), users()).prop_map(|(id, user_properties)| {
        (id.is_some() || !user_properties.is_empty()).then_some(SubscribeProperties { id, user_properties })
    });
    (1..=u16::MAX, prop::collection::vec(filter, 1..4), properties).prop_map(|(pkid, filters, properties)| Subscribe {
        pkid,
        filters,
        properties,
    })
}

/// A reason string and user properties, the fields every ack property struct has.
#[derive(Debug, Clone)]
struct Reason {
    reason_string: Option<String>,
    user_properties: Vec<(String, String)>,
}

/// An optional reason string and user properties, `None` when both are empty.
fn reason_properties() -> impl Strategy<Value = Option<Reason>> {
    (prop::option::of(text()), users()).prop_map(|(reason_string, user_properties)| {
        (reason_string.is_some() || !user_properties.is_empty()).then_some(Reason { reason_string, user_properties })
    })
}

fn pub_ack_reason_code() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99])
}

fn ack() -> impl Strategy<Value = Packet> {
    let fields = (0..4u8, 1..=u16::MAX, pub_ack_reason_code(), any::<bool>(), reason_properties());
    fields.prop_map(|(kind, pkid, code, found, props)| {
        let rel_code = if found { 0 } else { 0x92 };
        match kind {
            0 => Packet::PubAck(PubAck {
                pkid,
                reason: pub_ack_reason(code).unwrap(),
                properties: reason_props!(PubAckProperties, props),
            }),
            1 => Packet::PubRec(PubRec {
                pkid,
                reason: pub_rec_reason(code).unwrap(),
                properties: reason_props!(PubRecProperties, props),
            }),
            2 => Packet::PubRel(PubRel {
                pkid,
                reason: pub_rel_reason(rel_code).unwrap(),
                properties: reason_props!(PubRelProperties, props),
            }),
            _ => Packet::PubComp(PubComp {
                pkid,
                reason: pub_comp_reason(rel_code).unwrap(),
                properties: reason_props!(PubCompProperties, props),
            }),
        }
    })
}

fn suback_or_unsuback() -> impl Strategy<Value = Packet> {
    let sub_codes = prop::collection::vec(
        prop::sample::select(vec![0u8, 1, 2, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]),
        1..5,
    );
    let unsub_codes = prop::collection::vec(prop::sample::select(vec![0u8, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]), 1..5);
    (any::<bool>(), 1..=u16::MAX, sub_codes, unsub_codes, reason_properties()).prop_map(
        |(sub, pkid, sub_codes, unsub_codes, props)| {
            if sub {
                let return_codes = sub_codes.into_iter().map(|c| SubscribeReasonCode::try_from(c).unwrap()).collect();
                Packet::SubAck(SubAck { pkid, return_codes, properties: reason_props!(SubAckProperties, props) })
            } else {
                let reasons = unsub_codes.into_iter().map(|c| unsub_ack_reason(c).unwrap()).collect();
                Packet::UnsubAck(UnsubAck { pkid, reasons, properties: reason_props!(UnsubAckProperties, props) })
            }
        },
    )
}

fn connect() -> impl Strategy<Value = Connect> {
    let will_properties = (
        prop::option::of(any::<u32>()),
        prop::option::of(0..=1u8),
        prop::option::of(text()),
        prop::option::of(binary()),
        users(),
    )
        .prop_map(|(delay, pfi, content, correlation, users)| {
            let empty =
                delay.is_none() && pfi.is_none() && content.is_none() && correlation.is_none() && users.is_empty();
            (!empty).then_some(WillProperties {
                delay_interval: delay,
                payload_format_indicator: pfi,
                message_expiry_interval: None,
                content_type: content,
                response_topic: None,
                correlation_data: correlation,
                user_properties: users,
            })
        });
    let will = prop::option::of(
        (topic(), binary(), qos(), any::<bool>(), will_properties)
            .prop_map(|(topic, message, qos, retain, properties)| LastWill { topic, message, qos, retain, properties }),
    );
    let login = prop::option::of(("[^\u{0}]{1,12}", text()).prop_map(|(u, p)| Login::new(u, p)));
    let properties = prop::option::of(
        (
            prop::option::of(any::<u32>()),
            prop::option::of(1..=u16::MAX),
            prop::option::of(1..=u32::MAX),
            users(),
            prop::option::of((text(), prop::option::of(binary()))),
        )
            .prop_map(|(expiry, receive, size, users, auth)| ConnectProperties {
                session_expiry_interval: expiry,
                receive_maximum: receive,
                max_packet_size: size,
                topic_alias_max: Some(4),
                request_response_info: None,
                request_problem_info: Some(0),
                user_properties: users,
                authentication_method: auth.as_ref().map(|(method, _)| method.clone()),
                authentication_data: auth.and_then(|(_, data)| data),
            }),
    );
    (text(), any::<u16>(), any::<bool>(), will, login, properties).prop_map(
        |(client_id, keep_alive, clean_session, last_will, login, properties)| Connect {
            protocol: Protocol::V5,
            keep_alive,
            client_id,
            clean_session,
            last_will,
            login,
            properties,
        },
    )
}

/// What a 3.1.1 round trip keeps of a v5 packet.
fn v311_view(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p) => Packet::Publish(Publish { properties: None, ..p }),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| SubscribeFilter::new(f.path, f.qos)).collect(),
            properties: None,
        }),
        Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid)),
        Packet::PubRec(a) => Packet::PubRec(PubRec::new(a.pkid)),
        Packet::PubRel(a) => Packet::PubRel(PubRel::new(a.pkid)),
        Packet::PubComp(a) => Packet::PubComp(PubComp::new(a.pkid)),
        Packet::SubAck(s) => {
            let codes = s
                .return_codes
                .into_iter()
                .map(|c| SubscribeReasonCode::try_from(suback_code_v311(c)).unwrap_or(SubscribeReasonCode::Unspecified))
                .collect();
            Packet::SubAck(SubAck::new(s.pkid, codes))
        }
        Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck::new(u.pkid)),
        other => other,
    }
}

fn round_trip(packet: &Packet, version: ProtocolVersion) -> Result<Packet, CodecError> {
    let mut buf = BytesMut::new();
    write_packet(packet, version, &mut buf)?;
    assert_eq!(buf.len(), encoded_len(packet, version));
    let decoded = read_packet(&mut buf, version, MAX)?.expect("a whole packet");
    assert!(buf.is_empty());
    Ok(decoded)
}

/// Reads packets until the buffer runs dry or an error; each packet must consume bytes.
fn drain(buf: &mut BytesMut, version: ProtocolVersion) {
    loop {
        let before = buf.len();
        match read_packet(buf, version, MAX) {
            Ok(Some(_)) => assert!(buf.len() < before, "a packet consumed nothing"),
            Ok(None) | Err(_) => return,
        }
    }
}

proptest! {
    #[test]
    fn publish_round_trips(publish in publish()) {
        let packet = Packet::Publish(publish);
        prop_assert_eq!(round_trip(&packet, V5)?, packet.clone());
        let Packet::Publish(p) = &packet else { unreachable!() };
        if !p.topic.is_empty() {
            prop_assert_eq!(round_trip(&packet, V311)?, v311_view(packet));
        }
    }

    #[test]
    fn subscribe_round_trips(subscribe in subscribe()) {
        let packet = Packet::Subscribe(subscribe);
        prop_assert_eq!(round_trip(&packet, V5)?, packet.clone());
        prop_assert_eq!(round_trip(&packet, V311)?, v311_view(packet));
    }

    #[test]
    fn acks_round_trip(packet in prop_oneof![ack(), suback_or_unsuback()]) {
        prop_assert_eq!(round_trip(&packet, V5)?, packet.clone());
        prop_assert_eq!(round_trip(&packet, V311)?, v311_view(packet));
    }

    #[test]
    fn disconnect_round_trips(code in any::<u8>(), expiry in prop::option::of(any::<u32>()), reason in prop::option::of(text()), users in users()) {
        let Ok(reason_code) = DisconnectReasonCode::try_from(code) else { return Ok(()) };
        let properties = (expiry.is_some() || reason.is_some() || !users.is_empty()).then_some(DisconnectProperties {
            session_expiry_interval: expiry, reason_string: reason, user_properties: users, server_reference: None,
        });
        let packet = Packet::Disconnect(Disconnect { reason_code, properties });
        prop_assert_eq!(round_trip(&packet, V5)?, packet);
    }

    #[test]
    fn connect_round_trips(connect in connect()) {
        for version in [V5, V311] {
            let expected = match version {
                V5 => connect.clone(),
                V311 => Connect {
                    protocol: Protocol::V4,
                    properties: None,
                    last_will: connect.last_will.clone().map(|w| LastWill { properties: None, ..w }),
                    ..connect.clone()
                },
            };
            let mut buf = BytesMut::new();
            write_packet(&Packet::Connect(connect.clone()), version, &mut buf)?;
            prop_assert_eq!(buf.len(), encoded_len(&Packet::Connect(connect.clone()), version));
            prop_assert_eq!(read_connect(&mut buf, MAX)?, Some((version, expected)));
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = read_connect(&mut BytesMut::from(&bytes[..]), MAX);
        drain(&mut BytesMut::from(&bytes[..]), V5);
        drain(&mut BytesMut::from(&bytes[..]), V311);
    }

    #[test]
    fn random_bytes_after_connect_never_panic(level in 4..=5u8, bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let connect: &[u8] = &frame(0x10, &[&s("MQTT"), &[level, 2, 0, 60], if level == 5 { &[0] } else { &[] }, &s("c")]);
        let mut buf = BytesMut::from(&[connect, &bytes].concat()[..]);
        let (version, _) = read_connect(&mut buf, MAX)?.expect("a whole connect");
        drain(&mut buf, version);
    }

    #[test]
    fn mutated_packets_never_panic(packet in prop_oneof![publish().prop_map(Packet::Publish), subscribe().prop_map(Packet::Subscribe), ack(), suback_or_unsuback()],
                                    v5 in any::<bool>(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let version = if v5 { V5 } else { V311 };
        let mut encoded = BytesMut::new();
        if write_packet(&packet, version, &mut encoded).is_ok() {
            let mut bytes = encoded.to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            drain(&mut BytesMut::from(&bytes[..]), version);
            bytes.truncate(cut.index(bytes.len() + 1));
            drain(&mut BytesMut::from(&bytes[..]), version);
        }
    }
}
