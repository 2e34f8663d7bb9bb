//! `vltava-node dump-log` against real segment files: a healthy one, and one with a flipped
//! byte, which must be flagged and make the command exit non-zero.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vltava_messages::{BatchBuilder, Compression, LeaderEpoch};
use vltava_storage::{Log, LogConfig, RealStorage};

fn write_log(dir: &Path) {
    let mut log = Log::open(Arc::new(RealStorage), dir, LogConfig::default(), 0).unwrap();
    for i in 0..3i64 {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(
            Some(b"user-7"),
            Some(format!("hello {i}").as_bytes()),
            &[("source", b"test")],
            1_700_000_000_000 + i,
        );
        builder.push(None, Some(&[0xff, 0x00]), &[], 1_700_000_000_001 + i);
        log.append_as_leader(&mut builder.build(), LeaderEpoch(3), 0)
            .unwrap();
    }
    log.close().unwrap();
}

fn dump(path: &Path, records: bool) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vltava-node"));
    command.arg("dump-log").arg(path);
    if records {
        command.arg("--records");
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[test]
fn dump_log_prints_batches_and_records() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let segment = dir.path().join("00000000000000000000.log");
    let (code, out) = dump(&segment, false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("baseOffset: 0 lastOffset: 1 count: 2 leaderEpoch: 3"),
        "{out}"
    );
    assert!(out.contains("baseOffset: 4 lastOffset: 5"), "{out}");
    assert!(out.contains("position: 0 "), "{out}");
    assert_eq!(out.matches("crcValid: true").count(), 3, "{out}");
    assert!(out.contains("batches: 3 records: 6 bad: 0"), "{out}");
    let (_, out) = dump(&segment, true);
    assert!(
        out.contains(
            "| offset: 2 timestamp: 1700000000001 key: user-7 value: hello 1 headers: [source=test]"
        ),
        "{out}"
    );
    assert!(out.contains("key: null value: 0xff00"), "{out}");
}

#[test]
fn dump_log_flags_a_corrupt_batch_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let segment = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let (code, out) = dump(&segment, true);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("crcValid: false"), "{out}");
    assert!(out.contains("bad: 1"), "{out}");
}

#[test]
fn dump_log_of_a_missing_file_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_vltava-node"))
        .args(["dump-log", "/nonexistent/00000000000000000000.log"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("vltava-node: cannot dump"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
