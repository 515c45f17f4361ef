"""MQTT across a 3-node cluster on loopback: a subscriber on one node receives what devices
publish on the others, with payload, properties, QoS and per-publisher order kept; a SUBACK
means every node routes the filter (a publish anywhere right after it arrives); members of a
shared subscription on three nodes share the messages, each delivered once; an unsubscribe
stops the forwards; a node killed with its subscribers does not hold up the publishers on the
survivors; and a client that reconnects to another node takes its session along (session
present, subscriptions, queued and in-flight messages), the old connection told 0x8E."""

import time

import pytest

from conftest import metric_sum
from helpers import Client, connected, raw, unique, wait_until
import rawmqtt
from test_replication import cluster_of_three

pytestmark = pytest.mark.tidewater_only


def drain(client, timeout=0.5):
    """What arrives at `client` until nothing has for `timeout` seconds."""
    got = []
    while True:
        try:
            got.append(client.messages.get(timeout=timeout))
        except Exception:  # queue.Empty
            return got


def test_a_subscriber_receives_what_is_published_on_the_other_nodes_in_order(make_broker):
    nodes = cluster_of_three(make_broker)
    subscriber = connected(nodes[0])
    assert subscriber.subscribe("plant/+/temp", qos=1) == [1]
    publishers = [connected(node) for node in nodes[1:]]
    count = 200
    pending = []
    for i in range(count):
        for n, publisher in enumerate(publishers):
            pending.append(publisher.publish(f"plant/{n}/temp", b"p%d-%04d" % (n, i), qos=1, wait=False,
                                             properties={"UserProperty": [("seq", str(i))],
                                                         "ContentType": "text/plain"}))
    for info in pending:
        info.wait_for_publish(20)
        assert info.is_published()
    got = subscriber.wait_messages(2 * count, timeout=30)
    for n in range(2):
        mine = [m for m in got if m.topic == f"plant/{n}/temp"]
        # every message once, in the order its publisher sent it, with what it carried
        assert [m.payload for m in mine] == [b"p%d-%04d" % (n, i) for i in range(count)]
        assert all(m.qos == 1 for m in mine)
        assert [dict(m.properties.UserProperty)["seq"] for m in mine] == [str(i) for i in range(count)]
        assert all(m.properties.ContentType == "text/plain" for m in mine)
    assert drain(subscriber) == [], "nothing twice"
    # QoS 0 travels too, and a subscriber on the publishing node gets its copy as before
    local = connected(nodes[1])
    assert local.subscribe("plant/+/temp", qos=0) == [0]
    publishers[0].publish("plant/0/temp", b"qos0", qos=0)
    assert subscriber.wait_message(10).payload == b"qos0"
    assert local.wait_message(10).payload == b"qos0"


def test_a_publish_anywhere_right_after_the_suback_reaches_the_subscriber(make_broker):
    nodes = cluster_of_three(make_broker)
    publishers = {node.node_id: connected(node) for node in nodes}
    for round_ in range(30):
        here = nodes[round_ % 3]
        there = nodes[(round_ + 1 + round_ // 3 % 2) % 3]
        topic = f"fresh/{unique('r')}"
        subscriber = connected(here)
        assert subscriber.subscribe(topic, qos=1) == [1]
        # no wait between the SUBACK and the publish on another node
        publishers[there.node_id].publish(topic, b"right-after", qos=1)
        message = subscriber.wait_message(10)
        assert (message.topic, message.payload) == (topic, b"right-after"), f"round {round_}"
        subscriber.paho.disconnect()


def test_shared_subscription_members_on_three_nodes_each_get_a_share_and_each_message_once(make_broker):
    nodes = cluster_of_three(make_broker)
    members = [connected(node) for node in nodes]
    for member in members:
        assert member.subscribe("$share/workers/jobs/#", qos=1) == [1]
    # a plain subscriber elsewhere still gets every message
    watcher = connected(nodes[2])
    assert watcher.subscribe("jobs/#", qos=1) == [1]
    publisher = connected(nodes[0])
    count = 300
    pending = [publisher.publish(f"jobs/{i % 7}", b"job-%04d" % i, qos=1, wait=False) for i in range(count)]
    for info in pending:
        info.wait_for_publish(20)
        assert info.is_published()
    assert len(watcher.wait_messages(count, timeout=30)) == count
    deadline = time.monotonic() + 30
    shares = [[] for _ in members]
    while sum(map(len, shares)) < count and time.monotonic() < deadline:
        for i, member in enumerate(members):
            shares[i].extend(drain(member, timeout=0.1))
    for i, member in enumerate(members):
        shares[i].extend(drain(member, timeout=0.5))
    payloads = [m.payload for share in shares for m in share]
    assert sorted(payloads) == sorted(b"job-%04d" % i for i in range(count)), "each job once, none lost"
    sizes = [len(share) for share in shares]
    assert all(size >= count // 10 for size in sizes), f"every node's member gets a share: {sizes}"


def test_an_unsubscribe_stops_the_forwards_and_no_local_holds_across_nodes(make_broker):
    nodes = cluster_of_three(make_broker)
    subscriber = connected(nodes[0])
    assert subscriber.subscribe("news/#", qos=1) == [1]
    publisher = connected(nodes[1])
    publisher.publish("news/a", b"before", qos=1)
    assert subscriber.wait_message(10).payload == b"before"
    assert subscriber.unsubscribe("news/#") == [0]
    publisher.publish("news/a", b"after", qos=1)
    # a second subscriber on the same node shows the forward would have arrived by now
    other = connected(nodes[0])
    assert other.subscribe("news/#", qos=1) == [1]
    publisher.publish("news/a", b"for-other", qos=1)
    assert other.wait_message(10).payload == b"for-other"
    assert [m.payload for m in drain(subscriber)] == []
    # no local: a client's own publishes do not come back to it through another node's route
    echo = connected(nodes[2], client_id=unique("echo"))
    assert echo.subscribe("chat/#", qos=1, no_local=True) == [1]
    listener = connected(nodes[1])
    assert listener.subscribe("chat/#", qos=1) == [1]
    echo.publish("chat/room", b"mine", qos=1)
    assert listener.wait_message(10).payload == b"mine"
    assert drain(echo) == []


def test_a_node_killed_with_its_subscribers_does_not_hold_up_publishers_on_the_survivors(make_broker):
    nodes = cluster_of_three(make_broker)
    doomed = connected(nodes[2])
    assert doomed.subscribe("alarm/#", qos=1) == [1]
    survivor = connected(nodes[1])
    assert survivor.subscribe("alarm/#", qos=1) == [1]
    publisher = connected(nodes[0])
    publisher.publish("alarm/1", b"one", qos=1)
    assert doomed.wait_message(10).payload == b"one"
    assert survivor.wait_message(10).payload == b"one"
    nodes[2].kill()
    # once the cluster sees node 3 gone, publishes are acknowledged and delivered at once
    started = time.monotonic()
    acked = []
    for i in range(20):
        info = publisher.publish("alarm/2", b"after-%02d" % i, qos=1, wait=False)
        info.wait_for_publish(30)
        if info.is_published():
            acked.append(b"after-%02d" % i)
    assert acked, "no publish acknowledged after the kill"
    assert time.monotonic() - started < 30
    got = [m.payload for m in survivor.wait_messages(len(acked), timeout=20)]
    assert set(acked) <= set(got)
    wait_until(lambda: publisher.publish("alarm/3", b"late", qos=1, timeout=10) == 0, timeout=20)


def sessions_held(broker):
    return metric_sum(broker.metrics(), "tidewater_mqtt_sessions")


@pytest.mark.parametrize("version", [5, 4], ids=["v5", "v3.1.1"])
def test_a_persistent_session_moves_to_the_node_its_client_reconnects_to(make_broker, version):
    nodes = cluster_of_three(make_broker)
    client_id = unique("mover")
    expiry = 300 if version == 5 else None
    mover = Client(nodes[0], client_id=client_id, version=version, clean=False, session_expiry=expiry)
    mover.connect()
    assert mover.subscribe("move/#", qos=1) == [1]
    mover.paho.disconnect()
    mover.disconnected.wait(5)
    publisher = connected(nodes[2])
    for i in range(20):
        publisher.publish("move/x", b"queued-%02d" % i, qos=1)
    # the client comes back on another node: its session, with what was queued, comes along
    back = Client(nodes[1], client_id=client_id, version=version, clean=False, session_expiry=expiry)
    session_present, _ = back.connect()
    assert session_present, "the session moved with its client"
    got = back.wait_messages(20, timeout=20)
    assert [m.payload for m in got] == [b"queued-%02d" % i for i in range(20)]
    # its subscription lives on node 2 now: a publish anywhere reaches it there
    publisher.publish("move/y", b"after-the-move", qos=1)
    assert back.wait_message(10).payload == b"after-the-move"
    assert drain(back) == []
    wait_until(lambda: sessions_held(nodes[0]) == 0, timeout=10, message="node 1 let the session go")
    # and forgot its stored copy: restarted, it does not bring back a second owner
    nodes[0].restart()
    wait_until(lambda: nodes[0].alive(), timeout=10)
    time.sleep(1)
    assert sessions_held(nodes[0]) == 0
    publisher.publish("move/z", b"one-owner", qos=1)
    assert back.wait_message(10).payload == b"one-owner"
    assert drain(back) == []


def test_a_client_connecting_to_another_node_takes_its_session_from_the_live_connection(make_broker):
    nodes = cluster_of_three(make_broker)
    client_id = unique("twin")
    old = raw(nodes[0], 5)
    assert old.connect(client_id, clean=False, props={"session_expiry_interval": 60}).reason_code == 0
    new = raw(nodes[1], 5)
    connack = new.connect(client_id, clean=False, props={"session_expiry_interval": 60})
    assert connack.reason_code == 0 and connack.session_present
    packets = old.wait_closed(timeout=10)
    assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x8E)]
    # a clean start elsewhere ends the session and closes its connection too
    fresh = raw(nodes[2], 5)
    connack = fresh.connect(client_id, clean=True, props={"session_expiry_interval": 60})
    assert connack.reason_code == 0 and not connack.session_present
    packets = new.wait_closed(timeout=10)
    assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x8E)]
    fresh.disconnect()
    wait_until(lambda: sessions_held(nodes[0]) == 0 and sessions_held(nodes[1]) == 0, timeout=10,
               message="only node 3 holds the session")
