//! [`Core`]: the state a ring's producers, stages and handle share.

use std::sync::Mutex;

use crate::buffer::Slots;
use crate::error::StageProgress;
use crate::sequence::{minimum, Sequence};
use crate::sequencer::Sequencer;
use crate::sync::{thread::JoinHandle, Arc, AtomicBool, AtomicUsize, CachePadded, Ordering};
use crate::telemetry::{StageStats, Telemetry};
use crate::wait::{Notifier, WaitStrategy};

/// Read-mostly flags, on their own cache line so that hot sequence writes never evict them.
#[derive(Debug)]
pub(crate) struct Control {
    /// Set when no more events will come (last producer dropped, or shutdown): stages drain
    /// what is published, then stop.
    pub(crate) closed: AtomicBool,
    /// Set to stop at once: stages stop at the next batch boundary, producers get
    /// `Halted` instead of waiting.
    pub(crate) halted: AtomicBool,
    /// Live producers; the last one to drop closes the ring.
    pub(crate) producers: AtomicUsize,
}

/// A stage as the ring handle sees it.
#[derive(Debug)]
pub(crate) struct StageInfo {
    pub(crate) name: String,
    pub(crate) sequence: Arc<Sequence>,
    pub(crate) stats: Arc<StageStats>,
}

/// A running stage thread.
#[derive(Debug)]
pub(crate) struct StageThread {
    pub(crate) name: String,
    pub(crate) handle: JoinHandle<()>,
}

/// Everything shared by one ring.
#[derive(Debug)]
pub(crate) struct Core<E, S> {
    pub(crate) slots: Slots<E>,
    pub(crate) sequencer: S,
    /// Sequences of the stages no other stage depends on: producers wait for these.
    pub(crate) gating: Box<[Arc<Sequence>]>,
    /// How stages wait for events.
    pub(crate) wait: WaitStrategy,
    /// What producers do when the ring is full.
    pub(crate) when_full: crate::producer::WhenFull,
    /// Whether anyone (stage or producer) may park, so sequence moves must signal.
    pub(crate) parks: bool,
    pub(crate) notifier: Notifier,
    /// Times a producer found the ring full (slow path only).
    pub(crate) stalls: CachePadded<crate::sync::AtomicU64>,
    pub(crate) control: CachePadded<Control>,
    pub(crate) stages: Box<[StageInfo]>,
    /// Cold bookkeeping (not part of any lock-free protocol).
    pub(crate) threads: Mutex<Vec<StageThread>>,
    /// The failure that halted the ring: (stage, failure as text).
    pub(crate) failure: Mutex<Option<(String, String)>>,
}

impl<E, S: Sequencer> Core<E, S> {
    #[inline(always)]
    pub(crate) fn is_halted(&self) -> bool {
        // Relaxed: the flag only asks the reader to stop; no data is published with it.
        self.control.halted.load(Ordering::Relaxed)
    }

    /// Acquire: pairs with the Release in `close`, so whoever sees `closed` also sees every
    /// publish made before it.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.control.closed.load(Ordering::Acquire)
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
        self.control.closed.store(true, Ordering::Release);
        self.notifier.signal_all();
    }

    /// Stop now: stages stop at their next batch boundary, producers stop waiting.
    pub(crate) fn halt(&self) {
        self.control.halted.store(true, Ordering::Release);
        self.notifier.signal_all();
    }

    /// The slowest gating stage.
    #[inline]
    pub(crate) fn gating_minimum(&self) -> u64 {
        minimum(&self.gating, u64::MAX)
    }

    pub(crate) fn progress(&self) -> Vec<StageProgress> {
        let cursor = self.sequencer.claimed();
        self.stages
            .iter()
            .map(|s| {
                let sequence = s.sequence.get();
                StageProgress {
                    name: s.name.clone(),
                    sequence,
                    remaining: cursor.saturating_sub(sequence),
                }
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

    /// Joins every stage thread that has finished (or all of them when `all`), except the
    /// calling thread. Returns the names of threads still running.
    pub(crate) fn join_threads(&self, all: bool) -> Vec<String> {
        let me = crate::sync::thread::current().id();
        let taken: Vec<StageThread> = std::mem::take(&mut *lock(&self.threads));
        let mut left = Vec::new();
        let mut still = Vec::new();
        for t in taken {
            if t.handle.thread().id() == me || (!all && !is_finished(&t.handle)) {
                left.push(t.name.clone());
                still.push(t);
            } else {
                // The stage body catches panics itself, so join only fails if the
                // runtime could not report; there is nothing more to do with it.
                let _ = t.handle.join();
            }
        }
        lock(&self.threads).extend(still);
        left
    }
}

#[cfg(not(loom))]
fn is_finished(h: &JoinHandle<()>) -> bool {
    h.is_finished()
}

#[cfg(loom)]
fn is_finished(_h: &JoinHandle<()>) -> bool {
    true
}

/// Locks a cold-path mutex, recovering from poisoning (the data is plain bookkeeping).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
