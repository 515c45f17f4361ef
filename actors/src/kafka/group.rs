//! The `GroupCoordinator` actor (one per consumer group) and the registry that finds or
//! spawns it. The actor is a thin shell over [`GroupState`]: it maps reply tokens to reply
//! ports, stores committed offsets, and keeps one timer for the state machine's deadlines.
//!
//! Offsets are stored where [`group_place`](super::group_place) says: this node's state
//! store, or (in a cluster) the group's partition of the replicated offsets stream, as one
//! record batch per commit, answered after raft commits it. A coordinator of the cluster
//! belongs to one leader epoch of that partition: when the epoch changes, or another node
//! leads, the registry drops it, and the next request (or the coordinator's own timer) builds
//! it again from the partition.
//!
//! The offsets stream keeps what was written within twice `kafka.offsets_retention_ms`
//! (Kafka's `offsets.retention.minutes`, 7 days) and retention drops the rest, so its log, and
//! a new coordinator's replay, stay bounded. A group with members, or one that lost its last
//! member less than the retention ago (as Kafka counts an empty group's expiry: every batch
//! carries the group's [`GroupMark`], so a new coordinator counts from when the group became
//! empty), rewrites all its offsets as one batch once the oldest of
//! them was written half the retention ago; after that each offset expires the retention after
//! it was written, with a tombstone, so that a later coordinator's replay does not bring it
//! back. The log keeps twice the retention so that a coordinator that moves finds the latest
//! rewrite: a node that comes to lead a partition of the offsets stream takes over every group
//! in it at once (see [`load`]), and the next request for a group builds its coordinator too.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tidewater_storage::{NewRecord, StateOp, StateStore, build_record_batch};
use tracing::Instrument;

use crate::context::NodeContext;
use crate::kafka::group_place::{self, GroupUnavailable, OffsetLog};
use crate::kafka::group_state::{
    CommittedOffset, ErrorCode, FetchedOffset, GroupConfig, GroupDescription, GroupListing, GroupState,
    HeartbeatResponse, JoinRequest, JoinResponse, LeaveMember, LeaveResponse, OffsetCommitEntry, OffsetCommitResult,
    OffsetRecord, Output, PersistedOffsets, ReplyToken, Response, SyncRequest, SyncResponse,
};
use crate::mqtt::persist;
use crate::stream::partition::{Acks, PartitionMsg, ProduceError};
use crate::stream::registry::PartitionHandle;

mod load;
pub use load::run_take_over;

/// How long a new coordinator of the cluster waits for its partition to commit the log it
/// replays (a leader commits its predecessors' entries with its first own entry).
const LOAD_WAIT: Duration = Duration::from_secs(5);
/// How long a commit waits for the offsets partition to commit it.
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// Bytes read per step of a replay.
const REPLAY_CHUNK: usize = 1 << 20;

/// Committed offsets: group \0 topic \0 partition (i32 BE) → [`StoredOffset`].
pub const GROUP_OFFSETS: &str = "group_offsets";
/// The key suffix, after the group's prefix, of its [`GroupMark`] in the offsets stream (not
/// UTF-8, and shorter than a topic's key, so no offset key can be read as it).
const MARK_SUFFIX: &[u8] = b"\xff\xfe";

/// Whether the group had members when its coordinator last wrote, and since when it has had
/// none: written with every batch and when members come or all go, so that a coordinator that
/// takes over counts an empty group's expiry from when it became empty, not from its own start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct GroupMark {
    empty_since: Option<i64>,
    /// the longest session timeout of its members: a coordinator that takes over gives them
    /// that long to join it before it counts the group as empty (as Kafka's new coordinator
    /// loads the members and expires them after their session timeout)
    session_timeout_ms: i32,
}

/// The mark as the first clusters wrote it, before it held the members' session timeout.
#[derive(Deserialize)]
struct FirstGroupMark {
    empty_since: Option<i64>,
}

impl GroupMark {
    /// A stored mark, in either form.
    fn decode(value: &[u8]) -> Result<GroupMark, persist::PersistError> {
        persist::decode(GROUP_OFFSETS, value).or_else(|error| {
            match persist::decode::<FirstGroupMark>(GROUP_OFFSETS, value) {
                Ok(first) => Ok(GroupMark { empty_since: first.empty_since, session_timeout_ms: 0 }),
                Err(_) => Err(error),
            }
        })
    }
}

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
    /// Where its offsets are kept.
    pub log: OffsetLog,
    /// What a replay of the whole partition found of it (a take-over), if done already.
    replayed: Option<load::Replayed>,
}

/// The `GroupCoordinator` actor.
pub struct GroupCoordinator;

/// The actor's state.
pub struct GroupShell {
    ctx: NodeContext,
    log: OffsetLog,
    group: GroupState,
    pending: BTreeMap<u64, Pending>,
    next_token: u64,
    timer_at: Option<i64>,
    /// when each committed offset was last written to the replicated log
    written: BTreeMap<(String, i32), i64>,
    /// since when the group has had no members (from the log's [`GroupMark`], or this
    /// coordinator's start)
    empty_since: Option<i64>,
    /// what the log's latest [`GroupMark`] says, once this coordinator knows
    marked: Option<GroupMark>,
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

fn mark_key(group_id: &str) -> Vec<u8> {
    let mut key = group_prefix(group_id);
    key.extend_from_slice(MARK_SUFFIX);
    key
}

fn group_prefix(group_id: &str) -> Vec<u8> {
    let mut key = group_id.as_bytes().to_vec();
    key.push(0);
    key
}

/// The (topic, partition) of a key under `prefix`: topic \0 partition, the partition the
/// last 4 bytes (which may hold zeros).
fn parse_offset_key(prefix: &[u8], key: &[u8]) -> Option<(String, i32)> {
    let rest = key.strip_prefix(prefix)?;
    let (topic_and_separator, partition_bytes) = rest.split_at_checked(rest.len().checked_sub(4)?)?;
    let topic_bytes = topic_and_separator.strip_suffix(&[0])?;
    let topic = String::from_utf8(topic_bytes.to_vec()).ok()?;
    Some((topic, i32::from_be_bytes(partition_bytes.try_into().ok()?)))
}

fn committed(stored: StoredOffset) -> CommittedOffset {
    CommittedOffset {
        offset: stored.offset,
        leader_epoch: stored.leader_epoch,
        metadata: stored.metadata,
        commit_timestamp_ms: stored.commit_timestamp_ms,
    }
}

fn stored(value: CommittedOffset) -> Vec<u8> {
    persist::encode(&StoredOffset {
        offset: value.offset,
        leader_epoch: value.leader_epoch,
        metadata: value.metadata,
        commit_timestamp_ms: value.commit_timestamp_ms,
    })
}

fn load_offsets(store: &dyn StateStore, group_id: &str) -> Vec<OffsetRecord> {
    let prefix = group_prefix(group_id);
    let Ok(entries) = store.scan_prefix(GROUP_OFFSETS, &prefix) else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|(key, value)| {
            let (topic, partition) = parse_offset_key(&prefix, &key)?;
            let stored: StoredOffset = persist::decode(GROUP_OFFSETS, &value).ok()?;
            Some(OffsetRecord { topic, partition, value: Some(committed(stored)) })
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
            min_session_timeout_ms: args.ctx.kafka.group_session_timeout_ms.0,
            max_session_timeout_ms: args.ctx.kafka.group_session_timeout_ms.1,
            ..GroupConfig::default()
        };
        let mut group = GroupState::new(args.group_id.clone(), config, args.ctx.rng.next_u64());
        let replayed = match (&args.log, args.replayed) {
            (OffsetLog::Local, _) => load::Replayed {
                records: load_offsets(args.ctx.state_store.as_ref(), &args.group_id),
                ..load::Replayed::default()
            },
            (OffsetLog::Replicated { .. }, Some(replayed)) => replayed,
            (OffsetLog::Replicated { partition, .. }, None) => load::replay(&args.ctx, partition, Some(&args.group_id))
                .await?
                .remove(&args.group_id)
                .unwrap_or_default(),
        };
        group.restore_offsets(replayed.records);
        let started = args.ctx.now_ms();
        // members do not move with the coordinator (they join again): a group that had some
        // counts as empty once their session timeout has passed from now, one that had none
        // from when it last had some
        let empty_since = match replayed.mark {
            Some(GroupMark { empty_since: Some(since), .. }) => since.min(started),
            Some(GroupMark { empty_since: None, session_timeout_ms }) => started + i64::from(session_timeout_ms),
            None => started,
        };
        Ok(GroupShell {
            ctx: args.ctx,
            log: args.log,
            group,
            pending: BTreeMap::new(),
            next_token: 0,
            timer_at: None,
            written: replayed.written,
            empty_since: Some(empty_since),
            marked: replayed.mark,
        })
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
        if matches!(message, GroupMsg::Tick) && shell.stale() {
            // nobody asked for the group since its partition's leadership moved (a request
            // goes through the registry, which builds it again): the registry builds it again
            // now if this node leads in a later epoch, and drops it otherwise, so that an idle
            // group's offsets still expire, counted from its mark
            let (ctx, group_id) = (shell.ctx.clone(), shell.group.group_id().to_string());
            tokio::spawn(async move { drop(ctx.groups.get_or_spawn(&ctx, &group_id).await) });
            return Ok(());
        }
        // before the request: a fetch never answers with an offset that has expired
        shell.refresh(now).await;
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
                let results = match shell.perform(outcome.outputs).await {
                    Ok(()) => outcome.results,
                    Err(error) => outcome.results.into_iter().map(|r| OffsetCommitResult { error, ..r }).collect(),
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
        if let Err(error) = shell.perform(outputs).await {
            tracing::warn!(group = %shell.group.group_id(), ?error, "offsets not stored");
        }
        shell.write_mark(now).await;
        let deadline = match (shell.group.next_deadline(), shell.refresh_due(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(deadline) = deadline
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

    /// Performs outputs; the error of the first store of offsets that failed.
    async fn perform(&mut self, outputs: Vec<Output>) -> Result<(), ErrorCode> {
        let mut stored = Ok(());
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
                Output::Persist(offsets) => {
                    let result = match &self.log {
                        OffsetLog::Local => self.store(offsets),
                        OffsetLog::Replicated { partition, epoch } => {
                            let (partition, epoch) = (partition.clone(), *epoch);
                            let keys: Vec<(String, i32, bool)> = offsets
                                .records
                                .iter()
                                .map(|r| (r.topic.clone(), r.partition, r.value.is_some()))
                                .collect();
                            let written = self.propose(&partition, epoch, offsets).await;
                            if written.is_ok() {
                                let now = self.ctx.now_ms();
                                for (topic, partition, present) in keys {
                                    if present {
                                        self.written.insert((topic, partition), now);
                                    } else {
                                        self.written.remove(&(topic, partition));
                                    }
                                }
                            }
                            written
                        }
                    };
                    stored = stored.and(result);
                }
            }
        }
        stored
    }

    /// Keeps the group's offsets within the offsets stream's retention (see the module's
    /// text): while the group has members, and for the retention after it last had some (as
    /// Kafka counts an empty group's expiry), every offset is rewritten once the oldest was
    /// written half the retention ago; after that each one is forgotten the retention after it
    /// was written, as the log's retention drops it.
    /// When [`GroupShell::refresh`] next has work: the next rewrite, or the first expiry (the
    /// coordinator's timer wakes it, so an idle group's offsets are rewritten or expire on time).
    fn refresh_due(&self, now: i64) -> Option<i64> {
        let OffsetLog::Replicated { .. } = &self.log else { return None };
        if self.marked != Some(self.mark()) {
            return Some(now + 1_000);
        }
        let retention = self.ctx.kafka.offsets_retention_ms;
        let oldest = *self.written.values().min()?;
        let rewriting = self.group.member_count() > 0 || self.empty_since.is_none_or(|since| now - since < retention);
        let due = if rewriting { oldest + retention / 2 } else { oldest + retention };
        // refresh ran at the start of this message: what is due still failed, and is tried again
        // a second later, not in a loop
        Some(due.max(now + 1_000))
    }

    /// The mark the log should hold now.
    fn mark(&self) -> GroupMark {
        GroupMark {
            empty_since: if self.group.member_count() > 0 { None } else { self.empty_since },
            session_timeout_ms: self.group.longest_session_timeout_ms(),
        }
    }

    /// Brings `empty_since` up to the members the group has now and, in a cluster, writes the
    /// mark if the log's differs (members came, or the last one went).
    async fn write_mark(&mut self, now: i64) {
        if self.group.member_count() > 0 {
            self.empty_since = None;
        } else if self.empty_since.is_none() {
            self.empty_since = Some(now);
        }
        let OffsetLog::Replicated { partition, epoch } = &self.log else { return };
        if self.marked == Some(self.mark()) {
            return;
        }
        let (partition, epoch) = (partition.clone(), *epoch);
        let nothing = PersistedOffsets { group_id: self.group.group_id().to_string(), records: Vec::new() };
        if let Err(error) = self.propose(&partition, epoch, nothing).await {
            // tried again on the next message, or a second later (`refresh_due`)
            tracing::debug!(group = %self.group.group_id(), ?error, "the group's mark not written yet");
        }
    }

    /// Whether this coordinator's epoch has passed: its partition is led by another node
    /// now, or by this one in a later term.
    fn stale(&self) -> bool {
        match &self.log {
            OffsetLog::Local => false,
            OffsetLog::Replicated { partition, epoch } => !leads_in(partition, *epoch),
        }
    }

    async fn refresh(&mut self, now: i64) {
        let OffsetLog::Replicated { partition, epoch } = &self.log else { return };
        let retention = self.ctx.kafka.offsets_retention_ms;
        let Some(&oldest) = self.written.values().min() else { return };
        if self.group.member_count() > 0 {
            self.empty_since = None;
        }
        let empty_since = *self.empty_since.get_or_insert(now);
        if self.group.member_count() == 0 && now - empty_since >= retention {
            let expired: Vec<OffsetRecord> = self
                .written
                .iter()
                .filter(|(_, at)| now - **at >= retention)
                .map(|((topic, partition), _)| OffsetRecord {
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                })
                .collect();
            if expired.is_empty() {
                return;
            }
            // tombstones first: a coordinator that replays the log later must not find them
            let (partition, epoch) = (partition.clone(), *epoch);
            let tombstones = PersistedOffsets { group_id: self.group.group_id().to_string(), records: expired.clone() };
            if let Err(error) = self.propose(&partition, epoch, tombstones).await {
                tracing::warn!(group = %self.group.group_id(), ?error, "expired offsets not deleted yet");
                return;
            }
            for record in &expired {
                self.written.remove(&(record.topic.clone(), record.partition));
            }
            tracing::info!(group = %self.group.group_id(), offsets = expired.len(), "committed offsets of an empty group expired");
            self.group.restore_offsets(expired);
            return;
        }
        if now - oldest < retention / 2 {
            return;
        }
        let (partition, epoch) = (partition.clone(), *epoch);
        let offsets = self.group.committed_offsets();
        let keys: Vec<(String, i32)> = offsets.records.iter().map(|r| (r.topic.clone(), r.partition)).collect();
        match self.propose(&partition, epoch, offsets).await {
            Ok(()) => self.written = keys.into_iter().map(|key| (key, now)).collect(),
            Err(error) => tracing::warn!(group = %self.group.group_id(), ?error, "committed offsets not rewritten"),
        }
    }

    /// Proposes the offsets, and the group's mark, as one record batch to the group's
    /// partition of the offsets stream; answered after commit.
    async fn propose(
        &mut self,
        partition: &PartitionHandle,
        epoch: u64,
        offsets: PersistedOffsets,
    ) -> Result<(), ErrorCode> {
        // a coordinator of an older epoch (this node led, lost and leads again) replayed less
        // than the partition holds: it must not write, its successor answers
        if !leads_in(partition, epoch) {
            return Err(ErrorCode::NotCoordinator);
        }
        let now = self.ctx.now_ms();
        let mark = self.mark();
        let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = offsets
            .records
            .into_iter()
            .map(|record| (offset_key(&offsets.group_id, &record.topic, record.partition), record.value.map(stored)))
            .collect();
        entries.push((mark_key(&offsets.group_id), Some(persist::encode(&mark))));
        let records: Vec<NewRecord> = entries
            .iter()
            .map(|(key, value)| NewRecord { key: Some(key), value: value.as_deref(), headers: &[], timestamp_ms: now })
            .collect();
        let batch = build_record_batch(&records, now);
        let (reply, answer) = ractor::concurrency::oneshot();
        if partition.actor.cast(PartitionMsg::AppendBatch(batch, Acks::All, reply.into())).is_err() {
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        match tokio::time::timeout(COMMIT_WAIT, answer).await {
            Ok(Ok(Ok(_))) => {
                self.marked = Some(mark);
                Ok(())
            }
            Ok(Ok(Err(ProduceError::NotLeader(_)))) => Err(ErrorCode::NotCoordinator),
            Ok(Ok(Err(error))) => {
                tracing::warn!(group = %offsets.group_id, %error, "committed offsets not replicated");
                Err(ErrorCode::CoordinatorNotAvailable)
            }
            Ok(Err(_)) | Err(_) => Err(ErrorCode::CoordinatorNotAvailable),
        }
    }

    fn store(&self, offsets: PersistedOffsets) -> Result<(), ErrorCode> {
        let ops = offsets
            .records
            .into_iter()
            .map(|record| {
                let key = offset_key(&offsets.group_id, &record.topic, record.partition);
                match record.value {
                    Some(value) => StateOp::Put { space: GROUP_OFFSETS, key, value: stored(value) },
                    None => StateOp::Delete { space: GROUP_OFFSETS, key },
                }
            })
            .collect();
        self.ctx.state_store.write_batch(ops).map_err(|error| {
            tracing::error!(group = %offsets.group_id, %error, "cannot store committed offsets");
            ErrorCode::CoordinatorNotAvailable
        })
    }
}

/// Whether this node's replica of `partition` leads it in `epoch`.
fn leads_in(partition: &PartitionHandle, epoch: u64) -> bool {
    let leads = partition.replica.as_ref().and_then(|view| *view.leadership.borrow());
    leads.is_some_and(|leadership| leadership.is_leader && leadership.term == epoch)
}

/// The node's consumer groups: each coordinator, and the leader epoch of the offsets
/// partition it belongs to (`None` for a node alone).
#[derive(Default)]
pub struct GroupRegistry {
    groups: tokio::sync::Mutex<BTreeMap<String, Coordinating>>,
    /// per partition of the offsets stream, the leader epoch whose groups were taken over
    loaded: std::sync::Mutex<BTreeMap<usize, u64>>,
}

/// A coordinator and the leader epoch it belongs to.
type Coordinating = (ActorRef<GroupMsg>, Option<u64>);

impl std::fmt::Debug for GroupRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupRegistry")
    }
}

/// Spawns a coordinator into the registry, and ticks it once, so that it sets its timer
/// (for the rewrites and the expiry of a group nobody asks about).
async fn spawn_into(
    groups: &mut BTreeMap<String, Coordinating>,
    args: GroupArgs,
) -> Result<ActorRef<GroupMsg>, GroupUnavailable> {
    let group_id = args.group_id.clone();
    let epoch = match &args.log {
        OffsetLog::Replicated { epoch, .. } => Some(*epoch),
        OffsetLog::Local => None,
    };
    match Actor::spawn(None, GroupCoordinator, args).await {
        Ok((actor, _)) => {
            let _ = actor.cast(GroupMsg::Tick);
            groups.insert(group_id, (actor.clone(), epoch));
            Ok(actor)
        }
        Err(error) => {
            tracing::warn!(group = %group_id, %error, "cannot start group coordinator");
            Err(if epoch.is_some() { GroupUnavailable::Loading } else { GroupUnavailable::NotAvailable })
        }
    }
}

impl GroupRegistry {
    /// The coordinator of `group_id`, spawned if needed: on a node alone always; in a
    /// cluster only where the group's offsets partition is led, built again from the
    /// partition when its leader epoch changed.
    pub async fn get_or_spawn(
        &self,
        ctx: &NodeContext,
        group_id: &str,
    ) -> Result<ActorRef<GroupMsg>, GroupUnavailable> {
        let log = group_place::locate(ctx, group_id).await;
        let mut groups = self.groups.lock().await;
        let epoch = match &log {
            Ok(OffsetLog::Replicated { epoch, .. }) => Some(*epoch),
            _ => None,
        };
        if let Some((actor, held)) = groups.get(group_id) {
            if log.is_ok() && *held == epoch {
                return Ok(actor.clone());
            }
            // coordinated elsewhere now, or here again in a later epoch: what it holds is stale
            let (actor, _) = groups.remove(group_id).expect("present");
            actor.stop(Some("the group's offsets partition changed leader".into()));
        }
        let args = GroupArgs { ctx: ctx.clone(), group_id: group_id.to_string(), log: log?, replayed: None };
        spawn_into(&mut groups, args).await
    }

    /// Builds the coordinator of `group_id` in `log`'s epoch from what a replay found, unless
    /// one of that epoch runs already; whether it built one.
    async fn spawn_replayed(
        &self,
        ctx: &NodeContext,
        group_id: &str,
        log: OffsetLog,
        replayed: load::Replayed,
    ) -> bool {
        let OffsetLog::Replicated { epoch, .. } = &log else { return false };
        let epoch = *epoch;
        let mut groups = self.groups.lock().await;
        if let Some((actor, held)) = groups.get(group_id) {
            if *held == Some(epoch) {
                return false;
            }
            actor.stop(Some("the group's offsets partition changed leader".into()));
        }
        let args = GroupArgs { ctx: ctx.clone(), group_id: group_id.to_string(), log, replayed: Some(replayed) };
        spawn_into(&mut groups, args).await.is_ok()
    }

    /// The coordinator of `group_id` if the group exists: on a node alone, in memory or with
    /// stored offsets; in a cluster, wherever this node coordinates it (its offsets are only
    /// known once replayed).
    pub async fn get(&self, ctx: &NodeContext, group_id: &str) -> Result<ActorRef<GroupMsg>, GroupUnavailable> {
        if ctx.catalog().is_some() {
            return self.get_or_spawn(ctx, group_id).await;
        }
        if let Some((actor, _)) = self.groups.lock().await.get(group_id) {
            return Ok(actor.clone());
        }
        let has_offsets =
            ctx.state_store.scan_prefix(GROUP_OFFSETS, &group_prefix(group_id)).is_ok_and(|e| !e.is_empty());
        if has_offsets { self.get_or_spawn(ctx, group_id).await } else { Err(GroupUnavailable::Unknown) }
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
            let _ = self.get_or_spawn(ctx, id).await;
        }
        ids.len()
    }

    /// Every group coordinator.
    pub async fn all(&self) -> Vec<ActorRef<GroupMsg>> {
        self.groups.lock().await.values().map(|(actor, _)| actor.clone()).collect()
    }

    /// Stops every coordinator after the requests it holds (node shutdown).
    pub async fn shutdown(&self) {
        let groups = std::mem::take(&mut *self.groups.lock().await);
        for (actor, _) in groups.values() {
            let _ = actor.drain_and_wait(Some(Duration::from_secs(5))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_storage::MemoryStore;

    #[test]
    fn a_mark_written_before_it_held_the_session_timeout_still_reads() {
        #[derive(Serialize)]
        struct First {
            empty_since: Option<i64>,
        }
        for empty_since in [None, Some(1_796_665_492_897)] {
            let first = persist::encode(&First { empty_since });
            assert_eq!(GroupMark::decode(&first).unwrap(), GroupMark { empty_since, session_timeout_ms: 0 });
            let mark = GroupMark { empty_since, session_timeout_ms: 6_000 };
            assert_eq!(GroupMark::decode(&persist::encode(&mark)).unwrap(), mark);
        }
        assert!(GroupMark::decode(b"\x01").is_err());
    }

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
