//! Crash safety. Two families of cases:
//!
//! - 1,000 seeded cases in which a process dies mid-append: the active segment is cut, has a
//!   range zeroed (a torn page), a byte flipped, or an offset or leader epoch in a header moved
//!   backwards, at a random position. Reopening must give a prefix of what was appended, every
//!   batch intact, with all batches that were durable before the damage, and report the cut.
//! - A workload on the simulated disk crashed at every fsync it makes, with unsynced pages
//!   lost, kept or zeroed at random: the reopened log must hold every batch acknowledged as
//!   durable before the crash and be a prefix of what was appended.

use std::path::Path;
use std::sync::Arc;

use vltava_messages::{LeaderEpoch, Offset};
use vltava_storage::sim::SimRng;
use vltava_storage::{Log, LogConfig, SimStorage, Storage};

use super::*;

/// What a workload appended: the value prefix of every record, in offset order, and how many
/// records were durable (acknowledged) when it stopped.
#[derive(Debug, Default)]
struct Appended {
    values: Vec<String>,
    /// Offsets below this were acknowledged as durable.
    acked: u64,
    /// Byte position (in the active segment) below which everything was durable, if known.
    batch_ends: Vec<(Offset, Offset, u64)>,
}

/// Checks that the log holds a prefix of `appended`, at least `acked_min` records long.
fn assert_prefix(log: &mut Log, appended: &Appended, acked_min: u64, context: &str) {
    let records = read_all(log);
    assert!(
        records.len() as u64 >= acked_min,
        "{context}: {} records survived, {acked_min} were acknowledged",
        records.len()
    );
    assert!(
        records.len() <= appended.values.len(),
        "{context}: more records than appended"
    );
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(
            *offset,
            Offset(i as u64),
            "{context}: offsets are dense from 0"
        );
        assert!(
            value.starts_with(appended.values[i].as_bytes()),
            "{context}: record {i} is {:?}, expected {:?}",
            String::from_utf8_lossy(&value[..value.len().min(20)]),
            appended.values[i]
        );
    }
    assert_eq!(
        log.log_end_offset(),
        Offset(records.len() as u64),
        "{context}: log end"
    );
}

fn active_segment(storage: &SimStorage, dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = storage
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    dir.join(logs.last().unwrap())
}

#[test]
fn a_thousand_torn_or_corrupt_tails_recover_to_a_durable_prefix() {
    let mut truncations_reported = 0;
    let mut skipped = 0;
    let mut trusted = 0;
    for seed in 0..1000u64 {
        let mut rng = SimRng::new(seed);
        let (sim, storage) = sim();
        let dir = sim_dir();
        let config = LogConfig {
            segment_bytes_max: 64 * 1024,
            index_interval_bytes: 256,
            retention_ms: None,
            ..LogConfig::default()
        };
        let mut log = open(&storage, &dir, config.clone());
        let mut appended = Appended::default();
        let batches = 5 + rng.below(60);
        let mut durable_position = 0u64;
        let mut durable_segment = Offset(0);
        for b in 0..batches {
            let count = 1 + rng.below(6) as u32;
            let value_bytes = 10 + rng.below(300) as usize;
            let tag = format!("s{seed}b{b}");
            let mut bytes = batch(&tag, count, value_bytes, b as i64);
            let len = bytes.len() as u64;
            let info = log
                .append_as_leader(&mut bytes, LeaderEpoch(1 + (b / 20) as u32), 1_000)
                .unwrap();
            for i in 0..count {
                appended.values.push(format!("{tag}-{i}"));
            }
            appended
                .batch_ends
                .push((info.base_offset, info.last_offset, info.position));
            if rng.below(4) == 0 {
                log.flush().unwrap();
                appended.acked = log.recovery_point().0;
                durable_segment = info.segment_base_offset;
                durable_position = info.position + len;
            }
        }
        drop(log); // the process dies: no close, no marker

        let path = active_segment(&sim, &dir);
        let mut bytes = sim.live_contents(&path).unwrap();
        let active_base = Offset(path.file_stem().unwrap().to_str().unwrap().parse().unwrap());
        if bytes.is_empty() {
            continue;
        }
        let position = rng.below(bytes.len() as u64) as usize;
        let mode = rng.below(4);
        let header_start = appended
            .batch_ends
            .iter()
            .filter(|(base, _, p)| *base >= active_base && *p as usize <= position)
            .map(|(_, _, p)| *p as usize)
            .next_back()
            .unwrap_or(0);
        // The base offset and leader epoch sit outside the CRC (as in Kafka, so the leader can
        // write them without recomputing it). Recovery catches them going backwards; a flip
        // that moves them forwards looks like a legitimate gap or a new epoch. Such a flip is
        // media corruption, not a torn write, and is left out here; STORAGE.md says so.
        let in_unchecked_field = |p: usize| {
            (header_start..header_start + 8).contains(&p)
                || (header_start + 12..header_start + 16).contains(&p)
        };
        if mode == 2 && in_unchecked_field(position) {
            skipped += 1;
            continue;
        }
        match mode {
            0 => bytes.truncate(position),
            1 => {
                let end = (position + 1 + rng.below(4096) as usize).min(bytes.len());
                bytes[position..end].fill(0);
            }
            2 => bytes[position] ^= 1 << rng.below(8),
            _ => {
                // Move a header's base offset or leader epoch backwards: find the batch that
                // holds `position` and rewrite the field of the one after the first.
                let starts: Vec<u64> = appended
                    .batch_ends
                    .iter()
                    .filter(|(base, _, _)| *base >= active_base)
                    .map(|(_, _, p)| *p)
                    .collect();
                let Some(&start) = starts
                    .iter()
                    .rev()
                    .find(|s| **s as usize <= position && **s > 0)
                else {
                    continue;
                };
                let start = start as usize;
                if rng.below(2) == 0 {
                    let base = u64::from_be_bytes(bytes[start..start + 8].try_into().unwrap());
                    let lower = base.saturating_sub(1 + rng.below(base.max(1)));
                    bytes[start..start + 8].copy_from_slice(&lower.to_be_bytes());
                } else {
                    bytes[start + 12..start + 16].copy_from_slice(&0u32.to_be_bytes());
                }
            }
        }
        sim.overwrite(&path, bytes);

        let mut log = open(&storage, &dir, config);
        // A flip or zeros inside records that the recovery point's position covers is media
        // corruption of fsynced bytes, which an open walks by their headers only, as it
        // trusts sealed segments below the recovery point (STORAGE.md, *Recovery*); a read
        // meets it. Left out here, as flips of the fields outside the CRC are.
        if (mode == 1 || mode == 2) && (position as u64) < log.recovery_report().bytes_walked {
            trusted += 1;
            continue;
        }
        let damage_after_durable =
            active_base > durable_segment || position as u64 >= durable_position;
        let acked_min = if damage_after_durable {
            appended.acked
        } else {
            0
        };
        let context = format!("seed {seed} mode {mode} position {position}");
        assert_prefix(&mut log, &appended, acked_min, &context);
        if let Some(t) = &log.recovery_report().truncation {
            truncations_reported += 1;
            assert!(
                t.position <= position as u64,
                "{context}: cut at {} past the damage",
                t.position
            );
        } else if mode != 0 {
            // Damage inside a batch is always noticed, unless the zeroed range was already zero.
            assert!(mode == 1, "{context}: corruption went unreported");
        }
    }
    assert!(
        truncations_reported > 700,
        "most cases cut a tail ({truncations_reported}; {trusted} in trusted bytes)"
    );
    assert!(
        skipped < 20,
        "few cases hit the fields outside the CRC ({skipped})"
    );
    assert!(
        trusted > 30 && trusted < 400,
        "some cases hit what the recovery point's position covers ({trusted})"
    );
}

/// A deterministic workload: appends of varying size over small segments, a flush after some,
/// with acknowledgements taken only after a flush succeeded. Stops at the first error (the
/// simulated crash).
fn workload(storage: &Arc<dyn Storage>, appended: &mut Appended) {
    let config = LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 512,
        retention_ms: None,
        ..LogConfig::default()
    };
    let Ok(mut log) = Log::open(Arc::clone(storage), &sim_dir(), config, 0) else {
        return;
    };
    let mut rng = SimRng::new(7);
    for b in 0..60u64 {
        let count = 1 + rng.below(5) as u32;
        let tag = format!("w{b}");
        let mut bytes = batch(&tag, count, 200 + rng.below(2000) as usize, b as i64);
        if log
            .append_as_leader(&mut bytes, LeaderEpoch(1 + (b / 25) as u32), 0)
            .is_err()
        {
            return;
        }
        for i in 0..count {
            appended.values.push(format!("{tag}-{i}"));
        }
        if b % 3 == 2 {
            let Some(job) = log.begin_flush() else {
                continue;
            };
            let result = job.run();
            match log.complete_flush(job, result) {
                Ok(flushed) => appended.acked = flushed.0,
                Err(_) => return,
            }
        }
    }
    let _ = log.close();
}

#[test]
fn a_crash_at_every_fsync_loses_nothing_acknowledged() {
    // A dry run counts the syncs the workload makes.
    let (dry, storage) = sim();
    let mut full = Appended::default();
    workload(&storage, &mut full);
    let syncs = dry.sync_count();
    assert!(syncs > 30, "the workload syncs often ({syncs})");
    let mut cases = 0;
    for crash_at in 1..=syncs {
        let (sim, storage) = sim();
        sim.set_crash_at_sync(crash_at);
        let mut appended = Appended::default();
        workload(&storage, &mut appended);
        assert!(sim.crashed(), "crash point {crash_at} reached");
        for seed in 0..8 {
            let image: Arc<dyn Storage> = Arc::new(sim.crash_image(crash_at * 1000 + seed));
            let context = format!("crash at sync {crash_at}, seed {seed}");
            let mut log = Log::open(Arc::clone(&image), &sim_dir(), small_config(), 0)
                .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
            assert_prefix(&mut log, &full, appended.acked, &context);
            // The recovered log takes appends and survives a second crash with no sync.
            log.append_as_leader(&mut batch("after", 1, 10, 0), LeaderEpoch(9), 0)
                .unwrap();
            cases += 1;
        }
    }
    assert!(cases >= 240);
}

#[test]
fn a_crash_without_any_fsync_after_a_clean_close_keeps_everything() {
    let (disk, storage) = sim();
    let mut full = Appended::default();
    workload(&storage, &mut full);
    for seed in 0..20 {
        let image: Arc<dyn Storage> = Arc::new(disk.crash_image(seed));
        let mut log = Log::open(image, &sim_dir(), small_config(), 0).unwrap();
        assert_prefix(
            &mut log,
            &full,
            full.values.len() as u64,
            &format!("seed {seed}"),
        );
    }
}

/// Seeds of `a_crash_never_keeps_a_later_segment_without_an_earlier_ones_data`: enough disk
/// images that, without the fix, several of them kept a later segment's pages and lost an
/// earlier one's.
const HOLE_SEEDS: u64 = 200;

/// Found when the crash test above reached new disk images: the data of two unsynced segment
/// files reaches the disk in any order, so a power loss could keep a new segment's batches and
/// lose the sealed one's; recovery accepts gaps between segments (compaction leaves them), and
/// the log reopened with a hole instead of a prefix of what was appended. A roll now fsyncs the
/// segment it seals. Here nothing is ever flushed, so every segment but the active one is
/// durable only through its roll.
#[test]
fn a_crash_never_keeps_a_later_segment_without_an_earlier_ones_data() {
    let (sim, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    let mut appended = Appended::default();
    let mut b = 0u32;
    while log.segments().len() < 4 {
        let tag = format!("h{b}");
        log.append_as_leader(&mut batch(&tag, 3, 3000, 0), LeaderEpoch(1), 1_000)
            .unwrap();
        for i in 0..3 {
            appended.values.push(format!("{tag}-{i}"));
        }
        b += 1;
    }
    drop(log); // the process dies: no flush, no close
    for seed in 0..HOLE_SEEDS {
        let image: Arc<dyn Storage> = Arc::new(sim.crash_image(seed));
        let mut log = Log::open(image, &sim_dir(), small_config(), 0).unwrap();
        assert_prefix(&mut log, &appended, 0, &format!("seed {seed}"));
    }
}

/// The recovery-point checkpoint a flush job writes carries the active segment's synced
/// position (STORAGE.md, version 2): an open after a crash walks the batches below it by
/// their headers and checks only what came after; every record reads back. A position that
/// does not fit the file (here: one byte off) is not trusted, and the segment is checked
/// whole. A truncation drops the position, so batches written again at the same offsets are
/// checked, not walked.
#[test]
fn an_open_after_a_crash_walks_the_synced_part_of_the_active_segment_and_checks_the_rest() {
    let config = LogConfig {
        segment_bytes_max: 1024 * 1024,
        ..small_config()
    };
    let (sim, storage) = sim();
    let dir = sim_dir();
    let mut log = open(&storage, &dir, config.clone());
    for i in 0..20 {
        log.append_as_leader(&mut batch("w", 5, 200, i), EPOCH, 1_000)
            .unwrap();
    }
    // The first flush after open takes the checkpoint, with the position.
    log.flush().unwrap();
    let synced = log.size_bytes();
    for i in 0..10 {
        log.append_as_leader(&mut batch("x", 5, 200, i), EPOCH, 1_000)
            .unwrap();
    }
    let total = log.size_bytes();
    drop(log); // the process dies
    let mut log = open(&storage, &dir, config.clone());
    let report = log.recovery_report().clone();
    assert!(!report.clean_shutdown);
    assert_eq!(report.bytes_walked, synced, "the synced prefix is walked");
    assert_eq!(report.bytes_checked, total - synced, "the rest is checked");
    assert_eq!(read_all(&mut log).len(), 150);
    drop(log);

    // The checkpoint one byte off: checked whole.
    let path = dir.join(vltava_storage::log::RECOVERY_POINT_CHECKPOINT);
    let mut body = vec![2u8];
    for value in [100u64, 0, synced + 1] {
        body.extend_from_slice(&value.to_be_bytes());
    }
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    sim.overwrite(&path, body);
    let mut log = open(&storage, &dir, config.clone());
    let report = log.recovery_report().clone();
    assert_eq!(report.bytes_walked, 0, "a misfit position is not trusted");
    assert_eq!(report.bytes_checked, total);
    assert_eq!(read_all(&mut log).len(), 150);

    // Flushed (a checkpoint with the position), then cut below it, other batches written at
    // those offsets, and a crash before the next flush: the truncation dropped the position,
    // so the new batches are checked, not walked over as the old ones.
    log.flush().unwrap();
    log.truncate_to(Offset(50)).unwrap();
    for i in 0..10 {
        log.append_as_leader(&mut batch("y", 5, 300, i), EPOCH, 1_000)
            .unwrap();
    }
    let total = log.size_bytes();
    drop(log);
    let mut log = open(&storage, &dir, config);
    let report = log.recovery_report().clone();
    assert_eq!(report.bytes_walked, 0, "{report:?}");
    assert_eq!(report.bytes_checked, total);
    let records = read_all(&mut log);
    assert_eq!(records.len(), 100);
    assert!(
        records[99].1.starts_with(b"y-4"),
        "{:?}",
        &records[99].1[..4]
    );
}
