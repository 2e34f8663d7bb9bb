//! Compaction of logs whose cleanup policy is `compact`: what stays, tombstones, reads across
//! the gaps compaction leaves, jobs that run while the log moves on or is truncated, merging,
//! memory-bounded passes, producer state, and the swap's crash safety on the simulated disk.
//!
//! Most tests build the expected log with a model (`expected_after`): per key the newest record
//! of the cleaned range stays, records without a key stay, a newest tombstone goes once its
//! batch's max timestamp plus `delete_retention_ms` is at or before the pass's clock, and
//! nothing at or past the cleaned range changes. Records are compared whole: offset,
//! timestamp, key, value and headers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use vltava_messages::batch::{self, BatchHeader};
use vltava_messages::{
    BatchBuilder, Compression, Offset, ProducerEpoch, ProducerId, Record, RecordBatchRef, Sequence,
};
use vltava_storage::checkpoint;
use vltava_storage::compaction::{CLEANED_SUFFIX, COMPACTION_COMMIT, DELETED_SUFFIX, SWAP_SUFFIX};
use vltava_storage::sim::SimRng;
use vltava_storage::{CleanupPolicy, CompactionJob, CompactionOutcome, Log, LogConfig, Storage};

use super::*;

/// Tombstones of these tests live for one second past their batch's max timestamp.
const RETENTION_MS: u64 = 1_000;
/// Record timestamps start here; a pass at `BEFORE_EXPIRY` keeps every tombstone, one at
/// `AFTER_EXPIRY` may drop them all.
const T0: i64 = 1_000_000;
const BEFORE_EXPIRY: u64 = 1_000_000;
const AFTER_EXPIRY: u64 = 10_000_000;

/// 64 KiB segments, a dense index, no dirty-ratio threshold, a roll whenever the clock moves.
fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 512,
        segment_ms: 1,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: RETENTION_MS,
        cleanable_dirty_percent_min: 0,
        ..LogConfig::default()
    }
}

/// One record to append: key, value (`None` is a tombstone), one header, timestamp.
#[derive(Clone, Debug)]
struct Rec {
    key: Option<String>,
    value: Option<Vec<u8>>,
    timestamp: i64,
}

fn rec(key: Option<&str>, value: Option<&str>, timestamp: i64) -> Rec {
    Rec {
        key: key.map(str::to_owned),
        value: value.map(|v| v.as_bytes().to_vec()),
        timestamp,
    }
}

/// Builds a batch of `recs`, each with a header naming its value's length.
fn build(recs: &[Rec], compression: Compression, producer: Option<(u64, u16, u32)>) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression);
    if let Some((id, epoch, sequence)) = producer {
        builder = builder.producer(ProducerId(id), ProducerEpoch(epoch), Sequence(sequence));
    }
    for r in recs {
        let len = r.value.as_ref().map_or(0, Vec::len).to_string();
        builder.push(
            r.key.as_deref().map(str::as_bytes),
            r.value.as_deref(),
            &[("len", len.as_bytes())],
            r.timestamp,
        );
    }
    builder.build()
}

/// A log under test and everything appended to it, in offset order.
struct Fixture {
    log: Log,
    /// Every record appended, with its offset and the max timestamp of its batch.
    appended: Vec<(Record, i64)>,
    clock: u64,
}

impl Fixture {
    fn new(storage: &Arc<dyn Storage>, config: LogConfig) -> Fixture {
        Fixture {
            log: Log::open(Arc::clone(storage), &sim_dir(), config, 0).expect("log opens"),
            appended: Vec::new(),
            clock: 0,
        }
    }

    fn append(&mut self, recs: &[Rec], compression: Compression) -> Offset {
        self.append_as(recs, compression, None)
    }

    fn append_as(
        &mut self,
        recs: &[Rec],
        compression: Compression,
        producer: Option<(u64, u16, u32)>,
    ) -> Offset {
        let mut bytes = build(recs, compression, producer);
        let info = self
            .log
            .append_as_leader(&mut bytes, EPOCH, self.clock)
            .expect("append");
        let stored = RecordBatchRef::new(&bytes).unwrap();
        let max_timestamp = stored.header.max_timestamp;
        for record in stored.records().unwrap() {
            self.appended.push((record, max_timestamp));
        }
        info.base_offset
    }

    /// Seals the active segment (the clock moves past `segment_ms`).
    fn roll(&mut self) {
        self.clock += 1;
        assert!(
            self.log.roll_if_old(self.clock).unwrap(),
            "the segment rolls"
        );
    }

    /// Makes everything appended durable and committed, so that every sealed segment can be
    /// cleaned.
    fn commit(&mut self) {
        self.log.flush().unwrap();
        let end = self.log.log_end_offset();
        self.log.set_high_watermark(end);
    }

    /// The offset after the last sealed segment: what a pass may clean.
    fn sealed_end(&self) -> Offset {
        let segments = self.log.segments();
        segments[segments.len() - 1].base_offset
    }
}

/// Every record in the log, read in small steps from its start.
fn read_records(log: &mut Log) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1, None).expect("read succeeds");
        assert!(
            read.batch_count >= 1,
            "a read below the log end returns a batch"
        );
        for b in batch::split_batches(&read.bytes) {
            let b = b.expect("stored batches are intact");
            for r in b.records().expect("records decode") {
                if r.offset >= offset {
                    out.push(r);
                }
            }
        }
        offset = read.next_offset;
    }
    for pair in out.windows(2) {
        assert!(pair[0].offset < pair[1].offset, "offsets increase");
    }
    out
}

/// The model of one pass over `[start, range_end)` with a map holding every key.
fn expected_after(appended: &[(Record, i64)], range_end: Offset, now_ms: u64) -> Vec<Record> {
    let mut newest: HashMap<&[u8], Offset> = HashMap::new();
    for (r, _) in appended {
        if let Some(key) = &r.key
            && r.offset < range_end
        {
            newest.insert(key, r.offset);
        }
    }
    appended
        .iter()
        .filter(|(r, max_timestamp)| {
            let Some(key) = &r.key else { return true };
            if r.offset >= range_end {
                return true;
            }
            if newest[key.as_slice()] != r.offset {
                return false;
            }
            let expired = max_timestamp + RETENTION_MS as i64 <= now_ms as i64;
            !(r.value.is_none() && expired)
        })
        .map(|(r, _)| r.clone())
        .collect()
}

fn all_records(appended: &[(Record, i64)]) -> Vec<Record> {
    appended.iter().map(|(r, _)| r.clone()).collect()
}

fn files_with_suffix(storage: &Arc<dyn Storage>, dir: &Path, suffixes: &[&str]) -> Vec<String> {
    storage
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|n| suffixes.iter().any(|s| n.ends_with(s)))
        .collect()
}

fn leftovers(storage: &Arc<dyn Storage>) -> Vec<String> {
    let mut found = files_with_suffix(
        storage,
        &sim_dir(),
        &[CLEANED_SUFFIX, SWAP_SUFFIX, DELETED_SUFFIX],
    );
    if storage.exists(&sim_dir().join(COMPACTION_COMMIT)) {
        found.push(COMPACTION_COMMIT.to_owned());
    }
    found
}

/// A workload of `keys` keys over several segments: `rounds` batches of 1 to 8 records each
/// with random keys (some without a key, some tombstones), one codec per batch from
/// `codecs`; seals the active segment every `roll_every` batches, then seals and commits.
fn keyed_workload(
    fixture: &mut Fixture,
    seed: u64,
    rounds: u64,
    keys: u64,
    roll_every: u64,
    codecs: &[Compression],
) {
    let mut rng = SimRng::new(seed);
    for b in 0..rounds {
        let count = 1 + rng.below(8);
        let recs: Vec<Rec> = (0..count)
            .map(|i| {
                let timestamp = T0 + (b * 10 + i) as i64;
                let key = format!("key-{}", rng.below(keys));
                let value = format!("{key}-b{b}-r{i}-{}", ".".repeat(rng.below(200) as usize));
                match rng.below(20) {
                    0 => rec(None, Some(&value), timestamp),
                    1 | 2 => rec(Some(&key), None, timestamp),
                    _ => rec(Some(&key), Some(&value), timestamp),
                }
            })
            .collect();
        let codec = codecs[rng.below(codecs.len() as u64) as usize];
        fixture.append(&recs, codec);
        if b % roll_every == roll_every - 1 {
            fixture.roll();
        }
    }
    fixture.append(&[rec(Some("tail"), Some("active"), T0)], Compression::None);
    fixture.roll();
    fixture.append(
        &[rec(Some("tail"), Some("active 2"), T0)],
        Compression::None,
    );
    fixture.commit();
}

fn compact_now(log: &mut Log, now_ms: u64) -> vltava_storage::CompactionReport {
    let report = log
        .compact(now_ms)
        .expect("compaction succeeds")
        .expect("a pass is due");
    assert_eq!(report.outcome, CompactionOutcome::Swapped);
    report
}

#[test]
fn compaction_keeps_the_newest_record_of_every_key_at_its_offset() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(&mut f, 1, 600, 40, 60, &[Compression::None]);
    let before = read_records(&mut f.log);
    assert_eq!(before, all_records(&f.appended));
    let segments_before = f.log.segments().len();
    let bytes_before = f.log.size_bytes();
    let end = f.log.log_end_offset();
    let range_end = f.sealed_end();

    let report = compact_now(&mut f.log, BEFORE_EXPIRY);
    assert_eq!(report.cleaned_range.start, Offset(0));
    assert!(report.cleaned_range.end <= range_end);
    assert_eq!(report.first_dirty_offset, range_end);
    assert_eq!(f.log.first_dirty_offset(), range_end);
    let after = read_records(&mut f.log);
    assert_eq!(after, expected_after(&f.appended, range_end, BEFORE_EXPIRY));
    assert!(
        after.len() < before.len() / 4,
        "most records were superseded"
    );
    assert_eq!(
        report.stats.records_removed as usize,
        before.len() - after.len()
    );
    assert_eq!(f.log.log_start_offset(), Offset(0));
    assert_eq!(f.log.log_end_offset(), end, "the log end never moves");
    assert!(f.log.size_bytes() < bytes_before / 3);
    assert!(f.log.segments().len() < segments_before);

    // Nothing is dirty now: no pass is due, and a reopen (indexes and all) reads the same.
    assert!(f.log.begin_compaction(BEFORE_EXPIRY).is_none());
    drop(f.log);
    let mut log = open(&storage, &sim_dir(), compact_config());
    assert_eq!(read_records(&mut log), after);
    assert_eq!(
        log.first_dirty_offset(),
        range_end,
        "the cleaner checkpoint survives"
    );
    assert!(leftovers(&storage).is_empty());
}

#[test]
fn batches_of_both_codecs_are_compacted_and_keep_their_codec() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(
        &mut f,
        2,
        400,
        30,
        40,
        &[Compression::Lz4, Compression::Zstd, Compression::None],
    );
    let range_end = f.sealed_end();
    let mut codecs_before = HashMap::new();
    f.log
        .for_each_header(|h| {
            codecs_before.insert(h.base_offset, h.compression().unwrap());
        })
        .unwrap();
    let report = compact_now(&mut f.log, BEFORE_EXPIRY);
    assert!(report.stats.batches_rewritten > 10, "{:?}", report.stats);
    assert_eq!(
        read_records(&mut f.log),
        expected_after(&f.appended, range_end, BEFORE_EXPIRY)
    );
    // Every batch kept its producer's codec: a batch's codec is that of the batch its first
    // record came from.
    let mut batch_of: Vec<(Offset, Compression)> = codecs_before.into_iter().collect();
    batch_of.sort_by_key(|(base, _)| *base);
    let mut seen = [0; 3];
    f.log
        .for_each_header(|h| {
            let original = batch_of
                .iter()
                .rev()
                .find(|(base, _)| *base <= h.base_offset)
                .unwrap()
                .1;
            let codec = h.compression().unwrap();
            assert_eq!(codec, original, "batch at {}", h.base_offset);
            seen[codec.code() as usize] += 1;
        })
        .unwrap();
    assert!(
        seen.iter().all(|n| *n > 0),
        "all three codecs remain: {seen:?}"
    );
}

#[test]
fn reads_lookups_and_header_walks_at_removed_offsets_find_the_next_surviving_batch() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(
        &mut f,
        3,
        500,
        25,
        50,
        &[Compression::None, Compression::Lz4],
    );
    let range_end = f.sealed_end();
    compact_now(&mut f.log, BEFORE_EXPIRY);
    let survivors = expected_after(&f.appended, range_end, BEFORE_EXPIRY);
    let end = f.log.log_end_offset();
    let mut removed = 0;
    let mut out = vltava_storage::LogRead::default();
    for offset in 0..end.0 {
        let offset = Offset(offset);
        let next = survivors
            .iter()
            .find(|r| r.offset >= offset)
            .expect("the active segment survives");
        if next.offset != offset {
            removed += 1;
        }
        let read = f.log.read(offset, 1, None).unwrap();
        let first = batch::split_batches(&read.bytes).next().unwrap().unwrap();
        let records = first.records().unwrap();
        assert_eq!(
            records
                .iter()
                .find(|r| r.offset >= offset)
                .map(|r| r.offset),
            Some(next.offset),
            "read at {offset}"
        );
        assert!(first.header.base_offset <= next.offset);
        // `read_into` gives the same bytes.
        f.log.read_into(offset, 1, None, &mut out).unwrap();
        assert_eq!(out.bytes, read.bytes);
        // A lookup lands on that batch.
        let (base, position) = f.log.lookup(offset).unwrap().expect("below the log end");
        let at = f
            .log
            .segments()
            .into_iter()
            .find(|s| s.base_offset == base)
            .unwrap();
        assert!(position < at.bytes);
        let mut first_header = None;
        f.log
            .for_each_header_from(offset, |h| {
                first_header.get_or_insert(*h);
            })
            .unwrap();
        assert_eq!(first_header.unwrap().base_offset, first.header.base_offset);
    }
    assert!(removed > 1000, "most offsets were removed ({removed})");
}

#[test]
fn offset_for_timestamp_returns_the_first_surviving_record_at_or_after_it() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(
        &mut f,
        4,
        500,
        25,
        50,
        &[Compression::None, Compression::Zstd],
    );
    let range_end = f.sealed_end();
    compact_now(&mut f.log, BEFORE_EXPIRY);
    let survivors = expected_after(&f.appended, range_end, BEFORE_EXPIRY);
    let last = f.appended.iter().map(|(r, _)| r.timestamp).max().unwrap();
    for timestamp in (T0 - 5..=last + 1).step_by(7) {
        let expected = survivors
            .iter()
            .find(|r| r.timestamp >= timestamp)
            .map(|r| (r.offset, r.timestamp));
        assert_eq!(
            f.log.offset_for_timestamp(timestamp).unwrap(),
            expected,
            "timestamp {timestamp}"
        );
    }
}

#[test]
fn tombstones_stay_until_delete_retention_has_passed_then_go() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    f.append(
        &[
            rec(Some("a"), Some("a1"), T0),
            rec(Some("b"), Some("b1"), T0),
        ],
        Compression::None,
    );
    f.append(&[rec(Some("a"), None, T0 + 10)], Compression::None);
    f.append(&[rec(Some("c"), Some("c1"), T0 + 20)], Compression::Lz4);
    f.append(&[rec(Some("b"), None, T0 + 30)], Compression::Zstd);
    f.roll();
    f.append(&[rec(Some("d"), Some("d1"), T0 + 40)], Compression::None);
    f.commit();
    let range_end = f.sealed_end();

    // Before the retention passes: the older values go, the tombstones stay.
    let first = compact_now(&mut f.log, T0 as u64 + 20);
    assert_eq!(first.stats.tombstones_removed, 0);
    let kept = read_records(&mut f.log);
    assert_eq!(kept, expected_after(&f.appended, range_end, T0 as u64 + 20));
    let keys: Vec<(Option<&[u8]>, bool)> = kept
        .iter()
        .map(|r| (r.key.as_deref(), r.value.is_none()))
        .collect();
    assert_eq!(
        keys,
        [
            (Some(&b"a"[..]), true),
            (Some(&b"c"[..]), false),
            (Some(&b"b"[..]), true),
            (Some(&b"d"[..]), false)
        ]
    );

    // Nothing is dirty, and no tombstone has expired yet: no pass.
    assert!(f.log.begin_compaction(T0 as u64 + 500).is_none());
    // Once `a`'s tombstone expires, a pass is due although nothing is dirty; `b`'s expires
    // 20 ms later.
    let a_expiry = (T0 + 10) as u64 + RETENTION_MS;
    assert!(f.log.begin_compaction(a_expiry - 1).is_none());
    let second = compact_now(&mut f.log, a_expiry);
    assert_eq!(second.stats.tombstones_removed, 1);
    let third = compact_now(&mut f.log, a_expiry + 20);
    assert_eq!(third.stats.tombstones_removed, 1);
    let left: Vec<Option<Vec<u8>>> = read_records(&mut f.log)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(left, [Some(b"c".to_vec()), Some(b"d".to_vec())]);
    assert!(f.log.begin_compaction(AFTER_EXPIRY).is_none());
}

#[test]
fn a_pass_that_removes_everything_keeps_an_empty_first_segment_and_the_log_start() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    f.append(&[rec(Some("a"), Some("a1"), T0)], Compression::None);
    f.append(&[rec(Some("a"), None, T0 + 1)], Compression::None);
    f.roll();
    f.append(&[rec(Some("b"), Some("b1"), T0 + 2)], Compression::None);
    f.commit();
    compact_now(&mut f.log, AFTER_EXPIRY);
    let segments = f.log.segments();
    assert_eq!(segments.len(), 2);
    assert_eq!((segments[0].base_offset, segments[0].bytes), (Offset(0), 0));
    assert_eq!(f.log.log_start_offset(), Offset(0));
    let records = read_records(&mut f.log);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, Offset(2));
    assert_eq!(f.log.lookup(Offset(0)).unwrap().unwrap().0, Offset(2));
    drop(f.log);
    let mut log = open(&storage, &sim_dir(), compact_config());
    assert_eq!(
        log.log_start_offset(),
        Offset(0),
        "the empty first segment stays"
    );
    assert_eq!(read_records(&mut log), records);
}

#[test]
fn appends_and_reads_during_a_running_job_are_all_kept() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(&mut f, 5, 400, 30, 40, &[Compression::None]);
    let range_end = f.sealed_end();
    let job: CompactionJob = f
        .log
        .begin_compaction(BEFORE_EXPIRY)
        .expect("a pass is due");
    assert!(
        f.log.begin_compaction(BEFORE_EXPIRY).is_none(),
        "one job at a time"
    );
    let runner = std::thread::spawn(move || job.run());
    // The owner keeps appending (rolling too) and reading while the job runs.
    let mut rng = SimRng::new(55);
    for b in 0..300u64 {
        let key = format!("key-{}", rng.below(30));
        let value = format!("during-{b}");
        f.append(
            &[rec(Some(&key), Some(&value), T0 + 10_000 + b as i64)],
            Compression::None,
        );
        if b % 100 == 99 {
            f.roll();
        }
        let read = f.log.read(Offset(b * 3), 4096, None).unwrap();
        assert!(read.batch_count >= 1);
    }
    f.log.flush().unwrap();
    let output = runner.join().unwrap();
    let report = f.log.complete_compaction(output).unwrap();
    assert_eq!(report.outcome, CompactionOutcome::Swapped);
    assert_eq!(
        read_records(&mut f.log),
        expected_after(&f.appended, range_end, BEFORE_EXPIRY),
        "the cleaned range is compacted and every later append is there"
    );
    // The appends made meanwhile are dirty: the next pass cleans them too.
    let end = f.log.log_end_offset();
    f.log.set_high_watermark(end);
    let range_end = f.sealed_end();
    compact_now(&mut f.log, BEFORE_EXPIRY);
    assert_eq!(
        read_records(&mut f.log),
        expected_after(&f.appended, range_end, BEFORE_EXPIRY)
    );
}

#[test]
fn a_job_overtaken_by_truncation_is_discarded_without_damage() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(&mut f, 6, 300, 20, 30, &[Compression::None]);
    let job = f.log.begin_compaction(BEFORE_EXPIRY).unwrap();
    let output = job.run();
    assert!(output.is_ok());
    assert!(!files_with_suffix(&storage, &sim_dir(), &[CLEANED_SUFFIX]).is_empty());
    // A follower's truncation into the job's range.
    let cut = Offset(f.log.log_end_offset().0 / 2);
    f.log.truncate_to(cut).unwrap();
    let report = f.log.complete_compaction(output).unwrap();
    assert_eq!(
        report.outcome,
        CompactionOutcome::Discarded {
            reason: "the log was truncated"
        }
    );
    assert!(leftovers(&storage).is_empty(), "{:?}", leftovers(&storage));
    let records = read_records(&mut f.log);
    let expected: Vec<Record> = all_records(&f.appended)
        .into_iter()
        .take(records.len())
        .collect();
    assert_eq!(records, expected, "the log is the uncompacted prefix");
    assert!(f.log.log_end_offset() <= cut);
    // The log compacts again later.
    f.appended.truncate(records.len());
    f.roll();
    f.append(&[rec(Some("x"), Some("x"), T0)], Compression::None);
    f.commit();
    let range_end = f.sealed_end();
    compact_now(&mut f.log, BEFORE_EXPIRY);
    assert_eq!(
        read_records(&mut f.log),
        expected_after(&f.appended, range_end, BEFORE_EXPIRY)
    );
}

#[test]
fn a_job_of_a_log_poisoned_meanwhile_is_discarded_and_the_reopened_log_is_whole() {
    let (sim, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(&mut f, 7, 200, 20, 30, &[Compression::None]);
    let job = f.log.begin_compaction(BEFORE_EXPIRY).unwrap();
    let output = job.run();
    f.append(&[rec(Some("late"), Some("late"), T0)], Compression::None);
    sim.set_fail_sync_at(sim.sync_count() + 1);
    assert!(f.log.flush().is_err());
    assert!(f.log.is_poisoned());
    let report = f.log.complete_compaction(output).unwrap();
    assert_eq!(
        report.outcome,
        CompactionOutcome::Discarded {
            reason: "the log is poisoned"
        }
    );
    let mut log = f.log.reopen_after_failure(0).unwrap();
    f.appended.pop();
    assert_eq!(read_records(&mut log), all_records(&f.appended));
    assert!(leftovers(&storage).is_empty());
}

#[test]
fn a_job_outliving_its_log_is_cancelled_and_refused_by_the_reopened_log() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(&mut f, 8, 200, 20, 30, &[Compression::None]);
    let job = f.log.begin_compaction(BEFORE_EXPIRY).unwrap();
    f.log.close().unwrap();
    let output = job.run();
    assert!(!output.is_ok(), "closing the log cancelled the job");
    let mut log = open(&storage, &sim_dir(), compact_config());
    let report = log.complete_compaction(output).unwrap();
    assert!(matches!(
        report.outcome,
        CompactionOutcome::Discarded { .. }
    ));
    assert_eq!(read_records(&mut log), all_records(&f.appended));
    assert!(leftovers(&storage).is_empty());
}

#[test]
fn retention_never_deletes_segments_of_a_compacted_log() {
    let (_, storage) = sim();
    let config = LogConfig {
        retention_ms: Some(1),
        retention_bytes: Some(1),
        ..compact_config()
    };
    let mut f = Fixture::new(&storage, config);
    keyed_workload(&mut f, 9, 100, 10, 20, &[Compression::None]);
    let segments = f.log.segments().len();
    assert!(f.log.delete_old_segments(u64::MAX / 2).unwrap().is_empty());
    assert_eq!(f.log.segments().len(), segments);
}

#[test]
fn many_updates_to_few_keys_leave_a_small_log() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    // 10 keys, 20,000 updates of about 130 bytes each: some 3 MiB over about 50 segments,
    // compacted now and then as a partition would.
    let mut rng = SimRng::new(10);
    let mut passes = 0;
    for b in 0..2_000u64 {
        let recs: Vec<Rec> = (0..10)
            .map(|i| {
                let key = format!("key-{}", rng.below(10));
                let value = format!("{key}-{b}-{i}-{}", "v".repeat(100));
                rec(Some(&key), Some(&value), T0 + b as i64)
            })
            .collect();
        f.append(&recs, Compression::None);
        if b % 200 == 199 {
            f.commit();
            passes += usize::from(f.log.compact(BEFORE_EXPIRY).unwrap().is_some());
        }
    }
    f.roll();
    f.commit();
    let range_end = f.sealed_end();
    compact_now(&mut f.log, BEFORE_EXPIRY);
    assert!(passes >= 9);
    assert!(f.appended.len() == 20_000);
    let segments = f.log.segments();
    assert_eq!(
        segments.len(),
        2,
        "one cleaned segment and the active one: {segments:?}"
    );
    assert!(segments[0].bytes <= 3 * 1024, "{} bytes", segments[0].bytes);
    assert!(
        f.log.size_bytes() <= 4 * 1024,
        "{} bytes",
        f.log.size_bytes()
    );
    assert_eq!(
        read_records(&mut f.log),
        expected_after(&f.appended, range_end, BEFORE_EXPIRY)
    );
}

#[test]
fn merged_segments_stay_within_the_segment_size() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    // Distinct keys, seldom updated: little goes, so merging must stop at the segment size.
    let mut rng = SimRng::new(11);
    for b in 0..600u64 {
        let recs: Vec<Rec> = (0..4)
            .map(|i| {
                let key = format!("key-{}", rng.below(2_000));
                rec(Some(&key), Some(&"w".repeat(150)), T0 + (b * 4 + i) as i64)
            })
            .collect();
        f.append(&recs, Compression::None);
        if b % 25 == 24 {
            f.roll();
        }
    }
    f.append(
        &[rec(Some("active"), Some("active"), T0)],
        Compression::None,
    );
    f.commit();
    let range_end = f.sealed_end();
    let before = f.log.segments().len();
    let report = compact_now(&mut f.log, BEFORE_EXPIRY);
    assert!(report.segments_after < report.segments_before);
    assert!(f.log.segments().len() < before);
    for s in f.log.segments() {
        assert!(s.bytes <= 64 * 1024, "{s:?}");
    }
    assert!(
        f.log.segments()[..2].iter().all(|s| s.bytes > 32 * 1024),
        "merged segments are filled: {:?}",
        f.log.segments()
    );
    assert_eq!(
        read_records(&mut f.log),
        expected_after(&f.appended, range_end, BEFORE_EXPIRY)
    );
}

#[test]
fn a_key_map_too_small_for_the_dirty_keys_cleans_a_prefix_per_pass() {
    let (_, storage) = sim();
    let config = LogConfig {
        // 42 slots: 37 keys a pass.
        compaction_map_bytes_max: 1024,
        ..compact_config()
    };
    let mut f = Fixture::new(&storage, config);
    for round in 0..2 {
        for k in 0..200u64 {
            let key = format!("key-{k}");
            let value = format!("{key}-round-{round}");
            f.append(
                &[rec(Some(&key), Some(&value), T0 + k as i64)],
                Compression::None,
            );
            if k % 50 == 49 {
                f.roll();
            }
        }
    }
    f.append(
        &[rec(Some("active"), Some("active"), T0)],
        Compression::None,
    );
    f.commit();
    let range_end = f.sealed_end();
    let first = compact_now(&mut f.log, BEFORE_EXPIRY);
    assert!(first.stats.keys_mapped <= 37);
    assert!(
        first.first_dirty_offset < range_end,
        "only a prefix was mapped"
    );
    let mut passes = 1;
    while let Some(report) = f.log.compact(BEFORE_EXPIRY).unwrap() {
        assert_eq!(report.outcome, CompactionOutcome::Swapped);
        passes += 1;
        assert!(passes < 20, "passes make progress");
    }
    assert!(passes >= 5, "{passes} passes");
    assert_eq!(f.log.first_dirty_offset(), range_end);
    let records = read_records(&mut f.log);
    assert_eq!(
        records,
        expected_after(&f.appended, range_end, BEFORE_EXPIRY)
    );
    assert_eq!(
        records.len(),
        201,
        "200 keys and the active segment's record"
    );
}

/// The last batch header of every producer: (epoch, last sequence, last offset).
fn producer_tails(log: &mut Log) -> HashMap<ProducerId, (ProducerEpoch, u32, Offset)> {
    let mut tails = HashMap::new();
    log.for_each_header(|h: &BatchHeader| {
        if let (Some(id), Some(epoch), Some(Sequence(first))) =
            (h.producer_id, h.producer_epoch, h.base_sequence)
        {
            tails.insert(id, (epoch, first + h.last_offset_delta, h.last_offset()));
        }
    })
    .unwrap();
    tails
}

#[test]
fn the_last_batch_of_every_producer_survives_compaction() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    // Producer 7 writes keys a..d in three batches, producer 9 writes e..f in one; then a
    // plain producer overwrites every key, so all their records are superseded.
    let mut sequence = 0;
    for (b, keys) in [["a", "b"], ["c", "d"], ["a", "c"]].iter().enumerate() {
        let recs: Vec<Rec> = keys
            .iter()
            .map(|k| rec(Some(k), Some(&format!("p7-{b}-{k}")), T0))
            .collect();
        f.append_as(&recs, Compression::Lz4, Some((7, 3, sequence)));
        sequence += 2;
    }
    f.append_as(
        &[
            rec(Some("e"), Some("p9"), T0),
            rec(Some("f"), Some("p9"), T0),
        ],
        Compression::None,
        Some((9, 0, 40)),
    );
    f.roll();
    for k in ["a", "b", "c", "d", "e", "f"] {
        f.append(&[rec(Some(k), Some("plain"), T0 + 1)], Compression::None);
    }
    f.roll();
    f.append(&[rec(Some("z"), Some("active"), T0 + 2)], Compression::None);
    f.commit();
    let tails = producer_tails(&mut f.log);
    assert_eq!(tails.len(), 2);

    let report = compact_now(&mut f.log, BEFORE_EXPIRY);
    assert_eq!(report.stats.producer_records_kept, 2);
    assert_eq!(
        producer_tails(&mut f.log),
        tails,
        "each producer's tail is intact"
    );
    // Only the last record of each producer's last batch stays among their records.
    let kept: Vec<(Offset, Vec<u8>)> = read_records(&mut f.log)
        .into_iter()
        .filter(|r| r.value.as_deref() != Some(&b"plain"[..]))
        .map(|r| (r.offset, r.value.unwrap()))
        .collect();
    assert_eq!(
        kept,
        [
            (Offset(5), b"p7-2-c".to_vec()),
            (Offset(7), b"p9".to_vec()),
            (Offset(14), b"active".to_vec())
        ]
    );
    // The batches are whole batches with matching sequence ranges: a reopened log's headers
    // say the same.
    drop(f.log);
    let mut log = open(&storage, &sim_dir(), compact_config());
    assert_eq!(producer_tails(&mut log), tails);
}

#[test]
fn a_record_kept_for_its_producer_holds_back_its_keys_tombstone() {
    let (_, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    f.append_as(
        &[rec(Some("k"), Some("old"), T0)],
        Compression::None,
        Some((5, 0, 0)),
    );
    f.append(&[rec(Some("k"), None, T0)], Compression::None);
    f.roll();
    f.append(&[rec(Some("z"), Some("z"), T0)], Compression::None);
    f.commit();
    // The tombstone has expired, but `k = old` must stay for producer 5: dropping the
    // tombstone would bring `old` back.
    compact_now(&mut f.log, AFTER_EXPIRY);
    let values: Vec<Option<Vec<u8>>> = read_records(&mut f.log)
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(values, [Some(b"old".to_vec()), None, Some(b"z".to_vec())]);
    // Once producer 5 writes again, both go in the next pass.
    f.roll();
    f.append_as(
        &[rec(Some("y"), Some("new"), T0)],
        Compression::None,
        Some((5, 0, 1)),
    );
    f.roll();
    f.append(&[rec(Some("w"), Some("w"), T0)], Compression::None);
    f.commit();
    compact_now(&mut f.log, AFTER_EXPIRY);
    let keys: Vec<Option<Vec<u8>>> = read_records(&mut f.log)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(
        keys,
        [
            Some(b"z".to_vec()),
            Some(b"y".to_vec()),
            Some(b"w".to_vec())
        ]
    );
}

/// The log the crash test compacts: 500 keys over several segments, so that the cleaned
/// records fill more than one segment.
fn crash_setup(f: &mut Fixture) {
    keyed_workload(f, 12, 400, 500, 60, &[Compression::None, Compression::Lz4]);
}

/// The crash-test workload: a compacted log over several segments, committed and durable,
/// then one compaction pass. Stops at the first error (the simulated crash). Returns the
/// records before the pass and, if it finished, after, with the number of cleaned segments.
fn crash_workload(storage: &Arc<dyn Storage>) -> (Vec<Record>, Option<(Vec<Record>, usize)>) {
    let Ok(log) = Log::open(Arc::clone(storage), &sim_dir(), compact_config(), 0) else {
        return (Vec::new(), None);
    };
    let mut f = Fixture {
        log,
        appended: Vec::new(),
        clock: 0,
    };
    crash_setup(&mut f);
    let before = all_records(&f.appended);
    let Some(job) = f.log.begin_compaction(BEFORE_EXPIRY) else {
        return (before, None);
    };
    let output = job.run();
    match f.log.complete_compaction(output) {
        Ok(report) if report.outcome == CompactionOutcome::Swapped => {
            let after = read_records(&mut f.log);
            (before, Some((after, report.segments_after)))
        }
        _ => (before, None),
    }
}

#[test]
fn a_crash_at_every_sync_of_a_compaction_leaves_the_old_or_the_new_log() {
    // A dry run: the syncs before the pass, the syncs of the pass, both views.
    let (dry, storage) = sim();
    let (before, after) = crash_workload(&storage);
    let (after, cleaned_segments) = after.expect("the dry run compacts");
    assert!(after.len() < before.len() / 2);
    assert!(
        cleaned_segments >= 2,
        "the swap covers several cleaned segments ({cleaned_segments})"
    );
    let syncs_total = dry.sync_count();
    let (setup, storage) = sim();
    {
        let mut f = Fixture::new(&storage, compact_config());
        crash_setup(&mut f);
    }
    // Opening the log (a fresh one here) and the workload's syncs; `Fixture::new` opens at
    // the clock 0 as `crash_workload` does.
    let syncs_before = setup.sync_count();
    // The pass fsyncs each cleaned segment (two or more), the commit record (file and
    // directory), the directory twice, and the cleaner checkpoint (file and directory).
    assert!(
        syncs_total - syncs_before >= 8,
        "the pass syncs its files, the directory and the records ({})",
        syncs_total - syncs_before
    );
    let mut olds = 0;
    let mut news = 0;
    for crash_at in syncs_before + 1..=syncs_total {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        let (_, finished) = crash_workload(&storage);
        assert!(finished.is_none(), "crash point {crash_at} reached");
        assert!(sim.crashed());
        for seed in 0..6 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 100 + seed));
            let context = format!("crash at sync {crash_at}, seed {seed}");
            let mut log = Log::open(Arc::clone(&image), &sim_dir(), compact_config(), 0)
                .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
            assert!(
                leftovers(&image).is_empty(),
                "{context}: {:?}",
                leftovers(&image)
            );
            let records = read_records(&mut log);
            if records == before {
                olds += 1;
            } else {
                // Compared without printing thousands of records on failure.
                let first_difference = records
                    .iter()
                    .zip(&after)
                    .position(|(a, b)| a != b)
                    .map(|i| records[i].offset);
                assert!(
                    records == after,
                    "{context}: neither the old log ({} records) nor the new ({}): {} records, \
                     first difference at {first_difference:?}",
                    before.len(),
                    after.len(),
                    records.len()
                );
                news += 1;
            }
            // The recovered log compacts to the same records.
            let end = log.log_end_offset();
            log.set_high_watermark(end);
            log.compact(BEFORE_EXPIRY)
                .unwrap_or_else(|e| panic!("{context}: compaction after recovery: {e}"));
            assert_eq!(read_records(&mut log), after, "{context}: recompacted");
        }
    }
    assert!(
        olds > 0 && news > 0,
        "both outcomes occur: {olds} old, {news} new"
    );
}

#[test]
fn leftover_compaction_files_are_removed_or_finished_at_open() {
    let (sim, storage) = sim();
    let mut f = Fixture::new(&storage, compact_config());
    keyed_workload(&mut f, 13, 150, 10, 30, &[Compression::None]);
    let before = all_records(&f.appended);
    let dir = sim_dir();
    let segments = f.log.segments();
    let first_log = dir.join(format!("{:020}.log", segments[0].base_offset.0));
    let second_log = dir.join(format!("{:020}.log", segments[1].base_offset.0));

    // Uncommitted leftovers: a `.cleaned` file, a `.swap` no record names, a stray `.deleted`.
    // The open removes them and keeps the old segments.
    let garbage = |path: &Path| {
        let file = storage.open(path, true).unwrap();
        file.write_at(b"not a segment", 0).unwrap();
        file.sync_data().unwrap();
    };
    let with = |path: &Path, suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    garbage(&with(&first_log, CLEANED_SUFFIX));
    garbage(&with(&second_log, SWAP_SUFFIX));
    garbage(&dir.join("00000000000000000003.index.deleted"));
    storage.sync_dir(&dir).unwrap();
    drop(f.log);
    let mut log = open(&storage, &dir, compact_config());
    assert!(leftovers(&storage).is_empty(), "{:?}", leftovers(&storage));
    assert_eq!(read_records(&mut log), before);

    // A committed swap interrupted before the renames to final names: the job's cleaned
    // segment is moved to `.swap` and the commit record written, as `swap_in` does up to its
    // commit point. The open finishes the swap.
    let job = log.begin_compaction(BEFORE_EXPIRY).unwrap();
    let range = job.range();
    let output = job.run();
    assert!(output.is_ok());
    let cleaned = files_with_suffix(&storage, &dir, &[CLEANED_SUFFIX]);
    assert_eq!(
        cleaned.len(),
        1,
        "everything merges into one segment: {cleaned:?}"
    );
    let cleaned = dir.join(&cleaned[0]);
    storage
        .rename(&cleaned, &with(&first_log, SWAP_SUFFIX))
        .unwrap();
    let mut record = vec![1u8];
    record.extend_from_slice(&1u32.to_be_bytes());
    record.extend_from_slice(&range.start.0.to_be_bytes());
    record.extend_from_slice(&range.end.0.to_be_bytes());
    checkpoint::write_atomic(&*storage, &dir.join(COMPACTION_COMMIT), &record).unwrap();
    drop(output);
    drop(log);
    let image: Arc<dyn Storage> = Arc::new(sim.crash_image(1));
    let mut log = open(&image, &dir, compact_config());
    assert!(leftovers(&image).is_empty(), "{:?}", leftovers(&image));
    let expected = expected_after(&f.appended, range.end, BEFORE_EXPIRY);
    assert_eq!(read_records(&mut log), expected);
    assert_eq!(
        log.segments().len(),
        2,
        "the cleaned segment and the active one"
    );
}

/// The job leaves the owner's thread.
#[test]
fn a_compaction_job_can_be_sent_to_another_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<CompactionJob>();
    assert_send::<vltava_storage::CompactionOutput>();
}

/// Not a compacted log: no job.
#[test]
fn a_log_with_the_delete_policy_never_compacts() {
    let (_, storage) = sim();
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Delete,
        ..compact_config()
    };
    let mut f = Fixture::new(&storage, config);
    keyed_workload(&mut f, 14, 100, 10, 20, &[Compression::None]);
    assert!(f.log.begin_compaction(BEFORE_EXPIRY).is_none());
}

/// The (base offset, next offset) of every batch in the log, oldest first.
fn batch_spans(log: &mut Log) -> Vec<(Offset, Offset)> {
    let mut spans = Vec::new();
    log.for_each_header(|h: &BatchHeader| spans.push((h.base_offset, h.next_offset())))
        .unwrap();
    spans
}

/// Per key, the newest record in the log (offset and value; a tombstone's value is `None`).
fn newest_per_key(log: &mut Log) -> HashMap<Vec<u8>, (Offset, Option<Vec<u8>>)> {
    let mut newest = HashMap::new();
    for r in read_records(log) {
        if let Some(key) = r.key {
            newest.insert(key, (r.offset, r.value));
        }
    }
    newest
}

/// A compacted log of `keyed_workload(seed 21)`, cleaned once: 600 keys, so that what
/// survives still fills a few segments.
fn compacted_fixture(storage: &Arc<dyn Storage>) -> Fixture {
    let mut f = Fixture::new(storage, compact_config());
    keyed_workload(
        &mut f,
        21,
        600,
        600,
        30,
        &[Compression::None, Compression::Lz4],
    );
    compact_now(&mut f.log, BEFORE_EXPIRY);
    f
}

/// Issue 13, "a truncation into a compacted range": a log truncated to an offset inside a gap
/// compaction left, inside a batch that compaction re-encoded, and at a segment's base. Each
/// time whole batches go (those holding offsets at or past the cut), the log ends at the last
/// batch wholly below it, the producer table is what a rebuild gives, a reopen sees the same
/// log, and the cleaner checkpoint is within the log: records appended again at the offsets
/// of the gap are dirty, so the next pass removes the older records of their keys.
///
/// The cleaner checkpoint used to be lowered to the truncation offset only, which in a gap
/// lies past the new log end: records written again between the two were then taken for
/// clean, and the older records of their keys were kept by every later pass (the next open
/// clamped the checkpoint to the log end, but only if no append came first).
#[test]
fn a_truncation_into_a_compacted_range_cuts_whole_batches_and_keeps_what_follows_dirty() {
    let (_, storage) = sim();
    let mut probe = compacted_fixture(&storage);
    let spans = batch_spans(&mut probe.log);
    let cleaned_end = probe.log.first_dirty_offset();
    let segment_bases: Vec<Offset> = probe.log.segments().iter().map(|s| s.base_offset).collect();
    drop(probe);
    // Cuts in the second half of the cleaned range, so that the kept part holds keys.
    let middle = Offset(cleaned_end.0 / 2);
    let in_gap = spans
        .windows(2)
        .find(|w| w[0].0 > middle && w[1].0 > w[0].1.plus(1) && w[1].0 < cleaned_end)
        .map(|w| w[0].1.plus(1))
        .expect("compaction left a gap");
    let in_batch = spans
        .iter()
        .find(|(base, next)| *base > middle && next.0 - base.0 >= 2 && *next < cleaned_end)
        .map(|(base, _)| base.plus(1))
        .expect("a batch of several records survived");
    let at_segment = segment_bases
        .iter()
        .copied()
        .find(|b| *b > Offset(0) && *b < cleaned_end)
        .expect("several cleaned segments");
    for (what, cut) in [
        ("in a gap", in_gap),
        ("inside a batch", in_batch),
        ("at a segment base", at_segment),
    ] {
        let (_, storage) = sim();
        let mut f = compacted_fixture(&storage);
        let before = read_records(&mut f.log);
        let expected_end = spans
            .iter()
            .filter(|(_, next)| *next <= cut)
            .map(|(_, next)| *next)
            .max()
            .unwrap_or(Offset(0));
        f.log.truncate_to(cut).unwrap();
        assert_eq!(f.log.log_end_offset(), expected_end, "{what}: cut at {cut}");
        let kept: Vec<Record> = before
            .into_iter()
            .filter(|r| r.offset < expected_end)
            .collect();
        assert_eq!(read_records(&mut f.log), kept, "{what}: whole batches go");
        assert!(
            f.log.first_dirty_offset() <= f.log.log_end_offset(),
            "{what}: cleaner checkpoint {} past the log end {}",
            f.log.first_dirty_offset(),
            f.log.log_end_offset()
        );
        let scratch = super::producers::table_from_scratch(&mut f.log);
        assert_eq!(f.log.producer_state(), &scratch, "{what}");

        // The leader's records for the cut offsets come again (here, one update of a key the
        // kept part holds), then more; everything is committed and cleaned.
        let key = kept
            .iter()
            .rev()
            .find_map(|r| r.key.clone().filter(|_| r.value.is_some()))
            .expect("a kept keyed record");
        let key = String::from_utf8(key).unwrap();
        let mut again = build(
            &[rec(Some(&key), Some("written again"), T0)],
            Compression::None,
            None,
        );
        let end = f.log.log_end_offset();
        // Segments the pass wrote were created at its clock: the fixture's moves past it, so
        // that they roll by age.
        f.clock = f.clock.max(BEFORE_EXPIRY) + 1;
        batch::set_base_offset(&mut again, end);
        batch::set_partition_leader_epoch(&mut again, EPOCH);
        f.log.append_as_follower(&again, f.clock).unwrap();
        f.roll();
        f.append(&[rec(Some("tail"), Some("after"), T0)], Compression::None);
        f.commit();
        let mut appended: Vec<(Record, i64)> = kept.into_iter().map(|r| (r, T0)).collect();
        let again_records = RecordBatchRef::new(&again).unwrap().records().unwrap();
        appended.extend(again_records.into_iter().map(|r| (r, T0)));
        let tail = read_records(&mut f.log)
            .into_iter()
            .filter(|r| r.offset > end);
        appended.extend(tail.map(|r| (r, T0)));
        let range_end = f.sealed_end();
        compact_now(&mut f.log, BEFORE_EXPIRY);
        assert_eq!(
            read_records(&mut f.log),
            expected_after(&appended, range_end, BEFORE_EXPIRY),
            "{what}: a record written again after the cut supersedes the older ones"
        );
        drop(f);
        let mut reopened = open(&storage, &sim_dir(), compact_config());
        assert!(reopened.first_dirty_offset() <= reopened.log_end_offset());
        let scratch = super::producers::table_from_scratch(&mut reopened);
        assert_eq!(reopened.producer_state(), &scratch, "{what}");
    }
}

/// Issue 13, "a follower catching up across a compacted range": a follower copies part of a
/// leader's log, the leader compacts (so the follower's next fetch offset falls among offsets
/// it removed), and the follower copies the rest: it takes the leader's batches unchanged
/// across the gaps (a batch's base offset may be past its log end) and ends where the
/// leader's log ends, holding its own prefix and the leader's compacted records after it.
/// Then the follower compacts on its own: each replica's newest record per key is the same.
#[test]
fn a_follower_copies_a_compacted_leaders_batches_across_the_gaps_and_compacts_on_its_own() {
    let (_, storage) = sim();
    let mut leader = Fixture::new(&storage, compact_config());
    keyed_workload(&mut leader, 22, 300, 20, 30, &[Compression::None]);
    let follower_dir = std::path::PathBuf::from("/sim/follower/topic-0");
    let mut follower = Log::open(Arc::clone(&storage), &follower_dir, compact_config(), 0).unwrap();
    // The follower copies the first third of the offsets, then is away while the leader
    // compacts.
    let stop = Offset(leader.log.log_end_offset().0 / 3);
    while follower.log_end_offset() < stop {
        let read = leader
            .log
            .read(follower.log_end_offset(), 4096, None)
            .unwrap();
        for b in batch::split_batches(&read.bytes) {
            let b = b.unwrap();
            if b.header.base_offset >= stop {
                break;
            }
            follower.append_as_follower(b.bytes, 1).unwrap();
        }
    }
    let prefix = read_records(&mut follower);
    let away_at = follower.log_end_offset();
    compact_now(&mut leader.log, BEFORE_EXPIRY);
    let leader_spans = batch_spans(&mut leader.log);
    assert!(
        leader_spans
            .iter()
            .all(|(base, next)| !(*base < away_at && away_at < *next)),
        "compaction keeps batch boundaries within the old batches"
    );
    assert!(
        !leader_spans.iter().any(|(base, _)| *base == away_at),
        "the follower's fetch offset is among the removed offsets"
    );

    let mut crossed = 0;
    while follower.log_end_offset() < leader.log.log_end_offset() {
        let read = leader
            .log
            .read(follower.log_end_offset(), 4096, None)
            .unwrap();
        for b in batch::split_batches(&read.bytes) {
            let b = b.unwrap();
            if b.header.base_offset > follower.log_end_offset() {
                crossed += 1;
            }
            follower.append_as_follower(b.bytes, 1).unwrap();
        }
    }
    assert!(crossed > 10, "the copy crossed the gaps ({crossed})");
    assert_eq!(follower.log_end_offset(), leader.log.log_end_offset());
    let leader_records = read_records(&mut leader.log);
    let mut expected = prefix;
    expected.extend(
        leader_records
            .iter()
            .filter(|r| r.offset >= away_at)
            .cloned(),
    );
    let copied = read_records(&mut follower);
    assert_eq!(copied, expected);

    // The follower's own pass: its sealed segments, committed and durable, cleaned.
    let records_before = copied.len();
    follower.roll_if_old(10).unwrap();
    follower
        .append_as_follower(&tail_batch_at(follower.log_end_offset()), 10)
        .unwrap();
    follower.flush().unwrap();
    let end = follower.log_end_offset();
    follower.set_high_watermark(end);
    leader.roll();
    leader.append(&[rec(Some("tail"), Some("last"), T0)], Compression::None);
    leader.commit();
    compact_now(&mut leader.log, BEFORE_EXPIRY);
    let report = compact_now(&mut follower, BEFORE_EXPIRY);
    assert!(
        report.stats.records_removed > 0,
        "the follower removed records itself"
    );
    assert!(read_records(&mut follower).len() < records_before);
    let mut leader_newest = newest_per_key(&mut leader.log);
    let mut follower_newest = newest_per_key(&mut follower);
    // The last "tail" record differs by construction (each log's own active-segment write).
    leader_newest.remove(&b"tail"[..]);
    follower_newest.remove(&b"tail"[..]);
    assert_eq!(follower_newest, leader_newest);
}

/// A one-record batch of key "tail" at `offset`, as a leader's batch a follower copies.
fn tail_batch_at(offset: Offset) -> Vec<u8> {
    let mut bytes = build(
        &[rec(Some("tail"), Some("follower"), T0)],
        Compression::None,
        None,
    );
    batch::set_base_offset(&mut bytes, offset);
    batch::set_partition_leader_epoch(&mut bytes, EPOCH);
    bytes
}
