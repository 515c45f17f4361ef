//! Streams of the cluster: what the Kafka and HTTP handlers need from the node's place in
//! the cluster (brokers, controller, placement), behind one seam so that the actors crate
//! knows nothing of gossip or the controller's log.
//!
//! On a node that runs alone (no `cluster.seeds`, no other voters) every stream is the
//! node's own, as before the cluster existed. On a node of a cluster every stream created
//! by Kafka or HTTP is the cluster's: the controller records it with a replica set per
//! partition, and every node serves it (a raft replica where it holds one).

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::context::NodeContext;
use crate::stream::def::StreamDef;
use crate::stream::registry::{Stream, StreamError};

/// Replica sets an operator assigned, one per partition (CreateTopics) or per new partition
/// (CreatePartitions); the first node of each is the preferred leader.
pub type Assignment = Vec<Vec<u64>>;

/// A broker as Kafka clients are told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// the node id
    pub id: u64,
    /// its advertised Kafka host
    pub host: String,
    /// its advertised Kafka port
    pub port: i32,
}

/// The cluster as the handlers see it (implemented by the node).
pub trait ClusterCatalog: Send + Sync + 'static {
    /// Whether this node is part of a cluster (then streams are the cluster's).
    fn clustered(&self) -> bool;
    /// The nodes of the cluster: those the controller registered, and at least its voters.
    fn registered_nodes(&self) -> usize;
    /// The live brokers with their advertised Kafka addresses, this node included.
    fn brokers(&self) -> Vec<Broker>;
    /// The controller's leader, if known.
    fn controller(&self) -> Option<u64>;
    /// Records a stream in the controller and returns once this node serves it; `assignment`
    /// names each partition's replica set (else placement chooses them).
    fn create(&self, def: StreamDef, assignment: Option<Assignment>) -> BoxFuture<'_, Result<(), StreamError>>;
    /// Changes a stream of the cluster (its retention, or more partitions, whose replica sets
    /// `assignment` names or placement chooses) and returns once this node serves the change.
    fn alter(&self, def: StreamDef, assignment: Option<Assignment>) -> BoxFuture<'_, Result<(), StreamError>>;
    /// Removes a stream of the cluster (this node must lead the controller).
    fn delete(&self, name: String) -> BoxFuture<'_, Result<(), StreamError>>;
    /// Marks a registered node decommissioned (placement then moves its replicas away);
    /// `StreamError::Unknown` names a node that is not registered.
    fn decommission(&self, node: u64) -> BoxFuture<'_, Result<(), StreamError>>;
    /// Adds and removes ACL bindings (each encoded by [`crate::acl::AclBinding::encode`]) in
    /// the controller's metadata and returns once this node applied the change.
    fn change_acls(&self, add: Vec<Vec<u8>>, remove: Vec<Vec<u8>>) -> BoxFuture<'_, Result<(), StreamError>>;
    /// The ACL bindings of the metadata this node applied, encoded.
    fn acls(&self) -> Vec<Vec<u8>>;
    /// Sets and removes users' credentials, keyed by (user, SCRAM mechanism), in the
    /// controller's metadata and returns once this node applied the change.
    fn change_credentials(
        &self,
        upsert: Vec<(String, String, Vec<u8>)>,
        delete: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<(), StreamError>>;
    /// The credentials of the metadata this node applied: (user, mechanism, credential).
    fn credentials(&self) -> Vec<(String, String, Vec<u8>)>;
}

/// Installs the users' credentials of the controller's metadata as the ones in force: each is
/// a [`PasswordHash`](crate::mqtt::auth::PasswordHash) of its mechanism's function; one that
/// does not read so (a newer node's form) is left out, and said.
pub fn install_credentials<'a>(ctx: &NodeContext, credentials: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>) {
    use crate::mqtt::auth::{HashAlgorithm, PasswordHash};
    let mut users: std::collections::BTreeMap<String, Vec<PasswordHash>> = Default::default();
    for (user, mechanism, encoded) in credentials {
        let hash = std::str::from_utf8(encoded).ok().and_then(|text| text.parse::<PasswordHash>().ok());
        match (hash, HashAlgorithm::from_scram_name(mechanism)) {
            (Some(hash), Some(algorithm)) if hash.algorithm() == algorithm => {
                users.entry(user.to_string()).or_default().push(hash)
            }
            _ => tracing::warn!(
                user,
                mechanism,
                "a credential of the cluster's metadata does not read; it is not in force here"
            ),
        }
    }
    ctx.authorizer.cluster_users().replace(users);
}

/// Installs the encoded bindings of the controller's metadata as the ones in force; an
/// undecodable one (a newer node's form) is left out, and said.
pub fn install_acls<'a>(ctx: &NodeContext, encoded: impl IntoIterator<Item = &'a [u8]>) {
    let mut bindings = std::collections::BTreeSet::new();
    for bytes in encoded {
        match crate::acl::AclBinding::decode(bytes) {
            Some(binding) => {
                bindings.insert(binding);
            }
            None => tracing::warn!("an ACL binding of the cluster's metadata does not decode; it is not in force here"),
        }
    }
    ctx.authorizer.bindings().replace(bindings);
}

impl NodeContext {
    /// Adds and removes ACL bindings through the controller (on a node alone too: its
    /// metadata log is durable), in force on this node when it returns, on the others as
    /// they apply the change.
    pub async fn change_acls(
        &self,
        add: Vec<crate::acl::AclBinding>,
        remove: Vec<crate::acl::AclBinding>,
    ) -> Result<(), StreamError> {
        let Some(controller) = self.cluster.get() else {
            return Err(StreamError::Unavailable("this node runs no controller replica yet".into()));
        };
        let encode = |bindings: Vec<crate::acl::AclBinding>| bindings.iter().map(|binding| binding.encode()).collect();
        controller.change_acls(encode(add), encode(remove)).await?;
        let applied = controller.acls();
        install_acls(self, applied.iter().map(Vec::as_slice));
        Ok(())
    }

    /// Sets and removes users' SCRAM credentials through the controller, each keyed by user and
    /// function; in force on this node when it returns, on the others as they apply it.
    pub async fn change_credentials(
        &self,
        upsert: Vec<(String, crate::mqtt::auth::PasswordHash)>,
        delete: Vec<(String, crate::mqtt::auth::HashAlgorithm)>,
    ) -> Result<(), StreamError> {
        let Some(controller) = self.cluster.get() else {
            return Err(StreamError::Unavailable("this node runs no controller replica yet".into()));
        };
        let upsert = upsert
            .into_iter()
            .map(|(user, hash)| (user, hash.algorithm().scram_name().to_string(), hash.to_string().into_bytes()))
            .collect();
        let delete = delete.into_iter().map(|(user, algorithm)| (user, algorithm.scram_name().to_string())).collect();
        controller.change_credentials(upsert, delete).await?;
        let applied = controller.credentials();
        install_credentials(
            self,
            applied
                .iter()
                .map(|(user, mechanism, credential)| (user.as_str(), mechanism.as_str(), credential.as_slice())),
        );
        Ok(())
    }

    /// The cluster, when this node is part of one.
    pub fn catalog(&self) -> Option<&Arc<dyn ClusterCatalog>> {
        self.cluster.get().filter(|catalog| catalog.clustered())
    }

    /// The replication factor for a stream that asked for none: `kafka.default_replication_factor`
    /// (3, Kafka's `default.replication.factor` as most deployments set it) where the cluster has
    /// the nodes, fewer where it has not.
    pub fn default_replication_factor(&self) -> u16 {
        match self.catalog() {
            Some(catalog) => self
                .kafka
                .default_replication_factor
                .min(u16::try_from(catalog.registered_nodes()).unwrap_or(u16::MAX))
                .max(1),
            None => 1,
        }
    }

    /// Creates a stream: the cluster's when this node is in one, else this node's own.
    pub async fn create_stream(&self, def: StreamDef) -> Result<Arc<Stream>, StreamError> {
        self.create_assigned(def, None).await
    }

    /// A node alone holds every replica: an assignment may name only it.
    fn check_alone(&self, assignment: Option<&Assignment>) -> Result<(), StreamError> {
        match assignment {
            Some(sets) if sets.iter().any(|set| set.as_slice() != [self.node_id]) => Err(
                StreamError::InvalidAssignment(format!("a node alone (broker {}) holds every replica", self.node_id)),
            ),
            _ => Ok(()),
        }
    }

    /// Creates a stream with replica sets an operator assigned (`None`: placement's).
    pub async fn create_assigned(
        &self,
        def: StreamDef,
        assignment: Option<Assignment>,
    ) -> Result<Arc<Stream>, StreamError> {
        let Some(catalog) = self.catalog() else {
            self.check_alone(assignment.as_ref())?;
            return self.streams.create(def).await;
        };
        def.validate()?;
        let nodes = catalog.registered_nodes();
        if usize::from(def.replication_factor) > nodes {
            return Err(StreamError::ReplicationFactor { wanted: def.replication_factor, nodes });
        }
        if self.streams.get(&def.name).is_some() {
            return Err(StreamError::Exists(def.name));
        }
        let name = def.name.clone();
        catalog.create(def, assignment).await?;
        self.streams.get(&name).ok_or_else(|| StreamError::Unavailable(format!("stream {name} was not served")))
    }

    /// Changes a stream's definition (retention at run time; more partitions, whose replica
    /// sets `assignment` names or placement chooses), through the controller when it is the
    /// cluster's. What a stream is (its kind, filter, replication factor, strategy) stays.
    pub async fn alter_stream(&self, def: StreamDef, assignment: Option<Assignment>) -> Result<(), StreamError> {
        let current = self.streams.get(&def.name).ok_or_else(|| StreamError::Unknown(def.name.clone()))?;
        current.def.check_change(&def)?;
        if let Some(sets) = &assignment
            && sets.len() != (def.partitions - current.def.partitions) as usize
        {
            return Err(StreamError::InvalidAssignment(format!(
                "{} replica sets for {} new partitions",
                sets.len(),
                def.partitions - current.def.partitions
            )));
        }
        match self.catalog() {
            Some(catalog) if current.replicated() => catalog.alter(def, assignment).await,
            _ => {
                self.check_alone(assignment.as_ref())?;
                self.streams.alter(def).await
            }
        }
    }

    /// Deletes a stream, through the controller when it is the cluster's.
    pub async fn delete_stream(&self, name: &str) -> Result<(), StreamError> {
        match (self.catalog(), self.streams.get(name)) {
            (Some(catalog), Some(stream)) if stream.replicated() => catalog.delete(name.to_string()).await,
            _ => self.streams.delete(name).await,
        }
    }
}
