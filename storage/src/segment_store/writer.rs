//! The one write path of a [`super::SegmentStore`]: a thread that takes the appends of every
//! partition, writes each round of them, syncs each partition touched once (with
//! `fsync = always`), and only then tells each caller. A tokio worker never waits for the
//! disk: it submits and is told later; the cost of a sync is shared by every append of the
//! round, across partitions.

use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;

use super::{PartitionLog, SegmentOptions};
use crate::worker::QueueThread;
use crate::{Append, AppendDone, AppendResult, BatchHeader, FsyncPolicy, PartitionId, StorageError};

/// Appends taken in one round at most (a round also ends when nothing more is queued).
const MAX_ROUND: usize = 4096;

/// One submitted append.
pub(super) struct Job {
    pub(super) id: PartitionId,
    pub(super) partition: Arc<Mutex<PartitionLog>>,
    pub(super) append: Append,
    pub(super) header: BatchHeader,
    pub(super) done: AppendDone,
}

/// The writer thread and the queue into it.
/// Dropping it finishes every append already submitted, then stops.
pub(super) struct Writer(QueueThread<Job>);

/// The error of an append submitted after the writer stopped.
pub(super) fn stopped() -> StorageError {
    StorageError::Io(std::io::Error::other("the log writer has stopped"))
}

impl Writer {
    pub(super) fn start(options: SegmentOptions) -> Result<Self, StorageError> {
        let thread = QueueThread::start("tidewater-log-writer", move |queue: mpsc::Receiver<Job>| {
            while let Ok(first) = queue.recv() {
                let mut round = vec![first];
                while round.len() < MAX_ROUND {
                    match queue.try_recv() {
                        Ok(job) => round.push(job),
                        Err(_) => break,
                    }
                }
                run_round(&options, round);
            }
        })?;
        Ok(Self(thread))
    }

    pub(super) fn submit(&self, job: Job) {
        if let Err(job) = self.0.send(job) {
            (job.done)(Err(stopped()));
        }
    }
}

/// Writes every job, syncs each partition written once, then reports in submission order.
fn run_round(options: &SegmentOptions, round: Vec<Job>) {
    let mut results: Vec<Result<AppendResult, StorageError>> = Vec::with_capacity(round.len());
    // partitions written this round (in first-write order) and the first offset written
    let mut written: Vec<(Arc<Mutex<PartitionLog>>, i64)> = Vec::new();
    for job in &round {
        let mut log = job.partition.lock();
        let result = if log.deleted {
            Err(StorageError::unknown_partition(&job.id))
        } else {
            log.write(options, &job.append, job.header)
        };
        if let Ok(appended) = &result
            && !written.iter().any(|(partition, _)| Arc::ptr_eq(partition, &job.partition))
        {
            written.push((Arc::clone(&job.partition), appended.base_offset));
        }
        results.push(result);
    }
    if options.fsync == FsyncPolicy::Always {
        for (partition, first_base) in &written {
            let mut log = partition.lock();
            if log.deleted {
                continue;
            }
            if let Err(error) = log.sync_or_undo(options, *first_base) {
                tracing::error!(dir = %log.dir.display(), %error, "log sync failed: the round's appends are refused");
                for (job, result) in round.iter().zip(results.iter_mut()) {
                    if Arc::ptr_eq(&job.partition, partition) && result.is_ok() {
                        *result = Err(StorageError::Io(std::io::Error::other(format!("sync failed: {error}"))));
                    }
                }
            }
        }
    }
    for (job, result) in round.into_iter().zip(results) {
        (job.done)(result);
    }
}
