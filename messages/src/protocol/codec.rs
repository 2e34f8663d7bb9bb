//! Bodies to bytes and back, and the field checks every request passes after decoding.
//!
//! Encoding is `rmp_serde`'s named form: structs become maps keyed by field name, integers take
//! their smallest MessagePack form, byte fields (`serde_bytes`) become `bin`.
//!
//! Decoding reads only the body slice the frame parser bounded, so no length inside the body
//! can make it read or allocate past the frame: `rmp_serde` borrows strings and `bin`s from the
//! slice after checking they fit in it, and serde's collections preallocate at most 1 MiB
//! whatever length a hostile array claims. Nesting is bounded by `BODY_DEPTH_MAX`, so a body of
//! nested arrays cannot exhaust the stack.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{ProtocolError, truncate_at_char_boundary};
use super::frame::{FRAME_HEADER_BYTES, header_for_body};
use crate::limits::{
    BODY_DEPTH_MAX, PARTITIONS_PER_REQUEST_MAX, TOPIC_NAME_BYTES_MAX, TOPICS_PER_REQUEST_MAX,
};

/// The longest `reason` a `Malformed` error keeps. serde's messages can quote the offending
/// value, which a hostile body controls.
const MALFORMED_REASON_BYTES_MAX: usize = 256;

/// Writes one frame: header, then `body` as a named MessagePack map.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(
    kind: u16,
    version: u16,
    correlation_id: u64,
    body: &T,
) -> Result<Vec<u8>, ProtocolError> {
    // Counting first costs a walk of the body without copying its byte strings, and saves
    // the copies of a buffer grown by doubling, which for a 1 MiB batch add up to 2 MiB.
    let malformed = |e: rmp_serde::encode::Error| ProtocolError::Malformed {
        reason: format!("cannot encode body: {e}"),
    };
    let mut counter = ByteCounter(0);
    rmp_serde::encode::write_named(&mut counter, body).map_err(malformed)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + counter.0);
    out.resize(FRAME_HEADER_BYTES, 0);
    rmp_serde::encode::write_named(&mut out, body).map_err(malformed)?;
    let header = header_for_body(
        kind,
        version,
        correlation_id,
        out.len() - FRAME_HEADER_BYTES,
    )?;
    out[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    Ok(out)
}

/// A frame written in parts: `head`, then (if `around_hole`) the byte string that was left
/// out, borrowed from the body instead of copied, then `tail`.
#[derive(Debug)]
pub struct FrameAround {
    pub head: Vec<u8>,
    /// Whether the left-out bytes belong between `head` and `tail`; `false` when the body did
    /// not contain them (an empty byte string, say), and `head` is then the whole frame.
    pub around_hole: bool,
    pub tail: Vec<u8>,
}

/// Encodes a frame leaving out `hole`, one of the body's byte strings (found by address, as
/// the encoder writes it in one piece after its length prefix): a 1 MiB batch reaches the
/// socket without being copied into the frame first.
pub(crate) fn encode_frame_around<T: Serialize + ?Sized>(
    kind: u16,
    version: u16,
    correlation_id: u64,
    body: &T,
    hole: &[u8],
) -> Result<FrameAround, ProtocolError> {
    let mut writer = HoleWriter {
        head: vec![0; FRAME_HEADER_BYTES],
        tail: Vec::new(),
        hole,
        found: false,
    };
    rmp_serde::encode::write_named(&mut writer, body).map_err(|e| ProtocolError::Malformed {
        reason: format!("cannot encode body: {e}"),
    })?;
    let HoleWriter {
        mut head,
        tail,
        found,
        ..
    } = writer;
    let hole_bytes = if found { hole.len() } else { 0 };
    let header = header_for_body(
        kind,
        version,
        correlation_id,
        head.len() - FRAME_HEADER_BYTES + hole_bytes + tail.len(),
    )?;
    head[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    Ok(FrameAround {
        head,
        around_hole: found,
        tail,
    })
}

/// Collects what an encoder writes before and after one byte string, which it skips.
struct HoleWriter<'a> {
    head: Vec<u8>,
    tail: Vec<u8>,
    hole: &'a [u8],
    found: bool,
}

impl std::io::Write for HoleWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.found
            && !buf.is_empty()
            && buf.as_ptr() == self.hole.as_ptr()
            && buf.len() == self.hole.len()
        {
            self.found = true;
        } else if self.found {
            self.tail.extend_from_slice(buf);
        } else {
            self.head.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that only counts what it is given.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes one body. The body must be exactly one map: another top-level value or bytes after
/// the map are errors, because a client that sends either has a framing bug worth seeing.
/// Unknown fields are skipped.
pub(crate) fn decode_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ProtocolError> {
    match body.first() {
        None => return Err(ProtocolError::Truncated),
        // fixmap, map16, map32.
        Some(0x80..=0x8f | 0xde | 0xdf) => {}
        Some(marker) => {
            return Err(ProtocolError::Malformed {
                reason: format!("body starts with marker {marker:#04x}, not a map"),
            });
        }
    }
    decode_exactly_one(body, BODY_DEPTH_MAX).map_err(|e| match e {
        Bounded::Decode(e) => from_rmp(e),
        Bounded::TrailingBytes => ProtocolError::TrailingBytes,
    })
}

/// Why [`decode_exactly_one`] failed: the decoder's own error, or bytes after the value.
pub(crate) enum Bounded {
    Decode(rmp_serde::decode::Error),
    TrailingBytes,
}

/// Decodes exactly one MessagePack value from `bytes`, nesting at most `depth_max` levels and
/// nothing after it: the one bounded decoder of client bodies and peer frames and payloads,
/// each of which maps the failure to its own error type.
pub(crate) fn decode_exactly_one<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    depth_max: u32,
) -> Result<T, Bounded> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    // rmp_serde fails when its counter, decremented on entering a map or array, reaches zero,
    // so a setting of N admits N - 1 levels.
    deserializer.set_max_depth(depth_max as usize + 1);
    let value = T::deserialize(&mut deserializer).map_err(Bounded::Decode)?;
    // rmp_serde does not expose the unread rest of a borrowed slice, so look for one more
    // value: only a clean end of input means the value was the whole input.
    match serde::de::IgnoredAny::deserialize(&mut deserializer) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(value)
        }
        _ => Err(Bounded::TrailingBytes),
    }
}

/// Decodes a `{str: str}` map, refusing a key that appears twice (serde keeps the last one
/// silently). Which of two values a node would apply is an accident of the decoder, so a body
/// that sends both is refused like a struct that names a field twice (`CorruptFrame`).
pub(crate) fn unique_keys<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct UniqueKeys;

    impl<'de> serde::de::Visitor<'de> for UniqueKeys {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of strings to strings, each key once")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.contains_key(&key) {
                    let mut key = key;
                    truncate_at_char_boundary(&mut key, MALFORMED_REASON_BYTES_MAX);
                    return Err(serde::de::Error::custom(format_args!(
                        "the key {key:?} appears twice"
                    )));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(UniqueKeys)
}

fn from_rmp(error: rmp_serde::decode::Error) -> ProtocolError {
    use rmp_serde::decode::Error;
    match error {
        Error::InvalidMarkerRead(e) | Error::InvalidDataRead(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            ProtocolError::Truncated
        }
        Error::DepthLimitExceeded => ProtocolError::TooDeep {
            max: BODY_DEPTH_MAX,
        },
        other => {
            let mut reason = other.to_string();
            truncate_at_char_boundary(&mut reason, MALFORMED_REASON_BYTES_MAX);
            ProtocolError::Malformed { reason }
        }
    }
}

/// Checks a topic name: 1 to 249 bytes of `[a-zA-Z0-9._-]`, and neither `.` nor `..`. The
/// bound and the alphabet are Kafka's: a partition directory is named `<topic>-<partition>`,
/// which must stay below the 255-byte file-name limit of common file systems and must not
/// walk out of the data directory.
///
/// # Errors
/// `InvalidTopicName`, which the server answers with the code of the same name.
pub fn validate_topic_name(name: &str) -> Result<(), ProtocolError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > TOPIC_NAME_BYTES_MAX as usize {
        Some("longer than 249 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only [a-zA-Z0-9._-] are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => {
            let mut name = name.to_owned();
            truncate_at_char_boundary(&mut name, TOPIC_NAME_BYTES_MAX as usize);
            Err(ProtocolError::InvalidTopicName { name, reason })
        }
    }
}

/// The prefix of the names reserved for the node's internal topics (`__consumer_offsets`).
/// A valid topic name still, so clients may read such topics, but a node refuses to let a
/// client create, change, delete or write to one (`InvalidTopicName`).
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Whether `name` is reserved for an internal topic (it starts with `INTERNAL_TOPIC_PREFIX`).
#[must_use]
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with(INTERNAL_TOPIC_PREFIX)
}

/// Checks that a count, a byte length or a duration is at most `max`.
pub(crate) fn check_at_most(
    field: &'static str,
    value: impl TryInto<u64>,
    max: u32,
) -> Result<(), ProtocolError> {
    let value = value.try_into().unwrap_or(u64::MAX);
    if value > u64::from(max) {
        return Err(ProtocolError::FieldTooLarge {
            field,
            value,
            max: u64::from(max),
        });
    }
    Ok(())
}

/// Checks a list of topic names: the count, then each name.
pub(crate) fn check_topic_names<'a>(
    field: &'static str,
    names: impl ExactSizeIterator<Item = &'a str>,
    max: u32,
) -> Result<(), ProtocolError> {
    check_at_most(field, names.len(), max)?;
    for name in names {
        validate_topic_name(name)?;
    }
    Ok(())
}

/// MessagePack writers for the hand-written fetch answer. Each picks the smallest form, as
/// `rmp_serde` does, so hand-written and serde bytes are identical.
pub(crate) mod msgpack {
    pub(crate) fn map_len(out: &mut Vec<u8>, len: u32) {
        match len {
            0..=15 => out.push(0x80 | len as u8),
            16..=0xffff => {
                out.push(0xde);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0xdf);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
    }

    pub(crate) fn array_len(out: &mut Vec<u8>, len: u32) {
        match len {
            0..=15 => out.push(0x90 | len as u8),
            16..=0xffff => {
                out.push(0xdc);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0xdd);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
    }

    pub(crate) fn str(out: &mut Vec<u8>, text: &str) {
        // Callers bound their strings far below 4 GiB (names, messages).
        let len = text.len() as u32;
        match len {
            0..=31 => out.push(0xa0 | len as u8),
            32..=0xff => {
                out.push(0xd9);
                out.push(len as u8);
            }
            0x100..=0xffff => {
                out.push(0xda);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0xdb);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(text.as_bytes());
    }

    /// The header of a `bin` of `len` bytes; the bytes follow separately.
    pub(crate) fn bin_header(out: &mut Vec<u8>, len: u32) {
        match len {
            0..=0xff => {
                out.push(0xc4);
                out.push(len as u8);
            }
            0x100..=0xffff => {
                out.push(0xc5);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0xc6);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
    }

    pub(crate) fn uint(out: &mut Vec<u8>, value: u64) {
        match value {
            0..=0x7f => out.push(value as u8),
            0x80..=0xff => {
                out.push(0xcc);
                out.push(value as u8);
            }
            0x100..=0xffff => {
                out.push(0xcd);
                out.extend_from_slice(&(value as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(0xce);
                out.extend_from_slice(&(value as u32).to_be_bytes());
            }
            _ => {
                out.push(0xcf);
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
    }

    pub(crate) fn bool(out: &mut Vec<u8>, value: bool) {
        out.push(if value { 0xc3 } else { 0xc2 });
    }
}

/// Checks a topic list's count, names and total partition count.
pub(crate) fn check_topics<'a>(
    topics: impl ExactSizeIterator<Item = (&'a str, usize)>,
) -> Result<(), ProtocolError> {
    check_at_most("topics", topics.len(), TOPICS_PER_REQUEST_MAX)?;
    let mut partitions: usize = 0;
    for (name, count) in topics {
        validate_topic_name(name)?;
        partitions = partitions.saturating_add(count);
    }
    check_at_most(
        "partitions per request",
        partitions,
        PARTITIONS_PER_REQUEST_MAX,
    )
}
