//! The controller group on this node: a raft replica of the cluster's metadata log, the loop
//! that applies what it commits, and (on the leader) the registration of live nodes.
//!
//! The metadata log is a partition like any other (`@controller-0`; `@` cannot appear in a
//! Kafka topic name, so no stream can take it) whose batches hold
//! [`MetadataCommand`]s. Every voter applies the committed commands in order to its own
//! [`ClusterMetadata`]. Nodes outside `cluster.voters` hold a replica too: the leader adds
//! each registered node that is not a voter as a raft learner, which receives the log and
//! applies it but never votes.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tidewater_cluster::controller::{ClusterMetadata, MetadataCommand, decode_commands, encode_command};
use tidewater_cluster::data_plane::{GroupId, PeerLinks};
use tidewater_cluster::membership::Members;
use tidewater_cluster::raft::group::{GroupRouter, RaftReplica, RaftReplicaArgs, RaftReplicaMsg, ReplicaStatus};
use tidewater_cluster::raft::{AckOn, Leadership, ReplicaOptions};
use tidewater_cluster::seams::{Clock, NodeRng};
use tidewater_storage::{LogStore, PartitionId, StateStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::node::NodeError;

/// The metadata log's partition.
pub fn metadata_partition() -> PartitionId {
    PartitionId { stream: "@controller".into(), partition: 0 }
}

/// One raft tick of the controller (elections after 10 to 20 ticks without a leader).
const TICK: Duration = Duration::from_millis(50);

/// What the HTTP status reads.
#[derive(Clone)]
pub struct ControllerView {
    /// the voters
    pub voters: Vec<u64>,
    /// who leads, as this node sees it
    pub leadership: watch::Receiver<Option<Leadership>>,
    /// the metadata applied so far
    pub metadata: watch::Receiver<ClusterMetadata>,
    /// the replica, for its status
    pub replica: Option<ActorRef<RaftReplicaMsg>>,
}

impl ControllerView {
    /// The replica's raft status, if this node holds one.
    pub async fn status(&self) -> Option<ReplicaStatus> {
        let replica = self.replica.as_ref()?;
        ractor::call_t!(replica, RaftReplicaMsg::Status, 500).ok()
    }
}

/// The controller replica and its loops.
pub struct Controller {
    view: ControllerView,
    tasks: Vec<JoinHandle<()>>,
}

/// What the controller needs from the node.
pub struct ControllerParts {
    /// this node
    pub node_id: u64,
    /// this node's generation
    pub generation: u64,
    /// the controller's voters
    pub voters: Vec<u64>,
    /// partition logs
    pub log: Arc<dyn LogStore>,
    /// raft records
    pub state: Arc<dyn StateStore>,
    /// inbound raft messages
    pub router: Arc<GroupRouter>,
    /// outbound raft messages
    pub links: Arc<PeerLinks>,
    /// the live members
    pub members: watch::Receiver<Members>,
    /// time
    pub clock: Arc<dyn Clock>,
    /// seeds the election timeouts
    pub rng: NodeRng,
}

impl Controller {
    /// Starts the replica (on a voter) and the apply and registration loops.
    pub async fn start(parts: ControllerParts, shutdown: watch::Receiver<bool>) -> Result<Self, NodeError> {
        let (leadership_sender, leadership) = watch::channel(None);
        let (metadata_sender, metadata) = watch::channel(ClusterMetadata::new());
        if !parts.voters.contains(&parts.node_id) {
            // a node outside the voters follows the metadata log as a learner, once the
            // leader has added it (it never campaigns: it is not in its own membership)
            tracing::info!(voters = ?parts.voters, "not a controller voter: following the metadata log as a learner");
        }
        let (high_watermark_sender, high_watermark) = watch::channel(0);
        let args = RaftReplicaArgs {
            group: GroupId::Controller,
            partition: metadata_partition(),
            options: ReplicaOptions::new(parts.node_id, parts.rng.next_u64()),
            voters: parts.voters.clone(),
            tick: TICK,
            log: Arc::clone(&parts.log),
            state: Arc::clone(&parts.state),
            transport: parts.links.clone(),
            high_watermark: high_watermark_sender,
            leadership: leadership_sender,
        };
        let (replica, _) = Actor::spawn(None, RaftReplica, args)
            .await
            .map_err(|error| NodeError::Restore { what: "the controller replica", detail: error.to_string() })?;
        parts.router.insert(GroupId::Controller, replica.clone());
        let applying = tokio::spawn(
            apply_committed(Arc::clone(&parts.log), high_watermark, metadata_sender, shutdown.clone())
                .in_current_span(),
        );
        let registering = tokio::spawn(
            register_members(
                replica.clone(),
                leadership.clone(),
                metadata.clone(),
                parts.members.clone(),
                Arc::clone(&parts.clock),
                shutdown,
            )
            .in_current_span(),
        );
        tracing::info!(voters = ?parts.voters, generation = parts.generation, "controller replica started");
        let view = ControllerView { voters: parts.voters, leadership, metadata, replica: Some(replica) };
        Ok(Self { view, tasks: vec![applying, registering] })
    }

    /// What HTTP reads.
    pub fn view(&self) -> ControllerView {
        self.view.clone()
    }

    /// Stops the loops and the replica (its journal is written through the stores, which the
    /// node flushes after).
    pub async fn stop(self, router: &GroupRouter) {
        for task in &self.tasks {
            task.abort();
        }
        router.remove(&GroupId::Controller);
        if let Some(replica) = self.view.replica {
            let _ = replica.stop_and_wait(None, Some(Duration::from_secs(2))).await;
        }
    }
}

/// Reads what the controller log committed and applies it, in order.
async fn apply_committed(
    log: Arc<dyn LogStore>,
    mut high_watermark: watch::Receiver<i64>,
    metadata: watch::Sender<ClusterMetadata>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = metadata_partition();
    let mut next = 0;
    let mut applied = ClusterMetadata::new();
    loop {
        let committed = *high_watermark.borrow_and_update();
        while next < committed {
            let batches = match log.read(&id, next, 1 << 20, committed) {
                Ok(batches) if !batches.is_empty() => batches,
                Ok(_) => break,
                Err(error) => {
                    tracing::error!(%error, "cannot read the metadata log");
                    break;
                }
            };
            for batch in batches {
                next = batch.last_offset + 1;
                match decode_commands(&batch.bytes) {
                    Ok(commands) => {
                        for (offset, command) in commands {
                            if let Err(error) = applied.apply(offset, &command) {
                                tracing::debug!(offset, %error, "metadata command changed nothing");
                            }
                        }
                    }
                    Err(error) => tracing::error!(offset = batch.base_offset, %error, "undecodable metadata batch"),
                }
            }
            metadata.send_replace(applied.clone());
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            changed = high_watermark.changed() => if changed.is_err() { return },
        }
    }
}

/// On the leader: registers every live member whose generation the metadata lacks.
async fn register_members(
    replica: ActorRef<RaftReplicaMsg>,
    mut leadership: watch::Receiver<Option<Leadership>>,
    mut metadata: watch::Receiver<ClusterMetadata>,
    mut members: watch::Receiver<Members>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let leads = leadership.borrow_and_update().is_some_and(|leadership| leadership.is_leader);
        if leads {
            let live = members.borrow_and_update().clone();
            let known = metadata.borrow_and_update().nodes.clone();
            for member in live.values() {
                if known.get(&member.id).is_some_and(|node| node.generation == member.generation) {
                    continue;
                }
                let command = MetadataCommand::RegisterNode { id: member.id, generation: member.generation };
                let batch = encode_command(&command, clock.now_millis());
                let proposed = ractor::call_t!(
                    replica,
                    |reply| RaftReplicaMsg::Propose { batch, ack_on: AckOn::Commit, reply },
                    3_000
                );
                match proposed {
                    Ok(Ok(placed)) => tracing::info!(node = member.id, offset = placed.base_offset, "node registered"),
                    Ok(Err(refusal)) => tracing::debug!(node = member.id, %refusal, "registration not committed"),
                    Err(error) => tracing::debug!(node = member.id, %error, "registration timed out"),
                }
            }
        }
        if leads {
            let known = metadata.borrow().clone();
            add_learners(&replica, &known).await;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            changed = leadership.changed() => if changed.is_err() { return },
            changed = members.changed() => if changed.is_err() { return },
            changed = metadata.changed() => if changed.is_err() { return },
            // a registration that was not committed is tried again
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// On the leader: adds every registered node that is neither voter nor learner as a learner
/// (one at a time: raft takes one membership change at a time; the next waits a round).
async fn add_learners(replica: &ActorRef<RaftReplicaMsg>, metadata: &ClusterMetadata) {
    let Ok(status) = ractor::call_t!(replica, RaftReplicaMsg::Status, 500) else { return };
    let missing = metadata.nodes.keys().find(|node| !status.voters.contains(node) && !status.learners.contains(node));
    if let Some(&node) = missing {
        match ractor::call_t!(replica, RaftReplicaMsg::AddLearner, 1_000, node) {
            Ok(Ok(())) => tracing::info!(node, "adding a controller learner"),
            Ok(Err(refusal)) => tracing::debug!(node, %refusal, "learner not added yet"),
            Err(error) => tracing::debug!(node, %error, "learner not added yet"),
        }
    }
}
