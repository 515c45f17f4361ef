//! A link and a server over loopback: packing, order, hello checks, reconnecting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::Actor;

use super::peer_link::{LinkOptions, LinkStatus};
use super::*;
use crate::raft::wire::RaftMessageKind;
use crate::seams::{Net, TokioNet};

fn heartbeat(partition: i32, term: u64) -> (GroupId, RaftMessage) {
    let message = RaftMessage {
        kind: RaftMessageKind::Heartbeat,
        to: 2,
        from: 1,
        term,
        log_term: 0,
        index: 0,
        entries: Vec::new(),
        commit: 0,
        commit_term: 0,
        snapshot: None,
        request_snapshot: 0,
        reject: false,
        reject_hint: 0,
        context: bytes::Bytes::new(),
        priority: 0,
    };
    (GroupId::Partition { stream: "s".into(), partition }, message)
}

type Received = Arc<Mutex<Vec<(u64, PeerMessage)>>>;

async fn server(cluster: &str, at: SocketAddr) -> (SocketAddr, Received, tokio::sync::watch::Sender<bool>) {
    let listener = TokioNet.bind(at).await.expect("bind");
    let address = listener.local_addr().expect("address");
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let deliver: server::Deliver = Arc::new(move |from, message| sink.lock().push((from, message)));
    tokio::spawn(serve_peers(listener, cluster.to_string(), shutdown, deliver));
    (address, received, stop)
}

async fn link(address: SocketAddr, cluster: &str) -> ractor::ActorRef<PeerLinkMsg> {
    let args = PeerLinkArgs {
        local_node: 1,
        cluster: cluster.to_string(),
        address,
        net: Arc::new(TokioNet),
        options: LinkOptions { backoff_min: Duration::from_millis(20), ..LinkOptions::default() },
        undelivered: None,
        lost: None,
    };
    Actor::spawn(None, PeerLink, args).await.expect("link starts").0
}

async fn status(link: &ractor::ActorRef<PeerLinkMsg>) -> LinkStatus {
    ractor::call_t!(link, PeerLinkMsg::Status, 1_000).expect("status")
}

fn raft_messages(received: &Received) -> Vec<(GroupId, RaftMessage)> {
    received
        .lock()
        .iter()
        .flat_map(|(_, message)| match message {
            PeerMessage::Raft(messages) => messages.clone(),
            PeerMessage::Hello { .. } | PeerMessage::Ack { .. } | PeerMessage::Forwarded(_) => Vec::new(),
        })
        .collect()
}

async fn wait_for(what: impl Fn() -> bool) {
    for _ in 0..200 {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

#[tokio::test]
async fn a_burst_of_heartbeats_leaves_in_a_few_frames_in_order() {
    let (address, received, _stop) = server("c", "127.0.0.1:0".parse().unwrap()).await;
    let link = link(address, "c").await;
    for partition in 0..1_000 {
        let (group, message) = heartbeat(partition, 3);
        link.cast(PeerLinkMsg::Raft(group, message)).unwrap();
    }
    wait_for(|| raft_messages(&received).len() == 1_000).await;
    let messages = raft_messages(&received);
    for (expected, (group, _)) in messages.iter().enumerate() {
        assert_eq!(*group, GroupId::Partition { stream: "s".into(), partition: expected as i32 });
    }
    let frames = received.lock().len();
    assert!(frames < 50, "1,000 heartbeats took {frames} frames");
    assert!(received.lock().iter().all(|(from, _)| *from == 1), "frames are attributed to the hello's node");
    let status = status(&link).await;
    assert!(status.connected);
    assert_eq!(status.messages_sent, 1_000);
}

#[tokio::test]
async fn a_peer_of_another_cluster_is_refused() {
    let (address, received, _stop) = server("ours", "127.0.0.1:0".parse().unwrap()).await;
    let link = link(address, "theirs").await;
    let (group, message) = heartbeat(0, 1);
    link.cast(PeerLinkMsg::Raft(group, message)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received.lock().is_empty());
}

#[tokio::test]
async fn a_link_drops_while_the_peer_is_down_and_reconnects_when_it_is_back() {
    // a port that nothing listens on yet
    let probe = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = probe.local_addr().unwrap();
    drop(probe);
    let link = link(address, "c").await;
    let (group, message) = heartbeat(0, 1);
    link.cast(PeerLinkMsg::Raft(group, message)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down = status(&link).await;
    assert!(!down.connected);
    assert_eq!(down.messages_dropped, 1, "nothing is queued for a peer that is down");
    let (_, received, _stop) = server("c", address).await;
    // raft resends: keep sending until the backoff lets the link reconnect
    for term in 2..200 {
        let (group, message) = heartbeat(0, term);
        link.cast(PeerLinkMsg::Raft(group, message)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !raft_messages(&received).is_empty() {
            break;
        }
    }
    assert!(!raft_messages(&received).is_empty(), "the link came back");
    assert!(status(&link).await.connected);
}
