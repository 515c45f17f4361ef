//! The `failover` mode: a 3-node cluster on loopback (`--voters 1,2,3`), whose controller
//! leader is killed with SIGKILL `--kills` times. Each time it measures how long until both
//! survivors follow one new leader in a higher term, then restarts the killed node on its own
//! data and waits until the three agree again.
//!
//! This is the raft fail-over of the controller group. With `--partition` it kills the leader
//! of partition 0 of a replicated stream (replication factor 3) instead, and measures what a
//! producer sees: from the kill to its next `acks=all` write acknowledged, the producer
//! retrying on the two survivors in turn (a non-leader answers `NOT_LEADER_OR_FOLLOWER` at
//! once, as a Kafka client's retry after a metadata refresh would find). The reference printed
//! beside it is the configured election window (10 to 20 ticks of 50 ms): the time raft waits
//! before it may elect.
//!
//! With `--replication` it kills nothing: it measures what replication costs. One node alone
//! takes `acks=all` produces into a stream of replication factor 1, then the three nodes take
//! the same into a stream of replication factor 3 (each partition's batches sent to its
//! leader), and it prints the bytes persisted per second, summed over the replicas, side by
//! side (the target: RF 3 at least 80% of RF 1). Then MQTT QoS 1 publishers, spread
//! over the nodes, publish into a bound stream of the same replication factor, and it prints
//! the PUBACKs per second (each sent once the message is committed). It does both
//! `--rounds` times, on fresh nodes each time and after a `sync`, and compares the medians.
//!
//! With `--cross-node` it measures MQTT across the cluster: one QoS 1 publisher and one QoS 1
//! subscriber on node 1, then the publisher on node 1 and the subscriber on node 2 (each
//! message forwarded over the data plane, its PUBACK after node 2's answer), at the full rate
//! and at half of it (the targets: cross-node at least 50% of same-node, p99 at half
//! the maximum at most 2 ms).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::report::{self, Table};
use crate::target::{ProcSample, free_port, http_request};
use tidewater_tests::clients::kafka::KafkaConn;

/// Arguments of the failover mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct FailoverArgs {
    /// The `tidewater` binary to run the three nodes from.
    #[arg(long)]
    spawn: PathBuf,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Kill the leader of a replicated stream's partition (and time a producer's next
    /// acknowledged write) instead of the controller's.
    #[arg(long)]
    partition: bool,
    /// Measure bytes persisted per second at replication factor 3 against 1 instead.
    #[arg(long)]
    replication: bool,
    /// Seconds of producing per replication factor (`--replication`).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Partitions of the streams of `--replication`.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Rounds of `--replication` (each measures RF 1, then RF 3, on fresh nodes).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure what this many idle partitions (replication factor 3) cost each node in CPU
    /// instead (`--seconds` of measuring).
    #[arg(long)]
    idle: Option<u32>,
    /// Measure MQTT QoS 1 from one node to a subscriber on another against the same node
    /// instead (`--seconds` per run).
    #[arg(long)]
    cross_node: bool,
}

/// The replicated stream of `--partition`.
const STREAM: &str = "failover";

/// One node of the cluster.
struct ClusterNode {
    id: u64,
    http: SocketAddr,
    kafka: SocketAddr,
    mqtt: SocketAddr,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl ClusterNode {
    fn start(&mut self, binary: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tidewater.log"))?;
        let child = tidewater_tests::command_for(binary)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn controller(&self) -> Option<Value> {
        let (status, body) = http_request(self.http, "GET", "/api/v1/cluster", None).await.ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<Value>(&body).ok().map(|view| view["controller"].clone())
    }

    /// The leader of the stream's partition 0 as this node's replica sees it.
    async fn partition_leader(&self) -> Option<u64> {
        let (status, body) = http_request(self.http, "GET", &format!("/api/v1/streams/{STREAM}"), None).await.ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<Value>(&body).ok()?["partition_offsets"][0]["leader"].as_u64()
    }

    /// One `acks=all` produce of one record to partition 0; whether it was acknowledged.
    async fn produce_once(&self) -> bool {
        let attempt = async {
            let mut conn = KafkaConn::connect(self.kafka).await.ok()?;
            let batch = tidewater_storage::build_record_batch(
                &[tidewater_storage::NewRecord { key: None, value: Some(b"x"), headers: &[], timestamp_ms: 1 }],
                1,
            );
            let (code, _) = conn.produce(STREAM, 0, batch, -1, 5_000).await.ok()?;
            Some(code == 0)
        };
        tokio::time::timeout(Duration::from_secs(6), attempt).await.ok().flatten().unwrap_or(false)
    }
}

/// The leader of the stream's partition 0 that every node in `nodes` reports, if they agree.
async fn agreed_partition(nodes: &[&ClusterNode], limit: Duration) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let mut leaders = Vec::new();
        for node in nodes {
            leaders.push(node.partition_leader().await);
        }
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|seen| *seen == Some(*leader))
        {
            return Ok(*leader);
        }
        anyhow::ensure!(started.elapsed() < limit, "the partition has no agreed leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The (leader, term) every node in `nodes` reports alike, if they do.
async fn agreed(nodes: &[&ClusterNode]) -> Option<(u64, u64)> {
    let mut seen = None;
    for node in nodes {
        let view = node.controller().await?;
        let now = (view["leader"].as_u64()?, view["term"].as_u64()?);
        if seen.is_some_and(|seen| seen != now) {
            return None;
        }
        seen = Some(now);
    }
    seen
}

async fn wait_agreed(nodes: &[&ClusterNode], newer_than: u64, limit: Duration) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    loop {
        if let Some((leader, term)) = agreed(nodes).await
            && term > newer_than
        {
            return Ok((leader, term));
        }
        anyhow::ensure!(started.elapsed() < limit, "the cluster did not agree on a leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the failover mode.
pub(crate) async fn main(args: FailoverArgs, threads: usize) -> anyhow::Result<()> {
    let binary = std::fs::canonicalize(&args.spawn).with_context(|| format!("cannot find {}", args.spawn.display()))?;
    let root = tempfile::Builder::new().prefix("tidewater-failover-").tempdir()?;
    if args.replication {
        return replication_cost(&args, &binary, root.path(), threads).await;
    }
    if let Some(partitions) = args.idle {
        return idle_cost(&args, partitions, &binary, root.path(), threads).await;
    }
    if args.cross_node {
        return cross_node(&args, &binary, root.path(), threads).await;
    }
    let mut nodes = spawn_nodes(&binary, root.path(), 3)?;
    let mut term = wait_agreed(&nodes.iter().collect::<Vec<_>>(), 0, Duration::from_secs(30)).await?.1;
    if args.partition {
        return partition_failover(&args, &binary, &mut nodes, term, threads).await;
    }
    controller_failover(&args, &binary, &mut nodes, &mut term, threads).await
}

/// Starts `count` nodes under `root`: three form a cluster (`--voters 1,2,3`), one is a node
/// alone.
fn spawn_nodes(binary: &Path, root: &Path, count: u64) -> anyhow::Result<Vec<ClusterNode>> {
    let seed_port = free_port()?;
    let mut nodes = Vec::new();
    for id in 1..=count {
        let dir = root.join(format!("n{id}"));
        std::fs::create_dir_all(&dir)?;
        let http = loopback(free_port()?);
        let gossip = if id == 1 { seed_port } else { free_port()? };
        let mut node_args: Vec<String> = vec!["start".into(), "--node-id".into(), id.to_string()];
        if count > 1 {
            node_args.extend(["--voters".into(), (1..=count).map(|id| id.to_string()).collect::<Vec<_>>().join(",")]);
        }
        node_args.extend([
            "--log-level".into(),
            "warn".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
        ]);
        let kafka = loopback(free_port()?);
        let mqtt = loopback(free_port()?);
        for (flag, port) in [
            ("--mqtt-listen", mqtt.port()),
            ("--kafka-listen", kafka.port()),
            ("--rpc-listen", free_port()?),
            ("--gossip-listen", gossip),
        ] {
            node_args.extend([flag.to_string(), loopback(port).to_string()]);
        }
        node_args.extend(["--http-listen".into(), http.to_string()]);
        if id != 1 {
            node_args.extend(["--seeds".into(), loopback(seed_port).to_string()]);
        }
        let mut node = ClusterNode { id, http, kafka, mqtt, args: node_args, dir, child: None };
        node.start(binary)?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Kills the controller's leader `--kills` times (see the module's text).
async fn controller_failover(
    args: &FailoverArgs,
    binary: &Path,
    nodes: &mut [ClusterNode],
    term: &mut u64,
    threads: usize,
) -> anyhow::Result<()> {
    let mut table = Table::new(&["kill", "old leader", "new leader", "term", "fail-over ms", "election window ms"]);
    let mut times = Vec::new();
    for kill in 1..=args.kills {
        let everyone: Vec<&ClusterNode> = nodes.iter().collect();
        let (leader, _) = wait_agreed(&everyone, *term - 1, Duration::from_secs(30)).await?;
        let position = nodes.iter().position(|node| node.id == leader).context("the leader is one of ours")?;
        nodes[position].kill();
        let killed_at = Instant::now();
        let survivors: Vec<&ClusterNode> = nodes.iter().filter(|node| node.id != leader).collect();
        let (new_leader, new_term) = wait_agreed(&survivors, *term, Duration::from_secs(30)).await?;
        let millis = killed_at.elapsed().as_secs_f64() * 1000.0;
        times.push(millis);
        table.row(vec![
            kill.to_string(),
            leader.to_string(),
            new_leader.to_string(),
            new_term.to_string(),
            format!("{millis:.0}"),
            "500–1000".into(),
        ]);
        eprintln!("kill {kill}: leader {leader} -> {new_leader} in {millis:.0} ms");
        *term = new_term;
        // the killed node comes back on its own data; the three agree before the next kill
        nodes[position].start(binary)?;
        let everyone: Vec<&ClusterNode> = nodes.iter().collect();
        *term = wait_agreed(&everyone, *term - 1, Duration::from_secs(30)).await?.1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (median, worst) = median_and_max(&times);
    table.row(vec!["median".into(), "".into(), "".into(), "".into(), format!("{median:.0}"), "500–1000".into()]);
    table.row(vec!["max".into(), "".into(), "".into(), "".into(), format!("{worst:.0}"), "".into()]);
    report::finish(
        "failover",
        threads,
        json!({"kills": args.kills, "nodes": 3, "tick_ms": 50, "election_ticks": [10, 20]}),
        &table,
        json!({"failover_ms": times, "median_ms": median, "max_ms": worst}),
    );
    Ok(())
}

/// `--partition`: kills partition 0's leader `--kills` times and times a producer's next
/// acknowledged write.
async fn partition_failover(
    args: &FailoverArgs,
    binary: &Path,
    nodes: &mut [ClusterNode],
    controller_term: u64,
    threads: usize,
) -> anyhow::Result<()> {
    // CreateTopics goes to the controller's leader (every node registered first: replication 3)
    let everyone: Vec<&ClusterNode> = nodes.iter().collect();
    let (controller, _) = wait_agreed(&everyone, controller_term - 1, Duration::from_secs(30)).await?;
    let at = nodes.iter().find(|node| node.id == controller).context("the controller is one of ours")?;
    create_topic_retrying(at, STREAM, 1).await?;
    let mut table = Table::new(&["kill", "old leader", "new leader", "next acked write ms", "election window ms"]);
    let mut times = Vec::new();
    for kill in 1..=args.kills {
        let everyone: Vec<&ClusterNode> = nodes.iter().collect();
        let leader = agreed_partition(&everyone, Duration::from_secs(30)).await?;
        let position = nodes.iter().position(|node| node.id == leader).context("the leader is one of ours")?;
        anyhow::ensure!(nodes[position].produce_once().await, "the leader does not acknowledge before the kill");
        nodes[position].kill();
        let killed_at = Instant::now();
        let survivors: Vec<&ClusterNode> = nodes.iter().filter(|node| node.id != leader).collect();
        // the producer retries on the survivors in turn until one acknowledges
        let new_leader = 'retry: loop {
            for node in &survivors {
                if node.produce_once().await {
                    break 'retry node.id;
                }
            }
            anyhow::ensure!(killed_at.elapsed() < Duration::from_secs(30), "no acknowledged write within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let millis = killed_at.elapsed().as_secs_f64() * 1000.0;
        times.push(millis);
        table.row(vec![
            kill.to_string(),
            leader.to_string(),
            new_leader.to_string(),
            format!("{millis:.0}"),
            "500–1000".into(),
        ]);
        eprintln!(
            "kill {kill}: partition leader {leader} -> {new_leader}, next acknowledged write after {millis:.0} ms"
        );
        // the killed node comes back on its own data and catches up before the next kill
        nodes[position].start(binary)?;
        let everyone: Vec<&ClusterNode> = nodes.iter().collect();
        agreed_partition(&everyone, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    let (median, worst) = median_and_max(&times);
    table.row(vec!["median".into(), "".into(), "".into(), format!("{median:.0}"), "500–1000".into()]);
    table.row(vec!["max".into(), "".into(), "".into(), format!("{worst:.0}"), "".into()]);
    report::finish(
        "failover --partition",
        threads,
        json!({"kills": args.kills, "nodes": 3, "replication_factor": 3, "tick_ms": 50, "election_ticks": [10, 20]}),
        &table,
        json!({"next_acked_write_ms": times, "median_ms": median, "max_ms": worst}),
    );
    Ok(())
}

/// CPU of each node over `seconds`, in percent of one core.
async fn cpu_of(nodes: &[ClusterNode], seconds: f64) -> anyhow::Result<Vec<f64>> {
    let pid = |node: &ClusterNode| node.child.as_ref().map(|child| child.id()).context("a node is not running");
    let before: Vec<ProcSample> =
        nodes.iter().map(|node| ProcSample::read(pid(node)?).context("no /proc sample")).collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let mut cpu = Vec::new();
    for (node, before) in nodes.iter().zip(before) {
        let after = ProcSample::read(pid(node)?).context("no /proc sample")?;
        let ticks = after.ticks.saturating_sub(before.ticks) as f64;
        let secs = after.at.duration_since(before.at).as_secs_f64();
        cpu.push(ticks / 100.0 / secs * 100.0); // /proc counts 100 ticks a second
    }
    Ok(cpu)
}

/// `--idle N`: the CPU each of three nodes uses with no stream, then with N idle partitions
/// of replication factor 3 (every node holds a replica of each), against the 5%.
async fn idle_cost(
    args: &FailoverArgs,
    partitions: u32,
    binary: &Path,
    root: &Path,
    threads: usize,
) -> anyhow::Result<()> {
    let nodes = spawn_nodes(binary, root, 3)?;
    let everyone: Vec<&ClusterNode> = nodes.iter().collect();
    wait_agreed(&everyone, 0, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let empty = cpu_of(&nodes, args.seconds).await?;
    let definition = json!({"name": "idle", "kind": "free", "partitions": partitions, "replication_factor": 3});
    let started = Instant::now();
    loop {
        let created = http_request(nodes[0].http, "POST", "/api/v1/streams", Some(&definition.to_string())).await;
        match created {
            Ok((201 | 409, _)) => break,
            _ => anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "cannot create the idle stream: {created:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    partition_leaders(&nodes, "idle", partitions as i32, Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded = cpu_of(&nodes, args.seconds).await?;
    let mut table =
        Table::new(&["node", "partitions held", "CPU % of a core, no stream", "CPU % of a core, idle", "target"]);
    for (index, node) in nodes.iter().enumerate() {
        table.row(vec![
            node.id.to_string(),
            partitions.to_string(),
            format!("{:.1}", empty[index]),
            format!("{:.1}", loaded[index]),
            "< 5".into(),
        ]);
    }
    report::finish(
        "failover --idle",
        threads,
        json!({"partitions": partitions, "replication_factor": 3, "nodes": 3, "seconds": args.seconds, "tick_ms": 50}),
        &table,
        json!({"cpu_percent_no_stream": empty, "cpu_percent_idle": loaded}),
    );
    Ok(())
}

/// `--replication`: bytes persisted per second at replication factor 1 (one node alone) and 3
/// (three nodes), under the same `acks=all` produce load, then MQTT QoS 1 acknowledged per
/// second into a bound stream of the same factor; `--rounds` times, each on fresh nodes.
async fn replication_cost(args: &FailoverArgs, binary: &Path, root: &Path, threads: usize) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        "round",
        "replication",
        "nodes",
        "acked MB/s",
        "persisted MB/s (all replicas)",
        "of RF 1",
        "MQTT QoS 1 acked msg/s",
    ]);
    let mut results = Vec::new();
    // per factor: (persisted MB/s, MQTT msg/s) of each round
    let mut rates: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.rounds.max(1) {
        for (slot, (factor, count)) in [(1u64, 1u64), (3, 3)].into_iter().enumerate() {
            // what earlier rounds wrote is on the disk before this one starts
            let _ = std::process::Command::new("sync").status();
            let root = root.join(format!("round{round}-rf{factor}"));
            let nodes = spawn_nodes(binary, &root, count)?;
            let at = ready_node(&nodes).await?;
            let stream = format!("rf{factor}");
            create_topic_retrying(at, &stream, args.partitions).await?;
            let leaders = partition_leaders(&nodes, &stream, args.partitions, Duration::from_secs(60)).await?;
            let acked = produce_for(&stream, &leaders, Duration::from_secs_f64(args.seconds)).await?;
            let persisted: u64 = nodes.iter().map(|node| stream_disk_bytes(node, &stream)).sum();
            let (acked_rate, persisted_rate) =
                (acked as f64 / args.seconds / 1e6, persisted as f64 / args.seconds / 1e6);
            let mqtt_rate = mqtt_qos1_rate(&nodes, at, factor, args).await?;
            // against this round's RF 1 (measured just before)
            let of_rf1 = match slot {
                0 => 100.0,
                _ => rates[0].last().map_or(100.0, |&(rf1, _)| persisted_rate / rf1 * 100.0),
            };
            rates[slot].push((persisted_rate, mqtt_rate));
            results.push(json!({"round": round, "replication_factor": factor, "acked_bytes": acked,
                "persisted_bytes": persisted, "seconds": args.seconds, "mqtt_qos1_acked_per_second": mqtt_rate}));
            table.row(vec![
                round.to_string(),
                factor.to_string(),
                count.to_string(),
                format!("{acked_rate:.1}"),
                format!("{persisted_rate:.1}"),
                format!("{of_rf1:.0}%"),
                format!("{mqtt_rate:.0}"),
            ]);
            eprintln!(
                "round {round}, replication factor {factor}: {acked_rate:.1} MB/s acknowledged, \
                 {persisted_rate:.1} MB/s persisted, MQTT QoS 1 {mqtt_rate:.0} msg/s"
            );
            drop(nodes);
        }
    }
    let median = |values: Vec<f64>| median_and_max(&values).0;
    let persisted: Vec<f64> = rates.iter().map(|runs| median(runs.iter().map(|run| run.0).collect())).collect();
    let mqtt: Vec<f64> = rates.iter().map(|runs| median(runs.iter().map(|run| run.1).collect())).collect();
    for (slot, factor) in [(0, 1), (1, 3)] {
        table.row(vec![
            "median".into(),
            factor.to_string(),
            String::new(),
            String::new(),
            format!("{:.1}", persisted[slot]),
            format!("{:.0}%", persisted[slot] / persisted[0] * 100.0),
            format!("{:.0}", mqtt[slot]),
        ]);
    }
    report::finish(
        "failover --replication",
        threads,
        json!({"partitions": args.partitions, "seconds": args.seconds, "rounds": args.rounds, "acks": "all",
            "batch": "256 x 1 KiB", "mqtt": "one QoS 1 publisher per partition, 256 B, 64 in flight"}),
        &table,
        json!({"runs": results, "median_persisted_mb_per_second": persisted, "median_mqtt_qos1_per_second": mqtt}),
    );
    Ok(())
}

/// The node to create streams through: the controller's leader of a cluster, or the node alone.
async fn ready_node(nodes: &[ClusterNode]) -> anyhow::Result<&ClusterNode> {
    if nodes.len() == 1 {
        wait_http(&nodes[0], Duration::from_secs(30)).await?;
        return Ok(&nodes[0]);
    }
    let everyone: Vec<&ClusterNode> = nodes.iter().collect();
    let (controller, _) = wait_agreed(&everyone, 0, Duration::from_secs(30)).await?;
    nodes.iter().find(|node| node.id == controller).context("the controller is one of ours")
}

/// Creates a free stream through CreateTopics, retrying while the cluster forms.
async fn create_topic_retrying(at: &ClusterNode, stream: &str, partitions: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let created = async {
            let mut conn = KafkaConn::connect(at.kafka).await.ok()?;
            conn.create_topics(stream, partitions).await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(15), created).await.ok().flatten() {
            Some(0) => return Ok(()),
            code => anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "cannot create {stream}: {code:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// MQTT QoS 1 into a bound stream of replication factor `factor`: one publisher per partition,
/// spread over the nodes (a publish reaches its partition's leader from any node), for half of
/// `--seconds`; PUBACKs per second.
async fn mqtt_qos1_rate(
    nodes: &[ClusterNode],
    at: &ClusterNode,
    factor: u64,
    args: &FailoverArgs,
) -> anyhow::Result<f64> {
    use crate::mqtt_load::{self, PublisherPlan, Shared};
    let stream = format!("mqtt-rf{factor}");
    let filter = format!("rf{factor}/#");
    let def = json!({"name": stream, "kind": "bound", "filter": filter, "partitions": args.partitions,
        "replication_factor": factor});
    let (status, body) = http_request(at.http, "POST", "/api/v1/streams", Some(&def.to_string())).await?;
    anyhow::ensure!(status == 200 || status == 201, "creating {stream} failed: {status} {body}");
    partition_leaders(nodes, &stream, args.partitions, Duration::from_secs(60)).await?;
    let publishers = args.partitions.max(1) as usize;
    let shared = Shared::new(publishers, 0);
    let seconds = (args.seconds / 2.0).max(1.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for publisher in 0..publishers {
        let node = &nodes[publisher % nodes.len()];
        let connection = mqtt_load::connect(node.mqtt, None, &format!("rf{factor}-{publisher}"), 60).await?;
        let plan = PublisherPlan {
            id: publisher as u32,
            topic: format!("rf{factor}/{publisher}"),
            qos: 1,
            payload: 256,
            inflight: 64,
            window: 0,
            audience: Vec::new(),
            rate: 0.0,
            count: 0,
            deadline,
        };
        tasks.push(tokio::spawn(mqtt_load::publisher(connection, plan, shared.clone(), Duration::from_secs(5))));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await??.acked;
    }
    Ok(acked as f64 / seconds)
}

/// `--cross-node`: one QoS 1 publisher and one QoS 1 subscriber (256 B, 64 in flight), both
/// on node 1, then the publisher on node 1 and the subscriber on node 2 of the three: the
/// delivered rate of each, and the latency at the full rate and at half of it.
async fn cross_node(args: &FailoverArgs, binary: &Path, root: &Path, threads: usize) -> anyhow::Result<()> {
    let nodes = spawn_nodes(binary, root, 3)?;
    wait_agreed(&nodes.iter().collect::<Vec<_>>(), 0, Duration::from_secs(30)).await?;
    let mut table = Table::new(&["path", "offered msg/s", "delivered msg/s", "p50 ms", "p99 ms", "of same-node"]);
    let mut results = Vec::new();
    let mut full = Vec::new();
    for (name, subscriber_at) in [("same-node", &nodes[0]), ("cross-node", &nodes[1])] {
        let run = one_to_one(&nodes[0], subscriber_at, name, 0.0, args.seconds).await?;
        full.push(run.rate);
        let half = one_to_one(&nodes[0], subscriber_at, &format!("{name}-half"), run.rate / 2.0, args.seconds).await?;
        for (offered, outcome) in [("max".to_string(), &run), (format!("{:.0}", run.rate / 2.0), &half)] {
            table.row(vec![
                name.into(),
                offered.clone(),
                format!("{:.0}", outcome.rate),
                report::latency_ms(&outcome.latency, 0.5),
                report::latency_ms(&outcome.latency, 0.99),
                format!("{:.0}%", outcome.rate / full[0] * 100.0),
            ]);
            results.push(json!({"path": name, "offered": offered, "delivered_per_second": outcome.rate,
                "latency": report::latency_json(&outcome.latency)}));
        }
    }
    // a SUBACK leaves once every node routes the new filter: its time is how soon a
    // subscribe is effective cluster-wide
    let mut connection = crate::mqtt_load::connect(nodes[1].mqtt, None, "subscribe-timer", 60).await?;
    let mut times = Vec::new();
    for filter in 0..SUBSCRIBE_SAMPLES {
        let started = Instant::now();
        crate::mqtt_load::subscribe(&mut connection, &format!("fresh/{filter}/#"), 1).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let (median, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    println!(
        "a subscribe to a new filter on node 2, effective on all three nodes at its SUBACK: median {median:.3} ms, \
         p99 {p99:.3} ms over {SUBSCRIBE_SAMPLES} subscribes"
    );
    report::finish(
        "failover --cross-node",
        threads,
        json!({"seconds": args.seconds, "qos": 1, "payload": 256, "inflight": 64,
            "publisher": "node 1", "subscriber": "node 1 (same-node), node 2 (cross-node)"}),
        &table,
        json!({"runs": results, "cross_over_same": full[1] / full[0],
            "subscribe_effective_ms": {"median": median, "p99": p99, "samples": SUBSCRIBE_SAMPLES}}),
    );
    Ok(())
}

/// Subscribes timed by `--cross-node`, each to a new filter.
const SUBSCRIBE_SAMPLES: usize = 1_000;

/// What one publisher-to-subscriber run measured after its warm-up second.
struct OneToOne {
    rate: f64,
    latency: hdrhistogram::Histogram<u64>,
}

/// A QoS 1 publisher on `publish_at` and a QoS 1 subscriber on `subscribe_at` for `seconds`
/// after a second of warm-up, at `rate` messages per second (0: as fast as the window allows).
async fn one_to_one(
    publish_at: &ClusterNode,
    subscribe_at: &ClusterNode,
    name: &str,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<OneToOne> {
    use crate::mqtt_load::{self, PublisherPlan, Shared};
    use std::sync::atomic::Ordering;
    let shared = Shared::new(1, 1);
    let topic = format!("bench/{name}");
    let mut connection = mqtt_load::connect(subscribe_at.mqtt, None, &format!("{name}-sub"), 60).await?;
    mqtt_load::subscribe(&mut connection, &topic, 1).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let subscriber = tokio::spawn(mqtt_load::subscriber(connection, 0, 1, shared.clone(), stopped));
    let warmup = Duration::from_secs(1);
    shared.measure_from_ns.store(shared.now_ns() + warmup.as_nanos() as u64, Ordering::Relaxed);
    let start = tokio::time::Instant::now();
    let plan = PublisherPlan {
        id: 0,
        topic,
        qos: 1,
        payload: 256,
        inflight: 64,
        window: 4_096,
        audience: vec![0],
        rate,
        count: 0,
        deadline: start + warmup + Duration::from_secs_f64(seconds),
    };
    let connection = mqtt_load::connect(publish_at.mqtt, None, &format!("{name}-pub"), 60).await?;
    let publisher = tokio::spawn(mqtt_load::publisher(connection, plan, shared.clone(), Duration::from_secs(5)));
    tokio::time::sleep_until(start + warmup).await;
    let before = shared.received.load(Ordering::Relaxed);
    tokio::time::sleep_until(start + warmup + Duration::from_secs_f64(seconds)).await;
    let after = shared.received.load(Ordering::Relaxed);
    publisher.await??;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(true);
    let outcome = subscriber.await??;
    Ok(OneToOne { rate: (after - before) as f64 / seconds, latency: outcome.latency })
}

/// Waits until a node alone answers HTTP.
async fn wait_http(node: &ClusterNode, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while http_request(node.http, "GET", "/health", None).await.map(|(status, _)| status).ok() != Some(200) {
        anyhow::ensure!(started.elapsed() < limit, "node {} did not start within {limit:?}", node.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Each partition's leader (a node alone leads them all), once every partition has settled on
/// its preferred replica.
async fn partition_leaders(
    nodes: &[ClusterNode],
    stream: &str,
    partitions: i32,
    limit: Duration,
) -> anyhow::Result<Vec<SocketAddr>> {
    if nodes.len() == 1 {
        return Ok(vec![nodes[0].kafka; partitions as usize]);
    }
    let started = Instant::now();
    loop {
        let found = async {
            let (status, body) =
                http_request(nodes[0].http, "GET", &format!("/api/v1/streams/{stream}"), None).await.ok()?;
            if status != 200 {
                return None;
            }
            let view: Value = serde_json::from_str(&body).ok()?;
            let mut leaders = Vec::new();
            for partition in view["partition_offsets"].as_array()? {
                // once on its preferred replica, where balancing leaves it
                let leader =
                    partition["leader"].as_u64().filter(|leader| Some(*leader) == partition["replicas"][0].as_u64())?;
                leaders.push(nodes.iter().find(|node| node.id == leader)?.kafka);
            }
            (leaders.len() == partitions as usize).then_some(leaders)
        };
        if let Some(leaders) = found.await {
            return Ok(leaders);
        }
        anyhow::ensure!(started.elapsed() < limit, "{stream} has no leader for every partition within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `acks=all` produces of 256 x 1 KiB batches for `duration`, one connection per partition to
/// its leader with 8 requests in flight; the value bytes acknowledged.
async fn produce_for(stream: &str, leaders: &[SocketAddr], duration: Duration) -> anyhow::Result<u64> {
    use tidewater_tests::clients::kafka::{PRODUCE_VERSION, produce_errors, produce_request};
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let batch = crate::kafka::produce_batch(256, 1024, crate::kafka::Codec::None, now_ms)?;
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    for (partition, &leader) in leaders.iter().enumerate() {
        let request = produce_request(stream, partition as i32, -1, 30_000, batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = KafkaConn::connect(leader).await?;
            let (mut in_flight, mut acked) = (0usize, 0u64);
            loop {
                let done = tokio::time::Instant::now() >= deadline;
                if !done {
                    while in_flight < 8 {
                        conn.queue(PRODUCE_VERSION, &request)?;
                        in_flight += 1;
                    }
                    conn.flush().await?;
                }
                if in_flight == 0 {
                    break;
                }
                let response = conn.receive::<kafka_protocol::messages::ProduceRequest>(PRODUCE_VERSION).await?;
                in_flight -= 1;
                match produce_errors(&response) {
                    None => acked += 256 * 1024,
                    Some(error) => anyhow::bail!("produce to partition {partition}: {error}"),
                }
            }
            anyhow::Ok(acked)
        }));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await??;
    }
    Ok(acked)
}

/// Bytes of `stream`'s segment files in a node's data directory.
fn stream_disk_bytes(node: &ClusterNode, stream: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(node.dir.join("data").join("logs")) else { return 0 };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&format!("{stream}-")))
        .flat_map(|entry| std::fs::read_dir(entry.path()).into_iter().flatten().flatten())
        .filter(|file| file.path().extension().is_some_and(|extension| extension == "log"))
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// The median and the largest of `times`.
fn median_and_max(times: &[f64]) -> (f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted.get(sorted.len() / 2).copied().unwrap_or(0.0), sorted.last().copied().unwrap_or(0.0))
}
