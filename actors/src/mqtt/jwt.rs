//! JWT authentication for MQTT (`[auth.jwt]`), as EMQX's: a client sends a JSON Web Token
//! signed with HS256 (a shared secret) or RS256 (the issuer's private key; the node holds the
//! public key) in its CONNECT's password (or username). The token is checked at CONNECT: the
//! signature, `exp` and `nbf` when present (against the node's clock, with a leeway), and the
//! claims `verify_claims` names (`%u` the username, `%c` the client id). Its ACL claim holds
//! rules for this connection, checked before the config's; a connection whose token expires is
//! closed then (v5: DISCONNECT 0xA0, maximum connect time).
//!
//! The ACL claim takes either form EMQX issues:
//! - a list of rules, `[{"permission": "allow", "action": "publish", "topic": "t/#"}, ...]`
//!   (`action` is `publish`, `subscribe` or `all`);
//! - `{"pub": [...], "sub": [...], "all": [...]}`: topics allowed for each action.

use std::collections::BTreeMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::mqtt::auth::{AclAction, AclRule, Permission};

/// Seconds of clock difference `exp` and `nbf` tolerate.
pub const LEEWAY_SECS: i64 = 30;

/// Where a CONNECT carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenField {
    /// the password (the default)
    Password,
    /// the username
    Username,
}

/// A verifier of `[auth.jwt]`.
pub struct JwtAuth {
    algorithm: Algorithm,
    key: DecodingKey,
    /// where the token is
    pub from: TokenField,
    verify_claims: BTreeMap<String, String>,
    acl_claim: String,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth").field("algorithm", &self.algorithm).field("from", &self.from).finish_non_exhaustive()
    }
}

/// What a valid token grants a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// the token's ACL rules, checked before the config's
    pub rules: Option<Arc<[AclRule]>>,
    /// when the token expires (`exp`, in ms of the node's clock)
    pub expires_at_ms: Option<i64>,
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadKey(String);

impl JwtAuth {
    /// An HS256 verifier with `secret`.
    pub fn hs256(secret: &[u8], from: TokenField, verify_claims: BTreeMap<String, String>, acl_claim: String) -> Self {
        Self { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret), from, verify_claims, acl_claim }
    }

    /// An RS256 verifier with the PEM public key `pem`.
    pub fn rs256(
        pem: &[u8],
        from: TokenField,
        verify_claims: BTreeMap<String, String>,
        acl_claim: String,
    ) -> Result<Self, BadKey> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| BadKey(format!("not an RSA public key in PEM: {e}")))?;
        Ok(Self { algorithm: Algorithm::RS256, key, from, verify_claims, acl_claim })
    }

    /// Whether `value` looks like a compact JWT (three base64url parts): anything else is a
    /// password for the other back ends.
    pub fn looks_like_token(value: &[u8]) -> bool {
        let parts: Vec<&[u8]> = value.split(|byte| *byte == b'.').collect();
        parts.len() == 3
            && parts.iter().all(|part| {
                !part.is_empty() && part.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            })
    }

    /// Checks `token` for a client `username`/`client_id` at `now_ms`: what it grants, or why not.
    pub fn verify(
        &self,
        token: &str,
        username: Option<&str>,
        client_id: &str,
        now_ms: i64,
    ) -> Result<Grant, &'static str> {
        let mut validation = Validation::new(self.algorithm);
        // times are checked below against the node's clock, not the system's
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(token, &self.key, &validation)
            .map_err(|_| "the token's signature or algorithm does not verify")?
            .claims;
        let now = now_ms.div_euclid(1000);
        let time = |name: &str| claims.get(name).map(|value| value.as_i64().ok_or("a time claim is not a number"));
        let expires = time("exp").transpose()?;
        if expires.is_some_and(|exp| now > exp + LEEWAY_SECS) {
            return Err("the token has expired");
        }
        if time("nbf").transpose()?.is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
            return Err("the token is not valid yet");
        }
        for (claim, expected) in &self.verify_claims {
            let expected = expected.replace("%u", username.unwrap_or("%u")).replace("%c", client_id);
            if claims.get(claim).and_then(Value::as_str) != Some(expected.as_str()) {
                return Err("a claim of the token does not match (auth.jwt.verify_claims)");
            }
        }
        let rules = match claims.get(&self.acl_claim) {
            None => None,
            Some(acl) => Some(acl_rules(acl).ok_or("the token's ACL claim is not a list of rules")?.into()),
        };
        Ok(Grant { rules, expires_at_ms: expires.map(|exp| exp.saturating_mul(1000)) })
    }
}

/// The rules of an ACL claim, in either of EMQX's forms.
pub(crate) fn acl_rules(acl: &Value) -> Option<Vec<AclRule>> {
    let rule = |permission, action, topic: &str| AclRule {
        permission,
        action,
        topic: topic.to_string(),
        username: None,
        client_id: None,
    };
    match acl {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let permission = match item.get("permission")?.as_str()? {
                    "allow" => Permission::Allow,
                    "deny" => Permission::Deny,
                    _ => return None,
                };
                let action = match item.get("action")?.as_str()? {
                    "publish" => AclAction::Publish,
                    "subscribe" => AclAction::Subscribe,
                    "all" => AclAction::All,
                    _ => return None,
                };
                let topic = item.get("topic")?.as_str()?;
                crate::mqtt::topic::validate_filter(topic).ok()?;
                Some(rule(permission, action, topic))
            })
            .collect(),
        Value::Object(lists) => {
            let mut rules = Vec::new();
            for (key, action) in [("pub", AclAction::Publish), ("sub", AclAction::Subscribe), ("all", AclAction::All)] {
                let Some(topics) = lists.get(key) else { continue };
                for topic in topics.as_array()? {
                    let topic = topic.as_str()?;
                    crate::mqtt::topic::validate_filter(topic).ok()?;
                    rules.push(rule(Permission::Allow, action, topic));
                }
            }
            Some(rules)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn hs256_token(secret: &[u8], claims: &Value) -> String {
        use hmac::{Hmac, Mac};
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{body}").as_bytes());
        format!("{header}.{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_token_is_checked_for_its_signature_times_and_claims_and_grants_its_rules() {
        let verify = BTreeMap::from([("sub".to_string(), "%u".to_string())]);
        let auth = JwtAuth::hs256(b"s3cret", TokenField::Password, verify, "acl".into());
        let now_ms = 1_700_000_000_000;
        let claims = serde_json::json!({"sub": "ann", "exp": 1_700_000_600,
            "acl": [{"permission": "allow", "action": "publish", "topic": "t/%u"}]});
        let token = hs256_token(b"s3cret", &claims);
        assert!(JwtAuth::looks_like_token(token.as_bytes()) && !JwtAuth::looks_like_token(b"pass.word"));
        let grant = auth.verify(&token, Some("ann"), "c", now_ms).unwrap();
        assert_eq!(grant.expires_at_ms, Some(1_700_000_600_000));
        assert_eq!(grant.rules.as_deref().map(|rules| rules[0].topic.as_str()), Some("t/%u"));
        assert!(auth.verify(&token, Some("bob"), "c", now_ms).is_err(), "sub must be the username");
        assert!(auth.verify(&hs256_token(b"other", &claims), Some("ann"), "c", now_ms).is_err());
        assert!(auth.verify(&token, Some("ann"), "c", now_ms + 700_000).is_err(), "expired");
        let later = serde_json::json!({"sub": "ann", "nbf": 1_700_000_600});
        assert!(auth.verify(&hs256_token(b"s3cret", &later), Some("ann"), "c", now_ms).is_err(), "not yet");
        let lists = serde_json::json!({"sub": "ann", "acl": {"pub": ["a/#"], "sub": ["b"]}});
        let rules = auth.verify(&hs256_token(b"s3cret", &lists), Some("ann"), "c", now_ms).unwrap().rules.unwrap();
        assert_eq!(
            rules.iter().map(|rule| (rule.action, rule.topic.as_str())).collect::<Vec<_>>(),
            [(AclAction::Publish, "a/#"), (AclAction::Subscribe, "b")]
        );
        let bad = serde_json::json!({"sub": "ann", "acl": [{"permission": "maybe"}]});
        assert!(auth.verify(&hs256_token(b"s3cret", &bad), Some("ann"), "c", now_ms).is_err());
    }
}
