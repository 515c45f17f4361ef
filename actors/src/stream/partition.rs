//! The `PartitionReplica` actor: the single writer of one (stream, partition) log.
//!
//! MQTT messages are group-committed: each one joins a pending list and the first of a run
//! schedules a `Flush` behind everything already in the mailbox, so one RecordBatch (and one
//! fsync with `fsync = always`) covers every message that arrived meanwhile. Kafka batches
//! are appended as sent, after the idempotent-producer sequence check. Readers do not go
//! through the actor: they read the `LogStore` directly and wait on the high-watermark watch.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tidewater_storage::{
    BatchHeader, LogStore, NewRecord, PartitionId, StorageError, build_record_batch, validate_batch,
};
use tokio::sync::watch;

use crate::mqtt::session::SessionMsg;

/// One MQTT message bound for a stream partition.
#[derive(Debug, Clone)]
pub struct MqttRecord {
    /// Record key: the MQTT topic.
    pub key: Bytes,
    /// Record value: the payload.
    pub value: Bytes,
    /// Record headers (the `mqtt.*` names are static: no allocation per message).
    pub headers: Vec<(Cow<'static, str>, Bytes)>,
    /// Broker receive time (ms since the epoch).
    pub timestamp_ms: i64,
}

/// Who to tell once an MQTT record is durable.
#[derive(Debug, Clone)]
pub struct DurableNotice {
    /// The publishing session.
    pub session: ActorRef<SessionMsg>,
    /// The token the session waits on.
    pub token: u64,
}

/// Why a produce was refused (each maps to a Kafka error code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// the batch failed validation (bad CRC, length, magic)
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// a sequence number out of order for this producer
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    /// an older epoch of a producer that has since been fenced
    #[error("producer fenced by a newer epoch")]
    InvalidProducerEpoch,
    /// storage failed
    #[error("storage: {0}")]
    Storage(String),
}

/// The outcome of a produce: the base offset given (or of the original, for a duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Whether the batch was a retried duplicate that was not appended again.
    pub duplicate: bool,
}

/// Messages of the `PartitionReplica` actor.
pub enum PartitionMsg {
    /// Append an MQTT record (group-committed).
    AppendMqtt(MqttRecord, Option<DurableNotice>),
    /// Write every pending MQTT record as one batch.
    Flush,
    /// Append a Kafka RecordBatch v2 as sent.
    AppendBatch(Bytes, RpcReplyPort<Result<Produced, ProduceError>>),
    /// Apply retention at `now_ms`.
    ApplyRetention {
        /// Now, ms since the epoch.
        now_ms: i64,
        /// Delete batches whose records are all older than this.
        retention_ms: Option<i64>,
        /// Delete the oldest batches beyond this size.
        retention_bytes: Option<u64>,
    },
}

/// Spawn arguments.
pub struct PartitionArgs {
    /// Which partition.
    pub id: PartitionId,
    /// The node's log store.
    pub store: Arc<dyn LogStore>,
    /// Where the high watermark is published.
    pub high_watermark: watch::Sender<i64>,
    /// Record batches are cut at about this many bytes.
    pub max_batch_bytes: usize,
    /// The node's span, which the actor's messages run in.
    pub span: tracing::Span,
}

/// The `PartitionReplica` actor.
pub struct PartitionReplica;

#[derive(Debug, Clone)]
struct ProducerState {
    epoch: i16,
    last_sequence: i32,
    /// (base sequence, base offset) of the last batches, for duplicate detection.
    recent: VecDeque<(i32, i64)>,
}

/// The actor's state.
pub struct PartitionState {
    args: PartitionArgs,
    pending: Vec<(MqttRecord, Option<DurableNotice>)>,
    flush_scheduled: bool,
    producers: BTreeMap<i64, ProducerState>,
}

impl Actor for PartitionReplica {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PartitionMsg>,
        args: PartitionArgs,
    ) -> Result<PartitionState, ActorProcessingErr> {
        args.store.create_partition(&args.id)?;
        let offsets = args.store.offsets(&args.id)?;
        // a single node commits what it stores: the high watermark is the log end
        args.store.set_high_watermark(&args.id, offsets.log_end)?;
        args.high_watermark.send_replace(offsets.log_end);
        let producers = recover_producers(args.store.as_ref(), &args.id, offsets.log_start, offsets.log_end);
        Ok(PartitionState { args, pending: Vec::new(), flush_scheduled: false, producers })
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionMsg>,
        message: PartitionMsg,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.args.span.clone();
        let _entered = span.enter(); // the handler does not await
        match message {
            PartitionMsg::AppendMqtt(record, notice) => {
                state.pending.push((record, notice));
                if !state.flush_scheduled {
                    state.flush_scheduled = true;
                    // refused only while draining at shutdown, and post_stop flushes then
                    let _ = myself.cast(PartitionMsg::Flush);
                }
            }
            PartitionMsg::Flush => {
                state.flush_scheduled = false;
                state.flush();
            }
            PartitionMsg::AppendBatch(batch, reply) => {
                // keep MQTT records ahead of a produce that arrived after them
                state.flush();
                let _ = reply.send(state.append_batch(batch));
            }
            PartitionMsg::ApplyRetention { now_ms, retention_ms, retention_bytes } => {
                if let Err(error) = state.apply_retention(now_ms, retention_ms, retention_bytes) {
                    tracing::error!(stream = %state.args.id.stream, partition = state.args.id.partition, %error, "retention failed");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<PartitionMsg>, state: &mut PartitionState) -> Result<(), ActorProcessingErr> {
        state.flush();
        Ok(())
    }
}

/// How much of a partition's tail is read at start to rebuild idempotent-producer state.
const PRODUCER_RECOVERY_BYTES: usize = 8 * 1024 * 1024;

/// Rebuilds each producer's last sequence and recent batches from the log tail (batch headers
/// carry producer id, epoch and sequence), so that a retry after a restart is still recognised
/// as a duplicate — what Kafka's producer-state snapshots give it.
fn recover_producers(
    store: &dyn LogStore,
    id: &PartitionId,
    log_start: i64,
    log_end: i64,
) -> BTreeMap<i64, ProducerState> {
    let mut producers: BTreeMap<i64, ProducerState> = BTreeMap::new();
    if log_end <= log_start {
        return producers;
    }
    // read whole batches from a point near the end; a batch header is enough per batch
    let mut offset = log_start.max(log_end - 100_000);
    let mut budget = PRODUCER_RECOVERY_BYTES;
    while offset < log_end && budget > 0 {
        let Ok(batches) = store.read(id, offset, budget.min(1024 * 1024), log_end) else { break };
        let Some(last) = batches.last() else { break };
        offset = last.last_offset + 1;
        for batch in &batches {
            budget = budget.saturating_sub(batch.bytes.len());
            let Ok(header) = BatchHeader::parse(&batch.bytes) else { continue };
            if header.producer_id < 0 || header.base_sequence < 0 {
                continue;
            }
            record_producer_batch(&mut producers, &header, batch.base_offset);
        }
    }
    producers
}

/// Remembers a producer's batch: its last sequence, and the batch for duplicate detection.
fn record_producer_batch(producers: &mut BTreeMap<i64, ProducerState>, header: &BatchHeader, base_offset: i64) {
    let producer = producers.entry(header.producer_id).or_insert_with(|| ProducerState {
        epoch: header.producer_epoch,
        last_sequence: -1,
        recent: VecDeque::new(),
    });
    if header.producer_epoch != producer.epoch {
        producer.epoch = header.producer_epoch;
        producer.recent.clear();
    }
    producer.last_sequence = header.base_sequence.wrapping_add(header.last_offset_delta);
    producer.recent.push_back((header.base_sequence, base_offset));
    if producer.recent.len() > 5 {
        producer.recent.pop_front();
    }
}

impl PartitionState {
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        while start < pending.len() {
            // cut batches at about max_batch_bytes
            let mut end = start;
            let mut bytes = 0;
            while end < pending.len() && (end == start || bytes < self.args.max_batch_bytes) {
                bytes += pending[end].0.value.len() + pending[end].0.key.len() + 64;
                end += 1;
            }
            let chunk = &pending[start..end];
            let header_refs: Vec<Vec<(&str, &[u8])>> = chunk
                .iter()
                .map(|(record, _)| record.headers.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect())
                .collect();
            let records: Vec<NewRecord<'_>> = chunk
                .iter()
                .zip(&header_refs)
                .map(|((record, _), headers)| NewRecord {
                    key: Some(&record.key),
                    value: Some(&record.value),
                    headers,
                    timestamp_ms: record.timestamp_ms,
                })
                .collect();
            let base_timestamp = chunk.first().map_or(0, |(r, _)| r.timestamp_ms);
            let batch = build_record_batch(&records, base_timestamp);
            let result = self.args.store.append(&self.args.id, 0, batch);
            let ok = match result {
                Ok(appended) => {
                    self.publish_high_watermark(appended.last_offset + 1);
                    true
                }
                Err(error) => {
                    tracing::error!(stream = %self.args.id.stream, partition = self.args.id.partition, %error, "append failed");
                    false
                }
            };
            // one message per session per flush, not one per record, in the order the sessions
            // first appear (never by ActorId: it comes from a process-wide counter)
            let mut notices: Vec<(ActorRef<SessionMsg>, Vec<u64>)> = Vec::new();
            let mut index: crate::lookup::LookupMap<ractor::ActorId, usize> = crate::lookup::LookupMap::new();
            for notice in chunk.iter().filter_map(|(_, notice)| notice.as_ref()) {
                let at = *index.entry(notice.session.get_id()).or_insert_with(|| {
                    notices.push((notice.session.clone(), Vec::new()));
                    notices.len() - 1
                });
                notices[at].1.push(notice.token);
            }
            for (session, tokens) in notices {
                let _ = session.cast(SessionMsg::Durable { tokens, ok });
            }
            start = end;
        }
    }

    fn publish_high_watermark(&self, high_watermark: i64) {
        let previous = *self.args.high_watermark.borrow();
        crate::check_invariant!(
            crate::invariants::InvariantId::HighWatermarkBackwards,
            high_watermark >= previous,
            "{}/{}: high watermark {previous} -> {high_watermark}",
            self.args.id.stream,
            self.args.id.partition
        );
        if let Err(error) = self.args.store.set_high_watermark(&self.args.id, high_watermark) {
            tracing::error!(%error, "cannot record high watermark");
        }
        self.args.high_watermark.send_replace(high_watermark);
    }

    fn append_batch(&mut self, batch: Bytes) -> Result<Produced, ProduceError> {
        let header = validate_batch(&batch).map_err(|e| ProduceError::Corrupt(e.to_string()))?;
        let producer_id = header.producer_id;
        if producer_id >= 0
            && header.base_sequence >= 0
            && let Some(producer) = self.producers.get(&producer_id)
        {
            if header.producer_epoch < producer.epoch {
                return Err(ProduceError::InvalidProducerEpoch);
            }
            if header.producer_epoch == producer.epoch {
                if let Some((_, base_offset)) =
                    producer.recent.iter().find(|(sequence, _)| *sequence == header.base_sequence)
                {
                    return Ok(Produced { base_offset: *base_offset, duplicate: true });
                }
                if header.base_sequence != producer.last_sequence.wrapping_add(1) {
                    return Err(ProduceError::OutOfOrderSequence);
                }
            } else if header.base_sequence != 0 {
                return Err(ProduceError::OutOfOrderSequence);
            }
        }
        let appended = self.args.store.append(&self.args.id, 0, batch).map_err(storage_error)?;
        self.publish_high_watermark(appended.last_offset + 1);
        if producer_id >= 0 && header.base_sequence >= 0 {
            record_producer_batch(&mut self.producers, &header, appended.base_offset);
        }
        Ok(Produced { base_offset: appended.base_offset, duplicate: false })
    }

    fn apply_retention(
        &mut self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
    ) -> Result<(), StorageError> {
        let store = &self.args.store;
        let id = &self.args.id;
        if let Some(retention_ms) = retention_ms {
            let offsets = store.offsets(id)?;
            let keep_from = store.offset_for_timestamp(id, now_ms - retention_ms)?.unwrap_or(offsets.log_end);
            if keep_from > offsets.log_start {
                store.truncate_before(id, keep_from)?;
            }
        }
        if let Some(limit) = retention_bytes
            && let Some(keep_from) = store.retention_offset_for_bytes(id, limit)?
        {
            store.truncate_before(id, keep_from)?;
        }
        Ok(())
    }
}

fn storage_error(error: StorageError) -> ProduceError {
    ProduceError::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::call_t;
    use tidewater_storage::MemoryStore;

    /// A batch from producer 42, epoch 0, starting at `sequence` (header patched, CRC redone).
    fn idempotent_batch(sequence: i32) -> Bytes {
        let record = NewRecord { key: None, value: Some(b"v"), headers: &[], timestamp_ms: 1 };
        let mut bytes = build_record_batch(&[record], 1).to_vec();
        bytes[43..51].copy_from_slice(&42i64.to_be_bytes());
        bytes[51..53].copy_from_slice(&0i16.to_be_bytes());
        bytes[53..57].copy_from_slice(&sequence.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(bytes)
    }

    async fn start(store: &Arc<MemoryStore>) -> ActorRef<PartitionMsg> {
        let (high_watermark, _) = watch::channel(0);
        let args = PartitionArgs {
            id: PartitionId { stream: "s".into(), partition: 0 },
            store: store.clone(),
            high_watermark,
            max_batch_bytes: 1 << 20,
            span: tracing::Span::none(),
        };
        Actor::spawn(None, PartitionReplica, args).await.unwrap().0
    }

    #[tokio::test]
    async fn a_retry_after_restart_is_still_a_duplicate() {
        let store = Arc::new(MemoryStore::new());
        let first = start(&store).await;
        let appended = call_t!(first, PartitionMsg::AppendBatch, 1000, idempotent_batch(0)).unwrap().unwrap();
        assert_eq!(appended, Produced { base_offset: 0, duplicate: false });
        first.stop(None);

        let restarted = start(&store).await;
        let retried = call_t!(restarted, PartitionMsg::AppendBatch, 1000, idempotent_batch(0)).unwrap().unwrap();
        assert_eq!(retried, Produced { base_offset: 0, duplicate: true });
        let gap = call_t!(restarted, PartitionMsg::AppendBatch, 1000, idempotent_batch(5)).unwrap();
        assert_eq!(gap, Err(ProduceError::OutOfOrderSequence));
        let next = call_t!(restarted, PartitionMsg::AppendBatch, 1000, idempotent_batch(1)).unwrap().unwrap();
        assert_eq!(next, Produced { base_offset: 1, duplicate: false });
    }
}
