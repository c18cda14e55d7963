//! Sequencers: how producers claim slots and make them visible.
//!
//! Both follow the LMAX Disruptor (Thompson, Farley et al., 2011):
//!
//! - [`Single`]: one producer, no read-modify-write at all. The producer keeps its next
//!   sequence (or, while it streams ahead of the stages, reads it back from the cursor it
//!   alone writes) and a cached copy of the slowest gating stage in its own memory,
//!   refreshing the cache only when the ring looks full; publishing is one Release store of
//!   the cursor.
//! - [`Stamped`]: [`Single`], and each slot carries a stamp in the event's cache line. A single
//!   event's slot is stamped (Release) before the cursor moves, a batch's first slot after.
//!   A waiting stage gated only on the producer finds the next event by its stamp, and a
//!   batch or a backlog by the cursor.
//! - [`Multi`]: any number of producers claim with one `fetch_add` on a shared claim
//!   counter and publish by writing a per-slot availability word. Stages never trust the
//!   claim counter alone: they scan availability words, so a slot that is claimed but not yet
//!   published is never read ("highest published sequence" in LMAX).
//!
//! Sequences count events (see [`crate::Sequence`]); a producer may claim sequence `s` only
//! when every gating stage has handled `s - capacity`, so it never overwrites a slot a
//! stage has not finished with.

use std::marker::PhantomData;

use crate::buffer::{NoStamp, Stamp, StampCell};
use crate::sequence::{minimum, Sequence};
use crate::sync::{fence, mutation, spin_loop, Arc, AtomicU64, CachePadded, Ordering};

mod sealed {
    pub trait Sealed {}
}

/// The claim/publish protocol of a ring: [`Single`], [`Stamped`] or [`Multi`]. Sealed.
pub trait Sequencer: sealed::Sealed + Send + Sync + Sized + 'static {
    /// State each producer keeps in its own memory.
    #[doc(hidden)]
    type Local: Send + std::fmt::Debug;

    /// What each slot carries besides its event.
    #[doc(hidden)]
    type Stamp: StampCell;

    /// Whether publishing also stamps the slots (see `Slots::stamp_one` and
    /// `Slots::stamp_batch`), so waiting stages gated only on the producer find events by
    /// the stamps instead of the cursor.
    #[doc(hidden)]
    const STAMPED: bool = <Self::Stamp as StampCell>::ENABLED;

    #[doc(hidden)]
    fn new(capacity: u64) -> Self;

    #[doc(hidden)]
    fn new_local(&self) -> Self::Local;

    /// Claims `n` sequences if the producer's own memory already shows room for them,
    /// without reading any shared state; `None` means "ask [`claim`](Self::claim)", not
    /// "full".
    #[doc(hidden)]
    #[inline(always)]
    fn claim_known(&self, local: &mut Self::Local, n: u64) -> Option<u64> {
        let _ = (local, n);
        None
    }

    /// Claims `n` sequences if there is room without waiting; returns the first.
    #[doc(hidden)]
    fn try_claim(&self, local: &mut Self::Local, n: u64, gating: &[Arc<Sequence>]) -> Option<u64>;

    /// Claims `n` sequences, calling `wait` (which returns `false` to give up) until there is
    /// room. Returns the first, or `None` if `wait` gave up.
    #[doc(hidden)]
    fn claim(
        &self,
        local: &mut Self::Local,
        n: u64,
        gating: &[Arc<Sequence>],
        wait: impl FnMut(u64) -> bool,
    ) -> Option<u64>;

    /// Makes `lo .. hi` visible to stages. Every sequence in the range was claimed by the caller.
    #[doc(hidden)]
    fn publish(&self, local: &mut Self::Local, lo: u64, hi: u64);

    /// The end of the contiguous published run starting at `next` (`next` itself when
    /// nothing past it is published).
    #[doc(hidden)]
    fn published(&self, next: u64) -> u64;

    /// Sequences claimed so far (equals published once producers are quiescent).
    #[doc(hidden)]
    fn claimed(&self) -> u64;
}

/// Waits until `end - capacity <= minimum(gating)`; returns the minimum seen, or `None`
/// if `wait` gave up.
#[inline]
fn wait_for_room(
    end: u64,
    capacity: u64,
    gating: &[Arc<Sequence>],
    mut wait: impl FnMut(u64) -> bool,
) -> Option<u64> {
    let wrap = end - capacity;
    if mutation::NO_GATING {
        return Some(wrap);
    }
    loop {
        // Acquire (inside `Sequence::get`): pairs with each stage's Release store, so the
        // stage's reads of the slot we are about to overwrite happen before our write.
        let min = minimum(gating, u64::MAX);
        if wrap <= min {
            return Some(min);
        }
        if !wait(wrap) {
            return None;
        }
    }
}

/// The single-producer sequencer: no compare-and-swap, no `fetch_add`. `T` is what each
/// slot carries besides its event: nothing (the default), or a publication stamp
/// ([`Stamped`]).
#[derive(Debug)]
pub struct Single<T = NoStamp> {
    capacity: u64,
    /// Published count: events `0 .. cursor` are visible. Written only by the producer,
    /// and also its next sequence to claim (see [`SingleLocal`]).
    cursor: Sequence,
    slots: PhantomData<fn() -> T>,
}

/// The single producer's private state.
///
/// The next claim always starts where the last publish ended (a claim borrows the producer
/// until it is published), so the producer can find it in two places: its own copy `next`,
/// or the cursor it alone writes. Which is cheaper depends on what the stages are doing,
/// and the producer picks again each time it looks at them (once a lap or when the ring is
/// full):
///
/// - **Handing events to waiting stages** (less than `STREAM_LAG`, 64 events, behind): the
///   stages read the cursor after every publish, which takes its line from the producer's
///   cache, so reading it back would wait for the line (about 50 ns a publish in the
///   ping-pong bench). The producer keeps its own copy: one store more per publish.
/// - **Streaming ahead of them** (a backlog of 64 events or more): the stages read
///   the cursor once per batch, the load is served from the producer's own pending store,
///   and the copy's store is the one to save. Stores bound such a producer: each slot line
///   it writes again must first be taken back from the stage's cache, the stores queued
///   behind it wait in the store buffer, and two stores a publish instead of three leave
///   room for half as many publishes again in flight (`unicast_1p1c` in BENCHMARKS.md).
#[derive(Debug)]
pub struct SingleLocal {
    /// The next sequence to claim, kept while not `streaming`.
    next: u64,
    /// A gating minimum seen earlier plus the capacity: claims that end at or below it
    /// need no look at the stages (they only move forward, so it stays a safe bound).
    limit: u64,
    /// Claims start from the cursor instead of `next` (see above).
    streaming: bool,
}

/// How far (in events) the slowest gating stage must be behind the producer, when it looks,
/// for the producer to count as streaming (see [`SingleLocal`]). One under loom, whose
/// models are too small to build a backlog of 64: there any lag switches the producer to
/// claiming from the cursor, so the models check both modes.
pub(crate) const STREAM_LAG: u64 = if cfg!(loom) { 1 } else { 64 };

impl<T> Single<T> {
    /// The next sequence to claim.
    #[inline(always)]
    fn next(&self, local: &SingleLocal) -> u64 {
        if local.streaming {
            // Relaxed: the producer is the cursor's only writer and always sees its own
            // latest store.
            self.cursor.get_relaxed()
        } else {
            local.next
        }
    }

    /// After a look at the stages found the slowest at `min`, with the next claim at
    /// `start`: the new bound on claims, and where claims start from until the next look.
    #[inline]
    fn looked(&self, local: &mut SingleLocal, start: u64, min: u64) {
        local.limit = min.saturating_add(self.capacity);
        local.streaming = start.saturating_sub(min) >= STREAM_LAG;
        local.next = start;
    }
}

impl<T> sealed::Sealed for Single<T> {}

impl<T: StampCell> Sequencer for Single<T> {
    type Local = SingleLocal;
    type Stamp = T;

    #[inline(always)]
    fn claim_known(&self, local: &mut SingleLocal, n: u64) -> Option<u64> {
        let start = self.next(local);
        let end = start + n;
        if end > local.limit {
            return None;
        }
        Some(start)
    }

    fn new(capacity: u64) -> Self {
        Self {
            capacity,
            cursor: Sequence::new(0),
            slots: PhantomData,
        }
    }

    fn new_local(&self) -> SingleLocal {
        SingleLocal {
            next: self.cursor.get_relaxed(),
            limit: self.capacity,
            streaming: false,
        }
    }

    #[inline(always)]
    fn try_claim(&self, local: &mut SingleLocal, n: u64, gating: &[Arc<Sequence>]) -> Option<u64> {
        let start = self.next(local);
        let end = start + n;
        if end > local.limit {
            self.looked(local, start, minimum(gating, u64::MAX));
            if end > local.limit {
                return None;
            }
        }
        Some(start)
    }

    #[inline(always)]
    fn claim(
        &self,
        local: &mut SingleLocal,
        n: u64,
        gating: &[Arc<Sequence>],
        wait: impl FnMut(u64) -> bool,
    ) -> Option<u64> {
        let start = self.next(local);
        let end = start + n;
        if end > local.limit {
            let min = wait_for_room(end, self.capacity, gating, wait)?;
            self.looked(local, start, min);
        }
        Some(start)
    }

    #[inline(always)]
    fn publish(&self, local: &mut SingleLocal, lo: u64, hi: u64) {
        debug_assert_eq!(
            lo,
            self.cursor.get_relaxed(),
            "single producer publishes in order"
        );
        if mutation::BATCH_PER_SLOT {
            for s in lo + 1..hi {
                self.cursor.set(s);
            }
        }
        // Release (inside `Sequence::set`): the slot writes before this store are visible to
        // any stage that acquires the new cursor.
        self.cursor.set(hi);
        // Advanced on publish, not on claim: a forgotten claim is claimed again.
        if !local.streaming {
            local.next = hi;
        }
    }

    #[inline(always)]
    fn published(&self, _next: u64) -> u64 {
        self.cursor.get()
    }

    #[inline(always)]
    fn claimed(&self) -> u64 {
        self.cursor.get()
    }
}

/// The single-producer sequencer of a stamped ring
/// ([`single_producer_stamped`](crate::single_producer_stamped)): [`Single`]'s claims and
/// cursor, and slots that carry their own publication stamps.
pub type Stamped = Single<Stamp>;

/// The multi-producer sequencer: claim by `fetch_add`, publish per slot.
#[derive(Debug)]
pub struct Multi {
    capacity: u64,
    mask: u64,
    /// Claimed count: sequences `0 .. claim` have been handed to some producer.
    claim: CachePadded<AtomicU64>,
    /// `available[s & mask] == s + 1` once sequence `s` is published; `0` before the first
    /// lap. A slot's word only moves forward by whole laps.
    available: Box<[AtomicU64]>,
}

/// A multi producer's private state.
#[derive(Debug)]
pub struct MultiLocal {
    /// A gating minimum seen earlier; a safe lower bound because stages only advance.
    cached_gate: u64,
}

impl sealed::Sealed for Multi {}

impl Sequencer for Multi {
    type Local = MultiLocal;
    type Stamp = NoStamp;

    fn new(capacity: u64) -> Self {
        Self {
            capacity,
            mask: capacity - 1,
            claim: CachePadded::new(AtomicU64::new(0)),
            available: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn new_local(&self) -> MultiLocal {
        MultiLocal { cached_gate: 0 }
    }

    fn try_claim(&self, local: &mut MultiLocal, n: u64, gating: &[Arc<Sequence>]) -> Option<u64> {
        // Relaxed: the counter only hands out distinct ranges; slot ownership is established
        // by the Acquire gating read below, not by this load.
        let mut current = self.claim.load(Ordering::Relaxed);
        loop {
            let end = current + n;
            if end > local.cached_gate + self.capacity {
                let min = minimum(gating, u64::MAX);
                local.cached_gate = min;
                if end > min + self.capacity {
                    return None;
                }
            }
            // A compare-and-swap rather than `fetch_add`: we must not take sequences we
            // have just found there is no room for.
            match self.claim.compare_exchange_weak(
                current,
                end,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(current),
                Err(actual) => {
                    current = actual;
                    spin_loop();
                }
            }
        }
    }

    fn claim(
        &self,
        local: &mut MultiLocal,
        n: u64,
        gating: &[Arc<Sequence>],
        wait: impl FnMut(u64) -> bool,
    ) -> Option<u64> {
        // Relaxed: uniqueness comes from the read-modify-write itself; the room check below
        // acquires the gating sequences before any slot is touched.
        let start = self.claim.fetch_add(n, Ordering::Relaxed);
        let end = start + n;
        if end > local.cached_gate + self.capacity {
            local.cached_gate = wait_for_room(end, self.capacity, gating, wait)?;
        }
        Some(start)
    }

    #[inline]
    fn publish(&self, _local: &mut MultiLocal, lo: u64, hi: u64) {
        for s in lo..hi {
            // Release: the slot write before this store is visible to a stage that acquires
            // this availability word in `published`.
            self.available[(s & self.mask) as usize].store(s + 1, Ordering::Release);
        }
    }

    #[inline]
    fn published(&self, next: u64) -> u64 {
        if mutation::SKIP_AVAILABILITY {
            return self.claim.load(Ordering::Acquire);
        }
        // The availability words alone are exact: within `next .. next + capacity` a word
        // holds `s + 1` only once `s` is published, and never a later lap (the caller's own
        // sequence, at most `next`, gates the producers). So the producers' claim counter,
        // their most written line, is not read here at all.
        let limit = next + self.capacity;
        let mut s = next;
        while s < limit && self.available[(s & self.mask) as usize].load(Ordering::Relaxed) == s + 1
        {
            s += 1;
        }
        if s > next {
            // Acquire fence: pairs with the Release stores in `publish`, making the slot
            // writes of every word read above visible (one fence per scan, not per word).
            fence(Ordering::Acquire);
        }
        s
    }

    #[inline]
    fn claimed(&self) -> u64 {
        self.claim.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Claims one slot as a producer does: from what it knows, else after a look.
    fn claim_one(s: &Single, local: &mut SingleLocal, gating: &[Arc<Sequence>]) -> u64 {
        s.claim_known(local, 1)
            .or_else(|| s.try_claim(local, 1, gating))
            .expect("room")
    }

    /// Claims and publishes one event; returns its sequence.
    fn publish_one(s: &Single, local: &mut SingleLocal, gating: &[Arc<Sequence>]) -> u64 {
        let start = claim_one(s, local, gating);
        s.publish(local, start, start + 1);
        start
    }

    #[test]
    fn a_producer_claims_from_the_cursor_only_while_it_streams_ahead_of_its_stages() {
        let s: Single = Single::new(256);
        let stage = Arc::new(Sequence::new(0));
        let gating = [Arc::clone(&stage)];
        let mut local = s.new_local();
        let mut next = 0;
        let mut run = |local: &mut SingleLocal, events: u64, lag: u64| {
            for _ in 0..events {
                assert_eq!(publish_one(&s, local, &gating), next, "consecutive claims");
                next += 1;
                stage.set(next.saturating_sub(lag).max(stage.get_relaxed()));
            }
        };
        // The stage handles each event as it comes: the producer keeps its own copy.
        run(&mut local, 1000, 0);
        assert!(!local.streaming);
        // The stage stays 100 events behind: claims come from the cursor.
        run(&mut local, 1000, 100);
        assert!(local.streaming);
        // Caught up again: back to the copy, which carries on from the cursor.
        run(&mut local, 1000, 0);
        assert!(!local.streaming);
        assert_eq!(s.claimed(), 3000);
    }

    #[test]
    fn a_claim_never_published_is_claimed_again_in_either_mode() {
        for lag in [0, STREAM_LAG * 2] {
            let s: Single = Single::new(256);
            let stage = Arc::new(Sequence::new(0));
            let gating = [Arc::clone(&stage)];
            let mut local = s.new_local();
            for i in 0..1000 {
                assert_eq!(publish_one(&s, &mut local, &gating), i);
                stage.set((i + 1).saturating_sub(lag));
            }
            assert_eq!(local.streaming, lag > 0);
            assert_eq!(
                claim_one(&s, &mut local, &gating),
                1000,
                "claimed, not published"
            );
            assert_eq!(
                publish_one(&s, &mut local, &gating),
                1000,
                "the same slot again"
            );
            assert_eq!(s.claimed(), 1001);
        }
    }
}
