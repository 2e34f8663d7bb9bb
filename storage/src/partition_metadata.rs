//! The partition metadata file, `partition.metadata`: the id of the topic whose partition a
//! directory holds. Directory names carry only the topic's name, and a topic deleted and
//! created again under the same name gets a new id; the file is how a node that missed the
//! deletion tells the old topic's data from the new topic's.
//!
//! The file is written like a checkpoint ([`crate::checkpoint::write_atomic`]: temporary file,
//! fsync, rename, directory fsync) and read back with its CRC checked. Its body is
//! `version (u8) = 1 | topic_id_length (u8) | topic_id (UTF-8)`; STORAGE.md gives the bytes.

use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::fs::Storage;

/// The file's name inside a partition directory (Kafka's name for the same file).
pub const PARTITION_METADATA_FILE: &str = "partition.metadata";

/// The body's format version; a file of another version is reported as corrupt rather than
/// guessed at, since a newer build may have changed what the bytes mean.
pub const PARTITION_METADATA_VERSION: u8 = 1;

/// The longest topic id the file holds: its length is one byte. Topic ids are UUIDs in their
/// 36-character text form, so this leaves room to spare.
pub const TOPIC_ID_BYTES_MAX: usize = u8::MAX as usize;

/// The path of the file in the partition directory `dir`.
#[must_use]
pub fn path(dir: &Path) -> PathBuf {
    dir.join(PARTITION_METADATA_FILE)
}

/// Writes `topic_id` to `dir`'s metadata file atomically and durably: after it returns the
/// file and its directory entry survive a crash. Blocks on two fsyncs.
pub fn write(storage: &dyn Storage, dir: &Path, topic_id: &str) -> Result<()> {
    let id = topic_id.as_bytes();
    if id.is_empty() || id.len() > TOPIC_ID_BYTES_MAX {
        return Err(StorageError::TopicIdLength {
            bytes: id.len(),
            max: TOPIC_ID_BYTES_MAX,
        });
    }
    let mut body = Vec::with_capacity(2 + id.len());
    body.push(PARTITION_METADATA_VERSION);
    body.push(u8::try_from(id.len()).expect("the length was checked against u8::MAX"));
    body.extend_from_slice(id);
    // Crash anywhere in here: `write_atomic` leaves the old file (none, for a new partition)
    // or the new one whole, plus perhaps a `.tmp` file, which opening the log removes.
    checkpoint::write_atomic(storage, &path(dir), &body)
}

/// Reads the topic id in `dir`'s metadata file: `Ok(None)` when there is no file (a
/// directory written before the file existed, or a new one), `Corrupt` when the file is there
/// but its CRC, length, version or text is wrong. Blocks.
pub fn read(storage: &dyn Storage, dir: &Path) -> Result<Option<String>> {
    let path = path(dir);
    if !storage.exists(&path) {
        return Ok(None);
    }
    let corrupt = |reason: &str| StorageError::Corrupt {
        path: path.clone(),
        position: 0,
        reason: reason.to_owned(),
    };
    let Some(body) = checkpoint::read(storage, &path)? else {
        return Err(corrupt("its length or CRC is wrong"));
    };
    let [version, length, id @ ..] = body.as_slice() else {
        return Err(corrupt("it is shorter than its header"));
    };
    if *version != PARTITION_METADATA_VERSION {
        return Err(corrupt("its version is unknown"));
    }
    if id.len() != usize::from(*length) || id.is_empty() {
        return Err(corrupt("its topic id length does not match its size"));
    }
    match std::str::from_utf8(id) {
        Ok(id) => Ok(Some(id.to_owned())),
        Err(_) => Err(corrupt("its topic id is not UTF-8")),
    }
}

#[cfg(test)]
mod tests;
