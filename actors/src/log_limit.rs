//! Rate limits for the log lines that clients can cause.
//!
//! Every bad request used to log a WARN with no bound: two minutes of bad input wrote about
//! 25 MB of log, which buries the lines an operator needs and can fill a disk. A
//! `WarnLimiter` lets through at most `WARNINGS_PER_WINDOW` lines of one `WarnKind` per
//! `WARNING_WINDOW`, counts what it holds back, and hands that count to the next line it lets
//! through (or to a closing line), so nothing is hidden without a trace. Each session keeps
//! one for its own connection, so one noisy client does not use up the lines that show a
//! second one; the node keeps one across all connections with a larger budget, since a client
//! that reconnects for every bad frame starts a fresh per-connection budget each time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind let through per window. Enough to see what a misbehaving client sends
/// (its first few bad requests), few enough that a flood costs a handful of lines per window.
pub const WARNINGS_PER_WINDOW: u32 = 5;
/// Lines of one kind let through per window across all of a node's connections: ten times a
/// connection's, so a handful of misbehaving clients are each seen, while a thousand
/// connections flooding at once still write at most five lines a second per kind.
pub const NODE_WARNINGS_PER_WINDOW: u32 = 10 * WARNINGS_PER_WINDOW;
/// The window over which `WARNINGS_PER_WINDOW` applies: ten seconds keeps a steady flood to
/// about one line per two seconds per kind, and a new burst after a quiet spell is seen at once.
pub const WARNING_WINDOW: Duration = Duration::from_secs(10);

/// The kinds of log line a client can cause, each limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarnKind {
    /// A request that could not be decoded or broke a limit.
    BadRequest,
    /// A first request that was not a Handshake.
    NoHandshake,
    /// A frame whose length field is out of bounds.
    BadFrameLength,
    /// A connection refused at the node's connection limit.
    ConnectionRefused,
    /// A connection that ended on an error (a timeout, a truncated frame).
    ConnectionClosed,
}

impl WarnKind {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        match self {
            WarnKind::BadRequest => 0,
            WarnKind::NoHandshake => 1,
            WarnKind::BadFrameLength => 2,
            WarnKind::ConnectionRefused => 3,
            WarnKind::ConnectionClosed => 4,
        }
    }
}

/// Whether to write a line, and how many of its kind were held back before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write the line; `suppressed` lines of this kind were held back since the last one.
    Log { suppressed: u64 },
    /// Hold the line back (it is counted).
    Suppress,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// A per-kind budget of log lines; see the module doc.
#[derive(Clone, Debug)]
pub struct WarnLimiter {
    per_window: u32,
    slots: [Slot; WarnKind::COUNT],
}

impl Default for WarnLimiter {
    /// A connection's limiter: `WARNINGS_PER_WINDOW` lines per kind and window.
    fn default() -> WarnLimiter {
        WarnLimiter::new(WARNINGS_PER_WINDOW)
    }
}

impl WarnLimiter {
    /// A limiter letting `per_window` lines of each kind through per `WARNING_WINDOW`.
    #[must_use]
    pub fn new(per_window: u32) -> WarnLimiter {
        WarnLimiter {
            per_window,
            slots: [Slot::default(); WarnKind::COUNT],
        }
    }

    /// Decides about one line of `kind` at `now`.
    pub fn check(&mut self, kind: WarnKind, now: Instant) -> Verdict {
        let slot = &mut self.slots[kind.index()];
        let expired = slot
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WARNING_WINDOW);
        if expired {
            slot.window_start = Some(now);
            slot.logged = 0;
        }
        if slot.logged < self.per_window {
            slot.logged += 1;
            let suppressed = std::mem::take(&mut slot.suppressed);
            Verdict::Log { suppressed }
        } else {
            slot.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Counts `count` lines of `kind` as held back again: for a line this limiter let through
    /// (taking `count` with it) that another limiter then held back.
    pub fn hold_back(&mut self, kind: WarnKind, count: u64) {
        self.slots[kind.index()].suppressed += count;
    }

    /// Lines held back and not yet reported, over every kind; they are reported (and reset)
    /// by the caller, e.g. when a connection closes.
    pub fn take_suppressed(&mut self) -> u64 {
        self.slots
            .iter_mut()
            .map(|slot| std::mem::take(&mut slot.suppressed))
            .sum()
    }
}

/// A `WarnLimiter` shared by every connection of a node. The lock is held only for `check`
/// (a few instructions, never across an await), so it is no point of contention: it is
/// reached only on the error paths it limits.
#[derive(Debug)]
pub struct SharedWarnLimiter(Mutex<WarnLimiter>);

impl Default for SharedWarnLimiter {
    /// A node's limiter: `NODE_WARNINGS_PER_WINDOW` lines per kind and window.
    fn default() -> SharedWarnLimiter {
        SharedWarnLimiter(Mutex::new(WarnLimiter::new(NODE_WARNINGS_PER_WINDOW)))
    }
}

impl SharedWarnLimiter {
    /// As `WarnLimiter::check`.
    pub fn check(&self, kind: WarnKind, now: Instant) -> Verdict {
        // A poisoned lock only means another thread panicked mid-check; the counts are still
        // usable for deciding about log lines.
        let mut limiter = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        limiter.check(kind, now)
    }

    /// Decides about a line that a connection's own limiter let through, carrying the count it
    /// held back: the line is written only if the node's budget allows it too; if not, the
    /// connection's count goes back to it, to be reported with its next line.
    pub fn check_after(
        &self,
        connection: &mut WarnLimiter,
        kind: WarnKind,
        now: Instant,
    ) -> Verdict {
        match connection.check(kind, now) {
            Verdict::Suppress => Verdict::Suppress,
            Verdict::Log { suppressed } => match self.check(kind, now) {
                Verdict::Log { suppressed: node } => Verdict::Log {
                    suppressed: suppressed + node,
                },
                Verdict::Suppress => {
                    connection.hold_back(kind, suppressed);
                    Verdict::Suppress
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
