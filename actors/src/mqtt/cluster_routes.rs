//! MQTT across the cluster: which nodes have subscribers for which topic filters, and the
//! forwarding of published messages to them over the data plane.
//!
//! Every node keeps a table of its own routes: the raw topic filters (with `$share/<group>/`)
//! that at least one of its sessions holds, numbered by a version that grows with each change.
//! Each change goes to every peer as a delta from the version before; a peer that holds another
//! version (it missed a delta, or either node restarted: the *incarnation* tells) asks for the
//! whole table instead. A beacon with the version every second repairs anything lost, and a
//! peer answers each delta, table and beacon with the version it now holds.
//!
//! A SUBACK waits until every linked peer said it holds the version that added the filter (at
//! most [`SUBSCRIBE_WAIT`]): anything published anywhere after the SUBACK reaches the
//! subscriber. EMQX updates its routes asynchronously; here the subscribe pays one round trip.
//!
//! Publishing: the node that takes a PUBLISH matches it against its own sessions and against
//! the peers' routes, and sends each matching peer the message once per batch, with nothing
//! else to decide there: the peer delivers it to its own non-shared subscribers, or to one
//! member of the share group the publishing node chose for it. A QoS 1/2 message forwarded
//! is acknowledged to its publisher once the peer answered that its persistent sessions stored
//! it (the peer's [`Relay`] collects those notices), so a PUBACK means the same on one node or
//! three. A peer that does not answer in time refuses the acknowledgement (the publisher
//! retries), unless it has left the cluster, whose sessions left with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tidewater_cluster::data_plane::{Forwarder, Service};
use tokio::time::Instant;
use tracing::Instrument;

use crate::context::{NodeContext, NodeInner};
use crate::mqtt::message::Message;
use crate::mqtt::persist::{self, LoadedSession};
use crate::mqtt::router::{Fanout, Scope};
use crate::mqtt::session::SessionMsg;
use crate::mqtt::topic;
use crate::mqtt::trie::SubscriptionTrie;
use crate::stream::partition::DurableNotice;

/// How long a SUBACK waits for the peers to hold the route.
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How long a forwarded QoS 1/2 message waits for the peer's answer before it is sent again.
pub const FORWARD_WAIT: Duration = Duration::from_secs(5);
/// How soon a forward a link dropped is sent again.
const RESEND_DELAY: Duration = Duration::from_millis(300);
/// How long a forward is sent again to a peer that stays a member but never answers; then the
/// publisher's acknowledgement is refused.
const FORWARD_GIVE_UP: Duration = Duration::from_secs(60);
/// Forward ids remembered per peer, so that one sent again is not delivered twice.
const SEEN_IDS: usize = 65_536;
/// How often waits are checked and lost tables asked for again.
const TICK: Duration = Duration::from_millis(200);
/// Ticks between beacons.
const BEACON_TICKS: u32 = 5;

/// What travels between the nodes' routes (inside [`tidewater_cluster::data_plane::Forwarded::Service`]).
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    /// the sender's routes changed from version `from` (true: added)
    Routes { incarnation: u64, from: u64, changes: Vec<(bool, String)> },
    /// the sender's whole table at `version`
    Table { incarnation: u64, version: u64, filters: Vec<String> },
    /// the sender's table is at `version`
    Beacon { incarnation: u64, version: u64 },
    /// send me your whole table
    SendTable,
    /// the sender holds the receiver's table of `incarnation` at `version`
    Known { incarnation: u64, version: u64 },
    /// messages for the receiver's sessions (the item's id: what to answer, 0 for nothing);
    /// ids are the sender's incarnation's
    Publish { incarnation: u64, messages: Vec<Forward> },
    /// the receiver's forward `id` of its `incarnation` is delivered (`ok`: every persistent
    /// session stored it)
    Published { incarnation: u64, id: u64, ok: bool },
    /// a client connected to the sender: hand its session over (answered with `Session`,
    /// the item's id), or end it (`discard`: the client asked for a clean start)
    TakeSession { client_id: String, discard: bool },
    /// the answer to `TakeSession` `id`: the session, if the sender held it
    Session { id: u64, session: Option<Box<LoadedSession>> },
    /// the sender stored the session it took: the receiver forgets its own copy
    SessionTaken { client_id: String },
    /// the sessions the sender holds, with when their clients last attached: sent to a peer
    /// whose table this node (re)takes, so that of two nodes holding one session after a
    /// partition or a restart the later attach keeps it
    Sessions { sessions: Vec<(String, i64)> },
}

/// Sessions per `Sessions` item.
const SESSIONS_CHUNK: usize = 10_000;

/// A `TakeSession` awaiting the peers' answers.
struct Take {
    waiting: BTreeSet<u64>,
    found: Option<(u64, Box<LoadedSession>)>,
    reply: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How long a connect waits for the other nodes to hand its session over.
const TAKE_WAIT: Duration = Duration::from_secs(2);

/// A message forwarded to a peer, and the share group (group, filter) it chose there, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forward {
    /// the message
    pub message: Arc<Message>,
    /// deliver to one member of this group of the peer (else to its non-shared subscribers)
    pub share: Option<(Arc<str>, Arc<str>)>,
}

/// This node's own routes.
#[derive(Default)]
struct Local {
    /// raw filter → (sessions holding it, the version that added it)
    filters: BTreeMap<String, (usize, u64)>,
    version: u64,
    /// the version of this table each peer said it holds
    known: BTreeMap<u64, u64>,
    /// SUBACKs waiting for the peers: (version, deadline, notice)
    waiters: Vec<(u64, Instant, DurableNotice)>,
}

impl Local {
    /// Whether every one of `peers` said it holds `version` of this table.
    fn held_by(&self, peers: &[u64], version: u64) -> bool {
        peers.iter().all(|peer| self.known.get(peer).is_some_and(|known| *known >= version))
    }
}

/// A peer's routes as this node holds them.
struct Table {
    incarnation: u64,
    version: u64,
    filters: BTreeSet<String>,
    /// since when the peer is not linked (its table is kept for its return a while)
    gone_since: Option<Instant>,
}

/// How long the table of a peer that left is kept: one cut off and back within it is routed
/// to at once (and its table refreshed), not only once its table came again.
const GONE_TABLE_KEPT: Duration = Duration::from_secs(600);

/// The peers' routes.
#[derive(Default)]
struct Remote {
    tables: BTreeMap<u64, Table>,
    /// filter → (share group, node) → the filter
    trie: SubscriptionTrie<(Option<Arc<str>>, u64), Arc<str>>,
    /// when this node last asked a peer for its table
    asked: BTreeMap<u64, Instant>,
}

impl Remote {
    fn insert(&mut self, node: u64, raw: &str) {
        if let Ok(parsed) = topic::parse_filter(raw) {
            self.trie.insert(parsed.filter, (parsed.share_group.map(Arc::from), node), Arc::from(parsed.filter));
        }
    }

    fn remove(&mut self, node: u64, raw: &str) {
        if let Ok(parsed) = topic::parse_filter(raw) {
            self.trie.remove(parsed.filter, &(parsed.share_group.map(Arc::from), node));
        }
    }

    fn drop_node(&mut self, node: u64) {
        if let Some(table) = self.tables.remove(&node) {
            for raw in &table.filters {
                self.remove(node, raw);
            }
        }
    }
}

/// A forward of QoS 1/2 messages awaiting the peer's answer.
struct Pending {
    node: u64,
    messages: Vec<Forward>,
    notices: Vec<DurableNotice>,
    resend_at: Instant,
    give_up_at: Instant,
}

/// A forward from a peer whose persistent sessions' notices are being collected. Sessions
/// may answer while the forward is still being routed (a long one goes out in chunks), so
/// the count may go below zero until routing adds what it asked for.
struct Relayed {
    from: u64,
    /// the sender's incarnation
    incarnation: u64,
    id: u64,
    left: i64,
    routing: bool,
    failed: bool,
}

/// Peers a message matches: nodes with non-shared subscribers, and per share group (group,
/// filter) the nodes with members.
#[derive(Default)]
pub struct RemoteMatches {
    /// nodes with a non-shared subscription that matches
    pub direct: Vec<u64>,
    /// share groups with members on other nodes
    pub groups: BTreeMap<(Arc<str>, Arc<str>), Vec<u64>>,
}

/// The node's routes and those of its peers; the forwarding of messages between them.
pub struct ClusterRoutes {
    node_id: u64,
    ctx: Weak<NodeInner>,
    incarnation: AtomicU64,
    /// weak: the forwarder holds these routes as its service
    forwarder: OnceLock<Weak<Forwarder>>,
    /// these routes (for tasks they spawn), set at attach
    myself: OnceLock<Weak<ClusterRoutes>>,
    local: Mutex<Local>,
    remote: RwLock<Remote>,
    /// forwards awaiting the peer's answer, by id
    pending: Mutex<BTreeMap<u64, Pending>>,
    /// ids of the forwards each peer sent lately, and the incarnation they are of (a node
    /// that restarted numbers its forwards from 1 again)
    seen: Mutex<BTreeMap<u64, (u64, BTreeSet<u64>)>>,
    relay: OnceLock<ActorRef<SessionMsg>>,
    relayed: Mutex<BTreeMap<u64, Relayed>>,
    takes: Mutex<BTreeMap<u64, Take>>,
    /// peers a session take did not hear from, and since when: once they answer again, this
    /// node's sessions are compared with theirs (one of them may have started a session afresh)
    reconcile: Mutex<BTreeMap<u64, Instant>>,
    /// when each peer last said it holds this node's routes
    heard: Mutex<BTreeMap<u64, Instant>>,
    next_token: AtomicU64,
    forwarded: metrics::Counter,
    received: metrics::Counter,
}

impl std::fmt::Debug for ClusterRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRoutes").field("node_id", &self.node_id).finish()
    }
}

impl ClusterRoutes {
    /// Routes of a node not (yet) in a cluster: nothing is sent until [`ClusterRoutes::attach`].
    pub fn new(node_id: u64, ctx: Weak<NodeInner>) -> Self {
        let node = node_id.to_string();
        Self {
            node_id,
            ctx,
            incarnation: AtomicU64::new(0),
            forwarder: OnceLock::new(),
            myself: OnceLock::new(),
            local: Mutex::new(Local::default()),
            remote: RwLock::new(Remote::default()),
            pending: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(BTreeMap::new()),
            relay: OnceLock::new(),
            relayed: Mutex::new(BTreeMap::new()),
            takes: Mutex::new(BTreeMap::new()),
            reconcile: Mutex::new(BTreeMap::new()),
            heard: Mutex::new(BTreeMap::new()),
            next_token: AtomicU64::new(1),
            forwarded: metrics::counter!(crate::metrics::MQTT_FORWARDED, "node" => node.clone(), "direction" => "out"),
            received: metrics::counter!(crate::metrics::MQTT_FORWARDED, "node" => node, "direction" => "in"),
        }
    }

    /// Joins the routes to the cluster's data plane: from now on the peers learn this node's
    /// routes and messages travel. `incarnation` tells this start from the node's earlier
    /// ones (its generation). Returns the task that repairs and times out (stopped with the
    /// node).
    pub async fn attach(
        self: &Arc<Self>,
        forwarder: &Arc<Forwarder>,
        incarnation: u64,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, ractor::SpawnErr> {
        self.incarnation.store(incarnation, Ordering::Relaxed);
        let _ = self.myself.set(Arc::downgrade(self));
        let (relay, _) = Actor::spawn(None, Relay, Arc::downgrade(self)).await?;
        let _ = self.relay.set(relay);
        forwarder.set_service(Arc::clone(self) as Arc<dyn Service>);
        let _ = self.forwarder.set(Arc::downgrade(forwarder));
        let weak = Arc::downgrade(self);
        Ok(tokio::spawn(
            async move {
                let mut ticks = 0u32;
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => break,
                        () = tokio::time::sleep(TICK) => {}
                    }
                    let Some(routes) = weak.upgrade() else { return };
                    ticks = ticks.wrapping_add(1);
                    routes.tick(ticks.is_multiple_of(BEACON_TICKS));
                }
                if let Some(routes) = weak.upgrade() {
                    routes.stop();
                }
            }
            .in_current_span(),
        ))
    }

    /// The node's context, while the node lives.
    fn context(&self) -> Option<NodeContext> {
        self.ctx.upgrade().map(NodeContext::from_inner)
    }

    fn myself(&self) -> Option<Arc<ClusterRoutes>> {
        self.myself.get().and_then(Weak::upgrade)
    }

    fn forwarder(&self) -> Option<Arc<Forwarder>> {
        self.forwarder.get().and_then(Weak::upgrade)
    }

    /// Stops the relay (at node shutdown).
    fn stop(&self) {
        if let Some(relay) = self.relay.get() {
            relay.stop(None);
        }
    }

    fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Relaxed)
    }

    fn peers(&self) -> Vec<u64> {
        self.forwarder().map(|forwarder| forwarder.peers()).unwrap_or_default()
    }

    fn send(&self, node: u64, id: u64, wire: &Wire) -> bool {
        let Some(forwarder) = self.forwarder() else { return false };
        match bincode::serde::encode_to_vec(wire, bincode::config::standard()) {
            Ok(bytes) => forwarder.send_service(node, id, Bytes::from(bytes)),
            Err(error) => {
                tracing::error!(%error, "cannot encode an MQTT route message");
                false
            }
        }
    }

    /// A session of this node took `raw_filter` (it held it not before). Returns the version
    /// a SUBACK must wait for the peers to hold, if some peer does not hold it yet.
    pub fn local_added(&self, raw_filter: &str) -> Option<u64> {
        let peers = self.peers();
        let mut local = self.local.lock();
        let next = local.version + 1;
        let entry = local.filters.entry(raw_filter.to_string()).or_insert((0, next));
        entry.0 += 1;
        let added = entry.1;
        if entry.0 == 1 && added == next {
            self.announce(&mut local, &peers, true, raw_filter);
        }
        (!local.held_by(&peers, added)).then_some(added)
    }

    /// A session of this node subscribed again to `raw_filter` (it held it already). Returns
    /// the version to wait for if that subscription is not yet held by every peer.
    pub fn local_added_before(&self, raw_filter: &str) -> Option<u64> {
        let peers = self.peers();
        let local = self.local.lock();
        let added = local.filters.get(raw_filter)?.1;
        (!local.held_by(&peers, added)).then_some(added)
    }

    /// A session of this node let go of `raw_filter`.
    pub fn local_removed(&self, raw_filter: &str) {
        let peers = self.peers();
        let mut local = self.local.lock();
        let Some(entry) = local.filters.get_mut(raw_filter) else { return };
        entry.0 -= 1;
        if entry.0 > 0 {
            return;
        }
        local.filters.remove(raw_filter);
        self.announce(&mut local, &peers, false, raw_filter);
    }

    /// Numbers a change of this node's table and sends it to every peer. Called under the
    /// table's lock: every peer's link gets the deltas in version order.
    fn announce(&self, local: &mut Local, peers: &[u64], added: bool, raw_filter: &str) {
        local.version += 1;
        let wire = Wire::Routes {
            incarnation: self.incarnation(),
            from: local.version - 1,
            changes: vec![(added, raw_filter.to_string())],
        };
        for peer in peers {
            self.send(*peer, 0, &wire);
        }
    }

    /// Answers `notice` once every peer holds `version` of this node's routes (or after
    /// [`SUBSCRIBE_WAIT`]: a peer that cannot answer is cut off or dying, and gets the table
    /// when it is back).
    pub fn when_held(&self, version: u64, notice: DurableNotice) {
        let mut local = self.local.lock();
        local.waiters.push((version, Instant::now() + SUBSCRIBE_WAIT, notice));
        self.release_waiters(&mut local);
    }

    fn release_waiters(&self, local: &mut Local) {
        let peers = self.peers();
        let now = Instant::now();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut local.waiters)
            .into_iter()
            .partition(|(version, deadline, _)| local.held_by(&peers, *version) || *deadline <= now);
        local.waiters = waiting;
        for (version, deadline, _) in &ready {
            if *deadline <= now && !local.held_by(&peers, *version) {
                let behind: Vec<u64> =
                    peers.iter().filter(|p| local.known.get(p).is_none_or(|k| k < version)).copied().collect();
                tracing::warn!(
                    version,
                    ?behind,
                    "SUBACK sent before every node holds the route (they did not answer in time)"
                );
            }
        }
        for (_, _, notice) in ready {
            let _ = notice.session.cast(SessionMsg::Durable { tokens: vec![notice.token], ok: true });
        }
    }

    /// The linked peers whose routes match `topic`.
    pub fn matches(&self, topic: &str) -> RemoteMatches {
        let mut matches = RemoteMatches::default();
        let remote = self.remote.read();
        if remote.trie.is_empty() {
            return matches;
        }
        let Some(forwarder) = self.forwarder() else { return matches };
        let mut groups: BTreeMap<(Arc<str>, Arc<str>), Vec<u64>> = BTreeMap::new();
        remote.trie.for_each_match(topic, |(group, node), filter| match group {
            None => matches.direct.push(*node),
            Some(group) => groups.entry((Arc::clone(group), Arc::clone(filter))).or_default().push(*node),
        });
        // a share group's message goes to a member that can be reached
        matches.direct.retain(|node| forwarder.is_peer(*node));
        groups.retain(|_, nodes| {
            nodes.retain(|node| forwarder.is_peer(*node));
            !nodes.is_empty()
        });
        matches.direct.sort_unstable();
        matches.direct.dedup();
        for nodes in groups.values_mut() {
            nodes.sort_unstable();
            nodes.dedup();
        }
        matches.groups = groups;
        matches
    }

    /// Sends `messages` to `node`; `notices` (one per QoS 1/2 message) are answered once the
    /// node answers. A forward the link drops, or the node does not answer, is sent again
    /// (the node delivers it once) until the node answers or leaves the cluster.
    pub fn forward(&self, node: u64, messages: Vec<Forward>, notices: Vec<DurableNotice>) {
        self.forwarded.increment(messages.len() as u64);
        let forwarder = match (&notices[..], self.forwarder()) {
            ([], _) | (_, None) => {
                self.send(node, 0, &Wire::Publish { incarnation: self.incarnation(), messages });
                answer_notices(notices, true);
                return;
            }
            (_, Some(forwarder)) => forwarder,
        };
        let id = forwarder.next_id();
        let now = Instant::now();
        // kept (the messages are shared) until answered, to be sent again if need be
        let wire = Wire::Publish { incarnation: self.incarnation(), messages: messages.clone() };
        let entry =
            Pending { node, messages, notices, resend_at: now + FORWARD_WAIT, give_up_at: now + FORWARD_GIVE_UP };
        self.pending.lock().insert(id, entry);
        if !self.send(node, id, &wire) {
            // not linked: the node is not a member (any more), its sessions are not ours to wait for
            self.answer(id, true);
        }
    }

    /// Answers the publishers of forward `id`.
    fn answer(&self, id: u64, ok: bool) {
        if let Some(pending) = self.pending.lock().remove(&id) {
            answer_notices(pending.notices, ok);
        }
    }

    /// Sends again the forwards due, answers those of nodes that left (their sessions left
    /// with them) and refuses those a member never answered.
    fn resend_due(&self, peers: &[u64], now: Instant) {
        let mut answers = Vec::new();
        let mut resend = Vec::new();
        {
            let mut pending = self.pending.lock();
            for (id, entry) in pending.iter_mut().filter(|(_, entry)| entry.resend_at <= now) {
                if !peers.contains(&entry.node) {
                    answers.push((*id, true));
                } else if entry.give_up_at <= now {
                    answers.push((*id, false));
                } else {
                    entry.resend_at = now + FORWARD_WAIT;
                    resend.push((*id, entry.node, entry.messages.clone()));
                }
            }
        }
        for (id, ok) in answers {
            self.answer(id, ok);
        }
        for (id, node, messages) in resend {
            self.send(node, id, &Wire::Publish { incarnation: self.incarnation(), messages });
        }
    }

    fn tick(&self, beacon: bool) {
        let peers = self.peers();
        let now = Instant::now();
        let mut returned = Vec::new();
        {
            let mut local = self.local.lock();
            local.known.retain(|peer, _| peers.contains(peer));
            self.release_waiters(&mut local);
            if beacon {
                let wire = Wire::Beacon { incarnation: self.incarnation(), version: local.version };
                for peer in &peers {
                    self.send(*peer, 0, &wire);
                }
            }
        }
        {
            let mut remote = self.remote.write();
            for (node, table) in remote.tables.iter_mut() {
                if peers.contains(node) {
                    if table.gone_since.take().is_some() {
                        // back after a partition: its sessions and this node's are compared
                        returned.push(*node);
                    }
                } else {
                    table.gone_since.get_or_insert(now);
                }
            }
            let forgotten: Vec<u64> = remote
                .tables
                .iter()
                .filter(|(_, table)| table.gone_since.is_some_and(|since| now.duration_since(since) >= GONE_TABLE_KEPT))
                .map(|(node, _)| *node)
                .collect();
            for node in forgotten {
                remote.drop_node(node);
            }
            remote.asked.retain(|node, _| peers.contains(node));
            // a peer whose table this node lacks (it just linked) is asked for it
            let missing: Vec<u64> = peers
                .iter()
                .filter(|peer| {
                    !remote.tables.contains_key(peer)
                        && remote.asked.get(peer).is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(1))
                })
                .copied()
                .collect();
            for peer in missing {
                remote.asked.insert(peer, now);
                self.send(peer, 0, &Wire::SendTable);
            }
        }
        self.resend_due(&peers, now);
        self.seen.lock().retain(|node, _| peers.contains(node));
        self.heard.lock().retain(|node, _| peers.contains(node));
        let answering: Vec<u64> = {
            let heard = self.heard.lock();
            let mut reconcile = self.reconcile.lock();
            let back: Vec<u64> = reconcile
                .iter()
                .filter(|(node, since)| heard.get(node).is_some_and(|at| at > since))
                .map(|(node, _)| *node)
                .collect();
            for node in &back {
                reconcile.remove(node);
            }
            back
        };
        for node in returned.into_iter().chain(answering) {
            self.send_sessions(node);
        }
    }

    fn send_table(&self, to: u64) {
        let local = self.local.lock();
        let wire = Wire::Table {
            incarnation: self.incarnation(),
            version: local.version,
            filters: local.filters.keys().cloned().collect(),
        };
        self.send(to, 0, &wire);
    }

    fn known(&self, from: u64, incarnation: u64, version: u64) {
        if incarnation != self.incarnation() {
            return;
        }
        self.heard.lock().insert(from, Instant::now());
        let mut local = self.local.lock();
        let known = local.known.entry(from).or_insert(0);
        *known = (*known).max(version);
        self.release_waiters(&mut local);
    }

    fn on_routes(&self, from: u64, incarnation: u64, start: u64, changes: Vec<(bool, String)>) {
        let mut remote = self.remote.write();
        let in_step = remote.tables.get_mut(&from).filter(|t| t.incarnation == incarnation && t.version == start);
        let Some(table) = in_step else {
            drop(remote);
            tracing::debug!(peer = from, incarnation, start, "MQTT routes out of step: asking for the table");
            self.send(from, 0, &Wire::SendTable);
            return;
        };
        table.version = start + changes.len() as u64;
        let version = table.version;
        let mut applied = Vec::new();
        for (added, raw) in changes {
            let changed = if added { table.filters.insert(raw.clone()) } else { table.filters.remove(&raw) };
            if changed {
                applied.push((added, raw));
            }
        }
        for (added, raw) in applied {
            if added {
                remote.insert(from, &raw);
            } else {
                remote.remove(from, &raw);
            }
        }
        drop(remote);
        self.send(from, 0, &Wire::Known { incarnation, version });
    }

    fn on_table(&self, from: u64, incarnation: u64, version: u64, filters: Vec<String>) {
        let mut remote = self.remote.write();
        if remote.tables.get(&from).is_some_and(|t| t.incarnation == incarnation && t.version > version) {
            // an older table (from a connection the sender has replaced) than what is held
            return;
        }
        tracing::debug!(peer = from, incarnation, version, filters = filters.len(), "MQTT routes table");
        remote.drop_node(from);
        for raw in &filters {
            remote.insert(from, raw);
        }
        let filters = filters.into_iter().collect();
        remote.tables.insert(from, Table { incarnation, version, filters, gone_since: None });
        drop(remote);
        self.send(from, 0, &Wire::Known { incarnation, version });
        // the peer is (back) in this node's view: its sessions and this node's are compared
        self.send_sessions(from);
    }

    fn on_beacon(&self, from: u64, incarnation: u64, version: u64) {
        let in_step = self
            .remote
            .read()
            .tables
            .get(&from)
            .is_some_and(|table| table.incarnation == incarnation && table.version == version);
        if in_step {
            self.send(from, 0, &Wire::Known { incarnation, version });
        } else {
            self.send(from, 0, &Wire::SendTable);
        }
    }

    fn on_publish(&self, from: u64, incarnation: u64, id: u64, messages: Vec<Forward>) {
        let Some(ctx) = self.context() else { return };
        if id != 0 {
            let mut seen = self.seen.lock();
            let (seen_of, ids) = seen.entry(from).or_default();
            if *seen_of != incarnation {
                // cluster seed 109: a restarted peer's ids start again; taken for resent ones,
                // its forwards were answered and never delivered
                *seen_of = incarnation;
                ids.clear();
            }
            if !ids.insert(id) {
                drop(seen);
                // sent again: delivered already; answer again unless its notices are still out
                let relaying = self.relayed.lock().values().any(|r| r.from == from && r.id == id);
                if !relaying {
                    self.send(from, 0, &Wire::Published { incarnation, id, ok: true });
                }
                return;
            }
            if ids.len() > SEEN_IDS {
                ids.pop_first();
            }
        }
        self.received.increment(messages.len() as u64);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let relay = self.relay.get().cloned();
        let notice = || relay.as_ref().map(|relay| DurableNotice { session: relay.clone(), token });
        if id != 0 {
            self.relayed.lock().insert(token, Relayed { from, incarnation, id, left: 0, routing: true, failed: false });
        }
        // counted against the budget like local deliveries (the publishers on the sending
        // node are under its credit)
        let mut fanout = Fanout::new(&ctx.memory);
        let mut notices = 0;
        for forward in messages {
            let scope = match &forward.share {
                None => Scope::Direct,
                Some((group, filter)) => Scope::Share(group, filter),
            };
            let wants = forward.message.qos > 0 && id != 0;
            let routed = ctx.router.publish_scoped(Arc::clone(&forward.message), scope, &mut fanout, &|| {
                if wants { notice() } else { None }
            });
            notices += routed.notices;
        }
        fanout.send();
        if id != 0 {
            let done = {
                let mut relayed = self.relayed.lock();
                let finished = relayed.get_mut(&token).is_some_and(|entry| {
                    entry.left += notices as i64;
                    entry.routing = false;
                    entry.left <= 0
                });
                if finished { relayed.remove(&token) } else { None }
            };
            if let Some(entry) = done {
                self.send(
                    entry.from,
                    0,
                    &Wire::Published { incarnation: entry.incarnation, id: entry.id, ok: !entry.failed },
                );
            }
        }
    }

    /// The relay heard that deliveries of forwards were stored (or failed).
    fn relay_durable(&self, tokens: Vec<u64>, ok: bool) {
        let mut done = Vec::new();
        {
            let mut relayed = self.relayed.lock();
            for token in tokens {
                let Some(entry) = relayed.get_mut(&token) else { continue };
                entry.left -= 1;
                entry.failed |= !ok;
                if entry.left <= 0 && !entry.routing {
                    done.extend(relayed.remove(&token));
                }
            }
        }
        for entry in done {
            self.send(
                entry.from,
                0,
                &Wire::Published { incarnation: entry.incarnation, id: entry.id, ok: !entry.failed },
            );
        }
    }

    /// A client connects here and this node holds no session of its id: with `clean_start`
    /// the other nodes end theirs (closing its connection there, v5 0x8E); without, the node
    /// that holds it hands it over (the same), and it is returned with that node's id.
    pub async fn take_session(&self, client_id: &str, clean_start: bool) -> Option<(u64, Box<LoadedSession>)> {
        let peers = self.peers();
        let forwarder = self.forwarder()?;
        if peers.is_empty() {
            return None;
        }
        let ask = |id: u64, discard: bool| {
            let wire = Wire::TakeSession { client_id: client_id.to_string(), discard };
            for peer in &peers {
                self.send(*peer, id, &wire);
            }
        };
        if clean_start {
            ask(0, true);
            return None;
        }
        let id = forwarder.next_id();
        let (reply, answered) = tokio::sync::oneshot::channel();
        let take = Take { waiting: peers.iter().copied().collect(), found: None, reply: Some(reply) };
        self.takes.lock().insert(id, take);
        ask(id, false);
        let _ = tokio::time::timeout(TAKE_WAIT, answered).await;
        let take = self.takes.lock().remove(&id)?;
        tracing::debug!(client_id, unanswered = ?take.waiting, from = ?take.found.as_ref().map(|(node, _)| *node), "session take");
        if take.found.is_none() && !take.waiting.is_empty() {
            // a node out of reach may hold the session: the sessions are compared once it is back
            let now = Instant::now();
            let mut reconcile = self.reconcile.lock();
            for node in &take.waiting {
                reconcile.entry(*node).or_insert(now);
            }
        }
        take.found
    }

    /// Tells `node` that the session of `client_id` it handed over is stored here.
    pub fn session_taken(&self, node: u64, client_id: &str) {
        self.send(node, 0, &Wire::SessionTaken { client_id: client_id.to_string() });
    }

    fn on_session(&self, from: u64, id: u64, session: Option<Box<LoadedSession>>) {
        let mut takes = self.takes.lock();
        let Some(take) = takes.get_mut(&id) else {
            if let Some(session) = session {
                // handed over after the connect gave up waiting: its old node keeps the stored
                // copy (and restores it at its next start)
                tracing::warn!(peer = from, client_id = %session.client_id, "a session handed over too late to be taken");
            }
            return;
        };
        take.waiting.remove(&from);
        if let Some(session) = session {
            if take.found.is_some() {
                tracing::error!(peer = from, client_id = %session.client_id, "two nodes handed over one session");
            } else {
                take.found = Some((from, session));
            }
        }
        if (take.found.is_some() || take.waiting.is_empty())
            && let Some(reply) = take.reply.take()
        {
            let _ = reply.send(());
        }
    }

    fn on_take_session(self: &Arc<Self>, from: u64, id: u64, client_id: String, discard: bool) {
        let Some(ctx) = self.context() else { return };
        let routes = Arc::clone(self);
        tokio::spawn(
            async move {
                let session = match ctx.sessions.get(&client_id).await {
                    Some(handle) => ractor::call_t!(handle.actor, SessionMsg::HandOver, 3_000).ok(),
                    None => None,
                };
                tracing::debug!(%client_id, to = from, discard, handed = session.is_some(), "session asked for");
                if discard {
                    if session.is_some() {
                        forget_session(&ctx, &client_id).await;
                    }
                } else {
                    routes.send(from, 0, &Wire::Session { id, session });
                }
            }
            .in_current_span(),
        );
    }

    fn send_sessions(&self, to: u64) {
        let Some(ctx) = self.context() else { return };
        let Some(routes) = self.myself() else { return };
        tokio::spawn(
            async move {
                let sessions = ctx.sessions.attached().await;
                for chunk in sessions.chunks(SESSIONS_CHUNK) {
                    routes.send(to, 0, &Wire::Sessions { sessions: chunk.to_vec() });
                }
            }
            .in_current_span(),
        );
    }

    /// A peer holds `sessions`: where this node holds one too and its client attached here
    /// earlier (or at the same moment, and this node's id is lower), this node's copy ends.
    fn on_sessions(&self, from: u64, sessions: Vec<(String, i64)>) {
        let Some(ctx) = self.context() else { return };
        let node_id = self.node_id;
        tokio::spawn(
            async move {
                for (client_id, theirs) in sessions {
                    let Some(handle) = ctx.sessions.get(&client_id).await else { continue };
                    let ours = handle.attached_at.load(Ordering::Relaxed);
                    if (ours, node_id) < (theirs, from) {
                        tracing::info!(%client_id, peer = from, "session held on another node too, attached there later: ending it here");
                        let _ = ractor::call_t!(handle.actor, SessionMsg::HandOver, 3_000);
                        forget_session(&ctx, &client_id).await;
                    }
                }
            }
            .in_current_span(),
        );
    }

    fn on_session_taken(&self, client_id: String) {
        let Some(ctx) = self.context() else { return };
        tokio::spawn(async move { forget_session(&ctx, &client_id).await }.in_current_span());
    }

    /// Routes known of each peer (for status and tests): node → number of filters.
    pub fn peer_routes(&self) -> BTreeMap<u64, usize> {
        self.remote.read().tables.iter().map(|(node, table)| (*node, table.filters.len())).collect()
    }
}

impl Service for ClusterRoutes {
    fn deliver(&self, from: u64, id: u64, payload: Bytes) {
        let decoded: Result<(Wire, usize), _> =
            bincode::serde::decode_from_slice(&payload, bincode::config::standard());
        let wire = match decoded {
            Ok((wire, _)) => wire,
            Err(error) => {
                tracing::warn!(peer = from, %error, "undecodable MQTT route message");
                return;
            }
        };
        match wire {
            Wire::Routes { incarnation, from: start, changes } => self.on_routes(from, incarnation, start, changes),
            Wire::Table { incarnation, version, filters } => self.on_table(from, incarnation, version, filters),
            Wire::Beacon { incarnation, version } => self.on_beacon(from, incarnation, version),
            Wire::SendTable => self.send_table(from),
            Wire::Known { incarnation, version } => self.known(from, incarnation, version),
            Wire::Publish { incarnation, messages } => self.on_publish(from, incarnation, id, messages),
            // an answer to a forward of this node's earlier start is not one to this start's
            Wire::Published { incarnation, id, ok } if incarnation == self.incarnation() => self.answer(id, ok),
            Wire::Published { .. } => {}
            Wire::TakeSession { client_id, discard } => {
                if let Some(routes) = self.myself() {
                    routes.on_take_session(from, id, client_id, discard);
                }
            }
            Wire::Session { id, session } => self.on_session(from, id, session),
            Wire::SessionTaken { client_id } => self.on_session_taken(client_id),
            Wire::Sessions { sessions } => self.on_sessions(from, sessions),
        }
    }

    fn undelivered(&self, id: u64) {
        // the link dropped it (or may have): sent again soon
        if let Some(entry) = self.pending.lock().get_mut(&id) {
            entry.resend_at = entry.resend_at.min(Instant::now() + RESEND_DELAY);
        }
    }
}

/// Deletes the stored copy of a session that moved to another node (unless the client came
/// back here since).
async fn forget_session(ctx: &NodeContext, client_id: &str) {
    if ctx.sessions.get(client_id).await.is_some() {
        return;
    }
    tracing::debug!(client_id, "stored copy of a session that moved forgotten");
    // synced: a power loss must not bring the copy back as a second owner
    let deleted = persist::delete_session(ctx.state_store.as_ref(), client_id)
        .map_err(|error| error.to_string())
        .and_then(|()| ctx.state_store.sync().map_err(|error| error.to_string()));
    if let Err(error) = deleted {
        tracing::error!(client_id, %error, "cannot delete the stored copy of a session that moved");
    }
}

fn answer_notices(notices: Vec<DurableNotice>, ok: bool) {
    for notice in notices {
        let _ = notice.session.cast(SessionMsg::Durable { tokens: vec![notice.token], ok });
    }
}

/// The stand-in publisher of forwards from peers: the node's sessions answer its notices as
/// they answer a local publisher's, and it tells the routes.
struct Relay;

impl Actor for Relay {
    type Msg = SessionMsg;
    type State = Weak<ClusterRoutes>;
    type Arguments = Weak<ClusterRoutes>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        routes: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(routes)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        routes: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SessionMsg::Durable { tokens, ok } = message
            && let Some(routes) = routes.upgrade()
        {
            routes.relay_durable(tokens, ok);
        }
        Ok(())
    }
}
