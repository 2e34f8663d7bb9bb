//! Metadata propagation: topics created one at a time through node 1; for each, the time from
//! the acknowledgement until nodes 2 and 3 both list it in their Metadata answers. Each of
//! the two nodes is polled on its own persistent connection, asking for that topic only (a
//! small answer, so the poll measures propagation, not the encoding of every topic), with
//! `--poll-ms` between an answer and the next request. A sample is an upper bound: it ends
//! when the answer showing the topic arrives, up to one poll interval plus one round trip
//! after the node applied the change.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;
use vltava_client::connection::Connection;
use vltava_messages::protocol::MetadataRequest;

use crate::stats::Samples;
use crate::{Args, CLIENT_ID, REQUEST_TIMEOUT, check_interrupted, create_topic, start_cluster};

/// How long a node may take to show a topic created elsewhere before the run fails: far
/// above the 50 ms target, so that slow samples are measured rather than cut off.
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Report {
    controller: u32,
    create: Samples,
    node2: Samples,
    node3: Samples,
    both: Samples,
    /// Samples where both nodes showed the topic in the first answer after the ack.
    first_poll: usize,
}

pub fn run(rt: &Runtime, args: &Args) -> anyhow::Result<Report> {
    println!(
        "\n== propagation: {} creations through node 1, nodes 2 and 3 polled every {} ms",
        args.topics, args.poll_ms
    );
    let (cluster, controller) = start_cluster(rt)?;
    let poll = Duration::from_millis(args.poll_ms);
    let addrs: Vec<String> = (1..=3).map(|id| cluster.node(id).addr.clone()).collect();
    rt.block_on(async {
        let creator = Connection::connect(&addrs[0], CLIENT_ID).await?;
        let node2 = Connection::connect(&addrs[1], CLIENT_ID).await?;
        let node3 = Connection::connect(&addrs[2], CLIENT_ID).await?;
        let mut create = Vec::new();
        let (mut on2, mut on3, mut both) = (Vec::new(), Vec::new(), Vec::new());
        let mut first_poll = 0;
        for i in 0..args.topics {
            check_interrupted()?;
            let topic = format!("propagation-{i}");
            let sent = Instant::now();
            create_topic(&creator, &topic)
                .await
                .with_context(|| format!("creating {topic} through node 1"))?;
            let acked = Instant::now();
            create.push(acked - sent);
            let (a, b) = tokio::join!(
                until_listed(&node2, &topic, acked, poll),
                until_listed(&node3, &topic, acked, poll)
            );
            let ((d2, polls2), (d3, polls3)) = (a?, b?);
            if polls2 == 1 && polls3 == 1 {
                first_poll += 1;
            }
            on2.push(d2);
            on3.push(d3);
            both.push(d2.max(d3));
        }
        anyhow::Ok(Report {
            controller,
            create: Samples::new(create),
            node2: Samples::new(on2),
            node3: Samples::new(on3),
            both: Samples::new(both),
            first_poll,
        })
    })
}

/// Polls `conn` until its Metadata lists `topic` without error; returns the time since
/// `acked` and the number of requests it took.
async fn until_listed(
    conn: &Connection,
    topic: &str,
    acked: Instant,
    poll: Duration,
) -> anyhow::Result<(Duration, u32)> {
    let request = MetadataRequest {
        topics: Some(vec![topic.to_owned()]),
    };
    let mut polls = 0;
    loop {
        polls += 1;
        let answer = conn
            .send(&request, REQUEST_TIMEOUT)
            .await
            .with_context(|| format!("Metadata of {}", conn.addr()))?;
        if answer
            .topics
            .iter()
            .any(|t| t.name == topic && t.error.is_none() && !t.partitions.is_empty())
        {
            return Ok((acked.elapsed(), polls));
        }
        if acked.elapsed() >= PROPAGATION_BOUND {
            bail!(
                "{} did not list {topic} within {PROPAGATION_BOUND:?}",
                conn.addr()
            );
        }
        tokio::time::sleep(poll).await;
    }
}

impl Report {
    pub fn print(&self) {
        println!(
            "\nPropagation ({} creations through node 1; controller node {}; nearest-rank \
             percentiles)",
            self.both.len(),
            self.controller
        );
        println!("  create acknowledged by node 1: {}", self.create);
        println!("  ack -> listed by node 2: {}", self.node2);
        println!("  ack -> listed by node 3: {}", self.node3);
        println!("  ack -> listed by nodes 2 and 3: {}", self.both);
        let target = Duration::from_millis(50);
        println!(
            "    target p99 < 50 ms: {} ({} of {} at or under 50 ms); both listed it in the \
             first answer after the ack in {} of {}",
            if self.both.percentile(99.0) < target {
                "met"
            } else {
                "not met"
            },
            self.both.count_at_most(target),
            self.both.len(),
            self.first_poll,
            self.both.len()
        );
    }
}
