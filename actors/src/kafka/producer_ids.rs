//! Producer ids for idempotent producers (InitProducerId), unique across restarts.
//!
//! Ids are handed out from a block reserved in the `StateStore`: the reservation is
//! persisted before any id of the block is used, so a restart never repeats an id. Each
//! node draws from its own range (the node id in the top bits), so no two nodes of a cluster
//! ever hand out the same id: a partition's leader may move to any of them.

use std::sync::Arc;

use parking_lot::Mutex;
use tidewater_storage::StateStore;

const SPACE: &str = "kafka_meta";
const KEY: &[u8] = b"next_producer_id_block";
const BLOCK: i64 = 1000;

/// Bits of a producer id below the node id.
const NODE_SHIFT: u32 = 40;

/// Hands out producer ids.
pub struct ProducerIds {
    store: Arc<dyn StateStore>,
    state: Mutex<(i64, i64)>,
    /// the first id of this node's range
    range_start: i64,
}

impl std::fmt::Debug for ProducerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProducerIds")
    }
}

impl ProducerIds {
    /// An allocator over `store` for node `node_id` (ids in `[node_id << 40, (node_id + 1) << 40)`;
    /// node ids beyond 2^22 share ranges modulo that).
    pub fn new(store: Arc<dyn StateStore>, node_id: u64) -> Self {
        let range_start = ((node_id & ((1 << 22) - 1)) as i64) << NODE_SHIFT;
        Self { store, state: Mutex::new((0, 0)), range_start }
    }

    /// The next unused producer id.
    pub fn next(&self) -> Result<i64, tidewater_storage::StorageError> {
        let mut state = self.state.lock();
        let (next, limit) = &mut *state;
        if *next >= *limit {
            let stored = match self.store.get(SPACE, KEY)? {
                Some(bytes) if bytes.len() == 8 => i64::from_be_bytes(bytes.try_into().unwrap_or([0; 8])),
                _ => 0,
            };
            // a block reserved before ranges existed (or under another node id) lies below
            let start = stored.max(self.range_start + 1);
            self.store.put(SPACE, KEY, &(start + BLOCK).to_be_bytes())?;
            self.store.sync()?;
            *next = start;
            *limit = start + BLOCK;
        }
        let id = *next;
        *next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_storage::MemoryStore;

    #[test]
    fn ids_do_not_repeat_across_restarts() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let first = ProducerIds::new(Arc::clone(&store), 3);
        let a = first.next().unwrap();
        let b = first.next().unwrap();
        assert_eq!(b, a + 1);
        let second = ProducerIds::new(Arc::clone(&store), 3);
        assert!(second.next().unwrap() > b);
        // another node's ids never meet these
        let other = ProducerIds::new(Arc::new(MemoryStore::new()), 4);
        assert!(other.next().unwrap() > b + 1000 && a >= 3 << 40);
    }
}
