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
