//! The stage loops: LMAX's batch event processor (one thread per stage) and work
//! processor (one thread per pool worker), with failure policies.
//!
//! A batch runs inside one `catch_unwind`: nothing is paid while no handler panics. When a
//! handler fails (error or panic), the stage's [`FailurePolicy`] decides, at the failing
//! sequence, whether to retry it, skip it, replay the batch, or halt.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::buffer::{Slots, StampCell};
use crate::core::{lock, Core};
use crate::failure::{Action, Attempts, Failure, FailurePolicy, Site};
use crate::handler::{BoxError, EventHandler, ExclusiveHandler, TryEventHandler};
use crate::reader::{Reader, Ready};
use crate::sequencer::Sequencer;
use crate::sync::{mutation, Arc, AtomicU64, CachePadded, Ordering};
use crate::telemetry::StageStats;

/// A handler as the stage loop calls it: shared or exclusive access to the slot.
pub(crate) trait Invoke<E>: Send + 'static {
    fn start(&mut self);
    fn shutdown(&mut self);
    fn timeout(&mut self, sequence: u64);
    fn batch_start(&mut self, size: u64, depth: u64);
    /// Handles the event at `sequence`.
    ///
    /// # Safety
    ///
    /// `sequence` is published and not yet passed by this stage, and, for an exclusive
    /// handler, no other stage can read the slot now (the builder's exclusivity check).
    unsafe fn event<T: StampCell>(
        &mut self,
        slots: &Slots<E, T>,
        sequence: u64,
        end_of_batch: bool,
    ) -> Result<(), BoxError>;
}

/// The lifecycle hooks are the same for every kind of handler: forward them.
macro_rules! forward_hooks {
    () => {
        fn start(&mut self) {
            self.0.on_start()
        }
        fn shutdown(&mut self) {
            self.0.on_shutdown()
        }
        fn timeout(&mut self, sequence: u64) {
            self.0.on_timeout(sequence)
        }
        #[inline(always)]
        fn batch_start(&mut self, size: u64, depth: u64) {
            self.0.on_batch_start(size, depth)
        }
    };
}

/// An [`EventHandler`] reading the event through `&E`.
pub(crate) struct Plain<H>(pub(crate) H);

impl<E, H: EventHandler<E>> Invoke<E> for Plain<H> {
    forward_hooks!();
    #[inline(always)]
    unsafe fn event<T: StampCell>(
        &mut self,
        slots: &Slots<E, T>,
        s: u64,
        eob: bool,
    ) -> Result<(), BoxError> {
        // SAFETY: the caller guarantees `s` is published and still held by this stage.
        unsafe { slots.read(s, |e| self.0.on_event(e, s, eob)) };
        Ok(())
    }
}

/// A [`TryEventHandler`] reading the event through `&E`.
pub(crate) struct Shared<H>(pub(crate) H);

impl<E, H: TryEventHandler<E>> Invoke<E> for Shared<H> {
    forward_hooks!();
    #[inline(always)]
    unsafe fn event<T: StampCell>(
        &mut self,
        slots: &Slots<E, T>,
        s: u64,
        eob: bool,
    ) -> Result<(), BoxError> {
        // SAFETY: the caller guarantees `s` is published and still held by this stage.
        unsafe { slots.read(s, |e| self.0.on_event(e, s, eob).map_err(Into::into)) }
    }
}

/// An [`ExclusiveHandler`] writing the event through `&mut E`.
pub(crate) struct Exclusive<H>(pub(crate) H);

impl<E, H: ExclusiveHandler<E>> Invoke<E> for Exclusive<H> {
    forward_hooks!();
    #[inline(always)]
    unsafe fn event<T: StampCell>(
        &mut self,
        slots: &Slots<E, T>,
        s: u64,
        eob: bool,
    ) -> Result<(), BoxError> {
        // SAFETY: the caller guarantees `s` is published, held by this stage, and that no
        // other stage reads it now: the builder only accepts an exclusive stage when every
        // other stage is upstream of it (done with the slot, acquired through our barrier)
        // or downstream (gated on our sequence, so it reads after our Release).
        let event = unsafe { &mut *slots.ptr_mut(s) };
        self.0.on_event(event, s, eob).map_err(Into::into)
    }
}

/// What a stage thread needs besides its reader.
pub(crate) struct StageContext<E> {
    pub(crate) name: String,
    pub(crate) pacer: Pacer,
    pub(crate) policy: FailurePolicy<E>,
    pub(crate) stats: Arc<StageStats>,
}

/// Outcome of handling one batch.
enum Batch {
    Done,
    /// Halt the ring; the failure as text.
    Halt(String),
}

/// Handles `start .. stop` with `invoke`, applying the failure policy. Does not advance the
/// stage's sequence.
#[inline(always)]
fn handle_batch<E: 'static, S: Sequencer, I: Invoke<E>>(
    core: &Core<E, S>,
    invoke: &mut I,
    ctx: &StageContext<E>,
    attempts: &mut Attempts,
    start: u64,
    stop: u64,
    depth: u64,
) -> Batch {
    let slots = &core.slots;
    let mut cursor = start;
    loop {
        let result = catch_unwind(AssertUnwindSafe(|| {
            if cursor == start {
                // Inside the catch: a panic here goes to the policy like one in on_event.
                invoke.batch_start(stop - start, depth);
            }
            while cursor < stop {
                let s = cursor;
                slots.prefetch_ahead(s, stop);
                // SAFETY: `start .. stop` was read from the barrier (published) and the stage's
                // sequence is still `start`, so the slots are held by this stage.
                if let Err(e) = unsafe { invoke.event(slots, s, s + 1 == stop) } {
                    return Err((s, Failure::Error(e)));
                }
                cursor = s + 1;
            }
            Ok(())
        }));
        let (failed, failure) = match result {
            Ok(Ok(())) => return Batch::Done,
            Ok(Err(f)) => f,
            Err(payload) => (cursor, Failure::from_panic(payload)),
        };
        ctx.stats.failure(failure.to_string());
        // SAFETY: as above; the policy only reads the event.
        let action = unsafe {
            slots.read(failed, |e| {
                let site = Site {
                    stage: &ctx.name,
                    sequence: failed,
                    batch_start: start,
                    event: e,
                };
                ctx.policy
                    .decide(&site, &failure, attempts, &mut |d| pause(core, d))
            })
        };
        match action {
            Action::Retry => cursor = failed,
            Action::Skip => cursor = failed + 1,
            Action::Rewind => cursor = start,
            Action::Halt => return Batch::Halt(failure.to_string()),
        }
        if cursor >= stop {
            return Batch::Done;
        }
    }
}

/// Sleeps `d` for a retry backoff, waking early if the ring halts.
fn pause<E, S: Sequencer>(core: &Core<E, S>, d: std::time::Duration) {
    #[cfg(not(loom))]
    {
        let deadline = std::time::Instant::now() + d;
        let _ = core
            .notifier
            .wait(Some(deadline), || core.is_halted().then_some(()));
    }
    #[cfg(loom)]
    {
        let _ = core;
        crate::sync::sleep(d);
    }
}

/// Waits for the next run of events; `None` when the stage must stop.
#[inline]
fn next_batch<E, S: Sequencer, I: Invoke<E>>(
    reader: &mut Reader<E, S>,
    invoke: &mut I,
) -> Option<u64> {
    loop {
        // Fast path: events already there and no halt; one relaxed flag load per batch.
        let end = reader.available();
        if end > reader.next && !reader.core.is_halted() {
            return Some(end);
        }
        match reader.wait() {
            Ok(Ready::Events(e)) if !reader.core.is_halted() => return Some(e),
            Ok(_) => return None,
            Err(_) => invoke.timeout(reader.next),
        }
    }
}

/// Runs a stage until the ring drains or halts.
pub(crate) fn run<E: 'static, S: Sequencer, I: Invoke<E>>(
    mut reader: Reader<E, S>,
    mut invoke: I,
    mut ctx: StageContext<E>,
) {
    invoke.start();
    let mut attempts = Attempts::new(reader.next ^ 0x9E37_79B9_7F4A_7C15);
    while let Some(end) = next_batch(&mut reader, &mut invoke) {
        let start = reader.next;
        let stop = end.min(start.saturating_add(reader.max_batch));
        let core = &*reader.core;
        match handle_batch(
            core,
            &mut invoke,
            &ctx,
            &mut attempts,
            start,
            stop,
            end - start,
        ) {
            Batch::Done => {
                reader.commit(stop);
                ctx.stats.batch(stop - start);
                ctx.pacer.after_batch(&mut reader, stop - start);
            }
            Batch::Halt(failure) => {
                lock(&core.failure).get_or_insert((ctx.name.clone(), failure));
                core.halt();
                break;
            }
        }
    }
    invoke.shutdown();
}

/// Paces a stage that keeps catching up with a producer still publishing (see
/// [`StageBuilder::stream_backoff`](crate::StageBuilder::stream_backoff)).
pub(crate) struct Pacer {
    /// A batch smaller than this many events (128 bytes of them) is "small".
    small: u64,
    /// Pause length in spin-loop hints; zero turns pacing off.
    spins: u32,
    /// Small batches in a row, each followed by more events already published.
    streak: u32,
}

/// Small batches in a row, with more published after each, before the stage pauses.
const STREAK: u32 = 4;

impl Pacer {
    pub(crate) fn new(pause: std::time::Duration, event_size: usize) -> Self {
        Self {
            small: (128 / event_size.max(1)).max(2) as u64,
            spins: spins_for(pause),
            streak: 0,
        }
    }

    #[inline(always)]
    fn after_batch<E, S: Sequencer>(&mut self, reader: &mut Reader<E, S>, size: u64) {
        if self.spins == 0 {
            return;
        }
        // The read is not wasted: the next batch starts from the cached value.
        let more = reader.available() > reader.next;
        if self.should_pause(size, more) {
            for _ in 0..self.spins {
                crate::sync::spin_loop();
            }
        }
    }

    /// Whether to pause after a batch of `size` events, `more` telling whether further
    /// events were already published when it ended.
    #[inline(always)]
    fn should_pause(&mut self, size: u64, more: bool) -> bool {
        if !more {
            self.streak = 0;
            return false;
        }
        if size >= self.small {
            return false;
        }
        self.streak = self.streak.saturating_add(1);
        self.streak >= STREAK
    }
}

/// How many spin-loop hints last about `pause` on this machine (0 for a zero pause, at
/// least 1 otherwise). The cost of the hint varies from a few to over a hundred cycles
/// between processors, so it is measured once per process.
fn spins_for(pause: std::time::Duration) -> u32 {
    if pause.is_zero() || cfg!(loom) {
        return 0;
    }
    let per_spin = spin_cost_ns();
    ((pause.as_nanos() as f64 / per_spin).round() as u64).clamp(1, u32::MAX as u64) as u32
}

#[cfg(not(loom))]
fn spin_cost_ns() -> f64 {
    static COST: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *COST.get_or_init(|| {
        // The fastest of a few short runs: a preempted run only ever reads slower.
        const SPINS: u32 = 2_000;
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..SPINS {
                    std::hint::spin_loop();
                }
                t.elapsed().as_nanos() as f64 / f64::from(SPINS)
            })
            .fold(f64::INFINITY, f64::min)
            .max(0.1)
    })
}

#[cfg(loom)]
fn spin_cost_ns() -> f64 {
    1.0
}

/// Runs one worker of a pool: each event goes to exactly one worker.
///
/// LMAX's work processor: the pool shares `work`, the next sequence nobody has taken. A
/// worker first sets its own sequence to the value it is about to take (so the pool's
/// minimum never claims an event some worker still holds), then takes it with a
/// compare-and-swap, waits for it to be published, and handles it. A worker's sequence
/// only grows, and stays at or below the event it holds until it has handled it.
pub(crate) fn run_worker<E: 'static, S: Sequencer, I: Invoke<E>>(
    mut reader: Reader<E, S>,
    work: Arc<CachePadded<AtomicU64>>,
    mut invoke: I,
    ctx: StageContext<E>,
) {
    invoke.start();
    // A worker resumes at whichever sequence it takes, so stamps cannot tell it anything.
    reader.read_by_cursor();
    let mut attempts = Attempts::new(reader.next ^ 0x2545_F491_4F6C_DD1D);
    loop {
        let taken = loop {
            let next = work.load(Ordering::Relaxed);
            // Release (inside `set`): our earlier slot reads happen before a producer or a
            // downstream stage acquires this value.
            reader.sequence.set(next);
            // Relaxed: the CAS only decides which worker owns `next`; slot data is
            // synchronised through the barrier below.
            if work
                .compare_exchange_weak(next, next + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                if mutation::POOL_EARLY_RELEASE {
                    // The bug: the pool's minimum can pass `next` while this worker still
                    // reads it, so a producer may overwrite the slot.
                    reader.sequence.set(next + 1);
                }
                // Our sequence moved: wake downstream stages or producers parked on it.
                reader.core.signal();
                break next;
            }
        };
        reader.next = taken;
        let Some(end) = next_batch(&mut reader, &mut invoke) else {
            break;
        };
        let core = &*reader.core;
        match handle_batch(
            core,
            &mut invoke,
            &ctx,
            &mut attempts,
            taken,
            taken + 1,
            end - taken,
        ) {
            Batch::Done => {
                ctx.stats.batch(1);
            }
            Batch::Halt(failure) => {
                lock(&core.failure).get_or_insert((ctx.name.clone(), failure));
                core.halt();
                break;
            }
        }
    }
    invoke.shutdown();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stage_pauses_only_in_a_sustained_stream_of_small_batches() {
        let mut p = Pacer::new(Duration::from_nanos(500), 8);
        assert_eq!(p.small, 16, "128 bytes of 8-byte events");
        assert!(p.spins >= 1);
        // Three small batches with more behind each: not yet.
        for _ in 0..STREAK - 1 {
            assert!(!p.should_pause(3, true));
        }
        // The fourth in a row: pause, and keep pausing while the stream lasts.
        assert!(p.should_pause(3, true));
        assert!(p.should_pause(1, true));
        // A large batch does not pause and does not end the stream.
        assert!(!p.should_pause(500, true));
        assert!(p.should_pause(2, true));
        // Caught up: the stream is over; the count starts again.
        assert!(!p.should_pause(2, false));
        for _ in 0..STREAK - 1 {
            assert!(!p.should_pause(3, true));
        }
        assert!(p.should_pause(3, true));
    }

    #[test]
    fn single_events_and_short_bursts_never_pause() {
        let mut p = Pacer::new(Duration::from_nanos(500), 8);
        for _ in 0..1_000 {
            // One event, then nothing more published: a latency-bound stage.
            assert!(!p.should_pause(1, false));
        }
        // A burst handled in three small batches, then caught up.
        assert!(!p.should_pause(4, true));
        assert!(!p.should_pause(4, true));
        assert!(!p.should_pause(4, false));
    }

    #[test]
    fn large_events_count_in_events_and_zero_turns_pacing_off() {
        assert_eq!(Pacer::new(Duration::from_nanos(500), 64).small, 2);
        assert_eq!(Pacer::new(Duration::from_nanos(500), 4096).small, 2);
        assert_eq!(Pacer::new(Duration::from_nanos(500), 0).small, 128);
        assert_eq!(Pacer::new(Duration::ZERO, 8).spins, 0);
        assert_eq!(spins_for(Duration::ZERO), 0);
        // Longer pauses take more spins.
        assert!(spins_for(Duration::from_micros(50)) > spins_for(Duration::from_nanos(50)));
    }
}
