//! The public vocabulary of the group state machine: requests, responses, outputs, offsets and settings.

use bytes::Bytes;

/// Opaque handle that the host maps to the reply channel of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyToken(pub u64);

/// Kafka error codes that the group coordinator answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorCode {
    /// Success (NONE, 0).
    #[error("no error")]
    NoError,
    /// OFFSET_METADATA_TOO_LARGE (12).
    #[error("offset metadata too large")]
    OffsetMetadataTooLarge,
    /// COORDINATOR_NOT_AVAILABLE (15).
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    /// NOT_COORDINATOR (16).
    #[error("not coordinator")]
    NotCoordinator,
    /// ILLEGAL_GENERATION (22).
    #[error("illegal generation")]
    IllegalGeneration,
    /// INCONSISTENT_GROUP_PROTOCOL (23).
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    /// UNKNOWN_MEMBER_ID (25).
    #[error("unknown member id")]
    UnknownMemberId,
    /// INVALID_SESSION_TIMEOUT (26).
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    /// REBALANCE_IN_PROGRESS (27).
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// NON_EMPTY_GROUP (68).
    #[error("non-empty group")]
    NonEmptyGroup,
    /// GROUP_ID_NOT_FOUND (69).
    #[error("group id not found")]
    GroupIdNotFound,
    /// MEMBER_ID_REQUIRED (79).
    #[error("member id required")]
    MemberIdRequired,
    /// GROUP_MAX_SIZE_REACHED (81).
    #[error("group max size reached")]
    GroupMaxSizeReached,
    /// FENCED_INSTANCE_ID (82).
    #[error("fenced instance id")]
    FencedInstanceId,
}

impl ErrorCode {
    /// The code as it goes on the wire.
    pub const fn code(self) -> i16 {
        match self {
            Self::NoError => 0,
            Self::OffsetMetadataTooLarge => 12,
            Self::CoordinatorNotAvailable => 15,
            Self::NotCoordinator => 16,
            Self::IllegalGeneration => 22,
            Self::InconsistentGroupProtocol => 23,
            Self::UnknownMemberId => 25,
            Self::InvalidSessionTimeout => 26,
            Self::RebalanceInProgress => 27,
            Self::NonEmptyGroup => 68,
            Self::GroupIdNotFound => 69,
            Self::MemberIdRequired => 79,
            Self::GroupMaxSizeReached => 81,
            Self::FencedInstanceId => 82,
        }
    }
}

/// Group coordinator settings, Kafka's `group.*` and `offset.metadata.max.bytes` broker configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Smallest session timeout a member may ask for (`group.min.session.timeout.ms`, 6000).
    pub min_session_timeout_ms: i32,
    /// Largest session timeout a member may ask for (`group.max.session.timeout.ms`, 1800000).
    pub max_session_timeout_ms: i32,
    /// How long the first rebalance of an empty group waits for more members
    /// (`group.initial.rebalance.delay.ms`); Kafka's default is 3000, ours 0 so a lone consumer starts at once.
    pub initial_rebalance_delay_ms: i32,
    /// Most members a group may hold (`group.max.size`, unbounded by default).
    pub max_size: usize,
    /// Longest commit metadata string accepted (`offset.metadata.max.bytes`, 4096).
    pub max_metadata_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 0,
            max_size: usize::MAX,
            max_metadata_bytes: 4096,
        }
    }
}

/// A [`GroupConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupConfigError {
    /// `min_session_timeout_ms` is zero or negative.
    #[error("min_session_timeout_ms must be positive, got {0}")]
    NonPositiveMinSessionTimeout(i32),
    /// `min_session_timeout_ms` exceeds `max_session_timeout_ms`.
    #[error("min_session_timeout_ms ({min}) must not exceed max_session_timeout_ms ({max})")]
    SessionTimeoutBounds {
        /// The configured minimum.
        min: i32,
        /// The configured maximum.
        max: i32,
    },
    /// `initial_rebalance_delay_ms` is negative.
    #[error("initial_rebalance_delay_ms must not be negative, got {0}")]
    NegativeInitialRebalanceDelay(i32),
    /// `max_size` is zero.
    #[error("max_size must be at least 1")]
    ZeroMaxSize,
}

impl GroupConfig {
    /// Checks that the settings are usable.
    pub fn validate(&self) -> Result<(), GroupConfigError> {
        if self.min_session_timeout_ms <= 0 {
            return Err(GroupConfigError::NonPositiveMinSessionTimeout(self.min_session_timeout_ms));
        }
        if self.min_session_timeout_ms > self.max_session_timeout_ms {
            return Err(GroupConfigError::SessionTimeoutBounds {
                min: self.min_session_timeout_ms,
                max: self.max_session_timeout_ms,
            });
        }
        if self.initial_rebalance_delay_ms < 0 {
            return Err(GroupConfigError::NegativeInitialRebalanceDelay(self.initial_rebalance_delay_ms));
        }
        if self.max_size == 0 {
            return Err(GroupConfigError::ZeroMaxSize);
        }
        Ok(())
    }
}

/// The state of a group, as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupPhase {
    /// No members; offsets may still be committed by simple consumers.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Join phase done, waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted or unloaded; the host should drop it.
    Dead,
}

impl GroupPhase {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
            Self::Dead => "Dead",
        }
    }
}

/// A JoinGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The member id, empty on a first join.
    pub member_id: String,
    /// The static member id (KIP-345), if any.
    pub group_instance_id: Option<String>,
    /// The client id from the request header.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// How long the member may go without a heartbeat.
    pub session_timeout_ms: i32,
    /// How long a rebalance may wait for this member (v0: the session timeout; negative means that too).
    pub rebalance_timeout_ms: i32,
    /// The protocol type, "consumer" for consumers.
    pub protocol_type: String,
    /// The protocols the member supports, most preferred first, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// The JoinGroup version; v4 and later get MEMBER_ID_REQUIRED on a first join.
    pub api_version: i16,
}

/// A SyncGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// The member id.
    pub member_id: String,
    /// The generation the member believes in.
    pub generation_id: i32,
    /// The leader's assignment per member id; empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

/// One member named in a LeaveGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveMember {
    /// The member id; may be empty when the instance id names the member.
    pub member_id: String,
    /// The static member id, if any.
    pub group_instance_id: Option<String>,
}

/// One partition of an OffsetCommit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitEntry {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to consume.
    pub offset: i64,
    /// The leader epoch of the last consumed record, -1 if unknown.
    pub leader_epoch: i32,
    /// Free-form client metadata.
    pub metadata: Option<String>,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// The member id.
    pub member_id: String,
    /// The static member id, if any.
    pub group_instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// The result of a JoinGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    /// The error code.
    pub error: ErrorCode,
    /// The new generation, -1 on error.
    pub generation_id: i32,
    /// The group's protocol type (JoinGroup v7+).
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id, empty on error.
    pub leader: String,
    /// The member id of the requester (the generated one for MEMBER_ID_REQUIRED).
    pub member_id: String,
    /// Every member with its metadata for the leader, empty for followers.
    pub members: Vec<JoinedMember>,
}

/// The result of a SyncGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    /// The error code.
    pub error: ErrorCode,
    /// The group's protocol type (SyncGroup v5+).
    pub protocol_type: Option<String>,
    /// The group's protocol (SyncGroup v5+).
    pub protocol_name: Option<String>,
    /// The member's assignment, empty on error.
    pub assignment: Bytes,
}

/// The result of a Heartbeat request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// The error code.
    pub error: ErrorCode,
}

/// The outcome for one member of a LeaveGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveMemberResult {
    /// The member id as requested.
    pub member_id: String,
    /// The instance id as requested.
    pub group_instance_id: Option<String>,
    /// The error code for this member.
    pub error: ErrorCode,
}

/// The result of a LeaveGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveResponse {
    /// The top-level error code.
    pub error: ErrorCode,
    /// One result per requested member (v3+; older versions use the first).
    pub members: Vec<LeaveMemberResult>,
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A JoinGroup reply.
    Join(JoinResponse),
    /// A SyncGroup reply.
    Sync(SyncResponse),
    /// A Heartbeat reply.
    Heartbeat(HeartbeatResponse),
    /// A LeaveGroup reply.
    Leave(LeaveResponse),
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: i64,
    /// The leader epoch, -1 if unknown.
    pub leader_epoch: i32,
    /// Client metadata ("" when none was sent).
    pub metadata: String,
    /// When the commit was accepted.
    pub commit_timestamp_ms: i64,
}

/// One stored offset change: a commit, or a deletion when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset, `None` for a tombstone.
    pub value: Option<CommittedOffset>,
}

/// Offset changes the host must store durably (and replay with [`GroupState::restore_offsets`](super::GroupState::restore_offsets)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedOffsets {
    /// The group they belong to.
    pub group_id: String,
    /// The changes, in order.
    pub records: Vec<OffsetRecord>,
}

/// Something the host must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this response to the request behind the token.
    Reply(ReplyToken, Response),
    /// Store these offset changes durably.
    Persist(PersistedOffsets),
}

/// The outcome for one partition of an OffsetCommit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitResult {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The error code.
    pub error: ErrorCode,
}

/// The result of an OffsetCommit request; reply once the `Persist` outputs are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// One result per partition, in request order.
    pub results: Vec<OffsetCommitResult>,
    /// Outputs: the `Persist` of the accepted offsets, and replies due from expired deadlines.
    pub outputs: Vec<Output>,
}

/// One partition of an OffsetFetch answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset, -1 if none.
    pub offset: i64,
    /// The leader epoch, -1 if unknown.
    pub leader_epoch: i32,
    /// Client metadata, "" if none.
    pub metadata: String,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id.
    pub member_id: String,
    /// The static member id, if any.
    pub group_instance_id: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Metadata for the chosen protocol (only when Stable, as in Kafka).
    pub metadata: Bytes,
    /// The assignment (only when Stable, as in Kafka).
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// The state, as Kafka spells it.
    pub state: &'static str,
    /// The protocol type, "" if none.
    pub protocol_type: String,
    /// The chosen protocol, "" unless Stable.
    pub protocol: String,
    /// The members, oldest first.
    pub members: Vec<MemberDescription>,
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// The protocol type, "" if none.
    pub protocol_type: String,
    /// The state, as Kafka spells it.
    pub state: &'static str,
}
