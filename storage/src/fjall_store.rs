//! The production [`StateStore`]: small keyed state in one fjall database (sessions,
//! retained messages, stream definitions, group offsets). Partition logs are segment files
//! (`segment_store`), not fjall values: fjall would write every batch twice.
//!
//! This is the disk behind the storage seam (and, for its interval fsync, one background
//! thread), so the seam lints do not apply to it.
//!
//! Layout: one keyspace per state space (`state.<name>`, created lazily).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use parking_lot::RwLock;

use crate::flusher::Flusher;
use crate::{StateOp, StateStore, StorageError};

/// Prefix of the keyspace holding one state space.
const STATE_PREFIX: &str = "state.";
/// A keyspace of the layout that kept partition logs in fjall (before segment files).
const OLD_LOG_KEYSPACE: &str = "log.batches";

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

/// A [`StateStore`] on a fjall database in one directory.
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
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("fsync", &self.fsync).finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (or creates) the store in `path`.
    ///
    /// A store of the layout that kept partition logs in fjall is refused: there has been
    /// no release, so it is not converted (README, "Changelog").
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<Self, StorageError> {
        std::fs::create_dir_all(path)?;
        let db = Database::builder(path).journal_compression(CompressionType::None).open()?;
        if db.keyspace_exists(OLD_LOG_KEYSPACE) {
            return Err(StorageError::CorruptMetadata(format!(
                "{} holds partition logs in the pre-segment layout, which this version does not read; \
                 start with an empty data_dir",
                path.display()
            )));
        }
        let mut store = Self { flusher: None, db, fsync, spaces: RwLock::new(BTreeMap::new()) };
        if let FsyncPolicy::Interval(interval) = fsync {
            let db = store.db.clone();
            let sync = move || db.persist(PersistMode::SyncAll).map_err(StorageError::from);
            store.flusher = Some(Flusher::start("tidewater-fsync", interval, sync)?);
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
    let full = format!("{STATE_PREFIX}{name}");
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
