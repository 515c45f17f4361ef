//! `tidewater`: one binary that is an MQTT broker, a Kafka-protocol server and a cluster node.
//!
//! `main` is the process around one node: signals, the data directory, fjall, the OS seams.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use tidewater_node::cluster::Gossip;
use tidewater_node::config;
use tidewater_node::node::{Node, Parts};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidewater_actors::seams::{MonotonicClock, NodeRng, TokioNet};
use tidewater_storage::{FjallStore, SegmentStore};

use config::{Config, Overrides};

/// jemalloc instead of glibc malloc: the broker allocates per message on several worker threads,
/// and glibc's arena lock showed up as ≈ 18 % of broker time in profiles (BENCHMARKS.md).
/// `--no-default-features` builds with the system allocator, for heaptrack and valgrind.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "tidewater", version, about = "MQTT broker and Kafka-protocol streaming server in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    /// Runs a node.
    Start {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// This node's id.
        #[arg(long)]
        node_id: Option<u64>,
        /// Where storage lives (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// MQTT listener (default 0.0.0.0:1883).
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Kafka listener (default 0.0.0.0:9092).
        #[arg(long)]
        kafka_listen: Option<SocketAddr>,
        /// HTTP listener for the admin API and /metrics (default 0.0.0.0:8080).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Data-plane RPC listener (default 0.0.0.0:7947).
        #[arg(long)]
        rpc_listen: Option<SocketAddr>,
        /// Gossip listener (default 0.0.0.0:7946).
        #[arg(long)]
        gossip_listen: Option<SocketAddr>,
        /// Comma-separated gossip addresses of nodes to join through.
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<String>>,
        /// Comma-separated node ids that vote in the controller group (the same on every node).
        #[arg(long, value_delimiter = ',')]
        voters: Option<Vec<u64>>,
        /// Log filter, e.g. `info` or `tidewater_actors=debug` (RUST_LOG wins).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Prints a password hash for `[[auth.users]] password_hash` or `auth.admin_token_hash`.
    Passwd {
        /// The password to hash; without it, the first line of standard input (so that it stays
        /// out of the shell's history and the process list).
        password: Option<String>,
        /// Hash with PBKDF2-HMAC-SHA512 (a user who logs in over Kafka with SCRAM-SHA-512)
        /// instead of SHA-256 (PLAIN, SCRAM-SHA-256, MQTT)
        #[arg(long)]
        sha512: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Passwd { password, sha512 } => {
            let password = match password {
                Some(password) => password,
                None => {
                    use std::io::IsTerminal;
                    if std::io::stdin().is_terminal() {
                        eprint!("Password (echoed): ");
                    }
                    let mut line = String::new();
                    if std::io::stdin().read_line(&mut line).is_err() {
                        eprintln!("error: cannot read the password from standard input");
                        return std::process::ExitCode::from(2);
                    }
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.is_empty() {
                eprintln!("error: the password is empty");
                return std::process::ExitCode::from(2);
            }
            let mut salt = [0u8; 16];
            tidewater_actors::seams::NodeRng::from_os().fill(&mut salt);
            use tidewater_actors::mqtt::auth::{HashAlgorithm, hash_password_with};
            let algorithm = if sha512 { HashAlgorithm::Sha512 } else { HashAlgorithm::Sha256 };
            println!("{}", hash_password_with(algorithm, &password, &salt));
            std::process::ExitCode::SUCCESS
        }
        Command::Start {
            config,
            node_id,
            data_dir,
            mqtt_listen,
            kafka_listen,
            http_listen,
            rpc_listen,
            gossip_listen,
            seeds,
            voters,
            log_level,
        } => {
            let overrides = Overrides {
                node_id,
                data_dir,
                log_level,
                mqtt_listen,
                kafka_listen,
                http_listen,
                rpc_listen,
                gossip_listen,
                seeds,
                voters,
            };
            let config = match Config::load(config.as_deref(), &overrides) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("tidewater: configuration error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            let tls = match tidewater_node::tls::ServerTls::load(&config.tls) {
                Ok(tls) => tls,
                Err(error) => {
                    eprintln!("tidewater: configuration error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_logging(&config.log_level);
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            // A message crosses four tasks (connection, publisher's session, subscriber's session,
            // subscriber's connection). Tokio's LIFO slot runs each woken task next on the waking
            // worker, where no other worker may steal it: the whole chain ran on one core while
            // the other idled (BENCHMARKS.md, "latency").
            #[cfg(tokio_unstable)]
            builder.disable_lifo_slot();
            let runtime = match builder.build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("tidewater: cannot start the runtime: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config, tls)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tidewater: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// The process around one node: the metrics recorder, the data directory and fjall, the OS
/// seams, and the signals that stop it.
async fn run(config: Config, tls: Option<Arc<tidewater_node::tls::ServerTls>>) -> anyhow::Result<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    tidewater_actors::metrics::describe();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // small state in fjall, partition logs as segment files (storage/src/segment_store.rs)
    let state_store = Arc::new(
        FjallStore::open(&config.data_dir.join("store"), config.fsync_policy()?)
            .with_context(|| format!("cannot open storage in {}", config.data_dir.display()))?,
    );
    let log_store = Arc::new(
        SegmentStore::open(&config.data_dir.join("logs"), config.segment_options()?)
            .with_context(|| format!("cannot open the partition logs in {}", config.data_dir.display()))?,
    );
    let node = Node::start(Parts {
        config,
        state_store,
        log_store,
        net: Arc::new(TokioNet),
        clock: Arc::new(MonotonicClock::from_system()),
        rng: NodeRng::from_os(),
        metrics: Some(Arc::new(move || recorder.render())),
        gossip: Gossip::Chitchat,
        tls,
    })
    .await?;
    wait_for_signal().await;
    node.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn init_logging(level: &str) {
    use std::io::IsTerminal;
    // fjall and lsm-tree report routine maintenance at info: keep them at warn unless asked
    let directives = format!("fjall=warn,lsm_tree=warn,{level}");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
