//! The `tidewater` node: configuration, HTTP, and the wiring that starts a node.

pub mod cluster;
pub mod config;
pub mod controller;
pub mod http;
pub mod node;
pub mod replication;
pub mod tls;
pub mod upgrade;
pub mod ws;
