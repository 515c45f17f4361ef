//! The HTTP listener: health, Prometheus metrics and (as features land) the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use tidewater_actors::NodeContext;
use tidewater_actors::mqtt::auth::AdminCredentials;
use tidewater_actors::seams::{Connection, Listener};
use tidewater_actors::stream::def::StreamDef;
use tidewater_actors::stream::registry::{Stream, StreamError};
use tokio::sync::watch;
use tracing::Instrument;

/// Renders the Prometheus text of `/metrics` (the process's recorder lives in `main`).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Renders /metrics; `None` when no recorder is installed (simulation).
    pub metrics: Option<MetricsRender>,
    /// True once every listener is bound.
    pub ready: Arc<AtomicBool>,
    /// The node.
    pub ctx: NodeContext,
    /// The cluster as this node sees it.
    pub cluster: Option<ClusterView>,
}

/// What `GET /api/v1/cluster` reads.
#[derive(Clone)]
pub struct ClusterView {
    /// this node's id
    pub node_id: u64,
    /// the cluster's name
    pub name: String,
    /// the live members
    pub members: watch::Receiver<tidewater_cluster::membership::Members>,
    /// the links to peers
    pub links: Arc<tidewater_cluster::data_plane::PeerLinks>,
    /// the controller group as this node sees it
    pub controller: crate::controller::ControllerView,
}

/// The HTTP routes: `/health` and `/metrics` open, the admin API (`/api/...`) behind
/// [`admin_only`].
pub fn router(state: HttpState) -> Router {
    let admin = Router::new()
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/nodes/{id}/decommission", axum::routing::post(decommission))
        .route("/api/v1/streams", get(list_streams).post(create_stream))
        .route("/api/v1/streams/{name}", get(get_stream).delete(delete_stream))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin_only));
    Router::new().route("/health", get(health)).route("/metrics", get(metrics_text)).merge(admin).with_state(state)
}

/// Lets a request to the admin API through when authentication is not configured (a bare
/// `start`, which says so at start), or when it carries an admin's credentials: `Basic` with
/// a user of `admin = true`, or `Bearer` with the token of `auth.admin_token_hash`. Else 401.
async fn admin_only(
    State(state): State<HttpState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorizer = &state.ctx.authorizer;
    if !authorizer.admin_api_protected() {
        return next.run(request).await;
    }
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let basic = header
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim()).ok());
    let credentials = match (header, &basic) {
        (_, Some(decoded)) => match decoded.iter().position(|byte| *byte == b':') {
            Some(at) => match std::str::from_utf8(&decoded[..at]) {
                Ok(user) => AdminCredentials::Basic(user, &decoded[at + 1..]),
                Err(_) => AdminCredentials::None,
            },
            None => AdminCredentials::None,
        },
        (Some(value), None) => match value.strip_prefix("Bearer ") {
            Some(token) => AdminCredentials::Bearer(token.trim().as_bytes()),
            None => AdminCredentials::None,
        },
        (None, None) => AdminCredentials::None,
    };
    if authorizer.is_admin(credentials) {
        return next.run(request).await;
    }
    let who = match credentials {
        AdminCredentials::None => "no credentials".to_string(),
        AdminCredentials::Basic(user, _) => format!("user {user}"),
        AdminCredentials::Bearer(_) => "a bearer token".to_string(),
    };
    tracing::info!(method = %request.method(), path = %request.uri().path(), %who, "admin API request refused");
    let body = json!({"error": "the admin API needs an admin's credentials: Basic (a user with admin = true) or Bearer (auth.admin_token_hash)"});
    (StatusCode::UNAUTHORIZED, [(axum::http::header::WWW_AUTHENTICATE, "Basic realm=\"tidewater\"")], axum::Json(body))
        .into_response()
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    tidewater_actors::metrics::memory_gauges(state.ctx.node_id, &state.ctx.memory);
    let text = state.metrics.as_ref().map(|render| render()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], text)
}

/// `GET /api/v1/cluster`: the live nodes with their addresses, and this node's links.
async fn cluster_status(State(state): State<HttpState>) -> Response {
    let Some(cluster) = &state.cluster else {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "cluster membership is not running"})))
            .into_response();
    };
    let members = cluster.members.borrow().clone();
    let mut nodes = Vec::new();
    for member in members.values() {
        let link = match cluster.links.link(member.id) {
            Some(link) => ractor::call_t!(link, tidewater_cluster::data_plane::PeerLinkMsg::Status, 500).ok(),
            None => None,
        };
        let address = |address: Option<std::net::SocketAddr>| address.map(|address| address.to_string());
        nodes.push(json!({
            "id": member.id,
            "state": "alive",
            "self": member.id == cluster.node_id,
            "generation": member.generation,
            "gossip": member.gossip.to_string(),
            "rpc": address(member.advertised.rpc),
            "mqtt": address(member.advertised.mqtt),
            "kafka": address(member.advertised.kafka),
            "http": address(member.advertised.http),
            "link": link.map(|link| json!({
                "connected": link.connected,
                "frames_sent": link.frames_sent,
                "messages_sent": link.messages_sent,
                "messages_dropped": link.messages_dropped,
            })),
        }));
    }
    let controller = &cluster.controller;
    let leadership = *controller.leadership.borrow();
    let status = controller.status().await;
    let metadata = controller.metadata.borrow().clone();
    let registered: Vec<Value> = metadata
        .nodes
        .iter()
        .map(|(id, node)| {
            json!({
                "id": id,
                "generation": node.generation,
                "decommissioned": node.decommissioned,
                "replicas": metadata.replicas_on(*id).len(),
            })
        })
        .collect();
    let controller = json!({
        "voters": controller.voters,
        "replica_here": controller.replica.is_some(),
        "leader": leadership.and_then(|leadership| leadership.leader),
        "term": leadership.map(|leadership| leadership.term),
        "is_leader": leadership.is_some_and(|leadership| leadership.is_leader),
        "commit_index": status.as_ref().map(|status| status.commit_index),
        "last_index": status.as_ref().map(|status| status.last_index),
        "high_watermark": status.as_ref().map(|status| status.high_watermark),
        "raft_voters": status.as_ref().map(|status| status.voters.clone()),
        "raft_learners": status.as_ref().map(|status| status.learners.clone()),
        "registered": registered,
    });
    axum::Json(json!({"cluster": cluster.name, "node_id": cluster.node_id, "nodes": nodes, "controller": controller}))
        .into_response()
}

/// `POST /api/v1/cluster/nodes/{id}/decommission`: placement moves the node's replicas to
/// the others; `GET /api/v1/cluster` shows how many it still holds.
async fn decommission(State(state): State<HttpState>, Path(id): Path<u64>) -> Response {
    let Some(catalog) = state.ctx.catalog() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this node is not part of a cluster");
    };
    match catalog.decommission(id).await {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(json!({"id": id, "decommissioned": true}))).into_response(),
        Err(e @ StreamError::Unknown(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// A request's head must arrive within this (hyper's timer; a connection that dribbles or
/// stalls its headers is closed then, so that a slow-loris holds a socket no longer).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves HTTP/1.1 on a listener of the `Net` seam until `shutdown` turns true: one task per
/// connection, each with [`HEADER_READ_TIMEOUT`], closed gracefully at shutdown.
pub async fn serve(listener: Box<dyn Listener>, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let router = router(state);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let io: Box<dyn Connection> = match accepted {
            Ok((io, _peer)) => io,
            Err(error) => {
                // e.g. out of file descriptors: back off instead of spinning
                tracing::warn!(protocol = "http", %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = shutdown.clone();
        connections.spawn(
            async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = stop.changed() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                    }
                }
            }
            .in_current_span(),
        );
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn stream_json(ctx: &NodeContext, stream: &Stream) -> Value {
    let partitions: Vec<Value> = stream
        .partitions
        .iter()
        .map(|p| {
            let offsets = ctx.log_store.offsets(&p.id).unwrap_or_default();
            let mut value = json!({
                "partition": p.id.partition,
                "log_start_offset": offsets.log_start,
                "log_end_offset": offsets.log_end,
                "high_watermark": p.committed_end(offsets.log_start),
            });
            if let Some(view) = &p.replica {
                // this node's view of the partition's raft group
                let leader = view.leader();
                value["replicas"] = json!(view.replicas);
                value["settled"] = json!(view.settled);
                value["in_sync"] = json!(view.in_sync_replicas());
                value["replica_here"] = json!(view.raft.is_some());
                value["leader"] = json!(leader.map(|(leader, _)| leader));
                value["leader_epoch"] = json!(leader.map(|(_, term)| term));
            }
            value
        })
        .collect();
    let mut value = serde_json::to_value(&stream.def).unwrap_or(Value::Null);
    value["partition_offsets"] = Value::Array(partitions);
    value
}

async fn list_streams(State(state): State<HttpState>) -> Response {
    let streams: Vec<Value> = state.ctx.streams.list().iter().map(|s| stream_json(&state.ctx, s)).collect();
    axum::Json(Value::Array(streams)).into_response()
}

async fn get_stream(State(state): State<HttpState>, Path(name): Path<String>) -> Response {
    match state.ctx.streams.get(&name) {
        Some(stream) => axum::Json(stream_json(&state.ctx, &stream)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("stream {name} does not exist")),
    }
}

async fn create_stream(State(state): State<HttpState>, body: Bytes) -> Response {
    let def: StreamDef = match serde_json::from_slice(&body) {
        Ok(def) => def,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid stream definition: {e}")),
    };
    match state.ctx.create_stream(def).await {
        Ok(stream) => (StatusCode::CREATED, axum::Json(stream_json(&state.ctx, &stream))).into_response(),
        Err(e @ StreamError::Exists(_)) => error(StatusCode::CONFLICT, e),
        Err(
            e @ (StreamError::Invalid(_) | StreamError::ReplicationFactor { .. } | StreamError::NotReplicated { .. }),
        ) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ (StreamError::NotController(_) | StreamError::Unavailable(_))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn delete_stream(State(state): State<HttpState>, Path(name): Path<String>) -> Response {
    match state.ctx.delete_stream(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ StreamError::Unknown(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ (StreamError::NotController(_) | StreamError::Unavailable(_))) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
