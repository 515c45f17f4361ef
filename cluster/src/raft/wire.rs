//! raft-rs messages in our own serde form, for the data plane.
//!
//! raft-rs speaks protobuf (rust-protobuf 2, which has RUSTSEC-2024-0437: unbounded recursion
//! on untrusted input). No protobuf parser ever reads bytes from the network here: a message
//! leaves a node as a [`RaftMessage`] (encoded with bincode) and is rebuilt field by field on
//! arrival. Conf-change entries carry their change as [`ConfChangeForm`]; their protobuf bytes,
//! which raft-rs wants in the entry, are produced by our own encoder on arrival.
//!
//! Message types that are local to a node (`MsgHup`, `MsgBeat`, `MsgPropose`, …) have no wire
//! form: they are refused when a message is built, so a peer cannot inject them.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
    MessageType, Snapshot, SnapshotMetadata,
};
use serde::{Deserialize, Serialize};

/// Why a raft-rs message or entry has no wire form, or a wire form no raft-rs message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A message type that must never cross the network.
    #[error("raft message type {0:?} is local to a node")]
    LocalMessage(MessageType),
    /// A conf-change entry whose bytes are not a conf change (never ours).
    #[error("conf change entry {index} does not decode")]
    BadConfChange {
        /// the entry's raft index
        index: u64,
    },
    /// The legacy single conf change (we only ever propose v2).
    #[error("conf change v1 entries are not used")]
    ConfChangeV1,
    /// One of our own messages between replicas, which raft-rs never sees.
    #[error("{0:?} is not a raft-rs message")]
    NotRaft(RaftMessageKind),
}

/// The message types that travel between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum RaftMessageKind {
    Append,
    AppendResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    Heartbeat,
    HeartbeatResponse,
    TransferLeader,
    TimeoutNow,
    ReadIndex,
    ReadIndexResp,
    RequestPreVote,
    RequestPreVoteResponse,
    /// ours, not raft-rs's: a leader with nothing to do tells its followers it stops
    /// ticking (`term`, and every entry up to `commit` committed), and repeats it now and
    /// then while it sleeps (see `ReplicaCore`'s hibernation)
    Hibernate,
}

impl RaftMessageKind {
    fn from_raft(kind: MessageType) -> Result<Self, WireError> {
        use MessageType as M;
        Ok(match kind {
            M::MsgAppend => Self::Append,
            M::MsgAppendResponse => Self::AppendResponse,
            M::MsgRequestVote => Self::RequestVote,
            M::MsgRequestVoteResponse => Self::RequestVoteResponse,
            M::MsgSnapshot => Self::Snapshot,
            M::MsgHeartbeat => Self::Heartbeat,
            M::MsgHeartbeatResponse => Self::HeartbeatResponse,
            M::MsgTransferLeader => Self::TransferLeader,
            M::MsgTimeoutNow => Self::TimeoutNow,
            M::MsgReadIndex => Self::ReadIndex,
            M::MsgReadIndexResp => Self::ReadIndexResp,
            M::MsgRequestPreVote => Self::RequestPreVote,
            M::MsgRequestPreVoteResponse => Self::RequestPreVoteResponse,
            local @ (M::MsgHup
            | M::MsgBeat
            | M::MsgPropose
            | M::MsgUnreachable
            | M::MsgSnapStatus
            | M::MsgCheckQuorum) => return Err(WireError::LocalMessage(local)),
        })
    }

    fn to_raft(self) -> Result<MessageType, WireError> {
        use MessageType as M;
        Ok(match self {
            Self::Append => M::MsgAppend,
            Self::AppendResponse => M::MsgAppendResponse,
            Self::RequestVote => M::MsgRequestVote,
            Self::RequestVoteResponse => M::MsgRequestVoteResponse,
            Self::Snapshot => M::MsgSnapshot,
            Self::Heartbeat => M::MsgHeartbeat,
            Self::HeartbeatResponse => M::MsgHeartbeatResponse,
            Self::TransferLeader => M::MsgTransferLeader,
            Self::TimeoutNow => M::MsgTimeoutNow,
            Self::ReadIndex => M::MsgReadIndex,
            Self::ReadIndexResp => M::MsgReadIndexResp,
            Self::RequestPreVote => M::MsgRequestPreVote,
            Self::RequestPreVoteResponse => M::MsgRequestPreVoteResponse,
            Self::Hibernate => return Err(WireError::NotRaft(self)),
        })
    }
}

/// One raft message between two replicas of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are raft-rs's `eraftpb::Message` fields
pub struct RaftMessage {
    pub kind: RaftMessageKind,
    pub to: u64,
    pub from: u64,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    #[serde(deserialize_with = "crate::data_plane::frame::bounded_seq")]
    pub entries: Vec<EntryForm>,
    pub commit: u64,
    pub commit_term: u64,
    pub snapshot: Option<SnapshotForm>,
    pub request_snapshot: u64,
    pub reject: bool,
    pub reject_hint: u64,
    pub context: Bytes,
    pub priority: i64,
}

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Application data (for a partition: one RecordBatch; empty for a leader's no-op).
    Normal(Bytes),
    /// A membership change.
    ConfChange(ConfChangeForm),
}

/// One raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct EntryForm {
    pub term: u64,
    pub index: u64,
    pub payload: EntryPayload,
    pub context: Bytes,
}

/// A joint-consensus membership change (raft-rs `ConfChangeV2`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfChangeForm {
    /// 0 auto, 1 implicit, 2 explicit (raft-rs `ConfChangeTransition`)
    pub transition: u8,
    /// (0 add voter | 1 remove | 2 add learner, node id)
    #[serde(deserialize_with = "crate::data_plane::frame::bounded_seq")]
    pub changes: Vec<(u8, u64)>,
    /// opaque to raft
    pub context: Bytes,
}

/// A snapshot's metadata and data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SnapshotForm {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfStateForm,
    pub data: Bytes,
}

/// Voters and learners, current and outgoing (raft-rs `ConfState`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ConfStateForm {
    #[serde(deserialize_with = "crate::data_plane::frame::bounded_seq")]
    pub voters: Vec<u64>,
    #[serde(deserialize_with = "crate::data_plane::frame::bounded_seq")]
    pub learners: Vec<u64>,
    #[serde(deserialize_with = "crate::data_plane::frame::bounded_seq")]
    pub voters_outgoing: Vec<u64>,
    #[serde(deserialize_with = "crate::data_plane::frame::bounded_seq")]
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

impl RaftMessage {
    /// The wire form of a message raft-rs asked us to send.
    pub fn from_raft(message: &Message) -> Result<Self, WireError> {
        Ok(Self {
            kind: RaftMessageKind::from_raft(message.get_msg_type())?,
            to: message.to,
            from: message.from,
            term: message.term,
            log_term: message.log_term,
            index: message.index,
            entries: message.get_entries().iter().map(EntryForm::from_raft).collect::<Result<_, _>>()?,
            commit: message.commit,
            commit_term: message.commit_term,
            snapshot: message.snapshot.as_ref().map(SnapshotForm::from_raft),
            request_snapshot: message.request_snapshot,
            reject: message.reject,
            reject_hint: message.reject_hint,
            context: message.context.clone(),
            priority: message.priority,
        })
    }

    /// The raft-rs message to step (our own kinds have none).
    pub fn to_raft(&self) -> Result<Message, WireError> {
        let mut message = Message::default();
        message.set_msg_type(self.kind.to_raft()?);
        message.to = self.to;
        message.from = self.from;
        message.term = self.term;
        message.log_term = self.log_term;
        message.index = self.index;
        message.set_entries(self.entries.iter().map(EntryForm::to_raft).collect::<Vec<_>>().into());
        message.commit = self.commit;
        message.commit_term = self.commit_term;
        if let Some(snapshot) = &self.snapshot {
            message.set_snapshot(snapshot.to_raft());
        }
        message.request_snapshot = self.request_snapshot;
        message.reject = self.reject;
        message.reject_hint = self.reject_hint;
        message.context = self.context.clone();
        message.priority = self.priority;
        Ok(message)
    }

    /// A message of our own between two replicas of a group (no raft-rs message has it).
    pub fn own(kind: RaftMessageKind, from: u64, to: u64, term: u64, commit: u64) -> Self {
        Self {
            kind,
            to,
            from,
            term,
            log_term: 0,
            index: 0,
            entries: Vec::new(),
            commit,
            commit_term: 0,
            snapshot: None,
            request_snapshot: 0,
            reject: false,
            reject_hint: 0,
            context: Bytes::new(),
            priority: 0,
        }
    }
}

impl EntryForm {
    /// The wire form of a raft-rs entry.
    pub fn from_raft(entry: &Entry) -> Result<Self, WireError> {
        let payload = match entry.get_entry_type() {
            EntryType::EntryNormal => EntryPayload::Normal(entry.data.clone()),
            EntryType::EntryConfChangeV2 => {
                // these bytes were written by raft-rs or by `to_raft` below on this node
                let change = ConfChangeV2::parse_from_bytes(&entry.data)
                    .map_err(|_| WireError::BadConfChange { index: entry.index })?;
                EntryPayload::ConfChange(ConfChangeForm::from_raft(&change))
            }
            EntryType::EntryConfChange => return Err(WireError::ConfChangeV1),
        };
        Ok(Self { term: entry.term, index: entry.index, payload, context: entry.context.clone() })
    }

    /// The raft-rs entry.
    pub fn to_raft(&self) -> Entry {
        let mut entry = Entry::default();
        entry.term = self.term;
        entry.index = self.index;
        entry.context = self.context.clone();
        match &self.payload {
            EntryPayload::Normal(data) => entry.data = data.clone(),
            EntryPayload::ConfChange(change) => {
                entry.set_entry_type(EntryType::EntryConfChangeV2);
                entry.data = change.to_raft().write_to_bytes().map(Bytes::from).unwrap_or_default();
            }
        }
        entry
    }
}

impl ConfChangeForm {
    /// The serde form of a raft-rs conf change.
    pub fn from_raft(change: &ConfChangeV2) -> Self {
        Self {
            transition: change.get_transition() as u8,
            changes: change
                .get_changes()
                .iter()
                .map(|single| (single.get_change_type() as u8, single.node_id))
                .collect(),
            context: change.context.clone(),
        }
    }

    /// The raft-rs conf change (unknown codes read as the first variant's neighbour: a
    /// removal, never an addition nobody asked for).
    pub fn to_raft(&self) -> ConfChangeV2 {
        let mut change = ConfChangeV2::default();
        change.set_transition(match self.transition {
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            _ => ConfChangeTransition::Auto,
        });
        let singles: Vec<ConfChangeSingle> = self
            .changes
            .iter()
            .map(|&(kind, node_id)| {
                let mut single = ConfChangeSingle::default();
                single.set_change_type(match kind {
                    0 => ConfChangeType::AddNode,
                    2 => ConfChangeType::AddLearnerNode,
                    _ => ConfChangeType::RemoveNode,
                });
                single.node_id = node_id;
                single
            })
            .collect();
        change.set_changes(singles.into());
        change.context = self.context.clone();
        change
    }
}

impl SnapshotForm {
    fn from_raft(snapshot: &Snapshot) -> Self {
        let metadata = snapshot.get_metadata();
        Self {
            index: metadata.index,
            term: metadata.term,
            conf_state: ConfStateForm::from_raft(metadata.get_conf_state()),
            data: snapshot.data.clone(),
        }
    }

    fn to_raft(&self) -> Snapshot {
        let mut metadata = SnapshotMetadata::default();
        metadata.index = self.index;
        metadata.term = self.term;
        metadata.set_conf_state(self.conf_state.to_raft());
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot.data = self.data.clone();
        snapshot
    }
}

impl ConfStateForm {
    /// The serde form of a raft-rs conf state.
    pub fn from_raft(state: &ConfState) -> Self {
        Self {
            voters: state.voters.clone(),
            learners: state.learners.clone(),
            voters_outgoing: state.voters_outgoing.clone(),
            learners_next: state.learners_next.clone(),
            auto_leave: state.auto_leave,
        }
    }

    /// The raft-rs conf state.
    pub fn to_raft(&self) -> ConfState {
        let mut state = ConfState::default();
        state.voters = self.voters.clone();
        state.learners = self.learners.clone();
        state.voters_outgoing = self.voters_outgoing.clone();
        state.learners_next = self.learners_next.clone();
        state.auto_leave = self.auto_leave;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        message.from = 1;
        message.term = 7;
        message.log_term = 6;
        message.index = 41;
        message.commit = 40;
        let mut data = Entry::default();
        data.term = 7;
        data.index = 42;
        data.data = Bytes::from_static(b"a record batch");
        let mut change = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = 4;
        change.set_changes(vec![single].into());
        let mut conf = Entry::default();
        conf.set_entry_type(EntryType::EntryConfChangeV2);
        conf.term = 7;
        conf.index = 43;
        conf.data = change.write_to_bytes().unwrap().into();
        message.set_entries(vec![data, conf].into());
        message
    }

    #[test]
    fn a_message_survives_the_wire_form_and_bincode() {
        let message = sample();
        let wire = RaftMessage::from_raft(&message).unwrap();
        let bytes = bincode::serde::encode_to_vec(&wire, bincode::config::standard()).unwrap();
        let (decoded, _): (RaftMessage, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(decoded, wire);
        let back = decoded.to_raft().expect("a raft kind");
        assert_eq!(back, message);
        let EntryPayload::ConfChange(change) = &wire.entries[1].payload else { panic!("a conf change") };
        assert_eq!(change.changes, vec![(2, 4)]);
    }

    #[test]
    fn local_message_types_have_no_wire_form() {
        for local in [MessageType::MsgHup, MessageType::MsgBeat, MessageType::MsgPropose, MessageType::MsgCheckQuorum] {
            let mut message = sample();
            message.set_msg_type(local);
            assert_eq!(RaftMessage::from_raft(&message), Err(WireError::LocalMessage(local)));
        }
    }
}
