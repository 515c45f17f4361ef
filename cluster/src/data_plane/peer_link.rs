//! [`PeerLink`]: the one outbound data-plane connection to one remote node.
//!
//! Every replica on this node casts its raft messages for that node here. Messages that
//! arrive while others are queued ride in the same frame: the link schedules one flush
//! when its outbox goes from empty to not, and the flush runs after everything already in
//! the mailbox, so a burst of heartbeats from a thousand partitions leaves as one frame.
//!
//! Raft tolerates loss, so the link never queues without bound: while the peer is down or
//! slow, the outbox is dropped (and counted) rather than kept; raft resends what matters.
//! Connecting backs off from 50 ms to 2 s; every connect and write has a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::frame::{self, MAX_FRAME_BYTES};
use super::{Forwarded, GroupId, PeerMessage};
use crate::raft::RaftMessage;
use crate::raft::wire::EntryPayload;
use crate::seams::{Connection, Net};

/// Timeouts, backoff and bounds of a link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// how long a connect may take
    pub connect_timeout: Duration,
    /// how long one frame's write may take
    pub write_timeout: Duration,
    /// the first wait after a failed connect
    pub backoff_min: Duration,
    /// the longest wait between connects
    pub backoff_max: Duration,
    /// outbox bytes (estimated) past which new messages are dropped until the next flush
    pub max_outbox_bytes: usize,
    /// how long written frames may go unacknowledged before the link reconnects
    pub ack_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_outbox_bytes: 8 << 20,
            ack_timeout: Duration::from_secs(2),
        }
    }
}

/// What a link needs.
pub struct PeerLinkArgs {
    /// this node's id (sent in the hello)
    pub local_node: u64,
    /// the cluster name (sent in the hello)
    pub cluster: String,
    /// the peer's data-plane address
    pub address: SocketAddr,
    /// sockets
    pub net: Arc<dyn Net>,
    /// timeouts and bounds
    pub options: LinkOptions,
    /// told the id of each forwarded proposal the link dropped unsent
    pub undelivered: Option<Undelivered>,
    /// told when the peer closed the connection (it stopped, or died with its sockets closed)
    pub lost: Option<ConnectionLost>,
}

/// Told the id of a forwarded proposal a link dropped without writing it.
pub type Undelivered = Arc<dyn Fn(u64) + Send + Sync>;

/// Told that a peer closed a link's connection: a process killed with `kill -9` has its
/// sockets closed by the kernel, so this hears of it long before gossip does.
pub type ConnectionLost = Arc<dyn Fn() + Send + Sync>;

/// Messages to a link.
#[allow(clippy::large_enum_variant)] // nearly every message is `Raft`; boxing it would cost an allocation each
pub enum PeerLinkMsg {
    /// send a raft message of `GroupId` to the peer
    Raft(GroupId, RaftMessage),
    /// send a proposal or an answer to the peer
    Forward(Forwarded),
    /// write the outbox (sent by the link to itself)
    Flush,
    /// open the connection now if it is not open (so that status shows reachability)
    Connect,
    /// the peer advertised a new address (it restarted elsewhere)
    Address(SocketAddr),
    /// counters, for HTTP status and tests
    Status(RpcReplyPort<LinkStatus>),
}

/// A link's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// whether a connection is open
    pub connected: bool,
    /// frames written
    pub frames_sent: u64,
    /// messages written (raft's, proposals, answers)
    pub messages_sent: u64,
    /// messages dropped (peer down, slow, or outbox full)
    pub messages_dropped: u64,
}

/// The link actor.
pub struct PeerLink;

/// A link's state.
pub struct LinkState {
    args: PeerLinkArgs,
    outbox: Vec<(GroupId, RaftMessage)>,
    /// proposals and answers, in the order given (they leave in their own frame)
    forwarded: Vec<Forwarded>,
    outbox_bytes: usize,
    flush_scheduled: bool,
    connection: Option<Open>,
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
    correlation: u64,
    buffer: BytesMut,
    status: LinkStatus,
}

/// An open connection: its write half, and the task reading the peer's acknowledgements.
struct Open {
    writer: WriteHalf<Box<dyn Connection>>,
    reader: tokio::task::JoinHandle<()>,
    /// the last frame the peer acknowledged reading (`u64::MAX` once the connection closed)
    acked: Arc<AtomicU64>,
    /// when the oldest frame not yet acknowledged was written
    unacked_since: Option<tokio::time::Instant>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads the peer's acknowledgements until the connection ends (then tells `lost`, unless
/// this node dropped the connection itself, which aborts the task).
async fn read_acks(mut reader: ReadHalf<Box<dyn Connection>>, acked: Arc<AtomicU64>, lost: Option<ConnectionLost>) {
    let mut buffer = BytesMut::with_capacity(256);
    loop {
        match frame::take_frame(&mut buffer) {
            Ok(Some((_, payload))) => {
                if let Ok(PeerMessage::Ack { correlation }) = frame::decode::<PeerMessage>(&payload) {
                    acked.fetch_max(correlation, Ordering::AcqRel);
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    acked.store(u64::MAX, Ordering::Release);
    if let Some(lost) = lost {
        lost();
    }
}

/// A rough size of a message in a frame, for the outbox bound.
fn estimated_bytes(message: &RaftMessage) -> usize {
    let entries: usize = message
        .entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(data) => data.len() + 24,
            EntryPayload::ConfChange(change) => change.changes.len() * 10 + 24,
        })
        .sum();
    64 + entries + message.context.len()
}

impl Actor for PeerLink {
    type Msg = PeerLinkMsg;
    type State = LinkState;
    type Arguments = PeerLinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PeerLinkMsg>,
        args: PeerLinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
        let backoff = args.options.backoff_min;
        Ok(LinkState {
            args,
            outbox: Vec::new(),
            forwarded: Vec::new(),
            outbox_bytes: 0,
            flush_scheduled: false,
            connection: None,
            retry_at: None,
            backoff,
            correlation: 0,
            buffer: BytesMut::new(),
            status: LinkStatus::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PeerLinkMsg>,
        message: PeerLinkMsg,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerLinkMsg::Raft(group, message) => {
                if state.admit(estimated_bytes(&message), &myself) {
                    state.outbox.push((group, message));
                }
            }
            PeerLinkMsg::Forward(item) => {
                if state.admit(item.estimated_bytes(), &myself) {
                    state.forwarded.push(item);
                } else {
                    state.undelivered(std::slice::from_ref(&item));
                }
            }
            PeerLinkMsg::Flush => {
                state.flush_scheduled = false;
                state.flush().await;
            }
            PeerLinkMsg::Connect => {
                if state.connection.is_none() {
                    state.connect().await;
                }
            }
            PeerLinkMsg::Address(address) => {
                if address != state.args.address {
                    state.args.address = address;
                    state.connection = None;
                    state.retry_at = None;
                }
            }
            PeerLinkMsg::Status(reply) => {
                let mut status = state.status;
                status.connected = state.connection.is_some();
                let _ = reply.send(status);
            }
        }
        Ok(())
    }
}

impl LinkState {
    /// Whether a message of `bytes` fits the outbox (counted as dropped if not); schedules
    /// the flush either way.
    fn admit(&mut self, bytes: usize, myself: &ActorRef<PeerLinkMsg>) -> bool {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            let _ = myself.cast(PeerLinkMsg::Flush);
        }
        if self.outbox_bytes + bytes > self.args.options.max_outbox_bytes {
            self.dropped(1);
            return false;
        }
        self.outbox_bytes += bytes;
        true
    }

    /// Tells whoever waits for the proposals among `items` that they were never sent.
    fn undelivered(&self, items: &[Forwarded]) {
        let Some(undelivered) = &self.args.undelivered else { return };
        for item in items {
            match item {
                Forwarded::Propose { id, .. } | Forwarded::Service { id, .. } if *id != 0 => undelivered(*id),
                _ => {}
            }
        }
    }

    async fn flush(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        let forwarded = std::mem::take(&mut self.forwarded);
        self.outbox_bytes = 0;
        if outbox.is_empty() && forwarded.is_empty() {
            return;
        }
        let count = (outbox.len() + forwarded.len()) as u64;
        self.check_acknowledged();
        if self.connection.is_none() && !self.connect().await {
            self.dropped(count);
            self.undelivered(&forwarded);
            return;
        }
        self.buffer.clear();
        // one frame per flush, split only if it would pass the frame limit
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        for (group, message) in outbox {
            let bytes = estimated_bytes(&message);
            if !chunk.is_empty() && chunk_bytes + bytes > MAX_FRAME_BYTES / 2 {
                self.encode(PeerMessage::Raft(std::mem::take(&mut chunk)));
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunk.push((group, message));
        }
        if !chunk.is_empty() {
            self.encode(PeerMessage::Raft(chunk));
        }
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let proposals: Vec<u64> = forwarded
            .iter()
            .filter_map(|item| match item {
                Forwarded::Propose { id, .. } => Some(*id),
                Forwarded::Service { id, .. } if *id != 0 => Some(*id),
                Forwarded::Answer { .. } | Forwarded::Service { .. } => None,
            })
            .collect();
        for item in forwarded {
            let bytes = item.estimated_bytes();
            if !chunk.is_empty() && chunk_bytes + bytes > MAX_FRAME_BYTES / 2 {
                self.encode(PeerMessage::Forwarded(std::mem::take(&mut chunk)));
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            self.encode(PeerMessage::Forwarded(chunk));
        }
        let Some(open) = self.connection.as_mut() else { return };
        let written = tokio::time::timeout(self.args.options.write_timeout, open.writer.write_all(&self.buffer)).await;
        match written {
            Ok(Ok(())) => {
                open.unacked_since.get_or_insert_with(tokio::time::Instant::now);
                self.status.messages_sent += count;
                metrics::counter!(crate::metrics::PEER_FRAMES_SENT).increment(1);
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = %self.args.address, %error, "peer link write failed");
                self.lost_connection(count, &proposals);
            }
            Err(_) => {
                tracing::debug!(peer = %self.args.address, "peer link write timed out");
                self.lost_connection(count, &proposals);
            }
        }
    }

    fn encode(&mut self, message: PeerMessage) {
        self.correlation += 1;
        if frame::encode(self.correlation, &message, &mut self.buffer).is_ok() {
            self.status.frames_sent += 1;
        }
    }

    /// Drops a connection the peer stopped acknowledging (or closed), so that the next
    /// flush opens a new one.
    fn check_acknowledged(&mut self) {
        let Some(open) = self.connection.as_mut() else { return };
        let acked = open.acked.load(Ordering::Acquire);
        if acked == u64::MAX {
            tracing::debug!(peer = %self.args.address, "peer link closed by the peer");
            self.connection = None;
            return;
        }
        if acked >= self.correlation {
            open.unacked_since = None;
            return;
        }
        if open.unacked_since.is_some_and(|since| since.elapsed() > self.args.options.ack_timeout) {
            tracing::debug!(peer = %self.args.address, "peer link unacknowledged: reconnecting");
            self.connection = None;
        }
    }

    /// The write failed: the connection is closed; `proposals` may or may not have reached the
    /// peer (a frame cut short never parses there; one written whole may have), and their
    /// senders are told so they can try again (a retry that duplicates is theirs to allow).
    fn lost_connection(&mut self, count: u64, proposals: &[u64]) {
        self.connection = None;
        self.retry_at = None;
        self.dropped(count);
        if let Some(undelivered) = &self.args.undelivered {
            proposals.iter().for_each(|id| undelivered(*id));
        }
    }

    fn dropped(&mut self, count: u64) {
        self.status.messages_dropped += count;
        metrics::counter!(crate::metrics::PEER_MESSAGES_DROPPED).increment(count);
    }

    /// Opens the connection and says hello, unless the backoff says wait.
    async fn connect(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        let address = self.args.address;
        let attempt = async {
            let mut connection = self.args.net.connect(address).await?;
            let mut hello = BytesMut::new();
            let message = PeerMessage::Hello { node: self.args.local_node, cluster: self.args.cluster.clone() };
            frame::encode(0, &message, &mut hello).map_err(std::io::Error::other)?;
            connection.write_all(&hello).await?;
            Ok::<_, std::io::Error>(connection)
        };
        match tokio::time::timeout(self.args.options.connect_timeout, attempt).await {
            Ok(Ok(connection)) => {
                tracing::debug!(peer = %address, "peer link connected");
                let (reader, writer) = tokio::io::split(connection);
                let acked = Arc::new(AtomicU64::new(self.correlation));
                let reader = tokio::spawn(read_acks(reader, Arc::clone(&acked), self.args.lost.clone()));
                self.connection = Some(Open { writer, reader, acked, unacked_since: None });
                self.backoff = self.args.options.backoff_min;
                self.retry_at = None;
                true
            }
            failed => {
                if let Ok(Err(error)) = failed {
                    tracing::debug!(peer = %address, %error, "peer link connect failed");
                }
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(self.args.options.backoff_max);
                false
            }
        }
    }
}
