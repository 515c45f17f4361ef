//! Lean MQTT 3.1.1 and Kafka clients shared by the benchmark and the deterministic simulation.
//!
//! Neither reads a clock nor opens a socket on its own (only [`kafka::KafkaConn::connect`]
//! does, for the bench): callers pass time in and hand over any `AsyncRead + AsyncWrite`
//! stream, a TCP socket or a simulated one.
// The crate allows the clock seams for its process helpers; these clients run under simulation.
#![deny(clippy::disallowed_methods)]

pub mod kafka;
pub mod mqtt_wire;
