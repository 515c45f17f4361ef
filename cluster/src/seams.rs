//! The seams between node code and the outside world: sockets, time and randomness.
//!
//! Production wires tokio sockets, the system clock and an OS-seeded RNG; the deterministic
//! simulation wires turmoil sockets, simulated time and a seeded RNG. Node code reaches
//! none of these except through the per-node [`crate::NodeContext`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

/// A byte stream between two hosts.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// A bound listening socket.
#[async_trait]
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next inbound connection.
    async fn accept(&self) -> io::Result<(Box<dyn Connection>, SocketAddr)>;
    /// Waits for the next inbound connection, with the identity its handshake proved (the
    /// name a verified TLS client certificate gives), if any.
    async fn accept_identified(&self) -> io::Result<(Box<dyn Connection>, SocketAddr, Option<Arc<str>>)> {
        let (connection, peer) = self.accept().await?;
        Ok((connection, peer, None))
    }
    /// The address actually bound (useful with port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Opens listeners and outbound connections.
#[async_trait]
pub trait Net: Send + Sync + 'static {
    /// Binds a listener.
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>>;
    /// Connects to a remote listener.
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Connection>>;
}

/// Real TCP sockets on tokio.
#[derive(Debug, Default, Clone)]
pub struct TokioNet;

#[allow(clippy::disallowed_types)] // this is the seam itself
struct TokioListener(tokio::net::TcpListener);

#[async_trait]
impl Listener for TokioListener {
    async fn accept(&self) -> io::Result<(Box<dyn Connection>, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok((Box::new(stream), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
#[allow(clippy::disallowed_types)] // this is the seam itself
impl Net for TokioNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Box::new(TokioListener(socket.listen(4096)?)))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Connection>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// The node's one source of time: wall-clock milliseconds for timestamps and deadlines, and
/// the monotonic instant that tokio's timers run on, kept in step so that a deadline computed
/// from one and a timer armed on the other agree.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;
    /// The monotonic instant tokio's timers (`sleep`, `interval`, `send_after`) use.
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}

/// Wall-clock time derived from tokio's monotonic clock: read once at start, then advanced by
/// tokio's elapsed time. Production reads the OS clock once ([`MonotonicClock::from_system`]);
/// the simulation starts at a fixed epoch, and tokio's time is simulated, so both worlds get
/// the same code and a wall clock that never jumps backwards.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    base_wall_ms: i64,
    base: tokio::time::Instant,
}

impl MonotonicClock {
    /// A clock that reads `wall_ms` now.
    pub fn starting_at(wall_ms: i64) -> Self {
        Self { base_wall_ms: wall_ms, base: tokio::time::Instant::now() }
    }

    /// A clock that starts at the operating system's time.
    #[allow(clippy::disallowed_methods)] // this is the seam itself
    pub fn from_system() -> Self {
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or(0);
        Self::starting_at(wall_ms)
    }
}

impl Clock for MonotonicClock {
    fn now_millis(&self) -> i64 {
        self.base_wall_ms + tokio::time::Instant::now().duration_since(self.base).as_millis() as i64
    }
}

/// A per-node random number generator, seeded from the OS in production and from the
/// simulation seed in simulation.
#[derive(Clone)]
pub struct NodeRng(Arc<Mutex<StdRng>>);

impl NodeRng {
    /// A generator with a fixed seed (simulation, tests).
    pub fn seeded(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// A generator seeded from the operating system.
    #[allow(clippy::disallowed_methods)] // this is the seam itself
    pub fn from_os() -> Self {
        Self(Arc::new(Mutex::new(StdRng::from_os_rng())))
    }

    /// The next random 64-bit number.
    pub fn next_u64(&self) -> u64 {
        self.0.lock().next_u64()
    }

    /// Fills a buffer with random bytes.
    pub fn fill(&self, bytes: &mut [u8]) {
        self.0.lock().fill_bytes(bytes)
    }
}

impl std::fmt::Debug for NodeRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeRng")
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, spawning `serve` for each.
///
/// Two accept loops share the listener (`accept` takes `&self`): `accept4` and the new
/// socket's registration are the serial part of a connect, and a second loop lets the other
/// worker thread take half of them.
pub async fn serve_listener<F, Fut>(
    protocol: &'static str,
    listener: Box<dyn Listener>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(Box<dyn Connection>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_identified_listener(protocol, listener, shutdown, move |connection, peer, _| serve(connection, peer)).await
}

/// [`serve_listener`], giving `serve` the identity each connection's handshake proved too
/// ([`Listener::accept_identified`]).
pub async fn serve_identified_listener<F, Fut>(
    protocol: &'static str,
    listener: Box<dyn Listener>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(Box<dyn Connection>, SocketAddr, Option<Arc<str>>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener: Arc<dyn Listener> = Arc::from(listener);
    let serve = Arc::new(serve);
    let second = tokio::spawn(
        accept_loop(protocol, Arc::clone(&listener), shutdown.clone(), Arc::clone(&serve)).in_current_span(),
    );
    accept_loop(protocol, listener, shutdown, serve).await;
    let _ = second.await;
}

async fn accept_loop<F, Fut>(
    protocol: &'static str,
    listener: Arc<dyn Listener>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    serve: Arc<F>,
) where
    F: Fn(Box<dyn Connection>, SocketAddr, Option<Arc<str>>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept_identified() => match accepted {
                Ok((connection, peer, identity)) => {
                    tokio::spawn(serve(connection, peer, identity).in_current_span());
                }
                Err(error) => {
                    // e.g. out of file descriptors: back off instead of spinning
                    tracing::warn!(protocol, %error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
