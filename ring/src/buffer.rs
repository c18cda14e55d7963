//! [`Slots`]: the preallocated event storage of a ring.
//!
//! The only module that touches slot memory. It hands out raw access; the sequencing
//! protocol (sequencers, barriers, gating) is what makes each access exclusive or shared,
//! and every caller states in a `// SAFETY:` comment which part of the protocol it relies on.

use crate::sync::UnsafeCell;

/// A power-of-two array of events, indexed by sequence.
pub(crate) struct Slots<E> {
    slots: Box<[UnsafeCell<E>]>,
    /// `capacity - 1`; capacity is a power of two, so `sequence & mask` is the index.
    mask: u64,
}

// SAFETY: the ring hands `&mut E` to one producer at a time and `&E` to stages on other
// threads; that moves and shares `E` across threads, so `E` must be `Send` (written on the
// producer's thread, dropped on whichever thread drops the ring) and `Sync` (read by
// several stages at once).
unsafe impl<E: Send + Sync> Sync for Slots<E> {}
// SAFETY: as above; owning the slots only moves `E` values between threads.
unsafe impl<E: Send> Send for Slots<E> {}

impl<E> Slots<E> {
    /// Allocates `capacity` slots filled by `factory`. `capacity` is a power of two
    /// (checked by the builder).
    pub(crate) fn new(capacity: usize, mut factory: impl FnMut() -> E) -> Self {
        debug_assert!(capacity.is_power_of_two());
        let slots = (0..capacity).map(|_| UnsafeCell::new(factory())).collect();
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
    fn cell(&self, sequence: u64) -> &UnsafeCell<E> {
        let index = (sequence & self.mask) as usize;
        debug_assert!(index < self.slots.len());
        // SAFETY: `mask` is `slots.len() - 1` with `slots.len()` a power of two (set in
        // `new`, never changed), so `sequence & mask` is always a valid index.
        unsafe { self.slots.get_unchecked(index) }
    }

    /// Runs `f` on the event at `sequence`.
    ///
    /// # Safety
    ///
    /// No thread may hold mutable access to this slot for the duration of `f`: the caller
    /// has acquired a published sequence `> sequence` and the slot cannot be reclaimed until
    /// the caller's own sequence passes it.
    /// How far ahead of the event it handles a stage asks for slots to be loaded, and how
    /// often (`sequence & every == 0`): about 2 KiB ahead, once per cache line of events.
    /// `ahead` is zero (no prefetching) for zero-sized events.
    ///
    /// A stage that reads a long run of published slots otherwise waits for each line to
    /// come over from the producer's core in turn; asking 2 KiB ahead keeps a few dozen
    /// lines in flight (a stream of 8-byte events: 1.7 to 1.0 ns an event).
    #[inline(always)]
    pub(crate) const fn read_ahead() -> (u64, u64) {
        let size = std::mem::size_of::<E>();
        if size == 0 {
            return (0, 0);
        }
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

impl<E> std::fmt::Debug for Slots<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Slots;

    #[test]
    fn read_ahead_is_about_two_kib_once_per_line() {
        // 8-byte events: 256 events ahead, every 8th event (one per 64-byte line).
        assert_eq!(Slots::<u64>::read_ahead(), (256, 7));
        // 24-byte events: two per line, so every other event.
        assert_eq!(Slots::<[u8; 24]>::read_ahead(), (85, 1));
        // A line or more per event: every event, at least two ahead.
        assert_eq!(Slots::<[u8; 64]>::read_ahead(), (32, 0));
        assert_eq!(Slots::<[u8; 40]>::read_ahead(), (51, 0));
        assert_eq!(Slots::<[u8; 4096]>::read_ahead(), (2, 0));
        // Nothing to load for zero-sized events.
        assert_eq!(Slots::<()>::read_ahead(), (0, 0));
    }
}
