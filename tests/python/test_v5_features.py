"""MQTT 5 features: no-local, subscription identifiers, properties pass-through, message expiry,
topic aliases both ways, assigned client identifiers (and the 3.1.1 empty-id rule)."""

import time

import pytest

import rawmqtt
from helpers import Client, connected, raw, unique


def test_no_local_suppresses_own_messages(broker):
    topic = unique("v5/nolocal")
    with connected(broker) as me, connected(broker) as other:
        me.subscribe(topic, qos=1, no_local=True)
        me.publish(topic, b"mine", qos=1)
        other.publish(topic, b"theirs", qos=1)
        msg = me.wait_message()
        assert msg.payload == b"theirs"
        me.assert_no_message(0.5)


def test_without_no_local_own_messages_come_back(broker):
    topic = unique("v5/local")
    with connected(broker) as me:
        me.subscribe(topic, qos=1, no_local=False)
        me.publish(topic, b"mine", qos=1)
        assert me.wait_message().payload == b"mine"


def test_subscription_identifiers_returned_in_publishes(broker):
    base = unique("v5/subid")
    with connected(broker) as sub, connected(broker) as pub:
        sub.subscribe(f"{base}/a", qos=1, sub_id=7)
        sub.subscribe(f"{base}/b/+", qos=1, sub_id=300)  # needs two bytes as a varint
        sub.subscribe(f"{base}/c", qos=1)  # no identifier
        pub.publish(f"{base}/a", b"a", qos=1)
        pub.publish(f"{base}/b/x", b"b", qos=1)
        pub.publish(f"{base}/c", b"c", qos=1)
        got = {m.payload: getattr(m.properties, "SubscriptionIdentifier", None)
               for m in sub.wait_messages(3)}
        assert got == {b"a": [7], b"b": [300], b"c": None}


def test_overlapping_subscription_identifiers_all_reported(broker):
    base = unique("v5/subid2")
    with connected(broker) as sub, connected(broker) as pub:
        sub.subscribe(f"{base}/+", qos=1, sub_id=11)
        sub.subscribe(f"{base}/#", qos=1, sub_id=12)
        pub.publish(f"{base}/x", b"x", qos=1)
        copies = [sub.wait_message()] + sub.drain(0.7)
        ids = sorted(i for m in copies for i in getattr(m.properties, "SubscriptionIdentifier", []))
        assert ids == [11, 12]


def test_retained_message_carries_subscription_identifier(broker):
    topic = unique("v5/subid-ret")
    with connected(broker) as pub:
        pub.publish(topic, b"r", qos=1, retain=True)
    with connected(broker) as sub:
        sub.subscribe(topic, qos=1, sub_id=42)
        msg = sub.wait_message()
        assert msg.retain and msg.properties.SubscriptionIdentifier == [42]


def test_publish_properties_pass_through(broker):
    topic = unique("v5/props")
    properties = {"UserProperty": [("k1", "v1"), ("k1", "v2"), ("région", "東京")],
                  "ContentType": "application/json", "ResponseTopic": "reply/to/me",
                  "CorrelationData": b"\x00corr\xff", "PayloadFormatIndicator": 1}
    with connected(broker) as sub, connected(broker) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b'{"a":1}', qos=1, properties=properties)
        msg = sub.wait_message()
        assert msg.payload == b'{"a":1}'
        assert msg.properties.UserProperty == [("k1", "v1"), ("k1", "v2"), ("région", "東京")]
        assert msg.properties.ContentType == "application/json"
        assert msg.properties.ResponseTopic == "reply/to/me"
        assert msg.properties.CorrelationData == b"\x00corr\xff"
        assert msg.properties.PayloadFormatIndicator == 1


def test_retained_message_keeps_its_properties(broker):
    topic = unique("v5/props-ret")
    with connected(broker) as pub:
        pub.publish(topic, b"r", qos=1, retain=True,
                    properties={"UserProperty": [("a", "b")], "ContentType": "text/plain"})
    with connected(broker) as sub:
        sub.subscribe(topic, qos=1)
        msg = sub.wait_message()
        assert msg.properties.UserProperty == [("a", "b")]
        assert msg.properties.ContentType == "text/plain"


def test_request_response_round_trip(broker):
    """A responder answers on the request's response topic with its correlation data."""
    requests, replies = unique("v5/req"), unique("v5/reply")
    with connected(broker) as responder, connected(broker) as requester:
        responder.subscribe(requests, qos=1)
        requester.subscribe(replies, qos=1)
        requester.publish(requests, b"ping", qos=1,
                          properties={"ResponseTopic": replies, "CorrelationData": b"id-1"})
        request = responder.wait_message()
        responder.publish(request.properties.ResponseTopic, b"pong", qos=1,
                          properties={"CorrelationData": request.properties.CorrelationData})
        reply = requester.wait_message()
        assert (reply.topic, reply.payload, reply.properties.CorrelationData) == (replies, b"pong", b"id-1")


def test_expired_retained_message_not_delivered(broker):
    base = unique("v5/exp-ret")
    with connected(broker) as pub:
        pub.publish(f"{base}/short", b"expires", qos=1, retain=True,
                    properties={"MessageExpiryInterval": 1})
        pub.publish(f"{base}/long", b"stays", qos=1, retain=True,
                    properties={"MessageExpiryInterval": 600})
    time.sleep(2.2)  # the expiry is the thing under test: let 1 s pass, with margin
    with connected(broker) as sub:
        sub.subscribe(f"{base}/#", qos=1)
        msg = sub.wait_message()
        assert (msg.topic, msg.payload) == (f"{base}/long", b"stays")
        assert 0 < msg.properties.MessageExpiryInterval <= 598
        sub.assert_no_message(1.0)


@pytest.mark.parametrize("version", [pytest.param(4, id="v311-subscriber"), pytest.param(5, id="v5-subscriber")])
def test_expired_queued_message_not_delivered(broker, version):
    client_id, topic = unique("exp"), unique("v5/exp-queue")
    expiry = 300 if version == 5 else None
    sub = Client(broker, client_id=client_id, version=version, clean=False, session_expiry=expiry)
    sub.connect()
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    with connected(broker) as pub:
        pub.publish(topic, b"short", qos=1, properties={"MessageExpiryInterval": 1})
        pub.publish(topic, b"long", qos=1, properties={"MessageExpiryInterval": 600})
        pub.publish(topic, b"forever", qos=1)
    time.sleep(2.2)  # let the 1 s expiry pass
    with Client(broker, client_id=client_id, version=version, clean=False,
                session_expiry=expiry) as sub:
        assert sub.connect()[0], "session should be present"
        got = sub.wait_messages(2)
        assert [m.payload for m in got] == [b"long", b"forever"]
        if version == 5:
            assert 0 < got[0].properties.MessageExpiryInterval <= 598
        sub.assert_no_message(1.0)


def _server_topic_alias_max(connack) -> int:
    return connack.props.get("topic_alias_maximum", 0)


def test_client_to_server_topic_alias(broker):
    base = unique("v5/alias-in")
    with connected(broker) as sub, raw(broker, 5) as pub:
        sub.subscribe(f"{base}/#", qos=1)
        ack = pub.connect(unique("aliaser"))
        assert _server_topic_alias_max(ack) >= 2, f"broker advertises no topic aliases: {ack}"
        pub.publish_acked(f"{base}/one", b"1a", props={"topic_alias": 1})
        pub.publish_acked(f"{base}/two", b"2a", props={"topic_alias": 2})
        pub.publish_acked("", b"1b", props={"topic_alias": 1})
        pub.publish_acked("", b"2b", props={"topic_alias": 2})
        pub.publish_acked(f"{base}/three", b"1c", props={"topic_alias": 1})  # re-map alias 1
        pub.publish_acked("", b"1d", props={"topic_alias": 1})
        got = [(m.topic, m.payload) for m in sub.wait_messages(6)]
        assert got == [(f"{base}/one", b"1a"), (f"{base}/two", b"2a"), (f"{base}/one", b"1b"),
                       (f"{base}/two", b"2b"), (f"{base}/three", b"1c"), (f"{base}/three", b"1d")]


def test_topic_alias_above_maximum_is_a_protocol_error(broker):
    with raw(broker, 5) as pub:
        ack = pub.connect(unique("badalias"))
        too_big = _server_topic_alias_max(ack) + 1
        pub.publish("some/topic", b"x", qos=0, props={"topic_alias": too_big})
        packets = pub.wait_closed()
        assert [(p.type, p.reason_code) for p in packets] in ([], [(rawmqtt.DISCONNECT, 0x94)])


def test_unknown_topic_alias_with_empty_topic_is_a_protocol_error(broker):
    with raw(broker, 5) as pub:
        pub.connect(unique("noalias"))
        pub.publish("", b"x", qos=0, props={"topic_alias": 1})  # alias 1 never set
        packets = pub.wait_closed()
        assert [(p.type, p.reason_code) for p in packets] in ([], [(rawmqtt.DISCONNECT, 0x82)])


def _publish_alias_workload(broker, base):
    sent = []
    with connected(broker) as pub:
        for round_ in range(4):
            for leaf in ("alpha", "beta", "gamma"):
                topic = f"{base}/{leaf}"
                payload = f"{topic}#{round_}".encode()
                pub.publish(topic, payload, qos=1)
                sent.append((topic, payload))
    return sent


def test_server_to_client_topic_alias_resolves_correctly(broker):
    """With Topic Alias Maximum 2 set by the client, every message resolves to its own topic."""
    base = unique("v5/alias-out")
    with raw(broker, 5) as sub:
        sub.connect(unique("aliased"), props={"topic_alias_maximum": 2})
        sub.subscribe((f"{base}/#", 1))
        sent = _publish_alias_workload(broker, base)
        got = []
        for _ in sent:
            pkt = sub.expect(rawmqtt.PUBLISH)
            sub.ack(pkt)
            alias = pkt.props.get("topic_alias")
            assert alias is None or 1 <= alias <= 2, f"alias {alias} beyond the client's maximum"
            got.append((pkt.topic, pkt.payload))
        assert got == sent
        assert sub.collect(0.3) == []


@pytest.mark.tidewater_only
def test_server_uses_topic_aliases_when_client_allows(broker):
    """Tidewater sends repeated topics as an alias with an empty topic name (mosquitto never does)."""
    base = unique("v5/alias-used")
    with raw(broker, 5) as sub:
        sub.connect(unique("aliased"), props={"topic_alias_maximum": 4})
        sub.subscribe((f"{base}/#", 1))
        sent = _publish_alias_workload(broker, base)
        packets = []
        for _ in sent:
            pkt = sub.expect(rawmqtt.PUBLISH)
            sub.ack(pkt)
            packets.append(pkt)
        assert [(p.topic, p.payload) for p in packets] == sent
        raw_topics = [rawmqtt.read_str(p.body, 0)[0] for p in packets]
        assert any(t == b"" for t in raw_topics), "no publish used an alias in place of the topic"
        assert all(1 <= p.props["topic_alias"] <= 4 for p in packets if "topic_alias" in p.props)


def test_no_server_topic_alias_when_client_sets_no_maximum(broker):
    base = unique("v5/alias-none")
    with raw(broker, 5) as sub:
        sub.connect(unique("plain"))
        sub.subscribe((f"{base}/#", 1))
        sent = _publish_alias_workload(broker, base)
        for topic, payload in sent:
            pkt = sub.expect(rawmqtt.PUBLISH)
            sub.ack(pkt)
            assert "topic_alias" not in pkt.props
            assert (pkt.topic, pkt.payload) == (topic, payload)


def test_assigned_client_identifier_for_empty_client_id(broker):
    ids = []
    for _ in range(2):
        with raw(broker, 5) as client:
            ack = client.connect("", clean=True)
            assert ack.reason_code == 0
            assigned = ack.props.get("assigned_client_identifier")
            assert assigned, f"no Assigned Client Identifier in {ack}"
            ids.append(assigned)
            # the assigned id works as a normal session: subscribe and receive
            topic = unique("v5/assigned")
            client.subscribe((topic, 1))
            with connected(broker) as pub:
                pub.publish(topic, b"hi", qos=1)
            assert client.expect(rawmqtt.PUBLISH).payload == b"hi"
    assert ids[0] != ids[1]


def test_v311_empty_client_id_with_persistent_session_rejected(broker):
    with raw(broker, 4) as client:
        ack = client.connect("", clean=False)
        assert ack.reason_code == 0x02  # identifier rejected
        client.wait_closed()


def test_v311_empty_client_id_with_clean_session_accepted(broker):
    with raw(broker, 4) as client:
        ack = client.connect("", clean=True)
        assert (ack.reason_code, ack.session_present) == (0, False)
        client.send(bytes([rawmqtt.PINGREQ << 4, 0]))
        assert client.recv(5).type == rawmqtt.PINGRESP


def test_connack_advertises_capabilities(broker):
    with raw(broker, 5) as client:
        ack = client.connect(unique("caps"))
        assert ack.reason_code == 0
        assert ack.props.get("receive_maximum", 65535) >= 1
        assert ack.props.get("maximum_qos", 2) == 2
        assert ack.props.get("retain_available", 1) == 1
        assert ack.props.get("wildcard_subscription_available", 1) == 1
        assert ack.props.get("shared_subscription_available", 1) == 1
        assert ack.props.get("subscription_identifier_available", 1) == 1
