//! The permission model MQTT and Kafka share: Kafka's ACL bindings, created, listed and deleted
//! with CreateAcls, DescribeAcls and DeleteAcls and kept in the controller's replicated
//! metadata, and how a decision weighs them with the `[[auth.acl]]` rules of the config.
//!
//! Topics and streams are one namespace. A binding on the topic resource `orders` governs the
//! Kafka topic (stream) `orders` and the MQTT topic `orders`; a literal name with MQTT
//! wildcards (`sensors/#`, which no Kafka topic can be named) is an MQTT filter; a prefixed
//! name covers every topic and stream that starts with it. So "user U may read S" means the
//! same on both protocols: READ is Fetch (and OffsetCommit) on Kafka and SUBSCRIBE on MQTT,
//! WRITE is Produce and PUBLISH, and a config rule `action = "subscribe"` on `S` lets U's Kafka
//! consumer read the stream `S` too.
//!
//! A decision ([`crate::mqtt::auth::Authorizer::permits`]) takes, in order:
//! 1. a DENY binding that matches: denied (as in Kafka, a deny wins over any allow);
//! 2. the first `[[auth.acl]]` rule that matches (topics only; publish is WRITE, subscribe READ);
//! 3. an ALLOW binding that matches: allowed;
//! 4. the default: `auth.acl_default` for reading, writing and describing topics; for a consumer
//!    group or transactional id, allowed unless some binding names that resource (Kafka's
//!    `allow.everyone.if.no.acl.found` per resource: groups hold no data, and config rules do
//!    not name them); for administration (CREATE, DELETE, ALTER, ALTER_CONFIGS and the cluster
//!    resource), allowed only while authentication is not configured.
//!
//! Users of `admin = true` are super users (Kafka's `super.users`): every Kafka operation is
//! theirs. Kafka's implications hold: READ, WRITE, DELETE or ALTER allowed imply DESCRIBE, and
//! ALTER_CONFIGS implies DESCRIBE_CONFIGS.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::mqtt::auth::Permission;
use crate::mqtt::topic;

/// The name a cluster resource must have (Kafka's).
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The principal every binding names: `User:` and a username.
const USER_PREFIX: &str = "User:";
/// The principal of a connection that did not authenticate (Kafka's).
pub const ANONYMOUS: &str = "ANONYMOUS";

/// What a binding governs (Kafka's resource types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceType {
    /// a topic or stream, or an MQTT topic filter
    Topic,
    /// a consumer group
    Group,
    /// the cluster (`kafka-cluster`): creating topics, administering ACLs
    Cluster,
    /// a producer's transactional id
    TransactionalId,
}

/// How a binding's name matches a resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PatternType {
    /// the name itself; `*` is every name; a topic name with `+` or `#` is an MQTT filter
    Literal,
    /// every name that starts with it
    Prefixed,
}

/// An operation on a resource (Kafka's).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

/// One Kafka ACL binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    /// the resource type
    pub resource_type: ResourceType,
    /// the resource name (`*`: all)
    pub name: String,
    /// how the name matches
    pub pattern: PatternType,
    /// `User:<name>`, or `User:*` for everyone
    pub principal: String,
    /// a client address, or `*`
    pub host: String,
    /// the operation
    pub operation: Operation,
    /// allow or deny
    pub permission: Permission,
}

/// How a filter selects bindings by pattern (Kafka's ANY, MATCH, LITERAL, PREFIXED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternFilter {
    /// any pattern type, the name compared as it is
    Any,
    /// every binding that would apply to the resource of that name
    Match,
    /// bindings of this pattern type only
    Exactly(PatternType),
}

/// DescribeAcls' and DeleteAcls' selection of bindings: `None` is "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    /// the resource type
    pub resource_type: Option<ResourceType>,
    /// the resource name
    pub name: Option<String>,
    /// the pattern type
    pub pattern: PatternFilter,
    /// the principal
    pub principal: Option<String>,
    /// the host
    pub host: Option<String>,
    /// the operation
    pub operation: Option<Operation>,
    /// the permission
    pub permission: Option<Permission>,
}

/// What a decision is about.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// a topic or stream name (an MQTT PUBLISH's topic, a Kafka topic)
    Topic(&'a str),
    /// an MQTT subscription's filter
    Filter(&'a str),
    /// a consumer group
    Group(&'a str),
    /// the cluster
    Cluster,
    /// a transactional id
    TransactionalId(&'a str),
}

impl Resource<'_> {
    fn resource_type(&self) -> ResourceType {
        match self {
            Resource::Topic(_) | Resource::Filter(_) => ResourceType::Topic,
            Resource::Group(_) => ResourceType::Group,
            Resource::Cluster => ResourceType::Cluster,
            Resource::TransactionalId(_) => ResourceType::TransactionalId,
        }
    }
}

/// Who asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Principal<'a> {
    /// the authenticated user; `None`: anonymous
    pub user: Option<&'a str>,
    /// the client id (MQTT's, or the Kafka request header's)
    pub client_id: Option<&'a str>,
    /// the client's address, where known
    pub host: Option<IpAddr>,
}

/// What the bindings say about one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// a DENY binding matches
    pub denied: bool,
    /// an ALLOW binding matches
    pub allowed: bool,
    /// some binding of any principal and operation names the resource
    pub named: bool,
}

impl Operation {
    /// Whether a binding of this operation and `permission` decides `asked`.
    fn decides(self, permission: Permission, asked: Operation) -> bool {
        if self == asked || self == Operation::All {
            return true;
        }
        // Kafka: an allowed READ, WRITE, DELETE or ALTER implies DESCRIBE; ALTER_CONFIGS
        // implies DESCRIBE_CONFIGS; a deny implies nothing
        permission == Permission::Allow
            && match asked {
                Operation::Describe => {
                    matches!(self, Operation::Read | Operation::Write | Operation::Delete | Operation::Alter)
                }
                Operation::DescribeConfigs => self == Operation::AlterConfigs,
                _ => false,
            }
    }

    /// Kafka's code for the operation.
    pub fn code(self) -> i8 {
        match self {
            Operation::All => 2,
            Operation::Read => 3,
            Operation::Write => 4,
            Operation::Create => 5,
            Operation::Delete => 6,
            Operation::Alter => 7,
            Operation::Describe => 8,
            Operation::ClusterAction => 9,
            Operation::DescribeConfigs => 10,
            Operation::AlterConfigs => 11,
            Operation::IdempotentWrite => 12,
        }
    }

    /// The operation of a Kafka code.
    pub fn from_code(code: i8) -> Option<Self> {
        [
            Operation::All,
            Operation::Read,
            Operation::Write,
            Operation::Create,
            Operation::Delete,
            Operation::Alter,
            Operation::Describe,
            Operation::ClusterAction,
            Operation::DescribeConfigs,
            Operation::AlterConfigs,
            Operation::IdempotentWrite,
        ]
        .into_iter()
        .find(|operation| operation.code() == code)
    }
}

impl ResourceType {
    /// Kafka's code for the resource type.
    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    /// The resource type of a Kafka code.
    pub fn from_code(code: i8) -> Option<Self> {
        [ResourceType::Topic, ResourceType::Group, ResourceType::Cluster, ResourceType::TransactionalId]
            .into_iter()
            .find(|kind| kind.code() == code)
    }
}

impl PatternType {
    /// Kafka's code for the pattern type.
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }
}

impl PatternFilter {
    /// The pattern filter of a Kafka code (ANY 1, MATCH 2, LITERAL 3, PREFIXED 4).
    pub fn from_code(code: i8) -> Option<Self> {
        Some(match code {
            1 => PatternFilter::Any,
            2 => PatternFilter::Match,
            3 => PatternFilter::Exactly(PatternType::Literal),
            4 => PatternFilter::Exactly(PatternType::Prefixed),
            _ => return None,
        })
    }
}

/// Kafka's code for a permission (DENY 2, ALLOW 3).
pub fn permission_code(permission: Permission) -> i8 {
    match permission {
        Permission::Deny => 2,
        Permission::Allow => 3,
    }
}

/// The permission of a Kafka code.
pub fn permission_from_code(code: i8) -> Option<Permission> {
    match code {
        2 => Some(Permission::Deny),
        3 => Some(Permission::Allow),
        _ => None,
    }
}

/// Why a binding cannot be created (Kafka answers `INVALID_REQUEST`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// a code Kafka has but a binding cannot carry (ANY, UNKNOWN, MATCH)
    #[error("{0} must be a concrete value, not ANY, MATCH or UNKNOWN")]
    NotConcrete(&'static str),
    /// the principal is not `User:<name>`
    #[error("principal {0:?} is not User:<name>")]
    Principal(String),
    /// the name is empty, or the cluster's is not `kafka-cluster`
    #[error("resource name {0:?} is not valid for its type")]
    Name(String),
    /// the host is neither `*` nor an address
    #[error("host {0:?} is neither * nor an IP address")]
    Host(String),
}

impl AclBinding {
    /// Checks a binding as CreateAcls received it.
    pub fn check(&self) -> Result<(), BindingError> {
        let user = self.principal.strip_prefix(USER_PREFIX);
        if user.is_none_or(str::is_empty) {
            return Err(BindingError::Principal(self.principal.clone()));
        }
        if self.name.is_empty()
            || (self.resource_type == ResourceType::Cluster
                && (self.name != CLUSTER_NAME || self.pattern != PatternType::Literal))
        {
            return Err(BindingError::Name(self.name.clone()));
        }
        if self.host != "*" && self.host.parse::<IpAddr>().is_err() {
            return Err(BindingError::Host(self.host.clone()));
        }
        Ok(())
    }

    /// The binding as the controller's metadata holds it.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// A binding from the controller's metadata.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<{ 1 << 20 }>())
            .ok()
            .map(|(binding, _)| binding)
    }

    fn applies_to(&self, who: &Principal<'_>) -> bool {
        let principal = self.principal.strip_prefix(USER_PREFIX).unwrap_or_default();
        let user_matches = principal == "*" || principal == who.user.unwrap_or(ANONYMOUS);
        let host_matches = self.host == "*" || who.host.is_some_and(|host| self.host.parse() == Ok(host));
        user_matches && host_matches
    }

    /// Whether the binding names `resource`. A DENY on a topic applies to a subscription that
    /// could receive any of its topics; an ALLOW only to one all of whose topics it covers.
    fn names(&self, resource: &Resource<'_>) -> bool {
        if self.resource_type != resource.resource_type() {
            return false;
        }
        let deny = self.permission == Permission::Deny;
        let name = self.name.as_str();
        match (resource, self.pattern) {
            (Resource::Cluster, _) => true,
            (_, PatternType::Literal) if name == "*" => true,
            (Resource::Topic(topic), PatternType::Literal) => {
                name == *topic || (wildcards(name) && topic::matches(name, topic))
            }
            (Resource::Topic(topic), PatternType::Prefixed) => topic.starts_with(name),
            (Resource::Filter(filter), PatternType::Literal) if deny => {
                name == *filter || filters_overlap(name, filter)
            }
            (Resource::Filter(filter), PatternType::Literal) => {
                name == *filter || (wildcards(name) && topic::filter_covers(name, filter))
            }
            (Resource::Filter(filter), PatternType::Prefixed) if deny => filter_reaches_prefix(filter, name),
            (Resource::Filter(filter), PatternType::Prefixed) => {
                filter.starts_with(name) && !wildcards(&filter[..name.len()])
            }
            (Resource::Group(id) | Resource::TransactionalId(id), PatternType::Literal) => name == *id,
            (Resource::Group(id) | Resource::TransactionalId(id), PatternType::Prefixed) => id.starts_with(name),
        }
    }
}

fn wildcards(name: &str) -> bool {
    name.contains(['+', '#'])
}

/// Whether some topic matches both filters.
fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut left, mut right) = (a.split('/'), b.split('/'));
    loop {
        match (left.next(), right.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(l), Some(r)) if l == "+" || r == "+" || l == r => {}
            _ => return false,
        }
    }
}

/// Whether some topic `filter` matches starts with `prefix`.
fn filter_reaches_prefix(filter: &str, prefix: &str) -> bool {
    let mut rest = prefix;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if rest.is_empty() {
            return true;
        }
        let last = levels.peek().is_none();
        match level {
            "#" => return true,
            "+" => match rest.find('/') {
                // the level can be any text: the rest of the prefix and more
                None => return true,
                Some(slash) => rest = &rest[slash + 1..],
            },
            literal => {
                if rest.len() <= literal.len() {
                    return literal.starts_with(rest);
                }
                match rest.strip_prefix(literal).and_then(|after| after.strip_prefix('/')) {
                    Some(after) if !last => rest = after,
                    _ => return false,
                }
            }
        }
    }
    rest.is_empty()
}

impl AclFilter {
    /// Whether the filter selects `binding`.
    pub fn selects(&self, binding: &AclBinding) -> bool {
        let name_selects = match (&self.name, self.pattern) {
            (None, PatternFilter::Any | PatternFilter::Match) => true,
            (None, PatternFilter::Exactly(pattern)) => binding.pattern == pattern,
            (Some(name), PatternFilter::Any) => binding.name == *name,
            (Some(name), PatternFilter::Exactly(pattern)) => binding.name == *name && binding.pattern == pattern,
            (Some(name), PatternFilter::Match) => match binding.pattern {
                PatternType::Literal => binding.name == *name || binding.name == "*",
                PatternType::Prefixed => name.starts_with(&binding.name),
            },
        };
        name_selects
            && self.resource_type.is_none_or(|kind| kind == binding.resource_type)
            && self.principal.as_ref().is_none_or(|principal| *principal == binding.principal)
            && self.host.as_ref().is_none_or(|host| *host == binding.host)
            && self.operation.is_none_or(|operation| operation == binding.operation)
            && self.permission.is_none_or(|permission| permission == binding.permission)
    }
}

/// The bindings in force on this node: the controller's, installed as its metadata applies.
#[derive(Debug, Default)]
pub struct AclBindings {
    set: RwLock<Arc<BTreeSet<AclBinding>>>,
    /// whether `set` holds any binding: the publish path's check without the lock, where
    /// usually there is none
    any: std::sync::atomic::AtomicBool,
}

impl AclBindings {
    /// Installs the bindings the metadata holds now.
    pub fn replace(&self, bindings: BTreeSet<AclBinding>) {
        let mut set = self.set.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.any.store(!bindings.is_empty(), std::sync::atomic::Ordering::Release);
        *set = Arc::new(bindings);
    }

    /// The bindings in force.
    pub fn snapshot(&self) -> Arc<BTreeSet<AclBinding>> {
        Arc::clone(&self.set.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// What the bindings say about `who` doing `operation` on `resource`.
    pub fn verdict(&self, who: &Principal<'_>, operation: Operation, resource: &Resource<'_>) -> Verdict {
        let mut verdict = Verdict::default();
        if self.is_empty() {
            return verdict;
        }
        let set = self.set.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        for binding in set.iter() {
            if !binding.names(resource) {
                continue;
            }
            verdict.named = true;
            if binding.applies_to(who) && binding.operation.decides(binding.permission, operation) {
                match binding.permission {
                    Permission::Deny => verdict.denied = true,
                    Permission::Allow => verdict.allowed = true,
                }
            }
        }
        verdict
    }

    /// Whether no binding is in force (the common case, checked first on the publish path).
    pub fn is_empty(&self) -> bool {
        !self.any.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        kind: ResourceType,
        name: &str,
        pattern: PatternType,
        user: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: kind,
            name: name.into(),
            pattern,
            principal: format!("User:{user}"),
            host: "*".into(),
            operation,
            permission,
        }
    }

    fn bob() -> Principal<'static> {
        Principal { user: Some("bob"), client_id: Some("c"), host: None }
    }

    #[test]
    fn a_literal_topic_name_is_a_kafka_topic_and_an_mqtt_topic_and_a_wildcard_name_an_mqtt_filter() {
        let bindings = AclBindings::default();
        bindings.replace(BTreeSet::from([
            binding(ResourceType::Topic, "orders", PatternType::Literal, "bob", Operation::Read, Permission::Allow),
            binding(ResourceType::Topic, "sensors/#", PatternType::Literal, "bob", Operation::Read, Permission::Allow),
            binding(ResourceType::Topic, "logs-", PatternType::Prefixed, "*", Operation::Write, Permission::Allow),
        ]));
        let read = |resource| bindings.verdict(&bob(), Operation::Read, &resource).allowed;
        assert!(read(Resource::Topic("orders")));
        assert!(read(Resource::Filter("orders")));
        assert!(!read(Resource::Topic("orders2")));
        assert!(read(Resource::Filter("sensors/+/temp")));
        assert!(read(Resource::Topic("sensors/a")));
        assert!(!read(Resource::Filter("#")), "an allow covers only subscriptions inside it");
        let write = |user, name| {
            bindings.verdict(&Principal { user, ..bob() }, Operation::Write, &Resource::Topic(name)).allowed
        };
        assert!(write(None, "logs-app"), "User:* is everyone, anonymous too");
        assert!(!write(Some("bob"), "log"));
        // READ implies DESCRIBE; WRITE does not imply READ
        assert!(bindings.verdict(&bob(), Operation::Describe, &Resource::Topic("orders")).allowed);
        assert!(!bindings.verdict(&bob(), Operation::Read, &Resource::Topic("logs-app")).allowed);
    }

    #[test]
    fn a_deny_reaches_every_subscription_that_could_receive_what_it_names() {
        let bindings = AclBindings::default();
        bindings.replace(BTreeSet::from([
            binding(ResourceType::Topic, "secret/#", PatternType::Literal, "bob", Operation::Read, Permission::Deny),
            binding(ResourceType::Topic, "vault/", PatternType::Prefixed, "bob", Operation::All, Permission::Deny),
        ]));
        let denied = |filter| bindings.verdict(&bob(), Operation::Read, &Resource::Filter(filter)).denied;
        for filter in ["#", "secret/x", "+/x", "secret", "vault/a", "vault/#", "+/#"] {
            assert!(denied(filter), "{filter} is denied");
        }
        for filter in ["public/#", "secretive/x", "vault", "a/+"] {
            assert!(!denied(filter), "{filter} is not denied");
        }
        // a deny of READ does not deny DESCRIBE
        assert!(!bindings.verdict(&bob(), Operation::Describe, &Resource::Topic("secret/x")).denied);
    }

    #[test]
    fn prefix_reach_walks_levels() {
        assert!(filter_reaches_prefix("a/+/c", "a/bb/c"));
        assert!(filter_reaches_prefix("a/+", "a/b"));
        assert!(filter_reaches_prefix("a/b", "a/"));
        assert!(filter_reaches_prefix("ab", "a"));
        assert!(!filter_reaches_prefix("a/b", "a/bc"));
        assert!(!filter_reaches_prefix("a", "a/"));
        assert!(filter_reaches_prefix("a/#", "a/"));
        assert!(filters_overlap("a/+", "+/b"));
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(filters_overlap("a/#", "a"));
    }

    #[test]
    fn filters_select_as_kafkas_do() {
        let literal =
            binding(ResourceType::Topic, "orders", PatternType::Literal, "bob", Operation::Read, Permission::Allow);
        let prefixed =
            binding(ResourceType::Topic, "ord", PatternType::Prefixed, "bob", Operation::Read, Permission::Allow);
        let any = AclFilter {
            resource_type: None,
            name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        };
        assert!(any.selects(&literal) && any.selects(&prefixed));
        let matching = AclFilter { name: Some("orders".into()), pattern: PatternFilter::Match, ..any.clone() };
        assert!(matching.selects(&literal) && matching.selects(&prefixed));
        let exact = AclFilter { name: Some("orders".into()), ..any.clone() };
        assert!(exact.selects(&literal) && !exact.selects(&prefixed));
        let other_user = AclFilter { principal: Some("User:alice".into()), ..any };
        assert!(!other_user.selects(&literal));
    }

    #[test]
    fn bindings_are_checked_and_round_trip() {
        let good = binding(ResourceType::Group, "g", PatternType::Literal, "bob", Operation::Read, Permission::Allow);
        assert_eq!(good.check(), Ok(()));
        assert_eq!(AclBinding::decode(&good.encode()), Some(good.clone()));
        let bad_principal = AclBinding { principal: "bob".into(), ..good.clone() };
        assert!(matches!(bad_principal.check(), Err(BindingError::Principal(_))));
        let bad_cluster = AclBinding { resource_type: ResourceType::Cluster, ..good.clone() };
        assert!(matches!(bad_cluster.check(), Err(BindingError::Name(_))));
        let bad_host = AclBinding { host: "example.com".into(), ..good };
        assert!(matches!(bad_host.check(), Err(BindingError::Host(_))));
    }
}
