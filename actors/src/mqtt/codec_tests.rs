//! Decoding tests for the MQTT codec: packets built by hand from the 3.1.1 and 5.0 specifications,
//! including the inputs mqttbytes gets wrong. Encoding and property tests are in `encode`.

use super::*;
use ProtocolVersion::{V5, V311};

const MAX: usize = 1 << 20;

/// A length-prefixed UTF-8 string or binary field.
fn s(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// A whole packet: first byte, remaining length (variable byte integer), body parts.
fn frame(byte1: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut out = vec![byte1];
    let mut buf = BytesMut::new();
    put_varint(&mut buf, body.len());
    out.extend_from_slice(&buf);
    out.extend(body);
    out
}

/// A property block: its length as a variable byte integer, then the properties.
fn props(parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut buf = BytesMut::new();
    put_varint(&mut buf, body.len());
    [&buf[..], &body].concat()
}

fn read(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, CodecError> {
    read_packet(&mut BytesMut::from(bytes), version, MAX)
}

/// Decodes exactly one packet that fills `bytes`.
fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = read_packet(&mut buf, version, MAX).unwrap().expect("a whole packet");
    assert!(buf.is_empty(), "bytes left after the packet");
    packet
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::from(&b"xx"[..]);
    write_packet(packet, version, &mut buf).unwrap();
    assert_eq!(buf.len() - 2, encoded_len(packet, version), "encoded_len of {packet:?}");
    buf[2..].to_vec()
}

fn is_malformed<T: std::fmt::Debug>(result: Result<T, CodecError>) -> bool {
    matches!(result, Err(CodecError::Malformed(_)))
}

fn is_protocol<T: std::fmt::Debug>(result: Result<T, CodecError>) -> bool {
    matches!(result, Err(CodecError::Protocol(_)))
}

fn user(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

fn no_publish_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
        subscription_identifiers: vec![],
        content_type: None,
    }
}

// ----- decoding packets from clients -----

#[test]
fn connect_v311_with_will_and_login_decodes() {
    // flags: user name, password, will retain, will qos 1, will, clean session
    let bytes =
        frame(0x10, &[&s("MQTT"), &[0x04, 0b1110_1110, 0x00, 0x3C], &s("c1"), &s("w/t"), &s("bye"), &s("u"), &s("p")]);
    let (version, connect) = read_connect(&mut BytesMut::from(&bytes[..]), MAX).unwrap().unwrap();
    assert_eq!(version, V311);
    let will = LastWill {
        topic: "w/t".into(),
        message: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: None,
    };
    let expected = Connect {
        protocol: Protocol::V4,
        keep_alive: 60,
        client_id: "c1".into(),
        clean_session: true,
        last_will: Some(will),
        login: Some(Login::new("u", "p")),
        properties: None,
    };
    assert_eq!(connect, expected);
    assert_eq!(encode(&Packet::Connect(expected), V311), bytes);
}

#[test]
fn connect_v5_with_properties_will_and_login_decodes() {
    let properties = props(&[
        &[0x11, 0, 0, 0, 120],  // session expiry interval
        &[0x21, 0, 10],         // receive maximum
        &[0x27, 0, 0, 0x10, 0], // maximum packet size
        &[0x22, 0, 5],          // topic alias maximum
        &[&[0x26], &s("k")[..], &s("v")].concat(),
    ]);
    let will_properties = props(&[&[0x18, 0, 0, 0, 5], &[&[0x03], &s("text/plain")[..]].concat()]);
    let bytes = frame(
        0x10,
        &[
            &s("MQTT"),
            &[0x05, 0b1100_0110, 0x00, 0x0A],
            &properties,
            &s("c5"),
            &will_properties,
            &s("w"),
            &s("x"),
            &s("u"),
            &s("p"),
        ],
    );
    let (version, connect) = read_connect(&mut BytesMut::from(&bytes[..]), MAX).unwrap().unwrap();
    assert_eq!(version, V5);
    let properties = connect.properties.clone().unwrap();
    assert_eq!(properties.session_expiry_interval, Some(120));
    assert_eq!(properties.receive_maximum, Some(10));
    assert_eq!(properties.max_packet_size, Some(4096));
    assert_eq!(properties.topic_alias_max, Some(5));
    assert_eq!(properties.user_properties, vec![user("k", "v")]);
    let will = connect.last_will.clone().unwrap();
    assert_eq!(
        (will.topic.as_str(), &will.message[..], will.qos, will.retain),
        ("w", &b"x"[..], QoS::AtMostOnce, false)
    );
    let will_properties = will.properties.unwrap();
    assert_eq!(will_properties.delay_interval, Some(5));
    assert_eq!(will_properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(connect.login, Some(Login::new("u", "p")));
    assert_eq!((connect.client_id.as_str(), connect.keep_alive, connect.clean_session), ("c5", 10, true));
    assert_eq!(encode(&Packet::Connect(connect), V5), bytes, "mqttbytes writes properties in this order");
}

#[test]
fn protocol_levels_are_detected() {
    let connect = |name: &str, level: u8| frame(0x10, &[&s(name), &[level, 0x02, 0, 60], &s("c")]);
    let detect = |bytes: Vec<u8>| read_connect(&mut BytesMut::from(&bytes[..]), MAX).map(|c| c.map(|(v, _)| v));
    assert_eq!(detect(connect("MQIsdp", 3)), Err(CodecError::UnsupportedProtocol(3)));
    assert_eq!(detect(connect("MQTT", 3)), Err(CodecError::UnsupportedProtocol(3)));
    assert_eq!(detect(connect("MQTT", 4)), Ok(Some(V311)));
    assert_eq!(detect(connect("MQTT", 6)), Err(CodecError::UnsupportedProtocol(6)));
    assert!(is_malformed(detect(connect("MQTX", 4))));
    // a v5 connect needs a property length; a level 5 connect without one is malformed
    assert!(is_malformed(detect(connect("MQTT", 5))));
    let v5 = frame(0x10, &[&s("MQTT"), &[5, 0x02, 0, 60, 0], &s("c")]);
    assert_eq!(detect(v5), Ok(Some(V5)));
    assert_eq!(detect(vec![0x30, 0x00]), Err(CodecError::NotConnect));
    assert_eq!(detect(vec![0x82]), Err(CodecError::NotConnect));
    assert_eq!(detect(vec![]), Ok(None));
}

#[test]
fn unsupported_protocol_connack_matches_the_client_version() {
    let mut buf = BytesMut::new();
    write_connack_unsupported(3, &mut buf);
    assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x01]);
    buf.clear();
    write_connack_unsupported(6, &mut buf);
    assert_eq!(&buf[..], &[0x20, 0x03, 0x00, 0x84, 0x00]);
    assert_eq!(CodecError::UnsupportedProtocol(3).connack_code(), ConnectReturnCode::UnsupportedProtocolVersion);
}

#[test]
fn connect_flag_violations_are_rejected() {
    let connect = |level: u8, flags: u8, rest: &[&[u8]]| {
        let props: &[u8] = if level == 5 { &[0] } else { &[] };
        let bytes = frame(0x10, &[&[&s("MQTT")[..], &[level, flags, 0, 60], props].concat(), &rest.concat()]);
        read_connect(&mut BytesMut::from(&bytes[..]), MAX)
    };
    assert!(is_malformed(connect(4, 0x03, &[&s("c")])), "reserved flag");
    assert!(is_malformed(connect(5, 0x22, &[&s("c")])), "will retain without will");
    assert!(is_malformed(connect(4, 0x1E, &[&s("c"), &s("t"), &s("m")])), "will qos 3");
    assert!(is_malformed(connect(4, 0x42, &[&s("c"), &s("p")])), "3.1.1 password without user name");
    assert!(connect(5, 0x42, &[&s("c"), &s("p")]).is_ok(), "v5 allows a password alone");
    assert!(is_malformed(connect(4, 0x02, &[&s("c"), &[0]])), "trailing bytes");
    assert!(is_malformed(connect(4, 0x02, &[&[0, 2, 0xC3, 0x28]])), "client id not utf-8");
    assert!(is_malformed(connect(4, 0x06, &[&s("c"), &s("a/+"), &s("m")])), "will topic with wildcard");
    assert!(is_malformed(connect(4, 0x12, &[&s("c")])), "will qos without will");
    assert!(is_malformed(connect(4, 0x06, &[&s("c")])), "connect flags promise a will that is missing");
}

#[test]
fn publish_v311_at_every_qos_decodes() {
    let qos0 = decode_one(&frame(0x30, &[&s("a/b"), b"hi"]), V311);
    assert_eq!(qos0, Packet::Publish(Publish::new("a/b", QoS::AtMostOnce, "hi")));
    let Packet::Publish(qos1) = decode_one(&frame(0x32, &[&s("a/b"), &[0, 7], b"hi"]), V311) else { panic!() };
    assert_eq!((qos1.qos, qos1.pkid, &qos1.payload[..], qos1.properties), (QoS::AtLeastOnce, 7, &b"hi"[..], None));
    let Packet::Publish(qos2) = decode_one(&frame(0x3D, &[&s("a/b"), &[0, 8], b""]), V311) else { panic!() };
    assert_eq!((qos2.qos, qos2.pkid, qos2.dup, qos2.retain), (QoS::ExactlyOnce, 8, true, true));
    assert!(qos2.payload.is_empty());
}

#[test]
fn publish_v5_with_and_without_properties_decodes() {
    let plain = decode_one(&frame(0x30, &[&s("a/b"), &[0], b"hi"]), V5);
    assert_eq!(plain, Packet::Publish(Publish::new("a/b", QoS::AtMostOnce, "hi")));
    let properties = props(&[
        &[0x01, 1],
        &[0x02, 0, 0, 0, 60],
        &[0x23, 0, 2],
        &[&[0x08], &s("resp")[..]].concat(),
        &[&[0x09], &s("cd")[..]].concat(),
        &[&[0x26], &s("k")[..], &s("v")].concat(),
        &[&[0x03], &s("json")[..]].concat(),
    ]);
    let Packet::Publish(publish) = decode_one(&frame(0x32, &[&s(""), &[0, 7], &properties, b"{}"]), V5) else {
        panic!()
    };
    assert_eq!((publish.topic.as_str(), publish.pkid, &publish.payload[..]), ("", 7, &b"{}"[..]));
    let expected = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(2),
        response_topic: Some("resp".into()),
        correlation_data: Some(Bytes::from_static(b"cd")),
        user_properties: vec![user("k", "v")],
        subscription_identifiers: vec![],
        content_type: Some("json".into()),
    };
    assert_eq!(publish.properties, Some(expected));
}

#[test]
fn publish_payload_is_not_copied() {
    let mut buf = BytesMut::from(&frame(0x30, &[&s("t"), &[0], &[7; 100]])[..]);
    let range = buf.as_ptr_range();
    let Some(Packet::Publish(publish)) = read_packet(&mut buf, V5, MAX).unwrap() else { panic!() };
    assert!(range.contains(&publish.payload.as_ptr()));
}

#[test]
fn publish_topic_rules() {
    assert!(is_protocol(read(&frame(0x30, &[&s(""), &[0]]), V5)), "empty topic without alias");
    assert!(is_protocol(read(&frame(0x30, &[&s("")]), V311)), "empty topic in 3.1.1");
    assert!(is_malformed(read(&frame(0x30, &[&s("a/+"), &[0]]), V5)), "wildcard in topic name");
    assert!(is_malformed(read(&frame(0x30, &[&[0, 2, b'a', 0xFF]]), V311)), "topic not utf-8");
    assert!(is_malformed(read(&frame(0x30, &[&[0, 2, b'a', 0]]), V311)), "null character in topic");
    assert!(is_protocol(read(&frame(0x32, &[&s("t"), &[0, 0]]), V311)), "packet id zero");
    assert!(is_protocol(read(&frame(0x30, &[&s("t"), &props(&[&[0x23, 0, 0]])]), V5)), "topic alias zero");
}

#[test]
fn puback_v5_short_and_long_forms_decode() {
    let success = Packet::PubAck(PubAck::new(7));
    assert_eq!(decode_one(&[0x40, 0x02, 0x00, 0x07], V5), success);
    assert_eq!(decode_one(&[0x40, 0x04, 0x00, 0x07, 0x00, 0x00], V5), success);
    let Packet::PubAck(ack) = decode_one(&[0x40, 0x03, 0x00, 0x07, 0x10], V5) else { panic!() };
    assert_eq!((ack.reason, ack.properties), (PubAckReason::NoMatchingSubscribers, None));
    let long = frame(
        0x40,
        &[&[0, 7, 0x87], &props(&[&[&[0x1F], &s("no")[..]].concat(), &[&[0x26], &s("k")[..], &s("v")].concat()])],
    );
    let Packet::PubAck(ack) = decode_one(&long, V5) else { panic!() };
    let properties = PubAckProperties { reason_string: Some("no".into()), user_properties: vec![user("k", "v")] };
    assert_eq!((ack.reason, ack.properties), (PubAckReason::NotAuthorized, Some(properties)));
    assert!(is_malformed(read(&[0x40, 0x03, 0x00, 0x07, 0x05], V5)), "unknown reason code");
    assert!(is_malformed(read(&[0x40, 0x03, 0x00, 0x07, 0x00], V311)), "3.1.1 puback is 2 bytes");
    assert!(is_protocol(read(&[0x40, 0x02, 0x00, 0x00], V5)), "packet id zero");
    let Packet::PubRel(rel) = decode_one(&[0x62, 0x03, 0x00, 0x07, 0x92], V5) else { panic!() };
    assert_eq!(rel.reason, PubRelReason::PacketIdentifierNotFound);
}

#[test]
fn subscribe_v5_with_options_and_identifier_decodes() {
    // qos 1, no local, retain as published, retain handling 2
    let bytes = frame(0x82, &[&[0, 10], &props(&[&[0x0B, 0xC8, 0x01]]), &s("a/+"), &[0b0010_1101], &s("b/#"), &[0]]);
    let Packet::Subscribe(subscribe) = decode_one(&bytes, V5) else { panic!() };
    assert_eq!(subscribe.pkid, 10);
    assert_eq!(subscribe.properties, Some(SubscribeProperties { id: Some(200), user_properties: vec![] }));
    let first = &subscribe.filters[0];
    assert_eq!(
        (first.path.as_str(), first.qos, first.nolocal, first.preserve_retain),
        ("a/+", QoS::AtLeastOnce, true, true)
    );
    assert_eq!(first.retain_forward_rule, RetainForwardRule::Never);
    assert_eq!(subscribe.filters[1], SubscribeFilter::new("b/#".into(), QoS::AtMostOnce));
    assert_eq!(encode(&Packet::Subscribe(subscribe), V5), bytes);
}

#[test]
fn subscribe_rules() {
    assert!(is_protocol(read(&frame(0x82, &[&[0, 1]]), V311)), "no filters");
    assert!(is_protocol(read(&frame(0x82, &[&[0, 1, 0]]), V5)), "no filters");
    assert!(is_malformed(read(&frame(0x82, &[&[0, 1], &s("a"), &[0x04]]), V311)), "3.1.1 reserved option bits");
    assert!(is_malformed(read(&frame(0x82, &[&[0, 1, 0], &s("a"), &[0x40]]), V5)), "v5 reserved option bits");
    assert!(is_malformed(read(&frame(0x82, &[&[0, 1, 0], &s("a"), &[0x30]]), V5)), "retain handling 3");
    assert!(is_malformed(read(&frame(0x82, &[&[0, 1, 0], &s("a"), &[0x03]]), V5)), "qos 3");
    assert!(is_malformed(read(&frame(0x82, &[&[0, 1, 0], &s("a")]), V5)), "missing options");
    assert!(is_protocol(read(&frame(0x82, &[&[0, 1], &props(&[&[0x0B, 0]]), &s("a"), &[0]]), V5)), "subscription id 0");
    let two_ids = props(&[&[0x0B, 1], &[0x0B, 2]]);
    assert!(is_protocol(read(&frame(0x82, &[&[0, 1], &two_ids, &s("a"), &[0]]), V5)), "two subscription ids");
}

#[test]
fn unsubscribe_ping_and_disconnect_decode() {
    let Packet::Unsubscribe(v5) = decode_one(&frame(0xA2, &[&[0, 11, 0], &s("a/+"), &s("b")]), V5) else { panic!() };
    assert_eq!((v5.pkid, v5.filters, v5.properties), (11, vec!["a/+".to_string(), "b".to_string()], None));
    assert_eq!(
        decode_one(&frame(0xA2, &[&[0, 11], &s("a")]), V311),
        Packet::Unsubscribe(Unsubscribe { pkid: 11, filters: vec!["a".into()], properties: None })
    );
    assert!(is_protocol(read(&frame(0xA2, &[&[0, 11, 0]]), V5)), "no filters");
    assert_eq!(decode_one(&[0xC0, 0x00], V5), Packet::PingReq);
    assert!(is_malformed(read(&[0xC0, 0x01, 0x00], V311)));
    let normal = Packet::Disconnect(Disconnect::new());
    assert_eq!(decode_one(&[0xE0, 0x00], V5), normal);
    assert_eq!(decode_one(&[0xE0, 0x00], V311), normal);
    let Packet::Disconnect(with_will) = decode_one(&[0xE0, 0x01, 0x04], V5) else { panic!() };
    assert_eq!((with_will.reason_code, with_will.properties), (DisconnectReasonCode::DisconnectWithWillMessage, None));
    let Packet::Disconnect(expiry) = decode_one(&frame(0xE0, &[&[0], &props(&[&[0x11, 0, 0, 0, 10]])]), V5) else {
        panic!()
    };
    assert_eq!(expiry.properties.unwrap().session_expiry_interval, Some(10));
    assert!(is_malformed(read(&[0xE0, 0x01, 0x00], V311)));
}

#[test]
fn fixed_header_flags_are_checked() {
    assert!(is_malformed(read(&[0x60, 0x02, 0x00, 0x01], V5)), "pubrel needs 0b0010");
    assert!(is_malformed(read(&frame(0x80, &[&[0, 1, 0], &s("a"), &[0]]), V5)), "subscribe needs 0b0010");
    assert!(is_malformed(read(&frame(0xA0, &[&[0, 1], &s("a")]), V311)), "unsubscribe needs 0b0010");
    assert!(is_malformed(read(&[0x42, 0x02, 0x00, 0x01], V5)), "puback needs 0");
    assert!(is_malformed(read(&[0xC1, 0x00], V311)), "pingreq needs 0");
    assert!(is_malformed(read(&[0x36], V5)), "publish qos 3, before the rest arrives");
    assert!(is_malformed(read(&[0x38, 0x03, 0x00, 0x01, b'a'], V311)), "dup on qos 0");
    assert!(is_malformed(read(&[0x00, 0x00], V5)), "packet type 0");
    assert!(is_protocol(read(&[0xF0, 0x00], V5)), "auth");
    assert!(is_malformed(read(&[0xF0, 0x00], V311)), "type 15 in 3.1.1");
    assert!(is_protocol(read(&frame(0x10, &[&s("MQTT"), &[4, 2, 0, 60], &s("c")]), V311)), "second connect");
}

#[test]
fn framing_limits() {
    assert!(is_malformed(read(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], V5)), "remaining length over 4 bytes");
    // only the fixed header has arrived: reject before waiting for 2 MB
    let too_large = read_packet(&mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]), V5, 1000);
    assert_eq!(too_large, Err(CodecError::PacketTooLarge { size: 4 + 2_097_151, max: 1000 }));
    let exact = frame(0x30, &[&s("t"), &[0], &[1; 10]]);
    assert!(read_packet(&mut BytesMut::from(&exact[..]), V5, exact.len()).unwrap().is_some());
    let over = read_packet(&mut BytesMut::from(&exact[..]), V5, exact.len() - 1);
    assert_eq!(over, Err(CodecError::PacketTooLarge { size: exact.len(), max: exact.len() - 1 }));
    let connect = frame(0x10, &[&s("MQTT"), &[4, 2, 0, 60], &s("c")]);
    assert!(matches!(read_connect(&mut BytesMut::from(&connect[..]), 5), Err(CodecError::PacketTooLarge { .. })));
    assert_eq!(
        CodecError::PacketTooLarge { size: 2, max: 1 }.disconnect_reason(),
        DisconnectReasonCode::PacketTooLarge
    );
    assert_eq!(CodecError::Malformed(String::new()).disconnect_reason(), DisconnectReasonCode::MalformedPacket);
    assert_eq!(CodecError::Protocol(String::new()).disconnect_reason(), DisconnectReasonCode::ProtocolError);
}

#[test]
fn partial_packets_need_more_bytes_and_leave_the_buffer_untouched() {
    let publish = frame(0x32, &[&s("a/b"), &[0, 1], &props(&[&[0x02, 0, 0, 0, 9]]), &[5; 200]]);
    let connect = frame(0x10, &[&s("MQTT"), &[5, 2, 0, 60, 0], &s("c")]);
    for end in 0..publish.len() {
        let mut buf = BytesMut::from(&publish[..end]);
        assert_eq!(read_packet(&mut buf, V5, MAX), Ok(None));
        assert_eq!(&buf[..], &publish[..end]);
    }
    for end in 0..connect.len() {
        let mut buf = BytesMut::from(&connect[..end]);
        assert_eq!(read_connect(&mut buf, MAX).map(|c| c.is_some()), Ok(false));
        assert_eq!(&buf[..], &connect[..end]);
    }
    let mut two = BytesMut::from(&[&publish[..], &[0xC0, 0x00]].concat()[..]);
    assert!(matches!(read_packet(&mut two, V5, MAX), Ok(Some(Packet::Publish(_)))));
    assert_eq!(read_packet(&mut two, V5, MAX), Ok(Some(Packet::PingReq)));
    assert!(two.is_empty());
}

#[test]
fn properties_are_bounded_and_checked() {
    let publish = |properties: Vec<u8>| read(&frame(0x30, &[&s("t"), &properties, b"payload"]), V5);
    // mqttbytes reads past the property length; here the 4-byte value crosses it
    assert!(is_malformed(publish(vec![3, 0x02, 0, 0, 0, 60])));
    assert!(is_malformed(publish(vec![100, 0x02, 0, 0, 0, 60])), "length beyond the packet");
    assert!(is_malformed(publish(props(&[&[0x11, 0, 0, 0, 1]]))), "session expiry is not a publish property");
    assert!(is_malformed(publish(props(&[&[0x7F]]))), "unknown property");
    assert!(is_protocol(publish(props(&[&[0x02, 0, 0, 0, 1], &[0x02, 0, 0, 0, 2]]))), "duplicate property");
    assert!(is_protocol(publish(props(&[&[0x01, 2]]))), "payload format indicator 2");
    let users = props(&[&[&[0x26], &s("a")[..], &s("1")].concat(), &[&[0x26], &s("a")[..], &s("2")].concat()]);
    let Ok(Some(Packet::Publish(p))) = publish(users) else { panic!() };
    assert_eq!(p.properties.unwrap().user_properties, vec![user("a", "1"), user("a", "2")]);
}

#[path = "codec_encode_tests.rs"]
mod encode;
