//! Counters of one event loop, cheap enough to leave on (relaxed atomic adds).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the loop closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side between frames.
    PeerClosed,
    /// The peer closed its side in the middle of a frame (the partial frame is dropped and
    /// counted here).
    ClosedMidFrame,
    /// A socket error.
    Io,
    /// A frame above [`Config::max_frame`](crate::Config::max_frame).
    Oversized,
    /// Bytes that break the framing rules.
    Malformed,
    /// Accepted while [`Config::max_connections`](crate::Config::max_connections) were open.
    ConnectionLimit,
    /// Over the rate limit with [`RateAction::Close`](crate::RateAction::Close).
    RateLimited,
    /// Nothing received for [`Config::idle_timeout`](crate::Config::idle_timeout).
    IdleTimeout,
    /// A frame left unfinished for [`Config::frame_timeout`](crate::Config::frame_timeout).
    FrameTimeout,
    /// Responses piled up beyond [`Config::write_limit`](crate::Config::write_limit).
    SlowReader,
    /// The loop stopped.
    Shutdown,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::PeerClosed,
        CloseReason::ClosedMidFrame,
        CloseReason::Io,
        CloseReason::Oversized,
        CloseReason::Malformed,
        CloseReason::ConnectionLimit,
        CloseReason::RateLimited,
        CloseReason::IdleTimeout,
        CloseReason::FrameTimeout,
        CloseReason::SlowReader,
        CloseReason::Shutdown,
    ];

    /// A stable lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::ClosedMidFrame => "closed_mid_frame",
            CloseReason::Io => "io",
            CloseReason::Oversized => "oversized",
            CloseReason::Malformed => "malformed",
            CloseReason::ConnectionLimit => "connection_limit",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live counters, shared between the loop and its handles.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) accepted: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) undeliverable: AtomicU64,
    pub(crate) ring_full: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) closed: [AtomicU64; CloseReason::ALL.len()],
    /// Responses an [`Egress`](crate::Egress) wrote straight to their sockets.
    pub(crate) direct_frames: Padded,
    /// Bytes of those responses that the sockets took.
    pub(crate) direct_bytes: AtomicU64,
}

/// A counter on its own cache line (with the one after it in [`Stats`]): the publishing
/// thread updates these while the loop updates the others.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(AtomicU64);

impl std::ops::Deref for Padded {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

impl Stats {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn close(&self, reason: CloseReason) {
        Self::add(&self.closed[reason.index()], 1);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: get(&self.accepted),
            open: get(&self.open),
            frames_in: get(&self.frames_in),
            bytes_in: get(&self.bytes_in),
            frames_out: get(&self.frames_out) + get(&self.direct_frames),
            bytes_out: get(&self.bytes_out) + get(&self.direct_bytes),
            direct_out: get(&self.direct_frames),
            undeliverable: get(&self.undeliverable),
            ring_full: get(&self.ring_full),
            throttled: get(&self.throttled),
            closed: std::array::from_fn(|i| get(&self.closed[i])),
        }
    }
}

/// A copy of a loop's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections accepted (including those closed at once for the connection limit).
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Frames published into the ingress ring.
    pub frames_in: u64,
    /// Bytes of those frames (headers included).
    pub bytes_in: u64,
    /// Egress events encoded onto a live connection (by the loop, or written directly by an
    /// [`Egress`](crate::Egress)).
    pub frames_out: u64,
    /// Of `frames_out`, those an [`Egress`](crate::Egress) wrote straight to the socket.
    pub direct_out: u64,
    /// Bytes handed to the sockets.
    pub bytes_out: u64,
    /// Egress events addressed to a connection that had closed (dropped, and counted here).
    pub undeliverable: u64,
    /// Times a frame found the ingress ring full and its connection stopped being read.
    pub ring_full: u64,
    /// Times a connection ran its rate-limit bucket dry and was throttled.
    pub throttled: u64,
    closed: [u64; CloseReason::ALL.len()],
}

impl StatsSnapshot {
    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Connections closed for any reason.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }
}
