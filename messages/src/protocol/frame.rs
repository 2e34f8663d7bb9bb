//! The frame: a fixed 16-byte header, then one MessagePack map.
//!
//! ```text
//! position  size  field
//!        0     4  length          u32, bytes after this field (12 + body length)
//!        4     2  kind            u16, request kind; a response sets the top bit (kind | 0x8000)
//!        6     2  version         u16, version of that kind, from 1
//!        8     8  correlation_id  u64, chosen by the client, echoed in the response
//!       16     …  body            one MessagePack map
//! ```
//!
//! All integers are big-endian. The header is fixed-width (not MessagePack) so that a reader
//! learns the frame's size, kind and correlation id from 16 bytes, before it allocates
//! anything, and can answer an oversized frame by correlation id before closing.
//!
//! Every reader of frames (the node's sessions and peer links, the client) starts with
//! [`read_header`]: 16 bytes in, the checked header and the body's length out, before any
//! allocation; it then reads exactly that many body bytes into a buffer of their own (which
//! produce batches are later split off without a copy). For a reader that buffers a stream
//! instead, [`parse_frame`] does the same over a buffer.
//!
//! Parsing is two-phase, as in mini-redis: [`parse_frame`] checks a buffer cheaply and says
//! whether it holds a whole frame (and where its body is); decoding the body is a separate
//! step (`Request::decode`, `Response::decode`). Unlike mini-redis, the declared length is
//! checked against `FRAME_BYTES_MAX` before the caller is told how much to buffer.

use std::ops::Range;

use super::error::ProtocolError;
use crate::limits::FRAME_BYTES_MAX;

/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 16;

/// Size of the `length` field, the part of the header that `length` does not count.
pub const LENGTH_FIELD_BYTES: usize = 4;

/// Header bytes that `length` counts (kind, version, correlation id): the smallest valid
/// `length`, that of a frame with an empty body.
pub const LENGTH_COUNTED_HEADER_BYTES: u32 = (FRAME_HEADER_BYTES - LENGTH_FIELD_BYTES) as u32;

/// The bit a response sets in `kind`, so that a stray response is never taken for a request.
pub const RESPONSE_BIT: u16 = 0x8000;

/// The fixed header of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Bytes after the `length` field: 12 + the body's length.
    pub length: u32,
    /// The request kind; a response carries `kind | RESPONSE_BIT`.
    pub kind: u16,
    /// The version of that kind the body is written in.
    pub version: u16,
    /// Chosen by the client; the response echoes it. A client with one connection and
    /// pipelining may simply count.
    pub correlation_id: u64,
}

impl FrameHeader {
    /// Reads the header from its 16 bytes. Nothing is checked: see [`parse_frame`].
    #[must_use]
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> FrameHeader {
        let [l0, l1, l2, l3, k0, k1, v0, v1, c @ ..] = *bytes;
        FrameHeader {
            length: u32::from_be_bytes([l0, l1, l2, l3]),
            kind: u16::from_be_bytes([k0, k1]),
            version: u16::from_be_bytes([v0, v1]),
            correlation_id: u64::from_be_bytes(c),
        }
    }

    /// The header's 16 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.length.to_be_bytes());
        out[4..6].copy_from_slice(&self.kind.to_be_bytes());
        out[6..8].copy_from_slice(&self.version.to_be_bytes());
        out[8..16].copy_from_slice(&self.correlation_id.to_be_bytes());
        out
    }

    /// The whole frame's size, header included. A `u64` because a hostile `length` of
    /// `u32::MAX` plus the length field overflows a `u32`.
    #[must_use]
    pub fn frame_bytes(&self) -> u64 {
        LENGTH_FIELD_BYTES as u64 + u64::from(self.length)
    }

    /// Whether the frame is a response (top bit of `kind` set).
    #[must_use]
    pub fn is_response(&self) -> bool {
        self.kind & RESPONSE_BIT != 0
    }

    /// The request kind, with the response bit cleared.
    #[must_use]
    pub fn request_kind(&self) -> u16 {
        self.kind & !RESPONSE_BIT
    }
}

/// A whole frame found at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub header: FrameHeader,
    /// Where the body lies in the buffer given to [`parse_frame`].
    pub body: Range<usize>,
}

impl RawFrame {
    /// The bytes the frame takes at the start of the buffer: advance the buffer by this much.
    #[must_use]
    pub fn frame_bytes(&self) -> usize {
        self.body.end
    }
}

/// What [`parse_frame`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameParse {
    /// The buffer holds less than one frame. This is the normal state of a stream, not an
    /// error: read more until the buffer holds at least `needed` bytes (16 while the header is
    /// incomplete, then the whole frame's size, which is at most `FRAME_BYTES_MAX`).
    Incomplete { needed: usize },
    /// A whole frame starts the buffer.
    Complete(RawFrame),
}

/// Reads and checks a frame header: the one step every reader of frames takes (the node's
/// sessions, and its peer links, and the client) before it reads a body. Returns the header and
/// the body's length, which is then at most `FRAME_BYTES_MAX - FRAME_HEADER_BYTES`, so a reader
/// may allocate it.
///
/// # Errors
/// `FrameTooSmall` (nothing to answer: close) or `FrameTooLarge` (answer by correlation id,
/// then close: the body is never read).
pub fn read_header(
    bytes: &[u8; FRAME_HEADER_BYTES],
) -> Result<(FrameHeader, usize), ProtocolError> {
    let header = FrameHeader::parse(bytes);
    if header.length < LENGTH_COUNTED_HEADER_BYTES {
        return Err(ProtocolError::FrameTooSmall {
            length: header.length,
        });
    }
    if header.frame_bytes() > u64::from(FRAME_BYTES_MAX) {
        return Err(ProtocolError::FrameTooLarge {
            header,
            max: FRAME_BYTES_MAX,
        });
    }
    // Cannot truncate: the frame is at most FRAME_BYTES_MAX (8 MiB) here.
    let body_bytes = (header.length - LENGTH_COUNTED_HEADER_BYTES) as usize;
    Ok((header, body_bytes))
}

/// Looks for one frame at the start of `buf`. It allocates nothing and reads only the header;
/// a declared length above `FRAME_BYTES_MAX` is an error as soon as the 16 header bytes are
/// there, so the correlation id is known, and the caller is never told to buffer more than
/// `FRAME_BYTES_MAX` bytes.
///
/// # Errors
/// `FrameTooLarge` (answer `RequestTooLarge`, then close) or `FrameTooSmall` (close).
pub fn parse_frame(buf: &[u8]) -> Result<FrameParse, ProtocolError> {
    let Some(header_bytes) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(FrameParse::Incomplete {
            needed: FRAME_HEADER_BYTES,
        });
    };
    let (header, body_bytes) = read_header(header_bytes)?;
    let frame_bytes = FRAME_HEADER_BYTES + body_bytes;
    if buf.len() < frame_bytes {
        return Ok(FrameParse::Incomplete {
            needed: frame_bytes,
        });
    }
    Ok(FrameParse::Complete(RawFrame {
        header,
        body: FRAME_HEADER_BYTES..frame_bytes,
    }))
}

/// The header of a frame whose body is `body_bytes` long, checked against `FRAME_BYTES_MAX`.
pub(crate) fn header_for_body(
    kind: u16,
    version: u16,
    correlation_id: u64,
    body_bytes: usize,
) -> Result<FrameHeader, ProtocolError> {
    let frame_bytes = FRAME_HEADER_BYTES as u64 + body_bytes as u64;
    if frame_bytes > u64::from(FRAME_BYTES_MAX) {
        return Err(ProtocolError::EncodedTooLarge {
            length: frame_bytes,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(FrameHeader {
        // Cannot truncate: checked against FRAME_BYTES_MAX just above.
        length: (frame_bytes - LENGTH_FIELD_BYTES as u64) as u32,
        kind,
        version,
        correlation_id,
    })
}
