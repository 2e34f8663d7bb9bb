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

/// PROTOCOL.md promises DescribeTopics configs "sorted by name"; the keys used to come in
/// the order they were declared.
#[test]
fn described_keys_are_every_key_once_sorted_by_name() {
    let keys: Vec<&str> = describe(&BTreeMap::new(), 3)
        .iter()
        .map(|c| c.key)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), TOPIC_CONFIG_KEYS.len());
}

/// `delete.retention.ms` and `min.cleanable.dirty.ratio` used to be described as "" when
/// left at their defaults. Every described value must be the effective one: setting every key
/// to its described value gives the same config, for the defaults and for a topic that sets
/// some keys.
#[test]
fn every_described_value_is_effective_and_gives_the_same_config() {
    let custom = BTreeMap::from([
        ("cleanup.policy".to_owned(), "compact".to_owned()),
        ("min.cleanable.dirty.ratio".to_owned(), "0.25".to_owned()),
        ("retention.ms".to_owned(), "-1".to_owned()),
        (
            "message.timestamp.type".to_owned(),
            "LogAppendTime".to_owned(),
        ),
    ]);
    for set in [BTreeMap::new(), custom] {
        let described = describe(&set, 3);
        let as_set: BTreeMap<String, String> = described
            .iter()
            .map(|c| (c.key.to_owned(), c.value.clone()))
            .collect();
        let (again, first) = (parse(&as_set).unwrap(), parse(&set).unwrap());
        assert_eq!(again.log, first.log, "{described:?}");
        assert_eq!(again.cleanup_policy, first.cleanup_policy);
        assert_eq!(again.unclean_leader_election, first.unclean_leader_election);
        // The default (a majority) reads back as the number it is for this topic.
        assert_eq!(
            again.min_insync_replicas_for(3),
            first.min_insync_replicas_for(3)
        );
        for c in &described {
            assert_eq!(c.is_default, !set.contains_key(c.key), "{c:?}");
        }
    }
    let defaults = describe(&BTreeMap::new(), 3);
    let value = |key| &defaults.iter().find(|c| c.key == key).unwrap().value;
    assert_eq!(value("delete.retention.ms"), "86400000");
    assert_eq!(value("min.cleanable.dirty.ratio"), "0.5");
    assert_eq!(value("message.timestamp.type"), "CreateTime");
    assert_eq!(value("min.insync.replicas"), "2", "a majority of 3");
    assert_eq!(value("unclean.leader.election.enable"), "false");
}

/// A key both set and deleted in one AlterTopicConfigs entry is refused (PROTOCOL.md 6.5);
/// it used to be applied, set after delete.
#[test]
fn a_key_both_set_and_deleted_is_refused() {
    let set = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
    let error = check_alteration(&set, &["segment.ms".into(), "retention.ms".into()]).unwrap_err();
    assert_eq!(error.key, "retention.ms");
    assert!(check_alteration(&set, &["segment.ms".into()]).is_ok());
    assert!(check_alteration(&BTreeMap::new(), &["retention.ms".into()]).is_ok());
}
