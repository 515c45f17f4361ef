//! A deterministic membership detector: push-pull gossip over the `Net` seam.
//!
//! Every `interval` a node bumps its own heartbeat, picks one peer (a live member or a
//! seed, chosen by the node's seeded RNG) and exchanges its table with it over one short TCP
//! exchange: one frame each way. A member is live while its heartbeat keeps rising within
//! `dead_after` on the local clock; a leaving member says so and is dropped at once. Tables
//! are `BTreeMap`s and time is tokio's, so under the simulation every run of a seed makes
//! the same choices.
//!
//! Production uses chitchat; this detector exists so that the simulation can replay.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Advertised, GossipOptions, Member, Members, Membership};
use crate::data_plane::frame;
use crate::seams::{Connection, Net, NodeRng};

/// What one node knows of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Heard {
    id: u64,
    generation: u64,
    heartbeat: u64,
    gossip: SocketAddr,
    advertised: Advertised,
    leaving: bool,
}

/// One gossip frame: a node's whole table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Digest {
    cluster: String,
    table: Vec<Heard>,
}

struct Known {
    heard: Heard,
    /// when its heartbeat last rose, on this node's clock
    fresh_at: Instant,
}

struct Table {
    me: Heard,
    others: BTreeMap<u64, Known>,
    stopped: bool,
}

/// The deterministic detector; see the module docs.
pub struct GossipDetector {
    options: GossipOptions,
    net: Arc<dyn Net>,
    table: Arc<Mutex<Table>>,
    members: watch::Sender<Members>,
    shutdown: watch::Sender<bool>,
}

/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(500);

impl GossipDetector {
    /// Binds the gossip listener and starts gossiping.
    pub async fn start(options: GossipOptions, net: Arc<dyn Net>, rng: NodeRng) -> std::io::Result<Arc<Self>> {
        let listener = net.bind(options.listen).await?;
        let me = Heard {
            id: options.node_id,
            generation: options.generation,
            heartbeat: 1,
            gossip: options.advertise,
            advertised: options.advertised.clone(),
            leaving: false,
        };
        let table = Arc::new(Mutex::new(Table { me, others: BTreeMap::new(), stopped: false }));
        let (members, _) = watch::channel(Members::new());
        let (shutdown, stopped) = watch::channel(false);
        let detector = Arc::new(Self { options, net, table, members, shutdown });
        detector.publish();
        let serving = Arc::clone(&detector);
        tokio::spawn(crate::seams::serve_listener("gossip", listener, stopped.clone(), move |connection, _| {
            let detector = Arc::clone(&serving);
            async move {
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, detector.answer(connection)).await;
            }
        }));
        let gossiping = Arc::clone(&detector);
        tokio::spawn(async move { gossiping.run(rng, stopped).await });
        Ok(detector)
    }

    async fn run(self: Arc<Self>, rng: NodeRng, mut stopped: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.options.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stopped.changed() => return,
                _ = ticker.tick() => {}
            }
            let target = {
                let mut table = self.table.lock();
                table.me.heartbeat += 1;
                let mut targets: Vec<SocketAddr> = table
                    .others
                    .values()
                    .filter(|known| !known.heard.leaving)
                    .map(|known| known.heard.gossip)
                    .collect();
                for seed in &self.options.seeds {
                    if let Ok(address) = seed.parse::<SocketAddr>()
                        && address != table.me.gossip
                        && !targets.contains(&address)
                    {
                        targets.push(address);
                    }
                }
                if targets.is_empty() { None } else { Some(targets[(rng.next_u64() % targets.len() as u64) as usize]) }
            };
            if let Some(target) = target {
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(target)).await;
            }
            self.publish();
        }
    }

    fn digest(&self) -> Digest {
        let table = self.table.lock();
        let mut rows = vec![table.me.clone()];
        rows.extend(table.others.values().map(|known| known.heard.clone()));
        Digest { cluster: self.options.cluster.clone(), table: rows }
    }

    fn merge(&self, digest: Digest) {
        if digest.cluster != self.options.cluster {
            return;
        }
        let now = Instant::now();
        let mut table = self.table.lock();
        for heard in digest.table {
            if heard.id == table.me.id {
                continue;
            }
            match table.others.get_mut(&heard.id) {
                Some(known) => {
                    let newer = (heard.generation, heard.heartbeat) > (known.heard.generation, known.heard.heartbeat);
                    if newer {
                        known.heard = heard;
                        known.fresh_at = now;
                    }
                }
                None => {
                    table.others.insert(heard.id, Known { heard, fresh_at: now });
                }
            }
        }
        drop(table);
        self.publish();
    }

    /// Recomputes the live members and publishes them if they changed.
    fn publish(&self) {
        let now = Instant::now();
        let table = self.table.lock();
        let mut live = Members::new();
        if !table.stopped {
            live.insert(table.me.id, member(&table.me));
        }
        for known in table.others.values() {
            if !known.heard.leaving && now.duration_since(known.fresh_at) < self.options.dead_after {
                live.insert(known.heard.id, member(&known.heard));
            }
        }
        drop(table);
        self.members.send_if_modified(|members| {
            if *members == live {
                false
            } else {
                *members = live;
                true
            }
        });
    }

    async fn exchange(&self, target: SocketAddr) -> std::io::Result<()> {
        let mut connection = self.net.connect(target).await?;
        send(&mut connection, &self.digest()).await?;
        let digest = receive(&mut connection).await?;
        self.merge(digest);
        Ok(())
    }

    async fn answer(&self, mut connection: Box<dyn Connection>) -> std::io::Result<()> {
        let digest = receive(&mut connection).await?;
        let ours = self.digest();
        self.merge(digest);
        send(&mut connection, &ours).await
    }
}

fn member(heard: &Heard) -> Member {
    Member { id: heard.id, generation: heard.generation, gossip: heard.gossip, advertised: heard.advertised.clone() }
}

async fn send(connection: &mut Box<dyn Connection>, digest: &Digest) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frame::encode(0, digest, &mut out).map_err(std::io::Error::other)?;
    connection.write_all(&out).await?;
    connection.flush().await
}

async fn receive(connection: &mut Box<dyn Connection>) -> std::io::Result<Digest> {
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        if let Some((_, payload)) = frame::take_frame(&mut buffer).map_err(std::io::Error::other)? {
            return frame::decode(&payload).map_err(std::io::Error::other);
        }
        if connection.read_buf(&mut buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[async_trait]
impl Membership for GossipDetector {
    fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    async fn leave(&self) {
        let targets: Vec<SocketAddr> = {
            let mut table = self.table.lock();
            table.me.leaving = true;
            table.me.heartbeat += 1;
            table.others.values().filter(|known| !known.heard.leaving).map(|known| known.heard.gossip).collect()
        };
        for target in targets {
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(target)).await;
        }
        self.table.lock().stopped = true;
        let _ = self.shutdown.send(true);
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::TokioNet;

    async fn node(id: u64, seeds: Vec<String>) -> Arc<GossipDetector> {
        let probe = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let options = GossipOptions {
            node_id: id,
            generation: 1,
            cluster: "test".into(),
            listen,
            advertise: listen,
            seeds,
            advertised: Advertised { rpc: Some(listen), ..Advertised::default() },
            interval: Duration::from_millis(20),
            dead_after: Duration::from_millis(300),
        };
        GossipDetector::start(options, Arc::new(TokioNet), NodeRng::seeded(id)).await.unwrap()
    }

    async fn until(detector: &GossipDetector, what: impl Fn(&Members) -> bool) -> Duration {
        crate::membership::wait_until(detector, Duration::from_secs(5), what).await
    }

    #[tokio::test]
    async fn nodes_join_through_a_seed_notice_a_dead_one_and_drop_a_leaving_one() {
        let first = node(1, Vec::new()).await;
        let seed = vec![first.options.advertise.to_string()];
        let second = node(2, seed.clone()).await;
        let third = node(3, seed).await;
        for detector in [&first, &second, &third] {
            until(detector, |members| members.len() == 3).await;
        }
        assert_eq!(first.members().borrow()[&3].advertised.rpc, Some(third.options.advertise));
        // a node that stops without a word is dead after `dead_after`
        let _ = third.shutdown.send(true);
        let noticed = until(&first, |members| !members.contains_key(&3)).await;
        assert!(noticed < Duration::from_secs(2), "took {noticed:?}");
        // a leaving node is gone from the others' view at once
        second.leave().await;
        let noticed = until(&first, |members| !members.contains_key(&2)).await;
        assert!(noticed < Duration::from_millis(250), "took {noticed:?}");
        assert_eq!(first.members().borrow().keys().copied().collect::<Vec<_>>(), vec![1]);
    }
}
