"""Kafka ACLs (CreateAcls, DescribeAcls, DeleteAcls) set with confluent-kafka's admin client and
checked from both protocols: a binding on the topic `T` governs the Kafka stream `T` and the
MQTT topic `T`, a literal name with MQTT wildcards is an MQTT filter. With authentication on
and `auth.acl_default = "deny"`, a user reads and writes only what a binding or a config rule
allows; a DENY binding beats a config rule's allow; only an admin (Kafka's super user) or a
user an ACL allows administers ACLs; the bindings are in the controller's log and outlive a
restart."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, ResourcePatternType, ResourceType)

import rawmqtt
from conftest import tidewater_passwd
from helpers import unique
from kafka_helpers import bootstrap, consumer, kafka_broker, produce_all, producer

pytestmark = pytest.mark.tidewater_only

USERS = {"alice": "wonderland", "bob": "builder", "root": "r00t"}
# subscribing to public/# is a config rule for everyone; the bindings do the rest
RULES = [{"permission": "allow", "action": "subscribe", "topic": "public/#"}]


def sasl(user):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": user, "sasl.password": USERS[user]}


@pytest.fixture(scope="module")
def hashes():
    return {user: tidewater_passwd(password) for user, password in USERS.items()}


@pytest.fixture
def locked(make_broker, hashes):
    users = [{"username": u, "password_hash": h, "admin": u == "root"} for u, h in hashes.items()]
    return kafka_broker(make_broker, config={"auth": {
        "allow_anonymous": False, "acl_default": "deny", "users": users, "acl": RULES}})


def admin(broker, user="root"):
    return AdminClient({"bootstrap.servers": bootstrap(broker), **sasl(user)})


def binding(name, user, operation, permission=AclPermissionType.ALLOW, pattern=ResourcePatternType.LITERAL,
            kind=ResourceType.TOPIC):
    return AclBinding(kind, name, pattern, f"User:{user}", "*", operation, permission)


def create(broker, *bindings, user="root"):
    client = admin(broker, user)  # held until the answers are in: a destroyed handle fails them
    for future in client.create_acls(list(bindings), request_timeout=15).values():
        future.result(timeout=20)


def create_topic(broker, topic):
    client = admin(broker)
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=15)


def everything():
    return AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                            AclOperation.ANY, AclPermissionType.ANY)


def listed(broker):
    client = admin(broker)
    return sorted((b.name, b.principal, b.operation.name, b.permission_type.name)
                  for b in client.describe_acls(everything(), request_timeout=15).result(timeout=20))


def read_all(broker, user, topic, count, timeout=15.0):
    """What `user` reads of `topic` partition 0 from the start: the values, or the error code."""
    cons = consumer(broker, **sasl(user))
    cons.subscribe([topic])
    values = []
    try:
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            msg = cons.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                return msg.error().code()
            values.append((msg.offset(), msg.value()))
    finally:
        cons.close()
    return values


def suback(broker, user, topic_filter, version=5):
    client = rawmqtt.RawClient(broker.host, broker.mqtt_port, version=version)
    try:
        assert client.connect(unique("acl"), username=user, password=USERS[user].encode()).reason_code == 0
        return client.subscribe((topic_filter, 1)).reason_codes[0]
    finally:
        client.close()


def produce_code(broker, user, topic):
    """The delivery error of one record produced by `user` (None: delivered)."""
    prod = producer(broker, **sasl(user), **{"message.timeout.ms": 5000, "retries": 0})
    errors = []
    prod.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
    prod.flush(10)
    assert errors, "no delivery report"
    return errors[0].code() if errors[0] else None


def test_a_read_binding_opens_a_stream_to_kafka_and_mqtt_and_deleting_it_closes_both(locked):
    topic = unique("acl").replace("/", "-")
    create_topic(locked, topic)
    produce_all(producer(locked, **sasl("root")), topic, [{"value": b"v%d" % i} for i in range(5)])
    # nothing allows alice: refused on both protocols, and the stream is not even listed to her
    assert read_all(locked, "alice", topic, 5) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert suback(locked, "alice", topic) == 0x87
    assert suback(locked, "alice", topic, version=4) == 0x80
    assert topic not in admin(locked, "alice").list_topics(timeout=10).topics

    create(locked, binding(topic, "alice", AclOperation.READ))
    assert read_all(locked, "alice", topic, 5) == [(i, b"v%d" % i) for i in range(5)]
    assert suback(locked, "alice", topic) == 1
    assert topic in admin(locked, "alice").list_topics(timeout=10).topics
    # READ is not WRITE, and bob has nothing
    assert produce_code(locked, "alice", topic) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert read_all(locked, "bob", topic, 5) == KafkaError.TOPIC_AUTHORIZATION_FAILED

    filt = AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:alice", None,
                            AclOperation.ANY, AclPermissionType.ANY)
    root = admin(locked)
    deleted = root.delete_acls([filt], request_timeout=15)[filt].result(timeout=20)
    assert [(b.name, b.principal, b.operation) for b in deleted] == [(topic, "User:alice", AclOperation.READ)]
    assert read_all(locked, "alice", topic, 5) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert suback(locked, "alice", topic) == 0x87


def test_bindings_with_mqtt_filters_and_prefixes_govern_publish_and_subscribe(locked):
    base = unique("feed")
    create(locked,
           binding(f"{base}/", "bob", AclOperation.WRITE, pattern=ResourcePatternType.PREFIXED),
           binding(f"{base}/#", "alice", AclOperation.READ))
    sub = rawmqtt.RawClient(locked.host, locked.mqtt_port)
    pub = rawmqtt.RawClient(locked.host, locked.mqtt_port)
    try:
        assert sub.connect(unique("s"), username="alice", password=b"wonderland").reason_code == 0
        assert sub.subscribe((f"{base}/#", 1)).reason_codes == [1]
        assert pub.connect(unique("p"), username="bob", password=b"builder").reason_code == 0
        assert pub.publish_acked(f"{base}/t1", b"hello").reason_code == 0
        got = sub.expect(rawmqtt.PUBLISH)
        assert (got.topic, got.payload) == (f"{base}/t1", b"hello")
        # alice may read but not write there; bob may write but not subscribe
        denied = rawmqtt.RawClient(locked.host, locked.mqtt_port)
        try:
            assert denied.connect(unique("d"), username="alice", password=b"wonderland").reason_code == 0
            assert denied.publish_acked(f"{base}/t1", b"no").reason_code == 0x87
        finally:
            denied.close()
        assert suback(locked, "bob", f"{base}/#") == 0x87
    finally:
        sub.close()
        pub.close()


def test_a_deny_binding_beats_a_config_rule_and_reaches_a_wider_subscription(locked):
    secret = f"public/{unique('secret')}"
    assert suback(locked, "bob", "public/#") == 1, "the config rule allows public/#"
    create(locked, binding(f"{secret}/#", "bob", AclOperation.READ, AclPermissionType.DENY))
    assert suback(locked, "bob", f"{secret}/x") == 0x87
    assert suback(locked, "bob", "public/#") == 0x87, "public/# could receive what is denied"
    assert suback(locked, "alice", "public/#") == 1, "the deny names bob only"


def test_a_binding_for_a_host_applies_to_mqtt_clients_from_it_only(locked):
    near, far = f"public/{unique('near')}", f"public/{unique('far')}"
    for name, host in [(near, "127.0.0.1"), (far, "10.1.2.3")]:
        client = admin(locked)
        deny = AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, "User:*", host,
                          AclOperation.READ, AclPermissionType.DENY)
        for future in client.create_acls([deny], request_timeout=15).values():
            future.result(timeout=20)
    assert suback(locked, "alice", near) == 0x87, "denied from this client's address"
    assert suback(locked, "alice", far) == 1, "the deny names another address: the config rule allows"


def test_only_an_admin_or_a_user_an_acl_allows_administers_acls(locked):
    topic = unique("adm").replace("/", "-")
    with pytest.raises(KafkaException) as refused:
        create(locked, binding(topic, "alice", AclOperation.READ), user="alice")
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # nor may she see the bindings: the answer is CLUSTER_AUTHORIZATION_FAILED, which librdkafka
    # 2.16 hands to the application as an empty list
    create(locked, binding(topic, "bob", AclOperation.WRITE))
    alice = admin(locked, "alice")
    try:
        seen = alice.describe_acls(everything(), request_timeout=15).result(timeout=20)
    except KafkaException as refused:
        assert refused.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
        seen = []
    assert seen == [] and listed(locked) == [(topic, "User:bob", "WRITE", "ALLOW")]
    assert "kafka administration refused" in locked.log_text()
    # ALTER on the cluster makes alice an ACL administrator, CREATE on it lets her create streams
    create(locked, binding("kafka-cluster", "alice", AclOperation.ALTER, kind=ResourceType.BROKER),
           binding("kafka-cluster", "alice", AclOperation.CREATE, kind=ResourceType.BROKER))
    create(locked, binding(topic, "bob", AclOperation.READ), user="alice")
    alice.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=15)
    assert sorted(listed(locked)) == sorted([
        (topic, "User:bob", "READ", "ALLOW"), (topic, "User:bob", "WRITE", "ALLOW"),
        ("kafka-cluster", "User:alice", "ALTER", "ALLOW"), ("kafka-cluster", "User:alice", "CREATE", "ALLOW")])
    # as in Kafka, ALTER allowed implies DESCRIBE: she now sees them too
    assert len(alice.describe_acls(everything(), request_timeout=15).result(timeout=20)) == 4
    # a binding Kafka would refuse is refused with INVALID_REQUEST
    with pytest.raises(KafkaException) as invalid:
        create(locked, AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "alice", "*",
                                  AclOperation.READ, AclPermissionType.ALLOW))
    assert invalid.value.args[0].code() == KafkaError.INVALID_REQUEST


def test_a_group_named_by_a_binding_is_closed_to_other_users(locked):
    topic = unique("grp").replace("/", "-")
    group = unique("g").replace("/", "-")
    create_topic(locked, topic)
    produce_all(producer(locked, **sasl("root")), topic, [{"value": b"x"}])
    create(locked, binding(topic, "*", AclOperation.READ),
           binding(group, "alice", AclOperation.READ, kind=ResourceType.GROUP))
    for user, expected in [("alice", None), ("bob", KafkaError.GROUP_AUTHORIZATION_FAILED)]:
        cons = consumer(locked, group=group, **sasl(user))
        try:
            cons.subscribe([topic])
            deadline, outcome = time.monotonic() + 20, "nothing"
            while time.monotonic() < deadline:
                msg = cons.poll(0.5)
                if msg is None:
                    continue
                outcome = msg.error().code() if msg.error() else None
                break
            assert outcome == expected, (user, outcome)
        finally:
            cons.close()


def test_bindings_outlive_a_restart(locked):
    topic = unique("keep").replace("/", "-")
    create(locked, binding(topic, "alice", AclOperation.READ),
           binding(topic, "bob", AclOperation.ALL, AclPermissionType.DENY))
    before = listed(locked)
    assert (topic, "User:alice", "READ", "ALLOW") in before
    locked.restart()
    assert listed(locked) == before
    assert suback(locked, "alice", topic) == 1
    assert suback(locked, "bob", topic) == 0x87


def anonymous_suback(node, topic_filter):
    client = rawmqtt.RawClient(node.host, node.mqtt_port)
    try:
        assert client.connect(unique("anon")).reason_code == 0
        return client.subscribe((topic_filter, 1)).reason_codes[0]
    finally:
        client.close()


def test_a_binding_created_on_one_node_is_in_force_on_every_node_of_the_cluster(make_broker):
    from test_replication import cluster_of_three
    from test_cluster import wait_for
    nodes = cluster_of_three(make_broker)
    topic = unique("everywhere").replace("/", "-")
    # a node without [auth]: everyone is User:ANONYMOUS, matched by User:*
    first = AdminClient({"bootstrap.servers": bootstrap(nodes[0])})
    deny = binding(topic, "*", AclOperation.READ, AclPermissionType.DENY)
    for future in first.create_acls([deny], request_timeout=15).values():
        future.result(timeout=20)
    for node in nodes:
        wait_for(lambda node=node: anonymous_suback(node, topic) == 0x87, timeout=10, step=0.2)
        assert anonymous_suback(node, "other") == 1
    filt = AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.ANY, None, None,
                            AclOperation.ANY, AclPermissionType.ANY)
    last = AdminClient({"bootstrap.servers": bootstrap(nodes[2])})
    assert len(last.delete_acls([filt], request_timeout=15)[filt].result(timeout=20)) == 1
    for node in nodes:
        wait_for(lambda node=node: anonymous_suback(node, topic) == 1, timeout=10, step=0.2)
