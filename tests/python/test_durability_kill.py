"""What an acknowledgement promises survives `kill -9`: deliveries to persistent sessions and
wills waiting for their delay (the simulation checks the same under thousands of schedules;
these run the real binary on its real store)."""

import time

import pytest

from helpers import Client, raw, unique

pytestmark = pytest.mark.tidewater_only


def persistent(broker, client_id, version=4) -> Client:
    expiry = 300 if version == 5 else None
    return Client(broker, client_id=client_id, version=version, clean=False, session_expiry=expiry)


def test_slow_persistent_subscriber_keeps_every_acknowledged_message_after_kill9(make_broker):
    """A subscriber that is connected but does not read: every QoS 1 publish acknowledged to
    its publisher is delivered after `kill -9` and a restart on the same data directory (the
    session queue holds them all: `mqtt.max_queued_messages` is above the count)."""
    broker = make_broker(config={"mqtt": {"max_queued_messages": 10000}})
    topic, client_id = unique("kill/slow"), unique("slow")
    slow = raw(broker, 4)
    assert slow.connect(client_id, clean=False).reason_code == 0
    slow.subscribe((topic, 1))
    # the subscriber never reads again: deliveries pile up in its session

    count = 2000
    with Client(broker, client_id=unique("pub"), version=4) as publisher:
        publisher.connect()
        infos = [publisher.publish(topic, f"m{i}".encode(), qos=1, wait=False) for i in range(count)]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
        broker.kill()  # right after the last PUBACK
    slow.close()
    broker.start()

    with persistent(broker, client_id) as subscriber:
        session_present, _ = subscriber.connect()
        assert session_present
        got = set()
        deadline = time.monotonic() + 60
        while len(got) < count and time.monotonic() < deadline:
            for message in subscriber.drain(1.0):
                got.add(message.payload)
        missing = [i for i in range(count) if f"m{i}".encode() not in got]
        assert not missing, f"{len(missing)} acknowledged messages lost, first {missing[:10]}"


@pytest.mark.parametrize("stop", ["kill", "sigterm"])
@pytest.mark.parametrize("when", ["pending-delay", "connected"])
def test_will_survives_a_restart(make_broker, stop, when):
    """A v5 will with a delay is published after the node restarts: a will that was waiting
    for its delay, and the will of a client that was still connected when the node went down."""
    broker = make_broker()
    topic, watcher_id = unique("kill/will"), unique("watch")
    watcher = persistent(broker, watcher_id, version=5)
    watcher.connect()
    assert watcher.subscribe(topic, qos=1) == [1]
    watcher.disconnect()  # offline: the will is queued in its persistent session

    client = raw(broker, 5)
    will = {"topic": topic, "payload": b"gone", "qos": 1, "props": {"will_delay_interval": 2}}
    assert client.connect(unique("w"), clean=True, will=will,
                          props={"session_expiry_interval": 60}).reason_code == 0
    if when == "pending-delay":
        client.close()
        time.sleep(0.3)  # the session has seen the connection go: the will waits for its delay
    if stop == "kill":
        broker.kill()
    else:
        assert broker.stop() == 0
    client.close()
    broker.start()

    with persistent(broker, watcher_id, version=5) as watcher:
        session_present, _ = watcher.connect()
        assert session_present
        message = watcher.wait_message(timeout=15)
        assert (message.topic, message.payload) == (topic, b"gone")
        watcher.assert_no_message(3.0)  # exactly once
