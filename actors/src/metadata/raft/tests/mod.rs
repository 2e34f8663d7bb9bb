//! Tests of the Raft module, by concern: `codec` (bytes, versions, damage), `log_store` (the
//! log on a healthy and a damaged disk), `crash` (a crash at every fsync of a workload),
//! `state_machine` (apply, publish, snapshots), `cluster` (three in-process members over
//! `InProcessRouter`: election, commit, failover, catch-up by snapshot, restart), `peer_cluster`
//! (three members over real TCP peer links: election, commit, failover, restart; the peer
//! transport's errors and bounds).
//!
//! openraft ships a storage conformance suite (`openraft::testing::Suite`), but it appends
//! at indexes already present and leaves holes, which the storage contract forbids and this
//! append-only log asserts against; the properties it checks are tested here directly.

mod cluster;
mod codec;
mod crash;
mod harness;
mod log_store;
mod peer_cluster;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use vltava_messages::metadata_records::{MetadataBatch, MetadataRecord};

use super::{RaftNodeId, TypeConfig};

/// The Raft directory every test uses on its own simulated disk.
fn raft_dir() -> PathBuf {
    PathBuf::from("/data/raft")
}

fn log_id(term: u64, node: RaftNodeId, index: u64) -> LogId<RaftNodeId> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Blank,
    }
}

fn normal(term: u64, index: u64, records: Vec<MetadataRecord>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(MetadataBatch { records }),
    }
}

fn membership_of(voters: &[RaftNodeId]) -> Membership<RaftNodeId, BasicNode> {
    let nodes: BTreeMap<_, _> = voters
        .iter()
        .map(|id| (*id, BasicNode::new(format!("127.0.0.1:{}", 9420 + id))))
        .collect();
    Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], nodes)
}

fn membership(term: u64, index: u64, voters: &[RaftNodeId]) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(membership_of(voters)),
    }
}

/// A topic-creation record; `padding` bytes of config make entries of a chosen size.
fn topic(name: &str, padding: usize) -> MetadataRecord {
    MetadataRecord::TopicCreated {
        name: name.to_owned(),
        topic_id: format!("id-{name}"),
        partitions: 3,
        replication_factor: 3,
        configs: BTreeMap::from([("padding".to_owned(), "x".repeat(padding))]),
    }
}

fn ids(entries: &[Entry<TypeConfig>]) -> Vec<LogId<RaftNodeId>> {
    entries.iter().map(|e| e.log_id).collect()
}
