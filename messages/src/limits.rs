//! Bounds on record batches. Every number here protects the broker from a peer that lies
//! about a length, and each says why it has its value.

/// The largest record batch, header included, that a producer may send or a log may store.
/// 4 MiB keeps one batch well inside the 8 MiB frame bound of the wire protocol while leaving
/// room for the 1 MiB batches that reach full disk bandwidth.
pub const BATCH_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// The most records one batch may hold. A record takes at least 7 bytes, so an uncompressed
/// 4 MiB batch holds at most about 600,000; compressed batches are bounded by this and by
/// `RECORDS_DECOMPRESSED_BYTES_MAX`.
pub const BATCH_RECORDS_MAX: u32 = 1 << 20;

/// The largest records section a compressed batch may inflate to. Decompression stops at this
/// bound, so a small "zip bomb" batch cannot make the broker allocate without limit.
pub const RECORDS_DECOMPRESSED_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The most headers one record may carry.
pub const RECORD_HEADERS_MAX: u32 = 1024;

const _: () = assert!((BATCH_BYTES_MAX as usize) <= RECORDS_DECOMPRESSED_BYTES_MAX);

// Wire protocol bounds. A frame's header is read before anything is allocated, its `length`
// is checked against `FRAME_BYTES_MAX`, the body is decoded from that slice only with bounded
// nesting, and the caps below are checked on the decoded request before the server acts on it.

/// The largest frame, its 16-byte header included, in either direction. 8 MiB holds one
/// produce request with a full 4 MiB batch plus room for more batches and the map around them,
/// and bounds what a connection's read buffer can be asked to grow to.
pub const FRAME_BYTES_MAX: u32 = 8 * 1024 * 1024;

/// The deepest nesting of maps and arrays in a body (the body's own map is level 1). The
/// deepest v1 body (a metadata answer: body, topics, topic, partitions, partition, error) needs
/// 6; 16 leaves room for later versions while keeping serde's recursion far from the stack's
/// end.
pub const BODY_DEPTH_MAX: u32 = 16;

/// The longest topic name, in bytes. Kafka's bound: `<topic>-<partition>` must stay a valid
/// file name (255 bytes) with room for a 5-digit partition number.
pub const TOPIC_NAME_BYTES_MAX: u32 = 249;

/// The most topics one request may name. Bounds the per-topic work of one request and keeps a
/// fetch answer's topic fields within `FETCH_TOPIC_FIELDS_BYTES_MAX` x this.
pub const TOPICS_PER_REQUEST_MAX: u32 = 1024;

/// The most partitions one produce, fetch or list-offsets request may name, over all its
/// topics. 4096 is more than one client fetches from one node in practice, and keeps the
/// per-partition fields of a fetch answer within 1.5 MiB of the frame.
pub const PARTITIONS_PER_REQUEST_MAX: u32 = 4096;

/// The most partitions a topic may have (CreateTopics, CreatePartitions). A whole topic's
/// metadata (about 40 bytes per partition with 3 replicas) then fits well inside one frame.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 4096;

/// The most config keys one topic entry may set or delete. A topic has a few dozen keys.
pub const CONFIGS_PER_TOPIC_MAX: u32 = 256;

/// The longest config key, in bytes. Keys are short dotted names (`retention.ms`).
pub const CONFIG_KEY_BYTES_MAX: u32 = 255;

/// The most replicas a partition may have while a reassignment moves it
/// (AlterPartitionReassignments): its target, and the target and the replicas it will drop
/// together. The ISR of a partition under reassignment may hold all of them, and an ISR
/// proposal between nodes lists at most 16 (`peer::ISR_NODES_MAX`); a controller quorum has at
/// most 7 members today, so 16 leaves room for nodes outside it.
pub const REASSIGNMENT_REPLICAS_MAX: u32 = 16;

/// The longest config value, in bytes. Values are numbers, durations and short lists.
pub const CONFIG_VALUE_BYTES_MAX: u32 = 4096;

/// The longest `client_id`, in bytes: a label for logs and metrics, not a payload.
pub const CLIENT_ID_BYTES_MAX: u32 = 255;

/// The longest software name or version string in a handshake, in bytes.
pub const SOFTWARE_FIELD_BYTES_MAX: u32 = 128;

/// The longest error message a server writes, in bytes (longer ones are cut). Part of the
/// per-partition budget of a fetch answer, `FETCH_PARTITION_FIELDS_BYTES_MAX`.
pub const ERROR_MESSAGE_BYTES_MAX: u32 = 128;

/// The longest `timeout_ms` an administrative or produce request may ask for: 5 minutes. A
/// server holds state for a waiting request, so every wait is bounded.
pub const TIMEOUT_MS_MAX: u32 = 5 * 60 * 1000;

/// The longest `max_wait_ms` of a fetch (a long poll): 1 minute. Clients poll again; a longer
/// hold only ties up the server's waiting state.
pub const FETCH_WAIT_MS_MAX: u32 = 60 * 1000;

/// The most record bytes a server puts in one fetch answer, over all partitions. Always at
/// least one whole batch, so a consumer never stalls behind a large one.
pub const FETCH_RECORDS_BYTES_MAX: u32 = 6 * 1024 * 1024;

/// An upper bound on the bytes of one partition's fields in a fetch answer, records excluded:
/// its map with every offset at its largest and an error with all extras and a message of
/// `ERROR_MESSAGE_BYTES_MAX` bytes (about 340 bytes; a test checks the bound).
pub const FETCH_PARTITION_FIELDS_BYTES_MAX: u32 = 384;

/// An upper bound on the bytes of one topic's fields in a fetch answer, partitions excluded:
/// its map, a name of `TOPIC_NAME_BYTES_MAX` bytes and the partitions array header.
pub const FETCH_TOPIC_FIELDS_BYTES_MAX: u32 = 288;

/// The bytes of a fetch answer around its topics: the body map, its `topics` key and the
/// array header.
pub const FETCH_BODY_FIELDS_BYTES_MAX: u32 = 16;

/// The most partitions one DescribeCluster answer lists, over all its topics. Topics are listed
/// whole, in order, at most `TOPICS_PER_REQUEST_MAX` of them, until the next one would pass
/// this; the answer counts the topics it left out (`topics_omitted`) and a client names them in
/// another request. 16,384 is four
/// topics at `PARTITIONS_PER_TOPIC_MAX`, so one whole topic always fits, and with
/// `CLUSTER_PARTITION_FIELDS_BYTES_MAX` per partition it takes at most 6.25 MiB of a frame.
pub const CLUSTER_PARTITIONS_LISTED_MAX: u32 = 16_384;

/// An upper bound on the bytes of one partition in a DescribeCluster answer: its map with
/// every number at its largest and 32 replicas, all in sync (about 390 bytes; a test checks
/// the bound). A replica set is at most the cluster's nodes, and a controller quorum has at
/// most 7 members today, so 32 leaves room for nodes that are not quorum members.
pub const CLUSTER_PARTITION_FIELDS_BYTES_MAX: u32 = 400;

/// An upper bound on the bytes of one topic's fields in a DescribeCluster answer, partitions
/// excluded: its map, a name of `TOPIC_NAME_BYTES_MAX` bytes, `internal`, an error with a
/// message of `ERROR_MESSAGE_BYTES_MAX` bytes (an unknown topic named in the request) and the
/// partitions array header (about 520 bytes; a test checks the bound).
pub const CLUSTER_TOPIC_FIELDS_BYTES_MAX: u32 = 576;

/// The most led partitions one DescribeCluster answer gives replication progress for
/// (`replica_status`). A status costs up to `CLUSTER_REPLICA_STATUS_BYTES_MAX`, far more than
/// a partition's placement, so it has its own, smaller bound: 256 cover a node's leaderships
/// in a small cluster, and 1 MiB of them fits beside the largest listing in one frame.
pub const CLUSTER_REPLICA_STATUSES_LISTED_MAX: u32 = 256;

/// The most followers one replica status lists: 31 is the 32 replicas the partition budget
/// allows, less the leader.
pub const CLUSTER_REPLICA_FOLLOWERS_LISTED_MAX: u32 = 31;

/// An upper bound on the bytes of one replica status: its map with every number at its
/// largest, a topic name of `TOPIC_NAME_BYTES_MAX` bytes and 31 followers with every field
/// (about 3.9 KiB; a test checks the bound).
pub const CLUSTER_REPLICA_STATUS_BYTES_MAX: u32 = 4096;

/// What a DescribeCluster answer may take around its topics: the body's own fields (cluster
/// id, controller, versions, the Raft section) and the nodes, each a small map with a host of
/// at most 255 bytes. 64 KiB holds more than 200 nodes; a cluster's nodes are its quorum's
/// members, at most 7 today.
pub const CLUSTER_BODY_FIELDS_BYTES_MAX: u32 = 64 * 1024;

/// The longest consumer group id, in bytes.
pub const GROUP_ID_BYTES_MAX: u32 = 255;

/// The longest member id, instance id or assignor name, in bytes.
pub const GROUP_MEMBER_FIELD_BYTES_MAX: u32 = 255;

/// The most groups one DescribeGroups or DeleteGroups request may name.
pub const GROUPS_PER_REQUEST_MAX: u32 = 1024;

/// The longest a heartbeat may be parked (`max_wait_ms`): 1 minute, like a fetch's long poll.
pub const GROUP_WAIT_MS_MAX: u32 = 60 * 1000;

/// The longest free-text metadata kept with a committed offset, in bytes.
pub const OFFSET_METADATA_BYTES_MAX: u32 = 4096;

// Idempotent producers. The record batch header holds a producer's id, epoch and sequence
// numbers as Kafka's signed integers (i64, i16, i32), where -1 means "none"; the wire's
// unsigned `producer_id` and `producer_epoch` keep to the same ranges, so every value a node
// hands out fits the header and no value is read back as "none".

/// The largest producer id, 2^63 - 1: the batch header holds ids as an i64.
pub const PRODUCER_ID_MAX: u64 = i64::MAX as u64;

/// The largest producer epoch, 2^15 - 1: the batch header holds epochs as an i16. Bumping a
/// producer at this epoch gives it a new producer id at epoch 0 instead (PROTOCOL.md, 6.10).
pub const PRODUCER_EPOCH_MAX: u16 = i16::MAX as u16;

/// The largest sequence number, 2^31 - 1: the batch header holds sequences as an i32. The
/// sequence after it is 0.
pub const SEQUENCE_MAX: u32 = i32::MAX as u32;

const _: () = assert!(BATCH_BYTES_MAX <= FETCH_RECORDS_BYTES_MAX);
// A produce request carrying one batch of the largest size must fit in a frame, with room for
// the header and the map around the batch.
const _: () = assert!(
    FRAME_BYTES_MAX as u64
        >= crate::protocol::FRAME_HEADER_BYTES as u64 + BATCH_BYTES_MAX as u64 + 64 * 1024
);
// The largest fetch answer a server can build within its budgets fits in one frame, so the
// fetch writer never has to refuse one.
const _: () = assert!(
    crate::protocol::FRAME_HEADER_BYTES as u64
        + FETCH_BODY_FIELDS_BYTES_MAX as u64
        + TOPICS_PER_REQUEST_MAX as u64 * FETCH_TOPIC_FIELDS_BYTES_MAX as u64
        + PARTITIONS_PER_REQUEST_MAX as u64 * FETCH_PARTITION_FIELDS_BYTES_MAX as u64
        + FETCH_RECORDS_BYTES_MAX as u64
        <= FRAME_BYTES_MAX as u64
);
// A topic name fits in the topic fields budget (map, keys, str8 header, array32 header).
const _: () = assert!(TOPIC_NAME_BYTES_MAX + 32 <= FETCH_TOPIC_FIELDS_BYTES_MAX);
// An error message fits in the partition fields budget with the rest of the map.
const _: () = assert!(ERROR_MESSAGE_BYTES_MAX + 224 <= FETCH_PARTITION_FIELDS_BYTES_MAX);
// The largest DescribeCluster answer a node can build within its budgets (every topic a
// request may name, each with an error, and the most partitions listed) fits in one frame, so
// the answer never fails to encode.
const _: () = assert!(
    crate::protocol::FRAME_HEADER_BYTES as u64
        + CLUSTER_BODY_FIELDS_BYTES_MAX as u64
        + TOPICS_PER_REQUEST_MAX as u64 * CLUSTER_TOPIC_FIELDS_BYTES_MAX as u64
        + CLUSTER_PARTITIONS_LISTED_MAX as u64 * CLUSTER_PARTITION_FIELDS_BYTES_MAX as u64
        + CLUSTER_REPLICA_STATUSES_LISTED_MAX as u64 * CLUSTER_REPLICA_STATUS_BYTES_MAX as u64
        <= FRAME_BYTES_MAX as u64
);
const _: () = assert!(CLUSTER_PARTITIONS_LISTED_MAX >= PARTITIONS_PER_TOPIC_MAX);
