//! The Controller: owns the metadata log. It checks every metadata change (topic names,
//! partition counts, replication factors, configs), commits it as records, applies them to
//! the image it publishes, and has the MetadataApplier bring the node in line before it
//! answers. On one node the log is a local file; in a cluster it becomes the Raft log and
//! only the elected controller takes writes.
//!
//! - Receives from: client sessions (topic admin, InitProducerId) through `ControllerHandle`.
//! - Sends to: the MetadataApplier (awaited), the metadata image watch, the node-wide
//!   `ProducerRegistry` (written before an InitProducerId is answered).
//! - Mailbox bound: `CONTROLLER_MAILBOX_MAX`; admin requests past it get `Overloaded`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, watch};
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::{ProducerEpoch, ProducerId};

use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::metadata::ImageApplier;
use crate::metadata::producer_ids::{self, ProducerIdError, ProducerRegistry};
use crate::metadata::topic_config::{self, TopicConfigError};
use crate::metadata::{MetadataError, MetadataImage, MetadataLog};

/// Admin requests the controller queues before refusing more: admin traffic is light, and
/// each request waits for an fsync and for partitions to start.
pub const CONTROLLER_MAILBOX_MAX: u64 = 256;
/// The most partitions one topic may have: the wire protocol's bound.
pub const TOPIC_PARTITIONS_MAX: u32 = vltava_messages::limits::PARTITIONS_PER_TOPIC_MAX;
/// The longest topic name, as in Kafka (a partition directory name must fit 255 bytes).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Why a metadata change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid partition count: {reason}")]
    InvalidPartitions { reason: String },
    #[error("invalid replication factor {factor}: {reason}")]
    InvalidReplicationFactor { factor: u16, reason: &'static str },
    #[error(transparent)]
    InvalidConfig(#[from] TopicConfigError),
    #[error("the controller is overloaded")]
    Overloaded,
    #[error("the controller is unavailable")]
    Unavailable,
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Producer(#[from] ProducerIdError),
}

/// Checks a topic name: 1 to 249 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`, and not
/// starting with `__` (reserved for internal topics).
pub fn check_topic_name(name: &str) -> Result<(), ControllerError> {
    let bad = |reason| {
        Err(ControllerError::InvalidTopicName {
            name: name.chars().take(300).collect(),
            reason,
        })
    };
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("must be 1 to 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("may hold only ASCII letters, digits, '.', '_' and '-'");
    }
    if name.starts_with("__") {
        return bad("names starting with __ are reserved for internal topics");
    }
    Ok(())
}

/// Internal topics (names starting with `__`) belong to the node: clients cannot delete them,
/// change their configs or add partitions (a group's offsets partition depends on the count).
fn refuse_internal(name: &str) -> Result<(), ControllerError> {
    if name.starts_with("__") {
        return Err(ControllerError::InvalidTopicName {
            name: name.to_owned(),
            reason: "internal topics cannot be changed by clients",
        });
    }
    Ok(())
}

type Reply = oneshot::Sender<Result<(), ControllerError>>;
/// A producer's identity: its id and epoch.
pub type ProducerIdentity = (ProducerId, ProducerEpoch);

#[derive(Debug)]
pub enum ControllerMsg {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        /// The node's own internal topic (a name starting with `__`).
        internal: bool,
        reply: Reply,
    },
    DeleteTopic {
        name: String,
        reply: Reply,
    },
    AlterConfigs {
        topic: String,
        set: BTreeMap<String, String>,
        removed: Vec<String>,
        validate_only: bool,
        reply: Reply,
    },
    CreatePartitions {
        topic: String,
        partitions: u32,
        validate_only: bool,
        reply: Reply,
    },
    /// A new producer id (`current` absent) or the next epoch of `current`.
    InitProducerId {
        current: Option<ProducerIdentity>,
        reply: oneshot::Sender<Result<ProducerIdentity, ControllerError>>,
    },
}

/// The only way to reach the Controller.
#[derive(Clone, Debug)]
pub struct ControllerHandle {
    actor: ActorRef<ControllerMsg>,
    stats: Arc<ActorStats>,
    image: watch::Receiver<Arc<MetadataImage>>,
}

impl ControllerHandle {
    async fn call(&self, make: impl FnOnce(Reply) -> ControllerMsg) -> Result<(), ControllerError> {
        if self.stats.depth() >= CONTROLLER_MAILBOX_MAX {
            return Err(ControllerError::Overloaded);
        }
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self.actor.send_message(make(reply)).is_err() {
            self.stats.dequeued();
            return Err(ControllerError::Unavailable);
        }
        answer.await.unwrap_or(Err(ControllerError::Unavailable))
    }

    pub async fn create_topic(
        &self,
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        self.call(|reply| ControllerMsg::CreateTopic {
            name,
            partitions,
            replication_factor,
            configs,
            validate_only,
            internal: false,
            reply,
        })
        .await
    }

    /// Creates one of the node's internal topics (`__consumer_offsets`) unless it exists.
    pub async fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<(), ControllerError> {
        if self.image.borrow().topics.contains_key(name) {
            return Ok(());
        }
        let created = self
            .call(|reply| ControllerMsg::CreateTopic {
                name: name.to_owned(),
                partitions,
                replication_factor: 1,
                configs,
                validate_only: false,
                internal: true,
                reply,
            })
            .await;
        match created {
            Err(ControllerError::TopicAlreadyExists(_)) => Ok(()),
            other => other,
        }
    }

    pub async fn delete_topic(&self, name: String) -> Result<(), ControllerError> {
        self.call(|reply| ControllerMsg::DeleteTopic { name, reply })
            .await
    }

    pub async fn alter_configs(
        &self,
        topic: String,
        set: BTreeMap<String, String>,
        removed: Vec<String>,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        self.call(|reply| ControllerMsg::AlterConfigs {
            topic,
            set,
            removed,
            validate_only,
            reply,
        })
        .await
    }

    pub async fn create_partitions(
        &self,
        topic: String,
        partitions: u32,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        self.call(|reply| ControllerMsg::CreatePartitions {
            topic,
            partitions,
            validate_only,
            reply,
        })
        .await
    }

    /// Hands out a producer identity: a new id at epoch 0, or (with `current`, the producer's
    /// id and current epoch) the next epoch, which fences the older ones node-wide before this
    /// returns (`producer_ids` has the rules).
    pub async fn init_producer_id(
        &self,
        current: Option<ProducerIdentity>,
    ) -> Result<ProducerIdentity, ControllerError> {
        if self.stats.depth() >= CONTROLLER_MAILBOX_MAX {
            return Err(ControllerError::Overloaded);
        }
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(ControllerMsg::InitProducerId { current, reply })
            .is_err()
        {
            self.stats.dequeued();
            return Err(ControllerError::Unavailable);
        }
        answer.await.unwrap_or(Err(ControllerError::Unavailable))
    }

    /// The current metadata image; `changed()` on the receiver waits for the next.
    #[must_use]
    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image.clone()
    }

    #[must_use]
    pub fn actor(&self) -> &ActorRef<ControllerMsg> {
        &self.actor
    }
}

/// What the controller starts with.
#[derive(Debug)]
pub struct ControllerArgs<L> {
    pub id: String,
    pub parent: String,
    pub node_id: u32,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub log: L,
    pub applier: Arc<dyn ImageApplier>,
    pub directory: ActorDirectory,
    /// Where the controller publishes the metadata image; the node made it so that actors
    /// started before the controller can watch it.
    pub publish: watch::Sender<Arc<MetadataImage>>,
    /// Where the controller publishes producer ids and epochs for the node's partitions.
    pub producer_ids: ProducerRegistry,
    /// Ids below this were handed out before producer ids moved into the metadata log (the
    /// old `producer-id-block` file); they count as reserved, so none is handed out again.
    pub producer_ids_floor: u64,
}

#[derive(Debug)]
pub struct Controller<L>(std::marker::PhantomData<fn() -> L>);

#[derive(Debug)]
pub struct ControllerState<L> {
    id: String,
    node_id: u32,
    log: L,
    image: MetadataImage,
    publish: watch::Sender<Arc<MetadataImage>>,
    applier: Arc<dyn ImageApplier>,
    directory: ActorDirectory,
    stats: Arc<ActorStats>,
    producer_ids: ProducerRegistry,
    /// The next producer id to hand out: ids from it to the reserved end are not issued yet.
    producer_next: u64,
}

impl<L: MetadataLog + std::fmt::Debug> Controller<L> {
    /// Starts the controller: replays the metadata log, registers this node, publishes the
    /// image and brings the node's partitions up before returning.
    pub async fn start(
        args: ControllerArgs<L>,
        supervisor: Option<ractor::ActorCell>,
    ) -> Result<ControllerHandle, ractor::SpawnErr> {
        let stats = args
            .directory
            .register(&args.id, ActorKind::Controller, Some(&args.parent));
        let publish = args.publish.clone();
        let image = publish.subscribe();
        let name = args.id.clone();
        let actor_args = (args, publish, Arc::clone(&stats));
        let controller = Controller(std::marker::PhantomData);
        let (actor, _) = match supervisor {
            Some(cell) => Actor::spawn_linked(Some(name), controller, actor_args, cell).await?,
            None => Actor::spawn(Some(name), controller, actor_args).await?,
        };
        Ok(ControllerHandle {
            actor,
            stats,
            image,
        })
    }
}

impl<L: MetadataLog + std::fmt::Debug> Actor for Controller<L> {
    type Msg = ControllerMsg;
    type State = ControllerState<L>;
    type Arguments = (
        ControllerArgs<L>,
        watch::Sender<Arc<MetadataImage>>,
        Arc<ActorStats>,
    );

    async fn pre_start(
        &self,
        _myself: ActorRef<ControllerMsg>,
        (args, publish, stats): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut log = args.log;
        let mut image = MetadataImage {
            cluster_id: args.cluster_id.clone(),
            controller_id: Some(args.node_id),
            ..MetadataImage::default()
        };
        for record in log.replay().await? {
            image.apply(&record);
        }
        let registered = image
            .nodes
            .get(&args.node_id)
            .is_some_and(|n| n.host == args.advertised_host && n.port == args.advertised_port);
        if !registered {
            let record = MetadataRecord::NodeRegistered {
                node_id: args.node_id,
                host: args.advertised_host.clone(),
                port: args.advertised_port,
            };
            log.append(vec![record.clone()]).await?;
            image.apply(&record);
        }
        if args.producer_ids_floor > image.producers.reserved_end {
            let record = MetadataRecord::ProducerIdsReserved {
                end: args.producer_ids_floor,
            };
            log.append(vec![record.clone()]).await?;
            image.apply(&record);
        }
        // What is left of a block reserved before the restart is skipped: which of its ids
        // were handed out is not written down.
        let producer_next = image.producers.reserved_end;
        args.producer_ids.publish(&image.producers, producer_next);
        let shared = Arc::new(image.clone());
        publish.send_replace(Arc::clone(&shared));
        args.applier.apply(shared).await;
        tracing::info!(
            version = image.version,
            topics = image.topics.len(),
            "metadata loaded"
        );
        Ok(ControllerState {
            id: args.id,
            node_id: args.node_id,
            log,
            image,
            publish,
            applier: args.applier,
            directory: args.directory,
            stats,
            producer_ids: args.producer_ids,
            producer_next,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ControllerMsg>,
        msg: ControllerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let started = std::time::Instant::now();
        if let ControllerMsg::InitProducerId { current, reply } = msg {
            let outcome = state.init_producer_id(current).await;
            if let Err(e) = &outcome {
                tracing::info!(error = %e, "InitProducerId refused");
            }
            // The session may have gone; nothing to do then.
            let _ = reply.send(outcome);
            state.stats.time("InitProducerId", started.elapsed());
            state.stats.handled();
            return Ok(());
        }
        let kind = match &msg {
            ControllerMsg::CreateTopic { .. } => "CreateTopic",
            ControllerMsg::DeleteTopic { .. } => "DeleteTopic",
            ControllerMsg::AlterConfigs { .. } => "AlterConfigs",
            ControllerMsg::CreatePartitions { .. } => "CreatePartitions",
            ControllerMsg::InitProducerId { .. } => unreachable!("answered above"),
        };
        let (outcome, reply) = match msg {
            ControllerMsg::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
                internal,
                reply,
            } => (
                state
                    .create_topic(
                        name,
                        partitions,
                        replication_factor,
                        configs,
                        validate_only,
                        internal,
                    )
                    .await,
                reply,
            ),
            ControllerMsg::DeleteTopic { name, reply } => (state.delete_topic(name).await, reply),
            ControllerMsg::AlterConfigs {
                topic,
                set,
                removed,
                validate_only,
                reply,
            } => (
                state
                    .alter_configs(topic, set, removed, validate_only)
                    .await,
                reply,
            ),
            ControllerMsg::CreatePartitions {
                topic,
                partitions,
                validate_only,
                reply,
            } => (
                state
                    .create_partitions(topic, partitions, validate_only)
                    .await,
                reply,
            ),
            ControllerMsg::InitProducerId { .. } => unreachable!("answered above"),
        };
        if let Err(e) = &outcome {
            tracing::info!(error = %e, "metadata change refused");
        }
        let _ = reply.send(outcome);
        state.stats.time(kind, started.elapsed());
        state.stats.handled();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ControllerMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.directory.unregister(&state.id);
        Ok(())
    }
}

impl<L: MetadataLog> ControllerState<L> {
    /// Commits records, applies them, publishes the image and waits for the node to follow.
    async fn commit(&mut self, records: Vec<MetadataRecord>) -> Result<(), ControllerError> {
        self.log.append(records.clone()).await?;
        for record in &records {
            self.image.apply(record);
        }
        let shared = Arc::new(self.image.clone());
        self.publish.send_replace(Arc::clone(&shared));
        self.applier.apply(shared).await;
        Ok(())
    }

    /// Decides an InitProducerId, commits what it changes, and publishes it to the node's
    /// partitions before the answer goes out, so a bump fences the older epoch everywhere at
    /// once.
    async fn init_producer_id(
        &mut self,
        current: Option<ProducerIdentity>,
    ) -> Result<ProducerIdentity, ControllerError> {
        let grant = producer_ids::decide_init(&self.image.producers, self.producer_next, current)?;
        if grant.records.is_empty() {
            self.producer_next = grant.next;
            self.producer_ids.issue(self.producer_next);
        } else {
            tracing::info!(records = ?grant.records, "producer ids changed");
            self.commit(grant.records).await?;
            self.producer_next = grant.next;
            self.producer_ids
                .publish(&self.image.producers, self.producer_next);
        }
        Ok((grant.producer_id, grant.producer_epoch))
    }

    fn check_partitions(partitions: u32) -> Result<(), ControllerError> {
        if partitions == 0 || partitions > TOPIC_PARTITIONS_MAX {
            return Err(ControllerError::InvalidPartitions {
                reason: format!("{partitions} is outside 1..={TOPIC_PARTITIONS_MAX}"),
            });
        }
        Ok(())
    }

    fn partition_changes(&self, topic: &str, from: u32, to: u32) -> Vec<MetadataRecord> {
        (from..to)
            .map(|partition| MetadataRecord::PartitionChange {
                topic: topic.to_owned(),
                partition,
                leader: Some(self.node_id),
                leader_epoch: 0,
                replicas: vec![self.node_id],
                isr: vec![self.node_id],
            })
            .collect()
    }

    async fn create_topic(
        &mut self,
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        internal: bool,
    ) -> Result<(), ControllerError> {
        if !(internal && name.starts_with("__")) {
            check_topic_name(&name)?;
        }
        Self::check_partitions(partitions)?;
        let nodes = self.image.nodes.len();
        if replication_factor == 0 || usize::from(replication_factor) > nodes {
            return Err(ControllerError::InvalidReplicationFactor {
                factor: replication_factor,
                reason: "must be between 1 and the number of nodes",
            });
        }
        topic_config::parse(&configs)?;
        if self.image.topics.contains_key(&name) {
            return Err(ControllerError::TopicAlreadyExists(name));
        }
        if validate_only {
            return Ok(());
        }
        let topic_id = uuid::Uuid::new_v4().to_string();
        let mut records = vec![MetadataRecord::TopicCreated {
            name: name.clone(),
            topic_id,
            partitions,
            replication_factor,
            configs,
        }];
        records.extend(self.partition_changes(&name, 0, partitions));
        tracing::info!(topic = %name, partitions, "creating topic");
        self.commit(records).await
    }

    async fn delete_topic(&mut self, name: String) -> Result<(), ControllerError> {
        refuse_internal(&name)?;
        if !self.image.topics.contains_key(&name) {
            return Err(ControllerError::UnknownTopic(name));
        }
        tracing::info!(topic = %name, "deleting topic");
        self.commit(vec![MetadataRecord::TopicDeleted { name }])
            .await
    }

    async fn alter_configs(
        &mut self,
        topic: String,
        set: BTreeMap<String, String>,
        removed: Vec<String>,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        refuse_internal(&topic)?;
        let current = self
            .image
            .topics
            .get(&topic)
            .ok_or_else(|| ControllerError::UnknownTopic(topic.clone()))?;
        topic_config::check_alteration(&set, &removed)?;
        let mut merged = current.configs.clone();
        for key in &removed {
            if !topic_config::TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(TopicConfigError {
                    key: key.clone(),
                    value: String::new(),
                    reason: "unknown config key",
                }
                .into());
            }
            merged.remove(key);
        }
        merged.extend(set.clone());
        topic_config::parse(&merged)?;
        if validate_only {
            return Ok(());
        }
        self.commit(vec![MetadataRecord::TopicConfigChanged {
            topic,
            set,
            removed,
        }])
        .await
    }

    async fn create_partitions(
        &mut self,
        topic: String,
        partitions: u32,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        refuse_internal(&topic)?;
        let current = self
            .image
            .topics
            .get(&topic)
            .ok_or_else(|| ControllerError::UnknownTopic(topic.clone()))?
            .partitions
            .len() as u32;
        Self::check_partitions(partitions)?;
        if partitions <= current {
            return Err(ControllerError::InvalidPartitions {
                reason: format!("the topic has {current} partitions; the new count must be larger"),
            });
        }
        if validate_only {
            return Ok(());
        }
        let mut records = vec![MetadataRecord::PartitionsAdded {
            topic: topic.clone(),
            partitions,
        }];
        records.extend(self.partition_changes(&topic, current, partitions));
        self.commit(records).await
    }
}
