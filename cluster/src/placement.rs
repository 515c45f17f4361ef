//! Where a partition's replicas go: rendezvous (highest-random-weight) hashing over nodes.
//!
//! Every (stream, partition) ranks every node by a hash of the three; the replica set is the
//! top `replication_factor` nodes and the first of them is the preferred leader. The hash
//! is our own (FNV-1a with a SplitMix64 finish), fixed across versions and processes, so
//! every node computes the same ranking from the same inputs. Rendezvous hashing moves the
//! least when the nodes change: a node's loss changes only the sets that held it, and a
//! new node takes about its share from each of the others.
//!
//! Placement only proposes; the controller records the sets every node then follows.

/// A stable 64-bit hash of a partition and a node.
fn weight(stream: &str, partition: u32, node: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(stream.as_bytes());
    eat(&[0xff]);
    eat(&partition.to_be_bytes());
    eat(&node.to_be_bytes());
    // SplitMix64 finish: FNV alone leaves the low bits of nearby inputs correlated
    let mut mixed = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

/// `nodes` ranked for one partition, best first (ties, which need equal hashes, by id).
pub fn ranking(stream: &str, partition: u32, nodes: &[u64]) -> Vec<u64> {
    let mut ranked: Vec<(u64, u64)> = nodes.iter().map(|&node| (weight(stream, partition, node), node)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup_by_key(|&mut (_, node)| node);
    ranked.into_iter().map(|(_, node)| node).collect()
}

/// The replica set of a new partition: the best `replication_factor` of `nodes` (all of
/// them when there are fewer); the first is the preferred leader.
pub fn replica_set(stream: &str, partition: u32, nodes: &[u64], replication_factor: usize) -> Vec<u64> {
    let mut ranked = ranking(stream, partition, nodes);
    ranked.truncate(replication_factor.max(1));
    ranked
}

/// A replica set repaired after nodes died: the live members of `current` stay (in their
/// order), and the best-ranked live nodes not in it fill the places of the dead ones.
pub fn repaired(stream: &str, partition: u32, current: &[u64], live: &[u64], replication_factor: usize) -> Vec<u64> {
    let mut set: Vec<u64> = current.iter().copied().filter(|node| live.contains(node)).collect();
    for node in ranking(stream, partition, live) {
        if set.len() >= replication_factor {
            break;
        }
        if !set.contains(&node) {
            set.push(node);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sets_are_distinct_sized_and_the_same_on_every_call() {
        let nodes = [1, 2, 3, 4, 5];
        for partition in 0..100 {
            let set = replica_set("telemetry", partition, &nodes, 3);
            assert_eq!(set.len(), 3);
            let mut unique = set.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 3);
            assert_eq!(set, replica_set("telemetry", partition, &[5, 4, 3, 2, 1], 3), "order of nodes does not matter");
        }
        assert_eq!(replica_set("s", 0, &[7], 3), vec![7], "capped at the node count");
        // pinned: a change to the hash moves where new partitions go; make it on purpose
        assert_eq!(weight("a", 0, 1), 0x6b8f_4507_508a_18fc);
    }

    #[test]
    fn preferred_leaders_spread_evenly() {
        let nodes = [1, 2, 3];
        let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
        for partition in 0..3_000 {
            *leaders.entry(replica_set("events", partition, &nodes, 3)[0]).or_default() += 1;
        }
        for (&node, &count) in &leaders {
            assert!((900..=1_100).contains(&count), "node {node} leads {count} of 3000");
        }
    }

    proptest! {
        #[test]
        fn losing_a_node_moves_only_the_sets_that_held_it(partition in 0u32..10_000, dead in 1u64..=5) {
            let nodes = [1, 2, 3, 4, 5];
            let before = replica_set("s", partition, &nodes, 3);
            let live: Vec<u64> = nodes.iter().copied().filter(|&node| node != dead).collect();
            let after = repaired("s", partition, &before, &live, 3);
            prop_assert_eq!(after.len(), 3);
            prop_assert!(!after.contains(&dead));
            let kept: Vec<u64> = before.iter().copied().filter(|&node| node != dead).collect();
            prop_assert_eq!(&after[..kept.len()], &kept[..], "survivors keep their places");
            if !before.contains(&dead) {
                prop_assert_eq!(after, before);
            }
        }
    }
}
