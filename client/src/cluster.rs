//! What the client knows of the cluster: the nodes and their addresses, each topic's
//! partitions with their leaders and leader epochs (from Metadata answers), and one
//! connection per node, opened on first use and replaced when it breaks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use vltava_messages::protocol::{MetadataRequest, MetadataResponse};
use vltava_messages::{LeaderEpoch, NodeId, PartitionId};

use crate::connection::Connection;
use crate::error::ClientError;

/// How long a node may hold a metadata request (it answers from its published image at once);
/// with the connection's `REQUEST_TIMEOUT_SLACK` a node that never answers is given up after
/// 8 s. A refresh does not wait that long for the next node: see `METADATA_HEDGE_DELAY`.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a metadata refresh waits for one node before it also asks the next candidate,
/// taking whichever answers first. A live node answers from its published image within
/// milliseconds, even when busy; a paused one (SIGSTOP, a stall) accepts the connection in
/// its kernel and says nothing. Without this a paused preferred node cost every refresh up to
/// `METADATA_TIMEOUT` plus the slack (8 s) during a failover, the very time the client needs
/// the new leaders; with it a paused node costs half a second, and a live but slow node only
/// an extra request now and then.
pub const METADATA_HEDGE_DELAY: Duration = Duration::from_millis(500);

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

impl PartitionLeader {
    /// Whether requests sent to this leader should go again to `now`: the partition has a
    /// leader and it is another node, or the same node in another leader epoch (it lost and
    /// regained the partition, so what it held in flight may have been cut). A partition
    /// without a leader is not a move: sending again would only fail, so the answers are
    /// waited for meanwhile.
    #[must_use]
    pub fn moved_to(self, now: PartitionLeader) -> bool {
        now.leader.is_some() && now != self
    }
}

#[derive(Debug, Default)]
struct Known {
    nodes: HashMap<NodeId, String>,
    topics: HashMap<String, Vec<PartitionLeader>>,
    /// The `metadata_version` of the answer this was learned from (absent from old nodes).
    version: Option<u64>,
}

impl Known {
    /// Whether an answer of `version` may replace what is known: never an older one, which a
    /// node that lags behind the controller could give after a newer one was seen.
    fn accepts(&self, version: Option<u64>) -> bool {
        match (self.version, version) {
            (Some(known), Some(offered)) => offered >= known,
            _ => true,
        }
    }
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
        if let Some(existing) = self.connections.lock().await.get(&key)
            && !existing.is_broken()
        {
            return Ok(existing.clone());
        }
        // Connect without holding the pool: a paused node accepts TCP and never answers the
        // handshake, and holding the lock for its `CONNECT_TIMEOUT` would stall every other
        // node's requests (a hedged metadata request among them) behind it. Two callers may
        // then connect to the same node at once; the first one pooled is kept.
        let connection = Connection::connect(addr, &self.client_id).await?;
        let mut connections = self.connections.lock().await;
        if let Some(existing) = connections.get(&key)
            && !existing.is_broken()
        {
            return Ok(existing.clone());
        }
        connections.insert(key, connection.clone());
        Ok(connection)
    }

    /// The addresses to try for a request any node can answer, each once: the last that
    /// answered, then the bootstrap addresses, then every node the metadata named.
    pub(crate) fn candidates(&self) -> Vec<String> {
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
        let mut candidates: Vec<String> = Vec::new();
        for addr in preferred.iter().chain(&self.bootstrap).chain(&known) {
            if !candidates.contains(addr) {
                candidates.push(addr.clone());
            }
        }
        candidates
    }

    pub(crate) fn set_preferred(&self, addr: &str) {
        *self
            .preferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr.to_owned());
    }

    /// A connection to any node: the last that answered, else each bootstrap address in turn.
    pub async fn any_connection(&self) -> Result<Connection, ClientError> {
        let mut last_error = None;
        for addr in self.candidates() {
            match self.connection_to(&addr).await {
                Ok(connection) => {
                    self.set_preferred(&addr);
                    return Ok(connection);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::NoNodeAvailable(self.bootstrap.join(","))))
    }

    /// Reloads the metadata of every topic from the first node that answers: the candidates
    /// are asked in order (`candidates`), the next one as soon as a node fails (cannot be
    /// reached, refuses: a node cut off from the controller quorum answers a retriable error
    /// rather than metadata it cannot vouch for) or has not answered within
    /// `METADATA_HEDGE_DELAY`, and the first answer wins. An answer older than what is known
    /// (`metadata_version`) is returned but does not replace it.
    ///
    /// # Errors
    /// The last node's error when none answered.
    pub async fn refresh(&self) -> Result<MetadataResponse, ClientError> {
        let candidates = self.candidates();
        let answered = first_answer(
            candidates,
            METADATA_HEDGE_DELAY,
            |addr: String| async move {
                let connection = self.connection_to(&addr).await;
                let answer = match connection {
                    Ok(connection) => {
                        connection
                            .send(&MetadataRequest { topics: None }, METADATA_TIMEOUT)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = &answer {
                    tracing::debug!(%addr, error = %e, "metadata refresh failed here");
                }
                answer
            },
        )
        .await;
        match answered {
            Ok((addr, metadata)) => {
                self.set_preferred(&addr);
                self.learn(&metadata);
                Ok(metadata)
            }
            Err(last_error) => Err(last_error
                .unwrap_or_else(|| ClientError::NoNodeAvailable(self.bootstrap.join(",")))),
        }
    }

    /// The leader of a partition as last learnt, without asking the cluster.
    #[must_use]
    pub fn known_leader(&self, topic: &str, partition: PartitionId) -> Option<PartitionLeader> {
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .topics
            .get(topic)
            .and_then(|p| p.get(partition.0 as usize))
            .copied()
    }

    /// Takes in a metadata answer unless what is known is newer.
    fn learn(&self, metadata: &MetadataResponse) {
        let mut known = self
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !known.accepts(metadata.metadata_version) {
            tracing::debug!(
                known = ?known.version,
                offered = ?metadata.metadata_version,
                "older metadata ignored"
            );
            return;
        }
        known.version = metadata.metadata_version;
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
        let (connection, leader) = self.leader_route(topic, partition).await?;
        Ok((connection, leader.leader_epoch))
    }

    /// The connection to a partition's leader and that leader as the client knows it (node
    /// and leader epoch), refreshing the metadata once if no leader is known.
    pub async fn leader_route(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<(Connection, PartitionLeader), ClientError> {
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
        Ok((self.connection_to(&addr).await?, leader))
    }
}

/// Asks `candidates` in order and returns the first success with the candidate that gave it:
/// the next candidate is asked as soon as one fails, or when none of those asked has answered
/// within `hedge_delay`; the ones still out are dropped once one succeeds. Each `ask` bounds
/// its own wait, so this ends within the candidates' count times their bound at most.
///
/// # Errors
/// The last failure when every candidate failed (`None` when there were none).
async fn first_answer<A, T, E, F, Fut>(
    candidates: Vec<A>,
    hedge_delay: Duration,
    ask: F,
) -> Result<(A, T), Option<E>>
where
    A: Clone,
    F: Fn(A) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut next = candidates.into_iter();
    let mut asked: Vec<(A, Pin<Box<Fut>>)> = Vec::new();
    let mut last_error = None;
    let mut hedge = Box::pin(tokio::time::sleep(hedge_delay));
    // Each round asks one more candidate (the first, or the next after a failure or a hedge
    // delay) and waits for an event.
    loop {
        match next.next() {
            Some(candidate) => {
                let asking = Box::pin(ask(candidate.clone()));
                asked.push((candidate, asking));
                hedge
                    .as_mut()
                    .reset(tokio::time::Instant::now() + hedge_delay);
            }
            None if asked.is_empty() => return Err(last_error),
            None => {}
        }
        enum Event<T, E> {
            Answered(usize, Result<T, E>),
            Hedge,
        }
        let more = next.len() > 0;
        let event = std::future::poll_fn(|cx| {
            for (index, (_, asking)) in asked.iter_mut().enumerate() {
                if let Poll::Ready(answer) = asking.as_mut().poll(cx) {
                    return Poll::Ready(Event::Answered(index, answer));
                }
            }
            // With no candidate left to ask, the timer no longer matters.
            if more && hedge.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Hedge);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Answered(index, Ok(answer)) => return Ok((asked.swap_remove(index).0, answer)),
            Event::Answered(index, Err(e)) => {
                asked.swap_remove(index);
                last_error = Some(e);
            }
            Event::Hedge => {}
        }
    }
}

#[cfg(test)]
mod tests;
