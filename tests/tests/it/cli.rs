//! The `vltava` CLI end to end against a real node: topics, produce from stdin, consume as
//! text and JSON, exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vltava_tests::{TestNode, binary};

fn vltava(node: &TestNode, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary("vltava"))
        .args(args)
        .env("VLTAVA_BOOTSTRAP", &node.addr)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn topics_produce_and_consume_through_the_cli() {
    let node = TestNode::start();
    let created = vltava(
        &node,
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
        None,
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let listed = vltava(&node, &["topic", "list", "--format", "json"], None);
    // The node's internal offsets topic is listed too, as Kafka lists its own.
    assert_eq!(
        stdout(&listed).trim(),
        "{\"name\":\"__consumer_offsets\",\"partitions\":8}\n{\"name\":\"cli\",\"partitions\":3}"
    );
    let described = vltava(
        &node,
        &["topic", "describe", "cli", "--format", "json"],
        None,
    );
    let json: serde_json::Value = serde_json::from_str(stdout(&described).trim()).unwrap();
    assert_eq!(json["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(json["configs"]["retention.ms"], "3600000");

    let produced = vltava(
        &node,
        &[
            "produce",
            "cli",
            "--key-separator",
            ":",
            "--header",
            "source=cli",
        ],
        Some("a:1\nb:2\na:3\n"),
    );
    assert!(produced.status.success(), "{}", stderr(&produced));
    let produced = vltava(
        &node,
        &["produce", "cli", "--partition", "2", "--acks", "1"],
        Some("plain\n"),
    );
    assert!(produced.status.success(), "{}", stderr(&produced));

    let consumed = vltava(
        &node,
        &[
            "consume",
            "cli",
            "--format",
            "json",
            "--max-messages",
            "4",
            "--timeout-ms",
            "10000",
        ],
        None,
    );
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    let lines: Vec<serde_json::Value> = stdout(&consumed)
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is only JSON"))
        .collect();
    assert_eq!(lines.len(), 4);
    let keyed: Vec<&serde_json::Value> = lines.iter().filter(|l| l["key"] == "a").collect();
    assert_eq!(keyed.len(), 2);
    assert_eq!(
        keyed[0]["partition"], keyed[1]["partition"],
        "same key, same partition"
    );
    assert_eq!(keyed[0]["value"], "1");
    assert_eq!(keyed[1]["value"], "3");
    assert_eq!(keyed[0]["headers"]["source"], "cli");
    for field in [
        "topic",
        "partition",
        "offset",
        "timestamp",
        "key",
        "value",
        "headers",
    ] {
        assert!(lines[0].get(field).is_some(), "json has {field}");
    }
    let text = vltava(
        &node,
        &[
            "consume",
            "cli",
            "--partition",
            "2",
            "--offset",
            "0",
            "--timeout-ms",
            "1500",
        ],
        None,
    );
    assert!(text.status.success());
    assert!(
        stdout(&text).lines().any(|l| l == "plain"),
        "{}",
        stdout(&text)
    );

    let altered = vltava(
        &node,
        &[
            "topic",
            "alter",
            "cli",
            "--partitions",
            "4",
            "--set",
            "segment.bytes=1048576",
        ],
        None,
    );
    assert!(altered.status.success(), "{}", stderr(&altered));
    let deleted = vltava(&node, &["topic", "delete", "cli"], None);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(
        stdout(&vltava(&node, &["topic", "list"], None)).trim(),
        "__consumer_offsets"
    );
}

#[test]
fn cli_exit_codes_say_what_went_wrong() {
    let node = TestNode::start();
    let missing = vltava(&node, &["topic", "describe", "nope"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).lines().count(),
        1,
        "one line: {}",
        stderr(&missing)
    );
    assert!(
        stderr(&missing).contains("UnknownTopic"),
        "{}",
        stderr(&missing)
    );
    let usage = vltava(&node, &["topic", "create"], None);
    assert_eq!(usage.status.code(), Some(2));
    let unreachable = Command::new(binary("vltava"))
        .args(["--bootstrap", "127.0.0.1:1", "topic", "list"])
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );
}

#[test]
fn compressed_batches_round_trip_through_the_cli() {
    let node = TestNode::start();
    assert!(
        vltava(&node, &["topic", "create", "cz"], None)
            .status
            .success()
    );
    for compression in ["lz4", "zstd", "none"] {
        let lines = format!("{compression}-1\n{compression}-2\n");
        let produced = vltava(
            &node,
            &["produce", "cz", "--compression", compression],
            Some(&lines),
        );
        assert!(produced.status.success(), "{}", stderr(&produced));
    }
    let bad = vltava(
        &node,
        &["produce", "cz", "--compression", "gzip"],
        Some("x\n"),
    );
    assert_eq!(bad.status.code(), Some(1));
    let consumed = vltava(
        &node,
        &[
            "consume",
            "cz",
            "--max-messages",
            "6",
            "--timeout-ms",
            "10000",
        ],
        None,
    );
    assert_eq!(
        stdout(&consumed).lines().collect::<Vec<_>>(),
        ["lz4-1", "lz4-2", "zstd-1", "zstd-2", "none-1", "none-2"]
    );
}

#[test]
fn admin_commands_print_the_actor_tree_and_one_actor() {
    let node = TestNode::start_with(&["--admin-token", "tok", "--offsets-topic-partitions", "1"]);
    let created = vltava(
        &node,
        &["topic", "create", "seen", "--partitions", "2"],
        None,
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let admin = [
        "admin",
        "--admin",
        node.admin_addr.as_str(),
        "--admin-token",
        "tok",
    ];

    let tree = vltava(&node, &[&admin[..], &["actors"]].concat(), None);
    assert!(tree.status.success(), "{}", stderr(&tree));
    let text = stdout(&tree);
    assert!(
        text.starts_with("n1/node  NodeSupervisor  running"),
        "{text}"
    );
    assert!(
        text.contains("└── n1/partitions  PartitionSupervisor")
            || text.contains("├── n1/partitions  PartitionSupervisor"),
        "{text}"
    );
    assert!(
        text.contains("    ├── n1/partition/seen-0  Partition  running"),
        "{text}"
    );
    assert!(
        text.contains("    └── n1/partition/seen-1  Partition  running"),
        "{text}"
    );

    let partitions = vltava(
        &node,
        &[
            &admin[..],
            &["actors", "--kind", "partition", "--format", "json"],
        ]
        .concat(),
        None,
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&partitions)).unwrap();
    assert_eq!(json["count"], 3);

    let one = vltava(
        &node,
        &[&admin[..], &["actor", "n1/partition/seen-1"]].concat(),
        None,
    );
    assert!(one.status.success(), "{}", stderr(&one));
    let text = stdout(&one);
    assert!(text.contains("kind: Partition"), "{text}");
    assert!(text.contains("  topic: seen"), "{text}");
    assert!(text.contains("  high_watermark: 0"), "{text}");

    let missing = vltava(
        &node,
        &[&admin[..], &["actor", "n1/nothing"]].concat(),
        None,
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
    let unauthorized = vltava(
        &node,
        &["admin", "actors", "--admin", node.admin_addr.as_str()],
        None,
    );
    // The connection flags may also follow the subcommand (issue 11): reaching the node
    // without its token is a 401, not a usage error.
    assert_eq!(unauthorized.status.code(), Some(1));
    assert!(stderr(&unauthorized).contains("401"));
    let unreachable = vltava(&node, &["admin", "--admin", "127.0.0.1:1", "actors"], None);
    assert_eq!(unreachable.status.code(), Some(3));
}

/// `vltava cluster describe` on a single node, which is no member of a metadata quorum: the
/// node, its controller (itself) and its topics, and no Raft section; a named topic that does
/// not exist exits 1 naming it, and the admin endpoint's `/cluster` has `raft` null too.
#[test]
fn cluster_describe_works_on_a_single_node_without_a_quorum() {
    let node = TestNode::start_with(&["--offsets-topic-partitions", "1"]);
    let created = vltava(
        &node,
        &["topic", "create", "seen", "--partitions", "2"],
        None,
    );
    assert!(created.status.success(), "{}", stderr(&created));

    let described = vltava(&node, &["cluster", "describe", "--format", "json"], None);
    assert!(described.status.success(), "{}", stderr(&described));
    let json: serde_json::Value = serde_json::from_str(stdout(&described).trim()).unwrap();
    assert!(
        json.get("raft").is_none(),
        "no quorum, no Raft section: {json}"
    );
    assert_eq!(json["node_id"], 1);
    assert_eq!(json["controller_id"], 1);
    assert!(!json["cluster_id"].as_str().unwrap().is_empty());
    assert!(json["metadata_version"].as_u64().is_some_and(|v| v >= 1));
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{json}");
    assert_eq!(
        format!(
            "{}:{}",
            nodes[0]["host"].as_str().unwrap(),
            nodes[0]["port"]
        ),
        node.addr
    );
    let names: Vec<&str> = json["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["__consumer_offsets", "seen"]);
    let seen = &json["topics"][1]["partitions"];
    assert_eq!(seen.as_array().unwrap().len(), 2);
    assert_eq!(seen[1]["leader"], 1);
    assert_eq!(seen[1]["replicas"], serde_json::json!([1]));
    assert!(json.get("topics_omitted").is_none(), "{json}");

    let text = vltava(&node, &["cluster", "describe", "--topic", "seen"], None);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(
        text.contains("raft: none (node 1 is a single node)"),
        "{text}"
    );
    assert!(
        text.contains("    partition: 1  leader: 1  leader_epoch: 0  replicas: 1  isr: 1"),
        "{text}"
    );
    assert!(
        !text.contains("__consumer_offsets"),
        "only the named topic: {text}"
    );

    let unknown = vltava(&node, &["cluster", "describe", "--topic", "nope"], None);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("cannot describe topic nope"),
        "{}",
        stderr(&unknown)
    );
    let bad_name = vltava(&node, &["cluster", "describe", "--topic", "not ok"], None);
    assert_eq!(bad_name.status.code(), Some(1));
    assert!(
        stderr(&bad_name).contains("invalid"),
        "{}",
        stderr(&bad_name)
    );

    let (status, body) = node.admin_get("/cluster");
    assert_eq!(status, 200, "{body}");
    let admin: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(admin["raft"].is_null(), "{admin}");
    assert_eq!(admin["topics"][1]["name"], "seen");
    assert_eq!(
        admin["topics"][1]["partitions"][0]["isr"],
        serde_json::json!([1])
    );
}

/// The committed offset and lag of partition 0 in `vltava group describe G --format json`.
fn group_offsets(node: &TestNode, group: &str) -> (Option<u64>, Option<u64>) {
    let described = vltava(
        node,
        &["group", "describe", group, "--format", "json"],
        None,
    );
    assert!(described.status.success(), "{}", stderr(&described));
    let json: serde_json::Value = serde_json::from_str(stdout(&described).trim()).unwrap();
    let group = if json["groups"].is_array() {
        json["groups"][0].clone()
    } else {
        json
    };
    let p0 = group["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"] == 0)
        .cloned()
        .unwrap_or_default();
    (p0["committed_offset"].as_u64(), p0["lag"].as_u64())
}

#[test]
fn group_commands_list_describe_reset_and_delete() {
    let node = TestNode::start();
    let created = vltava(
        &node,
        &["topic", "create", "gcli", "--partitions", "1"],
        None,
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let events: String = (0..10).map(|i| format!("e{i}\n")).collect();
    assert!(
        vltava(&node, &["produce", "gcli"], Some(&events))
            .status
            .success()
    );
    let consumed = vltava(
        &node,
        &[
            "consume",
            "gcli",
            "--group",
            "gc",
            "--max-messages",
            "10",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(stdout(&consumed).lines().count(), 10);

    let listed = vltava(&node, &["group", "list"], None);
    assert!(stdout(&listed).contains("gc"), "{}", stdout(&listed));
    assert_eq!(group_offsets(&node, "gc"), (Some(10), Some(0)));
    assert!(
        vltava(&node, &["produce", "gcli"], Some("x\ny\nz\n"))
            .status
            .success()
    );
    assert_eq!(group_offsets(&node, "gc"), (Some(10), Some(3)));
    let text = stdout(&vltava(&node, &["group", "describe", "gc"], None));
    assert!(text.contains("gcli"), "{text}");

    let reset = vltava(
        &node,
        &[
            "group",
            "reset-offsets",
            "gc",
            "--topic",
            "gcli",
            "--to",
            "earliest",
        ],
        None,
    );
    assert!(reset.status.success(), "{}", stderr(&reset));
    assert_eq!(group_offsets(&node, "gc"), (Some(0), Some(13)));
    // A consumer of the group starts where the reset put it.
    let again = vltava(
        &node,
        &[
            "consume",
            "gcli",
            "--group",
            "gc",
            "--max-messages",
            "1",
            "--format",
            "json",
        ],
        None,
    );
    let first: serde_json::Value = serde_json::from_str(stdout(&again).trim()).unwrap();
    assert_eq!(first["offset"], 0, "{first}");

    let deleted = vltava(&node, &["group", "delete", "gc"], None);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = vltava(&node, &["group", "describe", "gc"], None);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("GroupIdNotFound") || stdout(&gone).contains("GroupIdNotFound"));
}

#[test]
fn a_group_consumer_leaves_cleanly_on_sigterm() {
    let node = TestNode::start();
    let created = vltava(
        &node,
        &["topic", "create", "sig", "--partitions", "2"],
        None,
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let mut child = Command::new(binary("vltava"))
        .args(["consume", "sig", "--group", "leavers"])
        .env("VLTAVA_BOOTSTRAP", &node.addr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let members = || -> u64 {
        let (status, body) = node.admin_get("/groups/leavers");
        if status != 200 {
            return 0;
        }
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        body["members"].as_array().map_or(0, |m| m.len() as u64)
    };
    assert!(vltava_tests::eventually(
        Duration::from_secs(20),
        || members() == 1
    ));
    // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Gone at once, by its leave, not after the 45 s session timeout.
    assert!(vltava_tests::eventually(
        Duration::from_secs(3),
        || members() == 0
    ));
}

fn bench(node: &TestNode, args: &[&str]) -> serde_json::Value {
    let output = Command::new(binary("vltava-bench"))
        .args(args)
        .args(["--bootstrap", &node.addr, "--json", "--duration-s", "60"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(stdout(&output).trim()).unwrap()
}

#[test]
fn the_bench_produces_and_consumes_every_event_it_counts() {
    // Raw mode resends one body encoded once under fresh correlation ids and keeps a fetch in
    // flight while it checks the previous answer: the counts must still be exact.
    let node = TestNode::start();
    let produced = bench(
        &node,
        &[
            "produce",
            "--create",
            "--topic",
            "b",
            "--partitions",
            "2",
            "--messages",
            "25500",
            "--size",
            "100",
            "--batch",
            "1000",
            "--in-flight",
            "4",
            "--acks",
            "all",
        ],
    );
    let p = &produced["produce"];
    assert_eq!(p["events"], 25_500, "{produced}");
    assert_eq!(p["requests"], 26, "{produced}");
    assert_eq!(p["errors"], serde_json::json!([]), "{produced}");
    let consumed = bench(
        &node,
        &[
            "consume",
            "--topic",
            "b",
            "--partitions",
            "2",
            "--messages",
            "25500",
            "--size",
            "100",
            "--fetch-bytes",
            "20000",
        ],
    );
    let c = &consumed["consume"];
    assert_eq!(c["events"], 25_500, "{consumed}");
    assert_eq!(c["batch_bytes"], p["batch_bytes"], "{consumed}");
    assert_eq!(c["errors"], serde_json::json!([]), "{consumed}");
    // Every event is there once: the logs end where the bench says it wrote.
    let (status, body) = node.admin_get("/topics/b");
    assert_eq!(status, 200, "{body}");
    let topic: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ends: u64 = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["log_end_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(ends, 25_500, "{body}");
}

/// Issue 11: the ratio of acks=all produce to the disk's own write + fdatasync loop is one
/// command. The loop runs before and after the run with the run's batch size, in the given
/// directory, and leaves no file behind.
#[test]
fn the_bench_reports_produce_as_a_ratio_of_the_disks_own_pace() {
    let node = TestNode::start();
    let scratch = tempfile::tempdir().unwrap();
    let report = bench(
        &node,
        &[
            "produce",
            "--create",
            "--topic",
            "ratio",
            "--messages",
            "3000",
            "--size",
            "1024",
            "--batch",
            "1000",
            "--acks",
            "all",
            "--baseline-dir",
            scratch.path().to_str().unwrap(),
        ],
    );
    assert_eq!(report["produce"]["events"], 3000, "{report}");
    let baseline = &report["baseline"];
    for run in ["before", "after"] {
        assert_eq!(baseline[run]["batches"], 3, "{report}");
        let batch_bytes = baseline[run]["batch_bytes"].as_u64().unwrap();
        // The loop writes the batches the run sends: 1000 events of 1 KiB and their framing.
        assert_eq!(
            batch_bytes * 3,
            report["produce"]["batch_bytes"].as_u64().unwrap(),
            "{report}"
        );
        assert!(
            baseline[run]["mb_per_s"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    assert!(
        baseline["produce_ratio"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}
