//! Fetch and ListOffsets: consumers reading streams.
//!
//! Reads go straight to the `LogStore` (no actor hop) and hand back the stored batch bytes;
//! a long poll waits on the partitions' high-watermark watches until `min_bytes` are there
//! or `max_wait_ms` passes.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use tokio::sync::watch;

use crate::acl::{Operation, Resource};
use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::handlers::Caller;
use crate::stream::registry::PartitionHandle;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

/// A fetched partition's stored batches when there are several, one entry per partition in
/// response order (empty: the partition's `records` say it all). The connection writes them one
/// after the other instead of joining them into one buffer (`wire::encode_response_vectored`).
pub type RecordSets = Vec<Vec<Bytes>>;

/// Answers Fetch, waiting up to `max_wait_ms` for `min_bytes`.
pub async fn fetch(
    ctx: &NodeContext,
    request: FetchRequest,
    version: i16,
    caller: &Caller,
) -> (FetchResponse, RecordSets) {
    // what the caller may not read is answered TOPIC_AUTHORIZATION_FAILED, every poll the same
    let refused: std::collections::BTreeSet<String> = request
        .topics
        .iter()
        .map(|topic| topic.topic.0.to_string())
        .filter(|name| !caller.may(ctx, Operation::Read, Resource::Topic(name)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = request.min_bytes.max(0) as usize;
    loop {
        let (response, sets, bytes, mut watches) = read_once(ctx, &request, version, &refused);
        let now = tokio::time::Instant::now();
        if bytes >= min_bytes.max(1) || now >= deadline || watches.is_empty() {
            return (response, sets);
        }
        // wait for any partition's high watermark to move, or the deadline
        let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            let (response, sets, _, _) = read_once(ctx, &request, version, &refused);
            return (response, sets);
        }
    }
}

fn read_once(
    ctx: &NodeContext,
    request: &FetchRequest,
    version: i16,
    refused: &std::collections::BTreeSet<String>,
) -> (FetchResponse, RecordSets, usize, Vec<watch::Receiver<i64>>) {
    let mut total = 0usize;
    // what the client asks, within the node's cap: a connection holds one response at a
    // time, so this bounds what a client that does not read costs
    let asked = if request.max_bytes > 0 { request.max_bytes as usize } else { usize::MAX };
    let max_total = asked.min(ctx.kafka.fetch_max_bytes);
    let mut watches = Vec::new();
    let mut sets: RecordSets = Vec::new();
    // partitions answered in the topics before this one (the index into `sets`)
    let mut partitions_before = 0;
    let mut responses = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let stream = ctx.streams.get(topic.topic.0.as_str()).filter(|_| !refused.contains(topic.topic.0.as_str()));
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in &topic.partitions {
            let index = wanted.partition;
            let data = PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let Some(partition) =
                stream.as_ref().and_then(|s| usize::try_from(index).ok().and_then(|i| s.partitions.get(i)))
            else {
                let code = if refused.contains(topic.topic.0.as_str()) {
                    codes::TOPIC_AUTHORIZATION_FAILED
                } else {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                };
                partitions.push(data.with_error_code(code));
                continue;
            };
            if let Err(code) = leader_check(partition, wanted.current_leader_epoch) {
                partitions.push(data.with_error_code(code));
                continue;
            }
            // mark the watch as seen before reading, so an append after the read wakes the poll
            let mut watch = partition.high_watermark.clone();
            watch.borrow_and_update();
            let offsets = match ctx.log_store.offsets(&partition.id) {
                Ok(offsets) => offsets,
                Err(_) => {
                    partitions.push(data.with_error_code(codes::KAFKA_STORAGE_ERROR));
                    continue;
                }
            };
            let high_watermark = partition.committed_end(offsets.log_start);
            let mut data = data.with_high_watermark(high_watermark).with_last_stable_offset(high_watermark);
            if version >= 5 {
                data = data.with_log_start_offset(offsets.log_start);
            }
            let offset = wanted.fetch_offset;
            // a new leader's high watermark may trail what the old one told a consumer, until
            // it commits an entry of its term: up to its log end, an offset waits, as in Kafka
            if offset < offsets.log_start || offset > high_watermark.max(offsets.log_end) {
                partitions.push(data.with_error_code(codes::OFFSET_OUT_OF_RANGE));
                continue;
            }
            watches.push(watch);
            let budget = (wanted.partition_max_bytes.max(0) as usize).min(max_total.saturating_sub(total));
            if offset >= high_watermark || (budget == 0 && total > 0) {
                partitions.push(data.with_records(Some(Bytes::new())));
                continue;
            }
            match ctx.log_store.read(&partition.id, offset, budget.max(1), high_watermark) {
                Ok(batches) => {
                    let records = match batches.len() {
                        0 => Bytes::new(),
                        1 => batches.into_iter().next().map(|b| b.bytes).unwrap_or_default(),
                        _ => {
                            // the batches go out as stored, after the response's other bytes
                            let set: Vec<Bytes> = batches.into_iter().map(|b| b.bytes).collect();
                            total += set.iter().map(Bytes::len).sum::<usize>();
                            let index = partitions_before + partitions.len();
                            sets.resize(index + 1, Vec::new());
                            sets[index] = set;
                            Bytes::new()
                        }
                    };
                    total += records.len();
                    partitions.push(data.with_records(Some(records)));
                }
                Err(_) => partitions.push(data.with_error_code(codes::OFFSET_OUT_OF_RANGE)),
            }
        }
        partitions_before += partitions.len();
        responses.push(FetchableTopicResponse::default().with_topic(topic.topic.clone()).with_partitions(partitions));
    }
    // session id 0 (v7+ field; 0 is also its default): no incremental fetch sessions, clients send full fetches (KIP-227)
    (FetchResponse::default().with_session_id(0).with_responses(responses), sets, total, watches)
}

/// Answers ListOffsets (v1+): earliest, latest, or the first offset at or after a timestamp.
pub fn list_offsets(
    ctx: &NodeContext,
    request: ListOffsetsRequest,
    version: i16,
    caller: &Caller,
) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let authorized = caller.may(ctx, Operation::Describe, Resource::Topic(topic.name.0.as_str()));
            let stream = ctx.streams.get(topic.name.0.as_str());
            let partitions = topic
                .partitions
                .into_iter()
                .map(|wanted| {
                    let index = wanted.partition_index;
                    let mut base = ListOffsetsPartitionResponse::default()
                        .with_partition_index(index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    if !authorized {
                        return base.with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
                    }
                    let Some(partition) =
                        stream.as_ref().and_then(|s| usize::try_from(index).ok().and_then(|i| s.partitions.get(i)))
                    else {
                        return base.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    let epoch = match leader_check(partition, wanted.current_leader_epoch) {
                        Ok(epoch) => epoch,
                        Err(code) => return base.with_error_code(code),
                    };
                    if version >= 4 {
                        base = base.with_leader_epoch(epoch);
                    }
                    let Ok(offsets) = ctx.log_store.offsets(&partition.id) else {
                        return base.with_error_code(codes::KAFKA_STORAGE_ERROR);
                    };
                    let high_watermark = partition.committed_end(offsets.log_start);
                    match wanted.timestamp {
                        EARLIEST => base.with_offset(offsets.log_start),
                        LATEST | MAX_TIMESTAMP => base.with_offset(high_watermark),
                        timestamp => match ctx.log_store.offset_for_timestamp(&partition.id, timestamp) {
                            Ok(Some(batch_offset)) if batch_offset < high_watermark => {
                                let (offset, found) =
                                    record_at_or_after(ctx, &partition.id, batch_offset, timestamp, high_watermark)
                                        .unwrap_or((batch_offset, timestamp));
                                base.with_offset(offset.max(offsets.log_start)).with_timestamp(found)
                            }
                            Ok(_) => base,
                            Err(_) => base.with_error_code(codes::KAFKA_STORAGE_ERROR),
                        },
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// Whether this node may answer reads of `partition` for a client that knows leader epoch
/// `client_epoch` (-1: it does not say): the leader epoch, or the Kafka error to answer.
/// A single node's partition always may (epoch 0).
pub fn leader_check(partition: &PartitionHandle, client_epoch: i32) -> Result<i32, i16> {
    let Some(view) = &partition.replica else {
        // a node alone leads its partitions in epoch 0, forever
        return if client_epoch > 0 { Err(codes::UNKNOWN_LEADER_EPOCH) } else { Ok(0) };
    };
    let Some(leadership) = *view.leadership.borrow() else {
        return Err(codes::LEADER_NOT_AVAILABLE);
    };
    if !leadership.is_leader {
        return Err(if leadership.leader.is_some() {
            codes::NOT_LEADER_OR_FOLLOWER
        } else {
            codes::LEADER_NOT_AVAILABLE
        });
    }
    let epoch = leadership.term as i32;
    match client_epoch {
        e if e >= 0 && e < epoch => Err(codes::FENCED_LEADER_EPOCH),
        e if e > epoch => Err(codes::UNKNOWN_LEADER_EPOCH),
        _ => Ok(epoch),
    }
}

/// The first record at or after `timestamp` inside the batch that starts at `batch_offset`
/// (the index only knows batches): (offset, its timestamp). Any codec is decoded.
fn record_at_or_after(
    ctx: &NodeContext,
    id: &tidewater_storage::PartitionId,
    batch_offset: i64,
    timestamp: i64,
    high_watermark: i64,
) -> Option<(i64, i64)> {
    let batch = ctx.log_store.read(id, batch_offset, 1, high_watermark).ok()?.into_iter().next()?;
    let mut bytes = batch.bytes;
    let records = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).ok()?;
    records.records.iter().find(|record| record.timestamp >= timestamp).map(|record| (record.offset, record.timestamp))
}

/// Answers OffsetForLeaderEpoch (KIP-101/320): for each partition, the largest leader epoch
/// at or below the one asked and the offset where it ended, from the log's epoch history;
/// the leader's current epoch ends at its log end. A consumer compares it with its position
/// to tell a truncated log after a leader change. Only the leader answers (a stale
/// `current_leader_epoch` is fenced as for Fetch); an epoch above every known one, or below
/// every one kept, answers -1 and -1 (Kafka's undefined epoch and offset).
pub fn offset_for_leader_epoch(
    ctx: &NodeContext,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let stream = ctx.streams.get(topic.topic.0.as_str());
            let partitions = topic
                .partitions
                .into_iter()
                .map(|wanted| {
                    let base = EpochEndOffset::default()
                        .with_partition(wanted.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let Some(partition) = stream
                        .as_ref()
                        .and_then(|s| usize::try_from(wanted.partition).ok().and_then(|i| s.partitions.get(i)))
                    else {
                        return base.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
                    };
                    let current = match leader_check(partition, wanted.current_leader_epoch) {
                        Ok(epoch) => epoch,
                        Err(code) => return base.with_error_code(code),
                    };
                    let Ok(offsets) = ctx.log_store.offsets(&partition.id) else {
                        return base.with_error_code(codes::KAFKA_STORAGE_ERROR);
                    };
                    let found = match wanted.leader_epoch {
                        epoch if epoch == current => Some((current, offsets.log_end)),
                        epoch if epoch < 0 || epoch > current => None,
                        epoch => match ctx.log_store.end_offset_for_epoch(&partition.id, epoch) {
                            Ok(found) => found,
                            Err(_) => return base.with_error_code(codes::KAFKA_STORAGE_ERROR),
                        },
                    };
                    match found {
                        Some((epoch, end_offset)) => base.with_leader_epoch(epoch).with_end_offset(end_offset),
                        None => base,
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default().with_topic(topic.topic).with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
