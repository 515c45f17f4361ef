//! The hand-over between a session actor and its connection task.
//!
//! A connection is one tokio task that owns the socket: it reads and decodes packets for the
//! session actor and writes what the session put in the connection's [`Outbox`]. The outbox is
//! a byte buffer under a lock plus one [`Notify`]: the session appends encoded packets and wakes
//! the task; the task takes everything at once and writes it with one syscall. The same wake
//! also tells the task that the session consumed a batch of inbound packets (read credit) or
//! asked for the connection to close.
//!
//! This replaced a bounded channel of frames, a separate writer task and a watch channel
//! (about 3.5 KB per idle connection, and one more thread hand-over per message).

use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Bytes buffered for a connection before the session treats it as congested and queues
/// further deliveries in its own (bounded) session queue instead.
pub const HIGH_WATER: usize = 256 * 1024;
/// Decoded batches a connection may have in its session's mailbox at once.
pub const INBOUND_CREDIT: usize = 16;

/// What [`Outbox::push`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered; the connection keeps up.
    Ok,
    /// Buffered, but the connection is behind: a `Writable` notice follows once it drained.
    Congested,
    /// The connection is gone; the bytes were dropped.
    Gone,
}

#[derive(Default)]
struct Inner {
    bytes: BytesMut,
    close: bool,
    gone: bool,
    want_writable: bool,
    inbound_in_flight: usize,
}

/// Shared between one session actor and one connection task.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    wake: Notify,
}

/// What the connection task takes out of the outbox in one go.
#[derive(Debug, Default)]
pub struct Taken {
    /// Whether the session asked to close once these bytes are written.
    pub close: bool,
    /// Whether the session waits for a `Writable` notice (the outbox just drained).
    pub notify_writable: bool,
}

impl Outbox {
    /// A fresh outbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Session side: appends `out` (leaving it empty) and wakes the connection.
    pub fn push(&self, out: &mut BytesMut) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.gone || inner.close {
            out.clear();
            return Pushed::Gone;
        }
        if inner.bytes.is_empty() {
            std::mem::swap(&mut inner.bytes, out);
        } else {
            inner.bytes.extend_from_slice(out);
            out.clear();
        }
        let congested = inner.bytes.len() >= HIGH_WATER;
        if congested {
            inner.want_writable = true;
        }
        drop(inner);
        self.wake.notify_one();
        if congested { Pushed::Congested } else { Pushed::Ok }
    }

    /// Session side: close the connection after writing what is buffered.
    pub fn close(&self) {
        self.inner.lock().close = true;
        self.wake.notify_one();
    }

    /// Connection side, once everything taken before is written: swaps the buffered bytes into
    /// `into` (which must be empty, and whose capacity the outbox keeps for reuse). Tells the
    /// caller to send the session a `Writable` notice when the session was congested and what
    /// is left is below the high-water mark.
    pub fn take(&self, into: &mut BytesMut) -> Taken {
        let mut inner = self.inner.lock();
        debug_assert!(into.is_empty());
        std::mem::swap(&mut inner.bytes, into);
        let notify_writable = inner.want_writable && into.len() < HIGH_WATER;
        if notify_writable {
            inner.want_writable = false;
        }
        Taken { close: inner.close, notify_writable }
    }

    /// Connection side: the connection ended; later pushes are dropped.
    pub fn set_gone(&self) {
        let mut inner = self.inner.lock();
        inner.gone = true;
        inner.bytes = BytesMut::new();
    }

    /// Connection side: whether a unit of read credit is free.
    pub fn has_credit(&self) -> bool {
        self.inner.lock().inbound_in_flight < INBOUND_CREDIT
    }

    /// Connection side: takes one unit of read credit if there is one.
    pub fn try_take_credit(self: &Arc<Self>) -> Option<InboundCredit> {
        let mut inner = self.inner.lock();
        if inner.inbound_in_flight >= INBOUND_CREDIT {
            return None;
        }
        inner.inbound_in_flight += 1;
        Some(InboundCredit(Arc::clone(self)))
    }

    /// Connection side: waits for the next push, close or returned credit.
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// One batch of inbound packets in the session's mailbox; returns its credit when dropped.
pub struct InboundCredit(Arc<Outbox>);

impl Drop for InboundCredit {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock();
        let was_exhausted = inner.inbound_in_flight >= INBOUND_CREDIT;
        inner.inbound_in_flight -= 1;
        drop(inner);
        if was_exhausted {
            self.0.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for InboundCredit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundCredit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_take_roundtrip_keeps_order_and_reports_congestion() {
        let outbox = Outbox::new();
        let mut out = BytesMut::from(&b"ab"[..]);
        assert_eq!(outbox.push(&mut out), Pushed::Ok);
        assert!(out.is_empty());
        out.extend_from_slice(b"cd");
        assert_eq!(outbox.push(&mut out), Pushed::Ok);
        let mut taken = BytesMut::new();
        let t = outbox.take(&mut taken);
        assert_eq!(&taken[..], b"abcd");
        assert!(!t.close && !t.notify_writable);

        let mut big = BytesMut::from(&vec![7u8; HIGH_WATER][..]);
        assert_eq!(outbox.push(&mut big), Pushed::Congested);
        let mut taken = BytesMut::new();
        assert!(!outbox.take(&mut taken).notify_writable, "still a full batch to write");
        assert_eq!(taken.len(), HIGH_WATER);
        let mut next = BytesMut::new();
        assert!(outbox.take(&mut next).notify_writable, "once written and drained, the session hears of it");
        assert!(!outbox.take(&mut BytesMut::new()).notify_writable, "once");
    }

    #[test]
    fn close_and_gone_drop_later_pushes() {
        let outbox = Outbox::new();
        outbox.close();
        let mut out = BytesMut::from(&b"x"[..]);
        assert_eq!(outbox.push(&mut out), Pushed::Gone);
        assert!(outbox.take(&mut BytesMut::new()).close);
        let other = Outbox::new();
        other.set_gone();
        assert_eq!(other.push(&mut BytesMut::from(&b"y"[..])), Pushed::Gone);
    }

    #[test]
    fn credit_is_bounded_and_returned_on_drop() {
        let outbox = Outbox::new();
        let credits: Vec<_> = (0..INBOUND_CREDIT).map(|_| outbox.try_take_credit().expect("credit")).collect();
        assert!(outbox.try_take_credit().is_none());
        drop(credits);
        assert!(outbox.try_take_credit().is_some());
    }
}
