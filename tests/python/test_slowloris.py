"""Slow-loris and floods on every listener: thousands of connections that send half a request
and stall, and hundreds that dribble one byte at a time, on MQTT, MQTT over WebSocket, Kafka
and HTTP at once, while real clients (paho, confluent-kafka, an HTTP request) keep being
served within seconds; once the attackers are gone, the node's open connections fall back."""

import socket
import subprocess
import sys
import threading
import types
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import free_port
from helpers import unique
from kafka_helpers import bootstrap, consumer, kafka_broker, poll_records, produce_all, producer

pytestmark = pytest.mark.tidewater_only

STALLED = 1500  # half-open connections per listener
DRIBBLERS = 100  # per listener, one byte every 200 ms


def partial_request(kind):
    """The first bytes of a request that is never finished."""
    return {
        # CONNECT, remaining length 16, then only part of the variable header
        "mqtt": b"\x10\x10\x00\x04MQ",
        # a WebSocket upgrade without the blank line that ends the headers
        "ws": b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
        # a Kafka frame of 64 bytes, of which 6 arrive
        "kafka": b"\x00\x00\x00\x40\x00\x12",
        "http": b"GET /health HTTP/1.1\r\nHost: x\r\n",
    }[kind]


def open_stalled(port, kind, count):
    sockets = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(partial_request(kind))
            sockets.append(sock)
        except OSError:
            break  # refused or reset: the node is defending itself, which is allowed
    return sockets


def dribble(port, kind, stop):
    """DRIBBLERS connections each sending the request one byte per 200 ms, until `stop`."""
    payload = partial_request(kind) * 50
    sockets = []
    for _ in range(DRIBBLERS):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    position = 0
    while not stop.is_set():
        for sock in list(sockets):
            try:
                sock.send(payload[position % len(payload):position % len(payload) + 1])
            except OSError:
                sockets.remove(sock)  # closed by the node: fine
        position += 1
        stop.wait(0.2)
    for sock in sockets:
        sock.close()


def mqtt_round_trip(port, transport="tcp"):
    """A paho publisher and subscriber through `port`; seconds it took."""
    started = time.monotonic()
    topic, got = unique("loris"), []
    done = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("s"), protocol=mqtt.MQTTv5,
                      transport=transport)
    sub.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port, keepalive=30)
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("p"), protocol=mqtt.MQTTv5,
                          transport=transport)
        pub.connect("127.0.0.1", port, keepalive=30)
        pub.loop_start()
        pub.publish(topic, b"through", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert done.wait(10) and got == [b"through"], got
    finally:
        sub.loop_stop()
        sub.disconnect()
    return time.monotonic() - started


def kafka_round_trip(port):
    started = time.monotonic()
    topic = unique("loris").replace("/", "-")
    broker = types.SimpleNamespace(host="127.0.0.1", kafka_port=port)
    produce_all(producer(broker), topic, [{"value": b"k%d" % i} for i in range(3)])
    cons = consumer(broker)
    cons.subscribe([topic])
    try:
        assert [r.value for r in poll_records(cons, 3)] == [b"k0", b"k1", b"k2"]
    finally:
        cons.close()
    return time.monotonic() - started


def http_round_trip(port):
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        assert answer.status == 200
    return time.monotonic() - started


def still_open(sock):
    """Whether the node still holds this connection open (a read neither ends nor fails)."""
    sock.settimeout(0.01)
    try:
        while sock.recv(4096):
            pass  # an answer (an HTTP 408, a DISCONNECT) before the close
        return False
    except socket.timeout:
        return True
    except OSError:
        return False


def in_child(function, *args):
    """Runs one of the round trips above in a process of its own (paho's loop uses select(),
    which cannot watch the descriptor numbers this test's thousands of sockets push it to):
    seconds it took."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_slowloris as t; "
            f"print(t.{function}(*{args!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{function}: {out.stderr[-2000:]}"
    return float(out.stdout.strip().splitlines()[-1])


def test_stalled_and_dribbling_connections_on_every_listener_do_not_starve_real_clients(make_broker):
    ws_port = free_port()
    broker = kafka_broker(make_broker, config={"listeners": {"ws": f"127.0.0.1:{ws_port}"},
                                               "mqtt": {"connect_timeout_ms": 5000},
                                               "kafka": {"request_read_timeout_ms": 3000}})
    ports = {"mqtt": broker.mqtt_port, "ws": ws_port, "kafka": broker.kafka_port, "http": broker.http_port}
    stop = threading.Event()
    stalled, dribblers = {}, []
    try:
        attacked = time.monotonic()
        for kind, port in ports.items():
            stalled[kind] = open_stalled(port, kind, STALLED)
            thread = threading.Thread(target=dribble, args=(port, kind, stop), daemon=True)
            thread.start()
            dribblers.append(thread)
        assert all(len(held) >= STALLED // 2 for held in stalled.values()), {k: len(v) for k, v in stalled.items()}
        # real clients, while every listener is under attack
        timings = {"mqtt": in_child("mqtt_round_trip", broker.mqtt_port),
                   "ws": in_child("mqtt_round_trip", ws_port, "websockets"),
                   "kafka": in_child("kafka_round_trip", broker.kafka_port),
                   "http": in_child("http_round_trip", broker.http_port)}
        assert all(seconds < 15 for seconds in timings.values()), timings
        # every half-open connection is cut: MQTT and WebSocket at mqtt.connect_timeout_ms,
        # Kafka at kafka.request_read_timeout_ms, HTTP at its header timeout (10 s)
        time.sleep(max(0.0, attacked + 14 - time.monotonic()))
        alive = {kind: sum(still_open(sock) for sock in held) for kind, held in stalled.items()}
        assert alive == {"mqtt": 0, "ws": 0, "kafka": 0, "http": 0}, alive
        assert in_child("mqtt_round_trip", broker.mqtt_port) < 15
    finally:
        stop.set()
        for thread in dribblers:
            thread.join(10)
        for held in stalled.values():
            for sock in held:
                sock.close()
    assert in_child("http_round_trip", broker.http_port) < 5 and in_child("kafka_round_trip", broker.kafka_port) < 15


# ApiVersions v0, correlation id 1, client id "t"
API_VERSIONS_V0 = b"\x00\x00\x00\x0b\x00\x12\x00\x00\x00\x00\x00\x01\x00\x01t"


def test_kafka_connections_from_one_address_are_bounded(make_broker):
    broker = kafka_broker(make_broker, config={"kafka": {"max_connections_per_address": 4}})
    held = [socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=5) for _ in range(4)]
    for sock in held:
        # answered: this connection is counted before the next one opens
        sock.sendall(API_VERSIONS_V0)
        assert len(sock.recv(4)) == 4
    try:
        extra = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=5)
        extra.settimeout(5)
        assert extra.recv(1) == b"", "the fifth connection is closed at once"
        extra.close()
        assert broker.log_lines("kafka connection refused: over kafka.max_connections_per_address")
    finally:
        for sock in held:
            sock.close()
    # the four gone, a real client is served again
    assert in_child("kafka_round_trip", broker.kafka_port) < 15
    from conftest import metric_sum
    assert metric_sum(broker.metrics(), "tidewater_limits_hit_total", limit="kafka_connections_per_address") >= 1


def test_new_kafka_connections_past_the_connect_rate_are_closed(make_broker):
    broker = kafka_broker(make_broker, config={"kafka": {"max_connect_rate": 5}})
    sockets = [socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=5) for _ in range(20)]
    try:
        closed = 0
        for sock in sockets:
            sock.settimeout(0.5)
            try:
                closed += sock.recv(1) == b""
            except socket.timeout:
                pass
        # a second's worth (5) is served; most of the burst is not
        assert 10 <= closed <= 15, closed
    finally:
        for sock in sockets:
            sock.close()
    assert broker.log_lines("kafka connection refused: over kafka.max_connect_rate")
    time.sleep(1.5)
    assert in_child("kafka_round_trip", broker.kafka_port) < 15
    from conftest import metric_sum
    assert metric_sum(broker.metrics(), "tidewater_limits_hit_total", limit="kafka_connect_rate") >= 10
