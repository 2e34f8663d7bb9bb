//! Server-side partition assignors: given the members (with their subscriptions), the
//! partition counts of the subscribed topics and the current assignment, compute the target
//! assignment. Each is deterministic: the same inputs give the same target.
//!
//! - `range`: per topic, the members subscribed to it, sorted by member id, each get a
//!   contiguous range; the first `partitions % members` get one more.
//! - `round-robin`: every subscribed partition, sorted by topic and index, dealt in turn to
//!   the members subscribed to its topic.
//! - `sticky` (the default, like Kafka's uniform assignor): every member keeps what it owns as
//!   long as it still subscribes to the topic and is within its quota (partitions ÷ members,
//!   rounded down, and rounded up for as many members as the remainder); the rest go to the
//!   least-loaded eligible members. A member joining therefore takes only the partitions it
//!   needs, and the others keep theirs.

use std::collections::{BTreeMap, BTreeSet};

/// A topic and partition.
pub type TopicPartition = (String, u32);

/// What an assignor knows about one member.
#[derive(Clone, Debug)]
pub struct MemberSpec<'a> {
    pub member_id: &'a str,
    pub subscribed: &'a BTreeSet<String>,
    /// What the member is assigned now (for `sticky`).
    pub current: &'a BTreeSet<TopicPartition>,
}

/// An assignment strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    Range,
    RoundRobin,
    Sticky,
}

/// The assignor a new group gets when its first member names none.
pub const DEFAULT_ASSIGNOR: Assignor = Assignor::Sticky;

impl Assignor {
    /// Every assignor, by the names clients use.
    pub const ALL: [Assignor; 3] = [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "round-robin",
            Assignor::Sticky => "sticky",
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Assignor> {
        Assignor::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The target assignment: every member appears in the result, possibly with nothing.
    #[must_use]
    pub fn assign(
        self,
        members: &[MemberSpec<'_>],
        partition_counts: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        let mut members: Vec<&MemberSpec<'_>> = members.iter().collect();
        members.sort_by(|a, b| a.member_id.cmp(b.member_id));
        let mut out: BTreeMap<String, BTreeSet<TopicPartition>> = members
            .iter()
            .map(|m| (m.member_id.to_owned(), BTreeSet::new()))
            .collect();
        // Only topics that exist and someone subscribes to.
        let topics: BTreeSet<&String> = members
            .iter()
            .flat_map(|m| m.subscribed.iter())
            .filter(|t| partition_counts.contains_key(*t))
            .collect();
        let subscribers = |topic: &str| -> Vec<&str> {
            members
                .iter()
                .filter(|m| m.subscribed.contains(topic))
                .map(|m| m.member_id)
                .collect()
        };
        match self {
            Assignor::Range => {
                for topic in topics {
                    let who = subscribers(topic);
                    let count = partition_counts[topic] as usize;
                    let (quota, extra) = (count / who.len(), count % who.len());
                    let mut next = 0;
                    for (i, member) in who.iter().enumerate() {
                        let take = quota + usize::from(i < extra);
                        for p in next..next + take {
                            out.get_mut(*member)
                                .expect("every member has an entry")
                                .insert((topic.clone(), p as u32));
                        }
                        next += take;
                    }
                }
            }
            Assignor::RoundRobin => {
                // One shared counter over all partitions, so members subscribed to the same
                // topics get counts within one of each other.
                let mut dealt = 0usize;
                for topic in topics {
                    let who = subscribers(topic);
                    for p in 0..partition_counts[topic] {
                        let member = who[dealt % who.len()];
                        dealt += 1;
                        out.get_mut(member)
                            .expect("every member has an entry")
                            .insert((topic.clone(), p));
                    }
                }
            }
            Assignor::Sticky => sticky(&members, &topics, partition_counts, &mut out),
        }
        out
    }
}

fn sticky(
    members: &[&MemberSpec<'_>],
    topics: &BTreeSet<&String>,
    partition_counts: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, BTreeSet<TopicPartition>>,
) {
    let all: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|t| (0..partition_counts[*t]).map(move |p| ((*t).clone(), p)))
        .collect();
    let eligible = |m: &MemberSpec<'_>, tp: &TopicPartition| m.subscribed.contains(&tp.0);
    // Quotas over the members that subscribe to anything that exists: floor for all, one more
    // for as many as the remainder, handed to those who already hold the most so that fewer
    // partitions move.
    let active: Vec<&MemberSpec<'_>> = members
        .iter()
        .copied()
        .filter(|m| all.iter().any(|tp| eligible(m, tp)))
        .collect();
    if active.is_empty() {
        return;
    }
    let floor = all.len() / active.len();
    let mut extra = all.len() % active.len();
    let mut by_holding: Vec<&MemberSpec<'_>> = active.clone();
    by_holding.sort_by(|a, b| {
        let held = |m: &MemberSpec<'_>| m.current.iter().filter(|tp| eligible(m, tp)).count();
        held(b).cmp(&held(a)).then(a.member_id.cmp(b.member_id))
    });
    let mut quota: BTreeMap<&str, usize> = BTreeMap::new();
    for m in by_holding {
        let q = floor + usize::from(extra > 0);
        extra = extra.saturating_sub(1);
        quota.insert(m.member_id, q);
    }
    let mut taken: BTreeSet<&TopicPartition> = BTreeSet::new();
    // Keep what each member holds, up to its quota.
    for m in &active {
        let q = quota[m.member_id];
        let keep: Vec<&TopicPartition> = m
            .current
            .iter()
            .filter(|tp| eligible(m, tp) && all.contains(tp) && !taken.contains(tp))
            .take(q)
            .collect();
        for tp in keep {
            taken.insert(tp);
            out.get_mut(m.member_id)
                .expect("every member has an entry")
                .insert(tp.clone());
        }
    }
    // Hand out the rest, each to the eligible member furthest below its quota (then the least
    // loaded, then by id).
    for tp in &all {
        if taken.contains(tp) {
            continue;
        }
        let best = active.iter().filter(|m| eligible(m, tp)).min_by_key(|m| {
            let held = out[m.member_id].len();
            let q = quota[m.member_id];
            (held >= q, held, m.member_id)
        });
        if let Some(m) = best {
            out.get_mut(m.member_id)
                .expect("every member has an entry")
                .insert(tp.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn run(
        assignor: Assignor,
        members: &[(&str, BTreeSet<String>, BTreeSet<TopicPartition>)],
        counts: &[(&str, u32)],
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        let specs: Vec<MemberSpec<'_>> = members
            .iter()
            .map(|(id, subscribed, current)| MemberSpec {
                member_id: id,
                subscribed,
                current,
            })
            .collect();
        let counts = counts.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
        assignor.assign(&specs, &counts)
    }

    fn sizes(out: &BTreeMap<String, BTreeSet<TopicPartition>>) -> Vec<usize> {
        out.values().map(BTreeSet::len).collect()
    }

    fn covers_each_once(out: &BTreeMap<String, BTreeSet<TopicPartition>>, total: usize) {
        let all: Vec<&TopicPartition> = out.values().flatten().collect();
        let unique: BTreeSet<&TopicPartition> = all.iter().copied().collect();
        assert_eq!(all.len(), total, "{out:?}");
        assert_eq!(unique.len(), total, "{out:?}");
    }

    #[test]
    fn every_assignor_covers_each_partition_once_and_balances() {
        let t = set(&["t"]);
        let none = BTreeSet::new();
        for assignor in Assignor::ALL {
            let out = run(
                assignor,
                &[
                    ("a", t.clone(), none.clone()),
                    ("b", t.clone(), none.clone()),
                    ("c", t.clone(), none.clone()),
                ],
                &[("t", 6)],
            );
            covers_each_once(&out, 6);
            assert_eq!(sizes(&out), vec![2, 2, 2], "{}", assignor.name());
        }
    }

    #[test]
    fn range_gives_contiguous_ranges() {
        let t = set(&["t"]);
        let none = BTreeSet::new();
        let out = run(
            Assignor::Range,
            &[("a", t.clone(), none.clone()), ("b", t.clone(), none)],
            &[("t", 5)],
        );
        let a: Vec<u32> = out["a"].iter().map(|tp| tp.1).collect();
        let b: Vec<u32> = out["b"].iter().map(|tp| tp.1).collect();
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!(b, vec![3, 4]);
    }

    #[test]
    fn sticky_moves_only_what_a_new_member_needs() {
        let t = set(&["t"]);
        let first = run(
            Assignor::Sticky,
            &[
                ("a", t.clone(), BTreeSet::new()),
                ("b", t.clone(), BTreeSet::new()),
                ("c", t.clone(), BTreeSet::new()),
            ],
            &[("t", 6)],
        );
        let second = run(
            Assignor::Sticky,
            &[
                ("a", t.clone(), first["a"].clone()),
                ("b", t.clone(), first["b"].clone()),
                ("c", t.clone(), first["c"].clone()),
                ("d", t.clone(), BTreeSet::new()),
            ],
            &[("t", 6)],
        );
        covers_each_once(&second, 6);
        let moved: usize = ["a", "b", "c"]
            .iter()
            .map(|m| first[*m].difference(&second[*m]).count())
            .sum();
        // 6 over 4 members is 2, 2, 1, 1: one member gives one partition to d, and that is
        // the only move.
        assert_eq!(moved, 1, "{first:?} -> {second:?}");
        assert_eq!(second["d"].len(), 1);
        for m in ["a", "b", "c"] {
            assert!(second[m].is_subset(&first[m]), "{m} gained a partition");
        }
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to() {
        let out = run(
            Assignor::Sticky,
            &[
                ("a", set(&["x"]), BTreeSet::new()),
                ("b", set(&["x", "y"]), BTreeSet::new()),
            ],
            &[("x", 2), ("y", 2)],
        );
        assert!(out["a"].iter().all(|tp| tp.0 == "x"));
        covers_each_once(&out, 4);
        let out = run(
            Assignor::RoundRobin,
            &[
                ("a", set(&["x"]), BTreeSet::new()),
                ("b", set(&["y", "missing"]), BTreeSet::new()),
            ],
            &[("x", 3), ("y", 1)],
        );
        assert_eq!(out["a"].len(), 3);
        assert_eq!(out["b"].len(), 1);
    }
}
