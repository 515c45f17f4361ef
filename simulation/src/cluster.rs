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
//!
//! A Kafka client creates a replicated stream through whichever node leads the controller and
//! produces idempotent `acks=all` batches into it through the faults, following the leader
//! (`NOT_LEADER_OR_FOLLOWER`, lost connections). The stream keeps only a few kilobytes
//! (`retention.bytes`), so every replica compacts its raft log as it goes, and a node that was
//! down or cut off comes back behind the leader's compaction point and restarts its log from
//! the leader's snapshot. After healing it reads the partition back: every acknowledged batch
//! at or after the log start is there at the offset it was acknowledged with, the last one
//! always, no record is there twice, offsets have no gap, and the replicas hold identical
//! bytes from the latest log start to the high watermark.
//!
//! An MQTT device publishes QoS 1 into a bound replicated stream, created over HTTP on
//! whichever node it asks first (any node forwards the command to the controller's leader).
//! It moves between nodes (on a lost connection, and every few dozen acknowledgements), so
//! its publishes reach the partition's leader forwarded from followers and from the node that
//! holds no replica. After healing: every PUBACKed message is in the stream, nothing is there
//! that was not sent, offsets have no gap, and the replicas agree below the high watermark.
//!
//! A consumer group commits ever larger offsets through the faults, at the node FindCoordinator
//! names (the leader of the group's partition of the replicated offsets stream), and reads
//! them back now and then: a fetch never answers less than a commit acknowledged before it was
//! sent (committed offsets never go backwards, across coordinator fail-overs), and after
//! healing the group holds at least the last acknowledged commit.

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
use tidewater_storage::LogStore;
use tidewater_tests::clients::kafka::{self, KafkaConn};
use tidewater_tests::clients::mqtt_wire as wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

use crate::workload::Mqtt;

/// The replicated stream the Kafka client writes.
const TOPIC: &str = "replicated";
/// What [`TOPIC`] keeps once the client altered it: a few dozen batches.
const TOPIC_RETENTION_BYTES: &str = "3000";
/// What [`TOPIC`] is created keeping.
const TOPIC_CREATED_RETENTION_BYTES: &str = "12000";
/// After this many acknowledged batches the client alters [`TOPIC`] through whichever node
/// it talks to: its retention to [`TOPIC_RETENTION_BYTES`], and a second partition.
const ALTER_AFTER: u32 = 10;
/// After the alteration, the client sets this user's SCRAM-SHA-256 credential
/// ([`SIM_ITERATIONS`]) and a binding denying [`SIM_DENIED`] reading [`SIM_ACL_TOPIC`]: admin
/// changes acknowledged once must be in force on every node after healing.
const SIM_USER: &str = "sim-user";
const SIM_ITERATIONS: i32 = 4096;
const SIM_ACL_TOPIC: &str = "sim-guarded";
const SIM_DENIED: &str = "User:sim-nobody";
/// The bound replicated stream the MQTT device's publishes land in.
const MQTT_STREAM: &str = "mqtt-replicated";
/// The topic the device publishes on.
const MQTT_TOPIC: &str = "devices/d1";

/// The consumer group's committed offsets are kept for this group and partition.
const GROUP: &str = "sim-group";

/// What the group's committer was told.
#[derive(Default)]
struct Committer {
    /// commits acknowledged: (when, offset), offsets rising
    acked: Vec<(u64, i64)>,
    /// fetches answered: (when sent, offset)
    fetched: Vec<(u64, i64)>,
    /// error codes answered to commits
    errors: BTreeMap<i16, usize>,
    /// the offset the group held after healing
    last: Option<i64>,
}

/// What the MQTT device was told.
#[derive(Default)]
struct Device {
    /// whether the bound stream exists (created, or found created)
    created: bool,
    /// messages published (sequence numbers below this were sent)
    sent: u32,
    /// sequence numbers PUBACKed, and the node that acknowledged each
    acked: BTreeMap<u32, u64>,
    /// when each sequence number was first sent, and when it was PUBACKed (ms)
    sent_at: BTreeMap<u32, u64>,
    acked_at: BTreeMap<u32, u64>,
    /// the stream read back after healing: (offset, value)
    read: Option<Vec<(i64, Vec<u8>)>>,
}

/// What the MQTT watcher saw: one epoch per connection.
#[derive(Default)]
struct Watcher {
    epochs: Vec<WatchEpoch>,
}

/// One connection of the watcher, subscribed to the device's topic on one node.
struct WatchEpoch {
    node: u64,
    /// when its SUBACK arrived (ms)
    subacked_at: u64,
    /// the end of the epoch's checked span: what was PUBACKed to the device by then must
    /// have arrived by the end of the drain that follows
    stop_at: u64,
    received: BTreeSet<u32>,
    /// whether the connection lasted through the drain
    whole: bool,
    /// the probe published on another node right after the SUBACK and PUBACKed there:
    /// (node, sent, acked), and whether it arrived
    probe: Option<(u64, u64, u64)>,
    probe_received: bool,
}

/// What the roaming persistent session saw: one round per reconnect to another node.
#[derive(Default)]
struct Roamer {
    rounds: Vec<RoamRound>,
}

/// The roamer left node `from`, a probe was PUBACKed on node `via` while it was away, and it
/// came back on node `to`.
struct RoamRound {
    from: u64,
    via: u64,
    to: u64,
    /// the round's span (ms)
    started: u64,
    ended: u64,
    session_present: bool,
    probe_received: bool,
}

/// The client id of the roaming persistent session.
const ROAMER: &str = "roamer";

/// What the Kafka client was told.
#[derive(Default)]
struct Kafka {
    /// acknowledged batches: (base offset, values)
    acked: Vec<(i64, Vec<Vec<u8>>)>,
    /// the partition read back after healing: (offset, value)
    read: Option<Vec<(i64, Vec<u8>)>>,
    /// error codes answered to produces, and how often
    errors: BTreeMap<i16, usize>,
    /// what became of the create
    created: Option<i16>,
    /// whether the alteration (retention, a second partition) was acknowledged
    altered: bool,
    /// whether the user's credential and the ACL binding were acknowledged
    secured: bool,
    /// after healing, whether every node serves the second partition with the altered retention
    altered_everywhere: Option<Result<(), String>>,
}

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
    /// per node, its replica of the replicated stream's partition, last seen
    stream_status: BTreeMap<u64, String>,
    /// per (node, generation), snapshots its replica of the stream installed
    snapshots: BTreeMap<(u64, u64), u64>,
    /// per (node, generation), times its controller replica hibernated
    sleeps: BTreeMap<(u64, u64), u64>,
    /// the most replica set changes any node applied
    moves: u64,
    /// per node, whether it held the roamer's session when last looked at, and when (ms)
    roamer_owners: BTreeMap<u64, (bool, u64)>,
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
    /// batches the replicated stream acknowledged
    pub acked: usize,
    /// MQTT messages the bound replicated stream acknowledged, by the node that did
    pub mqtt_acked: BTreeMap<u64, usize>,
    /// where the replicated stream started after healing (retention moved it)
    pub log_start: i64,
    /// leaders' snapshots the stream's replicas installed
    pub snapshots: u64,
    /// times a controller replica hibernated (its group idle), and was woken after
    pub sleeps: u64,
    /// replica set changes (placement after deaths and returns)
    pub moves: u64,
    /// MQTT messages the watcher had to receive from another node, and did
    pub forwarded: usize,
    /// times the roaming persistent session moved to another node with its queued probe
    pub roamed: usize,
    /// the nodes holding the roamer's session after healing, when more than one does: a
    /// known gap, tolerated and counted (see `roamer_owners`)
    pub two_owners: Vec<u64>,
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
    config.kafka.retention_check_ms = 250;
    // a node down longer than this has its replicas re-created elsewhere, and takes them back
    // when it returns: replica sets move through the faults
    config.cluster.replace_dead_after_ms = 2_500;
    config
}

/// Panics anywhere in the process while a seed runs (a replica actor that panics is stopped
/// by ractor and the run goes on: the checker counts it as a violation).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs one cluster seed and checks it.
pub fn run_cluster_seed(seed: u64) -> ClusterReport {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default(info);
        }));
    });
    let panics_before = PANICS.load(std::sync::atomic::Ordering::SeqCst);
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
                    tls: None,
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
                        let moves = applied.streams.values().flat_map(|s| &s.partitions).map(|p| p.replica_epoch).sum();
                        seen.moves = seen.moves.max(moves);
                        seen.last.insert(id, (lead.and_then(|lead| lead.leader), term, registered, generation));
                    }
                    tokio::select! {
                        biased;
                        changed = leadership.changed() => if changed.is_err() { break },
                        changed = metadata.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {
                            let raft = node.context().streams.get(TOPIC).and_then(|stream| {
                                stream.partitions.first().and_then(|p| p.replica.as_ref()).and_then(|r| r.raft.clone())
                            });
                            if let Some(raft) = raft
                                && let Ok(status) =
                                    ractor::call_t!(raft, tidewater_cluster::raft::group::RaftReplicaMsg::Status, 500)
                            {
                                let mut seen = seen.borrow_mut();
                                seen.snapshots.insert((id, generation), status.snapshots_installed);
                                seen.stream_status.insert(id, format!("{status:?}"));
                            }
                            let owns = node.context().sessions.get(ROAMER).await.is_some();
                            seen.borrow_mut().roamer_owners.insert(id, (owns, now_ms()));
                            match view.status().await {
                                Some(status) => {
                                    let mut seen = seen.borrow_mut();
                                    seen.sleeps.insert((id, generation), status.sleeps);
                                    seen.status.insert(id, (status.commit_index, status.last_index, status.high_watermark));
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
    let kafka = Rc::new(RefCell::new(Kafka::default()));
    sim.client("kafka", kafka_client(kafka.clone(), seed));
    let device = Rc::new(RefCell::new(Device::default()));
    sim.client("device", mqtt_device(device.clone(), seed));
    let watcher = Rc::new(RefCell::new(Watcher::default()));
    sim.client("watcher", mqtt_watcher(watcher.clone(), seed));
    let roamer = Rc::new(RefCell::new(Roamer::default()));
    sim.client("roamer", mqtt_roamer(roamer.clone(), seed));
    let committer = Rc::new(RefCell::new(Committer::default()));
    sim.client("committer", group_committer(committer.clone(), kafka.clone(), seed));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut down: Option<(u64, u64)> = None; // (node, back at)
    let mut cut: Option<(u64, u64)> = None; // (node, healed at)
    let mut next_fault = 1_000 + rng.random_range(0..2_000);
    let mut restarts = 0;
    let mut violations = Vec::new();
    // (node, from, to): when a node was down or cut off, and a margin after for it to be back
    let mut faults: Vec<(u64, u64, u64)> = Vec::new();
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
                let back = now + rng.random_range(200..3_000);
                down = Some((id, back));
                faults.push((id, now, back + 5_000));
                seen.borrow_mut().trace.push(format!("{now} node {id}: power loss"));
            } else {
                for other in (1..=NODES).filter(|&other| other != id) {
                    sim.partition(host(id), host(other));
                }
                let healed = now + rng.random_range(500..5_000);
                cut = Some((id, healed));
                faults.push((id, now, healed + 3_000));
                seen.borrow_mut().trace.push(format!("{now} node {id}: cut off"));
            }
            next_fault = now + rng.random_range(1_000..4_000);
        }
        if now >= FAULT_PHASE_MS + SETTLE_MS {
            break;
        }
    }
    drop(sim);
    let panics = PANICS.load(std::sync::atomic::Ordering::SeqCst) - panics_before;
    if panics > 0 {
        violations.push(format!("{panics} panics in the nodes (see the output above)"));
    }
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
    check_stream(&kafka.borrow(), &stores, &mut violations);
    check_device(&device.borrow(), &stores, &mut violations);
    let forwarded = check_watcher(&watcher.borrow(), &device.borrow(), &faults, &mut violations);
    let roamed = check_roamer(&roamer.borrow(), &faults, &mut violations);
    let two_owners = roamer_owners(&seen.roamer_owners, FAULT_PHASE_MS + SETTLE_MS - 2_000);
    check_committer(&committer.borrow(), &mut violations);
    if !violations.is_empty() {
        violations.push(format!("replicas (commit, last, high watermark): {:?}", seen.status));
        violations.push(format!("stream replicas: {:#?}", seen.stream_status));
        violations.push(format!("views (leader, term, ..): {:?}", seen.last));
        violations.extend(seen.trace.iter().cloned());
    }
    let acked = kafka.borrow().acked.len();
    let log_start = kafka.borrow().read.as_ref().and_then(|read| read.first()).map_or(0, |(offset, _)| *offset);
    let snapshots = seen.snapshots.values().sum();
    let sleeps = seen.sleeps.values().sum();
    let mut mqtt_acked = BTreeMap::new();
    for node in device.borrow().acked.values() {
        *mqtt_acked.entry(*node).or_default() += 1;
    }
    let moves = seen.moves;
    ClusterReport {
        seed,
        violations,
        terms: seen.leaders.len(),
        restarts,
        acked,
        mqtt_acked,
        log_start,
        snapshots,
        sleeps,
        moves,
        forwarded,
        roamed,
        two_owners,
    }
}

async fn connect(id: u64) -> Option<KafkaConn<TcpStream>> {
    let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((host(id), 9092))).await.ok()?.ok()?;
    Some(KafkaConn::new(stream))
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Creates the replicated stream, produces into it through the faults, and reads it back.
async fn kafka_client(kafka: Rc<RefCell<Kafka>>, seed: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b61_666b);
    // the stream is created on whichever node leads the controller (NOT_CONTROLLER elsewhere)
    sleep_ms(2_000).await;
    let mut target = 1;
    while kafka.borrow().created.is_none() && now_ms() < FAULT_PHASE_MS {
        if let Some(mut conn) = connect(target).await
            && let Ok(Ok(code)) = tokio::time::timeout(
                Duration::from_secs(12),
                conn.create_topics_with(TOPIC, 1, &[("retention.bytes", TOPIC_CREATED_RETENTION_BYTES)]),
            )
            .await
            && (code == 0 || code == 36)
        {
            kafka.borrow_mut().created = Some(code);
            break;
        }
        target = target % NODES + 1;
        sleep_ms(100).await;
    }
    let mut conn: Option<KafkaConn<TcpStream>> = None;
    let mut producer: Option<(i64, i16)> = None;
    let mut sequence = 0i32;
    let mut batch = 0u32;
    while kafka.borrow().created.is_some() && now_ms() < FAULT_PHASE_MS + 2_000 {
        let Some(c) = conn.as_mut() else {
            conn = connect(target).await;
            if conn.is_none() {
                target = target % NODES + 1;
                sleep_ms(50).await;
            }
            continue;
        };
        let Some((producer_id, epoch)) = producer else {
            match tokio::time::timeout(Duration::from_secs(2), c.init_producer_id()).await {
                Ok(Ok(id)) => {
                    producer = Some(id);
                    sequence = 0;
                }
                _ => conn = None,
            }
            continue;
        };
        if kafka.borrow().altered && !kafka.borrow().secured {
            // a retry after a lost answer sets the same credential and binding again
            let upsert = tokio::time::timeout(
                Duration::from_secs(12),
                c.upsert_scram(SIM_USER, 1, SIM_ITERATIONS, b"sim-salt", &[7; 32]),
            )
            .await;
            let bound = match upsert {
                // READ denied
                Ok(Ok(0)) => {
                    tokio::time::timeout(Duration::from_secs(12), c.create_topic_acl(SIM_ACL_TOPIC, SIM_DENIED, 3, 2))
                        .await
                }
                other => other,
            };
            match bound {
                Ok(Ok(0)) => kafka.borrow_mut().secured = true,
                other => admin_refused(&kafka, 2000, other, &mut target, &mut conn).await,
            }
            continue;
        }
        if !kafka.borrow().altered && batch >= ALTER_AFTER {
            // through any node: it forwards to the controller's leader; a lost answer is
            // retried (the configs are set again, the partitions found there already)
            let set = tokio::time::timeout(
                Duration::from_secs(12),
                c.set_topic_configs(TOPIC, &[("retention.bytes", TOPIC_RETENTION_BYTES)]),
            )
            .await;
            let grown = match set {
                Ok(Ok(0)) => tokio::time::timeout(Duration::from_secs(12), c.create_partitions(TOPIC, 2)).await,
                other => other,
            };
            match grown {
                Ok(Ok(0 | 37)) => kafka.borrow_mut().altered = true,
                other => admin_refused(&kafka, 1000, other, &mut target, &mut conn).await,
            }
            continue;
        }
        let records = 1 + (batch % 3) as usize;
        let values: Vec<Vec<u8>> = (0..records).map(|i| format!("b{batch}:{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let bytes = kafka::idempotent_batch(producer_id, epoch, sequence, &refs, 1_000);
        match tokio::time::timeout(Duration::from_secs(3), c.produce(TOPIC, 0, bytes, -1, 2_000)).await {
            Ok(Ok((0, base_offset))) => {
                kafka.borrow_mut().acked.push((base_offset, values));
                sequence += records as i32;
                batch += 1;
            }
            Ok(Ok((code, _))) => {
                *kafka.borrow_mut().errors.entry(code).or_default() += 1;
                if [45, 47, 59].contains(&code) {
                    producer = None;
                }
                // not the leader, no leader yet, or the entry lost to an election: go round
                conn = None;
                target = target % NODES + 1;
                sleep_ms(50).await;
            }
            _ => {
                conn = None;
                target = target % NODES + 1;
            }
        }
        sleep_ms(rng.random_range(0..150)).await;
    }
    kafka.borrow_mut().read = read_back(TOPIC).await;
    if kafka.borrow().altered {
        kafka.borrow_mut().altered_everywhere = Some(altered_everywhere().await);
    }
    Ok(())
}

/// An administration request not acknowledged: an error code is counted (apart from produce
/// errors, at `base` + code) and the next node tried; a lost connection is opened again.
async fn admin_refused<T, E>(
    kafka: &Rc<RefCell<Kafka>>,
    base: i16,
    outcome: Result<Result<i16, E>, T>,
    target: &mut u64,
    conn: &mut Option<KafkaConn<TcpStream>>,
) {
    if let Ok(Ok(code)) = outcome {
        *kafka.borrow_mut().errors.entry(base + code).or_default() += 1;
        sleep_ms(100).await;
        *target = *target % NODES + 1;
    }
    *conn = None;
}

/// After healing: every node describes [`TOPIC`] with the altered retention and lists its
/// second partition, and describes the user's credential and the binding the client set.
async fn altered_everywhere() -> Result<(), String> {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{DescribeConfigsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;
    for id in 1..=NODES {
        let mut conn = connect(id).await.ok_or(format!("node {id}: no connection"))?;
        let topic = MetadataRequestTopic::default().with_name(Some(kafka::topic_name(TOPIC)));
        let request = MetadataRequest::default().with_topics(Some(vec![topic]));
        let metadata = conn.call(12, &request).await.map_err(|error| format!("node {id}: {error:#}"))?;
        let partitions = metadata.topics.first().map_or(0, |topic| topic.partitions.len());
        if partitions != 2 {
            return Err(format!("node {id}: metadata lists {partitions} partitions"));
        }
        // healed: every replica is in sync again, as every node tells it
        for partition in metadata.topics.iter().flat_map(|topic| &topic.partitions) {
            let mut replicas: Vec<i32> = partition.replica_nodes.iter().map(|broker| broker.0).collect();
            let mut in_sync: Vec<i32> = partition.isr_nodes.iter().map(|broker| broker.0).collect();
            replicas.sort_unstable();
            in_sync.sort_unstable();
            if replicas != in_sync {
                return Err(format!(
                    "node {id}: partition {} has replicas {replicas:?} but ISR {in_sync:?}",
                    partition.partition_index
                ));
            }
        }
        let resource = DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str(TOPIC))
            .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.bytes")]));
        let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
        let response = conn.call(4, &request).await.map_err(|error| format!("node {id}: {error:#}"))?;
        let value = response.results.first().and_then(|r| r.configs.first()).and_then(|c| c.value.clone());
        if value.as_deref() != Some(TOPIC_RETENTION_BYTES) {
            return Err(format!("node {id}: retention.bytes is {value:?}"));
        }
        let user = conn.describe_scram(SIM_USER).await.map_err(|error| format!("node {id}: {error:#}"))?;
        if user != (0, vec![(1, SIM_ITERATIONS)]) {
            return Err(format!("node {id}: {SIM_USER}'s acknowledged credential is described as {user:?}"));
        }
        let bindings =
            conn.describe_topic_acls(SIM_ACL_TOPIC).await.map_err(|error| format!("node {id}: {error:#}"))?;
        if bindings != (0, vec![(SIM_DENIED.to_string(), 3, 2)]) {
            return Err(format!("node {id}: the acknowledged binding on {SIM_ACL_TOPIC} is described as {bindings:?}"));
        }
    }
    Ok(())
}

/// After healing: partition 0 of `stream`, (offset, value), read from whichever node leads it.
async fn read_back(stream: &str) -> Option<Vec<(i64, Vec<u8>)>> {
    sleep_ms((FAULT_PHASE_MS + SETTLE_MS - 4_000).saturating_sub(now_ms())).await;
    for attempt in 0..12 {
        let id = (attempt % NODES) + 1;
        let Some(mut conn) = connect(id).await else { continue };
        if let Some(records) = crate::workload::read_all(&mut conn, stream, 1).await {
            return Some(records.into_iter().map(|r| (r.offset, r.value)).collect());
        }
        sleep_ms(100).await;
    }
    None
}

/// Holds the replicated stream to its promises (see the module's text).
fn check_stream(kafka: &Kafka, stores: &[Arc<MemoryStore>], violations: &mut Vec<String>) {
    if kafka.created.is_none() {
        violations.push("the replicated stream was never created".into());
        return;
    }
    if kafka.acked.is_empty() {
        violations.push(format!("no produce to the replicated stream was acknowledged: errors {:?}", kafka.errors));
    }
    match &kafka.altered_everywhere {
        _ if !kafka.altered => {
            violations.push(format!("{TOPIC} was never altered (retention, a partition): errors {:?}", kafka.errors))
        }
        _ if !kafka.secured => violations
            .push(format!("the credential and the ACL binding were never acknowledged: errors {:?}", kafka.errors)),
        Some(Err(error)) => violations.push(format!("{TOPIC} altered, but not everywhere: {error}")),
        _ => {}
    }
    if kafka.errors.contains_key(&45) {
        violations.push(format!("the leader forgot a producer's acknowledged sequence: errors {:?}", kafka.errors));
    }
    let Some(read) = &kafka.read else {
        violations.push("the replicated stream could not be read after healing".into());
        return;
    };
    let at: BTreeMap<i64, &Vec<u8>> = read.iter().map(|(offset, value)| (*offset, value)).collect();
    check_gapless(TOPIC, read, violations);
    let distinct: BTreeSet<&Vec<u8>> = read.iter().map(|(_, value)| value).collect();
    if distinct.len() != read.len() {
        violations.push(format!("{} records are there twice", read.len() - distinct.len()));
    }
    // retention removed what lies below the log start, but never the last batch
    let log_start = read.first().map_or(0, |(offset, _)| *offset);
    if let Some((last, _)) = kafka.acked.last()
        && log_start > *last
    {
        violations.push(format!("{TOPIC}: the log starts at {log_start}, after the last acknowledged batch at {last}"));
    }
    for (base_offset, values) in kafka.acked.iter().filter(|(base_offset, _)| *base_offset >= log_start) {
        for (i, value) in values.iter().enumerate() {
            let offset = base_offset + i as i64;
            if at.get(&offset) != Some(&value) {
                violations.push(format!(
                    "acknowledged {:?} at {offset}, read {:?}",
                    String::from_utf8_lossy(value),
                    at.get(&offset).map(|v| String::from_utf8_lossy(v))
                ));
            }
        }
    }
    check_replicas(TOPIC, log_start + read.len() as i64, stores, violations);
}

/// Offsets from the first one read without a gap.
fn check_gapless(stream: &str, read: &[(i64, Vec<u8>)], violations: &mut Vec<String>) {
    let start = read.first().map_or(0, |(offset, _)| *offset);
    for (expected, (offset, _)) in (start..).zip(read) {
        if *offset != expected {
            violations.push(format!("{stream}: offsets have a gap: {expected} holds offset {offset}"));
            break;
        }
    }
}

/// The replicas of `stream`'s partition 0 hold the same bytes from the latest log start (each
/// applies retention to its own log) to the high watermark, and at least two reached it.
fn check_replicas(stream: &str, high_watermark: i64, stores: &[Arc<MemoryStore>], violations: &mut Vec<String>) {
    let id = tidewater_storage::PartitionId { stream: stream.into(), partition: 0 };
    let mut held = BTreeMap::new();
    let reached: Vec<(usize, i64)> = stores
        .iter()
        .enumerate()
        .filter_map(|(node, store)| store.offsets(&id).ok().map(|offsets| (node, offsets)))
        // not a replica, or behind (caught up or not, it may not differ)
        .filter(|(_, offsets)| offsets.log_end >= high_watermark)
        .map(|(node, offsets)| (node, offsets.log_start))
        .collect();
    let from = reached.iter().map(|(_, log_start)| *log_start).max().unwrap_or(0);
    for (node, store) in stores.iter().enumerate() {
        if !reached.iter().any(|(reached, _)| *reached == node) {
            continue;
        }
        let Ok(batches) = store.read(&id, from, usize::MAX, high_watermark) else { continue };
        // a batch that straddles `from` on one replica and not another is not compared
        let batches = batches.iter().filter(|batch| batch.base_offset >= from);
        let bytes: Vec<u8> = batches.flat_map(|batch| batch.bytes.iter().copied()).collect();
        held.insert(node + 1, bytes);
    }
    if held.len() < 2 {
        let ends: Vec<_> = stores.iter().map(|store| store.offsets(&id).map(|offsets| offsets.log_end).ok()).collect();
        violations.push(format!(
            "{stream}: only {} replicas reached the high watermark {high_watermark}; log ends {ends:?}",
            held.len()
        ));
    }
    let distinct: BTreeSet<&Vec<u8>> = held.values().collect();
    if distinct.len() > 1 {
        let sizes: BTreeMap<_, _> = held.iter().map(|(node, bytes)| (*node, bytes.len())).collect();
        violations
            .push(format!("{stream}: replicas differ below the high watermark {high_watermark}: sizes {sizes:?}"));
    }
}

/// `method path` with a JSON body on node `id`'s HTTP listener: the status code.
async fn http_request(id: u64, method: &str, path: &str, body: &str) -> Option<u16> {
    let connect = TcpStream::connect((host(id), 8080));
    let mut stream = tokio::time::timeout(Duration::from_secs(1), connect).await.ok()?.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        host(id),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(12), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    String::from_utf8_lossy(&response).split_whitespace().nth(1)?.parse().ok()
}

/// The device: creates the bound stream, publishes QoS 1 through the faults while moving
/// between nodes, and reads the stream back after healing.
async fn mqtt_device(device: Rc<RefCell<Device>>, seed: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d71_7474);
    sleep_ms(2_500).await;
    let definition = format!(
        r#"{{"name":"{MQTT_STREAM}","kind":"bound","filter":"devices/#","partitions":1,"replication_factor":3}}"#
    );
    // the last node first: it is not a voter of the controller, so it forwards the command
    let mut target = NODES;
    while now_ms() < FAULT_PHASE_MS {
        if let Some(201 | 409) = http_request(target, "POST", "/api/v1/streams", &definition).await {
            device.borrow_mut().created = true;
            break;
        }
        target = target % NODES + 1;
        sleep_ms(200).await;
    }
    // unacknowledged messages, resent on the next connection: (packet id -> sequence)
    let mut in_flight: BTreeMap<u16, u32> = BTreeMap::new();
    let mut next_seq = 0u32;
    while device.borrow().created && now_ms() < FAULT_PHASE_MS + 2_000 {
        // a node captures publishes from when it knows the stream (a restarted node serves
        // MQTT once it caught up; one cut off when the stream was made learns of it after)
        let path = format!("/api/v1/streams/{MQTT_STREAM}");
        if http_request(target, "GET", &path, "").await != Some(200) {
            target = target % NODES + 1;
            sleep_ms(100).await;
            continue;
        }
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, "device-1", 30, true, None);
        let Some((mut mqtt, _)) = Mqtt::open_at(&host(target), &connect).await else {
            target = target % NODES + 1;
            sleep_ms(100).await;
            continue;
        };
        let mut out = Vec::new();
        for (pkid, seq) in &in_flight {
            wire::publish_payload(&mut out, MQTT_TOPIC, 1, *pkid, true, format!("c{seq}").as_bytes());
        }
        let mut acked_here = 0;
        let mut send_at = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= send_at && in_flight.len() < 4 && now_ms() < FAULT_PHASE_MS {
                let pkid = (next_seq % 60_000 + 1) as u16;
                wire::publish_payload(&mut out, MQTT_TOPIC, 1, pkid, false, format!("c{next_seq}").as_bytes());
                in_flight.insert(pkid, next_seq);
                device.borrow_mut().sent_at.insert(next_seq, now_ms());
                next_seq += 1;
                device.borrow_mut().sent = next_seq;
                send_at = now + Duration::from_millis(rng.random_range(0..150));
            }
            if !out.is_empty() && mqtt.send(&out).await.is_err() {
                break;
            }
            out.clear();
            let wait = if in_flight.is_empty() {
                send_at.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1))
            } else {
                Duration::from_millis(3_000)
            };
            match mqtt.next(wait).await {
                Ok(Some((wire::PUBACK, _, body))) => {
                    if let Some(seq) = in_flight.remove(&wire::packet_id(&body)) {
                        device.borrow_mut().acked.insert(seq, target);
                        device.borrow_mut().acked_at.insert(seq, now_ms());
                        acked_here += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) if in_flight.is_empty() => {
                    if now_ms() >= FAULT_PHASE_MS {
                        break;
                    }
                }
                // an acknowledgement withheld, or the node gone: go to another node
                Ok(None) | Err(_) => break,
            }
            // move on now and then, so every node's path to the leader is taken
            if acked_here >= 30 && in_flight.is_empty() {
                break;
            }
        }
        if in_flight.is_empty() && now_ms() >= FAULT_PHASE_MS {
            break;
        }
        target = target % NODES + 1;
    }
    device.borrow_mut().read = read_back(MQTT_STREAM).await;
    Ok(())
}

/// Holds the bound replicated stream to its promises (see the module's text).
fn check_device(device: &Device, stores: &[Arc<MemoryStore>], violations: &mut Vec<String>) {
    if !device.created {
        violations.push("the bound replicated stream was never created".into());
        return;
    }
    if device.acked.is_empty() {
        violations.push(format!("no MQTT publish into the replicated stream was acknowledged ({} sent)", device.sent));
    }
    let Some(read) = &device.read else {
        violations.push("the bound replicated stream could not be read after healing".into());
        return;
    };
    check_gapless(MQTT_STREAM, read, violations);
    let mut present = BTreeSet::new();
    for (offset, value) in read {
        let seq = std::str::from_utf8(value).ok().and_then(|text| text.strip_prefix('c')?.parse::<u32>().ok());
        match seq {
            Some(seq) if seq < device.sent => {
                present.insert(seq);
            }
            _ => violations
                .push(format!("{MQTT_STREAM}: offset {offset} holds {:?}, never sent", String::from_utf8_lossy(value))),
        }
    }
    let lost: Vec<_> = device.acked.iter().filter(|(seq, _)| !present.contains(seq)).collect();
    if !lost.is_empty() {
        violations.push(format!("{MQTT_STREAM}: PUBACKed messages missing (sequence, acknowledging node): {lost:?}"));
    }
    check_replicas(MQTT_STREAM, read.len() as i64, stores, violations);
}

/// The watcher: a clean-session subscriber to the device's topic that moves from node to
/// node, each connection an epoch of a few seconds and a drain.
async fn mqtt_watcher(watcher: Rc<RefCell<Watcher>>, seed: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7761_7463);
    sleep_ms(3_000).await;
    let mut target = rng.random_range(1..=NODES);
    let mut round = 0u32;
    while now_ms() < FAULT_PHASE_MS + 1_000 {
        round += 1;
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, &format!("watcher-{round}"), 30, true, None);
        let Some((mut mqtt, _)) = Mqtt::open_at(&host(target), &connect).await else {
            target = target % NODES + 1;
            sleep_ms(100).await;
            continue;
        };
        // a connection to another node, to publish a probe on right after the SUBACK
        let probe_node = target % NODES + 1;
        let mut probe_connect = Vec::new();
        wire::connect_with(&mut probe_connect, &format!("prober-{round}"), 30, true, None);
        let mut prober = Mqtt::open_at(&host(probe_node), &probe_connect).await.map(|(mqtt, _)| mqtt);
        let probe_topic = format!("probes/{round}");
        let mut out = Vec::new();
        wire::subscribe(&mut out, 1, MQTT_TOPIC, 1);
        wire::subscribe(&mut out, 2, &probe_topic, 1);
        if mqtt.send(&out).await.is_err() {
            continue;
        }
        let mut received = BTreeSet::new();
        let mut probe_received = false;
        let mut subacks = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while subacks < 2 {
            match mqtt.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
                Ok(Some((wire::SUBACK, _, _))) => subacks += 1,
                // a delivery may come before the SUBACK: it counts
                Ok(Some((wire::PUBLISH, flags, body))) => {
                    watched(&mut mqtt, flags, &body, &mut received, &mut probe_received).await
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if subacks < 2 {
            target = target % NODES + 1;
            continue;
        }
        let subacked_at = now_ms();
        // "anything published anywhere after the SUBACK is delivered"
        let mut probe = None;
        if let Some(prober) = prober.as_mut() {
            let mut publish = Vec::new();
            wire::publish_payload(&mut publish, &probe_topic, 1, 1, false, b"probe");
            let sent_at = now_ms();
            if prober.send(&publish).await.is_ok() {
                let until = tokio::time::Instant::now() + Duration::from_secs(3);
                loop {
                    match prober.next(until.saturating_duration_since(tokio::time::Instant::now())).await {
                        Ok(Some((wire::PUBACK, _, _))) => {
                            probe = Some((probe_node, sent_at, now_ms()));
                            break;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let stop_at = subacked_at + rng.random_range(1_000..4_000);
        let drain_until = stop_at + 2_000;
        let mut whole = true;
        while now_ms() < drain_until {
            match mqtt.next(Duration::from_millis(drain_until.saturating_sub(now_ms()))).await {
                Ok(Some((wire::PUBLISH, flags, body))) => {
                    watched(&mut mqtt, flags, &body, &mut received, &mut probe_received).await
                }
                Ok(Some(_)) | Ok(None) => {}
                Err(_) => {
                    whole = false;
                    break;
                }
            }
        }
        if let Some(prober) = prober.as_mut() {
            let mut bye = Vec::new();
            wire::disconnect(&mut bye);
            let _ = prober.send(&bye).await;
        }
        let mut bye = Vec::new();
        wire::disconnect(&mut bye);
        let _ = mqtt.send(&bye).await;
        watcher.borrow_mut().epochs.push(WatchEpoch {
            node: target,
            subacked_at,
            stop_at,
            received,
            whole,
            probe,
            probe_received,
        });
        target = rng.random_range(1..=NODES);
    }
    Ok(())
}

/// Records a delivery to the watcher and acknowledges it.
async fn watched(mqtt: &mut Mqtt, flags: u8, body: &[u8], received: &mut BTreeSet<u32>, probe: &mut bool) {
    let Some(publish) = wire::parse_publish_full(flags, body) else { return };
    *probe |= publish.topic.starts_with("probes/");
    if let Some(seq) = std::str::from_utf8(publish.payload).ok().and_then(|text| text.strip_prefix('c')?.parse().ok()) {
        received.insert(seq);
    }
    if publish.qos == 1 {
        let mut ack = Vec::new();
        wire::ack(&mut ack, wire::PUBACK, publish.packet_id);
        let _ = mqtt.send(&ack).await;
    }
}

/// Holds routing between nodes to its promise: a message sent after a watcher's SUBACK and
/// PUBACKed to the device by the epoch's end reached the watcher, wherever each was
/// connected, unless the watcher's node or the acknowledging node was down or cut off
/// between the send and the PUBACK (a node cut off is gone to the others, and its clean
/// sessions' messages with it). Returns how many messages were checked.
fn check_watcher(
    watcher: &Watcher,
    device: &Device,
    faults: &[(u64, u64, u64)],
    violations: &mut Vec<String>,
) -> usize {
    let mut checked = 0;
    let faulty =
        |node: u64, from: u64, to: u64| faults.iter().any(|&(n, start, end)| n == node && start <= to && from <= end);
    for epoch in watcher.epochs.iter().filter(|epoch| epoch.whole) {
        if let Some((node, sent_at, acked_at)) = epoch.probe
            && !faulty(epoch.node, sent_at, acked_at)
            && !faulty(node, sent_at, acked_at)
        {
            checked += 1;
            if !epoch.probe_received {
                violations.push(format!(
                    "watcher on node {} (SUBACK at {} ms) missed the probe published on node {node} right after it (sent {sent_at} ms, PUBACKed {acked_at} ms)",
                    epoch.node, epoch.subacked_at
                ));
            }
        }
        let mut missing = Vec::new();
        for (&seq, &acked_at) in &device.acked_at {
            let Some(&sent_at) = device.sent_at.get(&seq) else { continue };
            let acking = device.acked.get(&seq).copied().unwrap_or(0);
            if sent_at <= epoch.subacked_at
                || acked_at > epoch.stop_at
                || faulty(epoch.node, sent_at, acked_at)
                || faulty(acking, sent_at, acked_at)
            {
                continue;
            }
            checked += usize::from(acking != epoch.node);
            if !epoch.received.contains(&seq) {
                missing.push((seq, acking, sent_at, acked_at));
            }
        }
        if !missing.is_empty() {
            violations.push(format!(
                "watcher on node {} (SUBACK at {} ms, checked to {} ms) missed PUBACKed messages (sequence, acknowledging node, sent, acked): {missing:?}",
                epoch.node, epoch.subacked_at, epoch.stop_at
            ));
        }
    }
    checked
}

/// The roamer: a persistent session (3.1.1, clean session 0) that subscribes once, leaves
/// its node, has a probe published for it on another node while it is away, and comes back
/// on a third node, which must take the session over with the probe queued in it.
async fn mqtt_roamer(roamer: Rc<RefCell<Roamer>>, seed: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x726f_616d);
    sleep_ms(3_500).await;
    let mut at = rng.random_range(1..=NODES);
    let mut round = 0u32;
    while now_ms() < FAULT_PHASE_MS + 1_000 {
        let started = now_ms();
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, ROAMER, 30, false, None);
        let Some((mut mqtt, _)) = Mqtt::open_at(&host(at), &connect).await else {
            at = at % NODES + 1;
            sleep_ms(200).await;
            continue;
        };
        let mut probe_received = false;
        // subscribed at every visit: a round checks the move of what was queued, not what an
        // earlier round's faults left of the subscription
        {
            let mut out = Vec::new();
            wire::subscribe(&mut out, 1, "roam/#", 1);
            if mqtt.send(&out).await.is_err() {
                continue;
            }
            match mqtt.next(Duration::from_secs(5)).await {
                Ok(Some((wire::SUBACK, _, _))) => {}
                _ => continue,
            }
        }
        // leave, have a probe published elsewhere, come back on a third node
        let mut bye = Vec::new();
        wire::disconnect(&mut bye);
        let _ = mqtt.send(&bye).await;
        drop(mqtt);
        sleep_ms(50).await;
        round += 1;
        let via = at % NODES + 1;
        let to = via % NODES + 1;
        let probe = format!("roam/{round}");
        let mut probe_connect = Vec::new();
        wire::connect_with(&mut probe_connect, &format!("roam-prober-{round}"), 30, true, None);
        let mut probed = false;
        if let Some((mut prober, _)) = Mqtt::open_at(&host(via), &probe_connect).await {
            let mut publish = Vec::new();
            wire::publish_payload(&mut publish, &probe, 1, 1, false, b"probe");
            if prober.send(&publish).await.is_ok() {
                probed = matches!(prober.next(Duration::from_secs(3)).await, Ok(Some((wire::PUBACK, _, _))));
            }
        }
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, ROAMER, 30, false, None);
        let Some((mut mqtt, session_present)) = Mqtt::open_at(&host(to), &connect).await else {
            at = to;
            continue;
        };
        let until = now_ms() + 3_000;
        while now_ms() < until && !probe_received {
            match mqtt.next(Duration::from_millis(until.saturating_sub(now_ms()))).await {
                Ok(Some((wire::PUBLISH, flags, body))) => {
                    if let Some(publish) = wire::parse_publish_full(flags, &body) {
                        probe_received |= publish.topic == probe;
                        if publish.qos == 1 {
                            let mut ack = Vec::new();
                            wire::ack(&mut ack, wire::PUBACK, publish.packet_id);
                            let _ = mqtt.send(&ack).await;
                        }
                    }
                }
                Ok(Some(_)) | Ok(None) => {}
                Err(_) => break,
            }
        }
        let mut bye = Vec::new();
        wire::disconnect(&mut bye);
        let _ = mqtt.send(&bye).await;
        if probed {
            roamer.borrow_mut().rounds.push(RoamRound {
                from: at,
                via,
                to,
                started,
                ended: now_ms(),
                session_present,
                probe_received,
            });
        }
        at = to;
    }
    Ok(())
}

/// Holds session take-over to its promises: a round that no fault touched (on the node the
/// roamer left, the one the probe went through, the one it came back to) finds its session
/// present with the probe in it, and after healing at most one node holds the session.
fn check_roamer(roamer: &Roamer, faults: &[(u64, u64, u64)], violations: &mut Vec<String>) -> usize {
    let faulty =
        |node: u64, from: u64, to: u64| faults.iter().any(|&(n, start, end)| n == node && start <= to && from <= end);
    let mut checked = 0;
    for round in &roamer.rounds {
        if [round.from, round.via, round.to].iter().any(|node| faulty(*node, round.started, round.ended)) {
            continue;
        }
        checked += 1;
        if !round.session_present || !round.probe_received {
            violations.push(format!(
                "the roamer left node {} and came back on node {} ({}..{} ms): session present {}, the probe PUBACKed on node {} received {}",
                round.from, round.to, round.started, round.ended, round.session_present, round.via, round.probe_received
            ));
        }
    }
    checked
}

/// The nodes that hold the roamer's session after healing (looked at since `since`), when
/// more than one does. Tolerated for now: a take-over that cannot reach the node holding the
/// session (cut off, or down and not yet declared dead) starts the session afresh, and the
/// nodes compare their sessions when they hear from each other again (the later attach
/// keeps it); a node that restores its copy from its store after a power loss, or a
/// comparison that misses, leaves two. Sessions recorded in a replicated stream (issue 12,
/// point 4) fence the old owner for good.
fn roamer_owners(owners: &BTreeMap<u64, (bool, u64)>, since: u64) -> Vec<u64> {
    let holding: Vec<u64> =
        owners.iter().filter(|(_, (owns, at))| *owns && *at >= since).map(|(node, _)| *node).collect();
    if holding.len() > 1 { holding } else { Vec::new() }
}

/// Commits rising offsets for [`GROUP`] at its coordinator, fetches them back now and then,
/// and reads the group's offset after healing.
async fn group_committer(committer: Rc<RefCell<Committer>>, kafka: Rc<RefCell<Kafka>>, seed: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x636f_6d6d);
    // commits name the replicated stream, which exists once the Kafka client created it
    while kafka.borrow().created.is_none() && now_ms() < FAULT_PHASE_MS {
        sleep_ms(200).await;
    }
    let mut target = 1;
    let mut conn: Option<KafkaConn<TcpStream>> = None;
    let mut next = 1i64;
    while now_ms() < FAULT_PHASE_MS {
        let Some(c) = conn.as_mut() else {
            conn = connect(target).await;
            if conn.is_none() {
                target = target % NODES + 1;
                sleep_ms(100).await;
            }
            continue;
        };
        let committed = tokio::time::timeout(Duration::from_secs(12), c.offset_commit(GROUP, TOPIC, 0, next)).await;
        match committed {
            Ok(Ok(0)) => {
                committer.borrow_mut().acked.push((now_ms(), next));
                next += 1 + rng.random_range(0..3);
            }
            Ok(Ok(code)) => {
                *committer.borrow_mut().errors.entry(code).or_default() += 1;
                // not the coordinator (or none yet): ask this node who is, else go round
                let found = tokio::time::timeout(Duration::from_secs(2), c.find_coordinator(GROUP)).await;
                match found {
                    Ok(Ok((0, node))) if node as u64 != target && (1..=NODES).contains(&(node as u64)) => {
                        target = node as u64;
                    }
                    _ => target = target % NODES + 1,
                }
                conn = None;
                sleep_ms(100).await;
                continue;
            }
            _ => {
                conn = None;
                target = target % NODES + 1;
                continue;
            }
        }
        if rng.random_bool(0.3) {
            let sent = now_ms();
            if let Ok(Ok(offset)) = tokio::time::timeout(Duration::from_secs(3), c.offset_fetch(GROUP, TOPIC, 0)).await
            {
                committer.borrow_mut().fetched.push((sent, offset));
            }
        }
        sleep_ms(rng.random_range(20..200)).await;
    }
    sleep_ms((FAULT_PHASE_MS + SETTLE_MS - 4_000).saturating_sub(now_ms())).await;
    for attempt in 0..24 {
        let Some(mut c) = connect(target).await else {
            target = target % NODES + 1;
            continue;
        };
        let sent = now_ms();
        match tokio::time::timeout(Duration::from_secs(3), c.offset_fetch(GROUP, TOPIC, 0)).await {
            Ok(Ok(offset)) => {
                let mut committer = committer.borrow_mut();
                committer.fetched.push((sent, offset));
                committer.last = Some(offset);
                break;
            }
            _ => {
                if let Ok(Ok((0, node))) = tokio::time::timeout(Duration::from_secs(2), c.find_coordinator(GROUP)).await
                    && (1..=NODES).contains(&(node as u64))
                {
                    target = node as u64;
                } else {
                    target = (attempt % NODES) + 1;
                }
                sleep_ms(100).await;
            }
        }
    }
    Ok(())
}

/// Holds the group's committed offsets to their promise (see the module's text).
fn check_committer(committer: &Committer, violations: &mut Vec<String>) {
    if committer.acked.is_empty() {
        violations.push(format!("no offset commit was acknowledged: errors {:?}", committer.errors));
        return;
    }
    for (sent, offset) in &committer.fetched {
        let before = committer.acked.iter().filter(|(at, _)| at < sent).map(|(_, offset)| *offset).max();
        if let Some(acknowledged) = before
            && *offset < acknowledged
        {
            violations.push(format!(
                "{GROUP}: a fetch sent at {sent} ms answered {offset}, below the commit of {acknowledged} acknowledged before"
            ));
        }
    }
    let last = committer.acked.last().map(|(_, offset)| *offset).unwrap_or_default();
    match committer.last {
        Some(held) if held >= last => {}
        held => violations.push(format!("{GROUP}: after healing the group holds {held:?}, {last} was acknowledged")),
    }
}
