//! The `GroupCoordinator` actor (one per consumer group) and the registry that finds or
//! spawns it. The actor is a thin shell over [`GroupState`]: it maps reply tokens to reply
//! ports, stores committed offsets, and keeps one timer for the state machine's deadlines.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tidewater_storage::{StateOp, StateStore};
use tracing::Instrument;

use crate::context::NodeContext;
use crate::kafka::group_state::{
    CommittedOffset, FetchedOffset, GroupConfig, GroupDescription, GroupListing, GroupState, HeartbeatResponse,
    JoinRequest, JoinResponse, LeaveMember, LeaveResponse, OffsetCommitEntry, OffsetCommitResult, OffsetRecord, Output,
    PersistedOffsets, ReplyToken, Response, SyncRequest, SyncResponse,
};
use crate::mqtt::persist;

/// Committed offsets: group \0 topic \0 partition (i32 BE) → [`StoredOffset`].
pub const GROUP_OFFSETS: &str = "group_offsets";

/// Messages of the `GroupCoordinator` actor.
pub enum GroupMsg {
    /// JoinGroup; answered when the join phase completes.
    Join(JoinRequest, RpcReplyPort<JoinResponse>),
    /// SyncGroup; answered when the leader's assignment is in.
    Sync(SyncRequest, RpcReplyPort<SyncResponse>),
    /// Heartbeat.
    Heartbeat(String, i32, RpcReplyPort<HeartbeatResponse>),
    /// LeaveGroup.
    Leave(Vec<LeaveMember>, RpcReplyPort<LeaveResponse>),
    /// OffsetCommit: (member id, generation, offsets); answered once stored.
    Commit(String, i32, Vec<OffsetCommitEntry>, RpcReplyPort<Vec<OffsetCommitResult>>),
    /// OffsetFetch; `None` = every partition with a committed offset.
    FetchOffsets(Option<Vec<(String, i32)>>, RpcReplyPort<Vec<FetchedOffset>>),
    /// DescribeGroups.
    Describe(RpcReplyPort<GroupDescription>),
    /// ListGroups.
    List(RpcReplyPort<GroupListing>),
    /// A deadline of the state machine may have passed.
    Tick,
}

enum Pending {
    Join(RpcReplyPort<JoinResponse>),
    Sync(RpcReplyPort<SyncResponse>),
    Heartbeat(RpcReplyPort<HeartbeatResponse>),
    Leave(RpcReplyPort<LeaveResponse>),
}

/// Spawn arguments.
pub struct GroupArgs {
    /// The node.
    pub ctx: NodeContext,
    /// The group id.
    pub group_id: String,
}

/// The `GroupCoordinator` actor.
pub struct GroupCoordinator;

/// The actor's state.
pub struct GroupShell {
    ctx: NodeContext,
    group: GroupState,
    pending: BTreeMap<u64, Pending>,
    next_token: u64,
    timer_at: Option<i64>,
}

/// A committed offset as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredOffset {
    /// The offset.
    pub offset: i64,
    /// Its leader epoch.
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: String,
    /// When it was committed.
    pub commit_timestamp_ms: i64,
}

fn offset_key(group_id: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = group_prefix(group_id);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn group_prefix(group_id: &str) -> Vec<u8> {
    let mut key = group_id.as_bytes().to_vec();
    key.push(0);
    key
}

fn load_offsets(store: &dyn StateStore, group_id: &str) -> Vec<OffsetRecord> {
    let prefix = group_prefix(group_id);
    let Ok(entries) = store.scan_prefix(GROUP_OFFSETS, &prefix) else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|(key, value)| {
            // topic \0 partition: the partition is the last 4 bytes (and may contain zeros)
            let rest = &key[prefix.len()..];
            let (topic_and_separator, partition_bytes) = rest.split_at_checked(rest.len().checked_sub(4)?)?;
            let topic_bytes = topic_and_separator.strip_suffix(&[0])?;
            let topic = String::from_utf8(topic_bytes.to_vec()).ok()?;
            let partition = i32::from_be_bytes(partition_bytes.try_into().ok()?);
            let stored: StoredOffset = persist::decode(GROUP_OFFSETS, &value).ok()?;
            Some(OffsetRecord {
                topic,
                partition,
                value: Some(CommittedOffset {
                    offset: stored.offset,
                    leader_epoch: stored.leader_epoch,
                    metadata: stored.metadata,
                    commit_timestamp_ms: stored.commit_timestamp_ms,
                }),
            })
        })
        .collect()
}

impl Actor for GroupCoordinator {
    type Msg = GroupMsg;
    type State = GroupShell;
    type Arguments = GroupArgs;

    async fn pre_start(&self, _: ActorRef<GroupMsg>, args: GroupArgs) -> Result<GroupShell, ActorProcessingErr> {
        let config = GroupConfig {
            initial_rebalance_delay_ms: args.ctx.kafka.group_initial_rebalance_delay_ms as i32,
            ..GroupConfig::default()
        };
        let mut group = GroupState::new(args.group_id.clone(), config, args.ctx.rng.next_u64());
        group.restore_offsets(load_offsets(args.ctx.state_store.as_ref(), &args.group_id));
        Ok(GroupShell { ctx: args.ctx, group, pending: BTreeMap::new(), next_token: 0, timer_at: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<GroupMsg>,
        message: GroupMsg,
        shell: &mut GroupShell,
    ) -> Result<(), ActorProcessingErr> {
        let span = shell.ctx.span.clone();
        shell.on_message(myself, message).instrument(span).await
    }
}

impl GroupShell {
    async fn on_message(&mut self, myself: ActorRef<GroupMsg>, message: GroupMsg) -> Result<(), ActorProcessingErr> {
        let shell = self;
        let now = shell.ctx.now_ms();
        let outputs = match message {
            GroupMsg::Join(request, reply) => {
                let token = shell.park(Pending::Join(reply));
                shell.group.join(request, now, token)
            }
            GroupMsg::Sync(request, reply) => {
                let token = shell.park(Pending::Sync(reply));
                shell.group.sync(request, now, token)
            }
            GroupMsg::Heartbeat(member_id, generation_id, reply) => {
                let token = shell.park(Pending::Heartbeat(reply));
                shell.group.heartbeat(&member_id, generation_id, now, token)
            }
            GroupMsg::Leave(members, reply) => {
                let token = shell.park(Pending::Leave(reply));
                shell.group.leave(members, now, token)
            }
            GroupMsg::Commit(member_id, generation_id, entries, reply) => {
                let outcome = shell.group.commit(&member_id, generation_id, entries, now);
                let stored = shell.perform(outcome.outputs);
                let results = if stored {
                    outcome.results
                } else {
                    outcome
                        .results
                        .into_iter()
                        .map(|r| OffsetCommitResult {
                            error: crate::kafka::group_state::ErrorCode::CoordinatorNotAvailable,
                            ..r
                        })
                        .collect()
                };
                let _ = reply.send(results);
                Vec::new()
            }
            GroupMsg::FetchOffsets(partitions, reply) => {
                let _ = reply.send(shell.group.fetch_offsets(partitions));
                Vec::new()
            }
            GroupMsg::Describe(reply) => {
                let _ = reply.send(shell.group.describe());
                Vec::new()
            }
            GroupMsg::List(reply) => {
                let _ = reply.send(shell.group.list_entry());
                Vec::new()
            }
            GroupMsg::Tick => {
                shell.timer_at = None;
                shell.group.tick(now)
            }
        };
        shell.perform(outputs);
        if let Some(deadline) = shell.group.next_deadline()
            && shell.timer_at.is_none_or(|at| deadline < at)
        {
            shell.timer_at = Some(deadline);
            let wait = Duration::from_millis((deadline - now).max(0) as u64 + 1);
            myself.send_after(wait, || GroupMsg::Tick);
        }
        Ok(())
    }
}

impl GroupShell {
    fn park(&mut self, pending: Pending) -> ReplyToken {
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, pending);
        ReplyToken(token)
    }

    /// Performs outputs; returns false if storing offsets failed.
    fn perform(&mut self, outputs: Vec<Output>) -> bool {
        let mut stored = true;
        for output in outputs {
            match output {
                Output::Reply(ReplyToken(token), response) => {
                    let Some(pending) = self.pending.remove(&token) else { continue };
                    match (pending, response) {
                        (Pending::Join(port), Response::Join(r)) => drop(port.send(r)),
                        (Pending::Sync(port), Response::Sync(r)) => drop(port.send(r)),
                        (Pending::Heartbeat(port), Response::Heartbeat(r)) => drop(port.send(r)),
                        (Pending::Leave(port), Response::Leave(r)) => drop(port.send(r)),
                        _ => tracing::error!("group reply of the wrong kind"),
                    }
                }
                Output::Persist(offsets) => stored &= self.store(offsets),
            }
        }
        stored
    }

    fn store(&self, offsets: PersistedOffsets) -> bool {
        let ops = offsets
            .records
            .into_iter()
            .map(|record| {
                let key = offset_key(&offsets.group_id, &record.topic, record.partition);
                match record.value {
                    Some(value) => StateOp::Put {
                        space: GROUP_OFFSETS,
                        key,
                        value: persist::encode(&StoredOffset {
                            offset: value.offset,
                            leader_epoch: value.leader_epoch,
                            metadata: value.metadata,
                            commit_timestamp_ms: value.commit_timestamp_ms,
                        }),
                    },
                    None => StateOp::Delete { space: GROUP_OFFSETS, key },
                }
            })
            .collect();
        match self.ctx.state_store.write_batch(ops) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(group = %offsets.group_id, %error, "cannot store committed offsets");
                false
            }
        }
    }
}

/// The node's consumer groups.
#[derive(Default)]
pub struct GroupRegistry {
    groups: tokio::sync::Mutex<BTreeMap<String, ActorRef<GroupMsg>>>,
}

impl std::fmt::Debug for GroupRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupRegistry")
    }
}

impl GroupRegistry {
    /// The coordinator of `group_id`, spawned if needed.
    pub async fn get_or_spawn(&self, ctx: &NodeContext, group_id: &str) -> Option<ActorRef<GroupMsg>> {
        let mut groups = self.groups.lock().await;
        if let Some(actor) = groups.get(group_id) {
            return Some(actor.clone());
        }
        let args = GroupArgs { ctx: ctx.clone(), group_id: group_id.to_string() };
        match Actor::spawn(None, GroupCoordinator, args).await {
            Ok((actor, _)) => {
                groups.insert(group_id.to_string(), actor.clone());
                Some(actor)
            }
            Err(error) => {
                tracing::error!(group = group_id, %error, "cannot start group coordinator");
                None
            }
        }
    }

    /// The coordinator of `group_id` if it exists (in memory or with stored offsets).
    pub async fn get(&self, ctx: &NodeContext, group_id: &str) -> Option<ActorRef<GroupMsg>> {
        if let Some(actor) = self.groups.lock().await.get(group_id) {
            return Some(actor.clone());
        }
        let has_offsets =
            ctx.state_store.scan_prefix(GROUP_OFFSETS, &group_prefix(group_id)).is_ok_and(|e| !e.is_empty());
        if has_offsets { self.get_or_spawn(ctx, group_id).await } else { None }
    }

    /// Spawns a coordinator for every group with stored offsets (at start), so that
    /// ListGroups shows them.
    pub async fn restore(&self, ctx: &NodeContext) -> usize {
        let Ok(entries) = ctx.state_store.scan_prefix(GROUP_OFFSETS, &[]) else { return 0 };
        let mut ids: Vec<String> = entries
            .iter()
            .filter_map(|(key, _)| key.iter().position(|b| *b == 0).map(|end| &key[..end]))
            .filter_map(|id| String::from_utf8(id.to_vec()).ok())
            .collect();
        ids.dedup();
        for id in &ids {
            self.get_or_spawn(ctx, id).await;
        }
        ids.len()
    }

    /// Every group coordinator, by group id.
    pub async fn all(&self) -> Vec<ActorRef<GroupMsg>> {
        self.groups.lock().await.values().cloned().collect()
    }

    /// Stops every coordinator after the requests it holds (node shutdown).
    pub async fn shutdown(&self) {
        let groups = std::mem::take(&mut *self.groups.lock().await);
        for actor in groups.values() {
            let _ = actor.drain_and_wait(Some(Duration::from_secs(5))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_storage::MemoryStore;

    #[test]
    fn stored_offsets_load_back_for_any_partition_number() {
        let store = MemoryStore::new();
        for partition in [0, 1, 255, 256, 70_000] {
            let value = persist::encode(&StoredOffset {
                offset: 10 + i64::from(partition),
                leader_epoch: 0,
                metadata: "m".into(),
                commit_timestamp_ms: 1,
            });
            store.put(GROUP_OFFSETS, &offset_key("g", "t\0x", partition), &value).unwrap();
        }
        let mut loaded: Vec<(String, i32, i64)> = load_offsets(&store, "g")
            .into_iter()
            .map(|r| (r.topic, r.partition, r.value.map_or(-1, |v| v.offset)))
            .collect();
        loaded.sort();
        let expected: Vec<(String, i32, i64)> =
            [0, 1, 255, 256, 70_000].iter().map(|p| ("t\0x".to_string(), *p, 10 + i64::from(*p))).collect();
        assert_eq!(loaded, expected);
    }
}
