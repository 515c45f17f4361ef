//! The `PartitionReplica` actor: the single writer of one (stream, partition) log.
//!
//! MQTT messages are group-committed: each one joins a pending list and the first of a run
//! schedules a `Flush` behind everything already in the mailbox, so one RecordBatch covers
//! every message that arrived meanwhile. Kafka batches are appended as sent, after the
//! idempotent-producer sequence check.
//!
//! The actor never waits for the disk: it counts its own log end, submits each batch at that
//! offset to the store's writer (`LogStore::submit`, which syncs across partitions in one
//! round), and goes on; the writer's report comes back as a `Written` message, and only then
//! are the high watermark published and the publishers (MQTT sessions, Kafka producers)
//! answered, in offset order. A failed append fails every later one already submitted
//! (their offsets no longer match), after which the actor counts again from the store.
//! Readers do not go through the actor: they read the `LogStore` directly and wait on the
//! high-watermark watch.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tidewater_storage::{
    Append, AppendResult, LogStore, NewRecord, PartitionId, ProducerCheck, ProducerTable, Retention, StorageError,
    build_record_batch, retention_point, validate_batch,
};
use tokio::sync::{mpsc, watch};

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
    /// this node's replica does not lead the partition (the leader it knows, if any)
    #[error("this node does not lead the partition (leader {0:?})")]
    NotLeader(Option<u64>),
    /// a leader was just elected and is not ready yet, or the batch was lost to an election
    /// before it committed: retry
    #[error("leader not available: {0}")]
    LeaderNotAvailable(String),
    /// `acks=all` while fewer than a majority of the replicas are in sync: it could not
    /// commit; refused before it is appended (in sync, set)
    #[error("only {0} of {1} replicas are in sync: acks=all needs a majority")]
    NotEnoughReplicas(usize, usize),
}

/// What a Kafka produce waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=all`: a majority of the replicas holds the batch (a single node: it is durable)
    All,
    /// `acks=1`: the leader's own write (on a replicated partition it can be lost in a fail-over)
    Leader,
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
    /// Append a Kafka RecordBatch v2 as sent, answered per `Acks` (a single-node partition
    /// always answers once the batch is durable).
    AppendBatch(Bytes, Acks, RpcReplyPort<Result<Produced, ProduceError>>),
    /// The store reported on appends this actor submitted (the reports wait in its queue).
    Written,
    /// Apply the stream's retention at `now_ms` (ms since the epoch).
    ApplyRetention {
        /// Now, ms since the epoch.
        now_ms: i64,
        /// The stream's limits.
        retention: Retention,
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

/// Who waits for one submitted batch.
enum Waiter {
    /// The MQTT sessions whose records the batch holds.
    Mqtt(Vec<DurableNotice>),
    /// A Kafka producer.
    Kafka(ProduceReply),
}

/// One batch submitted to the store and not answered yet.
struct Submitted {
    /// Matches the store's report to the batch.
    ticket: u64,
    /// The count it was submitted under; a failure of an older count changes nothing more.
    generation: u64,
    base_offset: i64,
    waiter: Waiter,
    /// The store's report, once it came (answered only in offset order).
    report: Option<Result<AppendResult, StorageError>>,
}

/// Where a produce is answered.
type ProduceReply = RpcReplyPort<Result<Produced, ProduceError>>;

/// A report of the store on the batch with this ticket.
type Report = (u64, Result<AppendResult, StorageError>);

/// The actor's state.
pub struct PartitionState {
    args: PartitionArgs,
    myself: ActorRef<PartitionMsg>,
    pending: MqttPending,
    producers: ProducerTable,
    /// Where the next batch goes: the log end once everything submitted is written.
    next_offset: i64,
    /// Bumped when a failure makes the actor count again from the store.
    generation: u64,
    /// Where a failed append left a tail to cut before the next append.
    cut_from: Option<i64>,
    /// Submitted batches in offset order, and where the store's reports on them arrive.
    in_flight: VecDeque<Submitted>,
    next_ticket: u64,
    reports: mpsc::UnboundedReceiver<Report>,
    report_sender: mpsc::UnboundedSender<Report>,
    /// Retries of batches still in flight: answered as duplicates once the original is
    /// written (by its last offset), or failed with it.
    duplicates: Vec<(i64, ProduceReply, Produced)>,
}

impl Actor for PartitionReplica {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PartitionMsg>,
        args: PartitionArgs,
    ) -> Result<PartitionState, ActorProcessingErr> {
        let named =
            |error: &dyn std::fmt::Display| format!("partition {}-{}: {error}", args.id.stream, args.id.partition);
        args.store.create_partition(&args.id).map_err(|e| named(&e))?;
        let offsets = args.store.offsets(&args.id).map_err(|e| named(&e))?;
        // a single node commits what it stores: the high watermark starts at the log end (the
        // partition owns it; the store knows only where its log starts and ends)
        args.high_watermark.send_replace(offsets.log_end);
        let producers = ProducerTable::recover(args.store.as_ref(), &args.id, offsets.log_start, offsets.log_end);
        let (report_sender, reports) = mpsc::unbounded_channel();
        Ok(PartitionState {
            args,
            myself,
            pending: MqttPending::default(),
            producers,
            next_offset: offsets.log_end,
            generation: 0,
            cut_from: None,
            in_flight: VecDeque::new(),
            next_ticket: 0,
            reports,
            report_sender,
            duplicates: Vec::new(),
        })
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
            PartitionMsg::AppendMqtt(record, notice) => state.pending.push(record, notice, &myself),
            PartitionMsg::Flush => state.flush(),
            PartitionMsg::AppendBatch(batch, _acks, reply) => {
                // keep MQTT records ahead of a produce that arrived after them
                state.flush();
                state.append_batch(batch, reply);
            }
            PartitionMsg::Written => {
                while let Ok(report) = state.reports.try_recv() {
                    state.reported(report);
                }
            }
            PartitionMsg::ApplyRetention { now_ms, retention } => {
                if let Err(error) = state.apply_retention(now_ms, retention) {
                    tracing::error!(stream = %state.args.id.stream, partition = state.args.id.partition, %error, "retention failed");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<PartitionMsg>, state: &mut PartitionState) -> Result<(), ActorProcessingErr> {
        state.flush();
        // what was submitted is answered before the actor goes (bounded: a stuck disk does
        // not hold the node's shutdown forever)
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while !state.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, state.reports.recv()).await {
                Ok(Some(report)) => state.reported(report),
                _ => break,
            }
        }
        Ok(())
    }
}

/// How long a stopping partition waits for the store to report what it submitted.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl PartitionState {
    /// Submits every pending MQTT record, in batches of about `max_batch_bytes`.
    fn flush(&mut self) {
        for (batch, records, notices) in self.pending.batches(self.args.max_batch_bytes) {
            self.submit(batch, records, Waiter::Mqtt(notices));
        }
    }

    /// Submits a batch of `records` records at the counted log end; `None` when it is
    /// refused at once (its waiter is told through the usual report).
    fn submit(&mut self, batch: Bytes, records: i64, waiter: Waiter) -> Option<i64> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mut submitted =
            Submitted { ticket, generation: self.generation, base_offset: self.next_offset, waiter, report: None };
        if !self.cut_back() {
            let refused = StorageError::Io(std::io::Error::other("the log's unacknowledged tail cannot be cut"));
            submitted.report = Some(Err(refused));
            self.in_flight.push_back(submitted);
            self.answer_ready();
            return None;
        }
        let base_offset = self.next_offset;
        submitted.base_offset = base_offset;
        self.next_offset += records;
        self.in_flight.push_back(submitted);
        let (reports, myself) = (self.report_sender.clone(), self.myself.clone());
        let append = Append { batch, leader_epoch: 0, base_offset };
        self.args.store.submit(
            &self.args.id,
            append,
            Box::new(move |report| {
                // both fail only once the actor has stopped, and then nobody waits
                let _ = reports.send((ticket, report));
                let _ = myself.cast(PartitionMsg::Written);
            }),
        );
        Some(base_offset)
    }

    /// Files the store's report with its batch, then answers what is ready.
    fn reported(&mut self, (ticket, report): Report) {
        match self.in_flight.iter_mut().find(|submitted| submitted.ticket == ticket) {
            Some(submitted) => submitted.report = Some(report),
            None => tracing::error!(ticket, "a store report for no batch in flight"),
        }
        self.answer_ready();
    }

    /// Answers reported batches from the oldest, stopping at the first not reported yet.
    fn answer_ready(&mut self) {
        while self.in_flight.front().is_some_and(|submitted| submitted.report.is_some()) {
            if let Some(mut submitted) = self.in_flight.pop_front()
                && let Some(report) = submitted.report.take()
            {
                self.written(submitted, report);
            }
        }
    }

    /// Answers the oldest batch in flight with the store's report on it.
    fn written(&mut self, submitted: Submitted, report: Result<AppendResult, StorageError>) {
        // A batch counted before a failure that is already answered lands, if it lands at
        // all, behind a batch that failed, and the cut back removes it (a store may keep a
        // batch whose sync failed: then this one was written after it and looked in place).
        let report = match report {
            Ok(_) if submitted.generation != self.generation => {
                Err(StorageError::Io(std::io::Error::other("an earlier append of this partition failed")))
            }
            report => report,
        };
        match report {
            Ok(appended) => {
                debug_assert_eq!(appended.base_offset, submitted.base_offset);
                let high_watermark = appended.last_offset + 1;
                self.publish_high_watermark(high_watermark);
                match submitted.waiter {
                    Waiter::Mqtt(notices) => notify_sessions(&notices, true),
                    Waiter::Kafka(reply) => {
                        let _ = reply.send(Ok(Produced { base_offset: appended.base_offset, duplicate: false }));
                    }
                }
                let (ready, waiting) = std::mem::take(&mut self.duplicates)
                    .into_iter()
                    .partition(|(last_offset, _, _)| *last_offset < high_watermark);
                self.duplicates = waiting;
                for (_, reply, produced) in ready {
                    let _ = reply.send(Ok(produced));
                }
            }
            Err(error) => {
                tracing::error!(stream = %self.args.id.stream, partition = self.args.id.partition, %error, "append failed");
                match submitted.waiter {
                    Waiter::Mqtt(notices) => notify_sessions(&notices, false),
                    Waiter::Kafka(reply) => {
                        let _ = reply.send(Err(storage_error(error)));
                    }
                }
                if submitted.generation == self.generation {
                    self.count_again(submitted.base_offset);
                }
            }
        }
    }

    /// After a failed append at `failed_base`: what is still in flight fails too, so cut
    /// the log back to there (a failed sync can leave the batch written but not durable,
    /// and it was never acknowledged), count from there again, and rebuild the producers'
    /// state from what the log holds.
    fn count_again(&mut self, failed_base: i64) {
        self.generation += 1;
        self.cut_from = Some(self.cut_from.map_or(failed_base, |from| from.min(failed_base)));
        self.cut_back();
        for (_, reply, _) in self.duplicates.drain(..) {
            let _ = reply.send(Err(ProduceError::Storage("the original append failed".into())));
        }
    }

    /// Cuts an unacknowledged tail left by a failed append; `false` while that fails (then
    /// no append is submitted: it could not land at the offset counted for it).
    fn cut_back(&mut self) -> bool {
        let Some(from) = self.cut_from else {
            return true;
        };
        let store = self.args.store.as_ref();
        if let Err(error) = store.truncate_after(&self.args.id, from) {
            tracing::error!(stream = %self.args.id.stream, partition = self.args.id.partition, %error, "cannot cut an unacknowledged tail");
            return false;
        }
        self.cut_from = None;
        let offsets = store.offsets(&self.args.id).unwrap_or_default();
        self.next_offset = offsets.log_end;
        self.producers = ProducerTable::recover(store, &self.args.id, offsets.log_start, offsets.log_end);
        true
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
        self.args.high_watermark.send_replace(high_watermark);
    }

    fn append_batch(&mut self, batch: Bytes, reply: ProduceReply) {
        // a tail left by a failed append is cut first, so that the producers' state the
        // checks below use is what the log holds
        if !self.cut_back() {
            let _ = reply.send(Err(ProduceError::Storage("the log's unacknowledged tail cannot be cut".into())));
            return;
        }
        let header = match validate_batch(&batch) {
            Ok(header) => header,
            Err(error) => {
                let _ = reply.send(Err(ProduceError::Corrupt(error.to_string())));
                return;
            }
        };
        let refused = match self.producers.check(&header) {
            ProducerCheck::Append => None,
            ProducerCheck::Duplicate { base_offset, last_offset } => {
                let produced = Produced { base_offset, duplicate: true };
                if last_offset < *self.args.high_watermark.borrow() {
                    let _ = reply.send(Ok(produced));
                } else {
                    // the original is still in flight: answer when it is written
                    self.duplicates.push((last_offset, reply, produced));
                }
                return;
            }
            ProducerCheck::OutOfOrder => Some(ProduceError::OutOfOrderSequence),
            ProducerCheck::Fenced => Some(ProduceError::InvalidProducerEpoch),
        };
        if let Some(refused) = refused {
            let _ = reply.send(Err(refused));
            return;
        }
        let records = i64::from(header.last_offset_delta) + 1;
        let submitted = self.submit(batch, records, Waiter::Kafka(reply));
        if let Some(base_offset) = submitted {
            // counted at once, so that the producer's next batch (pipelined) follows on
            self.producers.record(&header, base_offset);
        }
    }

    fn apply_retention(&mut self, now_ms: i64, retention: Retention) -> Result<(), StorageError> {
        // never past the high watermark: what is not committed yet (appends in flight) stays
        let high_watermark = *self.args.high_watermark.borrow();
        if let Some(keep_from) = retention_point(self.args.store.as_ref(), &self.args.id, now_ms, retention)? {
            self.args.store.truncate_before(&self.args.id, keep_from.min(high_watermark))?;
        }
        Ok(())
    }
}

/// MQTT records waiting to be group-committed: the first of a run schedules a `Flush`
/// behind everything already in the writer's mailbox.
#[derive(Default)]
pub(crate) struct MqttPending {
    records: Vec<(MqttRecord, Option<DurableNotice>)>,
    flush_scheduled: bool,
}

impl MqttPending {
    /// Adds a record; the first of a run schedules the flush.
    pub(crate) fn push(&mut self, record: MqttRecord, notice: Option<DurableNotice>, myself: &ActorRef<PartitionMsg>) {
        self.records.push((record, notice));
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            // refused only while draining at shutdown, and post_stop flushes then
            let _ = myself.cast(PartitionMsg::Flush);
        }
    }

    /// Takes every pending record, cut into batches (see [`mqtt_batches`]).
    pub(crate) fn batches(&mut self, max_batch_bytes: usize) -> Vec<(Bytes, i64, Vec<DurableNotice>)> {
        self.flush_scheduled = false;
        if self.records.is_empty() {
            return Vec::new();
        }
        mqtt_batches(&std::mem::take(&mut self.records), max_batch_bytes)
    }
}

/// Cuts pending MQTT records into RecordBatches of about `max_batch_bytes`: each batch with
/// its record count and the notices of its records.
fn mqtt_batches(
    pending: &[(MqttRecord, Option<DurableNotice>)],
    max_batch_bytes: usize,
) -> Vec<(Bytes, i64, Vec<DurableNotice>)> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < pending.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < pending.len() && (end == start || bytes < max_batch_bytes) {
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
        let notices = chunk.iter().filter_map(|(_, notice)| notice.clone()).collect();
        batches.push((batch, chunk.len() as i64, notices));
        start = end;
    }
    batches
}

fn storage_error(error: StorageError) -> ProduceError {
    ProduceError::Storage(error.to_string())
}

/// Tells each session once whether its records are durable: one message per session, in the
/// order the sessions first appear (never by `ActorId`: it comes from a process-wide counter).
pub(crate) fn notify_sessions(notices: &[DurableNotice], ok: bool) {
    let mut by_session: Vec<(ActorRef<SessionMsg>, Vec<u64>)> = Vec::new();
    let mut index: crate::lookup::LookupMap<ractor::ActorId, usize> = crate::lookup::LookupMap::new();
    for notice in notices {
        let at = *index.entry(notice.session.get_id()).or_insert_with(|| {
            by_session.push((notice.session.clone(), Vec::new()));
            by_session.len() - 1
        });
        by_session[at].1.push(notice.token);
    }
    for (session, tokens) in by_session {
        let _ = session.cast(SessionMsg::Durable { tokens, ok });
    }
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
        tidewater_storage::set_producer(&mut bytes, 42, 0, sequence);
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

    fn plain_batch() -> Bytes {
        let record = NewRecord { key: None, value: Some(b"v"), headers: &[], timestamp_ms: 1 };
        build_record_batch(&[record], 1)
    }

    #[tokio::test]
    async fn a_failed_append_fails_what_followed_it_and_the_log_goes_on_after() {
        let store = Arc::new(MemoryStore::new());
        let partition = start(&store).await;
        let first = call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All).unwrap().unwrap();
        assert_eq!(first.base_offset, 0);
        // the next append fails; the one queued right behind it was counted after it, so it
        // fails too (nothing acknowledged that is not stored), and the one after that is fine
        store.fail_next_appends(1);
        let (failed, behind) = tokio::join!(
            async { call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All) },
            async { call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All) },
        );
        assert!(matches!(failed.unwrap(), Err(ProduceError::Storage(_))));
        assert!(matches!(behind.unwrap(), Err(ProduceError::Storage(_))));
        let next = call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All).unwrap().unwrap();
        assert_eq!(next.base_offset, 1, "offsets go on from what is stored");
        assert_eq!(store.offsets(&PartitionId { stream: "s".into(), partition: 0 }).unwrap().log_end, 2);
    }

    #[tokio::test]
    async fn a_batch_behind_a_failed_sync_is_not_acknowledged() {
        // the in-memory disk keeps a batch whose sync failed, as a page cache may: the batch
        // counted right behind it then lands where it was counted, yet must not be acknowledged
        let store = Arc::new(MemoryStore::new());
        let partition = start(&store).await;
        store.fail_next_syncs(1);
        let (failed, behind) = tokio::join!(
            async { call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All) },
            async { call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All) },
        );
        assert!(matches!(failed.unwrap(), Err(ProduceError::Storage(_))));
        assert!(matches!(behind.unwrap(), Err(ProduceError::Storage(_))), "not acknowledged");
        let next = call_t!(partition, PartitionMsg::AppendBatch, 1000, plain_batch(), Acks::All).unwrap().unwrap();
        assert_eq!(next.base_offset, 0, "both were cut back");
        let id = PartitionId { stream: "s".into(), partition: 0 };
        assert_eq!(store.offsets(&id).unwrap().log_end, 1);
    }

    #[tokio::test]
    async fn a_retry_after_restart_is_still_a_duplicate() {
        let store = Arc::new(MemoryStore::new());
        let first = start(&store).await;
        let appended =
            call_t!(first, PartitionMsg::AppendBatch, 1000, idempotent_batch(0), Acks::All).unwrap().unwrap();
        assert_eq!(appended, Produced { base_offset: 0, duplicate: false });
        first.stop(None);

        let restarted = start(&store).await;
        let retried =
            call_t!(restarted, PartitionMsg::AppendBatch, 1000, idempotent_batch(0), Acks::All).unwrap().unwrap();
        assert_eq!(retried, Produced { base_offset: 0, duplicate: true });
        let gap = call_t!(restarted, PartitionMsg::AppendBatch, 1000, idempotent_batch(5), Acks::All).unwrap();
        assert_eq!(gap, Err(ProduceError::OutOfOrderSequence));
        let next =
            call_t!(restarted, PartitionMsg::AppendBatch, 1000, idempotent_batch(1), Acks::All).unwrap().unwrap();
        assert_eq!(next, Produced { base_offset: 1, duplicate: false });
    }
}
