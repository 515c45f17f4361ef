"""Hostile and broken input: garbage bytes, malformed packets, protocol errors.

The broker closes the offending connection (v5: after DISCONNECT 0x81/0x82), and keeps serving
everyone else.
"""

import random
import socket
import time

import pytest

import rawmqtt
from conftest import MOSQUITTO
from helpers import connected, raw, unique

MALFORMED = 0x81
PROTOCOL_ERROR = 0x82


def assert_still_serving(broker):
    assert broker.alive(), "broker process died"
    topic = unique("robust/ok")
    with connected(broker) as sub, connected(broker, version=4) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"still here", qos=1)
        assert sub.wait_message().payload == b"still here"
    if not MOSQUITTO:
        assert broker.http_get("/health")[0] == 200


def assert_closed_with(client, allowed_codes):
    """The connection closes; a v5 DISCONNECT before that, if any, has one of the codes."""
    packets = client.wait_closed(timeout=10)
    codes = [(p.type, p.reason_code) for p in packets]
    allowed = [[]] + [[(rawmqtt.DISCONNECT, code)] for code in allowed_codes]
    assert codes in allowed, f"unexpected packets before close: {packets}"


def test_random_garbage_connections(broker):
    rng = random.Random(20240611)
    for i in range(12):
        with socket.create_connection((broker.host, broker.mqtt_port), timeout=5) as sock:
            size = rng.choice([1, 2, 5, 100, 5000, 70000])
            data = bytes(rng.getrandbits(8) for _ in range(size))
            try:
                sock.sendall(data)
                sock.settimeout(2)
                while sock.recv(65536):  # whatever comes back, until the broker closes
                    pass
            except (ConnectionError, socket.timeout):
                pass
    assert_still_serving(broker)


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_valid_connect_then_garbage(broker, version):
    rng = random.Random(version)
    for i in range(5):
        client = raw(broker, version)
        assert client.connect(unique("garbage")).reason_code == 0
        # a reserved packet type (0 or 15 in 3.1.1) first, so the garbage is certainly invalid
        junk = bytes([0x00, 0x05]) + bytes(rng.getrandbits(8) for _ in range(rng.choice([10, 3000])))
        try:
            client.send(junk)
        except ConnectionError:
            pass
        try:
            if version == 5:
                assert_closed_with(client, [MALFORMED, PROTOCOL_ERROR])
            else:
                assert client.wait_closed(timeout=10) == []
        finally:
            client.close()
    assert_still_serving(broker)


def test_first_packet_not_connect_is_refused(broker):
    with raw(broker, 5) as client:
        client.send(rawmqtt.publish_packet("x/y", b"no connect", qos=0, version=4))
        packets = client.wait_closed(timeout=10)
        assert all(p.type != rawmqtt.CONNACK or p.reason_code >= 0x80 for p in packets)
    assert_still_serving(broker)


def test_unknown_protocol_level_refused(broker):
    with raw(broker, 4) as client:
        body = rawmqtt.mqtt_str("MQTT") + bytes([9, 0x02]) + b"\x00\x3c" + rawmqtt.mqtt_str("lvl9")
        client.send(rawmqtt.fixed(rawmqtt.CONNECT, 0, body))
        packets = client.wait_closed(timeout=10)
        # 3.1.1: CONNACK 0x01 (unacceptable protocol version) then close, or just close
        assert [(p.type, p.reason_code) for p in packets] in (
            [], [(rawmqtt.CONNACK, 0x01)], [(rawmqtt.CONNACK, 0x84)])


def _props_bad_id():
    return b"\x02\x7f\x00"  # property length 2, property id 0x7F does not exist


# name -> (bytes sent after a good v5 CONNECT, reason codes allowed in a DISCONNECT)
MALFORMED_V5 = {
    "reserved-type-0": (bytes([0x00, 0x00]), [MALFORMED, PROTOCOL_ERROR]),
    "remaining-length-5-bytes": (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), [MALFORMED]),
    "publish-qos-3": (bytes([0x36]) + rawmqtt.varint(7) + rawmqtt.mqtt_str("a/b") + b"\x00\x01\x00",
                      [MALFORMED]),
    "subscribe-wrong-flags": (bytes([0x80]) + rawmqtt.varint(9) + b"\x00\x01\x00"
                              + rawmqtt.mqtt_str("a/b") + b"\x01", [MALFORMED]),
    "invalid-utf8-topic": (rawmqtt.fixed(rawmqtt.PUBLISH, 0, b"\x00\x03a\xff\xfe\x00payload"),
                           [MALFORMED]),
    "unknown-property": (rawmqtt.fixed(rawmqtt.PUBLISH, 0, rawmqtt.mqtt_str("a/b") + _props_bad_id()),
                         [MALFORMED]),
    "wildcard-in-publish-topic": (rawmqtt.publish_packet("a/+/c", b"x", version=5),
                                  [MALFORMED, PROTOCOL_ERROR]),
    "second-connect": (rawmqtt.connect_packet("again", 5), [MALFORMED, PROTOCOL_ERROR]),
    "string-longer-than-packet": (rawmqtt.fixed(rawmqtt.PUBLISH, 0, b"\x00\xffab"), [MALFORMED]),
    "subscribe-without-filters": (rawmqtt.fixed(rawmqtt.SUBSCRIBE, 0x02, b"\x00\x01\x00"),
                                  [MALFORMED, PROTOCOL_ERROR]),
    "qos1-packet-id-zero": (rawmqtt.publish_packet("a/b", b"x", qos=1, packet_id=0, version=5),
                            [MALFORMED, PROTOCOL_ERROR]),
}


@pytest.mark.parametrize("name", list(MALFORMED_V5))
def test_v5_malformed_packet_closes_connection(broker, name):
    data, codes = MALFORMED_V5[name]
    with connected(broker) as watcher, raw(broker, 5) as client:
        watcher.subscribe("a/#", qos=0)
        assert client.connect(unique("bad")).reason_code == 0
        client.send(data)
        assert_closed_with(client, codes)
        watcher.assert_no_message(0.3)
    assert_still_serving(broker)


@pytest.mark.parametrize("name", ["reserved-type-0", "publish-qos-3", "subscribe-wrong-flags",
                                  "invalid-utf8-topic", "second-connect"])
def test_v311_malformed_packet_closes_connection(broker, name):
    data = {
        "reserved-type-0": bytes([0x00, 0x00]),
        "publish-qos-3": bytes([0x36]) + rawmqtt.varint(6) + rawmqtt.mqtt_str("a/b") + b"\x00\x01",
        "subscribe-wrong-flags": bytes([0x80]) + rawmqtt.varint(8) + b"\x00\x01"
        + rawmqtt.mqtt_str("a/b") + b"\x01",
        "invalid-utf8-topic": rawmqtt.fixed(rawmqtt.PUBLISH, 0, b"\x00\x03a\xff\xfepayload"),
        "second-connect": rawmqtt.connect_packet("again", 4),
    }[name]
    with raw(broker, 4) as client:
        assert client.connect(unique("bad")).reason_code == 0
        client.send(data)
        assert client.wait_closed(timeout=10) == []
    assert_still_serving(broker)


def test_huge_remaining_length_is_refused_without_waiting_for_body(make_broker):
    broker = make_broker(config={"mqtt": {"max_packet_size": 1048576}})
    with raw(broker, 5) as client:
        assert client.connect(unique("huge")).reason_code == 0
        client.send(bytes([0x30]) + rawmqtt.varint(200_000_000) + b"\x00\x03a/b")
        start = time.monotonic()
        packets = client.wait_closed(timeout=10)
        assert time.monotonic() - start < 8
        assert [(p.type, p.reason_code) for p in packets] in ([], [(rawmqtt.DISCONNECT, 0x95)])
    assert_still_serving(broker)


def test_half_packet_then_disconnect(broker):
    for _ in range(5):
        with socket.create_connection((broker.host, broker.mqtt_port), timeout=5) as sock:
            sock.sendall(rawmqtt.connect_packet(unique("half"), 5)[:7])
    assert_still_serving(broker)


def test_many_short_lived_connections(broker):
    for i in range(100):
        client = raw(broker, 5 if i % 2 else 4)
        assert client.connect(unique("short")).reason_code == 0
        if i % 3:
            client.disconnect()
        else:
            client.close()
    assert_still_serving(broker)
