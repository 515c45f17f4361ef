//! The simulated log writer: the node's [`LogStore`] is the in-memory model, but its appends
//! go, as in production, through a queue that one writer drains in rounds, each after a
//! delay drawn from the seed (a disk's write and sync time). Partitions therefore run with
//! appends in flight, reports arrive later than the submit, and a crash loses what was still
//! queued, all of it replayable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidewater_storage::{
    Append, AppendDone, AppendResult, FetchedBatch, LogStore, MemoryStore, PartitionId, PartitionOffsets, StorageError,
};
use tokio::sync::mpsc;

/// One queued append.
struct Job {
    id: PartitionId,
    append: Append,
    done: AppendDone,
}

/// A [`MemoryStore`] whose `submit` goes through a simulated writer.
pub struct SimulatedLog {
    store: Arc<MemoryStore>,
    /// The queue into the writer of the current boot (`None` before the first).
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// The longest delay before a round is written (0: every append is written at once).
    max_delay_ms: u64,
}

impl SimulatedLog {
    /// A writer over `store` with rounds delayed by up to `max_delay_ms`.
    pub fn new(store: Arc<MemoryStore>, max_delay_ms: u64) -> Self {
        Self { store, queue: Mutex::new(None), max_delay_ms }
    }

    /// Starts the writer of a new boot on the current (host's) runtime; the previous boot's
    /// writer died with its host, and what it still held was never written.
    pub fn start_writer(&self, seed: u64) {
        let (sender, mut jobs) = mpsc::unbounded_channel::<Job>();
        *self.queue.lock().expect("writer queue lock") = Some(sender);
        if self.max_delay_ms == 0 {
            return; // appends are written inside `submit`
        }
        let (store, max_delay_ms) = (Arc::clone(&self.store), self.max_delay_ms);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while let Some(first) = jobs.recv().await {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=max_delay_ms))).await;
                let mut round = vec![first];
                while let Ok(job) = jobs.try_recv() {
                    round.push(job);
                }
                for job in round {
                    (job.done)(store.append_at(&job.id, job.append));
                }
            }
        });
    }
}

impl LogStore for SimulatedLog {
    fn create_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.store.create_partition(id)
    }
    fn delete_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        self.store.delete_partition(id)
    }
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        self.store.partitions()
    }
    fn append_at(&self, id: &PartitionId, append: Append) -> Result<AppendResult, StorageError> {
        self.store.append_at(id, append)
    }
    fn submit(&self, id: &PartitionId, append: Append, done: AppendDone) {
        if self.max_delay_ms == 0 {
            return done(self.store.append_at(id, append));
        }
        let job = Job { id: id.clone(), append, done };
        let queue = self.queue.lock().expect("writer queue lock");
        let refused = match queue.as_ref() {
            Some(sender) => sender.send(job).err().map(|mpsc::error::SendError(job)| job),
            None => Some(job),
        };
        drop(queue);
        if let Some(job) = refused {
            (job.done)(Err(StorageError::Io(std::io::Error::other("the simulated writer has stopped"))));
        }
    }
    fn end_offset_for_epoch(&self, id: &PartitionId, epoch: i32) -> Result<Option<(i32, i64)>, StorageError> {
        self.store.end_offset_for_epoch(id, epoch)
    }
    fn read(
        &self,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<FetchedBatch>, StorageError> {
        self.store.read(id, offset, max_bytes, upper_bound)
    }
    fn offsets(&self, id: &PartitionId) -> Result<PartitionOffsets, StorageError> {
        self.store.offsets(id)
    }
    fn offset_for_timestamp(&self, id: &PartitionId, timestamp_ms: i64) -> Result<Option<i64>, StorageError> {
        self.store.offset_for_timestamp(id, timestamp_ms)
    }
    fn truncate_before(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.store.truncate_before(id, offset)
    }
    fn truncate_after(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        self.store.truncate_after(id, offset)
    }
    fn size_bytes(&self, id: &PartitionId) -> Result<u64, StorageError> {
        self.store.size_bytes(id)
    }
    fn retention_offset_for_bytes(&self, id: &PartitionId, limit: u64) -> Result<Option<i64>, StorageError> {
        self.store.retention_offset_for_bytes(id, limit)
    }
    fn sync(&self) -> Result<(), StorageError> {
        LogStore::sync(self.store.as_ref())
    }
}
