//! A human-readable dump of a segment file, batch by batch, as kafka-dump-log prints: what an
//! operator reads when a log looks wrong. It reads the file as it is and never changes it.

use std::io::Write;
use std::path::Path;

use vltava_messages::RecordBatchRef;
use vltava_messages::batch::{self, BatchHeader, HEADER_BYTES};

use crate::error::{Result, StorageError};
use crate::fs::Storage;

/// What a dump found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub batches: u64,
    pub records: u64,
    pub bad_batches: u64,
    pub bytes: u64,
}

/// Writes one line per batch of the segment at `path` (offsets, leader epoch, timestamps,
/// record count, CRC ok or not, position), and one line per record when `records` is set.
/// A batch whose header cannot be trusted ends the dump with a line saying where and why.
pub fn dump_segment(
    storage: &dyn Storage,
    path: &Path,
    records: bool,
    out: &mut dyn Write,
) -> Result<DumpSummary> {
    let file = storage
        .open(path, false)
        .map_err(|e| StorageError::io(path, e))?;
    let len = file.byte_len().map_err(|e| StorageError::io(path, e))?;
    let io = |e| StorageError::io(path, e);
    writeln!(out, "Dumping {} ({len} bytes)", path.display()).map_err(io)?;
    let mut summary = DumpSummary {
        bytes: len,
        ..DumpSummary::default()
    };
    let mut position = 0u64;
    while position < len {
        let mut header_bytes = [0u8; HEADER_BYTES];
        let available = (len - position).min(HEADER_BYTES as u64) as usize;
        file.read_exact_at(&mut header_bytes[..available], position)
            .map_err(io)?;
        let header = match BatchHeader::parse(&header_bytes[..available]) {
            Ok(header) => header,
            Err(e) => {
                writeln!(out, "position: {position} unreadable: {e}").map_err(io)?;
                summary.bad_batches += 1;
                break;
            }
        };
        let total = header.total_bytes();
        if header.check_sanity().is_err() || position + total > len {
            let reason = header
                .check_sanity()
                .err()
                .map_or("runs past the end of the file".to_owned(), |e| {
                    e.to_string()
                });
            writeln!(out, "position: {position} bad header: {reason}").map_err(io)?;
            summary.bad_batches += 1;
            break;
        }
        let mut bytes = vec![0u8; total as usize];
        file.read_exact_at(&mut bytes, position).map_err(io)?;
        let crc_ok = batch::compute_crc(&bytes) == header.crc;
        writeln!(
            out,
            "baseOffset: {} lastOffset: {} count: {} leaderEpoch: {} firstTimestamp: {} maxTimestamp: {} timestampType: {:?} compression: {:?} producerId: {} producerEpoch: {} baseSequence: {} position: {position} size: {total} crc: {:#010x} crcValid: {crc_ok}",
            header.base_offset,
            header.last_offset(),
            header.record_count,
            header.partition_leader_epoch,
            header.first_timestamp,
            header.max_timestamp,
            header.timestamp_type(),
            header.compression().unwrap_or_default(),
            header.producer_id.map_or(-1, |p| p.0 as i64),
            header.producer_epoch.map_or(-1, |e| i32::from(e.0)),
            header.base_sequence.map_or(-1, |s| i64::from(s.0)),
            header.crc,
        )
        .map_err(io)?;
        summary.batches += 1;
        summary.records += u64::from(header.record_count);
        if !crc_ok {
            summary.bad_batches += 1;
        } else if records {
            match RecordBatchRef::new(&bytes).and_then(|b| b.records()) {
                Ok(list) => {
                    for r in list {
                        let headers: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{k}={}", show(v)))
                            .collect();
                        writeln!(
                            out,
                            "| offset: {} timestamp: {} key: {} value: {} headers: [{}]",
                            r.offset,
                            r.timestamp,
                            r.key.as_deref().map_or("null".to_owned(), show),
                            r.value.as_deref().map_or("null".to_owned(), show),
                            headers.join(", ")
                        )
                        .map_err(io)?;
                    }
                }
                Err(e) => writeln!(out, "| records unreadable: {e}").map_err(io)?,
            }
        }
        position += total;
    }
    writeln!(
        out,
        "batches: {} records: {} bad: {}",
        summary.batches, summary.records, summary.bad_batches
    )
    .map_err(io)?;
    Ok(summary)
}

/// Bytes as text when they are UTF-8 without control characters, else as hex.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => format!(
            "0x{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}
