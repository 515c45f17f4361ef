//! The background sync of [`crate::FsyncPolicy::Interval`], shared by both disk stores.
//!
//! One thread per store runs `sync` at the interval and once more when it is dropped.
#![allow(clippy::disallowed_types)]

use std::sync::mpsc;
use std::time::Duration;

use crate::StorageError;
use crate::worker::QueueThread;

/// A thread that calls a sync function at an interval until dropped.
pub(crate) struct Flusher {
    _thread: QueueThread<()>,
}

impl Flusher {
    /// Starts the thread `name`, calling `sync` every `interval` and once when stopped.
    pub(crate) fn start(
        name: &str,
        interval: Duration,
        sync: impl Fn() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<Self, StorageError> {
        let interval = interval.max(Duration::from_millis(1));
        let thread = QueueThread::start(name, move |stopped| {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                if let Err(error) = sync() {
                    tracing::error!(%error, "periodic fsync failed");
                }
            }
            if let Err(error) = sync() {
                tracing::error!(%error, "final fsync failed");
            }
        })?;
        Ok(Self { _thread: thread })
    }
}
