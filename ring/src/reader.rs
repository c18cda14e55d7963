//! [`Reader`]: the consuming half shared by stage threads and pollers.
//!
//! A reader owns one [`Sequence`] (events it has handled) and reads slots up to the
//! barrier: the producer cursor for a first stage, or the slowest stage it depends on.

use crate::core::Core;
use crate::sequence::{minimum, Sequence};
use crate::sequencer::Sequencer;
use crate::sync::{mutation, Arc};

/// What a reader may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// Events `next .. end` are ready.
    Events(u64),
    /// The ring is closed and everything published has been handled.
    Drained,
    /// The ring is halted.
    Halted,
}

/// Where a batch goes: a stage's handler, or a poller's closure.
pub(crate) trait Sink<E> {
    fn batch_start(&mut self, size: u64, depth: u64);
    fn event(&mut self, event: &E, sequence: u64, end_of_batch: bool);
}

/// A poller's closure as a [`Sink`].
pub(crate) struct FnSink<F>(pub(crate) F);

impl<E, F: FnMut(&E, u64, bool)> Sink<E> for FnSink<F> {
    #[inline(always)]
    fn batch_start(&mut self, _size: u64, _depth: u64) {}
    #[inline(always)]
    fn event(&mut self, event: &E, sequence: u64, end_of_batch: bool) {
        (self.0)(event, sequence, end_of_batch)
    }
}

pub(crate) struct Reader<E, S: Sequencer> {
    pub(crate) core: Arc<Core<E, S>>,
    /// Stages this one is gated on; empty for a first stage (gated on the cursor).
    deps: Box<[Arc<Sequence>]>,
    pub(crate) sequence: Arc<Sequence>,
    /// Next sequence to handle; equal to `sequence` between batches. Private copy so the
    /// hot loop never reads its own shared counter.
    pub(crate) next: u64,
    /// The end of the run last seen available (acquired by this thread earlier; ends only
    /// grow), so draining a backlog does not rescan it for every batch.
    cached_end: u64,
    /// The last look at the barrier found events (see `available_now`).
    behind: bool,
    /// Whether a waiting look may go by the slots' stamps: a stamped ring, a reader gated
    /// only on the producer, and one whose `next` is always where a publish starts (not a
    /// pool worker, which jumps to whichever sequence it takes).
    stamps: bool,
    pub(crate) max_batch: u64,
}

impl<E, S: Sequencer> Reader<E, S> {
    pub(crate) fn new(
        core: Arc<Core<E, S>>,
        deps: Box<[Arc<Sequence>]>,
        sequence: Arc<Sequence>,
        max_batch: u64,
    ) -> Self {
        let next = sequence.get();
        let deps_empty = deps.is_empty();
        Self {
            core,
            deps,
            sequence,
            next,
            cached_end: next,
            behind: false,
            stamps: S::STAMPED && deps_empty,
            max_batch,
        }
    }

    /// The end of the run of events this reader may handle now.
    #[inline(always)]
    pub(crate) fn available(&mut self) -> u64 {
        if self.next < self.cached_end {
            return self.cached_end;
        }
        let end = self.available_now(self.behind);
        self.behind = end > self.next;
        self.cached_end = end;
        end
    }

    /// [`available`](Self::available) without the cache. `behind`: the last look found
    /// events, so this reader is working through a backlog rather than waiting.
    #[inline(always)]
    fn available_now(&self, behind: bool) -> u64 {
        if self.stamps && !behind {
            // A reader that is waiting looks at the stamp of the next slot: when the event
            // comes, the one line that brings the news brings the event, and the reader
            // reads no line of the producer's. Only for a batch, or when a second publish is
            // stamped behind a single event (a backlog), does it read the cursor, which
            // gives all of it at once. A reader working through a backlog reads the cursor
            // alone (below), one line for a whole run, and does not chase the producer slot
            // by slot.
            let (end, more) = self.core.slots.stamped_run(self.next);
            if more {
                // Acquire (inside `published`): pairs with the cursor's Release store, which
                // precedes a batch's stamp and follows a single event's. The cursor only
                // moves by whole publishes.
                return end.max(self.core.sequencer.published(self.next));
            }
            end
        } else if self.deps.is_empty() || mutation::BARRIER_IGNORES_DEPS {
            self.core.sequencer.published(self.next)
        } else {
            // Acquire (inside `Sequence::get`): pairs with each upstream stage's Release, so
            // what it did to the slots (an exclusive stage's writes, later) is visible.
            minimum(&self.deps, u64::MAX)
        }
    }

    /// One non-blocking look: events, drained, halted, or nothing yet.
    #[inline]
    pub(crate) fn poll(&mut self) -> Option<Ready> {
        // One read of the barrier: `available` reads it afresh whenever the cached end is
        // used up, which is exactly when there is nothing cached left to hand out.
        let end = self.available();
        if end > self.next {
            return Some(Ready::Events(end));
        }
        self.poll_idle()
    }

    /// [`poll`](Self::poll) without the cache (for waiters, which hold `&self` and have
    /// found nothing yet).
    #[inline]
    fn poll_now(&self) -> Option<Ready> {
        let end = self.available_now(false);
        if end > self.next {
            return Some(Ready::Events(end));
        }
        self.poll_idle()
    }

    /// The rest of a look that found nothing past `next`: halted, drained, or idle.
    #[inline]
    fn poll_idle(&self) -> Option<Ready> {
        if self.core.is_halted() {
            return Some(Ready::Halted);
        }
        if self.core.is_closed() {
            if mutation::CLOSE_NO_RECHECK {
                return Some(Ready::Drained);
            }
            // Everything published before the close is visible now: look once more, by the
            // cursor, which covers every publish.
            let end = self.available_now(true);
            if end > self.next {
                return Some(Ready::Events(end));
            }
            if self.next >= self.core.sequencer.claimed() {
                return Some(Ready::Drained);
            }
        }
        None
    }

    /// Waits by the ring's strategy; `Err` when the strategy's timeout passed first.
    #[inline]
    pub(crate) fn wait(&mut self) -> Result<Ready, crate::wait::TimedOut> {
        if let Some(ready) = self.poll() {
            return Ok(ready);
        }
        let core = &*self.core;
        let deadline = core.wait.timeout().map(|t| std::time::Instant::now() + t);
        let ready = core.wait.wait(&core.notifier, deadline, || self.poll_now());
        if let Ok(Ready::Events(end)) = ready {
            self.cached_end = end;
            self.behind = true;
        }
        ready
    }

    /// Handles `next .. end`, at most `limit` events and at most the maximum batch, with
    /// the sink (`batch_start` first), then advances the sequence. Returns the batch size.
    #[inline(always)]
    pub(crate) fn handle_up_to(&mut self, end: u64, limit: u64, sink: &mut impl Sink<E>) -> u64 {
        let start = self.next;
        let depth = end - start;
        let stop = end.min(start.saturating_add(limit.min(self.max_batch)));
        sink.batch_start(stop - start, depth);
        let slots = &self.core.slots;
        for s in start..stop {
            slots.prefetch_ahead(s, stop);
            // SAFETY: `s < end <= available()`: published (acquired through the cursor or
            // availability word, or the upstream stages' sequences), so no producer writes it;
            // producers cannot reclaim it until this reader's sequence passes `s`, which
            // happens only after this loop.
            unsafe { slots.read(s, |e| sink.event(e, s, s + 1 == stop)) };
        }
        self.commit(stop);
        stop - start
    }

    /// Looks for events by the producer's cursor only, never by slot stamps: for a pool
    /// worker, whose `next` is whichever sequence it took, possibly inside a batch, whose
    /// later slots carry no stamp of this lap.
    pub(crate) fn read_by_cursor(&mut self) {
        self.stamps = false;
    }

    /// Marks everything before `stop` handled and wakes whoever may be parked on it.
    #[inline(always)]
    pub(crate) fn commit(&mut self, stop: u64) {
        self.next = stop;
        // Release: our accesses to the slots happen before a producer (or a downstream
        // stage) acquires this value.
        self.sequence.set(stop);
        self.core.signal();
    }
}

impl<E, S: Sequencer> std::fmt::Debug for Reader<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("next", &self.next)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}
