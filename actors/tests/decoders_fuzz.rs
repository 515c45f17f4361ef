//! Every decoder a peer's bytes reach, fed mutated valid inputs and arbitrary bytes, on the
//! stable toolchain (issue 13, point 7): the MQTT codec, the Kafka request decoder, RecordBatch
//! decoding and the data-plane frame decoder. Each must answer with a value or an error, never
//! panic, and never allocate more than its input can justify: the allocator counts what each
//! decode allocates, so a length field that claims gigabytes in a few bytes fails the case.
//!
//! The seed corpus is [`seeds`]: valid inputs of each decoder, which the campaign mutates
//! (bytes set, inserted, cut, spans repeated, length-like fields set to extremes). proptest
//! keeps failing cases in `decoders_fuzz.proptest-regressions`, committed. More cases:
//! `PROPTEST_CASES=100000 cargo nextest run --release -p tidewater-actors --test decoders_fuzz`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tidewater_actors::kafka::wire::{decode_request, read_frame, supported_versions};
use tidewater_actors::mqtt::codec::{ProtocolVersion, read_connect, read_packet};
use tidewater_cluster::data_plane::PeerMessage;
use tidewater_cluster::data_plane::frame;
use tidewater_storage::{NewRecord, build_record_batch, decode_records};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// How many sequences a data-plane message nests, each of which serde may preallocate.
const SERDE_SEQUENCES: usize = 3;
/// The largest packet the MQTT decoder is given (the node's default `mqtt.max_packet_size`).
const MQTT_MAX: usize = 1 << 20;

/// What decoding `len` bytes may allocate in all: a fixed allowance, and a few hundred bytes
/// per input byte (a decoded element is larger than its encoding, a struct per byte at worst).
fn allowance(len: usize) -> usize {
    (64 << 10) + 512 * len
}

/// Runs `decode` on `input` and fails if it allocated more than [`allowance`] and `ahead`
/// (room a reader makes for bytes still to come, whatever the length field says).
fn bounded<R>(input: &[u8], ahead: usize, decode: impl FnOnce(&[u8]) -> R) -> Result<(), TestCaseError> {
    let region = Region::new(GLOBAL);
    let result = decode(input);
    let change = region.change();
    drop(result);
    let allocated = change.bytes_allocated + change.bytes_reallocated.max(0) as usize;
    prop_assert!(
        allocated <= allowance(input.len()) + ahead,
        "{allocated} bytes allocated decoding {} bytes: {:02x?}",
        input.len(),
        &input[..input.len().min(64)]
    );
    Ok(())
}

fn mqtt(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    match read_connect(&mut buf, MQTT_MAX) {
        Ok(Some((version, _))) => drain(&mut buf, version),
        // what follows a bad CONNECT is never read; the bytes are tried as packets of each version
        _ => {
            drain(&mut BytesMut::from(input), ProtocolVersion::V5);
            drain(&mut BytesMut::from(input), ProtocolVersion::V311);
        }
    }
}

fn drain(buf: &mut BytesMut, version: ProtocolVersion) {
    while let Ok(Some(_)) = read_packet(buf, version, MQTT_MAX) {}
}

fn kafka(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    while let Ok(Some(frame)) = read_frame(&mut buf, 1 << 20) {
        let _ = decode_request(frame);
    }
}

fn record_batch(input: &[u8]) {
    let _ = decode_records(input);
}

fn data_plane(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    while let Ok(Some((_, payload))) = frame::take_frame(&mut buf) {
        let _ = frame::decode::<PeerMessage>(&payload);
    }
}

/// Valid inputs of each decoder.
mod seeds {
    use super::*;

    /// An MQTT string or binary field.
    fn s(text: &[u8]) -> Vec<u8> {
        let mut out = (text.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(text);
        out
    }

    /// A packet: first byte, remaining length (one byte: the seeds are short), body.
    fn packet(first: u8, parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        assert!(body.len() < 128);
        [&[first, body.len() as u8][..], &body].concat()
    }

    pub(super) fn mqtt() -> Vec<Vec<u8>> {
        // a will (QoS 1, retained), then one with a username and password
        let connect_v311 = packet(0x10, &[&s(b"MQTT"), &[4, 0b0010_1110, 0, 60], &s(b"c"), &s(b"w/t"), &s(b"bye")]);
        let login_v311 = packet(0x10, &[&s(b"MQTT"), &[4, 0b1100_0010, 0, 60], &s(b"u"), &s(b"n"), &s(b"p")]);
        // v5: session expiry and receive maximum, a will with a delay, user properties
        let props = [&[0x11, 0, 0, 0, 60, 0x21, 0, 10][..], &[0x26], &s(b"k"), &s(b"v")].concat();
        let will_props = [&[0x18, 0, 0, 0, 5][..], &[0x26], &s(b"wk"), &s(b"wv")].concat();
        let connect_v5 = packet(
            0x10,
            &[
                &s(b"MQTT"),
                &[5, 0b0000_1110, 0, 30, props.len() as u8],
                &props,
                &s(b"c5"),
                &[will_props.len() as u8],
                &will_props,
                &s(b"w"),
                &s(b"x"),
            ],
        );
        // payload format, topic alias, message expiry; then a user property
        let publish_v5 = [
            packet(0x32, &[&s(b"a/b"), &[0, 1], &[10, 0x01, 1, 0x23, 0, 3, 0x02, 0, 0, 0, 9], &b"payload"[..]]),
            packet(0x34, &[&s(b"a/c"), &[0, 2], &[7, 0x26], &s(b"k"), &s(b"v"), &b"two"[..]]),
        ]
        .concat();
        let publish_v311 =
            [packet(0x30, &[&s(b"t"), &b"zero"[..]]), packet(0x33, &[&s(b"t/r"), &[0, 9], &b"one"[..]])].concat();
        let subscribe_v5 = packet(0x82, &[&[0, 3, 2, 0x0B, 5], &s(b"a/+"), &[0b0010_1101], &s(b"$share/g/#"), &[1]]);
        let subscribe_v311 = packet(0x82, &[&[0, 4], &s(b"x/#"), &[2], &s(b"y"), &[0]]);
        let acks_v5 = [
            packet(0x40, &[&[0, 1]]),
            packet(0x50, &[&[0, 2, 0x10, 0]]),
            packet(0x62, &[&[0, 2]]),
            packet(0x70, &[&[0, 2]]),
            packet(0xA2, &[&[0, 5, 0], &s(b"a/+")]),
            packet(0xC0, &[]),
            packet(0xE0, &[&[0x04, 5, 0x11, 0, 0, 0, 0]]),
        ]
        .concat();
        let acks_v311 = [
            packet(0x40, &[&[0, 1]]),
            packet(0x50, &[&[0, 2]]),
            packet(0x62, &[&[0, 2]]),
            packet(0x70, &[&[0, 2]]),
            packet(0xA2, &[&[0, 5], &s(b"x/#")]),
            packet(0xC0, &[]),
            packet(0xE0, &[]),
        ]
        .concat();
        vec![
            [connect_v5.clone(), publish_v5, subscribe_v5, acks_v5].concat(),
            [connect_v311, publish_v311, subscribe_v311, acks_v311].concat(),
            login_v311,
            connect_v5,
        ]
    }

    /// One Kafka request frame of each served API at its highest version, bodies from
    /// the protocol's defaults, and one Produce carrying a record batch.
    pub(super) fn kafka() -> Vec<Vec<u8>> {
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let mut frames = Vec::new();
        let mut push = |key: i16, version: i16, body: &dyn Fn(&mut BytesMut, i16)| {
            let api = ApiKey::try_from(key).expect("served");
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(key)
                .with_request_api_version(version)
                .with_client_id(Some(StrBytes::from_static_str("fuzz")))
                .encode(&mut frame, api.request_header_version(version))
                .expect("header");
            body(&mut frame, version);
            let mut out = (frame.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&frame);
            frames.push(out);
        };
        for (key, _, max) in supported_versions() {
            let mut body = BytesMut::new();
            if encode_default(key, max, &mut body).is_ok() && !body.is_empty() {
                push(key, max, &|frame, _| frame.extend_from_slice(&body));
            }
        }
        let batch = record_batch().remove(0);
        let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(1000).with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch))),
                ]),
        ]);
        let produce_max = supported_versions()
            .into_iter()
            .find(|(key, _, _)| *key == ApiKey::Produce as i16)
            .map(|(_, _, max)| max)
            .expect("Produce is served");
        push(ApiKey::Produce as i16, produce_max, &|frame, version| {
            produce.encode(frame, version).expect("produce");
        });
        frames
    }

    /// A default body of the request `key` at `version`.
    fn encode_default(key: i16, version: i16, frame: &mut BytesMut) -> anyhow::Result<()> {
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::Encodable;
        match ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown"))? {
            ApiKey::Metadata => MetadataRequest::default().encode(frame, version)?,
            ApiKey::Fetch => FetchRequest::default().encode(frame, version)?,
            ApiKey::ListOffsets => ListOffsetsRequest::default().encode(frame, version)?,
            ApiKey::OffsetCommit => OffsetCommitRequest::default().encode(frame, version)?,
            ApiKey::OffsetFetch => OffsetFetchRequest::default().encode(frame, version)?,
            ApiKey::JoinGroup => JoinGroupRequest::default().encode(frame, version)?,
            ApiKey::SyncGroup => SyncGroupRequest::default().encode(frame, version)?,
            ApiKey::CreateTopics => CreateTopicsRequest::default().encode(frame, version)?,
            ApiKey::ApiVersions => ApiVersionsRequest::default().encode(frame, version)?,
            ApiKey::SaslHandshake => SaslHandshakeRequest::default().encode(frame, version)?,
            ApiKey::SaslAuthenticate => SaslAuthenticateRequest::default().encode(frame, version)?,
            _ => {}
        }
        Ok(())
    }

    pub(super) fn record_batch() -> Vec<Vec<u8>> {
        let headers: &[(&str, &[u8])] = &[("h", b"v"), ("trace", b"0123")];
        let records = [
            NewRecord { key: Some(b"k1"), value: Some(b"value one"), headers, timestamp_ms: 1_000 },
            NewRecord { key: None, value: Some(b"v2"), headers: &[], timestamp_ms: 1_005 },
            NewRecord { key: Some(b"k3"), value: None, headers: &[], timestamp_ms: 1_010 },
        ];
        vec![build_record_batch(&records, 1_000).to_vec(), build_record_batch(&records[1..2], 7).to_vec()]
    }

    pub(super) fn data_plane() -> Vec<Vec<u8>> {
        let messages = [
            PeerMessage::Hello { node: 3, cluster: "tidewater".into() },
            PeerMessage::Raft(Vec::new()),
            PeerMessage::Forwarded(Vec::new()),
        ];
        let mut all = BytesMut::new();
        for (correlation, message) in messages.iter().enumerate() {
            frame::encode(correlation as u64, message, &mut all).expect("encodes");
        }
        let mut one = BytesMut::new();
        frame::encode(9, &messages[0], &mut one).expect("encodes");
        vec![all.to_vec(), one.to_vec()]
    }
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Cut(prop::sample::Index, usize),
    Repeat(prop::sample::Index, usize, usize),
    /// a 2- or 4-byte span set to a value a length field would hold at its extreme
    Extreme(prop::sample::Index, bool, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme =
        prop_oneof![Just(0u32), Just(0x7F), Just(0xFF), Just(0x7FFF), Just(0xFFFF), Just(0x7FFF_FFFF), Just(u32::MAX)];
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(at, n)| Mutation::Cut(at, n)),
        (any::<prop::sample::Index>(), 1usize..32, 1usize..4).prop_map(|(at, n, times)| Mutation::Repeat(at, n, times)),
        (any::<prop::sample::Index>(), any::<bool>(), extreme).prop_map(|(at, wide, v)| Mutation::Extreme(at, wide, v)),
    ]
}

fn mutate(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = input.len();
        match mutation {
            Mutation::Set(at, byte) if len > 0 => input[at.index(len)] = *byte,
            Mutation::Insert(at, bytes) => {
                let at = at.index(len + 1);
                input.splice(at..at, bytes.iter().copied());
            }
            Mutation::Cut(at, n) if len > 0 => {
                let at = at.index(len);
                input.drain(at..(at + n).min(len));
            }
            Mutation::Repeat(at, n, times) if len > 0 => {
                let at = at.index(len);
                let span: Vec<u8> = input[at..(at + n).min(len)].to_vec();
                for _ in 0..*times {
                    input.splice(at..at, span.iter().copied());
                }
            }
            Mutation::Extreme(at, wide, value) => {
                let width = if *wide { 4 } else { 2 };
                if len >= width {
                    let at = at.index(len - width + 1);
                    let bytes = value.to_be_bytes();
                    input[at..at + width].copy_from_slice(&bytes[4 - width..]);
                }
            }
            _ => {}
        }
    }
    input
}

/// A seed of `seeds`, mutated, or (one case in eight) arbitrary bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let seeds = std::sync::Arc::new(seeds);
    prop_oneof![
        7 => (any::<prop::sample::Index>(), prop::collection::vec(mutation(), 0..6))
            .prop_map(move |(pick, mutations)| mutate(seeds[pick.index(seeds.len())].clone(), &mutations)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

#[test]
fn the_seeds_decode() {
    for seed in seeds::mqtt() {
        let mut buf = BytesMut::from(&seed[..]);
        let (version, _) = read_connect(&mut buf, MQTT_MAX).expect("a valid connect").expect("whole");
        while !buf.is_empty() {
            read_packet(&mut buf, version, MQTT_MAX).expect("valid packets").expect("whole");
        }
    }
    for seed in seeds::kafka() {
        let mut buf = BytesMut::from(&seed[..]);
        let frame = read_frame(&mut buf, 1 << 20).expect("a frame").expect("whole");
        decode_request(frame).expect("a valid request");
    }
    for seed in seeds::record_batch() {
        assert!(!decode_records(&seed).expect("a valid batch").is_empty());
    }
    for seed in seeds::data_plane() {
        let mut buf = BytesMut::from(&seed[..]);
        while let Some((_, payload)) = frame::take_frame(&mut buf).expect("frames") {
            frame::decode::<PeerMessage>(&payload).expect("a valid message");
        }
    }
}

proptest! {
    // 4,000 cases in tests/run; PROPTEST_CASES asks for more (a campaign)
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(4000)
    ))]

    #[test]
    fn the_mqtt_codec_never_panics_nor_over_allocates(input in inputs(seeds::mqtt())) {
        bounded(&input, 0, mqtt)?;
    }

    #[test]
    fn the_kafka_request_decoder_never_panics_nor_over_allocates(input in inputs(seeds::kafka())) {
        bounded(&input, 0, kafka)?;
    }

    #[test]
    fn record_batch_decoding_never_panics_nor_over_allocates(input in inputs(seeds::record_batch())) {
        bounded(&input, 0, record_batch)?;
    }

    #[test]
    fn the_data_plane_decoder_never_panics_nor_over_allocates(input in inputs(seeds::data_plane())) {
        // BytesMut may double what it reserves; and each sequence the message nests reserves at
        // most `frame::SEQ_PREALLOC_BYTES` before its elements arrive (`frame::bounded_seq`), not
        // its claimed length
        bounded(&input, 2 * frame::RESERVE_AHEAD + SERDE_SEQUENCES * frame::SEQ_PREALLOC_BYTES, data_plane)?;
    }
}
