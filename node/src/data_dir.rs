//! The node's data directory: created if missing, locked so that two nodes never share it,
//! and stamped with the cluster id and node id, which are checked at every start.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The lock file; held (flock) for the life of the process.
pub const LOCK_FILE: &str = ".lock";
/// The identity file: `cluster_id` and `node_id`, as TOML.
pub const IDENTITY_FILE: &str = "node.toml";

/// An open, locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    /// `None` for a cluster member's new directory until it learns the id from a peer
    /// ([`DataDir::record_cluster_id`] writes it then).
    pub cluster_id: Option<String>,
    node_id: u32,
    _lock: File,
}

/// Whether a new data directory gets a cluster id of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewDirectory {
    /// A single node, or the quorum member that forms the quorum: it makes the cluster id.
    MakesClusterId,
    /// Another quorum member: it learns the cluster id from the member that made it.
    LearnsClusterId,
}

#[derive(serde::Deserialize)]
struct Identity {
    cluster_id: String,
    node_id: u32,
}

impl DataDir {
    /// Creates (if needed), locks and checks the directory. Errors are one clear line each.
    pub fn open(path: &Path, node_id: u32, new: NewDirectory) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("data directory {} is not writable", path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "data directory {} is in use by another vltava-node",
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e)
                    .with_context(|| format!("cannot lock data directory {}", path.display()));
            }
        }
        let identity_path = path.join(IDENTITY_FILE);
        let cluster_id = if identity_path.exists() {
            let text = std::fs::read_to_string(&identity_path)
                .with_context(|| format!("cannot read {}", identity_path.display()))?;
            let identity: Identity = toml::from_str(&text)
                .with_context(|| format!("damaged identity file {}", identity_path.display()))?;
            if identity.node_id != node_id {
                bail!(
                    "data directory {} belongs to node {}, not node {node_id} (pass --node-id {} or use another directory)",
                    path.display(),
                    identity.node_id,
                    identity.node_id
                );
            }
            Some(identity.cluster_id)
        } else if new == NewDirectory::MakesClusterId {
            let cluster_id = uuid::Uuid::new_v4().to_string();
            write_identity(&identity_path, &cluster_id, node_id)?;
            tracing::info!(%cluster_id, node_id, dir = %path.display(), "initialised a new data directory");
            Some(cluster_id)
        } else {
            tracing::info!(node_id, dir = %path.display(), "new data directory: the cluster id comes from the quorum");
            None
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            cluster_id,
            node_id,
            _lock: lock,
        })
    }

    /// Writes the cluster id learnt from a peer into the identity file, durably; blocks.
    /// Returns how to do the same later, for the peer links to call when they learn it.
    pub fn record_cluster_id(
        &self,
    ) -> impl Fn(&str) -> std::io::Result<()> + Send + Sync + 'static {
        let identity_path = self.path.join(IDENTITY_FILE);
        let node_id = self.node_id;
        move |cluster_id: &str| {
            write_identity(&identity_path, cluster_id, node_id).map_err(std::io::Error::other)?;
            tracing::info!(
                cluster_id,
                node_id,
                "recorded the cluster id in the data directory"
            );
            Ok(())
        }
    }
}

/// Writes the identity file durably (temporary file, fsync, rename, directory fsync), so a
/// crash never leaves a half-written one.
fn write_identity(path: &Path, cluster_id: &str, node_id: u32) -> anyhow::Result<()> {
    let temp = path.with_extension("toml.tmp");
    let mut file = File::create(&temp).with_context(|| {
        format!(
            "data directory {} is not writable",
            path.parent().unwrap_or(path).display()
        )
    })?;
    writeln!(
        file,
        "# vltava node identity: do not edit.\ncluster_id = \"{cluster_id}\"\nnode_id = {node_id}"
    )?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(())
}
