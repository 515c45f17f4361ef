//! Four production nodes in one turmoil simulation, forming a cluster: gossip through the
//! deterministic detector, the controller group's raft over the data plane (three voters,
//! the fourth a learner the leader adds), each node on its own in-memory store with crash
//! semantics.
//!
//! One seed draws a fault plan of power losses with restarts and network partitions that cut
//! one node off (a minority at a time); then everything heals. The checker holds the
//! controller to raft's promises: at most one leader per term, the metadata committed on one
//! node is what every node applies, and after healing one leader that every node follows,
//! with every node registered at the generation it runs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidewater_actors::seams::{MonotonicClock, NodeRng};
use tidewater_node::cluster::Gossip;
use tidewater_node::config::Config;
use tidewater_node::node::{Node, Parts};
use tidewater_storage::MemoryStore;

use crate::history::now_ms;
use crate::net::TurmoilNet;

/// Nodes in the cluster; the first `VOTERS` vote in the controller, the rest follow as learners.
const NODES: u64 = 4;
const VOTERS: u64 = 3;
const FAULT_PHASE_MS: u64 = 20_000;
const SETTLE_MS: u64 = 15_000;
const EPOCH_MS: i64 = 1_700_000_000_000;

fn host(id: u64) -> String {
    format!("node{id}")
}

/// A node's latest view: (leader, term, registered (id, generation), the generation it runs).
type View = (Option<u64>, u64, Vec<(u64, u64)>, u64);

/// What the nodes showed while the simulation ran.
#[derive(Default)]
struct Seen {
    /// (term -> leaders that claimed it)
    leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// per node, its latest view
    last: BTreeMap<u64, View>,
    trace: Vec<String>,
    /// per node, its replica's last status: (commit index, last index, high watermark)
    status: BTreeMap<u64, (u64, u64, i64)>,
}

/// The outcome of one cluster seed.
#[derive(Debug)]
pub struct ClusterReport {
    /// the seed
    pub seed: u64,
    /// what broke
    pub violations: Vec<String>,
    /// terms that had a leader
    pub terms: usize,
    /// node restarts
    pub restarts: usize,
}

fn node_config(id: u64, ip: IpAddr, seed_ip: IpAddr) -> Config {
    let mut config = Config { node_id: id, ..Config::default() };
    config.listeners.mqtt = "0.0.0.0:1883".parse().expect("address");
    config.listeners.kafka = "0.0.0.0:9092".parse().expect("address");
    config.listeners.http = "0.0.0.0:8080".parse().expect("address");
    config.listeners.rpc = "0.0.0.0:7947".parse().expect("address");
    config.listeners.gossip = "0.0.0.0:7946".parse().expect("address");
    config.cluster.voters = (1..=VOTERS).collect();
    config.cluster.advertise_host = Some(ip.to_string());
    if id != 1 {
        config.cluster.seeds = vec![format!("{seed_ip}:7946")];
    }
    config.kafka.advertised_address = Some(format!("{ip}:9092"));
    config
}

/// Runs one cluster seed and checks it.
pub fn run_cluster_seed(seed: u64) -> ClusterReport {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let stores: Vec<Arc<MemoryStore>> = (0..NODES).map(|_| Arc::new(MemoryStore::new())).collect();
    let boots = Rc::new(RefCell::new(BTreeMap::<u64, u64>::new()));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(FAULT_PHASE_MS + SETTLE_MS + 5_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(3))
        .build();
    for id in 1..=NODES {
        let (seen, store, boots) = (seen.clone(), stores[(id - 1) as usize].clone(), boots.clone());
        sim.host(host(id), move || {
            let (seen, store, boots) = (seen.clone(), store.clone(), boots.clone());
            async move {
                let boot = {
                    let mut boots = boots.borrow_mut();
                    let boot = boots.entry(id).or_insert(0);
                    *boot += 1;
                    *boot
                };
                let ip = turmoil::lookup(host(id));
                let seed_ip = turmoil::lookup(host(1));
                let node_seed = seed ^ (id << 40) ^ boot;
                // the node's generation is its clock's reading at start
                let generation = EPOCH_MS as u64 + now_ms();
                let node = Node::start(Parts {
                    config: node_config(id, ip, seed_ip),
                    state_store: store.clone(),
                    log_store: store.clone(),
                    net: Arc::new(TurmoilNet),
                    clock: Arc::new(MonotonicClock::starting_at(generation as i64)),
                    rng: NodeRng::seeded(node_seed),
                    metrics: None,
                    gossip: Gossip::Detector(NodeRng::seeded(node_seed.wrapping_mul(31))),
                })
                .await;
                let node = match node {
                    Ok(node) => node,
                    Err(error) => {
                        seen.borrow_mut().trace.push(format!("{} node {id}: start failed: {error}", now_ms()));
                        return Ok(());
                    }
                };
                let view = node.controller().expect("a cluster node has a controller");
                let mut leadership = view.leadership.clone();
                let mut metadata = view.metadata.clone();
                loop {
                    {
                        let lead = *leadership.borrow_and_update();
                        let applied = metadata.borrow_and_update().clone();
                        let mut seen = seen.borrow_mut();
                        if let Some(lead) = lead
                            && lead.is_leader
                        {
                            seen.leaders.entry(lead.term).or_default().insert(id);
                        }
                        let registered: Vec<(u64, u64)> =
                            applied.nodes.iter().map(|(&node, record)| (node, record.generation)).collect();
                        let term = lead.map_or(0, |lead| lead.term);
                        seen.last.insert(id, (lead.and_then(|lead| lead.leader), term, registered, generation));
                    }
                    tokio::select! {
                        biased;
                        changed = leadership.changed() => if changed.is_err() { break },
                        changed = metadata.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {
                            match view.status().await {
                                Some(status) => {
                                    seen.borrow_mut().status.insert(id, (status.commit_index, status.last_index, status.high_watermark));
                                }
                                None => {
                                    seen.borrow_mut().trace.push(format!("{} node {id}: the controller replica does not answer", now_ms()));
                                    break;
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
        });
    }

    // turmoil runs while a client does: this one lasts the whole plan
    sim.client("observer", async {
        tokio::time::sleep(Duration::from_millis(FAULT_PHASE_MS + SETTLE_MS)).await;
        Ok(())
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut down: Option<(u64, u64)> = None; // (node, back at)
    let mut cut: Option<(u64, u64)> = None; // (node, healed at)
    let mut next_fault = 1_000 + rng.random_range(0..2_000);
    let mut restarts = 0;
    let mut violations = Vec::new();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                violations.push(format!("simulation error: {error}"));
                break;
            }
        }
        let now = sim.elapsed().as_millis() as u64;
        if let Some((id, at)) = down
            && now >= at
        {
            down = None;
            restarts += 1;
            sim.bounce(host(id));
        }
        if let Some((id, at)) = cut
            && now >= at
        {
            cut = None;
            for other in (1..=NODES).filter(|&other| other != id) {
                sim.repair(host(id), host(other));
            }
        }
        if now >= next_fault && now < FAULT_PHASE_MS && down.is_none() && cut.is_none() {
            let id = rng.random_range(1..=NODES);
            if rng.random_bool(0.5) {
                sim.crash(host(id));
                stores[(id - 1) as usize].power_loss();
                down = Some((id, now + rng.random_range(200..3_000)));
                seen.borrow_mut().trace.push(format!("{now} node {id}: power loss"));
            } else {
                for other in (1..=NODES).filter(|&other| other != id) {
                    sim.partition(host(id), host(other));
                }
                cut = Some((id, now + rng.random_range(500..5_000)));
                seen.borrow_mut().trace.push(format!("{now} node {id}: cut off"));
            }
            next_fault = now + rng.random_range(1_000..4_000);
        }
        if now >= FAULT_PHASE_MS + SETTLE_MS {
            break;
        }
    }
    drop(sim);
    let seen = seen.borrow();
    for (term, leaders) in &seen.leaders {
        if leaders.len() > 1 {
            violations.push(format!("term {term} had leaders {leaders:?}"));
        }
    }
    let views: Vec<_> = seen.last.values().collect();
    let agreed_leader: BTreeSet<_> = views.iter().map(|(leader, term, _, _)| (*leader, *term)).collect();
    if views.len() != NODES as usize
        || agreed_leader.len() != 1
        || agreed_leader.iter().any(|(leader, _)| leader.is_none())
    {
        violations.push(format!("after healing the nodes do not follow one leader: {agreed_leader:?}"));
    }
    let running: Vec<(u64, u64)> = seen.last.iter().map(|(&id, (_, _, _, generation))| (id, *generation)).collect();
    for (&id, (_, _, registered, _)) in &seen.last {
        if *registered != running {
            violations.push(format!("node {id} has registered {registered:?}, the cluster runs {running:?}"));
        }
    }
    let registered: BTreeSet<_> = seen.last.values().map(|(_, _, registered, _)| registered.clone()).collect();
    if registered.len() != 1 {
        violations.push(format!("the nodes applied different metadata: {registered:?}"));
    }
    if !violations.is_empty() {
        violations.push(format!("replicas (commit, last, high watermark): {:?}", seen.status));
        violations.push(format!("views (leader, term, ..): {:?}", seen.last));
        violations.extend(seen.trace.iter().cloned());
    }
    ClusterReport { seed, violations, terms: seen.leaders.len(), restarts }
}
