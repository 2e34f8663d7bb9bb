//! vltava's wire vocabulary, shared by the broker, its storage and every client.
//!
//! This crate is sans-IO: it knows bytes, never sockets, files or runtimes. It is the only
//! crate whose types define a format that leaves the process (the wire, and the record-batch
//! bytes that storage keeps exactly as they came off the wire).
//!
//! # Layout
//! - `types`: the newtypes every other crate speaks in (`Offset`, `LeaderEpoch`, ...).
//! - `limits`: named bounds on batches and records, with the reasons for their values.
//! - `varint`: zig-zag variable-length integers used inside records.
//! - `batch`: the record-batch format: the fixed header, records, compression, validation,
//!   a builder for producers and a reader for consumers.
//! - `group_records`: the keys and values of the `__consumer_offsets` topic (offset commits,
//!   group settings) and the group-to-partition hash.
//! - `metadata_records`: the records of the cluster metadata log (topics, partitions, nodes).
//! - `protocol`: the client wire protocol: the 16-byte frame header and stream parser, the
//!   MessagePack request and response bodies, error codes, the hand-written fetch answer.
//! - `peer`: the peer protocol between nodes: the same frames with kinds of their own
//!   (0x4000 to 0x40FF), the peer handshake, ping, the Raft kinds with opaque payloads,
//!   replication (replica fetch, epoch ends), partition offsets, forwarded admin requests
//!   (ISR changes among them), lease renewals, and peer error codes.
//!
//! # Invariants
//! - A record batch is validated (length, magic, CRC-32C, attributes, record count and every
//!   record's framing) before anything trusts its contents; validation never allocates more
//!   than `limits::RECORDS_DECOMPRESSED_BYTES_MAX`.
//! - The CRC covers every byte after the `crc` field, so the fields the leader writes (base
//!   offset, batch length, partition leader epoch) never force it to be recomputed.

pub mod batch;
pub mod group_records;
pub mod limits;
pub mod metadata_records;
pub mod peer;
pub mod protocol;
pub mod types;
pub mod varint;

pub use batch::{
    BatchBuilder, BatchError, BatchHeader, BatchInfo, Compression, Record, RecordBatchRef,
    TimestampType,
};
pub use protocol::{
    ErrorCode, FrameHeader, ProtocolError, Request, RequestKind, Response, ResponseError,
};
pub use types::{LeaderEpoch, NodeId, Offset, PartitionId, ProducerEpoch, ProducerId, Sequence};
