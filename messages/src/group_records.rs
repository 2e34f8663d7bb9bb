//! The records of the internal `__consumer_offsets` topic: what group coordinators write and
//! replay. Keys and values are MessagePack maps with a schema version `v`, so a later version
//! can add fields or change shape while old records stay readable. STORAGE.md documents them.
//!
//! - An offset commit: key `{"v": 1, "type": "offset", "group", "topic", "partition"}`, value
//!   `{"v": 1, "offset", "leader_epoch"?, "metadata", "commit_ms"}`.
//! - A group's settings and epochs: key `{"v": 1, "type": "group", "group"}`, value `{"v": 1,
//!   "assignor", "created_ms", "group_epoch"?, "assignment_epoch"?, "partition_counts"?}`.
//! - A member: key `{"v": 1, "type": "member", "group", "member"}`, value `{"v": 1,
//!   "member_epoch", "instance_id"?, "client_id", "host", "subscribed", "session_timeout_ms",
//!   "rebalance_timeout_ms", "assigned", "pending_revocation", "target", "departed"}`, so that
//!   a coordinator that takes the group over keeps its members, their epochs and assignments.
//! - A null value (a tombstone) deletes the key: an offset removed, a member gone, a group
//!   deleted. The topic is compacted, so only the newest value per key survives.
//!
//! Fields marked `?` may be absent (records written before they existed read as their
//! defaults); readers ignore fields they do not know, so adding one keeps version 1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{LeaderEpoch, Offset};

/// The schema version this build writes.
pub const GROUP_RECORD_VERSION: u8 = 1;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// FNV-1a, 32 bits: the hash PROTOCOL.md documents for keys, used here for group ids too.
#[must_use]
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The offsets-topic partition that holds a group's records: FNV-1a 32 of the group id's
/// UTF-8 bytes, modulo the partition count.
#[must_use]
pub fn offsets_partition_for(group_id: &str, partitions: u32) -> u32 {
    fnv1a_32(group_id.as_bytes()) % partitions.max(1)
}

/// A key of the offsets topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupRecordKey {
    Offset {
        group: String,
        topic: String,
        partition: u32,
    },
    Group {
        group: String,
    },
    /// One member of a group, by its member id.
    Member {
        group: String,
        member: String,
    },
}

/// The wire map of a key: one struct for both types, so any language reads it as a map.
#[derive(Serialize, Deserialize)]
struct KeyWire {
    v: u8,
    #[serde(rename = "type")]
    kind: String,
    group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    member: Option<String>,
}

/// Why a record of the offsets topic could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupRecordError {
    #[error("undecodable group record: {0}")]
    Decode(String),
    #[error("group record schema version {0} is newer than this build reads")]
    UnknownVersion(u8),
    #[error("unknown group record type {0:?}")]
    UnknownType(String),
}

impl GroupRecordKey {
    #[must_use]
    pub fn group(&self) -> &str {
        match self {
            GroupRecordKey::Offset { group, .. }
            | GroupRecordKey::Group { group }
            | GroupRecordKey::Member { group, .. } => group,
        }
    }

    /// The key's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self.clone() {
            GroupRecordKey::Offset {
                group,
                topic,
                partition,
            } => KeyWire {
                v: GROUP_RECORD_VERSION,
                kind: "offset".into(),
                group,
                topic: Some(topic),
                partition: Some(partition),
                member: None,
            },
            GroupRecordKey::Group { group } => KeyWire {
                v: GROUP_RECORD_VERSION,
                kind: "group".into(),
                group,
                topic: None,
                partition: None,
                member: None,
            },
            GroupRecordKey::Member { group, member } => KeyWire {
                v: GROUP_RECORD_VERSION,
                kind: "member".into(),
                group,
                topic: None,
                partition: None,
                member: Some(member),
            },
        };
        rmp_serde::to_vec_named(&wire).expect("a key map always encodes")
    }

    /// Reads a key.
    ///
    /// # Errors
    /// Undecodable bytes, a newer schema version, or an unknown type.
    pub fn decode(bytes: &[u8]) -> Result<GroupRecordKey, GroupRecordError> {
        let wire: KeyWire =
            rmp_serde::from_slice(bytes).map_err(|e| GroupRecordError::Decode(e.to_string()))?;
        if wire.v > GROUP_RECORD_VERSION {
            return Err(GroupRecordError::UnknownVersion(wire.v));
        }
        match (wire.kind.as_str(), wire.topic, wire.partition, wire.member) {
            ("offset", Some(topic), Some(partition), _) => Ok(GroupRecordKey::Offset {
                group: wire.group,
                topic,
                partition,
            }),
            ("group", _, _, _) => Ok(GroupRecordKey::Group { group: wire.group }),
            ("member", _, _, Some(member)) => Ok(GroupRecordKey::Member {
                group: wire.group,
                member,
            }),
            ("offset" | "member", _, _, _) => Err(GroupRecordError::Decode(format!(
                "a {} key without its fields",
                wire.kind
            ))),
            (other, _, _, _) => Err(GroupRecordError::UnknownType(other.to_owned())),
        }
    }
}

/// The value of an offset commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetValue {
    pub v: u8,
    pub offset: Offset,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<LeaderEpoch>,
    #[serde(default)]
    pub metadata: String,
    /// When the commit was made, Unix ms.
    pub commit_ms: u64,
}

/// The value of a group's settings and epochs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupValue {
    pub v: u8,
    pub assignor: String,
    pub created_ms: u64,
    /// The group epoch (membership, subscriptions and partition counts changes); 0 in records
    /// written before members were.
    #[serde(default)]
    pub group_epoch: i32,
    /// The epoch of the target assignment the members' `target` fields hold.
    #[serde(default)]
    pub assignment_epoch: i32,
    /// The partition counts of the subscribed topics that target was computed with, so that a
    /// coordinator taking the group over sees a change of them as one.
    #[serde(default)]
    pub partition_counts: BTreeMap<String, u32>,
}

/// Partitions by topic, as member records hold them: a map of topic name to partition indexes.
pub type PartitionsByTopic = BTreeMap<String, Vec<u32>>;

/// The value of a member record: what the coordinator knows of one member that a coordinator
/// taking the group over needs to keep it (the member's session restarts there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    pub v: u8,
    pub member_epoch: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub host: String,
    pub subscribed: Vec<String>,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    /// What the member may own now.
    #[serde(default)]
    pub assigned: PartitionsByTopic,
    /// Revoked, not yet given up.
    #[serde(default)]
    pub pending_revocation: PartitionsByTopic,
    /// The member's part of the target assignment (at the group's `assignment_epoch`).
    #[serde(default)]
    pub target: PartitionsByTopic,
    /// A static member that left for now (epoch -2).
    #[serde(default)]
    pub departed: bool,
}

fn decode_value<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, GroupRecordError> {
    let version: VersionOnly =
        rmp_serde::from_slice(bytes).map_err(|e| GroupRecordError::Decode(e.to_string()))?;
    if version.v > GROUP_RECORD_VERSION {
        return Err(GroupRecordError::UnknownVersion(version.v));
    }
    rmp_serde::from_slice(bytes).map_err(|e| GroupRecordError::Decode(e.to_string()))
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u8,
}

impl OffsetValue {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("an offset value always encodes")
    }

    /// # Errors
    /// Undecodable bytes or a newer schema version.
    pub fn decode(bytes: &[u8]) -> Result<OffsetValue, GroupRecordError> {
        decode_value(bytes)
    }
}

impl GroupValue {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a group value always encodes")
    }

    /// # Errors
    /// Undecodable bytes or a newer schema version.
    pub fn decode(bytes: &[u8]) -> Result<GroupValue, GroupRecordError> {
        decode_value(bytes)
    }
}

impl MemberValue {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a member value always encodes")
    }

    /// # Errors
    /// Undecodable bytes or a newer schema version.
    pub fn decode(bytes: &[u8]) -> Result<MemberValue, GroupRecordError> {
        decode_value(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let key = GroupRecordKey::Offset {
            group: "g".into(),
            topic: "orders".into(),
            partition: 3,
        };
        assert_eq!(GroupRecordKey::decode(&key.encode()).unwrap(), key);
        let key = GroupRecordKey::Group { group: "g".into() };
        assert_eq!(GroupRecordKey::decode(&key.encode()).unwrap(), key);
        let key = GroupRecordKey::Member {
            group: "g".into(),
            member: "m-1".into(),
        };
        assert_eq!(GroupRecordKey::decode(&key.encode()).unwrap(), key);
        let member = MemberValue {
            v: 1,
            member_epoch: 7,
            instance_id: Some("i".into()),
            client_id: "c".into(),
            host: "h".into(),
            subscribed: vec!["orders".into()],
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            assigned: [("orders".to_owned(), vec![0, 2])].into_iter().collect(),
            pending_revocation: [("orders".to_owned(), vec![1])].into_iter().collect(),
            target: [("orders".to_owned(), vec![0, 2])].into_iter().collect(),
            departed: false,
        };
        assert_eq!(MemberValue::decode(&member.encode()).unwrap(), member);
        let value = OffsetValue {
            v: 1,
            offset: Offset(42),
            leader_epoch: Some(LeaderEpoch(2)),
            metadata: "m".into(),
            commit_ms: 7,
        };
        assert_eq!(OffsetValue::decode(&value.encode()).unwrap(), value);
    }

    #[test]
    fn newer_versions_and_unknown_types_are_refused() {
        let wire = KeyWire {
            v: 9,
            kind: "offset".into(),
            group: "g".into(),
            topic: Some("t".into()),
            partition: Some(0),
            member: None,
        };
        let bytes = rmp_serde::to_vec_named(&wire).unwrap();
        assert_eq!(
            GroupRecordKey::decode(&bytes),
            Err(GroupRecordError::UnknownVersion(9))
        );
        let wire = KeyWire {
            v: 1,
            kind: "transaction".into(),
            group: "g".into(),
            topic: None,
            partition: None,
            member: None,
        };
        let bytes = rmp_serde::to_vec_named(&wire).unwrap();
        assert!(matches!(
            GroupRecordKey::decode(&bytes),
            Err(GroupRecordError::UnknownType(_))
        ));
        // A member key without its member id is unreadable rather than some other key.
        let wire = KeyWire {
            v: 1,
            kind: "member".into(),
            group: "g".into(),
            topic: None,
            partition: None,
            member: None,
        };
        let bytes = rmp_serde::to_vec_named(&wire).unwrap();
        assert!(matches!(
            GroupRecordKey::decode(&bytes),
            Err(GroupRecordError::Decode(_))
        ));
    }

    /// A group record written before members were persisted (no epochs, no counts) still
    /// reads, with the epochs at 0 and no counts.
    #[test]
    fn an_old_group_value_reads_with_default_epochs() {
        #[derive(Serialize)]
        struct OldGroupValue {
            v: u8,
            assignor: String,
            created_ms: u64,
        }
        let old = OldGroupValue {
            v: 1,
            assignor: "sticky".into(),
            created_ms: 5,
        };
        let read = GroupValue::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(
            read,
            GroupValue {
                v: 1,
                assignor: "sticky".into(),
                created_ms: 5,
                group_epoch: 0,
                assignment_epoch: 0,
                partition_counts: BTreeMap::new(),
            }
        );
    }

    #[test]
    fn group_ids_hash_with_the_documented_fnv1a() {
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
        assert_eq!(offsets_partition_for("foobar", 8), 0xbf9c_f968 % 8);
    }
}
