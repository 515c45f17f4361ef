//! Streams: durable, partitioned logs of Kafka record batches, fed by MQTT (bound streams)
//! or by Kafka producers (free streams).

pub mod catalog;
pub mod def;
pub mod partition;
pub mod registry;
pub mod replicated;
