//! [`RingBuilder`]: the stage graph, checked before any thread starts; and [`Ring`], the
//! handle that stops it.
//!
//! A stage may only depend on stages added before it, so a cycle cannot be written; a
//! dependency on another ring's stage, a duplicate name, or a graph with no consumer is an
//! `Err` from the builder.

use std::sync::atomic::{AtomicU64 as IdCounter, Ordering as IdOrdering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::buffer::Slots;
use crate::core::{lock, Control, Core, StageInfo, StageThread};
use crate::error::{BuildError, ShutdownError, StageProgress};
use crate::handler::EventHandler;
use crate::poller::Poller;
use crate::producer::Producer;
use crate::reader::Reader;
use crate::sequence::Sequence;
use crate::sequencer::{Multi, Sequencer, Single};
use crate::sync::{Arc, AtomicBool, AtomicUsize, CachePadded};
use crate::wait::{Notifier, WaitStrategy};

/// Identifies a stage within one builder's graph; pass it to
/// [`StageBuilder::after`] to gate a later stage on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StageId {
    ring: u64,
    index: usize,
}

type Launch<E, S> = Box<dyn FnOnce(Reader<E, S>) + Send>;

/// What [`RingBuilder::build`] returns: the first producer and the ring's handle.
pub type Built<E, S> = (Producer<E, S>, Ring<E, S>);

enum Kind<E, S> {
    Thread(Launch<E, S>),
    Poller,
}

struct Spec<E, S> {
    name: String,
    deps: Vec<usize>,
    kind: Kind<E, S>,
    core: Option<usize>,
    max_batch: u64,
}

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
pub struct RingBuilder<E, S> {
    id: u64,
    slots: Slots<E>,
    wait: WaitStrategy,
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
            allow_oversubscription: false,
            specs: Vec::new(),
            sequencer: std::marker::PhantomData,
        })
    }

    /// How stages wait for events and producers wait for room. Default:
    /// [`WaitStrategy::phased`].
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Accept more busy-spinning stage threads than cores (refused by default, since they
    /// then starve each other).
    pub fn allow_oversubscription(mut self, allow: bool) -> Self {
        self.allow_oversubscription = allow;
        self
    }

    /// Starts describing a stage that runs `handler` on a thread named `name`.
    pub fn stage<H: EventHandler<E>>(&mut self, name: &str, handler: H) -> StageBuilder<'_, E, S> {
        let launch: Launch<E, S> = Box::new(move |reader| crate::stage::run(reader, handler));
        StageBuilder::new(self, name, Kind::Thread(launch))
    }

    /// Starts describing a [`Poller`] stage: no thread; take it from the [`Ring`] with
    /// [`Ring::take_poller`] after building.
    pub fn poller(&mut self, name: &str) -> StageBuilder<'_, E, S> {
        StageBuilder::new(self, name, Kind::Poller)
    }

    /// Checks the graph, starts one thread per stage, and returns the producer and the
    /// ring's handle.
    ///
    /// # Errors
    ///
    /// [`BuildError::NoConsumer`], [`BuildError::CoreUnavailable`],
    /// [`BuildError::Oversubscribed`], or [`BuildError::Spawn`]; no thread is left running.
    pub fn build(self) -> Result<Built<E, S>, BuildError> {
        if self.specs.is_empty() {
            return Err(BuildError::NoConsumer);
        }
        let allowed = crate::affinity::allowed_cores();
        for spec in &self.specs {
            if let Some(core) = spec.core {
                if !allowed.contains(&core) {
                    return Err(BuildError::CoreUnavailable {
                        stage: spec.name.clone(),
                        core,
                        allowed: allowed.to_vec(),
                    });
                }
            }
        }
        let threads = self
            .specs
            .iter()
            .filter(|s| matches!(s.kind, Kind::Thread(_)))
            .count();
        if self.wait.is_busy() && !self.allow_oversubscription && threads > allowed.len() {
            return Err(BuildError::Oversubscribed {
                threads,
                cores: allowed.len(),
            });
        }

        let sequences: Vec<Arc<Sequence>> = self
            .specs
            .iter()
            .map(|_| Arc::new(Sequence::new(0)))
            .collect();
        let mut is_dependency = vec![false; self.specs.len()];
        for spec in &self.specs {
            for &d in &spec.deps {
                is_dependency[d] = true;
            }
        }
        let gating = (0..self.specs.len())
            .filter(|&i| !is_dependency[i])
            .map(|i| Arc::clone(&sequences[i]))
            .collect();
        let capacity = self.slots.capacity();
        let core = Arc::new(Core {
            slots: self.slots,
            sequencer: S::new(capacity),
            gating,
            wait: self.wait,
            notifier: Notifier::new(),
            control: CachePadded::new(Control {
                closed: AtomicBool::new(false),
                halted: AtomicBool::new(false),
                producers: AtomicUsize::new(0),
            }),
            stages: self
                .specs
                .iter()
                .zip(&sequences)
                .map(|(s, q)| StageInfo {
                    name: s.name.clone(),
                    sequence: Arc::clone(q),
                })
                .collect(),
            threads: Mutex::new(Vec::new()),
            panic: Mutex::new(None),
        });

        let mut pollers = Vec::new();
        for (index, spec) in self.specs.into_iter().enumerate() {
            let deps = spec
                .deps
                .iter()
                .map(|&d| Arc::clone(&sequences[d]))
                .collect();
            let reader = Reader::new(
                Arc::clone(&core),
                deps,
                Arc::clone(&sequences[index]),
                spec.max_batch,
            );
            match spec.kind {
                Kind::Poller => pollers.push((index, Some(Poller::new(reader)))),
                Kind::Thread(launch) => {
                    if let Err(reason) = spawn_stage(&core, &spec.name, spec.core, reader, launch) {
                        core.halt();
                        core.join_threads(true);
                        return Err(BuildError::Spawn {
                            stage: spec.name,
                            reason,
                        });
                    }
                }
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

fn spawn_stage<E: Send + Sync + 'static, S: Sequencer>(
    core: &Arc<Core<E, S>>,
    name: &str,
    pin: Option<usize>,
    reader: Reader<E, S>,
    launch: Launch<E, S>,
) -> Result<(), String> {
    let stage = name.to_owned();
    let shared = Arc::clone(core);
    let body = move || {
        #[cfg(not(loom))]
        if let Some(c) = pin {
            if !crate::affinity::pin_current(c) {
                *lock(&shared.panic) = Some((
                    stage.clone(),
                    format!("could not pin the stage thread to core {c}"),
                ));
                shared.halt();
                return;
            }
        }
        #[cfg(loom)]
        let _ = pin;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| launch(reader)));
        if let Err(payload) = result {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            lock(&shared.panic).get_or_insert((stage, message));
            // A dead stage would wedge every producer once the ring fills: halt instead,
            // which releases them with an error.
            shared.halt();
        }
    };
    let handle = crate::sync::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(|e| e.to_string())?;
    lock(&core.threads).push(StageThread {
        name: name.to_owned(),
        handle,
    });
    Ok(())
}

impl<E, S> std::fmt::Debug for RingBuilder<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuilder")
            .field("capacity", &self.slots.capacity())
            .field("wait", &self.wait)
            .field(
                "stages",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Describes one stage; finish with [`add`](Self::add).
pub struct StageBuilder<'a, E, S> {
    builder: &'a mut RingBuilder<E, S>,
    name: String,
    kind: Kind<E, S>,
    after: Vec<StageId>,
    core: Option<usize>,
    max_batch: u64,
}

impl<'a, E: Send + Sync + 'static, S: Sequencer> StageBuilder<'a, E, S> {
    fn new(builder: &'a mut RingBuilder<E, S>, name: &str, kind: Kind<E, S>) -> Self {
        Self {
            builder,
            name: name.to_owned(),
            kind,
            after: Vec::new(),
            core: None,
            max_batch: u64::MAX,
        }
    }

    /// Gates this stage on `stages`: it handles an event only after all of them have.
    /// Without it, the stage reads straight behind the producers.
    pub fn after(mut self, stages: &[StageId]) -> Self {
        self.after.extend_from_slice(stages);
        self
    }

    /// Pins the stage's thread to `core` (an id as the operating system numbers cores).
    pub fn pin(mut self, core: usize) -> Self {
        self.core = Some(core);
        self
    }

    /// Hands the handler at most `n` events per batch (default: everything available).
    pub fn max_batch(mut self, n: u64) -> Self {
        self.max_batch = n;
        self
    }

    /// Adds the stage to the graph.
    ///
    /// # Errors
    ///
    /// [`BuildError::ForeignStage`] if a dependency belongs to another builder;
    /// [`BuildError::DuplicateStageName`]; [`BuildError::ZeroMaxBatch`].
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
        let mut deps: Vec<usize> = self.after.iter().map(|d| d.index).collect();
        deps.sort_unstable();
        deps.dedup();
        b.specs.push(Spec {
            name: self.name,
            deps,
            kind: self.kind,
            core: self.core,
            max_batch: self.max_batch,
        });
        Ok(StageId {
            ring: b.id,
            index: b.specs.len() - 1,
        })
    }
}

impl<E, S> std::fmt::Debug for StageBuilder<'_, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageBuilder")
            .field("name", &self.name)
            .field("after", &self.after)
            .field("core", &self.core)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// The handle of a running ring: progress, pollers, shutdown and halt.
///
/// Dropping it does nothing; the stages keep running until the producers are dropped
/// (drain) or [`halt`](Self::halt) / [`shutdown`](Self::shutdown) is called.
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

    /// Events claimed by producers so far.
    pub fn cursor(&self) -> u64 {
        self.core.sequencer.claimed()
    }

    /// True once the ring is halted (by [`halt`](Self::halt), a stage panic, or the end of
    /// a shutdown).
    pub fn is_halted(&self) -> bool {
        self.core.is_halted()
    }

    /// The first stage panic, as `(stage, message)`.
    pub fn panic(&self) -> Option<(String, String)> {
        lock(&self.core.panic).clone()
    }

    /// Stops taking events, lets every stage handle what is already published, and joins
    /// the stage threads; then halts the ring, so producers still alive get
    /// [`PublishError::Halted`](crate::PublishError::Halted).
    ///
    /// # Errors
    ///
    /// [`ShutdownError::Timeout`] if some stage has not drained within `timeout`: the ring
    /// is halted at once and the stages still running are reported with what they left
    /// (their threads are detached). [`ShutdownError::StagePanicked`] if a stage had
    /// panicked.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ShutdownError> {
        let deadline = Instant::now() + timeout;
        self.core.close();
        loop {
            let running = self.core.join_threads(false);
            if running.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                self.core.halt();
                // Stages that honour the halt stop at their batch boundary; give them a
                // moment, then report whoever is still stuck.
                std::thread::sleep(Duration::from_millis(10));
                let still = self.core.join_threads(false);
                let left = self
                    .core
                    .progress()
                    .into_iter()
                    .filter(|p| still.contains(&p.name))
                    .collect();
                for t in std::mem::take(&mut *lock(&self.core.threads)) {
                    drop(t.handle); // detach the stuck thread
                }
                return Err(ShutdownError::Timeout { left });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.core.halt();
        match self.panic() {
            Some((stage, message)) => Err(ShutdownError::StagePanicked { stage, message }),
            None => Ok(()),
        }
    }

    /// Stops every stage at its next batch boundary, without draining, and joins them;
    /// producers waiting for room get [`PublishError::Halted`](crate::PublishError::Halted).
    pub fn halt(&self) {
        self.core.halt();
        self.core.join_threads(true);
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
