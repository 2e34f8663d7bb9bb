//! `groups-scale`: many group members heartbeating, to measure what the coordinators cost.
//!
//! `--groups` groups (1,000 by default) of `--members-per-group` members (10) all subscribe
//! to one shared topic of `--partitions` partitions (10). One shared topic, not one per
//! group: a coordinator's work per heartbeat and per rebalance depends on its own members
//! and the partition count of what they subscribe to, not on whether other groups read the
//! same topic, while 1,000 topics of 10 partitions would be 10,000 partition actors with
//! their files, which would measure the partitions rather than the groups.
//!
//! The members are simulated, not `GroupConsumer`s: each is a few fields (member id, epoch,
//! assignment) and its heartbeats are ConsumerGroupHeartbeat requests sent directly over a
//! few shared `Connection`s. Per coordinator the bench opens `--connections` connections and
//! runs `INFLIGHT_PER_CONNECTION` workers on each; a worker owns a share of the members
//! (the members of one group spread over different workers) and has one request in flight
//! at a time, so a connection never has more in flight than the node admits (16 by default).
//! A worker sends the heartbeat of whichever of its members is due first:
//! - joins first (member epoch 0, `subscribed_topics`), all due at the start;
//! - then, `--heartbeat-mode paced`: each member heartbeats once per heartbeat interval (the
//!   one the node announces in its answers) on a fixed schedule, its first heartbeat spread
//!   over one interval after its join so that the load is even. `max_wait_ms` is 0: the
//!   members do not park their heartbeats (as `GroupConsumer` does), since a parked
//!   heartbeat holds one of the 16 in-flight slots of its connection for the whole interval
//!   and 10,000 of them would need 625 connections, more than the node's default 512.
//!   `--heartbeat-mode capacity`: heartbeats go back to back, as fast as answers come.
//! - Every heartbeat reports the member's last assignment as `owned_partitions`, which
//!   acknowledges revocations; when an answer changes the assignment, the member heartbeats
//!   again at once (like `GroupConsumer`, which does not wait a whole interval to
//!   acknowledge).
//! - `FencedMemberEpoch` and `UnknownMemberId` make the member join again.
//!
//! Phases: join (until every member has joined, at most `JOIN_TIMEOUT`), settle (until
//! ListGroups calls every group stable, at most `--stable-timeout-s`), measure
//! (`--duration-s`, 30 s by default: heartbeats answered per second, latency from sending
//! and, paced, from the intended time, errors, the node's CPU from /proc/<pid>/stat and its
//! RSS), then every member leaves (epoch -1). The node's RSS is sampled before the joins,
//! after the settle, every second of the measurement (the peak), after it and after the
//! leaves.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::watch;
use vltava_client::connection::Connection;
use vltava_client::coordinator::{coordinator_addr, find_coordinator};
use vltava_client::group::HEARTBEAT_INTERVAL_MIN;
use vltava_client::{Admin, ClientError, Cluster};
use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, ErrorCode, MEMBER_EPOCH_JOIN, MEMBER_EPOCH_LEAVE,
    TopicPartitions,
};

use crate::histogram::Histogram;
use crate::{Cli, HeartbeatMode, cpu_seconds, loadavg, mib, now_ms, round_to, rss_bytes};

/// The longest the joins of all members may take together.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest the leaves of all members may take together.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight per connection: the node's default per-connection limit
/// (`--inflight-requests-max`, 16). One worker has one request in flight at a time.
const INFLIGHT_PER_CONNECTION: usize = 16;
/// The most connections per coordinator: with 16 in flight each, 1,024 requests wait at
/// once, far more than two CPUs answer in a request's latency; and the node admits 512
/// connections by default.
const CONNECTIONS_MAX: usize = 64;
/// The most simulated members: 100 groups' worth of the node's 1,000-member group cap, and
/// a few MB of bench memory.
const MEMBERS_MAX: usize = 100_000;
/// The most members of one group: the node's cap (`GROUP_MEMBERS_MAX`, PROTOCOL.md §6.13);
/// beyond it joins are refused with `GroupMaxSizeReached`.
const GROUP_MEMBERS_MAX: usize = 1000;
/// The timeout each heartbeat carries (answered at once: `max_wait_ms` is 0).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member waits before retrying after an error or a refusal.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Attempts to open a broken connection again before the worker gives up its members.
const RECONNECT_ATTEMPTS_MAX: u32 = 5;
/// How often the controller checks progress (joined members, group states) and samples the
/// node's RSS.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Error messages kept per worker (the rest are counted by code).
const ERRORS_KEPT_MAX: usize = 4;
/// How long after the leaves the node's RSS is sampled again.
const RSS_AFTER_LEAVE_WAIT: Duration = Duration::from_secs(3);
/// How long the node's CPU is sampled with no member at all (before the joins) and with
/// only empty groups (after the leaves): what the node costs without heartbeats, e.g. its
/// coordinators' ticks.
const IDLE_SAMPLE: Duration = Duration::from_secs(5);

/// What the workers are doing, set by the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Joining and settling: heartbeats are sent, not counted in the measurement.
    Warmup,
    /// Answers arriving now are counted.
    Measure,
    /// After the measurement, while the controller checks the groups: still heartbeating.
    After,
    /// Every member leaves, then the worker ends.
    Leave,
}

/// One simulated member.
#[derive(Debug)]
struct SimMember {
    group: usize,
    /// Spreads the member's first heartbeat after its join over one interval.
    spread: f64,
    member_id: String,
    /// 0 until joined.
    epoch: i32,
    /// The last assignment, reported as owned in the next heartbeat.
    owned: Vec<TopicPartitions>,
    interval: Duration,
    joined_once: bool,
}

impl SimMember {
    fn reset(&mut self) {
        self.member_id.clear();
        self.epoch = MEMBER_EPOCH_JOIN;
        self.owned.clear();
    }
}

/// What every worker reads.
#[derive(Debug)]
struct Shared {
    group_ids: Vec<String>,
    topic: String,
    mode: HeartbeatMode,
    /// Members that have joined (once each).
    joined: AtomicU64,
}

/// What one worker did.
#[derive(Debug, Default)]
struct WorkerOutcome {
    join_latency: Histogram,
    rejoins: u64,
    /// Answers counted in the measurement.
    answered: u64,
    /// From sending to the answer.
    latency: Histogram,
    /// From the heartbeat's intended time to the answer (paced).
    latency_from_due: Histogram,
    assignment_changes: u64,
    errors_warmup: BTreeMap<String, u64>,
    errors_measure: BTreeMap<String, u64>,
    messages: Vec<String>,
    leaves: u64,
    leave_errors: u64,
    /// The heartbeat interval the node announced last.
    heartbeat_interval_ms: u64,
}

impl WorkerOutcome {
    fn error(&mut self, phase: Phase, error: &ClientError) {
        let name = match error {
            ClientError::Server(e) => e.name.clone(),
            ClientError::Timeout(_) => "Timeout".to_owned(),
            ClientError::ConnectionLost(_) => "ConnectionLost".to_owned(),
            other => format!("{other:?}").chars().take(40).collect(),
        };
        let map = if phase == Phase::Measure {
            &mut self.errors_measure
        } else {
            &mut self.errors_warmup
        };
        *map.entry(name).or_default() += 1;
        if self.messages.len() < ERRORS_KEPT_MAX {
            self.messages.push(error.to_string());
        }
    }
}

fn request_for(shared: &Shared, member: &SimMember) -> ConsumerGroupHeartbeatRequest {
    let group_id = shared.group_ids[member.group].clone();
    if member.epoch == MEMBER_EPOCH_JOIN {
        ConsumerGroupHeartbeatRequest {
            group_id,
            member_epoch: MEMBER_EPOCH_JOIN,
            subscribed_topics: Some(vec![shared.topic.clone()]),
            owned_partitions: Some(Vec::new()),
            ..ConsumerGroupHeartbeatRequest::default()
        }
    } else {
        ConsumerGroupHeartbeatRequest {
            group_id,
            member_id: member.member_id.clone(),
            member_epoch: member.epoch,
            owned_partitions: Some(member.owned.clone()),
            max_wait_ms: 0,
            ..ConsumerGroupHeartbeatRequest::default()
        }
    }
}

/// Opens the connection again if it broke, a bounded number of times.
async fn usable(connection: &mut Connection, addr: &str, client_id: &str) -> bool {
    if !connection.is_broken() {
        return true;
    }
    for _ in 0..RECONNECT_ATTEMPTS_MAX {
        if let Ok(fresh) = Connection::connect(addr, client_id).await {
            *connection = fresh;
            return true;
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
    false
}

async fn worker(
    shared: Arc<Shared>,
    addr: String,
    mut connection: Connection,
    mut members: Vec<SimMember>,
    mut phase: watch::Receiver<Phase>,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome::default();
    let client_id = "vltava-bench-scale";
    let start = Instant::now();
    let mut queue: BinaryHeap<Reverse<(Instant, usize)>> =
        (0..members.len()).map(|i| Reverse((start, i))).collect();
    loop {
        if *phase.borrow_and_update() >= Phase::Leave {
            break;
        }
        let Some(Reverse((due, i))) = queue.pop() else {
            break;
        };
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            _ = phase.changed() => {
                queue.push(Reverse((due, i)));
                continue;
            }
        }
        if !usable(&mut connection, &addr, client_id).await {
            outcome.messages.push(format!(
                "cannot reconnect to {addr}; this worker's members stop"
            ));
            break;
        }
        let member = &mut members[i];
        let request = request_for(&shared, member);
        let sent = Instant::now();
        let result = connection.send(&request, REQUEST_TIMEOUT).await;
        let now = Instant::now();
        let current = *phase.borrow();
        let measuring = current == Phase::Measure;
        let joining = member.epoch == MEMBER_EPOCH_JOIN;
        let next = match result {
            Ok(answer) if answer.member_epoch > 0 => {
                if measuring {
                    outcome.answered += 1;
                    outcome.latency.record_duration(now - sent);
                    outcome.latency_from_due.record_duration(now - due);
                }
                if joining {
                    outcome.join_latency.record_duration(now - sent);
                    if member.joined_once {
                        outcome.rejoins += 1;
                    } else {
                        member.joined_once = true;
                        shared.joined.fetch_add(1, Ordering::SeqCst);
                    }
                }
                member.member_id = answer.member_id;
                member.epoch = answer.member_epoch;
                outcome.heartbeat_interval_ms = u64::from(answer.heartbeat_interval_ms);
                member.interval = Duration::from_millis(u64::from(answer.heartbeat_interval_ms))
                    .max(HEARTBEAT_INTERVAL_MIN);
                let changed = answer.assignment != member.owned;
                if changed && measuring {
                    outcome.assignment_changes += 1;
                }
                member.owned = answer.assignment;
                match shared.mode {
                    HeartbeatMode::Capacity => now,
                    // Acknowledge a change at once, like a real member.
                    HeartbeatMode::Paced if changed && !joining => now,
                    HeartbeatMode::Paced if joining => now + member.interval.mul_f64(member.spread),
                    HeartbeatMode::Paced => due + member.interval,
                }
            }
            Ok(_) => {
                // Only a leave is answered with epoch <= 0; join again.
                member.reset();
                now + RETRY_BACKOFF
            }
            Err(error) => {
                outcome.error(current, &error);
                if matches!(
                    error.code(),
                    Some(ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId)
                ) {
                    member.reset();
                }
                now + RETRY_BACKOFF
            }
        };
        queue.push(Reverse((next, i)));
    }
    // Leave, one member at a time.
    for member in members.iter().filter(|m| m.epoch > 0) {
        if !usable(&mut connection, &addr, client_id).await {
            outcome.leave_errors += 1;
            continue;
        }
        let request = ConsumerGroupHeartbeatRequest {
            group_id: shared.group_ids[member.group].clone(),
            member_id: member.member_id.clone(),
            member_epoch: MEMBER_EPOCH_LEAVE,
            ..ConsumerGroupHeartbeatRequest::default()
        };
        match connection.send(&request, REQUEST_TIMEOUT).await {
            Ok(_) => outcome.leaves += 1,
            Err(_) => outcome.leave_errors += 1,
        }
    }
    outcome
}

/// The node's CPU seconds per second over `sample` (the bench does nothing meanwhile).
async fn node_cpu_per_s(pid: Option<u32>, sample: Duration) -> Option<f64> {
    let before = cpu_seconds(Some(pid?))?;
    tokio::time::sleep(sample).await;
    let after = cpu_seconds(Some(pid?))?;
    Some(round_to((after - before) / sample.as_secs_f64(), 3))
}

fn validate(cli: &Cli) -> anyhow::Result<usize> {
    if cli.groups == 0 || cli.members_per_group == 0 || cli.partitions() == 0 {
        bail!("--groups, --members-per-group and --partitions must be positive");
    }
    let members = cli.groups.saturating_mul(cli.members_per_group);
    if members > MEMBERS_MAX {
        bail!("{members} members is more than the {MEMBERS_MAX} the bench simulates");
    }
    if cli.members_per_group > GROUP_MEMBERS_MAX {
        bail!("a group holds at most {GROUP_MEMBERS_MAX} members");
    }
    if cli.connections == 0 || cli.connections > CONNECTIONS_MAX {
        bail!("--connections must be between 1 and {CONNECTIONS_MAX}");
    }
    if cli.duration_s() == 0 {
        bail!("--duration-s must be positive");
    }
    Ok(members)
}

/// Counts the bench's groups by state (ListGroups); a group missing from the answer counts
/// as `missing`. Also how many are stable with every member.
async fn group_states(
    admin: &Admin,
    group_ids: &[String],
    members_per_group: usize,
) -> Result<(BTreeMap<String, u64>, u64), ClientError> {
    let listing = admin.list_groups().await?;
    let by_id: BTreeMap<&str, _> = listing.iter().map(|g| (g.group_id.as_str(), g)).collect();
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut complete = 0u64;
    for id in group_ids {
        match by_id.get(id.as_str()) {
            Some(g) => {
                *states.entry(g.state.clone()).or_default() += 1;
                if g.state == "stable" && g.members as usize == members_per_group {
                    complete += 1;
                }
            }
            None => *states.entry("missing".to_owned()).or_default() += 1,
        }
    }
    Ok((states, complete))
}

pub async fn run(cli: &Cli) -> anyhow::Result<(Value, bool)> {
    let total = validate(cli)?;
    let bootstrap = cli.bootstrap_addrs();
    let cluster = Cluster::connect(&bootstrap, "vltava-bench-admin")
        .await
        .context("cannot reach the cluster")?;
    let admin = Admin::new(Arc::clone(&cluster));
    let partitions = crate::ensure_topic(&cluster, &cli.topic, cli.partitions()).await?;
    let prefix = cli.group.clone().unwrap_or_else(|| {
        format!(
            "vltava-bench-scale-{}-{}",
            std::process::id(),
            now_ms().div_euclid(1000)
        )
    });
    let group_ids: Vec<String> = (0..cli.groups).map(|g| format!("{prefix}-{g}")).collect();

    // Each group's coordinator; the members of its groups share its connections.
    let mut by_addr: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (g, id) in group_ids.iter().enumerate() {
        let found = find_coordinator(&cluster, id)
            .await
            .with_context(|| format!("cannot find the coordinator of {id}"))?;
        by_addr.entry(coordinator_addr(&found)).or_default().push(g);
    }

    let load_start = loadavg();
    let rss_before = cli.node_pid.and_then(rss_bytes);
    let idle_before = node_cpu_per_s(cli.node_pid, IDLE_SAMPLE).await;
    let shared = Arc::new(Shared {
        group_ids: group_ids.clone(),
        topic: cli.topic.clone(),
        mode: cli.heartbeat_mode,
        joined: AtomicU64::new(0),
    });
    let (phase, phase_rx) = watch::channel(Phase::Warmup);
    let mut workers = Vec::new();
    let mut index = 0usize;
    for (addr, groups) in &by_addr {
        let mut shares: Vec<Vec<SimMember>> = Vec::new();
        let mut connections = Vec::new();
        for _ in 0..cli.connections {
            let connection = Connection::connect(addr, "vltava-bench-scale")
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            for _ in 0..INFLIGHT_PER_CONNECTION {
                connections.push(connection.clone());
                shares.push(Vec::new());
            }
        }
        // Group-major, dealt round-robin: one group's members go to different workers.
        let worker_count = shares.len();
        let mut k = 0usize;
        for &g in groups {
            for _ in 0..cli.members_per_group {
                // A fixed, even spread of first heartbeats over (0, 1] interval.
                let spread = ((index * 7919) % 1000 + 1) as f64 / 1000.0;
                shares[k % worker_count].push(SimMember {
                    group: g,
                    spread,
                    member_id: String::new(),
                    epoch: MEMBER_EPOCH_JOIN,
                    owned: Vec::new(),
                    interval: HEARTBEAT_INTERVAL_MIN,
                    joined_once: false,
                });
                k += 1;
                index += 1;
            }
        }
        for (connection, members) in connections.into_iter().zip(shares) {
            workers.push(tokio::spawn(worker(
                Arc::clone(&shared),
                addr.clone(),
                connection,
                members,
                phase_rx.clone(),
            )));
        }
    }
    let connection_count = by_addr.len() * cli.connections;
    let worker_count = workers.len();

    // Joins.
    let started = Instant::now();
    let cpu_start = (
        cpu_seconds(None),
        cli.node_pid.and_then(|p| cpu_seconds(Some(p))),
    );
    let mut failure = None;
    let join_deadline = started + JOIN_TIMEOUT;
    while shared.joined.load(Ordering::SeqCst) < total as u64 && Instant::now() < join_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = shared.joined.load(Ordering::SeqCst);
    let join_s = started.elapsed().as_secs_f64();
    if joined < total as u64 {
        failure = Some(format!(
            "{joined} of {total} members joined within {} s",
            JOIN_TIMEOUT.as_secs()
        ));
    }
    let cpu_joined = cli.node_pid.and_then(|p| cpu_seconds(Some(p)));

    // Settle: every group stable with all its members.
    let mut stable_s = None;
    let mut states_settled = BTreeMap::new();
    let mut list_errors = 0u64;
    // Each check: seconds since the joins began, groups stable with every member, and how
    // long the ListGroups took (one per `CHECK_INTERVAL` until the timeout).
    let mut checks: Vec<Value> = Vec::new();
    if failure.is_none() {
        let deadline = Instant::now() + Duration::from_secs(cli.stable_timeout_s);
        loop {
            let asked = Instant::now();
            match group_states(&admin, &group_ids, cli.members_per_group).await {
                Ok((states, complete)) => {
                    checks.push(json!({
                        "at_s": round_to(started.elapsed().as_secs_f64(), 2),
                        "complete": complete,
                        "list_ms": crate::ms(asked.elapsed()),
                    }));
                    states_settled = states;
                    if complete == cli.groups as u64 {
                        stable_s = Some(started.elapsed().as_secs_f64());
                        break;
                    }
                }
                Err(_) => list_errors += 1,
            }
            if Instant::now() >= deadline {
                failure = Some(format!(
                    "not every group was stable within {} s: {states_settled:?}",
                    cli.stable_timeout_s
                ));
                break;
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    }
    let rss_settled = cli.node_pid.and_then(rss_bytes);

    // Measure.
    let mut window = None;
    let mut rss_peak = None;
    let mut states_after = BTreeMap::new();
    let mut cpu_window = (None, None);
    if failure.is_none() {
        let cpu0 = (
            cpu_seconds(None),
            cli.node_pid.and_then(|p| cpu_seconds(Some(p))),
        );
        let from = Instant::now();
        let _ = phase.send(Phase::Measure);
        let until = from + Duration::from_secs(cli.duration_s());
        while Instant::now() < until {
            tokio::time::sleep(CHECK_INTERVAL.min(until - Instant::now())).await;
            rss_peak = rss_peak.max(cli.node_pid.and_then(rss_bytes));
        }
        let _ = phase.send(Phase::After);
        window = Some(from.elapsed());
        let cpu1 = (
            cpu_seconds(None),
            cli.node_pid.and_then(|p| cpu_seconds(Some(p))),
        );
        cpu_window = (crate::diff(cpu0.0, cpu1.0), crate::diff(cpu0.1, cpu1.1));
        match group_states(&admin, &group_ids, cli.members_per_group).await {
            Ok((states, _)) => states_after = states,
            Err(_) => list_errors += 1,
        }
    }
    let rss_after = cli.node_pid.and_then(rss_bytes);

    // Leave.
    let _ = phase.send(Phase::Leave);
    let leave_started = Instant::now();
    let mut outcomes = Vec::new();
    for w in workers {
        let left = LEAVE_TIMEOUT.saturating_sub(leave_started.elapsed());
        match tokio::time::timeout(left, w).await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => bail!("a worker panicked: {e}"),
            Err(_) => {
                failure.get_or_insert(format!(
                    "the members did not leave within {} s",
                    LEAVE_TIMEOUT.as_secs()
                ));
            }
        }
    }
    let leave_s = leave_started.elapsed().as_secs_f64();
    tokio::time::sleep(RSS_AFTER_LEAVE_WAIT).await;
    let rss_left = cli.node_pid.and_then(rss_bytes);
    let idle_after = node_cpu_per_s(cli.node_pid, IDLE_SAMPLE).await;
    let states_left = group_states(&admin, &group_ids, cli.members_per_group)
        .await
        .map(|(s, _)| s)
        .unwrap_or_default();
    let cpu_end = (
        cpu_seconds(None),
        cli.node_pid.and_then(|p| cpu_seconds(Some(p))),
    );
    let load_end = loadavg();

    // Sum up.
    let mut total_outcome = WorkerOutcome::default();
    for o in &outcomes {
        total_outcome.join_latency.merge(&o.join_latency);
        total_outcome.latency.merge(&o.latency);
        total_outcome.latency_from_due.merge(&o.latency_from_due);
        total_outcome.answered += o.answered;
        total_outcome.rejoins += o.rejoins;
        total_outcome.assignment_changes += o.assignment_changes;
        total_outcome.leaves += o.leaves;
        total_outcome.leave_errors += o.leave_errors;
        for (k, v) in &o.errors_warmup {
            *total_outcome.errors_warmup.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors_measure {
            *total_outcome.errors_measure.entry(k.clone()).or_default() += v;
        }
        for m in &o.messages {
            if total_outcome.messages.len() < ERRORS_KEPT_MAX * 4 {
                total_outcome.messages.push(m.clone());
            }
        }
    }
    let t = &total_outcome;
    let window_s = window.map(|w| w.as_secs_f64());
    let per_s = |x: Option<f64>| window_s.zip(x).map(|(w, x)| round_to(x / w, 3));
    let interval_ms = outcomes.iter().map(|o| o.heartbeat_interval_ms).max();
    // What paced members should send: one heartbeat per member per interval.
    let expected_per_s = interval_ms
        .filter(|&ms| ms > 0 && cli.heartbeat_mode == HeartbeatMode::Paced)
        .map(|ms| round_to(total as f64 * 1000.0 / ms as f64, 0));
    let mut report = json!({
        "command": "groups-scale",
        "bootstrap": cli.bootstrap,
        "topic": cli.topic,
        "partitions": partitions,
        "groups": cli.groups,
        "members_per_group": cli.members_per_group,
        "members": total,
        "coordinators": by_addr.len(),
        "connections": connection_count,
        "workers": worker_count,
        "inflight_per_connection": INFLIGHT_PER_CONNECTION,
        "heartbeat_mode": format!("{:?}", cli.heartbeat_mode).to_lowercase(),
        "node_heartbeat_interval_ms_stated": cli.heartbeat_interval_ms,
        "node_heartbeat_interval_ms_announced": interval_ms,
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "join": {
            "joined": joined,
            "duration_s": round_to(join_s, 2),
            "joins_per_s": round_to(joined as f64 / join_s.max(1e-9), 0),
            "latency_us": t.join_latency.summary_us(),
            "rejoins": t.rejoins,
            "node_cpu_s": crate::diff(cpu_start.1, cpu_joined),
            "errors": t.errors_warmup,
        },
        "stable_after_s": stable_s.map(|s| round_to(s, 2)),
        "states_settled": states_settled,
        "settle_checks": checks,
        "measure": {
            "duration_s": window_s.map(|w| round_to(w, 2)),
            "heartbeats": t.answered,
            "heartbeats_per_s": window_s.map(|w| round_to(t.answered as f64 / w, 0)),
            "heartbeats_per_s_expected": expected_per_s,
            "latency_us": t.latency.summary_us(),
            // Capacity mode has no schedule: a member is due when its last answer came.
            "latency_from_intended_us": (cli.heartbeat_mode == HeartbeatMode::Paced)
                .then(|| t.latency_from_due.summary_us()),
            "assignment_changes": t.assignment_changes,
            "errors": t.errors_measure,
            "node_cpu_s": cpu_window.1,
            "node_cpu_per_s": per_s(cpu_window.1),
            "bench_cpu_per_s": per_s(cpu_window.0),
            "states_after": states_after,
        },
        "leave": {
            "left": t.leaves,
            "errors": t.leave_errors,
            "duration_s": round_to(leave_s, 2),
            "states_after": states_left,
        },
        "node_rss_mib": {
            "before_join": mib(rss_before),
            "settled": mib(rss_settled),
            "peak_in_measure": mib(rss_peak),
            "after_measure": mib(rss_after),
            "after_leave": mib(rss_left),
        },
        "bench_cpu_s": crate::diff(cpu_start.0, cpu_end.0),
        "node_cpu_s": crate::diff(cpu_start.1, cpu_end.1),
        "node_cpu_per_s_before_join": idle_before,
        "node_cpu_per_s_after_leave": idle_after,
        "list_errors": list_errors,
        "messages": t.messages,
    });
    if let Some(f) = &failure {
        report["errors"] = json!([f]);
    } else {
        report["errors"] = json!([]);
    }
    let ok = failure.is_none() && t.errors_measure.is_empty();
    if !cli.json {
        print_text(&report);
    }
    Ok((report, ok))
}

/// The report for people.
fn print_text(report: &Value) {
    crate::print_with(report, write_text);
}

fn write_text(r: &Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "vltava-bench groups-scale groups={} members_per_group={} members={} partitions={} mode={} connections={} workers={} load {} -> {}",
        r["groups"],
        r["members_per_group"],
        r["members"],
        r["partitions"],
        r["heartbeat_mode"].as_str().unwrap_or(""),
        r["connections"],
        r["workers"],
        r["loadavg_start"].as_str().unwrap_or("?"),
        r["loadavg_end"].as_str().unwrap_or("?"),
    )?;
    let j = &r["join"];
    writeln!(
        out,
        "join: {} members in {} s ({} joins/s), latency (us) p50 {} p99 {} max {}, node CPU {} s; every group stable after {} s",
        j["joined"],
        j["duration_s"],
        j["joins_per_s"],
        j["latency_us"]["p50"],
        j["latency_us"]["p99"],
        j["latency_us"]["max"],
        j["node_cpu_s"],
        r["stable_after_s"],
    )?;
    let m = &r["measure"];
    writeln!(
        out,
        "measure {} s: {} heartbeats/s (paced: {} expected), latency (us) p50 {} p99 {} max {} (from intended time: p50 {} p99 {} max {}), {} assignment changes, errors {}",
        m["duration_s"],
        m["heartbeats_per_s"],
        m["heartbeats_per_s_expected"],
        m["latency_us"]["p50"],
        m["latency_us"]["p99"],
        m["latency_us"]["max"],
        m["latency_from_intended_us"]["p50"],
        m["latency_from_intended_us"]["p99"],
        m["latency_from_intended_us"]["max"],
        m["assignment_changes"],
        m["errors"],
    )?;
    writeln!(
        out,
        "cpu per second of measurement: node {} bench {}; group states after: {}",
        m["node_cpu_per_s"], m["bench_cpu_per_s"], m["states_after"],
    )?;
    let rss = &r["node_rss_mib"];
    writeln!(
        out,
        "node RSS (MiB): before join {}, settled {}, peak {}, after measure {}, after leave {}",
        rss["before_join"],
        rss["settled"],
        rss["peak_in_measure"],
        rss["after_measure"],
        rss["after_leave"],
    )?;
    writeln!(
        out,
        "node CPU per second without heartbeats: {} before the joins, {} after the leaves",
        r["node_cpu_per_s_before_join"], r["node_cpu_per_s_after_leave"],
    )?;
    writeln!(
        out,
        "leave: {} left, {} errors, in {} s; states {}",
        r["leave"]["left"],
        r["leave"]["errors"],
        r["leave"]["duration_s"],
        r["leave"]["states_after"],
    )?;
    if let Some(errors) = r["errors"].as_array() {
        for e in errors {
            writeln!(out, "error: {}", e.as_str().unwrap_or(""))?;
        }
    }
    if let Some(messages) = r["messages"].as_array() {
        for e in messages {
            writeln!(out, "message: {}", e.as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}
