//! Sessions by client id: find or spawn the session a new connection attaches to, restore
//! persisted sessions at start, and stop them all at shutdown.

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use ractor::{ActorRef, call_t};

use crate::context::NodeContext;
use crate::mqtt::persist;
use crate::mqtt::router::SessionHandle;
use crate::mqtt::session::{AttachRequest, SessionMsg, spawn_session};

const ATTACH_TIMEOUT_MS: u64 = 5_000;
const SHUTDOWN_TIMEOUT_MS: u64 = 2_000;

/// Why a connection could not be attached to a session.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// the session actor could not be started
    #[error("cannot start session: {0}")]
    Spawn(String),
    /// the session did not take the connection in time
    #[error("session did not answer")]
    Unresponsive,
}

/// Shards of the registry: a connect holds its shard's lock while it spawns the session actor
/// (so that two connections with one client id cannot both spawn one), and with one lock for
/// all of them every connect waited for the previous one's actor to start.
const SHARDS: usize = 64;

type Shard = tokio::sync::Mutex<BTreeMap<String, SessionHandle>>;

/// The node's sessions by client id.
pub struct SessionRegistry {
    shards: Vec<Shard>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

impl SessionRegistry {
    fn shard(&self, client_id: &str) -> &Shard {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(client_id);
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Attaches a connection to the session of `client_id`, spawning it if there is none.
    pub async fn attach(
        &self,
        ctx: &NodeContext,
        client_id: &str,
        request: AttachRequest,
    ) -> Result<ActorRef<SessionMsg>, AttachError> {
        for _ in 0..3 {
            let handle = {
                let mut sessions = self.shard(client_id).lock().await;
                match sessions.get(client_id) {
                    Some(handle) => handle.clone(),
                    None => {
                        // the session may live on another node of the cluster: it moves here
                        // (clean start 0), or ends there (clean start 1)
                        let taken = ctx.routes.take_session(client_id, request.clean_start).await;
                        let (from, restored) = match taken {
                            Some((node, session)) => (Some(node), Some(*session)),
                            None => (None, None),
                        };
                        // a new session takes the connection as it starts: no attach round trip
                        let handle = spawn_session(ctx, client_id.to_string(), restored, Some(request))
                            .await
                            .map_err(|e| AttachError::Spawn(e.to_string()))?;
                        sessions.insert(client_id.to_string(), handle.clone());
                        if let Some(node) = from {
                            // stored here as it attached, and synced (a power loss here must not
                            // lose a session its old owner forgets): the old owner may forget it
                            match ctx.state_store.sync() {
                                Ok(()) => ctx.routes.session_taken(node, client_id),
                                Err(error) => tracing::error!(client_id, %error, "cannot sync a session taken over"),
                            }
                        }
                        return Ok(handle.actor);
                    }
                }
            };
            match call_t!(handle.actor, SessionMsg::Attach, ATTACH_TIMEOUT_MS, Box::new(request.clone())) {
                Ok(true) => return Ok(handle.actor),
                _ => {
                    // the session ended between lookup and attach: forget it and try again
                    self.remove(client_id, &handle.actor).await;
                }
            }
        }
        Err(AttachError::Unresponsive)
    }

    /// Every session of this node: client id and when its client last attached.
    pub async fn attached(&self) -> Vec<(String, i64)> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let sessions = shard.lock().await;
            all.extend(sessions.iter().map(|(id, handle)| (id.clone(), handle.attached_at.load(Ordering::Relaxed))));
        }
        all
    }

    /// The session of `client_id`, if this node holds it.
    pub async fn get(&self, client_id: &str) -> Option<SessionHandle> {
        self.shard(client_id).lock().await.get(client_id).cloned()
    }

    /// Forgets the session of `client_id` if it is still `actor`.
    pub async fn remove(&self, client_id: &str, actor: &ActorRef<SessionMsg>) {
        let mut sessions = self.shard(client_id).lock().await;
        if sessions.get(client_id).is_some_and(|handle| handle.actor.get_id() == actor.get_id()) {
            sessions.remove(client_id);
        }
    }

    /// Spawns the sessions persisted in the node's store (at start).
    pub async fn restore(&self, ctx: &NodeContext) -> Result<usize, persist::PersistError> {
        let loaded = persist::load_sessions(ctx.state_store.as_ref())?;
        let count = loaded.len();
        for session in loaded {
            let client_id = session.client_id.clone();
            match spawn_session(ctx, client_id.clone(), Some(session), None).await {
                Ok(handle) => {
                    self.shard(&client_id).lock().await.insert(client_id, handle);
                }
                Err(error) => tracing::error!(%client_id, %error, "cannot restore session"),
            }
        }
        Ok(count)
    }

    /// Starts the timers of restored sessions (wills, expiry): called once the whole node
    /// (every session and stream) is restored, so that a will due at once finds its audience.
    pub async fn resume(&self) {
        for shard in &self.shards {
            for handle in shard.lock().await.values() {
                let _ = handle.actor.cast(SessionMsg::Resume);
            }
        }
    }

    /// Closes every connection and persists every session (graceful shutdown).
    pub async fn shutdown(&self) {
        let mut handles: Vec<SessionHandle> = Vec::new();
        for shard in &self.shards {
            handles.extend(shard.lock().await.values().cloned());
        }
        for handle in handles {
            let _ = call_t!(handle.actor, SessionMsg::Shutdown, SHUTDOWN_TIMEOUT_MS);
            handle.actor.stop(None);
        }
    }

    /// The number of sessions.
    pub async fn len(&self) -> usize {
        let mut len = 0;
        for shard in &self.shards {
            len += shard.lock().await.len();
        }
        len
    }

    /// Whether there are no sessions.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}
