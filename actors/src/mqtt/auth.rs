//! Authentication by username and password hash, and topic ACL rules.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use pbkdf2::pbkdf2_hmac;
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};

use crate::acl::{AclBindings, Operation, Principal, Resource};
use crate::mqtt::topic;
use std::sync::Arc;

const DEFAULT_ITERATIONS: u32 = 10_000;

/// The hash function of a stored password hash: PBKDF2-HMAC with it is also the
/// `SaltedPassword` of SCRAM with it (RFC 5802), so a user's hash serves PLAIN and the SCRAM
/// mechanism of the same function without storing anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlgorithm {
    /// `pbkdf2-sha256` (what `tidewater passwd` prints): SCRAM-SHA-256
    #[default]
    Sha256,
    /// `pbkdf2-sha512` (`tidewater passwd --sha512`): SCRAM-SHA-512
    Sha512,
}

impl HashAlgorithm {
    fn prefix(self) -> &'static str {
        match self {
            Self::Sha256 => "pbkdf2-sha256",
            Self::Sha512 => "pbkdf2-sha512",
        }
    }

    /// The SASL mechanism of SCRAM with this function.
    pub fn scram_name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The function of a SCRAM mechanism's name.
    pub fn from_scram_name(name: &str) -> Option<Self> {
        [Self::Sha256, Self::Sha512].into_iter().find(|algorithm| algorithm.scram_name() == name)
    }

    /// Kafka's code for the SCRAM mechanism (`ScramMechanism`: 1 is SHA-256, 2 SHA-512).
    pub fn kafka_code(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    /// The function of Kafka's SCRAM mechanism code.
    pub fn from_kafka_code(code: i8) -> Option<Self> {
        [Self::Sha256, Self::Sha512].into_iter().find(|algorithm| algorithm.kafka_code() == code)
    }

    /// The digest's length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// PBKDF2-HMAC of `password` (SCRAM's `Hi`), `output_len` bytes.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            Self::Sha256 => pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Self::Sha512 => pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }

    /// HMAC of `message` under `key`.
    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // HMAC takes a key of any length (longer ones are hashed first): this never fails,
            // and an empty answer would only fail the authentication
            let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else { return Vec::new() };
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Hmac<Sha256>>(key, message),
            Self::Sha512 => run::<Hmac<Sha512>>(key, message),
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// Hashes a password for `[[auth.users]] password_hash`
/// (`pbkdf2-sha256$<iter>$<salt>$<hash>`, or `pbkdf2-sha512$…`).
pub fn hash_password_with(algorithm: HashAlgorithm, password: &str, salt: &[u8]) -> String {
    let hash = algorithm.pbkdf2(password.as_bytes(), salt, DEFAULT_ITERATIONS);
    format!(
        "{}${DEFAULT_ITERATIONS}${}${}",
        algorithm.prefix(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    )
}

/// Hashes a password with PBKDF2-HMAC-SHA256 (`pbkdf2-sha256$<iter>$<salt>$<hash>`).
pub fn hash_password(password: &str, salt: &[u8]) -> String {
    hash_password_with(HashAlgorithm::Sha256, password, salt)
}

/// Why a stored password hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "password_hash must look like pbkdf2-sha256$<iterations>$<salt base64>$<hash base64> or pbkdf2-sha512$… \
     (from `tidewater passwd`)"
)]
pub struct BadHash;

/// A parsed password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: HashAlgorithm,
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::str::FromStr for PasswordHash {
    type Err = BadHash;

    fn from_str(encoded: &str) -> Result<Self, BadHash> {
        let mut parts = encoded.split('$');
        let algorithm = match parts.next() {
            Some(prefix) if prefix == HashAlgorithm::Sha256.prefix() => HashAlgorithm::Sha256,
            Some(prefix) if prefix == HashAlgorithm::Sha512.prefix() => HashAlgorithm::Sha512,
            _ => return Err(BadHash),
        };
        let iterations = parts.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).ok_or(BadHash)?;
        let salt = parts.next().and_then(|s| STANDARD_NO_PAD.decode(s).ok()).ok_or(BadHash)?;
        let hash = parts.next().and_then(|h| STANDARD_NO_PAD.decode(h).ok()).ok_or(BadHash)?;
        // a hash of another length could not serve as SCRAM's SaltedPassword
        if parts.next().is_some() || hash.len() != algorithm.output_len() {
            return Err(BadHash);
        }
        Ok(Self { algorithm, iterations, salt, hash })
    }
}

impl std::fmt::Display for PasswordHash {
    /// The form [`FromStr`](std::str::FromStr) reads, and `[[auth.users]] password_hash` holds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}${}${}${}",
            self.algorithm.prefix(),
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(&self.hash)
        )
    }
}

impl PasswordHash {
    /// A hash from SCRAM credentials a client computed (Kafka's AlterUserScramCredentials):
    /// `salted` is `Hi(password, salt, iterations)`, which is what a hash of ours stores; `None`
    /// when it is not of the function's length, there is no salt, or no iteration.
    pub fn from_scram(algorithm: HashAlgorithm, iterations: u32, salt: &[u8], salted: &[u8]) -> Option<Self> {
        (iterations > 0 && !salt.is_empty() && salted.len() == algorithm.output_len()).then(|| Self {
            algorithm,
            iterations,
            salt: salt.to_vec(),
            hash: salted.to_vec(),
        })
    }

    /// The function of this hash.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// Its iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        constant_time_eq(&self.algorithm.pbkdf2(password, &self.salt, self.iterations), &self.hash)
    }

    /// The SCRAM credentials this hash gives: its function, salt, iteration count and
    /// `SaltedPassword`.
    pub fn scram(&self) -> (HashAlgorithm, &[u8], u32, &[u8]) {
        (self.algorithm, &self.salt, self.iterations, &self.hash)
    }
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// The action is allowed.
    Allow,
    /// The action is refused.
    Deny,
}

/// What an ACL rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

/// One ACL rule from `[[auth.acl]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    pub action: AclAction,
    /// A topic filter; `%u` is the username and `%c` the client id.
    pub topic: String,
    /// The rule applies only to this username.
    #[serde(default)]
    pub username: Option<String>,
    /// The rule applies only to this client id.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The client id.
    pub client_id: String,
    /// The username, if one was given.
    pub username: Option<String>,
    /// The client's address (none for a will published after a restart): a binding naming a
    /// host applies to MQTT clients from it too.
    pub host: Option<std::net::IpAddr>,
    /// The rules its JWT granted (`[auth.jwt]`), checked before the config's.
    pub rules: Option<Arc<[AclRule]>>,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password.
    BadCredentials,
    /// No credentials and anonymous access is off.
    NotAuthorized,
    /// A JWT that does not verify, and why.
    BadToken(&'static str),
}

/// The users whose credentials the cluster's metadata keeps (Kafka's
/// AlterUserScramCredentials), shared by every clone of an [`Authorizer`]: at most one
/// credential per user and SCRAM function, each of which also verifies a plain password.
#[derive(Debug, Default)]
pub struct ClusterUsers {
    users: std::sync::RwLock<Arc<std::collections::BTreeMap<String, Vec<PasswordHash>>>>,
}

impl ClusterUsers {
    /// Installs the users the metadata holds now.
    pub fn replace(&self, users: std::collections::BTreeMap<String, Vec<PasswordHash>>) {
        *self.users.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(users);
    }

    /// The users in force, each with its credentials.
    pub fn snapshot(&self) -> Arc<std::collections::BTreeMap<String, Vec<PasswordHash>>> {
        Arc::clone(&self.users.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// The users and rules of `[auth]`, ready to check.
#[derive(Debug, Clone)]
pub struct Authorizer {
    allow_anonymous: bool,
    default_permission: Permission,
    users: std::collections::BTreeMap<String, PasswordHash>,
    rules: Vec<AclRule>,
    /// users who may use the HTTP admin API
    admins: std::collections::BTreeSet<String>,
    /// the hash of the admin API's bearer token
    admin_token: Option<PasswordHash>,
    /// the Kafka ACL bindings in force (the controller's metadata), shared by every clone
    bindings: Arc<AclBindings>,
    /// the users of the controller's metadata, shared by every clone
    cluster_users: Arc<ClusterUsers>,
    /// `[auth.jwt]`: tokens an issuer signed
    jwt: Option<Arc<crate::mqtt::jwt::JwtAuth>>,
    /// `[auth.http]`: a service that decides logins
    http: Option<Arc<crate::mqtt::http_auth::HttpAuth>>,
}

/// What a request to the HTTP admin API presented.
#[derive(Debug, Clone, Copy)]
pub enum AdminCredentials<'a> {
    /// nothing
    None,
    /// `Authorization: Basic`: a user and password
    Basic(&'a str, &'a [u8]),
    /// `Authorization: Bearer`: a token
    Bearer(&'a [u8]),
}

impl Authorizer {
    /// Builds an authorizer; hashes must already be validated.
    pub fn new(
        allow_anonymous: bool,
        default_permission: Permission,
        users: impl IntoIterator<Item = (String, PasswordHash)>,
        rules: Vec<AclRule>,
    ) -> Self {
        Self {
            allow_anonymous,
            default_permission,
            users: users.into_iter().collect(),
            rules,
            admins: Default::default(),
            admin_token: None,
            bindings: Arc::default(),
            cluster_users: Arc::default(),
            jwt: None,
            http: None,
        }
    }

    /// The same, with the users who may administer the node over HTTP and the hash of the
    /// admin API's token.
    pub fn with_admins(mut self, admins: impl IntoIterator<Item = String>, token: Option<PasswordHash>) -> Self {
        self.admins = admins.into_iter().collect();
        self.admin_token = token;
        self
    }

    /// The same, verifying JWTs too (`[auth.jwt]`).
    pub fn with_jwt(mut self, jwt: Option<crate::mqtt::jwt::JwtAuth>) -> Self {
        self.jwt = jwt.map(Arc::new);
        self
    }

    /// The same, asking an HTTP service about MQTT logins (`[auth.http]`).
    pub fn with_http(mut self, http: Option<crate::mqtt::http_auth::HttpAuth>) -> Self {
        self.http = http.map(Arc::new);
        self
    }

    /// The HTTP callout of `[auth.http]`, if configured.
    pub fn http(&self) -> Option<&Arc<crate::mqtt::http_auth::HttpAuth>> {
        self.http.as_ref()
    }

    /// Checks an MQTT CONNECT's credentials at `now_ms`: with `[auth.jwt]`, a token where it
    /// is expected decides alone (anything that does not look like one goes to the users);
    /// what the login grants the connection.
    pub fn authenticate_connect(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        client_id: &str,
        now_ms: i64,
    ) -> Result<crate::mqtt::jwt::Grant, AuthFailure> {
        use crate::mqtt::jwt::{JwtAuth, TokenField};
        if let Some(jwt) = &self.jwt {
            let field = match jwt.from {
                TokenField::Password => password,
                TokenField::Username => username.map(str::as_bytes),
            };
            if let Some(token) = field.filter(|value| JwtAuth::looks_like_token(value)) {
                let token = std::str::from_utf8(token).map_err(|_| AuthFailure::BadToken("not UTF-8"))?;
                return jwt.verify(token, username, client_id, now_ms).map_err(AuthFailure::BadToken);
            }
        }
        self.authenticate(username, password).map(|()| crate::mqtt::jwt::Grant::default())
    }

    /// Whether authentication is configured, so that the HTTP admin API asks for an admin's
    /// credentials: anonymous clients refused, an admin user, or an admin token. A node
    /// without any of these (a bare `start`) leaves the API open and says so at start.
    pub fn admin_api_protected(&self) -> bool {
        !self.allow_anonymous || !self.admins.is_empty() || self.admin_token.is_some()
    }

    /// Whether `credentials` are an admin's: a user with `admin = true` and their password,
    /// or the admin token.
    pub fn is_admin(&self, credentials: AdminCredentials<'_>) -> bool {
        match credentials {
            AdminCredentials::None => false,
            AdminCredentials::Basic(user, password) => self.admins.contains(user) && self.verify_user(user, password),
            AdminCredentials::Bearer(token) => self.admin_token.as_ref().is_some_and(|hash| hash.verify(token)),
        }
    }

    /// Allows everything (tests).
    pub fn allow_all() -> Self {
        Self::new(true, Permission::Allow, [], Vec::new())
    }

    /// Checks a CONNECT's credentials.
    pub fn authenticate(&self, username: Option<&str>, password: Option<&[u8]>) -> Result<(), AuthFailure> {
        match username {
            None if self.allow_anonymous => Ok(()),
            None => Err(AuthFailure::NotAuthorized),
            Some(name) => match self.password_matches(name, password.unwrap_or_default()) {
                Some(true) => Ok(()),
                Some(false) => Err(AuthFailure::BadCredentials),
                // a username unknown to us: accepted as anonymous when anonymous access is on
                // and no user is defined anywhere
                None if self.allow_anonymous && self.users.is_empty() && self.cluster_users.snapshot().is_empty() => {
                    Ok(())
                }
                None => Err(AuthFailure::BadCredentials),
            },
        }
    }

    /// Whether clients must present credentials (`auth.allow_anonymous = false`).
    pub fn requires_credentials(&self) -> bool {
        !self.allow_anonymous
    }

    /// Whether `user` is a known user and `password` theirs (Kafka SASL: no anonymous
    /// fallback for unknown users).
    pub fn verify_user(&self, user: &str, password: &[u8]) -> bool {
        self.password_matches(user, password) == Some(true)
    }

    /// Whether `password` is `user`'s: `None` for a user neither `[[auth.users]]` nor the
    /// cluster's metadata knows. A user of the config is checked against its hash only.
    fn password_matches(&self, user: &str, password: &[u8]) -> Option<bool> {
        if let Some(hash) = self.users.get(user) {
            return Some(hash.verify(password));
        }
        let cluster = self.cluster_users.snapshot();
        let credentials = cluster.get(user)?;
        Some(credentials.iter().any(|hash| hash.verify(password)))
    }

    /// The credential of a known user for SCRAM with `algorithm`: its `[[auth.users]]` hash when
    /// it is of that function, else the one the cluster's metadata keeps.
    pub fn user_credential(&self, user: &str, algorithm: HashAlgorithm) -> Option<PasswordHash> {
        if let Some(hash) = self.users.get(user) {
            return (hash.algorithm == algorithm).then(|| hash.clone());
        }
        self.cluster_users.snapshot().get(user)?.iter().find(|hash| hash.algorithm == algorithm).cloned()
    }

    /// Whether `user` is a user of `[[auth.users]]` or of the cluster's metadata.
    pub fn knows_user(&self, user: &str) -> bool {
        self.users.contains_key(user) || self.cluster_users.snapshot().contains_key(user)
    }

    /// Whether `user` is a user of this node's `[[auth.users]]` (which Kafka's
    /// AlterUserScramCredentials does not change).
    pub fn is_config_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The users of `[[auth.users]]`, each with its hash.
    pub fn config_users(&self) -> impl Iterator<Item = (&str, &PasswordHash)> {
        self.users.iter().map(|(name, hash)| (name.as_str(), hash))
    }

    /// The users of the cluster's metadata, which the node installs from the controller.
    pub fn cluster_users(&self) -> &Arc<ClusterUsers> {
        &self.cluster_users
    }

    /// Whether `user` is a super user (`admin = true`; Kafka's `super.users`): every Kafka
    /// operation is theirs.
    pub fn is_super_user(&self, user: Option<&str>) -> bool {
        user.is_some_and(|user| self.admins.contains(user))
    }

    /// The Kafka ACL bindings in force, which the node installs from the controller.
    pub fn bindings(&self) -> &Arc<AclBindings> {
        &self.bindings
    }

    /// Whether `identity` may publish to `topic`.
    pub fn may_publish(&self, identity: &Identity, topic_name: &str) -> bool {
        let granted = identity.rules.as_deref().unwrap_or_default();
        self.permits_with(&identity.principal(), granted, Operation::Write, Resource::Topic(topic_name))
    }

    /// Whether `identity` may subscribe to `filter` (without any `$share/group/` prefix).
    pub fn may_subscribe(&self, identity: &Identity, filter: &str) -> bool {
        let granted = identity.rules.as_deref().unwrap_or_default();
        self.permits_with(&identity.principal(), granted, Operation::Read, Resource::Filter(filter))
    }

    /// Whether `who` may do `operation` on `resource`: a matching DENY binding, then the first
    /// matching `[[auth.acl]]` rule, then a matching ALLOW binding, then the default (the
    /// order and the defaults are explained in [`crate::acl`]).
    pub fn permits(&self, who: &Principal<'_>, operation: Operation, resource: Resource<'_>) -> bool {
        self.permits_with(who, &[], operation, resource)
    }

    /// [`Self::permits`], with the rules a login granted (a JWT's) checked before the config's.
    pub fn permits_with(
        &self,
        who: &Principal<'_>,
        granted: &[AclRule],
        operation: Operation,
        resource: Resource<'_>,
    ) -> bool {
        let verdict = self.bindings.verdict(who, operation, &resource);
        if verdict.denied {
            return false;
        }
        if let Some(permission) = self.rule_decision(who, granted, operation, &resource) {
            return permission == Permission::Allow;
        }
        if verdict.allowed {
            return true;
        }
        match (resource, operation) {
            (Resource::Topic(_) | Resource::Filter(_), Operation::Read | Operation::Write | Operation::Describe) => {
                self.default_permission == Permission::Allow
            }
            (
                Resource::Group(_) | Resource::TransactionalId(_),
                Operation::Read | Operation::Write | Operation::Describe,
            ) => !verdict.named,
            _ => !self.admin_api_protected(),
        }
    }

    /// What the config's rules say, first match: they govern reading (subscribe) and writing
    /// (publish) topics, and an allow of either lets the topic be described.
    fn rule_decision(
        &self,
        who: &Principal<'_>,
        granted: &[AclRule],
        operation: Operation,
        resource: &Resource<'_>,
    ) -> Option<Permission> {
        let (name, is_filter) = match *resource {
            Resource::Topic(name) => (name, false),
            Resource::Filter(filter) => (filter, true),
            _ => return None,
        };
        let wanted = match operation {
            Operation::Read => Some(AclAction::Subscribe),
            Operation::Write => Some(AclAction::Publish),
            Operation::Describe => None,
            _ => return None,
        };
        for rule in granted.iter().chain(&self.rules) {
            match wanted {
                Some(action) if rule.action != action && rule.action != AclAction::All => continue,
                None if rule.permission == Permission::Deny => continue,
                _ => {}
            }
            if rule.username.as_deref().is_some_and(|u| Some(u) != who.user) {
                continue;
            }
            if rule.client_id.as_deref().is_some_and(|c| Some(c) != who.client_id) {
                continue;
            }
            let rule_filter = substitute(&rule.topic, who);
            let covers =
                if is_filter { topic::filter_covers(&rule_filter, name) } else { topic::matches(&rule_filter, name) };
            if covers {
                return Some(rule.permission);
            }
        }
        None
    }
}

impl Identity {
    /// The identity as the permission model's principal.
    pub fn principal(&self) -> Principal<'_> {
        Principal { user: self.username.as_deref(), client_id: Some(&self.client_id), host: self.host }
    }
}

fn substitute(rule_topic: &str, who: &Principal<'_>) -> String {
    rule_topic.replace("%c", who.client_id.unwrap_or("%c")).replace("%u", who.user.unwrap_or("%u"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trips() {
        let encoded = hash_password("s3cret", b"0123456789abcdef");
        let hash: PasswordHash = encoded.parse().unwrap();
        assert!(hash.verify(b"s3cret"));
        assert!(!hash.verify(b"s3cret!"));
        assert_eq!("md5$x".parse::<PasswordHash>(), Err(BadHash));
    }

    #[test]
    fn acl_first_match_wins_with_substitution() {
        let rules = vec![
            AclRule {
                permission: Permission::Allow,
                action: AclAction::All,
                topic: "users/%u/#".into(),
                username: None,
                client_id: None,
            },
            AclRule {
                permission: Permission::Deny,
                action: AclAction::Subscribe,
                topic: "users/#".into(),
                username: None,
                client_id: None,
            },
            AclRule {
                permission: Permission::Deny,
                action: AclAction::Publish,
                topic: "secret/#".into(),
                username: Some("bob".into()),
                client_id: None,
            },
        ];
        let authorizer = Authorizer::new(true, Permission::Allow, [], rules);
        let bob = Identity { client_id: "c1".into(), username: Some("bob".into()), ..Default::default() };
        let alice = Identity { client_id: "c2".into(), username: Some("alice".into()), ..Default::default() };
        assert!(authorizer.may_subscribe(&bob, "users/bob/inbox"));
        assert!(!authorizer.may_subscribe(&bob, "users/alice/inbox"));
        assert!(!authorizer.may_subscribe(&bob, "users/#"));
        assert!(!authorizer.may_publish(&bob, "secret/x"));
        assert!(authorizer.may_publish(&alice, "secret/x"));
    }

    #[test]
    fn anonymous_and_credentials() {
        let hash: PasswordHash = hash_password("pw", b"salt").parse().unwrap();
        let open = Authorizer::new(true, Permission::Allow, [("u".to_string(), hash.clone())], vec![]);
        assert_eq!(open.authenticate(None, None), Ok(()));
        assert_eq!(open.authenticate(Some("u"), Some(b"pw")), Ok(()));
        assert_eq!(open.authenticate(Some("u"), Some(b"no")), Err(AuthFailure::BadCredentials));
        let closed = Authorizer::new(false, Permission::Allow, [("u".to_string(), hash)], vec![]);
        assert_eq!(closed.authenticate(None, None), Err(AuthFailure::NotAuthorized));
        assert_eq!(closed.authenticate(Some("x"), Some(b"pw")), Err(AuthFailure::BadCredentials));
    }

    #[test]
    fn a_decision_takes_a_deny_binding_then_the_config_rules_then_an_allow_binding_then_the_default() {
        use crate::acl::{AclBinding, Operation, PatternType, Principal, Resource, ResourceType};
        let rule = AclRule {
            permission: Permission::Allow,
            action: AclAction::Subscribe,
            topic: "orders".into(),
            username: None,
            client_id: None,
        };
        let hash: PasswordHash = hash_password("pw", b"salt").parse().unwrap();
        let authorizer = Authorizer::new(false, Permission::Deny, [("root".to_string(), hash)], vec![rule])
            .with_admins(["root".to_string()], None);
        let bind = |kind, name: &str, user: &str, operation, permission| AclBinding {
            resource_type: kind,
            name: name.into(),
            pattern: PatternType::Literal,
            principal: format!("User:{user}"),
            host: "*".into(),
            operation,
            permission,
        };
        let bob = Principal { user: Some("bob"), client_id: Some("c"), host: None };
        let ann = Principal { user: Some("ann"), ..bob };
        let may = |who: &Principal<'_>, operation, resource| authorizer.permits(who, operation, resource);
        // the config rule: reading orders on both protocols, and describing it; nothing else
        assert!(may(&bob, Operation::Read, Resource::Topic("orders")));
        assert!(may(&bob, Operation::Read, Resource::Filter("orders")));
        assert!(may(&bob, Operation::Describe, Resource::Topic("orders")));
        assert!(!may(&bob, Operation::Write, Resource::Topic("orders")));
        assert!(!may(&bob, Operation::Read, Resource::Topic("payments")));
        // administration is closed once authentication is configured; groups are open until named
        assert!(!may(&bob, Operation::Create, Resource::Cluster));
        assert!(may(&bob, Operation::Read, Resource::Group("g")));
        authorizer.bindings().replace(
            [
                bind(ResourceType::Topic, "orders", "bob", Operation::Read, Permission::Deny),
                bind(ResourceType::Topic, "payments", "ann", Operation::Write, Permission::Allow),
                bind(ResourceType::Group, "g", "ann", Operation::Read, Permission::Allow),
                bind(ResourceType::Cluster, crate::acl::CLUSTER_NAME, "ann", Operation::Create, Permission::Allow),
            ]
            .into(),
        );
        assert!(!may(&bob, Operation::Read, Resource::Filter("orders")), "a deny binding beats the config's allow");
        assert!(may(&ann, Operation::Read, Resource::Topic("orders")));
        assert!(may(&ann, Operation::Write, Resource::Topic("payments")), "an allow binding beats the default");
        assert!(may(&ann, Operation::Describe, Resource::Topic("payments")), "WRITE implies DESCRIBE");
        assert!(!may(&bob, Operation::Read, Resource::Group("g")), "a group named by a binding is closed to others");
        assert!(may(&ann, Operation::Create, Resource::Cluster));
        assert!(authorizer.is_super_user(Some("root")) && !authorizer.is_super_user(Some("ann")));
    }
}
