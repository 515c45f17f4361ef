//! The metadata every node agrees on (nodes, streams, replica sets), as a state machine over
//! the controller group's log.
//!
//! The controller is a raft group like a partition (KRaft's design: the metadata log is a
//! log of record batches). Each command is one record whose value is a version byte and the
//! command in bincode. Every node applies the committed commands in order to the same
//! [`ClusterMetadata`]; a command that does not apply (a stream that exists already, a
//! replica set naming no node) fails the same way everywhere and changes nothing, so the
//! proposer learns the outcome from applying it like everyone else.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidewater_storage::{NewRecord, StorageError, build_record_batch, decode_records};

/// The format of a command record.
const COMMAND_VERSION: u8 = 1;

/// One change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A node joined, or came back with a new generation.
    RegisterNode {
        /// the node id
        id: u64,
        /// its generation
        generation: u64,
    },
    /// A node was decommissioned: it holds no replicas any more.
    RemoveNode {
        /// the node id
        id: u64,
    },
    /// A stream and the replica set of each partition.
    CreateStream {
        /// the stream (Kafka topic) name
        name: String,
        /// the stream's definition, opaque here (the streams layer encodes it)
        definition: Bytes,
        /// one replica set per partition; the first node is the preferred leader
        replicas: Vec<Vec<u64>>,
        /// the sets were assigned by an operator: placement keeps them (it replaces only a
        /// node dead or decommissioned)
        pinned: bool,
    },
    /// A stream goes, with its partitions.
    DeleteStream {
        /// the stream name
        name: String,
    },
    /// A partition's replica set changes (placement after a join, a death or a decommission):
    /// the target its raft group moves to, one membership change at a time.
    SetReplicas {
        /// the stream name
        name: String,
        /// the partition
        partition: u32,
        /// the new set; the first is the preferred leader
        replicas: Vec<u64>,
    },
    /// A partition's raft group reached the replica set of `replica_epoch`: replicas outside
    /// it may now stop and remove their data.
    ReplicasSettled {
        /// the stream name
        name: String,
        /// the partition
        partition: u32,
        /// the replica epoch whose set the group's voters now are
        replica_epoch: u64,
    },
    /// A partition's replica became its leader in `term` (informational, as gossip is: nodes
    /// outside the replica set tell Kafka clients and forward MQTT batches by it; raft alone
    /// decides who leads).
    Led {
        /// the stream name
        name: String,
        /// the partition
        partition: u32,
        /// the leader's node id
        leader: u64,
        /// its raft term (the Kafka leader epoch)
        term: u64,
    },
    /// A node is to hold no replicas: placement moves them elsewhere.
    Decommission {
        /// the node id
        id: u64,
    },
    /// A stream's definition changes (its retention at run time, its partition count): the
    /// partitions it has keep their replicas and data; `added` holds the replica set of each
    /// new partition, numbered after the existing ones.
    AlterStream {
        /// the stream name
        name: String,
        /// the new definition (the streams layer checked it against the old one)
        definition: Bytes,
        /// one replica set per new partition; the first node is the preferred leader
        added: Vec<Vec<u64>>,
        /// the added sets were assigned by an operator
        pinned: bool,
    },
    /// A partition's leader in `term` reports its in-sync replicas (Kafka's ISR; informational,
    /// as `Led` is, which it also records: acknowledgements wait for a raft majority, never
    /// for this set).
    InSync {
        /// the stream name
        name: String,
        /// the partition
        partition: u32,
        /// the leader's node id
        leader: u64,
        /// its raft term
        term: u64,
        /// the voters keeping up with it, sorted
        replicas: Vec<u64>,
    },
    /// ACL bindings added and removed (each opaque here: the actors layer encodes them);
    /// the removals apply first.
    ChangeAcls {
        /// bindings added (present already: unchanged)
        add: Vec<Bytes>,
        /// bindings removed (absent: unchanged)
        remove: Vec<Bytes>,
    },
    /// Users' credentials set and removed (Kafka's AlterUserScramCredentials): each is keyed by
    /// the user and a mechanism (`SCRAM-SHA-256`), its value opaque here (the actors layer
    /// encodes it); the removals apply first.
    ChangeCredentials {
        /// (user, mechanism, credential): set, replacing what that user had for that mechanism
        upsert: Vec<(String, String, Bytes)>,
        /// (user, mechanism): removed (absent: unchanged)
        delete: Vec<(String, String)>,
    },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetadataError {
    /// a stream of that name exists
    #[error("stream {0} already exists")]
    StreamExists(String),
    /// no stream of that name
    #[error("unknown stream {0}")]
    UnknownStream(String),
    /// no such partition
    #[error("stream {stream} has no partition {partition}")]
    UnknownPartition {
        /// the stream
        stream: String,
        /// the partition asked for
        partition: u32,
    },
    /// a replica set that is empty, repeats a node or names a node not registered
    #[error("invalid replica set {replicas:?}: {reason}")]
    InvalidReplicas {
        /// the set
        replicas: Vec<u64>,
        /// what is wrong with it
        reason: String,
    },
    /// a node that is not registered
    #[error("unknown node {0}")]
    UnknownNode(u64),
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// the generation it registered with last
    pub generation: u64,
    /// placement moves its replicas away
    #[serde(default)]
    pub decommissioned: bool,
}

/// A stream as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// the streams layer's definition
    pub definition: Bytes,
    /// per partition: the replica set and how many times it changed
    pub partitions: Vec<PartitionRecord>,
    /// the controller log offset of the `CreateStream`: a stream deleted and created again
    /// under its name is another stream (its replicas start empty)
    pub created: i64,
}

/// A partition's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// the replica set; the first is the preferred leader
    pub replicas: Vec<u64>,
    /// grows with every change of the set
    pub replica_epoch: u64,
    /// the set the partition was created with: the membership a new replica's raft log
    /// starts from (the log's own membership changes lead from there to the current one)
    pub initial: Vec<u64>,
    /// whether the partition's raft group reached `replicas` (a replica outside it may go)
    pub settled: bool,
    /// an operator assigned the set: placement replaces only its nodes that are gone or
    /// decommissioned, and does not rebalance it
    pub pinned: bool,
}

impl PartitionRecord {
    /// A new partition on `replicas`.
    fn new(replicas: &[u64], pinned: bool) -> Self {
        Self { replicas: replicas.to_vec(), replica_epoch: 0, initial: replicas.to_vec(), settled: true, pinned }
    }

    /// Whether `node` holds a replica, or must keep the one it holds until the group has
    /// settled on a set without it.
    pub fn keeps(&self, node: u64, held: bool) -> bool {
        self.replicas.contains(&node) || (held && !self.settled)
    }
}

/// Everything the controller's log says, applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    /// registered nodes
    pub nodes: BTreeMap<u64, NodeRecord>,
    /// streams by name
    pub streams: BTreeMap<String, StreamRecord>,
    /// the controller log offset applied last (-1 before any)
    pub applied_offset: i64,
    /// the last leader each partition's replicas reported: (stream, partition) -> (node, term)
    pub leaders: BTreeMap<(String, u32), (u64, u64)>,
    /// the in-sync replicas each partition's leader reported last: (stream, partition) -> (term, set)
    pub in_sync: BTreeMap<(String, u32), (u64, Vec<u64>)>,
    /// the ACL bindings, encoded
    pub acls: std::collections::BTreeSet<Bytes>,
    /// users' credentials by (user, mechanism), encoded
    pub credentials: BTreeMap<(String, String), Bytes>,
}

impl ClusterMetadata {
    /// Metadata before any command.
    pub fn new() -> Self {
        Self { applied_offset: -1, ..Self::default() }
    }

    /// Applies the command at `offset` of the controller log. Commands at or below the
    /// offset applied already are skipped (a replay after a restart).
    pub fn apply(&mut self, offset: i64, command: &MetadataCommand) -> Result<(), MetadataError> {
        if offset <= self.applied_offset {
            return Ok(());
        }
        self.applied_offset = offset;
        match command {
            MetadataCommand::RegisterNode { id, generation } => {
                let decommissioned = self.nodes.get(id).is_some_and(|node| node.decommissioned);
                self.nodes.insert(*id, NodeRecord { generation: *generation, decommissioned });
            }
            MetadataCommand::Led { name, partition, leader, term } => self.led(name, *partition, *leader, *term)?,
            MetadataCommand::InSync { name, partition, leader, term, replicas } => {
                self.led(name, *partition, *leader, *term)?;
                let known = self.in_sync.entry((name.clone(), *partition)).or_insert((*term, replicas.clone()));
                if *term >= known.0 {
                    *known = (*term, replicas.clone());
                }
            }
            MetadataCommand::ChangeAcls { add, remove } => {
                for binding in remove {
                    self.acls.remove(binding);
                }
                self.acls.extend(add.iter().cloned());
            }
            MetadataCommand::ChangeCredentials { upsert, delete } => {
                for key in delete {
                    self.credentials.remove(key);
                }
                for (user, mechanism, credential) in upsert {
                    self.credentials.insert((user.clone(), mechanism.clone()), credential.clone());
                }
            }
            MetadataCommand::Decommission { id } => {
                let node = self.nodes.get_mut(id).ok_or(MetadataError::UnknownNode(*id))?;
                node.decommissioned = true;
            }
            MetadataCommand::ReplicasSettled { name, partition, replica_epoch } => {
                let stream = self.streams.get_mut(name).ok_or_else(|| MetadataError::UnknownStream(name.clone()))?;
                let record = stream
                    .partitions
                    .get_mut(*partition as usize)
                    .ok_or_else(|| MetadataError::UnknownPartition { stream: name.clone(), partition: *partition })?;
                if record.replica_epoch == *replica_epoch {
                    record.settled = true;
                }
            }
            MetadataCommand::RemoveNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return Err(MetadataError::UnknownNode(*id));
                }
            }
            MetadataCommand::CreateStream { name, definition, replicas, pinned } => {
                if self.streams.contains_key(name) {
                    return Err(MetadataError::StreamExists(name.clone()));
                }
                if replicas.is_empty() {
                    return Err(MetadataError::InvalidReplicas {
                        replicas: Vec::new(),
                        reason: "no partitions".into(),
                    });
                }
                for set in replicas {
                    self.check_replicas(set)?;
                }
                let partitions = replicas.iter().map(|set| PartitionRecord::new(set, *pinned)).collect();
                let record = StreamRecord { definition: definition.clone(), partitions, created: offset };
                self.streams.insert(name.clone(), record);
            }
            MetadataCommand::AlterStream { name, definition, added, pinned } => {
                for set in added {
                    self.check_replicas(set)?;
                }
                let stream = self.streams.get_mut(name).ok_or_else(|| MetadataError::UnknownStream(name.clone()))?;
                stream.definition = definition.clone();
                stream.partitions.extend(added.iter().map(|set| PartitionRecord::new(set, *pinned)));
            }
            MetadataCommand::DeleteStream { name } => {
                if self.streams.remove(name).is_none() {
                    return Err(MetadataError::UnknownStream(name.clone()));
                }
                self.leaders.retain(|(stream, _), _| stream != name);
                self.in_sync.retain(|(stream, _), _| stream != name);
            }
            MetadataCommand::SetReplicas { name, partition, replicas } => {
                self.check_replicas(replicas)?;
                let stream = self.streams.get_mut(name).ok_or_else(|| MetadataError::UnknownStream(name.clone()))?;
                let record = stream
                    .partitions
                    .get_mut(*partition as usize)
                    .ok_or_else(|| MetadataError::UnknownPartition { stream: name.clone(), partition: *partition })?;
                if record.replicas != *replicas {
                    record.replicas = replicas.clone();
                    record.replica_epoch += 1;
                    record.settled = false;
                }
            }
        }
        Ok(())
    }

    /// Records a partition's leader in `term` (a report of an older term changes nothing).
    fn led(&mut self, name: &str, partition: u32, leader: u64, term: u64) -> Result<(), MetadataError> {
        if self.streams.get(name).is_none_or(|stream| (partition as usize) >= stream.partitions.len()) {
            return Err(MetadataError::UnknownPartition { stream: name.to_string(), partition });
        }
        let known = self.leaders.entry((name.to_string(), partition)).or_insert((leader, term));
        if term >= known.1 {
            *known = (leader, term);
        }
        Ok(())
    }

    fn check_replicas(&self, set: &[u64]) -> Result<(), MetadataError> {
        let invalid = |reason: &str| MetadataError::InvalidReplicas { replicas: set.to_vec(), reason: reason.into() };
        if set.is_empty() {
            return Err(invalid("empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for node in set {
            if !seen.insert(node) {
                return Err(invalid("a node appears twice"));
            }
            if !self.nodes.contains_key(node) {
                return Err(invalid("names a node that is not registered"));
            }
        }
        Ok(())
    }

    /// The partitions whose replica set holds `node`.
    pub fn replicas_on(&self, node: u64) -> Vec<(String, u32, &PartitionRecord)> {
        self.streams
            .iter()
            .flat_map(|(name, stream)| {
                stream
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, record)| record.replicas.contains(&node))
                    .map(|(partition, record)| (name.clone(), partition as u32, record))
            })
            .collect()
    }
}

/// A command as the record batch the controller group proposes.
pub fn encode_command(command: &MetadataCommand, timestamp_ms: i64) -> Bytes {
    let mut value = vec![COMMAND_VERSION];
    value.extend(bincode::serde::encode_to_vec(command, bincode::config::standard()).unwrap_or_default());
    build_record_batch(&[NewRecord { key: None, value: Some(&value), headers: &[], timestamp_ms }], timestamp_ms)
}

/// The commands of one committed batch of the controller log, with their offsets.
pub fn decode_commands(batch: &[u8]) -> Result<Vec<(i64, MetadataCommand)>, StorageError> {
    let mut commands = Vec::new();
    for record in decode_records(batch)? {
        let value = record.value.unwrap_or_default();
        let command = match value.split_first() {
            Some((&COMMAND_VERSION, rest)) => {
                bincode::serde::decode_from_slice(rest, bincode::config::standard().with_limit::<{ 16 << 20 }>())
                    .map(|(command, _)| command)
                    .map_err(|error| StorageError::CorruptMetadata(format!("metadata command: {error}")))?
            }
            _ => return Err(StorageError::CorruptMetadata("metadata command of an unknown version".into())),
        };
        commands.push((record.offset, command));
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(nodes: &[u64]) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::new();
        for (offset, &id) in nodes.iter().enumerate() {
            metadata.apply(offset as i64, &MetadataCommand::RegisterNode { id, generation: 1 }).unwrap();
        }
        metadata
    }

    #[test]
    fn acl_changes_remove_then_add_and_replay_to_the_same_set() {
        let mut metadata = ClusterMetadata::new();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        metadata.apply(0, &MetadataCommand::ChangeAcls { add: vec![a.clone(), b.clone()], remove: vec![] }).unwrap();
        metadata.apply(1, &MetadataCommand::ChangeAcls { add: vec![a.clone()], remove: vec![a.clone()] }).unwrap();
        metadata.apply(2, &MetadataCommand::ChangeAcls { add: vec![], remove: vec![b.clone()] }).unwrap();
        assert_eq!(metadata.acls, [a].into());
    }

    #[test]
    fn credential_changes_remove_then_set_per_user_and_mechanism() {
        let mut metadata = ClusterMetadata::new();
        let set = |user: &str, mechanism: &str, value: &'static [u8]| {
            (user.to_string(), mechanism.to_string(), Bytes::from_static(value))
        };
        let key = |user: &str, mechanism: &str| (user.to_string(), mechanism.to_string());
        let change = |upsert, delete| MetadataCommand::ChangeCredentials { upsert, delete };
        metadata.apply(0, &change(vec![set("ann", "A", b"1"), set("ann", "B", b"2")], vec![])).unwrap();
        metadata.apply(1, &change(vec![set("ann", "A", b"3")], vec![key("ann", "A")])).unwrap();
        metadata.apply(2, &change(vec![], vec![key("ann", "B"), key("bob", "A")])).unwrap();
        // a replay of an applied offset changes nothing
        metadata.apply(1, &change(vec![], vec![key("ann", "A")])).unwrap();
        assert_eq!(metadata.credentials, [(key("ann", "A"), Bytes::from_static(b"3"))].into());
    }

    #[test]
    fn commands_apply_once_in_order_and_bad_ones_change_nothing() {
        let mut metadata = registered(&[1, 2, 3]);
        let create = MetadataCommand::CreateStream {
            name: "events".into(),
            definition: Bytes::from_static(b"def"),
            replicas: vec![vec![1, 2, 3], vec![2, 3, 1]],
            pinned: false,
        };
        metadata.apply(10, &create).unwrap();
        // a replay of an applied offset is skipped, not an error
        metadata.apply(10, &create).unwrap();
        assert_eq!(metadata.apply(11, &create), Err(MetadataError::StreamExists("events".into())));
        let before = metadata.clone();
        let bad = MetadataCommand::SetReplicas { name: "events".into(), partition: 0, replicas: vec![1, 1] };
        assert!(matches!(metadata.apply(12, &bad), Err(MetadataError::InvalidReplicas { .. })));
        let unknown_node = MetadataCommand::SetReplicas { name: "events".into(), partition: 0, replicas: vec![9] };
        assert!(matches!(metadata.apply(13, &unknown_node), Err(MetadataError::InvalidReplicas { .. })));
        assert_eq!(metadata.streams, before.streams);
        let moved = MetadataCommand::SetReplicas { name: "events".into(), partition: 1, replicas: vec![3, 1] };
        metadata.apply(14, &moved).unwrap();
        assert_eq!(metadata.streams["events"].partitions[1].replicas, vec![3, 1]);
        assert_eq!(metadata.streams["events"].partitions[1].replica_epoch, 1);
        let record = &metadata.streams["events"].partitions[1];
        assert_eq!(record.initial, vec![2, 3, 1], "a new replica's log starts from the set it was created with");
        assert!(!record.settled && record.keeps(2, true) && !record.keeps(2, false));
        // settling names the epoch: an older epoch's report changes nothing
        let stale = MetadataCommand::ReplicasSettled { name: "events".into(), partition: 1, replica_epoch: 0 };
        metadata.apply(15, &stale).unwrap();
        assert!(!metadata.streams["events"].partitions[1].settled);
        let settled = MetadataCommand::ReplicasSettled { name: "events".into(), partition: 1, replica_epoch: 1 };
        metadata.apply(16, &settled).unwrap();
        assert!(metadata.streams["events"].partitions[1].settled);
        assert!(!metadata.streams["events"].partitions[1].keeps(2, true), "node 2 may now remove its replica");
        metadata.apply(17, &MetadataCommand::Decommission { id: 3 }).unwrap();
        assert!(metadata.nodes[&3].decommissioned);
        metadata.apply(18, &MetadataCommand::RegisterNode { id: 3, generation: 2 }).unwrap();
        assert!(metadata.nodes[&3].decommissioned, "a restart does not undo a decommission");
        assert_eq!(metadata.replicas_on(2).len(), 1);
        // an alteration keeps the partitions (and their moves) and appends the added ones
        let bad = MetadataCommand::AlterStream {
            name: "events".into(),
            definition: Bytes::from_static(b"def2"),
            added: vec![vec![1, 9]],
            pinned: true,
        };
        assert!(matches!(metadata.apply(19, &bad), Err(MetadataError::InvalidReplicas { .. })));
        assert_eq!(metadata.streams["events"].definition.as_ref(), b"def");
        let altered = MetadataCommand::AlterStream {
            name: "events".into(),
            definition: Bytes::from_static(b"def2"),
            added: vec![vec![2, 1]],
            pinned: true,
        };
        metadata.apply(20, &altered).unwrap();
        let stream = &metadata.streams["events"];
        assert_eq!((stream.definition.as_ref(), stream.partitions.len(), stream.created), (&b"def2"[..], 3, 10));
        assert_eq!(stream.partitions[1].replicas, vec![3, 1]);
        assert_eq!((stream.partitions[2].initial.as_slice(), stream.partitions[2].replica_epoch), (&[2, 1][..], 0));
        assert!(stream.partitions[2].pinned && !stream.partitions[1].pinned);
        let in_sync = |term, replicas: Vec<u64>| MetadataCommand::InSync {
            name: "events".into(),
            partition: 2,
            leader: 2,
            term,
            replicas,
        };
        metadata.apply(21, &in_sync(4, vec![1, 2])).unwrap();
        metadata.apply(22, &in_sync(3, vec![2])).unwrap();
        assert_eq!(metadata.in_sync[&("events".to_string(), 2)], (4, vec![1, 2]), "an older term's report is stale");
        assert_eq!(metadata.leaders[&("events".to_string(), 2)], (2, 4));
        metadata.apply(23, &MetadataCommand::DeleteStream { name: "events".into() }).unwrap();
        assert!(metadata.in_sync.is_empty() && metadata.leaders.is_empty());
        assert!(metadata.streams.is_empty());
        assert_eq!(metadata.apply(24, &altered), Err(MetadataError::UnknownStream("events".into())));
        metadata.apply(25, &create).unwrap();
        assert_eq!(metadata.streams["events"].created, 25, "created again: another stream");
        assert_eq!(metadata.applied_offset, 25);
    }

    #[test]
    fn commands_round_trip_through_record_batches() {
        let command = MetadataCommand::SetReplicas { name: "s".into(), partition: 4, replicas: vec![2, 1] };
        let mut batch = encode_command(&command, 1_700_000_000_000).to_vec();
        tidewater_storage::patch_for_append(&mut batch, 41, 3);
        assert_eq!(decode_commands(&batch).unwrap(), vec![(41, command)]);
        // a record that is not a command of ours is an error, not a panic
        let junk =
            build_record_batch(&[NewRecord { key: None, value: Some(b"\x09junk"), headers: &[], timestamp_ms: 1 }], 1);
        assert!(decode_commands(&junk).is_err());
    }
}
