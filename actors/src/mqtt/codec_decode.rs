//! Decoders for MQTT 3.1.1 and 5.0 packet bodies, written here because mqttbytes 0.6's are not fit
//! for untrusted input: every field is bounds-checked, v5 properties are bounded by their length
//! and checked against the packet type, and 3.1.1 packets come out as the v5 types.

use super::*;

/// Decodes the body of a packet whose first byte has passed `check_first_byte`.
pub(super) fn decode(byte1: u8, mut body: Bytes, v5: bool) -> Result<Packet, CodecError> {
    macro_rules! ack {
        ($packet:ident, $properties:ident, $reason:ident) => {{
            let (pkid, code, properties) = read_ack(&mut body, v5)?;
            let properties = reason_props!($properties, properties);
            Packet::$packet($packet { pkid, reason: $reason(code)?, properties })
        }};
    }
    let packet = match byte1 >> 4 {
        2 => Packet::ConnAck(read_connack(body, v5)?),
        3 => Packet::Publish(read_publish(byte1, body, v5)?),
        4 => ack!(PubAck, PubAckProperties, pub_ack_reason),
        5 => ack!(PubRec, PubRecProperties, pub_rec_reason),
        6 => ack!(PubRel, PubRelProperties, pub_rel_reason),
        7 => ack!(PubComp, PubCompProperties, pub_comp_reason),
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
const CONNACK_PROPERTIES: u64 =
    id_set(&[0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A]);
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

/// Reads the body of a CONNECT: protocol name and level first, then the rest for 3.1.1 and 5.0.
pub(super) fn read_connect_body(mut body: Bytes) -> Result<(ProtocolVersion, Connect), CodecError> {
    let name = take_binary(&mut body)?;
    let level = take_u8(&mut body)?;
    let version = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT" | b"MQIsdp", level) => return Err(CodecError::UnsupportedProtocol(level)),
        _ => return Err(malformed("invalid protocol name")),
    };
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
        true => {
            String::from_utf8(take_binary(&mut body)?.to_vec()).map_err(|_| malformed("password is not valid utf-8"))?
        }
        false => String::new(),
    };
    ensure_consumed(&body)?;
    let connect = Connect {
        protocol: if v5 { Protocol::V5 } else { Protocol::V4 },
        keep_alive,
        client_id,
        clean_session: flags & 0x02 != 0,
        last_will,
        login: (has_username || has_password).then_some(Login { username, password }),
        properties,
    };
    Ok((version, connect))
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

/// Payloads from this size on are copied out of the read buffer (see [`read_publish`]).
const COPY_PAYLOAD_FROM: usize = 16 * 1024;

/// Reads a PUBLISH. A payload shares the read buffer (no copy) unless it is large: a slice
/// keeps the buffer's whole allocation alive for as long as a queue holds the message, and a
/// large packet is most of an allocation that grew to take it, with the start of the next
/// packet in it. Under the flood of BENCHMARKS.md ("Memory under a flood") the shared slices
/// held twice the bytes the queues counted; the copy costs one `memcpy` per large message and
/// no throughput there.
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
    let payload = if body.len() >= COPY_PAYLOAD_FROM { Bytes::copy_from_slice(&body) } else { body };
    Ok(Publish { dup: byte1 & 0x08 != 0, qos, retain: byte1 & 0x01 != 0, topic, pkid, properties, payload })
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
        pub(super) fn $name(code: u8) -> Result<$ty, CodecError> {
            [$($ty::$variant),+]
                .into_iter()
                .find(|reason| *reason as u8 == code)
                .ok_or_else(|| malformed(format!(concat!("invalid ", $what, " reason code {:#04x}"), code)))
        }
    };
}

reason_from_code! { pub_ack_reason, PubAckReason, "puback", [
    Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecificError, NotAuthorized,
    TopicNameInvalid, PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid,
] }
reason_from_code! { pub_rec_reason, PubRecReason, "pubrec", [
    Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecificError, NotAuthorized,
    TopicNameInvalid, PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid,
] }
reason_from_code! { pub_rel_reason, PubRelReason, "pubrel", [Success, PacketIdentifierNotFound] }
reason_from_code! { pub_comp_reason, PubCompReason, "pubcomp", [Success, PacketIdentifierNotFound] }
reason_from_code! { unsub_ack_reason, UnsubAckReason, "unsuback", [
    Success, NoSubscriptionExisted, UnspecifiedError, ImplementationSpecificError, NotAuthorized,
    TopicFilterInvalid, PacketIdentifierInUse,
] }
reason_from_code! { connect_return_code, ConnectReturnCode, "connack", [
    Success, UnspecifiedError, MalformedPacket, ProtocolError, ImplementationSpecificError,
    UnsupportedProtocolVersion, ClientIdentifierNotValid, BadUserNamePassword, NotAuthorized,
    ServerUnavailable, ServerBusy, Banned, BadAuthenticationMethod, TopicNameInvalid,
    PacketTooLarge, QuotaExceeded, PayloadFormatInvalid, RetainNotSupported, QoSNotSupported,
    UseAnotherServer, ServerMoved, ConnectionRateExceeded,
] }

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
