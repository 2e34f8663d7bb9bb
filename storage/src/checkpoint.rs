//! Small files written whole and atomically: write a temporary file, fsync it, rename it over
//! the old one, fsync the directory. A crash at any step leaves either the old file or the new
//! one. Each file ends with a CRC-32C of the bytes before it, so a damaged file is detected
//! and treated as missing rather than trusted.

use std::path::Path;

use vltava_messages::Offset;

use crate::error::{Result, StorageError};
use crate::fs::Storage;

/// Suffix of the temporary file a checkpoint is written to before the rename.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Writes `body` plus its CRC to `path` atomically and durably. Blocks on two fsyncs.
pub fn write_atomic(storage: &dyn Storage, path: &Path, body: &[u8]) -> Result<()> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(TEMP_SUFFIX);
    let temp = Path::new(&temp_name);
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    let file = storage
        .open(temp, true)
        .map_err(|e| StorageError::io(temp, e))?;
    file.set_len(0).map_err(|e| StorageError::io(temp, e))?;
    file.write_at(&bytes, 0)
        .map_err(|e| StorageError::io(temp, e))?;
    // Crash here: only the temporary file may be damaged; the old checkpoint stands, and
    // opening the log deletes leftover temporary files.
    file.sync_data().map_err(|e| StorageError::io(temp, e))?;
    storage
        .rename(temp, path)
        .map_err(|e| StorageError::io(path, e))?;
    // Crash here: the rename may or may not have reached the disk; either file is whole.
    let dir = path.parent().unwrap_or(Path::new("."));
    storage.sync_dir(dir).map_err(|e| StorageError::io(dir, e))
}

/// The largest checkpoint [`read`] accepts (body and CRC). Checkpoints are a few KiB at
/// most; a larger file is damage, not data, and is not read into memory.
pub const CHECKPOINT_BYTES_MAX: u64 = 1 << 20;

/// The size of a CRC-32C, which ends every checkpoint.
const CRC_BYTES: u64 = 4;

/// Reads a checkpoint written by [`write_atomic`]: `Ok(None)` if it is missing or damaged.
pub fn read(storage: &dyn Storage, path: &Path) -> Result<Option<Vec<u8>>> {
    read_bounded(storage, path, CHECKPOINT_BYTES_MAX)
}

/// Like [`read`], for a file that may be larger than `CHECKPOINT_BYTES_MAX` (a producer-state
/// snapshot): a file longer than `bytes_max` is treated as damaged. Blocks.
pub fn read_bounded(storage: &dyn Storage, path: &Path, bytes_max: u64) -> Result<Option<Vec<u8>>> {
    if !storage.exists(path) {
        return Ok(None);
    }
    let file = storage
        .open(path, false)
        .map_err(|e| StorageError::io(path, e))?;
    let len = file.byte_len().map_err(|e| StorageError::io(path, e))?;
    if !(CRC_BYTES..=bytes_max).contains(&len) {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| StorageError::io(path, e))?;
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES as usize);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return Ok(None);
    }
    Ok(Some(body.to_vec()))
}

/// Writes a checkpoint holding one offset: `version (u8) | offset (u64) | crc (u32)`, the
/// framing of the recovery-point and high-watermark checkpoints. Blocks on two fsyncs.
pub fn write_offset(storage: &dyn Storage, path: &Path, version: u8, offset: Offset) -> Result<()> {
    let mut body = vec![version];
    body.extend_from_slice(&offset.0.to_be_bytes());
    write_atomic(storage, path, &body)
}

/// What reading a one-offset checkpoint found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetCheckpoint {
    /// No file.
    Missing,
    /// A file that is not a whole checkpoint of this version: a bad CRC, a wrong length or
    /// an unknown version.
    Damaged,
    Found(Offset),
}

/// Reads a checkpoint written by [`write_offset`] with the same `version`. Blocks.
pub fn read_offset(storage: &dyn Storage, path: &Path, version: u8) -> Result<OffsetCheckpoint> {
    if !storage.exists(path) {
        return Ok(OffsetCheckpoint::Missing);
    }
    let Some(body) = read(storage, path)? else {
        return Ok(OffsetCheckpoint::Damaged);
    };
    Ok(match body.as_slice() {
        [v, rest @ ..] if *v == version && rest.len() == 8 => OffsetCheckpoint::Found(Offset(
            u64::from_be_bytes(rest.try_into().expect("8 bytes")),
        )),
        _ => OffsetCheckpoint::Damaged,
    })
}
