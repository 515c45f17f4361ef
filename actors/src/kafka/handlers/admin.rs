//! CreateTopics, DeleteTopics and CreatePartitions: managing free streams from Kafka tools.

use kafka_protocol::messages::create_partitions_response::{CreatePartitionsResponse, CreatePartitionsTopicResult};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{CreatableTopicResult, CreateTopicsResponse};
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::messages::{CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::stream::def::{StreamDef, StreamDefError};
use crate::stream::registry::StreamError;

fn message(text: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(text.into()))
}

/// Turns a CreatableTopic into a free stream definition, or an error code and message.
fn stream_def(ctx: &NodeContext, topic: &CreatableTopic) -> Result<StreamDef, (i16, String)> {
    let name = topic.name.0.to_string();
    let partitions = match topic.num_partitions {
        -1 => ctx.kafka.default_partitions,
        n if n >= 1 => n as u32,
        n => return Err((codes::INVALID_PARTITIONS, format!("num_partitions {n} must be positive"))),
    };
    let replication_factor = match topic.replication_factor {
        -1 => ctx.default_replication_factor(),
        1 => 1,
        n if n >= 1 && ctx.catalog().is_some() => n as u16,
        n => {
            return Err((
                codes::INVALID_REPLICATION_FACTOR,
                format!("replication factor {n} is not available on a node that is not part of a cluster"),
            ));
        }
    };
    if !topic.assignments.is_empty() {
        return Err((codes::INVALID_REQUEST, "manual replica assignments are not supported yet".to_string()));
    }
    let mut def = StreamDef::free(&name, partitions);
    def.replication_factor = replication_factor;
    for config in &topic.configs {
        let key = config.name.as_str();
        let value = config.value.as_ref().map(|v| v.as_str()).unwrap_or("");
        let parse =
            |v: &str| v.parse::<i64>().map_err(|_| (codes::INVALID_CONFIG, format!("{key}={v} is not a number")));
        match key {
            "retention.ms" => def.retention_ms = Some(parse(value)?).filter(|ms| *ms > 0),
            "retention.bytes" => def.retention_bytes = Some(parse(value)?).filter(|b| *b > 0).map(|b| b as u64),
            // accepted and ignored: they describe what every stream already does
            "cleanup.policy" if value == "delete" => {}
            "min.insync.replicas" | "segment.bytes" | "segment.ms" | "max.message.bytes" | "message.timestamp.type" => {
            }
            other => return Err((codes::INVALID_CONFIG, format!("unsupported topic config {other}"))),
        }
    }
    def.validate().map_err(|error| match error {
        StreamDefError::InvalidReplicationFactor => (codes::INVALID_REPLICATION_FACTOR, error.to_string()),
        error => (codes::INVALID_TOPIC_EXCEPTION, error.to_string()),
    })?;
    Ok(def)
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
            Ok(def) if request.validate_only => Ok(def),
            Ok(def) => match ctx.create_stream(def.clone()).await {
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

/// Answers CreatePartitions.
pub async fn create_partitions(ctx: &NodeContext, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let name = topic.name.0.to_string();
        let outcome = match ctx.streams.get(&name) {
            None => Err((codes::UNKNOWN_TOPIC_OR_PARTITION, format!("topic {name} does not exist"))),
            Some(stream) if topic.count <= stream.def.partitions as i32 => Err((
                codes::INVALID_PARTITIONS,
                format!("topic {name} has {} partitions; the new count must be larger", stream.def.partitions),
            )),
            Some(stream) if stream.replicated() => Err((
                codes::INVALID_REQUEST,
                format!("topic {name} belongs to the cluster: adding partitions to it is not supported yet"),
            )),
            Some(_) if request.validate_only => Ok(()),
            Some(_) => ctx
                .streams
                .add_partitions(&name, topic.count as u32)
                .await
                .map_err(|e| (codes::INVALID_PARTITIONS, e.to_string())),
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((code, text)) => result.with_error_code(code).with_error_message(message(text)),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
