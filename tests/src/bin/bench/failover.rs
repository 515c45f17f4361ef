//! The `failover` mode: a 3-node cluster on loopback (`--voters 1,2,3`), whose controller
//! leader is killed with SIGKILL `--kills` times. Each time it measures how long until both
//! survivors follow one new leader in a higher term, then restarts the killed node on its own
//! data and waits until the three agree again.
//!
//! This is the raft fail-over of the controller group, the part a partition's fail-over will
//! share (detection, pre-vote, election); a producer's next acknowledged write also needs its
//! client to refresh metadata and retry. The reference printed beside it is the configured
//! election window (10 to 20 ticks of 50 ms): the time raft waits before it may elect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::report::{self, Table};
use crate::target::{free_port, http_request};

/// Arguments of the failover mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct FailoverArgs {
    /// The `tidewater` binary to run the three nodes from.
    #[arg(long)]
    spawn: PathBuf,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 10)]
    kills: usize,
}

/// One node of the cluster.
struct ClusterNode {
    id: u64,
    http: SocketAddr,
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
    let seed_port = free_port()?;
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let dir = root.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir)?;
        let http = loopback(free_port()?);
        let gossip = if id == 1 { seed_port } else { free_port()? };
        let mut node_args: Vec<String> = vec![
            "start".into(),
            "--node-id".into(),
            id.to_string(),
            "--voters".into(),
            "1,2,3".into(),
            "--log-level".into(),
            "warn".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
        ];
        for (flag, port) in [
            ("--mqtt-listen", free_port()?),
            ("--kafka-listen", free_port()?),
            ("--rpc-listen", free_port()?),
            ("--gossip-listen", gossip),
        ] {
            node_args.extend([flag.to_string(), loopback(port).to_string()]);
        }
        node_args.extend(["--http-listen".into(), http.to_string()]);
        if id != 1 {
            node_args.extend(["--seeds".into(), loopback(seed_port).to_string()]);
        }
        let mut node = ClusterNode { id, http, args: node_args, dir, child: None };
        node.start(&binary)?;
        nodes.push(node);
    }
    let mut term = wait_agreed(&nodes.iter().collect::<Vec<_>>(), 0, Duration::from_secs(30)).await?.1;
    let mut table = Table::new(&["kill", "old leader", "new leader", "term", "fail-over ms", "election window ms"]);
    let mut times = Vec::new();
    for kill in 1..=args.kills {
        let everyone: Vec<&ClusterNode> = nodes.iter().collect();
        let (leader, _) = wait_agreed(&everyone, term - 1, Duration::from_secs(30)).await?;
        let position = nodes.iter().position(|node| node.id == leader).context("the leader is one of ours")?;
        nodes[position].kill();
        let killed_at = Instant::now();
        let survivors: Vec<&ClusterNode> = nodes.iter().filter(|node| node.id != leader).collect();
        let (new_leader, new_term) = wait_agreed(&survivors, term, Duration::from_secs(30)).await?;
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
        term = new_term;
        // the killed node comes back on its own data; the three agree before the next kill
        nodes[position].start(&binary)?;
        let everyone: Vec<&ClusterNode> = nodes.iter().collect();
        term = wait_agreed(&everyone, term - 1, Duration::from_secs(30)).await?.1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let worst = sorted.last().copied().unwrap_or(0.0);
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
