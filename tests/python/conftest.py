"""Fixtures that run a real broker process for each test.

By default the broker is the `tidewater` binary (TIDEWATER_BIN, else <repo>/target/release/tidewater),
started on free loopback ports with its own data directory. With TEST_BROKER=mosquitto the same tests
run against mosquitto 2.0 instead, which proves that the tests of standard MQTT behaviour are right;
tests of Tidewater-only features carry the `tidewater_only` marker and are skipped in that mode.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BROKER_KIND = os.environ.get("TEST_BROKER", "tidewater").strip().lower()
MOSQUITTO = BROKER_KIND == "mosquitto"
TIDEWATER_BIN = os.environ.get("TIDEWATER_BIN", str(REPO / "target" / "release" / "tidewater"))
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def pytest_configure(config):
    if BROKER_KIND not in ("tidewater", "mosquitto"):
        raise pytest.UsageError(f"TEST_BROKER must be tidewater or mosquitto, not {BROKER_KIND!r}")


def pytest_collection_modifyitems(config, items):
    if not MOSQUITTO:
        return
    for item in items:
        if item.get_closest_marker("tidewater_only"):
            item.add_marker(pytest.mark.skip(reason="tidewater-only feature"))
        deviation = item.get_closest_marker("mosquitto_deviation")
        if deviation:
            reason = deviation.args[0] if deviation.args else deviation.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"mosquitto deviates from the spec: {reason}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for broker in item.stash.get(BROKERS_KEY, []):
            report.sections.append((f"broker {broker.name} log (tail)", broker.log_tail()))
    return report


BROKERS_KEY = pytest.StashKey[list]()


def free_port() -> int:
    """A port the kernel just handed out for 127.0.0.1 (released before the broker binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# TOML writing (tomllib only reads)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as toml")


def to_toml(config: dict, prefix: str = "") -> str:
    """Write a nested dict as TOML: scalars first, then [tables], then [[arrays of tables]]."""
    lines = []
    tables = []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += f"\n[{name}]\n" + to_toml(value, prefix=f"{name}.")
        else:
            for entry in value:
                out += f"\n[[{name}]]\n" + to_toml(entry, prefix=f"{name}.")
    return out


# ---------------------------------------------------------------------------------------------


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One broker process with its own ports and data directory.

    config: Tidewater TOML settings as a nested dict (e.g. {"mqtt": {"max_packet_size": 1024}});
      in mosquitto mode the keys that have a mosquitto equivalent are translated, others raise.
    users: {username: plaintext password}; hashed with `tidewater passwd` (or mosquitto_passwd).
    mosquitto_acl: the text of a mosquitto acl_file equivalent to config["auth"]["acl"].
    """

    def __init__(self, base_dir: Path, name="b1", config=None, users=None, mosquitto_acl=None,
                 env=None, extra_args=(), node_id=1, host="127.0.0.1", netns=None):
        self.name = name
        self.node_id = node_id
        self.config = config or {}
        self.users = users or {}
        self.mosquitto_acl = mosquitto_acl
        self.extra_env = env or {}
        self.extra_args = list(extra_args)
        self.host = host
        # run inside this network namespace (made by the test), listening on `host` there
        self.netns = netns
        self.dir = base_dir
        self.data_dir = base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # mosquitto started as root drops to the mosquitto user: it must be able to write here
        for path in (base_dir, self.data_dir):
            os.chmod(path, 0o777)
        self.log_path = base_dir / f"{name}.log"
        self.proc = None
        self.starts = 0
        self._pick_ports()

    def _pick_ports(self):
        self.mqtt_port = free_port()
        self.kafka_port = free_port()
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.gossip_port = free_udp_port()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self):
        """Start the process and wait (bounded) until it serves; retried on a port clash."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        last_error = None
        for attempt in range(3):
            try:
                self._start_once()
                return self
            except BrokerStartError as err:
                last_error = err
                text = self.log_text().lower()
                if self.starts == 1 and attempt < 2 and ("in use" in text or "eaddrinuse" in text):
                    self._pick_ports()  # first start only: a restart must keep its ports
                    self.starts = 0
                    continue
                raise
        raise last_error

    def _start_once(self):
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts} of {self.name} =====\n".encode())
        log.flush()
        if MOSQUITTO:
            # line-buffered stdout so that the log is complete when a test fails
            cmd = ["stdbuf", "-oL", "mosquitto", "-c", str(self._write_mosquitto_conf())]
            env = dict(os.environ)
        else:
            if not os.path.exists(TIDEWATER_BIN):
                pytest.fail(f"tidewater binary not found at {TIDEWATER_BIN}: build it with "
                            "`cargo build --release` or set TIDEWATER_BIN", pytrace=False)
            cmd = [TIDEWATER_BIN, "start", "--node-id", str(self.node_id), "--data-dir", str(self.data_dir),
                   "--mqtt-listen", f"{self.host}:{self.mqtt_port}",
                   "--kafka-listen", f"{self.host}:{self.kafka_port}",
                   "--http-listen", f"{self.host}:{self.http_port}",
                   "--rpc-listen", f"{self.host}:{self.rpc_port}",
                   "--gossip-listen", f"{self.host}:{self.gossip_port}"]
            config_path = self._write_tidewater_config()
            if config_path:
                cmd += ["--config", str(config_path)]
            cmd += self.extra_args
            if self.netns:
                cmd = ["ip", "netns", "exec", self.netns, *cmd]  # execs: the process is the node
            env = broker_env(self.extra_env)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerStartError(f"broker {self.name} exited with {self.proc.returncode} "
                                       f"during start; log:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise BrokerStartError(f"broker {self.name} not ready within {START_TIMEOUT}s; "
                               f"log:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if MOSQUITTO:
            # read the log rather than probe the port: a probe connection would count against
            # max_connections for a while
            marker = f"===== start #{self.starts} of {self.name} ====="
            return " running" in self.log_text().split(marker)[-1]
        try:
            status, _ = self.http_get("/health", timeout=0.5)
            return status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout=STOP_TIMEOUT) -> int:
        """SIGTERM and wait (bounded) for the exit; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"broker {self.name} did not exit within {timeout}s of SIGTERM")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self):
        """SIGTERM (graceful), then start again with the same ports and data directory."""
        code = self.stop()
        assert code == 0, f"broker exited with {code} on SIGTERM"
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- config --------------------------------------------------------------------------------

    def _write_tidewater_config(self):
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.config.items()}
        if self.users:
            auth = config.setdefault("auth", {})
            auth["users"] = [{"username": u, "password_hash": tidewater_passwd(p)}
                             for u, p in self.users.items()]
        if not config:
            return None
        path = self.dir / "tidewater.toml"
        path.write_text(to_toml(config))
        return path

    def _write_mosquitto_conf(self) -> Path:
        mqtt = dict(self.config.get("mqtt", {}))
        auth = dict(self.config.get("auth", {}))
        unknown = set(self.config) - {"mqtt", "auth", "storage"}
        if unknown:
            raise NotImplementedError(f"no mosquitto equivalent for {sorted(unknown)}")
        lines = ["per_listener_settings false",
                 f"listener {self.mqtt_port} {self.host}",
                 "log_dest stdout", "log_type all", "connection_messages true",
                 "persistence true", f"persistence_location {self.data_dir}/",
                 "autosave_interval 3600"]
        listener_keys = {"max_connections": "max_connections", "max_topic_alias": "max_topic_alias"}
        global_keys = {"max_packet_size": "max_packet_size", "max_inflight": "max_inflight_messages",
                       "max_queued_messages": "max_queued_messages", "max_keepalive": "max_keepalive",
                       "retain_available": "retain_available"}
        for key, value in mqtt.items():
            if key in listener_keys:
                lines.insert(2, f"{listener_keys[key]} {value}")
            elif key in global_keys:
                lines.append(f"{global_keys[key]} {str(value).lower()}")
            elif key == "queue_overflow" and value == "drop_new":
                pass  # mosquitto always drops new messages once the queue is full
            else:
                raise NotImplementedError(f"no mosquitto equivalent for mqtt.{key}={value!r}")
        lines.append(f"allow_anonymous {str(auth.pop('allow_anonymous', True)).lower()}")
        if auth.pop("acl", None) is not None or self.mosquitto_acl is not None:
            assert self.mosquitto_acl is not None, "pass mosquitto_acl along with auth.acl"
            acl_path = self.dir / "mosquitto.acl"
            acl_path.write_text(self.mosquitto_acl)
            os.chmod(acl_path, 0o644)
            lines.append(f"acl_file {acl_path}")
        auth.pop("acl_default", None)  # expressed by the mosquitto_acl text
        if auth:
            raise NotImplementedError(f"no mosquitto equivalent for auth {sorted(auth)}")
        if self.users:
            pw_path = self.dir / "mosquitto.passwd"
            pw_path.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw_path), user, password],
                               check=True, capture_output=True, timeout=20)
            os.chmod(pw_path, 0o644)
            lines.append(f"password_file {pw_path}")
        path = self.dir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o644)
        return path

    # -- observation ---------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, *needles, timeout=5.0) -> list:
        """The log lines holding every one of `needles`, waiting up to `timeout` for one."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_text().splitlines() if all(n in line for n in needles)]
            if lines or time.monotonic() >= deadline:
                return lines
            time.sleep(0.05)

    def log_tail(self, lines=200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def http_get(self, path, timeout=5.0):
        url = f"http://{self.host}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def metrics(self) -> dict:
        """Parse /metrics: {(name, frozenset(labels.items())): value}."""
        status, text = self.http_get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return parse_prometheus(text)


def parse_prometheus(text: str) -> dict:
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            label_text, value_text = rest.rsplit("}", 1)
            labels = {}
            for part in _split_labels(label_text):
                key, val = part.split("=", 1)
                labels[key.strip()] = val.strip().strip('"')
        else:
            name, value_text = line.split(None, 1)
            labels = {}
        value = float(value_text.split()[0])
        samples[(name.strip(), frozenset(labels.items()))] = value
    return samples


def _split_labels(text):
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            if current.strip():
                parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def metric_sum(samples: dict, name: str, **labels) -> float:
    """Sum of every sample of `name` whose labels include `labels`; 0 when absent."""
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def metric_names(samples: dict) -> set:
    return {name for name, _ in samples}


def broker_env(extra=None) -> dict:
    """The environment for a tidewater child: ours without TIDEWATER_* variables (TIDEWATER_BIN
    would read as an unknown config key), plus the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEWATER_")}
    env.setdefault("RUST_BACKTRACE", "1")
    env.update(extra or {})
    return env


def tidewater_passwd(password: str, *flags: str) -> str:
    out = subprocess.run([TIDEWATER_BIN, "passwd", *flags, password], capture_output=True, text=True,
                         timeout=30, env=broker_env())
    assert out.returncode == 0, f"tidewater passwd failed: {out.stderr}"
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    assert lines, "tidewater passwd printed nothing"
    return lines[-1]


# ---------------------------------------------------------------------------------------------


@pytest.fixture
def make_broker(request):
    """Factory: make_broker(config=..., users=..., start=True) -> Broker; all stopped at teardown."""
    brokers = []
    dirs = []
    request.node.stash[BROKERS_KEY] = brokers

    def factory(start=True, **kwargs):
        base = Path(tempfile.mkdtemp(prefix="tw-test-", dir="/tmp"))
        dirs.append(base)
        broker = Broker(base, name=kwargs.pop("name", f"b{len(brokers) + 1}"), **kwargs)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield factory
    for broker in brokers:
        try:
            if broker.alive():
                broker.proc.send_signal(signal.SIGTERM)
                try:
                    broker.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    broker.kill()
        except Exception:  # noqa: BLE001 - teardown must clean every broker
            broker.kill()
    for base in dirs:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def broker(make_broker):
    """A broker with the default configuration."""
    return make_broker()
