//! One partition replica's replication, sans-IO: a raft-rs `RawNode` plus the Kafka rules
//! on top of it (offset stamping, the high watermark, acknowledgements).
//!
//! The host (the `PartitionReplica` actor, or a test's in-memory network) feeds it ticks,
//! messages and proposals, and after each input drains [`ReplicaCore::ready`]: messages to
//! send now, a [`PersistJob`] to make durable, acknowledgements, a new high watermark. When
//! a job is durable the host calls [`ReplicaCore::persisted`]; only then are the messages that
//! depend on it released (raft-rs's asynchronous persistence, `advance_append_async`).
//!
//! Kafka offsets ride on the raft log: the leader stamps each RecordBatch with the next
//! offset and its term as the partition leader epoch (both lie outside the batch CRC) before
//! proposing it, so every replica's log holds byte-identical batches. No-op and conf-change
//! entries take no offset. The high watermark is the end of the last committed data entry.

use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, HardState};
use raft::{RawNode, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::entry_log::{AppendError, BatchSpan, Compaction, EntryLog, batch_span, snapshot_offset};
use super::logger;
use super::wire::{RaftMessage, RaftMessageKind, WireError};

/// How a replica runs (ticks are the host's clock: a tick every `tick` interval).
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// this replica's node id (raft peer id, never 0)
    pub id: u64,
    /// ticks without a leader before an election (randomised in `[n, 2n)`)
    pub election_ticks: usize,
    /// ticks between a leader's heartbeats
    pub heartbeat_ticks: usize,
    /// the most entry bytes in one append message
    pub max_bytes_per_message: u64,
    /// append messages in flight to one follower
    pub max_inflight_messages: usize,
    /// seeds the election timeouts (raft-rs would draw them from `thread_rng`)
    pub seed: u64,
    /// the voter that should lead when it can (the first of a partition's replica set):
    /// another leader hands it leadership once it is active and caught up, so that the
    /// partitions' leaders spread over the nodes as placement spread the replica sets
    pub preferred_leader: Option<u64>,
    /// ticks a leader keeps leadership before it hands it to the preferred leader
    pub balance_after_ticks: u64,
    /// a follower is in sync (Kafka's ISR) while it was heard from within this many ticks
    /// and holds every entry the leader had this many ticks ago (`replica.lag.time.max.ms`)
    pub replica_lag_ticks: u64,
    /// hibernation: a leader with nothing to do for this many ticks stops ticking, and so do
    /// its followers once told (0: never; see [`ReplicaCore::asleep`])
    pub quiet_ticks: u64,
    /// a sleeping leader repeats its notice every this many ticks
    pub asleep_notice_ticks: u64,
    /// a sleeping follower that heard nothing from its leader for this many ticks wakes (the
    /// last resort: the host wakes its replicas when a peer is gone, see [`ReplicaCore::wake`])
    pub asleep_timeout_ticks: u64,
}

impl ReplicaOptions {
    /// Defaults for replica `id`.
    pub fn new(id: u64, seed: u64) -> Self {
        Self {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 256,
            seed,
            preferred_leader: None,
            balance_after_ticks: 100,
            replica_lag_ticks: 200,
            quiet_ticks: 0,
            asleep_notice_ticks: 40,
            asleep_timeout_ticks: 120,
        }
    }
}

/// When a proposal is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AckOn {
    /// once a majority holds it (Kafka `acks=all`, MQTT QoS 1/2)
    Commit,
    /// once the leader's own write is durable (Kafka `acks=1`: can be lost in a fail-over)
    LeaderAppend,
}

/// Where an acknowledged batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placed {
    /// the raft index of its entry
    pub index: u64,
    /// its first Kafka offset
    pub base_offset: i64,
    /// its last Kafka offset
    pub last_offset: i64,
    /// the partition leader epoch it was stamped with (the raft term)
    pub leader_epoch: i32,
    /// a retry of an idempotent producer's batch that was already there: not appended again
    pub duplicate: bool,
}

/// Why a proposal was not (or will never be) acknowledged. None of these says the batch is
/// absent: a client that retries may find it already there (idempotent producers dedupe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// this replica does not lead; the leader it knows of, if any
    #[error("not the leader (leader {leader:?})")]
    NotLeader {
        /// the known leader's id
        leader: Option<u64>,
    },
    /// the entry was replaced by another leader's before it committed
    #[error("the entry was superseded by a new leader")]
    Superseded,
    /// the bytes are not one RecordBatch
    #[error("not a record batch")]
    InvalidBatch,
    /// the replica stopped before the entry committed
    #[error("the replica stopped")]
    Stopped,
    /// a membership change is still under way (raft takes one at a time)
    #[error("a membership change is under way")]
    ChangePending,
    /// a new leader has not committed an entry of its term yet, so it cannot tell an
    /// idempotent producer's retry from a new batch (retriable)
    #[error("the leader is not ready for idempotent producers yet")]
    NotReady,
    /// an idempotent producer's sequence has a gap or repeats an older batch
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    /// an idempotent producer's epoch is older than one seen already
    #[error("producer fenced by a newer epoch")]
    ProducerFenced,
    /// forwarded to the leader's node, which did not answer in time (the entry may still
    /// commit: only a client that may retry is told)
    #[error("the leader's node did not answer in time")]
    Unanswered,
    /// forwarded to a node that could not be reached: the proposal was not sent, or the
    /// connection failed as it was written
    #[error("the leader's node cannot be reached")]
    Unreachable,
}

/// A write the host must make durable, then report with [`ReplicaCore::persisted`].
#[derive(Debug, Clone, Default)]
pub struct PersistJob {
    /// the raft-rs `Ready` number to report
    pub number: u64,
    /// cut the Kafka log back to end here before writing `entries`
    pub cut_to: Option<i64>,
    /// entries to append, in index order (data entries carry stamped RecordBatches)
    pub entries: Vec<Entry>,
    /// a new term / vote / commit
    pub hard_state: Option<HardState>,
    /// a new membership (applied at `applied` or before)
    pub conf_state: Option<ConfState>,
    /// the last index applied; a restart passes the durable one to [`ReplicaCore::new`]
    /// (worth writing with the rest, never worth a write of its own)
    pub applied: u64,
    /// whether this must reach the disk before the report (term or vote changed, or entries)
    pub must_sync: bool,
    /// a leader's snapshot to install first: the log restarts empty at its point (written
    /// before `entries`, which follow it)
    pub snapshot: Option<Compaction>,
}

impl PersistJob {
    fn is_empty(&self) -> bool {
        self.cut_to.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
            && self.snapshot.is_none()
    }
}

/// Where a [`ReplicaCore::reconcile`] toward a target replica set stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reconciled {
    /// this replica does not lead: the leader reconciles
    NotLeader,
    /// a membership change is under way, or a learner is catching up
    Moving,
    /// the voters are the target set and there are no learners
    Settled,
}

/// A learner is promoted once its log is this close to the commit index.
const CAUGHT_UP_ENTRIES: u64 = 64;

/// Who leads, as this replica last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// the raft term (= Kafka leader epoch)
    pub term: u64,
    /// the leader's id, if known
    pub leader: Option<u64>,
    /// whether this replica is it
    pub is_leader: bool,
}

/// What the host must do after an input.
#[derive(Debug)]
pub struct Output<T> {
    /// messages to send now (in order, per destination)
    pub send: Vec<RaftMessage>,
    /// a write to make durable
    pub persist: Option<PersistJob>,
    /// proposals answered
    pub acks: Vec<(T, Result<Placed, Refusal>)>,
    /// the high watermark, when it moved
    pub high_watermark: Option<i64>,
    /// the leadership, when it changed
    pub leadership: Option<Leadership>,
}

impl<T> Default for Output<T> {
    fn default() -> Self {
        Self { send: Vec::new(), persist: None, acks: Vec::new(), high_watermark: None, leadership: None }
    }
}

impl<T> Output<T> {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty()
            && self.persist.is_none()
            && self.acks.is_empty()
            && self.high_watermark.is_none()
            && self.leadership.is_none()
    }
}

/// Why the replica could not be built or stepped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// raft-rs refused (bad configuration, or a message for another peer)
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// a message could not take our wire form
    #[error(transparent)]
    Wire(#[from] WireError),
    /// raft-rs handed us entries our log cannot take (a bug)
    #[error(transparent)]
    Log(#[from] AppendError),
    /// a leader sent a snapshot whose data is not a compaction point of ours
    #[error("a snapshot at index {index} holds no Kafka log start")]
    BadSnapshot {
        /// the snapshot's index
        index: u64,
    },
}

struct Ticket<T> {
    term: u64,
    span: BatchSpan,
    ack_on: AckOn,
    ticket: T,
}

/// A `Ready` handed to the host, waiting to be durable.
struct Unpersisted {
    number: u64,
    written: bool,
    /// the last raft index it wrote, if any
    last_index: Option<u64>,
    /// messages raft-rs said must wait for it
    messages: Vec<RaftMessage>,
    /// the index of a snapshot it installs (applied once it is durable)
    snapshot: Option<u64>,
}

/// A replica of one partition: raft-rs plus Kafka offsets, with no I/O of its own.
pub struct ReplicaCore<T> {
    node: RawNode<EntryLog>,
    rng: StdRng,
    /// the (term, role) the election timeout was last drawn for
    drawn_for: (u64, StateRole),
    last_leadership: Option<Leadership>,
    /// the next offset to stamp, valid for the term it was computed in
    next_offset: Option<(u64, i64)>,
    tickets: BTreeMap<u64, Ticket<T>>,
    unpersisted: VecDeque<Unpersisted>,
    /// messages released by a finished write, for the next `ready`
    released: Vec<RaftMessage>,
    /// the last raft index this replica's own writes made durable
    durable_index: u64,
    high_watermark: i64,
    applied: u64,
    preferred_leader: Option<u64>,
    balance_after_ticks: u64,
    /// ticks since this replica last became leader (or since the last hand-over attempt)
    led_ticks: u64,
    /// (term, index) of the empty entry a reconcile proposed once the membership matched its
    /// target: committing it in this term proves the membership is the group's, not a
    /// deposed leader's that has not noticed yet
    settle_probe: Option<(u64, u64)>,
    /// the in-sync replicas, as the leader tracks them
    in_sync: InSync,
    hibernation: Hibernation,
}

/// Hibernation, as TiKV's hibernate regions: an idle group's replicas stop ticking, so that a
/// thousand idle partitions cost next to nothing. A leader that has had nothing to do for
/// `quiet_ticks` (every entry committed, applied and on every replica, each voter heard from lately,
/// no proposal, no membership change or hand-over under way) sends its voters a `Hibernate`
/// notice and sleeps; a follower (or learner) that holds and applied everything the notice names sleeps
/// too. A sleeping replica takes no raft ticks (no heartbeats, no election clock, the ISR
/// frozen) but steps every message: anything but a heartbeat of its term, a proposal or a
/// command wakes it. A sleeping leader repeats its notice every `asleep_notice_ticks`; a
/// sleeping follower that heard nothing from its leader for `asleep_timeout_ticks` wakes and
/// runs for election if it must. Safety never rests on any of this (raft-rs's rules hold
/// whoever ticks); liveness does, so the host wakes every replica when a peer is gone
/// (gossip), and a follower that was not ready for the notice stays awake: when its election
/// clock runs out its pre-vote wakes the leader, who heartbeats it back into line.
#[derive(Debug, Default)]
struct Hibernation {
    quiet_ticks: u64,
    notice_ticks: u64,
    timeout_ticks: u64,
    asleep: bool,
    /// awake: consecutive ticks a leader was quiet
    quiet: u64,
    /// asleep: ticks since the notice went (leader) or the leader was heard (follower)
    since: u64,
}

impl Hibernation {
    fn fall_asleep(&mut self) {
        self.asleep = true;
        self.since = 0;
    }
}

/// A leader's view of which voters keep up (Kafka's ISR): each tick it notes its own last
/// index and which followers raft-rs heard from; a follower is in sync while it was heard
/// from within `lag_ticks` and matches the last index the leader had `lag_ticks` ago. A new
/// leader starts with every voter in sync (Kafka's initial ISR is the replica set).
#[derive(Debug, Default)]
struct InSync {
    lag_ticks: u64,
    ticks: u64,
    /// the term these samples belong to (a new term starts over)
    term: u64,
    /// the leader's last index at each of the latest `lag_ticks` ticks, oldest first
    last_indexes: VecDeque<u64>,
    /// per voter, the tick it was last heard from
    heard: BTreeMap<u64, u64>,
    /// the set computed at the last tick, sorted
    members: Vec<u64>,
}

impl<T> ReplicaCore<T> {
    /// A replica over `log` (a new one from [`EntryLog::new`], or one rebuilt from disk),
    /// with entries up to `applied` already applied.
    pub fn new(options: &ReplicaOptions, log: EntryLog, applied: u64) -> Result<Self, ReplicaError> {
        let applied = applied.min(log.hard_state().commit).min(log.last_index());
        let config = raft::Config {
            id: options.id,
            election_tick: options.election_ticks,
            heartbeat_tick: options.heartbeat_ticks,
            applied,
            max_size_per_msg: options.max_bytes_per_message,
            max_inflight_msgs: options.max_inflight_messages,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        config.validate()?;
        let high_watermark = log.end_offset_at(applied);
        let durable_index = log.last_index();
        let node = RawNode::new(&config, log, &logger::raft_logger(options.id))?;
        let mut core = Self {
            node,
            rng: StdRng::seed_from_u64(options.seed),
            drawn_for: (u64::MAX, StateRole::Follower),
            last_leadership: None,
            next_offset: None,
            tickets: BTreeMap::new(),
            unpersisted: VecDeque::new(),
            released: Vec::new(),
            durable_index,
            high_watermark,
            applied,
            preferred_leader: options.preferred_leader,
            balance_after_ticks: options.balance_after_ticks,
            led_ticks: 0,
            settle_probe: None,
            in_sync: InSync { lag_ticks: options.replica_lag_ticks.max(1), ..InSync::default() },
            hibernation: Hibernation {
                quiet_ticks: options.quiet_ticks,
                notice_ticks: options.asleep_notice_ticks.max(1),
                timeout_ticks: options.asleep_timeout_ticks.max(1),
                ..Hibernation::default()
            },
        };
        core.redraw_election_timeout();
        Ok(core)
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks_elapsed(1);
    }

    /// `ticks` ticks of time passed: a sleeping replica counts them all; an awake one takes
    /// one raft tick (a host ticks an awake replica every tick, and may tick a sleeping one
    /// less often: more than one tick at once is the slow clock from before it woke).
    pub fn ticks_elapsed(&mut self, ticks: u64) {
        if self.hibernation.asleep {
            self.tick_asleep(ticks.max(1));
            return;
        }
        if self.installing() {
            // no election clock until the snapshot is durable (see `installing`)
            return;
        }
        self.node.tick();
        self.redraw_election_timeout();
        self.balance();
        self.track_in_sync();
        self.consider_sleep();
    }

    /// Whether a leader's snapshot is being made durable here. Until it is, this replica must
    /// not campaign: raft-rs takes the snapshot as stable at once but its applied index only
    /// once the host says it is durable, and a campaign in between reads the entries from that
    /// applied index to the snapshot, which the log no longer holds (raft-rs panics; found by a
    /// hibernation seed of the raft property test). So no election clock, and no TimeoutNow,
    /// for the milliseconds of that write.
    fn installing(&self) -> bool {
        self.unpersisted.iter().any(|job| job.snapshot.is_some())
    }

    /// Whether this replica hibernates (see [`Hibernation`]): the host may tick it seldom.
    pub fn asleep(&self) -> bool {
        self.hibernation.asleep
    }

    /// Wakes a sleeping replica (the host does when a peer is gone, so that a follower whose
    /// leader died runs for election and a leader whose follower died notices it).
    pub fn wake(&mut self) {
        let hibernation = &mut self.hibernation;
        hibernation.asleep = false;
        hibernation.quiet = 0;
        hibernation.since = 0;
    }

    fn tick_asleep(&mut self, ticks: u64) {
        let hibernation = &mut self.hibernation;
        hibernation.since += ticks;
        if self.node.raft.state == StateRole::Leader {
            if hibernation.since >= hibernation.notice_ticks {
                hibernation.since = 0;
                self.send_hibernate();
            }
        } else if hibernation.since >= hibernation.timeout_ticks {
            tracing::debug!(id = self.node.raft.id, "asleep and the leader fell silent: awake");
            self.wake();
        }
    }

    /// A leader that was quiet for `quiet_ticks` in a row sleeps.
    fn consider_sleep(&mut self) {
        if self.hibernation.quiet_ticks == 0 {
            return;
        }
        if !self.quiet() {
            self.hibernation.quiet = 0;
            return;
        }
        self.hibernation.quiet += 1;
        if self.hibernation.quiet >= self.hibernation.quiet_ticks {
            self.hibernation.fall_asleep();
            self.send_hibernate();
        }
    }

    /// Whether this replica leads a group with nothing to do.
    fn quiet(&self) -> bool {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader
            || raft.lead_transferee.is_some()
            || raft.has_pending_conf()
            || !self.tickets.is_empty()
            || !self.unpersisted.is_empty()
            || !self.released.is_empty()
        {
            return false;
        }
        let last_index = raft.raft_log.last_index();
        if raft.raft_log.committed != last_index || self.applied != last_index {
            return false;
        }
        let conf = raft.prs().conf();
        // a hand-over to the preferred leader is still to come
        if self.preferred_leader.is_some_and(|preferred| preferred != raft.id && conf.voters().contains(preferred)) {
            return false;
        }
        // every voter and learner holds everything, and every voter was heard from within two
        // election timeouts (check-quorum clears `recent_active` once per election timeout)
        let lately = 2 * raft.election_timeout() as u64;
        let now = self.in_sync.ticks;
        raft.prs().iter().all(|(&peer, progress)| {
            peer == raft.id
                || (progress.matched == last_index
                    && (!conf.voters().contains(peer)
                        || self.in_sync.heard.get(&peer).is_some_and(|&heard| now - heard <= lately)))
        })
    }

    /// Tells every voter and learner this leader sleeps with everything up to its commit
    /// index committed.
    fn send_hibernate(&mut self) {
        let raft = &self.node.raft;
        let (me, term, commit) = (raft.id, raft.term, raft.raft_log.committed);
        for (&peer, _) in raft.prs().iter().filter(|&(&peer, _)| peer != me) {
            self.released.push(RaftMessage::own(RaftMessageKind::Hibernate, me, peer, term, commit));
        }
    }

    /// A leader's notice: a follower that holds and applied all it names sleeps (one that
    /// sleeps already hears that its leader is there).
    fn hibernate_notice(&mut self, notice: &RaftMessage) {
        let raft = &self.node.raft;
        let from_leader = notice.term == raft.term && raft.state != StateRole::Leader && raft.leader_id == notice.from;
        if !from_leader {
            return;
        }
        if self.hibernation.asleep {
            self.hibernation.since = 0;
            return;
        }
        let commit = notice.commit;
        let caught_up = raft.raft_log.committed == commit
            && raft.raft_log.last_index() == commit
            && self.applied == commit
            && self.unpersisted.is_empty()
            && self.released.is_empty();
        if caught_up {
            self.hibernation.fall_asleep();
        }
    }

    /// A message wakes a sleeping replica unless it is a heartbeat (or its answer) of its term.
    fn wake_for(&mut self, message: &RaftMessage) {
        if !self.hibernation.asleep {
            return;
        }
        let routine = matches!(message.kind, RaftMessageKind::Heartbeat | RaftMessageKind::HeartbeatResponse)
            && message.term == self.node.raft.term;
        if !routine {
            self.wake();
        } else if Some(message.from) == self.leader() {
            self.hibernation.since = 0;
        }
    }

    /// The in-sync voters (sorted) while this replica leads; empty otherwise.
    pub fn in_sync(&self) -> &[u64] {
        &self.in_sync.members
    }

    fn track_in_sync(&mut self) {
        let tracker = &mut self.in_sync;
        if !self.node.raft.state.eq(&StateRole::Leader) {
            tracker.members.clear();
            tracker.last_indexes.clear();
            tracker.heard.clear();
            return;
        }
        let raft = &self.node.raft;
        tracker.ticks += 1;
        let now = tracker.ticks;
        if tracker.term != raft.term {
            tracker.term = raft.term;
            tracker.last_indexes.clear();
            tracker.heard.clear();
        }
        let voters = raft.prs().conf().voters();
        for voter in voters.ids().iter() {
            let heard = voter == raft.id || raft.prs().get(voter).is_some_and(|progress| progress.recent_active);
            // a voter new to this term counts as heard now: the initial ISR is every voter
            let entry = tracker.heard.entry(voter).or_insert(now);
            if heard {
                *entry = now;
            }
        }
        tracker.heard.retain(|&voter, _| voters.contains(voter));
        tracker.last_indexes.push_back(raft.raft_log.last_index());
        while tracker.last_indexes.len() as u64 > tracker.lag_ticks {
            tracker.last_indexes.pop_front();
        }
        // what the leader had lag_ticks ago (while the term is younger than that, nothing:
        // every voter starts in sync)
        let behind = if tracker.last_indexes.len() as u64 >= tracker.lag_ticks {
            tracker.last_indexes.front().copied().unwrap_or(0)
        } else {
            0
        };
        let in_sync = |voter: u64| {
            voter == raft.id
                || (now - tracker.heard.get(&voter).copied().unwrap_or(now) <= tracker.lag_ticks
                    && raft.prs().get(voter).is_some_and(|progress| progress.matched >= behind))
        };
        // the set rarely changes: rebuilt (and allocated) only when it does
        let unchanged = tracker.members.iter().all(|&member| voters.contains(member))
            && voters.ids().iter().all(|voter| in_sync(voter) == tracker.members.binary_search(&voter).is_ok());
        if !unchanged {
            let mut members: Vec<u64> = voters.ids().iter().filter(|&voter| in_sync(voter)).collect();
            members.sort_unstable();
            tracker.members = members;
        }
    }

    /// A leader that is not the preferred one hands leadership to it once it has led for
    /// `balance_after_ticks`, and the preferred voter is recently active with every entry
    /// (raft-rs refuses proposals during a transfer, and gives up on one that does not complete
    /// within an election timeout; the next attempt waits the full period again).
    fn balance(&mut self) {
        if !self.is_leader() {
            self.led_ticks = 0;
            return;
        }
        self.led_ticks += 1;
        let Some(preferred) = self.preferred_leader else { return };
        if preferred == self.node.raft.id
            || self.led_ticks < self.balance_after_ticks
            || self.node.raft.lead_transferee.is_some()
        {
            return;
        }
        let last_index = self.node.raft.raft_log.last_index();
        let ready = self
            .node
            .raft
            .prs()
            .get(preferred)
            .is_some_and(|progress| progress.recent_active && progress.matched == last_index)
            && self.node.raft.prs().conf().voters().contains(preferred);
        if ready {
            self.led_ticks = 0;
            self.node.transfer_leader(preferred);
        }
    }

    /// Takes a message from a peer.
    pub fn step(&mut self, message: &RaftMessage) -> Result<(), ReplicaError> {
        if message.kind == RaftMessageKind::Hibernate {
            self.hibernate_notice(message);
            return Ok(());
        }
        self.wake_for(message);
        if message.kind == RaftMessageKind::TimeoutNow && self.installing() {
            // the leader's hand-over fails; it tries again later
            return Ok(());
        }
        let mut raft_message = message.to_raft()?;
        if message.kind == RaftMessageKind::Heartbeat {
            // a leader's heartbeat carries min(what it believes this follower holds, its
            // commit). A follower that lost entries it had acknowledged (a power loss under
            // `storage.fsync = "interval:…"`) holds less than that, and raft-rs would panic
            // committing past its log; committed up to what it holds, it answers, the leader's
            // next append is refused at the gap, and the leader sends the entries again. What
            // it kept is a prefix of the leader's log: a truncation is always synced.
            raft_message.commit = raft_message.commit.min(self.node.raft.raft_log.last_index());
        }
        let stepped = self.node.step(raft_message);
        self.redraw_election_timeout();
        match stepped {
            // a message from a peer this replica no longer knows, or stale: not an error of ours
            Err(raft::Error::StepPeerNotFound | raft::Error::StepLocalMsg) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Whether this replica is its group's only voter: it need not wait an election timeout
    /// to lead (nobody else can), so it campaigns as it starts.
    pub fn sole_voter(&self) -> bool {
        self.node.store().conf_state().voters == [self.node.raft.id]
    }

    /// Starts an election now (used to hand leadership over, and by tests).
    pub fn campaign(&mut self) -> Result<(), ReplicaError> {
        self.wake();
        if self.installing() {
            return Ok(());
        }
        self.node.campaign()?;
        self.redraw_election_timeout();
        Ok(())
    }

    /// Proposes adding `node` as a learner: it receives the log but does not vote, so it can
    /// catch up before it is made a voter (raft takes one membership change at a time).
    pub fn add_learner(&mut self, node: u64) -> Result<(), Refusal> {
        let conf = self.node.store().conf_state();
        if conf.voters.contains(&node) || conf.learners.contains(&node) {
            return if self.is_leader() { Ok(()) } else { Err(Refusal::NotLeader { leader: self.leader() }) };
        }
        self.change_membership(raft::eraftpb::ConfChangeType::AddLearnerNode, node)
    }

    /// Proposes removing `node` (voter or learner) from the group.
    pub fn remove(&mut self, node: u64) -> Result<(), Refusal> {
        self.change_membership(raft::eraftpb::ConfChangeType::RemoveNode, node)
    }

    /// The leader takes one step toward voters `target` (the replica set the controller
    /// records, the first its preferred leader), one membership change at a time as raft
    /// requires, in an order that never shrinks redundancy first: nodes of the target join as
    /// learners; a learner is promoted once caught up with the commit index; then learners and
    /// voters outside the target are removed. A leader outside the target first hands
    /// leadership to a caught-up voter of it.
    pub fn reconcile(&mut self, target: &[u64]) -> Reconciled {
        self.wake();
        if !self.is_leader() {
            return Reconciled::NotLeader;
        }
        self.preferred_leader = target.first().copied();
        if target.is_empty() || self.node.raft.has_pending_conf() || self.node.raft.lead_transferee.is_some() {
            return Reconciled::Moving;
        }
        let (voters, learners) = self.membership();
        let committed = self.node.raft.raft_log.committed;
        let matched = |core: &Self, node: u64| core.node.raft.prs().get(node).map_or(0, |progress| progress.matched);
        for &node in target {
            if !voters.contains(&node) && !learners.contains(&node) {
                let _ = self.add_learner(node);
                return Reconciled::Moving;
            }
        }
        for &node in target {
            if learners.contains(&node) {
                if matched(self, node) + CAUGHT_UP_ENTRIES >= committed {
                    let _ = self.promote(node);
                }
                return Reconciled::Moving;
            }
        }
        if let Some(&node) = learners.iter().find(|node| !target.contains(node)) {
            let _ = self.remove(node);
            return Reconciled::Moving;
        }
        let me = self.node.raft.id;
        if let Some(&node) = voters.iter().find(|node| **node != me && !target.contains(node)) {
            let _ = self.remove(node);
            return Reconciled::Moving;
        }
        if !target.contains(&me) {
            let last_index = self.node.raft.raft_log.last_index();
            let heir = target.iter().copied().find(|&node| matched(self, node) == last_index);
            if let Some(heir) = heir {
                self.led_ticks = 0;
                self.node.transfer_leader(heir);
            }
            return Reconciled::Moving;
        }
        // the membership is the target as this leader sees it; it is settled once an entry
        // of this term after it commits (a leader cut off and deposed never gets there)
        let term = self.term();
        match self.settle_probe {
            Some((probe_term, index)) if probe_term == term && self.commit_index() >= index => Reconciled::Settled,
            Some((probe_term, _)) if probe_term == term => Reconciled::Moving,
            _ => {
                if self.node.propose(Vec::new(), Vec::new()).is_ok() {
                    self.settle_probe = Some((term, self.node.raft.raft_log.last_index()));
                }
                Reconciled::Moving
            }
        }
    }

    /// Proposes making the learner `node` a voter.
    pub fn promote(&mut self, node: u64) -> Result<(), Refusal> {
        let conf = self.node.store().conf_state();
        if conf.voters.contains(&node) {
            return if self.is_leader() { Ok(()) } else { Err(Refusal::NotLeader { leader: self.leader() }) };
        }
        if !conf.learners.contains(&node) {
            return Err(Refusal::ChangePending);
        }
        self.change_membership(raft::eraftpb::ConfChangeType::AddNode, node)
    }

    fn change_membership(&mut self, kind: raft::eraftpb::ConfChangeType, node: u64) -> Result<(), Refusal> {
        self.wake();
        if !self.is_leader() {
            return Err(Refusal::NotLeader { leader: self.leader() });
        }
        self.settle_probe = None;
        if self.node.raft.has_pending_conf() {
            return Err(Refusal::ChangePending);
        }
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        self.node.propose_conf_change(Vec::new(), change).map_err(|_| Refusal::ChangePending)
    }

    /// The voters and learners applied so far.
    pub fn membership(&self) -> (Vec<u64>, Vec<u64>) {
        let conf = self.node.store().conf_state();
        (conf.voters.clone(), conf.learners.clone())
    }

    /// Asks raft-rs to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.wake();
        self.node.transfer_leader(to);
    }

    /// Proposes one RecordBatch: stamps it with the next offset and this term, and appends it
    /// to the leader's log. `ticket` comes back in [`Output::acks`] when `ack_on` holds, or
    /// with a [`Refusal`] when it never will.
    pub fn propose(&mut self, batch: &[u8], ack_on: AckOn, ticket: T) -> Result<Placed, (T, Refusal)> {
        if !self.is_leader() || self.node.raft.lead_transferee.is_some() {
            return Err((ticket, Refusal::NotLeader { leader: self.leader() }));
        }
        match tidewater_storage::validate_batch(batch) {
            Ok(header) => self.propose_validated(batch, &header, ack_on, ticket),
            Err(_) => Err((ticket, Refusal::InvalidBatch)),
        }
    }

    /// [`ReplicaCore::propose`] of a batch the caller has validated already (`header` is what
    /// `validate_batch` returned for it), so that its CRC is not computed twice.
    pub fn propose_validated(
        &mut self,
        batch: &[u8],
        header: &tidewater_storage::BatchHeader,
        ack_on: AckOn,
        ticket: T,
    ) -> Result<Placed, (T, Refusal)> {
        if !self.is_leader() || self.node.raft.lead_transferee.is_some() {
            return Err((ticket, Refusal::NotLeader { leader: self.leader() }));
        }
        self.wake();
        let term = self.node.raft.term;
        let base_offset = self.next_offset(term);
        let last_offset = base_offset + i64::from(header.last_offset_delta);
        let mut data = batch.to_vec();
        tidewater_storage::patch_for_append(&mut data, base_offset, term as i32);
        if self.node.propose(Vec::new(), data).is_err() {
            return Err((ticket, Refusal::NotLeader { leader: self.leader() }));
        }
        let index = self.node.raft.raft_log.last_index();
        self.next_offset = Some((term, last_offset + 1));
        let span = BatchSpan { base_offset, last_offset };
        self.tickets.insert(index, Ticket { term, span, ack_on, ticket });
        Ok(Placed { index, base_offset, last_offset, leader_epoch: term as i32, duplicate: false })
    }

    /// Reports that the job of `Ready` `number` (and every one before it) is durable.
    pub fn persisted(&mut self, number: u64) {
        while let Some(front) = self.unpersisted.front() {
            if front.number > number && front.written {
                break;
            }
            let done = self.unpersisted.pop_front().expect("front exists");
            if let Some(index) = done.last_index {
                self.durable_index = self.durable_index.max(index);
            }
            self.released.extend(done.messages);
            self.node.on_persist_ready(done.number);
            if let Some(index) = done.snapshot {
                // a durable snapshot is applied: raft-rs may apply what follows it
                self.node.advance_apply_to(index);
            }
        }
    }

    /// The work to do after any input; call until it returns `None`.
    pub fn ready(&mut self) -> Result<Option<Output<T>>, ReplicaError> {
        let mut out = Output { send: std::mem::take(&mut self.released), ..Output::default() };
        self.ack_leader_appends(&mut out);
        if self.node.has_ready() {
            self.handle_ready(&mut out)?;
        }
        let leadership = self.leadership();
        if self.last_leadership != Some(leadership) {
            self.last_leadership = Some(leadership);
            out.leadership = Some(leadership);
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    fn handle_ready(&mut self, out: &mut Output<T>) -> Result<(), ReplicaError> {
        let mut ready = self.node.ready();
        for message in ready.take_messages() {
            out.send.push(RaftMessage::from_raft(&message)?);
        }
        let mut job = PersistJob {
            number: ready.number(),
            must_sync: ready.must_sync(),
            applied: self.applied,
            ..PersistJob::default()
        };
        if !ready.snapshot().is_empty() {
            self.install(ready.snapshot(), &mut job, out)?;
        }
        let entries = ready.take_entries();
        if let Some(first) = entries.first() {
            job.cut_to = self.node.mut_store().append(&entries)?;
            // proposals whose entries were just replaced by another term's can never commit
            let log = self.node.store();
            let replaced: Vec<u64> = self
                .tickets
                .range(first.index..)
                .filter(|&(&index, ticket)| log.term_at(index) != Some(ticket.term))
                .map(|(&index, _)| index)
                .collect();
            for index in replaced {
                if let Some(ticket) = self.tickets.remove(&index) {
                    out.acks.push((ticket.ticket, Err(Refusal::Superseded)));
                }
            }
        }
        let last_index = entries.last().map(|entry| entry.index);
        job.entries = entries;
        if let Some(hard_state) = ready.hs() {
            self.node.mut_store().set_hard_state(hard_state.clone());
            job.hard_state = Some(hard_state.clone());
        }
        let committed = ready.take_committed_entries();
        let persisted_messages =
            ready.take_persisted_messages().iter().map(RaftMessage::from_raft).collect::<Result<Vec<_>, _>>()?;
        let snapshot = job.snapshot.as_ref().map(|snapshot| snapshot.index);
        self.node.advance_append_async(ready);
        // our snapshots are a few bytes of metadata, sent whole in one message: handing one
        // to the link is reporting it done (if it was lost, the follower's next answer shows
        // it still behind the compaction point, and the leader sends another)
        for message in out.send.iter().filter(|message| message.kind == super::wire::RaftMessageKind::Snapshot) {
            self.node.report_snapshot(message.to, raft::SnapshotStatus::Finish);
        }
        self.apply(committed, &mut job, out)?;
        let written = !job.is_empty();
        if !written && self.unpersisted.is_empty() {
            // nothing to wait for: it is as durable as everything before it
            self.node.on_persist_ready(job.number);
            out.send.extend(persisted_messages);
        } else {
            self.unpersisted.push_back(Unpersisted {
                number: job.number,
                written,
                last_index: last_index.or(snapshot),
                messages: persisted_messages,
                snapshot,
            });
            if written {
                out.persist = Some(job);
            }
        }
        Ok(())
    }

    /// Applies committed entries: conf changes, the high watermark, acknowledgements.
    fn apply(&mut self, committed: Vec<Entry>, job: &mut PersistJob, out: &mut Output<T>) -> Result<(), ReplicaError> {
        let Some(last) = committed.last().map(|entry| entry.index) else {
            return Ok(());
        };
        for entry in &committed {
            if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                let change = ConfChangeV2::parse_from_bytes(&entry.data)
                    .map_err(|_| WireError::BadConfChange { index: entry.index })?;
                let conf_state = self.node.apply_conf_change(&change)?;
                self.node.mut_store().set_conf_state(conf_state.clone());
                job.conf_state = Some(conf_state);
            } else if let Some(span) = batch_span(entry) {
                self.high_watermark = span.last_offset + 1;
                out.high_watermark = Some(self.high_watermark);
            }
            // anything proposed before this entry and still waiting lost its place
            while let Some(waiting) = self.tickets.first_entry().filter(|waiting| *waiting.key() < entry.index) {
                out.acks.push((waiting.remove().ticket, Err(Refusal::Superseded)));
            }
            if let Some(ticket) = self.tickets.remove(&entry.index) {
                let answer = if ticket.term == entry.term {
                    Ok(placed(entry.index, ticket.span, ticket.term))
                } else {
                    Err(Refusal::Superseded)
                };
                out.acks.push((ticket.ticket, answer));
            }
        }
        self.applied = last;
        job.applied = last;
        self.node.advance_apply_to(last);
        // applied entries are durable in the log store: their bytes need not stay in memory
        self.node.mut_store().evict_applied(last);
        Ok(())
    }

    /// Installs a leader's snapshot (this follower was behind the leader's compaction point):
    /// the log restarts empty at the snapshot's point, readable by raft-rs before the job is
    /// durable, as asynchronous persistence requires; the journal makes it so (see
    /// [`PersistJob::snapshot`]). Everything from before is gone, proposals waiting included.
    fn install(
        &mut self,
        snapshot: &raft::eraftpb::Snapshot,
        job: &mut PersistJob,
        out: &mut Output<T>,
    ) -> Result<(), ReplicaError> {
        let metadata = snapshot.get_metadata();
        let index = metadata.index;
        let end_offset = snapshot_offset(&snapshot.data).ok_or(ReplicaError::BadSnapshot { index })?;
        let conf_state = metadata.get_conf_state().clone();
        self.node.mut_store().install(index, metadata.term, end_offset, conf_state.clone());
        for (_, ticket) in std::mem::take(&mut self.tickets) {
            out.acks.push((ticket.ticket, Err(Refusal::Superseded)));
        }
        self.next_offset = None;
        self.applied = index;
        self.durable_index = index;
        if end_offset > self.high_watermark {
            self.high_watermark = end_offset;
            out.high_watermark = Some(end_offset);
        }
        job.applied = index;
        job.conf_state = Some(conf_state.clone());
        job.snapshot = Some(Compaction { index, term: metadata.term, end_offset, conf_state, next_batch: None });
        job.must_sync = true;
        Ok(())
    }

    /// Retention: drops from the raft log what lies below `keep_from` (a Kafka offset), as
    /// far as applied entries allow. The host records the returned compaction point and then
    /// removes the batches below its offset from the log store; `None` when nothing can go.
    pub fn compact(&mut self, keep_from: i64) -> Option<Compaction> {
        let index = self.node.store().compaction_point(keep_from, self.applied)?;
        self.node.mut_store().compact(index)
    }

    /// `acks=1`: proposals of this term whose entry the leader's own write made durable.
    fn ack_leader_appends(&mut self, out: &mut Output<T>) {
        let durable: Vec<u64> = self
            .tickets
            .range(..=self.durable_index)
            .filter(|&(&index, ticket)| {
                ticket.ack_on == AckOn::LeaderAppend && self.node.store().term_at(index) == Some(ticket.term)
            })
            .map(|(&index, _)| index)
            .collect();
        for index in durable {
            if let Some(ticket) = self.tickets.remove(&index) {
                out.acks.push((ticket.ticket, Ok(placed(index, ticket.span, ticket.term))));
            }
        }
    }

    /// Refuses every proposal still waiting (the replica is stopping or was removed).
    pub fn refuse_waiting(&mut self) -> Vec<(T, Refusal)> {
        std::mem::take(&mut self.tickets).into_values().map(|ticket| (ticket.ticket, Refusal::Stopped)).collect()
    }

    /// The next Kafka offset to stamp in `term`: after the last data entry of this leader's
    /// whole log, stable or not.
    fn next_offset(&mut self, term: u64) -> i64 {
        if let Some((known_term, next)) = self.next_offset
            && known_term == term
        {
            return next;
        }
        let raft_log = &self.node.raft.raft_log;
        let unstable = raft_log.unstable_entries();
        let from_unstable = unstable.iter().rev().find_map(batch_span).map(|span| span.last_offset + 1);
        let next = from_unstable.unwrap_or_else(|| {
            let stable_last = match unstable.first() {
                Some(first) => first.index - 1,
                None => raft_log.last_index(),
            };
            self.node.store().end_offset_at(stable_last)
        });
        self.next_offset = Some((term, next));
        next
    }

    /// Draws a new election timeout from the seeded generator whenever raft-rs has drawn one
    /// from `thread_rng` (on every change of term or role).
    fn redraw_election_timeout(&mut self) {
        let now = (self.node.raft.term, self.node.raft.state);
        if now == self.drawn_for {
            return;
        }
        self.drawn_for = now;
        let low = self.node.raft.election_timeout();
        let timeout = self.rng.random_range(low..2 * low);
        self.node.raft.set_randomized_election_timeout(timeout);
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<u64> {
        match self.node.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    /// The current term (= the Kafka leader epoch).
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Who leads, as this replica sees it.
    pub fn leadership(&self) -> Leadership {
        Leadership { term: self.term(), leader: self.leader(), is_leader: self.is_leader() }
    }

    /// The end of the last committed (and applied) data entry: what consumers may read.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The last raft index applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The replica's raft log view.
    pub fn log(&self) -> &EntryLog {
        self.node.store()
    }

    /// The raft commit index.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// Proposals waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.tickets.len()
    }
}

fn placed(index: u64, span: BatchSpan, term: u64) -> Placed {
    Placed {
        index,
        base_offset: span.base_offset,
        last_offset: span.last_offset,
        leader_epoch: term as i32,
        duplicate: false,
    }
}
