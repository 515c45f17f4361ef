//! One module per group of Kafka APIs; each handler takes the decoded request body and
//! returns the response body.

pub mod admin;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod meta;
pub mod produce;

use kafka_protocol::messages::{RequestKind, ResponseKind};

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::wire::{self, Request};

/// What the connection does with a handled request.
#[allow(clippy::large_enum_variant)] // one per request, consumed at once
pub enum Reply {
    /// Send this response.
    Send(ResponseKind),
    /// Send this Fetch response, writing the stored batches of `RecordSets` as they are.
    SendFetch(ResponseKind, fetch::RecordSets),
    /// Send nothing (Produce with acks=0).
    None,
    /// Close the connection.
    Close,
}

/// Routes a decoded request to its handler; `may_create`: whether Metadata may create the
/// streams it names (auto-creation is an administration too).
pub async fn dispatch(ctx: &NodeContext, request: Request, client_host: &str, may_create: bool) -> Reply {
    let version = request.api_version;
    let client_id = request.client_id.clone().unwrap_or_default();
    let response = match request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(wire::api_versions_response(version)),
        RequestKind::Metadata(body) => ResponseKind::Metadata(meta::metadata(ctx, body, version, may_create).await),
        RequestKind::Produce(body) => {
            let acks = body.acks;
            if version < wire::PRODUCE_MIN_SERVED {
                // v0-v2 are advertised only so that old librdkafka compresses; refuse them per partition
                if acks == 0 {
                    return Reply::Close;
                }
                return Reply::Send(ResponseKind::Produce(wire::produce_error_response(
                    &body,
                    codes::UNSUPPORTED_VERSION,
                )));
            }
            let response = produce::produce(ctx, body, version).await;
            if acks == 0 {
                return Reply::None;
            }
            ResponseKind::Produce(response)
        }
        RequestKind::Fetch(body) => {
            let (response, sets) = fetch::fetch(ctx, body, version).await;
            return Reply::SendFetch(ResponseKind::Fetch(response), sets);
        }
        RequestKind::ListOffsets(body) => ResponseKind::ListOffsets(fetch::list_offsets(ctx, body, version)),
        RequestKind::OffsetForLeaderEpoch(body) => {
            ResponseKind::OffsetForLeaderEpoch(fetch::offset_for_leader_epoch(ctx, body))
        }
        RequestKind::InitProducerId(body) => ResponseKind::InitProducerId(produce::init_producer_id(ctx, body)),
        RequestKind::CreateTopics(body) => ResponseKind::CreateTopics(admin::create_topics(ctx, body, version).await),
        RequestKind::DeleteTopics(body) => ResponseKind::DeleteTopics(admin::delete_topics(ctx, body, version).await),
        RequestKind::CreatePartitions(body) => {
            ResponseKind::CreatePartitions(admin::create_partitions(ctx, body).await)
        }
        RequestKind::DescribeConfigs(body) => ResponseKind::DescribeConfigs(configs::describe_configs(ctx, body)),
        RequestKind::AlterConfigs(body) => ResponseKind::AlterConfigs(configs::alter_configs(ctx, body).await),
        RequestKind::IncrementalAlterConfigs(body) => {
            ResponseKind::IncrementalAlterConfigs(configs::incremental_alter_configs(ctx, body).await)
        }
        RequestKind::DescribeCluster(body) => ResponseKind::DescribeCluster(meta::describe_cluster(ctx, body)),
        other => match groups::dispatch(ctx, other, version, &client_id, client_host).await {
            Some(response) => response,
            None => match wire::error_response(request.api_key, version, codes::UNSUPPORTED_VERSION) {
                Some(response) => response,
                None => return Reply::Close,
            },
        },
    };
    Reply::Send(response)
}

#[cfg(test)]
mod encode_tests;
