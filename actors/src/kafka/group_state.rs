//! Sans-IO state machine of one Kafka consumer group under the classic protocol: membership,
//! rebalances (JoinGroup/SyncGroup/Heartbeat/LeaveGroup) and committed offsets, as Kafka's
//! `GroupCoordinator` does them.
//!
//! The `GroupCoordinator` actor is a thin shell around [`GroupState`]: it decodes a request, calls one
//! method with the current time, sends every [`Output::Reply`] to the connection its [`ReplyToken`]
//! stands for, stores every [`Output::Persist`] durably, and arms one timer at [`GroupState::next_deadline`]
//! that calls [`GroupState::tick`]. Keeping time, I/O and the wire codec out of this module makes the
//! protocol unit- and property-testable and replayable by seed.
//!
//! Every delayed reply (a JoinGroup waiting for the rebalance, a SyncGroup waiting for the leader) is
//! answered exactly once: on completion, on timeout, when its member is removed, or when the group dies.
//! The public types live in `group_state_types.rs`, the offset handling in `group_state_offsets.rs`.

use std::collections::BTreeMap;

use bytes::Bytes;

#[path = "group_state_offsets.rs"]
mod offsets;
#[path = "group_state_types.rs"]
mod types;

pub use types::*;

/// A member of the group.
#[derive(Debug, Clone)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// The generation `assignment` belongs to.
    assignment_generation: i32,
    /// Order of arrival: the oldest member is preferred as leader.
    join_seq: u64,
    pending_join: Option<ReplyToken>,
    pending_sync: Option<ReplyToken>,
    session_deadline_ms: i64,
    /// Set when a generation starts; cleared when the member sends SyncGroup.
    sync_deadline_ms: Option<i64>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    /// Members waiting for a join or sync answer are kept alive (as in Kafka): no session deadline then.
    fn session_deadline(&self) -> Option<i64> {
        (self.pending_join.is_none() && self.pending_sync.is_none()).then_some(self.session_deadline_ms)
    }
}

/// The join phase's timer; `initial_remaining_ms` is set during the initial delay of an empty group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RebalanceTimer {
    deadline_ms: i64,
    initial_remaining_ms: Option<i64>,
}

/// A deadline that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    Rebalance,
    Session(String),
    Sync(String),
    Pending(String),
}

/// The state machine of one consumer group.
#[derive(Debug, Clone)]
pub struct GroupState {
    group_id: String,
    config: GroupConfig,
    member_id_seed: u64,
    next_member_number: u64,
    next_join_seq: u64,
    phase: GroupPhase,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader_id: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the deadline for their rejoin.
    pending_members: BTreeMap<String, i64>,
    rebalance: Option<RebalanceTimer>,
    new_member_added: bool,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
}

impl GroupState {
    /// Creates an empty group; `member_id_seed` (from the node's RNG seam) makes generated member ids
    /// unique across coordinator fail-overs yet deterministic in simulation.
    pub fn new(group_id: impl Into<String>, config: GroupConfig, member_id_seed: u64) -> Self {
        Self {
            group_id: group_id.into(),
            config,
            member_id_seed,
            next_member_number: 0,
            next_join_seq: 0,
            phase: GroupPhase::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            rebalance: None,
            new_member_added: false,
            offsets: BTreeMap::new(),
        }
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The current state.
    pub fn phase(&self) -> GroupPhase {
        self.phase
    }

    /// The current generation.
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    /// The leader's member id, if the group has members.
    pub fn leader_id(&self) -> Option<&str> {
        self.leader_id.as_deref()
    }

    /// How many members the group holds (not counting ids awaiting their first rejoin).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The longest session timeout of the group's members (0 with none): how long they have to
    /// find a coordinator that takes over.
    pub fn longest_session_timeout_ms(&self) -> i32 {
        self.members.values().map(|member| member.session_timeout_ms).max().unwrap_or(0)
    }

    /// Handles a JoinGroup request; its reply may come now or when the join phase completes.
    pub fn join(&mut self, request: JoinRequest, now_ms: i64, reply: ReplyToken) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance(now_ms, &mut out);
        self.handle_join(request, now_ms, reply, &mut out);
        out
    }

    /// Handles a SyncGroup request; followers' replies wait for the leader's assignment.
    pub fn sync(&mut self, request: SyncRequest, now_ms: i64, reply: ReplyToken) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance(now_ms, &mut out);
        self.handle_sync(request, now_ms, reply, &mut out);
        out
    }

    /// Handles a Heartbeat request; it is answered at once.
    pub fn heartbeat(&mut self, member_id: &str, generation_id: i32, now_ms: i64, reply: ReplyToken) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance(now_ms, &mut out);
        let error = self.handle_heartbeat(member_id, generation_id, now_ms);
        out.push(Output::Reply(reply, Response::Heartbeat(HeartbeatResponse { error })));
        out
    }

    /// Handles a LeaveGroup request; it is answered at once and may start a rebalance.
    pub fn leave(&mut self, members: Vec<LeaveMember>, now_ms: i64, reply: ReplyToken) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance(now_ms, &mut out);
        let response = self.handle_leave(members, now_ms, &mut out);
        out.push(Output::Reply(reply, Response::Leave(response)));
        out
    }

    /// Fires every deadline up to `now_ms` (session, sync, rebalance and pending-member timeouts).
    pub fn tick(&mut self, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        self.advance(now_ms, &mut out);
        out
    }

    /// The earliest time at which [`GroupState::tick`] has work to do.
    pub fn next_deadline(&self) -> Option<i64> {
        self.earliest_timer().map(|(deadline, _)| deadline)
    }

    /// Marks the group Dead because this node no longer coordinates it; pending requests get NOT_COORDINATOR.
    pub fn unload(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        for member in std::mem::take(&mut self.members).into_values() {
            answer_removed(&mut out, member, ErrorCode::NotCoordinator);
        }
        self.phase = GroupPhase::Dead;
        self.pending_members.clear();
        self.rebalance = None;
        self.leader_id = None;
        out
    }

    /// Answers DescribeGroups for this group.
    pub fn describe(&self) -> GroupDescription {
        let stable = self.phase == GroupPhase::Stable;
        let protocol = if stable { self.protocol_name.clone().unwrap_or_default() } else { String::new() };
        let members = self
            .members_by_age()
            .into_iter()
            .map(|(member_id, member)| MemberDescription {
                member_id: member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                metadata: if stable { member.metadata_for(&protocol) } else { Bytes::new() },
                assignment: if stable { member.assignment.clone() } else { Bytes::new() },
            })
            .collect();
        GroupDescription {
            group_id: self.group_id.clone(),
            state: self.phase.as_str(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        }
    }

    /// Answers ListGroups for this group.
    pub fn list_entry(&self) -> GroupListing {
        GroupListing {
            group_id: self.group_id.clone(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            state: self.phase.as_str(),
        }
    }

    /// Checks the state machine's internal invariants; the error names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let pending_join = self.members.values().any(|m| m.pending_join.is_some());
        let pending_sync = self.members.values().any(|m| m.pending_sync.is_some());
        if pending_join && self.phase != GroupPhase::PreparingRebalance {
            return Err(format!("pending join outside PreparingRebalance (state {})", self.phase.as_str()));
        }
        if pending_sync && self.phase != GroupPhase::CompletingRebalance {
            return Err(format!("pending sync outside CompletingRebalance (state {})", self.phase.as_str()));
        }
        if self.rebalance.is_some() != (self.phase == GroupPhase::PreparingRebalance) {
            return Err(format!("rebalance timer set in state {}", self.phase.as_str()));
        }
        match &self.leader_id {
            Some(leader) if !self.members.contains_key(leader) => return Err(format!("leader {leader} is no member")),
            None if !self.members.is_empty() => return Err("group has members but no leader".to_owned()),
            _ => {}
        }
        match self.phase {
            GroupPhase::Empty | GroupPhase::Dead if !self.members.is_empty() => {
                Err(format!("state {} with members", self.phase.as_str()))
            }
            GroupPhase::CompletingRebalance | GroupPhase::Stable if self.protocol_name.is_none() => {
                Err("active generation without a protocol".to_owned())
            }
            GroupPhase::CompletingRebalance | GroupPhase::Stable if self.members.is_empty() => {
                Err(format!("state {} without members", self.phase.as_str()))
            }
            GroupPhase::Stable => {
                match self.members.iter().find(|(_, m)| m.assignment_generation != self.generation_id) {
                    Some((id, m)) => Err(format!(
                        "stable member {id} holds an assignment of generation {} not {}",
                        m.assignment_generation, self.generation_id
                    )),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn handle_join(&mut self, request: JoinRequest, now_ms: i64, reply: ReplyToken, out: &mut Vec<Output>) {
        if self.phase == GroupPhase::Dead {
            return join_error(out, reply, request.member_id, ErrorCode::CoordinatorNotAvailable);
        }
        if request.session_timeout_ms < self.config.min_session_timeout_ms
            || request.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return join_error(out, reply, request.member_id, ErrorCode::InvalidSessionTimeout);
        }
        let mut request = request;
        request.protocols = dedup_protocols(std::mem::take(&mut request.protocols));
        if request.member_id.is_empty() {
            self.join_new_member(request, now_ms, reply, out);
        } else if self.pending_members.contains_key(&request.member_id) {
            if !self.supports_protocols(None, &request.protocol_type, &request.protocols) {
                return join_error(out, reply, request.member_id, ErrorCode::InconsistentGroupProtocol);
            }
            if self.members.len() >= self.config.max_size {
                return join_error(out, reply, request.member_id, ErrorCode::GroupMaxSizeReached);
            }
            self.pending_members.remove(&request.member_id);
            let member_id = request.member_id.clone();
            self.add_member_and_rebalance(member_id, request, now_ms, reply, out);
        } else {
            self.join_current_member(request, now_ms, reply, out);
        }
    }

    fn join_new_member(&mut self, request: JoinRequest, now_ms: i64, reply: ReplyToken, out: &mut Vec<Output>) {
        let fenced = request.group_instance_id.as_deref().and_then(|id| self.static_member(id));
        if !self.supports_protocols(fenced.as_deref(), &request.protocol_type, &request.protocols) {
            return join_error(out, reply, String::new(), ErrorCode::InconsistentGroupProtocol);
        }
        if fenced.is_none() && self.members.len() + self.pending_members.len() >= self.config.max_size {
            return join_error(out, reply, String::new(), ErrorCode::GroupMaxSizeReached);
        }
        let member_id = self.generate_member_id(&request.client_id);
        if let Some(old_member_id) = fenced {
            // A static member restarted: the new incarnation replaces (fences) the old one.
            self.remove_member(&old_member_id, ErrorCode::FencedInstanceId, out);
        } else if request.group_instance_id.is_none() && request.api_version >= 4 {
            // KIP-394: hand out the id and wait for the member to come back with it.
            let deadline = now_ms + i64::from(request.session_timeout_ms);
            self.pending_members.insert(member_id.clone(), deadline);
            return join_error(out, reply, member_id, ErrorCode::MemberIdRequired);
        }
        self.add_member_and_rebalance(member_id, request, now_ms, reply, out);
    }

    fn join_current_member(&mut self, request: JoinRequest, now_ms: i64, reply: ReplyToken, out: &mut Vec<Output>) {
        let member_id = request.member_id.clone();
        if let Err(error) = self.validate_current_member(&member_id, request.group_instance_id.as_deref()) {
            return join_error(out, reply, member_id, error);
        }
        if !self.supports_protocols(Some(&member_id), &request.protocol_type, &request.protocols) {
            return join_error(out, reply, member_id, ErrorCode::InconsistentGroupProtocol);
        }
        let Some(member) = self.members.get_mut(&member_id) else {
            return join_error(out, reply, member_id, ErrorCode::UnknownMemberId);
        };
        let unchanged = member.protocols == request.protocols;
        let is_leader = self.leader_id.as_deref() == Some(member_id.as_str());
        let resend_current = match self.phase {
            // The member lost its JoinGroup response: hand it the current generation again.
            GroupPhase::CompletingRebalance => unchanged,
            GroupPhase::Stable => unchanged && !is_leader,
            _ => false,
        };
        if resend_current {
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            let response = self.current_join_response(&member_id, is_leader);
            return out.push(Output::Reply(reply, Response::Join(response)));
        }
        match self.phase {
            GroupPhase::PreparingRebalance => {
                self.update_member(request, now_ms, reply, out);
                self.try_complete_join(now_ms, out);
            }
            // Changed metadata, or the leader asking for a new assignment, forces a rebalance.
            GroupPhase::CompletingRebalance | GroupPhase::Stable => {
                self.update_member(request, now_ms, reply, out);
                self.prepare_rebalance(now_ms, out);
            }
            GroupPhase::Empty | GroupPhase::Dead => join_error(out, reply, member_id, ErrorCode::UnknownMemberId),
        }
    }

    fn handle_sync(&mut self, request: SyncRequest, now_ms: i64, reply: ReplyToken, out: &mut Vec<Output>) {
        let error = if self.phase == GroupPhase::Dead {
            Some(ErrorCode::CoordinatorNotAvailable)
        } else if !self.members.contains_key(&request.member_id) {
            Some(ErrorCode::UnknownMemberId)
        } else if request.generation_id != self.generation_id {
            Some(ErrorCode::IllegalGeneration)
        } else if self.phase == GroupPhase::PreparingRebalance {
            Some(ErrorCode::RebalanceInProgress)
        } else {
            None
        };
        if let Some(error) = error {
            return sync_reply(out, reply, error, None, None, Bytes::new());
        }
        let Some(member) = self.members.get_mut(&request.member_id) else { return };
        member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        member.sync_deadline_ms = None;
        match self.phase {
            GroupPhase::CompletingRebalance => {
                if let Some(superseded) = member.pending_sync.replace(reply) {
                    sync_reply(out, superseded, ErrorCode::RebalanceInProgress, None, None, Bytes::new());
                }
                if self.leader_id.as_deref() == Some(request.member_id.as_str()) {
                    self.complete_sync(request.assignments, now_ms, out);
                }
            }
            GroupPhase::Stable => {
                let assignment = member.assignment.clone();
                let (protocol_type, protocol_name) = (self.protocol_type.clone(), self.protocol_name.clone());
                sync_reply(out, reply, ErrorCode::NoError, protocol_type, protocol_name, assignment);
            }
            GroupPhase::Empty | GroupPhase::PreparingRebalance | GroupPhase::Dead => {
                sync_reply(out, reply, ErrorCode::UnknownMemberId, None, None, Bytes::new());
            }
        }
    }

    /// The leader's assignment arrived: give every member its part and become Stable.
    fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>, now_ms: i64, out: &mut Vec<Output>) {
        let mut assignments: BTreeMap<String, Bytes> = assignments.into_iter().collect();
        let (protocol_type, protocol_name) = (self.protocol_type.clone(), self.protocol_name.clone());
        let generation_id = self.generation_id;
        for (member_id, member) in self.members_by_age_mut() {
            member.assignment = assignments.remove(member_id).unwrap_or_default();
            member.assignment_generation = generation_id;
            if let Some(token) = member.pending_sync.take() {
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                let assignment = member.assignment.clone();
                sync_reply(out, token, ErrorCode::NoError, protocol_type.clone(), protocol_name.clone(), assignment);
            }
        }
        self.phase = GroupPhase::Stable;
    }

    fn handle_heartbeat(&mut self, member_id: &str, generation_id: i32, now_ms: i64) -> ErrorCode {
        if self.phase == GroupPhase::Dead {
            return ErrorCode::CoordinatorNotAvailable;
        }
        let Some(member) = self.members.get_mut(member_id) else { return ErrorCode::UnknownMemberId };
        if generation_id != self.generation_id {
            return ErrorCode::IllegalGeneration;
        }
        member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        match self.phase {
            GroupPhase::PreparingRebalance => ErrorCode::RebalanceInProgress,
            GroupPhase::CompletingRebalance | GroupPhase::Stable => ErrorCode::NoError,
            GroupPhase::Empty | GroupPhase::Dead => ErrorCode::UnknownMemberId,
        }
    }

    fn handle_leave(&mut self, members: Vec<LeaveMember>, now_ms: i64, out: &mut Vec<Output>) -> LeaveResponse {
        if self.phase == GroupPhase::Dead {
            return LeaveResponse { error: ErrorCode::CoordinatorNotAvailable, members: Vec::new() };
        }
        let (mut removed_member, mut removed_pending) = (false, false);
        let results = members
            .into_iter()
            .map(|leaving| {
                let error = if leaving.member_id.is_empty() {
                    // Administrative removal by instance id.
                    match leaving.group_instance_id.as_deref().and_then(|id| self.static_member(id)) {
                        Some(member_id) => {
                            removed_member |= self.remove_member(&member_id, ErrorCode::UnknownMemberId, out);
                            ErrorCode::NoError
                        }
                        None => ErrorCode::UnknownMemberId,
                    }
                } else if self.pending_members.remove(&leaving.member_id).is_some() {
                    removed_pending = true;
                    ErrorCode::NoError
                } else {
                    match self.validate_current_member(&leaving.member_id, leaving.group_instance_id.as_deref()) {
                        Ok(()) => {
                            removed_member |= self.remove_member(&leaving.member_id, ErrorCode::UnknownMemberId, out);
                            ErrorCode::NoError
                        }
                        Err(error) => error,
                    }
                };
                LeaveMemberResult { member_id: leaving.member_id, group_instance_id: leaving.group_instance_id, error }
            })
            .collect();
        if removed_member {
            self.after_member_removal(now_ms, out);
        } else if removed_pending {
            self.try_complete_join(now_ms, out);
        }
        LeaveResponse { error: ErrorCode::NoError, members: results }
    }

    /// Kafka's `validateCurrentMember`: an instance id must map to this very member id.
    fn validate_current_member(&self, member_id: &str, group_instance_id: Option<&str>) -> Result<(), ErrorCode> {
        if let Some(instance_id) = group_instance_id {
            match self.static_member(instance_id) {
                Some(current) if current != member_id => return Err(ErrorCode::FencedInstanceId),
                Some(_) => {}
                None => return Err(ErrorCode::UnknownMemberId),
            }
        }
        if self.members.contains_key(member_id) { Ok(()) } else { Err(ErrorCode::UnknownMemberId) }
    }

    /// Whether a member (`existing`, or a new one) with these protocols can be in the group: the type
    /// must match and one protocol must be supported by every other member.
    fn supports_protocols(&self, existing: Option<&str>, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let mut others = self.members.iter().filter(|(id, _)| Some(id.as_str()) != existing).peekable();
        if others.peek().is_none() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let others: Vec<&Member> = others.map(|(_, m)| m).collect();
        protocols.iter().any(|(name, _)| others.iter().all(|m| m.supports(name)))
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        request: JoinRequest,
        now_ms: i64,
        reply: ReplyToken,
        out: &mut Vec<Output>,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if self.phase == GroupPhase::PreparingRebalance && self.generation_id == 0 {
            self.new_member_added = true;
        }
        let join_seq = self.next_join_seq;
        self.next_join_seq += 1;
        let member = Member {
            group_instance_id: request.group_instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: effective_rebalance_timeout(request.rebalance_timeout_ms, request.session_timeout_ms),
            protocols: request.protocols,
            assignment: Bytes::new(),
            assignment_generation: -1,
            join_seq,
            pending_join: Some(reply),
            pending_sync: None,
            session_deadline_ms: now_ms + i64::from(request.session_timeout_ms),
            sync_deadline_ms: None,
        };
        if self.leader_id.is_none() {
            self.leader_id = Some(member_id.clone());
        }
        self.members.insert(member_id, member);
        match self.phase {
            GroupPhase::PreparingRebalance => self.try_complete_join(now_ms, out),
            GroupPhase::Empty | GroupPhase::CompletingRebalance | GroupPhase::Stable => {
                self.prepare_rebalance(now_ms, out);
            }
            GroupPhase::Dead => {}
        }
    }

    /// Records a rejoin of a known member; an older join still pending for it is answered first.
    fn update_member(&mut self, request: JoinRequest, now_ms: i64, reply: ReplyToken, out: &mut Vec<Output>) {
        let Some(member) = self.members.get_mut(&request.member_id) else { return };
        if let Some(superseded) = member.pending_join.replace(reply) {
            join_error(out, superseded, request.member_id.clone(), ErrorCode::RebalanceInProgress);
        }
        if self.members.len() == 1 {
            self.protocol_type = Some(request.protocol_type);
        }
        let Some(member) = self.members.get_mut(&request.member_id) else { return };
        member.protocols = request.protocols;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms =
            effective_rebalance_timeout(request.rebalance_timeout_ms, request.session_timeout_ms);
        member.session_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
    }

    /// Starts a join phase: pending syncs are told to rejoin, and the rebalance timer is armed.
    fn prepare_rebalance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let completing = self.phase == GroupPhase::CompletingRebalance;
        for member in self.members.values_mut() {
            member.sync_deadline_ms = None;
            if completing {
                member.assignment = Bytes::new();
            }
            if let Some(token) = member.pending_sync.take() {
                // As Kafka does, the session restarts when a waiting member gets its answer.
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                sync_reply(out, token, ErrorCode::RebalanceInProgress, None, None, Bytes::new());
            }
        }
        let rebalance_timeout = i64::from(self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0));
        let delay = i64::from(self.config.initial_rebalance_delay_ms);
        let was_empty = self.phase == GroupPhase::Empty;
        self.phase = GroupPhase::PreparingRebalance;
        if was_empty && delay > 0 {
            self.rebalance = Some(RebalanceTimer {
                deadline_ms: now_ms + delay,
                initial_remaining_ms: Some((rebalance_timeout - delay).max(0)),
            });
        } else {
            self.rebalance =
                Some(RebalanceTimer { deadline_ms: now_ms + rebalance_timeout, initial_remaining_ms: None });
            self.try_complete_join(now_ms, out);
        }
    }

    /// Completes the join phase early once every member has rejoined (not during the initial delay).
    fn try_complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let Some(timer) = self.rebalance else { return };
        if self.phase == GroupPhase::PreparingRebalance
            && timer.initial_remaining_ms.is_none()
            && self.pending_members.is_empty()
            && self.members.values().all(|m| m.pending_join.is_some())
        {
            self.complete_join(now_ms, out);
        }
    }

    /// Ends the join phase: drops members that did not rejoin, starts the next generation, answers the joins.
    fn complete_join(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let absent: Vec<String> =
            self.members.iter().filter(|(_, m)| m.pending_join.is_none()).map(|(id, _)| id.clone()).collect();
        for member_id in absent {
            self.remove_member(&member_id, ErrorCode::UnknownMemberId, out);
        }
        self.rebalance = None;
        self.new_member_added = false;
        self.generation_id = self.generation_id.saturating_add(1);
        if self.members.is_empty() {
            self.phase = GroupPhase::Empty;
            self.protocol_name = None;
            self.leader_id = None;
            return;
        }
        let leader = match self.leader_id.clone().filter(|id| self.members.contains_key(id)) {
            Some(leader) => leader,
            None => self.elect_leader().unwrap_or_default(),
        };
        self.leader_id = Some(leader.clone());
        let protocol = self.select_protocol(&leader);
        self.protocol_name = Some(protocol.clone());
        self.phase = GroupPhase::CompletingRebalance;
        let leader_view: Vec<JoinedMember> = self
            .members_by_age()
            .into_iter()
            .map(|(member_id, member)| JoinedMember {
                member_id: member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                metadata: member.metadata_for(&protocol),
            })
            .collect();
        let (generation_id, protocol_type) = (self.generation_id, self.protocol_type.clone());
        for (member_id, member) in self.members_by_age_mut() {
            member.assignment = Bytes::new();
            member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            member.sync_deadline_ms = Some(now_ms + i64::from(member.session_timeout_ms));
            if let Some(token) = member.pending_join.take() {
                let response = JoinResponse {
                    error: ErrorCode::NoError,
                    generation_id,
                    protocol_type: protocol_type.clone(),
                    protocol_name: Some(protocol.clone()),
                    leader: leader.clone(),
                    member_id: member_id.clone(),
                    members: if *member_id == leader { leader_view.clone() } else { Vec::new() },
                };
                out.push(Output::Reply(token, Response::Join(response)));
            }
        }
    }

    /// The JoinGroup answer for the current generation, for a member that rejoins without changes.
    fn current_join_response(&self, member_id: &str, is_leader: bool) -> JoinResponse {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if is_leader {
            self.members_by_age()
                .into_iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: ErrorCode::NoError,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members,
        }
    }

    /// Kafka's vote: each member votes for its most preferred protocol that all members support; ties go
    /// to the leader's preference.
    fn select_protocol(&self, leader: &str) -> String {
        let Some(leader_member) = self.members.get(leader) else { return String::new() };
        let candidates: Vec<&str> = leader_member
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for member in self.members.values() {
            if let Some(index) = member.protocols.iter().find_map(|(name, _)| candidates.iter().position(|c| c == name))
            {
                votes[index] += 1;
            }
        }
        let best = votes.iter().enumerate().max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia))).map(|(i, _)| i);
        match best {
            Some(index) => candidates[index].to_owned(),
            // Unreachable while joins are validated; fall back to the leader's first choice.
            None => leader_member.protocols.first().map(|(name, _)| name.clone()).unwrap_or_default(),
        }
    }

    /// Removes a member and answers its pending requests; returns whether it was a member.
    fn remove_member(&mut self, member_id: &str, error: ErrorCode, out: &mut Vec<Output>) -> bool {
        let Some(member) = self.members.remove(member_id) else { return false };
        answer_removed(out, member, error);
        if self.leader_id.as_deref() == Some(member_id) {
            self.leader_id = self.elect_leader();
        }
        true
    }

    /// Moves the group on after members were removed.
    fn after_member_removal(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        match self.phase {
            GroupPhase::Stable | GroupPhase::CompletingRebalance => self.prepare_rebalance(now_ms, out),
            GroupPhase::PreparingRebalance => self.try_complete_join(now_ms, out),
            GroupPhase::Empty | GroupPhase::Dead => {}
        }
    }

    /// The oldest member that is rejoining, else the oldest member.
    fn elect_leader(&self) -> Option<String> {
        let oldest = |rejoining: bool| {
            self.members
                .iter()
                .filter(|(_, m)| !rejoining || m.pending_join.is_some())
                .min_by_key(|(_, m)| m.join_seq)
                .map(|(id, _)| id.clone())
        };
        oldest(true).or_else(|| oldest(false))
    }

    fn static_member(&self, group_instance_id: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.group_instance_id.as_deref() == Some(group_instance_id))
            .map(|(id, _)| id.clone())
    }

    fn generate_member_id(&mut self, client_id: &str) -> String {
        let number = self.next_member_number;
        self.next_member_number += 1;
        format!("{client_id}-{:016x}-{number}", self.member_id_seed)
    }

    fn members_by_age(&self) -> Vec<(&String, &Member)> {
        let mut members: Vec<_> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.join_seq);
        members
    }

    fn members_by_age_mut(&mut self) -> Vec<(&String, &mut Member)> {
        let mut members: Vec<_> = self.members.iter_mut().collect();
        members.sort_by_key(|(_, m)| m.join_seq);
        members
    }

    /// The earliest armed deadline; ties go to the rebalance timer, then member ids in order.
    fn earliest_timer(&self) -> Option<(i64, Timer)> {
        if self.phase == GroupPhase::Dead {
            return None;
        }
        let mut best: Option<(i64, Timer)> = self.rebalance.map(|t| (t.deadline_ms, Timer::Rebalance));
        let mut consider = |deadline: i64, timer: &dyn Fn() -> Timer| {
            if best.as_ref().is_none_or(|(current, _)| deadline < *current) {
                best = Some((deadline, timer()));
            }
        };
        for (member_id, member) in &self.members {
            if let Some(deadline) = member.session_deadline() {
                consider(deadline, &|| Timer::Session(member_id.clone()));
            }
            if let Some(deadline) = member.sync_deadline_ms.filter(|_| member.pending_sync.is_none()) {
                consider(deadline, &|| Timer::Sync(member_id.clone()));
            }
        }
        for (member_id, deadline) in &self.pending_members {
            consider(*deadline, &|| Timer::Pending(member_id.clone()));
        }
        best
    }

    /// Fires every deadline due by `now_ms`, each at its own time, so a late tick acts as a punctual one.
    /// Each firing removes a member or a pending id, ends the join phase, or shortens the initial delay's
    /// remaining budget, so the loop ends.
    fn advance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        while let Some((due, timer)) = self.earliest_timer() {
            if due > now_ms {
                break;
            }
            self.fire(timer, due, out);
        }
    }

    fn fire(&mut self, timer: Timer, due: i64, out: &mut Vec<Output>) {
        match timer {
            Timer::Rebalance => {
                let Some(current) = self.rebalance else { return };
                match current.initial_remaining_ms {
                    Some(remaining) if self.new_member_added && remaining > 0 => {
                        // Members arrived during the initial delay: wait once more for stragglers.
                        self.new_member_added = false;
                        let delay = i64::from(self.config.initial_rebalance_delay_ms).clamp(1, remaining);
                        self.rebalance = Some(RebalanceTimer {
                            deadline_ms: due + delay,
                            initial_remaining_ms: Some(remaining - delay),
                        });
                    }
                    _ => self.complete_join(due, out),
                }
            }
            Timer::Session(member_id) | Timer::Sync(member_id) => {
                if self.remove_member(&member_id, ErrorCode::UnknownMemberId, out) {
                    self.after_member_removal(due, out);
                }
            }
            Timer::Pending(member_id) => {
                self.pending_members.remove(&member_id);
                self.try_complete_join(due, out);
            }
        }
    }
}

/// Answers the pending requests of a member that is gone.
fn answer_removed(out: &mut Vec<Output>, member: Member, error: ErrorCode) {
    if let Some(token) = member.pending_join {
        join_error(out, token, String::new(), error);
    }
    if let Some(token) = member.pending_sync {
        sync_reply(out, token, error, None, None, Bytes::new());
    }
}

fn join_error(out: &mut Vec<Output>, reply: ReplyToken, member_id: String, error: ErrorCode) {
    let response = JoinResponse {
        error,
        generation_id: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id,
        members: Vec::new(),
    };
    out.push(Output::Reply(reply, Response::Join(response)));
}

fn sync_reply(
    out: &mut Vec<Output>,
    reply: ReplyToken,
    error: ErrorCode,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    assignment: Bytes,
) {
    let response = SyncResponse { error, protocol_type, protocol_name, assignment };
    out.push(Output::Reply(reply, Response::Sync(response)));
}

/// Keeps the first occurrence of each protocol name.
fn dedup_protocols(protocols: Vec<(String, Bytes)>) -> Vec<(String, Bytes)> {
    let mut unique: Vec<(String, Bytes)> = Vec::with_capacity(protocols.len());
    for (name, metadata) in protocols {
        if !unique.iter().any(|(seen, _)| *seen == name) {
            unique.push((name, metadata));
        }
    }
    unique
}

/// JoinGroup v0 has no rebalance timeout: Kafka uses the session timeout, and so do we for negative values.
fn effective_rebalance_timeout(rebalance_timeout_ms: i32, session_timeout_ms: i32) -> i32 {
    if rebalance_timeout_ms < 0 { session_timeout_ms } else { rebalance_timeout_ms }
}

#[cfg(test)]
#[path = "group_state_tests.rs"]
mod tests;
