//! The high-watermark checkpoint (`high-watermark-checkpoint`): written by flush jobs and at
//! close, never by `set_high_watermark` itself; read at open as min(file value, log end); a
//! damaged file reads as absent. Crash cases run over the simulated disk, which loses what was
//! not fsynced.

use std::path::Path;
use std::sync::Arc;

use vltava_messages::Offset;
use vltava_storage::checkpoint::{self, OffsetCheckpoint};
use vltava_storage::log::{HIGH_WATERMARK_CHECKPOINT, HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS};
use vltava_storage::{Log, Storage};

use super::*;

fn checkpoint_path(dir: &Path) -> std::path::PathBuf {
    dir.join(HIGH_WATERMARK_CHECKPOINT)
}

/// Appends `batches` batches of 5 records each (epoch 1) at `now_ms`.
fn append(log: &mut Log, batches: u32, now_ms: u64) {
    for i in 0..batches {
        log.append_as_leader(&mut batch("x", 5, 100, i64::from(i)), EPOCH, now_ms)
            .unwrap();
    }
}

/// Runs one job from `begin_flush` to completion, as a flusher thread and the owner would.
fn run_flush_job(log: &mut Log) -> bool {
    let Some(job) = log.begin_flush() else {
        return false;
    };
    let result = job.run();
    log.complete_flush(job, result).unwrap();
    true
}

/// Goal: the file holds `version (u8) = 1 | high_watermark (u64, big-endian) | crc (u32)`,
/// as STORAGE.md says, and a reopen reads the value back. Method: set the high watermark,
/// let a flush job write it, read the bytes, crash without a close and reopen.
#[test]
fn a_flush_job_writes_the_high_watermark_checkpoint_and_a_reopen_reads_it_back() {
    let (sim, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    append(&mut log, 10, 1_000);
    log.set_high_watermark(Offset(30));
    assert!(
        !storage.exists(&checkpoint_path(&dir)),
        "set_high_watermark writes nothing itself"
    );
    assert!(run_flush_job(&mut log));

    let bytes = sim.live_contents(&checkpoint_path(&dir)).unwrap();
    let mut expected = vec![1u8];
    expected.extend_from_slice(&30u64.to_be_bytes());
    let crc = crc32c::crc32c(&expected);
    expected.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(bytes, expected);

    drop(log); // the process dies: no close
    for seed in 0..8 {
        let image: Arc<dyn Storage> = Arc::new(sim.crash_image(seed));
        let log = open(&image, &dir, small_config());
        assert_eq!(
            log.high_watermark_checkpoint(),
            Some(Offset(30)),
            "seed {seed}"
        );
        assert_eq!(
            log.high_watermark(),
            log.log_end_offset(),
            "open still sets the high watermark to the log end"
        );
    }
}

#[test]
fn a_new_log_or_one_whose_high_watermark_was_never_set_has_no_checkpoint() {
    let (_, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    assert_eq!(log.high_watermark_checkpoint(), None);
    append(&mut log, 4, 1_000);
    log.close().unwrap();
    // As a directory written before the checkpoint existed: no file, so `None`.
    assert!(!storage.exists(&checkpoint_path(&dir)));
    let log = open(&storage, &dir, small_config());
    assert_eq!(log.high_watermark_checkpoint(), None);
    assert_eq!(log.high_watermark(), Offset(20));
}

#[test]
fn the_high_watermark_set_before_a_clean_close_is_the_checkpoint_after_reopen() {
    let (sim, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    append(&mut log, 6, 1_000);
    log.set_high_watermark(Offset(25));
    log.close().unwrap();
    for seed in 0..8 {
        let image: Arc<dyn Storage> = Arc::new(sim.crash_image(seed));
        let log = open(&image, &dir, small_config());
        assert_eq!(
            log.high_watermark_checkpoint(),
            Some(Offset(25)),
            "seed {seed}"
        );
        assert_eq!(log.log_end_offset(), Offset(30));
    }
}

/// Goal: a crash before or during the write of a newer value leaves the older one whole.
/// Method: write 10, set 40, and crash at every fsync the flush that writes 40 makes, and
/// once with no flush at all.
#[test]
fn a_crash_before_the_checkpoint_write_keeps_the_old_value() {
    let scenario = |sim: &SimStorage, storage: &Arc<dyn Storage>| -> Option<u64> {
        let mut log = Log::open(Arc::clone(storage), &sim_dir(), small_config(), 1_000).ok()?;
        append(&mut log, 10, 1_000);
        log.set_high_watermark(Offset(10));
        log.flush().ok()?;
        let before = sim.sync_count();
        log.set_high_watermark(Offset(40));
        log.flush().ok()?;
        Some(sim.sync_count() - before)
    };
    let (dry, storage) = sim();
    let syncs = scenario(&dry, &storage).expect("the dry run finishes");
    let base = dry.sync_count() - syncs;
    assert_eq!(
        syncs, 2,
        "the checkpoint's file and directory; the data was synced"
    );

    // No flush after the second value: the process dies with it in memory only.
    let (sim_a, storage_a) = sim();
    let mut log = open(&storage_a, &sim_dir(), small_config());
    append(&mut log, 10, 1_000);
    log.set_high_watermark(Offset(10));
    log.flush().unwrap();
    log.set_high_watermark(Offset(40));
    drop(log);
    let image: Arc<dyn Storage> = Arc::new(sim_a.crash_image(1));
    let log = open(&image, &sim_dir(), small_config());
    assert_eq!(log.high_watermark_checkpoint(), Some(Offset(10)));

    for crash_at in base + 1..=base + syncs {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        assert_eq!(
            scenario(&sim, &storage),
            None,
            "crash point {crash_at} reached"
        );
        for seed in 0..8 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 100 + seed));
            let log = open(&image, &sim_dir(), small_config());
            let value = log.high_watermark_checkpoint();
            assert!(
                value == Some(Offset(10)) || value == Some(Offset(40)),
                "crash at sync {crash_at}, seed {seed}: {value:?}"
            );
            if crash_at == base + 1 {
                // Before the temporary file's fsync returned, the rename had not happened.
                assert_eq!(value, Some(Offset(10)), "crash at sync {crash_at}");
            }
        }
    }
}

/// Goal: after a truncation below the checkpointed value, no crash (during the truncation or
/// after new appends past the cut) reopens with a checkpoint past the log end, or past the cut
/// once the truncation returned. Method: checkpoint 100, truncate to 50, append 60 different
/// records and flush, crashing at every fsync on the way.
#[test]
fn a_truncation_below_the_checkpoint_never_reopens_with_a_value_past_the_cut() {
    // Returns whether the truncation finished before the crash.
    let scenario = |storage: &Arc<dyn Storage>| -> bool {
        let Ok(mut log) = Log::open(Arc::clone(storage), &sim_dir(), small_config(), 1_000) else {
            return false;
        };
        let setup = (|| {
            for i in 0..20u32 {
                log.append_as_leader(&mut batch("old", 5, 100, i64::from(i)), EPOCH, 1_000)?;
            }
            log.set_high_watermark(Offset(100));
            log.flush()
        })();
        if setup.is_err() {
            return false;
        }
        if log.truncate_to(Offset(50)).is_err() {
            return false;
        }
        for i in 0..12u32 {
            if log
                .append_as_leader(&mut batch("new", 5, 100, i64::from(i)), EPOCH, 1_000)
                .is_err()
            {
                return true;
            }
        }
        // The job made after the truncation carries the lowered value.
        let Some(job) = log.begin_flush() else {
            return true;
        };
        let result = job.run();
        let _ = log.complete_flush(job, result);
        true
    };
    let (dry, storage) = sim();
    assert!(scenario(&storage));
    let dry_log = open(&storage, &sim_dir(), small_config());
    assert_eq!(dry_log.log_end_offset(), Offset(110));
    assert_eq!(dry_log.high_watermark_checkpoint(), Some(Offset(50)));
    let syncs = dry.sync_count();
    let mut truncated_cases = 0;
    for crash_at in 1..=syncs {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        let truncated = scenario(&storage);
        for seed in 0..4 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 100 + seed));
            let log = open(&image, &sim_dir(), small_config());
            let context = format!("crash at sync {crash_at}, seed {seed}");
            if let Some(value) = log.high_watermark_checkpoint() {
                assert!(value <= log.log_end_offset(), "{context}: {value:?}");
                if truncated {
                    truncated_cases += 1;
                    assert!(
                        value <= Offset(50),
                        "{context}: {value:?} counts cut batches"
                    );
                }
            }
        }
    }
    assert!(
        truncated_cases > 0,
        "some crashes came after the truncation"
    );
}

#[test]
fn a_checkpoint_past_the_recovered_log_end_is_lowered_to_it_at_open() {
    let (_, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    append(&mut log, 4, 1_000);
    log.close().unwrap();
    // As a crash that lost the tail the checkpoint counted would leave it.
    checkpoint::write_offset(&*storage, &checkpoint_path(&dir), 1, Offset(500)).unwrap();
    let log = open(&storage, &dir, small_config());
    assert_eq!(log.high_watermark_checkpoint(), Some(Offset(20)));
    drop(log);
    assert_eq!(
        checkpoint::read_offset(&*storage, &checkpoint_path(&dir), 1).unwrap(),
        OffsetCheckpoint::Found(Offset(20)),
        "the file is lowered before anything is appended past the log end"
    );
}

#[test]
fn a_damaged_or_unknown_version_checkpoint_reads_as_none_and_the_log_opens() {
    let (sim, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    append(&mut log, 4, 1_000);
    log.set_high_watermark(Offset(15));
    log.close().unwrap();
    let path = checkpoint_path(&dir);
    let good = sim.live_contents(&path).unwrap();

    let mut flipped = good.clone();
    flipped[5] ^= 0x10;
    let mut version_2 = vec![2u8];
    version_2.extend_from_slice(&15u64.to_be_bytes());
    let crc = crc32c::crc32c(&version_2);
    version_2.extend_from_slice(&crc.to_be_bytes());
    let damaged = [
        ("a flipped bit", flipped),
        ("a torn file", good[..7].to_vec()),
        ("an empty file", Vec::new()),
        ("an unknown version", version_2),
    ];
    for (what, bytes) in damaged {
        sim.overwrite(&path, bytes);
        let mut log = Log::open(Arc::clone(&storage), &dir, small_config(), 1_000)
            .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert_eq!(log.high_watermark_checkpoint(), None, "{what}");
        assert_eq!(log.log_end_offset(), Offset(20), "{what}");
        assert_eq!(read_all(&mut log).len(), 20, "{what}");
        drop(log);
    }
    // The next write replaces the damaged file.
    let mut log = open(&storage, &dir, small_config());
    log.set_high_watermark(Offset(18));
    log.close().unwrap();
    let log = open(&storage, &dir, small_config());
    assert_eq!(log.high_watermark_checkpoint(), Some(Offset(18)));
}

/// Goal: with fsync durability every flush job follows a new high watermark, and writing the
/// checkpoint in each would add two fsyncs to each job's one. Method: the first job after open
/// carries it; later jobs carry it only once the log's clock (the `now_ms` of appends, rolls,
/// retention) has moved on by the interval. A job is made for a due checkpoint alone then.
#[test]
fn flush_jobs_write_the_checkpoint_at_most_once_per_interval() {
    let (sim, storage) = sim();
    let dir = sim_dir();
    let path = checkpoint_path(&dir);
    let read =
        |storage: &Arc<dyn Storage>| match checkpoint::read_offset(&**storage, &path, 1).unwrap() {
            OffsetCheckpoint::Found(offset) => Some(offset),
            _ => None,
        };
    let mut log = open(&storage, &dir, small_config());
    append(&mut log, 2, 1_000);
    log.set_high_watermark(Offset(5));
    assert!(run_flush_job(&mut log));
    assert_eq!(
        read(&storage),
        Some(Offset(5)),
        "the first job after open writes it"
    );

    append(&mut log, 2, 2_000);
    log.set_high_watermark(Offset(15));
    assert!(run_flush_job(&mut log), "the appends need a flush");
    assert_eq!(
        read(&storage),
        Some(Offset(5)),
        "held back within the interval"
    );
    assert!(
        log.begin_flush().is_none(),
        "no job for the checkpoint alone yet"
    );

    // The retention tick moves the log's clock past the interval.
    log.delete_old_segments(1_000 + HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS)
        .unwrap();
    let syncs = sim.sync_count();
    assert!(
        run_flush_job(&mut log),
        "a job for the due checkpoint alone"
    );
    assert_eq!(read(&storage), Some(Offset(15)));
    assert_eq!(
        sim.sync_count() - syncs,
        2,
        "the checkpoint's file and directory; the segment needed no fdatasync"
    );
    assert!(log.begin_flush().is_none(), "nothing left to do");

    // `flush` and `close` are not paced.
    log.set_high_watermark(Offset(18));
    log.flush().unwrap();
    assert_eq!(read(&storage), Some(Offset(18)));
    log.set_high_watermark(Offset(20));
    log.close().unwrap();
    assert_eq!(read(&storage), Some(Offset(20)));
}
