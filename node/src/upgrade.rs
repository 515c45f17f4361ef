//! A listener whose connections go through a handshake before the protocol sees them (TLS,
//! WebSocket, or both): it accepts on the listener it wraps and runs each handshake in a task of
//! its own under a timeout, so that a client that opens a socket and says nothing holds up
//! nobody, and `accept` yields only connections whose handshake is done. At most
//! [`MAX_HANDSHAKES`] run at once on a listener; past that, accepting waits for one to end.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tidewater_actors::log_limit::LogLimit;
use tidewater_actors::seams::{Clock, Connection, Listener};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

/// How many handshakes may be in progress on one listener.
pub const MAX_HANDSHAKES: usize = 1024;

/// Turns an accepted connection into an established one, with the identity its handshake
/// proved, or says why it could not.
pub type Upgrade = Arc<dyn Fn(Box<dyn Connection>) -> BoxFuture<'static, Result<Upgraded, String>> + Send + Sync>;

/// An established connection and the identity its handshake proved, if any.
pub type Upgraded = (Box<dyn Connection>, Option<Arc<str>>);

type Established = (Box<dyn Connection>, SocketAddr, Option<Arc<str>>);

/// What a listener's handshakes are, for their timeout and their log lines.
#[derive(Debug, Clone, Copy)]
pub struct Handshake {
    /// the listener, e.g. `mqtts`
    pub protocol: &'static str,
    /// the layer, e.g. `tls` or `websocket`
    pub layer: &'static str,
    /// how long a handshake may take
    pub timeout: Duration,
    /// the configuration key of `timeout`, named when it passes
    pub timeout_key: &'static str,
}

/// Failed handshakes are a client's doing: their log lines are rate-limited.
static FAILED_HANDSHAKES: LogLimit = LogLimit::new();

/// Wraps `inner`: what it accepts has been through `upgrade`.
pub fn listener(
    inner: Box<dyn Listener>,
    handshake: Handshake,
    upgrade: Upgrade,
    clock: Arc<dyn Clock>,
) -> Box<dyn Listener> {
    let local_addr = inner.local_addr();
    let (established, rx) = mpsc::channel(64);
    let accepting = tokio::spawn(accept_and_upgrade(inner, handshake, upgrade, established, clock).in_current_span());
    Box::new(UpgradingListener { established: tokio::sync::Mutex::new(rx), local_addr, accepting })
}

struct UpgradingListener {
    established: tokio::sync::Mutex<mpsc::Receiver<Established>>,
    local_addr: io::Result<SocketAddr>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for UpgradingListener {
    fn drop(&mut self) {
        // the accept loop owns the handshakes in progress: they end with it
        self.accepting.abort();
    }
}

#[async_trait]
impl Listener for UpgradingListener {
    async fn accept(&self) -> io::Result<(Box<dyn Connection>, SocketAddr)> {
        let (connection, peer, _) = self.accept_identified().await?;
        Ok((connection, peer))
    }

    async fn accept_identified(&self) -> io::Result<Established> {
        match self.established.lock().await.recv().await {
            Some(established) => Ok(established),
            None => Err(io::Error::other("the listener stopped")),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

async fn accept_and_upgrade(
    inner: Box<dyn Listener>,
    handshake: Handshake,
    upgrade: Upgrade,
    established: mpsc::Sender<Established>,
    clock: Arc<dyn Clock>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= MAX_HANDSHAKES {
            handshakes.join_next().await;
            continue;
        }
        // a layer below (TLS under WebSocket) may have proved who the client is
        let (connection, peer, below) = match inner.accept_identified().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // e.g. out of file descriptors: back off instead of spinning
                tracing::warn!(protocol = handshake.protocol, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (upgrade, established, clock) = (Arc::clone(&upgrade), established.clone(), Arc::clone(&clock));
        handshakes.spawn(
            async move {
                let why = match tokio::time::timeout(handshake.timeout, upgrade(connection)).await {
                    Ok(Ok((connection, identity))) => {
                        let _ = established.send((connection, peer, identity.or(below))).await;
                        return;
                    }
                    Ok(Err(why)) => why,
                    Err(_) => {
                        format!("no handshake within {} ms ({})", handshake.timeout.as_millis(), handshake.timeout_key)
                    }
                };
                if let Some(held_back) = FAILED_HANDSHAKES.admit(clock.now_millis()) {
                    let (protocol, layer) = (handshake.protocol, handshake.layer);
                    tracing::info!(protocol, %peer, held_back, "{layer} handshake failed: {why}");
                }
            }
            .in_current_span(),
        );
    }
}
