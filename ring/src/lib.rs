//! A Disruptor-style lock-free ring buffer for latency-critical pipelines.
//!
//! Events live in preallocated slots of a power-of-two ring. Producers claim slots, write
//! them in place and publish; stages (each on its own named, optionally pinned thread) read
//! them in place, in order, in batches. Progress is a handful of cache-padded `u64`
//! [`Sequence`]s: no locks, no allocation, no copying on the hot path.
//!
//! # A tour
//!
//! One producer, one stage:
//!
//! ```
//! use peregrine_ring::{single_producer, WaitStrategy};
//! use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
//!
//! #[derive(Default)]
//! struct Order { id: u64, price: u64 }
//!
//! let total = Arc::new(AtomicU64::new(0));
//! let seen = Arc::clone(&total);
//! let mut builder = single_producer(1024, Order::default)?
//!     .wait_strategy(WaitStrategy::blocking());
//! builder
//!     .stage("book", move |o: &Order, _seq: u64, _end_of_batch: bool| {
//!         seen.fetch_add(o.price, Ordering::Relaxed);
//!     })
//!     .add()?;
//! let (mut producer, _ring) = builder.build()?;
//! for id in 0..100 {
//!     producer.publish(|o| { o.id = id; o.price = 10 })?;
//! }
//! drop(producer); // the stage handles all 100 events, then its thread is joined
//! assert_eq!(total.load(Ordering::Relaxed), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Topologies
//!
//! Stages without [`after`](StageBuilder::after) read straight behind the producer and run
//! in parallel (multicast); `after` gates a stage on earlier ones (pipeline, diamond):
//!
//! ```text
//!  multicast           pipeline             diamond
//!
//!      +-> A        P -> A -> B -> C       +-> A --+
//!  P --+-> B                           P --+       +-> C
//!      +-> C                               +-> B --+
//! ```
//!
//! ```
//! use peregrine_ring::{single_producer, WaitStrategy};
//! use std::sync::{Arc, Mutex};
//!
//! let log = Arc::new(Mutex::new(Vec::new()));
//! let mut b = single_producer(64, || 0u32)?.wait_strategy(WaitStrategy::blocking());
//! // Diamond: `journal` and `replicate` in parallel, `logic` after both.
//! let journal = b.stage("journal", |_: &u32, _: u64, _: bool| {}).add()?;
//! let replicate = b.stage("replicate", |_: &u32, _: u64, _: bool| {}).add()?;
//! let sink = Arc::clone(&log);
//! b.stage("logic", move |v: &u32, _: u64, _: bool| sink.lock().unwrap().push(*v))
//!     .after(&[journal, replicate])
//!     .add()?;
//! let (mut p, _ring) = b.build()?;
//! for v in 0..10 {
//!     p.publish(|e| *e = v)?;
//! }
//! drop(p);
//! assert_eq!(*log.lock().unwrap(), (0..10).collect::<Vec<_>>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A three-stage pipeline with a maximum batch size, and several producers:
//!
//! ```
//! use peregrine_ring::{multi_producer, WaitStrategy};
//! use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
//!
//! let handled = Arc::new(AtomicU64::new(0));
//! let count = Arc::clone(&handled);
//! let mut b = multi_producer(256, || 0u64)?.wait_strategy(WaitStrategy::phased());
//! let decode = b.stage("decode", |_: &u64, _: u64, _: bool| {}).max_batch(32).add()?;
//! let logic = b.stage("logic", |_: &u64, _: u64, _: bool| {}).after(&[decode]).add()?;
//! b.stage("send", move |_: &u64, _: u64, _: bool| { count.fetch_add(1, Ordering::Relaxed); })
//!     .after(&[logic])
//!     .add()?;
//! let (producer, _ring) = b.build()?;
//! let threads: Vec<_> = (0..2)
//!     .map(|_| {
//!         let mut p = producer.clone();
//!         std::thread::spawn(move || for i in 0..500 { p.publish(|e| *e = i).unwrap(); })
//!     })
//!     .collect();
//! for t in threads { t.join().unwrap(); }
//! drop(producer); // the last producer drains and joins
//! assert_eq!(handled.load(Ordering::Relaxed), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Publishing
//!
//! - [`Producer::publish`] waits (by the wait strategy) while the ring is full;
//!   [`Producer::try_publish`] never waits and returns [`TryPublishError::Full`].
//! - [`Producer::publish_batch`] / [`Producer::claim_batch`] claim `n` slots and publish
//!   them together: stages see all of a batch or none of it.
//! - [`single_producer_stamped`] rings stamp the slot of each publish, in the slot's own
//!   cache line. A waiting stage gated only on the producer waits
//!   on the stamp of the next slot, so the event and the news that it is there arrive in
//!   one cache-line transfer (the cursor, a line of its own, is a second one in turn); it
//!   reads the cursor only for a backlog. For latency-critical hops of one event at a time;
//!   the slots are 8 bytes larger.
//! - Every claim is a guard that publishes on drop: a panic while writing a slot still
//!   publishes it, so stages never stall on a gap.
//!
//! ## Consuming
//!
//! A stage runs an [`EventHandler`] (or a closure `FnMut(&E, u64, bool)`) with batch-start,
//! start, shutdown and timeout hooks. A [`Poller`] is a stage without a thread for users who
//! run their own loop:
//!
//! ```
//! use peregrine_ring::{single_producer, PollState, WaitStrategy};
//!
//! let mut b = single_producer(8, || 0u8)?.wait_strategy(WaitStrategy::blocking());
//! let id = b.poller("mine").add()?;
//! let (mut p, mut ring) = b.build()?;
//! let mut poller = ring.take_poller(id).expect("added above");
//! p.publish(|e| *e = 7)?;
//! let mut got = Vec::new();
//! assert_eq!(poller.poll(|e, _, _| got.push(*e)), PollState::Events(1));
//! assert_eq!(poller.poll(|_, _, _| {}), PollState::Idle);
//! drop(p);
//! assert_eq!(poller.poll(|_, _, _| {}), PollState::Drained);
//! assert_eq!(got, [7]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Failures
//!
//! A handler's returned error ([`RingBuilder::try_stage`]) or panic never kills its thread
//! silently: the stage's [`FailurePolicy`] decides (halt, log and continue, retry with
//! backoff, rewind the batch, or hand the event to a [`DeadLetterSink`]). See
//! [`FailurePolicy`] for an example of each.
//!
//! ## Work pools and exclusive stages
//!
//! [`RingBuilder::pool`] adds N workers where each event goes to exactly one of them (a
//! consumer group), anywhere in the graph. [`RingBuilder::exclusive_stage`] hands its
//! handler `&mut E`, for a stage that is alone with its events (every other stage upstream
//! or downstream of it; the builder checks).
//!
//! ## Telemetry
//!
//! [`Ring::telemetry`] returns plain numbers: per stage its sequence, lag behind the
//! cursor, events, batch-size histogram and failures; and producer stalls. Counters are
//! written once per batch by their only writer, cheap enough to leave on.
//!
//! ## When the ring is full
//!
//! [`RingBuilder::when_full`] chooses what `publish` does: wait by the ring's strategy,
//! spin, yield, park, wait up to a timeout ([`PublishError::Timeout`]) or fail at once
//! ([`PublishError::Full`]); [`Producer::publish_timeout`] bounds one publish.
//!
//! ## Async
//!
//! With the `async` feature, `AsyncProducer` publishes by suspending the task (never
//! spinning) while the ring is full, and `PollerStream` exposes a poller as a
//! `futures_core::Stream`; see `examples/tokio_service.rs`.
//!
//! ## Wait strategies
//!
//! See [`WaitStrategy`] for the table of trade-offs. On a machine with fewer cores than
//! spinning threads, prefer `blocking` or `phased`; the builder refuses more busy-spinning
//! stage threads than cores unless [`RingBuilder::allow_oversubscription`] is set.
//!
//! ## Lifecycle
//!
//! - Dropping every producer closes the ring: stages drain what is published, call
//!   `on_shutdown`, and the last producer's drop joins their threads.
//! - [`Ring::shutdown`] drains with a timeout and reports what was left if it passes.
//! - [`Ring::halt`] stops at the next batch boundary without draining.
//! - A stage that panics halts the ring: producers get [`PublishError::Halted`] instead of
//!   waiting forever, and [`Ring::failure`] tells which stage and why.
//!
//! ## Threads and cores
//!
//! Each stage thread carries its stage's name (visible in `top -H`, `perf report
//! --sort comm`). [`StageBuilder::pin`] pins it; a core outside the process's affinity
//! mask is [`BuildError::CoreUnavailable`], checked before any thread starts.

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
// The README's examples compile and run as doc tests.
#![cfg_attr(doctest, doc = include_str!("../../README.md"))]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

pub mod affinity;
#[cfg(feature = "async")]
mod asynchronous;
mod buffer;
mod builder;
mod core;
mod error;
mod failure;
mod handler;
mod poller;
mod producer;
mod reader;
mod sequence;
mod sequencer;
mod stage;
mod sync;
mod telemetry;
pub mod wait;

#[cfg(feature = "async")]
pub use asynchronous::{AsyncError, AsyncProducer, PollerStream};
pub use builder::{
    multi_producer, single_producer, single_producer_stamped, Built, Ring, RingBuilder,
    StageBuilder, StageId, DEFAULT_STREAM_BACKOFF,
};
pub use error::{BuildError, PublishError, ShutdownError, StageProgress, TryPublishError};
pub use failure::{DeadLetter, DeadLetterSink, Failure, FailurePolicy, MemoryDeadLetters};
pub use handler::{BoxError, EventHandler, ExclusiveHandler, TryEventHandler};
pub use poller::{PollState, Poller};
pub use producer::{
    BatchClaim, Claim, MultiProducer, Producer, SingleProducer, StampedProducer, WhenFull,
};
pub use sequence::Sequence;
pub use sequencer::{Multi, Sequencer, Single, Stamped};
pub use telemetry::{StageTelemetry, Telemetry, BATCH_BUCKETS};
pub use wait::{Notifier, WaitStrategy};
