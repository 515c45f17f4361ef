//! One seed, start to end: build the world, run the fault phase, heal, run the liveness
//! phase, check.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidewater_actors::NodeContext;
use tidewater_actors::memory::MemoryBudget;
use tidewater_actors::seams::{MonotonicClock, NodeRng};
use tidewater_actors::stream::def::{PartitionStrategy, StreamDef, StreamKind};
use tidewater_cluster::InvariantId;
use tidewater_node::cluster::Gossip;
use tidewater_node::config::Config;
use tidewater_node::node::{Node, Parts};
use tidewater_storage::{FsyncPolicy, MemoryStore};

use crate::checker::{Violation, check};
use crate::disk::SimulatedLog;
use crate::history::{History, Shared, now_ms};
use crate::net::TurmoilNet;
use crate::options::{Fsync, Options};
use crate::workload::{self, BOUND_PARTITIONS, BOUND_STREAM, FREE_STREAM, NODE};

/// The wall clock of the simulated world at its start (2026-01-01).
const EPOCH_MS: i64 = 1_767_225_600_000;
/// Faults happen in the first this many ms.
const FAULT_PHASE_MS: u64 = 12_000;
/// A run that has not finished by then is a liveness failure.
const LIMIT_MS: u64 = 180_000;

/// What one seed did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The scenario.
    pub options: Options,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Simulated time the run took (ms).
    pub simulated_ms: u64,
    /// The hash of the run's trace (equal for equal runs).
    pub trace_hash: u64,
    /// Trace lines recorded.
    pub trace_len: usize,
    /// What the run did: MQTT acks, Kafka batch acks, subscriber deliveries, records read back.
    pub counts: [usize; 4],
    /// Known-limit events the checker let pass (see `checker::Verdict`).
    pub tolerated: Vec<String>,
}

/// A fault of the plan.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Kill the node; restart it after `down_ms`, after a power loss if `power`.
    Outage { power: bool, down_ms: u64 },
    /// The next appends fail.
    AppendFaults(u32),
    /// The next syncs fail.
    SyncFaults(u32),
    /// Messages take up to this long for `for_ms`.
    LatencySpike { max_ms: u64, for_ms: u64 },
    /// A partition actor of the bound stream stops (the node is restarted later).
    StopPartition,
}

fn plan(options: &Options) -> BTreeMap<u64, Vec<Fault>> {
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0xfa17);
    let mut plan: BTreeMap<u64, Vec<Fault>> = BTreeMap::new();
    let at = |rng: &mut StdRng| rng.random_range(1_000..FAULT_PHASE_MS);
    for _ in 0..options.crashes {
        let down_ms = rng.random_range(10..1500);
        plan.entry(at(&mut rng)).or_default().push(Fault::Outage { power: false, down_ms });
    }
    for _ in 0..options.power_losses {
        let down_ms = rng.random_range(10..1500);
        plan.entry(at(&mut rng)).or_default().push(Fault::Outage { power: true, down_ms });
    }
    if options.append_faults > 0 {
        plan.entry(at(&mut rng)).or_default().push(Fault::AppendFaults(options.append_faults));
    }
    if options.sync_faults > 0 {
        plan.entry(at(&mut rng)).or_default().push(Fault::SyncFaults(options.sync_faults));
    }
    if options.latency_spikes {
        let spike = Fault::LatencySpike { max_ms: rng.random_range(20..300), for_ms: rng.random_range(200..2000) };
        plan.entry(at(&mut rng)).or_default().push(spike);
    }
    if options.stop_partition {
        let when = at(&mut rng);
        plan.entry(when).or_default().push(Fault::StopPartition);
        plan.entry(when + 1500).or_default().push(Fault::Outage { power: false, down_ms: 100 });
    }
    plan
}

fn node_config(options: &Options) -> Config {
    let mut config = Config::default();
    config.listeners.mqtt = "0.0.0.0:1883".parse().expect("address");
    config.listeners.kafka = "0.0.0.0:9092".parse().expect("address");
    config.listeners.http = "0.0.0.0:8080".parse().expect("address");
    config.kafka.advertised_address = Some(format!("{NODE}:9092"));
    config.mqtt.max_queued_messages = 100_000;
    config.mqtt.test_ack_before_durable = options.ack_before_durable;
    if let Some(budget) = options.memory_budget {
        config.memory.budget_bytes = budget; // below the 16 MiB a config file may set
    }
    config.streams = vec![
        StreamDef {
            name: BOUND_STREAM.into(),
            kind: StreamKind::Bound,
            filter: Some("sim/#".into()),
            partitions: BOUND_PARTITIONS as u32,
            replication_factor: 1,
            retention_ms: None,
            retention_bytes: None,
            partition_strategy: PartitionStrategy::ClientId,
        },
        StreamDef {
            name: FREE_STREAM.into(),
            kind: StreamKind::Free,
            filter: None,
            partitions: 1,
            replication_factor: 1,
            retention_ms: None,
            retention_bytes: None,
            partition_strategy: PartitionStrategy::default(),
        },
    ];
    config
}

/// Runs one seed and checks it.
pub fn run_seed(options: &Options) -> SeedReport {
    tidewater_cluster::invariants::record_violations();
    let _ = tidewater_cluster::invariants::take_recorded(); // nothing of an earlier run
    let history: Shared = Rc::new(RefCell::new(History { max_latency_ms: 2, ..History::default() }));
    let policy = match options.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Interval(ms) => FsyncPolicy::Interval(Duration::from_millis(ms)),
    };
    let store = Arc::new(MemoryStore::with_fsync(policy));
    let log = Arc::new(SimulatedLog::new(store.clone(), options.writer_delay_ms));
    let context: Rc<RefCell<Option<NodeContext>>> = Rc::new(RefCell::new(None));
    let boots = Rc::new(RefCell::new(0u64));

    let mut sim = turmoil::Builder::new()
        .rng_seed(options.seed)
        .simulation_duration(Duration::from_millis(LIMIT_MS + 10_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(2))
        .build();

    {
        let (history, store, log, context, boots, options) =
            (history.clone(), store.clone(), log.clone(), context.clone(), boots.clone(), options.clone());
        sim.host(NODE, move || {
            let (history, store, log, context, boots, options) =
                (history.clone(), store.clone(), log.clone(), context.clone(), boots.clone(), options.clone());
            async move {
                *boots.borrow_mut() += 1;
                let boot = *boots.borrow();
                log.start_writer(options.seed ^ boot.wrapping_mul(0x9e37_79b9));
                // a node that cannot start (an injected sync failure while it loads) is
                // started again, as a service manager would
                let node = loop {
                    let started = Node::start(Parts {
                        config: node_config(&options),
                        state_store: store.clone(),
                        log_store: log.clone(),
                        net: Arc::new(TurmoilNet),
                        clock: Arc::new(MonotonicClock::starting_at(EPOCH_MS + now_ms() as i64)),
                        rng: NodeRng::seeded(options.seed.wrapping_mul(31).wrapping_add(boot)),
                        metrics: None,
                        gossip: Gossip::Detector(NodeRng::seeded(options.seed.wrapping_mul(37).wrapping_add(boot))),
                        tls: None,
                    })
                    .await;
                    match started {
                        Ok(node) => break node,
                        Err(error) => {
                            history.borrow_mut().trace(now_ms(), format!("node start failed: {error}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                *context.borrow_mut() = Some(node.context().clone());
                history.borrow_mut().trace(now_ms(), format!("node up (boot {boot})"));
                match options.fsync {
                    Fsync::Always => std::future::pending::<()>().await,
                    Fsync::Interval(ms) => loop {
                        let mut late = StdRng::seed_from_u64(options.seed ^ boot ^ now_ms());
                        let delay =
                            if options.sync_delays && late.random_bool(0.1) { late.random_range(0..500) } else { 0 };
                        tokio::time::sleep(Duration::from_millis(ms + delay)).await;
                        if store.sync().is_ok() {
                            history.borrow_mut().syncs.push(now_ms());
                        }
                    },
                }
                Ok(())
            }
        });
    }

    let writers = options.publishers + 4;
    sim.client("sub", workload::subscriber(history.clone(), options.seed, options.client_drops, writers));
    for id in 0..options.publishers {
        let qos = if id % 2 == 0 { 1 } else { 2 };
        let client =
            workload::publisher(history.clone(), id, qos, options.messages, options.seed, options.client_drops);
        sim.client(format!("pub{id}"), client);
    }
    sim.client("producer", workload::producer(history.clone(), options.seed, options.kafka_batches));
    sim.client("committer", workload::committer(history.clone(), 20));
    sim.client("member", workload::group_consumer(history.clone()));
    sim.client("willer", workload::will_client(history.clone(), options.seed, 4));
    sim.client("retainer", workload::retainer(history.clone(), options.seed, 12));
    sim.client("reader", workload::reader(history.clone(), writers));
    if options.memory_budget.is_some() {
        sim.client("flooder", workload::flooder(history.clone(), options.seed, FAULT_PHASE_MS));
        sim.client("flood-sub", workload::flood_subscriber(history.clone(), options.seed, FAULT_PHASE_MS));
    }
    let budget = options.memory_budget.unwrap_or(tidewater_actors::memory::DEFAULT_BUDGET);
    let mut memory = MemorySeen::default();

    let mut plan = plan(options);
    let mut restart_at: Option<u64> = None;
    let mut latency_until: Option<u64> = None;
    let mut failure: Option<String> = None;
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                failure = Some(format!("simulation error: {error}"));
                break;
            }
        }
        let now = sim.elapsed().as_millis() as u64;
        if let Some(ctx) = context.borrow().as_ref() {
            memory.sample(now, budget, &ctx.memory);
        }
        if now > LIMIT_MS {
            failure = Some(format!("not finished after {LIMIT_MS} ms of simulated time"));
            break;
        }
        if restart_at.is_some_and(|at| now >= at) {
            restart_at = None;
            sim.bounce(NODE);
        }
        if latency_until.is_some_and(|until| now >= until) {
            latency_until = None;
            sim.set_max_message_latency(Duration::from_millis(2));
        }
        let due: Vec<u64> = plan.range(..=now).map(|(at, _)| *at).collect();
        for at in due {
            for fault in plan.remove(&at).unwrap_or_default() {
                apply(fault, now, &mut sim, &store, &context, &history, &mut restart_at, &mut latency_until);
            }
        }
        if now >= FAULT_PHASE_MS && restart_at.is_none() && latency_until.is_none() && !history.borrow().liveness {
            let mut h = history.borrow_mut();
            h.liveness = true;
            h.trace(now, "liveness phase");
        }
    }
    if options.print_trace
        && let Some(ctx) = context.borrow().as_ref()
    {
        println!("  node at the end: {} subscriptions", ctx.router.subscription_count());
    }
    let simulated_ms = sim.elapsed().as_millis() as u64;
    // every client has gone and every message been taken: nothing may still be counted
    let left = context.borrow().as_ref().map(|ctx| (ctx.memory.queued(), ctx.memory.delivering()));
    drop(sim);
    {
        let (sent, got) = history.borrow().flood;
        let line = format!(
            "memory: queues peaked at {} of {budget} bytes, deliveries at {}; flood {sent} sent, {got} received; counted at the end {left:?}",
            memory.queued_peak, memory.delivering_peak
        );
        history.borrow_mut().trace(simulated_ms, line);
    }
    if let Some((queued, delivering)) = left
        && (queued, delivering) != (0, 0)
        && failure.is_none()
    {
        memory.violations.push(format!(
            "{queued} bytes still counted in session queues and {delivering} in deliveries after every client left"
        ));
    }
    let history = history.borrow();
    if options.print_trace {
        for (at, event) in &history.trace {
            println!("  {at:>7} ms  {event}");
        }
    }
    let verdict = check(&history, options.fsync, writers);
    let mut violations = verdict.violations;
    // what the node's own checks saw (release builds only log and count them)
    for (invariant, detail) in tidewater_cluster::invariants::take_recorded() {
        violations.push(Violation { invariant: Some(invariant), detail: format!("in the node: {detail}") });
    }
    for detail in memory.violations {
        violations.push(Violation { invariant: Some(InvariantId::MemoryMiscounted), detail });
    }
    if let Some(detail) = failure {
        violations.push(Violation { invariant: None, detail });
    }
    SeedReport {
        options: options.clone(),
        violations,
        simulated_ms,
        trace_hash: history.trace_hash(),
        trace_len: history.trace.len(),
        counts: [
            history.mqtt_acked.len(),
            history.kafka_acked.len(),
            history.delivered.len(),
            history.bound_read.len() + history.free_read.len(),
        ],
        tolerated: verdict.tolerated,
    }
}

/// What the node's memory budget counted during the run, sampled after every step.
#[derive(Debug, Default)]
struct MemorySeen {
    queued_peak: usize,
    delivering_peak: usize,
    violations: Vec<String>,
}

impl MemorySeen {
    /// Session queues may hold five eighths of the budget (half for QoS 0), and a restarted
    /// node restores only what fitted before, so more is a miscount.
    fn sample(&mut self, now: u64, budget: usize, memory: &MemoryBudget) {
        let queued = memory.queued();
        if queued > budget / 8 * 5 && self.violations.is_empty() {
            self.violations.push(format!("at {now} ms session queues held {queued} bytes of a {budget}-byte budget"));
        }
        self.queued_peak = self.queued_peak.max(queued);
        self.delivering_peak = self.delivering_peak.max(memory.delivering());
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    fault: Fault,
    now: u64,
    sim: &mut turmoil::Sim<'_>,
    store: &MemoryStore,
    context: &RefCell<Option<NodeContext>>,
    history: &Shared,
    restart_at: &mut Option<u64>,
    latency_until: &mut Option<u64>,
) {
    history.borrow_mut().trace(now, format!("fault {fault:?}"));
    match fault {
        Fault::Outage { power, down_ms } => {
            if restart_at.is_some() {
                return; // already down
            }
            sim.crash(NODE);
            context.borrow_mut().take();
            if power {
                store.power_loss();
            } else {
                store.crash();
            }
            history.borrow_mut().outages.push((now, power));
            *restart_at = Some(now + down_ms);
        }
        Fault::AppendFaults(count) => store.fail_next_appends(count),
        Fault::SyncFaults(count) => store.fail_next_syncs(count),
        Fault::LatencySpike { max_ms, for_ms } => {
            sim.set_max_message_latency(Duration::from_millis(max_ms));
            let mut h = history.borrow_mut();
            h.max_latency_ms = h.max_latency_ms.max(max_ms);
            *latency_until = Some(now + for_ms);
        }
        Fault::StopPartition => {
            if let Some(ctx) = context.borrow().as_ref()
                && let Some(stream) = ctx.streams.get(BOUND_STREAM)
            {
                stream.partitions[0].actor.stop(None);
            }
        }
    }
}
