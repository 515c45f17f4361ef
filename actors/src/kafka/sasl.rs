//! SASL on the Kafka listener (KIP-43, KIP-84, KIP-152): SaslHandshake names the mechanism,
//! then SaslAuthenticate carries its tokens (after a v0 handshake they come as bare frames).
//! PLAIN and SCRAM-SHA-256/512 (RFC 5802, 7677) are offered, checked against the users of
//! `[[auth.users]]` and of the cluster's metadata (set with AlterUserScramCredentials, see
//! [`crate::kafka::handlers::scram`]), the same as MQTT's. A user's `password_hash` is PBKDF2-HMAC over its
//! salt, which is exactly SCRAM's `SaltedPassword`: a `pbkdf2-sha256` hash serves
//! SCRAM-SHA-256 and a `pbkdf2-sha512` one SCRAM-SHA-512, and PLAIN works with either.
//!
//! With `auth.allow_anonymous = false` a connection must authenticate before any request but
//! ApiVersions and the SASL pair; another request closes it, as a Kafka broker's SASL listener
//! does. With anonymous access on, SASL is optional, and a client that authenticates is that
//! user. A failed authentication is answered `SASL_AUTHENTICATION_FAILED` and the connection
//! closes; both are logged at `info` with the peer's address, rate-limited.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::codes;
use crate::mqtt::auth::{Authorizer, HashAlgorithm, constant_time_eq};
use crate::seams::NodeRng;

/// The mechanisms offered.
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A mechanism a handshake chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616
    Plain,
    /// SCRAM with this hash function
    Scram(HashAlgorithm),
}

impl Mechanism {
    fn named(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "SCRAM-SHA-256" => Some(Self::Scram(HashAlgorithm::Sha256)),
            "SCRAM-SHA-512" => Some(Self::Scram(HashAlgorithm::Sha512)),
            _ => None,
        }
    }
}

/// Where a connection is in its SASL exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SaslState {
    /// nothing yet
    #[default]
    Start,
    /// the handshake chose `mechanism`; its first token is next (`bare` after a v0 handshake)
    Chosen { mechanism: Mechanism, bare: bool },
    /// SCRAM: the server-first message went out, the client-final message is next
    ScramFinal { bare: bool, exchange: Box<ScramExchange> },
    /// authenticated as this user
    Authenticated(String),
}

/// What a SCRAM exchange keeps between the client's first and final messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramExchange {
    algorithm: HashAlgorithm,
    user: String,
    /// the GS2 header the client sent (its final message repeats it, base64, in `c=`)
    gs2_header: String,
    /// the client's nonce and ours
    nonce: String,
    /// how much of `nonce` is the client's
    client_nonce_len: usize,
    /// `client-first-message-bare "," server-first-message`
    auth_message: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Why a token was refused, in the words of a Kafka broker.
const MALFORMED_PLAIN: &str = "Authentication failed: malformed PLAIN token";
const BAD_PASSWORD: &str = "Authentication failed: invalid username or password";
const MALFORMED_SCRAM: &str = "Authentication failed: malformed SCRAM message";
const BAD_SCRAM: &str =
    "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM";
const NO_SCRAM_CREDENTIALS: &str = "Authentication failed: this user has no credentials for the SCRAM mechanism asked for \
     (a pbkdf2-sha256 password_hash serves SCRAM-SHA-256, a pbkdf2-sha512 one SCRAM-SHA-512)";
const NO_TOKENS: &str = "Authentication failed: delegation tokens (tokenauth) are not supported";

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
        let Some(mechanism) = Mechanism::named(request.mechanism.as_str()) else {
            return response.with_error_code(codes::UNSUPPORTED_SASL_MECHANISM);
        };
        *self = Self::Chosen { mechanism, bare: version == 0 };
        response
    }

    /// Whether the next frame is a bare token (after a v0 handshake).
    pub fn expects_bare_token(&self) -> bool {
        matches!(self, Self::Chosen { bare: true, .. } | Self::ScramFinal { bare: true, .. })
    }

    /// Takes a bare token (after a v0 handshake): the bytes to answer with as a frame of their
    /// own, or why it was refused (the connection then closes).
    pub fn authenticate_bare(
        &mut self,
        token: &[u8],
        authorizer: &Authorizer,
        rng: &NodeRng,
    ) -> Result<Vec<u8>, &'static str> {
        self.step(token, authorizer, rng)
    }

    /// Answers SaslAuthenticate; `false` when the connection must close after the answer.
    pub fn authenticate(
        &mut self,
        request: &SaslAuthenticateRequest,
        authorizer: &Authorizer,
        rng: &NodeRng,
    ) -> (SaslAuthenticateResponse, bool) {
        let failed = |code, message: &str| {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message.to_string())));
            (response, false)
        };
        if !matches!(self, Self::Chosen { bare: false, .. } | Self::ScramFinal { bare: false, .. }) {
            return failed(codes::ILLEGAL_SASL_STATE, "SaslAuthenticate before SaslHandshake");
        }
        match self.step(&request.auth_bytes, authorizer, rng) {
            Ok(answer) => (SaslAuthenticateResponse::default().with_auth_bytes(answer.into()), true),
            Err(why) => failed(codes::SASL_AUTHENTICATION_FAILED, why),
        }
    }

    /// Takes the next token of the exchange; a failure leaves the state where it was (the
    /// connection closes).
    fn step(&mut self, token: &[u8], authorizer: &Authorizer, rng: &NodeRng) -> Result<Vec<u8>, &'static str> {
        match self {
            Self::Chosen { mechanism: Mechanism::Plain, .. } => {
                let (user, password) = plain_token(token).ok_or(MALFORMED_PLAIN)?;
                if !authorizer.verify_user(user, password) {
                    return Err(BAD_PASSWORD);
                }
                *self = Self::Authenticated(user.to_string());
                Ok(Vec::new())
            }
            Self::Chosen { mechanism: Mechanism::Scram(algorithm), bare } => {
                let (exchange, server_first) = scram_first(*algorithm, token, authorizer, rng)?;
                *self = Self::ScramFinal { bare: *bare, exchange: Box::new(exchange) };
                Ok(server_first.into_bytes())
            }
            Self::ScramFinal { exchange, .. } => {
                let server_final = scram_final(exchange, token)?;
                *self = Self::Authenticated(exchange.user.clone());
                Ok(server_final.into_bytes())
            }
            Self::Start | Self::Authenticated(_) => Err("SaslAuthenticate before SaslHandshake"),
        }
    }
}

/// The user and password of a PLAIN token (RFC 4616): `[authzid] NUL authcid NUL passwd`; an
/// authorization identity, when given, must be the user itself.
fn plain_token(token: &[u8]) -> Option<(&str, &[u8])> {
    let mut parts = token.splitn(3, |byte| *byte == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    let user = std::str::from_utf8(user).ok().filter(|user| !user.is_empty())?;
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return None;
    }
    Some((user, password))
}

/// A SCRAM `saslname` unescaped (`=2C` is `,`, `=3D` is `=`; any other `=` is malformed).
fn sasl_name(escaped: &str) -> Option<String> {
    let mut name = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(at) = rest.find('=') {
        name.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => name.push(','),
            Some("=3D") => name.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    Some(name)
}

/// Takes the client-first message (`gs2-header client-first-message-bare`, e.g.
/// `n,,n=alice,r=<nonce>`) and makes the server-first one.
fn scram_first(
    algorithm: HashAlgorithm,
    token: &[u8],
    authorizer: &Authorizer,
    rng: &NodeRng,
) -> Result<(ScramExchange, String), &'static str> {
    let message = std::str::from_utf8(token).map_err(|_| MALFORMED_SCRAM)?;
    // gs2-header: a channel-binding flag (no binding: "n", or "y" from a client that could
    // bind but thinks we cannot), an optional authzid, then the bare message
    let (flag, rest) = message.split_once(',').ok_or(MALFORMED_SCRAM)?;
    if flag != "n" && flag != "y" {
        return Err("Authentication failed: SCRAM channel binding is not supported");
    }
    let (authzid, bare) = rest.split_once(',').ok_or(MALFORMED_SCRAM)?;
    let gs2_header = &message[..flag.len() + authzid.len() + 2];
    let mut attributes = bare.split(',');
    let user = attributes.next().and_then(|a| a.strip_prefix("n=")).and_then(sasl_name).ok_or(MALFORMED_SCRAM)?;
    let client_nonce = attributes.next().and_then(|a| a.strip_prefix("r=")).ok_or(MALFORMED_SCRAM)?;
    if user.is_empty() || client_nonce.is_empty() || !client_nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MALFORMED_SCRAM);
    }
    if !authzid.is_empty() && authzid.strip_prefix("a=").and_then(sasl_name).as_deref() != Some(user.as_str()) {
        return Err("Authentication failed: the authorization id is not the user");
    }
    // extensions (KIP-86): a delegation token would need tokens, which we do not issue
    if attributes.any(|extension| extension == "tokenauth=true") {
        return Err(NO_TOKENS);
    }
    let hash = authorizer.user_credential(&user, algorithm).ok_or(if authorizer.knows_user(&user) {
        NO_SCRAM_CREDENTIALS
    } else {
        BAD_SCRAM
    })?;
    let (_, salt, iterations, salted_password) = hash.scram();
    let mut ours = [0u8; 18];
    rng.fill(&mut ours);
    let nonce = format!("{client_nonce}{}", STANDARD.encode(ours));
    let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
    let client_key = algorithm.hmac(salted_password, b"Client Key");
    let exchange = ScramExchange {
        algorithm,
        user,
        gs2_header: gs2_header.to_string(),
        client_nonce_len: client_nonce.len(),
        nonce,
        auth_message: format!("{bare},{server_first}"),
        stored_key: algorithm.digest(&client_key),
        server_key: algorithm.hmac(salted_password, b"Server Key"),
    };
    Ok((exchange, server_first))
}

/// Checks the client-final message (`c=<gs2 header>,r=<nonce>,p=<proof>`) and makes the
/// server-final one (`v=<server signature>`).
fn scram_final(exchange: &ScramExchange, token: &[u8]) -> Result<String, &'static str> {
    let message = std::str::from_utf8(token).map_err(|_| MALFORMED_SCRAM)?;
    let (without_proof, proof) = message.rsplit_once(",p=").ok_or(MALFORMED_SCRAM)?;
    let proof = STANDARD.decode(proof).map_err(|_| MALFORMED_SCRAM)?;
    let mut attributes = without_proof.split(',');
    let binding = attributes.next().and_then(|a| a.strip_prefix("c=")).ok_or(MALFORMED_SCRAM)?;
    let nonce = attributes.next().and_then(|a| a.strip_prefix("r=")).ok_or(MALFORMED_SCRAM)?;
    if STANDARD.decode(binding).ok().as_deref() != Some(exchange.gs2_header.as_bytes()) {
        return Err("Authentication failed: SCRAM channel binding does not match the first message");
    }
    // librdkafka before 2.6.1 (Debian's kcat among them) puts its own nonce in front of the
    // combined one a second time (librdkafka#4895); the server's part is still all there, so
    // the exchange cannot be replayed, and Kafka 3.8.1 accepts it too
    let client_nonce = &exchange.nonce[..exchange.client_nonce_len];
    if nonce != exchange.nonce && nonce.strip_prefix(client_nonce) != Some(exchange.nonce.as_str()) {
        return Err("Authentication failed: SCRAM nonce does not match");
    }
    let algorithm = exchange.algorithm;
    let auth_message = format!("{},{without_proof}", exchange.auth_message);
    let signature = algorithm.hmac(&exchange.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Err(BAD_SCRAM);
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if !constant_time_eq(&algorithm.digest(&client_key), &exchange.stored_key) {
        return Err(BAD_SCRAM);
    }
    Ok(format!("v={}", STANDARD.encode(algorithm.hmac(&exchange.server_key, auth_message.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::auth::{PasswordHash, Permission, hash_password, hash_password_with};
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use std::str::FromStr;

    fn authorizer() -> Authorizer {
        let alice = PasswordHash::from_str(&hash_password("secret", b"0123456789abcdef")).unwrap();
        let bob =
            PasswordHash::from_str(&hash_password_with(HashAlgorithm::Sha512, "hunter2", b"fedcba9876543210")).unwrap();
        Authorizer::new(
            false,
            Permission::Allow,
            [("alice".to_string(), alice), ("b,o=b".to_string(), bob)],
            Vec::new(),
        )
    }

    fn token(bytes: &[u8]) -> SaslAuthenticateRequest {
        SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::copy_from_slice(bytes))
    }

    fn handshake(name: &'static str) -> SaslHandshakeRequest {
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name))
    }

    #[test]
    fn plain_after_the_handshake_authenticates_a_known_user() {
        let (authorizer, rng) = (authorizer(), NodeRng::seeded(1));
        let mut state = SaslState::default();
        assert!(!state.may_serve(&authorizer));
        let (response, open) = state.authenticate(&token(b"\0alice\0secret"), &authorizer, &rng);
        assert_eq!((response.error_code, open), (codes::ILLEGAL_SASL_STATE, false), "no handshake yet");
        assert_eq!(state.handshake(&handshake("GSSAPI"), 1).error_code, codes::UNSUPPORTED_SASL_MECHANISM);
        let answer = state.handshake(&handshake("PLAIN"), 1);
        assert_eq!((answer.error_code, answer.mechanisms.len()), (0, 3));
        let (response, open) = state.authenticate(&token(b"alice\0alice\0secret"), &authorizer, &rng);
        assert_eq!((response.error_code, open), (0, true));
        assert_eq!(state, SaslState::Authenticated("alice".into()));
        assert!(state.may_serve(&authorizer));
        assert_eq!(state.handshake(&handshake("PLAIN"), 1).error_code, codes::ILLEGAL_SASL_STATE, "no second one");
        // v0: the token comes bare, and so does the (empty) answer
        let mut bare = SaslState::default();
        assert_eq!(bare.handshake(&handshake("PLAIN"), 0).error_code, 0);
        assert!(bare.expects_bare_token());
        assert_eq!(bare.authenticate_bare(b"\0alice\0secret", &authorizer, &rng), Ok(Vec::new()));
        assert!(bare.may_serve(&authorizer));
        let mut wrong = SaslState::default();
        wrong.handshake(&handshake("PLAIN"), 0);
        assert!(wrong.authenticate_bare(b"\0alice\0nope", &authorizer, &rng).is_err());
        // PLAIN takes a sha512 hash too
        let mut sha512 = SaslState::default();
        sha512.handshake(&handshake("PLAIN"), 1);
        assert_eq!(sha512.authenticate(&token(b"\0b,o=b\0hunter2"), &authorizer, &rng).0.error_code, 0);
    }

    #[test]
    fn wrong_passwords_unknown_users_and_malformed_tokens_fail() {
        let (authorizer, rng) = (authorizer(), NodeRng::seeded(1));
        for bad in [&b"\0alice\0wrong"[..], b"\0bob\0secret", b"alice-secret", b"\0\0secret", b"mallory\0alice\0secret"]
        {
            let mut state = SaslState::default();
            state.handshake(&handshake("PLAIN"), 1);
            let (response, open) = state.authenticate(&token(bad), &authorizer, &rng);
            assert_eq!((response.error_code, open), (codes::SASL_AUTHENTICATION_FAILED, false), "{bad:?}");
            assert!(!state.may_serve(&authorizer));
        }
    }

    /// A SCRAM client (RFC 5802 section 3): the final message for `server_first` and the
    /// server signature it must get back.
    fn client_final(
        algorithm: HashAlgorithm,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        librdkafka_before_2_6_1: bool,
    ) -> (String, String) {
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = STANDARD.decode(fields[1].strip_prefix("s=").unwrap()).unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = algorithm.pbkdf2(password.as_bytes(), &salt, iterations);
        let client_key = algorithm.hmac(&salted, b"Client Key");
        let without_proof = if librdkafka_before_2_6_1 {
            let client_nonce = client_first_bare.split_once(",r=").unwrap().1;
            format!("c=biws,r={client_nonce}{nonce}")
        } else {
            format!("c=biws,r={nonce}")
        };
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = algorithm.hmac(&algorithm.digest(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let server_signature = algorithm.hmac(&algorithm.hmac(&salted, b"Server Key"), auth_message.as_bytes());
        (format!("{without_proof},p={}", STANDARD.encode(proof)), format!("v={}", STANDARD.encode(server_signature)))
    }

    #[test]
    fn scram_sha_256_matches_the_rfc_7677_example() {
        // the exchange of RFC 7677 section 3: user "user", password "pencil"
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = HashAlgorithm::Sha256.pbkdf2(b"pencil", &salt, 4096);
        let stored =
            format!("pbkdf2-sha256$4096${}${}", STANDARD_NO_PAD.encode(&salt), STANDARD_NO_PAD.encode(&salted));
        let hash = PasswordHash::from_str(&stored).unwrap();
        let (algorithm, _, _, salted_password) = hash.scram();
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let exchange = ScramExchange {
            algorithm,
            user: "user".into(),
            gs2_header: "n,,".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            client_nonce_len: "rOprNGfwEbeRWgbNEkqO".len(),
            auth_message: format!("{client_first_bare},{server_first}"),
            stored_key: algorithm.digest(&algorithm.hmac(salted_password, b"Client Key")),
            server_key: algorithm.hmac(salted_password, b"Server Key"),
        };
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            scram_final(&exchange, client_final.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let forged = client_final.replace("p=dHzb", "p=dHzc");
        assert_eq!(scram_final(&exchange, forged.as_bytes()), Err(BAD_SCRAM));
    }

    #[test]
    fn scram_exchanges_authenticate_in_both_framings_and_refuse_what_does_not_match() {
        let (authorizer, rng) = (authorizer(), NodeRng::seeded(7));
        for (mechanism, algorithm, escaped, user, password, version) in [
            ("SCRAM-SHA-256", HashAlgorithm::Sha256, "alice", "alice", "secret", 1),
            ("SCRAM-SHA-512", HashAlgorithm::Sha512, "b=2Co=3Db", "b,o=b", "hunter2", 1),
            ("SCRAM-SHA-256", HashAlgorithm::Sha256, "alice", "alice", "secret", 0),
            ("SCRAM-SHA-256", HashAlgorithm::Sha256, "alice", "alice", "secret", 2),
        ] {
            // version 2 here: a v1 handshake from librdkafka before 2.6.1
            let (version, doubled) = if version == 2 { (1, true) } else { (version, false) };
            let mut state = SaslState::default();
            assert_eq!(state.handshake(&handshake(mechanism), version).error_code, 0);
            let client_first_bare = format!("n={escaped},r=fyko+d2lbbFgONRv9qkxdawL");
            let first = format!("n,,{client_first_bare}");
            let server_first = if version == 0 {
                String::from_utf8(state.authenticate_bare(first.as_bytes(), &authorizer, &rng).unwrap()).unwrap()
            } else {
                let (response, open) = state.authenticate(&token(first.as_bytes()), &authorizer, &rng);
                assert_eq!((response.error_code, open), (0, true), "{mechanism}: {:?}", response.error_message);
                String::from_utf8(response.auth_bytes.to_vec()).unwrap()
            };
            assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"), "{server_first}");
            assert!(!state.may_serve(&authorizer), "not before the final message");
            let (final_message, server_final) =
                client_final(algorithm, password, &client_first_bare, &server_first, doubled);
            // a proof made with the wrong password fails, and the state stays unauthenticated
            let (wrong, _) = client_final(algorithm, "guess", &client_first_bare, &server_first, doubled);
            let mut attempt = state.clone();
            let (response, open) = attempt.authenticate(&token(wrong.as_bytes()), &authorizer, &rng);
            if version == 1 {
                assert_eq!((response.error_code, open), (codes::SASL_AUTHENTICATION_FAILED, false));
            }
            assert!(!attempt.may_serve(&authorizer));
            let answer = if version == 0 {
                state.authenticate_bare(final_message.as_bytes(), &authorizer, &rng).unwrap()
            } else {
                let (response, open) = state.authenticate(&token(final_message.as_bytes()), &authorizer, &rng);
                assert_eq!((response.error_code, open), (0, true), "{mechanism}: {:?}", response.error_message);
                response.auth_bytes.to_vec()
            };
            assert_eq!(String::from_utf8(answer).unwrap(), server_final, "{mechanism}");
            assert_eq!(state, SaslState::Authenticated(user.into()));
        }
        // refused at the first message: an unknown user, the other hash function, a delegation
        // token, channel binding, a malformed name, an authzid that is someone else
        for (mechanism, first) in [
            ("SCRAM-SHA-256", "n,,n=mallory,r=abc"),
            ("SCRAM-SHA-512", "n,,n=alice,r=abc"),
            ("SCRAM-SHA-256", "n,,n=alice,r=abc,tokenauth=true"),
            ("SCRAM-SHA-256", "p=tls-unique,,n=alice,r=abc"),
            ("SCRAM-SHA-256", "n,,n=al=ice,r=abc"),
            ("SCRAM-SHA-256", "n,a=bob,n=alice,r=abc"),
            ("SCRAM-SHA-256", "n,,r=abc"),
        ] {
            let mut state = SaslState::default();
            state.handshake(&handshake(mechanism), 1);
            let (response, open) = state.authenticate(&token(first.as_bytes()), &authorizer, &rng);
            assert_eq!((response.error_code, open), (codes::SASL_AUTHENTICATION_FAILED, false), "{first}");
        }
        // a final message that changes the nonce or the channel binding is refused
        let mut state = SaslState::default();
        state.handshake(&handshake("SCRAM-SHA-256"), 1);
        let (response, _) = state.authenticate(&token(b"n,,n=alice,r=abc"), &authorizer, &rng);
        let server_first = String::from_utf8(response.auth_bytes.to_vec()).unwrap();
        let (good, _) = client_final(HashAlgorithm::Sha256, "secret", "n=alice,r=abc", &server_first, false);
        for bad in [good.replace("r=abc", "r=abd"), good.replace("c=biws", "c=eSws"), good.replace("r=abc", "r=xyzabc")]
        {
            let (response, open) = state.clone().authenticate(&token(bad.as_bytes()), &authorizer, &rng);
            assert_eq!((response.error_code, open), (codes::SASL_AUTHENTICATION_FAILED, false), "{bad}");
        }
    }
}
