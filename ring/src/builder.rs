//! [`RingBuilder`]: the stage graph, checked before any thread starts; and [`Ring`], the
//! handle that observes and stops it.
//!
//! A stage may only depend on stages added before it, so a cycle cannot be written; a
//! dependency on another ring's stage, a duplicate name, an exclusive stage that is not
//! alone with its events, or a graph with no consumer is an `Err` from the builder.

use std::sync::atomic::{AtomicU64 as IdCounter, Ordering as IdOrdering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::buffer::Slots;
use crate::core::{lock, Control, Core, StageInfo};
use crate::error::{BuildError, ShutdownError, StageProgress};
use crate::failure::FailurePolicy;
use crate::handler::{EventHandler, ExclusiveHandler, TryEventHandler};
use crate::poller::Poller;
use crate::producer::{Producer, WhenFull};
use crate::reader::Reader;
use crate::sequence::Sequence;
use crate::sequencer::{Multi, Sequencer, Single, Stamped};
use crate::stage::{Exclusive, Invoke, Plain, Shared, StageContext};
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, CachePadded, Ordering};
use crate::telemetry::{StageStats, Telemetry};
use crate::wait::{Notifier, WaitStrategy};

/// Identifies a stage within one builder's graph; pass it to
/// [`StageBuilder::after`] to gate a later stage on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StageId {
    ring: u64,
    index: usize,
}

/// What [`RingBuilder::build`] returns: the first producer and the ring's handle.
pub type Built<E, S> = (Producer<E, S>, Ring<E, S>);

/// Starts one stage thread's loop.
type Launch<E, S> = Box<dyn FnOnce(Reader<E, S>, StageContext<E>) + Send>;
/// Starts one pool worker's loop.
type WorkerLaunch<E, S> =
    Box<dyn FnOnce(Reader<E, S>, Arc<CachePadded<AtomicU64>>, StageContext<E>) + Send>;

enum Kind<E, S: Sequencer> {
    Thread {
        launch: Launch<E, S>,
        exclusive: bool,
    },
    Pool(Vec<WorkerLaunch<E, S>>),
    Poller,
}

impl<E, S: Sequencer> Kind<E, S> {
    /// Threads this stage runs.
    fn threads(&self) -> usize {
        match self {
            Kind::Thread { .. } => 1,
            Kind::Pool(w) => w.len(),
            Kind::Poller => 0,
        }
    }
}

struct Spec<E, S: Sequencer> {
    name: String,
    deps: Vec<usize>,
    kind: Kind<E, S>,
    cores: Vec<usize>,
    max_batch: u64,
    stream_backoff: Duration,
    policy: FailurePolicy<E>,
}

impl<E, S: Sequencer> Spec<E, S> {
    /// Names of the sequences (threads, workers, poller) this stage owns.
    fn member_names(&self) -> Vec<String> {
        match &self.kind {
            Kind::Pool(w) => (0..w.len()).map(|i| format!("{}-{i}", self.name)).collect(),
            _ => vec![self.name.clone()],
        }
    }
}

/// The default [`StageBuilder::stream_backoff`]: about four cache-line transfers between
/// cores, long enough for a producer to fill several lines of small events ahead of the
/// stage.
pub const DEFAULT_STREAM_BACKOFF: Duration = Duration::from_nanos(500);

/// Builds a ring: capacity, wait strategy, and a graph of stages.
///
/// ```
/// use peregrine_ring::{single_producer, WaitStrategy};
///
/// let mut builder = single_producer(1024, || 0u64)?.wait_strategy(WaitStrategy::blocking());
/// let first = builder.stage("first", |_: &u64, _seq: u64, _end: bool| {}).add()?;
/// builder.stage("second", |_: &u64, _seq: u64, _end: bool| {}).after(&[first]).add()?;
/// let (mut producer, _ring) = builder.build()?;
/// producer.publish(|e| *e = 42)?;
/// drop(producer); // drains both stages and joins their threads
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RingBuilder<E, S: Sequencer> {
    id: u64,
    slots: Slots<E, S::Stamp>,
    wait: WaitStrategy,
    when_full: WhenFull,
    allow_oversubscription: bool,
    specs: Vec<Spec<E, S>>,
    sequencer: std::marker::PhantomData<S>,
}

/// A ring with one producer (no atomic read-modify-write on the publish path).
///
/// # Errors
///
/// [`BuildError::CapacityNotPowerOfTwo`] unless `capacity` is a power of two.
pub fn single_producer<E: Send + Sync + 'static>(
    capacity: usize,
    factory: impl FnMut() -> E,
) -> Result<RingBuilder<E, Single>, BuildError> {
    RingBuilder::new(capacity, factory)
}

/// A single-producer ring tuned for the hand-off of one event at a time: each slot carries
/// its own publication stamp, in the event's cache line.
///
/// A stage (or [`Poller`](crate::Poller)) gated only on the producer and waiting for the
/// next event waits on that event's slot: when the producer publishes, one cache-line
/// transfer brings the news and the event together, where a [`single_producer`] ring's
/// reader learns of the event from the cursor (a line of its own) and only then fetches
/// the event's line, two transfers in turn. A reader working through a backlog reads the
/// cursor, as in any ring. Everything else (claims, batches, gating, wait strategies,
/// failure policies) is the same.
///
/// The price is throughput: a stamp of 8 bytes in every slot, and slots 16-byte aligned (a
/// `u64` event takes 16 bytes, not 8; a 64-byte event 80), and one more store per publish.
/// The stamp shares a line with the start of events aligned to 8 bytes or less. Choose it for a
/// latency-critical hop that carries one event at a time (an order gateway to its matcher),
/// and [`single_producer`] for bulk streams; `BENCHMARKS.md` has both measured.
///
/// ```
/// use peregrine_ring::{single_producer_stamped, PollState};
///
/// let mut b = single_producer_stamped(1024, || 0u64)?;
/// let id = b.poller("matcher").add()?;
/// let (mut producer, mut ring) = b.build()?;
/// let mut poller = ring.take_poller(id).expect("added above");
/// producer.publish(|e| *e = 42)?;
/// let mut got = 0;
/// assert_eq!(poller.poll(|e, _, _| got = *e), PollState::Events(1));
/// assert_eq!(got, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`BuildError::CapacityNotPowerOfTwo`] unless `capacity` is a power of two.
pub fn single_producer_stamped<E: Send + Sync + 'static>(
    capacity: usize,
    factory: impl FnMut() -> E,
) -> Result<RingBuilder<E, Stamped>, BuildError> {
    RingBuilder::new(capacity, factory)
}

/// A ring whose producer can be cloned for several publishing threads.
///
/// # Errors
///
/// [`BuildError::CapacityNotPowerOfTwo`] unless `capacity` is a power of two.
pub fn multi_producer<E: Send + Sync + 'static>(
    capacity: usize,
    factory: impl FnMut() -> E,
) -> Result<RingBuilder<E, Multi>, BuildError> {
    RingBuilder::new(capacity, factory)
}

impl<E: Send + Sync + 'static, S: Sequencer> RingBuilder<E, S> {
    fn new(capacity: usize, factory: impl FnMut() -> E) -> Result<Self, BuildError> {
        if !capacity.is_power_of_two() {
            return Err(BuildError::CapacityNotPowerOfTwo { capacity });
        }
        static NEXT_ID: IdCounter = IdCounter::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, IdOrdering::Relaxed),
            slots: Slots::new(capacity, factory),
            wait: WaitStrategy::default(),
            when_full: WhenFull::default(),
            allow_oversubscription: false,
            specs: Vec::new(),
            sequencer: std::marker::PhantomData,
        })
    }

    /// How stages wait for events (and producers for room, unless
    /// [`when_full`](Self::when_full) says otherwise). Default: [`WaitStrategy::phased`].
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// What producers do when the ring is full. Default: [`WhenFull::Wait`].
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// Accept more busy-spinning stage threads than cores (refused by default, since they
    /// then starve each other).
    pub fn allow_oversubscription(mut self, allow: bool) -> Self {
        self.allow_oversubscription = allow;
        self
    }

    /// Starts describing a stage that runs `handler` (an [`EventHandler`], or a closure
    /// `FnMut(&E, u64, bool)`) on a thread named `name`. A panic in `on_event` or
    /// `on_batch_start` goes to the stage's [failure policy](StageBuilder::on_failure); a
    /// panic in `on_start`, `on_timeout` or `on_shutdown` halts the ring.
    pub fn stage<H: EventHandler<E>>(&mut self, name: &str, handler: H) -> StageBuilder<'_, E, S> {
        self.thread_stage(name, Plain(handler), false)
    }

    /// Starts describing a stage whose handler returns a `Result` (a [`TryEventHandler`],
    /// or a closure `FnMut(&E, u64, bool) -> Result<(), Err>`); errors and panics go to the
    /// stage's [failure policy](StageBuilder::on_failure).
    pub fn try_stage<H: TryEventHandler<E>>(
        &mut self,
        name: &str,
        handler: H,
    ) -> StageBuilder<'_, E, S> {
        self.thread_stage(name, Shared(handler), false)
    }

    fn thread_stage<I: Invoke<E>>(
        &mut self,
        name: &str,
        invoke: I,
        exclusive: bool,
    ) -> StageBuilder<'_, E, S> {
        let launch: Launch<E, S> =
            Box::new(move |reader, ctx| crate::stage::run(reader, invoke, ctx));
        StageBuilder::new(self, name, Kind::Thread { launch, exclusive })
    }

    /// Starts describing a stage whose handler receives `&mut E`, to fill in fields that
    /// later stages read (LMAX's unmarshaller).
    ///
    /// [`build`](Self::build) accepts it only if the stage is alone with its events: every
    /// other stage must be upstream of it (it is gated on them) or downstream (gated on it,
    /// directly or not). Otherwise [`BuildError::NotExclusive`].
    ///
    /// ```
    /// use peregrine_ring::{single_producer, WaitStrategy};
    /// use std::sync::{Arc, Mutex};
    ///
    /// #[derive(Default)]
    /// struct Msg { raw: u32, decoded: u32 }
    ///
    /// let out = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&out);
    /// let mut b = single_producer(16, Msg::default)?.wait_strategy(WaitStrategy::blocking());
    /// let decode = b.exclusive_stage("decode", |m: &mut Msg, _: u64, _: bool| m.decoded = m.raw * 2)
    ///     .add()?;
    /// b.stage("logic", move |m: &Msg, _: u64, _: bool| sink.lock().unwrap().push(m.decoded))
    ///     .after(&[decode])
    ///     .add()?;
    /// let (mut p, _ring) = b.build()?;
    /// for raw in 1..=3 {
    ///     p.publish(|m| m.raw = raw)?;
    /// }
    /// drop(p);
    /// assert_eq!(*out.lock().unwrap(), [2, 4, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exclusive_stage<H: ExclusiveHandler<E>>(
        &mut self,
        name: &str,
        handler: H,
    ) -> StageBuilder<'_, E, S> {
        self.thread_stage(name, Exclusive(handler), true)
    }

    /// Starts describing a work pool: `workers` threads (named `name-0`, `name-1`, ...),
    /// each with its own handler from `handler(worker_index)`, where every event goes to
    /// exactly one worker (a consumer group). A pool can sit anywhere in the graph.
    ///
    /// ```
    /// use peregrine_ring::{single_producer, WaitStrategy};
    /// use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
    ///
    /// let sum = Arc::new(AtomicU64::new(0));
    /// let mut b = single_producer(64, || 0u64)?.wait_strategy(WaitStrategy::blocking());
    /// let total = Arc::clone(&sum);
    /// b.pool("workers", 2, move |_worker| {
    ///     let total = Arc::clone(&total);
    ///     move |e: &u64, _: u64, _: bool| { total.fetch_add(*e, Ordering::Relaxed); }
    /// })
    /// .add()?;
    /// let (mut p, _ring) = b.build()?;
    /// for v in 1..=100 {
    ///     p.publish(|e| *e = v)?;
    /// }
    /// drop(p);
    /// assert_eq!(sum.load(Ordering::Relaxed), 5050); // each event handled exactly once
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pool<H: EventHandler<E>>(
        &mut self,
        name: &str,
        workers: usize,
        mut handler: impl FnMut(usize) -> H,
    ) -> StageBuilder<'_, E, S> {
        self.worker_pool(name, workers, |i| Plain(handler(i)))
    }

    /// Like [`pool`](Self::pool), with handlers that return a `Result`.
    pub fn try_pool<H: TryEventHandler<E>>(
        &mut self,
        name: &str,
        workers: usize,
        mut handler: impl FnMut(usize) -> H,
    ) -> StageBuilder<'_, E, S> {
        self.worker_pool(name, workers, |i| Shared(handler(i)))
    }

    fn worker_pool<I: Invoke<E>>(
        &mut self,
        name: &str,
        workers: usize,
        mut invoke: impl FnMut(usize) -> I,
    ) -> StageBuilder<'_, E, S> {
        let launches = (0..workers)
            .map(|i| {
                let inv = invoke(i);
                let launch: WorkerLaunch<E, S> = Box::new(move |reader, work, ctx| {
                    crate::stage::run_worker(reader, work, inv, ctx)
                });
                launch
            })
            .collect();
        StageBuilder::new(self, name, Kind::Pool(launches))
    }

    /// Starts describing a [`Poller`] stage: no thread; take it from the [`Ring`] with
    /// [`Ring::take_poller`] after building.
    pub fn poller(&mut self, name: &str) -> StageBuilder<'_, E, S> {
        StageBuilder::new(self, name, Kind::Poller)
    }

    /// Every stage that `index` depends on, directly or not.
    fn ancestors(&self, index: usize) -> Vec<bool> {
        let mut seen = vec![false; self.specs.len()];
        let mut stack = self.specs[index].deps.clone();
        while let Some(d) = stack.pop() {
            if !std::mem::replace(&mut seen[d], true) {
                stack.extend_from_slice(&self.specs[d].deps);
            }
        }
        seen
    }

    fn check(&self) -> Result<(), BuildError> {
        if self.specs.is_empty() {
            return Err(BuildError::NoConsumer);
        }
        let allowed = crate::affinity::allowed_cores();
        for spec in &self.specs {
            if let Some(&core) = spec.cores.iter().find(|c| !allowed.contains(c)) {
                return Err(BuildError::CoreUnavailable {
                    stage: spec.name.clone(),
                    core,
                    allowed: allowed.to_vec(),
                });
            }
        }
        let threads: usize = self.specs.iter().map(|s| s.kind.threads()).sum();
        if self.wait.is_busy() && !self.allow_oversubscription && threads > allowed.len() {
            return Err(BuildError::Oversubscribed {
                threads,
                cores: allowed.len(),
            });
        }
        let ancestors: Vec<Vec<bool>> = (0..self.specs.len()).map(|i| self.ancestors(i)).collect();
        for (m, spec) in self.specs.iter().enumerate() {
            if !matches!(
                spec.kind,
                Kind::Thread {
                    exclusive: true,
                    ..
                }
            ) {
                continue;
            }
            let parallel =
                (0..self.specs.len()).find(|&o| o != m && !ancestors[m][o] && !ancestors[o][m]);
            if let Some(o) = parallel {
                return Err(BuildError::NotExclusive {
                    stage: spec.name.clone(),
                    parallel_with: self.specs[o].name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Checks the graph, starts one thread per stage (and per pool worker), and returns the
    /// producer and the ring's handle.
    ///
    /// # Errors
    ///
    /// [`BuildError::NoConsumer`], [`BuildError::CoreUnavailable`],
    /// [`BuildError::Oversubscribed`], [`BuildError::NotExclusive`], or
    /// [`BuildError::Spawn`]; no thread is left running.
    pub fn build(self) -> Result<Built<E, S>, BuildError> {
        self.check()?;
        // One sequence (and one set of counters) per thread, worker or poller.
        let members: Vec<Vec<StageInfo>> = self
            .specs
            .iter()
            .map(|s| {
                s.member_names()
                    .into_iter()
                    .map(|name| StageInfo {
                        name,
                        sequence: Arc::new(Sequence::new(0)),
                        stats: Arc::new(StageStats::new()),
                        running: Arc::new(AtomicBool::new(false)),
                    })
                    .collect()
            })
            .collect();
        let mut is_dependency = vec![false; self.specs.len()];
        for spec in &self.specs {
            for &d in &spec.deps {
                is_dependency[d] = true;
            }
        }
        let gating = (0..self.specs.len())
            .filter(|&i| !is_dependency[i])
            .flat_map(|i| members[i].iter().map(|m| Arc::clone(&m.sequence)))
            .collect();
        let capacity = self.slots.capacity();
        let parks = self.wait.parks() || self.when_full.strategy(self.wait).parks();
        let core = Arc::new(Core {
            slots: self.slots,
            sequencer: S::new(capacity),
            gating,
            wait: self.wait,
            when_full: self.when_full,
            parks,
            plain_wait: !matches!(self.when_full, WhenFull::WaitUpTo(_) | WhenFull::Fail),
            notifier: Notifier::new(),
            stalls: CachePadded::new(AtomicU64::new(0)),
            control: CachePadded::new(Control {
                state: AtomicU8::new(0),
            }),
            producers: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            joining: crate::sync::ModelMutex::new(()),
            stages: members
                .iter()
                .flatten()
                .map(|m| StageInfo {
                    name: m.name.clone(),
                    sequence: Arc::clone(&m.sequence),
                    stats: Arc::clone(&m.stats),
                    running: Arc::clone(&m.running),
                })
                .collect(),
            threads: Mutex::new(Vec::new()),
            thread_ids: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        });

        let mut pollers = Vec::new();
        for (index, spec) in self.specs.into_iter().enumerate() {
            let deps: Box<[Arc<Sequence>]> = spec
                .deps
                .iter()
                .flat_map(|&d| members[d].iter().map(|m| Arc::clone(&m.sequence)))
                .collect();
            let reader = |m: usize| {
                Reader::new(
                    Arc::clone(&core),
                    deps.clone(),
                    Arc::clone(&members[index][m].sequence),
                    spec.max_batch,
                )
            };
            let ctx = |m: usize| StageContext {
                name: members[index][m].name.clone(),
                pacer: crate::stage::Pacer::new(spec.stream_backoff, std::mem::size_of::<E>()),
                policy: spec.policy.clone(),
                stats: Arc::clone(&members[index][m].stats),
            };
            let spawned = match spec.kind {
                Kind::Poller => {
                    pollers.push((
                        index,
                        Some(Poller::new(
                            reader(0),
                            Arc::clone(&members[index][0].stats),
                            members[index][0].name.clone(),
                        )),
                    ));
                    Ok(())
                }
                Kind::Thread { launch, .. } => {
                    let (r, c) = (reader(0), ctx(0));
                    let m = &members[index][0];
                    spawn(
                        &core,
                        &m.name,
                        &m.running,
                        spec.cores.first().copied(),
                        move || launch(r, c),
                    )
                }
                Kind::Pool(workers) => {
                    let work = Arc::new(CachePadded::new(AtomicU64::new(0)));
                    workers.into_iter().enumerate().try_for_each(|(i, launch)| {
                        let (r, c, w) = (reader(i), ctx(i), Arc::clone(&work));
                        let m = &members[index][i];
                        spawn(
                            &core,
                            &m.name,
                            &m.running,
                            spec.cores.get(i).copied(),
                            move || launch(r, w, c),
                        )
                    })
                }
            };
            if let Err(reason) = spawned {
                core.halt();
                core.join_threads();
                return Err(BuildError::Spawn {
                    stage: spec.name,
                    reason,
                });
            }
        }
        let producer = Producer::new(Arc::clone(&core));
        Ok((
            producer,
            Ring {
                core,
                ring_id: self.id,
                pollers,
            },
        ))
    }
}

/// Starts a named (optionally pinned) thread running `body`, which must not unwind: stage
/// loops catch handler panics themselves; anything else that panics halts the ring.
fn spawn<E: Send + Sync + 'static, S: Sequencer>(
    core: &Arc<Core<E, S>>,
    name: &str,
    running: &Arc<AtomicBool>,
    pin: Option<usize>,
    body: impl FnOnce() + Send + 'static,
) -> Result<(), String> {
    /// Marks the thread finished however it ends.
    struct Exit<E, S: Sequencer>(Arc<Core<E, S>>, Arc<AtomicBool>);
    impl<E, S: Sequencer> Drop for Exit<E, S> {
        fn drop(&mut self) {
            self.1.store(false, Ordering::Release);
            // Release: everything the stage did happens before a shutdown that sees zero.
            self.0.running.fetch_sub(1, Ordering::Release);
        }
    }
    let stage = name.to_owned();
    let shared = Arc::clone(core);
    running.store(true, Ordering::Relaxed);
    core.running.fetch_add(1, Ordering::Relaxed);
    let exit = Exit(Arc::clone(core), Arc::clone(running));
    let thread_body = move || {
        let _exit = exit;
        #[cfg(not(loom))]
        if let Some(c) = pin {
            if !crate::affinity::pin_current(c) {
                lock(&shared.failure).get_or_insert((
                    stage.clone(),
                    format!("could not pin the stage thread to core {c}"),
                ));
                shared.halt();
                return;
            }
        }
        #[cfg(loom)]
        let _ = pin;
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            let failure = crate::failure::Failure::from_panic(payload);
            lock(&shared.failure).get_or_insert((stage, failure.to_string()));
            // A dead stage would wedge every producer once the ring fills: halt instead,
            // which releases them with an error.
            shared.halt();
        }
    };
    let handle = crate::sync::thread::Builder::new()
        .name(name.to_owned())
        .spawn(thread_body)
        // The closure (and its exit guard) is dropped on failure, undoing the count.
        .map_err(|e| e.to_string())?;
    lock(&core.thread_ids).push(handle.thread().id());
    lock(&core.threads).push(handle);
    Ok(())
}

impl<E, S: Sequencer> std::fmt::Debug for RingBuilder<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuilder")
            .field("capacity", &self.slots.capacity())
            .field("wait", &self.wait)
            .field("when_full", &self.when_full)
            .field(
                "stages",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Describes one stage; finish with [`add`](Self::add).
pub struct StageBuilder<'a, E, S: Sequencer> {
    builder: &'a mut RingBuilder<E, S>,
    name: String,
    kind: Kind<E, S>,
    after: Vec<StageId>,
    cores: Vec<usize>,
    max_batch: u64,
    stream_backoff: Duration,
    policy: FailurePolicy<E>,
}

impl<'a, E: Send + Sync + 'static, S: Sequencer> StageBuilder<'a, E, S> {
    fn new(builder: &'a mut RingBuilder<E, S>, name: &str, kind: Kind<E, S>) -> Self {
        Self {
            builder,
            name: name.to_owned(),
            kind,
            after: Vec::new(),
            cores: Vec::new(),
            max_batch: u64::MAX,
            stream_backoff: DEFAULT_STREAM_BACKOFF,
            policy: FailurePolicy::Halt,
        }
    }

    /// Gates this stage on `stages`: it handles an event only after all of them have.
    /// Without it, the stage reads straight behind the producers.
    pub fn after(mut self, stages: &[StageId]) -> Self {
        self.after.extend_from_slice(stages);
        self
    }

    /// Pins the stage's thread to `core` (an id as the operating system numbers cores).
    /// For a pool, call it once per worker, in worker order.
    pub fn pin(mut self, core: usize) -> Self {
        self.cores.push(core);
        self
    }

    /// Hands the handler at most `n` events per batch (default: everything available).
    pub fn max_batch(mut self, n: u64) -> Self {
        self.max_batch = n;
        self
    }

    /// How long the stage pauses when it keeps catching up with a producer that is still
    /// publishing. Default: [`DEFAULT_STREAM_BACKOFF`]; [`Duration::ZERO`] turns it off.
    ///
    /// Small events share cache lines, and a stage that takes each event as soon as it is
    /// published reads the slot's line (and the cursor's) while the producer is still
    /// writing it: every event then moves both lines between the two cores, and a stream
    /// that would run at a few nanoseconds an event runs at twenty or more. When the
    /// stage has handled four batches in a row each smaller than 128 bytes of events and
    /// found more published every time, it pauses (a bounded spin, no syscall) for this
    /// long before looking again, so the producer gets ahead and the next batch reads
    /// whole lines it has finished with. The stage stays paced until it finds nothing new
    /// after a batch. A single event, or a short burst, is never delayed; events in a
    /// sustained stream may wait up to this long, and the stream as a whole is handled
    /// several times faster. Thread stages only: pool workers take one event at a time
    /// and pollers are paced by the caller's loop.
    pub fn stream_backoff(mut self, pause: Duration) -> Self {
        self.stream_backoff = pause;
        self
    }

    /// What the stage does when its handler returns an error or panics. Default:
    /// [`FailurePolicy::Halt`].
    pub fn on_failure(mut self, policy: FailurePolicy<E>) -> Self {
        self.policy = policy;
        self
    }

    /// Adds the stage to the graph.
    ///
    /// # Errors
    ///
    /// [`BuildError::ForeignStage`] if a dependency belongs to another builder;
    /// [`BuildError::DuplicateStageName`]; [`BuildError::ZeroMaxBatch`];
    /// [`BuildError::EmptyPool`] for a pool of zero workers.
    pub fn add(self) -> Result<StageId, BuildError> {
        let b = self.builder;
        if self
            .after
            .iter()
            .any(|d| d.ring != b.id || d.index >= b.specs.len())
        {
            return Err(BuildError::ForeignStage { stage: self.name });
        }
        if b.specs.iter().any(|s| s.name == self.name) {
            return Err(BuildError::DuplicateStageName { name: self.name });
        }
        if self.max_batch == 0 {
            return Err(BuildError::ZeroMaxBatch { stage: self.name });
        }
        if matches!(&self.kind, Kind::Pool(w) if w.is_empty()) {
            return Err(BuildError::EmptyPool { stage: self.name });
        }
        let mut deps: Vec<usize> = self.after.iter().map(|d| d.index).collect();
        deps.sort_unstable();
        deps.dedup();
        b.specs.push(Spec {
            name: self.name,
            deps,
            kind: self.kind,
            cores: self.cores,
            max_batch: self.max_batch,
            stream_backoff: self.stream_backoff,
            policy: self.policy,
        });
        Ok(StageId {
            ring: b.id,
            index: b.specs.len() - 1,
        })
    }
}

impl<E, S: Sequencer> std::fmt::Debug for StageBuilder<'_, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageBuilder")
            .field("name", &self.name)
            .field("after", &self.after)
            .field("cores", &self.cores)
            .field("max_batch", &self.max_batch)
            .field("stream_backoff", &self.stream_backoff)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The handle of a running ring: telemetry, pollers, shutdown and halt.
///
/// Dropping it leaves the stages running until the producers are dropped (drain) or the
/// ring halts; but pollers never taken from it are dropped with it, and a dropped poller
/// halts the ring (nothing else would ever free its slots).
pub struct Ring<E, S: Sequencer> {
    core: Arc<Core<E, S>>,
    ring_id: u64,
    pollers: Vec<(usize, Option<Poller<E, S>>)>,
}

impl<E: Send + Sync + 'static, S: Sequencer> Ring<E, S> {
    /// Takes the poller added as `id`; `None` if `id` is not a poller of this ring or was
    /// already taken.
    pub fn take_poller(&mut self, id: StageId) -> Option<Poller<E, S>> {
        if id.ring != self.ring_id {
            return None;
        }
        self.pollers
            .iter_mut()
            .find(|(i, _)| *i == id.index)
            .and_then(|(_, p)| p.take())
    }

    /// Each stage's handled count and how far it is behind the producers.
    pub fn progress(&self) -> Vec<StageProgress> {
        self.core.progress()
    }

    /// A snapshot of every counter: cursor, producer stalls, and per stage its sequence,
    /// lag, events, batch-size histogram and failures.
    pub fn telemetry(&self) -> Telemetry {
        self.core.telemetry()
    }

    /// Events claimed by producers so far.
    pub fn cursor(&self) -> u64 {
        self.core.sequencer.claimed()
    }

    /// True once the ring is halted (by [`halt`](Self::halt), a failed stage, or the end of
    /// a shutdown).
    pub fn is_halted(&self) -> bool {
        self.core.is_halted()
    }

    /// The failure that halted the ring, as `(stage, failure)`.
    pub fn failure(&self) -> Option<(String, String)> {
        lock(&self.core.failure).clone()
    }

    /// Stops taking events, lets every stage handle what is already published, and joins
    /// the stage threads; then halts the ring, so producers still alive get
    /// [`PublishError::Halted`](crate::PublishError::Halted).
    ///
    /// # Errors
    ///
    /// [`ShutdownError::Timeout`] if some stage has not drained within `timeout`: the ring
    /// is halted at once and the stages still running are reported with what they left
    /// (their threads are detached). [`ShutdownError::StageFailed`] if a stage had halted
    /// the ring with a failure.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ShutdownError> {
        let deadline = Instant::now() + timeout;
        self.core.close();
        // Wait for the threads themselves to finish (not for their handles: a producer
        // dropped concurrently may be joining them).
        while self.core.running.load(Ordering::Acquire) != 0 {
            if Instant::now() >= deadline {
                self.core.halt();
                // Stages that honour the halt stop at their batch boundary; give them a
                // moment, then report whoever is still stuck.
                let grace = Instant::now() + Duration::from_millis(10);
                while self.core.running.load(Ordering::Acquire) != 0 && Instant::now() < grace {
                    crate::sync::sleep(Duration::from_millis(1));
                }
                let still = self.core.running_stages();
                let left = self
                    .core
                    .progress()
                    .into_iter()
                    .filter(|p| still.contains(&p.name))
                    .collect();
                self.core.detach_threads();
                return Err(ShutdownError::Timeout { left });
            }
            // Through the shim: under loom this yields to the stages it waits for.
            crate::sync::sleep(Duration::from_millis(1));
        }
        self.core.join_threads();
        self.core.halt();
        match self.failure() {
            Some((stage, failure)) => Err(ShutdownError::StageFailed { stage, failure }),
            None => Ok(()),
        }
    }

    /// Waits until every stage thread has finished: after the last producer is dropped
    /// elsewhere (or a halt), or when the last producer was dropped on a stage thread and
    /// so could not join.
    pub fn join(&self) {
        self.core.join_threads();
    }

    /// Stops every stage at its next batch boundary, without draining, and joins them;
    /// producers waiting for room get [`PublishError::Halted`](crate::PublishError::Halted).
    pub fn halt(&self) {
        self.core.halt();
        self.core.join_threads();
    }
}

impl<E, S: Sequencer> std::fmt::Debug for Ring<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.core.slots.capacity())
            .field("stages", &self.core.stages)
            .finish_non_exhaustive()
    }
}
