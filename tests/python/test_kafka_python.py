"""kafka-python 3.x (pure Python; idempotent producer by default) against Tidewater."""

import time
import warnings

import pytest

with warnings.catch_warnings():  # kafka-python 3.0 loads schemas with deprecated importlib calls
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from helpers import unique
from kafka_helpers import KAFKA_WAIT, bootstrap, create_stream, http_offsets, kafka_broker

pytestmark = [pytest.mark.tidewater_only, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def consume(cons, count, timeout=KAFKA_WAIT):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for records in cons.poll(timeout_ms=500).values():
            got.extend(records)
    assert len(got) == count, f"{len(got)} of {count} records within {timeout}s"
    return got


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_producer_consumer_round_trip_with_headers(make_broker, compression):
    broker = kafka_broker(make_broker)
    topic = unique("kp")
    create_stream(broker, topic, partitions=3)
    prod = KafkaProducer(bootstrap_servers=bootstrap(broker), acks="all", linger_ms=5,
                         compression_type=compression, request_timeout_ms=10000,
                         max_block_ms=15000)
    sent = []
    try:
        futures = []
        for i in range(90):
            key = f"dev-{i % 9}".encode()
            value = f"reading {i}".encode()
            headers = [("seq", str(i).encode()), ("source", b"kafka-python"),
                       ("empty", b""), ("bin", bytes([0, 255, i % 256]))]
            futures.append(prod.send(topic, key=key, value=value, headers=headers))
            sent.append((key, value, headers))
        prod.flush(timeout=15)
        meta = [f.get(timeout=15) for f in futures]
    finally:
        prod.close(timeout=10)
    # offsets per partition from 0 without gaps; one key, one partition
    for p in range(3):
        offs = sorted(m.offset for m in meta if m.partition == p)
        assert offs == list(range(len(offs)))
    key_parts = {}
    for (key, _, _), m in zip(sent, meta):
        assert key_parts.setdefault(key, m.partition) == m.partition
    assert sum(end for _, end, _ in http_offsets(broker, topic).values()) == len(sent)

    cons = KafkaConsumer(topic, bootstrap_servers=bootstrap(broker), group_id=unique("kpg"),
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         request_timeout_ms=15000)
    try:
        got = consume(cons, len(sent))
        # nothing more arrives
        assert not any(cons.poll(timeout_ms=500).values())
    finally:
        cons.close()
    where = {(m.partition, m.offset): s for s, m in zip(sent, meta)}
    for rec in got:
        key, value, headers = where[(rec.partition, rec.offset)]
        assert (rec.key, rec.value) == (key, value)
        assert list(map(tuple, rec.headers)) == headers
    # per key, the order they were sent in
    for key in key_parts:
        seq = [int(r.value.split()[1]) for r in sorted(got, key=lambda r: r.offset)
               if r.key == key]
        assert seq == sorted(seq)


def test_consumer_seek_and_offsets(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("kps")
    create_stream(broker, topic, partitions=1)
    prod = KafkaProducer(bootstrap_servers=bootstrap(broker), max_block_ms=15000)
    try:
        for i in range(10):
            prod.send(topic, value=f"m{i}".encode(), partition=0)
        prod.flush(timeout=15)
    finally:
        prod.close(timeout=10)
    tp = TopicPartition(topic, 0)
    cons = KafkaConsumer(bootstrap_servers=bootstrap(broker), enable_auto_commit=False,
                         request_timeout_ms=15000)
    try:
        cons.assign([tp])
        assert cons.beginning_offsets([tp], timeout_ms=10000) == {tp: 0}
        assert cons.end_offsets([tp], timeout_ms=10000) == {tp: 10}
        cons.seek(tp, 7)
        got = consume(cons, 3)
        assert [(r.offset, r.value) for r in got] == [(7, b"m7"), (8, b"m8"), (9, b"m9")]
    finally:
        cons.close()
