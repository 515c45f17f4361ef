use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, GroupId,
    IncrementalAlterConfigsRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest,
    MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestKind,
    SyncGroupRequest, TopicName, alter_configs_request, create_partitions_request, create_topics_request,
    delete_topics_request, describe_configs_request, fetch_request, incremental_alter_configs_request,
    join_group_request, leave_group_request, list_offsets_request, metadata_request, offset_commit_request,
    offset_fetch_request, offset_for_leader_epoch_request, produce_request, sync_group_request,
};
use kafka_protocol::protocol::StrBytes;
use proptest::prelude::*;

use super::{body_schema, walk_body};

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName(s(text))
}

/// A request of `key` at version `v` with every array present at `v` holding elements (two at the top).
fn fixture(key: ApiKey, v: i16) -> RequestKind {
    match key {
        ApiKey::Produce => {
            use produce_request::{PartitionProduceData, TopicProduceData};
            let partition =
                |i| PartitionProduceData::default().with_index(i).with_records(Some(Bytes::from(vec![7; 70])));
            let t = |name| {
                TopicProduceData::default().with_name(topic(name)).with_partition_data(vec![partition(0), partition(1)])
            };
            ProduceRequest::default().with_acks(-1).with_topic_data(vec![t("a"), t("bb")]).into()
        }
        ApiKey::Fetch => {
            use fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
            let p = |i| FetchPartition::default().with_partition(i).with_fetch_offset(42);
            let t = |name| FetchTopic::default().with_topic(topic(name)).with_partitions(vec![p(0), p(3)]);
            let mut fetch = FetchRequest::default().with_topics(vec![t("a"), t("bb")]);
            if v >= 7 {
                fetch.forgotten_topics_data =
                    vec![ForgottenTopic::default().with_topic(topic("c")).with_partitions(vec![1, 2])];
            }
            if v >= 12 {
                fetch.cluster_id = Some(s("cluster"));
            }
            fetch.into()
        }
        ApiKey::ListOffsets => {
            use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
            let p = |i| ListOffsetsPartition::default().with_partition_index(i).with_timestamp(-2);
            let t = |name| ListOffsetsTopic::default().with_name(topic(name)).with_partitions(vec![p(0), p(1)]);
            ListOffsetsRequest::default().with_topics(vec![t("a"), t("bb")]).into()
        }
        ApiKey::Metadata => {
            let t = |name| metadata_request::MetadataRequestTopic::default().with_name(Some(topic(name)));
            MetadataRequest::default().with_topics(Some(vec![t("a"), t("bb")])).into()
        }
        ApiKey::OffsetCommit => {
            use offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
            let p = |i| {
                OffsetCommitRequestPartition::default().with_partition_index(i).with_committed_metadata(Some(s("m")))
            };
            let t = |name| OffsetCommitRequestTopic::default().with_name(topic(name)).with_partitions(vec![p(0), p(1)]);
            OffsetCommitRequest::default().with_group_id(GroupId(s("g"))).with_topics(vec![t("a"), t("bb")]).into()
        }
        ApiKey::OffsetFetch => {
            use offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics};
            if v <= 7 {
                let t =
                    |name| OffsetFetchRequestTopic::default().with_name(topic(name)).with_partition_indexes(vec![0, 1]);
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_topics(Some(vec![t("a"), t("bb")]))
                    .into()
            } else {
                let t = |name| {
                    OffsetFetchRequestTopics::default().with_name(topic(name)).with_partition_indexes(vec![0, 1])
                };
                let g = |id| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(id)))
                        .with_topics(Some(vec![t("a"), t("bb")]))
                };
                OffsetFetchRequest::default().with_groups(vec![g("g"), g("h")]).into()
            }
        }
        ApiKey::FindCoordinator if v <= 3 => FindCoordinatorRequest::default().with_key(s("g")).into(),
        ApiKey::FindCoordinator => {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g"), s("hh")]).into()
        }
        ApiKey::JoinGroup => {
            let p = |name| {
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(s(name))
                    .with_metadata(Bytes::from_static(b"meta"))
            };
            JoinGroupRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![p("range"), p("rr")])
                .into()
        }
        ApiKey::LeaveGroup if v <= 2 => {
            LeaveGroupRequest::default().with_group_id(GroupId(s("g"))).with_member_id(s("m")).into()
        }
        ApiKey::LeaveGroup => {
            let m = |id| leave_group_request::MemberIdentity::default().with_member_id(s(id));
            LeaveGroupRequest::default().with_group_id(GroupId(s("g"))).with_members(vec![m("m1"), m("m2")]).into()
        }
        ApiKey::SyncGroup => {
            let a = |id| {
                sync_group_request::SyncGroupRequestAssignment::default()
                    .with_member_id(s(id))
                    .with_assignment(Bytes::from_static(b"assignment"))
            };
            SyncGroupRequest::default().with_group_id(GroupId(s("g"))).with_assignments(vec![a("m1"), a("m2")]).into()
        }
        ApiKey::DescribeGroups => {
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g")), GroupId(s("hh"))]).into()
        }
        ApiKey::ListGroups => {
            let mut list = ListGroupsRequest::default();
            if v >= 4 {
                list.states_filter = vec![s("Stable"), s("Empty")];
            }
            if v >= 5 {
                list.types_filter = vec![s("classic")];
            }
            list.into()
        }
        ApiKey::CreateTopics => {
            use create_topics_request::{CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig};
            let a = |i| {
                CreatableReplicaAssignment::default()
                    .with_partition_index(i)
                    .with_broker_ids(vec![BrokerId(1), BrokerId(2)])
            };
            let c = |name| CreatableTopicConfig::default().with_name(s(name)).with_value(Some(s("1")));
            let t = |name| {
                CreatableTopic::default()
                    .with_name(topic(name))
                    .with_assignments(vec![a(0), a(1)])
                    .with_configs(vec![c("x"), c("yy")])
            };
            CreateTopicsRequest::default().with_topics(vec![t("a"), t("bb")]).into()
        }
        ApiKey::DeleteTopics if v <= 5 => {
            DeleteTopicsRequest::default().with_topic_names(vec![topic("a"), topic("bb")]).into()
        }
        ApiKey::DeleteTopics => {
            let t = |name| delete_topics_request::DeleteTopicState::default().with_name(Some(topic(name)));
            DeleteTopicsRequest::default().with_topics(vec![t("a"), t("bb")]).into()
        }
        ApiKey::DescribeConfigs => {
            let r = |name| {
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(name))
                    .with_configuration_keys(Some(vec![s("retention.ms"), s("x")]))
            };
            DescribeConfigsRequest::default().with_resources(vec![r("a"), r("bb")]).into()
        }
        ApiKey::AlterConfigs => {
            use alter_configs_request::{AlterConfigsResource, AlterableConfig};
            let c = |name| AlterableConfig::default().with_name(s(name)).with_value(Some(s("1")));
            let r = |name| {
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(name))
                    .with_configs(vec![c("retention.ms"), c("x")])
            };
            AlterConfigsRequest::default().with_resources(vec![r("a"), r("bb")]).into()
        }
        ApiKey::IncrementalAlterConfigs => {
            use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
            let c =
                |name| AlterableConfig::default().with_name(s(name)).with_config_operation(1).with_value(Some(s("1")));
            let r = |name| {
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(name))
                    .with_configs(vec![c("retention.ms"), c("x")])
            };
            IncrementalAlterConfigsRequest::default().with_resources(vec![r("a"), r("bb")]).into()
        }
        ApiKey::CreatePartitions => {
            use create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic};
            let a = || CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1), BrokerId(2)]);
            let t = |name| {
                CreatePartitionsTopic::default()
                    .with_name(topic(name))
                    .with_count(3)
                    .with_assignments(Some(vec![a(), a()]))
            };
            CreatePartitionsRequest::default().with_topics(vec![t("a"), t("bb")]).into()
        }
        ApiKey::OffsetForLeaderEpoch => {
            use offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
            let p = |i| {
                OffsetForLeaderPartition::default().with_partition(i).with_current_leader_epoch(3).with_leader_epoch(2)
            };
            let t = |name| OffsetForLeaderTopic::default().with_topic(topic(name)).with_partitions(vec![p(0), p(1)]);
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![t("a"), t("bb")])
                .into()
        }
        ApiKey::CreateAcls => {
            use kafka_protocol::messages::create_acls_request::AclCreation;
            let c = |name: &'static str| {
                AclCreation::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str(name))
                    .with_resource_pattern_type(3)
                    .with_principal(StrBytes::from_static_str("User:alice"))
                    .with_host(StrBytes::from_static_str("*"))
                    .with_operation(3)
                    .with_permission_type(3)
            };
            kafka_protocol::messages::CreateAclsRequest::default().with_creations(vec![c("a"), c("bb")]).into()
        }
        ApiKey::DeleteAcls => {
            use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
            let f = |name: Option<&'static str>| {
                DeleteAclsFilter::default()
                    .with_resource_type_filter(2)
                    .with_resource_name_filter(name.map(StrBytes::from_static_str))
                    .with_pattern_type_filter(1)
                    .with_principal_filter(Some(StrBytes::from_static_str("User:alice")))
                    .with_operation(1)
                    .with_permission_type(1)
            };
            kafka_protocol::messages::DeleteAclsRequest::default().with_filters(vec![f(Some("a")), f(None)]).into()
        }
        ApiKey::DescribeUserScramCredentials => {
            use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
            let u = |name| UserName::default().with_name(StrBytes::from_static_str(name));
            kafka_protocol::messages::DescribeUserScramCredentialsRequest::default()
                .with_users(Some(vec![u("a"), u("bb")]))
                .into()
        }
        ApiKey::AlterUserScramCredentials => {
            use kafka_protocol::messages::alter_user_scram_credentials_request::{
                ScramCredentialDeletion, ScramCredentialUpsertion,
            };
            let d =
                |name| ScramCredentialDeletion::default().with_name(StrBytes::from_static_str(name)).with_mechanism(1);
            let u = |name| {
                ScramCredentialUpsertion::default()
                    .with_name(StrBytes::from_static_str(name))
                    .with_mechanism(2)
                    .with_iterations(4096)
                    .with_salt(bytes::Bytes::from_static(b"salt"))
                    .with_salted_password(bytes::Bytes::from_static(&[7; 64]))
            };
            kafka_protocol::messages::AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![d("a"), d("bb")])
                .with_upsertions(vec![u("c"), u("dd")])
                .into()
        }
        other => panic!("no fixture for {other:?}"),
    }
}

/// Every (api, version) this server serves whose body has arrays.
fn guarded() -> Vec<(ApiKey, i16)> {
    let mut out = Vec::new();
    for (key, min, max) in super::super::supported_versions() {
        let key = ApiKey::try_from(key).unwrap();
        if body_schema(key).is_some() {
            out.extend((min..=max).map(|v| (key, v)));
        }
    }
    out
}

fn flexible(key: ApiKey, v: i16) -> bool {
    key.request_header_version(v) >= 2
}

/// Produce v0–v2 are v3 without the transactional id (kafka-protocol 0.18 codes v3 and up only).
const LEGACY_PRODUCE: i16 = 3;

fn encode_body(key: ApiKey, v: i16) -> Bytes {
    let legacy = key == ApiKey::Produce && v < LEGACY_PRODUCE;
    let mut buf = BytesMut::new();
    let at = if legacy { LEGACY_PRODUCE } else { v };
    fixture(key, v).encode(&mut buf, at).unwrap_or_else(|e| panic!("{key:?} v{v}: {e:#}"));
    let body = buf.freeze();
    if legacy { body.slice(2..) } else { body }
}

/// Decodes a body as `decode_request` does; returns the bytes kafka-protocol left.
fn decode_rest(key: ApiKey, v: i16, body: &[u8]) -> Option<usize> {
    let legacy = key == ApiKey::Produce && v < LEGACY_PRODUCE;
    let mut rest = Bytes::from(if legacy { [&[0xff, 0xff], body].concat() } else { body.to_vec() });
    RequestKind::decode(key, &mut rest, if legacy { LEGACY_PRODUCE } else { v }).ok().map(|_| rest.len())
}

#[test]
fn walk_reads_exactly_what_kafka_protocol_writes_for_every_served_version() {
    let all = guarded();
    assert_eq!(all.len(), 13 + 9 + 8 + 13 + 7 + 8 + 5 + 10 + 6 + 6 + 6 + 5 + 6 + 5 + 4 + 3 + 4 + 2 + 3 + 3 + 3 + 1 + 1);
    for (key, v) in all {
        let body = encode_body(key, v);
        let read = walk_body(key, v, flexible(key, v), &body).unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
        assert_eq!(read, body.len(), "{key:?} v{v}");
        assert_eq!(decode_rest(key, v, &body), Some(0), "{key:?} v{v}");
    }
}

#[test]
fn impossible_array_counts_are_rejected_before_kafka_protocol_sees_them() {
    // Metadata v0 claiming i32::MAX topics: kafka-protocol would reserve ~150 GiB
    assert!(walk_body(ApiKey::Metadata, 0, false, &[0x7f, 0xff, 0xff, 0xff, 0, 1, b'a']).is_err());
    // Metadata v9 (compact) claiming u32::MAX - 1 topics
    assert!(walk_body(ApiKey::Metadata, 9, true, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0]).is_err());
    // a Produce v3 whose topic claims 1000 partitions in 20 bytes
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0x03, 0xe8];
    body.extend([0; 20]);
    let err = walk_body(ApiKey::Produce, 3, false, &body).unwrap_err();
    assert!(err.to_string().contains("array of 1000 elements cannot fit"), "{err}");
    // negative counts other than null
    assert!(walk_body(ApiKey::DescribeGroups, 0, false, &[0xff, 0xff, 0xff, 0xfe]).is_err());
}

#[test]
fn nested_counts_are_bounded_by_the_element_size() {
    // Fetch v4 topic with 2 partitions of at least 16 bytes each, but only 30 bytes left
    let mut body = vec![0; 17]; // replica, max wait, min bytes, max bytes, isolation
    body.extend([0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2]);
    body.extend([0; 30]);
    assert!(walk_body(ApiKey::Fetch, 4, false, &body).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Where the walk accepts a mutated body, kafka-protocol reads exactly as far (or rejects it).
    #[test]
    fn walk_agrees_with_kafka_protocol_on_mutated_bodies(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let all = guarded();
        let (key, v) = all[pick.index(all.len())];
        let mut body = encode_body(key, v).to_vec();
        if !body.is_empty() {
            for (at, byte) in edits {
                let at = at.index(body.len());
                body[at] = byte;
            }
        }
        if truncate {
            body.truncate(cut.index(body.len() + 1));
        }
        if let Ok(read) = walk_body(key, v, flexible(key, v), &body) {
            prop_assert!(read <= body.len());
            if let Some(rest) = decode_rest(key, v, &body) {
                prop_assert_eq!(body.len() - rest, read, "{:?} v{}", key, v);
            }
        }
    }

    /// Random bytes never panic the walk.
    #[test]
    fn walk_never_panics(pick in any::<prop::sample::Index>(), body in prop::collection::vec(any::<u8>(), 0..200)) {
        let all = guarded();
        let (key, v) = all[pick.index(all.len())];
        let _ = walk_body(key, v, flexible(key, v), &body);
    }
}
