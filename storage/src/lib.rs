//! The storage seams of a Tidewater node.
//!
//! Two traits, each with a production implementation and an in-memory twin that the
//! deterministic simulation uses:
//! - [`StateStore`]: small keyed state in named spaces (persistent MQTT sessions, retained
//!   messages, stream definitions, group offsets), on fjall;
//! - [`LogStore`]: partition logs of Kafka `RecordBatch` v2 bytes, indexed by offset and time,
//!   as segment files ([`SegmentStore`]).
//!
//! Node code never touches the disk directly: it holds an `Arc<dyn StateStore>` and an
//! `Arc<dyn LogStore>` in its per-node context.

mod batch;
mod error;
mod fjall_store;
mod flusher;
mod log;
mod log_rules;
mod memory;
mod producers;
mod segment_store;
mod worker;

#[cfg(test)]
mod conformance_tests;

pub use batch::{
    BATCH_HEADER_LEN, BatchHeader, DecodedRecord, NewRecord, build_record_batch, check_records, decode_records,
    patch_for_append, set_producer, split_batches, validate_batch,
};
pub use error::StorageError;
pub use fjall_store::{FjallStore, FsyncPolicy};
pub use log::{
    Append, AppendDone, AppendResult, FetchedBatch, LogStore, PartitionId, PartitionOffsets, Retention, retention_point,
};
pub use log_rules::EpochHistory;
pub use memory::MemoryStore;
pub use producers::{ProducerCheck, ProducerTable};
pub use segment_store::{SegmentOptions, SegmentStore};

/// One write in an atomic [`StateStore::write_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    /// Insert or overwrite `key` in `space`.
    Put { space: &'static str, key: Vec<u8>, value: Vec<u8> },
    /// Remove `key` from `space` (no error if absent).
    Delete { space: &'static str, key: Vec<u8> },
}

/// Keyed state in named spaces; keys are ordered bytewise.
///
/// Writes are visible to reads at once; they are durable after [`StateStore::sync`] or,
/// between syncs, according to the store's fsync policy.
pub trait StateStore: Send + Sync + 'static {
    /// Inserts or overwrites a value.
    fn put(&self, space: &'static str, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Reads a value.
    fn get(&self, space: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Removes a value; removing an absent key is not an error.
    fn delete(&self, space: &'static str, key: &[u8]) -> Result<(), StorageError>;
    /// Applies all operations atomically: after a crash either all or none are present.
    fn write_batch(&self, ops: Vec<StateOp>) -> Result<(), StorageError>;
    /// All entries whose key starts with `prefix`, in key order.
    #[allow(clippy::type_complexity)] // the seam's signature is fixed; (key, value) pairs
    fn scan_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// Removes every entry whose key starts with `prefix`.
    fn delete_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<(), StorageError>;
    /// Makes every write so far durable (fsync).
    fn sync(&self) -> Result<(), StorageError>;
}
