//! A follower's side of the log: copying a leader's batches as they are (`append_as_follower`
//! through `read`, as a replica fetcher does), and starting afresh at the leader's log start
//! when retention on the leader removed what the follower would fetch next
//! (`truncate_fully_and_start_at`), on the simulated disk, crashes included.

use std::sync::Arc;

use vltava_messages::batch::BatchHeader;
use vltava_messages::{LeaderEpoch, Offset};
use vltava_storage::epoch::EpochEntry;
use vltava_storage::producer_state;
use vltava_storage::{Log, LogConfig, SimStorage, Storage, StorageError};

use super::producers::{header_of, idempotent_batch, table_from_scratch};
use super::*;

/// Values this large fill a 64 KiB segment of `small_config` with about twenty records.
const VALUE_BYTES: usize = 3000;

/// The byte budget of one simulated fetch: a few batches, so copies cross answers.
const FETCH_BYTES: u32 = 16 * 1024;

fn leader_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/sim/leader/topic-0")
}

fn follower_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/sim/follower/topic-0")
}

/// Copies the leader's batches past the follower's log end into the follower, one budgeted
/// read at a time, each batch appended unchanged, as a replica fetcher and the follower's
/// partition do. Returns the reads' count. Panics if the leader no longer holds the
/// follower's fetch offset (the caller starts the follower afresh first).
pub(crate) fn copy_from(leader: &mut Log, follower: &mut Log) -> usize {
    let mut reads = 0;
    while follower.log_end_offset() < leader.log_end_offset() {
        let read = leader
            .read(follower.log_end_offset(), FETCH_BYTES, None)
            .expect("the leader holds the follower's fetch offset");
        reads += 1;
        let mut rest = &read.bytes[..];
        while !rest.is_empty() {
            let header = BatchHeader::parse(rest).expect("whole batches");
            let (one, after) = rest.split_at(header.total_bytes() as usize);
            follower
                .append_as_follower(one, 1_000)
                .expect("the follower takes the leader's batch");
            rest = after;
        }
        assert!(reads < 100_000, "the copy makes progress");
    }
    reads
}

/// A leader log of plain and idempotent batches (producers 1 and 2) over several segments, in
/// epoch 1 then epoch 2.
fn leader_workload(log: &mut Log, batches: u32) {
    let mut sequences = [0u32; 3];
    for b in 0..batches {
        let epoch = if b < batches / 2 { 1 } else { 2 };
        let mut bytes = match b % 3 {
            0 => batch(&format!("plain{b}"), 2, VALUE_BYTES, 0),
            p => {
                let p = p as usize;
                let bytes = idempotent_batch(p as u64, 0, sequences[p], 2, "idem", VALUE_BYTES);
                sequences[p] += 2;
                bytes
            }
        };
        log.append_as_leader(&mut bytes, LeaderEpoch(epoch), 1_000)
            .unwrap();
    }
    log.flush().unwrap();
    let end = log.log_end_offset();
    log.set_high_watermark(end);
}

/// A full truncation leaves an empty log at the offset: log start, log end, high watermark and
/// recovery point all there, no leader epoch, no producer, no snapshot, one empty segment;
/// reads below it are out of range; a follower batch at the offset is taken and starts the
/// epoch cache and the producer table again; and a clean close or a crash and an open give the
/// same log back.
#[test]
fn a_full_truncation_empties_the_log_and_starts_it_at_the_offset() {
    let (sim, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    leader_workload(&mut log, 60);
    assert!(log.segments().len() > 3);
    assert!(!log.producer_state().is_empty());
    let start = log.log_end_offset().plus(500);

    log.truncate_fully_and_start_at(start, 2_000).unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(log.log_end_offset(), start);
    assert_eq!(log.high_watermark(), start);
    assert_eq!(log.recovery_point(), start);
    assert_eq!(log.first_dirty_offset(), start);
    assert_eq!(log.latest_epoch(), None);
    assert!(log.producer_state().is_empty());
    let segments = log.segments();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert_eq!(
        (segments[0].base_offset, segments[0].bytes),
        (start, 0),
        "one empty segment at the offset"
    );
    assert!(
        producer_state::snapshot_offsets(&*storage, &sim_dir())
            .unwrap()
            .is_empty(),
        "no snapshot of the old batches is left"
    );
    assert!(matches!(
        log.read(Offset(0), 1024, None),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.read(start, 1024, None).unwrap().batch_count, 0);

    // The leader's batch at the new start, in a newer epoch, from a producer the old log knew.
    let mut next = idempotent_batch(1, 0, 1_000, 3, "after", VALUE_BYTES);
    vltava_messages::batch::set_base_offset(&mut next, start);
    vltava_messages::batch::set_partition_leader_epoch(&mut next, LeaderEpoch(3));
    log.append_as_follower(&next, 3_000).unwrap();
    assert_eq!(log.log_end_offset(), start.plus(3));
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        Some((LeaderEpoch(3), start.plus(3)))
    );
    assert_eq!(
        log.epoch_cache().entries(),
        [EpochEntry {
            epoch: LeaderEpoch(3),
            start_offset: start
        }],
        "the old epochs are gone"
    );
    let batches = log
        .producer_state()
        .producer(vltava_messages::ProducerId(1));
    assert_eq!(
        batches.map(|(_, b)| b.len()),
        Some(1),
        "the producer table holds only what the log holds"
    );
    let scratch = table_from_scratch(&mut log);
    assert_eq!(log.producer_state(), &scratch);
    log.flush().unwrap();

    // A crash (no clean close) and an open.
    let image: Arc<dyn Storage> = Arc::new(sim.crash_image(7));
    let mut reopened = open(&image, &sim_dir(), small_config());
    assert_eq!(reopened.log_start_offset(), start);
    assert_eq!(reopened.log_end_offset(), start.plus(3));
    assert_eq!(reopened.latest_epoch(), Some(LeaderEpoch(3)));
    assert_eq!(reopened.first_dirty_offset(), start);
    assert_eq!(reopened.producer_state(), log.producer_state());
    assert_eq!(read_all(&mut reopened), read_all(&mut log));
    // And a clean close.
    log.close().unwrap();
    let mut closed = open(&storage, &sim_dir(), small_config());
    assert_eq!(closed.log_start_offset(), start);
    assert_eq!(closed.log_end_offset(), start.plus(3));
    assert_eq!(read_all(&mut closed), read_all(&mut reopened));
}

/// An offset below the log end is `truncate_to`'s work: refused, and the log is unchanged.
#[test]
fn a_full_truncation_below_the_log_end_is_refused() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    leader_workload(&mut log, 10);
    let before = read_all(&mut log);
    let end = log.log_end_offset();
    let refused = log.truncate_fully_and_start_at(Offset(end.0 - 1), 2_000);
    assert!(
        matches!(refused, Err(StorageError::OffsetOutOfRange { offset, .. }) if offset == Offset(end.0 - 1)),
        "{refused:?}"
    );
    assert!(!log.is_poisoned());
    assert_eq!(read_all(&mut log), before);
    // At the log end itself it empties the log.
    log.truncate_fully_and_start_at(end, 2_000).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (end, end));
}

/// A crash at every fsync of a full truncation, each with several disk images: the log opens
/// either as a prefix of the old log (with its producers' table and epochs consistent with
/// it) or as the new empty log at the offset; never as old batches below an empty segment at
/// the offset, nor with a snapshot or an epoch the old log held at the new start. If the call
/// returned, it is always the new log. Either way the follower can go on: a prefix starts
/// afresh again, the new log takes the leader's next batch.
#[test]
fn a_crash_at_every_sync_of_a_full_truncation_opens_the_old_prefix_or_the_new_log() {
    let start = Offset(10_000);
    let scenario = |sim: &SimStorage, storage: &Arc<dyn Storage>| -> (u64, bool) {
        let Ok(mut log) = Log::open(Arc::clone(storage), &sim_dir(), small_config(), 1_000) else {
            return (0, false);
        };
        leader_workload(&mut log, 60);
        let before = sim.sync_count();
        (
            before,
            log.truncate_fully_and_start_at(start, 2_000).is_ok(),
        )
    };
    let (dry, storage) = sim();
    let (before, returned) = scenario(&dry, &storage);
    assert!(returned);
    let old = {
        let mut log = Log::open(
            Arc::new(SimStorage::new()),
            &sim_dir(),
            small_config(),
            1_000,
        )
        .unwrap();
        leader_workload(&mut log, 60);
        read_all(&mut log)
    };
    let syncs = dry.sync_count();
    assert!(syncs > before + 3, "the call fsyncs");
    let (mut prefixes, mut fresh) = (0, 0);
    for crash_at in before + 1..=syncs + 1 {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        let (_, returned) = scenario(&sim, &storage);
        for seed in 0..6 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 100 + seed));
            let mut log = open(&image, &sim_dir(), small_config());
            let context = format!("crash at sync {crash_at} (of {syncs}), seed {seed}");
            let records = read_all(&mut log);
            let scratch = table_from_scratch(&mut log);
            assert_eq!(log.producer_state(), &scratch, "{context}");
            if log.log_start_offset() == start {
                fresh += 1;
                assert_eq!(log.log_end_offset(), start, "{context}");
                assert!(records.is_empty(), "{context}");
                assert!(log.producer_state().is_empty(), "{context}");
                assert!(
                    log.latest_epoch().is_none_or(|e| e <= LeaderEpoch(2)),
                    "{context}"
                );
                // The leader's next batch is taken.
                let mut next = batch("next", 2, 10, 0);
                vltava_messages::batch::set_base_offset(&mut next, start);
                vltava_messages::batch::set_partition_leader_epoch(&mut next, LeaderEpoch(3));
                log.append_as_follower(&next, 3_000)
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
            } else {
                assert!(
                    !returned,
                    "{context}: the call returned, yet the old log is back"
                );
                prefixes += 1;
                assert_eq!(log.log_start_offset(), Offset(0), "{context}");
                assert_eq!(records[..], old[..records.len()], "{context}: a prefix");
                let end = log.log_end_offset();
                assert!(
                    log.epoch_cache()
                        .entries()
                        .iter()
                        .all(|e| e.start_offset <= end),
                    "{context}"
                );
                // The follower starts afresh again.
                log.truncate_fully_and_start_at(start, 3_000)
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                assert_eq!(log.log_end_offset(), start, "{context}");
            }
        }
    }
    assert!(
        prefixes > 0 && fresh > 0,
        "both outcomes met: {prefixes} prefixes, {fresh} fresh"
    );
}

/// Issue 13's retention case on two logs: a follower copies part of a leader's log, stops
/// (its node is down), the leader goes on and retention deletes the segments past the
/// follower's log end. The follower's next fetch offset is below the leader's log start, so it
/// starts afresh there and copies again: its log then holds the leader's batches from that
/// start (same offsets, same bytes: the same segments file by file, as both roll at the same
/// batches), and its producer table is the leader's, as a rebuild from its headers gives.
#[test]
fn a_follower_behind_the_leaders_log_start_starts_afresh_there_and_copies_the_same_log() {
    let (_, storage) = sim();
    let config = LogConfig {
        retention_bytes: Some(200 * 1024),
        ..small_config()
    };
    let mut leader = Log::open(Arc::clone(&storage), &leader_dir(), config.clone(), 0).unwrap();
    let mut follower = Log::open(Arc::clone(&storage), &follower_dir(), config, 0).unwrap();
    leader_workload(&mut leader, 30);
    copy_from(&mut leader, &mut follower);
    assert_eq!(read_all(&mut follower), read_all(&mut leader));

    // The follower is down; the leader takes more and retention deletes old segments.
    let mut sequences = [0u32; 3];
    for (p, s) in sequences.iter_mut().enumerate().skip(1) {
        if let Some((_, batches)) = leader
            .producer_state()
            .producer(vltava_messages::ProducerId(p as u64))
        {
            *s = batches.last().unwrap().last_sequence + 1;
        }
    }
    for b in 0..120u32 {
        let p = (b % 3) as usize;
        let mut bytes = if p == 0 {
            batch(&format!("later{b}"), 2, VALUE_BYTES, 0)
        } else {
            let bytes = idempotent_batch(p as u64, 0, sequences[p], 2, "later", VALUE_BYTES);
            sequences[p] += 2;
            bytes
        };
        leader
            .append_as_leader(&mut bytes, LeaderEpoch(4), 1_000)
            .unwrap();
    }
    leader.flush().unwrap();
    let end = leader.log_end_offset();
    leader.set_high_watermark(end);
    let removed = leader.delete_old_segments(2_000).unwrap();
    assert!(!removed.is_empty());
    let leader_start = leader.log_start_offset();
    assert!(
        follower.log_end_offset() < leader_start,
        "retention removed what the follower needs next"
    );
    assert!(matches!(
        leader.read(follower.log_end_offset(), FETCH_BYTES, None),
        Err(StorageError::OffsetOutOfRange { .. })
    ));

    follower
        .truncate_fully_and_start_at(leader_start, 3_000)
        .unwrap();
    copy_from(&mut leader, &mut follower);
    assert_eq!(follower.log_start_offset(), leader_start);
    assert_eq!(read_all(&mut follower), read_all(&mut leader));
    assert_eq!(follower.epoch_cache(), leader.epoch_cache());
    assert_eq!(follower.producer_state(), leader.producer_state());
    let scratch = table_from_scratch(&mut follower);
    assert_eq!(follower.producer_state(), &scratch);
    // A retry of a producer's last batch is a duplicate on both, at the same offsets.
    let last = sequences[1] - 2;
    let retry = header_of(&idempotent_batch(1, 0, last, 2, "retry", 1));
    let on_follower = follower.producer_state().duplicate_of(&retry);
    assert!(on_follower.is_some());
    assert_eq!(on_follower, leader.producer_state().duplicate_of(&retry));
    // File by file, the same bytes: the follower rolled at the batches the leader did.
    let leader_segments = leader.segments();
    let follower_segments = follower.segments();
    assert_eq!(leader_segments, follower_segments);
    for s in &leader_segments {
        let name = format!("{:020}.log", s.base_offset.0);
        let sim_storage = &storage;
        let read = |dir: &std::path::Path| {
            let file = sim_storage.open(&dir.join(&name), false).unwrap();
            let mut bytes = vec![0u8; s.bytes as usize];
            file.read_exact_at(&mut bytes, 0).unwrap();
            bytes
        };
        assert_eq!(read(&leader_dir()), read(&follower_dir()), "{name}");
    }
    // And the follower's reopened log is the same.
    follower.close().unwrap();
    let mut reopened = open(&storage, &follower_dir(), small_config());
    assert_eq!(reopened.log_start_offset(), leader_start);
    assert_eq!(reopened.producer_state(), leader.producer_state());
    assert_eq!(read_all(&mut reopened), read_all(&mut leader));
}

/// A follower's high watermark is its leader's (capped by its log end), not its own flushed
/// offset, so retention may delete segments past its recovery point (those were fdatasynced
/// when they rolled). The recovery point then moves up to the new log start: the offsets below
/// it are gone, so none is unflushed, and `log start <= recovery point` holds for the replica
/// state, which asserts it on every transition (it stopped the partition's log thread).
#[test]
fn retention_past_the_recovery_point_moves_it_to_the_log_start() {
    let (_, storage) = sim();
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let mut log = open(&storage, &sim_dir(), config);
    for i in 0..60 {
        let mut copied = batch(&format!("c{i}"), 1, VALUE_BYTES, 0);
        vltava_messages::batch::set_base_offset(&mut copied, Offset(i));
        vltava_messages::batch::set_partition_leader_epoch(&mut copied, LeaderEpoch(1));
        log.append_as_follower(&copied, 1_000).unwrap();
    }
    assert_eq!(log.recovery_point(), Offset(0), "nothing flushed yet");
    let end = log.log_end_offset();
    log.set_high_watermark(end);
    assert!(!log.delete_old_segments(2_000).unwrap().is_empty());
    assert!(log.log_start_offset() > Offset(0));
    assert_eq!(log.recovery_point(), log.log_start_offset());
    // And a flush moves it on as usual.
    log.flush().unwrap();
    assert_eq!(log.recovery_point(), end);
}

/// A batch as a leader stamped it: one record of `tag`, at `offset`, in `epoch`.
fn copied_at(tag: &str, offset: u64, epoch: u32) -> Vec<u8> {
    let mut copied = batch(tag, 1, VALUE_BYTES, 0);
    vltava_messages::batch::set_base_offset(&mut copied, Offset(offset));
    vltava_messages::batch::set_partition_leader_epoch(&mut copied, LeaderEpoch(epoch));
    copied
}

/// After a power loss at this point, the reopened log holds every offset below `reported`
/// with the value `live` (read before the crash) had there.
fn assert_survives(disk: &SimStorage, reported: Offset, live: &[(Offset, Vec<u8>)], what: &str) {
    for seed in 0..16 {
        let image: Arc<dyn Storage> = Arc::new(disk.crash_image(seed));
        let mut log = open(&image, &follower_dir(), small_config());
        assert!(
            log.log_end_offset() >= reported,
            "{what}, seed {seed}: the log ends at {} below the reported flushed offset {reported}",
            log.log_end_offset()
        );
        let after: Vec<_> = read_all(&mut log)
            .into_iter()
            .filter(|(o, _)| *o < reported)
            .collect();
        let before: Vec<_> = live
            .iter()
            .filter(|(o, _)| *o < reported)
            .cloned()
            .collect();
        assert_eq!(after, before, "{what}, seed {seed}");
    }
}

/// A follower's fetcher reports its partition's recovery point to the leader as the flushed
/// offset that the leader's high watermark counts, and the follower now appends the next
/// fetched batches while a flush is in flight. So the recovery point a flush returns must
/// cover only what the flush began with, and a flush begun before a truncation must move
/// nothing even once the refilled log is longer than its target: otherwise the follower
/// reports as fsynced offsets no fsync covered (or that now hold another leader's bytes), and
/// a power loss on it loses a write the leader acknowledged. Each case then loses power (every
/// unsynced page lost, kept or zeroed) and checks that every offset below the reported
/// recovery point survived with its bytes.
#[test]
fn a_flush_in_flight_vouches_only_for_what_it_began_with() {
    let (disk, storage) = sim();
    let mut log = open(&storage, &follower_dir(), small_config());
    for i in 0..10 {
        log.append_as_follower(&copied_at(&format!("a{i}"), i, 1), 1_000)
            .unwrap();
    }
    let job = log.begin_flush().expect("ten batches to sync");
    // The next fetch's batches are appended while the flush runs.
    for i in 10..20 {
        log.append_as_follower(&copied_at(&format!("a{i}"), i, 1), 1_000)
            .unwrap();
    }
    let result = job.run();
    let reported = log.complete_flush(job, result).unwrap();
    assert_eq!(
        reported,
        Offset(10),
        "the flush vouches for what it began with, not the log end ({})",
        log.log_end_offset()
    );
    let live = read_all(&mut log);
    assert_survives(&disk, reported, &live, "appends during a flush");

    // A flush of offsets 10 to 20 is under way when a new leader's epoch cuts the log at 15,
    // and that leader's batches take it past 20 before the flush completes.
    let job = log.begin_flush().expect("ten more to sync");
    log.truncate_to(Offset(15)).unwrap();
    for i in 15..25 {
        log.append_as_follower(&copied_at(&format!("b{i}"), i, 2), 1_000)
            .unwrap();
    }
    let result = job.run();
    let reported = log.complete_flush(job, result).unwrap();
    assert_eq!(
        reported,
        Offset(10),
        "a flush begun before the cut moves nothing (it synced some of the cut bytes, none of \
         the new ones)"
    );
    let live = read_all(&mut log);
    assert_survives(&disk, reported, &live, "a cut during a flush");
    // The next flush covers the refilled log.
    let job = log.begin_flush().expect("the refilled tail to sync");
    let result = job.run();
    let reported = log.complete_flush(job, result).unwrap();
    assert_eq!(reported, Offset(25));
    assert_survives(&disk, reported, &live, "the next flush");
}
