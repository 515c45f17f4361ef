//! MQTT authentication by an HTTP callout (`[auth.http]`), as EMQX's HTTP authenticator: for
//! a CONNECT with a username, the node POSTs `{"username", "password", "clientid", "peerhost"}`
//! as JSON to the configured URL and reads the verdict:
//! - 200 with `{"result": "allow"}` (optionally `"acl": [...]`, rules in either of the forms a
//!   JWT's ACL claim takes) or 204: logged in, with those rules checked before the config's;
//! - 200 with `{"result": "deny"}`: refused (CONNACK 0x86);
//! - `{"result": "ignore"}`, another status, a malformed answer, no answer within the timeout:
//!   the users of `[auth]` decide, as without the callout.
//!
//! Allow and deny are cached per (username, client id, password digest) for `cache_ttl_ms`, so a
//! reconnecting fleet does not flood the service. The request goes over the `Net` seam, plain
//! HTTP/1.1 with `Connection: close`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mqtt::auth::AclRule;
use crate::mqtt::jwt::Grant;
use crate::seams::Net;

/// The most verdicts cached; past it, the expired go, then all.
pub const MAX_CACHED: usize = 10_000;
/// The most bytes of an answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What the service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// logged in, with what the answer grants
    Allow(Grant),
    /// refused
    Deny,
    /// the users of `[auth]` decide (and why)
    Ignore(String),
}

type CacheKey = (String, String, [u8; 32]);

/// The callout of `[auth.http]`.
#[derive(Debug)]
pub struct HttpAuth {
    address: SocketAddr,
    host: String,
    path: String,
    timeout: Duration,
    cache_ttl_ms: i64,
    cache: parking_lot::Mutex<BTreeMap<CacheKey, (Verdict, i64)>>,
}

impl HttpAuth {
    /// A callout to `http://host[:port]/path` (`host` resolved to `address` by the caller).
    pub fn new(address: SocketAddr, host: String, path: String, timeout: Duration, cache_ttl_ms: i64) -> Self {
        Self { address, host, path, timeout, cache_ttl_ms, cache: Default::default() }
    }

    /// Splits an `http://` URL into its host (with the port, for the `Host` header), the port
    /// and its path; `None` when it is not one.
    pub fn parse_url(url: &str) -> Option<(String, u16, String)> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let port = match authority.rsplit_once(':') {
            Some((_, port)) if !authority.ends_with(']') => port.parse().ok()?,
            _ => 80,
        };
        (!authority.is_empty()).then(|| (authority.to_string(), port, path.to_string()))
    }

    /// Asks the service about a login (or answers from the cache).
    pub async fn check(
        &self,
        net: &dyn Net,
        now_ms: i64,
        username: &str,
        password: &[u8],
        client_id: &str,
        peer: SocketAddr,
    ) -> Verdict {
        let key: CacheKey = (username.to_string(), client_id.to_string(), sha2::Sha256::digest(password).into());
        if let Some((verdict, until)) = self.cache.lock().get(&key)
            && *until > now_ms
        {
            return verdict.clone();
        }
        let body = serde_json::json!({
            "username": username,
            "password": String::from_utf8_lossy(password),
            "clientid": client_id,
            "peerhost": peer.ip().to_string(),
        })
        .to_string();
        let verdict = match tokio::time::timeout(self.timeout, self.post(net, &body)).await {
            Ok(Ok((status, answer))) => verdict_of(status, &answer),
            Ok(Err(error)) => Verdict::Ignore(format!("the auth service at {} failed: {error}", self.address)),
            Err(_) => {
                Verdict::Ignore(format!("the auth service at {} did not answer in {:?}", self.address, self.timeout))
            }
        };
        if !matches!(verdict, Verdict::Ignore(_)) && self.cache_ttl_ms > 0 {
            let mut cache = self.cache.lock();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, until)| *until > now_ms);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (verdict.clone(), now_ms + self.cache_ttl_ms));
        }
        verdict
    }

    /// One POST: the answer's status and body.
    async fn post(&self, net: &dyn Net, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut connection = net.connect(self.address).await?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            self.host,
            body.len()
        );
        connection.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = connection.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..read]);
            if answer.len() > MAX_ANSWER {
                return Err(std::io::Error::other("the answer is larger than 64 KiB"));
            }
        }
        parse_answer(&answer).ok_or_else(|| std::io::Error::other("not an HTTP/1.1 answer"))
    }
}

/// The status and body of an HTTP/1.x answer (a chunked body decoded).
fn parse_answer(answer: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = answer.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|line| {
        line.to_ascii_lowercase().starts_with("transfer-encoding:") && line.to_ascii_lowercase().contains("chunked")
    });
    let mut body = &answer[head_end + 4..];
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut decoded = Vec::new();
    loop {
        let line_end = body.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some((status, decoded));
        }
        decoded.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The verdict an answer gives.
fn verdict_of(status: u16, body: &[u8]) -> Verdict {
    if status == 204 {
        return Verdict::Allow(Grant::default());
    }
    if status != 200 {
        return Verdict::Ignore(format!("the auth service answered {status}"));
    }
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Verdict::Ignore("the auth service's answer is not JSON".into());
    };
    match answer.get("result").and_then(serde_json::Value::as_str) {
        Some("allow") => {
            let rules: Option<Arc<[AclRule]>> = match answer.get("acl") {
                None => None,
                Some(acl) => match crate::mqtt::jwt::acl_rules(acl) {
                    Some(rules) => Some(rules.into()),
                    None => return Verdict::Ignore("the auth service's acl is not a list of rules".into()),
                },
            };
            Verdict::Allow(Grant { rules, expires_at_ms: None })
        }
        Some("deny") => Verdict::Deny,
        Some("ignore") => Verdict::Ignore("the auth service said ignore".into()),
        _ => Verdict::Ignore("the auth service's answer has no result of allow, deny or ignore".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_answers_and_verdicts_are_read_as_the_service_means_them() {
        assert_eq!(
            HttpAuth::parse_url("http://auth.local:8090/mqtt/auth"),
            Some(("auth.local:8090".into(), 8090, "/mqtt/auth".into()))
        );
        assert_eq!(HttpAuth::parse_url("http://10.0.0.1"), Some(("10.0.0.1".into(), 80, "/".into())));
        assert_eq!(HttpAuth::parse_url("https://x/"), None);
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n{\"result\":\"deny\"}";
        assert_eq!(parse_answer(plain).map(|(status, body)| verdict_of(status, &body)), Some(Verdict::Deny));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"resul\r\nb\r\nt\":\"allow\"}\r\n0\r\n\r\n";
        let (status, body) = parse_answer(chunked).unwrap();
        assert_eq!(verdict_of(status, &body), Verdict::Allow(Grant::default()));
        assert_eq!(verdict_of(204, b""), Verdict::Allow(Grant::default()));
        assert!(matches!(verdict_of(500, b""), Verdict::Ignore(_)));
        assert!(matches!(verdict_of(200, br#"{"result":"ignore"}"#), Verdict::Ignore(_)));
        let ruled = verdict_of(200, br#"{"result":"allow","acl":{"pub":["a/%u"]}}"#);
        let Verdict::Allow(grant) = ruled else { panic!("{ruled:?}") };
        assert_eq!(grant.rules.as_deref().map(|rules| rules[0].topic.as_str()), Some("a/%u"));
        assert_eq!(parse_answer(b"garbage"), None);
    }
}
