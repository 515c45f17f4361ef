//! The MQTT wire codec: framing, decoding and encoding of MQTT 3.1.1 and 5.0 packets.
//!
//! The broker's packet model is mqttbytes' v5 types, so the session logic is written once: 3.1.1
//! connections are converted v4 → v5 on read and v5 → v4 on write. mqttbytes 0.6 is frozen upstream
//! and its decoders are not fit for untrusted input (property lists not bounded by their length, a
//! `dbg!` in the v5 UNSUBSCRIBE decoder, zero-length DISCONNECT and reason-only DISCONNECT rejected,
//! reserved bits and trailing bytes unchecked), so this module frames and decodes every packet
//! itself (`codec_decode.rs`) and keeps mqttbytes for the types and for the v5 encoders it gets right
//! (checked byte for byte against the specification in the tests). CONNACK without properties
//! (mqttbytes drops the mandatory property length) and all 3.1.1 packets are encoded here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use decode::{decode, read_connect_body};

pub use mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, LastWill, Login, Packet, PubAck, PubAckProperties, PubAckReason, PubComp, PubCompProperties,
    PubCompReason, PubRec, PubRecProperties, PubRecReason, PubRel, PubRelProperties, PubRelReason, Publish,
    PublishProperties, RetainForwardRule, SubAck, SubAckProperties, Subscribe, SubscribeFilter, SubscribeProperties,
    SubscribeReasonCode, UnsubAck, UnsubAckProperties, UnsubAckReason, Unsubscribe, UnsubscribeProperties,
    WillProperties,
};
pub use mqttbytes::{Protocol, QoS};

/// The largest remaining length a fixed header can express.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// The largest packet MQTT can express: a five-byte fixed header and the largest remaining length.
pub const MAX_PACKET_SIZE: usize = MAX_REMAINING_LENGTH + 5;

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Why bytes from a client could not be read as a packet, or a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The packet is larger than the maximum packet size (v5: DISCONNECT 0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Size of the whole packet, fixed header included.
        size: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// A malformed packet (v5: DISCONNECT 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A protocol error, e.g. a second CONNECT or a SUBSCRIBE without filters (v5: DISCONNECT 0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The CONNECT asks for a protocol level this broker does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// The first packet of a connection was not CONNECT.
    #[error("the first packet of the connection is not connect")]
    NotConnect,
}

impl CodecError {
    /// The v5 DISCONNECT reason code to close an established connection with.
    pub fn disconnect_reason(&self) -> DisconnectReasonCode {
        match self {
            CodecError::PacketTooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            CodecError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            CodecError::Protocol(_) | CodecError::UnsupportedProtocol(_) | CodecError::NotConnect => {
                DisconnectReasonCode::ProtocolError
            }
        }
    }

    /// The v5 CONNACK reason code to refuse a connection whose CONNECT failed to read with.
    pub fn connack_code(&self) -> ConnectReturnCode {
        match self {
            CodecError::PacketTooLarge { .. } => ConnectReturnCode::PacketTooLarge,
            CodecError::Malformed(_) => ConnectReturnCode::MalformedPacket,
            CodecError::Protocol(_) | CodecError::NotConnect => ConnectReturnCode::ProtocolError,
            CodecError::UnsupportedProtocol(_) => ConnectReturnCode::UnsupportedProtocolVersion,
        }
    }
}

/// Moves a reason string and user properties into one of the ack property structs.
macro_rules! reason_props {
    ($ty:ident, $properties:expr) => {
        $properties.map(|p| $ty { reason_string: p.reason_string, user_properties: p.user_properties })
    };
}

fn malformed(message: impl Into<String>) -> CodecError {
    CodecError::Malformed(message.into())
}

fn protocol(message: impl Into<String>) -> CodecError {
    CodecError::Protocol(message.into())
}

/// Reads the first packet of a connection, which must be CONNECT, and detects the protocol version.
///
/// `Ok(None)` means more bytes are needed; `buf` is then untouched.
pub fn read_connect(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<(ProtocolVersion, Connect)>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    if byte1 >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    if byte1 & 0x0F != 0 {
        return Err(malformed("reserved connect header flags set"));
    }
    let Some(body) = take_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    read_connect_body(body).map(Some)
}

/// Reads the next packet of an established connection.
///
/// `Ok(None)` means more bytes are needed; `buf` is then untouched. Packets the server normally
/// sends (CONNACK, SUBACK, ...) decode too, for test clients; the session rejects them.
pub fn read_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, CodecError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(byte1, version)?;
    let Some(body) = take_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    decode(byte1, body, version == ProtocolVersion::V5).map(Some)
}

/// Encodes a packet for the connection's version.
///
/// For 3.1.1 the v5 packet is converted: properties are dropped, reason codes mapped to 3.1.1
/// return codes, and a DISCONNECT writes nothing (3.1.1 has no server DISCONNECT). On error `buf`
/// is left as it was.
pub fn write_packet(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), CodecError> {
    if version == ProtocolVersion::V311 && matches!(packet, Packet::Disconnect(_)) {
        return Ok(()); // a 3.1.1 server closes the connection without a DISCONNECT
    }
    let remaining = remaining_len(packet, version);
    let size = 1 + varint_len(remaining) + remaining;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(CodecError::PacketTooLarge { size, max: MAX_PACKET_SIZE });
    }
    let start = buf.len();
    buf.reserve(size);
    let result = match version {
        ProtocolVersion::V5 => write_v5(packet, remaining, buf, start),
        ProtocolVersion::V311 => write_v311(packet, remaining, buf),
    };
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// The encoded size of a packet for a version, fixed header included (0 when nothing is written).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    if version == ProtocolVersion::V311 && matches!(packet, Packet::Disconnect(_)) {
        return 0;
    }
    let remaining = remaining_len(packet, version);
    1 + varint_len(remaining) + remaining
}

/// Writes the CONNACK refusing a CONNECT whose protocol level is not supported, in the client's
/// protocol: 3.1.1 return code 0x01 for levels below 5, a v5 CONNACK with 0x84 otherwise.
pub fn write_connack_unsupported(level: u8, buf: &mut BytesMut) {
    if level < 5 {
        buf.put_slice(&[0x20, 0x02, 0x00, 0x01]);
    } else {
        buf.put_slice(&[0x20, 0x03, 0x00, ConnectReturnCode::UnsupportedProtocolVersion as u8, 0]);
    }
}

// ---------------------------------------------------------------------------------------------
// framing

/// Splits one whole packet off `buf` and returns its body (after the fixed header).
///
/// Rejects a packet larger than `max_packet_size` as soon as its fixed header is complete.
fn take_frame(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Bytes>, CodecError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let header_len = 2 + i;
            let size = header_len + remaining;
            if size > max_packet_size {
                return Err(CodecError::PacketTooLarge { size, max: max_packet_size });
            }
            if buf.len() < size {
                return Ok(None);
            }
            let mut frame = buf.split_to(size).freeze();
            frame.advance(header_len);
            return Ok(Some(frame));
        }
    }
    Err(malformed("remaining length longer than 4 bytes"))
}

/// Checks the packet type and the fixed header flags, before the rest of the packet has arrived.
fn check_first_byte(byte1: u8, version: ProtocolVersion) -> Result<(), CodecError> {
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0F);
    let expected_flags = match kind {
        0 => return Err(malformed("reserved packet type 0")),
        1 => return Err(protocol("second connect packet")),
        3 if flags & 0b0110 == 0b0110 => return Err(malformed("publish with qos 3")),
        3 if flags & 0b1110 == 0b1000 => return Err(malformed("dup flag set on a qos 0 publish")),
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        15 if version == ProtocolVersion::V5 => return Err(protocol("auth is not supported")),
        15 => return Err(malformed("reserved packet type 15")),
        _ => 0,
    };
    if flags != expected_flags {
        return Err(malformed(format!("invalid flags {flags:#06b} for packet type {kind}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// encoders

/// The 3.1.1 CONNACK return code for a v5 reason code.
pub fn connack_code_v311(code: ConnectReturnCode) -> u8 {
    match code {
        ConnectReturnCode::Success => 0,
        ConnectReturnCode::UnsupportedProtocolVersion => 1,
        ConnectReturnCode::ClientIdentifierNotValid => 2,
        ConnectReturnCode::BadUserNamePassword => 4,
        ConnectReturnCode::NotAuthorized => 5,
        _ => 3,
    }
}

/// The 3.1.1 SUBACK return code for a v5 reason code: the granted QoS or 0x80 for any failure.
pub fn suback_code_v311(code: SubscribeReasonCode) -> u8 {
    match code {
        SubscribeReasonCode::QoS0 | SubscribeReasonCode::QoS1 | SubscribeReasonCode::QoS2 => code as u8,
        _ => 0x80,
    }
}

fn check_pkid(pkid: u16) -> Result<(), CodecError> {
    match pkid {
        0 => Err(protocol("packet identifier is zero")),
        _ => Ok(()),
    }
}

fn check_publish(publish: &Publish) -> Result<(), CodecError> {
    if publish.topic.len() > usize::from(u16::MAX) {
        return Err(protocol("topic name longer than 65535 bytes"));
    }
    match publish.qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce | QoS::ExactlyOnce => check_pkid(publish.pkid),
    }
}

fn write_v5(packet: &Packet, remaining: usize, buf: &mut BytesMut, start: usize) -> Result<(), CodecError> {
    let written = match packet {
        Packet::Publish(publish) => {
            check_publish(publish)?;
            let written = publish.write(buf);
            if publish.qos == QoS::AtMostOnce {
                buf[start] &= !0x08; // the dup flag must be 0 at qos 0
            }
            written
        }
        Packet::ConnAck(connack) => {
            // mqttbytes omits the (mandatory) property length when there are no properties
            let session_present = connack.session_present && connack.code == ConnectReturnCode::Success;
            match &connack.properties {
                None => {
                    buf.put_slice(&[0x20, 0x03, u8::from(session_present), connack.code as u8, 0]);
                    return Ok(());
                }
                Some(_) => {
                    let written = connack.write(buf);
                    buf[start + 1 + varint_len(remaining)] = u8::from(session_present);
                    written
                }
            }
        }
        Packet::Connect(connect) => {
            // mqttbytes patches the connect flags at an absolute index, so write into an empty tail
            let mut tail = buf.split_off(start);
            let written = match connect.protocol {
                Protocol::V5 => connect.write(&mut tail),
                Protocol::V4 => Connect { protocol: Protocol::V5, ..connect.clone() }.write(&mut tail),
            };
            buf.unsplit(tail);
            written
        }
        Packet::PubAck(ack) => check_pkid(ack.pkid).map(|()| ack.write(buf))?,
        Packet::PubRec(ack) => check_pkid(ack.pkid).map(|()| ack.write(buf))?,
        Packet::PubRel(ack) => check_pkid(ack.pkid).map(|()| ack.write(buf))?,
        Packet::PubComp(ack) => check_pkid(ack.pkid).map(|()| ack.write(buf))?,
        Packet::Subscribe(subscribe) if subscribe.filters.is_empty() => {
            return Err(protocol("subscribe without topic filters"));
        }
        Packet::Subscribe(subscribe) => subscribe.write(buf),
        Packet::SubAck(suback) if suback.return_codes.is_empty() => {
            return Err(protocol("suback without reason codes"));
        }
        Packet::SubAck(suback) => suback.write(buf),
        Packet::Unsubscribe(unsubscribe) if unsubscribe.filters.is_empty() => {
            return Err(protocol("unsubscribe without topic filters"));
        }
        Packet::Unsubscribe(unsubscribe) => unsubscribe.write(buf),
        Packet::UnsubAck(unsuback) if unsuback.reasons.is_empty() => {
            return Err(protocol("unsuback needs one reason code per topic filter"));
        }
        Packet::UnsubAck(unsuback) => unsuback.write(buf),
        Packet::PingReq => Ok(put(buf, &[0xC0, 0x00])),
        Packet::PingResp => Ok(put(buf, &[0xD0, 0x00])),
        Packet::Disconnect(disconnect) => disconnect.write(buf),
    };
    written.map(drop).map_err(|e| protocol(format!("cannot encode packet: {e:?}")))
}

fn put(buf: &mut BytesMut, bytes: &[u8]) -> usize {
    buf.put_slice(bytes);
    bytes.len()
}

fn write_v311(packet: &Packet, remaining: usize, buf: &mut BytesMut) -> Result<(), CodecError> {
    match packet {
        Packet::Connect(connect) => write_connect_v311(connect, remaining, buf)?,
        Packet::ConnAck(connack) => {
            let code = connack_code_v311(connack.code);
            buf.put_slice(&[0x20, 0x02, u8::from(connack.session_present && code == 0), code]);
        }
        Packet::Publish(publish) => {
            check_publish(publish)?;
            if publish.topic.is_empty() {
                return Err(protocol("a 3.1.1 publish needs a topic name"));
            }
            let dup = publish.dup && publish.qos != QoS::AtMostOnce;
            buf.put_u8(0x30 | u8::from(dup) << 3 | (publish.qos as u8) << 1 | u8::from(publish.retain));
            put_varint(buf, remaining);
            put_string(buf, &publish.topic)?;
            if publish.qos != QoS::AtMostOnce {
                buf.put_u16(publish.pkid);
            }
            buf.put_slice(&publish.payload);
        }
        Packet::PubAck(ack) => put_ack_v311(buf, 0x40, ack.pkid)?,
        Packet::PubRec(ack) => put_ack_v311(buf, 0x50, ack.pkid)?,
        Packet::PubRel(ack) => put_ack_v311(buf, 0x62, ack.pkid)?,
        Packet::PubComp(ack) => put_ack_v311(buf, 0x70, ack.pkid)?,
        Packet::Subscribe(subscribe) => {
            if subscribe.filters.is_empty() {
                return Err(protocol("subscribe without topic filters"));
            }
            buf.put_u8(0x82);
            put_varint(buf, remaining);
            buf.put_u16(subscribe.pkid);
            for filter in &subscribe.filters {
                put_string(buf, &filter.path)?;
                buf.put_u8(filter.qos as u8);
            }
        }
        Packet::SubAck(suback) => {
            if suback.return_codes.is_empty() {
                return Err(protocol("suback without reason codes"));
            }
            buf.put_u8(0x90);
            put_varint(buf, remaining);
            buf.put_u16(suback.pkid);
            buf.extend(suback.return_codes.iter().map(|&code| suback_code_v311(code)));
        }
        Packet::Unsubscribe(unsubscribe) => {
            if unsubscribe.filters.is_empty() {
                return Err(protocol("unsubscribe without topic filters"));
            }
            buf.put_u8(0xA2);
            put_varint(buf, remaining);
            buf.put_u16(unsubscribe.pkid);
            for filter in &unsubscribe.filters {
                put_string(buf, filter)?;
            }
        }
        Packet::UnsubAck(unsuback) => put_ack_v311(buf, 0xB0, unsuback.pkid)?,
        Packet::PingReq => buf.put_slice(&[0xC0, 0x00]),
        Packet::PingResp => buf.put_slice(&[0xD0, 0x00]),
        Packet::Disconnect(_) => {}
    }
    Ok(())
}

fn put_ack_v311(buf: &mut BytesMut, byte1: u8, pkid: u16) -> Result<(), CodecError> {
    check_pkid(pkid)?;
    buf.put_slice(&[byte1, 0x02]);
    buf.put_u16(pkid);
    Ok(())
}

/// Encodes a 3.1.1 CONNECT (for test clients); v5 properties are dropped.
fn write_connect_v311(c: &Connect, remaining: usize, buf: &mut BytesMut) -> Result<(), CodecError> {
    let mut flags = u8::from(c.clean_session) << 1;
    if let Some(will) = &c.last_will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if let Some(login) = &c.login {
        flags |= 0x80 | u8::from(!login.password.is_empty()) << 6;
    }
    buf.put_u8(0x10);
    put_varint(buf, remaining);
    buf.put_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags]);
    buf.put_u16(c.keep_alive);
    put_string(buf, &c.client_id)?;
    if let Some(will) = &c.last_will {
        put_string(buf, &will.topic)?;
        put_binary(buf, &will.message)?;
    }
    if let Some(login) = &c.login {
        put_string(buf, &login.username)?;
        if !login.password.is_empty() {
            put_string(buf, &login.password)?;
        }
    }
    Ok(())
}

fn put_binary(buf: &mut BytesMut, bytes: &[u8]) -> Result<(), CodecError> {
    let Ok(len) = u16::try_from(bytes.len()) else {
        return Err(protocol("string or binary field longer than 65535 bytes"));
    };
    buf.put_u16(len);
    buf.put_slice(bytes);
    Ok(())
}

fn put_string(buf: &mut BytesMut, text: &str) -> Result<(), CodecError> {
    put_binary(buf, text.as_bytes())
}

fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The length of a property block: its length prefix and the properties (0 → one zero byte).
fn properties_len(len: usize) -> usize {
    varint_len(len) + len
}

/// The remaining length of an ack with an optional reason code and properties.
fn ack_len(success: bool, properties: Option<usize>) -> usize {
    match (success, properties) {
        (true, None) => 2,
        (false, None) => 3,
        (_, Some(len)) => 3 + properties_len(len),
    }
}

fn remaining_len(packet: &Packet, version: ProtocolVersion) -> usize {
    if version == ProtocolVersion::V311 {
        return remaining_len_v311(packet);
    }
    match packet {
        Packet::Connect(connect) => connect.len(),
        Packet::ConnAck(connack) => 2 + properties_len(connack.properties.as_ref().map_or(0, |p| p.len())),
        Packet::Publish(publish) => publish.len(),
        Packet::PubAck(a) => ack_len(a.reason == PubAckReason::Success, a.properties.as_ref().map(|p| p.len())),
        Packet::PubRec(a) => ack_len(a.reason == PubRecReason::Success, a.properties.as_ref().map(|p| p.len())),
        Packet::PubRel(a) => ack_len(a.reason == PubRelReason::Success, a.properties.as_ref().map(|p| p.len())),
        Packet::PubComp(a) => ack_len(a.reason == PubCompReason::Success, a.properties.as_ref().map(|p| p.len())),
        Packet::Subscribe(subscribe) => subscribe.len(),
        Packet::SubAck(suback) => suback.len(),
        Packet::Unsubscribe(unsubscribe) => unsubscribe.len(),
        Packet::UnsubAck(unsuback) => unsuback.len(),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(disconnect) => match (&disconnect.properties, disconnect.reason_code) {
            (None, DisconnectReasonCode::NormalDisconnection) => 0,
            (None, _) => 1,
            (Some(p), _) => 1 + properties_len(disconnect_properties_len(p)),
        },
    }
}

fn disconnect_properties_len(p: &DisconnectProperties) -> usize {
    let strings = [&p.reason_string, &p.server_reference];
    p.session_expiry_interval.map_or(0, |_| 5)
        + strings.iter().filter_map(|s| s.as_ref()).map(|s| 3 + s.len()).sum::<usize>()
        + p.user_properties.iter().map(|(k, v)| 5 + k.len() + v.len()).sum::<usize>()
}

fn remaining_len_v311(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(c) => {
            let will = c.last_will.as_ref().map_or(0, |w| 4 + w.topic.len() + w.message.len());
            let login = c
                .login
                .as_ref()
                .map_or(0, |l| 2 + l.username.len() + if l.password.is_empty() { 0 } else { 2 + l.password.len() });
            10 + 2 + c.client_id.len() + will + login
        }
        Packet::Publish(p) => {
            let pkid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            2 + p.topic.len() + pkid + p.payload.len()
        }
        Packet::Subscribe(s) => 2 + s.filters.iter().map(|f| 3 + f.path.len()).sum::<usize>(),
        Packet::SubAck(s) => 2 + s.return_codes.len(),
        Packet::Unsubscribe(u) => 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>(),
        Packet::ConnAck(_)
        | Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp | Packet::Disconnect(_) => 0,
    }
}

#[path = "codec_decode.rs"]
mod decode;

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
