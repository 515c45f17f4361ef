//! Reopening a fjall store: finishing interrupted deletions, checking each partition's
//! tail batches and cutting those that fail validation, and deriving offsets from the data.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjall::PersistMode;
use parking_lot::Mutex;

use super::keys::{self, IndexEntry, PartitionRecord, from_ordered, log_key_value, partition_range};
use super::{FjallStore, PartitionState};
use crate::batch::validate_batch;
use crate::{PartitionId, StorageError, log_rules};

impl FjallStore {
    /// Loads every partition from the meta keyspace; called once by `open`.
    pub(super) fn recover(&mut self) -> Result<(), StorageError> {
        let mut next_id = match self.meta.get(keys::NEXT_ID_KEY)? {
            Some(value) => u64::from_be_bytes(
                value[..]
                    .try_into()
                    .map_err(|_| StorageError::CorruptMetadata("next partition id is not 8 bytes".into()))?,
            ),
            None => 1,
        };
        let mut records = Vec::new();
        let mut deleting = Vec::new();
        for guard in self.meta.iter() {
            let (key, value) = guard.into_inner()?;
            if let Some(id) = keys::parse_partition_key(&key)? {
                records.push((id, PartitionRecord::decode(&value)?));
            } else if let Some(pid) = keys::parse_deleting_key(&key)? {
                deleting.push(pid);
            }
        }
        for pid in deleting {
            next_id = next_id.max(pid + 1);
            self.purge(pid)?;
        }
        let mut partitions = BTreeMap::new();
        for (id, record) in records {
            next_id = next_id.max(record.internal_id + 1);
            let state = self.recover_partition(&id, record)?;
            partitions.insert(id, Arc::new(Mutex::new(state)));
        }
        *self.partitions.get_mut() = partitions;
        *self.next_internal_id.get_mut() = next_id;
        Ok(())
    }

    /// Validates the partition's batches from the tail back to the first intact one,
    /// removes the invalid ones, and returns the partition's state.
    fn recover_partition(&self, id: &PartitionId, record: PartitionRecord) -> Result<PartitionState, StorageError> {
        let pid = record.internal_id;
        let mut offsets = record.offsets;
        let mut size_bytes = record.size_bytes;
        let mut writes = self.db.batch();
        let mut cut_from = None;
        let mut last_valid = None;
        for guard in self.batches.range(partition_range(pid)).rev() {
            let (key, value) = guard.into_inner()?;
            let base = log_key_value(&key)?;
            let entry = self.index.get(key.clone())?.map(|value| IndexEntry::decode(&value)).transpose()?;
            match check_stored(base, &value, entry) {
                Ok(last_offset) => {
                    last_valid = Some(last_offset);
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        stream = %id.stream,
                        partition = id.partition,
                        base_offset = base,
                        %error,
                        "cutting corrupt batch at the log tail"
                    );
                    writes.remove(&self.batches, key.clone());
                    writes.remove(&self.index, key);
                    // Only batches with an index entry were ever counted.
                    let stored = entry.map_or(0, |entry| u64::from(entry.size));
                    size_bytes = size_bytes.saturating_sub(stored);
                    cut_from = Some(base);
                }
            }
        }

        let mut time_max = None;
        for guard in self.time.range(partition_range(pid)).rev() {
            let (key, value) = guard.into_inner()?;
            let base = from_ordered(&value)?;
            if cut_from.is_none_or(|cut| base < cut) {
                time_max = Some(log_key_value(&key)?);
                break;
            }
            writes.remove(&self.time, key);
        }

        if let Some(cut) = cut_from {
            offsets = log_rules::truncate_after(offsets, cut, last_valid, Some(cut));
        } else if let Some(last) = last_valid {
            // The data is the truth: the record is written with every append.
            offsets.log_end = last + 1;
        }
        if let Some(guard) = self.index.range(partition_range(pid)).next() {
            let first_base = log_key_value(&guard.key()?)?;
            if cut_from.is_none_or(|cut| first_base < cut) {
                offsets.log_start = offsets.log_start.max(first_base);
            }
        }
        offsets.log_start = offsets.log_start.min(offsets.log_end);
        offsets.high_watermark = log_rules::clamp_high_watermark(&offsets, offsets.high_watermark);

        let state = PartitionState { internal_id: pid, offsets, size_bytes, time_max, deleted: false };
        if state.offsets != record.offsets || state.size_bytes != record.size_bytes {
            self.put_record(&mut writes, id, &state);
        }
        if !writes.is_empty() {
            writes.durability(Some(PersistMode::SyncAll)).commit()?;
        }
        Ok(state)
    }
}

/// Checks one stored batch against its key and index entry; returns its last offset.
fn check_stored(base: i64, value: &[u8], entry: Option<IndexEntry>) -> Result<i64, StorageError> {
    let header = validate_batch(value)?;
    if header.base_offset != base {
        return Err(StorageError::invalid_batch(format!("stored base offset {} under key {base}", header.base_offset)));
    }
    let entry = entry.ok_or_else(|| StorageError::invalid_batch("no index entry"))?;
    if entry.last_offset != header.last_offset() || u64::from(entry.size) != value.len() as u64 {
        return Err(StorageError::invalid_batch("index entry does not match the batch"));
    }
    Ok(header.last_offset())
}
