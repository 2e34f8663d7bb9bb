//! The records of the cluster metadata log: what topics and partitions exist, who leads
//! them, with which configs, and which producer ids and epochs are handed out. The log is the
//! source of truth; every node's view of the cluster is these records applied in order.
//! Encoded as MessagePack maps with named fields, like the wire. In the cluster a
//! [`MetadataBatch`] of records is one entry of the Raft log, stored with its
//! [`METADATA_RECORDS_VERSION`] in front so that a build can tell records too new for it from
//! damaged ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{ProducerEpoch, ProducerId};

/// One change to the cluster's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// A node joined, or changed its advertised address.
    NodeRegistered {
        node_id: u32,
        host: String,
        port: u16,
        /// Which run of the node registered (a random number drawn at each start; 0 in
        /// records written before it existed: a new optional field, no version bump). A node
        /// leads its replicated partitions only once the metadata holds its own incarnation,
        /// committed together with their new leader epochs.
        #[serde(default)]
        incarnation: u64,
    },
    /// A topic was created with `partitions` partitions.
    TopicCreated {
        name: String,
        topic_id: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    },
    /// A topic grew to `partitions` partitions in all.
    PartitionsAdded { topic: String, partitions: u32 },
    /// A topic's configs changed: `set` keys take new values, `removed` keys go back to
    /// their defaults.
    TopicConfigChanged {
        topic: String,
        set: BTreeMap<String, String>,
        removed: Vec<String>,
    },
    /// A topic was deleted.
    TopicDeleted { name: String },
    /// A partition's leadership or replica set changed.
    PartitionChange {
        topic: String,
        partition: u32,
        leader: Option<u32>,
        leader_epoch: u32,
        /// Grows with every committed change of the partition's leader or ISR; an ISR
        /// proposal (the peer protocol's `AlterIsr`) names the one it is based on. 0 in records
        /// written before it existed (an optional field with a default: no version bump).
        #[serde(default)]
        partition_epoch: u32,
        replicas: Vec<u32>,
        isr: Vec<u32>,
        /// The replicas a reassignment under way moves the partition to (the operator's
        /// `AlterPartitionReassignments`), `None` when none is. While one is, `replicas` lists
        /// the target first and then the replicas it will drop, so that the new ones copy the
        /// log and join the ISR before the old ones leave; the change that completes it sets
        /// `replicas` to the target and this back to `None`. Every record states it, like the
        /// other fields: a `PartitionChange` is the partition's whole state. Absent in records
        /// written before it existed and in every record without a reassignment (an optional
        /// field with a default, left out when `None`: no version bump, and the bytes of such
        /// records are what they were).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_replicas: Option<Vec<u32>>,
    },
    /// Producer ids below `end` are reserved: ids are handed out from the block this record
    /// opens, so one record covers a block of new producers and no id is handed out twice,
    /// even across restarts. At most 2^63, one past the largest id.
    ProducerIdsReserved { end: u64 },
    /// A producer id's epoch was bumped to `epoch`: every older epoch of it is fenced. An id
    /// with no such record is at epoch 0.
    ProducerEpochBumped {
        producer_id: ProducerId,
        epoch: ProducerEpoch,
    },
    /// A producer id's epochs ran out and its producer moved to a new id: every epoch of this
    /// one is fenced.
    ProducerIdRetired { producer_id: ProducerId },
    /// The controller stopped hearing from a node for a whole lease: the node is fenced, left
    /// out of Metadata answers and of placement, until it renews its lease again. (Version 2.)
    NodeFenced { node_id: u32 },
    /// A fenced node renewed its lease: it is live again. (Version 2.)
    NodeUnfenced { node_id: u32 },
}

/// Why a metadata record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable metadata record: {reason}")]
pub struct MetadataRecordError {
    pub reason: String,
}

/// The version of the metadata-record encoding this build writes and the newest it reads.
/// A stored batch names its version before its body, so a build meeting one written by a newer
/// build (say, after a rollback) says so instead of calling it corrupt or misreading it.
/// Bump it whenever a record kind is added or a field changes meaning: older builds would
/// refuse a kind they do not know anyway, and the bump turns that refusal into a clear one.
/// (A new optional field with a default needs no bump: named maps let old builds skip it.)
/// Version 2 added `NodeFenced` and `NodeUnfenced`; version 1 batches read unchanged.
/// `PartitionChange`'s `partition_epoch` and `target_replicas` came later, without a bump:
/// records written before them read as epoch 0 and no reassignment, and an older build reading
/// a newer record skips the fields (one that meets a record of a reassignment under way reads
/// its `replicas`, target and leaving replicas together, which is what they are until it
/// completes).
pub const METADATA_RECORDS_VERSION: u16 = 2;

/// Bytes of the version prefix of an encoded [`MetadataBatch`].
pub const METADATA_BATCH_VERSION_BYTES: usize = 2;

/// Metadata records committed together, as one entry of the replicated metadata log: a node
/// applies all of them or none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBatch {
    pub records: Vec<MetadataRecord>,
}

/// What applying a committed [`MetadataBatch`] answers: the version of the metadata image
/// that includes it (the index of its log entry), so a caller can wait for an image at least
/// that new.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBatchApplied {
    pub version: u64,
}

/// Why stored metadata-batch bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MetadataBatchError {
    /// Written by a newer build: this one does not know the format and must not guess.
    #[error("metadata batch version {found} is newer than this build reads ({supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    /// Too short to hold the version prefix.
    #[error("metadata batch of {len} bytes is too short for its version prefix")]
    Truncated { len: usize },
    /// A version this build knows, but the body does not decode: damage, or a bug.
    #[error("malformed metadata batch: {0}")]
    Malformed(#[source] rmp_serde::decode::Error),
}

impl MetadataBatch {
    /// The batch's stored bytes: `version (u16, big-endian) | MessagePack array of records`
    /// (each a map with named fields).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = METADATA_RECORDS_VERSION.to_be_bytes().to_vec();
        rmp_serde::encode::write_named(&mut bytes, &self.records)
            .expect("metadata records always encode into a vector");
        bytes
    }

    /// Decodes bytes written by [`MetadataBatch::encode`] of this or an older build. A newer
    /// version is `UnsupportedVersion`, told apart from damage (`Truncated`, `Malformed`).
    pub fn decode(bytes: &[u8]) -> Result<MetadataBatch, MetadataBatchError> {
        let Some((version, body)) = bytes.split_first_chunk::<METADATA_BATCH_VERSION_BYTES>()
        else {
            return Err(MetadataBatchError::Truncated { len: bytes.len() });
        };
        let version = u16::from_be_bytes(*version);
        if version > METADATA_RECORDS_VERSION {
            return Err(MetadataBatchError::UnsupportedVersion {
                found: version,
                supported: METADATA_RECORDS_VERSION,
            });
        }
        // Version 0 was never written; it reads as version 1 would, and fails there if it is
        // not one.
        let records = rmp_serde::from_slice(body).map_err(MetadataBatchError::Malformed)?;
        Ok(MetadataBatch { records })
    }
}

impl MetadataRecord {
    /// The record's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("metadata records always encode")
    }

    /// Decodes a record's bytes.
    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, MetadataRecordError> {
        rmp_serde::from_slice(bytes).map_err(|e| MetadataRecordError {
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            MetadataRecord::NodeRegistered {
                node_id: 1,
                host: "127.0.0.1".into(),
                port: 9420,
                incarnation: 7,
            },
            MetadataRecord::TopicCreated {
                name: "orders".into(),
                topic_id: "id".into(),
                partitions: 3,
                replication_factor: 1,
                configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            },
            MetadataRecord::PartitionChange {
                topic: "orders".into(),
                partition: 2,
                leader: Some(1),
                leader_epoch: 0,
                partition_epoch: 3,
                replicas: vec![1],
                isr: vec![1],
                target_replicas: None,
            },
            MetadataRecord::PartitionChange {
                topic: "orders".into(),
                partition: 1,
                leader: Some(2),
                leader_epoch: 6,
                partition_epoch: 8,
                replicas: vec![3, 1, 2],
                isr: vec![1, 2],
                target_replicas: Some(vec![3, 1]),
            },
            MetadataRecord::TopicDeleted {
                name: "orders".into(),
            },
            MetadataRecord::ProducerIdsReserved { end: 2000 },
            MetadataRecord::ProducerEpochBumped {
                producer_id: ProducerId(1999),
                epoch: ProducerEpoch(32_767),
            },
            MetadataRecord::ProducerIdRetired {
                producer_id: ProducerId(1999),
            },
            MetadataRecord::NodeFenced { node_id: 3 },
            MetadataRecord::NodeUnfenced { node_id: 3 },
        ];
        for record in records {
            assert_eq!(MetadataRecord::decode(&record.encode()).unwrap(), record);
        }
        assert!(MetadataRecord::decode(&[0xc1]).is_err());
    }

    /// A `PartitionChange` written before `partition_epoch` existed reads as epoch 0, and one
    /// written now still reads for a build that does not know the field.
    #[test]
    fn a_partition_change_without_its_partition_epoch_reads_as_epoch_0() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(tag = "type")]
        enum Before {
            PartitionChange {
                topic: String,
                partition: u32,
                leader: Option<u32>,
                leader_epoch: u32,
                replicas: Vec<u32>,
                isr: Vec<u32>,
            },
        }
        let before = Before::PartitionChange {
            topic: "orders".into(),
            partition: 2,
            leader: Some(1),
            leader_epoch: 4,
            replicas: vec![1, 2],
            isr: vec![1],
        };
        let old_bytes = rmp_serde::to_vec_named(&before).unwrap();
        assert_eq!(
            MetadataRecord::decode(&old_bytes).unwrap(),
            MetadataRecord::PartitionChange {
                topic: "orders".into(),
                partition: 2,
                leader: Some(1),
                leader_epoch: 4,
                partition_epoch: 0,
                replicas: vec![1, 2],
                isr: vec![1],
                target_replicas: None,
            }
        );
        let now = MetadataRecord::PartitionChange {
            topic: "orders".into(),
            partition: 2,
            leader: Some(1),
            leader_epoch: 4,
            partition_epoch: 9,
            replicas: vec![1, 2],
            isr: vec![1],
            target_replicas: None,
        };
        let read_by_old: Before = rmp_serde::from_slice(&now.encode()).unwrap();
        assert_eq!(read_by_old, before);
    }

    /// A `PartitionChange` without a reassignment under way is written without
    /// `target_replicas`, byte for byte as before the field existed; one with a reassignment
    /// still reads for a build that does not know the field (it sees the combined replicas).
    #[test]
    fn a_partition_change_without_a_reassignment_is_written_as_before_target_replicas() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(tag = "type")]
        enum Before {
            PartitionChange {
                topic: String,
                partition: u32,
                leader: Option<u32>,
                leader_epoch: u32,
                partition_epoch: u32,
                replicas: Vec<u32>,
                isr: Vec<u32>,
            },
        }
        let before = Before::PartitionChange {
            topic: "orders".into(),
            partition: 0,
            leader: Some(1),
            leader_epoch: 2,
            partition_epoch: 3,
            replicas: vec![3, 1, 2],
            isr: vec![1, 2],
        };
        let settled = MetadataRecord::PartitionChange {
            topic: "orders".into(),
            partition: 0,
            leader: Some(1),
            leader_epoch: 2,
            partition_epoch: 3,
            replicas: vec![3, 1, 2],
            isr: vec![1, 2],
            target_replicas: None,
        };
        assert_eq!(settled.encode(), rmp_serde::to_vec_named(&before).unwrap());
        let moving = MetadataRecord::PartitionChange {
            topic: "orders".into(),
            partition: 0,
            leader: Some(1),
            leader_epoch: 2,
            partition_epoch: 3,
            replicas: vec![3, 1, 2],
            isr: vec![1, 2],
            target_replicas: Some(vec![3, 1]),
        };
        let read_by_old: Before = rmp_serde::from_slice(&moving.encode()).unwrap();
        assert_eq!(read_by_old, before);
        assert_eq!(MetadataRecord::decode(&moving.encode()).unwrap(), moving);
    }

    #[test]
    fn batches_round_trip_with_their_version_first() {
        let batch = MetadataBatch {
            records: vec![
                MetadataRecord::ProducerIdsReserved { end: 1000 },
                MetadataRecord::TopicDeleted { name: "t".into() },
            ],
        };
        let bytes = batch.encode();
        assert_eq!(bytes[..2], METADATA_RECORDS_VERSION.to_be_bytes());
        assert_eq!(MetadataBatch::decode(&bytes).unwrap(), batch);
        let empty = MetadataBatch::default();
        assert_eq!(MetadataBatch::decode(&empty.encode()).unwrap(), empty);
    }

    /// Batches written before version 2 (by a build without node fencing) read unchanged.
    #[test]
    fn a_version_1_batch_still_reads() {
        let batch = MetadataBatch {
            records: vec![MetadataRecord::ProducerIdsReserved { end: 1000 }],
        };
        let mut bytes = batch.encode();
        bytes[..2].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(MetadataBatch::decode(&bytes).unwrap(), batch);
    }

    #[test]
    fn a_newer_batch_version_is_unsupported_not_malformed() {
        let mut bytes = MetadataBatch::default().encode();
        bytes[..2].copy_from_slice(&(METADATA_RECORDS_VERSION + 1).to_be_bytes());
        // Whatever follows the version, this build must not try to read it.
        bytes.extend_from_slice(&[0xc1, 0xc1]);
        assert!(matches!(
            MetadataBatch::decode(&bytes),
            Err(MetadataBatchError::UnsupportedVersion { found, supported })
                if found == METADATA_RECORDS_VERSION + 1 && supported == METADATA_RECORDS_VERSION
        ));
    }

    #[test]
    fn a_damaged_batch_is_malformed_or_truncated() {
        assert!(matches!(
            MetadataBatch::decode(&[0]),
            Err(MetadataBatchError::Truncated { len: 1 })
        ));
        let mut bytes = MetadataBatch {
            records: vec![MetadataRecord::TopicDeleted { name: "t".into() }],
        }
        .encode();
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            MetadataBatch::decode(&bytes),
            Err(MetadataBatchError::Malformed(_))
        ));
        // A record kind this version does not have is damage, since a new kind bumps the
        // version.
        let mut unknown = METADATA_RECORDS_VERSION.to_be_bytes().to_vec();
        unknown.extend_from_slice(&[
            0x91, 0x81, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'N', b'e', b'w',
        ]);
        assert!(matches!(
            MetadataBatch::decode(&unknown),
            Err(MetadataBatchError::Malformed(_))
        ));
    }
}
