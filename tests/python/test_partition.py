"""A network partition of a 3-node cluster, with each node in its own network namespace on its own
address (a bridge between them, one more port on it for the test's clients). The leader of a
replicated partition is cut off from the other two with nft: the minority acknowledges nothing
(Kafka `acks=all` and MQTT QoS 1 through it time out unacknowledged), the majority elects a leader
and acknowledges; after healing, the cut-off node takes the majority's log and the three replicas
hold identical bytes, with every acknowledged record once at its offset and nothing the minority
was sent."""

import contextlib
import fcntl
import os
import subprocess
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from helpers import connected
from kafka_helpers import create_stream
from kafka_raw import RawKafka, record_batch
from test_cluster import agreed_controller, controller, node_ids, wait_for
from test_replication import bootstrap, create_topic, leaders, read_all, segment_bytes, stream_offsets

pytestmark = pytest.mark.tidewater_only

LEADER_NOT_AVAILABLE = 5
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def nft(namespace, *rules):
    for rule in rules:
        subprocess.run(["ip", "netns", "exec", namespace, "nft", *rule.split()], check=True,
                       capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def subnet(hosts=3):
    """Namespaces `<p>n1..n3` on 10.77.X.1..3 behind a bridge in `<p>s`, and 10.77.X.254 here;
    X is a subnet no other test run on this machine holds (chosen under a lock)."""
    prefix = f"tw{os.getpid() % 100000}"
    with open("/tmp/tw-netns.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = ip("-o", "addr").stdout
        x = next(x for x in range(20, 250) if f"10.77.{x}." not in used)
        try:
            ip("netns", "add", f"{prefix}s")
            ip("-n", f"{prefix}s", "link", "add", "br0", "type", "bridge")
            ip("-n", f"{prefix}s", "link", "set", "br0", "up")
            for i in range(1, hosts + 1):
                ns = f"{prefix}n{i}"
                ip("netns", "add", ns)
                ip("link", "add", f"{prefix}v{i}", "netns", f"{prefix}s", "type", "veth", "peer", "name", "eth0",
                   "netns", ns)
                ip("-n", f"{prefix}s", "link", "set", f"{prefix}v{i}", "master", "br0")
                ip("-n", f"{prefix}s", "link", "set", f"{prefix}v{i}", "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "addr", "add", f"10.77.{x}.{i}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
            ip("link", "add", f"{prefix}h", "type", "veth", "peer", "name", f"{prefix}hb", "netns", f"{prefix}s")
            ip("-n", f"{prefix}s", "link", "set", f"{prefix}hb", "master", "br0")
            ip("-n", f"{prefix}s", "link", "set", f"{prefix}hb", "up")
            ip("addr", "add", f"10.77.{x}.254/24", "dev", f"{prefix}h")
            ip("link", "set", f"{prefix}h", "up")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        yield prefix, [(f"{prefix}n{i}", f"10.77.{x}.{i}") for i in range(1, hosts + 1)]
    finally:
        for i in range(1, hosts + 1):
            ip("netns", "del", f"{prefix}n{i}", check=False)
        ip("netns", "del", f"{prefix}s", check=False)  # takes the veth pairs with it
        ip("link", "del", f"{prefix}h", check=False)


def cut_off(namespace, others):
    """Drops everything between `namespace`'s node and the `others` addresses, both ways (the
    test's own address still reaches it)."""
    peers = ", ".join(others)
    nft(namespace, "add table inet cut",
        "add chain inet cut in { type filter hook input priority 0 ; }",
        "add chain inet cut out { type filter hook output priority 0 ; }",
        f"add rule inet cut in ip saddr {{ {peers} }} drop",
        f"add rule inet cut out ip daddr {{ {peers} }} drop")


def heal(namespace):
    nft(namespace, "delete table inet cut")


def test_a_partitioned_leader_acknowledges_nothing_and_the_majority_goes_on(make_broker):
    with subnet() as (_, hosts):
        nodes = []
        try:
            partitioned(make_broker, hosts, nodes)
        finally:
            for broker in nodes:  # before their namespaces go
                broker.kill()


def partitioned(make_broker, hosts, nodes):
    """The test proper; `nodes` collects the brokers started, for the caller to stop."""
    for node_id, (namespace, address) in enumerate(hosts, start=1):
        extra = ["--voters", "1,2,3"]
        if nodes:
            extra += ["--seeds", f"{hosts[0][1]}:{nodes[0].gossip_port}"]
        nodes.append(make_broker(node_id=node_id, host=address, netns=namespace, extra_args=extra))
    for broker in nodes:
        wait_for(lambda broker=broker: node_ids(broker) == [1, 2, 3], timeout=15)
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=15)
    admin = create_topic(nodes, "split", 1, 3)
    create_stream(nodes[0], "split-mqtt", kind="bound", filter="split/#", partitions=1, replication_factor=3)
    leader_id = leaders(admin, "split", 1)[0][0]
    acked = {}

    def produce(through, values, timeout_ms):
        producer = Producer({"bootstrap.servers": bootstrap(through), "acks": "all",
                             "message.timeout.ms": timeout_ms, "enable.idempotence": True})
        results = []
        for value in values:
            producer.produce("split", value=value, on_delivery=lambda err, msg: results.append((err, msg)))
        producer.flush(timeout_ms / 1000 + 10)
        for err, msg in results:
            if err is None:
                acked[msg.offset()] = msg.value()
        return [err for err, _ in results]

    assert produce(nodes, [b"before-%03d" % i for i in range(100)], 20000) == [None] * 100
    victim = next(b for b in nodes if b.node_id == leader_id)
    majority = [b for b in nodes if b is not victim]
    cut_off(victim.netns, [b.host for b in majority])

    # the minority: nothing through the cut-off leader is acknowledged; a produce is answered
    # within its timeout_ms (REQUEST_TIMED_OUT, or NOT_LEADER once check-quorum deposed the leader)
    with RawKafka(victim, timeout=20) as raw:
        started = time.monotonic()
        error, _, _ = raw.produce("split", 0, record_batch([b"minority-raw"]), timeout_ms=1500)
        assert error in (REQUEST_TIMED_OUT, NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE), error
        assert time.monotonic() - started < 6, "answered within the request's timeout"
    minority_errors = produce([victim], [b"minority-%03d" % i for i in range(20)], 6000)
    assert all(err is not None for err in minority_errors), "the minority acknowledged a produce"
    device = connected(victim, client_id="cut-device")
    info = device.publish("split/d", b"minority-mqtt", qos=1, wait=False)
    info.wait_for_publish(6)
    assert not info.is_published(), "the minority PUBACKed a publish into a replicated stream"
    device.paho.disconnect()

    # the majority elects a leader of its own and acknowledges
    majority_admin = AdminClient({"bootstrap.servers": bootstrap(majority)})
    new_leader = wait_for(lambda: (lambda found: found if found[0][0] != leader_id else None)(
        leaders(majority_admin, "split", 1)), timeout=20, step=0.5)[0][0][0]
    assert new_leader in {b.node_id for b in majority}
    assert produce(majority, [b"majority-%03d" % i for i in range(100)], 20000) == [None] * 100
    client = connected(majority[0], client_id="majority-device")
    assert client.publish("split/d", b"majority-mqtt", qos=1, timeout=20) == 0
    client.paho.disconnect()

    # healed: the cut-off node takes the majority's log; the replicas hold identical bytes
    heal(victim.netns)
    reference = stream_offsets(majority[0], "split")
    assert reference[0][0] == len(acked) == 200, f"high watermark {reference}, {len(acked)} acknowledged"
    wait_for(lambda: all(stream_offsets(b, "split") == reference for b in nodes), timeout=30, step=0.3)
    held = {b.node_id: segment_bytes(b, "split", 0) for b in nodes}
    assert len(set(held.values())) == 1, {n: len(v) for n, v in held.items()}
    got = read_all(nodes, "split", 1, {(0, offset) for offset in acked})
    values = {offset: value for (_, offset), value in got.items()}
    assert values == acked, "exactly the acknowledged records, each at its offset"
    assert not any(v.startswith(b"minority") for v in values.values())
    mqtt = read_all(nodes, "split-mqtt", 1, set(), until=lambda got: b"majority-mqtt" in got.values(),
                    timeout=15)
    assert b"majority-mqtt" in mqtt.values() and b"minority-mqtt" not in mqtt.values()
