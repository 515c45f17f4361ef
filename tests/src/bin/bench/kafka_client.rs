//! A minimal Kafka client over kafka-protocol's message types: one connection that writes
//! length-prefixed requests (pipelined when the caller sends several before receiving) and
//! reads responses in order, plus the consumer-side helpers the bench needs (fetch, list
//! offsets, walking the records of a batch without allocating).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Produce version the bench speaks (flexible, no topic ids).
pub(crate) const PRODUCE_VERSION: i16 = 9;
/// Fetch version the bench speaks (flexible, topic names).
pub(crate) const FETCH_VERSION: i16 = 12;
/// ListOffsets version the bench speaks.
pub(crate) const LIST_OFFSETS_VERSION: i16 = 7;

/// One Kafka connection.
pub(crate) struct KafkaConn {
    stream: TcpStream,
    out: BytesMut,
    input: BytesMut,
    next_correlation: i32,
}

impl KafkaConn {
    /// Connects to `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<KafkaConn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to kafka {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(KafkaConn {
            stream,
            out: BytesMut::with_capacity(1 << 20),
            input: BytesMut::with_capacity(1 << 20),
            next_correlation: 1,
        })
    }

    /// Encodes a request into the output buffer (sent by the next `flush`).
    pub(crate) fn queue<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<()> {
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
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads the next response frame (header included).
    pub(crate) async fn receive_frame(&mut self) -> anyhow::Result<Bytes> {
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
    pub(crate) async fn receive<R: Request>(&mut self, version: i16) -> anyhow::Result<R::Response> {
        let frame = self.receive_frame().await?;
        decode::<R>(frame, version)
    }

    /// Sends one request and waits for its response.
    pub(crate) async fn call<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<R::Response> {
        self.queue(version, request)?;
        self.flush().await?;
        self.receive::<R>(version).await
    }

    /// The offset at `timestamp` (-1 latest, -2 earliest) of each of `partitions`.
    pub(crate) async fn list_offsets(
        &mut self,
        topic: &str,
        partitions: i32,
        timestamp: i64,
    ) -> anyhow::Result<Vec<i64>> {
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
    pub(crate) async fn fetch(
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
}

/// What a fetch returned for one partition.
pub(crate) struct Fetched {
    /// Record batches (the last may be cut short).
    pub(crate) records: Bytes,
}

/// A Fetch request for `(partition, offset)` pairs of one topic.
pub(crate) fn fetch_request(
    topic: &str,
    wanted: &[(i32, i64)],
    partition_max_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
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
pub(crate) fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Decodes a response frame to a request of type `R`.
pub(crate) fn decode<R: Request>(mut frame: Bytes, version: i16) -> anyhow::Result<R::Response> {
    let key = ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("unknown api key {}", R::KEY))?;
    ResponseHeader::decode(&mut frame, key.response_header_version(version))?;
    R::Response::decode(&mut frame, version)
}

/// The complete batches in fetched bytes: (records, bytes, next offset) of each, by callback.
pub(crate) fn for_each_batch(records: &Bytes, mut f: impl FnMut(&[u8], i32, i64)) {
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
pub(crate) fn for_each_value(batch: &[u8], mut f: impl FnMut(&[u8])) {
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
    use super::*;
    use tidewater_storage::{NewRecord, build_record_batch};

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
}
