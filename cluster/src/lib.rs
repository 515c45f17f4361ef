//! The layer below the actors: the seams through which node code reaches sockets, time and
//! randomness (so that the simulation can swap them), the invariant catalogue that production
//! code and the simulation's checker share, and the cluster's machinery: membership (gossip),
//! the data plane between nodes, consensus (raft-rs, wrapped), placement of replicas and the
//! controller's metadata state machine.

pub mod controller;
pub mod data_plane;
pub mod invariants;
pub mod membership;
pub mod metrics;
pub mod placement;
pub mod raft;
pub mod seams;

pub use invariants::InvariantId;
