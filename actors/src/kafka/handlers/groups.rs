//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups and ListGroups, answered by the group's
//! `GroupCoordinator` actor on this node. In a cluster a group is coordinated by the node
//! whose replica leads its partition of the offsets stream ([`group_place`]): FindCoordinator
//! names it, and every other node answers `NOT_COORDINATOR`.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatResponse,
    JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse, OffsetCommitResponse, OffsetFetchResponse, RequestKind,
    ResponseKind, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ractor::call_t;

use crate::acl::{Operation, Resource};
use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::group::GroupMsg;
use crate::kafka::group_place::{self, GroupUnavailable};
use crate::kafka::group_state::{FetchedOffset, JoinRequest, LeaveMember, OffsetCommitEntry, SyncRequest};
use crate::kafka::handlers::Caller;

const CALL_MS: u64 = 10_000;
/// An OffsetCommit waits for the offsets to be stored (in a cluster: committed by raft).
const COMMIT_CALL_MS: u64 = 15_000;

fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// Routes a group API; `None` for an API this module does not serve.
pub async fn dispatch(
    ctx: &NodeContext,
    body: RequestKind,
    version: i16,
    client_id: &str,
    caller: &Caller,
) -> Option<ResponseKind> {
    let client_host = caller.host.to_string();
    let client_host = client_host.as_str();
    Some(match body {
        RequestKind::FindCoordinator(request) => {
            ResponseKind::FindCoordinator(find_coordinator(ctx, request, version, caller).await)
        }
        RequestKind::JoinGroup(request) => {
            let group = request.group_id.0.to_string();
            let join = JoinRequest {
                member_id: request.member_id.to_string(),
                group_instance_id: request.group_instance_id.map(|i| i.to_string()),
                client_id: client_id.to_string(),
                client_host: client_host.to_string(),
                session_timeout_ms: request.session_timeout_ms,
                // v0 has no rebalance timeout: it is the session timeout
                rebalance_timeout_ms: if version == 0 {
                    request.session_timeout_ms
                } else {
                    request.rebalance_timeout_ms
                },
                protocol_type: request.protocol_type.to_string(),
                protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
                api_version: version,
            };
            let wait = join.rebalance_timeout_ms.max(0) as u64 + CALL_MS;
            let failed = |code| {
                JoinGroupResponse::default()
                    .with_error_code(code)
                    .with_generation_id(-1)
                    .with_member_id(s(join.member_id.clone()))
            };
            let response = match coordinator(ctx, caller, Operation::Read, &group, true).await {
                Ok(actor) => match call_t!(actor, GroupMsg::Join, wait, join.clone()) {
                    Ok(r) => JoinGroupResponse::default()
                        .with_error_code(r.error.code())
                        .with_generation_id(r.generation_id)
                        .with_protocol_type(if version >= 7 { r.protocol_type.map(s) } else { None })
                        .with_protocol_name(r.protocol_name.map(s))
                        .with_leader(s(r.leader))
                        .with_member_id(s(r.member_id))
                        .with_members(
                            r.members
                                .into_iter()
                                .map(|m| {
                                    JoinGroupResponseMember::default()
                                        .with_member_id(s(m.member_id))
                                        .with_group_instance_id(if version >= 5 {
                                            m.group_instance_id.map(s)
                                        } else {
                                            None
                                        })
                                        .with_metadata(m.metadata)
                                })
                                .collect(),
                        ),
                    Err(_) => failed(codes::COORDINATOR_NOT_AVAILABLE),
                },
                Err(unavailable) => failed(unavailable.code()),
            };
            ResponseKind::JoinGroup(response)
        }
        RequestKind::SyncGroup(request) => {
            let group = request.group_id.0.to_string();
            let sync = SyncRequest {
                member_id: request.member_id.to_string(),
                generation_id: request.generation_id,
                assignments: request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect(),
            };
            let failed = SyncGroupResponse::default().with_error_code(codes::COORDINATOR_NOT_AVAILABLE);
            // a follower waits for the leader: up to a (long) rebalance
            let response = match coordinator(ctx, caller, Operation::Read, &group, false).await {
                Ok(actor) => match call_t!(actor, GroupMsg::Sync, 300_000 + CALL_MS, sync) {
                    Ok(r) => SyncGroupResponse::default()
                        .with_error_code(r.error.code())
                        .with_protocol_type(if version >= 5 { r.protocol_type.map(s) } else { None })
                        .with_protocol_name(if version >= 5 { r.protocol_name.map(s) } else { None })
                        .with_assignment(r.assignment),
                    Err(_) => failed,
                },
                Err(unavailable) => SyncGroupResponse::default().with_error_code(unavailable.code()),
            };
            ResponseKind::SyncGroup(response)
        }
        RequestKind::Heartbeat(request) => {
            let group = request.group_id.0.to_string();
            let code = match coordinator(ctx, caller, Operation::Read, &group, false).await {
                Ok(actor) => {
                    match call_t!(
                        actor,
                        GroupMsg::Heartbeat,
                        CALL_MS,
                        request.member_id.to_string(),
                        request.generation_id
                    ) {
                        Ok(r) => r.error.code(),
                        Err(_) => codes::COORDINATOR_NOT_AVAILABLE,
                    }
                }
                Err(unavailable) => unavailable.code(),
            };
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code))
        }
        RequestKind::LeaveGroup(request) => {
            let group = request.group_id.0.to_string();
            let mut members: Vec<LeaveMember> = request
                .members
                .iter()
                .map(|m| LeaveMember {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                })
                .collect();
            if members.is_empty() {
                members.push(LeaveMember { member_id: request.member_id.to_string(), group_instance_id: None });
            }
            let response = match coordinator(ctx, caller, Operation::Read, &group, false).await {
                Ok(actor) => match call_t!(actor, GroupMsg::Leave, CALL_MS, members) {
                    Ok(r) => {
                        let mut response = LeaveGroupResponse::default().with_error_code(r.error.code());
                        if version >= 3 {
                            response = response.with_members(
                                r.members
                                    .into_iter()
                                    .map(|m| {
                                        MemberResponse::default()
                                            .with_member_id(s(m.member_id))
                                            .with_group_instance_id(m.group_instance_id.map(s))
                                            .with_error_code(m.error.code())
                                    })
                                    .collect(),
                            );
                        } else if let Some(first) = r.members.first()
                            && r.error.code() == codes::NONE
                        {
                            response = response.with_error_code(first.error.code());
                        }
                        response
                    }
                    Err(_) => LeaveGroupResponse::default().with_error_code(codes::COORDINATOR_NOT_AVAILABLE),
                },
                Err(unavailable) => LeaveGroupResponse::default().with_error_code(unavailable.code()),
            };
            ResponseKind::LeaveGroup(response)
        }
        RequestKind::OffsetCommit(request) => {
            let group = request.group_id.0.to_string();
            let mut entries = Vec::new();
            // (topic, partition) of the request that name no partition of a stream
            let mut unknown = std::collections::BTreeSet::new();
            // topics the caller may not read: their offsets are not committed
            let mut refused = std::collections::BTreeSet::new();
            for topic in &request.topics {
                if !caller.may(ctx, Operation::Read, Resource::Topic(topic.name.0.as_str())) {
                    refused.insert(topic.name.0.to_string());
                    continue;
                }
                let partitions = ctx.streams.get(topic.name.0.as_str()).map_or(0, |stream| stream.partitions.len());
                for p in &topic.partitions {
                    if p.partition_index < 0 || p.partition_index as usize >= partitions {
                        unknown.insert((topic.name.0.to_string(), p.partition_index));
                        continue;
                    }
                    entries.push(OffsetCommitEntry {
                        topic: topic.name.0.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    });
                }
            }
            let results = match coordinator(ctx, caller, Operation::Read, &group, true).await {
                Ok(actor) => call_t!(
                    actor,
                    GroupMsg::Commit,
                    COMMIT_CALL_MS,
                    request.member_id.to_string(),
                    request.generation_id_or_member_epoch,
                    entries
                )
                .map_err(|_| codes::COORDINATOR_NOT_AVAILABLE),
                Err(unavailable) => Err(unavailable.code()),
            };
            let topics = request
                .topics
                .into_iter()
                .map(|topic| {
                    let name = topic.name.0.to_string();
                    let partitions = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            let code = match &results {
                                _ if refused.contains(&name) => codes::TOPIC_AUTHORIZATION_FAILED,
                                _ if unknown.contains(&(name.clone(), p.partition_index)) => {
                                    codes::UNKNOWN_TOPIC_OR_PARTITION
                                }
                                Ok(results) => results
                                    .iter()
                                    .find(|r| r.topic == name && r.partition == p.partition_index)
                                    .map_or(codes::NONE, |r| r.error.code()),
                                Err(code) => *code,
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetCommitResponseTopic::default().with_name(topic.name).with_partitions(partitions)
                })
                .collect();
            ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
        }
        RequestKind::OffsetFetch(request) => {
            if version >= 8 {
                let mut groups = Vec::with_capacity(request.groups.len());
                for wanted in request.groups {
                    let partitions = wanted.topics.as_ref().map(|topics| {
                        topics
                            .iter()
                            .flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.0.to_string(), *p)))
                            .collect()
                    });
                    let (fetched, code) = match fetch_offsets(ctx, caller, wanted.group_id.0.as_str(), partitions).await
                    {
                        Ok(fetched) => (fetched, codes::NONE),
                        Err(code) => (Vec::new(), code),
                    };
                    let topics = group_by_topic(fetched)
                        .into_iter()
                        .map(|(topic, offsets)| {
                            OffsetFetchResponseTopics::default().with_name(TopicName(s(topic))).with_partitions(
                                offsets
                                    .into_iter()
                                    .map(|o| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(o.partition)
                                            .with_committed_offset(o.offset)
                                            .with_committed_leader_epoch(o.leader_epoch)
                                            .with_metadata(Some(s(o.metadata)))
                                    })
                                    .collect(),
                            )
                        })
                        .collect();
                    groups.push(
                        OffsetFetchResponseGroup::default()
                            .with_group_id(wanted.group_id)
                            .with_topics(topics)
                            .with_error_code(code),
                    );
                }
                ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_groups(groups))
            } else {
                let partitions = request.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.0.to_string(), *p)))
                        .collect()
                });
                let (fetched, code) = match fetch_offsets(ctx, caller, request.group_id.0.as_str(), partitions).await {
                    Ok(fetched) => (fetched, codes::NONE),
                    Err(code) => (Vec::new(), code),
                };
                let topics = group_by_topic(fetched)
                    .into_iter()
                    .map(|(topic, offsets)| {
                        OffsetFetchResponseTopic::default().with_name(TopicName(s(topic))).with_partitions(
                            offsets
                                .into_iter()
                                .map(|o| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(o.partition)
                                        .with_committed_offset(o.offset)
                                        .with_committed_leader_epoch(if version >= 5 { o.leader_epoch } else { -1 })
                                        .with_metadata(Some(s(o.metadata)))
                                })
                                .collect(),
                        )
                    })
                    .collect();
                // v0 and v1 have no top-level error: a client learns of a moved coordinator from
                // its next group request
                let response = OffsetFetchResponse::default().with_topics(topics);
                ResponseKind::OffsetFetch(if version >= 2 { response.with_error_code(code) } else { response })
            }
        }
        RequestKind::DescribeGroups(request) => {
            let mut groups = Vec::with_capacity(request.groups.len());
            for group_id in request.groups {
                let described = match coordinator(ctx, caller, Operation::Describe, group_id.0.as_str(), false).await {
                    Ok(actor) => {
                        call_t!(actor, GroupMsg::Describe, CALL_MS).map_err(|_| codes::COORDINATOR_NOT_AVAILABLE)
                    }
                    Err(unavailable) => Err(unavailable.code()),
                };
                groups.push(match described {
                    Ok(d) => DescribedGroup::default()
                        .with_group_id(group_id)
                        .with_group_state(s(d.state))
                        .with_protocol_type(s(d.protocol_type))
                        .with_protocol_data(s(d.protocol))
                        .with_members(
                            d.members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(s(m.member_id))
                                        .with_group_instance_id(if version >= 4 {
                                            m.group_instance_id.map(s)
                                        } else {
                                            None
                                        })
                                        .with_client_id(s(m.client_id))
                                        .with_client_host(s(m.client_host))
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                })
                                .collect(),
                        )
                        .with_authorized_operations(i32::MIN),
                    // Kafka describes an unknown group as Dead, without an error
                    Err(codes::UNKNOWN_MEMBER_ID) => DescribedGroup::default()
                        .with_group_id(group_id)
                        .with_group_state(s("Dead"))
                        .with_authorized_operations(i32::MIN),
                    Err(code) => DescribedGroup::default()
                        .with_error_code(code)
                        .with_group_id(group_id)
                        .with_group_state(s("Dead"))
                        .with_authorized_operations(i32::MIN),
                });
            }
            ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
        }
        RequestKind::ListGroups(request) => {
            let states: Vec<String> = request.states_filter.iter().map(|f| f.to_string().to_lowercase()).collect();
            let mut groups = Vec::new();
            for actor in ctx.groups.all().await {
                let Ok(listing) = call_t!(actor, GroupMsg::List, CALL_MS) else { continue };
                if !caller.may(ctx, Operation::Describe, Resource::Group(&listing.group_id)) {
                    continue;
                }
                if !states.is_empty() && !states.contains(&listing.state.to_lowercase()) {
                    continue;
                }
                groups.push(
                    ListedGroup::default()
                        .with_group_id(GroupId(s(listing.group_id)))
                        .with_protocol_type(s(listing.protocol_type))
                        .with_group_state(if version >= 4 { s(listing.state) } else { StrBytes::default() }),
                );
            }
            groups.sort_by(|a, b| a.group_id.0.as_str().cmp(b.group_id.0.as_str()));
            ResponseKind::ListGroups(ListGroupsResponse::default().with_groups(groups))
        }
        _ => return None,
    })
}

/// The coordinator of `group` for a request that does `operation` on it, if the caller may.
async fn coordinator(
    ctx: &NodeContext,
    caller: &Caller,
    operation: Operation,
    group: &str,
    spawn: bool,
) -> Result<ractor::ActorRef<GroupMsg>, GroupUnavailable> {
    if !caller.may(ctx, operation, Resource::Group(group)) {
        return Err(GroupUnavailable::NotAuthorized);
    }
    if spawn { ctx.groups.get_or_spawn(ctx, group).await } else { ctx.groups.get(ctx, group).await }
}

/// A group's committed offsets (-1 for each partition asked for without one), or the error
/// code of a group coordinated elsewhere or not at all right now.
async fn fetch_offsets(
    ctx: &NodeContext,
    caller: &Caller,
    group: &str,
    partitions: Option<Vec<(String, i32)>>,
) -> Result<Vec<FetchedOffset>, i16> {
    let wanted = partitions.clone();
    let fetched = match coordinator(ctx, caller, Operation::Describe, group, false).await {
        Ok(actor) => {
            call_t!(actor, GroupMsg::FetchOffsets, CALL_MS, partitions).map_err(|_| codes::COORDINATOR_NOT_AVAILABLE)?
        }
        Err(GroupUnavailable::Unknown) => Vec::new(),
        Err(unavailable) => return Err(unavailable.code()),
    };
    Ok(match wanted {
        // every requested partition gets an answer, -1 when nothing is committed
        Some(wanted) => wanted
            .into_iter()
            .map(|(topic, partition)| {
                fetched.iter().find(|f| f.topic == topic && f.partition == partition).cloned().unwrap_or(
                    FetchedOffset { topic, partition, offset: -1, leader_epoch: -1, metadata: String::new() },
                )
            })
            .collect(),
        None => fetched,
    })
}

fn group_by_topic(offsets: Vec<FetchedOffset>) -> Vec<(String, Vec<FetchedOffset>)> {
    let mut topics: std::collections::BTreeMap<String, Vec<FetchedOffset>> = std::collections::BTreeMap::new();
    for offset in offsets {
        topics.entry(offset.topic.clone()).or_default().push(offset);
    }
    topics.into_iter().collect()
}

/// Where a coordinator key's requests go: (node, host, port), or the error code.
async fn coordinator_of(ctx: &NodeContext, key_type: i8, key: &str) -> Result<(i32, StrBytes, i32), i16> {
    // key type 1 is a transaction coordinator: transactions are not offered
    if key_type == 1 {
        return Err(codes::COORDINATOR_NOT_AVAILABLE);
    }
    let node = group_place::coordinator(ctx, key).await.map_err(GroupUnavailable::code)?;
    if node == ctx.node_id {
        return Ok((node as i32, s(ctx.kafka.advertised_host.clone()), ctx.kafka.advertised_port));
    }
    let broker = ctx.catalog().and_then(|catalog| catalog.brokers().into_iter().find(|broker| broker.id == node));
    match broker {
        Some(broker) => Ok((node as i32, s(broker.host), broker.port)),
        None => Err(codes::COORDINATOR_NOT_AVAILABLE),
    }
}

async fn find_coordinator(
    ctx: &NodeContext,
    request: FindCoordinatorRequest,
    version: i16,
    caller: &Caller,
) -> FindCoordinatorResponse {
    let found = async |key: &str| {
        if request.key_type == 0 && !caller.may(ctx, Operation::Describe, Resource::Group(key)) {
            return Err(codes::GROUP_AUTHORIZATION_FAILED);
        }
        coordinator_of(ctx, request.key_type, key).await
    };
    if version >= 4 {
        let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
        for key in &request.coordinator_keys {
            let found = found(key.as_str()).await;
            let key = key.clone();
            let coordinator = Coordinator::default().with_key(key);
            coordinators.push(match found {
                Ok((node, host, port)) => coordinator
                    .with_node_id(BrokerId(node))
                    .with_host(host)
                    .with_port(port)
                    .with_error_code(codes::NONE),
                Err(code) => coordinator.with_node_id(BrokerId(-1)).with_port(-1).with_error_code(code),
            });
        }
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match found(request.key.as_str()).await {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_error_code(codes::NONE)
            .with_node_id(BrokerId(node))
            .with_host(host)
            .with_port(port),
        Err(code) => FindCoordinatorResponse::default().with_error_code(code).with_node_id(BrokerId(-1)).with_port(-1),
    }
}
