//! [`Producer`]: claiming slots and publishing them.
//!
//! Every publish goes through a claim guard ([`Claim`], [`BatchClaim`]) that publishes
//! when dropped. A panic while the slot is being written therefore still publishes the
//! slot (holding whatever was written): stages never wait forever on a gap.

use std::ops::{Deref, DerefMut, Range};
use std::time::{Duration, Instant};

use crate::core::{Core, HALTED};
use crate::error::{PublishError, TryPublishError};
use crate::sequencer::{Multi, Sequencer, Single, Stamped};
use crate::sync::{mutation, Arc, Ordering};
use crate::wait::WaitStrategy;

/// What a producer does when the ring is full (set with
/// [`RingBuilder::when_full`](crate::RingBuilder::when_full)).
///
/// [`Producer::try_publish`] never waits and [`Producer::publish_timeout`] always waits at
/// most its timeout, whatever this says; it governs [`Producer::publish`],
/// [`Producer::claim`] and the batch variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait by the ring's own wait strategy (the default).
    #[default]
    Wait,
    /// Busy-spin until there is room.
    Spin,
    /// Yield the time slice until there is room.
    Yield,
    /// Park until a stage signals progress.
    Park,
    /// Wait by the ring's strategy for at most this long, then fail with
    /// [`PublishError::Timeout`].
    WaitUpTo(Duration),
    /// Fail at once with [`PublishError::Full`].
    Fail,
}

impl WhenFull {
    /// The strategy a waiting producer uses, given the ring's.
    pub(crate) fn strategy(self, ring: WaitStrategy) -> WaitStrategy {
        match self {
            WhenFull::Spin => WaitStrategy::busy_spin(),
            WhenFull::Yield => WaitStrategy::yielding(),
            WhenFull::Park => WaitStrategy::blocking(),
            WhenFull::Wait | WhenFull::WaitUpTo(_) | WhenFull::Fail => ring,
        }
    }
}

/// Publishes events into a ring.
///
/// A single-producer ring ([`Single`], or [`Stamped`]) has exactly one; a multi-producer
/// ring's ([`Multi`]) can be cloned, one per publishing thread. Dropping the last producer closes
/// the ring: stages handle everything already published, then stop, and the drop joins
/// their threads.
pub struct Producer<E, S: Sequencer> {
    core: Arc<Core<E, S>>,
    local: S::Local,
}

/// The producer of a single-producer ring.
pub type SingleProducer<E> = Producer<E, Single>;

/// The producer of a [`single_producer_stamped`](crate::single_producer_stamped) ring.
pub type StampedProducer<E> = Producer<E, Stamped>;
/// A producer of a multi-producer ring.
pub type MultiProducer<E> = Producer<E, Multi>;

impl<E, S: Sequencer> Producer<E, S> {
    pub(crate) fn new(core: Arc<Core<E, S>>) -> Self {
        core.producers.fetch_add(1, Ordering::Relaxed);
        let local = core.sequencer.new_local();
        Self { core, local }
    }

    #[cfg(feature = "async")]
    pub(crate) fn core(&self) -> &Core<E, S> {
        &self.core
    }

    /// Number of slots in the ring.
    pub fn capacity(&self) -> u64 {
        self.core.slots.capacity()
    }

    /// Slots that could be claimed now without waiting.
    pub fn remaining_capacity(&self) -> u64 {
        let used = self.core.sequencer.claimed()
            - self
                .core
                .gating_minimum()
                .min(self.core.sequencer.claimed());
        self.capacity().saturating_sub(used)
    }

    #[inline(always)]
    fn check_batch(&self, n: u64) -> Result<(), (u64, u64)> {
        if n == 0 || n > self.capacity() {
            Err((n, self.capacity()))
        } else {
            Ok(())
        }
    }

    #[inline(always)]
    fn claim_range(&mut self, n: u64, deadline: Option<Instant>) -> Result<u64, PublishError> {
        let state = self.core.state();
        if state != 0 && !mutation::HALT_IGNORED {
            return Err(if state & HALTED != 0 {
                PublishError::Halted
            } else {
                PublishError::Closed
            });
        }
        if let Some(start) = self.core.sequencer.claim_known(&mut self.local, n) {
            // Room known without looking at the stages: no wait, whatever the policy.
            return Ok(start);
        }
        if deadline.is_none() && self.core.plain_wait {
            // The common case: wait by a strategy, no deadline, no fail-fast. Kept short:
            // a publish a few instructions slower lets the stage catch up and take events
            // one at a time, which costs a cache-line transfer per event.
            return self.claim_waiting(n);
        }
        let deadline = match (self.core.when_full, deadline) {
            (_, Some(d)) => Some(d),
            (WhenFull::WaitUpTo(t), None) => Some(Instant::now() + t),
            (WhenFull::Fail, None) => {
                return self.try_claim_range(n).map_err(|e| match e {
                    TryPublishError::Halted => PublishError::Halted,
                    TryPublishError::Closed => PublishError::Closed,
                    _ => PublishError::Full,
                });
            }
            _ => None,
        };
        if let Some(deadline) = deadline {
            let strategy = self.core.when_full.strategy(self.core.wait);
            return self.claim_until(n, strategy, deadline);
        }
        self.claim_waiting(n)
    }

    /// Claims `n` slots, waiting by the producer's strategy while the ring is full.
    #[inline(always)]
    fn claim_waiting(&mut self, n: u64) -> Result<u64, PublishError> {
        let core = &*self.core;
        core.sequencer
            .claim(&mut self.local, n, &core.gating, |wrap| {
                core.stalls.fetch_add(1, Ordering::Relaxed);
                let strategy = core.when_full.strategy(core.wait);
                // Wait until the slowest stage frees the slot, or the ring halts (give up).
                matches!(
                    strategy.wait(&core.notifier, None, || {
                        if core.is_halted() && !mutation::HALT_IGNORED {
                            Some(false)
                        } else if core.gating_minimum() >= wrap {
                            Some(true)
                        } else {
                            None
                        }
                    }),
                    Ok(true)
                )
            })
            .ok_or(PublishError::Halted)
    }

    /// Claims `n` slots, waiting at most until `deadline`. Claims only when there is room
    /// (compare-and-swap for several producers), so giving up never leaves a claimed gap.
    #[cold]
    fn claim_until(
        &mut self,
        n: u64,
        strategy: WaitStrategy,
        deadline: Instant,
    ) -> Result<u64, PublishError> {
        let core = Arc::clone(&self.core);
        let capacity = core.slots.capacity();
        loop {
            match self.try_claim_range(n) {
                Ok(start) => return Ok(start),
                Err(TryPublishError::Full) => {}
                Err(TryPublishError::Closed) => return Err(PublishError::Closed),
                Err(_) => return Err(PublishError::Halted),
            }
            // (the failed try above counted the stall)
            let waited = strategy.wait(&core.notifier, Some(deadline), || {
                if core.is_halted() {
                    Some(false)
                } else if core.sequencer.claimed() + n <= core.gating_minimum() + capacity {
                    Some(true)
                } else {
                    None
                }
            });
            match waited {
                Ok(true) => continue,
                Ok(false) => return Err(PublishError::Halted),
                Err(_) => return Err(PublishError::Timeout),
            }
        }
    }

    #[inline(always)]
    fn try_claim_range(&mut self, n: u64) -> Result<u64, TryPublishError> {
        let state = self.core.state();
        if state != 0 {
            return Err(if state & HALTED != 0 {
                TryPublishError::Halted
            } else {
                TryPublishError::Closed
            });
        }
        let core = &*self.core;
        if let Some(start) = core.sequencer.claim_known(&mut self.local, n) {
            return Ok(start);
        }
        core.sequencer
            .try_claim(&mut self.local, n, &core.gating)
            .ok_or_else(|| {
                core.stalls.fetch_add(1, Ordering::Relaxed);
                TryPublishError::Full
            })
    }

    /// Claims the next slot, waiting by the ring's wait strategy while the ring is full.
    /// The slot is published when the returned guard drops.
    ///
    /// # Errors
    ///
    /// [`PublishError::Halted`] if the ring is halted, before or while waiting;
    /// [`PublishError::Full`] or [`PublishError::Timeout`] under the matching [`WhenFull`]
    /// policy.
    #[inline]
    pub fn claim(&mut self) -> Result<Claim<'_, E, S>, PublishError> {
        let sequence = self.claim_range(1, None)?;
        Ok(Claim {
            producer: self,
            sequence,
        })
    }

    /// Claims the next slot if there is room now; never waits.
    ///
    /// Claiming first and writing second is how to keep a value when the ring is full: the
    /// value is only moved into the slot once the claim succeeded.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Full`] when the slowest stage is a whole ring behind;
    /// [`TryPublishError::Halted`] when the ring is halted.
    #[inline]
    pub fn try_claim(&mut self) -> Result<Claim<'_, E, S>, TryPublishError> {
        let sequence = self.try_claim_range(1)?;
        Ok(Claim {
            producer: self,
            sequence,
        })
    }

    /// Claims `n` consecutive slots, waiting while there is no room. They are published
    /// together, with one cursor update, when the guard drops.
    ///
    /// # Errors
    ///
    /// [`PublishError::BatchTooLarge`] when `n` is zero or exceeds the capacity;
    /// [`PublishError::Halted`] if the ring is halted.
    #[inline]
    pub fn claim_batch(&mut self, n: usize) -> Result<BatchClaim<'_, E, S>, PublishError> {
        let n = n as u64;
        self.check_batch(n)
            .map_err(|(requested, capacity)| PublishError::BatchTooLarge {
                requested,
                capacity,
            })?;
        let start = self.claim_range(n, None)?;
        Ok(BatchClaim {
            producer: self,
            range: start..start + n,
        })
    }

    /// Claims `n` consecutive slots if there is room for all of them now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Full`] when fewer than `n` slots are free;
    /// [`TryPublishError::BatchTooLarge`] when `n` is zero or exceeds the capacity;
    /// [`TryPublishError::Halted`] when the ring is halted.
    #[inline]
    pub fn try_claim_batch(&mut self, n: usize) -> Result<BatchClaim<'_, E, S>, TryPublishError> {
        let n = n as u64;
        self.check_batch(n)
            .map_err(|(requested, capacity)| TryPublishError::BatchTooLarge {
                requested,
                capacity,
            })?;
        let start = self.try_claim_range(n)?;
        Ok(BatchClaim {
            producer: self,
            range: start..start + n,
        })
    }

    /// Writes one event with `write` and publishes it; waits while the ring is full.
    /// Returns the event's sequence.
    ///
    /// If `write` panics the slot is still published (with whatever `write` left in it), so
    /// stages do not stall on a gap; the panic then continues.
    ///
    /// # Errors
    ///
    /// [`PublishError::Halted`] if the ring is halted; `write` is not called.
    #[inline]
    pub fn publish(&mut self, write: impl FnOnce(&mut E)) -> Result<u64, PublishError> {
        let sequence = self.claim_range(1, None)?;
        self.write_and_publish(sequence, write);
        Ok(sequence)
    }

    /// Writes one event and publishes it, waiting at most `timeout` for room (by the
    /// producer's wait strategy). Returns the event's sequence.
    ///
    /// # Errors
    ///
    /// [`PublishError::Timeout`] if the ring stayed full; [`PublishError::Halted`] if it is
    /// halted. `write` is not called in either case.
    pub fn publish_timeout(
        &mut self,
        timeout: Duration,
        write: impl FnOnce(&mut E),
    ) -> Result<u64, PublishError> {
        let sequence = self.claim_range(1, Some(Instant::now() + timeout))?;
        let mut claim = Claim {
            producer: self,
            sequence,
        };
        write(&mut claim);
        Ok(claim.sequence())
    }

    /// Writes one event and publishes it if there is room now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Full`] or [`TryPublishError::Halted`]; `write` is not called.
    #[inline]
    pub fn try_publish(&mut self, write: impl FnOnce(&mut E)) -> Result<u64, TryPublishError> {
        let sequence = self.try_claim_range(1)?;
        self.write_and_publish(sequence, write);
        Ok(sequence)
    }

    /// Writes the claimed slot `sequence` and publishes it, through a guard that holds the
    /// core itself: the compiler then keeps the core in a register across `write` instead
    /// of reloading it through `self`, which a store into the slot might alias as far as
    /// it can tell. The slot is published even if `write` panics, as with a [`Claim`].
    #[inline(always)]
    fn write_and_publish(&mut self, sequence: u64, write: impl FnOnce(&mut E)) {
        let guard = Publish {
            core: &self.core,
            local: &mut self.local,
            sequence,
        };
        // SAFETY: as in `Claim::deref_mut`: this producer claimed `sequence`, the claim
        // waited until every gating stage passed `sequence - capacity`, and no stage reads
        // the slot before `guard` publishes it.
        write(unsafe { &mut *guard.core.slots.ptr_mut(sequence) });
        drop(guard);
    }

    /// Writes `n` events with `write(event, sequence)` and publishes them together; waits
    /// while there is no room. Returns the sequences written.
    ///
    /// # Errors
    ///
    /// As [`claim_batch`](Self::claim_batch); `write` is not called.
    #[inline]
    pub fn publish_batch(
        &mut self,
        n: usize,
        mut write: impl FnMut(&mut E, u64),
    ) -> Result<Range<u64>, PublishError> {
        let mut batch = self.claim_batch(n)?;
        for (sequence, event) in batch.iter_mut() {
            write(event, sequence);
        }
        Ok(batch.sequences())
    }

    /// Writes `n` events and publishes them together if there is room now; never waits.
    ///
    /// # Errors
    ///
    /// As [`try_claim_batch`](Self::try_claim_batch); `write` is not called.
    #[inline]
    pub fn try_publish_batch(
        &mut self,
        n: usize,
        mut write: impl FnMut(&mut E, u64),
    ) -> Result<Range<u64>, TryPublishError> {
        let mut batch = self.try_claim_batch(n)?;
        for (sequence, event) in batch.iter_mut() {
            write(event, sequence);
        }
        Ok(batch.sequences())
    }

    #[inline(always)]
    fn publish_range(&mut self, lo: u64, hi: u64) {
        publish(&self.core, &mut self.local, lo, hi);
    }
}

impl<E> Clone for Producer<E, Multi> {
    /// Another producer for the same ring, for another publishing thread.
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.core))
    }
}

impl<E, S: Sequencer> Drop for Producer<E, S> {
    /// The last producer to drop closes the ring, then joins the stage threads once they
    /// have handled everything published (not when dropped on a stage thread: see
    /// [`Ring::join`](crate::Ring::join)). A thread stage gated on a [`Poller`](crate::Poller)
    /// finishes only once that poller is drained, so drain pollers first.
    fn drop(&mut self) {
        // AcqRel: the last producer acquires every other producer's publishes (released by
        // their own decrement) before it closes the ring.
        if self.core.producers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.core.close();
            // On a stage thread (a handler that owned the last producer), joining would
            // wait for a batch that cannot end until this returns: leave that to
            // `Ring::join`.
            if !self.core.on_stage_thread() {
                self.core.join_threads();
            }
        }
    }
}

impl<E, S: Sequencer> std::fmt::Debug for Producer<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// One claimed slot; derefs to the event and publishes it when dropped.
///
/// Forgetting a claim (`mem::forget`) never publishes it: in a multi-producer ring stages
/// wait on that gap forever; in a single-producer ring the next claim takes the same slot
/// again, so the forgotten write is overwritten and nothing is skipped. None of this is
/// undefined behaviour.
pub struct Claim<'a, E, S: Sequencer> {
    producer: &'a mut Producer<E, S>,
    sequence: u64,
}

impl<E, S: Sequencer> Claim<'_, E, S> {
    /// The sequence of the claimed slot.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl<E, S: Sequencer> Deref for Claim<'_, E, S> {
    type Target = E;
    #[inline(always)]
    fn deref(&self) -> &E {
        // SAFETY: this producer claimed `sequence`, so no other producer writes it, and the
        // claim waited until every gating stage passed `sequence - capacity`, so no stage
        // reads it until it is published when this guard drops.
        unsafe { &*self.producer.core.slots.ptr_mut(self.sequence) }
    }
}

impl<E, S: Sequencer> DerefMut for Claim<'_, E, S> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut E {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference from the guard.
        unsafe { &mut *self.producer.core.slots.ptr_mut(self.sequence) }
    }
}

/// Publishes one claimed slot when dropped, like [`Claim`], for [`Producer::publish`].
struct Publish<'a, E, S: Sequencer> {
    core: &'a Core<E, S>,
    local: &'a mut S::Local,
    sequence: u64,
}

impl<E, S: Sequencer> Drop for Publish<'_, E, S> {
    #[inline(always)]
    fn drop(&mut self) {
        let s = self.sequence;
        publish(self.core, self.local, s, s + 1);
    }
}

/// Makes the claimed `lo .. hi` visible to stages and wakes parked ones.
#[inline(always)]
fn publish<E, S: Sequencer>(core: &Core<E, S>, local: &mut S::Local, lo: u64, hi: u64) {
    if S::STAMPED && hi - lo == 1 {
        // The stamp first: a waiting reader sees the event by it, and the cursor's store
        // (which may have to take the line back from a reader) comes after.
        core.slots.stamp_one(lo);
        core.sequencer.publish(local, lo, hi);
    } else if S::STAMPED && hi > lo {
        // A batch: the cursor first, so that a reader that finds the first slot's stamp
        // finds the batch's end in the cursor. (Claims are never empty; an empty range
        // must not stamp a slot it did not publish.)
        if mutation::STAMP_IN_ORDER {
            core.slots.stamp_batch(lo);
            core.sequencer.publish(local, lo, hi);
        } else {
            core.sequencer.publish(local, lo, hi);
            core.slots.stamp_batch(lo);
        }
    } else {
        core.sequencer.publish(local, lo, hi);
    }
    core.signal();
}

impl<E, S: Sequencer> Drop for Claim<'_, E, S> {
    #[inline(always)]
    fn drop(&mut self) {
        let s = self.sequence;
        self.producer.publish_range(s, s + 1);
    }
}

impl<E: std::fmt::Debug, S: Sequencer> std::fmt::Debug for Claim<'_, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("sequence", &self.sequence)
            .field("event", &**self)
            .finish()
    }
}

/// Consecutive claimed slots, published together (one cursor update) when dropped.
pub struct BatchClaim<'a, E, S: Sequencer> {
    producer: &'a mut Producer<E, S>,
    range: Range<u64>,
}

impl<E, S: Sequencer> BatchClaim<'_, E, S> {
    /// The claimed sequences.
    pub fn sequences(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Number of claimed slots.
    pub fn len(&self) -> usize {
        (self.range.end - self.range.start) as usize
    }

    /// Always false: a batch claims at least one slot.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The `i`-th claimed event.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn get_mut(&mut self, i: usize) -> &mut E {
        assert!(i < self.len(), "index {i} out of a batch of {}", self.len());
        let s = self.range.start + i as u64;
        // SAFETY: `s` is in the claimed range (checked above): claimed by this producer and
        // gated past by every stage, as for `Claim`; `&mut self` makes the borrow unique.
        unsafe { &mut *self.producer.core.slots.ptr_mut(s) }
    }

    /// Each claimed slot with its sequence.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut E)> + '_ {
        let slots = &self.producer.core.slots;
        self.range.clone().map(move |s| {
            // SAFETY: each `s` is a distinct claimed sequence (batch length <= capacity, so
            // distinct slots); exclusivity as for `Claim`; the borrow of `self` bounds them.
            (s, unsafe { &mut *slots.ptr_mut(s) })
        })
    }
}

impl<E, S: Sequencer> Drop for BatchClaim<'_, E, S> {
    fn drop(&mut self) {
        let Range { start, end } = self.range;
        self.producer.publish_range(start, end);
    }
}

impl<E, S: Sequencer> std::fmt::Debug for BatchClaim<'_, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchClaim")
            .field("sequences", &self.range)
            .finish_non_exhaustive()
    }
}
