//! [`Core`]: the state a ring's producers, stages and handle share.

use std::sync::Mutex;

use crate::buffer::Slots;
use crate::error::StageProgress;
use crate::sequence::{minimum, Sequence};
use crate::sequencer::Sequencer;
use crate::sync::thread::{JoinHandle, ThreadId};
use crate::sync::{Arc, AtomicBool, AtomicU8, AtomicUsize, CachePadded, Ordering};
use crate::telemetry::{StageStats, Telemetry};
use crate::wait::{Notifier, WaitStrategy};

/// [`Control::state`] bit: no more events will come (last producer dropped, or shutdown):
/// stages drain what is published, then stop; producers are refused.
pub(crate) const CLOSED: u8 = 1;
/// [`Control::state`] bit: stop at once: stages stop at the next batch boundary, producers
/// get `Halted` instead of waiting.
pub(crate) const HALTED: u8 = 2;

/// Read-mostly flags, on their own cache line so that hot sequence writes never evict them.
#[derive(Debug)]
pub(crate) struct Control {
    /// [`CLOSED`] and [`HALTED`] bits: one load tells a producer both.
    pub(crate) state: AtomicU8,
}

/// A stage (or pool worker, or poller) as the ring handle sees it.
#[derive(Debug)]
pub(crate) struct StageInfo {
    pub(crate) name: String,
    pub(crate) sequence: Arc<Sequence>,
    pub(crate) stats: Arc<StageStats>,
    /// True while its thread runs (always false for a poller).
    pub(crate) running: Arc<AtomicBool>,
}

/// Everything shared by one ring.
#[derive(Debug)]
pub(crate) struct Core<E, S: Sequencer> {
    pub(crate) slots: Slots<E, S::Stamp>,
    pub(crate) sequencer: S,
    /// Sequences of the stages no other stage depends on: producers wait for these.
    pub(crate) gating: Box<[Arc<Sequence>]>,
    /// How stages wait for events.
    pub(crate) wait: WaitStrategy,
    /// What producers do when the ring is full.
    pub(crate) when_full: crate::producer::WhenFull,
    /// Whether anyone (stage or producer) may park, so sequence moves must signal.
    pub(crate) parks: bool,
    /// `when_full` waits by a strategy with no deadline (the publish fast path).
    pub(crate) plain_wait: bool,
    pub(crate) notifier: Notifier,
    /// Times a producer found the ring full (slow path only).
    pub(crate) stalls: CachePadded<crate::sync::AtomicU64>,
    pub(crate) control: CachePadded<Control>,
    /// Live producers; the last one to drop closes the ring. Written on clone and drop
    /// only, so it lives away from the hot flags.
    pub(crate) producers: AtomicUsize,
    /// Stage threads still running.
    pub(crate) running: AtomicUsize,
    /// Serialises joiners, so a second joiner never mistakes a list taken by the first
    /// for threads that have finished.
    pub(crate) joining: crate::sync::ModelMutex<()>,
    pub(crate) stages: Box<[StageInfo]>,
    /// Cold bookkeeping (not part of any lock-free protocol).
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    /// Every stage thread ever started (kept after joining, unlike `threads`).
    pub(crate) thread_ids: Mutex<Vec<ThreadId>>,
    /// The failure that halted the ring: (stage, failure as text).
    pub(crate) failure: Mutex<Option<(String, String)>>,
}

impl<E, S: Sequencer> Core<E, S> {
    #[inline(always)]
    pub(crate) fn is_halted(&self) -> bool {
        // Relaxed: the flag only asks the reader to stop; no data is published with it.
        self.control.state.load(Ordering::Relaxed) & HALTED != 0
    }

    /// The state bits for a producer about to claim (Relaxed: nothing is published with
    /// them; a claim racing a close is reported by shutdown, see `Ring::shutdown`).
    #[inline(always)]
    pub(crate) fn state(&self) -> u8 {
        self.control.state.load(Ordering::Relaxed)
    }

    /// Acquire: pairs with the Release in `close`, so whoever sees `closed` also sees every
    /// publish made before it.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.control.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Signals parked waiters after a sequence moved, when the strategy can park.
    #[inline(always)]
    pub(crate) fn signal(&self) {
        if self.parks {
            self.notifier.signal();
        }
    }

    /// No more events will be published: stages drain, then stop.
    pub(crate) fn close(&self) {
        // Release: every publish before the close is visible to a stage that sees it.
        self.control.state.fetch_or(CLOSED, Ordering::Release);
        self.notifier.signal_all();
    }

    /// Stop now: stages stop at their next batch boundary, producers stop waiting.
    pub(crate) fn halt(&self) {
        self.control.state.fetch_or(HALTED, Ordering::Release);
        self.notifier.signal_all();
    }

    /// The slowest gating stage.
    #[inline]
    pub(crate) fn gating_minimum(&self) -> u64 {
        minimum(&self.gating, u64::MAX)
    }

    /// Each stage's progress: the name, sequence and lag of its telemetry.
    pub(crate) fn progress(&self) -> Vec<StageProgress> {
        self.telemetry()
            .stages
            .into_iter()
            .map(|s| StageProgress {
                name: s.name,
                sequence: s.sequence,
                remaining: s.lag,
            })
            .collect()
    }

    pub(crate) fn telemetry(&self) -> Telemetry {
        let cursor = self.sequencer.claimed();
        Telemetry {
            cursor,
            producer_stalls: self.stalls.load(Ordering::Relaxed),
            stages: self
                .stages
                .iter()
                .map(|s| s.stats.snapshot(&s.name, s.sequence.get(), cursor))
                .collect(),
        }
    }

    /// True if the calling thread is one of this ring's stage threads.
    pub(crate) fn on_stage_thread(&self) -> bool {
        let me = crate::sync::thread::current().id();
        lock(&self.thread_ids).contains(&me)
    }

    /// Joins every stage thread (except the caller's own). Joiners are serialised: when
    /// this returns, every thread it did not skip has finished.
    pub(crate) fn join_threads(&self) {
        let _one_at_a_time = self.joining.lock().unwrap_or_else(|p| p.into_inner());
        let me = crate::sync::thread::current().id();
        let taken: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        let mut mine = Vec::new();
        for t in taken {
            if t.thread().id() == me {
                mine.push(t);
            } else {
                // Stage bodies catch panics themselves, so join cannot fail in a way that
                // matters here.
                let _ = t.join();
            }
        }
        lock(&self.threads).extend(mine);
    }

    /// Drops the handles of the stage threads (they run on, detached).
    pub(crate) fn detach_threads(&self) {
        drop(std::mem::take(&mut *lock(&self.threads)));
    }

    /// Names of the stage threads still running.
    pub(crate) fn running_stages(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter(|s| s.running.load(Ordering::Acquire))
            .map(|s| s.name.clone())
            .collect()
    }
}

/// Locks a cold-path mutex, recovering from poisoning (the data is plain bookkeeping).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
