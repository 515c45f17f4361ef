//! The node's memory budget for message data (`memory.budget_bytes`, 512 MiB by default).
//!
//! Two parts of the node hold messages for as long as their readers are slow, and so would
//! grow without bound under a flood; each gets a share of the budget:
//!
//! - **session queues** (half for QoS 0, five eighths in all): what a session keeps for a
//!   client that is offline or whose connection is congested, bounded per session by
//!   `mqtt.max_queued_messages` and `mqtt.max_queued_bytes` and, across sessions, by these
//!   shares. QoS 0 messages give way first: once the queues hold half the budget a new QoS 0
//!   message is dropped (it never pushes out another), while QoS 1 and 2 messages still fit in
//!   the next eighth, so that a QoS 0 flood to slow subscribers does not cost acknowledged
//!   messages their place. Past five eighths a session applies its `mqtt.queue_overflow`
//!   policy to a QoS 1/2 message as if its own queue were full (drop its oldest message, or
//!   the new one). Both count in `tidewater_mqtt_dropped_messages_total{reason="memory_budget"}`.
//! - **deliveries between actors** (an eighth): messages a publisher's session has routed to
//!   subscribers' sessions that those have not taken from their mailboxes yet. Past it,
//!   publishers are under credit: a publisher's connection reads no further packets until the
//!   deliveries in flight fall under the share again (or a second has passed), so the node is
//!   fed at the rate its sessions take messages, and TCP pushes back on the publishers
//!   (`tidewater_mqtt_publisher_pauses_total`).
//!
//! The rest (a quarter) is headroom for what is bounded per connection rather than in
//! total: connection buffers (an MQTT outbox congests at 256 KB), Kafka Fetch responses (at
//! most `kafka.fetch_max_bytes` each, one per connection at a time), routes and retained
//! messages, and storage caches. `tidewater_memory_bytes{part}` reports both counted parts,
//! `tidewater_memory_budget_bytes` the budget. Bytes are counted as topic plus payload per
//! delivery: a message delivered to four sessions counts four times, an overestimate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The budget's defaults and bounds.
pub const DEFAULT_BUDGET: usize = 512 << 20;
/// How long a paused publisher waits for deliveries to drain before it reads again anyway
/// (a subscriber's session stuck on something slow must not stop every publisher for long).
const PAUSE_AT_MOST: Duration = Duration::from_secs(1);

/// The node's memory budget (see the module's text).
pub struct MemoryBudget {
    budget: usize,
    queued: AtomicUsize,
    delivering: AtomicUsize,
    drained: Notify,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("budget", &self.budget)
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("delivering", &self.delivering.load(Ordering::Relaxed))
            .finish()
    }
}

impl MemoryBudget {
    /// A budget of `budget` bytes.
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Self { budget, queued: AtomicUsize::new(0), delivering: AtomicUsize::new(0), drained: Notify::new() })
    }

    /// A budget nothing reaches (unit tests of the session's state machine).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// The whole budget, bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// What the queues of all sessions may hold when the new message is of `qos`.
    fn queue_share(&self, qos: u8) -> usize {
        if qos == 0 { self.budget / 2 } else { self.budget / 8 * 5 }
    }

    fn delivery_share(&self) -> usize {
        self.budget / 8
    }

    /// Bytes in session queues now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Bytes in deliveries between actors now.
    pub fn delivering(&self) -> usize {
        self.delivering.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more in session queues if they fit in the queues' share for a message
    /// of `qos`.
    pub fn try_queue(&self, bytes: usize, qos: u8) -> bool {
        let share = self.queue_share(qos);
        self.queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                queued.checked_add(bytes).filter(|total| *total <= share)
            })
            .is_ok()
    }

    /// Counts `bytes` more in session queues, whatever the share (a session restored from the
    /// store, a message put back at the head of its queue).
    pub fn force_queue(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` fewer in session queues.
    pub fn unqueue(&self, bytes: usize) {
        let _ =
            self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| Some(queued.saturating_sub(bytes)));
    }

    /// Counts a delivery of `bytes` in flight until the token is dropped (by the session
    /// that took it from its mailbox).
    pub fn deliver(self: &Arc<Self>, bytes: usize) -> DeliveryToken {
        self.delivering.fetch_add(bytes, Ordering::Relaxed);
        DeliveryToken { budget: Arc::clone(self), bytes }
    }

    /// Whether deliveries in flight are past their share: publishers should wait.
    pub fn over_delivery(&self) -> bool {
        self.delivering() > self.delivery_share()
    }

    /// Waits until deliveries in flight are within their share again, or [`PAUSE_AT_MOST`].
    pub async fn delivery_room(&self) {
        let wait = async {
            loop {
                let drained = self.drained.notified();
                if !self.over_delivery() {
                    return;
                }
                drained.await;
            }
        };
        let _ = tokio::time::timeout(PAUSE_AT_MOST, wait).await;
    }
}

/// Deliveries in flight between actors, counted against the budget until dropped.
pub struct DeliveryToken {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for DeliveryToken {
    fn drop(&mut self) {
        let before = self.budget.delivering.fetch_sub(self.bytes, Ordering::Relaxed);
        let share = self.budget.delivery_share();
        if before > share && before - self.bytes <= share {
            self.budget.drained.notify_waiters();
        }
    }
}

impl std::fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryToken({} bytes)", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_0_queues_take_half_the_budget_qos_1_and_2_five_eighths_and_give_it_back() {
        let budget = MemoryBudget::new(1000);
        assert!(budget.try_queue(300, 0));
        assert!(budget.try_queue(200, 0));
        assert!(!budget.try_queue(1, 0), "half of 1000 is 500");
        assert!(budget.try_queue(120, 1), "QoS 1 and 2 get five eighths, 625");
        assert!(!budget.try_queue(6, 2));
        budget.unqueue(320);
        assert!(budget.try_queue(150, 0));
        assert_eq!(budget.queued(), 450);
        budget.force_queue(100);
        assert_eq!(budget.queued(), 550);
        budget.unqueue(10_000);
        assert_eq!(budget.queued(), 0, "never below zero");
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // real time: a unit test of waiting
    async fn a_publisher_waits_until_deliveries_drain_or_a_second_passed() {
        let budget = MemoryBudget::new(800);
        let token = budget.deliver(150);
        assert!(budget.over_delivery(), "an eighth of 800 is 100");
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                budget.delivery_room().await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(token);
        let waited = waiter.await.unwrap();
        assert!(
            waited >= Duration::from_millis(90) && waited < Duration::from_millis(900),
            "woken when taken: {waited:?}"
        );
        assert_eq!(budget.delivering(), 0);
        let _stuck = budget.deliver(500);
        let started = std::time::Instant::now();
        budget.delivery_room().await;
        let waited = started.elapsed();
        assert!(
            waited >= PAUSE_AT_MOST && waited < 2 * PAUSE_AT_MOST,
            "a stuck subscriber pauses publishers a second at most: {waited:?}"
        );
    }
}
