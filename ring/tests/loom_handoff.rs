//! The single-producer publish/consume handoff under the loom model checker: proof that
//! the concurrency shim routes every shared access through loom. The full set of models
//! lives in `peregrine-loom-tests`.
//!
//! Run: `RUSTFLAGS="--cfg loom -C debug-assertions" cargo test -p peregrine-ring --test loom_handoff --release`
//! Mutations it catches (the test then expects its panic): `sequence_relaxed` (the cursor's
//! Release/Acquire weakened to Relaxed) and `no_gating` (the producer does not wait for the
//! consumer before overwriting a slot); both end in loom's "Causality violation".
#![cfg(loom)]

use loom::thread;
use peregrine_ring::{single_producer, PollState, WaitStrategy};

/// A producer publishes three values through a two-slot ring (so it wraps and must wait for
/// the consumer); the consumer sees exactly those values, in order. Loom reports a data
/// race if the cursor's Release/Acquire pair were weakened, or if the producer overwrote a
/// slot the consumer had not finished reading.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "sequence_relaxed",
        peregrine_mutation = "no_gating"
    ),
    should_panic
)]
fn single_producer_handoff() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::busy_spin());
        let id = b.poller("consumer").add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut poller = ring.take_poller(id).unwrap();
        let t = thread::spawn(move || {
            for v in 1..=3u64 {
                producer.publish(|e| *e = v * 10).unwrap();
            }
        });
        let mut seen = Vec::new();
        loop {
            match poller.poll(|e, seq, _| seen.push((seq, *e))) {
                PollState::Drained => break,
                PollState::Halted => panic!("not halted"),
                PollState::Events(_) | PollState::Idle => thread::yield_now(),
            }
        }
        t.join().unwrap();
        assert_eq!(seen, [(0, 10), (1, 20), (2, 30)]);
    });
}
