"""QoS 0/1/2 round trips over MQTT 3.1.1 and 5.0, with paho, mosquitto clients and raw packets."""

import pytest

import rawmqtt
from helpers import MosquittoSub, connected, mosquitto_pub, raw, unique

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("version", VERSIONS)
def test_paho_round_trip(broker, version, qos):
    topic = unique("qos/rt")
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        assert sub.subscribe(topic, qos=2) == [2]
        pub.publish(topic, b"hello \x00\xff", qos=qos)
        msg = sub.wait_message()
        assert msg.topic == topic
        assert msg.payload == b"hello \x00\xff"
        assert msg.qos == qos
        assert not msg.retain
        sub.assert_no_message(0.5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("sub_qos", [0, 1])
def test_delivery_qos_is_min_of_publish_and_subscription(broker, version, sub_qos):
    topic = unique("qos/min")
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        assert sub.subscribe(topic, qos=sub_qos) == [sub_qos]
        pub.publish(topic, b"x", qos=2)
        assert sub.wait_message().qos == sub_qos


@pytest.mark.parametrize("version", VERSIONS)
def test_qos1_single_publisher_order_is_kept(broker, version):
    topic = unique("qos/order")
    count = 200
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic, qos=1)
        infos = [pub.publish(topic, str(i).encode(), qos=1, wait=False) for i in range(count)]
        for info in infos:
            info.wait_for_publish(10)
        got = [int(m.payload) for m in sub.wait_messages(count, timeout=20)]
        assert got == list(range(count))


@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_each_message_exactly_once(broker, version):
    topic = unique("qos/once")
    count = 50
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic, qos=2)
        for i in range(count):
            pub.publish(topic, str(i).encode(), qos=2, wait=False)
        got = [int(m.payload) for m in sub.wait_messages(count, timeout=20)]
        assert sorted(got) == list(range(count))
        sub.assert_no_message(0.5)


@pytest.mark.parametrize("pub_version,sub_version", [(4, 5), (5, 4)], ids=["v311-to-v5", "v5-to-v311"])
def test_across_protocol_versions(broker, pub_version, sub_version):
    topic = unique("qos/cross")
    with connected(broker, version=sub_version) as sub, connected(broker, version=pub_version) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"across", qos=1)
        msg = sub.wait_message()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"across", 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_and_large_payloads(broker, version):
    topic = unique("qos/sizes")
    big = bytes(range(256)) * 1000  # 256 kB, below the default 1 MiB packet limit
    with connected(broker, version=version) as sub, connected(broker, version=version) as pub:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"", qos=1)
        pub.publish(topic, big, qos=1)
        first, second = sub.wait_messages(2)
        assert first.payload == b""
        assert second.payload == big


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_clients_round_trip(broker, version, qos):
    topic = unique("qos/mosq")
    with MosquittoSub(broker, topic, qos=2, version=version, count=3) as sub:
        for i in range(3):
            mosquitto_pub(broker, topic, f"m{i}", qos=qos, version=version)
        assert sub.messages(3) == [(topic, qos, False, f"m{i}") for i in range(3)]
        assert sub.wait_exit() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_server_to_client_handshake(broker, version):
    """The broker delivers QoS 2 as PUBLISH, waits for PUBREC, sends PUBREL, takes PUBCOMP."""
    topic = unique("qos/hs")
    with raw(broker, version) as sub, connected(broker, version=version) as pub:
        assert sub.connect(unique("raw")).reason_code == 0
        assert sub.subscribe((topic, 2)).reason_codes == [2]
        pub.publish(topic, b"two", qos=2)
        msg = sub.expect(rawmqtt.PUBLISH)
        assert (msg.topic, msg.payload, msg.qos, msg.dup) == (topic, b"two", 2, False)
        sub.send(rawmqtt.ack_packet(rawmqtt.PUBREC, msg.packet_id, version=version))
        rel = sub.expect(rawmqtt.PUBREL)
        assert rel.packet_id == msg.packet_id
        assert rel.flags == 0x02
        sub.send(rawmqtt.ack_packet(rawmqtt.PUBCOMP, msg.packet_id, version=version))
        assert sub.collect(0.5) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_duplicate_publish_from_client_is_delivered_once(broker, version):
    """A client resending a QoS 2 PUBLISH (DUP) before PUBREL must not cause a second delivery."""
    topic = unique("qos/dup2")
    with connected(broker, version=version) as sub, raw(broker, version) as pub:
        sub.subscribe(topic, qos=2)
        assert pub.connect(unique("raw")).reason_code == 0
        pub.publish(topic, b"once", qos=2, packet_id=7)
        assert pub.expect(rawmqtt.PUBREC).packet_id == 7
        pub.publish(topic, b"once", qos=2, packet_id=7, dup=True)
        assert pub.expect(rawmqtt.PUBREC).packet_id == 7
        pub.send(rawmqtt.ack_packet(rawmqtt.PUBREL, 7, version=version))
        assert pub.expect(rawmqtt.PUBCOMP).packet_id == 7
        assert sub.wait_message().payload == b"once"
        sub.assert_no_message(1.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_pingreq_gets_pingresp(broker, version):
    with raw(broker, version) as client:
        assert client.connect(unique("raw"), keepalive=30).reason_code == 0
        client.send(bytes([rawmqtt.PINGREQ << 4, 0]))
        assert client.recv(5).type == rawmqtt.PINGRESP
