"""confluent-kafka (librdkafka 2.16) against Tidewater: idempotent producing, consumer groups and
rebalances with synchronous commits, committed offsets across a restart, ListOffsets, and the
AdminClient."""

import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic, ResourceType

from helpers import unique
from kafka_helpers import (TOPIC_ALREADY_EXISTS, GroupTracker, admin_client, consumer,
                           create_stream, kafka_broker, poll_records, produce_all, producer,
                           read_partitions, topic_partitions, wait_for, watermarks)

pytestmark = pytest.mark.tidewater_only


def keyed(count, keys=16, start=0, prefix="v"):
    return [{"key": f"key-{i % keys}".encode(), "value": f"{prefix}-{i}".encode()}
            for i in range(start, start + count)]


def test_idempotent_producer_exactly_once_in_order(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("idem")
    create_stream(broker, topic, partitions=3)
    prod = producer(broker, **{"enable.idempotence": True, "acks": "all", "linger.ms": 2,
                               "batch.num.messages": 50})
    records = keyed(600, keys=20)
    delivered = produce_all(prod, topic, records)

    per_key_partition = defaultdict(set)
    for rec, (p, _) in zip(records, delivered):
        per_key_partition[rec["key"]].add(p)
    assert all(len(ps) == 1 for ps in per_key_partition.values()), per_key_partition

    got = read_partitions(broker, topic, range(3))
    values = Counter(r.value for recs in got.values() for r in recs)
    assert sum(values.values()) == len(records)
    assert set(values) == {r["value"] for r in records}
    assert max(values.values()) == 1, "a record was stored twice"
    for p, recs in got.items():
        # offsets from 0 without gaps, each record where its delivery report said
        assert [r.offset for r in recs] == list(range(len(recs)))
    where = {(r.partition, r.offset): r for recs in got.values() for r in recs}
    for rec, (p, o) in zip(records, delivered):
        assert where[(p, o)].value == rec["value"] and where[(p, o)].key == rec["key"]
    # per key, records are in the order they were sent
    for key in per_key_partition:
        seq = [int(r.value.split(b"-")[1]) for recs in got.values() for r in recs if r.key == key]
        assert seq == sorted(seq), f"{key}: {seq}"


def test_group_of_two_consumes_each_record_once(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("grp2")
    create_stream(broker, topic, partitions=4)
    group = GroupTracker(broker, topic)
    try:
        group.join("a")
        group.join("b")
        group.pump_until(lambda: group.stable(["a", "b"], 4), message="two stable members")
        sets = group.assignments()
        assert sorted(len(s) for s in sets.values()) == [2, 2], sets

        records = keyed(400)
        produce_all(producer(broker), topic, records)
        group.pump_until(lambda: len(group.distinct()) >= len(records), message="all records")
        group.pump_for(1.0)  # anything delivered twice would show up here
        assert len(group.deliveries) == len(records), "a record was delivered twice"
        assert {d[3] for d in group.deliveries} == {r["value"] for r in records}
        # each member read exactly its own partitions
        for name, p, _, _ in group.deliveries:
            assert p in sets[name]
        assert group.committed == {p: n for p, n in _ends(broker, topic, 4).items() if n}
    finally:
        group.close()


def _ends(broker, topic, partitions):
    return {p: watermarks(broker, topic, p)[1] for p in range(partitions)}


def _assert_none_lost_none_committed_twice(group, broker, topic, partitions):
    ends = _ends(broker, topic, partitions)
    want = {(p, o) for p, end in ends.items() for o in range(end)}
    missing = want - group.distinct()
    assert not missing, f"records never delivered: {sorted(missing)[:20]}"
    assert not group.violations, f"committed records delivered again: {group.violations[:20]}"
    # duplicates only for records whose commit failed across the rebalance
    dupes = sum(n - 1 for n in Counter((p, o) for _, p, o, _ in group.deliveries).values())
    assert dupes <= group.failed_commits, (dupes, group.failed_commits)


def test_third_consumer_joins_and_rebalance_loses_nothing(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("grp3")
    create_stream(broker, topic, partitions=4)
    group = GroupTracker(broker, topic)
    try:
        group.join("a")
        group.join("b")
        group.pump_until(lambda: group.stable(["a", "b"], 4), message="two stable members")
        prod = producer(broker)
        produce_all(prod, topic, keyed(300))
        # half processed, then a third member joins while the rest is being processed
        group.pump_until(lambda: len(group.distinct()) >= 150, message="half of batch 1")
        group.join("c")
        group.pump_until(lambda: group.stable(["a", "b", "c"], 4), timeout=30,
                         message="three stable members")
        assert sorted(len(s) for s in group.assignments().values()) == [1, 1, 2]
        before = len(group.deliveries)
        produce_all(prod, topic, keyed(300, start=300))
        group.pump_until(lambda: len(group.distinct()) >= 600, message="all 600 records")
        group.pump_for(1.0)
        _assert_none_lost_none_committed_twice(group, broker, topic, 4)
        after = {name for name, _, _, _ in group.deliveries[before:]}
        assert after == {"a", "b", "c"}, f"members that processed batch 2: {after}"
        assert group.committed == _ends(broker, topic, 4)
    finally:
        group.close()


def test_leaving_consumer_partitions_taken_over(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("leave")
    create_stream(broker, topic, partitions=4)
    # a long session timeout: the takeover below must come from the LeaveGroup, not a timeout
    group = GroupTracker(broker, topic, **{"session.timeout.ms": 45000,
                                           "max.poll.interval.ms": 45000})
    try:
        for name in ("a", "b", "c"):
            group.join(name)
        group.pump_until(lambda: group.stable(["a", "b", "c"], 4), timeout=30,
                         message="three stable members")
        prod = producer(broker)
        produce_all(prod, topic, keyed(200))
        group.pump_until(lambda: len(group.distinct()) >= 100, message="half of batch 1")
        gone = group.assignments()["b"]
        started = time.monotonic()
        group.leave("b")
        group.pump_until(lambda: group.stable(["a", "c"], 4), timeout=15,
                         message="a and c own every partition after b left")
        assert time.monotonic() - started < 15
        before = len(group.deliveries)
        produce_all(prod, topic, keyed(200, start=200))
        group.pump_until(lambda: len(group.distinct()) >= 400, message="all 400 records")
        group.pump_for(1.0)
        _assert_none_lost_none_committed_twice(group, broker, topic, 4)
        took_over = {p for name, p, _, _ in group.deliveries[before:] if p in gone}
        assert took_over == gone, (gone, took_over)
        assert all(name != "b" for name, _, _, _ in group.deliveries[before:])
    finally:
        group.close()


def test_committed_offsets_survive_restart(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("restart")
    create_stream(broker, topic, partitions=2)
    records = [{"value": f"r-{i}".encode(), "partition": i % 2} for i in range(20)]
    produce_all(producer(broker), topic, records)
    group = unique("g-restart")

    cons = consumer(broker, group)
    cons.subscribe([topic])
    got = poll_records(cons, 20)
    by_p = {p: sorted(r.offset for r in got if r.partition == p) for p in (0, 1)}
    assert by_p == {0: list(range(10)), 1: list(range(10))}
    cons.commit(offsets=[TopicPartition(topic, 0, 6), TopicPartition(topic, 1, 3)],
                asynchronous=False)
    committed = cons.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    assert [(tp.partition, tp.offset) for tp in committed] == [(0, 6), (1, 3)]
    # a partition the topic does not have, and a topic that does not exist, are refused by name
    for wrong in (TopicPartition(topic, 2, 1), TopicPartition(unique("nope"), 0, 1)):
        try:
            answered = cons.commit(offsets=[wrong], asynchronous=False)
            code = answered[0].error.code() if answered[0].error else KafkaError.NO_ERROR
        except KafkaException as refused:
            code = refused.args[0].code()
        assert code == KafkaError.UNKNOWN_TOPIC_OR_PART, f"{wrong}: {code}"
    committed = cons.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    assert [(tp.partition, tp.offset) for tp in committed] == [(0, 6), (1, 3)]
    cons.close()

    broker.restart()

    cons = consumer(broker, group, **{"auto.offset.reset": "latest"})
    try:
        committed = cons.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)],
                                   timeout=10)
        assert [(tp.partition, tp.offset) for tp in committed] == [(0, 6), (1, 3)]
        cons.subscribe([topic])
        got = poll_records(cons, 4 + 7)
        by_p = {p: [r.offset for r in got if r.partition == p] for p in (0, 1)}
        assert by_p == {0: list(range(6, 10)), 1: list(range(3, 10))}
        assert all(r.value == f"r-{2 * r.offset + r.partition}".encode() for r in got)
    finally:
        cons.close()


@pytest.mark.parametrize("one_batch", [False, True], ids=["batch-per-record", "one-batch"])
def test_list_offsets_earliest_latest_and_by_time(make_broker, one_batch):
    """Kafka answers a timestamp lookup with the first record whose timestamp is at least the
    one asked, even inside a batch (it looks into the batch, not only at its max timestamp)."""
    broker = kafka_broker(make_broker)
    topic = unique("lo")
    create_stream(broker, topic, partitions=2)
    cons = consumer(broker)
    try:
        assert cons.get_watermark_offsets(TopicPartition(topic, 0), timeout=10,
                                          cached=False) == (0, 0)
        base = int(time.time() * 1000) - 100_000
        # ten records one second apart (CreateTime)
        records = [{"value": f"t{i}".encode(), "partition": 0, "timestamp": base + i * 1000}
                   for i in range(10)]
        prod = producer(broker, **{"linger.ms": 200 if one_batch else 0})
        produce_all(prod, topic, records, flush_each=not one_batch)
        assert cons.get_watermark_offsets(TopicPartition(topic, 0), timeout=10,
                                          cached=False) == (0, 10)
        assert cons.get_watermark_offsets(TopicPartition(topic, 1), timeout=10,
                                          cached=False) == (0, 0)

        def lookup(ts):
            [tp] = cons.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert tp.error is None, tp.error
            return tp.offset

        asked = [base - 5000, base, base + 1, base + 3500, base + 9000, base + 9001]
        # after the last timestamp there is no such record: Kafka answers offset -1
        assert [lookup(ts) for ts in asked] == [0, 0, 1, 4, 9, -1]
        cons.assign([TopicPartition(topic, 0, lookup(base + 6500))])
        got = poll_records(cons, 1)
        assert (got[0].offset, got[0].value, got[0].timestamp) == (7, b"t7", base + 7000)
    finally:
        cons.close()


def test_admin_client(make_broker):
    broker = kafka_broker(make_broker)
    admin = admin_client(broker)
    topic = unique("adm")

    cluster = admin.describe_cluster().result(timeout=15)
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == \
        [(1, broker.host, broker.kafka_port)]
    assert cluster.controller.id == 1

    futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                                            config={"retention.ms": "3600000"})],
                                  operation_timeout=10)
    futures[topic].result(timeout=15)
    assert topic_partitions(broker, topic) == 3

    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    with pytest.raises(KafkaException) as err:
        futures[topic].result(timeout=15)
    assert err.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS == TOPIC_ALREADY_EXISTS

    # a replication factor a single node cannot give is refused
    bad = unique("adm-rf")
    futures = admin.create_topics([NewTopic(bad, num_partitions=1, replication_factor=3)])
    with pytest.raises(KafkaException) as err:
        futures[bad].result(timeout=15)
    assert err.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR

    admin.create_partitions([NewPartitions(topic, 5)])[topic].result(timeout=15)
    wait_for(lambda: topic_partitions(broker, topic) == 5, message="5 partitions")
    # fewer partitions than it has: INVALID_PARTITIONS
    with pytest.raises(KafkaException) as err:
        admin.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=15)
    assert err.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert topic_partitions(broker, topic) == 5
    produce_all(producer(broker), topic, [{"value": b"p4", "partition": 4}])

    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=15)
    assert configs["retention.ms"].value == "3600000"

    # a group with one active member shows up in list_groups and describe_consumer_groups
    group = unique("adm-g")
    cons = consumer(broker, group)
    try:
        cons.subscribe([topic])
        poll_records(cons, 1)
        listed = admin.list_consumer_groups().result(timeout=15)
        assert group in {g.group_id for g in listed.valid}, listed.valid
        desc = admin.describe_consumer_groups([group])[group].result(timeout=15)
        assert desc.group_id == group
        assert desc.state.name == "STABLE"
        assert desc.coordinator.id == 1
        assert len(desc.members) == 1
        parts = {tp.partition for tp in desc.members[0].assignment.topic_partitions}
        assert parts == set(range(5))
    finally:
        cons.close()

    admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=15)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, message="topic gone")
    # deleting it again: UNKNOWN_TOPIC_OR_PARTITION
    with pytest.raises(KafkaException) as err:
        admin.delete_topics([topic])[topic].result(timeout=15)
    assert err.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
