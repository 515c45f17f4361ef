//! Tests only the segment store needs: reopening, rolling, torn and corrupt tails, stale
//! indexes, disk freed by retention and deletion, and a model check against `MemoryStore`
//! across random operations and reopens with tiny segments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::{SegmentOptions, SegmentStore};
use crate::conformance_tests::{batch, pid};
use crate::{Append, FsyncPolicy, LogStore, MemoryStore, PartitionId, PartitionOffsets};

fn options(segment_bytes: u64) -> SegmentOptions {
    SegmentOptions { segment_bytes, index_interval_bytes: 100, ..SegmentOptions::default() }
}

fn open(path: &Path) -> SegmentStore {
    SegmentStore::open(path, SegmentOptions::default()).unwrap()
}

fn open_small(path: &Path) -> SegmentStore {
    SegmentStore::open(path, options(400)).unwrap()
}

fn bases(store: &dyn LogStore, id: &PartitionId, offset: i64) -> Vec<i64> {
    store.read(id, offset, usize::MAX, i64::MAX).unwrap().iter().map(|batch| batch.base_offset).collect()
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_size(&entry.path()) } else { meta.len() };
    }
    total
}

fn last_segment(path: &Path, id: &PartitionId) -> PathBuf {
    open(path).segment_files(id).unwrap().pop().unwrap()
}

/// Changes the last segment file with the store closed.
fn tamper_last_segment(path: &Path, id: &PartitionId, tamper: impl FnOnce(&mut Vec<u8>)) {
    let file = last_segment(path, id);
    let mut bytes = std::fs::read(&file).unwrap();
    tamper(&mut bytes);
    std::fs::write(&file, bytes).unwrap();
}

#[test]
fn reopen_keeps_logs_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, other, dropped) = (pid("kept", 0), pid("kept", 1), pid("dropped", 0));
    let (offsets, size, fetched) = {
        let store = SegmentStore::open(dir.path(), options(150)).unwrap();
        for id in [&kept, &other, &dropped] {
            store.create_partition(id).unwrap();
        }
        for (size, timestamp) in [(2, 100), (3, 300), (4, 200), (1, 400)] {
            store.append(&kept, 4, batch(size, timestamp)).unwrap();
        }
        assert!(store.segment_files(&kept).unwrap().len() > 1, "150-byte segments roll");
        store.append(&dropped, 0, batch(5, 1)).unwrap();
        store.delete_partition(&dropped).unwrap();
        store.truncate_before(&kept, 3).unwrap();
        let fetched = store.read(&kept, 3, usize::MAX, i64::MAX).unwrap();
        (store.offsets(&kept).unwrap(), store.size_bytes(&kept).unwrap(), fetched)
    };
    assert_eq!(offsets, PartitionOffsets { log_start: 3, log_end: 10 });

    let store = SegmentStore::open(dir.path(), options(150)).unwrap();
    assert_eq!(store.partitions().unwrap(), vec![kept.clone(), other.clone()]);
    assert_eq!(store.offsets(&kept).unwrap(), offsets);
    assert_eq!(store.size_bytes(&kept).unwrap(), size);
    assert_eq!(store.read(&kept, 3, usize::MAX, i64::MAX).unwrap(), fetched);
    assert_eq!(store.offset_for_timestamp(&kept, 250).unwrap(), Some(3));
    assert_eq!(store.offset_for_timestamp(&kept, 303).unwrap(), Some(9));
    assert_eq!(store.offsets(&other).unwrap(), PartitionOffsets::default());
    assert_eq!(store.append(&kept, 5, batch(1, 500)).unwrap().base_offset, 10);
    store.create_partition(&dropped).unwrap();
    assert_eq!(store.offsets(&dropped).unwrap(), PartitionOffsets::default(), "no data comes back");
    assert!(bases(&store, &dropped, 0).is_empty());
}

#[test]
fn interval_policy_syncs_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    {
        let interval = SegmentOptions { fsync: FsyncPolicy::Interval(Duration::from_millis(5)), ..options(400) };
        let store = SegmentStore::open(dir.path(), interval).unwrap();
        assert_eq!(store.options().fsync, FsyncPolicy::Interval(Duration::from_millis(5)));
        store.create_partition(&id).unwrap();
        store.append(&id, 0, batch(3, 1)).unwrap();
        store.truncate_before(&id, 1).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.offsets(&id).unwrap(), PartitionOffsets { log_start: 1, log_end: 3 });
}

/// Appends batches of 2, 3 and 4 records (max timestamps 101, 202, 303) and closes the
/// store; returns the size of the first two batches.
fn three_batches(path: &Path, id: &PartitionId) -> u64 {
    let store = open(path);
    store.create_partition(id).unwrap();
    for (size, timestamp) in [(2, 100), (3, 200), (4, 300)] {
        store.append(id, 1, batch(size, timestamp)).unwrap();
    }
    store.read(id, 0, usize::MAX, 5).unwrap().iter().map(|batch| batch.bytes.len() as u64).sum()
}

fn assert_tail_cut(path: &Path, id: &PartitionId, first_two: u64) {
    let store = open(path);
    assert_eq!(store.offsets(id).unwrap(), PartitionOffsets { log_start: 0, log_end: 5 });
    assert_eq!(bases(&store, id, 0), vec![0, 2]);
    assert!(bases(&store, id, 5).is_empty());
    assert_eq!(store.size_bytes(id).unwrap(), first_two);
    assert_eq!(std::fs::metadata(last_segment_of(&store, id)).unwrap().len(), first_two, "the file is cut");
    assert_eq!(store.offset_for_timestamp(id, 250).unwrap(), None);
    assert_eq!(store.append(id, 2, batch(1, 400)).unwrap().base_offset, 5);
    assert_eq!(store.offset_for_timestamp(id, 250).unwrap(), Some(5));
    drop(store);
    let store = open(path);
    assert_eq!(store.offsets(id).unwrap().log_end, 6, "the cut itself is durable");
    assert_eq!(bases(&store, id, 0), vec![0, 2, 5]);
}

fn last_segment_of(store: &SegmentStore, id: &PartitionId) -> PathBuf {
    store.segment_files(id).unwrap().pop().unwrap()
}

#[test]
fn torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let first_two = three_batches(dir.path(), &id);
    tamper_last_segment(dir.path(), &id, |bytes| bytes.truncate(bytes.len() - 7));
    assert_tail_cut(dir.path(), &id, first_two);
}

#[test]
fn corrupt_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let first_two = three_batches(dir.path(), &id);
    tamper_last_segment(dir.path(), &id, |bytes| *bytes.last_mut().unwrap() ^= 0x40);
    assert_tail_cut(dir.path(), &id, first_two);
}

#[test]
fn a_batch_after_a_corrupt_one_is_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let first_two = three_batches(dir.path(), &id);
    tamper_last_segment(dir.path(), &id, |bytes| {
        let at = first_two as usize + 30;
        bytes[at] ^= 1;
        // a well-formed batch with the right base offset after the corrupt one
        let mut stray = batch(1, 900).to_vec();
        stray[..8].copy_from_slice(&9i64.to_be_bytes());
        bytes.extend_from_slice(&stray);
    });
    assert_tail_cut(dir.path(), &id, first_two);
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    three_batches(dir.path(), &id);
    let whole = std::fs::metadata(last_segment(dir.path(), &id)).unwrap().len();
    tamper_last_segment(dir.path(), &id, |bytes| bytes.extend_from_slice(&[0xAB; 100]));
    let store = open(dir.path());
    assert_eq!(store.offsets(&id).unwrap().log_end, 9);
    assert_eq!(std::fs::metadata(last_segment_of(&store, &id)).unwrap().len(), whole);
}

#[test]
fn a_log_whose_every_batch_is_corrupt_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    {
        let store = open(dir.path());
        store.create_partition(&id).unwrap();
        store.append(&id, 0, batch(2, 1)).unwrap();
    }
    tamper_last_segment(dir.path(), &id, |bytes| bytes[16] = 1);
    let store = open(dir.path());
    assert_eq!(store.offsets(&id).unwrap(), PartitionOffsets::default());
    assert_eq!(store.size_bytes(&id).unwrap(), 0);
    assert!(bases(&store, &id, 0).is_empty());
}

#[test]
fn a_stale_or_missing_index_is_rebuilt_from_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let expected = {
        let store = open_small(dir.path());
        store.create_partition(&id).unwrap();
        for n in 0..12 {
            store.append(&id, 0, batch(2, 100 * n)).unwrap();
        }
        assert!(store.segment_files(&id).unwrap().len() >= 3);
        store.read(&id, 0, usize::MAX, i64::MAX).unwrap()
    };
    let files = open_small(dir.path()).segment_files(&id).unwrap();
    std::fs::remove_file(files[0].with_extension("index")).unwrap();
    let mut time = std::fs::read(files[1].with_extension("timeindex")).unwrap();
    time[9] ^= 1;
    std::fs::write(files[1].with_extension("timeindex"), time).unwrap();
    let store = open_small(dir.path());
    assert_eq!(store.read(&id, 0, usize::MAX, i64::MAX).unwrap(), expected);
    for n in 0..12 {
        assert_eq!(store.offset_for_timestamp(&id, 100 * n).unwrap(), Some(2 * n), "timestamp {}", 100 * n);
    }
}

#[test]
fn segments_roll_by_age_of_record_time() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let store =
        SegmentStore::open(dir.path(), SegmentOptions { segment_ms: 1000, ..SegmentOptions::default() }).unwrap();
    store.create_partition(&id).unwrap();
    for timestamp in [0, 500, 998, 1_000, 1_500, 5_000] {
        store.append(&id, 0, batch(1, timestamp)).unwrap();
    }
    // segments start at the batches stamped 0, 1000 and 5000
    let names: Vec<String> = store
        .segment_files(&id)
        .unwrap()
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["00000000000000000000.log", "00000000000000000003.log", "00000000000000000005.log"]);
}

#[test]
fn retention_and_deletion_free_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (id, other) = (pid("big", 0), pid("other", 0));
    let store = SegmentStore::open(dir.path(), options(64 * 1024)).unwrap();
    store.create_partition(&id).unwrap();
    store.create_partition(&other).unwrap();
    let mut end = 0;
    for n in 0..1000 {
        end = store.append(&id, 0, batch(50, n)).unwrap().last_offset + 1;
    }
    let full = dir_size(dir.path());
    assert!(full > 500_000, "{full}");
    let keep_from = end - 100;
    store.truncate_before(&id, keep_from).unwrap();
    let after_retention = dir_size(dir.path());
    assert!(after_retention < 200_000, "retention left {after_retention} of {full} bytes");
    assert_eq!(store.offsets(&id).unwrap().log_start, keep_from);
    assert_eq!(store.read(&id, keep_from, usize::MAX, i64::MAX).unwrap()[0].last_offset, keep_from + 49);
    store.append(&other, 0, batch(3, 1)).unwrap();
    store.delete_partition(&id).unwrap();
    assert!(dir_size(dir.path()) < 10_000, "deletion left {} bytes", dir_size(dir.path()));
    assert_eq!(bases(&store, &other, 0), vec![0]);
}

#[test]
fn interrupted_creation_and_deletion_are_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    {
        let store = open(dir.path());
        store.create_partition(&id).unwrap();
        store.append(&id, 0, batch(2, 1)).unwrap();
    }
    std::fs::create_dir(dir.path().join(".creating-7")).unwrap();
    std::fs::create_dir(dir.path().join(".deleting-3")).unwrap();
    std::fs::write(dir.path().join(".deleting-3").join("x.log"), b"old").unwrap();
    let store = open(dir.path());
    assert_eq!(store.partitions().unwrap(), vec![id.clone()]);
    assert!(!dir.path().join(".creating-7").exists() && !dir.path().join(".deleting-3").exists());
    assert_eq!(store.offsets(&id).unwrap().log_end, 2);
}

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, timestamp: i64, epoch: i32, submitted: bool },
    TruncateBefore(i64),
    TruncateAfter(i64),
    RetainBytes(u64),
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1_usize..5, 0_i64..100, 0_i32..5, any::<bool>())
            .prop_map(|(records, timestamp, epoch, submitted)| Op::Append { records, timestamp, epoch, submitted }),
        1 => (0_i64..40).prop_map(Op::TruncateBefore),
        1 => (0_i64..40).prop_map(Op::TruncateAfter),
        1 => (0_u64..600).prop_map(Op::RetainBytes),
        1 => Just(Op::Reopen),
    ]
}

fn same_log(segments: &SegmentStore, model: &MemoryStore, id: &PartitionId) -> Result<(), TestCaseError> {
    let offsets = model.offsets(id).unwrap();
    prop_assert_eq!(segments.offsets(id).unwrap(), offsets);
    prop_assert_eq!(segments.size_bytes(id).unwrap(), model.size_bytes(id).unwrap());
    for offset in offsets.log_start - 1..=offsets.log_end + 1 {
        for (max_bytes, upper_bound) in [(usize::MAX, i64::MAX), (1, i64::MAX), (200, offsets.log_end - 2)] {
            let expected = model.read(id, offset, max_bytes, upper_bound).map_err(|error| error.to_string());
            let actual = segments.read(id, offset, max_bytes, upper_bound).map_err(|error| error.to_string());
            prop_assert_eq!(actual, expected, "read at {}", offset);
        }
    }
    for epoch in -1..=5 {
        prop_assert_eq!(
            segments.end_offset_for_epoch(id, epoch).unwrap(),
            model.end_offset_for_epoch(id, epoch).unwrap(),
            "epoch {}",
            epoch
        );
    }
    for timestamp in (-1..=106).step_by(3) {
        prop_assert_eq!(
            segments.offset_for_timestamp(id, timestamp).unwrap(),
            model.offset_for_timestamp(id, timestamp).unwrap(),
            "timestamp {}",
            timestamp
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn segments_behave_like_the_memory_model(
        ops in proptest::collection::vec(arb_op(), 1..40),
        segment_bytes in prop_oneof![Just(150_u64), Just(400), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let id = pid("model", 3);
        let model = MemoryStore::new();
        let options = SegmentOptions { segment_bytes, index_interval_bytes: 90, segment_ms: 50, ..SegmentOptions::default() };
        let mut segments = SegmentStore::open(dir.path(), options).unwrap();
        model.create_partition(&id).unwrap();
        segments.create_partition(&id).unwrap();
        for op in ops {
            match op {
                Op::Append { records, timestamp, epoch, submitted } => {
                    let bytes = batch(records, timestamp);
                    let expected = model.append(&id, epoch, bytes.clone()).unwrap();
                    let actual = if submitted {
                        let (sender, outcome) = std::sync::mpsc::channel();
                        let append = Append { batch: bytes, leader_epoch: epoch, base_offset: expected.base_offset };
                        segments.submit(&id, append, Box::new(move |result| { let _ = sender.send(result); }));
                        outcome.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()
                    } else {
                        segments.append(&id, epoch, bytes).unwrap()
                    };
                    prop_assert_eq!(actual, expected);
                }
                Op::TruncateBefore(offset) => {
                    segments.truncate_before(&id, offset).unwrap();
                    model.truncate_before(&id, offset).unwrap();
                }
                Op::TruncateAfter(offset) => {
                    segments.truncate_after(&id, offset).unwrap();
                    model.truncate_after(&id, offset).unwrap();
                }
                Op::RetainBytes(limit) => {
                    let keep_from = model.retention_offset_for_bytes(&id, limit).unwrap();
                    prop_assert_eq!(segments.retention_offset_for_bytes(&id, limit).unwrap(), keep_from);
                    if let Some(offset) = keep_from {
                        segments.truncate_before(&id, offset).unwrap();
                        model.truncate_before(&id, offset).unwrap();
                    }
                }
                Op::Reopen => {
                    drop(segments);
                    segments = SegmentStore::open(dir.path(), options).unwrap();
                }
            }
            same_log(&segments, &model, &id)?;
        }
    }
}
