//! Idempotent producers' state in the log: recorded by leader and follower appends, rebuilt at
//! open from the newest snapshot plus the headers after it, rebuilt after a truncation so that
//! a retry of a batch that was cut is appended anew, and consistent with the recovered log
//! after a crash at any fsync of a workload that rolls, truncates and deletes segments.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use vltava_messages::batch::BatchHeader;
use vltava_messages::{
    BatchBuilder, Compression, LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence,
};
use vltava_storage::producer_state::{
    self, PRODUCER_BATCHES_KEPT, SNAPSHOTS_KEPT, SequenceCheck, snapshot_path,
};
use vltava_storage::sim::SimRng;
use vltava_storage::{Log, LogConfig, ProducerStateTable, Storage};

use super::*;

/// An idempotent batch of `count` records from `producer` at `epoch`, starting at `sequence`,
/// values `"{tag}-{i}"` padded to `value_bytes`.
pub(crate) fn idempotent_batch(
    producer: u64,
    epoch: u16,
    sequence: u32,
    count: u32,
    tag: &str,
    value_bytes: usize,
) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None).producer(
        ProducerId(producer),
        ProducerEpoch(epoch),
        Sequence(sequence),
    );
    for i in 0..count {
        let mut value = format!("{tag}-{i}").into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        builder.push(None, Some(&value), &[], 0);
    }
    builder.build()
}

pub(crate) fn header_of(bytes: &[u8]) -> BatchHeader {
    BatchHeader::parse(bytes).expect("a built batch parses")
}

/// The table a rebuild from nothing but the log's batch headers gives.
pub(crate) fn table_from_scratch(log: &mut Log) -> ProducerStateTable {
    let mut table = ProducerStateTable::default();
    log.for_each_header(|h| table.record(h)).unwrap();
    table
}

/// The log's idempotent batches by base offset: producer id, epoch, first sequence, last
/// offset.
fn idempotent_batches(
    log: &mut Log,
) -> BTreeMap<Offset, (ProducerId, ProducerEpoch, Sequence, Offset)> {
    let mut out = BTreeMap::new();
    log.for_each_header(|h| {
        if let (Some(id), Some(epoch), Some(sequence)) =
            (h.producer_id, h.producer_epoch, h.base_sequence)
        {
            out.insert(h.base_offset, (id, epoch, sequence, h.last_offset()));
        }
    })
    .unwrap();
    out
}

fn snapshots(storage: &Arc<dyn Storage>, dir: &Path) -> Vec<Offset> {
    producer_state::snapshot_offsets(&**storage, dir).unwrap()
}

/// Values this large roll the 64 KiB segments of `small_config` every 20 records or so.
const VALUE_BYTES: usize = 3000;

/// The scenario of issue 13: a batch of producer 7 (sequences 0 to 9) is appended at offsets
/// X..X+9, the log is truncated below X, other data takes those offsets, then the producer
/// retries its batch. Before the table moved into the log and was rebuilt at truncation, the
/// retry was answered as a duplicate with offsets X..X+9, which now hold the other data: an
/// acknowledged batch that is nowhere in the log. It must be appended anew.
#[test]
fn a_retry_of_a_batch_cut_by_truncation_is_appended_anew() {
    let (_, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    for i in 0..20 {
        log.append_as_leader(
            &mut batch(&format!("p{i}"), 3, VALUE_BYTES, 0),
            EPOCH,
            1_000,
        )
        .unwrap();
    }
    let original = idempotent_batch(7, 0, 0, 10, "mine", VALUE_BYTES);
    let x = log
        .append_as_leader(&mut original.clone(), EPOCH, 1_000)
        .unwrap()
        .base_offset;
    // More batches after it, so that rolls leave snapshots past the cut.
    for i in 0..20 {
        log.append_as_leader(
            &mut batch(&format!("q{i}"), 3, VALUE_BYTES, 0),
            EPOCH,
            1_000,
        )
        .unwrap();
    }
    let retry = header_of(&original);
    assert_eq!(
        log.producer_state()
            .duplicate_of(&retry)
            .map(|b| b.base_offset),
        Some(x),
        "before the cut the retry is a duplicate"
    );
    assert!(
        snapshots(&storage, &sim_dir()).iter().any(|o| *o > x),
        "a snapshot past the cut exists"
    );

    let cut = Offset(x.0 - 5);
    log.truncate_to(cut).unwrap();
    assert!(
        snapshots(&storage, &sim_dir()).iter().all(|o| *o <= cut),
        "snapshots past the cut are gone"
    );
    for i in 0..20 {
        log.append_as_leader(
            &mut batch(&format!("other{i}"), 3, VALUE_BYTES, 0),
            EPOCH,
            1_000,
        )
        .unwrap();
    }
    assert!(log.log_end_offset() > x.plus(10));
    assert_eq!(log.producer_state().duplicate_of(&retry), None);
    assert_eq!(
        log.producer_state().check_sequence(&retry),
        SequenceCheck::Append,
        "the producer has no state left here, and its batch starts at 0"
    );
    let again = log
        .append_as_leader(&mut original.clone(), EPOCH, 1_000)
        .unwrap();
    assert!(
        again.base_offset > x,
        "appended at the log end, not answered with X"
    );
    let read = log.read(x, 1, None).unwrap();
    let at_x = vltava_messages::RecordBatchRef::new(&read.bytes).unwrap();
    assert!(
        at_x.records().unwrap()[0]
            .value
            .as_deref()
            .is_some_and(|v| v.starts_with(b"other")),
        "offset X holds the other data"
    );
    assert_eq!(
        log.producer_state()
            .duplicate_of(&retry)
            .map(|b| b.base_offset),
        Some(again.base_offset),
        "a second retry is answered with the new offsets"
    );

    // A crash now (no close): the open must not take a snapshot written before the cut.
    drop(log);
    let mut log = open(&storage, &sim_dir(), small_config());
    let scratch = table_from_scratch(&mut log);
    assert_eq!(log.producer_state(), &scratch);
    assert_eq!(
        log.producer_state()
            .duplicate_of(&retry)
            .map(|b| b.base_offset),
        Some(again.base_offset)
    );
}

/// A follower that becomes leader must answer a retry of a batch it copied as a duplicate,
/// so a follower's append records the batch as a leader's does.
#[test]
fn a_follower_append_records_the_producers_batch() {
    let (_, storage) = sim();
    let mut leader = open(&storage, &sim_dir(), small_config());
    let (_, follower_storage) = sim();
    let mut follower = open(&follower_storage, &sim_dir(), small_config());
    let original = idempotent_batch(3, 1, 0, 4, "f", 10);
    let mut stamped = original.clone();
    leader
        .append_as_leader(&mut batch("plain", 2, 10, 0), EPOCH, 1_000)
        .unwrap();
    follower
        .append_as_follower(&leader.read(Offset(0), 1 << 20, None).unwrap().bytes, 1_000)
        .unwrap();
    let info = leader.append_as_leader(&mut stamped, EPOCH, 1_000).unwrap();
    follower.append_as_follower(&stamped, 1_000).unwrap();
    let found = follower
        .producer_state()
        .duplicate_of(&header_of(&original))
        .unwrap();
    assert_eq!(
        (found.base_offset, found.last_offset),
        (info.base_offset, info.last_offset)
    );
    assert_eq!(follower.producer_state(), leader.producer_state());
}

/// Each roll writes a snapshot as of the new segment's base, at most `SNAPSHOTS_KEPT` stay,
/// and an open starts reading headers at the newest usable one; a damaged one is skipped for
/// the one before, and with none the whole log is read. Each way gives the same table.
#[test]
fn open_rebuilds_from_the_newest_usable_snapshot_plus_the_headers_after_it() {
    let (sim, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, small_config());
    let mut sequence = [0u32; 3];
    for i in 0..60u64 {
        let p = (i % 3) as usize;
        let count = 1 + (i % 4) as u32;
        let mut bytes = idempotent_batch(
            p as u64,
            0,
            sequence[p],
            count,
            &format!("b{i}"),
            VALUE_BYTES,
        );
        sequence[p] += count;
        log.append_as_leader(&mut bytes, EPOCH, 1_000).unwrap();
    }
    let live = log.producer_state().clone();
    assert_eq!(live.len(), 3);
    let taken = snapshots(&storage, &dir);
    assert_eq!(taken.len(), SNAPSHOTS_KEPT, "older snapshots are removed");
    let segment_bases: Vec<Offset> = log.segments().iter().map(|s| s.base_offset).collect();
    assert!(
        taken.iter().all(|o| segment_bases.contains(o)),
        "snapshots are taken at rolls: {taken:?} vs {segment_bases:?}"
    );
    let newest = *taken.last().unwrap();
    drop(log); // a crash: no close, no snapshot at the log end

    let log = open(&storage, &dir, small_config());
    assert_eq!(log.recovery_report().producer_state_read_from, newest);
    assert_eq!(log.producer_state(), &live);
    drop(log);

    sim.overwrite(&snapshot_path(&dir, newest), b"damaged".to_vec());
    let log = open(&storage, &dir, small_config());
    assert_eq!(
        log.recovery_report().producer_state_read_from,
        taken[taken.len() - 2],
        "the damaged newest snapshot is skipped for the one before"
    );
    assert_eq!(log.producer_state(), &live);
    drop(log);

    for offset in snapshots(&storage, &dir) {
        storage.remove_file(&snapshot_path(&dir, offset)).unwrap();
    }
    let log = open(&storage, &dir, small_config());
    assert_eq!(log.recovery_report().producer_state_read_from, Offset(0));
    assert_eq!(log.producer_state(), &live);

    // A clean close snapshots the log end, and the next open reads no header.
    let end = log.log_end_offset();
    log.close().unwrap();
    let log = open(&storage, &dir, small_config());
    assert_eq!(log.recovery_report().producer_state_read_from, end);
    assert_eq!(log.producer_state(), &live);
}

/// Retention forgets the producers' batches in the deleted segments, as a rebuild would, and
/// the snapshots below the new log start.
#[test]
fn retention_forgets_deleted_batches_and_the_snapshots_below_the_log_start() {
    let (_, storage) = sim();
    let dir = sim_dir();
    let config = LogConfig {
        retention_bytes: Some(128 * 1024),
        ..small_config()
    };
    let mut log = open(&storage, &dir, config.clone());
    // Producer 1 writes only at the start, producer 2 throughout.
    let early = idempotent_batch(1, 0, 0, 2, "early", VALUE_BYTES);
    log.append_as_leader(&mut early.clone(), EPOCH, 1_000)
        .unwrap();
    for i in 0..40u32 {
        let mut bytes = idempotent_batch(2, 0, i * 2, 2, &format!("late{i}"), VALUE_BYTES);
        log.append_as_leader(&mut bytes, EPOCH, 1_000).unwrap();
    }
    let end = log.log_end_offset();
    log.set_high_watermark(end);
    let removed = log.delete_old_segments(1_000).unwrap();
    assert!(!removed.is_empty());
    let start = log.log_start_offset();
    assert_eq!(log.producer_state().duplicate_of(&header_of(&early)), None);
    assert_eq!(log.producer_state().producer(ProducerId(1)), None);
    let scratch = table_from_scratch(&mut log);
    assert_eq!(log.producer_state(), &scratch);
    assert!(snapshots(&storage, &dir).iter().all(|o| *o >= start));
    drop(log);
    let mut log = open(&storage, &dir, config);
    let scratch = table_from_scratch(&mut log);
    assert_eq!(log.producer_state(), &scratch);
}

/// What the crash workload tried to append: every idempotent batch, as (producer, epoch,
/// first sequence, record count).
type Attempted = Vec<(u64, u16, u32, u32)>;

/// A deterministic workload: idempotent batches of three producers (one bumps its epoch) and
/// plain batches, over 64 KiB segments (a roll, with its snapshot, every eight batches or so), flushes,
/// a truncation that cuts a few batches followed by retries of them, a retention pass and a
/// clean close. Stops at the first error (the simulated crash).
fn producer_workload(storage: &Arc<dyn Storage>, attempted: &mut Attempted) {
    let config = LogConfig {
        retention_bytes: Some(160 * 1024),
        ..small_config()
    };
    let Ok(mut log) = Log::open(Arc::clone(storage), &sim_dir(), config, 0) else {
        return;
    };
    let mut rng = SimRng::new(13);
    let mut epochs = [0u16; 3];
    let mut next = [0u32; 3];
    let mut cut_batches: Vec<(u64, u16, u32, u32)> = Vec::new();
    let mut truncate_from = None;
    for b in 0..70u32 {
        if b == 35 {
            // Cut the last few batches, then retry the idempotent ones among them: each must
            // be appended anew, never answered with the offsets that were cut.
            let Some(cut) = truncate_from else { return };
            if log.truncate_to(cut).is_err() {
                return;
            }
            for &(p, epoch, first, count) in &cut_batches {
                let bytes = idempotent_batch(p, epoch, first, count, "retry", VALUE_BYTES);
                assert_eq!(log.producer_state().duplicate_of(&header_of(&bytes)), None);
            }
            next = [0; 3];
            for (p, next) in next.iter_mut().enumerate() {
                if let Some((_, batches)) = log.producer_state().producer(ProducerId(p as u64)) {
                    *next = batches
                        .last()
                        .map_or(0, |b| Sequence(b.last_sequence).plus(1).0);
                }
            }
        }
        if b == 55 {
            let end = log.log_end_offset();
            log.set_high_watermark(end);
            if log.delete_old_segments(0).is_err() {
                return;
            }
        }
        let p = rng.below(4) as usize;
        let count = 1 + rng.below(4) as u32;
        let mut bytes = if p == 3 {
            batch(&format!("plain{b}"), count, VALUE_BYTES, 0)
        } else {
            if b == 45 && p == 0 {
                epochs[0] += 1;
                next[0] = 0;
            }
            attempted.push((p as u64, epochs[p], next[p], count));
            if (25..35).contains(&b) {
                cut_batches.push((p as u64, epochs[p], next[p], count));
            }
            idempotent_batch(
                p as u64,
                epochs[p],
                next[p],
                count,
                &format!("i{b}"),
                VALUE_BYTES,
            )
        };
        let check = log.producer_state().check_sequence(&header_of(&bytes));
        assert_eq!(check, SequenceCheck::Append, "batch {b} follows on");
        let Ok(info) = log.append_as_leader(&mut bytes, LeaderEpoch(1), 0) else {
            return;
        };
        if b == 25 {
            truncate_from = Some(info.base_offset);
        }
        if p != 3 {
            next[p] = Sequence(next[p]).plus(count).0;
        }
        if b % 3 == 2 {
            let Some(job) = log.begin_flush() else {
                continue;
            };
            let result = job.run();
            if log.complete_flush(job, result).is_err() {
                return;
            }
        }
    }
    let _ = log.close();
}

/// Checks a recovered log's producer table: it equals the table rebuilt from the log's
/// headers alone, every batch it would answer as a duplicate is in the log at the offsets it
/// answers, and each producer's last batches in the log are answered as duplicates.
fn assert_producer_state_matches_the_log(log: &mut Log, attempted: &Attempted, context: &str) {
    let scratch = table_from_scratch(log);
    assert_eq!(
        log.producer_state(),
        &scratch,
        "{context}: table differs from a full rebuild"
    );
    let in_log = idempotent_batches(log);
    for &(p, epoch, first, count) in attempted {
        let bytes = idempotent_batch(p, epoch, first, count, "probe", 1);
        if let Some(original) = log.producer_state().duplicate_of(&header_of(&bytes)) {
            assert_eq!(
                in_log.get(&original.base_offset),
                Some(&(
                    ProducerId(p),
                    ProducerEpoch(epoch),
                    Sequence(first),
                    original.last_offset
                )),
                "{context}: producer {p} epoch {epoch} sequence {first} answered as a duplicate at {} but not in the log there",
                original.base_offset
            );
        }
    }
    let mut per_producer: BTreeMap<ProducerId, Vec<(ProducerEpoch, Sequence, Offset, Offset)>> =
        BTreeMap::new();
    for (base, (id, epoch, sequence, last)) in &in_log {
        per_producer
            .entry(*id)
            .or_default()
            .push((*epoch, *sequence, *base, *last));
    }
    for (id, batches) in per_producer {
        let newest_epoch = batches.last().expect("at least one").0;
        let current: Vec<_> = batches.iter().filter(|b| b.0 == newest_epoch).collect();
        for &&(epoch, sequence, base, last) in current.iter().rev().take(PRODUCER_BATCHES_KEPT) {
            let count = u32::try_from(last.0 - base.0 + 1).unwrap();
            let bytes = idempotent_batch(id.0, epoch.0, sequence.0, count, "probe", 1);
            let found = log.producer_state().duplicate_of(&header_of(&bytes));
            assert_eq!(
                found.map(|b| (b.base_offset, b.last_offset)),
                Some((base, last)),
                "{context}: producer {} batch at {base} not recognised as a retry",
                id.0
            );
        }
    }
}

#[test]
fn after_a_crash_at_every_fsync_the_producer_table_matches_the_recovered_log() {
    // A dry run counts the syncs the workload makes, and checks it ran to its end.
    let (dry, storage) = sim();
    let mut full = Attempted::new();
    producer_workload(&storage, &mut full);
    let syncs = dry.sync_count();
    assert!(syncs > 60, "the workload syncs often ({syncs})");
    let mut log = Log::open(Arc::clone(&storage), &sim_dir(), small_config(), 0).unwrap();
    assert!(
        log.log_start_offset() > Offset(0),
        "retention removed segments"
    );
    assert_producer_state_matches_the_log(&mut log, &full, "after the whole workload");
    drop(log);

    let mut cases = 0;
    for crash_at in 1..=syncs {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        let mut attempted = Attempted::new();
        producer_workload(&storage, &mut attempted);
        assert!(sim.crashed(), "crash point {crash_at} reached");
        for seed in 0..4 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 1000 + seed));
            let context = format!("crash at sync {crash_at}, seed {seed}");
            let mut log = Log::open(Arc::clone(&image), &sim_dir(), small_config(), 0)
                .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
            assert_producer_state_matches_the_log(&mut log, &attempted, &context);
            // Reopened once more after a clean close, from the snapshot at its end.
            log.close().unwrap();
            let mut log = Log::open(image, &sim_dir(), small_config(), 0).unwrap();
            assert_producer_state_matches_the_log(
                &mut log,
                &attempted,
                &format!("{context}, reopened"),
            );
            cases += 1;
        }
    }
    assert!(cases >= 240, "{cases} cases");
}

/// A truncation that fails part way (here its directory fsync) leaves the producer table
/// describing batches that may be gone: the log is poisoned, and the reopen that follows
/// rebuilds the table from what survived.
#[test]
fn a_truncation_that_fails_part_way_poisons_the_log_until_a_reopen_rebuilds_the_table() {
    let (sim, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    let mut cut = Offset(0);
    for i in 0..40u32 {
        let mut bytes = idempotent_batch(5, 0, i, 1, &format!("t{i}"), VALUE_BYTES);
        let info = log.append_as_leader(&mut bytes, EPOCH, 1_000).unwrap();
        if i == 30 {
            cut = info.base_offset;
        }
    }
    log.flush().unwrap();
    // The third sync of the truncation: after the recovery-point checkpoint's two, the
    // directory fsync that makes the removals durable.
    sim.set_fail_sync_at(sim.sync_count() + 3);
    assert!(log.truncate_to(cut).is_err());
    assert!(log.is_poisoned());
    let mut log = log.reopen_after_failure(1_000).unwrap();
    let scratch = table_from_scratch(&mut log);
    assert_eq!(log.producer_state(), &scratch);
}
