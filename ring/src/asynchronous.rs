//! Async adapters (feature `async`): an [`AsyncProducer`] whose publish waits for room
//! without spinning or blocking a thread, and a [`PollerStream`] that yields events as a
//! [`futures_core::Stream`].
//!
//! Waiting tasks register their waker with the ring's [`Notifier`](crate::Notifier), the
//! same parking lot blocking threads use: a stage that moves its sequence wakes them. So
//! the ring must signal: build it with a parking wait strategy
//! ([`WaitStrategy::blocking`](crate::WaitStrategy::blocking) or
//! [`phased`](crate::WaitStrategy::phased)) or with [`WhenFull::Park`](crate::WhenFull::Park);
//! otherwise the adapters refuse with [`AsyncError::RingDoesNotSignal`].
//!
//! ```
//! use futures_core::Stream;
//! use peregrine_ring::{single_producer, AsyncProducer, PollerStream, WaitStrategy};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut b = single_producer(4, || 0u64)?.wait_strategy(WaitStrategy::blocking());
//! let id = b.poller("out").add()?;
//! let (producer, mut ring) = b.build()?;
//! let mut producer = AsyncProducer::new(producer)?;
//! let mut events = PollerStream::new(ring.take_poller(id).unwrap(), |e: &u64, _seq| *e)?;
//! let consumer = tokio::spawn(async move {
//!     let mut got = Vec::new();
//!     while let Some(v) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut events).poll_next(cx)).await {
//!         got.push(v);
//!     }
//!     got
//! });
//! for v in 0..10 {
//!     producer.publish(|e| *e = v).await?; // waits (without spinning) while the ring is full
//! }
//! drop(producer); // closes the ring: the stream ends
//! assert_eq!(consumer.await.unwrap(), (0..10).collect::<Vec<_>>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::error::{PublishError, TryPublishError};
use crate::poller::{PollState, Poller};
use crate::producer::Producer;
use crate::sequencer::Sequencer;

/// Why an async adapter could not be made.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncError {
    /// Nothing in the ring parks, so sequence moves do not signal waiters; build the ring
    /// with a blocking or phased wait strategy, or `WhenFull::Park`.
    #[error("the ring does not signal waiters: use a blocking or phased wait strategy")]
    RingDoesNotSignal,
}

/// A producer for async code: [`publish`](Self::publish) waits for room by suspending the
/// task, never by spinning or blocking the executor thread.
#[derive(Debug)]
pub struct AsyncProducer<E, S: Sequencer> {
    inner: Producer<E, S>,
}

impl<E, S: Sequencer> AsyncProducer<E, S> {
    /// Wraps `producer`.
    ///
    /// # Errors
    ///
    /// [`AsyncError::RingDoesNotSignal`] if the ring was built so that nothing signals.
    pub fn new(producer: Producer<E, S>) -> Result<Self, AsyncError> {
        if producer.core().parks {
            Ok(Self { inner: producer })
        } else {
            Err(AsyncError::RingDoesNotSignal)
        }
    }

    /// The wrapped producer, for the non-waiting calls (`try_publish`, ...).
    pub fn get_mut(&mut self) -> &mut Producer<E, S> {
        &mut self.inner
    }

    /// Writes one event and publishes it, suspending while the ring is full. Returns the
    /// event's sequence.
    ///
    /// # Errors
    ///
    /// [`PublishError::Halted`] if the ring is halted; `write` is not called.
    pub fn publish<'a, F: FnOnce(&mut E) + 'a>(
        &'a mut self,
        write: F,
    ) -> impl Future<Output = Result<u64, PublishError>> + 'a {
        let mut write = Some(write);
        std::future::poll_fn(move |cx| {
            let mut attempt = |inner: &mut Producer<E, S>| match inner.try_claim() {
                Ok(mut claim) => {
                    if let Some(w) = write.take() {
                        w(&mut claim);
                    }
                    Some(Ok(claim.sequence()))
                }
                Err(TryPublishError::Full) => None,
                Err(TryPublishError::Closed) => Some(Err(PublishError::Closed)),
                Err(_) => Some(Err(PublishError::Halted)),
            };
            if let Some(done) = attempt(&mut self.inner) {
                return Poll::Ready(done);
            }
            self.inner.core().notifier.register(cx.waker());
            // Re-check after registering: a stage may have moved in between.
            match attempt(&mut self.inner) {
                Some(done) => Poll::Ready(done),
                None => Poll::Pending,
            }
        })
    }
}

/// A [`Poller`] as a [`Stream`]: each event is mapped by `map(event, sequence)` (copy out
/// what you need: the slot is reused) and yielded; the stream ends when the ring drains or
/// halts.
pub struct PollerStream<E, S: Sequencer, F> {
    poller: Poller<E, S>,
    map: F,
}

impl<E, S: Sequencer, F, T> PollerStream<E, S, F>
where
    F: FnMut(&E, u64) -> T,
{
    /// Wraps `poller`.
    ///
    /// # Errors
    ///
    /// [`AsyncError::RingDoesNotSignal`] if the ring was built so that nothing signals.
    pub fn new(poller: Poller<E, S>, map: F) -> Result<Self, AsyncError> {
        if poller.core().parks {
            Ok(Self { poller, map })
        } else {
            Err(AsyncError::RingDoesNotSignal)
        }
    }

    fn next(&mut self) -> Option<Option<T>> {
        let mut out = None;
        let map = &mut self.map;
        match self.poller.poll_one(|e, s, _| out = Some(map(e, s))) {
            PollState::Events(_) => Some(out),
            PollState::Drained | PollState::Halted => Some(None),
            PollState::Idle => None,
        }
    }
}

impl<E, S: Sequencer, F, T> Stream for PollerStream<E, S, F>
where
    F: FnMut(&E, u64) -> T + Unpin,
{
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if let Some(item) = this.next() {
            return Poll::Ready(item);
        }
        this.poller.core().notifier.register(cx.waker());
        match this.next() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }
}

impl<E, S: Sequencer, F> std::fmt::Debug for PollerStream<E, S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerStream")
            .field("poller", &self.poller)
            .finish_non_exhaustive()
    }
}
