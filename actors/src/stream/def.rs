//! What a stream is: its name, kind, partitions and retention, with the validation that
//! gives a clear error for a bad definition.

use serde::{Deserialize, Serialize};

use crate::mqtt::topic;

/// How a bound stream spreads MQTT messages over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PartitionStrategy {
    /// Hash of the MQTT topic: per-topic order holds.
    #[default]
    Topic,
    /// Hash of the publishing client id: per-client order holds.
    ClientId,
    /// Round robin over partitions.
    RoundRobin,
}

/// Bound (fed by MQTT, read-only for Kafka) or free (Kafka read-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Collects every MQTT publish matching its filter; Kafka clients may only read.
    Bound,
    /// Read and written by Kafka clients.
    Free,
}

/// A stream's definition, as declared in the config, over HTTP or by CreateTopics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDef {
    /// The stream (Kafka topic) name.
    pub name: String,
    /// Bound or free.
    pub kind: StreamKind,
    /// MQTT topic filter of a bound stream.
    #[serde(default)]
    pub filter: Option<String>,
    /// Number of partitions.
    #[serde(default = "one")]
    pub partitions: u32,
    /// Replication factor: replicas per partition (a node of a cluster places them; a node
    /// alone takes only 1).
    #[serde(default = "one_u16")]
    pub replication_factor: u16,
    /// Delete batches older than this (ms); none = keep forever.
    #[serde(default)]
    pub retention_ms: Option<i64>,
    /// Delete the oldest batches when a partition is larger than this (bytes); none = no limit.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// Partition strategy of a bound stream.
    #[serde(default)]
    pub partition_strategy: PartitionStrategy,
}

fn one() -> u32 {
    1
}

fn one_u16() -> u16 {
    1
}

/// Why a stream definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamDefError {
    /// the name breaks Kafka's topic name rules
    #[error("invalid stream name {0:?}: 1 to 249 characters of [a-zA-Z0-9._-], not \".\" or \"..\"")]
    InvalidName(String),
    /// a bound stream needs a valid MQTT topic filter; a free one must not have one
    #[error("{0}")]
    InvalidFilter(String),
    /// partitions out of range
    #[error("partitions must be between 1 and 10000")]
    InvalidPartitions,
    /// replication factor out of range
    #[error("replication_factor must be 1 to 7")]
    InvalidReplicationFactor,
    /// retention out of range
    #[error("retention_ms and retention_bytes must be positive")]
    InvalidRetention,
}

/// Whether `name` is a legal Kafka topic name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl StreamDef {
    /// A free stream with defaults (Kafka auto-creation).
    pub fn free(name: &str, partitions: u32) -> Self {
        Self {
            name: name.to_string(),
            kind: StreamKind::Free,
            filter: None,
            partitions,
            replication_factor: 1,
            retention_ms: None,
            retention_bytes: None,
            partition_strategy: PartitionStrategy::Topic,
        }
    }

    /// Checks that `new` may replace this definition of a running stream: only the retention
    /// and (upward) the partition count change; `new` is valid.
    pub fn check_change(&self, new: &StreamDef) -> Result<(), crate::stream::registry::StreamError> {
        use crate::stream::registry::StreamError;
        new.validate()?;
        let immutable = |field| Err(StreamError::Immutable { name: self.name.clone(), field });
        if new.name != self.name {
            return immutable("the name");
        }
        if new.kind != self.kind {
            return immutable("the kind");
        }
        if new.filter != self.filter {
            return immutable("the MQTT filter");
        }
        if new.replication_factor != self.replication_factor {
            return immutable("the replication factor");
        }
        if new.partition_strategy != self.partition_strategy {
            return immutable("the partition strategy");
        }
        if new.partitions < self.partitions {
            return Err(StreamError::PartitionsNotIncreased { name: self.name.clone(), current: self.partitions });
        }
        Ok(())
    }

    /// Checks the definition.
    pub fn validate(&self) -> Result<(), StreamDefError> {
        if !valid_name(&self.name) {
            return Err(StreamDefError::InvalidName(self.name.clone()));
        }
        match (self.kind, &self.filter) {
            (StreamKind::Bound, None) => {
                return Err(StreamDefError::InvalidFilter("a bound stream needs a filter".into()));
            }
            (StreamKind::Bound, Some(filter)) => {
                let parsed = topic::parse_filter(filter)
                    .map_err(|e| StreamDefError::InvalidFilter(format!("invalid filter {filter:?}: {e}")))?;
                if parsed.share_group.is_some() {
                    return Err(StreamDefError::InvalidFilter(
                        "a stream filter cannot be a shared subscription".into(),
                    ));
                }
            }
            (StreamKind::Free, Some(_)) => {
                return Err(StreamDefError::InvalidFilter("a free stream has no filter".into()));
            }
            (StreamKind::Free, None) => {}
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(StreamDefError::InvalidPartitions);
        }
        if !(1..=MAX_REPLICATION_FACTOR).contains(&self.replication_factor) {
            return Err(StreamDefError::InvalidReplicationFactor);
        }
        if self.retention_ms.is_some_and(|ms| ms <= 0) || self.retention_bytes == Some(0) {
            return Err(StreamDefError::InvalidRetention);
        }
        Ok(())
    }
}

/// The most replicas a partition can have (a raft group of more voters gains nothing).
pub const MAX_REPLICATION_FACTOR: u16 = 7;

/// A deterministic 32-bit hash (FNV-1a) for partition choice; never `std`'s random hasher.
pub fn partition_hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(valid_name("sensors.temp_1-a"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(250)));
    }

    #[test]
    fn bound_needs_filter_and_free_refuses_one() {
        let mut def = StreamDef::free("s", 3);
        assert_eq!(def.validate(), Ok(()));
        def.kind = StreamKind::Bound;
        assert!(matches!(def.validate(), Err(StreamDefError::InvalidFilter(_))));
        def.filter = Some("sensors/+/temp".into());
        assert_eq!(def.validate(), Ok(()));
        def.filter = Some("a/#/b".into());
        assert!(matches!(def.validate(), Err(StreamDefError::InvalidFilter(_))));
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(partition_hash(b""), 0x811c_9dc5);
        assert_eq!(partition_hash(b"a"), 0xe40c_292c);
    }
}
