//! Tidewater's actors and protocol front ends.
//!
//! Every client session is a ractor actor over a sans-IO state machine; everything a node's
//! actors share lives in a [`NodeContext`] passed explicitly, never in globals.

pub mod context;
pub mod kafka;
pub mod log_limit;
mod lookup;
pub mod memory;
pub mod metrics;
pub mod mqtt;
pub use tidewater_cluster::{check_invariant, invariants, seams};
pub mod stream;

pub use context::{KafkaSettings, MqttSettings, NodeContext, NodeParts};
