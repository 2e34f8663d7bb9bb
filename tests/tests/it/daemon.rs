//! The daemon's start-up checks, each a clear one-line error and a non-zero exit: port in
//! use, data directory not writable, a second node on the same data directory, a bad config,
//! a non-loopback address without --allow-remote, a data directory of another node. And the
//! settings that come from environment variables and a TOML file.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use vltava_tests::{TestNode, binary, free_port};

/// Runs the node expecting it to exit by itself within 20 s.
fn run_expecting_exit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary("vltava-node"));
    command.args(args).env("VLTAVA_LOG", "error");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = vltava_tests::eventually(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        panic!("vltava-node {args:?} kept running");
    }
    child.wait_with_output().unwrap()
}

fn one_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vltava-node:"))
        .collect();
    assert_eq!(ours.len(), 1, "one error line: {stderr}");
    assert!(!output.status.success());
    ours[0].to_owned()
}

#[test]
fn start_up_errors_are_one_clear_line_and_a_non_zero_exit() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("d");
    let dir = dir.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let line = one_error_line(&run_expecting_exit(
        &[
            "--data-dir",
            dir,
            "--listen",
            &taken_addr,
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(
        line.contains("cannot listen") && line.contains("in use"),
        "{line}"
    );

    let line = one_error_line(&run_expecting_exit(
        &[
            "--data-dir",
            "/proc/vltava-cannot-write-here",
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(line.contains("data directory"), "{line}");

    let line = one_error_line(&run_expecting_exit(
        &[
            "--data-dir",
            dir,
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(line.contains("--allow-remote"), "{line}");

    let line = one_error_line(&run_expecting_exit(
        &[
            "--data-dir",
            dir,
            "--durability",
            "sometimes",
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(line.contains("durability"), "{line}");

    let config = temp.path().join("bad.toml");
    std::fs::write(&config, "listen = 12\n").unwrap();
    let line = one_error_line(&run_expecting_exit(
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(line.contains("bad config file"), "{line}");
}

/// `--controller-quorum` is checked before anything starts: its grammar, duplicates, its
/// size, that `--node-id` is given (no silent default in a cluster), that the node is a
/// member and that its member address is its `--peer-listen`.
#[test]
fn a_bad_controller_quorum_is_one_clear_line() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("d");
    let dir = dir.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let run = |quorum: &str, extra: &[&str]| {
        let mut args = vec![
            "--data-dir",
            dir,
            "--admin-listen",
            &admin,
            "--controller-quorum",
            quorum,
        ];
        args.extend_from_slice(extra);
        one_error_line(&run_expecting_exit(&args, &[]))
    };
    let member = ["--node-id", "1", "--peer-listen", "127.0.0.1:19421"];
    let cases: [(&str, &[&str], &str); 8] = [
        ("1-127.0.0.1:19421", &member, "expected ID@HOST:PORT"),
        ("x@127.0.0.1:19421", &member, "bad node id \"x\""),
        (
            "1@127.0.0.1:19421,1@127.0.0.2:19421",
            &member,
            "node id 1 twice",
        ),
        (
            "1@127.0.0.1:19421,2@127.0.0.1:19421",
            &member,
            "address 127.0.0.1:19421 twice",
        ),
        (
            "1@127.0.0.1:1,2@127.0.0.1:2,3@127.0.0.1:3,4@127.0.0.1:4,5@127.0.0.1:5,6@127.0.0.1:6,7@127.0.0.1:7,8@127.0.0.1:8",
            &member,
            "at most 7",
        ),
        (
            "1@127.0.0.1:19421",
            &["--peer-listen", "127.0.0.1:19421"],
            "--node-id",
        ),
        (
            "2@127.0.0.2:19421",
            &member,
            "node 1 is not in the controller quorum",
        ),
        (
            "1@127.0.0.1:19999",
            &member,
            "--peer-listen is 127.0.0.1:19421",
        ),
    ];
    for (quorum, extra, expected) in cases {
        let line = run(quorum, extra);
        assert!(line.contains(expected), "{quorum}: {line}");
    }
}

#[test]
fn a_data_directory_serves_one_node_and_remembers_its_identity() {
    let mut node = TestNode::start();
    let dir = node.data_dir.to_str().unwrap().to_owned();
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let line = one_error_line(&run_expecting_exit(
        &[
            "--data-dir",
            &dir,
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(line.contains("in use by another vltava-node"), "{line}");
    assert_eq!(node.terminate(), Some(0));
    let line = one_error_line(&run_expecting_exit(
        &[
            "--data-dir",
            &dir,
            "--node-id",
            "7",
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ],
        &[],
    ));
    assert!(line.contains("belongs to node 1"), "{line}");
    let identity = std::fs::read_to_string(node.data_dir.join("node.toml")).unwrap();
    assert!(
        identity.contains("cluster_id") && identity.contains("node_id = 1"),
        "{identity}"
    );
}

#[test]
fn settings_come_from_environment_and_toml() {
    let temp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = temp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nnode_id = 3\n",
            temp.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(binary("vltava-node"))
        .env("VLTAVA_CONFIG", &config)
        .env("VLTAVA_ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("VLTAVA_LOG_FORMAT", "json")
        .env("VLTAVA_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let up = vltava_tests::eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let output = child.wait_with_output().unwrap();
    assert!(up, "the node listened where the TOML file said");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with('{'), "json log lines: {first}");
    let identity = std::fs::read_to_string(temp.path().join("data").join("node.toml")).unwrap();
    assert!(identity.contains("node_id = 3"), "{identity}");
}
