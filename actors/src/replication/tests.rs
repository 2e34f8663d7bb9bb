//! The fetcher's bookkeeping of what it may report as flushed, and the leader's fetch wakers.

use super::*;

fn log(log_end: u64, flushed: u64) -> LocalLog {
    LocalLog {
        log_start_offset: Offset(0),
        log_end_offset: Offset(log_end),
        flushed_offset: Offset(flushed),
        latest_epoch: Some(LeaderEpoch(1)),
    }
}

fn fetching(log_end: u64, flushed: u64, generation: u64) -> Fetching {
    Fetching::new(
        LeaderEpoch(1),
        7,
        FollowerLog {
            log: log(log_end, flushed),
            generation: LogGeneration(generation),
        },
    )
}

fn mark(generation: u64, flushed: u64) -> FlushMark {
    FlushMark {
        generation: LogGeneration(generation),
        flushed_offset: Offset(flushed),
    }
}

/// A flush may complete before the fetcher took the answer of the append it covers, so a
/// mark can lie past the log end the fetcher knows; it is reported only up to that log end
/// (the leader refuses a flushed offset past the fetch offset, and the offsets past it are
/// not the ones this report is about), and in full once the answer is taken.
#[test]
fn a_flush_mark_counts_only_up_to_the_known_log_end() {
    let mut f = fetching(100, 40, 1);
    assert_eq!(f.reported_flushed(), Offset(40));
    assert!(f.take_flush_mark(mark(1, 150)));
    assert_eq!(f.reported_flushed(), Offset(100));
    f.take_applied(FollowerLog {
        log: log(200, 60),
        generation: LogGeneration(1),
    });
    assert_eq!(
        f.reported_flushed(),
        Offset(150),
        "the mark outlives the answer"
    );
    // An older mark (flushes complete in order, but reports may cross) never lowers it.
    assert!(!f.take_flush_mark(mark(1, 120)));
    assert_eq!(f.reported_flushed(), Offset(150));
}

/// The safety rule of the pipeline: a flushed offset from another generation of the log (a
/// flush after a truncation, which may cover bytes another leader sent) is never combined
/// with a log end from this one, and a mark of the old generation is dropped when the
/// fetcher learns the log was cut. Without it the follower would report as fsynced, to the
/// leader whose bytes the log end counts, offsets that hold other bytes or none.
#[test]
fn a_flush_mark_of_another_log_generation_is_never_reported() {
    let mut f = fetching(100, 10, 1);
    assert!(
        !f.take_flush_mark(mark(2, 100)),
        "a newer generation's mark"
    );
    assert_eq!(f.reported_flushed(), Offset(10));
    assert!(f.take_flush_mark(mark(1, 80)));
    assert_eq!(f.reported_flushed(), Offset(80));
    // The log was cut to 50 and refilled: the answer comes in generation 2, fsynced to 20.
    f.take_applied(FollowerLog {
        log: log(90, 20),
        generation: LogGeneration(2),
    });
    assert_eq!(
        f.reported_flushed(),
        Offset(20),
        "generation 1's mark says nothing of generation 2's bytes"
    );
    assert!(
        !f.take_flush_mark(mark(1, 90)),
        "a late mark of the old generation"
    );
    assert_eq!(f.reported_flushed(), Offset(20));
}

/// A mark taken while a round was under way must survive the round's write-back: it may be
/// the last flush (nothing new to fetch), and the leader's high watermark waits for it.
#[test]
fn a_flush_mark_taken_during_a_round_survives_its_write_back() {
    let mut current = fetching(100, 40, 3);
    let mut round = current;
    assert!(current.take_flush_mark(mark(3, 100)));
    round.take_applied(FollowerLog {
        log: log(100, 40),
        generation: LogGeneration(3),
    });
    let written = round.merged_into(&current);
    assert_eq!(written.reported_flushed(), Offset(100));
    // But not across generations.
    let mut cut = round;
    cut.take_applied(FollowerLog {
        log: log(60, 30),
        generation: LogGeneration(4),
    });
    assert_eq!(cut.merged_into(&current).reported_flushed(), Offset(30));
}

/// A request that arrived before an older long poll began to wait still ends it: the older
/// one sees the newer arrival (requests of one connection are served concurrently, so the
/// newer one's wake may come while the older one is still reading its partitions).
#[test]
fn a_fetch_sees_a_newer_request_of_its_follower_even_before_it_waits() {
    let wakers = FetchWakers::default();
    let older = wakers.arrived(NodeId(2));
    assert!(!older.superseded());
    let other = wakers.arrived(NodeId(3));
    assert!(!older.superseded(), "another follower's request");
    let newer = wakers.arrived(NodeId(2));
    assert!(older.superseded());
    assert!(!newer.superseded());
    assert!(!other.superseded());
}
