use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FetchResponse,
    FindCoordinatorRequest, HeartbeatRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest, TopicName, fetch_response, metadata_request,
    produce_request,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes, VersionRange};
use proptest::prelude::*;

use super::*;

/// The advertised table, written out (reasons beside `SERVED`): (api key, min, max).
const TABLE: [(i16, i16, i16); 30] = [
    (0, 0, 12),
    (1, 4, 12),
    (2, 1, 8),
    (3, 0, 12),
    (8, 2, 8),
    (9, 1, 8),
    (10, 0, 4),
    (11, 0, 9),
    (12, 0, 4),
    (13, 0, 5),
    (14, 0, 5),
    (15, 0, 5),
    (16, 0, 4),
    (18, 0, 4),
    (19, 2, 7),
    (20, 1, 5),
    (22, 0, 4),
    (23, 2, 4),
    (29, 1, 3),
    (30, 1, 3),
    (31, 1, 3),
    (32, 1, 4),
    (33, 0, 2),
    (37, 0, 3),
    (44, 0, 1),
    (60, 0, 1),
    (17, 0, 1),
    (36, 0, 2),
    (50, 0, 0),
    (51, 0, 0),
];

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn request_frame(key: ApiKey, version: i16, correlation_id: i32, body: &RequestKind) -> Bytes {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("test-client")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.freeze()
}

fn encoded(key: ApiKey, version: i16, correlation_id: i32, body: &ResponseKind) -> Bytes {
    let mut out = BytesMut::new();
    encode_response(key as i16, version, correlation_id, body, &mut out).unwrap();
    out.freeze()
}

fn request_versions(key: ApiKey) -> VersionRange {
    match key {
        ApiKey::Produce => ProduceRequest::VERSIONS,
        ApiKey::Fetch => FetchRequest::VERSIONS,
        ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
        ApiKey::Metadata => MetadataRequest::VERSIONS,
        ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
        ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
        ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
        ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
        ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
        ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
        ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
        ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
        ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
        ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
        ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
        ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::VERSIONS,
        ApiKey::DescribeConfigs => DescribeConfigsRequest::VERSIONS,
        ApiKey::DescribeAcls => kafka_protocol::messages::DescribeAclsRequest::VERSIONS,
        ApiKey::CreateAcls => kafka_protocol::messages::CreateAclsRequest::VERSIONS,
        ApiKey::DeleteAcls => kafka_protocol::messages::DeleteAclsRequest::VERSIONS,
        ApiKey::CreatePartitions => CreatePartitionsRequest::VERSIONS,
        ApiKey::AlterConfigs => AlterConfigsRequest::VERSIONS,
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::VERSIONS,
        ApiKey::DescribeCluster => DescribeClusterRequest::VERSIONS,
        ApiKey::SaslHandshake => SaslHandshakeRequest::VERSIONS,
        ApiKey::SaslAuthenticate => SaslAuthenticateRequest::VERSIONS,
        ApiKey::DescribeUserScramCredentials => kafka_protocol::messages::DescribeUserScramCredentialsRequest::VERSIONS,
        ApiKey::AlterUserScramCredentials => kafka_protocol::messages::AlterUserScramCredentialsRequest::VERSIONS,
        other => panic!("{other:?} is not served"),
    }
}

#[test]
fn advertised_versions_are_the_table_and_within_what_kafka_protocol_codes() {
    assert_eq!(supported_versions(), TABLE.to_vec());
    for (key, min, max) in TABLE {
        let api = ApiKey::try_from(key).unwrap();
        let served_min = if api == ApiKey::Produce { PRODUCE_MIN_SERVED } else { min };
        let (request, response) = (request_versions(api), response_versions(api).unwrap());
        assert!(served_min >= request.min && served_min >= response.min, "{api:?}");
        assert!(max <= request.max && max <= response.max, "{api:?}");
    }
}

#[test]
fn librdkafka_2_0_2_enables_its_features() {
    // rdkafka_feature.c: a feature is on when each (api, min, max) overlaps the broker's range
    let overlaps = |key: i16, lo: i16, hi: i16| TABLE.iter().any(|&(k, min, max)| k == key && lo <= max && min <= hi);
    type Dependencies = &'static [(i16, i16, i16)];
    let features: &[(&str, Dependencies)] = &[
        ("MsgVer2", &[(0, 3, 3), (1, 4, 4)]),
        ("ZSTD", &[(0, 7, 7), (1, 10, 10)]),
        ("LZ4", &[(10, 0, 0)]),
        ("IdempotentProducer", &[(22, 0, 0)]),
        ("OffsetTime", &[(2, 1, 1)]),
        ("BrokerBalancedConsumer", &[(10, 0, 0), (8, 1, 2), (9, 1, 1), (11, 0, 0), (14, 0, 0), (12, 0, 0), (13, 0, 0)]),
        // rdkafka_msgset_writer.c: gzip, snappy and lz4 need the broker to list Produce v0
        ("compression", &[(0, 0, 0)]),
    ];
    for (feature, deps) in features {
        assert!(deps.iter().all(|&(k, lo, hi)| overlaps(k, lo, hi)), "{feature}");
    }
}

#[test]
fn read_frame_waits_for_whole_frames_and_leaves_the_buffer_untouched() {
    let mut buf = BytesMut::new();
    assert_eq!(read_frame(&mut buf, 100), Ok(None));
    buf.extend_from_slice(&[0, 0, 0]);
    assert_eq!(read_frame(&mut buf, 100), Ok(None));
    buf.extend_from_slice(&[5, 1, 2, 3]);
    assert_eq!(read_frame(&mut buf, 100), Ok(None));
    assert_eq!(&buf[..], &[0, 0, 0, 5, 1, 2, 3]);
    buf.extend_from_slice(&[4, 5, 0, 0, 0, 0, 0, 0, 0, 1, 9]);
    assert_eq!(read_frame(&mut buf, 100), Ok(Some(Bytes::from_static(&[1, 2, 3, 4, 5]))));
    assert_eq!(read_frame(&mut buf, 100), Ok(Some(Bytes::new())));
    assert_eq!(read_frame(&mut buf, 100), Ok(Some(Bytes::from_static(&[9]))));
    assert!(buf.is_empty());
}

#[test]
fn read_frame_rejects_huge_and_negative_sizes_from_the_prefix_alone() {
    let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
    assert_eq!(read_frame(&mut huge, 1 << 20), Err(WireError::FrameTooLarge { size: i32::MAX as usize, max: 1 << 20 }));
    let mut negative = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
    assert!(matches!(read_frame(&mut negative, 1 << 20), Err(WireError::Malformed(_))));
    let mut at_limit = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
    assert_eq!(read_frame(&mut at_limit, 3), Ok(Some(Bytes::from_static(&[1, 2, 3]))));
}

#[test]
fn api_versions_v0_request_golden() {
    let frame = Bytes::from_static(b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x04kcat");
    let request = decode_request(frame).unwrap();
    assert_eq!((request.api_key, request.api_version, request.correlation_id), (18, 0, 1));
    assert_eq!(request.client_id.as_deref(), Some("kcat"));
    assert_eq!(request.body, RequestKind::ApiVersions(ApiVersionsRequest::default()));
}

#[test]
fn api_versions_v3_request_golden() {
    // as librdkafka sends it: request header v2 (client id not compact), compact software name and version
    let frame = Bytes::from_static(b"\x00\x12\x00\x03\x00\x00\x00\x07\x00\x07rdkafka\x00\x0blibrdkafka\x062.0.2\x00");
    let request = decode_request(frame).unwrap();
    assert_eq!((request.api_key, request.api_version, request.correlation_id), (18, 3, 7));
    assert_eq!(request.client_id.as_deref(), Some("rdkafka"));
    let RequestKind::ApiVersions(body) = request.body else { panic!("not api versions") };
    assert_eq!((body.client_software_name.as_str(), body.client_software_version.as_str()), ("librdkafka", "2.0.2"));
}

fn table_entries(flexible: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, min, max) in TABLE {
        out.extend(key.to_be_bytes());
        out.extend(min.to_be_bytes());
        out.extend(max.to_be_bytes());
        if flexible {
            out.push(0); // the entry's empty tagged fields
        }
    }
    out
}

fn with_size(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[test]
fn api_versions_v0_response_golden() {
    let body = ResponseKind::ApiVersions(api_versions_response(0));
    let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 30]; // correlation id, error code, i32 count
    expected.extend(table_entries(false));
    assert_eq!(&encoded(ApiKey::ApiVersions, 0, 1, &body)[..], &with_size(expected)[..]);
}

#[test]
fn api_versions_v3_response_has_header_v0_and_no_tagged_fields() {
    let body = ResponseKind::ApiVersions(api_versions_response(3));
    // correlation id with no header tagged fields (header v0), error code, compact count 30 + 1
    let mut expected = vec![0, 0, 0, 9, 0, 0, 31];
    expected.extend(table_entries(true));
    expected.extend([0, 0, 0, 0, 0]); // throttle time, then an empty tagged-field section
    assert_eq!(&encoded(ApiKey::ApiVersions, 3, 9, &body)[..], &with_size(expected.clone())[..]);
    assert_eq!(&encoded(ApiKey::ApiVersions, 4, 9, &body)[..], &with_size(expected)[..]);
}

#[test]
fn api_versions_at_an_unknown_version_answers_v0_with_unsupported_version() {
    let frame = Bytes::from_static(b"\x00\x12\x00\x05\x00\x00\x00\x02\x00\x01x\x00\x00\x00");
    let Err(WireError::UnsupportedVersion { api_key, api_version, correlation_id }) = decode_request(frame) else {
        panic!("expected unsupported version")
    };
    assert_eq!((api_key, api_version, correlation_id), (18, 5, 2));
    let body = error_response(api_key, api_version, UNSUPPORTED_VERSION).unwrap();
    let mut expected = vec![0, 0, 0, 2, 0, 35, 0, 0, 0, 30];
    expected.extend(table_entries(false));
    assert_eq!(&encoded(ApiKey::ApiVersions, api_version, correlation_id, &body)[..], &with_size(expected)[..]);
    assert_eq!(api_versions_response(5).error_code, UNSUPPORTED_VERSION);
    assert_eq!(api_versions_response(4).error_code, 0);
}

#[test]
fn metadata_requests_round_trip_at_v1_and_v9() {
    for version in [1, 9] {
        let topic = |name| metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s(name))));
        let mut request = MetadataRequest::default().with_topics(Some(vec![topic("orders"), topic("sensors")]));
        if version >= 4 {
            request.allow_auto_topic_creation = false;
        }
        let body = RequestKind::Metadata(request);
        let decoded = decode_request(request_frame(ApiKey::Metadata, version, 77, &body)).unwrap();
        assert_eq!((decoded.api_key, decoded.api_version, decoded.correlation_id), (3, version, 77));
        assert_eq!(decoded.client_id.as_deref(), Some("test-client"));
        assert_eq!(decoded.body, body, "v{version}");
    }
}

#[test]
fn produce_records_come_out_as_slices_of_the_frame() {
    for version in [3, 9] {
        let batch = Bytes::from((0..300u32).map(|i| i as u8).collect::<Vec<_>>());
        let partition =
            produce_request::PartitionProduceData::default().with_index(2).with_records(Some(batch.clone()));
        let topic = produce_request::TopicProduceData::default()
            .with_name(TopicName(s("orders")))
            .with_partition_data(vec![partition]);
        let body = RequestKind::Produce(ProduceRequest::default().with_acks(-1).with_topic_data(vec![topic]));
        let frame = request_frame(ApiKey::Produce, version, 5, &body);
        let mut stream = BytesMut::from(&with_size(frame.to_vec())[..]);
        let frame = read_frame(&mut stream, 1 << 20).unwrap().unwrap();
        let request = decode_request(frame.clone()).unwrap();
        let RequestKind::Produce(produce) = request.body else { panic!("not produce") };
        let records = produce.topic_data[0].partition_data[0].records.clone().unwrap();
        assert_eq!(records, batch, "v{version}");
        let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(frame_range.contains(&(records.as_ptr() as usize)), "v{version}: records were copied");
    }
}

#[test]
fn produce_v0_to_v2_decode_for_the_handler_to_refuse() {
    for version in 0..PRODUCE_MIN_SERVED {
        // acks 1, timeout 1000, topic "t" with partition 4 holding a 3-byte message set
        let frame = [
            &[0, 0, 0, version as u8, 0, 0, 0, 3, 0xff, 0xff][..],
            &[0, 1, 0, 0, 0x03, 0xe8, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 3, 7, 8, 9],
        ]
        .concat();
        let request = decode_request(Bytes::from(frame)).unwrap();
        assert_eq!((request.api_version, request.correlation_id, request.client_id), (version, 3, None));
        let RequestKind::Produce(produce) = request.body else { panic!("not produce") };
        assert_eq!((produce.acks, produce.timeout_ms, produce.transactional_id.is_none()), (1, 1000, true));
        assert_eq!(produce.topic_data[0].partition_data[0].records.as_deref(), Some(&[7, 8, 9][..]));

        let body = ResponseKind::Produce(produce_error_response(&produce, UNSUPPORTED_VERSION));
        let mut expected = vec![0, 0, 0, 3, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 4, 0, 35];
        expected.extend((-1i64).to_be_bytes()); // base offset
        if version >= 2 {
            expected.extend((-1i64).to_be_bytes()); // log append time
        }
        if version >= 1 {
            expected.extend([0, 0, 0, 0]); // throttle time
        }
        assert_eq!(&encoded(ApiKey::Produce, version, 3, &body)[..], &with_size(expected)[..]);

        let body = error_response(0, version, UNSUPPORTED_VERSION).unwrap();
        let throttle: &[u8] = if version >= 1 { &[0, 0, 0, 0] } else { &[] };
        let expected = with_size([&[0, 0, 0, 3, 0, 0, 0, 0][..], throttle].concat());
        assert_eq!(&encoded(ApiKey::Produce, version, 3, &body)[..], &expected[..]);
    }
}

#[test]
fn produce_error_responses_encode_at_every_advertised_version() {
    let topic = produce_request::TopicProduceData::default()
        .with_name(TopicName(s("t")))
        .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(1)]);
    let request = ProduceRequest::default().with_topic_data(vec![topic]);
    let body = ResponseKind::Produce(produce_error_response(&request, UNSUPPORTED_VERSION));
    for version in 0..=12 {
        let mut out = BytesMut::new();
        encode_response(0, version, 1, &body, &mut out).unwrap_or_else(|e| panic!("v{version}: {e}"));
    }
}

fn fetch_response(records: &[Option<Bytes>]) -> FetchResponse {
    let partitions = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            fetch_response::PartitionData::default()
                .with_partition_index(i as i32)
                .with_high_watermark(1000 + i as i64)
                .with_records(r.clone())
        })
        .collect::<Vec<_>>();
    let (first, second) = partitions.split_at(2);
    let topic = |name, p: &[fetch_response::PartitionData]| {
        fetch_response::FetchableTopicResponse::default().with_topic(TopicName(s(name))).with_partitions(p.to_vec())
    };
    FetchResponse::default().with_responses(vec![topic("a", first), topic("b", second)])
}

fn decode_fetch(frame: &Bytes, version: i16) -> FetchResponse {
    let mut buf = frame.clone();
    assert_eq!(buf.get_i32() as usize, buf.len());
    ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(version)).unwrap();
    let fetch = FetchResponse::decode(&mut buf, version).unwrap();
    assert!(buf.is_empty());
    fetch
}

#[test]
fn fetch_records_pass_through_unchanged() {
    let big = Bytes::from(vec![0xab; 100_000]);
    let records = [Some(big.clone()), Some(Bytes::from_static(b"small batch")), None, Some(Bytes::new()), Some(big)];
    let response = fetch_response(&records);
    for version in [4, 7, 11, 12] {
        let frame = encoded(ApiKey::Fetch, version, 11, &ResponseKind::Fetch(response.clone()));
        let decoded = decode_fetch(&frame, version);
        let got: Vec<_> = decoded.responses.iter().flat_map(|t| &t.partitions).map(|p| p.records.clone()).collect();
        assert_eq!(got, records.to_vec(), "v{version}");
    }
}

#[test]
fn vectored_fetch_matches_the_copying_encoder_and_does_not_copy_big_record_sets() {
    let big = Bytes::from(vec![0xcd; 200_000]);
    let just_inline = Bytes::from(vec![1; INLINE_RECORDS_MAX - 1]);
    let cases = [
        vec![Some(big.clone()), Some(just_inline), None, Some(Bytes::from(vec![2; INLINE_RECORDS_MAX]))],
        vec![None, None],
        vec![Some(Bytes::new()), Some(big.clone()), Some(big.clone())],
    ];
    for records in cases {
        let body = ResponseKind::Fetch(fetch_response(&records));
        for version in [4, 11, 12] {
            let mut chunks = Vec::new();
            encode_response_vectored(1, version, 21, &body, &[], &mut chunks).unwrap();
            assert_eq!(chunks.concat(), encoded(ApiKey::Fetch, version, 21, &body).to_vec(), "v{version}");
            let big_chunks = chunks.iter().filter(|c| c.as_ptr() == big.as_ptr() && c.len() == big.len()).count();
            let expected = records.iter().filter(|r| r.as_ref().is_some_and(|r| r.len() == big.len())).count();
            assert_eq!(big_chunks, expected, "v{version}: big record sets were copied");
        }
    }
    let mut chunks = Vec::new();
    let metadata = ResponseKind::Metadata(MetadataResponse::default());
    encode_response_vectored(3, 9, 1, &metadata, &[], &mut chunks).unwrap();
    assert_eq!(chunks, vec![encoded(ApiKey::Metadata, 9, 1, &metadata)]);
}

#[test]
fn vectored_fetch_writes_several_stored_batches_of_a_partition_without_joining_them() {
    let big = Bytes::from(vec![0xcd; 200_000]);
    let small = Bytes::from(vec![7; 100]);
    // partition 0: one record set; partition 1: three batches given apart; partition 2: none
    let records = [Some(small.clone()), Some(Bytes::new()), None];
    let sets = vec![Vec::new(), vec![big.clone(), small.clone(), big.clone()], Vec::new()];
    let joined = [Some(small.clone()), Some(Bytes::from([&big[..], &small[..], &big[..]].concat())), None];
    for version in [4, 11, 12] {
        let mut chunks = Vec::new();
        let body = ResponseKind::Fetch(fetch_response(&records));
        encode_response_vectored(1, version, 21, &body, &sets, &mut chunks).unwrap();
        let expected = encoded(ApiKey::Fetch, version, 21, &ResponseKind::Fetch(fetch_response(&joined)));
        assert_eq!(chunks.concat(), expected.to_vec(), "v{version}");
        let big_chunks = chunks.iter().filter(|c| c.as_ptr() == big.as_ptr() && c.len() == big.len()).count();
        assert_eq!(big_chunks, 2, "v{version}: the stored batches were copied");
    }
}

#[test]
fn response_header_version_follows_flexibility() {
    let metadata = ResponseKind::Metadata(MetadataResponse::default());
    for (version, header_version) in [(8, 0), (9, 1), (12, 1)] {
        let mut frame = encoded(ApiKey::Metadata, version, 4, &metadata);
        assert_eq!(frame.get_i32() as usize, frame.len());
        let header = ResponseHeader::decode(&mut frame, header_version).unwrap();
        assert_eq!(header.correlation_id, 4);
        assert_eq!(MetadataResponse::decode(&mut frame, version).unwrap(), MetadataResponse::default());
        assert!(frame.is_empty(), "v{version} with response header v{header_version}");
    }
    let v9 = encoded(ApiKey::Metadata, 9, 4, &metadata);
    assert_eq!(&v9[4..9], &[0, 0, 0, 4, 0]); // correlation id, empty header tagged fields
}

#[test]
fn encode_refuses_mismatched_bodies_and_leaves_out_untouched() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let metadata = ResponseKind::Metadata(MetadataResponse::default());
    assert!(matches!(encode_response(1, 12, 1, &metadata, &mut out), Err(WireError::Encode(_))));
    assert!(matches!(encode_response(3, 99, 1, &metadata, &mut out), Err(WireError::Encode(_))));
    assert!(matches!(encode_response(999, 1, 1, &metadata, &mut out), Err(WireError::Encode(_))));
    assert_eq!(&out[..], b"keep");
}

#[test]
fn unknown_apis_and_unserved_versions_carry_the_correlation_id() {
    let frame = |key: i16, version: i16| {
        Bytes::from([&key.to_be_bytes()[..], &version.to_be_bytes(), &[0, 0, 1, 0, 0, 0]].concat())
    };
    for key in [21, 68, 999, -1] {
        assert_eq!(
            decode_request(frame(key, 1)),
            Err(WireError::UnknownApi { api_key: key, api_version: 1, correlation_id: 256 })
        );
    }
    for (key, version) in [(1, 3), (1, 13), (3, 13), (8, 9), (9, 9), (60, 2), (22, -1), (17, 2)] {
        let expected = WireError::UnsupportedVersion { api_key: key, api_version: version, correlation_id: 256 };
        assert_eq!(decode_request(frame(key, version)), Err(expected));
    }
    assert!(matches!(decode_request(Bytes::from_static(&[0, 18, 0, 0, 0, 0, 0])), Err(WireError::Malformed(_))));
}

#[test]
fn error_responses_encode_at_the_asked_version_or_are_none() {
    for (key, _, _) in TABLE {
        let api = ApiKey::try_from(key).unwrap();
        let range = response_versions(api).unwrap();
        for version in (range.min.min(0))..=range.max + 1 {
            let Some(body) = error_response(key, version, UNSUPPORTED_VERSION) else { continue };
            let mut out = BytesMut::new();
            encode_response(key, version, 1, &body, &mut out).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        }
    }
    assert!(error_response(3, 5, UNSUPPORTED_VERSION).is_none(), "metadata before v13 has no top-level error");
    assert!(error_response(21, 1, UNSUPPORTED_VERSION).is_none(), "DeleteRecords is not served");
    let Some(ResponseKind::Heartbeat(heartbeat)) = error_response(12, 4, 16) else { panic!("no heartbeat") };
    assert_eq!(heartbeat.error_code, 16);
    let Some(ResponseKind::Fetch(fetch)) = error_response(1, 13, UNSUPPORTED_VERSION) else { panic!("no fetch") };
    assert_eq!(fetch.error_code, UNSUPPORTED_VERSION);
}

#[test]
fn hostile_array_counts_are_malformed_not_an_allocation() {
    // Metadata v0, null client id, i32::MAX topics: kafka-protocol alone would reserve ~150 GiB
    let frame = Bytes::from_static(&[0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
    assert!(matches!(decode_request(frame), Err(WireError::Malformed(_))));
    // the 8-byte body from kafka-protocol-rs pull request 152, behind a Metadata v0 header
    let frame = Bytes::from_static(&[0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0x03, 0x3c, 0x0c, 0x00, 0xb6]);
    assert!(matches!(decode_request(frame), Err(WireError::Malformed(_))));
}

#[test]
fn every_truncation_of_a_request_is_an_error() {
    let topic = produce_request::TopicProduceData::default().with_name(TopicName(s("t"))).with_partition_data(vec![
        produce_request::PartitionProduceData::default().with_records(Some(Bytes::from_static(&[1; 40]))),
    ]);
    let produce = RequestKind::Produce(ProduceRequest::default().with_topic_data(vec![topic]));
    let metadata =
        RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s("t")))),
        ])));
    for (key, version, body) in
        [(ApiKey::Produce, 3, &produce), (ApiKey::Produce, 9, &produce), (ApiKey::Metadata, 9, &metadata)]
    {
        let frame = request_frame(key, version, 1, body);
        assert!(decode_request(frame.clone()).is_ok());
        for len in 0..frame.len() {
            assert!(decode_request(frame.slice(..len)).is_err(), "{key:?} v{version} cut at {len}");
        }
    }
}

fn served_pairs() -> Vec<(i16, i16)> {
    TABLE.iter().flat_map(|&(key, min, max)| (min..=max).map(move |v| (key, v))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn read_frame_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..80) {
        let mut buf = BytesMut::from(&bytes[..]);
        match read_frame(&mut buf, max) {
            Ok(Some(frame)) => prop_assert!(frame.len() <= max && buf.len() == bytes.len() - 4 - frame.len()),
            Ok(None) => prop_assert_eq!(&buf[..], &bytes[..]),
            Err(_) => {}
        }
    }

    #[test]
    fn read_frame_reassembles_frames_split_anywhere(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(|f| with_size(f.clone())).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let (mut buf, mut got, mut from) = (BytesMut::new(), Vec::new(), 0);
        for cut in cuts {
            buf.extend_from_slice(&stream[from..cut]);
            from = cut;
            while let Some(frame) = read_frame(&mut buf, 1024).unwrap() {
                got.push(frame.to_vec());
            }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn decode_request_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_request(Bytes::from(bytes));
    }

    #[test]
    fn decode_request_never_panics_behind_a_valid_header(
        pick in any::<prop::sample::Index>(),
        body in prop::collection::vec(any::<u8>(), 0..160),
    ) {
        let pairs = served_pairs();
        let (key, version) = pairs[pick.index(pairs.len())];
        let api = ApiKey::try_from(key).unwrap();
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .encode(&mut frame, api.request_header_version(version))
            .unwrap();
        frame.extend_from_slice(&body);
        let _ = decode_request(frame.freeze());
    }
}
