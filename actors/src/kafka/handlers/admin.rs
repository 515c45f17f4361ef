//! CreateTopics, DeleteTopics and CreatePartitions: managing free streams from Kafka tools.

use kafka_protocol::messages::create_partitions_response::{CreatePartitionsResponse, CreatePartitionsTopicResult};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicResult, CreateTopicsResponse};
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::handlers::configs::set_topic_config;
use crate::stream::catalog::Assignment;
use crate::stream::def::{StreamDef, StreamDefError};
use crate::stream::registry::StreamError;

fn message(text: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(text.into()))
}

/// Operator-assigned replica sets as broker ids: each set non-empty, without repeats, all of
/// one size (Kafka's rules; the cluster checks the brokers exist).
fn assigned_sets(sets: Vec<Vec<i32>>) -> Result<Assignment, (i16, String)> {
    let invalid = |text: String| (codes::INVALID_REPLICA_ASSIGNMENT, text);
    let mut out = Vec::with_capacity(sets.len());
    for set in sets {
        let mut nodes = Vec::with_capacity(set.len());
        for broker in set {
            let node = u64::try_from(broker).map_err(|_| invalid(format!("broker id {broker} is negative")))?;
            if nodes.contains(&node) {
                return Err(invalid(format!("broker {node} appears twice in one replica set")));
            }
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err(invalid("a replica set is empty".into()));
        }
        if out.first().is_some_and(|first: &Vec<u64>| first.len() != nodes.len()) {
            return Err(invalid("every partition must have the same number of replicas".into()));
        }
        out.push(nodes);
    }
    Ok(out)
}

/// A CreatableTopic's replica assignments, one set per partition in partition order.
fn topic_assignment(topic: &CreatableTopic) -> Result<Option<Assignment>, (i16, String)> {
    if topic.assignments.is_empty() {
        return Ok(None);
    }
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        return Err((
            codes::INVALID_REQUEST,
            "with replica assignments, num_partitions and replication_factor must be -1".to_string(),
        ));
    }
    let mut assignments: Vec<_> = topic.assignments.iter().collect();
    assignments.sort_by_key(|assignment| assignment.partition_index);
    if assignments.iter().enumerate().any(|(index, assignment)| assignment.partition_index != index as i32) {
        return Err((
            codes::INVALID_REPLICA_ASSIGNMENT,
            "replica assignments must number the partitions 0, 1, 2, ... once each".to_string(),
        ));
    }
    let sets = assignments.iter().map(|a| a.broker_ids.iter().map(|broker| broker.0).collect()).collect();
    assigned_sets(sets).map(Some)
}

/// Turns a CreatableTopic into a free stream definition and its assignment, or an error code
/// and message.
fn stream_def(ctx: &NodeContext, topic: &CreatableTopic) -> Result<(StreamDef, Option<Assignment>), (i16, String)> {
    let name = topic.name.0.to_string();
    let assignment = topic_assignment(topic)?;
    let partitions = match (&assignment, topic.num_partitions) {
        (Some(sets), _) => sets.len() as u32,
        (None, -1) => ctx.kafka.default_partitions,
        (None, n) if n >= 1 => n as u32,
        (None, n) => return Err((codes::INVALID_PARTITIONS, format!("num_partitions {n} must be positive"))),
    };
    let replication_factor = match (&assignment, topic.replication_factor) {
        (Some(sets), _) => sets[0].len() as u16,
        (None, -1) => ctx.default_replication_factor(),
        (None, 1) => 1,
        (None, n) if n >= 1 && ctx.catalog().is_some() => n as u16,
        (None, n) => {
            return Err((
                codes::INVALID_REPLICATION_FACTOR,
                format!("replication factor {n} is not available on a node that is not part of a cluster"),
            ));
        }
    };
    let mut def = StreamDef::free(&name, partitions);
    def.replication_factor = replication_factor;
    for config in &topic.configs {
        set_topic_config(&mut def, config.name.as_str(), config.value.as_ref().map(|v| v.as_str()))?;
    }
    def.validate().map_err(|error| match error {
        StreamDefError::InvalidReplicationFactor => (codes::INVALID_REPLICATION_FACTOR, error.to_string()),
        error => (codes::INVALID_TOPIC_EXCEPTION, error.to_string()),
    })?;
    Ok((def, assignment))
}

/// The Kafka error a failed stream creation answers with.
pub fn create_error(error: StreamError) -> (i16, String) {
    let code = match &error {
        StreamError::Exists(_) => codes::TOPIC_ALREADY_EXISTS,
        StreamError::NotController(_) => codes::NOT_CONTROLLER,
        StreamError::ReplicationFactor { .. } | StreamError::NotReplicated { .. } => codes::INVALID_REPLICATION_FACTOR,
        StreamError::Unavailable(_) => codes::REQUEST_TIMED_OUT,
        StreamError::Invalid(StreamDefError::InvalidReplicationFactor) => codes::INVALID_REPLICATION_FACTOR,
        StreamError::Invalid(_) => codes::INVALID_TOPIC_EXCEPTION,
        StreamError::InvalidAssignment(_) => codes::INVALID_REPLICA_ASSIGNMENT,
        StreamError::PartitionsNotIncreased { .. } => codes::INVALID_PARTITIONS,
        _ => codes::INVALID_REQUEST,
    };
    (code, error.to_string())
}

/// Answers CreateTopics.
pub async fn create_topics(ctx: &NodeContext, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let outcome = match stream_def(ctx, &topic) {
            Err(error) => Err(error),
            Ok(_) if ctx.streams.get(topic.name.0.as_str()).is_some() => {
                Err((codes::TOPIC_ALREADY_EXISTS, format!("topic {} already exists", topic.name.0.as_str())))
            }
            Ok((def, _)) if request.validate_only => Ok(def),
            Ok((def, assignment)) => match ctx.create_assigned(def.clone(), assignment).await {
                Ok(_) => Ok(def),
                Err(error) => Err(create_error(error)),
            },
        };
        // num_partitions and replication_factor exist from v5
        results.push(match outcome {
            Ok(def) if version >= 5 => {
                result.with_num_partitions(def.partitions as i32).with_replication_factor(def.replication_factor as i16)
            }
            Ok(_) => result,
            Err((code, text)) => result.with_error_code(code).with_error_message(message(text)),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Answers DeleteTopics (by name).
pub async fn delete_topics(ctx: &NodeContext, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let mut names: Vec<TopicName> = request.topic_names;
    names.extend(request.topics.into_iter().filter_map(|t| t.name));
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        responses.push(match ctx.delete_stream(name.0.as_str()).await {
            Ok(()) => result,
            Err(StreamError::Unknown(_)) => result.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION),
            Err(StreamError::NotController(_)) => result.with_error_code(codes::NOT_CONTROLLER),
            Err(error) if version >= 5 => {
                result.with_error_code(codes::UNKNOWN_SERVER_ERROR).with_error_message(message(error.to_string()))
            }
            Err(_) => result.with_error_code(codes::UNKNOWN_SERVER_ERROR),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Answers CreatePartitions: more partitions for a stream of this node or of the cluster
/// (whose new partitions get the replica sets assigned, or placement's).
pub async fn create_partitions(ctx: &NodeContext, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let name = topic.name.0.to_string();
        let outcome = async {
            let stream = ctx
                .streams
                .get(&name)
                .ok_or_else(|| (codes::UNKNOWN_TOPIC_OR_PARTITION, format!("topic {name} does not exist")))?;
            let current = stream.def.partitions;
            if topic.count <= current as i32 {
                return Err((
                    codes::INVALID_PARTITIONS,
                    format!("topic {name} has {current} partitions; the new count must be larger"),
                ));
            }
            let assignment = match topic.assignments.filter(|sets| !sets.is_empty()) {
                None => None,
                Some(sets) => {
                    let sets = assigned_sets(
                        sets.into_iter().map(|set| set.broker_ids.into_iter().map(|b| b.0).collect()).collect(),
                    )?;
                    if sets.len() != (topic.count as u32 - current) as usize
                        || sets[0].len() != usize::from(stream.def.replication_factor)
                    {
                        return Err((
                            codes::INVALID_REPLICA_ASSIGNMENT,
                            format!(
                                "{} new partitions need {} replica sets of {} brokers",
                                topic.count as u32 - current,
                                topic.count as u32 - current,
                                stream.def.replication_factor
                            ),
                        ));
                    }
                    Some(sets)
                }
            };
            let mut def = stream.def.clone();
            def.partitions = topic.count as u32;
            def.validate().map_err(|error| (codes::INVALID_PARTITIONS, error.to_string()))?;
            if request.validate_only {
                return Ok(());
            }
            ctx.alter_stream(def, assignment).await.map_err(create_error)
        }
        .await;
        results.push(match outcome {
            Ok(()) => result,
            Err((code, text)) => result.with_error_code(code).with_error_message(message(text)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// What a client that may not administer streams gets for a request that would create,
/// delete or alter them (`None`: the request changes no stream): every topic or resource
/// refused with `TOPIC_AUTHORIZATION_FAILED` (`CLUSTER_AUTHORIZATION_FAILED` for a broker's).
pub fn refused(request: &RequestKind, version: i16) -> Option<ResponseKind> {
    const WHY: &str =
        "not authorized: creating, deleting or altering streams needs admin = true or an ACL that allows it";
    let why = || message(WHY.to_string());
    let code_for = |resource_type: i8| {
        if resource_type == 2 { codes::TOPIC_AUTHORIZATION_FAILED } else { codes::CLUSTER_AUTHORIZATION_FAILED }
    };
    // AlterConfigs and IncrementalAlterConfigs answer with distinct types of the same shape
    macro_rules! refused_config_changes {
        ($body:expr, $response:ty, $resource:ty) => {
            <$response>::default().with_responses(
                $body
                    .resources
                    .iter()
                    .map(|resource| {
                        <$resource>::default()
                            .with_error_code(code_for(resource.resource_type))
                            .with_error_message(why())
                            .with_resource_type(resource.resource_type)
                            .with_resource_name(resource.resource_name.clone())
                    })
                    .collect(),
            )
        };
    }
    Some(match request {
        RequestKind::CreateTopics(body) => ResponseKind::CreateTopics(
            CreateTopicsResponse::default().with_topics(
                body.topics
                    .iter()
                    .map(|topic| {
                        CreatableTopicResult::default()
                            .with_name(topic.name.clone())
                            .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED)
                            .with_error_message(why())
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteTopics(body) => {
            let names = body.topic_names.iter().cloned().chain(body.topics.iter().filter_map(|t| t.name.clone()));
            ResponseKind::DeleteTopics(
                DeleteTopicsResponse::default().with_responses(
                    names
                        .map(|name| {
                            let result = DeletableTopicResult::default()
                                .with_name(Some(name))
                                .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
                            if version >= 5 { result.with_error_message(why()) } else { result }
                        })
                        .collect(),
                ),
            )
        }
        RequestKind::CreatePartitions(body) => ResponseKind::CreatePartitions(
            CreatePartitionsResponse::default().with_results(
                body.topics
                    .iter()
                    .map(|topic| {
                        CreatePartitionsTopicResult::default()
                            .with_name(topic.name.clone())
                            .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED)
                            .with_error_message(why())
                    })
                    .collect(),
            ),
        ),
        RequestKind::AlterConfigs(body) => ResponseKind::AlterConfigs(refused_config_changes!(
            body,
            kafka_protocol::messages::AlterConfigsResponse,
            kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse
        )),
        RequestKind::IncrementalAlterConfigs(body) => ResponseKind::IncrementalAlterConfigs(refused_config_changes!(
            body,
            kafka_protocol::messages::IncrementalAlterConfigsResponse,
            kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse
        )),
        _ => return None,
    })
}
