//! The PartitionSupervisor: starts, stops and restarts this node's Partition actors.
//!
//! - Owns: the arguments each partition was started with and its recent restarts.
//! - Receives from: the MetadataApplier (start, stop), ractor supervision events.
//! - Publishes: each partition's handle (or that it is offline) in the `PartitionRegistry`
//!   that sessions route by.
//! - Restarts: a crashed partition is restarted with the same arguments (its log reopens and
//!   recovers), at most `RESTARTS_MAX` times per `RESTART_WINDOW`; past that it stays offline
//!   and sessions answer `PartitionOffline` (retriable) until an operator acts. An offline
//!   partition keeps its registry slot and directory entry until it is stopped (its topic
//!   deleted), which removes both.
//! - Shutdown: stops every partition and waits for each to close its log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use vltava_messages::PartitionId;

use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::partition::{Partition, PartitionArgs, PartitionHandle};

/// Restarts allowed per partition within `RESTART_WINDOW` before it is left offline: enough
/// to ride out a transient fault, few enough that a crash loop stops quickly.
pub const RESTARTS_MAX: usize = 5;
/// The window `RESTARTS_MAX` counts over.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long shutdown waits for one partition to close its log.
pub const PARTITION_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A partition's key: topic and index.
pub type PartitionKey = (Arc<str>, PartitionId);

/// What sessions find for a partition.
#[derive(Clone, Debug)]
pub enum PartitionSlot {
    Online(PartitionHandle),
    /// Crashed past its restart bound.
    Offline,
}

/// Partition handles by key, written by the supervisor, read by sessions.
#[derive(Clone, Debug, Default)]
pub struct PartitionRegistry {
    slots: Arc<RwLock<HashMap<PartitionKey, PartitionSlot>>>,
}

impl PartitionRegistry {
    #[must_use]
    pub fn get(&self, topic: &str, partition: PartitionId) -> Option<PartitionSlot> {
        let slots = self
            .slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.get(&(Arc::from(topic), partition)).cloned()
    }

    fn set(&self, key: PartitionKey, slot: Option<PartitionSlot>) {
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot {
            Some(slot) => slots.insert(key, slot),
            None => slots.remove(&key),
        };
    }

    /// The number of partitions registered, online or offline.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back the table's spare room once most of it is unused (after a large topic is
    /// deleted), so its size follows the partitions of now rather than the most ever held.
    fn shrink(&self) {
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shrink_after_removals(&mut slots);
    }

    /// Every online partition handle.
    #[must_use]
    pub fn online(&self) -> Vec<PartitionHandle> {
        let slots = self
            .slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots
            .values()
            .filter_map(|s| match s {
                PartitionSlot::Online(h) => Some(h.clone()),
                PartitionSlot::Offline => None,
            })
            .collect()
    }
}

/// A map is shrunk once its capacity exceeds its length by this factor: rarely enough that
/// deleting partitions one by one does not rehash each time, often enough that the room a
/// deleted 4,096-partition topic took (a few MiB in the supervisor's table) is returned.
const SHRINK_FACTOR: usize = 4;
/// Maps below this capacity are left alone: the room is a few KiB at most.
const SHRINK_CAPACITY_MIN: usize = 64;

/// Shrinks `map` when most of its capacity is unused (see `SHRINK_FACTOR`).
fn shrink_after_removals<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() >= SHRINK_CAPACITY_MIN && map.capacity() > SHRINK_FACTOR * map.len() {
        map.shrink_to_fit();
    }
}

#[derive(Debug)]
pub enum PartitionSupervisorMsg {
    Start {
        args: PartitionArgs,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Stop {
        key: PartitionKey,
        reply: oneshot::Sender<()>,
    },
}

/// The only way to reach the PartitionSupervisor.
#[derive(Clone, Debug)]
pub struct PartitionSupervisorHandle {
    actor: ActorRef<PartitionSupervisorMsg>,
    stats: Arc<ActorStats>,
}

impl PartitionSupervisorHandle {
    /// Starts a partition (opening and recovering its log) and waits until it serves.
    pub async fn start_partition(&self, args: PartitionArgs) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        self.actor
            .send_message(PartitionSupervisorMsg::Start { args, reply })
            .map_err(|e| e.to_string())?;
        answer.await.map_err(|e| e.to_string())?
    }

    /// Stops a partition and waits until its log is closed.
    pub async fn stop_partition(&self, key: PartitionKey) {
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(PartitionSupervisorMsg::Stop { key, reply })
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    #[must_use]
    pub fn actor(&self) -> &ActorRef<PartitionSupervisorMsg> {
        &self.actor
    }
}

#[derive(Debug)]
struct Child {
    key: PartitionKey,
    args: PartitionArgs,
    handle: PartitionHandle,
    restarts: VecDeque<Instant>,
}

#[derive(Debug)]
pub struct PartitionSupervisor;

#[derive(Debug)]
pub struct PartitionSupervisorState {
    id: String,
    directory: ActorDirectory,
    registry: PartitionRegistry,
    stats: Arc<ActorStats>,
    children: HashMap<ActorId, Child>,
    /// Partitions left offline (their start failed, or they crashed past their bound), by key,
    /// with their actor id: their directory entry stays (status `failed`) until they are
    /// stopped, which removes it.
    offline: HashMap<PartitionKey, String>,
}

impl PartitionSupervisor {
    /// Starts the supervisor under `parent`.
    pub async fn start(
        id: String,
        parent: &str,
        directory: ActorDirectory,
        registry: PartitionRegistry,
        supervisor: Option<ractor::ActorCell>,
    ) -> Result<PartitionSupervisorHandle, ractor::SpawnErr> {
        let stats = directory.register(&id, ActorKind::PartitionSupervisor, Some(parent));
        let state = (id.clone(), directory, registry, Arc::clone(&stats));
        let (actor, _) = match supervisor {
            Some(cell) => Actor::spawn_linked(Some(id), PartitionSupervisor, state, cell).await?,
            None => Actor::spawn(Some(id), PartitionSupervisor, state).await?,
        };
        Ok(PartitionSupervisorHandle { actor, stats })
    }
}

impl Actor for PartitionSupervisor {
    type Msg = PartitionSupervisorMsg;
    type State = PartitionSupervisorState;
    type Arguments = (String, ActorDirectory, PartitionRegistry, Arc<ActorStats>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (id, directory, registry, stats): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PartitionSupervisorState {
            id,
            directory,
            registry,
            stats,
            children: HashMap::new(),
            offline: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let started = std::time::Instant::now();
        let kind = match &msg {
            PartitionSupervisorMsg::Start { .. } => "Start",
            PartitionSupervisorMsg::Stop { .. } => "Stop",
        };
        match msg {
            PartitionSupervisorMsg::Start { args, reply } => {
                let key = (Arc::clone(&args.topic), args.partition);
                state.offline.remove(&key);
                let outcome = match Partition::start(args.clone(), myself.get_cell()).await {
                    Ok(handle) => {
                        state
                            .registry
                            .set(key.clone(), Some(PartitionSlot::Online(handle.clone())));
                        state.children.insert(
                            handle.actor().get_id(),
                            Child {
                                key,
                                args,
                                handle,
                                restarts: VecDeque::new(),
                            },
                        );
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(partition = %args.id, error = %e, "partition failed to start");
                        state
                            .directory
                            .record_failure(&args.id, &e.to_string(), false);
                        state
                            .registry
                            .set(key.clone(), Some(PartitionSlot::Offline));
                        state.offline.insert(key, args.id.clone());
                        Err(e.to_string())
                    }
                };
                let _ = reply.send(outcome);
            }
            PartitionSupervisorMsg::Stop { key, reply } => {
                let found = state
                    .children
                    .iter()
                    .find(|(_, c)| c.key == key)
                    .map(|(id, _)| *id);
                if let Some(actor_id) = found {
                    let child = state.children.remove(&actor_id).expect("found above");
                    state.registry.set(key, None);
                    let _ = child
                        .handle
                        .actor()
                        .stop_and_wait(None, Some(PARTITION_STOP_TIMEOUT))
                        .await;
                    state.directory.unregister(&child.args.id);
                } else {
                    state.registry.set(key.clone(), None);
                    if let Some(id) = state.offline.remove(&key) {
                        state.directory.unregister(&id);
                    }
                }
                shrink_after_removals(&mut state.children);
                shrink_after_removals(&mut state.offline);
                state.registry.shrink();
                let _ = reply.send(());
            }
        }
        state.stats.time(kind, started.elapsed());
        state.stats.handled();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The default would stop this supervisor when any child exits; a partition's failure
        // is handled here instead.
        let SupervisionEvent::ActorFailed(cell, error) = event else {
            return Ok(());
        };
        let Some(mut child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            child.restarts.pop_front();
        }
        let restarting = child.restarts.len() < RESTARTS_MAX;
        tracing::error!(partition = %child.args.id, %error, restarting, "partition actor failed");
        state
            .directory
            .record_failure(&child.args.id, &error.to_string(), restarting);
        if !restarting {
            state
                .registry
                .set(child.key.clone(), Some(PartitionSlot::Offline));
            state.offline.insert(child.key, child.args.id);
            return Ok(());
        }
        child.restarts.push_back(now);
        match Partition::start(child.args.clone(), myself.get_cell()).await {
            Ok(handle) => {
                state.registry.set(
                    child.key.clone(),
                    Some(PartitionSlot::Online(handle.clone())),
                );
                child.handle = handle;
                state.children.insert(child.handle.actor().get_id(), child);
            }
            Err(e) => {
                tracing::error!(partition = %child.args.id, error = %e, "partition restart failed; left offline");
                state
                    .directory
                    .record_failure(&child.args.id, &e.to_string(), false);
                state
                    .registry
                    .set(child.key.clone(), Some(PartitionSlot::Offline));
                state.offline.insert(child.key, child.args.id);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, child) in state.children.drain() {
            state.registry.set(child.key.clone(), None);
            let _ = child
                .handle
                .actor()
                .stop_and_wait(None, Some(PARTITION_STOP_TIMEOUT))
                .await;
            state.directory.unregister(&child.args.id);
        }
        for (key, id) in state.offline.drain() {
            state.registry.set(key, None);
            state.directory.unregister(&id);
        }
        state.directory.unregister(&state.id);
        Ok(())
    }
}
