//! Failure policies: what a stage does when its handler returns an error or panics.
//!
//! A panic is caught (one `catch_unwind` per batch, free while nothing panics), so a stage
//! thread never dies silently. The policy is chosen per stage with
//! [`StageBuilder::on_failure`](crate::StageBuilder::on_failure); the default is
//! [`FailurePolicy::Halt`]. Each stage's failure count and last failure are in
//! [`Ring::telemetry`](crate::Ring::telemetry).
//!
//! See [`FailurePolicy`] for the table of policies and an example of each.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::handler::BoxError;
use crate::sync::Arc;

/// Why a handler failed on an event.
#[derive(Debug)]
pub enum Failure {
    /// The handler returned this error.
    Error(BoxError),
    /// The handler panicked with this message.
    Panic(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "error: {e}"),
            Failure::Panic(m) => write!(f, "panic: {m}"),
        }
    }
}

impl Failure {
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Failure::Panic(message)
    }
}

/// Receives events a stage gave up on ([`FailurePolicy::DeadLetter`]).
///
/// Called on the stage thread; keep it quick (copy the event out, hand it elsewhere).
pub trait DeadLetterSink<E>: Send + Sync + 'static {
    /// The stage `stage` gave up on `event` at `sequence` because of `failure`.
    fn accept(&self, stage: &str, sequence: u64, event: &E, failure: &Failure);
}

/// One dead letter held by [`MemoryDeadLetters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<E> {
    /// The stage that gave up.
    pub stage: String,
    /// The event's sequence.
    pub sequence: u64,
    /// A copy of the event.
    pub event: E,
    /// The failure, as text.
    pub failure: String,
}

/// A dead-letter sink that keeps copies of the events in memory.
#[derive(Debug)]
pub struct MemoryDeadLetters<E> {
    letters: Mutex<Vec<DeadLetter<E>>>,
}

impl<E> MemoryDeadLetters<E> {
    /// An empty sink.
    pub fn new() -> Self {
        Self {
            letters: Mutex::new(Vec::new()),
        }
    }

    /// Takes every letter received so far, oldest first.
    pub fn take(&self) -> Vec<DeadLetter<E>> {
        std::mem::take(&mut *crate::core::lock(&self.letters))
    }

    /// Number of letters held.
    pub fn len(&self) -> usize {
        crate::core::lock(&self.letters).len()
    }

    /// True when no letter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<E> Default for MemoryDeadLetters<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Clone + Send + 'static> DeadLetterSink<E> for MemoryDeadLetters<E> {
    fn accept(&self, stage: &str, sequence: u64, event: &E, failure: &Failure) {
        crate::core::lock(&self.letters).push(DeadLetter {
            stage: stage.to_owned(),
            sequence,
            event: event.clone(),
            failure: failure.to_string(),
        });
    }
}

/// What a stage does when its handler returns an error or panics.
///
/// | policy | the failed event | later events | use when |
/// |---|---|---|---|
/// | `Halt` | not handled | none: the ring halts, producers get an error | state would be wrong after a gap |
/// | `LogAndContinue` | skipped (logged) | handled | events are independent |
/// | `Retry` | retried with backoff, then the fallback policy | handled | transient faults (I/O) |
/// | `RewindBatch` | the whole batch is replayed, then the fallback | handled | idempotent per-batch handlers |
/// | `DeadLetter` | handed to a sink with its error | handled | nothing may be lost, nothing may stall |
///
/// **Halt** (the default): the first failure stops the ring; a waiting producer is released
/// with an error, and the ring reports which stage failed and why.
///
/// ```
/// use peregrine_ring::{single_producer, FailurePolicy, PublishError, WaitStrategy};
///
/// let mut b = single_producer(4, || 0u32)?.wait_strategy(WaitStrategy::blocking());
/// b.stage("strict", |e: &u32, _: u64, _: bool| assert!(*e < 3, "too big"))
///     .on_failure(FailurePolicy::Halt)
///     .add()?;
/// let (mut p, ring) = b.build()?;
/// let mut result = Ok(0);
/// for v in 0..100 {
///     result = p.publish(|e| *e = v);
///     if result.is_err() { break; }
/// }
/// assert_eq!(result, Err(PublishError::Halted));
/// assert_eq!(ring.failure().unwrap().0, "strict");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **LogAndContinue**: the failure is logged through `tracing` and counted; the stage goes
/// on.
///
/// ```
/// use peregrine_ring::{single_producer, FailurePolicy, WaitStrategy};
///
/// let mut b = single_producer(8, || 0u32)?.wait_strategy(WaitStrategy::blocking());
/// b.try_stage("lenient", |e: &u32, _: u64, _: bool| if *e % 2 == 0 { Ok(()) } else { Err("odd") })
///     .on_failure(FailurePolicy::LogAndContinue)
///     .add()?;
/// let (mut p, ring) = b.build()?;
/// for v in 0..10 { p.publish(|e| *e = v)?; }
/// drop(p);
/// assert_eq!(ring.telemetry().stages[0].failures, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **Retry**: call the handler again after a jittered exponential backoff; when the retries
/// are spent, fall back to another policy (here: dead letters).
///
/// ```
/// use peregrine_ring::{single_producer, FailurePolicy, MemoryDeadLetters, WaitStrategy};
/// use std::{sync::Arc, time::Duration};
///
/// let dead = Arc::new(MemoryDeadLetters::new());
/// let mut tries = 0;
/// let mut b = single_producer(8, || 0u32)?.wait_strategy(WaitStrategy::blocking());
/// b.try_stage("flaky-io", move |e: &u32, _: u64, _: bool| {
///     tries += 1;
///     // Event 1 succeeds on its second try; event 2 never does.
///     match (*e, tries) { (1, 2) | (0, _) => Ok(()), _ => Err("io") }
/// })
/// .on_failure(FailurePolicy::retry(3, Duration::from_micros(50)).or_else(FailurePolicy::dead_letter(dead.clone())))
/// .add()?;
/// let (mut p, _ring) = b.build()?;
/// for v in 0..3 { p.publish(|e| *e = v)?; }
/// drop(p);
/// let letters = dead.take();
/// assert_eq!(letters.len(), 1);
/// assert_eq!((letters[0].sequence, letters[0].event), (2, 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **RewindBatch**: replay the whole current batch from its first event (the handler must
/// be idempotent per batch, e.g. it writes the batch out at `end_of_batch`).
///
/// ```
/// use peregrine_ring::{single_producer, FailurePolicy, WaitStrategy};
/// use std::sync::{Arc, Mutex};
///
/// let written = Arc::new(Mutex::new(Vec::new()));
/// let out = Arc::clone(&written);
/// let (mut buffer, mut failed_once) = (Vec::new(), false);
/// let mut b = single_producer(8, || 0u32)?.wait_strategy(WaitStrategy::blocking());
/// b.try_stage("batch-writer", move |e: &u32, _: u64, end: bool| {
///     if *e == 3 && !std::mem::replace(&mut failed_once, true) {
///         buffer.clear(); // the batch will be replayed from its start
///         return Err("write failed");
///     }
///     buffer.push(*e);
///     if end { out.lock().unwrap().append(&mut buffer); }
///     Ok(())
/// })
/// .on_failure(FailurePolicy::rewind(2))
/// .add()?;
/// let (mut p, _ring) = b.build()?;
/// p.publish_batch(6, |e, s| *e = s as u32)?;
/// drop(p);
/// assert_eq!(*written.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **DeadLetter**: hand the event, its sequence and the failure to a sink and go on; the
/// journal crate provides a durable sink, [`MemoryDeadLetters`] keeps them in memory.
///
/// ```
/// use peregrine_ring::{single_producer, FailurePolicy, MemoryDeadLetters, WaitStrategy};
/// use std::sync::Arc;
///
/// let dead = Arc::new(MemoryDeadLetters::new());
/// let mut b = single_producer(8, || 0u32)?.wait_strategy(WaitStrategy::blocking());
/// b.stage("parse", |e: &u32, _: u64, _: bool| assert_ne!(*e, 7, "cannot parse 7"))
///     .on_failure(FailurePolicy::dead_letter(dead.clone()))
///     .add()?;
/// let (mut p, _ring) = b.build()?;
/// for v in 5..10 { p.publish(|e| *e = v)?; }
/// drop(p);
/// let letters = dead.take();
/// assert_eq!((letters[0].sequence, letters[0].event), (2, 7));
/// assert!(letters[0].failure.contains("cannot parse 7"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub enum FailurePolicy<E> {
    /// Stop the stage and halt the ring; producers waiting for room get
    /// [`PublishError::Halted`](crate::PublishError::Halted).
    Halt,
    /// Log the failure (through `tracing`) and go on with the next event.
    LogAndContinue,
    /// Call the handler again on the same event, up to `attempts` more times, sleeping an
    /// exponentially growing, jittered delay between tries; then apply `then`.
    Retry {
        /// Retries after the first failure.
        attempts: u32,
        /// The delay before the first retry; it doubles each time, up to `max_delay`, and
        /// each actual delay is drawn between half and all of it (jitter).
        initial_delay: Duration,
        /// The ceiling of the delay.
        max_delay: Duration,
        /// What to do once the retries are spent.
        then: Box<FailurePolicy<E>>,
    },
    /// Replay the current batch from its first event (for handlers that are idempotent per
    /// batch), up to `attempts` times for the same batch; then apply `then` to the event.
    RewindBatch {
        /// Replays allowed for one batch.
        attempts: u32,
        /// What to do once the replays are spent.
        then: Box<FailurePolicy<E>>,
    },
    /// Hand the event, its sequence and the failure to a sink, and go on.
    DeadLetter(Arc<dyn DeadLetterSink<E>>),
}

impl<E> FailurePolicy<E> {
    /// [`Retry`](Self::Retry) `attempts` times starting at `initial_delay` (capped at 100x),
    /// then [`Halt`](Self::Halt); change the fallback with [`or_else`](Self::or_else).
    pub fn retry(attempts: u32, initial_delay: Duration) -> Self {
        FailurePolicy::Retry {
            attempts,
            initial_delay,
            max_delay: initial_delay * 100,
            then: Box::new(FailurePolicy::Halt),
        }
    }

    /// [`RewindBatch`](Self::RewindBatch) up to `attempts` times, then [`Halt`](Self::Halt);
    /// change the fallback with [`or_else`](Self::or_else).
    pub fn rewind(attempts: u32) -> Self {
        FailurePolicy::RewindBatch {
            attempts,
            then: Box::new(FailurePolicy::Halt),
        }
    }

    /// [`DeadLetter`](Self::DeadLetter) into `sink`.
    pub fn dead_letter(sink: Arc<dyn DeadLetterSink<E>>) -> Self {
        FailurePolicy::DeadLetter(sink)
    }

    /// Sets the fallback of a `Retry` or `RewindBatch` policy (others are returned as is).
    pub fn or_else(self, fallback: FailurePolicy<E>) -> Self {
        match self {
            FailurePolicy::Retry {
                attempts,
                initial_delay,
                max_delay,
                ..
            } => FailurePolicy::Retry {
                attempts,
                initial_delay,
                max_delay,
                then: Box::new(fallback),
            },
            FailurePolicy::RewindBatch { attempts, .. } => FailurePolicy::RewindBatch {
                attempts,
                then: Box::new(fallback),
            },
            other => other,
        }
    }
}

impl<E> Clone for FailurePolicy<E> {
    fn clone(&self) -> Self {
        match self {
            FailurePolicy::Halt => FailurePolicy::Halt,
            FailurePolicy::LogAndContinue => FailurePolicy::LogAndContinue,
            FailurePolicy::Retry {
                attempts,
                initial_delay,
                max_delay,
                then,
            } => FailurePolicy::Retry {
                attempts: *attempts,
                initial_delay: *initial_delay,
                max_delay: *max_delay,
                then: then.clone(),
            },
            FailurePolicy::RewindBatch { attempts, then } => FailurePolicy::RewindBatch {
                attempts: *attempts,
                then: then.clone(),
            },
            FailurePolicy::DeadLetter(sink) => FailurePolicy::DeadLetter(Arc::clone(sink)),
        }
    }
}

// A derive would demand `E: Default`.
#[allow(clippy::derivable_impls)]
impl<E> Default for FailurePolicy<E> {
    fn default() -> Self {
        FailurePolicy::Halt
    }
}

impl<E> fmt::Debug for FailurePolicy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailurePolicy::Halt => f.write_str("Halt"),
            FailurePolicy::LogAndContinue => f.write_str("LogAndContinue"),
            FailurePolicy::Retry {
                attempts,
                initial_delay,
                max_delay,
                then,
            } => f
                .debug_struct("Retry")
                .field("attempts", attempts)
                .field("initial_delay", initial_delay)
                .field("max_delay", max_delay)
                .field("then", then)
                .finish(),
            FailurePolicy::RewindBatch { attempts, then } => f
                .debug_struct("RewindBatch")
                .field("attempts", attempts)
                .field("then", then)
                .finish(),
            FailurePolicy::DeadLetter(_) => f.write_str("DeadLetter(..)"),
        }
    }
}

/// What the stage loop does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Handle the same event again (after the delay has been slept).
    Retry,
    /// Start the batch again from its first event.
    Rewind,
    /// Go on with the next event.
    Skip,
    /// Stop the stage and halt the ring.
    Halt,
}

/// Per-failure bookkeeping of the stage loop: how many retries / rewinds were used.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    /// Sequence the retry count belongs to.
    pub(crate) sequence: u64,
    pub(crate) retries: u32,
    /// Batch start the rewind count belongs to.
    pub(crate) batch: u64,
    pub(crate) rewinds: u32,
    rng: u64,
}

/// Where a failure happened.
#[derive(Debug)]
pub(crate) struct Site<'a, E> {
    pub(crate) stage: &'a str,
    pub(crate) sequence: u64,
    pub(crate) batch_start: u64,
    pub(crate) event: &'a E,
}

impl<E: 'static> FailurePolicy<E> {
    /// Decides what to do about `failure` on `event`; may `pause` (retry backoff) and may
    /// hand the event to a sink.
    pub(crate) fn decide(
        &self,
        site: &Site<'_, E>,
        failure: &Failure,
        attempts: &mut Attempts,
        pause: &mut dyn FnMut(Duration),
    ) -> Action {
        let Site {
            stage,
            sequence,
            batch_start,
            event,
        } = *site;
        // Each nested level of the policy tree counts with the same counters: nesting
        // a Retry inside a Retry is not meaningful and shares the budget.
        match self {
            FailurePolicy::Halt => Action::Halt,
            FailurePolicy::LogAndContinue => {
                tracing::warn!(stage, sequence, %failure, "handler failed; event skipped");
                Action::Skip
            }
            FailurePolicy::DeadLetter(sink) => {
                sink.accept(stage, sequence, event, failure);
                Action::Skip
            }
            FailurePolicy::Retry {
                attempts: max,
                initial_delay,
                max_delay,
                then,
            } => {
                if attempts.sequence != sequence {
                    attempts.sequence = sequence;
                    attempts.retries = 0;
                }
                if attempts.retries < *max {
                    let exp = initial_delay.saturating_mul(1u32 << attempts.retries.min(20));
                    let ceiling = exp.min(*max_delay);
                    attempts.retries += 1;
                    pause(attempts.jitter(ceiling));
                    Action::Retry
                } else {
                    then.decide(site, failure, attempts, pause)
                }
            }
            FailurePolicy::RewindBatch {
                attempts: max,
                then,
            } => {
                if attempts.batch != batch_start {
                    attempts.batch = batch_start;
                    attempts.rewinds = 0;
                }
                if attempts.rewinds < *max {
                    attempts.rewinds += 1;
                    Action::Rewind
                } else {
                    then.decide(site, failure, attempts, pause)
                }
            }
        }
    }
}

impl Attempts {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            sequence: u64::MAX,
            batch: u64::MAX,
            rng: seed | 1,
            ..Self::default()
        }
    }

    /// A delay drawn uniformly from `[ceiling / 2, ceiling]` (xorshift; no need for quality).
    fn jitter(&mut self, ceiling: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let nanos = ceiling.as_nanos() as u64;
        let half = nanos / 2;
        Duration::from_nanos(half + self.rng % (nanos - half + 1))
    }
}
