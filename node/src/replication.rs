//! Streams of the cluster on this node: the [`ClusterCatalog`] the Kafka and HTTP handlers
//! create and delete them through, and the loop that serves what the controller's log says.
//!
//! Creating a stream is a `CreateStream` command proposed to the controller (on its leader)
//! with a replica set per partition from rendezvous placement over the live registered
//! nodes. Every node applies the committed command and [`follow_streams`] then serves the
//! stream: for each partition a raft replica where this node is in the replica set (its
//! journal and log on this node's stores, its messages through the data plane), and in front
//! of it a `ReplicatedPartition` writer with the interface every partition has. A restart
//! replays the controller's log and opens the same replicas again from their journals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use ractor::{Actor, ActorRef};
use tidewater_actors::NodeContext;
use tidewater_actors::mqtt::persist;
use tidewater_actors::stream::catalog::{Assignment, Broker, ClusterCatalog};
use tidewater_actors::stream::def::StreamDef;
use tidewater_actors::stream::registry::{PartitionHandle, StreamError};
use tidewater_actors::stream::replicated::{ReplicaView, ReplicatedArgs, ReplicatedPartition};
use tidewater_cluster::controller::{ClusterMetadata, MetadataCommand, StreamRecord, encode_command};
use tidewater_cluster::data_plane::{Forwarder, GroupId, PeerLinks};
use tidewater_cluster::membership::Members;
use tidewater_cluster::placement;
use tidewater_cluster::raft::RaftJournal;
use tidewater_cluster::raft::group::{GroupRouter, RaftReplica, RaftReplicaArgs, RaftReplicaMsg};
use tidewater_cluster::raft::{AckOn, Leadership, Reconciled, Refusal, ReplicaOptions};
use tidewater_storage::PartitionId;
use tokio::sync::watch;
use tracing::Instrument;

use crate::controller::{QUIET_TICKS, TICK};

/// How long a create or delete waits for the controller and for this node to serve it.
const ADMIN_WAIT: Duration = Duration::from_secs(10);
/// Record batches of MQTT records are cut at about this size.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The definition's format inside a `CreateStream` command.
const DEFINITION_SPACE: &str = "cluster stream definition";

/// What the catalog reads.
pub struct NodeCatalog {
    /// whether this node runs in a cluster (other voters configured)
    pub clustered: bool,
    /// how many voters the controller has (the cluster's size before every node registered)
    pub voters: usize,
    /// live members
    pub members: watch::Receiver<Members>,
    /// the controller's applied metadata
    pub metadata: watch::Receiver<ClusterMetadata>,
    /// who leads the controller
    pub controller_leadership: watch::Receiver<Option<Leadership>>,
    /// proposals to the controller's leader, wherever it runs
    pub forwarder: Arc<Forwarder>,
    /// the streams of the cluster this node serves, with the definitions it serves
    pub served: watch::Receiver<Served>,
    /// time, for command timestamps
    pub clock: Arc<dyn tidewater_cluster::seams::Clock>,
}

impl NodeCatalog {
    /// Proposes `command` on the node whose controller replica leads (this one or another:
    /// any node takes admin requests), following one redirect.
    async fn propose(&self, command: &MetadataCommand) -> Result<i64, StreamError> {
        propose_to_controller(&self.forwarder, &self.controller_leadership, self.clock.as_ref(), command).await
    }

    /// Waits until this node's metadata has applied `offset` and `served` holds for it.
    async fn settle(&self, offset: i64, served: impl Fn(&Served) -> bool) -> Result<(), StreamError> {
        let mut metadata = self.metadata.clone();
        let mut serving = self.served.clone();
        let waited = tokio::time::timeout(ADMIN_WAIT, async {
            let _ = metadata.wait_for(|metadata| metadata.applied_offset >= offset).await;
            let _ = serving.wait_for(|set| served(set)).await;
        })
        .await;
        waited.map_err(|_| StreamError::Unavailable("the change committed but this node does not serve it yet".into()))
    }
}

/// Proposes `command` to the controller's leader, wherever it runs, following one redirect;
/// the offset it committed at.
async fn propose_to_controller(
    forwarder: &Arc<Forwarder>,
    leadership: &watch::Receiver<Option<Leadership>>,
    clock: &dyn tidewater_cluster::seams::Clock,
    command: &MetadataCommand,
) -> Result<i64, StreamError> {
    let batch = encode_command(command, clock.now_millis());
    let mut leader = leadership.borrow().and_then(|leadership| leadership.leader);
    for _ in 0..2 {
        let Some(node) = leader else { break };
        let answer = forwarder.propose(node, GroupId::Controller, batch.clone(), AckOn::Commit).await;
        match answer {
            Ok(placed) => return Ok(placed.base_offset),
            Err(Refusal::NotLeader { leader: Some(next) }) if next != node => leader = Some(next),
            Err(Refusal::NotLeader { .. }) => break,
            Err(refusal) => return Err(StreamError::Unavailable(format!("the controller did not commit: {refusal}"))),
        }
    }
    Err(StreamError::NotController(None))
}

impl NodeCatalog {
    /// Replica sets from rendezvous placement over the live registered nodes for `partitions`.
    fn placed(
        &self,
        name: &str,
        partitions: std::ops::Range<u32>,
        replication_factor: u16,
    ) -> Result<Vec<Vec<u64>>, StreamError> {
        let registered: Vec<u64> = self.metadata.borrow().nodes.keys().copied().collect();
        let live: BTreeSet<u64> = self.members.borrow().keys().copied().collect();
        let nodes: Vec<u64> = registered.into_iter().filter(|node| live.contains(node)).collect();
        let factor = usize::from(replication_factor);
        if nodes.len() < factor {
            return Err(StreamError::ReplicationFactor { wanted: replication_factor, nodes: nodes.len() });
        }
        Ok(partitions.map(|partition| placement::replica_set(name, partition, &nodes, factor)).collect())
    }

    /// An operator's replica sets, each naming only registered nodes not decommissioned.
    fn check_assignment(&self, sets: Assignment) -> Result<Vec<Vec<u64>>, StreamError> {
        let metadata = self.metadata.borrow();
        for node in sets.iter().flatten() {
            match metadata.nodes.get(node) {
                None => return Err(StreamError::InvalidAssignment(format!("broker {node} is not in the cluster"))),
                Some(record) if record.decommissioned => {
                    return Err(StreamError::InvalidAssignment(format!("broker {node} is decommissioned")));
                }
                Some(_) => {}
            }
        }
        Ok(sets)
    }
}

impl ClusterCatalog for NodeCatalog {
    fn clustered(&self) -> bool {
        self.clustered
    }

    fn registered_nodes(&self) -> usize {
        // a cluster still forming counts its voters: a stream created then gets the replication
        // factor the cluster will have, and waits (or is refused) until its nodes are there
        self.metadata.borrow().nodes.len().max(self.voters).max(1)
    }

    fn brokers(&self) -> Vec<Broker> {
        self.members
            .borrow()
            .values()
            .filter_map(|member| {
                let kafka = member.advertised.kafka?;
                Some(Broker { id: member.id, host: kafka.ip().to_string(), port: i32::from(kafka.port()) })
            })
            .collect()
    }

    fn controller(&self) -> Option<u64> {
        self.controller_leadership.borrow().and_then(|leadership| leadership.leader)
    }

    fn create(&self, def: StreamDef, assignment: Option<Assignment>) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let name = def.name.clone();
            if self.metadata.borrow().streams.contains_key(&name) {
                return Err(StreamError::Exists(name));
            }
            let (replicas, pinned) = match assignment {
                Some(sets) => (self.check_assignment(sets)?, true),
                None => (self.placed(&name, 0..def.partitions, def.replication_factor)?, false),
            };
            let definition = Bytes::from(persist::encode(&def));
            let command =
                MetadataCommand::CreateStream { name: name.clone(), definition: definition.clone(), replicas, pinned };
            let offset = self.propose(&command).await?;
            self.settle(offset, |served| served.contains_key(&name)).await?;
            // a stream created concurrently under the same name won; this one changed nothing
            let created = self.metadata.borrow().streams.get(&name).map(|record| record.definition.clone());
            match created {
                Some(created) if created == definition => Ok(()),
                _ => Err(StreamError::Exists(name)),
            }
        })
    }

    fn alter(&self, def: StreamDef, assignment: Option<Assignment>) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let name = def.name.clone();
            let Some(current) = self.metadata.borrow().streams.get(&name).map(|stream| stream.partitions.len() as u32)
            else {
                return Err(StreamError::Unknown(name));
            };
            let (added, pinned) = match assignment {
                Some(sets) => (self.check_assignment(sets)?, true),
                None => (self.placed(&name, current..def.partitions, def.replication_factor)?, false),
            };
            let definition = Bytes::from(persist::encode(&def));
            let command =
                MetadataCommand::AlterStream { name: name.clone(), definition: definition.clone(), added, pinned };
            let offset = self.propose(&command).await?;
            self.settle(offset, |served| served.get(&name) == Some(&definition)).await
        })
    }

    fn decommission(&self, node: u64) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            if !self.metadata.borrow().nodes.contains_key(&node) {
                return Err(StreamError::Unknown(format!("node {node}")));
            }
            let offset = self.propose(&MetadataCommand::Decommission { id: node }).await?;
            self.settle(offset, |_| true).await
        })
    }

    fn change_acls(&self, add: Vec<Vec<u8>>, remove: Vec<Vec<u8>>) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let command = MetadataCommand::ChangeAcls {
                add: add.into_iter().map(Bytes::from).collect(),
                remove: remove.into_iter().map(Bytes::from).collect(),
            };
            let offset = self.propose(&command).await?;
            self.settle(offset, |_| true).await
        })
    }

    fn acls(&self) -> Vec<Vec<u8>> {
        self.metadata.borrow().acls.iter().map(|binding| binding.to_vec()).collect()
    }

    fn change_credentials(
        &self,
        upsert: Vec<(String, String, Vec<u8>)>,
        delete: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let upsert = upsert
                .into_iter()
                .map(|(user, mechanism, credential)| (user, mechanism, Bytes::from(credential)))
                .collect();
            let offset = self.propose(&MetadataCommand::ChangeCredentials { upsert, delete }).await?;
            self.settle(offset, |_| true).await
        })
    }

    fn credentials(&self) -> Vec<(String, String, Vec<u8>)> {
        let metadata = self.metadata.borrow();
        metadata
            .credentials
            .iter()
            .map(|((user, mechanism), value)| (user.clone(), mechanism.clone(), value.to_vec()))
            .collect()
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            if !self.metadata.borrow().streams.contains_key(&name) {
                return Err(StreamError::Unknown(name));
            }
            let offset = self.propose(&MetadataCommand::DeleteStream { name: name.clone() }).await?;
            self.settle(offset, |served| !served.contains_key(&name)).await
        })
    }
}

/// What serving the cluster's streams needs.
pub struct StreamParts {
    /// the node's context (its registry and stores)
    pub ctx: NodeContext,
    /// inbound raft messages
    pub router: Arc<GroupRouter>,
    /// outbound raft messages
    pub links: Arc<PeerLinks>,
    /// proposals to other nodes' replicas
    pub forwarder: Arc<Forwarder>,
    /// the controller's applied metadata
    pub metadata: watch::Receiver<ClusterMetadata>,
    /// who leads the controller (where a settled move is reported)
    pub controller_leadership: watch::Receiver<Option<Leadership>>,
    /// this node's generation (its registration at it bounds how stale its metadata is)
    pub generation: u64,
    /// published: the streams served, with their definitions
    pub served: watch::Sender<Served>,
}

impl StreamParts {
    /// Proposes `command` to the controller's leader.
    async fn propose(&self, command: &MetadataCommand) -> Result<i64, StreamError> {
        propose_to_controller(&self.forwarder, &self.controller_leadership, self.ctx.clock.as_ref(), command).await
    }
}

/// This node's raft replica of one partition, with what it publishes.
struct LocalReplica {
    actor: ActorRef<RaftReplicaMsg>,
    high_watermark: watch::Receiver<i64>,
    leadership: watch::Receiver<Option<Leadership>>,
    /// the in-sync voters while it leads
    in_sync: watch::Receiver<Vec<u64>>,
}

/// The streams of the cluster a node serves: name -> the definition it serves (encoded).
pub type Served = BTreeMap<String, Bytes>;

/// A stream of the cluster served here: its record (to notice a change) and this node's
/// replicas of its partitions.
struct ServedStream {
    record: StreamRecord,
    replicas: BTreeMap<u32, LocalReplica>,
    /// for the partitions this node holds no replica of: the leader their replicas reported
    remote: BTreeMap<u32, watch::Sender<Option<Leadership>>>,
    /// per partition: the ISR its view shows
    in_sync: Vec<watch::Sender<Vec<u64>>>,
}

/// How often a partition whose replica set is moving takes its next step.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// A replica moved away is stopped at once but its data goes only after this, if the
/// metadata still says so: metadata a node applies can be behind (replayed after a restart,
/// or arriving after a cut heals), and a later command may have put the node back in a group
/// that counts on the data it holds.
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// The streams of the cluster served on this node, until `shutdown`; then their replicas stop.
///
/// A stream whose partitions' replica sets changed is served again with the replicas this
/// node keeps (a replica running on goes on undisturbed): a node newly in a set starts an
/// empty replica that the leader adds as a learner; a node no longer in it keeps its replica
/// until the group has settled on the new set, then stops it and removes its data. While a
/// set moves, this node's replica, if it leads, takes one membership step toward it every
/// [`RECONCILE_EVERY`], and reports the group settled to the controller.
pub async fn follow_streams(parts: StreamParts, mut shutdown: watch::Receiver<bool>) {
    let mut metadata = parts.metadata.clone();
    let mut served: BTreeMap<String, ServedStream> = BTreeMap::new();
    // leaderships of this node's replicas reported to the controller, with their ISR:
    // (stream, partition) -> (term, in-sync replicas)
    let mut reported: BTreeMap<(String, u32), (u64, Vec<u64>)> = BTreeMap::new();
    // replicas stopped because they moved away, whose data is still here, since when
    let mut doomed: BTreeMap<PartitionId, tokio::time::Instant> = BTreeMap::new();
    loop {
        let now = metadata.borrow_and_update().clone();
        // a stream deleted, or deleted and created again (another stream under its name)
        for name in served.keys().cloned().collect::<Vec<_>>() {
            let current = now.streams.get(&name);
            if current.is_none_or(|record| record.created != served[&name].record.created)
                && let Some(gone) = served.remove(&name)
            {
                release(&parts, &name, gone, true).await;
            }
        }
        for (name, record) in &now.streams {
            if served.get(name).is_some_and(|stream| stream.record == *record) {
                continue;
            }
            let held = served.remove(name).map(|stream| stream.replicas).unwrap_or_default();
            match serve(&parts, name, record, held, &mut doomed).await {
                Ok(stream) => {
                    served.insert(name.clone(), stream);
                }
                Err(error) => tracing::error!(stream = %name, %error, "cannot serve a stream of the cluster"),
            }
        }
        parts.served.send_replace(
            served.iter().map(|(name, stream)| (name.clone(), stream.record.definition.clone())).collect(),
        );
        forget_moved(&parts, &now, &mut doomed);
        learn_leaders(&served, &now);
        report_leaders(&parts, &served, &now, &mut reported).await;
        publish_in_sync(&served, &now);
        reconcile(&parts, &served).await;
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            changed = metadata.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
    for (name, gone) in std::mem::take(&mut served) {
        release(&parts, &name, gone, false).await;
    }
}

/// Removes the data of replicas that moved away [`FORGET_AFTER`] ago and are still not this
/// node's under metadata that includes this node's registration at its generation.
fn forget_moved(
    parts: &StreamParts,
    metadata: &ClusterMetadata,
    doomed: &mut BTreeMap<PartitionId, tokio::time::Instant>,
) {
    let me = parts.ctx.node_id;
    let fresh = metadata.nodes.get(&me).is_some_and(|node| node.generation == parts.generation);
    if !fresh {
        return;
    }
    let now = tokio::time::Instant::now();
    doomed.retain(|id, since| {
        let record = metadata.streams.get(&id.stream).and_then(|stream| stream.partitions.get(id.partition as usize));
        match record {
            Some(record) if record.replicas.contains(&me) => false, // it came back: serve reopened it
            Some(record) if !record.settled || now - *since < FORGET_AFTER => true,
            Some(_) => {
                forget_partition(&parts.ctx, id);
                tracing::info!(stream = %id.stream, partition = id.partition, "replica moved away: its data is removed");
                false
            }
            None => false, // the stream was deleted (its release removed the data)
        }
    });
}

/// Partitions this node holds no replica of learn their leader from what the replicas
/// reported to the controller.
fn learn_leaders(served: &BTreeMap<String, ServedStream>, metadata: &ClusterMetadata) {
    for (name, stream) in served {
        for (partition, sender) in &stream.remote {
            if let Some(&(leader, term)) = metadata.leaders.get(&(name.clone(), *partition)) {
                let leadership = Some(Leadership { term, leader: Some(leader), is_leader: false });
                sender.send_if_modified(|known| {
                    let changed = *known != leadership;
                    *known = leadership;
                    changed
                });
            }
        }
    }
}

/// Reports to the controller each leadership of this node's replicas, with its in-sync
/// replicas, that it does not record yet (the ISR changes rarely: when a follower falls
/// behind for the lag, or catches up).
async fn report_leaders(
    parts: &StreamParts,
    served: &BTreeMap<String, ServedStream>,
    metadata: &ClusterMetadata,
    reported: &mut BTreeMap<(String, u32), (u64, Vec<u64>)>,
) {
    let me = parts.ctx.node_id;
    for (name, stream) in served {
        for (partition, local) in &stream.replicas {
            let Some(leadership) = *local.leadership.borrow() else { continue };
            let in_sync = local.in_sync.borrow().clone();
            let key = (name.clone(), *partition);
            let report = (leadership.term, in_sync.clone());
            if !leadership.is_leader
                || in_sync.is_empty()
                || (metadata.leaders.get(&key) == Some(&(me, leadership.term))
                    && metadata.in_sync.get(&key) == Some(&report))
                || reported.get(&key) == Some(&report)
            {
                continue;
            }
            let command = MetadataCommand::InSync {
                name: name.clone(),
                partition: *partition,
                leader: me,
                term: leadership.term,
                replicas: in_sync,
            };
            if parts.propose(&command).await.is_ok() {
                reported.insert(key, report);
            }
        }
    }
}

/// Each partition's view shows the ISR of this node's replica while it leads, else the one
/// its leader reported last.
fn publish_in_sync(served: &BTreeMap<String, ServedStream>, metadata: &ClusterMetadata) {
    for (name, stream) in served {
        for (index, sender) in stream.in_sync.iter().enumerate() {
            let partition = index as u32;
            let leading = stream.replicas.get(&partition).filter(|local| !local.in_sync.borrow().is_empty());
            let in_sync = match leading {
                Some(local) => local.in_sync.borrow().clone(),
                None => {
                    metadata.in_sync.get(&(name.clone(), partition)).map(|(_, set)| set.clone()).unwrap_or_default()
                }
            };
            sender.send_if_modified(|shown| {
                let changed = *shown != in_sync;
                *shown = in_sync;
                changed
            });
        }
    }
}

/// One step toward the recorded set for every moving partition whose replica leads here;
/// a group that reached it is reported settled.
async fn reconcile(parts: &StreamParts, served: &BTreeMap<String, ServedStream>) {
    for (name, stream) in served {
        for (index, record) in stream.record.partitions.iter().enumerate() {
            if record.settled {
                continue;
            }
            let Some(local) = stream.replicas.get(&(index as u32)) else { continue };
            if !local.leadership.borrow().is_some_and(|leadership| leadership.is_leader) {
                continue;
            }
            let target = record.replicas.clone();
            let answer = ractor::call_t!(local.actor, RaftReplicaMsg::Reconcile, 500, target);
            if let Ok(Reconciled::Settled) = answer {
                let command = MetadataCommand::ReplicasSettled {
                    name: name.clone(),
                    partition: index as u32,
                    replica_epoch: record.replica_epoch,
                };
                let proposed = parts.propose(&command).await;
                match proposed {
                    Ok(_) => {
                        tracing::info!(stream = %name, partition = index, replicas = ?record.replicas, "replica set moved")
                    }
                    Err(error) => {
                        tracing::debug!(stream = %name, partition = index, %error, "settled move not recorded yet")
                    }
                }
            }
        }
    }
}

/// Serves a stream: a raft replica for each partition this node keeps (`held` are those
/// running already, reused), and in front of each partition a `ReplicatedPartition` writer
/// with the interface every partition has. Replicas not kept stop and their data goes.
async fn serve(
    parts: &StreamParts,
    name: &str,
    record: &StreamRecord,
    mut held: BTreeMap<u32, LocalReplica>,
    doomed: &mut BTreeMap<PartitionId, tokio::time::Instant>,
) -> Result<ServedStream, String> {
    let def: StreamDef = persist::decode(DEFINITION_SPACE, &record.definition).map_err(|error| error.to_string())?;
    let ctx = &parts.ctx;
    let mut handles = Vec::with_capacity(record.partitions.len());
    let mut replicas = BTreeMap::new();
    let mut remote = BTreeMap::new();
    let mut in_sync = Vec::with_capacity(record.partitions.len());
    let mut gone = Vec::new();
    for (index, partition) in record.partitions.iter().enumerate() {
        let id = PartitionId { stream: name.to_string(), partition: index as u32 };
        let group = GroupId::Partition { stream: name.to_string(), partition: index as i32 };
        let running = held.remove(&(index as u32));
        // a replica on disk counts as held (a node restarted in the middle of a move keeps it),
        // unless it was stopped already for having moved away
        let on_disk = running.is_some()
            || (!doomed.contains_key(&id)
                && RaftJournal::exists(&id, ctx.state_store.as_ref()).map_err(|error| error.to_string())?);
        let local = match (partition.keeps(ctx.node_id, on_disk), running) {
            (true, Some(running)) => Some(running),
            (true, None) => {
                doomed.remove(&id);
                Some(start_replica(parts, &id, &group, partition).await?)
            }
            (false, running) => {
                if on_disk {
                    gone.push((group.clone(), running));
                    doomed.entry(id.clone()).or_insert_with(tokio::time::Instant::now);
                }
                None
            }
        };
        let (leadership, high_watermark) = match &local {
            Some(local) => (local.leadership.clone(), local.high_watermark.clone()),
            None => {
                let (sender, leadership) = watch::channel(None);
                remote.insert(index as u32, sender);
                (leadership, watch::channel(0).1)
            }
        };
        let (in_sync_sender, in_sync_shown) = watch::channel(Vec::new());
        in_sync.push(in_sync_sender);
        let view = ReplicaView {
            replicas: partition.replicas.clone(),
            settled: partition.settled,
            leadership,
            raft: local.as_ref().map(|local| local.actor.clone()),
            in_sync: in_sync_shown,
        };
        let args = ReplicatedArgs {
            id: id.clone(),
            view: view.clone(),
            forwarder: Arc::clone(&parts.forwarder),
            max_batch_bytes: MAX_BATCH_BYTES,
            span: ctx.span.clone(),
        };
        let (actor, _) =
            Actor::spawn(None, ReplicatedPartition, args).await.map_err(tidewater_actors::startup_error)?;
        handles.push(PartitionHandle { id, actor, high_watermark, replica: Some(view) });
        if let Some(local) = local {
            replicas.insert(index as u32, local);
        }
    }
    // the new writers take over at once (no moment without the stream), the old ones drain
    let previous = ctx.streams.get(name);
    ctx.streams.adopt(def, handles).await;
    if let Some(previous) = previous {
        for partition in &previous.partitions {
            let _ = partition.actor.drain_and_wait(Some(Duration::from_secs(2))).await;
        }
    }
    for (group, running) in gone {
        if let Some(running) = running {
            parts.router.remove(&group);
            let _ = running.actor.stop_and_wait(None, Some(Duration::from_secs(2))).await;
        }
    }
    tracing::info!(stream = %name, replicas_here = replicas.len(), "serving a stream of the cluster");
    Ok(ServedStream { record: record.clone(), replicas, remote, in_sync })
}

/// Starts this node's replica of a partition. A new one starts from the membership the
/// partition was created with, which the log's own membership changes (or a leader's
/// snapshot) bring up to date.
async fn start_replica(
    parts: &StreamParts,
    id: &PartitionId,
    group: &GroupId,
    partition: &tidewater_cluster::controller::PartitionRecord,
) -> Result<LocalReplica, String> {
    let ctx = &parts.ctx;
    let (high_watermark_sender, high_watermark) = watch::channel(0);
    let (leadership_sender, leadership) = watch::channel(None);
    let (in_sync_sender, in_sync) = watch::channel(Vec::new());
    let args = RaftReplicaArgs {
        group: group.clone(),
        partition: id.clone(),
        options: ReplicaOptions {
            preferred_leader: partition.replicas.first().copied(),
            replica_lag_ticks: (ctx.kafka.replica_lag_time_max_ms / TICK.as_millis() as u64).max(1),
            quiet_ticks: QUIET_TICKS,
            ..ReplicaOptions::new(ctx.node_id, ctx.rng.next_u64())
        },
        voters: partition.initial.clone(),
        tick: TICK,
        log: Arc::clone(&ctx.log_store),
        state: Arc::clone(&ctx.state_store),
        transport: parts.links.clone(),
        high_watermark: high_watermark_sender,
        leadership: leadership_sender,
        in_sync: in_sync_sender,
        clock: parts.router.clock(),
    };
    let (actor, _) = Actor::spawn(None, RaftReplica, args).await.map_err(tidewater_actors::startup_error)?;
    parts.router.insert(group.clone(), actor.clone());
    Ok(LocalReplica { actor, high_watermark, leadership, in_sync })
}

/// Removes this node's data of a partition: its raft records and its log.
fn forget_partition(ctx: &NodeContext, id: &PartitionId) {
    if let Err(error) = RaftJournal::forget(id, ctx.state_store.as_ref()) {
        tracing::warn!(stream = %id.stream, partition = id.partition, %error, "cannot remove a partition's raft records");
    }
    if let Err(error) = ctx.log_store.delete_partition(id) {
        tracing::warn!(stream = %id.stream, partition = id.partition, %error, "cannot remove a partition's log");
    }
}

/// Stops serving a stream; `forget` removes this node's data of it (the stream was deleted).
async fn release(parts: &StreamParts, name: &str, gone: ServedStream, forget: bool) {
    let ctx = &parts.ctx;
    if let Some(stream) = ctx.streams.release(name).await {
        for partition in &stream.partitions {
            let _ = partition.actor.drain_and_wait(Some(Duration::from_secs(2))).await;
        }
    }
    for (partition, local) in gone.replicas {
        parts.router.remove(&GroupId::Partition { stream: name.to_string(), partition: partition as i32 });
        let _ = local.actor.stop_and_wait(None, Some(Duration::from_secs(2))).await;
    }
    if forget {
        for partition in 0..gone.record.partitions.len() as u32 {
            forget_partition(ctx, &PartitionId { stream: name.to_string(), partition });
        }
        tracing::info!(stream = %name, "stream of the cluster deleted");
    }
}

/// Starts [`follow_streams`] in the current span.
/// Installs the ACL bindings and users' credentials of the controller's metadata as the ones in
/// force, each time they change, until `shutdown`. `in_force` turns true once the bindings of a metadata that has
/// applied this node's registration at `generation` are installed (every change committed
/// before it then is), or after [`ACLS_WAIT`] without it: the listeners wait for that, so
/// that a restarted node never serves what a binding it has not replayed yet denies.
pub fn spawn_follow_acls(
    ctx: NodeContext,
    node_id: u64,
    generation: u64,
    mut metadata: watch::Receiver<ClusterMetadata>,
    in_force: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let deadline = tokio::time::Instant::now() + ACLS_WAIT;
    tokio::spawn(
        async move {
            let (mut installed, mut installed_credentials) = (None, None);
            loop {
                // most metadata changes (leaders, in-sync sets) touch neither: copied only when changed
                let (acls, credentials, registered) = {
                    let now = metadata.borrow_and_update();
                    let registered = now.nodes.get(&node_id).is_some_and(|node| node.generation == generation);
                    let acls = (installed.as_ref() != Some(&now.acls)).then(|| now.acls.clone());
                    let credentials =
                        (installed_credentials.as_ref() != Some(&now.credentials)).then(|| now.credentials.clone());
                    (acls, credentials, registered)
                };
                if let Some(acls) = acls {
                    tidewater_actors::stream::catalog::install_acls(&ctx, acls.iter().map(|binding| binding.as_ref()));
                    installed = Some(acls);
                }
                if let Some(credentials) = credentials {
                    tidewater_actors::stream::catalog::install_credentials(
                        &ctx,
                        credentials
                            .iter()
                            .map(|((user, mechanism), value)| (user.as_str(), mechanism.as_str(), value.as_ref())),
                    );
                    installed_credentials = Some(credentials);
                }
                if registered && !*in_force.borrow() {
                    in_force.send_replace(true);
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(deadline), if !*in_force.borrow() => {
                        tracing::warn!("the controller's metadata is not caught up within {ACLS_WAIT:?}: serving with the ACL bindings this node knows");
                        in_force.send_replace(true);
                    }
                    changed = metadata.changed() => if changed.is_err() { return },
                }
            }
        }
        .in_current_span(),
    )
}

/// How long a starting node waits for its ACL bindings before it serves anyway.
pub const ACLS_WAIT: Duration = Duration::from_secs(10);

pub fn spawn_follow(parts: StreamParts, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(follow_streams(parts, shutdown).in_current_span())
}
