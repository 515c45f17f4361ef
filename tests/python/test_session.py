"""Sessions: persistence across disconnects and broker restarts, redelivery, expiry, takeover."""

import time

import pytest

import rawmqtt
from helpers import Client, connected, raw, unique

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def persistent(broker, client_id, version, **kwargs) -> Client:
    """A client whose session outlives its connection (clean_session=0 / clean_start=0 + expiry)."""
    expiry = 300 if version == 5 else None
    return Client(broker, client_id=client_id, version=version, clean=False,
                  session_expiry=expiry, **kwargs)


def raw_connect_persistent(broker, client_id, version, **kwargs) -> tuple:
    client = raw(broker, version)
    props = {"session_expiry_interval": 300} if version == 5 else None
    ack = client.connect(client_id, clean=False, props=props, **kwargs)
    assert ack.reason_code == 0, ack
    return client, ack


@pytest.mark.parametrize("when", ["published-before-restart", "published-after-restart"])
@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_survives_broker_restart(make_broker, version, when):
    broker = make_broker()
    client_id, topic = unique("persist"), unique("sess/restart")
    client = persistent(broker, client_id, version)
    assert client.connect() == (False, 0)
    assert client.subscribe(topic, qos=1) == [1]
    client.disconnect()

    payloads = [f"offline-{i}".encode() for i in range(5)]

    def publish_all():
        with connected(broker, version=version) as pub:
            for payload in payloads:
                pub.publish(topic, payload, qos=1)

    if when == "published-before-restart":
        publish_all()
        broker.restart()
    else:
        broker.restart()
        publish_all()

    client = persistent(broker, client_id, version)
    with client:
        session_present, rc = client.connect()
        assert rc == 0
        assert session_present, "session_present must be set for the restored session"
        got = client.wait_messages(len(payloads), timeout=15)
        assert [m.payload for m in got] == payloads
        assert all(m.topic == topic and m.qos == 1 for m in got)
        client.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_offline_messages_delivered_on_reconnect(broker, version):
    client_id, topic = unique("offline"), unique("sess/offline")
    client = persistent(broker, client_id, version)
    client.connect()
    client.subscribe(topic, qos=1)
    client.disconnect()
    with connected(broker, version=version) as pub:
        for i in range(10):
            pub.publish(topic, str(i).encode(), qos=1)
    with persistent(broker, client_id, version) as client:
        assert client.connect() == (True, 0)
        assert [int(m.payload) for m in client.wait_messages(10)] == list(range(10))


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_connect_discards_previous_session(broker, version):
    client_id, topic = unique("cleaned"), unique("sess/clean")
    client = persistent(broker, client_id, version)
    client.connect()
    client.subscribe(topic, qos=1)
    client.disconnect()
    with connected(broker, version=version) as pub:
        pub.publish(topic, b"queued", qos=1)
    with Client(broker, client_id=client_id, version=version, clean=True) as fresh:
        assert fresh.connect() == (False, 0)
        fresh.assert_no_message(1.0)
        with connected(broker, version=version) as pub:  # the old subscription is gone too
            pub.publish(topic, b"after", qos=1)
        fresh.assert_no_message(1.0)


def test_v5_session_expiry_zero_means_no_session_after_disconnect(broker):
    client_id, topic = unique("noexp"), unique("sess/exp0")
    client = Client(broker, client_id=client_id, clean=False, session_expiry=0)
    client.connect()
    client.subscribe(topic, qos=1)
    client.disconnect()
    with connected(broker) as pub:
        pub.publish(topic, b"lost", qos=1)
    with Client(broker, client_id=client_id, clean=False, session_expiry=0) as again:
        assert again.connect() == (False, 0)
        again.assert_no_message(1.0)


def test_v5_session_expires_after_its_interval(broker):
    client_id, topic = unique("shortexp"), unique("sess/exp")
    client = Client(broker, client_id=client_id, clean=False, session_expiry=1)
    client.connect()
    client.subscribe(topic, qos=1)
    client.disconnect()
    time.sleep(2.5)  # let the 1 s session expire (there is no event to wait for)
    with Client(broker, client_id=client_id, clean=False, session_expiry=60) as again:
        assert again.connect() == (False, 0)


@pytest.mark.parametrize("restart", [False, True], ids=["reconnect", "reconnect-after-restart"])
@pytest.mark.parametrize("version", VERSIONS)
def test_unacked_qos1_redelivered_with_dup_after_reconnect(make_broker, version, restart):
    broker = make_broker()
    client_id, topic = unique("nack"), unique("sess/dup")
    client, _ = raw_connect_persistent(broker, client_id, version)
    assert client.subscribe((topic, 1)).reason_codes == [1]
    with connected(broker, version=version) as pub:
        pub.publish(topic, b"unacked", qos=1)
    first = client.expect(rawmqtt.PUBLISH)
    assert (first.payload, first.qos, first.dup) == (b"unacked", 1, False)
    client.close()  # no PUBACK
    if restart:
        broker.restart()

    client, ack = raw_connect_persistent(broker, client_id, version)
    assert ack.session_present
    again = client.expect(rawmqtt.PUBLISH)
    assert (again.topic, again.payload, again.qos, again.dup) == (topic, b"unacked", 1, True)
    assert again.packet_id == first.packet_id
    client.ack(again)
    time.sleep(0.3)  # let the PUBACK reach the broker before the socket closes
    client.disconnect()

    client, ack = raw_connect_persistent(broker, client_id, version)
    assert client.collect(1.0) == [], "an acknowledged message was delivered again"
    client.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_unacked_qos2_publish_and_pubrel_resent_after_reconnect(broker, version):
    client_id, topic = unique("nack2"), unique("sess/dup2")
    client, _ = raw_connect_persistent(broker, client_id, version)
    client.subscribe((topic, 2))
    with connected(broker, version=version) as pub:
        pub.publish(topic, b"two", qos=2)
    first = client.expect(rawmqtt.PUBLISH)
    client.close()  # no PUBREC

    client, ack = raw_connect_persistent(broker, client_id, version)
    again = client.expect(rawmqtt.PUBLISH)
    assert (again.payload, again.qos, again.dup, again.packet_id) == (b"two", 2, True, first.packet_id)
    client.send(rawmqtt.ack_packet(rawmqtt.PUBREC, again.packet_id, version=version))
    assert client.expect(rawmqtt.PUBREL).packet_id == again.packet_id
    client.close()  # no PUBCOMP

    client, ack = raw_connect_persistent(broker, client_id, version)
    rel = client.expect(rawmqtt.PUBREL)  # the broker resends PUBREL, not the PUBLISH
    assert rel.packet_id == first.packet_id
    client.send(rawmqtt.ack_packet(rawmqtt.PUBCOMP, rel.packet_id, version=version))
    assert client.collect(1.0) == []
    client.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_session_takeover_closes_old_connection(broker, version):
    client_id, topic = unique("twin"), unique("sess/takeover")
    old = raw(broker, version)
    assert old.connect(client_id, clean=False,
                       props={"session_expiry_interval": 300} if version == 5 else None).reason_code == 0
    old.subscribe((topic, 1))

    with persistent(broker, client_id, version) as new:
        session_present, _ = new.connect()
        assert session_present
        old.wait_closed(timeout=10)
        # the session (and its subscription) moved to the new connection
        with connected(broker, version=version) as pub:
            pub.publish(topic, b"to-new", qos=1)
        assert new.wait_message().payload == b"to-new"
        assert new.paho.is_connected()


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_takeover_also_closes_old_connection(broker, version):
    client_id = unique("twin2")
    old = raw(broker, version)
    assert old.connect(client_id).reason_code == 0
    new = raw(broker, version)
    ack = new.connect(client_id, clean=True)
    assert (ack.reason_code, ack.session_present) == (0, False)
    old.wait_closed(timeout=10)
    new.send(bytes([rawmqtt.PINGREQ << 4, 0]))
    assert new.recv(5).type == rawmqtt.PINGRESP
    new.disconnect()


@pytest.mark.mosquitto_deviation("2.0.11 closes the old v5 connection without DISCONNECT 0x8E "
                                 "(MQTT-3.1.4-3 asks for it)")
@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
def test_v5_takeover_sends_disconnect_session_taken_over(broker, clean):
    client_id = unique("twin5")
    old = raw(broker, 5)
    assert old.connect(client_id, clean=clean, props={"session_expiry_interval": 60}).reason_code == 0
    new = raw(broker, 5)
    assert new.connect(client_id, clean=clean, props={"session_expiry_interval": 60}).reason_code == 0
    packets = old.wait_closed(timeout=10)
    assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x8E)]
    new.disconnect()
