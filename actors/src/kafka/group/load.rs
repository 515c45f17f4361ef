//! A coordinator's state from the replicated offsets stream: the replay of one partition of
//! it, for one group or for all of them, and the take-over of every group of a partition this
//! node comes to lead (Kafka's `loadGroupsForPartition`). Without the take-over a group would
//! only move with the next request for it, and one that nobody asked about for a retention and
//! a half after its coordinator died would find its latest rewrite cut by the log's retention.

use std::collections::BTreeMap;

use ractor::ActorProcessingErr;
use tidewater_storage::decode_records;

use super::{GroupMark, GroupRegistry, LOAD_WAIT, MARK_SUFFIX, REPLAY_CHUNK, committed, parse_offset_key};
use crate::context::NodeContext;
use crate::kafka::group_place::{OFFSETS_STREAM, OffsetLog};
use crate::kafka::group_state::OffsetRecord;
use crate::mqtt::persist;
use crate::stream::registry::PartitionHandle;

/// What a replay of the offsets partition finds of a group.
#[derive(Default)]
pub(super) struct Replayed {
    /// its offset changes, in the order they committed
    pub(super) records: Vec<OffsetRecord>,
    /// per offset still there, when it was last written
    pub(super) written: BTreeMap<(String, i32), i64>,
    /// its latest mark
    pub(super) mark: Option<GroupMark>,
}

/// What the replay gathers of a group: [`Replayed`], with the write time of tombstoned keys
/// still to be dropped.
#[derive(Default)]
struct Gathered {
    records: Vec<OffsetRecord>,
    written: BTreeMap<(String, i32), Option<i64>>,
    mark: Option<GroupMark>,
}

/// Each group's offset changes in the offsets partition (only `only`'s, if given), in the
/// order they committed, once the partition has committed everything its log holds now (the
/// leader's first own entry commits its predecessors').
pub(super) async fn replay(
    ctx: &NodeContext,
    partition: &PartitionHandle,
    only: Option<&str>,
) -> Result<BTreeMap<String, Replayed>, ActorProcessingErr> {
    let end = ctx.log_store.offsets(&partition.id)?.log_end;
    let mut high_watermark = partition.high_watermark.clone();
    tokio::time::timeout(LOAD_WAIT, high_watermark.wait_for(|committed| *committed >= end))
        .await
        .map_err(|_| "the offsets partition has not committed its log yet")??;
    let mut groups: BTreeMap<String, Gathered> = BTreeMap::new();
    let mut at = ctx.log_store.offsets(&partition.id)?.log_start;
    while at < end {
        let batches = ctx.log_store.read(&partition.id, at, REPLAY_CHUNK, end)?;
        let Some(last) = batches.last() else { break };
        at = last.last_offset + 1;
        for batch in &batches {
            for record in decode_records(&batch.bytes)? {
                let Some(key) = &record.key else { continue };
                // every key starts with its group's id and a zero byte
                let Some(separator) = key.iter().position(|byte| *byte == 0) else { continue };
                let Ok(group_id) = std::str::from_utf8(&key[..separator]) else { continue };
                if only.is_some_and(|only| only != group_id) {
                    continue;
                }
                let gathered = groups.entry(group_id.to_string()).or_default();
                let (prefix, rest) = key.split_at(separator + 1);
                if rest == MARK_SUFFIX {
                    gathered.mark = record.value.as_deref().map(GroupMark::decode).transpose()?;
                    continue;
                }
                let Some((topic, partition)) = parse_offset_key(prefix, key) else { continue };
                let value = match &record.value {
                    Some(value) => Some(committed(persist::decode(super::GROUP_OFFSETS, value)?)),
                    None => None, // a tombstone: deleted, or expired
                };
                gathered.written.insert((topic.clone(), partition), value.as_ref().map(|_| batch.max_timestamp));
                gathered.records.push(OffsetRecord { topic, partition, value });
            }
        }
    }
    Ok(groups
        .into_iter()
        .map(|(group_id, gathered)| {
            let written = gathered.written.into_iter().filter_map(|(key, at)| Some((key, at?))).collect();
            (group_id, Replayed { records: gathered.records, written, mark: gathered.mark })
        })
        .collect())
}

impl GroupRegistry {
    /// Builds, from one replay each, the coordinator of every group with offsets in each
    /// partition of the offsets stream that this node leads in an epoch not loaded yet; a
    /// partition whose replay fails (its log not committed yet) is tried on the next call.
    pub async fn take_over(&self, ctx: &NodeContext) {
        let Some(stream) = ctx.streams.get(OFFSETS_STREAM) else { return };
        for (index, partition) in stream.partitions.iter().enumerate() {
            let Some(leadership) = partition.replica.as_ref().and_then(|view| *view.leadership.borrow()) else {
                continue;
            };
            let loaded = self.loaded.lock().expect("not poisoned").get(&index).copied();
            if !leadership.is_leader || loaded == Some(leadership.term) {
                continue;
            }
            let groups = match replay(ctx, partition, None).await {
                Ok(groups) => groups,
                Err(error) => {
                    tracing::debug!(partition = index, %error, "the offsets partition's groups not loaded yet");
                    continue;
                }
            };
            let mut built = 0;
            for (group_id, replayed) in groups {
                // a group whose every offset was deleted or expired has nothing to keep
                if replayed.written.is_empty() {
                    continue;
                }
                let log = OffsetLog::Replicated { partition: partition.clone(), epoch: leadership.term };
                if self.spawn_replayed(ctx, &group_id, log, replayed).await {
                    built += 1;
                }
            }
            self.loaded.lock().expect("not poisoned").insert(index, leadership.term);
            if built > 0 {
                tracing::info!(partition = index, term = leadership.term, groups = built, "took over consumer groups");
            }
        }
    }
}

/// Takes over the groups of the offsets partitions this node comes to lead, every `period`,
/// until shutdown.
pub async fn run_take_over(
    ctx: NodeContext,
    period: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = ticker.tick() => ctx.groups.take_over(&ctx).await,
        }
    }
}
