//! The listening side of the data plane: accepts peers, checks each one's hello, and hands
//! every following frame to the node.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

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
}

async fn read_peer(mut connection: Box<dyn Connection>, cluster: &str, deliver: &Deliver) -> Result<(), PeerReadError> {
    let mut buffer = BytesMut::with_capacity(64 << 10);
    let mut from = None;
    loop {
        while let Some((_correlation, payload)) = frame::take_frame(&mut buffer)? {
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
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(64 << 10);
        }
        if connection.read_buf(&mut buffer).await? == 0 {
            return if buffer.is_empty() { Ok(()) } else { Err(PeerReadError::Truncated) };
        }
    }
}
