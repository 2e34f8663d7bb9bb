use vltava_messages::protocol::{NodeInfo, PartitionMetadata, TopicMetadata};

use super::*;

fn cluster() -> Cluster {
    Cluster {
        bootstrap: vec!["127.0.0.1:1".into()],
        client_id: "t".into(),
        known: RwLock::new(Known::default()),
        connections: tokio::sync::Mutex::new(HashMap::new()),
        preferred: Mutex::new(None),
    }
}

fn answer(version: Option<u64>, leader: u32, epoch: u32) -> MetadataResponse {
    MetadataResponse {
        cluster_id: "c".into(),
        controller_id: Some(NodeId(1)),
        nodes: vec![NodeInfo {
            node_id: NodeId(leader),
            host: "127.0.0.1".into(),
            port: 9000 + leader as u16,
        }],
        topics: vec![TopicMetadata {
            name: "t".into(),
            error: None,
            internal: false,
            partitions: vec![PartitionMetadata {
                partition: PartitionId(0),
                error: None,
                leader: Some(NodeId(leader)),
                leader_epoch: LeaderEpoch(epoch),
                replicas: vec![NodeId(leader)],
                in_sync_replicas: vec![NodeId(leader)],
            }],
        }],
        metadata_version: version,
    }
}

fn leader_of_t(cluster: &Cluster) -> PartitionLeader {
    cluster.known.read().unwrap().topics["t"][0]
}

/// Issue 12: a node that lags behind the controller may answer with older metadata after a
/// newer answer was seen; the client must not go back to the older routing.
#[test]
fn older_metadata_never_replaces_newer() {
    let cluster = cluster();
    cluster.learn(&answer(Some(10), 2, 5));
    cluster.learn(&answer(Some(7), 1, 4));
    assert_eq!(leader_of_t(&cluster).leader, Some(NodeId(2)));
    assert_eq!(leader_of_t(&cluster).leader_epoch, LeaderEpoch(5));
    // The same version again, or a newer one, is taken.
    cluster.learn(&answer(Some(10), 2, 5));
    cluster.learn(&answer(Some(11), 3, 6));
    assert_eq!(leader_of_t(&cluster).leader, Some(NodeId(3)));
    // An answer without a version (an older node) is taken as it comes.
    cluster.learn(&answer(None, 1, 7));
    assert_eq!(leader_of_t(&cluster).leader, Some(NodeId(1)));
}

/// Every address is tried once: the last that answered first, then the bootstrap list, then
/// the nodes the metadata named.
#[test]
fn candidates_are_each_address_once_preferred_first() {
    let cluster = cluster();
    cluster.learn(&answer(Some(1), 2, 0));
    cluster.set_preferred("127.0.0.1:9002");
    assert_eq!(
        cluster.candidates(),
        vec!["127.0.0.1:9002".to_owned(), "127.0.0.1:1".to_owned()]
    );
}

/// What `first_answer` does with a candidate in these tests: answer after a while, fail at
/// once, or never answer (a paused node).
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    AnswerAfter(Duration),
    FailAtOnce,
    Silent,
}

/// Runs `first_answer` over named candidates with the given behaviours and a 50 ms hedge
/// delay; returns the outcome, the names asked in order, and the time taken.
async fn hedge(
    candidates: &[(&'static str, Behaviour)],
) -> (
    Result<&'static str, Option<&'static str>>,
    Vec<&'static str>,
    Duration,
) {
    let asked = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    let outcome = first_answer(
        candidates.to_vec(),
        Duration::from_millis(50),
        |(name, behaviour)| {
            asked.lock().unwrap().push(name);
            async move {
                match behaviour {
                    Behaviour::AnswerAfter(after) => {
                        tokio::time::sleep(after).await;
                        Ok(name)
                    }
                    Behaviour::FailAtOnce => Err(name),
                    Behaviour::Silent => std::future::pending().await,
                }
            }
        },
    )
    .await;
    let outcome = outcome.map(|((name, _), answer)| {
        assert_eq!(
            name, answer,
            "the answer comes with the candidate that gave it"
        );
        answer
    });
    (outcome, asked.into_inner().unwrap(), started.elapsed())
}

/// A candidate that answers within the hedge delay is the only one asked.
#[tokio::test]
async fn a_prompt_first_candidate_is_the_only_one_asked() {
    let (outcome, asked, _) = hedge(&[
        ("a", Behaviour::AnswerAfter(Duration::ZERO)),
        ("b", Behaviour::AnswerAfter(Duration::ZERO)),
    ])
    .await;
    assert_eq!(outcome, Ok("a"));
    assert_eq!(asked, vec!["a"]);
}

/// A silent candidate (a paused node) costs one hedge delay: the next is asked then, and its
/// answer taken while the first is still out.
#[tokio::test]
async fn a_silent_candidate_costs_one_hedge_delay() {
    let (outcome, asked, took) = hedge(&[
        ("paused", Behaviour::Silent),
        ("live", Behaviour::AnswerAfter(Duration::ZERO)),
        ("spare", Behaviour::AnswerAfter(Duration::ZERO)),
    ])
    .await;
    assert_eq!(outcome, Ok("live"));
    assert_eq!(asked, vec!["paused", "live"]);
    assert!(
        took >= Duration::from_millis(50),
        "asked the next too soon: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// A failure moves on to the next candidate at once, without waiting for the hedge delay.
#[tokio::test]
async fn a_failure_asks_the_next_candidate_at_once() {
    let (outcome, asked, took) = hedge(&[
        ("refused", Behaviour::FailAtOnce),
        ("live", Behaviour::AnswerAfter(Duration::ZERO)),
    ])
    .await;
    assert_eq!(outcome, Ok("live"));
    assert_eq!(asked, vec!["refused", "live"]);
    assert!(
        took < Duration::from_millis(50),
        "waited for the hedge: {took:?}"
    );
}

/// A slow first answer still wins over a later candidate that is slower still; hedging only
/// adds candidates, it never drops one that is out.
#[tokio::test]
async fn the_first_answer_wins_whoever_gives_it() {
    let (outcome, asked, _) = hedge(&[
        ("slow", Behaviour::AnswerAfter(Duration::from_millis(80))),
        ("slower", Behaviour::AnswerAfter(Duration::from_secs(5))),
    ])
    .await;
    assert_eq!(outcome, Ok("slow"));
    assert_eq!(asked, vec!["slow", "slower"]);
}

/// When every candidate fails, the last failure is returned; with none, nothing is.
#[tokio::test]
async fn every_candidate_failing_returns_the_last_failure() {
    let (outcome, asked, _) =
        hedge(&[("x", Behaviour::FailAtOnce), ("y", Behaviour::FailAtOnce)]).await;
    assert_eq!(outcome, Err(Some("y")));
    assert_eq!(asked, vec!["x", "y"]);
    let (outcome, asked, _) = hedge(&[]).await;
    assert_eq!(outcome, Err(None));
    assert!(asked.is_empty());
}

fn led(node: Option<u32>, epoch: u32) -> PartitionLeader {
    PartitionLeader {
        leader: node.map(NodeId),
        leader_epoch: LeaderEpoch(epoch),
    }
}

/// Requests in flight go again when the partition has a new leader or a new leader epoch,
/// never while it has none, nor when nothing changed.
#[test]
fn requests_go_again_only_to_a_leader_that_moved() {
    let sent_to = led(Some(1), 4);
    assert!(sent_to.moved_to(led(Some(2), 5)), "another node leads");
    assert!(
        sent_to.moved_to(led(Some(1), 5)),
        "the same node in a new epoch"
    );
    assert!(!sent_to.moved_to(led(Some(1), 4)), "nothing changed");
    assert!(!sent_to.moved_to(led(None, 5)), "no leader to send to");
}
