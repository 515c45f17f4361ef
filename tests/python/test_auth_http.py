"""MQTT logins decided by an HTTP service (`[auth.http]`, as EMQX's HTTP authenticator): the
node POSTs the username, password, client id and address as JSON; "allow" (or 204) logs the
client in with the answer's ACL rules, "deny" refuses it with 0x86; "ignore", a failing or slow
service leave the login to the users of `[auth]` and say so in the log; verdicts are cached; a
bad URL stops the start with the key named."""

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rawmqtt
from conftest import TIDEWATER_BIN, broker_env, tidewater_passwd
from helpers import unique

pytestmark = pytest.mark.tidewater_only

ACL = [{"permission": "allow", "action": "publish", "topic": "t/%u/#"},
       {"permission": "allow", "action": "subscribe", "topic": "t/#"}]


class AuthService:
    """A login service: answers by username, and remembers what it was asked."""

    def __init__(self):
        self.requests = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.requests.append((self.path, body))
                user = body["username"]
                if user == "slow":
                    time.sleep(2)
                if user == "empty":
                    self.send_response(204)
                    self.end_headers()
                    return
                if user == "broken":
                    self.send_response(500)
                    self.end_headers()
                    return
                if user == "ann":
                    answer = {"result": "allow", "acl": ACL} if body["password"] == "good" else {"result": "deny"}
                else:
                    answer = {"result": "ignore"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def asked(self, user):
        return [body for _, body in self.requests if body["username"] == user]


@pytest.fixture
def service():
    service = AuthService()
    yield service
    service.server.shutdown()


@pytest.fixture
def http_broker(make_broker, service):
    users = [{"username": "local", "password_hash": tidewater_passwd("l0cal")},
             {"username": "broken", "password_hash": tidewater_passwd("fallback")}]
    config = {"auth": {"allow_anonymous": False, "acl_default": "deny", "users": users,
                       "acl": [{"permission": "allow", "action": "all", "topic": "local/#"}],
                       "http": {"url": f"http://127.0.0.1:{service.port}/mqtt/auth", "timeout_ms": 500,
                                "cache_ttl_ms": 60000}}}
    return make_broker(config=config)


def connect(broker, username, password, client_id=None, version=5):
    client = rawmqtt.RawClient(broker.host, broker.mqtt_port, version=version)
    return client, client.connect(client_id or unique("h"), username=username, password=password.encode()).reason_code


def test_the_service_allows_with_its_acl_denies_and_is_asked_once_per_login(http_broker, service):
    client_id = unique("ann")
    sub, code = connect(http_broker, "ann", "good", client_id=client_id)
    with sub:
        assert code == 0
        assert sub.subscribe(("t/#", 1), ("other/x", 1)).reason_codes == [1, 0x87]
        assert sub.publish_acked("t/ann/1", b"mine").reason_code == 0
        assert sub.expect(rawmqtt.PUBLISH).payload == b"mine"
        assert sub.publish_acked("t/bob/1", b"not mine").reason_code == 0x87
    [asked] = service.asked("ann")
    assert asked == {"username": "ann", "password": "good", "clientid": client_id, "peerhost": "127.0.0.1"}
    assert service.requests[0][0] == "/mqtt/auth"
    # the same login again: from the cache
    client, code = connect(http_broker, "ann", "good", client_id=client_id)
    client.close()
    assert code == 0 and len(service.asked("ann")) == 1
    # deny, on both versions
    client, code = connect(http_broker, "ann", "bad")
    client.close()
    assert code == 0x86
    client, code = connect(http_broker, "ann", "bad", version=4)
    client.close()
    assert code == 4
    # 204: allowed, with no rules of its own (the config's apply: nothing but local/#)
    client, code = connect(http_broker, "empty", "x")
    with client:
        assert code == 0
        assert client.subscribe(("local/a", 0), ("t/a", 0)).reason_codes == [0, 0x87]


@pytest.mark.parametrize("user, password, expected", [
    ("local", "l0cal", 0),        # the service ignores it: the config's user logs in
    ("local", "wrong", 0x86),
    ("broken", "fallback", 0),    # the service fails (500): the config decides
    ("nobody", "x", 0x86),        # ignored, and no such user
    ("slow", "x", 0x86),          # no answer within timeout_ms, and no such user
])
def test_ignore_failure_and_timeout_leave_the_login_to_the_users(http_broker, service, user, password, expected):
    started = time.monotonic()
    client, code = connect(http_broker, user, password)
    client.close()
    assert code == expected
    assert time.monotonic() - started < 3
    assert service.asked(user), "the service was asked"
    if user in ("broken", "slow", "nobody"):
        assert http_broker.log_lines("mqtt login left to the users")


def test_a_bad_http_section_stops_the_start_with_the_key_named(tmp_path):
    for section, key in [('url = "https://auth.example/x"', "auth.http.url"),
                         ('url = "http://127.0.0.1:1/x"\ntimeout_ms = 0', "auth.http.timeout_ms"),
                         ('timeout_ms = 5', "auth.http")]:
        config = tmp_path / "tw.toml"
        config.write_text(f"[auth.http]\n{section}\n")
        out = subprocess.run([TIDEWATER_BIN, "start", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                             capture_output=True, text=True, timeout=30, env=broker_env(), cwd=tmp_path)
        assert out.returncode == 2 and key in out.stderr, (section, out.stderr)
