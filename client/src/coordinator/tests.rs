use std::time::Duration;

use vltava_messages::protocol::{ErrorCode, ResponseError};

use super::*;

/// The backoff starts at `BACKOFF_INITIAL`, doubles, and never exceeds `BACKOFF_MAX`, however
/// many failures come in a row.
#[test]
fn backoff_doubles_from_the_initial_pause_up_to_the_cap() {
    let mut backoff = Backoff::new();
    let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
    assert_eq!(delays[0], BACKOFF_INITIAL);
    assert_eq!(delays[1], BACKOFF_INITIAL * 2);
    assert_eq!(delays[2], BACKOFF_INITIAL * 4);
    assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
    assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
}

/// After a success the next failure waits the initial pause again.
#[test]
fn backoff_starts_over_after_a_reset() {
    let mut backoff = Backoff::new();
    for _ in 0..10 {
        backoff.next_delay();
    }
    backoff.reset();
    assert_eq!(backoff.next_delay(), BACKOFF_INITIAL);
}

/// The pauses of one call to a coordinator add up to a bounded total: the figure quoted in
/// `COORDINATOR_ATTEMPTS_MAX`'s doc.
#[test]
fn coordinator_retries_wait_a_bounded_total() {
    let mut backoff = Backoff::new();
    let total: Duration = (1..COORDINATOR_ATTEMPTS_MAX)
        .map(|_| backoff.next_delay())
        .sum();
    assert!(total <= Duration::from_secs(12), "{total:?}");
}

/// Coordinator errors, overload, a node cut off from the controller and connection failures
/// are retried; fencing, unknown members and bad requests are not (the caller handles them).
#[test]
fn only_coordinator_and_connection_errors_are_retried() {
    let server = |code| ClientError::Server(ResponseError::new(code, "test"));
    for code in [
        ErrorCode::CoordinatorNotAvailable,
        ErrorCode::NotCoordinator,
        ErrorCode::CoordinatorLoadInProgress,
        ErrorCode::Overloaded,
        ErrorCode::ControllerNotAvailable,
    ] {
        assert!(wants_coordinator_retry(&server(code)), "{code:?}");
    }
    for code in [
        ErrorCode::FencedMemberEpoch,
        ErrorCode::UnknownMemberId,
        ErrorCode::StaleMemberEpoch,
        ErrorCode::UnsupportedAssignor,
        ErrorCode::GroupIdNotFound,
        ErrorCode::UnknownTopic,
    ] {
        assert!(!wants_coordinator_retry(&server(code)), "{code:?}");
    }
    assert!(wants_coordinator_retry(&ClientError::ConnectionLost(
        "gone".into()
    )));
    assert!(wants_coordinator_retry(&ClientError::Timeout(5)));
    assert!(!wants_coordinator_retry(&ClientError::InvalidArgument(
        "bad".into()
    )));
}
