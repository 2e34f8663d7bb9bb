//! The metadata image: every committed metadata record applied, immutable once published.

use std::collections::BTreeMap;

use vltava_messages::metadata_records::MetadataRecord;

use crate::metadata::producer_ids::ProducerIdsImage;

/// A node as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeImage {
    pub node_id: u32,
    pub host: String,
    pub port: u16,
}

/// A partition as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionImage {
    pub leader: Option<u32>,
    pub leader_epoch: u32,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
}

/// A topic as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    pub topic_id: String,
    pub replication_factor: u16,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionImage>,
}

/// Everything the metadata log says, applied. Immutable once published; a change makes a new
/// image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub cluster_id: String,
    pub controller_id: Option<u32>,
    /// The number of records applied: grows with every change.
    pub version: u64,
    pub nodes: BTreeMap<u32, NodeImage>,
    pub topics: BTreeMap<String, TopicImage>,
    /// Reserved producer-id blocks and the epochs of bumped ids.
    pub producers: ProducerIdsImage,
}

impl MetadataImage {
    /// Applies one committed record.
    pub fn apply(&mut self, record: &MetadataRecord) {
        self.version += 1;
        match record {
            MetadataRecord::NodeRegistered {
                node_id,
                host,
                port,
            } => {
                self.nodes.insert(
                    *node_id,
                    NodeImage {
                        node_id: *node_id,
                        host: host.clone(),
                        port: *port,
                    },
                );
            }
            MetadataRecord::TopicCreated {
                name,
                topic_id,
                partitions,
                replication_factor,
                configs,
            } => {
                let partitions = (0..*partitions)
                    .map(|_| PartitionImage {
                        leader: None,
                        leader_epoch: 0,
                        replicas: Vec::new(),
                        isr: Vec::new(),
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicImage {
                        topic_id: topic_id.clone(),
                        replication_factor: *replication_factor,
                        configs: configs.clone(),
                        partitions,
                    },
                );
            }
            MetadataRecord::PartitionsAdded { topic, partitions } => {
                if let Some(t) = self.topics.get_mut(topic) {
                    while t.partitions.len() < *partitions as usize {
                        t.partitions.push(PartitionImage {
                            leader: None,
                            leader_epoch: 0,
                            replicas: Vec::new(),
                            isr: Vec::new(),
                        });
                    }
                }
            }
            MetadataRecord::TopicConfigChanged {
                topic,
                set,
                removed,
            } => {
                if let Some(t) = self.topics.get_mut(topic) {
                    for key in removed {
                        t.configs.remove(key);
                    }
                    t.configs
                        .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            MetadataRecord::TopicDeleted { name } => {
                self.topics.remove(name);
            }
            MetadataRecord::PartitionChange {
                topic,
                partition,
                leader,
                leader_epoch,
                replicas,
                isr,
            } => {
                if let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                {
                    *p = PartitionImage {
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        replicas: replicas.clone(),
                        isr: isr.clone(),
                    };
                }
            }
            MetadataRecord::ProducerIdsReserved { .. }
            | MetadataRecord::ProducerEpochBumped { .. }
            | MetadataRecord::ProducerIdRetired { .. } => self.producers.apply(record),
        }
    }
}
