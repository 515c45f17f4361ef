//! The `MqttSession` actor: one per MQTT session, a thin shell around [`SessionState`].
//!
//! It owns the session across connections: a connection task feeds it decoded packets,
//! the router feeds it deliveries, and it performs the state machine's effects — writing
//! to the connection's outbox, routing, persisting, and the will and expiry timers.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use crate::context::NodeContext;
use crate::mqtt::ack_gate::{AckGate, Released};
use crate::mqtt::auth::Identity;
use crate::mqtt::codec::{
    self, ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, ProtocolVersion,
};
use crate::mqtt::message::{Delivery, Message, RetainHandling};
use crate::mqtt::outbox::{InboundCredit, Outbox, Pushed};
use crate::mqtt::persist::{self, LoadedSession, SessionRecord, StoredWill};
use crate::mqtt::router::{Fanout, Routed, SessionHandle};
use crate::mqtt::session_state::{ConnectionParams, Effect, PersistOp, SessionState, message_from_will};
use crate::mqtt::topic;
use crate::stream::partition::DurableNotice;

/// A connection asking to be attached to a session (after CONNECT was accepted).
#[derive(Clone)]
pub struct AttachRequest {
    /// Identifies the connection, so that messages about an older one are ignored.
    pub conn_id: u64,
    /// Where the session puts the bytes the connection writes.
    pub outbox: Arc<Outbox>,
    /// What the client asked for in CONNECT.
    pub params: ConnectionParams,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Session Expiry Interval granted (seconds; u32::MAX = never).
    pub expiry_secs: u32,
    /// CONNACK properties prepared by the connection (v5).
    pub connack_properties: Option<ConnAckProperties>,
}

/// Messages of the `MqttSession` actor.
pub enum SessionMsg {
    /// Attach a new connection (session takeover if one is attached); replies once CONNACK is queued.
    Attach(Box<AttachRequest>, RpcReplyPort<bool>),
    /// Packets decoded from the connection, and the decode error that ended them if any.
    Inbound {
        /// The connection they came from.
        conn_id: u64,
        /// The packets, in order.
        packets: Vec<Packet>,
        /// A decode error after the packets.
        error: Option<codec::CodecError>,
        /// Returned once processed: bounds how far the reader runs ahead.
        credit: InboundCredit,
    },
    /// The connection ended without DISCONNECT (EOF, error, keepalive timeout, an expired token).
    ConnectionLost {
        /// The connection.
        conn_id: u64,
        /// Why the server ends it, if it does (the keepalive ran out, the token expired): a v5
        /// client is told so.
        closed_for: Option<DisconnectReasonCode>,
    },
    /// Messages routed to this session, in order (one cast per publishing batch), the
    /// publishers to tell once the deliveries are stored, and what the deliveries count
    /// against the node's memory budget until this session has taken them.
    Deliver(Vec<Delivery>, Vec<DurableNotice>, Option<crate::memory::DeliveryToken>),
    /// The connection drained its outbox after it was congested.
    Writable {
        /// The connection.
        conn_id: u64,
    },
    /// The will delay of the connection of this epoch has passed.
    WillDelayElapsed(u64),
    /// The session expiry of this epoch has passed.
    ExpiryElapsed(u64),
    /// The node is stopping: close the connection, persist, reply.
    Shutdown(RpcReplyPort<()>),
    /// Every session and stream of the node is restored: start the timers of a restored
    /// session (its will, its expiry), whose firing must find the whole node in place.
    Resume,
    /// Another node of the cluster takes the session over: close the connection (v5:
    /// DISCONNECT 0x8E), stop, and reply with the whole session.
    HandOver(RpcReplyPort<Box<LoadedSession>>),
    /// Stream appends, or deliveries to persistent sessions, made for this session's
    /// publishes are durable (or failed).
    Durable {
        /// The tokens given with the appends.
        tokens: Vec<u64>,
        /// Whether the appends succeeded.
        ok: bool,
    },
}

/// Spawn arguments of a session.
pub struct SessionArgs {
    /// The node.
    pub ctx: NodeContext,
    /// The client id.
    pub client_id: String,
    /// State loaded from storage at node start.
    pub restored: Option<LoadedSession>,
    /// Shared with the router: whether a client is connected.
    pub online: Arc<AtomicBool>,
    /// Shared with the router: whether the session is persistent.
    pub persistent: Arc<AtomicBool>,
    /// Shared with the registry: when a client last attached.
    pub attached_at: Arc<std::sync::atomic::AtomicI64>,
    /// A connection to attach right away (a new session), which saves the attach round trip.
    pub attach: Option<AttachRequest>,
}

/// The `MqttSession` actor.
pub struct MqttSession;

struct ConnIo {
    conn_id: u64,
    version: ProtocolVersion,
    outbox: Arc<Outbox>,
    /// Packets encoded since the last flush.
    out: BytesMut,
    /// The outbox is over its high-water mark: deliveries wait in the session queue.
    congested: bool,
}

/// The actor's state: the protocol state plus the I/O around it.
pub struct SessionShell {
    ctx: NodeContext,
    state: SessionState,
    io: Option<ConnIo>,
    handle: SessionHandle,
    /// Changes at every attach and detach; timers carry it to recognise stale firings.
    epoch: u64,
    /// A will waiting for its delay: the message, who set it, when it is due (ms).
    pending_will: Option<(Arc<Message>, Identity, i64)>,
    /// A will published and waiting for the subscribers' notices before it is removed from the
    /// store: its token and the notices still outstanding.
    will_publication: Option<(u64, usize)>,
    /// The next will publication's token.
    next_will_token: u64,
    /// The will being published, kept in the session record until its notices are in.
    published_will: Option<StoredWill>,
    /// Seconds the session was down before a restart, until [`SessionMsg::Resume`] starts its timers.
    restored_elapsed_secs: Option<u64>,
    /// QoS 2 packet ids routed to subscribers whose PUBREC was never sent (a failed append,
    /// or the connection ended first): their retry is appended to streams again but not
    /// routed to subscribers a second time. Persisted (`persist::REAPPEND`).
    reappend_only: BTreeSet<u16>,
    /// QoS 2 packet ids routed on this connection whose PUBREC is still held by the ack gate.
    unacked_qos2: BTreeSet<u16>,
    /// Store writes that failed since the session started (a delivery notice reports them).
    persist_failures: std::cell::Cell<u64>,
    identity: Identity,
    /// Whether the session existed before the current connection (CONNACK session present).
    established: bool,
    /// Acknowledgements held until stream appends are durable, in PUBLISH order.
    acks: AckGate,
    /// The version of the node's routes the next SUBACK waits for the cluster to hold.
    route_wait: Option<u64>,
    /// Whether the queue overflowed since it last drained (to warn once per episode).
    queue_overflowing: bool,
    /// Deliveries routed while handling one message, cast per subscriber at its end.
    fanout: Fanout,
    /// Whether anything of this session may be in the store (restored, or persisted since):
    /// a clean session that never was skips the store when it ends.
    on_disk: std::cell::Cell<bool>,
}

/// Will publications' tokens live in the upper half of the token space, the ack gate's in the lower.
const WILL_TOKEN: u64 = 1 << 63;

impl Actor for MqttSession {
    type Msg = SessionMsg;
    type State = SessionShell;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionShell, ActorProcessingErr> {
        let ctx = args.ctx;
        let mut state = SessionState::new(args.client_id.clone(), ctx.mqtt.session_limits(&ctx.memory));
        let handle = SessionHandle {
            actor: myself.clone(),
            online: args.online,
            persistent: args.persistent,
            attached_at: args.attached_at,
        };
        ctx.mqtt_counters.sessions.increment(1.0);
        let mut elapsed_secs = None;
        let mut will = None;
        let mut reappend = BTreeSet::new();
        if let Some(loaded) = args.restored {
            let subscriptions = loaded.record.subscriptions.into_iter().collect();
            state.restore(loaded.record.expiry_secs, subscriptions, loaded.outgoing, loaded.incoming_qos2);
            handle.persistent.store(state.is_persistent(), Ordering::Relaxed);
            for (raw_filter, options) in state.subscriptions() {
                // restored before the node joins its cluster: the peers get the table then
                let _ = ctx.router.subscribe(&args.client_id, raw_filter, options.clone(), handle.clone());
            }
            elapsed_secs = Some(((ctx.now_ms() - loaded.record.saved_at_ms).max(0) / 1000) as u64);
            will = loaded.record.will;
            reappend = loaded.reappend;
        }
        let mut shell = SessionShell::new(ctx, state, handle, elapsed_secs.is_some());
        shell.restored_elapsed_secs = elapsed_secs;
        shell.reappend_only = reappend;
        if let Some(stored) = will {
            // a will set by a client that was connected when the node went down is due its
            // delay after the node is back, as if the connection had just been lost
            let now = shell.ctx.now_ms();
            let delay_ms = i64::from(stored.delay_secs.min(shell.state.expiry_secs())) * 1000;
            let due = stored.publish_at_ms.unwrap_or(now + delay_ms);
            let identity =
                Identity { client_id: args.client_id.clone(), username: stored.username, ..Default::default() };
            shell.pending_will = Some((Arc::new(stored.message), identity, due));
        }
        if let Some(request) = args.attach {
            shell.attach(request);
            shell.fanout.send();
        }
        Ok(shell)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        shell: &mut SessionShell,
    ) -> Result<(), ActorProcessingErr> {
        let span = shell.ctx.span.clone();
        if let Some(tail) = span.in_scope(|| shell.on_message(message)) {
            // the rare asynchronous part runs boxed: this future is allocated for its largest
            // await in every session's message loop, so it stays a few pointers wide
            Box::pin(shell.finish(&myself, tail).instrument(span)).await;
        }
        // wills published while handling the message
        shell.fanout.send();
        Ok(())
    }
}

/// What is left of handling a message once its synchronous part is done.
enum Tail {
    /// Close the connection (publishing or scheduling the will).
    CloseConnection,
    /// The session expired.
    EndSession,
    /// The session moves to another node.
    HandOver(RpcReplyPort<Box<LoadedSession>>),
}

/// Log lines for refusals a client causes, each kind rate-limited (see [`crate::log_limit`]).
static ACL_DENIALS: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
static SERVER_CLOSES: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();

impl SessionShell {
    /// A session's shell around `state`; `restored` when it was loaded from the store.
    fn new(ctx: NodeContext, state: SessionState, handle: SessionHandle, restored: bool) -> Self {
        let fanout = Fanout::new(&ctx.memory);
        Self {
            identity: Identity { client_id: state.client_id().to_string(), username: None, ..Default::default() },
            acks: AckGate::new(ctx.mqtt.test_ack_before_durable),
            route_wait: None,
            ctx,
            state,
            io: None,
            handle,
            epoch: 0,
            pending_will: None,
            will_publication: None,
            next_will_token: 0,
            published_will: None,
            restored_elapsed_secs: None,
            reappend_only: BTreeSet::new(),
            unacked_qos2: BTreeSet::new(),
            persist_failures: std::cell::Cell::new(0),
            established: restored,
            queue_overflowing: false,
            fanout,
            on_disk: std::cell::Cell::new(restored),
        }
    }

    /// Handles a message up to its asynchronous tail, if it has one.
    fn on_message(&mut self, message: SessionMsg) -> Option<Tail> {
        match message {
            SessionMsg::Attach(request, reply) => {
                self.attach(*request);
                let _ = reply.send(true);
            }
            SessionMsg::Inbound { conn_id, packets, error, credit } => {
                if self.io.as_ref().is_some_and(|io| io.conn_id == conn_id) {
                    let now = self.ctx.now_ms();
                    let mut closed = false;
                    for packet in packets {
                        let effects = self.state.handle_packet(packet, now, &self.ctx.authorizer);
                        if self.apply(effects) {
                            closed = true;
                            break;
                        }
                    }
                    if !closed && let Some(error) = error {
                        tracing::debug!(client_id = %self.state.client_id(), %error, "closing connection on bad packet");
                        self.ctx.mqtt_counters.refused("malformed");
                        closed = self.apply(vec![Effect::Close(error.disconnect_reason())]);
                    }
                    self.fanout.send();
                    self.flush();
                    self.handle.persistent.store(self.state.is_persistent(), Ordering::Relaxed);
                    if closed {
                        return Some(Tail::CloseConnection);
                    }
                }
                if self.ctx.memory.over_delivery() {
                    // the publisher is under credit: its connection gets this batch's credit
                    // back once subscribers have taken enough of what was routed (see `memory`)
                    self.ctx.mqtt_counters.publisher_pauses.increment(1);
                    let memory = Arc::clone(&self.ctx.memory);
                    tokio::spawn(async move {
                        memory.delivery_room().await;
                        drop(credit);
                    });
                } else {
                    drop(credit);
                }
            }
            SessionMsg::ConnectionLost { conn_id, closed_for } => {
                if self.io.as_ref().is_some_and(|io| io.conn_id == conn_id) {
                    if let Some(reason) = closed_for {
                        self.apply(vec![Effect::Close(reason)]);
                    }
                    return Some(Tail::CloseConnection);
                }
            }
            SessionMsg::Deliver(deliveries, notices, _taken) => {
                let now = self.ctx.now_ms();
                let failures = self.persist_failures.get();
                for delivery in deliveries {
                    let effects = self.state.deliver(delivery, now);
                    self.apply_sync(effects);
                }
                self.flush();
                if self.queue_overflowing && self.state.queued_len() == 0 {
                    self.queue_overflowing = false;
                }
                // the deliveries are in the store now (or dropped by policy): the publishers'
                // acknowledgements may go
                answer_notices(notices, self.persist_failures.get() == failures);
            }
            SessionMsg::Resume => {
                let myself = self.handle.actor.clone();
                if let Some(elapsed_secs) = self.restored_elapsed_secs.take() {
                    self.schedule_expiry(&myself, elapsed_secs);
                }
                if let Some((_, _, due)) = &self.pending_will {
                    let delay = Duration::from_millis((due - self.ctx.now_ms()).max(0) as u64);
                    let epoch = self.epoch;
                    myself.send_after(delay, move || SessionMsg::WillDelayElapsed(epoch));
                }
            }
            SessionMsg::Writable { conn_id } => {
                if let Some(io) = self.io.as_mut().filter(|io| io.conn_id == conn_id && io.congested) {
                    io.congested = false;
                    let effects = self.state.set_writable(true, self.ctx.now_ms());
                    self.apply_sync(effects);
                    self.flush();
                }
            }
            SessionMsg::WillDelayElapsed(epoch) => {
                if epoch == self.epoch
                    && let Some((will, identity, _)) = self.pending_will.take()
                {
                    self.publish_will(will, &identity);
                }
            }
            SessionMsg::HandOver(reply) => return Some(Tail::HandOver(reply)),
            SessionMsg::ExpiryElapsed(epoch) => {
                if epoch == self.epoch && !self.state.is_connected() {
                    tracing::debug!(client_id = %self.state.client_id(), "session expired");
                    return Some(Tail::EndSession);
                }
            }
            SessionMsg::Durable { tokens, ok } => {
                if !ok {
                    tracing::warn!(client_id = %self.state.client_id(), "storing a publish failed; acknowledgement withheld");
                }
                for token in tokens {
                    if token & WILL_TOKEN != 0 {
                        self.will_stored(token);
                        continue;
                    }
                    let released = self.acks.durable(token, ok);
                    self.release(released);
                }
                self.flush();
            }
            SessionMsg::Shutdown(reply) => {
                if self.io.is_some() {
                    // the node closes the connection: its will is due after its delay, also
                    // across the restart (kept in the session record below)
                    if let Some((will, delay)) = self.state.will().cloned() {
                        let now = self.ctx.now_ms();
                        let message = Arc::new(message_from_will(&will, self.state.client_id(), now));
                        let delay_ms = i64::from(delay.min(self.state.expiry_secs())) * 1000;
                        self.pending_will = Some((message, self.identity.clone(), now + delay_ms));
                    }
                    self.write(&Packet::Disconnect(disconnect(DisconnectReasonCode::ServerShuttingDown)));
                    self.flush();
                    if let Some(io) = self.io.take() {
                        io.outbox.close();
                    }
                    self.state.detach();
                }
                if self.state.is_persistent() {
                    self.persist_record();
                }
                let _ = reply.send(());
            }
        }
        None
    }

    async fn finish(&mut self, myself: &ActorRef<SessionMsg>, tail: Tail) {
        match tail {
            Tail::CloseConnection => self.close_connection(myself, true).await,
            Tail::EndSession => self.end_session(myself).await,
            Tail::HandOver(reply) => {
                let session = self.hand_over(myself).await;
                let _ = reply.send(Box::new(session));
            }
        }
    }

    /// Gives the session up to another node: the client is told it was taken over, the will
    /// of this connection is dropped (the client's new connection brings its own), the
    /// routes go, and the session leaves this node's registry. Its stored copy stays until
    /// the new owner says it stored the session (see `ClusterRoutes`).
    async fn hand_over(&mut self, myself: &ActorRef<SessionMsg>) -> LoadedSession {
        if let Some(old) = self.io.take() {
            close_taken_over(old);
        }
        self.state.clear_will();
        self.state.detach();
        self.handle.online.store(false, Ordering::Relaxed);
        self.pending_will = None;
        self.abandon_held_acks();
        let client_id = self.state.client_id().to_string();
        let outgoing = self.state.outgoing_seqs();
        let session = LoadedSession {
            client_id: client_id.clone(),
            record: self.record(),
            outgoing: outgoing
                .iter()
                .filter_map(|seq| self.state.outgoing(*seq).map(|entry| (*seq, entry.clone())))
                .collect(),
            incoming_qos2: self.state.incoming_qos2().clone(),
            reappend: self.reappend_only.clone(),
        };
        for raw_filter in self.state.subscriptions().keys() {
            self.ctx.router.unsubscribe(&client_id, raw_filter);
        }
        self.ctx.sessions.remove(&client_id, myself).await;
        myself.stop(None);
        session
    }

    fn attach(&mut self, request: AttachRequest) {
        let now = self.ctx.now_ms();
        if let Some(old) = self.io.take() {
            close_taken_over(old);
            if let Some((will, delay)) = self.state.will().cloned()
                && (delay == 0 || request.clean_start)
            {
                let message = Arc::new(message_from_will(&will, self.state.client_id(), now));
                let identity = self.identity.clone();
                self.publish_will(message, &identity);
            }
            self.state.detach();
        }
        self.epoch += 1;
        self.handle.attached_at.store(now, Ordering::Relaxed);
        // a reconnect cancels a will waiting for its delay, once the CONNECT is accepted
        let waiting_will = self.pending_will.take();
        self.abandon_held_acks();
        let session_present = !request.clean_start && self.established;
        if request.clean_start {
            let effects = self.state.reset();
            self.apply_sync(effects);
            self.reappend_only.clear();
        }
        let was_persistent = self.state.is_persistent();
        self.state.set_expiry_secs(request.expiry_secs);
        self.handle.persistent.store(self.state.is_persistent(), Ordering::Relaxed);
        self.identity = request.params.identity.clone();
        self.io = Some(ConnIo {
            conn_id: request.conn_id,
            version: request.params.version,
            outbox: request.outbox,
            out: BytesMut::new(),
            congested: false,
        });
        let effects = self.state.attach(request.params, now);
        // a persistent session is stored before its CONNACK: a client told its session is
        // kept must not lose it to a crash a moment later
        let stored = if self.state.is_persistent() {
            self.persist_all()
        } else {
            if was_persistent {
                self.delete_persisted();
            }
            true
        };
        if !stored {
            // v5 0x88 Server unavailable, 3.1.1 0x03 (as for any session that cannot attach)
            self.write(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServerUnavailable,
                properties: None,
            }));
            self.flush();
            if let Some(io) = self.io.take() {
                io.outbox.close();
            }
            self.handle.online.store(false, Ordering::Relaxed);
            // the CONNECT was not accepted: its will is not this client's to leave, and what
            // waited for the session's end (a delayed will, the expiry) waits on, re-armed
            // under the new epoch
            self.state.clear_will();
            self.state.detach();
            let myself = self.handle.actor.clone();
            if let Some((_, _, due)) = &waiting_will {
                let delay = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                let epoch = self.epoch;
                myself.send_after(delay, move || SessionMsg::WillDelayElapsed(epoch));
            }
            self.pending_will = waiting_will;
            self.schedule_expiry(&myself, 0);
            return;
        }
        self.write(&Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
            properties: request.connack_properties,
        }));
        self.handle.online.store(true, Ordering::Relaxed);
        self.established = true;
        tracing::debug!(
            client_id = %self.state.client_id(),
            session_present,
            in_flight = self.state.inflight_len(),
            queued = self.state.queued_len(),
            "session attached"
        );
        self.apply_sync(effects);
        self.flush();
    }

    /// Applies effects; returns true when one of them closes the connection (the caller then
    /// runs [`Tail::CloseConnection`]).
    fn apply(&mut self, effects: Vec<Effect>) -> bool {
        let mut work: VecDeque<Effect> = effects.into();
        while let Some(effect) = work.pop_front() {
            match effect {
                Effect::ClientDisconnected { publish_will } => {
                    if !publish_will {
                        self.state.clear_will();
                    }
                    return true;
                }
                Effect::Close(reason) => {
                    if let Some(held_back) = SERVER_CLOSES.admit(self.ctx.now_ms()) {
                        tracing::info!(
                            client_id = %self.state.client_id(),
                            peer = %self.identity.host.map(|host| host.to_string()).unwrap_or_default(),
                            ?reason,
                            held_back,
                            "mqtt connection closed by the server"
                        );
                    }
                    if self.io.as_ref().is_some_and(|io| io.version == ProtocolVersion::V5) {
                        self.write(&Packet::Disconnect(disconnect(reason)));
                    }
                    return true;
                }
                other => {
                    let more = self.apply_one(other);
                    work.extend(more);
                }
            }
        }
        false
    }

    /// Applies effects that cannot close the connection (attach, reset).
    fn apply_sync(&mut self, effects: Vec<Effect>) {
        let mut work: VecDeque<Effect> = effects.into();
        while let Some(effect) = work.pop_front() {
            match effect {
                Effect::ClientDisconnected { .. } | Effect::Close(_) => {}
                other => work.extend(self.apply_one(other)),
            }
        }
    }

    /// Applies one effect; returns the effects it caused in turn.
    fn apply_one(&mut self, effect: Effect) -> Vec<Effect> {
        match effect {
            Effect::Send(packet) => {
                let released = match (&*packet, self.route_wait.take()) {
                    (Packet::SubAck(_), Some(version)) => {
                        // held until every node of the cluster routes the new filters here
                        let token = self.acks.next_token();
                        self.acks.routed(1, false);
                        let notice = DurableNotice { session: self.handle.actor.clone(), token };
                        self.ctx.routes.when_held(version, notice);
                        self.acks.hold(packet)
                    }
                    _ => self.acks.gate(packet),
                };
                self.release(released);
            }
            Effect::Route { message, pkid } => {
                self.ctx.mqtt_counters.received(message.qos);
                let token = self.acks.next_token();
                let session = self.handle.actor.clone();
                let wants_ack = message.qos > 0;
                let notice = || wants_ack.then(|| DurableNotice { session: session.clone(), token });
                let ingest = self.ctx.streams.ingest_mqtt(&message, &notice);
                // the retry of a QoS 2 message whose append failed reached subscribers the first time
                let to_subscribers = !(message.qos == 2 && self.reappend_only.remove(&pkid));
                if message.qos == 2 {
                    self.unacked_qos2.insert(pkid);
                }
                let routed = if to_subscribers {
                    self.ctx.router.publish(message, &mut self.fanout, &notice)
                } else {
                    Routed::default()
                };
                if wants_ack {
                    self.acks.routed(ingest.appends + routed.notices, ingest.refused > 0 || routed.retain_failed);
                }
            }
            Effect::Subscribed { raw_filter, options, is_new } => {
                let client_id = self.state.client_id().to_string();
                if let Some(version) =
                    self.ctx.router.subscribe(&client_id, &raw_filter, options.clone(), self.handle.clone())
                {
                    self.route_wait = Some(self.route_wait.map_or(version, |waited| waited.max(version)));
                }
                let Ok(parsed) = topic::parse_filter(&raw_filter) else { return Vec::new() };
                let send_retained = parsed.share_group.is_none()
                    && match options.retain_handling {
                        RetainHandling::SendAlways => true,
                        RetainHandling::SendIfNew => is_new,
                        RetainHandling::Never => false,
                    };
                if send_retained {
                    let now = self.ctx.now_ms();
                    let mut effects = Vec::new();
                    for message in self.ctx.router.retained_matching(parsed.filter, now) {
                        let delivery = Delivery {
                            qos: options.qos.min(message.qos),
                            message,
                            retain: true,
                            subscription_ids: options.subscription_id.into_iter().collect(),
                        };
                        effects.extend(self.state.deliver(delivery, now));
                    }
                    return effects;
                }
            }
            Effect::Unsubscribed { raw_filter } => {
                let client_id = self.state.client_id().to_string();
                self.ctx.router.unsubscribe(&client_id, &raw_filter);
            }
            // PutIncoming is written when its PUBREC leaves the ack gate (see `release`)
            Effect::Persist(PersistOp::PutIncoming(_)) => {}
            Effect::Persist(op) => {
                if self.state.is_persistent() {
                    self.persist(op);
                }
            }
            Effect::Denied { action, topic } => {
                if let Some(held_back) = ACL_DENIALS.admit(self.ctx.now_ms()) {
                    let topic: String = topic.chars().take(256).collect();
                    tracing::info!(
                        client_id = %self.state.client_id(),
                        username = %self.identity.username.as_deref().unwrap_or_default(),
                        peer = %self.identity.host.map(|host| host.to_string()).unwrap_or_default(),
                        action,
                        %topic,
                        held_back,
                        "mqtt {action} refused by the ACL"
                    );
                }
            }
            Effect::Dropped(reason) => {
                self.ctx.mqtt_counters.dropped(reason);
                if reason == "queue_full" || reason == "memory_budget" {
                    // warn once per overflow episode (until the queue drains), debug after that
                    if self.queue_overflowing {
                        tracing::debug!(client_id = %self.state.client_id(), reason, "session queue full, message dropped");
                    } else if reason == "queue_full" {
                        self.queue_overflowing = true;
                        tracing::warn!(
                            client_id = %self.state.client_id(),
                            limit = self.ctx.mqtt.max_queued_messages,
                            bytes = self.ctx.mqtt.max_queued_bytes,
                            policy = ?self.ctx.mqtt.queue_overflow,
                            "session queue full: dropping messages (mqtt.max_queued_messages, mqtt.max_queued_bytes, mqtt.queue_overflow)"
                        );
                    } else {
                        self.queue_overflowing = true;
                        tracing::warn!(
                            client_id = %self.state.client_id(),
                            budget = self.ctx.memory.budget(),
                            queued = self.ctx.memory.queued(),
                            policy = ?self.ctx.mqtt.queue_overflow,
                            "the node's session queues have reached their share of memory.budget_bytes (QoS 0 half, QoS 1 and 2 five eighths): dropping messages (mqtt.queue_overflow)"
                        );
                    }
                }
            }
            Effect::ClientDisconnected { .. } | Effect::Close(_) => {}
        }
        Vec::new()
    }

    /// Writes what the ack gate released; a refused QoS 2 acknowledgement forgets its packet
    /// id, so that the client's retry is stored again.
    fn release(&mut self, released: Vec<Released>) {
        for item in released {
            match item {
                Released::Send(packet) => {
                    // a QoS 2 packet id is stored only with its PUBREC: stored before, a crash
                    // between it and the append would answer the retry with a PUBREC for a
                    // message that was never appended
                    if let Packet::PubRec(rec) = &packet
                        && (rec.reason as u8) < 0x80
                    {
                        self.unacked_qos2.remove(&rec.pkid);
                        if self.state.is_persistent() {
                            self.persist(PersistOp::PutIncoming(rec.pkid));
                        }
                    }
                    self.write(&packet);
                }
                Released::Refused(Packet::PubRec(rec)) => {
                    self.unacked_qos2.remove(&rec.pkid);
                    self.mark_reappend(rec.pkid);
                }
                Released::Refused(_) => {}
            }
        }
    }

    /// Marks a QoS 2 packet id routed to subscribers but not acknowledged: forgotten as
    /// received (so that its retry is stored again), remembered for the streams only.
    fn mark_reappend(&mut self, pkid: u16) {
        let effects = self.state.forget_incoming_qos2(pkid);
        self.apply_sync(effects);
        self.reappend_only.insert(pkid);
        if self.state.is_persistent()
            && let Err(error) = persist::put_reappend(self.ctx.state_store.as_ref(), self.state.client_id(), pkid)
        {
            self.persist_failures.set(self.persist_failures.get() + 1);
            tracing::error!(client_id = %self.state.client_id(), %error, "cannot persist session state");
        }
    }

    /// The connection ended with acknowledgements held: the QoS 2 ones among them are marked
    /// for re-append, since whether their appends completed is no longer tracked.
    fn abandon_held_acks(&mut self) {
        self.acks.clear();
        for pkid in std::mem::take(&mut self.unacked_qos2) {
            self.mark_reappend(pkid);
        }
    }

    fn write(&mut self, packet: &Packet) {
        let Some(io) = self.io.as_mut() else { return };
        if let Packet::Publish(publish) = packet {
            self.ctx.mqtt_counters.sent(publish.qos as u8);
        }
        if let Err(error) = codec::write_packet(packet, io.version, &mut io.out) {
            tracing::warn!(client_id = %self.state.client_id(), %error, "cannot encode packet");
        }
    }

    /// Hands the encoded packets to the connection; once it is behind, deliveries wait in the
    /// session queue until it reports `Writable`.
    fn flush(&mut self) {
        let Some(io) = self.io.as_mut() else { return };
        if io.out.is_empty() {
            return;
        }
        if io.outbox.push(&mut io.out) == Pushed::Congested && !io.congested {
            io.congested = true;
            self.state.set_writable(false, 0);
        }
    }

    /// Ends the current connection; publishes or schedules the will when asked and one is set.
    async fn close_connection(&mut self, myself: &ActorRef<SessionMsg>, with_will: bool) {
        self.flush();
        if let Some(io) = self.io.take() {
            io.outbox.close();
        }
        let will = if with_will { self.state.will().cloned() } else { None };
        self.abandon_held_acks();
        self.state.detach();
        self.handle.online.store(false, Ordering::Relaxed);
        self.epoch += 1;
        let now = self.ctx.now_ms();
        if let Some((will, delay)) = will {
            let message = Arc::new(message_from_will(&will, self.state.client_id(), now));
            let identity = self.identity.clone();
            if delay == 0 || self.state.expiry_secs() == 0 {
                self.publish_will(message, &identity);
            } else {
                let delay = Duration::from_secs(u64::from(delay.min(self.state.expiry_secs())));
                self.pending_will = Some((message, identity, now + delay.as_millis() as i64));
                let epoch = self.epoch;
                myself.send_after(delay, move || SessionMsg::WillDelayElapsed(epoch));
            }
        }
        if self.state.expiry_secs() == 0 {
            self.end_session(myself).await;
        } else {
            self.persist_record();
            self.schedule_expiry(myself, 0);
        }
    }

    fn schedule_expiry(&self, myself: &ActorRef<SessionMsg>, elapsed_secs: u64) {
        let expiry = self.state.expiry_secs();
        if expiry == u32::MAX {
            return;
        }
        let remaining = u64::from(expiry).saturating_sub(elapsed_secs);
        let epoch = self.epoch;
        myself.send_after(Duration::from_secs(remaining), move || SessionMsg::ExpiryElapsed(epoch));
    }

    /// Publishes a will to subscribers and bound streams. A stored will is removed from the
    /// store only once every persistent subscriber and stream has stored it, so that a crash
    /// in between publishes it again rather than never.
    fn publish_will(&mut self, will: Arc<Message>, identity: &Identity) {
        if !self.ctx.authorizer.may_publish(identity, &will.topic) {
            self.ctx.mqtt_counters.dropped("not_authorized");
            self.will_published(0);
            return;
        }
        self.ctx.mqtt_counters.received(will.qos);
        tracing::debug!(client_id = %self.state.client_id(), topic = %will.topic, received_at_ms = will.received_at_ms, "publishing will");
        let token = WILL_TOKEN | self.next_will_token;
        self.next_will_token += 1;
        let session = self.handle.actor.clone();
        let wants_notice = will.qos > 0 && self.state.is_persistent();
        let notice = || wants_notice.then(|| DurableNotice { session: session.clone(), token });
        let ingest = self.ctx.streams.ingest_mqtt(&will, &notice);
        let username = identity.username.clone();
        let now = self.ctx.now_ms();
        let stored_will =
            StoredWill { message: Message::clone(&will), username, delay_secs: 0, publish_at_ms: Some(now) };
        let routed = self.ctx.router.publish(will, &mut self.fanout, &notice);
        self.published_will = Some(stored_will);
        self.will_publication = Some((token, ingest.appends + routed.notices));
        self.will_published(0);
    }

    /// A notice of the will publication `token` came back.
    fn will_stored(&mut self, token: u64) {
        if self.will_publication.is_some_and(|(current, _)| current == token) {
            self.will_published(1);
        }
    }

    /// Counts `answered` notices of the will publication; once none is outstanding, the
    /// session record is written without the will.
    fn will_published(&mut self, answered: usize) {
        let Some((token, left)) = self.will_publication else {
            if self.state.is_persistent() && answered == 0 {
                self.persist_record();
            }
            return;
        };
        let left = left.saturating_sub(answered);
        if left > 0 {
            self.will_publication = Some((token, left));
            return;
        }
        self.will_publication = None;
        self.published_will = None;
        if self.state.is_persistent() {
            self.persist_record();
        }
    }

    async fn end_session(&mut self, myself: &ActorRef<SessionMsg>) {
        if let Some((will, identity, _)) = self.pending_will.take() {
            self.publish_will(will, &identity);
        }
        let client_id = self.state.client_id().to_string();
        for raw_filter in self.state.subscriptions().keys() {
            self.ctx.router.unsubscribe(&client_id, raw_filter);
        }
        self.delete_persisted();
        self.ctx.sessions.remove(&client_id, myself).await;
        myself.stop(None);
    }

    fn persist(&self, op: PersistOp) {
        self.on_disk.set(true);
        let store = self.ctx.state_store.as_ref();
        let client_id = self.state.client_id();
        let result = match op {
            PersistOp::Session => persist::put_session(store, client_id, &self.record()),
            PersistOp::PutOutgoing(seq) => match self.state.outgoing(seq) {
                Some(entry) => persist::put_outgoing(store, client_id, seq, entry),
                None => Ok(()),
            },
            PersistOp::DeleteOutgoing(seq) => persist::delete_outgoing(store, client_id, seq),
            PersistOp::PutIncoming(pkid) => persist::put_incoming(store, client_id, pkid),
            PersistOp::DeleteIncoming(pkid) => persist::delete_incoming(store, client_id, pkid),
        };
        if let Err(error) = result {
            self.persist_failures.set(self.persist_failures.get() + 1);
            tracing::error!(client_id, %error, "cannot persist session state");
        }
    }

    fn record(&self) -> SessionRecord {
        let now = self.ctx.now_ms();
        let will = if self.state.is_connected() {
            self.state.will().map(|(will, delay)| StoredWill {
                message: message_from_will(will, self.state.client_id(), now),
                username: self.identity.username.clone(),
                delay_secs: *delay,
                publish_at_ms: None,
            })
        } else {
            self.pending_will.as_ref().map(|(message, identity, due)| StoredWill {
                message: Message::clone(message),
                username: identity.username.clone(),
                delay_secs: 0,
                publish_at_ms: Some(*due),
            })
        };
        // a will being published stays stored until its subscribers have it
        let will = will.or_else(|| self.published_will.clone());
        SessionRecord {
            expiry_secs: self.state.expiry_secs(),
            subscriptions: self.state.subscriptions().iter().map(|(f, o)| (f.clone(), o.clone())).collect(),
            saved_at_ms: now,
            will,
        }
    }

    fn persist_record(&self) {
        self.persist(PersistOp::Session);
    }

    /// Writes the whole session in one atomic write (at connect); `false` when that failed.
    fn persist_all(&self) -> bool {
        self.on_disk.set(true);
        let outgoing = self.state.outgoing_seqs();
        let result = persist::replace_session(
            self.ctx.state_store.as_ref(),
            self.state.client_id(),
            &self.record(),
            self.state.incoming_qos2().iter().copied(),
            self.reappend_only.iter().copied(),
            outgoing.iter().filter_map(|seq| self.state.outgoing(*seq).map(|entry| (*seq, entry))),
        );
        if let Err(error) = result {
            self.persist_failures.set(self.persist_failures.get() + 1);
            tracing::error!(client_id = %self.state.client_id(), %error, "cannot persist session: CONNACK refused");
            return false;
        }
        true
    }

    fn delete_persisted(&self) {
        if !self.on_disk.replace(false) {
            return;
        }
        if let Err(error) = persist::delete_session(self.ctx.state_store.as_ref(), self.state.client_id()) {
            tracing::error!(client_id = %self.state.client_id(), %error, "cannot delete persisted session");
        }
    }
}

impl Drop for SessionShell {
    fn drop(&mut self) {
        self.ctx.mqtt_counters.sessions.decrement(1.0);
    }
}

/// Session takeover: tells the old client why (v5: DISCONNECT 0x8E) and closes its connection.
fn close_taken_over(old: ConnIo) {
    let mut out = old.out;
    if old.version == ProtocolVersion::V5 {
        let _ = codec::write_packet(
            &Packet::Disconnect(disconnect(DisconnectReasonCode::SessionTakenOver)),
            old.version,
            &mut out,
        );
    }
    old.outbox.push(&mut out);
    old.outbox.close();
}

fn disconnect(reason: DisconnectReasonCode) -> Disconnect {
    Disconnect { reason_code: reason, properties: None }
}

/// The metric label of a QoS level.
pub fn qos_label(qos: u8) -> &'static str {
    match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

/// Tells each publisher that the deliveries it is waiting for are stored (or not), one
/// message per publisher in the order they first appear.
fn answer_notices(notices: Vec<DurableNotice>, ok: bool) {
    let mut by_publisher: Vec<(ActorRef<SessionMsg>, Vec<u64>)> = Vec::new();
    for notice in notices {
        let id = notice.session.get_id();
        match by_publisher.iter_mut().find(|(session, _)| session.get_id() == id) {
            Some((_, tokens)) => tokens.push(notice.token),
            None => by_publisher.push((notice.session, vec![notice.token])),
        }
    }
    for (session, tokens) in by_publisher {
        let _ = session.cast(SessionMsg::Durable { tokens, ok });
    }
}

/// Spawns a session actor (attaching `attach` first if given) and returns its handle.
pub async fn spawn_session(
    ctx: &NodeContext,
    client_id: String,
    restored: Option<LoadedSession>,
    attach: Option<AttachRequest>,
) -> Result<SessionHandle, ractor::SpawnErr> {
    let online = Arc::new(AtomicBool::new(false));
    let persistent = Arc::new(AtomicBool::new(false));
    let stored_at = restored.as_ref().map_or(0, |loaded| loaded.record.saved_at_ms);
    let attached_at = Arc::new(std::sync::atomic::AtomicI64::new(stored_at));
    let args = SessionArgs {
        ctx: ctx.clone(),
        client_id,
        restored,
        online: Arc::clone(&online),
        persistent: Arc::clone(&persistent),
        attached_at: Arc::clone(&attached_at),
        attach,
    };
    let (actor, _) = Actor::spawn(None, MqttSession, args).await?;
    Ok(SessionHandle { actor, online, persistent, attached_at })
}

#[cfg(test)]
mod footprint_tests {
    //! Every session keeps its actor's message loop future for its whole life, sized for the
    //! largest await of `handle`: these bounds keep an idle session small (BENCHMARKS.md).
    use super::*;

    #[tokio::test]
    async fn the_session_message_loop_stays_small() {
        let ctx = NodeContext::for_tests();
        let handle = spawn_session(&ctx, "c".into(), None, None).await.expect("spawn");
        let state = SessionState::new("x".into(), ctx.mqtt.session_limits(&ctx.memory));
        let mut shell = SessionShell::new(ctx.clone(), state, handle.clone(), false);
        let future = MqttSession.handle(handle.actor.clone(), SessionMsg::ExpiryElapsed(0), &mut shell);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 256, "MqttSession::handle's future is {size} bytes: box the new await");
        drop(future);
        let size = std::mem::size_of::<SessionMsg>();
        assert!(size <= 96, "SessionMsg is {size} bytes: box the large variant");
        handle.actor.stop(None);
    }
}
