"""kcat (librdkafka 2.0) against Tidewater's Kafka listener: metadata, every compression codec
round trip on a free stream, and the refusal of a produce to a bound stream."""

import json

import pytest

from kafka_helpers import bootstrap, create_stream, http_offsets, kafka_broker, kcat, topic_name

pytestmark = pytest.mark.tidewater_only

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def test_metadata_lists_broker_and_stream(make_broker):
    bound = topic_name("bound")
    broker = kafka_broker(make_broker, streams=[
        {"name": bound, "kind": "bound", "filter": "kc/+/t", "partitions": 2}])
    free = topic_name("free")
    create_stream(broker, free, partitions=3)

    out = kcat(broker, "-L", "-J")
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert [(b["id"], b["name"]) for b in meta["brokers"]] == [(1, bootstrap(broker))]
    topics = {t["topic"]: t for t in meta["topics"]}
    assert free in topics and bound in topics, topics.keys()
    for name, count in ((free, 3), (bound, 2)):
        parts = topics[name]["partitions"]
        assert sorted(p["partition"] for p in parts) == list(range(count))
        for p in parts:
            assert p["leader"] == 1
            assert [r["id"] for r in p["replicas"]] == [1]
            assert [r["id"] for r in p["isrs"]] == [1]

    # and the human-readable form a user looks at
    out = kcat(broker, "-L", "-t", free)
    assert out.returncode == 0, out.stderr
    assert f"broker 1 at {bootstrap(broker)}" in out.stdout, out.stdout
    assert f'topic "{free}" with 3 partitions' in out.stdout, out.stdout


@pytest.mark.parametrize("codec", CODECS)
def test_produce_consume_each_codec(make_broker, codec):
    broker = kafka_broker(make_broker)
    topic = topic_name(f"z-{codec}")
    create_stream(broker, topic, partitions=2)
    # repetitive values so that every codec really compresses; keys and values distinct per line
    lines = [f"key-{i:03d}\tvalue {i:03d} " + ("abcdefgh" * (i % 7 + 1)) for i in range(60)]

    out = kcat(broker, "-P", "-t", topic, "-p", "1", "-K", "\t", "-z", codec,
               "-X", "linger.ms=50", stdin="\n".join(lines) + "\n")
    assert out.returncode == 0, f"kcat -P -z {codec} failed: {out.stderr}"

    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-o", "beginning", "-e",
               "-f", "%p|%o|%k|%s\n")
    assert out.returncode == 0, f"kcat -C failed: {out.stderr}"
    got = [line.split("|", 3) for line in out.stdout.splitlines() if line]
    want = [["1", str(i), *line.split("\t", 1)] for i, line in enumerate(lines)]
    assert got == want

    # nothing went to partition 0; the HTTP view agrees with what kcat read
    offsets = http_offsets(broker, topic)
    assert offsets[0] == (0, 0, 0)
    assert offsets[1] == (0, len(lines), len(lines))

    # a second produce in the same codec continues the offsets
    out = kcat(broker, "-P", "-t", topic, "-p", "1", "-K", "\t", "-z", codec,
               stdin="more\tafter\n")
    assert out.returncode == 0, out.stderr
    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-o", str(len(lines)), "-e",
               "-f", "%o|%k|%s\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{len(lines)}|more|after"]


def test_all_codecs_mixed_in_one_partition(make_broker):
    """Batches of different codecs interleave in one log and read back in order."""
    broker = kafka_broker(make_broker)
    topic = topic_name("mixed")
    create_stream(broker, topic, partitions=1)
    want = []
    for round_ in range(2):
        for codec in CODECS:
            lines = [f"{codec}-{round_}-{i}\t{codec} payload {i} " + "xyz" * 20 for i in range(5)]
            out = kcat(broker, "-P", "-t", topic, "-p", "0", "-K", "\t", "-z", codec,
                       stdin="\n".join(lines) + "\n")
            assert out.returncode == 0, f"{codec}: {out.stderr}"
            want += [line.split("\t", 1) for line in lines]
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-e", "-f", "%o|%k|%s\n")
    assert out.returncode == 0, out.stderr
    got = [line.split("|", 2) for line in out.stdout.splitlines() if line]
    assert [int(o) for o, _, _ in got] == list(range(len(want)))
    assert [[k, v] for _, k, v in got] == want


def test_produce_to_bound_stream_is_refused(make_broker):
    bound = topic_name("bound")
    broker = kafka_broker(make_broker, streams=[
        {"name": bound, "kind": "bound", "filter": "devices/#", "partitions": 1}])
    out = kcat(broker, "-P", "-t", bound, "-p", "0", "-X", "message.timeout.ms=10000",
               stdin="not allowed\n")
    text = (out.stdout + out.stderr).lower()
    assert out.returncode != 0 or "authorization" in text, (out.returncode, text)
    assert "authorization" in text, text
    # nothing was appended
    assert http_offsets(broker, bound)[0] == (0, 0, 0)
