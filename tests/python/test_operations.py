"""Operating the binary: /health, /metrics, configuration errors and precedence, signals."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import rawmqtt
from conftest import TIDEWATER_BIN, broker_env, free_port, free_udp_port, metric_names, metric_sum
from helpers import Client, connected, raw, unique, wait_until

METRICS = {
    "gauges": ["tidewater_mqtt_connections", "tidewater_mqtt_sessions",
               "tidewater_mqtt_subscriptions", "tidewater_mqtt_retained_messages"],
    "counters": ["tidewater_mqtt_messages_received_total", "tidewater_mqtt_messages_sent_total",
                 "tidewater_mqtt_bytes_received_total", "tidewater_mqtt_bytes_sent_total",
                 "tidewater_mqtt_messages_dropped_total"],
}


# -- signals (both brokers) -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_broker_with_exit_code_0(make_broker, sig):
    broker = make_broker()
    clients = [connected(broker, version=v) for v in (4, 5)]
    clients[0].subscribe(unique("op/sig"), qos=1)
    try:
        start = time.monotonic()
        broker.proc.send_signal(sig)
        code = broker.proc.wait(timeout=10)
        assert code == 0
        assert time.monotonic() - start < 5, "graceful shutdown took more than 5 s"
    finally:
        for client in clients:
            client.close()


# -- HTTP -----------------------------------------------------------------------------------------


@pytest.mark.tidewater_only
def test_health_answers_ok(broker):
    status, body = broker.http_get("/health")
    assert status == 200
    assert body.strip() == "ok"


@pytest.mark.tidewater_only
def test_metrics_exposes_documented_names(broker):
    with connected(broker):  # make sure every family has had a reason to exist
        pass
    status, text = broker.http_get("/metrics")
    assert status == 200
    names = metric_names(broker.metrics())
    for name in METRICS["gauges"] + METRICS["counters"]:
        assert name in names or f"# TYPE {name}" in text, f"{name} missing from /metrics"
    for name in METRICS["gauges"]:
        if f"# TYPE {name} " in text:
            assert f"# TYPE {name} gauge" in text
    for name in METRICS["counters"]:
        if f"# TYPE {name} " in text:
            assert f"# TYPE {name} counter" in text


@pytest.mark.tidewater_only
def test_connection_and_subscription_gauges_follow_clients(broker):
    def gauge(name):
        return metric_sum(broker.metrics(), name)

    base_conn, base_subs = gauge("tidewater_mqtt_connections"), gauge("tidewater_mqtt_subscriptions")
    clients = [connected(broker), connected(broker, version=4)]
    wait_until(lambda: gauge("tidewater_mqtt_connections") == base_conn + 2, message="connections +2")
    clients[0].subscribe(unique("op/g1"), qos=1)
    clients[0].subscribe(unique("op/g2"), qos=0)
    clients[1].subscribe(unique("op/g3"), qos=1)
    wait_until(lambda: gauge("tidewater_mqtt_subscriptions") == base_subs + 3,
               message="subscriptions +3")
    assert gauge("tidewater_mqtt_sessions") >= 2
    for client in clients:
        client.disconnect()
    wait_until(lambda: gauge("tidewater_mqtt_connections") == base_conn, message="connections back")
    wait_until(lambda: gauge("tidewater_mqtt_subscriptions") == base_subs,
               message="clean sessions' subscriptions removed")


@pytest.mark.tidewater_only
def test_persistent_session_counted_while_offline(broker):
    def sessions():
        return metric_sum(broker.metrics(), "tidewater_mqtt_sessions")

    before = sessions()
    client = Client(broker, clean=False, session_expiry=300)
    client.connect()
    client.disconnect()
    wait_until(lambda: sessions() == before + 1, message="offline persistent session counted")
    wait_until(lambda: metric_sum(broker.metrics(), "tidewater_mqtt_connections") == 0,
               message="no connection left")


@pytest.mark.tidewater_only
def test_message_counters(broker):
    topic = unique("op/count")
    before = broker.metrics()
    with connected(broker) as sub, connected(broker) as pub:
        sub.subscribe(topic, qos=1)
        for i in range(7):
            pub.publish(topic, b"x" * 100, qos=1)
        for i in range(3):
            pub.publish(topic, b"y" * 100, qos=0)
        sub.wait_messages(10)

        def delta(name, **labels):
            return metric_sum(broker.metrics(), name, **labels) - metric_sum(before, name, **labels)

        def counts():
            return (delta("tidewater_mqtt_messages_received_total", qos=1),
                    delta("tidewater_mqtt_messages_received_total", qos=0),
                    delta("tidewater_mqtt_messages_sent_total", qos=1),
                    delta("tidewater_mqtt_messages_sent_total", qos=0))

        # counters may trail the deliveries by a moment: wait (bounded) for the exact values
        deadline = time.monotonic() + 5
        while counts() != (7, 3, 7, 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counts() == (7, 3, 7, 3), "(received q1, received q0, sent q1, sent q0)"
        assert delta("tidewater_mqtt_bytes_received_total") >= 1000
        assert delta("tidewater_mqtt_bytes_sent_total") >= 1000


@pytest.mark.tidewater_only
def test_retained_gauge(broker):
    def retained():
        return metric_sum(broker.metrics(), "tidewater_mqtt_retained_messages")

    before = retained()
    topic = unique("op/ret")
    with connected(broker) as pub:
        pub.publish(topic, b"r", qos=1, retain=True)
        pub.publish(f"{topic}/2", b"r", qos=1, retain=True)
        wait_until(lambda: retained() == before + 2, message="two retained messages")
        pub.publish(topic, b"", qos=1, retain=True)
        wait_until(lambda: retained() == before + 1, message="one retained message cleared")


@pytest.mark.tidewater_only
def test_unknown_http_path_is_404(broker):
    assert broker.http_get("/no-such-thing")[0] == 404


# -- configuration --------------------------------------------------------------------------------


def run_start(tmp_path, config=None, env=None, timeout=20, config_path=None):
    """Run `tidewater start` expecting it to fail; returns (exit code, stderr)."""
    cmd = [TIDEWATER_BIN, "start", "--node-id", "1", "--data-dir", str(tmp_path / "data"),
           "--mqtt-listen", f"127.0.0.1:{free_port()}", "--kafka-listen", f"127.0.0.1:{free_port()}",
           "--http-listen", f"127.0.0.1:{free_port()}", "--rpc-listen", f"127.0.0.1:{free_port()}",
           "--gossip-listen", f"127.0.0.1:{free_udp_port()}"]
    if config is not None:
        config_path = tmp_path / "bad.toml"
        config_path.write_text(config)
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    full_env = broker_env(env)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"tidewater start kept running with a bad configuration; stderr:\n{err}")
    return proc.returncode, err


@pytest.mark.tidewater_only
@pytest.mark.parametrize("config,key", [
    ("[mqtt]\nmax_pakcet_size = 2048\n", "mqtt.max_pakcet_size"),
    ("nodeid = 3\n", "nodeid"),
    ("[mqqt]\nmax_inflight = 3\n", "mqqt"),
    ("[auth]\nallow_anonymus = false\n", "auth.allow_anonymus"),
], ids=["nested", "top-level", "unknown-table", "auth"])
def test_unknown_config_key_is_an_error_naming_it(tmp_path, config, key):
    code, err = run_start(tmp_path, config=config)
    assert code != 0
    assert key.split(".")[-1] in err, f"stderr does not name {key}: {err!r}"


@pytest.mark.tidewater_only
@pytest.mark.parametrize("config,key", [
    ('[mqtt]\nmax_packet_size = "big"\n', "max_packet_size"),
    ('[mqtt]\nqueue_overflow = "drop_sideways"\n', "queue_overflow"),
    ('[auth]\nacl_default = "maybe"\n', "acl_default"),
    ('[storage]\nfsync = "sometimes"\n', "fsync"),
    ('[mqtt]\nmax_inflight = -1\n', "max_inflight"),
    ('[[auth.acl]]\npermission = "allow"\naction = "fly"\ntopic = "a/#"\n', "action"),
], ids=["type", "enum", "acl-default", "fsync", "negative", "acl-action"])
def test_invalid_config_value_is_an_error_naming_the_key(tmp_path, config, key):
    code, err = run_start(tmp_path, config=config)
    assert code != 0
    assert key in err, f"stderr does not name {key}: {err!r}"


@pytest.mark.tidewater_only
def test_unreadable_toml_is_an_error(tmp_path):
    code, err = run_start(tmp_path, config="[mqtt\nmax_inflight = 3\n")
    assert code != 0
    assert err.strip()


@pytest.mark.tidewater_only
def test_missing_config_file_is_an_error(tmp_path):
    missing = tmp_path / "does-not-exist.toml"
    code, err = run_start(tmp_path, config_path=missing)
    assert code != 0
    assert "does-not-exist.toml" in err


@pytest.mark.tidewater_only
@pytest.mark.parametrize("env,key", [
    ({"TIDEWATER_MQTT__MAX_PAKCET_SIZE": "2048"}, "max_pakcet_size"),
    ({"TIDEWATER_NODEID": "2"}, "nodeid"),
], ids=["nested", "top-level"])
def test_unknown_environment_key_is_an_error_naming_it(tmp_path, env, key):
    code, err = run_start(tmp_path, env=env)
    assert code != 0
    assert key in err.lower(), f"stderr does not name {key}: {err!r}"


@pytest.mark.tidewater_only
def test_invalid_environment_value_is_an_error(tmp_path):
    code, err = run_start(tmp_path, env={"TIDEWATER_MQTT__MAX_INFLIGHT": "lots"})
    assert code != 0
    assert "max_inflight" in err.lower()


@pytest.mark.tidewater_only
def test_environment_overrides_config_file(make_broker):
    broker = make_broker(config={"mqtt": {"max_packet_size": 100000}},
                         env={"TIDEWATER_MQTT__MAX_PACKET_SIZE": "2048"})
    with raw(broker, 5) as client:
        ack = client.connect(unique("env"))
        assert ack.props.get("maximum_packet_size") == 2048
        client.publish("op/env", b"z" * 4000, qos=0)
        packets = client.wait_closed()
        assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0x95)]


@pytest.mark.tidewater_only
def test_flags_override_config_file_listeners(make_broker):
    config_port = free_port()
    broker = make_broker(config={"listeners": {"mqtt": f"127.0.0.1:{config_port}"}})
    with raw(broker, 5) as client:  # the fixture's --mqtt-listen flag wins
        assert client.connect(unique("flag")).reason_code == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", config_port), timeout=2)


@pytest.mark.tidewater_only
def test_config_file_settings_apply(make_broker):
    broker = make_broker(config={"mqtt": {"max_topic_alias": 7, "max_inflight": 5},
                                 "storage": {"fsync": "always"}, "log_level": "debug"})
    with raw(broker, 5) as client:
        ack = client.connect(unique("cfg"))
        assert ack.props.get("topic_alias_maximum") == 7
        assert ack.props.get("receive_maximum") == 5


@pytest.mark.tidewater_only
def test_session_expiry_clamped_to_maximum(make_broker):
    broker = make_broker(config={"mqtt": {"max_session_expiry": 5}})
    with raw(broker, 5) as client:
        ack = client.connect(unique("clamp"), clean=False, props={"session_expiry_interval": 3600})
        assert ack.props.get("session_expiry_interval") == 5


@pytest.mark.tidewater_only
def test_data_dir_holds_state_between_runs(make_broker):
    broker = make_broker()
    with connected(broker) as pub:
        pub.publish(unique("op/dd"), b"r", qos=1, retain=True)
    broker.restart()
    assert any(Path(broker.data_dir).iterdir()), "nothing written to --data-dir"
