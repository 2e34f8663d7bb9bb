//! Metadata throughput: `--creations` one-partition topics created by `--creators` concurrent
//! creators (one persistent connection each, one request in flight each) through one node;
//! first through the controller, then, on a fresh cluster so that both runs start from the
//! same empty state, through a node that is not the controller and forwards to it. Rate =
//! creations / (first send to last acknowledgement).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Runtime;
use vltava_client::connection::Connection;

use crate::stats::Samples;
use crate::{Args, CLIENT_ID, check_interrupted, create_topic, start_cluster};

#[derive(Debug)]
struct Run {
    target: &'static str,
    node: u32,
    elapsed: Duration,
    latency: Samples,
}

#[derive(Debug)]
pub struct Report {
    creators: u32,
    runs: Vec<Run>,
}

pub fn run(rt: &Runtime, args: &Args) -> anyhow::Result<Report> {
    println!(
        "\n== throughput: {} creations by {} creators, through the controller and through a \
         forwarding node",
        args.creations, args.creators
    );
    let mut runs = Vec::new();
    for target in ["controller", "forwarding"] {
        let (cluster, controller) = start_cluster(rt)?;
        let node = if target == "controller" {
            controller
        } else {
            // The lowest id that is not the controller.
            (1..=3)
                .find(|id| *id != controller)
                .expect("three nodes have a non-controller")
        };
        let addr = cluster.node(node).addr.clone();
        let run = rt
            .block_on(create_many(&addr, target, args.creations, args.creators))
            .with_context(|| format!("creating through node {node} ({target})"))?;
        println!(
            "  through node {node} ({target}): {:.0} creations/s",
            f64::from(args.creations) / run.0.as_secs_f64()
        );
        runs.push(Run {
            target,
            node,
            elapsed: run.0,
            latency: run.1,
        });
    }
    Ok(Report {
        creators: args.creators,
        runs,
    })
}

/// Creates `count` topics through `addr` with `creators` concurrent creators; returns the
/// wall time and each creation's latency.
async fn create_many(
    addr: &str,
    prefix: &str,
    count: u32,
    creators: u32,
) -> anyhow::Result<(Duration, Samples)> {
    // Connections first, so that connecting is not timed.
    let mut conns = Vec::new();
    for _ in 0..creators {
        conns.push(Connection::connect(addr, CLIENT_ID).await?);
    }
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in conns {
        let next = Arc::clone(&next);
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                check_interrupted()?;
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(latencies);
                }
                let topic = format!("throughput-{prefix}-{i}");
                let sent = Instant::now();
                create_topic(&conn, &topic)
                    .await
                    .with_context(|| format!("creating {topic}"))?;
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("a creator panicked")??);
    }
    Ok((started.elapsed(), Samples::new(latencies)))
}

impl Report {
    pub fn print(&self) {
        println!(
            "\nThroughput ({} concurrent creators, one-partition topics, fresh cluster per run)",
            self.creators
        );
        for run in &self.runs {
            println!(
                "  through node {} ({}): {} creations in {:.2} s = {:.0} creations/s; latency {}",
                run.node,
                run.target,
                run.latency.len(),
                run.elapsed.as_secs_f64(),
                run.latency.len() as f64 / run.elapsed.as_secs_f64(),
                run.latency
            );
        }
    }
}
