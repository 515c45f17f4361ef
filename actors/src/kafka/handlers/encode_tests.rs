//! Every handler's response must encode at every version this server advertises:
//! kafka-protocol refuses a field that a version does not have, and such a refusal closes
//! the client's connection.

use bytes::BytesMut;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tidewater_storage::{NewRecord, build_record_batch};

use super::{Reply, dispatch};
use crate::context::NodeContext;
use crate::kafka::wire::{self, Request};
use crate::stream::def::StreamDef;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn topic(text: &str) -> TopicName {
    TopicName(s(text))
}

/// A typical request of each API, shaped for `version`.
fn sample(api_key: i16, version: i16) -> Option<RequestKind> {
    let group = format!("group-{api_key}-{version}");
    Some(match api_key {
        0 => {
            let batch = build_record_batch(
                &[NewRecord { key: Some(b"k"), value: Some(b"v"), headers: &[("h", b"1")], timestamp_ms: 1 }],
                1,
            );
            RequestKind::Produce(ProduceRequest::default().with_acks(1).with_timeout_ms(1000).with_topic_data(vec![
                TopicProduceData::default().with_name(topic("t")).with_partition_data(vec![
                    PartitionProduceData::default().with_index(0).with_records(Some(batch)),
                    PartitionProduceData::default().with_index(9).with_records(None),
                ]),
            ]))
        }
        1 => RequestKind::Fetch(FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
            FetchTopic::default().with_topic(topic("t")).with_partitions(vec![
                FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20),
                FetchPartition::default().with_partition(1).with_fetch_offset(99).with_partition_max_bytes(1 << 20),
            ]),
            FetchTopic::default().with_topic(topic("missing")).with_partitions(vec![FetchPartition::default()]),
        ])),
        2 => RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            ListOffsetsTopic::default().with_name(topic("t")).with_partitions(vec![
                ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1),
                ListOffsetsPartition::default().with_partition_index(1).with_timestamp(-2),
                ListOffsetsPartition::default().with_partition_index(0).with_timestamp(0),
            ]),
        ])),
        3 => RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic("t"))),
            MetadataRequestTopic::default().with_name(Some(topic("bad/name"))),
        ]))),
        8 => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic("t")).with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(1),
                ])]),
        ),
        9 if version >= 8 => RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default().with_group_id(GroupId(s("group-8-2"))).with_topics(Some(vec![
                OffsetFetchRequestTopics::default().with_name(topic("t")).with_partition_indexes(vec![0, 1]),
            ])),
        ])),
        9 => {
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(GroupId(s("group-8-2"))).with_topics(
                Some(vec![OffsetFetchRequestTopic::default().with_name(topic("t")).with_partition_indexes(vec![0, 1])]),
            ))
        }
        10 => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_key(s("g")).with_coordinator_keys(if version >= 4 {
                vec![s("g")]
            } else {
                vec![]
            }),
        ),
        11 => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(&group)))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if version >= 1 { 10_000 } else { -1 })
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(bytes::Bytes::from_static(b"meta")),
                ]),
        ),
        12 => RequestKind::Heartbeat(
            HeartbeatRequest::default().with_group_id(GroupId(s(&group))).with_member_id(s("m")).with_generation_id(1),
        ),
        13 if version >= 3 => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("group-8-2")))
                .with_members(vec![MemberIdentity::default().with_member_id(s("m"))]),
        ),
        13 => RequestKind::LeaveGroup(
            LeaveGroupRequest::default().with_group_id(GroupId(s("group-8-2"))).with_member_id(s("m")),
        ),
        14 => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("group-8-2")))
                .with_member_id(s("m"))
                .with_generation_id(1),
        ),
        15 => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s("group-8-2")), GroupId(s("none"))]),
        ),
        16 => RequestKind::ListGroups(ListGroupsRequest::default()),
        18 => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        19 => RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(topic(&format!("new-{version}")))
                .with_num_partitions(2)
                .with_replication_factor(1),
            CreatableTopic::default().with_name(topic("t")).with_num_partitions(1).with_replication_factor(1),
            CreatableTopic::default().with_name(topic("rf3")).with_num_partitions(1).with_replication_factor(3),
        ])),
        20 if version >= 6 => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topics(vec![DeleteTopicState::default().with_name(Some(topic("nope")))]),
        ),
        20 => RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topic_names(vec![topic("nope")])),
        22 => RequestKind::InitProducerId(
            InitProducerIdRequest::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1),
        ),
        23 => RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
            OffsetForLeaderTopic::default().with_topic(topic("t")).with_partitions(vec![
                OffsetForLeaderPartition::default().with_partition(0).with_leader_epoch(0),
                OffsetForLeaderPartition::default().with_partition(5).with_leader_epoch(0),
            ]),
            OffsetForLeaderTopic::default()
                .with_topic(topic("nope"))
                .with_partitions(vec![OffsetForLeaderPartition::default().with_partition(0)]),
        ])),
        32 => RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s("t")),
            DescribeConfigsResource::default().with_resource_type(4).with_resource_name(s("1")),
        ])),
        33 => RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("t"))
                .with_configs(vec![
                    alter_configs_request::AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("60000"))),
                ]),
            alter_configs_request::AlterConfigsResource::default().with_resource_type(2).with_resource_name(s("nope")),
        ])),
        44 => RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("t"))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(s("retention.bytes"))
                        .with_value(Some(s("1000000"))),
                ]),
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s("1")),
        ])),
        37 => RequestKind::CreatePartitions(
            CreatePartitionsRequest::default()
                .with_topics(vec![CreatePartitionsTopic::default().with_name(topic("t")).with_count(1)]),
        ),
        60 => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        // a binding, a filter of any binding, and an invalid creation: the answers carry results
        29 => RequestKind::DescribeAcls(
            kafka_protocol::messages::DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ),
        30 => RequestKind::CreateAcls(kafka_protocol::messages::CreateAclsRequest::default().with_creations(vec![
            kafka_protocol::messages::create_acls_request::AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(s("t"))
                .with_resource_pattern_type(3)
                .with_principal(s("User:alice"))
                .with_host(s("*"))
                .with_operation(3)
                .with_permission_type(3),
            kafka_protocol::messages::create_acls_request::AclCreation::default().with_principal(s("alice")),
        ])),
        31 => RequestKind::DeleteAcls(kafka_protocol::messages::DeleteAclsRequest::default().with_filters(vec![
            kafka_protocol::messages::delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ])),
        17 => RequestKind::SaslHandshake(
            kafka_protocol::messages::SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("PLAIN")),
        ),
        36 => RequestKind::SaslAuthenticate(
            kafka_protocol::messages::SaslAuthenticateRequest::default()
                .with_auth_bytes(bytes::Bytes::from_static(b"\0user\0password")),
        ),
        // every user, then a deletion of a credential nobody has and an upsertion too weak
        50 => RequestKind::DescribeUserScramCredentials(
            kafka_protocol::messages::DescribeUserScramCredentialsRequest::default(),
        ),
        51 => RequestKind::AlterUserScramCredentials(
            kafka_protocol::messages::AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![
                    kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(s("ann"))
                        .with_mechanism(1),
                ])
                .with_upsertions(vec![
                    kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                        .with_name(s("bob"))
                        .with_mechanism(2)
                        .with_iterations(1),
                ]),
        ),
        _ => return None,
    })
}

#[tokio::test]
async fn every_response_encodes_at_every_advertised_version() {
    let ctx = NodeContext::for_tests();
    ctx.streams.create(StreamDef::free("t", 2)).await.unwrap();
    let mut checked = 0;
    for (api_key, min, max) in wire::supported_versions() {
        for version in min..=max {
            let Some(body) = sample(api_key, version) else {
                panic!("no sample request for api {api_key}: add one");
            };
            let request =
                Request { api_key, api_version: version, correlation_id: 7, client_id: Some("c".into()), body };
            // the SASL pair is answered by the connection, which holds the exchange's state
            let mut sasl = crate::kafka::sasl::SaslState::default();
            let reply = match &request.body {
                RequestKind::SaslHandshake(body) => {
                    Reply::Send(ResponseKind::SaslHandshake(sasl.handshake(body, version)))
                }
                RequestKind::SaslAuthenticate(body) => {
                    let mechanism = crate::kafka::sasl::Mechanism::Plain;
                    sasl = crate::kafka::sasl::SaslState::Chosen { mechanism, bare: false };
                    Reply::Send(ResponseKind::SaslAuthenticate(sasl.authenticate(body, &ctx.authorizer, &ctx.rng).0))
                }
                _ => dispatch(&ctx, request, &caller()).await,
            };
            let response = match reply {
                Reply::Send(response) | Reply::SendFetch(response, _) => response,
                Reply::None => continue,
                Reply::Close => panic!("api {api_key} v{version} closed the connection"),
            };
            let mut out = BytesMut::new();
            if let Err(error) = wire::encode_response(api_key, version, 7, &response, &mut out) {
                panic!("api {api_key} v{version} does not encode: {error}");
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} api versions checked");
}

fn caller() -> super::Caller {
    super::Caller {
        user: None,
        client_id: String::new(),
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        super_user: false,
    }
}
