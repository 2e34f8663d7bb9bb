use std::collections::BTreeMap;
use std::path::Path;

use super::*;

const OLD_ID: &str = "11111111-1111-4111-8111-111111111111";
const NEW_ID: &str = "22222222-2222-4222-8222-222222222222";

/// A map from (topic, partition) to topic id: what the metadata gives this node.
struct Assigned(BTreeMap<(String, u32), String>);

impl Assignment for Assigned {
    fn assigned(&self, topic: &str, partition: u32) -> Option<&str> {
        self.0
            .get(&(topic.to_owned(), partition))
            .map(String::as_str)
    }
}

fn assigned(entries: &[(&str, u32, &str)]) -> Assigned {
    Assigned(
        entries
            .iter()
            .map(|(t, p, id)| (((*t).to_owned(), *p), (*id).to_owned()))
            .collect(),
    )
}

/// A partition directory holding a segment file and, if `topic_id` is given, an id file.
fn partition_with(data_dir: &Path, name: &str, topic_id: Option<&str>) -> PathBuf {
    let dir = data_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00000000000000000000.log"), b"old data").unwrap();
    if let Some(id) = topic_id {
        record_topic_id(&RealStorage, &dir, id).unwrap();
    }
    dir
}

#[test]
fn names_parse_back_to_their_topic_and_partition() {
    assert_eq!(parse_partition_dir_name("orders-0"), Some(("orders", 0)));
    assert_eq!(parse_partition_dir_name("a-b-12"), Some(("a-b", 12)));
    assert_eq!(
        parse_partition_dir_name("__consumer_offsets-49"),
        Some(("__consumer_offsets", 49))
    );
    for name in [
        "__metadata",
        "orders",
        "orders-",
        "-3",
        "orders-01",
        "orders-x",
        "orders-0.deleted",
        ".hidden-1",
        "sp ace-1",
        "orders-99999999999",
    ] {
        assert_eq!(parse_partition_dir_name(name), None, "{name}");
    }
}

#[test]
fn a_directory_of_another_topic_id_is_removed_before_the_log_opens() {
    let data = tempfile::tempdir().unwrap();
    let dir = partition_with(data.path(), "t-0", Some(OLD_ID));
    let check = check_topic_id(&RealStorage, &dir, NEW_ID).unwrap();
    assert_eq!(
        check,
        TopicIdCheck::Replaced {
            old_topic_id: OLD_ID.to_owned()
        }
    );
    assert!(check.writes_id());
    assert!(!dir.exists(), "the old topic's files are gone");
    assert!(!data.path().join("t-0.deleted").exists());
}

#[test]
fn a_directory_of_the_same_topic_id_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let dir = partition_with(data.path(), "t-0", Some(NEW_ID));
    let check = check_topic_id(&RealStorage, &dir, NEW_ID).unwrap();
    assert_eq!(check, TopicIdCheck::Same);
    assert!(!check.writes_id());
    assert_eq!(
        std::fs::read(dir.join("00000000000000000000.log")).unwrap(),
        b"old data"
    );
}

#[test]
fn a_directory_without_an_id_file_is_adopted_and_a_missing_one_is_new() {
    let data = tempfile::tempdir().unwrap();
    let dir = partition_with(data.path(), "t-0", None);
    let check = check_topic_id(&RealStorage, &dir, NEW_ID).unwrap();
    assert_eq!(check, TopicIdCheck::Adopted);
    assert!(check.writes_id());
    assert!(dir.join("00000000000000000000.log").exists());
    let missing = data.path().join("t-1");
    assert_eq!(
        check_topic_id(&RealStorage, &missing, NEW_ID).unwrap(),
        TopicIdCheck::New
    );
    std::fs::create_dir(&missing).unwrap();
    assert_eq!(
        check_topic_id(&RealStorage, &missing, NEW_ID).unwrap(),
        TopicIdCheck::New
    );
}

/// A damaged id file keeps the partition from opening and removes nothing: its data may be
/// this topic's (only the small file rotted) or a deleted topic's, and neither serving nor
/// removing it is safe to decide alone.
#[test]
fn a_damaged_id_file_is_an_error_and_removes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = partition_with(data.path(), "t-0", Some(NEW_ID));
    let file = dir.join(partition_metadata::PARTITION_METADATA_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    assert!(matches!(
        check_topic_id(&RealStorage, &dir, NEW_ID),
        Err(StorageError::Corrupt { .. })
    ));
    assert!(dir.join("00000000000000000000.log").exists());
}

#[test]
fn the_sweep_removes_orphans_and_leaves_everything_else() {
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    // Kept: assigned with its id, assigned without an id file, assigned with a damaged one.
    let kept = partition_with(root, "t-0", Some(NEW_ID));
    let legacy = partition_with(root, "t-1", None);
    let damaged = partition_with(root, "t-2", Some(NEW_ID));
    std::fs::write(
        damaged.join(partition_metadata::PARTITION_METADATA_FILE),
        b"junk",
    )
    .unwrap();
    // Removed: another node's partition, a deleted topic's, a stale id, leftovers.
    let elsewhere = partition_with(root, "t-3", Some(NEW_ID));
    let deleted_topic = partition_with(root, "gone-0", None);
    let stale = partition_with(root, "u-0", Some(OLD_ID));
    let leftover = partition_with(root, "t-4.deleted", None);
    let empty = root.join("t-5");
    std::fs::create_dir(&empty).unwrap();
    // Never touched: the metadata, files, a directory that is no partition's.
    let metadata = root.join(METADATA_DIR);
    std::fs::create_dir(&metadata).unwrap();
    std::fs::write(metadata.join("metadata.log"), b"records").unwrap();
    std::fs::write(root.join("node.toml"), b"node_id = 1").unwrap();
    std::fs::write(root.join(".lock"), b"").unwrap();
    std::fs::write(root.join("x-1"), b"a file named like a partition").unwrap();
    let backup = root.join("backup-2");
    std::fs::create_dir(&backup).unwrap();
    std::fs::write(backup.join("notes.txt"), b"an operator's").unwrap();
    let other_leftover = root.join("photos.deleted");
    std::fs::create_dir(&other_leftover).unwrap();

    let assignment = assigned(&[
        ("t", 0, NEW_ID),
        ("t", 1, NEW_ID),
        ("t", 2, NEW_ID),
        ("u", 0, NEW_ID),
    ]);
    assert_eq!(sweep(root, &assignment), 5);
    for dir in [&kept, &legacy, &damaged] {
        assert!(
            dir.join("00000000000000000000.log").exists(),
            "{}",
            dir.display()
        );
    }
    for dir in [&elsewhere, &deleted_topic, &stale, &leftover, &empty] {
        assert!(!dir.exists(), "{}", dir.display());
    }
    assert_eq!(
        std::fs::read(metadata.join("metadata.log")).unwrap(),
        b"records"
    );
    assert!(root.join("node.toml").exists());
    assert!(root.join(".lock").exists());
    assert!(root.join("x-1").is_file());
    assert!(backup.join("notes.txt").exists());
    assert!(other_leftover.exists());
    // A second sweep finds nothing more to remove.
    assert_eq!(sweep(root, &assignment), 0);
}

/// With nothing assigned (every topic deleted), a sweep still keeps `__metadata`.
#[test]
fn the_sweep_never_touches_the_metadata_directory() {
    let data = tempfile::tempdir().unwrap();
    let metadata = data.path().join(METADATA_DIR);
    std::fs::create_dir_all(metadata.join("raft")).unwrap();
    std::fs::write(
        metadata.join("raft").join("00000000000000000000.log"),
        b"entries",
    )
    .unwrap();
    partition_with(data.path(), "t-0", Some(NEW_ID));
    assert_eq!(sweep(data.path(), &assigned(&[])), 1);
    assert!(
        metadata
            .join("raft")
            .join("00000000000000000000.log")
            .exists()
    );
}
