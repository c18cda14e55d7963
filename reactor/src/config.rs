//! [`Config`]: address, backend choice and limits of one event loop.

use std::net::SocketAddr;
use std::time::Duration;

/// The environment variable that overrides [`BackendChoice::Auto`]: `mio` or `io_uring`.
pub const BACKEND_ENV: &str = "PEREGRINE_REACTOR_BACKEND";

/// Which backend a loop asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring where the kernel allows it, else mio. `PEREGRINE_REACTOR_BACKEND=mio`
    /// ([`BACKEND_ENV`]) forces mio for every choice; `=io_uring` picks io_uring here.
    #[default]
    Auto,
    /// mio (epoll), always.
    Mio,
    /// io_uring, falling back to mio (with a warning) when the kernel refuses it.
    IoUring,
}

impl BackendChoice {
    /// This choice with [`BACKEND_ENV`] applied: `mio` forces mio whatever was asked
    /// (as a kernel that forbids io_uring would; a loop that wanted io_uring then reports
    /// the fallback); `io_uring` turns `Auto` into `IoUring`.
    pub fn resolve_env(self) -> Self {
        match std::env::var(BACKEND_ENV).as_deref() {
            Ok("mio") | Ok("epoll") => BackendChoice::Mio,
            Ok("io_uring") | Ok("uring") if self == BackendChoice::Auto => BackendChoice::IoUring,
            _ => self,
        }
    }
}

/// A per-connection token bucket: `frames_per_sec` sustained, bursts of `burst` frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Frames per second refilled into the bucket.
    pub frames_per_sec: f64,
    /// The bucket's size: frames a quiet connection may send at once.
    pub burst: f64,
    /// What happens to a connection that runs the bucket dry.
    pub action: RateAction,
}

/// What a connection over its [`RateLimit`] gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateAction {
    /// Stop reading it until the bucket refills (TCP pushes back); counted in
    /// [`StatsSnapshot::throttled`](crate::StatsSnapshot::throttled).
    #[default]
    Throttle,
    /// Close it with [`CloseReason::RateLimited`](crate::CloseReason::RateLimited).
    Close,
}

/// Settings of one event loop. `Config::default()` listens on `127.0.0.1:7070`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on. Loopback by default; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The backend to use.
    pub backend: BackendChoice,
    /// Run io_uring with a kernel submission thread (SQPOLL) that idles this long before
    /// sleeping. `None` (default): submit with `io_uring_enter`.
    pub sqpoll_idle: Option<Duration>,
    /// Open connections allowed; further ones are accepted and closed at once, counted as
    /// [`CloseReason::ConnectionLimit`](crate::CloseReason::ConnectionLimit).
    pub max_connections: usize,
    /// Largest frame (header included) a connection may send; larger is
    /// [`CloseReason::Oversized`](crate::CloseReason::Oversized).
    pub max_frame: usize,
    /// Per-connection rate limit; `None` (default): unlimited.
    pub rate_limit: Option<RateLimit>,
    /// A connection that sends nothing for this long is closed
    /// ([`CloseReason::IdleTimeout`](crate::CloseReason::IdleTimeout)); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A frame begun but not finished within this long is a slow client, closed
    /// ([`CloseReason::FrameTimeout`](crate::CloseReason::FrameTimeout)); `None`: never.
    /// Time spent paused by back-pressure does not count.
    pub frame_timeout: Option<Duration>,
    /// Responses queued for one connection beyond which it stops being read until its
    /// client reads them.
    pub write_high_water: usize,
    /// Responses queued for one connection beyond which it is closed
    /// ([`CloseReason::SlowReader`](crate::CloseReason::SlowReader)).
    pub write_limit: usize,
    /// Busy polling: after any I/O or response, keep polling (without blocking) for this
    /// long before sleeping in the kernel, so a response that follows quickly is picked up
    /// without a wake-up. Costs CPU: give the loop its own core. `None` (default): block
    /// as soon as there is nothing to do.
    pub busy_poll: Option<Duration>,
    /// Let an [`Egress`](crate::Egress) made by [`Reactor::egress`](crate::Reactor::egress)
    /// write a response straight to its socket when the loop holds nothing for that
    /// connection (needs [`Codec::egress_encoder`](crate::Codec::egress_encoder)). Saves
    /// the loop's wake-up and a hop per response. Default `true`.
    pub direct_egress: bool,
    /// How often the loop checks timers, throttles and a full ring while idle.
    pub tick: Duration,
    /// io_uring submission queue entries.
    pub uring_entries: u32,
    /// io_uring provided receive buffers (rounded up to a power of two).
    pub uring_buffers: u16,
    /// Size of each provided receive buffer.
    pub uring_buffer_size: u32,
    /// Pin the loop's thread to this core.
    pub pin: Option<usize>,
    /// The loop thread's name.
    pub thread_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            backend: BackendChoice::Auto,
            sqpoll_idle: None,
            max_connections: 1024,
            max_frame: 64 * 1024,
            rate_limit: None,
            idle_timeout: Some(Duration::from_secs(60)),
            frame_timeout: Some(Duration::from_secs(10)),
            write_high_water: 1 << 20,
            write_limit: 16 << 20,
            busy_poll: None,
            direct_egress: true,
            tick: Duration::from_millis(10),
            uring_entries: 1024,
            uring_buffers: 256,
            uring_buffer_size: 16 * 1024,
            pin: None,
            thread_name: "reactor".to_string(),
        }
    }
}

impl Config {
    /// The default settings listening on `addr`.
    pub fn with_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            ..Self::default()
        }
    }
}
