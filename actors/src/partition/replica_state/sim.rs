//! A seeded simulation of one partition on three replicas, each a `ReplicaState` over a
//! simulated log, with a simulated controller and network, checked after every step.
//!
//! - **Logs**: one record per offset, `(epoch, value)`, from a log start, and a flushed
//!   prefix. A crash loses the unflushed suffix under fsync durability (power loss) and
//!   nothing otherwise (the process died, the page cache lived); the epoch cache is rebuilt
//!   from what is left, as recovery derives it from batch headers. The high-watermark
//!   checkpoint is written on some of the `PublishHighWatermark` effects only, as a lazy
//!   checkpoint would be. Retention, now and then on every replica, deletes a prefix below its
//!   high watermark (moving the log start), so a follower that was down may find its leader's
//!   log starting past its own end: the leader answers its fetch out of range, and it starts
//!   its log afresh at the leader's log start.
//! - **Controller**: reliable (it stands for the Raft quorum). It learns of a crash when the
//!   node's lease expires (`LEASE`), and of a restart when the new incarnation registers; it
//!   elects leaders from the ISR only, bumps the leader epoch when a leader's new incarnation
//!   registers, drops a dead leader from the ISR when it elects another, compare-and-sets ISR
//!   proposals on (leader epoch, partition epoch), refuses to add a replica it believes dead,
//!   and repeats each node's assignment every `BROADCAST_INTERVAL` (so lost ones heal).
//! - **Network**: every replica-to-replica and replica-to-controller message may be lost,
//!   delayed and reordered; lease expiries and registrations are not lost.
//! - **Clients** produce with `acks=all` (mostly) or `acks=1` to whichever replica thinks it
//!   leads, stale leaders included.
//! - **Checks**. Each `acks=all` acknowledgement is recorded (offset, value, epoch) once the
//!   acknowledging leader's log is seen to hold it below its high watermark; an offset
//!   acknowledged twice must have one value. A replica becoming leader must hold every offset
//!   acknowledged in an earlier epoch, and every leader of a later epoch must hold each offset
//!   acknowledged after it was elected (by a stale leader); as a leader never cuts its log,
//!   no acknowledged offset is missing from a current leader after any step (retention aside:
//!   an offset below a replica's log start was deleted, not lost). After every
//!   step: every offset a replica shows below its high watermark holds the same value on
//!   every replica that ever shows it (so no acknowledged offset is given another value), a
//!   leader's high watermark never goes back within its epoch, and no replica's leader epoch
//!   goes back. The state machine asserts its own invariants after every transition. At the
//!   end the simulation heals (no loss, no crash, everyone up) and checks that the replicas
//!   converge: one leader, the full ISR, every log equal where they overlap and ending at the
//!   same offset, everything committed, every acknowledged offset at or past the leader's log
//!   start there.
//!
//! A seed decides everything (`SimRng`), so a failure replays exactly. The test spreads seeds
//! over `SIM_THREADS` threads; `VLTAVA_REPLICA_SIM_SEEDS=n` runs seeds 0..n (default
//! `SEEDS_DEFAULT`), `VLTAVA_REPLICA_SIM_SEED=s` runs seed `s` alone and prints its trace.
//! Seeds cycle through the settings: mostly the defaults (fsync durability, a majority
//! `min.insync.replicas`), one in eight without fsync, one in eight with
//! `min.insync.replicas` 1.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use vltava_storage::sim::SimRng;

use super::*;

const NODES: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

/// Seeds the test runs by default: enough to meet the rare interleavings (a crash while an
/// ISR change is pending, a stale leader acknowledging after an election, a new leader dying
/// before a rejoined follower caught up) many times, in about 15 seconds of a debug build on
/// two cores.
const SEEDS_DEFAULT: u64 = 2000;

/// Simulated time per step: finer than every delay and timeout below, so their order varies.
const STEP: Duration = Duration::from_millis(5);
/// Six seconds of chaos: several crashes, elections and ISR changes per run.
const CHAOS_STEPS: u32 = 1200;
/// Then two and a half seconds of healing: time for a restarted replica to register, be
/// elected or truncate, catch up and rejoin the ISR, with each retry interval passing once.
const HEAL_STEPS: u32 = 500;

/// The lag time the replicas use: short, so that ISR shrinks and expansions happen within a
/// run (the default, 10 s, is longer than a whole run).
const LAG_TIME_MAX: Duration = Duration::from_millis(300);
/// How long a node's lease outlives it: the controller hears of a crash this late, long
/// enough that a node sometimes restarts first (its registration then bumps the epoch).
const LEASE: Duration = Duration::from_millis(150);
/// How often the controller repeats each node's assignment: a lost one is repaired well
/// within the lag time.
const BROADCAST_INTERVAL: Duration = Duration::from_millis(100);
/// How often each replica's `tick` runs, as a partition's timer would.
const TICK_INTERVAL: Duration = Duration::from_millis(20);
/// How long a follower waits for a fetch answer before fetching again: longer than most
/// round trips, so late answers arrive after their fetch was repeated too.
const FETCH_TIMEOUT: Duration = Duration::from_millis(50);
/// The most records one fetch answer carries; each answer takes a random budget up to it, so
/// followers catch up at different paces (a follower still catching up when its leader dies
/// is where expansion bugs show).
const FETCH_RECORDS_MAX: usize = 16;
/// Network delays: up to six steps, so messages sent in different steps overtake each other.
const DELAY_MS_MIN: u64 = 1;
const DELAY_MS_MAX: u64 = 30;

/// Chances, in tenths of a percent. Loss, per message: each kind is lost many times a run.
const LOSS_PER_MILLE: u64 = 50;
/// A produce per step: about a hundred appends per simulated second.
const PRODUCE_PER_MILLE: u64 = 500;
/// A flush per replica per step: flushes trail appends by a few steps, so a crash loses
/// some unflushed offsets.
const FLUSH_PER_MILLE: u64 = 300;
/// A crash per step: about seven per run, half of them of a leader.
const CRASH_PER_MILLE: u64 = 6;
/// A restart per down replica per step: down for about 250 ms, longer than the lease, so
/// lease expiry and restart come in both orders.
const RESTART_PER_MILLE: u64 = 20;
/// A retention pass per live replica per step: several per replica while a follower is down,
/// so that it often comes back behind its leader's log start.
const RETENTION_PER_MILLE: u64 = 15;

/// Lines of trace kept for a failure's report.
const TRACE_LINES_MAX: usize = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    epoch: LeaderEpoch,
    value: u64,
}

/// A replica's log: one record per offset, from its log start.
#[derive(Debug, Default)]
struct SimLog {
    /// Offsets below it were deleted by retention, or skipped by a fresh start.
    start: Offset,
    /// The records from `start` on.
    records: Vec<Record>,
    /// Offsets below it are flushed; at least `start`.
    flushed: Offset,
    epochs: LeaderEpochCache,
    high_watermark_checkpoint: Option<Offset>,
}

impl SimLog {
    fn end(&self) -> Offset {
        Offset(self.start.0 + self.records.len() as u64)
    }

    fn local(&self) -> LocalLog {
        LocalLog {
            log_start_offset: self.start,
            log_end_offset: self.end(),
            flushed_offset: self.flushed,
            latest_epoch: self.epochs.latest_epoch(),
        }
    }

    /// The index in `records` of `offset`, at or past the start.
    fn index(&self, offset: Offset) -> usize {
        usize::try_from(offset.0 - self.start.0).expect("simulated logs are small")
    }

    fn append(&mut self, record: Record) {
        self.epochs.assign(record.epoch, self.end());
        self.records.push(record);
    }

    fn truncate(&mut self, offset: Offset) {
        assert!(offset >= self.start, "a truncation below the log start");
        let keep = self.index(offset);
        self.records.truncate(keep);
        self.flushed = self.flushed.min(self.end());
        self.epochs.truncate_from_end(offset);
    }

    /// Retention: the offsets below `offset` go. The flushed offset moves up with the start,
    /// as `Log::delete_old_segments` moves the recovery point (nothing below the start is
    /// left to be unflushed).
    fn delete_below(&mut self, offset: Offset) {
        assert!(offset >= self.start && offset <= self.end());
        let drop = self.index(offset);
        self.records.drain(..drop);
        self.start = offset;
        self.flushed = self.flushed.max(offset);
        self.epochs.truncate_from_start(offset);
    }

    /// `Log::truncate_fully_and_start_at`.
    fn start_afresh(&mut self, offset: Offset) {
        assert!(offset >= self.end(), "a fresh start lies past the log end");
        self.records.clear();
        self.start = offset;
        self.flushed = offset;
        self.epochs = LeaderEpochCache::default();
    }

    fn crash(&mut self, lose_unflushed: bool) {
        if lose_unflushed {
            let keep = self.index(self.flushed);
            self.records.truncate(keep);
        }
        self.flushed = self.end();
        self.epochs = LeaderEpochCache::default();
        for (i, record) in self.records.iter().enumerate() {
            self.epochs
                .assign(record.epoch, Offset(self.start.0 + i as u64));
        }
    }

    fn value_at(&self, offset: Offset) -> Option<u64> {
        if offset < self.start {
            return None;
        }
        self.records.get(self.index(offset)).map(|r| r.value)
    }
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    alive: bool,
    incarnation: u32,
    log: SimLog,
    /// `None` while the node is down.
    state: Option<ReplicaState<u64>>,
    /// When the fetch in flight was sent.
    fetch_sent_at: Option<Instant>,
    /// The highest leader epoch this node's state has had, across restarts.
    epoch_seen: Option<LeaderEpoch>,
    /// Offsets below it were checked against the visible history.
    verified: Offset,
}

#[derive(Debug)]
struct Controller {
    leader: Option<NodeId>,
    leader_epoch: LeaderEpoch,
    partition_epoch: PartitionEpoch,
    isr: BTreeSet<NodeId>,
    /// The incarnation it believes alive, per node.
    alive: BTreeMap<NodeId, Option<u32>>,
    /// The newest incarnation that registered, per node: an older one's registration
    /// arriving late must not bring it back to life.
    registered: BTreeMap<NodeId, u32>,
    last_broadcast: Instant,
}

impl Controller {
    fn assignment(&self) -> Assignment {
        Assignment {
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            replicas: NODES.to_vec(),
            isr: self.isr.clone(),
            target_replicas: None,
        }
    }

    fn believed_alive(&self, node: NodeId) -> bool {
        self.alive.get(&node).is_some_and(Option::is_some)
    }

    /// Elects a leader from the ISR members it believes alive (never `dead`), in a new
    /// epoch. A dead leader leaves the ISR if someone else is elected.
    fn elect(&mut self, rng: &mut SimRng, dead: Option<NodeId>) {
        let candidates: Vec<NodeId> = self
            .isr
            .iter()
            .copied()
            .filter(|n| self.believed_alive(*n) && Some(*n) != dead)
            .collect();
        let elected = (!candidates.is_empty())
            .then(|| candidates[rng.below(candidates.len() as u64) as usize]);
        if let (Some(dead), Some(_)) = (dead, elected) {
            self.isr.remove(&dead);
        }
        self.leader = elected;
        self.leader_epoch = LeaderEpoch(self.leader_epoch.0 + 1);
        self.partition_epoch = PartitionEpoch(self.partition_epoch.0 + 1);
    }
}

#[derive(Debug)]
enum Msg {
    Fetch {
        to: NodeId,
        report: FollowerReport,
    },
    FetchAnswer {
        to: NodeId,
        leader_epoch: LeaderEpoch,
        start: Offset,
        records: Vec<Record>,
        high_watermark: Offset,
    },
    FetchOutOfRange {
        to: NodeId,
        answer: FetchOutOfRange,
    },
    AskEpochEnd {
        from: NodeId,
        to: NodeId,
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
    },
    EpochEnd {
        to: NodeId,
        answer: EpochEndAnswer,
    },
    Propose(IsrProposal),
    IsrAnswer {
        to: NodeId,
        answer: IsrAnswer,
    },
    Assign {
        to: NodeId,
        incarnation: u32,
        assignment: Assignment,
    },
    Register {
        node: NodeId,
        incarnation: u32,
    },
    LeaseExpired {
        node: NodeId,
        incarnation: u32,
    },
}

#[derive(Debug)]
struct InFlight {
    at: Instant,
    msg: Msg,
}

/// What a run went through, so the test can show it exercised each path it claims to.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    acknowledged: u64,
    elections: u64,
    crashes: u64,
    /// Committed ISR changes that removed a replica, and that added one.
    shrinks: u64,
    expansions: u64,
    /// Follower truncations that cut something.
    truncations: u64,
    /// Retention passes that deleted something, and followers that started afresh at their
    /// leader's log start.
    retentions: u64,
    fresh_starts: u64,
    /// `acks=all` appends refused (`NotEnoughReplicas`) or failed after the append.
    refused: u64,
    failed_after_append: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.acknowledged += other.acknowledged;
        self.elections += other.elections;
        self.crashes += other.crashes;
        self.shrinks += other.shrinks;
        self.expansions += other.expansions;
        self.truncations += other.truncations;
        self.retentions += other.retentions;
        self.fresh_starts += other.fresh_starts;
        self.refused += other.refused;
        self.failed_after_append += other.failed_after_append;
    }
}

/// A produced value: where it went and how it was asked to be acknowledged.
#[derive(Debug)]
struct Produced {
    offset: Offset,
    acks: Acks,
}

#[derive(Debug)]
struct Sim {
    seed: u64,
    rng: SimRng,
    start: Instant,
    now: Instant,
    config: ReplicaConfig,
    nodes: Vec<Node>,
    controller: Controller,
    network: Vec<InFlight>,
    chaos: bool,
    next_value: u64,
    produced: BTreeMap<u64, Produced>,
    /// Acknowledged `acks=all` offsets: value and the leader epoch it was acknowledged in.
    acknowledged: BTreeMap<Offset, (u64, LeaderEpoch)>,
    /// What each offset holds, as any replica showed it below its high watermark.
    /// Indexed by offset; `None` where no replica showed the offset yet (a replica whose log
    /// starts past it, after retention, shows offsets beyond).
    visible: Vec<Option<u64>>,
    /// The highest high watermark each leader epoch's leader has shown.
    leader_high_watermarks: BTreeMap<LeaderEpoch, Offset>,
    trace: VecDeque<String>,
    trace_all: bool,
    coverage: Coverage,
}

/// Which replica settings a seed runs with: mostly the defaults, some without fsync
/// (crashes then keep unflushed bytes), some with `min.insync.replicas` 1.
fn config_for(seed: u64) -> ReplicaConfig {
    let mut config = ReplicaConfig {
        replica_lag_time_max: LAG_TIME_MAX,
        ..ReplicaConfig::default()
    };
    match seed % 8 {
        6 => config.durability = Durability::None,
        7 => config.min_insync_replicas = Some(1),
        _ => {}
    }
    config
}

impl Sim {
    fn new(seed: u64, trace_all: bool) -> Self {
        let now = Instant::now();
        let config = config_for(seed);
        let mut rng = SimRng::new(seed);
        let mut controller = Controller {
            leader: None,
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(0),
            isr: NODES.iter().copied().collect(),
            alive: NODES.iter().map(|n| (*n, Some(0))).collect(),
            registered: NODES.iter().map(|n| (*n, 0)).collect(),
            last_broadcast: now,
        };
        controller.elect(&mut rng, None);
        let nodes = NODES
            .iter()
            .map(|id| Node {
                id: *id,
                alive: true,
                incarnation: 0,
                log: SimLog::default(),
                state: Some(ReplicaState::open(*id, config, LocalLog::default(), None)),
                fetch_sent_at: None,
                epoch_seen: None,
                verified: Offset(0),
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            start: now,
            now,
            config,
            nodes,
            controller,
            network: Vec::new(),
            chaos: true,
            next_value: 0,
            produced: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            visible: Vec::new(),
            leader_high_watermarks: BTreeMap::new(),
            trace: VecDeque::new(),
            trace_all,
            coverage: Coverage::default(),
        };
        sim.broadcast();
        sim
    }

    fn run(&mut self) {
        for _ in 0..CHAOS_STEPS {
            self.step();
        }
        self.chaos = false;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                self.restart(i);
            }
        }
        for _ in 0..HEAL_STEPS {
            self.step();
        }
        self.check_converged();
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.below(1000) < per_mille
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        let elapsed = self.elapsed_ms();
        let line = format!("{elapsed:>6} ms  {}", line());
        if self.trace_all {
            println!("{line}");
        }
        if self.trace.len() == TRACE_LINES_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn elapsed_ms(&self) -> u128 {
        (self.now - self.start).as_millis()
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{}", self.report(&what));
    }

    fn report(&self, what: &dyn std::fmt::Display) -> String {
        let mut events = String::new();
        for line in &self.trace {
            let _ = writeln!(events, "  {line}");
        }
        format!(
            "replica simulation seed {} failed: {what}\nreplay: VLTAVA_REPLICA_SIM_SEED={} cargo test -p vltava-actors replica_state::sim\nlast events:\n{events}",
            self.seed, self.seed
        )
    }

    // ---- The network ---------------------------------------------------------------------

    fn send(&mut self, msg: Msg) {
        let reliable = matches!(msg, Msg::Register { .. } | Msg::LeaseExpired { .. });
        if self.chaos && !reliable && self.chance(LOSS_PER_MILLE) {
            self.note(|| format!("lost {msg:?}"));
            return;
        }
        let delay = DELAY_MS_MIN + self.rng.below(DELAY_MS_MAX - DELAY_MS_MIN + 1);
        let at = self.now + Duration::from_millis(delay);
        self.network.push(InFlight { at, msg });
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|m| m.at <= now);
        self.network = rest;
        // Messages due in the same step arrive in any order.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for m in due {
            self.receive(m.msg);
        }
    }

    fn receive(&mut self, msg: Msg) {
        match msg {
            Msg::Register { node, incarnation } => self.controller_registered(node, incarnation),
            Msg::LeaseExpired { node, incarnation } => {
                self.controller_lease_expired(node, incarnation)
            }
            Msg::Propose(proposal) => self.controller_proposed(proposal),
            Msg::Fetch { to, report } => self.leader_fetched(to, report),
            Msg::FetchAnswer {
                to,
                leader_epoch,
                start,
                records,
                high_watermark,
            } => self.follower_answered(to, leader_epoch, start, records, high_watermark),
            Msg::FetchOutOfRange { to, answer } => self.follower_out_of_range(to, answer),
            Msg::AskEpochEnd {
                from,
                to,
                leader_epoch,
                epoch,
            } => self.leader_asked_epoch_end(from, to, leader_epoch, epoch),
            Msg::EpochEnd { to, answer } => self.follower_epoch_end(to, answer),
            Msg::IsrAnswer { to, answer } => self.leader_isr_answer(to, answer),
            Msg::Assign {
                to,
                incarnation,
                assignment,
            } => self.node_assigned(to, incarnation, assignment),
        }
    }

    fn index(id: NodeId) -> usize {
        NODES
            .iter()
            .position(|n| *n == id)
            .expect("a simulated node")
    }

    /// The live node `id`'s state, or `None` if it is down.
    fn state_of(&mut self, id: NodeId) -> Option<&mut ReplicaState<u64>> {
        let node = &mut self.nodes[Self::index(id)];
        if node.alive {
            node.state.as_mut()
        } else {
            None
        }
    }

    // ---- The controller ------------------------------------------------------------------

    fn broadcast(&mut self) {
        self.controller.last_broadcast = self.now;
        let assignment = self.controller.assignment();
        for id in NODES {
            if let Some(Some(incarnation)) = self.controller.alive.get(&id).copied() {
                self.send(Msg::Assign {
                    to: id,
                    incarnation,
                    assignment: assignment.clone(),
                });
            }
        }
    }

    fn controller_elect(&mut self, dead: Option<NodeId>) {
        self.controller.elect(&mut self.rng, dead);
        self.coverage.elections += 1;
        let c = &self.controller;
        let (leader, epoch, isr) = (c.leader, c.leader_epoch, c.isr.clone());
        self.note(|| format!("controller elects {leader:?} in epoch {epoch}, ISR {isr:?}"));
        self.broadcast();
    }

    fn controller_registered(&mut self, node: NodeId, incarnation: u32) {
        if self.controller.registered[&node] >= incarnation {
            return;
        }
        self.controller.registered.insert(node, incarnation);
        self.controller.alive.insert(node, Some(incarnation));
        self.note(|| format!("controller: {node:?} registered incarnation {incarnation}"));
        // A leader's new incarnation must not lead its old epoch again; a partition without a
        // leader may get one now.
        if self.controller.leader == Some(node) || self.controller.leader.is_none() {
            self.controller_elect(None);
        } else {
            self.broadcast();
        }
    }

    fn controller_lease_expired(&mut self, node: NodeId, incarnation: u32) {
        if self.controller.alive.get(&node).copied().flatten() != Some(incarnation) {
            return;
        }
        self.controller.alive.insert(node, None);
        self.note(|| format!("controller: lease of {node:?} expired"));
        if self.controller.leader == Some(node) {
            self.controller_elect(Some(node));
        }
    }

    fn controller_proposed(&mut self, proposal: IsrProposal) {
        let c = &self.controller;
        let taken = c.leader == Some(proposal.leader)
            && c.leader_epoch == proposal.leader_epoch
            && c.partition_epoch == proposal.partition_epoch
            && proposal.isr.contains(&proposal.leader)
            && proposal.isr.iter().all(|n| NODES.contains(n))
            && proposal
                .isr
                .iter()
                .all(|n| c.isr.contains(n) || c.believed_alive(*n));
        if taken {
            if proposal.isr.len() < c.isr.len() {
                self.coverage.shrinks += 1;
            } else {
                self.coverage.expansions += 1;
            }
            self.controller.isr = proposal.isr.clone();
            self.controller.partition_epoch = PartitionEpoch(self.controller.partition_epoch.0 + 1);
        }
        let c = &self.controller;
        let answer = IsrAnswer {
            proposed_at: proposal.partition_epoch,
            committed: CommittedIsr {
                leader_epoch: c.leader_epoch,
                partition_epoch: c.partition_epoch,
                isr: c.isr.clone(),
            },
        };
        self.note(|| format!("controller: proposal {proposal:?} taken: {taken}"));
        self.send(Msg::IsrAnswer {
            to: proposal.leader,
            answer,
        });
        if taken {
            self.broadcast();
        }
    }

    // ---- The replicas --------------------------------------------------------------------

    fn node_assigned(&mut self, to: NodeId, incarnation: u32, assignment: Assignment) {
        let now = self.now;
        let i = Self::index(to);
        if !self.nodes[i].alive || self.nodes[i].incarnation != incarnation {
            return;
        }
        let state = self.nodes[i]
            .state
            .as_mut()
            .expect("a live node has a state");
        let leads = assignment.leader == Some(to);
        let epoch = assignment.leader_epoch;
        let was_leader_of = (state.role() == RoleKind::Leader)
            .then(|| state.leader_epoch())
            .flatten();
        let result = if leads {
            state.become_leader(assignment, now)
        } else {
            state.become_follower(assignment, now)
        };
        match result {
            Ok(effects) => {
                if leads && was_leader_of != Some(epoch) {
                    self.note(|| format!("{to:?} becomes leader of epoch {epoch}"));
                    self.check_new_leader(i);
                }
                self.carry_out(i, effects);
            }
            Err(ControlError::StaleLeaderEpoch { .. }) => {}
            Err(e) => self.fail(format!("{to:?} refused an assignment: {e}")),
        }
    }

    fn leader_fetched(&mut self, to: NodeId, report: FollowerReport) {
        let now = self.now;
        let Some(state) = self.state_of(to) else {
            return;
        };
        let i = Self::index(to);
        let out_of_range = |log: &SimLog| Msg::FetchOutOfRange {
            to: report.follower,
            answer: FetchOutOfRange {
                leader_epoch: report.leader_epoch,
                fetch_offset: report.log_end_offset,
                leader_log_start_offset: log.start,
                leader_log_end_offset: log.end(),
            },
        };
        let accepted = match state.follower_fetched(report, now) {
            Ok(accepted) => accepted,
            // As the partition answers it: out of range, with the log's bounds.
            Err(ReplicaError::FetchOffsetPastLogEnd { .. }) => {
                let msg = out_of_range(&self.nodes[i].log);
                self.send(msg);
                return;
            }
            Err(_) => return,
        };
        self.carry_out(i, accepted.effects);
        if report.log_end_offset < self.nodes[i].log.start {
            let msg = out_of_range(&self.nodes[i].log);
            self.send(msg);
            return;
        }
        // A random byte budget: followers catch up at different paces.
        let budget = 1 + self.rng.below(FETCH_RECORDS_MAX as u64) as usize;
        let log = &self.nodes[i].log;
        let start = log.index(report.log_end_offset);
        let end = log.records.len().min(start + budget);
        let records = log.records[start..end].to_vec();
        self.send(Msg::FetchAnswer {
            to: report.follower,
            leader_epoch: report.leader_epoch,
            start: report.log_end_offset,
            records,
            high_watermark: accepted.high_watermark,
        });
    }

    fn follower_answered(
        &mut self,
        to: NodeId,
        leader_epoch: LeaderEpoch,
        start: Offset,
        records: Vec<Record>,
        high_watermark: Offset,
    ) {
        let now = self.now;
        let i = Self::index(to);
        let node = &mut self.nodes[i];
        if !node.alive {
            return;
        }
        node.fetch_sent_at = None;
        let state = node.state.as_ref().expect("a live node has a state");
        if state.fetching_from().map(|(_, e)| e) != Some(leader_epoch) || start != node.log.end() {
            return;
        }
        for record in records {
            node.log.append(record);
        }
        let local = node.log.local();
        let state = node.state.as_mut().expect("a live node has a state");
        let effects = state.fetch_applied(leader_epoch, high_watermark, local, now);
        self.carry_out(i, effects);
    }

    fn follower_out_of_range(&mut self, to: NodeId, answer: FetchOutOfRange) {
        let now = self.now;
        let i = Self::index(to);
        let node = &mut self.nodes[i];
        if !node.alive {
            return;
        }
        node.fetch_sent_at = None;
        let state = node.state.as_mut().expect("a live node has a state");
        match state.fetch_out_of_range(answer, now) {
            Ok(effects) => self.carry_out(i, effects),
            Err(e) => self.fail(format!("{to:?}: {e}")),
        }
    }

    fn leader_asked_epoch_end(
        &mut self,
        from: NodeId,
        to: NodeId,
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
    ) {
        let Some(state) = self.state_of(to) else {
            return;
        };
        if state.check_epoch_end_question(leader_epoch).is_err() {
            return;
        }
        let log = &self.nodes[Self::index(to)].log;
        let end = log.epochs.end_offset_for(epoch, log.end());
        self.send(Msg::EpochEnd {
            to: from,
            answer: EpochEndAnswer {
                leader_epoch,
                requested: epoch,
                end,
            },
        });
    }

    fn follower_epoch_end(&mut self, to: NodeId, answer: EpochEndAnswer) {
        let now = self.now;
        let i = Self::index(to);
        let node = &mut self.nodes[i];
        if !node.alive {
            return;
        }
        let state = node.state.as_mut().expect("a live node has a state");
        match state.epoch_end_answered(answer, &node.log.epochs, now) {
            Ok(effects) => self.carry_out(i, effects),
            Err(e) => self.fail(format!("{to:?}: {e}")),
        }
    }

    fn leader_isr_answer(&mut self, to: NodeId, answer: IsrAnswer) {
        let now = self.now;
        let Some(state) = self.state_of(to) else {
            return;
        };
        match state.isr_answered(answer, now) {
            Ok(effects) => self.carry_out(Self::index(to), effects),
            Err(e) => self.fail(format!("{to:?}: {e}")),
        }
    }

    /// Does what the partition actor would do with each effect.
    fn carry_out(&mut self, i: usize, effects: Vec<Effect<u64>>) {
        let now = self.now;
        let id = self.nodes[i].id;
        let mut queue: VecDeque<Effect<u64>> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Acknowledge { waiters } => {
                    for value in waiters {
                        self.acknowledged(i, value);
                    }
                }
                Effect::Fail { waiters, error } => {
                    if matches!(error, ReplicaError::NotEnoughReplicasAfterAppend { .. }) {
                        self.coverage.failed_after_append += waiters.len() as u64;
                    }
                }
                Effect::PublishHighWatermark { high_watermark } => {
                    if self.rng.below(2) == 0 {
                        self.nodes[i].log.high_watermark_checkpoint = Some(high_watermark);
                    }
                }
                Effect::RecordEpochStart {
                    leader_epoch,
                    start_offset,
                } => {
                    let log = &mut self.nodes[i].log;
                    assert_eq!(start_offset, log.end(), "an epoch starts at the log end");
                    log.epochs.assign(leader_epoch, start_offset);
                }
                Effect::ProposeIsr(proposal) => self.send(Msg::Propose(proposal)),
                Effect::AskEpochEnd {
                    leader,
                    leader_epoch,
                    epoch,
                } => self.send(Msg::AskEpochEnd {
                    from: id,
                    to: leader,
                    leader_epoch,
                    epoch,
                }),
                Effect::Truncate { offset } => {
                    let node = &mut self.nodes[i];
                    let before = node.log.end();
                    self.coverage.truncations += 1;
                    node.log.truncate(offset);
                    let local = node.log.local();
                    let state = node.state.as_mut().expect("a live node has a state");
                    queue.extend(state.log_truncated(local, now));
                    self.note(|| format!("{id:?} truncates from {before} to {offset}"));
                }
                Effect::TruncateFullyAndStartAt { offset } => {
                    let node = &mut self.nodes[i];
                    let before = node.log.end();
                    self.coverage.fresh_starts += 1;
                    node.log.start_afresh(offset);
                    let local = node.log.local();
                    let state = node.state.as_mut().expect("a live node has a state");
                    queue.extend(state.log_started_afresh(local, now));
                    self.note(|| {
                        format!("{id:?} starts afresh at {offset} (its log ended at {before})")
                    });
                }
                Effect::StartFetching { .. } | Effect::StopFetching => {
                    self.nodes[i].fetch_sent_at = None;
                }
            }
        }
    }

    // ---- Steps ---------------------------------------------------------------------------

    fn step(&mut self) {
        self.now += STEP;
        self.deliver_due();
        if self
            .now
            .saturating_duration_since(self.controller.last_broadcast)
            >= BROADCAST_INTERVAL
        {
            self.broadcast();
        }
        if self.chaos {
            if self.chance(CRASH_PER_MILLE) {
                // Half the crashes hit a leader: failover is where acknowledged offsets are
                // most at risk.
                let leader = (0..self.nodes.len()).find(|i| {
                    self.nodes[*i]
                        .state
                        .as_ref()
                        .is_some_and(|s| s.role() == RoleKind::Leader)
                });
                let i = match leader {
                    Some(leader) if self.rng.below(2) == 0 => leader,
                    _ => self.rng.below(NODES.len() as u64) as usize,
                };
                if self.nodes[i].alive {
                    self.crash(i);
                }
            }
            for i in 0..self.nodes.len() {
                if !self.nodes[i].alive && self.chance(RESTART_PER_MILLE) {
                    self.restart(i);
                }
            }
            if self.chance(PRODUCE_PER_MILLE) {
                self.produce();
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            // Healing: flushes keep up, so everything can be committed by the end.
            if !self.chaos || self.chance(FLUSH_PER_MILLE) {
                self.flush(i);
            }
            self.fetch(i);
            if self.chaos && self.chance(RETENTION_PER_MILLE) {
                self.retention(i);
            }
            if (self.now - self.start)
                .as_millis()
                .is_multiple_of(TICK_INTERVAL.as_millis())
            {
                let now = self.now;
                let state = self.nodes[i]
                    .state
                    .as_mut()
                    .expect("a live node has a state");
                let effects = state.tick(now);
                self.carry_out(i, effects);
            }
        }
        self.check_step();
    }

    fn crash(&mut self, i: usize) {
        self.coverage.crashes += 1;
        let lose_unflushed = self.config.durability == Durability::Fsync;
        let node = &mut self.nodes[i];
        node.alive = false;
        node.state = None;
        node.fetch_sent_at = None;
        let before = node.log.end();
        node.log.crash(lose_unflushed);
        let (id, incarnation, after) = (node.id, node.incarnation, node.log.end());
        self.note(|| format!("{id:?} crashes: log end {before} -> {after}"));
        self.network.push(InFlight {
            at: self.now + LEASE,
            msg: Msg::LeaseExpired {
                node: id,
                incarnation,
            },
        });
    }

    fn restart(&mut self, i: usize) {
        let config = self.config;
        let node = &mut self.nodes[i];
        node.alive = true;
        node.incarnation += 1;
        let state = ReplicaState::open(
            node.id,
            config,
            node.log.local(),
            node.log.high_watermark_checkpoint,
        );
        node.verified = node.verified.min(state.high_watermark());
        node.state = Some(state);
        let (id, incarnation) = (node.id, node.incarnation);
        self.note(|| format!("{id:?} restarts (incarnation {incarnation})"));
        self.send(Msg::Register {
            node: id,
            incarnation,
        });
    }

    fn produce(&mut self) {
        let now = self.now;
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].alive
                    && self.nodes[*i]
                        .state
                        .as_ref()
                        .is_some_and(|s| s.role() == RoleKind::Leader)
            })
            .collect();
        if leaders.is_empty() {
            return;
        }
        let i = leaders[self.rng.below(leaders.len() as u64) as usize];
        let acks = if self.chance(800) {
            Acks::All
        } else {
            Acks::Leader
        };
        let node = &mut self.nodes[i];
        let state = node.state.as_mut().expect("a leader has a state");
        if let Err(e) = state.admit_append(acks) {
            if matches!(e, ReplicaError::NotEnoughReplicas { .. }) {
                self.coverage.refused += 1;
            }
            return;
        }
        let epoch = state.leader_epoch().expect("a leader has an epoch");
        let value = self.next_value;
        self.next_value += 1;
        let offset = node.log.end();
        node.log.append(Record { epoch, value });
        self.produced.insert(value, Produced { offset, acks });
        let local = node.log.local();
        let effects = state.appended(local, offset, acks, value, now);
        self.carry_out(i, effects);
    }

    /// Deletes a prefix below the replica's high watermark: all of it half the time, some of
    /// it otherwise.
    fn retention(&mut self, i: usize) {
        let now = self.now;
        let Some(high_watermark) = self.nodes[i]
            .state
            .as_ref()
            .map(ReplicaState::high_watermark)
        else {
            return;
        };
        let start = self.nodes[i].log.start;
        if high_watermark <= start {
            return;
        }
        let to = if self.rng.below(2) == 0 {
            high_watermark
        } else {
            Offset(start.0 + 1 + self.rng.below(high_watermark.0 - start.0))
        };
        self.coverage.retentions += 1;
        let node = &mut self.nodes[i];
        node.log.delete_below(to);
        let local = node.log.local();
        let id = node.id;
        let state = node.state.as_mut().expect("a live node has a state");
        let effects = state.local_log_changed(local, now);
        self.note(|| format!("{id:?}: retention moves the log start to {to}"));
        self.carry_out(i, effects);
    }

    fn flush(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let unflushed = (node.log.end().0 - node.log.flushed.0) as usize;
        if unflushed == 0 {
            return;
        }
        // A flush covers what was written when it started: all of it, or some of it.
        let covered = if self.chaos {
            1 + self.rng.below(unflushed as u64) as usize
        } else {
            unflushed
        };
        node.log.flushed = node.log.flushed.plus(covered as u64);
        let local = node.log.local();
        let state = node.state.as_mut().expect("a live node has a state");
        let effects = state.local_log_changed(local, now);
        self.carry_out(i, effects);
    }

    fn fetch(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some((leader, leader_epoch)) =
            node.state.as_ref().and_then(ReplicaState::fetching_from)
        else {
            return;
        };
        if node
            .fetch_sent_at
            .is_some_and(|sent| now.saturating_duration_since(sent) < FETCH_TIMEOUT)
        {
            return;
        }
        node.fetch_sent_at = Some(now);
        let local = node.log.local();
        let report = FollowerReport {
            follower: node.id,
            leader_epoch,
            log_end_offset: local.log_end_offset,
            flushed_offset: local.flushed_offset,
        };
        self.send(Msg::Fetch { to: leader, report });
    }

    // ---- Checks --------------------------------------------------------------------------

    fn acknowledged(&mut self, i: usize, value: u64) {
        let produced = &self.produced[&value];
        if produced.acks != Acks::All {
            return;
        }
        let offset = produced.offset;
        let node = &self.nodes[i];
        let state = node.state.as_ref().expect("a live node has a state");
        let epoch = state.leader_epoch().expect("a leader has an epoch");
        if node.log.value_at(offset) != Some(value) {
            self.fail(format!(
                "{:?} acknowledged value {value} at offset {offset}, which its log does not hold",
                node.id
            ));
        }
        if offset >= state.high_watermark() {
            self.fail(format!(
                "{:?} acknowledged offset {offset} at or past its high watermark {}",
                node.id,
                state.high_watermark()
            ));
        }
        if let Some((other, _)) = self.acknowledged.insert(offset, (value, epoch))
            && other != value
        {
            self.fail(format!(
                "offset {offset} was acknowledged with value {other}, then with {value}"
            ));
        }
        // Every leader of a later epoch must hold it too (unless its retention deleted it).
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            let Some(state) = node.state.as_ref().filter(|_| node.alive) else {
                continue;
            };
            if state.role() == RoleKind::Leader
                && state.leader_epoch() > Some(epoch)
                && offset >= node.log.start
                && node.log.value_at(offset) != Some(value)
            {
                self.fail(format!(
                    "offset {offset} acknowledged in epoch {epoch} is not on {:?}, leader of epoch {:?}",
                    node.id,
                    state.leader_epoch()
                ));
            }
        }
        self.note(|| format!("acknowledged offset {offset} = {value} in epoch {epoch}"));
    }

    /// A replica that becomes leader holds every offset acknowledged in an earlier epoch.
    fn check_new_leader(&self, i: usize) {
        let node = &self.nodes[i];
        let state = node.state.as_ref().expect("a live node has a state");
        let epoch = state.leader_epoch().expect("a leader has an epoch");
        for (offset, (value, acked_in)) in self.acknowledged.range(node.log.start..) {
            if *acked_in < epoch && node.log.value_at(*offset) != Some(*value) {
                self.fail(format!(
                    "{:?} became leader of epoch {epoch} without offset {offset} = {value}, acknowledged in epoch {acked_in} (it holds {:?})",
                    node.id,
                    node.log.value_at(*offset)
                ));
            }
        }
    }

    fn check_step(&mut self) {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let Some(state) = node.state.as_ref().filter(|_| node.alive) else {
                continue;
            };
            let high_watermark = state.high_watermark();
            let epoch = state.leader_epoch();
            if epoch < node.epoch_seen && epoch.is_some() {
                self.fail(format!(
                    "{:?}'s leader epoch went back to {epoch:?}",
                    node.id
                ));
            }
            let epoch_seen = node.epoch_seen.max(epoch);
            if state.role() == RoleKind::Leader {
                let epoch = epoch.expect("a leader has an epoch");
                let shown = self
                    .leader_high_watermarks
                    .entry(epoch)
                    .or_insert(high_watermark);
                if high_watermark < *shown {
                    let shown = *shown;
                    self.fail(format!(
                        "the high watermark of epoch {epoch} went back from {shown} to {high_watermark}"
                    ));
                }
                *shown = high_watermark;
            }
            // Every offset shown below a high watermark holds one value everywhere, ever.
            // Offsets below the log start are gone from this replica: nothing to check there.
            let mut verified = node.verified.min(high_watermark).max(node.log.start);
            while verified < high_watermark {
                let value = node
                    .log
                    .value_at(verified)
                    .expect("the high watermark is within the log");
                let index = usize::try_from(verified.0).expect("simulated logs are small");
                if self.visible.len() <= index {
                    self.visible.resize(index + 1, None);
                }
                match self.visible[index] {
                    Some(seen) if seen != value => {
                        self.fail(format!(
                            "offset {verified} holds {value} on {:?} below its high watermark, but {seen} was shown before",
                            node.id
                        ));
                    }
                    Some(_) => {}
                    None => self.visible[index] = Some(value),
                }
                verified = verified.plus(1);
            }
            let node = &mut self.nodes[i];
            node.verified = verified;
            node.epoch_seen = epoch_seen;
        }
    }

    /// After healing: one leader, every replica in the ISR, every log equal and committed,
    /// every acknowledged offset there.
    fn check_converged(&self) {
        let leaders: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| {
                n.state
                    .as_ref()
                    .is_some_and(|s| s.role() == RoleKind::Leader)
            })
            .collect();
        let [leader] = leaders.as_slice() else {
            self.fail(format!("{} leaders after healing", leaders.len()));
        };
        let state = leader.state.as_ref().expect("a leader has a state");
        if state.leader_epoch() != Some(self.controller.leader_epoch) {
            self.fail("the leader is not at the controller's epoch after healing");
        }
        if self.controller.isr.len() != NODES.len() {
            self.fail(format!(
                "the ISR is {:?} after healing",
                self.controller.isr
            ));
        }
        if state.high_watermark() != leader.log.end() {
            self.fail(format!(
                "the high watermark {} is short of the log end {} after healing",
                state.high_watermark(),
                leader.log.end()
            ));
        }
        for node in &self.nodes {
            let from = node.log.start.max(leader.log.start);
            let same = node.log.end() == leader.log.end()
                && (from.0..node.log.end().0)
                    .all(|o| node.log.value_at(Offset(o)) == leader.log.value_at(Offset(o)));
            if !same {
                self.fail(format!(
                    "{:?}'s log [{}, {}) differs from the leader's [{}, {}) after healing",
                    node.id,
                    node.log.start,
                    node.log.end(),
                    leader.log.start,
                    leader.log.end()
                ));
            }
        }
        for (offset, (value, _)) in self.acknowledged.range(leader.log.start..) {
            if leader.log.value_at(*offset) != Some(*value) {
                self.fail(format!("acknowledged offset {offset} = {value} was lost"));
            }
        }
    }
}

/// Runs one seed; a panic anywhere in it (a check here, or an invariant the state machine
/// asserts) comes back as a report naming the seed, with the last events.
fn run_seed(seed: u64, trace_all: bool) -> Result<Coverage, String> {
    let mut sim = Sim::new(seed, trace_all);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    match outcome {
        Ok(()) => {
            let mut coverage = sim.coverage;
            coverage.acknowledged = sim.acknowledged.len() as u64;
            Ok(coverage)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            if what.starts_with("replica simulation seed") {
                return Err(what);
            }
            Err(sim.report(&what))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

/// Threads the seeds are spread over: the machine the suite runs on has two cores.
const SIM_THREADS: u64 = 2;

/// Runs `SEEDS_DEFAULT` seeds of the simulation (see the module doc for what each checks
/// after every step and at the end). A failure names its seed, which replays alone with
/// `VLTAVA_REPLICA_SIM_SEED`. The totals show that the runs went through crashes, elections,
/// ISR shrinks and expansions, truncations and refusals, so the checks were not vacuous.
#[test]
fn acknowledged_offsets_survive_loss_reordering_crashes_and_restarts() {
    if let Some(seed) = env_u64("VLTAVA_REPLICA_SIM_SEED") {
        if let Err(report) = run_seed(seed, true) {
            panic!("{report}");
        }
        return;
    }
    let seeds = env_u64("VLTAVA_REPLICA_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let started = std::time::Instant::now();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let outcomes: Vec<Result<Coverage, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SIM_THREADS)
            .map(|first| {
                let failed = &failed;
                scope.spawn(move || {
                    let mut total = Coverage::default();
                    for seed in (first..seeds).step_by(SIM_THREADS as usize) {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match run_seed(seed, false) {
                            Ok(coverage) => total.add(&coverage),
                            Err(report) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return Err(report);
                            }
                        }
                    }
                    Ok(total)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker catches its seeds' panics"))
            .collect()
    });
    let mut total = Coverage::default();
    for outcome in outcomes {
        match outcome {
            Ok(coverage) => total.add(&coverage),
            Err(report) => panic!("{report}"),
        }
    }
    println!("{seeds} seeds in {:?}: {total:?}", started.elapsed());
    assert!(
        total.acknowledged > seeds * 100,
        "the runs acknowledge enough to mean something: {total:?}"
    );
    let Coverage {
        elections,
        crashes,
        shrinks,
        expansions,
        truncations,
        refused,
        failed_after_append,
        retentions,
        fresh_starts,
        ..
    } = total;
    for (what, count) in [
        ("elections", elections),
        ("crashes", crashes),
        ("ISR shrinks", shrinks),
        ("ISR expansions", expansions),
        ("truncations", truncations),
        ("retention passes", retentions),
        ("NotEnoughReplicas refusals", refused),
        ("NotEnoughReplicasAfterAppend failures", failed_after_append),
    ] {
        // Each comes up more than once per seed on average; a few seeds (when replaying by
        // hand) may go without some.
        assert!(
            seeds < 100 || count >= seeds,
            "too few {what} ({count}) for {seeds} seeds: {total:?}"
        );
    }
    // Rarer: a follower down long enough for its leader's retention to pass its log end.
    assert!(
        seeds < 100 || fresh_starts >= seeds / 10,
        "too few fresh starts ({fresh_starts}) for {seeds} seeds: {total:?}"
    );
}
