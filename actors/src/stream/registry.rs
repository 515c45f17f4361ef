//! The node's streams: their definitions (persisted in the `StateStore`), one
//! `PartitionReplica` actor per partition, and the filters of bound streams that every
//! MQTT publish is matched against.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use ractor::{Actor, ActorRef};
use tidewater_storage::{LogStore, PartitionId, StateStore};
use tokio::sync::watch;

use crate::mqtt::message::Message;
use crate::mqtt::persist;
use crate::mqtt::trie::SubscriptionTrie;
use crate::stream::def::{PartitionStrategy, StreamDef, StreamDefError, StreamKind, partition_hash};
use crate::stream::partition::{DurableNotice, MqttRecord, PartitionArgs, PartitionMsg, PartitionReplica};
use crate::stream::replicated::ReplicaView;

/// Stream definitions: name → [`StreamDef`].
pub const STREAMS: &str = "streams";
/// How long a partition has to write what it holds when the node stops.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Record batches are cut at about this size.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// the definition is invalid
    #[error(transparent)]
    Invalid(#[from] StreamDefError),
    /// a stream with that name exists
    #[error("stream {0} already exists")]
    Exists(String),
    /// no stream with that name
    #[error("stream {0} does not exist")]
    Unknown(String),
    /// partitions can only be added
    #[error("stream {name} has {current} partitions; the new count must be larger")]
    PartitionsNotIncreased {
        /// the stream
        name: String,
        /// its partition count
        current: u32,
    },
    /// storage failed
    #[error("storage: {0}")]
    Storage(String),
    /// a partition actor could not start
    #[error("cannot start partition: {0}")]
    Spawn(String),
    /// a stream of this node alone asked for more than one replica
    #[error(
        "stream {name}: replication_factor {replication_factor} needs a cluster (cluster.voters naming other nodes); \
         a stream of one node has replication_factor 1"
    )]
    NotReplicated {
        /// the stream
        name: String,
        /// what it asked for
        replication_factor: u16,
    },
    /// the change belongs to the cluster's controller, not to this node's registry
    #[error("stream {0} belongs to the cluster: change it through the controller")]
    Replicated(String),
    /// this node's controller replica does not lead (the leader it knows, if any)
    #[error("this node is not the controller (controller {0:?})")]
    NotController(Option<u64>),
    /// the cluster cannot take the change now (no controller, not enough nodes, a timeout)
    #[error("{0}")]
    Unavailable(String),
    /// what a stream is cannot change once it exists
    #[error("stream {name}: {field} cannot change after the stream is created")]
    Immutable {
        /// the stream
        name: String,
        /// what the change touched
        field: &'static str,
    },
    /// replica sets an operator assigned that cannot be (unknown or repeated nodes, sizes
    /// that differ, a count that is not the partitions')
    #[error("invalid replica assignment: {0}")]
    InvalidAssignment(String),
    /// more replicas than nodes
    #[error("replication factor {wanted} is larger than the {nodes} registered nodes")]
    ReplicationFactor {
        /// asked for
        wanted: u16,
        /// nodes the controller knows
        nodes: usize,
    },
}

/// One partition as readers and writers see it.
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    /// Which partition.
    pub id: PartitionId,
    /// Its single writer.
    pub actor: ActorRef<PartitionMsg>,
    /// Its high watermark (readers wait on changes for long polls).
    pub high_watermark: watch::Receiver<i64>,
    /// Its replication, for a stream of the cluster (`None`: a single node's stream).
    pub replica: Option<ReplicaView>,
}

impl PartitionHandle {
    /// The high watermark the partition published: consumers read below it. Never below
    /// `log_start` (a log that restarted past it has nothing to read before its start).
    pub fn committed_end(&self, log_start: i64) -> i64 {
        (*self.high_watermark.borrow()).max(log_start)
    }
}

/// A live stream.
#[derive(Debug)]
pub struct Stream {
    /// Its definition.
    pub def: StreamDef,
    /// Its partitions, by index.
    pub partitions: Vec<PartitionHandle>,
    round_robin: AtomicU32,
}

impl Stream {
    /// Whether the stream belongs to the cluster (its partitions are raft groups whose replica
    /// sets the controller keeps), not to this node alone.
    pub fn replicated(&self) -> bool {
        self.partitions.first().is_some_and(|partition| partition.replica.is_some())
    }
}

/// What [`StreamRegistry::ingest_mqtt`] did with a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingest {
    /// Appends requested that will answer their notice.
    pub appends: usize,
    /// Appends that could not be requested (the partition is not running).
    pub refused: usize,
}

/// The node's streams.
pub struct StreamRegistry {
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    bound: RwLock<SubscriptionTrie<String, ()>>,
    state_store: Arc<dyn StateStore>,
    log_store: Arc<dyn LogStore>,
    /// Serialises create/delete/extend so that concurrent admin calls do not interleave.
    admin: tokio::sync::Mutex<()>,
    /// The node's span, for the partition actors.
    span: tracing::Span,
}

impl std::fmt::Debug for StreamRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRegistry").field("streams", &self.streams.read().len()).finish()
    }
}

impl StreamRegistry {
    /// An empty registry over the node's stores.
    pub fn new(state_store: Arc<dyn StateStore>, log_store: Arc<dyn LogStore>) -> Self {
        Self {
            streams: RwLock::new(BTreeMap::new()),
            bound: RwLock::new(SubscriptionTrie::default()),
            state_store,
            log_store,
            admin: tokio::sync::Mutex::new(()),
            span: tracing::Span::current(),
        }
    }

    /// Starts the streams stored in the state store, then creates the declared ones that are missing.
    pub async fn restore(&self, declared: &[StreamDef]) -> Result<usize, StreamError> {
        let stored = self.state_store.scan_prefix(STREAMS, &[]).map_err(|e| StreamError::Storage(e.to_string()))?;
        for (_, value) in stored {
            let def: StreamDef = persist::decode(STREAMS, &value).map_err(|e| StreamError::Storage(e.to_string()))?;
            self.start(def).await?;
        }
        for def in declared {
            if self.get(&def.name).is_none() {
                self.create(def.clone()).await?;
            } else if self.get(&def.name).is_some_and(|s| s.def != *def) {
                tracing::warn!(stream = %def.name, "declared stream differs from the stored one; the stored one is kept");
            }
        }
        Ok(self.streams.read().len())
    }

    /// Creates a stream.
    pub async fn create(&self, def: StreamDef) -> Result<Arc<Stream>, StreamError> {
        def.validate()?;
        if def.replication_factor != 1 {
            return Err(StreamError::NotReplicated { name: def.name, replication_factor: def.replication_factor });
        }
        let _admin = self.admin.lock().await;
        if self.get(&def.name).is_some() {
            return Err(StreamError::Exists(def.name));
        }
        self.state_store
            .put(STREAMS, def.name.as_bytes(), &persist::encode(&def))
            .map_err(|e| StreamError::Storage(e.to_string()))?;
        tracing::info!(stream = %def.name, kind = ?def.kind, partitions = def.partitions, "stream created");
        self.start(def).await
    }

    async fn start(&self, def: StreamDef) -> Result<Arc<Stream>, StreamError> {
        let mut partitions: Vec<PartitionHandle> = Vec::with_capacity(def.partitions as usize);
        for index in 0..def.partitions {
            match self.start_partition(&def.name, index).await {
                Ok(partition) => partitions.push(partition),
                Err(error) => {
                    // a stream starts whole or not at all
                    for started in &partitions {
                        let _ = started.actor.drain_and_wait(Some(SHUTDOWN_TIMEOUT)).await;
                    }
                    return Err(error);
                }
            }
        }
        let stream = Arc::new(Stream { def, partitions, round_robin: AtomicU32::new(0) });
        if let (StreamKind::Bound, Some(filter)) = (stream.def.kind, &stream.def.filter) {
            self.bound.write().insert(filter, stream.def.name.clone(), ());
        }
        self.streams.write().insert(stream.def.name.clone(), Arc::clone(&stream));
        Ok(stream)
    }

    async fn start_partition(&self, stream: &str, partition: u32) -> Result<PartitionHandle, StreamError> {
        let id = PartitionId { stream: stream.to_string(), partition };
        let (high_watermark, receiver) = watch::channel(0);
        let args = PartitionArgs {
            id: id.clone(),
            store: Arc::clone(&self.log_store),
            high_watermark,
            max_batch_bytes: MAX_BATCH_BYTES,
            span: self.span.clone(),
        };
        let (actor, _) = Actor::spawn(None, PartitionReplica, args)
            .await
            .map_err(|e| StreamError::Spawn(crate::startup_error(e)))?;
        Ok(PartitionHandle { id, actor, high_watermark: receiver, replica: None })
    }

    /// Serves a stream of the cluster whose partitions the caller started (their writers
    /// and, where this node holds one, their raft replicas). Its definition lives in the
    /// controller's log, not in this node's state store.
    pub async fn adopt(&self, def: StreamDef, partitions: Vec<PartitionHandle>) -> Arc<Stream> {
        let _admin = self.admin.lock().await;
        let stream = Arc::new(Stream { def, partitions, round_robin: AtomicU32::new(0) });
        if let (StreamKind::Bound, Some(filter)) = (stream.def.kind, &stream.def.filter) {
            self.bound.write().insert(filter, stream.def.name.clone(), ());
        }
        tracing::info!(stream = %stream.def.name, partitions = stream.partitions.len(), "cluster stream served");
        self.streams.write().insert(stream.def.name.clone(), Arc::clone(&stream));
        stream
    }

    /// Stops serving a stream of the cluster (the caller stops its actors and removes its data).
    pub async fn release(&self, name: &str) -> Option<Arc<Stream>> {
        let _admin = self.admin.lock().await;
        let stream = self.streams.write().remove(name)?;
        if let (StreamKind::Bound, Some(filter)) = (stream.def.kind, &stream.def.filter) {
            self.bound.write().remove(filter, &stream.def.name);
        }
        Some(stream)
    }

    /// Deletes a stream of this node and its data.
    pub async fn delete(&self, name: &str) -> Result<(), StreamError> {
        let _admin = self.admin.lock().await;
        if self.get(name).is_some_and(|stream| stream.replicated()) {
            return Err(StreamError::Replicated(name.to_string()));
        }
        let stream = self.streams.write().remove(name).ok_or_else(|| StreamError::Unknown(name.to_string()))?;
        if let (StreamKind::Bound, Some(filter)) = (stream.def.kind, &stream.def.filter) {
            self.bound.write().remove(filter, &stream.def.name);
        }
        for partition in &stream.partitions {
            partition.actor.stop(None);
            self.log_store.delete_partition(&partition.id).map_err(|e| StreamError::Storage(e.to_string()))?;
        }
        self.state_store.delete(STREAMS, name.as_bytes()).map_err(|e| StreamError::Storage(e.to_string()))?;
        tracing::info!(stream = %name, "stream deleted");
        Ok(())
    }

    /// Changes a stream of this node: its retention (applied from the next retention pass)
    /// or its partition count (only up); the partitions it has run on undisturbed.
    pub async fn alter(&self, def: StreamDef) -> Result<(), StreamError> {
        let _admin = self.admin.lock().await;
        let name = def.name.clone();
        let current = self.get(&name).ok_or_else(|| StreamError::Unknown(name.clone()))?;
        if current.replicated() {
            return Err(StreamError::Replicated(name));
        }
        current.def.check_change(&def)?;
        let mut partitions = current.partitions.clone();
        for index in current.def.partitions..def.partitions {
            partitions.push(self.start_partition(&name, index).await?);
        }
        self.state_store
            .put(STREAMS, name.as_bytes(), &persist::encode(&def))
            .map_err(|e| StreamError::Storage(e.to_string()))?;
        tracing::info!(stream = %name, partitions = def.partitions, retention_ms = ?def.retention_ms,
            retention_bytes = ?def.retention_bytes, "stream changed");
        let stream = Arc::new(Stream { def, partitions, round_robin: AtomicU32::new(0) });
        self.streams.write().insert(name, stream);
        Ok(())
    }

    /// A stream by name.
    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.read().get(name).cloned()
    }

    /// Every stream, by name.
    pub fn list(&self) -> Vec<Arc<Stream>> {
        self.streams.read().values().cloned().collect()
    }

    /// Appends an MQTT message to every bound stream whose filter matches its topic; each
    /// append that carries `notice` answers it once durable.
    pub fn ingest_mqtt(&self, message: &Message, notice: &dyn Fn() -> Option<DurableNotice>) -> Ingest {
        let mut names = Vec::new();
        self.bound.read().for_each_match(&message.topic, |name, _| names.push(name.clone()));
        let mut ingest = Ingest::default();
        if names.is_empty() {
            return ingest;
        }
        let record = mqtt_record(message);
        for name in names {
            let Some(stream) = self.get(&name) else { continue };
            let index = match stream.def.partition_strategy {
                PartitionStrategy::Topic => partition_hash(message.topic.as_bytes()),
                PartitionStrategy::ClientId => partition_hash(message.publisher.as_bytes()),
                PartitionStrategy::RoundRobin => stream.round_robin.fetch_add(1, Ordering::Relaxed),
            } % stream.def.partitions;
            let partition = &stream.partitions[index as usize];
            let notice = notice();
            let answers = notice.is_some();
            match partition.actor.cast(PartitionMsg::AppendMqtt(record.clone(), notice)) {
                Ok(()) => ingest.appends += usize::from(answers),
                Err(_) => {
                    // the partition's actor has stopped: this append will never happen, so the
                    // publish must not be acknowledged as if it had
                    tracing::error!(stream = %name, partition = index, "partition is not running; append refused");
                    ingest.refused += 1;
                }
            }
        }
        ingest
    }

    /// Stops every partition actor after it has written what it holds (node shutdown).
    pub async fn shutdown(&self) {
        for stream in self.list() {
            for partition in &stream.partitions {
                let _ = partition.actor.drain_and_wait(Some(SHUTDOWN_TIMEOUT)).await;
            }
        }
    }

    /// Applies each stream's retention (called periodically).
    pub fn apply_retention(&self, now_ms: i64) {
        for stream in self.list() {
            if stream.def.retention_ms.is_none() && stream.def.retention_bytes.is_none() {
                continue;
            }
            for partition in &stream.partitions {
                let retention =
                    tidewater_storage::Retention { ms: stream.def.retention_ms, bytes: stream.def.retention_bytes };
                let _ = partition.actor.cast(PartitionMsg::ApplyRetention { now_ms, retention });
            }
        }
    }
}

/// The record an MQTT message becomes: key = topic, value = payload, headers = MQTT metadata.
pub fn mqtt_record(message: &Message) -> MqttRecord {
    let mut headers: Vec<(Cow<'static, str>, Bytes)> = Vec::with_capacity(4 + message.properties.user_properties.len());
    headers.push((
        Cow::Borrowed("mqtt.qos"),
        Bytes::from_static(["0", "1", "2"][usize::from(message.qos.min(2))].as_bytes()),
    ));
    headers.push((Cow::Borrowed("mqtt.retain"), Bytes::from_static(if message.retain { b"true" } else { b"false" })));
    headers.push((Cow::Borrowed("mqtt.client_id"), Bytes::copy_from_slice(message.publisher.as_bytes())));
    if let Some(content_type) = &message.properties.content_type {
        headers.push((Cow::Borrowed("mqtt.content_type"), Bytes::copy_from_slice(content_type.as_bytes())));
    }
    for (key, value) in &message.properties.user_properties {
        headers.push((Cow::Owned(key.clone()), Bytes::copy_from_slice(value.as_bytes())));
    }
    MqttRecord {
        key: Bytes::copy_from_slice(message.topic.as_bytes()),
        value: message.payload.clone(),
        headers,
        timestamp_ms: message.received_at_ms,
    }
}
