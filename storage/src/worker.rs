//! A named thread fed by a channel, stopped by dropping: the one shape of both store
//! threads (the interval fsync and the segment writer).
//!
//! The disk stores are only used outside the simulation (which uses `MemoryStore`), so
//! these threads are not a hole in what the simulation sees.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::mpsc;
use std::thread::JoinHandle;

/// A thread that takes messages until dropped; dropping closes its queue, so the thread
/// finishes what is queued, and joins it.
pub(crate) struct QueueThread<T> {
    name: String,
    queue: Option<mpsc::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> QueueThread<T> {
    /// Starts the thread `name` running `body` over the receiving end of its queue.
    pub(crate) fn start(name: &str, body: impl FnOnce(mpsc::Receiver<T>) + Send + 'static) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::channel::<T>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || body(receiver))?;
        Ok(Self { name: name.to_owned(), queue: Some(queue), thread: Some(thread) })
    }

    /// Queues `message`; gives it back if the thread has stopped.
    pub(crate) fn send(&self, message: T) -> Result<(), T> {
        match &self.queue {
            Some(queue) => queue.send(message).map_err(|mpsc::SendError(message)| message),
            None => Err(message),
        }
    }
}

impl<T> Drop for QueueThread<T> {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(thread = %self.name, "store thread panicked");
        }
    }
}
