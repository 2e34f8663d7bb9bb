//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Labels are bounded sets only: topic, partition, request kind, actor kind. A connection or
//! an actor instance never becomes a label, so the number of series does not grow with
//! clients. Everything is read from counters actors and sessions already keep.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use vltava_actors::directory::{ActorStatus, PublishedState};
use vltava_actors::node::NodeView;

/// Histogram bucket bounds for request latency, in microseconds (100 µs to 10 s).
const LATENCY_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Escapes a label value as the exposition format requires.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Per-partition values, in the order of `PARTITION_SERIES`.
type PartitionValues = [u64; 4];

const PARTITION_SERIES: [(&str, &str); 4] = [
    (
        "vltava_partition_log_size_bytes",
        "Bytes in the partition's segments.",
    ),
    (
        "vltava_partition_log_start_offset",
        "The partition's log start offset.",
    ),
    (
        "vltava_partition_log_end_offset",
        "The partition's log end offset.",
    ),
    (
        "vltava_partition_high_watermark",
        "The partition's high watermark.",
    ),
];

/// Renders every metric family.
pub fn render(view: &NodeView) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let entries = view.directory.snapshot();

    // Per topic: bytes and events in and out, summed over this node's partitions.
    let mut by_topic: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    let mut by_partition: BTreeMap<(&str, u32), PartitionValues> = BTreeMap::new();
    let mut sessions = 0u64;
    let mut groups = Vec::new();
    for entry in &entries {
        match &entry.state {
            Some(PublishedState::Partition(g)) => {
                let t = by_topic.entry(g.topic.as_str()).or_default();
                t[0] += g.bytes_in.load(Ordering::Relaxed);
                t[1] += g.events_in.load(Ordering::Relaxed);
                t[2] += g.bytes_out.load(Ordering::Relaxed);
                t[3] += g.events_out.load(Ordering::Relaxed);
                by_partition.insert(
                    (g.topic.as_str(), g.partition),
                    [
                        g.size_bytes.load(Ordering::Relaxed),
                        g.log_start_offset.load(Ordering::Relaxed),
                        g.log_end_offset.load(Ordering::Relaxed),
                        g.high_watermark.load(Ordering::Relaxed),
                    ],
                );
            }
            Some(PublishedState::Session(_)) => sessions += 1,
            Some(PublishedState::Group(g)) => {
                groups.push(
                    g.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone(),
                );
            }
            Some(PublishedState::PeerLink(_) | PublishedState::ReplicaFetcher(_)) | None => {}
        }
    }
    for (i, (name, help)) in [
        (
            "vltava_topic_bytes_in_total",
            "Record batch bytes appended by producers.",
        ),
        (
            "vltava_topic_events_in_total",
            "Events (offsets) appended by producers.",
        ),
        (
            "vltava_topic_bytes_out_total",
            "Record batch bytes served to fetches.",
        ),
        (
            "vltava_topic_events_out_total",
            "Events (offsets) served to fetches.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        family(&mut out, name, "counter", help);
        for (topic, values) in &by_topic {
            let _ = writeln!(out, "{name}{{topic=\"{}\"}} {}", label(topic), values[i]);
        }
    }
    for (i, (name, help)) in PARTITION_SERIES.into_iter().enumerate() {
        family(&mut out, name, "gauge", help);
        for ((topic, partition), values) in &by_partition {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",partition=\"{partition}\"}} {}",
                label(topic),
                values[i]
            );
        }
    }

    family(
        &mut out,
        "vltava_requests_total",
        "counter",
        "Requests received, by request kind.",
    );
    for (kind, received, _) in view.requests.by_kind() {
        let _ = writeln!(out, "vltava_requests_total{{kind=\"{kind}\"}} {received}");
    }
    family(
        &mut out,
        "vltava_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its answer written, by request kind.",
    );
    for (kind, _, histogram) in view.requests.by_kind() {
        let (cumulative, count, sum_us) = histogram.cumulative(LATENCY_BOUNDS_US);
        for (bound, n) in LATENCY_BOUNDS_US.iter().zip(&cumulative) {
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "vltava_request_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "vltava_request_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "vltava_request_duration_seconds_sum{{kind=\"{kind}\"}} {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "vltava_request_duration_seconds_count{{kind=\"{kind}\"}} {count}"
        );
    }

    // Per actor kind: how many, how deep their mailboxes are, restarts, failures.
    let mut by_kind: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
    for entry in &entries {
        let k = by_kind.entry(entry.kind.name()).or_default();
        k[0] += 1;
        let depth = entry.stats.depth.load(Ordering::Relaxed);
        k[1] += depth;
        k[2] = k[2].max(depth);
        k[3] += u64::from(entry.restarts);
        k[4] += u64::from(entry.status == ActorStatus::Failed);
    }
    for (i, (name, kind, help)) in [
        ("vltava_actors", "gauge", "Live actors, by actor kind."),
        (
            "vltava_actor_mailbox_depth",
            "gauge",
            "Messages waiting in mailboxes, summed by actor kind.",
        ),
        (
            "vltava_actor_mailbox_depth_max",
            "gauge",
            "The deepest mailbox now, by actor kind.",
        ),
        (
            "vltava_actor_restarts_total",
            "counter",
            "Restarts of live actors, by actor kind.",
        ),
        (
            "vltava_actors_failed",
            "gauge",
            "Actors crashed past their restart bound, by actor kind.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        family(&mut out, name, kind, help);
        for (actor_kind, values) in &by_kind {
            let _ = writeln!(out, "{name}{{kind=\"{actor_kind}\"}} {}", values[i]);
        }
    }
    family(
        &mut out,
        "vltava_connections",
        "gauge",
        "Open client connections.",
    );
    let _ = writeln!(out, "vltava_connections {sessions}");

    family(
        &mut out,
        "vltava_group_members",
        "gauge",
        "Members of each consumer group this node coordinates.",
    );
    for g in &groups {
        let _ = writeln!(
            out,
            "vltava_group_members{{group=\"{}\"}} {}",
            label(&g.group_id),
            g.members.len()
        );
    }
    family(
        &mut out,
        "vltava_group_lag",
        "gauge",
        "High watermark minus committed offset, per group and partition.",
    );
    for g in &groups {
        for (tp, committed) in &g.offsets {
            if let Some(values) = by_partition.get(&(tp.0.as_str(), tp.1)) {
                let _ = writeln!(
                    out,
                    "vltava_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
                    label(&g.group_id),
                    label(&tp.0),
                    tp.1,
                    values[3].saturating_sub(committed.0)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
