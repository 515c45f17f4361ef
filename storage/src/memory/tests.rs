//! Tests of the crash semantics the simulation relies on: what a power loss keeps, what a
//! crash keeps, injected faults, and a model check against replaying the synced operations.

use std::time::Duration;

use proptest::prelude::*;

use super::MemoryStore;
use crate::conformance_tests::{batch, pid};
use crate::{FetchedBatch, FsyncPolicy, LogStore, PartitionId, PartitionOffsets, StateOp, StateStore, StorageError};

fn interval() -> MemoryStore {
    MemoryStore::with_fsync(FsyncPolicy::Interval(Duration::from_millis(10)))
}

fn is_io<T: std::fmt::Debug>(result: Result<T, StorageError>) -> bool {
    matches!(result, Err(StorageError::Io(_)))
}

/// Everything a reader of a partition can see.
fn log_view(store: &MemoryStore, id: &PartitionId) -> (PartitionOffsets, u64, Vec<FetchedBatch>) {
    let offsets = store.offsets(id).unwrap();
    let batches = store.read(id, offsets.log_start, usize::MAX, i64::MAX).unwrap();
    (offsets, store.size_bytes(id).unwrap(), batches)
}

#[test]
fn new_is_always_and_with_fsync_keeps_the_policy() {
    assert_eq!(MemoryStore::new().fsync_policy(), FsyncPolicy::Always);
    assert_eq!(MemoryStore::default().fsync_policy(), FsyncPolicy::Always);
    let policy = FsyncPolicy::Interval(Duration::from_millis(10));
    assert_eq!(MemoryStore::with_fsync(policy).fsync_policy(), policy);
}

#[test]
fn unsynced_write_is_gone_after_power_loss() {
    let store = interval();
    store.put("sessions", b"a", b"1").unwrap();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"1".to_vec()), "visible at once");
    assert_eq!((store.pending_len(), store.sync_count()), (1, 0));
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), None);
    assert_eq!(store.pending_len(), 0);
}

#[test]
fn synced_write_survives_power_loss() {
    let store = interval();
    store.put("sessions", b"a", b"1").unwrap();
    store.put("sessions", b"b", b"2").unwrap();
    StateStore::sync(&store).unwrap();
    assert_eq!((store.pending_len(), store.sync_count()), (0, 1));
    store.put("sessions", b"a", b"overwritten").unwrap();
    store.delete("sessions", b"b").unwrap();
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("sessions", b"b").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn crash_keeps_unsynced_writes_pending() {
    let store = interval();
    let id = pid("s", 0);
    store.put("sessions", b"a", b"1").unwrap();
    store.create_partition(&id).unwrap();
    store.append(&id, 1, batch(3, 10)).unwrap();
    let before = log_view(&store, &id);
    store.crash();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(log_view(&store, &id), before);
    assert_eq!(store.pending_len(), 3, "a crash makes nothing durable");
    store.power_loss();
    assert!(store.partitions().unwrap().is_empty(), "still lost to a power loss");
    assert_eq!(store.get("sessions", b"a").unwrap(), None);
}

#[test]
fn always_survives_power_loss() {
    let store = MemoryStore::new();
    let id = pid("s", 0);
    store.put("sessions", b"a", b"1").unwrap();
    store.create_partition(&id).unwrap();
    store.append(&id, 1, batch(3, 10)).unwrap();
    store.truncate_before(&id, 1).unwrap();
    assert_eq!((store.pending_len(), store.sync_count()), (0, 4), "one sync per mutation");
    let before = log_view(&store, &id);
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(log_view(&store, &id), before);
}

#[test]
fn failed_explicit_sync_leaves_data_non_durable() {
    let store = interval();
    store.put("sessions", b"a", b"1").unwrap();
    store.fail_next_syncs(2);
    assert!(is_io(StateStore::sync(&store)));
    assert!(is_io(LogStore::sync(&store)));
    assert_eq!((store.pending_len(), store.sync_count()), (1, 0));
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), None);

    store.put("sessions", b"a", b"2").unwrap();
    store.sync().unwrap();
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"2".to_vec()), "the fault is used up");
}

#[test]
fn failed_implicit_sync_leaves_the_write_visible_and_pending() {
    let store = MemoryStore::new();
    store.put("sessions", b"kept", b"1").unwrap();
    store.fail_next_syncs(1);
    let error = store.put("sessions", b"a", b"1").unwrap_err();
    assert!(matches!(error, StorageError::Io(_)));
    assert_eq!(error.to_string(), "io: injected sync failure");
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"1".to_vec()), "written, not fsynced");
    assert_eq!((store.pending_len(), store.sync_count()), (1, 1));
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), None);
    assert_eq!(store.get("sessions", b"kept").unwrap(), Some(b"1".to_vec()));

    store.fail_next_syncs(1);
    assert!(is_io(store.put("sessions", b"a", b"2")));
    store.put("sessions", b"b", b"3").unwrap();
    store.power_loss();
    assert_eq!(store.get("sessions", b"a").unwrap(), Some(b"2".to_vec()), "the next sync covers it");
    assert_eq!(store.get("sessions", b"b").unwrap(), Some(b"3".to_vec()));
}

#[test]
fn failed_appends_change_nothing() {
    for store in [MemoryStore::new(), interval()] {
        let id = pid("s", 0);
        store.create_partition(&id).unwrap();
        store.append(&id, 1, batch(2, 10)).unwrap();
        let (before, pending, syncs) = (log_view(&store, &id), store.pending_len(), store.sync_count());
        store.fail_next_appends(2);
        for _ in 0..2 {
            let error = store.append(&id, 1, batch(3, 20)).unwrap_err();
            assert_eq!(error.to_string(), "io: injected append failure");
        }
        assert_eq!(log_view(&store, &id), before);
        assert_eq!((store.pending_len(), store.sync_count()), (pending, syncs));
        assert_eq!(store.append(&id, 1, batch(3, 20)).unwrap().base_offset, 2, "the third append succeeds");
    }
}

#[test]
fn fail_next_replaces_the_armed_count() {
    let store = MemoryStore::new();
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    store.fail_next_appends(5);
    store.fail_next_syncs(5);
    store.fail_next_appends(0);
    store.fail_next_syncs(0);
    store.append(&id, 1, batch(1, 1)).unwrap();
    assert_eq!(store.pending_len(), 0);
}

#[test]
fn log_after_power_loss_equals_the_last_sync() {
    let store = interval();
    let (id, other) = (pid("s", 0), pid("s", 1));
    store.create_partition(&id).unwrap();
    for size in [3, 2, 4, 1] {
        store.append(&id, 1, batch(size, 10)).unwrap();
    }
    store.truncate_before(&id, 3).unwrap();
    store.sync().unwrap();
    let synced = log_view(&store, &id);
    assert_eq!(synced.0, PartitionOffsets { log_start: 3, log_end: 10 });

    store.append(&id, 2, batch(5, 20)).unwrap();
    store.truncate_after(&id, 6).unwrap();
    store.truncate_before(&id, 4).unwrap();
    store.create_partition(&other).unwrap();
    assert_ne!(log_view(&store, &id), synced);
    store.power_loss();
    assert_eq!(log_view(&store, &id), synced);
    assert_eq!(store.partitions().unwrap(), vec![id.clone()]);
    assert_eq!(store.append(&id, 3, batch(1, 30)).unwrap().base_offset, 10, "appends resume at the synced end");
}

#[test]
fn partition_deletion_is_undone_by_power_loss_before_sync() {
    let store = interval();
    let id = pid("s", 0);
    store.create_partition(&id).unwrap();
    store.append(&id, 1, batch(2, 10)).unwrap();
    store.sync().unwrap();
    let synced = log_view(&store, &id);
    store.delete_partition(&id).unwrap();
    store.create_partition(&id).unwrap();
    assert_eq!(store.offsets(&id).unwrap(), PartitionOffsets::default());
    store.power_loss();
    assert_eq!(log_view(&store, &id), synced);
}

#[test]
fn write_batch_is_atomic_across_power_loss() {
    let store = interval();
    store.put("one", b"gone", b"x").unwrap();
    store.sync().unwrap();
    let ops = vec![
        StateOp::Put { space: "one", key: b"k1".to_vec(), value: b"v1".to_vec() },
        StateOp::Put { space: "two", key: b"k2".to_vec(), value: b"v2".to_vec() },
        StateOp::Delete { space: "one", key: b"gone".to_vec() },
    ];
    store.write_batch(ops.clone()).unwrap();
    assert_eq!(store.pending_len(), 1, "one mutation for the whole batch");
    store.power_loss();
    assert_eq!(store.get("one", b"k1").unwrap(), None);
    assert_eq!(store.get("two", b"k2").unwrap(), None);
    assert_eq!(store.get("one", b"gone").unwrap(), Some(b"x".to_vec()));

    store.write_batch(ops).unwrap();
    store.sync().unwrap();
    store.power_loss();
    assert_eq!(store.get("one", b"k1").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(store.get("two", b"k2").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.get("one", b"gone").unwrap(), None);
}

#[test]
fn delete_prefix_is_replayed_on_the_durable_copy() {
    let store = interval();
    for key in [&b"ab"[..], b"abc", b"ac"] {
        store.put("space", key, key).unwrap();
    }
    store.delete_prefix("space", b"ab").unwrap();
    store.sync().unwrap();
    store.power_loss();
    let keys: Vec<Vec<u8>> = store.scan_prefix("space", b"").unwrap().into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, vec![b"ac".to_vec()]);
}

#[test]
fn sync_with_nothing_pending_still_counts() {
    let store = interval();
    store.sync().unwrap();
    store.sync().unwrap();
    assert_eq!((store.sync_count(), store.pending_len()), (2, 0));
}

/// The spaces and partitions the model check uses.
const SPACES: [&str; 2] = ["a", "b"];
const PARTITIONS: u32 = 2;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>, u8),
    Delete(usize, Vec<u8>),
    DeletePrefix(usize, Vec<u8>),
    WriteBatch(Vec<(usize, Vec<u8>, Option<u8>)>),
    CreatePartition(u32),
    DeletePartition(u32),
    Append(u32, usize, i64),
    TruncateBefore(u32, i64),
    TruncateAfter(u32, i64),
    Sync,
    FailNextSync,
    FailNextAppend,
    Crash,
    PowerLoss,
}

fn arb_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0_u8..3, 0..3)
}

fn arb_op() -> impl Strategy<Value = Op> {
    let space = 0..SPACES.len();
    let partition = 0..PARTITIONS;
    prop_oneof![
        3 => (space.clone(), arb_key(), any::<u8>()).prop_map(|(space, key, value)| Op::Put(space, key, value)),
        1 => (space.clone(), arb_key()).prop_map(|(space, key)| Op::Delete(space, key)),
        1 => (space.clone(), arb_key()).prop_map(|(space, prefix)| Op::DeletePrefix(space, prefix)),
        1 => proptest::collection::vec((space, arb_key(), proptest::option::of(any::<u8>())), 0..4)
            .prop_map(Op::WriteBatch),
        2 => partition.clone().prop_map(Op::CreatePartition),
        1 => partition.clone().prop_map(Op::DeletePartition),
        5 => (partition.clone(), 1_usize..5, 0_i64..100).prop_map(|(p, records, ts)| Op::Append(p, records, ts)),
        1 => (partition.clone(), 0_i64..40).prop_map(|(p, offset)| Op::TruncateBefore(p, offset)),
        1 => (partition, 0_i64..40).prop_map(|(p, offset)| Op::TruncateAfter(p, offset)),
        2 => Just(Op::Sync),
        1 => Just(Op::FailNextSync),
        1 => Just(Op::FailNextAppend),
        1 => Just(Op::Crash),
        2 => Just(Op::PowerLoss),
    ]
}

/// Runs a mutating operation; `None` for the operations that are not mutations.
fn run(store: &MemoryStore, op: &Op) -> Option<Result<(), StorageError>> {
    let part = |p: &u32| pid("model", *p);
    Some(match op {
        Op::Put(space, key, value) => store.put(SPACES[*space], key, &[*value]),
        Op::Delete(space, key) => store.delete(SPACES[*space], key),
        Op::DeletePrefix(space, prefix) => store.delete_prefix(SPACES[*space], prefix),
        Op::WriteBatch(writes) => store.write_batch(
            writes
                .iter()
                .map(|(space, key, value)| match value {
                    Some(value) => StateOp::Put { space: SPACES[*space], key: key.clone(), value: vec![*value] },
                    None => StateOp::Delete { space: SPACES[*space], key: key.clone() },
                })
                .collect(),
        ),
        Op::CreatePartition(p) => store.create_partition(&part(p)),
        Op::DeletePartition(p) => store.delete_partition(&part(p)),
        Op::Append(p, records, timestamp) => {
            // at the log end as the store has it (an unknown partition: any offset), so that an
            // armed fault is what fails the append
            let base_offset = store.offsets(&part(p)).map_or(0, |offsets| offsets.log_end);
            let append = crate::Append { batch: batch(*records, *timestamp), leader_epoch: 1, base_offset };
            store.append_at(&part(p), append).map(|_| ())
        }
        Op::TruncateBefore(p, offset) => store.truncate_before(&part(p), *offset),
        Op::TruncateAfter(p, offset) => store.truncate_after(&part(p), *offset),
        Op::Sync | Op::FailNextSync | Op::FailNextAppend | Op::Crash | Op::PowerLoss => return None,
    })
}

type Observed = (Vec<Vec<(Vec<u8>, Vec<u8>)>>, Vec<(PartitionId, (PartitionOffsets, u64, Vec<FetchedBatch>))>);

/// Everything a reader of the store can see.
fn observe(store: &MemoryStore) -> Observed {
    let state = SPACES.iter().map(|space| store.scan_prefix(space, b"").unwrap()).collect();
    let logs = store.partitions().unwrap().into_iter().map(|id| (id.clone(), log_view(store, &id))).collect();
    (state, logs)
}

/// A fresh always-synced store with `ops` applied.
fn replay(ops: &[Op]) -> MemoryStore {
    let store = MemoryStore::new();
    for op in ops {
        let _ = run(&store, op);
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// After every step the store reads like a fault-free store given the operations that
    /// took effect, where a power loss forgets those after the last successful sync.
    #[test]
    fn power_loss_keeps_exactly_the_synced_operations(
        always in any::<bool>(),
        ops in proptest::collection::vec(arb_op(), 1..60),
    ) {
        let store = if always { MemoryStore::new() } else { interval() };
        let mut durable_ops: Vec<Op> = Vec::new();
        let mut pending_ops: Vec<Op> = Vec::new();
        let mut reference = MemoryStore::new();
        let mut failing_appends = 0_u32;
        let mut failing_syncs = 0_u32;
        for op in ops {
            let syncs_before = store.sync_count();
            let seen_before = observe(&store);
            match &op {
                Op::Sync => {
                    let result = store.sync();
                    prop_assert_eq!(is_io(result), failing_syncs > 0);
                    failing_syncs = failing_syncs.saturating_sub(1);
                }
                Op::FailNextSync => {
                    failing_syncs += 1;
                    store.fail_next_syncs(failing_syncs);
                }
                Op::FailNextAppend => {
                    failing_appends += 1;
                    store.fail_next_appends(failing_appends);
                }
                Op::Crash => {
                    store.crash();
                    prop_assert_eq!(observe(&store), seen_before.clone());
                }
                Op::PowerLoss => {
                    store.power_loss();
                    pending_ops.clear();
                    reference = replay(&durable_ops);
                }
                Op::Append(..) if failing_appends > 0 => {
                    failing_appends -= 1;
                    prop_assert!(is_io(run(&store, &op).unwrap()));
                    prop_assert_eq!(observe(&store), seen_before.clone());
                }
                _ => {
                    let result = run(&store, &op).unwrap();
                    let expected = run(&reference, &op).unwrap().map_err(|error| error.to_string());
                    match result {
                        Ok(()) => prop_assert!(expected.is_ok()),
                        Err(StorageError::Io(_)) => {
                            prop_assert!(always && failing_syncs > 0 && expected.is_ok());
                            failing_syncs -= 1;
                        }
                        Err(error) => prop_assert_eq!(Err(error.to_string()), expected.clone()),
                    }
                    if expected.is_ok() {
                        pending_ops.push(op.clone());
                    }
                }
            }
            if store.sync_count() > syncs_before {
                durable_ops.append(&mut pending_ops);
            }
            prop_assert_eq!(store.pending_len(), pending_ops.len(), "after {:?}", op);
            prop_assert_eq!(observe(&store), observe(&reference), "after {:?}", op);
        }
    }
}
