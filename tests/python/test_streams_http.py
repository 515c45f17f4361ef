"""The streams HTTP API (/api/v1/streams), config-declared streams, definitions across a restart,
and what Kafka clients see of a deleted stream."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from helpers import unique
from kafka_helpers import (UNKNOWN_TOPIC_OR_PARTITION, admin_client, consumer, create_stream, http,
                           http_offsets, kafka_broker, kafka_error_code, poll_records,
                           produce_all, producer, read_partitions, stream_info, topic_partitions,
                           wait_for)
from kafka_raw import RawKafka

pytestmark = pytest.mark.tidewater_only

DEFINITION_KEYS = ("name", "kind", "filter", "partitions", "retention_ms", "retention_bytes",
                   "partition_strategy")


def definition(info):
    return {k: info.get(k) for k in DEFINITION_KEYS}


def names(broker):
    status, body, text = http(broker, "GET", "/api/v1/streams")
    assert status == 200, text
    assert isinstance(body, list), text
    return {s["name"] for s in body}


def test_create_get_list_delete(make_broker):
    broker = kafka_broker(make_broker)
    free, bound = unique("hf"), unique("hb")

    status, body, text = http(broker, "POST", "/api/v1/streams", {
        "name": free, "kind": "free", "partitions": 2, "retention_ms": 60000})
    assert status == 201, text
    assert definition(body) == {"name": free, "kind": "free", "filter": None, "partitions": 2,
                                "retention_ms": 60000, "retention_bytes": None,
                                "partition_strategy": "topic"}
    assert body["partition_offsets"] == [
        {"partition": p, "log_start_offset": 0, "log_end_offset": 0, "high_watermark": 0}
        for p in (0, 1)]

    status, body, text = http(broker, "POST", "/api/v1/streams", {
        "name": bound, "kind": "bound", "filter": "h/+/x", "partitions": 3,
        "retention_bytes": 1048576})
    assert status == 201, text
    assert (body["kind"], body["filter"], body["partitions"], body["retention_bytes"]) == \
        ("bound", "h/+/x", 3, 1048576)
    assert len(body["partition_offsets"]) == 3

    # a second definition of the same name
    for kind_body in ({"name": free, "kind": "free"},
                      {"name": bound, "kind": "bound", "filter": "other/#"}):
        status, body, text = http(broker, "POST", "/api/v1/streams", kind_body)
        assert status == 409, text
        assert isinstance(body.get("error"), str) and body["error"], text

    # bad definitions: 400 with an error message, and nothing created
    bad = [
        {"name": "bad name", "kind": "free"},
        {"name": "", "kind": "free"},
        {"name": "x" * 250, "kind": "free"},
        {"name": "..", "kind": "free"},
        {"name": unique("nb"), "kind": "bound"},
        {"name": unique("nb"), "kind": "bound", "filter": "a/#/b"},
        {"name": unique("nb"), "kind": "bound", "filter": "$share/g/a"},
        {"name": unique("nb"), "kind": "free", "filter": "a/b"},
        {"name": unique("nb"), "kind": "free", "partitions": 0},
        {"name": unique("nb"), "kind": "free", "partitions": 10001},
        {"name": unique("nb"), "kind": "free", "retention_ms": -5},
        # a node alone: replicas need a cluster
        {"name": unique("nb"), "kind": "free", "replication_factor": 3},
        {"name": unique("nb"), "kind": "sideways"},
        {"name": unique("nb"), "kind": "free", "colour": "blue"},
        {"kind": "free"},
        b"{not json",
    ]
    for body in bad:
        status, parsed, text = http(broker, "POST", "/api/v1/streams", body)
        assert status == 400, f"{body!r}: {status} {text}"
        assert isinstance(parsed, dict) and isinstance(parsed.get("error"), str) \
            and parsed["error"], f"{body!r}: {text}"
    assert names(broker) == {free, bound}

    # GET one, GET unknown
    info = stream_info(broker, free)
    assert info["name"] == free and info["partitions"] == 2
    status, body, text = http(broker, "GET", f"/api/v1/streams/{unique('nope')}")
    assert status == 404, text
    assert isinstance(body.get("error"), str), text

    # Kafka sees both, and the offsets follow what is produced
    assert topic_partitions(broker, free) == 2
    assert topic_partitions(broker, bound) == 3
    produce_all(producer(broker), free, [{"value": b"v", "partition": 1}] * 5)
    assert http_offsets(broker, free) == {0: (0, 0, 0), 1: (0, 5, 5)}

    # DELETE
    status, _, text = http(broker, "DELETE", f"/api/v1/streams/{free}")
    assert status == 204 and text == "", (status, text)
    status, _, text = http(broker, "GET", f"/api/v1/streams/{free}")
    assert status == 404, text
    status, body, text = http(broker, "DELETE", f"/api/v1/streams/{free}")
    assert status == 404 and isinstance(body.get("error"), str), text
    assert names(broker) == {bound}

    # the name can be used again, and the new stream starts empty
    create_stream(broker, free, partitions=1)
    assert http_offsets(broker, free) == {0: (0, 0, 0)}
    assert read_partitions(broker, free, [0]) == {0: []}


def test_config_streams_and_definitions_survive_restart(make_broker):
    declared_bound, declared_free = unique("cb"), unique("cf")
    broker = kafka_broker(make_broker, kafka={"default_partitions": 2}, streams=[
        {"name": declared_bound, "kind": "bound", "filter": "cfg/#", "partitions": 4,
         "retention_ms": 86400000, "partition_strategy": "client_id"},
        {"name": declared_free, "kind": "free", "partitions": 1, "retention_bytes": 5000000}])
    # config-declared streams are there right after start
    assert {declared_bound, declared_free} <= names(broker)
    assert definition(stream_info(broker, declared_bound)) == {
        "name": declared_bound, "kind": "bound", "filter": "cfg/#", "partitions": 4,
        "retention_ms": 86400000, "retention_bytes": None, "partition_strategy": "client_id"}
    assert definition(stream_info(broker, declared_free))["retention_bytes"] == 5000000

    # streams made over HTTP, by Kafka CreateTopics, and by Metadata auto-creation
    by_http, by_admin, by_auto, deleted = (unique("sh"), unique("sa"), unique("su"),
                                           unique("sd"))
    create_stream(broker, by_http, partitions=3, retention_ms=3600000)
    create_stream(broker, deleted)
    admin = admin_client(broker)
    admin.create_topics([NewTopic(by_admin, num_partitions=5, replication_factor=1)])[
        by_admin].result(timeout=15)
    prod = producer(broker)
    produce_all(prod, by_auto, [{"value": b"auto"}])
    assert definition(stream_info(broker, by_auto))["partitions"] == 2
    assert stream_info(broker, by_auto)["kind"] == "free"
    produce_all(prod, by_http, [{"value": f"h{i}".encode(), "partition": i % 3}
                                for i in range(9)])
    status, _, _ = http(broker, "DELETE", f"/api/v1/streams/{deleted}")
    assert status == 204

    before = {name: definition(stream_info(broker, name))
              for name in (declared_bound, declared_free, by_http, by_admin, by_auto)}
    offsets_before = http_offsets(broker, by_http)

    broker.restart()

    assert names(broker) == set(before), "streams after the restart"
    for name, want in before.items():
        assert definition(stream_info(broker, name)) == want, name
    assert http_offsets(broker, by_http) == offsets_before
    got = read_partitions(broker, by_http, range(3))
    assert sorted(r.value for recs in got.values() for r in recs) == \
        sorted(f"h{i}".encode() for i in range(9))
    assert topic_partitions(broker, by_admin) == 5
    status, _, _ = http(broker, "GET", f"/api/v1/streams/{deleted}")
    assert status == 404


def test_deleted_stream_is_unknown_to_kafka_clients(make_broker):
    # auto_create_topics is on (the default): a consumer's Metadata request does not ask for
    # auto-creation, so the deleted stream must stay deleted
    broker = kafka_broker(make_broker)
    topic = unique("del")
    create_stream(broker, topic, partitions=2)
    produce_all(producer(broker), topic, [{"value": f"d{i}".encode(), "partition": i % 2}
                                          for i in range(6)])
    subscribed = consumer(broker)
    assigned = consumer(broker)
    try:
        subscribed.subscribe([topic])
        assert len(poll_records(subscribed, 6)) == 6
        status, _, _ = http(broker, "DELETE", f"/api/v1/streams/{topic}")
        assert status == 204

        # ListOffsets and Fetch for a partition of the deleted stream
        with RawKafka(broker) as raw:
            assert raw.list_offsets(topic, 0)[0] == UNKNOWN_TOPIC_OR_PARTITION
            assert raw.fetch(topic, 1, 0)[0] == UNKNOWN_TOPIC_OR_PARTITION
        # librdkafka finds no such partition in the metadata
        with pytest.raises(KafkaException) as err:
            assigned.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        assert kafka_error_code(err.value) in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                               KafkaError._UNKNOWN_PARTITION)

        # Metadata for it
        assert topic_partitions(broker, topic) == UNKNOWN_TOPIC_OR_PARTITION

        # the subscribed consumer is told the topic is gone
        deadline = time.monotonic() + 20
        seen = None
        while time.monotonic() < deadline and seen is None:
            msg = subscribed.poll(0.5)
            if msg is not None and msg.error() \
                    and msg.error().code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                seen = msg.error()
            elif msg is not None and not msg.error():
                raise AssertionError(f"record from a deleted stream: {msg.offset()}")
        assert seen is not None, "no UNKNOWN_TOPIC_OR_PART error for the subscribed consumer"
    finally:
        subscribed.close()
        assigned.close()
    # nothing recreated it
    status, _, text = http(broker, "GET", f"/api/v1/streams/{topic}")
    assert status == 404, text
    wait_for(lambda: topic not in names(broker), message="stream absent from the list")


@pytest.mark.parametrize("auto_create", [True, False])
def test_metadata_auto_creation_follows_config(make_broker, auto_create):
    broker = kafka_broker(make_broker, kafka={"auto_create_topics": auto_create,
                                              "default_partitions": 3})
    topic = unique("auto")
    # a producer's Metadata request allows auto-creation
    meta = producer(broker).list_topics(topic, timeout=10).topics[topic]
    status, body, text = http(broker, "GET", f"/api/v1/streams/{topic}")
    if auto_create:
        assert meta.error is None and len(meta.partitions) == 3, meta
        assert status == 200 and (body["kind"], body["partitions"]) == ("free", 3), text
    else:
        assert meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        assert status == 404, text
