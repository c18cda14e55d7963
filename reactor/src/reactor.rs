//! [`Reactor`]: one event loop on one thread, and its [`ReactorHandle`].
//!
//! The loop owns the protocol state of every connection (read and write buffers, rate
//! bucket, timers, pause reasons) and drives a backend from [`crate::sys`]. One turn:
//!
//! 1. take responses from the egress ring and queue them on their connections; flush;
//! 2. if the ingress ring had filled, and has room again, decode the frames that waited;
//! 3. on a tick, check timeouts and refill throttled connections;
//! 4. wait for I/O (not at all if work is pending), then handle what it reported:
//!    bytes are appended to the connection's buffer and every complete frame is decoded
//!    straight into a claimed ingress slot.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use peregrine_ring::{PollState, Poller, Producer, Sequencer, TryPublishError};

use crate::codec::{Codec, ConnId, FrameError, LengthPrefixed};
use crate::config::{BackendChoice, Config, RateAction};
use crate::direct::Table;
use crate::error::ReactorError;
use crate::stats::{CloseReason, Stats, StatsSnapshot};
use crate::sys::{self, Backend, Event, ReadOutcome};
use crate::waker::{Egress, LoopWaker};

/// The backend a loop runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// mio over epoll (readiness).
    Mio,
    /// io_uring (completion).
    IoUring,
}

impl BackendKind {
    /// `"mio"` or `"io_uring"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Mio => "mio",
            BackendKind::IoUring => "io_uring",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes read from one connection per read call (readiness backend).
const READ_CHUNK: usize = 64 * 1024;
/// Read calls per connection per turn, so one busy client cannot starve the others.
const READS_PER_TURN: usize = 4;
/// How soon a loop whose ingress ring is full looks for room again.
const FULL_RETRY: Duration = Duration::from_micros(50);

/// Frames claimed and published together at most.
const DECODE_BATCH: usize = 256;
/// Decoded bytes kept at the head of a read buffer before they are dropped.
const COMPACT_AT: usize = 64 * 1024;

const PAUSE_RING: u8 = 1;
const PAUSE_THROTTLE: u8 = 2;
const PAUSE_WRITE: u8 = 4;

/// A bound listener and its backend, ready to run an event loop.
///
/// ```no_run
/// use peregrine_reactor::{Config, Reactor};
/// let reactor = Reactor::bind(Config::default())?; // 127.0.0.1:7070
/// println!("{} on {}", reactor.backend(), reactor.local_addr());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reactor<C: Codec = LengthPrefixed> {
    config: Config,
    codec: C,
    backend: Backend,
    local_addr: SocketAddr,
    waker: LoopWaker,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    fallback: Option<String>,
    /// Shared with the [`Egress`]es that write directly.
    table: Arc<Table>,
}

impl<C: Codec> std::fmt::Debug for Reactor<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("backend", &self.backend.kind())
            .field("local_addr", &self.local_addr)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl Reactor<LengthPrefixed> {
    /// Binds `config.addr` with the default length-prefixed framing.
    ///
    /// # Errors
    ///
    /// As [`with_codec`](Reactor::with_codec).
    pub fn bind(config: Config) -> Result<Self, ReactorError> {
        Self::with_codec(config, LengthPrefixed)
    }
}

impl<C: Codec> Reactor<C> {
    /// Binds `config.addr`, framing with `codec`, and sets up the backend: io_uring unless
    /// mio is asked for (by [`Config::backend`] or the
    /// [`BACKEND_ENV`](crate::BACKEND_ENV) variable); if io_uring cannot be set up, logs a
    /// warning, falls back to mio and records why ([`fallback_reason`](Self::fallback_reason)).
    ///
    /// # Errors
    ///
    /// [`ReactorError::Bind`] if the address cannot be bound; [`ReactorError::Backend`]
    /// if even the mio backend cannot be created.
    pub fn with_codec(config: Config, codec: C) -> Result<Self, ReactorError> {
        let bind = |source| ReactorError::Bind {
            addr: config.addr,
            source,
        };
        let listener = TcpListener::bind(config.addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        let waker = LoopWaker::new().map_err(ReactorError::Backend)?;
        let waker_fd = waker.inner.fd.as_raw_fd();
        let mut fallback = None;
        let backend = match config.backend.resolve_env() {
            BackendChoice::Mio if config.backend != BackendChoice::Mio => {
                let why = format!("io_uring disabled by {}=mio", crate::BACKEND_ENV);
                tracing::warn!("{why}; using mio");
                fallback = Some(why);
                None
            }
            BackendChoice::Mio => None,
            BackendChoice::Auto | BackendChoice::IoUring => {
                match Self::uring(&config, &listener, waker_fd) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring is unavailable; falling back to mio");
                        fallback = Some(e.to_string());
                        None
                    }
                }
            }
        };
        let backend = match backend {
            Some(b) => b,
            None => Backend::Epoll(
                sys::epoll::Epoll::new(listener, waker_fd).map_err(ReactorError::Backend)?,
            ),
        };
        Ok(Self {
            table: Arc::new(Table::new(config.max_connections)),
            config,
            codec,
            backend,
            local_addr,
            waker,
            stats: Arc::new(Stats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            fallback,
        })
    }

    #[cfg(target_os = "linux")]
    fn uring(config: &Config, listener: &TcpListener, waker_fd: i32) -> std::io::Result<Backend> {
        let uring = sys::uring::Uring::new(
            listener.try_clone()?,
            waker_fd,
            sys::uring::UringConfig {
                entries: config.uring_entries,
                sqpoll_idle: config.sqpoll_idle,
                buf_count: config.uring_buffers,
                buf_size: config.uring_buffer_size,
            },
        )?;
        Ok(Backend::Uring(Box::new(uring)))
    }

    #[cfg(not(target_os = "linux"))]
    fn uring(_: &Config, _: &TcpListener, _: i32) -> std::io::Result<Backend> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "io_uring exists only on Linux",
        ))
    }

    /// The backend this loop runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Why io_uring was asked for (or left to choose) but not used: the kernel's answer.
    /// `None` when it is in use or mio was asked for.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The address the listener is bound to (the real port when `config.addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A waker for this loop, to call after publishing into its egress ring.
    pub fn waker(&self) -> LoopWaker {
        self.waker.clone()
    }

    /// Pairs an egress ring's producer with this loop's waker. With
    /// [`Config::direct_egress`] and a codec that has an
    /// [`egress_encoder`](Codec::egress_encoder), the egress also writes responses straight
    /// to idle connections (see [`Egress`]).
    pub fn egress<S: Sequencer>(&self, producer: Producer<C::Out, S>) -> Egress<C::Out, S> {
        let egress = Egress::new(producer, self.waker());
        match self.codec.egress_encoder() {
            Some((encoder, scratch)) if self.config.direct_egress => egress.with_direct(
                Arc::clone(&self.table),
                Arc::clone(&self.stats),
                encoder,
                scratch,
            ),
            _ => egress,
        }
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: Arc::clone(&self.stop),
            waker: self.waker.clone(),
        }
    }

    /// The loop's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Runs the loop on this thread until [`Stopper::stop`] (or the ingress ring halts),
    /// publishing decoded frames with `ingress` and writing the events of `egress` (a
    /// poller of the egress ring) to their connections. On return every connection is
    /// closed and `ingress` is dropped, which closes the ingress ring (its stages drain).
    ///
    /// # Errors
    ///
    /// [`ReactorError::Wait`] if waiting for I/O fails.
    pub fn run<SI: Sequencer, SO: Sequencer>(
        self,
        ingress: Producer<C::In, SI>,
        egress: Option<Poller<C::Out, SO>>,
    ) -> Result<(), ReactorError>
    where
        Producer<C::In, SI>: Send + 'static,
    {
        self.run_with(ingress, egress, None)
    }

    /// Runs the loop on this thread as [`run`](Self::run) does, and `inline` on it too:
    /// [`Inline::turn`] once per turn of the loop, and [`Inline::finish`] once after the
    /// loop has closed its connections and the ingress ring.
    ///
    /// # Errors
    ///
    /// [`ReactorError::Wait`] if waiting for I/O fails.
    pub fn run_inline<SI: Sequencer, SO: Sequencer>(
        self,
        ingress: Producer<C::In, SI>,
        egress: Option<Poller<C::Out, SO>>,
        inline: impl Inline,
    ) -> Result<(), ReactorError>
    where
        Producer<C::In, SI>: Send + 'static,
    {
        self.run_with(ingress, egress, Some(Box::new(inline)))
    }

    fn run_with<SI: Sequencer, SO: Sequencer>(
        self,
        ingress: Producer<C::In, SI>,
        egress: Option<Poller<C::Out, SO>>,
        inline: Option<Box<dyn Inline>>,
    ) -> Result<(), ReactorError>
    where
        Producer<C::In, SI>: Send + 'static,
    {
        if let Some(core) = self.config.pin {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::warn!(core, "cannot pin the event loop thread");
            }
        }
        let mut event_loop = Loop {
            inline,
            codec: self.codec,
            backend: self.backend,
            waker: self.waker,
            stats: self.stats,
            stop: self.stop,
            ingress,
            egress,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            events: Vec::with_capacity(1024),
            ready: Vec::new(),
            blocked: Vec::new(),
            dirty: Vec::new(),
            halted: false,
            table: self.table,
            consumed: 0,
            config: self.config,
        };
        let result = event_loop.run();
        let Loop {
            ingress,
            egress,
            stats,
            inline,
            ..
        } = event_loop;
        close_ingress(ingress, egress, &stats);
        if let Some(mut inline) = inline {
            inline.finish();
        }
        result
    }

    /// Runs the loop on a new thread named [`Config::thread_name`]; see [`run`](Self::run).
    ///
    /// # Errors
    ///
    /// [`ReactorError::Spawn`] if the thread cannot be started.
    pub fn spawn<SI: Sequencer, SO: Sequencer>(
        self,
        ingress: Producer<C::In, SI>,
        egress: Option<Poller<C::Out, SO>>,
    ) -> Result<ReactorHandle, ReactorError>
    where
        Producer<C::In, SI>: Send + 'static,
        Poller<C::Out, SO>: Send + 'static,
    {
        self.spawn_with(ingress, egress, None)
    }

    /// Runs the loop and `inline` on a new thread; see [`run_inline`](Self::run_inline).
    ///
    /// # Errors
    ///
    /// [`ReactorError::Spawn`] if the thread cannot be started.
    pub fn spawn_inline<SI: Sequencer, SO: Sequencer>(
        self,
        ingress: Producer<C::In, SI>,
        egress: Option<Poller<C::Out, SO>>,
        inline: impl Inline,
    ) -> Result<ReactorHandle, ReactorError>
    where
        Producer<C::In, SI>: Send + 'static,
        Poller<C::Out, SO>: Send + 'static,
    {
        self.spawn_with(ingress, egress, Some(Box::new(inline)))
    }

    fn spawn_with<SI: Sequencer, SO: Sequencer>(
        self,
        ingress: Producer<C::In, SI>,
        egress: Option<Poller<C::Out, SO>>,
        inline: Option<Box<dyn Inline>>,
    ) -> Result<ReactorHandle, ReactorError>
    where
        Producer<C::In, SI>: Send + 'static,
        Poller<C::Out, SO>: Send + 'static,
    {
        let backend = self.backend();
        let fallback = self.fallback.clone();
        let local_addr = self.local_addr;
        let stats = Arc::clone(&self.stats);
        let stopper = self.stopper();
        let name = self.config.thread_name.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run_with(ingress, egress, inline))
            .map_err(ReactorError::Spawn)?;
        Ok(ReactorHandle {
            backend,
            fallback,
            local_addr,
            stats,
            stopper,
            thread: Some(thread),
        })
    }
}

/// Drops the ingress producer, which closes the ingress ring and joins its stages once
/// they drain, while this thread keeps emptying the egress ring: a stage blocked on a
/// full egress ring would otherwise never finish, and the join never return. Responses
/// drained here have no connection left to go to and are counted as undeliverable.
fn close_ingress<I, O, SI: Sequencer, SO: Sequencer>(
    ingress: Producer<I, SI>,
    egress: Option<Poller<O, SO>>,
    stats: &Stats,
) where
    Producer<I, SI>: Send + 'static,
{
    let Some(mut egress) = egress else {
        drop(ingress);
        return;
    };
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::clone(&done);
    let closer = std::thread::Builder::new()
        .name("reactor-close".to_string())
        .spawn(move || {
            drop(ingress);
            finished.store(true, Ordering::Release);
        });
    let Ok(closer) = closer else {
        tracing::warn!("cannot start a thread to close the ingress ring; leaving it open");
        return;
    };
    loop {
        let mut lost = 0u64;
        let state = egress.poll(|_, _, _| lost += 1);
        Stats::add(&stats.undeliverable, lost);
        match state {
            PollState::Events(_) => continue,
            PollState::Drained | PollState::Halted => break,
            PollState::Idle if done.load(Ordering::Acquire) => break,
            PollState::Idle => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    if closer.join().is_err() {
        tracing::warn!("a stage panicked while the ingress ring closed");
    }
}

/// Work an event loop runs on its own thread ([`Reactor::run_inline`],
/// [`Reactor::spawn_inline`]): the thread-per-core way to consume the ingress ring, with
/// no hand-off to another thread and no wake-up between a read and its answer.
///
/// Typically it owns a [`Poller`] of the ingress ring and an [`Egress`](crate::Egress) of
/// the egress ring. Since the loop is the egress ring's only consumer and does not run
/// while `turn` does, `turn` must never wait for room in that ring: publish with
/// [`Egress::try_publish`](crate::Egress::try_publish), keep what does not fit, and
/// return `true` so the loop drains the ring and calls again at once.
pub trait Inline: Send + 'static {
    /// One turn: handle what the loop has published since the last one. Returns whether
    /// work was done or is left; the loop then polls for I/O without sleeping.
    fn turn(&mut self) -> bool;

    /// Called once when the loop has stopped: its connections are closed and the
    /// ingress producer is dropped, so the ingress ring drains to its end.
    fn finish(&mut self) {}
}

/// Stops a running loop from another thread.
#[derive(Debug, Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    waker: LoopWaker,
}

impl Stopper {
    /// Asks the loop to stop; it closes every connection and returns from `run`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.waker.force();
    }
}

/// A loop running on its own thread ([`Reactor::spawn`]). Dropping it stops the loop
/// and joins the thread.
#[derive(Debug)]
pub struct ReactorHandle {
    backend: BackendKind,
    fallback: Option<String>,
    local_addr: SocketAddr,
    stats: Arc<Stats>,
    stopper: Stopper,
    thread: Option<JoinHandle<Result<(), ReactorError>>>,
}

impl ReactorHandle {
    /// The backend the loop runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Why io_uring is not in use, when it was wanted; see [`Reactor::fallback_reason`].
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The loop's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// A stopper for the loop.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stops the loop and joins its thread.
    ///
    /// # Errors
    ///
    /// What the loop returned; [`ReactorError::Panicked`] if its thread panicked.
    pub fn shutdown(mut self) -> Result<(), ReactorError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ReactorError> {
        self.stopper.stop();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| ReactorError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for ReactorHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!(error = %e, "event loop ended with an error");
        }
    }
}

/// One connection's protocol state.
#[derive(Debug)]
struct Conn {
    id: ConnId,
    /// Received bytes; those from `rstart` on are not yet decoded (at most a partial
    /// frame, unless paused).
    rbuf: Vec<u8>,
    /// Where the undecoded bytes of `rbuf` begin; invariant: `rstart <= rbuf.len()`.
    rstart: usize,
    /// Encoded responses not yet handed to the backend.
    wbuf: Vec<u8>,
    /// Why reading is paused (`PAUSE_*` bits); reading runs only when zero.
    paused: u8,
    tokens: f64,
    refilled: Instant,
    last_rx: Instant,
    /// When the partial frame at the head of `rbuf` began (or reading resumed).
    frame_since: Option<Instant>,
    /// The peer closed its side; close once the buffered frames are published.
    eof: bool,
    /// Readiness backend: in `ready`, may have more bytes.
    readable: bool,
    /// In `dirty`.
    dirty: bool,
    /// This connection is `BUSY` in the direct-write table: the loop holds (or has in
    /// flight) bytes for it, so publishers send through the ring.
    busy: bool,
}

impl Conn {
    /// Drops decoded bytes: all of them when nothing is left, else once they are the
    /// larger part of the buffer (so the copy is amortised over many frames).
    fn compact(&mut self) {
        debug_assert!(self.rstart <= self.rbuf.len());
        if self.rstart == self.rbuf.len() {
            self.rbuf.clear();
            self.rstart = 0;
        } else if self.rstart >= COMPACT_AT && self.rstart * 2 >= self.rbuf.len() {
            self.rbuf.drain(..self.rstart);
            self.rstart = 0;
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// Why scanning a connection's buffer stopped before its bytes ran out.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Full,
    Rate(RateAction),
    Bad(CloseReason),
}

/// Where decoding of one connection's buffer stopped.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    NeedMore,
    Paused,
    Closed,
}

/// Retires every connection of a direct-write table when dropped (see [`Table::retire_all`]).
struct RetireAll(Arc<Table>);

impl Drop for RetireAll {
    fn drop(&mut self) {
        self.0.retire_all();
    }
}

struct Loop<C: Codec, SI: Sequencer, SO: Sequencer> {
    /// Work run on this thread once per turn ([`Reactor::run_inline`]).
    inline: Option<Box<dyn Inline>>,
    config: Config,
    codec: C,
    backend: Backend,
    waker: LoopWaker,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    ingress: Producer<C::In, SI>,
    egress: Option<Poller<C::Out, SO>>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    open: usize,
    /// Events from the backend, and from backend calls made while handling them.
    events: Vec<Event>,
    /// Readiness backend: connections with bytes left to read.
    ready: Vec<usize>,
    /// Connections paused because the ingress ring was full.
    blocked: Vec<usize>,
    /// Connections with encoded responses to flush.
    dirty: Vec<usize>,
    halted: bool,
    /// Direct egress writes (see [`crate::direct`]).
    table: Arc<Table>,
    /// The egress poller position last published to `table`.
    consumed: u64,
}

impl<C: Codec, SI: Sequencer, SO: Sequencer> Loop<C, SI, SO> {
    fn run(&mut self) -> Result<(), ReactorError> {
        tracing::debug!(backend = %self.backend.kind(), "event loop started");
        let mut next_tick = Instant::now() + self.config.tick;
        if let Err(e) = self.backend.start() {
            tracing::error!(error = %e, "cannot start the event loop's backend");
            return Err(ReactorError::Backend(e));
        }
        // However the loop ends (a panicking codec included), direct writes stop before
        // the backend closes the sockets as it drops: none may reach a closed fd, or a
        // reused one.
        let _retire = RetireAll(Arc::clone(&self.table));
        let mut result = Ok(());
        // Busy polling: after activity, poll without blocking until this instant.
        let mut spin_until: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) && !self.halted {
            self.take_handoffs();
            // Inline work first: what it answers goes out in this turn's flush.
            let mut busy = self.inline.as_mut().is_some_and(|i| i.turn());
            busy |= self.pump_egress();
            busy |= self.retry_blocked();
            self.flush();
            let now = Instant::now();
            if now >= next_tick {
                self.housekeeping(now);
                next_tick = now + self.config.tick;
            }
            busy |= !self.ready.is_empty() || !self.events.is_empty() || !self.dirty.is_empty();
            let mut timeout = Duration::ZERO;
            if let Some(spin) = self.config.busy_poll {
                if busy {
                    spin_until = Some(now + spin);
                } else if spin_until.is_some_and(|until| now < until) {
                    // Polling, but politely: a stage or client that shares this core
                    // (the usual case on small machines) gets it at once.
                    std::thread::yield_now();
                    busy = true;
                }
            }
            if !busy {
                timeout = next_tick.saturating_duration_since(now);
                if !self.blocked.is_empty() {
                    timeout = timeout.min(FULL_RETRY);
                }
                // The wake protocol (see `waker`): announce the sleep, fence, re-check.
                self.waker.inner.sleeping.announce();
                if self.pump_egress()
                    || self.stop.load(Ordering::Acquire)
                    || self.table.handoff_pending()
                {
                    timeout = Duration::ZERO;
                    self.flush();
                }
            }
            let mut events = std::mem::take(&mut self.events);
            let waited = self.backend.wait(timeout, &mut events);
            self.waker.inner.sleeping.awake();
            if let Err(e) = waited {
                tracing::error!(error = %e, "event loop wait failed");
                result = Err(ReactorError::Wait(e));
                self.events = events;
                break;
            }
            if let (Some(spin), false) = (self.config.busy_poll, events.is_empty()) {
                spin_until = Some(Instant::now() + spin);
            }
            for event in events.drain(..) {
                self.handle(event);
            }
            if self.events.is_empty() {
                self.events = events;
            }
            self.read_ready();
        }
        self.close_all();
        result
    }

    fn conn_mut(&mut self, idx: usize) -> Option<&mut Conn> {
        self.slots.get_mut(idx).and_then(|s| s.conn.as_mut())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Accepted(stream) => self.accept(stream),
            Event::Readable(idx) => {
                if let Some(conn) = self.conn_mut(idx) {
                    if conn.paused == 0 && !conn.readable {
                        conn.readable = true;
                        self.ready.push(idx);
                    }
                }
            }
            Event::Received { idx, buf, len } => {
                match self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) {
                    Some(conn) => {
                        self.backend.received(buf, len, Some(&mut conn.rbuf));
                        conn.last_rx = Instant::now();
                        Stats::add(&self.stats.bytes_in, len as u64);
                        self.decode(idx);
                    }
                    None => self.backend.received(buf, len, None),
                }
            }
            Event::Eof(idx) => {
                if let Some(conn) = self.conn_mut(idx) {
                    conn.eof = true;
                    self.finish_eof(idx);
                }
            }
            Event::Failed(idx, e) => {
                if self.conn_mut(idx).is_some() {
                    tracing::debug!(error = %e, idx, "connection failed");
                    self.close(idx, CloseReason::Io);
                }
            }
            Event::Sent(idx) => {
                if let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) {
                    // A busy connection may settle now that its send finished.
                    if (!conn.wbuf.is_empty() || conn.busy) && !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(idx);
                    }
                    if conn.paused & PAUSE_WRITE != 0
                        && conn.wbuf.len() <= self.config.write_high_water / 2
                    {
                        self.unpause(idx, PAUSE_WRITE);
                    }
                }
            }
            Event::Released(idx) => self.release(idx),
            Event::Wake => {}
        }
    }

    fn accept(&mut self, stream: std::net::TcpStream) {
        Stats::add(&self.stats.accepted, 1);
        if self.open >= self.config.max_connections {
            self.stats.close(CloseReason::ConnectionLimit);
            return; // dropping the stream closes it
        }
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            self.slots.len() - 1
        });
        let fd = stream.as_raw_fd();
        if let Err(e) = self.backend.adopt(idx, stream) {
            tracing::warn!(error = %e, "cannot register a connection");
            self.stats.close(CloseReason::Io);
            self.free.push(idx);
            return;
        }
        let now = Instant::now();
        let slot = &mut self.slots[idx];
        slot.conn = Some(Conn {
            id: ConnId::new(idx, slot.generation),
            rbuf: Vec::new(),
            rstart: 0,
            wbuf: Vec::new(),
            paused: 0,
            tokens: self.config.rate_limit.map_or(0.0, |r| r.burst),
            refilled: now,
            last_rx: now,
            frame_since: None,
            eof: false,
            readable: false,
            dirty: false,
            busy: false,
        });
        self.table.open(idx, slot.generation, fd);
        self.open += 1;
        Stats::add(&self.stats.open, 1);
    }

    fn close(&mut self, idx: usize, reason: CloseReason) {
        let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.take()) else {
            return;
        };
        tracing::debug!(conn = conn.id.0, %reason, "closing connection");
        // No direct write may touch the fd once the backend closes it.
        self.table.retire(idx);
        self.stats.close(reason);
        self.open -= 1;
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        if self.backend.close(idx) {
            self.release(idx);
        }
    }

    fn release(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        debug_assert!(slot.conn.is_none());
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(idx);
    }

    fn close_all(&mut self) {
        for idx in 0..self.slots.len() {
            self.close(idx, CloseReason::Shutdown);
        }
    }

    /// Stops reading `idx` for `reason` (a `PAUSE_*` bit).
    fn pause(&mut self, idx: usize, reason: u8) {
        let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        let was = conn.paused;
        conn.paused |= reason;
        if was == 0 {
            self.backend.set_reading(idx, false, &mut self.events);
        }
    }

    /// Clears pause `reason`; resumes reading when no reason is left.
    fn unpause(&mut self, idx: usize, reason: u8) {
        let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        if conn.paused & reason == 0 {
            return;
        }
        conn.paused &= !reason;
        if conn.paused == 0 {
            // Time spent paused is not the client's slowness.
            if conn.frame_since.is_some() {
                conn.frame_since = Some(Instant::now());
            }
            conn.last_rx = Instant::now();
            self.backend.set_reading(idx, true, &mut self.events);
            if self.decode(idx) == Decoded::NeedMore {
                self.finish_eof(idx);
            }
        }
    }

    /// Closes a connection whose peer has closed, once nothing publishable is left.
    fn finish_eof(&mut self, idx: usize) {
        let Some(conn) = self.conn_mut(idx) else {
            return;
        };
        if !conn.eof || conn.paused != 0 {
            return;
        }
        let reason = if conn.rstart == conn.rbuf.len() {
            CloseReason::PeerClosed
        } else {
            CloseReason::ClosedMidFrame
        };
        let mut wbuf = std::mem::take(&mut conn.wbuf);
        // A tail a publisher spilled goes before what the loop queued.
        let mut out = self.table.retire(idx);
        out.append(&mut wbuf);
        if !out.is_empty() {
            // Try to get queued responses out first; a half-closed peer may still read.
            self.backend.send(idx, &mut out, &mut self.events);
        }
        self.close(idx, reason);
    }

    /// Publishes every complete frame buffered for `idx` into the ingress ring, in
    /// batches: the frames found are claimed together and published with one cursor
    /// update, each decoded straight into its slot.
    fn decode(&mut self, idx: usize) -> Decoded {
        let max_frame = self.config.max_frame;
        let rate = self.config.rate_limit;
        let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) else {
            return Decoded::Closed;
        };
        let mut spans = [(0usize, 0usize); DECODE_BATCH];
        // Why scanning stopped after the frames in `spans`, if not for lack of bytes.
        let mut stop: Option<Stop> = None;
        let outcome = loop {
            if conn.paused != 0 {
                break Decoded::Paused;
            }
            let room = self.ingress.remaining_capacity().min(DECODE_BATCH as u64) as usize;
            if room == 0 {
                stop = Some(Stop::Full);
                break Decoded::Paused;
            }
            let mut n = 0;
            let mut pos = conn.rstart;
            let mut now = None;
            while n < room {
                match self.codec.frame_len(&conn.rbuf[pos..], max_frame) {
                    Ok(Some(len)) => {
                        if let Some(rate) = rate {
                            let now = *now.get_or_insert_with(Instant::now);
                            let elapsed = now.duration_since(conn.refilled).as_secs_f64();
                            conn.tokens =
                                (conn.tokens + elapsed * rate.frames_per_sec).min(rate.burst);
                            conn.refilled = now;
                            if conn.tokens < 1.0 {
                                stop = Some(Stop::Rate(rate.action));
                                break;
                            }
                            conn.tokens -= 1.0;
                        }
                        spans[n] = (pos, len);
                        n += 1;
                        pos += len;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(conn = conn.id.0, error = %e, "bad frame");
                        stop = Some(Stop::Bad(match e {
                            FrameError::Oversized { .. } => CloseReason::Oversized,
                            FrameError::Malformed(_) => CloseReason::Malformed,
                        }));
                        break;
                    }
                }
            }
            if n > 0 {
                match self.ingress.try_claim_batch(n) {
                    Ok(mut batch) => {
                        for (i, &(start, len)) in spans[..n].iter().enumerate() {
                            self.codec.decode(
                                conn.id,
                                &conn.rbuf[start..start + len],
                                batch.get_mut(i),
                            );
                        }
                        conn.rstart = pos;
                        // Counted before the batch is published: with direct egress a
                        // response can reach its client before this loop runs again.
                        Stats::add(&self.stats.frames_in, n as u64);
                    }
                    Err(TryPublishError::Full) => {
                        // Room shrank under us only if another producer shares the ring.
                        if rate.is_some() {
                            conn.tokens += n as f64;
                        }
                        stop = Some(Stop::Full);
                        break Decoded::Paused;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ingress ring refuses events; stopping the loop");
                        self.halted = true;
                        break Decoded::Paused;
                    }
                }
            }
            if stop.is_some() {
                break Decoded::Paused;
            }
            if n < room {
                break Decoded::NeedMore;
            }
        };
        conn.compact();
        if conn.rstart == conn.rbuf.len() {
            conn.frame_since = None;
        } else if conn.frame_since.is_none() {
            conn.frame_since = Some(Instant::now());
        }
        match stop {
            None => outcome,
            Some(Stop::Full) => {
                Stats::add(&self.stats.ring_full, 1);
                self.blocked.push(idx);
                self.pause(idx, PAUSE_RING);
                Decoded::Paused
            }
            Some(Stop::Rate(RateAction::Throttle)) => {
                Stats::add(&self.stats.throttled, 1);
                self.pause(idx, PAUSE_THROTTLE);
                Decoded::Paused
            }
            Some(Stop::Rate(RateAction::Close)) => {
                self.close(idx, CloseReason::RateLimited);
                Decoded::Closed
            }
            Some(Stop::Bad(reason)) => {
                self.close(idx, reason);
                Decoded::Closed
            }
        }
    }

    /// Readiness backend: reads connections that reported bytes.
    fn read_ready(&mut self) {
        for idx in std::mem::take(&mut self.ready) {
            let mut more = true;
            for _ in 0..READS_PER_TURN {
                let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) else {
                    more = false;
                    break;
                };
                if conn.paused != 0 {
                    // Resuming reports the connection readable again.
                    conn.readable = false;
                    more = false;
                    break;
                }
                match self.backend.read(idx, &mut conn.rbuf, READ_CHUNK) {
                    ReadOutcome::Data(n) => {
                        conn.last_rx = Instant::now();
                        Stats::add(&self.stats.bytes_in, n as u64);
                        if self.decode(idx) == Decoded::Closed {
                            more = false;
                            break;
                        }
                    }
                    ReadOutcome::Drained(n) => {
                        conn.last_rx = Instant::now();
                        conn.readable = false;
                        Stats::add(&self.stats.bytes_in, n as u64);
                        self.decode(idx);
                        more = false;
                        break;
                    }
                    ReadOutcome::WouldBlock => {
                        conn.readable = false;
                        more = false;
                        break;
                    }
                    ReadOutcome::Eof => {
                        conn.readable = false;
                        conn.eof = true;
                        self.finish_eof(idx);
                        more = false;
                        break;
                    }
                    ReadOutcome::Failed(e) => {
                        tracing::debug!(error = %e, idx, "read failed");
                        self.close(idx, CloseReason::Io);
                        more = false;
                        break;
                    }
                }
            }
            if more {
                self.ready.push(idx);
            }
        }
    }

    /// Resumes connections paused on a full ingress ring once it has room.
    fn retry_blocked(&mut self) -> bool {
        if self.blocked.is_empty() || self.ingress.remaining_capacity() == 0 {
            return false;
        }
        // A connection that finds the ring full again goes back on the list; each
        // connection's frames stay in order since only its own buffer holds them.
        for idx in std::mem::take(&mut self.blocked) {
            self.unpause(idx, PAUSE_RING);
        }
        true
    }

    /// Encodes every response waiting in the egress ring onto its connection.
    fn pump_egress(&mut self) -> bool {
        let Some(poller) = self.egress.as_mut() else {
            return false;
        };
        let mut any = false;
        loop {
            let slots = &mut self.slots;
            let codec = &mut self.codec;
            let dirty = &mut self.dirty;
            let table = &self.table;
            let mut out = 0u64;
            let mut lost = 0u64;
            let state = poller.poll(|event, _, _| {
                let dest = codec.destination(event);
                match slots
                    .get_mut(dest.index())
                    .filter(|s| s.generation == dest.generation())
                    .and_then(|s| s.conn.as_mut())
                {
                    Some(conn) => {
                        if !conn.busy {
                            // Before `consumed` moves past this entry (see `direct`).
                            conn.busy = true;
                            table.mark_busy(dest.index());
                        }
                        codec.encode(event, &mut conn.wbuf);
                        if !conn.dirty {
                            conn.dirty = true;
                            dirty.push(dest.index());
                        }
                        out += 1;
                    }
                    None => lost += 1,
                }
            });
            Stats::add(&self.stats.frames_out, out);
            if lost > 0 {
                Stats::add(&self.stats.undeliverable, lost);
            }
            let consumed = poller.sequence();
            if consumed != self.consumed {
                self.consumed = consumed;
                self.table.set_consumed(consumed);
            }
            match state {
                PollState::Events(_) => any = true,
                PollState::Idle => break,
                PollState::Drained | PollState::Halted => {
                    self.egress = None;
                    break;
                }
            }
        }
        any
    }

    /// Hands queued responses to the backend; applies the write limits.
    fn flush(&mut self) {
        for idx in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.slots.get_mut(idx).and_then(|s| s.conn.as_mut()) else {
                continue;
            };
            conn.dirty = false;
            if conn.busy {
                let mut spill = Vec::new();
                if !self.table.take_for_send(idx, &mut spill) {
                    // A publisher is writing; it hands the connection back (`handoff`).
                    continue;
                }
                if !spill.is_empty() {
                    spill.append(&mut conn.wbuf);
                    conn.wbuf = spill;
                }
            }
            let before = conn.wbuf.len();
            self.backend.send(idx, &mut conn.wbuf, &mut self.events);
            let left = conn.wbuf.len();
            if conn.busy && left == 0 && self.backend.send_idle(idx) {
                conn.busy = false;
                self.table.settle(idx);
            }
            Stats::add(&self.stats.bytes_out, (before - left) as u64);
            let write_paused = conn.paused & PAUSE_WRITE != 0;
            if left > self.config.write_limit {
                self.close(idx, CloseReason::SlowReader);
            } else if left > self.config.write_high_water {
                self.pause(idx, PAUSE_WRITE);
            } else if write_paused && left <= self.config.write_high_water / 2 {
                // Regression: resuming only on the backend's `Sent` left a connection
                // paused forever when the flush that followed emptied its queue.
                self.unpause(idx, PAUSE_WRITE);
            }
        }
    }

    /// Takes back the connections publishers handed over (a spilled tail, or a write that
    /// the loop had to wait for) and queues them for a flush.
    fn take_handoffs(&mut self) {
        if !self.table.take_handoff() {
            return;
        }
        for idx in 0..self.slots.len() {
            let Some(conn) = self.slots[idx].conn.as_mut() else {
                continue;
            };
            if conn.busy || self.table.is_busy(idx) {
                conn.busy = true;
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(idx);
                }
            }
        }
    }

    /// Timeouts and throttle refills.
    fn housekeeping(&mut self, now: Instant) {
        for idx in 0..self.slots.len() {
            let Some(conn) = self.slots[idx].conn.as_mut() else {
                continue;
            };
            if conn.paused & PAUSE_THROTTLE != 0 {
                if let Some(rate) = self.config.rate_limit {
                    let elapsed = now.duration_since(conn.refilled).as_secs_f64();
                    if conn.tokens + elapsed * rate.frames_per_sec >= 1.0 {
                        self.unpause(idx, PAUSE_THROTTLE);
                    }
                }
                continue;
            }
            if conn.paused != 0 {
                continue;
            }
            if let Some(idle) = self.config.idle_timeout {
                if now.duration_since(conn.last_rx) > idle {
                    self.close(idx, CloseReason::IdleTimeout);
                    continue;
                }
            }
            if let (Some(limit), Some(since)) = (self.config.frame_timeout, conn.frame_since) {
                if now.duration_since(since) > limit {
                    self.close(idx, CloseReason::FrameTimeout);
                }
            }
        }
    }
}
