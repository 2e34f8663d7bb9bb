//! A cluster of real `vltava-node` processes for black-box tests: member `i` (from 1) binds
//! every address of its own on 127.0.0.`i` (client, admin, peer), so a test can tell the
//! nodes apart by address, and all share one `--controller-quorum`. Members are started
//! together (each waits for the quorum before it says it is ready) and killed when dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{START_TIMEOUT, TestNode, eventually};

/// How many times `TestCluster::start` tries fresh ports when a member cannot listen.
pub const START_ATTEMPTS: u32 = 3;

/// A port free on `ip` a moment ago.
#[must_use]
pub fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// A running cluster.
#[derive(Debug)]
pub struct TestCluster {
    /// Member `i` is `nodes[i - 1]`.
    pub nodes: Vec<TestNode>,
    /// The `--controller-quorum` every member was given.
    pub quorum: String,
    _temp: Arc<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts `size` members (at most 254) with `extra` flags each, and waits until every
    /// one is ready. The ports are picked free a moment before the members bind them, so
    /// another process can take one in between (any outgoing connection on the machine may
    /// get it as its source port): a member that cannot listen makes the whole start begin
    /// again on fresh ports, up to `START_ATTEMPTS` times.
    #[must_use]
    pub fn start(size: u32, extra: &[&str]) -> TestCluster {
        assert!(
            (1..=254).contains(&size),
            "members live on 127.0.0.1 to 127.0.0.254"
        );
        for _ in 0..START_ATTEMPTS {
            if let Some(cluster) = TestCluster::try_start(size, extra) {
                return cluster;
            }
        }
        panic!("a cluster of {size} could not listen on free ports in {START_ATTEMPTS} attempts");
    }

    /// One attempt of `start`: `None` if a member could not listen (the members started are
    /// killed as they are dropped).
    fn try_start(size: u32, extra: &[&str]) -> Option<TestCluster> {
        let temp = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let ips: BTreeMap<u32, String> = (1..=size).map(|i| (i, format!("127.0.0.{i}"))).collect();
        let peers: BTreeMap<u32, String> = ips
            .iter()
            .map(|(i, ip)| (*i, format!("{ip}:{}", free_port_on(ip))))
            .collect();
        let quorum = peers
            .iter()
            .map(|(i, address)| format!("{i}@{address}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<TestNode> = ips
            .iter()
            .map(|(i, ip)| {
                let mut args = vec![
                    "--node-id".to_owned(),
                    i.to_string(),
                    "--peer-listen".to_owned(),
                    peers[i].clone(),
                    "--controller-quorum".to_owned(),
                    quorum.clone(),
                ];
                args.extend(extra.iter().map(|s| (*s).to_owned()));
                TestNode::spawn_member(
                    temp.path().join(format!("node-{i}")),
                    format!("{ip}:{}", free_port_on(ip)),
                    format!("{ip}:{}", free_port_on(ip)),
                    args,
                )
            })
            .collect();
        // Every member is watched at once: a member that could not listen exits at once,
        // while the others wait for it (an RF 3 offsets topic needs all three) and would
        // only time out; waiting for them one by one would take that for a failed start.
        eventually(START_TIMEOUT, || {
            nodes.iter().all(|node| node.logged("vltava-node ready"))
                || nodes.iter_mut().any(TestNode::exited)
        });
        if let Some(taken) = nodes
            .iter_mut()
            .position(|node| node.exited() && node.logged("cannot listen"))
        {
            eprintln!(
                "a cluster member could not listen on {} (a port was taken); starting the \
                 cluster again on other ports",
                nodes[taken].addr
            );
            return None;
        }
        if !nodes.iter().all(|node| node.logged("vltava-node ready")) {
            let logs = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    format!("--- member {} ({}):\n{}", i + 1, node.addr, node.log_text())
                })
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "a cluster of {size} did not start (every member ready within {START_TIMEOUT:?}):\n{logs}"
            );
        }
        Some(TestCluster {
            nodes,
            quorum,
            _temp: temp,
        })
    }

    /// Member `id` (from 1).
    #[must_use]
    pub fn node(&self, id: u32) -> &TestNode {
        &self.nodes[id as usize - 1]
    }

    /// Member `id` (from 1), to stop or restart.
    pub fn node_mut(&mut self, id: u32) -> &mut TestNode {
        &mut self.nodes[id as usize - 1]
    }

    /// Every member's client address, as a bootstrap list.
    #[must_use]
    pub fn bootstrap(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Member `id`'s peer address, as the quorum names it.
    #[must_use]
    pub fn peer_address(&self, id: u32) -> std::net::SocketAddr {
        self.quorum
            .split(',')
            .find_map(|member| member.strip_prefix(&format!("{id}@")))
            .expect("the member is in the quorum")
            .parse()
            .expect("a socket address")
    }

    /// Member `id`'s data directory.
    #[must_use]
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.node(id).data_dir.clone()
    }
}
