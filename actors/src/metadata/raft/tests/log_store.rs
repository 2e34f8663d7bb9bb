//! The log store on a simulated disk: what survives a reopen, truncation, purge and rewrite,
//! bounded reads, and what open does with torn, damaged and too-new data.

use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{Entry, Vote};
use vltava_messages::metadata_records::METADATA_RECORDS_VERSION;
use vltava_storage::checkpoint;
use vltava_storage::fs::Storage;
use vltava_storage::sim::SimStorage;

use super::super::codec::{self, ENTRY_BYTES_MAX, ENTRY_FORMAT_VERSION, LOG_MAGIC};
use super::super::log_store::{LOG_FILE, LOG_READ_BYTES_MAX, VOTE_FILE};
use super::super::{LogStore, RaftStoreError};
use super::*;

fn open(sim: &SimStorage) -> Result<LogStore, RaftStoreError> {
    LogStore::open(Arc::new(sim.clone()), &raft_dir())
}

fn log_path() -> std::path::PathBuf {
    raft_dir().join(LOG_FILE)
}

fn first_entries() -> Vec<Entry<TypeConfig>> {
    vec![
        blank(0, 0),
        membership(1, 1, &[1, 2, 3]),
        normal(1, 2, vec![topic("a", 10)]),
        normal(1, 3, vec![topic("b", 5000)]),
        blank(2, 4),
        normal(2, 5, vec![topic("c", 0), topic("d", 0)]),
    ]
}

/// Appends `frame(body)` to the log file as if a writer had put it there whole.
fn plant_frame(sim: &SimStorage, body: &[u8]) {
    let mut bytes = sim.live_contents(&log_path()).unwrap();
    codec::frame(body, &mut bytes);
    sim.overwrite(&log_path(), bytes);
}

#[tokio::test]
async fn entries_vote_and_committed_survive_reopen() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, None);
    store.blocking_append(first_entries()).await.unwrap();
    store.save_vote(&Vote::new_committed(2, 3)).await.unwrap();
    store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();

    let mut reader = store.get_log_reader().await;
    assert_eq!(
        ids(&reader.try_get_log_entries(2..5).await.unwrap()),
        ids(&first_entries()[2..5])
    );
    assert_eq!(
        ids(&reader.try_get_log_entries(4..).await.unwrap()),
        ids(&first_entries()[4..])
    );
    assert!(reader.try_get_log_entries(6..9).await.unwrap().is_empty());

    // Every acknowledgement was fsynced: a power loss right now keeps all of it.
    let mut reopened = LogStore::open(Arc::new(sim.crash_image(7)), &raft_dir()).unwrap();
    assert_eq!(reopened.recovery().bytes_cut, 0);
    let (purged, entries) = reopened.entries();
    assert_eq!(purged, None);
    assert_eq!(ids(&entries), ids(&first_entries()));
    assert_eq!(entries[3].payload, first_entries()[3].payload);
    assert_eq!(
        reopened.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 3))
    );
    assert_eq!(
        reopened.read_committed().await.unwrap(),
        Some(log_id(1, 1, 3))
    );
}

#[tokio::test]
async fn truncation_is_durable_and_appends_continue_after_it() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append(first_entries()).await.unwrap();
    store.truncate(log_id(1, 1, 3)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 2))
    );
    // The new leader's entries take the truncated indexes.
    store
        .blocking_append([blank(3, 3), normal(3, 4, vec![topic("e", 0)])])
        .await
        .unwrap();
    let reopened = LogStore::open(Arc::new(sim.crash_image(3)), &raft_dir()).unwrap();
    let (_, entries) = reopened.entries();
    assert_eq!(
        ids(&entries),
        [
            log_id(0, 1, 0),
            log_id(1, 1, 1),
            log_id(1, 1, 2),
            log_id(3, 1, 3),
            log_id(3, 1, 4)
        ]
    );
    // Truncating everything from index 0 leaves an empty log that appends start again.
    let mut store = open(&sim).unwrap();
    store.truncate(log_id(0, 1, 0)).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, None);
    assert_eq!(
        sim.live_contents(&log_path()).unwrap(),
        LOG_MAGIC,
        "nothing but the header is left"
    );
}

#[tokio::test]
async fn purge_skips_dead_entries_and_rewrites_the_file_once_they_dominate() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.set_rewrite_dead_bytes_min(1);
    let entries: Vec<_> = (0..20)
        .map(|i| normal(1, i, vec![topic(&format!("t{i}"), 300)]))
        .collect();
    store.blocking_append(entries.clone()).await.unwrap();
    let full = sim.live_contents(&log_path()).unwrap().len();

    // A few dead entries: the purge point moves, the file stays.
    store.purge(log_id(1, 1, 4)).await.unwrap();
    assert_eq!(sim.live_contents(&log_path()).unwrap().len(), full);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 19)));
    assert!(
        store.try_get_log_entries(0..5).await.unwrap().is_empty(),
        "purged entries are gone"
    );
    let reopened = open(&sim).unwrap();
    assert_eq!(reopened.recovery().dead_entries, 5);
    assert_eq!(ids(&reopened.entries().1), ids(&entries[5..]));

    // Most of the file dead: it is rewritten without them, and appends and reads go on.
    store.purge(log_id(1, 1, 14)).await.unwrap();
    let rewritten = sim.live_contents(&log_path()).unwrap();
    assert!(rewritten.len() < full / 2, "{} of {full}", rewritten.len());
    assert_eq!(rewritten[..LOG_MAGIC.len()], LOG_MAGIC);
    store.blocking_append([blank(2, 20)]).await.unwrap();
    let mut reader = store.get_log_reader().await;
    assert_eq!(
        ids(&reader.try_get_log_entries(15..).await.unwrap()),
        [ids(&entries[15..]), vec![log_id(2, 1, 20)]].concat()
    );
    let reopened = LogStore::open(Arc::new(sim.crash_image(1)), &raft_dir()).unwrap();
    assert_eq!(reopened.recovery().dead_entries, 0);
    assert_eq!(
        ids(&reopened.entries().1),
        [ids(&entries[15..]), vec![log_id(2, 1, 20)]].concat()
    );
    assert!(!sim.exists(&raft_dir().join("raft.log.rewrite")));
}

#[tokio::test]
async fn a_purge_past_the_end_empties_the_log_and_appends_follow_the_purge_point() {
    // What installing a snapshot does on a node far behind.
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append(first_entries()).await.unwrap();
    store.purge(log_id(4, 2, 100)).await.unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(4, 2, 100)));
    assert_eq!(state.last_log_id, Some(log_id(4, 2, 100)));
    assert_eq!(sim.live_contents(&log_path()).unwrap(), LOG_MAGIC);
    store.blocking_append([blank(5, 101)]).await.unwrap();
    let reopened = open(&sim).unwrap();
    assert_eq!(reopened.entries().0, Some(log_id(4, 2, 100)));
    assert_eq!(ids(&reopened.entries().1), [log_id(5, 1, 101)]);
}

#[tokio::test]
async fn a_torn_or_damaged_tail_is_cut_reported_and_appended_over() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append(first_entries()).await.unwrap();
    let intact = sim.live_contents(&log_path()).unwrap();

    // A torn frame: its header promises more than the file holds.
    let mut torn = intact.clone();
    codec::frame(&codec::encode_entry(&blank(2, 6)), &mut torn);
    torn.truncate(torn.len() - 3);
    sim.overwrite(&log_path(), torn.clone());
    let mut store = open(&sim).unwrap();
    assert_eq!(
        store.recovery().bytes_cut,
        (torn.len() - intact.len()) as u64
    );
    assert_eq!(
        store.recovery().cut_reason,
        Some("frame runs past the end of the file")
    );
    assert_eq!(ids(&store.entries().1), ids(&first_entries()));
    store.blocking_append([blank(2, 6)]).await.unwrap();
    assert_eq!(ids(&open(&sim).unwrap().entries().1).len(), 7);

    // Zeroed pages (an unsynced append after a power loss) read as a zero length.
    let mut zeros = intact.clone();
    zeros.extend_from_slice(&[0; 100]);
    sim.overwrite(&log_path(), zeros);
    let store = open(&sim).unwrap();
    assert_eq!(store.recovery().bytes_cut, 100);
    assert_eq!(
        store.recovery().cut_reason,
        Some("frame length out of bounds")
    );

    // A flipped bit in entry 3 fails its CRC: the log is cut there, entries 3.. are gone.
    let (_, entries) = store.entries();
    let mut damaged = intact.clone();
    let frame3 = LOG_MAGIC.len()
        + entries[..3]
            .iter()
            .map(|e| 8 + codec::encode_entry(e).len())
            .sum::<usize>();
    damaged[frame3 + 20] ^= 1;
    sim.overwrite(&log_path(), damaged);
    let store = open(&sim).unwrap();
    assert_eq!(store.recovery().cut_reason, Some("frame checksum mismatch"));
    assert_eq!(ids(&store.entries().1), ids(&first_entries()[..3]));
}

#[tokio::test]
async fn a_checksummed_entry_that_does_not_decode_is_refused_not_cut() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append(first_entries()).await.unwrap();
    let position = sim.live_contents(&log_path()).unwrap().len() as u64;

    let mut unknown_kind = codec::encode_entry(&blank(2, 6));
    *unknown_kind.last_mut().unwrap() = 9;
    plant_frame(&sim, &unknown_kind);
    match open(&sim) {
        Err(RaftStoreError::Corrupt {
            path,
            position: at,
            reason,
        }) => {
            assert_eq!(path, log_path());
            assert_eq!(at, position);
            assert_eq!(reason, "unknown entry kind");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was cut: the refused bytes are still there for an operator to look at.
    assert!(sim.live_contents(&log_path()).unwrap().len() as u64 > position);

    // An entry that does not follow its predecessor.
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append(first_entries()).await.unwrap();
    plant_frame(&sim, &codec::encode_entry(&blank(2, 9)));
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::Corrupt {
            reason: "entry index does not follow the entry before it",
            ..
        })
    ));
}

#[tokio::test]
async fn entries_from_a_newer_build_are_refused_with_a_clear_error() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append(first_entries()).await.unwrap();
    let intact = sim.live_contents(&log_path()).unwrap();

    let mut newer = codec::encode_entry(&blank(2, 6));
    newer[0] = ENTRY_FORMAT_VERSION + 1;
    plant_frame(&sim, &newer);
    let error = open(&sim).unwrap_err();
    assert!(
        matches!(
            &error,
            RaftStoreError::UnsupportedVersion { format: "log entry", found, .. }
                if *found == u16::from(ENTRY_FORMAT_VERSION) + 1
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("newer than this build reads"), "{message}");

    sim.overwrite(&log_path(), intact);
    let mut newer_batch = codec::encode_entry(&normal(2, 6, vec![topic("t", 0)]));
    let at = codec::ENTRY_FIXED_BYTES;
    newer_batch[at..at + 2].copy_from_slice(&(METADATA_RECORDS_VERSION + 1).to_be_bytes());
    plant_frame(&sim, &newer_batch);
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::UnsupportedVersion {
            format: "metadata batch",
            ..
        })
    ));
}

#[tokio::test]
async fn damaged_or_newer_state_files_are_refused() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.save_vote(&Vote::new(3, 1)).await.unwrap();
    let vote_path = raft_dir().join(VOTE_FILE);
    let mut vote = sim.live_contents(&vote_path).unwrap();
    vote[3] ^= 0xff;
    sim.overwrite(&vote_path, vote);
    // Taking a damaged vote as missing could vote twice in one term.
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::Corrupt {
            reason: "state file fails its checksum",
            ..
        })
    ));

    let mut newer = codec::encode_vote(&Vote::new(3, 1));
    newer[0] += 1;
    checkpoint::write_atomic(&sim, &vote_path, &newer).unwrap();
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::UnsupportedVersion {
            format: "vote file",
            ..
        })
    ));
}

#[tokio::test]
async fn a_file_that_is_not_a_log_is_refused_and_a_torn_creation_is_redone() {
    let sim = SimStorage::new();
    open(&sim).unwrap();
    sim.overwrite(&log_path(), b"not a raft log at all".to_vec());
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::Corrupt {
            reason: "not a Raft log file (bad magic)",
            ..
        })
    ));
    // A crash during creation leaves at most a zeroed or partial header.
    for torn in [vec![], vec![0; 8], LOG_MAGIC[..3].to_vec()] {
        sim.overwrite(&log_path(), torn);
        let mut store = open(&sim).unwrap();
        store.blocking_append([blank(0, 0)]).await.unwrap();
        assert_eq!(ids(&open(&sim).unwrap().entries().1), [log_id(0, 1, 0)]);
    }
}

#[tokio::test]
async fn replication_reads_are_bounded_in_bytes_and_never_empty() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    // About 600 KiB each: seven of them pass LOG_READ_BYTES_MAX.
    let big: Vec<_> = (0..10)
        .map(|i| normal(1, i, vec![topic(&format!("t{i}"), 600 << 10)]))
        .collect();
    store.blocking_append(big).await.unwrap();
    let mut reader = store.get_log_reader().await;
    let limited = reader.limited_get_log_entries(0, 10).await.unwrap();
    let bytes: u64 = limited
        .iter()
        .map(|e| 8 + codec::encode_entry(e).len() as u64)
        .sum();
    assert!(
        !limited.is_empty() && limited.len() < 10,
        "{}",
        limited.len()
    );
    assert!(bytes <= LOG_READ_BYTES_MAX, "{bytes}");
    assert_eq!(
        ids(&limited),
        ids(&reader
            .try_get_log_entries(0..limited.len() as u64)
            .await
            .unwrap())
    );
    // The rest comes in the next read; a full read returns the whole range.
    let next = reader
        .limited_get_log_entries(limited.len() as u64, 10)
        .await
        .unwrap();
    assert_eq!(next[0].log_id.index, limited.len() as u64);
    assert_eq!(reader.try_get_log_entries(0..10).await.unwrap().len(), 10);
}

#[tokio::test]
async fn an_entry_over_the_limit_is_refused_before_anything_is_written() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    let before = sim.live_contents(&log_path()).unwrap();
    let huge = normal(1, 0, vec![topic("huge", ENTRY_BYTES_MAX as usize)]);
    let error = store.append_entries(vec![huge]).await.unwrap_err();
    assert!(
        matches!(error, RaftStoreError::EntryTooLarge { index: 0, max, .. } if max == ENTRY_BYTES_MAX),
        "{error:?}"
    );
    assert_eq!(sim.live_contents(&log_path()).unwrap(), before);
    // Refused, not failed: the store still works.
    store.blocking_append([blank(1, 0)]).await.unwrap();
}

#[tokio::test]
async fn a_failed_fsync_poisons_the_store_until_it_is_reopened() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    store.blocking_append([blank(0, 0)]).await.unwrap();
    sim.set_fail_sync_at(sim.sync_count() + 1);
    assert!(store.blocking_append([blank(1, 1)]).await.is_err());
    // Never retried, never acknowledged: every later write is refused.
    let error = store.append_entries(vec![blank(1, 1)]).await.unwrap_err();
    assert!(
        matches!(error, RaftStoreError::Poisoned { .. }),
        "{error:?}"
    );
    assert!(store.save_vote(&Vote::new(2, 1)).await.is_err());
    // Reopening recovers: the unflushed entry may or may not be there; the flushed one is.
    let mut store = open(&sim).unwrap();
    let (_, entries) = store.entries();
    assert_eq!(entries[0].log_id, log_id(0, 1, 0));
    let next = entries.len() as u64;
    store.blocking_append([blank(2, next)]).await.unwrap();
}

#[tokio::test]
async fn a_full_disk_is_reported_as_such() {
    let sim = SimStorage::new();
    let mut store = open(&sim).unwrap();
    sim.set_capacity_bytes(Some(64));
    let error = store
        .append_entries(vec![normal(1, 0, vec![topic("t", 200)])])
        .await
        .unwrap_err();
    assert!(
        matches!(error, RaftStoreError::DiskFull { .. }),
        "{error:?}"
    );
}
