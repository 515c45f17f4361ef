"""Shared subscriptions: $share/<group>/<filter> balances messages across the group's members."""

from collections import Counter

import pytest

from helpers import connected, unique

COUNT = 90


def publish_numbered(broker, topic, count=COUNT, version=5):
    with connected(broker, version=version) as pub:
        for i in range(count):
            pub.publish(topic, str(i).encode(), qos=1, wait=False)
        pub.publish(topic, b"last", qos=1)  # waits for its PUBACK, hence for the ones before it


def collect_group(members, expected_total):
    """Drain every member until the group has `expected_total` messages, then a bit more."""
    got = {i: [] for i in range(len(members))}
    for _ in range(200):
        for i, member in enumerate(members):
            got[i] += member.drain(0.05)
        if sum(len(v) for v in got.values()) >= expected_total:
            break
    for i, member in enumerate(members):  # anything extra would be a duplicate
        got[i] += member.drain(0.5)
    return got


@pytest.mark.parametrize("members,version", [(2, 5), (3, 5), (3, 4)],
                         ids=["2-members-v5", "3-members-v5", "3-members-v311"])
def test_shared_subscription_balances_and_delivers_once(broker, members, version):
    topic = unique("shared/t")
    clients = [connected(broker, version=version) for _ in range(members)]
    try:
        for client in clients:
            assert client.subscribe(f"$share/g/{topic}", qos=1) == [1]
        publish_numbered(broker, topic)
        got = collect_group(clients, COUNT + 1)
        all_payloads = [m.payload for msgs in got.values() for m in msgs]
        counts = Counter(all_payloads)
        duplicates = {p: n for p, n in counts.items() if n > 1}
        assert not duplicates, f"delivered more than once within the group: {duplicates}"
        assert set(all_payloads) == {str(i).encode() for i in range(COUNT)} | {b"last"}
        for i, msgs in got.items():
            assert len(msgs) >= COUNT // (2 * members), (
                f"member {i} got {len(msgs)} of {COUNT + 1}: not a fair share "
                f"{[len(v) for v in got.values()]}")
            assert all(m.topic == topic for m in msgs)
    finally:
        for client in clients:
            client.close()


def test_each_group_and_plain_subscriber_get_every_message(broker):
    topic = unique("shared/groups")
    group_a = [connected(broker) for _ in range(2)]
    group_b = [connected(broker) for _ in range(2)]
    plain = connected(broker)
    try:
        for client in group_a:
            client.subscribe(f"$share/a/{topic}", qos=1)
        for client in group_b:
            client.subscribe(f"$share/b/{topic}", qos=1)
        plain.subscribe(topic, qos=1)
        publish_numbered(broker, topic, count=30)
        expected = sorted([str(i).encode() for i in range(30)] + [b"last"])
        for group in (group_a, group_b):
            got = collect_group(group, 31)
            assert sorted(m.payload for msgs in got.values() for m in msgs) == expected
        assert [m.payload for m in plain.wait_messages(31)] == [str(i).encode() for i in range(30)] + [b"last"]
        plain.assert_no_message(0.3)
    finally:
        for client in group_a + group_b + [plain]:
            client.close()


def test_shared_subscription_with_wildcard_filter(broker):
    base = unique("shared/wild")
    clients = [connected(broker) for _ in range(2)]
    try:
        for client in clients:
            client.subscribe(f"$share/w/{base}/+/data", qos=1)
        with connected(broker) as pub:
            for i in range(20):
                pub.publish(f"{base}/dev{i}/data", str(i).encode(), qos=1)
            pub.publish(f"{base}/dev0/other", b"no", qos=1)
        got = collect_group(clients, 20)
        assert sorted(int(m.payload) for msgs in got.values() for m in msgs) == list(range(20))
    finally:
        for client in clients:
            client.close()


def test_member_leaving_group_does_not_lose_messages(broker):
    topic = unique("shared/leave")
    stays, leaves = connected(broker), connected(broker)
    try:
        stays.subscribe(f"$share/g/{topic}", qos=1)
        leaves.subscribe(f"$share/g/{topic}", qos=1)
        leaves.disconnect()
        publish_numbered(broker, topic, count=20)
        got = stays.wait_messages(21)
        assert sorted(m.payload for m in got) == sorted([str(i).encode() for i in range(20)] + [b"last"])
    finally:
        stays.close()
