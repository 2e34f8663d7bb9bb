//! The record batch: the unit a producer sends, a leader appends, a log stores, a follower
//! copies and a consumer receives. The bytes never change on that path, except for the three
//! fields the leader writes (base offset, partition leader epoch and, for topics that keep
//! log-append time, the timestamps), and the CRC does not cover the first two.
//!
//! # Layout (all integers big-endian; STORAGE.md draws it and explains every field)
//!
//! ```text
//! position  size  field
//!        0     8  base_offset             u64, written by the leader
//!        8     4  batch_length            u32, bytes after this field
//!       12     4  partition_leader_epoch  u32, written by the leader
//!       16     1  magic                   u8, = 1
//!       17     4  crc                     u32, CRC-32C of bytes [21, end)
//!       21     2  attributes              u16
//!       23     4  last_offset_delta       u32, = record_count - 1
//!       27     8  first_timestamp         i64, ms since the Unix epoch; base of record deltas
//!       35     8  max_timestamp           i64, largest record timestamp
//!       43     8  producer_id             i64, -1 = none
//!       51     2  producer_epoch          i16, -1 = none
//!       53     4  base_sequence           i32, -1 = none
//!       57     4  record_count            u32
//!       61     …  records (compressed as a whole when attributes say so)
//! ```

use std::io::{Read, Write};

use crate::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, PRODUCER_EPOCH_MAX, PRODUCER_ID_MAX, RECORD_HEADERS_MAX,
    RECORDS_DECOMPRESSED_BYTES_MAX, SEQUENCE_MAX,
};
use crate::types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence};
use crate::varint::{self, VarintError};

#[cfg(test)]
mod tests;

/// Position of `base_offset`.
pub const BASE_OFFSET_POSITION: usize = 0;
/// Position of `batch_length`.
pub const BATCH_LENGTH_POSITION: usize = 8;
/// Position of `partition_leader_epoch`.
pub const LEADER_EPOCH_POSITION: usize = 12;
/// Position of `magic`.
pub const MAGIC_POSITION: usize = 16;
/// Position of `crc`.
pub const CRC_POSITION: usize = 17;
/// Position of `attributes`; the CRC covers everything from here to the end of the batch.
pub const ATTRIBUTES_POSITION: usize = 21;
/// Position of `last_offset_delta`.
pub const LAST_OFFSET_DELTA_POSITION: usize = 23;
/// Position of `first_timestamp`.
pub const FIRST_TIMESTAMP_POSITION: usize = 27;
/// Position of `max_timestamp`.
pub const MAX_TIMESTAMP_POSITION: usize = 35;
/// Position of `producer_id`.
pub const PRODUCER_ID_POSITION: usize = 43;
/// Position of `producer_epoch`.
pub const PRODUCER_EPOCH_POSITION: usize = 51;
/// Position of `base_sequence`.
pub const BASE_SEQUENCE_POSITION: usize = 53;
/// Position of `record_count`.
pub const RECORD_COUNT_POSITION: usize = 57;
/// Size of the fixed header; records start here.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the part that `batch_length` counts (base offset and the length itself).
pub const LOG_OVERHEAD_BYTES: usize = 12;

/// The format version this crate reads and writes.
pub const MAGIC: u8 = 1;

/// Attribute bits 0-2: the compression of the records section.
const ATTRIBUTE_COMPRESSION_MASK: u16 = 0b111;
/// Attribute bit 3: set when the leader stamped log-append time.
const ATTRIBUTE_LOG_APPEND_TIME: u16 = 1 << 3;
/// Attribute bit 4: reserved for transactional batches.
const ATTRIBUTE_TRANSACTIONAL: u16 = 1 << 4;
/// Attribute bit 5: reserved for control batches (transaction markers).
const ATTRIBUTE_CONTROL: u16 = 1 << 5;
/// Bits 6-15 are reserved and must be zero.
const ATTRIBUTE_RESERVED_MASK: u16 = !0b11_1111;

/// How the records section of a batch is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    #[default]
    None,
    /// The LZ4 frame format (not the raw block format), so any LZ4 library reads it.
    Lz4,
    /// A standard Zstandard frame.
    Zstd,
}

impl Compression {
    /// The value of attribute bits 0-2.
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u16) -> Result<Self, BatchError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression { code: other }),
        }
    }
}

/// Whose clock a batch's timestamps come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// The producer's clock, per record.
    #[default]
    CreateTime,
    /// The leader's clock at append; every record in the batch reads `max_timestamp`.
    LogAppendTime,
}

/// Why a batch was refused. Each variant carries what a log line or a client needs to act.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("batch length field says {declared} bytes but {actual} are present")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("batch of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge { bytes: u64, max: u32 },
    #[error("unsupported batch format (magic {magic}, this build reads {MAGIC})")]
    UnsupportedMagic { magic: u8 },
    #[error("CRC mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("unknown compression code {code}")]
    UnknownCompression { code: u16 },
    #[error("attributes {attributes:#06x} set reserved, transactional or control bits")]
    UnsupportedAttributes { attributes: u16 },
    #[error("record count {count} is outside 1..={max}")]
    RecordCountOutOfRange { count: u32, max: u32 },
    #[error("last offset delta {last_offset_delta} does not match record count {count}")]
    LastOffsetDeltaMismatch { last_offset_delta: u32, count: u32 },
    #[error("header says {declared} records but the batch holds {actual}")]
    RecordCountMismatch { declared: u32, actual: u32 },
    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: u32, reason: &'static str },
    #[error("record {index} has offset delta {delta}, expected {index}")]
    OffsetDeltaMismatch { index: u32, delta: i32 },
    #[error("max timestamp {declared} does not match the records' largest, {actual}")]
    MaxTimestampMismatch { declared: i64, actual: i64 },
    #[error("records inflate past {max} bytes")]
    DecompressedTooLarge { max: usize },
    #[error("compressed records could not be decoded: {reason}")]
    Decompression { reason: String },
    #[error(
        "producer fields (id {producer_id}, epoch {producer_epoch}, base sequence {base_sequence}) \
         must be all -1 or all non-negative"
    )]
    InvalidProducerFields {
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    },
}

impl From<VarintError> for BatchError {
    fn from(_: VarintError) -> Self {
        BatchError::MalformedRecord {
            index: 0,
            reason: "bad varint",
        }
    }
}

fn be_u16(buf: &[u8], position: usize) -> u16 {
    u16::from_be_bytes([buf[position], buf[position + 1]])
}

fn be_u32(buf: &[u8], position: usize) -> u32 {
    u32::from_be_bytes(
        buf[position..position + 4]
            .try_into()
            .expect("slice of 4 bytes"),
    )
}

fn be_u64(buf: &[u8], position: usize) -> u64 {
    u64::from_be_bytes(
        buf[position..position + 8]
            .try_into()
            .expect("slice of 8 bytes"),
    )
}

/// The parsed fixed header of a batch. Parsing checks only that the bytes are present; the
/// CRC and the records are checked by [`validate_crc`] and [`validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub batch_length: u32,
    pub partition_leader_epoch: LeaderEpoch,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: Option<ProducerId>,
    pub producer_epoch: Option<ProducerEpoch>,
    pub base_sequence: Option<Sequence>,
    pub record_count: u32,
}

impl BatchHeader {
    /// Parses the 61-byte header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                have: buf.len(),
                need: HEADER_BYTES,
            });
        }
        let producer_id = be_u64(buf, PRODUCER_ID_POSITION) as i64;
        let producer_epoch = be_u16(buf, PRODUCER_EPOCH_POSITION) as i16;
        let base_sequence = be_u32(buf, BASE_SEQUENCE_POSITION) as i32;
        Ok(BatchHeader {
            base_offset: Offset(be_u64(buf, BASE_OFFSET_POSITION)),
            batch_length: be_u32(buf, BATCH_LENGTH_POSITION),
            partition_leader_epoch: LeaderEpoch(be_u32(buf, LEADER_EPOCH_POSITION)),
            magic: buf[MAGIC_POSITION],
            crc: be_u32(buf, CRC_POSITION),
            attributes: be_u16(buf, ATTRIBUTES_POSITION),
            last_offset_delta: be_u32(buf, LAST_OFFSET_DELTA_POSITION),
            first_timestamp: be_u64(buf, FIRST_TIMESTAMP_POSITION) as i64,
            max_timestamp: be_u64(buf, MAX_TIMESTAMP_POSITION) as i64,
            producer_id: (producer_id >= 0).then_some(ProducerId(producer_id as u64)),
            producer_epoch: (producer_epoch >= 0).then_some(ProducerEpoch(producer_epoch as u16)),
            base_sequence: (base_sequence >= 0).then_some(Sequence(base_sequence as u32)),
            record_count: be_u32(buf, RECORD_COUNT_POSITION),
        })
    }

    /// The whole batch's size in bytes, header included.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        LOG_OVERHEAD_BYTES as u64 + u64::from(self.batch_length)
    }

    /// The offset of the batch's last record.
    #[must_use]
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.last_offset_delta))
    }

    /// The offset after the batch's last record.
    #[must_use]
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    /// The compression named by the attributes.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_code(self.attributes & ATTRIBUTE_COMPRESSION_MASK)
    }

    /// Whose clock the timestamps come from.
    #[must_use]
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Checks the fields that can be checked without the records: magic, length bounds,
    /// attribute bits, record count against last offset delta.
    pub fn check_sanity(&self) -> Result<(), BatchError> {
        if self.magic != MAGIC {
            return Err(BatchError::UnsupportedMagic { magic: self.magic });
        }
        let total = self.total_bytes();
        if total < HEADER_BYTES as u64 {
            return Err(BatchError::LengthMismatch {
                declared: total,
                actual: HEADER_BYTES as u64,
            });
        }
        if total > u64::from(BATCH_BYTES_MAX) {
            return Err(BatchError::TooLarge {
                bytes: total,
                max: BATCH_BYTES_MAX,
            });
        }
        self.compression()?;
        if self.attributes & (ATTRIBUTE_RESERVED_MASK | ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL)
            != 0
        {
            return Err(BatchError::UnsupportedAttributes {
                attributes: self.attributes,
            });
        }
        if self.record_count == 0 || self.record_count > BATCH_RECORDS_MAX {
            return Err(BatchError::RecordCountOutOfRange {
                count: self.record_count,
                max: BATCH_RECORDS_MAX,
            });
        }
        if self.last_offset_delta != self.record_count - 1 {
            return Err(BatchError::LastOffsetDeltaMismatch {
                last_offset_delta: self.last_offset_delta,
                count: self.record_count,
            });
        }
        Ok(())
    }
}

/// Computes the CRC-32C that a batch's `crc` field must hold: over every byte after it.
#[must_use]
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POSITION..])
}

/// Checks that `batch` is exactly one batch with a sane header and a matching CRC. This is
/// what recovery and the read path check; it does not look inside the records.
pub fn validate_crc(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_bytes() != batch.len() as u64 {
        return Err(BatchError::LengthMismatch {
            declared: header.total_bytes(),
            actual: batch.len() as u64,
        });
    }
    header.check_sanity()?;
    let actual = compute_crc(batch);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// What full validation learned about a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    pub header: BatchHeader,
}

/// Fully validates one batch from a producer: everything [`validate_crc`] checks, plus the
/// producer fields ([`producer_fields`]), every record's framing, the record count, the offset
/// deltas and the max timestamp. Compressed records are inflated (bounded by
/// `RECORDS_DECOMPRESSED_BYTES_MAX`) to be counted.
pub fn validate(batch: &[u8]) -> Result<BatchInfo, BatchError> {
    let header = validate_crc(batch)?;
    // Here, not in `validate_crc`: recovery must keep reading a log that holds a batch with
    // mixed producer fields from before this check existed, rather than cut it off.
    producer_fields(batch)?;
    let records = records_section(&header, batch)?;
    let mut count: u32 = 0;
    let mut max_timestamp = i64::MIN;
    let mut cursor = RecordCursor::new(&records);
    while let Some(record) = cursor.next_record(count)? {
        if count >= header.record_count {
            return Err(BatchError::RecordCountMismatch {
                declared: header.record_count,
                actual: count + 1,
            });
        }
        if record.offset_delta != count as i32 {
            return Err(BatchError::OffsetDeltaMismatch {
                index: count,
                delta: record.offset_delta,
            });
        }
        // A timestamp past i64 would wrap to a time in the far past or future; refused, so
        // every stored record's timestamp is `first_timestamp + timestamp_delta` exactly.
        let timestamp = header
            .first_timestamp
            .checked_add(record.timestamp_delta)
            .ok_or(BatchError::MalformedRecord {
                index: count,
                reason: "timestamp delta takes the timestamp past i64",
            })?;
        max_timestamp = max_timestamp.max(timestamp);
        count += 1;
    }
    if count != header.record_count {
        return Err(BatchError::RecordCountMismatch {
            declared: header.record_count,
            actual: count,
        });
    }
    if header.timestamp_type() == TimestampType::CreateTime && max_timestamp != header.max_timestamp
    {
        return Err(BatchError::MaxTimestampMismatch {
            declared: header.max_timestamp,
            actual: max_timestamp,
        });
    }
    Ok(BatchInfo { header })
}

/// A batch's producer fields, read as the header's raw integers: `None` when all three are -1
/// (not from an idempotent producer), the id, epoch and base sequence when all three are
/// non-negative. Any other mix is refused: `BatchHeader::parse` reads each negative field as
/// absent, so a batch with an id but an epoch of -32768 (an epoch of 32768 written as i16)
/// would otherwise pass as not idempotent and skip every producer check.
pub fn producer_fields(
    batch: &[u8],
) -> Result<Option<(ProducerId, ProducerEpoch, Sequence)>, BatchError> {
    if batch.len() < HEADER_BYTES {
        return Err(BatchError::Truncated {
            have: batch.len(),
            need: HEADER_BYTES,
        });
    }
    let producer_id = be_u64(batch, PRODUCER_ID_POSITION) as i64;
    let producer_epoch = be_u16(batch, PRODUCER_EPOCH_POSITION) as i16;
    let base_sequence = be_u32(batch, BASE_SEQUENCE_POSITION) as i32;
    match (producer_id, producer_epoch, base_sequence) {
        (-1, -1, -1) => Ok(None),
        (id, epoch, sequence) if id >= 0 && epoch >= 0 && sequence >= 0 => Ok(Some((
            ProducerId(id as u64),
            ProducerEpoch(epoch as u16),
            Sequence(sequence as u32),
        ))),
        _ => Err(BatchError::InvalidProducerFields {
            producer_id,
            producer_epoch,
            base_sequence,
        }),
    }
}

/// Stamps a producer's id, epoch and base sequence into a built batch and recomputes the CRC,
/// which covers them. A producer uses it to send batches again under a new epoch.
///
/// # Panics
/// If a value is outside the header's range (`PRODUCER_ID_MAX`, `PRODUCER_EPOCH_MAX`,
/// `SEQUENCE_MAX`): it would be read back as "none".
pub fn set_producer(
    batch: &mut [u8],
    id: ProducerId,
    epoch: ProducerEpoch,
    base_sequence: Sequence,
) {
    assert_producer_in_range(id, epoch, base_sequence);
    batch[PRODUCER_ID_POSITION..PRODUCER_ID_POSITION + 8].copy_from_slice(&id.0.to_be_bytes());
    batch[PRODUCER_EPOCH_POSITION..PRODUCER_EPOCH_POSITION + 2]
        .copy_from_slice(&epoch.0.to_be_bytes());
    batch[BASE_SEQUENCE_POSITION..BASE_SEQUENCE_POSITION + 4]
        .copy_from_slice(&base_sequence.0.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
}

fn assert_producer_in_range(id: ProducerId, epoch: ProducerEpoch, base_sequence: Sequence) {
    assert!(id.0 <= PRODUCER_ID_MAX, "producer id {} out of range", id.0);
    assert!(
        epoch.0 <= PRODUCER_EPOCH_MAX,
        "producer epoch {} out of range",
        epoch.0
    );
    assert!(
        base_sequence.0 <= SEQUENCE_MAX,
        "sequence {} out of range",
        base_sequence.0
    );
}

/// Writes the base offset into a batch. The CRC does not cover it.
pub fn set_base_offset(batch: &mut [u8], offset: Offset) {
    batch[BASE_OFFSET_POSITION..BASE_OFFSET_POSITION + 8].copy_from_slice(&offset.0.to_be_bytes());
}

/// Writes the partition leader epoch into a batch. The CRC does not cover it.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: LeaderEpoch) {
    batch[LEADER_EPOCH_POSITION..LEADER_EPOCH_POSITION + 4].copy_from_slice(&epoch.0.to_be_bytes());
}

/// Stamps log-append time: sets the attribute bit, writes `now_ms` as first and max timestamp
/// and recomputes the CRC, since both fields are covered by it. Readers then give every record
/// of the batch `max_timestamp`.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_u16(batch, ATTRIBUTES_POSITION) | ATTRIBUTE_LOG_APPEND_TIME;
    batch[ATTRIBUTES_POSITION..ATTRIBUTES_POSITION + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[FIRST_TIMESTAMP_POSITION..FIRST_TIMESTAMP_POSITION + 8]
        .copy_from_slice(&now_ms.to_be_bytes());
    batch[MAX_TIMESTAMP_POSITION..MAX_TIMESTAMP_POSITION + 8]
        .copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The records section, inflated when the batch is compressed.
fn records_section<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, BatchError> {
    let raw = &batch[HEADER_BYTES..];
    match header.compression()? {
        Compression::None => Ok(std::borrow::Cow::Borrowed(raw)),
        Compression::Lz4 => {
            inflate(lz4_flex::frame::FrameDecoder::new(raw)).map(std::borrow::Cow::Owned)
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(raw).map_err(|e| {
                BatchError::Decompression {
                    reason: e.to_string(),
                }
            })?;
            inflate(decoder).map(std::borrow::Cow::Owned)
        }
    }
}

fn inflate(reader: impl Read) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    reader
        .take(RECORDS_DECOMPRESSED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Decompression {
            reason: e.to_string(),
        })?;
    if out.len() > RECORDS_DECOMPRESSED_BYTES_MAX {
        return Err(BatchError::DecompressedTooLarge {
            max: RECORDS_DECOMPRESSED_BYTES_MAX,
        });
    }
    Ok(out)
}

fn deflate(compression: Compression, records: &[u8]) -> Vec<u8> {
    match compression {
        Compression::None => records.to_vec(),
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder
                .write_all(records)
                .expect("writing to a Vec cannot fail");
            encoder
                .finish()
                .expect("finishing an LZ4 frame into a Vec cannot fail")
        }
        Compression::Zstd => {
            // Level 3 is zstd's default: most of the ratio at a fraction of the cost.
            zstd::bulk::compress(records, 3).expect("zstd compression into memory cannot fail")
        }
    }
}

/// One record as it sits in the records section, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: u32,
}

impl<'a> RecordView<'a> {
    /// The record's headers, in order. Framing and UTF-8 were checked when the view was made.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let buf = self.headers;
        let mut pos = 0;
        (0..self.header_count).map(move |_| {
            let key = read_sized(buf, &mut pos).ok().flatten().unwrap_or_default();
            let value = read_sized(buf, &mut pos).ok().flatten().unwrap_or_default();
            (std::str::from_utf8(key).unwrap_or_default(), value)
        })
    }
}

/// The length prefix of a null key or value.
const NULL_LENGTH: i32 = -1;

/// Reads a length-prefixed field: `None` for the null length, -1. Any other negative length
/// is malformed (Kafka reads every negative length as null; vltava keeps one spelling of
/// null, so a length that is neither -1 nor a real length shows a producer's bug).
fn read_sized<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, BatchError> {
    let len = varint::get_varint(buf, pos)?;
    if len == NULL_LENGTH {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| BatchError::MalformedRecord {
        index: 0,
        reason: "negative length other than -1",
    })?;
    let end = pos.checked_add(len).filter(|end| *end <= buf.len());
    let end = end.ok_or(BatchError::MalformedRecord {
        index: 0,
        reason: "field runs past its record",
    })?;
    let bytes = &buf[*pos..end];
    *pos = end;
    Ok(Some(bytes))
}

/// Walks the records of an (inflated) records section.
struct RecordCursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> RecordCursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        RecordCursor { buf, pos: 0 }
    }

    /// The next record, `None` at the end; `index` only labels errors.
    fn next_record(&mut self, index: u32) -> Result<Option<RecordView<'a>>, BatchError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let malformed = |reason| BatchError::MalformedRecord { index, reason };
        let length =
            varint::get_varint(self.buf, &mut self.pos).map_err(|_| malformed("bad length"))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|end| *end <= self.buf.len())
            .ok_or(malformed("length runs past the records section"))?;
        let record = &self.buf[self.pos..end];
        self.pos = end;
        let mut pos = 0;
        let _attributes = *record.first().ok_or(malformed("empty record"))?;
        pos += 1;
        let timestamp_delta =
            varint::get_varlong(record, &mut pos).map_err(|_| malformed("bad timestamp delta"))?;
        let offset_delta =
            varint::get_varint(record, &mut pos).map_err(|_| malformed("bad offset delta"))?;
        let key = read_sized(record, &mut pos).map_err(|_| malformed("bad key"))?;
        let value = read_sized(record, &mut pos).map_err(|_| malformed("bad value"))?;
        let header_count =
            varint::get_varint(record, &mut pos).map_err(|_| malformed("bad header count"))?;
        let header_count = u32::try_from(header_count)
            .ok()
            .filter(|count| *count <= RECORD_HEADERS_MAX)
            .ok_or(malformed("header count out of range"))?;
        let headers_start = pos;
        for _ in 0..header_count {
            let key = read_sized(record, &mut pos)
                .map_err(|_| malformed("bad header key"))?
                .ok_or(malformed("null header key"))?;
            std::str::from_utf8(key).map_err(|_| malformed("header key is not UTF-8"))?;
            read_sized(record, &mut pos)
                .map_err(|_| malformed("bad header value"))?
                .ok_or(malformed("null header value"))?;
        }
        if pos != record.len() {
            return Err(malformed("bytes left over after the headers"));
        }
        Ok(Some(RecordView {
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers: &record[headers_start..],
            header_count,
        }))
    }
}

/// One event, decoded and owned: what a consumer gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone: on a compacted topic it deletes the key.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// An owned copy of a record view, given its absolute offset and timestamp.
    #[must_use]
    pub fn from_view(offset: Offset, timestamp: i64, view: &RecordView<'_>) -> Record {
        Record {
            offset,
            timestamp,
            key: view.key.map(<[u8]>::to_vec),
            value: view.value.map(<[u8]>::to_vec),
            headers: view
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
        }
    }
}

/// A validated view of one batch's bytes.
#[derive(Clone, Copy, Debug)]
pub struct RecordBatchRef<'a> {
    pub header: BatchHeader,
    pub bytes: &'a [u8],
}

impl<'a> RecordBatchRef<'a> {
    /// Checks the header and CRC of `bytes`, which must hold exactly one batch.
    pub fn new(bytes: &'a [u8]) -> Result<Self, BatchError> {
        Ok(RecordBatchRef {
            header: validate_crc(bytes)?,
            bytes,
        })
    }

    /// Decodes every record, with its absolute offset and timestamp.
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        let mut out = Vec::with_capacity(self.header.record_count.min(4096) as usize);
        self.for_each_record(|offset, timestamp, view| {
            out.push(Record::from_view(offset, timestamp, &view));
        })?;
        Ok(out)
    }

    /// Calls `visit` with each record's absolute offset, timestamp and borrowed view, in
    /// order, decompressing the records section first if it is compressed: a reader that
    /// keeps records in its own shape copies each field once.
    pub fn for_each_record(
        &self,
        mut visit: impl FnMut(Offset, i64, RecordView<'_>),
    ) -> Result<(), BatchError> {
        let section = records_section(&self.header, self.bytes)?;
        let mut cursor = RecordCursor::new(&section);
        let mut index = 0;
        while let Some(view) = cursor.next_record(index)? {
            let timestamp = match self.header.timestamp_type() {
                TimestampType::CreateTime => self
                    .header
                    .first_timestamp
                    .wrapping_add(view.timestamp_delta),
                TimestampType::LogAppendTime => self.header.max_timestamp,
            };
            let offset = self
                .header
                .base_offset
                .plus(u64::from(view.offset_delta as u32));
            visit(offset, timestamp, view);
            index += 1;
        }
        Ok(())
    }
}

/// The headers of the whole batches at the start of `bytes`, read without checking CRCs: a
/// walk of what was checked before (on append, or by a consumer that checks CRCs next).
pub fn batch_headers(mut bytes: &[u8]) -> impl Iterator<Item = BatchHeader> + '_ {
    std::iter::from_fn(move || {
        let header = BatchHeader::parse(bytes).ok()?;
        bytes = usize::try_from(header.total_bytes())
            .ok()
            .and_then(|n| bytes.get(n..))?;
        Some(header)
    })
}

/// Splits a buffer of consecutive batches (a fetch answer, a segment's bytes) into batches,
/// checking each one's header and CRC. Stops with an error at the first bad batch.
pub fn split_batches(
    mut buf: &[u8],
) -> impl Iterator<Item = Result<RecordBatchRef<'_>, BatchError>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || buf.is_empty() {
            return None;
        }
        let result = BatchHeader::parse(buf).and_then(|header| {
            let total = header.total_bytes();
            if total > buf.len() as u64 {
                return Err(BatchError::Truncated {
                    have: buf.len(),
                    need: total as usize,
                });
            }
            let (batch, rest) = buf.split_at(total as usize);
            let batch = RecordBatchRef::new(batch)?;
            buf = rest;
            Ok(batch)
        });
        failed = result.is_err();
        Some(result)
    })
}

/// Builds a batch from records, as a producer does. Offsets start at 0 and the leader epoch
/// is 0; the leader writes both when it appends.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    producer: Option<(ProducerId, ProducerEpoch, Sequence)>,
    /// The batch as it will be sent: `HEADER_BYTES` left blank until `build` fills them in,
    /// then the records, so an uncompressed batch is built without copying its records.
    batch: Vec<u8>,
    count: u32,
    first_timestamp: Option<i64>,
    max_timestamp: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new(Compression::None)
    }
}

impl BatchBuilder {
    #[must_use]
    pub fn new(compression: Compression) -> Self {
        BatchBuilder::with_capacity(compression, 0)
    }

    /// A builder whose buffer holds `bytes` of batch (header included) before it grows: a
    /// producer that knows its batch size builds a full batch without reallocating.
    #[must_use]
    pub fn with_capacity(compression: Compression, bytes: usize) -> Self {
        let mut batch = Vec::with_capacity(bytes.max(HEADER_BYTES));
        batch.resize(HEADER_BYTES, 0);
        BatchBuilder {
            compression,
            producer: None,
            batch,
            count: 0,
            first_timestamp: None,
            max_timestamp: 0,
        }
    }

    /// Marks the batch as sent by an idempotent producer.
    ///
    /// # Panics
    /// If a value is outside the header's range (`PRODUCER_ID_MAX`, `PRODUCER_EPOCH_MAX`,
    /// `SEQUENCE_MAX`): it would be read back as "none".
    #[must_use]
    pub fn producer(
        mut self,
        id: ProducerId,
        epoch: ProducerEpoch,
        base_sequence: Sequence,
    ) -> Self {
        assert_producer_in_range(id, epoch, base_sequence);
        self.producer = Some((id, epoch, base_sequence));
        self
    }

    /// The number of records pushed so far.
    #[must_use]
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// The size of the uncompressed batch if it were built now.
    #[must_use]
    pub fn uncompressed_bytes(&self) -> usize {
        self.batch.len()
    }

    /// Appends one record with the given timestamp (ms since the Unix epoch).
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        timestamp: i64,
    ) {
        let first_timestamp = *self.first_timestamp.get_or_insert(timestamp);
        self.max_timestamp = if self.count == 0 {
            timestamp
        } else {
            self.max_timestamp.max(timestamp)
        };
        let timestamp_delta = timestamp.wrapping_sub(first_timestamp);
        let sized_len = |field: Option<&[u8]>| match field {
            Some(bytes) => varint::varlong_len(bytes.len() as i64) + bytes.len(),
            None => 1,
        };
        let mut body_len = 1
            + varint::varlong_len(timestamp_delta)
            + varint::varlong_len(i64::from(self.count))
            + sized_len(key)
            + sized_len(value)
            + varint::varlong_len(headers.len() as i64);
        for (k, v) in headers {
            body_len += sized_len(Some(k.as_bytes())) + sized_len(Some(v));
        }
        let out = &mut self.batch;
        out.reserve(body_len + 5);
        varint::put_varint(out, body_len as i32);
        out.push(0);
        varint::put_varlong(out, timestamp_delta);
        varint::put_varint(out, self.count as i32);
        put_sized(out, key);
        put_sized(out, value);
        varint::put_varint(out, headers.len() as i32);
        for (k, v) in headers {
            put_sized(out, Some(k.as_bytes()));
            put_sized(out, Some(v));
        }
        self.count += 1;
    }

    /// Produces the batch bytes, compressing the records section if asked to.
    ///
    /// # Panics
    /// If no record was pushed: an empty batch is not a batch.
    #[must_use]
    pub fn build(self) -> Vec<u8> {
        assert!(self.count > 0, "a batch holds at least one record");
        let mut batch = match self.compression {
            Compression::None => self.batch,
            compression => {
                let records = deflate(compression, &self.batch[HEADER_BYTES..]);
                let mut batch = Vec::with_capacity(HEADER_BYTES + records.len());
                batch.resize(HEADER_BYTES, 0);
                batch.extend_from_slice(&records);
                batch
            }
        };
        let batch_length = (batch.len() - LOG_OVERHEAD_BYTES) as u32;
        let (producer_id, producer_epoch, base_sequence) = match self.producer {
            Some((id, epoch, sequence)) => (id.0 as i64, epoch.0 as i16, sequence.0 as i32),
            None => (-1, -1, -1),
        };
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(&0u64.to_be_bytes());
        header.extend_from_slice(&batch_length.to_be_bytes());
        header.extend_from_slice(&0u32.to_be_bytes());
        header.push(MAGIC);
        header.extend_from_slice(&0u32.to_be_bytes());
        header.extend_from_slice(&self.compression.code().to_be_bytes());
        header.extend_from_slice(&(self.count - 1).to_be_bytes());
        header.extend_from_slice(&self.first_timestamp.unwrap_or_default().to_be_bytes());
        header.extend_from_slice(&self.max_timestamp.to_be_bytes());
        header.extend_from_slice(&producer_id.to_be_bytes());
        header.extend_from_slice(&producer_epoch.to_be_bytes());
        header.extend_from_slice(&base_sequence.to_be_bytes());
        header.extend_from_slice(&self.count.to_be_bytes());
        debug_assert_eq!(header.len(), HEADER_BYTES);
        batch[..HEADER_BYTES].copy_from_slice(&header);
        let crc = compute_crc(&batch);
        batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }
}

fn put_sized(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        Some(bytes) => {
            varint::put_varint(out, bytes.len() as i32);
            out.extend_from_slice(bytes);
        }
        None => varint::put_varint(out, -1),
    }
}
