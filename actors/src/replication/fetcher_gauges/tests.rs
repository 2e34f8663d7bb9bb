use std::sync::Arc;
use std::time::{Duration, Instant};

use vltava_messages::{NodeId, PartitionId};

use super::{
    FETCHER_ERROR_BYTES_MAX, FETCHER_PARTITIONS_LISTED_MAX, FetcherRegistration,
    ReplicaFetcherGauges,
};
use crate::directory::{ActorDirectory, ActorKind, PublishedState};

#[test]
fn registration_lists_the_fetcher_under_its_parent_until_dropped() {
    let directory = ActorDirectory::new();
    let registration = FetcherRegistration::register(&directory, "n2/node", NodeId(2), NodeId(1));
    let entry = directory.get("n2/replica-fetcher/1").expect("registered");
    assert_eq!(entry.kind, ActorKind::ReplicaFetcher);
    assert_eq!(entry.parent.as_deref(), Some("n2/node"));
    let Some(PublishedState::ReplicaFetcher(state)) = entry.state else {
        panic!("a fetcher publishes its gauges");
    };
    let gauges = state
        .downcast_ref::<ReplicaFetcherGauges>()
        .expect("fetcher gauges");
    assert_eq!(gauges.leader, NodeId(1));
    drop(registration);
    assert!(directory.get("n2/replica-fetcher/1").is_none());
}

/// A fetcher that ends after its successor towards the same leader registered must not take
/// the successor's entry with it.
#[test]
fn an_ending_fetcher_leaves_its_successors_entry() {
    let directory = ActorDirectory::new();
    let old = FetcherRegistration::register(&directory, "n2/node", NodeId(2), NodeId(1));
    let new = FetcherRegistration::register(&directory, "n2/node", NodeId(2), NodeId(1));
    drop(old);
    let entry = directory
        .get("n2/replica-fetcher/1")
        .expect("successor stays");
    let Some(PublishedState::ReplicaFetcher(state)) = entry.state else {
        panic!("a fetcher publishes its gauges");
    };
    assert_eq!(
        Arc::as_ptr(&state).cast::<()>(),
        Arc::as_ptr(&new.gauges).cast::<()>()
    );
    drop(new);
    assert!(directory.is_empty());
}

#[test]
fn partitions_are_counted_and_listed_up_to_the_bound() {
    let gauges = ReplicaFetcherGauges::new(NodeId(1), Instant::now());
    let keys: Vec<(String, PartitionId)> = (0..40)
        .map(|i| ("orders".to_owned(), PartitionId(i)))
        .collect();
    gauges.set_partitions(keys.len(), keys.iter().map(|(t, p)| (t.as_str(), *p)));
    assert_eq!(gauges.partition_count(), 40);
    let listed = gauges.partitions();
    assert_eq!(listed.len(), FETCHER_PARTITIONS_LISTED_MAX);
    assert_eq!(listed[0], "orders-0");
    assert_eq!(listed[15], "orders-15");
    // A change is seen, also when the count stays the same.
    let moved = [("orders", PartitionId(1)), ("pay", PartitionId(0))];
    gauges.set_partitions(2, moved.iter().copied());
    assert_eq!(gauges.partitions(), ["orders-1", "pay-0"]);
    let other = [("orders", PartitionId(1)), ("pay", PartitionId(7))];
    gauges.set_partitions(2, other.iter().copied());
    assert_eq!(gauges.partitions(), ["orders-1", "pay-7"]);
}

#[test]
fn the_rate_is_the_bytes_of_the_last_complete_window() {
    let start = Instant::now();
    let gauges = ReplicaFetcherGauges::new(NodeId(1), start);
    gauges.fetched(1000, start + Duration::from_millis(200));
    // The window is not complete yet: no rate.
    assert_eq!(gauges.bytes_per_second(), 0);
    gauges.fetched(1000, start + Duration::from_millis(2000));
    assert_eq!(gauges.bytes_per_second(), 1000);
    assert_eq!(gauges.bytes_fetched(), 2000);
    assert_eq!(gauges.fetch_requests(), 2);
    // An idle window brings the rate back to zero.
    gauges.fetched(0, start + Duration::from_millis(3000));
    assert_eq!(gauges.bytes_per_second(), 0);
}

#[test]
fn the_last_error_is_kept_cut_to_its_bound() {
    let gauges = ReplicaFetcherGauges::new(NodeId(1), Instant::now());
    assert!(gauges.last_error().is_none());
    let long = "é".repeat(FETCHER_ERROR_BYTES_MAX);
    gauges.failed(&long, Instant::now());
    let (text, at_ms) = gauges.last_error().expect("kept");
    assert!(text.len() <= FETCHER_ERROR_BYTES_MAX);
    assert!(text.len() >= FETCHER_ERROR_BYTES_MAX - 1);
    assert!(at_ms > 0);
    gauges.failed(&"connection refused", Instant::now());
    assert_eq!(gauges.last_error().expect("kept").0, "connection refused");
    assert_eq!(gauges.fetch_errors(), 2);
}
