//! What a partition directory holds besides segment bytes, and how each file is encoded.
//!
//! ```text
//! <logs>/<stream>-<partition>/
//!     partition.meta                  the log start offset (rewritten by rename)
//!     leader-epoch-checkpoint         epoch history: (leader epoch, start offset) pairs (by rename)
//!     00000000000000000000.log        RecordBatch v2 bytes, back to back, exactly as fetched
//!     00000000000000000000.index      sealed segments only: sparse offset index + a summary
//!     00000000000000000000.timeindex  sealed segments only: sparse time index
//! ```
//!
//! Every small file ends in a CRC-32C of what precedes it, so a torn or stale index is
//! detected and rebuilt from the segment rather than trusted.

use std::path::{Path, PathBuf};

use crate::StorageError;

/// Name of a partition's metadata file.
pub(super) const META_FILE: &str = "partition.meta";
/// Name of a partition's epoch history (Kafka's `leader-epoch-checkpoint`).
pub(super) const EPOCHS_FILE: &str = "leader-epoch-checkpoint";
const META_MAGIC: &[u8; 4] = b"TWPM";
const EPOCHS_MAGIC: &[u8; 4] = b"TWLE";
const INDEX_MAGIC: &[u8; 4] = b"TWOI";
const TIME_MAGIC: &[u8; 4] = b"TWTI";
const VERSION: u32 = 1;

/// One sparse offset index entry: a batch's base offset (relative) and file position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OffsetEntry {
    pub(super) relative_offset: u32,
    pub(super) position: u32,
}

/// One sparse time index entry: the segment's running maximum timestamp after a batch, and
/// that batch's file position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TimeEntry {
    pub(super) timestamp: i64,
    pub(super) position: u32,
}

/// What a sealed segment's index file records about the segment, so that opening the log
/// does not read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentSummary {
    /// Bytes of the segment file the indexes cover.
    pub(super) size: u64,
    /// One past the segment's last offset.
    pub(super) next_offset: i64,
    /// The max timestamp of the segment's first batch (what rolling by age measures from).
    pub(super) first_timestamp: i64,
    /// The largest max timestamp of the segment.
    pub(super) max_timestamp: i64,
}

/// The paths of one segment's three files.
pub(super) fn segment_paths(dir: &Path, base: i64) -> [PathBuf; 3] {
    let stem = format!("{base:020}");
    [dir.join(format!("{stem}.log")), dir.join(format!("{stem}.index")), dir.join(format!("{stem}.timeindex"))]
}

/// The base offset of a segment file name (`<20 digits>.log`).
pub(super) fn parse_segment_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A partition's directory name: the stream name with bytes outside `[A-Za-z0-9._-]` (and a
/// leading `.`) written as `%XX`, then `-<partition>`.
pub(super) fn partition_dir_name(stream: &str, partition: u32) -> String {
    let mut name = String::with_capacity(stream.len() + 12);
    for (at, byte) in stream.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && at > 0);
        if plain {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name.push_str(&format!("-{partition}"));
    name
}

/// The inverse of [`partition_dir_name`], or `None` for a name it never produces.
pub(super) fn parse_partition_dir_name(name: &str) -> Option<(String, u32)> {
    let (escaped, partition) = name.rsplit_once('-')?;
    let partition = partition.parse().ok()?;
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    let stream = String::from_utf8(bytes).ok()?;
    (!stream.is_empty() && partition_dir_name(&stream, partition) == name).then_some((stream, partition))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::CorruptMetadata(what.to_owned())
}

/// Appends the CRC-32C of `bytes` to it.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes
}

/// Checks magic, version and trailing CRC; returns the body between header and CRC.
fn open_sealed<'a>(bytes: &'a [u8], magic: &[u8; 4], what: &str) -> Result<&'a [u8], StorageError> {
    if bytes.len() < 12 || &bytes[..4] != magic {
        return Err(corrupt(what));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return Err(corrupt(what));
    }
    if u32::from_be_bytes(fixed(&body[4..8])) != VERSION {
        return Err(corrupt(what));
    }
    Ok(&body[8..])
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn header(magic: &[u8; 4], capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12 + capacity);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&VERSION.to_be_bytes());
    bytes
}

/// `partition.meta`: the log start offset.
pub(super) fn encode_meta(log_start: i64) -> Vec<u8> {
    let mut bytes = header(META_MAGIC, 8);
    bytes.extend_from_slice(&log_start.to_be_bytes());
    seal(bytes)
}

/// The inverse of [`encode_meta`].
pub(super) fn decode_meta(bytes: &[u8]) -> Result<i64, StorageError> {
    let body = open_sealed(bytes, META_MAGIC, "partition.meta")?;
    if body.len() != 8 {
        return Err(corrupt("partition.meta"));
    }
    Ok(i64::from_be_bytes(fixed(body)))
}

/// `leader-epoch-checkpoint`: the epoch history's entries.
pub(super) fn encode_epochs(entries: &[(i32, i64)]) -> Vec<u8> {
    let mut bytes = header(EPOCHS_MAGIC, entries.len() * 12);
    for (epoch, start) in entries {
        bytes.extend_from_slice(&epoch.to_be_bytes());
        bytes.extend_from_slice(&start.to_be_bytes());
    }
    seal(bytes)
}

/// The inverse of [`encode_epochs`].
pub(super) fn decode_epochs(bytes: &[u8]) -> Result<Vec<(i32, i64)>, StorageError> {
    let body = open_sealed(bytes, EPOCHS_MAGIC, EPOCHS_FILE)?;
    if body.len() % 12 != 0 {
        return Err(corrupt(EPOCHS_FILE));
    }
    Ok(body
        .chunks_exact(12)
        .map(|chunk| (i32::from_be_bytes(fixed(&chunk[..4])), i64::from_be_bytes(fixed(&chunk[4..]))))
        .collect())
}

/// A sealed segment's `.index`: its summary, then the offset entries.
pub(super) fn encode_offset_index(summary: &SegmentSummary, entries: &[OffsetEntry]) -> Vec<u8> {
    let mut bytes = header(INDEX_MAGIC, 32 + entries.len() * 8);
    for value in [summary.size as i64, summary.next_offset, summary.first_timestamp, summary.max_timestamp] {
        bytes.extend_from_slice(&value.to_be_bytes());
    }
    for entry in entries {
        bytes.extend_from_slice(&entry.relative_offset.to_be_bytes());
        bytes.extend_from_slice(&entry.position.to_be_bytes());
    }
    seal(bytes)
}

/// The inverse of [`encode_offset_index`].
pub(super) fn decode_offset_index(bytes: &[u8]) -> Result<(SegmentSummary, Vec<OffsetEntry>), StorageError> {
    let body = open_sealed(bytes, INDEX_MAGIC, "offset index")?;
    if body.len() < 32 || (body.len() - 32) % 8 != 0 {
        return Err(corrupt("offset index"));
    }
    let value = |at: usize| i64::from_be_bytes(fixed(&body[at..at + 8]));
    let size = u64::try_from(value(0)).map_err(|_| corrupt("offset index"))?;
    let summary = SegmentSummary { size, next_offset: value(8), first_timestamp: value(16), max_timestamp: value(24) };
    let entries = body[32..]
        .chunks_exact(8)
        .map(|chunk| OffsetEntry {
            relative_offset: u32::from_be_bytes(fixed(&chunk[..4])),
            position: u32::from_be_bytes(fixed(&chunk[4..])),
        })
        .collect();
    Ok((summary, entries))
}

/// A sealed segment's `.timeindex`.
pub(super) fn encode_time_index(entries: &[TimeEntry]) -> Vec<u8> {
    let mut bytes = header(TIME_MAGIC, entries.len() * 12);
    for entry in entries {
        bytes.extend_from_slice(&entry.timestamp.to_be_bytes());
        bytes.extend_from_slice(&entry.position.to_be_bytes());
    }
    seal(bytes)
}

/// The inverse of [`encode_time_index`].
pub(super) fn decode_time_index(bytes: &[u8]) -> Result<Vec<TimeEntry>, StorageError> {
    let body = open_sealed(bytes, TIME_MAGIC, "time index")?;
    if body.len() % 12 != 0 {
        return Err(corrupt("time index"));
    }
    Ok(body
        .chunks_exact(12)
        .map(|chunk| TimeEntry {
            timestamp: i64::from_be_bytes(fixed(&chunk[..8])),
            position: u32::from_be_bytes(fixed(&chunk[8..])),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_names_round_trip_and_stay_inside_the_logs_dir() {
        for (stream, partition) in [("orders", 0), ("a-b-1", 7), ("x.y", 2), (".hidden", 1), ("..", 0), ("a/b%c", 3)] {
            let name = partition_dir_name(stream, partition);
            assert!(!name.starts_with('.') && !name.contains('/'), "{name}");
            assert_eq!(parse_partition_dir_name(&name), Some((stream.to_owned(), partition)), "{name}");
        }
        for stray in ["orders", "orders-x", "-1", "a%2-0", "a%2F-0x", "a%2f-0"] {
            assert_eq!(parse_partition_dir_name(stray), None, "{stray}");
        }
    }

    #[test]
    fn small_files_detect_tampering() {
        let meta = encode_meta(5);
        assert_eq!(decode_meta(&meta).unwrap(), 5);
        let summary = SegmentSummary { size: 100, next_offset: 10, first_timestamp: 1, max_timestamp: 3 };
        let entries =
            [OffsetEntry { relative_offset: 0, position: 0 }, OffsetEntry { relative_offset: 4, position: 61 }];
        let index = encode_offset_index(&summary, &entries);
        assert_eq!(decode_offset_index(&index).unwrap(), (summary, entries.to_vec()));
        let epochs = encode_epochs(&[(1, 0), (4, 17)]);
        assert_eq!(decode_epochs(&epochs).unwrap(), vec![(1, 0), (4, 17)]);
        assert!(decode_epochs(&epochs[..epochs.len() - 2]).is_err());
        let times = [TimeEntry { timestamp: 7, position: 0 }];
        assert_eq!(decode_time_index(&encode_time_index(&times)).unwrap(), times.to_vec());
        for file in [meta, index, encode_time_index(&times)] {
            for at in 0..file.len() {
                let mut tampered = file.clone();
                tampered[at] ^= 0x10;
                assert!(decode_meta(&tampered).is_err());
                assert!(decode_offset_index(&tampered).is_err());
                assert!(decode_time_index(&tampered).is_err());
            }
            assert!(decode_offset_index(&file[..file.len() - 1]).is_err());
        }
    }
}
