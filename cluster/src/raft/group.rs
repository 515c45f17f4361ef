//! [`RaftReplica`]: the actor shell around one replica of one raft group.
//!
//! It owns a [`ReplicaCore`] and its [`RaftJournal`], ticks on a timer, steps messages the
//! data plane delivers, and after every input drains the core: messages go to the
//! [`RaftTransport`] (the node's `PeerLink`s), jobs to the journal, answers to the proposers
//! who asked. The journal tells the actor when a job is durable (from the log writer's
//! thread, by message); the actor reports jobs to the core strictly in order, because a job
//! with no batches finishes at once while the one before it may still be on its way to disk.
//!
//! A failed write stops the replica: raft's promises rest on its writes, so it restarts from
//! what the disk holds rather than going on with a log it cannot trust.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use super::journal::RaftJournal;
use super::replica::{AckOn, Leadership, Output, Placed, Reconciled, Refusal, ReplicaCore, ReplicaOptions};
use super::wire::RaftMessage;
use crate::data_plane::GroupId;
use tidewater_storage::{LogStore, PartitionId, ProducerCheck, ProducerTable, Retention, StateStore, retention_point};

/// Where a replica's outgoing raft messages go.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `message` of `group` to node `message.to` (best effort: raft resends).
    fn send(&self, group: &GroupId, message: RaftMessage);
}

/// What a replica actor needs.
pub struct RaftReplicaArgs {
    /// the group's id on the data plane
    pub group: GroupId,
    /// the partition whose log holds the group's batches
    pub partition: PartitionId,
    /// raft settings (the node id is `options.id`)
    pub options: ReplicaOptions,
    /// the voters of a new group (ignored when the journal already has a membership)
    pub voters: Vec<u64>,
    /// one raft tick
    pub tick: Duration,
    /// the partition logs
    pub log: Arc<dyn LogStore>,
    /// raft records
    pub state: Arc<dyn StateStore>,
    /// the node's links to its peers
    pub transport: Arc<dyn RaftTransport>,
    /// published: the high watermark (what consumers may read)
    pub high_watermark: watch::Sender<i64>,
    /// published: who leads
    pub leadership: watch::Sender<Option<Leadership>>,
    /// published while this replica leads: the in-sync voters (Kafka's ISR), sorted; empty
    /// when it does not lead
    pub in_sync: watch::Sender<Vec<u64>>,
    /// the node's clock for hibernating replicas (every replica of a node shares one)
    pub clock: Arc<SleepClock>,
}

/// One timer for every hibernating replica of a node. A replica that sleeps stops its own
/// timer and joins this one, which sends each sleeper [`ASLEEP_TICKS`] ticks at once, all of
/// them together: a thousand sleeping replicas cost one wake-up of the runtime a period, not a
/// thousand timers firing at their own moments (which kept the tokio workers parking and
/// waking: 6.5% of a core per node for 1,000 idle partitions, against 0.5% with this).
#[derive(Default)]
pub struct SleepClock {
    sleepers: parking_lot::Mutex<std::collections::BTreeMap<ractor::ActorId, ActorRef<RaftReplicaMsg>>>,
    running: std::sync::atomic::AtomicBool,
}

impl SleepClock {
    /// `replica` sleeps: it gets [`ASLEEP_TICKS`] ticks every `period` (the clock starts with
    /// the first sleeper, at its period: every replica of a node ticks alike).
    fn join(self: &Arc<Self>, replica: &ActorRef<RaftReplicaMsg>, period: Duration) {
        self.sleepers.lock().insert(replica.get_id(), replica.clone());
        if !self.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let clock = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(clock) = clock.upgrade() else { return };
                    let sleepers: Vec<ActorRef<RaftReplicaMsg>> = clock.sleepers.lock().values().cloned().collect();
                    drop(clock);
                    for sleeper in sleepers {
                        let _ = sleeper.cast(RaftReplicaMsg::Tick(ASLEEP_TICKS));
                    }
                }
            });
        }
    }

    /// `replica` is awake (or stopped): it ticks on its own timer again.
    fn leave(&self, replica: &ActorRef<RaftReplicaMsg>) {
        self.sleepers.lock().remove(&replica.get_id());
    }
}

/// The answer to a proposal.
pub type ProposeReply = RpcReplyPort<Result<Placed, Refusal>>;

/// Messages to a replica.
#[allow(clippy::large_enum_variant)] // most messages are `Step`; boxing would cost an allocation each
pub enum RaftReplicaMsg {
    /// this many ticks passed (from the actor's own timer, one tick each tick, while awake;
    /// from the node's [`SleepClock`], [`ASLEEP_TICKS`] at a time, while it hibernates)
    Tick(u64),
    /// wake a hibernating replica (a peer is gone: see `ReplicaCore::wake`)
    Wake,
    /// a message from a peer replica of the group
    Step(RaftMessage),
    /// append one RecordBatch (leader only), answered per `AckOn`
    Propose {
        /// the RecordBatch v2 bytes
        batch: bytes::Bytes,
        /// when to answer
        ack_on: AckOn,
        /// the answer
        reply: ProposeReply,
    },
    /// the journal finished job `number`
    Persisted {
        /// the job's `Ready` number
        number: u64,
        /// an error text if the write failed
        failed: Option<String>,
    },
    /// hand leadership to another voter
    TransferLeader(u64),
    /// add a node as a learner (leader only; answered once proposed, not once applied)
    AddLearner(u64, RpcReplyPort<Result<(), Refusal>>),
    /// take one step toward voters `target` (leader only; see `ReplicaCore::reconcile`)
    Reconcile(Vec<u64>, RpcReplyPort<Reconciled>),
    /// apply the stream's retention to this replica's log at `now_ms` (ms since the epoch)
    Retain {
        /// now
        now_ms: i64,
        /// the stream's limits
        retention: Retention,
    },
    /// a snapshot of the replica's state
    Status(RpcReplyPort<ReplicaStatus>),
}

/// A replica's state, for HTTP status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// who leads, as this replica sees it
    pub leadership: Leadership,
    /// the raft commit index
    pub commit_index: u64,
    /// the last raft index held
    pub last_index: u64,
    /// what consumers may read up to
    pub high_watermark: i64,
    /// proposals waiting for an answer
    pub waiting: usize,
    /// the voters applied so far
    pub voters: Vec<u64>,
    /// the learners applied so far
    pub learners: Vec<u64>,
    /// the compaction point (entries up to it are gone from the raft log)
    pub compacted_index: u64,
    /// the Kafka offset the log starts at
    pub log_start: i64,
    /// leaders' snapshots this replica installed since it started
    pub snapshots_installed: u64,
    /// whether it hibernates (an idle group stops ticking)
    pub asleep: bool,
    /// times it fell asleep since it started
    pub sleeps: u64,
}

/// While a replica hibernates it is ticked once every this many ticks (by the [`SleepClock`]).
pub const ASLEEP_TICKS: u64 = 20;

/// The replica actor.
pub struct RaftReplica;

/// A replica actor's state.
pub struct RaftReplicaState {
    args: RaftReplicaArgs,
    core: ReplicaCore<ProposeReply>,
    journal: Arc<RaftJournal>,
    /// jobs handed to the journal, in order, and whether each is done
    jobs: VecDeque<(u64, bool)>,
    /// the replica's own timer, while it is awake (`None` while it ticks on the node's
    /// sleep clock)
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// the idempotent producers, while this replica leads and has applied an entry of its
    /// own term (before that its log may still hold a retry it cannot see as one)
    producers: Option<ProducerTable>,
    /// retries of batches not committed yet: (the original's last offset, answer)
    duplicates: Vec<(i64, ProposeReply, Placed)>,
    /// leaders' snapshots installed
    snapshots_installed: u64,
    /// times it fell asleep
    sleeps: u64,
}

impl Actor for RaftReplica {
    type Msg = RaftReplicaMsg;
    type State = RaftReplicaState;
    type Arguments = RaftReplicaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RaftReplicaMsg>,
        args: RaftReplicaArgs,
    ) -> Result<RaftReplicaState, ActorProcessingErr> {
        let (journal, restored) =
            RaftJournal::open(args.partition.clone(), Arc::clone(&args.log), Arc::clone(&args.state), &args.voters)?;
        let mut core = ReplicaCore::new(&args.options, restored.log, restored.applied)?;
        if core.sole_voter() {
            core.campaign()?;
        }
        args.high_watermark.send_replace(core.high_watermark());
        let ticker = Some(myself.send_interval(args.tick, || RaftReplicaMsg::Tick(1)));
        let mut state = RaftReplicaState {
            args,
            core,
            journal: Arc::new(journal),
            jobs: VecDeque::new(),
            ticker,
            producers: None,
            duplicates: Vec::new(),
            snapshots_installed: 0,
            sleeps: 0,
        };
        state.drain(&myself);
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RaftReplicaMsg>,
        state: &mut RaftReplicaState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        state.args.clock.leave(&myself);
        for (reply, refusal) in state.core.refuse_waiting() {
            let _ = reply.send(Err(refusal));
        }
        for (_, reply, _) in state.duplicates.drain(..) {
            let _ = reply.send(Err(Refusal::Stopped));
        }
        if let Err(error) = state.journal.write_record() {
            tracing::warn!(group = ?state.args.group, %error, "cannot write the raft record at stop");
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RaftReplicaMsg>,
        message: RaftReplicaMsg,
        state: &mut RaftReplicaState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RaftReplicaMsg::Wake => state.core.wake(),
            RaftReplicaMsg::Tick(ticks) => {
                state.core.ticks_elapsed(ticks);
                let in_sync = state.core.in_sync();
                state.args.in_sync.send_if_modified(|published| {
                    let changed = published.as_slice() != in_sync;
                    if changed {
                        *published = in_sync.to_vec();
                    }
                    changed
                });
            }
            RaftReplicaMsg::Step(message) => {
                if let Err(error) = state.core.step(&message) {
                    tracing::debug!(group = ?state.args.group, %error, "raft message refused");
                }
            }
            RaftReplicaMsg::Propose { batch, ack_on, reply } => state.propose(&batch, ack_on, reply),
            RaftReplicaMsg::Persisted { number, failed } => {
                if let Some(error) = failed {
                    tracing::error!(group = ?state.args.group, %error, "raft write failed: the replica stops");
                    myself.stop(Some(format!("raft write failed: {error}")));
                    return Ok(());
                }
                if let Some(job) = state.jobs.iter_mut().find(|(job, _)| *job == number) {
                    job.1 = true;
                }
                let mut durable = None;
                while let Some(&(number, true)) = state.jobs.front() {
                    durable = Some(number);
                    state.jobs.pop_front();
                }
                if let Some(number) = durable {
                    state.core.persisted(number);
                }
            }
            RaftReplicaMsg::TransferLeader(to) => state.core.transfer_leader(to),
            RaftReplicaMsg::AddLearner(node, reply) => {
                let _ = reply.send(state.core.add_learner(node));
            }
            RaftReplicaMsg::Reconcile(target, reply) => {
                let _ = reply.send(state.core.reconcile(&target));
            }
            RaftReplicaMsg::Status(reply) => {
                let (voters, learners) = state.core.membership();
                let _ = reply.send(ReplicaStatus {
                    voters,
                    learners,
                    leadership: state.core.leadership(),
                    commit_index: state.core.commit_index(),
                    last_index: state.core.log().last_index(),
                    high_watermark: state.core.high_watermark(),
                    waiting: state.core.waiting(),
                    compacted_index: state.core.log().base_index(),
                    log_start: state.core.log().start_offset(),
                    snapshots_installed: state.snapshots_installed,
                    asleep: state.core.asleep(),
                    sleeps: state.sleeps,
                });
                return Ok(());
            }
            RaftReplicaMsg::Retain { now_ms, retention } => {
                if let Err(error) = state.retain(now_ms, retention) {
                    // the record or the log store failed: as with any failed write, restart
                    // from what the disk holds
                    tracing::error!(group = ?state.args.group, %error, "retention failed: the replica stops");
                    myself.stop(Some(format!("retention failed: {error}")));
                    return Ok(());
                }
            }
        }
        state.drain(&myself);
        Ok(())
    }
}

impl RaftReplicaState {
    /// Retention: the raft log is compacted up to what the stream keeps, never past what this
    /// replica has applied, and the batches below go from the log store.
    fn retain(&mut self, now_ms: i64, retention: Retention) -> Result<(), tidewater_storage::StorageError> {
        let log = self.args.log.as_ref();
        let Some(keep_from) = retention_point(log, &self.args.partition, now_ms, retention)? else {
            return Ok(());
        };
        let Some(compaction) = self.core.compact(keep_from.min(self.core.high_watermark())) else {
            return Ok(());
        };
        tracing::debug!(group = ?self.args.group, index = compaction.index, log_start = compaction.end_offset, "raft log compacted");
        self.journal.compact(&compaction)
    }

    /// Proposes a batch after the idempotent-producer check (a retry of a batch already in the
    /// log is answered with the original's offsets, once they are committed).
    fn propose(&mut self, batch: &[u8], ack_on: AckOn, reply: ProposeReply) {
        let Ok(header) = tidewater_storage::validate_batch(batch) else {
            let _ = reply.send(Err(Refusal::InvalidBatch));
            return;
        };
        if header.producer_id >= 0 && header.base_sequence >= 0 {
            if !self.core.is_leader() {
                let _ = reply.send(Err(Refusal::NotLeader { leader: self.core.leader() }));
                return;
            }
            let Some(producers) = &self.producers else {
                let _ = reply.send(Err(Refusal::NotReady));
                return;
            };
            let refusal = match producers.check(&header) {
                ProducerCheck::Append => None,
                ProducerCheck::Duplicate { base_offset, last_offset } => {
                    let placed = Placed {
                        index: 0,
                        base_offset,
                        last_offset,
                        leader_epoch: self.core.term() as i32,
                        duplicate: true,
                    };
                    if last_offset < self.core.high_watermark() {
                        let _ = reply.send(Ok(placed));
                    } else {
                        self.duplicates.push((last_offset, reply, placed));
                    }
                    return;
                }
                ProducerCheck::OutOfOrder => Some(Refusal::OutOfOrderSequence),
                ProducerCheck::Fenced => Some(Refusal::ProducerFenced),
            };
            if let Some(refusal) = refusal {
                let _ = reply.send(Err(refusal));
                return;
            }
        }
        match self.core.propose_validated(batch, &header, ack_on, reply) {
            // counted at once, so that the producer's next batch (pipelined) follows on
            Ok(placed) => {
                if let Some(producers) = &mut self.producers {
                    producers.record(&header, placed.base_offset);
                }
            }
            Err((reply, refusal)) => {
                let _ = reply.send(Err(refusal));
            }
        }
    }

    /// Keeps the producer table true to the role: dropped when leadership goes (with the
    /// retries that wait), rebuilt from the log once the leader has applied an entry of its
    /// own term (then every entry of earlier terms it will ever commit is in the log store).
    fn track_producers(&mut self) {
        if !self.core.is_leader() {
            self.producers = None;
            for (_, reply, _) in self.duplicates.drain(..) {
                let _ = reply.send(Err(Refusal::NotLeader { leader: self.core.leader() }));
            }
            return;
        }
        let high_watermark = self.core.high_watermark();
        if self.producers.is_none() && self.core.log().term_at(self.core.applied()) == Some(self.core.term()) {
            let log = self.args.log.as_ref();
            let log_start = log.offsets(&self.args.partition).map_or(0, |offsets| offsets.log_start);
            self.producers = Some(ProducerTable::recover(log, &self.args.partition, log_start, high_watermark));
        }
        if !self.duplicates.is_empty() {
            let (ready, waiting) =
                std::mem::take(&mut self.duplicates).into_iter().partition(|(last, _, _)| *last < high_watermark);
            self.duplicates = waiting;
            for (_, reply, placed) in ready {
                let _ = reply.send(Ok(placed));
            }
        }
    }

    /// Ticks at the pace the core's hibernation asks for: on its own timer every tick while
    /// awake, on the node's [`SleepClock`] while asleep.
    fn pace(&mut self, myself: &ActorRef<RaftReplicaMsg>) {
        let asleep = self.core.asleep();
        if asleep == self.ticker.is_none() {
            return;
        }
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            self.sleeps += 1;
            metrics::counter!("tidewater_raft_hibernations_total").increment(1);
            self.args.clock.join(myself, self.args.tick * ASLEEP_TICKS as u32);
        } else {
            self.args.clock.leave(myself);
            self.ticker = Some(myself.send_interval(self.args.tick, || RaftReplicaMsg::Tick(1)));
        }
    }

    /// Handles every output of the core until it has none.
    fn drain(&mut self, myself: &ActorRef<RaftReplicaMsg>) {
        loop {
            let out = match self.core.ready() {
                Ok(Some(out)) => out,
                Ok(None) => {
                    self.track_producers();
                    self.pace(myself);
                    return;
                }
                Err(error) => {
                    tracing::error!(group = ?self.args.group, %error, "raft ready failed: the replica stops");
                    myself.stop(Some(format!("raft ready failed: {error}")));
                    return;
                }
            };
            self.handle_output(out, myself);
        }
    }

    fn handle_output(&mut self, out: Output<ProposeReply>, myself: &ActorRef<RaftReplicaMsg>) {
        if let Some(job) = out.persist {
            if let Some(snapshot) = &job.snapshot {
                self.snapshots_installed += 1;
                metrics::counter!("tidewater_raft_snapshots_installed_total").increment(1);
                tracing::info!(group = ?self.args.group, index = snapshot.index, log_start = snapshot.end_offset, "behind the leader's compaction point: the log restarts from its snapshot");
            }
            self.jobs.push_back((job.number, false));
            let number = job.number;
            let actor = myself.clone();
            self.journal.write(
                &job,
                Box::new(move |result| {
                    let failed = result.err().map(|error| error.to_string());
                    let _ = actor.cast(RaftReplicaMsg::Persisted { number, failed });
                }),
            );
        }
        for message in out.send {
            self.args.transport.send(&self.args.group, message);
        }
        for (reply, answer) in out.acks {
            let _ = reply.send(answer);
        }
        if let Some(high_watermark) = out.high_watermark {
            self.args.high_watermark.send_replace(high_watermark);
        }
        if let Some(leadership) = out.leadership {
            self.args.leadership.send_replace(Some(leadership));
        }
    }
}

/// The replicas on this node by group, where inbound raft messages are delivered.
#[derive(Default)]
pub struct GroupRouter {
    groups: parking_lot::RwLock<std::collections::BTreeMap<GroupId, ActorRef<RaftReplicaMsg>>>,
    clock: Arc<SleepClock>,
}

impl GroupRouter {
    /// Routes `group`'s messages to `replica`.
    pub fn insert(&self, group: GroupId, replica: ActorRef<RaftReplicaMsg>) {
        self.groups.write().insert(group, replica);
    }

    /// Stops routing `group`.
    pub fn remove(&self, group: &GroupId) -> Option<ActorRef<RaftReplicaMsg>> {
        self.groups.write().remove(group)
    }

    /// The replica of `group` on this node.
    pub fn get(&self, group: &GroupId) -> Option<ActorRef<RaftReplicaMsg>> {
        self.groups.read().get(group).cloned()
    }

    /// The clock of this node's hibernating replicas.
    pub fn clock(&self) -> Arc<SleepClock> {
        Arc::clone(&self.clock)
    }

    /// Wakes every replica on this node (a peer is gone: see `ReplicaCore::wake`).
    pub fn wake_all(&self) {
        for replica in self.groups.read().values() {
            let _ = replica.cast(RaftReplicaMsg::Wake);
        }
    }

    /// Delivers one data-plane frame from `from` (messages for groups this node does not
    /// hold are dropped: the sender's raft retries or learns otherwise).
    pub fn deliver(&self, from: u64, message: crate::data_plane::PeerMessage) {
        let crate::data_plane::PeerMessage::Raft(messages) = message else { return };
        let groups = self.groups.read();
        for (group, message) in messages {
            // a peer may only speak for itself
            if message.from != from {
                continue;
            }
            if let Some(replica) = groups.get(&group) {
                let _ = replica.cast(RaftReplicaMsg::Step(message));
            }
        }
    }
}
