//! An append-only file of small checksummed records, each made durable before `append`
//! returns: the node's local metadata log is one. A record is `length (u32) | crc32c (u32) |
//! body`, big-endian, the CRC over the body. Opening the file reads every record and cuts a
//! torn or corrupt tail (a record whose length runs past the end or whose CRC fails), which
//! can only be a record whose append never returned.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::fs::{Storage, StorageFile};

/// The largest record: metadata records are small; a bound keeps a damaged length from
/// asking for gigabytes.
pub const RECORD_BYTES_MAX: u32 = 1 << 20;

const RECORD_HEADER_BYTES: usize = 8;

/// An open record file.
#[derive(Debug)]
pub struct RecordFile {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    size: u64,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct RecordFileContents {
    pub records: Vec<Vec<u8>>,
    /// Bytes cut off a torn tail, if any.
    pub bytes_cut: u64,
}

impl RecordFile {
    /// Opens or creates the file, returning every intact record. Blocks.
    pub fn open(
        storage: Arc<dyn Storage>,
        path: &Path,
    ) -> Result<(RecordFile, RecordFileContents)> {
        let dir = path.parent().unwrap_or(Path::new("."));
        storage
            .create_dir_all(dir)
            .map_err(|e| StorageError::io(dir, e))?;
        let existed = storage.exists(path);
        let file = storage
            .open(path, true)
            .map_err(|e| StorageError::io(path, e))?;
        if !existed {
            storage
                .sync_dir(dir)
                .map_err(|e| StorageError::io(dir, e))?;
        }
        let len = file.byte_len().map_err(|e| StorageError::io(path, e))?;
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| StorageError::io(path, e))?;
        let mut contents = RecordFileContents::default();
        let mut position = 0usize;
        while position + RECORD_HEADER_BYTES <= bytes.len() {
            let length =
                u32::from_be_bytes(bytes[position..position + 4].try_into().expect("4 bytes"));
            let crc = u32::from_be_bytes(
                bytes[position + 4..position + 8]
                    .try_into()
                    .expect("4 bytes"),
            );
            let start = position + RECORD_HEADER_BYTES;
            let end = start + length as usize;
            if length > RECORD_BYTES_MAX
                || end > bytes.len()
                || crc32c::crc32c(&bytes[start..end]) != crc
            {
                break;
            }
            contents.records.push(bytes[start..end].to_vec());
            position = end;
        }
        if position as u64 != len {
            contents.bytes_cut = len - position as u64;
            tracing::warn!(path = %path.display(), position, bytes_cut = contents.bytes_cut, "cut a torn tail off a record file");
            file.set_len(position as u64)
                .map_err(|e| StorageError::io(path, e))?;
            file.sync_data().map_err(|e| StorageError::io(path, e))?;
        }
        Ok((
            RecordFile {
                storage,
                path: path.to_path_buf(),
                file,
                size: position as u64,
            },
            contents,
        ))
    }

    /// Appends one record and makes it durable. Blocks on an fsync. On failure the file is
    /// cut back so that a later append does not follow a partial record.
    pub fn append(&mut self, body: &[u8]) -> Result<()> {
        if body.len() as u64 > u64::from(RECORD_BYTES_MAX) {
            return Err(StorageError::BatchTooLarge {
                bytes: body.len() as u64,
                max: RECORD_BYTES_MAX,
            });
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
        record.extend_from_slice(&(body.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
        record.extend_from_slice(body);
        let written = self
            .file
            .write_at(&record, self.size)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.size);
            return Err(StorageError::io(&self.path, e));
        }
        self.size += record.len() as u64;
        Ok(())
    }

    /// The storage this file lives on.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimStorage;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let path = PathBuf::from("/meta/metadata.log");
        let (mut file, contents) = RecordFile::open(Arc::clone(&storage), &path).unwrap();
        assert!(contents.records.is_empty());
        file.append(b"one").unwrap();
        file.append(b"two").unwrap();
        let mut bytes = sim.live_contents(&path).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        sim.overwrite(&path, bytes);
        let (mut file, contents) = RecordFile::open(Arc::clone(&storage), &path).unwrap();
        assert_eq!(contents.records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(contents.bytes_cut, 6);
        file.append(b"three").unwrap();
        // Every append was fsynced: a power loss keeps all three.
        let image: Arc<dyn Storage> = Arc::new(sim.crash_image(1));
        let (_, contents) = RecordFile::open(image, &path).unwrap();
        assert_eq!(contents.records.len(), 3);
    }
}
