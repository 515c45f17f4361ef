//! The one error type of the storage crate.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The partition was never created or has been deleted.
    #[error("unknown partition {stream}/{partition}")]
    UnknownPartition {
        /// The stream name.
        stream: String,
        /// The partition index.
        partition: u32,
    },
    /// The bytes are not a valid uncorrupted RecordBatch v2 (or hold an invalid record).
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// A read asked for an offset outside `[log_start, log_end]`.
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: i64,
        /// The partition's log start offset.
        log_start: i64,
        /// The partition's log end offset.
        log_end: i64,
    },
    /// An append was for another offset than the log end.
    #[error("append at offset {expected}, but the log ends at {log_end}")]
    NotAtLogEnd {
        /// Where the append was meant to start.
        expected: i64,
        /// Where the log ends.
        log_end: i64,
    },
    /// An fsync policy string did not parse.
    #[error("invalid fsync policy {0:?}: expected \"always\" or \"interval:<ms>\"")]
    InvalidFsyncPolicy(String),
    /// A state space name that fjall cannot hold (empty or too long).
    #[error("invalid state space name {0:?}")]
    InvalidSpaceName(String),
    /// Stored metadata could not be decoded.
    #[error("corrupt storage metadata: {0}")]
    CorruptMetadata(String),
    /// The embedded fjall database failed.
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    /// A file-system operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// A [`StorageError::InvalidBatch`] with the given reason.
    pub(crate) fn invalid_batch(reason: impl Into<String>) -> Self {
        Self::InvalidBatch(reason.into())
    }

    /// A [`StorageError::UnknownPartition`] for `id`.
    pub(crate) fn unknown_partition(id: &crate::PartitionId) -> Self {
        Self::UnknownPartition { stream: id.stream.clone(), partition: id.partition }
    }
}
