//! Partition directories in the node's data directory: their names, the topic-id check a
//! partition makes before opening its log, their removal, and the sweep of directories the
//! metadata no longer gives this node.
//!
//! A directory is named `<topic>-<partition>` and holds `partition.metadata`
//! (`vltava_storage::partition_metadata`), the id of the topic it was made for. Names alone
//! cannot tell a topic from one deleted and created again under its name while this node was
//! down; the id can. Every function here blocks: callers run them on the blocking pool.
//!
//! The data directory also holds `__metadata/` (the metadata log or the Raft member),
//! `node.toml` and `.lock` (written by the node binary); the sweep only ever considers
//! directories whose name parses as a partition directory's and that look like one inside.

use std::io;
use std::path::{Path, PathBuf};

use vltava_storage::partition_metadata;
use vltava_storage::segment::LOG_SUFFIX;
use vltava_storage::{RealStorage, Storage, StorageError};

/// Suffix a partition directory gets when it is removed (its topic deleted, or its data found
/// to be another topic's), before its files are: a new directory of the same name never sees
/// the old files, even if the removal stops half-way.
pub const DELETED_SUFFIX: &str = ".deleted";

/// The directory of the metadata log, which no sweep ever touches.
pub const METADATA_DIR: &str = "__metadata";

/// The directory of a partition's log: `<data dir>/<topic>-<partition>`. Topic names hold
/// only `[a-zA-Z0-9._-]`, so the last `-` separates the partition.
#[must_use]
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// The topic and partition a directory name stands for, if it has the shape
/// [`partition_dir`] gives: a topic name of legal characters, `-`, a partition number.
#[must_use]
pub fn parse_partition_dir_name(name: &str) -> Option<(&str, u32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.starts_with('.') || !topic.chars().all(legal) {
        return None;
    }
    if partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A leading zero would make two names for one partition; `partition_dir` never writes one.
    if partition.len() > 1 && partition.starts_with('0') {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

/// What the topic-id check found in a partition's directory before its log opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicIdCheck {
    /// No directory, or an empty one: the log starts empty and the id file is written.
    New,
    /// The directory is this topic's: it opens as it is.
    Same,
    /// A directory without an id file (written before the file existed): taken as this
    /// topic's, and the file is written.
    Adopted,
    /// The directory held another topic's data (`old_topic_id`): it was removed, and the log
    /// starts empty.
    Replaced { old_topic_id: String },
}

impl TopicIdCheck {
    /// Whether the id file must be written once the log is open.
    #[must_use]
    pub fn writes_id(&self) -> bool {
        !matches!(self, TopicIdCheck::Same)
    }
}

/// Checks the topic id in `dir` against `topic_id` and removes the directory if it holds
/// another topic's data. A damaged id file is an error (`Corrupt`): the partition then does not
/// start, rather than serve data that may be another topic's or remove data that may be its
/// own; STORAGE.md says how an operator resolves it. Blocks.
pub fn check_topic_id(
    storage: &dyn Storage,
    dir: &Path,
    topic_id: &str,
) -> Result<TopicIdCheck, StorageError> {
    if !storage.exists(dir) {
        return Ok(TopicIdCheck::New);
    }
    match partition_metadata::read(storage, dir)? {
        Some(stored) if stored == topic_id => Ok(TopicIdCheck::Same),
        Some(stored) => {
            tracing::warn!(
                dir = %dir.display(),
                old_topic_id = %stored,
                topic_id,
                "partition directory holds the data of a deleted topic of the same name; removing it and starting an empty log"
            );
            remove_partition_dir(dir)?;
            Ok(TopicIdCheck::Replaced {
                old_topic_id: stored,
            })
        }
        None => {
            let names = storage
                .list_dir(dir)
                .map_err(|source| io_error(dir, source))?;
            if names.is_empty() {
                return Ok(TopicIdCheck::New);
            }
            tracing::info!(
                dir = %dir.display(),
                topic_id,
                "partition directory has no topic id (written by an older build); adopting it for the topic of its name"
            );
            Ok(TopicIdCheck::Adopted)
        }
    }
}

/// Writes `topic_id` into `dir` after [`check_topic_id`] asked for it and the log opened.
/// Blocks on two fsyncs.
pub fn record_topic_id(
    storage: &dyn Storage,
    dir: &Path,
    topic_id: &str,
) -> Result<(), StorageError> {
    partition_metadata::write(storage, dir, topic_id)
}

/// Moves `dir` aside (`<dir>.deleted`, replacing a leftover of an earlier removal) and removes
/// it. Once the rename returns, nothing opens the old files under the partition's name again;
/// a failure to remove the renamed directory is only logged, since the next sweep retries it.
/// Crash after the rename: the `.deleted` directory stays until the next sweep; crash before
/// the rename reached the disk: the directory comes back with its old id file and is
/// removed again at the next open. Blocks.
pub fn remove_partition_dir(dir: &Path) -> Result<(), StorageError> {
    let mut renamed = dir.as_os_str().to_owned();
    renamed.push(DELETED_SUFFIX);
    let renamed = PathBuf::from(renamed);
    if renamed.exists() {
        std::fs::remove_dir_all(&renamed).map_err(|source| io_error(&renamed, source))?;
    }
    std::fs::rename(dir, &renamed).map_err(|source| io_error(dir, source))?;
    if let Err(e) = std::fs::remove_dir_all(&renamed) {
        tracing::warn!(dir = %renamed.display(), error = %e, "could not remove a partition directory moved aside; the next sweep retries");
    }
    Ok(())
}

/// Whether the metadata gives this node a partition, and under which topic id.
pub trait Assignment {
    /// The id of `topic` if this node holds `partition` of it; `None` if the topic does not
    /// exist, has no such partition, or places it on other nodes only.
    fn assigned(&self, topic: &str, partition: u32) -> Option<&str>;
}

/// Removes, under `data_dir`, every partition directory `assignment` does not give this node,
/// every directory whose id file names another topic id than the assigned one, and every
/// `.deleted` leftover; one `info` line each. Directories whose name does not parse as a
/// partition's, that hold neither an id file nor a segment, `__metadata` and every file are
/// left alone. Returns how many directories were removed. Blocks.
pub fn sweep(data_dir: &Path, assignment: &dyn Assignment) -> usize {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %data_dir.display(), error = %e, "cannot list the data directory; nothing swept");
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(dir = %data_dir.display(), error = %e, "cannot read a data directory entry; skipped");
                continue;
            }
        };
        // `file_type` does not follow symbolic links: a link is never a partition directory.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == METADATA_DIR {
            continue;
        }
        let path = entry.path();
        if let Some(stem) = name.strip_suffix(DELETED_SUFFIX) {
            if parse_partition_dir_name(stem).is_some() {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        removed += 1;
                        tracing::info!(dir = %path.display(), "removed what an interrupted removal of a partition directory left");
                    }
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), error = %e, "could not remove a partition directory's leftover");
                    }
                }
            }
            continue;
        }
        let Some((topic, partition)) = parse_partition_dir_name(&name) else {
            continue;
        };
        if !looks_like_partition_dir(&path) {
            tracing::debug!(dir = %path.display(), "a directory named like a partition's holds no log; left alone");
            continue;
        }
        let reason = match assignment.assigned(topic, partition) {
            None => "the metadata does not give this node the partition",
            Some(topic_id) => match partition_metadata::read(&RealStorage, &path) {
                Ok(Some(stored)) if stored != topic_id => {
                    "its topic id is not the id of the topic of its name"
                }
                // Its own, an older build's, or damaged: opening the partition decides.
                _ => continue,
            },
        };
        match remove_partition_dir(&path) {
            Ok(()) => {
                removed += 1;
                tracing::info!(dir = %path.display(), topic, partition, reason, "removed a partition directory");
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove a partition directory the metadata does not give this node");
            }
        }
    }
    removed
}

/// Whether `dir` holds a partition log: an id file or a segment, or nothing at all (a
/// partition created but never written). A directory of other files with a partition-like
/// name (an operator's `backup-2`, say) is not one, and is never removed.
fn looks_like_partition_dir(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for entry in entries.flatten() {
        empty = false;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == partition_metadata::PARTITION_METADATA_FILE
            || vltava_storage::segment::parse_file_name(&name, LOG_SUFFIX).is_some()
        {
            return true;
        }
    }
    empty
}

fn io_error(path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
