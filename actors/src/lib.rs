//! vltava's actors: every long-lived piece of a node's state is owned by one of them.
//!
//! # Layout (folders by concern; no import circles between them)
//! - `node`: the NodeSupervisor, which starts everything below and stops it in order.
//! - `session/`: the client edge: the listener, one session per connection (read loop, write
//!   loop, admission), one module per request family (`topics`, `produce`, `fetch`,
//!   `groups`), and `NodeServices`, what every session shares.
//! - `metadata/`: the metadata log and image, the Controller, topic configs, producer ids,
//!   and `metadata/raft`: the metadata log replicated by Raft (openraft): the log store and
//!   state machine over `Storage`, snapshots of the image, the `RaftTransport` seam for the
//!   peer links, `RaftMetadataLog` (the controller's log in a cluster), and an in-process
//!   transport for tests.
//! - `applier`: the MetadataApplier, the only thing that starts, stops or re-roles
//!   partitions (and loads offsets partitions into the group manager).
//! - `partition/`: the Partition actor, its handle and its log thread; the
//!   PartitionSupervisor and the registry sessions route by; idempotent-producer state; the
//!   sans-IO replica state machine (`replica_state`: role, epochs, ISR, high watermark; not
//!   wired into the actor yet); `data_dir`: partition directories (their names, the topic-id
//!   check before a log opens, their removal, and the sweep of those the image does not give
//!   this node).
//! - `groups/`: consumer groups: the GroupManager, one GroupCoordinator per group, the
//!   sans-IO group state machine, the assignors, and `offsets` (the partitions' offsets a
//!   coordinator reads for lag and resets: local ones from their Partition, others from their
//!   leader through the `RemoteOffsets` trait; and the answer to another node's request).
//! - `replication`: the `ReplicaManager`, the node's side of replication: one ReplicaFetcher
//!   task per leader node followed (registered in the directory with its `fetcher_gauges`),
//!   epoch-end questions, ISR proposals, and the leader's answers to followers' fetches.
//! - `directory`, `metrics`: the node's actor directory (id, kind, parent, status, counters,
//!   published gauges) and request metrics, read by the admin endpoint without messaging
//!   actors.
//! - `peer/`: the links between nodes: a PeerLink per remote node (control and data
//!   connections, handshake, reconnection with back-off), the `PeerLinks` registry, and the
//!   peer listener that hands other nodes' requests to the node's `PeerService`.
//! - `cluster`: what joins a node to a cluster (`--controller-quorum`): the `PeerService`
//!   that hands Raft requests to the node's Raft member, forwarded admin requests to its
//!   controller and PartitionOffsets to its partitions, `PeerRemoteOffsets` (the group
//!   coordinators' `RemoteOffsets` over the peer links), the `Forwarder` that sends admin requests to the controller on another
//!   node, the quorum's bootstrap, and the task that publishes each committed image to the
//!   node.
//! - `shutdown`: the node's shutdown signal, which every socket loop waits on.
//! - `log_limit`: per-kind budgets for the log lines clients can cause (per connection and per
//!   node), with counts of what was held back.
//!
//! Imports point one way: `node` → everything; `cluster` → `metadata`, `applier`, `peer`,
//! `groups` (the `RemoteOffsets` it implements and the PartitionOffsets answer it serves),
//! `partition`;
//! `session` → `groups`, `partition`,
//! `metadata`; `applier` → `groups`, `partition`, `metadata`; `groups` → `partition`,
//! `metadata`; `partition` → `metadata` (the producer-id registry it checks batches
//! against); `metadata` → `peer` only (Raft's transport rides the peer links; it reaches the applier
//! through `ImageApplier` and other nodes' controllers through `Forwarder`);
//! `peer` → none of them (the node gives it a `PeerService`); all may use `directory`,
//! `metrics`, `log_limit` and `shutdown`, which import none of them (the directory keeps a
//! peer link's gauges type-erased for that reason).
//!
//! # Invariants
//! - Each log is owned by exactly one Partition actor; every call into it runs on that
//!   partition's log thread (or, opening it, on tokio's blocking pool), never on a runtime
//!   worker.
//! - A partition never opens another topic's data under its name: its directory's
//!   `partition.metadata` must hold the image's topic id, or the directory is removed first.
//! - A stopped partition leaves nothing behind: no timer task, directory entry, registry
//!   slot or named actor (the admin endpoint's `/resources` counts them).
//! - Every mailbox is bounded at its handle (`Overloaded` past the bound); replies travel on
//!   oneshots; the only back edge (a flush completion) is the consequence of an admitted
//!   request.

pub mod applier;
pub mod cluster;
pub mod directory;
pub mod groups;
pub mod log_limit;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod peer;
pub mod replication;
pub mod session;
pub mod shutdown;
