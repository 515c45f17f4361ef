//! The invariant catalogue: every property Tidewater promises, named once.
//!
//! Production code checks the ones it can see locally with [`check_invariant!`] (a debug
//! assertion, an error log and a metric in release builds); the simulation's checker reports
//! violations of the same catalogue from the clients' point of view (what was acknowledged,
//! what was read back). One list, so that a violation means the same thing in both places.

/// One promised property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InvariantId {
    /// A record whose produce or publish was acknowledged is missing from its stream.
    AckedRecordLost,
    /// A record read back differs from the one acknowledged at that offset.
    AckedRecordChanged,
    /// A consumer saw an offset that is not strictly greater than the previous one, or a gap
    /// below the high watermark.
    OffsetsNotIncreasing,
    /// A consumer group's committed offset went backwards without a commit asking for it.
    GroupOffsetBackwards,
    /// A QoS 1/2 message acknowledged to its publisher never reached a persistent session
    /// that was subscribed before it was published.
    SessionMessageLost,
    /// A QoS 2 message reached a session more than once.
    Qos2Duplicated,
    /// Acknowledgements of one connection's PUBLISH packets were sent out of packet order.
    AckOutOfOrder,
    /// A will was not published although its client did not come back within the delay.
    WillLost,
    /// A will was published more than once, or although its client came back in time.
    WillUnexpected,
    /// The high watermark of a partition moved backwards.
    HighWatermarkBackwards,
    /// A durable acknowledgement was released for an append that had not completed.
    AckBeforeDurable,
    /// A new subscriber got an older retained message than the last one acknowledged.
    RetainedLost,
    /// The message data counted against the memory budget is not what the node holds: the
    /// session queues past their share, or bytes still counted once every message has gone.
    MemoryMiscounted,
}

impl InvariantId {
    /// Every invariant, in catalogue order.
    pub const ALL: [InvariantId; 13] = [
        InvariantId::AckedRecordLost,
        InvariantId::AckedRecordChanged,
        InvariantId::OffsetsNotIncreasing,
        InvariantId::GroupOffsetBackwards,
        InvariantId::SessionMessageLost,
        InvariantId::Qos2Duplicated,
        InvariantId::AckOutOfOrder,
        InvariantId::WillLost,
        InvariantId::WillUnexpected,
        InvariantId::HighWatermarkBackwards,
        InvariantId::AckBeforeDurable,
        InvariantId::RetainedLost,
        InvariantId::MemoryMiscounted,
    ];

    /// The invariant's stable name (metric label, checker report).
    pub fn name(self) -> &'static str {
        match self {
            InvariantId::AckedRecordLost => "acked_record_lost",
            InvariantId::AckedRecordChanged => "acked_record_changed",
            InvariantId::OffsetsNotIncreasing => "offsets_not_increasing",
            InvariantId::GroupOffsetBackwards => "group_offset_backwards",
            InvariantId::SessionMessageLost => "session_message_lost",
            InvariantId::Qos2Duplicated => "qos2_duplicated",
            InvariantId::AckOutOfOrder => "ack_out_of_order",
            InvariantId::WillLost => "will_lost",
            InvariantId::WillUnexpected => "will_unexpected",
            InvariantId::HighWatermarkBackwards => "high_watermark_backwards",
            InvariantId::AckBeforeDurable => "ack_before_durable",
            InvariantId::RetainedLost => "retained_lost",
            InvariantId::MemoryMiscounted => "memory_miscounted",
        }
    }
}

impl std::fmt::Display for InvariantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The metric counting invariant violations seen by production code, by `invariant`.
pub const INVARIANT_VIOLATIONS: &str = "tidewater_invariant_violations_total";

/// Whether [`violated`] also keeps what it saw for [`take_recorded`] (the simulation turns it on).
static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// What [`violated`] saw while recording.
static RECORDED: parking_lot::Mutex<Vec<(InvariantId, String)>> = parking_lot::Mutex::new(Vec::new());

/// Makes every later violation seen by production code also kept for [`take_recorded`], so
/// that a harness running release builds (the simulation) puts them in its verdict.
pub fn record_violations() {
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The violations seen by production code since the last call, while recording.
pub fn take_recorded() -> Vec<(InvariantId, String)> {
    std::mem::take(&mut *RECORDED.lock())
}

/// Records a violation seen by production code: an error log and a metric, and a panic in
/// debug builds (where tests and the simulation run with assertions).
#[cold]
pub fn violated(id: InvariantId, detail: std::fmt::Arguments<'_>) {
    metrics::counter!(INVARIANT_VIOLATIONS, "invariant" => id.name()).increment(1);
    tracing::error!(invariant = id.name(), "invariant violated: {detail}");
    if RECORDING.load(std::sync::atomic::Ordering::Relaxed) {
        RECORDED.lock().push((id, detail.to_string()));
    }
    debug_assert!(false, "invariant {id} violated: {detail}");
}

/// Checks an invariant from the catalogue: `check_invariant!(InvariantId::X, condition, "detail {}", value)`.
#[macro_export]
macro_rules! check_invariant {
    ($id:expr, $condition:expr, $($detail:tt)+) => {
        if !$condition {
            $crate::invariants::violated($id, format_args!($($detail)+));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = InvariantId::ALL.iter().map(|id| id.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), InvariantId::ALL.len());
    }

    #[test]
    fn a_violation_is_kept_for_a_harness_that_records() {
        record_violations();
        // debug builds also panic, after keeping it
        let _ = std::panic::catch_unwind(|| {
            check_invariant!(InvariantId::HighWatermarkBackwards, 2 <= 1, "hw {} -> {}", 2, 1);
        });
        let recorded = take_recorded();
        assert!(recorded.contains(&(InvariantId::HighWatermarkBackwards, "hw 2 -> 1".to_owned())), "{recorded:?}");
    }

    #[test]
    fn a_held_invariant_is_silent() {
        check_invariant!(InvariantId::HighWatermarkBackwards, 1 <= 2, "hw {} -> {}", 2, 1);
    }
}
