"""Will messages: sent when a connection dies, not after DISCONNECT, v5 will delay."""

import time

import pytest

from helpers import MosquittoSub, connected, raw, unique

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def will_watcher(broker, topic, version=5):
    watcher = connected(broker, version=version)
    watcher.subscribe(topic, qos=1)
    return watcher


@pytest.mark.parametrize("version", VERSIONS)
def test_will_published_when_socket_closes_without_disconnect(broker, version):
    topic = unique("will/killed")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, version)
        will = {"topic": topic, "payload": b"client died", "qos": 1}
        assert client.connect(unique("dying"), will=will).reason_code == 0
        client.close()
        msg = watcher.wait_message()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"client died", 1, False)
        watcher.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_will_of_killed_mosquitto_sub(broker, version):
    topic = unique("will/mosq")
    with will_watcher(broker, topic) as watcher:
        dying = MosquittoSub(broker, unique("will/ignored"), version=version,
                             extra=["--will-topic", topic, "--will-payload", "gone",
                                    "--will-qos", "1"])
        dying.kill()
        msg = watcher.wait_message()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"gone", 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_no_will_after_normal_disconnect(broker, version):
    topic = unique("will/clean")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, version)
        assert client.connect(unique("polite"), will={"topic": topic, "payload": b"x"}).reason_code == 0
        client.disconnect()
        watcher.assert_no_message(1.5)
        with connected(broker) as control:  # the watcher does see ordinary messages on the topic
            control.publish(topic, b"control", qos=1)
        assert watcher.wait_message().payload == b"control"


def test_v5_disconnect_with_will_message_reason_publishes_will(broker):
    topic = unique("will/0x04")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, 5)
        assert client.connect(unique("c"), will={"topic": topic, "payload": b"asked"}).reason_code == 0
        client.disconnect(reason=0x04)
        assert watcher.wait_message().payload == b"asked"


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_will_is_kept_for_later_subscribers(broker, version):
    topic = unique("will/retained")
    client = raw(broker, version)
    will = {"topic": topic, "payload": b"offline", "qos": 1, "retain": True}
    assert client.connect(unique("c"), will=will).reason_code == 0
    client.close()
    with connected(broker) as late:
        # the will may take a moment to be published; resubscribing reads the retained store again
        deadline = time.monotonic() + 10
        while True:
            late.subscribe(topic, qos=1)
            got = late.drain(0.3)
            if got or time.monotonic() > deadline:
                break
        assert got, "retained will never appeared"
        assert (got[0].payload, got[0].retain) == (b"offline", True)


def test_v5_will_properties_pass_through(broker):
    topic = unique("will/props")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, 5)
        will = {"topic": topic, "payload": b"{}", "qos": 1,
                "props": {"content_type": "application/json", "user_property": [("why", "died")],
                          "response_topic": "reply/here", "correlation_data": b"\x01\x02"}}
        assert client.connect(unique("c"), will=will).reason_code == 0
        client.close()
        msg = watcher.wait_message()
        assert msg.properties.ContentType == "application/json"
        assert msg.properties.UserProperty == [("why", "died")]
        assert msg.properties.ResponseTopic == "reply/here"
        assert msg.properties.CorrelationData == b"\x01\x02"


def test_v5_will_delay_interval(broker):
    """The will arrives after the delay, not before."""
    topic = unique("will/delay")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, 5)
        will = {"topic": topic, "payload": b"late", "qos": 1, "props": {"will_delay_interval": 3}}
        ack = client.connect(unique("c"), clean=True, will=will,
                             props={"session_expiry_interval": 60})
        assert ack.reason_code == 0
        closed_at = time.monotonic()
        client.close()
        watcher.assert_no_message(2.0)
        msg = watcher.wait_message(timeout=10)
        assert msg.payload == b"late"
        assert time.monotonic() - closed_at >= 2.5


def test_v5_will_not_sent_when_client_reconnects_within_delay(broker):
    topic = unique("will/cancel")
    client_id = unique("c")
    will = {"topic": topic, "payload": b"never", "qos": 1, "props": {"will_delay_interval": 3}}
    with will_watcher(broker, topic) as watcher:
        first = raw(broker, 5)
        assert first.connect(client_id, will=will, props={"session_expiry_interval": 60}).reason_code == 0
        first.close()
        time.sleep(0.5)  # offline for a moment, well inside the delay
        second = raw(broker, 5)
        ack = second.connect(client_id, clean=False, props={"session_expiry_interval": 60})
        assert ack.reason_code == 0 and ack.session_present
        watcher.assert_no_message(4.5)  # past the delay: still no will
        second.disconnect()
        watcher.assert_no_message(0.5)


def test_v5_will_sent_when_session_expires_before_delay(broker):
    """Will delay 30 s but session expiry 1 s: the will goes out when the session ends."""
    topic = unique("will/expiry")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, 5)
        will = {"topic": topic, "payload": b"session over", "props": {"will_delay_interval": 30}}
        assert client.connect(unique("c"), will=will, props={"session_expiry_interval": 1}).reason_code == 0
        client.close()
        assert watcher.wait_message(timeout=10).payload == b"session over"


@pytest.mark.parametrize("version", VERSIONS)
def test_will_fires_when_keepalive_expires(broker, version):
    """A client silent for 1.5x its keepalive is disconnected and its will published."""
    topic = unique("will/keepalive")
    with will_watcher(broker, topic) as watcher:
        client = raw(broker, version)
        assert client.connect(unique("silent"), keepalive=1,
                              will={"topic": topic, "payload": b"timed out"}).reason_code == 0
        start = time.monotonic()
        client.wait_closed(timeout=10)
        assert watcher.wait_message().payload == b"timed out"
        assert time.monotonic() - start >= 1.0

