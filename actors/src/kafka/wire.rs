//! The Kafka wire layer: framing, request decoding and response encoding for the APIs Tidewater serves.
//!
//! kafka-protocol provides the message types and their codecs; this module decides which APIs and
//! versions are advertised and served, turns any undecodable input into a [`WireError`] instead of a
//! panic, and keeps record bytes uncopied on the hot paths: a Produce request's records are slices of
//! the received frame, and [`encode_response_vectored`] leaves a Fetch response's record sets as their
//! own chunks. kafka-protocol 0.18 sizes a `Vec` from an array count before it reads any element, so a
//! few hostile bytes could make it ask for gigabytes and abort the process; every request body is
//! therefore walked first by a schema guard (`wire_guard.rs`) that bounds each count by the bytes left.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    AlterConfigsResponse, ApiKey, CreateAclsResponse, CreatePartitionsResponse, CreateTopicsResponse,
    DeleteAclsResponse, DeleteTopicsResponse, DescribeAclsResponse, DescribeClusterResponse, DescribeConfigsResponse,
    DescribeGroupsResponse, FetchResponse, FindCoordinatorResponse, HeartbeatResponse, IncrementalAlterConfigsResponse,
    InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse, ListOffsetsResponse,
    MetadataResponse, OffsetCommitResponse, OffsetFetchResponse, OffsetForLeaderEpochResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, SaslAuthenticateResponse, SaslHandshakeResponse, SyncGroupResponse,
    api_versions_response::ApiVersion,
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, VersionRange};

pub use kafka_protocol::messages::{ApiVersionsResponse, RequestKind, ResponseKind};

#[path = "wire_guard.rs"]
mod guard;

/// The lowest Produce version served. v0–v2 are advertised (librdkafka 2.0.2 enables compression only
/// when the broker lists Produce v0) and decoded, so the server knows their acks and can answer them with
/// UNSUPPORTED_VERSION ([`produce_error_response`]); their records are never stored.
pub const PRODUCE_MIN_SERVED: i16 = 3;

/// Kafka error code UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// Record sets shorter than this are copied into the surrounding chunk by [`encode_response_vectored`].
const INLINE_RECORDS_MAX: usize = 4096;

/// A decoded request frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request's api key.
    pub api_key: i16,
    /// The request's api version, within the advertised range (Produce below [`PRODUCE_MIN_SERVED`] is
    /// for the handler to refuse).
    pub api_version: i16,
    /// The id the response must carry.
    pub correlation_id: i32,
    /// The client id of the request header.
    pub client_id: Option<String>,
    /// The decoded request body.
    pub body: RequestKind,
}

/// Why bytes from a client could not be read as a request, or a response could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The size prefix announces a frame larger than allowed; close the connection.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced size of the frame, size prefix excluded.
        size: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// Bytes that are not a valid request; close the connection.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A served api at a version outside the advertised range; answer with [`error_response`].
    #[error("unsupported version {api_version} of api {api_key}")]
    UnsupportedVersion {
        /// The request's api key.
        api_key: i16,
        /// The version asked for.
        api_version: i16,
        /// The id the response must carry.
        correlation_id: i32,
    },
    /// An api key this server does not serve; close the connection (as Kafka does).
    #[error("unknown api {api_key} (version {api_version})")]
    UnknownApi {
        /// The request's api key.
        api_key: i16,
        /// The version asked for.
        api_version: i16,
        /// The id the response would carry.
        correlation_id: i32,
    },
    /// A response that cannot be encoded at the asked version (a server bug, not a client's).
    #[error("cannot encode response: {0}")]
    Encode(String),
}

/// One served api: the advertised version range.
struct ServedApi {
    key: ApiKey,
    min: i16,
    max: i16,
}

/// The served apis, sorted by key. Each max is the last version that still names topics (not ids) and
/// whose semantics the server implements; each min is kafka-protocol's lowest (it follows Kafka 4.0).
const SERVED: &[ServedApi] = &[
    // v0–v2 listed for librdkafka 2.0.2, not served; v13 topic ids
    api(ApiKey::Produce, 0, 12),
    // v13 topic ids
    api(ApiKey::Fetch, 4, 12),
    // v9 tiered-storage timestamp (-5), v10 remote-read timeout
    api(ApiKey::ListOffsets, 1, 8),
    // v10+ add topic ids beside names; v13 top-level error
    api(ApiKey::Metadata, 0, 12),
    // v9 KIP-848 member epochs, v10 topic ids
    api(ApiKey::OffsetCommit, 2, 8),
    // v9 KIP-848 member epochs, v10 topic ids
    api(ApiKey::OffsetFetch, 1, 8),
    // v5 transaction-v2 errors, v6 share groups
    api(ApiKey::FindCoordinator, 0, 4),
    // the classic group protocol, every version (ConsumerGroupHeartbeat is not served)
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::SyncGroup, 0, 5),
    // v6 changes the answer for a missing group (KIP-1043)
    api(ApiKey::DescribeGroups, 0, 5),
    // v5 filters by group type (KIP-848)
    api(ApiKey::ListGroups, 0, 4),
    // v4 is v3's format; lets Java 3.9+ skip a downgrade round trip
    api(ApiKey::ApiVersions, 0, 4),
    // names throughout; v7 adds topic ids to the response only
    api(ApiKey::CreateTopics, 2, 7),
    // v6 deletes by topic id
    api(ApiKey::DeleteTopics, 1, 5),
    // v5 transactions v2 (KIP-890), v6 two-phase commit
    api(ApiKey::InitProducerId, 0, 4),
    // every version kafka-protocol has (Kafka 4.0 dropped v0 and v1)
    api(ApiKey::OffsetForLeaderEpoch, 2, 4),
    // every version kafka-protocol has (v2 is flexible)
    api(ApiKey::DescribeAcls, 1, 3),
    api(ApiKey::CreateAcls, 1, 3),
    api(ApiKey::DeleteAcls, 1, 3),
    // every version kafka-protocol has
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::AlterConfigs, 0, 2),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    // v2 lists fenced brokers
    api(ApiKey::DescribeCluster, 0, 1),
    // after v0 the token travels as a bare size-prefixed frame, after v1 in SaslAuthenticate;
    // librdkafka 2.0 asks for v0 in the range before it uses SASL at all
    api(ApiKey::SaslHandshake, 0, 1),
    api(ApiKey::SaslAuthenticate, 0, 2),
    // users' SCRAM credentials in the cluster's metadata (KIP-554); v0 is the only version
    api(ApiKey::DescribeUserScramCredentials, 0, 0),
    api(ApiKey::AlterUserScramCredentials, 0, 0),
];

const fn api(key: ApiKey, min: i16, max: i16) -> ServedApi {
    ServedApi { key, min, max }
}

fn served(api_key: i16) -> Option<&'static ServedApi> {
    SERVED.iter().find(|api| api.key as i16 == api_key)
}

impl ServedApi {
    fn advertises(&self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// Splits one size-prefixed (i32 big-endian) frame off `buf`; `Ok(None)` = need more bytes (buf untouched).
pub fn read_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, WireError> {
    let Some(prefix) = buf.first_chunk::<4>() else { return Ok(None) };
    let size = i32::from_be_bytes(*prefix);
    let size = usize::try_from(size).map_err(|_| WireError::Malformed(format!("negative frame size {size}")))?;
    if size > max_frame {
        return Err(WireError::FrameTooLarge { size, max: max_frame });
    }
    if buf.len() - 4 < size {
        return Ok(None);
    }
    let _prefix = buf.split_to(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Decodes a request frame: header (version per the crate's header_version for that api/version) then body.
/// Produce v0–v2 decode too, for the handler to refuse (see [`PRODUCE_MIN_SERVED`]).
pub fn decode_request(frame: Bytes) -> Result<Request, WireError> {
    let Some(&[k0, k1, v0, v1, c0, c1, c2, c3]) = frame.first_chunk::<8>() else {
        return Err(WireError::Malformed(format!("frame of {} bytes is shorter than a request header", frame.len())));
    };
    let (api_key, api_version) = (i16::from_be_bytes([k0, k1]), i16::from_be_bytes([v0, v1]));
    let correlation_id = i32::from_be_bytes([c0, c1, c2, c3]);
    let Some(api) = served(api_key) else {
        return Err(WireError::UnknownApi { api_key, api_version, correlation_id });
    };
    if !api.advertises(api_version) {
        return Err(WireError::UnsupportedVersion { api_key, api_version, correlation_id });
    }
    let header_version = api.key.request_header_version(api_version);
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, header_version)
        .map_err(|e| WireError::Malformed(format!("request header v{header_version}: {e:#}")))?;
    guard::check_body(api.key, api_version, header_version >= 2, &buf)?;
    let body = if api.key == ApiKey::Produce && api_version < PRODUCE_MIN_SERVED {
        // v0–v2 are v3 without the leading transactional id: decoded as v3 with a null one (a copy, off
        // the hot path)
        let mut v3 = BytesMut::with_capacity(2 + buf.len());
        v3.put_i16(-1);
        v3.extend_from_slice(&buf);
        RequestKind::decode(api.key, &mut v3.freeze(), PRODUCE_MIN_SERVED)
    } else {
        RequestKind::decode(api.key, &mut buf, api_version)
    }
    .map_err(|e| WireError::Malformed(format!("api {api_key} v{api_version}: {e:#}")))?;
    let client_id = header.client_id.map(|id| id.to_string());
    Ok(Request { api_key, api_version, correlation_id, client_id, body })
}

/// Encodes a response for a request (response header version per api/version; ApiVersions always uses
/// response header v0), size prefix included.
pub fn encode_response(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let start = out.len();
    let encoded = encode_frame(api_key, api_version, correlation_id, body, out);
    if encoded.is_err() {
        out.truncate(start);
    }
    encoded
}

/// Encodes a response like [`encode_response`] as chunks to write in order (e.g. with vectored writes);
/// a Fetch response's record sets stay their own chunks instead of being copied.
///
/// `record_sets` may give a Fetch partition's record set as several stored batches, one entry per
/// partition in response order (an empty entry keeps the partition's `records`): they are written
/// one after the other, still without being joined.
pub fn encode_response_vectored(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    record_sets: &[Vec<Bytes>],
    chunks: &mut Vec<Bytes>,
) -> Result<(), WireError> {
    if let (ResponseKind::Fetch(fetch), Ok(ApiKey::Fetch)) = (body, ApiKey::try_from(api_key)) {
        if encode_fetch_vectored(fetch, api_version, correlation_id, record_sets, chunks)? {
            return Ok(());
        }
        if record_sets.iter().any(|set| !set.is_empty()) {
            let joined = ResponseKind::Fetch(join_record_sets(fetch, record_sets));
            let mut out = BytesMut::new();
            encode_response(api_key, api_version, correlation_id, &joined, &mut out)?;
            chunks.push(out.freeze());
            return Ok(());
        }
    }
    let mut out = BytesMut::new();
    encode_response(api_key, api_version, correlation_id, body, &mut out)?;
    chunks.push(out.freeze());
    Ok(())
}

/// The Fetch response with each partition's batches from `record_sets` joined into its `records`.
fn join_record_sets(fetch: &FetchResponse, record_sets: &[Vec<Bytes>]) -> FetchResponse {
    let mut joined = fetch.clone();
    let partitions = joined.responses.iter_mut().flat_map(|topic| topic.partitions.iter_mut());
    for (partition, set) in partitions.zip(record_sets) {
        if !set.is_empty() {
            partition.records = Some(Bytes::from(set.concat()));
        }
    }
    joined
}

/// The error response a request gets when its version is not supported or it cannot be served: for
/// ApiVersions, an ApiVersionsResponse v0 with error UNSUPPORTED_VERSION (35) and the supported ranges (what
/// Kafka does, so clients can downgrade); for other APIs, a minimal response of that API with the given
/// error code at a version the client can parse (or None if impossible — then the server closes the connection).
pub fn error_response(api_key: i16, api_version: i16, error_code: i16) -> Option<ResponseKind> {
    let key = served(api_key)?.key;
    if key == ApiKey::ApiVersions {
        return Some(ResponseKind::ApiVersions(
            ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(advertised()),
        ));
    }
    let legacy_produce = key == ApiKey::Produce && (0..PRODUCE_MIN_SERVED).contains(&api_version);
    let range = response_versions(key)?;
    if !legacy_produce && !(range.min..=range.max).contains(&api_version) {
        return None;
    }
    let v = api_version;
    let response = match key {
        // no top-level error code and no partitions to answer for (use produce_error_response when the
        // request decoded): an empty response; librdkafka fails the batch at once, while a closed
        // connection makes clients resend until their delivery timeout
        ApiKey::Produce => ResponseKind::Produce(ProduceResponse::default()),
        ApiKey::Fetch if v >= 7 => ResponseKind::Fetch(FetchResponse::default().with_error_code(error_code)),
        ApiKey::Metadata if v >= 13 => ResponseKind::Metadata(MetadataResponse::default().with_error_code(error_code)),
        ApiKey::OffsetFetch if (2..=7).contains(&v) => {
            ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_error_code(error_code))
        }
        ApiKey::FindCoordinator if v <= 3 => {
            ResponseKind::FindCoordinator(FindCoordinatorResponse::default().with_error_code(error_code))
        }
        ApiKey::JoinGroup => ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(error_code)),
        ApiKey::Heartbeat => ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(error_code)),
        ApiKey::LeaveGroup => ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(error_code)),
        ApiKey::SyncGroup => ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(error_code)),
        ApiKey::ListGroups => ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(error_code)),
        ApiKey::InitProducerId => {
            ResponseKind::InitProducerId(InitProducerIdResponse::default().with_error_code(error_code))
        }
        ApiKey::DescribeCluster => {
            ResponseKind::DescribeCluster(DescribeClusterResponse::default().with_error_code(error_code))
        }
        ApiKey::SaslHandshake => {
            ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_error_code(error_code))
        }
        ApiKey::SaslAuthenticate => {
            ResponseKind::SaslAuthenticate(SaslAuthenticateResponse::default().with_error_code(error_code))
        }
        _ => return None,
    };
    Some(response)
}

/// A Produce response giving every partition of `request` the error `error_code` (e.g. UNSUPPORTED_VERSION
/// for v0–v2), encodable at every advertised Produce version.
pub fn produce_error_response(request: &ProduceRequest, error_code: i16) -> ProduceResponse {
    let responses = request
        .topic_data
        .iter()
        .map(|topic| {
            let partitions = topic.partition_data.iter().map(|partition| {
                PartitionProduceResponse::default()
                    .with_index(partition.index)
                    .with_error_code(error_code)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1)
            });
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_topic_id(topic.topic_id)
                .with_partition_responses(partitions.collect())
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// The versions this server advertises in ApiVersions: (api_key, min, max).
pub fn supported_versions() -> Vec<(i16, i16, i16)> {
    SERVED.iter().map(|api| (api.key as i16, api.min, api.max)).collect()
}

/// A complete ApiVersionsResponse for `version` (error UNSUPPORTED_VERSION if `version` is not served).
pub fn api_versions_response(version: i16) -> ApiVersionsResponse {
    let error_code = if serves_api_versions(version) { 0 } else { UNSUPPORTED_VERSION };
    // no supported or finalized features: librdkafka 2.0.2 mis-parses tagged fields in this response
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(advertised())
}

fn advertised() -> Vec<ApiVersion> {
    SERVED
        .iter()
        .map(|api| {
            ApiVersion::default().with_api_key(api.key as i16).with_min_version(api.min).with_max_version(api.max)
        })
        .collect()
}

fn serves_api_versions(version: i16) -> bool {
    served(ApiKey::ApiVersions as i16).is_some_and(|api| api.advertises(version))
}

/// The body version a response is encoded at: an ApiVersions request at an unserved version gets v0.
fn body_version(key: ApiKey, api_version: i16) -> i16 {
    if key == ApiKey::ApiVersions && !serves_api_versions(api_version) { 0 } else { api_version }
}

fn encode_frame(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let key = ApiKey::try_from(api_key).map_err(|()| WireError::Encode(format!("unknown api key {api_key}")))?;
    if response_key(body) != Some(key) {
        return Err(WireError::Encode(format!("response body does not belong to api {api_key}")));
    }
    let version = body_version(key, api_version);
    let start = out.len();
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(out, key.response_header_version(version))
        .map_err(|e| WireError::Encode(format!("response header: {e:#}")))?;
    match body {
        ResponseKind::Produce(produce) if version < PRODUCE_MIN_SERVED => encode_legacy_produce(produce, version, out)?,
        _ => body.encode(out, version).map_err(|e| WireError::Encode(format!("api {api_key} v{version}: {e:#}")))?,
    }
    let size = i32::try_from(out.len() - start - 4)
        .map_err(|_| WireError::Encode(format!("response of {} bytes is too large", out.len() - start)))?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Encodes a Fetch response with its record sets as separate chunks; `Ok(false)` if the layout could not
/// be recognised (the caller then falls back to a copying encode).
///
/// The response is encoded twice without its records, once with every record set empty and once with
/// every one null: the two encodings have the same length and differ exactly at the records' length
/// prefixes, which locates them without duplicating the Fetch schema here.
fn encode_fetch_vectored(
    fetch: &FetchResponse,
    version: i16,
    correlation_id: i32,
    record_sets: &[Vec<Bytes>],
    chunks: &mut Vec<Bytes>,
) -> Result<bool, WireError> {
    let mut shell = fetch.clone();
    let mut records: Vec<Option<Vec<Bytes>>> = Vec::new();
    for (index, partition) in shell.responses.iter_mut().flat_map(|topic| topic.partitions.iter_mut()).enumerate() {
        let own = partition.records.replace(Bytes::new());
        records.push(match record_sets.get(index) {
            Some(set) if !set.is_empty() => Some(set.clone()),
            _ => own.map(|own| vec![own]),
        });
    }
    let key = ApiKey::Fetch as i16;
    let mut shell = ResponseKind::Fetch(shell);
    let mut empty = BytesMut::new();
    encode_response(key, version, correlation_id, &shell, &mut empty)?;
    if let ResponseKind::Fetch(fetch) = &mut shell {
        for partition in fetch.responses.iter_mut().flat_map(|topic| topic.partitions.iter_mut()) {
            partition.records = None;
        }
    }
    let mut null = BytesMut::new();
    encode_response(key, version, correlation_id, &shell, &mut null)?;
    let flexible = ApiKey::Fetch.response_header_version(version) >= 1;
    let width = if flexible { 1 } else { 4 };
    let Some(prefixes) = diff_runs(&empty, &null, width, records.len()) else { return Ok(false) };

    let mut meta = BytesMut::with_capacity(empty.len() + 4 * records.len());
    let mut cuts: Vec<(usize, Bytes)> = Vec::new();
    let mut last = 0;
    for (at, record_set) in prefixes.into_iter().zip(records) {
        meta.extend_from_slice(&empty[last..at]);
        last = at + width;
        let Some(record_set) = record_set else {
            meta.extend_from_slice(&null[at..last]);
            continue;
        };
        let total: usize = record_set.iter().map(Bytes::len).sum();
        let Ok(len) = u32::try_from(total) else { return Ok(false) };
        if flexible {
            put_unsigned_varint(&mut meta, len.saturating_add(1));
        } else {
            meta.put_i32(len as i32);
        }
        for batch in record_set {
            if batch.len() < INLINE_RECORDS_MAX {
                meta.extend_from_slice(&batch);
            } else {
                cuts.push((meta.len(), batch));
            }
        }
    }
    meta.extend_from_slice(&empty[last..]);
    let total = meta.len() - 4 + cuts.iter().map(|(_, r)| r.len()).sum::<usize>();
    let size =
        i32::try_from(total).map_err(|_| WireError::Encode(format!("fetch response of {total} bytes is too large")))?;
    meta[..4].copy_from_slice(&size.to_be_bytes());
    let meta = meta.freeze();
    let mut from = 0;
    for (at, record_set) in cuts {
        if at > from {
            chunks.push(meta.slice(from..at));
        }
        chunks.push(record_set);
        from = at;
    }
    if from < meta.len() {
        chunks.push(meta.slice(from..));
    }
    Ok(true)
}

/// Start offsets of the `count` runs of exactly `width` differing bytes between `a` and `b`, if that is
/// what they differ by.
fn diff_runs(a: &[u8], b: &[u8], width: usize, count: usize) -> Option<Vec<usize>> {
    if a.len() != b.len() {
        return None;
    }
    let mut runs = Vec::with_capacity(count);
    let mut i = 0;
    while i < a.len() {
        if a[i] == b[i] {
            i += 1;
            continue;
        }
        if i + width > a.len() || (i..i + width).any(|j| a[j] == b[j]) {
            return None;
        }
        runs.push(i);
        i += width;
    }
    (runs.len() == count).then_some(runs)
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Produce v0–v2 responses, which kafka-protocol 0.18 no longer encodes (only error answers use them).
fn encode_legacy_produce(produce: &ProduceResponse, version: i16, out: &mut BytesMut) -> Result<(), WireError> {
    let count = |n: usize| i32::try_from(n).map_err(|_| WireError::Encode(format!("array of {n} elements")));
    out.put_i32(count(produce.responses.len())?);
    for topic in &produce.responses {
        let name = topic.name.0.as_bytes();
        let len = i16::try_from(name.len()).map_err(|_| WireError::Encode("topic name too long".into()))?;
        out.put_i16(len);
        out.put_slice(name);
        out.put_i32(count(topic.partition_responses.len())?);
        for partition in &topic.partition_responses {
            out.put_i32(partition.index);
            out.put_i16(partition.error_code);
            out.put_i64(partition.base_offset);
            if version >= 2 {
                out.put_i64(partition.log_append_time_ms);
            }
        }
    }
    if version >= 1 {
        out.put_i32(produce.throttle_time_ms);
    }
    Ok(())
}

/// The api a response body belongs to, for the served apis.
fn response_key(body: &ResponseKind) -> Option<ApiKey> {
    Some(match body {
        ResponseKind::Produce(_) => ApiKey::Produce,
        ResponseKind::Fetch(_) => ApiKey::Fetch,
        ResponseKind::ListOffsets(_) => ApiKey::ListOffsets,
        ResponseKind::Metadata(_) => ApiKey::Metadata,
        ResponseKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        ResponseKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        ResponseKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        ResponseKind::JoinGroup(_) => ApiKey::JoinGroup,
        ResponseKind::Heartbeat(_) => ApiKey::Heartbeat,
        ResponseKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        ResponseKind::SyncGroup(_) => ApiKey::SyncGroup,
        ResponseKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        ResponseKind::ListGroups(_) => ApiKey::ListGroups,
        ResponseKind::ApiVersions(_) => ApiKey::ApiVersions,
        ResponseKind::CreateTopics(_) => ApiKey::CreateTopics,
        ResponseKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        ResponseKind::InitProducerId(_) => ApiKey::InitProducerId,
        ResponseKind::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        ResponseKind::DescribeAcls(_) => ApiKey::DescribeAcls,
        ResponseKind::CreateAcls(_) => ApiKey::CreateAcls,
        ResponseKind::DeleteAcls(_) => ApiKey::DeleteAcls,
        ResponseKind::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        ResponseKind::AlterConfigs(_) => ApiKey::AlterConfigs,
        ResponseKind::CreatePartitions(_) => ApiKey::CreatePartitions,
        ResponseKind::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
        ResponseKind::DescribeCluster(_) => ApiKey::DescribeCluster,
        ResponseKind::SaslHandshake(_) => ApiKey::SaslHandshake,
        ResponseKind::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
        ResponseKind::DescribeUserScramCredentials(_) => ApiKey::DescribeUserScramCredentials,
        ResponseKind::AlterUserScramCredentials(_) => ApiKey::AlterUserScramCredentials,
        _ => return None,
    })
}

/// The versions kafka-protocol can encode a served api's response at.
fn response_versions(key: ApiKey) -> Option<VersionRange> {
    Some(match key {
        ApiKey::Produce => ProduceResponse::VERSIONS,
        ApiKey::Fetch => FetchResponse::VERSIONS,
        ApiKey::ListOffsets => ListOffsetsResponse::VERSIONS,
        ApiKey::Metadata => MetadataResponse::VERSIONS,
        ApiKey::OffsetCommit => OffsetCommitResponse::VERSIONS,
        ApiKey::OffsetFetch => OffsetFetchResponse::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorResponse::VERSIONS,
        ApiKey::JoinGroup => JoinGroupResponse::VERSIONS,
        ApiKey::Heartbeat => HeartbeatResponse::VERSIONS,
        ApiKey::LeaveGroup => LeaveGroupResponse::VERSIONS,
        ApiKey::SyncGroup => SyncGroupResponse::VERSIONS,
        ApiKey::DescribeGroups => DescribeGroupsResponse::VERSIONS,
        ApiKey::ListGroups => ListGroupsResponse::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsResponse::VERSIONS,
        ApiKey::CreateTopics => CreateTopicsResponse::VERSIONS,
        ApiKey::DeleteTopics => DeleteTopicsResponse::VERSIONS,
        ApiKey::InitProducerId => InitProducerIdResponse::VERSIONS,
        ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochResponse::VERSIONS,
        ApiKey::DescribeAcls => DescribeAclsResponse::VERSIONS,
        ApiKey::CreateAcls => CreateAclsResponse::VERSIONS,
        ApiKey::DeleteAcls => DeleteAclsResponse::VERSIONS,
        ApiKey::DescribeConfigs => DescribeConfigsResponse::VERSIONS,
        ApiKey::AlterConfigs => AlterConfigsResponse::VERSIONS,
        ApiKey::CreatePartitions => CreatePartitionsResponse::VERSIONS,
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsResponse::VERSIONS,
        ApiKey::DescribeCluster => DescribeClusterResponse::VERSIONS,
        ApiKey::SaslHandshake => SaslHandshakeResponse::VERSIONS,
        ApiKey::SaslAuthenticate => SaslAuthenticateResponse::VERSIONS,
        ApiKey::DescribeUserScramCredentials => {
            kafka_protocol::messages::DescribeUserScramCredentialsResponse::VERSIONS
        }
        ApiKey::AlterUserScramCredentials => kafka_protocol::messages::AlterUserScramCredentialsResponse::VERSIONS,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
