//! The few MQTT 3.1.1 packets a load generator needs, written straight into a reusable output
//! buffer and parsed in place from the read buffer, with no allocation per message.
//!
//! A bench payload starts with a 20-byte stamp: publisher id (u32), sequence number (u64) and
//! send time in ns since the run's base instant (u64), all little-endian; zeros pad the rest.

/// CONNACK packet type.
pub(crate) const CONNACK: u8 = 2;
/// PUBLISH packet type.
pub(crate) const PUBLISH: u8 = 3;
/// PUBACK packet type.
pub(crate) const PUBACK: u8 = 4;
/// PUBREC packet type.
pub(crate) const PUBREC: u8 = 5;
/// PUBREL packet type.
pub(crate) const PUBREL: u8 = 6;
/// PUBCOMP packet type.
pub(crate) const PUBCOMP: u8 = 7;
/// SUBACK packet type.
pub(crate) const SUBACK: u8 = 9;

/// Bytes of the stamp at the start of every bench payload.
pub(crate) const STAMP_LEN: usize = 20;

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

/// Appends CONNECT (3.1.1, clean session) for `client_id`.
pub(crate) fn connect(out: &mut Vec<u8>, client_id: &str, keepalive: u16) {
    out.push(0x10);
    put_remaining_length(out, 10 + 2 + client_id.len());
    put_str(out, "MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keepalive.to_be_bytes());
    put_str(out, client_id);
}

/// Appends SUBSCRIBE for one filter.
pub(crate) fn subscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str, qos: u8) {
    out.push(0x82);
    put_remaining_length(out, 2 + 2 + filter.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_str(out, filter);
    out.push(qos);
}

/// Appends a PUBLISH whose payload is a stamp followed by zeros up to `payload_len`.
#[inline]
pub(crate) fn publish(
    out: &mut Vec<u8>,
    topic: &str,
    qos: u8,
    packet_id: u16,
    stamp: (u32, u64, u64),
    payload_len: usize,
) {
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

/// Appends PUBACK, PUBREC, PUBREL or PUBCOMP.
#[inline]
pub(crate) fn ack(out: &mut Vec<u8>, kind: u8, packet_id: u16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    out.push((kind << 4) | flags);
    out.push(2);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// Appends DISCONNECT.
pub(crate) fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xE0, 0x00]);
}

/// One packet borrowed from the read buffer.
pub(crate) struct Frame<'a> {
    /// Packet type (upper nibble of the first byte).
    pub(crate) kind: u8,
    /// Flags (lower nibble).
    pub(crate) flags: u8,
    /// Variable header and payload.
    pub(crate) body: &'a [u8],
}

/// Parses the packet at the start of `buf`: Ok(None) when more bytes are needed, else the
/// frame and its total length.
#[inline]
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, &'static str> {
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
pub(crate) fn packet_id(body: &[u8]) -> u16 {
    if body.len() >= 2 { u16::from_be_bytes([body[0], body[1]]) } else { 0 }
}

/// A received PUBLISH: QoS, packet id and the payload's stamp, if it has one.
pub(crate) struct Publish {
    /// QoS of the delivery.
    pub(crate) qos: u8,
    /// Packet id (0 at QoS 0).
    pub(crate) packet_id: u16,
    /// (publisher id, sequence, send time ns), when the payload is a bench payload.
    pub(crate) stamp: Option<(u32, u64, u64)>,
}

/// Parses a PUBLISH body.
#[inline]
pub(crate) fn parse_publish(flags: u8, body: &[u8]) -> Option<Publish> {
    let qos = (flags >> 1) & 0x03;
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    let payload = body.get(at..)?;
    Some(Publish { qos, packet_id, stamp: parse_stamp(payload) })
}

/// Reads the stamp at the start of a payload.
#[inline]
pub(crate) fn parse_stamp(payload: &[u8]) -> Option<(u32, u64, u64)> {
    if payload.len() < STAMP_LEN {
        return None;
    }
    let publisher = u32::from_le_bytes(payload[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(payload[4..12].try_into().ok()?);
    let sent = u64::from_le_bytes(payload[12..20].try_into().ok()?);
    Some((publisher, seq, sent))
}

/// Writes a stamp followed by zeros into a fresh payload of `len` bytes (Kafka records).
pub(crate) fn stamp_into(payload: &mut Vec<u8>, stamp: (u32, u64, u64), len: usize) {
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
    fn publish_round_trips_through_parse() {
        let mut out = Vec::new();
        publish(&mut out, "bench/t/0", 1, 7, (3, 42, 99), 200);
        let (frame, len) = parse(&out).unwrap().unwrap();
        assert_eq!((frame.kind, len), (PUBLISH, out.len()));
        let p = parse_publish(frame.flags, frame.body).unwrap();
        assert_eq!((p.qos, p.packet_id, p.stamp), (1, 7, Some((3, 42, 99))));
        assert!(parse(&out[..out.len() - 1]).unwrap().is_none());
    }
}
