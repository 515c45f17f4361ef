//! Key and value encodings of the fjall log keyspaces.
//!
//! Every log key starts with the partition's 8-byte internal id, so one partition is one
//! contiguous key range; signed numbers are stored big-endian with the sign bit flipped so
//! that byte order is numeric order.

use crate::{PartitionId, PartitionOffsets, StorageError};

/// Keyspace of batch bytes: `id | base offset` → RecordBatch v2 bytes.
pub(super) const BATCHES: &str = "log.batches";
/// Keyspace of per-batch metadata: `id | base offset` → [`IndexEntry`].
pub(super) const INDEX: &str = "log.index";
/// Keyspace of the time index: `id | running max timestamp` → base offset.
pub(super) const TIME: &str = "log.time";
/// Keyspace of partition records, the id counter and pending deletions.
pub(super) const META: &str = "log.meta";
/// Prefix of the keyspace holding one state space.
pub(super) const STATE_PREFIX: &str = "state.";

/// Meta key of the next internal partition id.
pub(super) const NEXT_ID_KEY: &[u8] = b"n";
const PARTITION_TAG: u8 = b'p';
const DELETING_TAG: u8 = b'd';

/// An `i64` as 8 bytes whose byte order is numeric order.
pub(super) fn ordered(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`ordered`].
pub(super) fn from_ordered(bytes: &[u8]) -> Result<i64, StorageError> {
    Ok((u64::from_be_bytes(fixed(bytes)?) ^ (1 << 63)) as i64)
}

/// `id | ordered(value)`: a key in the batches, index or time keyspace.
pub(super) fn log_key(id: u64, value: i64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&id.to_be_bytes());
    key[8..].copy_from_slice(&ordered(value));
    key
}

/// The second half of a [`log_key`].
pub(super) fn log_key_value(key: &[u8]) -> Result<i64, StorageError> {
    if key.len() != 16 {
        return Err(StorageError::CorruptMetadata(format!("log key of {} bytes", key.len())));
    }
    from_ordered(&key[8..])
}

/// The whole key range of one partition in a log keyspace.
pub(super) fn partition_range(id: u64) -> std::ops::RangeInclusive<[u8; 16]> {
    log_key(id, i64::MIN)..=log_key(id, i64::MAX)
}

/// Meta key of a partition record: `p | partition | stream`.
pub(super) fn partition_key(id: &PartitionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + id.stream.len());
    key.push(PARTITION_TAG);
    key.extend_from_slice(&id.partition.to_be_bytes());
    key.extend_from_slice(id.stream.as_bytes());
    key
}

/// Decodes a meta key; `None` for keys that are not partition records.
pub(super) fn parse_partition_key(key: &[u8]) -> Result<Option<PartitionId>, StorageError> {
    if key.first() != Some(&PARTITION_TAG) {
        return Ok(None);
    }
    if key.len() < 5 {
        return Err(StorageError::CorruptMetadata("short partition key".into()));
    }
    let partition = u32::from_be_bytes(fixed(&key[1..5])?);
    let stream = String::from_utf8(key[5..].to_vec())
        .map_err(|_| StorageError::CorruptMetadata("stream name is not utf-8".into()))?;
    Ok(Some(PartitionId { stream, partition }))
}

/// Meta key marking a partition whose data is still being removed: `d | id`.
pub(super) fn deleting_key(id: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = DELETING_TAG;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Decodes a meta key; `None` for keys that are not deletion markers.
pub(super) fn parse_deleting_key(key: &[u8]) -> Result<Option<u64>, StorageError> {
    if key.first() != Some(&DELETING_TAG) {
        return Ok(None);
    }
    Ok(Some(u64::from_be_bytes(fixed(&key[1..])?)))
}

/// The persisted state of one partition (value of a partition record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartitionRecord {
    pub(super) internal_id: u64,
    pub(super) offsets: PartitionOffsets,
    pub(super) size_bytes: u64,
}

impl PartitionRecord {
    pub(super) fn encode(&self) -> [u8; 40] {
        let mut out = [0; 40];
        out[0..8].copy_from_slice(&self.internal_id.to_be_bytes());
        out[8..16].copy_from_slice(&self.offsets.log_start.to_be_bytes());
        out[16..24].copy_from_slice(&self.offsets.log_end.to_be_bytes());
        out[24..32].copy_from_slice(&self.offsets.high_watermark.to_be_bytes());
        out[32..40].copy_from_slice(&self.size_bytes.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != 40 {
            return Err(StorageError::CorruptMetadata(format!("partition record of {} bytes", bytes.len())));
        }
        Ok(Self {
            internal_id: u64::from_be_bytes(fixed(&bytes[0..8])?),
            offsets: PartitionOffsets {
                log_start: i64::from_be_bytes(fixed(&bytes[8..16])?),
                log_end: i64::from_be_bytes(fixed(&bytes[16..24])?),
                high_watermark: i64::from_be_bytes(fixed(&bytes[24..32])?),
            },
            size_bytes: u64::from_be_bytes(fixed(&bytes[32..40])?),
        })
    }
}

/// Per-batch metadata kept beside the bytes, so truncation and the time index never read
/// batch bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub(super) last_offset: i64,
    pub(super) max_timestamp: i64,
    pub(super) size: u32,
}

impl IndexEntry {
    pub(super) fn encode(&self) -> [u8; 20] {
        let mut out = [0; 20];
        out[0..8].copy_from_slice(&self.last_offset.to_be_bytes());
        out[8..16].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[16..20].copy_from_slice(&self.size.to_be_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != 20 {
            return Err(StorageError::CorruptMetadata(format!("index entry of {} bytes", bytes.len())));
        }
        Ok(Self {
            last_offset: i64::from_be_bytes(fixed(&bytes[0..8])?),
            max_timestamp: i64::from_be_bytes(fixed(&bytes[8..16])?),
            size: u32::from_be_bytes(fixed(&bytes[16..20])?),
        })
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], StorageError> {
    bytes.try_into().map_err(|_| StorageError::CorruptMetadata(format!("expected {N} bytes, found {}", bytes.len())))
}
