//! What a PeerLink publishes in the actor directory: its remote node, the state of each of its
//! connections, its queue depth, reconnects, last error, and the control connection's
//! round-trip time. The link stores into these as it works (relaxed atomics, short locks never
//! held across an await); the admin endpoint and `PeerLinkHandle::gauges` only read them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use vltava_messages::NodeId;

use super::{LinkFault, PeerChannel, Refusal};

/// Where one of a link's connections is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChannelState {
    /// Connecting and handshaking; calls wait in the queue.
    Connecting = 0,
    /// Handshaken; calls are sent.
    Connected = 1,
    /// The last attempt failed (or the connection dropped); waiting out the back-off. Calls
    /// fail at once with `Unreachable`.
    BackingOff = 2,
    /// The last handshake was refused; waiting out the refusal back-off. Calls fail at once
    /// with `Refused`.
    Refused = 3,
    /// The link is stopped; calls fail with `Unreachable`.
    Stopped = 4,
}

impl ChannelState {
    /// The name the admin endpoint shows.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Connecting => "connecting",
            ChannelState::Connected => "connected",
            ChannelState::BackingOff => "backing_off",
            ChannelState::Refused => "refused",
            ChannelState::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> ChannelState {
        match value {
            0 => ChannelState::Connecting,
            1 => ChannelState::Connected,
            2 => ChannelState::BackingOff,
            3 => ChannelState::Refused,
            _ => ChannelState::Stopped,
        }
    }
}

/// A link's state as a whole, from its two connections'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerLinkState {
    /// Both connections are up.
    Connected,
    /// At least one is connecting or backing off, and none is refused.
    Connecting,
    /// A handshake was refused: the configuration needs fixing.
    Refused,
    /// The link was stopped.
    Stopped,
}

impl PeerLinkState {
    /// The name the admin endpoint shows.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PeerLinkState::Connected => "connected",
            PeerLinkState::Connecting => "connecting",
            PeerLinkState::Refused => "refused",
            PeerLinkState::Stopped => "stopped",
        }
    }
}

/// The gauges of one of a link's connections.
#[derive(Debug, Default)]
pub(crate) struct ChannelGauges {
    state: AtomicU8,
    /// Requests accepted and not answered yet (queued or in flight).
    pub(crate) depth: AtomicU64,
    /// Requests written and not answered yet, pings included.
    pub(crate) in_flight: AtomicU64,
    pub(crate) requests_sent: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    /// Why the connection is down, while it is; `None` while it is up.
    fault: Mutex<Option<LinkFault>>,
}

impl ChannelGauges {
    pub(crate) fn state(&self) -> ChannelState {
        ChannelState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, state: ChannelState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn fault(&self) -> Option<LinkFault> {
        lock(&self.fault).clone()
    }

    pub(crate) fn set_fault(&self, fault: Option<LinkFault>) {
        *lock(&self.fault) = fault;
    }
}

/// What a PeerLink publishes about itself.
#[derive(Debug)]
pub struct PeerLinkGauges {
    /// The node at the other end.
    pub remote: NodeId,
    /// Its peer address, which this link dials.
    pub address: SocketAddr,
    /// The address this link's sockets are bound to (the node's own peer address, port 0).
    pub local_ip: IpAddr,
    control: ChannelGauges,
    data: ChannelGauges,
    /// Connections established again after one was lost, over both channels.
    pub reconnects: AtomicU64,
    /// Connection attempts that failed (refusals included), over both channels.
    pub connect_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    refusal: Mutex<Option<Refusal>>,
    rtt: Mutex<Option<Duration>>,
    /// Since when the peer's process is known gone: a connection to it dropped and dialling
    /// it again was refused (nothing listens on its port). `None` while it may be alive.
    gone_since: Mutex<Option<tokio::time::Instant>>,
}

impl PeerLinkGauges {
    pub(crate) fn new(remote: NodeId, address: SocketAddr, local_ip: IpAddr) -> PeerLinkGauges {
        PeerLinkGauges {
            remote,
            address,
            local_ip,
            control: ChannelGauges::default(),
            data: ChannelGauges::default(),
            reconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            refusal: Mutex::new(None),
            rtt: Mutex::new(None),
            gone_since: Mutex::new(None),
        }
    }

    /// Since when the peer's process is known gone: one of the link's connections to it
    /// dropped, and dialling again found nothing listening (connection refused). A single
    /// reset or a timeout does not count: a paused or cut-off node is not known gone, and
    /// is left to its lease. Cleared when a connection to it is established again.
    #[must_use]
    pub fn gone_since(&self) -> Option<tokio::time::Instant> {
        *lock(&self.gone_since)
    }

    pub(crate) fn mark_gone(&self) {
        lock(&self.gone_since).get_or_insert_with(tokio::time::Instant::now);
    }

    pub(crate) fn clear_gone(&self) {
        *lock(&self.gone_since) = None;
    }

    pub(crate) fn channel(&self, channel: PeerChannel) -> &ChannelGauges {
        match channel {
            PeerChannel::Control => &self.control,
            PeerChannel::Data => &self.data,
        }
    }

    /// The state of one connection.
    #[must_use]
    pub fn channel_state(&self, channel: PeerChannel) -> ChannelState {
        self.channel(channel).state()
    }

    /// The link's state: refused if either connection is, connected if both are.
    #[must_use]
    pub fn state(&self) -> PeerLinkState {
        let states = PeerChannel::ALL.map(|c| self.channel_state(c));
        if states.contains(&ChannelState::Refused) {
            PeerLinkState::Refused
        } else if states.iter().all(|s| *s == ChannelState::Connected) {
            PeerLinkState::Connected
        } else if states.iter().all(|s| *s == ChannelState::Stopped) {
            PeerLinkState::Stopped
        } else {
            PeerLinkState::Connecting
        }
    }

    /// Requests accepted and not answered yet on one connection.
    #[must_use]
    pub fn queue_depth_of(&self, channel: PeerChannel) -> u64 {
        self.channel(channel).depth.load(Ordering::Relaxed)
    }

    /// Requests accepted and not answered yet, over both connections.
    #[must_use]
    pub fn queue_depth(&self) -> u64 {
        PeerChannel::ALL
            .iter()
            .map(|c| self.queue_depth_of(*c))
            .sum()
    }

    /// Frames written to one connection and not answered yet, pings included.
    #[must_use]
    pub fn in_flight_of(&self, channel: PeerChannel) -> u64 {
        self.channel(channel).in_flight.load(Ordering::Relaxed)
    }

    /// Requests written to one connection (pings not counted), and its bytes both ways.
    #[must_use]
    pub fn traffic_of(&self, channel: PeerChannel) -> (u64, u64, u64) {
        let gauges = self.channel(channel);
        (
            gauges.requests_sent.load(Ordering::Relaxed),
            gauges.bytes_out.load(Ordering::Relaxed),
            gauges.bytes_in.load(Ordering::Relaxed),
        )
    }

    /// Connections established again after one was lost.
    #[must_use]
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The last thing that went wrong, with its connection; kept after a reconnect.
    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// The refusal the link is waiting out, if it is refused.
    #[must_use]
    pub fn refusal(&self) -> Option<Refusal> {
        lock(&self.refusal).clone()
    }

    /// The round-trip time of the control connection's last answered ping.
    #[must_use]
    pub fn rtt(&self) -> Option<Duration> {
        *lock(&self.rtt)
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        *lock(&self.rtt) = Some(rtt);
    }

    /// Records a refusal; true if it differs from the one recorded last (so it is worth a
    /// WARN line: a link retrying a refused handshake logs it once, not every attempt).
    pub(crate) fn note_refusal(&self, refusal: &Refusal) -> bool {
        let mut current = lock(&self.refusal);
        let new = current.as_ref() != Some(refusal);
        *current = Some(refusal.clone());
        new
    }

    /// Forgets the refusal once a handshake succeeds, so a later one is logged again.
    pub(crate) fn clear_refusal(&self) {
        *lock(&self.refusal) = None;
    }
}

/// Locks a gauge. A poisoned lock only means a thread panicked while storing a gauge; the value
/// is still fit to show.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
