//! The LMAX pipeline in a few lines: network in, journal and decode in parallel, one
//! business-logic thread, network out.
//!
//! ```text
//!  clients --TCP--> [reactor] --> input ring --+--> journal --+--> logic --> output ring --> [reactor] --TCP--> clients
//!                                              +--> decode ---+
//! ```
//!
//! The user writes a [`Logic`]: how to [`decode`](Logic::decode) a frame's bytes into a
//! command (on the decode thread, in parallel with the journal) and how to
//! [`apply`](Logic::apply) a command to the state (on the one logic thread), sending
//! replies through a [`Reply`]. The state is a [`Snapshot`] so it can be saved and rebuilt.
//! [`Pipeline::start`] then:
//!
//! 1. recovers: loads the newest snapshot in `DIR/snapshots` (or the initial state) and
//!    replays the journal in `DIR/journal` from the snapshot's sequence through the same
//!    `decode` and `apply` (replies are discarded: [`Reply::is_replay`]);
//! 2. lays the stages out on threads ([`Layout`]): the four threads above (reactor,
//!    journal, decode, logic) where the process may use four cores, or one (the event
//!    loop journals, decodes and applies what it read, between its reads) where it may
//!    not; and places them on cores that share a cache ([`placement`](crate::placement)),
//!    pinning each where the machine has a core for it;
//! 3. opens the network only then, so no command is applied before the state is whole.
//!
//! Frames are length-prefixed (`u32` little-endian length, then the payload) both ways:
//! the journal records each frame's payload exactly as received, and each
//! [`Reply::send`] is one frame back.
//!
//! ```
//! use peregrine::pipeline::{Logic, Pipeline, Reply};
//! use peregrine::journaled::Snapshot;
//! use peregrine::ring::BoxError;
//! use std::io::{Read, Write};
//!
//! /// A running total: each frame is a little-endian `i64` to add; the reply is the total.
//! #[derive(Default)]
//! struct Total(i64);
//!
//! impl Snapshot for Total {
//!     fn save(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.0.to_le_bytes()) }
//!     fn load(bytes: &[u8]) -> Result<Self, BoxError> { Ok(Total(i64::from_le_bytes(bytes.try_into()?))) }
//! }
//!
//! impl Logic for Total {
//!     type Command = Option<i64>; // None: not 8 bytes
//!     fn decode(payload: &[u8]) -> Option<i64> { Some(i64::from_le_bytes(payload.try_into().ok()?)) }
//!     fn apply(&mut self, command: &Option<i64>, reply: &mut Reply<'_>) {
//!         if let Some(v) = command { self.0 += v }
//!         reply.send(|out| out.extend_from_slice(&self.0.to_le_bytes()));
//!     }
//! }
//!
//! let dir = std::env::temp_dir().join(format!("peregrine-pipeline-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let running = Pipeline::new(&dir).start(Total::default)?;
//!
//! let mut client = std::net::TcpStream::connect(running.local_addr())?;
//! for v in [5i64, 7] {
//!     client.write_all(&8u32.to_le_bytes())?;
//!     client.write_all(&v.to_le_bytes())?;
//! }
//! let mut reply = [0u8; 12];
//! client.read_exact(&mut reply)?; // 5
//! client.read_exact(&mut reply)?; // 12
//! assert_eq!(i64::from_le_bytes(reply[4..].try_into()?), 12);
//!
//! let stopped = running.stop()?;
//! assert_eq!(stopped.state.0, 12);
//!
//! // A restart rebuilds the total from the journal before it listens.
//! let running = Pipeline::new(&dir).start(Total::default)?;
//! assert_eq!(running.recovery().replayed, 2);
//! assert_eq!(running.stop()?.state.0, 12);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use peregrine_journal::{
    AppendError, Appender, Config as JournalConfig, OpenError, ReadError, Reader,
};
use peregrine_reactor::{
    BackendKind, Backlog, Codec, Config as ReactorConfig, ConnId, Egress, FrameError,
    LengthPrefixed, Reactor, ReactorError, ReactorHandle, HEADER_LEN,
};
use peregrine_ring::{
    single_producer, BuildError, DeadLetterSink, EventHandler, Failure, FailurePolicy, PollState,
    Poller, Ring, Single, StageBuilder, Telemetry, TryEventHandler, WaitStrategy,
};
use thiserror::Error;

use crate::journaled::{
    load_latest, JournalDeadLetters, JournalStage, RecoverError, Recovered, Snapshot, SnapshotStore,
};
use crate::metrics::{Counter, LatencyRecorder, Metrics};
use crate::placement::{place, PlacementError, StageNeed, Topology, TopologyError};

/// The business logic of a [`Pipeline`]: single-threaded state that commands are applied
/// to, in journal order.
///
/// `decode` runs on the decode thread (in parallel with the journal) and during recovery;
/// `apply` runs on the logic thread, which owns `self`, and during recovery with replies
/// discarded. Both must be deterministic functions of their inputs (and `self`): recovery
/// rebuilds the state by running them again over the journal.
pub trait Logic: Snapshot + Send + 'static {
    /// A decoded command. Decoding cannot fail from the pipeline's point of view: make
    /// this a `Result` (or an enum with a "malformed" case) and answer bad input with a
    /// reject in [`apply`](Logic::apply).
    type Command: Default + Send + Sync + 'static;

    /// Decodes one frame's payload (as received, and as journaled).
    fn decode(payload: &[u8]) -> Self::Command;

    /// Applies one command, replying through `reply`.
    fn apply(&mut self, command: &Self::Command, reply: &mut Reply<'_>);
}

/// Where [`Logic::apply`] sends its replies: frames to the connection the command came
/// from (or any other open connection), or nowhere while recovery replays the journal.
pub struct Reply<'a> {
    egress: Option<&'a mut Egress<Outbound, Single>>,
    origin: ConnId,
    undelivered: Option<&'a Counter>,
    /// In the [`Layout::Inline`] layout: where replies the egress ring has no room for
    /// wait (the loop cannot drain the ring while `apply` runs).
    backlog: Option<&'a mut Backlog<Outbound>>,
}

impl fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("origin", &self.origin)
            .field("replay", &self.is_replay())
            .finish()
    }
}

impl<'a> Reply<'a> {
    /// A sink for recovery: [`is_replay`](Self::is_replay) is true and sends are no-ops.
    pub fn replay() -> Reply<'static> {
        Reply {
            egress: None,
            origin: ConnId::NONE,
            undelivered: None,
            backlog: None,
        }
    }

    /// True while recovery replays the journal: the command was answered before the
    /// restart, and nothing sent now goes anywhere.
    pub fn is_replay(&self) -> bool {
        self.egress.is_none()
    }

    /// The connection the command came from ([`ConnId::NONE`] during replay).
    pub fn origin(&self) -> ConnId {
        self.origin
    }

    /// Sends one frame to the connection the command came from; `write` appends the
    /// payload (the length header is added). Not called during replay.
    ///
    /// A reply to a connection that has closed is dropped by the reactor (and counted in
    /// its stats); a reply the output ring refuses because the pipeline is stopping is
    /// counted as `pipeline_replies_undelivered`.
    pub fn send(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.send_to(self.origin, write)
    }

    /// Sends one frame to `conn` (for example a subscriber of market data).
    pub fn send_to(&mut self, conn: ConnId, write: impl FnOnce(&mut Vec<u8>)) {
        let Some(egress) = self.egress.as_deref_mut() else {
            return;
        };
        let sent = match self.backlog.as_deref_mut() {
            None => egress
                .publish(|out| {
                    out.conn = conn;
                    out.bytes.clear();
                    write(&mut out.bytes);
                })
                .map(drop)
                .map_err(drop),
            // Never wait for room: the loop that makes it is this thread.
            Some(backlog) => backlog
                .send(egress, |out| {
                    out.conn = conn;
                    out.bytes.clear();
                    write(&mut out.bytes);
                })
                .map_err(drop),
        };
        if sent.is_err() {
            if let Some(c) = self.undelivered {
                c.add(1);
            }
        }
    }
}

/// The four threads of a pipeline, for explicit placement ([`Pipeline::core`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The network event loop (ingress and egress).
    Reactor = 0,
    /// The journal stage.
    Journal = 1,
    /// The decode stage.
    Decode = 2,
    /// The business-logic stage.
    Logic = 3,
}

const ROLES: [&str; 4] = ["reactor", "journal", "decode", "logic"];

/// How the pipeline's stages map onto threads.
///
/// | layout | threads | fits |
/// |---|---|---|
/// | `Parallel` | reactor; journal and decode side by side; logic | a core for each thread: journaling and decoding overlap, and each command crosses two thread hand-offs |
/// | `Fused` | reactor; one stage thread that journals a batch, then decodes and applies it | one hand-off; the network is read while commands are applied |
/// | `Inline` | the reactor's event loop alone: between reads it journals, decodes and applies what it read, and its replies leave with its next writes | fewer than four cores: no hand-off, no wake-up, one send per connection per turn |
///
/// All keep the same guarantees: a command is applied (and answered) only after the
/// journal holds it, under the journal's durability; failures follow
/// [`OnFailure`] and are reported under the same stage names (`journal`, `decode`,
/// `logic`); replies go out in command order. On a two-core machine the inline and fused
/// layouts answer the order engine's commands with a p99 several times lower than the
/// parallel layout's (see the engine bench in BENCHMARKS.md).
///
/// In the fused and inline layouts the input ring has one consumer, `logic`; the decode and apply
/// failures it goes on from (under [`OnFailure::Skip`] or [`OnFailure::DeadLetter`]) are
/// logged, and a failed decode is counted in `pipeline_commands_skipped`, but they do not
/// appear in that stage's telemetry failure count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Layout {
    /// `Parallel` where the process may use four cores or more, or where the journal or
    /// decode thread is pinned with [`Pipeline::core`]; `Inline` otherwise (the default).
    #[default]
    Auto,
    /// Four threads: reactor, journal in parallel with decode, logic (the LMAX layout).
    Parallel,
    /// Two threads: the reactor, and one stage that journals each batch, then decodes and
    /// applies its commands.
    Fused,
    /// One thread: the reactor's event loop journals, decodes and applies each batch of
    /// commands it has read, between its reads ([`Inline`](peregrine_reactor::Inline)).
    /// No hand-off and no wake-up between a read and its answer; the loop does not read
    /// while it applies. Replies go through the loop's write buffers (direct egress is
    /// off: it would cost one send per reply); those the output ring has no room for wait,
    /// in order, and no new command is applied until they are out.
    Inline,
}

/// What a failing stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Halt the pipeline: nothing more is applied; [`Running::failure`] says why (default).
    #[default]
    Halt,
    /// Log the failure, count it in the stage's telemetry, skip the command and go on.
    Skip,
    /// As [`Skip`](Self::Skip), and journal the command's payload with the failure in
    /// `DIR/dead-letters` (records in the layout of
    /// [`JournalDeadLetters::parse`](crate::journaled::JournalDeadLetters::parse)), synced
    /// before the stage goes on.
    DeadLetter,
}

/// Why a pipeline did not start or stop cleanly.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Recovery failed: a snapshot does not load, or the journal is unreadable.
    #[error("recovery failed: {0}")]
    Recover(#[from] RecoverError),
    /// The journal could not be opened for appending.
    #[error("cannot open the journal: {0}")]
    Journal(#[from] OpenError),
    /// The snapshot directory is unusable.
    #[error("cannot use the snapshot directory: {0}")]
    Snapshots(#[source] io::Error),
    /// The journal ends before the newest snapshot: the journal lost records the snapshot
    /// includes (a journal without durability after a power loss, or files removed).
    #[error("the journal's next sequence is {journal} but recovery reached {recovered}: the journal lost records")]
    Inconsistent {
        /// The appender's next sequence.
        journal: u64,
        /// The sequence recovery reached.
        recovered: u64,
    },
    /// The machine's topology could not be read.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The placement plan was refused.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A ring could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The reactor failed to start or stopped with an error.
    #[error(transparent)]
    Reactor(#[from] ReactorError),
    /// The logic thread did not hand its state back within the timeout.
    #[error("the logic stage did not finish within {0:?}")]
    StopTimeout(Duration),
}

/// Builds and starts a pipeline over a directory holding its journal and snapshots.
#[derive(Debug, Clone)]
pub struct Pipeline {
    dir: PathBuf,
    reactor: ReactorConfig,
    journal: JournalConfig,
    ring_size: usize,
    wait: WaitStrategy,
    snapshot_every: u64,
    cores: [Option<usize>; 4],
    topology: Option<Topology>,
    allow_oversubscription: bool,
    on_failure: OnFailure,
    stop_timeout: Duration,
    layout: Layout,
    recovery_progress: Option<ProgressHook>,
}

/// The hook of [`Pipeline::on_recovery_progress`].
#[derive(Clone)]
struct ProgressHook(Arc<dyn Fn(&RecoveryProgress) + Send + Sync>);

impl fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressHook")
    }
}

impl Pipeline {
    /// A pipeline keeping its journal in `DIR/journal` and snapshots in `DIR/snapshots`,
    /// listening on `127.0.0.1` on a free port, with frames of up to 256 payload bytes,
    /// rings of 4096 slots, the phased wait strategy (spin, yield, park: fast under load,
    /// idle when idle), journal segments of 64 MiB pre-touched in the background, and no
    /// periodic snapshots.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        let mut reactor = ReactorConfig::with_addr(SocketAddr::from(([127, 0, 0, 1], 0)));
        reactor.max_frame = HEADER_LEN + 256;
        Self {
            dir: dir.as_ref().to_path_buf(),
            reactor,
            journal: JournalConfig::default()
                .segment_size(64 << 20)
                .pretouch(true),
            ring_size: 4096,
            wait: WaitStrategy::phased(),
            snapshot_every: 0,
            cores: [None; 4],
            topology: None,
            allow_oversubscription: false,
            on_failure: OnFailure::Halt,
            stop_timeout: Duration::from_secs(30),
            layout: Layout::Auto,
            recovery_progress: None,
        }
    }

    /// Calls `report` while recovery replays the journal (in [`start`](Self::start) and
    /// [`recover`](Self::recover)): at most ten times a second, and once more when the
    /// replay has ended (with [`RecoveryProgress::done`] set), so that a restart over a long
    /// journal can show how far it has got. `report` runs on the replaying thread: keep it
    /// short.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("peregrine-doc-progress-{}", std::process::id()));
    /// use peregrine::pipeline::Pipeline;
    ///
    /// let pipeline = Pipeline::new(&dir).on_recovery_progress(|p| {
    ///     let share = p.next_sequence as f64 / p.end_sequence.max(1) as f64;
    ///     eprintln!("recovery: {} records replayed ({:.0}%)", p.replayed, 100.0 * share);
    /// });
    /// # let _ = pipeline;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_recovery_progress(
        mut self,
        report: impl Fn(&RecoveryProgress) + Send + Sync + 'static,
    ) -> Self {
        self.recovery_progress = Some(ProgressHook(Arc::new(report)));
        self
    }

    /// Listens on `addr` (port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.reactor.addr = addr;
        self
    }

    /// The largest payload a frame may carry; a longer frame closes its connection.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.reactor.max_frame = HEADER_LEN + bytes;
        self
    }

    /// Replaces the reactor's settings (backend, limits, timeouts, busy polling); the
    /// frame limit there sets the payload limit.
    pub fn reactor(mut self, config: ReactorConfig) -> Self {
        self.reactor = config;
        self
    }

    /// Replaces the journal's settings (segment size, durability, pre-touching).
    pub fn journal(mut self, config: JournalConfig) -> Self {
        self.journal = config;
        self
    }

    /// Slots in each ring (a power of two).
    pub fn ring_size(mut self, slots: usize) -> Self {
        self.ring_size = slots;
        self
    }

    /// The stages' wait strategy. A busy-spinning one needs a core per stage: the
    /// placement refuses it where the machine has too few, unless
    /// [`allow_oversubscription`](Self::allow_oversubscription).
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Saves a snapshot every `n` applied commands (0, the default: only on request).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = n;
        self
    }

    /// Pins `role` to `core`, overriding placement. The journal and decode roles have no
    /// thread of their own in the [`Layout::Fused`] layout: pinning one makes
    /// [`Layout::Auto`] choose [`Layout::Parallel`], and is ignored under an explicit
    /// `Layout::Fused`.
    pub fn core(mut self, role: Role, core: usize) -> Self {
        self.cores[role as usize] = Some(core);
        self
    }

    /// Places on this topology instead of the machine's (for tests and for planning).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// Allows more busy-spinning threads than usable cores.
    pub fn allow_oversubscription(mut self, allow: bool) -> Self {
        self.allow_oversubscription = allow;
        self
    }

    /// What the decode and logic stages do when `decode` or `apply` panics. Recovery
    /// follows the same policy when it replays the command: it skips it under `Skip` and
    /// `DeadLetter`, and stops with [`RecoverError::Failed`] under `Halt`.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// How the stages map onto threads ([`Layout::Auto`] by default).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// How long [`Running::stop`] waits for the pipeline to drain (30 s by default).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The placement plan this pipeline would use: a core (or `None`: left to the
    /// scheduler) for the reactor, journal, decode and logic threads, in that order. In
    /// the [`Layout::Fused`] layout the journal and decode entries are `None` (they run on
    /// the logic thread); [`planned_layout`](Self::planned_layout) says which layout.
    ///
    /// # Errors
    ///
    /// [`PipelineError::Topology`] when the machine's topology cannot be read,
    /// [`PipelineError::Placement`] when the plan is refused.
    pub fn plan(&self) -> Result<[Option<usize>; 4], PipelineError> {
        Ok(self.placement()?.1)
    }

    /// The layout [`start`](Self::start) would use: the one set with
    /// [`layout`](Self::layout), with [`Layout::Auto`] resolved on this machine (or the
    /// [`topology`](Self::topology) given).
    ///
    /// # Errors
    ///
    /// [`PipelineError::Topology`] when the machine's topology cannot be read.
    pub fn planned_layout(&self) -> Result<Layout, PipelineError> {
        Ok(self.resolve_layout(&self.machine()?))
    }

    fn machine(&self) -> Result<Topology, PipelineError> {
        Ok(match &self.topology {
            Some(t) => t.clone(),
            None => Topology::detect()?,
        })
    }

    fn resolve_layout(&self, topology: &Topology) -> Layout {
        match self.layout {
            Layout::Auto => {
                let pinned = self.cores[Role::Journal as usize].is_some()
                    || self.cores[Role::Decode as usize].is_some();
                if topology.allowed.len() >= 4 || pinned {
                    Layout::Parallel
                } else {
                    Layout::Inline
                }
            }
            other => other,
        }
    }

    fn placement(&self) -> Result<(Layout, [Option<usize>; 4]), PipelineError> {
        let topology = self.machine()?;
        let layout = self.resolve_layout(&topology);
        let busy = self.wait.is_busy();
        let need = |role: Role, after: &[usize], busy: bool| StageNeed {
            name: ROLES[role as usize].into(),
            after: after.to_vec(),
            busy,
            core: self.cores[role as usize],
        };
        // The reactor blocks in the kernel (or busy-polls by its own setting).
        let reactor = need(Role::Reactor, &[], self.reactor.busy_poll.is_some());
        if layout == Layout::Inline {
            let plan = place(&topology, &[reactor], self.allow_oversubscription)?;
            return Ok((layout, [plan[0], None, None, None]));
        }
        if layout == Layout::Fused {
            let plan = place(
                &topology,
                &[reactor, need(Role::Logic, &[0], busy)],
                self.allow_oversubscription,
            )?;
            return Ok((layout, [plan[0], None, None, plan[1]]));
        }
        let plan = place(
            &topology,
            &[
                reactor,
                need(Role::Journal, &[0], busy),
                need(Role::Decode, &[0], busy),
                need(Role::Logic, &[1, 2], busy),
            ],
            self.allow_oversubscription,
        )?;
        Ok((layout, [plan[0], plan[1], plan[2], plan[3]]))
    }

    /// Rebuilds the state as [`start`](Self::start) would, without starting anything: the
    /// newest snapshot (or `initial()`), then the journal replayed through
    /// [`Logic::decode`] and [`Logic::apply`]. For replay tools and for checking what a
    /// restart would see; it takes no lock, so it may run while the pipeline appends.
    ///
    /// # Errors
    ///
    /// [`PipelineError::Snapshots`] or [`PipelineError::Recover`].
    pub fn recover<L: Logic>(
        &self,
        initial: impl FnOnce() -> L,
    ) -> Result<Recovered<L>, PipelineError> {
        let snapshots =
            SnapshotStore::open(self.dir.join("snapshots")).map_err(PipelineError::Snapshots)?;
        Ok(replay_into(
            &self.dir.join("journal"),
            &snapshots,
            initial,
            self.on_failure,
            self.recovery_progress.as_ref(),
        )?)
    }

    /// Recovers the state (newest snapshot, then the journal replayed through
    /// [`Logic::decode`] and [`Logic::apply`]), starts the stages and then the network.
    /// `initial` makes the state when there is no snapshot.
    ///
    /// # Errors
    ///
    /// [`PipelineError`]: recovery, the journal, the snapshot directory, placement, the
    /// rings or the reactor failed; nothing is left running.
    pub fn start<L: Logic>(self, initial: impl FnOnce() -> L) -> Result<Running<L>, PipelineError> {
        let started = Instant::now();
        let recovered = self.recover(initial)?;
        let journal_dir = self.dir.join("journal");
        let snapshots =
            SnapshotStore::open(self.dir.join("snapshots")).map_err(PipelineError::Snapshots)?;
        let recovery = Recovery {
            snapshot: recovered.snapshot,
            replayed: recovered.replayed,
            next_sequence: recovered.next_sequence,
            elapsed: started.elapsed(),
        };
        let (appender, _) = Appender::open(&journal_dir, self.journal.clone())?;
        if appender.next_sequence() != recovered.next_sequence {
            return Err(PipelineError::Inconsistent {
                journal: appender.next_sequence(),
                recovered: recovered.next_sequence,
            });
        }
        let (layout, plan) = self.placement()?;

        let epoch = Instant::now();
        let mut reactor_config = self.reactor.clone();
        if reactor_config.pin.is_none() {
            reactor_config.pin = plan[Role::Reactor as usize];
        }
        if layout == Layout::Inline {
            // Replies are made on the loop's own thread: through its write buffers they
            // leave in one send per connection per turn, instead of one send each.
            reactor_config.direct_egress = false;
        }
        let payload = reactor_config.max_frame.saturating_sub(HEADER_LEN);
        let reactor = Reactor::with_codec(reactor_config, WireCodec::<L::Command>::new(epoch))?;
        let addr = reactor.local_addr();
        let backend = reactor.backend();

        let mut out = single_producer(self.ring_size, Outbound::default)?.wait_strategy(self.wait);
        let egress_id = out.poller("egress").add()?;
        let (out_producer, mut out_ring) = out.build()?;
        let egress_poller = out_ring
            .take_poller(egress_id)
            .expect("the poller was added to this ring");

        let metrics = Metrics::new();
        let undelivered = metrics.counter(
            "pipeline_replies_undelivered",
            "Replies the output ring refused because the pipeline was stopping.",
        );
        let snapshots_taken =
            metrics.counter("pipeline_snapshots", "Snapshots saved by the logic stage.");
        let snapshot_failures = metrics.counter(
            "pipeline_snapshot_failures",
            "Snapshots the logic stage failed to save.",
        );
        let skipped = metrics.counter(
            "pipeline_commands_skipped",
            "Commands the logic stage skipped because their decode failed.",
        );

        let mut input =
            single_producer(self.ring_size, move || Inbound::<L::Command>::new(payload))?
                .wait_strategy(self.wait);
        let dead_letters: Option<Arc<dyn DeadLetterSink<Inbound<L::Command>>>> = match self
            .on_failure
        {
            OnFailure::DeadLetter => {
                let (appender, _) = Appender::open(
                    self.dir.join("dead-letters"),
                    JournalConfig::default().segment_size(1 << 20),
                )?;
                Some(Arc::new(JournalDeadLetters::new(
                    appender,
                    |e: &Inbound<L::Command>, out: &mut Vec<u8>| out.extend_from_slice(&e.payload),
                )))
            }
            _ => None,
        };
        let policy = || match (&self.on_failure, &dead_letters) {
            (OnFailure::Halt, _) => FailurePolicy::Halt,
            (_, Some(sink)) => FailurePolicy::dead_letter(Arc::clone(sink)),
            (_, None) => FailurePolicy::LogAndContinue,
        };
        fn pinned<E: Send + Sync + 'static>(
            b: StageBuilder<'_, E, Single>,
            core: Option<usize>,
        ) -> StageBuilder<'_, E, Single> {
            match core {
                Some(c) => b.pin(c),
                None => b,
            }
        }
        let journal = TimedJournal {
            inner: JournalStage::new(appender, |e: &Inbound<L::Command>, out: &mut Vec<u8>| {
                out.extend_from_slice(&e.payload)
            }),
            epoch,
            received: Vec::with_capacity(1024),
            latency: metrics.latency("pipeline_ingress_to_journaled"),
            command: std::marker::PhantomData,
        };
        let decode_latency = metrics.latency("pipeline_ingress_to_decoded");
        let (done, state_rx) = mpsc::channel();
        let snapshot_request = Arc::new(AtomicBool::new(false));
        let logic = LogicStage {
            logic: Some(recovered.state),
            egress: reactor.egress(out_producer),
            snapshots,
            snapshot_every: self.snapshot_every,
            snapshot_request: Arc::clone(&snapshot_request),
            base: recovered.next_sequence,
            done,
            epoch,
            latency: metrics.latency("pipeline_ingress_to_logic"),
            undelivered,
            snapshots_taken,
            snapshot_failures,
            skipped,
            backlog: (layout == Layout::Inline).then(Backlog::default),
        };
        let failure = Arc::new(Mutex::new(None));
        let mut inline = None;
        if layout != Layout::Parallel {
            // The ring halts on any error the fused stage returns: it handles `OnFailure`
            // for decode and apply itself, and a journal error must never be skipped.
            let fused = FusedStage {
                journal,
                logic,
                epoch,
                now: 0,
                decode_latency,
                pending: Vec::with_capacity(1024),
                on_failure: self.on_failure,
                dead_letters: dead_letters.clone(),
                failure: Arc::clone(&failure),
            };
            if layout == Layout::Inline {
                inline = Some((input.poller("logic").add()?, fused));
            } else {
                pinned(input.try_stage("logic", fused), plan[Role::Logic as usize]).add()?;
            }
        } else {
            let journal = pinned(
                input.try_stage("journal", journal),
                plan[Role::Journal as usize],
            )
            .add()?;
            let decode = pinned(
                input
                    .stage(
                        "decode",
                        DecodeStage::<L> {
                            epoch,
                            now: 0,
                            latency: decode_latency,
                            logic: std::marker::PhantomData,
                        },
                    )
                    .on_failure(policy()),
                plan[Role::Decode as usize],
            )
            .add()?;
            pinned(
                input
                    .stage("logic", logic)
                    .after(&[journal, decode])
                    .on_failure(policy()),
                plan[Role::Logic as usize],
            )
            .add()?;
        }
        let (in_producer, mut in_ring) = input.build()?;
        let inline = inline.map(|(id, fused)| {
            let poller = in_ring
                .take_poller(id)
                .expect("the poller was added to this ring");
            (poller, fused)
        });
        let (in_ring, out_ring) = (Arc::new(in_ring), Arc::new(out_ring));
        let r = Arc::clone(&in_ring);
        metrics.watch_ring("input", move || r.telemetry());
        let r = Arc::clone(&out_ring);
        metrics.watch_ring("output", move || r.telemetry());
        let reactor = match inline {
            Some((poller, fused)) => {
                let driver = InlineDriver {
                    poller,
                    fused,
                    ring: Arc::clone(&in_ring),
                    halted: false,
                };
                reactor.spawn_inline(in_producer, Some(egress_poller), driver)?
            }
            None => reactor.spawn(in_producer, Some(egress_poller))?,
        };
        Ok(Running {
            reactor: Some(reactor),
            state: state_rx,
            metrics,
            addr,
            backend,
            plan,
            layout,
            failure,
            recovery,
            snapshot_request,
            input: in_ring,
            output: out_ring,
            stop_timeout: self.stop_timeout,
        })
    }
}

/// A decoded journal record on its way from the reader thread to the applying thread.
#[derive(Default)]
struct Replayed<C> {
    sequence: u64,
    /// The decode panicked, with this message (boxed: rare, and it keeps the slot small).
    failure: Option<Box<str>>,
    command: C,
}

/// Slots of the ring between the replay's reader and applying threads: about 2 MiB of
/// decoded commands, between 1,024 and 32,768 slots (a power of two).
fn replay_ring<C>() -> usize {
    let slot = std::mem::size_of::<Replayed<C>>().max(1);
    ((2 << 20) / slot)
        .clamp(1024, 32 * 1024)
        .next_power_of_two()
        .min(32 * 1024)
}

/// The message of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// What a replay does with a record whose decode or apply panicked: the live policy
/// skipped it (or dead-lettered it, which needs no second letter), so replay skips it too;
/// under `Halt` the live pipeline stopped there, and so does recovery, with an error.
fn replay_failure(policy: OnFailure, sequence: u64, failure: String) -> Result<(), RecoverError> {
    match policy {
        OnFailure::Halt => Err(RecoverError::Failed { sequence, failure }),
        OnFailure::Skip | OnFailure::DeadLetter => {
            tracing::warn!(sequence, %failure, "replay skipped a record, as the live pipeline did");
            Ok(())
        }
    }
}

/// Decodes one journaled payload, catching a panic (as its message).
fn decode_caught<L: Logic>(payload: &[u8]) -> Result<L::Command, String> {
    catch_unwind(|| L::decode(payload)).map_err(|p| panic_text(&*p))
}

/// Applies one command during replay, catching a panic (as its message).
fn apply_caught<L: Logic>(
    state: &mut L,
    command: &L::Command,
    reply: &mut Reply<'_>,
) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| state.apply(command, reply))).map_err(|p| panic_text(&*p))
}

/// Recovery: the newest snapshot (or `initial()`), then every later journal record,
/// decoded and applied.
///
/// Replay is pipelined like live traffic: a reader thread reads each record (checking its
/// CRC), decodes it with [`Logic::decode`] and publishes the command into a ring; this
/// thread applies the commands in order. Reading and decoding overlap applying, so a
/// replay runs at the speed of the slower half instead of the sum of both. A process
/// allowed only one core replays on this thread alone. A record whose decode or apply
/// panics is handled as `policy` handled it live. `hook` hears how far it has got.
fn replay_into<L: Logic>(
    journal: &Path,
    snapshots: &SnapshotStore,
    initial: impl FnOnce() -> L,
    policy: OnFailure,
    hook: Option<&ProgressHook>,
) -> Result<Recovered<L>, RecoverError> {
    let started = Instant::now();
    let (state, from) = load_latest(snapshots, initial)?;
    let mut progress = Progress {
        hook,
        started,
        last: started,
        snapshot: from,
        end_sequence: from.unwrap_or(0),
    };
    if hook.is_some() && journal.exists() {
        // Only the end of the last segment is read.
        progress.end_sequence = Reader::open(journal)?.seek_end()?;
    }
    let recovered = replay_records(journal, state, from, policy, &mut progress)?;
    progress.report(recovered.replayed, recovered.next_sequence, true);
    Ok(recovered)
}

/// Reports recovery's progress to a [`ProgressHook`], at most ten times a second.
struct Progress<'a> {
    hook: Option<&'a ProgressHook>,
    started: Instant,
    last: Instant,
    snapshot: Option<u64>,
    end_sequence: u64,
}

impl Progress<'_> {
    /// Records between looks at the clock.
    const EVERY: u64 = 1 << 16;
    const INTERVAL: Duration = Duration::from_millis(100);

    /// Called after each record: reports when a tenth of a second has passed.
    #[inline]
    fn tick(&mut self, replayed: u64, next_sequence: u64) {
        if replayed % Self::EVERY == 0 && self.hook.is_some() {
            self.maybe_report(replayed, next_sequence);
        }
    }

    #[cold]
    fn maybe_report(&mut self, replayed: u64, next_sequence: u64) {
        if self.last.elapsed() >= Self::INTERVAL {
            self.report(replayed, next_sequence, false);
            self.last = Instant::now();
        }
    }

    fn report(&self, replayed: u64, next_sequence: u64, done: bool) {
        if let Some(hook) = self.hook {
            (hook.0)(&RecoveryProgress {
                snapshot: self.snapshot,
                replayed,
                next_sequence,
                end_sequence: self.end_sequence.max(next_sequence),
                elapsed: self.started.elapsed(),
                done,
            });
        }
    }
}

/// The journal part of [`replay_into`]: every record from the snapshot's sequence on.
fn replay_records<L: Logic>(
    journal: &Path,
    mut state: L,
    from: Option<u64>,
    policy: OnFailure,
    progress: &mut Progress<'_>,
) -> Result<Recovered<L>, RecoverError> {
    let mut next_sequence = from.unwrap_or(0);
    let mut replayed = 0;
    if !journal.exists() {
        return Ok(Recovered {
            state,
            next_sequence,
            snapshot: from,
            replayed,
        });
    }
    let mut reader = Reader::open(journal)?;
    reader.seek(next_sequence)?;
    let mut reply = Reply::replay();
    if peregrine_ring::affinity::allowed_cores().len() < 2 {
        // One core: a second thread would only take turns with this one.
        while let Some(record) = reader.next()? {
            let outcome = decode_caught::<L>(record.payload())
                .and_then(|command| apply_caught(&mut state, &command, &mut reply));
            if let Err(failure) = outcome {
                replay_failure(policy, record.sequence(), failure)?;
            }
            next_sequence = record.sequence() + 1;
            replayed += 1;
            progress.tick(replayed, next_sequence);
        }
        return Ok(Recovered {
            state,
            next_sequence,
            snapshot: from,
            replayed,
        });
    }
    let build = || -> Result<_, BuildError> {
        // A deep ring (about 2 MiB of decoded commands) lets the reader run far enough ahead
        // that the two threads work on different cache lines; with 1,024 slots they chase
        // each other and replay ran at 0.35x of the raw scan instead of 0.53x (engine bench).
        let mut b = single_producer(replay_ring::<L::Command>(), Replayed::<L::Command>::default)?
            .wait_strategy(WaitStrategy::phased());
        let id = b.poller("replay").add()?;
        let (producer, mut ring) = b.build()?;
        let poller = ring
            .take_poller(id)
            .expect("the poller was added to this ring");
        Ok((producer, ring, poller))
    };
    // A power-of-two ring with one poller always builds.
    let (mut producer, _ring, mut poller) = build().expect("a power-of-two ring with one poller");
    std::thread::scope(|scope| {
        let read = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn_scoped(scope, move || -> Result<(), ReadError> {
                // Records go over in batches: one cursor update (one cache-line handover)
                // per batch, not per record.
                const BATCH: usize = 64;
                let mut pending: Vec<(u64, Result<L::Command, String>)> = Vec::with_capacity(BATCH);
                loop {
                    while pending.len() < BATCH {
                        let Some(record) = reader.next()? else { break };
                        let decoded = decode_caught::<L>(record.payload());
                        pending.push((record.sequence(), decoded));
                    }
                    let n = pending.len();
                    if n == 0 {
                        break;
                    }
                    let mut items = pending.drain(..);
                    let published = producer.publish_batch(n, |slot, _| {
                        let (sequence, decoded) = items.next().expect("one item per slot");
                        slot.sequence = sequence;
                        match decoded {
                            Ok(command) => {
                                slot.command = command;
                                slot.failure = None;
                            }
                            Err(failure) => slot.failure = Some(failure.into_boxed_str()),
                        }
                    });
                    drop(items);
                    if published.is_err() || n < BATCH {
                        // The applying side stopped, or the journal ended.
                        break;
                    }
                }
                Ok(())
                // Dropping the producer closes the ring: the poller drains, then stops.
            })
            .map_err(RecoverError::Spawn)?;
        let mut failed = None;
        loop {
            let polled = poller.poll_wait(|r: &Replayed<L::Command>, _, _| {
                if failed.is_some() {
                    return;
                }
                let outcome = match &r.failure {
                    Some(f) => Err(f.to_string()),
                    None => apply_caught(&mut state, &r.command, &mut reply),
                };
                if let Err(failure) = outcome {
                    if let Err(e) = replay_failure(policy, r.sequence, failure) {
                        failed = Some(e);
                        return;
                    }
                }
                next_sequence = r.sequence + 1;
                replayed += 1;
                progress.tick(replayed, next_sequence);
            });
            if failed.is_some() {
                // Stop the reader: dropping the poller halts the ring under it.
                drop(poller);
                break;
            }
            if matches!(polled, PollState::Drained | PollState::Halted) {
                break;
            }
        }
        let read = match read.join() {
            Ok(result) => result.map_err(RecoverError::Read),
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match failed {
            Some(e) => Err(e),
            None => read,
        }
    })?;
    Ok(Recovered {
        state,
        next_sequence,
        snapshot: from,
        replayed,
    })
}

/// How far recovery has got, reported to [`Pipeline::on_recovery_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryProgress {
    /// The snapshot loaded, by its next sequence.
    pub snapshot: Option<u64>,
    /// Journal records replayed so far.
    pub replayed: u64,
    /// The sequence of the next record to replay.
    pub next_sequence: u64,
    /// Where the journal ended when recovery began (or `next_sequence`, if the journal has
    /// grown since): the replay is done when `next_sequence` reaches it.
    pub end_sequence: u64,
    /// Time since recovery began, loading the snapshot included.
    pub elapsed: Duration,
    /// The replay has ended: this is the last report.
    pub done: bool,
}

/// What recovery did when a pipeline started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The snapshot loaded, by its next sequence.
    pub snapshot: Option<u64>,
    /// Journal records replayed after it.
    pub replayed: u64,
    /// The journal sequence the first live command gets.
    pub next_sequence: u64,
    /// Time spent loading and replaying.
    pub elapsed: Duration,
}

/// A started pipeline. Dropping it stops it as [`stop`](Self::stop) does, discarding the
/// state.
pub struct Running<L: Logic> {
    reactor: Option<ReactorHandle>,
    state: mpsc::Receiver<L>,
    metrics: Metrics,
    addr: SocketAddr,
    backend: BackendKind,
    plan: [Option<usize>; 4],
    recovery: Recovery,
    snapshot_request: Arc<AtomicBool>,
    input: Arc<Ring<Inbound<L::Command>, Single>>,
    output: Arc<Ring<Outbound, Single>>,
    stop_timeout: Duration,
    layout: Layout,
    /// The failure the fused stage halted on, under the stage it belongs to.
    failure: Arc<Mutex<Option<(String, String)>>>,
}

impl<L: Logic> fmt::Debug for Running<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("backend", &self.backend)
            .field("plan", &self.plan)
            .field("layout", &self.layout)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

/// What [`Running::stop`] hands back.
#[derive(Debug)]
pub struct Stopped<L> {
    /// The state after the last command applied.
    pub state: L,
    /// The pipeline's metrics, final (render them, or print [`Metrics::summary`]).
    pub metrics: Metrics,
    /// The stage failure that halted the pipeline, if one did: `(stage, failure)`.
    pub failure: Option<(String, String)>,
}

impl<L: Logic> Running<L> {
    /// The address the pipeline listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The reactor's backend (io_uring, or mio where io_uring is unavailable).
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The cores of the reactor, journal, decode and logic threads (`None`: left to the
    /// scheduler, or no thread of its own in the [`Layout::Fused`] layout).
    pub fn plan(&self) -> [Option<usize>; 4] {
        self.plan
    }

    /// The layout the stages run in ([`Layout::Parallel`] or [`Layout::Fused`]).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// What recovery did before the network opened.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The pipeline's metrics: per-ring telemetry, the ingress-to-logic latency, counters.
    /// Serve them with [`Metrics::serve`].
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The input ring's telemetry: its journal, decode and logic stages, or the one
    /// `logic` stage of the [`Layout::Fused`] layout.
    pub fn input_telemetry(&self) -> Telemetry {
        self.input.telemetry()
    }

    /// The stage failure that halted the pipeline, if one did: `(stage, failure)`.
    /// A halted pipeline applies nothing more; stop it and restart from the journal.
    pub fn failure(&self) -> Option<(String, String)> {
        self.stage_failure()
    }

    fn stage_failure(&self) -> Option<(String, String)> {
        let fused = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        fused.or_else(|| self.input.failure())
    }

    /// Asks the logic stage to save a snapshot at the end of its current batch (counted
    /// in `pipeline_snapshots` once saved).
    pub fn request_snapshot(&self) {
        self.snapshot_request.store(true, Ordering::Release);
    }

    /// Stops the network, lets every command received so far pass the journal and the
    /// logic (drain), makes the journal durable, and hands back the state.
    ///
    /// # Errors
    ///
    /// [`PipelineError::Reactor`] if the event loop had failed;
    /// [`PipelineError::StopTimeout`] if the logic stage does not finish in time.
    pub fn stop(mut self) -> Result<Stopped<L>, PipelineError> {
        let reactor = self.reactor.take();
        let stopped = reactor.map(ReactorHandle::shutdown).unwrap_or(Ok(()));
        let state = self
            .state
            .recv_timeout(self.stop_timeout)
            .map_err(|_| PipelineError::StopTimeout(self.stop_timeout))?;
        stopped?;
        self.input.join();
        self.output.halt();
        Ok(Stopped {
            state,
            metrics: self.metrics.clone(),
            failure: self.stage_failure(),
        })
    }
}

impl<L: Logic> Drop for Running<L> {
    fn drop(&mut self) {
        if let Some(reactor) = self.reactor.take() {
            if let Err(e) = reactor.shutdown() {
                tracing::error!(error = %e, "the pipeline's event loop failed");
            }
        }
    }
}

/// The slot of the input ring: a frame as received, and its decoded command.
struct Inbound<C> {
    conn: ConnId,
    /// When the reactor decoded the frame (nanoseconds since the pipeline's epoch).
    received: u64,
    payload: Vec<u8>,
    /// Written by the decode stage only, read by the logic stage only (see the SAFETY
    /// comments at both places).
    decoded: UnsafeCell<Decoded<C>>,
}

/// A command tagged with the ring sequence it was decoded for, plus one (0: never
/// decoded), so the logic stage can tell a command whose decode failed (and was skipped
/// by the failure policy) from a stale one left in the slot by an earlier lap.
#[derive(Default)]
struct Decoded<C> {
    sequence: u64,
    command: C,
}

impl<C: Default> Inbound<C> {
    fn new(payload: usize) -> Self {
        Self {
            conn: ConnId::NONE,
            received: 0,
            payload: Vec::with_capacity(payload),
            decoded: UnsafeCell::new(Decoded::default()),
        }
    }
}

// SAFETY: the plain fields are only written through `&mut Inbound` (the producer's claim,
// exclusive by the ring's protocol) and read through `&Inbound`. `decoded` is written
// through the shared reference by exactly one thread, the decode stage, and read only by
// the logic stage after the ring's barrier orders that write before the read (the logic
// stage is gated on the decode stage, whose sequence is published with Release and
// acquired by the logic stage's barrier); the next write to the same slot happens only
// after the producer has observed the logic stage past it. No type outside this module
// can reach `decoded`. `C: Send + Sync` lets the command move from the decode thread to
// the logic thread and be read there. The loom model
// `a_side_cell_written_by_one_stage_is_read_by_its_dependent` (loom-tests) checks this
// protocol, and fails when the barrier or the gating is broken.
unsafe impl<C: Send + Sync> Sync for Inbound<C> {}

/// The slot of the output ring: one reply frame's payload and its connection.
#[derive(Debug, Default)]
struct Outbound {
    conn: ConnId,
    bytes: Vec<u8>,
}

/// Length-prefixed frames into [`Inbound`] slots; [`Outbound`] replies as frames.
struct WireCodec<C> {
    epoch: Instant,
    command: std::marker::PhantomData<fn() -> C>,
}

impl<C> WireCodec<C> {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            command: std::marker::PhantomData,
        }
    }
}

impl<C: Default + Send + Sync + 'static> Codec for WireCodec<C> {
    type In = Inbound<C>;
    type Out = Outbound;

    #[inline]
    fn frame_len(&mut self, buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
        LengthPrefixed.frame_len(buf, max_frame)
    }

    #[inline]
    fn decode(&mut self, conn: ConnId, frame: &[u8], slot: &mut Inbound<C>) {
        slot.conn = conn;
        slot.received = self.epoch.elapsed().as_nanos() as u64;
        slot.payload.clear();
        slot.payload.extend_from_slice(&frame[HEADER_LEN..]);
    }

    #[inline]
    fn destination(&self, event: &Outbound) -> ConnId {
        event.conn
    }

    #[inline]
    fn encode(&mut self, event: &Outbound, out: &mut Vec<u8>) {
        LengthPrefixed::write_frame(&event.bytes, out);
    }

    /// Replies are written straight to idle connections from the logic thread.
    fn egress_encoder(&self) -> Option<(Self, Outbound)> {
        Some((WireCodec::new(self.epoch), Outbound::default()))
    }
}

/// The decode stage: decodes each frame into its slot's `decoded`, timing each from its
/// arrival (one clock read per batch).
struct DecodeStage<L> {
    epoch: Instant,
    /// Nanoseconds since the epoch at the start of the current batch.
    now: u64,
    latency: LatencyRecorder,
    logic: std::marker::PhantomData<fn() -> L>,
}

impl<L: Logic> EventHandler<Inbound<L::Command>> for DecodeStage<L> {
    fn on_batch_start(&mut self, _batch_size: u64, _queue_depth: u64) {
        self.now = self.epoch.elapsed().as_nanos() as u64;
    }

    fn on_event(&mut self, e: &Inbound<L::Command>, sequence: u64, _end_of_batch: bool) {
        self.latency
            .record_nanos(self.now.saturating_sub(e.received));
        let command = L::decode(&e.payload);
        // SAFETY: this is the only stage that writes `decoded`, and it runs on one thread;
        // the journal never touches it; the logic stage reads it only after acquiring this
        // stage's sequence past `sequence` (it is gated on this stage), and the producer
        // reuses the slot only after the logic stage has passed it. So no other access to
        // this slot's `decoded` overlaps this write.
        unsafe {
            *e.decoded.get() = Decoded {
                sequence: sequence + 1,
                command,
            }
        };
    }
}

/// The journal stage, timing each command from its arrival to its batch's commit.
struct TimedJournal<C, J> {
    inner: J,
    epoch: Instant,
    /// Arrival times of the commands of the current batch.
    received: Vec<u64>,
    latency: LatencyRecorder,
    command: std::marker::PhantomData<fn() -> C>,
}

impl<C: 'static, J: TryEventHandler<Inbound<C>>> TryEventHandler<Inbound<C>>
    for TimedJournal<C, J>
{
    type Error = J::Error;

    fn on_event(
        &mut self,
        e: &Inbound<C>,
        sequence: u64,
        end_of_batch: bool,
    ) -> Result<(), J::Error> {
        self.received.push(e.received);
        let result = self.inner.on_event(e, sequence, end_of_batch);
        if end_of_batch {
            let now = self.epoch.elapsed().as_nanos() as u64;
            for &r in &self.received {
                self.latency.record_nanos(now.saturating_sub(r));
            }
            self.received.clear();
        }
        result
    }

    fn on_shutdown(&mut self) {
        self.inner.on_shutdown();
    }
}

/// The business-logic stage: applies each decoded command, takes snapshots, and hands
/// the state back when the ring drains.
struct LogicStage<L: Logic> {
    logic: Option<L>,
    egress: Egress<Outbound, Single>,
    snapshots: SnapshotStore,
    snapshot_every: u64,
    snapshot_request: Arc<AtomicBool>,
    /// Journal sequence of ring sequence 0 (the journal continues across restarts).
    base: u64,
    done: mpsc::Sender<L>,
    epoch: Instant,
    latency: LatencyRecorder,
    undelivered: Counter,
    snapshots_taken: Counter,
    snapshot_failures: Counter,
    skipped: Counter,
    /// `Some` in the [`Layout::Inline`] layout; see [`Reply`].
    backlog: Option<Backlog<Outbound>>,
}

impl<L: Logic> LogicStage<L> {
    /// Moves replies held back in the [`Layout::Inline`] layout into the egress ring, in
    /// order, as far as it has room; true when none is left. Replies the ring will never
    /// take (it halted, or `give_up`: nothing drains it any more) count as undelivered.
    fn flush_backlog(&mut self, give_up: bool) -> bool {
        let Some(backlog) = self.backlog.as_mut() else {
            return true;
        };
        match backlog.flush(&mut self.egress) {
            Ok(true) => true,
            Ok(false) if !give_up => false,
            Ok(false) => {
                self.undelivered.add(backlog.clear() as u64);
                true
            }
            Err(dropped) => {
                self.undelivered.add(dropped as u64);
                true
            }
        }
    }

    fn snapshot(&mut self, next_sequence: u64) {
        let Some(logic) = &self.logic else { return };
        match self.snapshots.save(next_sequence, logic) {
            Ok(_) => self.snapshots_taken.add(1),
            Err(e) => {
                self.snapshot_failures.add(1);
                tracing::error!(error = %e, next_sequence, "snapshot failed");
            }
        }
    }
}

impl<L: Logic> LogicStage<L> {
    /// Applies the command at ring `sequence` from `conn` (`None`: its decode failed and
    /// its policy skipped it), then saves the snapshots that are due.
    fn apply_one(
        &mut self,
        conn: ConnId,
        received: u64,
        sequence: u64,
        command: Option<&L::Command>,
        end_of_batch: bool,
    ) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.latency.record_nanos(now.saturating_sub(received));
        let applied = self.base + sequence + 1;
        match command {
            Some(command) => {
                let mut reply = Reply {
                    egress: Some(&mut self.egress),
                    origin: conn,
                    undelivered: Some(&self.undelivered),
                    backlog: self.backlog.as_mut(),
                };
                if let Some(logic) = self.logic.as_mut() {
                    logic.apply(command, &mut reply);
                }
            }
            None => self.skipped.add(1),
        }
        if self.snapshot_every > 0 && applied % self.snapshot_every == 0 {
            self.snapshot(applied);
        }
        if end_of_batch && self.snapshot_request.swap(false, Ordering::AcqRel) {
            self.snapshot(applied);
        }
    }
}

impl<L: Logic> EventHandler<Inbound<L::Command>> for LogicStage<L> {
    fn on_event(&mut self, e: &Inbound<L::Command>, sequence: u64, end_of_batch: bool) {
        // SAFETY: the decode stage's write of this slot's `decoded` happened before this
        // read (this stage is gated on the decode stage and acquired its sequence past
        // `sequence`), and the decode stage writes this slot again only after the
        // producer reuses it, which waits for this stage to pass `sequence`. So nothing
        // writes `decoded` while this shared borrow lives.
        let decoded = unsafe { &*e.decoded.get() };
        // A stale sequence: the decode of this command failed and its policy skipped it.
        let command = (decoded.sequence == sequence + 1).then_some(&decoded.command);
        self.apply_one(e.conn, e.received, sequence, command, end_of_batch);
    }

    fn on_shutdown(&mut self) {
        if let Some(logic) = self.logic.take() {
            // The receiver is gone only if `Running` was dropped without `stop`.
            let _ = self.done.send(logic);
        }
    }
}

/// Why the fused stage halted the ring.
#[derive(Debug, Error)]
enum FusedError {
    /// The journal refused the batch; nothing of it was applied.
    #[error("{0}")]
    Journal(#[from] AppendError),
    /// Decoding or applying a command failed under [`OnFailure::Halt`].
    #[error("{stage} failed at sequence {sequence}: {failure}")]
    Halted {
        stage: &'static str,
        sequence: u64,
        failure: String,
    },
}

/// A command of the current batch, decoded, waiting for the batch's journal append.
struct Pending<C> {
    sequence: u64,
    conn: ConnId,
    received: u64,
    /// The command, or the message of the panic that ended its decode.
    command: Result<C, String>,
    /// The frame's payload, kept only where failures are dead-lettered.
    payload: Vec<u8>,
}

/// The [`Layout::Fused`] stage: journals each batch, then decodes and applies its
/// commands, on one thread.
///
/// Commands are decoded as they arrive and held until the batch's end, where the journal
/// appends the batch (and syncs it as its durability says) before any of them is applied,
/// so nothing is answered before the journal holds it, as in the parallel layout. Decode
/// and apply failures follow the pipeline's [`OnFailure`] here, per command and in order,
/// under the stage names the parallel layout reports (`decode`, `logic`); under
/// [`OnFailure::Halt`], and on any journal error, the stage returns an error and the
/// ring (whose policy for this stage is `Halt`) stops.
struct FusedStage<L: Logic, J> {
    journal: J,
    logic: LogicStage<L>,
    epoch: Instant,
    /// Nanoseconds since the epoch at the start of the current batch.
    now: u64,
    decode_latency: LatencyRecorder,
    pending: Vec<Pending<L::Command>>,
    on_failure: OnFailure,
    dead_letters: Option<Arc<dyn DeadLetterSink<Inbound<L::Command>>>>,
    /// Where the failure that halts the stage is reported, under its own stage's name.
    failure: Arc<Mutex<Option<(String, String)>>>,
}

impl<L: Logic, J> FusedStage<L, J> {
    /// Records `failure` of `stage` as the one that halted the pipeline (the first wins).
    fn report(&self, stage: &str, failure: String) {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| (stage.to_string(), failure));
    }

    /// Reports `failure` and returns the error that halts the ring.
    fn halt(&self, stage: &'static str, sequence: u64, failure: String) -> FusedError {
        self.report(stage, failure.clone());
        FusedError::Halted {
            stage,
            sequence,
            failure,
        }
    }

    /// Applies `policy` to a command whose decode or apply panicked with `message`:
    /// an error to halt on, or `Ok` once it is logged (and dead-lettered).
    fn failed(
        &self,
        stage: &'static str,
        p: &Pending<L::Command>,
        message: String,
    ) -> Result<(), FusedError> {
        let failure = Failure::Panic(message);
        match self.on_failure {
            OnFailure::Halt => Err(self.halt(stage, p.sequence, failure.to_string())),
            OnFailure::Skip => {
                tracing::error!(stage, sequence = p.sequence, %failure, "command skipped");
                Ok(())
            }
            OnFailure::DeadLetter => {
                tracing::error!(stage, sequence = p.sequence, %failure, "command dead-lettered");
                if let Some(sink) = &self.dead_letters {
                    let mut event = Inbound::<L::Command>::new(0);
                    event.conn = p.conn;
                    event.received = p.received;
                    event.payload.extend_from_slice(&p.payload);
                    sink.accept(stage, p.sequence, &event, &failure);
                }
                Ok(())
            }
        }
    }

    /// Applies the batch's commands in order (the journal holds them all).
    fn apply_pending(&mut self) -> Result<(), FusedError> {
        let mut pending = std::mem::take(&mut self.pending);
        let last = pending.len().saturating_sub(1);
        let mut result = Ok(());
        for (i, p) in pending.iter().enumerate() {
            let end_of_batch = i == last;
            let failure = match &p.command {
                Ok(command) => catch_unwind(AssertUnwindSafe(|| {
                    let command = Some(command);
                    self.logic
                        .apply_one(p.conn, p.received, p.sequence, command, end_of_batch)
                }))
                .err()
                .map(|panic| ("logic", panic_text(&*panic))),
                Err(message) => Some(("decode", message.clone())),
            };
            let Some((stage, message)) = failure else {
                continue;
            };
            if let Err(e) = self.failed(stage, p, message) {
                result = Err(e);
                break;
            }
            if stage == "decode" {
                // Skipped: counted, and snapshots fall due as in the parallel layout.
                self.logic
                    .apply_one(p.conn, p.received, p.sequence, None, end_of_batch);
            }
        }
        pending.clear();
        self.pending = pending;
        result
    }
}

impl<L: Logic, J> TryEventHandler<Inbound<L::Command>> for FusedStage<L, J>
where
    J: TryEventHandler<Inbound<L::Command>, Error = AppendError>,
{
    type Error = FusedError;

    fn on_batch_start(&mut self, _batch_size: u64, _queue_depth: u64) {
        self.now = self.epoch.elapsed().as_nanos() as u64;
    }

    fn on_event(
        &mut self,
        e: &Inbound<L::Command>,
        sequence: u64,
        end_of_batch: bool,
    ) -> Result<(), FusedError> {
        self.decode_latency
            .record_nanos(self.now.saturating_sub(e.received));
        let command = decode_caught::<L>(&e.payload);
        let payload = match self.on_failure {
            OnFailure::DeadLetter => e.payload.clone(),
            _ => Vec::new(),
        };
        self.pending.push(Pending {
            sequence,
            conn: e.conn,
            received: e.received,
            command,
            payload,
        });
        if let Err(error) = self.journal.on_event(e, sequence, end_of_batch) {
            // Nothing of the batch is applied: the journal does not hold it.
            self.pending.clear();
            self.report("journal", format!("error: {error}"));
            return Err(FusedError::Journal(error));
        }
        if end_of_batch {
            self.apply_pending()?;
        }
        Ok(())
    }

    fn on_shutdown(&mut self) {
        self.journal.on_shutdown();
        self.logic.on_shutdown();
    }
}

/// The [`Layout::Inline`] layout: the [`FusedStage`] run by the event loop between its
/// reads, through a poller of the input ring.
struct InlineDriver<L: Logic, J> {
    poller: Poller<Inbound<L::Command>, Single>,
    fused: FusedStage<L, J>,
    ring: Arc<Ring<Inbound<L::Command>, Single>>,
    /// The stage failed and halted the ring; nothing more is handled.
    halted: bool,
}

impl<L: Logic, J> InlineDriver<L, J>
where
    J: TryEventHandler<Inbound<L::Command>, Error = AppendError>,
{
    /// Handles what the loop has published, one poll; true if there were events.
    fn handle(&mut self) -> bool {
        let fused = &mut self.fused;
        let halted = &mut self.halted;
        let mut batch_start = true;
        let state = self.poller.poll(|e, sequence, end_of_batch| {
            if *halted {
                return;
            }
            // As a ring stage does: a panic outside the stage's own catches, or an error
            // (a journal failure, or `OnFailure::Halt`), halts the pipeline.
            let handled = catch_unwind(AssertUnwindSafe(|| {
                if batch_start {
                    fused.on_batch_start(0, 0);
                }
                fused.on_event(e, sequence, end_of_batch)
            }));
            batch_start = end_of_batch;
            match handled {
                Ok(Ok(())) => {}
                Ok(Err(_)) => *halted = true,
                Err(panic) => {
                    fused.report("logic", Failure::Panic(panic_text(&*panic)).to_string());
                    *halted = true;
                }
            }
        });
        if self.halted {
            self.ring.halt();
        }
        matches!(state, PollState::Events(_)) && !self.halted
    }
}

impl<L: Logic, J> peregrine_reactor::Inline for InlineDriver<L, J>
where
    J: TryEventHandler<Inbound<L::Command>, Error = AppendError>,
{
    fn turn(&mut self) -> bool {
        if self.halted {
            return false;
        }
        // Replies held back come first; until they are out, no new command is applied
        // (its replies would overtake them), and the ingress ring fills behind them.
        if !self.fused.logic.flush_backlog(false) {
            return true;
        }
        self.handle()
    }

    fn finish(&mut self) {
        // The connections are closed and the producer dropped: apply what the journal
        // will hold anyway, as the other layouts' stages drain; replies go nowhere.
        while !self.halted {
            self.fused.logic.flush_backlog(true);
            if !self.handle() {
                break;
            }
        }
        self.fused.logic.flush_backlog(true);
        self.fused.on_shutdown();
    }
}
