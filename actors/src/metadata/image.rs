//! The metadata image: every committed metadata record applied, immutable once published.

use std::collections::BTreeMap;

use vltava_messages::metadata_records::MetadataRecord;

use crate::metadata::producer_ids::{Incarnation, ProducerIdsImage};

/// A node as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeImage {
    pub node_id: u32,
    pub host: String,
    pub port: u16,
    /// The controller stopped hearing from the node for a whole lease: clients are not sent
    /// to it and placement skips it until it renews its lease.
    pub fenced: bool,
    /// The run of the node that registered last (drawn at each start; 0 for a single node).
    pub incarnation: u64,
}

/// A partition as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionImage {
    pub leader: Option<u32>,
    pub leader_epoch: u32,
    /// Grows with every committed change of the leader or the ISR (ISR proposals are
    /// compare-and-set on it).
    pub partition_epoch: u32,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
    /// The replicas a reassignment under way moves the partition to; `replicas` lists them
    /// first, then the ones that leave when it completes (`metadata::reassign`). `None`: no
    /// reassignment is under way.
    pub target_replicas: Option<Vec<u32>>,
}

impl PartitionImage {
    /// The record that makes a partition this one: a `PartitionChange` states the whole
    /// partition.
    #[must_use]
    pub fn record(&self, topic: &str, partition: u32) -> MetadataRecord {
        MetadataRecord::PartitionChange {
            topic: topic.to_owned(),
            partition,
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            replicas: self.replicas.clone(),
            isr: self.isr.clone(),
            target_replicas: self.target_replicas.clone(),
        }
    }
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
    /// Whether node `id` is registered and not fenced.
    #[must_use]
    pub fn is_live(&self, id: u32) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.fenced)
    }

    /// Records that rebuild this image when applied, in order, to an empty one: what a Raft
    /// snapshot stores, so that the snapshot is written in the metadata log's own vocabulary
    /// (and MessagePack stays in vltava-messages). Everything but `version`, `cluster_id` and
    /// `controller_id` comes back equal; those three are not the records' to say.
    #[must_use]
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for node in self.nodes.values() {
            records.push(MetadataRecord::NodeRegistered {
                node_id: node.node_id,
                host: node.host.clone(),
                port: node.port,
                incarnation: node.incarnation,
            });
            if node.fenced {
                records.push(MetadataRecord::NodeFenced {
                    node_id: node.node_id,
                });
            }
        }
        let untouched = PartitionImage {
            leader: None,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: Vec::new(),
            isr: Vec::new(),
            target_replicas: None,
        };
        for (name, topic) in &self.topics {
            records.push(MetadataRecord::TopicCreated {
                name: name.clone(),
                topic_id: topic.topic_id.clone(),
                partitions: u32::try_from(topic.partitions.len())
                    .expect("partition counts come from u32 records"),
                replication_factor: topic.replication_factor,
                configs: topic.configs.clone(),
            });
            for (index, partition) in topic.partitions.iter().enumerate() {
                // A partition no PartitionChange touched is what TopicCreated makes anyway.
                if *partition == untouched {
                    continue;
                }
                records.push(partition.record(
                    name,
                    u32::try_from(index).expect("partition indexes fit u32"),
                ));
            }
        }
        if self.producers.reserved_end > 0 {
            records.push(MetadataRecord::ProducerIdsReserved {
                end: self.producers.reserved_end,
            });
        }
        for (producer_id, incarnation) in &self.producers.incarnations {
            match incarnation {
                // Epoch 0 is every id's starting point: no record made it.
                Incarnation::Epoch(epoch) if epoch.0 == 0 => {}
                Incarnation::Epoch(epoch) => records.push(MetadataRecord::ProducerEpochBumped {
                    producer_id: *producer_id,
                    epoch: *epoch,
                }),
                Incarnation::Retired => records.push(MetadataRecord::ProducerIdRetired {
                    producer_id: *producer_id,
                }),
            }
        }
        records
    }

    /// Applies one committed record.
    pub fn apply(&mut self, record: &MetadataRecord) {
        self.version += 1;
        match record {
            MetadataRecord::NodeRegistered {
                node_id,
                host,
                port,
                incarnation,
            } => {
                // A node registering again (a new address) keeps its fencing: only the
                // controller's lease decisions change that.
                let fenced = self.nodes.get(node_id).is_some_and(|n| n.fenced);
                self.nodes.insert(
                    *node_id,
                    NodeImage {
                        node_id: *node_id,
                        host: host.clone(),
                        port: *port,
                        fenced,
                        incarnation: *incarnation,
                    },
                );
            }
            MetadataRecord::NodeFenced { node_id } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.fenced = true;
                }
            }
            MetadataRecord::NodeUnfenced { node_id } => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.fenced = false;
                }
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
                        partition_epoch: 0,
                        replicas: Vec::new(),
                        isr: Vec::new(),
                        target_replicas: None,
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
                            partition_epoch: 0,
                            replicas: Vec::new(),
                            isr: Vec::new(),
                            target_replicas: None,
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
                partition_epoch,
                replicas,
                isr,
                target_replicas,
            } => {
                if let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                {
                    *p = PartitionImage {
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                        partition_epoch: *partition_epoch,
                        replicas: replicas.clone(),
                        isr: isr.clone(),
                        target_replicas: target_replicas.clone(),
                    };
                }
            }
            MetadataRecord::ProducerIdsReserved { .. }
            | MetadataRecord::ProducerEpochBumped { .. }
            | MetadataRecord::ProducerIdRetired { .. } => self.producers.apply(record),
        }
    }
}
