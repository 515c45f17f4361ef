"""Streams of a 3-node cluster on loopback, through unmodified Kafka clients: a topic created
with replication factor 3 gets a raft group per partition on the three nodes; Metadata lists
the three brokers and each partition's leader, replicas and epoch; `kill -9` of a partition
leader during `acks=all` idempotent produces loses nothing acknowledged and writes nothing
twice; the killed node comes back, catches up and holds the same bytes as the others.

MQTT devices connected to any node publish into a bound replicated stream: each publish
reaches the partition's leader over the data plane and is PUBACKed after commit, through the
leader's `kill -9` too. Any node takes admin requests (created over HTTP, or auto-created by a
Kafka producer, on a node that does not lead the controller)."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import connected
from kafka_helpers import create_stream
from test_cluster import agreed_controller, controller, three_nodes, wait_for

pytestmark = pytest.mark.tidewater_only


def bootstrap(nodes):
    return ",".join(f"{broker.host}:{broker.kafka_port}" for broker in nodes)


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


def read_all(nodes, name, partitions, expected, timeout=30, until=None):
    """Every record of `name` from offset 0: {(partition, offset): value}, read until the keys
    `expected` (or the records satisfying `until`) are there."""
    done = until or (lambda got: expected.issubset(got.keys()))
    consumer = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": f"check-{time.monotonic()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
    got = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(got):
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
    # leaders move to each partition's preferred replica (the first Metadata lists), which
    # placement spreads over the nodes
    def on_preferred():
        topic = admin.list_topics("orders", timeout=5).topics["orders"]
        return all(p.leader == p.replicas[0] for p in topic.partitions.values())
    wait_for(on_preferred, timeout=30, step=0.5)


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
    # OffsetForLeaderEpoch on the leader: the current epoch ends at the log end; an earlier epoch
    # asked for ends where a later one began, from the replicated epoch history
    import json
    from kafka_raw import RawKafka
    def settled():  # leadership back on the preferred replica, where it stays
        status, body = survivors[0].http_get("/api/v1/streams/payments")
        found = json.loads(body)["partition_offsets"][0] if status == 200 else None
        return found if found and found["leader"] == found["replicas"][0] else None
    partition, _ = wait_for(settled, timeout=30, step=0.3)
    leader = next(b for b in nodes if b.node_id == partition["leader"])
    epoch, log_end = partition["leader_epoch"], partition["log_end_offset"]
    with RawKafka(leader) as raw:
        answered = raw.offset_for_leader_epoch("payments", 0, epoch, current_leader_epoch=epoch)
        assert answered == (0, epoch, log_end), answered
        error, earlier, end = raw.offset_for_leader_epoch("payments", 0, epoch - 1)
        assert error == 0 and earlier < epoch and 0 < end <= log_end, (error, earlier, end)
        assert raw.offset_for_leader_epoch("payments", 0, epoch, current_leader_epoch=epoch - 1)[0] == 74


def test_mqtt_publishes_on_every_node_reach_the_leader_and_survive_its_kill(make_broker):
    nodes = cluster_of_three(make_broker)
    leader_of_controller = agreed_controller(nodes)["leader"]
    elsewhere = next(b for b in nodes if b.node_id != leader_of_controller)
    # created on a node that does not lead the controller: it forwards the command
    created = create_stream(elsewhere, "telemetry", kind="bound", filter="plant/#", partitions=1,
                            replication_factor=3)
    assert sorted(created["partition_offsets"][0]["replicas"]) == [1, 2, 3], created
    admin = AdminClient({"bootstrap.servers": bootstrap(nodes)})
    leader = leaders(admin, "telemetry", 1)[0][0]
    clients = {b.node_id: connected(b, client_id=f"device-{b.node_id}") for b in nodes}
    acked = set()

    def publish_round(on, first, count):
        pending = []
        for node_id in on:
            for i in range(first, first + count):
                payload = b"n%d-%04d" % (node_id, i)
                pending.append((payload, clients[node_id].publish(f"plant/n{node_id}", payload, qos=1, wait=False)))
        for payload, info in pending:
            info.wait_for_publish(30)
            assert info.is_published(), f"{payload!r}: no PUBACK"
            acked.add(payload)

    # before any fault: the leader's own and two forwarding nodes acknowledge after commit
    publish_round([b.node_id for b in nodes], 0, 150)
    victim = next(b for b in nodes if b.node_id == leader)
    survivors = [b for b in nodes if b is not victim]
    victim.kill()
    # after the kill the devices on the survivors go on: their publishes wait for the election
    publish_round([b.node_id for b in survivors], 150, 150)
    for client in clients.values():
        client.paho.disconnect()
    assert len(acked) == 3 * 150 + 2 * 150
    got = read_all(survivors, "telemetry", 1, set(), until=lambda got: acked <= set(got.values()))
    values = list(got.values())
    missing = acked - set(values)
    assert not missing, f"{len(missing)} PUBACKed messages missing, e.g. {sorted(missing)[:3]}"
    offsets = sorted(o for _, o in got)
    assert offsets == list(range(len(offsets))), "offsets without a gap"


def test_a_kafka_producer_auto_creates_a_replicated_topic_through_any_node(make_broker):
    nodes = cluster_of_three(make_broker)
    leader_of_controller = agreed_controller(nodes)["leader"]
    elsewhere = next(b for b in nodes if b.node_id != leader_of_controller)
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{elsewhere.kafka_port}", "acks": "all"})
    delivered = []
    for i in range(10):
        producer.produce("auto-made", value=b"a%d" % i,
                         on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
    assert producer.flush(30) == 0
    assert all(err is None for err, _, _ in delivered), delivered
    admin = AdminClient({"bootstrap.servers": bootstrap(nodes)})
    found = leaders(admin, "auto-made", len(admin.list_topics("auto-made", timeout=5).topics["auto-made"].partitions))
    assert all(replicas == [1, 2, 3] for _, replicas in found.values()), found


def committed_offsets(admin, group, topic, partitions):
    from confluent_kafka import ConsumerGroupTopicPartitions
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    result = admin.list_consumer_group_offsets([request], request_timeout=10)[group].result(timeout=15)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def test_a_consumer_group_keeps_its_committed_offsets_when_its_coordinator_is_killed(make_broker):
    nodes = cluster_of_three(make_broker)
    admin = create_topic(nodes, "jobs", 3, 3)
    leaders(admin, "jobs", 3)
    producer = Producer({"bootstrap.servers": bootstrap(nodes), "acks": "all"})
    for i in range(300):
        producer.produce("jobs", value=b"j%03d" % i, key=b"k%d" % i)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": "workers", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe(["jobs"])
    assert consume(consumer, 150, timeout=30) == 150
    # partitions the consumer has not read yet commit nothing (-1001)
    committed = {tp.partition: tp.offset for tp in consumer.commit(asynchronous=False) if tp.offset >= 0}
    consumer.close()
    assert sum(committed.values()) == 150, committed
    group = admin.describe_consumer_groups(["workers"], request_timeout=10)["workers"].result(timeout=15)
    victim = next(b for b in nodes if b.node_id == group.coordinator.id)
    survivors = [b for b in nodes if b is not victim]
    victim.kill()
    # the next leader of the group's offsets partition replays it: every committed offset is there
    admin = AdminClient({"bootstrap.servers": bootstrap(survivors)})
    found, _ = wait_for(lambda: _try(lambda: committed_offsets(admin, "workers", "jobs", 3)), timeout=30, step=0.5)
    assert {p: o for p, o in found.items() if o >= 0} == committed
    # a consumer of the group resumes where the group committed: the rest, once each
    consumer = Consumer({"bootstrap.servers": bootstrap(survivors), "group.id": "workers",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe(["jobs"])
    rest = {}
    deadline = time.monotonic() + 40
    while len(rest) < 150 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            rest[(message.partition(), message.offset())] = message.value()
    consumer.close()
    assert len(rest) == 150, f"{len(rest)} of the 150 records after the committed offsets"
    assert all(offset >= committed.get(partition, 0) for partition, offset in rest), "nothing below a commit"


def test_the_next_leader_of_an_offsets_partition_takes_over_its_groups_before_anyone_asks(make_broker):
    # as Kafka loads a partition's groups when it comes to lead it: the successor lists them, and
    # keeps rewriting their offsets within the log's retention, with no request for them
    nodes = cluster_of_three(make_broker)
    admin = create_topic(nodes, "jobs", 1, 3)
    leaders(admin, "jobs", 1)
    names = ["batch-%d" % i for i in range(12)]
    for number, name in enumerate(names):
        committer = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": name, "enable.auto.commit": False})
        done, _ = wait_for(lambda: _try(lambda: committer.commit(offsets=[TopicPartition("jobs", 0, number + 1)],
                                                                 asynchronous=False)), timeout=20, step=0.5)
        committer.close()
    described = admin.describe_consumer_groups(names, request_timeout=10)
    coordinators = {name: future.result(timeout=15).coordinator.id for name, future in described.items()}
    victim = max(nodes, key=lambda b: sum(1 for c in coordinators.values() if c == b.node_id))
    moved = sorted(name for name, c in coordinators.items() if c == victim.node_id)
    assert moved, coordinators
    survivors = [b for b in nodes if b is not victim]
    victim.kill()
    admin = AdminClient({"bootstrap.servers": bootstrap(survivors)})

    def listed():
        groups = _try(lambda: admin.list_consumer_groups(request_timeout=10).result(timeout=15))
        return groups is not None and set(moved) <= {g.group_id for g in groups.valid}
    wait_for(listed, timeout=30, step=0.5)
    for name in moved:
        assert committed_offsets(admin, name, "jobs", 1) == {0: names.index(name) + 1}, name


def consume(consumer, count, timeout):
    """Polls until `count` records arrived or `timeout` passed; how many arrived."""
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            seen += 1
    return seen


def _try(what):
    try:
        return what()
    except Exception:  # a coordinator still moving answers with a retriable error
        return None


def test_a_rolling_restart_under_load_loses_nothing_acknowledged(make_broker):
    import threading
    nodes = cluster_of_three(make_broker)
    admin = create_topic(nodes, "ledger", 3, 3)
    leaders(admin, "ledger", 3)
    create_stream(nodes[0], "meters", kind="bound", filter="meters/#", partitions=2, replication_factor=3)
    acked, failed, stop = {}, [], threading.Event()

    def delivery(err, msg):
        if err is None:
            acked[(msg.partition(), msg.offset())] = msg.value()
        else:
            failed.append(str(err))

    def produce():
        producer = Producer({"bootstrap.servers": bootstrap(nodes), "enable.idempotence": True, "acks": "all",
                             "linger.ms": 5, "message.timeout.ms": 60000})
        i = 0
        while not stop.is_set():
            producer.produce("ledger", value=b"l%06d" % i, key=b"k%d" % (i % 11), on_delivery=delivery)
            producer.poll(0.002)
            i += 1
        assert producer.flush(60) == 0

    mqtt_acked = set()

    def publish_through(on, tag, count=60):
        clients = [connected(b, client_id=f"meter-{tag}-{b.node_id}") for b in on]
        pending = []
        for client, broker in zip(clients, on):
            for i in range(count):
                payload = b"%s-n%d-%03d" % (tag.encode(), broker.node_id, i)
                pending.append((payload, client.publish(f"meters/n{broker.node_id}", payload, qos=1, wait=False)))
        for payload, info in pending:
            info.wait_for_publish(30)
            assert info.is_published(), f"{payload!r}: no PUBACK"
            mqtt_acked.add(payload)
        for client in clients:
            client.paho.disconnect()

    producing = threading.Thread(target=produce)
    producing.start()
    try:
        for round_, victim in enumerate(nodes):
            others = [b for b in nodes if b is not victim]
            publish_through(nodes, f"r{round_}a")
            assert victim.stop() == 0, "a graceful stop"
            publish_through(others, f"r{round_}b")  # two of three replicas hold a majority
            victim.start()
            # the node catches up before the next one goes: its log reaches what the others had
            # committed when it came back (the producer goes on meanwhile)
            reached = [hw for hw, _ in stream_offsets(others[0], "ledger")]

            def caught_up():
                offsets = stream_offsets(victim, "ledger")
                return offsets is not None and all(end >= hw for (_, end), hw in zip(offsets, reached))
            wait_for(caught_up, timeout=30, step=0.2)
    finally:
        stop.set()
        producing.join(90)
    assert not failed, failed[:5]
    assert len(acked) > 1000, f"only {len(acked)} records acknowledged under the restarts"
    got = read_all(nodes, "ledger", 3, set(acked))
    missing = [key for key in acked if got.get(key) != acked[key]]
    assert not missing, f"{len(missing)} acknowledged records missing or changed, e.g. {missing[:3]}"
    assert len(set(got.values())) == len(got), "no record twice (the producer is idempotent)"
    stored = read_all(nodes, "meters", 2, set(), until=lambda got: mqtt_acked <= set(got.values()))
    missing = mqtt_acked - set(stored.values())
    assert not missing, f"{len(missing)} PUBACKed messages missing, e.g. {sorted(missing)[:3]}"


def batches_on_disk(broker, name, partition):
    """{base offset: RecordBatch bytes} of a partition's segment files."""
    import struct
    data, batches, position = segment_bytes(broker, name, partition), {}, 0
    while position + 12 <= len(data):
        base_offset, length = struct.unpack(">qi", data[position:position + 12])
        end = position + 12 + length
        batches[base_offset] = data[position:end]
        position = end
    return batches


def disk_bytes(broker, name, partition):
    directory = broker.data_dir / "logs" / f"{name}-{partition}"
    return sum(path.stat().st_size for path in directory.glob("*.log"))


def snapshots_installed(broker):
    return sum(value for (name, _), value in broker.metrics().items()
               if name == "tidewater_raft_snapshots_installed_total")


def test_retention_frees_disk_on_every_replica_and_a_node_behind_restarts_from_the_leaders_snapshot(make_broker):
    limit, segment, value_size, count = 20_000, 16_384, 500, 300
    config = {"kafka": {"retention_check_ms": 200}, "storage": {"segment_bytes": segment}}
    nodes = three_nodes(make_broker, config=config, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    admin = AdminClient({"bootstrap.servers": bootstrap(nodes)})
    topic = NewTopic("rolling", num_partitions=1, replication_factor=3, config={"retention.bytes": str(limit)})
    admin.create_topics([topic], request_timeout=15)["rolling"].result(timeout=20)
    leader_id = leaders(admin, "rolling", 1)[0][0]
    # a follower is down while the others write and retention compacts the raft log past it
    victim = next(b for b in nodes if b.node_id != leader_id)
    survivors = [b for b in nodes if b is not victim]
    victim.kill()
    acked = {}

    def delivery(err, msg):
        assert err is None, err
        acked[msg.offset()] = msg.value()

    producer = Producer({"bootstrap.servers": bootstrap(survivors), "acks": "all", "enable.idempotence": True,
                         "linger.ms": 0})
    values = [b"%04d" % i + b"x" * (value_size - 4) for i in range(count)]
    for i, value in enumerate(values):
        producer.produce("rolling", value=value, partition=0, on_delivery=delivery)
        if i % 10 == 9:
            producer.flush(20)
    assert producer.flush(20) == 0 and len(acked) == count
    assert sorted(acked) == list(range(count)), "offsets 0.. in produce order"

    def offsets(broker):
        found = stream_offsets_full(broker, "rolling")
        return found and found[0]
    leader = next(b for b in survivors if b.node_id == leader_id)
    wait_for(lambda: offsets(leader)["log_start_offset"] > 0, timeout=15, step=0.2)
    time.sleep(1.0)  # several more retention runs: the result is stable
    for broker in survivors:
        found = offsets(broker)
        low, end = found["log_start_offset"], found["log_end_offset"]
        assert end == count, found
        # what is left fits in the limit, and no more was removed than a batch beyond it
        assert (end - low) * value_size <= limit, found
        assert (end - low) * (value_size + 100) >= limit - 10 * (value_size + 100), found
        # whole segments below the log start left the disk
        assert disk_bytes(broker, "rolling", 0) <= limit + 2 * segment, disk_bytes(broker, "rolling", 0)
    low = max(offsets(b)["log_start_offset"] for b in survivors)
    got = read_all(survivors, "rolling", 1, {(0, o) for o in range(low, count)})
    for offset in range(low, count):
        assert got[(0, offset)] == acked[offset] == values[offset], offset
    # the follower comes back: what it needs is compacted away, so the leader's snapshot restarts
    # its log at the leader's log start, and it takes the batches after it byte for byte
    victim.start()
    reference = offsets(leader)
    wait_for(lambda: offsets(victim) and offsets(victim)["high_watermark"] == count
             and offsets(victim)["log_end_offset"] == count, timeout=20, step=0.2)
    assert snapshots_installed(victim) >= 1
    caught_up = offsets(victim)
    assert 0 < caught_up["log_start_offset"] <= count, caught_up
    assert caught_up["log_start_offset"] >= reference["log_start_offset"] - limit // value_size, caught_up
    on_victim = batches_on_disk(victim, "rolling", 0)
    on_leader = batches_on_disk(leader, "rolling", 0)
    start = max(caught_up["log_start_offset"], offsets(leader)["log_start_offset"])
    common = {base: data for base, data in on_leader.items() if base >= start}
    assert common and {base: on_victim.get(base) for base in common} == common, "identical batches above the start"
    assert disk_bytes(victim, "rolling", 0) <= limit + 2 * segment
    # and the replicated log goes on: a new record is acknowledged and read at the next offset
    producer.produce("rolling", value=b"after", partition=0, on_delivery=delivery)
    assert producer.flush(20) == 0 and acked[count] == b"after"


def stream_offsets_full(broker, name):
    import json
    status, body = broker.http_get(f"/api/v1/streams/{name}")
    return json.loads(body)["partition_offsets"] if status == 200 else None


def test_offsets_of_a_group_in_use_outlive_the_offsets_retention_and_an_empty_groups_expire(make_broker):
    # a coordinator that takes over must load its partition before that replica's own retention
    # cuts the group's latest rewrite (written at most half the retention before): the offsets
    # log keeps twice the retention, which leaves it 6 s here; an expired offset is deleted with
    # a tombstone, so the successor's replay of that longer log does not bring it back
    retention = 4_000
    config = {"kafka": {"offsets_retention_ms": retention, "retention_check_ms": 200}}
    nodes = three_nodes(make_broker, config=config, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    admin = create_topic(nodes, "tasks", 1, 3)
    leaders(admin, "tasks", 1)
    producer = Producer({"bootstrap.servers": bootstrap(nodes), "acks": "all"})
    for i in range(10):
        producer.produce("tasks", value=b"t%d" % i, partition=0)
    assert producer.flush(20) == 0
    # "idle" commits 3 and has no members; "alive" commits 5 and keeps its member
    idle = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": "idle", "enable.auto.commit": False})
    committed, _ = wait_for(lambda: _try(lambda: idle.commit(offsets=[TopicPartition("tasks", 0, 3)],
                                                             asynchronous=False)), timeout=20, step=0.5)
    idle.close()
    alive = Consumer({"bootstrap.servers": bootstrap(nodes), "group.id": "alive", "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "session.timeout.ms": 15000, "heartbeat.interval.ms": 500})
    alive.subscribe(["tasks"])
    assert consume(alive, 5, timeout=20) == 5
    alive.commit(offsets=[TopicPartition("tasks", 0, 5)], asynchronous=False)
    # more than twice the retention passes, the member heartbeating all along
    until = time.monotonic() + 2.5 * retention / 1000
    while time.monotonic() < until:
        alive.poll(0.2)
    assert committed_offsets(admin, "alive", "tasks", 1) == {0: 5}, "a group in use keeps its offsets"
    assert committed_offsets(admin, "idle", "tasks", 1).get(0, -1) < 0, "an empty group's offsets expired"
    # the offsets log was cut by retention: what is left is what was written within it
    def retained():
        starts = [p["log_start_offset"] for b in nodes for p in stream_offsets_full(b, "__consumer_offsets") or []]
        return starts and max(starts) > 0
    wait_for(retained, timeout=10, step=0.2)
    # the coordinator of "alive" dies, its member still there: the successor replays the
    # retained log and still has 5 (had the member left, the group would have been empty for
    # the retention by now, counted from when it left, and its offsets would expire)
    group = admin.describe_consumer_groups(["alive"], request_timeout=10)["alive"].result(timeout=15)
    victim = next(b for b in nodes if b.node_id == group.coordinator.id)
    survivors = [b for b in nodes if b is not victim]
    victim.kill()
    admin = AdminClient({"bootstrap.servers": bootstrap(survivors)})
    # the member is not polled (it cannot join the successor): the successor gives it its
    # session timeout (15 s) before it counts the group as empty, as Kafka's keeps the members
    # it loads, so an ask that waited for the dead coordinator still finds the offsets
    found, _ = wait_for(lambda: _try(lambda: committed_offsets(admin, "alive", "tasks", 1)), timeout=30, step=0.5)
    assert found == {0: 5}
    assert committed_offsets(admin, "idle", "tasks", 1).get(0, -1) < 0
    alive.close()


def partition_sets(admin, name):
    topic = admin.list_topics(name, timeout=5).topics.get(name)
    if topic is None or any(p.error is not None or p.leader < 0 for p in topic.partitions.values()):
        return None
    return {p.id: (p.leader, sorted(p.replicas)) for p in topic.partitions.values()}


def unsettled(broker):
    """Registered nodes with how many replicas each holds, once every move settled."""
    import json
    status, body = broker.http_get("/api/v1/cluster")
    return json.loads(body)["controller"]["registered"] if status == 200 else None


def test_a_fourth_node_takes_its_share_of_replicas_and_a_decommissioned_node_gives_them_back(make_broker):
    nodes = cluster_of_three(make_broker)
    admin = create_topic(nodes, "fleet", 6, 3)
    leaders(admin, "fleet", 6)
    acked = {}

    def delivery(err, msg):
        assert err is None, err
        acked[(msg.partition(), msg.offset())] = msg.value()

    producer = Producer({"bootstrap.servers": bootstrap(nodes), "acks": "all", "enable.idempotence": True})
    for i in range(600):
        producer.produce("fleet", value=b"before-%04d" % i, key=b"k%d" % i, on_delivery=delivery)
    assert producer.flush(20) == 0
    # a fourth node joins: rendezvous placement gives it its share (about three in four
    # partitions of replication factor 3 over four nodes), as learners that catch up and become
    # voters, and the replica each move replaces removes its data
    fourth = make_broker(node_id=4, extra_args=["--seeds", f"127.0.0.1:{nodes[0].gossip_port}", "--voters", "1,2,3"])
    everyone = [*nodes, fourth]

    def moved_to_four():
        sets = _try(lambda: partition_sets(admin, "fleet"))
        if not sets or not any(4 in replicas for _, replicas in sets.values()):
            return None
        if any(len(replicas) != 3 for _, replicas in sets.values()):
            return None
        return sets if all(p["settled"] for p in partition_records(nodes[0], "fleet")) else None
    sets, _ = wait_for(moved_to_four, timeout=60, step=0.5)
    held_by_four = [p for p, (_, replicas) in sets.items() if 4 in replicas]
    assert 2 <= len(held_by_four) <= 6, sets
    # writes go on through the moves, and every acknowledged record is there once
    for i in range(600):
        producer.produce("fleet", value=b"after-%04d" % i, key=b"k%d" % i, on_delivery=delivery)
    assert producer.flush(20) == 0 and len(acked) == 1200
    got = read_all(everyone, "fleet", 6, set(acked))
    assert {key: got.get(key) for key in acked} == acked
    assert len(got) == 1200
    # each partition's data is on exactly its replicas, byte for byte
    def on_disk_where_placed():
        sets = partition_sets(admin, "fleet")
        for partition, (_, replicas) in sets.items():
            holders = [b for b in everyone if (b.data_dir / "logs" / f"fleet-{partition}").exists()]
            if sorted(b.node_id for b in holders) != replicas:
                return None
            if len({segment_bytes(b, "fleet", partition) for b in holders}) != 1:
                return None
        return True
    wait_for(on_disk_where_placed, timeout=30, step=0.5)
    # node 4 is decommissioned over HTTP: its replicas go back to the others
    import json
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{nodes[1].http_port}/api/v1/cluster/nodes/4/decommission",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202
    def emptied():
        registered = unsettled(nodes[0])
        four = next((n for n in registered or [] if n["id"] == 4), None)
        return four and four["decommissioned"] and four["replicas"] == 0 and all(
            p["settled"] for p in partition_records(nodes[0], "fleet"))
    wait_for(emptied, timeout=60, step=0.5)
    wait_for(on_disk_where_placed, timeout=30, step=0.5)
    assert not any((fourth.data_dir / "logs" / f"fleet-{p}").exists() for p in range(6))
    got = read_all(nodes, "fleet", 6, set(acked))
    assert {key: got.get(key) for key in acked} == acked
    # an unknown node is a 404
    request = urllib.request.Request(f"http://127.0.0.1:{nodes[1].http_port}/api/v1/cluster/nodes/9/decommission",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=15)
    assert refused.value.code == 404 and "9" in json.loads(refused.value.read())["error"]


def partition_records(broker, name):
    """The controller's record of each partition of `name`, from the stream's HTTP detail."""
    found = stream_offsets_full(broker, name) or []
    return [{"settled": p.get("settled", False), "replicas": p.get("replicas")} for p in found] or [{"settled": False}]


def test_a_topic_created_without_a_replication_factor_gets_the_configured_default(make_broker):
    nodes = three_nodes(make_broker, config={"kafka": {"default_replication_factor": 2}}, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    admin = AdminClient({"bootstrap.servers": bootstrap(nodes)})
    admin.create_topics([NewTopic("pairs", num_partitions=4)], request_timeout=15)["pairs"].result(timeout=20)
    found = leaders(admin, "pairs", 4)
    assert all(len(replicas) == 2 for _, replicas in found.values()), found
    # an explicit factor still wins
    create_topic(nodes, "triples", 1, 3)
    assert [len(replicas) for _, replicas in leaders(admin, "triples", 1).values()] == [3]


def test_topic_configs_partitions_and_replica_assignments_change_a_replicated_stream_in_place(make_broker):
    """Through nodes that do not lead the controller: IncrementalAlterConfigs changes a
    replicated stream's retention on every replica (the stream keeps its data and offsets,
    it is not re-created), CreatePartitions adds partitions with their own raft groups, and
    CreateTopics with replica assignments puts each partition on the brokers named (which
    placement then leaves there); a broker outside the cluster is INVALID_REPLICA_ASSIGNMENT."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType
    config = {"kafka": {"retention_check_ms": 200}}
    nodes = three_nodes(make_broker, config=config, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    admin = create_topic(nodes, "tuned", 1, 3)
    leaders(admin, "tuned", 1)
    acked = {}

    def delivery(err, msg):
        assert err is None, err
        acked[(msg.partition(), msg.offset())] = msg.value()

    producer = Producer({"bootstrap.servers": bootstrap(nodes), "acks": "all", "enable.idempotence": True,
                         "linger.ms": 0})
    value_size, count, limit = 500, 120, 10_000
    for i in range(count):
        producer.produce("tuned", value=b"%04d" % i + b"x" * (value_size - 4), partition=0, on_delivery=delivery)
        if i % 10 == 9:
            producer.flush(20)
    assert producer.flush(20) == 0 and len(acked) == count
    # the change goes through a node that does not lead the controller
    leader_of_controller = agreed_controller(nodes)
    other = next(b for b in nodes if b.node_id != leader_of_controller)
    one = AdminClient({"bootstrap.servers": f"127.0.0.1:{other.kafka_port}"})
    resource = ConfigResource(ResourceType.TOPIC, "tuned", incremental_configs=[
        ConfigEntry("retention.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)])
    one.incremental_alter_configs([resource])[resource].result(timeout=20)
    # min.insync.replicas: a majority of the three is what acks=all waits for; above it is refused
    floor = ConfigResource(ResourceType.TOPIC, "tuned", incremental_configs=[
        ConfigEntry("min.insync.replicas", "2", incremental_operation=AlterConfigOpType.SET)])
    one.incremental_alter_configs([floor])[floor].result(timeout=20)
    above = ConfigResource(ResourceType.TOPIC, "tuned", incremental_configs=[
        ConfigEntry("min.insync.replicas", "3", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(Exception) as refused:
        one.incremental_alter_configs([above])[above].result(timeout=20)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG, refused.value
    assert "min.insync.replicas" in refused.value.args[0].str()
    for broker in nodes:
        single = AdminClient({"bootstrap.servers": f"127.0.0.1:{broker.kafka_port}"})
        described = ConfigResource(ResourceType.TOPIC, "tuned")
        wait_for(lambda: single.describe_configs([described])[described].result(timeout=10)["retention.bytes"].value
                 == str(limit), timeout=10)

    def offsets(broker):
        found = stream_offsets_full(broker, "tuned")
        return found and found[0]
    # every replica applies the new limit to the log it has: same end, a start that moved
    wait_for(lambda: all(offsets(b) and offsets(b)["log_start_offset"] > 0 for b in nodes), timeout=20, step=0.2)
    for broker in nodes:
        found = offsets(broker)
        assert found["log_end_offset"] == count and (count - found["log_start_offset"]) * value_size <= limit, found
    low = max(offsets(b)["log_start_offset"] for b in nodes)
    got = read_all(nodes, "tuned", 1, {(0, o) for o in range(low, count)})
    assert all(got[(0, o)] == acked[(0, o)] for o in range(low, count))

    # two more partitions, each its own raft group on three replicas; partition 0 goes on
    one.create_partitions([NewPartitions("tuned", 3)])["tuned"].result(timeout=20)
    found = leaders(admin, "tuned", 3)
    assert all(replicas == [1, 2, 3] for _, replicas in found.values()), found
    # a new producer: the first one's metadata knows one partition
    producer = Producer({"bootstrap.servers": bootstrap(nodes), "acks": "all", "enable.idempotence": True})
    for partition in (0, 1, 2):
        producer.produce("tuned", value=b"new-%d" % partition, partition=partition, on_delivery=delivery)
    assert producer.flush(20) == 0
    assert acked[(0, count)] == b"new-0" and acked[(1, 0)] == b"new-1" and acked[(2, 0)] == b"new-2"
    got = read_all(nodes, "tuned", 3, {(0, count), (1, 0), (2, 0)})
    assert (got[(1, 0)], got[(2, 0)]) == (b"new-1", b"new-2")

    # an operator's assignment: partition 0 on nodes 2 and 3 (2 preferred), partition 1 on 3 and 1
    assigned = NewTopic("placed", num_partitions=2, replica_assignment=[[2, 3], [3, 1]])
    one.create_topics([assigned], request_timeout=15)["placed"].result(timeout=20)

    def placed():
        topic = admin.list_topics("placed", timeout=5).topics.get("placed")
        if topic is None or any(p.error is not None or p.leader < 0 for p in topic.partitions.values()):
            return None
        return {p.id: (p.leader, list(p.replicas)) for p in topic.partitions.values()}
    wait_for(lambda: placed() == {0: (2, [2, 3]), 1: (3, [3, 1])}, timeout=30, step=0.3)
    time.sleep(2.0)  # placement passes run: an assignment is not rebalanced
    assert placed() == {0: (2, [2, 3]), 1: (3, [3, 1])}
    placed_acks = []
    producer.produce("placed", value=b"here", partition=1,
                     on_delivery=lambda err, msg: placed_acks.append((err, msg.partition(), msg.offset())))
    assert producer.flush(20) == 0 and placed_acks == [(None, 1, 0)]
    refused = NewTopic("misplaced", num_partitions=1, replica_assignment=[[1, 9]])
    with pytest.raises(Exception) as error:
        one.create_topics([refused], request_timeout=15)["misplaced"].result(timeout=20)
    assert error.value.args[0].code() == KafkaError.INVALID_REPLICA_ASSIGNMENT, error.value
    assert "misplaced" not in admin.list_topics(timeout=5).topics


def test_the_isr_drops_a_follower_that_stops_and_takes_it_back_once_it_caught_up(make_broker):
    """Metadata's ISR is the leader's: a killed follower leaves it after
    kafka.replica_lag_time_max_ms on every node's answer, and returns once it caught up."""
    nodes = three_nodes(make_broker, config={"kafka": {"replica_lag_time_max_ms": 1500}}, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    admin = create_topic(nodes, "synced", 1, 3)
    leader_id = leaders(admin, "synced", 1)[0][0]

    def isr(broker):
        single = AdminClient({"bootstrap.servers": f"127.0.0.1:{broker.kafka_port}"})
        topic = single.list_topics("synced", timeout=5).topics.get("synced")
        partition = topic and topic.partitions.get(0)
        return partition and sorted(partition.isrs)  # None while a restarted node replays
    assert all(isr(b) == [1, 2, 3] for b in nodes)
    victim = next(b for b in nodes if b.node_id != leader_id)
    survivors = [b for b in nodes if b is not victim]
    victim.kill()
    producer = Producer({"bootstrap.servers": bootstrap(survivors), "acks": "all", "linger.ms": 0})
    others = sorted(b.node_id for b in survivors)

    def shrunk():
        producer.produce("synced", value=b"x", partition=0)
        producer.flush(5)
        return all(isr(b) == others for b in survivors)
    wait_for(shrunk, timeout=20, step=0.3)
    # acks=all goes on without it: a majority commits
    delivered = []
    producer.produce("synced", value=b"while-out", partition=0, on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(10) == 0 and delivered == [None]
    victim.start()
    wait_for(lambda: all(isr(b) == [1, 2, 3] for b in nodes), timeout=30, step=0.3)
