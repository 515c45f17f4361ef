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
//!
//! Retention compacts the log: the entries up to a point, all applied and all with Kafka
//! offsets below the new log start, are dropped ([`EntryLog::compact`]), and raft's snapshot
//! of that point holds no data but where the Kafka log now starts. A follower too far behind
//! gets that snapshot: its log restarts empty at that offset ([`EntryLog::install`]), as
//! Kafka's followers take the leader's log start, and the entries after it follow.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use tidewater_storage::{LogStore, PartitionId};

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

/// Where a data entry's bytes are: in memory, or only in the partition's log on disk.
#[derive(Debug, Clone)]
enum Slot {
    /// a RecordBatch entry; `data` is dropped from memory once applied (the log store has it)
    Data { base_offset: i64, last_offset: i64, data: Option<Bytes> },
    /// a no-op or a conf change, always in memory (they are few and small)
    Other(Entry),
}

/// One entry's place in the log.
#[derive(Debug, Clone)]
struct Held {
    term: u64,
    /// the Kafka log end after it
    end_offset: i64,
    slot: Slot,
}

/// What a compaction dropped, for the journal to record: the new compaction point.
#[derive(Debug, Clone, PartialEq)]
pub struct Compaction {
    /// the last index dropped (the snapshot's index)
    pub index: u64,
    /// its term
    pub term: u64,
    /// the Kafka offset the log now starts at
    pub end_offset: i64,
    /// the membership at `index`
    pub conf_state: ConfState,
    /// (term, base offset) of the entry after `index`, if it is a batch (a run starts there)
    pub next_batch: Option<(u64, i64)>,
}

/// The snapshot data format: a version byte, then the Kafka log start (i64, big-endian).
const SNAPSHOT_VERSION: u8 = 1;

/// The snapshot data of a compaction point whose Kafka log starts at `end_offset`.
pub fn snapshot_data(end_offset: i64) -> Bytes {
    let mut data = Vec::with_capacity(9);
    data.push(SNAPSHOT_VERSION);
    data.extend_from_slice(&end_offset.to_be_bytes());
    data.into()
}

/// The Kafka log start a snapshot's data names, or `None` for data not of this format.
pub fn snapshot_offset(data: &[u8]) -> Option<i64> {
    match data {
        [SNAPSHOT_VERSION, rest @ ..] => Some(i64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// A replica's raft log: hard state, conf state, and the entries after the compaction point.
///
/// Every entry's term and offsets stay in memory; a data entry's bytes only until it is
/// applied ([`EntryLog::evict_applied`]); after that a read fetches them from the partition's
/// log store, where they are byte for byte the same.
#[derive(Clone, Default)]
pub struct EntryLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// index and term of the entry just before `entries` (0, 0 for a new log)
    base_index: u64,
    base_term: u64,
    /// the Kafka log end after `base_index`
    base_end_offset: i64,
    /// the membership at `base_index` (what a snapshot of it carries)
    base_conf_state: ConfState,
    entries: VecDeque<Held>,
    /// indices of the membership changes held
    conf_changes: std::collections::BTreeSet<u64>,
    /// where evicted batches are read back from
    source: Option<(Arc<dyn LogStore>, PartitionId)>,
}

impl std::fmt::Debug for EntryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryLog")
            .field("hard_state", &self.hard_state)
            .field("base_index", &self.base_index)
            .field("last_index", &self.last_index())
            .finish()
    }
}

impl EntryLog {
    /// A log whose first voters are `voters`, with its Kafka log starting at `log_start`.
    pub fn new(voters: &[u64], log_start: i64) -> Self {
        let conf_state = ConfState { voters: voters.to_vec(), ..ConfState::default() };
        Self { base_conf_state: conf_state.clone(), conf_state, base_end_offset: log_start, ..Self::default() }
    }

    /// A log rebuilt from disk: state, the compaction point (index, term, Kafka offset,
    /// membership), and no entries yet.
    pub(crate) fn rebuilt(
        hard_state: HardState,
        conf_state: ConfState,
        base: (u64, u64, i64, ConfState),
        source: Option<(Arc<dyn LogStore>, PartitionId)>,
    ) -> Self {
        let (base_index, base_term, base_end_offset, base_conf_state) = base;
        Self {
            hard_state,
            conf_state,
            base_index,
            base_term,
            base_end_offset,
            base_conf_state,
            entries: VecDeque::new(),
            conf_changes: Default::default(),
            source,
        }
    }

    /// Reads evicted batches back from `source`.
    pub fn with_source(mut self, store: Arc<dyn LogStore>, id: PartitionId) -> Self {
        self.source = Some((store, id));
        self
    }

    /// The last raft index held.
    pub fn last_index(&self) -> u64 {
        self.base_index + self.entries.len() as u64
    }

    /// The compaction point: the index before the first entry held.
    pub fn base_index(&self) -> u64 {
        self.base_index
    }

    fn held(&self, index: u64) -> Option<&Held> {
        if index <= self.base_index {
            return None;
        }
        self.entries.get((index - self.base_index - 1) as usize)
    }

    /// The Kafka offset the log starts at (the end of the compaction point).
    pub fn start_offset(&self) -> i64 {
        self.base_end_offset
    }

    /// The Kafka log end after the entry at `index` (clamped to the entries held).
    pub fn end_offset_at(&self, index: u64) -> i64 {
        let index = index.min(self.last_index());
        self.held(index).map_or(self.base_end_offset, |held| held.end_offset)
    }

    /// The Kafka log end after the last entry.
    pub fn end_offset(&self) -> i64 {
        self.end_offset_at(self.last_index())
    }

    /// The Kafka offsets of the data entry at `index`, if it is one.
    pub fn span_at(&self, index: u64) -> Option<BatchSpan> {
        match self.held(index)?.slot {
            Slot::Data { base_offset, last_offset, .. } => Some(BatchSpan { base_offset, last_offset }),
            Slot::Other(_) => None,
        }
    }

    /// The entry at `index`, if held (its batch read back from the log store if evicted).
    pub fn entry(&self, index: u64) -> Option<Entry> {
        self.read(index, index + 1).ok()?.pop()
    }

    /// The term of the entry at `index`, if known.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.held(index).map(|held| held.term)
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

    /// Drops from memory the bytes of data entries up to `index` (they are applied, so the
    /// log store holds them durably); a log without a store keeps them.
    pub fn evict_applied(&mut self, index: u64) {
        if self.source.is_none() {
            return;
        }
        let through = index.min(self.last_index()).saturating_sub(self.base_index) as usize;
        for held in self.entries.range_mut(..through).rev() {
            match &mut held.slot {
                Slot::Data { data, .. } if data.is_some() => *data = None,
                Slot::Data { .. } => break, // everything before is evicted already
                Slot::Other(_) => {}
            }
        }
    }

    /// Bytes of batches held in memory (for metrics and tests).
    pub fn cached_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|held| match &held.slot {
                Slot::Data { data: Some(data), .. } => data.len(),
                _ => 0,
            })
            .sum()
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
            self.conf_changes.split_off(&first.index);
        }
        for entry in entries {
            let end_before = self.end_offset();
            let held = match batch_span(entry) {
                Some(span) if span.base_offset != end_before => {
                    return Err(AppendError::OffsetGap {
                        index: entry.index,
                        base_offset: span.base_offset,
                        log_end: end_before,
                    });
                }
                Some(span) => Held {
                    term: entry.term,
                    end_offset: span.last_offset + 1,
                    slot: Slot::Data {
                        base_offset: span.base_offset,
                        last_offset: span.last_offset,
                        data: Some(entry.data.clone()),
                    },
                },
                None => {
                    if entry.get_entry_type() != EntryType::EntryNormal {
                        self.conf_changes.insert(entry.index);
                    }
                    Held { term: entry.term, end_offset: end_before, slot: Slot::Other(entry.clone()) }
                }
            };
            self.entries.push_back(held);
        }
        Ok(cut)
    }

    /// Where retention that keeps the Kafka log from `keep_from` may compact to: the last index
    /// at or below `applied` whose entries all end at or before `keep_from`, provided no
    /// membership change lies after it up to `applied` (the snapshot of the point must carry
    /// the membership as it was there, and only the applied one is known). `None` when
    /// nothing can go yet.
    pub fn compaction_point(&self, keep_from: i64, applied: u64) -> Option<u64> {
        let applied = applied.min(self.last_index());
        if applied <= self.base_index {
            return None;
        }
        let held = (applied - self.base_index) as usize;
        let dropped = self.entries.partition_point(|held| held.end_offset <= keep_from).min(held);
        if dropped == 0 {
            return None;
        }
        let index = self.base_index + dropped as u64;
        if self.conf_changes.range(index + 1..).next().is_some_and(|&change| change <= applied) {
            return None;
        }
        Some(index)
    }

    /// Drops the entries up to `index` (from [`EntryLog::compaction_point`]): the log then
    /// starts after it, and a snapshot of it is what a follower that needs them gets.
    pub fn compact(&mut self, index: u64) -> Option<Compaction> {
        if index <= self.base_index || index > self.last_index() {
            return None;
        }
        let term = self.term_at(index)?;
        let end_offset = self.end_offset_at(index);
        self.entries.drain(..(index - self.base_index) as usize);
        self.conf_changes = self.conf_changes.split_off(&(index + 1));
        self.base_index = index;
        self.base_term = term;
        self.base_end_offset = end_offset;
        self.base_conf_state = self.conf_state.clone();
        let next_batch = match self.entries.front() {
            Some(Held { term, slot: Slot::Data { base_offset, .. }, .. }) => Some((*term, *base_offset)),
            _ => None,
        };
        Some(Compaction { index, term, end_offset, conf_state: self.conf_state.clone(), next_batch })
    }

    /// Replaces the whole log by a snapshot's point: no entries, the compaction point at
    /// (`index`, `term`), the Kafka log starting at `end_offset`, membership `conf_state`.
    pub fn install(&mut self, index: u64, term: u64, end_offset: i64, conf_state: ConfState) {
        self.entries.clear();
        self.conf_changes.clear();
        self.base_index = index;
        self.base_term = term;
        self.base_end_offset = end_offset;
        self.base_conf_state = conf_state.clone();
        self.conf_state = conf_state;
    }

    /// Adds an entry rebuilt from disk after the last one: a batch read from the log store,
    /// or a no-op / conf change from the journal.
    pub(crate) fn push_rebuilt(&mut self, entry: &Entry, evicted: bool) -> Result<(), AppendError> {
        self.append(std::slice::from_ref(entry))?;
        if evicted
            && self.source.is_some()
            && let Some(Held { slot: Slot::Data { data, .. }, .. }) = self.entries.back_mut()
        {
            *data = None;
        }
        Ok(())
    }

    /// Entries `[low, high)`, reading evicted batches back from the log store.
    fn read(&self, low: u64, high: u64) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut index = low;
        while index < high {
            let Some(held) = self.held(index) else { return Err(StorageError::Unavailable) };
            match &held.slot {
                Slot::Other(entry) => out.push(entry.clone()),
                Slot::Data { data: Some(data), .. } => out.push(data_entry(index, held.term, data.clone())),
                Slot::Data { base_offset, .. } => {
                    // a run of evicted batches: one read for all of them
                    let mut last = index;
                    while last + 1 < high
                        && matches!(self.held(last + 1).map(|held| &held.slot), Some(Slot::Data { data: None, .. }))
                    {
                        last += 1;
                    }
                    let upper = self.end_offset_at(last);
                    let batches = self.read_batches(*base_offset, upper)?;
                    for (at, batch) in (index..=last).zip(batches) {
                        let term = self.held(at).map_or(0, |held| held.term);
                        out.push(data_entry(at, term, batch));
                    }
                    if out.len() as u64 != last + 1 - low {
                        return Err(StorageError::Unavailable);
                    }
                    index = last;
                }
            }
            index += 1;
        }
        Ok(out)
    }

    fn read_batches(&self, from: i64, upper: i64) -> Result<Vec<Bytes>, StorageError> {
        let Some((store, id)) = &self.source else { return Err(StorageError::Unavailable) };
        let mut batches = Vec::new();
        let mut next = from;
        while next < upper {
            let read = store.read(id, next, 1 << 20, upper).map_err(|_| StorageError::Unavailable)?;
            let Some(last) = read.last() else { return Err(StorageError::Unavailable) };
            next = last.last_offset + 1;
            batches.extend(read.into_iter().map(|batch| batch.bytes));
        }
        Ok(batches)
    }

    /// The snapshot of the compaction point, for replica `to`. A replica added after the
    /// point is not in its membership, and raft-rs refuses a snapshot that does not name the
    /// receiver, so it is named as a learner: it votes for nothing until the entries after the
    /// point (its own addition among them, a no-op for a learner) make it a voter.
    fn snapshot_of_base(&self, to: u64) -> Snapshot {
        let mut conf_state = self.base_conf_state.clone();
        if !conf_state.voters.contains(&to)
            && !conf_state.learners.contains(&to)
            && !conf_state.voters_outgoing.contains(&to)
        {
            conf_state.learners.push(to);
        }
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = self.base_index;
        metadata.term = self.base_term;
        metadata.set_conf_state(conf_state);
        snapshot.data = snapshot_data(self.base_end_offset);
        snapshot
    }
}

fn data_entry(index: u64, term: u64, data: Bytes) -> Entry {
    Entry { entry_type: EntryType::EntryNormal, term, index, data, ..Entry::default() }
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
        let mut entries = self.read(low, high).map_err(raft::Error::Store)?;
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

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // the compaction point is the only snapshot there is: it holds no data but the Kafka
        // offset the log starts at (retention dropped what was below it on every replica that
        // compacted; a follower that gets it starts there too)
        if self.base_index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot_of_base(to))
    }
}
