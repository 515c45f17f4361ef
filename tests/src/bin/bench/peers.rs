//! The `peers` mode: the same MQTT scenarios against Tidewater, Mosquitto and rumqttd in one
//! run — each broker started on a free port, measured, stopped — and one table with a row per
//! broker and the ratios Tidewater/Mosquitto and Tidewater/rumqttd.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;
use serde_json::{Value, json};

use crate::conn::{self, ConnPlan, ConnResult};
use crate::mqtt::{self, MqttResult, Scenario};
use crate::report::{self, Table, human, opt};
use crate::target::{Broker, PEER_INFLIGHT, PEER_MAX_QUEUED, free_port};

/// Arguments of the peers mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct PeersArgs {
    /// The tidewater binary to start.
    #[arg(long, default_value = "target/release/tidewater")]
    spawn: PathBuf,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// The rumqttd binary (tests/bench/install-peers.sh puts it there).
    #[arg(long, default_value = "/opt/bench-peers/bin/rumqttd")]
    rumqttd: PathBuf,
    /// Brokers to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "tidewater,mosquitto,rumqttd")]
    brokers: Vec<String>,
    /// Seconds of each throughput scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Idle connections of the conn scenario (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Skip the QoS 0 latency run at half the measured maximum rate.
    #[arg(long)]
    no_half_rate: bool,
    /// Before each measurement, wait up to this many seconds for other processes to go idle.
    #[arg(long, default_value_t = 0.0)]
    wait_idle: f64,
    /// Log level of tidewater.
    #[arg(long, default_value = "warn")]
    log_level: String,
}

/// What one broker scored.
struct Scores {
    name: String,
    qos0: Option<MqttResult>,
    qos0_half: Option<MqttResult>,
    qos1: Option<MqttResult>,
    conn: Option<ConnResult>,
}

async fn start(name: &str, args: &PeersArgs) -> anyhow::Result<Broker> {
    let dir = tempfile::Builder::new().prefix(&format!("bench-{name}-")).tempdir()?;
    let port = free_port()?;
    let mqtt = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match name {
        "tidewater" => Broker::spawn_tidewater(&args.spawn, &args.log_level).await,
        "mosquitto" => {
            let config = dir.path().join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n\
                     max_queued_messages {PEER_MAX_QUEUED}\nmax_inflight_messages {PEER_INFLIGHT}\n"
                ),
            )?;
            let mut command = Command::new(&args.mosquitto);
            command.arg("-c").arg(&config);
            Broker::spawn_peer(name, command, mqtt, dir).await
        }
        "rumqttd" => {
            let config = dir.path().join("rumqttd.toml");
            let v5 = free_port()?;
            std::fs::write(
                &config,
                format!(
                    "id = 0\n\n[router]\nid = 0\nmax_connections = 30010\nmax_outgoing_packet_count = 200\n\
                     max_segment_size = 104857600\nmax_segment_count = 10\n\n\
                     [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 0\n\
                     [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n\
                     max_inflight_count = {PEER_INFLIGHT}\ndynamic_filters = true\n\n\
                     [v5.1]\nname = \"v5-1\"\nlisten = \"127.0.0.1:{v5}\"\nnext_connection_delay_ms = 0\n\
                     [v5.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n\
                     max_inflight_count = {PEER_INFLIGHT}\n"
                ),
            )?;
            let mut command = Command::new(&args.rumqttd);
            command.arg("-q").arg("-c").arg(&config);
            Broker::spawn_peer(name, command, mqtt, dir).await
        }
        other => anyhow::bail!("unknown broker {other}: tidewater, mosquitto or rumqttd"),
    }
}

async fn measure(name: &str, args: &PeersArgs) -> anyhow::Result<Scores> {
    eprintln!("== {name}");
    let mut scores = Scores { name: name.into(), qos0: None, qos0_half: None, qos1: None, conn: None };
    // a fresh broker per scenario: earlier load neither blurs the RSS delta of the idle
    // connections nor leaves queues, logs or sessions behind for the next scenario
    let fresh = || async {
        let mut broker = start(name, args).await?;
        broker.wait_idle = args.wait_idle;
        anyhow::Ok(broker)
    };
    if args.connections > 0 {
        let broker = fresh().await?;
        scores.conn = report_err(name, "conn", conn::run(&broker, &ConnPlan::with_connections(args.connections)).await);
    }
    let label = name.to_string();
    let broker = fresh().await?;
    scores.qos0 =
        report_err(name, "qos0", mqtt::run(&broker, &Scenario::one_to_one(0, args.duration, 0.0), &label).await);
    drop(broker);
    if !args.no_half_rate
        && let Some(max) = scores.qos0.as_ref().map(|r| r.out_rate).filter(|r| *r > 0.0)
    {
        let broker = fresh().await?;
        let scenario = Scenario::one_to_one(0, args.duration, (max / 2.0).round());
        scores.qos0_half = report_err(name, "qos0 half rate", mqtt::run(&broker, &scenario, &label).await);
    }
    let broker = fresh().await?;
    scores.qos1 =
        report_err(name, "qos1", mqtt::run(&broker, &Scenario::one_to_one(1, args.duration, 0.0), &label).await);
    Ok(scores)
}

fn report_err<T>(broker: &str, scenario: &str, result: anyhow::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            eprintln!("{broker} {scenario} failed: {error:#}");
            None
        }
    }
}

/// Runs the peers mode.
pub(crate) async fn main(args: PeersArgs, threads: usize) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for name in &args.brokers {
        match measure(name, &args).await {
            Ok(scores) => all.push(scores),
            Err(error) => eprintln!("{name}: {error:#}"),
        }
    }
    // every scenario's details
    let mut header = vec!["broker"];
    header.extend(mqtt::HEADER);
    let mut details = Table::new(&header);
    for s in &all {
        for r in [&s.qos0, &s.qos0_half, &s.qos1].into_iter().flatten() {
            let mut row = vec![s.name.clone()];
            row.extend(mqtt::row(r));
            details.row(row);
        }
    }
    let mut summary = Table::new(&[
        "broker",
        "QoS0 msg/s",
        "QoS0 p99 ms @½ max",
        "QoS1 msg/s",
        "QoS1 p99 ms",
        "connects/s",
        "B/idle conn",
    ]);
    let value = |s: &Scores| -> [Option<f64>; 5] {
        [
            s.qos0.as_ref().map(|r| r.out_rate),
            s.qos0_half
                .as_ref()
                .filter(|r| !r.latency.is_empty())
                .map(|r| r.latency.value_at_quantile(0.99) as f64 / 1e6),
            s.qos1.as_ref().map(|r| r.out_rate),
            s.conn.as_ref().map(|c| c.rate),
            s.conn.as_ref().and_then(|c| c.bytes_per_connection),
        ]
    };
    for s in &all {
        let v = value(s);
        let q1p99 = s.qos1.as_ref().map(|r| report::latency_ms(&r.latency, 0.99)).unwrap_or("-".into());
        summary.row(vec![
            s.name.clone(),
            v[0].map_or("-".into(), human),
            opt(v[1], 3),
            v[2].map_or("-".into(), human),
            q1p99,
            v[3].map_or("-".into(), human),
            opt(v[4], 0),
        ]);
    }
    let mut ratios = serde_json::Map::new();
    if let Some(tw) = all.iter().find(|s| s.name == "tidewater") {
        for peer in all.iter().filter(|s| s.name != "tidewater") {
            let (a, b) = (value(tw), value(peer));
            let ratio = |i: usize| match (a[i], b[i]) {
                (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                _ => None,
            };
            let fmt = |i: usize| ratio(i).map_or("-".into(), |r| format!("{r:.2}×"));
            summary.row(vec![format!("tidewater/{}", peer.name), fmt(0), fmt(1), fmt(2), "".into(), fmt(3), fmt(4)]);
            ratios.insert(
                peer.name.clone(),
                json!({"qos0": ratio(0), "qos0_p99_half_rate": ratio(1), "qos1": ratio(2), "connects": ratio(3),
                       "bytes_per_conn": ratio(4)}),
            );
        }
    }
    println!();
    details.print();
    let mut conns = Table::new(&conn::HEADER);
    for s in &all {
        if let Some(c) = &s.conn {
            conns.row(c.row(&s.name));
        }
    }
    println!();
    conns.print();
    let results: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({
                "broker": s.name, "qos0": s.qos0.as_ref().map(MqttResult::json),
                "qos0_half_rate": s.qos0_half.as_ref().map(MqttResult::json), "qos1": s.qos1.as_ref().map(MqttResult::json),
                "conn": s.conn.as_ref().map(ConnResult::json),
            })
        })
        .collect();
    let params = json!({
        "scenarios": "1→1 100 B QoS 0 (max, then ½ max rate), QoS 1; idle connections", "duration_s": args.duration,
        "connections": args.connections, "brokers": args.brokers, "ratios": ratios, "keepalive": 60, "window": 1000,
        "inflight": 64,
    });
    report::finish("peers", threads, params, &summary, Value::Array(results));
    Ok(())
}
