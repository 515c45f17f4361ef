//! The in-memory twin of the fjall store, for unit tests and the deterministic simulation.
//!
//! Everything lives in `BTreeMap`s, so iteration order is fixed; nothing reads a clock or a
//! random source. It follows the same offset rules as the fjall store (`log_rules`).

use std::collections::BTreeMap;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::batch::{rewrite_for_append, validate_batch};
use crate::log_rules;
use crate::{AppendResult, FetchedBatch, LogStore, PartitionId, PartitionOffsets, StateOp, StateStore, StorageError};

/// A [`StateStore`] and [`LogStore`] held entirely in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<Spaces>,
    logs: RwLock<BTreeMap<PartitionId, MemoryLog>>,
}

/// State spaces by name, each a sorted map of keys to values.
type Spaces = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Default)]
struct MemoryLog {
    offsets: PartitionOffsets,
    /// Batches by base offset.
    batches: BTreeMap<i64, FetchedBatch>,
    size_bytes: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_log<T>(
        &self,
        id: &PartitionId,
        f: impl FnOnce(&MemoryLog) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let logs = self.logs.read();
        let log = logs.get(id).ok_or_else(|| StorageError::unknown_partition(id))?;
        f(log)
    }

    fn with_log_mut<T>(
        &self,
        id: &PartitionId,
        f: impl FnOnce(&mut MemoryLog) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut logs = self.logs.write();
        let log = logs.get_mut(id).ok_or_else(|| StorageError::unknown_partition(id))?;
        f(log)
    }
}

fn prefix_keys(space: &BTreeMap<Vec<u8>, Vec<u8>>, prefix: &[u8]) -> Vec<Vec<u8>> {
    space.range(prefix.to_vec()..).take_while(|(key, _)| key.starts_with(prefix)).map(|(key, _)| key.clone()).collect()
}

impl StateStore for MemoryStore {
    fn put(&self, space: &'static str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.state.lock().entry(space).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn get(&self, space: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state.lock().get(space).and_then(|entries| entries.get(key).cloned()))
    }

    fn delete(&self, space: &'static str, key: &[u8]) -> Result<(), StorageError> {
        if let Some(entries) = self.state.lock().get_mut(space) {
            entries.remove(key);
        }
        Ok(())
    }

    fn write_batch(&self, ops: Vec<StateOp>) -> Result<(), StorageError> {
        let mut state = self.state.lock();
        for op in ops {
            match op {
                StateOp::Put { space, key, value } => {
                    state.entry(space).or_default().insert(key, value);
                }
                StateOp::Delete { space, key } => {
                    if let Some(entries) = state.get_mut(space) {
                        entries.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let state = self.state.lock();
        let Some(entries) = state.get(space) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn delete_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<(), StorageError> {
        let mut state = self.state.lock();
        if let Some(entries) = state.get_mut(space) {
            for key in prefix_keys(entries, prefix) {
                entries.remove(&key);
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl LogStore for MemoryStore {
    fn create_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.logs.write().entry(id.clone()).or_default();
        Ok(())
    }

    fn delete_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.logs.write().remove(id);
        Ok(())
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(self.logs.read().keys().cloned().collect())
    }

    fn append(&self, id: &PartitionId, leader_epoch: i32, batch: Bytes) -> Result<AppendResult, StorageError> {
        let header = validate_batch(&batch)?;
        self.with_log_mut(id, |log| {
            let base_offset = log.offsets.log_end;
            let last_offset = base_offset + i64::from(header.last_offset_delta);
            let bytes = rewrite_for_append(&batch, base_offset, leader_epoch);
            log.size_bytes += bytes.len() as u64;
            log.batches.insert(
                base_offset,
                FetchedBatch { base_offset, last_offset, max_timestamp: header.max_timestamp, bytes },
            );
            log.offsets.log_end = last_offset + 1;
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

    fn set_high_watermark(&self, id: &PartitionId, high_watermark: i64) -> Result<(), StorageError> {
        self.with_log_mut(id, |log| {
            log.offsets.high_watermark = log_rules::clamp_high_watermark(&log.offsets, high_watermark);
            Ok(())
        })
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
        self.with_log_mut(id, |log| {
            let Some(offsets) = log_rules::truncate_before(log.offsets, offset) else {
                return Ok(());
            };
            while let Some(entry) = log.batches.first_entry() {
                if entry.get().last_offset >= offset {
                    break;
                }
                log.size_bytes -= entry.remove().bytes.len() as u64;
            }
            log.offsets = offsets;
            Ok(())
        })
    }

    fn truncate_after(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.with_log_mut(id, |log| {
            if offset >= log.offsets.log_end {
                return Ok(());
            }
            let mut first_removed_base = None;
            while let Some(entry) = log.batches.last_entry() {
                if entry.get().last_offset < offset {
                    break;
                }
                first_removed_base = Some(*entry.key());
                log.size_bytes -= entry.remove().bytes.len() as u64;
            }
            let last_remaining = log.batches.values().next_back().map(|batch| batch.last_offset);
            log.offsets = log_rules::truncate_after(log.offsets, offset, last_remaining, first_removed_base);
            Ok(())
        })
    }

    fn size_bytes(&self, id: &PartitionId) -> Result<u64, StorageError> {
        self.with_log(id, |log| Ok(log.size_bytes))
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
