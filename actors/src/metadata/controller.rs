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
//! - Deadlines: a request may carry one (the wire's `timeout_ms`). Still queued when it
//!   passes, the request is withdrawn and changes nothing; taken, it is answered
//!   `TimedOut` when the deadline passes, saying how far the change got (being written to the
//!   metadata log, or committed with partitions still starting or stopping), and the
//!   controller finishes that change before it takes the next request.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use vltava_messages::ErrorCode;
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::peer::{
    CommittedIsrWire, ControllerForwardResponse, ElectionResultWire, ElectionWire, ElectionsWire,
    ForwardedAdmin, ReassignmentResultWire, ReassignmentWire,
};
use vltava_messages::{ProducerEpoch, ProducerId};

use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::metadata::ImageApplier;
use crate::metadata::elections::{self, Election};
use crate::metadata::failover;
use crate::metadata::producer_ids::{self, ProducerIdError, ProducerRegistry};
use crate::metadata::reassign::{self, Reassignment};
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
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    /// No controller is known (an election is in progress, or this node is cut off), or it
    /// could not be reached.
    #[error("the controller is not available: {0}")]
    NotAvailable(String),
    /// The controller's own refusal of a forwarded request, as it answered it.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    /// An ISR proposal that cannot be right whatever the partition's state (a replica that is
    /// not one, an ISR without its leader): a bug on the proposing node.
    #[error("invalid ISR proposal: {0}")]
    InvalidIsr(String),
}

impl ControllerError {
    /// The client protocol's error code for it.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            ControllerError::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            ControllerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            ControllerError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            ControllerError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
            ControllerError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            ControllerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            ControllerError::Overloaded => ErrorCode::Overloaded,
            ControllerError::InvalidIsr(_) => ErrorCode::InvalidRequest,
            ControllerError::NotAvailable(_)
            | ControllerError::Metadata(MetadataError::NotLeader { .. }) => {
                ErrorCode::ControllerNotAvailable
            }
            ControllerError::Unavailable | ControllerError::Metadata(_) => ErrorCode::StorageError,
            ControllerError::TimedOut(_) => ErrorCode::RequestTimedOut,
            ControllerError::Producer(ProducerIdError::Unknown { .. }) => {
                ErrorCode::UnknownProducerId
            }
            ControllerError::Producer(ProducerIdError::Fenced { .. }) => ErrorCode::ProducerFenced,
            // 2^63 producer ids handed out: not a state a node reaches.
            ControllerError::Producer(ProducerIdError::IdsExhausted) => {
                ErrorCode::UnknownServerError
            }
            ControllerError::Remote { code, .. } => *code,
        }
    }
}

/// Where requests go when another node leads the metadata log: the node supplies it (over
/// its peer links), so that this folder does not depend on them.
pub trait Forwarder: Send + Sync + std::fmt::Debug + 'static {
    /// Where the controller is now.
    fn route(&self) -> Route;

    /// Sends `admin` to the controller on node `to`, waiting at most `timeout` for its answer.
    fn forward(
        &self,
        to: u32,
        admin: ForwardedAdmin,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<ControllerForwardResponse, ControllerError>> + Send + '_>>;
}

/// Where the controller is, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node leads the metadata log: its own controller decides.
    Local,
    /// Node `0` leads it.
    Remote(u32),
    /// No leader is known.
    Unknown,
}

/// How much longer than the time left of a client's deadline a forwarded request waits, so
/// that the controller's own `RequestTimedOut` arrives first.
pub const FORWARD_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// What is left of `deadline` in whole milliseconds, as a forwarded request carries it (0:
/// no deadline; a deadline already passed is 1 ms, which the controller answers at once).
/// The deadline a forwarded request carries: what was left of the client's timeout when the
/// forwarding node sent it (none: 0).
fn forwarded_deadline(admin: &ForwardedAdmin) -> Option<Instant> {
    let timeout_ms = match admin {
        ForwardedAdmin::CreateTopic { timeout_ms, .. }
        | ForwardedAdmin::DeleteTopic { timeout_ms, .. }
        | ForwardedAdmin::CreatePartitions { timeout_ms, .. }
        | ForwardedAdmin::ElectLeaders { timeout_ms, .. }
        | ForwardedAdmin::AlterPartitionReassignments { timeout_ms, .. } => *timeout_ms,
        ForwardedAdmin::AlterConfigs { .. }
        | ForwardedAdmin::InitProducerId { .. }
        | ForwardedAdmin::RegisterNode { .. }
        | ForwardedAdmin::AlterIsr { .. } => 0,
    };
    (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)))
}

fn timeout_ms(deadline: Option<Instant>) -> u32 {
    deadline.map_or(0, |d| {
        let left = d.saturating_duration_since(Instant::now()).as_millis();
        u32::try_from(left).unwrap_or(u32::MAX).max(1)
    })
}

/// A controller refusal as a forwarded answer carries it: at most the peer protocol's
/// message bound, cut at a character boundary.
fn truncate_message(mut message: String) -> String {
    let max = vltava_messages::peer::PEER_ERROR_MESSAGE_BYTES_MAX as usize;
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// How long a forwarded request without a deadline of its own waits for the controller's
/// answer. Commits on a healthy quorum take milliseconds; a controller that answers nothing
/// for 30 s is lost, and the client retries with the next one.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// A metadata change whose request may time out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    CreateTopic(String),
    DeleteTopic(String),
    CreatePartitions(String),
    /// ElectLeaders' moves, all in one change.
    ElectLeaders,
    /// AlterPartitionReassignments' starts (and immediate completions), all in one change.
    AlterPartitionReassignments,
}

/// How far a change had got when its request's deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutStage {
    /// The request was still queued behind others: it was withdrawn and changed nothing.
    Queued,
    /// The change was being written to the metadata log: it is made if that write succeeds.
    Committing,
    /// The change was committed; the node's partitions were still starting (or stopping),
    /// and finish on their own.
    Applying,
}

/// A request's deadline passed before its change was complete: what the client should know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.explain())]
pub struct TimedOut {
    pub change: Change,
    pub stage: TimeoutStage,
}

impl TimedOut {
    /// The sentence clients get. Wire error messages hold at most 128 bytes
    /// (`ERROR_MESSAGE_BYTES_MAX`), so it says what became of the change first and leaves the
    /// topic's name to the result it sits in.
    fn explain(&self) -> &'static str {
        match (&self.change, self.stage) {
            (Change::CreateTopic(_), TimeoutStage::Queued) => {
                "topic not created: the timeout passed while the request was queued"
            }
            (Change::DeleteTopic(_), TimeoutStage::Queued) => {
                "topic not deleted: the timeout passed while the request was queued"
            }
            (Change::CreatePartitions(_), TimeoutStage::Queued) => {
                "no partition added: the timeout passed while the request was queued"
            }
            (Change::ElectLeaders, TimeoutStage::Queued) => {
                "no leader moved: the timeout passed while the request was queued"
            }
            (Change::AlterPartitionReassignments, TimeoutStage::Queued) => {
                "no partition moved: the timeout passed while the request was queued"
            }
            (_, TimeoutStage::Committing) => {
                "timed out while committing: the change is made unless the metadata write fails (see Metadata)"
            }
            (Change::CreateTopic(_), TimeoutStage::Applying) => {
                "topic created; timed out while its partitions open, which goes on (LeaderNotAvailable until open)"
            }
            (Change::DeleteTopic(_), TimeoutStage::Applying) => {
                "topic deleted; timed out while its partitions stop and their data goes, which goes on"
            }
            (Change::CreatePartitions(_), TimeoutStage::Applying) => {
                "partitions added; timed out while they open, which goes on (LeaderNotAvailable until open)"
            }
            (Change::ElectLeaders, TimeoutStage::Applying) => {
                "leaders moved; timed out while this node's replicas change role, which goes on"
            }
            (Change::AlterPartitionReassignments, TimeoutStage::Applying) => {
                "moves started; timed out while this node's replicas start or stop, which goes on"
            }
        }
    }
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

/// A producer's identity: its id and epoch.
pub type ProducerIdentity = (ProducerId, ProducerEpoch);

/// A CreateTopic request's fields, as the controller checks them.
#[derive(Debug)]
struct NewTopic {
    name: String,
    partitions: u32,
    replication_factor: u16,
    configs: BTreeMap<String, String>,
    validate_only: bool,
    /// The node's own internal topic (a name starting with `__`).
    internal: bool,
}

/// Where a request stands between the handle that sent it and the controller: whichever
/// moves it out of `QUEUED` first decides whether it is made (taken) or withdrawn.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// How a request is answered: once, possibly before the controller is done with it (when its
/// deadline passes mid-change).
#[derive(Debug)]
pub struct Reply {
    sender: Option<oneshot::Sender<Result<(), ControllerError>>>,
    deadline: Option<Instant>,
    claim: Arc<AtomicU8>,
}

impl Reply {
    /// The reply of a change that no request waits on with a deadline.
    fn without_deadline() -> Reply {
        Reply {
            sender: None,
            deadline: None,
            claim: Arc::new(AtomicU8::new(TAKEN)),
        }
    }

    /// Answers, unless an answer went already. A dropped receiver means the session went away.
    fn send(&mut self, outcome: Result<(), ControllerError>) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(outcome);
        }
    }

    /// Takes the request for the controller; false if the handle withdrew it (its deadline
    /// passed while it was queued).
    fn take(&self) -> bool {
        self.claim
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Awaits `work`; if the deadline passes first, answers `TimedOut` at `stage` then and
    /// still awaits `work` to its end, so the change is finished before the next request.
    async fn finish_by_deadline<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        change: &Change,
        stage: TimeoutStage,
    ) -> T {
        let Some(deadline) = self.deadline else {
            return work.await;
        };
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => done,
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(?change, ?stage, "admin request timed out; the change goes on");
                self.send(Err(TimedOut { change: change.clone(), stage }.into()));
                work.await
            }
        }
    }
}

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
    /// A node's registration: where clients reach it.
    RegisterNode {
        node_id: u32,
        host: String,
        port: u16,
        incarnation: u64,
        reply: Reply,
    },
    /// A partition leader's ISR change, committed only if the partition is still at the
    /// proposal's leader, leader epoch and partition epoch (compare-and-set); answered `Ok`
    /// either way (the asker reads the outcome from the image).
    AlterIsr {
        topic: String,
        partition: u32,
        leader: u32,
        leader_epoch: u32,
        partition_epoch: u32,
        isr: Vec<u32>,
        reply: Reply,
    },
    /// An ElectLeaders request: the outcomes go on `outcomes` once decided (before the commit);
    /// `reply` says whether the commit and this node's role changes completed.
    ElectLeaders {
        elections: Vec<Election>,
        preferred: bool,
        outcomes: oneshot::Sender<ElectionsWire>,
        reply: Reply,
    },
    /// An AlterPartitionReassignments request: the outcomes go on `outcomes` once decided
    /// (before the commit); `reply` says whether the commit and this node's changes completed.
    AlterPartitionReassignments {
        reassignments: Vec<Reassignment>,
        outcomes: oneshot::Sender<Vec<ReassignmentResultWire>>,
        reply: Reply,
    },
    /// The lease supervisor's decisions: nodes whose lease ran out are fenced, fenced nodes
    /// that renewed it are unfenced, in one commit.
    SetFencing {
        fence: Vec<u32>,
        unfence: Vec<u32>,
        reply: Reply,
    },
    /// A new producer id (`current` absent) or the next epoch of `current`.
    InitProducerId {
        current: Option<ProducerIdentity>,
        reply: oneshot::Sender<Result<ProducerIdentity, ControllerError>>,
    },
}

/// What a decided admin request gives back besides success: InitProducerId's grant, AlterIsr's
/// committed ISR.
#[derive(Debug, Default)]
struct Decided {
    producer: Option<(u64, u16)>,
    isr: Option<CommittedIsrWire>,
    elections: Option<ElectionsWire>,
    reassignments: Option<Vec<ReassignmentResultWire>>,
}

/// A node's registration (`ControllerMsg::RegisterNode`).
#[derive(Debug)]
struct Registration {
    node_id: u32,
    host: String,
    port: u16,
    incarnation: u64,
}

/// A leader's proposed ISR change (`ControllerMsg::AlterIsr`).
#[derive(Debug)]
struct IsrChange {
    topic: String,
    partition: u32,
    leader: u32,
    leader_epoch: u32,
    partition_epoch: u32,
    isr: Vec<u32>,
}

/// The only way to reach the Controller.
#[derive(Clone, Debug)]
pub struct ControllerHandle {
    actor: ActorRef<ControllerMsg>,
    stats: Arc<ActorStats>,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// In a cluster: where requests go when another node is the controller.
    forwarder: Option<Arc<dyn Forwarder>>,
    /// This node, which registers itself and on whose behalf requests are forwarded.
    node_id: u32,
}

impl ControllerHandle {
    async fn call(&self, make: impl FnOnce(Reply) -> ControllerMsg) -> Result<(), ControllerError> {
        self.call_by(None, None, make).await
    }

    /// Sends a request that must be answered by `deadline`, if there is one. `change` says what
    /// a `TimedOut` answer is about.
    async fn call_by(
        &self,
        deadline: Option<Instant>,
        change: Option<Change>,
        make: impl FnOnce(Reply) -> ControllerMsg,
    ) -> Result<(), ControllerError> {
        let timed_out = |stage| match &change {
            Some(change) => ControllerError::TimedOut(TimedOut {
                change: change.clone(),
                stage,
            }),
            None => ControllerError::Unavailable,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out(TimeoutStage::Queued));
        }
        if self.stats.depth() >= CONTROLLER_MAILBOX_MAX {
            return Err(ControllerError::Overloaded);
        }
        let (sender, mut answer) = oneshot::channel();
        let claim = Arc::new(AtomicU8::new(QUEUED));
        let reply = Reply {
            sender: Some(sender),
            deadline,
            claim: Arc::clone(&claim),
        };
        self.stats.enqueued();
        if self.actor.send_message(make(reply)).is_err() {
            self.stats.dequeued();
            return Err(ControllerError::Unavailable);
        }
        if let Some(deadline) = deadline
            && let Ok(answered) = tokio::time::timeout_at(deadline, &mut answer).await
        {
            return answered.unwrap_or(Err(ControllerError::Unavailable));
        }
        if deadline.is_some()
            && claim
                .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Still queued: withdrawn, so the controller will skip it and nothing changes.
            return Err(timed_out(TimeoutStage::Queued));
        }
        // Taken (or no deadline): the controller answers, by the deadline when there is one.
        answer.await.unwrap_or(Err(ControllerError::Unavailable))
    }

    /// Where a request goes: `None` to this node's own controller, `Some(node)` to node's.
    fn remote(&self) -> Result<Option<u32>, ControllerError> {
        match self.forwarder.as_ref().map(|f| f.route()) {
            None | Some(Route::Local) => Ok(None),
            Some(Route::Remote(node)) => Ok(Some(node)),
            Some(Route::Unknown) => Err(ControllerError::NotAvailable(
                "no controller is elected".into(),
            )),
        }
    }

    /// Forwards `admin` to the controller on node `to` and turns its refusal into an error.
    async fn forward(
        &self,
        to: u32,
        admin: ForwardedAdmin,
        deadline: Option<Instant>,
    ) -> Result<ControllerForwardResponse, ControllerError> {
        let Some(forwarder) = &self.forwarder else {
            return Err(ControllerError::Unavailable);
        };
        // The controller answers `RequestTimedOut` itself at the deadline (it gets the time
        // left); the call waits a little longer so that its answer, not a timeout here, is
        // what the client sees.
        let timeout = deadline.map_or(FORWARD_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now()) + FORWARD_ANSWER_GRACE
        });
        let answer = forwarder.forward(to, admin, timeout).await?;
        if answer.error_code == 0 {
            return Ok(answer);
        }
        Err(ControllerError::Remote {
            code: ErrorCode::from_code(answer.error_code).unwrap_or(ErrorCode::UnknownServerError),
            message: answer.message,
        })
    }

    /// Answers a request another node forwarded, with this node's controller only: a request
    /// is forwarded once, never on, so two nodes that each take the other for the controller
    /// cannot pass it back and forth.
    pub async fn serve_forwarded(
        &self,
        from: u32,
        admin: ForwardedAdmin,
    ) -> ControllerForwardResponse {
        let deadline = forwarded_deadline(&admin);
        match self.decide_here(from, admin, deadline).await {
            Ok(decided) => ControllerForwardResponse {
                error_code: 0,
                message: String::new(),
                producer: decided.producer,
                isr: decided.isr,
                elections: decided.elections,
                reassignments: decided.reassignments,
            },
            Err(e) => ControllerForwardResponse {
                error_code: e.code().code(),
                message: truncate_message(e.to_string()),
                producer: None,
                isr: None,
                elections: None,
                reassignments: None,
            },
        }
    }

    /// Has `admin` decided: by this node's controller, or forwarded to the controller on
    /// another node. `from` is the node that asks (this one, or the forwarding node);
    /// InitProducerId's grant and AlterIsr's committed ISR come back in `Decided`.
    async fn decide(
        &self,
        from: u32,
        admin: ForwardedAdmin,
        deadline: Option<Instant>,
    ) -> Result<Decided, ControllerError> {
        match self.remote()? {
            Some(to) => self.forward(to, admin, deadline).await.map(|a| Decided {
                producer: a.producer,
                isr: a.isr,
                elections: a.elections,
                reassignments: a.reassignments,
            }),
            None => self.decide_here(from, admin, deadline).await,
        }
    }

    /// Has this node's controller decide `admin`, whether it leads the metadata log or not
    /// (it answers `NotLeader` then).
    async fn decide_here(
        &self,
        from: u32,
        admin: ForwardedAdmin,
        deadline: Option<Instant>,
    ) -> Result<Decided, ControllerError> {
        match admin {
            ForwardedAdmin::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
                internal,
                timeout_ms: _,
            } => {
                let change = Change::CreateTopic(name.clone());
                self.call_by(deadline, Some(change), |reply| ControllerMsg::CreateTopic {
                    name,
                    partitions,
                    replication_factor,
                    configs,
                    validate_only,
                    internal,
                    reply,
                })
                .await
                .map(|()| Decided::default())
            }
            ForwardedAdmin::DeleteTopic {
                name,
                timeout_ms: _,
            } => {
                let change = Change::DeleteTopic(name.clone());
                self.call_by(deadline, Some(change), |reply| ControllerMsg::DeleteTopic {
                    name,
                    reply,
                })
                .await
                .map(|()| Decided::default())
            }
            ForwardedAdmin::AlterConfigs {
                topic,
                set,
                removed,
                validate_only,
            } => self
                .call(|reply| ControllerMsg::AlterConfigs {
                    topic,
                    set,
                    removed,
                    validate_only,
                    reply,
                })
                .await
                .map(|()| Decided::default()),
            ForwardedAdmin::CreatePartitions {
                topic,
                partitions,
                validate_only,
                timeout_ms: _,
            } => {
                let change = Change::CreatePartitions(topic.clone());
                self.call_by(deadline, Some(change), |reply| {
                    ControllerMsg::CreatePartitions {
                        topic,
                        partitions,
                        validate_only,
                        reply,
                    }
                })
                .await
                .map(|()| Decided::default())
            }
            ForwardedAdmin::InitProducerId { current } => self
                .local_init_producer_id(
                    current.map(|(id, epoch)| (ProducerId(id), ProducerEpoch(epoch))),
                )
                .await
                .map(|(id, epoch)| Decided {
                    producer: Some((id.0, epoch.0)),
                    ..Decided::default()
                }),
            ForwardedAdmin::RegisterNode {
                host,
                port,
                incarnation,
            } => self
                .call(|reply| ControllerMsg::RegisterNode {
                    node_id: from,
                    host,
                    port,
                    incarnation,
                    reply,
                })
                .await
                .map(|()| Decided::default()),
            ForwardedAdmin::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let key = topic.clone();
                self.call(|reply| ControllerMsg::AlterIsr {
                    topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr,
                    reply,
                })
                .await?;
                // Taken or refused, the answer is the partition's committed state: the
                // controller answers only once its change (if any) is published here.
                let image = self.image.borrow();
                let current = image
                    .topics
                    .get(&key)
                    .and_then(|t| t.partitions.get(partition as usize))
                    .ok_or_else(|| ControllerError::UnknownTopic(format!("{key}-{partition}")))?;
                let mut isr = current.isr.clone();
                isr.sort_unstable();
                Ok(Decided {
                    isr: Some(CommittedIsrWire {
                        leader_epoch: current.leader_epoch,
                        partition_epoch: current.partition_epoch,
                        isr,
                    }),
                    ..Decided::default()
                })
            }
            ForwardedAdmin::ElectLeaders {
                partitions,
                preferred,
                timeout_ms: _,
            } => {
                let elections = partitions
                    .into_iter()
                    .map(|e| Election {
                        topic: e.topic,
                        partition: e.partition,
                        to: if preferred { None } else { e.to },
                    })
                    .collect();
                let (outcomes, decided) = oneshot::channel();
                self.call_by(deadline, Some(Change::ElectLeaders), |reply| {
                    ControllerMsg::ElectLeaders {
                        elections,
                        preferred,
                        outcomes,
                        reply,
                    }
                })
                .await?;
                // The outcomes were sent before the commit that the reply waited for.
                let elections = decided.await.map_err(|_| ControllerError::Unavailable)?;
                Ok(Decided {
                    elections: Some(elections),
                    ..Decided::default()
                })
            }
            ForwardedAdmin::AlterPartitionReassignments {
                partitions,
                timeout_ms: _,
            } => {
                let reassignments = partitions
                    .into_iter()
                    .map(|r| Reassignment {
                        topic: r.topic,
                        partition: r.partition,
                        target: r.replicas,
                    })
                    .collect();
                let (outcomes, decided) = oneshot::channel();
                self.call_by(
                    deadline,
                    Some(Change::AlterPartitionReassignments),
                    |reply| ControllerMsg::AlterPartitionReassignments {
                        reassignments,
                        outcomes,
                        reply,
                    },
                )
                .await?;
                // The outcomes were sent before the commit that the reply waited for.
                let reassignments = decided.await.map_err(|_| ControllerError::Unavailable)?;
                Ok(Decided {
                    reassignments: Some(reassignments),
                    ..Decided::default()
                })
            }
        }
    }

    /// Creates a topic; with a deadline, answers `TimedOut` when it passes (see the module
    /// doc for what then becomes of the topic).
    pub async fn create_topic(
        &self,
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        deadline: Option<Instant>,
    ) -> Result<(), ControllerError> {
        let admin = ForwardedAdmin::CreateTopic {
            name,
            partitions,
            replication_factor,
            configs,
            validate_only,
            internal: false,
            timeout_ms: timeout_ms(deadline),
        };
        self.decide(self.node_id, admin, deadline).await.map(drop)
    }

    /// Creates one of the cluster's internal topics (`__consumer_offsets`) unless it exists,
    /// with `replication_factor` replicas per partition (refused with
    /// `InvalidReplicationFactor` while fewer nodes are live).
    pub async fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    ) -> Result<(), ControllerError> {
        if self.image.borrow().topics.contains_key(name) {
            return Ok(());
        }
        let admin = ForwardedAdmin::CreateTopic {
            name: name.to_owned(),
            partitions,
            replication_factor,
            configs,
            validate_only: false,
            internal: true,
            timeout_ms: 0,
        };
        match self.decide(self.node_id, admin, None).await {
            Err(e) if e.code() == ErrorCode::TopicAlreadyExists => Ok(()),
            other => other.map(drop),
        }
    }

    /// A partition leader's ISR change, committed by the controller only if the partition is
    /// still at `leader`, `leader_epoch` and `partition_epoch`. Answers the partition's
    /// committed state after it, taken or not.
    pub async fn alter_isr(
        &self,
        topic: String,
        partition: u32,
        leader: u32,
        leader_epoch: u32,
        partition_epoch: u32,
        isr: Vec<u32>,
    ) -> Result<CommittedIsrWire, ControllerError> {
        let admin = ForwardedAdmin::AlterIsr {
            topic,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        };
        self.decide(self.node_id, admin, None)
            .await?
            .isr
            .ok_or_else(|| ControllerError::NotAvailable("the controller answered no ISR".into()))
    }

    /// Moves partitions' leadership (ElectLeaders): each to its `to`, or with `preferred` to
    /// its first replica (an empty list: every partition another replica leads). Answers
    /// each partition's outcome once the moves are committed and applied on this node; with a
    /// deadline, `TimedOut` when it passes.
    pub async fn elect_leaders(
        &self,
        partitions: Vec<ElectionWire>,
        preferred: bool,
        deadline: Option<Instant>,
    ) -> Result<ElectionsWire, ControllerError> {
        let admin = ForwardedAdmin::ElectLeaders {
            partitions,
            preferred,
            timeout_ms: timeout_ms(deadline),
        };
        self.decide(self.node_id, admin, deadline)
            .await?
            .elections
            .ok_or_else(|| {
                ControllerError::NotAvailable("the controller answered no elections".into())
            })
    }

    /// Moves partitions to other replicas (AlterPartitionReassignments): each starts (or, with
    /// its target in sync already, completes) in one commit; the moves complete later, in the
    /// ISR changes that bring their targets in sync (`reassign`). Answers each partition's
    /// outcome once the commit is applied on this node; with a deadline, `TimedOut` when it
    /// passes.
    pub async fn alter_partition_reassignments(
        &self,
        partitions: Vec<ReassignmentWire>,
        deadline: Option<Instant>,
    ) -> Result<Vec<ReassignmentResultWire>, ControllerError> {
        let admin = ForwardedAdmin::AlterPartitionReassignments {
            partitions,
            timeout_ms: timeout_ms(deadline),
        };
        self.decide(self.node_id, admin, deadline)
            .await?
            .reassignments
            .ok_or_else(|| {
                ControllerError::NotAvailable("the controller answered no reassignments".into())
            })
    }

    /// Registers this run of this node with the controller: where clients reach it, and its
    /// incarnation (drawn at each start), which gives the replicated partitions it leads a new
    /// leader epoch.
    pub async fn register_node(
        &self,
        host: String,
        port: u16,
        incarnation: u64,
    ) -> Result<(), ControllerError> {
        let admin = ForwardedAdmin::RegisterNode {
            host,
            port,
            incarnation,
        };
        self.decide(self.node_id, admin, None).await.map(drop)
    }

    /// Commits the lease supervisor's fencing decisions; only on the controller's own node
    /// (the supervisor runs where the Raft leader is), so never forwarded.
    pub async fn set_fencing(
        &self,
        fence: Vec<u32>,
        unfence: Vec<u32>,
    ) -> Result<(), ControllerError> {
        self.call(|reply| ControllerMsg::SetFencing {
            fence,
            unfence,
            reply,
        })
        .await
    }

    /// Deletes a topic; with a deadline, answers `TimedOut` when it passes.
    pub async fn delete_topic(
        &self,
        name: String,
        deadline: Option<Instant>,
    ) -> Result<(), ControllerError> {
        let admin = ForwardedAdmin::DeleteTopic {
            name,
            timeout_ms: timeout_ms(deadline),
        };
        self.decide(self.node_id, admin, deadline).await.map(drop)
    }

    pub async fn alter_configs(
        &self,
        topic: String,
        set: BTreeMap<String, String>,
        removed: Vec<String>,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        let admin = ForwardedAdmin::AlterConfigs {
            topic,
            set,
            removed,
            validate_only,
        };
        self.decide(self.node_id, admin, None).await.map(drop)
    }

    /// Raises a topic's partition count; with a deadline, answers `TimedOut` when it passes.
    pub async fn create_partitions(
        &self,
        topic: String,
        partitions: u32,
        validate_only: bool,
        deadline: Option<Instant>,
    ) -> Result<(), ControllerError> {
        let admin = ForwardedAdmin::CreatePartitions {
            topic,
            partitions,
            validate_only,
            timeout_ms: timeout_ms(deadline),
        };
        self.decide(self.node_id, admin, deadline).await.map(drop)
    }

    /// Hands out a producer identity: a new id at epoch 0, or (with `current`, the producer's
    /// id and current epoch) the next epoch, which fences the older ones node-wide before this
    /// returns (`producer_ids` has the rules).
    pub async fn init_producer_id(
        &self,
        current: Option<ProducerIdentity>,
    ) -> Result<ProducerIdentity, ControllerError> {
        let admin = ForwardedAdmin::InitProducerId {
            current: current.map(|(id, epoch)| (id.0, epoch.0)),
        };
        self.decide(self.node_id, admin, None)
            .await?
            .producer
            .map(|(id, epoch)| (ProducerId(id), ProducerEpoch(epoch)))
            .ok_or_else(|| {
                ControllerError::NotAvailable("the controller granted no producer id".into())
            })
    }

    async fn local_init_producer_id(
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

/// How long a cluster's controller waits for the node's publisher to carry a committed image
/// to the node's watch before it answers anyway (the publisher is stopping, say).
const PUBLISHED_WAIT_MAX: Duration = Duration::from_secs(5);

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
    /// In a cluster: where requests go when another node is the controller.
    pub forwarder: Option<Arc<dyn Forwarder>>,
}

#[derive(Debug)]
pub struct Controller<L>(std::marker::PhantomData<fn() -> L>);

#[derive(Debug)]
pub struct ControllerState<L> {
    id: String,
    log: L,
    image: MetadataImage,
    publish: watch::Sender<Arc<MetadataImage>>,
    /// Whether this controller publishes the image (one node), or the log does (a cluster).
    publishes: bool,
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
        let forwarder = args.forwarder.clone();
        let node_id = args.node_id;
        // Sessions read the node's watch, not the log's own: in a cluster the publisher adds
        // who the controller is to each committed image before it lands there.
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
            forwarder,
            node_id,
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
        if let Some(published) = log.published() {
            // In a cluster the Raft state machine builds the image on every node; this
            // controller decides changes only while its node leads, on the image it finds
            // then (`lead`). Nodes register through the controller once there is one.
            let image = (**published.borrow()).clone();
            let producer_next = image.producers.reserved_end;
            return Ok(ControllerState {
                id: args.id,
                log,
                image,
                publish,
                publishes: false,
                applier: args.applier,
                directory: args.directory,
                stats,
                producer_ids: args.producer_ids,
                producer_next,
            });
        }
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
            // A single node's partitions have no other replica: its incarnation is not needed
            // (0), and its restarts keep their leader epochs.
            let record = MetadataRecord::NodeRegistered {
                node_id: args.node_id,
                host: args.advertised_host.clone(),
                port: args.advertised_port,
                incarnation: 0,
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
        args.producer_ids
            .publish(&image.producers, image.version, producer_next);
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
            log,
            image,
            publish,
            publishes: true,
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
            let outcome = match state.lead().await {
                Ok(()) => state.init_producer_id(current).await,
                Err(e) => Err(e),
            };
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
            ControllerMsg::RegisterNode { .. } => "RegisterNode",
            ControllerMsg::AlterIsr { .. } => "AlterIsr",
            ControllerMsg::ElectLeaders { .. } => "ElectLeaders",
            ControllerMsg::AlterPartitionReassignments { .. } => "AlterPartitionReassignments",
            ControllerMsg::SetFencing { .. } => "SetFencing",
            ControllerMsg::InitProducerId { .. } => unreachable!("answered above"),
        };
        let reply = match &msg {
            ControllerMsg::CreateTopic { reply, .. }
            | ControllerMsg::DeleteTopic { reply, .. }
            | ControllerMsg::AlterConfigs { reply, .. }
            | ControllerMsg::CreatePartitions { reply, .. }
            | ControllerMsg::RegisterNode { reply, .. }
            | ControllerMsg::AlterIsr { reply, .. }
            | ControllerMsg::ElectLeaders { reply, .. }
            | ControllerMsg::AlterPartitionReassignments { reply, .. }
            | ControllerMsg::SetFencing { reply, .. } => reply,
            ControllerMsg::InitProducerId { .. } => unreachable!("answered above"),
        };
        if !reply.take() {
            // Withdrawn by its handle: its deadline passed while it waited here.
            state.stats.handled();
            return Ok(());
        }
        if let Err(e) = state.lead().await {
            let mut reply = match msg {
                ControllerMsg::CreateTopic { reply, .. }
                | ControllerMsg::DeleteTopic { reply, .. }
                | ControllerMsg::AlterConfigs { reply, .. }
                | ControllerMsg::CreatePartitions { reply, .. }
                | ControllerMsg::RegisterNode { reply, .. }
                | ControllerMsg::AlterIsr { reply, .. }
                | ControllerMsg::ElectLeaders { reply, .. }
                | ControllerMsg::AlterPartitionReassignments { reply, .. }
                | ControllerMsg::SetFencing { reply, .. } => reply,
                ControllerMsg::InitProducerId { .. } => unreachable!("answered above"),
            };
            tracing::info!(error = %e, "metadata change refused: not the controller");
            reply.send(Err(e));
            state.stats.handled();
            return Ok(());
        }
        let (outcome, mut reply) = match msg {
            ControllerMsg::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
                internal,
                mut reply,
            } => (
                state
                    .create_topic(
                        NewTopic {
                            name,
                            partitions,
                            replication_factor,
                            configs,
                            validate_only,
                            internal,
                        },
                        &mut reply,
                    )
                    .await,
                reply,
            ),
            ControllerMsg::DeleteTopic { name, mut reply } => {
                (state.delete_topic(name, &mut reply).await, reply)
            }
            ControllerMsg::AlterConfigs {
                topic,
                set,
                removed,
                validate_only,
                mut reply,
            } => (
                state
                    .alter_configs(topic, set, removed, validate_only, &mut reply)
                    .await,
                reply,
            ),
            ControllerMsg::CreatePartitions {
                topic,
                partitions,
                validate_only,
                mut reply,
            } => (
                state
                    .create_partitions(topic, partitions, validate_only, &mut reply)
                    .await,
                reply,
            ),
            ControllerMsg::RegisterNode {
                node_id,
                host,
                port,
                incarnation,
                mut reply,
            } => (
                state
                    .register_node(
                        Registration {
                            node_id,
                            host,
                            port,
                            incarnation,
                        },
                        &mut reply,
                    )
                    .await,
                reply,
            ),
            ControllerMsg::SetFencing {
                fence,
                unfence,
                mut reply,
            } => (state.set_fencing(&fence, &unfence, &mut reply).await, reply),
            ControllerMsg::ElectLeaders {
                elections,
                preferred,
                outcomes,
                mut reply,
            } => (
                state
                    .elect_leaders(&elections, preferred, outcomes, &mut reply)
                    .await,
                reply,
            ),
            ControllerMsg::AlterPartitionReassignments {
                reassignments,
                outcomes,
                mut reply,
            } => (
                state
                    .alter_partition_reassignments(&reassignments, outcomes, &mut reply)
                    .await,
                reply,
            ),
            ControllerMsg::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
                mut reply,
            } => (
                state
                    .alter_isr(
                        IsrChange {
                            topic,
                            partition,
                            leader,
                            leader_epoch,
                            partition_epoch,
                            isr,
                        },
                        &mut reply,
                    )
                    .await,
                reply,
            ),
            ControllerMsg::InitProducerId { .. } => unreachable!("answered above"),
        };
        if let Err(e) = &outcome {
            tracing::info!(error = %e, "metadata change refused");
        }
        reply.send(outcome);
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
    /// If the request's deadline passes meanwhile, it is answered `TimedOut` then (as `change`,
    /// at the stage reached) and the commit still runs to its end.
    async fn commit(
        &mut self,
        records: Vec<MetadataRecord>,
        reply: &mut Reply,
        change: Option<Change>,
    ) -> Result<(), ControllerError> {
        let appending = self.log.append(records.clone());
        let built = match &change {
            Some(change) => {
                reply
                    .finish_by_deadline(appending, change, TimeoutStage::Committing)
                    .await?
            }
            None => appending.await?,
        };
        let shared = match built {
            // The log built the image (Raft's state machine, which publishes it too).
            Some(image) => {
                self.image = (*image).clone();
                image
            }
            None => {
                for record in &records {
                    self.image.apply(record);
                }
                Arc::new(self.image.clone())
            }
        };
        if self.publishes {
            self.publish.send_replace(Arc::clone(&shared));
        } else {
            // The cluster's publisher carries the image to the node's watch; answer only once
            // it is there, so that a client reading metadata from this node right after sees
            // its change. The publisher follows the same committed log, so it gets there.
            let version = shared.version;
            let mut published = self.publish.subscribe();
            let waiting = published.wait_for(|image| image.version >= version);
            if tokio::time::timeout(PUBLISHED_WAIT_MAX, waiting)
                .await
                .is_err()
            {
                tracing::warn!(
                    version,
                    "the committed image did not reach the node in time"
                );
            }
        }
        let applying = self.applier.apply(shared);
        match &change {
            Some(change) => {
                reply
                    .finish_by_deadline(applying, change, TimeoutStage::Applying)
                    .await;
            }
            None => applying.await,
        }
        Ok(())
    }

    /// Makes sure this node leads the metadata log and holds every committed change before it
    /// decides one. After a change of leader the image is the committed one, and producer ids
    /// continue past every block reserved so far: which ids of an earlier controller's block
    /// were handed out is not written down, so its rest is skipped.
    async fn lead(&mut self) -> Result<(), ControllerError> {
        if let Some(image) = self.log.lead(self.image.version).await? {
            self.image = (*image).clone();
            self.producer_next = self.producer_next.max(self.image.producers.reserved_end);
            self.producer_ids.publish(
                &self.image.producers,
                self.image.version,
                self.producer_next,
            );
        }
        Ok(())
    }

    /// Records where clients reach node `node_id` and which run of it this is, unless the
    /// image says so already. A new incarnation comes with a new leader epoch for every
    /// replicated partition the node leads, in the same commit: the node may have lost
    /// batches it had not flushed, which followers copied, and writing other batches at those
    /// offsets under the same epoch would make the two logs diverge where truncation by epoch
    /// cannot see it. The node leads those partitions only once the metadata holds its
    /// incarnation (the applier holds them leaderless until then), so the new epoch is the
    /// first it leads them in.
    async fn register_node(
        &mut self,
        registration: Registration,
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        let Registration {
            node_id,
            host,
            port,
            incarnation,
        } = registration;
        let registered = self
            .image
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.host == host && n.port == port && n.incarnation == incarnation);
        if registered {
            return Ok(());
        }
        let mut records = vec![MetadataRecord::NodeRegistered {
            node_id,
            host: host.clone(),
            port,
            incarnation,
        }];
        for (name, topic) in &self.image.topics {
            for (index, p) in topic.partitions.iter().enumerate() {
                if p.leader == Some(node_id) && p.replicas.len() > 1 {
                    records.push(MetadataRecord::PartitionChange {
                        topic: name.clone(),
                        partition: u32::try_from(index).expect("partition indexes fit u32"),
                        leader: p.leader,
                        leader_epoch: p.leader_epoch + 1,
                        partition_epoch: p.partition_epoch + 1,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        target_replicas: p.target_replicas.clone(),
                    });
                }
            }
        }
        tracing::info!(
            node_id,
            %host,
            port,
            incarnation,
            partitions_led = records.len() - 1,
            "registering node"
        );
        self.commit(records, reply, None).await
    }

    /// Commits a leader's ISR change if the partition is still where the leader saw it: the
    /// same leader, leader epoch and partition epoch. A stale proposal is refused by doing
    /// nothing (the leader reads the partition's committed state in the answer). A node the
    /// controller fenced does not join an ISR (it may be cut off from the quorum, and an ISR
    /// member holds back every `acks=all` answer): it is left out of what is committed, and
    /// the partition epoch moves on even if nothing else does, which ends the proposal.
    async fn alter_isr(
        &mut self,
        change: IsrChange,
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        let IsrChange {
            topic,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            mut isr,
        } = change;
        let Some(current) = self
            .image
            .topics
            .get(&topic)
            .and_then(|t| t.partitions.get(partition as usize))
        else {
            return Err(ControllerError::UnknownTopic(format!(
                "{topic}-{partition}"
            )));
        };
        if current.leader != Some(leader)
            || current.leader_epoch != leader_epoch
            || current.partition_epoch != partition_epoch
        {
            tracing::info!(topic, partition, leader, leader_epoch, partition_epoch, current_leader = ?current.leader, current_leader_epoch = current.leader_epoch, current_partition_epoch = current.partition_epoch, "stale ISR proposal refused");
            return Ok(());
        }
        isr.sort_unstable();
        isr.dedup();
        if !isr.contains(&leader) {
            return Err(ControllerError::InvalidIsr(format!(
                "{topic}-{partition}: the ISR {isr:?} leaves out its leader {leader}"
            )));
        }
        if let Some(node) = isr.iter().find(|n| !current.replicas.contains(n)) {
            return Err(ControllerError::InvalidIsr(format!(
                "{topic}-{partition}: node {node} is not a replica"
            )));
        }
        let mut committed = current.isr.clone();
        committed.sort_unstable();
        if committed == isr {
            return Ok(());
        }
        // Fenced newcomers are left out, and what remains is committed even when it is the ISR
        // as it was (a new partition epoch, nothing else): the leader counts every replica it
        // proposed at a partition epoch in its high watermark until that epoch ends (a
        // proposal it sent twice might still commit), so a refusal that left the epoch as it
        // was would hold its acks=all answers on a dead node until that node came back.
        let fenced: Vec<u32> = isr
            .iter()
            .copied()
            .filter(|n| !committed.contains(n) && !self.image.is_live(*n))
            .collect();
        if !fenced.is_empty() {
            tracing::info!(
                topic,
                partition,
                ?fenced,
                "ISR expansion refused for fenced nodes; the rest of the proposal is committed"
            );
            isr.retain(|n| !fenced.contains(n));
        }
        tracing::info!(topic, partition, leader, leader_epoch, from = ?committed, to = ?isr, "committing an ISR change");
        // The ISR change that brings a reassignment's whole target in sync completes it in the
        // same record (`reassign`).
        let next = reassign::with_isr(&self.image, current, isr);
        if next.target_replicas.is_none() && current.target_replicas.is_some() {
            tracing::info!(topic, partition, replicas = ?next.replicas, leader = ?next.leader, "completing a reassignment");
        }
        self.commit(vec![next.record(&topic, partition)], reply, None)
            .await
    }

    /// Decides an ElectLeaders request on the committed image (`elections::decide`, whose doc
    /// says why a move to a live in-sync replica loses no acknowledged write), sends the
    /// outcomes, and commits every move in one metadata change. The old leaders learn of it
    /// from the image like everyone else: each becomes a follower in place and truncates, by
    /// leader epoch, what the new leader does not have (unacknowledged writes only).
    async fn elect_leaders(
        &mut self,
        requested: &[Election],
        preferred: bool,
        outcomes: oneshot::Sender<ElectionsWire>,
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        Self::check_deadline(reply, Change::ElectLeaders)?;
        let decision = elections::decide(&self.image, requested, preferred);
        let results = decision
            .outcomes
            .iter()
            .map(|outcome| match &outcome.result {
                Ok(elected) => ElectionResultWire {
                    topic: outcome.topic.clone(),
                    partition: outcome.partition,
                    error_code: 0,
                    message: String::new(),
                    leader: Some(elected.leader),
                    leader_epoch: elected.leader_epoch,
                },
                Err(e) => ElectionResultWire {
                    topic: outcome.topic.clone(),
                    partition: outcome.partition,
                    error_code: e.code().code(),
                    message: vltava_messages::protocol::ResponseError::new(e.code(), e.to_string())
                        .message,
                    leader: None,
                    leader_epoch: 0,
                },
            })
            .collect();
        // The handle reads the outcomes only after `reply` says the commit went through.
        let _ = outcomes.send(ElectionsWire {
            results,
            more: decision.more,
        });
        if decision.records.is_empty() {
            return Ok(());
        }
        tracing::info!(moves = ?decision.records, "committing leader elections");
        self.commit(decision.records, reply, Some(Change::ElectLeaders))
            .await
    }

    /// Decides an AlterPartitionReassignments request on the committed image
    /// (`reassign::decide`, whose doc says why no replica leaves before the target holds every
    /// acknowledged write), sends the outcomes, and commits every start in one metadata change.
    async fn alter_partition_reassignments(
        &mut self,
        requested: &[Reassignment],
        outcomes: oneshot::Sender<Vec<ReassignmentResultWire>>,
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        Self::check_deadline(reply, Change::AlterPartitionReassignments)?;
        let decision = reassign::decide(&self.image, requested);
        // The handle reads the outcomes only after `reply` says the commit went through.
        let _ = outcomes.send(decision.outcomes.iter().map(|o| o.to_wire()).collect());
        if decision.records.is_empty() {
            return Ok(());
        }
        tracing::info!(moves = ?decision.records, "committing partition reassignments");
        self.commit(
            decision.records,
            reply,
            Some(Change::AlterPartitionReassignments),
        )
        .await
    }

    /// Fences and unfences nodes as the lease supervisor decided, skipping what the image
    /// already says (a decision taken on an image that was not the newest).
    async fn set_fencing(
        &mut self,
        fence: &[u32],
        unfence: &[u32],
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        let mut records = Vec::new();
        for node_id in fence {
            if self.image.nodes.get(node_id).is_some_and(|n| !n.fenced) {
                tracing::warn!(node_id, "fencing node: its lease ran out");
                records.push(MetadataRecord::NodeFenced { node_id: *node_id });
            }
        }
        for node_id in unfence {
            if self.image.nodes.get(node_id).is_some_and(|n| n.fenced) {
                tracing::info!(node_id, "unfencing node: it renewed its lease");
                records.push(MetadataRecord::NodeUnfenced { node_id: *node_id });
            }
        }
        // Leadership and ISRs follow the fencing in the same commit, so no committed image
        // has a partition led by a fenced node (a controller that fails over mid-way leaves
        // nothing half-done); with no fencing change this finishes what an earlier
        // controller's commit may have left (`failover` module doc).
        let mut fenced = self.image.clone();
        for record in &records {
            fenced.apply(record);
        }
        let moves = failover::decide(&fenced);
        if !moves.is_empty() {
            tracing::info!(moves = ?moves, "committing leadership and ISR changes for fenced nodes");
        }
        records.extend(moves);
        if records.is_empty() {
            return Ok(());
        }
        self.commit(records, reply, None).await
    }

    /// A deadline that passed before the change was started: nothing is written.
    fn check_deadline(reply: &Reply, change: Change) -> Result<(), ControllerError> {
        if reply.passed() {
            return Err(TimedOut {
                change,
                stage: TimeoutStage::Queued,
            }
            .into());
        }
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
            // InitProducerId carries no deadline: its commit runs to its end.
            self.commit(grant.records, &mut Reply::without_deadline(), None)
                .await?;
            self.producer_next = grant.next;
            self.producer_ids.publish(
                &self.image.producers,
                self.image.version,
                self.producer_next,
            );
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

    /// Places partitions `from..to` of `topic`: their replicas go round-robin over the
    /// live (registered, unfenced) nodes from a random start, the first replica leads. Until replication
    /// (issue 13) a partition's followers copy nothing, so the ISR is its leader alone.
    fn partition_changes(
        &self,
        topic: &str,
        from: u32,
        to: u32,
        replication_factor: u16,
    ) -> Vec<MetadataRecord> {
        let nodes: Vec<u32> = self
            .image
            .nodes
            .values()
            .filter(|n| !n.fenced)
            .map(|n| n.node_id)
            .collect();
        if nodes.is_empty() {
            return Vec::new();
        }
        let start = (uuid::Uuid::new_v4().as_u128() % nodes.len() as u128) as usize;
        let factor = usize::from(replication_factor).clamp(1, nodes.len());
        (from..to)
            .map(|partition| {
                let first = start + partition as usize;
                let replicas: Vec<u32> = (0..factor)
                    .map(|i| nodes[(first + i) % nodes.len()])
                    .collect();
                let leader = replicas[0];
                MetadataRecord::PartitionChange {
                    topic: topic.to_owned(),
                    partition,
                    leader: Some(leader),
                    leader_epoch: 0,
                    partition_epoch: 0,
                    // Every replica starts in sync: a new partition is empty on all of them.
                    // A follower that does not fetch leaves it after the lag time.
                    isr: replicas.clone(),
                    replicas,
                    target_replicas: None,
                }
            })
            .collect()
    }

    async fn create_topic(
        &mut self,
        topic: NewTopic,
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        let NewTopic {
            name,
            partitions,
            replication_factor,
            configs,
            validate_only,
            internal,
        } = topic;
        if !(internal && name.starts_with("__")) {
            check_topic_name(&name)?;
        }
        Self::check_partitions(partitions)?;
        let live = self.image.nodes.values().filter(|n| !n.fenced).count();
        if replication_factor == 0 || usize::from(replication_factor) > live {
            return Err(ControllerError::InvalidReplicationFactor {
                factor: replication_factor,
                reason: "must be between 1 and the number of live nodes",
            });
        }
        topic_config::parse(&configs)?;
        if self.image.topics.contains_key(&name) {
            return Err(ControllerError::TopicAlreadyExists(name));
        }
        if validate_only {
            return Ok(());
        }
        let change = Change::CreateTopic(name.clone());
        Self::check_deadline(reply, change.clone())?;
        let topic_id = uuid::Uuid::new_v4().to_string();
        let mut records = vec![MetadataRecord::TopicCreated {
            name: name.clone(),
            topic_id,
            partitions,
            replication_factor,
            configs,
        }];
        records.extend(self.partition_changes(&name, 0, partitions, replication_factor));
        tracing::info!(topic = %name, partitions, "creating topic");
        self.commit(records, reply, Some(change)).await
    }

    async fn delete_topic(
        &mut self,
        name: String,
        reply: &mut Reply,
    ) -> Result<(), ControllerError> {
        refuse_internal(&name)?;
        if !self.image.topics.contains_key(&name) {
            return Err(ControllerError::UnknownTopic(name));
        }
        let change = Change::DeleteTopic(name.clone());
        Self::check_deadline(reply, change.clone())?;
        tracing::info!(topic = %name, "deleting topic");
        self.commit(
            vec![MetadataRecord::TopicDeleted { name }],
            reply,
            Some(change),
        )
        .await
    }

    async fn alter_configs(
        &mut self,
        topic: String,
        set: BTreeMap<String, String>,
        removed: Vec<String>,
        validate_only: bool,
        reply: &mut Reply,
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
        // AlterTopicConfigs carries no timeout on the wire.
        self.commit(
            vec![MetadataRecord::TopicConfigChanged {
                topic,
                set,
                removed,
            }],
            reply,
            None,
        )
        .await
    }

    async fn create_partitions(
        &mut self,
        topic: String,
        partitions: u32,
        validate_only: bool,
        reply: &mut Reply,
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
        let change = Change::CreatePartitions(topic.clone());
        Self::check_deadline(reply, change.clone())?;
        let mut records = vec![MetadataRecord::PartitionsAdded {
            topic: topic.clone(),
            partitions,
        }];
        let factor = self.image.topics[&topic].replication_factor;
        records.extend(self.partition_changes(&topic, current, partitions, factor));
        self.commit(records, reply, Some(change)).await
    }
}

#[cfg(test)]
mod tests;
