//! The `flood` mode: subscribers that never read, fed large QoS 0 messages as fast as the
//! broker takes them, then every client gone. It reports the broker's RSS before, at its peak
//! during the flood, at the end of it, and some seconds after the clients left, next to the
//! node's memory budget (Tidewater) or Mosquitto's RSS under the same load.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tidewater_tests::clients::mqtt_wire as wire;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::mqtt_load;
use crate::report::{self, Progress, Table, human, opt};
use crate::target::{Broker, free_port};

/// Arguments of the flood mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct FloodArgs {
    /// The `tidewater` binary to start.
    #[arg(long)]
    spawn: PathBuf,
    /// Brokers to flood, one after the other: tidewater, mosquitto.
    #[arg(long, value_delimiter = ',', default_value = "tidewater")]
    brokers: Vec<String>,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Subscribers that never read.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Publishers flooding them.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Payload bytes of each message.
    #[arg(long, default_value_t = 256 * 1024)]
    payload: usize,
    /// Seconds of flood.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds after the clients left before the last RSS reading.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Messages a session queues (both brokers; Tidewater's default).
    #[arg(long, default_value_t = 1000)]
    queued: usize,
    /// Tidewater's `memory.budget_bytes` (its default when not given).
    #[arg(long)]
    budget: Option<u64>,
    /// Log level of tidewater.
    #[arg(long, default_value = "warn")]
    log_level: String,
}

/// What one flood measured.
struct FloodResult {
    broker: String,
    published_mib: f64,
    rate_mib_s: f64,
    before_mib: Option<f64>,
    peak_mib: Option<f64>,
    end_mib: Option<f64>,
    after_mib: Option<f64>,
    budget_mib: Option<f64>,
    /// the largest counts Tidewater reported: session queues, deliveries between sessions (MiB)
    counted_mib: Option<(f64, f64)>,
    /// messages the broker dropped for the budget, and publisher pauses (Tidewater)
    dropped: Option<(u64, u64)>,
}

impl FloodResult {
    fn json(&self) -> Value {
        json!({
            "broker": self.broker, "published_mib": self.published_mib.round(), "rate_mib_s": self.rate_mib_s.round(),
            "rss_before_mib": self.before_mib, "rss_peak_mib": self.peak_mib, "rss_end_mib": self.end_mib,
            "rss_after_mib": self.after_mib, "budget_mib": self.budget_mib,
            "queues_peak_mib": self.counted_mib.map(|c| c.0), "deliveries_peak_mib": self.counted_mib.map(|c| c.1),
            "dropped_memory_budget": self.dropped.map(|d| d.0), "publisher_pauses": self.dropped.map(|d| d.1),
        })
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.broker.clone(),
            human(self.published_mib),
            human(self.rate_mib_s),
            opt(self.before_mib, 1),
            opt(self.peak_mib, 1),
            opt(self.end_mib, 1),
            opt(self.after_mib, 1),
            opt(self.budget_mib, 0),
            opt(self.counted_mib.map(|c| c.0), 1),
            opt(self.counted_mib.map(|c| c.1), 1),
            self.dropped.map_or("-".into(), |d| d.0.to_string()),
            self.dropped.map_or("-".into(), |d| d.1.to_string()),
        ]
    }
}

const HEADER: [&str; 12] = [
    "broker",
    "published MiB",
    "in MiB/s",
    "RSS before MiB",
    "RSS peak MiB",
    "RSS end of flood MiB",
    "RSS after clients left MiB",
    "budget MiB",
    "queues peak MiB",
    "deliveries peak MiB",
    "dropped (budget)",
    "publisher pauses",
];

/// One series of Tidewater's `/metrics` text (the first whose name and labels start so).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(prefix))?.rsplit(' ').next()?.parse().ok()
}

/// (session queues, deliveries) bytes, and (dropped for the budget, publisher pauses), from
/// Tidewater's metrics.
async fn memory_metrics(broker: &Broker) -> Option<((f64, f64), (u64, u64))> {
    let (status, text) = crate::target::http_request(broker.http, "GET", "/metrics", None).await.ok()?;
    if status != 200 {
        return None;
    }
    let queues = metric(&text, "tidewater_memory_bytes{node=\"1\",part=\"session_queues\"}")?;
    let deliveries = metric(&text, "tidewater_memory_bytes{node=\"1\",part=\"deliveries\"}")?;
    let dropped = metric(&text, "tidewater_mqtt_messages_dropped_total{node=\"1\",reason=\"memory_budget\"}")?;
    let pauses = metric(&text, "tidewater_mqtt_publisher_pauses_total{node=\"1\"}")?;
    Some(((queues, deliveries), (dropped as u64, pauses as u64)))
}

/// Runs the flood mode.
pub(crate) async fn main(args: FloodArgs, threads: usize) -> anyhow::Result<()> {
    let mut table = Table::new(&HEADER);
    let mut results = Vec::new();
    for name in &args.brokers {
        eprintln!("== {name}");
        let (broker, budget) = start(name, &args).await?;
        let result = flood(&broker, budget, &args).await?;
        table.row(result.row());
        results.push(result.json());
    }
    let params = json!({
        "subscribers": args.subscribers, "publishers": args.publishers, "payload": args.payload,
        "seconds": args.seconds, "settle_s": args.settle, "queued": args.queued,
    });
    report::finish("flood", threads, params, &table, Value::Array(results));
    Ok(())
}

/// The budget Tidewater runs with when none is given (`memory.budget_bytes`).
const DEFAULT_BUDGET: u64 = 512 << 20;

async fn start(name: &str, args: &FloodArgs) -> anyhow::Result<(Broker, Option<u64>)> {
    match name {
        "tidewater" => {
            let mut env = vec![("TIDEWATER_MQTT__MAX_QUEUED_MESSAGES".to_string(), args.queued.to_string())];
            if let Some(budget) = args.budget {
                env.push(("TIDEWATER_MEMORY__BUDGET_BYTES".to_string(), budget.to_string()));
            }
            let broker = Broker::spawn_tidewater_env(&args.spawn, &args.log_level, None, &env).await?;
            Ok((broker, Some(args.budget.unwrap_or(DEFAULT_BUDGET))))
        }
        "mosquitto" => {
            let dir = tempfile::Builder::new().prefix("bench-mosquitto-").tempdir()?;
            let port = free_port()?;
            let config = dir.path().join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n\
                     max_queued_messages {}\nmessage_size_limit 0\n",
                    args.queued
                ),
            )?;
            let mut command = Command::new(&args.mosquitto);
            command.arg("-c").arg(&config);
            let mqtt = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            Ok((Broker::spawn_peer(name, command, mqtt, dir).await?, None))
        }
        other => anyhow::bail!("unknown broker {other}: tidewater or mosquitto"),
    }
}

fn rss_mib(broker: &Broker) -> Option<f64> {
    broker.sample().map(|sample| sample.rss_kib as f64 / 1024.0)
}

/// A subscriber whose socket takes a few KB and is never read.
async fn deaf_subscriber(broker: &Broker, index: usize) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(broker.mqtt).await?;
    let mut out = Vec::new();
    wire::connect(&mut out, &format!("flood-sub-{index}"), 600);
    stream.write_all(&out).await?;
    let mut ack = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut ack).await?;
    anyhow::ensure!(ack[0] >> 4 == wire::CONNACK && ack[3] == 0, "subscriber {index} refused: {ack:?}");
    mqtt_load::subscribe(&mut stream, "flood/#", 0).await?;
    Ok(stream)
}

async fn flood(broker: &Broker, budget: Option<u64>, args: &FloodArgs) -> anyhow::Result<FloodResult> {
    let before = rss_mib(broker);
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for index in 0..args.subscribers {
        subscribers.push(deaf_subscriber(broker, index).await?);
    }
    let written = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let progress = {
        let (written, peak) = (written.clone(), peak.clone());
        Progress::start("flood".into(), move |_| {
            format!(
                "published {} MiB, peak RSS {} MiB",
                written.load(Ordering::Relaxed) >> 20,
                peak.load(Ordering::Relaxed) >> 10
            )
        })
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut publishers = Vec::with_capacity(args.publishers);
    for index in 0..args.publishers {
        let mut stream = mqtt_load::connect(broker.mqtt, None, &format!("flood-pub-{index}"), 600).await?;
        let (written, payload) = (written.clone(), args.payload);
        publishers.push(tokio::spawn(async move {
            let mut packet = Vec::with_capacity(payload + 64);
            let topic = format!("flood/{index}");
            let mut sequence = 0u64;
            while tokio::time::Instant::now() < deadline {
                packet.clear();
                wire::publish(&mut packet, &topic, 0, 0, (index as u32, sequence, 0), payload);
                sequence += 1;
                match tokio::time::timeout_at(deadline, stream.write_all(&packet)).await {
                    Ok(Ok(())) => drop(written.fetch_add(packet.len() as u64, Ordering::Relaxed)),
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            stream
        }));
    }
    // RSS while the publishers run, every 100 ms; Tidewater's own counts every 500 ms
    let pid = broker.pid;
    let mut counted: Option<(f64, f64)> = None;
    let mut dropped = None;
    let mut tick = 0u64;
    while tokio::time::Instant::now() < deadline {
        if let Some(sample) = pid.and_then(crate::target::ProcSample::read) {
            peak.fetch_max(sample.rss_kib, Ordering::Relaxed);
        }
        if budget.is_some()
            && tick.is_multiple_of(5)
            && let Some(((queues, deliveries), drops)) = memory_metrics(broker).await
        {
            let (q, d) = counted.unwrap_or_default();
            counted = Some((q.max(queues / f64::from(1 << 20)), d.max(deliveries / f64::from(1 << 20))));
            dropped = Some(drops);
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut streams = Vec::new();
    for publisher in publishers {
        streams.push(publisher.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end = rss_mib(broker);
    if budget.is_some() {
        dropped = memory_metrics(broker).await.map(|(_, drops)| drops).or(dropped);
    }
    drop(streams);
    drop(subscribers);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let after = rss_mib(broker);
    drop(progress);
    let published_mib = written.load(Ordering::Relaxed) as f64 / f64::from(1 << 20);
    let peak_kib = peak.load(Ordering::Relaxed);
    Ok(FloodResult {
        broker: broker.name.clone(),
        published_mib,
        rate_mib_s: published_mib / elapsed.max(1e-3),
        before_mib: before,
        peak_mib: (peak_kib > 0).then(|| peak_kib as f64 / 1024.0),
        end_mib: end,
        after_mib: after,
        budget_mib: budget.map(|bytes| bytes as f64 / f64::from(1 << 20)),
        counted_mib: counted,
        dropped,
    })
}
