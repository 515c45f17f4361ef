"""TLS: MQTT over TLS on listeners.mqtts (mosquitto clients with --cafile, paho with an SSL
context), the Kafka listener with tls.kafka = true (confluent-kafka SSL and SASL_SSL with SCRAM,
kcat, kafka-python), a client that trusts another CA refused and logged, sockets that never
handshake holding up nobody, a renewed certificate served without a restart, and a bad [tls]
section refused at start with the key named."""

import socket
import ssl
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from conftest import TIDEWATER_BIN, broker_env, free_port, tidewater_passwd
from helpers import unique
from kafka_helpers import bootstrap, consumer, kcat, kafka_broker, poll_records, produce_all, producer

pytestmark = pytest.mark.tidewater_only


def openssl(*args, cwd):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def make_ca(directory, name):
    """A CA and a server certificate it signed for 127.0.0.1 and localhost: (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name} test CA", cwd=directory)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=directory)
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def make_client(directory, name, cn, dns):
    """A client certificate the CA in `directory` signed: (cert, key)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/O=Acme/CN={cn}", cwd=directory)
    (directory / f"{name}.ext").write_text(f"subjectAltName=DNS:{dns}\nextendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    pki = {"first": make_ca(base / "first", "first"), "second": make_ca(base / "second", "second")}
    pki["device-1"] = make_client(base / "first", "device1", "device-1", "dev1.example")
    pki["device-2"] = make_client(base / "first", "device2", "device-2", "dev2.example")
    pki["stranger"] = make_client(base / "second", "stranger", "device-1", "dev1.example")
    return pki


def tls_broker(make_broker, pki, tmp_path, kafka=False, auth=None, **tls):
    """A broker whose [tls] points at copies of the first CA's server certificate (so that a
    test may replace them), with an MQTT TLS port of its own."""
    _, cert, key = pki["first"]
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(cert.read_bytes())
    key_file.write_bytes(key.read_bytes())
    port = free_port()
    config = {"listeners": {"mqtts": f"127.0.0.1:{port}"},
              "tls": {"cert_file": str(cert_file), "key_file": str(key_file), "kafka": kafka,
                      "reload_check_ms": 200, "handshake_timeout_ms": 2000, **tls}}
    if auth:
        config["auth"] = auth
    broker = kafka_broker(make_broker, config=config)
    broker.mqtts_port = port
    return broker


def mosquitto(tool, broker, ca, *args, timeout=20):
    cmd = [tool, "-h", "127.0.0.1", "-p", str(broker.mqtts_port), "--cafile", str(ca), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) if tool == "mosquitto_sub" \
        else subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_mosquitto_clients_publish_and_subscribe_over_tls(make_broker, pki, tmp_path):
    broker = tls_broker(make_broker, pki, tmp_path)
    ca = pki["first"][0]
    topic = unique("tls")
    sub = mosquitto("mosquitto_sub", broker, ca, "-t", topic, "-q", "1", "-C", "3", "-W", "20", "-v")
    time.sleep(0.5)  # let the subscription land
    for i in range(3):
        out = mosquitto("mosquitto_pub", broker, ca, "-t", topic, "-q", "1", "-m", f"secret {i}")
        assert out.returncode == 0, out.stderr
    stdout, stderr = sub.communicate(timeout=25)
    assert sub.returncode == 0, stderr
    assert stdout.splitlines() == [f"{topic} secret {i}" for i in range(3)]
    # the plain listener still serves
    out = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.mqtt_port), "-t", topic, "-m", "x"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr


def paho_tls_client(broker, ca, client_id):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=str(ca))
    client.tls_set_context(context)
    return client


def test_paho_v5_over_tls_and_a_client_trusting_another_ca_is_refused(make_broker, pki, tmp_path):
    broker = tls_broker(make_broker, pki, tmp_path)
    topic = unique("paho-tls")
    got = []
    sub = paho_tls_client(broker, pki["first"][0], unique("s"))
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos))
    sub.connect("127.0.0.1", broker.mqtts_port)
    sub.loop_start()
    try:
        result, _ = sub.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.5)
        pub = paho_tls_client(broker, pki["first"][0], unique("p"))
        pub.connect("127.0.0.1", broker.mqtts_port)
        pub.loop_start()
        pub.publish(topic, b"\x00binary\xff", qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [(topic, b"\x00binary\xff", 1)]
    finally:
        sub.disconnect()
        sub.loop_stop()
    # a client that trusts the second CA does not accept the first one's certificate
    out = mosquitto("mosquitto_pub", broker, pki["second"][0], "-t", topic, "-m", "x")
    assert out.returncode != 0
    assert "tls handshake failed" in broker.log_text()


def test_sockets_that_never_handshake_do_not_hold_up_a_real_client(make_broker, pki, tmp_path):
    broker = tls_broker(make_broker, pki, tmp_path)
    idle = [socket.create_connection(("127.0.0.1", broker.mqtts_port), timeout=5) for _ in range(200)]
    try:
        started = time.monotonic()
        out = mosquitto("mosquitto_pub", broker, pki["first"][0], "-t", unique("t"), "-q", "1", "-m", "through")
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - started < 5
        # the handshake timeout (2 s here) closes them
        idle[0].settimeout(10)
        assert idle[0].recv(1) == b""
        assert "tls.handshake_timeout_ms" in broker.log_text()
    finally:
        for sock in idle:
            sock.close()


def test_a_renewed_certificate_is_served_without_a_restart(make_broker, pki, tmp_path):
    broker = tls_broker(make_broker, pki, tmp_path)
    first_ca, second_ca = pki["first"][0], pki["second"][0]
    assert mosquitto("mosquitto_pub", broker, first_ca, "-t", "t", "-m", "1").returncode == 0
    # a broken renewal is logged and the old certificate keeps serving
    (tmp_path / "server.pem").write_text("not a certificate\n")
    deadline = time.monotonic() + 10
    while "cannot be used" not in broker.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the previous one still serves" in broker.log_text()
    assert mosquitto("mosquitto_pub", broker, first_ca, "-t", "t", "-m", "2").returncode == 0
    _, cert, key = pki["second"]
    (tmp_path / "server.key").write_bytes(key.read_bytes())
    (tmp_path / "server.pem").write_bytes(cert.read_bytes())
    deadline = time.monotonic() + 10
    while "tls certificate reloaded" not in broker.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "tls certificate reloaded" in broker.log_text()
    # the reload may have caught the key before the certificate: the next check fixes it
    deadline = time.monotonic() + 10
    while mosquitto("mosquitto_pub", broker, second_ca, "-t", "t", "-m", "3").returncode != 0:
        assert time.monotonic() < deadline, "the renewed certificate is not served"
        time.sleep(0.2)
    assert mosquitto("mosquitto_pub", broker, first_ca, "-t", "t", "-m", "4").returncode != 0
    assert broker.alive()


def test_kafka_clients_produce_and_read_over_ssl_and_sasl_ssl(make_broker, pki, tmp_path):
    users = [{"username": "alice", "password_hash": tidewater_passwd("wonderland"), "admin": True}]
    broker = tls_broker(make_broker, pki, tmp_path, kafka=True, auth={"allow_anonymous": False, "users": users})
    ca = str(pki["first"][0])
    sasl_ssl = {"security.protocol": "SASL_SSL", "ssl.ca.location": ca, "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": "alice", "sasl.password": "wonderland"}
    topic = unique("kssl").replace("/", "-")
    prod = producer(broker, **sasl_ssl)
    produce_all(prod, topic, [{"value": b"v%d" % i, "key": b"k", "headers": [("h", b"%d" % i)]} for i in range(10)])
    cons = consumer(broker, **sasl_ssl)
    cons.subscribe([topic])
    try:
        got = poll_records(cons, 10)
    finally:
        cons.close()
    assert [(r.value, r.offset, r.headers) for r in got] == [(b"v%d" % i, i, [("h", b"%d" % i)]) for i in range(10)]
    # kcat (librdkafka 2.0.2) with SASL_SSL PLAIN
    kcat_args = ["-X", "security.protocol=SASL_SSL", "-X", f"ssl.ca.location={ca}", "-X", "sasl.mechanisms=PLAIN",
                 "-X", "sasl.username=alice", "-X", "sasl.password=wonderland"]
    out = kcat(broker, *kcat_args, "-C", "-t", topic, "-o", "beginning", "-e", "-q")
    assert out.returncode == 0 and out.stdout.split() == [f"v{i}" for i in range(10)], (out.stdout, out.stderr)
    # kafka-python with SASL_SSL
    from kafka import KafkaConsumer
    kp = KafkaConsumer(topic, bootstrap_servers=bootstrap(broker), security_protocol="SASL_SSL", ssl_cafile=ca,
                       sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="alice", sasl_plain_password="wonderland",
                       auto_offset_reset="earliest", consumer_timeout_ms=8000)
    values = [m.value for m in kp][:10]
    kp.close()
    assert values == [b"v%d" % i for i in range(10)]
    # a plaintext client gets nothing from the TLS listener
    out = kcat(broker, "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN",
               "-X", "sasl.username=alice", "-X", "sasl.password=wonderland", "-L", "-m", "4", timeout=30)
    assert out.returncode != 0


def test_kafka_over_ssl_without_sasl(make_broker, pki, tmp_path):
    broker = tls_broker(make_broker, pki, tmp_path, kafka=True)
    topic = unique("ssl").replace("/", "-")
    conf = {"security.protocol": "SSL", "ssl.ca.location": str(pki["first"][0])}
    produce_all(producer(broker, **conf), topic, [{"value": b"plain-ssl"}])
    out = kcat(broker, "-X", "security.protocol=ssl", "-X", f"ssl.ca.location={pki['first'][0]}",
               "-C", "-t", topic, "-o", "beginning", "-e", "-q")
    assert out.returncode == 0 and out.stdout.strip() == "plain-ssl", (out.stdout, out.stderr)


@pytest.mark.parametrize("tls, key", [
    ({"cert_file": "/nonexistent/server.pem", "key_file": "/nonexistent/server.key"}, "tls.cert_file"),
    ({"cert_file": "/nonexistent/server.pem"}, "tls.key_file"),
    ({"kafka": True}, "tls.kafka"),
])
def test_a_bad_tls_section_stops_the_start_with_the_key_named(tmp_path, tls, key):
    lines = ["[tls]"] + [f"{k} = {('true' if v else 'false') if isinstance(v, bool) else repr(v)}"
                         for k, v in tls.items()]
    config = tmp_path / "tw.toml"
    config.write_text("\n".join(lines).replace("'", '"') + "\n")
    out = subprocess.run([TIDEWATER_BIN, "start", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30, env=broker_env(), cwd=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert key in out.stderr, out.stderr


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path, pki):
    _, cert, _ = pki["first"]
    _, _, other_key = pki["second"]
    config = tmp_path / "tw.toml"
    config.write_text(f'[tls]\ncert_file = "{cert}"\nkey_file = "{other_key}"\n')
    out = subprocess.run([TIDEWATER_BIN, "start", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30, env=broker_env(), cwd=tmp_path)
    assert out.returncode == 2 and "tls.key_file" in out.stderr and "does not go with" in out.stderr, out.stderr


# -- MQTT over WebSocket ------------------------------------------------------------------------


def ws_broker(make_broker, pki, tmp_path, mqtt_settings=None):
    """A broker with MQTT over WebSocket and secure WebSocket, beside TLS."""
    _, cert, key = pki["first"]
    ws_port, wss_port, mqtts_port = free_port(), free_port(), free_port()
    config = {"listeners": {"ws": f"127.0.0.1:{ws_port}", "wss": f"127.0.0.1:{wss_port}",
                            "mqtts": f"127.0.0.1:{mqtts_port}"},
              "tls": {"cert_file": str(cert), "key_file": str(key)}}
    if mqtt_settings:
        config["mqtt"] = mqtt_settings
    broker = make_broker(config=config)
    broker.ws_port, broker.wss_port = ws_port, wss_port
    return broker


def paho_ws_client(client_id, ca=None, path="/mqtt"):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         transport="websockets")
    client.ws_set_options(path=path)
    if ca:
        client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    return client


def test_paho_over_websocket_and_secure_websocket_reaches_a_tcp_subscriber(make_broker, pki, tmp_path):
    broker = ws_broker(make_broker, pki, tmp_path)
    topic = unique("ws")
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("tcp"), protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append((m.payload, m.qos))
    sub.connect("127.0.0.1", broker.mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        time.sleep(0.5)
        big = bytes(range(256)) * 800  # 200 KB: one message of many WebSocket frames' worth
        for port, ca, payload in [(broker.ws_port, None, b"over ws"), (broker.wss_port, pki["first"][0], b"over wss"),
                                  (broker.ws_port, None, big)]:
            pub = paho_ws_client(unique("p"), ca)
            pub.connect("127.0.0.1", port)
            pub.loop_start()
            info = pub.publish(topic, payload, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
            pub.disconnect()
            pub.loop_stop()
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [(b"over ws", 1), (b"over wss", 1), (big, 1)]
    finally:
        sub.disconnect()
        sub.loop_stop()


class RawWebSocket:
    """Just enough of a WebSocket client (RFC 6455) to send MQTT split and joined as we like."""

    def __init__(self, port, path="/mqtt", protocol="mqtt"):
        import base64
        import os
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
        if protocol:
            request += f"Sec-WebSocket-Protocol: {protocol}\r\n"
        self.sock.sendall((request + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.headers = head.decode(errors="replace").lower()
        self.rest = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""

    def send(self, payload, opcode=2):
        import os
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x80 | opcode])
        header += bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv_frame(self):
        def need(n):
            while len(self.rest) < n:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise EOFError("closed")
                self.rest += chunk
            data, self.rest = self.rest[:n], self.rest[n:]
            return data
        first, second = need(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(need(2), "big")
        return first & 0x0F, need(size)


CONNECT_V311 = bytes([0x10, 0x12, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x06]) + b"ws-raw"


def test_mqtt_packets_may_be_split_across_or_joined_in_websocket_messages(make_broker, pki, tmp_path):
    broker = ws_broker(make_broker, pki, tmp_path)
    raw = RawWebSocket(broker.ws_port)
    assert raw.status == 101 and "sec-websocket-protocol: mqtt" in raw.headers, raw.headers
    # CONNECT in two messages
    raw.send(CONNECT_V311[:5])
    raw.send(CONNECT_V311[5:])
    assert raw.recv_frame() == (2, bytes([0x20, 0x02, 0x00, 0x00]))
    # two PINGREQs in one message: two PINGRESPs come back
    raw.send(bytes([0xC0, 0x00, 0xC0, 0x00]))
    answers = b""
    while len(answers) < 4:
        opcode, data = raw.recv_frame()
        assert opcode == 2
        answers += data
    assert answers == bytes([0xD0, 0x00, 0xD0, 0x00])
    # a text message is not MQTT: the connection closes
    raw.send(b"hello", opcode=1)
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            opcode, _ = raw.recv_frame()
            if opcode == 8:
                raise EOFError("close frame")


def test_websocket_upgrades_for_another_path_or_subprotocol_are_refused(make_broker, pki, tmp_path):
    broker = ws_broker(make_broker, pki, tmp_path)
    assert RawWebSocket(broker.ws_port, path="/other").status == 404
    assert RawWebSocket(broker.ws_port, protocol="chat").status == 400
    # a client that names no subprotocol is served
    bare = RawWebSocket(broker.ws_port, protocol=None)
    assert bare.status == 101
    bare.send(CONNECT_V311)
    assert bare.recv_frame() == (2, bytes([0x20, 0x02, 0x00, 0x00]))
    # paho with the wrong path cannot connect
    client = paho_ws_client(unique("p"), path="/nope")
    with pytest.raises(Exception):
        client.connect("127.0.0.1", broker.ws_port)
    assert "websocket handshake failed" in broker.log_text()


def test_a_secure_websocket_subscriber_receives_a_burst_in_order(make_broker, pki, tmp_path):
    # room for the whole burst in the session's queue: nothing may be dropped or stall
    broker = ws_broker(make_broker, pki, tmp_path, mqtt_settings={"max_queued_messages": 10000})
    topic = unique("wss-burst")
    got = []
    sub = paho_ws_client(unique("s"), pki["first"][0])
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", broker.wss_port)
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        time.sleep(0.5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("p"), protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.mqtt_port)
        pub.loop_start()
        for i in range(2000):
            pub.publish(topic, b"m%d" % i + b"." * (i % 700), qos=1)
        deadline = time.monotonic() + 30
        while len(got) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.disconnect()
        pub.loop_stop()
        assert got == [b"m%d" % i + b"." * (i % 700) for i in range(2000)]
    finally:
        sub.disconnect()
        sub.loop_stop()


def https_get(port, ca, path):
    context = ssl.create_default_context(cafile=str(ca))
    import urllib.request
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=5) as response:
        return response.status, response.read().decode()


def test_the_http_listener_serves_https_only_with_tls_http(make_broker, pki, tmp_path):
    ca, cert, key = pki["first"]
    config = {"listeners": {"mqtts": f"127.0.0.1:{free_port()}"},
              "tls": {"cert_file": str(cert), "key_file": str(key), "http": True}}
    broker = make_broker(config=config, start=False)

    def ready():
        try:
            return https_get(broker.http_port, ca, "/health")[0] == 200
        except OSError:
            return False

    broker._ready = ready
    broker.start()
    status, body = https_get(broker.http_port, ca, "/metrics")
    assert status == 200 and "tidewater_mqtt_connections" in body
    status, body = https_get(broker.http_port, ca, "/api/v1/streams")
    assert status == 200, body
    # plain HTTP gets a TLS alert, not an answer
    import http.client
    with pytest.raises((OSError, http.client.HTTPException)):
        broker.http_get("/health", timeout=3)
    out = subprocess.run(["curl", "-sS", "--cacert", str(ca), f"https://127.0.0.1:{broker.http_port}/health"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr



# -- client certificates ------------------------------------------------------------------------


def with_cert(pki, name):
    cert, key = pki[name]
    return ["--cert", str(cert), "--key", str(key)]


def test_a_client_certificate_is_the_username_and_the_acl_applies_to_it(make_broker, pki, tmp_path):
    ca = pki["first"][0]
    auth = {"allow_anonymous": False, "acl_default": "deny",
            "acl": [{"permission": "allow", "action": "all", "topic": "devices/%u/#"}]}
    broker = tls_broker(make_broker, pki, tmp_path, auth=auth, client_ca_file=str(ca), peer_cert_as_username="cn")
    sub = mosquitto("mosquitto_sub", broker, ca, *with_cert(pki, "device-1"), "-t", "devices/device-1/#",
                    "-q", "1", "-C", "2", "-W", "20", "-v")
    time.sleep(0.5)
    for text in ["one", "two"]:
        out = mosquitto("mosquitto_pub", broker, ca, *with_cert(pki, "device-1"), "-t", "devices/device-1/t",
                        "-q", "1", "-m", text)
        assert out.returncode == 0, out.stderr
    stdout, stderr = sub.communicate(timeout=25)
    assert stdout.splitlines() == ["devices/device-1/t one", "devices/device-1/t two"], stderr
    # device-2's certificate names device-2: device-1's topics are not its to read
    sub = mosquitto("mosquitto_sub", broker, ca, *with_cert(pki, "device-2"), "-t", "devices/device-1/#",
                    "-q", "1", "-C", "1", "-W", "3", "-V", "mqttv5")
    time.sleep(0.5)
    mosquitto("mosquitto_pub", broker, ca, *with_cert(pki, "device-1"), "-t", "devices/device-1/t", "-m", "three")
    stdout, _ = sub.communicate(timeout=10)
    assert "three" not in stdout
    # no certificate: the CONNECT's credentials count, and there are none
    out = mosquitto("mosquitto_pub", broker, ca, "-t", "devices/x/t", "-m", "anon")
    assert out.returncode != 0 and "not authorised" in (out.stderr + out.stdout).lower(), out.stderr


def test_san_naming_and_a_required_certificate(make_broker, pki, tmp_path):
    ca = pki["first"][0]
    auth = {"allow_anonymous": False, "acl_default": "deny",
            "acl": [{"permission": "allow", "action": "all", "topic": "by-san/%u"}]}
    broker = tls_broker(make_broker, pki, tmp_path, auth=auth, client_ca_file=str(ca), client_auth="required",
                        peer_cert_as_username="san")
    sub = mosquitto("mosquitto_sub", broker, ca, *with_cert(pki, "device-2"), "-t", "by-san/dev2.example",
                    "-q", "1", "-C", "1", "-W", "20")
    time.sleep(0.5)
    out = mosquitto("mosquitto_pub", broker, ca, *with_cert(pki, "device-2"), "-t", "by-san/dev2.example",
                    "-q", "1", "-m", "san")
    assert out.returncode == 0, out.stderr
    stdout, stderr = sub.communicate(timeout=25)
    assert stdout.strip() == "san", stderr
    # required: no certificate, or one another CA signed, gets no connection at all
    assert mosquitto("mosquitto_pub", broker, ca, "-t", "x", "-m", "none").returncode != 0
    assert mosquitto("mosquitto_pub", broker, ca, *with_cert(pki, "stranger"), "-t", "x", "-m", "s").returncode != 0
    assert "tls handshake failed" in broker.log_text()


def test_a_kafka_client_certificate_is_the_principal_unless_the_client_uses_sasl(make_broker, pki, tmp_path):
    """As on a Kafka SSL listener with client authentication: the certificate's name is the
    principal (User:device-1), which the ACL then weighs; SASL over the same TLS wins."""
    ca = str(pki["first"][0])
    users = [{"username": "root", "password_hash": tidewater_passwd("r00t"), "admin": True}]
    auth = {"allow_anonymous": False, "acl_default": "deny", "users": users,
            "acl": [{"permission": "allow", "action": "all", "topic": "%u"}]}
    broker = tls_broker(make_broker, pki, tmp_path, kafka=True, auth=auth, client_ca_file=ca,
                        peer_cert_as_username="cn")
    from confluent_kafka.admin import AdminClient, NewTopic
    root = AdminClient({"bootstrap.servers": bootstrap(broker), "security.protocol": "SASL_SSL",
                        "ssl.ca.location": ca, "sasl.mechanism": "PLAIN", "sasl.username": "root",
                        "sasl.password": "r00t"})
    for topic in ["device-1", "device-2"]:
        root.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=15)

    def certified(name):
        cert, key = pki[name]
        return {"security.protocol": "SSL", "ssl.ca.location": ca, "ssl.certificate.location": str(cert),
                "ssl.key.location": str(key)}

    # device-1 writes and reads its own topic, named by the ACL rule after its certificate
    produce_all(producer(broker, **certified("device-1")), "device-1", [{"value": b"c%d" % i} for i in range(3)])
    cons = consumer(broker, **certified("device-1"))
    cons.assign([TopicPartition("device-1", 0, 0)])
    try:
        assert [(r.offset, r.value) for r in poll_records(cons, 3)] == [(i, b"c%d" % i) for i in range(3)]
    finally:
        cons.close()
    # and nothing of device-2's
    prod = producer(broker, **certified("device-1"), **{"message.timeout.ms": 5000, "retries": 0})
    errors = []
    prod.produce("device-2", b"x", on_delivery=lambda err, msg: errors.append(err))
    prod.flush(10)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors
    # SASL on top of the certificate: root's identity, an admin, who may write anywhere
    as_root = {**certified("device-1"), "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
               "sasl.username": "root", "sasl.password": "r00t"}
    produce_all(producer(broker, **as_root), "device-2", [{"value": b"r"}])
    # no certificate and no SASL: served nothing
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": bootstrap(broker), "security.protocol": "SSL",
                     "ssl.ca.location": ca, "socket.timeout.ms": 3000}).list_topics(timeout=4)


def test_client_certificate_settings_without_a_ca_are_refused_at_start(tmp_path, pki):
    _, cert, key = pki["first"]
    for extra, named in [('client_auth = "required"', "tls.client_auth"),
                         ('peer_cert_as_username = "cn"', "tls.peer_cert_as_username")]:
        config = tmp_path / "tw.toml"
        config.write_text(f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n{extra}\n')
        out = subprocess.run([TIDEWATER_BIN, "start", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                             capture_output=True, text=True, timeout=30, env=broker_env(), cwd=tmp_path)
        assert out.returncode == 2 and named in out.stderr, out.stderr


# -- the data plane between nodes -----------------------------------------------------------------


def test_a_cluster_replicates_over_mutual_tls_and_a_peer_without_a_certificate_gets_nothing(make_broker, pki,
                                                                                          tmp_path):
    from test_cluster import agreed_controller, cluster_view, controller, node_ids, wait_for
    from test_replication import create_topic, leaders, read_all
    ca, cert, key = pki["first"]

    def config():
        return {"listeners": {"mqtts": f"127.0.0.1:{free_port()}"},
                "tls": {"cert_file": str(cert), "key_file": str(key), "cluster": True, "cluster_ca_file": str(ca),
                        "handshake_timeout_ms": 2000}}
    voters = ["--voters", "1,2,3"]
    first = make_broker(node_id=1, config=config(), extra_args=voters)
    seeds = ["--seeds", f"127.0.0.1:{first.gossip_port}"]
    nodes = [first] + [make_broker(node_id=i, config=config(), extra_args=seeds + voters) for i in (2, 3)]
    for node in nodes:
        wait_for(lambda node=node: node_ids(node) == [1, 2, 3], timeout=10)
    wait_for(lambda: agreed_controller(nodes) and len(controller(nodes[0])["registered"]) == 3, timeout=20)
    # the links are up, over TLS
    wait_for(lambda: all(n["link"] and n["link"]["connected"] for n in cluster_view(nodes[0])["nodes"]
                         if not n["self"]), timeout=10)
    topic = unique("mtls").replace("/", "-")
    admin = create_topic(nodes, topic, 1, 3)
    assert leaders(admin, topic, 1)[0][1] == [1, 2, 3]
    prod = producer(nodes[0], **{"acks": "all"})
    produce_all(prod, topic, [{"value": b"m%d" % i} for i in range(20)])
    got = read_all(nodes, topic, 1, {(0, i) for i in range(20)})
    assert [got[(0, i)] for i in range(20)] == [b"m%d" % i for i in range(20)]
    # a plaintext peer, and a TLS client without a certificate, get no data-plane session
    with socket.create_connection(("127.0.0.1", nodes[1].rpc_port), timeout=5) as plain:
        plain.sendall(b"\x00\x00\x00\x10" + b"x" * 16)
        plain.settimeout(5)
        answer = b""
        while chunk := plain.recv(64):
            answer += chunk
        assert answer in (b"",) or answer.startswith(b"\x15"), "a TLS alert at most, then the close"
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", nodes[1].rpc_port), timeout=5) as raw_sock:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with context.wrap_socket(raw_sock, server_hostname="127.0.0.1") as tls_sock:
                tls_sock.sendall(b"\x00\x00\x00\x10" + b"x" * 16)
                tls_sock.settimeout(5)
                if tls_sock.recv(64) == b"":
                    raise ConnectionError("closed")
    assert nodes[1].log_lines("tls handshake failed", 'protocol="rpc"')


def test_a_replaced_client_ca_file_verifies_new_connections_without_a_restart(make_broker, pki, tmp_path):
    ca_copy = tmp_path / "clients-ca.pem"
    ca_copy.write_bytes(pki["first"][0].read_bytes())
    broker = tls_broker(make_broker, pki, tmp_path, client_ca_file=str(ca_copy), client_auth="required",
                        peer_cert_as_username="cn")
    server_ca = pki["first"][0]

    def publishes(name):
        out = mosquitto("mosquitto_pub", broker, server_ca, *with_cert(pki, name), "-t", "ca/reload", "-m", name)
        return out.returncode == 0

    assert publishes("device-1") and not publishes("stranger")
    # the clients' CA is now the second one: its device gets in, the first CA's no longer does
    ca_copy.write_bytes(pki["second"][0].read_bytes())
    from test_cluster import wait_for
    wait_for(lambda: publishes("stranger"), timeout=10, step=0.3)
    assert not publishes("device-1")
    assert broker.log_lines("tls client CA reloaded")
