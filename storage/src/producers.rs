//! Idempotent-producer state of one partition: each producer's epoch, last sequence and its
//! last few batches, so that a retried batch is answered with the offset of the original
//! instead of being appended twice, and a batch out of order is refused.
//!
//! Kafka's `ProducerStateManager` in small. The state is rebuilt from the log tail (batch
//! headers carry producer id, epoch and sequence), so it survives a restart and, on a
//! replicated partition, a change of leader: the new leader rebuilds it from its own log.

use std::collections::{BTreeMap, VecDeque};

use crate::{BatchHeader, LogStore, PartitionId};

/// How many of a producer's last batches are remembered (Kafka's in-flight limit is 5).
const RECENT: usize = 5;

/// How much of a partition's tail is read to rebuild the state.
const RECOVERY_BYTES: usize = 8 * 1024 * 1024;

/// How many offsets back from the log end the rebuild starts at most.
const RECOVERY_OFFSETS: i64 = 100_000;

#[derive(Debug, Clone)]
struct Producer {
    epoch: i16,
    last_sequence: i32,
    /// (base sequence, base offset) of the last batches.
    recent: VecDeque<(i32, i64)>,
}

/// What to do with a batch, by its producer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerCheck {
    /// Append it (a batch of no idempotent producer is always appended).
    Append,
    /// A retry of a batch already appended at `base_offset`: answer with that.
    Duplicate {
        /// the original's first offset
        base_offset: i64,
        /// the original's last offset
        last_offset: i64,
    },
    /// A gap or a repeat of the sequence.
    OutOfOrder,
    /// An epoch older than the producer's: a newer instance has fenced it.
    Fenced,
}

/// Every idempotent producer of one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerTable {
    producers: BTreeMap<i64, Producer>,
}

impl ProducerTable {
    /// The state the log tail in `[log_start, log_end)` of `id` gives.
    pub fn recover(store: &dyn LogStore, id: &PartitionId, log_start: i64, log_end: i64) -> Self {
        let mut table = Self::default();
        if log_end <= log_start {
            return table;
        }
        let mut offset = log_start.max(log_end - RECOVERY_OFFSETS);
        let mut budget = RECOVERY_BYTES;
        while offset < log_end && budget > 0 {
            let Ok(batches) = store.read(id, offset, budget.min(1024 * 1024), log_end) else { break };
            let Some(last) = batches.last() else { break };
            offset = last.last_offset + 1;
            for batch in &batches {
                budget = budget.saturating_sub(batch.bytes.len());
                if let Ok(header) = BatchHeader::parse(&batch.bytes) {
                    table.record(&header, batch.base_offset);
                }
            }
        }
        table
    }

    /// Whether `header`'s batch is new, a retry, or refused.
    pub fn check(&self, header: &BatchHeader) -> ProducerCheck {
        if !is_idempotent(header) {
            return ProducerCheck::Append;
        }
        let Some(producer) = self.producers.get(&header.producer_id) else {
            return ProducerCheck::Append;
        };
        if header.producer_epoch < producer.epoch {
            return ProducerCheck::Fenced;
        }
        if header.producer_epoch > producer.epoch {
            // a new epoch starts its sequence again
            return if header.base_sequence == 0 { ProducerCheck::Append } else { ProducerCheck::OutOfOrder };
        }
        if let Some(&(_, base_offset)) = producer.recent.iter().find(|(sequence, _)| *sequence == header.base_sequence)
        {
            let last_offset = base_offset + i64::from(header.last_offset_delta);
            return ProducerCheck::Duplicate { base_offset, last_offset };
        }
        if header.base_sequence == producer.last_sequence.wrapping_add(1) {
            ProducerCheck::Append
        } else {
            ProducerCheck::OutOfOrder
        }
    }

    /// Remembers that `header`'s batch was appended at `base_offset` (nothing for a batch of
    /// no idempotent producer).
    pub fn record(&mut self, header: &BatchHeader, base_offset: i64) {
        if !is_idempotent(header) {
            return;
        }
        let producer = self.producers.entry(header.producer_id).or_insert_with(|| Producer {
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
        if producer.recent.len() > RECENT {
            producer.recent.pop_front();
        }
    }

    /// How many producers are known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id >= 0 && header.base_sequence >= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Append, MemoryStore, NewRecord, build_record_batch};

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: i32) -> BatchHeader {
        let record = NewRecord { key: None, value: Some(b"v"), headers: &[], timestamp_ms: 1 };
        let mut header = BatchHeader::parse(&build_record_batch(&[record], 1)).unwrap();
        header.producer_id = producer_id;
        header.producer_epoch = epoch;
        header.base_sequence = sequence;
        header.last_offset_delta = records - 1;
        header
    }

    #[test]
    fn retries_are_duplicates_gaps_are_out_of_order_old_epochs_are_fenced() {
        let mut table = ProducerTable::default();
        assert_eq!(table.check(&header(7, 0, 0, 2)), ProducerCheck::Append);
        table.record(&header(7, 0, 0, 2), 10);
        assert_eq!(table.check(&header(7, 0, 0, 2)), ProducerCheck::Duplicate { base_offset: 10, last_offset: 11 });
        assert_eq!(table.check(&header(7, 0, 3, 1)), ProducerCheck::OutOfOrder);
        assert_eq!(table.check(&header(7, 0, 2, 1)), ProducerCheck::Append);
        assert_eq!(table.check(&header(7, 1, 5, 1)), ProducerCheck::OutOfOrder, "a new epoch starts at 0");
        table.record(&header(7, 1, 0, 1), 12);
        assert_eq!(table.check(&header(7, 0, 2, 1)), ProducerCheck::Fenced);
        assert_eq!(table.check(&header(-1, -1, -1, 1)), ProducerCheck::Append);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_state_is_rebuilt_from_the_log() {
        let store = MemoryStore::new();
        let id = PartitionId { stream: "s".into(), partition: 0 };
        store.create_partition(&id).unwrap();
        let record = NewRecord { key: None, value: Some(b"v"), headers: &[], timestamp_ms: 1 };
        let mut bytes = build_record_batch(&[record], 1).to_vec();
        crate::set_producer(&mut bytes, 42, 0, 0);
        store.append_at(&id, Append { batch: bytes.into(), leader_epoch: 0, base_offset: 0 }).unwrap();
        let table = ProducerTable::recover(&store, &id, 0, 1);
        assert_eq!(table.check(&header(42, 0, 0, 1)), ProducerCheck::Duplicate { base_offset: 0, last_offset: 0 });
        assert_eq!(table.check(&header(42, 0, 1, 1)), ProducerCheck::Append);
    }
}
