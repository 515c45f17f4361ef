//! TLS on the client listeners (rustls, with ring): MQTT over TLS on `listeners.mqtts` and, with
//! `tls.kafka = true`, the Kafka listener (`security.protocol=SSL` or `SASL_SSL`).
//!
//! A TLS listener wraps the listener the `Net` seam bound: it accepts there and runs each
//! handshake in a task of its own, bounded by `tls.handshake_timeout_ms`, so that a client that
//! opens a socket and says nothing holds up nobody; what comes out of `accept` is an
//! established TLS stream, and the protocol code above it cannot tell the difference.
//!
//! The certificate chain and key are PEM files (`tls.cert_file`, `tls.key_file`). They are
//! read at start (a bad file stops the start with the key named) and read again when their
//! modification time changes, checked every `tls.reload_check_ms`: a renewed certificate takes
//! effect for new connections without a restart, and a renewal that does not parse is logged
//! and leaves the old certificate serving. The files are the operator's, outside the storage
//! seams; the simulation configures no TLS.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tidewater_actors::log_limit::LogLimit;
use tidewater_actors::seams::{Clock, Connection, Listener};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::TlsConfig;

/// How many handshakes may be in progress on one listener; past it, accepting waits.
const MAX_HANDSHAKES: usize = 1024;

/// Why the certificate or key could not be used (the message names the key).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    key: &'static str,
    reason: String,
}

/// The node's server certificate, reloaded when its files change.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    resolver: Arc<ReloadingCert>,
    /// how long a handshake may take
    pub handshake_timeout: Duration,
    /// how often the files are checked for a change
    pub reload_check: Duration,
}

impl ServerTls {
    /// Loads `[tls]`; `None` when no certificate is configured.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
            return Ok(None);
        };
        // ring builds from crates.io with only a C compiler; rustls 0.23.48 marks it deprecated
        // for lack of post-quantum key exchange, which aws-lc-rs (a heavier build) would add
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = CertFiles { cert: cert_file.clone(), key: key_file.clone() };
        let key = files.load(&provider)?;
        let resolver = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(files.stamp()),
            files,
            provider: Arc::clone(&provider),
        });
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError { key: "tls", reason: e.to_string() })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        Ok(Some(Arc::new(Self {
            config: Arc::new(server),
            resolver,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            reload_check: Duration::from_millis(config.reload_check_ms),
        })))
    }

    /// Reads the files again if they changed since the last look; `true` when a new
    /// certificate now serves.
    pub fn reload_if_changed(&self) -> bool {
        self.resolver.reload_if_changed()
    }

    /// Wraps `inner` so that what it accepts is TLS, for `protocol` (named in logs, which read
    /// the time from `clock` to stay within their rate).
    pub fn listener(
        self: &Arc<Self>,
        protocol: &'static str,
        inner: Box<dyn Listener>,
        clock: Arc<dyn Clock>,
    ) -> Box<dyn Listener> {
        let local_addr = inner.local_addr();
        let (established, rx) = mpsc::channel(64);
        let handshaking = Handshaking {
            protocol,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config)),
            timeout: self.handshake_timeout,
            established,
            clock,
        };
        let accepting = tokio::spawn(accept_and_handshake(inner, handshaking).in_current_span());
        Box::new(TlsListener { established: tokio::sync::Mutex::new(rx), local_addr, accepting })
    }
}

/// Reloads the certificate every `tls.reload_check_ms` until `shutdown`.
pub async fn run_reload(tls: Arc<ServerTls>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(tls.reload_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                tls.reload_if_changed();
            }
        }
    }
}

#[derive(Debug, Clone)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

type Stamp = Option<(SystemTime, SystemTime)>;

impl CertFiles {
    // the operator's files, outside the storage seams (see the module's doc)
    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let unreadable = |key, path: &Path, e: &dyn std::fmt::Display| TlsError {
            key,
            reason: format!("cannot read {}: {e}", path.display()),
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| unreadable("tls.cert_file", &self.cert, &e))?;
        if chain.is_empty() {
            return Err(TlsError {
                key: "tls.cert_file",
                reason: format!("{} holds no PEM certificate", self.cert.display()),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| unreadable("tls.key_file", &self.key, &e))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError {
            key: "tls.key_file",
            reason: format!("{} does not go with tls.cert_file {}: {e}", self.key.display(), self.cert.display()),
        })
    }

    /// The files' modification times (`None` when one cannot be read).
    fn stamp(&self) -> Stamp {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }
}

/// Serves the current certificate, whatever the client asked for (one name per node).
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    files: CertFiles,
    stamp: Mutex<Stamp>,
    provider: Arc<CryptoProvider>,
}

impl ReloadingCert {
    fn reload_if_changed(&self) -> bool {
        let stamp = self.files.stamp();
        {
            let mut seen = self.stamp.lock();
            if stamp.is_none() || *seen == stamp {
                return false;
            }
            *seen = stamp;
        }
        match self.files.load(&self.provider) {
            Ok(key) => {
                *self.current.write() = Arc::new(key);
                tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "tls certificate changed but cannot be used: the previous one still serves");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

struct TlsListener {
    established: tokio::sync::Mutex<mpsc::Receiver<(Box<dyn Connection>, SocketAddr)>>,
    local_addr: io::Result<SocketAddr>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // the accept loop owns the handshakes in progress: they end with it
        self.accepting.abort();
    }
}

#[async_trait]
impl Listener for TlsListener {
    async fn accept(&self) -> io::Result<(Box<dyn Connection>, SocketAddr)> {
        match self.established.lock().await.recv().await {
            Some(established) => Ok(established),
            None => Err(io::Error::other("the TLS listener stopped")),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// What each handshake of a listener needs.
#[derive(Clone)]
struct Handshaking {
    protocol: &'static str,
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    established: mpsc::Sender<(Box<dyn Connection>, SocketAddr)>,
    clock: Arc<dyn Clock>,
}

/// Failed handshakes are a client's doing: their log lines are rate-limited.
static FAILED_HANDSHAKES: LogLimit = LogLimit::new();

impl Handshaking {
    async fn run(self, connection: Box<dyn Connection>, peer: SocketAddr) {
        let why = match tokio::time::timeout(self.timeout, self.acceptor.accept(connection)).await {
            Ok(Ok(stream)) => {
                let _ = self.established.send((Box::new(stream) as Box<dyn Connection>, peer)).await;
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no handshake within {} ms (tls.handshake_timeout_ms)", self.timeout.as_millis()),
        };
        if let Some(held_back) = FAILED_HANDSHAKES.admit(self.clock.now_millis()) {
            tracing::info!(protocol = self.protocol, %peer, held_back, "tls handshake failed: {why}");
        }
    }
}

async fn accept_and_handshake(inner: Box<dyn Listener>, handshaking: Handshaking) {
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= MAX_HANDSHAKES {
            handshakes.join_next().await;
            continue;
        }
        match inner.accept().await {
            Ok((connection, peer)) => {
                handshakes.spawn(handshaking.clone().run(connection, peer).in_current_span());
            }
            Err(error) => {
                // e.g. out of file descriptors: back off instead of spinning
                tracing::warn!(protocol = handshaking.protocol, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
