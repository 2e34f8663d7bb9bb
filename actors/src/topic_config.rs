//! Topic configs: the string keys clients set (Kafka's names), checked and turned into the
//! log settings each partition runs with.

use std::collections::BTreeMap;

use vltava_messages::TimestampType;
use vltava_messages::limits::BATCH_BYTES_MAX;
use vltava_storage::LogConfig;
use vltava_storage::config::CleanupPolicy;
use vltava_storage::config::SEGMENT_BYTES_MIN;

/// Keys a topic may set.
pub const TOPIC_CONFIG_KEYS: [&str; 10] = [
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "min.insync.replicas",
    "message.timestamp.type",
    "max.message.bytes",
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
    pub min_insync_replicas: u16,
}

/// Checks every key and value and builds the effective settings over the defaults.
pub fn parse(configs: &BTreeMap<String, String>) -> Result<TopicConfig, TopicConfigError> {
    let mut log = LogConfig::default();
    let mut cleanup_policy = "delete".to_owned();
    let mut min_insync_replicas = 1;
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
                min_insync_replicas = n as u16;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_configs_apply_and_bad_ones_name_the_key() {
        let good = BTreeMap::from([
            ("retention.ms".to_owned(), "60000".to_owned()),
            ("segment.bytes".to_owned(), "1048576".to_owned()),
            (
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned(),
            ),
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            ("delete.retention.ms".to_owned(), "1000".to_owned()),
            ("min.cleanable.dirty.ratio".to_owned(), "0.25".to_owned()),
        ]);
        let config = parse(&good).unwrap();
        assert_eq!(config.log.retention_ms, Some(60_000));
        assert_eq!(config.log.segment_bytes_max, 1 << 20);
        assert_eq!(config.log.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(config.cleanup_policy, "compact");
        assert_eq!(config.log.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(config.log.delete_retention_ms, 1000);
        assert_eq!(config.log.cleanable_dirty_percent_min, 25);
        for (key, value) in [
            ("delete.retention.ms", "-5"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("retention.ms", "soon"),
            ("segment.bytes", "10"),
            ("colour", "blue"),
            ("cleanup.policy", "shred"),
        ] {
            let error = parse(&BTreeMap::from([(key.to_owned(), value.to_owned())])).unwrap_err();
            assert_eq!(error.key, key);
        }
    }
}
