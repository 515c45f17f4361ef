//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups and ListGroups, answered by the group's
//! `GroupCoordinator` actor on this node.

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

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::group::GroupMsg;
use crate::kafka::group_state::{FetchedOffset, JoinRequest, LeaveMember, OffsetCommitEntry, SyncRequest};

const CALL_MS: u64 = 10_000;

fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// Routes a group API; `None` for an API this module does not serve.
pub async fn dispatch(
    ctx: &NodeContext,
    body: RequestKind,
    version: i16,
    client_id: &str,
    client_host: &str,
) -> Option<ResponseKind> {
    Some(match body {
        RequestKind::FindCoordinator(request) => ResponseKind::FindCoordinator(find_coordinator(ctx, request, version)),
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
            let failed = JoinGroupResponse::default()
                .with_error_code(codes::COORDINATOR_NOT_AVAILABLE)
                .with_generation_id(-1)
                .with_member_id(s(join.member_id.clone()));
            let response = match ctx.groups.get_or_spawn(ctx, &group).await {
                Some(actor) => match call_t!(actor, GroupMsg::Join, wait, join) {
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
                    Err(_) => failed,
                },
                None => failed,
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
            let response = match ctx.groups.get(ctx, &group).await {
                Some(actor) => match call_t!(actor, GroupMsg::Sync, 300_000 + CALL_MS, sync) {
                    Ok(r) => SyncGroupResponse::default()
                        .with_error_code(r.error.code())
                        .with_protocol_type(if version >= 5 { r.protocol_type.map(s) } else { None })
                        .with_protocol_name(if version >= 5 { r.protocol_name.map(s) } else { None })
                        .with_assignment(r.assignment),
                    Err(_) => failed,
                },
                None => SyncGroupResponse::default().with_error_code(25), // UNKNOWN_MEMBER_ID
            };
            ResponseKind::SyncGroup(response)
        }
        RequestKind::Heartbeat(request) => {
            let group = request.group_id.0.to_string();
            let code = match ctx.groups.get(ctx, &group).await {
                Some(actor) => {
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
                None => 25, // UNKNOWN_MEMBER_ID
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
            let response = match ctx.groups.get(ctx, &group).await {
                Some(actor) => match call_t!(actor, GroupMsg::Leave, CALL_MS, members) {
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
                None => LeaveGroupResponse::default().with_error_code(25),
            };
            ResponseKind::LeaveGroup(response)
        }
        RequestKind::OffsetCommit(request) => {
            let group = request.group_id.0.to_string();
            let mut entries = Vec::new();
            for topic in &request.topics {
                for p in &topic.partitions {
                    entries.push(OffsetCommitEntry {
                        topic: topic.name.0.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    });
                }
            }
            let results = match ctx.groups.get_or_spawn(ctx, &group).await {
                Some(actor) => call_t!(
                    actor,
                    GroupMsg::Commit,
                    CALL_MS,
                    request.member_id.to_string(),
                    request.generation_id_or_member_epoch,
                    entries
                )
                .ok(),
                None => None,
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
                                Some(results) => results
                                    .iter()
                                    .find(|r| r.topic == name && r.partition == p.partition_index)
                                    .map_or(codes::NONE, |r| r.error.code()),
                                None => codes::COORDINATOR_NOT_AVAILABLE,
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
                    let fetched = fetch_offsets(ctx, wanted.group_id.0.as_str(), partitions).await;
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
                    groups.push(OffsetFetchResponseGroup::default().with_group_id(wanted.group_id).with_topics(topics));
                }
                ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_groups(groups))
            } else {
                let partitions = request.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.0.to_string(), *p)))
                        .collect()
                });
                let fetched = fetch_offsets(ctx, request.group_id.0.as_str(), partitions).await;
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
                ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_topics(topics))
            }
        }
        RequestKind::DescribeGroups(request) => {
            let mut groups = Vec::with_capacity(request.groups.len());
            for group_id in request.groups {
                let described = match ctx.groups.get(ctx, group_id.0.as_str()).await {
                    Some(actor) => call_t!(actor, GroupMsg::Describe, CALL_MS).ok(),
                    None => None,
                };
                groups.push(match described {
                    Some(d) => DescribedGroup::default()
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
                    None => DescribedGroup::default()
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

async fn fetch_offsets(ctx: &NodeContext, group: &str, partitions: Option<Vec<(String, i32)>>) -> Vec<FetchedOffset> {
    let wanted = partitions.clone();
    let fetched = match ctx.groups.get(ctx, group).await {
        Some(actor) => call_t!(actor, GroupMsg::FetchOffsets, CALL_MS, partitions).unwrap_or_default(),
        None => Vec::new(),
    };
    match wanted {
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
    }
}

fn group_by_topic(offsets: Vec<FetchedOffset>) -> Vec<(String, Vec<FetchedOffset>)> {
    let mut topics: std::collections::BTreeMap<String, Vec<FetchedOffset>> = std::collections::BTreeMap::new();
    for offset in offsets {
        topics.entry(offset.topic.clone()).or_default().push(offset);
    }
    topics.into_iter().collect()
}

fn find_coordinator(ctx: &NodeContext, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let node_id = BrokerId(ctx.node_id as i32);
    let host = s(ctx.kafka.advertised_host.clone());
    let port = ctx.kafka.advertised_port;
    // key type 1 is a transaction coordinator: transactions are not offered
    let code = if request.key_type == 1 { codes::COORDINATOR_NOT_AVAILABLE } else { codes::NONE };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(if code == codes::NONE { node_id } else { BrokerId(-1) })
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(code)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(if code == codes::NONE { node_id } else { BrokerId(-1) })
        .with_host(host)
        .with_port(port)
}
