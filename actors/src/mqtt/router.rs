//! The node's router: which sessions are subscribed to what, the retained messages, and
//! the fan-out of each accepted message to the sessions it matches.
//!
//! The router is a shared, read-mostly structure in the node context rather than an actor:
//! every PUBLISH is matched by the publishing session's own actor under a read lock and
//! sent straight to the subscribers' actors, so a message costs one actor hop instead of
//! two. Mutations (subscribe, unsubscribe, retain) take the write lock briefly.

use std::collections::BTreeMap;

use crate::lookup::{LookupEntry, LookupMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};
use ractor::ActorRef;
use smallvec::SmallVec;
use tidewater_storage::StateStore;

use crate::memory::MemoryBudget;
use crate::mqtt::cluster_routes::{ClusterRoutes, Forward};
use crate::mqtt::message::{Delivery, Message, SubOptions};
use crate::mqtt::persist;
use crate::mqtt::retained::RetainedIndex;
use crate::mqtt::session::SessionMsg;
use crate::mqtt::topic;
use crate::mqtt::trie::SubscriptionTrie;
use crate::stream::partition::DurableNotice;

/// Deliveries per `Deliver` message at most.
const FANOUT_CHUNK: usize = 64;
/// Messages per forward to another node at most, and the payload bytes past which one goes
/// (a forward rides one data-plane frame, and a link's outbox is bounded).
const FORWARD_CHUNK: usize = 256;
const FORWARD_CHUNK_BYTES: usize = 1 << 20;

/// Deliveries routed by one session while it handles one message (up to a batch of
/// PUBLISH packets), gathered per subscriber so that each subscriber gets one `Deliver`
/// with all of them, in order, instead of one actor message per delivery.
#[derive(Default)]
pub struct Fanout {
    index: LookupMap<ractor::ActorId, usize, foldhash::fast::RandomState>,
    targets: Vec<(ActorRef<SessionMsg>, Vec<Delivery>, Vec<DurableNotice>)>,
    /// messages for other nodes, one forward per node, and their payload bytes
    remote: Vec<(u64, Vec<Forward>, Vec<DurableNotice>, usize)>,
    routes: Option<Arc<ClusterRoutes>>,
    /// what the deliveries count against until their subscribers take them
    budget: Option<Arc<MemoryBudget>>,
}

impl Fanout {
    /// A fanout whose deliveries count against `budget` while they wait in mailboxes.
    pub fn new(budget: &Arc<MemoryBudget>) -> Self {
        Self { budget: Some(Arc::clone(budget)), ..Self::default() }
    }

    /// Adds a delivery for `actor`, after the ones gathered for it before. A subscriber's
    /// deliveries go out every [`FANOUT_CHUNK`], so that it works on the first ones while the
    /// publisher routes the rest.
    /// `notice`, when given, is answered once the subscriber has stored the delivery.
    pub fn add(&mut self, actor: &ActorRef<SessionMsg>, delivery: Delivery, notice: Option<DurableNotice>) {
        let id = actor.get_id();
        let at = match self.targets.last() {
            Some((last, _, _)) if last.get_id() == id => self.targets.len() - 1,
            _ => match self.index.entry(id) {
                LookupEntry::Occupied(at) => *at.get(),
                LookupEntry::Vacant(slot) => {
                    slot.insert(self.targets.len());
                    self.targets.push((actor.clone(), Vec::new(), Vec::new()));
                    self.targets.len() - 1
                }
            },
        };
        let (actor, deliveries, notices) = &mut self.targets[at];
        deliveries.push(delivery);
        notices.extend(notice);
        if deliveries.len() >= FANOUT_CHUNK {
            deliver(actor, std::mem::take(deliveries), std::mem::take(notices), self.budget.as_ref());
        }
    }

    /// Adds a message for node `node`, after the ones gathered for it before.
    fn add_remote(&mut self, routes: &Arc<ClusterRoutes>, node: u64, forward: Forward, notice: Option<DurableNotice>) {
        if self.routes.is_none() {
            self.routes = Some(Arc::clone(routes));
        }
        let at = match self.remote.iter().position(|(n, _, _, _)| *n == node) {
            Some(at) => at,
            None => {
                self.remote.push((node, Vec::new(), Vec::new(), 0));
                self.remote.len() - 1
            }
        };
        let (_, forwards, notices, bytes) = &mut self.remote[at];
        *bytes += forward.message.bytes();
        forwards.push(forward);
        notices.extend(notice);
        if forwards.len() >= FORWARD_CHUNK || *bytes >= FORWARD_CHUNK_BYTES {
            *bytes = 0;
            routes.forward(node, std::mem::take(forwards), std::mem::take(notices));
        }
    }

    /// Casts the gathered deliveries, one message per subscriber, and sends one forward per
    /// other node.
    pub fn send(&mut self) {
        for (actor, deliveries, notices) in self.targets.drain(..) {
            if !deliveries.is_empty() {
                deliver(&actor, deliveries, notices, self.budget.as_ref());
            }
        }
        self.index.clear();
        if let Some(routes) = &self.routes {
            for (node, forwards, notices, _) in self.remote.drain(..) {
                if !forwards.is_empty() {
                    routes.forward(node, forwards, notices);
                }
            }
        }
    }
}

/// Casts deliveries to a session, counted against `budget` until it takes them. A session
/// that has stopped has ended (expired or taken over): nothing of it is left to store into,
/// so its notices are answered at once.
fn deliver(
    actor: &ActorRef<SessionMsg>,
    deliveries: Vec<Delivery>,
    notices: Vec<DurableNotice>,
    budget: Option<&Arc<MemoryBudget>>,
) {
    let token = budget.map(|budget| budget.deliver(deliveries.iter().map(|d| d.message.bytes()).sum()));
    if let Err(ractor::MessagingErr::SendErr(SessionMsg::Deliver(_, notices, _))) =
        actor.cast(SessionMsg::Deliver(deliveries, notices, token))
    {
        for notice in notices {
            let _ = notice.session.cast(SessionMsg::Durable { tokens: vec![notice.token], ok: true });
        }
    }
}

/// Which subscribers a message is routed to.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Published on this node: every subscriber of the cluster (retained here if asked).
    All,
    /// Forwarded by another node: this node's non-shared subscribers.
    Direct,
    /// Forwarded by another node that chose this node's members of share group (group, filter).
    Share(&'a Arc<str>, &'a Arc<str>),
}

/// Which member of a share group gets a message.
enum Choice {
    Local(usize),
    Remote(u64),
}

/// What routing one message did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routed {
    /// Deliveries that carry a notice (to persistent sessions, QoS 1/2).
    pub notices: usize,
    /// The message was to be retained and storing it failed.
    pub retain_failed: bool,
}

/// A session as the router sees it: its actor, whether a client is connected, and whether
/// the session outlives its connection.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The session's actor.
    pub actor: ActorRef<SessionMsg>,
    /// Whether a client is connected (shared subscriptions prefer connected members).
    pub online: Arc<AtomicBool>,
    /// Whether the session is persistent: a QoS 1/2 delivery to it is part of what the
    /// publisher's acknowledgement promises, so it answers once the delivery is stored.
    pub persistent: Arc<AtomicBool>,
    /// When a client last attached (ms since the epoch; for a restored session, when it was
    /// last stored): of two nodes that both hold a session after a partition, the later wins.
    pub attached_at: Arc<std::sync::atomic::AtomicI64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SubKey {
    share_group: Option<Arc<str>>,
    client_id: Arc<str>,
}

/// A share group: (group name, topic filter).
type GroupKey = (Arc<str>, Arc<str>);

#[derive(Debug, Clone)]
struct SubEntry {
    session: SessionHandle,
    options: SubOptions,
    /// The topic filter (without `$share/group/`): a share group is (group, filter).
    filter: Arc<str>,
}

/// Subscriptions, retained messages and message fan-out for one node.
pub struct Router {
    trie: RwLock<SubscriptionTrie<SubKey, SubEntry>>,
    share_cursors: Mutex<LookupMap<GroupKey, usize>>,
    retained: RwLock<RetainedIndex>,
    store: Arc<dyn StateStore>,
    routes: Arc<ClusterRoutes>,
    subscriptions_gauge: metrics::Gauge,
    retained_gauge: metrics::Gauge,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("subscriptions", &self.trie.read().len()).finish()
    }
}

impl Router {
    /// An empty router persisting retained messages in `store`, reporting to the node's
    /// gauges, telling `routes` (the cluster's) what this node's sessions subscribe to.
    pub fn new(
        store: Arc<dyn StateStore>,
        counters: &crate::metrics::MqttCounters,
        routes: Arc<ClusterRoutes>,
    ) -> Self {
        Self {
            trie: RwLock::new(SubscriptionTrie::default()),
            share_cursors: Mutex::new(LookupMap::new()),
            retained: RwLock::new(RetainedIndex::default()),
            store,
            routes,
            subscriptions_gauge: counters.subscriptions.clone(),
            retained_gauge: counters.retained.clone(),
        }
    }

    /// Loads retained messages from the store (at start).
    pub fn load_retained(&self) -> Result<usize, persist::PersistError> {
        let messages = persist::load_retained(self.store.as_ref())?;
        let mut retained = self.retained.write();
        for message in messages {
            retained.insert(Arc::new(message));
        }
        self.retained_gauge.set(retained.len() as f64);
        Ok(retained.len())
    }

    /// Adds or replaces a session's subscription. Returns the version of this node's routes
    /// that the other nodes of the cluster must hold before the SUBACK, if some do not yet.
    pub fn subscribe(
        &self,
        client_id: &str,
        raw_filter: &str,
        options: SubOptions,
        session: SessionHandle,
    ) -> Option<u64> {
        let Ok(parsed) = topic::parse_filter(raw_filter) else { return None };
        let key = SubKey { share_group: parsed.share_group.map(Arc::from), client_id: Arc::from(client_id) };
        let mut trie = self.trie.write();
        let replaced = trie.insert(parsed.filter, key, SubEntry { session, options, filter: Arc::from(parsed.filter) });
        self.subscriptions_gauge.set(trie.len() as f64);
        // told under the trie's lock, so that the route count follows the trie's order
        if replaced.is_none() {
            self.routes.local_added(raw_filter)
        } else {
            self.routes.local_added_before(raw_filter)
        }
    }

    /// Removes a session's subscription.
    pub fn unsubscribe(&self, client_id: &str, raw_filter: &str) {
        let Ok(parsed) = topic::parse_filter(raw_filter) else { return };
        let key = SubKey { share_group: parsed.share_group.map(Arc::from), client_id: Arc::from(client_id) };
        let mut trie = self.trie.write();
        if trie.remove(parsed.filter, &key).is_some() {
            self.routes.local_removed(raw_filter);
        }
        self.subscriptions_gauge.set(trie.len() as f64);
    }

    /// The cluster's routes.
    pub fn routes(&self) -> &Arc<ClusterRoutes> {
        &self.routes
    }

    /// Stores or clears (empty payload) a retained message; false when the store failed (the
    /// publish must then not be acknowledged).
    pub fn retain(&self, message: &Arc<Message>) -> bool {
        let mut retained = self.retained.write();
        let result = if message.payload.is_empty() {
            retained.remove(&message.topic);
            persist::delete_retained(self.store.as_ref(), &message.topic)
        } else {
            retained.insert(Arc::clone(message));
            persist::put_retained(self.store.as_ref(), message)
        };
        self.retained_gauge.set(retained.len() as f64);
        if let Err(error) = result {
            tracing::error!(topic = %message.topic, %error, "cannot persist retained message");
            return false;
        }
        true
    }

    /// Retained messages whose topic matches `filter`, skipping expired ones: the filter walks
    /// the index of retained topics, only down the branches it can match.
    pub fn retained_matching(&self, filter: &str, now_ms: i64) -> Vec<Arc<Message>> {
        let mut found = self.retained.read().matching(filter);
        found.retain(|message| !message.is_expired(now_ms));
        found
    }

    /// Routes an accepted message: retains it if asked, then delivers it once to every
    /// matching session and to one member of every matching share group, of this node or of
    /// another (forwarded there), through `fanout` (which the caller sends once it routed its
    /// batch). Each QoS 1/2 delivery to a persistent session, and each QoS 1/2 forward to
    /// another node, carries a `notice()`.
    pub fn publish(
        &self,
        message: Arc<Message>,
        fanout: &mut Fanout,
        notice: &dyn Fn() -> Option<DurableNotice>,
    ) -> Routed {
        self.publish_scoped(message, Scope::All, fanout, notice)
    }

    /// [`Router::publish`] to the subscribers `scope` names.
    pub fn publish_scoped(
        &self,
        message: Arc<Message>,
        scope: Scope<'_>,
        fanout: &mut Fanout,
        notice: &dyn Fn() -> Option<DurableNotice>,
    ) -> Routed {
        let mut routed = Routed::default();
        if matches!(scope, Scope::All) && message.retain && !self.retain(&message) {
            routed.retain_failed = true;
        }
        // matches are gathered in a vec and merged per session after sorting (no allocation
        // up to a few subscribers, one beyond) instead of one map node per subscriber
        let mut direct: SmallVec<[(Arc<str>, SessionHandle, Delivery); 4]> = SmallVec::new();
        let mut groups: BTreeMap<GroupKey, Vec<(Arc<str>, SubEntry)>> = BTreeMap::new();
        {
            let trie = self.trie.read();
            trie.for_each_match(&message.topic, |key, entry| match (&key.share_group, scope) {
                (None, Scope::All | Scope::Direct) => {
                    if entry.options.no_local && *key.client_id == *message.publisher {
                        return;
                    }
                    direct.push((
                        Arc::clone(&key.client_id),
                        entry.session.clone(),
                        Delivery {
                            message: Arc::clone(&message),
                            qos: entry.options.qos.min(message.qos),
                            retain: message.retain && entry.options.retain_as_published,
                            subscription_ids: entry.options.subscription_id.into_iter().collect(),
                        },
                    ));
                }
                (Some(group), Scope::All) => {
                    groups
                        .entry((Arc::clone(group), Arc::clone(&entry.filter)))
                        .or_default()
                        .push((Arc::clone(&key.client_id), entry.clone()));
                }
                (Some(group), Scope::Share(chosen, filter)) if group == chosen && entry.filter == *filter => {
                    groups
                        .entry((Arc::clone(group), Arc::clone(&entry.filter)))
                        .or_default()
                        .push((Arc::clone(&key.client_id), entry.clone()));
                }
                _ => {}
            });
        }
        if direct.len() > 1 {
            // one delivery per session: the highest QoS and every subscription id of its matches
            direct.sort_by(|a, b| a.0.cmp(&b.0));
            direct.dedup_by(|later, kept| {
                if later.0 != kept.0 {
                    return false;
                }
                kept.2.qos = kept.2.qos.max(later.2.qos);
                kept.2.retain |= later.2.retain;
                kept.2.subscription_ids.append(&mut later.2.subscription_ids);
                true
            });
        }
        let mut count = 0;
        let mut add = |session: &SessionHandle, delivery: Delivery, fanout: &mut Fanout| {
            let notice = if delivery.qos > 0 && session.persistent.load(Ordering::Relaxed) { notice() } else { None };
            count += usize::from(notice.is_some());
            fanout.add(&session.actor, delivery, notice);
        };
        for (_, session, delivery) in direct {
            add(&session, delivery, fanout);
        }
        let mut remote =
            if matches!(scope, Scope::All) { self.routes.matches(&message.topic) } else { Default::default() };
        let mut forwarded = 0;
        let mut forward = |node: u64, share: Option<(Arc<str>, Arc<str>)>, fanout: &mut Fanout| {
            let notice = if message.qos > 0 { notice() } else { None };
            forwarded += usize::from(notice.is_some());
            fanout.add_remote(&self.routes, node, Forward { message: Arc::clone(&message), share }, notice);
        };
        for node in std::mem::take(&mut remote.direct) {
            forward(node, None, fanout);
        }
        for group_key in remote.groups.keys() {
            groups.entry(group_key.clone()).or_default();
        }
        for (group_key, members) in groups {
            let nodes = remote.groups.get(&group_key).map(Vec::as_slice).unwrap_or(&[]);
            match self.choose_member(&group_key, &members, nodes) {
                Choice::Local(chosen) => {
                    let (_, entry) = &members[chosen];
                    let delivery = Delivery {
                        message: Arc::clone(&message),
                        qos: entry.options.qos.min(message.qos),
                        retain: message.retain && entry.options.retain_as_published,
                        subscription_ids: entry.options.subscription_id.into_iter().collect(),
                    };
                    add(&entry.session, delivery, fanout);
                }
                Choice::Remote(node) => forward(node, Some(group_key), fanout),
            }
        }
        routed.notices = count + forwarded;
        routed
    }

    /// Round robin over the group's members, preferring connected ones; the members of
    /// another node count as one candidate, that node (which picks among them).
    fn choose_member(&self, group_key: &GroupKey, members: &[(Arc<str>, SubEntry)], nodes: &[u64]) -> Choice {
        let online: Vec<usize> =
            (0..members.len()).filter(|i| members[*i].1.session.online.load(Ordering::Relaxed)).collect();
        let locals: Vec<usize> =
            if online.is_empty() && nodes.is_empty() { (0..members.len()).collect() } else { online };
        let mut cursors = self.share_cursors.lock();
        let cursor = cursors.entry(group_key.clone()).or_insert(0);
        let chosen = *cursor % (locals.len() + nodes.len()).max(1);
        *cursor = cursor.wrapping_add(1);
        match locals.get(chosen) {
            Some(local) => Choice::Local(*local),
            None => Choice::Remote(nodes[chosen - locals.len()]),
        }
    }

    /// The number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.trie.read().len()
    }
}
