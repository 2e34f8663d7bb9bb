//! Storage benchmarks: the partition log against raw file writes on the same disk, in the
//! same run, so that ratios between them hold even on a noisy machine.
//!
//! Run with `cargo bench -p vltava-storage` (one group: `cargo bench -p vltava-storage --
//! append_fsync`). Events carry 1 KiB values; a batch holds 1000 of them (about 1 MiB) or 100
//! (about 100 KiB). Every write benchmark writes a fixed volume per iteration into a fresh
//! file or log in a temporary directory (on the same disk as the workspace) and deletes it
//! afterwards (then syncs the parent directory, so that one iteration's block frees do not
//! land in the next); only the writing is timed, never opening, priming or deleting. Samples
//! are single iterations (flat sampling), so criterion's "unable to complete 10 samples"
//! warnings are expected; docs/benchmarks.md explains how to read the figures.
//!
//! - `raw_write`, `raw_fdatasync`: `pwrite` loops of chunks exactly as large as the batches,
//!   without and with an `fdatasync` after each chunk (its p50 is printed).
//! - `raw_write_validate`: the raw loop plus `batch::validate` of each chunk, which is what an
//!   append costs without the log around it; `raw_write_then_fdatasync`: the raw loop and one
//!   `fdatasync` at the end, the disk's write bandwidth and so the ceiling of fsynced figures.
//! - `append`: `Log::append_as_leader` without fsync.
//! - `append_fsync`: append, then flush, one batch in flight.
//! - `append_inflight4`: one appending thread, a one-thread `Flusher`, at most four batches
//!   waiting in an `AckQueue` for their flush (group commit).
//! - `group_commit_8p`: eight logs appended round-robin by one thread, four batches in flight
//!   each, one shared `Flusher` of 2 or 4 threads; the throughput is the total.
//! - `read`: sequential 1 MiB reads over a 2 GiB log in the page cache, with and without CRC
//!   checks; `lookup`: random offsets over the same log (256 MiB segments, nine of them).
//! - `validate`: `batch::validate` and `batch::validate_crc` alone, the CPU part of an append.
//! - `compact`: one compaction pass (`Log::compact`, fsyncs included) over a freshly written
//!   dirty log of `COMPACT_LOG_BYTES` in 8 MiB segments, 100-event batches of 1 KiB values
//!   whose keys are drawn from `COMPACT_KEYS`, uncompressed or LZ4; the throughput counts the
//!   dirty bytes read. Writing the log is not timed.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use tempfile::TempDir;
use vltava_messages::batch;
use vltava_messages::{BatchBuilder, Compression, LeaderEpoch, Offset};
use vltava_storage::{
    AckQueue, CleanupPolicy, FlushJob, Flusher, Log, LogConfig, LogRead, RealStorage,
};

/// Bytes of every event's value.
const VALUE_BYTES: usize = 1024;
/// Bytes written per iteration of a write benchmark (rounded down to whole batches).
const WRITE_VOLUME: u64 = 256 << 20;
/// Batches a log may have waiting for their flush in the pipelined benchmarks.
const IN_FLIGHT_MAX: usize = 4;
/// Logs in the group-commit benchmark.
const PARTITIONS: usize = 8;
/// Size of the log the read and lookup benchmarks use.
const READ_LOG_BYTES: u64 = 2 << 30;
/// Segment size of that log, so that it has several segments.
const READ_SEGMENT_BYTES: u32 = 256 << 20;
/// Bytes asked for by each read.
const READ_BYTES_MAX: u32 = 1 << 20;
/// The clock every append is stamped with.
const NOW_MS: u64 = 1_700_000_000_000;
/// Size of the dirty log each compaction iteration cleans.
const COMPACT_LOG_BYTES: u64 = 64 << 20;
/// Segment size of that log: eight sealed segments.
const COMPACT_SEGMENT_BYTES: u32 = 8 << 20;
/// Distinct keys of that log: about 65,000 records of which some 10,000 stay.
const COMPACT_KEYS: u64 = 10_000;
const EPOCH: LeaderEpoch = LeaderEpoch(1);

/// A batch shape: how many 1 KiB events a batch holds.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    events: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "1000x1KiB",
        events: 1000,
    },
    Shape {
        name: "100x1KiB",
        events: 100,
    },
];

/// A producer's batch of `events` events with distinct keys and 1 KiB values.
fn build_batch(events: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let value: Vec<u8> = (0..VALUE_BYTES)
        .map(|_| {
            state = xorshift(state);
            state as u8
        })
        .collect();
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..events {
        let key = format!("key-{i:06}");
        builder.push(
            Some(key.as_bytes()),
            Some(&value),
            &[],
            NOW_MS as i64 + i as i64,
        );
    }
    builder.build()
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Whole batches of `batch_len` bytes in one iteration's volume.
fn batches_per_iteration(batch_len: usize) -> u64 {
    WRITE_VOLUME / batch_len as u64
}

fn temp_dir() -> TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// Cuts every file in `dir` to zero bytes, so that their dirty pages are dropped rather than
/// written back. Call it before the files are closed: ext4 starts writing a file back when it
/// is closed after a truncation to zero, which is how `Segment::create` makes a segment, so
/// closing a log of unsynced data would otherwise write it all out before it is deleted.
fn cut_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("listing a directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_file() {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_len(0))
                .expect("cutting a file");
        }
    }
}

/// Deletes an iteration's directory and syncs its parent, so that freeing its blocks (and
/// their discards, the file system being mounted with `discard`) is done before the next
/// iteration starts, not during it.
fn remove_dir(dir: TempDir) {
    let parent = dir
        .path()
        .parent()
        .expect("a temporary directory has a parent")
        .to_path_buf();
    drop(dir);
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .expect("syncing the temporary directory's parent");
}

/// Opens a fresh log and primes it with one small appended and flushed batch, so that the
/// timed appends do not pay the one-off leader-epoch checkpoint (two fsyncs) of a new log.
fn fresh_log(dir: &Path, config: LogConfig) -> Log {
    let mut log = Log::open(Arc::new(RealStorage), dir, config, NOW_MS).expect("opening a log");
    let mut primer = build_batch(1);
    log.append_as_leader(&mut primer, EPOCH, NOW_MS)
        .expect("priming append");
    log.flush().expect("priming flush");
    log
}

/// A fresh file whose creation is already durable.
fn fresh_file(dir: &Path) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("raw.data"))
        .expect("creating a file");
    file.sync_all().expect("syncing the new file");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("syncing the directory");
    file
}

/// What a raw write loop does besides its pwrites.
enum Raw<'a> {
    /// Nothing: buffered writes only.
    Buffered,
    /// Runs each chunk (a batch) through `batch::validate` before its pwrite, as a leader
    /// append does: the CPU cost of an append without the log around it.
    Validate,
    /// An fdatasync after each chunk, its duration recorded.
    SyncEach(&'a mut Vec<Duration>),
    /// One fdatasync after the last chunk: the disk's write bandwidth.
    SyncAtEnd,
}

/// Writes `count` chunks sequentially into a fresh file.
fn raw_write(chunk: &[u8], count: u64, mut mode: Raw<'_>) -> Duration {
    let dir = temp_dir();
    let file = fresh_file(dir.path());
    let start = Instant::now();
    let mut position = 0;
    for _ in 0..count {
        if let Raw::Validate = mode {
            black_box(batch::validate(chunk).expect("valid batch"));
        }
        file.write_all_at(chunk, position).expect("pwrite");
        position += chunk.len() as u64;
        if let Raw::SyncEach(syncs) = &mut mode {
            let sync_start = Instant::now();
            file.sync_data().expect("fdatasync");
            syncs.push(sync_start.elapsed());
        }
    }
    if let Raw::SyncAtEnd = mode {
        file.sync_data().expect("fdatasync");
    }
    let elapsed = start.elapsed();
    cut_files(dir.path());
    drop(file);
    remove_dir(dir);
    elapsed
}

/// Appends `count` batches to a fresh log without flushing.
fn append_run(batch: &mut [u8], count: u64, config: &LogConfig) -> Duration {
    let dir = temp_dir();
    let mut log = fresh_log(dir.path(), config.clone());
    let start = Instant::now();
    for _ in 0..count {
        black_box(log.append_as_leader(batch, EPOCH, NOW_MS).expect("append"));
    }
    let elapsed = start.elapsed();
    cut_files(dir.path());
    drop(log);
    remove_dir(dir);
    elapsed
}

/// Appends `count` batches to a fresh log, flushing after each (one batch in flight).
fn append_fsync_run(batch: &mut [u8], count: u64, syncs: &mut Vec<Duration>) -> Duration {
    let dir = temp_dir();
    let mut log = fresh_log(dir.path(), LogConfig::default());
    let start = Instant::now();
    for _ in 0..count {
        log.append_as_leader(batch, EPOCH, NOW_MS).expect("append");
        let sync_start = Instant::now();
        black_box(log.flush().expect("flush"));
        syncs.push(sync_start.elapsed());
    }
    let elapsed = start.elapsed();
    cut_files(dir.path());
    drop(log);
    remove_dir(dir);
    elapsed
}

/// A log in a pipelined benchmark, with the batches waiting for their flush.
struct Partition {
    log: Log,
    acks: AckQueue<()>,
    flushing: bool,
}

/// A finished flush job, sent back by the flusher thread to the appending thread.
type Done = (usize, FlushJob, vltava_storage::Result<()>);

/// The appending thread's side of a pipelined run: the logs, the flusher they share and the
/// channel their flush results come back on.
struct Pipeline<'a> {
    partitions: Vec<Partition>,
    flusher: &'a Flusher,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    flushes: u64,
}

impl Pipeline<'_> {
    /// Starts a flush of partition `i` unless one is in flight or nothing waits for one.
    fn start_flush(&mut self, i: usize) {
        let partition = &mut self.partitions[i];
        if partition.flushing || partition.acks.is_empty() {
            return;
        }
        if let Some(job) = partition.log.begin_flush() {
            let done_tx = self.done_tx.clone();
            self.flusher
                .submit(
                    job,
                    Box::new(move |job, result| {
                        let _ = done_tx.send((i, job, result));
                    }),
                )
                .expect("the flusher is running");
            partition.flushing = true;
            self.flushes += 1;
        }
    }

    /// Takes a flush result: acknowledges the batches it made durable and starts the next
    /// flush for the batches appended meanwhile.
    fn complete(&mut self, (i, job, result): Done) {
        let partition = &mut self.partitions[i];
        partition.flushing = false;
        let flushed = partition
            .log
            .complete_flush(job, result)
            .expect("flush succeeded");
        black_box(partition.acks.complete(flushed).count());
        self.start_flush(i);
    }

    /// Appends `count` batches round-robin over the partitions, each with at most
    /// `IN_FLIGHT_MAX` unacknowledged, and waits until all are acknowledged.
    fn run(&mut self, batch: &mut [u8], count: u64) {
        let n = self.partitions.len();
        for k in 0..count {
            let i = (k % n as u64) as usize;
            while self.partitions[i].acks.len() >= IN_FLIGHT_MAX {
                let done = self.done_rx.recv().expect("flusher answers");
                self.complete(done);
            }
            while let Ok(done) = self.done_rx.try_recv() {
                self.complete(done);
            }
            let partition = &mut self.partitions[i];
            let info = partition
                .log
                .append_as_leader(batch, EPOCH, NOW_MS)
                .expect("append");
            assert!(
                partition.acks.push(info.last_offset.plus(1), ()).is_ok(),
                "the ack queue has room"
            );
            self.start_flush(i);
        }
        while self.partitions.iter().any(|p| !p.acks.is_empty()) {
            let done = self.done_rx.recv().expect("flusher answers");
            self.complete(done);
        }
    }
}

/// Appends `count` batches round-robin over `partitions` fresh logs sharing `flusher`.
/// Returns the time taken and the number of flush jobs run.
fn pipelined_run(
    batch: &mut [u8],
    count: u64,
    partitions: usize,
    flusher: &Flusher,
) -> (Duration, u64) {
    let dirs: Vec<_> = (0..partitions).map(|_| temp_dir()).collect();
    let (done_tx, done_rx) = mpsc::channel();
    let mut pipeline = Pipeline {
        partitions: dirs
            .iter()
            .map(|dir| Partition {
                log: fresh_log(dir.path(), LogConfig::default()),
                acks: AckQueue::new(IN_FLIGHT_MAX),
                flushing: false,
            })
            .collect(),
        flusher,
        done_tx,
        done_rx,
        flushes: 0,
    };
    let start = Instant::now();
    pipeline.run(batch, count);
    let elapsed = start.elapsed();
    let flushes = pipeline.flushes;
    for dir in &dirs {
        cut_files(dir.path());
    }
    drop(pipeline);
    dirs.into_iter().for_each(remove_dir);
    (elapsed, flushes)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

/// Prints the p50, p90 and p99 of the fsync times recorded during a benchmark (warm-up
/// iterations included).
fn report_syncs(label: &str, syncs: &mut [Duration]) {
    if syncs.is_empty() {
        return; // filtered out
    }
    syncs.sort_unstable();
    println!(
        "{label}: fsync p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms over {} fsyncs",
        percentile(syncs, 0.50).as_secs_f64() * 1e3,
        percentile(syncs, 0.90).as_secs_f64() * 1e3,
        percentile(syncs, 0.99).as_secs_f64() * 1e3,
        syncs.len(),
    );
}

/// Prints how many batches one flush job covered on average (warm-up included).
fn report_batches_per_fsync(label: &str, batches: u64, flushes: u64) {
    if flushes > 0 {
        println!(
            "{label}: {:.2} batches per flush job",
            batches as f64 / flushes as f64
        );
    }
}

/// A group for one write benchmark of one shape: every iteration writes `WRITE_VOLUME`, so a
/// sample is one or a few iterations (flat sampling), and ten samples are enough.
fn write_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    bytes: u64,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::BytesDecimal(bytes));
    group
}

/// Buffered writes, shape by shape, each log figure right after its raw baselines: the raw
/// pwrite loop, the same loop with the validation an append does (nothing else of the log),
/// and the log's append without fsync.
fn bench_buffered(c: &mut Criterion) {
    for shape in SHAPES {
        let mut batch = build_batch(shape.events);
        let count = batches_per_iteration(batch.len());
        let bytes = count * batch.len() as u64;
        let id = BenchmarkId::from_parameter(shape.name);

        let mut group = write_group(c, "raw_write", bytes);
        group.bench_function(id.clone(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| raw_write(&batch, count, Raw::Buffered))
                    .sum()
            });
        });
        group.finish();

        let mut group = write_group(c, "raw_write_validate", bytes);
        group.bench_function(id.clone(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| raw_write(&batch, count, Raw::Validate))
                    .sum()
            });
        });
        group.finish();

        let mut group = write_group(c, "append", bytes);
        let config = LogConfig::default();
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| append_run(&mut batch, count, &config))
                    .sum()
            });
        });
        group.finish();
    }
}

/// Fsynced writes, shape by shape, each log figure right after its raw baseline: pwrite +
/// fdatasync per chunk, append + flush per batch, and four batches in flight on one log with
/// a one-thread flusher. Then the disk's bandwidth: the volume written, one fdatasync.
fn bench_fsync(c: &mut Criterion) {
    let flusher = Flusher::new(1, 1);
    for shape in SHAPES {
        let mut batch = build_batch(shape.events);
        let count = batches_per_iteration(batch.len());
        let bytes = count * batch.len() as u64;
        let id = BenchmarkId::from_parameter(shape.name);

        let mut group = write_group(c, "raw_fdatasync", bytes);
        let mut syncs = Vec::new();
        group.bench_function(id.clone(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| raw_write(&batch, count, Raw::SyncEach(&mut syncs)))
                    .sum()
            });
        });
        group.finish();
        report_syncs(&format!("raw_fdatasync/{}", shape.name), &mut syncs);

        let mut group = write_group(c, "append_fsync", bytes);
        let mut syncs = Vec::new();
        group.bench_function(id.clone(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| append_fsync_run(&mut batch, count, &mut syncs))
                    .sum()
            });
        });
        group.finish();
        report_syncs(&format!("append_fsync/{}", shape.name), &mut syncs);

        let mut group = write_group(c, "append_inflight4", bytes);
        let (mut batches, mut flushes) = (0, 0);
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let (elapsed, n) = pipelined_run(&mut batch, count, 1, &flusher);
                        batches += count;
                        flushes += n;
                        elapsed
                    })
                    .sum()
            });
        });
        group.finish();
        report_batches_per_fsync(
            &format!("append_inflight4/{}", shape.name),
            batches,
            flushes,
        );
    }
    drop(flusher);

    let shape = SHAPES[0];
    let chunk = build_batch(shape.events);
    let count = batches_per_iteration(chunk.len());
    let mut group = write_group(c, "raw_write_then_fdatasync", count * chunk.len() as u64);
    group.bench_function(BenchmarkId::from_parameter(shape.name), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| raw_write(&chunk, count, Raw::SyncAtEnd))
                .sum()
        });
    });
    group.finish();
}

/// Group commit across eight logs appended round-robin by one thread, four batches in
/// flight each, one shared flusher pool of 2 or 4 threads. The throughput is the total.
fn bench_group_commit(c: &mut Criterion) {
    for threads in [2, 4] {
        let flusher = Flusher::new(threads, PARTITIONS);
        for shape in SHAPES {
            let mut batch = build_batch(shape.events);
            let count = batches_per_iteration(batch.len());
            let mut group = write_group(c, "group_commit_8p", count * batch.len() as u64);
            let (mut batches, mut flushes) = (0, 0);
            let id = BenchmarkId::new(shape.name, format!("flushers={threads}"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let (elapsed, n) =
                                pipelined_run(&mut batch, count, PARTITIONS, &flusher);
                            batches += count;
                            flushes += n;
                            elapsed
                        })
                        .sum()
                });
            });
            group.finish();
            report_batches_per_fsync(
                &format!("group_commit_8p/{}/flushers={threads}", shape.name),
                batches,
                flushes,
            );
        }
    }
}

/// Writes a log of `READ_LOG_BYTES` in segments of `READ_SEGMENT_BYTES` (100-event batches)
/// and closes it cleanly, so that it is durable and its pages are clean in the page cache.
fn write_read_log(dir: &Path) {
    let config = LogConfig {
        segment_bytes_max: READ_SEGMENT_BYTES,
        ..LogConfig::default()
    };
    let mut log = Log::open(Arc::new(RealStorage), dir, config, NOW_MS).expect("opening a log");
    let mut batch = build_batch(100);
    while log.size_bytes() < READ_LOG_BYTES {
        log.append_as_leader(&mut batch, EPOCH, NOW_MS)
            .expect("append");
    }
    log.close().expect("closing the log");
}

fn open_read_log(dir: &Path, verify_reads: bool) -> Log {
    let config = LogConfig {
        segment_bytes_max: READ_SEGMENT_BYTES,
        verify_reads,
        ..LogConfig::default()
    };
    Log::open(Arc::new(RealStorage), dir, config, NOW_MS).expect("reopening the log")
}

/// Reads the whole log front to back in reads of `READ_BYTES_MAX`; returns the bytes read.
fn read_all(log: &mut Log, out: &mut LogRead) -> u64 {
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    let mut bytes = 0;
    while offset < end {
        log.read_into(offset, READ_BYTES_MAX, None, out)
            .expect("read");
        assert!(
            out.batch_count > 0,
            "a read below the log end returns a batch"
        );
        bytes += out.bytes.len() as u64;
        offset = out.next_offset;
    }
    black_box(&out.bytes);
    bytes
}

/// The log the read and lookup benchmarks share, written on first use only (so that a
/// filtered run that skips them does not pay for it).
#[derive(Default)]
struct ReadLog {
    dir: Option<tempfile::TempDir>,
}

impl ReadLog {
    fn open(&mut self, verify_reads: bool) -> Log {
        let dir = self.dir.get_or_insert_with(|| {
            let dir = temp_dir();
            write_read_log(dir.path());
            dir
        });
        open_read_log(dir.path(), verify_reads)
    }
}

/// Sequential reads and random offset lookups over a log written beforehand.
fn bench_read(c: &mut Criterion) {
    let mut read_log = ReadLog::default();
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::BytesDecimal(READ_LOG_BYTES));
    for verify_reads in [true, false] {
        let name = if verify_reads { "crc" } else { "no_crc" };
        let mut state: Option<(Log, LogRead)> = None;
        group.bench_function(BenchmarkId::new("1MiB", name), |b| {
            let (log, out) = state.get_or_insert_with(|| {
                let mut log = read_log.open(verify_reads);
                let mut out = LogRead::default();
                // One untimed pass, so that every page is in the cache.
                read_all(&mut log, &mut out);
                (log, out)
            });
            // Each iteration reads the whole log; the throughput counts `READ_LOG_BYTES` per
            // iteration, and the few bytes the log holds past it are read but not counted.
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(read_all(log, out));
                }
                start.elapsed()
            });
        });
        if let Some((log, _)) = state {
            log.close().expect("closing the log");
        }
    }
    group.finish();

    let mut group = c.benchmark_group("lookup");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    let mut state: Option<(Log, Vec<Offset>)> = None;
    group.bench_function("random", |b| {
        let (log, offsets) = state.get_or_insert_with(|| {
            let log = read_log.open(true);
            let end = log.log_end_offset().0;
            let mut x = 0x2545_f491_4f6c_dd1d_u64;
            let offsets = (0..1 << 16)
                .map(|_| {
                    x = xorshift(x);
                    Offset(x % end)
                })
                .collect();
            println!(
                "lookup: log of {} bytes, {} segments, {end} offsets",
                log.size_bytes(),
                log.segments().len()
            );
            (log, offsets)
        });
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let offset = offsets[(i as usize) & (offsets.len() - 1)];
                black_box(log.lookup(offset).expect("lookup"));
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// A batch of 100 events with 1 KiB values and keys drawn from `COMPACT_KEYS` by `state`.
fn build_keyed_batch(state: &mut u64, compression: Compression) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression);
    for i in 0..100 {
        *state = xorshift(*state);
        let key = format!("key-{:06}", *state % COMPACT_KEYS);
        let value: Vec<u8> = (0..VALUE_BYTES)
            .map(|j| (*state >> (j % 8 * 8)) as u8 ^ j as u8)
            .collect();
        builder.push(Some(key.as_bytes()), Some(&value), &[], NOW_MS as i64 + i);
    }
    builder.build()
}

/// Writes a compacted log of `COMPACT_LOG_BYTES`, seals its last segment and makes it
/// durable and committed, so that all of it is dirty and cleanable.
fn write_dirty_log(dir: &Path, compression: Compression) -> Log {
    let config = LogConfig {
        segment_bytes_max: COMPACT_SEGMENT_BYTES,
        segment_ms: 1,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::Compact,
        cleanable_dirty_percent_min: 0,
        ..LogConfig::default()
    };
    let mut log = Log::open(Arc::new(RealStorage), dir, config, NOW_MS).expect("opening a log");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    while log.size_bytes() < COMPACT_LOG_BYTES {
        let mut batch = build_keyed_batch(&mut state, compression);
        log.append_as_leader(&mut batch, EPOCH, NOW_MS)
            .expect("append");
    }
    assert!(log.roll_if_old(NOW_MS + 1).expect("roll"), "the log rolls");
    log.flush().expect("flush");
    let end = log.log_end_offset();
    log.set_high_watermark(end);
    log
}

/// One compaction pass over a dirty log, per iteration.
fn bench_compact(c: &mut Criterion) {
    let mut group = c.benchmark_group("compact");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::BytesDecimal(COMPACT_LOG_BYTES));
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let mut reported = false;
        group.bench_function(BenchmarkId::new("10k_keys_1KiB", name), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let dir = temp_dir();
                    let mut log = write_dirty_log(dir.path(), compression);
                    let bytes_before = log.size_bytes();
                    let start = Instant::now();
                    let report = log
                        .compact(NOW_MS)
                        .expect("compaction")
                        .expect("a pass is due");
                    elapsed += start.elapsed();
                    if !reported {
                        reported = true;
                        println!(
                            "compact/{name}: {bytes_before} bytes in {} segments -> {} bytes in {}, \
                             {} records removed",
                            report.segments_before,
                            log.size_bytes(),
                            report.segments_after,
                            report.stats.records_removed
                        );
                    }
                    drop(log);
                    cut_files(dir.path());
                    remove_dir(dir);
                }
                elapsed
            });
        });
    }
    group.finish();
}

/// The CPU part of a leader append: full validation, and the CRC check alone.
fn bench_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for shape in SHAPES {
        let batch = build_batch(shape.events);
        group.throughput(Throughput::BytesDecimal(batch.len() as u64));
        group.bench_function(BenchmarkId::new("full", shape.name), |b| {
            b.iter(|| batch::validate(black_box(&batch)).expect("valid"));
        });
        group.bench_function(BenchmarkId::new("crc_only", shape.name), |b| {
            b.iter(|| batch::validate_crc(black_box(&batch)).expect("valid"));
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_buffered, bench_fsync, bench_group_commit, bench_read, bench_validate, bench_compact
}
criterion_main!(benches);
