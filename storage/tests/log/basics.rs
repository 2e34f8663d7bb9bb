//! Appends, reads, lookups, rolls, truncation and retention, on a healthy disk.

use std::sync::Arc;

use vltava_messages::batch::BatchHeader;
use vltava_messages::{LeaderEpoch, Offset, TimestampType};
use vltava_storage::{Log, LogConfig, RealStorage, Storage, StorageError};

use super::*;

#[test]
fn appended_batches_get_consecutive_offsets_and_read_back_whole() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let mut b = batch(&format!("b{i}"), 1 + i % 7, 100, 1_000 + i64::from(i));
        let info = log.append_as_leader(&mut b, EPOCH, 1_000).unwrap();
        assert_eq!(info.base_offset, Offset(expected.len() as u64));
        assert_eq!(info.last_offset.0 - info.base_offset.0, u64::from(i % 7));
        for j in 0..=i % 7 {
            expected.push(format!("b{i}-{j}"));
        }
    }
    assert_eq!(log.log_end_offset(), Offset(expected.len() as u64));
    assert!(log.segments().len() > 1, "64 KiB segments rolled");
    let records = read_all(&mut log);
    assert_eq!(records.len(), expected.len());
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(*offset, Offset(i as u64));
        assert!(value.starts_with(expected[i].as_bytes()), "record {i}");
    }
}

#[test]
fn the_leader_stamps_offsets_and_epoch_without_touching_the_records() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    let mut first = batch("a", 3, 10, 5);
    log.append_as_leader(&mut first, LeaderEpoch(4), 1_000)
        .unwrap();
    let original = batch("b", 2, 10, 5);
    let mut second = original.clone();
    log.append_as_leader(&mut second, LeaderEpoch(4), 1_000)
        .unwrap();
    let read = log.read(Offset(3), 1 << 20, None).unwrap();
    assert_eq!(read.bytes, second, "stored bytes are the bytes appended");
    let header = BatchHeader::parse(&read.bytes).unwrap();
    assert_eq!(header.base_offset, Offset(3));
    assert_eq!(header.partition_leader_epoch, LeaderEpoch(4));
    // Past the base offset and leader epoch (and their length field), nothing changed.
    assert_eq!(read.bytes[16..], original[16..]);
}

#[test]
fn reads_honour_the_byte_budget_but_return_at_least_one_batch() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    for i in 0..10 {
        log.append_as_leader(&mut batch("x", 5, 200, i), EPOCH, 1_000)
            .unwrap();
    }
    let one = log.read(Offset(0), 1, None).unwrap();
    assert_eq!(one.batch_count, 1);
    assert_eq!(one.next_offset, Offset(5));
    let size = one.bytes.len() as u32;
    let three = log.read(Offset(0), size * 3 + 10, None).unwrap();
    assert_eq!(three.batch_count, 3);
    // An offset inside a batch returns that whole batch.
    let inside = log.read(Offset(7), 1, None).unwrap();
    assert_eq!(
        BatchHeader::parse(&inside.bytes).unwrap().base_offset,
        Offset(5)
    );
    // The high watermark bounds what is returned.
    let bounded = log.read(Offset(0), 1 << 20, Some(Offset(10))).unwrap();
    assert_eq!(bounded.batch_count, 2);
    assert_eq!(
        log.read(Offset(10), 1 << 20, Some(Offset(10)))
            .unwrap()
            .batch_count,
        0
    );
    // At the log end a read is empty; past it, out of range.
    assert_eq!(log.read(Offset(50), 100, None).unwrap().batch_count, 0);
    assert!(matches!(
        log.read(Offset(51), 100, None),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn bad_batches_are_typed_errors_and_change_nothing() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    log.append_as_leader(&mut batch("ok", 2, 10, 0), EPOCH, 1_000)
        .unwrap();
    let mut bad_crc = batch("bad", 2, 10, 0);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    assert!(matches!(
        log.append_as_leader(&mut bad_crc, EPOCH, 1_000),
        Err(StorageError::InvalidBatch(_))
    ));
    let config = LogConfig {
        batch_bytes_max: 1000,
        ..small_config()
    };
    let mut small = open(&storage, &std::path::PathBuf::from("/sim/other"), config);
    let mut big = batch("big", 20, 100, 0);
    assert!(matches!(
        small.append_as_leader(&mut big, EPOCH, 1_000),
        Err(StorageError::BatchTooLarge { .. })
    ));
    assert!(matches!(
        log.append_as_leader(&mut batch("old", 1, 1, 0), LeaderEpoch(0), 1_000),
        Err(StorageError::LeaderEpochRegression { .. })
    ));
    assert_eq!(log.log_end_offset(), Offset(2));
    assert_eq!(read_all(&mut log).len(), 2);
}

#[test]
fn follower_appends_keep_the_header_and_must_continue_the_log() {
    let (_, storage) = sim();
    let mut leader = open(&storage, &sim_dir(), small_config());
    let mut follower = open(
        &storage,
        &std::path::PathBuf::from("/sim/follower"),
        small_config(),
    );
    for i in 0..5 {
        leader
            .append_as_leader(&mut batch("f", 3, 20, i), LeaderEpoch(2), 1_000)
            .unwrap();
    }
    let read = leader.read(Offset(0), 1 << 20, None).unwrap();
    for b in vltava_messages::batch::split_batches(&read.bytes) {
        follower
            .append_as_follower(b.unwrap().bytes, 1_000)
            .unwrap();
    }
    assert_eq!(follower.log_end_offset(), Offset(15));
    assert_eq!(
        follower.read(Offset(0), 1 << 20, None).unwrap().bytes,
        read.bytes
    );
    let again = leader.read(Offset(3), 1, None).unwrap();
    assert!(matches!(
        follower.append_as_follower(&again.bytes, 1_000),
        Err(StorageError::NonContiguousAppend { .. })
    ));
    assert_eq!(follower.latest_epoch(), Some(LeaderEpoch(2)));
}

#[test]
fn offset_lookup_finds_every_offset_through_the_sparse_index() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    let mut bases = Vec::new();
    for i in 0..300 {
        let info = log
            .append_as_leader(&mut batch("l", 4, 60, i), EPOCH, 1_000)
            .unwrap();
        bases.push(info);
    }
    for info in &bases {
        for offset in info.base_offset.0..=info.last_offset.0 {
            let (segment, position) = log.lookup(Offset(offset)).unwrap().unwrap();
            assert_eq!(segment, info.segment_base_offset);
            assert_eq!(position, info.position);
        }
    }
}

trait OffsetOnly {
    fn offset_for_timestamp_offset(
        &mut self,
        timestamp: i64,
    ) -> vltava_storage::Result<Option<Offset>>;
}

impl OffsetOnly for Log {
    fn offset_for_timestamp_offset(
        &mut self,
        timestamp: i64,
    ) -> vltava_storage::Result<Option<Offset>> {
        let found = self.offset_for_timestamp(timestamp)?;
        if let Some((_, record_timestamp)) = found {
            assert!(
                record_timestamp >= timestamp,
                "the record found is not older than asked"
            );
        }
        Ok(found.map(|(offset, _)| offset))
    }
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after_it() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    // Batch i holds timestamps 1000*i .. 1000*i+9 for offsets 10*i .. 10*i+9.
    for i in 0..200 {
        log.append_as_leader(&mut batch("t", 10, 50, 1000 * i), EPOCH, 1_000)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp_offset(0).unwrap(), Some(Offset(0)));
    assert_eq!(log.offset_for_timestamp_offset(5).unwrap(), Some(Offset(5)));
    assert_eq!(
        log.offset_for_timestamp_offset(10).unwrap(),
        Some(Offset(10))
    );
    assert_eq!(
        log.offset_for_timestamp_offset(150_003).unwrap(),
        Some(Offset(1503))
    );
    assert_eq!(
        log.offset_for_timestamp_offset(150_500).unwrap(),
        Some(Offset(1510))
    );
    assert_eq!(
        log.offset_for_timestamp_offset(199_009).unwrap(),
        Some(Offset(1999))
    );
    assert_eq!(log.offset_for_timestamp_offset(199_010).unwrap(), None);
}

#[test]
fn log_append_time_is_stamped_by_the_leader() {
    let (_, storage) = sim();
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..small_config()
    };
    let mut log = open(&storage, &sim_dir(), config);
    let info = log
        .append_as_leader(&mut batch("t", 3, 5, 7), EPOCH, 123_456)
        .unwrap();
    assert_eq!(info.log_append_time, Some(123_456));
    let read = log.read(Offset(0), 1 << 20, None).unwrap();
    let records = vltava_messages::RecordBatchRef::new(&read.bytes)
        .unwrap()
        .records()
        .unwrap();
    assert!(records.iter().all(|r| r.timestamp == 123_456));
}

#[test]
fn segments_roll_by_age() {
    let (_, storage) = sim();
    let config = LogConfig {
        segment_ms: 10_000,
        ..small_config()
    };
    let mut log = Log::open(Arc::clone(&storage), &sim_dir(), config, 0).unwrap();
    log.append_as_leader(&mut batch("a", 1, 5, 0), EPOCH, 0)
        .unwrap();
    log.append_as_leader(&mut batch("a", 1, 5, 0), EPOCH, 9_999)
        .unwrap();
    assert_eq!(log.segments().len(), 1);
    log.append_as_leader(&mut batch("a", 1, 5, 0), EPOCH, 10_000)
        .unwrap();
    assert_eq!(log.segments().len(), 2);
    assert!(log.roll_if_old(25_000).unwrap());
    assert_eq!(log.segments().len(), 3);
    assert!(
        !log.roll_if_old(26_000).unwrap(),
        "an empty active segment does not roll"
    );
}

#[test]
fn truncation_drops_the_suffix_and_the_epochs_past_it() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    for i in 0..100 {
        let epoch = LeaderEpoch(1 + i / 40);
        log.append_as_leader(&mut batch("x", 5, 100, i64::from(i)), epoch, 1_000)
            .unwrap();
    }
    log.flush().unwrap();
    assert_eq!(log.epoch_cache().entries().len(), 3);
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(200)))
    );
    // Cut inside a batch: the whole batch goes.
    log.truncate_to(Offset(252)).unwrap();
    assert_eq!(log.log_end_offset(), Offset(250));
    assert_eq!(log.epoch_cache().entries().len(), 2);
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(2)),
        Some((LeaderEpoch(2), Offset(250)))
    );
    assert!(log.recovery_point() <= Offset(250));
    assert_eq!(read_all(&mut log).len(), 250);
    // New appends continue at the cut, and survive a reopen.
    log.append_as_leader(&mut batch("new", 2, 10, 0), LeaderEpoch(5), 1_000)
        .unwrap();
    log.close().unwrap();
    let mut log = open(&storage, &sim_dir(), small_config());
    let records = read_all(&mut log);
    assert_eq!(records.len(), 252);
    assert!(records[250].1.starts_with(b"new-0"));
    // Truncating to the very start empties the log but keeps its start.
    log.truncate_to(Offset(0)).unwrap();
    assert_eq!(log.log_end_offset(), Offset(0));
    assert_eq!(log.segments().len(), 1);
}

#[test]
fn retention_deletes_whole_old_segments_below_the_high_watermark() {
    let (_, storage) = sim();
    let config = LogConfig {
        retention_ms: Some(10_000),
        ..small_config()
    };
    let mut log = open(&storage, &sim_dir(), config);
    for i in 0..400 {
        // Old records first, then new ones.
        let timestamp = if i < 200 { 1_000 } else { 100_000 };
        log.append_as_leader(&mut batch("r", 2, 300, timestamp), EPOCH, 1_000)
            .unwrap();
    }
    let before = log.segments().len();
    log.set_high_watermark(Offset(0));
    assert!(
        log.delete_old_segments(105_000).unwrap().is_empty(),
        "nothing above the high watermark goes"
    );
    log.set_high_watermark(log.log_end_offset());
    let removed = log.delete_old_segments(105_000).unwrap();
    assert!(!removed.is_empty());
    assert_eq!(log.segments().len(), before - removed.len());
    assert!(log.log_start_offset() > Offset(0) && log.log_start_offset() <= Offset(400));
    assert!(matches!(
        log.read(Offset(0), 10, None),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert!(
        read_all(&mut log)
            .iter()
            .all(|(o, _)| *o >= log.log_start_offset())
    );

    let config = LogConfig {
        retention_ms: None,
        retention_bytes: Some(100_000),
        ..small_config()
    };
    let mut log = open(&storage, &std::path::PathBuf::from("/sim/bytes"), config);
    for i in 0..400 {
        log.append_as_leader(&mut batch("r", 2, 300, i), EPOCH, 1_000)
            .unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    log.delete_old_segments(0).unwrap();
    assert!(log.size_bytes() >= 100_000 - 64 * 1024 && log.size_bytes() < 100_000 + 64 * 1024);
}

#[test]
fn a_clean_close_reopens_without_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    let mut log = open(&storage, dir.path(), small_config());
    for i in 0..300 {
        log.append_as_leader(&mut batch("c", 3, 100, i), EPOCH, 1_000)
            .unwrap();
    }
    log.close().unwrap();
    let mut log = open(&storage, dir.path(), small_config());
    assert!(log.recovery_report().clean_shutdown);
    assert_eq!(log.recovery_report().segments_scanned, 0);
    assert_eq!(log.log_end_offset(), Offset(900));
    assert_eq!(read_all(&mut log).len(), 900);
    // Without a close, the next open checks only what is past the recovery point.
    for i in 0..10 {
        log.append_as_leader(&mut batch("d", 3, 100, i), EPOCH, 1_000)
            .unwrap();
    }
    drop(log);
    let mut log = open(&storage, dir.path(), small_config());
    assert!(!log.recovery_report().clean_shutdown);
    assert!(
        log.recovery_report().segments_scanned <= 2,
        "{:?}",
        log.recovery_report()
    );
    assert_eq!(log.log_end_offset(), Offset(930));
    assert_eq!(read_all(&mut log).len(), 930);
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    let mut log = open(&storage, dir.path(), small_config());
    for i in 0..600 {
        log.append_as_leader(&mut batch("i", 3, 100, i), EPOCH, 1_000)
            .unwrap();
    }
    log.close().unwrap();
    let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], vec![0u8; 64]).unwrap();
    // A well-formed index that points at the wrong places: found stale on first use.
    let bogus: Vec<u8> = [(1u32, 77u32), (2, 999)]
        .iter()
        .flat_map(|(o, p)| [o.to_be_bytes(), p.to_be_bytes()].concat())
        .collect();
    std::fs::write(&indexes[2], bogus).unwrap();
    let mut log = open(&storage, dir.path(), small_config());
    assert_eq!(read_all(&mut log).len(), 1800);
    for offset in (0..1800).step_by(7) {
        assert!(log.lookup(Offset(offset)).unwrap().is_some());
    }
}

#[test]
fn every_header_can_be_walked_without_reading_records() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    for i in 0..300 {
        log.append_as_leader(&mut batch("h", 2, 200, i), EPOCH, 1_000)
            .unwrap();
    }
    let mut bases = Vec::new();
    log.for_each_header(|h| bases.push(h.base_offset.0))
        .unwrap();
    assert_eq!(bases, (0..300).map(|i| i * 2).collect::<Vec<_>>());
}

/// The simulated disk, noting which directories are fsynced.
#[derive(Debug)]
struct DirSyncs {
    disk: SimStorage,
    synced: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

impl DirSyncs {
    fn take(&self) -> Vec<std::path::PathBuf> {
        std::mem::take(&mut *self.synced.lock().unwrap())
    }
}

impl Storage for DirSyncs {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.disk.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.disk.list_dir(path)
    }
    fn open(
        &self,
        path: &Path,
        create: bool,
    ) -> std::io::Result<Arc<dyn vltava_storage::StorageFile>> {
        self.disk.open(path, create)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.disk.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.disk.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.synced.lock().unwrap().push(path.to_path_buf());
        self.disk.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.disk.exists(path)
    }
}

/// Creating a topic of 4,096 partitions made six fsyncs per partition at open (the empty
/// segment, the directory, two checkpoints written atomically), for a log with nothing
/// to recover or protect. A new log now opens without any; its first flush job, which comes
/// before anything in it is acknowledged, fsyncs its directory and the data directory that
/// holds the directory's entry, once.
#[test]
fn a_new_log_opens_without_an_fsync_and_its_first_flush_syncs_its_directories() {
    let disk = SimStorage::new();
    let dirs = Arc::new(DirSyncs {
        disk: disk.clone(),
        synced: std::sync::Mutex::default(),
    });
    let storage: Arc<dyn Storage> = dirs.clone();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    assert_eq!(disk.sync_count(), 0, "a new log's open makes no fsync");
    log.append_as_leader(&mut batch("a", 2, 10, 0), LeaderEpoch(1), 1_000)
        .unwrap();
    dirs.take(); // the leader-epoch checkpoint's own directory sync
    let job = log.begin_flush().expect("the append needs a flush");
    let result = job.run();
    assert_eq!(log.complete_flush(job, result).unwrap(), Offset(2));
    let synced = dirs.take();
    assert!(synced.contains(&dir), "{synced:?}");
    assert!(
        synced.contains(&dir.parent().unwrap().to_path_buf()),
        "{synced:?}"
    );
    log.append_as_leader(&mut batch("b", 1, 10, 0), LeaderEpoch(1), 1_000)
        .unwrap();
    let job = log.begin_flush().unwrap();
    let result = job.run();
    log.complete_flush(job, result).unwrap();
    assert!(dirs.take().is_empty(), "later flushes sync no directory");
    // An empty log flushed once and reopened runs the full recovery, and reads as empty.
    let empty = open(&storage, Path::new("/sim/other-0"), small_config());
    empty.close().unwrap();
    let empty = open(&storage, Path::new("/sim/other-0"), small_config());
    assert_eq!(empty.log_end_offset(), Offset(0));
}

/// Pages of `path` in the page cache, by `mincore` over a read-only mapping; `None` where the
/// file system keeps every page in memory (tmpfs), so dropping them cannot be observed.
fn resident_pages(path: &Path) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: statfs writes only into the struct it is given.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statfs(c_path.as_ptr(), &raw mut fs) }, 0);
    if fs.f_type == libc::TMPFS_MAGIC {
        return None;
    }
    let len = usize::try_from(file.metadata().unwrap().len()).unwrap();
    let page = 4096;
    // SAFETY: a private read-only mapping of a file we hold open, unmapped below; mincore
    // writes one byte per page into a vector of that many bytes.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let mut pages = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0);
        libc::munmap(map, len);
        Some(pages.iter().filter(|p| **p & 1 == 1).count())
    }
}

/// A follower's log (`set_drop_cache_when_flushed`) leaves no page it synced in the page
/// cache (but the one the file ends inside, which is not whole), over several flushes, and
/// every byte still reads back; a leader's keeps its pages for its readers.
#[test]
fn a_log_set_to_drop_its_synced_pages_leaves_none_cached_and_reads_back_whole() {
    let config = LogConfig {
        segment_bytes_max: 8 * 1024 * 1024,
        ..small_config()
    };
    let storage: Arc<dyn Storage> = Arc::new(RealStorage);
    for drop in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(&storage, dir.path(), config.clone());
        log.set_drop_cache_when_flushed(drop);
        // Two flushes: the second drops what the first did not cover.
        for round in 0..2 {
            for i in 0..50 {
                log.append_as_leader(&mut batch("p", 10, 1000, i), EPOCH, 1_000)
                    .unwrap();
            }
            let job = log.begin_flush().unwrap();
            let result = job.run();
            assert_eq!(job.synced_pages().is_some(), drop);
            if let Some(pages) = job.synced_pages() {
                pages.drop_cached();
            }
            assert_eq!(
                log.complete_flush(job, result).unwrap(),
                Offset(500 * (round + 1))
            );
        }
        let segment = dir.path().join(format!("{:020}.log", 0));
        if let Some(resident) = resident_pages(&segment) {
            if drop {
                // The kernel keeps the last page, which the file ends inside.
                assert!(
                    resident <= 1,
                    "the synced pages left the page cache: {resident}"
                );
            } else {
                assert!(resident > 200, "a leader's pages stay: {resident}");
            }
        }
        let read = read_all(&mut log);
        assert_eq!(read.len(), 1000);
        assert!(read[999].1.starts_with(b"p-9"), "{:?}", &read[999].1[..8]);
    }
}
