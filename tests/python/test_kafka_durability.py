"""Retention by time and by size, and SIGKILL of the broker while Kafka producers (acks=all) and
MQTT QoS 1 publishers write: what was acknowledged is there after a restart, nothing is corrupt."""

import os
import threading
import time

import pytest
from confluent_kafka import KafkaError, TopicPartition

from helpers import Client, unique
from kafka_helpers import (OFFSET_OUT_OF_RANGE, consumer, create_stream, http, http_offsets,
                           kafka_broker, produce_all, producer, read_partitions, to_rec, wait_for,
                           watermarks)
from kafka_raw import RawKafka

pytestmark = pytest.mark.tidewater_only

FAST_RETENTION = {"retention_check_ms": 200}


def first_record_from_zero(broker, topic, reset):
    """Assign offset 0 of partition 0 with auto.offset.reset=`reset`: (first Rec or None, error)."""
    cons = consumer(broker, **{"auto.offset.reset": reset})
    try:
        cons.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                return None, msg.error()
            return to_rec(msg), None
        raise AssertionError("neither a record nor an error within 15s")
    finally:
        cons.close()


def test_retention_by_time(make_broker):
    broker = kafka_broker(make_broker, kafka=FAST_RETENTION)
    topic = unique("rt")
    create_stream(broker, topic, partitions=1, retention_ms=3000)
    prod = producer(broker)
    produce_all(prod, topic, [{"value": f"old-{i}".encode(), "partition": 0} for i in range(10)])
    assert watermarks(broker, topic, 0) == (0, 10)

    # the first records expire: the log start moves to the end, offsets are not reused
    wait_for(lambda: watermarks(broker, topic, 0) == (10, 10), timeout=15,
             message="log start offset 10 after retention")
    assert http_offsets(broker, topic)[0] == (10, 10, 10)

    # a Fetch at offset 0 is out of range, and so says a consumer with auto.offset.reset=error
    with RawKafka(broker) as raw:
        assert raw.fetch(topic, 0, 0)[0] == OFFSET_OUT_OF_RANGE
        assert raw.list_offsets(topic, 0, -2) == (0, 10)
    rec, err = first_record_from_zero(broker, topic, "error")
    assert rec is None and err.code() == KafkaError._AUTO_OFFSET_RESET, err
    assert "out of range" in err.str().lower(), err.str()

    produce_all(prod, topic, [{"value": f"new-{i}".encode(), "partition": 0} for i in range(5)])
    # with auto.offset.reset=earliest it starts at the new log start
    rec, err = first_record_from_zero(broker, topic, "earliest")
    assert err is None, err
    assert (rec.offset, rec.value) == (10, b"new-0")
    got = read_partitions(broker, topic, [0])[0]
    assert [(r.offset, r.value) for r in got] == [(10 + i, f"new-{i}".encode()) for i in range(5)]

    wait_for(lambda: watermarks(broker, topic, 0) == (15, 15), timeout=15,
             message="the second batch expired too")
    assert produce_all(prod, topic, [{"value": b"after", "partition": 0}]) == [(0, 15)]


def test_retention_by_size(make_broker):
    broker = kafka_broker(make_broker, kafka=FAST_RETENTION)
    topic = unique("rb")
    limit, value_size, count = 3000, 500, 20
    create_stream(broker, topic, partitions=1, retention_bytes=limit)
    values = [f"{i:04d}".encode() + b"x" * (value_size - 4) for i in range(count)]
    # one batch per record, so that retention can remove them one by one
    produce_all(producer(broker, **{"linger.ms": 0}), topic,
                [{"value": v, "partition": 0} for v in values], flush_each=True)

    wait_for(lambda: watermarks(broker, topic, 0)[0] > 0, timeout=15,
             message="log start offset moves forward")
    time.sleep(1.0)  # several more retention runs: the result is stable
    low, high = watermarks(broker, topic, 0)
    assert high == count
    kept = high - low
    # what is left fits in the limit, and no more was removed than needed (a batch of one
    # 500-byte record takes between 500 and 700 bytes)
    assert kept * value_size <= limit, kept
    assert kept >= limit // (value_size + 200), kept
    assert http_offsets(broker, topic)[0][:2] == (low, high)
    got = read_partitions(broker, topic, [0])[0]
    assert [(r.offset, r.value) for r in got] == [(o, values[o]) for o in range(low, high)]
    rec, err = first_record_from_zero(broker, topic, "earliest")
    assert err is None and rec.offset == low


# ---------------------------------------------------------------------------------------------
# SIGKILL while writing


class MqttWriter(threading.Thread):
    """Publishes QoS 1 messages one at a time and records each one the broker acknowledged."""

    def __init__(self, broker, topic):
        super().__init__(daemon=True)
        self.client = Client(broker)
        self.client.connect()
        self.topic = topic
        self.acked = []
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            payload = f"mq-{i:06d}"
            try:
                self.client.publish(self.topic, payload.encode(), qos=1, timeout=3)
            except Exception:  # noqa: BLE001 - the broker went away: stop writing
                return
            self.acked.append(payload)
            i += 1


def write_until_killed(broker, topic, mqtt_topic):
    """Kafka acks=all producing and MQTT QoS 1 publishing until the broker is SIGKILLed mid-way.
    Returns ({value: offset} acknowledged to the producer, [payloads acknowledged over MQTT])."""
    writer = MqttWriter(broker, mqtt_topic)
    writer.start()
    prod = producer(broker, **{"acks": "all", "linger.ms": 2, "batch.num.messages": 20,
                               "retries": 0, "enable.idempotence": False,
                               "message.timeout.ms": 5000})
    acked = {}

    def on_delivery(err, msg):
        if err is None:
            acked[msg.value().decode()] = msg.offset()

    started = time.monotonic()
    killed_at = None
    i = 0
    while True:
        now = time.monotonic()
        if killed_at is None and (now - started > 1.5 and len(acked) >= 200
                                  and len(writer.acked) >= 20 or now - started > 10):
            broker.proc.kill()  # SIGKILL mid-stream
            killed_at = now
        if killed_at is not None and now - killed_at > 0.5:
            break
        try:
            prod.produce(topic, f"rec-{i:06d}".encode(), partition=0, on_delivery=on_delivery)
            i += 1
        except BufferError:
            pass
        prod.poll(0.001 if i % 10 == 0 else 0)
    broker.proc.wait(timeout=10)
    writer.stop.set()
    writer.join(timeout=10)
    writer.client.close()
    prod.purge()  # what is still in flight was not acknowledged
    prod.flush(10)
    assert len(acked) >= 100 and len(writer.acked) >= 10, (len(acked), len(writer.acked))
    return acked, writer.acked


def check_log_after_restart(broker, topic, mqtt_stream):
    """Both logs read from offset 0 to the end without error or gap; returns their records."""
    kafka_recs = read_partitions(broker, topic, [0])[0]
    mqtt_recs = read_partitions(broker, mqtt_stream, [0])[0]
    for recs in (kafka_recs, mqtt_recs):
        assert [r.offset for r in recs] == list(range(len(recs))), "offsets not contiguous from 0"
        values = [r.value for r in recs]
        assert values == sorted(values) and len(set(values)) == len(values), \
            "records out of order or stored twice"
    assert all(r.value.startswith(b"rec-") for r in kafka_recs)
    assert all(r.key == b"kill/m" and r.value.startswith(b"mq-") for r in mqtt_recs)
    # the log takes new writes at its end
    prod = producer(broker)
    assert produce_all(prod, topic, [{"value": b"after-restart", "partition": 0}]) == \
        [(0, len(kafka_recs))]
    with Client(broker) as pub:
        pub.connect()
        pub.publish("kill/m", b"mq-999999", qos=1)
    wait_for(lambda: http_offsets(broker, mqtt_stream)[0][1] == len(mqtt_recs) + 1,
             message="MQTT publish appended after the restart")
    return kafka_recs, mqtt_recs


def start_for_kill(make_broker, fsync):
    mqtt_stream = unique("km")
    broker = kafka_broker(make_broker, storage={"fsync": fsync}, streams=[
        {"name": mqtt_stream, "kind": "bound", "filter": "kill/#", "partitions": 1}])
    topic = unique("kk")
    create_stream(broker, topic, partitions=1)
    return broker, topic, mqtt_stream


def test_sigkill_keeps_every_acknowledged_record_with_fsync_always(make_broker):
    broker, topic, mqtt_stream = start_for_kill(make_broker, "always")
    acked, mqtt_acked = write_until_killed(broker, topic, "kill/m")
    broker.start()
    kafka_recs, mqtt_recs = check_log_after_restart(broker, topic, mqtt_stream)

    # every record acknowledged to the producer is at the offset it was acknowledged with
    stored = {r.offset: r.value.decode() for r in kafka_recs}
    lost = {v: o for v, o in acked.items() if stored.get(o) != v}
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged records lost or moved: " \
                     f"{sorted(lost.items(), key=lambda x: x[1])[:10]}"
    # every MQTT message acknowledged (PUBACK) is in the bound stream, in publish order
    payloads = [r.value.decode() for r in mqtt_recs]
    missing = set(mqtt_acked) - set(payloads)
    assert not missing, f"{len(missing)} of {len(mqtt_acked)} acknowledged MQTT messages lost"
    assert payloads[:len(mqtt_acked)] == mqtt_acked


def test_sigkill_with_interval_fsync_leaves_no_corruption(make_broker):
    # With the default fsync = "interval:100", a record may be acknowledged before it is synced,
    # so a SIGKILL may lose the last acknowledged records: that is allowed here. What must hold
    # is that the log reopens cleanly: contiguous offsets from 0, every record readable and
    # intact (no torn or reordered batch), and new writes continue at the end.
    broker, topic, mqtt_stream = start_for_kill(make_broker, "interval:100")
    acked, mqtt_acked = write_until_killed(broker, topic, "kill/m")
    broker.start()
    kafka_recs, _ = check_log_after_restart(broker, topic, mqtt_stream)
    # what survived is what was written, where it was written (a stored record that the
    # producer saw acknowledged carries its acknowledged offset)
    for rec in kafka_recs:
        value = rec.value.decode()
        if value in acked:
            assert acked[value] == rec.offset, (value, acked[value], rec.offset)


# ---------------------------------------------------------------------------------------------
# Disk follows retention and deletion


def dir_bytes(path) -> int:
    """Disk blocks used by every file under `path`, in bytes (what `du` counts: fjall's
    preallocated journal is sparse, so its apparent size would not mean disk)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass  # removed while walking
    return total


def produce_random(broker, topic, megabytes):
    """`megabytes` MB of incompressible 1 KB records into partition 0; returns how many."""
    count = megabytes * 1024
    prod = producer(broker, **{"linger.ms": 20, "batch.size": 262144, "compression.type": "none"})
    produce_all(prod, topic, [{"value": os.urandom(1024), "partition": 0} for _ in range(count)])
    return count


def test_retention_and_delete_free_the_data_dir(make_broker):
    # 1 MiB segments, so that retention frees disk a segment at a time
    broker = kafka_broker(make_broker, kafka=FAST_RETENTION, storage={"segment_bytes": 1048576})
    kept, doomed = unique("disk"), unique("doomed")
    create_stream(broker, kept, partitions=1, retention_ms=15000)
    create_stream(broker, doomed, partitions=1)
    empty = dir_bytes(broker.data_dir)

    count = produce_random(broker, kept, 30)
    produce_random(broker, doomed, 20)
    full = dir_bytes(broker.data_dir)
    assert full > empty + 45_000_000, (empty, full)

    # once the records expire, retention moves the log start to the end and removes every
    # segment below it: the data dir gives back the 30 MB
    wait_for(lambda: watermarks(broker, kept, 0) == (count, count), timeout=40,
             message="every record of the kept stream expired")
    wait_for(lambda: dir_bytes(broker.data_dir) < full - 29_000_000, timeout=5,
             message=f"data dir below {full - 29_000_000} bytes after retention (was {full})")

    # deleting a stream removes its files at once
    before_delete = dir_bytes(broker.data_dir)
    status, _, text = http(broker, "DELETE", f"/api/v1/streams/{doomed}")
    assert status in (200, 204), (status, text)
    after_delete = dir_bytes(broker.data_dir)
    assert after_delete < before_delete - 19_000_000, (before_delete, after_delete)
    assert after_delete < empty + 2_000_000, (empty, after_delete)

    # a restart gives nothing back, and the offsets go on from where they were
    broker.restart()
    assert dir_bytes(broker.data_dir) < after_delete + 1_000_000
    assert watermarks(broker, kept, 0) == (count, count)
    prod = producer(broker)
    assert produce_all(prod, kept, [{"value": b"after", "partition": 0}]) == [(0, count)]


def topic_config(admin, topic, key):
    from confluent_kafka.admin import ConfigResource, ResourceType
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(timeout=15)[key]


def test_retention_changes_at_run_time_through_both_alter_configs_apis(make_broker):
    """IncrementalAlterConfigs (confluent-kafka) and AlterConfigs (kafka-python) change a stream's
    retention while it runs: the next retention pass applies it, what it keeps is untouched,
    and bad changes get INVALID_CONFIG naming the key."""
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                       ResourceType)
    from kafka.admin import ConfigResource as PyConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient
    from kafka_helpers import admin_client, bootstrap

    broker = kafka_broker(make_broker, kafka=FAST_RETENTION)
    topic = unique("alter")
    create_stream(broker, topic, partitions=1)
    admin = admin_client(broker)
    entry = topic_config(admin, topic, "retention.bytes")
    assert (entry.value, entry.source) == ("-1", ConfigSource.DEFAULT_CONFIG.value)
    value_size, count = 500, 20
    values = [f"{i:04d}".encode() + b"x" * (value_size - 4) for i in range(count)]
    prod = producer(broker, **{"linger.ms": 0})
    produce_all(prod, topic, [{"value": v, "partition": 0} for v in values], flush_each=True)
    time.sleep(0.6)  # retention passes run: nothing goes without a limit
    assert watermarks(broker, topic, 0) == (0, count)

    def incremental(*entries):
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
        return admin.incremental_alter_configs([resource])[resource].result(timeout=15)

    incremental(ConfigEntry("retention.bytes", "3000", incremental_operation=AlterConfigOpType.SET))
    entry = topic_config(admin, topic, "retention.bytes")
    assert (entry.value, entry.source) == ("3000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    wait_for(lambda: watermarks(broker, topic, 0)[0] > 0, timeout=15, message="the new limit applied")
    low, high = watermarks(broker, topic, 0)
    assert high == count and (count - low) * value_size <= 3000, (low, high)
    got = read_partitions(broker, topic, [0])[0]
    assert [(r.offset, r.value) for r in got] == [(o, values[o]) for o in range(low, count)]

    # min.insync.replicas up to a majority of the replicas (here: the one) is taken
    incremental(ConfigEntry("min.insync.replicas", "1", incremental_operation=AlterConfigOpType.SET))
    # bad changes: a value, a key we do not take, a read-only key, a floor above a majority of
    # the replicas (acks=all could never be answered), an unknown topic
    for key, value in (("retention.bytes", "lots"), ("cleanup.policy", "compact"),
                       ("tidewater.stream.kind", "bound"), ("unclean.leader.election.enable", "true"),
                       ("min.insync.replicas", "2"), ("min.insync.replicas", "0")):
        with pytest.raises(Exception) as refused:
            incremental(ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET))
        error = refused.value.args[0]
        assert error.code() == KafkaError.INVALID_CONFIG and key in error.str(), error
    missing = ConfigResource(ResourceType.TOPIC, unique("nope"),
                             incremental_configs=[ConfigEntry("retention.ms", "1000",
                                                              incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(Exception) as refused:
        admin.incremental_alter_configs([missing])[missing].result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert topic_config(admin, topic, "retention.bytes").value == "3000", "a refused change changes nothing"

    # DELETE returns the key to its default: no limit again
    incremental(ConfigEntry("retention.bytes", None, incremental_operation=AlterConfigOpType.DELETE))
    assert topic_config(admin, topic, "retention.bytes").value == "-1"

    # the legacy AlterConfigs (kafka-python) replaces the topic's configs: retention.ms set,
    # retention.bytes (not named) stays at its default; it survives a restart
    legacy = KafkaAdminClient(bootstrap_servers=bootstrap(broker), request_timeout_ms=15000)
    try:
        answer = legacy.alter_configs([PyConfigResource(ConfigResourceType.TOPIC, topic,
                                                        configs={"retention.ms": "2000"})],
                                      raise_on_unknown=False, incremental=False)
        assert answer == {"topic": {topic: "OK"}}, answer
        refused = legacy.alter_configs([PyConfigResource(ConfigResourceType.TOPIC, topic,
                                                         configs={"retention.ms": "-7"})],
                                       raise_on_unknown=False, incremental=False)
        assert "InvalidConfig" in refused["topic"][topic] and "retention.ms" in refused["topic"][topic], refused
    finally:
        legacy.close()
    assert topic_config(admin, topic, "retention.ms").value == "2000"
    broker.restart()
    admin = admin_client(broker)
    assert topic_config(admin, topic, "retention.ms").value == "2000"
    assert topic_config(admin, topic, "retention.bytes").value == "-1"
    wait_for(lambda: watermarks(broker, topic, 0) == (count, count), timeout=15,
             message="the two-second limit removed every record")
