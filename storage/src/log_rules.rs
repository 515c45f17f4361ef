//! The offset rules both log stores share, so that the in-memory twin and the segment files
//! agree on every edge case (reads at the ends, truncation inside a batch, the epoch history).

use crate::{FetchedBatch, PartitionOffsets, StorageError};

/// Checks a read at `offset`: `Ok(false)` when nothing can be returned (offset at the end),
/// `Ok(true)` when batches may follow, and an error outside `[log_start, log_end]`.
pub(crate) fn check_read(offsets: &PartitionOffsets, offset: i64) -> Result<bool, StorageError> {
    if offset < offsets.log_start || offset > offsets.log_end {
        return Err(StorageError::OffsetOutOfRange { offset, log_start: offsets.log_start, log_end: offsets.log_end });
    }
    Ok(offset < offsets.log_end)
}

/// Takes whole batches in offset order: skips those ending before `offset`, stops at the
/// first one reaching `upper_bound`, and stops before `max_bytes` would be exceeded unless
/// nothing has been taken yet.
pub(crate) fn collect_read(
    batches: impl Iterator<Item = Result<FetchedBatch, StorageError>>,
    offset: i64,
    max_bytes: usize,
    upper_bound: i64,
) -> Result<Vec<FetchedBatch>, StorageError> {
    let mut taken = Vec::new();
    let mut total = 0usize;
    for batch in batches {
        let batch = batch?;
        if batch.last_offset < offset {
            continue;
        }
        if batch.last_offset >= upper_bound {
            break;
        }
        if !taken.is_empty() && total + batch.bytes.len() > max_bytes {
            break;
        }
        total += batch.bytes.len();
        taken.push(batch);
    }
    Ok(taken)
}

/// The offsets after removing the batches that end before `offset`, or `None` when the
/// log start is already at or past it.
///
/// The log start moves to `offset` (even inside a batch, as Kafka's DeleteRecords does); an
/// offset past the log end empties the log and restarts it there.
pub(crate) fn truncate_before(offsets: PartitionOffsets, offset: i64) -> Option<PartitionOffsets> {
    if offset <= offsets.log_start {
        return None;
    }
    let log_end = offsets.log_end.max(offset);
    Some(PartitionOffsets { log_start: offset, log_end })
}

/// The offsets after removing every batch whose last offset is at or after `offset`.
///
/// `last_remaining` is the last offset of the last batch kept, `first_removed_base` the base
/// offset of the first batch removed; the log end never ends inside a batch.
pub(crate) fn truncate_after(
    offsets: PartitionOffsets,
    offset: i64,
    last_remaining: Option<i64>,
    first_removed_base: Option<i64>,
) -> PartitionOffsets {
    let log_end = match last_remaining {
        Some(last) => last + 1,
        None => first_removed_base.unwrap_or(offset).min(offset),
    };
    let log_start = offsets.log_start.min(log_end);
    PartitionOffsets { log_start, log_end }
}

/// A partition's leader epochs and the offset each started at (Kafka's leader epoch
/// checkpoint), in increasing order of both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<(i32, i64)>,
}

impl EpochHistory {
    /// A history of `(epoch, start offset)` entries, each [`EpochHistory::assign`]ed in turn.
    pub fn from_entries(entries: impl IntoIterator<Item = (i32, i64)>) -> Self {
        let mut history = Self::default();
        for (epoch, start) in entries {
            history.assign(epoch, start);
        }
        history
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// Records that `epoch` starts at `start`; returns whether anything changed. An epoch at
    /// or below the latest is not new (a leader never appends with an older epoch); entries
    /// starting at or after `start` held no offsets and go, as in Kafka's `assign`.
    pub fn assign(&mut self, epoch: i32, start: i64) -> bool {
        if !self.is_new(epoch) {
            return false;
        }
        self.entries.retain(|&(_, known)| known < start);
        self.entries.push((epoch, start));
        true
    }

    /// Whether `assign(epoch, _)` would add an entry: the epoch is newer than the latest.
    pub fn is_new(&self, epoch: i32) -> bool {
        epoch >= 0 && self.entries.last().is_none_or(|&(latest, _)| epoch > latest)
    }

    /// After the log was cut to end at `log_end`: epochs starting at or past it go.
    pub fn truncate_from_end(&mut self, log_end: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < log_end);
        self.entries.len() != before
    }

    /// After the log start moved to `log_start`: epochs that ended before it go, and the
    /// one it falls in starts there.
    pub fn truncate_from_start(&mut self, log_start: i64) -> bool {
        let inside = self.entries.partition_point(|&(_, start)| start <= log_start);
        if inside == 0 {
            return false;
        }
        let changed = inside > 1 || self.entries[0].1 != log_start;
        self.entries.drain(..inside - 1);
        self.entries[0].1 = log_start;
        changed
    }

    /// Kafka's `endOffsetFor`: see [`crate::LogStore::end_offset_for_epoch`].
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let &(latest, _) = self.entries.last()?;
        if epoch < 0 {
            return None;
        }
        if epoch == latest {
            return Some((latest, log_end));
        }
        let higher = self.entries.iter().find(|&&(known, _)| known > epoch)?;
        let floor = self.entries.iter().rev().find(|&&(known, _)| known <= epoch);
        Some((floor.map_or(epoch, |&(known, _)| known), higher.1))
    }
}

#[cfg(test)]
mod tests {
    use super::EpochHistory;

    #[test]
    fn epoch_history_answers_as_kafka_does() {
        let mut history = EpochHistory::default();
        assert_eq!(history.end_offset_for(0, 10), None, "nothing known");
        assert!(history.assign(1, 0));
        assert!(!history.assign(1, 5), "same epoch");
        assert!(!history.assign(0, 5), "older epoch");
        assert!(history.assign(3, 10));
        assert!(history.assign(4, 20));
        assert_eq!(history.end_offset_for(4, 25), Some((4, 25)), "latest: the log end");
        assert_eq!(history.end_offset_for(3, 25), Some((3, 20)));
        assert_eq!(history.end_offset_for(2, 25), Some((1, 10)), "an unknown epoch: the floor's, ending where 3 began");
        assert_eq!(history.end_offset_for(0, 25), Some((0, 0)), "below every epoch");
        assert_eq!(history.end_offset_for(5, 25), None, "above every epoch");

        assert!(history.truncate_from_end(20));
        assert_eq!(history.entries(), [(1, 0), (3, 10)]);
        assert!(!history.truncate_from_end(11));
        assert!(history.truncate_from_start(12));
        assert_eq!(history.entries(), [(3, 12)]);
        assert!(!history.truncate_from_start(12));
        assert!(!history.truncate_from_start(5), "before every epoch: nothing to do");
        assert_eq!(history.end_offset_for(-1, 25), None, "undefined epoch");
        let kept = EpochHistory::from_entries([(2, 0), (1, 5), (4, 3), (5, 3), (6, 9)]);
        assert_eq!(kept.entries(), [(2, 0), (5, 3), (6, 9)], "epoch 4 held no offset");
    }
}
