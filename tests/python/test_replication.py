"""Streams of a 3-node cluster on loopback, through unmodified Kafka clients: a topic created
with replication factor 3 gets a raft group per partition on the three nodes; Metadata lists
the three brokers and each partition's leader, replicas and epoch; `kill -9` of a partition
leader during `acks=all` idempotent produces loses nothing acknowledged and writes nothing
twice; the killed node comes back, catches up and holds the same bytes as the others."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from test_cluster import agreed_controller, controller, three_nodes, wait_for

pytestmark = pytest.mark.tidewater_only


def bootstrap(nodes):
    return ",".join(f"127.0.0.1:{broker.kafka_port}" for broker in nodes)


def cluster_of_three(make_broker):
    nodes = three_nodes(make_broker, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    return nodes


def create_topic(nodes, name, partitions, replication_factor):
    admin = AdminClient({"bootstrap.servers": bootstrap(nodes)})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)],
                                  request_timeout=15)
    futures[name].result(timeout=20)
    return admin


def leaders(admin, name, partitions):
    """{partition: (leader, replicas)} once every partition has a leader."""
    def ready():
        topic = admin.list_topics(name, timeout=5).topics.get(name)
        if topic is None or len(topic.partitions) != partitions:
            return None
        if any(p.error is not None or p.leader < 0 for p in topic.partitions.values()):
            return None
        return {p.id: (p.leader, sorted(p.replicas)) for p in topic.partitions.values()}
    found, _ = wait_for(ready, timeout=15, step=0.2)
    return found


def read_all(nodes, name, partitions, expected, timeout=30):
    """Every record of `name` from offset 0: {(partition, offset): value}."""
    consumer = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": f"check-{time.monotonic()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
    got = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not expected.issubset(got.keys()):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                key = (message.partition(), message.offset())
                assert got.setdefault(key, message.value()) == message.value(), f"{key} changed"
    finally:
        consumer.close()
    return got


def stream_offsets(broker, name):
    import json
    status, body = broker.http_get(f"/api/v1/streams/{name}")
    if status != 200:
        return None  # a node that restarted serves the stream once it replayed the controller log
    return [(p["high_watermark"], p["log_end_offset"]) for p in json.loads(body)["partition_offsets"]]


def segment_bytes(broker, name, partition):
    directory = broker.data_dir / "logs" / f"{name}-{partition}"
    return b"".join(path.read_bytes() for path in sorted(directory.glob("*.log")))


def test_metadata_lists_the_cluster_and_each_partition_has_three_replicas(make_broker):
    nodes = cluster_of_three(make_broker)
    admin = create_topic(nodes, "orders", 3, 3)
    found = leaders(admin, "orders", 3)
    metadata = admin.list_topics(timeout=5)
    assert {b.id: b.port for b in metadata.brokers.values()} == {b.node_id: b.kafka_port for b in nodes}
    assert metadata.cluster_id == "tidewater-tidewater", "one cluster id on every node"
    for partition, (leader, replicas) in found.items():
        assert replicas == [1, 2, 3], f"partition {partition}"
        assert leader in replicas
    # a topic asking for more replicas than nodes is refused with the Kafka code for it
    futures = admin.create_topics([NewTopic("too-many", num_partitions=1, replication_factor=4)], request_timeout=10)
    with pytest.raises(Exception) as refused:
        futures["too-many"].result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
    # every node serves the topic: a produce to any bootstrap address reaches the leaders
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{nodes[2].kafka_port}", "acks": "all"})
    delivered = []
    for i in range(30):
        producer.produce("orders", value=b"m%d" % i, key=b"k%d" % i,
                         on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
    producer.flush(20)
    assert len(delivered) == 30 and all(err is None for err, _, _ in delivered), delivered
    expected = {(p, o) for _, p, o in delivered}
    got = read_all(nodes, "orders", 3, expected)
    assert expected.issubset(got.keys())


def test_killing_a_partition_leader_loses_nothing_acknowledged_and_writes_nothing_twice(make_broker):
    nodes = cluster_of_three(make_broker)
    admin = create_topic(nodes, "payments", 3, 3)
    found = leaders(admin, "payments", 3)
    victim = next(b for b in nodes if b.node_id == found[0][0])
    survivors = [b for b in nodes if b is not victim]
    acked, failed = {}, []

    def delivery(err, msg):
        if err is None:
            acked[(msg.partition(), msg.offset())] = msg.value()
        else:
            failed.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "message.timeout.ms": 30000})
    total = 4000
    for i in range(total):
        producer.produce("payments", value=b"p%05d" % i, key=b"k%d" % (i % 23), on_delivery=delivery)
        producer.poll(0)
        if i == total // 3:
            producer.flush(20)
            victim.kill()
        if i % 200 == 0:
            time.sleep(0.01)
    assert producer.flush(40) == 0, "every produce was answered"
    assert not failed, failed[:5]
    assert len(acked) == total
    values = list(acked.values())
    assert len(set(values)) == total, "the idempotent producer's retries were not written twice"
    got = read_all(survivors, "payments", 3, set(acked))
    missing = [key for key in acked if key not in got]
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {missing[:3]}"
    for key, value in acked.items():
        assert got[key] == value, f"{key} holds {got[key]!r}, acknowledged {value!r}"
    assert len(got) == total, "nothing but what was acknowledged"
    # the killed node comes back on its data and catches up; the replicas then hold the same bytes
    victim.start()
    reference = stream_offsets(survivors[0], "payments")
    wait_for(lambda: all(stream_offsets(b, "payments") == reference for b in nodes), timeout=20, step=0.2)
    for partition in range(3):
        held = {b.node_id: segment_bytes(b, "payments", partition) for b in nodes}
        assert len(set(held.values())) == 1, f"partition {partition}: replicas differ in size " \
            f"{ {n: len(v) for n, v in held.items()} }"
