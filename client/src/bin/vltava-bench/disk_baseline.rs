//! The disk's own pace, for `produce --baseline-dir`: a loop of one write and one fdatasync per
//! batch into a new file, with no broker, no network and no copies but the kernel's. Its MB/s
//! is what a broker that acknowledges each batch only once it is on disk, one batch in flight,
//! could reach at most on that disk; `produce` runs it before and after its own run, in the
//! same conditions, and reports its own MB/s as a ratio of it (see docs/benchmarks.md). With
//! `--baseline-writers 3` it is three such loops at once, one per replica of an RF 3 cluster
//! on the same disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

/// The most bytes one loop writes: enough to measure a steady pace (hundreds of syncs at
/// 1 MiB), little enough that two loops add seconds, not minutes, to a run.
pub const BASELINE_BYTES_MAX: u64 = 2 << 30;

/// The most concurrent writers (`--baseline-writers`): one per replica of the largest
/// replication factor measured on one disk, with room to spare.
pub const BASELINE_WRITERS_MAX: usize = 8;

/// One loop: `total_bytes` (rounded up to whole batches) written as `batch_bytes` writes, each
/// followed by `fdatasync`, into new files in `dir` that are removed afterwards. With
/// `writers` above 1 the bytes are shared among that many threads, each with a file of its
/// own, started together: the disk's pace when it holds several replicas of every byte (an
/// RF 3 cluster on one disk has three writers, each syncing its own log). `mb_per_s` is the
/// pace of one writer (the aggregate divided by `writers`), which is what a replicated
/// partition whose every replica must sync each batch could reach at most. Blocks.
///
/// # Errors
/// A file cannot be created, written or synced.
pub fn run(
    dir: &Path,
    batch_bytes: usize,
    total_bytes: u64,
    writers: usize,
) -> anyhow::Result<Value> {
    let writers = writers.clamp(1, BASELINE_WRITERS_MAX);
    let batches = total_bytes
        .min(BASELINE_BYTES_MAX)
        .div_ceil(batch_bytes as u64)
        .div_ceil(writers as u64)
        .max(1);
    // Not all zeros, in case a file system or device treats zero blocks specially.
    let buffer: Vec<u8> = (0..batch_bytes).map(|i| (i % 251) as u8).collect();
    let start = std::sync::Barrier::new(writers);
    let started = Instant::now();
    let outcomes: Vec<anyhow::Result<f64>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let (buffer, start) = (&buffer, &start);
                scope.spawn(move || -> anyhow::Result<f64> {
                    let path =
                        dir.join(format!("vltava-bench-baseline-{}-{w}", std::process::id()));
                    let file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .with_context(|| format!("cannot create {}", path.display()));
                    // Every writer reaches the barrier, failed or not, so none waits forever.
                    start.wait();
                    let file = file?;
                    let guard = RemoveOnDrop(path);
                    let mut position = 0u64;
                    for _ in 0..batches {
                        write_and_sync(&file, buffer, position)
                            .with_context(|| format!("writing {}", guard.0.display()))?;
                        position += batch_bytes as u64;
                    }
                    Ok(started.elapsed().as_secs_f64())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer panicked")))
            })
            .collect()
    });
    let mut elapsed = 0.0f64;
    for outcome in outcomes {
        elapsed = elapsed.max(outcome?);
    }
    let per_writer = batches * batch_bytes as u64;
    let aggregate = per_writer as f64 * writers as f64 / elapsed / 1e6;
    Ok(json!({
        "batch_bytes": batch_bytes,
        "writers": writers,
        "batches": batches * writers as u64,
        "bytes": per_writer * writers as u64,
        "elapsed_s": (elapsed * 1e4).round() / 1e4,
        "mb_per_s": ((aggregate / writers as f64) * 10.0).round() / 10.0,
        "aggregate_mb_per_s": (aggregate * 10.0).round() / 10.0,
    }))
}

fn write_and_sync(file: &File, buffer: &[u8], position: u64) -> std::io::Result<()> {
    file.write_all_at(buffer, position)?;
    file.sync_data()
}

/// Removes the loop's file however the loop ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
