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

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use peregrine_ring::{Claim, Producer, PublishError, Sequencer, TryPublishError};

use crate::codec::{Codec, ConnId};
use crate::direct::{Direct, Table};
use crate::stats::Stats;
use crate::sync::{fence, AtomicBool, Ordering};

/// Both halves of the wake handshake (see the module docs), apart from the eventfd: the
/// loop announces its sleep, a publisher learns whether it must write the eventfd. Shared
/// with the loom models of `tests/loom_direct.rs` (`pub` for them only).
#[derive(Debug, Default)]
pub struct SleepFlag {
    sleeping: AtomicBool,
}

impl SleepFlag {
    /// Loop: about to sleep; check for work after this, and sleep only if there is none.
    #[inline]
    pub fn announce(&self) {
        // A swap, not a store: loom orders a plain store only after the writes its thread
        // has seen, so a publisher's concurrent `swap(false)` could be ordered after it
        // and a later publisher would read that stale `false` despite the fences (a false
        // report of a lost wake-up). The read-modify-write places it after every earlier
        // write, as on hardware; it costs nothing next to the wait that follows.
        self.sleeping.swap(true, Ordering::Relaxed);
        // SeqCst fence: pairs with the one in `must_wake` (store; fence; load on both sides).
        fence(Ordering::SeqCst);
    }

    /// Loop: awake again (a publisher that reads this need not write the eventfd).
    #[inline]
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Publisher, after making its work visible: whether it must write the eventfd (the
    /// loop announced a sleep, and no other publisher took the job).
    #[inline]
    pub fn must_wake(&self) -> bool {
        // SeqCst fence: pairs with the loop's fence between `sleeping = true` and its check
        // for work (see the module docs).
        fence(Ordering::SeqCst);
        self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub(crate) struct WakerInner {
    pub(crate) fd: OwnedFd,
    pub(crate) sleeping: SleepFlag,
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
                sleeping: SleepFlag::default(),
            }),
        })
    }

    /// Wakes the loop if it sleeps; call after publishing into its egress ring.
    #[inline]
    pub fn wake(&self) {
        if self.inner.sleeping.must_wake() {
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

/// What [`Egress::publish`] returns for a response written straight to its socket (it
/// took no ring sequence).
pub const WRITTEN_DIRECTLY: u64 = u64::MAX;

/// The producer of a loop's egress ring, paired with the loop's waker.
///
/// Made by [`Reactor::egress`](crate::Reactor::egress) with a codec that offers an
/// [`egress_encoder`](crate::Codec::egress_encoder) (as [`LengthPrefixed`](crate::LengthPrefixed)
/// does) and [`Config::direct_egress`](crate::Config::direct_egress) on, a publish writes
/// the response straight to its connection's socket from the publishing thread when the
/// loop holds nothing for that connection: no ring slot, no wake-up of the loop, one
/// `send(2)`. Otherwise (bytes already queued, a socket that would block, another thread
/// writing that connection) it publishes into the egress ring and wakes the loop, which
/// writes it after what it holds. Either way the responses of one connection leave in the
/// order they were published, and a short direct write hands its tail to the loop.
pub struct Egress<E, S: Sequencer> {
    producer: Producer<E, S>,
    waker: LoopWaker,
    direct: Option<DirectPath<E>>,
}

/// What an [`Egress`] needs to write responses itself.
struct DirectPath<E> {
    table: Arc<Table>,
    stats: Arc<Stats>,
    encoder: Box<dyn Encode<E>>,
    /// The response being published: written here first, to learn its destination, and
    /// swapped into a ring slot when it must go through the ring.
    scratch: E,
    /// `scratch` encoded.
    bytes: Vec<u8>,
}

/// A codec's egress half, object-safe.
trait Encode<E>: Send {
    fn destination(&self, event: &E) -> ConnId;
    fn encode(&mut self, event: &E, out: &mut Vec<u8>);
}

impl<C: Codec> Encode<C::Out> for C {
    fn destination(&self, event: &C::Out) -> ConnId {
        Codec::destination(self, event)
    }
    fn encode(&mut self, event: &C::Out, out: &mut Vec<u8>) {
        Codec::encode(self, event, out)
    }
}

impl<E, S: Sequencer> std::fmt::Debug for Egress<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("producer", &self.producer)
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

impl<E, S: Sequencer> Egress<E, S> {
    /// Pairs an egress ring's producer with the loop's waker
    /// ([`Reactor::waker`](crate::Reactor::waker)). Every response goes through the ring;
    /// [`Reactor::egress`](crate::Reactor::egress) also enables direct writes.
    pub fn new(producer: Producer<E, S>, waker: LoopWaker) -> Self {
        Self {
            producer,
            waker,
            direct: None,
        }
    }

    pub(crate) fn with_direct<C: Codec<Out = E>>(
        mut self,
        table: Arc<Table>,
        stats: Arc<Stats>,
        encoder: C,
        scratch: E,
    ) -> Self {
        self.direct = Some(DirectPath {
            table,
            stats,
            encoder: Box::new(encoder),
            scratch,
            bytes: Vec::new(),
        });
        self
    }

    /// Whether this egress writes responses straight to idle connections (see the type's
    /// docs).
    pub fn writes_directly(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes one response with `write`, then sends it: straight to the socket when the
    /// connection is idle (see the type's docs), else published into the egress ring
    /// (waiting while it is full) with the loop woken. Returns the ring sequence, or
    /// [`WRITTEN_DIRECTLY`].
    ///
    /// # Errors
    ///
    /// As [`Producer::publish`]. With direct writes `write` has already run when the ring
    /// refuses the response.
    #[inline]
    pub fn publish(&mut self, write: impl FnOnce(&mut E)) -> Result<u64, PublishError> {
        let Some(direct) = self.direct.as_mut() else {
            let r = self.producer.publish(write);
            self.waker.wake();
            return r;
        };
        write(&mut direct.scratch);
        if let Some(conn) = direct.try_write(&self.waker) {
            return Ok(direct.route(conn, self.producer.claim()?, &self.waker));
        }
        Ok(WRITTEN_DIRECTLY)
    }

    /// As [`publish`](Self::publish), but never waits.
    ///
    /// # Errors
    ///
    /// As [`Producer::try_publish`]. With direct writes `write` has already run when the
    /// ring refuses the response.
    #[inline]
    pub fn try_publish(&mut self, write: impl FnOnce(&mut E)) -> Result<u64, TryPublishError> {
        let Some(direct) = self.direct.as_mut() else {
            let r = self.producer.try_publish(write);
            self.waker.wake();
            return r;
        };
        write(&mut direct.scratch);
        if let Some(conn) = direct.try_write(&self.waker) {
            return Ok(direct.route(conn, self.producer.try_claim()?, &self.waker));
        }
        Ok(WRITTEN_DIRECTLY)
    }

    /// As [`try_publish`](Self::try_publish), with the response already made: `event` is
    /// swapped into the ring (or written directly), and on success holds what the slot
    /// held before, for reuse. When the ring refuses it, `event` is left as it was.
    ///
    /// # Errors
    ///
    /// As [`Producer::try_publish`].
    #[inline]
    pub fn try_publish_swap(&mut self, event: &mut E) -> Result<u64, TryPublishError> {
        let Some(direct) = self.direct.as_mut() else {
            // A refused `try_publish` does not call its closure: `event` is untouched.
            let r = self
                .producer
                .try_publish(|slot| std::mem::swap(slot, event));
            self.waker.wake();
            return r;
        };
        std::mem::swap(&mut direct.scratch, event);
        if let Some(conn) = direct.try_write(&self.waker) {
            // `try_write` changed nothing when it routes; give the response back if the
            // ring has no room for it.
            return match self.producer.try_claim() {
                Ok(claim) => Ok(direct.route(conn, claim, &self.waker)),
                Err(e) => {
                    std::mem::swap(&mut direct.scratch, event);
                    Err(e)
                }
            };
        }
        Ok(WRITTEN_DIRECTLY)
    }

    /// The producer, for batch claims; call [`wake`](Self::wake) after publishing.
    ///
    /// Entries published this way carry no per-connection mark, so from the first call
    /// on every response of this loop goes through the ring (direct writes stop).
    pub fn producer(&mut self) -> &mut Producer<E, S> {
        if let Some(direct) = &self.direct {
            direct.table.disable();
        }
        &mut self.producer
    }

    /// Wakes the loop if it sleeps.
    #[inline]
    pub fn wake(&self) {
        self.waker.wake();
    }
}

impl<E> DirectPath<E> {
    /// Writes `scratch` to its connection if it is idle; `Some(conn)` if it must go through
    /// the ring instead.
    #[inline]
    fn try_write(&mut self, waker: &LoopWaker) -> Option<ConnId> {
        let conn = self.encoder.destination(&self.scratch);
        if !self.table.idle(conn) {
            return Some(conn);
        }
        self.bytes.clear();
        self.encoder.encode(&self.scratch, &mut self.bytes);
        let mut wake = false;
        match self.table.write(conn, &self.bytes, &mut wake) {
            Direct::Written(n) => {
                Stats::add(&self.stats.direct_frames, 1);
                Stats::add(&self.stats.direct_bytes, n as u64);
                if wake {
                    waker.wake();
                }
                None
            }
            Direct::Route => Some(conn),
        }
    }

    /// Moves `scratch` into the claimed slot, marked as routed for `conn`, publishes it and
    /// wakes the loop; returns its sequence.
    #[inline]
    fn route<S: Sequencer>(
        &mut self,
        conn: ConnId,
        mut claim: Claim<'_, E, S>,
        waker: &LoopWaker,
    ) -> u64 {
        let sequence = claim.sequence();
        // Marked before the slot is published: see the protocol in `crate::direct`.
        self.table.routed(conn, sequence);
        std::mem::swap(&mut *claim, &mut self.scratch);
        drop(claim);
        waker.wake();
        sequence
    }
}

/// Responses an [`Inline`](crate::Inline) handler made while the egress ring was full,
/// held in order until the loop has drained the ring.
///
/// The loop is the egress ring's only consumer and does not run while the handler does,
/// so a handler on the loop's thread must never wait for room: it sends through a
/// `Backlog`, which publishes while there is room and nothing is held, and holds the rest;
/// [`flush`](Self::flush) at the start of each turn publishes what is held, and the
/// handler takes no new work until it is empty (so later responses cannot overtake held
/// ones, and its ingress ring fills, which pauses reading).
#[derive(Debug)]
pub struct Backlog<E> {
    held: VecDeque<E>,
    /// Events to write the next responses into (what published slots held before).
    spare: Vec<E>,
}

impl<E: Default> Default for Backlog<E> {
    fn default() -> Self {
        Self {
            held: VecDeque::new(),
            spare: Vec::new(),
        }
    }
}

impl<E: Default> Backlog<E> {
    /// Whether no response is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Makes a response with `write` (on an event that may hold an earlier response's
    /// data: overwrite every field) and publishes it, or holds it when responses are
    /// already held or the ring is full.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Halted`] or [`TryPublishError::Closed`]: the ring will take
    /// nothing more, and the response is dropped.
    pub fn send<S: Sequencer>(
        &mut self,
        egress: &mut Egress<E, S>,
        write: impl FnOnce(&mut E),
    ) -> Result<(), TryPublishError> {
        let mut event = self.spare.pop().unwrap_or_default();
        write(&mut event);
        if self.held.is_empty() {
            match egress.try_publish_swap(&mut event) {
                Ok(_) => {
                    self.spare.push(event);
                    return Ok(());
                }
                Err(TryPublishError::Full) => {}
                Err(e) => return Err(e),
            }
        }
        self.held.push_back(event);
        Ok(())
    }

    /// Publishes held responses, in order, while the ring has room. Returns whether none
    /// is left held.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Halted`] or [`TryPublishError::Closed`]: the ring will take
    /// nothing more; the held responses are dropped and their count returned.
    pub fn flush<S: Sequencer>(&mut self, egress: &mut Egress<E, S>) -> Result<bool, usize> {
        while let Some(mut event) = self.held.pop_front() {
            match egress.try_publish_swap(&mut event) {
                Ok(_) => self.spare.push(event),
                Err(TryPublishError::Full) => {
                    self.held.push_front(event);
                    return Ok(false);
                }
                Err(_) => {
                    let dropped = self.held.len() + 1;
                    self.held.clear();
                    return Err(dropped);
                }
            }
        }
        Ok(true)
    }

    /// Drops every held response (nothing will drain the ring any more); returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.held.len();
        self.held.clear();
        n
    }
}
