//! How MQTT session state and retained messages are laid out in the [`StateStore`].
//!
//! Values are bincode 2 (serde) behind a format version byte, so that a later layout can
//! be read alongside this one. Client ids never contain U+0000 (refused at CONNECT), so
//! `client_id \0 suffix` keys group a session's entries under one prefix.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tidewater_storage::{StateOp, StateStore, StorageError};

use crate::mqtt::message::{Message, SubOptions};
use crate::mqtt::session_state::Outgoing;

/// Session records: client id → [`SessionRecord`].
pub const SESSIONS: &str = "mqtt_sessions";
/// Messages on their way to a session: client id \0 seq → [`Outgoing`].
pub const OUTGOING: &str = "mqtt_outgoing";
/// Incoming QoS 2 packet ids: client id \0 pkid → empty (PUBREC sent, awaiting PUBREL) or
/// [`REAPPEND`] (routed to subscribers, but not acknowledged: its retry is appended to the
/// streams only).
pub const INCOMING: &str = "mqtt_incoming";
/// Retained messages: topic → [`Message`].
pub const RETAINED: &str = "mqtt_retained";

/// 2: session records carry the will (data written by version 1 is refused at start).
const FORMAT_VERSION: u8 = 2;

/// The value of an incoming QoS 2 entry whose retry must be appended again (see [`INCOMING`]).
pub const REAPPEND: &[u8] = b"r";

/// Why a stored value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// the storage layer failed
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// a value could not be decoded
    #[error("undecodable value in {space}: {detail}")]
    Decode {
        /// the space it was read from
        space: &'static str,
        /// what went wrong
        detail: String,
    },
}

/// What is stored for a persistent session besides its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session Expiry Interval, seconds.
    pub expiry_secs: u32,
    /// Subscriptions by raw filter.
    pub subscriptions: Vec<(String, SubOptions)>,
    /// When the record was written (ms since the epoch); expiry counts from here after a restart.
    pub saved_at_ms: i64,
    /// The will still to be published, if any.
    pub will: Option<StoredWill>,
}

/// A will that must outlive the node: set by a connected client, or pending its delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWill {
    /// The message to publish.
    pub message: Message,
    /// The username of the client that set it (the ACL is checked when it is published).
    pub username: Option<String>,
    /// Will Delay Interval, seconds.
    pub delay_secs: u32,
    /// When it is due (ms since the epoch); `None` while its client was connected, which a
    /// restart turns into a lost connection: due `delay_secs` after the node is back.
    pub publish_at_ms: Option<i64>,
}

/// A persisted session, as loaded at start (or handed over by another node of the cluster).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedSession {
    /// The client id.
    pub client_id: String,
    /// The record.
    pub record: SessionRecord,
    /// Messages on their way, by sequence number.
    pub outgoing: BTreeMap<u64, Outgoing>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: BTreeSet<u16>,
    /// Incoming QoS 2 packet ids routed to subscribers but never acknowledged.
    pub reappend: BTreeSet<u16>,
}

/// Encodes a value with the format version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // encoding plain serde data into a Vec cannot fail
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("bincode encoding into a vec");
    out
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(space: &'static str, bytes: &[u8]) -> Result<T, PersistError> {
    let error = |detail: String| PersistError::Decode { space, detail };
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map(|(value, _)| value)
            .map_err(|e| error(e.to_string())),
        Some((version, _)) => Err(error(format!("unknown format version {version}"))),
        None => Err(error("empty value".to_string())),
    }
}

fn key(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 1 + suffix.len());
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(suffix);
    key
}

fn prefix(client_id: &str) -> Vec<u8> {
    key(client_id, &[])
}

/// Writes the session record.
pub fn put_session(store: &dyn StateStore, client_id: &str, record: &SessionRecord) -> Result<(), PersistError> {
    Ok(store.put(SESSIONS, client_id.as_bytes(), &encode(record))?)
}

/// Replaces everything stored for a session in one atomic write: a crash leaves either the
/// old session or the new one, never a session half deleted.
pub fn replace_session<'a>(
    store: &dyn StateStore,
    client_id: &str,
    record: &SessionRecord,
    incoming: impl Iterator<Item = u16>,
    reappend: impl Iterator<Item = u16>,
    outgoing: impl Iterator<Item = (u64, &'a Outgoing)>,
) -> Result<(), PersistError> {
    let mut puts = vec![StateOp::Put { space: SESSIONS, key: client_id.as_bytes().to_vec(), value: encode(record) }];
    for pkid in incoming {
        puts.push(StateOp::Put { space: INCOMING, key: key(client_id, &pkid.to_be_bytes()), value: Vec::new() });
    }
    for pkid in reappend {
        puts.push(StateOp::Put { space: INCOMING, key: key(client_id, &pkid.to_be_bytes()), value: REAPPEND.to_vec() });
    }
    for (seq, entry) in outgoing {
        puts.push(StateOp::Put { space: OUTGOING, key: key(client_id, &seq.to_be_bytes()), value: encode(entry) });
    }
    let written: BTreeSet<(&'static str, Vec<u8>)> = puts
        .iter()
        .filter_map(|op| match op {
            StateOp::Put { space, key, .. } => Some((*space, key.clone())),
            StateOp::Delete { .. } => None,
        })
        .collect();
    // stale entries are deleted, but never a key that is written in the same batch (a batch
    // holding both for one key leaves the outcome to the store)
    let mut ops = Vec::new();
    for space in [OUTGOING, INCOMING] {
        for (key, _) in store.scan_prefix(space, &prefix(client_id))? {
            if !written.contains(&(space, key.clone())) {
                ops.push(StateOp::Delete { space, key });
            }
        }
    }
    ops.extend(puts);
    Ok(store.write_batch(ops)?)
}

/// Writes one outgoing entry.
pub fn put_outgoing(store: &dyn StateStore, client_id: &str, seq: u64, entry: &Outgoing) -> Result<(), PersistError> {
    Ok(store.put(OUTGOING, &key(client_id, &seq.to_be_bytes()), &encode(entry))?)
}

/// Deletes one outgoing entry.
pub fn delete_outgoing(store: &dyn StateStore, client_id: &str, seq: u64) -> Result<(), PersistError> {
    Ok(store.delete(OUTGOING, &key(client_id, &seq.to_be_bytes()))?)
}

/// Remembers an incoming QoS 2 packet id whose retry must be appended again.
pub fn put_reappend(store: &dyn StateStore, client_id: &str, pkid: u16) -> Result<(), PersistError> {
    Ok(store.put(INCOMING, &key(client_id, &pkid.to_be_bytes()), REAPPEND)?)
}

/// Remembers an incoming QoS 2 packet id.
pub fn put_incoming(store: &dyn StateStore, client_id: &str, pkid: u16) -> Result<(), PersistError> {
    Ok(store.put(INCOMING, &key(client_id, &pkid.to_be_bytes()), &[])?)
}

/// Forgets an incoming QoS 2 packet id.
pub fn delete_incoming(store: &dyn StateStore, client_id: &str, pkid: u16) -> Result<(), PersistError> {
    Ok(store.delete(INCOMING, &key(client_id, &pkid.to_be_bytes()))?)
}

/// Removes everything stored for a session.
pub fn delete_session(store: &dyn StateStore, client_id: &str) -> Result<(), PersistError> {
    store.write_batch(vec![StateOp::Delete { space: SESSIONS, key: client_id.as_bytes().to_vec() }])?;
    store.delete_prefix(OUTGOING, &prefix(client_id))?;
    store.delete_prefix(INCOMING, &prefix(client_id))?;
    Ok(())
}

/// Loads every persisted session.
pub fn load_sessions(store: &dyn StateStore) -> Result<Vec<LoadedSession>, PersistError> {
    let mut sessions = Vec::new();
    for (client_key, value) in store.scan_prefix(SESSIONS, &[])? {
        let client_id = String::from_utf8_lossy(&client_key).into_owned();
        let record: SessionRecord = decode(SESSIONS, &value)?;
        let mut outgoing = BTreeMap::new();
        for (entry_key, value) in store.scan_prefix(OUTGOING, &prefix(&client_id))? {
            let suffix = &entry_key[client_id.len() + 1..];
            let Ok(seq_bytes) = <[u8; 8]>::try_from(suffix) else { continue };
            outgoing.insert(u64::from_be_bytes(seq_bytes), decode(OUTGOING, &value)?);
        }
        let mut incoming_qos2 = BTreeSet::new();
        let mut reappend = BTreeSet::new();
        for (entry_key, value) in store.scan_prefix(INCOMING, &prefix(&client_id))? {
            let suffix = &entry_key[client_id.len() + 1..];
            if let Ok(pkid_bytes) = <[u8; 2]>::try_from(suffix) {
                let pkid = u16::from_be_bytes(pkid_bytes);
                if value == REAPPEND {
                    reappend.insert(pkid)
                } else {
                    incoming_qos2.insert(pkid)
                };
            }
        }
        sessions.push(LoadedSession { client_id, record, outgoing, incoming_qos2, reappend });
    }
    Ok(sessions)
}

/// Writes or clears a retained message.
pub fn put_retained(store: &dyn StateStore, message: &Message) -> Result<(), PersistError> {
    Ok(store.put(RETAINED, message.topic.as_bytes(), &encode(message))?)
}

/// Clears a retained message.
pub fn delete_retained(store: &dyn StateStore, topic: &str) -> Result<(), PersistError> {
    Ok(store.delete(RETAINED, topic.as_bytes())?)
}

/// Loads every retained message.
pub fn load_retained(store: &dyn StateStore) -> Result<Vec<Message>, PersistError> {
    store.scan_prefix(RETAINED, &[])?.into_iter().map(|(_, value)| decode(RETAINED, &value)).collect()
}
