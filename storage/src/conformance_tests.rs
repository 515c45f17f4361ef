//! One test suite per seam run against every store behind it, so the in-memory twin cannot
//! drift from production: the state suite against fjall, the log suite against segment files.

use bytes::Bytes;

use crate::{
    Append, LogStore, NewRecord, PartitionId, PartitionOffsets, StateOp, StateStore, StorageError, build_record_batch,
    decode_records,
};

pub(crate) fn pid(stream: &str, partition: u32) -> PartitionId {
    PartitionId { stream: stream.to_owned(), partition }
}

/// A batch of `count` records with values `v<i>` and timestamps `timestamp + i`.
pub(crate) fn batch(count: usize, timestamp: i64) -> Bytes {
    let values: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
    let records: Vec<NewRecord> = values
        .iter()
        .enumerate()
        .map(|(i, value)| NewRecord {
            key: Some(b"k"),
            value: Some(value.as_bytes()),
            headers: &[],
            timestamp_ms: timestamp + i as i64,
        })
        .collect();
    build_record_batch(&records, timestamp)
}

fn offsets(log_start: i64, log_end: i64) -> PartitionOffsets {
    PartitionOffsets { log_start, log_end }
}

/// Appends batches of the given sizes with increasing timestamps; returns their bases.
fn fill(store: &dyn LogStore, id: &PartitionId, sizes: &[usize]) -> Vec<i64> {
    sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| store.append(id, 1, batch(size, 1_000 * (n as i64 + 1))).unwrap().base_offset)
        .collect()
}

fn bases(batches: &[crate::FetchedBatch]) -> Vec<i64> {
    batches.iter().map(|batch| batch.base_offset).collect()
}

pub(crate) fn state_put_get_delete(store: &dyn StateStore) {
    assert_eq!(store.get("sessions", b"a").unwrap(), None);
    store.put("sessions", b"a", b"1").unwrap();
    store.put("sessions", b"a", b"2").unwrap();
    store.put("retained", b"a", b"other space").unwrap();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"2".to_vec()));
    store.delete("sessions", b"a").unwrap();
    store.delete("sessions", b"absent").unwrap();
    store.delete("never-written", b"a").unwrap();
    assert_eq!(store.get("sessions", b"a").unwrap(), None);
    assert_eq!(store.get("retained", b"a").unwrap(), Some(b"other space".to_vec()));
    store.sync().unwrap();
}

pub(crate) fn state_scan_and_delete_prefix(store: &dyn StateStore) {
    for key in [&b"ab"[..], b"a", b"abc", b"ab\xff", b"ac", b"b"] {
        store.put("space", key, key).unwrap();
    }
    let scanned = store.scan_prefix("space", b"ab").unwrap();
    let keys: Vec<&[u8]> = scanned.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, vec![&b"ab"[..], b"abc", b"ab\xff"]);
    assert!(scanned.iter().all(|(key, value)| key == value));
    assert_eq!(store.scan_prefix("space", b"").unwrap().len(), 6);
    assert!(store.scan_prefix("empty-space", b"").unwrap().is_empty());
    store.delete_prefix("space", b"ab").unwrap();
    store.delete_prefix("empty-space", b"").unwrap();
    let left: Vec<Vec<u8>> = store.scan_prefix("space", b"").unwrap().into_iter().map(|(key, _)| key).collect();
    assert_eq!(left, vec![b"a".to_vec(), b"ac".to_vec(), b"b".to_vec()]);
}

pub(crate) fn state_write_batch(store: &dyn StateStore) {
    store.put("one", b"gone", b"x").unwrap();
    store
        .write_batch(vec![
            StateOp::Put { space: "one", key: b"k1".to_vec(), value: b"v1".to_vec() },
            StateOp::Put { space: "two", key: b"k2".to_vec(), value: b"v2".to_vec() },
            StateOp::Delete { space: "one", key: b"gone".to_vec() },
            StateOp::Put { space: "one", key: b"k1".to_vec(), value: b"v1b".to_vec() },
        ])
        .unwrap();
    store.write_batch(Vec::new()).unwrap();
    assert_eq!(store.get("one", b"k1").unwrap(), Some(b"v1b".to_vec()));
    assert_eq!(store.get("two", b"k2").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.get("one", b"gone").unwrap(), None);
}

pub(crate) fn log_partitions_lifecycle(store: &dyn LogStore) {
    let (b, a1, a0) = (pid("b", 0), pid("a", 1), pid("a", 0));
    assert!(matches!(store.offsets(&a0), Err(StorageError::UnknownPartition { .. })));
    assert!(matches!(store.append(&a0, 0, batch(1, 1)), Err(StorageError::UnknownPartition { .. })));
    for id in [&b, &a1, &a0, &a0] {
        store.create_partition(id).unwrap();
    }
    assert_eq!(store.partitions().unwrap(), vec![a0.clone(), a1.clone(), b.clone()]);
    fill(store, &a0, &[3, 2]);
    store.create_partition(&a0).unwrap();
    assert_eq!(store.offsets(&a0).unwrap().log_end, 5, "create is idempotent and keeps data");
    store.delete_partition(&a0).unwrap();
    store.delete_partition(&a0).unwrap();
    assert_eq!(store.partitions().unwrap(), vec![a1.clone(), b]);
    assert!(matches!(store.read(&a0, 0, 1 << 20, i64::MAX), Err(StorageError::UnknownPartition { .. })));
    store.create_partition(&a0).unwrap();
    assert_eq!(store.offsets(&a0).unwrap(), offsets(0, 0));
    assert!(store.read(&a0, 0, 1 << 20, i64::MAX).unwrap().is_empty());
    assert_eq!(store.size_bytes(&a0).unwrap(), 0);
    assert_eq!(store.offsets(&a1).unwrap(), offsets(0, 0), "other partitions untouched");
}

pub(crate) fn log_append_assigns_contiguous_offsets(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    let mut expected_end = 0;
    for (n, size) in [1usize, 5, 2, 10].into_iter().enumerate() {
        let result = store.append(&id, 7 + n as i32, batch(size, 100)).unwrap();
        assert_eq!(result.base_offset, expected_end);
        assert_eq!(result.last_offset, expected_end + size as i64 - 1);
        expected_end += size as i64;
    }
    assert_eq!(store.offsets(&id).unwrap(), offsets(0, 18));
    let fetched = store.read(&id, 0, usize::MAX, i64::MAX).unwrap();
    assert_eq!(bases(&fetched), vec![0, 1, 6, 8]);
    let mut next = 0;
    for (n, fetched) in fetched.iter().enumerate() {
        let header = crate::validate_batch(&fetched.bytes).unwrap();
        assert_eq!(header.base_offset, fetched.base_offset);
        assert_eq!(header.partition_leader_epoch, 7 + n as i32);
        assert_eq!(fetched.last_offset, header.last_offset());
        for record in decode_records(&fetched.bytes).unwrap() {
            assert_eq!(record.offset, next);
            next += 1;
        }
    }
    assert_eq!(next, 18);
    let total: u64 = fetched.iter().map(|batch| batch.bytes.len() as u64).sum();
    assert_eq!(store.size_bytes(&id).unwrap(), total);
}

pub(crate) fn log_append_rejects_invalid_batches(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    let good = batch(2, 5);
    let mut corrupt = good.to_vec();
    *corrupt.last_mut().unwrap() ^= 1;
    let mut bad_magic = good.to_vec();
    bad_magic[16] = 1;
    for bad in [Bytes::from(corrupt), Bytes::from(bad_magic), good.slice(..40), good.slice(..good.len() - 2)] {
        assert!(matches!(store.append(&id, 0, bad), Err(StorageError::InvalidBatch(_))));
    }
    assert!(matches!(store.append(&id, 0, build_record_batch(&[], 0)), Err(StorageError::InvalidBatch(_))));
    assert_eq!(store.offsets(&id).unwrap(), offsets(0, 0));
    assert_eq!(store.append(&id, 0, good).unwrap().base_offset, 0);
}

pub(crate) fn log_read_from_the_middle_of_a_batch(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    fill(store, &id, &[4, 4, 4]);
    for offset in 4..8 {
        let fetched = store.read(&id, offset, usize::MAX, i64::MAX).unwrap();
        assert_eq!(bases(&fetched), vec![4, 8], "read at {offset}");
        assert_eq!(fetched[0].last_offset, 7);
    }
    assert_eq!(bases(&store.read(&id, 11, usize::MAX, i64::MAX).unwrap()), vec![8]);
    assert!(store.read(&id, 12, usize::MAX, i64::MAX).unwrap().is_empty(), "at the log end");
    assert!(matches!(store.read(&id, 13, 1, i64::MAX), Err(StorageError::OffsetOutOfRange { .. })));
    assert!(matches!(store.read(&id, -1, 1, i64::MAX), Err(StorageError::OffsetOutOfRange { .. })));
}

pub(crate) fn log_read_respects_max_bytes_and_upper_bound(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    fill(store, &id, &[3, 3, 3, 3]);
    let all = store.read(&id, 0, usize::MAX, i64::MAX).unwrap();
    let one = all[0].bytes.len();
    assert_eq!(bases(&store.read(&id, 0, 0, i64::MAX).unwrap()), vec![0], "at least one batch");
    assert_eq!(bases(&store.read(&id, 0, one, i64::MAX).unwrap()), vec![0]);
    assert_eq!(bases(&store.read(&id, 0, 2 * one, i64::MAX).unwrap()), vec![0, 3]);
    assert_eq!(bases(&store.read(&id, 1, 2 * one + 1, i64::MAX).unwrap()), vec![0, 3]);
    assert_eq!(bases(&store.read(&id, 0, usize::MAX, 9).unwrap()), vec![0, 3, 6], "whole batches below the bound");
    assert_eq!(bases(&store.read(&id, 0, usize::MAX, 8).unwrap()), vec![0, 3], "no batch crossing the bound");
    assert!(store.read(&id, 0, usize::MAX, 2).unwrap().is_empty());
    assert!(store.read(&id, 4, usize::MAX, 3).unwrap().is_empty());
    assert_eq!(bases(&store.read(&id, 5, 0, 9).unwrap()), vec![3]);
}

pub(crate) fn log_offset_for_timestamp(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    assert_eq!(store.offset_for_timestamp(&id, 0).unwrap(), None);
    // Batch max timestamps, in offset order: 10+1, 30+1, 20+1, 50+1, 40+1 (two records each).
    for timestamp in [10, 30, 20, 50, 40] {
        store.append(&id, 0, batch(2, timestamp)).unwrap();
    }
    let lookups = [(i64::MIN, Some(0)), (11, Some(0)), (12, Some(2)), (21, Some(2)), (31, Some(2))];
    for (timestamp, expected) in lookups.into_iter().chain([(32, Some(6)), (45, Some(6)), (51, Some(6)), (52, None)]) {
        assert_eq!(store.offset_for_timestamp(&id, timestamp).unwrap(), expected, "timestamp {timestamp}");
    }
    store.truncate_before(&id, 4).unwrap();
    // Left: [4,5] max 21, [6,7] max 51, [8,9] max 41.
    for (timestamp, expected) in [(0, Some(4)), (21, Some(4)), (22, Some(6)), (41, Some(6)), (52, None)] {
        assert_eq!(store.offset_for_timestamp(&id, timestamp).unwrap(), expected, "after truncation, {timestamp}");
    }
    store.truncate_before(&id, 5).unwrap();
    assert_eq!(store.offset_for_timestamp(&id, 0).unwrap(), Some(5), "never below the log start");
    store.truncate_after(&id, 6).unwrap();
    assert_eq!(store.offset_for_timestamp(&id, 22).unwrap(), None);
    store.append(&id, 0, batch(1, 100)).unwrap();
    assert_eq!(store.offset_for_timestamp(&id, 22).unwrap(), Some(6));
}

pub(crate) fn log_truncate_before(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    fill(store, &id, &[3, 3, 3]);
    let full = store.size_bytes(&id).unwrap();
    store.truncate_before(&id, 2).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(2, 9), "start moves inside the first batch");
    assert_eq!(store.size_bytes(&id).unwrap(), full, "no whole batch ended before 2");
    assert_eq!(bases(&store.read(&id, 2, usize::MAX, i64::MAX).unwrap()), vec![0, 3, 6]);
    assert!(matches!(store.read(&id, 1, 1, i64::MAX), Err(StorageError::OffsetOutOfRange { .. })));
    store.truncate_before(&id, 3).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(3, 9));
    assert!(store.size_bytes(&id).unwrap() < full);
    assert_eq!(bases(&store.read(&id, 3, usize::MAX, i64::MAX).unwrap()), vec![3, 6]);
    store.truncate_before(&id, 1).unwrap();
    assert_eq!(store.offsets(&id).unwrap().log_start, 3, "the start never moves back");
    store.truncate_before(&id, 7).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(7, 9));
    assert_eq!(bases(&store.read(&id, 7, usize::MAX, i64::MAX).unwrap()), vec![6]);
    store.truncate_before(&id, 20).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(20, 20), "past the end restarts the log there");
    assert_eq!(store.size_bytes(&id).unwrap(), 0);
    assert!(store.read(&id, 20, usize::MAX, i64::MAX).unwrap().is_empty());
    assert_eq!(store.append(&id, 0, batch(2, 1)).unwrap().base_offset, 20);
    assert_eq!(bases(&store.read(&id, 20, usize::MAX, i64::MAX).unwrap()), vec![20]);
}

pub(crate) fn log_retention_offset_for_bytes(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    assert_eq!(store.retention_offset_for_bytes(&id, 0).unwrap(), None, "empty");
    fill(store, &id, &[3, 3, 3, 3]);
    let one = store.size_bytes(&id).unwrap() / 4;
    assert_eq!(store.retention_offset_for_bytes(&id, 4 * one).unwrap(), None, "everything fits");
    assert_eq!(store.retention_offset_for_bytes(&id, 4 * one - 1).unwrap(), Some(3));
    assert_eq!(store.retention_offset_for_bytes(&id, 2 * one).unwrap(), Some(6));
    assert_eq!(store.retention_offset_for_bytes(&id, one + 1).unwrap(), Some(9));
    assert_eq!(store.retention_offset_for_bytes(&id, 0).unwrap(), Some(9), "never the last batch");
    store.truncate_before(&id, 4).unwrap();
    assert_eq!(store.retention_offset_for_bytes(&id, 2 * one).unwrap(), Some(6), "counts only what is left");
    assert_eq!(store.retention_offset_for_bytes(&id, 3 * one).unwrap(), None);
}

pub(crate) fn log_append_at_checks_the_log_end(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    let at = |base_offset| Append { batch: batch(2, 1), leader_epoch: 0, base_offset };
    assert_eq!(store.append_at(&id, at(0)).unwrap(), crate::AppendResult { base_offset: 0, last_offset: 1 });
    for wrong in [0, 1, 3, -1] {
        let error = store.append_at(&id, at(wrong)).unwrap_err();
        assert!(matches!(error, StorageError::NotAtLogEnd { expected, log_end: 2 } if expected == wrong), "{error}");
    }
    assert_eq!(store.offsets(&id).unwrap().log_end, 2, "nothing written");
    assert_eq!(store.append_at(&id, at(2)).unwrap().base_offset, 2);
}

/// Submits appends with the given expected bases; returns each outcome (base offset or
/// error) in the order the store reported them.
fn submit_all(store: &dyn LogStore, id: &PartitionId, bases: &[i64]) -> Vec<Result<i64, String>> {
    let (sender, outcomes) = std::sync::mpsc::channel();
    for (n, &base_offset) in bases.iter().enumerate() {
        let sender = sender.clone();
        let append = Append { batch: batch(2, 10 * n as i64), leader_epoch: 0, base_offset };
        let done = Box::new(move |result: Result<crate::AppendResult, StorageError>| {
            let _ = sender.send((n, result.map(|appended| appended.base_offset).map_err(|error| error.to_string())));
        });
        store.submit(id, append, done);
    }
    let mut seen: Vec<(usize, Result<i64, String>)> = (0..bases.len())
        .map(|_| outcomes.recv_timeout(std::time::Duration::from_secs(10)).expect("every submit completes"))
        .collect();
    let order: Vec<usize> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(order, (0..bases.len()).collect::<Vec<_>>(), "completed in submission order");
    seen.drain(..).map(|(_, outcome)| outcome).collect()
}

pub(crate) fn log_submit_reports_in_order_and_checks_offsets(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    let outcomes = submit_all(store, &id, &[0, 2, 9, 4, 6]);
    assert_eq!(outcomes[..2], [Ok(0), Ok(2)]);
    assert!(outcomes[2].as_ref().is_err_and(|error| error.contains("log ends at 4")), "{:?}", outcomes[2]);
    assert_eq!(outcomes[3..], [Ok(4), Ok(6)]);
    assert_eq!(bases(&store.read(&id, 0, usize::MAX, i64::MAX).unwrap()), vec![0, 2, 4, 6]);
    let unknown = submit_all(store, &pid("unknown", 0), &[0]);
    assert!(unknown[0].as_ref().is_err_and(|error| error.contains("unknown partition")));
}

pub(crate) fn log_epoch_history(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    assert_eq!(store.end_offset_for_epoch(&id, 0).unwrap(), None, "no epoch yet");
    for epoch in [1, 1, 3, 3, 4] {
        store.append(&id, epoch, batch(2, 1)).unwrap();
    }
    // epochs 1 from 0, 3 from 4, 4 from 8; the log ends at 10
    assert_eq!(store.end_offset_for_epoch(&id, 4).unwrap(), Some((4, 10)));
    assert_eq!(store.end_offset_for_epoch(&id, 3).unwrap(), Some((3, 8)));
    assert_eq!(store.end_offset_for_epoch(&id, 2).unwrap(), Some((1, 4)));
    assert_eq!(store.end_offset_for_epoch(&id, 0).unwrap(), Some((0, 0)));
    assert_eq!(store.end_offset_for_epoch(&id, 5).unwrap(), None);
    store.append(&id, 2, batch(1, 1)).unwrap();
    assert_eq!(store.end_offset_for_epoch(&id, 4).unwrap(), Some((4, 11)), "an older epoch starts nothing");
    store.truncate_after(&id, 8).unwrap();
    assert_eq!(store.end_offset_for_epoch(&id, 4).unwrap(), None, "epoch 4 was cut off");
    assert_eq!(store.end_offset_for_epoch(&id, 3).unwrap(), Some((3, 8)));
    store.truncate_before(&id, 6).unwrap();
    assert_eq!(store.end_offset_for_epoch(&id, 2).unwrap(), Some((2, 6)), "below the log start");
    store.append(&id, 7, batch(1, 1)).unwrap();
    assert_eq!(store.end_offset_for_epoch(&id, 3).unwrap(), Some((3, 8)));
    assert_eq!(store.end_offset_for_epoch(&id, 6).unwrap(), Some((3, 8)));
    assert_eq!(store.end_offset_for_epoch(&id, 7).unwrap(), Some((7, 9)));
}

pub(crate) fn log_truncate_after(store: &dyn LogStore) {
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    fill(store, &id, &[3, 3, 3]);
    let two_batches: u64 =
        store.read(&id, 0, usize::MAX, 6).unwrap().iter().map(|batch| batch.bytes.len() as u64).sum();
    store.truncate_after(&id, 9).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(0, 9), "at the end: nothing to cut");
    store.truncate_after(&id, 7).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(0, 6), "the batch holding 7 goes whole");
    assert_eq!(store.size_bytes(&id).unwrap(), two_batches);
    assert_eq!(bases(&store.read(&id, 0, usize::MAX, i64::MAX).unwrap()), vec![0, 3]);
    assert_eq!(store.append(&id, 2, batch(1, 5)).unwrap().base_offset, 6);
    store.truncate_after(&id, 3).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(0, 3));
    assert_eq!(bases(&store.read(&id, 0, usize::MAX, i64::MAX).unwrap()), vec![0]);
    store.truncate_after(&id, 0).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), offsets(0, 0));
    assert_eq!(store.size_bytes(&id).unwrap(), 0);
    assert_eq!(store.append(&id, 3, batch(2, 5)).unwrap().base_offset, 0);
}

/// Generates one `#[test]` per suite function for a store built by `$make`.
macro_rules! conformance_suite {
    ($make:expr, $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (store, guard): (_, Option<tempfile::TempDir>) = $make;
                $crate::conformance_tests::$name(&store);
                drop(store);
                drop(guard);
            }
        )+
    };
}

macro_rules! state_conformance_tests {
    ($make:expr) => {
        conformance_suite!($make, state_put_get_delete, state_scan_and_delete_prefix, state_write_batch);
    };
}

macro_rules! log_conformance_tests {
    ($make:expr) => {
        conformance_suite!(
            $make,
            log_partitions_lifecycle,
            log_append_assigns_contiguous_offsets,
            log_append_rejects_invalid_batches,
            log_read_from_the_middle_of_a_batch,
            log_read_respects_max_bytes_and_upper_bound,
            log_offset_for_timestamp,
            log_truncate_before,
            log_retention_offset_for_bytes,
            log_append_at_checks_the_log_end,
            log_submit_reports_in_order_and_checks_offsets,
            log_epoch_history,
            log_truncate_after,
        );
    };
}

mod memory_store {
    state_conformance_tests!((crate::MemoryStore::new(), None));
    mod log {
        log_conformance_tests!((crate::MemoryStore::new(), None));
    }
}

mod fjall_store {
    state_conformance_tests!({
        let dir = tempfile::tempdir().unwrap();
        (crate::FjallStore::open(dir.path(), crate::FsyncPolicy::Always).unwrap(), Some(dir))
    });
}

mod segment_store {
    log_conformance_tests!({
        let dir = tempfile::tempdir().unwrap();
        (crate::SegmentStore::open(dir.path(), crate::SegmentOptions::default()).unwrap(), Some(dir))
    });
    mod tiny_segments {
        // every batch or two rolls a segment, and the indexes are dense
        log_conformance_tests!({
            let dir = tempfile::tempdir().unwrap();
            let options = crate::SegmentOptions { segment_bytes: 150, index_interval_bytes: 1, ..Default::default() };
            (crate::SegmentStore::open(dir.path(), options).unwrap(), Some(dir))
        });
    }
}
