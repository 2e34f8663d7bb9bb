//! The Fetch answer, written by hand so the stored record bytes are never copied.
//!
//! [`encode_fetch_response`] writes the header and every MessagePack piece of the map into
//! small owned buffers, and leaves each partition's records as the borrowed slice it was
//! given, preceded by the `bin` header that announces its length. The result is a list of
//! parts for one vectored write; the frame's `length` field is known before any part is
//! written to the socket. The bytes are exactly those `rmp_serde` writes for the equivalent
//! [`FetchResponse`](super::FetchResponse) (a test checks it), so clients decode it like any
//! other body.

use std::io::IoSlice;

use super::codec::msgpack;
use super::error::{ProtocolError, ResponseError};
use super::frame::{FRAME_HEADER_BYTES, header_for_body};
use super::{RESPONSE_BIT, RequestKind};
use crate::types::{Offset, PartitionId};

/// A Fetch answer whose records borrow the bytes read from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchResponseRef<'a> {
    pub topics: Vec<FetchTopicRef<'a>>,
}

/// The results for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchTopicRef<'a> {
    pub name: &'a str,
    pub partitions: Vec<FetchPartitionRef<'a>>,
}

/// The result for one partition; the fields mean what they mean in
/// [`FetchPartitionResponse`](super::FetchPartitionResponse).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartitionRef<'a> {
    pub partition: PartitionId,
    pub error: Option<ResponseError>,
    pub high_watermark: Option<Offset>,
    pub last_stable_offset: Option<Offset>,
    pub log_start_offset: Option<Offset>,
    /// Whole batches as stored, sent as they are.
    pub records: &'a [u8],
}

/// One piece of an encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramePart<'a> {
    /// Header and MessagePack structure, written by the encoder.
    Owned(Vec<u8>),
    /// Record bytes, borrowed from the caller.
    Borrowed(&'a [u8]),
}

impl FramePart<'_> {
    /// The part's bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            FramePart::Owned(bytes) => bytes,
            FramePart::Borrowed(bytes) => bytes,
        }
    }
}

/// A frame as an ordered list of parts; their concatenation is the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameParts<'a> {
    parts: Vec<FramePart<'a>>,
    frame_bytes: usize,
}

impl<'a> FrameParts<'a> {
    /// The parts, in order.
    #[must_use]
    pub fn parts(&self) -> &[FramePart<'a>] {
        &self.parts
    }

    /// The whole frame's size: the sum of the parts, 4 + the header's `length`.
    #[must_use]
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// The parts as slices for `write_vectored`. A writer must loop until every byte is out:
    /// a vectored write may stop part-way through any slice.
    #[must_use]
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        self.parts
            .iter()
            .map(|part| IoSlice::new(part.as_slice()))
            .collect()
    }

    /// The frame as one buffer (copies the records: for tests and small answers).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.frame_bytes);
        for part in &self.parts {
            out.extend_from_slice(part.as_slice());
        }
        out
    }
}

/// Builds the parts, merging consecutive owned pieces into one buffer.
struct PartsWriter<'a> {
    parts: Vec<FramePart<'a>>,
    current: Vec<u8>,
    frame_bytes: usize,
}

impl<'a> PartsWriter<'a> {
    fn borrowed(&mut self, bytes: &'a [u8]) {
        if bytes.is_empty() {
            return;
        }
        let owned = std::mem::take(&mut self.current);
        self.frame_bytes += owned.len();
        self.parts.push(FramePart::Owned(owned));
        self.frame_bytes += bytes.len();
        self.parts.push(FramePart::Borrowed(bytes));
    }

    fn finish(mut self) -> (Vec<FramePart<'a>>, usize) {
        if !self.current.is_empty() {
            self.frame_bytes += self.current.len();
            self.parts.push(FramePart::Owned(self.current));
        }
        (self.parts, self.frame_bytes)
    }
}

/// Converts a collection length to a MessagePack length. Counts here are bounded by the
/// request's limits (thousands), records by the frame limit (8 MiB).
fn wire_len(len: usize) -> Result<u32, ProtocolError> {
    u32::try_from(len).map_err(|_| ProtocolError::EncodedTooLarge {
        length: len as u64,
        max: crate::limits::FRAME_BYTES_MAX,
    })
}

/// Writes `error` as `rmp_serde` writes a [`ResponseError`]: fields in declaration order,
/// absent extras left out.
fn write_error(out: &mut Vec<u8>, error: &ResponseError) {
    let extras = [
        error.leader.map(|leader| ("leader", u64::from(leader.0))),
        error
            .version_min
            .map(|version| ("version_min", u64::from(version))),
        error
            .version_max
            .map(|version| ("version_max", u64::from(version))),
    ];
    let extra_count = extras.iter().flatten().count() as u32;
    msgpack::map_len(out, 4 + extra_count);
    msgpack::str(out, "code");
    msgpack::uint(out, u64::from(error.code));
    msgpack::str(out, "name");
    msgpack::str(out, &error.name);
    msgpack::str(out, "message");
    msgpack::str(out, &error.message);
    msgpack::str(out, "retriable");
    msgpack::bool(out, error.retriable);
    for (key, value) in extras.into_iter().flatten() {
        msgpack::str(out, key);
        msgpack::uint(out, value);
    }
}

fn write_partition<'a>(
    writer: &mut PartsWriter<'a>,
    partition: &FetchPartitionRef<'a>,
) -> Result<(), ProtocolError> {
    let offsets = [
        ("high_watermark", partition.high_watermark),
        ("last_stable_offset", partition.last_stable_offset),
        ("log_start_offset", partition.log_start_offset),
    ];
    let field_count = 2
        + u32::from(partition.error.is_some())
        + offsets
            .iter()
            .filter(|(_, offset)| offset.is_some())
            .count() as u32;
    let out = &mut writer.current;
    msgpack::map_len(out, field_count);
    msgpack::str(out, "partition");
    msgpack::uint(out, u64::from(partition.partition.0));
    if let Some(error) = &partition.error {
        msgpack::str(out, "error");
        write_error(out, error);
    }
    for (key, offset) in offsets {
        if let Some(offset) = offset {
            msgpack::str(out, key);
            msgpack::uint(out, offset.0);
        }
    }
    msgpack::str(out, "records");
    msgpack::bin_header(out, wire_len(partition.records.len())?);
    writer.borrowed(partition.records);
    Ok(())
}

/// Encodes a Fetch answer as frame parts; the records are borrowed, never copied.
///
/// # Errors
/// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`: the server keeps the records
/// within `FETCH_RECORDS_BYTES_MAX` so that this does not happen.
pub fn encode_fetch_response<'a>(
    correlation_id: u64,
    response: &FetchResponseRef<'a>,
) -> Result<FrameParts<'a>, ProtocolError> {
    let mut writer = PartsWriter {
        parts: Vec::with_capacity(2 * response.topics.len() + 2),
        current: Vec::with_capacity(256),
        frame_bytes: 0,
    };
    // The header's place; its `length` is written once the parts are known.
    writer.current.resize(FRAME_HEADER_BYTES, 0);
    msgpack::map_len(&mut writer.current, 1);
    msgpack::str(&mut writer.current, "topics");
    msgpack::array_len(&mut writer.current, wire_len(response.topics.len())?);
    for topic in &response.topics {
        msgpack::map_len(&mut writer.current, 2);
        msgpack::str(&mut writer.current, "name");
        msgpack::str(&mut writer.current, topic.name);
        msgpack::str(&mut writer.current, "partitions");
        msgpack::array_len(&mut writer.current, wire_len(topic.partitions.len())?);
        for partition in &topic.partitions {
            write_partition(&mut writer, partition)?;
        }
    }
    let (mut parts, frame_bytes) = writer.finish();
    let header = header_for_body(
        RequestKind::Fetch.code() | RESPONSE_BIT,
        RequestKind::Fetch.version_max(),
        correlation_id,
        frame_bytes - FRAME_HEADER_BYTES,
    )?;
    let Some(FramePart::Owned(first)) = parts.first_mut() else {
        unreachable!("the first part is the owned buffer that starts with the header");
    };
    first[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    Ok(FrameParts { parts, frame_bytes })
}
