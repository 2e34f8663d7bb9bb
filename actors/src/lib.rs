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
//! - `metadata`: the `MetadataLog` trait, its single-node file implementation and the
//!   `MetadataImage` that committed records build.
//! - `controller`: the Controller, which checks and commits metadata changes.
//! - `applier`: the MetadataApplier, the only thing that starts or stops partitions.
//! - `topic_config`: topic config keys and their checks.
//!
//! # Invariants
//! - Each log is owned by exactly one Partition actor; every call into it runs on that
//!   partition's log thread (or, opening it, on tokio's blocking pool), never on a runtime
//!   worker.
//! - A stopped partition leaves nothing behind: no timer task, directory entry, registry
//!   slot or named actor (the admin endpoint's `/resources` counts them).
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
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod partition_supervisor;
pub mod producer_ids;
pub mod producer_state;
pub mod topic_config;
