//! The records of the cluster metadata log: what topics and partitions exist, who leads
//! them, with which configs, and which producer ids and epochs are handed out. The log is the
//! source of truth; every node's view of the cluster is these records applied in order.
//! Encoded as MessagePack maps with named fields, like the wire, so a later Raft log can carry
//! them unchanged.

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
        replicas: Vec<u32>,
        isr: Vec<u32>,
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
}

/// Why a metadata record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable metadata record: {reason}")]
pub struct MetadataRecordError {
    pub reason: String,
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
                replicas: vec![1],
                isr: vec![1],
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
        ];
        for record in records {
            assert_eq!(MetadataRecord::decode(&record.encode()).unwrap(), record);
        }
        assert!(MetadataRecord::decode(&[0xc1]).is_err());
    }
}
