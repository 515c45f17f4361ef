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

use futures::future::BoxFuture;
use ractor::{Actor, ActorRef};
use tidewater_actors::NodeContext;
use tidewater_actors::mqtt::persist;
use tidewater_actors::stream::catalog::{Broker, ClusterCatalog};
use tidewater_actors::stream::def::StreamDef;
use tidewater_actors::stream::registry::{PartitionHandle, StreamError};
use tidewater_actors::stream::replicated::{ReplicaView, ReplicatedArgs, ReplicatedPartition};
use tidewater_cluster::controller::{ClusterMetadata, MetadataCommand, StreamRecord, encode_command};
use tidewater_cluster::data_plane::{Forwarder, GroupId, PeerLinks};
use tidewater_cluster::membership::Members;
use tidewater_cluster::placement;
use tidewater_cluster::raft::RaftJournal;
use tidewater_cluster::raft::group::{GroupRouter, RaftReplica, RaftReplicaArgs, RaftReplicaMsg};
use tidewater_cluster::raft::{AckOn, Leadership, Refusal, ReplicaOptions};
use tidewater_storage::PartitionId;
use tokio::sync::watch;
use tracing::Instrument;

/// One raft tick of a partition (elections after 10 to 20 ticks without a leader).
const TICK: Duration = Duration::from_millis(50);
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
    /// the streams of the cluster this node serves
    pub served: watch::Receiver<BTreeSet<String>>,
    /// time, for command timestamps
    pub clock: Arc<dyn tidewater_cluster::seams::Clock>,
}

impl NodeCatalog {
    /// Proposes `command` on the node whose controller replica leads (this one or another:
    /// any node takes admin requests), following one redirect.
    async fn propose(&self, command: &MetadataCommand) -> Result<i64, StreamError> {
        let batch = encode_command(command, self.clock.now_millis());
        let mut leader = self.controller_leadership.borrow().and_then(|leadership| leadership.leader);
        for _ in 0..2 {
            let Some(node) = leader else { break };
            let answer = self.forwarder.propose(node, GroupId::Controller, batch.clone(), AckOn::Commit).await;
            match answer {
                Ok(placed) => return Ok(placed.base_offset),
                Err(Refusal::NotLeader { leader: Some(next) }) if next != node => leader = Some(next),
                Err(Refusal::NotLeader { .. }) => break,
                Err(refusal) => {
                    return Err(StreamError::Unavailable(format!("the controller did not commit: {refusal}")));
                }
            }
        }
        Err(StreamError::NotController(None))
    }

    /// Waits until this node's metadata has applied `offset` and `served` holds for it.
    async fn settle(&self, offset: i64, served: impl Fn(&BTreeSet<String>) -> bool) -> Result<(), StreamError> {
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

    fn create(&self, def: StreamDef) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            let name = def.name.clone();
            let (registered, live): (Vec<u64>, BTreeSet<u64>) = {
                let metadata = self.metadata.borrow();
                if metadata.streams.contains_key(&name) {
                    return Err(StreamError::Exists(name));
                }
                (metadata.nodes.keys().copied().collect(), self.members.borrow().keys().copied().collect())
            };
            let nodes: Vec<u64> = registered.into_iter().filter(|node| live.contains(node)).collect();
            let factor = usize::from(def.replication_factor);
            if nodes.len() < factor {
                return Err(StreamError::ReplicationFactor { wanted: def.replication_factor, nodes: nodes.len() });
            }
            let replicas =
                (0..def.partitions).map(|partition| placement::replica_set(&name, partition, &nodes, factor)).collect();
            let command = MetadataCommand::CreateStream {
                name: name.clone(),
                definition: persist::encode(&def).into(),
                replicas,
            };
            let offset = self.propose(&command).await?;
            self.settle(offset, |served| served.contains(&name)).await?;
            // a stream created concurrently under the same name won; this one changed nothing
            let created = self.metadata.borrow().streams.get(&name).map(|record| record.definition.clone());
            match created {
                Some(definition) if definition.as_ref() == persist::encode(&def).as_slice() => Ok(()),
                _ => Err(StreamError::Exists(name)),
            }
        })
    }

    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), StreamError>> {
        Box::pin(async move {
            if !self.metadata.borrow().streams.contains_key(&name) {
                return Err(StreamError::Unknown(name));
            }
            let offset = self.propose(&MetadataCommand::DeleteStream { name: name.clone() }).await?;
            self.settle(offset, |served| !served.contains(&name)).await
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
    /// published: the streams served
    pub served: watch::Sender<BTreeSet<String>>,
}

/// A stream of the cluster served here: its record (to notice a change) and its replicas.
struct Served {
    record: StreamRecord,
    replicas: Vec<(GroupId, ActorRef<RaftReplicaMsg>)>,
}

/// The streams of the cluster served on this node, until `shutdown`; then their replicas stop.
pub async fn follow_streams(parts: StreamParts, mut shutdown: watch::Receiver<bool>) {
    let mut metadata = parts.metadata.clone();
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    loop {
        let now = metadata.borrow_and_update().clone();
        for name in served.keys().cloned().collect::<Vec<_>>() {
            let current = now.streams.get(&name);
            if current.is_none_or(|record| record.definition != served[&name].record.definition)
                && let Some(gone) = served.remove(&name)
            {
                release(&parts, &name, gone, true).await;
            }
        }
        for (name, record) in &now.streams {
            if served.contains_key(name) {
                continue;
            }
            match serve(&parts, name, record).await {
                Ok(replicas) => {
                    served.insert(name.clone(), Served { record: record.clone(), replicas });
                }
                Err(error) => tracing::error!(stream = %name, %error, "cannot serve a stream of the cluster"),
            }
        }
        parts.served.send_replace(served.keys().cloned().collect());
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            changed = metadata.changed() => if changed.is_err() { break },
        }
    }
    for (name, gone) in std::mem::take(&mut served) {
        release(&parts, &name, gone, false).await;
    }
}

/// Starts a stream's replicas (where this node holds one) and writers, and serves it.
async fn serve(
    parts: &StreamParts,
    name: &str,
    record: &StreamRecord,
) -> Result<Vec<(GroupId, ActorRef<RaftReplicaMsg>)>, String> {
    let def: StreamDef = persist::decode(DEFINITION_SPACE, &record.definition).map_err(|error| error.to_string())?;
    let ctx = &parts.ctx;
    let mut handles = Vec::with_capacity(record.partitions.len());
    let mut replicas = Vec::new();
    for (index, partition) in record.partitions.iter().enumerate() {
        let id = PartitionId { stream: name.to_string(), partition: index as u32 };
        let group = GroupId::Partition { stream: name.to_string(), partition: index as i32 };
        let (high_watermark_sender, high_watermark) = watch::channel(0);
        let (leadership_sender, leadership) = watch::channel(None);
        let raft = if partition.replicas.contains(&ctx.node_id) {
            let args = RaftReplicaArgs {
                group: group.clone(),
                partition: id.clone(),
                options: ReplicaOptions {
                    preferred_leader: partition.replicas.first().copied(),
                    ..ReplicaOptions::new(ctx.node_id, ctx.rng.next_u64())
                },
                voters: partition.replicas.clone(),
                tick: TICK,
                log: Arc::clone(&ctx.log_store),
                state: Arc::clone(&ctx.state_store),
                transport: parts.links.clone(),
                high_watermark: high_watermark_sender,
                leadership: leadership_sender,
            };
            let (replica, _) = Actor::spawn(None, RaftReplica, args).await.map_err(|error| error.to_string())?;
            parts.router.insert(group.clone(), replica.clone());
            replicas.push((group, replica.clone()));
            Some(replica)
        } else {
            None
        };
        let view = ReplicaView { replicas: partition.replicas.clone(), leadership, raft };
        let args = ReplicatedArgs {
            id: id.clone(),
            view: view.clone(),
            forwarder: Arc::clone(&parts.forwarder),
            max_batch_bytes: MAX_BATCH_BYTES,
            span: ctx.span.clone(),
        };
        let (actor, _) = Actor::spawn(None, ReplicatedPartition, args).await.map_err(|error| error.to_string())?;
        handles.push(PartitionHandle { id, actor, high_watermark, replica: Some(view) });
    }
    let held = replicas.len();
    ctx.streams.adopt(def, handles).await;
    tracing::info!(stream = %name, replicas_here = held, "serving a stream of the cluster");
    Ok(replicas)
}

/// Stops serving a stream; `forget` removes this node's data of it (the stream was deleted).
async fn release(parts: &StreamParts, name: &str, gone: Served, forget: bool) {
    let ctx = &parts.ctx;
    if let Some(stream) = ctx.streams.release(name).await {
        for partition in &stream.partitions {
            let _ = partition.actor.drain_and_wait(Some(Duration::from_secs(2))).await;
        }
    }
    for (group, replica) in gone.replicas {
        parts.router.remove(&group);
        let _ = replica.stop_and_wait(None, Some(Duration::from_secs(2))).await;
    }
    if forget {
        for partition in 0..gone.record.partitions.len() as u32 {
            let id = PartitionId { stream: name.to_string(), partition };
            if let Err(error) = RaftJournal::forget(&id, ctx.state_store.as_ref()) {
                tracing::warn!(stream = %name, partition, %error, "cannot remove a deleted partition's raft records");
            }
            if let Err(error) = ctx.log_store.delete_partition(&id) {
                tracing::warn!(stream = %name, partition, %error, "cannot remove a deleted partition's log");
            }
        }
        tracing::info!(stream = %name, "stream of the cluster deleted");
    }
}

/// Starts [`follow_streams`] in the current span.
pub fn spawn_follow(parts: StreamParts, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(follow_streams(parts, shutdown).in_current_span())
}
