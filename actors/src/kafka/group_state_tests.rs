//! Unit and property tests of the group state machine, driven the way a Kafka client drives a broker.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

/// A group plus the bookkeeping a host does: tokens handed out, replies received, offsets persisted.
struct Host {
    group: GroupState,
    next_token: u64,
    outstanding: BTreeSet<ReplyToken>,
    replies: BTreeMap<ReplyToken, Response>,
    persisted: Vec<PersistedOffsets>,
}

impl Host {
    fn new(config: GroupConfig) -> Self {
        Self {
            group: GroupState::new("g", config, 7),
            next_token: 0,
            outstanding: BTreeSet::new(),
            replies: BTreeMap::new(),
            persisted: Vec::new(),
        }
    }

    fn token(&mut self) -> ReplyToken {
        self.next_token += 1;
        let token = ReplyToken(self.next_token);
        self.outstanding.insert(token);
        token
    }

    fn absorb(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Reply(token, response) => {
                    assert!(self.outstanding.remove(&token), "token {token:?} answered twice or never issued");
                    self.replies.insert(token, response);
                }
                Output::Persist(offsets) => self.persisted.push(offsets),
            }
        }
        if let Err(violation) = self.group.check_invariants() {
            panic!("invariant broken: {violation}");
        }
    }

    fn join(&mut self, request: JoinRequest, now: i64) -> ReplyToken {
        let token = self.token();
        let outputs = self.group.join(request, now, token);
        self.absorb(outputs);
        token
    }

    fn sync(&mut self, member_id: &str, generation_id: i32, assignments: Vec<(String, Bytes)>, now: i64) -> ReplyToken {
        let token = self.token();
        let request = SyncRequest { member_id: member_id.to_owned(), generation_id, assignments };
        let outputs = self.group.sync(request, now, token);
        self.absorb(outputs);
        token
    }

    fn heartbeat(&mut self, member_id: &str, generation_id: i32, now: i64) -> ErrorCode {
        let token = self.token();
        let outputs = self.group.heartbeat(member_id, generation_id, now, token);
        self.absorb(outputs);
        match &self.replies[&token] {
            Response::Heartbeat(response) => response.error,
            other => panic!("heartbeat answered with {other:?}"),
        }
    }

    fn leave(&mut self, member_ids: &[&str], now: i64) -> LeaveResponse {
        let token = self.token();
        let members =
            member_ids.iter().map(|id| LeaveMember { member_id: (*id).to_owned(), group_instance_id: None }).collect();
        let outputs = self.group.leave(members, now, token);
        self.absorb(outputs);
        match &self.replies[&token] {
            Response::Leave(response) => response.clone(),
            other => panic!("leave answered with {other:?}"),
        }
    }

    fn tick(&mut self, now: i64) {
        let outputs = self.group.tick(now);
        self.absorb(outputs);
    }

    fn commit(
        &mut self,
        member_id: &str,
        generation_id: i32,
        offsets: Vec<OffsetCommitEntry>,
        now: i64,
    ) -> Vec<ErrorCode> {
        let outcome = self.group.commit(member_id, generation_id, offsets, now);
        self.absorb(outcome.outputs);
        outcome.results.into_iter().map(|r| r.error).collect()
    }

    fn join_reply(&self, token: ReplyToken) -> Option<&JoinResponse> {
        match self.replies.get(&token) {
            Some(Response::Join(response)) => Some(response),
            None => None,
            Some(other) => panic!("join answered with {other:?}"),
        }
    }

    fn sync_reply(&self, token: ReplyToken) -> Option<&SyncResponse> {
        match self.replies.get(&token) {
            Some(Response::Sync(response)) => Some(response),
            None => None,
            Some(other) => panic!("sync answered with {other:?}"),
        }
    }

    /// A v5 first join: MEMBER_ID_REQUIRED, then the rejoin with the id; returns (member id, rejoin token).
    fn join_new(&mut self, client_id: &str, protocols: &[&str], now: i64) -> (String, ReplyToken) {
        let first = self.join(join_request("", client_id, protocols), now);
        let response = self.join_reply(first).expect("first join is answered at once");
        assert_eq!(response.error, ErrorCode::MemberIdRequired);
        let member_id = response.member_id.clone();
        (member_id.clone(), self.join(join_request(&member_id, client_id, protocols), now))
    }

    /// A rejoin with unchanged metadata (the client id is the generated id's prefix).
    fn rejoin(&mut self, member_id: &str, now: i64) -> ReplyToken {
        let client_id = member_id.split('-').next().unwrap_or_default();
        self.join(join_request(member_id, client_id, &["range"]), now)
    }
}

fn join_request(member_id: &str, client_id: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_owned(),
        group_instance_id: None,
        client_id: client_id.to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".to_owned(),
        protocols: protocols.iter().map(|p| ((*p).to_owned(), Bytes::from(format!("{client_id}:{p}")))).collect(),
        api_version: 5,
    }
}

fn entry(topic: &str, partition: i32, offset: i64) -> OffsetCommitEntry {
    OffsetCommitEntry { topic: topic.to_owned(), partition, offset, leader_epoch: 3, metadata: Some("m".to_owned()) }
}

fn assignment_for(member_id: &str) -> Bytes {
    Bytes::from(format!("assigned-to-{member_id}"))
}

/// Two members "a" (leader) and "b", Stable in generation `.2` at time 0.
fn stable_pair() -> (Host, String, String, i32) {
    let mut host = Host::new(GroupConfig::default());
    let (a, a_join) = host.join_new("a", &["range"], 0);
    let generation = host.join_reply(a_join).expect("a alone completes at once").generation_id;
    let (b, b_join) = host.join_new("b", &["range"], 0);
    assert_eq!(host.group.phase(), GroupPhase::PreparingRebalance);
    assert_eq!(host.heartbeat(&a, generation, 0), ErrorCode::RebalanceInProgress);
    let a_rejoin = host.rejoin(&a, 0);
    let generation = host.join_reply(b_join).expect("b joined").generation_id;
    assert_eq!(host.join_reply(a_rejoin).expect("a rejoined").generation_id, generation);
    let assignments = vec![(a.clone(), assignment_for(&a)), (b.clone(), assignment_for(&b))];
    host.sync(&b, generation, Vec::new(), 0);
    host.sync(&a, generation, assignments, 0);
    assert_eq!(host.group.phase(), GroupPhase::Stable);
    (host, a, b, generation)
}

#[test]
fn two_members_join_within_the_initial_delay_sync_and_become_stable() {
    let config = GroupConfig { initial_rebalance_delay_ms: 3_000, ..GroupConfig::default() };
    let mut host = Host::new(config);
    let (a, a_join) = host.join_new("a", &["range", "roundrobin"], 0);
    let (b, b_join) = host.join_new("b", &["range"], 1_000);
    assert_eq!(host.group.next_deadline(), Some(3_000));
    host.tick(3_000);
    assert!(host.join_reply(a_join).is_none(), "a member arrived during the delay: wait another delay");
    host.tick(6_000);
    let a_response = host.join_reply(a_join).expect("a answered").clone();
    let b_response = host.join_reply(b_join).expect("b answered").clone();
    assert_eq!((a_response.error, a_response.generation_id), (ErrorCode::NoError, 1));
    assert_eq!(a_response.leader, a);
    assert_eq!(b_response.leader, a);
    assert_eq!(a_response.protocol_name.as_deref(), Some("range"));
    assert_eq!(a_response.members.iter().map(|m| m.member_id.as_str()).collect::<Vec<_>>(), [&a, &b]);
    assert_eq!(a_response.members[1].metadata, Bytes::from("b:range"));
    assert!(b_response.members.is_empty());
    assert_eq!(host.group.phase(), GroupPhase::CompletingRebalance);

    let b_sync = host.sync(&b, 1, Vec::new(), 6_100);
    assert!(host.sync_reply(b_sync).is_none(), "the follower waits for the leader");
    let a_sync = host.sync(&a, 1, vec![(a.clone(), assignment_for(&a)), (b.clone(), assignment_for(&b))], 6_200);
    assert_eq!(host.sync_reply(a_sync).expect("leader answered").assignment, assignment_for(&a));
    let b_sync = host.sync_reply(b_sync).expect("follower answered");
    assert_eq!((b_sync.error, b_sync.assignment.clone()), (ErrorCode::NoError, assignment_for(&b)));
    assert_eq!(b_sync.protocol_name.as_deref(), Some("range"));
    assert_eq!(host.group.phase(), GroupPhase::Stable);
    assert_eq!(host.heartbeat(&b, 1, 7_000), ErrorCode::NoError);

    let description = host.group.describe();
    assert_eq!((description.state, description.protocol.as_str()), ("Stable", "range"));
    assert_eq!(description.protocol_type, "consumer");
    assert_eq!(description.members[1].assignment, assignment_for(&b));
    assert_eq!(description.members[1].metadata, Bytes::from("b:range"));
    let listing = host.group.list_entry();
    assert_eq!((listing.group_id.as_str(), listing.protocol_type.as_str(), listing.state), ("g", "consumer", "Stable"));
}

#[test]
fn a_third_member_triggers_a_rebalance_that_the_others_learn_by_heartbeat() {
    let (mut host, a, b, generation) = stable_pair();
    let (c, c_join) = host.join_new("c", &["range"], 1_000);
    assert!(host.join_reply(c_join).is_none());
    assert_eq!(host.group.describe().state, "PreparingRebalance");
    assert_eq!(host.heartbeat(&a, generation, 2_000), ErrorCode::RebalanceInProgress);
    assert_eq!(host.heartbeat(&b, generation, 2_000), ErrorCode::RebalanceInProgress);
    let a_join = host.rejoin(&a, 2_100);
    assert!(host.join_reply(a_join).is_none(), "b has not rejoined yet");
    let b_join = host.rejoin(&b, 2_200);
    let responses: Vec<JoinResponse> =
        [a_join, b_join, c_join].iter().map(|t| host.join_reply(*t).expect("all answered").clone()).collect();
    for response in &responses {
        assert_eq!((response.error, response.generation_id), (ErrorCode::NoError, generation + 1));
        assert_eq!(response.leader, a, "the leader is kept");
    }
    assert_eq!(responses[0].members.len(), 3);
    assert!(responses[1].members.is_empty() && responses[2].members.is_empty());
    let all = vec![(a.clone(), assignment_for(&a)), (b.clone(), assignment_for(&b)), (c.clone(), assignment_for(&c))];
    let c_sync = host.sync(&c, generation + 1, Vec::new(), 2_300);
    host.sync(&a, generation + 1, all, 2_400);
    assert_eq!(host.sync_reply(c_sync).expect("c synced").assignment, assignment_for(&c));
    let b_sync = host.sync(&b, generation + 1, Vec::new(), 2_500);
    assert_eq!(host.sync_reply(b_sync).expect("b synced late, in Stable").assignment, assignment_for(&b));
}

#[test]
fn a_member_leaving_triggers_a_rebalance() {
    let (mut host, a, b, generation) = stable_pair();
    let response = host.leave(&[b.as_str(), "ghost"], 1_000);
    assert_eq!(response.error, ErrorCode::NoError);
    assert_eq!(
        response.members.iter().map(|m| m.error).collect::<Vec<_>>(),
        [ErrorCode::NoError, ErrorCode::UnknownMemberId]
    );
    assert_eq!(host.heartbeat(&a, generation, 1_500), ErrorCode::RebalanceInProgress);
    let a_join = host.rejoin(&a, 1_600);
    let response = host.join_reply(a_join).expect("a alone completes");
    assert_eq!((response.generation_id, response.members.len()), (generation + 1, 1));
    assert_eq!(host.heartbeat(&b, generation, 1_700), ErrorCode::UnknownMemberId);
}

#[test]
fn the_leader_leaving_hands_leadership_to_the_next_member() {
    let (mut host, a, b, generation) = stable_pair();
    host.leave(&[a.as_str()], 1_000);
    let b_join = host.rejoin(&b, 1_100);
    let response = host.join_reply(b_join).expect("b alone completes");
    assert_eq!((response.leader.as_str(), response.generation_id), (b.as_str(), generation + 1));
    assert_eq!(response.members.len(), 1);
}

#[test]
fn the_last_member_leaving_empties_the_group() {
    let (mut host, a, b, generation) = stable_pair();
    host.leave(&[a.as_str(), b.as_str()], 1_000);
    assert_eq!(host.group.phase(), GroupPhase::Empty);
    assert_eq!(host.group.generation_id(), generation + 1);
    assert_eq!(host.group.list_entry().protocol_type, "consumer");
    assert_eq!(host.group.next_deadline(), None);
}

#[test]
fn a_silent_member_expires_after_its_session_timeout() {
    let (mut host, a, b, generation) = stable_pair();
    for now in (3_000..=9_000).step_by(3_000) {
        assert_eq!(host.heartbeat(&a, generation, now), ErrorCode::NoError);
    }
    assert_eq!(host.group.next_deadline(), Some(i64::from(SESSION)), "b's session ends first");
    host.tick(i64::from(SESSION) - 1);
    assert_eq!(host.group.member_count(), 2);
    host.tick(i64::from(SESSION));
    assert_eq!(host.group.member_count(), 1);
    assert_eq!(host.heartbeat(&a, generation, 12_500), ErrorCode::RebalanceInProgress);
    let a_join = host.rejoin(&a, 13_000);
    assert_eq!(host.join_reply(a_join).expect("a rejoined").generation_id, generation + 1);
    assert_eq!(host.heartbeat(&b, generation, 13_000), ErrorCode::UnknownMemberId);
}

#[test]
fn the_rebalance_timeout_removes_members_that_do_not_rejoin() {
    let (mut host, a, b, generation) = stable_pair();
    let (c, c_join) = host.join_new("c", &["range"], 1_000);
    let a_join = host.rejoin(&a, 1_500);
    // b keeps heartbeating (so its session never expires) but never rejoins.
    for now in (5_000..31_000).step_by(5_000) {
        assert_eq!(host.heartbeat(&b, generation, now), ErrorCode::RebalanceInProgress);
    }
    let deadline = 1_000 + i64::from(REBALANCE);
    assert_eq!(host.group.next_deadline(), Some(deadline));
    host.tick(deadline);
    let a_response = host.join_reply(a_join).expect("a answered at the rebalance timeout");
    assert_eq!(a_response.generation_id, generation + 1);
    assert_eq!(a_response.members.iter().map(|m| m.member_id.clone()).collect::<Vec<_>>(), [a.clone(), c.clone()]);
    assert_eq!(host.join_reply(c_join).expect("c answered").generation_id, generation + 1);
    assert_eq!(host.heartbeat(&b, generation, deadline + 1), ErrorCode::UnknownMemberId);
    let b_join = host.rejoin(&b, deadline + 2);
    assert_eq!(host.join_reply(b_join).expect("b rejected").error, ErrorCode::UnknownMemberId);
}

#[test]
fn a_member_that_never_syncs_is_removed_after_its_session_timeout() {
    let (mut host, a, b, generation) = stable_pair();
    let a_join = host.rejoin(&a, 1_000); // the leader rejoining forces a rebalance
    assert_eq!(host.heartbeat(&b, generation, 1_100), ErrorCode::RebalanceInProgress);
    let b_join = host.rejoin(&b, 1_200);
    let next = host.join_reply(a_join).expect("joined").generation_id;
    assert_eq!(host.join_reply(b_join).expect("joined").generation_id, next);
    let b_sync = host.sync(&b, next, Vec::new(), 1_300);
    // The leader heartbeats but never sends its assignment.
    assert_eq!(host.heartbeat(&a, next, 6_000), ErrorCode::NoError);
    host.tick(1_200 + i64::from(SESSION));
    let b_sync = host.sync_reply(b_sync).expect("the waiting follower is told to rejoin");
    assert_eq!(b_sync.error, ErrorCode::RebalanceInProgress);
    assert_eq!(host.group.phase(), GroupPhase::PreparingRebalance);
    assert_eq!(host.heartbeat(&a, next, 11_300), ErrorCode::UnknownMemberId);
    let b_join = host.rejoin(&b, 11_400);
    let response = host.join_reply(b_join).expect("b alone");
    assert_eq!((response.leader.as_str(), response.generation_id), (b.as_str(), next + 1));
}

#[test]
fn member_id_required_flow() {
    let mut host = Host::new(GroupConfig::default());
    let first = host.join(join_request("", "rdkafka", &["range"]), 0);
    let response = host.join_reply(first).expect("answered at once").clone();
    assert_eq!(response.error, ErrorCode::MemberIdRequired);
    assert_eq!(response.error.code(), 79);
    assert!(response.member_id.starts_with("rdkafka-"), "{}", response.member_id);
    assert_eq!(host.group.phase(), GroupPhase::Empty, "a pending id does not start a rebalance");
    assert_eq!(host.heartbeat(&response.member_id, 0, 10), ErrorCode::UnknownMemberId);
    let second = host.join(join_request(&response.member_id, "rdkafka", &["range"]), 100);
    let joined = host.join_reply(second).expect("joined");
    assert_eq!((joined.error, joined.member_id.as_str()), (ErrorCode::NoError, response.member_id.as_str()));

    // JoinGroup v3 and older join directly with a generated id.
    let mut old = join_request("", "java", &["range"]);
    old.api_version = 3;
    let direct = host.join(old, 150);
    assert!(host.join_reply(direct).is_none(), "a rebalance starts for the v3 member");
    assert_eq!(host.group.member_count(), 2);

    // A pending id holds the join phase; if it never comes back it expires after the session timeout.
    let third = host.join(join_request("", "rdkafka", &["range"]), 200);
    let pending = host.join_reply(third).expect("answered").member_id.clone();
    assert_ne!(pending, response.member_id, "generated ids are unique");
    host.tick(200 + i64::from(SESSION) - 1);
    assert!(host.join_reply(direct).is_none());
    host.tick(200 + i64::from(SESSION));
    assert_eq!(host.join_reply(direct).expect("completed").members.len(), 1, "the silent first member is gone");
    let late = host.join(join_request(&pending, "rdkafka", &["range"]), 200 + i64::from(SESSION));
    assert_eq!(host.join_reply(late).expect("answered").error, ErrorCode::UnknownMemberId);
}

#[test]
fn a_pending_member_id_holds_the_join_phase_until_it_rejoins_or_expires() {
    let (mut host, a, b, generation) = stable_pair();
    let a_join = host.rejoin(&a, 1_000);
    let pending = host.join(join_request("", "c", &["range"]), 1_100);
    let pending = host.join_reply(pending).expect("answered").member_id.clone();
    let b_join = host.rejoin(&b, 1_200);
    assert!(host.join_reply(a_join).is_none(), "the pending id may still join");
    host.tick(1_100 + i64::from(SESSION));
    assert_eq!(host.join_reply(b_join).expect("completed").generation_id, generation + 1);
    assert_eq!(host.join_reply(a_join).expect("completed").members.len(), 2);
    assert!(!host.group.describe().members.iter().any(|m| m.member_id == pending));
}

#[test]
fn join_validation_errors() {
    let (mut host, a, _b, _generation) = stable_pair();
    let mut short = join_request("", "x", &["range"]);
    short.session_timeout_ms = 5_999;
    let token = host.join(short, 100);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::InvalidSessionTimeout);
    let mut long = join_request(&a, "x", &["range"]);
    long.session_timeout_ms = 1_800_001;
    let token = host.join(long, 100);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::InvalidSessionTimeout);
    let mut other_type = join_request("", "x", &["range"]);
    other_type.protocol_type = "connect".to_owned();
    let token = host.join(other_type, 100);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::InconsistentGroupProtocol);
    let token = host.join(join_request("", "x", &["cooperative-sticky"]), 100);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::InconsistentGroupProtocol);
    let token = host.join(join_request(&a, "x", &["cooperative-sticky"]), 100);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::InconsistentGroupProtocol);
    let token = host.join(join_request("nobody", "x", &["range"]), 100);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::UnknownMemberId);
    assert_eq!(host.group.phase(), GroupPhase::Stable, "rejected joins change nothing");
    let mut empty = Host::new(GroupConfig::default());
    let token = empty.join(join_request("", "x", &[]), 0);
    assert_eq!(empty.join_reply(token).expect("answered").error, ErrorCode::InconsistentGroupProtocol);
}

#[test]
fn illegal_generation_and_state_errors() {
    let (mut host, a, b, generation) = stable_pair();
    assert_eq!(host.heartbeat(&a, generation - 1, 100), ErrorCode::IllegalGeneration);
    let token = host.sync(&a, generation + 1, Vec::new(), 100);
    assert_eq!(host.sync_reply(token).expect("answered").error, ErrorCode::IllegalGeneration);
    let token = host.sync("nobody", generation, Vec::new(), 100);
    assert_eq!(host.sync_reply(token).expect("answered").error, ErrorCode::UnknownMemberId);
    assert_eq!(host.commit(&a, generation - 1, vec![entry("t", 0, 5)], 100), [ErrorCode::IllegalGeneration]);
    assert_eq!(host.heartbeat("nobody", generation, 100), ErrorCode::UnknownMemberId);
    // During PreparingRebalance SyncGroup is refused and followers learn to rejoin.
    host.rejoin(&a, 200);
    let token = host.sync(&b, generation, Vec::new(), 300);
    assert_eq!(host.sync_reply(token).expect("answered").error, ErrorCode::RebalanceInProgress);
    assert_eq!(host.commit(&b, generation, vec![entry("t", 0, 6)], 300), [ErrorCode::NoError], "as in Kafka");
}

#[test]
fn a_follower_rejoining_unchanged_in_stable_keeps_the_generation_but_the_leader_forces_a_rebalance() {
    let (mut host, a, b, generation) = stable_pair();
    let token = host.rejoin(&b, 100);
    let response = host.join_reply(token).expect("answered at once");
    assert_eq!((response.generation_id, response.leader.as_str()), (generation, a.as_str()));
    assert_eq!(host.group.phase(), GroupPhase::Stable);
    let token = host.rejoin(&a, 200);
    assert!(host.join_reply(token).is_none());
    assert_eq!(host.group.phase(), GroupPhase::PreparingRebalance);
}

#[test]
fn protocol_selection_follows_the_members_votes() {
    let mut host = Host::new(GroupConfig { initial_rebalance_delay_ms: 100, ..GroupConfig::default() });
    let (_a, a_join) = host.join_new("a", &["roundrobin", "range", "sticky"], 0);
    host.join_new("b", &["roundrobin", "range"], 0);
    host.join_new("c", &["range", "roundrobin"], 0);
    host.tick(1_000);
    assert_eq!(host.join_reply(a_join).expect("done").protocol_name.as_deref(), Some("roundrobin"));
    let mut host = Host::new(GroupConfig { initial_rebalance_delay_ms: 100, ..GroupConfig::default() });
    let (_a, a_join) = host.join_new("a", &["roundrobin", "range"], 0);
    host.join_new("b", &["range"], 0);
    host.tick(1_000);
    assert_eq!(host.join_reply(a_join).expect("done").protocol_name.as_deref(), Some("range"), "only common ones");
}

#[test]
fn offsets_commit_fetch_persist_and_restore() {
    let (mut host, a, b, generation) = stable_pair();
    let long = OffsetCommitEntry { metadata: Some("x".repeat(4097)), ..entry("t", 2, 9) };
    let errors = host.commit(&a, generation, vec![entry("t", 0, 42), entry("t", 1, 7), long], 500);
    assert_eq!(errors, [ErrorCode::NoError, ErrorCode::NoError, ErrorCode::OffsetMetadataTooLarge]);
    assert_eq!(host.persisted.len(), 1);
    assert_eq!(host.persisted[0].records.len(), 2, "only accepted offsets are persisted");
    let fetched = host.group.fetch_offsets(Some(vec![("t".to_owned(), 0), ("t".to_owned(), 2), ("u".to_owned(), 0)]));
    assert_eq!((fetched[0].offset, fetched[0].leader_epoch, fetched[0].metadata.as_str()), (42, 3, "m"));
    assert_eq!((fetched[1].offset, fetched[1].leader_epoch, fetched[1].metadata.as_str()), (-1, -1, ""));
    assert_eq!(fetched[2].offset, -1);
    assert_eq!(host.group.fetch_offsets(None).len(), 2);

    assert_eq!(host.commit("", -1, vec![entry("t", 0, 1)], 600), [ErrorCode::UnknownMemberId], "group is active");
    assert_eq!(host.commit("nobody", generation, vec![entry("t", 0, 1)], 600), [ErrorCode::UnknownMemberId]);
    host.rejoin(&a, 700);
    host.rejoin(&b, 700);
    assert_eq!(host.group.phase(), GroupPhase::CompletingRebalance);
    assert_eq!(host.commit(&a, generation + 1, vec![entry("t", 0, 1)], 800), [ErrorCode::RebalanceInProgress]);
    host.leave(&[a.as_str(), b.as_str()], 900);
    assert_eq!(host.group.phase(), GroupPhase::Empty);

    // A simple consumer (no group management) commits to the Empty group.
    let errors =
        host.commit("", -1, vec![entry("t", 0, 100), OffsetCommitEntry { metadata: None, ..entry("v", 0, 3) }], 1_000);
    assert_eq!(errors, [ErrorCode::NoError, ErrorCode::NoError]);
    assert_eq!(host.group.fetch_offsets(Some(vec![("t".to_owned(), 0)]))[0].offset, 100);
    assert_eq!(host.group.fetch_offsets(Some(vec![("v".to_owned(), 0)]))[0].metadata, "");

    let mut restored = GroupState::new("g", GroupConfig::default(), 8);
    restored.restore_offsets(host.persisted.iter().flat_map(|p| p.records.clone()));
    assert_eq!(restored.fetch_offsets(None), host.group.fetch_offsets(None));

    let (error, outputs) = host.group.delete();
    assert_eq!(error, ErrorCode::NoError);
    assert_eq!(host.group.describe().state, "Dead");
    let Some(Output::Persist(tombstones)) = outputs.first() else { panic!("tombstones expected") };
    assert!(tombstones.records.iter().all(|r| r.value.is_none()));
    restored.restore_offsets(tombstones.records.clone());
    assert!(restored.fetch_offsets(None).is_empty());
    assert_eq!(host.commit("", -1, vec![entry("t", 0, 1)], 2_000), [ErrorCode::CoordinatorNotAvailable]);
}

#[test]
fn deleting_an_active_group_is_refused() {
    let (mut host, ..) = stable_pair();
    assert_eq!(host.group.delete().0, ErrorCode::NonEmptyGroup);
    assert_eq!(host.group.phase(), GroupPhase::Stable);
}

#[test]
fn unloading_answers_every_pending_request_with_not_coordinator() {
    let (mut host, a, b, generation) = stable_pair();
    let (_c, c_join) = host.join_new("c", &["range"], 100);
    let a_join = host.rejoin(&a, 200);
    let outputs = host.group.unload();
    host.absorb(outputs);
    assert_eq!(host.join_reply(c_join).expect("answered").error, ErrorCode::NotCoordinator);
    assert_eq!(host.join_reply(a_join).expect("answered").error, ErrorCode::NotCoordinator);
    assert!(host.outstanding.is_empty());
    assert_eq!(host.heartbeat(&b, generation, 300), ErrorCode::CoordinatorNotAvailable);
    let token = host.rejoin(&b, 300);
    assert_eq!(host.join_reply(token).expect("answered").error, ErrorCode::CoordinatorNotAvailable);
    assert_eq!(host.group.next_deadline(), None);
}

#[test]
fn static_members_are_fenced_by_a_new_incarnation_and_can_be_removed_by_instance_id() {
    let mut host = Host::new(GroupConfig::default());
    let with_instance = |member_id: &str| JoinRequest {
        group_instance_id: Some("instance-1".to_owned()),
        ..join_request(member_id, "s", &["range"])
    };
    let first = host.join(with_instance(""), 0);
    let old = host.join_reply(first).expect("static members join without MEMBER_ID_REQUIRED").member_id.clone();
    let second = host.join(with_instance(""), 100);
    assert!(host.join_reply(second).is_some());
    let new = host.join_reply(second).expect("answered").member_id.clone();
    assert_ne!(old, new);
    let zombie = host.join(with_instance(&old), 200);
    assert_eq!(host.join_reply(zombie).expect("answered").error, ErrorCode::FencedInstanceId);
    let token = host.token();
    let leave = vec![LeaveMember { member_id: String::new(), group_instance_id: Some("instance-1".to_owned()) }];
    let outputs = host.group.leave(leave, 300, token);
    host.absorb(outputs);
    assert_eq!(host.group.member_count(), 0);
    assert_eq!(host.group.phase(), GroupPhase::Empty);
}

#[test]
fn a_superseded_join_is_answered() {
    let (mut host, a, _b, _generation) = stable_pair();
    let first = host.rejoin(&a, 100);
    let second = host.rejoin(&a, 200);
    assert_eq!(host.join_reply(first).expect("answered").error, ErrorCode::RebalanceInProgress);
    assert!(host.join_reply(second).is_none());
}

#[test]
fn config_validation_names_the_key() {
    assert_eq!(GroupConfig::default().validate(), Ok(()));
    let bad = GroupConfig { min_session_timeout_ms: 10, max_session_timeout_ms: 5, ..GroupConfig::default() };
    let error = bad.validate().expect_err("min above max");
    assert!(error.to_string().starts_with("min_session_timeout_ms"), "{error}");
}

// ---------------------------------------------------------------------------------------------------------
// Property test: random clients against one group.

#[derive(Debug, Clone)]
enum Op {
    Join { client: usize, protocols: usize, session_ms: i32, rebalance_ms: i32, old_version: bool },
    Sync { client: usize, stale: bool },
    Heartbeat { client: usize, stale: bool },
    Leave { client: usize },
    Commit { client: usize, stale: bool },
    Advance { ms: i64 },
    Tick,
}

const PROTOCOL_CHOICES: [(&str, &[&str]); 6] = [
    ("consumer", &["range"]),
    ("consumer", &["range"]),
    ("consumer", &["range", "roundrobin"]),
    ("consumer", &["roundrobin"]),
    ("consumer", &["roundrobin", "range"]),
    ("connect", &["sessioned"]),
];

fn op() -> impl Strategy<Value = Op> {
    let client = 0..4usize;
    let session = prop_oneof![1 => Just(5_000), 9 => 6_000..12_000i32];
    prop_oneof![
        5 => (client.clone(), 0..PROTOCOL_CHOICES.len(), session, 6_000..30_000i32, prop::bool::weighted(0.2))
            .prop_map(|(client, protocols, session_ms, rebalance_ms, old_version)| {
                Op::Join { client, protocols, session_ms, rebalance_ms, old_version }
            }),
        4 => (client.clone(), prop::bool::weighted(0.1)).prop_map(|(client, stale)| Op::Sync { client, stale }),
        4 => (client.clone(), prop::bool::weighted(0.1)).prop_map(|(client, stale)| Op::Heartbeat { client, stale }),
        1 => client.clone().prop_map(|client| Op::Leave { client }),
        1 => (client, prop::bool::weighted(0.2)).prop_map(|(client, stale)| Op::Commit { client, stale }),
        3 => prop_oneof![3 => 0..3_000i64, 1 => 0..40_000i64].prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Tick),
    ]
}

/// What one simulated client believes.
#[derive(Debug, Clone, Default)]
struct Client {
    member_id: String,
    generation: i32,
    /// The member ids this client was told about as leader.
    members_to_assign: Vec<String>,
}

struct Simulation {
    host: Host,
    clients: Vec<Client>,
    /// Which client sent the join behind each token.
    joins: BTreeMap<ReplyToken, usize>,
    now: i64,
    leaders: BTreeMap<i32, String>,
    highest_generation: i32,
}

impl Simulation {
    fn step(&mut self, op: Op) {
        let before: BTreeSet<ReplyToken> = self.host.replies.keys().copied().collect();
        match op {
            Op::Join { client, protocols, session_ms, rebalance_ms, old_version } => {
                let (protocol_type, names) = PROTOCOL_CHOICES[protocols];
                let mut request = join_request(&self.clients[client].member_id, &format!("c{client}"), names);
                request.protocol_type = protocol_type.to_owned();
                request.session_timeout_ms = session_ms;
                request.rebalance_timeout_ms = rebalance_ms;
                request.api_version = if old_version { 3 } else { 5 };
                let token = self.host.join(request, self.now);
                self.joins.insert(token, client);
            }
            Op::Sync { client, stale } => {
                let state = self.clients[client].clone();
                let assignments = state.members_to_assign.iter().map(|id| (id.clone(), assignment_for(id))).collect();
                self.host.sync(&state.member_id, state.generation - i32::from(stale), assignments, self.now);
            }
            Op::Heartbeat { client, stale } => {
                let state = &self.clients[client];
                let (member_id, generation) = (state.member_id.clone(), state.generation - i32::from(stale));
                self.host.heartbeat(&member_id, generation, self.now);
            }
            Op::Leave { client } => {
                let member_id = std::mem::take(&mut self.clients[client].member_id);
                self.host.leave(&[member_id.as_str()], self.now);
            }
            Op::Commit { client, stale } => {
                let state = self.clients[client].clone();
                let (member_id, generation) =
                    if stale { (String::new(), -1) } else { (state.member_id, state.generation) };
                self.host.commit(&member_id, generation, vec![entry("t", client as i32, self.now)], self.now);
            }
            Op::Advance { ms } => self.now += ms,
            Op::Tick => {
                self.host.tick(self.now);
                let next = self.host.group.next_deadline();
                assert!(next.is_none_or(|deadline| deadline > self.now), "tick left a due deadline");
            }
        }
        let new: Vec<ReplyToken> = self.host.replies.keys().filter(|t| !before.contains(t)).copied().collect();
        for token in new {
            self.observe(token);
        }
        let generation = self.host.group.generation_id();
        assert!(generation >= self.highest_generation, "generation went back");
        self.highest_generation = generation;
    }

    /// Updates the client's beliefs from a join answer and checks the one-leader rule.
    fn observe(&mut self, token: ReplyToken) {
        let Some(client) = self.joins.get(&token).copied() else { return };
        let Some(response) = self.host.join_reply(token).cloned() else { return };
        let state = &mut self.clients[client];
        match response.error {
            ErrorCode::NoError => {
                let leader = self.leaders.entry(response.generation_id).or_insert_with(|| response.leader.clone());
                assert_eq!(*leader, response.leader, "two leaders in generation {}", response.generation_id);
                let is_leader = response.member_id == response.leader;
                assert_eq!(is_leader, !response.members.is_empty(), "only the leader sees the members");
                if is_leader {
                    assert!(response.members.iter().any(|m| m.member_id == response.leader));
                }
                state.member_id = response.member_id;
                state.generation = response.generation_id;
                state.members_to_assign = response.members.into_iter().map(|m| m.member_id).collect();
            }
            ErrorCode::MemberIdRequired => state.member_id = response.member_id,
            ErrorCode::UnknownMemberId => *state = Client::default(),
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_clients_never_break_the_group(ops in prop::collection::vec(op(), 1..120), delay in prop_oneof![Just(0), Just(3_000)]) {
        let config = GroupConfig { initial_rebalance_delay_ms: delay, ..GroupConfig::default() };
        let mut simulation = Simulation {
            host: Host::new(config),
            clients: vec![Client::default(); 4],
            joins: BTreeMap::new(),
            now: 0,
            leaders: BTreeMap::new(),
            highest_generation: 0,
        };
        for op in ops {
            simulation.step(op);
        }
        // After a long enough quiet period every request has been answered.
        simulation.step(Op::Advance { ms: 10_000_000 });
        simulation.step(Op::Tick);
        prop_assert!(simulation.host.outstanding.is_empty(), "unanswered: {:?}", simulation.host.outstanding);
        prop_assert!(matches!(simulation.host.group.phase(), GroupPhase::Empty | GroupPhase::Stable));
    }
}
