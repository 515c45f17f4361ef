//! The `kafka` mode, in phases on one free stream: produce throughput, backlog consume
//! throughput, consume in a one-member consumer group, and produce→consume latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};
use serde_json::{Value, json};
use tidewater_storage::{NewRecord, build_record_batch};
use tidewater_tests::clients::kafka::{self as client, KafkaConn, PRODUCE_VERSION, produce_errors};
use tidewater_tests::clients::mqtt_wire;

use crate::TargetArgs;
use crate::kafka_group;
use crate::report::{self, Progress, Table, human};
use crate::target::{Broker, CPU_HEADER, Cpu, CpuWindow, http_request};

/// Arguments of the kafka mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct KafkaArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Stream (topic) to create and use (default: a fresh name per run).
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of the stream.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records per produced batch (one batch per Produce request).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Compression of the produced batch (the latency phase's batches stay uncompressed).
    /// Values are random hex digits, so they compress to about half.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    codec: Codec,
    /// Produce acks: 0, 1 or -1.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    acks: i16,
    /// Producer connections (default: one per partition).
    #[arg(long)]
    producers: Option<usize>,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Seconds of producing; also the cap of each consume phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes per partition per Fetch.
    #[arg(long, default_value_t = 8 << 20)]
    fetch_bytes: i32,
    /// Records per second of the latency phase.
    #[arg(long, default_value_t = 10_000.0)]
    latency_rate: f64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 5.0)]
    latency_duration: f64,
    /// Skip the consumer-group phase.
    #[arg(long)]
    no_group: bool,
    /// Also measure the disk under the data dir (dd with fdatasync, fsyncs per second) and
    /// set produce against it (a spawned broker only).
    #[arg(long)]
    disk: bool,
}

/// Compression codecs of the produced batches.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn compression(self) -> Compression {
        match self {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }

    /// The name `--codec` takes.
    fn name(self) -> String {
        self.to_possible_value().map(|value| value.get_name().to_owned()).unwrap_or_default()
    }
}

/// One batch of `count` records of `size` random hex digits (xorshift, fixed seed), compressed
/// with `codec`.
pub(crate) fn produce_batch(count: usize, size: usize, codec: Codec, now_ms: i64) -> anyhow::Result<Bytes> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut hex = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        b"0123456789abcdef"[(state & 15) as usize]
    };
    let values: Vec<Vec<u8>> = (0..count).map(|_| (0..size).map(|_| hex()).collect()).collect();
    if codec == Codec::None {
        let records: Vec<NewRecord<'_>> =
            values.iter().map(|v| NewRecord { key: None, value: Some(v), headers: &[], timestamp_ms: 0 }).collect();
        return Ok(build_record_batch(&records, now_ms));
    }
    let records: Vec<Record> = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // the encoder starts a new batch unless offset − sequence stays the same; the batch's
            // base sequence is then NO_SEQUENCE (-1), as for any non-idempotent producer
            sequence: NO_SEQUENCE.wrapping_add(i as i32),
            timestamp: now_ms,
            key: None,
            value: Some(Bytes::from(value)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: codec.compression() };
    RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| anyhow::anyhow!("encoding the batch: {e}"))?;
    Ok(buf.freeze())
}

/// Throughput of one phase.
#[derive(Clone)]
pub(crate) struct Phase {
    /// Phase name.
    pub(crate) name: String,
    /// Records moved.
    pub(crate) records: u64,
    /// Record value bytes moved.
    pub(crate) value_bytes: u64,
    /// Batch bytes on the wire.
    pub(crate) wire_bytes: u64,
    /// Seconds it took.
    pub(crate) secs: f64,
    /// Latency (request round trip or produce→consume), ns.
    pub(crate) latency: Option<hdrhistogram::Histogram<u64>>,
    /// CPU use during the phase.
    pub(crate) cpu: Cpu,
    /// Errors seen.
    pub(crate) errors: u64,
    /// Anything worth a note (join time, lost records).
    pub(crate) note: String,
}

impl Phase {
    fn json(&self) -> Value {
        json!({
            "phase": self.name, "records": self.records, "value_bytes": self.value_bytes, "wire_bytes": self.wire_bytes,
            "secs": self.secs, "records_per_s": (self.records as f64 / self.secs).round(),
            "value_mb_per_s": self.value_bytes as f64 / self.secs / 1e6,
            "latency": self.latency.as_ref().map(report::latency_json), "cpu_percent": self.cpu.json(),
            "errors": self.errors, "note": self.note,
        })
    }

    fn row(&self) -> Vec<String> {
        let q = |q: f64| self.latency.as_ref().map_or("-".into(), |h| report::latency_ms(h, q));
        let [broker, bench, other] = self.cpu.cells();
        vec![
            self.name.clone(),
            human(self.records as f64 / self.secs),
            format!("{:.0}", self.value_bytes as f64 / self.secs / 1e6),
            q(0.5),
            q(0.99),
            q(0.999),
            self.errors.to_string(),
            broker,
            bench,
            other,
            self.note.clone(),
        ]
    }
}

/// Runs the kafka mode.
pub(crate) async fn main(args: KafkaArgs, threads: usize) -> anyhow::Result<()> {
    let broker = Broker::from_args(&args.target).await?;
    let topic = args.topic.clone().unwrap_or_else(|| format!("bench-kafka-{:x}", crate::mqtt::run_id()));
    create_stream(&broker, &json!({"name": topic, "kind": "free", "partitions": args.partitions})).await?;
    let mut phases = Vec::new();
    let disk = match (args.disk, broker.data_dir()) {
        (true, Some(dir)) => Some((crate::disk::dd(&dir)?, crate::disk::fsyncs(&dir, 3.0)?)),
        (true, None) => anyhow::bail!("--disk needs --spawn (the data dir must be known)"),
        (false, _) => None,
    };
    let mut produced = produce(&broker, &args, &topic).await?;
    if let Some((dd, fsyncs)) = &disk {
        let rate = |phase: &Phase| phase.value_bytes as f64 / phase.secs;
        let share = 100.0 * rate(&produced) / rate(dd);
        let stored = 100.0 * (produced.wire_bytes as f64 / produced.secs) / rate(dd);
        produced.note = format!(
            "{}; values {share:.0} % (batches {stored:.0} %) of dd's rate; {:.0} fsyncs/s measured",
            produced.note,
            fsyncs.records as f64 / fsyncs.secs
        );
        phases.push(dd.clone());
        phases.push(fsyncs.clone());
    }
    phases.push(produced);
    phases.push(consume_backlog(&broker, &args, &topic).await?);
    if !args.no_group {
        phases.push(
            kafka_group::consume_in_group(
                &broker,
                &topic,
                args.partitions,
                args.fetch_bytes,
                args.record_size,
                args.duration,
            )
            .await?,
        );
    }
    phases.push(latency(&broker, &args, &topic).await?);
    let rss = broker.sample().map(|s| s.rss_kib as f64 / 1024.0);
    let mut header = vec!["phase", "records/s", "MB/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"];
    header.extend(CPU_HEADER);
    header.push("note");
    let mut table = Table::new(&header);
    phases.iter().for_each(|p| table.row(p.row()));
    let params = json!({
        "topic": topic, "partitions": args.partitions, "record_size": args.record_size, "batch": args.batch,
        "acks": args.acks, "producers": args.producers.unwrap_or(args.partitions as usize), "inflight": args.inflight,
        "duration_s": args.duration, "fetch_bytes": args.fetch_bytes, "latency_rate": args.latency_rate,
        "codec": args.codec.name(), "broker_rss_mib_at_end": rss, "fsync": args.target.fsync,
    });
    report::finish("kafka", threads, params, &table, Value::Array(phases.iter().map(Phase::json).collect()));
    Ok(())
}

/// Creates a stream over HTTP; an existing one is reused.
pub(crate) async fn create_stream(broker: &Broker, def: &Value) -> anyhow::Result<()> {
    let (status, body) = http_request(broker.http, "POST", "/api/v1/streams", Some(&def.to_string())).await?;
    match status {
        200 | 201 => Ok(()),
        409 => {
            eprintln!("stream {} exists; reusing it", def["name"]);
            Ok(())
        }
        _ => bail!("creating stream {def} failed: {status} {body}"),
    }
}

/// Produce requests wait at most this long for their acks.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

fn produce_request(topic: &str, partition: i32, acks: i16, batch: Bytes) -> ProduceRequest {
    client::produce_request(topic, partition, acks, PRODUCE_TIMEOUT_MS, batch)
}

async fn produce(broker: &Broker, args: &KafkaArgs, topic: &str) -> anyhow::Result<Phase> {
    broker.settle().await;
    let producers = args.producers.unwrap_or(args.partitions as usize).max(1);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let batch = produce_batch(args.batch, args.record_size, args.codec, now_ms)?;
    let wire_per_batch = batch.len() as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let progress = {
        let (acked, record_size, mut last) = (acked.clone(), args.record_size as f64, 0u64);
        Progress::start("kafka produce".into(), move |_| {
            let now = acked.load(Ordering::Relaxed);
            let line = format!(
                "{:>8} records/s {:>6.0} MB/s",
                human((now - last) as f64),
                (now - last) as f64 * record_size / 1e6
            );
            last = now;
            line
        })
    };
    let cpu = CpuWindow::start(broker);
    let mut tasks = Vec::new();
    for producer in 0..producers {
        let partitions: Vec<i32> = (0..args.partitions).filter(|p| *p as usize % producers == producer).collect();
        if partitions.is_empty() {
            continue;
        }
        let requests: Vec<ProduceRequest> =
            partitions.iter().map(|&p| produce_request(topic, p, args.acks, batch.clone())).collect();
        let (addr, acked, inflight, per_batch, acks) =
            (broker.kafka, acked.clone(), args.inflight.max(1), args.batch as u64, args.acks);
        tasks.push(tokio::spawn(async move {
            let mut conn = KafkaConn::connect(addr).await?;
            let mut latency = report::histogram();
            let mut sent_at = std::collections::VecDeque::with_capacity(inflight);
            let (mut next, mut errors, mut first_error) = (0usize, 0u64, None);
            loop {
                let done = tokio::time::Instant::now() >= deadline;
                if !done && (acks == 0 || sent_at.len() < inflight) {
                    while sent_at.len() < inflight {
                        conn.queue(PRODUCE_VERSION, &requests[next % requests.len()])?;
                        next += 1;
                        sent_at.push_back(Instant::now());
                    }
                    conn.flush().await?;
                    if acks == 0 {
                        acked.fetch_add(per_batch * sent_at.len() as u64, Ordering::Relaxed);
                        sent_at.clear();
                        continue;
                    }
                }
                let Some(at) = sent_at.pop_front() else { break };
                let response = conn.receive::<ProduceRequest>(PRODUCE_VERSION).await?;
                report::record(&mut latency, at.elapsed().as_nanos() as u64);
                match produce_errors(&response) {
                    Some(error) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                    None => {
                        acked.fetch_add(per_batch, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok((latency, errors, first_error))
        }));
    }
    let mut latency = report::histogram();
    let mut errors = 0;
    for task in tasks {
        let (h, e, first) = task.await??;
        latency.add(&h).ok();
        errors += e;
        if let Some(first) = first {
            eprintln!("produce error: {first}");
        }
    }
    let (cpu, secs) = cpu.stop(broker);
    drop(progress);
    let records = acked.load(Ordering::Relaxed);
    Ok(Phase {
        name: format!("produce {}B×{} acks={} {}", args.record_size, args.batch, args.acks, args.codec.name()),
        records,
        value_bytes: records * args.record_size as u64,
        wire_bytes: records / args.batch as u64 * wire_per_batch,
        secs,
        latency: (args.acks != 0).then_some(latency),
        cpu,
        errors,
        note: "latency = produce round trip".into(),
    })
}

/// Consumes every partition from the earliest offset to the high watermark seen at the start,
/// one connection per partition, at most `cap` seconds.
async fn consume_backlog(broker: &Broker, args: &KafkaArgs, topic: &str) -> anyhow::Result<Phase> {
    broker.settle().await;
    let mut meta = KafkaConn::connect(broker.kafka).await?;
    let start = meta.list_offsets(topic, args.partitions, -2).await?;
    let end = meta.list_offsets(topic, args.partitions, -1).await?;
    let counted = Arc::new(AtomicU64::new(0));
    let progress = {
        let (counted, mut last) = (counted.clone(), 0u64);
        Progress::start("kafka consume".into(), move |_| {
            let now = counted.load(Ordering::Relaxed);
            let line = format!("{:>6.0} MB/s (wire)", (now - last) as f64 / 1e6);
            last = now;
            line
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let cpu = CpuWindow::start(broker);
    let mut tasks = Vec::new();
    for partition in 0..args.partitions {
        let (addr, topic, counted, fetch_bytes) = (broker.kafka, topic.to_string(), counted.clone(), args.fetch_bytes);
        let (mut offset, end) = (start[partition as usize], end[partition as usize]);
        tasks.push(tokio::spawn(async move {
            let mut conn = KafkaConn::connect(addr).await?;
            let (mut records, mut wire) = (0u64, 0u64);
            while offset < end && tokio::time::Instant::now() < deadline {
                let fetched = conn.fetch(&topic, &[(partition, offset)], fetch_bytes, 500).await?;
                for (_, result) in fetched {
                    let data = result?;
                    client::for_each_batch(&data.records, |batch, count, next| {
                        records += count as u64;
                        wire += batch.len() as u64;
                        offset = next;
                    });
                }
                counted.store(wire, Ordering::Relaxed);
            }
            anyhow::Ok((records, wire))
        }));
    }
    let (mut records, mut wire) = (0u64, 0u64);
    for task in tasks {
        let (r, w) = task.await??;
        records += r;
        wire += w;
    }
    let (cpu, secs) = cpu.stop(broker);
    drop(progress);
    let backlog: i64 = end.iter().zip(&start).map(|(e, s)| e - s).sum();
    Ok(Phase {
        name: format!("consume backlog ({:.0} MB)", backlog as f64 * args.record_size as f64 / 1e6),
        records,
        value_bytes: records * args.record_size as u64,
        wire_bytes: wire,
        secs,
        latency: None,
        cpu,
        errors: 0,
        note: format!("{records} of {backlog} records, {} connection(s)", args.partitions),
    })
}

/// A producer at a fixed rate of stamped records and one long-polling consumer per partition.
async fn latency(broker: &Broker, args: &KafkaArgs, topic: &str) -> anyhow::Result<Phase> {
    broker.settle().await;
    let base = Instant::now();
    let mut meta = KafkaConn::connect(broker.kafka).await?;
    let start = meta.list_offsets(topic, args.partitions, -1).await?;
    let duration = Duration::from_secs_f64(args.latency_duration);
    let produce_until = tokio::time::Instant::now() + duration;
    let consume_until = produce_until + Duration::from_secs(3);
    let produced = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for partition in 0..args.partitions {
        let (addr, topic, produced) = (broker.kafka, topic.to_string(), produced.clone());
        let mut offset = start[partition as usize];
        consumers.push(tokio::spawn(async move {
            let mut conn = KafkaConn::connect(addr).await?;
            let mut latency = report::histogram();
            let mut received = 0u64;
            loop {
                let now = tokio::time::Instant::now();
                if now >= consume_until || (now >= produce_until && received >= produced.load(Ordering::Relaxed)) {
                    break;
                }
                let fetched = conn.fetch(&topic, &[(partition, offset)], 1 << 20, 200).await?;
                let now_ns = base.elapsed().as_nanos() as u64;
                for (_, result) in fetched {
                    client::for_each_batch(&result?.records, |batch, _, next| {
                        offset = next;
                        client::for_each_value(batch, |value| {
                            if let Some((_, _, sent)) = mqtt_wire::parse_stamp(value) {
                                report::record(&mut latency, now_ns.saturating_sub(sent));
                                received += 1;
                            }
                        });
                    });
                }
            }
            anyhow::Ok((latency, received))
        }));
    }
    let progress = {
        let (produced, mut last) = (produced.clone(), 0u64);
        Progress::start("kafka latency".into(), move |_| {
            let now = produced.load(Ordering::Relaxed);
            let line = format!("produced {:>8}/s", human((now - last) as f64));
            last = now;
            line
        })
    };
    let cpu = CpuWindow::start(broker);
    let mut producer = KafkaConn::connect(broker.kafka).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = tokio::time::Instant::now();
    let (mut seq, mut partition, mut errors) = (0u64, 0i32, 0u64);
    let mut values: Vec<Vec<u8>> = Vec::new();
    while tokio::time::Instant::now() < produce_until {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * args.latency_rate) as u64;
        let count = due.saturating_sub(seq).min(args.batch as u64 * 4) as usize;
        if count == 0 {
            continue;
        }
        values.resize_with(count.max(values.len()), Vec::new);
        let sent = base.elapsed().as_nanos() as u64;
        for (i, value) in values.iter_mut().take(count).enumerate() {
            mqtt_wire::stamp_into(value, (0, seq + i as u64, sent), args.record_size);
        }
        let records: Vec<NewRecord<'_>> = values[..count]
            .iter()
            .map(|v| NewRecord { key: None, value: Some(v), headers: &[], timestamp_ms: 0 })
            .collect();
        let batch = build_record_batch(&records, 0);
        let response = producer.call(PRODUCE_VERSION, &produce_request(topic, partition, 1, batch)).await?;
        if let Some(error) = produce_errors(&response) {
            errors += 1;
            eprintln!("latency produce error: {error}");
        } else {
            produced.fetch_add(count as u64, Ordering::Relaxed);
        }
        seq += count as u64;
        partition = (partition + 1) % args.partitions;
    }
    let mut latency = report::histogram();
    let mut received = 0;
    for consumer in consumers {
        let (h, r) = consumer.await??;
        latency.add(&h).ok();
        received += r;
    }
    let (cpu, _) = cpu.stop(broker);
    drop(progress);
    let produced = produced.load(Ordering::Relaxed);
    Ok(Phase {
        name: format!("produce→consume @{}/s", human(args.latency_rate)),
        records: received,
        value_bytes: received * args.record_size as u64,
        wire_bytes: 0,
        secs: duration.as_secs_f64(),
        latency: Some(latency),
        cpu,
        errors,
        note: format!("{received} of {produced} produced records consumed, 1 ms produce ticks"),
    })
}
