//! A harness for black-box tests: starts the real `vltava-node` binary on a free loopback
//! port with a temporary data directory, waits until it serves, and stops it (SIGTERM,
//! SIGKILL) when asked or when dropped.
//!
//! The binaries are found in the workspace's target directory (`VLTAVA_BIN_DIR` overrides);
//! the test command in README.md builds them before running the tests.
//!
//! # Modules
//! - `cluster`: a cluster of real nodes on 127.0.0.1, .2, .3 and so on.
//! - `netcut`: cutting cluster members off from each other with iptables.
//! - `history`: what clients observed and replicas held, and the checks that decide whether a
//!   fault test passed (no acknowledged write lost, no duplicate, no epoch going back, ...).

pub mod cluster;
pub mod history;
pub mod netcut;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the built binaries.
#[must_use]
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("VLTAVA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        },
        PathBuf::from,
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile)
}

/// The path of a built binary, with a clear message if it is missing.
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `vltava-node` process.
#[derive(Debug)]
pub struct TestNode {
    child: Option<Child>,
    pub addr: String,
    /// The admin endpoint's address (a new one at every launch).
    pub admin_addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    /// The node's log lines (stderr), kept for assertions and failure reports.
    pub log: Arc<Mutex<Vec<String>>>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl TestNode {
    /// Starts a node on a free port with a fresh temporary data directory.
    #[must_use]
    pub fn start() -> TestNode {
        let temp = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let data_dir = temp.path().join("data");
        let mut node = TestNode::spawn(data_dir, Vec::new());
        node._temp = Some(temp);
        node
    }

    /// Starts a node with extra flags on a fresh data directory.
    #[must_use]
    pub fn start_with(args: &[&str]) -> TestNode {
        let temp = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let data_dir = temp.path().join("data");
        let mut node = TestNode::spawn(data_dir, args.iter().map(|s| (*s).to_owned()).collect());
        node._temp = Some(temp);
        node
    }

    /// Starts a node with extra flags in `data_dir` (which the caller keeps and removes).
    #[must_use]
    pub fn start_in(data_dir: PathBuf, args: &[&str]) -> TestNode {
        TestNode::spawn(data_dir, args.iter().map(|s| (*s).to_owned()).collect())
    }

    fn spawn(data_dir: PathBuf, args: Vec<String>) -> TestNode {
        // A port can be taken between our probe and the node's bind; try a few.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut node = TestNode {
                child: None,
                addr,
                admin_addr: String::new(),
                data_dir: data_dir.clone(),
                args: args.clone(),
                log: Arc::default(),
                _temp: None,
            };
            if node.launch() {
                return node;
            }
        }
        panic!("vltava-node did not start");
    }

    /// Launches the process on `self.addr`; returns whether it became ready.
    fn launch(&mut self) -> bool {
        self.admin_addr = format!("127.0.0.1:{}", free_port());
        self.spawn_process();
        self.wait_ready()
    }

    /// Starts the process with the node's addresses and flags, without waiting for it.
    fn spawn_process(&mut self) {
        let mut child = Command::new(binary("vltava-node"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--admin-listen")
            .arg(&self.admin_addr)
            .args(&self.args)
            .env("VLTAVA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning vltava-node");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        self.child = Some(child);
    }

    /// Waits until the process says it is ready; false (the process killed) if it could not
    /// listen; panics with its log if it failed otherwise or took longer than `START_TIMEOUT`.
    fn wait_ready(&mut self) -> bool {
        let ready = eventually(START_TIMEOUT, || {
            self.logged("vltava-node ready") || self.exited()
        });
        if ready && self.logged("vltava-node ready") {
            return true;
        }
        let _ = self.child.as_mut().map(Child::kill);
        if !self.logged("cannot listen") {
            panic!("vltava-node failed to start:\n{}", self.log_text());
        }
        false
    }

    /// Starts a node at fixed addresses (a cluster member's: its client, admin and peer
    /// addresses are in `args` and the others' flags) without waiting for it to be ready, as
    /// a member waits for the quorum; call [`TestNode::wait_until_ready`] after starting the
    /// others.
    #[must_use]
    pub fn spawn_member(
        data_dir: PathBuf,
        addr: String,
        admin_addr: String,
        args: Vec<String>,
    ) -> TestNode {
        let mut node = TestNode {
            child: None,
            addr,
            admin_addr,
            data_dir,
            args,
            log: Arc::default(),
            _temp: None,
        };
        node.spawn_process();
        node
    }

    /// Waits for a node started by `spawn_member` (or `relaunch`) to be ready; panics with its
    /// log if it is not within `START_TIMEOUT`.
    pub fn wait_until_ready(&mut self) {
        assert!(
            self.wait_ready(),
            "vltava-node could not listen on {}:\n{}",
            self.addr,
            self.log_text()
        );
    }

    /// Starts a stopped member again on the same addresses and data directory, without
    /// waiting for it to be ready.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.spawn_process();
    }

    /// Whether the process runs.
    #[must_use]
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && !self.exited()
    }

    /// The process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether any log line contains `text`.
    #[must_use]
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|l| l.contains(text))
    }

    /// All log lines so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vltava-node did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pauses the process with SIGSTOP, as a long stall would: it holds its sockets open and
    /// answers nothing until [`TestNode::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Resumes a paused process with SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        let pid = self.pid().expect("the node is running");
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        let sent = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal}) failed");
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same address and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        assert!(
            self.launch(),
            "vltava-node did not restart on {}",
            self.addr
        );
    }

    /// The node's resident memory in KiB (from /proc), if it runs.
    #[must_use]
    pub fn rss_kib(&self) -> Option<u64> {
        self.proc_status_kib("VmRSS:")
    }

    /// The node's resident anonymous memory in KiB (heap and stacks, not the mapped binary
    /// or files), if it runs: what grows when the node leaks.
    #[must_use]
    pub fn rss_anon_kib(&self) -> Option<u64> {
        self.proc_status_kib("RssAnon:")
    }

    fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Whether a TCP connection to the node succeeds.
    #[must_use]
    pub fn accepts(&self) -> bool {
        TcpStream::connect(&self.addr).is_ok()
    }

    /// The bootstrap list for clients.
    #[must_use]
    pub fn bootstrap(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Largest admin answer `http` reads.
pub const HTTP_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long `http` waits for the admin endpoint.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain HTTP/1.1 request to `addr` (the admin endpoint): returns the status code and the
/// body. `headers` are extra `Name: value` lines.
pub fn http(method: &str, addr: &str, path: &str, headers: &[&str]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connecting to the admin endpoint");
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("sending the request");
    let mut answer = Vec::new();
    stream
        .take(HTTP_BODY_BYTES_MAX as u64)
        .read_to_end(&mut answer)
        .expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .expect("an HTTP answer has a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

impl TestNode {
    /// `GET path` on the node's admin endpoint.
    #[must_use]
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http("GET", &self.admin_addr, path, &[])
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The committed offset of each of `topic`'s partitions in an OffsetFetch answer (`None`:
/// nothing committed), by partition.
#[must_use]
pub fn committed_offsets(
    topics: &[vltava_messages::protocol::CommittedTopic],
    topic: &str,
) -> std::collections::BTreeMap<u32, Option<u64>> {
    topics
        .iter()
        .filter(|t| t.topic == topic)
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition.0, p.offset.map(|o| o.0)))
        })
        .collect()
}
