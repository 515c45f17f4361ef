//! Metadata and DescribeCluster: what the cluster and its streams look like.

use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::acl::{Operation, Resource};
use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::handlers::Caller;
use crate::stream::catalog::Broker;
use crate::stream::def::{StreamDef, valid_name};
use crate::stream::registry::Stream;

fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// The cluster id clients see.
pub fn cluster_id(ctx: &NodeContext) -> StrBytes {
    s(format!("tidewater-{}", ctx.kafka.cluster_name))
}

/// The brokers clients are told of: the cluster's live nodes, or this node alone.
pub fn brokers(ctx: &NodeContext) -> Vec<Broker> {
    match ctx.catalog() {
        Some(catalog) => catalog.brokers(),
        None => {
            vec![Broker { id: ctx.node_id, host: ctx.kafka.advertised_host.clone(), port: ctx.kafka.advertised_port }]
        }
    }
}

/// The controller clients are told of (-1 while the cluster has none).
pub fn controller_id(ctx: &NodeContext) -> BrokerId {
    match ctx.catalog() {
        Some(catalog) => BrokerId(catalog.controller().map_or(-1, |id| id as i32)),
        None => BrokerId(ctx.node_id as i32),
    }
}

fn topic_entry(ctx: &NodeContext, stream: &Stream, version: i16) -> MetadataResponseTopic {
    let partitions = stream
        .partitions
        .iter()
        .enumerate()
        .map(|(index, handle)| {
            let (error, leader, replicas, in_sync, epoch) = match &handle.replica {
                None => (codes::NONE, ctx.node_id as i32, vec![ctx.node_id], vec![ctx.node_id], 0),
                Some(view) => match view.leader() {
                    Some((leader, term)) => {
                        (codes::NONE, leader as i32, view.replicas.clone(), view.in_sync_replicas(), term as i32)
                    }
                    None => (codes::LEADER_NOT_AVAILABLE, -1, view.replicas.clone(), view.in_sync_replicas(), -1),
                },
            };
            let brokers = |ids: Vec<u64>| ids.into_iter().map(|id| BrokerId(id as i32)).collect::<Vec<_>>();
            let partition = MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(leader))
                .with_isr_nodes(brokers(in_sync))
                .with_replica_nodes(brokers(replicas));
            if version >= 7 { partition.with_leader_epoch(epoch) } else { partition }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(stream.def.name.clone()))))
        // the cluster's committed offsets: clients leave it out of pattern subscriptions
        .with_is_internal(stream.def.name == crate::kafka::group_place::OFFSETS_STREAM && stream.replicated())
        .with_partitions(partitions)
        .with_topic_authorized_operations(i32::MIN)
}

/// Answers Metadata, auto-creating unknown topics as free streams when allowed.
pub async fn metadata(ctx: &NodeContext, request: MetadataRequest, version: i16, caller: &Caller) -> MetadataResponse {
    let mut topics = Vec::new();
    // v0: an empty list means all topics; v1+: null means all, empty means none
    let requested: Option<Vec<String>> = match request.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
    };
    match requested {
        // the streams the caller may not describe are left out, as Kafka does
        None => topics.extend(
            ctx.streams
                .list()
                .iter()
                .filter(|stream| caller.may(ctx, Operation::Describe, Resource::Topic(&stream.def.name)))
                .map(|stream| topic_entry(ctx, stream, version)),
        ),
        Some(names) => {
            let auto_create = ctx.kafka.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
            for name in names {
                let error_topic = |code| {
                    MetadataResponseTopic::default().with_name(Some(TopicName(s(name.clone())))).with_error_code(code)
                };
                if !caller.may(ctx, Operation::Describe, Resource::Topic(&name)) {
                    // whether it exists or not: existence is not told to whom may not describe it
                    topics.push(error_topic(codes::TOPIC_AUTHORIZATION_FAILED));
                } else if let Some(stream) = ctx.streams.get(&name) {
                    topics.push(topic_entry(ctx, &stream, version));
                } else if !valid_name(&name) {
                    topics.push(error_topic(codes::INVALID_TOPIC_EXCEPTION));
                } else if auto_create && caller.may_create(ctx, &name) {
                    let mut def = StreamDef::free(&name, ctx.kafka.default_partitions);
                    def.replication_factor = ctx.default_replication_factor();
                    match ctx.create_stream(def).await {
                        Ok(stream) => topics.push(topic_entry(ctx, &stream, version)),
                        Err(_) => match ctx.streams.get(&name) {
                            // created concurrently by another request
                            Some(stream) => topics.push(topic_entry(ctx, &stream, version)),
                            None => topics.push(error_topic(codes::UNKNOWN_TOPIC_OR_PARTITION)),
                        },
                    }
                } else {
                    topics.push(error_topic(codes::UNKNOWN_TOPIC_OR_PARTITION));
                }
            }
        }
    }
    let brokers = brokers(ctx)
        .into_iter()
        .map(|broker| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(broker.id as i32))
                .with_host(s(broker.host))
                .with_port(broker.port)
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(cluster_id(ctx)))
        .with_controller_id(controller_id(ctx))
        .with_topics(topics)
        .with_cluster_authorized_operations(i32::MIN)
}

/// Answers DescribeCluster.
pub fn describe_cluster(ctx: &NodeContext, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    let brokers = brokers(ctx)
        .into_iter()
        .map(|broker| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(broker.id as i32))
                .with_host(s(broker.host))
                .with_port(broker.port)
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(cluster_id(ctx))
        .with_controller_id(controller_id(ctx))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(i32::MIN)
}
