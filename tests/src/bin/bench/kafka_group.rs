//! The consumer-group phase of the kafka mode: one member joins a fresh group, assigns itself
//! every partition (encoded by hand as the Java client's ConsumerProtocolAssignment v0), then
//! consumes from the committed offsets, committing and heartbeating once a second.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tidewater_tests::clients::kafka::{self as client, KafkaConn};
use tokio::net::TcpStream;

use crate::kafka::Phase;
use crate::report::Progress;
use crate::target::{Broker, CpuWindow};

const MEMBER_ID_REQUIRED: i16 = 79;

fn with_version<T: Encodable>(message: &T) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::new();
    out.put_i16(0);
    message.encode(&mut out, 0)?;
    Ok(out.freeze())
}

/// Joins a one-member group and consumes every partition from its committed offsets up to the
/// high watermark at the start, at most `cap` seconds.
pub(crate) async fn consume_in_group(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    fetch_bytes: i32,
    record_size: usize,
    cap: f64,
) -> anyhow::Result<Phase> {
    broker.settle().await;
    let group = format!("bench-group-{:x}", crate::mqtt::run_id());
    let group_id = GroupId(StrBytes::from_string(group.clone()));
    let mut conn = KafkaConn::connect(broker.kafka).await?;
    let joined_at = Instant::now();
    let found = conn.call(3, &FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.clone()))).await?;
    if found.error_code != 0 {
        bail!("find coordinator: error {}", found.error_code);
    }
    let subscription = with_version(
        &ConsumerProtocolSubscription::default().with_topics(vec![StrBytes::from_string(topic.to_string())]),
    )?;
    let mut member_id = StrBytes::default();
    let joined = loop {
        let request = JoinGroupRequest::default()
            .with_group_id(group_id.clone())
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(member_id.clone())
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(subscription.clone()),
            ]);
        let response = conn.call(5, &request).await?;
        match response.error_code {
            0 => break response,
            MEMBER_ID_REQUIRED if member_id.is_empty() => member_id = response.member_id,
            code => bail!("join group: error {code}"),
        }
    };
    member_id = joined.member_id.clone();
    let generation = joined.generation_id;
    let mut assignments = Vec::new();
    if joined.leader == member_id {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            AssignedPartitions::default()
                .with_topic(client::topic_name(topic))
                .with_partitions((0..partitions).collect()),
        ]);
        assignments.push(
            SyncGroupRequestAssignment::default()
                .with_member_id(member_id.clone())
                .with_assignment(with_version(&assignment)?),
        );
    }
    let synced = conn
        .call(
            3,
            &SyncGroupRequest::default()
                .with_group_id(group_id.clone())
                .with_generation_id(generation)
                .with_member_id(member_id.clone())
                .with_assignments(assignments),
        )
        .await?;
    if synced.error_code != 0 {
        bail!("sync group: error {}", synced.error_code);
    }
    let mut assignment_bytes = synced.assignment.clone();
    anyhow::ensure!(assignment_bytes.len() >= 2, "empty assignment");
    let _version = bytes::Buf::get_i16(&mut assignment_bytes);
    let assigned = ConsumerProtocolAssignment::decode(&mut assignment_bytes, 0)?;
    let mine: Vec<i32> = assigned.assigned_partitions.iter().flat_map(|t| t.partitions.iter().copied()).collect();
    anyhow::ensure!(mine.len() == partitions as usize, "assigned {mine:?} of {partitions} partitions");
    let committed = conn
        .call(
            7,
            &OffsetFetchRequest::default().with_group_id(group_id.clone()).with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(client::topic_name(topic))
                    .with_partition_indexes(mine.clone()),
            ])),
        )
        .await?;
    let earliest = conn.list_offsets(topic, partitions, -2).await?;
    let end = conn.list_offsets(topic, partitions, -1).await?;
    let mut offsets: Vec<i64> = earliest.clone();
    for p in committed.topics.iter().flat_map(|t| &t.partitions) {
        if p.committed_offset >= 0 {
            offsets[p.partition_index as usize] = p.committed_offset;
        }
    }
    let join_ms = joined_at.elapsed().as_secs_f64() * 1000.0;

    let progress = Progress::start("kafka group".into(), |_| "consuming in a group".into());
    let cpu = CpuWindow::start(broker);
    let deadline = Instant::now() + Duration::from_secs_f64(cap);
    let (mut records, mut wire, mut commits) = (0u64, 0u64, 0u64);
    let mut last_commit = Instant::now();
    while Instant::now() < deadline && offsets.iter().zip(&end).any(|(o, e)| o < e) {
        let wanted: Vec<(i32, i64)> = mine
            .iter()
            .filter(|&&p| offsets[p as usize] < end[p as usize])
            .map(|&p| (p, offsets[p as usize]))
            .collect();
        for (partition, result) in conn.fetch(topic, &wanted, fetch_bytes, 500).await? {
            let data = result?;
            client::for_each_batch(&data.records, |batch, count, next| {
                records += count as u64;
                wire += batch.len() as u64;
                offsets[partition as usize] = next;
            });
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            commit(&mut conn, &group_id, generation, &member_id, topic, &offsets).await?;
            let beat = conn
                .call(
                    3,
                    &HeartbeatRequest::default()
                        .with_group_id(group_id.clone())
                        .with_generation_id(generation)
                        .with_member_id(member_id.clone()),
                )
                .await?;
            if beat.error_code != 0 {
                bail!("heartbeat: error {}", beat.error_code);
            }
            commits += 1;
            last_commit = Instant::now();
        }
    }
    commit(&mut conn, &group_id, generation, &member_id, topic, &offsets).await?;
    commits += 1;
    let (cpu, secs) = cpu.stop(broker);
    drop(progress);
    let leave = LeaveGroupRequest::default()
        .with_group_id(group_id)
        .with_members(vec![MemberIdentity::default().with_member_id(member_id)]);
    conn.call(3, &leave).await?;
    Ok(Phase {
        name: "consume in group (1 member)".into(),
        records,
        value_bytes: records * record_size as u64,
        wire_bytes: wire,
        secs,
        latency: None,
        cpu,
        errors: 0,
        note: format!("join+sync+offset fetch {join_ms:.0} ms, {commits} commits, 1 connection"),
    })
}

async fn commit(
    conn: &mut KafkaConn<TcpStream>,
    group_id: &GroupId,
    generation: i32,
    member_id: &StrBytes,
    topic: &str,
    offsets: &[i64],
) -> anyhow::Result<()> {
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id.clone())
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member_id.clone())
        .with_topics(vec![
            OffsetCommitRequestTopic::default().with_name(client::topic_name(topic)).with_partitions(
                offsets
                    .iter()
                    .enumerate()
                    .map(|(p, &o)| {
                        OffsetCommitRequestPartition::default().with_partition_index(p as i32).with_committed_offset(o)
                    })
                    .collect(),
            ),
        ]);
    let response = conn.call(7, &request).await?;
    let failed = response.topics.iter().flat_map(|t| &t.partitions).find(|p| p.error_code != 0);
    if let Some(p) = failed {
        return Err(anyhow::anyhow!("offset commit: error {}", p.error_code)).context("commit");
    }
    Ok(())
}
