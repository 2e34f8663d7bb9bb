//! The `MetadataLog` of a cluster: commits go through Raft from the member that leads it,
//! and the images are the ones the Raft state machine publishes on every member.

use std::sync::Arc;

use tokio::sync::watch;
use vltava_messages::metadata_records::{MetadataBatch, MetadataRecord};

use super::{MetadataRaft, RaftNodeId, propose, vltava_node_id};
use crate::metadata::{MetadataError, MetadataImage, MetadataLog};

/// The metadata log of a Raft member.
pub struct RaftMetadataLog {
    raft: MetadataRaft,
    /// What the state machine publishes.
    image: watch::Receiver<Arc<MetadataImage>>,
}

impl std::fmt::Debug for RaftMetadataLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftMetadataLog")
            .field("version", &self.image.borrow().version)
            .finish_non_exhaustive()
    }
}

impl RaftMetadataLog {
    #[must_use]
    pub fn new(raft: MetadataRaft, image: watch::Receiver<Arc<MetadataImage>>) -> RaftMetadataLog {
        RaftMetadataLog { raft, image }
    }

    fn not_leader(leader: Option<RaftNodeId>) -> MetadataError {
        MetadataError::NotLeader {
            leader: leader.and_then(vltava_node_id).map(|n| n.0),
        }
    }

    /// The published image once it includes log index `version`. The state machine publishes
    /// before Raft reports an entry applied, so this rarely waits.
    async fn image_at(&mut self, version: u64) -> Result<Arc<MetadataImage>, MetadataError> {
        self.image
            .wait_for(|image| image.version >= version)
            .await
            .map(|image| Arc::clone(&image))
            .map_err(|_| MetadataError::Commit("the Raft state machine stopped".into()))
    }
}

impl MetadataLog for RaftMetadataLog {
    async fn replay(&mut self) -> Result<Vec<MetadataRecord>, MetadataError> {
        Ok(Vec::new())
    }

    async fn append(
        &mut self,
        records: Vec<MetadataRecord>,
    ) -> Result<Option<Arc<MetadataImage>>, MetadataError> {
        let written = propose(&self.raft, MetadataBatch { records })
            .await
            .map_err(|e| {
                if e.is_not_leader() {
                    Self::not_leader(e.forward_to())
                } else {
                    MetadataError::Commit(e.to_string())
                }
            })?;
        Ok(Some(self.image_at(written.log_id.index).await?))
    }

    fn published(&self) -> Option<watch::Receiver<Arc<MetadataImage>>> {
        Some(self.image.clone())
    }

    async fn lead(&mut self, version: u64) -> Result<Option<Arc<MetadataImage>>, MetadataError> {
        let read = self.raft.ensure_linearizable().await.map_err(|e| {
            Self::not_leader(
                e.forward_to_leader::<openraft::BasicNode>()
                    .and_then(|f| f.leader_id),
            )
        })?;
        let image = self.image_at(read.map_or(0, |id| id.index)).await?;
        Ok((image.version != version).then_some(image))
    }
}
