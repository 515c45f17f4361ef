//! Proposals forwarded to the node whose replica leads: the write path of any node into a
//! group it does not lead.
//!
//! An MQTT publish that matches a replicated stream lands on whichever node the device is
//! connected to; an admin change lands on whichever node the operator asked. Both become
//! proposals on the leader's replica. A [`Forwarder`] sends a proposal to a node over the data
//! plane (riding the same frames as raft's messages, so a burst of sessions' batches leaves in
//! one write), the receiving node proposes it to its replica of the group, and the answer
//! (`Placed`, or the replica's refusal with the leader it knows) comes back on the receiver's
//! own link. A proposal whose answer does not come in time is [`Refusal::Unanswered`]: it may
//! still commit, so only a client that may retry (MQTT QoS 1 without its PUBACK; an admin
//! change that is checked afterwards) is told it failed.
//!
//! Forwarding decides nothing: the leader's replica checks and stamps the batch as it does
//! for a local proposal, and raft's commit is the only acknowledgement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::{GroupId, PeerLinks, PeerMessage};
use crate::raft::group::{GroupRouter, RaftReplicaMsg};
use crate::raft::{AckOn, Placed, Refusal};

/// A proposal or its answer, between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarded {
    /// propose `batch` to the receiver's replica of `group`
    Propose {
        /// the sender's id for the answer
        id: u64,
        /// the raft group
        group: GroupId,
        /// the entry (a RecordBatch, or a controller command)
        batch: Bytes,
        /// when to answer
        ack_on: AckOn,
    },
    /// what became of the sender's proposal `id`
    Answer {
        /// the proposal's id
        id: u64,
        /// where it landed, or why not
        result: Result<Placed, Refusal>,
    },
    /// an item of a service above raft (MQTT routes and deliveries), opaque here; `id` is
    /// not 0 when the sender waits for something back, and is then reported if the link
    /// drops the item unsent
    Service {
        /// the sender's id for what it awaits (0: nothing)
        id: u64,
        /// the service's own encoding
        payload: Bytes,
    },
}

impl Forwarded {
    /// A rough size in a frame, for the outbox bound.
    pub fn estimated_bytes(&self) -> usize {
        match self {
            Self::Propose { batch, .. } => batch.len() + 64,
            Self::Answer { .. } => 48,
            Self::Service { payload, .. } => payload.len() + 16,
        }
    }
}

/// A service riding the data plane beside raft: told of each item a peer sends it, and of
/// each awaited item (`id` not 0) a link dropped unsent.
pub trait Service: Send + Sync + 'static {
    /// `payload` arrived from node `from`, with the id it was sent with.
    fn deliver(&self, from: u64, id: u64, payload: Bytes);
    /// The item sent with `id` was dropped before it was written.
    fn undelivered(&self, id: u64);
}

/// An answer awaited: from which node, to whom.
type Waiting = BTreeMap<u64, (u64, oneshot::Sender<Result<Placed, Refusal>>)>;

/// Sends proposals to other nodes and answers theirs.
pub struct Forwarder {
    local_node: u64,
    links: Arc<PeerLinks>,
    router: Arc<GroupRouter>,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
    timeout: Duration,
    service: std::sync::OnceLock<Arc<dyn Service>>,
}

impl Forwarder {
    /// A forwarder that gives up on an answer after `timeout`.
    /// It hears from `links` of proposals they drop unsent (so those fail at once, not after
    /// `timeout`).
    pub fn new(local_node: u64, links: Arc<PeerLinks>, router: Arc<GroupRouter>, timeout: Duration) -> Arc<Self> {
        let forwarder = Arc::new(Self {
            local_node,
            links: Arc::clone(&links),
            router,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(BTreeMap::new()),
            timeout,
            service: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&forwarder);
        links.set_undelivered(Arc::new(move |id| {
            let Some(forwarder) = weak.upgrade() else { return };
            let waiting = forwarder.waiting.lock().remove(&id);
            match waiting {
                Some((_, sender)) => {
                    let _ = sender.send(Err(Refusal::Unreachable));
                }
                // ids are drawn from one counter: one not awaited here is the service's
                None => {
                    if let Some(service) = forwarder.service.get() {
                        service.undelivered(id);
                    }
                }
            }
        }));
        forwarder
    }

    /// This node's id.
    pub fn local_node(&self) -> u64 {
        self.local_node
    }

    /// Sets the service that items of [`Forwarded::Service`] go to (once).
    pub fn set_service(&self, service: Arc<dyn Service>) {
        let _ = self.service.set(service);
    }

    /// An id for a service item that awaits something back (never 0, never a proposal's).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a service item for `node`; false if there is no link to it.
    pub fn send_service(&self, node: u64, id: u64, payload: Bytes) -> bool {
        self.links.forward(node, Forwarded::Service { id, payload })
    }

    /// Whether this node has a link to `node` (a live member).
    pub fn is_peer(&self, node: u64) -> bool {
        self.links.link(node).is_some()
    }

    /// The peers this node has a link to (the live members but itself).
    pub fn peers(&self) -> Vec<u64> {
        self.links.peers()
    }

    /// Proposes `batch` to `node`'s replica of `group` (this node's own, if `node` is this
    /// node) and waits for the answer.
    pub async fn propose(
        self: &Arc<Self>,
        node: u64,
        group: GroupId,
        batch: Bytes,
        ack_on: AckOn,
    ) -> Result<Placed, Refusal> {
        self.submit(node, group, batch, ack_on).await
    }

    /// [`Forwarder::propose`] in two steps: the proposal is sent now (to this node's replica,
    /// or queued on the peer's link), so proposals submitted one after the other reach the
    /// leader in that order; the future only waits for the answer.
    pub fn submit(self: &Arc<Self>, node: u64, group: GroupId, batch: Bytes, ack_on: AckOn) -> Answer {
        if node == self.local_node {
            return match self.router.get(&group) {
                Some(replica) => self.submit_local(&replica, batch, ack_on),
                None => Box::pin(std::future::ready(Err(Refusal::NotLeader { leader: None }))),
            };
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        self.waiting.lock().insert(id, (node, sender));
        if !self.links.forward(node, Forwarded::Propose { id, group, batch, ack_on }) {
            self.waiting.lock().remove(&id);
            return Box::pin(std::future::ready(Err(Refusal::Unreachable)));
        }
        let this = Arc::clone(self);
        Box::pin(async move {
            let answered = tokio::time::timeout(this.timeout, answer).await;
            this.waiting.lock().remove(&id);
            match answered {
                Ok(Ok(result)) => result,
                Ok(Err(_)) | Err(_) => Err(Refusal::Unanswered),
            }
        })
    }

    /// Sends `batch` to this node's `replica` now; the future waits (at most the forwarder's
    /// timeout) for its answer.
    pub fn submit_local(&self, replica: &ractor::ActorRef<RaftReplicaMsg>, batch: Bytes, ack_on: AckOn) -> Answer {
        let answer = submit_locally(replica, batch, ack_on);
        let timeout = self.timeout;
        Box::pin(async move { tokio::time::timeout(timeout, answer).await.unwrap_or(Err(Refusal::Unanswered)) })
    }

    /// Proposals and answers awaiting (for status and tests).
    pub fn waiting(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Handles one data-plane frame from `from`: raft messages go to their replicas,
    /// proposals to this node's replica of their group, answers to whoever waits for them.
    pub fn deliver(self: &Arc<Self>, from: u64, message: PeerMessage) {
        let PeerMessage::Forwarded(items) = message else {
            self.router.deliver(from, message);
            return;
        };
        for item in items {
            match item {
                Forwarded::Propose { id, group, batch, ack_on } => {
                    let Some(replica) = self.router.get(&group) else {
                        let refusal = Err(Refusal::NotLeader { leader: None });
                        self.links.forward(from, Forwarded::Answer { id, result: refusal });
                        continue;
                    };
                    // sent to the replica here, in the frame's order; only the answer is awaited
                    let answer = self.submit_local(&replica, batch, ack_on);
                    let links = Arc::clone(&self.links);
                    tokio::spawn(
                        async move {
                            let result = answer.await;
                            links.forward(from, Forwarded::Answer { id, result });
                        }
                        .in_current_span(),
                    );
                }
                Forwarded::Service { id, payload } => {
                    if let Some(service) = self.service.get() {
                        service.deliver(from, id, payload);
                    }
                }
                Forwarded::Answer { id, result } => {
                    let mut waiting = self.waiting.lock();
                    // only the node asked may answer
                    if waiting.get(&id).is_some_and(|(node, _)| *node == from)
                        && let Some((_, sender)) = waiting.remove(&id)
                    {
                        let _ = sender.send(result);
                    }
                }
            }
        }
    }
}

/// A proposal's answer to come.
pub type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Placed, Refusal>> + Send>>;

/// Sends `batch` to `replica` now (so proposals keep the order they are made in); the future
/// waits for the replica's answer.
pub fn submit_locally(
    replica: &ractor::ActorRef<RaftReplicaMsg>,
    batch: Bytes,
    ack_on: AckOn,
) -> impl std::future::Future<Output = Result<Placed, Refusal>> + Send + 'static {
    let (reply, answer) = ractor::concurrency::oneshot();
    let sent = replica.cast(RaftReplicaMsg::Propose { batch, ack_on, reply: reply.into() }).is_ok();
    async move {
        if !sent {
            return Err(Refusal::Stopped);
        }
        answer.await.unwrap_or(Err(Refusal::Stopped))
    }
}
