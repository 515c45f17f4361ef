//! The layer below the actors: the seams through which node code reaches sockets, time and
//! randomness (so that the simulation can swap them), and the invariant catalogue that
//! production code and the simulation's checker share.
//!
//! Membership (chitchat), placement and the data-plane RPC channel join this crate with the
//! cluster issue.

pub mod data_plane;
pub mod invariants;
pub mod membership;
pub mod metrics;
pub mod raft;
pub mod seams;

pub use invariants::InvariantId;
