"""MQTT into a bound stream, read with Kafka (confluent-kafka): key = MQTT topic, value = payload,
headers for qos/retain/client id/content type/v5 user properties, broker receive time, per-topic
order, one topic one partition; non-matching topics stay out; Kafka produce is refused."""

import subprocess
import time
from collections import defaultdict

import pytest

from helpers import Client, unique
from kafka_helpers import (TOPIC_AUTHORIZATION_FAILED, bootstrap, headers_dict, http_offsets,
                           kafka_broker, producer, read_partitions, topic_partitions, wait_for)

pytestmark = pytest.mark.tidewater_only

FILTER = "sensors/+/temp"


def mosquitto_pub_lines(broker, topic, lines, client_id, version=5, extra=()):
    """Publish each line as one QoS 1 message over one connection (mosquitto_pub -l)."""
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.mqtt_port),
           "-V", "mqttv5" if version == 5 else "mqttv311", "-q", "1", "-i", client_id,
           "-t", topic, "-l", *extra]
    out = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, f"{cmd} failed: {out.stderr}"


def wait_total(broker, stream, count, timeout=15):
    def total():
        return sum(end for _, end, _ in http_offsets(broker, stream).values())
    wait_for(lambda: total() >= count, timeout=timeout, message=f"{count} records in {stream}")
    time.sleep(0.3)  # anything beyond the expected count would have been appended by now
    assert total() == count


def test_mqtt_publishes_become_records(make_broker):
    stream = unique("temps")
    broker = kafka_broker(make_broker, streams=[
        {"name": stream, "kind": "bound", "filter": FILTER, "partitions": 3}])
    expected = defaultdict(list)  # topic -> [(payload, headers)] in publish order
    t0 = int(time.time() * 1000)

    v5_id, v3_id = unique("mp5"), unique("mp3")
    lines = [f"kitchen {i}" for i in range(5)]
    mosquitto_pub_lines(broker, "sensors/kitchen/temp", lines, v5_id, extra=[
        "-D", "publish", "user-property", "unit", "celsius",
        "-D", "publish", "user-property", "site", "home",
        "-D", "publish", "content-type", "text/plain"])
    for line in lines:
        expected["sensors/kitchen/temp"].append((line, {
            "mqtt.qos": "1", "mqtt.retain": "false", "mqtt.client_id": v5_id,
            "unit": "celsius", "site": "home", "mqtt.content_type": "text/plain"}))
    lines = [f"garage {i}" for i in range(5)]
    mosquitto_pub_lines(broker, "sensors/garage/temp", lines, v3_id, version=4)
    for line in lines:
        expected["sensors/garage/temp"].append((line, {
            "mqtt.qos": "1", "mqtt.retain": "false", "mqtt.client_id": v3_id}))

    with Client(broker, version=5) as c5, Client(broker, version=4) as c3:
        c5.connect()
        c3.connect()
        for i in range(10):  # interleaved topics, each in its own order
            for room in ("a", "b", "c"):
                topic = f"sensors/{room}/temp"
                payload = f"{room}-{i}"
                if room == "c":
                    c3.publish(topic, payload.encode(), qos=1)
                    expected[topic].append((payload, {"mqtt.qos": "1", "mqtt.retain": "false",
                                                      "mqtt.client_id": c3.client_id}))
                else:
                    c5.publish(topic, payload.encode(), qos=1,
                               properties={"UserProperty": [("room", room), ("i", str(i))]})
                    expected[topic].append((payload, {
                        "mqtt.qos": "1", "mqtt.retain": "false", "mqtt.client_id": c5.client_id,
                        "room": room, "i": str(i)}))
        # other QoS levels and a retained publish
        c5.publish("sensors/d/temp", b"q2", qos=2)
        c5.publish("sensors/d/temp", b"retained", qos=1, retain=True)
        c5.publish("sensors/d/temp", b"q0", qos=0)
        base = {"mqtt.client_id": c5.client_id}
        expected["sensors/d/temp"] += [
            ("q2", {**base, "mqtt.qos": "2", "mqtt.retain": "false"}),
            ("retained", {**base, "mqtt.qos": "1", "mqtt.retain": "true"}),
            ("q0", {**base, "mqtt.qos": "0", "mqtt.retain": "false"})]
        # topics the filter does not match
        for topic in ("sensors/kitchen/humidity", "sensors/kitchen/temp/raw", "sensors/temp",
                      "other/x/temp", "Sensors/a/temp"):
            c5.publish(topic, b"not for the stream", qos=1)
    total = sum(len(v) for v in expected.values())
    wait_total(broker, stream, total)
    t1 = int(time.time() * 1000)

    got = read_partitions(broker, stream, range(3))
    assert sum(len(recs) for recs in got.values()) == total
    by_topic = defaultdict(list)
    partition_of = defaultdict(set)
    for p, recs in got.items():
        assert [r.offset for r in recs] == list(range(len(recs)))
        for rec in recs:
            topic = rec.key.decode()
            by_topic[topic].append((rec.value.decode(), headers_dict(rec.headers)))
            partition_of[topic].add(p)
            assert t0 - 50 <= rec.timestamp <= t1 + 50, (rec.timestamp, t0, t1)
    assert set(by_topic) == set(expected), "records from topics the filter does not match"
    for topic, want in expected.items():
        assert by_topic[topic] == want, topic  # payloads, headers and per-topic order
        assert len(partition_of[topic]) == 1, (topic, partition_of[topic])


def test_kafka_produce_to_bound_stream_is_refused(make_broker):
    stream = unique("bound")
    broker = kafka_broker(make_broker, streams=[
        {"name": stream, "kind": "bound", "filter": FILTER, "partitions": 3}])
    prod = producer(broker, **{"message.timeout.ms": 10000, "retries": 0})
    errors = []
    prod.produce(stream, b"from kafka", partition=1,
                 on_delivery=lambda err, msg: errors.append(err))
    assert prod.flush(15) == 0
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() == TOPIC_AUTHORIZATION_FAILED, errors[0]
    assert all(end == 0 for _, end, _ in http_offsets(broker, stream).values())
    # the stream itself is still there and readable
    assert topic_partitions(broker, stream) == 3


def test_round_robin_and_client_id_strategies(make_broker):
    rr, cid = unique("rr"), unique("cid")
    broker = kafka_broker(make_broker, streams=[
        {"name": rr, "kind": "bound", "filter": "rr/#", "partitions": 3,
         "partition_strategy": "round_robin"},
        {"name": cid, "kind": "bound", "filter": "cid/#", "partitions": 4,
         "partition_strategy": "client_id"}])
    with Client(broker) as one, Client(broker) as two:
        one.connect()
        two.connect()
        for i in range(9):
            one.publish("rr/same", f"r{i}".encode(), qos=1)
        for i in range(8):
            one.publish(f"cid/t{i}", f"one-{i}".encode(), qos=1)
            two.publish(f"cid/u{i}", f"two-{i}".encode(), qos=1)
        ids = {one.client_id: "one", two.client_id: "two"}
    wait_total(broker, rr, 9)
    wait_total(broker, cid, 16)

    got = read_partitions(broker, rr, range(3))
    # one topic spread evenly over every partition
    assert sorted(len(recs) for recs in got.values()) == [3, 3, 3]
    assert all(r.key == b"rr/same" for recs in got.values() for r in recs)

    got = read_partitions(broker, cid, range(4))
    partitions = defaultdict(set)
    for p, recs in got.items():
        for rec in recs:
            who = ids[headers_dict(rec.headers)["mqtt.client_id"]]
            assert rec.value.decode().startswith(who)
            partitions[who].add(p)
    # every message of one client in one partition, in publish order
    assert {who: len(ps) for who, ps in partitions.items()} == {"one": 1, "two": 1}
    for who, ps in partitions.items():
        values = [r.value.decode() for r in got[next(iter(ps))] if r.value.decode().startswith(who)]
        assert values == [f"{who}-{i}" for i in range(8)]


def test_bound_stream_readable_by_kcat_while_mqtt_flows(make_broker):
    """A Kafka consumer that is already waiting (long-poll Fetch) gets MQTT publishes promptly."""
    stream = unique("live")
    broker = kafka_broker(make_broker, streams=[
        {"name": stream, "kind": "bound", "filter": "live/#", "partitions": 1}])
    cmd = ["kcat", "-b", bootstrap(broker), "-C", "-t", stream, "-p", "0", "-o", "beginning",
           "-c", "3", "-f", "%k=%s\n"]
    reader = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # kcat is connected and fetching at offset 0
        with Client(broker) as pub:
            pub.connect()
            for i in range(3):
                pub.publish(f"live/{i}", f"p{i}".encode(), qos=1)
        out, err = reader.communicate(timeout=10)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err
    assert out.splitlines() == ["live/0=p0", "live/1=p1", "live/2=p2"]
