//! The controller group on this node: a raft replica of the cluster's metadata log, the loop
//! that applies what it commits, and (on the leader) the registration of live nodes.
//!
//! The metadata log is a partition like any other (`@controller-0`; `@` cannot appear in a
//! Kafka topic name, so no stream can take it) whose batches hold
//! [`MetadataCommand`]s. Every voter applies the committed commands in order to its own
//! [`ClusterMetadata`]. Nodes outside `cluster.voters` hold a replica too: the leader adds
//! each registered node that is not a voter as a raft learner, which receives the log and
//! applies it but never votes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tidewater_cluster::controller::{ClusterMetadata, MetadataCommand, decode_commands, encode_command};
use tidewater_cluster::data_plane::{GroupId, PeerLinks};
use tidewater_cluster::membership::Members;
use tidewater_cluster::placement;
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

/// One raft tick of the controller and of every partition (elections after 10 to 20 ticks
/// without a leader).
pub const TICK: Duration = Duration::from_millis(50);
/// A raft group with nothing to do for this many ticks hibernates (1 s; see
/// `ReplicaCore::asleep`).
pub const QUIET_TICKS: u64 = 20;

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
    /// a node gone this long has its replicas placed elsewhere
    pub replace_dead_after: Duration,
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
            options: ReplicaOptions {
                quiet_ticks: QUIET_TICKS,
                ..ReplicaOptions::new(parts.node_id, parts.rng.next_u64())
            },
            voters: parts.voters.clone(),
            tick: TICK,
            log: Arc::clone(&parts.log),
            state: Arc::clone(&parts.state),
            transport: parts.links.clone(),
            high_watermark: high_watermark_sender,
            leadership: leadership_sender,
            in_sync: watch::channel(Vec::new()).0,
            clock: parts.router.clock(),
        };
        let (replica, _) = Actor::spawn(None, RaftReplica, args).await.map_err(|error| NodeError::Restore {
            what: "the controller replica",
            detail: tidewater_actors::startup_error(error),
        })?;
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
                parts.replace_dead_after,
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
    replace_dead_after: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut placement = Placement { replace_dead_after, down_since: BTreeMap::new() };
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
            let live = members.borrow().clone();
            for command in placement.moves(&known, &live, tokio::time::Instant::now()) {
                propose_command(&replica, &command, clock.as_ref()).await;
            }
        } else {
            placement.down_since.clear();
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

/// Proposes one metadata command on this node's controller replica (the leader's).
async fn propose_command(replica: &ActorRef<RaftReplicaMsg>, command: &MetadataCommand, clock: &dyn Clock) {
    let batch = encode_command(command, clock.now_millis());
    let proposed =
        ractor::call_t!(replica, |reply| RaftReplicaMsg::Propose { batch, ack_on: AckOn::Commit, reply }, 3_000);
    match proposed {
        Ok(Ok(_)) => tracing::info!(?command, "placement proposed"),
        Ok(Err(refusal)) => tracing::debug!(?command, %refusal, "placement not committed"),
        Err(error) => tracing::debug!(?command, %error, "placement timed out"),
    }
}

/// Placement after creation, on the controller's leader: each partition's replica set is
/// the best `replication factor` (its creation set's size) of the nodes that may hold
/// replicas, by rendezvous ranking: registered, not decommissioned, and not gone longer than
/// `cluster.replace_dead_after`. A node that joins takes its share; a node gone that long,
/// or decommissioned, has its replicas re-created elsewhere; a node only briefly down keeps
/// them. A partition already moving is left to settle, and at most [`MOVES_AT_ONCE`]
/// partitions move at a time.
struct Placement {
    replace_dead_after: Duration,
    /// registered nodes not live, since when (on this leader's clock)
    down_since: BTreeMap<u64, tokio::time::Instant>,
}

/// Partitions whose replica set moves at one time, cluster-wide.
const MOVES_AT_ONCE: usize = 4;

impl Placement {
    fn moves(&mut self, metadata: &ClusterMetadata, live: &Members, now: tokio::time::Instant) -> Vec<MetadataCommand> {
        self.down_since.retain(|node, _| !live.contains_key(node) && metadata.nodes.contains_key(node));
        for node in metadata.nodes.keys() {
            if !live.contains_key(node) {
                self.down_since.entry(*node).or_insert(now);
            }
        }
        let gone = |node: &u64| self.down_since.get(node).is_some_and(|since| now - *since >= self.replace_dead_after);
        let candidates: Vec<u64> = metadata
            .nodes
            .iter()
            .filter(|(node, record)| !record.decommissioned && !gone(node))
            .map(|(node, _)| *node)
            .collect();
        let mut moving = metadata.streams.values().flat_map(|stream| &stream.partitions).filter(|p| !p.settled).count();
        let mut commands = Vec::new();
        for (name, stream) in &metadata.streams {
            for (index, partition) in stream.partitions.iter().enumerate() {
                if moving >= MOVES_AT_ONCE {
                    return commands;
                }
                if !partition.settled {
                    continue;
                }
                let factor = partition.initial.len();
                // an operator's assignment stays where it is but for its nodes that are gone
                let wanted = if partition.pinned {
                    placement::repaired(name, index as u32, &partition.replicas, &candidates, factor)
                } else {
                    placement::replica_set(name, index as u32, &candidates, factor)
                };
                // never fewer replicas than the stream asks for: a node gone with no other to take
                // its place stays in the set (the partition is under-replicated, not shrunk)
                if wanted.len() < factor || same_members(&wanted, &partition.replicas) {
                    continue;
                }
                moving += 1;
                commands.push(MetadataCommand::SetReplicas {
                    name: name.clone(),
                    partition: index as u32,
                    replicas: wanted,
                });
            }
        }
        commands
    }
}

fn same_members(a: &[u64], b: &[u64]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tidewater_cluster::membership::{Advertised, Member};

    use super::*;

    fn member(id: u64) -> (u64, Member) {
        let gossip = "127.0.0.1:7946".parse().expect("address");
        (id, Member { id, generation: 1, gossip, advertised: Advertised::default() })
    }

    fn cluster(nodes: &[u64], partitions: usize) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::new();
        let mut offset = 0;
        for &id in nodes {
            metadata.apply(offset, &MetadataCommand::RegisterNode { id, generation: 1 }).unwrap();
            offset += 1;
        }
        let replicas = (0..partitions as u32).map(|p| placement::replica_set("s", p, &[1, 2, 3], 3)).collect();
        let create =
            MetadataCommand::CreateStream { name: "s".into(), definition: Bytes::new(), replicas, pinned: false };
        metadata.apply(offset, &create).unwrap();
        metadata
    }

    #[test]
    fn placement_follows_joins_deaths_and_decommissions_a_few_partitions_at_a_time() {
        let mut now = tokio::time::Instant::now();
        let mut placement = Placement { replace_dead_after: Duration::from_secs(60), down_since: BTreeMap::new() };
        let live: Members = [1, 2, 3].into_iter().map(member).collect();
        let mut metadata = cluster(&[1, 2, 3], 12);
        assert!(placement.moves(&metadata, &live, now).is_empty(), "three nodes hold every replica already");
        // node 4 joins: the partitions where it ranks in the top three move, four at a time
        metadata.apply(100, &MetadataCommand::RegisterNode { id: 4, generation: 1 }).unwrap();
        let live: Members = [1, 2, 3, 4].into_iter().map(member).collect();
        let moves = placement.moves(&metadata, &live, now);
        assert_eq!(moves.len(), MOVES_AT_ONCE);
        for command in &moves {
            let MetadataCommand::SetReplicas { replicas, .. } = command else { panic!("{command:?}") };
            assert!(replicas.contains(&4) && replicas.len() == 3, "{replicas:?}");
        }
        let mut offset = 101;
        for command in moves {
            metadata.apply(offset, &command).unwrap();
            offset += 1;
        }
        assert!(placement.moves(&metadata, &live, now).is_empty(), "nothing more while four partitions move");
        // node 2 is down: its replicas stay until it has been gone for replace_dead_after
        let partial: Members = [1, 3, 4].into_iter().map(member).collect();
        let settle_all = |metadata: &mut ClusterMetadata, offset: &mut i64| {
            let unsettled: Vec<(u32, u64)> = metadata.streams["s"]
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.settled)
                .map(|(i, p)| (i as u32, p.replica_epoch))
                .collect();
            for (partition, replica_epoch) in unsettled {
                let settled = MetadataCommand::ReplicasSettled { name: "s".into(), partition, replica_epoch };
                metadata.apply(*offset, &settled).unwrap();
                *offset += 1;
            }
        };
        settle_all(&mut metadata, &mut offset);
        let before_death: Vec<Vec<u64>> = loop {
            let moves = placement.moves(&metadata, &live, now);
            if moves.is_empty() {
                break metadata.streams["s"].partitions.iter().map(|p| p.replicas.clone()).collect();
            }
            for command in moves {
                metadata.apply(offset, &command).unwrap();
                offset += 1;
            }
            settle_all(&mut metadata, &mut offset);
        };
        assert!(placement.moves(&metadata, &partial, now).is_empty(), "a node just gone keeps its replicas");
        now += Duration::from_secs(61);
        let moves = placement.moves(&metadata, &partial, now);
        assert!(!moves.is_empty());
        for command in &moves {
            let MetadataCommand::SetReplicas { partition, replicas, .. } = command else { panic!("{command:?}") };
            assert!(!replicas.contains(&2) && replicas.len() == 3, "{replicas:?}");
            assert!(before_death[*partition as usize].contains(&2), "only the sets that held node 2 move");
        }
        // with only two nodes left nothing can take a dead node's place: the sets keep it
        let mut placement = Placement { replace_dead_after: Duration::from_secs(60), down_since: BTreeMap::new() };
        let metadata = cluster(&[1, 2, 3], 4);
        let two: Members = [1, 3].into_iter().map(member).collect();
        assert!(placement.moves(&metadata, &two, now).is_empty());
        now += Duration::from_secs(61);
        assert!(placement.moves(&metadata, &two, now).is_empty(), "never fewer replicas than the factor");
        // a decommissioned node's replicas go to the others
        let mut metadata = cluster(&[1, 2, 3, 4], 4);
        metadata.apply(50, &MetadataCommand::Decommission { id: 1 }).unwrap();
        let everyone: Members = [1, 2, 3, 4].into_iter().map(member).collect();
        let moves = placement.moves(&metadata, &everyone, now);
        assert_eq!(moves.len(), 4);
        assert!(
            moves.iter().all(
                |command| matches!(command, MetadataCommand::SetReplicas { replicas, .. } if !replicas.contains(&1))
            )
        );
    }

    #[test]
    fn placement_keeps_an_assigned_set_and_replaces_only_its_departed_nodes() {
        let now = tokio::time::Instant::now();
        let mut placement = Placement { replace_dead_after: Duration::from_secs(60), down_since: BTreeMap::new() };
        let mut metadata = ClusterMetadata::new();
        for id in 1..=4 {
            metadata.apply(i64::from(id as u32), &MetadataCommand::RegisterNode { id, generation: 1 }).unwrap();
        }
        // sets no rendezvous ranking would choose for all four partitions
        let replicas = vec![vec![4, 3], vec![4, 3], vec![3, 4], vec![3, 4]];
        let create =
            MetadataCommand::CreateStream { name: "s".into(), definition: Bytes::new(), replicas, pinned: true };
        metadata.apply(10, &create).unwrap();
        let everyone: Members = [1, 2, 3, 4].into_iter().map(member).collect();
        assert!(placement.moves(&metadata, &everyone, now).is_empty(), "an assignment is not rebalanced");
        metadata.apply(11, &MetadataCommand::Decommission { id: 4 }).unwrap();
        let moves = placement.moves(&metadata, &everyone, now);
        assert_eq!(moves.len(), 4);
        for command in &moves {
            let MetadataCommand::SetReplicas { replicas, .. } = command else { panic!("{command:?}") };
            assert_eq!(replicas[0], 3, "node 3 stays where the operator put it: {replicas:?}");
            assert!(replicas.len() == 2 && !replicas.contains(&4), "{replicas:?}");
        }
    }
}
