//! [`Sequence`]: a cache-padded `u64` progress counter.
//!
//! Every party in a ring (the publishing cursor, each stage) owns one sequence and is its
//! only writer; everyone else reads it. A sequence counts events: the value `n` means
//! "events `0 .. n` are done", so a fresh sequence is `0` and no sentinel such as LMAX's
//! `-1` is needed.

use crate::sync::{mutation, AtomicU64, CachePadded, Ordering};

/// A single-writer progress counter on its own cache line.
///
/// The value is the number of events the owner has completed (published, for a producer
/// cursor; handled, for a stage). It only grows.
#[derive(Debug)]
pub struct Sequence {
    value: CachePadded<AtomicU64>,
}

impl Sequence {
    /// A sequence starting at `value`.
    pub fn new(value: u64) -> Self {
        Self {
            value: CachePadded::new(AtomicU64::new(value)),
        }
    }

    /// Reads the sequence. Acquire: pairs with the Release in [`Sequence::set`], so every
    /// write the owner made to the slots before advancing is visible to the reader.
    #[inline(always)]
    pub fn get(&self) -> u64 {
        let order = if mutation::SEQUENCE_RELAXED {
            Ordering::Relaxed
        } else {
            Ordering::Acquire
        };
        self.value.load(order)
    }

    /// Advances the sequence to `value`. Release: publishes the owner's slot accesses
    /// (writes by a producer, reads by a stage) to whoever acquires this value.
    ///
    /// Only the owner may call this, and values never go backwards (checked in debug builds).
    #[inline(always)]
    pub fn set(&self, value: u64) {
        debug_assert!(
            value >= self.value.load(Ordering::Relaxed),
            "a sequence never goes backwards"
        );
        let order = if mutation::SEQUENCE_RELAXED {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        self.value.store(value, order);
    }

    /// Reads the sequence without synchronising; only for the owner, or for reports.
    #[inline(always)]
    pub(crate) fn get_relaxed(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Default for Sequence {
    fn default() -> Self {
        Self::new(0)
    }
}

/// The smallest value among `sequences`, or `default` when there are none.
#[inline]
pub(crate) fn minimum(sequences: &[crate::sync::Arc<Sequence>], default: u64) -> u64 {
    sequences.iter().fold(default, |min, s| min.min(s.get()))
}
