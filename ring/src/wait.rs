//! Wait strategies: what a stage does while no event is ready, and what a producer does
//! while the ring is full.
//!
//! | strategy | latency | CPU while idle | use when |
//! |---|---|---|---|
//! | [`busy_spin`](WaitStrategy::busy_spin) | lowest | one core at 100% | each spinning thread owns an isolated core |
//! | [`yielding`](WaitStrategy::yielding) | low | high, but yields to other runnable threads | a few more threads than cores |
//! | [`sleeping`](WaitStrategy::sleeping) | spin, yield, then sleep in steps | low | background stages, latency not critical |
//! | [`blocking`](WaitStrategy::blocking) | a wake-up (microseconds) | none | more threads than cores; tests; idle-heavy services |
//! | [`phased`](WaitStrategy::phased) | spin, then yield, then park | none once parked | bursty traffic: fast while busy, free while idle |
//!
//! Every strategy takes an optional timeout ([`WaitStrategy::with_timeout`]): a stage that
//! waits that long without an event calls its handler's
//! [`on_timeout`](crate::EventHandler::on_timeout) hook, then keeps waiting.
//!
//! # The parking protocol
//!
//! The blocking and phased strategies park on a [`Notifier`] shared by the whole ring.
//! Whoever advances a sequence (a producer publishing, a stage finishing a batch) calls
//! [`Notifier::signal`], which costs one fence and one load, and takes the lock only when
//! a thread is actually parked. A parking thread announces itself (increments the waiter
//! count), issues a SeqCst fence, and re-checks its condition under the lock before
//! sleeping; the signaller stores its sequence, issues a SeqCst fence, then reads the
//! waiter count. The two fences are totally ordered, so either the parking thread sees the
//! new sequence or the signaller sees the waiter, and no wake-up is lost (modelled in
//! `peregrine-loom-tests`).
//!
//! Costs to know: in a ring where anything may park (a blocking or phased strategy, or
//! `WhenFull::Park`), every publish and every batch commit pays one SeqCst fence (an
//! `mfence`-class instruction on x86), whether or not anyone is parked. Busy-spin, yield and
//! sleep rings pay nothing. The notifier is one per ring: while any thread is parked, every
//! sequence move wakes all parked threads, which re-check and park again; a ring whose
//! stages idle often while others are busy may prefer `phased` with a longer spin.

use std::time::{Duration, Instant};

use crate::sync::{fence, mutation, spin_loop, AtomicUsize, CachePadded, Ordering, Parker, Woken};

/// How spins are counted between clock reads in the phased strategy.
const SPINS_PER_CLOCK_READ: u32 = 256;

/// What a waiting thread does while its condition is not met, plus an optional timeout.
///
/// Cheap to copy; one value configures a whole ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStrategy {
    kind: Kind,
    timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BusySpin,
    Yielding {
        spins: u32,
    },
    Sleeping {
        spins: u32,
        yields: u32,
        sleep: Duration,
    },
    Blocking,
    Phased {
        spin: Duration,
        yield_for: Duration,
    },
}

/// A wait ended without its condition being met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl WaitStrategy {
    /// Spin on the sequence with a CPU pause hint: lowest latency, burns a core.
    pub const fn busy_spin() -> Self {
        Self::new(Kind::BusySpin)
    }

    /// Yield the time slice between checks, without spinning first.
    ///
    /// Meant for more busy threads than cores, where a spin only holds a core that the
    /// thread being waited for may need: 4 threads on 2 cores ran pipeline, multicast and
    /// diamond rings 1.2x to 1.4x faster than with 100 pause hints before the first yield
    /// (about 1 µs on the machine of BENCHMARKS.md), and shorter spins (4 or 10 hints)
    /// cost throughput there too. A yield with nothing else to run returns at once (160 ns
    /// there).
    pub const fn yielding() -> Self {
        Self::yielding_after(0)
    }

    /// Spin `spins` times (a pause hint each, 10 to 50 ns depending on the processor), then
    /// yield the time slice between checks: the LMAX yielding strategy (which spins 100
    /// times), for when there are cores to spare and a hand-off that comes within the spin
    /// should be seen without a system call. [`phased`](Self::phased) does the same with
    /// the spin given as a time, and parks at the end.
    pub const fn yielding_after(spins: u32) -> Self {
        Self::new(Kind::Yielding { spins })
    }

    /// Spin 100 times, yield 100 times, then sleep 50 µs between checks.
    pub const fn sleeping() -> Self {
        Self::sleeping_for(Duration::from_micros(50))
    }

    /// Like [`sleeping`](Self::sleeping) with a chosen sleep between checks.
    pub const fn sleeping_for(sleep: Duration) -> Self {
        Self::new(Kind::Sleeping {
            spins: 100,
            yields: 100,
            sleep,
        })
    }

    /// Park on a condition variable until signalled; publishers signal only when a thread
    /// is parked.
    pub const fn blocking() -> Self {
        Self::new(Kind::Blocking)
    }

    /// Spin for 10 µs, yield for 100 µs, then park as [`blocking`](Self::blocking) does.
    pub const fn phased() -> Self {
        Self::phased_for(Duration::from_micros(10), Duration::from_micros(100))
    }

    /// Spin for `spin`, yield for `yield_for`, then park.
    pub const fn phased_for(spin: Duration, yield_for: Duration) -> Self {
        Self::new(Kind::Phased { spin, yield_for })
    }

    const fn new(kind: Kind) -> Self {
        Self {
            kind,
            timeout: None,
        }
    }

    /// Calls the stage handler's `on_timeout` hook whenever the stage has waited `timeout`
    /// without an event.
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The timeout set by [`with_timeout`](Self::with_timeout).
    pub const fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether a thread using this strategy may park on the notifier, so sequence updates
    /// must signal it.
    #[inline(always)]
    pub(crate) const fn parks(&self) -> bool {
        matches!(self.kind, Kind::Blocking | Kind::Phased { .. })
    }

    /// True when a waiting thread keeps a core busy (spins or yields without ever parking
    /// or sleeping): the builder counts these against the cores the process may use.
    pub const fn is_busy(&self) -> bool {
        matches!(self.kind, Kind::BusySpin | Kind::Yielding { .. })
    }

    /// Waits until `poll` returns `Some`, following the strategy.
    ///
    /// `poll` must be cheap and must itself notice shutdown or halt (returning `Some`), so a
    /// waiter is never stranded. With a `deadline`, returns `Err(TimedOut)` once it passes.
    #[inline]
    pub fn wait<T>(
        &self,
        notifier: &Notifier,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Option<T>,
    ) -> Result<T, TimedOut> {
        let expired = |deadline: Option<Instant>| deadline.is_some_and(|d| Instant::now() >= d);
        match self.kind {
            Kind::BusySpin => {
                let mut spins = 0u32;
                loop {
                    if let Some(v) = poll() {
                        return Ok(v);
                    }
                    spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins % SPINS_PER_CLOCK_READ == 0 && expired(deadline) {
                        return Err(TimedOut);
                    }
                }
            }
            Kind::Yielding { spins } => {
                let mut n = 0u32;
                loop {
                    if let Some(v) = poll() {
                        return Ok(v);
                    }
                    if n < spins {
                        n += 1;
                        spin_loop();
                    } else {
                        crate::sync::yield_now();
                        if expired(deadline) {
                            return Err(TimedOut);
                        }
                    }
                }
            }
            Kind::Sleeping {
                spins,
                yields,
                sleep,
            } => {
                let mut n = 0u32;
                loop {
                    if let Some(v) = poll() {
                        return Ok(v);
                    }
                    if n < spins {
                        spin_loop();
                    } else if n < spins + yields {
                        crate::sync::yield_now();
                    } else {
                        if expired(deadline) {
                            return Err(TimedOut);
                        }
                        crate::sync::sleep(sleep);
                    }
                    n = n.saturating_add(1);
                }
            }
            Kind::Blocking => notifier.wait(deadline, poll),
            Kind::Phased { spin, yield_for } => {
                let start = Instant::now();
                let mut spins = 0u32;
                loop {
                    if let Some(v) = poll() {
                        return Ok(v);
                    }
                    spins = spins.wrapping_add(1);
                    if spins % SPINS_PER_CLOCK_READ != 0 {
                        spin_loop();
                        continue;
                    }
                    let waited = start.elapsed();
                    if expired(deadline) {
                        return Err(TimedOut);
                    }
                    if waited < spin {
                        spin_loop();
                    } else if waited < spin + yield_for {
                        crate::sync::yield_now();
                    } else {
                        return notifier.wait(deadline, poll);
                    }
                }
            }
        }
    }
}

impl Default for WaitStrategy {
    /// [`phased`](Self::phased): fast under load and idle-friendly, safe on any core count.
    fn default() -> Self {
        Self::phased()
    }
}

/// The ring-wide parking lot for blocking and phased waiters.
///
/// See the [module docs](self) for the protocol.
#[derive(Debug)]
pub struct Notifier {
    /// Number of threads between announcing themselves and leaving [`Notifier::wait`],
    /// plus registered async wakers.
    waiters: CachePadded<AtomicUsize>,
    parker: Parker,
    /// Tasks waiting for a sequence to move (async adapters).
    #[cfg(feature = "async")]
    wakers: std::sync::Mutex<Vec<std::task::Waker>>,
}

impl Notifier {
    /// A notifier with no waiters.
    pub fn new() -> Self {
        Self {
            waiters: CachePadded::new(AtomicUsize::new(0)),
            parker: Parker::new(),
            #[cfg(feature = "async")]
            wakers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Wakes every parked thread if there is one. Call after storing the sequence that
    /// waiters may be waiting for.
    #[inline]
    pub fn signal(&self) {
        // SeqCst fence: orders the caller's preceding sequence store before the waiter
        // count load, pairing with the fence in `wait` (see the module docs).
        if !mutation::NOTIFIER_NO_FENCE {
            fence(Ordering::SeqCst);
        }
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.parker.notify_all();
            #[cfg(feature = "async")]
            self.wake_tasks();
        }
    }

    /// Wakes every parked thread unconditionally (shutdown, halt).
    pub fn signal_all(&self) {
        fence(Ordering::SeqCst);
        self.parker.notify_all();
        #[cfg(feature = "async")]
        self.wake_tasks();
    }

    /// Registers `waker` to be woken by the next signal. The caller must re-check its
    /// condition after this returns (the same protocol as a parking thread).
    #[cfg(feature = "async")]
    pub fn register(&self, waker: &std::task::Waker) {
        let mut wakers = crate::core::lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
            self.waiters.fetch_add(1, Ordering::Relaxed);
        }
        drop(wakers);
        // SeqCst fence: orders the registration before the caller's re-check, pairing
        // with the fence in `signal`.
        fence(Ordering::SeqCst);
    }

    #[cfg(feature = "async")]
    fn wake_tasks(&self) {
        let wakers = std::mem::take(&mut *crate::core::lock(&self.wakers));
        if !wakers.is_empty() {
            self.waiters.fetch_sub(wakers.len(), Ordering::Relaxed);
            for w in wakers {
                w.wake();
            }
        }
    }

    /// Parks until `poll` returns `Some` or the deadline passes.
    pub fn wait<T>(
        &self,
        deadline: Option<Instant>,
        mut poll: impl FnMut() -> Option<T>,
    ) -> Result<T, TimedOut> {
        loop {
            if let Some(v) = poll() {
                return Ok(v);
            }
            self.waiters.fetch_add(1, Ordering::Relaxed);
            // SeqCst fence: orders the waiter count increment before re-reading the
            // sequences inside `poll`, pairing with the fence in `signal`.
            if !mutation::NOTIFIER_NO_FENCE {
                fence(Ordering::SeqCst);
            }
            let mut found = None;
            let woken = self.parker.park(deadline, || {
                found = poll();
                found.is_some()
            });
            self.waiters.fetch_sub(1, Ordering::Relaxed);
            if let Some(v) = found {
                return Ok(v);
            }
            if woken == Woken::TimedOut {
                return poll().ok_or(TimedOut);
            }
        }
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}
