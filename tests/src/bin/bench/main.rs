//! `tidewater-bench`: load generators for Tidewater's MQTT broker and Kafka server, with a
//! progress line per second on stderr and a table plus one JSON line on stdout.
//!
//! It exists so throughput, latency and memory claims are programs anyone can rerun against
//! Tidewater and its peers (Mosquitto, rumqttd) in the same run, on the same machine, with the
//! same generator. See BENCHMARKS.md for the measured tables and the commands behind them.
// Benchmarks measure real time: the seam lints (clock, threads) do not apply to this program.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod conn;
mod disk;
mod e2e;
mod failover;
mod flood;
mod footprint;
mod kafka;
mod kafka_group;
mod mqtt;
mod mqtt_load;
mod peers;
mod report;
mod retention;
mod target;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "tidewater-bench", about = "Load generator and benchmark for Tidewater (MQTT and Kafka)")]
struct Cli {
    /// Worker threads of the generator's tokio runtime (the broker shares the machine's cores).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// MQTT publishers to subscribers: msg/s, latency, loss, broker CPU and RSS.
    Mqtt(mqtt::MqttArgs),
    /// Many idle MQTT connections: connect rate and broker RSS per connection.
    Conn(conn::ConnArgs),
    /// Kafka produce, backlog consume, group consume and produce-to-consume latency.
    Kafka(kafka::KafkaArgs),
    /// MQTT QoS 1 publishers into a bound stream read by Kafka consumers.
    E2e(e2e::E2eArgs),
    /// The same MQTT scenarios against Tidewater, Mosquitto and rumqttd in one run.
    Peers(peers::PeersArgs),
    /// What an idle ractor actor and an idle tokio task cost, measured in this process.
    Footprint(footprint::FootprintArgs),
    /// The segment store alone: write many GB, then time the retention pass that expires them.
    Retention(retention::RetentionArgs),
    /// A 3-node cluster whose controller leader is killed N times: time to a new leader.
    Failover(failover::FailoverArgs),
    /// Subscribers that never read, flooded with large QoS 0 messages: broker RSS during the
    /// flood and after every client left, against the node's memory budget.
    Flood(flood::FloodArgs),
    /// What TLS costs: 1→1 QoS 1 and connects per second over TCP and TLS, Tidewater and
    /// Mosquitto with the same certificate.
    Tls(tls::TlsArgs),
}

/// Where the broker under test is: started by the bench, or already running.
#[derive(Args, Debug, Clone)]
pub(crate) struct TargetArgs {
    /// Start this `tidewater` binary on free loopback ports with a temporary data dir.
    #[arg(long)]
    pub(crate) spawn: Option<PathBuf>,
    /// MQTT address of a running broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) mqtt: SocketAddr,
    /// Kafka address of a running broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub(crate) kafka: SocketAddr,
    /// HTTP address of a running broker.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) http: SocketAddr,
    /// Pid of a running broker, for its CPU and RSS.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// Log level of a spawned tidewater.
    #[arg(long, default_value = "warn")]
    pub(crate) log_level: String,
    /// Before each measurement, wait up to this many seconds for other processes to go idle.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) wait_idle: f64,
    /// `storage.fsync` of a spawned tidewater (`always` or `interval:<ms>`; default: the node's).
    #[arg(long)]
    pub(crate) fsync: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    target::raise_nofile_limit();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads).enable_all().build()?
    };
    let threads = cli.threads.max(1);
    runtime.block_on(async move {
        match cli.mode {
            Mode::Mqtt(args) => mqtt::main(args, threads).await,
            Mode::Conn(args) => conn::main(args, threads).await,
            Mode::Kafka(args) => kafka::main(args, threads).await,
            Mode::E2e(args) => e2e::main(args, threads).await,
            Mode::Peers(args) => peers::main(args, threads).await,
            Mode::Footprint(args) => footprint::main(args, threads).await,
            Mode::Retention(args) => retention::main(args, threads).await,
            Mode::Failover(args) => failover::main(args, threads).await,
            Mode::Flood(args) => flood::main(args, threads).await,
            Mode::Tls(args) => tls::main(args, threads).await,
        }
    })
}
