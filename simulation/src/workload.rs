//! The simulated clients, speaking the real MQTT and Kafka wire protocols through the
//! repository's lean client (`tidewater_tests::clients`). Each records what it was told in
//! the shared [`History`](crate::history::History) and tolerates the node going away: every
//! wait is bounded, every failure reconnects and retries.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidewater_cluster::InvariantId;
use tidewater_tests::clients::kafka::{self, KafkaConn};
use tidewater_tests::clients::mqtt_wire as wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

use crate::history::{ReadRecord, Shared, now_ms};

/// The node's host name in the simulation.
pub const NODE: &str = "node";
/// The bound stream every `sim/#` publish lands in.
pub const BOUND_STREAM: &str = "mqtt-in";
/// Partitions of the bound stream.
pub const BOUND_PARTITIONS: i32 = 2;
/// The free stream the Kafka producer writes.
pub const FREE_STREAM: &str = "kafka-in";
/// The topic wills are published on.
pub const WILL_TOPIC: &str = "sim/will";
/// The topic of the retained messages.
pub const RETAINED_TOPIC: &str = "sim/retained";

/// One MQTT connection: a socket and the bytes read but not parsed yet.
pub(crate) struct Mqtt {
    stream: TcpStream,
    input: Vec<u8>,
}

/// One parsed packet: type, flags, body.
pub(crate) type Frame = (u8, u8, Vec<u8>);

impl Mqtt {
    /// Connects and sends `connect`; returns the connection and CONNACK's session-present flag.
    async fn open(connect: &[u8]) -> Option<(Mqtt, bool)> {
        Self::open_at(NODE, connect).await
    }

    /// [`Mqtt::open`] on the node `host`.
    pub(crate) async fn open_at(host: &str, connect: &[u8]) -> Option<(Mqtt, bool)> {
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((host, 1883))).await.ok()?.ok()?;
        let mut mqtt = Mqtt { stream, input: Vec::new() };
        mqtt.send(connect).await.ok()?;
        let (kind, _, body) = mqtt.next(Duration::from_secs(2)).await.ok()??;
        let (present, code) = wire::parse_connack(&body)?;
        (kind == wire::CONNACK && code == 0).then_some((mqtt, present))
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next packet, `Ok(None)` after `wait` without one, `Err` when the connection ended.
    pub(crate) async fn next(&mut self, wait: Duration) -> std::io::Result<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((frame, len)) = wire::parse(&self.input).map_err(std::io::Error::other)? {
                let parsed = (frame.kind, frame.flags, frame.body.to_vec());
                self.input.drain(..len);
                return Ok(Some(parsed));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.input.extend_from_slice(&chunk[..n]),
                Ok(Err(error)) => return Err(error),
            }
        }
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Parses a publisher's payload `p<id>:<seq>`.
pub fn parse_message_id(payload: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(payload).ok()?.strip_prefix('p')?;
    let (id, seq) = text.split_once(':')?;
    Some((id.parse().ok()?, seq.parse().ok()?))
}

/// Where a QoS 1/2 PUBLISH of a publisher is in its exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PUBLISH sent, waiting for PUBACK/PUBREC.
    Sent(u32),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// An MQTT 3.1.1 publisher of `count` messages at `qos` (a persistent session at QoS 2, so
/// that its retries are recognised), with at most four in flight.
pub async fn publisher(history: Shared, id: u32, qos: u8, count: u32, seed: u64, drops: bool) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ u64::from(id).wrapping_mul(0x9e37_79b9));
    for _ in 0..3000 {
        if history.borrow().subscribed_at.is_some() {
            break;
        }
        sleep_ms(10).await;
    }
    let client_id = format!("p{id}");
    let topic = format!("sim/p{id}");
    let mut next_seq = 0u32;
    let mut in_flight: BTreeMap<u16, Phase> = BTreeMap::new();
    let mut attempts = 0u32;
    while (next_seq < count || !in_flight.is_empty()) && attempts < 2000 {
        attempts += 1;
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, &client_id, 30, qos == 1, None);
        let Some((mut mqtt, _)) = Mqtt::open(&connect).await else {
            sleep_ms(100 + rng.random_range(0..100)).await;
            continue;
        };
        // the order acknowledgements must come back in on this connection
        let mut order: VecDeque<u16> = VecDeque::new();
        let mut out = Vec::new();
        for (pkid, phase) in &in_flight {
            match phase {
                Phase::Sent(seq) => {
                    wire::publish_payload(&mut out, &topic, qos, *pkid, true, format!("p{id}:{seq}").as_bytes());
                    order.push_back(*pkid);
                }
                Phase::Released => wire::ack(&mut out, wire::PUBREL, *pkid),
            }
        }
        // new messages are paced (so that publishing overlaps the fault phase), while frames
        // are read as they come, so that an acknowledgement is recorded when it arrives
        let mut send_at = tokio::time::Instant::now();
        'connection: loop {
            if tokio::time::Instant::now() >= send_at && in_flight.len() < 4 && next_seq < count {
                let pkid = (next_seq % 60_000 + 1) as u16;
                wire::publish_payload(&mut out, &topic, qos, pkid, false, format!("p{id}:{next_seq}").as_bytes());
                in_flight.insert(pkid, Phase::Sent(next_seq));
                history.borrow_mut().mqtt_sent_at.insert((id, next_seq), now_ms());
                order.push_back(pkid);
                next_seq += 1;
                send_at = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(0..250));
            }
            if !out.is_empty() && mqtt.send(&out).await.is_err() {
                break;
            }
            out.clear();
            if drops && rng.random_bool(0.01) {
                history.borrow_mut().trace(now_ms(), format!("{client_id} drops its connection"));
                break;
            }
            let can_send = in_flight.len() < 4 && next_seq < count;
            let wait = if can_send {
                send_at.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::from_millis(1500)
            };
            let frame = match mqtt.next(wait).await {
                Ok(Some(frame)) => frame,
                Ok(None) if can_send => continue,
                Ok(None) if in_flight.is_empty() && next_seq >= count => break,
                // an acknowledgement withheld (a refused append) or a stuck node: retry anew
                Ok(None) | Err(_) => break,
            };
            let (kind, _, body) = frame;
            let pkid = wire::packet_id(&body);
            if kind == wire::PUBACK || kind == wire::PUBREC {
                let Some(position) = order.iter().position(|p| *p == pkid) else {
                    history.borrow_mut().client_violations.push((
                        InvariantId::AckOutOfOrder,
                        format!("{client_id}: ack for packet {pkid} after a later packet's ack"),
                    ));
                    continue;
                };
                order.drain(..=position);
                let Some(Phase::Sent(seq)) = in_flight.get(&pkid).copied() else { continue };
                let mut h = history.borrow_mut();
                let now = now_ms();
                h.mqtt_acked.entry((id, seq)).or_insert((qos, now));
                h.trace(now, format!("{client_id} acked {seq}"));
                drop(h);
                if kind == wire::PUBACK {
                    in_flight.remove(&pkid);
                } else {
                    in_flight.insert(pkid, Phase::Released);
                    wire::ack(&mut out, wire::PUBREL, pkid);
                }
            } else if kind == wire::PUBCOMP {
                if in_flight.get(&pkid) == Some(&Phase::Released) {
                    in_flight.remove(&pkid);
                }
            } else {
                break 'connection;
            }
        }
        sleep_ms(rng.random_range(0..200)).await;
    }
    history.borrow_mut().writers_done += 1;
    Ok(())
}

/// The persistent subscriber of `sim/#` at QoS 2: connected but slow, and offline now and then.
pub async fn subscriber(history: Shared, seed: u64, drops: bool, writers: u32) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ab5_c41b);
    let mut subscribed = false;
    // QoS 2 packet ids received and not released yet, with their payloads
    let mut qos2_received: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    for _ in 0..5000 {
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, "sub", 30, false, None);
        let Some((mut mqtt, present)) = Mqtt::open(&connect).await else {
            sleep_ms(100).await;
            continue;
        };
        history.borrow_mut().trace(now_ms(), format!("sub connected, session present {present}"));
        let mut idle = 0u32;
        if !subscribed {
            let mut out = Vec::new();
            wire::subscribe(&mut out, 1, "sim/#", 2);
            if mqtt.send(&out).await.is_err() {
                continue;
            }
            match mqtt.next(Duration::from_secs(2)).await {
                Ok(Some((kind, _, _))) if kind == wire::SUBACK => {
                    subscribed = true;
                    let mut h = history.borrow_mut();
                    h.subscribed_at = Some(now_ms());
                    h.trace(now_ms(), "sub subscribed");
                }
                _ => continue,
            }
        }
        loop {
            let frame = match mqtt.next(Duration::from_millis(1000)).await {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // done once every writer and the will client are, the faults are over, and
                    // nothing came for a few seconds
                    let done = {
                        let h = history.borrow();
                        h.writers_done >= writers && h.liveness && h.willer_done
                    };
                    idle = if done { idle + 1 } else { 0 };
                    if idle >= 4 {
                        return Ok(());
                    }
                    continue;
                }
                Err(_) => break,
            };
            idle = 0;
            let (kind, flags, body) = frame;
            let mut out = Vec::new();
            if kind == wire::PUBLISH {
                let Some(publish) = wire::parse_publish_full(flags, &body) else { break };
                let first = publish.qos < 2 || !qos2_received.contains_key(&publish.packet_id);
                if publish.qos == 2 {
                    match qos2_received.get(&publish.packet_id) {
                        None => {
                            qos2_received.insert(publish.packet_id, publish.payload.to_vec());
                        }
                        Some(pending) if pending.as_slice() != publish.payload => {
                            // the node reused a packet id the subscriber still holds: the
                            // subscriber must take it as a retransmission and drop the message
                            let text = String::from_utf8_lossy(publish.payload).into_owned();
                            let mut h = history.borrow_mut();
                            h.pkid_collisions.push(now_ms());
                            h.trace(
                                now_ms(),
                                format!("sub drops {text}: packet id {} still in flight", publish.packet_id),
                            );
                        }
                        Some(_) => {}
                    }
                }
                if first {
                    let mut h = history.borrow_mut();
                    if let Some(message) = parse_message_id(publish.payload) {
                        *h.delivered.entry(message).or_default() += 1;
                        h.delivered_at.entry(message).or_default().push(now_ms());
                        h.trace(
                            now_ms(),
                            format!(
                                "sub got p{}:{} as {} dup {}",
                                message.0, message.1, publish.packet_id, publish.dup
                            ),
                        );
                    } else if publish.topic == WILL_TOPIC
                        && let Some(round) = std::str::from_utf8(publish.payload).ok().and_then(|p| p.strip_prefix('w'))
                        && let Ok(round) = round.parse::<u32>()
                    {
                        let will = h.wills.entry(round).or_default();
                        will.seen += 1;
                        will.seen_fresh += u32::from(!publish.dup);
                        h.trace(now_ms(), format!("will {round} delivered"));
                    }
                }
                match publish.qos {
                    1 => wire::ack(&mut out, wire::PUBACK, publish.packet_id),
                    2 => wire::ack(&mut out, wire::PUBREC, publish.packet_id),
                    _ => {}
                }
            } else if kind == wire::PUBREL {
                let pkid = wire::packet_id(&body);
                qos2_received.remove(&pkid);
                history.borrow_mut().trace(now_ms(), format!("sub released {pkid}"));
                wire::ack(&mut out, wire::PUBCOMP, pkid);
            }
            if rng.random_bool(0.05) {
                sleep_ms(rng.random_range(1..50)).await; // a slow subscriber
            }
            if mqtt.send(&out).await.is_err() {
                break;
            }
            if drops && rng.random_bool(0.005) {
                history.borrow_mut().trace(now_ms(), "sub goes offline");
                drop(mqtt);
                sleep_ms(rng.random_range(100..2000)).await;
                break;
            }
        }
    }
    Ok(())
}

/// The topic filter of the QoS 0 flood.
pub const FLOOD_FILTER: &str = "flood/#";

/// A QoS 0 flood on `flood/t` for `for_ms`: bursts of 1 KB messages as fast as the node
/// reads them, reconnecting after every outage.
pub async fn flooder(history: Shared, seed: u64, for_ms: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf100d);
    let payload = vec![b'f'; 1024];
    while now_ms() < for_ms {
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, "flooder", 30, true, None);
        let Some((mut mqtt, _)) = Mqtt::open(&connect).await else {
            sleep_ms(100).await;
            continue;
        };
        while now_ms() < for_ms {
            let burst = rng.random_range(1..=16);
            let mut out = Vec::with_capacity(burst * 1040);
            for _ in 0..burst {
                wire::publish_payload(&mut out, "flood/t", 0, 0, false, &payload);
            }
            // a node gone down reads nothing more: the write waits on the socket's credit
            if !matches!(tokio::time::timeout(Duration::from_secs(1), mqtt.send(&out)).await, Ok(Ok(()))) {
                break;
            }
            history.borrow_mut().flood.0 += burst as u64;
            sleep_ms(10).await;
        }
    }
    Ok(())
}

/// The flood's subscriber (a clean session at QoS 0) alternates stalls of one to three
/// seconds, in which it reads nothing, with half a second of reading as fast as it can. A
/// stall fills the socket (turmoil's 64 segments) and the outbox within about a second, so
/// its session's queue meets the memory budget; reading drains it again. It leaves at the end
/// of the stall in which the flood ends, closing with its queue full, and gives the node time to end its session.
pub async fn flood_subscriber(history: Shared, seed: u64, for_ms: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5100_d5ab);
    while now_ms() < for_ms {
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, "flood-sub", 30, true, None);
        let Some((mut mqtt, _)) = Mqtt::open(&connect).await else {
            sleep_ms(100).await;
            continue;
        };
        let mut out = Vec::new();
        wire::subscribe(&mut out, 1, FLOOD_FILTER, 0);
        if mqtt.send(&out).await.is_err() {
            continue;
        }
        history.borrow_mut().trace(now_ms(), "flood-sub: subscribed");
        'connection: while now_ms() < for_ms {
            sleep_ms(rng.random_range(1_000..=3_000)).await;
            if now_ms() >= for_ms {
                break; // leaves in the middle of a stall, its queue full
            }
            let until = now_ms() + 500;
            while now_ms() < until {
                match mqtt.next(Duration::from_millis(100)).await {
                    Ok(Some((kind, _, _))) if kind == wire::PUBLISH => history.borrow_mut().flood.1 += 1,
                    Ok(_) => {}
                    Err(_) => break 'connection,
                }
            }
        }
    }
    sleep_ms(2000).await;
    Ok(())
}

/// An MQTT 5 client with a delayed will that drops its connection each round and either
/// comes back within the delay (the will must not be published) or stays away (it must be).
pub async fn will_client(history: Shared, seed: u64, rounds: u32) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x3111);
    const DELAY_SECS: u32 = 1;
    for _ in 0..3000 {
        if history.borrow().subscribed_at.is_some() {
            break;
        }
        sleep_ms(10).await;
    }
    for round in 0..rounds {
        let payload = format!("w{round}");
        let mut connect = Vec::new();
        wire::connect_v5(&mut connect, "willer", 30, false, 60, Some((WILL_TOPIC, payload.as_bytes(), 1, DELAY_SECS)));
        let Some((mqtt, present)) = Mqtt::open(&connect).await else {
            sleep_ms(300).await;
            continue;
        };
        history.borrow_mut().trace(now_ms(), format!("willer connected for round {round}, session present {present}"));
        // the round dropped last (a refused connect leaves a round out, so not always round - 1)
        if let Some((_, previous)) = history.borrow_mut().wills.range_mut(..round).next_back()
            && previous.back_at.is_none()
            && now_ms() < previous.dropped_at + u64::from(DELAY_SECS) * 1000
        {
            previous.back_at = Some(now_ms());
        }
        sleep_ms(300).await;
        drop(mqtt);
        {
            let mut h = history.borrow_mut();
            let now = now_ms();
            let entry = h.wills.entry(round).or_default();
            entry.dropped_at = now;
            entry.delay_ms = u64::from(DELAY_SECS) * 1000;
            h.trace(now, format!("willer drops round {round}"));
        }
        let back = round + 1 < rounds && rng.random_bool(0.5);
        sleep_ms(if back { 300 } else { 3000 }).await;
    }
    // the last round stays away: its will is due
    sleep_ms(3000).await;
    history.borrow_mut().willer_done = true;
    Ok(())
}

/// Publishes retained QoS 1 messages `r0`, `r1`, ... one at a time, each until acknowledged.
pub async fn retainer(history: Shared, seed: u64, count: u32) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7e7a);
    let mut next = 0u32;
    let mut dup = false;
    let mut attempts = 0u32;
    while next < count && attempts < 3000 {
        attempts += 1;
        let mut connect = Vec::new();
        wire::connect_with(&mut connect, "retainer", 30, true, None);
        let Some((mut mqtt, _)) = Mqtt::open(&connect).await else {
            sleep_ms(100).await;
            continue;
        };
        while next < count {
            let mut out = Vec::new();
            wire::publish_retained(&mut out, RETAINED_TOPIC, 1, 1, dup, format!("r{next}").as_bytes());
            if mqtt.send(&out).await.is_err() {
                dup = true;
                break;
            }
            match mqtt.next(Duration::from_millis(1500)).await {
                Ok(Some((kind, _, _))) if kind == wire::PUBACK => {
                    history.borrow_mut().retained_acked.push((next, now_ms()));
                    next += 1;
                    dup = false;
                    sleep_ms(rng.random_range(0..600)).await;
                }
                _ => {
                    dup = true;
                    break;
                }
            }
        }
    }
    history.borrow_mut().writers_done += 1;
    Ok(())
}

/// A new subscriber of the retained topic: the retained value it is given, if any.
async fn read_retained() -> Option<Option<u32>> {
    let mut connect = Vec::new();
    wire::connect_with(&mut connect, "retained-reader", 30, true, None);
    let (mut mqtt, _) = Mqtt::open(&connect).await?;
    let mut out = Vec::new();
    wire::subscribe(&mut out, 1, RETAINED_TOPIC, 1);
    mqtt.send(&out).await.ok()?;
    loop {
        match mqtt.next(Duration::from_secs(2)).await.ok()? {
            None => return Some(None),
            Some((kind, flags, body)) if kind == wire::PUBLISH => {
                let publish = wire::parse_publish_full(flags, &body)?;
                let value = std::str::from_utf8(publish.payload).ok()?.strip_prefix('r')?.parse().ok()?;
                return Some(Some(value));
            }
            Some(_) => {}
        }
    }
}

/// Opens a Kafka connection into `conn`, or waits a little when the node does not answer.
async fn reconnect(conn: &mut Option<KafkaConn<TcpStream>>) {
    *conn = kafka_connect().await;
    if conn.is_none() {
        sleep_ms(100).await;
    }
}

async fn kafka_connect() -> Option<KafkaConn<TcpStream>> {
    let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((NODE, 9092))).await.ok()?.ok()?;
    Some(KafkaConn::new(stream))
}

/// Kafka error codes the producer answers by starting a new producer.
const RESET_PRODUCER: [i16; 3] = [45, 47, 59];

/// An idempotent Kafka producer of `batches` batches of 1–3 records into the free stream,
/// retrying each batch with its sequence until acknowledged (acks=all).
pub async fn producer(history: Shared, seed: u64, batches: u32) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xcafe);
    let mut conn: Option<KafkaConn<TcpStream>> = None;
    let mut producer: Option<(i64, i16)> = None;
    let mut sequence = 0i32;
    let mut batch = 0u32;
    let mut attempts = 0u32;
    while batch < batches && attempts < 3000 {
        attempts += 1;
        let Some(c) = conn.as_mut() else {
            reconnect(&mut conn).await;
            continue;
        };
        let Some((producer_id, epoch)) = producer else {
            match tokio::time::timeout(Duration::from_secs(2), c.init_producer_id()).await {
                Ok(Ok(id)) => {
                    producer = Some(id);
                    sequence = 0;
                }
                _ => conn = None,
            }
            continue;
        };
        let records = 1 + (batch % 3) as usize;
        let values: Vec<Vec<u8>> = (0..records).map(|i| format!("k{batch}:{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let bytes: Bytes = kafka::idempotent_batch(producer_id, epoch, sequence, &refs, 1_000);
        match tokio::time::timeout(Duration::from_secs(3), c.produce(FREE_STREAM, 0, bytes, -1, 2000)).await {
            Ok(Ok((0, base_offset))) => {
                let mut h = history.borrow_mut();
                let now = now_ms();
                h.kafka_acked.insert((producer_id, sequence), (base_offset, values, now));
                h.trace(now, format!("produced {batch} at {base_offset}"));
                sequence += records as i32;
                batch += 1;
            }
            Ok(Ok((code, _))) if RESET_PRODUCER.contains(&code) => producer = None,
            Ok(Ok(_)) => sleep_ms(50).await,
            _ => conn = None,
        }
        sleep_ms(rng.random_range(0..400)).await;
    }
    let mut h = history.borrow_mut();
    h.writers_done += 1;
    h.producer_done = true;
    Ok(())
}

/// Kafka error codes that send a group member back to JoinGroup.
const REJOIN: [i16; 4] = [22, 25, 27, 16];

/// A consumer group member (JoinGroup, SyncGroup, Heartbeat, OffsetFetch, OffsetCommit with its
/// generation) consuming the free stream until it has committed its end.
pub async fn group_consumer(history: Shared) -> turmoil::Result {
    const GROUP: &str = "cg";
    let mut conn: Option<KafkaConn<TcpStream>> = None;
    let mut member = String::new();
    let mut generation = -1;
    let mut position = 0i64;
    let wait = Duration::from_secs(2);
    for _ in 0..5000 {
        let Some(c) = conn.as_mut() else {
            reconnect(&mut conn).await;
            continue;
        };
        if generation < 0 {
            let Ok(Ok((code, joined, member_id, leader))) =
                tokio::time::timeout(wait, c.join_group(GROUP, &member, 6000)).await
            else {
                conn = None;
                continue;
            };
            if code != 0 {
                if code == 25 {
                    member.clear();
                }
                sleep_ms(200).await;
                continue;
            }
            member = member_id;
            let assignment = (leader == member).then(|| Bytes::from_static(b"\0\0"));
            match tokio::time::timeout(wait, c.sync_group(GROUP, joined, &member, assignment)).await {
                Ok(Ok((0, _))) => {}
                Ok(Ok(_)) => {
                    sleep_ms(200).await;
                    continue;
                }
                _ => {
                    conn = None;
                    continue;
                }
            }
            let Ok(Ok(committed)) = tokio::time::timeout(wait, c.offset_fetch(GROUP, FREE_STREAM, 0)).await else {
                conn = None;
                continue;
            };
            generation = joined;
            position = committed.max(0);
            let mut h = history.borrow_mut();
            h.group_fetched.push((committed, now_ms()));
            h.trace(now_ms(), format!("group member joined generation {joined} at {committed}"));
        }
        let Ok(Ok(fetched)) = tokio::time::timeout(wait, c.fetch(FREE_STREAM, &[(0, position)], 1 << 16, 200)).await
        else {
            conn = None;
            continue;
        };
        let mut next = position;
        if let Some((_, Ok(data))) = fetched.into_iter().next() {
            kafka::for_each_batch(&data.records, |_, _, end| next = next.max(end));
        }
        if next > position {
            match tokio::time::timeout(wait, c.offset_commit_as(GROUP, generation, &member, FREE_STREAM, 0, next)).await
            {
                Ok(Ok(0)) => {
                    history.borrow_mut().group_commits.push((next, now_ms()));
                    position = next;
                }
                Ok(Ok(code)) if REJOIN.contains(&code) => generation = -1,
                Ok(Ok(_)) => sleep_ms(100).await,
                _ => conn = None,
            }
            continue;
        }
        match tokio::time::timeout(wait, c.heartbeat(GROUP, generation, &member)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => generation = -1,
            _ => {
                conn = None;
                continue;
            }
        }
        if history.borrow().producer_done
            && let Ok(Ok(ends)) = tokio::time::timeout(wait, c.list_offsets(FREE_STREAM, 1, -1)).await
            && position >= ends[0]
        {
            break;
        }
        sleep_ms(300).await;
    }
    history.borrow_mut().writers_done += 1;
    Ok(())
}

/// Commits growing offsets for a member-less group and reads them back in between.
pub async fn committer(history: Shared, commits: i64) -> turmoil::Result {
    let mut conn: Option<KafkaConn<TcpStream>> = None;
    let mut offset = 1i64;
    let mut attempts = 0u32;
    while offset <= commits && attempts < 3000 {
        attempts += 1;
        let Some(c) = conn.as_mut() else {
            reconnect(&mut conn).await;
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(2), c.offset_commit("g", FREE_STREAM, 0, offset)).await {
            Ok(Ok(0)) => {
                history.borrow_mut().commits.push((offset, now_ms()));
                offset += 1;
            }
            Ok(Ok(_)) => sleep_ms(50).await,
            _ => {
                conn = None;
                continue;
            }
        }
        if let Ok(Ok(fetched)) = tokio::time::timeout(Duration::from_secs(2), c.offset_fetch("g", FREE_STREAM, 0)).await
        {
            history.borrow_mut().fetched_commits.push((fetched, now_ms()));
        }
        sleep_ms(200).await;
    }
    history.borrow_mut().writers_done += 1;
    Ok(())
}

/// Once the writers are done and the faults are over, reads both streams back in full.
pub async fn reader(history: Shared, writers: u32) -> turmoil::Result {
    loop {
        if history.borrow().writers_done >= writers && history.borrow().liveness {
            break;
        }
        sleep_ms(100).await;
    }
    // let the subscriber drain first, and in-flight appends land
    sleep_ms(1000).await;
    for _ in 0..100 {
        let Some(mut conn) = kafka_connect().await else {
            sleep_ms(200).await;
            continue;
        };
        let bound = read_all(&mut conn, BOUND_STREAM, BOUND_PARTITIONS).await;
        let free = read_all(&mut conn, FREE_STREAM, 1).await;
        let retained = read_retained().await;
        if let (Some(bound), Some(free), Some(retained)) = (bound, free, retained) {
            let mut h = history.borrow_mut();
            h.retained_read = Some(retained);
            h.trace(now_ms(), format!("read back {} + {} records, retained {retained:?}", bound.len(), free.len()));
            h.bound_read = bound;
            h.free_read = free;
            h.read_done = true;
            return Ok(());
        }
        sleep_ms(200).await;
    }
    Ok(())
}

/// Every record of `topic` from its log start to its high watermark, or `None` when any read fails.
pub(crate) async fn read_all(conn: &mut KafkaConn<TcpStream>, topic: &str, partitions: i32) -> Option<Vec<ReadRecord>> {
    let wait = Duration::from_secs(2);
    let starts = tokio::time::timeout(wait, conn.list_offsets(topic, partitions, -2)).await.ok()?.ok()?;
    let ends = tokio::time::timeout(wait, conn.list_offsets(topic, partitions, -1)).await.ok()?.ok()?;
    let mut records = Vec::new();
    for partition in 0..partitions {
        let mut offset = starts[partition as usize];
        let end = ends[partition as usize];
        while offset < end {
            let fetched =
                tokio::time::timeout(wait, conn.fetch(topic, &[(partition, offset)], 1 << 20, 100)).await.ok()?.ok()?;
            let (_, result) = fetched.into_iter().next()?;
            let data = result.ok()?;
            let mut progressed = false;
            let mut batches = Vec::new();
            kafka::for_each_batch(&data.records, |batch, _, _| batches.push(batch.to_vec()));
            for batch in batches {
                for record in tidewater_storage::decode_records(&batch).ok()? {
                    if record.offset < offset {
                        continue;
                    }
                    offset = record.offset + 1;
                    progressed = true;
                    records.push(ReadRecord {
                        partition,
                        offset: record.offset,
                        value: record.value.map(|v| v.to_vec()).unwrap_or_default(),
                    });
                }
            }
            if !progressed {
                return None;
            }
        }
    }
    Some(records)
}
