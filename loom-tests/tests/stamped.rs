//! loom models of the stamped single-producer ring (`single_producer_stamped`): the slot
//! stamps that publish one event at a time, the batch stamp written after the cursor that
//! keeps a batch all-or-nothing, the cursor read behind a backlog, and the waits and the
//! close that look at stamps instead of the cursor.
//!
//! As in `models.rs`, each model names the deliberate bugs it catches and is
//! `should_panic` under them (`run-mutations.sh` runs it so).
#![cfg(loom)]

use loom::thread;
use peregrine_loom_tests::{check, drain, Hold};
use peregrine_ring::{single_producer_stamped, PollState, WaitStrategy};

/// The value the producer writes for sequence `s`: never the slots' initial `0`.
fn value(s: u64) -> u64 {
    1000 + s
}

/// Two slots, three events one by one: the producer wraps and waits for the consumer,
/// which finds each event by its slot's stamp.
///
/// Property: the consumer sees exactly the events published, in order, each with its own
/// sequence, and every slot read happens after the write that filled it.
///
/// Breaks under `stamp_relaxed` (the stamp publishes the event without its write: loom
/// reports the unsynchronised slot read), `sequence_relaxed` (the producer reuses a slot
/// the consumer is still reading) and `no_gating`.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "stamp_relaxed",
        peregrine_mutation = "sequence_relaxed",
        peregrine_mutation = "no_gating"
    ),
    should_panic
)]
fn stamped_single_producer_wraps_without_overwriting() {
    check(3, || {
        let mut b = single_producer_stamped(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::busy_spin());
        let id = b.poller("consumer").add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut poller = ring.take_poller(id).unwrap();
        let t = thread::spawn(move || {
            for s in 0..3 {
                assert_eq!(producer.publish(|e| *e = value(s)).unwrap(), s);
            }
        });
        let seen = drain(&mut poller, |_| {});
        t.join().unwrap();
        let expected: Vec<_> = (0..3).map(|s| (s, value(s))).collect();
        assert_eq!(seen, expected);
    });
}

/// Publishes two batches of `batch` events into a ring of `capacity` slots and checks that
/// every poll that finds events finds whole batches, each event as written.
fn batches_are_all_or_nothing(capacity: usize, batch: u64) {
    check(3, move || {
        let mut b = single_producer_stamped(capacity, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::busy_spin());
        let id = b.poller("consumer").add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut poller = ring.take_poller(id).unwrap();
        let t = thread::spawn(move || {
            for k in 0..2 {
                let range = producer
                    .publish_batch(batch as usize, |e, s| *e = value(s))
                    .unwrap();
                assert_eq!(range, k * batch..(k + 1) * batch);
            }
        });
        let seen = drain(&mut poller, |n| {
            assert_eq!(n % batch, 0, "saw {n} events: part of a batch was visible");
        });
        t.join().unwrap();
        let expected: Vec<_> = (0..2 * batch).map(|s| (s, value(s))).collect();
        assert_eq!(seen, expected);
    });
}

/// Two batches of two through two slots: the consumer finds each batch by the stamp of its
/// first slot, which the producer writes after moving the cursor past the batch, and takes
/// the batch's end from the cursor.
///
/// Property: a batch becomes visible all at once, and each event reads as written.
///
/// Breaks under `stamp_in_order` (the first slot stamped before the cursor moves: a
/// consumer that finds it reads a cursor short of the batch's end).
#[test]
#[cfg_attr(peregrine_mutation = "stamp_in_order", should_panic)]
fn stamped_batch_publish_is_all_or_nothing() {
    batches_are_all_or_nothing(2, 2);
}

/// Two batches of two through four slots: the consumer can find the second batch stamped
/// behind the first and read the cursor for the whole backlog.
///
/// Property: as above, on the path where the end of a backlog comes from the cursor.
///
/// Breaks under `batch_per_slot` (the cursor stops inside the second batch) and
/// `stamp_in_order`.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "batch_per_slot",
        peregrine_mutation = "stamp_in_order"
    ),
    should_panic
)]
fn stamped_backlog_of_batches_is_seen_in_whole_batches() {
    batches_are_all_or_nothing(4, 2);
}

/// A consumer parked by the blocking strategy, which looks at the next slot's stamp when
/// woken, and a producer publishing three events into two slots, then dropped (closing the
/// ring) once the consumer has everything.
///
/// Property: no wake-up is lost (loom reports a deadlock if the consumer parks for good),
/// every event arrives in order, and the drained ring reports `Drained`.
///
/// Breaks under `notifier_no_fence` (a publish between the consumer's last look and its
/// park is missed).
#[test]
#[cfg_attr(peregrine_mutation = "notifier_no_fence", should_panic)]
fn stamped_blocking_ring_loses_no_wakeup() {
    check(3, || {
        let mut b = single_producer_stamped(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let id = b.poller("consumer").add().unwrap();
        let (producer, ring) = b.build().unwrap();
        let (mut producer, mut ring) = (Hold::new(producer), Hold::new(ring));
        let mut poller = Hold::new(ring.take_poller(id).unwrap());
        let t = thread::spawn(move || {
            for s in 0..3 {
                producer.publish(|e| *e = value(s)).unwrap();
            }
            producer
        });
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match poller.poll_wait(|e, s, _| seen.push((s, *e))) {
                PollState::Events(n) => assert!(n > 0),
                other => panic!("open ring with events to come returned {other:?}"),
            }
        }
        drop(t.join().unwrap());
        assert_eq!(poller.poll_wait(|_, _, _| {}), PollState::Drained);
        let expected: Vec<_> = (0..3).map(|s| (s, value(s))).collect();
        assert_eq!(seen, expected);
    });
}

/// The last producer drops (closing the ring) right after publishing, racing with a
/// polling consumer.
///
/// Property: the consumer reports `Drained` only after handling every event published
/// before the close: all three arrive, in order.
///
/// Breaks under `close_no_recheck` (the consumer stops as soon as it sees the ring closed,
/// without a last look, and loses the events published just before).
#[test]
#[cfg_attr(peregrine_mutation = "close_no_recheck", should_panic)]
fn stamped_close_racing_publish_drains_everything() {
    check(3, || {
        let mut b = single_producer_stamped(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::busy_spin());
        let id = b.poller("consumer").add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut poller = ring.take_poller(id).unwrap();
        let t = thread::spawn(move || {
            for s in 0..3 {
                producer.publish(|e| *e = value(s)).unwrap();
            }
        });
        let seen = drain(&mut poller, |_| {});
        t.join().unwrap();
        let expected: Vec<_> = (0..3).map(|s| (s, value(s))).collect();
        assert_eq!(seen, expected);
    });
}
