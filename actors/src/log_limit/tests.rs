use super::*;

#[test]
fn a_flood_logs_a_few_lines_per_window_and_reports_what_it_held_back() {
    let mut limiter = WarnLimiter::default();
    let start = Instant::now();
    for _ in 0..WARNINGS_PER_WINDOW {
        assert_eq!(
            limiter.check(WarnKind::BadRequest, start),
            Verdict::Log { suppressed: 0 }
        );
    }
    for _ in 0..1000 {
        assert_eq!(
            limiter.check(WarnKind::BadRequest, start + Duration::from_secs(1)),
            Verdict::Suppress
        );
    }
    // The next window lets a line through, carrying the count of the held-back ones.
    assert_eq!(
        limiter.check(WarnKind::BadRequest, start + WARNING_WINDOW),
        Verdict::Log { suppressed: 1000 }
    );
    assert_eq!(
        limiter.check(WarnKind::BadRequest, start + WARNING_WINDOW),
        Verdict::Log { suppressed: 0 }
    );
}

#[test]
fn kinds_have_budgets_of_their_own() {
    let mut limiter = WarnLimiter::default();
    let now = Instant::now();
    for _ in 0..WARNINGS_PER_WINDOW + 3 {
        limiter.check(WarnKind::BadRequest, now);
    }
    assert_eq!(limiter.check(WarnKind::BadRequest, now), Verdict::Suppress);
    assert_eq!(
        limiter.check(WarnKind::NoHandshake, now),
        Verdict::Log { suppressed: 0 }
    );
    assert_eq!(limiter.take_suppressed(), 4);
    assert_eq!(limiter.take_suppressed(), 0);
}

#[test]
fn the_shared_limiter_counts_across_callers() {
    let shared = SharedWarnLimiter::default();
    let now = Instant::now();
    let logged = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..50)
                        .filter(|_| {
                            matches!(
                                shared.check(WarnKind::ConnectionRefused, now),
                                Verdict::Log { .. }
                            )
                        })
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum::<usize>()
    });
    assert_eq!(logged, NODE_WARNINGS_PER_WINDOW as usize);
}

#[test]
fn a_line_needs_both_budgets_and_keeps_its_connection_count_when_the_node_holds_it() {
    let node = SharedWarnLimiter::default();
    let now = Instant::now();
    // Other connections used up the node's budget.
    for _ in 0..NODE_WARNINGS_PER_WINDOW {
        node.check(WarnKind::BadRequest, now);
    }
    let mut connection = WarnLimiter::default();
    for _ in 0..WARNINGS_PER_WINDOW + 2 {
        assert_eq!(
            node.check_after(&mut connection, WarnKind::BadRequest, now),
            Verdict::Suppress
        );
    }
    // Next window: the line reports each held-back line once, whichever limiter held it (the
    // node the first five, the connection the last two).
    let later = now + WARNING_WINDOW;
    assert_eq!(
        node.check_after(&mut connection, WarnKind::BadRequest, later),
        Verdict::Log {
            suppressed: u64::from(WARNINGS_PER_WINDOW) + 2
        }
    );
}
