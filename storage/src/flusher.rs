//! The background sync of [`crate::FsyncPolicy::Interval`], shared by both disk stores.
//!
//! One thread per store runs `sync` at the interval and once more when it is dropped. The
//! stores are only used outside the simulation (which uses `MemoryStore`), so this thread
//! is not a hole in what the simulation sees.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::StorageError;

/// A thread that calls a sync function at an interval until dropped.
pub(crate) struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread `name`, calling `sync` every `interval` and once when stopped.
    pub(crate) fn start(
        name: &str,
        interval: Duration,
        sync: impl Fn() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<Self, StorageError> {
        let interval = interval.max(Duration::from_millis(1));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                if let Err(error) = sync() {
                    tracing::error!(%error, "periodic fsync failed");
                }
            }
            if let Err(error) = sync() {
                tracing::error!(%error, "final fsync failed");
            }
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("fsync thread panicked");
        }
    }
}
