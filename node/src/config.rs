//! The node's configuration: one TOML file, `TIDEWATER_*` environment variables and flags,
//! merged in that order over the defaults, then validated with errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tidewater_actors::mqtt::auth::{AclRule, Authorizer, PasswordHash, Permission};
use tidewater_actors::mqtt::http_auth::HttpAuth;
use tidewater_actors::mqtt::jwt::{JwtAuth, TokenField};
use tidewater_actors::mqtt::topic;
use tidewater_actors::stream::def::StreamDef;
use tidewater_actors::{KafkaSettings, MqttSettings};
use tidewater_storage::{FsyncPolicy, SegmentOptions};

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// the sources could not be read or did not fit the schema
    #[error("{0}")]
    Load(String),
    /// a value is out of range or malformed
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// the dotted key
        key: String,
        /// why
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id, unique in the cluster.
    pub node_id: u64,
    /// Where storage lives.
    pub data_dir: PathBuf,
    /// Log filter (`RUST_LOG` syntax), overridden by `RUST_LOG`.
    pub log_level: String,
    /// Listening addresses.
    pub listeners: Listeners,
    /// Cluster membership.
    pub cluster: ClusterConfig,
    /// Storage durability.
    pub storage: StorageConfig,
    /// The node's memory budget.
    pub memory: MemoryConfig,
    /// TLS certificate for `listeners.mqtts` and (with `kafka = true`) the Kafka listener.
    pub tls: TlsConfig,
    /// MQTT limits.
    pub mqtt: MqttSettings,
    /// Users and ACL.
    pub auth: AuthConfig,
    /// Kafka protocol.
    pub kafka: KafkaConfig,
    /// Streams declared at start (created if absent).
    pub streams: Vec<StreamDef>,
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// host:port clients are told to connect to (default: the kafka listener, with 127.0.0.1 for 0.0.0.0).
    pub advertised_address: Option<String>,
    /// Create a free stream when a client asks for an unknown topic (as Kafka's auto.create.topics.enable).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created stream.
    pub default_partitions: u32,
    /// Replication factor of a stream of the cluster created without one (capped at the
    /// nodes), as Kafka's default.replication.factor.
    pub default_replication_factor: u16,
    /// Largest record batch accepted (bytes), as Kafka's message.max.bytes.
    pub max_message_bytes: usize,
    /// Largest Fetch response (bytes), whatever the client asks, as Kafka's fetch.max.bytes:
    /// what one connection holds for a client that does not read.
    pub fetch_max_bytes: usize,
    /// A follower leaves a partition's in-sync replicas (the ISR Metadata lists) when it has
    /// not kept up for this long (ms), as replica.lag.time.max.ms.
    pub replica_lag_time_max_ms: u64,
    /// A client connection with no request for this long is closed (ms), as
    /// connections.max.idle.ms.
    pub connections_max_idle_ms: u64,
    /// Kafka connections one IP address may hold open (Kafka's `max.connections.per.ip`).
    pub max_connections_per_address: Option<usize>,
    /// A request begun must arrive whole within this many milliseconds.
    pub request_read_timeout_ms: u64,
    /// New Kafka connections a second the node accepts (Kafka's `max.connection.creation.rate`).
    pub max_connect_rate: Option<u32>,
    /// Produce bytes a second one connection may send (Kafka's `producer_byte_rate` quota).
    pub max_produce_bytes_rate: Option<u64>,
    /// Fetched bytes a second one connection may receive (Kafka's `consumer_byte_rate`).
    pub max_fetch_bytes_rate: Option<u64>,
    /// How often retention runs (ms).
    pub retention_check_ms: u64,
    /// Delay before the first rebalance of an empty group (ms), as group.initial.rebalance.delay.ms.
    pub group_initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a consumer may ask for (ms), as group.min.session.timeout.ms.
    pub group_min_session_timeout_ms: u32,
    /// Largest session timeout a consumer may ask for (ms), as group.max.session.timeout.ms.
    pub group_max_session_timeout_ms: u32,
    /// How long a cluster's `__consumer_offsets` keeps what was written (ms), as
    /// offsets.retention.minutes; a group with members rewrites its offsets before that.
    pub offsets_retention_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            advertised_address: None,
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 3,
            max_message_bytes: 1024 * 1024,
            fetch_max_bytes: 55 << 20,
            replica_lag_time_max_ms: 10_000,
            connections_max_idle_ms: 600_000,
            max_connections_per_address: None,
            request_read_timeout_ms: 30_000,
            max_connect_rate: None,
            max_produce_bytes_rate: None,
            max_fetch_bytes_rate: None,
            retention_check_ms: 30_000,
            group_initial_rebalance_delay_ms: 0,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            log_level: "info".to_string(),
            listeners: Listeners::default(),
            cluster: ClusterConfig::default(),
            storage: StorageConfig::default(),
            memory: MemoryConfig::default(),
            tls: TlsConfig::default(),
            mqtt: MqttSettings::default(),
            auth: AuthConfig::default(),
            kafka: KafkaConfig::default(),
            streams: Vec::new(),
        }
    }
}

/// `[listeners]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT over TCP.
    pub mqtt: SocketAddr,
    /// MQTT over TLS (served once `tls.cert_file` and `tls.key_file` are set).
    pub mqtts: SocketAddr,
    /// MQTT over WebSocket (off unless set; EMQX uses 8083).
    pub ws: Option<SocketAddr>,
    /// MQTT over secure WebSocket (off unless set, needs `[tls]`; EMQX uses 8084).
    pub wss: Option<SocketAddr>,
    /// The HTTP path of the WebSocket listeners.
    pub ws_path: String,
    /// Kafka protocol.
    pub kafka: SocketAddr,
    /// HTTP admin API and /metrics.
    pub http: SocketAddr,
    /// Data-plane RPC between nodes.
    pub rpc: SocketAddr,
    /// Gossip (UDP).
    pub gossip: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            mqtt: ([0, 0, 0, 0], 1883).into(),
            mqtts: ([0, 0, 0, 0], 8883).into(),
            ws: None,
            wss: None,
            ws_path: "/mqtt".to_string(),
            kafka: ([0, 0, 0, 0], 9092).into(),
            http: ([0, 0, 0, 0], 8080).into(),
            rpc: ([0, 0, 0, 0], 7947).into(),
            gossip: ([0, 0, 0, 0], 7946).into(),
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster's name: nodes only gossip and replicate with nodes of the same name.
    pub name: String,
    /// Gossip addresses of nodes to join through.
    pub seeds: Vec<String>,
    /// The node ids that vote in the controller group (the same list on every node; empty:
    /// this node alone, a one-node cluster).
    pub voters: Vec<u64>,
    /// The host other nodes (and clients told about this node) reach it on, for listeners
    /// bound to 0.0.0.0 (default 127.0.0.1).
    pub advertise_host: Option<String>,
    /// Time between gossip rounds.
    pub gossip_interval_ms: u64,
    /// Silence after which a node counts as dead.
    pub dead_after_ms: u64,
    /// A node gone this long has its replicas re-created on other nodes (ms).
    pub replace_dead_after_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "tidewater".to_string(),
            seeds: Vec::new(),
            voters: Vec::new(),
            advertise_host: None,
            gossip_interval_ms: 200,
            dead_after_ms: 2_000,
            replace_dead_after_ms: 300_000,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `always` or `interval:<ms>`.
    pub fsync: String,
    /// A partition's segment file is rolled before it grows past this (as Kafka's `segment.bytes`).
    pub segment_bytes: u64,
    /// A segment is rolled when a batch is this much younger than its first (ms of record time,
    /// as Kafka's `segment.ms`).
    pub segment_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let segments = SegmentOptions::default();
        Self {
            fsync: "interval:100".to_string(),
            segment_bytes: segments.segment_bytes,
            segment_ms: segments.segment_ms as u64,
        }
    }
}

/// `[memory]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Bytes of message data the node holds at most: session queues up to half of it with
    /// QoS 0 messages and up to five eighths with QoS 1/2, deliveries between sessions an
    /// eighth (publishers pause past it), the rest headroom (see the README, "Memory").
    pub budget_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { budget_bytes: tidewater_actors::memory::DEFAULT_BUDGET }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, its own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Whether the Kafka listener speaks TLS (clients use `security.protocol=SSL` or
    /// `SASL_SSL`) instead of plain TCP.
    pub kafka: bool,
    /// Whether the HTTP listener (admin API, `/health`, `/metrics`) speaks HTTPS only.
    pub http: bool,
    /// PEM file of the CAs whose client certificates are accepted (mutual TLS); without it
    /// clients present none.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: whether a client must present a certificate (`required`) or
    /// may (`optional`); one it presents is verified either way.
    pub client_auth: ClientAuth,
    /// MQTT over TLS: the username a verified client certificate gives (`cn`: its subject's
    /// common name, `san`: its first DNS subject alternative name); the certificate then
    /// stands for the password, as Mosquitto's `use_identity_as_username`. `none`: the
    /// CONNECT's credentials count, as without a certificate.
    pub peer_cert_as_username: PeerCertName,
    /// Whether the data plane between nodes is mutual TLS, each node presenting this
    /// certificate, and accepting peers whose certificate `cluster_ca_file` signed.
    pub cluster: bool,
    /// PEM file of the CAs that sign the nodes' certificates (`tls.cluster`).
    pub cluster_ca_file: Option<PathBuf>,
    /// How long a client has to finish its TLS handshake.
    pub handshake_timeout_ms: u64,
    /// How often the two files are checked for a change (a renewed certificate is then served
    /// to new connections without a restart).
    pub reload_check_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            kafka: false,
            http: false,
            client_ca_file: None,
            client_auth: ClientAuth::Optional,
            peer_cert_as_username: PeerCertName::None,
            cluster: false,
            cluster_ca_file: None,
            handshake_timeout_ms: 10_000,
            reload_check_ms: 5_000,
        }
    }
}

/// `tls.client_auth`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// a client may present a certificate
    Optional,
    /// a client must present a certificate
    Required,
}

/// `tls.peer_cert_as_username`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerCertName {
    /// the certificate gives no username
    None,
    /// the subject's common name
    Cn,
    /// the first DNS name of the subject alternative names
    San,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// Permission when no ACL rule matches.
    pub acl_default: Permission,
    /// Users and their password hashes.
    pub users: Vec<UserConfig>,
    /// ACL rules, first match wins.
    pub acl: Vec<AclRule>,
    /// The hash (from `tidewater passwd`) of a token that opens the HTTP admin API
    /// (`Authorization: Bearer <token>`).
    pub admin_token_hash: Option<String>,
    /// `[auth.jwt]`: MQTT clients log in with a JSON Web Token.
    pub jwt: Option<JwtConfig>,
    /// `[auth.http]`: an HTTP service decides MQTT logins.
    pub http: Option<HttpAuthConfig>,
}

/// `[auth.http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// Where logins are POSTed (`http://host[:port]/path`).
    pub url: String,
    /// How long the service has to answer before the users of `[auth]` decide.
    #[serde(default = "HttpAuthConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an allow or a deny is remembered (0: not at all).
    #[serde(default = "HttpAuthConfig::default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
}

impl HttpAuthConfig {
    fn default_timeout_ms() -> u64 {
        5_000
    }

    fn default_cache_ttl_ms() -> u64 {
        60_000
    }
}

/// `[auth.jwt]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Where a CONNECT carries the token: `password` (the default) or `username`.
    #[serde(default = "JwtConfig::default_from")]
    pub from: TokenField,
    /// The HS256 secret.
    pub secret: Option<String>,
    /// The RS256 public key (PEM).
    pub public_key_file: Option<std::path::PathBuf>,
    /// Claims a token must carry with these values (`%u` the username, `%c` the client id).
    #[serde(default)]
    pub verify_claims: std::collections::BTreeMap<String, String>,
    /// The claim holding the token's ACL rules.
    #[serde(default = "JwtConfig::default_acl_claim")]
    pub acl_claim: String,
}

impl JwtConfig {
    fn default_from() -> TokenField {
        TokenField::Password
    }

    fn default_acl_claim() -> String {
        "acl".into()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            acl_default: Permission::Allow,
            users: Vec::new(),
            acl: Vec::new(),
            admin_token_hash: None,
            jwt: None,
            http: None,
        }
    }
}

/// `[[auth.users]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The username.
    pub username: String,
    /// From `tidewater passwd`.
    pub password_hash: String,
    /// Whether the user may use the HTTP admin API (Basic authentication).
    #[serde(default)]
    pub admin: bool,
}

/// Values given on the command line; `None` leaves the configured value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--node-id`
    pub node_id: Option<u64>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-level`
    pub log_level: Option<String>,
    /// `--mqtt-listen`
    pub mqtt_listen: Option<SocketAddr>,
    /// `--kafka-listen`
    pub kafka_listen: Option<SocketAddr>,
    /// `--http-listen`
    pub http_listen: Option<SocketAddr>,
    /// `--rpc-listen`
    pub rpc_listen: Option<SocketAddr>,
    /// `--gossip-listen`
    pub gossip_listen: Option<SocketAddr>,
    /// `--seeds`
    pub seeds: Option<Vec<String>>,
    /// `--voters`
    pub voters: Option<Vec<u64>>,
}

/// Names each key as the TOML file spells it (environment keys come upper-cased), with the
/// reason and the source. Unknown fields are already the last element of the path.
fn describe(error: figment::Error) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|error| {
            let path: Vec<String> = error.path.iter().map(|p| p.to_lowercase()).collect();
            let source = error.metadata.as_ref().map(|m| format!(" (in {})", m.name)).unwrap_or_default();
            format!("`{}`: {}{source}", path.join("."), error.kind)
        })
        .collect();
    ConfigError::Load(messages.join("; "))
}

impl Config {
    /// The controller's voters: `cluster.voters`, or this node alone.
    pub fn controller_voters(&self) -> Vec<u64> {
        if self.cluster.voters.is_empty() { vec![self.node_id] } else { self.cluster.voters.clone() }
    }

    /// Whether this node is part of a cluster whose controller has other voters than this
    /// node (`cluster.voters`): then the streams Kafka and HTTP create are the cluster's,
    /// replicated. A node without voters keeps its streams to itself, even when it gossips.
    pub fn clustered(&self) -> bool {
        self.controller_voters() != [self.node_id]
    }

    /// Loads defaults < file < environment < flags, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid("--config", format!("file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("TIDEWATER_").split("__"));
        macro_rules! flag {
            ($field:ident, $key:literal) => {
                if let Some(value) = &overrides.$field {
                    figment = figment.merge(($key, value));
                }
            };
        }
        flag!(node_id, "node_id");
        flag!(data_dir, "data_dir");
        flag!(log_level, "log_level");
        flag!(mqtt_listen, "listeners.mqtt");
        flag!(kafka_listen, "listeners.kafka");
        flag!(http_listen, "listeners.http");
        flag!(rpc_listen, "listeners.rpc");
        flag!(gossip_listen, "listeners.gossip");
        flag!(seeds, "cluster.seeds");
        flag!(voters, "cluster.voters");
        let config: Config = figment.extract().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats that the types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => return Err(invalid("tls.key_file", "must be set with tls.cert_file")),
            (None, Some(_)) => return Err(invalid("tls.cert_file", "must be set with tls.key_file")),
            (None, None) if tls.kafka => {
                return Err(invalid("tls.kafka", "needs tls.cert_file and tls.key_file"));
            }
            (None, None) if tls.http => return Err(invalid("tls.http", "needs tls.cert_file and tls.key_file")),
            (None, None) if tls.cluster => {
                return Err(invalid("tls.cluster", "needs tls.cert_file and tls.key_file"));
            }
            (None, None) if self.listeners.wss.is_some() => {
                return Err(invalid("listeners.wss", "needs tls.cert_file and tls.key_file"));
            }
            _ => {}
        }
        if tls.cluster && tls.cluster_ca_file.is_none() {
            return Err(invalid("tls.cluster", "needs tls.cluster_ca_file (the CA of the nodes' certificates)"));
        }
        if tls.client_ca_file.is_none() {
            if tls.client_auth == ClientAuth::Required {
                return Err(invalid("tls.client_auth", "required needs tls.client_ca_file"));
            }
            if tls.peer_cert_as_username != PeerCertName::None {
                return Err(invalid("tls.peer_cert_as_username", "needs tls.client_ca_file"));
            }
        } else if tls.cert_file.is_none() {
            return Err(invalid("tls.client_ca_file", "needs tls.cert_file and tls.key_file"));
        }
        if !self.listeners.ws_path.starts_with('/') {
            return Err(invalid("listeners.ws_path", "must start with /"));
        }
        if tls.handshake_timeout_ms == 0 || tls.reload_check_ms == 0 {
            let key = if tls.handshake_timeout_ms == 0 { "tls.handshake_timeout_ms" } else { "tls.reload_check_ms" };
            return Err(invalid(key, "must be at least 1"));
        }
        let mqtt = &self.mqtt;
        if !(64..=268_435_455).contains(&mqtt.max_packet_size) {
            return Err(invalid("mqtt.max_packet_size", "must be between 64 and 268435455"));
        }
        if mqtt.max_queued_bytes == 0 {
            return Err(invalid("mqtt.max_queued_bytes", "must be at least 1"));
        }
        if self.memory.budget_bytes < 16 << 20 {
            return Err(invalid("memory.budget_bytes", "must be at least 16777216 (16 MiB)"));
        }
        if !(1..=65_535).contains(&mqtt.max_client_id_len) {
            return Err(invalid("mqtt.max_client_id_len", "must be between 1 and 65535"));
        }
        if mqtt.max_topic_levels == 0 {
            return Err(invalid("mqtt.max_topic_levels", "must be at least 1"));
        }
        if mqtt.max_subscriptions == 0 {
            return Err(invalid("mqtt.max_subscriptions", "must be at least 1"));
        }
        let unset_or_positive = [
            ("mqtt.max_connections_per_address", mqtt.max_connections_per_address.map(|n| n as u64)),
            ("mqtt.max_connect_rate", mqtt.max_connect_rate.map(u64::from)),
            ("mqtt.max_publish_rate", mqtt.max_publish_rate.map(u64::from)),
            ("mqtt.max_publish_bytes_rate", mqtt.max_publish_bytes_rate),
        ];
        if let Some((key, _)) = unset_or_positive.iter().find(|(_, value)| *value == Some(0)) {
            return Err(invalid(*key, "must be at least 1 (leave it out for no limit)"));
        }
        if mqtt.max_inflight == 0 {
            return Err(invalid("mqtt.max_inflight", "must be at least 1"));
        }
        if mqtt.max_connections == 0 {
            return Err(invalid("mqtt.max_connections", "must be at least 1"));
        }
        if mqtt.max_keepalive == 0 {
            return Err(invalid("mqtt.max_keepalive", "must be at least 1"));
        }
        if mqtt.connect_timeout_ms == 0 {
            return Err(invalid("mqtt.connect_timeout_ms", "must be at least 1"));
        }
        self.segment_options()?;
        let cluster = &self.cluster;
        if cluster.name.is_empty() || cluster.name.len() > 64 {
            return Err(invalid("cluster.name", "must be 1 to 64 characters"));
        }
        let mut voters = cluster.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        if voters.len() != cluster.voters.len() || voters.contains(&0) || voters.len() > 7 {
            return Err(invalid("cluster.voters", "must be at most 7 distinct node ids, none of them 0"));
        }
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be at least 1"));
        }
        if cluster.gossip_interval_ms == 0 {
            return Err(invalid("cluster.gossip_interval_ms", "must be at least 1"));
        }
        if cluster.dead_after_ms < 2 * cluster.gossip_interval_ms {
            return Err(invalid("cluster.dead_after_ms", "must be at least twice cluster.gossip_interval_ms"));
        }
        if cluster.replace_dead_after_ms < cluster.dead_after_ms {
            return Err(invalid("cluster.replace_dead_after_ms", "must be at least cluster.dead_after_ms"));
        }
        if cluster.advertise_host.as_ref().is_some_and(|host| host.is_empty() || host.contains(':')) {
            return Err(invalid("cluster.advertise_host", "must be a host name or IPv4 address, without a port"));
        }
        if !(1..=10_000).contains(&self.kafka.default_partitions) {
            return Err(invalid("kafka.default_partitions", "must be between 1 and 10000"));
        }
        if !(1..=7).contains(&self.kafka.default_replication_factor) {
            return Err(invalid("kafka.default_replication_factor", "must be between 1 and 7"));
        }
        if !(100..=3_600_000).contains(&self.kafka.replica_lag_time_max_ms) {
            return Err(invalid("kafka.replica_lag_time_max_ms", "must be between 100 and 3600000"));
        }
        if !(100..=i64::MAX as u64).contains(&self.kafka.request_read_timeout_ms) {
            return Err(invalid("kafka.request_read_timeout_ms", "must be at least 100"));
        }
        for (key, rate) in [
            ("kafka.max_produce_bytes_rate", self.kafka.max_produce_bytes_rate),
            ("kafka.max_fetch_bytes_rate", self.kafka.max_fetch_bytes_rate),
            ("kafka.max_connect_rate", self.kafka.max_connect_rate.map(u64::from)),
        ] {
            if rate == Some(0) {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.kafka.max_connections_per_address == Some(0) {
            return Err(invalid("kafka.max_connections_per_address", "must be at least 1"));
        }
        if !(100..=i64::MAX as u64).contains(&self.kafka.connections_max_idle_ms) {
            return Err(invalid("kafka.connections_max_idle_ms", "must be at least 100"));
        }
        if self.kafka.retention_check_ms == 0 {
            return Err(invalid("kafka.retention_check_ms", "must be at least 1"));
        }
        if self.kafka.group_min_session_timeout_ms == 0 || self.kafka.group_min_session_timeout_ms > i32::MAX as u32 {
            return Err(invalid("kafka.group_min_session_timeout_ms", "must be between 1 and 2147483647"));
        }
        if self.kafka.group_max_session_timeout_ms < self.kafka.group_min_session_timeout_ms
            || self.kafka.group_max_session_timeout_ms > i32::MAX as u32
        {
            return Err(invalid(
                "kafka.group_max_session_timeout_ms",
                "must be at least kafka.group_min_session_timeout_ms and at most 2147483647",
            ));
        }
        if self.kafka.offsets_retention_ms < 1_000 || self.kafka.offsets_retention_ms > i64::MAX as u64 {
            return Err(invalid("kafka.offsets_retention_ms", "must be at least 1000"));
        }
        if let Some(address) = &self.kafka.advertised_address
            && !address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(invalid("kafka.advertised_address", "must be host:port"));
        }
        if self.kafka.fetch_max_bytes < 1024 {
            return Err(invalid("kafka.fetch_max_bytes", "must be at least 1024"));
        }
        if self.kafka.max_message_bytes < 1024 {
            return Err(invalid("kafka.max_message_bytes", "must be at least 1024"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, stream) in self.streams.iter().enumerate() {
            stream.validate().map_err(|e| invalid(format!("streams[{index}]"), e.to_string()))?;
            if !names.insert(&stream.name) {
                return Err(invalid(format!("streams[{index}].name"), format!("{} is declared twice", stream.name)));
            }
        }
        for (index, user) in self.auth.users.iter().enumerate() {
            if user.username.is_empty() {
                return Err(invalid(format!("auth.users[{index}].username"), "must not be empty"));
            }
            PasswordHash::from_str(&user.password_hash)
                .map_err(|e| invalid(format!("auth.users[{index}].password_hash"), e.to_string()))?;
        }
        if let Some(hash) = &self.auth.admin_token_hash {
            PasswordHash::from_str(hash).map_err(|e| invalid("auth.admin_token_hash", e.to_string()))?;
        }
        for (index, rule) in self.auth.acl.iter().enumerate() {
            let probe = rule.topic.replace("%u", "u").replace("%c", "c");
            topic::validate_filter(&probe).map_err(|e| invalid(format!("auth.acl[{index}].topic"), e.to_string()))?;
        }
        self.jwt()?;
        self.http_auth()?;
        Ok(())
    }

    /// The callout of `[auth.http]` (its host resolved now), if one is configured.
    pub fn http_auth(&self) -> Result<Option<HttpAuth>, ConfigError> {
        use std::net::ToSocketAddrs;
        let Some(http) = &self.auth.http else { return Ok(None) };
        let Some((host, port, path)) = HttpAuth::parse_url(&http.url) else {
            return Err(invalid("auth.http.url", "must look like http://host[:port]/path (https is not supported)"));
        };
        let name = host.rsplit_once(':').map_or(host.as_str(), |(name, _)| name).trim_matches(['[', ']']);
        let address = (name, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| invalid("auth.http.url", format!("cannot resolve {name}")))?;
        if !(1..=60_000).contains(&http.timeout_ms) {
            return Err(invalid("auth.http.timeout_ms", "must be between 1 and 60000"));
        }
        let ttl = i64::try_from(http.cache_ttl_ms).map_err(|_| invalid("auth.http.cache_ttl_ms", "too large"))?;
        Ok(Some(HttpAuth::new(address, host, path, std::time::Duration::from_millis(http.timeout_ms), ttl)))
    }

    /// The verifier of `[auth.jwt]` (reading its public key file), if one is configured.
    pub fn jwt(&self) -> Result<Option<JwtAuth>, ConfigError> {
        let Some(jwt) = &self.auth.jwt else { return Ok(None) };
        let (claims, acl_claim) = (jwt.verify_claims.clone(), jwt.acl_claim.clone());
        match (&jwt.secret, &jwt.public_key_file) {
            (Some(secret), None) if secret.is_empty() => Err(invalid("auth.jwt.secret", "must not be empty")),
            (Some(secret), None) => Ok(Some(JwtAuth::hs256(secret.as_bytes(), jwt.from, claims, acl_claim))),
            (None, Some(path)) => {
                // configuration, read once at start like the TLS files
                #[allow(clippy::disallowed_methods)]
                let pem = std::fs::read(path)
                    .map_err(|e| invalid("auth.jwt.public_key_file", format!("cannot read {}: {e}", path.display())))?;
                JwtAuth::rs256(&pem, jwt.from, claims, acl_claim)
                    .map(Some)
                    .map_err(|e| invalid("auth.jwt.public_key_file", e.to_string()))
            }
            _ => Err(invalid("auth.jwt", "needs exactly one of secret (HS256) and public_key_file (RS256)")),
        }
    }

    /// The durability policy of `storage.fsync`.
    pub fn fsync_policy(&self) -> Result<FsyncPolicy, ConfigError> {
        FsyncPolicy::from_str(&self.storage.fsync).map_err(|e| invalid("storage.fsync", e.to_string()))
    }

    /// How partition logs are laid out and synced (`[storage]`).
    pub fn segment_options(&self) -> Result<SegmentOptions, ConfigError> {
        let storage = &self.storage;
        if !(4096..=SegmentOptions::MAX_SEGMENT_BYTES).contains(&storage.segment_bytes) {
            let reason = format!("must be between 4096 and {}", SegmentOptions::MAX_SEGMENT_BYTES);
            return Err(invalid("storage.segment_bytes", reason));
        }
        let segment_ms = i64::try_from(storage.segment_ms).ok().filter(|ms| *ms >= 1);
        let segment_ms = segment_ms.ok_or_else(|| invalid("storage.segment_ms", "must be between 1 and 2^63-1"))?;
        Ok(SegmentOptions {
            fsync: self.fsync_policy()?,
            segment_bytes: storage.segment_bytes,
            segment_ms,
            ..SegmentOptions::default()
        })
    }

    /// The Kafka settings for the actors.
    pub fn kafka_settings(&self) -> KafkaSettings {
        let listen = self.listeners.kafka;
        let (advertised_host, advertised_port) = match &self.kafka.advertised_address {
            Some(address) => match address.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().unwrap_or(i32::from(listen.port()))),
                None => (address.clone(), i32::from(listen.port())),
            },
            None if listen.ip().is_unspecified() => ("127.0.0.1".to_string(), i32::from(listen.port())),
            None => (listen.ip().to_string(), i32::from(listen.port())),
        };
        KafkaSettings {
            advertised_host,
            advertised_port,
            auto_create_topics: self.kafka.auto_create_topics,
            default_partitions: self.kafka.default_partitions,
            default_replication_factor: self.kafka.default_replication_factor,
            max_message_bytes: self.kafka.max_message_bytes,
            fetch_max_bytes: self.kafka.fetch_max_bytes,
            replica_lag_time_max_ms: self.kafka.replica_lag_time_max_ms,
            connections_max_idle_ms: self.kafka.connections_max_idle_ms,
            max_connections_per_address: self.kafka.max_connections_per_address,
            request_read_timeout_ms: self.kafka.request_read_timeout_ms,
            max_connect_rate: self.kafka.max_connect_rate,
            max_produce_bytes_rate: self.kafka.max_produce_bytes_rate,
            max_fetch_bytes_rate: self.kafka.max_fetch_bytes_rate,
            group_initial_rebalance_delay_ms: self.kafka.group_initial_rebalance_delay_ms,
            group_session_timeout_ms: (
                self.kafka.group_min_session_timeout_ms as i32,
                self.kafka.group_max_session_timeout_ms as i32,
            ),
            offsets_retention_ms: self.kafka.offsets_retention_ms as i64,
            // the cluster id Kafka clients check: the same on every node of a cluster
            cluster_name: if self.clustered() { self.cluster.name.clone() } else { format!("node{}", self.node_id) },
        }
    }

    /// The authorizer of `[auth]` (hashes were validated).
    pub fn authorizer(&self) -> Authorizer {
        let users = self
            .auth
            .users
            .iter()
            .filter_map(|user| Some((user.username.clone(), PasswordHash::from_str(&user.password_hash).ok()?)));
        let admins = self.auth.users.iter().filter(|user| user.admin).map(|user| user.username.clone());
        let token = self.auth.admin_token_hash.as_deref().and_then(|hash| PasswordHash::from_str(hash).ok());
        Authorizer::new(self.auth.allow_anonymous, self.auth.acl_default, users, self.auth.acl.clone())
            .with_admins(admins, token)
            .with_jwt(self.jwt().ok().flatten())
            .with_http(self.http_auth().ok().flatten())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write configuration files
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn defaults_are_the_documented_ports() {
        let config = Config::default();
        assert_eq!(config.listeners.mqtt.port(), 1883);
        assert_eq!(config.listeners.kafka.port(), 9092);
        assert_eq!(config.listeners.http.port(), 8080);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn unknown_key_is_named() {
        let error = load_toml("[mqtt]\nmax_pakcet_size = 10\n").unwrap_err().to_string();
        assert!(error.contains("max_pakcet_size"), "{error}");
    }

    #[test]
    fn invalid_value_is_named() {
        let error = load_toml("[mqtt]\nmax_inflight = 0\n").unwrap_err().to_string();
        assert!(error.contains("mqtt.max_inflight"), "{error}");
        let error = load_toml("[mqtt]\nmax_client_id_len = 0\n").unwrap_err().to_string();
        assert!(error.contains("mqtt.max_client_id_len"), "{error}");
        for key in [
            "max_topic_levels",
            "max_subscriptions",
            "max_connections_per_address",
            "max_connect_rate",
            "max_publish_rate",
            "max_publish_bytes_rate",
        ] {
            let error = load_toml(&format!("[mqtt]\n{key} = 0\n")).unwrap_err().to_string();
            assert!(error.contains(&format!("mqtt.{key}")), "{error}");
        }
        let error = load_toml("[storage]\nfsync = \"sometimes\"\n").unwrap_err().to_string();
        assert!(error.contains("storage.fsync"), "{error}");
        let error = load_toml("[tls]\nkafka = true\n").unwrap_err().to_string();
        assert!(error.contains("tls.kafka"), "{error}");
        let error = load_toml("[tls]\ncert_file = \"a.pem\"\n").unwrap_err().to_string();
        assert!(error.contains("tls.key_file"), "{error}");
        let error = load_toml("[tls]\ncert_file = \"a.pem\"\nkey_file = \"a.key\"\nhandshake_timeout_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("tls.handshake_timeout_ms"), "{error}");
        let error = load_toml("[storage]\nsegment_bytes = 100\n").unwrap_err().to_string();
        assert!(error.contains("storage.segment_bytes"), "{error}");
        let error = load_toml("[storage]\nsegment_ms = 0\n").unwrap_err().to_string();
        assert!(error.contains("storage.segment_ms"), "{error}");
        let error = load_toml("[mqtt]\nmax_inflight = \"many\"\n").unwrap_err().to_string();
        assert!(error.contains("max_inflight"), "{error}");
        let error = load_toml("[kafka]\ngroup_min_session_timeout_ms = 9000\ngroup_max_session_timeout_ms = 8000\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("kafka.group_max_session_timeout_ms"), "{error}");
        let error = load_toml("[kafka]\ndefault_replication_factor = 0\n").unwrap_err().to_string();
        assert!(error.contains("kafka.default_replication_factor"), "{error}");
        let error = load_toml("[kafka]\nreplica_lag_time_max_ms = 5\n").unwrap_err().to_string();
        assert!(error.contains("kafka.replica_lag_time_max_ms"), "{error}");
        let error = load_toml("[kafka]\nconnections_max_idle_ms = 0\n").unwrap_err().to_string();
        assert!(error.contains("kafka.connections_max_idle_ms"), "{error}");
        let error = load_toml("[kafka]\noffsets_retention_ms = 10\n").unwrap_err().to_string();
        assert!(error.contains("kafka.offsets_retention_ms"), "{error}");
        let error = load_toml("[memory]\nbudget_bytes = 1000\n").unwrap_err().to_string();
        assert!(error.contains("memory.budget_bytes"), "{error}");
        let error = load_toml("[kafka]\nfetch_max_bytes = 0\n").unwrap_err().to_string();
        assert!(error.contains("kafka.fetch_max_bytes"), "{error}");
    }

    #[test]
    fn streams_are_declared_and_validated() {
        let config =
            load_toml("[[streams]]\nname = \"temps\"\nkind = \"bound\"\nfilter = \"sensors/+/temp\"\npartitions = 3\n")
                .unwrap();
        assert_eq!(config.streams[0].partitions, 3);
        let error = load_toml("[[streams]]\nname = \"t\"\nkind = \"bound\"\n").unwrap_err().to_string();
        assert!(error.contains("streams[0]"), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "node_id = 3\n[listeners]\nmqtt = \"127.0.0.1:1999\"\n").unwrap();
        let overrides = Overrides { mqtt_listen: Some("127.0.0.1:2000".parse().unwrap()), ..Default::default() };
        let config = Config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.node_id, 3);
        assert_eq!(config.listeners.mqtt.port(), 2000);
    }
}
