//! The production [`LogStore`]: each partition is a directory of append-only segment files.
//!
//! A segment holds RecordBatch v2 bytes back to back, exactly as a Fetch returns them; it is
//! rolled when it would pass `segment_bytes`, or when a batch's max timestamp is
//! `segment_ms` past the segment's first (Kafka's `segment.ms`, measured on record time so
//! that no clock is read here). Sealed segments are never written again; their sparse
//! offset and time indexes are written beside them once, at sealing. Opening a log reads
//! the index files of sealed segments and scans only the active segment, checking each
//! batch's CRC and cutting a torn or corrupt tail.
//!
//! Retention and `truncate_before` move the log start and remove every whole segment below
//! it, so disk follows at once; batches of the first segment that are below the log start
//! stay on disk, unreadable, until their segment goes. `truncate_after` cuts files back.
//!
//! This is the disk behind the storage seam (with, for the interval fsync, one background
//! thread), so the seam lints do not apply to it.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod files;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use self::segment::{Segment, SegmentView, read_batches, remove_if_present, write_synced};
use crate::batch::{rewrite_for_append, validate_batch};
use crate::flusher::Flusher;
use crate::{
    Append, AppendDone, AppendResult, EpochHistory, FetchedBatch, FsyncPolicy, LogStore, PartitionId, PartitionOffsets,
    StorageError, log_rules,
};

/// How a [`SegmentStore`] lays out and syncs its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOptions {
    /// When appends reach the disk.
    pub fsync: FsyncPolicy,
    /// A segment is rolled before it would grow past this many bytes (one larger batch
    /// still gets a segment of its own).
    pub segment_bytes: u64,
    /// A segment is rolled when a batch's max timestamp is this many ms past the segment's
    /// first batch.
    pub segment_ms: i64,
    /// Bytes of batches between two entries of a segment's sparse indexes.
    pub index_interval_bytes: u64,
}

impl SegmentOptions {
    /// The largest `segment_bytes` (file positions are 32-bit, as in Kafka).
    pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
        }
    }
}

/// Partition logs as segment files under one directory.
pub struct SegmentStore {
    /// Declared first: it finishes what was submitted before the flusher stops.
    writer: Option<writer::Writer>,
    /// Stops before the final sync in `drop`.
    flusher: Option<Flusher>,
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    options: SegmentOptions,
    partitions: RwLock<BTreeMap<PartitionId, Arc<Mutex<PartitionLog>>>>,
    /// Names staging and deleted directories uniquely within this process.
    scratch: AtomicU64,
}

/// One partition: its segments (never empty; the last is the active one) and offsets.
struct PartitionLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    log_start: i64,
    /// Position in the first segment of its first batch at or after the log start.
    live_from: u64,
    /// The active segment has writes not yet synced.
    data_dirty: bool,
    /// The offsets changed since `partition.meta` was last written and synced.
    meta_dirty: bool,
    /// Set once deleted, for writers that raced the deletion.
    deleted: bool,
    /// Leader epochs and where each started, as on disk in `leader-epoch-checkpoint`.
    epochs: EpochHistory,
}

impl std::fmt::Debug for SegmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentStore")
            .field("root", &self.inner.root)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

const CREATING: &str = ".creating-";
const DELETING: &str = ".deleting-";

impl SegmentStore {
    /// Opens (or creates) the logs under `root`, finishing interrupted creations and
    /// deletions and cutting torn tails.
    pub fn open(root: &Path, options: SegmentOptions) -> Result<Self, StorageError> {
        if options.segment_bytes == 0 || options.segment_bytes > SegmentOptions::MAX_SEGMENT_BYTES {
            return Err(StorageError::CorruptMetadata(format!(
                "segment_bytes {} outside 1..={}",
                options.segment_bytes,
                SegmentOptions::MAX_SEGMENT_BYTES
            )));
        }
        std::fs::create_dir_all(root)?;
        let mut partitions = BTreeMap::new();
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            names.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
        names.sort();
        for (name, path) in names {
            if name.starts_with(CREATING) || name.starts_with(DELETING) {
                std::fs::remove_dir_all(&path)?;
                continue;
            }
            let Some((stream, partition)) = files::parse_partition_dir_name(&name) else {
                tracing::warn!(path = %path.display(), "ignoring an entry that is not a partition directory");
                continue;
            };
            let log = PartitionLog::load(path, &options)?;
            partitions.insert(PartitionId { stream, partition }, Arc::new(Mutex::new(log)));
        }
        sync_dir(root)?;
        let inner = Arc::new(Inner {
            root: root.to_owned(),
            options,
            partitions: RwLock::new(partitions),
            scratch: AtomicU64::new(0),
        });
        let flusher = match options.fsync {
            FsyncPolicy::Interval(interval) => {
                let inner = Arc::clone(&inner);
                Some(Flusher::start("tidewater-log-sync", interval, move || inner.sync_all())?)
            }
            FsyncPolicy::Always => None,
        };
        let writer = Some(writer::Writer::start(options)?);
        Ok(Self { writer, flusher, inner })
    }

    /// The options the store was opened with.
    pub fn options(&self) -> SegmentOptions {
        self.inner.options
    }

    /// The segment files of a partition, oldest first (for tests and the admin API).
    pub fn segment_files(&self, id: &PartitionId) -> Result<Vec<PathBuf>, StorageError> {
        self.inner.with_partition(id, |log| Ok(log.segments.iter().map(|segment| segment.path.clone()).collect()))
    }
}

impl Drop for SegmentStore {
    fn drop(&mut self) {
        drop(self.writer.take());
        drop(self.flusher.take());
        if let Err(error) = self.inner.sync_all() {
            tracing::error!(%error, "final log sync failed");
        }
    }
}

impl Inner {
    fn with_partition<T>(
        &self,
        id: &PartitionId,
        f: impl FnOnce(&mut PartitionLog) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let partition = self.partitions.read().get(id).cloned();
        let partition = partition.ok_or_else(|| StorageError::unknown_partition(id))?;
        let mut log = partition.lock();
        if log.deleted {
            return Err(StorageError::unknown_partition(id));
        }
        f(&mut log)
    }

    fn scratch_dir(&self, prefix: &str) -> PathBuf {
        self.root.join(format!("{prefix}{}", self.scratch.fetch_add(1, Ordering::Relaxed)))
    }

    /// Syncs every partition's unsynced appends and offsets. The files are synced outside
    /// the partition locks, so appends go on meanwhile.
    fn sync_all(&self) -> Result<(), StorageError> {
        let partitions: Vec<_> = self.partitions.read().values().cloned().collect();
        let mut first_error = None;
        for partition in partitions {
            let (file, meta) = {
                let mut log = partition.lock();
                if log.deleted {
                    continue;
                }
                let file = std::mem::take(&mut log.data_dirty).then(|| Arc::clone(&log.active().file));
                let meta = std::mem::take(&mut log.meta_dirty).then(|| (log.dir.clone(), log.meta()));
                (file, meta)
            };
            let synced = file.map_or(Ok(()), |file| file.sync_data().map_err(StorageError::from));
            let written = meta.map_or(Ok(()), |(dir, meta)| write_meta(&dir, &meta));
            if let Err(error) = synced.and(written) {
                let mut log = partition.lock();
                log.data_dirty = true;
                log.meta_dirty = true;
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Validates a batch for an append (on the caller's thread, not the writer's).
fn check_append(append: &Append) -> Result<crate::BatchHeader, StorageError> {
    let header = validate_batch(&append.batch)?;
    if append.batch.len() as u64 > SegmentOptions::MAX_SEGMENT_BYTES {
        return Err(StorageError::invalid_batch("batch larger than a segment"));
    }
    Ok(header)
}

/// Writes `partition.meta` by rename, synced.
fn write_meta(dir: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    replace_file(dir, files::META_FILE, bytes)
}

/// Replaces a small file by writing a staging copy and renaming it, all synced.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let staging = dir.join(format!("{name}.tmp"));
    write_synced(&staging, bytes)?;
    std::fs::rename(&staging, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl PartitionLog {
    fn active(&self) -> &Segment {
        self.segments.last().expect("a partition always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a partition always has a segment")
    }

    fn log_end(&self) -> i64 {
        self.active().next_offset
    }

    fn offsets(&self) -> PartitionOffsets {
        PartitionOffsets { log_start: self.log_start, log_end: self.log_end() }
    }

    fn meta(&self) -> Vec<u8> {
        files::encode_meta(self.log_start)
    }

    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.size).sum::<u64>() - self.live_from
    }

    /// Opens a partition directory: its metadata, its sealed segments from their indexes
    /// (rescanned when an index is missing or stale), and its active segment by scanning.
    fn load(dir: PathBuf, options: &SegmentOptions) -> Result<Self, StorageError> {
        let meta_path = dir.join(files::META_FILE);
        let meta = std::fs::read(&meta_path)
            .map_err(StorageError::from)
            .and_then(|bytes| files::decode_meta(&bytes))
            .map_err(|error| StorageError::CorruptMetadata(format!("{}: {error}", meta_path.display())))?;
        remove_if_present(&dir.join(format!("{}.tmp", files::META_FILE)))?;
        let log_start = meta;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            if let Some(base) = files::parse_segment_name(&entry?.file_name().to_string_lossy()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let interval = options.index_interval_bytes;
        let mut segments: Vec<Segment> = Vec::new();
        let mut bases = bases.into_iter().peekable();
        while let Some(base) = bases.next() {
            let is_last = bases.peek().is_none();
            let follows_on = segments.last().is_none_or(|previous| previous.next_offset == base);
            let (segment, cut) = match (is_last, follows_on) {
                (_, false) => break,
                (false, true) => match Segment::open_sealed(&dir, base)? {
                    Some(segment) => (segment, false),
                    None => Segment::recover(&dir, base, interval)?,
                },
                (true, true) => Segment::recover(&dir, base, interval)?,
            };
            if segment.is_empty() && !is_last {
                segment.remove_files(&dir)?;
                continue;
            }
            segments.push(segment);
            if cut {
                break;
            }
        }
        // whatever did not follow on (a gap after a cut tail) is not part of the log
        for base in bases {
            if segments.iter().all(|segment| segment.base != base) {
                tracing::warn!(dir = %dir.display(), base, "removing a segment that does not follow on");
                for path in files::segment_paths(&dir, base) {
                    remove_if_present(&path)?;
                }
            }
        }
        let epochs = match std::fs::read(dir.join(files::EPOCHS_FILE)) {
            Ok(bytes) => EpochHistory::from_entries(files::decode_epochs(&bytes)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => EpochHistory::default(),
            Err(error) => return Err(error.into()),
        };
        remove_if_present(&dir.join(format!("{}.tmp", files::EPOCHS_FILE)))?;
        let mut log = Self {
            dir,
            segments,
            log_start,
            live_from: 0,
            data_dirty: false,
            meta_dirty: false,
            deleted: false,
            epochs,
        };
        if let Some(first) = log.segments.first() {
            // a retention whose metadata write was lost to a power loss still removed files
            log.log_start = log.log_start.max(first.base);
        }
        log.drop_segments_below(log.log_start)?;
        let offsets = log.offsets();
        // a tail cut or retention the checkpoint did not see yet (an epoch may start at the
        // log end: nothing written in it yet)
        let mut stale = log.epochs.truncate_from_end(offsets.log_end + 1);
        stale |= log.epochs.truncate_from_start(offsets.log_start);
        if stale {
            log.write_epochs()?;
        }
        Ok(log)
    }

    /// Removes every whole segment ending at or before `offset`; when that is all of them,
    /// the log restarts empty at `max(offset, log end)`. Recomputes `live_from`.
    fn drop_segments_below(&mut self, offset: i64) -> Result<(), StorageError> {
        while self.segments.len() > 1 && self.segments[0].next_offset <= offset {
            let segment = self.segments.remove(0);
            segment.remove_files(&self.dir)?;
        }
        let restart_at = match self.segments.first() {
            None => Some(offset),
            Some(only) if self.segments.len() == 1 && only.next_offset <= offset && !only.is_empty() => {
                Some(offset.max(only.next_offset))
            }
            Some(only) if only.is_empty() && only.base < offset => Some(offset),
            Some(_) => None,
        };
        if let Some(base) = restart_at {
            self.restart_at(base)?;
        }
        let first = &self.segments[0];
        let from = first.position_for_offset(self.log_start);
        self.live_from =
            first.find(from, |header| header.last_offset() >= self.log_start)?.map_or(first.size, |at| at.position);
        Ok(())
    }

    /// Replaces every segment by one empty segment at `base`.
    fn restart_at(&mut self, base: i64) -> Result<(), StorageError> {
        for segment in self.segments.drain(..) {
            segment.remove_files(&self.dir)?;
        }
        self.segments.push(Segment::create(&self.dir, base)?);
        self.live_from = 0;
        sync_dir(&self.dir)
    }

    /// Writes `partition.meta` now under `always`, or marks it for the next sync.
    fn record_offsets(&mut self, options: &SegmentOptions) -> Result<(), StorageError> {
        match options.fsync {
            FsyncPolicy::Always => write_meta(&self.dir, &self.meta()),
            FsyncPolicy::Interval(_) => {
                self.meta_dirty = true;
                Ok(())
            }
        }
    }

    /// Persists the epoch history (before any batch that depends on it is written).
    fn write_epochs(&self) -> Result<(), StorageError> {
        replace_file(&self.dir, files::EPOCHS_FILE, &files::encode_epochs(self.epochs.entries()))
    }

    /// Writes a validated batch at the log end, rolling the segment first if it is full or
    /// old, without syncing it (the caller syncs per the policy, or the flusher does).
    fn write(
        &mut self,
        options: &SegmentOptions,
        append: &Append,
        mut header: crate::BatchHeader,
    ) -> Result<AppendResult, StorageError> {
        let base_offset = self.log_end();
        if append.base_offset != base_offset {
            return Err(StorageError::NotAtLogEnd { expected: append.base_offset, log_end: base_offset });
        }
        let length = append.batch.len() as u64;
        let active = self.active();
        let too_big = active.size + length > options.segment_bytes;
        let too_old = active
            .first_timestamp
            .is_some_and(|first| header.max_timestamp.saturating_sub(first) >= options.segment_ms);
        if !active.is_empty() && (too_big || too_old) {
            let dir = self.dir.clone();
            self.active_mut().seal(&dir)?;
            self.segments.push(Segment::create(&dir, base_offset)?);
            sync_dir(&dir)?;
        }
        if self.epochs.is_new(append.leader_epoch) {
            // persisted before the batch: a log never holds an epoch its history lacks
            let before = self.epochs.clone();
            self.epochs.assign(append.leader_epoch, base_offset);
            if let Err(error) = self.write_epochs() {
                self.epochs = before;
                return Err(error);
            }
        }
        let stored = rewrite_for_append(&append.batch, base_offset, append.leader_epoch);
        // a failed write leaves the new epoch starting at the log end, on disk and here alike
        self.active_mut().write(&stored)?;
        let active = self.active_mut();
        header.base_offset = base_offset;
        header.partition_leader_epoch = append.leader_epoch;
        active.note_appended(&header, length, options.index_interval_bytes);
        self.data_dirty = true;
        Ok(AppendResult { base_offset, last_offset: header.last_offset() })
    }

    /// Syncs the active segment after writes from `first_base` on; if that fails, they are
    /// cut off again, so that nothing unsynced stays readable under `always`.
    fn sync_or_undo(&mut self, options: &SegmentOptions, first_base: i64) -> Result<(), StorageError> {
        let synced = self.active().file.sync_data();
        match synced {
            Ok(()) => {
                self.data_dirty = false;
                Ok(())
            }
            Err(error) => {
                if let Err(undo) = self.truncate_after(options, first_base) {
                    tracing::error!(dir = %self.dir.display(), %undo, "cannot cut an unsynced append");
                }
                Err(error.into())
            }
        }
    }

    /// Where a read of `offset` starts: the segment index and the batch's position.
    fn locate(&self, offset: i64) -> Result<Option<(usize, u64)>, StorageError> {
        let at = self.segments.partition_point(|segment| segment.base <= offset).saturating_sub(1);
        let segment = &self.segments[at];
        let mut from = segment.position_for_offset(offset);
        if at == 0 {
            from = from.max(self.live_from);
        }
        Ok(segment.find(from, |header| header.last_offset() >= offset)?.map(|located| (at, located.position)))
    }

    fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<i64>, StorageError> {
        for (at, segment) in self.segments.iter().enumerate() {
            if segment.max_timestamp.is_none_or(|max| max < timestamp) {
                continue;
            }
            let mut from = segment.position_for_timestamp(timestamp);
            if at == 0 {
                from = from.max(self.live_from);
            }
            if let Some(found) = segment.find(from, |header| header.max_timestamp >= timestamp)? {
                return Ok(Some(found.header.base_offset.max(self.log_start)));
            }
        }
        Ok(None)
    }

    /// Whole segments while the rest is still too big, then batch by batch (headers only).
    fn retention_offset_for_bytes(&self, limit: u64) -> Result<Option<i64>, StorageError> {
        let mut remaining = self.size_bytes();
        let mut cut = None;
        let last = self.segments.len() - 1;
        for (at, segment) in self.segments.iter().enumerate() {
            let from = if at == 0 { self.live_from } else { 0 };
            let live = segment.size - from;
            if remaining <= limit {
                break;
            }
            if at < last && remaining - live > limit {
                remaining -= live;
                cut = Some(segment.next_offset);
                continue;
            }
            let mut position = from;
            while remaining > limit {
                let Some(batch) = segment.find(position, |_| true)? else { break };
                if batch.end() >= segment.size && at == last {
                    break; // never the last batch
                }
                remaining -= batch.length;
                cut = Some(batch.header.last_offset() + 1);
                position = batch.end();
            }
        }
        Ok(cut)
    }

    fn truncate_before(&mut self, options: &SegmentOptions, offset: i64) -> Result<(), StorageError> {
        let Some(offsets) = log_rules::truncate_before(self.offsets(), offset) else {
            return Ok(());
        };
        self.log_start = offsets.log_start;
        // the new start is recorded before any file goes, so a crash between leaves no
        // log start pointing at removed data
        self.record_offsets(options)?;
        self.drop_segments_below(offset)?;
        if self.active().next_offset < offsets.log_end {
            self.restart_at(offsets.log_end)?;
        }
        if self.epochs.truncate_from_start(self.log_start) {
            self.write_epochs()?;
        }
        Ok(())
    }

    fn truncate_after(&mut self, options: &SegmentOptions, offset: i64) -> Result<(), StorageError> {
        if offset >= self.log_end() {
            return Ok(());
        }
        // the first live batch that goes: the one holding `offset`, or the first live one
        let first_removed = match self.locate(offset.max(self.log_start))? {
            Some((at, position)) => {
                let found = self.segments[at].find(position, |_| true)?;
                found.map(|located| (at, position, located.header.base_offset))
            }
            None => None, // an empty log that restarted past `offset`
        };
        let keeps_some = first_removed.is_some_and(|(at, position, _)| at > 0 || position > self.live_from);
        let first_removed_base = first_removed.map(|(_, _, base)| base);
        let last_remaining = if keeps_some { first_removed_base.map(|base| base - 1) } else { None };
        let offsets = log_rules::truncate_after(self.offsets(), offset, last_remaining, first_removed_base);
        if let Some((at, position, _)) = first_removed.filter(|_| keeps_some) {
            for segment in self.segments.drain(at + 1..) {
                segment.remove_files(&self.dir)?;
            }
            let interval = options.index_interval_bytes;
            self.segments[at].cut_at(position, interval)?;
            if self.segments[at].is_empty() {
                let emptied = self.segments.remove(at);
                emptied.remove_files(&self.dir)?;
                let previous = self.active_mut();
                let end = previous.size;
                previous.cut_at(end, interval)?; // reopened for appends: its index files go
            }
            self.active().file.sync_data()?;
        } else {
            self.restart_at(offsets.log_end)?;
        }
        self.log_start = offsets.log_start;
        if self.epochs.truncate_from_end(offsets.log_end) {
            self.write_epochs()?;
        }
        self.record_offsets(options)
    }
}

impl LogStore for SegmentStore {
    fn create_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        let mut partitions = self.inner.partitions.write();
        if partitions.contains_key(id) {
            return Ok(());
        }
        // built in a staging directory and renamed into place, so a crash leaves either no
        // partition or a whole one
        let staging = self.inner.scratch_dir(CREATING);
        std::fs::create_dir_all(&staging)?;
        let segment = Segment::create(&staging, 0)?;
        segment.file.sync_all()?;
        drop(segment);
        write_meta(&staging, &files::encode_meta(0))?;
        let dir = self.inner.root.join(files::partition_dir_name(&id.stream, id.partition));
        std::fs::rename(&staging, &dir)?;
        sync_dir(&self.inner.root)?;
        let log = PartitionLog::load(dir, &self.inner.options)?;
        partitions.insert(id.clone(), Arc::new(Mutex::new(log)));
        Ok(())
    }

    fn delete_partition(&self, id: &PartitionId) -> Result<(), StorageError> {
        let doomed = {
            let mut partitions = self.inner.partitions.write();
            let Some(partition) = partitions.get(id).cloned() else {
                return Ok(());
            };
            let mut log = partition.lock();
            let doomed = self.inner.scratch_dir(DELETING);
            std::fs::rename(&log.dir, &doomed)?;
            sync_dir(&self.inner.root)?;
            log.deleted = true;
            partitions.remove(id);
            doomed
        };
        // the partition is gone once renamed; removing the files can wait for no lock
        std::fs::remove_dir_all(&doomed)?;
        Ok(())
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        Ok(self.inner.partitions.read().keys().cloned().collect())
    }

    fn append_at(&self, id: &PartitionId, append: Append) -> Result<AppendResult, StorageError> {
        let header = check_append(&append)?;
        let options = self.inner.options;
        self.inner.with_partition(id, |log| {
            let appended = log.write(&options, &append, header)?;
            if options.fsync == FsyncPolicy::Always {
                log.sync_or_undo(&options, appended.base_offset)?;
            }
            Ok(appended)
        })
    }

    fn submit(&self, id: &PartitionId, append: Append, done: AppendDone) {
        let header = match check_append(&append) {
            Ok(header) => header,
            Err(error) => return done(Err(error)),
        };
        let partition = self.inner.partitions.read().get(id).cloned();
        let Some(partition) = partition else {
            return done(Err(StorageError::unknown_partition(id)));
        };
        match &self.writer {
            Some(writer) => writer.submit(writer::Job { id: id.clone(), partition, append, header, done }),
            None => done(Err(writer::stopped())),
        }
    }

    fn end_offset_for_epoch(&self, id: &PartitionId, epoch: i32) -> Result<Option<(i32, i64)>, StorageError> {
        self.inner.with_partition(id, |log| Ok(log.epochs.end_offset_for(epoch, log.log_end())))
    }

    fn read(
        &self,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<Vec<FetchedBatch>, StorageError> {
        let (views, position) = self.inner.with_partition(id, |log| {
            if !log_rules::check_read(&log.offsets(), offset)? {
                return Ok((Vec::new(), 0));
            }
            let Some((at, position)) = log.locate(offset)? else {
                return Ok((Vec::new(), 0));
            };
            let views: Vec<SegmentView> = log.segments[at..]
                .iter()
                .map(|segment| SegmentView {
                    file: Arc::clone(&segment.file),
                    path: segment.path.clone(),
                    size: segment.size,
                })
                .collect();
            Ok((views, position))
        })?;
        // the bytes are read outside the partition lock, so appends go on meanwhile
        read_batches(&views, position, max_bytes, upper_bound)
    }

    fn offsets(&self, id: &PartitionId) -> Result<PartitionOffsets, StorageError> {
        self.inner.with_partition(id, |log| Ok(log.offsets()))
    }

    fn offset_for_timestamp(&self, id: &PartitionId, timestamp_ms: i64) -> Result<Option<i64>, StorageError> {
        self.inner.with_partition(id, |log| log.offset_for_timestamp(timestamp_ms))
    }

    fn truncate_before(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        let options = self.inner.options;
        self.inner.with_partition(id, |log| log.truncate_before(&options, offset))
    }

    fn truncate_after(&self, id: &PartitionId, offset: i64) -> Result<(), StorageError> {
        let options = self.inner.options;
        self.inner.with_partition(id, |log| log.truncate_after(&options, offset))
    }

    fn size_bytes(&self, id: &PartitionId) -> Result<u64, StorageError> {
        self.inner.with_partition(id, |log| Ok(log.size_bytes()))
    }

    fn retention_offset_for_bytes(&self, id: &PartitionId, limit: u64) -> Result<Option<i64>, StorageError> {
        self.inner.with_partition(id, |log| log.retention_offset_for_bytes(limit))
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync_all()
    }
}
