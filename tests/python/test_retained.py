"""Retained messages: set, replace, clear, delivery on subscribe, v5 retain handling and RAP."""

import pytest

from helpers import MosquittoSub, connected, mosquitto_pub, unique

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_message_delivered_on_subscribe_with_retain_flag(broker, version):
    topic = unique("ret/on-sub")
    with connected(broker, version=version) as pub:
        pub.publish(topic, b"kept", qos=1, retain=True)
    with connected(broker, version=version) as sub:
        sub.subscribe(topic, qos=1)
        msg = sub.wait_message()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"kept", 1, True)
        sub.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_newer_retained_message_replaces_older(broker, version):
    topic = unique("ret/replace")
    with connected(broker, version=version) as pub:
        pub.publish(topic, b"old", qos=1, retain=True)
        pub.publish(topic, b"new", qos=1, retain=True)
    with connected(broker, version=version) as sub:
        sub.subscribe(topic, qos=1)
        assert sub.wait_message().payload == b"new"
        sub.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_retained_payload_clears(broker, version):
    base = unique("ret/clear")
    with connected(broker, version=version) as pub:
        pub.publish(f"{base}/cleared", b"gone soon", qos=1, retain=True)
        pub.publish(f"{base}/kept", b"stays", qos=1, retain=True)
        pub.publish(f"{base}/cleared", b"", qos=1, retain=True)
    with connected(broker, version=version) as sub:
        sub.subscribe(f"{base}/#", qos=1)
        msg = sub.wait_message()
        assert (msg.topic, msg.payload, msg.retain) == (f"{base}/kept", b"stays", True)
        sub.assert_no_message(1.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_wildcard_subscription_gets_every_matching_retained_message(broker, version):
    base = unique("ret/wild")
    topics = {f"{base}/a": b"1", f"{base}/b/c": b"2", f"{base}/d": b"3"}
    with connected(broker, version=version) as pub:
        for topic, payload in topics.items():
            pub.publish(topic, payload, qos=1, retain=True)
        pub.publish(f"{base}-other/x", b"no", qos=1, retain=True)
    with connected(broker, version=version) as sub:
        sub.subscribe(f"{base}/#", qos=1)
        got = {m.topic: m.payload for m in sub.wait_messages(3)}
        assert got == topics
        sub.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_live_delivery_of_retained_publish_clears_retain_flag(broker, version):
    """To an established (non-RAP) subscription a retained publish arrives with RETAIN=0."""
    topic = unique("ret/live")
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"live", qos=1, retain=True)
        msg = sub.wait_message()
        assert (msg.payload, msg.retain) == (b"live", False)


def test_retain_as_published_keeps_retain_flag(broker):
    topic = unique("ret/rap")
    with connected(broker) as rap, connected(broker) as plain, connected(broker) as pub:
        rap.subscribe(topic, qos=1, retain_as_published=True)
        plain.subscribe(topic, qos=1, retain_as_published=False)
        pub.publish(topic, b"r", qos=1, retain=True)
        pub.publish(topic, b"n", qos=1, retain=False)
        assert [(m.payload, m.retain) for m in rap.wait_messages(2)] == [(b"r", True), (b"n", False)]
        assert [(m.payload, m.retain) for m in plain.wait_messages(2)] == [(b"r", False), (b"n", False)]


def test_retain_handling_0_sends_on_every_subscribe(broker):
    topic = unique("ret/rh0")
    with connected(broker) as pub:
        pub.publish(topic, b"r", qos=1, retain=True)
    with connected(broker) as sub:
        sub.subscribe(topic, qos=1, retain_handling=0)
        assert sub.wait_message().retain
        sub.subscribe(topic, qos=1, retain_handling=0)
        msg = sub.wait_message()
        assert (msg.payload, msg.retain) == (b"r", True)


def test_retain_handling_1_sends_only_for_a_new_subscription(broker):
    topic = unique("ret/rh1")
    with connected(broker) as pub:
        pub.publish(topic, b"r", qos=1, retain=True)
    with connected(broker) as sub:
        sub.subscribe(topic, qos=1, retain_handling=1)
        msg = sub.wait_message()
        assert (msg.payload, msg.retain) == (b"r", True)
        sub.subscribe(topic, qos=1, retain_handling=1)  # already exists: nothing sent
        sub.assert_no_message(1.0)


def test_retain_handling_2_never_sends_retained(broker):
    base = unique("ret/rh2")
    with connected(broker) as pub:
        pub.publish(f"{base}/x", b"r", qos=1, retain=True)
    with connected(broker) as sub:
        sub.subscribe(f"{base}/x", qos=1, retain_handling=2)
        sub.subscribe(f"{base}/#", qos=1, retain_handling=0)  # control: this one gets it
        msg = sub.wait_message()
        assert (msg.topic, msg.payload, msg.retain) == (f"{base}/x", b"r", True)
        sub.assert_no_message(1.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_clients_retained_set_and_clear(broker, version):
    base = unique("ret/mosq")
    mosquitto_pub(broker, f"{base}/t", "retained-1", qos=1, retain=True, version=version)
    with MosquittoSub(broker, f"{base}/t", qos=1, version=version, count=1) as sub:
        assert sub.messages(1) == [(f"{base}/t", 1, True, "retained-1")]
        assert sub.wait_exit() == 0
    mosquitto_pub(broker, f"{base}/t", None, qos=1, retain=True, version=version)  # -n: clear
    mosquitto_pub(broker, f"{base}/control", "c", qos=1, retain=True, version=version)
    with MosquittoSub(broker, f"{base}/#", qos=1, version=version) as sub:
        assert sub.messages(1) == [(f"{base}/control", 1, True, "c")]
        assert sub.drain(1.0) == []


def test_retained_messages_survive_restart(make_broker):
    broker = make_broker()
    base = unique("ret/restart")
    with connected(broker) as pub:
        pub.publish(f"{base}/a", b"A", qos=1, retain=True)
        pub.publish(f"{base}/b", b"B", qos=0, retain=True)
        pub.publish(f"{base}/gone", b"x", qos=1, retain=True)
        pub.publish(f"{base}/gone", b"", qos=1, retain=True)
    broker.restart()
    with connected(broker) as sub:
        sub.subscribe(f"{base}/#", qos=1)
        got = {m.topic: (m.payload, m.retain) for m in sub.wait_messages(2)}
        assert got == {f"{base}/a": (b"A", True), f"{base}/b": (b"B", True)}
        sub.assert_no_message(0.5)
