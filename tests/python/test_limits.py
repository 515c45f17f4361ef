"""Limits: keepalive, receive maximum / in-flight window, packet size, connections, queue bounds."""

import time

import pytest

import rawmqtt
from conftest import MOSQUITTO, metric_sum
from helpers import Client, connected, raw, unique, wait_until

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


# -- keepalive ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_silent_client_disconnected_after_one_and_a_half_keepalives(broker, version):
    with raw(broker, version) as client:
        assert client.connect(unique("quiet"), keepalive=2).reason_code == 0
        start = time.monotonic()
        packets = client.wait_closed(timeout=10)
        elapsed = time.monotonic() - start
        assert 2.0 <= elapsed <= 6.0, f"closed after {elapsed:.1f}s, keepalive 2s"
        if version == 5:
            # Tidewater tells a v5 client why (Keep Alive timeout); Mosquitto just closes
            expected = ([], [0x8D]) if MOSQUITTO else ([0x8D],)
            assert [p.reason_code for p in packets if p.type == rawmqtt.DISCONNECT] in expected


@pytest.mark.parametrize("version", VERSIONS)
def test_pinging_client_stays_connected(broker, version):
    with raw(broker, version) as client:
        assert client.connect(unique("pinger"), keepalive=1).reason_code == 0
        for _ in range(5):  # 5 s with keepalive 1: only the pings keep it open
            time.sleep(0.9)
            client.send(bytes([rawmqtt.PINGREQ << 4, 0]))
            assert client.recv(2).type == rawmqtt.PINGRESP


def test_v5_server_keep_alive_caps_client_keepalive(make_broker):
    broker = make_broker(config={"mqtt": {"max_keepalive": 10}})
    with raw(broker, 5) as client:
        ack = client.connect(unique("ka"), keepalive=60)
        assert ack.reason_code == 0
        assert ack.props.get("server_keep_alive") == 10
    with raw(broker, 5) as client:  # asking less than the maximum is left alone
        ack = client.connect(unique("ka"), keepalive=5)
        assert ack.reason_code == 0
        assert ack.props.get("server_keep_alive", 5) == 5


@pytest.mark.tidewater_only
def test_v5_keepalive_zero_gets_server_keep_alive(make_broker):
    broker = make_broker(config={"mqtt": {"max_keepalive": 10}})
    with raw(broker, 5) as client:
        ack = client.connect(unique("ka0"), keepalive=0)
        assert ack.reason_code == 0
        assert ack.props.get("server_keep_alive") == 10


@pytest.mark.tidewater_only
def test_connection_without_connect_closed_after_connect_timeout(make_broker):
    broker = make_broker(config={"mqtt": {"connect_timeout_ms": 1000}})
    with raw(broker, 5) as client:
        start = time.monotonic()
        client.wait_closed(timeout=8)
        assert time.monotonic() - start >= 0.8


# -- in-flight window -----------------------------------------------------------------------------


def _publish_numbered(broker, topic, count, version=5):
    with connected(broker, version=version) as pub:
        for i in range(count):
            pub.publish(topic, str(i).encode(), qos=1)


def _publishes(packets):
    return [p for p in packets if p.type == rawmqtt.PUBLISH]


def test_server_respects_client_receive_maximum(broker):
    """With Receive Maximum 3 the broker has at most 3 unacknowledged QoS 1 publishes out."""
    topic = unique("lim/rm")
    with raw(broker, 5) as sub:
        assert sub.connect(unique("slow"), props={"receive_maximum": 3}).reason_code == 0
        sub.subscribe((topic, 1))
        _publish_numbered(broker, topic, 10)
        first = _publishes(sub.collect(1.5))
        assert [p.payload for p in first] == [b"0", b"1", b"2"]


@pytest.mark.mosquitto_deviation("2.0.11 refills the whole window after a single PUBACK, "
                                 "exceeding the client's Receive Maximum (MQTT-3.3.4-9)")
def test_receive_maximum_window_slides_one_per_ack(broker):
    topic = unique("lim/rm-slide")
    with raw(broker, 5) as sub:
        assert sub.connect(unique("slow"), props={"receive_maximum": 3}).reason_code == 0
        sub.subscribe((topic, 1))
        _publish_numbered(broker, topic, 10)
        first = _publishes(sub.collect(1.5))
        assert [p.payload for p in first] == [b"0", b"1", b"2"]
        sub.ack(first[0])
        more = _publishes(sub.collect(1.0))
        assert [p.payload for p in more] == [b"3"], "one ack must free exactly one slot"
        outstanding = first[1:] + more
        received = [p.payload for p in first + more]
        while len(received) < 10:
            for pkt in outstanding:
                sub.ack(pkt)
            outstanding = _publishes(sub.collect(1.0))
            assert 1 <= len(outstanding) <= 3, f"window broken: {len(outstanding)} outstanding"
            received += [p.payload for p in outstanding]
        assert received == [str(i).encode() for i in range(10)]


def test_server_inflight_window_for_v311_client(make_broker):
    """mqtt.max_inflight bounds the unacknowledged publishes to a 3.1.1 client."""
    broker = make_broker(config={"mqtt": {"max_inflight": 2}})
    topic = unique("lim/inflight")
    with raw(broker, 4) as sub:
        assert sub.connect(unique("slow311")).reason_code == 0
        sub.subscribe((topic, 1))
        _publish_numbered(broker, topic, 6, version=4)
        first = _publishes(sub.collect(1.5))
        assert [p.payload for p in first] == [b"0", b"1"]


@pytest.mark.mosquitto_deviation("2.0.11 refills more than the freed slots after PUBACKs, "
                                 "exceeding max_inflight_messages")
def test_server_inflight_window_slides_for_v311_client(make_broker):
    broker = make_broker(config={"mqtt": {"max_inflight": 2}})
    topic = unique("lim/inflight-slide")
    with raw(broker, 4) as sub:
        assert sub.connect(unique("slow311")).reason_code == 0
        sub.subscribe((topic, 1))
        _publish_numbered(broker, topic, 6, version=4)
        outstanding = _publishes(sub.collect(1.5))
        received = [p.payload for p in outstanding]
        while len(received) < 6:
            for pkt in outstanding:
                sub.ack(pkt)
            outstanding = _publishes(sub.collect(1.0))
            assert 1 <= len(outstanding) <= 2, f"window broken: {len(outstanding)} outstanding"
            received += [p.payload for p in outstanding]
        assert received == [str(i).encode() for i in range(6)]


# -- packet size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_oversize_publish_closes_connection(make_broker, version):
    broker = make_broker(config={"mqtt": {"max_packet_size": 1024}})
    topic = unique("lim/size")
    with connected(broker) as watcher, raw(broker, version) as client:
        watcher.subscribe(topic, qos=1)
        ack = client.connect(unique("big"))
        assert ack.reason_code == 0
        if version == 5:
            assert ack.props.get("maximum_packet_size") == 1024
        client.publish_acked(topic, b"s" * 900)  # under the limit: accepted
        assert watcher.wait_message().payload == b"s" * 900
        client.publish(topic, b"B" * 2000, qos=1)
        packets = client.wait_closed()
        if version == 5:
            assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x95)]
        else:
            assert packets == []
        watcher.assert_no_message(0.5)
    with connected(broker, version=version) as after:  # the broker still serves
        after.subscribe(topic, qos=1)


def test_server_does_not_send_packets_above_client_maximum(broker):
    topic = unique("lim/cmax")
    with Client(broker, connect_props={"MaximumPacketSize": 256}) as small, \
            connected(broker) as pub:
        small.connect()
        small.subscribe(topic, qos=1)
        pub.publish(topic, b"x" * 1000, qos=1)
        pub.publish(topic, b"fits", qos=1)
        assert small.wait_message().payload == b"fits"
        small.assert_no_message(0.5)
        assert small.paho.is_connected()


# -- connections ----------------------------------------------------------------------------------


def _try_connect(broker, version=5):
    """A connected raw client, or None when the broker refused or closed the connection."""
    client = raw(broker, version)
    try:
        if client.connect(unique("conn"), timeout=3).reason_code == 0:
            return client
    except (rawmqtt.Closed, ConnectionError):
        pass
    client.close()
    return None


def _connect_eventually(broker, version=5):
    # a connection that just closed (the start-up probe, a client that left) may take the
    # broker a moment to release
    return wait_until(lambda: _try_connect(broker, version), timeout=10, interval=0.2,
                      message="a free connection slot")


def test_max_connections_refuses_extra_connection(make_broker):
    broker = make_broker(config={"mqtt": {"max_connections": 3}})
    clients = [_connect_eventually(broker) for _ in range(3)]
    try:
        assert _try_connect(broker) is None, "a 4th connection was accepted"
        clients.pop(0).disconnect()
        again = _connect_eventually(broker)  # a slot is free again
        again.disconnect()
    finally:
        for client in clients:
            client.close()


@pytest.mark.tidewater_only  # CONFIG-SPEC contract; mosquitto closes the socket at accept
@pytest.mark.parametrize("version,code", [(5, 0x97), (4, 0x03)], ids=["v5-0x97", "v311-0x03"])
def test_max_connections_connack_reason(make_broker, version, code):
    broker = make_broker(config={"mqtt": {"max_connections": 2}})
    clients = [_connect_eventually(broker) for _ in range(2)]
    try:
        with raw(broker, version) as extra:
            ack = extra.connect(unique("extra"))
            assert ack.reason_code == code
            extra.wait_closed()
    finally:
        for client in clients:
            client.close()


# -- per-session queue ----------------------------------------------------------------------------


def _fill_offline_queue(broker, topic, client_id, count):
    client = Client(broker, client_id=client_id, clean=False, session_expiry=300)
    client.connect()
    client.subscribe(topic, qos=1)
    client.disconnect()
    with connected(broker) as pub:
        for i in range(count):
            pub.publish(topic, str(i).encode(), qos=1)


def _dropped(broker) -> float:
    return metric_sum(broker.metrics(), "tidewater_mqtt_messages_dropped_total")


def _reconnect_and_drain(broker, client_id, expect):
    with Client(broker, client_id=client_id, clean=False, session_expiry=300) as client:
        assert client.connect()[0]
        got = client.wait_messages(expect)
        got += client.drain(1.0)
        return [int(m.payload) for m in got]


@pytest.mark.tidewater_only
def test_queue_bound_drop_oldest_keeps_newest_and_counts_drops(make_broker):
    broker = make_broker(config={"mqtt": {"max_queued_messages": 5, "queue_overflow": "drop_oldest"}})
    topic, client_id = unique("lim/q"), unique("queued")
    before = _dropped(broker)
    _fill_offline_queue(broker, topic, client_id, 20)
    assert _reconnect_and_drain(broker, client_id, 5) == [15, 16, 17, 18, 19]
    wait_until(lambda: _dropped(broker) - before >= 15, message="15 drops counted")


def test_queue_bound_drop_new_keeps_oldest(make_broker):
    broker = make_broker(config={"mqtt": {"max_queued_messages": 5, "queue_overflow": "drop_new"}})
    topic, client_id = unique("lim/qn"), unique("queued")
    _fill_offline_queue(broker, topic, client_id, 20)
    assert _reconnect_and_drain(broker, client_id, 5) == [0, 1, 2, 3, 4]


@pytest.mark.tidewater_only
def test_queue_drop_new_counts_drops(make_broker):
    broker = make_broker(config={"mqtt": {"max_queued_messages": 5, "queue_overflow": "drop_new"}})
    topic, client_id = unique("lim/qn"), unique("queued")
    before = _dropped(broker)
    _fill_offline_queue(broker, topic, client_id, 20)
    # a PUBACK may precede the routing (and dropping) of the message: wait for the count
    wait_until(lambda: _dropped(broker) - before >= 15, message="15 drops counted")
    assert _reconnect_and_drain(broker, client_id, 5) == [0, 1, 2, 3, 4]


@pytest.mark.tidewater_only
def test_the_queue_is_bounded_in_bytes_as_well_as_in_messages(make_broker):
    # 100 KB messages, 350 KB of queue: three fit, though 1,000 messages would
    broker = make_broker(config={"mqtt": {"max_queued_bytes": 350_000, "queue_overflow": "drop_oldest"}})
    topic, client_id = unique("lim/qb"), unique("queued")
    before = _dropped(broker)
    client = Client(broker, client_id=client_id, clean=False, session_expiry=300)
    client.connect()
    client.subscribe(topic, qos=1)
    client.disconnect()
    with connected(broker) as pub:
        for i in range(10):
            pub.publish(topic, b"%d:" % i + b"x" * 100_000, qos=1)
    with Client(broker, client_id=client_id, clean=False, session_expiry=300) as back:
        assert back.connect()[0]
        got = back.wait_messages(3)
        got += back.drain(1.0)
    assert [int(m.payload.split(b":")[0]) for m in got] == [7, 8, 9], "the newest that fit in the bytes"
    assert all(len(m.payload) == 100_002 for m in got)
    wait_until(lambda: _dropped(broker) - before >= 7, message="7 drops counted")


@pytest.mark.tidewater_only
def test_a_zero_max_queued_bytes_is_refused_with_the_key(make_broker):
    broker = make_broker(start=False, config={"mqtt": {"max_queued_bytes": 0}})
    with pytest.raises(Exception):
        broker.start()
    assert "mqtt.max_queued_bytes" in broker.log_text()


def offline_sessions(broker, client_ids, subscriptions):
    """Persistent sessions with these (filter, qos) subscriptions, left offline."""
    for client_id in client_ids:
        client = Client(broker, client_id=client_id, clean=False, session_expiry=300)
        client.connect()
        for topic, qos in subscriptions:
            client.subscribe(topic, qos=qos)
        client.disconnect()


@pytest.mark.tidewater_only
def test_the_queues_of_all_sessions_share_the_nodes_memory_budget(make_broker):
    # a 16 MiB budget gives the session queues 10 MiB (five eighths) between them for QoS 1
    # messages; each session alone may queue 64 MiB. Two offline sessions, 40 messages of
    # 256 KB (10 MiB) for each: together they keep what fits in 10 MiB, the newest
    # (drop_oldest), and the rest is counted as dropped for the budget, with a gauge of what
    # the queues hold
    broker = make_broker(config={"memory": {"budget_bytes": 16 << 20}, "mqtt": {"queue_overflow": "drop_oldest"}})
    topic, ids = unique("lim/budget"), [unique("budget-a"), unique("budget-b")]
    offline_sessions(broker, ids, [(topic, 1)])
    payload = b"x" * (256 << 10)
    with connected(broker) as pub:
        for i in range(40):
            pub.publish(topic, b"%02d:" % i + payload, qos=1)
    samples = broker.metrics()
    queued = metric_sum(samples, "tidewater_memory_bytes", part="session_queues")
    assert 9 << 20 <= queued <= 10 << 20, queued
    assert metric_sum(samples, "tidewater_memory_budget_bytes") == 16 << 20
    dropped = metric_sum(samples, "tidewater_mqtt_messages_dropped_total", reason="memory_budget")
    kept = []
    for client_id in ids:
        with Client(broker, client_id=client_id, clean=False, session_expiry=300) as back:
            assert back.connect()[0]
            got = back.drain(3.0)
        numbers = [int(m.payload.split(b":")[0]) for m in got]
        assert numbers == sorted(numbers) and (not numbers or numbers[-1] == 39), "the newest kept, in order"
        kept.append(len(numbers))
    # 10 MiB hold 39 of these (topic and payload), shared between the two
    assert 36 <= sum(kept) <= 40, kept
    assert dropped == 80 - sum(kept), (dropped, kept)
    wait_until(lambda: metric_sum(broker.metrics(), "tidewater_memory_bytes", part="session_queues") == 0,
               message="what was sent left the budget")


@pytest.mark.tidewater_only
def test_qos_0_gives_way_first_in_the_memory_budget(make_broker):
    # a 16 MiB budget: queued QoS 0 messages may hold half of it (8 MiB), QoS 1/2 up to five
    # eighths (10 MiB); a QoS 0 flood past its half is dropped and leaves QoS 1 its room
    broker = make_broker(config={"memory": {"budget_bytes": 16 << 20}})
    flood, important = unique("lim/q0"), unique("lim/q1")
    ids = [unique("tier-a"), unique("tier-b")]
    offline_sessions(broker, ids, [(flood, 0), (important, 1)])
    payload = b"x" * (256 << 10)
    with connected(broker) as pub:
        for i in range(40):
            pub.publish(flood, b"%02d:" % i + payload, qos=0)
        wait_until(lambda: metric_sum(broker.metrics(), "tidewater_mqtt_messages_dropped_total",
                                      reason="memory_budget") >= 40, message="the QoS 0 flood met the budget")
        queued = metric_sum(broker.metrics(), "tidewater_memory_bytes", part="session_queues")
        assert 7 << 20 <= queued <= 8 << 20, queued
        for i in range(4):
            pub.publish(important, b"important %d:" % i + payload, qos=1)
    queued = metric_sum(broker.metrics(), "tidewater_memory_bytes", part="session_queues")
    assert 9 << 20 <= queued <= 10 << 20, queued
    for client_id in ids:
        with Client(broker, client_id=client_id, clean=False, session_expiry=300) as back:
            assert back.connect()[0]
            got = back.drain(3.0)
        firsts = [m.payload.split(b":")[0] for m in got if m.topic == important]
        assert firsts == [b"important %d" % i for i in range(4)], firsts
        assert any(m.topic == flood for m in got), "the QoS 0 messages that fitted are delivered too"


@pytest.mark.tidewater_only
@pytest.mark.parametrize("key,value", [("memory.budget_bytes", 1000), ("kafka.fetch_max_bytes", 0)])
def test_a_memory_bound_too_small_is_refused_with_the_key(make_broker, key, value):
    section, name = key.split(".")
    broker = make_broker(start=False, config={section: {name: value}})
    with pytest.raises(Exception):
        broker.start()
    assert key in broker.log_text()


# -- retain availability --------------------------------------------------------------------------


def test_retain_unavailable_rejects_retained_publish(make_broker):
    broker = make_broker(config={"mqtt": {"retain_available": False}})
    with raw(broker, 5) as client:
        ack = client.connect(unique("noret"))
        assert ack.props.get("retain_available") == 0
        client.publish("lim/ret", b"x", qos=1, retain=True)
        packets = client.wait_closed()
        assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x9A)]


def _send_recording(sock, data, failures):
    try:
        sock.sendall(data)
    except OSError as error:
        failures.append(error)


@pytest.mark.tidewater_only
def test_a_client_over_receive_maximum_reads_the_disconnect_though_it_keeps_writing(make_broker):
    """Past the server's Receive Maximum the broker sends DISCONNECT 0x93 and closes
    (MQTT-3.3.4-9). A client still writing publishes then must hear that reason, not a broken
    pipe: the broker half-closes and drains what the client sends for a moment before it closes."""
    import threading
    broker = make_broker(config={"mqtt": {"max_inflight": 5}})
    with raw(broker, 5) as client:
        assert client.connect(unique("over")).props.get("receive_maximum") == 5
        topic = unique("rm/q2")
        # six QoS 2 publishes without PUBREL (one over the limit), and a client that goes on
        # writing without waiting for its PUBRECs: 20 MB more behind them
        over = b"".join(rawmqtt.publish_packet(topic, b"x", qos=2, packet_id=i) for i in range(1, 7))
        flood = b"".join(rawmqtt.publish_packet(topic, b"y" * 2000, qos=2, packet_id=i) for i in range(7, 10007))
        failures = []
        sender = threading.Thread(target=_send_recording, args=(client.sock, over + flood, failures))
        sender.start()
        try:
            packets = client.wait_closed(timeout=10)
        finally:
            sender.join(10)
    assert [p.packet_id for p in packets if p.type == rawmqtt.PUBREC] == [1, 2, 3, 4, 5]
    disconnects = [p for p in packets if p.type == rawmqtt.DISCONNECT]
    assert [p.reason_code for p in disconnects] == [0x93], packets
    # its writes never failed: the broker read (and dropped) them until the client was done
    assert failures == [], failures


@pytest.mark.tidewater_only
@pytest.mark.parametrize("version", [4, 5])
def test_a_client_id_longer_than_max_client_id_len_is_refused(make_broker, version):
    """mqtt.max_client_id_len: an id up to the limit connects; a longer one gets CONNACK 0x85
    (3.1.1: 0x02, identifier rejected) and no session."""
    broker = make_broker(config={"mqtt": {"max_client_id_len": 64}})
    refused = 0x85 if version == 5 else 0x02
    with raw(broker, version) as client:
        assert client.connect("a" * 64, clean=False).reason_code == 0
    with raw(broker, version) as client:
        assert client.connect("b" * 65, clean=False).reason_code == refused
        client.wait_closed(timeout=5)


@pytest.mark.tidewater_only
@pytest.mark.parametrize("version", VERSIONS)
def test_topic_levels_and_subscriptions_per_client_are_bounded(make_broker, version):
    """mqtt.max_topic_levels and mqtt.max_subscriptions, as EMQX's: a filter past the levels gets
    SUBACK 0x8F, a new filter past the quota 0x97 (3.1.1: 0x80 for both), a PUBLISH past the
    levels closes the connection (v5 with DISCONNECT 0x90) and reaches nobody; each is counted."""
    broker = make_broker(config={"mqtt": {"max_topic_levels": 4, "max_subscriptions": 3}})
    invalid, quota = (0x8F, 0x97) if version == 5 else (0x80, 0x80)
    def codes(reason_codes):
        return [getattr(code, "value", code) for code in reason_codes]
    with connected(broker, version=version) as paho:
        assert codes(paho.subscribe("a/b/c/d/e")) == [invalid]
        assert codes(paho.subscribe("a/b/c/d")) == [1]
    with raw(broker, version) as client:
        assert client.connect(unique("many")).reason_code == 0
        ack = client.subscribe(("lim/+/x/#", 1), ("$share/g/a/b/c/d/e", 1), ("lim/1", 1), ("lim/2", 1), ("lim/3", 1))
        assert ack.reason_codes == [1, invalid, 1, 1, quota]
        # a filter held already is replaced, within the quota; unsubscribing makes room
        assert client.subscribe(("lim/1", 0)).reason_codes == [0]
        client.send(rawmqtt.unsubscribe_packet(client.packet_id(), ["lim/2"], version))
        client.expect(rawmqtt.UNSUBACK)
        assert client.subscribe(("lim/3", 1)).reason_codes == [1]
    with connected(broker, version=version) as watcher, raw(broker, version) as client:
        watcher.subscribe("deep/#", qos=1)
        assert client.connect(unique("deep")).reason_code == 0
        client.publish_acked("deep/b/c/d", b"four levels")
        assert watcher.wait_message().payload == b"four levels"
        client.publish("deep/b/c/d/e", b"five levels", qos=1)
        packets = client.wait_closed()
        if version == 5:
            assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x90)]
        else:
            assert packets == []
        watcher.assert_no_message(0.5)
    samples = broker.metrics()
    assert metric_sum(samples, "tidewater_limits_hit_total", limit="topic_levels") == 3
    assert metric_sum(samples, "tidewater_limits_hit_total", limit="subscriptions") == 1


@pytest.mark.tidewater_only
@pytest.mark.parametrize("version,quota,rate", [(5, 0x97, 0x9F), (4, 0x03, 0x03)], ids=["v5", "v311"])
def test_connections_per_address_and_the_connect_rate_are_bounded(make_broker, version, quota, rate):
    """mqtt.max_connections_per_address: one more connection from that address gets CONNACK 0x97
    (3.1.1: 0x03) while another address still connects; mqtt.max_connect_rate: a burst past a
    second's worth gets 0x9F (3.1.1: 0x03), and a second later connects go through again."""
    broker = make_broker(config={"mqtt": {"max_connections_per_address": 2}})
    held = [raw(broker, version, source="127.0.0.1") for _ in range(2)]
    try:
        for client in held:
            assert client.connect(unique("held")).reason_code == 0
        with raw(broker, version, source="127.0.0.1") as extra:
            assert extra.connect(unique("extra")).reason_code == quota
            extra.wait_closed()
        with raw(broker, version, source="127.0.0.2") as elsewhere:
            assert elsewhere.connect(unique("elsewhere")).reason_code == 0
        held.pop().close()
        # the closed connection's slot is free once the node has seen it go
        def connects():
            with raw(broker, version, source="127.0.0.1") as again:
                return again.connect(unique("again")).reason_code == 0
        wait_until(connects, timeout=5)
    finally:
        for client in held:
            client.close()
    assert metric_sum(broker.metrics(), "tidewater_limits_hit_total", limit="connections_per_address") >= 1

    broker = make_broker(config={"mqtt": {"max_connect_rate": 5}})
    codes = []
    for _ in range(12):
        with raw(broker, version) as client:
            codes.append(client.connect(unique("burst")).reason_code)
    accepted = codes.count(0)
    assert 5 <= accepted <= 7 and codes.count(rate) == 12 - accepted, codes
    time.sleep(1.2)
    with raw(broker, version) as client:
        assert client.connect(unique("later")).reason_code == 0
    assert metric_sum(broker.metrics(), "tidewater_limits_hit_total", limit="connect_rate") == 12 - accepted


@pytest.mark.tidewater_only
@pytest.mark.parametrize("version", VERSIONS)
def test_a_connection_past_its_publish_rate_is_closed(make_broker, version):
    """mqtt.max_publish_rate: a client within it stays; one that bursts past a second's worth is
    closed (v5 with DISCONNECT 0x96 Message rate too high), and what it sent within the rate
    arrived; mqtt.max_publish_bytes_rate the same in bytes."""
    broker = make_broker(config={"mqtt": {"max_publish_rate": 20, "max_publish_bytes_rate": 20_000}})
    topic = unique("lim/rate")
    expected = [(rawmqtt.DISCONNECT, 0x96)] if version == 5 else []
    with connected(broker) as watcher:
        watcher.subscribe(topic, qos=1)
        with raw(broker, version) as steady:
            assert steady.connect(unique("steady")).reason_code == 0
            for i in range(15):  # 10 a second for 1.5 s
                steady.publish_acked(topic, b"s%d" % i)
                time.sleep(0.1)
        assert [m.payload for m in watcher.wait_messages(15)] == [b"s%d" % i for i in range(15)]
        with raw(broker, version) as burst:
            assert burst.connect(unique("burst")).reason_code == 0
            for i in range(40):
                burst.publish(topic, b"b%d" % i, qos=0)
            packets = burst.wait_closed()
            assert [(p.type, p.reason_code) for p in packets] == expected
        got = [m.payload for m in watcher.drain(1.0)]
        assert 20 <= len(got) <= 21 and got == [b"b%d" % i for i in range(len(got))], got
        with raw(broker, version) as heavy:
            assert heavy.connect(unique("heavy")).reason_code == 0
            heavy.publish_acked(topic, b"h" * 15_000)
            heavy.publish(topic, b"H" * 15_000, qos=1, packet_id=7)
            assert [(p.type, p.reason_code) for p in heavy.wait_closed()] == expected
        assert [len(m.payload) for m in watcher.drain(1.0)] == [15_000]
    lines = broker.log_lines("mqtt connection closed by the server", "MessageRateTooHigh")
    assert len(lines) == 2 and all(" INFO " in line and "127.0.0.1" in line for line in lines), lines
    samples = broker.metrics()
    assert metric_sum(samples, "tidewater_limits_hit_total", limit="publish_rate") == 1
    assert metric_sum(samples, "tidewater_limits_hit_total", limit="publish_bytes_rate") == 1
