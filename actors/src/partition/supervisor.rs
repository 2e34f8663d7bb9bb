//! The PartitionSupervisor: starts, stops and restarts this node's Partition actors.
//!
//! - Owns: the arguments each partition was started with and its recent restarts.
//! - Receives from: the MetadataApplier (start, stop: each a batch of partitions, worked on
//!   `PARTITION_STARTS_CONCURRENT` at once), ractor supervision events.
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
use tokio::task::JoinSet;
use vltava_messages::PartitionId;

use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::partition::replica_state::Assignment;
use crate::partition::{Partition, PartitionArgs, PartitionHandle};

/// Restarts allowed per partition within `RESTART_WINDOW` before it is left offline: enough
/// to ride out a transient fault, few enough that a crash loop stops quickly.
pub const RESTARTS_MAX: usize = 5;
/// The window `RESTARTS_MAX` counts over.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long shutdown waits for one partition to close its log.
pub const PARTITION_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Partitions started (or stopped) at once. Opening a new log is a few file-system calls and
/// starting its thread and actor, mostly CPU; reopening one after a crash reads its tail; a
/// stop closes a log with a few fsyncs. Sixteen keeps both of a small machine's cores and a
/// disk's queue busy, where one at a time left a core idle and waited out each fsync alone,
/// while a node starting thousands of partitions runs at most this many blocking-pool tasks
/// for them.
pub const PARTITION_STARTS_CONCURRENT: usize = 16;

/// Why a partition did not start.
#[derive(Debug, thiserror::Error)]
pub enum PartitionStartError {
    #[error("partition {id} did not start: {reason}")]
    Failed { id: String, reason: String },
    #[error("the partition supervisor is not running")]
    SupervisorGone,
}

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

/// Each partition's outcome of a start.
pub type StartOutcomes = Vec<(PartitionKey, Result<(), PartitionStartError>)>;

#[derive(Debug)]
pub enum PartitionSupervisorMsg {
    /// Start partitions, up to `PARTITION_STARTS_CONCURRENT` at once; the reply lists every
    /// one's outcome once all are done.
    Start {
        args: Vec<PartitionArgs>,
        reply: oneshot::Sender<StartOutcomes>,
    },
    /// Stop partitions (online or offline), up to `PARTITION_STARTS_CONCURRENT` at once.
    /// With `discard`, their logs are dropped without a clean close: their topic was deleted.
    /// New leaderships for running partitions: each is told in place, and a later restart
    /// of it starts with the new one.
    Assign {
        assignments: Vec<(PartitionKey, Assignment)>,
        reply: oneshot::Sender<()>,
    },
    Stop {
        keys: Vec<PartitionKey>,
        discard: bool,
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
    pub async fn start_partition(&self, args: PartitionArgs) -> Result<(), PartitionStartError> {
        self.start_partitions(vec![args])
            .await
            .pop()
            .map_or(Err(PartitionStartError::SupervisorGone), |(_, outcome)| {
                outcome
            })
    }

    /// Starts partitions, several at once, and waits until each serves or has failed.
    pub async fn start_partitions(&self, args: Vec<PartitionArgs>) -> StartOutcomes {
        let keys: Vec<PartitionKey> = args
            .iter()
            .map(|a| (Arc::clone(&a.topic), a.partition))
            .collect();
        let gone = || {
            keys.iter()
                .map(|k| (k.clone(), Err(PartitionStartError::SupervisorGone)))
                .collect()
        };
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(PartitionSupervisorMsg::Start { args, reply })
            .is_err()
        {
            self.stats.dequeued();
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }

    /// Tells running partitions their new leadership (in place; a later restart of one
    /// starts with it), and returns once each was told.
    pub async fn assign(&self, assignments: Vec<(PartitionKey, Assignment)>) {
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(PartitionSupervisorMsg::Assign { assignments, reply })
            .is_ok()
        {
            let _ = answer.await;
        } else {
            self.stats.dequeued();
        }
    }

    /// Stops a partition and waits until its log is closed.
    pub async fn stop_partition(&self, key: PartitionKey) {
        self.stop_partitions(vec![key], false).await;
    }

    /// Stops partitions, several at once, and waits until each is stopped. With `discard`
    /// their logs are not closed cleanly: their topic was deleted and their files go next.
    pub async fn stop_partitions(&self, keys: Vec<PartitionKey>, discard: bool) {
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(PartitionSupervisorMsg::Stop {
                keys,
                discard,
                reply,
            })
            .is_ok()
        {
            let _ = answer.await;
        } else {
            self.stats.dequeued();
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
    /// The actor of each running child by partition, so a stop finds it without a scan
    /// (deleting a 4,096-partition topic scanned the children 4,096 times).
    by_key: HashMap<PartitionKey, ActorId>,
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
            by_key: HashMap::new(),
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
            PartitionSupervisorMsg::Assign { .. } => "Assign",
        };
        match msg {
            PartitionSupervisorMsg::Start { args, reply } => {
                let outcomes = state.start(args, &myself).await;
                let _ = reply.send(outcomes);
            }
            PartitionSupervisorMsg::Stop {
                keys,
                discard,
                reply,
            } => {
                state.stop(keys, discard).await;
                let _ = reply.send(());
            }
            PartitionSupervisorMsg::Assign { assignments, reply } => {
                for (key, assignment) in assignments {
                    let Some(child) = state
                        .by_key
                        .get(&key)
                        .and_then(|id| state.children.get_mut(id))
                    else {
                        // Offline or stopped: a start or restart takes its assignment from
                        // the applier's next start.
                        continue;
                    };
                    child.args.assignment = assignment.clone();
                    child.handle.assign(assignment);
                }
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
        state.by_key.remove(&child.key);
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
                state
                    .by_key
                    .insert(child.key.clone(), child.handle.actor().get_id());
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
        let keys: Vec<PartitionKey> = state
            .by_key
            .keys()
            .chain(state.offline.keys())
            .cloned()
            .collect();
        state.stop(keys, false).await;
        state.directory.unregister(&state.id);
        Ok(())
    }
}

impl PartitionSupervisorState {
    /// Starts partitions, at most `PARTITION_STARTS_CONCURRENT` at once, and records each.
    async fn start(
        &mut self,
        args: Vec<PartitionArgs>,
        myself: &ActorRef<PartitionSupervisorMsg>,
    ) -> StartOutcomes {
        let mut outcomes = Vec::with_capacity(args.len());
        let mut waiting = args.into_iter();
        let mut starting = JoinSet::new();
        let mut by_task: HashMap<tokio::task::Id, PartitionArgs> = HashMap::new();
        loop {
            while starting.len() < PARTITION_STARTS_CONCURRENT {
                let Some(args) = waiting.next() else { break };
                self.offline
                    .remove(&(Arc::clone(&args.topic), args.partition));
                let cell = myself.get_cell();
                let task = starting.spawn(Partition::start(args.clone(), cell));
                by_task.insert(task.id(), args);
            }
            let Some(joined) = starting.join_next_with_id().await else {
                break;
            };
            let (id, started) = match joined {
                Ok((id, started)) => (id, started.map_err(|e| e.to_string())),
                Err(e) => (e.id(), Err(format!("start task failed: {e}"))),
            };
            let args = by_task
                .remove(&id)
                .expect("every task's arguments are kept");
            let key = (Arc::clone(&args.topic), args.partition);
            let outcome = match started {
                Ok(handle) => {
                    self.registry
                        .set(key.clone(), Some(PartitionSlot::Online(handle.clone())));
                    self.by_key.insert(key.clone(), handle.actor().get_id());
                    self.children.insert(
                        handle.actor().get_id(),
                        Child {
                            key: key.clone(),
                            args,
                            handle,
                            restarts: VecDeque::new(),
                        },
                    );
                    Ok(())
                }
                Err(reason) => {
                    tracing::error!(partition = %args.id, error = %reason, "partition failed to start");
                    self.directory.record_failure(&args.id, &reason, false);
                    self.registry.set(key.clone(), Some(PartitionSlot::Offline));
                    self.offline.insert(key.clone(), args.id.clone());
                    Err(PartitionStartError::Failed {
                        id: args.id,
                        reason,
                    })
                }
            };
            outcomes.push((key, outcome));
        }
        outcomes
    }

    /// Stops partitions, at most `PARTITION_STARTS_CONCURRENT` at once, and forgets them.
    async fn stop(&mut self, keys: Vec<PartitionKey>, discard: bool) {
        let mut stopping = JoinSet::new();
        for key in keys {
            self.registry.set(key.clone(), None);
            if let Some(id) = self.offline.remove(&key) {
                self.directory.unregister(&id);
            }
            let Some(actor_id) = self.by_key.remove(&key) else {
                continue;
            };
            let child = self
                .children
                .remove(&actor_id)
                .expect("by_key names running children");
            if discard {
                child.handle.discard();
            }
            if stopping.len() >= PARTITION_STARTS_CONCURRENT {
                let _ = stopping.join_next().await;
            }
            let directory = self.directory.clone();
            stopping.spawn(async move {
                // A partition that does not stop in time is left to finish on its own; its
                // entry goes either way, as the supervisor no longer answers for it.
                let _ = child
                    .handle
                    .actor()
                    .stop_and_wait(None, Some(PARTITION_STOP_TIMEOUT))
                    .await;
                directory.unregister(&child.args.id);
            });
        }
        while stopping.join_next().await.is_some() {}
        shrink_after_removals(&mut self.children);
        shrink_after_removals(&mut self.by_key);
        shrink_after_removals(&mut self.offline);
        self.registry.shrink();
    }
}
