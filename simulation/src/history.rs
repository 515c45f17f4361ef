//! What the clients saw, as they saw it: every acknowledgement, delivery and read, with the
//! simulated time it happened at. The checker judges the node by this alone.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use tidewater_cluster::InvariantId;

/// A message id: (publisher, sequence number).
pub type MessageId = (u32, u32);

/// A Kafka batch acknowledged: (base offset, values, ack time ms).
pub type AckedBatch = (i64, Vec<Vec<u8>>, u64);

/// One record read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its value.
    pub value: Vec<u8>,
}

/// Everything observed in one run.
#[derive(Debug, Default)]
pub struct History {
    /// Trace lines (time ms, event), hashed for the determinism check.
    pub trace: Vec<(u64, String)>,
    /// MQTT messages acknowledged to their publisher: id → (qos, ack time ms).
    pub mqtt_acked: BTreeMap<MessageId, (u8, u64)>,
    /// When each MQTT message was first sent by its publisher (ms).
    pub mqtt_sent_at: BTreeMap<MessageId, u64>,
    /// Deliveries to the persistent subscriber: id → count.
    pub delivered: BTreeMap<MessageId, u32>,
    /// When the node sent the subscriber a new QoS 2 message under a packet id still in flight (ms).
    pub pkid_collisions: Vec<u64>,
    /// When each delivery to the persistent subscriber arrived (ms).
    pub delivered_at: BTreeMap<MessageId, Vec<u64>>,
    /// When the persistent subscriber's SUBACK arrived (ms).
    pub subscribed_at: Option<u64>,
    /// Kafka batches acknowledged: (producer, sequence) → (base offset, values, ack time ms).
    pub kafka_acked: BTreeMap<(i64, i32), AckedBatch>,
    /// Offsets committed and acknowledged, in order: (offset, ack time ms).
    pub commits: Vec<(i64, u64)>,
    /// Committed offsets fetched back: (offset, fetch time ms).
    pub fetched_commits: Vec<(i64, u64)>,
    /// The consumer group member's commits acknowledged: (offset, ack time ms).
    pub group_commits: Vec<(i64, u64)>,
    /// The committed offset the member found at each (re)join: (offset, time ms).
    pub group_fetched: Vec<(i64, u64)>,
    /// Whether the producer finished.
    pub producer_done: bool,
    /// Will rounds: round → (published expected, judged, will deliveries seen).
    pub wills: BTreeMap<u32, WillRound>,
    /// Records read back from the bound stream (MQTT) after the liveness phase.
    pub bound_read: Vec<ReadRecord>,
    /// Records read back from the free stream (Kafka) after the liveness phase.
    pub free_read: Vec<ReadRecord>,
    /// Whether the readback completed.
    pub read_done: bool,
    /// Violations the clients saw directly (acknowledgement order, protocol errors).
    pub client_violations: Vec<(InvariantId, String)>,
    /// Node crashes and power losses: (time ms, power loss).
    pub outages: Vec<(u64, bool)>,
    /// How late a message sent before an outage can still arrive (the largest latency, ms).
    pub max_latency_ms: u64,
    /// Times of successful syncs of the node's store (ms).
    pub syncs: Vec<u64>,
    /// Set by the driver once the faults are over and the node is up.
    pub liveness: bool,
    /// Retained values acknowledged, in order: (value number, ack time ms).
    pub retained_acked: Vec<(u32, u64)>,
    /// The retained value a new subscriber got after the liveness phase (`None`: none came).
    pub retained_read: Option<Option<u32>>,
    /// Whether the will client finished its rounds.
    pub willer_done: bool,
    /// QoS 0 flood messages published, and received by the slow flood subscriber.
    pub flood: (u64, u64),
    /// Whether every publisher, producer and committer finished its work.
    pub writers_done: u32,
}

/// One round of the will client.
#[derive(Debug, Default, Clone)]
pub struct WillRound {
    /// When the connection carrying the will was dropped (ms).
    pub dropped_at: u64,
    /// When the client came back (ms), if it did within the round.
    pub back_at: Option<u64>,
    /// The will's delay (ms).
    pub delay_ms: u64,
    /// Deliveries of this round's will to the subscriber.
    pub seen: u32,
    /// Deliveries without DUP (a QoS 1 redelivery after a lost PUBACK is not a second publication).
    pub seen_fresh: u32,
}

/// The history shared by every client of the run (turmoil runs them on one thread).
pub type Shared = Rc<RefCell<History>>;

impl History {
    /// Adds a trace line.
    pub fn trace(&mut self, now_ms: u64, event: impl Into<String>) {
        self.trace.push((now_ms, event.into()));
    }

    /// The FNV-1a hash of the trace: equal for equal runs.
    pub fn trace_hash(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (time, event) in &self.trace {
            for byte in time.to_le_bytes().iter().chain(event.as_bytes()) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// Whether a write acknowledged at `acked_at` may have been lost by a power loss: it was
    /// acknowledged after the last sync before some power loss that followed it.
    ///
    /// Acknowledgements are timed when the client receives them, which is after the node sent
    /// them: one received up to the network's largest latency after the power loss may have
    /// been sent before it.
    pub fn lost_to_power(&self, acked_at: u64) -> bool {
        self.outages.iter().filter(|(_, power)| *power).any(|(at, _)| {
            let last_sync = self.syncs.iter().filter(|sync| **sync <= *at).max().copied().unwrap_or(0);
            acked_at >= last_sync && acked_at <= *at + self.max_latency_ms
        })
    }

    /// Whether any outage happened at or after `since` ms.
    pub fn outage_since(&self, since: u64) -> bool {
        self.outages.iter().any(|(at, _)| *at >= since)
    }
}

/// Simulated time now, in ms since the start of the run.
pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_millis() as u64)
}
