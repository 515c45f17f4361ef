//! One module per group of Kafka APIs; each handler takes the decoded request body and
//! returns the response body.

pub mod acls;
pub mod admin;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod meta;
pub mod produce;
pub mod scram;

use kafka_protocol::messages::{RequestKind, ResponseKind};

use crate::acl::{Operation, Principal, Resource};
use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::wire::{self, Request};

/// Who sent a request: what the permission checks of [`crate::acl`] weigh.
#[derive(Debug, Clone)]
pub struct Caller {
    /// the SASL user; `None`: anonymous
    pub user: Option<String>,
    /// the request header's client id
    pub client_id: String,
    /// the client's address
    pub host: std::net::IpAddr,
    /// an `admin = true` user: Kafka's super user
    pub super_user: bool,
}

impl Caller {
    /// Whether the caller may do `operation` on `resource`.
    pub fn may(&self, ctx: &NodeContext, operation: Operation, resource: Resource<'_>) -> bool {
        self.super_user
            || ctx.authorizer.permits(
                &Principal { user: self.user.as_deref(), client_id: Some(&self.client_id), host: Some(self.host) },
                operation,
                resource,
            )
    }

    /// Whether the caller may create the topic `name` (CREATE on the cluster or on the topic).
    pub fn may_create(&self, ctx: &NodeContext, name: &str) -> bool {
        self.may(ctx, Operation::Create, Resource::Cluster) || self.may(ctx, Operation::Create, Resource::Topic(name))
    }
}

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

/// Routes a decoded request to its handler, for `caller` (the handlers refuse what it may not do).
pub async fn dispatch(ctx: &NodeContext, request: Request, caller: &Caller) -> Reply {
    let version = request.api_version;
    let client_id = request.client_id.clone().unwrap_or_default();
    let response = match request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(wire::api_versions_response(version)),
        RequestKind::Metadata(body) => ResponseKind::Metadata(meta::metadata(ctx, body, version, caller).await),
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
            let response = produce::produce(ctx, body, version, caller).await;
            if acks == 0 {
                return Reply::None;
            }
            ResponseKind::Produce(response)
        }
        RequestKind::Fetch(body) => {
            let (response, sets) = fetch::fetch(ctx, body, version, caller).await;
            return Reply::SendFetch(ResponseKind::Fetch(response), sets);
        }
        RequestKind::ListOffsets(body) => ResponseKind::ListOffsets(fetch::list_offsets(ctx, body, version, caller)),
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
        RequestKind::CreateAcls(body) => ResponseKind::CreateAcls(acls::create_acls(ctx, body).await),
        RequestKind::DescribeAcls(body) => ResponseKind::DescribeAcls(acls::describe_acls(ctx, body)),
        RequestKind::DeleteAcls(body) => ResponseKind::DeleteAcls(acls::delete_acls(ctx, body).await),
        RequestKind::DescribeUserScramCredentials(body) => {
            ResponseKind::DescribeUserScramCredentials(scram::describe_user_scram_credentials(ctx, body))
        }
        RequestKind::AlterUserScramCredentials(body) => {
            ResponseKind::AlterUserScramCredentials(scram::alter_user_scram_credentials(ctx, body).await)
        }
        other => match groups::dispatch(ctx, other, version, &client_id, caller).await {
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
