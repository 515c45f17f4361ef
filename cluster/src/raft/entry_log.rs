//! The raft log of one replica as raft-rs reads it, with the Kafka offset every entry ends at.
//!
//! raft-rs reads entries through its `Storage` trait and, with asynchronous persistence,
//! needs every entry it handed out in a `Ready` to be readable from storage *before* the
//! write is durable. This log is that readable view; what is durable is the host's business
//! (the replica reports each `Ready` number once its write is synced).
//!
//! Next to each entry the log keeps the Kafka offset the partition's log ends at after it:
//! a data entry (one RecordBatch) moves it to the batch's last offset + 1, a no-op or a
//! conf change leaves it where it was. That is what turns a raft commit index into a high
//! watermark and tells a new leader where to stamp the next batch.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// The Kafka offset range a data entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    /// the batch's base offset
    pub base_offset: i64,
    /// the batch's last offset
    pub last_offset: i64,
}

/// What an appended entry is to the partition's Kafka log.
pub fn batch_span(entry: &Entry) -> Option<BatchSpan> {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
        return None;
    }
    let header = tidewater_storage::BatchHeader::parse(&entry.data).ok()?;
    Some(BatchSpan { base_offset: header.base_offset, last_offset: header.last_offset() })
}

/// A replica's raft log: hard state, conf state, and the entries after the compaction point.
#[derive(Debug, Clone, Default)]
pub struct EntryLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// index and term of the entry just before `entries` (0, 0 for a new log)
    base_index: u64,
    base_term: u64,
    /// the Kafka log end after `base_index`
    base_end_offset: i64,
    entries: VecDeque<Entry>,
    /// the Kafka log end after each entry in `entries`
    end_offsets: VecDeque<i64>,
}

impl EntryLog {
    /// A log whose first voters are `voters`, with its Kafka log starting at `log_start`.
    pub fn new(voters: &[u64], log_start: i64) -> Self {
        let mut conf_state = ConfState::default();
        conf_state.voters = voters.to_vec();
        Self { conf_state, base_end_offset: log_start, ..Self::default() }
    }

    /// The last raft index held.
    pub fn last_index(&self) -> u64 {
        self.base_index + self.entries.len() as u64
    }

    /// The Kafka log end after the entry at `index` (clamped to the entries held).
    pub fn end_offset_at(&self, index: u64) -> i64 {
        if index <= self.base_index {
            return self.base_end_offset;
        }
        let position = (index - self.base_index - 1) as usize;
        self.end_offsets
            .get(position.min(self.end_offsets.len().saturating_sub(1)))
            .copied()
            .unwrap_or(self.base_end_offset)
    }

    /// The Kafka log end after the last entry.
    pub fn end_offset(&self) -> i64 {
        self.end_offset_at(self.last_index())
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize)
    }

    /// The term of the entry at `index`, if known.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    /// The current hard state (term, vote, commit).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The current voters and learners.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records a new hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Records a new membership.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Appends `entries`, first dropping any held entry at or after the first one's index
    /// (raft's conflict rule). Returns the Kafka offset the log was cut back to, if entries
    /// holding Kafka offsets were dropped.
    pub fn append(&mut self, entries: &[Entry]) -> Result<Option<i64>, AppendError> {
        let Some(first) = entries.first() else {
            return Ok(None);
        };
        if first.index <= self.base_index {
            return Err(AppendError::BelowCompaction { index: first.index, base: self.base_index });
        }
        if first.index > self.last_index() + 1 {
            return Err(AppendError::Gap { index: first.index, last: self.last_index() });
        }
        let mut cut = None;
        if first.index <= self.last_index() {
            let keep = (first.index - self.base_index - 1) as usize;
            let end_before = self.end_offset_at(first.index - 1);
            if self.end_offset() != end_before {
                cut = Some(end_before);
            }
            self.entries.truncate(keep);
            self.end_offsets.truncate(keep);
        }
        for entry in entries {
            let end_before = self.end_offset();
            let end = match batch_span(entry) {
                Some(span) if span.base_offset != end_before => {
                    return Err(AppendError::OffsetGap {
                        index: entry.index,
                        base_offset: span.base_offset,
                        log_end: end_before,
                    });
                }
                Some(span) => span.last_offset + 1,
                None => end_before,
            };
            self.entries.push_back(entry.clone());
            self.end_offsets.push_back(end);
        }
        Ok(cut)
    }

    fn snapshot_of_base(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = self.base_index;
        metadata.term = self.base_term;
        metadata.set_conf_state(self.conf_state.clone());
        snapshot
    }
}

/// Why entries could not be appended (each is a bug in the caller, never a client's input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// The entries start at or below the compaction point.
    #[error("entry {index} is at or below the compaction point {base}")]
    BelowCompaction {
        /// first index appended
        index: u64,
        /// compaction point
        base: u64,
    },
    /// The entries do not follow on from the log.
    #[error("entry {index} leaves a gap after {last}")]
    Gap {
        /// first index appended
        index: u64,
        /// last index held
        last: u64,
    },
    /// A batch was stamped with a base offset that is not the log end.
    #[error("entry {index} holds base offset {base_offset}, the log ends at {log_end}")]
    OffsetGap {
        /// the entry's index
        index: u64,
        /// the batch's base offset
        base_offset: i64,
        /// the Kafka log end before it
        log_end: i64,
    },
}

impl raft::Storage for EntryLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.base_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.base_index - 1) as usize;
        let to = (high - self.base_index - 1) as usize;
        let mut entries: Vec<Entry> = self.entries.range(from..to).cloned().collect();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.base_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_at(index).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.base_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(EntryLog::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // nothing is compacted yet, so a follower never needs one past `base_index`
        Ok(self.snapshot_of_base())
    }
}
