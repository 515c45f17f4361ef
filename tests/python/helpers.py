"""Client helpers for the black-box tests: a paho-mqtt wrapper and mosquitto_pub/mosquitto_sub.

Every wait is bounded; a helper that waits for an event fails the test with what it saw instead.
"""

import itertools
import os
import queue
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import rawmqtt

WAIT = 10.0  # default bound on waiting for something that must happen
QUIET = 1.0  # how long to watch for something that must not happen
_counter = itertools.count()


def unique(prefix="t") -> str:
    """A name unique to this process and call, for client ids and topics."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def wait_until(predicate, timeout=WAIT, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def props(packet_type, **values) -> Properties:
    """paho Properties from snake-free names, e.g. props('PUBLISH', MessageExpiryInterval=1)."""
    p = Properties(getattr(PacketTypes, packet_type))
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Client:
    """A paho-mqtt 2.x client on its own network thread that records what arrives."""

    def __init__(self, broker, client_id=None, version=5, clean=True, session_expiry=None,
                 username=None, password=None, keepalive=30, will=None, connect_props=None,
                 manual_ack=False):
        self.broker = broker
        self.version = version
        self.client_id = unique("c") if client_id is None else client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.connect_props = connect_props or {}
        protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        kwargs = {"clean_session": clean} if version != 5 else {}
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                protocol=protocol, reconnect_on_failure=False,
                                manual_ack=manual_ack, **kwargs)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will:
            will_props = None
            if will.get("props"):
                will_props = props("WILLMESSAGE", **will["props"])
            self.paho.will_set(will["topic"], will.get("payload"), will.get("qos", 0),
                               will.get("retain", False), properties=will_props)
        self.messages = queue.Queue()
        self.connack = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.subacks = {}
        self.suback_event = threading.Condition()
        self.puback_codes = {}
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_unsubscribe = self._on_unsubscribe

    # -- callbacks (paho network thread) -------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (flags.session_present, reason_code, properties)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.suback_event:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.suback_event.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.suback_event:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.suback_event.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.puback_codes[mid] = reason_code.value if reason_code is not None else 0

    # -- actions -------------------------------------------------------------------------------

    def connect(self, timeout=WAIT, expect_success=True):
        """Connect and wait for the CONNACK; returns (session_present, reason_code_value)."""
        self.connected.clear()
        self.disconnected.clear()
        kwargs = {}
        if self.version == 5:
            kwargs["clean_start"] = self.clean
            cp = dict(self.connect_props)
            if self.session_expiry is not None:
                cp["SessionExpiryInterval"] = self.session_expiry
            if cp:
                kwargs["properties"] = props("CONNECT", **cp)
        self.paho.connect(self.broker.host, self.broker.mqtt_port, keepalive=self.keepalive,
                          **kwargs)
        self.paho.loop_start()
        deadline = time.monotonic() + timeout
        while not self.connected.is_set():
            if self.disconnected.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"client {self.client_id}: no CONNACK "
                                     f"(disconnect reason {self.disconnect_reason})")
            time.sleep(0.01)
        session_present, reason_code, _ = self.connack
        if expect_success:
            assert reason_code.value == 0, f"CONNACK refused: {reason_code}"
        return session_present, reason_code.value

    def subscribe(self, topic, qos=1, no_local=False, retain_as_published=False,
                  retain_handling=0, sub_id=None, timeout=WAIT) -> list:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        if self.version == 5:
            options = SubscribeOptions(qos=qos, noLocal=no_local,
                                       retainAsPublished=retain_as_published,
                                       retainHandling=retain_handling)
            properties = props("SUBSCRIBE", SubscriptionIdentifier=sub_id) if sub_id else None
            result, mid = self.paho.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.paho.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        with self.suback_event:
            ok = self.suback_event.wait_for(lambda: mid in self.subacks, timeout)
        assert ok, f"no SUBACK for {topic} within {timeout}s"
        return self.subacks[mid]

    def unsubscribe(self, topic, timeout=WAIT) -> list:
        """Unsubscribe and wait for the UNSUBACK; returns its reason codes (empty for 3.1.1)."""
        result, mid = self.paho.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed locally: {result}"
        with self.suback_event:
            ok = self.suback_event.wait_for(lambda: mid in self.subacks, timeout)
        assert ok, f"no UNSUBACK for {topic} within {timeout}s"
        return self.subacks[mid]

    def publish(self, topic, payload=b"", qos=1, retain=False, properties=None, wait=True,
                timeout=WAIT):
        """Publish; with wait, block until the PUBACK/PUBCOMP (or send, for QoS 0).

        Returns the PUBACK/PUBREC reason code (v5) or 0.
        """
        prop = props("PUBLISH", **properties) if properties else None
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=prop)
        if wait:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"publish to {topic} not acknowledged within {timeout}s"
            return self.puback_codes.get(info.mid, 0)
        return info

    def wait_message(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"client {self.client_id}: no message within {timeout}s") from None

    def wait_messages(self, count, timeout=WAIT) -> list:
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(0.0, remaining)))
            except queue.Empty:
                raise AssertionError(
                    f"client {self.client_id}: {len(got)} of {count} messages within {timeout}s: "
                    f"{[(m.topic, m.payload) for m in got]}") from None
        return got

    def drain(self, duration=QUIET) -> list:
        """Every message that arrives within `duration` seconds."""
        deadline = time.monotonic() + duration
        got = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            try:
                got.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                return got

    def assert_no_message(self, duration=QUIET):
        got = self.drain(duration)
        assert not got, f"unexpected messages: {[(m.topic, m.payload) for m in got]}"

    def wait_disconnected(self, timeout=WAIT):
        assert self.disconnected.wait(timeout), f"client {self.client_id} still connected"
        return self.disconnect_reason

    def disconnect(self):
        """A normal DISCONNECT, then stop the network thread."""
        if self.paho.is_connected():
            self.paho.disconnect()
            self.disconnected.wait(WAIT)
        self.paho.loop_stop()

    def close(self):
        try:
            self.disconnect()
        except Exception:  # noqa: BLE001 - cleanup
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connected(broker, **kwargs) -> Client:
    client = Client(broker, **kwargs)
    client.connect()
    return client


def raw(broker, version=5, source=None) -> rawmqtt.RawClient:
    """A raw MQTT connection; `source`: the local address to connect from (127.0.0.x)."""
    return rawmqtt.RawClient(broker.host, broker.mqtt_port, version=version, source=source)


# ---------------------------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub


def _version_flag(version):
    return ["-V", "mqttv5" if version == 5 else "mqttv311"]


def mosquitto_pub(broker, topic, message=None, qos=0, retain=False, version=5, extra=(),
                  timeout=WAIT):
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.mqtt_port), *_version_flag(version),
           "-t", topic, "-q", str(qos), "-i", unique("mpub")]
    cmd += ["-n"] if message is None else ["-m", message]
    if retain:
        cmd.append("-r")
    cmd += list(extra)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed: {out.stderr}"


class MosquittoSub:
    """mosquitto_sub in the background, started only once its SUBACK has arrived.

    Each received message becomes (topic, qos, retain, payload).
    """

    FORMAT = "MSG\t%t\t%q\t%r\t%p"

    def __init__(self, broker, topic, qos=0, version=5, count=None, wait_s=20, client_id=None,
                 extra=()):
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", broker.host, "-p", str(broker.mqtt_port),
               *_version_flag(version), "-t", topic, "-q", str(qos), "-d", "-F", self.FORMAT,
               "-i", client_id or unique("msub"), "-W", str(wait_s)]
        if count is not None:
            cmd += ["-C", str(count)]
        cmd += list(extra)
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines = queue.Queue()
        self.output = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self._wait_line(lambda line: "received SUBACK" in line, "SUBACK")

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _wait_line(self, predicate, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: no {what} within {timeout}s; "
                                     f"output: {self.output}") from None
            if line is None:
                raise AssertionError(f"mosquitto_sub exited before {what}; output: {self.output}")
            if predicate(line):
                return line

    def messages(self, count, timeout=WAIT) -> list:
        got = []
        while len(got) < count:
            line = self._wait_line(lambda l: l.startswith("MSG\t"), f"message {len(got) + 1}",
                                   timeout)
            _, topic, qos, retain, payload = line.split("\t", 4)
            got.append((topic, int(qos), retain == "1", payload))
        return got

    def drain(self, duration=QUIET) -> list:
        """Every message line that arrives within `duration` seconds."""
        deadline = time.monotonic() + duration
        got = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                return got
            if line is None:
                return got
            if line.startswith("MSG\t"):
                _, topic, qos, retain, payload = line.split("\t", 4)
                got.append((topic, int(qos), retain == "1", payload))

    def wait_exit(self, timeout=WAIT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mosquitto_sub still running; output: {self.output}") from None

    def kill(self):
        """SIGKILL: the socket is closed without DISCONNECT."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
