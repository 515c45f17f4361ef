//! Who is in the cluster and alive: the `Membership` seam.
//!
//! Production gossips with chitchat ([`chitchat_gossip`]); the simulation uses
//! [`detector::GossipDetector`], a small push-pull gossip over the `Net` seam whose every
//! choice comes from the node's seeded RNG and the simulated clock (chitchat draws OS
//! randomness and iterates hash sets, so it cannot replay). Both publish the same thing: the
//! live members, each with its advertised addresses.
//!
//! Gossip only informs. Nothing that safety depends on is decided from it: raft decides
//! leadership and commits; membership tells placement where replicas could go and the data
//! plane where a node listens.

pub mod chitchat_gossip;
pub mod detector;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The addresses a node serves on, as it advertises them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    /// the data plane (`rpc`) listener
    pub rpc: Option<SocketAddr>,
    /// the MQTT listener
    pub mqtt: Option<SocketAddr>,
    /// the Kafka listener
    pub kafka: Option<SocketAddr>,
    /// the HTTP admin listener
    pub http: Option<SocketAddr>,
}

impl Advertised {
    /// As gossip key-values (`rpc`, `mqtt`, `kafka`, `http`).
    pub fn to_key_values(&self) -> Vec<(String, String)> {
        [("rpc", self.rpc), ("mqtt", self.mqtt), ("kafka", self.kafka), ("http", self.http)]
            .into_iter()
            .filter_map(|(key, address)| address.map(|address| (key.to_string(), address.to_string())))
            .collect()
    }

    /// From gossip key-values; unknown keys and unparsable addresses are ignored.
    pub fn from_key_values<'a>(key_values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut advertised = Self::default();
        for (key, value) in key_values {
            let Ok(address) = value.parse::<SocketAddr>() else { continue };
            match key {
                "rpc" => advertised.rpc = Some(address),
                "mqtt" => advertised.mqtt = Some(address),
                "kafka" => advertised.kafka = Some(address),
                "http" => advertised.http = Some(address),
                _ => {}
            }
        }
        advertised
    }
}

/// One live member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// the node id (`--node-id`)
    pub id: u64,
    /// grows every time the node starts, so a restarted node is told apart from its old self
    pub generation: u64,
    /// where it gossips
    pub gossip: SocketAddr,
    /// where it serves
    pub advertised: Advertised,
}

/// The live members by id, this node included.
pub type Members = BTreeMap<u64, Member>;

/// A change between two views of the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    /// a node became live
    Add(Member),
    /// a live node restarted or changed its addresses
    Update(Member),
    /// a node is no longer live (dead or left)
    Remove(u64),
}

/// The changes that turn `before` into `after`, in node-id order.
pub fn changes(before: &Members, after: &Members) -> Vec<ClusterChange> {
    let mut changes = Vec::new();
    for (id, member) in after {
        match before.get(id) {
            None => changes.push(ClusterChange::Add(member.clone())),
            Some(old) if old != member => changes.push(ClusterChange::Update(member.clone())),
            Some(_) => {}
        }
    }
    changes.extend(before.keys().filter(|id| !after.contains_key(id)).map(|&id| ClusterChange::Remove(id)));
    changes
}

/// How a node finds and watches the others.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// The live members, updated as gossip learns.
    fn members(&self) -> watch::Receiver<Members>;
    /// Tells the others this node is going, waits briefly for the word to spread, and stops.
    async fn leave(&self);
}

/// Settings both implementations share.
#[derive(Debug, Clone)]
pub struct GossipOptions {
    /// this node's id
    pub node_id: u64,
    /// this node's generation (e.g. its start time in ms)
    pub generation: u64,
    /// the cluster name; nodes of other clusters are ignored
    pub cluster: String,
    /// where to listen for gossip
    pub listen: SocketAddr,
    /// where others reach this node's gossip (the listen address if not set)
    pub advertise: SocketAddr,
    /// gossip addresses to join through (`host:port`)
    pub seeds: Vec<String>,
    /// what this node serves on
    pub advertised: Advertised,
    /// time between gossip rounds
    pub interval: std::time::Duration,
    /// silence after which a node counts as dead
    pub dead_after: std::time::Duration,
}

/// Waits (at most `limit`) until the members satisfy `what`; how long it took.
#[cfg(test)]
pub(crate) async fn wait_until(
    membership: &dyn Membership,
    limit: std::time::Duration,
    what: impl Fn(&Members) -> bool,
) -> std::time::Duration {
    let started = tokio::time::Instant::now();
    let mut members = membership.members();
    let waited = tokio::time::timeout(limit, members.wait_for(|members| what(members))).await;
    assert!(
        waited.is_ok(),
        "membership did not converge: {:?}",
        membership.members().borrow().keys().collect::<Vec<_>>()
    );
    started.elapsed()
}
