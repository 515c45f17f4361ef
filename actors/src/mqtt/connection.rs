//! One MQTT network connection: CONNECT validation and authentication, then a reader that
//! decodes packets for the session actor and a writer task that drains what the session
//! sends. Keepalive is enforced by the reader (1.5 × the keepalive without any byte).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::context::NodeContext;
use crate::metrics as names;
use crate::mqtt::auth::{AuthFailure, Identity};
use crate::mqtt::codec::{
    self, CodecError, ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Packet, ProtocolVersion,
};
use crate::mqtt::session::{AttachRequest, Outbound, SessionMsg};
use crate::mqtt::session_state::ConnectionParams;
use crate::mqtt::topic;
use crate::seams::{Connection, Listener};

/// Frames queued to a connection's writer before the session counts it as congested.
const OUTBOUND_QUEUE: usize = 256;
/// Decoded batches a reader may have in the session's mailbox at once.
const INBOUND_BATCHES: usize = 16;
/// Packets per batch handed to the session.
const MAX_BATCH: usize = 256;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes gathered before one write.
const WRITE_BATCH: usize = 64 * 1024;
/// Read buffer growth while reads fill it (a busy connection).
const READ_RESERVE: usize = 64 * 1024;
/// Spare room kept in the read buffer of a quiet connection.
const READ_MIN_SPARE: usize = 1024;

/// Accepts MQTT connections until `shutdown` turns true.
pub async fn run_listener(ctx: NodeContext, listener: Box<dyn Listener>, shutdown: watch::Receiver<bool>) {
    crate::seams::serve_listener("mqtt", listener, shutdown, move |connection, peer| {
        serve_connection(ctx.clone(), connection, peer)
    })
    .await
}

struct ConnectionCount(NodeContext);

impl ConnectionCount {
    fn open(ctx: &NodeContext) -> (Self, usize) {
        let count = ctx.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(names::MQTT_CONNECTIONS).increment(1.0);
        (Self(ctx.clone()), count)
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(names::MQTT_CONNECTIONS).decrement(1.0);
    }
}

/// Serves one connection from CONNECT to close.
pub async fn serve_connection(ctx: NodeContext, connection: Box<dyn Connection>, peer: SocketAddr) {
    let (_count_guard, open_connections) = ConnectionCount::open(&ctx);
    let (mut reader, mut writer) = tokio::io::split(connection);
    let mut buf = BytesMut::with_capacity(READ_MIN_SPARE);
    let max_packet_size = ctx.mqtt.max_packet_size as usize;

    let first = tokio::time::timeout(ctx.mqtt.connect_timeout(), read_connect(&mut reader, &mut buf, max_packet_size));
    let (version, connect) = match first.await {
        Ok(Ok(Some(found))) => found,
        Ok(Err(CodecError::UnsupportedProtocol(level))) => {
            let mut out = BytesMut::new();
            codec::write_connack_unsupported(level, &mut out);
            let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await;
            refused(&ctx, "unsupported_protocol");
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bad first packet");
            refused(&ctx, "malformed");
            return;
        }
        Ok(Ok(None)) => return,
        Err(_) => {
            refused(&ctx, "connect_timeout");
            return;
        }
    };

    let accepted = match check_connect(&ctx, &connect, version, open_connections) {
        Ok(accepted) => accepted,
        Err(code) => {
            let mut out = BytesMut::new();
            let connack = Packet::ConnAck(ConnAck { session_present: false, code, properties: None });
            let _ = codec::write_packet(&connack, version, &mut out);
            let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await;
            let _ = writer.shutdown().await;
            refused(&ctx, "connect_refused");
            return;
        }
    };

    let conn_id = ctx.rng.next_u64();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (closed_tx, closed_rx) = watch::channel(false);
    tokio::spawn(write_loop(out_rx, writer, closed_tx, ctx.mqtt_counters.bytes_sent.clone()));

    let client_id = accepted.params.identity.client_id.clone();
    let keepalive = accepted.keepalive;
    let request = AttachRequest {
        conn_id,
        writer: out_tx.clone(),
        params: accepted.params,
        clean_start: connect.clean_session,
        expiry_secs: accepted.expiry_secs,
        connack_properties: accepted.connack_properties,
    };
    tracing::debug!(%client_id, %peer, ?version, "client connected");
    let session = match ctx.sessions.attach(&ctx, &client_id, request).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%client_id, %error, "cannot attach session");
            let mut out = BytesMut::new();
            let connack = Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServerUnavailable,
                properties: None,
            });
            let _ = codec::write_packet(&connack, version, &mut out);
            let _ = out_tx.send(Outbound::Data(out.freeze())).await;
            let _ = out_tx.send(Outbound::Close).await;
            return;
        }
    };
    drop(out_tx);
    read_loop(ReadLoop {
        reader: &mut reader,
        buf,
        version,
        max_packet_size,
        keepalive,
        conn_id,
        session,
        closed: closed_rx,
        bytes_received: ctx.mqtt_counters.bytes_received.clone(),
        last_read_filled: false,
    })
    .await;
}

struct Accepted {
    params: ConnectionParams,
    expiry_secs: u32,
    keepalive: u16,
    connack_properties: Option<ConnAckProperties>,
}

/// Validates a CONNECT: limits, client id, credentials, properties.
fn check_connect(
    ctx: &NodeContext,
    connect: &Connect,
    version: ProtocolVersion,
    open_connections: usize,
) -> Result<Accepted, ConnectReturnCode> {
    let settings = &ctx.mqtt;
    if open_connections > settings.max_connections {
        return Err(ConnectReturnCode::QuotaExceeded);
    }
    let v5 = version == ProtocolVersion::V5;
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.contains('\0') {
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
    let username = connect.login.as_ref().map(|login| login.username.clone());
    let password = connect.login.as_ref().map(|login| login.password.as_bytes());
    match ctx.authorizer.authenticate(username.as_deref(), password) {
        Ok(()) => {}
        Err(AuthFailure::BadCredentials) => return Err(ConnectReturnCode::BadUserNamePassword),
        Err(AuthFailure::NotAuthorized) => return Err(ConnectReturnCode::NotAuthorized),
    }

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
            identity: Identity { client_id, username },
            will,
        },
        expiry_secs,
        keepalive,
        connack_properties,
    })
}

fn refused(_ctx: &NodeContext, reason: &'static str) {
    metrics::counter!(names::MQTT_CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// Reads until a whole CONNECT is buffered.
async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<(ProtocolVersion, Connect)>, CodecError> {
    loop {
        if let Some(found) = codec::read_connect(buf, max_packet_size)? {
            return Ok(Some(found));
        }
        buf.reserve(4096);
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(read) => metrics::counter!(names::MQTT_BYTES_RECEIVED).increment(read as u64),
        }
    }
}

struct ReadLoop<'a, R> {
    reader: &'a mut R,
    buf: BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
    keepalive: u16,
    conn_id: u64,
    session: ractor::ActorRef<SessionMsg>,
    closed: watch::Receiver<bool>,
    bytes_received: metrics::Counter,
    /// Whether the last read filled the buffer's spare room (then the buffer grows).
    last_read_filled: bool,
}

async fn read_loop<R: AsyncRead + Unpin>(mut io: ReadLoop<'_, R>) {
    let permits = Arc::new(Semaphore::new(INBOUND_BATCHES));
    let keepalive = (io.keepalive > 0).then(|| Duration::from_millis(u64::from(io.keepalive) * 1500));
    let mut keepalive_timeout = false;
    'read: loop {
        // hand over everything already buffered
        loop {
            let mut packets = Vec::new();
            let mut error = None;
            let mut stop = false;
            while packets.len() < MAX_BATCH {
                match codec::read_packet(&mut io.buf, io.version, io.max_packet_size) {
                    Ok(Some(packet)) => {
                        stop = matches!(packet, Packet::Disconnect(_));
                        packets.push(packet);
                        if stop {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        stop = true;
                        break;
                    }
                }
            }
            if packets.is_empty() && error.is_none() {
                break;
            }
            let full = packets.len() == MAX_BATCH;
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break 'read };
            let inbound = SessionMsg::Inbound { conn_id: io.conn_id, packets, error, permit };
            if io.session.cast(inbound).is_err() || stop {
                break 'read;
            }
            if !full {
                break;
            }
        }
        // grow the read buffer only while reads fill it: an idle connection keeps a small one
        if io.buf.capacity() - io.buf.len() < READ_MIN_SPARE {
            let grow = if io.last_read_filled { READ_RESERVE } else { READ_MIN_SPARE * 2 };
            io.buf.reserve(grow);
        }
        let spare = io.buf.capacity() - io.buf.len();
        let read = async {
            match keepalive {
                Some(limit) => tokio::time::timeout(limit, io.reader.read_buf(&mut io.buf)).await.ok(),
                None => Some(io.reader.read_buf(&mut io.buf).await),
            }
        };
        tokio::select! {
            biased;
            _ = io.closed.changed() => break,
            result = read => match result {
                None => {
                    keepalive_timeout = true;
                    break;
                }
                Some(Ok(0)) | Some(Err(_)) => break,
                Some(Ok(read)) => {
                    io.last_read_filled = read >= spare;
                    io.bytes_received.increment(read as u64);
                }
            }
        }
    }
    let _ = io.session.cast(SessionMsg::ConnectionLost { conn_id: io.conn_id, keepalive_timeout });
}

/// Drains the session's frames to the socket until told to close (or the socket fails).
///
/// Frames already queued are gathered into one buffer so that a busy connection costs one
/// write syscall per batch, not per message.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut frames: mpsc::Receiver<Outbound>,
    mut writer: W,
    closed: watch::Sender<bool>,
    bytes_sent: metrics::Counter,
) {
    // grows on demand and keeps its capacity: an idle connection never allocates 64 KiB
    let mut batch = BytesMut::new();
    'outer: while let Some(frame) = frames.recv().await {
        let mut next = Some(frame);
        let mut close = false;
        while let Some(frame) = next.take() {
            match frame {
                Outbound::Data(bytes) if batch.is_empty() && bytes.len() >= WRITE_BATCH => {
                    // a large frame goes out as it is, without a copy
                    if !write_all(&mut writer, &bytes, &bytes_sent).await {
                        break 'outer;
                    }
                }
                Outbound::Data(bytes) => batch.extend_from_slice(&bytes),
                Outbound::Close => {
                    close = true;
                    break;
                }
            }
            if batch.len() >= WRITE_BATCH {
                break;
            }
            next = frames.try_recv().ok();
        }
        if !batch.is_empty() {
            let ok = write_all(&mut writer, &batch, &bytes_sent).await;
            batch.clear();
            if !ok {
                break;
            }
        }
        if close {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    let _ = closed.send(true);
}

async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8], bytes_sent: &metrics::Counter) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(Ok(())) => {
            bytes_sent.increment(bytes.len() as u64);
            true
        }
        _ => false,
    }
}
