//! One MQTT network connection: CONNECT validation and authentication, then one task that
//! owns the socket: it decodes packets for the session actor (in batches, with bounded read
//! credit) and writes what the session put in the connection's [`Outbox`], all the session's
//! bytes at once. Keepalive is enforced here (1.5 × the keepalive without any byte).
//!
//! An idle connection costs its task, the socket and the outbox: the read buffer is given
//! back after [`IDLE_TRIM`] without traffic, and the write buffer once it is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::context::NodeContext;
use crate::mqtt::auth::{AuthFailure, Identity};
use crate::mqtt::codec::{
    self, CodecError, ConnAck, ConnAckProperties, Connect, ConnectReturnCode, DisconnectReasonCode, Packet,
    ProtocolVersion,
};
use crate::mqtt::http_auth::Verdict;
use crate::mqtt::jwt::Grant;
use crate::mqtt::outbox::Outbox;
use crate::mqtt::session::{AttachRequest, SessionMsg};
use crate::mqtt::session_state::ConnectionParams;
use crate::mqtt::topic;
use crate::seams::{Connection, Listener};

/// Packets per batch handed to the session.
const MAX_BATCH: usize = 64;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A write buffer that grew beyond this is given back once written.
const WRITE_KEEP: usize = 128 * 1024;
/// Read buffer growth while reads fill it (a busy connection).
const READ_RESERVE: usize = 64 * 1024;
/// Spare room kept in the read buffer of a quiet connection.
const READ_MIN_SPARE: usize = 1024;
/// Room for a typical CONNECT (a larger one takes more reads).
const CONNECT_RESERVE: usize = 256;
/// An empty read buffer is given back after this long without a read.
const IDLE_TRIM: Duration = Duration::from_secs(2);
/// How long a connection waits for its session to close it after DISCONNECT or a bad packet.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// After the node closes a connection (its write side shut, a DISCONNECT with a reason
/// written), what the client still sends is read and dropped for this long, or this many
/// bytes, or until the client closes too.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
const CLOSE_DRAIN_BYTES: usize = 64 << 20;

/// Accepts MQTT connections until `shutdown` turns true.
pub async fn run_listener(ctx: NodeContext, listener: Box<dyn Listener>, shutdown: watch::Receiver<bool>) {
    crate::seams::serve_identified_listener("mqtt", listener, shutdown, move |connection, peer, certified| {
        serve_connection(ctx.clone(), connection, peer, certified)
    })
    .await
}

/// Counts an open connection, on the node and (with `mqtt.max_connections_per_address`) per
/// address, until dropped.
struct ConnectionCount {
    ctx: NodeContext,
    _address: Option<crate::rate_limit::AddressHold>,
}

/// How many connections are open, with this one: on the node, and from its address (0 when not
/// counted).
struct OpenConnections {
    node: usize,
    address: usize,
}

impl ConnectionCount {
    fn open(ctx: &NodeContext, peer: SocketAddr) -> (Self, OpenConnections) {
        let node = ctx.connections.fetch_add(1, Ordering::Relaxed) + 1;
        ctx.mqtt_counters.connections.increment(1.0);
        let (address, from_address) = match ctx.mqtt.max_connections_per_address {
            Some(_) => {
                let (hold, open) = ctx.connections_by_address.hold(peer.ip());
                (Some(hold), open)
            }
            None => (None, 0),
        };
        (Self { ctx: ctx.clone(), _address: address }, OpenConnections { node, address: from_address })
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.ctx.connections.fetch_sub(1, Ordering::Relaxed);
        self.ctx.mqtt_counters.connections.decrement(1.0);
    }
}

/// Serves one connection from CONNECT to close. `certified`: the username a verified TLS client
/// certificate gave (`tls.peer_cert_as_username`), which then stands for CONNECT's credentials.
pub async fn serve_connection(
    ctx: NodeContext,
    connection: Box<dyn Connection>,
    peer: SocketAddr,
    certified: Option<Arc<str>>,
) {
    let (_count_guard, open_connections) = ConnectionCount::open(&ctx, peer);
    // the handshake (CONNECT, session spawn and attach) runs in its own boxed future, freed
    // once it is done: the task of an idle connection keeps only what `run` needs
    let handshake = handshake(&ctx, connection, peer, open_connections, certified.as_deref());
    let Some(mut io) = Box::pin(handshake).await else { return };
    io.run().await;
    io.outbox.set_gone();
    // after a close by the session this is stale, and the session ignores it
    let _ = io.session.cast(SessionMsg::ConnectionLost { conn_id: io.conn_id, closed_for: None });
}

type Reader = tokio::io::ReadHalf<Box<dyn Connection>>;
type Writer = tokio::io::WriteHalf<Box<dyn Connection>>;

/// Reads and checks CONNECT and attaches the connection to its session; `None` when the
/// connection was refused or closed.
async fn handshake(
    ctx: &NodeContext,
    connection: Box<dyn Connection>,
    peer: SocketAddr,
    open_connections: OpenConnections,
    certified: Option<&str>,
) -> Option<ConnectionIo<Reader, Writer>> {
    let (mut reader, mut writer) = tokio::io::split(connection);
    let mut buf = BytesMut::new();
    let max_packet_size = ctx.mqtt.max_packet_size as usize;

    let first = tokio::time::timeout(
        ctx.mqtt.connect_timeout(),
        read_connect(&mut reader, &mut buf, max_packet_size, &ctx.mqtt_counters.bytes_received),
    );
    let (version, connect) = match first.await {
        Ok(Ok(Some(found))) => found,
        Ok(Err(CodecError::UnsupportedProtocol(level))) => {
            let mut out = BytesMut::new();
            codec::write_connack_unsupported(level, &mut out);
            let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await;
            refused(ctx, "unsupported_protocol");
            return None;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bad first packet");
            refused(ctx, "malformed");
            return None;
        }
        Ok(Ok(None)) => return None,
        Err(_) => {
            refused(ctx, "connect_timeout");
            return None;
        }
    };

    // [auth.http]: the service's verdict on a login, before the checks that need no answer
    let callout = match (ctx.authorizer.http(), certified, connect.login.as_ref()) {
        (Some(http), None, Some(login)) => {
            let verdict = http
                .check(&*ctx.net, ctx.now_ms(), &login.username, login.password.as_bytes(), &connect.client_id, peer)
                .await;
            if let Verdict::Ignore(why) = &verdict
                && let Some(held_back) = CALLOUT_FAILURES.admit(ctx.now_ms())
            {
                tracing::info!(%peer, held_back, "mqtt login left to the users: {why}");
            }
            Some(verdict)
        }
        _ => None,
    };
    let accepted = match check_connect(ctx, &connect, version, open_connections, certified, callout) {
        Ok(mut accepted) => {
            accepted.params.identity.host = Some(peer.ip());
            accepted
        }
        Err(code) => {
            if let Some(held_back) = CONNECT_REFUSALS.admit(ctx.now_ms()) {
                // an id refused for its length is not logged whole
                let client_id: String = connect.client_id.chars().take(128).collect();
                let username: String =
                    connect.login.as_ref().map(|login| login.username.chars().take(128).collect()).unwrap_or_default();
                tracing::info!(
                    %client_id, %username, %peer, reason = ?code, held_back,
                    "mqtt connection refused"
                );
            }
            refuse(&mut writer, version, code).await;
            refused(ctx, "connect_refused");
            return None;
        }
    };

    let conn_id = ctx.rng.next_u64();
    let outbox = Outbox::new();
    let client_id = accepted.params.identity.client_id.clone();
    let keepalive = accepted.keepalive;
    let expires_at_ms = accepted.expires_at_ms;
    let request = AttachRequest {
        conn_id,
        outbox: Arc::clone(&outbox),
        params: accepted.params,
        clean_start: connect.clean_session,
        expiry_secs: accepted.expiry_secs,
        connack_properties: accepted.connack_properties,
    };
    tracing::debug!(%client_id, %peer, ?version, "client connected");
    let session = match ctx.sessions.attach(ctx, &client_id, request).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%client_id, %error, "cannot attach session");
            refuse(&mut writer, version, ConnectReturnCode::ServerUnavailable).await;
            return None;
        }
    };
    // an idle connection keeps no read buffer (the next read allocates a small one)
    if buf.is_empty() {
        buf = BytesMut::new();
    }
    let io = ConnectionIo {
        reader,
        writer,
        buf,
        wbuf: BytesMut::new(),
        version,
        max_packet_size,
        keepalive: (keepalive > 0).then(|| Duration::from_millis(u64::from(keepalive) * 1500)),
        expires: expires_at_ms.map(|at| {
            Instant::now() + Duration::from_millis(u64::try_from(at.saturating_sub(ctx.now_ms())).unwrap_or(0))
        }),
        conn_id,
        session,
        outbox,
        bytes_received: ctx.mqtt_counters.bytes_received.clone(),
        bytes_sent: ctx.mqtt_counters.bytes_sent.clone(),
        last_read_filled: false,
        reading: true,
    };
    Some(io)
}

/// Answers CONNECT with a refusing CONNACK and closes.
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, version: ProtocolVersion, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck { session_present: false, code, properties: None });
    let _ = codec::write_packet(&connack, version, &mut out);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await;
    let _ = writer.shutdown().await;
}

struct Accepted {
    params: ConnectionParams,
    expiry_secs: u32,
    keepalive: u16,
    connack_properties: Option<ConnAckProperties>,
    /// when the login's token expires (node clock, ms)
    expires_at_ms: Option<i64>,
}

/// Validates a CONNECT: limits, client id, credentials, properties.
fn check_connect(
    ctx: &NodeContext,
    connect: &Connect,
    version: ProtocolVersion,
    open_connections: OpenConnections,
    certified: Option<&str>,
    callout: Option<Verdict>,
) -> Result<Accepted, ConnectReturnCode> {
    let settings = &ctx.mqtt;
    if open_connections.node > settings.max_connections {
        return Err(ConnectReturnCode::QuotaExceeded);
    }
    if settings.max_connections_per_address.is_some_and(|most| open_connections.address > most) {
        crate::metrics::limit_hit("connections_per_address");
        return Err(ConnectReturnCode::QuotaExceeded);
    }
    let over_rate =
        ctx.connect_rate.lock().expect("not poisoned").as_mut().is_some_and(|bucket| !bucket.take(1, ctx.now_ms()));
    if over_rate {
        crate::metrics::limit_hit("connect_rate");
        return Err(ConnectReturnCode::ConnectionRateExceeded);
    }
    let v5 = version == ProtocolVersion::V5;
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.contains('\0') || client_id.len() > settings.max_client_id_len {
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    }
    if client_id.is_empty() {
        if !v5 && !connect.clean_session {
            return Err(ConnectReturnCode::ClientIdentifierNotValid);
        }
        client_id = format!("tw-{:016x}", ctx.rng.next_u64());
        if v5 {
            assigned = Some(client_id.clone());
        }
    }
    let (username, grant) = match certified {
        // the certificate, verified against tls.client_ca_file, is the credential
        Some(name) => (Some(name.to_string()), Grant::default()),
        None => {
            let username = connect.login.as_ref().map(|login| login.username.clone());
            let password = connect.login.as_ref().map(|login| login.password.as_bytes());
            let login = match callout {
                Some(Verdict::Allow(grant)) => Ok(grant),
                Some(Verdict::Deny) => Err(AuthFailure::BadCredentials),
                _ => ctx.authorizer.authenticate_connect(username.as_deref(), password, &client_id, ctx.now_ms()),
            };
            match login {
                Ok(grant) => (username, grant),
                Err(AuthFailure::BadCredentials) => return Err(ConnectReturnCode::BadUserNamePassword),
                Err(AuthFailure::NotAuthorized) => return Err(ConnectReturnCode::NotAuthorized),
                Err(AuthFailure::BadToken(why)) => {
                    if let Some(held_back) = TOKEN_REFUSALS.admit(ctx.now_ms()) {
                        let client_id: String = client_id.chars().take(128).collect();
                        tracing::info!(%client_id, held_back, "mqtt token refused: {why}");
                    }
                    return Err(ConnectReturnCode::BadUserNamePassword);
                }
            }
        }
    };

    let properties = connect.properties.as_ref();
    let receive_maximum = properties.and_then(|p| p.receive_maximum).unwrap_or(u16::MAX);
    let client_max_packet = properties.and_then(|p| p.max_packet_size);
    if receive_maximum == 0 || client_max_packet == Some(0) {
        return Err(ConnectReturnCode::ProtocolError);
    }
    if properties.and_then(|p| p.authentication_method.as_ref()).is_some() {
        return Err(ConnectReturnCode::BadAuthenticationMethod);
    }
    let requested_expiry = if v5 {
        properties.and_then(|p| p.session_expiry_interval).unwrap_or(0)
    } else if connect.clean_session {
        0
    } else {
        u32::MAX
    };
    let expiry_secs = requested_expiry.min(settings.max_session_expiry);

    let will = match &connect.last_will {
        Some(will) => {
            if topic::validate_topic_name(&will.topic).is_err() {
                return Err(ConnectReturnCode::TopicNameInvalid);
            }
            if topic::levels(&will.topic) > settings.max_topic_levels {
                crate::metrics::limit_hit("topic_levels");
                return Err(ConnectReturnCode::TopicNameInvalid);
            }
            if will.retain && !settings.retain_available {
                return Err(ConnectReturnCode::RetainNotSupported);
            }
            let delay = will.properties.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
            Some((will.clone(), delay))
        }
        None => None,
    };

    let mut keepalive = connect.keep_alive;
    let mut server_keep_alive = None;
    if v5 && (keepalive > settings.max_keepalive || (keepalive == 0 && settings.max_keepalive < u16::MAX)) {
        keepalive = settings.max_keepalive;
        server_keep_alive = Some(keepalive);
    }

    let connack_properties = v5.then(|| ConnAckProperties {
        session_expiry_interval: (expiry_secs != requested_expiry).then_some(expiry_secs),
        receive_max: Some(settings.max_inflight),
        max_qos: None,
        retain_available: (!settings.retain_available).then_some(0),
        max_packet_size: Some(settings.max_packet_size),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(settings.max_topic_alias),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });

    Ok(Accepted {
        params: ConnectionParams {
            version,
            receive_maximum,
            max_packet_size: client_max_packet,
            topic_alias_max: properties.and_then(|p| p.topic_alias_max).unwrap_or(0),
            identity: Identity { client_id, username, host: None, rules: grant.rules },
            will,
        },
        expiry_secs,
        keepalive,
        connack_properties,
        expires_at_ms: grant.expires_at_ms,
    })
}

/// Refused CONNECTs, logged at `info` (rate-limited: a flood of bad clients cannot flood the log).
static CONNECT_REFUSALS: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
static TOKEN_REFUSALS: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();
static CALLOUT_FAILURES: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();

fn refused(ctx: &NodeContext, reason: &'static str) {
    ctx.mqtt_counters.refused(reason);
}

/// Reads until a whole CONNECT is buffered.
async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet_size: usize,
    bytes_received: &metrics::Counter,
) -> Result<Option<(ProtocolVersion, Connect)>, CodecError> {
    loop {
        if let Some(found) = codec::read_connect(buf, max_packet_size)? {
            return Ok(Some(found));
        }
        buf.reserve(CONNECT_RESERVE);
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(read) => bytes_received.increment(read as u64),
        }
    }
}

/// The socket and buffers of one attached connection, driven by one task.
struct ConnectionIo<R, W> {
    reader: R,
    writer: W,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    /// Bytes taken from the outbox and not yet written.
    wbuf: BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
    keepalive: Option<Duration>,
    /// when the login's token expires: the connection ends then
    expires: Option<Instant>,
    conn_id: u64,
    session: ractor::ActorRef<SessionMsg>,
    outbox: Arc<Outbox>,
    bytes_received: metrics::Counter,
    bytes_sent: metrics::Counter,
    /// Whether the last read filled the buffer's spare room (then the buffer grows).
    last_read_filled: bool,
    /// False after DISCONNECT or a decode error: the task only flushes what is left.
    reading: bool,
}

/// When a connection's timer has to look again: the keepalive, a stalled write, or an idle
/// read buffer to give back.
struct Deadlines {
    last_read: Instant,
    last_write_progress: Instant,
    /// When DISCONNECT or a bad packet stopped reading.
    stopped_reading: Option<Instant>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ConnectionIo<R, W> {
    /// Runs until the session closes the connection (after DISCONNECT, a bad packet, a keepalive
    /// timeout, a takeover or at shutdown), or EOF, a socket error, a write timeout, or no close
    /// from the session in time.
    async fn run(&mut self) {
        let start = Instant::now();
        let mut times = Deadlines { last_read: start, last_write_progress: start, stopped_reading: None };
        let mut armed: Option<Instant> = None;
        let timer = tokio::time::sleep_until(start + IDLE_TRIM);
        tokio::pin!(timer);
        let mut closing = false;
        loop {
            let credit_blocked = self.hand_over();
            if !self.reading && times.stopped_reading.is_none() {
                // DISCONNECT or a bad packet was handed over: the session closes the connection
                // through the outbox; the timer ends the task should it never do so
                times.stopped_reading = Some(Instant::now());
            }
            if self.wbuf.is_empty() {
                let taken = self.outbox.take(&mut self.wbuf);
                if taken.notify_writable {
                    let _ = self.session.cast(SessionMsg::Writable { conn_id: self.conn_id });
                }
                if !self.wbuf.is_empty() {
                    times.last_write_progress = Instant::now();
                }
                closing |= taken.close;
            }
            if self.wbuf.is_empty() && closing {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
                self.drain_after_close().await;
                return;
            }
            let deadline = self.next_deadline(&times);
            if deadline != armed && (armed.is_none() || deadline < armed) {
                if let Some(at) = deadline {
                    timer.as_mut().reset(at);
                }
                armed = deadline;
            }
            let can_read = self.reading && !credit_blocked && !closing;
            self.prepare_read();
            let spare = self.buf.capacity() - self.buf.len();
            tokio::select! {
                biased;
                _ = self.outbox.woken() => {}
                written = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => match written {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        self.bytes_sent.increment(n as u64);
                        times.last_write_progress = Instant::now();
                        if self.wbuf.is_empty() && self.wbuf.capacity() > WRITE_KEEP {
                            self.wbuf = BytesMut::new();
                        }
                    }
                },
                read = self.reader.read_buf(&mut self.buf), if can_read => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        self.last_read_filled = n >= spare;
                        self.bytes_received.increment(n as u64);
                        times.last_read = Instant::now();
                    }
                },
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    let keepalive_out = self.keepalive.is_some_and(|limit| now >= times.last_read + limit);
                    let expired = self.expires.is_some_and(|at| now >= at);
                    if self.reading && (keepalive_out || expired) {
                        // the session writes a v5 DISCONNECT (0x8D keepalive timeout, 0xA0 for
                        // an expired token) and closes the connection through the outbox; until
                        // then this task only writes
                        self.reading = false;
                        let reason = if expired {
                            DisconnectReasonCode::MaximumConnectTime
                        } else {
                            DisconnectReasonCode::KeepAliveTimeout
                        };
                        let lost = SessionMsg::ConnectionLost { conn_id: self.conn_id, closed_for: Some(reason) };
                        if self.session.cast(lost).is_err() {
                            return;
                        }
                        continue;
                    }
                    let write_stalled = !self.wbuf.is_empty() && now >= times.last_write_progress + WRITE_TIMEOUT;
                    if write_stalled || times.stopped_reading.is_some_and(|at| now >= at + CLOSE_GRACE) {
                        return;
                    }
                    if now >= times.last_read.max(times.last_write_progress) + IDLE_TRIM {
                        // every condition of `next_deadline` is acted on here: a deadline in the
                        // past must not stay armed
                        if self.buf.is_empty() {
                            self.buf = BytesMut::new();
                        }
                        if self.wbuf.is_empty() {
                            self.wbuf = BytesMut::new();
                        }
                    }
                }
            }
        }
    }

    /// Reads and drops what the client still sends after the node closed its side. A socket
    /// closed with unread bytes makes the kernel answer the client's next write with a reset,
    /// and a client still writing (publishes, PUBRELs) then sees a broken pipe rather than
    /// the DISCONNECT and its reason that wait in its receive buffer.
    async fn drain_after_close(&mut self) {
        let mut scratch = vec![0u8; 16 * 1024];
        let mut drained = 0usize;
        let drain = async {
            while drained < CLOSE_DRAIN_BYTES {
                match self.reader.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
    }

    /// Hands decoded packets to the session while it has credit; true when out of credit
    /// with packets still buffered.
    fn hand_over(&mut self) -> bool {
        while self.reading && !self.buf.is_empty() {
            // only this task takes credit: if there is some now, it is still there below (and a
            // credit taken for nothing and returned would wake this task again)
            if !self.outbox.has_credit() {
                return true;
            }
            let mut packets = Vec::new();
            let mut error = None;
            while packets.len() < MAX_BATCH {
                match codec::read_packet(&mut self.buf, self.version, self.max_packet_size) {
                    Ok(Some(packet)) => {
                        let stop = matches!(packet, Packet::Disconnect(_));
                        packets.push(packet);
                        if stop {
                            self.reading = false;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        self.reading = false;
                        break;
                    }
                }
            }
            if packets.is_empty() && error.is_none() {
                return false;
            }
            let full = packets.len() == MAX_BATCH;
            let Some(credit) = self.outbox.try_take_credit() else { return true };
            let inbound = SessionMsg::Inbound { conn_id: self.conn_id, packets, error, credit };
            if self.session.cast(inbound).is_err() {
                self.reading = false;
                return false;
            }
            if !full {
                return false;
            }
        }
        false
    }

    /// Grows the read buffer while reads fill it; an empty buffer stays unallocated until the
    /// read itself asks for room (then a small one).
    fn prepare_read(&mut self) {
        if self.buf.capacity() == 0 {
            return;
        }
        if self.buf.capacity() - self.buf.len() < READ_MIN_SPARE {
            let grow = if self.last_read_filled { READ_RESERVE } else { READ_MIN_SPARE * 2 };
            self.buf.reserve(grow);
        }
    }

    fn next_deadline(&self, times: &Deadlines) -> Option<Instant> {
        let keepalive = self.keepalive.filter(|_| self.reading).map(|limit| times.last_read + limit);
        let expires = self.expires.filter(|_| self.reading);
        let write = (!self.wbuf.is_empty()).then(|| times.last_write_progress + WRITE_TIMEOUT);
        let idle_buffers =
            (self.buf.is_empty() && self.buf.capacity() > 0) || (self.wbuf.is_empty() && self.wbuf.capacity() > 0);
        let trim = idle_buffers.then(|| times.last_read.max(times.last_write_progress) + IDLE_TRIM);
        let stopped = times.stopped_reading.map(|at| at + CLOSE_GRACE);
        [keepalive, expires, write, trim, stopped].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::session::spawn_session;

    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let ctx = NodeContext::for_tests();
        let handle = spawn_session(&ctx, "c".into(), None, None).await.expect("spawn");
        let (ours, _theirs) = tokio::io::duplex(64);
        let (reader, writer) = tokio::io::split(Box::new(ours) as Box<dyn Connection>);
        let mut io: ConnectionIo<Reader, Writer> = ConnectionIo {
            reader,
            writer,
            buf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version: ProtocolVersion::V311,
            max_packet_size: 1024,
            keepalive: None,
            expires: None,
            conn_id: 1,
            session: handle.actor.clone(),
            outbox: Outbox::new(),
            bytes_received: metrics::Counter::noop(),
            bytes_sent: metrics::Counter::noop(),
            last_read_filled: false,
            reading: true,
        };
        let size = std::mem::size_of_val(&io.run());
        assert!(size <= 512, "ConnectionIo::run's future is {size} bytes");
        let task = serve_connection(ctx, Box::new(tokio::io::duplex(64).0), "127.0.0.1:1".parse().expect("addr"), None);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "serve_connection's future is {size} bytes: box the handshake's awaits");
        handle.actor.stop(None);
    }

    /// A 3.1.1 CONNECT of client `c1`, clean session 0 (a persistent session).
    const PERSISTENT_CONNECT: [u8; 16] = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 2, b'c', b'1'];

    async fn connack_for(ctx: &NodeContext) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let task =
            tokio::spawn(serve_connection(ctx.clone(), Box::new(server), "127.0.0.1:1".parse().expect("addr"), None));
        client.write_all(&PERSISTENT_CONNECT).await.expect("write CONNECT");
        let mut connack = [0u8; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), client.read_exact(&mut connack))
            .await
            .expect("a CONNACK within 5 s")
            .expect("read CONNACK");
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        connack.to_vec()
    }

    #[tokio::test]
    async fn a_persistent_session_that_cannot_be_stored_is_refused() {
        let store = std::sync::Arc::new(tidewater_storage::MemoryStore::new());
        let ctx = NodeContext::for_tests_with(store.clone());
        store.fail_next_syncs(1);
        assert_eq!(connack_for(&ctx).await, [0x20, 2, 0, 3], "3.1.1 CONNACK 0x03, server unavailable");
        assert_eq!(connack_for(&ctx).await, [0x20, 2, 0, 0], "accepted once the store works");
    }
}
