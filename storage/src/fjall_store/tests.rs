//! Tests only the fjall store needs: reopening, torn tails, the fsync policy, and a model
//! check against `MemoryStore` across random operations and reopens.

use std::path::Path;
use std::time::Duration;

use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use proptest::prelude::*;

use super::keys;
use crate::conformance_tests::{batch, pid};
use crate::{FjallStore, FsyncPolicy, LogStore, MemoryStore, PartitionId, PartitionOffsets, StateStore, StorageError};

fn open(path: &Path) -> FjallStore {
    FjallStore::open(path, FsyncPolicy::Always).unwrap()
}

fn bases(store: &dyn LogStore, id: &PartitionId, offset: i64) -> Vec<i64> {
    store.read(id, offset, usize::MAX, i64::MAX).unwrap().iter().map(|batch| batch.base_offset).collect()
}

/// Rewrites the value of the last key in the batches keyspace with the store closed.
fn tamper_last_batch(path: &Path, tamper: impl FnOnce(&mut Vec<u8>)) {
    let db = Database::builder(path).open().unwrap();
    let batches = db.keyspace(keys::BATCHES, KeyspaceCreateOptions::default).unwrap();
    let (key, value) = batches.iter().next_back().unwrap().into_inner().unwrap();
    let mut value = value.to_vec();
    tamper(&mut value);
    batches.insert(key, value).unwrap();
    db.persist(PersistMode::SyncAll).unwrap();
}

#[test]
fn fsync_policy_parses_the_documented_forms() {
    assert_eq!("always".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Always);
    assert_eq!(" Always ".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Always);
    assert_eq!("interval:250".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Interval(Duration::from_millis(250)));
    for bad in ["", "never", "interval", "interval:", "interval:x", "interval:0", "interval:-5"] {
        let error = bad.parse::<FsyncPolicy>().unwrap_err();
        assert!(matches!(error, StorageError::InvalidFsyncPolicy(_)), "{bad:?}");
        assert!(error.to_string().contains("\"always\" or \"interval:<ms>\""), "{error}");
    }
}

#[test]
fn reopen_keeps_state_logs_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, other, dropped) = (pid("kept", 0), pid("kept", 1), pid("dropped", 0));
    let (offsets, size, fetched) = {
        let store = open(dir.path());
        store.put("sessions", b"client-1", b"state").unwrap();
        store.put("retained", b"t/1", b"payload").unwrap();
        for id in [&kept, &other, &dropped] {
            store.create_partition(id).unwrap();
        }
        for (size, timestamp) in [(2, 100), (3, 300), (4, 200), (1, 400)] {
            store.append(&kept, 4, batch(size, timestamp)).unwrap();
        }
        store.append(&dropped, 0, batch(5, 1)).unwrap();
        store.delete_partition(&dropped).unwrap();
        store.set_high_watermark(&kept, 9).unwrap();
        store.truncate_before(&kept, 3).unwrap();
        let fetched = store.read(&kept, 3, usize::MAX, i64::MAX).unwrap();
        (store.offsets(&kept).unwrap(), store.size_bytes(&kept).unwrap(), fetched)
    };
    assert_eq!(offsets, PartitionOffsets { log_start: 3, log_end: 10, high_watermark: 9 });

    let store = open(dir.path());
    assert_eq!(store.get("sessions", b"client-1").unwrap(), Some(b"state".to_vec()));
    assert_eq!(store.scan_prefix("retained", b"").unwrap().len(), 1);
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
fn interval_policy_flushes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    {
        let store = FjallStore::open(dir.path(), FsyncPolicy::Interval(Duration::from_millis(5))).unwrap();
        assert_eq!(store.fsync_policy(), FsyncPolicy::Interval(Duration::from_millis(5)));
        store.create_partition(&id).unwrap();
        store.append(&id, 0, batch(3, 1)).unwrap();
        store.put("space", b"k", b"v").unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.offsets(&id).unwrap().log_end, 3);
    assert_eq!(store.get("space", b"k").unwrap(), Some(b"v".to_vec()));
}

/// Appends batches of 2, 3 and 4 records (max timestamps 101, 202, 303), sets the high
/// watermark to 9 and closes the store; returns the size of the first two batches.
fn three_batches(path: &Path, id: &PartitionId) -> u64 {
    let store = open(path);
    store.create_partition(id).unwrap();
    for (size, timestamp) in [(2, 100), (3, 200), (4, 300)] {
        store.append(id, 1, batch(size, timestamp)).unwrap();
    }
    store.set_high_watermark(id, 9).unwrap();
    store.read(id, 0, usize::MAX, 5).unwrap().iter().map(|batch| batch.bytes.len() as u64).sum()
}

fn assert_tail_cut(path: &Path, id: &PartitionId, first_two: u64) {
    let store = open(path);
    assert_eq!(store.offsets(id).unwrap(), PartitionOffsets { log_start: 0, log_end: 5, high_watermark: 5 });
    assert_eq!(bases(&store, id, 0), vec![0, 2]);
    assert!(bases(&store, id, 5).is_empty());
    assert_eq!(store.size_bytes(id).unwrap(), first_two);
    assert_eq!(store.offset_for_timestamp(id, 250).unwrap(), None);
    assert_eq!(store.append(id, 2, batch(1, 400)).unwrap().base_offset, 5);
    assert_eq!(store.offset_for_timestamp(id, 250).unwrap(), Some(5));
    drop(store);
    let store = open(path);
    assert_eq!(store.offsets(id).unwrap().log_end, 6, "the cut itself is durable");
    assert_eq!(bases(&store, id, 0), vec![0, 2, 5]);
}

#[test]
fn torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let first_two = three_batches(dir.path(), &id);
    tamper_last_batch(dir.path(), |value| value.truncate(value.len() - 7));
    assert_tail_cut(dir.path(), &id, first_two);
}

#[test]
fn corrupt_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let first_two = three_batches(dir.path(), &id);
    tamper_last_batch(dir.path(), |value| *value.last_mut().unwrap() ^= 0x40);
    assert_tail_cut(dir.path(), &id, first_two);
}

#[test]
fn stray_and_corrupt_tail_batches_are_all_cut() {
    let dir = tempfile::tempdir().unwrap();
    let id = pid("s", 0);
    let first_two = three_batches(dir.path(), &id);
    tamper_last_batch(dir.path(), |value| value[30] ^= 1);
    {
        // A well-formed batch under a key past the end, with no index entry.
        let db = Database::builder(dir.path()).open().unwrap();
        let batches = db.keyspace(keys::BATCHES, KeyspaceCreateOptions::default).unwrap();
        batches.insert(keys::log_key(1, 9), batch(1, 900).to_vec()).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    assert_tail_cut(dir.path(), &id, first_two);
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
    tamper_last_batch(dir.path(), |value| value[16] = 1);
    let store = open(dir.path());
    assert_eq!(store.offsets(&id).unwrap(), PartitionOffsets::default());
    assert_eq!(store.size_bytes(&id).unwrap(), 0);
    assert!(bases(&store, &id, 0).is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, timestamp: i64 },
    TruncateBefore(i64),
    TruncateAfter(i64),
    SetHighWatermark(i64),
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1_usize..5, 0_i64..100).prop_map(|(records, timestamp)| Op::Append { records, timestamp }),
        1 => (0_i64..40).prop_map(Op::TruncateBefore),
        1 => (0_i64..40).prop_map(Op::TruncateAfter),
        1 => (0_i64..40).prop_map(Op::SetHighWatermark),
        1 => Just(Op::Reopen),
    ]
}

fn same_log(fjall: &FjallStore, model: &MemoryStore, id: &PartitionId) -> Result<(), TestCaseError> {
    let offsets = model.offsets(id).unwrap();
    prop_assert_eq!(fjall.offsets(id).unwrap(), offsets);
    prop_assert_eq!(fjall.size_bytes(id).unwrap(), model.size_bytes(id).unwrap());
    for offset in offsets.log_start - 1..=offsets.log_end + 1 {
        for (max_bytes, upper_bound) in [(usize::MAX, i64::MAX), (1, i64::MAX), (200, offsets.high_watermark)] {
            let expected = model.read(id, offset, max_bytes, upper_bound).map_err(|error| error.to_string());
            let actual = fjall.read(id, offset, max_bytes, upper_bound).map_err(|error| error.to_string());
            prop_assert_eq!(actual, expected, "read at {}", offset);
        }
    }
    for timestamp in (-1..=106).step_by(3) {
        prop_assert_eq!(
            fjall.offset_for_timestamp(id, timestamp).unwrap(),
            model.offset_for_timestamp(id, timestamp).unwrap(),
            "timestamp {}",
            timestamp
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn fjall_behaves_like_the_memory_model(ops in proptest::collection::vec(arb_op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let id = pid("model", 3);
        let model = MemoryStore::new();
        let mut fjall = open(dir.path());
        model.create_partition(&id).unwrap();
        fjall.create_partition(&id).unwrap();
        for op in ops {
            match op {
                Op::Append { records, timestamp } => {
                    let bytes = batch(records, timestamp);
                    prop_assert_eq!(fjall.append(&id, 1, bytes.clone()).unwrap(), model.append(&id, 1, bytes).unwrap());
                }
                Op::TruncateBefore(offset) => {
                    fjall.truncate_before(&id, offset).unwrap();
                    model.truncate_before(&id, offset).unwrap();
                }
                Op::TruncateAfter(offset) => {
                    fjall.truncate_after(&id, offset).unwrap();
                    model.truncate_after(&id, offset).unwrap();
                }
                Op::SetHighWatermark(offset) => {
                    fjall.set_high_watermark(&id, offset).unwrap();
                    model.set_high_watermark(&id, offset).unwrap();
                }
                Op::Reopen => {
                    drop(fjall);
                    fjall = open(dir.path());
                }
            }
            same_log(&fjall, &model, &id)?;
        }
    }
}
