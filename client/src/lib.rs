//! The Rust client of vltava: connections with pipelined requests, cluster metadata, topic
//! and group administration, a batching idempotent producer, a consumer, and a consumer in
//! a consumer group.
//!
//! # Layout
//! - `connection`: one connection to one node: handshake, pipelined requests.
//! - `cluster`: metadata, leaders, a connection per node, refresh on stale metadata.
//! - `admin`: topic and consumer-group administration.
//! - `admin_http`: GETs on a node's admin HTTP endpoint (ADMIN.md).
//! - `partitioner`: the documented key hash (FNV-1a 32) and sticky partitioning.
//! - `producer`: batching by size and linger, ordered retries, idempotence.
//! - `consumer`: assigned partitions, seek, long-poll fetch.
//! - `coordinator`: finding a group's coordinator, retries with capped backoff.
//! - `group`: `GroupConsumer`: membership through a heartbeat task, reconciliation of the
//!   assignment, commits, topic patterns.
//! - `error`: `ClientError`.
//!
//! Binaries: `vltava` (the CLI) and `vltava-bench`.

pub mod admin;
pub mod admin_http;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod coordinator;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod producer;

pub use admin::Admin;
pub use cluster::Cluster;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, SeekTo};
pub use error::ClientError;
pub use group::{Assignor, GroupConfig, GroupConsumer, OffsetReset, RebalanceEvent, TopicPattern};
pub use producer::{Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
