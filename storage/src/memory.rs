//! The in-memory twin of the fjall store, for unit tests and the deterministic simulation.
//!
//! Everything lives in `BTreeMap`s, so iteration order is fixed; nothing reads a clock or a
//! random source. It follows the same offset rules as the fjall store (`log_rules`).
//!
//! The simulation "crashes" a node and restarts it on the same store, so the store models
//! what a disk keeps. Reads see `current`; `durable` is what the last successful sync covered;
//! `pending` lists the mutations since, in order, so that applying `pending` to `durable`
//! always gives `current`. A process crash keeps `current` (the OS page cache survives it); a
//! power loss rolls `current` back to `durable`. A sync applies the pending mutations to
//! `durable` with the same [`Mutation::apply`] that changed `current`, so each rule exists
//! once and a sync costs what the mutations cost rather than a copy of the data (a simulated
//! node appends thousands of small batches with `fsync = always`).
//!
//! Faults (failed appends, failed syncs) are armed by the simulation, never drawn inside the
//! store, so a seed replays exactly.

use std::collections::BTreeMap;

use parking_lot::RwLock;

use crate::batch::{rewrite_for_append, validate_batch};
use crate::log_rules::{self, EpochHistory};
use crate::{
    Append, AppendResult, FetchedBatch, FsyncPolicy, LogStore, PartitionId, PartitionOffsets, StateOp, StateStore,
    StorageError,
};

#[cfg(test)]
mod tests;

/// A [`StateStore`] and [`LogStore`] held entirely in memory, with a durable part that
/// survives a simulated power loss.
#[derive(Debug)]
pub struct MemoryStore {
    fsync: FsyncPolicy,
    inner: RwLock<Inner>,
}

/// Everything behind the store's one lock, so a mutation and its sync are one step.
#[derive(Debug, Default)]
struct Inner {
    /// What reads see.
    current: Data,
    /// What survives a power loss.
    durable: Data,
    /// The mutations not yet in `durable`, oldest first.
    pending: Vec<Mutation>,
    /// How many of the next appends fail.
    failing_appends: u32,
    /// How many of the next syncs fail.
    failing_syncs: u32,
    /// Successful syncs so far.
    sync_count: u64,
}

/// One copy of the store's contents.
#[derive(Debug, Clone, Default)]
struct Data {
    spaces: Spaces,
    logs: BTreeMap<PartitionId, MemoryLog>,
}

/// State spaces by name, each a sorted map of keys to values.
type Spaces = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Clone, Default)]
struct MemoryLog {
    offsets: PartitionOffsets,
    /// Batches by base offset.
    batches: BTreeMap<i64, FetchedBatch>,
    size_bytes: u64,
    epochs: EpochHistory,
}

/// One change to the store, applied to `current` when made and to `durable` when synced.
///
/// A mutation holds its inputs, not its outcome: `durable` is, when the mutation reaches it,
/// exactly what `current` was when the mutation was made, so applying it again gives the
/// same outcome. Callers check that a partition exists before making a mutation of it.
#[derive(Debug)]
enum Mutation {
    /// A state `put` or `delete`.
    Write(StateOp),
    /// A state `write_batch`, applied whole.
    WriteBatch(Vec<StateOp>),
    /// A state `delete_prefix`.
    DeletePrefix { space: &'static str, prefix: Vec<u8> },
    /// A partition created (no change if present).
    CreatePartition(PartitionId),
    /// A partition removed with its data.
    DeletePartition(PartitionId),
    /// A batch already rewritten for its base offset, the log end it was appended at.
    Append { id: PartitionId, leader_epoch: i32, batch: FetchedBatch },
    /// A `truncate_before`.
    TruncateBefore { id: PartitionId, offset: i64 },
    /// A `truncate_after`.
    TruncateAfter { id: PartitionId, offset: i64 },
}

impl Mutation {
    /// Applies the change to one copy of the data.
    fn apply(&self, data: &mut Data) {
        match self {
            Self::Write(op) => apply_state_op(&mut data.spaces, op),
            Self::WriteBatch(ops) => {
                for op in ops {
                    apply_state_op(&mut data.spaces, op);
                }
            }
            Self::DeletePrefix { space, prefix } => {
                if let Some(entries) = data.spaces.get_mut(space) {
                    for key in prefix_keys(entries, prefix) {
                        entries.remove(&key);
                    }
                }
            }
            Self::CreatePartition(id) => {
                data.logs.entry(id.clone()).or_default();
            }
            Self::DeletePartition(id) => {
                data.logs.remove(id);
            }
            Self::Append { id, leader_epoch, batch } => {
                if let Some(log) = data.logs.get_mut(id) {
                    log.epochs.assign(*leader_epoch, batch.base_offset);
                    log.append(batch);
                }
            }
            Self::TruncateBefore { id, offset } => {
                if let Some(log) = data.logs.get_mut(id) {
                    log.truncate_before(*offset);
                }
            }
            Self::TruncateAfter { id, offset } => {
                if let Some(log) = data.logs.get_mut(id) {
                    log.truncate_after(*offset);
                }
            }
        }
    }
}

fn apply_state_op(spaces: &mut Spaces, op: &StateOp) {
    match op {
        StateOp::Put { space, key, value } => {
            spaces.entry(space).or_default().insert(key.clone(), value.clone());
        }
        StateOp::Delete { space, key } => {
            if let Some(entries) = spaces.get_mut(space) {
                entries.remove(key);
            }
        }
    }
}

fn prefix_keys(space: &BTreeMap<Vec<u8>, Vec<u8>>, prefix: &[u8]) -> Vec<Vec<u8>> {
    space.range(prefix.to_vec()..).take_while(|(key, _)| key.starts_with(prefix)).map(|(key, _)| key.clone()).collect()
}

impl MemoryLog {
    /// Stores a batch whose base offset is the log end.
    fn append(&mut self, batch: &FetchedBatch) {
        self.size_bytes += batch.bytes.len() as u64;
        self.offsets.log_end = batch.last_offset + 1;
        self.batches.insert(batch.base_offset, batch.clone());
    }

    fn truncate_before(&mut self, offset: i64) {
        let Some(offsets) = log_rules::truncate_before(self.offsets, offset) else {
            return;
        };
        while let Some(entry) = self.batches.first_entry() {
            if entry.get().last_offset >= offset {
                break;
            }
            self.size_bytes -= entry.remove().bytes.len() as u64;
        }
        self.offsets = offsets;
        self.epochs.truncate_from_start(self.offsets.log_start);
    }

    fn truncate_after(&mut self, offset: i64) {
        if offset >= self.offsets.log_end {
            return;
        }
        let mut first_removed_base = None;
        while let Some(entry) = self.batches.last_entry() {
            if entry.get().last_offset < offset {
                break;
            }
            first_removed_base = Some(*entry.key());
            self.size_bytes -= entry.remove().bytes.len() as u64;
        }
        let last_remaining = self.batches.values().next_back().map(|batch| batch.last_offset);
        self.offsets = log_rules::truncate_after(self.offsets, offset, last_remaining, first_removed_base);
        self.epochs.truncate_from_end(self.offsets.log_end);
    }
}

impl Data {
    fn log(&self, id: &PartitionId) -> Result<&MemoryLog, StorageError> {
        self.logs.get(id).ok_or_else(|| StorageError::unknown_partition(id))
    }
}

impl Inner {
    /// Applies `mutation` to `current`, queues it for `durable`, and syncs under
    /// [`FsyncPolicy::Always`]; a failed sync leaves the change visible and pending.
    fn commit(&mut self, fsync: FsyncPolicy, mutation: Mutation) -> Result<(), StorageError> {
        mutation.apply(&mut self.current);
        self.pending.push(mutation);
        match fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval(_) => Ok(()),
        }
    }

    /// Moves every pending mutation into `durable`, unless an injected failure is armed.
    fn sync(&mut self) -> Result<(), StorageError> {
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            return Err(injected("sync"));
        }
        for mutation in self.pending.drain(..) {
            mutation.apply(&mut self.durable);
        }
        self.sync_count += 1;
        Ok(())
    }
}

/// The I/O error of an injected fault.
fn injected(operation: &str) -> StorageError {
    StorageError::Io(std::io::Error::other(format!("injected {operation} failure")))
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store whose every mutation is durable when it returns ([`FsyncPolicy::Always`]).
    pub fn new() -> Self {
        Self::with_fsync(FsyncPolicy::Always)
    }

    /// An empty store with the given fsync policy; under [`FsyncPolicy::Interval`] mutations
    /// stay pending until [`MemoryStore::sync`] (the store keeps no timer: the caller syncs).
    pub fn with_fsync(fsync: FsyncPolicy) -> Self {
        Self { fsync, inner: RwLock::new(Inner::default()) }
    }

    /// The fsync policy the store was created with.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync
    }

    /// Makes every mutation so far durable (what both traits' `sync` do).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.inner.write().sync()
    }

    /// Simulates a process crash: everything written stays and pending mutations stay pending.
    ///
    /// The OS page cache outlives the process, so nothing changes; the method exists so that
    /// a simulation states which failure it models. Call it while no node uses the store.
    pub fn crash(&self) {}

    /// Simulates a power loss: reads go back to the last successful sync and pending
    /// mutations are lost. Call it while no node uses the store.
    pub fn power_loss(&self) {
        let mut inner = self.inner.write();
        inner.current = inner.durable.clone();
        inner.pending.clear();
    }

    /// Makes the next `count` [`LogStore::append`] calls fail with [`StorageError::Io`] and
    /// change nothing (replacing any count still armed).
    pub fn fail_next_appends(&self, count: u32) {
        self.inner.write().failing_appends = count;
    }

    /// Makes the next `count` syncs, explicit or implied by [`FsyncPolicy::Always`], fail with
    /// [`StorageError::Io`] and make nothing durable (replacing any count still armed).
    pub fn fail_next_syncs(&self, count: u32) {
        self.inner.write().failing_syncs = count;
    }

    /// How many syncs have succeeded, explicit or implied by [`FsyncPolicy::Always`].
    pub fn sync_count(&self) -> u64 {
        self.inner.read().sync_count
    }

    /// How many mutations a power loss would lose now.
    pub fn pending_len(&self) -> usize {
        self.inner.read().pending.len()
    }

    fn commit(&self, mutation: Mutation) -> Result<(), StorageError> {
        self.inner.write().commit(self.fsync, mutation)
    }

    /// Commits a mutation of partition `id`, which must exist.
    fn commit_to_log(&self, id: &PartitionId, mutation: Mutation) -> Result<(), StorageError> {
        let mut inner = self.inner.write();
        inner.current.log(id)?;
        inner.commit(self.fsync, mutation)
    }

    fn with_log<T>(
        &self,
        id: &PartitionId,
        f: impl FnOnce(&MemoryLog) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        f(self.inner.read().current.log(id)?)
    }
}

impl StateStore for MemoryStore {
    fn put(&self, space: &'static str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.commit(Mutation::Write(StateOp::Put { space, key: key.to_vec(), value: value.to_vec() }))
    }

    fn get(&self, space: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.read().current.spaces.get(space).and_then(|entries| entries.get(key).cloned()))
    }

    fn delete(&self, space: &'static str, key: &[u8]) -> Result<(), StorageError> {
        self.commit(Mutation::Write(StateOp::Delete { space, key: key.to_vec() }))
    }

    fn write_batch(&self, ops: Vec<StateOp>) -> Result<(), StorageError> {
        self.commit(Mutation::WriteBatch(ops))
    }

    fn scan_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let inner = self.inner.read();
        let Some(entries) = inner.current.spaces.get(space) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn delete_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<(), StorageError> {
        self.commit(Mutation::DeletePrefix { space, prefix: prefix.to_vec() })
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.write().sync()
    }
}

impl LogStore for MemoryStore {
    fn create_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.commit(Mutation::CreatePartition(id.clone()))
    }

    fn delete_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.commit(Mutation::DeletePartition(id.clone()))
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(self.inner.read().current.logs.keys().cloned().collect())
    }

    fn append_at(&self, id: &PartitionId, append: Append) -> Result<AppendResult, StorageError> {
        let mut inner = self.inner.write();
        if inner.failing_appends > 0 {
            inner.failing_appends -= 1;
            return Err(injected("append"));
        }
        let header = validate_batch(&append.batch)?;
        let log_end = inner.current.log(id)?.offsets.log_end;
        if append.base_offset != log_end {
            return Err(StorageError::NotAtLogEnd { expected: append.base_offset, log_end });
        }
        let (base_offset, leader_epoch) = (log_end, append.leader_epoch);
        let last_offset = base_offset + i64::from(header.last_offset_delta);
        let bytes = rewrite_for_append(&append.batch, base_offset, leader_epoch);
        let batch = FetchedBatch { base_offset, last_offset, max_timestamp: header.max_timestamp, bytes };
        inner.commit(self.fsync, Mutation::Append { id: id.clone(), leader_epoch, batch })?;
        Ok(AppendResult { base_offset, last_offset })
    }

    fn end_offset_for_epoch(&self, id: &PartitionId, epoch: i32) -> Result<Option<(i32, i64)>, StorageError> {
        self.with_log(id, |log| Ok(log.epochs.end_offset_for(epoch, log.offsets.log_end)))
    }

    fn read(
        &self,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<FetchedBatch>, StorageError> {
        self.with_log(id, |log| {
            if !log_rules::check_read(&log.offsets, offset)? {
                return Ok(Vec::new());
            }
            let start = log.batches.range(..=offset).next_back().map_or(offset, |(base, _)| *base);
            let batches = log.batches.range(start..).map(|(_, batch)| Ok(batch.clone()));
            log_rules::collect_read(batches, offset, max_bytes, upper_bound)
        })
    }

    fn offsets(&self, id: &PartitionId) -> Result<PartitionOffsets, StorageError> {
        self.with_log(id, |log| Ok(log.offsets))
    }

    fn offset_for_timestamp(&self, id: &PartitionId, timestamp_ms: i64) -> Result<Option<i64>, StorageError> {
        self.with_log(id, |log| {
            Ok(log
                .batches
                .values()
                .find(|batch| batch.max_timestamp >= timestamp_ms)
                .map(|batch| batch.base_offset.max(log.offsets.log_start)))
        })
    }

    fn truncate_before(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.commit_to_log(id, Mutation::TruncateBefore { id: id.clone(), offset })
    }

    fn truncate_after(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.commit_to_log(id, Mutation::TruncateAfter { id: id.clone(), offset })
    }

    fn size_bytes(&self, id: &PartitionId) -> Result<u64, StorageError> {
        self.with_log(id, |log| Ok(log.size_bytes))
    }

    fn retention_offset_for_bytes(&self, id: &PartitionId, limit: u64) -> Result<Option<i64>, StorageError> {
        self.with_log(id, |log| {
            let mut remaining = log.size_bytes;
            let mut cut = None;
            let count = log.batches.len();
            for batch in log.batches.values().take(count.saturating_sub(1)) {
                if remaining <= limit {
                    break;
                }
                remaining -= batch.bytes.len() as u64;
                cut = Some(batch.last_offset + 1);
            }
            Ok(cut)
        })
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.write().sync()
    }
}
