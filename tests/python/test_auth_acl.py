"""Authentication (passwords from `tidewater passwd`, anonymous access) and topic ACLs."""

import subprocess

import pytest

import rawmqtt
from conftest import TIDEWATER_BIN, broker_env, tidewater_passwd
from helpers import Client, raw, unique, wait_until

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]
USERS = {"alice": "wonderland", "bob": "builder"}

# One policy, written in both dialects. Tidewater: first matching rule wins, default deny.
ACL_RULES = [
    {"permission": "allow", "action": "all", "topic": "users/%u/#"},
    {"permission": "allow", "action": "all", "topic": "clients/%c/#"},
    {"permission": "deny", "action": "subscribe", "topic": "public/secret/#"},
    {"permission": "allow", "action": "subscribe", "topic": "public/#"},
    {"permission": "allow", "action": "publish", "topic": "public/#", "username": "alice"},
]
MOSQUITTO_ACL = """
pattern readwrite users/%u/#
pattern readwrite clients/%c/#

user alice
topic deny public/secret/#
topic readwrite public/#

user bob
topic deny public/secret/#
topic read public/#
"""


@pytest.fixture
def auth_broker(make_broker):
    return make_broker(config={"auth": {"allow_anonymous": False}}, users=USERS)


@pytest.fixture
def acl_broker(make_broker):
    config = {"auth": {"allow_anonymous": False, "acl_default": "deny", "acl": ACL_RULES}}
    return make_broker(config=config, users=USERS, mosquitto_acl=MOSQUITTO_ACL)


def login(broker, username, password, version=5, client_id=None):
    client = raw(broker, version)
    ack = client.connect(client_id or unique(username or "anon"), username=username,
                         password=password)
    return client, ack


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_correct_password_accepted(auth_broker, version):
    client, ack = login(auth_broker, "alice", "wonderland", version)
    with client:
        assert ack.reason_code == 0
        topic = unique("auth/ok")
        client.subscribe((topic, 1))
        client.publish_acked(topic, b"me")
        assert client.expect(rawmqtt.PUBLISH).payload == b"me"


BAD_LOGINS = pytest.mark.parametrize(
    "username,password", [("alice", "wrong"), ("alice", "builder"), ("mallory", "wonderland"),
                          ("alice", "")], ids=["wrong", "other-users", "unknown-user", "empty"])


@pytest.mark.parametrize("version,codes", [(5, (0x86, 0x87)), (4, (0x04, 0x05))], ids=["v5", "v311"])
@BAD_LOGINS
def test_bad_credentials_refused(auth_broker, version, codes, username, password):
    client, ack = login(auth_broker, username, password, version)
    with client:
        assert ack.reason_code in codes
        client.wait_closed()


@pytest.mark.tidewater_only  # mosquitto answers "not authorized" (0x87 / 0x05) instead
@pytest.mark.parametrize("version,code", [(5, 0x86), (4, 0x04)], ids=["v5", "v311"])
@BAD_LOGINS
def test_bad_credentials_reason_code_is_bad_username_or_password(auth_broker, version, code,
                                                                 username, password):
    client, ack = login(auth_broker, username, password, version)
    with client:
        assert ack.reason_code == code
        client.wait_closed()


@pytest.mark.parametrize("version,codes", [(5, (0x86, 0x87)), (4, (0x04, 0x05))], ids=["v5", "v311"])
def test_anonymous_refused_when_not_allowed(auth_broker, version, codes):
    client, ack = login(auth_broker, None, None, version)
    with client:
        assert ack.reason_code in codes
        client.wait_closed()


def test_paho_login(auth_broker):
    with Client(auth_broker, username="bob", password="builder") as good:
        assert good.connect() == (False, 0)
    bad = Client(auth_broker, username="bob", password="nope")
    _, code = bad.connect(expect_success=False)
    bad.close()
    assert code in (0x86, 0x87)


def test_anonymous_allowed_alongside_users(make_broker):
    broker = make_broker(config={"auth": {"allow_anonymous": True}}, users=USERS)
    client, ack = login(broker, None, None, 5)
    client.close()
    assert ack.reason_code == 0
    client, ack = login(broker, "alice", "wrong", 5)
    client.close()
    assert ack.reason_code in (0x86, 0x87)


@pytest.mark.tidewater_only
def test_passwd_prints_salted_pbkdf2_hash():
    def passwd():
        out = subprocess.run([TIDEWATER_BIN, "passwd", "s3cret"], capture_output=True, text=True,
                             timeout=30, env=broker_env())
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1].strip()

    first, second = passwd(), passwd()
    assert first.startswith("pbkdf2-sha256$"), first
    assert "s3cret" not in first
    assert first != second, "two hashes of one password should differ by their salt"


@pytest.mark.tidewater_only
def test_passwd_reads_the_password_from_stdin_and_the_hash_logs_in(make_broker):
    out = subprocess.run([TIDEWATER_BIN, "passwd"], input="from stdin\n", capture_output=True, text=True,
                         timeout=30, env=broker_env())
    assert out.returncode == 0, out.stderr
    hashed = out.stdout.strip().splitlines()[-1].strip()
    assert hashed.startswith("pbkdf2-sha256$") and "from stdin" not in hashed
    empty = subprocess.run([TIDEWATER_BIN, "passwd"], input="\n", capture_output=True, text=True,
                           timeout=30, env=broker_env())
    assert empty.returncode != 0 and "empty" in empty.stderr
    broker = make_broker(config={"auth": {"allow_anonymous": False,
                                          "users": [{"username": "carol", "password_hash": hashed}]}})
    with raw(broker, 5) as client:
        assert client.connect(unique("stdin"), username="carol", password=b"from stdin").reason_code == 0
    # a refused login is logged at info with the client id, user and address
    refused_id = unique("refused")
    with raw(broker, 5) as client:
        assert client.connect(refused_id, username="carol", password=b"wrong").reason_code == 0x86
    def refusal():
        return [line for line in broker.log_text().splitlines() if "mqtt connection refused" in line and refused_id in line]
    wait_until(refusal, message="the refusal in the log")
    line = refusal()[-1]
    assert "INFO" in line and "carol" in line and "127.0.0.1" in line, line


def _api(broker, method, path, body=None, auth=None):
    """(status, text) of an admin API request; `auth` a ("basic", user, password) or
    ("bearer", token) tuple."""
    import base64
    import json
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/json"}
    if auth and auth[0] == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[1]}:{auth[2]}".encode()).decode()
    elif auth:
        headers["Authorization"] = "Bearer " + auth[1]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{broker.host}:{broker.http_port}{path}", data=data,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.tidewater_only
def test_a_bare_start_leaves_the_admin_api_open_and_says_so_in_one_line(make_broker):
    broker = make_broker()
    status, _ = _api(broker, "POST", "/api/v1/streams", {"name": unique("open"), "kind": "free"})
    assert status == 201
    warnings = [line for line in broker.log_text().splitlines() if "open for a first try" in line]
    assert len(warnings) == 1 and "WARN" in warnings[0], warnings


@pytest.mark.tidewater_only
def test_with_authentication_configured_the_admin_api_wants_an_admins_credentials(make_broker):
    config = {"auth": {"allow_anonymous": False, "admin_token_hash": tidewater_passwd("t0ken"),
                       "users": [{"username": "root", "password_hash": tidewater_passwd("rootpw"), "admin": True},
                                 {"username": "alice", "password_hash": tidewater_passwd("wonderland")}]}}
    broker = make_broker(config=config)
    spy = {"name": unique("spy"), "kind": "bound", "filter": "#"}
    # the report: anonymous, a device's own password, a wrong token: 401, nothing created
    for auth in [None, ("basic", "alice", "wonderland"), ("basic", "root", "wrong"), ("bearer", "nope")]:
        status, text = _api(broker, "POST", "/api/v1/streams", spy, auth=auth)
        assert status == 401 and "admin" in text, (auth, status, text)
        assert _api(broker, "GET", "/api/v1/streams", auth=auth)[0] == 401
    status, text = _api(broker, "GET", "/api/v1/streams", auth=("basic", "root", "rootpw"))
    assert status == 200 and spy["name"] not in text
    assert "admin API request refused" in broker.log_text(), "refusals are logged at info"
    # an admin user, or the token, may administer
    assert _api(broker, "POST", "/api/v1/streams", spy, auth=("basic", "root", "rootpw"))[0] == 201
    assert _api(broker, "DELETE", f"/api/v1/streams/{spy['name']}", auth=("bearer", "t0ken"))[0] in (200, 204)
    # health and metrics stay open for probes and scrapers
    assert broker.http_get("/health")[0] == 200
    assert broker.http_get("/metrics")[0] == 200
    assert "open for a first try" not in broker.log_text()


# -- ACL ------------------------------------------------------------------------------------------
# Delivery is checked in both modes. The SUBACK reason codes are Tidewater's contract only:
# mosquitto's acl_file grants every subscription and filters messages on delivery instead.

ACL_CODES = pytest.mark.parametrize("version,denied", [(5, 0x87), (4, 0x80)], ids=["v5", "v311"])


@pytest.mark.parametrize("version", VERSIONS)
def test_subscription_to_denied_topic_receives_nothing(acl_broker, version):
    client, ack = login(acl_broker, "alice", "wonderland", version)
    with client:
        assert ack.reason_code == 0
        suback = client.subscribe(("public/secret/plans", 1), ("public/news", 1))
        assert suback.reason_codes[1] == 1
        with Client(acl_broker, username="alice", password="wonderland") as pub:
            pub.connect()
            pub.publish("public/secret/plans", b"hidden", qos=1)
            pub.publish("public/news", b"news", qos=1)
        msg = client.expect(rawmqtt.PUBLISH)
        assert (msg.topic, msg.payload) == ("public/news", b"news")
        assert client.collect(0.5) == []


@pytest.mark.tidewater_only
@ACL_CODES
def test_subscribe_denied_suback_reason_code(acl_broker, version, denied):
    client, ack = login(acl_broker, "alice", "wonderland", version)
    with client:
        suback = client.subscribe(("public/secret/plans", 1), ("public/news", 1),
                                  ("users/bob/inbox", 0), ("users/alice/inbox", 2))
        assert suback.reason_codes == [denied, 1, denied, 2]
    # each refusal is logged at info with the user and the address (rate-limited)
    lines = acl_broker.log_lines("mqtt subscribe refused by the ACL", "users/bob/inbox")
    assert lines and " INFO " in lines[0] and "username=alice" in lines[0] and "127.0.0.1" in lines[0], lines


@pytest.mark.tidewater_only
def test_a_publish_the_acl_refuses_is_logged_with_the_user_and_address(acl_broker):
    bob, ack = login(acl_broker, "bob", "builder", 5)
    with bob:
        assert ack.reason_code == 0
        assert bob.publish_acked("public/news", b"from bob", qos=1).reason_code == 0x87
    lines = acl_broker.log_lines("mqtt publish refused by the ACL", "topic=public/news")
    assert lines and " INFO " in lines[0] and "username=bob" in lines[0] and "127.0.0.1" in lines[0], lines


def test_v5_publish_denied_gets_puback_0x87_and_is_not_delivered(acl_broker):
    with Client(acl_broker, username="alice", password="wonderland") as reader:
        reader.connect()
        assert reader.subscribe("public/news", qos=1) == [1]
        bob, ack = login(acl_broker, "bob", "builder", 5)
        with bob:
            assert ack.reason_code == 0
            puback = bob.publish_acked("public/news", b"from bob", qos=1)
            assert puback.reason_code == 0x87
        reader.assert_no_message(1.0)
        alice_pub = Client(acl_broker, username="alice", password="wonderland")
        with alice_pub:
            alice_pub.connect()
            assert alice_pub.publish("public/news", b"from alice", qos=1) == 0
        assert reader.wait_message().payload == b"from alice"


def test_v311_publish_denied_is_not_delivered(acl_broker):
    with Client(acl_broker, username="alice", password="wonderland", version=4) as reader:
        reader.connect()
        reader.subscribe("public/news", qos=1)
        bob, ack = login(acl_broker, "bob", "builder", 4)
        with bob:
            assert ack.reason_code == 0
            bob.publish("public/news", b"from bob", qos=1)
            # 3.1.1 has no negative PUBACK: the broker acknowledges or closes the connection
            answer = bob.collect(1.0)
            assert [p.type for p in answer] in ([rawmqtt.PUBACK], [])
        reader.assert_no_message(1.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_acl_username_substitution(acl_broker, version):
    """users/%u/#: each user reads and writes only under its own name."""
    alice, _ = login(acl_broker, "alice", "wonderland", version)
    with alice:
        alice.subscribe(("users/alice/inbox", 1), ("users/bob/inbox", 1))
        bob, _ = login(acl_broker, "bob", "builder", version)
        with bob:
            bob.publish("users/alice/inbox", b"bob writes to alice", qos=1)  # denied
            bob.collect(0.3)
            bob.publish_acked("users/bob/inbox", b"bob writes his own", qos=1)  # alice can't read
        alice.publish_acked("users/alice/inbox", b"alice writes her own", qos=1)
        msg = alice.expect(rawmqtt.PUBLISH)
        assert (msg.topic, msg.payload) == ("users/alice/inbox", b"alice writes her own")
        assert alice.collect(0.5) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_acl_client_id_substitution(acl_broker, version):
    """clients/%c/#: a device reads and writes only under its own client id."""
    device, _ = login(acl_broker, "bob", "builder", version, client_id="dev-17")
    other, _ = login(acl_broker, "bob", "builder", version, client_id="dev-18")
    with device, other:
        device.subscribe(("clients/dev-17/cmd", 1), ("clients/dev-18/cmd", 1))
        other.publish_acked("clients/dev-18/cmd", b"theirs", qos=1)  # device may not read it
        other.publish("clients/dev-17/cmd", b"intruder", qos=1)  # dev-18 may not write here
        other.collect(0.3)
        device.publish_acked("clients/dev-17/cmd", b"own", qos=1)
        msg = device.expect(rawmqtt.PUBLISH)
        assert (msg.topic, msg.payload) == ("clients/dev-17/cmd", b"own")
        assert device.collect(0.5) == []


@pytest.mark.tidewater_only
@ACL_CODES
def test_acl_client_id_substitution_suback(acl_broker, version, denied):
    device, _ = login(acl_broker, "bob", "builder", version, client_id="dev-17")
    with device:
        suback = device.subscribe(("clients/dev-17/cmd", 1), ("clients/dev-18/cmd", 1))
        assert suback.reason_codes == [1, denied]
