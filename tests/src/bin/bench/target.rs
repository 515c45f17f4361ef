//! The broker under test: started by the bench on free ports (Tidewater, Mosquitto, rumqttd) or
//! already running, and its CPU and memory as the kernel counts them in /proc.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TargetArgs;

/// A broker the bench talks to; a spawned one is stopped on drop.
pub(crate) struct Broker {
    /// Display name (tidewater, mosquitto, rumqttd).
    pub(crate) name: String,
    /// MQTT listener.
    pub(crate) mqtt: SocketAddr,
    /// Kafka listener (Tidewater only).
    pub(crate) kafka: SocketAddr,
    /// HTTP listener (Tidewater only).
    pub(crate) http: SocketAddr,
    /// The broker's process, when known.
    pub(crate) pid: Option<u32>,
    /// Seconds to wait, before each measurement, for the rest of the machine to go idle.
    pub(crate) wait_idle: f64,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGTERM first so the broker can close its storage; kill if it lingers
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Broker {
    /// The broker named by the target arguments: spawned, or the running one.
    pub(crate) async fn from_args(args: &TargetArgs) -> anyhow::Result<Broker> {
        match &args.spawn {
            Some(binary) => {
                let mut broker = Broker::spawn_tidewater_with(binary, &args.log_level, args.fsync.as_deref()).await?;
                broker.wait_idle = args.wait_idle;
                Ok(broker)
            }
            None => Ok(Broker {
                name: "tidewater".into(),
                mqtt: args.mqtt,
                kafka: args.kafka,
                http: args.http,
                pid: args.broker_pid,
                wait_idle: args.wait_idle,
                child: None,
                _dir: None,
            }),
        }
    }

    /// Starts `tidewater start` on free ports with a temporary data dir and no TIDEWATER_* variables.
    pub(crate) async fn spawn_tidewater(binary: &Path, log_level: &str) -> anyhow::Result<Broker> {
        Self::spawn_tidewater_with(binary, log_level, None).await
    }

    /// The data directory of a spawned broker.
    pub(crate) fn data_dir(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|dir| dir.path().join("data"))
    }

    /// [`Broker::spawn_tidewater`] with `storage.fsync` set when given.
    pub(crate) async fn spawn_tidewater_with(
        binary: &Path,
        log_level: &str,
        fsync: Option<&str>,
    ) -> anyhow::Result<Broker> {
        Self::spawn_tidewater_env(binary, log_level, fsync, &[]).await
    }

    /// [`Broker::spawn_tidewater_with`] with more environment variables (`TIDEWATER_*`
    /// settings), set after the bench's own so they win.
    pub(crate) async fn spawn_tidewater_env(
        binary: &Path,
        log_level: &str,
        fsync: Option<&str>,
        env: &[(String, String)],
    ) -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new().prefix("tidewater-bench-").tempdir()?;
        let (mqtt, kafka, http) = (loopback(free_port()?), loopback(free_port()?), loopback(free_port()?));
        let (rpc, gossip) = (loopback(free_port()?), loopback(free_port()?));
        // the child runs in the temporary dir: resolve a relative path first
        let binary = std::fs::canonicalize(binary).with_context(|| format!("cannot find {}", binary.display()))?;
        let mut command = tidewater_tests::command_for(&binary);
        // the same window and queue the peers get (see peers.rs): a like-for-like comparison
        if let Some(fsync) = fsync {
            command.env("TIDEWATER_STORAGE__FSYNC", fsync);
        }
        command
            .env("TIDEWATER_MQTT__MAX_INFLIGHT", PEER_INFLIGHT.to_string())
            .env("TIDEWATER_MQTT__MAX_QUEUED_MESSAGES", PEER_MAX_QUEUED.to_string())
            .envs(env.iter().map(|(key, value)| (key, value)))
            .arg("start")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--mqtt-listen", &mqtt.to_string(), "--kafka-listen", &kafka.to_string()])
            .args(["--http-listen", &http.to_string(), "--rpc-listen", &rpc.to_string()])
            .args(["--gossip-listen", &gossip.to_string(), "--log-level", log_level])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("tidewater.log"))?);
        let child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = Some(child.id());
        let mut broker = Broker {
            name: "tidewater".into(),
            mqtt,
            kafka,
            http,
            pid,
            wait_idle: 0.0,
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_request(http, "GET", "/health", None).await {
                return Ok(broker);
            }
            if let Some(child) = &mut broker.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("tidewater exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("tidewater did not become healthy on {http} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a peer broker from a prepared command and waits until its MQTT port accepts.
    pub(crate) async fn spawn_peer(
        name: &str,
        mut command: Command,
        mqtt: SocketAddr,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Broker> {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        let pid = Some(child.id());
        let mut broker = Broker {
            name: name.into(),
            mqtt,
            kafka: mqtt,
            http: mqtt,
            pid,
            wait_idle: 0.0,
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(mqtt).await.is_ok() {
                return Ok(broker);
            }
            if let Some(child) = &mut broker.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("{name} exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {mqtt} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `wait_idle` seconds until the rest of the machine uses less than a quarter
    /// of one core, so other people's builds do not share the cores with a measurement.
    pub(crate) async fn settle(&self) {
        if self.wait_idle <= 0.0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(self.wait_idle);
        loop {
            let window = CpuWindow::start(self);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (cpu, _) = window.stop(self);
            let other = cpu.other.unwrap_or(0.0);
            if other < 25.0 {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "the machine is still busy ({other:.0}% of a core used by other processes); measuring anyway"
                );
                return;
            }
            eprintln!("waiting for the machine to go idle: other processes use {other:.0}% of a core");
        }
    }

    /// CPU ticks and RSS of the broker now, when its pid is known.
    pub(crate) fn sample(&self) -> Option<ProcSample> {
        self.pid.and_then(ProcSample::read)
    }
}

/// One reading of a process's CPU time and resident memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    /// utime + stime in clock ticks.
    pub(crate) ticks: u64,
    /// VmRSS in KiB.
    pub(crate) rss_kib: u64,
    /// When it was read.
    pub(crate) at: Instant,
}

impl ProcSample {
    /// Reads /proc/<pid>/stat and /proc/<pid>/status.
    pub(crate) fn read(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // the command name may hold spaces: fields are counted after its closing parenthesis
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, so 11 and 12 after the name (state is 0)
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(ProcSample { ticks, rss_kib, at: Instant::now() })
    }

    /// Reads this process (the generator).
    pub(crate) fn own() -> Option<ProcSample> {
        ProcSample::read(std::process::id())
    }
}

/// CPU used between two samples, in percent of one core.
fn cpu_percent(before: Option<ProcSample>, after: Option<ProcSample>) -> Option<f64> {
    let (before, after) = (before?, after?);
    let secs = after.at.duration_since(before.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    // USER_HZ is 100 on every Linux architecture the bench runs on
    Some((after.ticks.saturating_sub(before.ticks)) as f64 / 100.0 / secs * 100.0)
}

/// Busy clock ticks of the whole machine (every CPU) from /proc/stat.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).copied().unwrap_or(0))
}

/// CPU use over an interval, each in % of one core.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// The broker process.
    pub(crate) broker: Option<f64>,
    /// This generator.
    pub(crate) bench: Option<f64>,
    /// Everything else on the machine (other builds and tests disturb the numbers).
    pub(crate) other: Option<f64>,
}

impl Cpu {
    /// The three figures as table cells.
    pub(crate) fn cells(&self) -> [String; 3] {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        [f(self.broker), f(self.bench), f(self.other)]
    }

    /// The three figures as JSON fields.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({"broker": self.broker.map(f64::round), "bench": self.bench.map(f64::round),
                           "other": self.other.map(f64::round)})
    }
}

/// Column names matching [`Cpu::cells`].
pub(crate) const CPU_HEADER: [&str; 3] = ["broker CPU %", "bench CPU %", "other CPU %"];

/// Measures CPU of the broker, the generator and the rest of the machine over an interval.
pub(crate) struct CpuWindow {
    broker: Option<ProcSample>,
    own: Option<ProcSample>,
    machine: Option<u64>,
    at: Instant,
}

impl CpuWindow {
    /// Starts measuring.
    pub(crate) fn start(broker: &Broker) -> CpuWindow {
        CpuWindow { broker: broker.sample(), own: ProcSample::own(), machine: machine_busy_ticks(), at: Instant::now() }
    }

    /// CPU use since the start and the seconds elapsed.
    pub(crate) fn stop(self, broker: &Broker) -> (Cpu, f64) {
        let (broker_now, own_now, machine_now) = (broker.sample(), ProcSample::own(), machine_busy_ticks());
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let ticks = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => b.ticks.saturating_sub(a.ticks),
            _ => 0,
        };
        let other = match (self.machine, machine_now) {
            (Some(a), Some(b)) => {
                let ours = ticks(self.broker, broker_now) + ticks(self.own, own_now);
                Some(((b.saturating_sub(a)).saturating_sub(ours)) as f64 / 100.0 / secs * 100.0)
            }
            _ => None,
        };
        let cpu = Cpu { broker: cpu_percent(self.broker, broker_now), bench: cpu_percent(self.own, own_now), other };
        (cpu, secs)
    }
}

/// Raises the soft open-files limit to the hard one (children inherit it).
pub(crate) fn raise_nofile_limit() {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open-files limit: {error}");
    }
}

/// The soft open-files limit now.
pub(crate) fn nofile_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(0)
}

/// Sends one HTTP/1.1 request and returns (status, body).
pub(crate) async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad http response")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// What machine the numbers come from.
pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    serde_json::json!({ "nproc": nproc, "cpu": cpu, "ram_gib": (ram_kib as f64 / 1048576.0 * 10.0).round() / 10.0 })
}

/// Messages in flight per client, the same for every broker measured.
pub(crate) const PEER_INFLIGHT: u16 = 100;
/// Messages queued per client, the same for every broker measured.
pub(crate) const PEER_MAX_QUEUED: u32 = 1_000_000;
