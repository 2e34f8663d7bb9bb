//! An append-only file of small checksummed records, made durable before `append` (or
//! `append_all`) returns: the node's local metadata log is one. A record is `length (u32) |
//! crc32c (u32) | body`, big-endian, the CRC over the body. Opening the file reads every
//! record and cuts a torn or corrupt tail (a record whose length runs past the end or whose
//! CRC fails), which can only be a record whose append never returned.

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
        let (records, position) = parse(&bytes);
        let mut contents = RecordFileContents {
            records,
            bytes_cut: 0,
        };
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
        self.append_all(&[body])
    }

    /// Appends records with one write and makes them durable with one fsync. Blocks on it.
    /// On failure the file is cut back to where it was.
    ///
    /// Crash: before the fsync returns, a power loss may keep any subset of the new pages;
    /// opening the file stops at the first record that is missing or fails its CRC, so what
    /// survives is always a prefix of the records, as with one fsync per record (which could
    /// stop between two records too). None of them was reported durable.
    pub fn append_all<B: AsRef<[u8]>>(&mut self, bodies: &[B]) -> Result<()> {
        let mut bytes = Vec::with_capacity(
            bodies
                .iter()
                .map(|b| RECORD_HEADER_BYTES + b.as_ref().len())
                .sum(),
        );
        for body in bodies {
            let body = body.as_ref();
            // Zeros read back as a record of length 0 with CRC 0 (the CRC of nothing), so
            // `parse` ends at a length of 0 and an empty record could never be read back.
            assert!(!body.is_empty(), "a record file holds no empty records");
            if body.len() as u64 > u64::from(RECORD_BYTES_MAX) {
                return Err(StorageError::BatchTooLarge {
                    bytes: body.len() as u64,
                    max: RECORD_BYTES_MAX,
                });
            }
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
            bytes.extend_from_slice(body);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_at(&bytes, self.size)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.size);
            return Err(StorageError::io(&self.path, e));
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Reads every record again (those `open` returned and those appended since). Blocks.
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>> {
        let mut bytes = vec![0u8; self.size as usize];
        self.file
            .read_exact_at(&mut bytes, 0)
            .map_err(|e| StorageError::io(&self.path, e))?;
        let (records, _) = parse(&bytes);
        Ok(records)
    }

    /// The storage this file lives on.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}

/// The intact records at the start of `bytes`, and where they end. A length of 0 ends them:
/// pages of a file that grew and were lost in a power loss may read back as zeros, and eight
/// zero bytes would otherwise pass as an empty record (CRC-32C of nothing is 0).
fn parse(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut position = 0usize;
    while position + RECORD_HEADER_BYTES <= bytes.len() {
        let length = u32::from_be_bytes(bytes[position..position + 4].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(
            bytes[position + 4..position + 8]
                .try_into()
                .expect("4 bytes"),
        );
        let start = position + RECORD_HEADER_BYTES;
        let end = start + length as usize;
        if length == 0
            || length > RECORD_BYTES_MAX
            || end > bytes.len()
            || crc32c::crc32c(&bytes[start..end]) != crc
        {
            break;
        }
        records.push(bytes[start..end].to_vec());
        position = end;
    }
    (records, position)
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

    /// Appending a commit's records with one fsync (instead of one each) must keep what a
    /// crash leaves a prefix of the records: at every crash point and disk image, the
    /// reopened file holds the records appended before, then a prefix of the new ones.
    #[test]
    fn a_crash_during_append_all_leaves_a_prefix_of_the_records() {
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 300]).collect();
        for seed in 0..64 {
            let sim = SimStorage::new();
            let storage: Arc<dyn Storage> = Arc::new(sim.clone());
            let path = PathBuf::from("/meta/metadata.log");
            let (mut file, _) = RecordFile::open(Arc::clone(&storage), &path).unwrap();
            file.append(b"before").unwrap();
            let syncs = sim.sync_count();
            sim.set_crash_at_sync(syncs + 1);
            assert!(
                file.append_all(&bodies).is_err(),
                "the crash fails the fsync"
            );
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(seed));
            let (_, contents) = RecordFile::open(image, &path).unwrap();
            assert_eq!(contents.records[0], b"before".to_vec(), "seed {seed}");
            let after = &contents.records[1..];
            assert!(after.len() <= bodies.len(), "seed {seed}");
            assert_eq!(after, &bodies[..after.len()], "seed {seed}");
        }
    }

    /// Found by the test above: a power loss that keeps a grown file's length but not its
    /// pages leaves zeros, which passed as empty records (CRC-32C of nothing is 0); the
    /// metadata log then failed to decode them and the node could not start.
    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let path = PathBuf::from("/meta/metadata.log");
        let (mut file, _) = RecordFile::open(Arc::clone(&storage), &path).unwrap();
        file.append(b"one").unwrap();
        let mut bytes = sim.live_contents(&path).unwrap();
        bytes.extend_from_slice(&[0; 4096]);
        sim.overwrite(&path, bytes);
        let (_, contents) = RecordFile::open(Arc::clone(&storage), &path).unwrap();
        assert_eq!(contents.records, vec![b"one".to_vec()]);
        assert_eq!(contents.bytes_cut, 4096);
    }

    #[test]
    fn append_all_is_one_fsync_and_read_all_sees_every_record() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let path = PathBuf::from("/meta/metadata.log");
        let (mut file, _) = RecordFile::open(Arc::clone(&storage), &path).unwrap();
        let syncs = sim.sync_count();
        file.append_all(&[b"a".as_slice(), b"bb", b"ccc"]).unwrap();
        assert_eq!(sim.sync_count(), syncs + 1);
        assert_eq!(
            file.read_all().unwrap(),
            vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]
        );
        let image: Arc<dyn Storage> = Arc::new(sim.crash_image(3));
        let (_, contents) = RecordFile::open(image, &path).unwrap();
        assert_eq!(
            contents.records.len(),
            3,
            "fsynced records survive a power loss"
        );
    }
}
