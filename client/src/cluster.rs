//! What the client knows of the cluster: the nodes and their addresses, each topic's
//! partitions with their leaders and leader epochs (from Metadata answers), and one
//! connection per node, opened on first use and replaced when it breaks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use vltava_messages::protocol::{MetadataRequest, MetadataResponse};
use vltava_messages::{LeaderEpoch, NodeId, PartitionId};

use crate::connection::Connection;
use crate::error::ClientError;

/// How long a metadata request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What a pooled connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Requests,
    Fetch,
}

/// A partition's leader as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLeader {
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
}

#[derive(Debug, Default)]
struct Known {
    nodes: HashMap<NodeId, String>,
    topics: HashMap<String, Vec<PartitionLeader>>,
}

/// A client's view of one cluster. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Cluster {
    bootstrap: Vec<String>,
    client_id: String,
    known: RwLock<Known>,
    connections: tokio::sync::Mutex<HashMap<String, Connection>>,
    /// The last bootstrap address that answered.
    preferred: Mutex<Option<String>>,
}

impl Cluster {
    /// Connects to the first reachable bootstrap address and loads the metadata.
    pub async fn connect(
        bootstrap: &[String],
        client_id: &str,
    ) -> Result<Arc<Cluster>, ClientError> {
        if bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument("no bootstrap address".into()));
        }
        let cluster = Arc::new(Cluster {
            bootstrap: bootstrap.to_vec(),
            client_id: client_id.to_owned(),
            known: RwLock::new(Known::default()),
            connections: tokio::sync::Mutex::new(HashMap::new()),
            preferred: Mutex::new(None),
        });
        cluster.refresh().await?;
        Ok(cluster)
    }

    /// The client id this cluster's connections introduce themselves with.
    #[must_use]
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A connection to `addr`, reusing a healthy one.
    pub async fn connection_to(&self, addr: &str) -> Result<Connection, ClientError> {
        self.pooled(addr, Purpose::Requests).await
    }

    /// A connection to `addr` used only for fetches: answers come in request order, so a
    /// long-poll fetch would otherwise hold up every answer behind it on a shared connection.
    pub async fn fetch_connection_to(&self, addr: &str) -> Result<Connection, ClientError> {
        self.pooled(addr, Purpose::Fetch).await
    }

    async fn pooled(&self, addr: &str, purpose: Purpose) -> Result<Connection, ClientError> {
        let key = format!("{purpose:?}/{addr}");
        let mut connections = self.connections.lock().await;
        if let Some(existing) = connections.get(&key)
            && !existing.is_broken()
        {
            return Ok(existing.clone());
        }
        let connection = Connection::connect(addr, &self.client_id).await?;
        connections.insert(key, connection.clone());
        Ok(connection)
    }

    /// A connection to any node: the last that answered, else each bootstrap address in turn.
    pub async fn any_connection(&self) -> Result<Connection, ClientError> {
        let preferred = self
            .preferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let known: Vec<String> = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .nodes
            .values()
            .cloned()
            .collect();
        let mut last_error = None;
        for addr in preferred.iter().chain(&self.bootstrap).chain(&known) {
            match self.connection_to(addr).await {
                Ok(connection) => {
                    *self
                        .preferred
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr.clone());
                    return Ok(connection);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::NoNodeAvailable(self.bootstrap.join(","))))
    }

    /// Reloads the metadata of every topic.
    pub async fn refresh(&self) -> Result<MetadataResponse, ClientError> {
        let connection = self.any_connection().await?;
        let metadata = connection
            .send(&MetadataRequest { topics: None }, METADATA_TIMEOUT)
            .await?;
        let mut known = self
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.nodes = metadata
            .nodes
            .iter()
            .map(|n| (n.node_id, format!("{}:{}", n.host, n.port)))
            .collect();
        known.topics = metadata
            .topics
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| {
                (
                    t.name.clone(),
                    t.partitions
                        .iter()
                        .map(|p| PartitionLeader {
                            leader: p.leader,
                            leader_epoch: p.leader_epoch,
                        })
                        .collect(),
                )
            })
            .collect();
        Ok(metadata)
    }

    /// The number of partitions of `topic`, refreshing once if it is not known.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(n) = self
            .known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .topics
            .get(topic)
            .map(Vec::len)
        {
            return Ok(n as u32);
        }
        self.refresh().await?;
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .topics
            .get(topic)
            .map(|p| p.len() as u32)
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_owned()))
    }

    /// The connection to a partition's leader and the leader epoch the client believes in.
    pub async fn leader(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<(Connection, LeaderEpoch), ClientError> {
        let found = {
            let known = self
                .known
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            known
                .topics
                .get(topic)
                .and_then(|p| p.get(partition.0 as usize))
                .copied()
                .map(|p| (p, p.leader.and_then(|l| known.nodes.get(&l).cloned())))
        };
        let (leader, addr) = match found {
            Some((leader, Some(addr))) => (leader, addr),
            _ => {
                self.refresh().await?;
                let known = self
                    .known
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let leader = known
                    .topics
                    .get(topic)
                    .ok_or_else(|| ClientError::UnknownTopic(topic.to_owned()))?
                    .get(partition.0 as usize)
                    .copied()
                    .ok_or_else(|| {
                        ClientError::InvalidArgument(format!(
                            "topic {topic} has no partition {}",
                            partition.0
                        ))
                    })?;
                let addr = leader
                    .leader
                    .and_then(|l| known.nodes.get(&l).cloned())
                    .ok_or_else(|| {
                        ClientError::NoNodeAvailable(format!("leader of {topic}-{}", partition.0))
                    })?;
                (leader, addr)
            }
        };
        Ok((self.connection_to(&addr).await?, leader.leader_epoch))
    }
}
