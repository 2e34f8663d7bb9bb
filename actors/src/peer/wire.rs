//! Frames on a socket, for links and the listener alike: the header through the one check
//! every reader makes (`read_header`), then exactly the body it announces, each step bounded in
//! time; and the jittered back-off between connection attempts.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use vltava_messages::protocol::FRAME_HEADER_BYTES;

/// Reads one frame header's 16 bytes, with no time bound (callers add the one that fits:
/// none between a handshaken connection's frames, the handshake's before it).
///
/// # Errors
/// `UnexpectedEof` when the stream ends, at a frame boundary or not; other I/O errors.
pub(crate) async fn read_header_bytes<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> io::Result<[u8; FRAME_HEADER_BYTES]> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    reader.read_exact(&mut header).await?;
    Ok(header)
}

/// Why a frame's body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TimedOut,
    Io(io::Error),
}

/// Reads exactly `body_bytes` (already checked by `read_header`, so at most 8 MiB) within
/// `timeout`, into spare capacity (tokio fills it without zeroing it first).
pub(crate) async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    body_bytes: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::with_capacity(body_bytes);
    let mut limited = reader.take(body_bytes as u64);
    match tokio::time::timeout(timeout, limited.read_to_end(&mut body)).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Err(e)) => Err(BodyError::Io(e)),
        Ok(Ok(n)) if n < body_bytes => Err(BodyError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ended after {n} of {body_bytes} body bytes"),
        ))),
        Ok(Ok(_)) => Ok(body),
    }
}

/// A small pseudo-random source for back-off jitter (xorshift64*), seeded from the process's
/// random hasher keys, so that the links of many nodes that lost the same peer at the same
/// moment do not reconnect in lockstep. Not for anything that needs real randomness.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(seed);
        // xorshift never leaves zero, so make sure not to start there.
        Jitter(hasher.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration between half of `base` and all of it ("equal jitter"): spread out, and never
    /// shorter than half the back-off, so the pace a link keeps is known.
    pub(crate) fn spread(&mut self, base: Duration) -> Duration {
        let half = base / 2;
        let span = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        if span == 0 {
            return base;
        }
        half + Duration::from_nanos(self.next() % (span + 1))
    }
}

/// The back-off after `failures` failed attempts in a row (0 after a connection that worked was
/// lost): `initial` doubled per failure, capped at `max`, then jittered.
pub(crate) fn backoff(
    initial: Duration,
    max: Duration,
    failures: u32,
    jitter: &mut Jitter,
) -> Duration {
    // 2^16 times any sensible initial back-off is past any sensible cap; the bound keeps the
    // shift defined however long a node stays down.
    let base = initial.saturating_mul(1u32 << failures.min(16)).min(max);
    jitter.spread(base)
}

/// A task that is aborted when this is dropped: a connection's reader, writer and handler
/// tasks end with the connection, whichever way it ends.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
