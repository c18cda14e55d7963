//! The concurrency shim: every atomic, cell, lock and thread primitive the ring uses comes
//! from here.
//!
//! Normally these are `std`, `parking_lot` and `crossbeam-utils` types; built with
//! `RUSTFLAGS="--cfg loom"` they are loom's, so the model checker sees every shared access.
//! Nothing else in the crate imports `std::sync::atomic`, `std::cell::UnsafeCell`,
//! `std::thread` or `parking_lot` directly.
//!
//! The shim is public so that the `peregrine-loom-tests` package can drive the same
//! primitives; it is not part of the stable API.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

/// A mutex that may be held while the holder blocks on another model thread (joining), so
/// loom must see it; cold bookkeeping that is never held across a wait uses `std` directly.
#[cfg(loom)]
pub(crate) use loom::sync::Mutex as ModelMutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex as ModelMutex;

pub(crate) use crossbeam_utils::CachePadded;

/// A hint that the caller is spinning; under loom it yields so the model checker can
/// schedule the thread that will make progress.
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives up the rest of the time slice.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Sleeps for `d` (under loom: yields, since loom does not model time).
#[inline]
pub(crate) fn sleep(d: std::time::Duration) {
    #[cfg(loom)]
    {
        let _ = d;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    std::thread::sleep(d);
}

/// Thread spawning and handles.
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{current, Builder, JoinHandle, ThreadId};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{current, Builder, JoinHandle, ThreadId};
}

/// `UnsafeCell` with the `with` / `with_mut` API of loom, so accesses are checked under
/// loom and compile to plain pointer reads otherwise.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared pointer to the value.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with an exclusive pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A mutex and condition variable pair with one API over parking_lot and loom.
#[derive(Debug)]
pub(crate) struct Parker {
    #[cfg(not(loom))]
    lock: parking_lot::Mutex<()>,
    #[cfg(not(loom))]
    cond: parking_lot::Condvar,
    #[cfg(loom)]
    lock: loom::sync::Mutex<()>,
    #[cfg(loom)]
    cond: loom::sync::Condvar,
}

/// Outcome of [`Parker::park`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Notified (or spuriously woken).
    Notified,
    /// The deadline passed.
    TimedOut,
}

impl Parker {
    pub(crate) fn new() -> Self {
        #[cfg(not(loom))]
        return Self {
            lock: parking_lot::Mutex::new(()),
            cond: parking_lot::Condvar::new(),
        };
        #[cfg(loom)]
        return Self {
            lock: loom::sync::Mutex::new(()),
            cond: loom::sync::Condvar::new(),
        };
    }

    /// Locks, runs `check` under the lock; if it returns `false`, waits for a notification
    /// (or the deadline) and returns how it woke. `check` returning `true` returns
    /// `Notified` without waiting.
    pub(crate) fn park(
        &self,
        deadline: Option<std::time::Instant>,
        check: impl FnOnce() -> bool,
    ) -> Woken {
        #[cfg(not(loom))]
        {
            let mut guard = self.lock.lock();
            if check() {
                return Woken::Notified;
            }
            match deadline {
                None => {
                    self.cond.wait(&mut guard);
                    Woken::Notified
                }
                Some(d) => {
                    if self.cond.wait_until(&mut guard, d).timed_out() {
                        Woken::TimedOut
                    } else {
                        Woken::Notified
                    }
                }
            }
        }
        #[cfg(loom)]
        {
            // loom does not model time: a deadline is treated as "none".
            let _ = deadline;
            let guard = self.lock.lock().unwrap();
            if check() {
                return Woken::Notified;
            }
            drop(self.cond.wait(guard).unwrap());
            Woken::Notified
        }
    }

    /// Takes the lock (so a waiter between its check and its wait cannot miss this) and
    /// wakes every waiter.
    pub(crate) fn notify_all(&self) {
        #[cfg(not(loom))]
        {
            let _guard = self.lock.lock();
            self.cond.notify_all();
        }
        #[cfg(loom)]
        {
            let _guard = self.lock.lock().unwrap();
            self.cond.notify_all();
        }
    }
}

/// Deliberate bugs for the mutation tests of `peregrine-loom-tests`.
///
/// Built with `--cfg peregrine_mutation="NAME"`, one check or ordering of the ring is
/// weakened; the loom model that guards it must then fail. Normal builds compile every
/// switch to `false`.
pub(crate) mod mutation {
    /// `Sequence::set`/`get` use Relaxed instead of Release/Acquire.
    pub(crate) const SEQUENCE_RELAXED: bool = cfg!(peregrine_mutation = "sequence_relaxed");
    /// Producers claim without waiting for the gating stages.
    pub(crate) const NO_GATING: bool = cfg!(peregrine_mutation = "no_gating");
    /// Multi-producer readers trust the claim counter and skip the availability words.
    pub(crate) const SKIP_AVAILABILITY: bool = cfg!(peregrine_mutation = "skip_availability");
    /// The single-producer cursor advances slot by slot inside a batch publish.
    pub(crate) const BATCH_PER_SLOT: bool = cfg!(peregrine_mutation = "batch_per_slot");
    /// A stamped batch's first slot is stamped before the cursor moves past the batch, so a
    /// reader that finds the stamp can read a cursor that stops short of the batch's end.
    pub(crate) const STAMP_IN_ORDER: bool = cfg!(peregrine_mutation = "stamp_in_order");
    /// Slot stamps are stored Relaxed, publishing the stamp without the event.
    pub(crate) const STAMP_RELAXED: bool = cfg!(peregrine_mutation = "stamp_relaxed");
    /// Gated stages read behind the producer cursor instead of their dependencies.
    pub(crate) const BARRIER_IGNORES_DEPS: bool = cfg!(peregrine_mutation = "barrier_ignores_deps");
    /// `Notifier::signal` and `Notifier::wait` drop their SeqCst fences.
    pub(crate) const NOTIFIER_NO_FENCE: bool = cfg!(peregrine_mutation = "notifier_no_fence");
    /// Readers stop as soon as they see the ring closed, without a last look.
    pub(crate) const CLOSE_NO_RECHECK: bool = cfg!(peregrine_mutation = "close_no_recheck");
    /// Producers waiting for room ignore a halt.
    pub(crate) const HALT_IGNORED: bool = cfg!(peregrine_mutation = "halt_ignored");
    /// A pool worker marks the event it just took as handled before handling it.
    pub(crate) const POOL_EARLY_RELEASE: bool = cfg!(peregrine_mutation = "pool_early_release");
}
