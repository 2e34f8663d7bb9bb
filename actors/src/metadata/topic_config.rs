//! Topic configs: the string keys clients set (Kafka's names), checked and turned into the
//! log settings each partition runs with.

use std::collections::BTreeMap;

use vltava_messages::TimestampType;
use vltava_messages::limits::BATCH_BYTES_MAX;
use vltava_storage::LogConfig;
use vltava_storage::config::CleanupPolicy;
use vltava_storage::config::SEGMENT_BYTES_MIN;

/// Keys a topic may set, sorted by name: DescribeTopics lists them in this order (a test
/// checks it is sorted).
pub const TOPIC_CONFIG_KEYS: [&str; 11] = [
    "cleanup.policy",
    "delete.retention.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// A bad config key or value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic config {key}={value}: {reason}")]
pub struct TopicConfigError {
    pub key: String,
    pub value: String,
    pub reason: &'static str,
}

fn bad(key: &str, value: &str, reason: &'static str) -> TopicConfigError {
    TopicConfigError {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    }
}

/// A topic's effective settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub log: LogConfig,
    /// `delete` or `compact` (also in `log.cleanup_policy`).
    pub cleanup_policy: String,
    /// `min.insync.replicas` as set; `None`: a majority of the replicas
    /// (`min_insync_replicas_for`).
    pub min_insync_replicas: Option<u16>,
    /// `unclean.leader.election.enable`: whether a leader may be elected from outside the ISR
    /// (losing what only the ISR held). Off by default.
    pub unclean_leader_election: bool,
}

/// Checks every key and value and builds the effective settings over the defaults.
pub fn parse(configs: &BTreeMap<String, String>) -> Result<TopicConfig, TopicConfigError> {
    let mut log = LogConfig::default();
    let mut cleanup_policy = "delete".to_owned();
    let mut min_insync_replicas = None;
    let mut unclean_leader_election = false;
    for (key, value) in configs {
        let number = |v: &str| v.parse::<i64>().map_err(|_| bad(key, v, "not an integer"));
        match key.as_str() {
            "cleanup.policy" => {
                log.cleanup_policy = match value.as_str() {
                    "delete" => CleanupPolicy::Delete,
                    "compact" => CleanupPolicy::Compact,
                    _ => return Err(bad(key, value, "expected delete or compact")),
                };
                cleanup_policy.clone_from(value);
            }
            "delete.retention.ms" => {
                let ms = number(value)?;
                if ms < 0 {
                    return Err(bad(key, value, "expected 0 or more ms"));
                }
                log.delete_retention_ms = ms as u64;
            }
            "min.cleanable.dirty.ratio" => {
                let ratio: f64 = value
                    .parse()
                    .map_err(|_| bad(key, value, "expected a number from 0 to 1"))?;
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(bad(key, value, "expected a number from 0 to 1"));
                }
                log.cleanable_dirty_percent_min = (ratio * 100.0).round() as u8;
            }
            "retention.ms" => {
                log.retention_ms = match number(value)? {
                    -1 => None,
                    ms if ms > 0 => Some(ms as u64),
                    _ => {
                        return Err(bad(
                            key,
                            value,
                            "expected a positive number of ms, or -1 for no limit",
                        ));
                    }
                }
            }
            "retention.bytes" => {
                log.retention_bytes = match number(value)? {
                    -1 => None,
                    bytes if bytes > 0 => Some(bytes as u64),
                    _ => {
                        return Err(bad(
                            key,
                            value,
                            "expected a positive number of bytes, or -1 for no limit",
                        ));
                    }
                }
            }
            "segment.bytes" => {
                let bytes = number(value)?;
                if bytes < i64::from(SEGMENT_BYTES_MIN) || bytes > i64::from(u32::MAX) {
                    return Err(bad(key, value, "expected 65536 to 4294967295"));
                }
                log.segment_bytes_max = bytes as u32;
            }
            "segment.ms" => {
                let ms = number(value)?;
                if ms <= 0 {
                    return Err(bad(key, value, "expected a positive number of ms"));
                }
                log.segment_ms = ms as u64;
            }
            "min.insync.replicas" => {
                let n = number(value)?;
                if !(1..=i64::from(u16::MAX)).contains(&n) {
                    return Err(bad(key, value, "expected at least 1"));
                }
                min_insync_replicas = Some(n as u16);
            }
            "unclean.leader.election.enable" => {
                unclean_leader_election = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(key, value, "expected true or false")),
                }
            }
            "message.timestamp.type" => {
                log.timestamp_type = match value.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(bad(key, value, "expected CreateTime or LogAppendTime")),
                }
            }
            "max.message.bytes" => {
                let bytes = number(value)?;
                if bytes < 1 || bytes > i64::from(BATCH_BYTES_MAX) {
                    return Err(bad(key, value, "expected 1 to 4194304"));
                }
                log.batch_bytes_max = bytes as u32;
            }
            _ => return Err(bad(key, value, "unknown config key")),
        }
    }
    Ok(TopicConfig {
        log,
        cleanup_policy,
        min_insync_replicas,
        unclean_leader_election,
    })
}

/// Checks the keys of one topic's AlterTopicConfigs entry: a key may be set or deleted, not
/// both, since which would win depends only on the order they were applied in. (The values
/// are checked by `parse` on the merged result.)
///
/// # Errors
/// The first key named in both, as an invalid config.
pub fn check_alteration(
    set: &BTreeMap<String, String>,
    delete: &[String],
) -> Result<(), TopicConfigError> {
    match delete.iter().find(|key| set.contains_key(*key)) {
        Some(key) => Err(TopicConfigError {
            key: key.clone(),
            value: set[key].clone(),
            reason: "the key is both set and deleted",
        }),
        None => Ok(()),
    }
}

impl TopicConfig {
    /// The effective `min.insync.replicas` for a topic of `replication_factor` replicas: as
    /// set, or a majority of them.
    #[must_use]
    pub fn min_insync_replicas_for(&self, replication_factor: u16) -> u16 {
        self.min_insync_replicas
            .unwrap_or(replication_factor / 2 + 1)
    }

    /// The effective value of `key` for a topic of `replication_factor` replicas, written as a
    /// client sets it: setting every key to its value gives the same effective config. `None`
    /// for a key that is not a topic config.
    #[must_use]
    pub fn value(&self, key: &str, replication_factor: u16) -> Option<String> {
        let limit = |value: Option<u64>| value.map_or_else(|| "-1".to_owned(), |v| v.to_string());
        Some(match key {
            "cleanup.policy" => self.cleanup_policy.clone(),
            "delete.retention.ms" => self.log.delete_retention_ms.to_string(),
            "max.message.bytes" => self.log.batch_bytes_max.to_string(),
            "message.timestamp.type" => match self.log.timestamp_type {
                TimestampType::CreateTime => "CreateTime".to_owned(),
                TimestampType::LogAppendTime => "LogAppendTime".to_owned(),
            },
            // Kept in whole percent, so a ratio set with more digits reads back rounded.
            "min.cleanable.dirty.ratio" => {
                (f64::from(self.log.cleanable_dirty_percent_min) / 100.0).to_string()
            }
            "min.insync.replicas" => self.min_insync_replicas_for(replication_factor).to_string(),
            "unclean.leader.election.enable" => self.unclean_leader_election.to_string(),
            "retention.bytes" => limit(self.log.retention_bytes),
            "retention.ms" => limit(self.log.retention_ms),
            "segment.bytes" => self.log.segment_bytes_max.to_string(),
            "segment.ms" => self.log.segment_ms.to_string(),
            _ => return None,
        })
    }
}

/// One key of a topic's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedConfig {
    pub key: &'static str,
    /// The effective value (`TopicConfig::value`).
    pub value: String,
    /// Whether the topic leaves the key at the node's default.
    pub is_default: bool,
}

/// Every topic config key with its effective value, sorted by key, for a topic of
/// `replication_factor` replicas that sets `set`. Configs are checked before they are
/// committed, so `set` parses; if it ever did not, the defaults are reported (and the failure
/// logged) rather than no value.
#[must_use]
pub fn describe(set: &BTreeMap<String, String>, replication_factor: u16) -> Vec<DescribedConfig> {
    let config = parse(set).unwrap_or_else(|error| {
        tracing::error!(%error, "a committed topic config does not parse; describing defaults");
        parse(&BTreeMap::new()).expect("the defaults are valid")
    });
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|&key| DescribedConfig {
            key,
            value: config
                .value(key, replication_factor)
                .expect("every key in TOPIC_CONFIG_KEYS has a value"),
            is_default: !set.contains_key(key),
        })
        .collect()
}

#[cfg(test)]
mod tests;
