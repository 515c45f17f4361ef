//! The Kafka error codes this server answers with (Kafka's `Errors.java`).

/// No error.
pub const NONE: i16 = 0;
/// The requested offset is not within the range of offsets held.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// The message failed its CRC check or is otherwise corrupt.
pub const CORRUPT_MESSAGE: i16 = 2;
/// This server does not host this topic-partition.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// There is no leader for this partition right now (an election is under way): retriable.
pub const LEADER_NOT_AVAILABLE: i16 = 5;
/// This server is not the leader of this partition: refresh metadata and retry there.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// The request timed out (here: the cluster did not answer in time).
pub const REQUEST_TIMED_OUT: i16 = 7;
/// The request included a message larger than the maximum the server accepts.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// The coordinator is still loading the group's offsets.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// The coordinator is loading or not available.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// This broker is not the group's coordinator.
pub const NOT_COORDINATOR: i16 = 16;
/// Fewer replicas are in sync than `min.insync.replicas` (here: than a majority), so an
/// `acks=all` produce is refused before it is appended: retriable.
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
/// The member id is not in the group (or the group is unknown).
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// The topic name is invalid.
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
/// Not authorized to access this topic (here: a produce to a bound, read-only stream).
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// Not authorized to use this consumer group.
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
/// The client asked for a SASL mechanism the node does not offer.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// A SASL request out of its order (SaslAuthenticate before SaslHandshake).
pub const ILLEGAL_SASL_STATE: i16 = 34;
/// Not authorized for a cluster-level operation.
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
/// The version of the API is not supported.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// SASL authentication failed: unknown user or wrong password.
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// A topic with this name already exists.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// The number of partitions is invalid.
pub const INVALID_PARTITIONS: i16 = 37;
/// The replication factor is invalid.
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
/// The replica assignment is invalid.
pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
/// The configuration is invalid.
pub const INVALID_CONFIG: i16 = 40;
/// The client's leader epoch is older than the leader's: refresh metadata.
pub const FENCED_LEADER_EPOCH: i16 = 74;
/// The client's leader epoch is newer than this replica knows: retry.
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
/// This is not the cluster's controller: refresh metadata (its `controller_id`) and retry.
pub const NOT_CONTROLLER: i16 = 41;
/// The request is malformed or not supported.
pub const INVALID_REQUEST: i16 = 42;
/// The broker received an out of order sequence number.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// The producer attempted to use an epoch older than the current one.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// Transactions are not supported by this server.
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
/// Disk error when trying to access the log.
pub const KAFKA_STORAGE_ERROR: i16 = 56;
/// The group id does not exist.
pub const GROUP_ID_NOT_FOUND: i16 = 69;
/// The resource named does not exist.
pub const RESOURCE_NOT_FOUND: i16 = 91;
/// The resource is named twice in one request.
pub const DUPLICATE_RESOURCE: i16 = 92;
/// The credential does not meet the criteria for acceptability.
pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;
/// An unexpected server error.
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
