//! A history checker for cluster tests: clients record what they observed (acknowledged and
//! attempted writes, records read, leader epochs seen, position resets) and replicas' logs as
//! dumped at the end; [`History::check`] then decides pass or fail from that record alone, so a
//! fault test never waits a fixed time and hopes.
//!
//! # Recording
//! A [`History`] is a cheap `Clone` over one shared record: give a clone to every producer and
//! consumer thread or task. Events keep the order in which they were recorded, so the order of
//! one reader's or one client's events is the order that reader or client saw them.
//!
//! # What tests must guarantee
//! - **Values are unique:** every record a test writes has a value no other record of the test
//!   has (use [`unique_value`]). A record is identified by its (key, value), so the checker can
//!   tell a duplicate from a second write.
//! - **One reader id per consumer session:** offsets read are compared within a session; a
//!   restarted or new consumer takes a new id.
//! - **Acknowledged means promised:** record as acknowledged only a write whose survival is
//!   promised (acks=all); a write whose outcome is unknown (a timeout, or acks=1 across a
//!   failover) is recorded as attempted.
//! - A missing key (`None`) is recorded as the empty key.
//!
//! # Reading a history
//! [`History::note`] records what the test did (a fault, a heal) among the clients' events,
//! and [`History::write_to`] writes every event and replica record, one per line, for a person
//! to read when a long run fails.
//!
//! # Checks
//! 1. [`Violation::Lost`]: an acknowledged write was never read (with
//!    [`CheckOptions::require_all_acknowledged_read`]).
//! 2. [`Violation::Duplicate`]: a (key, value) at two offsets of its partition, whether it was
//!    acknowledged or only attempted.
//! 3. [`Violation::Conflict`]: two different values seen at one offset by reads (or a read and a
//!    replica log) where no acknowledgement is involved.
//! 4. [`Violation::AcknowledgedOverwritten`]: an acknowledged offset holds another value in a
//!    read, a replica log or another acknowledgement.
//! 5. [`Violation::OutOfOrder`]: one reader's offsets in a partition did not strictly increase
//!    (a position reset or seek by that reader restarts the order).
//! 6. [`Violation::EpochRegressed`]: a client saw a partition's leader epoch go back.
//! 7. [`Violation::Truncated`]: an offset read or acknowledged is missing from a replica log
//!    that holds earlier and later offsets, or is past the end of every replica log.
//! 8. [`Violation::ReplicasDisagree`]: two replica logs hold different values at one offset;
//!    [`Violation::ReplicaLogEndsDiffer`]: their log ends differ (with
//!    [`CheckOptions::replicas_identical`]).
//! 9. [`Violation::TooManyPositionResets`]: more resets than
//!    [`CheckOptions::max_position_resets`].
//! 10. [`Violation::Unwritten`]: a value read that no write produced (with
//!     [`CheckOptions::require_reads_written`]).
//!
//! One disagreement is reported once: by check 4 when an acknowledgement is involved, by
//! check 8 when only replica logs disagree, and by check 3 otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vltava_messages::{LeaderEpoch, NodeId, Offset, PartitionId};

#[cfg(test)]
mod tests;

/// How many violations [`Report::assert_ok`] prints; the rest are counted, since a broken run
/// can produce thousands and the first ones tell the story.
pub const VIOLATIONS_PRINTED_MAX: usize = 50;

/// How many bytes of a key or value a violation shows; test payloads are short, and a longer
/// one is cut with its length said.
pub const PAYLOAD_SHOWN_BYTES_MAX: usize = 64;

/// A unique value for the `seq`-th write of writer `writer`: `w{writer}-s{seq}`, readable in a
/// violation and parsed back by [`parse_unique_value`].
#[must_use]
pub fn unique_value(writer: u32, seq: u64) -> Vec<u8> {
    format!("w{writer}-s{seq}").into_bytes()
}

/// The (writer, seq) of a value made by [`unique_value`], or `None` for any other bytes.
#[must_use]
pub fn parse_unique_value(value: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (writer, seq) = text.strip_prefix('w')?.split_once("-s")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(writer) || !digits(seq) {
        return None;
    }
    Some((writer.parse().ok()?, seq.parse().ok()?))
}

/// A topic's partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: PartitionId,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition.0)
    }
}

/// A record's key and value, which together identify a write (values are unique per test).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Payload {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {} value {}", Shown(&self.key), Shown(&self.value))
    }
}

/// Bytes as a quoted string when they are printable UTF-8, else as hex; cut at
/// `PAYLOAD_SHOWN_BYTES_MAX`.
struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(PAYLOAD_SHOWN_BYTES_MAX)];
        match std::str::from_utf8(shown) {
            Ok(text) if !text.chars().any(char::is_control) => write!(f, "{text:?}")?,
            _ => {
                f.write_str("0x")?;
                for byte in shown {
                    write!(f, "{byte:02x}")?;
                }
            }
        }
        if shown.len() < self.0.len() {
            write!(f, "..({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Where a value at an offset was seen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A producer's acknowledgement.
    Acknowledged,
    /// A record read by this reader.
    Read { reader: String },
    /// This node's replica log, as dumped at the end.
    Replica { node: NodeId },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Acknowledged => f.write_str("acknowledged"),
            Source::Read { reader } => write!(f, "read by {reader}"),
            Source::Replica { node } => write!(f, "replica log of node {}", node.0),
        }
    }
}

/// What [`History::check`] requires beyond what always holds.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Check 1: every acknowledged write was read. Set it when the test consumed every
    /// partition to its end.
    pub require_all_acknowledged_read: bool,
    /// Check 8: every replica log of a partition ends at the same offset (the test waited until
    /// the replicas caught up before dumping them).
    pub replicas_identical: bool,
    /// Check 9: at most this many position resets over all readers; `Some(0)` forbids them.
    pub max_position_resets: Option<usize>,
    /// Check 10: every value read was written (acknowledged or attempted). Set it when the test
    /// recorded every write to the topics it reads.
    pub require_reads_written: bool,
}

/// One thing a history shows that must not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Check 1: an acknowledged write no reader read.
    Lost {
        at: TopicPartition,
        offset: Offset,
        payload: Payload,
    },
    /// Check 2: one write seen at several offsets of its partition.
    Duplicate {
        at: TopicPartition,
        payload: Payload,
        offsets: Vec<Offset>,
    },
    /// Check 3: two values at one offset, no acknowledgement involved.
    Conflict {
        at: TopicPartition,
        offset: Offset,
        first: (Source, Payload),
        second: (Source, Payload),
    },
    /// Check 4: an acknowledged offset seen holding another value.
    AcknowledgedOverwritten {
        at: TopicPartition,
        offset: Offset,
        acknowledged: Payload,
        observed: (Source, Payload),
    },
    /// Check 5: a reader's offset did not increase within a partition.
    OutOfOrder {
        reader: String,
        at: TopicPartition,
        previous: (Offset, Payload),
        next: (Offset, Payload),
    },
    /// Check 6: a client saw a leader epoch lower than one it saw before.
    EpochRegressed {
        client: String,
        at: TopicPartition,
        previous: LeaderEpoch,
        next: LeaderEpoch,
    },
    /// Check 7: an offset read or acknowledged, then missing from the replica logs: a hole in
    /// `node`'s log below `later`, or (`node` `None`) cut from the end of every replica log.
    Truncated {
        at: TopicPartition,
        offset: Offset,
        observed: (Source, Payload),
        node: Option<NodeId>,
        later: Option<(Offset, Payload)>,
    },
    /// Check 8: two replica logs hold different values at one offset.
    ReplicasDisagree {
        at: TopicPartition,
        offset: Offset,
        first: (NodeId, Payload),
        second: (NodeId, Payload),
    },
    /// Check 8 with `replicas_identical`: two replica logs end at different offsets (the log
    /// end offset: the next offset to assign, `None` for an empty log).
    ReplicaLogEndsDiffer {
        at: TopicPartition,
        first: (NodeId, Option<Offset>),
        second: (NodeId, Option<Offset>),
    },
    /// Check 9: the `count`-th position reset, past the `max` allowed.
    TooManyPositionResets {
        reader: String,
        at: TopicPartition,
        from: Offset,
        to: Offset,
        count: usize,
        max: usize,
    },
    /// Check 10: a value read that no write produced.
    Unwritten {
        at: TopicPartition,
        offset: Offset,
        observed: (Source, Payload),
    },
}

/// Which check a [`Violation`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    Lost,
    Duplicate,
    Conflict,
    AcknowledgedOverwritten,
    OutOfOrder,
    EpochRegressed,
    Truncated,
    ReplicasDisagree,
    ReplicaLogEndsDiffer,
    TooManyPositionResets,
    Unwritten,
}

impl Violation {
    /// The check this violation breaks.
    #[must_use]
    pub fn kind(&self) -> ViolationKind {
        match self {
            Violation::Lost { .. } => ViolationKind::Lost,
            Violation::Duplicate { .. } => ViolationKind::Duplicate,
            Violation::Conflict { .. } => ViolationKind::Conflict,
            Violation::AcknowledgedOverwritten { .. } => ViolationKind::AcknowledgedOverwritten,
            Violation::OutOfOrder { .. } => ViolationKind::OutOfOrder,
            Violation::EpochRegressed { .. } => ViolationKind::EpochRegressed,
            Violation::Truncated { .. } => ViolationKind::Truncated,
            Violation::ReplicasDisagree { .. } => ViolationKind::ReplicasDisagree,
            Violation::ReplicaLogEndsDiffer { .. } => ViolationKind::ReplicaLogEndsDiffer,
            Violation::TooManyPositionResets { .. } => ViolationKind::TooManyPositionResets,
            Violation::Unwritten { .. } => ViolationKind::Unwritten,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost {
                at,
                offset,
                payload,
            } => write!(
                f,
                "lost: {at} offset {offset}: acknowledged {payload} was never read"
            ),
            Violation::Duplicate {
                at,
                payload,
                offsets,
            } => {
                let offsets: Vec<String> = offsets.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "duplicate: {at} offsets {}: each holds {payload}",
                    offsets.join(", ")
                )
            }
            Violation::Conflict {
                at,
                offset,
                first,
                second,
            } => write!(
                f,
                "conflict: {at} offset {offset}: {} {} but {} {}",
                first.0, first.1, second.0, second.1
            ),
            Violation::AcknowledgedOverwritten {
                at,
                offset,
                acknowledged,
                observed,
            } => write!(
                f,
                "acknowledged overwritten: {at} offset {offset}: acknowledged {acknowledged} \
                 but {} {}",
                observed.0, observed.1
            ),
            Violation::OutOfOrder {
                reader,
                at,
                previous,
                next,
            } => write!(
                f,
                "out of order: {at}: {reader} read offset {} ({}) after offset {} ({})",
                next.0, next.1, previous.0, previous.1
            ),
            Violation::EpochRegressed {
                client,
                at,
                previous,
                next,
            } => write!(
                f,
                "leader epoch regressed: {at}: {client} saw epoch {next} after epoch {previous}"
            ),
            Violation::Truncated {
                at,
                offset,
                observed,
                node: Some(node),
                later,
            } => {
                write!(
                    f,
                    "truncated: {at} offset {offset}: {} {} is missing from the replica log of \
                     node {}",
                    observed.0, observed.1, node.0
                )?;
                if let Some((later, payload)) = later {
                    write!(f, ", which holds offset {later} ({payload})")?;
                }
                Ok(())
            }
            Violation::Truncated {
                at,
                offset,
                observed,
                node: None,
                ..
            } => write!(
                f,
                "truncated: {at} offset {offset}: {} {} is past the end of every replica log",
                observed.0, observed.1
            ),
            Violation::ReplicasDisagree {
                at,
                offset,
                first,
                second,
            } => write!(
                f,
                "replicas disagree: {at} offset {offset}: node {} holds {} but node {} holds {}",
                first.0.0, first.1, second.0.0, second.1
            ),
            Violation::ReplicaLogEndsDiffer { at, first, second } => {
                let end = |end: &Option<Offset>| end.map_or("empty".to_owned(), |o| o.to_string());
                write!(
                    f,
                    "replica log ends differ: {at}: node {} ends at {} but node {} at {}",
                    first.0.0,
                    end(&first.1),
                    second.0.0,
                    end(&second.1)
                )
            }
            Violation::TooManyPositionResets {
                reader,
                at,
                from,
                to,
                count,
                max,
            } => write!(
                f,
                "position reset {count} of at most {max}: {at}: {reader} reset from offset \
                 {from} to {to}"
            ),
            Violation::Unwritten {
                at,
                offset,
                observed,
            } => write!(
                f,
                "unwritten: {at} offset {offset}: {} {} that no write produced",
                observed.0, observed.1
            ),
        }
    }
}

/// What [`History::check`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every violation, in check order, then by partition and offset.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether the history broke no check.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The kinds of the violations found, each once.
    #[must_use]
    pub fn kinds(&self) -> BTreeSet<ViolationKind> {
        self.violations.iter().map(Violation::kind).collect()
    }

    /// Panics listing the violations (the first `VIOLATIONS_PRINTED_MAX`, then a count of
    /// the rest) if there are any.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.violations.is_empty() {
            return f.write_str("history check: no violations");
        }
        write!(f, "history check: {} violations", self.violations.len())?;
        for violation in self.violations.iter().take(VIOLATIONS_PRINTED_MAX) {
            write!(f, "\n  {violation}")?;
        }
        if self.violations.len() > VIOLATIONS_PRINTED_MAX {
            write!(
                f,
                "\n  ... and {} more",
                self.violations.len() - VIOLATIONS_PRINTED_MAX
            )?;
        }
        Ok(())
    }
}

/// One recorded event, in the order recorded.
#[derive(Clone, Debug)]
enum Event {
    Acknowledged {
        at: TopicPartition,
        offset: Offset,
        payload: Payload,
    },
    Attempted {
        at: TopicPartition,
        payload: Payload,
    },
    Read {
        reader: String,
        at: TopicPartition,
        offset: Offset,
        payload: Payload,
    },
    EpochSeen {
        client: String,
        at: TopicPartition,
        epoch: LeaderEpoch,
    },
    /// A reset (`counted`, check 9) or a deliberate seek: either restarts the reader's order.
    Repositioned {
        reader: String,
        at: TopicPartition,
        from: Offset,
        to: Offset,
        counted: bool,
    },
    /// Something the test did (a fault, a heal), kept in order among what clients saw so that
    /// a person reading the history sees what happened when; no check reads it.
    Note { text: String },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Acknowledged {
                at,
                offset,
                payload,
            } => write!(f, "acknowledged {at} offset {offset} {payload}"),
            Event::Attempted { at, payload } => write!(f, "attempted {at} {payload}"),
            Event::Read {
                reader,
                at,
                offset,
                payload,
            } => write!(f, "read by {reader} {at} offset {offset} {payload}"),
            Event::EpochSeen { client, at, epoch } => {
                write!(f, "epoch seen by {client} {at} epoch {epoch}")
            }
            Event::Repositioned {
                reader,
                at,
                from,
                to,
                counted,
            } => {
                let what = if *counted { "reset" } else { "seek" };
                write!(f, "{what} by {reader} {at} from offset {from} to {to}")
            }
            Event::Note { text } => write!(f, "note: {text}"),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    events: Vec<Event>,
    /// The last dump of each replica's log, by partition and node, offset to payload.
    replica_logs: BTreeMap<TopicPartition, BTreeMap<NodeId, BTreeMap<Offset, Payload>>>,
}

/// What clients observed and replicas held, shared by every thread of a test.
#[derive(Clone, Debug, Default)]
pub struct History {
    record: Arc<Mutex<Record>>,
}

fn at(topic: &str, partition: PartitionId) -> TopicPartition {
    TopicPartition {
        topic: topic.to_owned(),
        partition,
    }
}

fn payload(key: &[u8], value: &[u8]) -> Payload {
    Payload {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

impl History {
    /// An empty history.
    #[must_use]
    pub fn new() -> History {
        History::default()
    }

    /// The record; a thread that panicked while recording leaves it usable, since the events
    /// recorded before the panic are still true.
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, event: Event) {
        self.lock().events.push(event);
    }

    /// A write the broker acknowledged at `offset` (for a batch, one call per record, its
    /// offset the base offset plus its index).
    pub fn acknowledged(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        key: &[u8],
        value: &[u8],
    ) {
        self.push(Event::Acknowledged {
            at: at(topic, partition),
            offset,
            payload: payload(key, value),
        });
    }

    /// How many writes to `topic`-`partition` were acknowledged so far: a test waits on it to
    /// see producers carry on after a fault.
    #[must_use]
    pub fn acknowledged_count(&self, topic: &str, partition: PartitionId) -> usize {
        let wanted = at(topic, partition);
        self.lock()
            .events
            .iter()
            .filter(|e| matches!(e, Event::Acknowledged { at, .. } if *at == wanted))
            .count()
    }

    /// A write sent whose outcome is unknown (a timeout): it may be absent, or present at one
    /// offset.
    pub fn attempted(&self, topic: &str, partition: PartitionId, key: &[u8], value: &[u8]) {
        self.push(Event::Attempted {
            at: at(topic, partition),
            payload: payload(key, value),
        });
    }

    /// One record `reader` (a consumer session) read.
    pub fn read(
        &self,
        reader: &str,
        topic: &str,
        partition: PartitionId,
        offset: Offset,
        key: &[u8],
        value: &[u8],
    ) {
        self.push(Event::Read {
            reader: reader.to_owned(),
            at: at(topic, partition),
            offset,
            payload: payload(key, value),
        });
    }

    /// A leader epoch `client` saw for a partition (in metadata or an answer), in the order
    /// that client saw them.
    pub fn leader_epoch_seen(
        &self,
        client: &str,
        topic: &str,
        partition: PartitionId,
        epoch: LeaderEpoch,
    ) {
        self.push(Event::EpochSeen {
            client: client.to_owned(),
            at: at(topic, partition),
            epoch,
        });
    }

    /// `reader` reset its position in a partition from `from` to `to` (after
    /// `OffsetOutOfRange` and the like): counted by check 9, and the reader's order (check 5)
    /// restarts.
    pub fn position_reset(
        &self,
        reader: &str,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        to: Offset,
    ) {
        self.push(Event::Repositioned {
            reader: reader.to_owned(),
            at: at(topic, partition),
            from,
            to,
            counted: true,
        });
    }

    /// `reader` moved its position on purpose (a seek the test asked for): not a reset, but
    /// the reader's order (check 5) restarts.
    pub fn seeked(
        &self,
        reader: &str,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        to: Offset,
    ) {
        self.push(Event::Repositioned {
            reader: reader.to_owned(),
            at: at(topic, partition),
            from,
            to,
            counted: false,
        });
    }

    /// A note of what the test did (a fault injected, a node back), recorded in order among
    /// the clients' events for a person reading the history; no check reads it.
    pub fn note(&self, text: impl Into<String>) {
        self.push(Event::Note { text: text.into() });
    }

    /// Writes every event recorded so far, one per line in the order recorded, then every
    /// replica log dumped, one record per line: the history a person reads after a failed
    /// (or passed) run. Returns the number of lines written.
    ///
    /// # Errors
    /// The first error `out` returns.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<u64> {
        let record = self.lock();
        let mut lines = 0u64;
        for (index, event) in record.events.iter().enumerate() {
            writeln!(out, "{index} {event}")?;
            lines += 1;
        }
        for (at, nodes) in &record.replica_logs {
            for (node, log) in nodes {
                for (offset, payload) in log {
                    writeln!(
                        out,
                        "replica log of node {} {at} offset {offset} {payload}",
                        node.0
                    )?;
                    lines += 1;
                }
            }
        }
        Ok(lines)
    }

    /// `node`'s log of a partition as dumped at the end, (offset, key, value) per record; a
    /// second dump of the same replica replaces the first.
    pub fn replica_log(
        &self,
        node: NodeId,
        topic: &str,
        partition: PartitionId,
        records: Vec<(Offset, Vec<u8>, Vec<u8>)>,
    ) {
        let log = records
            .into_iter()
            .map(|(offset, key, value)| (offset, Payload { key, value }))
            .collect();
        self.lock()
            .replica_logs
            .entry(at(topic, partition))
            .or_default()
            .insert(node, log);
    }

    /// Runs every check on what was recorded so far.
    #[must_use]
    pub fn check(&self, options: CheckOptions) -> Report {
        let record = self.lock();
        let mut violations = Vec::new();
        check_lost(&record, &options, &mut violations);
        check_duplicates(&record, &mut violations);
        check_offsets_hold_one_value(&record, &mut violations);
        check_read_order(&record, &mut violations);
        check_epochs(&record, &mut violations);
        check_truncation(&record, &mut violations);
        check_replicas(&record, &options, &mut violations);
        check_position_resets(&record, &options, &mut violations);
        check_reads_written(&record, &options, &mut violations);
        Report { violations }
    }
}

/// Every value seen at each offset, with where it was seen: acknowledgements, reads and
/// replica logs.
type Observations = BTreeMap<(TopicPartition, Offset), BTreeMap<Payload, BTreeSet<Source>>>;

fn observations(record: &Record) -> Observations {
    let mut seen = Observations::new();
    let mut add = |at: &TopicPartition, offset: Offset, payload: &Payload, source: Source| {
        seen.entry((at.clone(), offset))
            .or_default()
            .entry(payload.clone())
            .or_default()
            .insert(source);
    };
    for event in &record.events {
        match event {
            Event::Acknowledged {
                at,
                offset,
                payload,
            } => add(at, *offset, payload, Source::Acknowledged),
            Event::Read {
                reader,
                at,
                offset,
                payload,
            } => add(
                at,
                *offset,
                payload,
                Source::Read {
                    reader: reader.clone(),
                },
            ),
            _ => {}
        }
    }
    for (at, nodes) in &record.replica_logs {
        for (node, log) in nodes {
            for (offset, payload) in log {
                add(at, *offset, payload, Source::Replica { node: *node });
            }
        }
    }
    seen
}

/// Check 1.
fn check_lost(record: &Record, options: &CheckOptions, violations: &mut Vec<Violation>) {
    if !options.require_all_acknowledged_read {
        return;
    }
    let read: BTreeSet<(&TopicPartition, Offset)> = record
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Read { at, offset, .. } => Some((at, *offset)),
            _ => None,
        })
        .collect();
    let mut lost = BTreeSet::new();
    for event in &record.events {
        if let Event::Acknowledged {
            at,
            offset,
            payload,
        } = event
            && !read.contains(&(at, *offset))
        {
            lost.insert((at, *offset, payload));
        }
    }
    violations.extend(
        lost.into_iter()
            .map(|(at, offset, payload)| Violation::Lost {
                at: at.clone(),
                offset,
                payload: payload.clone(),
            }),
    );
}

/// Check 2 (which also covers attempted writes: a value is at most at one offset).
fn check_duplicates(record: &Record, violations: &mut Vec<Violation>) {
    let mut offsets_of: BTreeMap<(TopicPartition, Payload), BTreeSet<Offset>> = BTreeMap::new();
    for ((at, offset), values) in observations(record) {
        for payload in values.into_keys() {
            offsets_of
                .entry((at.clone(), payload))
                .or_default()
                .insert(offset);
        }
    }
    for ((at, payload), offsets) in offsets_of {
        if offsets.len() > 1 {
            violations.push(Violation::Duplicate {
                at,
                payload,
                offsets: offsets.into_iter().collect(),
            });
        }
    }
}

/// Checks 3 and 4: each pair of different values at one offset is one violation, of check 4
/// when either was acknowledged, of check 3 when a read is involved, and left to check 8 when
/// only replica logs disagree.
fn check_offsets_hold_one_value(record: &Record, violations: &mut Vec<Violation>) {
    for ((at, offset), values) in observations(record) {
        let values: Vec<(Payload, BTreeSet<Source>)> = values.into_iter().collect();
        for (i, (first, first_sources)) in values.iter().enumerate() {
            for (second, second_sources) in &values[i + 1..] {
                let acknowledged =
                    |sources: &BTreeSet<Source>| sources.contains(&Source::Acknowledged);
                let read = |sources: &BTreeSet<Source>| {
                    sources
                        .iter()
                        .find(|s| matches!(s, Source::Read { .. }))
                        .cloned()
                };
                // The first source in order: an acknowledgement, then a read, then a replica.
                let any = |sources: &BTreeSet<Source>| {
                    sources.first().cloned().expect("a value seen has a source")
                };
                if acknowledged(first_sources) || acknowledged(second_sources) {
                    let (acknowledged, observed, observed_sources) = if acknowledged(first_sources)
                    {
                        (first, second, second_sources)
                    } else {
                        (second, first, first_sources)
                    };
                    violations.push(Violation::AcknowledgedOverwritten {
                        at: at.clone(),
                        offset,
                        acknowledged: acknowledged.clone(),
                        observed: (any(observed_sources), observed.clone()),
                    });
                } else if let Some(reader) = read(first_sources) {
                    violations.push(Violation::Conflict {
                        at: at.clone(),
                        offset,
                        first: (reader, first.clone()),
                        second: (
                            read(second_sources).unwrap_or_else(|| any(second_sources)),
                            second.clone(),
                        ),
                    });
                } else if let Some(reader) = read(second_sources) {
                    violations.push(Violation::Conflict {
                        at: at.clone(),
                        offset,
                        first: (any(first_sources), first.clone()),
                        second: (reader, second.clone()),
                    });
                }
            }
        }
    }
}

/// Check 5.
fn check_read_order(record: &Record, violations: &mut Vec<Violation>) {
    let mut last: BTreeMap<(&str, &TopicPartition), (Offset, &Payload)> = BTreeMap::new();
    for event in &record.events {
        match event {
            Event::Read {
                reader,
                at,
                offset,
                payload,
            } => {
                if let Some((previous, previous_payload)) =
                    last.insert((reader.as_str(), at), (*offset, payload))
                    && *offset <= previous
                {
                    violations.push(Violation::OutOfOrder {
                        reader: reader.clone(),
                        at: at.clone(),
                        previous: (previous, previous_payload.clone()),
                        next: (*offset, payload.clone()),
                    });
                }
            }
            Event::Repositioned { reader, at, .. } => {
                last.remove(&(reader.as_str(), at));
            }
            _ => {}
        }
    }
}

/// Check 6.
fn check_epochs(record: &Record, violations: &mut Vec<Violation>) {
    let mut highest: BTreeMap<(&str, &TopicPartition), LeaderEpoch> = BTreeMap::new();
    for event in &record.events {
        if let Event::EpochSeen { client, at, epoch } = event {
            let seen = highest.entry((client.as_str(), at)).or_insert(*epoch);
            if *epoch < *seen {
                violations.push(Violation::EpochRegressed {
                    client: client.clone(),
                    at: at.clone(),
                    previous: *seen,
                    next: *epoch,
                });
            }
            *seen = (*seen).max(*epoch);
        }
    }
}

/// Check 7. An offset below a replica log's first offset is not a hole: retention may have
/// removed it. A replica log that ends below an offset may lag; the offset is truncated only
/// when every replica log ends below it (or is empty).
fn check_truncation(record: &Record, violations: &mut Vec<Violation>) {
    // One observation per offset read or acknowledged; an acknowledgement first.
    let mut observed: BTreeMap<(&TopicPartition, Offset), (Source, &Payload)> = BTreeMap::new();
    for event in &record.events {
        match event {
            Event::Acknowledged {
                at,
                offset,
                payload,
            } => {
                observed.insert((at, *offset), (Source::Acknowledged, payload));
            }
            Event::Read {
                reader,
                at,
                offset,
                payload,
            } => {
                observed.entry((at, *offset)).or_insert_with(|| {
                    (
                        Source::Read {
                            reader: reader.clone(),
                        },
                        payload,
                    )
                });
            }
            _ => {}
        }
    }
    for ((at, offset), (source, payload)) in observed {
        let Some(nodes) = record.replica_logs.get(at) else {
            continue;
        };
        let mut held_or_later = false;
        for (node, log) in nodes {
            if log.contains_key(&offset) {
                held_or_later = true;
                continue;
            }
            let Some((later, later_payload)) = log.range(offset..).next() else {
                continue;
            };
            held_or_later = true;
            if log.range(..offset).next().is_some() {
                violations.push(Violation::Truncated {
                    at: at.clone(),
                    offset,
                    observed: (source.clone(), payload.clone()),
                    node: Some(*node),
                    later: Some((*later, later_payload.clone())),
                });
            }
        }
        if !held_or_later {
            violations.push(Violation::Truncated {
                at: at.clone(),
                offset,
                observed: (source, payload.clone()),
                node: None,
                later: None,
            });
        }
    }
}

/// Check 8.
fn check_replicas(record: &Record, options: &CheckOptions, violations: &mut Vec<Violation>) {
    for (at, nodes) in &record.replica_logs {
        let nodes: Vec<(&NodeId, &BTreeMap<Offset, Payload>)> = nodes.iter().collect();
        for (i, (first, first_log)) in nodes.iter().enumerate() {
            for (second, second_log) in &nodes[i + 1..] {
                for (offset, first_payload) in *first_log {
                    if let Some(second_payload) = second_log.get(offset)
                        && second_payload != first_payload
                    {
                        violations.push(Violation::ReplicasDisagree {
                            at: at.clone(),
                            offset: *offset,
                            first: (**first, first_payload.clone()),
                            second: (**second, second_payload.clone()),
                        });
                    }
                }
                let end = |log: &BTreeMap<Offset, Payload>| {
                    log.last_key_value().map(|(offset, _)| Offset(offset.0 + 1))
                };
                if options.replicas_identical && end(first_log) != end(second_log) {
                    violations.push(Violation::ReplicaLogEndsDiffer {
                        at: at.clone(),
                        first: (**first, end(first_log)),
                        second: (**second, end(second_log)),
                    });
                }
            }
        }
    }
}

/// Check 9.
fn check_position_resets(record: &Record, options: &CheckOptions, violations: &mut Vec<Violation>) {
    let Some(max) = options.max_position_resets else {
        return;
    };
    let resets = record.events.iter().filter_map(|event| match event {
        Event::Repositioned {
            reader,
            at,
            from,
            to,
            counted: true,
        } => Some((reader, at, *from, *to)),
        _ => None,
    });
    for (index, (reader, at, from, to)) in resets.enumerate() {
        let count = index + 1;
        if count > max {
            violations.push(Violation::TooManyPositionResets {
                reader: reader.clone(),
                at: at.clone(),
                from,
                to,
                count,
                max,
            });
        }
    }
}

/// Check 10.
fn check_reads_written(record: &Record, options: &CheckOptions, violations: &mut Vec<Violation>) {
    if !options.require_reads_written {
        return;
    }
    let written: BTreeSet<(&TopicPartition, &Payload)> = record
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Acknowledged { at, payload, .. } | Event::Attempted { at, payload } => {
                Some((at, payload))
            }
            _ => None,
        })
        .collect();
    for event in &record.events {
        if let Event::Read {
            reader,
            at,
            offset,
            payload,
        } = event
            && !written.contains(&(at, payload))
        {
            violations.push(Violation::Unwritten {
                at: at.clone(),
                offset: *offset,
                observed: (
                    Source::Read {
                        reader: reader.clone(),
                    },
                    payload.clone(),
                ),
            });
        }
    }
}
