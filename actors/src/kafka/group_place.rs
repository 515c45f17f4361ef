//! Where a consumer group is coordinated and its committed offsets kept.
//!
//! A node alone keeps every group itself, its offsets in the state store. In a cluster the
//! offsets live in a replicated internal stream, [`OFFSETS_STREAM`], as Kafka keeps them in
//! `__consumer_offsets`: each group hashes to one of its partitions, and the coordinator of
//! the group is whichever node's replica leads that partition. An OffsetCommit is one record
//! batch proposed to that partition and answered after commit, so a coordinator that dies
//! loses no committed offset: the next leader replays the partition and carries on. A node
//! that does not lead the group's partition answers `NOT_COORDINATOR`, and FindCoordinator
//! names the leader.
//!
//! The stream is created by the first node that needs it (through the controller, like any
//! stream of the cluster).

use std::sync::Arc;

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::stream::def::StreamDef;
use crate::stream::registry::{PartitionHandle, Stream, StreamError};

/// The replicated stream holding every group's committed offsets in a cluster.
pub const OFFSETS_STREAM: &str = "__consumer_offsets";
/// Its partitions (Kafka's `offsets.topic.num.partitions`, 50 by default there: fewer here,
/// since each is a raft group that ticks on every replica).
pub const OFFSETS_PARTITIONS: u32 = 8;

/// Where a group's offsets go.
#[derive(Debug, Clone)]
pub enum OffsetLog {
    /// this node's state store (a node alone)
    Local,
    /// a partition of [`OFFSETS_STREAM`] whose replica on this node leads, in `epoch`
    Replicated {
        /// the partition
        partition: PartitionHandle,
        /// the leader epoch (raft term) this node leads it in
        epoch: u64,
    },
}

/// Why a group cannot be served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupUnavailable {
    /// no such group (a node alone, asked for a group it has never seen)
    Unknown,
    /// another node coordinates it
    NotCoordinator,
    /// this node leads the group's partition but has not replayed it yet
    Loading,
    /// nobody can coordinate it right now (no leader, the stream not there yet)
    NotAvailable,
    /// the caller may not use the group (an ACL)
    NotAuthorized,
}

impl GroupUnavailable {
    /// The Kafka error code.
    pub fn code(self) -> i16 {
        match self {
            Self::Unknown => codes::UNKNOWN_MEMBER_ID,
            Self::NotCoordinator => codes::NOT_COORDINATOR,
            Self::Loading => codes::COORDINATOR_LOAD_IN_PROGRESS,
            Self::NotAvailable => codes::COORDINATOR_NOT_AVAILABLE,
            Self::NotAuthorized => codes::GROUP_AUTHORIZATION_FAILED,
        }
    }
}

/// The partition of [`OFFSETS_STREAM`] that holds `group` (FNV-1a: stable across builds
/// and nodes, unlike the standard library's hasher).
pub fn offsets_partition(group: &str) -> u32 {
    let hash = group
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    (hash % u64::from(OFFSETS_PARTITIONS)) as u32
}

/// The offsets stream, created if the cluster has none yet.
async fn offsets_stream(ctx: &NodeContext) -> Result<Arc<Stream>, GroupUnavailable> {
    if let Some(stream) = ctx.streams.get(OFFSETS_STREAM) {
        return Ok(stream);
    }
    let mut def = StreamDef::free(OFFSETS_STREAM, OFFSETS_PARTITIONS);
    def.replication_factor = ctx.default_replication_factor();
    // what nobody rewrote within twice the offsets retention goes: a group in use rewrites
    // its offsets every half retention, so a coordinator that moves has a retention and a
    // half to load them before the log's retention could reach them (see `GroupShell::refresh`)
    def.retention_ms = Some(ctx.kafka.offsets_retention_ms.saturating_mul(2));
    match ctx.create_stream(def).await {
        Ok(stream) => Ok(stream),
        Err(StreamError::Exists(_)) => ctx.streams.get(OFFSETS_STREAM).ok_or(GroupUnavailable::NotAvailable),
        Err(error) => {
            tracing::debug!(%error, "the consumer offsets stream cannot be created yet");
            Err(GroupUnavailable::NotAvailable)
        }
    }
}

/// `group`'s partition of the offsets stream (`None` for a node alone).
async fn group_partition(ctx: &NodeContext, group: &str) -> Result<Option<PartitionHandle>, GroupUnavailable> {
    if ctx.catalog().is_none() {
        return Ok(None);
    }
    let stream = offsets_stream(ctx).await?;
    let partition = stream.partitions.get(offsets_partition(group) as usize).cloned();
    match partition {
        Some(partition) if partition.replica.is_some() => Ok(Some(partition)),
        // a stream of that name that is not the cluster's, or has other partitions
        _ => Err(GroupUnavailable::NotAvailable),
    }
}

/// Where this node keeps `group`'s offsets, if it coordinates the group.
pub async fn locate(ctx: &NodeContext, group: &str) -> Result<OffsetLog, GroupUnavailable> {
    let Some(partition) = group_partition(ctx, group).await? else { return Ok(OffsetLog::Local) };
    let leadership = partition.replica.as_ref().and_then(|view| *view.leadership.borrow());
    match leadership {
        Some(leadership) if leadership.is_leader => Ok(OffsetLog::Replicated { epoch: leadership.term, partition }),
        Some(leadership) if leadership.leader.is_some() => Err(GroupUnavailable::NotCoordinator),
        _ => Err(GroupUnavailable::NotAvailable),
    }
}

/// The node that coordinates `group`: this one for a node alone, else the leader of its
/// partition as this node knows it.
pub async fn coordinator(ctx: &NodeContext, group: &str) -> Result<u64, GroupUnavailable> {
    let Some(partition) = group_partition(ctx, group).await? else { return Ok(ctx.node_id) };
    partition
        .replica
        .as_ref()
        .and_then(|view| view.leader())
        .map(|(leader, _)| leader)
        .ok_or(GroupUnavailable::NotAvailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_spread_over_the_partitions_and_always_land_on_the_same_one() {
        let mut used = std::collections::BTreeSet::new();
        for index in 0..200 {
            let group = format!("group-{index}");
            let partition = offsets_partition(&group);
            assert!(partition < OFFSETS_PARTITIONS);
            assert_eq!(partition, offsets_partition(&group));
            used.insert(partition);
        }
        assert_eq!(used.len(), OFFSETS_PARTITIONS as usize);
        // fixed by the algorithm, so every node and every build agrees
        assert_eq!(offsets_partition(""), (0xcbf2_9ce4_8422_2325u64 % 8) as u32);
    }
}
