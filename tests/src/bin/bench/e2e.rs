//! The `e2e` mode: MQTT QoS 1 publishers into a bound stream, read back by one Kafka consumer
//! per partition; msg/s in (acknowledged by the broker) and out (consumed), end-to-end latency,
//! lost and duplicated messages.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tidewater_tests::clients::kafka::{self as client, KafkaConn};
use tidewater_tests::clients::mqtt_wire;
use tokio::sync::watch;

use crate::TargetArgs;
use crate::kafka::create_stream;
use crate::mqtt_load::{self, PublisherPlan, SeenSet, Shared};
use crate::report::{self, Progress, Table, human, opt};
use crate::target::{CPU_HEADER, CpuWindow};

/// Arguments of the e2e mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct E2eArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Name of the bound stream (created with filter bench/#, reused if it exists).
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Partitions of the stream (one Kafka consumer connection each).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// MQTT publishers, each on its own topic bench/<run>/e/<i>.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Payload bytes (at least 20).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// QoS 1 publishes in flight per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Total publish rate in msg/s (0 = as fast as acks allow).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start excluded from rates and latency.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for consumers to catch up after publishing.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

/// Runs the e2e mode.
pub(crate) async fn main(args: E2eArgs, threads: usize) -> anyhow::Result<()> {
    let broker = crate::target::Broker::from_args(&args.target).await?;
    let def = json!({"name": args.stream, "kind": "bound", "filter": "bench/#", "partitions": args.partitions});
    create_stream(&broker, &def).await?;
    let mut meta = KafkaConn::connect(broker.kafka).await?;
    let start_offsets = meta.list_offsets(&args.stream, args.partitions, -1).await?;

    broker.settle().await;
    let shared = Shared::new(args.publishers, 0);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = Vec::new();
    for partition in 0..args.partitions {
        let (addr, stream, shared, mut stop) = (broker.kafka, args.stream.clone(), shared.clone(), stop_rx.clone());
        let (publishers, mut offset) = (args.publishers, start_offsets[partition as usize]);
        consumers.push(tokio::spawn(async move {
            let mut conn = KafkaConn::connect(addr).await?;
            let mut latency = report::histogram();
            let mut seen = SeenSet::new(publishers);
            while !*stop.borrow_and_update() {
                let fetched = conn.fetch(&stream, &[(partition, offset)], 4 << 20, 100).await?;
                let now = shared.now_ns();
                let measure_from = shared.measure_from_ns.load(Ordering::Relaxed);
                let mut count = 0;
                for (_, result) in fetched {
                    client::for_each_batch(&result?.records, |batch, _, next| {
                        offset = next;
                        client::for_each_value(batch, |value| {
                            if let Some((publisher, seq, sent)) = mqtt_wire::parse_stamp(value) {
                                seen.insert(publisher, seq);
                                if sent >= measure_from {
                                    report::record(&mut latency, now.saturating_sub(sent));
                                }
                                count += 1;
                            }
                        });
                    });
                }
                shared.received.fetch_add(count, Ordering::Relaxed);
            }
            anyhow::Ok((latency, seen))
        }));
    }

    let run_id = crate::mqtt::run_id();
    let mut streams = Vec::new();
    for p in 0..args.publishers {
        streams.push(mqtt_load::connect(broker.mqtt, None, &format!("bench-e-{run_id:x}-{p}"), 60).await?);
    }
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup.min(args.duration / 2.0));
    shared.measure_from_ns.store(shared.now_ns() + warmup.as_nanos() as u64, Ordering::Relaxed);
    let mut publishers = Vec::new();
    for (p, stream) in streams.into_iter().enumerate() {
        let plan = PublisherPlan {
            id: p as u32,
            topic: format!("bench/{run_id:x}/e/{p}"),
            qos: 1,
            payload: args.payload,
            inflight: args.inflight.max(1),
            window: 0,
            audience: Vec::new(),
            rate: args.rate / args.publishers as f64,
            count: 0,
            deadline,
        };
        publishers.push(tokio::spawn(mqtt_load::publisher(stream, plan, shared.clone(), Duration::from_secs(5))));
    }
    let progress = {
        let (shared, mut last) = (shared.clone(), (0u64, 0u64));
        Progress::start("e2e".into(), move |_| {
            let now = (shared.acked.load(Ordering::Relaxed), shared.received.load(Ordering::Relaxed));
            let line = format!(
                "mqtt acked {:>8}/s  kafka consumed {:>8}/s",
                human((now.0 - last.0) as f64),
                human((now.1 - last.1) as f64)
            );
            last = now;
            line
        })
    };
    tokio::time::sleep_until(start + warmup).await;
    let (in0, out0) = (shared.acked.load(Ordering::Relaxed), shared.received.load(Ordering::Relaxed));
    let cpu = CpuWindow::start(&broker);
    tokio::time::sleep_until(deadline).await;
    let (in1, out1) = (shared.acked.load(Ordering::Relaxed), shared.received.load(Ordering::Relaxed));
    let (cpu, secs) = cpu.stop(&broker);
    let rss = broker.sample().map(|s| s.rss_kib as f64 / 1024.0);
    let mut sent = vec![0u64; args.publishers];
    let mut acked_total = 0;
    for (p, task) in publishers.into_iter().enumerate() {
        match task.await? {
            Ok(outcome) => {
                sent[p] = outcome.sent;
                acked_total += outcome.acked;
            }
            Err(error) => eprintln!("publisher {p} failed: {error}"),
        }
    }
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while shared.received.load(Ordering::Relaxed) < acked_total && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    drop(progress);
    let mut latency = report::histogram();
    let mut unique = vec![0u64; args.publishers];
    let mut duplicates = 0;
    for consumer in consumers {
        let (h, seen) = consumer.await??;
        latency.add(&h).ok();
        duplicates += seen.duplicates;
        unique.iter_mut().zip(&seen.unique).for_each(|(u, s)| *u += s);
    }
    // an acknowledged QoS 1 message must reach the stream; unacknowledged ones may or may not
    let lost: u64 = sent.iter().zip(&unique).map(|(s, u)| s.saturating_sub(*u)).sum();
    let unacked: u64 = sent.iter().sum::<u64>() - acked_total;
    let (in_rate, out_rate) = ((in1 - in0) as f64 / secs, (out1 - out0) as f64 / secs);
    let mut header =
        vec!["scenario", "mqtt in msg/s", "kafka out msg/s", "p50 ms", "p99 ms", "p99.9 ms", "lost", "dup"];
    header.extend(CPU_HEADER);
    header.push("broker RSS MiB");
    let mut table = Table::new(&header);
    let [broker_cpu, bench_cpu, other_cpu] = cpu.cells();
    table.row(vec![
        format!("{}×qos1 {}B → {} partitions", args.publishers, args.payload, args.partitions),
        human(in_rate),
        human(out_rate),
        report::latency_ms(&latency, 0.5),
        report::latency_ms(&latency, 0.99),
        report::latency_ms(&latency, 0.999),
        lost.to_string(),
        duplicates.to_string(),
        broker_cpu,
        bench_cpu,
        other_cpu,
        opt(rss, 1),
    ]);
    let params = json!({
        "stream": args.stream, "partitions": args.partitions, "publishers": args.publishers, "payload": args.payload,
        "inflight": args.inflight, "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
    });
    let result = json!({
        "in_msgs_per_s": in_rate.round(), "out_msgs_per_s": out_rate.round(), "latency": report::latency_json(&latency),
        "published": sent.iter().sum::<u64>(), "acked": acked_total, "unacked_at_end": unacked, "lost": lost,
        "duplicates": duplicates, "cpu_percent": cpu.json(), "broker_rss_mib": rss,
    });
    report::finish("e2e", threads, params, &table, json!([result]));
    Ok(())
}
