//! The few MQTT 3.1.1 packets a load generator or a simulated client needs, written straight
//! into a reusable output buffer and parsed in place from the read buffer, with no allocation
//! per message. No clock and no socket: callers own both.
//!
//! A bench payload starts with a 20-byte stamp: publisher id (u32), sequence number (u64) and
//! send time in ns since the run's base instant (u64), all little-endian; zeros pad the rest.

/// CONNACK packet type.
pub const CONNACK: u8 = 2;
/// PUBLISH packet type.
pub const PUBLISH: u8 = 3;
/// PUBACK packet type.
pub const PUBACK: u8 = 4;
/// PUBREC packet type.
pub const PUBREC: u8 = 5;
/// PUBREL packet type.
pub const PUBREL: u8 = 6;
/// PUBCOMP packet type.
pub const PUBCOMP: u8 = 7;
/// SUBACK packet type.
pub const SUBACK: u8 = 9;
/// PINGRESP packet type.
pub const PINGRESP: u8 = 13;

/// Bytes of the stamp at the start of every bench payload.
pub const STAMP_LEN: usize = 20;

const ZEROS: [u8; 4096] = [0; 4096];

fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends CONNECT (3.1.1, clean session, no will) for `client_id`.
pub fn connect(out: &mut Vec<u8>, client_id: &str, keepalive: u16) {
    connect_with(out, client_id, keepalive, true, None);
}

/// Appends CONNECT (3.1.1) with the given session flag and an optional will (topic, payload, QoS, retain).
pub fn connect_with(
    out: &mut Vec<u8>,
    client_id: &str,
    keepalive: u16,
    clean_session: bool,
    will: Option<(&str, &[u8], u8, bool)>,
) {
    let mut flags = if clean_session { 0x02 } else { 0 };
    let mut len = 10 + 2 + client_id.len();
    if let Some((topic, payload, qos, retain)) = will {
        flags |= 0x04 | ((qos & 0x03) << 3);
        if retain {
            flags |= 0x20;
        }
        len += 2 + topic.len() + 2 + payload.len();
    }
    out.push(0x10);
    put_remaining_length(out, len);
    put_str(out, "MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(flags);
    out.extend_from_slice(&keepalive.to_be_bytes());
    put_str(out, client_id);
    if let Some((topic, payload, _, _)) = will {
        put_str(out, topic);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
    }
}

/// Appends an MQTT 5 CONNECT with a Session Expiry Interval and an optional will with a Will
/// Delay Interval: `will` is (topic, payload, qos, delay seconds).
pub fn connect_v5(
    out: &mut Vec<u8>,
    client_id: &str,
    keepalive: u16,
    clean_start: bool,
    session_expiry_secs: u32,
    will: Option<(&str, &[u8], u8, u32)>,
) {
    let mut flags = if clean_start { 0x02 } else { 0 };
    // variable header: name, level, flags, keepalive, properties (length 5: Session Expiry Interval)
    let mut len = 10 + 1 + 5 + 2 + client_id.len();
    if let Some((topic, payload, qos, _)) = will {
        flags |= 0x04 | ((qos & 0x03) << 3);
        // will properties (length 5: Will Delay Interval), topic, payload
        len += 1 + 5 + 2 + topic.len() + 2 + payload.len();
    }
    out.push(0x10);
    put_remaining_length(out, len);
    put_str(out, "MQTT");
    out.push(5);
    out.push(flags);
    out.extend_from_slice(&keepalive.to_be_bytes());
    out.push(5);
    out.push(0x11);
    out.extend_from_slice(&session_expiry_secs.to_be_bytes());
    put_str(out, client_id);
    if let Some((topic, payload, _, delay_secs)) = will {
        out.push(5);
        out.push(0x18);
        out.extend_from_slice(&delay_secs.to_be_bytes());
        put_str(out, topic);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
    }
}

/// Appends SUBSCRIBE for one filter.
pub fn subscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str, qos: u8) {
    out.push(0x82);
    put_remaining_length(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_str(out, filter);
    out.push(qos);
}

/// Appends a PUBLISH whose payload is a stamp followed by zeros up to `payload_len`.
#[inline]
pub fn publish(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, stamp: (u32, u64, u64), payload_len: usize) {
    let payload_len = payload_len.max(STAMP_LEN);
    out.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_remaining_length(out, 2 + topic.len() + id_len + payload_len);
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(&stamp.0.to_le_bytes());
    out.extend_from_slice(&stamp.1.to_le_bytes());
    out.extend_from_slice(&stamp.2.to_le_bytes());
    let mut pad = payload_len - STAMP_LEN;
    while pad > 0 {
        let n = pad.min(ZEROS.len());
        out.extend_from_slice(&ZEROS[..n]);
        pad -= n;
    }
}

/// Appends a PUBLISH (no retain) of `payload`; `packet_id` is written only at QoS 1 and 2.
pub fn publish_payload(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, dup: bool, payload: &[u8]) {
    publish_flagged(out, topic, qos, packet_id, dup, false, payload);
}

/// Appends a PUBLISH with RETAIN set.
pub fn publish_retained(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, dup: bool, payload: &[u8]) {
    publish_flagged(out, topic, qos, packet_id, dup, true, payload);
}

fn publish_flagged(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, dup: bool, retain: bool, payload: &[u8]) {
    let qos = qos & 0x03;
    out.push(0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_remaining_length(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends PUBACK, PUBREC, PUBREL or PUBCOMP.
#[inline]
pub fn ack(out: &mut Vec<u8>, kind: u8, packet_id: u16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    out.push((kind << 4) | flags);
    out.push(2);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// Appends PINGREQ.
pub fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xC0, 0x00]);
}

/// Appends DISCONNECT.
pub fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xE0, 0x00]);
}

/// One packet borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Packet type (upper nibble of the first byte).
    pub kind: u8,
    /// Flags (lower nibble).
    pub flags: u8,
    /// Variable header and payload.
    pub body: &'a [u8],
}

/// Parses the packet at the start of `buf`: Ok(None) when more bytes are needed, else the
/// frame and its total length.
#[inline]
pub fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&byte) = buf.get(i) else { return Ok(None) };
        len |= ((byte & 0x7F) as usize) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("malformed remaining length");
        }
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((Frame { kind: buf[0] >> 4, flags: buf[0] & 0x0F, body: &buf[i..total] }, total)))
}

/// The packet id at the start of an ack's body.
#[inline]
pub fn packet_id(body: &[u8]) -> u16 {
    if body.len() >= 2 { u16::from_be_bytes([body[0], body[1]]) } else { 0 }
}

/// A received PUBLISH: QoS, packet id and the payload's stamp, if it has one.
#[derive(Debug, Clone, Copy)]
pub struct Publish {
    /// QoS of the delivery.
    pub qos: u8,
    /// Packet id (0 at QoS 0).
    pub packet_id: u16,
    /// (publisher id, sequence, send time ns), when the payload is a bench payload.
    pub stamp: Option<(u32, u64, u64)>,
}

/// Parses a PUBLISH body.
#[inline]
pub fn parse_publish(flags: u8, body: &[u8]) -> Option<Publish> {
    let (qos, _, packet_id, payload) = split_publish(flags, body)?;
    Some(Publish { qos, packet_id, stamp: parse_stamp(payload) })
}

/// A PUBLISH body's parts: (qos, topic bytes, packet id, payload).
#[inline]
fn split_publish(flags: u8, body: &[u8]) -> Option<(u8, &[u8], u16, &[u8])> {
    let qos = (flags >> 1) & 0x03;
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let topic = body.get(2..2 + topic_len)?;
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some((qos, topic, packet_id, body.get(at..)?))
}

/// A received PUBLISH borrowed from the read buffer, every field of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishPacket<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Application payload.
    pub payload: &'a [u8],
    /// DUP flag (a redelivery).
    pub dup: bool,
    /// QoS of the delivery.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet id (0 at QoS 0).
    pub packet_id: u16,
}

/// Parses a PUBLISH's flags and body into topic, payload, flags and packet id; None if malformed.
pub fn parse_publish_full(flags: u8, body: &[u8]) -> Option<PublishPacket<'_>> {
    let (qos, topic, packet_id, payload) = split_publish(flags, body)?;
    if qos == 3 {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?;
    Some(PublishPacket { topic, payload, dup: flags & 0x08 != 0, qos, retain: flags & 0x01 != 0, packet_id })
}

/// Parses a CONNACK body into (session present, return code); None if it is too short.
pub fn parse_connack(body: &[u8]) -> Option<(bool, u8)> {
    match body {
        [flags, code, ..] => Some((flags & 0x01 != 0, *code)),
        _ => None,
    }
}

/// Parses a SUBACK body into its packet id and one return code per filter (0x80 = refused).
pub fn parse_suback(body: &[u8]) -> Option<(u16, &[u8])> {
    match body {
        [hi, lo, codes @ ..] => Some((u16::from_be_bytes([*hi, *lo]), codes)),
        _ => None,
    }
}

/// Reads the stamp at the start of a payload.
#[inline]
pub fn parse_stamp(payload: &[u8]) -> Option<(u32, u64, u64)> {
    if payload.len() < STAMP_LEN {
        return None;
    }
    let publisher = u32::from_le_bytes(payload[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(payload[4..12].try_into().ok()?);
    let sent = u64::from_le_bytes(payload[12..20].try_into().ok()?);
    Some((publisher, seq, sent))
}

/// Writes a stamp followed by zeros into a fresh payload of `len` bytes (Kafka records).
pub fn stamp_into(payload: &mut Vec<u8>, stamp: (u32, u64, u64), len: usize) {
    payload.clear();
    payload.extend_from_slice(&stamp.0.to_le_bytes());
    payload.extend_from_slice(&stamp.1.to_le_bytes());
    payload.extend_from_slice(&stamp.2.to_le_bytes());
    payload.resize(len.max(STAMP_LEN), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_v5_carries_expiry_and_will_delay() {
        let mut out = Vec::new();
        connect_v5(&mut out, "w", 30, false, 600, Some(("t/w", b"gone", 1, 2)));
        let (frame, len) = parse(&out).unwrap().unwrap();
        assert_eq!((frame.kind, len), (1, out.len()));
        let body = frame.body;
        assert_eq!(&body[..7], b"\0\x04MQTT\x05");
        assert_eq!(body[7], 0x04 | 0x08, "will flag and will qos 1, no clean start");
        assert_eq!(&body[10..16], &[5, 0x11, 0, 0, 2, 88]);
        assert_eq!(&body[16..19], b"\0\x01w");
        assert_eq!(&body[19..25], &[5, 0x18, 0, 0, 0, 2]);
        assert!(body.ends_with(b"\0\x03t/w\0\x04gone"));
    }

    #[test]
    fn publish_round_trips_through_parse() {
        let mut out = Vec::new();
        publish(&mut out, "bench/t/0", 1, 7, (3, 42, 99), 200);
        let (frame, len) = parse(&out).unwrap().unwrap();
        assert_eq!((frame.kind, len), (PUBLISH, out.len()));
        let p = parse_publish(frame.flags, frame.body).unwrap();
        assert_eq!((p.qos, p.packet_id, p.stamp), (1, 7, Some((3, 42, 99))));
        assert!(parse(&out[..out.len() - 1]).unwrap().is_none());
    }

    /// The fixed header, variable header and payload of a packet written by `write`.
    fn parsed(out: &[u8]) -> (u8, u8, &[u8]) {
        let (frame, len) = parse(out).unwrap().unwrap();
        assert_eq!(len, out.len());
        (frame.kind, frame.flags, frame.body)
    }

    #[test]
    fn connect_delegates_to_connect_with_a_clean_session_and_no_will() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        connect(&mut a, "c1", 30);
        connect_with(&mut b, "c1", 30, true, None);
        assert_eq!(a, b);
        assert_eq!(a, [&[0x10, 14, 0, 4][..], b"MQTT", &[4, 0x02, 0, 30, 0, 2], b"c1"].concat());
    }

    #[test]
    fn connect_with_writes_session_flag_and_will() {
        let mut out = Vec::new();
        connect_with(&mut out, "dev-7", 60, false, Some(("status/dev-7", b"gone", 1, true)));
        let (kind, flags, body) = parsed(&out);
        assert_eq!((kind, flags), (1, 0));
        assert_eq!(&body[..7], &[0, 4, b'M', b'Q', b'T', b'T', 4]);
        // will flag, will QoS 1, will retain; no clean session
        assert_eq!(body[7], 0x04 | (1 << 3) | 0x20);
        assert_eq!(&body[8..10], &60u16.to_be_bytes());
        let payload = &body[10..];
        let expected = [&[0, 5][..], b"dev-7", &[0, 12], b"status/dev-7", &[0, 4], b"gone"].concat();
        assert_eq!(payload, expected.as_slice());

        let mut out = Vec::new();
        connect_with(&mut out, "x", 0, true, Some(("t", b"", 2, false)));
        let (_, _, body) = parsed(&out);
        assert_eq!(body[7], 0x02 | 0x04 | (2 << 3));
        assert_eq!(&body[10..], &[0, 1, b'x', 0, 1, b't', 0, 0]);
    }

    #[test]
    fn publish_payload_round_trips_through_parse_publish_full() {
        for (qos, packet_id, dup) in [(0u8, 0u16, false), (1, 7, false), (1, 9, true), (2, 65535, true)] {
            let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
            let mut out = Vec::new();
            publish_payload(&mut out, "a/b/c", qos, packet_id, dup, &payload);
            let (kind, flags, body) = parsed(&out);
            assert_eq!(kind, PUBLISH);
            let p = parse_publish_full(flags, body).unwrap();
            assert_eq!(
                p,
                PublishPacket { topic: "a/b/c", payload: &payload, dup, qos, retain: false, packet_id },
                "qos {qos}"
            );
        }
        let mut out = Vec::new();
        publish_payload(&mut out, "empty", 1, 3, false, b"");
        let (_, flags, body) = parsed(&out);
        let p = parse_publish_full(flags, body).unwrap();
        assert_eq!((p.topic, p.payload, p.packet_id), ("empty", &b""[..], 3));
    }

    #[test]
    fn parse_publish_full_reads_retain_and_rejects_malformed_bodies() {
        let body = [&[0, 1][..], b"t", b"hi"].concat();
        let p = parse_publish_full(0x01, &body).unwrap();
        assert_eq!((p.retain, p.qos, p.payload), (true, 0, &b"hi"[..]));
        assert!(parse_publish_full(0x06, &body).is_none(), "QoS 3");
        assert!(parse_publish_full(0, &[0, 5, b'a']).is_none(), "topic cut short");
        assert!(parse_publish_full(0x02, &[0, 1, b't', 0]).is_none(), "packet id cut short");
        assert!(parse_publish_full(0, &[0, 1, 0xFF]).is_none(), "topic not UTF-8");
    }

    #[test]
    fn connack_and_suback_are_parsed() {
        let connack = [0x20, 2, 1, 0];
        let (kind, _, body) = parsed(&connack);
        assert_eq!((kind, parse_connack(body)), (CONNACK, Some((true, 0))));
        assert_eq!(parse_connack(&[0, 5]), Some((false, 5)));
        assert_eq!(parse_connack(&[0]), None);

        let suback = [0x90, 5, 0, 42, 0, 1, 0x80];
        let (kind, _, body) = parsed(&suback);
        assert_eq!((kind, parse_suback(body)), (SUBACK, Some((42, &[0, 1, 0x80][..]))));
        assert_eq!(parse_suback(&[0]), None);
    }

    #[test]
    fn subscribe_pingreq_and_acks_have_the_expected_bytes() {
        let mut out = Vec::new();
        subscribe(&mut out, 5, "a/#", 1);
        assert_eq!(out, [&[0x82, 8, 0, 5, 0, 3][..], b"a/#", &[1]].concat());
        out.clear();
        pingreq(&mut out);
        ack(&mut out, PUBREL, 258);
        assert_eq!(out, [0xC0, 0, 0x62, 2, 1, 2]);
    }
}
