//! The leader-epoch cache: for each leader epoch seen in the log, the offset of its first
//! batch. Followers use it to find where their log diverges from a new leader's (the end
//! offset of an epoch is the start offset of the next). It is kept in memory, derived from
//! batch headers, and checkpointed (atomically, fsynced) to `leader-epoch-checkpoint` whenever
//! it changes, which happens only on a leadership change or a truncation.

use std::path::{Path, PathBuf};

use vltava_messages::{LeaderEpoch, Offset};

use crate::checkpoint;
use crate::error::Result;
use crate::fs::Storage;

/// File name of the checkpoint.
pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Format version of the checkpoint body.
const CHECKPOINT_VERSION: u8 = 1;

/// One epoch and the offset of its first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: LeaderEpoch,
    pub start_offset: Offset,
}

/// Epoch entries, strictly increasing in both epoch and start offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// The entries, oldest first.
    #[must_use]
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest epoch, if any batch was ever appended.
    #[must_use]
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset`; returns whether the cache changed.
    /// A batch of an older epoch than the latest is a bug in the caller, who checks first.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> bool {
        match self.entries.last() {
            Some(last) if last.epoch == epoch => false,
            Some(last) => {
                assert!(epoch > last.epoch, "leader epoch went backwards");
                assert!(
                    start_offset >= last.start_offset,
                    "epoch start offset went backwards"
                );
                if start_offset == last.start_offset {
                    // The previous epoch never held a batch; the newer one replaces it.
                    self.entries.pop();
                }
                self.entries.push(EpochEntry {
                    epoch,
                    start_offset,
                });
                true
            }
            None => {
                self.entries.push(EpochEntry {
                    epoch,
                    start_offset,
                });
                true
            }
        }
    }

    /// For a follower: the end offset of `epoch`, i.e. the start of the next larger epoch, or
    /// `log_end_offset` if `epoch` is the latest. `None` if `epoch` predates every entry.
    /// Returns the largest epoch at or below the requested one with its end offset.
    #[must_use]
    pub fn end_offset_for(
        &self,
        epoch: LeaderEpoch,
        log_end_offset: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let index = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(index.checked_sub(1)?)?;
        let end = self
            .entries
            .get(index)
            .map_or(log_end_offset, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// The epoch of the batch holding `offset`: the last entry starting at or before it.
    #[must_use]
    pub fn epoch_for_offset(&self, offset: Offset) -> Option<LeaderEpoch> {
        let index = self.entries.partition_point(|e| e.start_offset <= offset);
        index.checked_sub(1).map(|i| self.entries[i].epoch)
    }

    /// Drops entries that start at or past `offset` (after a truncation of the log's end).
    /// Returns whether anything changed.
    pub fn truncate_from_end(&mut self, offset: Offset) -> bool {
        let keep = self.entries.partition_point(|e| e.start_offset < offset);
        let changed = keep != self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Drops entries wholly before `log_start_offset`, keeping the one in force there (moved
    /// up to start at it). Returns whether anything changed.
    pub fn truncate_from_start(&mut self, log_start_offset: Offset) -> bool {
        let in_force = self
            .entries
            .partition_point(|e| e.start_offset <= log_start_offset);
        if in_force == 0 {
            return false;
        }
        let drop = in_force - 1;
        let changed = drop > 0 || self.entries[drop].start_offset != log_start_offset;
        self.entries.drain(..drop);
        self.entries[0].start_offset = log_start_offset;
        changed
    }

    /// Writes the checkpoint atomically and durably (blocks on fsyncs).
    pub fn write_checkpoint(&self, storage: &dyn Storage, dir: &Path) -> Result<()> {
        let mut body = vec![CHECKPOINT_VERSION];
        body.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            body.extend_from_slice(&e.epoch.0.to_be_bytes());
            body.extend_from_slice(&e.start_offset.0.to_be_bytes());
        }
        checkpoint::write_atomic(storage, &checkpoint_path(dir), &body)
    }

    /// Reads the checkpoint; `None` if missing or damaged.
    pub fn read_checkpoint(storage: &dyn Storage, dir: &Path) -> Result<Option<LeaderEpochCache>> {
        let Some(body) = checkpoint::read(storage, &checkpoint_path(dir))? else {
            return Ok(None);
        };
        Ok(decode(&body))
    }
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(LEADER_EPOCH_CHECKPOINT)
}

fn decode(body: &[u8]) -> Option<LeaderEpochCache> {
    let (&version, rest) = body.split_first()?;
    if version != CHECKPOINT_VERSION || rest.len() < 4 {
        return None;
    }
    let count = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let entries = &rest[4..];
    if entries.len() != count.checked_mul(12)? {
        return None;
    }
    let mut cache = LeaderEpochCache::default();
    for chunk in entries.chunks_exact(12) {
        let epoch = LeaderEpoch(u32::from_be_bytes(chunk[..4].try_into().ok()?));
        let start_offset = Offset(u64::from_be_bytes(chunk[4..].try_into().ok()?));
        if let Some(last) = cache.entries.last()
            && (epoch <= last.epoch || start_offset <= last.start_offset)
        {
            return None;
        }
        cache.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }
    Some(cache)
}
