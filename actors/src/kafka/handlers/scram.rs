//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554) over the users the
//! controller's metadata keeps: a credential set through any node serves SASL PLAIN and SCRAM
//! on Kafka and a password on MQTT on every node, as a user of `[[auth.users]]` does.
//!
//! A credential is what the client computed: the salt, the iteration count and
//! `SaltedPassword = Hi(password, salt, iterations)`, which is exactly a
//! [`PasswordHash`] of ours; the password itself never reaches the broker. Users of this
//! node's `[[auth.users]]` are described too, but are changed only in the config.

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::context::NodeContext;
use crate::kafka::codes;
use crate::mqtt::auth::{HashAlgorithm, PasswordHash};

/// Kafka's bounds on a SCRAM credential's iteration count.
pub const MIN_ITERATIONS: i32 = 4096;
/// The upper bound (Kafka's `ScramMechanism.maxIterations`).
pub const MAX_ITERATIONS: i32 = 16384;
/// The most users the cluster's metadata keeps: an upsertion of a new user past it is refused.
pub const MAX_USERS: usize = 10_000;

type Outcome = Result<(), (i16, String)>;

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

fn mechanism(code: i8) -> Result<HashAlgorithm, (i16, String)> {
    HashAlgorithm::from_kafka_code(code)
        .ok_or_else(|| (codes::UNSUPPORTED_SASL_MECHANISM, format!("unknown SCRAM mechanism {code}")))
}

fn not_in_config(ctx: &NodeContext, user: &str) -> Outcome {
    if user.is_empty() {
        return Err((codes::UNACCEPTABLE_CREDENTIAL, "the user name is empty".into()));
    }
    if ctx.authorizer.is_config_user(user) {
        return Err((
            codes::UNACCEPTABLE_CREDENTIAL,
            format!("{user} is a user of this node's [[auth.users]]: change it in the config"),
        ));
    }
    Ok(())
}

/// Answers AlterUserScramCredentials: every deletion and upsertion checked, the valid ones
/// committed to the controller in one change; one result per user named.
pub async fn alter_user_scram_credentials(
    ctx: &NodeContext,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let held = ctx.authorizer.cluster_users().snapshot();
    // each user answered once, in the order first named; a (user, mechanism) pair named twice
    // is refused (KIP-554), a user's two mechanisms are not
    let pairs: Vec<(&str, i8)> = request
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism))
        .chain(request.upsertions.iter().map(|u| (u.name.as_str(), u.mechanism)))
        .collect();
    let mut named: Vec<String> = Vec::new();
    for (name, _) in &pairs {
        if !named.iter().any(|user| user == name) {
            named.push(name.to_string());
        }
    }
    let once = |user: &str, mechanism: i8| pairs.iter().filter(|pair| **pair == (user, mechanism)).count() == 1;
    let duplicate =
        || (codes::DUPLICATE_RESOURCE, "a user's credential may be altered once per mechanism and request".to_string());
    // what a deletion and an upsertion check alike: the pair once, not a config user, a mechanism
    let alterable = |user: &str, code: i8| {
        if !once(user, code) {
            return Err(duplicate());
        }
        not_in_config(ctx, user)?;
        mechanism(code)
    };
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    let (mut upsert, mut delete) = (Vec::new(), Vec::new());
    for deletion in &request.deletions {
        let user = deletion.name.to_string();
        let checked = (|| {
            let algorithm = alterable(&user, deletion.mechanism)?;
            if !held.get(&user).is_some_and(|hashes| hashes.iter().any(|hash| hash.algorithm() == algorithm)) {
                return Err((
                    codes::RESOURCE_NOT_FOUND,
                    format!("{user} has no {} credential to delete", algorithm.scram_name()),
                ));
            }
            Ok(algorithm)
        })();
        if let Ok(algorithm) = checked {
            delete.push((user.clone(), algorithm));
        }
        outcomes.push((user, checked.map(|_| ())));
    }
    let new_users = request.upsertions.iter().filter(|u| !held.contains_key(u.name.as_str())).count();
    for upsertion in &request.upsertions {
        let user = upsertion.name.to_string();
        let checked = (|| {
            let algorithm = alterable(&user, upsertion.mechanism)?;
            if upsertion.iterations < MIN_ITERATIONS {
                return Err((
                    codes::UNACCEPTABLE_CREDENTIAL,
                    format!("iterations {} less than minimum {MIN_ITERATIONS}", upsertion.iterations),
                ));
            }
            if upsertion.iterations > MAX_ITERATIONS {
                return Err((
                    codes::UNACCEPTABLE_CREDENTIAL,
                    format!("iterations {} greater than maximum {MAX_ITERATIONS}", upsertion.iterations),
                ));
            }
            if !held.contains_key(&user) && held.len() + new_users > MAX_USERS {
                return Err((
                    codes::INVALID_REQUEST,
                    format!("the cluster keeps at most {MAX_USERS} users ({} held)", held.len()),
                ));
            }
            PasswordHash::from_scram(
                algorithm,
                upsertion.iterations as u32,
                &upsertion.salt,
                &upsertion.salted_password,
            )
            .ok_or_else(|| {
                (
                    codes::UNACCEPTABLE_CREDENTIAL,
                    format!(
                        "a {} credential needs a salt and a salted password of {} bytes",
                        algorithm.scram_name(),
                        algorithm.output_len()
                    ),
                )
            })
        })();
        let outcome = checked.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Ok(hash) = checked {
            upsert.push((user.clone(), hash));
        }
        outcomes.push((user, outcome));
    }
    // a user with any refused alteration keeps what it had: none of its alterations apply
    let refused = |user: &String| outcomes.iter().any(|(name, outcome)| name == user && outcome.is_err());
    upsert.retain(|(user, _)| !refused(user));
    delete.retain(|(user, _)| !refused(user));
    let committed: Outcome = if upsert.is_empty() && delete.is_empty() {
        Ok(())
    } else {
        let (changed, removed) = (upsert.len(), delete.len());
        let result = ctx.change_credentials(upsert, delete).await;
        match &result {
            Ok(()) => tracing::info!(set = changed, removed, "users' SCRAM credentials changed"),
            Err(error) => tracing::warn!(%error, "users' SCRAM credentials not changed"),
        }
        result.map_err(|error| (codes::UNKNOWN_SERVER_ERROR, error.to_string()))
    };
    let results = named
        .into_iter()
        .map(|user| {
            // a user's first failure, else the commit's outcome
            let failure =
                outcomes.iter().filter(|(name, _)| *name == user).find_map(|(_, outcome)| outcome.clone().err());
            let result = AlterUserScramCredentialsResult::default().with_user(text(user));
            match failure.or_else(|| committed.clone().err()) {
                Some((code, why)) => result.with_error_code(code).with_error_message(Some(text(why))),
                None => result,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// Answers DescribeUserScramCredentials: the mechanisms and iteration counts of the users
/// named (all of them, of the config and the cluster, when none is named).
pub fn describe_user_scram_credentials(
    ctx: &NodeContext,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let cluster = ctx.authorizer.cluster_users().snapshot();
    let mut known: std::collections::BTreeMap<&str, Vec<CredentialInfo>> = Default::default();
    let info = |hash: &PasswordHash| {
        CredentialInfo::default()
            .with_mechanism(hash.algorithm().kafka_code())
            .with_iterations(i32::try_from(hash.iterations()).unwrap_or(i32::MAX))
    };
    for (user, hashes) in cluster.iter() {
        known.entry(user.as_str()).or_default().extend(hashes.iter().map(info));
    }
    for (user, hash) in ctx.authorizer.config_users() {
        // the config's hash is the one that serves this user (see `Authorizer::user_credential`)
        known.insert(user, vec![info(hash)]);
    }
    let asked: Vec<String> = match &request.users {
        Some(users) if !users.is_empty() => users.iter().map(|user| user.name.to_string()).collect(),
        _ => known.keys().map(|user| user.to_string()).collect(),
    };
    let mut results: Vec<DescribeUserScramCredentialsResult> = Vec::new();
    for user in &asked {
        if results.iter().any(|result| result.user.as_str() == user) {
            continue;
        }
        let result = DescribeUserScramCredentialsResult::default().with_user(text(user.clone()));
        results.push(if asked.iter().filter(|name| *name == user).count() > 1 {
            result
                .with_error_code(codes::DUPLICATE_RESOURCE)
                .with_error_message(Some(text("a user may be described once per request")))
        } else {
            match known.get(user.as_str()) {
                Some(infos) => result.with_credential_infos(infos.clone()),
                None => result
                    .with_error_code(codes::RESOURCE_NOT_FOUND)
                    .with_error_message(Some(text(format!("{user} has no SCRAM credential")))),
            }
        });
    }
    DescribeUserScramCredentialsResponse::default().with_results(results)
}
