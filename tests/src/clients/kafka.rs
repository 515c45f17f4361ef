//! A minimal Kafka client over kafka-protocol's message types: one connection over any byte
//! stream (a TCP socket in the bench, a simulated socket in the simulation) that writes
//! length-prefixed requests (pipelined when the caller sends several before receiving) and
//! reads responses in order, plus the helpers a workload needs (create topics, idempotent
//! produce, fetch, list offsets, simple offset commits, walking the records of a batch without
//! allocating). It reads no clock and, but for [`KafkaConn::connect`], opens no socket.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, FetchRequest, FetchResponse, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, ListOffsetsRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, ProduceResponse, ProducerId, RequestHeader, ResponseHeader, SyncGroupRequest,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tidewater_storage::{NewRecord, build_record_batch};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// JoinGroup version the client speaks (member ids assigned by the coordinator).
pub const JOIN_GROUP_VERSION: i16 = 5;
/// SyncGroup version the client speaks.
pub const SYNC_GROUP_VERSION: i16 = 5;
/// Heartbeat version the client speaks.
pub const HEARTBEAT_VERSION: i16 = 4;
/// Produce version the client speaks (flexible, no topic ids).
pub const PRODUCE_VERSION: i16 = 9;
/// Fetch version the client speaks (flexible, topic names).
pub const FETCH_VERSION: i16 = 12;
/// ListOffsets version the client speaks.
pub const LIST_OFFSETS_VERSION: i16 = 7;
/// CreateTopics version the client speaks (the server serves 2 to 7).
pub const CREATE_TOPICS_VERSION: i16 = 4;
/// InitProducerId version the client speaks (the server serves 0 to 4).
pub const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// OffsetCommit version the client speaks (the server serves 2 to 8).
pub const OFFSET_COMMIT_VERSION: i16 = 7;
/// OffsetFetch version the client speaks (the last with per-request topics, not groups).
pub const OFFSET_FETCH_VERSION: i16 = 7;
/// FindCoordinator version used (one key, as before v4).
pub const FIND_COORDINATOR_VERSION: i16 = 3;

/// One Kafka connection over the byte stream `S`.
pub struct KafkaConn<S: AsyncRead + AsyncWrite + Unpin + Send> {
    stream: S,
    out: BytesMut,
    input: BytesMut,
    next_correlation: i32,
}

impl KafkaConn<TcpStream> {
    /// Connects over TCP to `addr`, with Nagle off.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<KafkaConn<TcpStream>> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to kafka {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(KafkaConn::new(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> KafkaConn<S> {
    /// A connection over an already connected `stream`.
    pub fn new(stream: S) -> KafkaConn<S> {
        KafkaConn {
            stream,
            out: BytesMut::with_capacity(1 << 20),
            input: BytesMut::with_capacity(1 << 20),
            next_correlation: 1,
        }
    }

    /// Encodes a request into the output buffer (sent by the next `flush`).
    pub fn queue<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<()> {
        let key = ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("unknown api key {}", R::KEY))?;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.next_correlation)
            .with_client_id(Some(StrBytes::from_static_str("tidewater-bench")));
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let start = self.out.len();
        self.out.put_i32(0);
        header.encode(&mut self.out, key.request_header_version(version))?;
        request.encode(&mut self.out, version)?;
        let size = (self.out.len() - start - 4) as i32;
        self.out[start..start + 4].copy_from_slice(&size.to_be_bytes());
        Ok(())
    }

    /// Writes every queued request.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads the next response frame (header included).
    pub async fn receive_frame(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if self.input.len() >= 4 {
                let size = i32::from_be_bytes(self.input[..4].try_into()?) as usize;
                if self.input.len() >= 4 + size {
                    self.input.advance(4);
                    return Ok(self.input.split_to(size).freeze());
                }
                self.input.reserve(4 + size - self.input.len());
            } else {
                self.input.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                bail!("kafka connection closed");
            }
        }
    }

    /// Reads and decodes the next response, which must answer a request of type `R`.
    pub async fn receive<R: Request>(&mut self, version: i16) -> anyhow::Result<R::Response> {
        let frame = self.receive_frame().await?;
        decode::<R>(frame, version)
    }

    /// Sends one request and waits for its response.
    pub async fn call<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<R::Response> {
        self.queue(version, request)?;
        self.flush().await?;
        self.receive::<R>(version).await
    }

    /// The offset at `timestamp` (-1 latest, -2 earliest) of each of `partitions`.
    pub async fn list_offsets(&mut self, topic: &str, partitions: i32, timestamp: i64) -> anyhow::Result<Vec<i64>> {
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
            ListOffsetsTopic::default().with_name(topic_name(topic)).with_partitions(
                (0..partitions)
                    .map(|p| ListOffsetsPartition::default().with_partition_index(p).with_timestamp(timestamp))
                    .collect(),
            ),
        ]);
        let response = self.call(LIST_OFFSETS_VERSION, &request).await?;
        let mut offsets = vec![-1; partitions as usize];
        for partition in response.topics.iter().flat_map(|t| &t.partitions) {
            if partition.error_code != 0 {
                bail!("list offsets of {topic}/{}: error {}", partition.partition_index, partition.error_code);
            }
            if let Some(slot) = offsets.get_mut(partition.partition_index as usize) {
                *slot = partition.offset;
            }
        }
        Ok(offsets)
    }

    /// Fetches `(partition, offset)` pairs of one topic; errors per partition come back as Err.
    pub async fn fetch(
        &mut self,
        topic: &str,
        wanted: &[(i32, i64)],
        partition_max_bytes: i32,
        max_wait_ms: i32,
    ) -> anyhow::Result<Vec<(i32, anyhow::Result<Fetched>)>> {
        self.queue(FETCH_VERSION, &fetch_request(topic, wanted, partition_max_bytes, max_wait_ms))?;
        self.flush().await?;
        let response: FetchResponse = self.receive::<FetchRequest>(FETCH_VERSION).await?;
        if response.error_code != 0 {
            bail!("fetch {topic}: error {}", response.error_code);
        }
        Ok(response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .map(|data| {
                let partition = data.partition_index;
                let result = if data.error_code != 0 {
                    Err(anyhow::anyhow!("fetch {topic}/{partition}: error {}", data.error_code))
                } else {
                    Ok(Fetched { records: data.records.unwrap_or_default() })
                };
                (partition, result)
            })
            .collect())
    }

    /// Creates `name` with `partitions` partitions (default replication); the topic's error code.
    pub async fn create_topics(&mut self, name: &str, partitions: i32) -> anyhow::Result<i16> {
        self.create_topics_with(name, partitions, &[]).await
    }

    /// [`KafkaConn::create_topics`] with topic configs (`retention.bytes`, ...).
    pub async fn create_topics_with(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<i16> {
        let configs = configs
            .iter()
            .map(|(key, value)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(key.to_string()))
                    .with_value(Some(StrBytes::from_string(value.to_string())))
            })
            .collect();
        let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)
                .with_configs(configs),
        ]);
        let response = self.call(CREATE_TOPICS_VERSION, &request).await?;
        match response.topics.iter().find(|t| t.name.0.as_str() == name) {
            Some(topic) => Ok(topic.error_code),
            None => bail!("create topics {name}: no result for the topic"),
        }
    }

    /// Sets topic configs with IncrementalAlterConfigs (v1); the resource's error code.
    pub async fn set_topic_configs(&mut self, name: &str, configs: &[(&str, &str)]) -> anyhow::Result<i16> {
        use kafka_protocol::messages::IncrementalAlterConfigsRequest;
        use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let configs = configs
            .iter()
            .map(|(key, value)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(key.to_string()))
                    .with_value(Some(StrBytes::from_string(value.to_string())))
            })
            .collect();
        let resource = AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configs(configs);
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![resource]);
        let response = self.call(1, &request).await?;
        match response.responses.first() {
            Some(resource) => Ok(resource.error_code),
            None => bail!("incremental alter configs {name}: no result"),
        }
    }

    /// Raises a topic's partition count with CreatePartitions (v3); the topic's error code.
    pub async fn create_partitions(&mut self, name: &str, count: i32) -> anyhow::Result<i16> {
        use kafka_protocol::messages::CreatePartitionsRequest;
        use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
        let topic = CreatePartitionsTopic::default().with_name(topic_name(name)).with_count(count);
        let request = CreatePartitionsRequest::default().with_timeout_ms(30_000).with_topics(vec![topic]);
        let response = self.call(3, &request).await?;
        match response.results.first() {
            Some(result) => Ok(result.error_code),
            None => bail!("create partitions {name}: no result"),
        }
    }

    /// Sets `user`'s SCRAM credential for `mechanism` (1 SHA-256, 2 SHA-512) with
    /// AlterUserScramCredentials (v0): `salted_password` is `Hi(password, salt, iterations)`;
    /// the user's error code.
    pub async fn upsert_scram(
        &mut self,
        user: &str,
        mechanism: i8,
        iterations: i32,
        salt: &[u8],
        salted_password: &[u8],
    ) -> anyhow::Result<i16> {
        use kafka_protocol::messages::AlterUserScramCredentialsRequest;
        use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
        let upsertion = ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(user.to_string()))
            .with_mechanism(mechanism)
            .with_iterations(iterations)
            .with_salt(Bytes::copy_from_slice(salt))
            .with_salted_password(Bytes::copy_from_slice(salted_password));
        let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsertion]);
        let response = self.call(0, &request).await?;
        match response.results.first() {
            Some(result) => Ok(result.error_code),
            None => bail!("alter user scram credentials {user}: no result"),
        }
    }

    /// `user`'s SCRAM credentials (DescribeUserScramCredentials v0): the user's error code and
    /// its (mechanism, iterations) pairs.
    pub async fn describe_scram(&mut self, user: &str) -> anyhow::Result<(i16, Vec<(i8, i32)>)> {
        use kafka_protocol::messages::DescribeUserScramCredentialsRequest;
        use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
        let name = UserName::default().with_name(StrBytes::from_string(user.to_string()));
        let request = DescribeUserScramCredentialsRequest::default().with_users(Some(vec![name]));
        let response = self.call(0, &request).await?;
        match response.results.first() {
            Some(result) => Ok((
                result.error_code,
                result.credential_infos.iter().map(|info| (info.mechanism, info.iterations)).collect(),
            )),
            None => bail!("describe user scram credentials {user}: no result (error {})", response.error_code),
        }
    }

    /// Creates one ACL binding on the literal topic `topic` for `principal` from any host
    /// (CreateAcls v3; `operation` and `permission` are Kafka's codes); its error code.
    pub async fn create_topic_acl(
        &mut self,
        topic: &str,
        principal: &str,
        operation: i8,
        permission: i8,
    ) -> anyhow::Result<i16> {
        use kafka_protocol::messages::CreateAclsRequest;
        use kafka_protocol::messages::create_acls_request::AclCreation;
        let creation = AclCreation::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_resource_pattern_type(3)
            .with_principal(StrBytes::from_string(principal.to_string()))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(operation)
            .with_permission_type(permission);
        let response = self.call(3, &CreateAclsRequest::default().with_creations(vec![creation])).await?;
        match response.results.first() {
            Some(result) => Ok(result.error_code),
            None => bail!("create acls {topic}: no result"),
        }
    }

    /// The bindings on the literal topic `topic` (DescribeAcls v3): the error code and each
    /// binding's (principal, operation, permission).
    pub async fn describe_topic_acls(&mut self, topic: &str) -> anyhow::Result<(i16, Vec<(String, i8, i8)>)> {
        use kafka_protocol::messages::DescribeAclsRequest;
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(2)
            .with_resource_name_filter(Some(StrBytes::from_string(topic.to_string())))
            .with_pattern_type_filter(3)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1);
        let response = self.call(3, &request).await?;
        let bindings = response
            .resources
            .iter()
            .flat_map(|resource| &resource.acls)
            .map(|acl| (acl.principal.to_string(), acl.operation, acl.permission_type))
            .collect();
        Ok((response.error_code, bindings))
    }

    /// A fresh idempotent (non-transactional) producer id and its epoch.
    pub async fn init_producer_id(&mut self) -> anyhow::Result<(i64, i16)> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self.call(INIT_PRODUCER_ID_VERSION, &request).await?;
        if response.error_code != 0 {
            bail!("init producer id: error {}", response.error_code);
        }
        Ok((response.producer_id.0, response.producer_epoch))
    }

    /// Produces one batch to `topic`/`partition`: (error code, base offset). With acks 0 the
    /// server sends no answer, so this returns (0, -1) once the request is written.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
        timeout_ms: i32,
    ) -> anyhow::Result<(i16, i64)> {
        let request = produce_request(topic, partition, acks, timeout_ms, batch);
        if acks == 0 {
            self.queue(PRODUCE_VERSION, &request)?;
            self.flush().await?;
            return Ok((0, -1));
        }
        let response = self.call(PRODUCE_VERSION, &request).await?;
        let answer = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.index == partition);
        match answer {
            Some(p) => Ok((p.error_code, p.base_offset)),
            None => bail!("produce {topic}/{partition}: no result for the partition"),
        }
    }

    /// Commits `offset` for `group` as a simple consumer (generation -1, no member id); the
    /// partition's error code (Kafka accepts this only while the group has no members).
    pub async fn offset_commit(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<i16> {
        self.offset_commit_as(group, -1, "", topic, partition, offset).await
    }

    /// Joins `group` (the classic protocol, "consumer" type, one range protocol); answers the
    /// member id the coordinator asks for (MEMBER_ID_REQUIRED) by joining again with it.
    /// Returns (error code, generation, member id, leader id).
    pub async fn join_group(
        &mut self,
        group: &str,
        member_id: &str,
        session_timeout_ms: i32,
    ) -> anyhow::Result<(i16, i32, String, String)> {
        let mut member = member_id.to_string();
        for _ in 0..2 {
            let request = JoinGroupRequest::default()
                .with_group_id(group_id(group))
                .with_session_timeout_ms(session_timeout_ms)
                .with_rebalance_timeout_ms(session_timeout_ms)
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"\0\0\0\0\0\0\0\0")),
                ]);
            let response = self.call(JOIN_GROUP_VERSION, &request).await?;
            member = response.member_id.to_string();
            // 79: MEMBER_ID_REQUIRED
            if response.error_code == 79 {
                continue;
            }
            return Ok((response.error_code, response.generation_id, member, response.leader.to_string()));
        }
        bail!("join group {group}: the coordinator kept asking for a member id")
    }

    /// SyncGroup: the leader gives `assignment` to itself (a one-member group), a follower
    /// gives none. Returns (error code, assignment).
    pub async fn sync_group(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignment: Option<Bytes>,
    ) -> anyhow::Result<(i16, Bytes)> {
        let assignments = assignment
            .map(|bytes| {
                vec![
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member_id.to_string()))
                        .with_assignment(bytes),
                ]
            })
            .unwrap_or_default();
        let request = SyncGroupRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str("range")))
            .with_assignments(assignments);
        let response = self.call(SYNC_GROUP_VERSION, &request).await?;
        Ok((response.error_code, response.assignment))
    }

    /// Heartbeat of a member; the error code.
    pub async fn heartbeat(&mut self, group: &str, generation: i32, member_id: &str) -> anyhow::Result<i16> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()));
        Ok(self.call(HEARTBEAT_VERSION, &request).await?.error_code)
    }

    /// Commits `offset` for `group` as member `member_id` of `generation` (-1 and "" for a
    /// simple consumer); the partition's error code.
    pub async fn offset_commit_as(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<i16> {
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic_name(topic)).with_partitions(vec![
                OffsetCommitRequestPartition::default().with_partition_index(partition).with_committed_offset(offset),
            ])]);
        let response = self.call(OFFSET_COMMIT_VERSION, &request).await?;
        let answer = response
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition);
        match answer {
            Some(p) => Ok(p.error_code),
            None => bail!("offset commit {group} {topic}/{partition}: no result for the partition"),
        }
    }

    /// The node coordinating `group`: (error code, node id).
    pub async fn find_coordinator(&mut self, group: &str) -> anyhow::Result<(i16, i32)> {
        let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string()));
        let response = self.call(FIND_COORDINATOR_VERSION, &request).await?;
        Ok((response.error_code, response.node_id.0))
    }

    /// The offset `group` committed for `topic`/`partition`, -1 when none.
    pub async fn offset_fetch(&mut self, group: &str, topic: &str, partition: i32) -> anyhow::Result<i64> {
        let request = OffsetFetchRequest::default().with_group_id(group_id(group)).with_topics(Some(vec![
            OffsetFetchRequestTopic::default().with_name(topic_name(topic)).with_partition_indexes(vec![partition]),
        ]));
        let response = self.call(OFFSET_FETCH_VERSION, &request).await?;
        if response.error_code != 0 {
            bail!("offset fetch {group}: error {}", response.error_code);
        }
        let answer = response
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition);
        match answer {
            Some(p) if p.error_code != 0 => bail!("offset fetch {group} {topic}/{partition}: error {}", p.error_code),
            Some(p) => Ok(p.committed_offset),
            None => bail!("offset fetch {group} {topic}/{partition}: no result for the partition"),
        }
    }
}

/// What a fetch returned for one partition.
pub struct Fetched {
    /// Record batches (the last may be cut short).
    pub records: Bytes,
}

/// A Produce request of one batch to `topic`/`partition`.
pub fn produce_request(topic: &str, partition: i32, acks: i16, timeout_ms: i32, batch: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(timeout_ms).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch))]),
    ])
}

/// The first partition error of a produce response, described, or None.
pub fn produce_errors(response: &ProduceResponse) -> Option<String> {
    response.responses.iter().flat_map(|t| &t.partition_responses).find(|p| p.error_code != 0).map(|p| {
        format!("partition {}: error {} {:?}", p.index, p.error_code, p.error_message.as_ref().map(|m| m.to_string()))
    })
}

/// An uncompressed RecordBatch v2 of `values` (no keys, all at `timestamp_ms`) from an
/// idempotent producer: `producer_id`, `epoch` and `base_sequence` set, CRC recomputed.
pub fn idempotent_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    values: &[&[u8]],
    timestamp_ms: i64,
) -> Bytes {
    let records: Vec<NewRecord<'_>> =
        values.iter().map(|v| NewRecord { key: None, value: Some(v), headers: &[], timestamp_ms }).collect();
    let mut bytes = build_record_batch(&records, timestamp_ms).to_vec();
    tidewater_storage::set_producer(&mut bytes, producer_id, epoch, base_sequence);
    Bytes::from(bytes)
}

/// A Fetch request for `(partition, offset)` pairs of one topic.
pub fn fetch_request(topic: &str, wanted: &[(i32, i64)], partition_max_bytes: i32, max_wait_ms: i32) -> FetchRequest {
    let partitions = wanted
        .iter()
        .map(|&(partition, offset)| {
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max_bytes)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(partition_max_bytes.saturating_mul(wanted.len() as i32))
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(partitions)])
}

/// A topic name for a request.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// A group id for a request.
pub fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// Decodes a response frame to a request of type `R`.
pub fn decode<R: Request>(mut frame: Bytes, version: i16) -> anyhow::Result<R::Response> {
    let key = ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("unknown api key {}", R::KEY))?;
    ResponseHeader::decode(&mut frame, key.response_header_version(version))?;
    R::Response::decode(&mut frame, version)
}

/// The complete batches in fetched bytes: (records, bytes, next offset) of each, by callback.
pub fn for_each_batch(records: &Bytes, mut f: impl FnMut(&[u8], i32, i64)) {
    let mut at = 0usize;
    while records.len() >= at + 61 {
        let base_offset = i64::from_be_bytes(records[at..at + 8].try_into().unwrap_or_default());
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().unwrap_or_default()) as usize;
        let end = at + 12 + length;
        if length < 49 || records.len() < end {
            break;
        }
        let last_offset_delta = i32::from_be_bytes(records[at + 23..at + 27].try_into().unwrap_or_default());
        let count = i32::from_be_bytes(records[at + 57..at + 61].try_into().unwrap_or_default());
        f(&records[at..end], count, base_offset + i64::from(last_offset_delta) + 1);
        at = end;
    }
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// Calls `f` with the value of each record of an uncompressed batch, without allocating.
pub fn for_each_value(batch: &[u8], mut f: impl FnMut(&[u8])) {
    let mut at = 61;
    while at < batch.len() {
        let Some(length) = varint(batch, &mut at) else { return };
        let end = at + length.max(0) as usize;
        if end > batch.len() {
            return;
        }
        let mut p = at + 1; // attributes
        let parsed = (|| {
            varint(batch, &mut p)?; // timestamp delta
            varint(batch, &mut p)?; // offset delta
            let key_len = varint(batch, &mut p)?;
            p += key_len.max(0) as usize;
            let value_len = varint(batch, &mut p)?;
            batch.get(p..p + value_len.max(0) as usize)
        })();
        if let Some(value) = parsed {
            f(value);
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
    use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::messages::{
        CreateTopicsResponse, InitProducerIdResponse, OffsetCommitResponse, OffsetFetchResponse,
    };
    use tidewater_storage::{decode_records, validate_batch};
    use tokio::io::DuplexStream;

    use super::*;

    #[test]
    fn record_values_are_walked_in_order() {
        let values: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 30 + i as usize]).collect();
        let records: Vec<NewRecord<'_>> = values
            .iter()
            .map(|v| NewRecord { key: Some(b"k"), value: Some(v), headers: &[], timestamp_ms: 1 })
            .collect();
        let batch = build_record_batch(&records, 1);
        let mut seen = Vec::new();
        for_each_batch(&batch, |b, count, next| {
            assert_eq!((count, next), (5, 5));
            for_each_value(b, |v| seen.push(v.to_vec()));
        });
        assert_eq!(seen, values);
    }

    #[test]
    fn idempotent_batch_carries_the_producer_and_a_valid_crc() {
        let batch = idempotent_batch(42, 3, 17, &[b"a", b"bc", b""], 1_700_000_000_000);
        let header = validate_batch(&batch).expect("valid batch with a correct CRC");
        assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (42, 3, 17));
        assert_eq!((header.record_count, header.last_offset_delta, header.attributes), (3, 2, 0));
        assert_eq!((header.base_timestamp, header.max_timestamp), (1_700_000_000_000, 1_700_000_000_000));
        let values: Vec<Option<Bytes>> = decode_records(&batch).unwrap().into_iter().map(|r| r.value).collect();
        assert_eq!(values, [Some(Bytes::from_static(b"a")), Some(Bytes::from_static(b"bc")), Some(Bytes::new())]);
    }

    /// Reads one request of type `R` from the client's peer end and writes `answer`'s response.
    async fn serve<R: Request>(peer: &mut DuplexStream, version: i16, answer: impl FnOnce(R) -> R::Response) {
        let size = peer.read_i32().await.unwrap() as usize;
        let mut frame = vec![0; size];
        peer.read_exact(&mut frame).await.unwrap();
        let mut frame = Bytes::from(frame);
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header = RequestHeader::decode(&mut frame, key.request_header_version(version)).unwrap();
        assert_eq!((header.request_api_key, header.request_api_version), (R::KEY, version));
        let request = R::decode(&mut frame, version).unwrap();
        assert!(frame.is_empty(), "request fully decoded");
        let mut out = BytesMut::new();
        out.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut out, key.response_header_version(version))
            .unwrap();
        answer(request).encode(&mut out, version).unwrap();
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        peer.write_all(&out).await.unwrap();
    }

    #[tokio::test]
    async fn workload_calls_work_over_any_byte_stream() {
        let (client, mut peer) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            serve::<CreateTopicsRequest>(&mut peer, CREATE_TOPICS_VERSION, |r| {
                let t = &r.topics[0];
                assert_eq!((t.name.0.as_str(), t.num_partitions, t.replication_factor), ("orders", 3, -1));
                CreateTopicsResponse::default()
                    .with_topics(vec![CreatableTopicResult::default().with_name(t.name.clone()).with_error_code(36)])
            })
            .await;
            serve::<InitProducerIdRequest>(&mut peer, INIT_PRODUCER_ID_VERSION, |r| {
                assert_eq!((r.transactional_id, r.producer_id.0, r.producer_epoch), (None, -1, -1));
                InitProducerIdResponse::default().with_producer_id(ProducerId(7)).with_producer_epoch(2)
            })
            .await;
            serve::<ProduceRequest>(&mut peer, PRODUCE_VERSION, |r| {
                assert_eq!((r.acks, r.timeout_ms), (-1, 5_000));
                let data = &r.topic_data[0].partition_data[0];
                let header = validate_batch(data.records.as_ref().unwrap()).unwrap();
                assert_eq!((data.index, header.producer_id, header.base_sequence), (1, 7, 0));
                ProduceResponse::default().with_responses(vec![
                    TopicProduceResponse::default().with_name(topic_name("orders")).with_partition_responses(vec![
                        PartitionProduceResponse::default().with_index(1).with_base_offset(100),
                    ]),
                ])
            })
            .await;
            serve::<OffsetCommitRequest>(&mut peer, OFFSET_COMMIT_VERSION, |r| {
                assert_eq!((r.group_id.0.as_str(), r.generation_id_or_member_epoch), ("g", -1));
                assert!(r.member_id.is_empty());
                let p = &r.topics[0].partitions[0];
                assert_eq!((p.partition_index, p.committed_offset), (1, 101));
                OffsetCommitResponse::default().with_topics(vec![
                    OffsetCommitResponseTopic::default()
                        .with_name(topic_name("orders"))
                        .with_partitions(vec![OffsetCommitResponsePartition::default().with_partition_index(1)]),
                ])
            })
            .await;
            serve::<OffsetFetchRequest>(&mut peer, OFFSET_FETCH_VERSION, |r| {
                assert_eq!(r.group_id.0.as_str(), "g");
                OffsetFetchResponse::default().with_topics(vec![
                    OffsetFetchResponseTopic::default().with_name(topic_name("orders")).with_partitions(vec![
                        OffsetFetchResponsePartition::default().with_partition_index(1).with_committed_offset(101),
                    ]),
                ])
            })
            .await;
            peer
        });
        let mut conn = KafkaConn::new(client);
        assert_eq!(conn.create_topics("orders", 3).await.unwrap(), 36);
        let (producer_id, epoch) = conn.init_producer_id().await.unwrap();
        assert_eq!((producer_id, epoch), (7, 2));
        let batch = idempotent_batch(producer_id, epoch, 0, &[b"x"], 1);
        assert_eq!(conn.produce("orders", 1, batch, -1, 5_000).await.unwrap(), (0, 100));
        assert_eq!(conn.offset_commit("g", "orders", 1, 101).await.unwrap(), 0);
        assert_eq!(conn.offset_fetch("g", "orders", 1).await.unwrap(), 101);
        let mut peer = server.await.unwrap();
        // acks 0 gets no answer: the request is written and the call returns at once
        assert_eq!(conn.produce("orders", 0, Bytes::new(), 0, 5_000).await.unwrap(), (0, -1));
        let size = peer.read_i32().await.unwrap();
        assert!(size > 0);
        drop(peer);
        assert!(conn.offset_fetch("g", "orders", 1).await.is_err(), "closed connection");
    }
}
