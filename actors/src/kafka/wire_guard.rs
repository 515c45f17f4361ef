//! Bounds every array count in a request body by the bytes left, before kafka-protocol decodes it.
//!
//! kafka-protocol 0.18 calls `Vec::with_capacity(count)` with a count read from the wire before it
//! decodes a single element, so an 8-byte Metadata request claiming 2^31 topics makes it ask for over a
//! hundred gigabytes and the allocator aborts the process (open upstream pull requests 152, 161, 200).
//! This walk follows the body schema of every served api and version without allocating, reads exactly
//! what kafka-protocol reads, and rejects a count whose elements cannot fit in the bytes that remain.
//! The tests check it byte for byte against kafka-protocol's own encoder and decoder.

use kafka_protocol::messages::ApiKey;

use super::WireError;

/// A field's wire type; strings, bytes and arrays are nullable or not alike (the length is all that matters).
#[derive(Clone, Copy)]
enum Ty {
    I8,
    I16,
    I32,
    I64,
    Uuid,
    Bool,
    Str,
    Bytes,
    Int32s,
    Strs,
    Structs(&'static [Field]),
}

/// A field present in versions `since..=until`.
#[derive(Clone, Copy)]
struct Field {
    since: i16,
    until: i16,
    ty: Ty,
}

const fn all(ty: Ty) -> Field {
    Field { since: 0, until: i16::MAX, ty }
}

const fn since(since: i16, ty: Ty) -> Field {
    Field { since, until: i16::MAX, ty }
}

const fn until(until: i16, ty: Ty) -> Field {
    Field { since: 0, until, ty }
}

const fn between(since: i16, until: i16, ty: Ty) -> Field {
    Field { since, until, ty }
}

use Ty::{Bool, Bytes, I8, I16, I32, I64, Int32s, Str, Strs, Structs, Uuid};

const PRODUCE: &[Field] = &[since(3, Str), all(I16), all(I32), all(Structs(PRODUCE_TOPIC))];
const PRODUCE_TOPIC: &[Field] = &[until(12, Str), since(13, Uuid), all(Structs(PRODUCE_PARTITION))];
const PRODUCE_PARTITION: &[Field] = &[all(I32), all(Bytes)];

const FETCH: &[Field] = &[
    until(14, I32),
    all(I32),
    all(I32),
    all(I32),
    all(I8),
    since(7, I32),
    since(7, I32),
    all(Structs(FETCH_TOPIC)),
    since(7, Structs(FETCH_FORGOTTEN)),
    since(11, Str),
];
const FETCH_TOPIC: &[Field] = &[until(12, Str), since(13, Uuid), all(Structs(FETCH_PARTITION))];
const FETCH_PARTITION: &[Field] = &[all(I32), since(9, I32), all(I64), since(12, I32), since(5, I64), all(I32)];
const FETCH_FORGOTTEN: &[Field] = &[between(7, 12, Str), since(13, Uuid), since(7, Int32s)];

const LIST_OFFSETS: &[Field] = &[all(I32), since(2, I8), all(Structs(LIST_OFFSETS_TOPIC)), since(10, I32)];
const LIST_OFFSETS_TOPIC: &[Field] = &[all(Str), all(Structs(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS_PARTITION: &[Field] = &[all(I32), since(4, I32), all(I64)];

const METADATA: &[Field] = &[all(Structs(METADATA_TOPIC)), since(4, Bool), between(8, 10, Bool), since(8, Bool)];
const METADATA_TOPIC: &[Field] = &[since(10, Uuid), all(Str)];

const OFFSET_COMMIT: &[Field] =
    &[all(Str), all(I32), all(Str), since(7, Str), until(4, I64), all(Structs(OFFSET_COMMIT_TOPIC))];
const OFFSET_COMMIT_TOPIC: &[Field] = &[all(Str), all(Structs(OFFSET_COMMIT_PARTITION))];
const OFFSET_COMMIT_PARTITION: &[Field] = &[all(I32), all(I64), since(6, I32), all(Str)];

const OFFSET_FETCH: &[Field] =
    &[until(7, Str), until(7, Structs(OFFSET_FETCH_TOPIC)), since(8, Structs(OFFSET_FETCH_GROUP)), since(7, Bool)];
const OFFSET_FETCH_TOPIC: &[Field] = &[all(Str), all(Int32s)];
const OFFSET_FETCH_GROUP: &[Field] = &[all(Str), since(9, Str), since(9, I32), all(Structs(OFFSET_FETCH_TOPIC))];

const FIND_COORDINATOR: &[Field] = &[until(3, Str), since(1, I8), since(4, Strs)];

const JOIN_GROUP: &[Field] = &[
    all(Str),
    all(I32),
    since(1, I32),
    all(Str),
    since(5, Str),
    all(Str),
    all(Structs(JOIN_GROUP_PROTOCOL)),
    since(8, Str),
];
const JOIN_GROUP_PROTOCOL: &[Field] = &[all(Str), all(Bytes)];

const LEAVE_GROUP: &[Field] = &[all(Str), until(2, Str), since(3, Structs(LEAVE_GROUP_MEMBER))];
const LEAVE_GROUP_MEMBER: &[Field] = &[all(Str), all(Str), since(5, Str)];

const SYNC_GROUP: &[Field] =
    &[all(Str), all(I32), all(Str), since(3, Str), since(5, Str), since(5, Str), all(Structs(SYNC_GROUP_ASSIGNMENT))];
const SYNC_GROUP_ASSIGNMENT: &[Field] = &[all(Str), all(Bytes)];

const DESCRIBE_GROUPS: &[Field] = &[all(Strs), since(3, Bool)];

const LIST_GROUPS: &[Field] = &[since(4, Strs), since(5, Strs)];

const CREATE_TOPICS: &[Field] = &[all(Structs(CREATE_TOPICS_TOPIC)), all(I32), all(Bool)];
const CREATE_TOPICS_TOPIC: &[Field] =
    &[all(Str), all(I32), all(I16), all(Structs(CREATE_TOPICS_ASSIGNMENT)), all(Structs(CREATE_TOPICS_CONFIG))];
const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[all(I32), all(Int32s)];
const CREATE_TOPICS_CONFIG: &[Field] = &[all(Str), all(Str)];

const DELETE_TOPICS: &[Field] = &[since(6, Structs(DELETE_TOPICS_TOPIC)), until(5, Strs), all(I32)];
const DELETE_TOPICS_TOPIC: &[Field] = &[all(Str), all(Uuid)];

const DESCRIBE_CONFIGS: &[Field] = &[all(Structs(DESCRIBE_CONFIGS_RESOURCE)), all(Bool), since(3, Bool)];
const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[all(I8), all(Str), all(Strs)];

const ALTER_CONFIGS: &[Field] = &[all(Structs(ALTER_CONFIGS_RESOURCE)), all(Bool)];
const ALTER_CONFIGS_RESOURCE: &[Field] = &[all(I8), all(Str), all(Structs(ALTER_CONFIGS_CONFIG))];
const ALTER_CONFIGS_CONFIG: &[Field] = &[all(Str), all(Str)];

const INCREMENTAL_ALTER_CONFIGS: &[Field] = &[all(Structs(INCREMENTAL_ALTER_CONFIGS_RESOURCE)), all(Bool)];
const INCREMENTAL_ALTER_CONFIGS_RESOURCE: &[Field] =
    &[all(I8), all(Str), all(Structs(INCREMENTAL_ALTER_CONFIGS_CONFIG))];
const INCREMENTAL_ALTER_CONFIGS_CONFIG: &[Field] = &[all(Str), all(I8), all(Str)];

const CREATE_PARTITIONS: &[Field] = &[all(Structs(CREATE_PARTITIONS_TOPIC)), all(I32), all(Bool)];
const CREATE_PARTITIONS_TOPIC: &[Field] = &[all(Str), all(I32), all(Structs(CREATE_PARTITIONS_ASSIGNMENT))];
const CREATE_PARTITIONS_ASSIGNMENT: &[Field] = &[all(Int32s)];

const OFFSET_FOR_LEADER_EPOCH: &[Field] = &[since(3, I32), all(Structs(OFFSET_FOR_LEADER_EPOCH_TOPIC))];
const OFFSET_FOR_LEADER_EPOCH_TOPIC: &[Field] = &[all(Str), all(Structs(OFFSET_FOR_LEADER_EPOCH_PARTITION))];
const OFFSET_FOR_LEADER_EPOCH_PARTITION: &[Field] = &[all(I32), all(I32), all(I32)];

// v1+ (the versions served): resource type, name, pattern type, principal, host, operation, permission
const ACL_ENTRY: &[Field] = &[all(I8), all(Str), all(I8), all(Str), all(Str), all(I8), all(I8)];
const CREATE_ACLS: &[Field] = &[all(Structs(ACL_ENTRY))];
const DELETE_ACLS: &[Field] = &[all(Structs(ACL_ENTRY))];

// v0 only: users (nullable) of a name; deletions of a name and mechanism, upsertions with the credential
const DESCRIBE_USER_SCRAM_CREDENTIALS: &[Field] = &[all(Structs(&[all(Str)]))];
const ALTER_USER_SCRAM_CREDENTIALS: &[Field] =
    &[all(Structs(&[all(Str), all(I8)])), all(Structs(&[all(Str), all(I8), all(I32), all(Bytes), all(Bytes)]))];

/// The body schema of a served api with arrays; apis without arrays need no walk.
fn body_schema(key: ApiKey) -> Option<&'static [Field]> {
    Some(match key {
        ApiKey::Produce => PRODUCE,
        ApiKey::Fetch => FETCH,
        ApiKey::ListOffsets => LIST_OFFSETS,
        ApiKey::Metadata => METADATA,
        ApiKey::OffsetCommit => OFFSET_COMMIT,
        ApiKey::OffsetFetch => OFFSET_FETCH,
        ApiKey::FindCoordinator => FIND_COORDINATOR,
        ApiKey::JoinGroup => JOIN_GROUP,
        ApiKey::LeaveGroup => LEAVE_GROUP,
        ApiKey::SyncGroup => SYNC_GROUP,
        ApiKey::DescribeGroups => DESCRIBE_GROUPS,
        ApiKey::ListGroups => LIST_GROUPS,
        ApiKey::CreateTopics => CREATE_TOPICS,
        ApiKey::DeleteTopics => DELETE_TOPICS,
        ApiKey::DescribeConfigs => DESCRIBE_CONFIGS,
        ApiKey::CreatePartitions => CREATE_PARTITIONS,
        ApiKey::AlterConfigs => ALTER_CONFIGS,
        ApiKey::IncrementalAlterConfigs => INCREMENTAL_ALTER_CONFIGS,
        ApiKey::OffsetForLeaderEpoch => OFFSET_FOR_LEADER_EPOCH,
        ApiKey::CreateAcls => CREATE_ACLS,
        ApiKey::DeleteAcls => DELETE_ACLS,
        ApiKey::DescribeUserScramCredentials => DESCRIBE_USER_SCRAM_CREDENTIALS,
        ApiKey::AlterUserScramCredentials => ALTER_USER_SCRAM_CREDENTIALS,
        _ => return None,
    })
}

/// Checks that no array in a request body announces more elements than the remaining bytes can hold.
pub(super) fn check_body(key: ApiKey, version: i16, flexible: bool, body: &[u8]) -> Result<(), WireError> {
    walk_body(key, version, flexible, body).map(|_| ())
}

/// Walks a request body as kafka-protocol decodes it; returns how many bytes it reads.
fn walk_body(key: ApiKey, version: i16, flexible: bool, body: &[u8]) -> Result<usize, WireError> {
    let Some(fields) = body_schema(key) else { return Ok(0) };
    let mut walker = Walker { buf: body, version, flexible };
    // the only tagged field kafka-protocol decodes by its type at these versions: Fetch's cluster id (tag 0)
    let typed_tag = if key == ApiKey::Fetch { Some((0, Str)) } else { None };
    walker.fields(fields)?;
    if flexible {
        walker.tagged_fields(typed_tag)?;
    }
    Ok(body.len() - walker.buf.len())
}

struct Walker<'a> {
    buf: &'a [u8],
    version: i16,
    flexible: bool,
}

impl Walker<'_> {
    fn present(&self, fields: &'static [Field]) -> impl Iterator<Item = Ty> + use<> {
        let version = self.version;
        fields.iter().filter(move |f| (f.since..=f.until).contains(&version)).map(|f| f.ty)
    }

    fn fields(&mut self, fields: &'static [Field]) -> Result<(), WireError> {
        for ty in self.present(fields) {
            self.value(ty)?;
        }
        Ok(())
    }

    fn structure(&mut self, fields: &'static [Field]) -> Result<(), WireError> {
        self.fields(fields)?;
        if self.flexible {
            self.tagged_fields(None)?;
        }
        Ok(())
    }

    fn value(&mut self, ty: Ty) -> Result<(), WireError> {
        match ty {
            I8 | Bool => self.skip(1),
            I16 => self.skip(2),
            I32 => self.skip(4),
            I64 => self.skip(8),
            Uuid => self.skip(16),
            Str => {
                let len = self.length(false)?;
                self.skip(len)
            }
            Bytes => {
                let len = self.length(true)?;
                self.skip(len)
            }
            Int32s => {
                let count = self.count(4)?;
                self.skip(count * 4)
            }
            Strs => {
                let count = self.count(self.min_size(Str))?;
                (0..count).try_for_each(|_| self.value(Str))
            }
            Structs(fields) => {
                let min = self.present(fields).map(|ty| self.min_size(ty)).sum::<usize>() + usize::from(self.flexible);
                let count = self.count(min)?;
                (0..count).try_for_each(|_| self.structure(fields))
            }
        }
    }

    /// The fewest bytes a value of `ty` takes on the wire.
    fn min_size(&self, ty: Ty) -> usize {
        match ty {
            I8 | Bool => 1,
            I16 => 2,
            I32 => 4,
            I64 => 8,
            Uuid => 16,
            Str if !self.flexible => 2,
            Bytes | Int32s | Strs | Structs(_) if !self.flexible => 4,
            Str | Bytes | Int32s | Strs | Structs(_) => 1,
        }
    }

    /// The tagged-field section closing a structure; `typed` is a tag decoded by its type, not its size.
    fn tagged_fields(&mut self, typed: Option<(u32, Ty)>) -> Result<(), WireError> {
        let count = self.unsigned_varint()?;
        for _ in 0..count {
            let tag = self.unsigned_varint()?;
            let size = self.unsigned_varint()?;
            match typed {
                Some((typed_tag, ty)) if typed_tag == tag => self.value(ty)?,
                _ => self.skip(size as usize)?,
            }
        }
        Ok(())
    }

    /// The length of a string (i16) or bytes (i32) value; null is 0.
    fn length(&mut self, bytes: bool) -> Result<usize, WireError> {
        if self.flexible {
            return Ok((self.unsigned_varint()? as usize).saturating_sub(1));
        }
        let len = if bytes { self.i32()? } else { i32::from(self.i16()?) };
        match len {
            -1 => Ok(0),
            len => usize::try_from(len).map_err(|_| WireError::Malformed(format!("negative length {len}"))),
        }
    }

    /// An array's element count, checked against the bytes left; null is 0.
    fn count(&mut self, min_element: usize) -> Result<usize, WireError> {
        let count = if self.flexible {
            (self.unsigned_varint()? as usize).saturating_sub(1)
        } else {
            match self.i32()? {
                -1 => 0,
                n => usize::try_from(n).map_err(|_| WireError::Malformed(format!("negative array length {n}")))?,
            }
        };
        if count.saturating_mul(min_element.max(1)) > self.buf.len() {
            return Err(WireError::Malformed(format!(
                "array of {count} elements cannot fit in the {} bytes left",
                self.buf.len()
            )));
        }
        Ok(count)
    }

    fn skip(&mut self, n: usize) -> Result<(), WireError> {
        match self.buf.get(n..) {
            Some(rest) => {
                self.buf = rest;
                Ok(())
            }
            None => Err(WireError::Malformed(format!("{n} bytes expected, {} left", self.buf.len()))),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(WireError::Malformed(format!("{N} bytes expected, {} left", self.buf.len())));
        };
        self.buf = rest;
        Ok(*head)
    }

    fn i16(&mut self) -> Result<i16, WireError> {
        self.take().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        self.take().map(i32::from_be_bytes)
    }

    /// An unsigned varint read as kafka-protocol reads it: at most five bytes, excess bits dropped.
    fn unsigned_varint(&mut self) -> Result<u32, WireError> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.take::<1>()?;
            value |= u32::from(b & 0x7f) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
#[path = "wire_guard_tests.rs"]
mod tests;
