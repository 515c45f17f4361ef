//! The data plane: node-to-node TCP on its own port (`rpc`), never the gossip socket.
//!
//! - [`frame`]: `u32 len | u8 version | u64 correlation | bincode` frames;
//! - [`PeerMessage`]: what travels: a hello, then raft messages of every group bound for
//!   the peer, packed into one frame per flush (heartbeats of all partitions together);
//! - [`peer_link`]: the [`PeerLink`] actor, one per remote node: batching, reconnect with
//!   backoff, write timeouts, a bounded outbox;
//! - [`server`]: the listener side, which checks the hello and hands each frame on;
//! - [`forward`]: proposals sent to the node whose replica leads, and their answers.

pub mod forward;
pub mod frame;
pub mod links;
pub mod peer_link;
pub mod server;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use forward::{Forwarded, Forwarder, Service};
pub use links::PeerLinks;
pub use peer_link::{LinkOptions, PeerLink, PeerLinkArgs, PeerLinkMsg};
pub use server::serve_peers;

use crate::raft::RaftMessage;

/// Which raft group a message belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupId {
    /// the controller group (nodes, streams, replica sets)
    Controller,
    /// one partition of a stream
    Partition {
        /// the stream (Kafka topic) name
        stream: String,
        /// the partition number
        partition: i32,
    },
}

/// One data-plane frame's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The first frame on a connection: who dials, in which cluster.
    Hello {
        /// the dialling node's id
        node: u64,
        /// the cluster name both must share
        cluster: String,
    },
    /// Raft messages of any number of groups, all for the receiving node.
    Raft(#[serde(deserialize_with = "frame::bounded_seq")] Vec<(GroupId, RaftMessage)>),
    /// Proposals for the receiver's replicas, and answers to the receiver's proposals.
    Forwarded(#[serde(deserialize_with = "frame::bounded_seq")] Vec<Forwarded>),
    /// From the receiver, back on the same connection: every frame up to `correlation` was
    /// read. A sender that hears none for a while reconnects (a half-open connection, or one
    /// whose bytes the network holds, would otherwise swallow raft's messages unseen).
    Ack {
        /// the last frame read
        correlation: u64,
    },
}
