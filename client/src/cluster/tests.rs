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
