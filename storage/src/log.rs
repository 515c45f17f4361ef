//! The partition log seam: Kafka RecordBatch v2 bytes per (stream, partition).

use bytes::Bytes;

use crate::StorageError;

/// Names one partition of one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId {
    /// The stream (Kafka topic) name.
    pub stream: String,
    /// The partition index.
    pub partition: u32,
}

/// Where a partition's log starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionOffsets {
    /// The first offset still stored (Kafka's log start offset).
    pub log_start: i64,
    /// One past the last stored offset (Kafka's log end offset).
    pub log_end: i64,
    /// One past the last committed offset; consumers never read at or past it.
    pub high_watermark: i64,
}

/// The outcome of appending one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The offset given to the batch's first record.
    pub base_offset: i64,
    /// The offset of the batch's last record.
    pub last_offset: i64,
}

/// One stored batch handed back by a fetch, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatch {
    /// The batch's base offset.
    pub base_offset: i64,
    /// The batch's last offset.
    pub last_offset: i64,
    /// The batch's max timestamp (ms since the epoch).
    pub max_timestamp: i64,
    /// The RecordBatch v2 bytes with base offset and leader epoch rewritten.
    pub bytes: Bytes,
}

/// Partition logs of RecordBatch v2 bytes, indexed by offset and by timestamp.
pub trait LogStore: Send + Sync + 'static {
    /// Creates the partition if absent (idempotent).
    fn create_partition(&self, id: &PartitionId) -> Result<(), StorageError>;
    /// Removes the partition and all its data.
    fn delete_partition(&self, id: &PartitionId) -> Result<(), StorageError>;
    /// All partitions present, in order.
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError>;
    /// Appends one RecordBatch v2: rewrites its base offset to the log end and its
    /// partition leader epoch to `leader_epoch`, recomputes nothing else (the CRC does not
    /// cover those fields), stores it, and returns the assigned offsets.
    fn append(&self, id: &PartitionId, leader_epoch: i32, batch: Bytes) -> Result<AppendResult, StorageError>;
    /// Whole batches from the one containing `offset`, up to about `max_bytes` (at least one
    /// batch when any exists at or after `offset`), stopping before `upper_bound`.
    fn read(
        &self,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<FetchedBatch>, StorageError>;
    /// The partition's start, end and high watermark.
    fn offsets(&self, id: &PartitionId) -> Result<PartitionOffsets, StorageError>;
    /// Records the high watermark (durable with the next sync).
    fn set_high_watermark(&self, id: &PartitionId, high_watermark: i64) -> Result<(), StorageError>;
    /// The first offset of the first batch whose max timestamp is at or after `timestamp_ms`,
    /// or `None` when every batch is older.
    fn offset_for_timestamp(&self, id: &PartitionId, timestamp_ms: i64) -> Result<Option<i64>, StorageError>;
    /// Removes whole batches that end before `offset` and moves the log start forward.
    fn truncate_before(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError>;
    /// Removes every batch at or after `offset` (a follower cutting a divergent suffix).
    fn truncate_after(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError>;
    /// Total stored bytes of the partition.
    fn size_bytes(&self, id: &PartitionId) -> Result<u64, StorageError>;
    /// Where retention by size keeps the log from: the first batch boundary from which the
    /// batches to the end fit in `limit` bytes, but never past the last batch's start;
    /// `None` when nothing has to go.
    fn retention_offset_for_bytes(&self, id: &PartitionId, limit: u64) -> Result<Option<i64>, StorageError>;
    /// Makes every append so far durable (fsync).
    fn sync(&self) -> Result<(), StorageError>;
}
