//! [`LoopWaker`] and [`Egress`]: how other threads wake a loop that sleeps in its wait.
//!
//! # The wake protocol
//!
//! A Dekker-style handshake with one eventfd, so that a publisher pays one fence and one
//! load while the loop is awake, and a `write(2)` only when it sleeps:
//!
//! - the loop stores `sleeping = true`, issues a SeqCst fence, then checks for work
//!   (polls its egress ring); only if there is none does it block in its wait;
//! - a publisher publishes, issues a SeqCst fence, then loads `sleeping`; if set, it
//!   swaps it to false and (the one that swapped) writes the eventfd.
//!
//! The fences are totally ordered: either the loop's check sees the publish, or the
//! publisher sees `sleeping` and writes the eventfd. No wake-up is lost.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use peregrine_ring::{Producer, PublishError, Sequencer, TryPublishError};

#[derive(Debug)]
pub(crate) struct WakerInner {
    pub(crate) fd: OwnedFd,
    pub(crate) sleeping: AtomicBool,
}

/// Wakes one event loop from its wait. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoopWaker {
    pub(crate) inner: Arc<WakerInner>,
}

impl LoopWaker {
    pub(crate) fn new() -> std::io::Result<Self> {
        let fd = crate::sys::eventfd()?;
        Ok(Self {
            inner: Arc::new(WakerInner {
                // SAFETY: `eventfd` just returned this fd and nothing else owns it.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                sleeping: AtomicBool::new(false),
            }),
        })
    }

    /// Wakes the loop if it sleeps; call after publishing into its egress ring.
    #[inline]
    pub fn wake(&self) {
        // SeqCst fence: pairs with the loop's fence between `sleeping = true` and its check
        // of the egress ring (see the module docs).
        fence(Ordering::SeqCst);
        if self.inner.sleeping.load(Ordering::Relaxed)
            && self.inner.sleeping.swap(false, Ordering::SeqCst)
        {
            self.force();
        }
    }

    /// Writes the eventfd whether or not the loop sleeps.
    pub(crate) fn force(&self) {
        if let Err(e) = crate::sys::eventfd_write(self.inner.fd.as_raw_fd()) {
            tracing::warn!(error = %e, "cannot wake the event loop");
        }
    }
}

/// The producer of a loop's egress ring, paired with the loop's waker: every publish
/// wakes the loop, which then writes the event to its connection.
pub struct Egress<E, S: Sequencer> {
    producer: Producer<E, S>,
    waker: LoopWaker,
}

impl<E, S: Sequencer> std::fmt::Debug for Egress<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("producer", &self.producer)
            .finish_non_exhaustive()
    }
}

impl<E, S: Sequencer> Egress<E, S> {
    /// Pairs an egress ring's producer with the loop's waker
    /// ([`Reactor::waker`](crate::Reactor::waker)).
    pub fn new(producer: Producer<E, S>, waker: LoopWaker) -> Self {
        Self { producer, waker }
    }

    /// Writes one response with `write`, publishes it and wakes the loop; waits while the
    /// egress ring is full.
    ///
    /// # Errors
    ///
    /// As [`Producer::publish`].
    #[inline]
    pub fn publish(&mut self, write: impl FnOnce(&mut E)) -> Result<u64, PublishError> {
        let r = self.producer.publish(write);
        self.waker.wake();
        r
    }

    /// As [`publish`](Self::publish), but never waits.
    ///
    /// # Errors
    ///
    /// As [`Producer::try_publish`].
    #[inline]
    pub fn try_publish(&mut self, write: impl FnOnce(&mut E)) -> Result<u64, TryPublishError> {
        let r = self.producer.try_publish(write);
        self.waker.wake();
        r
    }

    /// The producer, for batch claims; call [`wake`](Self::wake) after publishing.
    pub fn producer(&mut self) -> &mut Producer<E, S> {
        &mut self.producer
    }

    /// Wakes the loop if it sleeps.
    #[inline]
    pub fn wake(&self) {
        self.waker.wake();
    }
}
