//! The `footprint` mode: what the building blocks of a connection cost in resident memory,
//! measured in this process. It shows the floor under Tidewater's bytes per idle connection:
//! every MQTT session is a ractor actor (ARCHITECTURE.md), and an idle ractor actor alone
//! costs more than the 4 KB per connection of the benchmark target (BENCHMARKS.md).

use std::time::Duration;

use clap::Args;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use crate::report::{self, Table};

/// Arguments of the footprint mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct FootprintArgs {
    /// Units of each kind to create.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
}

struct Idle;

impl Actor for Idle {
    type Msg = u64;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<u64>, _args: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(&self, _myself: ActorRef<u64>, message: u64, state: &mut u64) -> Result<(), ActorProcessingErr> {
        *state += message;
        Ok(())
    }
}

fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib * 1024.0
}

/// RSS growth per unit while `count` units made by `make` are alive.
async fn per_unit<T, F, Fut>(count: usize, mut make: F) -> (f64, Vec<T>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss_bytes();
    let mut units = Vec::with_capacity(count);
    for _ in 0..count {
        units.push(make().await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ((rss_bytes() - before) / count as f64, units)
}

/// Runs the footprint mode.
pub(crate) async fn main(args: FootprintArgs, threads: usize) -> anyhow::Result<()> {
    let count = args.count.max(1);
    let mut table = Table::new(&["unit", "count", "B/unit"]);
    let mut results = Vec::new();

    let (actor, actors) = per_unit(count, || async {
        Actor::spawn(None, Idle, ()).await.map(|(actor, _)| actor).expect("spawn an idle actor")
    })
    .await;
    table.row(vec!["idle ractor actor".into(), count.to_string(), format!("{actor:.0}")]);
    results.push(json!({"unit": "ractor_actor", "count": count, "bytes_per_unit": actor}));

    let (task, tasks) = per_unit(count, || async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        tx
    })
    .await;
    table.row(vec!["tokio task + unbounded channel".into(), count.to_string(), format!("{task:.0}")]);
    results.push(json!({"unit": "task_and_channel", "count": count, "bytes_per_unit": task}));

    for actor in &actors {
        actor.stop(None);
    }
    drop(tasks);
    report::finish("footprint", threads, json!({"count": count}), &table, json!(results));
    Ok(())
}
