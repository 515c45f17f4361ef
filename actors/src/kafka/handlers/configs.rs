//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: a stream's topic configs, and
//! the one place that says which Kafka topic configs a stream takes (CreateTopics too).
//!
//! A stream takes `retention.ms` and `retention.bytes` (changed at run time: the next
//! retention pass applies them, on every replica of a stream of the cluster) and accepts the
//! configs that describe what every stream does already (`cleanup.policy=delete`,
//! `compression.type=producer`, ...). Anything else is `INVALID_CONFIG` naming the key, never
//! silently ignored. Broker settings are the node's configuration file.

use kafka_protocol::messages::alter_configs_response::{AlterConfigsResourceResponse, AlterConfigsResponse};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse as IncrementalResourceResponse, IncrementalAlterConfigsResponse,
};
use kafka_protocol::messages::{AlterConfigsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest};
use kafka_protocol::protocol::StrBytes;

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::handlers::admin::create_error;
use crate::stream::def::{StreamDef, StreamKind};
use crate::stream::registry::StreamError;

const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;
/// DescribeConfigs config sources
const TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;
/// IncrementalAlterConfigs operations
const SET: i8 = 0;
const DELETE: i8 = 1;

/// An error code and the message that explains it.
pub type ConfigError = (i16, String);

fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

fn invalid(text: String) -> ConfigError {
    (codes::INVALID_CONFIG, text)
}

/// Sets one topic config on a definition; `None` returns it to its default.
pub fn set_topic_config(def: &mut StreamDef, key: &str, value: Option<&str>) -> Result<(), ConfigError> {
    // -1 is Kafka's "unlimited"; a limit is positive
    let limit = |value: Option<&str>| -> Result<Option<i64>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        match value.trim().parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(invalid(format!("{key}={value}: must be -1 (unlimited) or a positive number"))),
        }
    };
    let only = |allowed: &[&str], why: &str| match value {
        None => Ok(()),
        Some(value) if allowed.contains(&value.trim()) => Ok(()),
        Some(value) => Err(invalid(format!("{key}={value} is not supported: {why}"))),
    };
    match key {
        "retention.ms" => def.retention_ms = limit(value)?,
        "retention.bytes" => def.retention_bytes = limit(value)?.map(|bytes| bytes as u64),
        "cleanup.policy" => only(&["delete"], "streams delete by retention; compaction is not built")?,
        "compression.type" => only(&["producer"], "batches are stored as their producers compressed them")?,
        "message.timestamp.type" => only(&["CreateTime"], "records keep their producers' timestamps")?,
        // acks=all waits for a raft majority and is refused (NOT_ENOUGH_REPLICAS) while fewer
        // than that are in sync: any floor up to a majority holds; one above it would not
        "min.insync.replicas" => {
            let majority = def.replication_factor / 2 + 1;
            match value.map(|value| value.trim().parse::<u16>()) {
                None => {}
                Some(Ok(floor)) if (1..=majority).contains(&floor) => {}
                Some(Ok(floor)) if floor > majority => {
                    return Err(invalid(format!(
                        "{key}={floor} is not supported: acks=all waits for a raft majority of the {} replicas \
                         ({majority}), and is refused with NOT_ENOUGH_REPLICAS while fewer are in sync",
                        def.replication_factor
                    )));
                }
                _ => return Err(invalid(format!("{key}={}: must be a positive number", value.unwrap_or_default()))),
            }
        }
        // accepted: they tune what a stream does by itself (segments roll by the node's log
        // settings, batches are bounded by kafka.max_message_bytes)
        "segment.bytes" | "segment.ms" | "max.message.bytes" => {}
        // what the stream is: read-only, though a client may send back what it read (kafka-python's
        // AlterConfigs resends every config set on the topic)
        "tidewater.stream.kind" | "tidewater.mqtt.filter" => {
            let current =
                if key == "tidewater.mqtt.filter" { def.filter.clone().unwrap_or_default() } else { kind(def) };
            if value.is_some_and(|value| value != current) {
                return Err(invalid(format!("{key} is read-only: it is what the stream is")));
            }
        }
        other => return Err(invalid(format!("unsupported topic config {other}"))),
    }
    Ok(())
}

/// A config as DescribeConfigs answers it: key, value, source, read-only.
type Described = (&'static str, String, i8, bool);

fn kind(def: &StreamDef) -> String {
    if def.kind == StreamKind::Bound { "bound" } else { "free" }.to_string()
}

/// The topic configs a stream answers with.
fn topic_configs(ctx: &NodeContext, def: &StreamDef) -> Vec<Described> {
    let source = |set: bool| if set { TOPIC_CONFIG } else { DEFAULT_CONFIG };
    let majority = def.replication_factor / 2 + 1;
    vec![
        ("cleanup.policy", "delete".to_string(), DEFAULT_CONFIG, false),
        ("compression.type", "producer".to_string(), DEFAULT_CONFIG, false),
        ("retention.ms", def.retention_ms.unwrap_or(-1).to_string(), source(def.retention_ms.is_some()), false),
        (
            "retention.bytes",
            def.retention_bytes.map_or(-1, |b| b as i64).to_string(),
            source(def.retention_bytes.is_some()),
            false,
        ),
        ("min.insync.replicas", majority.to_string(), DEFAULT_CONFIG, true),
        ("max.message.bytes", ctx.kafka.max_message_bytes.to_string(), STATIC_BROKER_CONFIG, true),
        ("message.timestamp.type", "CreateTime".to_string(), DEFAULT_CONFIG, true),
        ("tidewater.stream.kind", kind(def), TOPIC_CONFIG, true),
        ("tidewater.mqtt.filter", def.filter.clone().unwrap_or_default(), source(def.filter.is_some()), true),
    ]
}

/// Answers DescribeConfigs for topics (streams) and this broker.
pub fn describe_configs(ctx: &NodeContext, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let wanted: Option<Vec<String>> =
                resource.configuration_keys.map(|keys| keys.iter().map(|k| k.to_string()).collect());
            let (error_code, configs) = match resource.resource_type {
                TOPIC_RESOURCE => match ctx.streams.get(&name) {
                    Some(stream) => (codes::NONE, topic_configs(ctx, &stream.def)),
                    None => (codes::UNKNOWN_TOPIC_OR_PARTITION, Vec::new()),
                },
                BROKER_RESOURCE => (
                    codes::NONE,
                    vec![
                        ("auto.create.topics.enable", ctx.kafka.auto_create_topics.to_string()),
                        ("num.partitions", ctx.kafka.default_partitions.to_string()),
                        ("default.replication.factor", ctx.default_replication_factor().to_string()),
                        ("message.max.bytes", ctx.kafka.max_message_bytes.to_string()),
                    ]
                    .into_iter()
                    .map(|(key, value)| (key, value, STATIC_BROKER_CONFIG, true))
                    .collect(),
                ),
                _ => (codes::INVALID_REQUEST, Vec::new()),
            };
            let configs = configs
                .into_iter()
                .filter(|(key, ..)| wanted.as_ref().is_none_or(|w| w.iter().any(|k| k == key)))
                .map(|(key, value, source, read_only)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(s(key))
                        .with_value(Some(s(value)))
                        .with_read_only(read_only)
                        .with_config_source(source)
                })
                .collect();
            DescribeConfigsResult::default()
                .with_error_code(error_code)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name)
                .with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// The Kafka error a failed change of a stream answers with.
fn alter_error(error: StreamError) -> ConfigError {
    match error {
        error @ StreamError::Immutable { .. } => invalid(error.to_string()),
        StreamError::Unknown(name) => (codes::UNKNOWN_TOPIC_OR_PARTITION, format!("topic {name} does not exist")),
        error => create_error(error),
    }
}

/// Changes one resource: `change` turns the stream's definition into the new one.
async fn alter_resource(
    ctx: &NodeContext,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(&mut StreamDef) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    match resource_type {
        TOPIC_RESOURCE => {}
        BROKER_RESOURCE => {
            return Err(invalid(
                "broker configs are the node's configuration file (tidewater.toml); change them there".into(),
            ));
        }
        other => return Err((codes::INVALID_REQUEST, format!("resource type {other} has no configs here"))),
    }
    let stream = ctx
        .streams
        .get(name)
        .ok_or_else(|| (codes::UNKNOWN_TOPIC_OR_PARTITION, format!("topic {name} does not exist")))?;
    let mut def = stream.def.clone();
    change(&mut def)?;
    stream.def.check_change(&def).map_err(alter_error)?;
    if validate_only || def == stream.def {
        return Ok(());
    }
    ctx.alter_stream(def, None).await.map_err(alter_error)
}

fn split(outcome: Result<(), ConfigError>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (codes::NONE, None),
        Err((code, text)) => (code, Some(s(text))),
    }
}

/// Answers AlterConfigs: each resource's configs are replaced by those given (a config not
/// named returns to its default), as Kafka's legacy API does.
pub async fn alter_configs(ctx: &NodeContext, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let outcome = alter_resource(ctx, resource.resource_type, &name, request.validate_only, |def| {
            def.retention_ms = None;
            def.retention_bytes = None;
            for config in &resource.configs {
                set_topic_config(def, config.name.as_str(), config.value.as_ref().map(|v| v.as_str()))?;
            }
            Ok(())
        })
        .await;
        let (code, message) = split(outcome);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// Answers IncrementalAlterConfigs: SET and DELETE (back to the default) per config; APPEND
/// and SUBTRACT concern list configs, which no stream config of ours is.
pub async fn incremental_alter_configs(
    ctx: &NodeContext,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let outcome = alter_resource(ctx, resource.resource_type, &name, request.validate_only, |def| {
            for config in &resource.configs {
                let key = config.name.as_str();
                match config.config_operation {
                    SET => set_topic_config(def, key, Some(config.value.as_ref().map_or("", |v| v.as_str())))?,
                    DELETE => set_topic_config(def, key, None)?,
                    operation => {
                        return Err(invalid(format!("{key}: operation {operation} applies to list configs only")));
                    }
                }
            }
            Ok(())
        })
        .await;
        let (code, message) = split(outcome);
        responses.push(
            IncrementalResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
