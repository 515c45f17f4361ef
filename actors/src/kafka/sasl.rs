//! SASL on the Kafka listener (KIP-43, KIP-152): SaslHandshake v1 names the mechanism, then
//! SaslAuthenticate carries its tokens. PLAIN is offered (SCRAM is not yet), checked against
//! the users of `[[auth.users]]`, the same as MQTT's.
//!
//! With `auth.allow_anonymous = false` a connection must authenticate before any request but
//! ApiVersions and the SASL pair; another request closes it, as a Kafka broker's SASL listener
//! does. With anonymous access on, SASL is optional, and a client that authenticates is that
//! user. A failed authentication is answered `SASL_AUTHENTICATION_FAILED` and the connection
//! closes; both are logged at `info` with the peer's address, rate-limited.

use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::codes;
use crate::mqtt::auth::Authorizer;

/// The mechanisms offered.
pub const MECHANISMS: &[&str] = &["PLAIN"];

/// Where a connection is in its SASL exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SaslState {
    /// nothing yet
    #[default]
    Start,
    /// the handshake (v1) chose PLAIN; its token comes in SaslAuthenticate
    Plain,
    /// the handshake (v0) chose PLAIN; its token comes as the next frame, bare
    PlainBare,
    /// authenticated as this user
    Authenticated(String),
}

impl SaslState {
    /// Whether requests other than ApiVersions and SASL may be served on this connection.
    pub fn may_serve(&self, authorizer: &Authorizer) -> bool {
        matches!(self, Self::Authenticated(_)) || !authorizer.requires_credentials()
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Authenticated(user) => Some(user),
            _ => None,
        }
    }

    /// Answers SaslHandshake of `version`.
    pub fn handshake(&mut self, request: &SaslHandshakeRequest, version: i16) -> SaslHandshakeResponse {
        let mechanisms = MECHANISMS.iter().map(|m| StrBytes::from_static_str(m)).collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
        if *self != Self::Start {
            return response.with_error_code(codes::ILLEGAL_SASL_STATE);
        }
        if request.mechanism.as_str() != "PLAIN" {
            return response.with_error_code(codes::UNSUPPORTED_SASL_MECHANISM);
        }
        *self = if version == 0 { Self::PlainBare } else { Self::Plain };
        response
    }

    /// Whether the next frame is a bare PLAIN token (after a v0 handshake).
    pub fn expects_bare_token(&self) -> bool {
        *self == Self::PlainBare
    }

    /// Checks a bare PLAIN token (after a v0 handshake): success is answered with an empty
    /// frame, failure by closing the connection.
    pub fn authenticate_bare(&mut self, token: &[u8], authorizer: &Authorizer) -> bool {
        self.check_plain(token, authorizer).is_ok()
    }

    /// Answers SaslAuthenticate; `false` when the connection must close after the answer.
    pub fn authenticate(
        &mut self,
        request: &SaslAuthenticateRequest,
        authorizer: &Authorizer,
    ) -> (SaslAuthenticateResponse, bool) {
        let failed = |code, message: &str| {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message.to_string())));
            (response, false)
        };
        if *self != Self::Plain {
            return failed(codes::ILLEGAL_SASL_STATE, "SaslAuthenticate before SaslHandshake");
        }
        match self.check_plain(&request.auth_bytes, authorizer) {
            Ok(()) => (SaslAuthenticateResponse::default(), true),
            Err(why) => failed(codes::SASL_AUTHENTICATION_FAILED, why),
        }
    }

    /// Checks a PLAIN token against the users, becoming that user when it holds; the error
    /// says why it does not, in the words Kafka brokers use.
    fn check_plain(&mut self, token: &[u8], authorizer: &Authorizer) -> Result<(), &'static str> {
        let (user, password) = plain_token(token).ok_or("Authentication failed: malformed PLAIN token")?;
        if !authorizer.verify_user(user, password) {
            return Err("Authentication failed: invalid username or password");
        }
        *self = Self::Authenticated(user.to_string());
        Ok(())
    }
}

/// The user and password of a PLAIN token (RFC 4616): `[authzid] NUL authcid NUL passwd`; an
/// authorization id, if given, must be the user itself.
fn plain_token(token: &[u8]) -> Option<(&str, &[u8])> {
    let mut parts = token.splitn(3, |byte| *byte == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    let user = std::str::from_utf8(user).ok().filter(|user| !user.is_empty())?;
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return None;
    }
    Some((user, password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::auth::{PasswordHash, Permission, hash_password};
    use std::str::FromStr;

    fn authorizer() -> Authorizer {
        let hash = PasswordHash::from_str(&hash_password("secret", b"0123456789abcdef")).unwrap();
        Authorizer::new(false, Permission::Allow, [("alice".to_string(), hash)], Vec::new())
    }

    fn token(bytes: &[u8]) -> SaslAuthenticateRequest {
        SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn plain_after_the_handshake_authenticates_a_known_user() {
        let authorizer = authorizer();
        let mut state = SaslState::default();
        assert!(!state.may_serve(&authorizer));
        let (response, open) = state.authenticate(&token(b"\0alice\0secret"), &authorizer);
        assert_eq!((response.error_code, open), (codes::ILLEGAL_SASL_STATE, false), "no handshake yet");
        let scram = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"));
        assert_eq!(state.handshake(&scram, 1).error_code, codes::UNSUPPORTED_SASL_MECHANISM);
        let plain = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let answer = state.handshake(&plain, 1);
        assert_eq!((answer.error_code, answer.mechanisms.len()), (0, 1));
        let (response, open) = state.authenticate(&token(b"alice\0alice\0secret"), &authorizer);
        assert_eq!((response.error_code, open), (0, true));
        assert_eq!(state, SaslState::Authenticated("alice".into()));
        assert!(state.may_serve(&authorizer));
        assert_eq!(state.handshake(&plain, 1).error_code, codes::ILLEGAL_SASL_STATE, "no second handshake");
        // v0: the token comes bare
        let mut bare = SaslState::default();
        assert_eq!(bare.handshake(&plain, 0).error_code, 0);
        assert!(bare.expects_bare_token());
        assert!(bare.authenticate_bare(b"\0alice\0secret", &authorizer));
        assert!(bare.may_serve(&authorizer));
        let mut wrong = SaslState::default();
        wrong.handshake(&plain, 0);
        assert!(!wrong.authenticate_bare(b"\0alice\0nope", &authorizer));
    }

    #[test]
    fn wrong_passwords_unknown_users_and_malformed_tokens_fail() {
        let authorizer = authorizer();
        let plain = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        for bad in [&b"\0alice\0wrong"[..], b"\0bob\0secret", b"alice-secret", b"\0\0secret", b"mallory\0alice\0secret"]
        {
            let mut state = SaslState::default();
            state.handshake(&plain, 1);
            let (response, open) = state.authenticate(&token(bad), &authorizer);
            assert_eq!((response.error_code, open), (codes::SASL_AUTHENTICATION_FAILED, false), "{bad:?}");
            assert!(!state.may_serve(&authorizer));
        }
    }
}
