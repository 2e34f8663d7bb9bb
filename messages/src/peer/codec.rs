//! Peer frames to bytes and back, and the opaque payloads inside Raft bodies.
//!
//! The rules are the client protocol's (`protocol::codec`): named maps from `rmp_serde`, a body
//! decoded only from the slice `read_header` bounded, nesting bounded, nothing after the map.
//! The bounded decoder itself is the client protocol's (`decode_exactly_one`); only the
//! mapping of its failures to peer errors, a type of their own, is here.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{PAYLOAD_DEPTH_MAX, PeerBody, PeerFailure, PeerKind, PeerProtocolError};
use crate::limits::{BODY_DEPTH_MAX, FRAME_BYTES_MAX};
use crate::protocol::codec::{Bounded, decode_exactly_one};
use crate::protocol::{FRAME_HEADER_BYTES, FrameHeader, LENGTH_FIELD_BYTES, RESPONSE_BIT};

/// The longest `reason` a `Malformed` error keeps: serde's messages can quote the offending
/// value, which a hostile peer controls.
const MALFORMED_REASON_BYTES_MAX: usize = 256;

/// The request frame of `kind` at its current version.
///
/// # Errors
/// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`; `Malformed` if serde fails.
pub fn encode_request_body<T: Serialize>(
    kind: PeerKind,
    correlation_id: u64,
    body: &T,
) -> Result<Vec<u8>, PeerProtocolError> {
    encode_frame(kind.code(), kind.version_max(), correlation_id, body)
}

/// The response frame of `kind`, with the response bit set. It is written at the kind's
/// current version; PROTOCOL.md promises the request's version, and while every peer kind has
/// one version these agree (when a kind gains a second, this must take the request's).
///
/// # Errors
/// As [`encode_request_body`].
pub fn encode_response_body<T: Serialize>(
    kind: PeerKind,
    correlation_id: u64,
    body: &T,
) -> Result<Vec<u8>, PeerProtocolError> {
    encode_frame(
        kind.code() | RESPONSE_BIT,
        kind.version_max(),
        correlation_id,
        body,
    )
}

/// The failure answer to the request whose header is `request`: same kind (response bit set),
/// same version, same correlation id, body `{"error": failure}`. It works for a kind this build
/// does not know, which is what `UnknownKind` answers.
///
/// # Errors
/// As [`encode_request_body`] (a failure is small, so in practice never).
pub fn encode_failure(
    request: &FrameHeader,
    failure: &PeerFailure,
) -> Result<Vec<u8>, PeerProtocolError> {
    #[derive(Serialize)]
    struct FailedBody<'a> {
        error: &'a PeerFailure,
    }
    encode_frame(
        request.request_kind() | RESPONSE_BIT,
        request.version,
        request.correlation_id,
        &FailedBody { error: failure },
    )
}

/// Decodes and validates the body of a request frame that must be of `kind`.
///
/// # Errors
/// `WrongDirection`, `NotPeerKind`, `UnknownKind`, `UnsupportedVersion`, `UnexpectedKind` (a
/// kind other than `kind`), a decoding error, or a field limit broken.
pub fn decode_request_body<T: PeerBody>(
    header: &FrameHeader,
    kind: PeerKind,
    body: &[u8],
) -> Result<T, PeerProtocolError> {
    let found = PeerKind::check_request(header)?;
    if found != kind {
        return Err(PeerProtocolError::UnexpectedKind {
            expected: kind.name(),
            kind: found.code(),
        });
    }
    let value: T = decode_body(body)?;
    value.validate()?;
    Ok(value)
}

/// Decodes the body of a response frame that must answer a request of `kind`: the answer, or
/// the failure the remote node sent (a body with a top-level `error`).
///
/// # Errors
/// As [`decode_request_body`], for a response frame.
pub fn decode_response_body<T: PeerBody>(
    header: &FrameHeader,
    kind: PeerKind,
    body: &[u8],
) -> Result<Result<T, PeerFailure>, PeerProtocolError> {
    #[derive(serde::Deserialize)]
    struct FailedProbe {
        #[serde(default)]
        error: Option<PeerFailure>,
    }
    let found = PeerKind::check_response(header)?;
    if found != kind {
        return Err(PeerProtocolError::UnexpectedKind {
            expected: kind.name(),
            kind: found.code(),
        });
    }
    // A success body has no top-level `error`, so probing first costs one walk of the body
    // (a `bin` is skipped, not copied) and keeps the success types free of it.
    let probe: FailedProbe = decode_body(body)?;
    if let Some(failure) = probe.error {
        failure.validate()?;
        return Ok(Err(failure));
    }
    let value: T = decode_body(body)?;
    value.validate()?;
    Ok(Ok(value))
}

/// Encodes an opaque payload (an openraft message) as named MessagePack, for a
/// [`super::RaftPayload`]. Only this crate knows MessagePack, so the Raft network encodes its
/// messages here.
///
/// # Errors
/// `Malformed` if serde cannot encode the value.
pub fn encode_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PeerProtocolError> {
    rmp_serde::to_vec_named(value).map_err(|e| malformed(&e.to_string()))
}

/// Decodes an opaque payload written by [`encode_payload`], nesting bounded by
/// `PAYLOAD_DEPTH_MAX` and nothing allowed after the value. The payload was already bounded by
/// its frame, so no length inside it can make this read or allocate past 8 MiB.
///
/// # Errors
/// `Truncated`, `TrailingBytes`, `TooDeep` or `Malformed`.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerProtocolError> {
    decode_bounded(bytes, PAYLOAD_DEPTH_MAX)
}

fn encode_frame<T: Serialize + ?Sized>(
    kind: u16,
    version: u16,
    correlation_id: u64,
    body: &T,
) -> Result<Vec<u8>, PeerProtocolError> {
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    rmp_serde::encode::write_named(&mut out, body)
        .map_err(|e| malformed(&format!("cannot encode body: {e}")))?;
    let frame_bytes = out.len() as u64;
    if frame_bytes > u64::from(FRAME_BYTES_MAX) {
        return Err(PeerProtocolError::EncodedTooLarge {
            length: frame_bytes,
            max: FRAME_BYTES_MAX,
        });
    }
    let header = FrameHeader {
        // Cannot truncate: the frame is at most FRAME_BYTES_MAX (8 MiB), checked above.
        length: (frame_bytes - LENGTH_FIELD_BYTES as u64) as u32,
        kind,
        version,
        correlation_id,
    };
    out[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
    Ok(out)
}

/// Decodes one body: exactly one map, nesting at most `BODY_DEPTH_MAX`, nothing after it.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, PeerProtocolError> {
    match body.first() {
        None => return Err(PeerProtocolError::Truncated),
        // fixmap, map16, map32.
        Some(0x80..=0x8f | 0xde | 0xdf) => {}
        Some(marker) => {
            return Err(malformed(&format!(
                "body starts with marker {marker:#04x}, not a map"
            )));
        }
    }
    decode_bounded(body, BODY_DEPTH_MAX)
}

fn decode_bounded<T: DeserializeOwned>(
    bytes: &[u8],
    depth_max: u32,
) -> Result<T, PeerProtocolError> {
    decode_exactly_one(bytes, depth_max).map_err(|e| match e {
        Bounded::Decode(e) => from_rmp(e, depth_max),
        Bounded::TrailingBytes => PeerProtocolError::TrailingBytes,
    })
}

fn from_rmp(error: rmp_serde::decode::Error, depth_max: u32) -> PeerProtocolError {
    use rmp_serde::decode::Error;
    match error {
        Error::InvalidMarkerRead(e) | Error::InvalidDataRead(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            PeerProtocolError::Truncated
        }
        Error::DepthLimitExceeded => PeerProtocolError::TooDeep { max: depth_max },
        other => malformed(&other.to_string()),
    }
}

fn malformed(reason: &str) -> PeerProtocolError {
    let mut reason = reason.to_owned();
    if reason.len() > MALFORMED_REASON_BYTES_MAX {
        let mut end = MALFORMED_REASON_BYTES_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    PeerProtocolError::Malformed { reason }
}
