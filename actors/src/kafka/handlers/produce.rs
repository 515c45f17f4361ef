//! Produce and InitProducerId: Kafka producers writing free streams.

use bytes::Bytes;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, ProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProducerId};
use kafka_protocol::protocol::StrBytes;
use ractor::call_t;
use tidewater_storage::split_batches;

use crate::acl::{Operation, Resource};
use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::handlers::Caller;
use crate::stream::def::StreamKind;
use crate::stream::partition::{Acks, PartitionMsg, ProduceError};

const APPEND_TIMEOUT_MS: u64 = 30_000;

/// Answers Produce (v3+; older versions are refused before this). The partitions of a request are
/// written concurrently (each partition's batches in order); a replicated partition's answer waits at
/// most the request's `timeout_ms`, then is `REQUEST_TIMED_OUT` (the batch may still commit: an
/// idempotent producer's retry is then answered with its offset).
pub async fn produce(ctx: &NodeContext, request: ProduceRequest, version: i16, caller: &Caller) -> ProduceResponse {
    let acks = if request.acks == 1 { Acks::Leader } else { Acks::All };
    let replicated_wait = (request.timeout_ms.max(1) as u64).min(APPEND_TIMEOUT_MS);
    let mut topics = Vec::with_capacity(request.topic_data.len());
    let mut answers = Vec::new();
    for topic in request.topic_data {
        let stream = ctx.streams.get(topic.name.0.as_str());
        let name = topic.name.0.to_string();
        let authorized = caller.may(ctx, Operation::Write, Resource::Topic(&name));
        topics.push((topic.name, topic.partition_data.len()));
        for data in topic.partition_data {
            let wait =
                if stream.as_ref().is_some_and(|s| s.replicated()) { replicated_wait } else { APPEND_TIMEOUT_MS };
            let stream = if authorized { Ok(stream.clone()) } else { Err(()) };
            answers.push(produce_partition(ctx, stream, name.clone(), data, acks, version, wait));
        }
    }
    let mut answers = futures::future::join_all(answers).await.into_iter();
    let responses = topics
        .into_iter()
        .map(|(name, count)| {
            let partition_responses = answers.by_ref().take(count).collect();
            TopicProduceResponse::default().with_name(name).with_partition_responses(partition_responses)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// Writes one partition's records: every batch in order, each answered within `wait_ms`.
async fn produce_partition(
    ctx: &NodeContext,
    // Err: the caller may not write the topic
    stream: Result<Option<std::sync::Arc<crate::stream::registry::Stream>>, ()>,
    name: String,
    data: PartitionProduceData,
    acks: Acks,
    version: i16,
    wait_ms: u64,
) -> PartitionProduceResponse {
    let index = data.index;
    let reply = |code: i16, message: Option<String>| {
        let response = PartitionProduceResponse::default().with_index(index).with_error_code(code).with_base_offset(-1);
        // the error message field exists from v8
        if version >= 8 { response.with_error_message(message.map(StrBytes::from_string)) } else { response }
    };
    let Ok(stream) = &stream else {
        return reply(codes::TOPIC_AUTHORIZATION_FAILED, Some(format!("not authorized to write {name}")));
    };
    let Some(stream) = stream else {
        return reply(codes::UNKNOWN_TOPIC_OR_PARTITION, None);
    };
    if stream.def.kind == StreamKind::Bound {
        let filter = stream.def.filter.clone().unwrap_or_default();
        return reply(
            codes::TOPIC_AUTHORIZATION_FAILED,
            Some(format!(
                "stream {name} is bound to the MQTT filter {filter}: it is written by MQTT publishes and Kafka \
                 clients may only read it"
            )),
        );
    }
    let Some(partition) = usize::try_from(index).ok().and_then(|i| stream.partitions.get(i)) else {
        return reply(codes::UNKNOWN_TOPIC_OR_PARTITION, None);
    };
    let records = data.records.unwrap_or_default();
    if records.len() > ctx.kafka.max_message_bytes {
        return reply(
            codes::MESSAGE_TOO_LARGE,
            Some(format!("{} bytes exceed max.message.bytes {}", records.len(), ctx.kafka.max_message_bytes)),
        );
    }
    let batches = match split_batches(&records).and_then(check_compressed) {
        Ok(batches) if !batches.is_empty() => batches,
        Ok(_) => return reply(codes::CORRUPT_MESSAGE, Some("no record batch".to_string())),
        Err(error) => return reply(codes::CORRUPT_MESSAGE, Some(error.to_string())),
    };
    let mut base_offset = None;
    for batch in batches {
        match append(&partition.actor, batch, acks, wait_ms, stream.replicated()).await {
            Ok(offset) => {
                base_offset.get_or_insert(offset);
            }
            Err((code, message)) => return reply(code, Some(message)),
        }
    }
    let offsets = ctx.log_store.offsets(&partition.id).unwrap_or_default();
    let response = reply(codes::NONE, None).with_base_offset(base_offset.unwrap_or(-1));
    if version >= 5 { response.with_log_start_offset(offsets.log_start) } else { response }
}

async fn append(
    actor: &ractor::ActorRef<PartitionMsg>,
    batch: Bytes,
    acks: Acks,
    wait_ms: u64,
    replicated: bool,
) -> Result<i64, (i16, String)> {
    match call_t!(actor, PartitionMsg::AppendBatch, wait_ms, batch, acks) {
        Ok(Ok(produced)) => Ok(produced.base_offset),
        Ok(Err(error)) => Err((
            match error {
                ProduceError::Corrupt(_) => codes::CORRUPT_MESSAGE,
                ProduceError::OutOfOrderSequence => codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
                ProduceError::InvalidProducerEpoch => codes::INVALID_PRODUCER_EPOCH,
                ProduceError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
                ProduceError::NotLeader(_) => codes::NOT_LEADER_OR_FOLLOWER,
                ProduceError::LeaderNotAvailable(_) => codes::LEADER_NOT_AVAILABLE,
                ProduceError::NotEnoughReplicas(..) => codes::NOT_ENOUGH_REPLICAS,
            },
            error.to_string(),
        )),
        Err(_) if replicated => {
            Err((codes::REQUEST_TIMED_OUT, format!("not replicated within the request's timeout ({wait_ms} ms)")))
        }
        Err(error) => Err((codes::KAFKA_STORAGE_ERROR, format!("partition did not answer: {error}"))),
    }
}

/// Answers InitProducerId: a fresh producer id, or the next epoch of a known one.
pub fn init_producer_id(ctx: &NodeContext, request: InitProducerIdRequest) -> InitProducerIdResponse {
    if request.transactional_id.is_some() {
        return InitProducerIdResponse::default()
            .with_error_code(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // KIP-360: a producer that already has an id may bump its epoch instead of getting a new id
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 && request.producer_epoch < i16::MAX {
        return InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    match ctx.producer_ids.next() {
        Ok(id) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(error) => {
            tracing::error!(%error, "cannot allocate a producer id");
            InitProducerIdResponse::default()
                .with_error_code(codes::KAFKA_STORAGE_ERROR)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

/// Checks compressed batches against their headers, as `validate_batch` does for uncompressed
/// ones (record count, last offset delta): the records are decompressed to be counted.
fn check_compressed(batches: Vec<Bytes>) -> Result<Vec<Bytes>, tidewater_storage::StorageError> {
    for batch in &batches {
        let header = tidewater_storage::BatchHeader::parse(batch)?;
        if header.compression() == 0 {
            continue;
        }
        let invalid = |reason: String| tidewater_storage::StorageError::InvalidBatch(reason);
        let mut bytes = batch.clone();
        let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes)
            .map_err(|error| invalid(format!("cannot decompress: {error}")))?;
        let records = decoded.records;
        if records.len() as i64 != i64::from(header.record_count) {
            return Err(invalid(format!(
                "record count {} but the batch holds {} records",
                header.record_count,
                records.len()
            )));
        }
        let last = header.base_offset + i64::from(header.last_offset_delta);
        if records.last().is_some_and(|record| record.offset != last) {
            return Err(invalid(format!(
                "last offset delta {} but the last record has {}",
                header.last_offset_delta,
                records.last().map_or(-1, |record| record.offset - header.base_offset)
            )));
        }
    }
    Ok(batches)
}
