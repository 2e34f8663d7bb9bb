//! vltava's actors: every long-lived piece of a node's state is owned by one of them.
//!
//! # Layout
//! - `directory`: the node's actor directory (id, kind, parent, status, counters), read by the
//!   admin endpoint without messaging actors.
//! - `metrics`: atomic latency histograms and request counters for the admin endpoint.
//! - `partition`: the Partition actor and its handle: produce, fetch, list offsets, group
//!   commit, the high watermark.
//! - `partition_supervisor`: starts, stops and restarts Partition actors; the partition
//!   registry sessions route by.
//! - `producer_state`: idempotent-producer bookkeeping per partition.
//! - `producer_ids`: producer ids and epochs node-wide: the InitProducerId decision, the
//!   metadata records' image, and the `ProducerRegistry` partitions check batches against.
//! - `metadata`: the `MetadataLog` trait, its single-node file implementation and the
//!   `MetadataImage` that committed records build.
//! - `controller`: the Controller, which checks and commits metadata changes.
//! - `applier`: the MetadataApplier, the only thing that starts or stops partitions.
//! - `topic_config`: topic config keys and their checks.
//! - `peer`: the links between nodes: a PeerLink per remote node (control and data
//!   connections, handshake, reconnection with back-off), the `PeerLinks` registry, and the
//!   peer listener that hands other nodes' requests to the node's `PeerService`.
//! - `log_limit`: per-kind budgets for the log lines clients can cause (per connection and per
//!   node), with counts of what was held back.
//!
//! # Invariants
//! - Each log is owned by exactly one Partition actor; every call into it runs on that
//!   partition's log thread, never on a runtime worker.
//! - Every mailbox is bounded at its handle (`Overloaded` past the bound); replies travel on
//!   oneshots; the only back edge (a flush completion) is the consequence of an admitted
//!   request.

pub mod applier;
pub mod client_session;
pub mod controller;
pub mod directory;
pub mod group_requests;
pub mod groups;
pub mod listener;
pub mod log_limit;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod partition_supervisor;
pub mod peer;
pub mod producer_ids;
pub mod producer_state;
pub mod topic_config;
