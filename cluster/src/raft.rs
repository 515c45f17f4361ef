//! Consensus: tikv's raft-rs, wrapped here and nowhere else.
//!
//! - [`wire`]: raft messages in our own serde form (no protobuf parser reads network bytes);
//! - [`entry_log`]: a replica's raft log as raft-rs reads it, with the Kafka offset each
//!   entry ends at;
//! - [`journal`]: that log on disk: batches in the log store, the rest in the state store;
//! - [`group`]: [`group::RaftReplica`], the actor shell that drives a core, its journal and the
//!   data plane;
//! - [`replica`]: [`ReplicaCore`], one partition replica's replication, sans-IO: raft-rs plus
//!   offset stamping, the high watermark and acknowledgements.

// protobuf structs are built field by field, as raft-rs itself does
#![allow(clippy::field_reassign_with_default)]

pub mod entry_log;
pub mod group;
#[cfg(test)]
mod group_tests;
pub mod journal;
mod logger;
pub mod replica;
pub mod wire;

#[cfg(test)]
mod tests;

pub use entry_log::{BatchSpan, EntryLog};
pub use journal::{RaftJournal, Restored};
pub use replica::{
    AckOn, Leadership, Output, PersistJob, Placed, Reconciled, Refusal, ReplicaCore, ReplicaError, ReplicaOptions,
};
pub use wire::RaftMessage;
