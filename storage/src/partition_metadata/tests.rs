use std::path::Path;

use super::*;
use crate::sim::SimStorage;

const ID: &str = "5f0c6b1e-8a53-4c1f-9a43-2c1d8e2b7f10";

#[test]
fn a_written_topic_id_reads_back() {
    let storage = SimStorage::new();
    let dir = Path::new("/data/t-0");
    storage.create_dir_all(dir).unwrap();
    write(&storage, dir, ID).unwrap();
    assert_eq!(read(&storage, dir).unwrap().as_deref(), Some(ID));
    let other = "0d8a2c4e-1111-4222-8333-944455556666";
    write(&storage, dir, other).unwrap();
    assert_eq!(read(&storage, dir).unwrap().as_deref(), Some(other));
}

#[test]
fn the_bytes_are_version_length_id_and_crc() {
    let storage = SimStorage::new();
    let dir = Path::new("/data/t-0");
    storage.create_dir_all(dir).unwrap();
    write(&storage, dir, "ab").unwrap();
    let bytes = storage.live_contents(&path(dir)).unwrap();
    let crc = crc32c::crc32c(&[1, 2, b'a', b'b']).to_be_bytes();
    assert_eq!(bytes, [1, 2, b'a', b'b', crc[0], crc[1], crc[2], crc[3]]);
}

#[test]
fn a_directory_without_the_file_has_no_topic_id() {
    let storage = SimStorage::new();
    let dir = Path::new("/data/t-0");
    storage.create_dir_all(dir).unwrap();
    assert_eq!(read(&storage, dir).unwrap(), None);
}

#[test]
fn a_damaged_file_is_corrupt_not_missing() {
    let storage = SimStorage::new();
    let dir = Path::new("/data/t-0");
    storage.create_dir_all(dir).unwrap();
    write(&storage, dir, ID).unwrap();
    let mut bytes = storage.live_contents(&path(dir)).unwrap();
    bytes[5] ^= 0x20;
    storage.overwrite(&path(dir), bytes);
    assert!(matches!(
        read(&storage, dir),
        Err(StorageError::Corrupt { .. })
    ));
    // A body whose CRC holds but whose version is unknown is refused as well.
    let body = [9u8, 1, b'x'];
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    storage.overwrite(&path(dir), bytes);
    assert!(matches!(
        read(&storage, dir),
        Err(StorageError::Corrupt { .. })
    ));
    // So is one whose length byte disagrees with its size.
    let body = [1u8, 5, b'x'];
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    storage.overwrite(&path(dir), bytes);
    assert!(matches!(
        read(&storage, dir),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn an_empty_or_overlong_topic_id_is_refused() {
    let storage = SimStorage::new();
    let dir = Path::new("/data/t-0");
    storage.create_dir_all(dir).unwrap();
    assert!(matches!(
        write(&storage, dir, ""),
        Err(StorageError::TopicIdLength { bytes: 0, .. })
    ));
    let long = "x".repeat(TOPIC_ID_BYTES_MAX + 1);
    assert!(matches!(
        write(&storage, dir, &long),
        Err(StorageError::TopicIdLength { .. })
    ));
    assert_eq!(read(&storage, dir).unwrap(), None);
}

/// A crash at either fsync of a write leaves no file or the whole file, never a damaged
/// one: a damaged file would keep the partition from opening.
#[test]
fn a_crash_during_the_write_leaves_no_file_or_the_whole_file() {
    for crash_at in 1..=2 {
        for seed in 0..32 {
            let storage = SimStorage::new();
            let dir = Path::new("/data/t-0");
            storage.create_dir_all(dir).unwrap();
            storage.set_crash_at_sync(crash_at);
            assert!(write(&storage, dir, ID).is_err());
            let after = storage.crash_image(seed);
            match read(&after, dir) {
                Ok(None) => {}
                Ok(Some(id)) => assert_eq!(id, ID),
                Err(e) => panic!("crash at sync {crash_at}, seed {seed}: {e}"),
            }
        }
    }
    // Once `write` returns, the file survives any crash.
    for seed in 0..32 {
        let storage = SimStorage::new();
        let dir = Path::new("/data/t-0");
        storage.create_dir_all(dir).unwrap();
        write(&storage, dir, ID).unwrap();
        assert_eq!(
            read(&storage.crash_image(seed), dir).unwrap().as_deref(),
            Some(ID)
        );
    }
}
