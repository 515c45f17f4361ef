//! One segment: an append-only file of RecordBatch v2 bytes and its sparse indexes.
//!
//! The indexes live in memory (one entry per `index_interval` bytes, plus the first batch);
//! a sealed segment also has them on disk, written once when it is sealed, so opening a log
//! reads only the active segment's bytes.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::files::{self, OffsetEntry, SegmentSummary, TimeEntry};
use crate::batch::{BATCH_HEADER_LEN, BatchHeader, validate_batch};
use crate::{FetchedBatch, StorageError};

/// Length of a batch from its first 12 bytes (base offset, batch length).
const LENGTH_PREFIX: usize = 12;

/// One segment of a partition log.
#[derive(Debug)]
pub(super) struct Segment {
    /// The offset of the segment's first batch (its file name).
    pub(super) base: i64,
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    /// Bytes of whole batches in the file.
    pub(super) size: u64,
    /// One past the last offset, or `base` when empty.
    pub(super) next_offset: i64,
    pub(super) first_timestamp: Option<i64>,
    pub(super) max_timestamp: Option<i64>,
    pub(super) offset_index: Vec<OffsetEntry>,
    pub(super) time_index: Vec<TimeEntry>,
    since_offset_entry: u64,
    since_time_entry: u64,
    /// Whether the segment is sealed (its indexes are on disk and it takes no more appends).
    pub(super) sealed: bool,
}

/// One batch header found by scanning a segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Located {
    pub(super) position: u64,
    pub(super) length: u64,
    pub(super) header: BatchHeader,
}

impl Located {
    pub(super) fn end(&self) -> u64 {
        self.position + self.length
    }
}

fn open_file(path: &Path, create: bool) -> Result<File, StorageError> {
    Ok(OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?)
}

/// Reads exactly `len` bytes at `position`, or `None` when the file ends first.
pub(super) fn read_exact_at(file: &File, position: u64, len: usize) -> Result<Option<BytesMut>, StorageError> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], position + filled as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Some(buf))
}

/// Reads `len` bytes at `position` of the segment at `path` into a new buffer without
/// zeroing it first (`read_to_end` fills spare capacity): a large fetch costs one copy out of
/// the page cache. A handle of its own keeps the seek away from other readers; when the file
/// has gone (retention removed it under a reader), the shared handle is read instead.
pub(super) fn read_chunk(path: &Path, shared: &File, position: u64, len: usize) -> Result<Option<Bytes>, StorageError> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut own) = File::open(path) else {
        return Ok(read_exact_at(shared, position, len)?.map(BytesMut::freeze));
    };
    own.seek(SeekFrom::Start(position))?;
    let mut buf = Vec::with_capacity(len);
    own.take(len as u64).read_to_end(&mut buf)?;
    Ok((buf.len() == len).then(|| Bytes::from(buf)))
}

/// The header of the batch at `position`, if a plausible one is there.
pub(super) fn header_at(file: &File, position: u64, limit: u64) -> Result<Option<Located>, StorageError> {
    if position + BATCH_HEADER_LEN as u64 > limit {
        return Ok(None);
    }
    let Some(bytes) = read_exact_at(file, position, BATCH_HEADER_LEN)? else {
        return Ok(None);
    };
    let Ok(header) = BatchHeader::parse(&bytes) else {
        return Ok(None);
    };
    let length = LENGTH_PREFIX as u64 + u64::try_from(header.batch_length).unwrap_or(0);
    if length < BATCH_HEADER_LEN as u64 || position + length > limit {
        return Ok(None);
    }
    Ok(Some(Located { position, length, header }))
}

impl Segment {
    /// Creates an empty segment file at `base`.
    pub(super) fn create(dir: &Path, base: i64) -> Result<Self, StorageError> {
        let [path, index, time] = files::segment_paths(dir, base);
        for stale in [&index, &time] {
            remove_if_present(stale)?;
        }
        let file = open_file(&path, true)?;
        file.set_len(0)?;
        Ok(Self::empty(base, file, path))
    }

    fn empty(base: i64, file: File, path: PathBuf) -> Self {
        Self {
            base,
            file: Arc::new(file),
            path,
            size: 0,
            next_offset: base,
            first_timestamp: None,
            max_timestamp: None,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            since_offset_entry: 0,
            since_time_entry: 0,
            sealed: false,
        }
    }

    /// Opens a sealed segment from its index files, or `None` when they are missing, torn or
    /// do not match the segment file (then the caller rescans it).
    pub(super) fn open_sealed(dir: &Path, base: i64) -> Result<Option<Self>, StorageError> {
        let [path, index, time] = files::segment_paths(dir, base);
        let (Ok(index_bytes), Ok(time_bytes)) = (std::fs::read(&index), std::fs::read(&time)) else {
            return Ok(None);
        };
        let (Ok((summary, offset_index)), Ok(time_index)) =
            (files::decode_offset_index(&index_bytes), files::decode_time_index(&time_bytes))
        else {
            return Ok(None);
        };
        let file = open_file(&path, false)?;
        if file.metadata()?.len() != summary.size || summary.size == 0 {
            return Ok(None);
        }
        let mut segment = Self::empty(base, file, path);
        segment.size = summary.size;
        segment.next_offset = summary.next_offset;
        segment.first_timestamp = Some(summary.first_timestamp);
        segment.max_timestamp = Some(summary.max_timestamp);
        segment.offset_index = offset_index;
        segment.time_index = time_index;
        segment.sealed = true;
        Ok(Some(segment))
    }

    /// Opens a segment by reading every batch, checking each one's CRC and that offsets
    /// follow on; the file is cut at the first batch that fails (a torn or corrupt tail).
    /// Returns the segment and whether anything was cut.
    pub(super) fn recover(dir: &Path, base: i64, interval: u64) -> Result<(Self, bool), StorageError> {
        let [path, index, time] = files::segment_paths(dir, base);
        for stale in [&index, &time] {
            remove_if_present(stale)?;
        }
        let file = open_file(&path, false)?;
        let file_len = file.metadata()?.len();
        let mut segment = Self::empty(base, file, path);
        while let Some(located) = header_at(&segment.file, segment.size, file_len)? {
            if located.header.base_offset != segment.next_offset || u32::try_from(located.end()).is_err() {
                break;
            }
            let Some(bytes) = read_exact_at(&segment.file, located.position, located.length as usize)? else {
                break;
            };
            if validate_batch(&bytes).is_err() {
                break;
            }
            segment.note_appended(&located.header, located.length, interval);
        }
        let cut = segment.size < file_len;
        if cut {
            tracing::warn!(
                segment = %segment.path.display(),
                kept = segment.size,
                cut = file_len - segment.size,
                "cutting a torn or corrupt log tail"
            );
            segment.file.set_len(segment.size)?;
            segment.file.sync_data()?;
        }
        Ok((segment, cut))
    }

    /// Whether the segment holds no batch.
    pub(super) fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Updates size, offsets and indexes for a batch just written at `self.size`.
    pub(super) fn note_appended(&mut self, header: &BatchHeader, length: u64, interval: u64) {
        let position = self.size as u32;
        let raised = self.max_timestamp.is_none_or(|max| header.max_timestamp > max);
        if self.offset_index.is_empty() || self.since_offset_entry >= interval {
            let relative_offset = (header.base_offset - self.base) as u32;
            self.offset_index.push(OffsetEntry { relative_offset, position });
            self.since_offset_entry = 0;
        }
        if raised {
            self.max_timestamp = Some(header.max_timestamp);
            if self.time_index.is_empty() || self.since_time_entry >= interval {
                self.time_index.push(TimeEntry { timestamp: header.max_timestamp, position });
                self.since_time_entry = 0;
            }
        }
        self.first_timestamp.get_or_insert(header.max_timestamp);
        self.since_offset_entry += length;
        self.since_time_entry += length;
        self.size += length;
        self.next_offset = header.base_offset + i64::from(header.last_offset_delta) + 1;
    }

    /// Writes a batch at the end of the file (not synced); on failure nothing is kept.
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if let Err(error) = self.file.write_all_at(bytes, self.size) {
            let _ = self.file.set_len(self.size);
            return Err(error.into());
        }
        Ok(())
    }

    /// Cuts the file back to `position` (a batch boundary), which the caller found by
    /// scanning; the in-memory state is rebuilt by rescanning the kept part.
    pub(super) fn cut_at(&mut self, position: u64, interval: u64) -> Result<(), StorageError> {
        self.file.set_len(position)?;
        let mut rebuilt = Self::empty(self.base, open_file(&self.path, false)?, self.path.clone());
        while let Some(located) = header_at(&rebuilt.file, rebuilt.size, position)? {
            rebuilt.note_appended(&located.header, located.length, interval);
        }
        let [_, index, time] = files::segment_paths(self.path.parent().unwrap_or(Path::new(".")), self.base);
        for stale in [&index, &time] {
            remove_if_present(stale)?;
        }
        *self = rebuilt;
        Ok(())
    }

    /// Seals the segment: syncs it and writes its index files (synced), once.
    pub(super) fn seal(&mut self, dir: &Path) -> Result<(), StorageError> {
        self.file.sync_data()?;
        let [_, index, time] = files::segment_paths(dir, self.base);
        let summary = SegmentSummary {
            size: self.size,
            next_offset: self.next_offset,
            first_timestamp: self.first_timestamp.unwrap_or(i64::MIN),
            max_timestamp: self.max_timestamp.unwrap_or(i64::MIN),
        };
        write_synced(&index, &files::encode_offset_index(&summary, &self.offset_index))?;
        write_synced(&time, &files::encode_time_index(&self.time_index))?;
        self.sealed = true;
        Ok(())
    }

    /// Removes the segment's files.
    pub(super) fn remove_files(&self, dir: &Path) -> Result<(), StorageError> {
        for path in files::segment_paths(dir, self.base) {
            remove_if_present(&path)?;
        }
        Ok(())
    }

    /// The position to start scanning from for the batch holding `offset`: the last indexed
    /// batch at or before it.
    pub(super) fn position_for_offset(&self, offset: i64) -> u64 {
        let relative = offset.saturating_sub(self.base).clamp(0, i64::from(u32::MAX)) as u32;
        let at = self.offset_index.partition_point(|entry| entry.relative_offset <= relative);
        at.checked_sub(1).map_or(0, |at| u64::from(self.offset_index[at].position))
    }

    /// The position to start scanning from for the first batch whose max timestamp is at
    /// or after `timestamp`: the last indexed batch before which every batch is older.
    pub(super) fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let at = self.time_index.partition_point(|entry| entry.timestamp < timestamp);
        at.checked_sub(1).map_or(0, |at| u64::from(self.time_index[at].position))
    }

    /// Scans batch headers from `position` to the first one `stop` accepts.
    pub(super) fn find(
        &self,
        mut position: u64,
        mut stop: impl FnMut(&BatchHeader) -> bool,
    ) -> Result<Option<Located>, StorageError> {
        while let Some(located) = header_at(&self.file, position, self.size)? {
            if stop(&located.header) {
                return Ok(Some(located));
            }
            position = located.end();
        }
        Ok(None)
    }
}

/// A read-only view of one segment, taken under the partition lock and read outside it.
#[derive(Debug, Clone)]
pub(super) struct SegmentView {
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    pub(super) size: u64,
}

/// Reads whole batches from `position` in `segments` (the first view at `position`, later
/// ones from their start), with the rules of `log_rules::collect_read`: stop before a batch
/// reaching `upper_bound`, and before `max_bytes` would be exceeded unless nothing was taken.
/// Batches are slices of a few large reads, not one buffer each.
pub(super) fn read_batches(
    segments: &[SegmentView],
    mut position: u64,
    max_bytes: usize,
    upper_bound: i64,
) -> Result<Vec<FetchedBatch>, StorageError> {
    const CHUNK: usize = 8 << 20;
    let mut taken = Vec::new();
    let mut total = 0usize;
    for view in segments {
        let mut chunk = Bytes::new();
        let mut chunk_at = position;
        while position < view.size {
            let offset_in_chunk = (position - chunk_at) as usize;
            let have = chunk.len().saturating_sub(offset_in_chunk);
            let length = if have >= LENGTH_PREFIX {
                Some(LENGTH_PREFIX as u64 + u64::from(u32::from_be_bytes(chunk_prefix(&chunk, offset_in_chunk))))
            } else {
                None
            };
            if length.is_some_and(|length| length < BATCH_HEADER_LEN as u64 || length > view.size - position) {
                return Err(StorageError::CorruptMetadata(format!("batch of bad length at byte {position}")));
            }
            if length.is_none_or(|length| have < length as usize) {
                let wanted = max_bytes.saturating_sub(total).clamp(BATCH_HEADER_LEN, CHUNK);
                let wanted = (wanted as u64).max(length.unwrap_or(0)).min(view.size - position) as usize;
                let Some(bytes) = read_chunk(&view.path, &view.file, position, wanted)? else {
                    return Ok(taken); // cut under us by a concurrent truncation
                };
                chunk = bytes;
                chunk_at = position;
                continue;
            }
            let length = length.unwrap_or(0) as usize;
            let bytes = chunk.slice(offset_in_chunk..offset_in_chunk + length);
            let header = BatchHeader::parse(&bytes)?;
            if header.last_offset() >= upper_bound {
                return Ok(taken);
            }
            if !taken.is_empty() && total + length > max_bytes {
                return Ok(taken);
            }
            total += length;
            taken.push(FetchedBatch {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                max_timestamp: header.max_timestamp,
                bytes,
            });
            position += length as u64;
        }
        position = 0;
    }
    Ok(taken)
}

fn chunk_prefix(chunk: &Bytes, at: usize) -> [u8; 4] {
    let mut length = [0; 4];
    length.copy_from_slice(&chunk[at + 8..at + 12]);
    length
}

/// Writes a whole small file and syncs it.
pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let file = File::create(path)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    Ok(())
}

/// Removes a file; an absent one is not an error.
pub(super) fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}
