//! [`LogStore`] on fjall: appends, reads, the time index and truncation.
//!
//! The time index holds one entry per batch whose max timestamp exceeds every earlier
//! batch's (a running maximum, as Kafka's time index does), so "first batch with max
//! timestamp at or after T" is the first index key at or after T.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use fjall::{OwnedWriteBatch, PersistMode};
use parking_lot::Mutex;

use super::keys::{self, IndexEntry, PartitionRecord, from_ordered, log_key, log_key_value, ordered, partition_range};
use super::{FjallStore, PartitionState};
use crate::batch::{BatchHeader, patch_for_append, validate_batch};
use crate::{AppendResult, FetchedBatch, LogStore, PartitionId, PartitionOffsets, StorageError, log_rules};

/// Removals per write batch when purging a deleted partition.
const PURGE_CHUNK: usize = 4096;

impl FjallStore {
    /// Runs `f` on a partition's state under its lock; `f` updates the state only after its
    /// writes are committed.
    fn with_partition<T>(
        &self,
        id: &PartitionId,
        f: impl FnOnce(&mut PartitionState) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let partition = self.partitions.read().get(id).cloned();
        let partition = partition.ok_or_else(|| StorageError::unknown_partition(id))?;
        let mut state = partition.lock();
        if state.deleted {
            return Err(StorageError::unknown_partition(id));
        }
        f(&mut state)
    }

    fn snapshot(&self, id: &PartitionId) -> Result<PartitionState, StorageError> {
        self.with_partition(id, |state| Ok(*state))
    }

    /// Adds the write of a partition's record to `batch`.
    pub(super) fn put_record(&self, batch: &mut OwnedWriteBatch, id: &PartitionId, state: &PartitionState) {
        let record =
            PartitionRecord { internal_id: state.internal_id, offsets: state.offsets, size_bytes: state.size_bytes };
        batch.insert(&self.meta, keys::partition_key(id), record.encode());
    }

    /// The base offset of the last batch starting at or before `offset`, with its metadata.
    fn batch_at_or_before(&self, pid: u64, offset: i64) -> Result<Option<(i64, IndexEntry)>, StorageError> {
        let Some(guard) = self.index.range(log_key(pid, i64::MIN)..=log_key(pid, offset)).next_back() else {
            return Ok(None);
        };
        let (key, value) = guard.into_inner()?;
        Ok(Some((log_key_value(&key)?, IndexEntry::decode(&value)?)))
    }

    /// Removes every key of the partition `pid` from the log keyspaces, then its deletion marker.
    pub(super) fn purge(&self, pid: u64) -> Result<(), StorageError> {
        for keyspace in [&self.batches, &self.index, &self.time] {
            let mut batch = self.db.batch();
            for guard in keyspace.range(partition_range(pid)) {
                batch.remove(keyspace, guard.key()?);
                if batch.len() >= PURGE_CHUNK {
                    std::mem::replace(&mut batch, self.db.batch()).commit()?;
                }
            }
            batch.commit()?;
        }
        let mut batch = self.db.batch();
        batch.remove(&self.meta, keys::deleting_key(pid));
        self.commit(batch)
    }

    /// Rewrites the head of the time index after `truncate_before` removed batches: drops
    /// entries of removed batches and indexes the kept batches before the first surviving
    /// entry by their own running maximum. Returns the new last indexed timestamp.
    fn rebuild_time_head(
        &self,
        batch: &mut OwnedWriteBatch,
        pid: u64,
        first_kept: Option<i64>,
        time_max: Option<i64>,
    ) -> Result<Option<i64>, StorageError> {
        let mut changes: BTreeMap<[u8; 16], Option<[u8; 8]>> = BTreeMap::new();
        let mut first_surviving = None;
        for guard in self.time.range(partition_range(pid)) {
            let (key, value) = guard.into_inner()?;
            let base = from_ordered(&value)?;
            if first_kept.is_some_and(|kept| base >= kept) {
                first_surviving = Some(base);
                break;
            }
            changes.insert(log_key(pid, log_key_value(&key)?), None);
        }
        let mut new_max = if first_surviving.is_some() { time_max } else { None };
        if let Some(kept) = first_kept {
            let mut running: Option<i64> = None;
            for guard in self.index.range(log_key(pid, kept)..=log_key(pid, i64::MAX)) {
                let (key, value) = guard.into_inner()?;
                let base = log_key_value(&key)?;
                if first_surviving.is_some_and(|surviving| base >= surviving) {
                    break;
                }
                let entry = IndexEntry::decode(&value)?;
                if running.is_none_or(|max| entry.max_timestamp > max) {
                    running = Some(entry.max_timestamp);
                    changes.insert(log_key(pid, entry.max_timestamp), Some(ordered(base)));
                }
            }
            if first_surviving.is_none() {
                new_max = running;
            }
        }
        for (key, change) in changes {
            match change {
                Some(value) => batch.insert(&self.time, key, value),
                None => batch.remove(&self.time, key),
            }
        }
        Ok(new_max)
    }
}

impl LogStore for FjallStore {
    fn create_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        let mut partitions = self.partitions.write();
        if partitions.contains_key(id) {
            return Ok(());
        }
        let mut next_id = self.next_internal_id.lock();
        let state = PartitionState {
            internal_id: *next_id,
            offsets: PartitionOffsets::default(),
            size_bytes: 0,
            time_max: None,
            deleted: false,
        };
        let mut batch = self.db.batch();
        self.put_record(&mut batch, id, &state);
        batch.insert(&self.meta, keys::NEXT_ID_KEY, (*next_id + 1).to_be_bytes());
        self.commit(batch)?;
        *next_id += 1;
        partitions.insert(id.clone(), Arc::new(Mutex::new(state)));
        Ok(())
    }

    fn delete_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        let pid = {
            // Hold the map lock until the record is gone, so a concurrent create cannot
            // write a record that this deletion then removes.
            let mut partitions = self.partitions.write();
            let Some(partition) = partitions.get(id).cloned() else {
                return Ok(());
            };
            let mut state = partition.lock();
            let mut batch = self.db.batch();
            batch.remove(&self.meta, keys::partition_key(id));
            batch.insert(&self.meta, keys::deleting_key(state.internal_id), []);
            self.commit(batch)?;
            state.deleted = true;
            partitions.remove(id);
            state.internal_id
        };
        self.purge(pid)
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(self.partitions.read().keys().cloned().collect())
    }

    fn append(&self, id: &PartitionId, leader_epoch: i32, batch: Bytes) -> Result<AppendResult, StorageError> {
        let header = validate_batch(&batch)?;
        let size = u32::try_from(batch.len()).map_err(|_| StorageError::invalid_batch("batch of 4 GiB or more"))?;
        self.with_partition(id, |state| {
            let base_offset = state.offsets.log_end;
            let last_offset = base_offset + i64::from(header.last_offset_delta);
            let key = log_key(state.internal_id, base_offset);
            let mut stored = batch.to_vec();
            patch_for_append(&mut stored, base_offset, leader_epoch);

            let mut next = *state;
            next.offsets.log_end = last_offset + 1;
            next.size_bytes += u64::from(size);
            let mut writes = self.db.batch();
            writes.insert(&self.batches, key, stored);
            let entry = IndexEntry { last_offset, max_timestamp: header.max_timestamp, size };
            writes.insert(&self.index, key, entry.encode());
            if state.time_max.is_none_or(|max| header.max_timestamp > max) {
                writes.insert(&self.time, log_key(state.internal_id, header.max_timestamp), ordered(base_offset));
                next.time_max = Some(header.max_timestamp);
            }
            self.put_record(&mut writes, id, &next);
            self.commit(writes)?;
            *state = next;
            Ok(AppendResult { base_offset, last_offset })
        })
    }

    fn read(
        &self,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<FetchedBatch>, StorageError> {
        let state = self.snapshot(id)?;
        if !log_rules::check_read(&state.offsets, offset)? {
            return Ok(Vec::new());
        }
        let pid = state.internal_id;
        let start = self.batch_at_or_before(pid, offset)?.map_or(offset, |(base, _)| base);
        let end = upper_bound.min(state.offsets.log_end);
        if start >= end {
            return Ok(Vec::new());
        }
        let range = (Bound::Included(log_key(pid, start)), Bound::Excluded(log_key(pid, end)));
        let batches = self.batches.range(range).map(|guard| {
            let (key, value) = guard.into_inner()?;
            let base_offset = log_key_value(&key)?;
            let header = BatchHeader::parse(&value)?;
            Ok(FetchedBatch {
                base_offset,
                last_offset: base_offset + i64::from(header.last_offset_delta),
                max_timestamp: header.max_timestamp,
                // fjall built with `bytes_1`: the value is a `Bytes` view of the block it was read into
                bytes: Bytes::from(value),
            })
        });
        log_rules::collect_read(batches, offset, max_bytes, upper_bound)
    }

    fn offsets(&self, id: &PartitionId) -> Result<PartitionOffsets, StorageError> {
        Ok(self.snapshot(id)?.offsets)
    }

    fn set_high_watermark(&self, id: &PartitionId, high_watermark: i64) -> Result<(), StorageError> {
        self.with_partition(id, |state| {
            let mut next = *state;
            next.offsets.high_watermark = log_rules::clamp_high_watermark(&state.offsets, high_watermark);
            let mut batch = self.db.batch();
            self.put_record(&mut batch, id, &next);
            // Durable with the next sync or append, whatever the fsync policy.
            batch.durability(Some(PersistMode::Buffer)).commit()?;
            *state = next;
            Ok(())
        })
    }

    fn offset_for_timestamp(&self, id: &PartitionId, timestamp_ms: i64) -> Result<Option<i64>, StorageError> {
        let state = self.snapshot(id)?;
        let pid = state.internal_id;
        let Some(guard) = self.time.range(log_key(pid, timestamp_ms)..=log_key(pid, i64::MAX)).next() else {
            return Ok(None);
        };
        let base = from_ordered(&guard.value()?)?;
        Ok(Some(base.max(state.offsets.log_start)))
    }

    fn truncate_before(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.with_partition(id, |state| {
            let Some(offsets) = log_rules::truncate_before(state.offsets, offset) else {
                return Ok(());
            };
            let pid = state.internal_id;
            let mut next = *state;
            next.offsets = offsets;
            let mut writes = self.db.batch();
            let mut first_kept = None;
            let mut removed_any = false;
            for guard in self.index.range(partition_range(pid)) {
                let (key, value) = guard.into_inner()?;
                let entry = IndexEntry::decode(&value)?;
                if entry.last_offset >= offset {
                    first_kept = Some(log_key_value(&key)?);
                    break;
                }
                writes.remove(&self.batches, key.clone());
                writes.remove(&self.index, key);
                next.size_bytes = next.size_bytes.saturating_sub(u64::from(entry.size));
                removed_any = true;
            }
            if removed_any {
                next.time_max = self.rebuild_time_head(&mut writes, pid, first_kept, state.time_max)?;
            }
            self.put_record(&mut writes, id, &next);
            self.commit(writes)?;
            *state = next;
            Ok(())
        })
    }

    fn truncate_after(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.with_partition(id, |state| {
            if offset >= state.offsets.log_end {
                return Ok(());
            }
            let pid = state.internal_id;
            let cut_from = match self.batch_at_or_before(pid, offset)? {
                Some((base, entry)) if entry.last_offset >= offset => base,
                Some((base, _)) => base + 1,
                None => i64::MIN,
            };
            let mut next = *state;
            let mut writes = self.db.batch();
            let mut first_removed_base = None;
            for guard in self.index.range(log_key(pid, cut_from)..=log_key(pid, i64::MAX)) {
                let (key, value) = guard.into_inner()?;
                let entry = IndexEntry::decode(&value)?;
                first_removed_base.get_or_insert(log_key_value(&key)?);
                writes.remove(&self.batches, key.clone());
                writes.remove(&self.index, key);
                next.size_bytes = next.size_bytes.saturating_sub(u64::from(entry.size));
            }
            next.time_max = None;
            for guard in self.time.range(partition_range(pid)).rev() {
                let (key, value) = guard.into_inner()?;
                if from_ordered(&value)? < cut_from {
                    next.time_max = Some(log_key_value(&key)?);
                    break;
                }
                writes.remove(&self.time, key);
            }
            let last_remaining = self.batch_at_or_before(pid, cut_from.saturating_sub(1))?;
            let last_remaining = last_remaining.map(|(_, entry)| entry.last_offset);
            next.offsets = log_rules::truncate_after(state.offsets, offset, last_remaining, first_removed_base);
            self.put_record(&mut writes, id, &next);
            self.commit(writes)?;
            *state = next;
            Ok(())
        })
    }

    fn size_bytes(&self, id: &PartitionId) -> Result<u64, StorageError> {
        Ok(self.snapshot(id)?.size_bytes)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
