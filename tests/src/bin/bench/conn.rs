//! The `conn` mode: K idle MQTT connections from several 127.0.0.x source addresses, reporting
//! how fast the broker accepts them and how much resident memory each one costs it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::TargetArgs;
use crate::mqtt_load;
use crate::report::{self, Progress, Table, human, opt};
use crate::target::{Broker, CPU_HEADER, Cpu, CpuWindow};

/// Arguments of the conn mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    plan: ConnPlan,
}

/// One idle-connections scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnPlan {
    /// Connections to open (the open-files limit is 20,000 per process).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+N) the connections are spread over.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub(crate) sources: u8,
    /// Connection attempts in progress at once (keep it below the broker's listen backlog —
    /// Mosquitto's is 100 — or SYNs are dropped and retried a second later).
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Keepalive sent in CONNECT.
    #[arg(long, default_value_t = 60)]
    pub(crate) keepalive: u16,
    /// Seconds to let the broker settle before reading its RSS.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
    /// Seconds the connect phase may take at most.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) timeout: f64,
}

impl ConnPlan {
    /// The conn scenario of the peers comparison.
    pub(crate) fn with_connections(connections: usize) -> ConnPlan {
        ConnPlan { connections, sources: 8, concurrency: 32, keepalive: 60, settle: 2.0, timeout: 30.0 }
    }
}

/// Measurements of one conn run.
pub(crate) struct ConnResult {
    /// Connections that got a CONNACK.
    pub(crate) connected: usize,
    /// Connections that failed.
    pub(crate) failed: usize,
    /// Connections (CONNECT to CONNACK) per second.
    pub(crate) rate: f64,
    /// Broker RSS before, MiB.
    pub(crate) rss_before_mib: Option<f64>,
    /// Broker RSS with every connection open and settled, MiB.
    pub(crate) rss_after_mib: Option<f64>,
    /// (RSS after − RSS before) / connected, bytes.
    pub(crate) bytes_per_connection: Option<f64>,
    /// CPU use during the connect phase.
    pub(crate) cpu: Cpu,
    /// Times a listen queue overflowed on this machine meanwhile (kernel TcpExt ListenOverflows).
    pub(crate) listen_overflows: Option<u64>,
}

impl ConnResult {
    /// The result as JSON.
    pub(crate) fn json(&self) -> Value {
        json!({
            "connected": self.connected, "failed": self.failed, "connects_per_s": self.rate.round(),
            "rss_before_mib": self.rss_before_mib, "rss_after_mib": self.rss_after_mib,
            "bytes_per_connection": self.bytes_per_connection.map(f64::round), "cpu_percent": self.cpu.json(),
            "listen_overflows": self.listen_overflows,
        })
    }

    /// One table row.
    pub(crate) fn row(&self, label: &str) -> Vec<String> {
        let [broker, bench, other] = self.cpu.cells();
        vec![
            label.to_string(),
            self.connected.to_string(),
            self.failed.to_string(),
            human(self.rate),
            opt(self.rss_before_mib, 1),
            opt(self.rss_after_mib, 1),
            opt(self.bytes_per_connection, 0),
            broker,
            bench,
            other,
        ]
    }
}

/// Column names of a conn table.
pub(crate) const HEADER: [&str; 10] = [
    "broker",
    "connected",
    "failed",
    "connects/s",
    "RSS before MiB",
    "RSS after MiB",
    "B/conn",
    CPU_HEADER[0],
    CPU_HEADER[1],
    CPU_HEADER[2],
];

/// Runs the conn mode.
pub(crate) async fn main(args: ConnArgs, threads: usize) -> anyhow::Result<()> {
    let broker = Broker::from_args(&args.target).await?;
    let result = run(&broker, &args.plan).await?;
    let mut table = Table::new(&HEADER);
    table.row(result.row(&broker.name));
    let params = json!({
        "connections": args.plan.connections, "sources": args.plan.sources, "concurrency": args.plan.concurrency,
        "keepalive": args.plan.keepalive, "settle_s": args.plan.settle, "open_files_limit": crate::target::nofile_limit(),
    });
    report::finish("conn", threads, params, &table, json!([result.json()]));
    Ok(())
}

/// Opens the connections, measures, then closes them.
pub(crate) async fn run(broker: &Broker, plan: &ConnPlan) -> anyhow::Result<ConnResult> {
    let limit = crate::target::nofile_limit() as usize;
    anyhow::ensure!(
        plan.connections + 64 < limit,
        "{} connections need more open files than the limit {limit} allows",
        plan.connections
    );
    let run_id = crate::mqtt::run_id();
    broker.settle().await;
    let before = broker.sample();
    let cpu = CpuWindow::start(broker);
    let overflows_before = listen_overflows();
    let held = Arc::new(Mutex::new(Vec::with_capacity(plan.connections)));
    let next = Arc::new(AtomicUsize::new(0));
    let (connected, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let progress = {
        let (connected, failed, total) = (connected.clone(), failed.clone(), plan.connections);
        Progress::start("conn".into(), move |_| {
            format!(
                "connected {}/{total}, failed {}",
                connected.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            )
        })
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(plan.timeout);
    let mut workers = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency.max(1) {
        let (held, next, connected, failed) = (held.clone(), next.clone(), connected.clone(), failed.clone());
        let (mqtt, total, sources, keepalive) = (broker.mqtt, plan.connections, plan.sources, plan.keepalive);
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8));
                let client_id = format!("bench-c-{run_id:x}-{i}");
                let attempt = mqtt_load::connect(mqtt, Some(source), &client_id, keepalive);
                match tokio::time::timeout_at(deadline, attempt).await {
                    Ok(Ok(stream)) => {
                        mine.push(stream);
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("connection {i} failed: {error}");
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            held.lock().await.extend(mine);
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, _) = cpu.stop(broker);
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a.saturating_sub(b));
    if overflows.is_some_and(|n| n > 0) {
        eprintln!("the kernel dropped connection attempts: {overflows:?} listen queue overflows (lower --concurrency)");
    }
    tokio::time::sleep(Duration::from_secs_f64(plan.settle)).await;
    let after = broker.sample();
    drop(progress);
    let connected = connected.load(Ordering::Relaxed) as usize;
    let failed = failed.load(Ordering::Relaxed) as usize;
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / connected as f64),
        _ => None,
    };
    drop(held.lock().await.drain(..));
    Ok(ConnResult {
        connected,
        failed,
        rate: connected as f64 / elapsed.max(1e-3),
        rss_before_mib: before.map(|s| s.rss_kib as f64 / 1024.0),
        rss_after_mib: after.map(|s| s.rss_kib as f64 / 1024.0),
        bytes_per_connection: per_connection,
        cpu,
        listen_overflows: overflows,
    })
}

/// The kernel's count of listen queue overflows (all sockets).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let index = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(index)?.parse().ok()
}
