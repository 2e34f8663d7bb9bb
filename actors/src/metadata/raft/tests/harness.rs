//! What the in-process and the peer-link cluster tests share: bounded waits, the records they
//! commit, the failover report, and the member queries both harnesses answer through
//! [`Members`] (each keeps its members its own way).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;
use vltava_messages::metadata_records::{MetadataBatch, MetadataRecord};

use super::super::{MetadataRaft, RaftNodeId, propose};
use super::topic;
use crate::metadata::MetadataImage;

/// The longest any single wait may take before the test fails.
pub(super) const WAIT: Duration = Duration::from_secs(10);
/// How often a poll looks again: fine enough to time an election to a few milliseconds.
pub(super) const POLL: Duration = Duration::from_millis(2);

/// Polls `probe` until it finds something, at most `WAIT`.
pub(super) async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// `count` topic records, numbered from `from`.
pub(super) fn records(from: usize, count: usize) -> Vec<MetadataRecord> {
    (from..from + count)
        .map(|i| topic(&format!("topic-{i}"), 20))
        .collect()
}

/// Prints the failover times of a run (min, median, max), for the note and the issue.
pub(super) fn report(what: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    eprintln!(
        "{what}: {} rounds, min {:?}, median {:?}, max {:?}; all {:?}",
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        times
    );
}

/// A cluster of running members, however a harness holds them.
pub(super) trait Members {
    fn raft(&self, id: RaftNodeId) -> &MetadataRaft;
    fn image(&self, id: RaftNodeId) -> &watch::Receiver<Arc<MetadataImage>>;

    /// The member among `among` that is leader in its own view and in that of every other
    /// member of `among`.
    async fn leader(&self, among: &[RaftNodeId]) -> RaftNodeId {
        eventually("a leader all of them agree on", || {
            let views: Vec<_> = among
                .iter()
                .map(|id| self.raft(*id).metrics().borrow().clone())
                .collect();
            let leader = views.iter().find(|m| m.state == ServerState::Leader)?.id;
            views
                .iter()
                .all(|m| m.current_leader == Some(leader))
                .then_some(leader)
        })
        .await
    }

    /// The first member of `among` to become leader, and how long after `since` it did.
    async fn elected(&self, among: &[RaftNodeId], since: Instant) -> (RaftNodeId, Duration) {
        let leader = eventually("a new leader", || {
            among
                .iter()
                .find(|id| self.raft(**id).metrics().borrow().state == ServerState::Leader)
                .copied()
        })
        .await;
        (leader, since.elapsed())
    }

    /// Commits `records` through `leader`; returns the entry's log index, which is also the
    /// version of the image it makes.
    async fn commit(&self, leader: RaftNodeId, records: Vec<MetadataRecord>) -> u64 {
        let response = propose(self.raft(leader), MetadataBatch { records })
            .await
            .unwrap();
        assert_eq!(response.data.version, response.log_id.index);
        response.log_id.index
    }

    /// Waits until member `id` publishes the image of version `version`.
    async fn image_at(&self, id: RaftNodeId, version: u64) -> Arc<MetadataImage> {
        let mut watch = self.image(id).clone();
        let image = tokio::time::timeout(WAIT, watch.wait_for(|image| image.version >= version))
            .await
            .unwrap_or_else(|_| panic!("member {id} never reached version {version}"))
            .expect("the state machine lives as long as its member")
            .clone();
        assert_eq!(image.version, version, "member {id} went past {version}");
        image
    }
}
