//! MQTT publisher and subscriber connections that load a broker: one task per connection,
//! non-blocking reads and writes on one socket, publishes pipelined up to an in-flight window
//! and written in batches of up to 64 KiB.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tidewater_tests::clients::mqtt_wire::{self as wire, CONNACK, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

use crate::report;

const BATCH_BYTES: usize = 64 * 1024;
const READ_BYTES: usize = 256 * 1024;

/// Counters shared by every connection of a run, read by the progress line and the report.
pub(crate) struct Shared {
    /// Timestamps in payloads are nanoseconds since this instant.
    pub(crate) base: Instant,
    /// PUBLISH packets written by publishers.
    pub(crate) sent: AtomicU64,
    /// QoS 1/2 publishes completed (PUBACK / PUBCOMP received).
    pub(crate) acked: AtomicU64,
    /// PUBLISH packets received by subscribers.
    pub(crate) received: AtomicU64,
    /// Deliveries received per (publisher, subscriber), at `publisher * subscribers + subscriber`,
    /// for the end-to-end window.
    pub(crate) delivered: Vec<AtomicU64>,
    /// Subscribers of the run.
    pub(crate) subscribers: usize,
    /// Wakes a publisher waiting on its end-to-end window.
    pub(crate) wake: Vec<Notify>,
    /// Latencies of messages sent at or after this many ns since `base` are recorded.
    pub(crate) measure_from_ns: AtomicU64,
}

impl Shared {
    /// Counters for `publishers` publishers and `subscribers` subscribers.
    pub(crate) fn new(publishers: usize, subscribers: usize) -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            delivered: (0..publishers * subscribers).map(|_| AtomicU64::new(0)).collect(),
            subscribers,
            wake: (0..publishers).map(|_| Notify::new()).collect(),
            measure_from_ns: AtomicU64::new(u64::MAX),
        })
    }

    /// Nanoseconds since `base`.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// Opens a TCP connection from `source` (any port) to `broker`, sends CONNECT and waits for
/// a successful CONNACK.
pub(crate) async fn connect(
    broker: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    keepalive: u16,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let mut stream = socket.connect(broker).await?;
    stream.set_nodelay(true)?;
    let mut out = Vec::with_capacity(64);
    wire::connect(&mut out, client_id, keepalive);
    stream.write_all(&out).await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    if buf[0] >> 4 != CONNACK || buf[3] != 0 {
        return Err(io::Error::other(format!("connect refused: {buf:?}")));
    }
    Ok(stream)
}

/// Subscribes to `filter` and waits for the SUBACK.
pub(crate) async fn subscribe(stream: &mut TcpStream, filter: &str, qos: u8) -> io::Result<()> {
    let mut out = Vec::with_capacity(64);
    wire::subscribe(&mut out, 1, filter, qos);
    stream.write_all(&out).await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    if buf[0] >> 4 != SUBACK || buf[4] & 0x80 != 0 {
        return Err(io::Error::other(format!("subscribe refused: {buf:?}")));
    }
    Ok(())
}

/// What one publisher does.
#[derive(Clone)]
pub(crate) struct PublisherPlan {
    /// Publisher id written in every payload.
    pub(crate) id: u32,
    /// Topic it publishes to.
    pub(crate) topic: String,
    /// QoS of its publishes.
    pub(crate) qos: u8,
    /// Payload bytes (at least the 20-byte stamp).
    pub(crate) payload: usize,
    /// QoS 1/2 publishes awaiting their ack, at most.
    pub(crate) inflight: usize,
    /// Messages sent but not yet received by every subscriber, at most (0 = no limit).
    pub(crate) window: u64,
    /// Subscribers that receive each of its messages (the window waits for the slowest).
    pub(crate) audience: Vec<usize>,
    /// Messages per second (0 = as fast as allowed).
    pub(crate) rate: f64,
    /// Messages to send (0 = until the deadline).
    pub(crate) count: u64,
    /// When to stop sending.
    pub(crate) deadline: tokio::time::Instant,
}

/// What a publisher did.
#[derive(Default, Clone, Copy)]
pub(crate) struct PublisherOutcome {
    /// Messages written.
    pub(crate) sent: u64,
    /// Messages whose QoS 1/2 handshake completed.
    pub(crate) acked: u64,
}

/// Publishes by the plan, then waits up to `drain` for outstanding acks and disconnects.
pub(crate) async fn publisher(
    mut stream: TcpStream,
    plan: PublisherPlan,
    shared: Arc<Shared>,
    drain: Duration,
) -> io::Result<PublisherOutcome> {
    let mut out: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 8 * 1024);
    let mut written = 0usize;
    let mut input = vec![0u8; READ_BYTES];
    let mut filled = 0usize;
    let (mut seq, mut acked, mut acked_total, mut inflight) = (0u64, 0u64, 0u64, 0usize);
    let mut packet_id: u16 = 0;
    let started = tokio::time::Instant::now();
    let per_message = plan.payload.max(wire::STAMP_LEN) + plan.topic.len() + 8;
    let batch_messages = (BATCH_BYTES / per_message).max(1) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let give_up = plan.deadline + drain;
    loop {
        let now = tokio::time::Instant::now();
        let done = now >= plan.deadline || (plan.count > 0 && seq >= plan.count);
        if done && inflight == 0 && written == out.len() {
            break;
        }
        if now >= give_up {
            break;
        }
        let mut limit_rate = false;
        let mut limit_window = false;
        if !done && written == out.len() {
            out.clear();
            written = 0;
            let mut allowed = batch_messages;
            if plan.qos > 0 {
                allowed = allowed.min(plan.inflight.saturating_sub(inflight) as u64);
            }
            if plan.window > 0 {
                let base = plan.id as usize * shared.subscribers;
                let delivered = plan
                    .audience
                    .iter()
                    .map(|&s| shared.delivered[base + s].load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(seq);
                let room = plan.window.saturating_sub(seq.saturating_sub(delivered));
                limit_window = room < allowed;
                allowed = allowed.min(room);
            }
            if plan.rate > 0.0 {
                let due = (now.duration_since(started).as_secs_f64() * plan.rate) as u64 + 1;
                let room = due.saturating_sub(seq);
                limit_rate = room < allowed;
                allowed = allowed.min(room);
            }
            if plan.count > 0 {
                allowed = allowed.min(plan.count - seq);
            }
            if allowed > 0 {
                let sent_at = shared.now_ns();
                for _ in 0..allowed {
                    if plan.qos > 0 {
                        packet_id = if packet_id == u16::MAX { 1 } else { packet_id + 1 };
                        inflight += 1;
                    }
                    wire::publish(&mut out, &plan.topic, plan.qos, packet_id, (plan.id, seq, sent_at), plan.payload);
                    seq += 1;
                }
                shared.sent.fetch_add(allowed, Ordering::Relaxed);
            }
        }
        let want_write = written < out.len();
        let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        let wake = &shared.wake[plan.id as usize];
        tokio::select! {
            biased;
            ready = stream.ready(interest) => {
                let ready = ready?;
                if ready.is_readable() {
                    match stream.try_read(&mut input[filled..]) {
                        Ok(0) => return Err(io::Error::other("broker closed the publisher connection")),
                        Ok(n) => {
                            filled += n;
                            let mut at = 0;
                            while let Some((frame, len)) = wire::parse(&input[at..filled]).map_err(io::Error::other)? {
                                match frame.kind {
                                    PUBACK | PUBCOMP => {
                                        inflight = inflight.saturating_sub(1);
                                        acked += 1;
                                    }
                                    PUBREC => wire::ack(&mut out, PUBREL, wire::packet_id(frame.body)),
                                    _ => {}
                                }
                                at += len;
                            }
                            input.copy_within(at..filled, 0);
                            filled -= at;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                if ready.is_writable() && written < out.len() {
                    match stream.try_write(&out[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            _ = wake.notified(), if limit_window && !want_write => {}
            _ = tick.tick(), if limit_rate && !want_write => {}
            _ = tokio::time::sleep_until(plan.deadline), if !done => {}
            _ = tokio::time::sleep_until(give_up) => {}
        }
        if acked > 0 {
            shared.acked.fetch_add(acked, Ordering::Relaxed);
            acked_total += acked;
            acked = 0;
        }
    }
    out.clear();
    wire::disconnect(&mut out);
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(&out)).await;
    Ok(PublisherOutcome { sent: seq, acked: acked_total })
}

/// Which sequence numbers of each publisher a receiver has seen: unique and duplicate counts.
pub(crate) struct SeenSet {
    bits: Vec<Vec<u64>>,
    /// Distinct messages received per publisher.
    pub(crate) unique: Vec<u64>,
    /// Messages received again.
    pub(crate) duplicates: u64,
}

impl SeenSet {
    /// An empty set for `publishers` publishers.
    pub(crate) fn new(publishers: usize) -> SeenSet {
        SeenSet { bits: vec![Vec::new(); publishers], unique: vec![0; publishers], duplicates: 0 }
    }

    /// Marks (publisher, seq) seen; returns false for a duplicate or an unknown publisher.
    #[inline]
    pub(crate) fn insert(&mut self, publisher: u32, seq: u64) -> bool {
        let Some(bits) = self.bits.get_mut(publisher as usize) else { return false };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= bits.len() {
            bits.resize((word + 1).next_power_of_two(), 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= 1 << bit;
        self.unique[publisher as usize] += 1;
        true
    }
}

/// What a subscriber saw.
pub(crate) struct SubscriberOutcome {
    /// Latency of each delivery sent after the warm-up, in ns.
    pub(crate) latency: Histogram<u64>,
    /// Sequence numbers seen per publisher.
    pub(crate) seen: SeenSet,
}

/// Reads deliveries until `stop` turns true, acknowledging QoS 1/2 and recording latency and
/// sequence numbers.
pub(crate) async fn subscriber(
    mut stream: TcpStream,
    index: usize,
    publishers: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<SubscriberOutcome> {
    let mut input = vec![0u8; READ_BYTES];
    let mut filled = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut written = 0usize;
    let mut latency = report::histogram();
    let mut seen = SeenSet::new(publishers);
    let mut local: Vec<u64> = vec![0; publishers];
    loop {
        let want_write = written < out.len();
        let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            ready = stream.ready(interest) => {
                let ready = ready?;
                if ready.is_readable() {
                    match stream.try_read(&mut input[filled..]) {
                        Ok(0) => return Err(io::Error::other("broker closed the subscriber connection")),
                        Ok(n) => {
                            filled += n;
                            let now = shared.now_ns();
                            let measure_from = shared.measure_from_ns.load(Ordering::Relaxed);
                            let mut at = 0;
                            let mut batch = 0u64;
                            while let Some((frame, len)) = wire::parse(&input[at..filled]).map_err(io::Error::other)? {
                                match frame.kind {
                                    PUBLISH => {
                                        let Some(publish) = wire::parse_publish(frame.flags, frame.body) else {
                                            return Err(io::Error::other("malformed publish"));
                                        };
                                        batch += 1;
                                        if let Some((publisher, seq, sent)) = publish.stamp {
                                            seen.insert(publisher, seq);
                                            if let Some(count) = local.get_mut(publisher as usize) {
                                                *count += 1;
                                            }
                                            if sent >= measure_from {
                                                report::record(&mut latency, now.saturating_sub(sent));
                                            }
                                        }
                                        match publish.qos {
                                            1 => wire::ack(&mut out, PUBACK, publish.packet_id),
                                            2 => wire::ack(&mut out, PUBREC, publish.packet_id),
                                            _ => {}
                                        }
                                    }
                                    PUBREL => wire::ack(&mut out, PUBCOMP, wire::packet_id(frame.body)),
                                    _ => {}
                                }
                                at += len;
                            }
                            input.copy_within(at..filled, 0);
                            filled -= at;
                            shared.received.fetch_add(batch, Ordering::Relaxed);
                            for (publisher, count) in local.iter_mut().enumerate() {
                                if *count > 0 {
                                    let slot = publisher * shared.subscribers + index;
                                    shared.delivered[slot].fetch_add(*count, Ordering::Relaxed);
                                    shared.wake[publisher].notify_one();
                                    *count = 0;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                if written < out.len() {
                    match stream.try_write(&out[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    if written == out.len() {
                        out.clear();
                        written = 0;
                    }
                }
            }
        }
    }
    out.clear();
    wire::disconnect(&mut out);
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(&out)).await;
    Ok(SubscriberOutcome { latency, seen })
}
