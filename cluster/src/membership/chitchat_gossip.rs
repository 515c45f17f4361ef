//! Production membership: chitchat (Quickwit's scuttlebutt gossip with a phi-accrual failure
//! detector) over UDP on the gossip port.
//!
//! Each node gossips its advertised addresses as key-values (`rpc`, `mqtt`, `kafka`, `http`).
//! chitchat's node id is our numeric id in decimal; its generation tells a restarted node
//! from its former self. A node that leaves sets `leaving`, which the liveness predicate
//! reads, so the others drop it at the next gossip instead of waiting for the detector.
//!
//! chitchat reaches the OS directly (UDP sockets, clock, randomness): it is the production
//! side of the seam, so it is allowed those here and nowhere else.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;

use async_trait::async_trait;
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion};
use tokio::sync::watch;

use super::{Advertised, GossipOptions, Member, Members, Membership};

/// The key a leaving node sets.
const LEAVING: &str = "leaving";

/// chitchat behind the [`Membership`] seam.
pub struct ChitchatMembership {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    members: watch::Receiver<Members>,
    interval: std::time::Duration,
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
#[error("gossip: {0}")]
pub struct GossipError(String);

impl ChitchatMembership {
    /// Binds the gossip socket and starts gossiping with the seeds.
    pub async fn start(options: GossipOptions) -> Result<Arc<Self>, GossipError> {
        let interval = options.interval.max(std::time::Duration::from_millis(10));
        // phi is the silence measured in mean heartbeat intervals
        let phi_threshold = (options.dead_after.as_secs_f64() / interval.as_secs_f64()).max(2.0);
        let config = ChitchatConfig {
            chitchat_id: ChitchatId {
                node_id: options.node_id.to_string().into(),
                generation_id: options.generation,
                gossip_advertise_addr: options.advertise,
            },
            cluster_id: options.cluster.clone(),
            gossip_interval: interval,
            listen_addr: options.listen,
            seed_nodes: options.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold,
                sampling_window_size: 1_000,
                max_interval: options.dead_after * 5,
                initial_interval: interval,
                dead_node_grace_period: std::time::Duration::from_secs(3_600),
            },
            marked_for_deletion_grace_period: std::time::Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| state.get(LEAVING).is_none())),
            protocol_version: ProtocolVersion::V0,
        };
        let handle = chitchat::spawn_chitchat(config, options.advertised.to_key_values(), &UdpTransport)
            .await
            .map_err(|error| GossipError(format!("{error:#}")))?;
        let mut live = handle.chitchat().lock().await.live_nodes_watcher();
        let (members, watched) = watch::channel(to_members(&live.borrow_and_update()));
        tokio::spawn(async move {
            while live.changed().await.is_ok() {
                let now = to_members(&live.borrow_and_update());
                members.send_if_modified(|known| {
                    if *known == now {
                        false
                    } else {
                        *known = now;
                        true
                    }
                });
            }
        });
        Ok(Arc::new(Self { handle: tokio::sync::Mutex::new(Some(handle)), members: watched, interval }))
    }
}

/// chitchat's live nodes as members; of two generations of one id, the newer.
fn to_members(live: &std::collections::BTreeMap<ChitchatId, NodeState>) -> Members {
    let mut members = Members::new();
    for (id, state) in live {
        let Ok(node_id) = id.node_id.parse::<u64>() else { continue };
        let member = Member {
            id: node_id,
            generation: id.generation_id,
            gossip: id.gossip_advertise_addr,
            advertised: Advertised::from_key_values(state.key_values()),
        };
        if members.get(&node_id).is_none_or(|known: &Member| known.generation < member.generation) {
            members.insert(node_id, member);
        }
    }
    members
}

#[async_trait]
impl Membership for ChitchatMembership {
    fn members(&self) -> watch::Receiver<Members> {
        self.members.clone()
    }

    async fn leave(&self) {
        let Some(handle) = self.handle.lock().await.take() else { return };
        handle.with_chitchat(|chitchat| chitchat.self_node_state().set(LEAVING, "true")).await;
        // two gossip rounds for the word to spread
        tokio::time::sleep(self.interval * 3).await;
        if let Err(error) = handle.shutdown().await {
            tracing::debug!(error = %format!("{error:#}"), "gossip shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn free_udp_port() -> std::net::SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    async fn node(id: u64, seeds: Vec<String>) -> (Arc<ChitchatMembership>, std::net::SocketAddr) {
        let listen = free_udp_port();
        let options = GossipOptions {
            node_id: id,
            generation: 1,
            cluster: "test".into(),
            listen,
            advertise: listen,
            seeds,
            advertised: Advertised { kafka: Some("127.0.0.1:9092".parse().unwrap()), ..Advertised::default() },
            interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(1_500),
        };
        (ChitchatMembership::start(options).await.unwrap(), listen)
    }

    async fn until(membership: &ChitchatMembership, what: impl Fn(&Members) -> bool) -> Duration {
        crate::membership::wait_until(membership, Duration::from_secs(10), what).await
    }

    #[tokio::test]
    async fn chitchat_nodes_join_notice_a_dead_one_and_drop_a_leaving_one() {
        let (first, first_address) = node(1, Vec::new()).await;
        let seeds = vec![first_address.to_string()];
        let (second, _) = node(2, seeds.clone()).await;
        let (third, _) = node(3, seeds).await;
        for membership in [&first, &second, &third] {
            until(membership, |members| members.len() == 3).await;
        }
        assert_eq!(first.members().borrow()[&2].advertised.kafka, Some("127.0.0.1:9092".parse().unwrap()));
        // killed: no word, the detector notices
        let handle = third.handle.lock().await.take().unwrap();
        handle.abort();
        let noticed = until(&first, |members| !members.contains_key(&3)).await;
        assert!(noticed < Duration::from_millis(3_000), "took {noticed:?}");
        // leaving: gone within a few gossip rounds
        second.leave().await;
        let noticed = until(&first, |members| !members.contains_key(&2)).await;
        assert!(noticed < Duration::from_millis(1_000), "took {noticed:?}");
    }
}
