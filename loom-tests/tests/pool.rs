//! The work-pool protocol under the loom model checker.
//!
//! Run with the other models:
//! `RUSTFLAGS="--cfg loom -C debug-assertions" cargo test -p peregrine-loom-tests --release`.
//! Mutation: with `--cfg peregrine_mutation="pool_early_release"` (a worker marks the event it
//! just took as handled before handling it) the model fails: loom reports the producer
//! overwriting a slot a worker is still reading (`run-mutations.sh pool_early_release`).
#![cfg(loom)]

use std::sync::{Arc, Mutex};

use peregrine_loom_tests::check;
use peregrine_ring::{single_producer, WaitStrategy};

/// Two workers share a two-slot ring fed three events (so the producer wraps and must wait
/// for the pool's slowest worker): every event is handled by exactly one worker, each
/// sees the value written for it, and no slot is overwritten while a worker reads it.
#[test]
#[cfg_attr(peregrine_mutation = "pool_early_release", should_panic)]
fn each_event_goes_to_exactly_one_worker() {
    check(2, || {
        let handled = Arc::new(Mutex::new(Vec::new()));
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let h = Arc::clone(&handled);
        b.pool("pool", 2, move |_| {
            let h = Arc::clone(&h);
            move |e: &u64, seq: u64, _: bool| {
                assert_eq!(*e, seq + 100, "the worker sees the value written for it");
                h.lock().unwrap().push(seq);
            }
        })
        .add()
        .unwrap();
        let (mut p, _ring) = b.build().unwrap();
        for v in 0..3u64 {
            p.publish(|e| *e = v + 100).unwrap();
        }
        drop(p); // drains and joins both workers
        let mut seen = handled.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "each event exactly once");
    });
}
