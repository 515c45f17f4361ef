//! Data-plane frames: `u32 len | u8 version | u64 correlation | bincode payload`.
//!
//! `len` counts everything after itself. A frame is read mini-redis style: parse what the
//! buffer holds, ask for more when it is short. A peer's bytes are untrusted: the length is
//! capped, and room for a frame is made only as its bytes arrive ([`RESERVE_AHEAD`] at a
//! time), so a header that claims 16 MiB costs its sender 16 MiB of bytes, not 9; the version
//! must be ours; and bincode decodes under a limit that grows with the payload's own length
//! ([`decode`]), so a length prefix inside the payload cannot allocate more than a bounded
//! multiple of the bytes that carried it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The frame format this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// The largest frame accepted (after the length prefix).
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Version and correlation id.
const FRAME_HEADER: usize = 1 + 8;
/// The most room a partial frame makes ahead of the bytes it holds.
pub const RESERVE_AHEAD: usize = 64 << 10;

/// What is wrong with a peer's bytes.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over [`MAX_FRAME_BYTES`] or under the header.
    #[error("frame length {0} is out of range")]
    Length(u32),
    /// Another frame format.
    #[error("frame version {0} is not {FRAME_VERSION}")]
    Version(u8),
    /// The payload does not decode as the expected message.
    #[error("frame payload does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A message too large to send.
    #[error("message of {0} bytes is over the frame limit")]
    TooLarge(usize),
}

/// bincode under a limit of `LIMIT` bytes claimed (what strings, byte strings and vectors of
/// plain values allocate before they read).
fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Appends one frame holding `message` to `out`.
pub fn encode<T: Serialize>(correlation: u64, message: &T, out: &mut BytesMut) -> Result<(), FrameError> {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(FRAME_VERSION);
    out.put_u64(correlation);
    let mut writer = out.writer();
    let encoded = bincode::serde::encode_into_std_write(message, &mut writer, bincode::config::standard());
    let out = writer.into_inner();
    let length = out.len() - start - 4;
    if encoded.is_err() || length > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(FrameError::TooLarge(length));
    }
    out[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

/// Takes one whole frame off the front of `buffer`: `Ok(None)` if it holds only part of one.
pub fn take_frame(buffer: &mut BytesMut) -> Result<Option<(u64, Bytes)>, FrameError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    if (length as usize) < FRAME_HEADER || length as usize > MAX_FRAME_BYTES {
        return Err(FrameError::Length(length));
    }
    if let Some(&version) = buffer.get(4)
        && version != FRAME_VERSION
    {
        return Err(FrameError::Version(version));
    }
    if buffer.len() < 4 + length as usize {
        buffer.reserve((4 + length as usize - buffer.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let mut frame = buffer.split_to(4 + length as usize);
    frame.advance(5);
    let correlation = frame.get_u64();
    Ok(Some((correlation, frame.freeze())))
}

/// Decodes a frame's payload, which must be exactly one `T`.
///
/// What bincode may claim grows with the payload, in steps (its limit is a constant): at least
/// 64 KiB, at least 64 times the payload, and never more than [`MAX_FRAME_BYTES`]. A valid
/// payload claims at most its own length in strings and bytes, so only a lying length is refused.
/// What bincode does not limit is serde's preallocation of a sequence (a `Vec` field): serde
/// would reserve the claimed length before it reads the elements (up to 1 MiB, its "cautious"
/// hint), so every `Vec` field of the data plane's messages decodes through [`bounded_seq`],
/// which reserves at most [`SEQ_PREALLOC_BYTES`] and grows as elements actually arrive.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (message, used) = match payload.len() {
        0..=1024 => bincode::serde::decode_from_slice(payload, config::<{ 64 << 10 }>())?,
        1025..=4096 => bincode::serde::decode_from_slice(payload, config::<{ 256 << 10 }>())?,
        4097..=16384 => bincode::serde::decode_from_slice(payload, config::<{ 1 << 20 }>())?,
        16385..=65536 => bincode::serde::decode_from_slice(payload, config::<{ 4 << 20 }>())?,
        _ => bincode::serde::decode_from_slice(payload, config::<MAX_FRAME_BYTES>())?,
    };
    if used != payload.len() {
        return Err(FrameError::Decode(bincode::error::DecodeError::OtherString(format!(
            "{} bytes left over",
            payload.len() - used
        ))));
    }
    Ok(message)
}

/// The most a sequence of a data-plane message reserves before its elements arrive.
pub const SEQ_PREALLOC_BYTES: usize = 4096;

/// Deserializes a `Vec` without trusting its claimed length: it reserves at most
/// [`SEQ_PREALLOC_BYTES`] worth of elements up front, then grows with what is read (for
/// `#[serde(deserialize_with)]` on the data plane's `Vec` fields).
pub fn bounded_seq<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let most = SEQ_PREALLOC_BYTES / std::mem::size_of::<T>().max(1);
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(most));
            while let Some(element) = seq.next_element()? {
                out.push(element);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Bounded(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let mut out = BytesMut::new();
        encode(7, &("hello".to_string(), 42u64), &mut out).unwrap();
        encode(8, &vec![1u8, 2, 3], &mut out).unwrap();
        let whole = out.freeze();
        // fed one byte at a time, both frames come out once whole
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for byte in whole.iter() {
            buffer.put_u8(*byte);
            while let Some(frame) = take_frame(&mut buffer).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, 7);
        assert_eq!(decode::<(String, u64)>(&frames[0].1).unwrap(), ("hello".to_string(), 42));
        assert_eq!(frames[1].0, 8);
        assert_eq!(decode::<Vec<u8>>(&frames[1].1).unwrap(), vec![1, 2, 3]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn hostile_bytes_are_refused_without_allocating() {
        let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        huge.put_u8(FRAME_VERSION);
        assert!(matches!(take_frame(&mut huge), Err(FrameError::Length(_))));
        let mut wrong = BytesMut::new();
        wrong.put_u32(9);
        wrong.put_u8(99);
        assert!(matches!(take_frame(&mut wrong), Err(FrameError::Version(99))));
        // a payload whose inner length prefix claims gigabytes
        let mut payload = Vec::new();
        payload.push(253u8); // bincode varint: u64 follows
        payload.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(decode::<Vec<u8>>(&payload).is_err());
        // trailing garbage after a valid message
        let mut out = BytesMut::new();
        encode(1, &5u32, &mut out).unwrap();
        out.put_u8(0);
        let length = out.len() as u32 - 4;
        out[0..4].copy_from_slice(&length.to_be_bytes());
        let (_, payload) = take_frame(&mut out).unwrap().unwrap();
        assert!(decode::<u32>(&payload).is_err());
    }

    #[test]
    fn a_partial_frame_makes_room_as_its_bytes_arrive() {
        let mut claimed = BytesMut::new();
        claimed.put_u32(MAX_FRAME_BYTES as u32);
        claimed.put_u8(FRAME_VERSION);
        assert!(take_frame(&mut claimed).unwrap().is_none());
        assert!(claimed.capacity() <= 5 + RESERVE_AHEAD, "{} reserved for 5 bytes", claimed.capacity());
    }

    #[test]
    fn a_length_inside_a_small_payload_claims_no_more_than_its_step() {
        // a string of 1 MiB claimed in 9 bytes: over the 64 KiB a short payload may claim
        let mut payload = vec![252u8]; // bincode varint: u32 follows
        payload.extend_from_slice(&(1u32 << 20).to_le_bytes());
        payload.extend_from_slice(b"abcd");
        assert!(matches!(decode::<String>(&payload), Err(FrameError::Decode(_))));
        // a real string of 40 KiB still decodes
        let text = "x".repeat(40 << 10);
        let mut out = BytesMut::new();
        encode(1, &text, &mut out).unwrap();
        let (_, payload) = take_frame(&mut out).unwrap().unwrap();
        assert_eq!(decode::<String>(&payload).unwrap(), text);
    }
}
