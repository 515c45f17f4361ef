//! The node's place in the cluster: gossip membership, the data-plane listener and one
//! `PeerLink` per live peer.
//!
//! Membership only informs (who is alive, where it listens); the data plane carries raft
//! messages to the replicas registered in the node's [`GroupRouter`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tidewater_cluster::data_plane::{Forwarder, LinkOptions, PeerLinks, serve_peers};
use tidewater_cluster::membership::chitchat_gossip::ChitchatMembership;
use tidewater_cluster::membership::detector::GossipDetector;
use tidewater_cluster::membership::{Advertised, ClusterChange, GossipOptions, Members, Membership, changes};
use tidewater_cluster::raft::group::GroupRouter;
use tidewater_cluster::seams::{Net, NodeRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::node::NodeError;

/// How long a proposal forwarded to the leader's node may wait for its answer (a commit
/// through an election takes a second or two).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// How a node gossips.
pub enum Gossip {
    /// chitchat over UDP (production)
    Chitchat,
    /// the deterministic detector over the `Net` seam (simulation, tests)
    Detector(NodeRng),
}

/// The addresses this node serves on, as the cluster should see them.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// MQTT
    pub mqtt: SocketAddr,
    /// Kafka (what clients are told)
    pub kafka: SocketAddr,
    /// HTTP
    pub http: SocketAddr,
    /// the data plane
    pub rpc: SocketAddr,
    /// gossip
    pub gossip: SocketAddr,
}

/// A running cluster membership and data plane.
pub struct ClusterNode {
    /// this node's id
    pub node_id: u64,
    /// the cluster's name
    pub name: String,
    membership: Arc<dyn Membership>,
    /// the links to peers
    pub links: Arc<PeerLinks>,
    /// where inbound raft messages go
    pub router: Arc<GroupRouter>,
    /// proposals to the node whose replica leads, and answers to other nodes' proposals
    pub forwarder: Arc<Forwarder>,
    tasks: Vec<JoinHandle<()>>,
}

/// `listen` as others reach it: a wildcard address becomes `host`.
pub fn advertised(listen: SocketAddr, host: Option<&str>) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = host.and_then(|host| host.parse::<IpAddr>().ok()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, listen.port())
}

impl ClusterNode {
    /// Binds the data plane, starts gossip and keeps a link to every live peer.
    pub async fn start(
        config: &Config,
        addresses: Addresses,
        net: Arc<dyn Net>,
        gossip: Gossip,
        generation: u64,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, NodeError> {
        let cluster = &config.cluster;
        let rpc_listener = net.bind(config.listeners.rpc).await.map_err(|source| NodeError::Listen {
            protocol: "rpc",
            addr: config.listeners.rpc,
            source,
        })?;
        let rpc_bound = rpc_listener.local_addr().unwrap_or(config.listeners.rpc);
        let host = cluster.advertise_host.as_deref();
        let options = GossipOptions {
            node_id: config.node_id,
            generation,
            cluster: cluster.name.clone(),
            listen: config.listeners.gossip,
            advertise: advertised(addresses.gossip, host),
            seeds: cluster.seeds.clone(),
            advertised: Advertised {
                rpc: Some(advertised(rpc_bound, host)),
                mqtt: Some(advertised(addresses.mqtt, host)),
                kafka: Some(addresses.kafka),
                http: Some(advertised(addresses.http, host)),
            },
            interval: Duration::from_millis(cluster.gossip_interval_ms),
            dead_after: Duration::from_millis(cluster.dead_after_ms),
        };
        let gossip_addr = config.listeners.gossip;
        let gossip_failed = |detail: String| NodeError::Listen {
            protocol: "gossip",
            addr: gossip_addr,
            source: std::io::Error::other(detail),
        };
        let membership: Arc<dyn Membership> = match gossip {
            Gossip::Chitchat => {
                ChitchatMembership::start(options).await.map_err(|error| gossip_failed(error.to_string()))?
            }
            Gossip::Detector(rng) => GossipDetector::start(options, Arc::clone(&net), rng)
                .await
                .map_err(|error| gossip_failed(error.to_string()))?,
        };
        let links = PeerLinks::new(config.node_id, cluster.name.clone(), Arc::clone(&net), LinkOptions::default());
        let router = Arc::new(GroupRouter::default());
        // a peer that closed its connection (stopped, or killed with its sockets closed)
        // wakes every hibernating replica here, long before gossip declares it dead
        let waking = Arc::clone(&router);
        links.set_lost(Arc::new(move || waking.wake_all()));
        let forwarder = Forwarder::new(config.node_id, Arc::clone(&links), Arc::clone(&router), FORWARD_TIMEOUT);
        let delivering = Arc::clone(&forwarder);
        let serving = tokio::spawn(
            serve_peers(
                rpc_listener,
                cluster.name.clone(),
                shutdown.clone(),
                Arc::new(move |from, message| delivering.deliver(from, message)),
            )
            .in_current_span(),
        );
        let following = tokio::spawn(
            follow(membership.members(), Arc::clone(&links), Arc::clone(&router), shutdown).in_current_span(),
        );
        tracing::info!(rpc = %rpc_bound, gossip = %gossip_addr, seeds = ?cluster.seeds, cluster = %cluster.name, "cluster membership started");
        Ok(Self {
            node_id: config.node_id,
            name: cluster.name.clone(),
            membership,
            links,
            router,
            forwarder,
            tasks: vec![serving, following],
        })
    }

    /// The live members, this node included.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.membership.members()
    }

    /// Leaves the cluster: tells the others, then stops the links and the listener.
    pub async fn leave(self) {
        self.membership.leave().await;
        self.links.stop_all();
        // the data-plane listener and the link follower hold nothing to flush
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Keeps one link per live peer, pointed at its advertised data-plane address. A peer gone
/// wakes every hibernating replica here: a follower whose leader it was must elect, a leader
/// whose follower it was must see it go from the ISR.
async fn follow(
    mut members: watch::Receiver<Members>,
    links: Arc<PeerLinks>,
    router: Arc<GroupRouter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut known = Members::new();
    loop {
        let now = members.borrow_and_update().clone();
        for change in changes(&known, &now) {
            match change {
                ClusterChange::Add(member) | ClusterChange::Update(member) => {
                    tracing::info!(node = member.id, generation = member.generation, rpc = ?member.advertised.rpc, "cluster member live");
                    if known.contains_key(&member.id) {
                        // restarted (or moved): what it led is led no more
                        router.wake_all();
                    }
                    if let Some(rpc) = member.advertised.rpc
                        && let Err(error) = links.set_peer(member.id, rpc).await
                    {
                        tracing::warn!(node = member.id, %error, "cannot start a peer link");
                    }
                }
                ClusterChange::Remove(id) => {
                    tracing::info!(node = id, "cluster member gone");
                    links.remove_peer(id);
                    router.wake_all();
                }
            }
        }
        known = now;
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            changed = members.changed() => if changed.is_err() { return },
        }
    }
}
