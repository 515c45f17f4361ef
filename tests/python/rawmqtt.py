"""A tiny MQTT 3.1.1 / 5.0 client over a plain socket, for wire-level checks.

It encodes what the tests send (CONNECT, PUBLISH, SUBSCRIBE, acks, DISCONNECT, or any raw bytes)
and decodes whatever the broker answers, so that a test can see reason codes, DUP flags, packet ids
and properties exactly, and can choose not to acknowledge anything.
"""

import socket
import struct
import time
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
         7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
         12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

# property id -> (name, type)
PROPS = {
    0x01: ("payload_format_indicator", "byte"), 0x02: ("message_expiry_interval", "u32"),
    0x03: ("content_type", "str"), 0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"), 0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "u32"), 0x12: ("assigned_client_identifier", "str"),
    0x13: ("server_keep_alive", "u16"), 0x15: ("authentication_method", "str"),
    0x16: ("authentication_data", "bin"), 0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "u32"), 0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "str"), 0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"), 0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"), 0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"), 0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"), 0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
PROP_IDS = {name: (pid, kind) for pid, (name, kind) in PROPS.items()}
MULTI = {"user_property", "subscription_identifier"}


class Closed(Exception):
    """The broker closed the connection (EOF or reset)."""


class Timeout(Exception):
    """Nothing (or not the expected packet) arrived in time."""


# ---------------------------------------------------------------------------------------------
# encoding


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def mqtt_str(s) -> bytes:
    data = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("!H", len(data)) + data


def encode_props(props) -> bytes:
    body = bytearray()
    for name, value in (props or {}).items():
        pid, kind = PROP_IDS[name]
        values = value if name in MULTI else [value]
        for v in values:
            body.append(pid)
            if kind == "byte":
                body.append(v)
            elif kind == "u16":
                body += struct.pack("!H", v)
            elif kind == "u32":
                body += struct.pack("!I", v)
            elif kind == "varint":
                body += varint(v)
            elif kind in ("str", "bin"):
                body += mqtt_str(v)
            elif kind == "pair":
                body += mqtt_str(v[0]) + mqtt_str(v[1])
    return varint(len(body)) + bytes(body)


def fixed(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def connect_packet(client_id="", version=5, clean=True, keepalive=60, will=None, username=None,
                   password=None, props=None) -> bytes:
    """will: dict(topic, payload, qos=0, retain=False, props=None)."""
    level = 5 if version == 5 else 4
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = mqtt_str("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += encode_props(props)
    body += mqtt_str(client_id)
    if will:
        if version == 5:
            body += encode_props(will.get("props"))
        body += mqtt_str(will["topic"]) + mqtt_str(will.get("payload", b""))
    if username is not None:
        body += mqtt_str(username)
    if password is not None:
        body += mqtt_str(password)
    return fixed(CONNECT, 0, body)


def publish_packet(topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None,
                   version=5, props=None) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else bytes(payload)
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == 5:
        body += encode_props(props)
    return fixed(PUBLISH, flags, body + payload)


def ack_packet(ptype, packet_id, reason=None, version=5) -> bytes:
    body = struct.pack("!H", packet_id)
    if version == 5 and reason:
        body += bytes([reason])
    return fixed(ptype, 0x02 if ptype == PUBREL else 0, body)


def subscribe_packet(packet_id, topics, version=5, props=None) -> bytes:
    """topics: [(filter, options_byte)] where options = qos | nl<<2 | rap<<3 | rh<<4."""
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += encode_props(props)
    for topic, options in topics:
        body += mqtt_str(topic) + bytes([options])
    return fixed(SUBSCRIBE, 0x02, body)


def unsubscribe_packet(packet_id, filters, version=5, props=None) -> bytes:
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += encode_props(props)
    for topic in filters:
        body += mqtt_str(topic)
    return fixed(UNSUBSCRIBE, 0x02, body)


def sub_options(qos=0, no_local=False, retain_as_published=False, retain_handling=0) -> int:
    return qos | (4 if no_local else 0) | (8 if retain_as_published else 0) | (retain_handling << 4)


def disconnect_packet(reason=0, version=5, props=None) -> bytes:
    if version != 5:
        return fixed(DISCONNECT, 0, b"")
    return fixed(DISCONNECT, 0, bytes([reason]) + encode_props(props))


# ---------------------------------------------------------------------------------------------
# decoding


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes
    # decoded fields (those that apply)
    reason_code: int = None
    session_present: bool = None
    packet_id: int = None
    reason_codes: list = None
    topic: str = None
    payload: bytes = None
    qos: int = None
    retain: bool = None
    dup: bool = None
    props: dict = field(default_factory=dict)

    @property
    def name(self):
        return NAMES.get(self.type, f"type{self.type}")

    def __repr__(self):
        extra = {k: v for k, v in self.__dict__.items()
                 if k not in ("type", "flags", "body") and v not in (None, {})}
        return f"<{self.name} {extra}>"


def read_varint(data: bytes, pos: int):
    value, mult = 0, 1
    for i in range(4):
        byte = data[pos + i]
        value += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("malformed variable byte integer")


def read_str(data: bytes, pos: int):
    (length,) = struct.unpack_from("!H", data, pos)
    return data[pos + 2:pos + 2 + length], pos + 2 + length


def decode_props(data: bytes, pos: int):
    length, pos = read_varint(data, pos)
    end = pos + length
    props = {}
    while pos < end:
        pid = data[pos]
        pos += 1
        name, kind = PROPS[pid]
        if kind == "byte":
            value, pos = data[pos], pos + 1
        elif kind == "u16":
            (value,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif kind == "u32":
            (value,), pos = struct.unpack_from("!I", data, pos), pos + 4
        elif kind == "varint":
            value, pos = read_varint(data, pos)
        elif kind == "str":
            raw, pos = read_str(data, pos)
            value = raw.decode()
        elif kind == "bin":
            value, pos = read_str(data, pos)
        else:
            key, pos = read_str(data, pos)
            val, pos = read_str(data, pos)
            value = (key.decode(), val.decode())
        if name in MULTI:
            props.setdefault(name, []).append(value)
        else:
            props[name] = value
    return props, end


def decode(ptype: int, flags: int, body: bytes, version: int) -> Packet:
    pkt = Packet(ptype, flags, body)
    v5 = version == 5
    if ptype == CONNACK:
        pkt.session_present = bool(body[0] & 1)
        pkt.reason_code = body[1]
        if v5 and len(body) > 2:
            pkt.props, _ = decode_props(body, 2)
    elif ptype == PUBLISH:
        pkt.qos = (flags >> 1) & 3
        pkt.retain = bool(flags & 1)
        pkt.dup = bool(flags & 8)
        raw_topic, pos = read_str(body, 0)
        pkt.topic = raw_topic.decode()
        if pkt.qos:
            (pkt.packet_id,) = struct.unpack_from("!H", body, pos)
            pos += 2
        if v5:
            pkt.props, pos = decode_props(body, pos)
        pkt.payload = body[pos:]
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, SUBACK):
        (pkt.packet_id,) = struct.unpack_from("!H", body, 0)
        pos = 2
        if ptype in (SUBACK, UNSUBACK):
            if v5:
                pkt.props, pos = decode_props(body, pos)
            pkt.reason_codes = list(body[pos:])
        else:
            pkt.reason_code = body[2] if len(body) > 2 else 0
            if v5 and len(body) > 3:
                pkt.props, _ = decode_props(body, 3)
    elif ptype == DISCONNECT:
        pkt.reason_code = body[0] if body else 0
        if v5 and len(body) > 1:
            pkt.props, _ = decode_props(body, 1)
    return pkt


# ---------------------------------------------------------------------------------------------


class RawClient:
    """One TCP connection speaking MQTT by hand. Every wait is bounded."""

    def __init__(self, host, port, version=5, timeout=10.0, source=None):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False
        self.next_id = 1
        self.aliases = {}  # server -> client topic aliases seen so far
        self.pending = []  # PUBLISH packets that arrived while expect() waited for an ack

    # -- sending -------------------------------------------------------------------------------

    def send(self, data: bytes):
        self.sock.sendall(data)

    def connect(self, client_id="", clean=True, keepalive=60, will=None, username=None,
                password=None, props=None, timeout=10.0) -> Packet:
        """Send CONNECT and return the CONNACK."""
        self.send(connect_packet(client_id, self.version, clean, keepalive, will, username,
                                 password, props))
        return self.expect(CONNACK, timeout)

    def packet_id(self) -> int:
        pid = self.next_id
        self.next_id = self.next_id % 65535 + 1
        return pid

    def publish(self, topic, payload=b"", qos=0, retain=False, props=None, packet_id=None,
                dup=False) -> int:
        if qos and packet_id is None:
            packet_id = self.packet_id()
        self.send(publish_packet(topic, payload, qos, retain, dup, packet_id, self.version, props))
        return packet_id

    def publish_acked(self, topic, payload=b"", qos=1, retain=False, props=None, timeout=10.0):
        """Publish QoS 1 or 2 and complete the handshake; returns the PUBACK/PUBREC packet."""
        pid = self.publish(topic, payload, qos, retain, props)
        if qos == 1:
            return self.expect(PUBACK, timeout, packet_id=pid)
        rec = self.expect(PUBREC, timeout, packet_id=pid)
        if rec.reason_code < 0x80:
            self.send(ack_packet(PUBREL, pid, version=self.version))
            self.expect(PUBCOMP, timeout, packet_id=pid)
        return rec

    def subscribe(self, *topics, props=None, timeout=10.0) -> Packet:
        """topics: (filter, options) pairs or bare filters (QoS 0). Returns the SUBACK."""
        pairs = [(t, 0) if isinstance(t, str) else t for t in topics]
        pid = self.packet_id()
        self.send(subscribe_packet(pid, pairs, self.version, props))
        return self.expect(SUBACK, timeout, packet_id=pid)

    def ack(self, pkt: Packet):
        """Acknowledge a received PUBLISH (PUBACK for QoS 1, PUBREC for QoS 2)."""
        if pkt.qos == 1:
            self.send(ack_packet(PUBACK, pkt.packet_id, version=self.version))
        elif pkt.qos == 2:
            self.send(ack_packet(PUBREC, pkt.packet_id, version=self.version))

    def disconnect(self, reason=0, props=None):
        try:
            self.send(disconnect_packet(reason, self.version, props))
        finally:
            self.close()

    def close(self):
        """Close the socket without DISCONNECT."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    # -- receiving -----------------------------------------------------------------------------

    def _fill(self, deadline) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout()
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout() from None
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as err:
            raise Closed(str(err)) from None
        if not chunk:
            raise Closed("eof")
        self.buf += chunk

    def recv(self, timeout=10.0) -> Packet:
        """The next packet; raises Timeout or Closed. Resolves server topic aliases."""
        if self.pending:
            return self.pending.pop(0)
        return self._read_wire(timeout)

    def _read_wire(self, timeout) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = read_varint(self.buf, 1)
                except IndexError:
                    length = None
                if length is not None and len(self.buf) >= pos + length:
                    header = self.buf[0]
                    body = bytes(self.buf[pos:pos + length])
                    del self.buf[:pos + length]
                    pkt = decode(header >> 4, header & 0x0F, body, self.version)
                    if pkt.type == PUBLISH and "topic_alias" in pkt.props:
                        alias = pkt.props["topic_alias"]
                        if pkt.topic:
                            self.aliases[alias] = pkt.topic
                        else:
                            assert alias in self.aliases, f"unknown topic alias {alias} from server"
                            pkt.topic = self.aliases[alias]
                    return pkt
            self._fill(deadline)

    def expect(self, ptype, timeout=10.0, packet_id=None) -> Packet:
        """Wait for a packet of this type (skipping PINGRESP); anything else is an error,
        except PUBLISH packets arriving while an ack is awaited: those are kept for recv()."""
        if ptype == PUBLISH and self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            pkt = self._read_wire(max(0.0, deadline - time.monotonic()))
            if pkt.type == PINGRESP:
                continue
            if pkt.type == PUBLISH and ptype != PUBLISH:
                self.pending.append(pkt)
                continue
            if pkt.type != ptype or (packet_id is not None and pkt.packet_id != packet_id):
                raise AssertionError(f"expected {NAMES[ptype]} (id {packet_id}), got {pkt!r}")
            return pkt

    def collect(self, duration: float) -> list:
        """Every packet that arrives within `duration` seconds (stops early on close)."""
        deadline = time.monotonic() + duration
        packets = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return packets
            try:
                packets.append(self.recv(remaining))
            except (Timeout, Closed):
                return packets

    def wait_closed(self, timeout=10.0) -> list:
        """Wait until the broker closes the connection; returns the packets sent before that.

        Raises AssertionError when the connection is still open after `timeout`.
        """
        deadline = time.monotonic() + timeout
        packets = []
        while True:
            try:
                packets.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Closed:
                return packets
            except Timeout:
                raise AssertionError(f"connection still open after {timeout}s; got {packets}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
