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

/// Where a partition's log starts and ends. The high watermark is not the store's: the
/// partition owns it (one past what it has committed), and truncation never moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionOffsets {
    /// The first offset still stored (Kafka's log start offset).
    pub log_start: i64,
    /// One past the last stored offset (Kafka's log end offset).
    pub log_end: i64,
}

/// The outcome of appending one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The offset given to the batch's first record.
    pub base_offset: i64,
    /// The offset of the batch's last record.
    pub last_offset: i64,
}

/// One append: a batch and where it must go.
#[derive(Debug, Clone)]
pub struct Append {
    /// The RecordBatch v2 bytes as received (validated by the store).
    pub batch: Bytes,
    /// The partition leader epoch stamped into the batch (outside its CRC); a higher epoch
    /// than any before starts a new entry of the epoch history at this batch.
    pub leader_epoch: i32,
    /// The offset the batch must start at: a leader's own count of its log end, or the
    /// offset a follower was sent. A log that ends elsewhere fails the append with
    /// [`StorageError::NotAtLogEnd`] and nothing is written.
    pub base_offset: i64,
}

/// Told the outcome of a [`LogStore::submit`].
pub type AppendDone = Box<dyn FnOnce(Result<AppendResult, StorageError>) + Send>;

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
    /// Appends one RecordBatch v2 at `append.base_offset`, which must be the log end:
    /// rewrites the batch's base offset and partition leader epoch, recomputes nothing else
    /// (the CRC does not cover those fields), stores it, and returns its offsets. It is
    /// written, and synced when the fsync policy is `always`, before this returns.
    fn append_at(&self, id: &PartitionId, append: Append) -> Result<AppendResult, StorageError>;
    /// [`LogStore::append_at`] at the current log end (for a caller that is the partition's
    /// only writer and has nothing in flight).
    fn append(&self, id: &PartitionId, leader_epoch: i32, batch: Bytes) -> Result<AppendResult, StorageError> {
        let base_offset = self.offsets(id)?.log_end;
        self.append_at(id, Append { batch, leader_epoch, base_offset })
    }
    /// Queues an append without waiting for the disk: `done` is told its outcome once it is
    /// written and, with `fsync = always`, synced. A store with a writer thread calls `done`
    /// there; this default appends at once and calls `done` before returning. Appends of one
    /// partition complete in the order they were submitted; one that fails makes every later
    /// one already submitted fail too (their base offsets no longer match the log end).
    fn submit(&self, id: &PartitionId, append: Append, done: AppendDone) {
        done(self.append_at(id, append));
    }
    /// Kafka's OffsetForLeaderEpoch from the persisted epoch history: the largest epoch at
    /// or below `epoch` and the offset where it ended (the log end for the latest epoch), or
    /// `None` when `epoch` is above every epoch known or the history is empty.
    fn end_offset_for_epoch(&self, id: &PartitionId, epoch: i32) -> Result<Option<(i32, i64)>, StorageError>;
    /// Whole batches from the one containing `offset`, up to about `max_bytes` (at least one
    /// batch when any exists at or after `offset`), stopping before `upper_bound`.
    fn read(
        &self,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<FetchedBatch>, StorageError>;
    /// The partition's log start and log end.
    fn offsets(&self, id: &PartitionId) -> Result<PartitionOffsets, StorageError>;
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

/// A stream's retention: how long records are kept and how many bytes a partition may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// records older than this (ms) go
    pub ms: Option<i64>,
    /// the oldest batches go while the partition holds more than this
    pub bytes: Option<u64>,
}

/// Where `retention` at `now_ms` keeps partition `id` from: the later of what the time limit
/// and the size limit keep, always a batch boundary; `None` when nothing has to go. The
/// caller caps it at what it may drop (never past its high watermark).
pub fn retention_point(
    store: &dyn LogStore,
    id: &PartitionId,
    now_ms: i64,
    retention: Retention,
) -> Result<Option<i64>, StorageError> {
    let offsets = store.offsets(id)?;
    let mut keep_from = offsets.log_start;
    if let Some(ms) = retention.ms {
        let by_time = store.offset_for_timestamp(id, now_ms.saturating_sub(ms))?.unwrap_or(offsets.log_end);
        keep_from = keep_from.max(by_time);
    }
    if let Some(limit) = retention.bytes
        && let Some(by_size) = store.retention_offset_for_bytes(id, limit)?
    {
        keep_from = keep_from.max(by_size);
    }
    Ok((keep_from > offsets.log_start).then_some(keep_from))
}
