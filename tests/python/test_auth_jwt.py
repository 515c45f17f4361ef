"""JWT authentication for MQTT (`[auth.jwt]`, as EMQX's): a token signed with HS256 or RS256 in
the CONNECT's password logs a client in; its signature, `exp`, `nbf` and the claims
`verify_claims` names are checked; its ACL claim (either of EMQX's forms) governs what the
connection may publish and subscribe; a connection whose token expires is closed (v5: 0xA0);
a refused token gets 0x86 and an info line saying why; a bad [auth.jwt] stops the start with
the key named. Tokens are minted here with the standard library and openssl."""

import base64
import hashlib
import hmac
import json
import subprocess
import time

import pytest

import rawmqtt
from conftest import TIDEWATER_BIN, broker_env
from helpers import unique

pytestmark = pytest.mark.tidewater_only

SECRET = "s3cret-for-tests"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims, secret=SECRET, alg="HS256", private_key=None):
    signing = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    if alg == "HS256":
        signature = hmac.new(secret.encode() if isinstance(secret, str) else secret, signing.encode(),
                             hashlib.sha256).digest()
    else:
        out = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(private_key)], input=signing.encode(),
                             capture_output=True, timeout=30, check=True)
        signature = out.stdout
    return signing + "." + b64(signature)


def ann_claims(**extra):
    return {"sub": "ann", "exp": int(time.time()) + 600,
            "acl": [{"permission": "allow", "action": "publish", "topic": "t/%u/#"},
                    {"permission": "allow", "action": "subscribe", "topic": "t/#"}], **extra}


def jwt_broker(make_broker, **jwt):
    config = {"auth": {"allow_anonymous": False, "acl_default": "deny",
                       "jwt": {"verify_claims": {"sub": "%u"}, **jwt}}}
    return make_broker(config=config)


@pytest.fixture
def hs_broker(make_broker):
    return jwt_broker(make_broker, secret=SECRET)


def connect(broker, username, password, version=5):
    client = rawmqtt.RawClient(broker.host, broker.mqtt_port, version=version)
    return client, client.connect(unique("jwt"), username=username, password=password.encode()).reason_code


def test_a_valid_token_logs_in_and_its_acl_claim_governs_the_connection(hs_broker):
    sub, code = connect(hs_broker, "ann", token(ann_claims()))
    pub, code2 = connect(hs_broker, "ann", token(ann_claims()))
    with sub, pub:
        assert (code, code2) == (0, 0)
        assert sub.subscribe(("t/#", 1)).reason_codes == [1]
        assert sub.subscribe(("other/#", 1)).reason_codes == [0x87], "nothing allows it, the default denies"
        assert pub.publish_acked("t/ann/x", b"mine").reason_code == 0
        got = sub.expect(rawmqtt.PUBLISH)
        assert (got.topic, got.payload) == ("t/ann/x", b"mine")
        assert pub.publish_acked("t/bob/x", b"not mine").reason_code == 0x87
        assert sub.collect(0.5) == []
    # EMQX's other form of the claim: topics allowed per action
    lists = {"sub": "ann", "acl": {"pub": ["p/1"], "sub": ["s/#"]}}
    client, code = connect(hs_broker, "ann", token(lists))
    with client:
        assert code == 0
        assert client.subscribe(("s/x", 0), ("p/1", 0)).reason_codes == [0, 0x87]
        assert client.publish_acked("p/1", b"ok").reason_code == 0


@pytest.mark.parametrize("case", ["signature", "subject", "expired", "not_yet", "garbage_acl"])
def test_a_token_that_does_not_verify_is_refused_and_the_reason_logged(hs_broker, case):
    now = int(time.time())
    username, claims, secret = "ann", ann_claims(), SECRET
    if case == "signature":
        secret = "another secret"
    elif case == "subject":
        username = "bob"
    elif case == "expired":
        claims["exp"] = now - 120
    elif case == "not_yet":
        claims["nbf"] = now + 120
    else:
        claims["acl"] = [{"permission": "perhaps", "action": "publish", "topic": "t"}]
    client, code = connect(hs_broker, username, token(claims, secret))
    client.close()
    assert code == 0x86
    client, code = connect(hs_broker, username, token(claims, secret), version=4)
    client.close()
    assert code == 4
    lines = hs_broker.log_lines("mqtt token refused")
    assert lines and " INFO " in lines[0], lines


def test_a_connection_whose_token_expires_is_closed_then(hs_broker):
    expiring = token(ann_claims(exp=int(time.time()) + 2))
    client, code = connect(hs_broker, "ann", expiring)
    with client:
        assert code == 0
        assert client.subscribe(("t/#", 1)).reason_codes == [1]
        started = time.monotonic()
        packets = client.wait_closed(timeout=8)
        assert [(p.type, p.reason_code) for p in packets] == [(rawmqtt.DISCONNECT, 0xA0)]
        assert time.monotonic() - started < 6


def test_no_token_and_no_user_is_refused(hs_broker):
    client, code = connect(hs_broker, "ann", "just a password")
    client.close()
    assert code == 0x86


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("jwt-rsa")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(base / "private.pem")], check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "pkey", "-in", str(base / "private.pem"), "-pubout", "-out", str(base / "public.pem")],
                   check=True, capture_output=True, timeout=60)
    return base / "private.pem", base / "public.pem"


def test_rs256_tokens_verify_with_the_public_key_and_an_hs256_token_keyed_with_it_does_not(make_broker, rsa_keys):
    private, public = rsa_keys
    broker = jwt_broker(make_broker, public_key_file=str(public))
    client, code = connect(broker, "ann", token(ann_claims(), alg="RS256", private_key=private))
    with client:
        assert code == 0
        assert client.publish_acked("t/ann/rs", b"signed").reason_code == 0
    # the classic confusion: the public key used as an HMAC secret
    forged = token(ann_claims(), secret=public.read_bytes())
    client, code = connect(broker, "ann", forged)
    client.close()
    assert code == 0x86


@pytest.mark.parametrize("section, key", [
    ('secret = "a"\npublic_key_file = "/x.pem"', "auth.jwt"),
    ("", "auth.jwt"),
    ('secret = ""', "auth.jwt.secret"),
    ('public_key_file = "/nonexistent/key.pem"', "auth.jwt.public_key_file"),
    ('secret = "a"\nfrom = "cookie"', "auth.jwt"),
])
def test_a_bad_jwt_section_stops_the_start_with_the_key_named(tmp_path, section, key):
    config = tmp_path / "tw.toml"
    config.write_text(f"[auth.jwt]\n{section}\n")
    out = subprocess.run([TIDEWATER_BIN, "start", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30, env=broker_env(), cwd=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert key in out.stderr, out.stderr
