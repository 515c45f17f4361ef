"""Kafka byte-rate quotas per connection (`kafka.max_produce_bytes_rate`,
`kafka.max_fetch_bytes_rate`, as Kafka's producer and consumer byte-rate quotas): nothing is
refused, but a connection past its rate is told a throttle time and muted for it, so that the
long-run rate is the configured one; librdkafka reports the throttle, and every record arrives
in order."""

import json
import os
import time

import pytest

from conftest import metric_sum
from helpers import unique
from kafka_helpers import consumer, kafka_broker, poll_records, produce_all, producer

pytestmark = pytest.mark.tidewater_only

RATE = 200_000  # bytes a second
RECORDS = [{"value": os.urandom(1000)} for _ in range(1000)]  # 1 MB, incompressible


def throttles(stats, into):
    for broker in json.loads(stats).get("brokers", {}).values():
        into.append(broker.get("throttle", {}).get("max", 0))


def test_a_producer_past_its_byte_rate_is_throttled_and_loses_nothing(make_broker):
    broker = kafka_broker(make_broker, config={"kafka": {"max_produce_bytes_rate": RATE}})
    topic = unique("quota-p").replace("/", "-")
    seen = []
    prod = producer(broker, **{"statistics.interval.ms": 200, "stats_cb": lambda s: throttles(s, seen),
                               "linger.ms": 5, "batch.size": 64 * 1024})
    started = time.monotonic()
    produce_all(prod, topic, RECORDS, timeout=60)
    elapsed = time.monotonic() - started
    # a second's worth bursts; the other 800 KB take 4 s at the rate
    assert elapsed >= 3.0, elapsed
    prod.poll(0.5)
    assert max(seen, default=0) > 0, "librdkafka was told a throttle time"
    cons = consumer(broker)
    cons.subscribe([topic])
    try:
        got = poll_records(cons, len(RECORDS), timeout=30)
    finally:
        cons.close()
    assert [r.value for r in got] == [r["value"] for r in RECORDS]
    assert metric_sum(broker.metrics(), "tidewater_limits_hit_total", limit="kafka_produce_bytes_rate") >= 1


def test_a_consumer_past_its_byte_rate_is_throttled_and_reads_everything_in_order(make_broker):
    broker = kafka_broker(make_broker, config={"kafka": {"max_fetch_bytes_rate": RATE}})
    topic = unique("quota-f").replace("/", "-")
    # small batches, so that the reads come in many fetches (a quota throttles after a fetch)
    produce_all(producer(broker, **{"batch.size": 16384}), topic, RECORDS, timeout=60)
    cons = consumer(broker, **{"max.partition.fetch.bytes": 100_000})
    cons.subscribe([topic])
    started = time.monotonic()
    try:
        got = poll_records(cons, len(RECORDS), timeout=40)
    finally:
        cons.close()
    elapsed = time.monotonic() - started
    assert [r.value for r in got] == [r["value"] for r in RECORDS]
    assert [r.offset for r in got] == list(range(len(RECORDS)))
    assert elapsed >= 3.0, elapsed
    assert metric_sum(broker.metrics(), "tidewater_limits_hit_total", limit="kafka_fetch_bytes_rate") >= 1
