//! Kafka RecordBatch v2: header parsing, validation, the in-place rewrite done on append,
//! and building and decoding uncompressed batches.
//!
//! The log stores batches exactly as they arrive (after the append rewrite), so this module
//! is the only place that knows the wire layout.

use bytes::{BufMut, Bytes, BytesMut};

use crate::StorageError;

/// Size of the fixed RecordBatch v2 header, up to and including `recordCount`.
pub const BATCH_HEADER_LEN: usize = 61;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from `attributes` to the end.
const CRC_COVERS_FROM: usize = 21;
/// `batchLength` counts the bytes after itself.
const LENGTH_FIELD_END: usize = 12;

const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME_FLAG: i16 = 0x08;

/// The fixed header fields of a RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch of the leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; always 2 here.
    pub magic: i8,
    /// CRC-32C of the bytes from `attributes` to the end.
    pub crc: u32,
    /// Compression (bits 0-2), timestamp type (bit 3), transactional (4), control (5).
    pub attributes: i16,
    /// Offset of the last record relative to the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (ms).
    pub base_timestamp: i64,
    /// Largest record timestamp (ms).
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header (length at least 61 bytes, magic 2); does not check the CRC.
    pub fn parse(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(StorageError::invalid_batch(format!(
                "{} bytes is shorter than the {BATCH_HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let magic = bytes[MAGIC_AT] as i8;
        if magic != 2 {
            return Err(StorageError::invalid_batch(format!("magic {magic}, expected 2")));
        }
        Ok(Self {
            base_offset: read_i64(bytes, BASE_OFFSET_AT),
            batch_length: read_i32(bytes, BATCH_LENGTH_AT),
            partition_leader_epoch: read_i32(bytes, LEADER_EPOCH_AT),
            magic,
            crc: read_i32(bytes, CRC_AT) as u32,
            attributes: read_i16(bytes, 21),
            last_offset_delta: read_i32(bytes, 23),
            base_timestamp: read_i64(bytes, 27),
            max_timestamp: read_i64(bytes, 35),
            producer_id: read_i64(bytes, 43),
            producer_epoch: read_i16(bytes, 51),
            base_sequence: read_i32(bytes, 53),
            record_count: read_i32(bytes, 57),
        })
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The compression codec id (0 = none, 1 = gzip, 2 = snappy, 3 = lz4, 4 = zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }
}

/// Checks that `bytes` is exactly one intact RecordBatch v2 and returns its header.
///
/// Checks: header present, magic 2, `batchLength` matches the byte count, CRC-32C
/// matches, and `lastOffsetDelta` is not negative.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, StorageError> {
    let header = BatchHeader::parse(bytes)?;
    let expected_len = bytes.len() - LENGTH_FIELD_END;
    if usize::try_from(header.batch_length).ok() != Some(expected_len) {
        return Err(StorageError::invalid_batch(format!(
            "batch length field {} but {expected_len} bytes follow it",
            header.batch_length
        )));
    }
    let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
    if crc != header.crc {
        return Err(StorageError::invalid_batch(format!(
            "crc mismatch: stored {:#010x}, computed {crc:#010x}",
            header.crc
        )));
    }
    if header.last_offset_delta < 0 {
        return Err(StorageError::invalid_batch(format!("negative last offset delta {}", header.last_offset_delta)));
    }
    if header.compression() == 0 {
        check_records(&bytes[BATCH_HEADER_LEN..], &header)?;
    }
    Ok(header)
}

/// Checks the records of a batch (uncompressed bytes after the header) against its header:
/// as many records as its record count, offset deltas strictly increasing, the last one equal
/// to the last offset delta, nothing after the last record. A batch that disagrees with its
/// own header would be stored with offsets no reader can follow.
pub fn check_records(records: &[u8], header: &BatchHeader) -> Result<(), StorageError> {
    let mut reader = Reader { bytes: records };
    let mut count: i64 = 0;
    let mut last_delta: Option<i32> = None;
    while !reader.bytes.is_empty() {
        let length =
            usize::try_from(reader.varint()?).map_err(|_| StorageError::invalid_batch("negative record length"))?;
        let mut record = Reader { bytes: reader.take(length)? };
        let _attributes = record.take(1)?;
        let _timestamp_delta = record.varlong()?;
        let offset_delta = record.varint()?;
        if last_delta.is_some_and(|previous| offset_delta <= previous) || offset_delta < 0 {
            return Err(StorageError::invalid_batch(format!(
                "record offset delta {offset_delta} after {}",
                last_delta.unwrap_or(-1)
            )));
        }
        last_delta = Some(offset_delta);
        count += 1;
    }
    if count != i64::from(header.record_count) {
        return Err(StorageError::invalid_batch(format!(
            "record count {} but the batch holds {count} records",
            header.record_count
        )));
    }
    if last_delta.is_some_and(|delta| delta != header.last_offset_delta) {
        return Err(StorageError::invalid_batch(format!(
            "last offset delta {} but the last record has {}",
            header.last_offset_delta,
            last_delta.unwrap_or(-1)
        )));
    }
    Ok(())
}

/// Splits concatenated RecordBatch v2 bytes (a Kafka produce `records` field) into batches,
/// validating each one.
pub fn split_batches(bytes: &Bytes) -> Result<Vec<Bytes>, StorageError> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < LENGTH_FIELD_END {
            return Err(StorageError::invalid_batch("trailing bytes shorter than a batch header"));
        }
        let length = usize::try_from(read_i32(rest, BATCH_LENGTH_AT))
            .map_err(|_| StorageError::invalid_batch("negative batch length"))?;
        let total = LENGTH_FIELD_END + length;
        if rest.len() < total {
            return Err(StorageError::invalid_batch(format!("batch of {total} bytes but only {} remain", rest.len())));
        }
        let batch = bytes.slice(at..at + total);
        validate_batch(&batch)?;
        batches.push(batch);
        at += total;
    }
    Ok(batches)
}

/// Returns a copy of a validated batch with its base offset and leader epoch replaced
/// (both lie outside the CRC, so the CRC stays valid).
pub(crate) fn rewrite_for_append(batch: &[u8], base_offset: i64, leader_epoch: i32) -> Bytes {
    let mut buf = BytesMut::from(batch);
    patch_for_append(&mut buf, base_offset, leader_epoch);
    buf.freeze()
}

/// Overwrites the base offset and leader epoch of a validated batch in place.
pub fn patch_for_append(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks a batch as an idempotent producer's (producer id, epoch, base sequence) and
/// recomputes its CRC, which covers those fields: what a Kafka producer sends.
pub fn set_producer(batch: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// One record to put into a new batch with [`build_record_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRecord<'a> {
    /// The record key, or none.
    pub key: Option<&'a [u8]>,
    /// The record value, or none (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Record headers as (key, value) pairs.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The record's create time (ms since the epoch).
    pub timestamp_ms: i64,
}

/// One record decoded from a batch by [`decode_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// The record's absolute offset (base offset + offset delta).
    pub offset: i64,
    /// The record's timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// The record key, or none.
    pub key: Option<Bytes>,
    /// The record value, or none.
    pub value: Option<Bytes>,
    /// Record headers as (key, value) pairs; a value may be null.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Builds an uncompressed RecordBatch v2 (base offset 0, no producer id) holding `records`.
///
/// Offset deltas are 0..n; timestamps are stored as deltas from `base_timestamp_ms`. An
/// empty `records` yields a batch with `lastOffsetDelta` -1, which `append` rejects.
pub fn build_record_batch(records: &[NewRecord], base_timestamp_ms: i64) -> Bytes {
    let mut body = BytesMut::new();
    let mut record = BytesMut::new();
    for (index, new) in records.iter().enumerate() {
        record.clear();
        record.put_i8(0); // record attributes, unused
        put_varlong(&mut record, new.timestamp_ms.wrapping_sub(base_timestamp_ms));
        put_varlong(&mut record, index as i64);
        put_nullable_bytes(&mut record, new.key);
        put_nullable_bytes(&mut record, new.value);
        put_varlong(&mut record, new.headers.len() as i64);
        for (key, value) in new.headers {
            put_nullable_bytes(&mut record, Some(key.as_bytes()));
            put_nullable_bytes(&mut record, Some(value));
        }
        put_varlong(&mut body, record.len() as i64);
        body.put_slice(&record);
    }
    let max_timestamp = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(base_timestamp_ms);
    let count = i32::try_from(records.len()).unwrap_or(i32::MAX);

    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + body.len());
    out.put_i64(0); // base offset, set on append
    out.put_i32((BATCH_HEADER_LEN - LENGTH_FIELD_END + body.len()) as i32);
    out.put_i32(-1); // partition leader epoch, set on append
    out.put_i8(2);
    out.put_u32(0); // crc, filled below
    out.put_i16(0); // attributes: no compression, create time
    out.put_i32(count - 1);
    out.put_i64(base_timestamp_ms);
    out.put_i64(max_timestamp);
    out.put_i64(-1); // producer id
    out.put_i16(-1); // producer epoch
    out.put_i32(-1); // base sequence
    out.put_i32(count);
    out.put_slice(&body);
    let crc = crc32c::crc32c(&out[CRC_COVERS_FROM..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// Decodes the records of one validated, uncompressed RecordBatch v2.
pub fn decode_records(batch: &[u8]) -> Result<Vec<DecodedRecord>, StorageError> {
    let header = validate_batch(batch)?;
    if header.compression() != 0 {
        return Err(StorageError::invalid_batch(format!(
            "compression codec {} is not supported for decoding",
            header.compression()
        )));
    }
    let log_append_time = header.attributes & LOG_APPEND_TIME_FLAG != 0;
    let count =
        usize::try_from(header.record_count).map_err(|_| StorageError::invalid_batch("negative record count"))?;
    let mut reader = Reader { bytes: &batch[BATCH_HEADER_LEN..] };
    let mut records = Vec::with_capacity(count.min(reader.bytes.len()));
    for _ in 0..count {
        let length =
            usize::try_from(reader.varint()?).map_err(|_| StorageError::invalid_batch("negative record length"))?;
        let mut record = Reader { bytes: reader.take(length)? };
        let _attributes = record.take(1)?;
        let timestamp_delta = record.varlong()?;
        let offset_delta = record.varint()?;
        let key = record.nullable_bytes()?;
        let value = record.nullable_bytes()?;
        let header_count =
            usize::try_from(record.varint()?).map_err(|_| StorageError::invalid_batch("negative header count"))?;
        let mut headers = Vec::with_capacity(header_count.min(record.bytes.len()));
        for _ in 0..header_count {
            let key = record.nullable_bytes()?.ok_or_else(|| StorageError::invalid_batch("null header key"))?;
            let key =
                String::from_utf8(key.to_vec()).map_err(|_| StorageError::invalid_batch("header key is not utf-8"))?;
            headers.push((key, record.nullable_bytes()?));
        }
        if !record.bytes.is_empty() {
            return Err(StorageError::invalid_batch("record length exceeds its fields"));
        }
        let timestamp_ms =
            if log_append_time { header.max_timestamp } else { header.base_timestamp.wrapping_add(timestamp_delta) };
        records.push(DecodedRecord {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms,
            key,
            value,
            headers,
        });
    }
    if !reader.bytes.is_empty() {
        return Err(StorageError::invalid_batch("bytes left after the last record"));
    }
    Ok(records)
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    let mut buf = [0; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(buf)
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    let mut buf = [0; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(buf)
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Writes a zigzag LEB128 varlong (a varint for values in i32 range is the same bytes).
fn put_varlong(buf: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buf.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buf.put_u8(zigzag as u8);
}

fn put_nullable_bytes(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(buf, -1),
        Some(bytes) => {
            put_varlong(buf, bytes.len() as i64);
            buf.put_slice(bytes);
        }
    }
}

/// A bounds-checked cursor over record bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], StorageError> {
        if self.bytes.len() < len {
            return Err(StorageError::invalid_batch("record runs past the end of the batch"));
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn varlong(&mut self) -> Result<i64, StorageError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.take(1)?[0];
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(StorageError::invalid_batch("varint too long"))
    }

    fn varint(&mut self) -> Result<i32, StorageError> {
        i32::try_from(self.varlong()?).map_err(|_| StorageError::invalid_batch("varint out of i32 range"))
    }

    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, StorageError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(Bytes::copy_from_slice(self.take(len as usize)?)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Bytes {
        let headers: &[(&str, &[u8])] = &[("qos", b"1"), ("client", b"c-1")];
        build_record_batch(
            &[
                NewRecord { key: Some(b"t/1"), value: Some(b"hello"), headers, timestamp_ms: 1_000 },
                NewRecord { key: None, value: None, headers: &[], timestamp_ms: 1_005 },
            ],
            1_000,
        )
    }

    #[test]
    fn built_batch_has_expected_header() {
        let bytes = sample();
        let header = validate_batch(&bytes).unwrap();
        assert_eq!(header.magic, 2);
        assert_eq!(header.record_count, 2);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.base_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_005);
        assert_eq!(header.producer_id, -1);
        assert_eq!(header.batch_length as usize, bytes.len() - 12);
    }

    /// `sample()` with its header field at `at` (4 bytes) replaced and the CRC redone.
    fn patched(at: usize, value: i32) -> Vec<u8> {
        let mut bytes = sample().to_vec();
        bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_COVERS_FROM..]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn a_batch_whose_header_disagrees_with_its_records_is_refused() {
        // record count (at 57) and last offset delta (at 23), with a valid CRC each time
        for (at, value, expected) in
            [(57, 3, "record count 3"), (57, 1, "record count 1"), (23, 5, "last offset delta 5")]
        {
            let error = validate_batch(&patched(at, value)).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(validate_batch(&patched(57, 2)).is_ok());
    }

    #[test]
    fn rewrite_keeps_crc_valid() {
        let rewritten = rewrite_for_append(&sample(), 42, 7);
        let header = validate_batch(&rewritten).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.partition_leader_epoch, 7);
        let records = decode_records(&rewritten).unwrap();
        assert_eq!(records[0].offset, 42);
        assert_eq!(records[1].offset, 43);
        assert_eq!(records[1].timestamp_ms, 1_005);
        assert_eq!(records[0].headers[1], ("client".to_owned(), Some(Bytes::from_static(b"c-1"))));
    }

    #[test]
    fn rejects_short_bad_magic_bad_length_and_bad_crc() {
        let good = sample();
        assert!(matches!(validate_batch(&good[..40]), Err(StorageError::InvalidBatch(_))));
        let mut bad_magic = good.to_vec();
        bad_magic[16] = 1;
        assert!(validate_batch(&bad_magic).unwrap_err().to_string().contains("magic"));
        let chopped = &good[..good.len() - 1];
        assert!(validate_batch(chopped).unwrap_err().to_string().contains("length"));
        let mut flipped = good.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(validate_batch(&flipped).unwrap_err().to_string().contains("crc"));
    }

    #[test]
    fn split_batches_splits_concatenation() {
        let one = sample();
        let two = rewrite_for_append(&one, 2, 0);
        let joined = Bytes::from([one.to_vec(), two.to_vec()].concat());
        let parts = split_batches(&joined).unwrap();
        assert_eq!(parts, vec![one.clone(), two]);
        assert!(split_batches(&joined.slice(..joined.len() - 3)).is_err());
    }

    #[test]
    fn varlong_round_trips_extremes() {
        for value in [0, 1, -1, 63, -64, 64, i64::from(i32::MAX), i64::MIN, i64::MAX] {
            let mut buf = BytesMut::new();
            put_varlong(&mut buf, value);
            assert_eq!(Reader { bytes: &buf }.varlong().unwrap(), value);
        }
    }

    type ArbRecord = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>, i64);

    fn arb_record() -> impl Strategy<Value = ArbRecord> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec((".{0,8}", proptest::collection::vec(any::<u8>(), 0..20)), 0..4),
            -1_000_000_i64..1_000_000,
        )
    }

    proptest! {
        #[test]
        fn build_then_decode_round_trips(
            records in proptest::collection::vec(arb_record(), 1..20),
            base_timestamp in 0_i64..2_000_000_000_000,
            base_offset in 0_i64..1_000_000_000,
        ) {
            let header_refs: Vec<Vec<(&str, &[u8])>> = records
                .iter()
                .map(|(_, _, headers, _)| headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect())
                .collect();
            let new: Vec<NewRecord> = records
                .iter()
                .zip(&header_refs)
                .map(|((key, value, _, delta), headers)| NewRecord {
                    key: key.as_deref(),
                    value: value.as_deref(),
                    headers,
                    timestamp_ms: base_timestamp + delta,
                })
                .collect();
            let built = build_record_batch(&new, base_timestamp);
            let header = validate_batch(&built).unwrap();
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.max_timestamp, new.iter().map(|r| r.timestamp_ms).max().unwrap());
            let stored = rewrite_for_append(&built, base_offset, 3);
            let decoded = decode_records(&stored).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (index, (record, original)) in decoded.iter().zip(&new).enumerate() {
                prop_assert_eq!(record.offset, base_offset + index as i64);
                prop_assert_eq!(record.timestamp_ms, original.timestamp_ms);
                prop_assert_eq!(record.key.as_deref(), original.key);
                prop_assert_eq!(record.value.as_deref(), original.value);
                let headers: Vec<(&str, Option<&[u8]>)> =
                    record.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                let expected: Vec<(&str, Option<&[u8]>)> =
                    original.headers.iter().map(|(k, v)| (*k, Some(*v))).collect();
                prop_assert_eq!(headers, expected);
            }
        }

        #[test]
        fn any_single_byte_change_after_the_crc_field_is_detected(
            position in 21_usize..80,
            flip in 1_u8..=255,
        ) {
            let mut bytes = sample().to_vec();
            let position = position.min(bytes.len() - 1);
            bytes[position] ^= flip;
            prop_assert!(validate_batch(&bytes).is_err());
        }
    }
}
