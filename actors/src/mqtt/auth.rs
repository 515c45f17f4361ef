//! Authentication by username and password hash, and topic ACL rules.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use pbkdf2::pbkdf2_hmac;
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};

use crate::mqtt::topic;

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

impl PasswordHash {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password.
    BadCredentials,
    /// No credentials and anonymous access is off.
    NotAuthorized,
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
        }
    }

    /// The same, with the users who may administer the node over HTTP and the hash of the
    /// admin API's token.
    pub fn with_admins(mut self, admins: impl IntoIterator<Item = String>, token: Option<PasswordHash>) -> Self {
        self.admins = admins.into_iter().collect();
        self.admin_token = token;
        self
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
            AdminCredentials::Basic(user, password) => {
                self.admins.contains(user) && self.users.get(user).is_some_and(|hash| hash.verify(password))
            }
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
            Some(name) => match self.users.get(name) {
                Some(hash) if hash.verify(password.unwrap_or_default()) => Ok(()),
                Some(_) => Err(AuthFailure::BadCredentials),
                // a username unknown to us: accepted as anonymous when anonymous access is on
                None if self.allow_anonymous && self.users.is_empty() => Ok(()),
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
        self.users.get(user).is_some_and(|hash| hash.verify(password))
    }

    /// The stored hash of a known user (Kafka SCRAM: its credentials).
    pub fn user_hash(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// Whether `user` (authenticated already) may administer streams: anyone while
    /// authentication is not configured, else a user of `admin = true`.
    pub fn may_administer(&self, user: Option<&str>) -> bool {
        !self.admin_api_protected() || user.is_some_and(|user| self.admins.contains(user))
    }

    /// Whether `identity` may publish to `topic`.
    pub fn may_publish(&self, identity: &Identity, topic_name: &str) -> bool {
        self.decide(identity, AclAction::Publish, |rule_filter| topic::matches(rule_filter, topic_name))
    }

    /// Whether `identity` may subscribe to `filter` (without any `$share/group/` prefix).
    pub fn may_subscribe(&self, identity: &Identity, filter: &str) -> bool {
        self.decide(identity, AclAction::Subscribe, |rule_filter| topic::filter_covers(rule_filter, filter))
    }

    fn decide(&self, identity: &Identity, action: AclAction, covers: impl Fn(&str) -> bool) -> bool {
        for rule in &self.rules {
            if rule.action != action && rule.action != AclAction::All {
                continue;
            }
            if rule.username.as_ref().is_some_and(|u| Some(u) != identity.username.as_ref()) {
                continue;
            }
            if rule.client_id.as_ref().is_some_and(|c| *c != identity.client_id) {
                continue;
            }
            let rule_filter = substitute(&rule.topic, identity);
            if covers(&rule_filter) {
                return rule.permission == Permission::Allow;
            }
        }
        self.default_permission == Permission::Allow
    }
}

fn substitute(rule_topic: &str, identity: &Identity) -> String {
    rule_topic.replace("%c", &identity.client_id).replace("%u", identity.username.as_deref().unwrap_or("%u"))
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
        let bob = Identity { client_id: "c1".into(), username: Some("bob".into()) };
        let alice = Identity { client_id: "c2".into(), username: Some("alice".into()) };
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
}
