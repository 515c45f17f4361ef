//! Rate limits for log lines a client can cause (refused logins, refused requests), so that a
//! flood of bad clients cannot flood the log: each kind logs at most [`PER_SECOND`] lines a
//! second, and the next line it logs says how many it held back.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Lines a kind may log per second.
pub const PER_SECOND: u32 = 10;

/// One kind of line's limit.
#[derive(Debug, Default)]
pub struct LogLimit {
    second: AtomicI64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limit nothing has used yet.
    pub const fn new() -> Self {
        Self { second: AtomicI64::new(i64::MIN), count: AtomicU32::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Whether a line may be logged at `now_ms`; if so, how many were held back before it.
    pub fn admit(&self, now_ms: i64) -> Option<u64> {
        let second = now_ms.div_euclid(1000);
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_lines_a_second_then_the_count_of_those_held_back() {
        let limit = LogLimit::new();
        let admitted: Vec<Option<u64>> = (0..15).map(|i| limit.admit(5_000 + i)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 10);
        assert!(admitted[10..].iter().all(Option::is_none));
        assert_eq!(limit.admit(6_000), Some(5), "the next second's first line counts the five held back");
        assert_eq!(limit.admit(6_001), Some(0));
    }
}
