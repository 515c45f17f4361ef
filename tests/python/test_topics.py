"""Topic matching: + and # wildcards, $-topics, unsubscribe, overlapping subscriptions."""

import pytest

import rawmqtt
from helpers import connected, raw, unique

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("pattern,matching,not_matching", [
    ("{b}/+/temp", ["{b}/kitchen/temp", "{b}//temp"], ["{b}/kitchen/hum", "{b}/a/b/temp", "{b}/temp"]),
    ("{b}/#", ["{b}", "{b}/x", "{b}/x/y/z"], ["{b}x", "other/{b}"]),
    ("{b}/+", ["{b}/x", "{b}/"], ["{b}", "{b}/x/y"]),
    ("{b}/+/+/end", ["{b}/a/b/end"], ["{b}/a/end", "{b}/a/b/c/end"]),
    ("{b}/a/#", ["{b}/a", "{b}/a/b"], ["{b}/ab", "{b}/b/a"]),
    ("+/{b}/#", ["x/{b}", "x/{b}/y"], ["{b}/x", "x/y/{b}"]),
], ids=["plus-middle", "hash-end", "plus-end", "two-plus", "hash-parent", "plus-first"])
def test_wildcard_matching(broker, version, pattern, matching, not_matching):
    base = unique("wild")
    topic_filter = pattern.format(b=base)
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic_filter, qos=1)
        for topic in not_matching + matching:
            pub.publish(topic.format(b=base), topic.format(b=base).encode(), qos=1)
        got = sorted(m.topic for m in sub.wait_messages(len(matching)))
        assert got == sorted(t.format(b=base) for t in matching)
        sub.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_dollar_topics_not_matched_by_leading_wildcards(broker, version):
    """'#' and '+/...' never match a topic starting with '$' (MQTT-4.7.2-1).

    A client publishes to a $-topic, then to an ordinary topic of the same shape; the wildcard
    subscribers get the ordinary one and nothing starting with '$'. (Whether the broker lets a
    client's $-topic through to an explicit '$...' subscriber is its choice: the spec says it
    SHOULD prevent that, so it is not asserted.)
    """
    leaf = unique("leaf")
    with connected(broker, version=version) as hash_sub, \
            connected(broker, version=version) as plus_sub, \
            connected(broker, version=version) as pub:
        hash_sub.subscribe("#", qos=1)
        plus_sub.subscribe(f"+/{leaf}", qos=1)
        pub.publish(f"$tw/{leaf}", b"dollar", qos=1)
        pub.publish(f"$SYS/{leaf}", b"sys", qos=1)
        pub.publish(f"plain/{leaf}", b"plain", qos=1)
        for sub in (hash_sub, plus_sub):
            got = [sub.wait_message()] + sub.drain(0.5)
            assert [(m.topic, m.payload) for m in got] == [(f"plain/{leaf}", b"plain")]


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_stops_delivery(broker, version):
    topic = unique("unsub")
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"before", qos=1)
        assert sub.wait_message().payload == b"before"
        sub.unsubscribe(topic)
        pub.publish(topic, b"after", qos=1)
        sub.assert_no_message(1.0)


def test_raw_unsubscribe_gets_unsuback(broker):
    topic = unique("unsub/raw")
    with raw(broker, 5) as client:
        client.connect(unique("u"))
        client.subscribe((topic, 1))
        body = b"\x00\x09" + rawmqtt.encode_props(None) + rawmqtt.mqtt_str(topic)
        client.send(rawmqtt.fixed(rawmqtt.UNSUBSCRIBE, 0x02, body))
        ack = client.expect(rawmqtt.UNSUBACK)
        assert (ack.packet_id, ack.reason_codes) == (9, [0x00])
        client.send(rawmqtt.fixed(rawmqtt.UNSUBSCRIBE, 0x02, b"\x00\x0a" + rawmqtt.encode_props(None)
                                  + rawmqtt.mqtt_str(topic)))
        assert client.expect(rawmqtt.UNSUBACK).reason_codes == [0x11]  # no subscription existed


@pytest.mark.parametrize("version", [
    pytest.param(4, id="v311", marks=pytest.mark.mosquitto_deviation(
        "2.0.11 sends one copy at the QoS of the first matching filter, not the maximum "
        "(MQTT-3.3.5-1)")),
    pytest.param(5, id="v5")])
def test_overlapping_subscriptions_deliver_at_least_once_at_highest_qos(broker, version):
    """Spec: overlapping filters of one client → one copy at the max QoS, or one per filter."""
    base = unique("overlap")
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(f"{base}/+", qos=0)
        sub.subscribe(f"{base}/#", qos=1)
        pub.publish(f"{base}/x", b"o", qos=1)
        got = [sub.wait_message()] + sub.drain(0.7)
        assert 1 <= len(got) <= 2
        assert max(m.qos for m in got) == 1
        assert all(m.payload == b"o" for m in got)


@pytest.mark.parametrize("version", VERSIONS)
def test_resubscribe_replaces_qos_without_duplicate_subscription(broker, version):
    topic = unique("resub")
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic, qos=0)
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"once", qos=1)
        msg = sub.wait_message()
        assert (msg.payload, msg.qos) == (b"once", 1)
        sub.assert_no_message(0.5)
