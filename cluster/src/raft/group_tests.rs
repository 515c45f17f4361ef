//! Three replica actors of one partition on three "nodes" in one process, talking over real
//! loopback sockets through PeerLinks: election, acknowledged appends, identical logs, and
//! fail-over when the leader's node goes away.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tidewater_storage::{LogStore, MemoryStore, NewRecord, PartitionId, build_record_batch};
use tokio::sync::watch;

use super::group::{GroupRouter, RaftReplica, RaftReplicaArgs, RaftReplicaMsg, ReplicaStatus};
use super::replica::{AckOn, ReplicaOptions};
use crate::data_plane::{GroupId, LinkOptions, PeerLinks, serve_peers};
use crate::seams::{Net, TokioNet};

struct TestNode {
    id: u64,
    store: Arc<MemoryStore>,
    links: Arc<PeerLinks>,
    replica: ActorRef<RaftReplicaMsg>,
    stop_server: watch::Sender<bool>,
    high_watermark: watch::Receiver<i64>,
    in_sync: watch::Receiver<Vec<u64>>,
}

fn group() -> GroupId {
    GroupId::Partition { stream: "s".into(), partition: 0 }
}

fn partition() -> PartitionId {
    PartitionId { stream: "s".into(), partition: 0 }
}

async fn cluster() -> Vec<TestNode> {
    cluster_with(0).await
}

/// Three replica actors; with `quiet_ticks` above 0 they hibernate when idle.
async fn cluster_with(quiet_ticks: u64) -> Vec<TestNode> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        listeners.push((listener, address));
    }
    let addresses: Vec<_> = listeners.iter().map(|(_, address)| *address).collect();
    let mut nodes = Vec::new();
    for (position, (listener, _)) in listeners.into_iter().enumerate() {
        let id = position as u64 + 1;
        let store = Arc::new(MemoryStore::new());
        let options = LinkOptions { backoff_min: Duration::from_millis(10), ..LinkOptions::default() };
        let links = PeerLinks::new(id, "c".into(), Arc::new(TokioNet), options);
        for (other, address) in addresses.iter().enumerate() {
            links.set_peer(other as u64 + 1, *address).await.unwrap();
        }
        let router = Arc::new(GroupRouter::default());
        let (stop_server, shutdown) = watch::channel(false);
        let delivering = Arc::clone(&router);
        tokio::spawn(serve_peers(
            listener,
            "c".into(),
            shutdown,
            Arc::new(move |from, message| delivering.deliver(from, message)),
        ));
        let (high_watermark_sender, high_watermark) = watch::channel(0);
        let (leadership, _) = watch::channel(None);
        let (in_sync_sender, in_sync) = watch::channel(Vec::new());
        let args = RaftReplicaArgs {
            group: group(),
            partition: partition(),
            options: ReplicaOptions { replica_lag_ticks: 25, quiet_ticks, ..ReplicaOptions::new(id, 1_000 + id) },
            voters: vec![1, 2, 3],
            tick: Duration::from_millis(20),
            log: store.clone(),
            state: store.clone(),
            transport: links.clone(),
            high_watermark: high_watermark_sender,
            leadership,
            in_sync: in_sync_sender,
            clock: router.clock(),
        };
        let (replica, _) = Actor::spawn(None, RaftReplica, args).await.unwrap();
        router.insert(group(), replica.clone());
        nodes.push(TestNode { id, store, links, replica, stop_server, high_watermark, in_sync });
    }
    nodes
}

async fn status(node: &TestNode) -> Option<ReplicaStatus> {
    ractor::call_t!(node.replica, RaftReplicaMsg::Status, 1_000).ok()
}

async fn leader(nodes: &[TestNode], except: Option<u64>) -> usize {
    for _ in 0..300 {
        for (position, node) in nodes.iter().enumerate() {
            if Some(node.id) == except {
                continue;
            }
            if status(node).await.is_some_and(|status| status.leadership.is_leader) {
                return position;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader elected");
}

fn batch(n: usize) -> bytes::Bytes {
    let value = format!("record {n}").into_bytes();
    build_record_batch(&[NewRecord { key: None, value: Some(&value), headers: &[], timestamp_ms: 1 }], 1)
}

async fn produce(node: &TestNode, n: usize) -> Option<super::Placed> {
    propose(node, batch(n)).await.ok()
}

async fn propose(node: &TestNode, batch: bytes::Bytes) -> Result<super::Placed, super::Refusal> {
    let call =
        ractor::call_t!(node.replica, |reply| RaftReplicaMsg::Propose { batch, ack_on: AckOn::Commit, reply }, 3_000);
    call.unwrap_or(Err(super::Refusal::Stopped))
}

/// Batch `n` of idempotent producer 9, epoch 0, sequence `n`.
fn idempotent(n: usize) -> bytes::Bytes {
    let mut bytes = batch(n).to_vec();
    tidewater_storage::set_producer(&mut bytes, 9, 0, n as i32);
    bytes.into()
}

/// Kills the node at `position`: its replica, its server and its links.
fn kill(node: &TestNode) {
    node.replica.stop(None);
    let _ = node.stop_server.send(true);
    node.links.stop_all();
}

fn stored(node: &TestNode, upper: i64) -> Vec<bytes::Bytes> {
    node.store.read(&partition(), 0, usize::MAX, upper).unwrap().into_iter().map(|batch| batch.bytes).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_actors_replicate_over_the_data_plane_and_fail_over() {
    let nodes = cluster().await;
    let first = leader(&nodes, None).await;
    let mut acked = Vec::new();
    for n in 0..50 {
        let placed = produce(&nodes[first], n).await.expect("the leader acknowledges");
        acked.push(placed.base_offset);
    }
    assert_eq!(acked, (0..50).collect::<Vec<i64>>(), "offsets follow on from 0");
    // every replica reaches the high watermark and holds the same bytes below it
    for node in &nodes {
        let mut high_watermark = node.high_watermark.clone();
        tokio::time::timeout(Duration::from_secs(5), high_watermark.wait_for(|&hw| hw >= 50)).await.unwrap().unwrap();
    }
    let reference = stored(&nodes[0], 50);
    assert_eq!(reference.len(), 50);
    for node in &nodes[1..] {
        assert_eq!(stored(node, 50), reference, "replica {} holds the same bytes", node.id);
    }
    // a follower refuses proposals and names the leader
    let follower = (first + 1) % 3;
    let refused = ractor::call_t!(
        nodes[follower].replica,
        |reply| RaftReplicaMsg::Propose { batch: batch(0), ack_on: AckOn::Commit, reply },
        1_000
    )
    .unwrap();
    assert_eq!(refused, Err(super::Refusal::NotLeader { leader: Some(nodes[first].id) }));
    // the leader's node goes away: its replica, its server and its links
    let old = &nodes[first];
    kill(old);
    let started = tokio::time::Instant::now();
    let next = leader(&nodes, Some(old.id)).await;
    let placed = loop {
        if let Some(placed) = produce(&nodes[next], 50).await {
            break placed;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no acknowledged write after the fail-over");
    };
    assert_eq!(placed.base_offset, 50, "the new leader continues after every acknowledged batch");
    // the new leader's ISR starts as every voter and drops the dead one after the lag
    // (25 ticks of 20 ms), while the live follower stays in it through the writes
    let survivors: Vec<u64> = nodes.iter().map(|node| node.id).filter(|&id| id != old.id).collect();
    let mut in_sync = nodes[next].in_sync.clone();
    let shrunk = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 51;
        loop {
            if *in_sync.borrow_and_update() == survivors {
                break;
            }
            let _ = produce(&nodes[next], n).await;
            n += 1;
            let _ = tokio::time::timeout(Duration::from_millis(50), in_sync.changed()).await;
        }
    })
    .await;
    assert!(shrunk.is_ok(), "ISR {:?}, not the survivors {survivors:?}", *nodes[next].in_sync.borrow());
    let follower = (0..3).find(|&i| i != next && i != first).expect("a live follower");
    assert!(nodes[follower].in_sync.borrow().is_empty(), "a follower publishes no ISR");
    assert!(placed.leader_epoch > 1, "a new term");
    let survivor = &nodes[next];
    let held = stored(survivor, 50);
    assert_eq!(held, reference, "nothing acknowledged was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_after_a_fail_over_is_answered_with_the_original_offset() {
    let nodes = cluster().await;
    let first = leader(&nodes, None).await;
    // the new leader must first commit an entry of its term before it can tell retries
    let started = tokio::time::Instant::now();
    let mut placed = Vec::new();
    for n in 0..3 {
        let answer = loop {
            match propose(&nodes[first], idempotent(n)).await {
                Err(super::Refusal::NotReady) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                answer => break answer.expect("the leader acknowledges"),
            }
        };
        placed.push(answer);
    }
    assert_eq!(placed.iter().map(|p| p.base_offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    let again = propose(&nodes[first], idempotent(1)).await.unwrap();
    assert!(again.duplicate && again.base_offset == 1, "a retry on the same leader: {again:?}");
    let gap = propose(&nodes[first], idempotent(7)).await;
    assert_eq!(gap, Err(super::Refusal::OutOfOrderSequence));

    kill(&nodes[first]);
    let next = leader(&nodes, Some(nodes[first].id)).await;
    // the producer did not hear about batch 2 and sends it again to the new leader
    let retried = loop {
        match propose(&nodes[next], idempotent(2)).await {
            Ok(placed) => break placed,
            Err(refusal) => {
                assert!(started.elapsed() < Duration::from_secs(10), "no answer after the fail-over: {refusal}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(retried.duplicate, "the new leader knows the batch: {retried:?}");
    assert_eq!(retried.base_offset, 2, "answered with the original offset");
    let following = propose(&nodes[next], idempotent(3)).await.unwrap();
    assert_eq!((following.base_offset, following.duplicate), (3, false), "the sequence goes on");
    let held = stored(&nodes[next], 4);
    assert_eq!(held.len(), 4, "batch 2 is stored once");
}

async fn all_asleep(nodes: &[TestNode]) -> bool {
    for node in nodes {
        if !status(node).await.is_some_and(|status| status.asleep) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replica_actors_hibernate_wake_for_a_proposal_and_elect_when_woken_after_a_death() {
    let nodes = cluster_with(10).await;
    let first = leader(&nodes, None).await;
    assert_eq!(produce(&nodes[first], 0).await.map(|placed| placed.base_offset), Some(0));
    let started = tokio::time::Instant::now();
    while !all_asleep(&nodes).await {
        assert!(started.elapsed() < Duration::from_secs(5), "the idle group never slept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // asleep for a while (elections would come after 10 to 20 ticks of 20 ms): the same
    // leader, the same term
    let term = status(&nodes[first]).await.unwrap().leadership.term;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let now = status(&nodes[first]).await.unwrap();
    assert!(now.asleep && now.leadership.is_leader && now.leadership.term == term, "{now:?}");
    // a proposal wakes the group and commits
    assert_eq!(produce(&nodes[first], 1).await.map(|placed| placed.base_offset), Some(1));
    while !all_asleep(&nodes).await {
        assert!(started.elapsed() < Duration::from_secs(10), "the group did not sleep again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the leader dies while everyone sleeps; gossip would tell the others, who are woken
    kill(&nodes[first]);
    let died = tokio::time::Instant::now();
    for (position, node) in nodes.iter().enumerate() {
        if position != first {
            node.replica.cast(RaftReplicaMsg::Wake).unwrap();
        }
    }
    let next = leader(&nodes, Some(nodes[first].id)).await;
    assert!(died.elapsed() < Duration::from_secs(2), "a new leader {:?} after the wake", died.elapsed());
    assert_eq!(produce(&nodes[next], 2).await.map(|placed| placed.base_offset), Some(2));
    assert_eq!(stored(&nodes[next], 3).len(), 3, "nothing acknowledged was lost");
}
