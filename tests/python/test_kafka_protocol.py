"""The Kafka protocol on the wire, with a hand-written client: ApiVersions, the exact error codes
of Produce/Fetch/ListOffsets, CRC checking, batches stored and served as sent, acks=0, and the
Fetch long poll."""

import struct
import threading
import time

import pytest

from helpers import unique
from kafka_helpers import (CORRUPT_MESSAGE, OFFSET_OUT_OF_RANGE, TOPIC_AUTHORIZATION_FAILED,
                           UNKNOWN_TOPIC_OR_PARTITION, create_stream, http_offsets, kafka_broker,
                           read_partitions, wait_for)
from kafka_raw import RawKafka, record_batch

pytestmark = pytest.mark.tidewater_only

MESSAGE_TOO_LARGE = 10
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
UNKNOWN_LEADER_EPOCH = 75

# api key -> name, for every API Tidewater implements
APIS = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
        9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
        13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
        18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 22: "InitProducerId",
        23: "OffsetForLeaderEpoch", 32: "DescribeConfigs", 37: "CreatePartitions", 60: "DescribeCluster"}


def test_api_versions(make_broker):
    broker = kafka_broker(make_broker)
    with RawKafka(broker) as raw:
        versions = raw.api_versions()
    missing = {name for key, name in APIS.items() if key not in versions}
    assert not missing, f"ApiVersions does not list {sorted(missing)}"
    for key, (lo, hi) in versions.items():
        assert 0 <= lo <= hi, (key, lo, hi)
    # the versions this file speaks
    for key, version in ((0, 8), (1, 4), (2, 1), (18, 0), (23, 3)):
        lo, hi = versions[key]
        assert lo <= version <= hi, (APIS[key], lo, hi)


def test_crc_checked_and_batches_served_as_sent(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("crc")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw:
        error, _, message = raw.produce(topic, 0, record_batch([b"a", b"b"], corrupt=True))
        assert error == CORRUPT_MESSAGE, (error, message)
        assert raw.list_offsets(topic, 0) == (0, 0), "a corrupt batch was appended"

        first = record_batch([b"one", b"two"], keys=[b"k1", None])
        second = record_batch([b"three"], keys=[b"k3"])
        assert raw.produce(topic, 0, first)[:2] == (0, 0)
        assert raw.produce(topic, 0, second)[:2] == (0, 2)
        error, high, data = raw.fetch(topic, 0, 0)
        assert (error, high) == (0, 3)
    # the two batches come back byte for byte, with only the base offset and the partition
    # leader epoch (outside the CRC) rewritten
    batches = []
    while data:
        size = struct.unpack_from(">i", data, 8)[0]
        batches.append(data[:12 + size])
        data = data[12 + size:]
    assert len(batches) == 2, batches
    for batch, sent, base in zip(batches, (first, second), (0, 2)):
        assert struct.unpack_from(">q", batch)[0] == base
        assert batch[8:12] == sent[8:12] and batch[16:] == sent[16:]
    got = read_partitions(broker, topic, [0])[0]
    assert [(r.offset, r.key, r.value) for r in got] == [
        (0, b"k1", b"one"), (1, None, b"two"), (2, b"k3", b"three")]


def test_a_batch_that_lies_about_its_records_is_corrupt(make_broker):
    """Record count or last offset delta that disagree with the records (CRC valid) get
    CORRUPT_MESSAGE and nothing is stored; kafka-python could not read past such a batch."""
    broker = kafka_broker(make_broker)
    topic = unique("lies")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw:
        for lie in ({"record_count": 2}, {"record_count": 4}, {"last_offset_delta": 7}):
            error, _, message = raw.produce(topic, 0, record_batch([b"a", b"b", b"c"], **lie))
            assert error == CORRUPT_MESSAGE, (lie, error, message)
        assert raw.list_offsets(topic, 0) == (0, 0), "a lying batch was appended"
        assert raw.produce(topic, 0, record_batch([b"a", b"b", b"c"]))[:2] == (0, 0)


def test_produce_errors(make_broker):
    bound = unique("bound")
    broker = kafka_broker(make_broker, kafka={"max_message_bytes": 2048}, streams=[
        {"name": bound, "kind": "bound", "filter": "pe/#", "partitions": 1}])
    topic = unique("pe")
    create_stream(broker, topic, partitions=2)
    with RawKafka(broker) as raw:
        error, _, message = raw.produce(bound, 0, record_batch([b"x"]))
        assert error == TOPIC_AUTHORIZATION_FAILED
        assert message and bound in message, f"no useful error message: {message!r}"

        assert raw.produce(topic, 2, record_batch([b"x"]))[0] == UNKNOWN_TOPIC_OR_PARTITION
        assert raw.produce(unique("nosuch"), 0, record_batch([b"x"]))[0] == \
            UNKNOWN_TOPIC_OR_PARTITION

        assert raw.produce(topic, 0, record_batch([b"y" * 4000]))[0] == MESSAGE_TOO_LARGE
        assert raw.produce(topic, 0, record_batch([b"y" * 1000]))[:2] == (0, 0)
    assert http_offsets(broker, bound)[0] == (0, 0, 0)
    assert http_offsets(broker, topic) == {0: (0, 1, 1), 1: (0, 0, 0)}


def test_acks_zero_is_appended(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("a0")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw:
        for i in range(5):
            assert raw.produce(topic, 0, record_batch([f"n{i}".encode()]), acks=0) is None
        # the connection still works after requests that get no response
        wait_for(lambda: raw.list_offsets(topic, 0) == (0, 5), message="5 records")
        assert raw.produce(topic, 0, record_batch([b"acked"]), acks=1)[:2] == (0, 5)
    got = read_partitions(broker, topic, [0])[0]
    assert [r.value for r in got] == [b"n0", b"n1", b"n2", b"n3", b"n4", b"acked"]


def test_fetch_offsets_and_long_poll(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("lp")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw, RawKafka(broker) as writer:
        assert writer.produce(topic, 0, record_batch([b"r0", b"r1"]))[:2] == (0, 0)
        assert raw.list_offsets(topic, 0, -2) == (0, 0)
        assert raw.list_offsets(topic, 0, -1) == (0, 2)
        assert raw.fetch(topic, 0, 3)[0] == OFFSET_OUT_OF_RANGE
        assert raw.fetch(topic, 0, -5)[0] == OFFSET_OUT_OF_RANGE

        # at the end: nothing arrives, so the answer comes after max_wait_ms, empty
        started = time.monotonic()
        error, high, data = raw.fetch(topic, 0, 2, max_wait_ms=1500)
        waited = time.monotonic() - started
        assert (error, high, data or b"") == (0, 2, b"")
        assert 1.2 <= waited <= 5, waited

        # a record produced while a Fetch waits is returned at once
        result = {}

        def fetch():
            start = time.monotonic()
            result["answer"] = raw.fetch(topic, 0, 2, max_wait_ms=8000)
            result["waited"] = time.monotonic() - start

        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        time.sleep(0.5)
        assert writer.produce(topic, 0, record_batch([b"r2"]))[:2] == (0, 2)
        thread.join(timeout=10)
        assert "answer" in result, "the waiting Fetch never answered"
        error, high, data = result["answer"]
        assert (error, high) == (0, 3) and data and b"r2" in data
        assert result["waited"] < 4, f"the Fetch waited {result['waited']:.1f}s for new data"


def _batches(data: bytes):
    """(base offset, record count, batch bytes) of each RecordBatch in a Fetch's records."""
    found, at = [], 0
    while at + 12 <= len(data):
        base, length = struct.unpack_from(">qi", data, at)
        if at + 12 + length > len(data):
            break  # a partial batch at the end, as Kafka may send
        count = struct.unpack_from(">i", data, at + 57)[0]
        found.append((base, count, 12 + length))
        at += 12 + length
    return found


def test_a_fetch_answer_is_capped_by_fetch_max_bytes_whatever_the_client_asks(make_broker):
    """A client asking 2 GB gets at most kafka.fetch_max_bytes per Fetch (Kafka's fetch.max.bytes),
    so a connection that does not read holds one bounded response; a batch larger than the cap
    still comes whole, so the consumer always makes progress; reading on, every record comes,
    in order."""
    broker = kafka_broker(make_broker, kafka={"fetch_max_bytes": 64 << 10})
    topic = unique("cap")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw:
        for i in range(20):
            assert raw.produce(topic, 0, record_batch([b"%02d:" % i + b"v" * 10_000]))[:2] == (0, i)
        assert raw.produce(topic, 0, record_batch([b"20:" + b"w" * 200_000]))[:2] == (0, 20)
        error, high, data = raw.fetch(topic, 0, 0, max_bytes=2**31 - 1)
        assert (error, high) == (0, 21)
        first = _batches(data)
        assert 0 < len(data) <= 64 << 10 and 4 <= len(first) <= 6, (len(data), first)
        offset, seen = 0, []
        while offset < high:
            error, _, data = raw.fetch(topic, 0, offset, max_bytes=2**31 - 1)
            assert error == 0
            batches = _batches(data)
            assert batches, f"no progress at offset {offset}"
            assert len(data) <= 64 << 10 or len(batches) == 1, "past the cap only a lone large batch"
            seen += [base for base, _, _ in batches]
            offset = batches[-1][0] + batches[-1][1]
        assert seen == list(range(21))


def test_idempotent_sequence_checks(make_broker):
    """What a retry after a lost acknowledgement looks like on the wire: the same batch again is
    not stored twice and gets its first offset back; a gap in the sequence is refused."""
    broker = kafka_broker(make_broker)
    topic = unique("seq")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw:
        error, pid, epoch = raw.init_producer_id()
        assert error == 0 and pid >= 0 and epoch >= 0, (error, pid, epoch)

        def send(values, sequence):
            return raw.produce(topic, 0, record_batch(values, producer=(pid, epoch, sequence)))

        assert send([b"s0", b"s1"], 0)[:2] == (0, 0)
        assert send([b"s0", b"s1"], 0)[:2] == (0, 0)  # duplicate: acknowledged, not appended
        assert send([b"s2"], 2)[:2] == (0, 2)
        assert send([b"s9"], 9)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
        assert send([b"s3"], 3)[:2] == (0, 3)
        assert raw.list_offsets(topic, 0) == (0, 4)
        # another producer id has its own sequence
        error, other, other_epoch = raw.init_producer_id()
        assert error == 0 and other != pid
        assert raw.produce(topic, 0, record_batch([b"o0"], producer=(other, other_epoch, 0)))[:2] \
            == (0, 4)
    got = read_partitions(broker, topic, [0])[0]
    assert [r.value for r in got] == [b"s0", b"s1", b"s2", b"s3", b"o0"]


def test_offset_for_leader_epoch_on_a_single_node(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("epochs")
    create_stream(broker, topic, partitions=1)
    with RawKafka(broker) as raw:
        for i in range(3):
            assert raw.produce(topic, 0, record_batch([b"e%d" % i]))[0] == 0
        # a node alone leads in epoch 0, which ends at the log end
        assert raw.offset_for_leader_epoch(topic, 0, 0) == (0, 0, 3)
        assert raw.offset_for_leader_epoch(topic, 0, 0, current_leader_epoch=0) == (0, 0, 3)
        # an epoch above every one known: undefined epoch and offset
        assert raw.offset_for_leader_epoch(topic, 0, 7) == (0, -1, -1)
        # a client that believes in a later leader epoch is told the broker does not know it
        assert raw.offset_for_leader_epoch(topic, 0, 0, current_leader_epoch=4)[0] == UNKNOWN_LEADER_EPOCH
        assert raw.offset_for_leader_epoch(topic, 1, 0)[0] == UNKNOWN_TOPIC_OR_PARTITION
        assert raw.offset_for_leader_epoch(unique("nope"), 0, 0)[0] == UNKNOWN_TOPIC_OR_PARTITION


def test_an_idle_connection_is_closed_after_connections_max_idle_ms(make_broker):
    """kafka.connections_max_idle_ms (Kafka's connections.max.idle.ms): a connection that sends
    no request for that long is closed; one that keeps asking stays open."""
    broker = kafka_broker(make_broker, kafka={"connections_max_idle_ms": 1000})
    with RawKafka(broker) as idle, RawKafka(broker) as busy:
        assert 18 in idle.api_versions() and 18 in busy.api_versions()
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            time.sleep(0.3)
            assert 18 in busy.api_versions(), "a connection in use stays open"
        idle.sock.settimeout(5)
        assert idle.sock.recv(1) == b"", "the idle connection was closed"
