"""A cluster on loopback: nodes join through a seed, see each other with their advertised
addresses, notice a killed node within the failure-detection budget, and drop a node that
leaves at once; the controller group (raft over the data plane, its log on disk) elects one
leader, registers every node, fails over when its leader is killed and keeps its log across a
restart. Replicated streams are tested in test_replication.py."""

import json
import time

import pytest

pytestmark = pytest.mark.tidewater_only


def cluster_view(broker):
    status, body = broker.http_get("/api/v1/cluster")
    assert status == 200, body
    return json.loads(body)


def wait_for(what, timeout, step=0.05):
    """Polls `what` until it returns something truthy; returns (value, seconds waited)."""
    started = time.monotonic()
    while True:
        value = what()
        if value:
            return value, time.monotonic() - started
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(step)


def node_ids(broker):
    return sorted(node["id"] for node in cluster_view(broker)["nodes"])


def three_nodes(make_broker, config=None, voters=None):
    """Nodes 1, 2, 3 joined through node 1; `voters` (e.g. "1,2,3") makes one controller group."""
    extra = ["--voters", voters] if voters else []
    first = make_broker(node_id=1, config=config, extra_args=extra)
    seed = f"127.0.0.1:{first.gossip_port}"
    others = [make_broker(node_id=i, extra_args=["--seeds", seed, *extra], config=config) for i in (2, 3)]
    nodes = [first, *others]
    for broker in nodes:
        wait_for(lambda broker=broker: node_ids(broker) == [1, 2, 3], timeout=10)
    return nodes


def test_three_nodes_join_through_a_seed_and_advertise_their_addresses(make_broker):
    nodes = three_nodes(make_broker)
    view = cluster_view(nodes[0])
    assert view["cluster"] == "tidewater" and view["node_id"] == 1
    by_id = {node["id"]: node for node in view["nodes"]}
    for broker in nodes:
        node = by_id[broker.node_id]
        assert node["state"] == "alive"
        assert node["mqtt"] == f"127.0.0.1:{broker.mqtt_port}"
        assert node["kafka"] == f"127.0.0.1:{broker.kafka_port}"
        assert node["http"] == f"127.0.0.1:{broker.http_port}"
        assert node["rpc"] == f"127.0.0.1:{broker.rpc_port}"
        assert node["gossip"] == f"127.0.0.1:{broker.gossip_port}"
        assert node["self"] == (broker.node_id == 1)
    # the data plane: node 1 holds an open link to each peer
    links, _ = wait_for(lambda: all(n["link"] and n["link"]["connected"]
                                    for n in cluster_view(nodes[0])["nodes"] if not n["self"]), timeout=5)
    assert links


def test_a_killed_node_is_noticed_and_a_leaving_node_is_dropped_at_once(make_broker):
    first, second, third = three_nodes(make_broker)
    third.kill()
    _, waited = wait_for(lambda: node_ids(first) == [1, 2] and node_ids(second) == [1, 2], timeout=10)
    assert waited < 4.0, f"a dead node took {waited:.1f}s to notice (budget: about 2 s)"
    assert second.stop() == 0
    _, waited = wait_for(lambda: node_ids(first) == [1], timeout=5)
    assert waited < 1.0, f"a leaving node took {waited:.1f}s to drop"
    # it comes back with a new generation and is seen again
    second.start()
    wait_for(lambda: node_ids(first) == [1, 2], timeout=10)


def test_nodes_of_another_cluster_are_not_members(make_broker):
    first = make_broker(node_id=1)
    stranger = make_broker(node_id=2, config={"cluster": {"name": "elsewhere"}},
                           extra_args=["--seeds", f"127.0.0.1:{first.gossip_port}"])
    time.sleep(1.5)
    assert node_ids(first) == [1]
    assert node_ids(stranger) == [2]


def test_bad_cluster_settings_are_refused_with_the_key(make_broker):
    broker = make_broker(start=False, config={"cluster": {"dead_after_ms": 100, "gossip_interval_ms": 200}})
    with pytest.raises(Exception):
        broker.start()
    assert "cluster.dead_after_ms" in broker.log_text()


def controller(broker):
    return cluster_view(broker)["controller"]


def agreed_controller(nodes, leader_among=None, newer_than=0):
    """The controller state every node in `nodes` reports alike, once they do."""
    views = [controller(broker) for broker in nodes]
    leaders = {view["leader"] for view in views}
    terms = {view["term"] for view in views}
    registered = {json.dumps(view["registered"]) for view in views}
    if len(leaders) != 1 or len(terms) != 1 or len(registered) != 1 or None in leaders:
        return None
    leader, term = leaders.pop(), terms.pop()
    if term <= newer_than or (leader_among is not None and leader not in leader_among):
        return None
    return views[0]


def test_the_controller_elects_one_leader_and_registers_every_node(make_broker):
    nodes = three_nodes(make_broker, voters="1,2,3")
    view, _ = wait_for(lambda: agreed_controller(nodes), timeout=10)
    assert view["voters"] == [1, 2, 3]
    leaders = [broker for broker in nodes if controller(broker)["is_leader"]]
    assert len(leaders) == 1 and leaders[0].node_id == view["leader"]
    generations = {node["id"]: node["generation"] for node in cluster_view(nodes[0])["nodes"]}
    registered, _ = wait_for(lambda: {n["id"]: n["generation"] for n in controller(nodes[0])["registered"]}
                             == generations and controller(nodes[0])["registered"], timeout=10)
    assert registered


def test_the_controller_fails_over_when_its_leader_is_killed_and_keeps_its_log(make_broker):
    nodes = three_nodes(make_broker, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=10)
    before = agreed_controller(nodes)
    old = next(broker for broker in nodes if broker.node_id == before["leader"])
    survivors = [broker for broker in nodes if broker is not old]
    old.kill()
    after, waited = wait_for(lambda: agreed_controller(survivors, leader_among={b.node_id for b in survivors},
                                                      newer_than=before["term"]), timeout=10)
    assert waited < 5.0, f"the controller took {waited:.1f}s to elect a new leader"
    assert after["registered"] == before["registered"], "the committed metadata survived the leader"
    # the killed node comes back on its data: its log is whole, and it is registered anew
    old.start()
    view, _ = wait_for(lambda: agreed_controller(nodes), timeout=15)
    generations = lambda broker: {n["id"]: n["generation"] for n in cluster_view(broker)["nodes"]}
    try:
        wait_for(lambda: {n["id"]: n["generation"] for n in controller(old)["registered"]} == generations(old),
                 timeout=10)
    except AssertionError as error:
        raise AssertionError(f"gossip sees {generations(old)}; controllers: {[controller(b) for b in nodes]}") from error
    commits, _ = wait_for(lambda: len({controller(b)["commit_index"] for b in nodes}) == 1
                          and controller(old)["commit_index"], timeout=10)
    assert commits


def test_a_node_outside_the_voters_follows_the_metadata_as_a_learner(make_broker):
    nodes = three_nodes(make_broker, voters="1,2,3")
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=10)
    fourth = make_broker(node_id=4, extra_args=["--seeds", f"127.0.0.1:{nodes[0].gossip_port}", "--voters", "1,2,3"])
    everyone = [*nodes, fourth]
    view, _ = wait_for(lambda: agreed_controller(everyone) and len(controller(fourth)["registered"]) == 4
                       and controller(fourth), timeout=15)
    assert view["voters"] == [1, 2, 3]
    leader = next(b for b in nodes if b.node_id == view["leader"])
    # the leader made it a learner: it holds the log and applies it, and never votes
    learners, _ = wait_for(lambda: controller(leader)["raft_learners"] == [4] and controller(leader), timeout=10)
    assert learners["raft_voters"] == [1, 2, 3]
    assert not controller(fourth)["is_leader"]
    wait_for(lambda: controller(fourth)["commit_index"] == controller(leader)["commit_index"], timeout=10)
    # the learner keeps following when the leader changes
    leader.kill()
    rest = [b for b in everyone if b is not leader]
    wait_for(lambda: agreed_controller(rest, newer_than=view["term"]), timeout=10)
