//! A replica's raft log on disk, written from [`PersistJob`]s and rebuilt on start.
//!
//! The partition's RecordBatches *are* its raft data entries: each goes to the log store
//! once, stamped with its offset and term, and nowhere else, so replication writes each
//! byte once per replica. What the log store cannot say lives in the state store (space
//! [`SPACE`], keyed by partition):
//!
//! - the hard record: term, vote, commit, applied, membership, compaction point;
//! - **markers**: where the mapping from raft index to batch changes. A `Data` marker
//!   starts a *run* of consecutive indices held by consecutive batches of one term; an
//!   `Other` marker is a no-op or conf change (they take no Kafka offset). A steady leader
//!   writes no markers at all; an election writes two.
//!
//! Rebuilding walks the markers and the batches together and stops at the first thing
//! that does not fit (a run's batch of another term, a marker whose batch is missing); what
//! lies past that point was never reported durable, so it is cut off.
//!
//! Order of writes, so that any crash leaves a state the rebuild reads as a prefix:
//! a cut of the Kafka log is synced before the markers that replace it; markers are synced
//! before the batches they describe are submitted; a new term or vote is synced before the
//! job is reported (raft may not send a vote it could forget).
//!
//! Retention moves the compaction point: the hard record names the new point (with a marker
//! for the run that now starts after it) and is synced before the batches below it leave the
//! log store, so a crash between the two leaves batches the rebuild ignores and removes. A
//! leader's snapshot is written the same way: the record first, then the log restarts empty
//! at the snapshot's offset.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::{Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};
use tidewater_storage::{Append, BatchHeader, LogStore, PartitionId, StateOp, StateStore, StorageError};

use super::entry_log::{Compaction, EntryLog, batch_span};
use super::replica::PersistJob;
use super::wire::{ConfStateForm, EntryForm};

/// The state-store space of raft records.
pub const SPACE: &str = "raft";

const HARD: u8 = b'h';
/// Entries of commit or applied progress after which the hard record is written anyway.
const RECORD_EVERY: u64 = 1_024;
const MARKER: u8 = b'm';

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HardRecord {
    term: u64,
    vote: u64,
    commit: u64,
    applied: u64,
    conf: ConfStateForm,
    base_index: u64,
    base_term: u64,
    base_end_offset: i64,
    /// the membership at `base_index`
    base_conf: ConfStateForm,
}

/// The hard record as written before compaction existed (no membership at the base, which
/// was then always the first one).
#[derive(Deserialize)]
struct HardRecordV1 {
    term: u64,
    vote: u64,
    commit: u64,
    applied: u64,
    conf: ConfStateForm,
    base_index: u64,
    base_term: u64,
    base_end_offset: i64,
}

fn decode_record(bytes: &[u8]) -> Result<HardRecord, StorageError> {
    decode::<HardRecord>(bytes).or_else(|error| match decode::<HardRecordV1>(bytes) {
        Ok(old) => Ok(HardRecord {
            base_conf: old.conf.clone(),
            term: old.term,
            vote: old.vote,
            commit: old.commit,
            applied: old.applied,
            conf: old.conf,
            base_index: old.base_index,
            base_term: old.base_term,
            base_end_offset: old.base_end_offset,
        }),
        Err(_) => Err(error),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Marker {
    /// a run of batches of `term` starts here, with the batch at `base_offset`
    Data { base_offset: i64, term: u64 },
    /// a no-op or conf change
    Other(EntryForm),
}

/// What the journal has been asked to write so far (not what is durable).
#[derive(Debug, Clone, Copy)]
struct Tail {
    last_index: u64,
    /// the term of the last entry if it is a data entry
    last_data_term: Option<u64>,
}

/// One partition replica's durable raft log.
pub struct RaftJournal {
    id: PartitionId,
    log: Arc<dyn LogStore>,
    state: Arc<dyn StateStore>,
    prefix: Vec<u8>,
    tail: Mutex<Tail>,
    /// the record as it stands
    record: Mutex<HardRecord>,
    /// the record as last written
    written: Mutex<HardRecord>,
}

/// A replica read back from disk.
pub struct Restored {
    /// the raft log, with evicted batches read back from the log store
    pub log: EntryLog,
    /// the last index applied before the restart
    pub applied: u64,
}

/// Where partition `id`'s raft records start in [`SPACE`].
fn partition_prefix(id: &PartitionId) -> Vec<u8> {
    let mut prefix = id.stream.as_bytes().to_vec();
    prefix.push(0);
    prefix.extend_from_slice(&id.partition.to_be_bytes());
    prefix
}

fn key(prefix: &[u8], tag: u8, index: Option<u64>) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.push(tag);
    if let Some(index) = index {
        key.extend_from_slice(&index.to_be_bytes());
    }
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|error| StorageError::CorruptMetadata(format!("raft journal record: {error}")))
}

impl RaftJournal {
    /// Whether this node holds a replica of partition `id` (its raft record is there).
    pub fn exists(id: &PartitionId, state: &dyn StateStore) -> Result<bool, StorageError> {
        let prefix = partition_prefix(id);
        Ok(state.get(SPACE, &key(&prefix, HARD, None))?.is_some())
    }

    /// Removes every raft record of partition `id` (its replica is gone: the stream was
    /// deleted or the replica moved away); the caller removes the partition's log.
    pub fn forget(id: &PartitionId, state: &dyn StateStore) -> Result<(), StorageError> {
        let prefix = partition_prefix(id);
        let ops: Vec<StateOp> = state
            .scan_prefix(SPACE, &prefix)?
            .into_iter()
            .map(|(key, _)| StateOp::Delete { space: SPACE, key })
            .collect();
        if !ops.is_empty() {
            state.write_batch(ops)?;
        }
        Ok(())
    }

    /// Opens the journal of partition `id`, creating it with `voters` if it has none, and
    /// rebuilds the replica's log (repairing a tail that was never reported durable).
    pub fn open(
        id: PartitionId,
        log: Arc<dyn LogStore>,
        state: Arc<dyn StateStore>,
        voters: &[u64],
    ) -> Result<(Self, Restored), StorageError> {
        log.create_partition(&id)?;
        let prefix = partition_prefix(&id);
        let offsets = log.offsets(&id)?;
        let record = match state.get(SPACE, &key(&prefix, HARD, None))? {
            Some(bytes) => decode_record(&bytes)?,
            None => {
                // a new replica: its raft log starts where the partition's log ends now, and
                // that is recorded before anything is appended
                let record = new_record(voters, offsets.log_end);
                state.put(SPACE, &key(&prefix, HARD, None), &encode(&record))?;
                state.sync()?;
                record
            }
        };
        let journal = Self {
            id,
            log,
            state,
            prefix,
            tail: Mutex::new(Tail { last_index: 0, last_data_term: None }),
            record: Mutex::new(record.clone()),
            written: Mutex::new(record.clone()),
        };
        let restored = journal.rebuild(&record)?;
        Ok((journal, restored))
    }

    fn rebuild(&self, record: &HardRecord) -> Result<Restored, StorageError> {
        let hard_state = HardState { term: record.term, vote: record.vote, commit: 0, ..HardState::default() };
        let mut entry_log = EntryLog::rebuilt(
            hard_state,
            record.conf.to_raft(),
            (record.base_index, record.base_term, record.base_end_offset, record.base_conf.to_raft()),
            Some((Arc::clone(&self.log), self.id.clone())),
        );
        if record.base_index > 0 {
            // compacted: batches below the point may still be there (a crash after the record
            // was written), or the log may end before it (a snapshot's restart not done yet)
            let offsets = self.log.offsets(&self.id)?;
            if offsets.log_start > record.base_end_offset {
                return Err(StorageError::CorruptMetadata(format!(
                    "raft journal: the log starts at {} after the compaction point's offset {}",
                    offsets.log_start, record.base_end_offset
                )));
            }
            if offsets.log_end < record.base_end_offset {
                self.log.truncate_after(&self.id, offsets.log_start)?;
            }
            if offsets.log_start < record.base_end_offset {
                self.log.truncate_before(&self.id, record.base_end_offset)?;
            }
        }
        let mut markers = std::collections::BTreeMap::new();
        for (key, value) in self.state.scan_prefix(SPACE, &key(&self.prefix, MARKER, None))? {
            let Some(index) = key.get(key.len().saturating_sub(8)..).and_then(|raw| raw.try_into().ok()) else {
                continue;
            };
            markers.insert(u64::from_be_bytes(index), decode::<Marker>(&value)?);
        }
        let log_end = self.log.offsets(&self.id)?.log_end;
        let mut next_offset = record.base_end_offset;
        let mut index = record.base_index + 1;
        let mut run: Option<u64> = None;
        let mut batches = BatchReader::new(Arc::clone(&self.log), self.id.clone(), next_offset, log_end);
        let mut last_data_term = None;
        loop {
            match markers.get(&index) {
                Some(Marker::Other(form)) => {
                    let entry = form.to_raft();
                    if entry.index != index || entry_log.push_rebuilt(&entry, false).is_err() {
                        break;
                    }
                    run = None;
                    last_data_term = None;
                    index += 1;
                    continue;
                }
                Some(Marker::Data { base_offset, term }) => {
                    if *base_offset != next_offset {
                        break;
                    }
                    run = Some(*term);
                }
                None => {}
            }
            let Some(term) = run else { break };
            let Some(batch) = batches.next()? else { break };
            let Ok(header) = BatchHeader::parse(&batch) else { break };
            if header.base_offset != next_offset || header.partition_leader_epoch as u64 != term {
                break;
            }
            let entry = Entry { entry_type: EntryType::EntryNormal, term, index, data: batch, ..Entry::default() };
            if entry_log.push_rebuilt(&entry, true).is_err() {
                break;
            }
            next_offset = header.last_offset() + 1;
            last_data_term = Some(term);
            index += 1;
        }
        let last_index = index - 1;
        // repair: what follows the first misfit was never reported durable
        if next_offset < log_end {
            tracing::info!(stream = %self.id.stream, partition = self.id.partition, from = next_offset, "raft journal cuts an unreported tail");
            self.log.truncate_after(&self.id, next_offset)?;
        }
        let stale: Vec<StateOp> = markers
            .range(index..)
            .map(|(&at, _)| StateOp::Delete { space: SPACE, key: key(&self.prefix, MARKER, Some(at)) })
            .collect();
        if !stale.is_empty() {
            self.state.write_batch(stale)?;
        }
        let commit = record.commit.min(last_index);
        let mut hard_state = entry_log.hard_state().clone();
        hard_state.commit = commit;
        entry_log.set_hard_state(hard_state);
        *self.tail.lock() = Tail { last_index, last_data_term };
        Ok(Restored { log: entry_log, applied: record.applied.min(commit) })
    }

    /// Makes `job` durable in the order the module docs give; `done` is told once it is
    /// (after the log store's writer has synced the batches, with `fsync = always`).
    pub fn write(&self, job: &PersistJob, done: Box<dyn FnOnce(Result<(), StorageError>) + Send>) {
        match self.write_state(job) {
            Ok(batches) => self.write_batches(batches, done),
            Err(error) => done(Err(error)),
        }
    }

    /// The cut and the state-store part of a job; returns the batches still to write.
    fn write_state(&self, job: &PersistJob) -> Result<Vec<(Bytes, u64, i64)>, StorageError> {
        if let Some(snapshot) = &job.snapshot {
            self.install(snapshot)?;
        }
        let mut ops = Vec::new();
        let mut sync_state = job.must_sync;
        let mut batches = Vec::new();
        {
            let mut tail = self.tail.lock();
            if let Some(first) = job.entries.first() {
                if first.index <= tail.last_index {
                    if let Some(cut_to) = job.cut_to {
                        self.log.truncate_after(&self.id, cut_to)?;
                        self.log.sync()?;
                    }
                    for (key, _) in self.state.scan_prefix(SPACE, &key(&self.prefix, MARKER, None))? {
                        let index = key.get(key.len().saturating_sub(8)..).and_then(|raw| raw.try_into().ok());
                        if index.is_some_and(|raw| u64::from_be_bytes(raw) >= first.index) {
                            ops.push(StateOp::Delete { space: SPACE, key });
                        }
                    }
                    sync_state = true;
                    // the entry before `first` decides whether a run continues
                    tail.last_data_term = None;
                    tail.last_index = first.index - 1;
                }
                for entry in &job.entries {
                    match batch_span(entry) {
                        Some(span) => {
                            if tail.last_data_term != Some(entry.term) {
                                let marker = Marker::Data { base_offset: span.base_offset, term: entry.term };
                                ops.push(put_marker(&self.prefix, entry.index, &marker));
                                sync_state = true;
                            }
                            tail.last_data_term = Some(entry.term);
                            batches.push((entry.data.clone(), entry.term, span.base_offset));
                        }
                        None => {
                            let form = EntryForm::from_raft(entry)
                                .map_err(|error| StorageError::CorruptMetadata(format!("raft entry: {error}")))?;
                            ops.push(put_marker(&self.prefix, entry.index, &Marker::Other(form)));
                            sync_state = true;
                            tail.last_data_term = None;
                        }
                    }
                    tail.last_index = entry.index;
                }
            } else if let Some(cut_to) = job.cut_to {
                self.log.truncate_after(&self.id, cut_to)?;
            }
        }
        {
            let mut record = self.record.lock();
            if let Some(hard_state) = &job.hard_state {
                record.term = hard_state.term;
                record.vote = hard_state.vote;
                // a compaction point is committed even if this job's state is older
                record.commit = hard_state.commit.max(record.base_index);
            }
            if let Some(conf_state) = &job.conf_state {
                record.conf = ConfStateForm::from_raft(conf_state);
            }
            record.applied = record.applied.max(job.applied);
            // term, vote and membership are written at once; commit and applied only ride
            // along, or every RECORD_EVERY entries (a restart re-applies from an older one)
            let mut written = self.written.lock();
            let decisive = (record.term, record.vote, &record.conf) != (written.term, written.vote, &written.conf)
                || (record.base_index, record.base_term, record.base_end_offset)
                    != (written.base_index, written.base_term, written.base_end_offset);
            let lagging =
                record.applied >= written.applied + RECORD_EVERY || record.commit >= written.commit + RECORD_EVERY;
            if *record != *written && (decisive || lagging || !ops.is_empty()) {
                ops.push(StateOp::Put { space: SPACE, key: key(&self.prefix, HARD, None), value: encode(&*record) });
                *written = record.clone();
            }
        }
        if !ops.is_empty() {
            self.state.write_batch(ops)?;
            if sync_state {
                self.state.sync()?;
            }
        }
        Ok(batches)
    }

    /// A leader's snapshot: the record names its point and the markers go (synced), then the
    /// log restarts empty at the snapshot's offset.
    fn install(&self, snapshot: &Compaction) -> Result<(), StorageError> {
        let ops: Vec<StateOp> = self
            .state
            .scan_prefix(SPACE, &key(&self.prefix, MARKER, None))?
            .into_iter()
            .map(|(key, _)| StateOp::Delete { space: SPACE, key })
            .collect();
        self.move_base(snapshot, true, ops)?;
        let offsets = self.log.offsets(&self.id)?;
        self.log.truncate_after(&self.id, offsets.log_start.min(snapshot.end_offset))?;
        self.log.truncate_before(&self.id, snapshot.end_offset)?;
        self.log.sync()?;
        *self.tail.lock() = Tail { last_index: snapshot.index, last_data_term: None };
        Ok(())
    }

    /// Records a compaction (retention dropped the entries up to `compaction.index`), then
    /// removes the batches below its offset from the log store.
    pub fn compact(&self, compaction: &Compaction) -> Result<(), StorageError> {
        let mut ops: Vec<StateOp> = Vec::new();
        for (key, _) in self.state.scan_prefix(SPACE, &key(&self.prefix, MARKER, None))? {
            let index = key.get(key.len().saturating_sub(8)..).and_then(|raw| raw.try_into().ok());
            match index.map(u64::from_be_bytes) {
                Some(index) if index <= compaction.index => ops.push(StateOp::Delete { space: SPACE, key }),
                // markers are in index order
                _ => break,
            }
        }
        match compaction.next_batch {
            // the run the first entry kept belongs to may have started below the point
            Some((term, base_offset)) => {
                ops.push(put_marker(&self.prefix, compaction.index + 1, &Marker::Data { base_offset, term }));
            }
            None => {
                // nothing follows the point yet: the next batch written starts a run, even of
                // the term of the last one compacted away (whose marker goes now)
                let mut tail = self.tail.lock();
                if tail.last_index <= compaction.index {
                    tail.last_data_term = None;
                }
            }
        }
        self.move_base(compaction, false, ops)?;
        self.log.truncate_before(&self.id, compaction.end_offset)
    }

    /// Writes and syncs the hard record with its compaction point at `point` (committed and
    /// applied, so at or below both), together with the marker changes `ops`; with `installed`
    /// the point's membership is the current one too (a snapshot replaced the whole log).
    fn move_base(&self, point: &Compaction, installed: bool, mut ops: Vec<StateOp>) -> Result<(), StorageError> {
        let mut record = self.record.lock();
        record.base_index = point.index;
        record.base_term = point.term;
        record.base_end_offset = point.end_offset;
        record.base_conf = ConfStateForm::from_raft(&point.conf_state);
        if installed {
            record.conf = record.base_conf.clone();
        }
        record.commit = record.commit.max(point.index);
        record.applied = record.applied.max(point.index);
        ops.push(StateOp::Put { space: SPACE, key: key(&self.prefix, HARD, None), value: encode(&*record) });
        self.state.write_batch(ops)?;
        self.state.sync()?;
        *self.written.lock() = record.clone();
        Ok(())
    }

    fn write_batches(&self, batches: Vec<(Bytes, u64, i64)>, done: Box<dyn FnOnce(Result<(), StorageError>) + Send>) {
        let count = batches.len();
        if count == 0 {
            done(Ok(()));
            return;
        }
        let mut done = Some(done);
        for (position, (batch, term, base_offset)) in batches.into_iter().enumerate() {
            let append = Append { batch, leader_epoch: term as i32, base_offset };
            if position + 1 == count {
                // a failed append fails every later one, so the last one's outcome is the job's
                let done = done.take().expect("one done per job");
                self.log.submit(&self.id, append, Box::new(move |result| done(result.map(|_| ()))));
            } else {
                self.log.submit(&self.id, append, Box::new(|_| {}));
            }
        }
    }

    /// Writes the hard record if commit or applied moved since it was written (at a clean
    /// stop, so that the next start re-applies nothing).
    pub fn write_record(&self) -> Result<(), StorageError> {
        let record = self.record.lock().clone();
        let mut written = self.written.lock();
        if record != *written {
            self.state.put(SPACE, &key(&self.prefix, HARD, None), &encode(&record))?;
            *written = record;
        }
        Ok(())
    }
}

fn new_record(voters: &[u64], log_end: i64) -> HardRecord {
    HardRecord {
        term: 0,
        vote: 0,
        commit: 0,
        applied: 0,
        conf: ConfStateForm { voters: voters.to_vec(), ..ConfStateForm::default() },
        base_index: 0,
        base_term: 0,
        base_end_offset: log_end,
        base_conf: ConfStateForm { voters: voters.to_vec(), ..ConfStateForm::default() },
    }
}

fn put_marker(prefix: &[u8], index: u64, marker: &Marker) -> StateOp {
    StateOp::Put { space: SPACE, key: key(prefix, MARKER, Some(index)), value: encode(marker) }
}

/// Batches of a partition in order, read in chunks.
struct BatchReader {
    log: Arc<dyn LogStore>,
    id: PartitionId,
    next: i64,
    end: i64,
    buffered: std::collections::VecDeque<Bytes>,
}

impl BatchReader {
    fn new(log: Arc<dyn LogStore>, id: PartitionId, from: i64, end: i64) -> Self {
        Self { log, id, next: from, end, buffered: std::collections::VecDeque::new() }
    }

    fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        if self.buffered.is_empty() && self.next < self.end {
            for batch in self.log.read(&self.id, self.next, 4 << 20, self.end)? {
                self.next = batch.last_offset + 1;
                self.buffered.push_back(batch.bytes);
            }
        }
        Ok(self.buffered.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use tidewater_storage::{MemoryStore, NewRecord, build_record_batch, patch_for_append};

    use super::*;

    fn data(index: u64, term: u64, base_offset: i64) -> Entry {
        let value = format!("entry {index}").into_bytes();
        let record = NewRecord { key: None, value: Some(&value), headers: &[], timestamp_ms: 1 };
        let mut batch = build_record_batch(&[record], 1).to_vec();
        patch_for_append(&mut batch, base_offset, term as i32);
        Entry { term, index, data: batch.into(), ..Entry::default() }
    }

    fn noop(index: u64, term: u64) -> Entry {
        Entry { term, index, ..Entry::default() }
    }

    fn write(journal: &RaftJournal, job: PersistJob) -> Result<(), StorageError> {
        let outcome = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&outcome);
        journal.write(&job, Box::new(move |result| *sink.lock() = Some(result)));
        outcome.lock().take().expect("memory store answers inline")
    }

    fn open(store: &Arc<MemoryStore>) -> (RaftJournal, Restored) {
        let id = PartitionId { stream: "s".into(), partition: 0 };
        RaftJournal::open(id, store.clone(), store.clone(), &[1, 2, 3]).unwrap()
    }

    fn terms(restored: &Restored) -> Vec<(u64, u64, bool)> {
        (1..=restored.log.last_index())
            .map(|index| {
                let entry = restored.log.entry(index).unwrap();
                (entry.index, entry.term, batch_span(&entry).is_some())
            })
            .collect()
    }

    #[test]
    fn the_log_comes_back_with_its_no_ops_terms_and_batches() {
        let store = Arc::new(MemoryStore::new());
        let (journal, restored) = open(&store);
        assert_eq!(restored.log.last_index(), 0);
        let hard_state = HardState { term: 2, vote: 1, commit: 3, ..HardState::default() };
        let job = PersistJob {
            entries: vec![noop(1, 1), data(2, 1, 0), data(3, 1, 1), noop(4, 2), data(5, 2, 2)],
            hard_state: Some(hard_state),
            applied: 3,
            ..PersistJob::default()
        };
        write(&journal, job).unwrap();
        drop(journal);
        let (_, restored) = open(&store);
        assert_eq!(terms(&restored), vec![(1, 1, false), (2, 1, true), (3, 1, true), (4, 2, false), (5, 2, true)]);
        assert_eq!(restored.log.hard_state().term, 2);
        assert_eq!(restored.log.hard_state().vote, 1);
        assert_eq!(restored.log.hard_state().commit, 3);
        assert_eq!(restored.applied, 3);
        assert_eq!(restored.log.end_offset(), 3);
        assert_eq!(restored.log.conf_state().voters, vec![1, 2, 3]);
        // batches come back evicted, and are read from the log store byte for byte
        assert_eq!(restored.log.cached_bytes(), 0);
        assert_eq!(restored.log.entry(3).unwrap().data, data(3, 1, 1).data);
    }

    #[test]
    fn a_replaced_suffix_is_cut_and_a_tail_never_reported_is_repaired() {
        let store = Arc::new(MemoryStore::new());
        let (journal, _) = open(&store);
        let job = PersistJob { entries: vec![data(1, 1, 0), data(2, 1, 1), data(3, 1, 2)], ..PersistJob::default() };
        write(&journal, job).unwrap();
        // a new leader of term 3 replaces entries 2 and 3 with a no-op and a batch
        let job = PersistJob { cut_to: Some(1), entries: vec![noop(2, 3), data(3, 3, 1)], ..PersistJob::default() };
        write(&journal, job).unwrap();
        // then a write whose batch fails after its marker was written
        store.fail_next_appends(1);
        let job = PersistJob { entries: vec![noop(4, 4), data(5, 4, 2)], ..PersistJob::default() };
        assert!(write(&journal, job).is_err());
        drop(journal);
        let (journal, restored) = open(&store);
        assert_eq!(terms(&restored), vec![(1, 1, true), (2, 3, false), (3, 3, true), (4, 4, false)]);
        assert_eq!(restored.log.end_offset(), 2);
        // the journal continues after the repaired tail
        let job = PersistJob { entries: vec![data(5, 4, 2)], ..PersistJob::default() };
        write(&journal, job).unwrap();
        drop(journal);
        let (_, restored) = open(&store);
        assert_eq!(restored.log.last_index(), 5);
        assert_eq!(restored.log.end_offset(), 3);
    }

    #[test]
    fn a_compacted_log_comes_back_from_its_point_and_the_batches_below_are_gone() {
        let store = Arc::new(MemoryStore::new());
        let (journal, restored) = open(&store);
        let mut log = restored.log;
        let entries = vec![data(1, 1, 0), data(2, 1, 1), noop(3, 2), data(4, 2, 2), data(5, 2, 3)];
        log.append(&entries).unwrap();
        let hard_state = HardState { term: 2, vote: 1, commit: 5, ..HardState::default() };
        write(&journal, PersistJob { entries, hard_state: Some(hard_state), applied: 5, ..PersistJob::default() })
            .unwrap();
        // retention keeps from offset 3: entries 1 to 4 go; 5 starts a run of its own now
        let point = log.compaction_point(3, 5).unwrap();
        assert_eq!(point, 4);
        let compaction = log.compact(point).unwrap();
        assert_eq!((compaction.index, compaction.term, compaction.end_offset), (4, 2, 3));
        journal.compact(&compaction).unwrap();
        let id = PartitionId { stream: "s".into(), partition: 0 };
        assert_eq!(store.offsets(&id).unwrap().log_start, 3);
        // everything compacted away: the next batch of the same term still starts a run
        let compaction = log.compact(5).unwrap();
        assert_eq!(compaction.next_batch, None);
        journal.compact(&compaction).unwrap();
        write(&journal, PersistJob { entries: vec![data(6, 2, 4)], ..PersistJob::default() }).unwrap();
        store.power_loss();
        drop(journal);
        let (_, restored) = open(&store);
        assert_eq!(restored.log.base_index(), 5);
        assert_eq!(restored.log.start_offset(), 4);
        assert_eq!(restored.log.last_index(), 6);
        assert_eq!(restored.log.entry(6).unwrap().data, data(6, 2, 4).data);
        assert!(restored.applied >= 5);
        assert_eq!(store.offsets(&id).unwrap(), tidewater_storage::PartitionOffsets { log_start: 4, log_end: 5 });
    }
}
