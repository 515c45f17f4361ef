//! The production store: state spaces and partition logs in one fjall database.
//!
//! This is the disk behind the storage seam (and, for its interval fsync, the crate's one
//! thread), so the seam lints do not apply to it.
//!
//! Layout (see `keys`): one keyspace per state space (`state.<name>`, created lazily), and
//! four shared log keyspaces keyed by a partition's internal id, so a fetch from any offset
//! is a reverse point lookup in the index and a forward range over the batches.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod keys;
mod log;
mod recovery;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, OwnedWriteBatch, PersistMode,
};
use parking_lot::{Mutex, RwLock};

use crate::{PartitionId, PartitionOffsets, StateOp, StateStore, StorageError};

/// When writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every write and append is fsynced before it returns.
    Always,
    /// Writes reach the OS at once and are fsynced by a background flush at this interval.
    Interval(Duration),
}

impl FromStr for FsyncPolicy {
    type Err = StorageError;

    /// Parses `always` or `interval:<ms>` (at least 1 ms).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || StorageError::InvalidFsyncPolicy(text.to_owned());
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("always") {
            return Ok(Self::Always);
        }
        let millis = trimmed.strip_prefix("interval:").ok_or_else(invalid)?;
        let millis: u64 = millis.trim().parse().map_err(|_| invalid())?;
        if millis == 0 {
            return Err(invalid());
        }
        Ok(Self::Interval(Duration::from_millis(millis)))
    }
}

/// A [`StateStore`] and [`crate::LogStore`] on a fjall database in one directory.
///
/// With [`FsyncPolicy::Interval`] the store owns one background thread that fsyncs the
/// journal at that interval (fjall 3 has no timed fsync of its own); it stops, after a last
/// fsync, when the store is dropped.
pub struct FjallStore {
    /// Declared first so it stops (and fsyncs) before the database handles drop.
    flusher: Option<Flusher>,
    db: Database,
    fsync: FsyncPolicy,
    spaces: RwLock<BTreeMap<&'static str, Keyspace>>,
    batches: Keyspace,
    index: Keyspace,
    time: Keyspace,
    meta: Keyspace,
    partitions: RwLock<BTreeMap<PartitionId, Arc<Mutex<PartitionState>>>>,
    next_internal_id: Mutex<u64>,
}

/// The live state of one partition; its mutex serializes writers of that partition.
#[derive(Debug, Clone, Copy)]
struct PartitionState {
    internal_id: u64,
    offsets: PartitionOffsets,
    size_bytes: u64,
    /// The largest max timestamp stored so far (the time index's last key).
    time_max: Option<i64>,
    /// Set once the partition is deleted, for writers that raced the deletion.
    deleted: bool,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("fsync", &self.fsync).finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (or creates) the store in `path`, cutting any corrupt log tail.
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<Self, StorageError> {
        std::fs::create_dir_all(path)?;
        // values of 4 KiB and more (every Kafka batch of any size) would be LZ4-compressed into
        // the journal by default: 15 % of the broker's CPU at 280 MB/s of incompressible produce
        let db = Database::builder(path).journal_compression(CompressionType::None).open()?;
        // batches are stored as the producer sent them, as Kafka does: a batch the client
        // compressed is not compressed again, and fjall's LZ4 over incompressible values cost
        // CPU on every write and every read (backlog consume 1.0 vs 1.4 GB/s, BENCHMARKS.md)
        let batches = db.keyspace(keys::BATCHES, || {
            KeyspaceCreateOptions::default()
                .with_kv_separation(Some(KvSeparationOptions::default().compression(CompressionType::None)))
        })?;
        let index = db.keyspace(keys::INDEX, KeyspaceCreateOptions::default)?;
        let time = db.keyspace(keys::TIME, KeyspaceCreateOptions::default)?;
        let meta = db.keyspace(keys::META, KeyspaceCreateOptions::default)?;
        let mut store = Self {
            flusher: None,
            db,
            fsync,
            spaces: RwLock::new(BTreeMap::new()),
            batches,
            index,
            time,
            meta,
            partitions: RwLock::new(BTreeMap::new()),
            next_internal_id: Mutex::new(1),
        };
        store.recover()?;
        if let FsyncPolicy::Interval(interval) = fsync {
            store.flusher = Some(Flusher::start(store.db.clone(), interval)?);
        }
        Ok(store)
    }

    /// The fsync policy the store was opened with.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.fsync
    }

    /// Commits `batch` with the durability of the fsync policy.
    fn commit(&self, batch: OwnedWriteBatch) -> Result<(), StorageError> {
        let mode = match self.fsync {
            FsyncPolicy::Always => PersistMode::SyncData,
            FsyncPolicy::Interval(_) => PersistMode::Buffer,
        };
        batch.durability(Some(mode)).commit()?;
        Ok(())
    }

    /// The keyspace of a state space, created on first use.
    fn space(&self, name: &'static str) -> Result<Keyspace, StorageError> {
        if let Some(space) = self.spaces.read().get(name) {
            return Ok(space.clone());
        }
        let mut spaces = self.spaces.write();
        if let Some(space) = spaces.get(name) {
            return Ok(space.clone());
        }
        let space = self.db.keyspace(&space_name(name)?, KeyspaceCreateOptions::default)?;
        spaces.insert(name, space.clone());
        Ok(space)
    }

    /// The keyspace of a state space if it was ever written, without creating it.
    fn existing_space(&self, name: &'static str) -> Result<Option<Keyspace>, StorageError> {
        if let Some(space) = self.spaces.read().get(name) {
            return Ok(Some(space.clone()));
        }
        if !self.db.keyspace_exists(&space_name(name)?) {
            return Ok(None);
        }
        self.space(name).map(Some)
    }
}

/// The keyspace name of a state space (fjall allows 1 to 255 bytes).
fn space_name(name: &str) -> Result<String, StorageError> {
    let full = format!("{}{name}", keys::STATE_PREFIX);
    if name.is_empty() || full.len() > 255 {
        return Err(StorageError::InvalidSpaceName(name.to_owned()));
    }
    Ok(full)
}

impl StateStore for FjallStore {
    fn put(&self, space: &'static str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let keyspace = self.space(space)?;
        let mut batch = self.db.batch();
        batch.insert(&keyspace, key, value);
        self.commit(batch)
    }

    fn get(&self, space: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(keyspace) = self.existing_space(space)? else {
            return Ok(None);
        };
        Ok(keyspace.get(key)?.map(|value| value.to_vec()))
    }

    fn delete(&self, space: &'static str, key: &[u8]) -> Result<(), StorageError> {
        let Some(keyspace) = self.existing_space(space)? else {
            return Ok(());
        };
        let mut batch = self.db.batch();
        batch.remove(&keyspace, key);
        self.commit(batch)
    }

    fn write_batch(&self, ops: Vec<StateOp>) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                StateOp::Put { space, key, value } => batch.insert(&self.space(space)?, key, value),
                StateOp::Delete { space, key } => batch.remove(&self.space(space)?, key),
            }
        }
        self.commit(batch)
    }

    fn scan_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let Some(keyspace) = self.existing_space(space)? else {
            return Ok(Vec::new());
        };
        keyspace
            .prefix(prefix)
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    fn delete_prefix(&self, space: &'static str, prefix: &[u8]) -> Result<(), StorageError> {
        let Some(keyspace) = self.existing_space(space)? else {
            return Ok(());
        };
        let mut batch = self.db.batch();
        for guard in keyspace.prefix(prefix) {
            batch.remove(&keyspace, guard.key()?);
        }
        self.commit(batch)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}

/// The background fsync of [`FsyncPolicy::Interval`].
struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(db: Database, interval: Duration) -> Result<Self, StorageError> {
        let interval = interval.max(Duration::from_millis(1));
        let (stop, stopped) = mpsc::channel::<()>();
        // The one thread of this crate: fjall 3 cannot fsync on a timer itself, and the
        // store is only used outside the simulation (which uses `MemoryStore`).
        let thread = std::thread::Builder::new().name("tidewater-fsync".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                if let Err(error) = db.persist(PersistMode::SyncAll) {
                    tracing::error!(%error, "periodic fsync failed");
                }
            }
            if let Err(error) = db.persist(PersistMode::SyncAll) {
                tracing::error!(%error, "final fsync failed");
            }
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("fsync thread panicked");
        }
    }
}
