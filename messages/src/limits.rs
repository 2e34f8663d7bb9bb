//! Bounds on record batches. Every number here protects the broker from a peer that lies
//! about a length, and each says why it has its value.

/// The largest record batch, header included, that a producer may send or a log may store.
/// 4 MiB keeps one batch well inside the 8 MiB frame bound of the wire protocol while leaving
/// room for the 1 MiB batches that reach full disk bandwidth.
pub const BATCH_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// The most records one batch may hold. A record takes at least 7 bytes, so an uncompressed
/// 4 MiB batch holds at most about 600,000; compressed batches are bounded by this and by
/// `RECORDS_DECOMPRESSED_BYTES_MAX`.
pub const BATCH_RECORDS_MAX: u32 = 1 << 20;

/// The largest records section a compressed batch may inflate to. Decompression stops at this
/// bound, so a small "zip bomb" batch cannot make the broker allocate without limit.
pub const RECORDS_DECOMPRESSED_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The most headers one record may carry.
pub const RECORD_HEADERS_MAX: u32 = 1024;

const _: () = assert!((BATCH_BYTES_MAX as usize) <= RECORDS_DECOMPRESSED_BYTES_MAX);
