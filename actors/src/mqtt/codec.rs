//! The MQTT wire codec: framing, decoding and encoding of MQTT 3.1.1 and 5.0 packets.
//!
//! The broker's packet model is mqttbytes' v5 types, so the session logic is written once: 3.1.1
//! connections are converted v4 → v5 on read and v5 → v4 on write. mqttbytes 0.6 is frozen upstream
//! and its decoders are not fit for untrusted input (property lists not bounded by their length, a
//! `dbg!` in the v5 UNSUBSCRIBE decoder, zero-length DISCONNECT and reason-only DISCONNECT rejected,
//! reserved bits and trailing bytes unchecked), so this module frames and decodes every packet
//! itself and keeps mqttbytes for the types and for the v5 encoders it gets right (checked byte for
//! byte against the specification in the tests); CONNACK without properties and all 3.1.1 packets
//! are encoded here.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectProperties, DisconnectReasonCode, LastWill, Login, Packet, PubAck, PubAckProperties,
    PubAckReason, PubComp, PubCompProperties, PubCompReason, PubRec, PubRecProperties, PubRecReason,
    PubRel, PubRelProperties, PubRelReason, Publish, PublishProperties, RetainForwardRule, SubAck,
    SubAckProperties, Subscribe, SubscribeFilter, SubscribeProperties, SubscribeReasonCode,
    UnsubAck, UnsubAckProperties, UnsubAckReason, Unsubscribe, UnsubscribeProperties,
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
    let Some(&byte1) = buf.first() else { return Ok(None) };
    if byte1 >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    if byte1 & 0x0F != 0 {
        return Err(malformed("reserved connect header flags set"));
    }
    let Some(mut body) = take_frame(buf, max_packet_size)? else { return Ok(None) };
    let name = take_binary(&mut body)?;
    let level = take_u8(&mut body)?;
    let version = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT" | b"MQIsdp", level) => return Err(CodecError::UnsupportedProtocol(level)),
        _ => return Err(malformed("invalid protocol name")),
    };
    read_connect_body(body, version).map(|connect| Some((version, connect)))
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
    let Some(&byte1) = buf.first() else { return Ok(None) };
    check_first_byte(byte1, version)?;
    let Some(body) = take_frame(buf, max_packet_size)? else { return Ok(None) };
    decode(byte1, body, version == ProtocolVersion::V5).map(Some)
}

/// Encodes a packet for the connection's version.
///
/// For 3.1.1 the v5 packet is converted: properties are dropped, reason codes mapped to 3.1.1
/// return codes, and a DISCONNECT writes nothing (3.1.1 has no server DISCONNECT). On error `buf`
/// is left as it was.
pub fn write_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = buf.len();
    let result = match version {
        ProtocolVersion::V5 => write_v5(packet, buf, start),
        ProtocolVersion::V311 => write_v311(packet, buf),
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
        let Some(&byte) = buf.get(1 + i) else { return Ok(None) };
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

fn decode(byte1: u8, mut body: Bytes, v5: bool) -> Result<Packet, CodecError> {
    let packet = match byte1 >> 4 {
        2 => Packet::ConnAck(read_connack(body, v5)?),
        3 => Packet::Publish(read_publish(byte1, body, v5)?),
        4 => {
            let (pkid, code, properties) = read_ack(&mut body, v5)?;
            let reason = pub_ack_reason(code)?;
            Packet::PubAck(PubAck { pkid, reason, properties: reason_props!(PubAckProperties, properties) })
        }
        5 => {
            let (pkid, code, properties) = read_ack(&mut body, v5)?;
            let reason = pub_rec_reason(code)?;
            Packet::PubRec(PubRec { pkid, reason, properties: reason_props!(PubRecProperties, properties) })
        }
        6 => {
            let (pkid, code, properties) = read_ack(&mut body, v5)?;
            let reason = pub_rel_reason(code)?;
            Packet::PubRel(PubRel { pkid, reason, properties: reason_props!(PubRelProperties, properties) })
        }
        7 => {
            let (pkid, code, properties) = read_ack(&mut body, v5)?;
            let reason = pub_comp_reason(code)?;
            Packet::PubComp(PubComp { pkid, reason, properties: reason_props!(PubCompProperties, properties) })
        }
        8 => Packet::Subscribe(read_subscribe(body, v5)?),
        9 => Packet::SubAck(read_suback(body, v5)?),
        10 => Packet::Unsubscribe(read_unsubscribe(body, v5)?),
        11 => Packet::UnsubAck(read_unsuback(body, v5)?),
        12 => empty_body(body, Packet::PingReq)?,
        13 => empty_body(body, Packet::PingResp)?,
        14 => Packet::Disconnect(read_disconnect(body, v5)?),
        kind => return Err(malformed(format!("unexpected packet type {kind}"))),
    };
    Ok(packet)
}

fn empty_body(body: Bytes, packet: Packet) -> Result<Packet, CodecError> {
    ensure_consumed(&body)?;
    Ok(packet)
}

fn ensure_consumed(body: &Bytes) -> Result<(), CodecError> {
    match body.len() {
        0 => Ok(()),
        n => Err(malformed(format!("{n} unexpected bytes at the end of the packet"))),
    }
}

// ---------------------------------------------------------------------------------------------
// primitive readers

fn truncated() -> CodecError {
    malformed("packet ends inside a field")
}

fn take_u8(b: &mut Bytes) -> Result<u8, CodecError> {
    if b.is_empty() { Err(truncated()) } else { Ok(b.get_u8()) }
}

fn take_u16(b: &mut Bytes) -> Result<u16, CodecError> {
    if b.len() < 2 { Err(truncated()) } else { Ok(b.get_u16()) }
}

fn take_u32(b: &mut Bytes) -> Result<u32, CodecError> {
    if b.len() < 4 { Err(truncated()) } else { Ok(b.get_u32()) }
}

fn take_pkid(b: &mut Bytes) -> Result<u16, CodecError> {
    match take_u16(b)? {
        0 => Err(protocol("packet identifier is zero")),
        pkid => Ok(pkid),
    }
}

fn take_varint(b: &mut Bytes) -> Result<usize, CodecError> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = take_u8(b)?;
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("variable byte integer longer than 4 bytes"))
}

/// Reads two-byte-length-prefixed binary data without copying it.
fn take_binary(b: &mut Bytes) -> Result<Bytes, CodecError> {
    let len = usize::from(take_u16(b)?);
    if len > b.len() {
        return Err(truncated());
    }
    Ok(b.split_to(len))
}

/// Reads a UTF-8 string; invalid UTF-8 and U+0000 are malformed.
fn take_string(b: &mut Bytes, what: &str) -> Result<String, CodecError> {
    let raw = take_binary(b)?;
    let Ok(text) = std::str::from_utf8(&raw) else {
        return Err(malformed(format!("{what} is not valid utf-8")));
    };
    if raw.contains(&0) {
        return Err(malformed(format!("{what} contains a null character")));
    }
    Ok(text.to_owned())
}

/// Reads a topic name, which must not contain wildcards.
fn take_topic(b: &mut Bytes, what: &str) -> Result<String, CodecError> {
    let topic = take_string(b, what)?;
    if topic.bytes().any(|c| c == b'+' || c == b'#') {
        return Err(malformed(format!("{what} contains a wildcard")));
    }
    Ok(topic)
}

fn qos_from(bits: u8) -> Result<QoS, CodecError> {
    match bits {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(malformed(format!("invalid qos {bits}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// v5 properties

/// Every v5 property, parsed once by `read_properties` and moved into a packet's property struct.
#[derive(Default)]
struct Properties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
    subscription_identifiers: Vec<usize>,
    session_expiry_interval: Option<u32>,
    assigned_client_identifier: Option<String>,
    server_keep_alive: Option<u16>,
    authentication_method: Option<String>,
    authentication_data: Option<Bytes>,
    request_problem_info: Option<u8>,
    will_delay_interval: Option<u32>,
    request_response_info: Option<u8>,
    response_information: Option<String>,
    server_reference: Option<String>,
    reason_string: Option<String>,
    receive_maximum: Option<u16>,
    topic_alias_maximum: Option<u16>,
    topic_alias: Option<u16>,
    maximum_qos: Option<u8>,
    retain_available: Option<u8>,
    user_properties: Vec<(String, String)>,
    maximum_packet_size: Option<u32>,
    wildcard_subscription_available: Option<u8>,
    subscription_identifiers_available: Option<u8>,
    shared_subscription_available: Option<u8>,
}

/// A set of property identifiers, one bit per identifier.
const fn id_set(ids: &[u8]) -> u64 {
    let mut set = 0;
    let mut i = 0;
    while i < ids.len() {
        set |= 1 << ids[i];
        i += 1;
    }
    set
}

const PUBLISH_PROPERTIES: u64 = id_set(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26]);
const CONNECT_PROPERTIES: u64 = id_set(&[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]);
const WILL_PROPERTIES: u64 = id_set(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]);
const CONNACK_PROPERTIES: u64 = id_set(&[
    0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29,
    0x2A,
]);
const REASON_PROPERTIES: u64 = id_set(&[0x1F, 0x26]);
const SUBSCRIBE_PROPERTIES: u64 = id_set(&[0x0B, 0x26]);
const UNSUBSCRIBE_PROPERTIES: u64 = id_set(&[0x26]);
const DISCONNECT_PROPERTIES: u64 = id_set(&[0x11, 0x1C, 0x1F, 0x26]);
/// Properties that may appear more than once.
const REPEATABLE_PROPERTIES: u64 = id_set(&[0x0B, 0x26]);

/// Reads a property length and the properties it covers; `None` when the length is zero.
///
/// Properties are bounded by their length, must be valid for the packet (`allowed`), and must not
/// repeat unless repeatable.
fn read_properties(b: &mut Bytes, allowed: u64) -> Result<Option<Properties>, CodecError> {
    let len = take_varint(b)?;
    if len > b.len() {
        return Err(malformed("property length exceeds the packet"));
    }
    if len == 0 {
        return Ok(None);
    }
    let mut b = b.split_to(len);
    let mut p = Properties::default();
    let mut seen = 0u64;
    while !b.is_empty() {
        let id = b.get_u8();
        let bit = 1u64.checked_shl(u32::from(id)).unwrap_or(0);
        if allowed & bit == 0 {
            return Err(malformed(format!("property {id:#04x} is not valid in this packet")));
        }
        if seen & bit & !REPEATABLE_PROPERTIES != 0 {
            return Err(protocol(format!("property {id:#04x} included more than once")));
        }
        seen |= bit;
        let b = &mut b;
        match id {
            0x01 => p.payload_format_indicator = Some(take_flag(b, "payload format indicator")?),
            0x02 => p.message_expiry_interval = Some(take_u32(b)?),
            0x03 => p.content_type = Some(take_string(b, "content type")?),
            0x08 => p.response_topic = Some(take_topic(b, "response topic")?),
            0x09 => p.correlation_data = Some(take_binary(b)?),
            0x0B => match take_varint(b)? {
                0 => return Err(protocol("subscription identifier is zero")),
                id => p.subscription_identifiers.push(id),
            },
            0x11 => p.session_expiry_interval = Some(take_u32(b)?),
            0x12 => p.assigned_client_identifier = Some(take_string(b, "client identifier")?),
            0x13 => p.server_keep_alive = Some(take_u16(b)?),
            0x15 => p.authentication_method = Some(take_string(b, "authentication method")?),
            0x16 => p.authentication_data = Some(take_binary(b)?),
            0x17 => p.request_problem_info = Some(take_flag(b, "request problem information")?),
            0x18 => p.will_delay_interval = Some(take_u32(b)?),
            0x19 => p.request_response_info = Some(take_flag(b, "request response information")?),
            0x1A => p.response_information = Some(take_string(b, "response information")?),
            0x1C => p.server_reference = Some(take_string(b, "server reference")?),
            0x1F => p.reason_string = Some(take_string(b, "reason string")?),
            0x21 => p.receive_maximum = Some(take_non_zero_u16(b, "receive maximum")?),
            0x22 => p.topic_alias_maximum = Some(take_u16(b)?),
            0x23 => p.topic_alias = Some(take_non_zero_u16(b, "topic alias")?),
            0x24 => p.maximum_qos = Some(take_flag(b, "maximum qos")?),
            0x25 => p.retain_available = Some(take_flag(b, "retain available")?),
            0x26 => {
                let key = take_string(b, "user property name")?;
                let value = take_string(b, "user property value")?;
                p.user_properties.push((key, value));
            }
            0x27 => match take_u32(b)? {
                0 => return Err(protocol("maximum packet size is zero")),
                size => p.maximum_packet_size = Some(size),
            },
            0x28 => p.wildcard_subscription_available = Some(take_flag(b, "wildcard available")?),
            0x29 => p.subscription_identifiers_available = Some(take_flag(b, "sub ids available")?),
            0x2A => p.shared_subscription_available = Some(take_flag(b, "shared available")?),
            _ => return Err(malformed(format!("unknown property {id:#04x}"))),
        }
    }
    Ok(Some(p))
}

/// Reads a byte property whose only valid values are 0 and 1.
fn take_flag(b: &mut Bytes, what: &str) -> Result<u8, CodecError> {
    match take_u8(b)? {
        value @ (0 | 1) => Ok(value),
        value => Err(protocol(format!("{what} is {value}, not 0 or 1"))),
    }
}

fn take_non_zero_u16(b: &mut Bytes, what: &str) -> Result<u16, CodecError> {
    match take_u16(b)? {
        0 => Err(protocol(format!("{what} is zero"))),
        value => Ok(value),
    }
}

// ---------------------------------------------------------------------------------------------
// decoders

/// Reads a CONNECT after its protocol name and level.
fn read_connect_body(mut body: Bytes, version: ProtocolVersion) -> Result<Connect, CodecError> {
    let v5 = version == ProtocolVersion::V5;
    let flags = take_u8(&mut body)?;
    let (will, will_qos, will_retain) = (flags & 0x04 != 0, (flags >> 3) & 3, flags & 0x20 != 0);
    let (has_username, has_password) = (flags & 0x80 != 0, flags & 0x40 != 0);
    if flags & 0x01 != 0 {
        return Err(malformed("reserved connect flag set"));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(malformed("will qos or will retain set without a will"));
    }
    if !v5 && has_password && !has_username {
        return Err(malformed("password flag set without user name flag"));
    }
    let keep_alive = take_u16(&mut body)?;
    let properties = match v5 {
        true => read_properties(&mut body, CONNECT_PROPERTIES)?.map(connect_properties).transpose()?,
        false => None,
    };
    let client_id = take_string(&mut body, "client identifier")?;
    let last_will = if will {
        let properties = match v5 {
            true => read_properties(&mut body, WILL_PROPERTIES)?.map(will_properties),
            false => None,
        };
        let topic = take_topic(&mut body, "will topic")?;
        if topic.is_empty() {
            return Err(protocol("will topic is empty"));
        }
        let message = take_binary(&mut body)?;
        Some(LastWill { topic, message, qos: qos_from(will_qos)?, retain: will_retain, properties })
    } else {
        None
    };
    let username = match has_username {
        true => take_string(&mut body, "user name")?,
        false => String::new(),
    };
    let password = match has_password {
        // mqttbytes stores the password as a String, so binary passwords cannot be represented
        true => String::from_utf8(take_binary(&mut body)?.to_vec())
            .map_err(|_| malformed("password is not valid utf-8"))?,
        false => String::new(),
    };
    ensure_consumed(&body)?;
    Ok(Connect {
        protocol: if v5 { Protocol::V5 } else { Protocol::V4 },
        keep_alive,
        client_id,
        clean_session: flags & 0x02 != 0,
        last_will,
        login: (has_username || has_password).then_some(Login { username, password }),
        properties,
    })
}

fn connect_properties(p: Properties) -> Result<ConnectProperties, CodecError> {
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(protocol("authentication data without authentication method"));
    }
    Ok(ConnectProperties {
        session_expiry_interval: p.session_expiry_interval,
        receive_maximum: p.receive_maximum,
        max_packet_size: p.maximum_packet_size,
        topic_alias_max: p.topic_alias_maximum,
        request_response_info: p.request_response_info,
        request_problem_info: p.request_problem_info,
        user_properties: p.user_properties,
        authentication_method: p.authentication_method,
        authentication_data: p.authentication_data,
    })
}

fn will_properties(p: Properties) -> WillProperties {
    WillProperties {
        delay_interval: p.will_delay_interval,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    }
}

fn read_connack(mut body: Bytes, v5: bool) -> Result<ConnAck, CodecError> {
    let flags = take_u8(&mut body)?;
    if flags & 0xFE != 0 {
        return Err(malformed("reserved connack flags set"));
    }
    let code = take_u8(&mut body)?;
    let code = match v5 {
        true => connect_return_code(code)?,
        false => connect_return_code_v311(code)?,
    };
    let properties = match v5 {
        true => read_properties(&mut body, CONNACK_PROPERTIES)?.map(|p| ConnAckProperties {
            session_expiry_interval: p.session_expiry_interval,
            receive_max: p.receive_maximum,
            max_qos: p.maximum_qos,
            retain_available: p.retain_available,
            max_packet_size: p.maximum_packet_size,
            assigned_client_identifier: p.assigned_client_identifier,
            topic_alias_max: p.topic_alias_maximum,
            reason_string: p.reason_string,
            user_properties: p.user_properties,
            wildcard_subscription_available: p.wildcard_subscription_available,
            subscription_identifiers_available: p.subscription_identifiers_available,
            shared_subscription_available: p.shared_subscription_available,
            server_keep_alive: p.server_keep_alive,
            response_information: p.response_information,
            server_reference: p.server_reference,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
        }),
        false => None,
    };
    ensure_consumed(&body)?;
    Ok(ConnAck { session_present: flags & 1 != 0, code, properties })
}

/// Reads a PUBLISH; the payload shares the read buffer (no copy).
fn read_publish(byte1: u8, mut body: Bytes, v5: bool) -> Result<Publish, CodecError> {
    let qos = qos_from((byte1 >> 1) & 3)?;
    let topic = take_topic(&mut body, "topic name")?;
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce | QoS::ExactlyOnce => take_pkid(&mut body)?,
    };
    let properties = match v5 {
        true => read_properties(&mut body, PUBLISH_PROPERTIES)?.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: p.topic_alias,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: p.subscription_identifiers,
            content_type: p.content_type,
        }),
        false => None,
    };
    if topic.is_empty() && properties.as_ref().and_then(|p| p.topic_alias).is_none() {
        return Err(protocol("empty topic name without a topic alias"));
    }
    Ok(Publish {
        dup: byte1 & 0x08 != 0,
        qos,
        retain: byte1 & 0x01 != 0,
        topic,
        pkid,
        properties,
        payload: body,
    })
}

/// Reads PUBACK, PUBREC, PUBREL or PUBCOMP: packet id, reason code (0 when absent), properties.
fn read_ack(body: &mut Bytes, v5: bool) -> Result<(u16, u8, Option<Properties>), CodecError> {
    let pkid = take_pkid(body)?;
    if !v5 || body.is_empty() {
        ensure_consumed(body)?;
        return Ok((pkid, 0, None));
    }
    let reason = take_u8(body)?;
    let properties = match body.is_empty() {
        true => None,
        false => read_properties(body, REASON_PROPERTIES)?,
    };
    ensure_consumed(body)?;
    Ok((pkid, reason, properties))
}

fn read_subscribe(mut body: Bytes, v5: bool) -> Result<Subscribe, CodecError> {
    let pkid = take_pkid(&mut body)?;
    let properties = match v5 {
        true => match read_properties(&mut body, SUBSCRIBE_PROPERTIES)? {
            Some(p) if p.subscription_identifiers.len() > 1 => {
                return Err(protocol("more than one subscription identifier"));
            }
            Some(p) => Some(SubscribeProperties {
                id: p.subscription_identifiers.first().copied(),
                user_properties: p.user_properties,
            }),
            None => None,
        },
        false => None,
    };
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    let mut filters = Vec::new();
    while !body.is_empty() {
        let path = take_string(&mut body, "topic filter")?;
        let options = take_u8(&mut body)?;
        if options & reserved != 0 {
            return Err(malformed("reserved subscription option bits set"));
        }
        let retain_forward_rule = match (options >> 4) & 3 {
            0 => RetainForwardRule::OnEverySubscribe,
            1 => RetainForwardRule::OnNewSubscribe,
            2 => RetainForwardRule::Never,
            _ => return Err(malformed("retain handling 3")),
        };
        filters.push(SubscribeFilter {
            path,
            qos: qos_from(options & 3)?,
            nolocal: options & 0x04 != 0,
            preserve_retain: options & 0x08 != 0,
            retain_forward_rule,
        });
    }
    if filters.is_empty() {
        return Err(protocol("subscribe without topic filters"));
    }
    Ok(Subscribe { pkid, filters, properties })
}

fn read_suback(mut body: Bytes, v5: bool) -> Result<SubAck, CodecError> {
    let pkid = take_pkid(&mut body)?;
    let properties = match v5 {
        true => reason_props!(SubAckProperties, read_properties(&mut body, REASON_PROPERTIES)?),
        false => None,
    };
    let return_codes = body
        .iter()
        .map(|&code| match (v5, code) {
            (false, 0x03..=0x7F | 0x81..=0xFF) => None,
            (false, 0x80) => Some(SubscribeReasonCode::Unspecified),
            _ => SubscribeReasonCode::try_from(code).ok(),
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("invalid suback reason code"))?;
    if return_codes.is_empty() {
        return Err(protocol("suback without reason codes"));
    }
    Ok(SubAck { pkid, return_codes, properties })
}

fn read_unsubscribe(mut body: Bytes, v5: bool) -> Result<Unsubscribe, CodecError> {
    let pkid = take_pkid(&mut body)?;
    let properties = match v5 {
        true => read_properties(&mut body, UNSUBSCRIBE_PROPERTIES)?
            .map(|p| UnsubscribeProperties { user_properties: p.user_properties }),
        false => None,
    };
    let mut filters = Vec::new();
    while !body.is_empty() {
        filters.push(take_string(&mut body, "topic filter")?);
    }
    if filters.is_empty() {
        return Err(protocol("unsubscribe without topic filters"));
    }
    Ok(Unsubscribe { pkid, filters, properties })
}

/// Reads an UNSUBACK; a 3.1.1 UNSUBACK carries no reason codes, so `reasons` is empty.
fn read_unsuback(mut body: Bytes, v5: bool) -> Result<UnsubAck, CodecError> {
    let pkid = take_pkid(&mut body)?;
    if !v5 {
        ensure_consumed(&body)?;
        return Ok(UnsubAck { pkid, reasons: Vec::new(), properties: None });
    }
    let properties = reason_props!(UnsubAckProperties, read_properties(&mut body, REASON_PROPERTIES)?);
    let reasons = body.iter().map(|&code| unsub_ack_reason(code)).collect::<Result<Vec<_>, _>>()?;
    if reasons.is_empty() {
        return Err(protocol("unsuback without reason codes"));
    }
    Ok(UnsubAck { pkid, reasons, properties })
}

/// Reads a DISCONNECT; a zero-length one is a normal disconnection.
fn read_disconnect(mut body: Bytes, v5: bool) -> Result<Disconnect, CodecError> {
    if !v5 || body.is_empty() {
        ensure_consumed(&body)?;
        return Ok(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection, properties: None });
    }
    let code = take_u8(&mut body)?;
    let reason_code = DisconnectReasonCode::try_from(code)
        .map_err(|_| malformed(format!("invalid disconnect reason code {code:#04x}")))?;
    let properties = match body.is_empty() {
        true => None,
        false => read_properties(&mut body, DISCONNECT_PROPERTIES)?.map(|p| DisconnectProperties {
            session_expiry_interval: p.session_expiry_interval,
            reason_string: p.reason_string,
            user_properties: p.user_properties,
            server_reference: p.server_reference,
        }),
    };
    ensure_consumed(&body)?;
    Ok(Disconnect { reason_code, properties })
}

/// Defines a function mapping a wire reason code to one of mqttbytes' reason enums.
macro_rules! reason_from_code {
    ($name:ident, $ty:ident, $what:literal, [$($variant:ident),+ $(,)?]) => {
        fn $name(code: u8) -> Result<$ty, CodecError> {
            [$($ty::$variant),+]
                .into_iter()
                .find(|reason| *reason as u8 == code)
                .ok_or_else(|| malformed(format!(concat!("invalid ", $what, " reason code {:#04x}"), code)))
        }
    };
}

reason_from_code!(pub_ack_reason, PubAckReason, "puback", [
    Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecificError, NotAuthorized,
    TopicNameInvalid, PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid,
]);
reason_from_code!(pub_rec_reason, PubRecReason, "pubrec", [
    Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecificError, NotAuthorized,
    TopicNameInvalid, PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid,
]);
reason_from_code!(pub_rel_reason, PubRelReason, "pubrel", [Success, PacketIdentifierNotFound]);
reason_from_code!(pub_comp_reason, PubCompReason, "pubcomp", [Success, PacketIdentifierNotFound]);
reason_from_code!(unsub_ack_reason, UnsubAckReason, "unsuback", [
    Success, NoSubscriptionExisted, UnspecifiedError, ImplementationSpecificError, NotAuthorized,
    TopicFilterInvalid, PacketIdentifierInUse,
]);
reason_from_code!(connect_return_code, ConnectReturnCode, "connack", [
    Success, UnspecifiedError, MalformedPacket, ProtocolError, ImplementationSpecificError,
    UnsupportedProtocolVersion, ClientIdentifierNotValid, BadUserNamePassword, NotAuthorized,
    ServerUnavailable, ServerBusy, Banned, BadAuthenticationMethod, TopicNameInvalid,
    PacketTooLarge, QuotaExceeded, PayloadFormatInvalid, RetainNotSupported, QoSNotSupported,
    UseAnotherServer, ServerMoved, ConnectionRateExceeded,
]);

fn connect_return_code_v311(code: u8) -> Result<ConnectReturnCode, CodecError> {
    Ok(match code {
        0 => ConnectReturnCode::Success,
        1 => ConnectReturnCode::UnsupportedProtocolVersion,
        2 => ConnectReturnCode::ClientIdentifierNotValid,
        3 => ConnectReturnCode::ServerUnavailable,
        4 => ConnectReturnCode::BadUserNamePassword,
        5 => ConnectReturnCode::NotAuthorized,
        _ => return Err(malformed(format!("invalid connack return code {code}"))),
    })
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

fn check_size(packet: &Packet, version: ProtocolVersion) -> Result<(), CodecError> {
    let remaining = remaining_len(packet, version);
    if remaining > MAX_REMAINING_LENGTH {
        let size = remaining + 5;
        return Err(CodecError::PacketTooLarge { size, max: MAX_PACKET_SIZE });
    }
    Ok(())
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

fn write_v5(packet: &Packet, buf: &mut BytesMut, start: usize) -> Result<(), CodecError> {
    check_size(packet, ProtocolVersion::V5)?;
    let written = match packet {
        Packet::Publish(publish) => {
            check_publish(publish)?;
            buf.reserve(encoded_len(packet, ProtocolVersion::V5));
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
                    let remaining = remaining_len(packet, ProtocolVersion::V5);
                    buf[start + 1 + varint_len(remaining)] = u8::from(session_present);
                    written
                }
            }
        }
        Packet::Connect(connect) if connect.protocol != Protocol::V5 => {
            Connect { protocol: Protocol::V5, ..connect.clone() }.write(buf)
        }
        Packet::Connect(connect) => connect.write(buf),
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

fn write_v311(packet: &Packet, buf: &mut BytesMut) -> Result<(), CodecError> {
    if let Packet::Disconnect(_) = packet {
        return Ok(()); // a 3.1.1 server closes the connection without a DISCONNECT
    }
    check_size(packet, ProtocolVersion::V311)?;
    let remaining = remaining_len(packet, ProtocolVersion::V311);
    buf.reserve(1 + varint_len(remaining) + remaining);
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
            let login = c.login.as_ref().map_or(0, |l| {
                2 + l.username.len() + if l.password.is_empty() { 0 } else { 2 + l.password.len() }
            });
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

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
