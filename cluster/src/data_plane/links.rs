//! [`PeerLinks`]: this node's [`PeerLink`]s by node id, the [`RaftTransport`] replicas send
//! through.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::{Actor, ActorRef};

use super::GroupId;
use super::peer_link::{ConnectionLost, LinkOptions, PeerLink, PeerLinkArgs, PeerLinkMsg, Undelivered};
use crate::raft::RaftMessage;
use crate::raft::group::RaftTransport;
use crate::seams::Net;

/// One link per peer, created and retargeted as membership learns addresses.
pub struct PeerLinks {
    local_node: u64,
    cluster: String,
    net: Arc<dyn Net>,
    options: LinkOptions,
    links: RwLock<BTreeMap<u64, (SocketAddr, ActorRef<PeerLinkMsg>)>>,
    undelivered: RwLock<Option<Undelivered>>,
    lost: RwLock<Option<ConnectionLost>>,
}

impl PeerLinks {
    /// No links yet.
    pub fn new(local_node: u64, cluster: String, net: Arc<dyn Net>, options: LinkOptions) -> Arc<Self> {
        Arc::new(Self {
            local_node,
            cluster,
            net,
            options,
            links: RwLock::new(BTreeMap::new()),
            undelivered: RwLock::new(None),
            lost: RwLock::new(None),
        })
    }

    /// Who is told of forwarded proposals a link dropped unsent (links made from now on).
    pub fn set_undelivered(&self, undelivered: Undelivered) {
        *self.undelivered.write() = Some(undelivered);
    }

    /// Who is told when a peer closes a link's connection (links made from now on).
    pub fn set_lost(&self, lost: ConnectionLost) {
        *self.lost.write() = Some(lost);
    }

    /// Links to `node` at `address` (a new link, or the old one pointed at a new address).
    pub async fn set_peer(&self, node: u64, address: SocketAddr) -> Result<(), ractor::SpawnErr> {
        if node == self.local_node {
            return Ok(());
        }
        if let Some((known, link)) = self.links.write().get_mut(&node) {
            if *known != address {
                *known = address;
                let _ = link.cast(PeerLinkMsg::Address(address));
                let _ = link.cast(PeerLinkMsg::Connect);
            }
            return Ok(());
        }
        let args = PeerLinkArgs {
            local_node: self.local_node,
            cluster: self.cluster.clone(),
            address,
            net: Arc::clone(&self.net),
            options: self.options.clone(),
            undelivered: self.undelivered.read().clone(),
            lost: self.lost.read().clone(),
        };
        let (link, _) = Actor::spawn(None, PeerLink, args).await?;
        let _ = link.cast(PeerLinkMsg::Connect);
        let replaced = self.links.write().insert(node, (address, link));
        if let Some((_, old)) = replaced {
            old.stop(None);
        }
        Ok(())
    }

    /// Drops the link to `node`.
    pub fn remove_peer(&self, node: u64) {
        if let Some((_, link)) = self.links.write().remove(&node) {
            link.stop(None);
        }
    }

    /// Stops every link.
    pub fn stop_all(&self) {
        for (_, (_, link)) in std::mem::take(&mut *self.links.write()) {
            link.stop(None);
        }
    }

    /// Queues a proposal or an answer for `node`; false if there is no link to it.
    pub fn forward(&self, node: u64, item: super::Forwarded) -> bool {
        match self.links.read().get(&node) {
            Some((_, link)) => link.cast(PeerLinkMsg::Forward(item)).is_ok(),
            None => false,
        }
    }

    /// The nodes linked to.
    pub fn peers(&self) -> Vec<u64> {
        self.links.read().keys().copied().collect()
    }

    /// The link to `node`, if any.
    pub fn link(&self, node: u64) -> Option<ActorRef<PeerLinkMsg>> {
        self.links.read().get(&node).map(|(_, link)| link.clone())
    }
}

impl RaftTransport for PeerLinks {
    fn send(&self, group: &GroupId, message: RaftMessage) {
        if let Some((_, link)) = self.links.read().get(&message.to) {
            let _ = link.cast(PeerLinkMsg::Raft(group.clone(), message));
        }
    }
}
