//! vltava's actors: every long-lived piece of a node's state is owned by one of them.
//!
//! # Layout
//! - `directory`: the node's actor directory (id, kind, parent, status, counters), read by the
//!   admin endpoint without messaging actors.
//! - `partition`: the Partition actor and its handle: produce, fetch, list offsets, group
//!   commit, the high watermark.
//! - `partition_supervisor`: starts, stops and restarts Partition actors; the partition
//!   registry sessions route by.
//! - `producer_state`: idempotent-producer bookkeeping per partition.
//!
//! # Invariants
//! - Each log is owned by exactly one Partition actor; every call into it runs on tokio's
//!   blocking pool, never on a runtime worker.
//! - Every mailbox is bounded at its handle (`Overloaded` past the bound); replies travel on
//!   oneshots; the only back edge (a flush completion) is the consequence of an admitted
//!   request.

pub mod directory;
pub mod partition;
pub mod partition_supervisor;
pub mod producer_state;
