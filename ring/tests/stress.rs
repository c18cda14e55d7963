//! Stress tests: many events through multi-producer and diamond topologies, checking that
//! every event arrives exactly once and in each producer's order.
//!
//! The event count comes from `PEREGRINE_STRESS_EVENTS` (default 2,000,000, so
//! `cargo test --workspace` stays quick). CI runs 100 million in release:
//!
//! ```text
//! PEREGRINE_STRESS_EVENTS=100000000 cargo test -p peregrine-ring --release --test stress
//! ```
//!
//! Threads wait with the phased strategy (spin, yield, then park), so the producers and
//! stages can outnumber the cores without starving each other. Each run ends with
//! [`Ring::shutdown`] under a timeout, so a wedged stage fails the test with the stages'
//! progress instead of hanging it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use peregrine_ring::{multi_producer, MultiProducer, Ring, WaitStrategy};

/// Producers in every scenario.
const PRODUCERS: usize = 2;
/// Events a producer writes per `publish_batch` (the second producer publishes in batches).
const BATCH: usize = 16;
/// How long a drain may take once the producers are done.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

fn events() -> u64 {
    std::env::var("PEREGRINE_STRESS_EVENTS")
        .ok()
        .map(|v| {
            v.replace('_', "")
                .parse()
                .expect("PEREGRINE_STRESS_EVENTS is a number")
        })
        .unwrap_or(2_000_000)
}

/// One event: who wrote it and its place in that producer's stream, plus one mark per
/// diamond branch so the join stage can check both branches saw it first.
#[derive(Debug, Default)]
struct Event {
    producer: u64,
    counter: u64,
    /// `sequence + 1`, written by the left branch of the diamond.
    left: AtomicU64,
    /// `sequence + 1`, written by the right branch of the diamond.
    right: AtomicU64,
}

/// Checks, inside a stage, that sequences are contiguous from 0 and that each producer's
/// counters arrive as 0, 1, 2, ... (so nothing is lost, duplicated or reordered).
/// Publishes the number of events checked to `handled` once per batch.
struct ExactlyOnce {
    next_sequence: u64,
    next_counter: [u64; PRODUCERS],
    handled: Arc<AtomicU64>,
}

impl ExactlyOnce {
    fn new(handled: &Arc<AtomicU64>) -> Self {
        Self {
            next_sequence: 0,
            next_counter: [0; PRODUCERS],
            handled: Arc::clone(handled),
        }
    }

    fn check(&mut self, e: &Event, sequence: u64, end_of_batch: bool) {
        assert_eq!(sequence, self.next_sequence, "sequence skipped or repeated");
        self.next_sequence += 1;
        let p = e.producer as usize;
        assert!(p < PRODUCERS, "event from unknown producer {p}");
        assert_eq!(
            e.counter, self.next_counter[p],
            "producer {p}: event lost, duplicated or out of order at sequence {sequence}"
        );
        self.next_counter[p] += 1;
        if end_of_batch {
            self.handled.store(self.next_sequence, Ordering::Relaxed);
        }
    }
}

/// Runs `PRODUCERS` threads publishing `total` events between them (producer 0 one by one,
/// producer 1 in batches), waits for them, drains the ring with a timeout, and checks that
/// no stage failed.
fn run(producer: MultiProducer<Event>, ring: &Ring<Event, peregrine_ring::Multi>, total: u64) {
    let per_producer = total / PRODUCERS as u64;
    let threads: Vec<_> = (0..PRODUCERS as u64)
        .map(|p| {
            let mut producer = producer.clone();
            thread::Builder::new()
                .name(format!("producer-{p}"))
                .spawn(move || {
                    let mut counter = 0;
                    while counter < per_producer {
                        let published = if p == 0 {
                            producer
                                .publish(|e| {
                                    e.producer = p;
                                    e.counter = counter;
                                })
                                .map(|_| 1)
                        } else {
                            let n = (per_producer - counter).min(BATCH as u64);
                            producer
                                .publish_batch(n as usize, |e, _| {
                                    e.producer = p;
                                    e.counter = counter;
                                    counter += 1;
                                })
                                .map(|_| 0)
                        };
                        match published {
                            Ok(n) => counter += n,
                            // A stage failed and halted the ring; the caller reports why.
                            Err(_) => return,
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().expect("producer thread");
    }
    let drained = ring.shutdown(DRAIN_TIMEOUT);
    assert_eq!(ring.failure(), None, "a stage failed");
    drained.expect("stages drain within the timeout");
    drop(producer);
}

/// Two producers, one stage: every event arrives exactly once, each producer's in order.
#[test]
fn multi_producer_exactly_once_in_order() {
    let total = events();
    let handled = Arc::new(AtomicU64::new(0));
    let mut checker = ExactlyOnce::new(&handled);
    let mut b = multi_producer(1024, Event::default)
        .unwrap()
        .wait_strategy(WaitStrategy::phased());
    b.stage("check", move |e: &Event, s: u64, eob: bool| {
        checker.check(e, s, eob)
    })
    .add()
    .unwrap();
    let (producer, ring) = b.build().unwrap();
    let start = Instant::now();
    run(producer, &ring, total);
    let expected = total / PRODUCERS as u64 * PRODUCERS as u64;
    assert_eq!(handled.load(Ordering::Relaxed), expected);
    eprintln!(
        "multi-producer: {expected} events in {:.2?}",
        start.elapsed()
    );
}

/// Two producers into a diamond (`left` and `right` in parallel, `join` after both): every
/// stage sees every event exactly once, each producer's in order, and `join` sees both
/// branches' marks on every event (it never overtakes either branch).
#[test]
fn diamond_exactly_once_in_order() {
    let total = events();
    let counts: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut b = multi_producer(1024, Event::default)
        .unwrap()
        .wait_strategy(WaitStrategy::phased());
    let mut check = ExactlyOnce::new(&counts[0]);
    let left = b
        .stage("left", move |e: &Event, s: u64, eob: bool| {
            check.check(e, s, eob);
            // Relaxed: `join` reads it after acquiring this stage's sequence.
            e.left.store(s + 1, Ordering::Relaxed);
        })
        .add()
        .unwrap();
    let mut check = ExactlyOnce::new(&counts[1]);
    let right = b
        .stage("right", move |e: &Event, s: u64, eob: bool| {
            check.check(e, s, eob);
            e.right.store(s + 1, Ordering::Relaxed);
        })
        .add()
        .unwrap();
    let mut check = ExactlyOnce::new(&counts[2]);
    b.stage("join", move |e: &Event, s: u64, eob: bool| {
        assert_eq!(e.left.load(Ordering::Relaxed), s + 1, "join overtook left");
        assert_eq!(
            e.right.load(Ordering::Relaxed),
            s + 1,
            "join overtook right"
        );
        check.check(e, s, eob);
    })
    .after(&[left, right])
    .add()
    .unwrap();
    let (producer, ring) = b.build().unwrap();
    let start = Instant::now();
    run(producer, &ring, total);
    let expected = total / PRODUCERS as u64 * PRODUCERS as u64;
    for (stage, count) in ["left", "right", "join"].iter().zip(&counts) {
        assert_eq!(count.load(Ordering::Relaxed), expected, "stage {stage}");
    }
    eprintln!("diamond: {expected} events in {:.2?}", start.elapsed());
}
