//! [`Link`]: a one-way channel of `u64` values between two threads, with non-blocking ends,
//! implemented by peregrine, each peer and the cache-line floor.
//!
//! Waiting is the caller's business (a spin or a yield between tries), so every peer waits
//! the same way and the comparison measures the channel, not its parking policy.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use disruptor::{BusySpin, EventPoller, SingleConsumerBarrier, SingleProducerBarrier};

use peregrine_ring::{
    PollState, Poller, Producer, RingBuilder, Sequencer, Single, Stamped, WaitStrategy,
};

/// A one-way channel between two threads with non-blocking ends.
pub trait Link: 'static {
    /// The name printed in tables and result lines.
    const NAME: &'static str;
    /// Whether [`try_send_batch`](Self::try_send_batch) publishes a batch in one step.
    const BATCH: bool = false;
    /// The sending end.
    type Tx: Send + 'static;
    /// The receiving end.
    type Rx: Send + 'static;

    /// A channel holding up to `capacity` values (a power of two).
    fn link(capacity: usize) -> (Self::Tx, Self::Rx);

    /// Sends `value` if there is room now.
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool;

    /// Receives one value if one is ready now.
    fn try_recv(rx: &mut Self::Rx) -> Option<u64>;

    /// Hands every value ready now to `f` (as one batch where the channel has a batch read);
    /// returns how many.
    #[inline]
    fn drain(rx: &mut Self::Rx, mut f: impl FnMut(u64)) -> u64 {
        let mut n = 0;
        while let Some(v) = Self::try_recv(rx) {
            f(v);
            n += 1;
        }
        n
    }

    /// Sends `first .. first + n` as one batch if there is room for all of them now.
    /// Channels without a batch write (`BATCH == false`) send nothing and return `false`.
    #[inline]
    fn try_send_batch(tx: &mut Self::Tx, first: u64, n: usize) -> bool {
        let _ = (tx, first, n);
        false
    }

    /// Another sending end for another thread, where the channel has several senders.
    #[inline]
    fn clone_tx(tx: &Self::Tx) -> Option<Self::Tx> {
        let _ = tx;
        None
    }
}

/// peregrine: a single-producer ring with a [`Poller`] as the receiving end, the classic
/// ring ([`Peregrine`]) or the stamped one built for one-event hand-offs
/// ([`PeregrineStamped`]).
#[derive(Debug)]
pub struct PeregrineLink<S>(PhantomData<S>);

/// peregrine's classic single-producer ring (`single_producer`).
pub type Peregrine = PeregrineLink<Single>;

/// peregrine's stamped single-producer ring (`single_producer_stamped`).
pub type PeregrineStamped = PeregrineLink<Stamped>;

/// A kind of single-producer ring: its name in the tables and how to build one.
pub trait SingleRing: Sequencer {
    /// The name printed in tables and result lines.
    const NAME: &'static str;
    /// A ring of `u64` with `capacity` slots.
    fn builder(capacity: usize) -> RingBuilder<u64, Self>;
}

impl SingleRing for Single {
    const NAME: &'static str = "peregrine";
    fn builder(capacity: usize) -> RingBuilder<u64, Self> {
        peregrine_ring::single_producer(capacity, || 0u64).expect("power-of-two capacity")
    }
}

impl SingleRing for Stamped {
    const NAME: &'static str = "peregrine-stamped";
    fn builder(capacity: usize) -> RingBuilder<u64, Self> {
        peregrine_ring::single_producer_stamped(capacity, || 0u64).expect("power-of-two capacity")
    }
}

impl<S: SingleRing> Link for PeregrineLink<S> {
    const NAME: &'static str = S::NAME;
    const BATCH: bool = true;
    type Tx = Producer<u64, S>;
    type Rx = Poller<u64, S>;

    fn link(capacity: usize) -> (Self::Tx, Self::Rx) {
        let mut b = S::builder(capacity).wait_strategy(WaitStrategy::busy_spin());
        let id = b.poller("rx").add().expect("one poller");
        let (producer, mut ring) = b.build().expect("a ring with one poller builds");
        let poller = ring.take_poller(id).expect("added above");
        (producer, poller)
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        tx.try_publish(|e| *e = value).is_ok()
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        let mut out = None;
        rx.poll_one(|e, _, _| out = Some(*e));
        out
    }

    #[inline]
    fn drain(rx: &mut Self::Rx, mut f: impl FnMut(u64)) -> u64 {
        match rx.poll(|e, _, _| f(*e)) {
            PollState::Events(n) => n,
            _ => 0,
        }
    }

    #[inline]
    fn try_send_batch(tx: &mut Self::Tx, first: u64, n: usize) -> bool {
        tx.try_publish_batch(n, |e, s| *e = first.wrapping_add(s))
            .is_ok()
    }
}

/// The `disruptor` crate: a single-producer ring with an `EventPoller` as the receiving end.
#[derive(Debug)]
pub struct Disruptor;

impl Link for Disruptor {
    const NAME: &'static str = "disruptor";
    const BATCH: bool = true;
    type Tx = disruptor::SingleProducer<u64, SingleConsumerBarrier>;
    type Rx = EventPoller<u64, SingleProducerBarrier>;

    fn link(capacity: usize) -> (Self::Tx, Self::Rx) {
        let (poller, builder) =
            disruptor::build_single_producer(capacity, || 0u64, BusySpin).new_event_poller();
        (builder.build(), poller)
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        use disruptor::Producer;
        tx.try_publish(|e| *e = value).is_ok()
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        match rx.take(1) {
            Ok(mut guard) => (&mut guard).next().copied(),
            Err(_) => None,
        }
    }

    #[inline]
    fn drain(rx: &mut Self::Rx, mut f: impl FnMut(u64)) -> u64 {
        match rx.poll() {
            Ok(mut guard) => {
                let mut n = 0;
                for e in &mut guard {
                    f(*e);
                    n += 1;
                }
                n
            }
            Err(_) => 0,
        }
    }

    #[inline]
    fn try_send_batch(tx: &mut Self::Tx, first: u64, n: usize) -> bool {
        use disruptor::Producer;
        tx.try_batch_publish(n, |iter| {
            for (i, e) in iter.enumerate() {
                *e = first + i as u64;
            }
        })
        .is_ok()
    }
}

/// rtrb: a wait-free single-producer single-consumer ring of values.
#[derive(Debug)]
pub struct Rtrb;

impl Link for Rtrb {
    const NAME: &'static str = "rtrb";
    const BATCH: bool = true;
    type Tx = rtrb::Producer<u64>;
    type Rx = rtrb::Consumer<u64>;

    fn link(capacity: usize) -> (Self::Tx, Self::Rx) {
        rtrb::RingBuffer::new(capacity)
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        tx.push(value).is_ok()
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop().ok()
    }

    #[inline]
    fn drain(rx: &mut Self::Rx, mut f: impl FnMut(u64)) -> u64 {
        let ready = rx.slots();
        if ready == 0 {
            return 0;
        }
        match rx.read_chunk(ready) {
            Ok(chunk) => {
                for v in chunk {
                    f(v);
                }
                ready as u64
            }
            Err(_) => 0,
        }
    }

    #[inline]
    fn try_send_batch(tx: &mut Self::Tx, first: u64, n: usize) -> bool {
        match tx.write_chunk_uninit(n) {
            Ok(chunk) => {
                chunk.fill_from_iter(first..first + n as u64);
                true
            }
            Err(_) => false,
        }
    }
}

/// crossbeam's bounded lock-free `ArrayQueue` (any number of senders and receivers).
#[derive(Debug)]
pub struct ArrayQueue;

impl Link for ArrayQueue {
    const NAME: &'static str = "crossbeam-arrayqueue";
    type Tx = Arc<crossbeam_queue::ArrayQueue<u64>>;
    type Rx = Arc<crossbeam_queue::ArrayQueue<u64>>;

    fn link(capacity: usize) -> (Self::Tx, Self::Rx) {
        let q = Arc::new(crossbeam_queue::ArrayQueue::new(capacity));
        (Arc::clone(&q), q)
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        tx.push(value).is_ok()
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
    }

    fn clone_tx(tx: &Self::Tx) -> Option<Self::Tx> {
        Some(Arc::clone(tx))
    }
}

/// crossbeam-channel's bounded channel.
#[derive(Debug)]
pub struct Channel;

impl Link for Channel {
    const NAME: &'static str = "crossbeam-channel";
    type Tx = crossbeam_channel::Sender<u64>;
    type Rx = crossbeam_channel::Receiver<u64>;

    fn link(capacity: usize) -> (Self::Tx, Self::Rx) {
        crossbeam_channel::bounded(capacity)
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        tx.try_send(value).is_ok()
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        rx.try_recv().ok()
    }

    fn clone_tx(tx: &Self::Tx) -> Option<Self::Tx> {
        Some(tx.clone())
    }
}

/// The standard library's bounded `sync_channel`.
#[derive(Debug)]
pub struct StdMpsc;

impl Link for StdMpsc {
    const NAME: &'static str = "std-mpsc";
    type Tx = mpsc::SyncSender<u64>;
    type Rx = mpsc::Receiver<u64>;

    fn link(capacity: usize) -> (Self::Tx, Self::Rx) {
        mpsc::sync_channel(capacity)
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        tx.try_send(value).is_ok()
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        rx.try_recv().ok()
    }

    fn clone_tx(tx: &Self::Tx) -> Option<Self::Tx> {
        Some(tx.clone())
    }
}

/// The physical floor: the value itself, stored into one cache line and read from it.
///
/// A mailbox, not a queue: a send overwrites the line, so it only carries traffic where
/// each value is read before the next is sent (ping-pong, or sends spaced far apart) and
/// every value differs from the one before (the receiver reports a value when it changes).
#[derive(Debug)]
pub struct Floor;

impl Link for Floor {
    const NAME: &'static str = "floor (cache line)";
    type Tx = Arc<CachePadded<AtomicU64>>;
    type Rx = (Arc<CachePadded<AtomicU64>>, u64);

    fn link(_capacity: usize) -> (Self::Tx, Self::Rx) {
        let line = Arc::new(CachePadded::new(AtomicU64::new(0)));
        (Arc::clone(&line), (line, 0))
    }

    #[inline]
    fn try_send(tx: &mut Self::Tx, value: u64) -> bool {
        // Release: pairs with the Acquire load in `try_recv`, as a queue's publish would.
        tx.store(value, Ordering::Release);
        true
    }

    #[inline]
    fn try_recv(rx: &mut Self::Rx) -> Option<u64> {
        let v = rx.0.load(Ordering::Acquire);
        if v != rx.1 {
            rx.1 = v;
            Some(v)
        } else {
            None
        }
    }
}
