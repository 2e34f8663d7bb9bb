//! `record_epoch_start`: a new leader records where its epoch starts before it appends, and
//! the entry survives a crash with no batch of the epoch in the log.

use std::sync::Arc;

use vltava_messages::{LeaderEpoch, Offset};
use vltava_storage::epoch::EpochEntry;
use vltava_storage::{Log, LogConfig, Storage, StorageError};

use super::*;

#[test]
fn a_recorded_epoch_start_answers_end_offset_queries_at_the_log_end() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    log.append_as_leader(&mut batch("a", 10, 10, 0), LeaderEpoch(1), 1_000)
        .unwrap();
    assert!(log.record_epoch_start(LeaderEpoch(3)).unwrap());
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(3)));
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        Some((LeaderEpoch(3), Offset(10)))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(10))),
        "the previous epoch ends where the new one starts"
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(2)),
        Some((LeaderEpoch(1), Offset(10))),
        "an epoch the log never saw answers with the one before it"
    );
    assert_eq!(
        log.recovery_point(),
        Offset(10),
        "the start offset was made durable"
    );
    // The same epoch again changes nothing.
    assert!(!log.record_epoch_start(LeaderEpoch(3)).unwrap());
}

#[test]
fn record_epoch_start_refuses_an_epoch_older_than_the_latest() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    log.append_as_leader(&mut batch("a", 4, 10, 0), LeaderEpoch(5), 1_000)
        .unwrap();
    let before = log.epoch_cache().clone();
    let error = log.record_epoch_start(LeaderEpoch(4)).unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::LeaderEpochRegression {
                epoch: LeaderEpoch(4),
                latest: LeaderEpoch(5)
            }
        ),
        "{error}"
    );
    assert_eq!(log.epoch_cache(), &before);
    assert!(!log.is_poisoned(), "a refusal is not a failure");
}

#[test]
fn appends_after_record_epoch_start_keep_one_entry_for_the_epoch() {
    let (_, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    log.append_as_leader(&mut batch("a", 4, 10, 0), LeaderEpoch(1), 1_000)
        .unwrap();
    assert!(log.record_epoch_start(LeaderEpoch(2)).unwrap());
    for i in 0..3 {
        log.append_as_leader(&mut batch("b", 2, 10, i), LeaderEpoch(2), 1_000)
            .unwrap();
    }
    let expected = [
        EpochEntry {
            epoch: LeaderEpoch(1),
            start_offset: Offset(0),
        },
        EpochEntry {
            epoch: LeaderEpoch(2),
            start_offset: Offset(4),
        },
    ];
    assert_eq!(log.epoch_cache().entries(), expected);
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(2)),
        Some((LeaderEpoch(2), Offset(10)))
    );
    log.close().unwrap();
    let log = open(&storage, &dir, small_config());
    assert_eq!(log.epoch_cache().entries(), expected);
}

/// Goal: the entry is durable when `record_epoch_start` returns, though no batch carries the
/// epoch, and a crash at any fsync it makes leaves either no entry or the right one. Method:
/// crash at every fsync of the call (which first flushes an unflushed append) and reopen
/// several disk images of each.
#[test]
fn a_recorded_epoch_start_survives_a_crash_with_its_start_offset() {
    // Returns whether `record_epoch_start` returned.
    let scenario = |sim: &SimStorage, storage: &Arc<dyn Storage>| -> (u64, bool) {
        let Ok(mut log) = Log::open(Arc::clone(storage), &sim_dir(), small_config(), 1_000) else {
            return (0, false);
        };
        let setup = (|| {
            log.append_as_leader(&mut batch("a", 10, 10, 0), LeaderEpoch(1), 1_000)?;
            log.flush()?;
            // Not flushed: the call must make it durable before the entry that counts it.
            log.append_as_leader(&mut batch("b", 5, 10, 0), LeaderEpoch(1), 1_000)
        })();
        if setup.is_err() {
            return (0, false);
        }
        let before = sim.sync_count();
        (before, log.record_epoch_start(LeaderEpoch(4)).is_ok())
    };
    let (dry, storage) = sim();
    let (before, returned) = scenario(&dry, &storage);
    assert!(returned);
    let syncs = dry.sync_count();
    assert!(syncs > before, "the call fsyncs");
    for crash_at in before + 1..=syncs + 1 {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        let (_, returned) = scenario(&sim, &storage);
        for seed in 0..8 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 100 + seed));
            let log = open(&image, &sim_dir(), small_config());
            let context = format!("crash at sync {crash_at}, seed {seed}");
            let entry = log.epoch_cache().entries().last().copied();
            if returned {
                assert_eq!(log.log_end_offset(), Offset(15), "{context}");
                assert_eq!(
                    entry,
                    Some(EpochEntry {
                        epoch: LeaderEpoch(4),
                        start_offset: Offset(15)
                    }),
                    "{context}"
                );
                assert_eq!(
                    log.end_offset_for_epoch(LeaderEpoch(4)),
                    Some((LeaderEpoch(4), Offset(15))),
                    "{context}"
                );
            } else if entry.is_some_and(|e| e.epoch == LeaderEpoch(4)) {
                assert_eq!(
                    entry.unwrap().start_offset,
                    log.log_end_offset(),
                    "{context}"
                );
            }
        }
    }
}

#[test]
fn a_recorded_epoch_start_survives_a_clean_close_and_the_next_batch_keeps_it() {
    let (_, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    log.append_as_leader(&mut batch("a", 3, 10, 0), LeaderEpoch(1), 1_000)
        .unwrap();
    log.record_epoch_start(LeaderEpoch(2)).unwrap();
    log.close().unwrap();
    let mut log = open(&storage, &dir, small_config());
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(2)));
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(2)),
        Some((LeaderEpoch(2), Offset(3)))
    );
    log.append_as_leader(&mut batch("b", 1, 10, 0), LeaderEpoch(2), 1_000)
        .unwrap();
    assert_eq!(log.epoch_cache().entries().len(), 2);
}

/// An entry at the log end with no batch of its epoch is what a follower keeps when a crash
/// lost its epoch's first batch; its truncation to the log end (what a divergence check
/// answers when its log is a prefix of the leader's) drops it, durably, so that the leader's
/// batches of an older epoch at that offset are not refused.
#[test]
fn a_truncation_to_the_log_end_drops_an_epoch_with_no_batch() {
    let (_, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    log.append_as_leader(&mut batch("a", 3, 10, 0), LeaderEpoch(1), 1_000)
        .unwrap();
    log.record_epoch_start(LeaderEpoch(3)).unwrap();
    log.truncate_to(Offset(3)).unwrap();
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(1)));
    drop(log);
    let mut log = open(&storage, &dir, small_config());
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(1)));
    let mut copied = batch("c", 2, 10, 0);
    vltava_messages::batch::set_base_offset(&mut copied, Offset(3));
    vltava_messages::batch::set_partition_leader_epoch(&mut copied, LeaderEpoch(2));
    log.append_as_follower(&copied, 1_000).unwrap();
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(2)));
}

/// An epoch older than every epoch the log still knows (retention deleted the segments of
/// epochs 1 and 2, so the cache starts with epoch 4 at the new log start) is answered with
/// nothing: where it ended is forgotten (the entry in force moved up to the log start), and
/// an answer with the oldest entry's start would let a follower keep a suffix of epoch 2 that
/// the leader's history replaced (the replica simulation found it).
#[test]
fn an_epoch_older_than_every_known_one_is_answered_with_nothing_after_retention() {
    let (_, storage) = sim();
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let mut log = open(&storage, &sim_dir(), config);
    for (epoch, count) in [(1, 30), (2, 30), (4, 60)] {
        for i in 0..count {
            log.append_as_leader(
                &mut batch(&format!("e{epoch}-{i}"), 1, 3000, 0),
                LeaderEpoch(epoch),
                1_000,
            )
            .unwrap();
        }
    }
    let end = log.log_end_offset();
    log.set_high_watermark(end);
    log.delete_old_segments(2_000).unwrap();
    let start = log.log_start_offset();
    assert!(start > Offset(60), "epochs 1 and 2 are gone ({start})");
    assert_eq!(
        log.epoch_cache().entries(),
        [EpochEntry {
            epoch: LeaderEpoch(4),
            start_offset: start
        }]
    );
    assert_eq!(log.end_offset_for_epoch(LeaderEpoch(2)), None);
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(5)),
        Some((LeaderEpoch(4), end))
    );
}
