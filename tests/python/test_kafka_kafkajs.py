"""kafkajs 2.2.4 (Node.js) against Tidewater: admin createTopics, an idempotent producer and a
consumer group, through tests/js/roundtrip.js which prints what it saw as JSON."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import unique
from kafka_helpers import bootstrap, http_offsets, kafka_broker, stream_info

pytestmark = pytest.mark.tidewater_only

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def run_node(broker, topic, group, count):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Node.js 18+ runs the kafkajs tests)", pytrace=False)
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail(f"kafkajs is not installed: run `npm install --prefix {JS_DIR}`",
                    pytrace=False)
    cmd = [node, str(JS_DIR / "roundtrip.js"), bootstrap(broker), topic, group, str(count)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=75)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"node did not finish within 75s; stderr: {err.stderr}") from None
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from node (exit {out.returncode}); stderr:\n{out.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert "error" not in result, \
        f"kafkajs failed: {result['error']}\nstderr:\n{out.stderr[-3000:]}"
    assert out.returncode == 0, out.stderr
    return result


def test_kafkajs_produce_and_consume_in_group(make_broker):
    broker = kafka_broker(make_broker)
    topic = unique("js")
    group = unique("jsg")
    count = 60
    result = run_node(broker, topic, group, count)

    # createTopics made a free stream with 3 partitions
    assert result["created"] is True
    assert result["partitions"] == [0, 1, 2]
    info = stream_info(broker, topic)
    assert (info["kind"], info["partitions"]) == ("free", 3)

    assert all(p["errorCode"] == 0 for p in result["produced"]), result["produced"]
    consumed = result["consumed"]
    assert len(consumed) == count
    assert sorted(int(m["value"].split("-")[1]) for m in consumed) == list(range(count))
    ends = {p: end for p, (_, end, _) in http_offsets(broker, topic).items()}
    assert sum(ends.values()) == count
    for p, end in ends.items():
        # offsets contiguous from 0, delivered in order within a partition
        assert [m["offset"] for m in consumed if m["partition"] == p] == list(range(end))
    key_partition = {}
    for m in consumed:
        i = int(m["value"].split("-")[1])
        assert m["key"] == f"key-{i % 7}"
        assert m["headers"] == {"seq": str(i), "client": "kafkajs"}
        assert key_partition.setdefault(m["key"], m["partition"]) == m["partition"]
    # the script sent two batches (values 0..29, then 30..59): each send reported, per partition,
    # the offset its first record got
    half = count // 2
    for p in ends:
        firsts = [min((m["offset"] for m in consumed if m["partition"] == p
                       and (int(m["value"].split("-")[1]) < half) == first), default=None)
                  for first in (True, False)]
        reported = [r["baseOffset"] for r in result["produced"] if r["partition"] == p]
        assert reported == [o for o in firsts if o is not None], (p, reported, firsts)

    # the group committed everything it consumed and is empty after the consumer left
    assert {c["partition"]: c["offset"] for c in result["committed"]} == ends
    assert result["groupState"] == "Empty"
