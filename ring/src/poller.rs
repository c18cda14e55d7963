//! [`Poller`]: a pull-style consumer for users who run their own loop.

use crate::reader::{FnSink, Reader, Ready};
use crate::sequencer::Sequencer;
use crate::sync::Arc;
use crate::telemetry::StageStats;

/// What one [`Poller::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollState {
    /// This many events were handled.
    Events(u64),
    /// Nothing was ready.
    Idle,
    /// The ring is closed and every event has been handled; nothing more will come.
    Drained,
    /// The ring is halted.
    Halted,
}

/// A consumer stage without a thread: the owner calls [`poll`](Self::poll) from its own
/// loop (a game loop, an event loop, a test).
///
/// A poller gates producers like any stage: a poller that is never polled stops the ring
/// once it is full, and stages gated on it finish only once it is drained. Dropping a
/// poller before the ring has drained halts the ring (nothing else would ever free its
/// slots) and records why in [`Ring::failure`](crate::Ring::failure).
pub struct Poller<E, S: Sequencer> {
    reader: Reader<E, S>,
    stats: Arc<StageStats>,
    name: String,
}

impl<E, S: Sequencer> Poller<E, S> {
    pub(crate) fn new(reader: Reader<E, S>, stats: Arc<StageStats>, name: String) -> Self {
        Self {
            reader,
            stats,
            name,
        }
    }

    #[inline(always)]
    fn handle(&mut self, end: u64, on_event: impl FnMut(&E, u64, bool)) -> PollState {
        self.handle_up_to(end, u64::MAX, on_event)
    }

    #[inline(always)]
    fn handle_up_to(
        &mut self,
        end: u64,
        limit: u64,
        on_event: impl FnMut(&E, u64, bool),
    ) -> PollState {
        let n = self.reader.handle_up_to(end, limit, &mut FnSink(on_event));
        self.stats.batch(n);
        PollState::Events(n)
    }

    /// Handles every event ready now (up to the stage's maximum batch) with
    /// `on_event(event, sequence, end_of_batch)`; never waits.
    #[inline]
    pub fn poll(&mut self, on_event: impl FnMut(&E, u64, bool)) -> PollState {
        if self.reader.core.is_halted() {
            return PollState::Halted;
        }
        match self.reader.poll() {
            Some(Ready::Events(end)) => self.handle(end, on_event),
            Some(Ready::Drained) => PollState::Drained,
            Some(Ready::Halted) => PollState::Halted,
            None => PollState::Idle,
        }
    }

    /// Handles at most one event; never waits.
    #[inline]
    pub fn poll_one(&mut self, on_event: impl FnMut(&E, u64, bool)) -> PollState {
        if self.reader.core.is_halted() {
            return PollState::Halted;
        }
        match self.reader.poll() {
            Some(Ready::Events(end)) => self.handle_up_to(end, 1, on_event),
            Some(Ready::Drained) => PollState::Drained,
            Some(Ready::Halted) => PollState::Halted,
            None => PollState::Idle,
        }
    }

    /// Whether sequence moves in this ring signal waiters (async adapters need it).
    #[cfg(feature = "async")]
    pub(crate) fn core(&self) -> &crate::core::Core<E, S> {
        &self.reader.core
    }

    /// Waits by the ring's wait strategy until events are ready, then handles them as
    /// [`poll`](Self::poll) does. Returns [`PollState::Idle`] if the strategy's timeout
    /// passes first.
    pub fn poll_wait(&mut self, on_event: impl FnMut(&E, u64, bool)) -> PollState {
        match self.reader.wait() {
            Ok(Ready::Events(end)) => self.handle(end, on_event),
            Ok(Ready::Drained) => PollState::Drained,
            Ok(Ready::Halted) => PollState::Halted,
            Err(_) => PollState::Idle,
        }
    }

    /// Events this poller has handled.
    pub fn sequence(&self) -> u64 {
        self.reader.next
    }
}

impl<E, S: Sequencer> std::fmt::Debug for Poller<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("reader", &self.reader)
            .finish()
    }
}

impl<E, S: Sequencer> Drop for Poller<E, S> {
    fn drop(&mut self) {
        let core = &self.reader.core;
        let drained = core.is_closed() && self.reader.next >= core.sequencer.claimed();
        if !drained && !core.is_halted() {
            crate::core::lock(&core.failure).get_or_insert((
                self.name.clone(),
                "poller dropped before the ring drained".into(),
            ));
            core.halt();
        }
    }
}
