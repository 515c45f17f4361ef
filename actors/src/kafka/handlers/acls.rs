//! CreateAcls, DescribeAcls and DeleteAcls over the bindings of [`crate::acl`], and the checks
//! that refuse an administration request its caller may not make.

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsResponse, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse, DescribeUserScramCredentialsResponse, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

use crate::acl::{
    AclBinding, AclFilter, BindingError, Operation, PatternFilter, PatternType, Resource, ResourceType,
    permission_code, permission_from_code,
};
use crate::context::NodeContext;
use crate::kafka::codes;
use crate::kafka::handlers::Caller;

/// The most bindings a cluster keeps: CreateAcls past it is refused.
pub const MAX_BINDINGS: usize = 10_000;

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

fn binding_of(creation: &AclCreation) -> Result<AclBinding, BindingError> {
    let pattern = match creation.resource_pattern_type {
        3 => PatternType::Literal,
        4 => PatternType::Prefixed,
        _ => return Err(BindingError::NotConcrete("the pattern type")),
    };
    let binding = AclBinding {
        resource_type: ResourceType::from_code(creation.resource_type)
            .ok_or(BindingError::NotConcrete("the resource type"))?,
        name: creation.resource_name.to_string(),
        pattern,
        principal: creation.principal.to_string(),
        host: creation.host.to_string(),
        operation: Operation::from_code(creation.operation).ok_or(BindingError::NotConcrete("the operation"))?,
        permission: permission_from_code(creation.permission_type)
            .ok_or(BindingError::NotConcrete("the permission type"))?,
    };
    binding.check()?;
    Ok(binding)
}

/// A filter's fields as Kafka sends them (DescribeAcls and DeleteAcls share them): ANY is 1,
/// an absent string any.
#[allow(clippy::too_many_arguments)]
fn filter_of(
    resource_type: i8,
    name: &Option<StrBytes>,
    pattern: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    fn any_or<T>(code: i8, what: &str) -> Result<Option<T>, String> {
        if code == 1 { Ok(None) } else { Err(format!("unknown {what} code {code}")) }
    }
    Ok(AclFilter {
        resource_type: match ResourceType::from_code(resource_type) {
            Some(kind) => Some(kind),
            None => any_or(resource_type, "resource type")?,
        },
        name: name.as_ref().map(|name| name.to_string()),
        pattern: PatternFilter::from_code(pattern).ok_or_else(|| format!("unknown pattern type code {pattern}"))?,
        principal: principal.as_ref().map(|principal| principal.to_string()),
        host: host.as_ref().map(|host| host.to_string()),
        operation: match Operation::from_code(operation) {
            Some(operation) => Some(operation),
            None => any_or(operation, "operation")?,
        },
        permission: match permission_from_code(permission) {
            Some(permission) => Some(permission),
            None => any_or(permission, "permission type")?,
        },
    })
}

fn delete_filter(filter: &DeleteAclsFilter) -> Result<AclFilter, String> {
    filter_of(
        filter.resource_type_filter,
        &filter.resource_name_filter,
        filter.pattern_type_filter,
        &filter.principal_filter,
        &filter.host_filter,
        filter.operation,
        filter.permission_type,
    )
}

/// Answers CreateAcls: each binding checked, the valid ones committed to the controller at once.
pub async fn create_acls(ctx: &NodeContext, request: CreateAclsRequest) -> CreateAclsResponse {
    let checked: Vec<Result<AclBinding, String>> =
        request.creations.iter().map(|creation| binding_of(creation).map_err(|error| error.to_string())).collect();
    let valid: Vec<AclBinding> = checked.iter().filter_map(|result| result.as_ref().ok().cloned()).collect();
    let held = ctx.authorizer.bindings().snapshot().len();
    let committed: Result<(), (i16, String)> = if valid.is_empty() {
        Ok(())
    } else if held + valid.len() > MAX_BINDINGS {
        Err((codes::INVALID_REQUEST, format!("the cluster keeps at most {MAX_BINDINGS} ACL bindings ({held} held)")))
    } else {
        ctx.change_acls(valid, Vec::new()).await.map_err(|error| (codes::UNKNOWN_SERVER_ERROR, error.to_string()))
    };
    let results = checked
        .into_iter()
        .map(|result| match (result, &committed) {
            (Err(why), _) => {
                AclCreationResult::default().with_error_code(codes::INVALID_REQUEST).with_error_message(Some(text(why)))
            }
            (Ok(_), Err((code, why))) => {
                AclCreationResult::default().with_error_code(*code).with_error_message(Some(text(why.clone())))
            }
            (Ok(_), Ok(())) => AclCreationResult::default(),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

fn description(binding: &AclBinding) -> AclDescription {
    AclDescription::default()
        .with_principal(text(binding.principal.clone()))
        .with_host(text(binding.host.clone()))
        .with_operation(binding.operation.code())
        .with_permission_type(permission_code(binding.permission))
}

/// Answers DescribeAcls: the bindings the filter selects, grouped by resource.
pub fn describe_acls(ctx: &NodeContext, request: DescribeAclsRequest) -> DescribeAclsResponse {
    let filter = match filter_of(
        request.resource_type_filter,
        &request.resource_name_filter,
        request.pattern_type_filter,
        &request.principal_filter,
        &request.host_filter,
        request.operation,
        request.permission_type,
    ) {
        Ok(filter) => filter,
        Err(why) => {
            return DescribeAclsResponse::default()
                .with_error_code(codes::INVALID_REQUEST)
                .with_error_message(Some(text(why)));
        }
    };
    let bindings = ctx.authorizer.bindings().snapshot();
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    // the set is ordered by resource type, name and pattern first: each resource's bindings are adjacent
    for binding in bindings.iter().filter(|binding| filter.selects(binding)) {
        let same = resources.last().is_some_and(|last| {
            last.resource_type == binding.resource_type.code()
                && last.resource_name.as_str() == binding.name
                && last.pattern_type == binding.pattern.code()
        });
        if !same {
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(binding.resource_type.code())
                    .with_resource_name(text(binding.name.clone()))
                    .with_pattern_type(binding.pattern.code()),
            );
        }
        if let Some(last) = resources.last_mut() {
            last.acls.push(description(binding));
        }
    }
    DescribeAclsResponse::default().with_resources(resources)
}

/// Answers DeleteAcls: every binding a filter selects goes, in one change to the controller.
pub async fn delete_acls(ctx: &NodeContext, request: DeleteAclsRequest) -> DeleteAclsResponse {
    let bindings = ctx.authorizer.bindings().snapshot();
    let selected: Vec<Result<Vec<AclBinding>, String>> = request
        .filters
        .iter()
        .map(|filter| {
            delete_filter(filter)
                .map(|filter| bindings.iter().filter(|binding| filter.selects(binding)).cloned().collect())
        })
        .collect();
    let mut doomed: Vec<AclBinding> =
        selected.iter().filter_map(|result| result.as_ref().ok()).flatten().cloned().collect();
    doomed.sort();
    doomed.dedup();
    let committed = if doomed.is_empty() { Ok(()) } else { ctx.change_acls(Vec::new(), doomed).await };
    let results = selected
        .into_iter()
        .map(|result| match (result, &committed) {
            (Err(why), _) => DeleteAclsFilterResult::default()
                .with_error_code(codes::INVALID_REQUEST)
                .with_error_message(Some(text(why))),
            (Ok(_), Err(error)) => DeleteAclsFilterResult::default()
                .with_error_code(codes::UNKNOWN_SERVER_ERROR)
                .with_error_message(Some(text(error.to_string()))),
            (Ok(matched), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                matched
                    .iter()
                    .map(|binding| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(binding.resource_type.code())
                            .with_resource_name(text(binding.name.clone()))
                            .with_pattern_type(binding.pattern.code())
                            .with_principal(text(binding.principal.clone()))
                            .with_host(text(binding.host.clone()))
                            .with_operation(binding.operation.code())
                            .with_permission_type(permission_code(binding.permission))
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

const CLUSTER_REFUSED: &str = "not authorized on the cluster: needs admin = true or an ACL that allows it";

/// Whether `caller` may make this administration request as a whole (every resource it
/// names); `Some(refusal)` when it may not. Requests of other kinds are checked by their handlers.
pub fn refusal(ctx: &NodeContext, caller: &Caller, request: &RequestKind, version: i16) -> Option<ResponseKind> {
    let may = |operation, resource: Resource<'_>| caller.may(ctx, operation, resource);
    let topic_config = |resource_type: i8, name: &str| match resource_type {
        2 => may(Operation::AlterConfigs, Resource::Topic(name)),
        _ => may(Operation::AlterConfigs, Resource::Cluster),
    };
    let allowed = match request {
        RequestKind::CreateTopics(body) => {
            body.topics.iter().all(|topic| caller.may_create(ctx, topic.name.0.as_str()))
        }
        RequestKind::DeleteTopics(body) => body
            .topic_names
            .iter()
            .chain(body.topics.iter().filter_map(|topic| topic.name.as_ref()))
            .all(|name| may(Operation::Delete, Resource::Topic(name.0.as_str()))),
        RequestKind::CreatePartitions(body) => {
            body.topics.iter().all(|topic| may(Operation::Alter, Resource::Topic(topic.name.0.as_str())))
        }
        RequestKind::AlterConfigs(body) => {
            body.resources.iter().all(|resource| topic_config(resource.resource_type, resource.resource_name.as_str()))
        }
        RequestKind::IncrementalAlterConfigs(body) => {
            body.resources.iter().all(|resource| topic_config(resource.resource_type, resource.resource_name.as_str()))
        }
        RequestKind::CreateAcls(_) | RequestKind::DeleteAcls(_) => may(Operation::Alter, Resource::Cluster),
        RequestKind::DescribeAcls(_) | RequestKind::DescribeUserScramCredentials(_) => {
            may(Operation::Describe, Resource::Cluster)
        }
        RequestKind::AlterUserScramCredentials(_) => may(Operation::Alter, Resource::Cluster),
        _ => true,
    };
    if allowed {
        return None;
    }
    let why = || Some(text(CLUSTER_REFUSED));
    Some(match request {
        RequestKind::CreateAcls(body) => ResponseKind::CreateAcls(
            CreateAclsResponse::default().with_results(
                body.creations
                    .iter()
                    .map(|_| {
                        AclCreationResult::default()
                            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
                            .with_error_message(why())
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteAcls(body) => ResponseKind::DeleteAcls(
            DeleteAclsResponse::default().with_filter_results(
                body.filters
                    .iter()
                    .map(|_| {
                        DeleteAclsFilterResult::default()
                            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
                            .with_error_message(why())
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeAcls(_) => ResponseKind::DescribeAcls(
            DescribeAclsResponse::default()
                .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(why()),
        ),
        // users named are refused one by one: librdkafka (2.16 and before) frees a string it never
        // allocated when this response carries a top-level error, and aborts; every client reads
        // per-user errors. Describing every user can only be refused at the top, as Kafka does.
        RequestKind::DescribeUserScramCredentials(body) => {
            let mut response = DescribeUserScramCredentialsResponse::default();
            match body.users.as_deref() {
                Some(users) if !users.is_empty() => {
                    for user in users {
                        if !response.results.iter().any(|result| result.user == user.name) {
                            response.results.push(
                                DescribeUserScramCredentialsResult::default()
                                    .with_user(user.name.clone())
                                    .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
                                    .with_error_message(why()),
                            );
                        }
                    }
                }
                _ => response = response.with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED).with_error_message(why()),
            }
            ResponseKind::DescribeUserScramCredentials(response)
        }
        RequestKind::AlterUserScramCredentials(body) => {
            let users = body.deletions.iter().map(|d| &d.name).chain(body.upsertions.iter().map(|u| &u.name));
            let mut results: Vec<AlterUserScramCredentialsResult> = Vec::new();
            for user in users {
                if !results.iter().any(|result| &result.user == user) {
                    results.push(
                        AlterUserScramCredentialsResult::default()
                            .with_user(user.clone())
                            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
                            .with_error_message(why()),
                    );
                }
            }
            ResponseKind::AlterUserScramCredentials(AlterUserScramCredentialsResponse::default().with_results(results))
        }
        other => crate::kafka::handlers::admin::refused(other, version)?,
    })
}
