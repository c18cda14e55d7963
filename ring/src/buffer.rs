//! [`Slots`]: the preallocated event storage of a ring.
//!
//! The only module that touches slot memory. It hands out raw access; the sequencing
//! protocol (sequencers, barriers, gating) is what makes each access exclusive or shared,
//! and every caller states in a `// SAFETY:` comment which part of the protocol it relies on.
//!
//! In a [`Stamped`](crate::Stamped) ring each slot carries a *stamp* next to its event, in
//! the same cache line: the producer stamps the slots it publishes (see
//! [`Slots::stamp_one`] and [`Slots::stamp_batch`]),
//! and a waiting stage gated only on the producer finds the next event by its stamp
//! ([`Slots::stamped_run`]) instead of the producer's cursor. When the event comes, one
//! cache-line transfer brings both the news and the event, where a cursor (a line of its
//! own) costs a second transfer in turn: the difference between a ring's hand-off and the
//! two-thread cache-line floor. Other rings' slots hold a zero-sized [`NoStamp`].

use crate::sync::{mutation, AtomicU64, Ordering, UnsafeCell};

/// The stamp bit that marks the first slot of a batch: the publish goes on past this slot,
/// and a reader that finds the stamp takes the batch's end from the cursor.
pub(crate) const CONTINUES: u64 = 1 << 63;

/// The ordering of a stamp's store: `Release`, so that a reader that acquires the stamp
/// sees what was written before it (`Relaxed` under the `stamp_relaxed` mutation).
const STAMP_ORDER: Ordering = if mutation::STAMP_RELAXED {
    Ordering::Relaxed
} else {
    Ordering::Release
};

/// The layout of a ring's slots: the event alone ([`NoStamp`]) or the event behind its
/// publication stamp ([`Stamp`]). Sealed (implemented here only).
#[doc(hidden)]
pub trait StampCell: Send + Sync + Sized + 'static {
    /// Whether slots carry a stamp at all.
    const ENABLED: bool;
    /// One slot holding an `E`.
    #[doc(hidden)]
    type Slot<E>;
    #[doc(hidden)]
    fn slot<E>(event: E) -> Self::Slot<E>;
    #[doc(hidden)]
    fn event<E>(slot: &Self::Slot<E>) -> &EventCell<E>;
    /// The slot's stamp; never called when `ENABLED` is false.
    #[doc(hidden)]
    fn stamp<E>(slot: &Self::Slot<E>) -> &AtomicU64;
}

/// The cell an event lives in (opaque outside this module).
#[doc(hidden)]
#[repr(transparent)]
pub struct EventCell<E>(UnsafeCell<E>);

impl<E> std::fmt::Debug for EventCell<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventCell")
    }
}

impl<E> std::fmt::Debug for StampedSlot<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampedSlot")
            .field("stamp", &self.stamp)
            .finish_non_exhaustive()
    }
}

/// Slots of the event alone.
#[doc(hidden)]
#[derive(Debug)]
pub struct NoStamp;

impl StampCell for NoStamp {
    const ENABLED: bool = false;
    type Slot<E> = EventCell<E>;
    #[inline(always)]
    fn slot<E>(event: E) -> EventCell<E> {
        EventCell(UnsafeCell::new(event))
    }
    #[inline(always)]
    fn event<E>(slot: &EventCell<E>) -> &EventCell<E> {
        slot
    }
    fn stamp<E>(_slot: &EventCell<E>) -> &AtomicU64 {
        unreachable!("a ring without stamps never stamps its slots")
    }
}

/// Slots that carry a publication stamp in front of the event (see [`StampedSlot`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct Stamp;

/// A stamped slot. `stamp` is `s + 1` once the producer has published a single event or a
/// batch starting at sequence `s` (with [`CONTINUES`] for a batch), `0` before the first
/// lap; it only moves forward. 16-byte aligned, so that for an event aligned to 8 bytes or
/// less the stamp and the start of the event always share a cache line (a 16-byte chunk
/// never straddles one). An event with a larger alignment starts at offset 16 or more and
/// may begin on the next line.
#[doc(hidden)]
#[repr(C, align(16))]
pub struct StampedSlot<E> {
    stamp: AtomicU64,
    event: EventCell<E>,
}

impl StampCell for Stamp {
    const ENABLED: bool = true;
    type Slot<E> = StampedSlot<E>;
    #[inline(always)]
    fn slot<E>(event: E) -> StampedSlot<E> {
        StampedSlot {
            stamp: AtomicU64::new(0),
            event: EventCell(UnsafeCell::new(event)),
        }
    }
    #[inline(always)]
    fn event<E>(slot: &StampedSlot<E>) -> &EventCell<E> {
        &slot.event
    }
    #[inline(always)]
    fn stamp<E>(slot: &StampedSlot<E>) -> &AtomicU64 {
        &slot.stamp
    }
}

/// A power-of-two array of events, indexed by sequence, with a stamp per slot when `T` is
/// [`Stamp`].
pub(crate) struct Slots<E, T: StampCell = NoStamp> {
    slots: Box<[T::Slot<E>]>,
    /// `capacity - 1`; capacity is a power of two, so `sequence & mask` is the index.
    mask: u64,
}

// SAFETY: the ring hands `&mut E` to one producer at a time and `&E` to stages on other
// threads; that moves and shares `E` across threads, so `E` must be `Send` (written on the
// producer's thread, dropped on whichever thread drops the ring) and `Sync` (read by
// several stages at once).
unsafe impl<E: Send + Sync, T: StampCell> Sync for Slots<E, T> {}
// SAFETY: as above; owning the slots only moves `E` values between threads.
unsafe impl<E: Send, T: StampCell> Send for Slots<E, T> {}

impl<E, T: StampCell> Slots<E, T> {
    /// Allocates `capacity` slots filled by `factory`. `capacity` is a power of two
    /// (checked by the builder).
    pub(crate) fn new(capacity: usize, mut factory: impl FnMut() -> E) -> Self {
        debug_assert!(capacity.is_power_of_two());
        let slots = (0..capacity).map(|_| T::slot(factory())).collect();
        Self {
            slots,
            mask: capacity as u64 - 1,
        }
    }

    /// Number of slots.
    #[inline(always)]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    #[inline(always)]
    fn slot(&self, sequence: u64) -> &T::Slot<E> {
        let index = (sequence & self.mask) as usize;
        debug_assert!(index < self.slots.len());
        // SAFETY: `mask` is `slots.len() - 1` with `slots.len()` a power of two (set in
        // `new`, never changed), so `sequence & mask` is always a valid index.
        unsafe { self.slots.get_unchecked(index) }
    }

    #[inline(always)]
    fn cell(&self, sequence: u64) -> &UnsafeCell<E> {
        &T::event(self.slot(sequence)).0
    }

    /// In a stamped ring, stamps the slot of a single published event `sequence` (which the
    /// producer has written), before the cursor moves.
    #[inline(always)]
    pub(crate) fn stamp_one(&self, sequence: u64) {
        // Release: the event written before is visible to a reader that acquires the stamp.
        T::stamp(self.slot(sequence)).store(sequence + 1, STAMP_ORDER);
    }

    /// In a stamped ring, stamps the first slot of a published batch starting at `lo`, with
    /// [`CONTINUES`], after the cursor has moved past the whole batch: a reader that finds
    /// the stamp reads the cursor for the batch's end and sees all of it. The other slots of
    /// the batch keep older laps' stamps: readers that go by stamps only ever look at the
    /// stamp of a publish's first slot (pool workers, which may start inside a batch, go by
    /// the cursor).
    #[inline(always)]
    pub(crate) fn stamp_batch(&self, lo: u64) {
        // Release: the batch's events and the cursor store before are visible to a reader
        // that acquires this stamp.
        T::stamp(self.slot(lo)).store((lo + 1) | CONTINUES, STAMP_ORDER);
    }

    /// In a stamped ring, what the stamps say to a reader at `next`, the first slot of a
    /// publish: `(end, more)`, where `end` is `next` when that publish has not happened yet
    /// and `next + 1` when it has; `more` is whether the reader must read the cursor for
    /// the rest: the publish is a batch, or the slot after a single event is stamped too (a
    /// backlog, whose end the cursor gives in one read).
    ///
    /// A reader that finds one lone event reads two stamps: the event's, and the next slot's,
    /// which is in the same line or in one it read a lap ago and still holds, so it costs no
    /// transfer from the producer's core unless the producer has already written it.
    ///
    /// Exact within a lap: the caller's own sequence (at most `next`) gates the producer, so
    /// the slot of `s` in `next .. next + capacity` holds `s + 1` only once a publish
    /// starting at `s` has happened. The caller never looks at the slot of a batch's later
    /// event: its `next` is always where a publish starts (a reader that stopped inside a
    /// run resumes from its cached end of the run without looking, and pool workers do not
    /// go by stamps).
    #[inline(always)]
    pub(crate) fn stamped_run(&self, next: u64) -> (u64, bool) {
        // Acquire: pairs with the Release stores in `stamp_one` and `stamp_batch`, so the
        // event (and, for a batch, every event and the cursor store before) is visible.
        let stamp_at = |s: u64| T::stamp(self.slot(s)).load(Ordering::Acquire);
        let stamp = stamp_at(next);
        if stamp & !CONTINUES != next + 1 {
            return (next, false);
        }
        if stamp & CONTINUES != 0 {
            return (next + 1, true);
        }
        let after = next + 1;
        (after, stamp_at(after) & !CONTINUES == after + 1)
    }

    /// How far ahead of the event it handles a stage asks for slots to be loaded, and how
    /// often (`sequence & every == 0`): about 2 KiB ahead, once per cache line of events.
    /// `ahead` is zero (no prefetching) for zero-sized events.
    ///
    /// A stage that reads a long run of published slots otherwise waits for each line to
    /// come over from the producer's core in turn; asking 2 KiB ahead keeps a few dozen
    /// lines in flight (a stream of 8-byte events: 1.7 to 1.0 ns an event).
    #[inline(always)]
    pub(crate) const fn read_ahead() -> (u64, u64) {
        if std::mem::size_of::<E>() == 0 {
            return (0, 0);
        }
        let size = std::mem::size_of::<T::Slot<E>>();
        let ahead = if 2048 / size > 2 { 2048 / size } else { 2 };
        let per_line = 64 / size;
        let every = if per_line.is_power_of_two() {
            per_line - 1
        } else {
            0
        };
        (ahead as u64, every as u64)
    }

    /// For a reader about to handle `sequence` of a published run ending at `stop`: asks
    /// for the slot [`read_ahead`](Self::read_ahead) events further on, when `sequence`
    /// starts a cache line of events and that slot is still inside the run.
    #[inline(always)]
    pub(crate) fn prefetch_ahead(&self, sequence: u64, stop: u64) {
        let (ahead, every) = Self::read_ahead();
        if ahead != 0 && sequence & every == 0 && sequence + ahead < stop {
            self.prefetch(sequence + ahead);
        }
    }

    /// Hints the processor to start loading the slot of `sequence`. Only ever called for
    /// published slots: loading one the producer is still writing would take the line
    /// from it mid-write.
    #[inline(always)]
    fn prefetch(&self, sequence: u64) {
        #[cfg(all(target_arch = "x86_64", not(loom)))]
        {
            let p = self.cell(sequence).with(|p| p.cast::<i8>());
            // SAFETY: a prefetch is a hint that never faults and has no effect on memory;
            // `p` points into the slot array in any case.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom))))]
        let _ = sequence;
    }

    /// Runs `f` on the event at `sequence`.
    ///
    /// # Safety
    ///
    /// No thread may hold mutable access to this slot for the duration of `f`: the caller
    /// has acquired a published sequence `> sequence` and the slot cannot be reclaimed until
    /// the caller's own sequence passes it.
    #[inline(always)]
    pub(crate) unsafe fn read<R>(&self, sequence: u64, f: impl FnOnce(&E) -> R) -> R {
        // SAFETY: exclusivity is the caller's contract; the pointer is valid and aligned
        // because it comes from a live `UnsafeCell` in `self.slots`.
        self.cell(sequence).with(|p| f(unsafe { &*p }))
    }
    /// A raw pointer to the event at `sequence`, for claims that outlive one closure call.
    ///
    /// # Safety
    ///
    /// To dereference it mutably the caller must have claimed `sequence` from the sequencer
    /// (so no other producer has it) and seen every gating stage move past
    /// `sequence - capacity` (so no reader holds it), for as long as the reference lives.
    #[inline(always)]
    pub(crate) unsafe fn ptr_mut(&self, sequence: u64) -> *mut E {
        self.cell(sequence).with_mut(|p| p)
    }
}

impl<E, T: StampCell> std::fmt::Debug for Slots<E, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{NoStamp, Slots, Stamp, StampCell, StampedSlot};

    #[test]
    fn read_ahead_is_about_two_kib_once_per_line() {
        // Plain slots are the event alone.
        assert_eq!(std::mem::size_of::<<NoStamp as StampCell>::Slot<u64>>(), 8);
        // 8-byte events: 256 events ahead, every 8th event (one per 64-byte line).
        assert_eq!(Slots::<u64>::read_ahead(), (256, 7));
        // 24-byte events: two per line, so every other event.
        assert_eq!(Slots::<[u8; 24]>::read_ahead(), (85, 1));
        // A line or more per event: every event, at least two ahead.
        assert_eq!(Slots::<[u8; 64]>::read_ahead(), (32, 0));
        assert_eq!(Slots::<[u8; 40]>::read_ahead(), (51, 0));
        assert_eq!(Slots::<[u8; 4096]>::read_ahead(), (2, 0));
        // Stamped slots: an 8-byte stamp first, 16-byte aligned.
        assert_eq!(std::mem::size_of::<StampedSlot<u64>>(), 16);
        assert_eq!(std::mem::size_of::<StampedSlot<[u8; 8]>>(), 16);
        assert_eq!(std::mem::align_of::<StampedSlot<u8>>(), 16);
        assert_eq!(Slots::<u64, Stamp>::read_ahead(), (128, 3));
        assert_eq!(Slots::<[u8; 24], Stamp>::read_ahead(), (64, 1));
        assert_eq!(Slots::<[u8; 64], Stamp>::read_ahead(), (25, 0));
        // Nothing to load for zero-sized events.
        assert_eq!(Slots::<(), Stamp>::read_ahead(), (0, 0));
        assert_eq!(Slots::<()>::read_ahead(), (0, 0));
    }
}
