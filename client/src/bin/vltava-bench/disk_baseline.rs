//! The disk's own pace, for `produce --baseline-dir`: a loop of one write and one fdatasync per
//! batch into a new file, with no broker, no network and no copies but the kernel's. Its MB/s
//! is what a broker that acknowledges each batch only once it is on disk, one batch in flight,
//! could reach at most on that disk; `produce` runs it before and after its own run, in the
//! same conditions, and reports its own MB/s as a ratio of it (see docs/benchmarks.md).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

/// The most bytes one loop writes: enough to measure a steady pace (hundreds of syncs at
/// 1 MiB), little enough that two loops add seconds, not minutes, to a run.
pub const BASELINE_BYTES_MAX: u64 = 2 << 30;

/// One loop: `total_bytes` (rounded up to whole batches) written as `batch_bytes` writes, each
/// followed by `fdatasync`, into a new file in `dir` that is removed afterwards. Blocks.
///
/// # Errors
/// The file cannot be created, written or synced.
pub fn run(dir: &Path, batch_bytes: usize, total_bytes: u64) -> anyhow::Result<Value> {
    let batches = total_bytes
        .min(BASELINE_BYTES_MAX)
        .div_ceil(batch_bytes as u64)
        .max(1);
    let path = dir.join(format!("vltava-bench-baseline-{}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let guard = RemoveOnDrop(path);
    // Not all zeros, in case a file system or device treats zero blocks specially.
    let buffer: Vec<u8> = (0..batch_bytes).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let mut position = 0u64;
    for _ in 0..batches {
        write_and_sync(&file, &buffer, position)
            .with_context(|| format!("writing {}", guard.0.display()))?;
        position += batch_bytes as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "batch_bytes": batch_bytes,
        "batches": batches,
        "bytes": position,
        "elapsed_s": (elapsed * 1e4).round() / 1e4,
        "mb_per_s": ((position as f64 / elapsed / 1e6) * 10.0).round() / 10.0,
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
