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

use crate::mqtt::message::{Delivery, Message, SubOptions};
use crate::mqtt::persist;
use crate::mqtt::session::SessionMsg;
use crate::mqtt::topic;
use crate::mqtt::trie::SubscriptionTrie;
use crate::stream::partition::DurableNotice;

/// Deliveries per `Deliver` message at most.
const FANOUT_CHUNK: usize = 64;

/// Deliveries routed by one session while it handles one message (up to a batch of
/// PUBLISH packets), gathered per subscriber so that each subscriber gets one `Deliver`
/// with all of them, in order, instead of one actor message per delivery.
#[derive(Default)]
pub struct Fanout {
    index: LookupMap<ractor::ActorId, usize, foldhash::fast::RandomState>,
    targets: Vec<(ActorRef<SessionMsg>, Vec<Delivery>, Vec<DurableNotice>)>,
}

impl Fanout {
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
            deliver(actor, std::mem::take(deliveries), std::mem::take(notices));
        }
    }

    /// Casts the gathered deliveries, one message per subscriber.
    pub fn send(&mut self) {
        for (actor, deliveries, notices) in self.targets.drain(..) {
            if !deliveries.is_empty() {
                deliver(&actor, deliveries, notices);
            }
        }
        self.index.clear();
    }
}

/// Casts deliveries to a session. A session that has stopped has ended (expired or taken
/// over): nothing of it is left to store into, so its notices are answered at once.
fn deliver(actor: &ActorRef<SessionMsg>, deliveries: Vec<Delivery>, notices: Vec<DurableNotice>) {
    if let Err(ractor::MessagingErr::SendErr(SessionMsg::Deliver(_, notices))) =
        actor.cast(SessionMsg::Deliver(deliveries, notices))
    {
        for notice in notices {
            let _ = notice.session.cast(SessionMsg::Durable { tokens: vec![notice.token], ok: true });
        }
    }
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
    retained: RwLock<BTreeMap<String, Arc<Message>>>,
    store: Arc<dyn StateStore>,
    subscriptions_gauge: metrics::Gauge,
    retained_gauge: metrics::Gauge,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("subscriptions", &self.trie.read().len()).finish()
    }
}

impl Router {
    /// An empty router persisting retained messages in `store`, reporting to the node's gauges.
    pub fn new(store: Arc<dyn StateStore>, counters: &crate::metrics::MqttCounters) -> Self {
        Self {
            trie: RwLock::new(SubscriptionTrie::default()),
            share_cursors: Mutex::new(LookupMap::new()),
            retained: RwLock::new(BTreeMap::new()),
            store,
            subscriptions_gauge: counters.subscriptions.clone(),
            retained_gauge: counters.retained.clone(),
        }
    }

    /// Loads retained messages from the store (at start).
    pub fn load_retained(&self) -> Result<usize, persist::PersistError> {
        let messages = persist::load_retained(self.store.as_ref())?;
        let mut retained = self.retained.write();
        for message in messages {
            retained.insert(message.topic.clone(), Arc::new(message));
        }
        self.retained_gauge.set(retained.len() as f64);
        Ok(retained.len())
    }

    /// Adds or replaces a session's subscription.
    pub fn subscribe(&self, client_id: &str, raw_filter: &str, options: SubOptions, session: SessionHandle) {
        let Ok(parsed) = topic::parse_filter(raw_filter) else { return };
        let key = SubKey { share_group: parsed.share_group.map(Arc::from), client_id: Arc::from(client_id) };
        let mut trie = self.trie.write();
        trie.insert(parsed.filter, key, SubEntry { session, options, filter: Arc::from(parsed.filter) });
        self.subscriptions_gauge.set(trie.len() as f64);
    }

    /// Removes a session's subscription.
    pub fn unsubscribe(&self, client_id: &str, raw_filter: &str) {
        let Ok(parsed) = topic::parse_filter(raw_filter) else { return };
        let key = SubKey { share_group: parsed.share_group.map(Arc::from), client_id: Arc::from(client_id) };
        let mut trie = self.trie.write();
        trie.remove(parsed.filter, &key);
        self.subscriptions_gauge.set(trie.len() as f64);
    }

    /// Stores or clears (empty payload) a retained message; false when the store failed (the
    /// publish must then not be acknowledged).
    pub fn retain(&self, message: &Arc<Message>) -> bool {
        let mut retained = self.retained.write();
        let result = if message.payload.is_empty() {
            retained.remove(&message.topic);
            persist::delete_retained(self.store.as_ref(), &message.topic)
        } else {
            retained.insert(message.topic.clone(), Arc::clone(message));
            persist::put_retained(self.store.as_ref(), message)
        };
        self.retained_gauge.set(retained.len() as f64);
        if let Err(error) = result {
            tracing::error!(topic = %message.topic, %error, "cannot persist retained message");
            return false;
        }
        true
    }

    /// Retained messages whose topic matches `filter`, skipping expired ones.
    pub fn retained_matching(&self, filter: &str, now_ms: i64) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .values()
            .filter(|message| topic::matches(filter, &message.topic) && !message.is_expired(now_ms))
            .cloned()
            .collect()
    }

    /// Routes an accepted message: retains it if asked, then delivers it once to every
    /// matching session and to one member of every matching share group, through `fanout`
    /// (which the caller sends once it routed its batch). Each QoS 1/2 delivery to a persistent
    /// session carries a `notice()`.
    pub fn publish(
        &self,
        message: Arc<Message>,
        fanout: &mut Fanout,
        notice: &dyn Fn() -> Option<DurableNotice>,
    ) -> Routed {
        let mut routed = Routed::default();
        if message.retain && !self.retain(&message) {
            routed.retain_failed = true;
        }
        // matches are gathered in a vec and merged per session after sorting (no allocation
        // up to a few subscribers, one beyond) instead of one map node per subscriber
        let mut direct: SmallVec<[(Arc<str>, SessionHandle, Delivery); 4]> = SmallVec::new();
        let mut groups: BTreeMap<GroupKey, Vec<(Arc<str>, SubEntry)>> = BTreeMap::new();
        {
            let trie = self.trie.read();
            trie.for_each_match(&message.topic, |key, entry| match &key.share_group {
                None => {
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
                Some(group) => {
                    groups
                        .entry((Arc::clone(group), Arc::clone(&entry.filter)))
                        .or_default()
                        .push((Arc::clone(&key.client_id), entry.clone()));
                }
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
        for (group_key, members) in groups {
            let chosen = self.choose_member(group_key, &members);
            let (_, entry) = &members[chosen];
            let delivery = Delivery {
                message: Arc::clone(&message),
                qos: entry.options.qos.min(message.qos),
                retain: message.retain && entry.options.retain_as_published,
                subscription_ids: entry.options.subscription_id.into_iter().collect(),
            };
            add(&entry.session, delivery, fanout);
        }
        routed.notices = count;
        routed
    }

    /// Round robin over the group's members, preferring connected ones.
    fn choose_member(&self, group_key: GroupKey, members: &[(Arc<str>, SubEntry)]) -> usize {
        let online: Vec<usize> =
            (0..members.len()).filter(|i| members[*i].1.session.online.load(Ordering::Relaxed)).collect();
        let candidates: Vec<usize> = if online.is_empty() { (0..members.len()).collect() } else { online };
        let mut cursors = self.share_cursors.lock();
        let cursor = cursors.entry(group_key).or_insert(0);
        let chosen = candidates[*cursor % candidates.len()];
        *cursor = cursor.wrapping_add(1);
        chosen
    }

    /// The number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.trie.read().len()
    }
}
