//! What one seed draws before the run starts: the knobs that shape it, printed with every
//! failure so that a reader sees the scenario before replaying it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// When the simulated disk makes writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every write is synced before it returns: an acknowledgement survives power loss.
    Always,
    /// Synced every this many ms: an acknowledgement survives a process crash.
    Interval(u64),
}

/// The scenario of one seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// The node's fsync policy.
    pub fsync: Fsync,
    /// Process crashes (kill -9) during the fault phase.
    pub crashes: u32,
    /// Power losses during the fault phase.
    pub power_losses: u32,
    /// Failed stream appends injected.
    pub append_faults: u32,
    /// Failed syncs injected.
    pub sync_faults: u32,
    /// Whether the periodic sync of `interval` is now and then late (a slow disk).
    pub sync_delays: bool,
    /// Whether clients drop their connections now and then.
    pub client_drops: bool,
    /// Whether latency spikes hit the network.
    pub latency_spikes: bool,
    /// Whether a partition actor of the bound stream is stopped once (the node is restarted later).
    pub stop_partition: bool,
    /// MQTT publishers (half QoS 1, half QoS 2).
    pub publishers: u32,
    /// Messages per publisher.
    pub messages: u32,
    /// Kafka produce batches.
    pub kafka_batches: u32,
    /// Test-only: the node acknowledges before what it promises is durable.
    pub ack_before_durable: bool,
    /// Print the trace after the run (replays).
    pub print_trace: bool,
    /// The longest delay of a round of the simulated log writer (0: appends are written as
    /// they are submitted).
    pub writer_delay_ms: u64,
    /// A small `memory.budget_bytes` and a QoS 0 flood to a slow subscriber that fills it
    /// (`None`: the default budget, no flood).
    pub memory_budget: Option<usize>,
}

impl Options {
    /// The scenario drawn from `seed`. Fields are drawn in declaration order of this function:
    /// add new ones at the end.
    pub fn draw(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_0b7e_u64);
        let fsync = if rng.random_bool(0.5) { Fsync::Always } else { Fsync::Interval(rng.random_range(5..=50)) };
        Self {
            seed,
            fsync,
            crashes: rng.random_range(0..=2),
            power_losses: rng.random_range(0..=1),
            append_faults: if rng.random_bool(0.3) { rng.random_range(1..=3) } else { 0 },
            sync_faults: if rng.random_bool(0.2) { rng.random_range(1..=2) } else { 0 },
            client_drops: rng.random_bool(0.5),
            latency_spikes: rng.random_bool(0.3),
            stop_partition: rng.random_bool(0.1),
            publishers: rng.random_range(1..=3) * 2,
            messages: rng.random_range(20..=60),
            kafka_batches: rng.random_range(10..=40),
            ack_before_durable: false,
            print_trace: false,
            // new draws go last, so that the scenarios of committed seeds stay what they were
            sync_delays: rng.random_bool(0.3),
            writer_delay_ms: if rng.random_bool(0.7) { rng.random_range(1..=30) } else { 0 },
            memory_budget: rng.random_bool(0.3).then(|| rng.random_range(64 << 10..=512 << 10)),
        }
    }
}
