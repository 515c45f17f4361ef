//! Deterministic simulation of Tidewater under turmoil.
//!
//! One seed draws everything: the options of the run (fsync policy, fault mix), the fault
//! plan, the workload's choices, the node's RNG and tokio's (`--cfg tokio_unstable`, which
//! `simulation/run` and `tests/run` set for a build of its own in `target/sim`). The node is the production node (`Node::start` with the same actors
//! and state machines) on simulated sockets, a simulated clock and the in-memory store with
//! crash semantics; the workload speaks the real MQTT and Kafka wire protocols through the
//! repository's one lean client (`tidewater_tests::clients`). A checker holds what the node
//! acknowledged against what it reads back after a liveness phase, using the invariant
//! catalogue of `tidewater_cluster::invariants`.

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod history;
pub mod net;
pub mod options;
pub mod run;
pub mod workload;

pub use options::Options;
pub use run::{SeedReport, run_seed};
