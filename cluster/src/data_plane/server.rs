//! The listening side of the data plane: accepts peers, checks each one's hello, and hands
//! every following frame to the node.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PeerMessage;
use super::frame::{self, FrameError};
use crate::seams::{Connection, Listener, serve_listener};

/// Where inbound frames go: `(sending node, message)`.
pub type Deliver = Arc<dyn Fn(u64, PeerMessage) + Send + Sync>;

/// Accepts data-plane connections until `shutdown`, delivering frames from peers of
/// `cluster` (a hello naming another cluster closes the connection).
pub async fn serve_peers(
    listener: Box<dyn Listener>,
    cluster: String,
    shutdown: tokio::sync::watch::Receiver<bool>,
    deliver: Deliver,
) {
    let cluster: Arc<str> = Arc::from(cluster);
    serve_listener("rpc", listener, shutdown, move |connection, peer| {
        let cluster = Arc::clone(&cluster);
        let deliver = Arc::clone(&deliver);
        async move {
            if let Err(error) = read_peer(connection, &cluster, &deliver).await {
                tracing::debug!(%peer, %error, "peer connection closed");
            }
        }
    })
    .await;
}

/// Why an inbound peer connection ended.
#[derive(Debug, thiserror::Error)]
enum PeerReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the first frame is not a hello")]
    NoHello,
    #[error("the peer is in cluster {0:?}")]
    OtherCluster(String),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("a frame did not complete in time, or the connection stayed idle too long")]
    Stalled,
}

/// How long a frame that has begun may take to arrive whole. A stream that stops halfway
/// through a frame (a peer gone silent, or bytes lost under a frame boundary) is closed, so
/// that the sender reconnects rather than writing into a stream that can never parse again.
const FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection may stay idle between frames.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the receiver acknowledges what it read (at most).
const ACK_INTERVAL: Duration = Duration::from_millis(200);

async fn read_peer(connection: Box<dyn Connection>, cluster: &str, deliver: &Deliver) -> Result<(), PeerReadError> {
    let (mut reader, mut writer) = tokio::io::split(connection);
    let mut buffer = BytesMut::with_capacity(64 << 10);
    let mut from = None;
    let mut frame_started: Option<tokio::time::Instant> = None;
    let (mut read_through, mut acked_through) = (0u64, 0u64);
    let mut acked_at: Option<tokio::time::Instant> = None;
    let mut ack = BytesMut::new();
    loop {
        while let Some((correlation, payload)) = frame::take_frame(&mut buffer)? {
            read_through = read_through.max(correlation);
            let message: PeerMessage = frame::decode(&payload)?;
            match (from, message) {
                (None, PeerMessage::Hello { node, cluster: theirs }) => {
                    if theirs != cluster {
                        return Err(PeerReadError::OtherCluster(theirs));
                    }
                    from = Some(node);
                }
                (None, _) => return Err(PeerReadError::NoHello),
                (Some(node), message) => deliver(node, message),
            }
        }
        let now = tokio::time::Instant::now();
        if read_through > acked_through && acked_at.is_none_or(|at| now.duration_since(at) >= ACK_INTERVAL) {
            ack.clear();
            frame::encode(0, &PeerMessage::Ack { correlation: read_through }, &mut ack)?;
            tokio::time::timeout(Duration::from_secs(1), writer.write_all(&ack))
                .await
                .map_err(|_| PeerReadError::Stalled)??;
            acked_through = read_through;
            acked_at = Some(now);
        }
        let mut deadline = if buffer.is_empty() {
            frame_started = None;
            now + IDLE_TIMEOUT
        } else {
            *frame_started.get_or_insert(now) + FRAME_TIMEOUT
        };
        if read_through > acked_through {
            // an acknowledgement is owed: wake for it even if nothing more arrives
            deadline = deadline.min(acked_at.map_or(now, |at| at + ACK_INTERVAL));
        }
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(64 << 10);
        }
        match tokio::time::timeout_at(deadline, reader.read_buf(&mut buffer)).await {
            Ok(read) => {
                if read? == 0 {
                    return if buffer.is_empty() { Ok(()) } else { Err(PeerReadError::Truncated) };
                }
            }
            Err(_) if read_through > acked_through => {} // time to acknowledge
            Err(_) => return Err(PeerReadError::Stalled),
        }
    }
}
