//! The writer of a replicated partition: the same [`PartitionMsg`] interface as the
//! single-node [`PartitionReplica`](super::partition::PartitionReplica), in front of this
//! node's raft replica of the partition (a `RaftReplica` of `tidewater-cluster`).
//!
//! MQTT records are group-committed as on a single node (one RecordBatch per run of the
//! mailbox) and proposed to be acknowledged on commit: a PUBACK for a record in a replicated
//! stream means a majority of its replicas holds it. A device may be connected to any node,
//! so MQTT batches go to whichever node's replica leads, over the data plane (a
//! [`Forwarder`]): to the leader this node's replica knows, else the last leader that
//! answered, else round the replica set, following each refusal's leader hint, until placed
//! or a bounded wait passed (a proposal whose answer was lost is tried again, so a QoS 1
//! record may land twice, as QoS 1 allows). Kafka batches are proposed as sent; the
//! raft replica checks idempotent producers' sequences, stamps offsets and the leader epoch,
//! and answers `acks=all` on commit and `acks=1` on the leader's own write. A node that does
//! not hold the partition, or whose replica does not lead, refuses with the leader it knows,
//! so a Kafka client refreshes its metadata and goes there.
//!
//! The actor never waits for raft: each proposal's answer is awaited by a small task that
//! translates it for the publisher. Two MQTT batches in flight through a leader change may
//! land in the other order (each is acknowledged where it landed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tidewater_cluster::data_plane::GroupId;
use tidewater_cluster::data_plane::forward::{Answer, Forwarder, submit_locally};
use tidewater_cluster::raft::group::RaftReplicaMsg;
use tidewater_cluster::raft::{AckOn, Leadership, Placed, Refusal};
use tokio::sync::watch;

use super::partition::{Acks, MqttPending, PartitionMsg, ProduceError, Produced, notify_sessions};
use tidewater_storage::PartitionId;

/// This node's part in a replicated partition.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    /// the replica set from the controller; the first is the preferred leader
    pub replicas: Vec<u64>,
    /// whether the partition's raft group has reached that set (false while it moves)
    pub settled: bool,
    /// who leads, as this node's replica sees it (`None` until it knows; always `None` when
    /// this node holds no replica)
    pub leadership: watch::Receiver<Option<Leadership>>,
    /// this node's replica, if it holds one
    pub raft: Option<ActorRef<RaftReplicaMsg>>,
    /// the in-sync replicas (Kafka's ISR) as the leader tracks them: from this node's replica
    /// while it leads, else as the leader last reported them to the controller; empty until known
    pub in_sync: watch::Receiver<Vec<u64>>,
}

impl ReplicaView {
    /// The ISR clients are told of: the leader's, or every replica until one is known.
    pub fn in_sync_replicas(&self) -> Vec<u64> {
        let known = self.in_sync.borrow();
        if known.is_empty() { self.replicas.clone() } else { known.clone() }
    }

    /// While this node's replica leads with fewer than a majority of the replicas in sync
    /// (Kafka's ISR, as its tracker has seen them for `kafka.replica_lag_time_max_ms`): how
    /// many are, of how many. An `acks=all` write could not commit (the effective
    /// `min.insync.replicas` is a majority).
    pub fn too_few_in_sync(&self) -> Option<(usize, usize)> {
        if !self.is_leader() {
            return None;
        }
        let in_sync = self.in_sync.borrow().len();
        let replicas = self.replicas.len();
        (in_sync > 0 && in_sync < replicas / 2 + 1).then_some((in_sync, replicas))
    }

    /// The leader and its epoch, if known.
    pub fn leader(&self) -> Option<(u64, u64)> {
        let leadership = (*self.leadership.borrow())?;
        Some((leadership.leader?, leadership.term))
    }

    /// Whether this node's replica leads.
    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_some_and(|leadership| leadership.is_leader)
    }
}

/// Spawn arguments.
pub struct ReplicatedArgs {
    /// which partition
    pub id: PartitionId,
    /// its replica set, this node's view of the leader, and its replica if it holds one
    pub view: ReplicaView,
    /// proposals to the leader's node
    pub forwarder: Arc<Forwarder>,
    /// record batches are cut at about this many bytes
    pub max_batch_bytes: usize,
    /// the node's span
    pub span: tracing::Span,
}

/// The writer actor of a replicated partition.
pub struct ReplicatedPartition;

/// Its state.
pub struct ReplicatedState {
    id: PartitionId,
    max_batch_bytes: usize,
    span: tracing::Span,
    pending: MqttPending,
    /// where MQTT batches go
    route: Arc<Route>,
}

/// Where an MQTT batch is proposed: the leader as best known.
struct Route {
    group: GroupId,
    view: ReplicaView,
    forwarder: Arc<Forwarder>,
    /// the node whose replica last accepted a batch or was named leader (0: none)
    hint: AtomicU64,
}

/// How long one MQTT batch is tried before its PUBACKs are withheld (an election takes about
/// a second; a node that died is noticed in about two).
const MQTT_PLACE_WITHIN: Duration = Duration::from_secs(10);
/// The pause after a refusal that names no other leader grows by this much, up to
/// [`MQTT_RETRY_PAUSE_MAX`].
const MQTT_RETRY_PAUSE: Duration = Duration::from_millis(100);
const MQTT_RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

impl Route {
    /// The node to try on `attempt`: the leader this node's replica follows, else the last
    /// leader heard of, else round the replica set.
    fn target(&self, attempt: u32) -> u64 {
        if let Some((leader, _)) = self.view.leader() {
            return leader;
        }
        let hint = self.hint.load(Ordering::Relaxed);
        let replicas = &self.view.replicas;
        if hint != 0 || replicas.is_empty() {
            return hint;
        }
        replicas[attempt as usize % replicas.len()]
    }

    /// Sends `batch` to `target`'s replica now: this node's own directly, another's through
    /// the forwarder.
    fn submit(&self, target: u64, batch: Bytes) -> Answer {
        match &self.view.raft {
            Some(raft) if target == self.forwarder.local_node() => {
                self.forwarder.submit_local(raft, batch, AckOn::Commit)
            }
            _ => self.forwarder.submit(target, self.group.clone(), batch, AckOn::Commit),
        }
    }

    /// Places `batch` on the leader's node until it is placed or [`MQTT_PLACE_WITHIN`]
    /// passed. The first attempt is sent before this returns (from the actor, so that batches
    /// reach the leader in the order they were cut); the future follows the refusals. One
    /// naming another leader redirects at once; any other pauses a little. An answer that
    /// never came is tried again too: QoS 1 is at least once, so a record may then be in the
    /// stream twice, never missing after its PUBACK.
    fn place(self: Arc<Self>, batch: Bytes) -> impl std::future::Future<Output = Result<Placed, Refusal>> + Send {
        let mut target = self.target(0);
        let mut answer = self.submit(target, batch.clone());
        async move {
            let deadline = tokio::time::Instant::now() + MQTT_PLACE_WITHIN;
            let mut attempt = 0u32;
            loop {
                let refusal = match answer.await {
                    Ok(placed) => {
                        self.hint.store(target, Ordering::Relaxed);
                        return Ok(placed);
                    }
                    Err(refusal) => refusal,
                };
                if matches!(refusal, Refusal::InvalidBatch | Refusal::OutOfOrderSequence | Refusal::ProducerFenced)
                    || tokio::time::Instant::now() >= deadline
                {
                    return Err(refusal);
                }
                attempt += 1;
                match refusal {
                    Refusal::NotLeader { leader: Some(leader) } if leader != target => {
                        self.hint.store(leader, Ordering::Relaxed);
                    }
                    _ => {
                        self.hint.store(0, Ordering::Relaxed);
                        tokio::time::sleep((MQTT_RETRY_PAUSE * attempt).min(MQTT_RETRY_PAUSE_MAX)).await;
                    }
                }
                target = self.target(attempt);
                answer = self.submit(target, batch.clone());
            }
        }
    }
}

impl Actor for ReplicatedPartition {
    type Msg = PartitionMsg;
    type State = ReplicatedState;
    type Arguments = ReplicatedArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PartitionMsg>,
        args: ReplicatedArgs,
    ) -> Result<ReplicatedState, ActorProcessingErr> {
        let route = Arc::new(Route {
            group: GroupId::Partition { stream: args.id.stream.clone(), partition: args.id.partition as i32 },
            view: args.view,
            forwarder: args.forwarder,
            hint: AtomicU64::new(0),
        });
        Ok(ReplicatedState {
            id: args.id,
            max_batch_bytes: args.max_batch_bytes,
            span: args.span,
            pending: MqttPending::default(),
            route,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionMsg>,
        message: PartitionMsg,
        state: &mut ReplicatedState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        let _entered = span.enter(); // the handler does not await
        match message {
            PartitionMsg::AppendMqtt(record, notice) => state.pending.push(record, notice, &myself),
            PartitionMsg::Flush => state.flush(),
            PartitionMsg::AppendBatch(batch, acks, reply) => {
                state.flush();
                if acks == Acks::All
                    && let Some((in_sync, replicas)) = state.route.view.too_few_in_sync()
                {
                    // as Kafka's min.insync.replicas: a majority cannot hold it, so the
                    // producer hears so now rather than after its timeout
                    let _ = reply.send(Err(ProduceError::NotEnoughReplicas(in_sync, replicas)));
                    return Ok(());
                }
                let ack_on = match acks {
                    Acks::All => AckOn::Commit,
                    Acks::Leader => AckOn::LeaderAppend,
                };
                state.propose(batch, ack_on, move |answer| {
                    let _ = reply.send(
                        answer.map(|placed| Produced { base_offset: placed.base_offset, duplicate: placed.duplicate }),
                    );
                });
            }
            // each replica applies retention to its own log, as far as it has applied (a
            // follower behind the leader's point gets a snapshot of it)
            PartitionMsg::ApplyRetention { now_ms, retention } => {
                if let Some(raft) = &state.route.view.raft {
                    let _ = raft.cast(RaftReplicaMsg::Retain { now_ms, retention });
                }
            }
            PartitionMsg::Written => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<PartitionMsg>,
        state: &mut ReplicatedState,
    ) -> Result<(), ActorProcessingErr> {
        state.flush();
        Ok(())
    }
}

impl ReplicatedState {
    fn flush(&mut self) {
        for (batch, _, notices) in self.pending.batches(self.max_batch_bytes) {
            let stream = self.id.clone();
            let placing = Arc::clone(&self.route).place(batch);
            tokio::spawn(async move {
                let answer = placing.await;
                if let Err(error) = &answer {
                    tracing::debug!(stream = %stream.stream, partition = stream.partition, %error, "mqtt records not committed");
                }
                notify_sessions(&notices, answer.is_ok());
            });
        }
    }

    /// Proposes `batch` to this node's replica and hands the translated answer to `answered`
    /// (from a task: the actor goes on at once).
    fn propose(
        &self,
        batch: bytes::Bytes,
        ack_on: AckOn,
        answered: impl FnOnce(Result<Placed, ProduceError>) + Send + 'static,
    ) {
        let Some(raft) = &self.route.view.raft else {
            answered(Err(ProduceError::NotLeader(None)));
            return;
        };
        // sent now, in the order the actor takes batches (an idempotent producer's sequences)
        let answer = submit_locally(raft, batch, ack_on);
        tokio::spawn(async move { answered(answer.await.map_err(refused)) });
    }
}

/// What a raft refusal means to a publisher.
fn refused(refusal: Refusal) -> ProduceError {
    match refusal {
        Refusal::NotLeader { leader } => ProduceError::NotLeader(leader),
        Refusal::InvalidBatch => ProduceError::Corrupt("not one record batch".into()),
        Refusal::OutOfOrderSequence => ProduceError::OutOfOrderSequence,
        Refusal::ProducerFenced => ProduceError::InvalidProducerEpoch,
        Refusal::Superseded
        | Refusal::Stopped
        | Refusal::NotReady
        | Refusal::ChangePending
        | Refusal::Unanswered
        | Refusal::Unreachable => ProduceError::LeaderNotAvailable(refusal.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::call_t;
    use tidewater_cluster::data_plane::{LinkOptions, PeerLinks};
    use tidewater_cluster::raft::group::GroupRouter;
    use tidewater_cluster::seams::TokioNet;
    use tidewater_storage::{NewRecord, build_record_batch};

    fn batch() -> Bytes {
        build_record_batch(&[NewRecord { key: None, value: Some(b"v"), headers: &[], timestamp_ms: 1 }], 1)
    }

    #[tokio::test]
    async fn acks_all_is_refused_while_fewer_than_a_majority_are_in_sync() {
        // this node leads a partition of three replicas (its raft replica is left out: a
        // batch that passes the check is answered NotLeader(None) by the missing replica)
        let (_leads, leadership) = watch::channel(Some(Leadership { term: 4, leader: Some(1), is_leader: true }));
        let (in_sync_sender, in_sync) = watch::channel(vec![1]);
        let view = ReplicaView { replicas: vec![1, 2, 3], settled: true, leadership, raft: None, in_sync };
        let links = PeerLinks::new(1, "c".into(), Arc::new(TokioNet), LinkOptions::default());
        let forwarder = Forwarder::new(1, links, Arc::new(GroupRouter::default()), Duration::from_secs(1));
        let id = PartitionId { stream: "s".into(), partition: 0 };
        let args = ReplicatedArgs { id, view, forwarder, max_batch_bytes: 1 << 20, span: tracing::Span::none() };
        let (partition, _) = Actor::spawn(None, ReplicatedPartition, args).await.unwrap();
        let append = async |acks| call_t!(partition, PartitionMsg::AppendBatch, 1_000, batch(), acks).unwrap();
        let answer = append(Acks::All).await;
        assert!(matches!(answer, Err(ProduceError::NotEnoughReplicas(1, 3))), "{answer:?}");
        // acks=1 does not wait for the others: it goes to the replica
        let answer = append(Acks::Leader).await;
        assert!(matches!(answer, Err(ProduceError::NotLeader(None))), "{answer:?}");
        // two of three in sync are a majority
        in_sync_sender.send_replace(vec![1, 3]);
        let answer = append(Acks::All).await;
        assert!(matches!(answer, Err(ProduceError::NotLeader(None))), "{answer:?}");
        partition.stop(None);
    }
}
