//! The MQTT 3.1.1 and 5.0 broker: codec, topics, sessions, routing, auth.

mod ack_gate;
pub mod auth;
pub mod cluster_routes;
pub mod codec;
pub mod connection;
pub mod http_auth;
pub mod jwt;
pub mod message;
pub mod outbox;
pub mod persist;
pub mod registry;
pub mod retained;
pub mod router;
pub mod session;
pub mod session_state;
pub mod topic;
pub mod trie;
