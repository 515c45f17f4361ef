//! Deterministic whole-cluster simulation (turmoil), fault plans and invariant checkers.
//!
//! Empty until replication lands: the simulation exists to check the replication protocol,
//! and there is none yet. Node code already reaches sockets, time, randomness and storage
//! only through seams, so that this crate can swap them.
