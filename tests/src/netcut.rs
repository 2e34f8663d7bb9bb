//! Cutting nodes of a test cluster off from each other with iptables on the loopback
//! interface: rules in a chain of the test's own, matching only the 127.0.0.x addresses and
//! peer ports of that cluster, so that nothing else on the machine is touched and client
//! traffic to the cut node still flows. Dropping packets (rather than rejecting them) is what
//! a partition looks like: established connections stall and new ones time out.
//!
//! Needs root (or CAP_NET_ADMIN) and `iptables`, which `scripts/test` installs when missing.
//! The chain is removed when the [`NetCut`] is dropped, even when a test fails.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A chain of DROP rules hooked into INPUT for as long as it lives.
#[derive(Debug)]
pub struct NetCut {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let output = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables (is it installed?): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl NetCut {
    /// An empty chain, hooked into INPUT; panics with the reason if iptables cannot be used.
    #[must_use]
    pub fn new() -> NetCut {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // iptables chain names are at most 28 characters.
        let chain = format!(
            "VLT{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        iptables(&["-w", "-N", &chain]).expect("creating an iptables chain");
        let cut = NetCut { chain };
        iptables(&["-w", "-I", "INPUT", "-j", &cut.chain]).expect("hooking the chain into INPUT");
        cut
    }

    /// Drops every packet between the node with peer address `a` and the node with peer
    /// address `b`, both ways, on both of their peer ports (each node dials the other's).
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        for (from, to) in [(a, b), (b, a)] {
            let (from_ip, to_ip) = (from.ip().to_string(), to.ip().to_string());
            let to_port = to.port().to_string();
            // Requests to `to`'s peer port, and answers from it.
            for (direction, port) in [("--dport", &to_port), ("--sport", &to_port)] {
                let (src, dst) = if direction == "--dport" {
                    (&from_ip, &to_ip)
                } else {
                    (&to_ip, &from_ip)
                };
                iptables(&[
                    "-w",
                    "-A",
                    &self.chain,
                    "-p",
                    "tcp",
                    "-s",
                    src,
                    "-d",
                    dst,
                    direction,
                    port,
                    "-j",
                    "DROP",
                ])
                .expect("adding a DROP rule");
            }
        }
    }

    /// Removes every rule: the network heals.
    pub fn heal(&self) {
        iptables(&["-w", "-F", &self.chain]).expect("flushing the chain");
    }
}

impl Default for NetCut {
    fn default() -> Self {
        NetCut::new()
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        let _ = iptables(&["-w", "-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-w", "-F", &self.chain]);
        let _ = iptables(&["-w", "-X", &self.chain]);
    }
}
