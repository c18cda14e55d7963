//! Exactly-once, in-order delivery through every topology, with single and batch
//! publishing, under the blocking and phased strategies.
//!
//! `PEREGRINE_TEST_EVENTS` sets the event count per run (default 10 million).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use peregrine_ring::{single_producer, EventHandler, StageId, WaitStrategy};

fn events() -> u64 {
    std::env::var("PEREGRINE_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// The value a producer writes for `sequence`; stages check it.
fn value_for(sequence: u64) -> u64 {
    sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD
}

/// Checks that it sees every sequence once, in order, with the right value, and that every
/// stage it is gated on has handled the event before it.
struct Checker {
    name: &'static str,
    expected: u64,
    progress: Arc<AtomicU64>,
    upstream: Vec<Arc<AtomicU64>>,
    errors: Arc<Mutex<Vec<String>>>,
    batches: u64,
}

impl EventHandler<u64> for Checker {
    fn on_event(&mut self, event: &u64, sequence: u64, _end_of_batch: bool) {
        if sequence != self.expected || *event != value_for(sequence) {
            self.fail(format!(
                "expected sequence {} got {sequence} (value ok: {})",
                self.expected,
                *event == value_for(sequence)
            ));
        }
        if self
            .upstream
            .iter()
            .any(|up| up.load(Ordering::Acquire) <= sequence)
        {
            self.fail(format!("overtook an upstream stage at {sequence}"));
        }
        self.expected = sequence + 1;
        self.progress.store(sequence + 1, Ordering::Release);
    }

    fn on_batch_start(&mut self, batch_size: u64, queue_depth: u64) {
        if batch_size == 0 || batch_size > queue_depth {
            self.fail(format!("bad batch {batch_size} of depth {queue_depth}"));
        }
        self.batches += 1;
    }
}

impl Checker {
    fn fail(&self, msg: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 10 {
            e.push(format!("{}: {msg}", self.name));
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Topology {
    Unicast,
    Multicast,
    Pipeline,
    Diamond,
}

#[derive(Clone, Copy, Debug)]
enum Publish {
    Single,
    Batch(usize),
}

fn run(topology: Topology, publish: Publish, wait: WaitStrategy) {
    let n = events();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut builder = single_producer(1024, || 0u64).unwrap().wait_strategy(wait);
    let mut progress = Vec::new();
    let mut add = |b: &mut peregrine_ring::RingBuilder<u64, _>,
                   name: &'static str,
                   after: &[(StageId, Arc<AtomicU64>)]|
     -> (StageId, Arc<AtomicU64>) {
        let p = Arc::new(AtomicU64::new(0));
        progress.push(Arc::clone(&p));
        let checker = Checker {
            name,
            expected: 0,
            progress: Arc::clone(&p),
            upstream: after.iter().map(|(_, p)| Arc::clone(p)).collect(),
            errors: Arc::clone(&errors),
            batches: 0,
        };
        let ids: Vec<StageId> = after.iter().map(|(id, _)| *id).collect();
        let id = b.stage(name, checker).after(&ids).add().unwrap();
        (id, p)
    };
    match topology {
        Topology::Unicast => {
            add(&mut builder, "only", &[]);
        }
        Topology::Multicast => {
            add(&mut builder, "left", &[]);
            add(&mut builder, "right", &[]);
        }
        Topology::Pipeline => {
            let a = add(&mut builder, "first", &[]);
            let b = add(&mut builder, "second", &[a]);
            add(&mut builder, "third", &[b]);
        }
        Topology::Diamond => {
            let a = add(&mut builder, "left", &[]);
            let b = add(&mut builder, "right", &[]);
            add(&mut builder, "join", &[a, b]);
        }
    }
    let (mut producer, _ring) = builder.build().unwrap();
    match publish {
        Publish::Single => {
            for s in 0..n {
                let seq = producer.publish(|e| *e = value_for(s)).unwrap();
                assert_eq!(seq, s);
            }
        }
        Publish::Batch(size) => {
            let mut s = 0;
            while s < n {
                let k = size.min((n - s) as usize);
                let range = producer
                    .publish_batch(k, |e, seq| *e = value_for(seq))
                    .unwrap();
                assert_eq!(range, s..s + k as u64);
                s += k as u64;
            }
        }
    }
    drop(producer); // drains and joins
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{topology:?} {publish:?} {wait:?}: {errors:?}"
    );
    for p in progress {
        assert_eq!(
            p.load(Ordering::Acquire),
            n,
            "{topology:?} {publish:?}: a stage did not see every event"
        );
    }
}

macro_rules! delivery_tests {
    ($($name:ident: $topology:expr, $publish:expr, $wait:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run($topology, $publish, $wait);
            }
        )*
    };
}

delivery_tests! {
    unicast_single_blocking: Topology::Unicast, Publish::Single, WaitStrategy::blocking();
    unicast_batch_blocking: Topology::Unicast, Publish::Batch(100), WaitStrategy::blocking();
    unicast_single_phased: Topology::Unicast, Publish::Single, WaitStrategy::phased();
    unicast_batch_phased: Topology::Unicast, Publish::Batch(10), WaitStrategy::phased();
    multicast_single_blocking: Topology::Multicast, Publish::Single, WaitStrategy::blocking();
    multicast_batch_blocking: Topology::Multicast, Publish::Batch(64), WaitStrategy::blocking();
    multicast_single_phased: Topology::Multicast, Publish::Single, WaitStrategy::phased();
    multicast_batch_phased: Topology::Multicast, Publish::Batch(64), WaitStrategy::phased();
    pipeline_single_blocking: Topology::Pipeline, Publish::Single, WaitStrategy::blocking();
    pipeline_batch_blocking: Topology::Pipeline, Publish::Batch(100), WaitStrategy::blocking();
    pipeline_single_phased: Topology::Pipeline, Publish::Single, WaitStrategy::phased();
    pipeline_batch_phased: Topology::Pipeline, Publish::Batch(100), WaitStrategy::phased();
    diamond_single_blocking: Topology::Diamond, Publish::Single, WaitStrategy::blocking();
    diamond_batch_blocking: Topology::Diamond, Publish::Batch(37), WaitStrategy::blocking();
    diamond_single_phased: Topology::Diamond, Publish::Single, WaitStrategy::phased();
    diamond_batch_phased: Topology::Diamond, Publish::Batch(37), WaitStrategy::phased();
}
