//! The Kafka protocol front end: wire codec, connections, request handlers, consumer groups.

pub mod codes;
pub mod group;
pub mod group_place;
pub mod group_state;
pub mod handlers;
pub mod producer_ids;
pub mod sasl;
pub mod server;
pub mod wire;
