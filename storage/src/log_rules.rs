//! The offset rules both log stores share, so that the in-memory twin and fjall agree on
//! every edge case (reads at the ends, truncation inside a batch, clamping the watermark).

use crate::{FetchedBatch, PartitionOffsets, StorageError};

/// Checks a read at `offset`: `Ok(false)` when nothing can be returned (offset at the end),
/// `Ok(true)` when batches may follow, and an error outside `[log_start, log_end]`.
pub(crate) fn check_read(offsets: &PartitionOffsets, offset: i64) -> Result<bool, StorageError> {
    if offset < offsets.log_start || offset > offsets.log_end {
        return Err(StorageError::OffsetOutOfRange { offset, log_start: offsets.log_start, log_end: offsets.log_end });
    }
    Ok(offset < offsets.log_end)
}

/// Takes whole batches in offset order: skips those ending before `offset`, stops at the
/// first one reaching `upper_bound`, and stops before `max_bytes` would be exceeded unless
/// nothing has been taken yet.
pub(crate) fn collect_read(
    batches: impl Iterator<Item = Result<FetchedBatch, StorageError>>,
    offset: i64,
    max_bytes: usize,
    upper_bound: i64,
) -> Result<Vec<FetchedBatch>, StorageError> {
    let mut taken = Vec::new();
    let mut total = 0usize;
    for batch in batches {
        let batch = batch?;
        if batch.last_offset < offset {
            continue;
        }
        if batch.last_offset >= upper_bound {
            break;
        }
        if !taken.is_empty() && total + batch.bytes.len() > max_bytes {
            break;
        }
        total += batch.bytes.len();
        taken.push(batch);
    }
    Ok(taken)
}

/// The offsets after removing the batches that end before `offset`, or `None` when the
/// log start is already at or past it.
///
/// The log start moves to `offset` (even inside a batch, as Kafka's DeleteRecords does); an
/// offset past the log end empties the log and restarts it there.
pub(crate) fn truncate_before(offsets: PartitionOffsets, offset: i64) -> Option<PartitionOffsets> {
    if offset <= offsets.log_start {
        return None;
    }
    let log_end = offsets.log_end.max(offset);
    Some(PartitionOffsets { log_start: offset, log_end, high_watermark: offsets.high_watermark.clamp(offset, log_end) })
}

/// The offsets after removing every batch whose last offset is at or after `offset`.
///
/// `last_remaining` is the last offset of the last batch kept, `first_removed_base` the base
/// offset of the first batch removed; the log end never ends inside a batch.
pub(crate) fn truncate_after(
    offsets: PartitionOffsets,
    offset: i64,
    last_remaining: Option<i64>,
    first_removed_base: Option<i64>,
) -> PartitionOffsets {
    let log_end = match last_remaining {
        Some(last) => last + 1,
        None => first_removed_base.unwrap_or(offset).min(offset),
    };
    let log_start = offsets.log_start.min(log_end);
    PartitionOffsets { log_start, log_end, high_watermark: offsets.high_watermark.clamp(log_start, log_end) }
}

/// The high watermark clamped into `[log_start, log_end]`.
pub(crate) fn clamp_high_watermark(offsets: &PartitionOffsets, high_watermark: i64) -> i64 {
    high_watermark.clamp(offsets.log_start, offsets.log_end)
}
