"""Shared helpers for the Kafka black-box tests: brokers with Kafka config, the streams HTTP API,
confluent-kafka producing/consuming with bounded waits, kcat, and header decoding.

Every wait is bounded; a helper that waits for something fails the test with what it saw instead.
"""

import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections import namedtuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from helpers import WAIT, unique

KAFKA_WAIT = 20.0  # bound on a Kafka round trip that must happen (client start-up included)
# librdkafka logs through Python logging (pytest shows them with a failing test only) rather
# than straight to stderr, where a client outliving its broker would print into other tests
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

# One consumed record, decoupled from confluent-kafka's Message (which cannot outlive its consumer).
Rec = namedtuple("Rec", "topic partition offset key value headers timestamp")

# Kafka error codes (KIP-wide, same in every client)
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_AUTHORIZATION_FAILED = 29
TOPIC_ALREADY_EXISTS = 36


def bootstrap(broker) -> str:
    """The bootstrap string for a Broker's Kafka listener."""
    return f"{broker.host}:{broker.kafka_port}"


def kafka_broker(make_broker, streams=(), kafka=None, storage=None, start=True, **kwargs):
    """A broker whose config carries [kafka], [storage] and [[streams]] (None values dropped)."""
    config = dict(kwargs.pop("config", {}))
    if kafka:
        config["kafka"] = dict(kafka)
    if storage:
        config["storage"] = dict(storage)
    if streams:
        config["streams"] = [{k: v for k, v in s.items() if v is not None} for s in streams]
    return make_broker(config=config, start=start, **kwargs)


def topic_name(prefix="s") -> str:
    """A unique, legal Kafka topic name."""
    return unique(prefix).replace("/", "-")


# ---------------------------------------------------------------------------------------------
# the streams HTTP API


def http(broker, method, path, body=None, timeout=5.0):
    """(status, parsed JSON or None, raw text) of one HTTP request to the broker."""
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["content-type"] = "application/json"
    req = urllib.request.Request(f"http://{broker.host}:{broker.http_port}{path}", data=data,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
    return status, parsed, text


def create_stream(broker, name, kind="free", partitions=1, **fields) -> dict:
    body = {"name": name, "kind": kind, "partitions": partitions, **fields}
    status, parsed, text = http(broker, "POST", "/api/v1/streams", body)
    assert status == 201, f"POST /api/v1/streams {body} answered {status}: {text}"
    return parsed


def stream_info(broker, name) -> dict:
    status, parsed, text = http(broker, "GET", f"/api/v1/streams/{name}")
    assert status == 200, f"GET /api/v1/streams/{name} answered {status}: {text}"
    return parsed


def http_offsets(broker, name) -> dict:
    """{partition: (log_start_offset, log_end_offset, high_watermark)} from the HTTP API."""
    return {p["partition"]: (p["log_start_offset"], p["log_end_offset"], p["high_watermark"])
            for p in stream_info(broker, name)["partition_offsets"]}


# ---------------------------------------------------------------------------------------------
# confluent-kafka


def producer(broker, **conf) -> Producer:
    base = {"bootstrap.servers": bootstrap(broker), "linger.ms": 5,
            "message.timeout.ms": 15000, "socket.timeout.ms": 10000}
    base.update(conf)
    return Producer(base, logger=LIBRDKAFKA_LOG)


def consumer(broker, group=None, **conf) -> Consumer:
    """A consumer; without `group` it gets a throw-away group id and is meant for assign()."""
    base = {"bootstrap.servers": bootstrap(broker), "group.id": group or unique("g"),
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
            "max.poll.interval.ms": 15000, "topic.metadata.refresh.interval.ms": 1000,
            "socket.timeout.ms": 10000}
    base.update(conf)
    return Consumer(base, logger=LIBRDKAFKA_LOG)


def admin_client(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap(broker)}, logger=LIBRDKAFKA_LOG)


def produce_all(prod, topic, records, timeout=KAFKA_WAIT, flush_each=False) -> list:
    """Produce `records` (dicts with value and optional key, headers, partition, timestamp) and
    wait for every delivery report; returns [(partition, offset)] in the order given."""
    results = [None] * len(records)

    def report(index):
        def on_delivery(err, msg):
            results[index] = (err, msg.partition(), msg.offset())
        return on_delivery

    for index, rec in enumerate(records):
        kwargs = {k: rec[k] for k in ("key", "headers", "partition", "timestamp") if k in rec}
        while True:
            try:
                prod.produce(topic, rec["value"], on_delivery=report(index), **kwargs)
                break
            except BufferError:
                prod.poll(0.1)
        if flush_each:
            prod.flush(timeout)
    remaining = prod.flush(timeout)
    assert remaining == 0, f"{remaining} records still undelivered after {timeout}s"
    errors = [(i, r[0]) for i, r in enumerate(results) if r is None or r[0] is not None]
    assert not errors, f"delivery failed for {len(errors)} records, first: {errors[:3]}"
    return [(r[1], r[2]) for r in results]


def to_rec(msg) -> Rec:
    return Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
               list(msg.headers() or []), msg.timestamp()[1])


def poll_records(cons, count, timeout=KAFKA_WAIT) -> list:
    """Poll until `count` records arrived (any error but end-of-partition fails the test)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{len(got)} of {count} records within {timeout}s: "
                                 f"{[(r.partition, r.offset, r.value) for r in got[:20]]}")
        msg = cons.poll(min(0.5, remaining))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        got.append(to_rec(msg))
    return got


def watermarks(broker, topic, partition, cons=None, timeout=10.0):
    """(low, high) from ListOffsets earliest/latest."""
    own = cons is None
    cons = cons or consumer(broker)
    try:
        return cons.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout,
                                          cached=False)
    finally:
        if own:
            cons.close()


def read_partitions(broker, topic, partitions, start=None, timeout=KAFKA_WAIT, **conf) -> dict:
    """Every record of each partition from `start` (default: earliest) to the high watermark
    that ListOffsets gave when the read began: {partition: [Rec]} in offset order."""
    cons = consumer(broker, **{"enable.partition.eof": True, **conf})
    try:
        ends = {}
        starts = {}
        for p in partitions:
            low, high = cons.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                   cached=False)
            ends[p] = high
            starts[p] = low if start is None else start
        got = {p: [] for p in partitions}
        todo = {p for p in partitions if starts[p] < ends[p]}
        if todo:
            cons.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        deadline = time.monotonic() + timeout
        while todo:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                counts = {p: len(v) for p, v in got.items()}
                raise AssertionError(f"partitions {sorted(todo)} of {topic} not read to {ends} "
                                     f"within {timeout}s; got {counts}")
            msg = cons.poll(min(0.5, remaining))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= ends.get(msg.partition(), 0):
                        todo.discard(msg.partition())
                    continue
                raise AssertionError(f"consumer error reading {topic}: {msg.error()}")
            rec = to_rec(msg)
            if rec.offset < ends[rec.partition]:
                got[rec.partition].append(rec)
            if rec.offset + 1 >= ends[rec.partition]:
                todo.discard(rec.partition)
        return got
    finally:
        cons.close()


def topic_partitions(broker, topic, timeout=10.0):
    """The partition count Metadata reports for `topic` (KafkaError code on a topic error)."""
    cons = consumer(broker, **{"allow.auto.create.topics": False})
    try:
        md = cons.list_topics(topic, timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None:
            return None
        if meta.error is not None:
            return meta.error.code()
        return len(meta.partitions)
    finally:
        cons.close()


def headers_dict(headers) -> dict:
    """Kafka headers [(name, bytes)] as {name: str}; a repeated name fails the test."""
    out = {}
    for name, value in headers or []:
        assert name not in out, f"header {name} repeated: {headers}"
        out[name] = None if value is None else value.decode()
    return out


def kafka_error_code(exc) -> int:
    """The Kafka error code inside a KafkaException or a KafkaError."""
    if isinstance(exc, KafkaException):
        exc = exc.args[0]
    return exc.code()


# ---------------------------------------------------------------------------------------------
# kcat


def kcat(broker, *args, stdin=None, timeout=30):
    cmd = ["kcat", "-b", bootstrap(broker), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout=WAIT, interval=0.1, message="condition"):
    """Poll `predicate` until truthy (its value is returned) or fail with the last value seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {value!r}")


# ---------------------------------------------------------------------------------------------
# consumer groups driven from one thread


class GroupTracker:
    """Members of one consumer group polled round robin from the test thread.

    Each member processes a record and then commits it synchronously. The tracker records every
    delivery and the group's committed position per partition, and flags a delivery below a
    position that was already committed (a committed record delivered again). A record whose
    commit failed (a rebalance in between) may legitimately be delivered again.
    """

    def __init__(self, broker, topic, group=None, **conf):
        self.broker = broker
        self.topic = topic
        self.group = group or unique("grp")
        self.conf = conf
        self.members = {}
        self.deliveries = []  # (member, partition, offset, value)
        self.committed = {}  # partition -> next offset to read, as committed
        self.violations = []
        self.failed_commits = 0

    def join(self, name):
        cons = consumer(self.broker, self.group, **self.conf)
        cons.subscribe([self.topic])
        self.members[name] = cons
        return cons

    def leave(self, name):
        self.members.pop(name).close()

    def close(self):
        for cons in self.members.values():
            try:
                cons.close()
            except Exception:  # noqa: BLE001 - cleanup
                pass
        self.members.clear()

    def assignments(self) -> dict:
        return {name: {tp.partition for tp in cons.assignment()}
                for name, cons in self.members.items()}

    def pump_once(self, poll_timeout=0.05):
        for name, cons in list(self.members.items()):
            msg = cons.poll(poll_timeout)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"member {name}: consumer error {msg.error()}")
            p, o = msg.partition(), msg.offset()
            if o < self.committed.get(p, 0):
                self.violations.append((name, p, o, self.committed[p]))
            self.deliveries.append((name, p, o, msg.value()))
            try:
                cons.commit(message=msg, asynchronous=False)
            except KafkaException:
                self.failed_commits += 1
            else:
                self.committed[p] = max(self.committed.get(p, 0), o + 1)

    def pump_until(self, predicate, timeout=KAFKA_WAIT, message="group condition"):
        deadline = time.monotonic() + timeout
        while True:
            self.pump_once()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message}; assignments "
                    f"{self.assignments()}, {len(self.distinct())} distinct records delivered")

    def pump_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump_once()

    def distinct(self) -> set:
        return {(p, o) for _, p, o, _ in self.deliveries}

    def stable(self, members, partitions) -> bool:
        """Every named member owns something and together they own each partition once."""
        sets = self.assignments()
        if set(sets) != set(members) or any(not sets[m] for m in members):
            return False
        owned = [p for s in sets.values() for p in s]
        return sorted(owned) == list(range(partitions))
