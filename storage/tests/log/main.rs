//! Tests of the partition log through its public API, on the real file system (temporary
//! directories) and on the simulated disk.

mod basics;
mod compact;
mod crash;
mod epochs;
mod faults;
mod follower;
mod high_watermark;
mod producers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vltava_messages::{BatchBuilder, Compression, LeaderEpoch, Offset, RecordBatchRef};
use vltava_storage::{Log, LogConfig, SimStorage, Storage};

/// A batch of `count` records whose values are `"{tag}-{i}"` padded to `value_bytes`,
/// timestamps `timestamp + i`.
pub fn batch(tag: &str, count: u32, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..count {
        let mut value = format!("{tag}-{i}").into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        builder.push(
            Some(tag.as_bytes()),
            Some(&value),
            &[],
            timestamp + i64::from(i),
        );
    }
    builder.build()
}

/// Small segments and a dense index, so that tests cross segment and index boundaries.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 512,
        retention_ms: None,
        ..LogConfig::default()
    }
}

pub fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/topic-0")
}

pub fn open(storage: &Arc<dyn Storage>, dir: &Path, config: LogConfig) -> Log {
    Log::open(Arc::clone(storage), dir, config, 1_000).expect("log opens")
}

pub fn sim() -> (SimStorage, Arc<dyn Storage>) {
    let sim = SimStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    (sim, storage)
}

/// Every record in the log from its start, as (offset, value) pairs, read in small steps so
/// that reads cross batches and segments.
pub fn read_all(log: &mut Log) -> Vec<(Offset, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1, None).expect("read succeeds");
        assert!(
            read.batch_count >= 1,
            "a read below the log end returns a batch"
        );
        for b in vltava_messages::batch::split_batches(&read.bytes) {
            let b: RecordBatchRef<'_> = b.expect("stored batches are intact");
            for r in b.records().expect("records decode") {
                if r.offset >= offset {
                    out.push((r.offset, r.value.unwrap_or_default()));
                }
            }
        }
        offset = read.next_offset;
    }
    out
}

pub const EPOCH: LeaderEpoch = LeaderEpoch(1);
