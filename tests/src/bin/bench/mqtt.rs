//! The `mqtt` mode: N publishers to M subscribers in one of four patterns, reporting msg/s in
//! and out, latency, lost and duplicated messages, and the broker's CPU and RSS.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::TargetArgs;
use crate::mqtt_load::{self, PublisherPlan, Shared};
use crate::report::{self, Progress, Table, human, opt};
use crate::target::{Broker, CPU_HEADER, Cpu, CpuWindow};

/// Who publishes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Pattern {
    /// One publisher, one subscriber, one topic.
    OneToOne,
    /// N publishers on their own topics, one subscriber on a wildcard.
    FanIn,
    /// One publisher, M subscribers on its topic.
    FanOut,
    /// N publishers each with its own subscriber (per-device topics).
    Pairs,
}

/// Arguments of the mqtt mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct MqttArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    scenario: Scenario,
}

/// One MQTT load scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct Scenario {
    /// Pattern of publishers and subscribers.
    #[arg(long, value_enum, default_value = "one-to-one")]
    pub(crate) pattern: Pattern,
    /// Publishers (default: 1, or 10 for fan-in and pairs).
    #[arg(long)]
    pub(crate) publishers: Option<usize>,
    /// Subscribers (default: 1, 10 for fan-out, = publishers for pairs).
    #[arg(long)]
    pub(crate) subscribers: Option<usize>,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Payload bytes (at least 20: publisher id, sequence, timestamp).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(20..=131072))]
    pub(crate) payload: u64,
    /// Seconds of publishing (the first --warmup seconds are not measured).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds at the start excluded from rates and latency.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Messages per publisher; stops earlier than --duration when reached.
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Total publish rate in msg/s over all publishers (0 = as fast as the windows allow).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// QoS 1/2 publishes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    pub(crate) inflight: usize,
    /// Messages sent but not yet delivered that may wait for one subscriber, split among the
    /// publishers it hears (0 = open loop: the broker may drop what it cannot deliver, which
    /// shows as lost). Keep it within the broker's per-session queue (Tidewater: 1000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) window: u64,
    /// Keepalive sent in CONNECT (rumqttd refuses 0).
    #[arg(long, default_value_t = 60)]
    pub(crate) keepalive: u16,
    /// Seconds to wait after publishing for acks and deliveries in flight.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,
}

impl Scenario {
    /// The 1→1 scenario of the peers comparison.
    pub(crate) fn one_to_one(qos: u8, duration: f64, rate: f64) -> Scenario {
        Scenario {
            pattern: Pattern::OneToOne,
            publishers: None,
            subscribers: None,
            qos,
            payload: 100,
            duration,
            warmup: 1.0,
            count: 0,
            rate,
            inflight: 64,
            window: 1000,
            keepalive: 60,
            drain: 3.0,
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self.pattern {
            Pattern::OneToOne => (self.publishers.unwrap_or(1), self.subscribers.unwrap_or(1)),
            Pattern::FanIn => (self.publishers.unwrap_or(10), 1),
            Pattern::FanOut => (1, self.subscribers.unwrap_or(10)),
            Pattern::Pairs => {
                let n = self.publishers.or(self.subscribers).unwrap_or(10);
                (n, n)
            }
        }
    }

    /// A short name for tables.
    pub(crate) fn name(&self) -> String {
        let (n, m) = self.shape();
        let rate = if self.rate > 0.0 { format!(" @{}/s", human(self.rate)) } else { String::new() };
        format!("{n}→{m} qos{} {}B{rate}", self.qos, self.payload)
    }
}

/// Measurements of one scenario run.
pub(crate) struct MqttResult {
    /// Scenario name.
    pub(crate) name: String,
    /// Publishes accepted per second (QoS 0: written; QoS 1/2: acknowledged).
    pub(crate) in_rate: f64,
    /// Deliveries received per second by all subscribers.
    pub(crate) out_rate: f64,
    /// Latency of deliveries, ns.
    pub(crate) latency: hdrhistogram::Histogram<u64>,
    /// Messages published but never received.
    pub(crate) lost: u64,
    /// Messages received more than once.
    pub(crate) duplicates: u64,
    /// CPU use over the measured interval.
    pub(crate) cpu: Cpu,
    /// Broker RSS at the end of publishing, MiB.
    pub(crate) broker_rss_mib: Option<f64>,
    /// Messages published.
    pub(crate) published: u64,
}

impl MqttResult {
    /// The result as JSON.
    pub(crate) fn json(&self) -> Value {
        json!({
            "scenario": self.name, "in_msgs_per_s": self.in_rate.round(), "out_msgs_per_s": self.out_rate.round(),
            "latency": report::latency_json(&self.latency), "published": self.published, "lost": self.lost,
            "duplicates": self.duplicates, "cpu_percent": self.cpu.json(),
            "broker_rss_mib": self.broker_rss_mib,
        })
    }
}

/// Runs the mqtt mode.
pub(crate) async fn main(args: MqttArgs, threads: usize) -> anyhow::Result<()> {
    let broker = Broker::from_args(&args.target).await?;
    let result = run(&broker, &args.scenario, "mqtt").await?;
    let mut table = Table::new(&HEADER);
    table.row(row(&result));
    let params = json!({
        "pattern": format!("{:?}", args.scenario.pattern), "qos": args.scenario.qos, "payload": args.scenario.payload,
        "duration_s": args.scenario.duration, "warmup_s": args.scenario.warmup, "rate": args.scenario.rate,
        "inflight": args.scenario.inflight, "window": args.scenario.window, "broker": broker.name,
    });
    report::finish("mqtt", threads, params, &table, json!([result.json()]));
    Ok(())
}

/// Column names matching [`row`].
pub(crate) const HEADER: [&str; 12] = [
    "scenario",
    "in msg/s",
    "out msg/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "lost",
    "dup",
    CPU_HEADER[0],
    CPU_HEADER[1],
    CPU_HEADER[2],
    "broker RSS MiB",
];

/// One table row of a result.
pub(crate) fn row(result: &MqttResult) -> Vec<String> {
    let [broker, bench, other] = result.cpu.cells();
    vec![
        result.name.clone(),
        human(result.in_rate),
        human(result.out_rate),
        report::latency_ms(&result.latency, 0.5),
        report::latency_ms(&result.latency, 0.99),
        report::latency_ms(&result.latency, 0.999),
        result.lost.to_string(),
        result.duplicates.to_string(),
        broker,
        bench,
        other,
        opt(result.broker_rss_mib, 1),
    ]
}

/// Runs one scenario against `broker`.
pub(crate) async fn run(broker: &Broker, scenario: &Scenario, label: &str) -> anyhow::Result<MqttResult> {
    let (publishers, subscribers) = scenario.shape();
    anyhow::ensure!(publishers > 0 && subscribers > 0, "need at least one publisher and one subscriber");
    let run_id = run_id();
    let prefix = format!("bench/{run_id:x}");
    let topic = |p: usize| match scenario.pattern {
        Pattern::Pairs => format!("{prefix}/d/{p}"),
        _ => format!("{prefix}/t/{p}"),
    };
    // (filter, publishers it hears) per subscriber
    let subs: Vec<(String, Vec<usize>)> = (0..subscribers)
        .map(|s| match scenario.pattern {
            Pattern::OneToOne if publishers == 1 => (topic(0), vec![0]),
            Pattern::OneToOne | Pattern::FanIn => (format!("{prefix}/t/+"), (0..publishers).collect()),
            Pattern::FanOut => (topic(0), vec![0]),
            Pattern::Pairs => (topic(s), vec![s]),
        })
        .collect();
    let mut audience = vec![Vec::new(); publishers];
    subs.iter().enumerate().for_each(|(s, (_, ps))| ps.iter().for_each(|&p| audience[p].push(s)));
    // the window bounds what waits for one subscriber: split it among the publishers it hears
    let heard = subs.iter().map(|(_, ps)| ps.len() as u64).max().unwrap_or(1).max(1);
    let window = if scenario.window == 0 { 0 } else { (scenario.window / heard).max(1) };

    broker.settle().await;
    let shared = Shared::new(publishers, subscribers);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::with_capacity(subscribers);
    for (s, (filter, _)) in subs.iter().enumerate() {
        let mut stream =
            mqtt_load::connect(broker.mqtt, None, &format!("bench-s-{run_id:x}-{s}"), scenario.keepalive).await?;
        mqtt_load::subscribe(&mut stream, filter, scenario.qos).await?;
        sub_tasks.push(tokio::spawn(mqtt_load::subscriber(stream, s, publishers, shared.clone(), stop_rx.clone())));
    }
    let mut pub_streams = Vec::with_capacity(publishers);
    for p in 0..publishers {
        pub_streams
            .push(mqtt_load::connect(broker.mqtt, None, &format!("bench-p-{run_id:x}-{p}"), scenario.keepalive).await?);
    }
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(scenario.duration);
    // a run by --count measures every message, from the first to the last delivery: it may well
    // be over before a warm-up would end
    let counted = scenario.count > 0;
    let warmup =
        if counted { Duration::ZERO } else { Duration::from_secs_f64(scenario.warmup.min(scenario.duration / 2.0)) };
    shared.measure_from_ns.store(shared.now_ns() + warmup.as_nanos() as u64, Ordering::Relaxed);
    let drain = Duration::from_secs_f64(scenario.drain);
    let mut pub_tasks = Vec::with_capacity(publishers);
    for (p, stream) in pub_streams.into_iter().enumerate() {
        let plan = PublisherPlan {
            id: p as u32,
            topic: topic(p),
            qos: scenario.qos,
            payload: scenario.payload as usize,
            inflight: scenario.inflight.max(1),
            window,
            audience: audience[p].clone(),
            rate: scenario.rate / publishers as f64,
            count: scenario.count,
            deadline,
        };
        pub_tasks.push(tokio::spawn(mqtt_load::publisher(stream, plan, shared.clone(), drain)));
    }
    let qos = scenario.qos;
    let in_count =
        move |s: &Shared| if qos == 0 { s.sent.load(Ordering::Relaxed) } else { s.acked.load(Ordering::Relaxed) };
    let progress = {
        let shared = shared.clone();
        let (mut last_in, mut last_out, mut last_at) = (0u64, 0u64, 0.0f64);
        Progress::start(format!("{label} {}", scenario.name()), move |secs| {
            let (now_in, now_out) = (in_count(&shared), shared.received.load(Ordering::Relaxed));
            let dt = (secs - last_at).max(1e-3);
            let line = format!(
                "in {:>8}/s out {:>8}/s  total in {} out {}",
                human((now_in - last_in) as f64 / dt),
                human((now_out - last_out) as f64 / dt),
                now_in,
                now_out
            );
            (last_in, last_out, last_at) = (now_in, now_out, secs);
            line
        })
    };

    // measured interval: from the end of the warm-up to the deadline (or the last publisher)
    let all_published = futures_join(pub_tasks);
    tokio::pin!(all_published);
    let mut outcomes = None;
    tokio::select! {
        biased;
        done = &mut all_published => outcomes = Some(done),
        _ = tokio::time::sleep_until(start + warmup) => {}
    }
    let (in0, out0) = (in_count(&shared), shared.received.load(Ordering::Relaxed));
    let cpu = CpuWindow::start(broker);
    if outcomes.is_none() {
        tokio::select! {
            biased;
            done = &mut all_published => outcomes = Some(done),
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let (in1, out_at_deadline) = (in_count(&shared), shared.received.load(Ordering::Relaxed));
    let in_secs = (start + warmup).elapsed().as_secs_f64();
    // a duration run is measured up to the deadline (Ok: stopped now); a counted one until its
    // last delivery (Err: the window keeps running through the drain below)
    let timed = if counted { Err(cpu) } else { Ok(cpu.stop(broker)) };
    let rss = broker.sample().map(|s| s.rss_kib as f64 / 1024.0);
    let outcomes = match outcomes {
        Some(done) => done,
        None => all_published.await,
    };
    let mut sent = vec![0u64; publishers];
    for (p, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(Ok(outcome)) => sent[p] = outcome.sent,
            Ok(Err(error)) => eprintln!("publisher {p} failed: {error}"),
            Err(error) => eprintln!("publisher {p} panicked: {error}"),
        }
    }
    let expected: u64 = subs.iter().map(|(_, ps)| ps.iter().map(|&p| sent[p]).sum::<u64>()).sum();
    let drain_until = Instant::now() + drain;
    while shared.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (out1, (cpu, secs)) = match timed {
        Ok(measured) => (out_at_deadline, measured),
        Err(window) => (shared.received.load(Ordering::Relaxed), window.stop(broker)),
    };
    let _ = stop_tx.send(true);
    drop(progress);
    let mut latency = report::histogram();
    let (mut lost, mut duplicates) = (0u64, 0u64);
    for (s, task) in sub_tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(outcome)) => {
                latency.add(&outcome.latency).ok();
                duplicates += outcome.seen.duplicates;
                lost += subs[s].1.iter().map(|&p| sent[p].saturating_sub(outcome.seen.unique[p])).sum::<u64>();
            }
            Ok(Err(error)) => {
                eprintln!("subscriber {s} failed: {error}");
                lost += subs[s].1.iter().map(|&p| sent[p]).sum::<u64>();
            }
            Err(error) => eprintln!("subscriber {s} panicked: {error}"),
        }
    }
    Ok(MqttResult {
        name: scenario.name(),
        // a counted run's publishers finish before its last delivery: in is over their time
        in_rate: (in1 - in0) as f64 / if counted { in_secs.max(1e-3) } else { secs },
        out_rate: (out1 - out0) as f64 / secs,
        latency,
        lost,
        duplicates,
        cpu,
        broker_rss_mib: rss,
        published: sent.iter().sum(),
    })
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await);
    }
    results
}

/// A number that differs between runs, for client ids and topics.
pub(crate) fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::process::id().rotate_left(16) ^ nanos
}
