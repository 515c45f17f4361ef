"""SASL PLAIN and SCRAM-SHA-256/512 on the Kafka listener (SASL_PLAINTEXT), against the users
MQTT knows: with anonymous access off, confluent-kafka, kcat and kafka-python authenticate and
read what they wrote; a wrong password gets SASL_AUTHENTICATION_FAILED and a log line at info
(for SCRAM too, and for a SCRAM mechanism the user's hash does not serve); a client that
does not authenticate is served nothing; only a user with admin = true creates or deletes
streams (auto-creation included)."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import tidewater_passwd
from helpers import unique
from kafka_helpers import bootstrap, consumer, kcat, kafka_broker, poll_records, produce_all, producer

pytestmark = pytest.mark.tidewater_only

USERS = {"alice": "wonderland", "bob": "builder"}
ROOT = ("root", "r00t")
# a user whose password_hash is pbkdf2-sha512 (`tidewater passwd --sha512`): SCRAM-SHA-512
CAROL = ("carol", "c,a=r0l")


def sasl(user, password, mechanism="PLAIN"):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


@pytest.fixture(scope="module")
def hashes():
    hashed = {user: tidewater_passwd(password) for user, password in [*USERS.items(), ROOT]}
    hashed[CAROL[0]] = tidewater_passwd(CAROL[1], "--sha512")
    assert hashed[CAROL[0]].startswith("pbkdf2-sha512$"), hashed[CAROL[0]]
    return hashed


@pytest.fixture
def locked(make_broker, hashes):
    users = [{"username": user, "password_hash": hashes[user], "admin": user == ROOT[0]} for user in hashes]
    return kafka_broker(make_broker, config={"auth": {"allow_anonymous": False, "users": users}})


def create_as_root(broker, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap(broker), **sasl(*ROOT)})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=15)


def test_only_an_admin_user_creates_and_deletes_streams(locked):
    topic = unique("adm").replace("/", "-")
    alice = AdminClient({"bootstrap.servers": bootstrap(locked), **sasl("alice", "wonderland")})
    with pytest.raises(KafkaException) as refused:
        alice.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # nor does producing to it create it
    prod = producer(locked, **sasl("alice", "wonderland"), **{"message.timeout.ms": 3000})
    prod.produce(topic, b"x")
    prod.flush(6)
    assert topic not in alice.list_topics(timeout=5).topics
    create_as_root(locked, topic)
    assert topic in alice.list_topics(timeout=5).topics
    with pytest.raises(KafkaException) as refused:
        alice.delete_topics([topic])[topic].result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert topic in alice.list_topics(timeout=5).topics, "a refused delete leaves the stream"
    assert "kafka administration refused" in locked.log_text()
    root = AdminClient({"bootstrap.servers": bootstrap(locked), **sasl(*ROOT)})
    root.delete_topics([topic])[topic].result(timeout=15)


def test_a_user_authenticates_with_plain_and_reads_what_it_wrote(locked):
    topic = unique("sasl").replace("/", "-")
    create_as_root(locked, topic)
    prod = producer(locked, **sasl("alice", "wonderland"))
    produce_all(prod, topic, [{"value": b"v%d" % i, "key": b"k", "headers": [("h", b"1")]} for i in range(20)])
    cons = consumer(locked, **sasl("bob", "builder"))
    cons.subscribe([topic])
    try:
        got = poll_records(cons, 20)
    finally:
        cons.close()
    assert [r.value for r in got] == [b"v%d" % i for i in range(20)]
    assert [r.offset for r in got] == list(range(20))
    assert all(r.headers == [("h", b"1")] for r in got)


def authentication_errors(broker, conf):
    """The errors a client with `conf` reports; asserts that one is an authentication failure."""
    errors = []
    admin = AdminClient({"bootstrap.servers": bootstrap(broker), **conf, "error_cb": errors.append})
    with pytest.raises(KafkaException) as refused:
        admin.list_topics(timeout=5)
    deadline = time.monotonic() + 10
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        admin.poll(0.2)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), (refused.value, errors)
    return errors


def test_a_wrong_password_is_refused_with_sasl_authentication_failed_and_logged(locked):
    errors = authentication_errors(locked, sasl("alice", "wrong"))
    assert any("invalid username or password" in e.str() for e in errors), errors
    lines = [line for line in locked.log_text().splitlines() if "kafka connection refused" in line]
    assert lines and "INFO" in lines[0] and "127.0.0.1" in lines[0], lines


def test_a_client_that_does_not_authenticate_is_served_nothing(locked):
    admin = AdminClient({"bootstrap.servers": bootstrap(locked), "socket.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=4)
    assert "a request before SASL authentication" in locked.log_text()


def kcat_sasl(mechanism, user, password):
    """kcat's arguments for SASL_PLAINTEXT; the password comes last."""
    return ["-X", "security.protocol=SASL_PLAINTEXT", "-X", f"sasl.mechanisms={mechanism}",
            "-X", f"sasl.username={user}", "-X", f"sasl.password={password}"]


def test_kcat_lists_and_produces_with_plain_and_fails_with_a_wrong_password(locked):
    topic = unique("kcat-sasl").replace("/", "-")
    create_as_root(locked, topic)
    good = kcat_sasl("PLAIN", "alice", "wonderland")
    out = kcat(locked, *good, "-P", "-t", topic, stdin="one\ntwo\n")
    assert out.returncode == 0, out.stderr
    out = kcat(locked, *good, "-C", "-t", topic, "-o", "beginning", "-e", "-q")
    assert out.returncode == 0 and out.stdout.split() == ["one", "two"], (out.stdout, out.stderr)
    bad = good[:-1] + ["sasl.password=nope"]
    out = kcat(locked, *bad, "-L", "-m", "5", timeout=30)
    assert out.returncode != 0 and "Authentication failed" in out.stderr, out.stderr


def test_kafka_python_reads_with_sasl_plain(locked):
    from kafka import KafkaConsumer, KafkaProducer
    topic = unique("kp-sasl").replace("/", "-")
    create_as_root(locked, topic)
    conf = {"bootstrap_servers": bootstrap(locked), "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN", "sasl_plain_username": "bob", "sasl_plain_password": "builder"}
    prod = KafkaProducer(**conf)
    for i in range(5):
        prod.send(topic, b"kp%d" % i).get(timeout=15)
    prod.close()
    cons = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=8000, **conf)
    values = [m.value for m in cons][:5]
    cons.close()
    assert values == [b"kp%d" % i for i in range(5)]


@pytest.mark.parametrize("mechanism, user", [("SCRAM-SHA-256", ("alice", "wonderland")),
                                             ("SCRAM-SHA-512", CAROL)])
def test_confluent_kafka_produces_and_reads_with_scram(locked, mechanism, user):
    topic = unique("scram").replace("/", "-")
    create_as_root(locked, topic)
    prod = producer(locked, **sasl(*user, mechanism))
    produce_all(prod, topic, [{"value": b"s%d" % i, "key": b"k%d" % i} for i in range(10)])
    cons = consumer(locked, **sasl(*user, mechanism))
    cons.subscribe([topic])
    try:
        got = poll_records(cons, 10)
    finally:
        cons.close()
    assert [(r.key, r.value, r.offset) for r in got] == [(b"k%d" % i, b"s%d" % i, i) for i in range(10)]


@pytest.mark.parametrize("mechanism, user", [("SCRAM-SHA-256", ("alice", "not-it")),
                                             ("SCRAM-SHA-512", ("alice", "wonderland")),
                                             ("SCRAM-SHA-256", ("nobody", "wonderland"))])
def test_scram_with_a_wrong_password_unknown_user_or_other_hash_is_refused(locked, mechanism, user):
    authentication_errors(locked, sasl(*user, mechanism))
    assert "kafka connection refused: Authentication failed" in locked.log_text()


def test_kcat_and_kafka_python_use_scram_sha_256(locked):
    from kafka import KafkaConsumer, KafkaProducer
    topic = unique("kcat-scram").replace("/", "-")
    create_as_root(locked, topic)
    good = kcat_sasl("SCRAM-SHA-256", "bob", "builder")
    out = kcat(locked, *good, "-P", "-t", topic, stdin="one\ntwo\n")
    assert out.returncode == 0, out.stderr
    out = kcat(locked, *good[:-1], "sasl.password=nope", "-L", "-m", "5", timeout=30)
    assert out.returncode != 0 and "Authentication failed" in out.stderr, out.stderr
    conf = {"bootstrap_servers": bootstrap(locked), "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "bob", "sasl_plain_password": "builder"}
    prod = KafkaProducer(**conf)
    prod.send(topic, b"three").get(timeout=15)
    prod.close()
    cons = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=8000, **conf)
    values = [m.value for m in cons][:3]
    cons.close()
    assert values == [b"one", b"two", b"three"]
