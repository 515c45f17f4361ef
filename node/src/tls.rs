//! TLS on the client listeners (rustls, with ring): MQTT over TLS on `listeners.mqtts` and, with
//! `tls.kafka = true`, the Kafka listener (`security.protocol=SSL` or `SASL_SSL`).
//!
//! A TLS listener wraps the listener the `Net` seam bound ([`crate::upgrade`]): each handshake
//! runs in a task of its own, bounded by `tls.handshake_timeout_ms`, so that a client that opens
//! a socket and says nothing holds up nobody; what comes out of `accept` is an established TLS
//! stream, and the protocol code above it cannot tell the difference.
//!
//! The certificate chain and key are PEM files (`tls.cert_file`, `tls.key_file`). They are
//! read at start (a bad file stops the start with the key named) and read again when their
//! modification time changes, checked every `tls.reload_check_ms`: a renewed certificate takes
//! effect for new connections without a restart, and a renewal that does not parse is logged
//! and leaves the old certificate serving; `tls.client_ca_file` (and the verifying side of
//! `tls.cluster_ca_file`) likewise. The files are the operator's, outside the storage
//! seams; the simulation configures no TLS.
//!
//! With `tls.cluster = true` the data plane between nodes is mutual TLS too ([`ServerTls::cluster_net`]):
//! each node presents its certificate both as a server and as a client, and accepts a peer only
//! with a certificate `tls.cluster_ca_file` signed; a node dialling a peer checks that the
//! peer's certificate names the address it dials (an IP subject alternative name).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tidewater_actors::seams::{Clock, Connection, Listener, Net};

use crate::config::{ClientAuth, PeerCertName, TlsConfig};
use crate::upgrade::{self, Handshake, Upgrade};

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
    peer_cert_as_username: PeerCertName,
    /// how long a handshake may take
    pub handshake_timeout: Duration,
    /// how often the files are checked for a change
    pub reload_check: Duration,
    /// `tls.cluster`: the data plane's mutual TLS, both ways
    cluster: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)>,
    /// the verifiers of `tls.client_ca_file` and `tls.cluster_ca_file`, reloaded with the certificate
    verifiers: Vec<Arc<ReloadingVerifier>>,
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
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError { key: "tls", reason: e.to_string() })?;
        let mut verifiers = Vec::new();
        let builder = match &config.client_ca_file {
            Some(ca_file) => {
                let verifier =
                    client_verifier(ca_file, config.client_auth, Arc::clone(&provider), "tls.client_ca_file")?;
                verifiers.push(Arc::clone(&verifier));
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let server = builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        let cluster = match (&config.cluster_ca_file, config.cluster) {
            (Some(ca_file), true) => {
                let (server, client, verifier) = cluster_configs(ca_file, &resolver, &provider)?;
                verifiers.push(verifier);
                Some((server, client))
            }
            _ => None,
        };
        Ok(Some(Arc::new(Self {
            config: Arc::new(server),
            resolver,
            peer_cert_as_username: config.peer_cert_as_username,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            reload_check: Duration::from_millis(config.reload_check_ms),
            cluster,
            verifiers,
        })))
    }

    /// With `tls.cluster`: `inner` with mutual TLS on every connection it accepts and dials, for
    /// the data plane between nodes.
    pub fn cluster_net(self: &Arc<Self>, inner: Arc<dyn Net>, clock: Arc<dyn Clock>) -> Option<Arc<dyn Net>> {
        let (server, client) = self.cluster.as_ref()?;
        Some(Arc::new(ClusterTlsNet {
            inner,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::clone(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::clone(client)),
            timeout: self.handshake_timeout,
            clock,
        }))
    }

    /// Reads the files again if they changed since the last look; `true` when a new
    /// certificate or client CA now serves.
    pub fn reload_if_changed(&self) -> bool {
        let cas = self.verifiers.iter().fold(false, |changed, verifier| verifier.reload_if_changed() | changed);
        self.resolver.reload_if_changed() | cas
    }

    /// Wraps `inner` so that what it accepts is TLS, for `protocol` (named in logs, which read
    /// the time from `clock` to stay within their rate). A verified client certificate gives
    /// the connection the identity `tls.peer_cert_as_username` asks for.
    pub fn listener(
        self: &Arc<Self>,
        protocol: &'static str,
        inner: Box<dyn Listener>,
        clock: Arc<dyn Clock>,
    ) -> Box<dyn Listener> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config));
        let naming = self.peer_cert_as_username;
        let upgrade: Upgrade = Arc::new(move |connection| {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                let stream = acceptor.accept(connection).await.map_err(|e| e.to_string())?;
                let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                let identity = match certificate {
                    Some(certificate) if naming != PeerCertName::None => {
                        Some(certificate_name(certificate, naming).ok_or_else(|| {
                            format!("the client certificate has no {naming:?} to take as a username (tls.peer_cert_as_username)")
                        })?)
                    }
                    _ => None,
                };
                Ok((Box::new(stream) as Box<dyn Connection>, identity))
            })
        });
        let handshake = Handshake {
            protocol,
            layer: "tls",
            timeout: self.handshake_timeout,
            timeout_key: "tls.handshake_timeout_ms",
        };
        upgrade::listener(inner, handshake, upgrade, clock)
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

/// The data plane's server and client configurations, and the verifier of the server's.
type ClusterConfigs = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>, Arc<ReloadingVerifier>);

/// The data plane's server and client configurations: this node's certificate both ways, peers'
/// verified against the CAs of `ca_file`.
fn cluster_configs(
    ca_file: &Path,
    resolver: &Arc<ReloadingCert>,
    provider: &Arc<CryptoProvider>,
) -> Result<ClusterConfigs, TlsError> {
    let verifier = client_verifier(ca_file, ClientAuth::Required, Arc::clone(provider), "tls.cluster_ca_file")?;
    let bad = |e: rustls::Error| TlsError { key: "tls.cluster_ca_file", reason: e.to_string() };
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(bad)?
        .with_client_cert_verifier(Arc::clone(&verifier) as Arc<dyn ClientCertVerifier>)
        .with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
    let client = rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(bad)?
        .with_root_certificates(roots(ca_file, "tls.cluster_ca_file")?)
        .with_client_cert_resolver(Arc::clone(resolver) as Arc<dyn rustls::client::ResolvesClientCert>);
    Ok((Arc::new(server), Arc::new(client), verifier))
}

/// A `Net` whose connections, accepted and dialled, are mutual TLS (`tls.cluster`).
struct ClusterTlsNet {
    inner: Arc<dyn Net>,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl Net for ClusterTlsNet {
    async fn bind(&self, addr: std::net::SocketAddr) -> std::io::Result<Box<dyn Listener>> {
        let inner = self.inner.bind(addr).await?;
        let acceptor = self.acceptor.clone();
        let upgrade: Upgrade = Arc::new(move |connection| {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                let stream = acceptor.accept(connection).await.map_err(|e| e.to_string())?;
                Ok((Box::new(stream) as Box<dyn Connection>, None))
            })
        });
        let handshake =
            Handshake { protocol: "rpc", layer: "tls", timeout: self.timeout, timeout_key: "tls.handshake_timeout_ms" };
        Ok(upgrade::listener(inner, handshake, upgrade, Arc::clone(&self.clock)))
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<Box<dyn Connection>> {
        let connection = self.inner.connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(self.timeout, self.connector.connect(name, connection))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake with a peer timed out"))??;
        Ok(Box::new(stream))
    }
}

/// The CAs of `ca_file` (named `key` in errors).
fn roots(ca_file: &Path, key: &'static str) -> Result<rustls::RootCertStore, TlsError> {
    let bad = |reason: String| TlsError { key, reason };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("cannot read {}: {e}", ca_file.display())))?;
    for cert in certs {
        roots.add(cert).map_err(|e| bad(format!("{}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("{} holds no PEM certificate", ca_file.display())));
    }
    Ok(roots)
}

/// Verifies client certificates against the CAs of `ca_file` (named `key` in errors), read again
/// when the file changes (see [`ReloadingVerifier`]).
fn client_verifier(
    ca_file: &Path,
    auth: ClientAuth,
    provider: Arc<CryptoProvider>,
    key: &'static str,
) -> Result<Arc<ReloadingVerifier>, TlsError> {
    let current = ca_verifier(ca_file, auth, Arc::clone(&provider), key)?;
    Ok(Arc::new(ReloadingVerifier {
        current: RwLock::new(current),
        ca_file: ca_file.to_path_buf(),
        stamp: Mutex::new(modified(ca_file)),
        auth,
        provider,
        key,
    }))
}

/// A file's modification time (`None` when it cannot be read).
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Verifies client certificates with the CAs of its file as they are now: the file is read
/// again when its modification time changes, checked with the server certificate's (a CA file
/// that does not parse is logged and leaves the previous CAs in force). It names no CA to
/// clients in the handshake (an empty hint list: clients present their certificate anyway).
#[derive(Debug)]
struct ReloadingVerifier {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    ca_file: PathBuf,
    stamp: Mutex<Option<SystemTime>>,
    auth: ClientAuth,
    provider: Arc<CryptoProvider>,
    key: &'static str,
}

impl ReloadingVerifier {
    /// The verifier in force (not holding the lock while it verifies).
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read())
    }

    fn reload_if_changed(&self) -> bool {
        let stamp = modified(&self.ca_file);
        {
            let mut seen = self.stamp.lock();
            if stamp.is_none() || *seen == stamp {
                return false;
            }
            *seen = stamp;
        }
        match ca_verifier(&self.ca_file, self.auth, Arc::clone(&self.provider), self.key) {
            Ok(verifier) => {
                *self.current.write() = verifier;
                tracing::info!(ca = %self.ca_file.display(), "tls client CA reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "tls client CA changed but cannot be used: the previous CAs still verify");
                false
            }
        }
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current.read().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current.read().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current.read().supported_verify_schemes()
    }
}

/// A verifier of the CAs `ca_file` holds now.
fn ca_verifier(
    ca_file: &Path,
    auth: ClientAuth,
    provider: Arc<CryptoProvider>,
    key: &'static str,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError { key, reason };
    let roots = roots(ca_file, key)?;
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if auth == ClientAuth::Optional { builder.allow_unauthenticated() } else { builder };
    builder.build().map_err(|e| bad(e.to_string()))
}

/// The name a certificate gives as a username.
fn certificate_name(certificate: &CertificateDer<'_>, naming: PeerCertName) -> Option<Arc<str>> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let name = match naming {
        PeerCertName::None => return None,
        PeerCertName::Cn => common_name(parsed.subject())?,
        PeerCertName::San => parsed.valid_dns_names().next()?.to_string(),
    };
    (!name.is_empty()).then(|| Arc::from(name))
}

/// The first common name (OID 2.5.4.3) of a DER `Name`'s contents: RDN sets of
/// (type, value) sequences.
fn common_name(mut name: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (tag, mut set, rest) = der(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, attribute, rest) = der(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der(attribute)?;
            let (value_tag, value, _) = der(value)?;
            if oid_tag == 0x06 && oid == COMMON_NAME {
                // UTF8String, PrintableString, IA5String, T61String
                return match value_tag {
                    0x0C | 0x13 | 0x16 | 0x14 => String::from_utf8(value.to_vec()).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let bytes = (first & 0x7F) as usize;
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let len = rest[..bytes].iter().fold(0usize, |len, byte| (len << 8) | *byte as usize);
        (len, &rest[bytes..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
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

/// The same certificate, presented as a client's to a peer (`tls.cluster`).
impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_found_among_the_subjects_attributes() {
        // C=DE, O=Acme, CN=device-7 (PrintableString, UTF8String, UTF8String)
        let attribute = |oid: &[u8], tag: u8, value: &[u8]| {
            let mut inner = vec![0x06, oid.len() as u8];
            inner.extend_from_slice(oid);
            inner.extend([tag, value.len() as u8]);
            inner.extend_from_slice(value);
            let mut sequence = vec![0x30, inner.len() as u8];
            sequence.extend(inner);
            let mut set = vec![0x31, sequence.len() as u8];
            set.extend(sequence);
            set
        };
        let mut name = attribute(&[0x55, 0x04, 0x06], 0x13, b"DE");
        name.extend(attribute(&[0x55, 0x04, 0x0A], 0x0C, b"Acme"));
        name.extend(attribute(&[0x55, 0x04, 0x03], 0x0C, b"device-7"));
        assert_eq!(common_name(&name).as_deref(), Some("device-7"));
        assert_eq!(common_name(&name[..name.len() - 3]), None, "a truncated name is no name");
        assert_eq!(common_name(&attribute(&[0x55, 0x04, 0x0A], 0x0C, b"Acme")), None);
        assert_eq!(der(&[0x04, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None, "a length past the input");
    }
}
