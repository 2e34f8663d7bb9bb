//! Producer ids for idempotent producers, behind a trait: a local allocator on one node, the
//! controller's in a cluster. The local one reserves ids in blocks, durably, so an id is
//! never handed out twice, even across restarts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;
use vltava_messages::ProducerId;
use vltava_storage::{RealStorage, StorageError, checkpoint};

/// Ids reserved per durable write: one fsync per thousand producers.
pub const PRODUCER_ID_BLOCK: u64 = 1000;

/// Hands out producer ids.
pub trait ProducerIdAllocator: Send + Sync + 'static {
    fn allocate(&self) -> impl Future<Output = Result<ProducerId, StorageError>> + Send;
}

#[derive(Debug)]
struct Block {
    next: u64,
    end: u64,
}

/// The single-node allocator: a checkpoint file holds the end of the reserved block.
#[derive(Debug, Clone)]
pub struct LocalProducerIdAllocator {
    path: PathBuf,
    block: Arc<Mutex<Block>>,
}

impl LocalProducerIdAllocator {
    /// Reads the reservation file (blocks); the next id comes after the last reserved block.
    pub fn open(path: PathBuf) -> Result<LocalProducerIdAllocator, StorageError> {
        let reserved = checkpoint::read(&RealStorage, &path)?
            .and_then(|body| body.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(LocalProducerIdAllocator {
            path,
            block: Arc::new(Mutex::new(Block {
                next: reserved,
                end: reserved,
            })),
        })
    }
}

impl ProducerIdAllocator for LocalProducerIdAllocator {
    async fn allocate(&self) -> Result<ProducerId, StorageError> {
        let mut block = self.block.lock().await;
        if block.next == block.end {
            let end = block.end + PRODUCER_ID_BLOCK;
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || {
                checkpoint::write_atomic(&RealStorage, &path, &end.to_be_bytes())
            })
            .await
            .map_err(|e| StorageError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })??;
            block.end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok(ProducerId(id))
    }
}
