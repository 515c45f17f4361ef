//! The writer of a replicated partition: the same [`PartitionMsg`] interface as the
//! single-node [`PartitionReplica`](super::partition::PartitionReplica), in front of this
//! node's raft replica of the partition (a `RaftReplica` of `tidewater-cluster`).
//!
//! MQTT records are group-committed as on a single node (one RecordBatch per run of the
//! mailbox) and proposed to be acknowledged on commit: a PUBACK for a record in a replicated
//! stream means a majority of its replicas holds it. Kafka batches are proposed as sent; the
//! raft replica checks idempotent producers' sequences, stamps offsets and the leader epoch,
//! and answers `acks=all` on commit and `acks=1` on the leader's own write. A node that does
//! not hold the partition, or whose replica does not lead, refuses with the leader it knows,
//! so a Kafka client refreshes its metadata and goes there.
//!
//! The actor never waits for raft: each proposal's answer is awaited by a small task that
//! translates it for the publisher.

use ractor::{Actor, ActorProcessingErr, ActorRef};
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
    /// who leads, as this node's replica sees it (`None` until it knows; always `None` when
    /// this node holds no replica)
    pub leadership: watch::Receiver<Option<Leadership>>,
    /// this node's replica, if it holds one
    pub raft: Option<ActorRef<RaftReplicaMsg>>,
}

impl ReplicaView {
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
    /// this node's replica of it, if any
    pub raft: Option<ActorRef<RaftReplicaMsg>>,
    /// record batches are cut at about this many bytes
    pub max_batch_bytes: usize,
    /// the node's span
    pub span: tracing::Span,
}

/// The writer actor of a replicated partition.
pub struct ReplicatedPartition;

/// Its state.
pub struct ReplicatedState {
    args: ReplicatedArgs,
    pending: MqttPending,
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
        Ok(ReplicatedState { args, pending: MqttPending::default() })
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionMsg>,
        message: PartitionMsg,
        state: &mut ReplicatedState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.args.span.clone();
        let _entered = span.enter(); // the handler does not await
        match message {
            PartitionMsg::AppendMqtt(record, notice) => state.pending.push(record, notice, &myself),
            PartitionMsg::Flush => state.flush(),
            PartitionMsg::AppendBatch(batch, acks, reply) => {
                state.flush();
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
            // retention of a replicated log needs raft snapshots (a follower that is behind
            // would otherwise ask for entries that are gone): not yet
            PartitionMsg::Written | PartitionMsg::ApplyRetention { .. } => {}
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
        for (batch, _, notices) in self.pending.batches(self.args.max_batch_bytes) {
            let stream = self.args.id.clone();
            self.propose(batch, AckOn::Commit, move |answer| {
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
        let Some(raft) = &self.args.raft else {
            answered(Err(ProduceError::NotLeader(None)));
            return;
        };
        let (reply, answer) = ractor::concurrency::oneshot();
        if raft.cast(RaftReplicaMsg::Propose { batch, ack_on, reply: reply.into() }).is_err() {
            answered(Err(ProduceError::LeaderNotAvailable("this node's replica is not running".into())));
            return;
        }
        tokio::spawn(async move {
            let answer = match answer.await {
                Ok(Ok(placed)) => Ok(placed),
                Ok(Err(refusal)) => Err(refused(refusal)),
                Err(_) => Err(ProduceError::LeaderNotAvailable("the replica stopped".into())),
            };
            answered(answer);
        });
    }
}

/// What a raft refusal means to a publisher.
fn refused(refusal: Refusal) -> ProduceError {
    match refusal {
        Refusal::NotLeader { leader } => ProduceError::NotLeader(leader),
        Refusal::InvalidBatch => ProduceError::Corrupt("not one record batch".into()),
        Refusal::OutOfOrderSequence => ProduceError::OutOfOrderSequence,
        Refusal::ProducerFenced => ProduceError::InvalidProducerEpoch,
        Refusal::Superseded | Refusal::Stopped | Refusal::NotReady | Refusal::ChangePending => {
            ProduceError::LeaderNotAvailable(refusal.to_string())
        }
    }
}
