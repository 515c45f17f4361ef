//! The Kafka listener and the `KafkaConnection` actor.
//!
//! A reader task splits frames off the socket and casts them to the connection's actor; the
//! actor handles them one at a time, in order, and writes each response before taking the
//! next request — Kafka's own per-connection ordering, which also makes pipelined requests
//! come back in request order. A semaphore bounds how many frames the reader runs ahead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::Instrument;

use crate::context::NodeContext;
use crate::kafka::handlers;
use crate::kafka::sasl::SaslState;
use crate::kafka::wire::{self, RequestKind, ResponseKind, WireError};
use crate::log_limit::LogLimit;
use crate::rate_limit::ByteQuota;
use crate::seams::{Connection, Listener};

/// Frames the reader may queue ahead of the actor.
const READ_AHEAD: usize = 32;
/// Frames above this size close the connection (a Kafka request is at most this).
const MAX_FRAME: usize = 100 * 1024 * 1024;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts Kafka connections until `shutdown` turns true.
pub async fn run_listener(ctx: NodeContext, listener: Box<dyn Listener>, shutdown: watch::Receiver<bool>) {
    let stop = shutdown.clone();
    crate::seams::serve_identified_listener("kafka", listener, shutdown, move |connection, peer, certified| {
        serve(ctx.clone(), connection, peer, certified, stop.clone())
    })
    .await
}

/// Messages of the `KafkaConnection` actor.
pub enum KafkaConnectionMsg {
    /// One request frame (without its size prefix).
    Frame(Bytes, OwnedSemaphorePermit),
}

/// The `KafkaConnection` actor: one per client connection.
pub struct KafkaConnection;

/// The actor's state.
pub struct KafkaConnectionState {
    ctx: NodeContext,
    writer: WriteHalf<Box<dyn Connection>>,
    chunks: Vec<Bytes>,
    peer: SocketAddr,
    sasl: SaslState,
    /// the user a verified TLS client certificate names (`tls.peer_cert_as_username`): the
    /// principal, as on a Kafka SSL listener, unless the client authenticates with SASL
    certified: Option<Arc<str>>,
    /// `kafka.max_produce_bytes_rate` and `kafka.max_fetch_bytes_rate` on this connection
    produce_quota: Option<ByteQuota>,
    fetch_quota: Option<ByteQuota>,
}

/// The longest a connection over its quota is muted at once (Kafka's throttle is bounded by its
/// quota window likewise).
const MAX_THROTTLE_MS: u64 = 10_000;

/// Refused SASL logins and requests before authentication, logged at `info` (rate-limited).
static REFUSALS: LogLimit = LogLimit::new();

impl Actor for KafkaConnection {
    type Msg = KafkaConnectionMsg;
    type State = KafkaConnectionState;
    type Arguments = KafkaConnectionState;

    async fn pre_start(
        &self,
        _: ActorRef<KafkaConnectionMsg>,
        state: KafkaConnectionState,
    ) -> Result<KafkaConnectionState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<KafkaConnectionMsg>,
        message: KafkaConnectionMsg,
        state: &mut KafkaConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        let KafkaConnectionMsg::Frame(frame, permit) = message;
        let span = state.ctx.span.clone();
        let keep_open = state.handle_frame(frame).instrument(span).await;
        drop(permit);
        if !keep_open {
            let _ = state.writer.shutdown().await;
            myself.stop(None);
        }
        Ok(())
    }
}

impl KafkaConnectionState {
    /// Handles one request; returns false when the connection must close.
    async fn handle_frame(&mut self, frame: Bytes) -> bool {
        let frame_len = frame.len() as u64;
        if self.sasl.expects_bare_token() {
            // after SaslHandshake v0 the token is the whole frame, and so is the answer
            let answer = match self.sasl.authenticate_bare(&frame, &self.ctx.authorizer, &self.ctx.rng) {
                Ok(answer) => answer,
                Err(why) => {
                    self.refused(why);
                    return false;
                }
            };
            let mut out = Vec::with_capacity(4 + answer.len());
            out.extend_from_slice(&(answer.len() as u32).to_be_bytes());
            out.extend_from_slice(&answer);
            return matches!(tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&out)).await, Ok(Ok(())));
        }
        let mut close_after = false;
        let (api_key, api_version, correlation_id, response) = match wire::decode_request(frame) {
            Ok(request) => {
                let (api_key, api_version, correlation_id) =
                    (request.api_key, request.api_version, request.correlation_id);
                let reply = match &request.body {
                    RequestKind::SaslHandshake(body) => {
                        handlers::Reply::Send(ResponseKind::SaslHandshake(self.sasl.handshake(body, api_version)))
                    }
                    RequestKind::SaslAuthenticate(body) => {
                        let (response, ok) = self.sasl.authenticate(body, &self.ctx.authorizer, &self.ctx.rng);
                        if !ok {
                            close_after = true;
                            self.refused(response.error_message.as_deref().unwrap_or("SASL authentication failed"));
                        }
                        handlers::Reply::Send(ResponseKind::SaslAuthenticate(response))
                    }
                    RequestKind::ApiVersions(_) => handlers::dispatch(&self.ctx, request, &self.caller(None)).await,
                    _ if self.certified.is_none() && !self.sasl.may_serve(&self.ctx.authorizer) => {
                        // as a Kafka broker's SASL listener: nothing is served before authentication
                        self.refused("a request before SASL authentication (auth.allow_anonymous is false)");
                        return false;
                    }
                    body => {
                        let caller = self.caller(request.client_id.as_deref());
                        match handlers::acls::refusal(&self.ctx, &caller, body, api_version) {
                            Some(response) => {
                                self.refused_admin(api_key);
                                handlers::Reply::Send(response)
                            }
                            None => handlers::dispatch(&self.ctx, request, &caller).await,
                        }
                    }
                };
                (api_key, api_version, correlation_id, reply)
            }
            Err(WireError::UnsupportedVersion { api_key, api_version, correlation_id })
            | Err(WireError::UnknownApi { api_key, api_version, correlation_id }) => {
                tracing::debug!(peer = %self.peer, api_key, api_version, "unsupported kafka request");
                match wire::error_response(api_key, api_version, crate::kafka::codes::UNSUPPORTED_VERSION) {
                    Some(response) => (api_key, api_version, correlation_id, handlers::Reply::Send(response)),
                    None => return false,
                }
            }
            Err(error) => {
                tracing::debug!(peer = %self.peer, %error, "malformed kafka request; closing");
                return false;
            }
        };
        let (mut response, record_sets) = match response {
            handlers::Reply::Send(response) => (response, Vec::new()),
            handlers::Reply::SendFetch(response, sets) => (response, sets),
            handlers::Reply::None => {
                // acks=0: nothing to tell, but the quota still mutes
                let throttle_ms = self.charge(api_key, frame_len, &[]);
                if throttle_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(throttle_ms)).await;
                }
                return true;
            }
            handlers::Reply::Close => return false,
        };
        let throttle_ms = self.charge(api_key, frame_len, &record_sets);
        if throttle_ms > 0 {
            let throttle = i32::try_from(throttle_ms).unwrap_or(i32::MAX);
            match &mut response {
                ResponseKind::Produce(produce) => produce.throttle_time_ms = throttle,
                ResponseKind::Fetch(fetch) => fetch.throttle_time_ms = throttle,
                _ => {}
            }
        }
        // record sets stay their own chunks: fetched bytes are written as stored, never copied
        self.chunks.clear();
        if let Err(error) = wire::encode_response_vectored(
            api_key,
            api_version,
            correlation_id,
            &response,
            &record_sets,
            &mut self.chunks,
        ) {
            tracing::warn!(peer = %self.peer, %error, api_key, api_version, "cannot encode kafka response");
            return false;
        }
        for chunk in &self.chunks {
            if !matches!(tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(chunk)).await, Ok(Ok(()))) {
                return false;
            }
        }
        if throttle_ms > 0 {
            // over a quota: the connection is muted for the throttle time it was told, as Kafka does
            tokio::time::sleep(Duration::from_millis(throttle_ms)).await;
        }
        !close_after
    }

    /// Charges a Produce's bytes or a Fetch's records to their quota: the throttle time, at
    /// most [`MAX_THROTTLE_MS`] (the debt carries over to the next request).
    fn charge(&mut self, api_key: i16, frame_len: u64, record_sets: &[Vec<Bytes>]) -> u64 {
        let now = self.ctx.now_ms();
        let (quota, bytes, limit) = match api_key {
            0 => (self.produce_quota.as_mut(), frame_len, "kafka_produce_bytes_rate"),
            1 => {
                let fetched = record_sets.iter().flatten().map(|set| set.len() as u64).sum();
                (self.fetch_quota.as_mut(), fetched, "kafka_fetch_bytes_rate")
            }
            _ => return 0,
        };
        let throttle_ms = quota.map_or(0, |quota| quota.charge(bytes, now));
        if throttle_ms > 0 {
            crate::metrics::limit_hit(limit);
        }
        throttle_ms.min(MAX_THROTTLE_MS)
    }

    /// Who sends this connection's requests.
    fn caller(&self, client_id: Option<&str>) -> handlers::Caller {
        let user = self.user();
        handlers::Caller {
            user: user.map(str::to_string),
            client_id: client_id.unwrap_or_default().to_string(),
            host: self.peer.ip(),
            super_user: self.ctx.authorizer.is_super_user(user),
        }
    }

    /// The principal's user: SASL's, else the client certificate's.
    fn user(&self) -> Option<&str> {
        self.sasl.user().or(self.certified.as_deref())
    }

    /// Logs a refused administration at `info`, rate-limited.
    fn refused_admin(&self, api_key: i16) {
        if let Some(held_back) = REFUSALS.admit(self.ctx.now_ms()) {
            let user = self.user().unwrap_or("anonymous");
            tracing::info!(peer = %self.peer, user, api_key, held_back, "kafka administration refused: no admin = true and no ACL allows it");
        }
    }

    /// Logs a refused connection at `info`, rate-limited.
    fn refused(&self, why: &str) {
        if let Some(held_back) = REFUSALS.admit(self.ctx.now_ms()) {
            tracing::info!(peer = %self.peer, held_back, "kafka connection refused: {why}");
        }
    }
}

/// Serves one connection until it closes or the node stops: spawns its actor and feeds it frames.
pub async fn serve(
    ctx: NodeContext,
    connection: Box<dyn Connection>,
    peer: SocketAddr,
    certified: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // kafka.max_connections_per_address (Kafka's max.connections.per.ip): one more is closed
    // at once, as a Kafka broker does
    let _held = match ctx.kafka.max_connections_per_address {
        Some(most) => {
            let (hold, open) = ctx.kafka_connections_by_address.hold(peer.ip());
            if open > most {
                crate::metrics::limit_hit("kafka_connections_per_address");
                if let Some(held_back) = REFUSALS.admit(ctx.now_ms()) {
                    tracing::info!(%peer, open, held_back, "kafka connection refused: over kafka.max_connections_per_address");
                }
                return;
            }
            Some(hold)
        }
        None => None,
    };
    // kafka.max_connect_rate (Kafka's max.connection.creation.rate): one past it is closed
    let over_rate = ctx
        .kafka_connect_rate
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_mut()
        .is_some_and(|bucket| !bucket.take(1, ctx.now_ms()));
    if over_rate {
        crate::metrics::limit_hit("kafka_connect_rate");
        if let Some(held_back) = REFUSALS.admit(ctx.now_ms()) {
            tracing::info!(%peer, held_back, "kafka connection refused: over kafka.max_connect_rate");
        }
        return;
    }
    let (mut reader, writer) = tokio::io::split(connection);
    let max_idle = Duration::from_millis(ctx.kafka.connections_max_idle_ms);
    // a request begun must arrive whole in this time, or the connection closes (a client that
    // dribbles its bytes holds a connection no longer than this per request)
    let read_timeout = Duration::from_millis(ctx.kafka.request_read_timeout_ms);
    let mut begun: Option<tokio::time::Instant> = None;
    let clock = ctx.clone();
    let quota = |rate: Option<u64>| rate.map(|rate| ByteQuota::per_second(rate, ctx.now_ms()));
    let (produce_quota, fetch_quota) = (quota(ctx.kafka.max_produce_bytes_rate), quota(ctx.kafka.max_fetch_bytes_rate));
    let state = KafkaConnectionState {
        ctx,
        writer,
        chunks: Vec::new(),
        peer,
        sasl: SaslState::default(),
        certified,
        produce_quota,
        fetch_quota,
    };
    let Ok((actor, mut handle)) = Actor::spawn(None, KafkaConnection, state).await else { return };
    let mut stopped = false;
    let permits = Arc::new(Semaphore::new(READ_AHEAD));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut last_request = tokio::time::Instant::now();
    // fires at most once an idle period: then it looks at when the last request came
    let idle = tokio::time::sleep(max_idle);
    tokio::pin!(idle);
    'read: loop {
        loop {
            match wire::read_frame(&mut buf, MAX_FRAME) {
                Ok(Some(frame)) => {
                    last_request = tokio::time::Instant::now();
                    begun = None;
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break 'read };
                    if actor.cast(KafkaConnectionMsg::Frame(frame, permit)).is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%peer, %error, "bad kafka frame; closing");
                    break 'read;
                }
            }
        }
        buf.reserve(64 * 1024);
        begun = if buf.is_empty() { None } else { begun.or_else(|| Some(tokio::time::Instant::now())) };
        let deadline = begun.map(|at| at + read_timeout);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                if let Some(held_back) = REFUSALS.admit(clock.now_ms()) {
                    tracing::info!(%peer, held_back, timeout_ms = read_timeout.as_millis() as u64, "kafka connection closed: a request did not arrive whole within kafka.request_read_timeout_ms");
                }
                break;
            }
            _ = &mut handle => {
                stopped = true;
                break;
            }
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            // connections.max.idle.ms: no request for that long, and none being answered
            _ = &mut idle => {
                let now = tokio::time::Instant::now();
                if now >= last_request + max_idle && permits.available_permits() == READ_AHEAD {
                    tracing::debug!(%peer, idle_ms = max_idle.as_millis() as u64, "idle kafka connection closed");
                    break;
                }
                let answering = permits.available_permits() != READ_AHEAD;
                idle.as_mut().reset(if answering { now + max_idle } else { last_request + max_idle });
            }
        }
    }
    if !stopped {
        // let the actor answer what it has, then stop it
        let _ = tokio::time::timeout(WRITE_TIMEOUT, Arc::clone(&permits).acquire_many_owned(READ_AHEAD as u32)).await;
        actor.stop(None);
        let _ = handle.await;
    }
}
