//! The cluster metadata: the log of records behind the `MetadataLog` trait (a local file on
//! one node; the Raft log in a cluster), the image those records build, which the controller
//! publishes to everyone who routes by it, and the actors that change and apply it.
//!
//! # Layout
//! - `log`: the `MetadataLog` trait and the single-node `FileMetadataLog`.
//! - `image`: `MetadataImage` (nodes, topics, partitions, producer ids), built by applying
//!   committed records.
//! - `controller`: the Controller, which checks and commits metadata changes, and answers
//!   InitProducerId.
//! - `ImageApplier`: the seam through which the Controller has the node brought in line with
//!   a new image (the MetadataApplier, outside this folder, implements it).
//! - `elections`: the controller's decision on ElectLeaders (who may lead, what is committed),
//!   sans IO, with why a move to an in-sync replica loses nothing acknowledged.
//! - `failover`: the controller's supervision of leadership when nodes are fenced (new
//!   leaders from the ISR, ISRs without fenced nodes), sans IO.
//! - `reassign`: the controller's decisions on AlterPartitionReassignments (a move's start,
//!   its completion when an ISR change brings the whole target in sync), sans IO, with why
//!   no replica leaves before the target holds every acknowledged write.
//! - `topic_config`: topic config keys, their checks and effective values.
//! - `producer_ids`: producer-id blocks and epochs, and the node-wide registry partitions
//!   check idempotent batches against.
//! - `freshness`: `MetadataFreshness`, whether a cluster node's lease with the controller is
//!   current (renewed by `cluster::leases`), which sessions check before answering metadata.
//!
//! **Invariant:** nothing here imports `session`, `partition`, `groups` or the applier:
//! requests reach the controller through its handle, the image travels on a watch channel,
//! and the controller reaches the applier only through `ImageApplier`.

pub mod controller;
pub mod elections;
pub mod failover;
pub mod freshness;
mod image;
mod log;
pub mod producer_ids;
pub mod raft;
pub mod reassign;
pub mod topic_config;

pub use image::{MetadataImage, NodeImage, PartitionImage, TopicImage};
pub use log::{FileMetadataLog, MetadataError, MetadataLog};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Brings the node in line with a committed image (starts, stops and re-roles partitions).
/// The Controller awaits it after each commit on one node, so a created topic serves at once;
/// a trait, so that this folder does not depend on the partitions and groups it drives.
pub trait ImageApplier: Send + Sync + std::fmt::Debug + 'static {
    /// Returns once the node is in line with `image`.
    fn apply(&self, image: Arc<MetadataImage>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
