//! Crash tests of the log store: a workload of appends, vote and committed saves, a
//! truncation and purges (one of which rewrites the file, one of which empties it) runs
//! on a simulated disk that dies at its N-th fsync, for every N the workload reaches. For each
//! crash, several disk images (each unsynced page lost, kept or zeroed; a random prefix of
//! unsynced directory operations applied) are reopened, and:
//! - the log is a prefix of what was appended, holding every entry whose append was
//!   acknowledged (its `LogFlushed` callback fired), and it reflects a truncation or purge
//!   either wholly or not at all if the crash hit it;
//! - the vote is the last acknowledged one or the one being saved: it never goes back;
//! - the reopened store takes the next append and reopens again cleanly.

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{Entry, LogId, Vote};
use vltava_storage::sim::SimStorage;

use super::super::{LogStore, RaftStoreError};
use super::*;

/// Disk images checked per crash point.
const IMAGES_PER_CRASH: u64 = 16;

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<Entry<TypeConfig>>),
    Vote(Vote<RaftNodeId>),
    Committed(LogId<RaftNodeId>),
    Truncate(LogId<RaftNodeId>),
    Purge(LogId<RaftNodeId>),
}

/// What the log holds, as far as the tests look: the purge point, the log ids past it, the
/// vote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    purged: Option<LogId<RaftNodeId>>,
    entries: Vec<LogId<RaftNodeId>>,
    vote: Option<Vote<RaftNodeId>>,
}

impl Model {
    fn after(&self, op: &Op) -> Model {
        let mut next = self.clone();
        match op {
            Op::Append(entries) => next.entries.extend(ids(entries)),
            Op::Vote(vote) => next.vote = Some(*vote),
            Op::Committed(_) => {}
            Op::Truncate(since) => next.entries.retain(|id| id.index < since.index),
            Op::Purge(upto) => {
                next.purged = Some(*upto);
                next.entries.retain(|id| id.index > upto.index);
            }
        }
        next
    }
}

fn workload() -> Vec<Op> {
    let mut term1: Vec<_> = vec![blank(0, 0), membership(1, 1, &[1, 2, 3])];
    // Entries of a few KiB, so that frames straddle 4 KiB pages and a crash tears them.
    term1.extend((2..6).map(|i| normal(1, i, vec![topic(&format!("a{i}"), 1500 * i as usize)])));
    let term2: Vec<_> = (6..10)
        .map(|i| normal(2, i, vec![topic(&format!("b{i}"), 700)]))
        .collect();
    let term3: Vec<_> = (8..14)
        .map(|i| normal(3, i, vec![topic(&format!("c{i}"), 900)]))
        .collect();
    vec![
        Op::Vote(Vote::new(1, 1)),
        Op::Vote(Vote::new_committed(1, 1)),
        Op::Append(term1[..2].to_vec()),
        Op::Append(term1[2..].to_vec()),
        Op::Committed(log_id(1, 1, 3)),
        Op::Vote(Vote::new_committed(2, 1)),
        Op::Append(term2),
        // A new leader in term 3 did not have entries 8 and 9 of term 2.
        Op::Vote(Vote::new_committed(3, 1)),
        Op::Truncate(log_id(2, 1, 8)),
        Op::Append(term3[..1].to_vec()),
        Op::Append(term3[1..].to_vec()),
        Op::Committed(log_id(3, 1, 12)),
        // Most of the file is dead after this one: it is rewritten.
        Op::Purge(log_id(3, 1, 10)),
        Op::Append(vec![blank(3, 14), blank(3, 15)]),
        // Past the end: the file is emptied.
        Op::Purge(log_id(4, 2, 20)),
        Op::Append(vec![blank(5, 21)]),
    ]
}

async fn run(store: &mut LogStore, op: &Op) -> Result<(), openraft::StorageError<RaftNodeId>> {
    match op {
        Op::Append(entries) => store.blocking_append(entries.clone()).await,
        Op::Vote(vote) => store.save_vote(vote).await,
        Op::Committed(id) => store.save_committed(Some(*id)).await,
        Op::Truncate(since) => store.truncate(*since).await,
        Op::Purge(upto) => store.purge(*upto).await,
    }
}

/// Runs the workload until the disk dies. Returns the state every acknowledged op built and
/// the op the crash interrupted, if any.
async fn run_until_crash(sim: &SimStorage) -> (Model, Option<Op>) {
    let mut acknowledged = Model::default();
    let mut store = match LogStore::open(Arc::new(sim.clone()), &raft_dir()) {
        Ok(store) => store,
        Err(_) => return (acknowledged, None),
    };
    store.set_rewrite_dead_bytes_min(1);
    for op in workload() {
        if run(&mut store, &op).await.is_err() {
            return (acknowledged, Some(op));
        }
        acknowledged = acknowledged.after(&op);
    }
    (acknowledged, None)
}

fn recovered(store: &LogStore) -> Model {
    let (purged, entries) = store.entries();
    Model {
        purged,
        entries: ids(&entries),
        vote: store.vote(),
    }
}

fn check(crash_at: u64, seed: u64, acked: &Model, in_flight: Option<&Op>, got: &Model) {
    let context = format!("crash at sync {crash_at}, image seed {seed}, in flight {in_flight:?}");
    let attempted = in_flight.map_or_else(|| acked.clone(), |op| acked.after(op));
    assert!(
        got.vote == acked.vote || got.vote == attempted.vote,
        "{context}: vote {:?}, acknowledged {:?}",
        got.vote,
        acked.vote
    );
    assert!(got.vote >= acked.vote, "{context}: the vote went back");
    match in_flight {
        Some(Op::Append(_)) => {
            assert_eq!(got.purged, acked.purged, "{context}");
            assert!(
                got.entries.starts_with(&acked.entries),
                "{context}: acknowledged entries lost: {:?} of {:?}",
                got.entries,
                acked.entries
            );
            assert!(
                attempted.entries.starts_with(&got.entries),
                "{context}: not a prefix of what was appended: {:?}",
                got.entries
            );
        }
        Some(Op::Truncate(_) | Op::Purge(_)) => {
            let (got_log, acked_log, attempted_log) = (
                (got.purged, &got.entries),
                (acked.purged, &acked.entries),
                (attempted.purged, &attempted.entries),
            );
            assert!(
                got_log == acked_log || got_log == attempted_log,
                "{context}: log {got:?}"
            );
        }
        _ => {
            assert_eq!(
                (got.purged, &got.entries),
                (acked.purged, &acked.entries),
                "{context}"
            );
        }
    }
}

#[tokio::test]
async fn a_crash_at_any_fsync_loses_nothing_acknowledged_and_never_moves_the_vote_back() {
    let clean = SimStorage::new();
    let (complete, interrupted) = run_until_crash(&clean).await;
    assert!(interrupted.is_none());
    let syncs = clean.sync_count();
    assert!(syncs > 20, "the workload reaches {syncs} fsyncs");

    let mut appends_interrupted = 0;
    let mut votes_interrupted = 0;
    for crash_at in 1..=syncs {
        let sim = SimStorage::new();
        sim.set_crash_at_sync(crash_at);
        let (acked, in_flight) = run_until_crash(&sim).await;
        assert!(sim.crashed(), "crash point {crash_at} was reached");
        appends_interrupted += usize::from(matches!(in_flight, Some(Op::Append(_))));
        votes_interrupted += usize::from(matches!(in_flight, Some(Op::Vote(_))));
        for seed in 0..IMAGES_PER_CRASH {
            let image = sim.crash_image(crash_at * 1000 + seed);
            let mut store = match LogStore::open(Arc::new(image.clone()), &raft_dir()) {
                Ok(store) => store,
                Err(e) => panic!("crash at sync {crash_at}, seed {seed}: reopen failed: {e}"),
            };
            let got = recovered(&store);
            check(crash_at, seed, &acked, in_flight.as_ref(), &got);
            // The log goes on: the next index is taken, and the result reopens as written.
            let next = got
                .entries
                .last()
                .or(got.purged.as_ref())
                .map_or(0, |id| id.index + 1);
            store
                .blocking_append([blank(9, next)])
                .await
                .unwrap_or_else(|e| panic!("crash at sync {crash_at}: append after reopen: {e}"));
            let again = LogStore::open(Arc::new(image), &raft_dir()).unwrap();
            assert_eq!(again.recovery().bytes_cut, 0);
            let mut expected = got.entries.clone();
            expected.push(log_id(9, 1, next));
            assert_eq!(ids(&again.entries().1), expected);
        }
    }
    eprintln!(
        "{syncs} crash points, {IMAGES_PER_CRASH} images each: {appends_interrupted} during \
         appends, {votes_interrupted} during vote saves"
    );
    assert!(
        appends_interrupted >= 7,
        "{appends_interrupted} appends interrupted"
    );
    assert!(
        votes_interrupted >= 8,
        "{votes_interrupted} vote saves interrupted"
    );
    assert_eq!(complete.entries.last(), Some(&log_id(5, 1, 21)));
}

/// A torn append followed by a crash in the middle of the next open's repair still reopens
/// to the same log.
#[tokio::test]
async fn a_crash_while_open_cuts_a_torn_tail_is_repaired_by_the_next_open() {
    let sim = SimStorage::new();
    let mut store = LogStore::open(Arc::new(sim.clone()), &raft_dir()).unwrap();
    store
        .blocking_append([blank(0, 0), blank(1, 1)])
        .await
        .unwrap();
    let mut bytes = sim.live_contents(&raft_dir().join("raft.log")).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3]);
    sim.overwrite(&raft_dir().join("raft.log"), bytes);
    // The cut's fsync is the next sync: the machine dies there.
    sim.set_crash_at_sync(sim.sync_count() + 1);
    let error = LogStore::open(Arc::new(sim.clone()), &raft_dir()).unwrap_err();
    assert!(matches!(error, RaftStoreError::Io { .. }), "{error:?}");
    for seed in 0..IMAGES_PER_CRASH {
        let store = LogStore::open(Arc::new(sim.crash_image(seed)), &raft_dir()).unwrap();
        assert_eq!(ids(&store.entries().1), [log_id(0, 1, 0), log_id(1, 1, 1)]);
    }
}
