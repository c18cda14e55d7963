//! loom models of every concurrent protocol of `peregrine-ring`.
//!
//! Each model is a `#[test]` that runs one small scenario (rings of two to four slots, so
//! producers wrap and must wait for consumers) under `loom::model`, which runs it once per
//! distinct interleaving and memory-ordering outcome within the preemption bound. loom
//! itself fails a model on a data race on a slot (an `UnsafeCell` access not ordered by
//! happens-before), a deadlock (every thread parked), or a panic; the models add
//! assertions on what the consumers saw.
//!
//! Each model names the deliberate bug (`--cfg peregrine_mutation="NAME"`, see
//! `ring/src/sync.rs`) that it catches; under that cfg the model is `should_panic`, and
//! `run-mutations.sh` runs each model against its mutation to show that it does fail.
//!
//! Consumers are pollers driven from loom threads where possible (a poller spawns no
//! thread, so a model stays small); builder stages appear only where the stage loop is
//! the protocol under test (shutdown draining, the halt failure policy).
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use peregrine_loom_tests::scenarios::{self, value};
use peregrine_loom_tests::{check, consume, drain, Hold};
use peregrine_ring::{
    multi_producer, single_producer, Notifier, PollState, PublishError, WaitStrategy,
};

/// Single producer, one consumer, two slots, three events: the producer wraps around and
/// must wait for the consumer before reusing slot 0.
///
/// Property: the consumer sees exactly the events published, in order, each with its own
/// sequence; the producer never overwrites a slot the consumer has not finished with, and
/// every slot read happens after the write that filled it.
///
/// Breaks under `sequence_relaxed` (a Relaxed cursor publishes the sequence without the
/// slot write: loom reports the unsynchronised slot read) and `no_gating` (the producer
/// reuses slot 0 while sequence 0 is unread: the consumer sees event 2 as sequence 0).
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "sequence_relaxed",
        peregrine_mutation = "no_gating"
    ),
    should_panic
)]
fn single_producer_wraps_without_overwriting() {
    scenarios::wraps_without_overwriting(|n| single_producer(n, || 0u64).unwrap());
}

/// Two producers share a two-slot multi-producer ring; one publishes two events and the
/// other one, so the ring wraps while either may hold a claimed but unpublished slot.
///
/// Property: the consumer never reads a claimed-but-unpublished slot (it would see the
/// initial `0`, or loom a racing access); every sequence `0..3` is handled exactly once,
/// in order; each producer's events arrive in the order it published them.
///
/// Breaks under `skip_availability` (the consumer trusts the claim counter instead of the
/// per-slot availability words, and reads a slot its producer is still writing).
#[test]
#[cfg_attr(peregrine_mutation = "skip_availability", should_panic)]
fn multi_producer_never_reads_unpublished() {
    // Bound 2 keeps it to seconds; with LOOM_MAX_PREEMPTIONS=3 it also passes (about
    // 750,000 executions, a minute on two cores).
    check(2, || {
        let mut b = multi_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let id = b.poller("consumer").add().unwrap();
        let (first, mut ring) = b.build().unwrap();
        let second = first.clone();
        let mut poller = ring.take_poller(id).unwrap();
        // Producer `p` writes `100 * p + k` for its `k`-th event (`k` from 1).
        let spawn = |mut producer: peregrine_ring::MultiProducer<u64>, p: u64, events: u64| {
            thread::spawn(move || {
                for k in 1..=events {
                    producer.publish(|e| *e = 100 * p + k).unwrap();
                }
            })
        };
        let t1 = spawn(first, 1, 2);
        let t2 = spawn(second, 2, 1);
        let seen = drain(&mut poller, |_| {});
        t1.join().unwrap();
        t2.join().unwrap();

        let sequences: Vec<u64> = seen.iter().map(|&(s, _)| s).collect();
        assert_eq!(sequences, [0, 1, 2], "each sequence exactly once, in order");
        let from = |p: u64| -> Vec<u64> {
            seen.iter()
                .map(|&(_, v)| v)
                .filter(|v| v / 100 == p)
                .collect()
        };
        assert_eq!(from(1), [101, 102], "producer 1's events, in its order");
        assert_eq!(from(2), [201], "producer 2's event");
    });
}

/// A single producer publishes two batches of two into a two-slot ring with
/// `publish_batch` (one cursor update per batch), wrapping once.
///
/// Property: a batch becomes visible all at once: every poll that finds events finds a
/// whole number of batches (the cursor only ever moves by batch boundaries), and the
/// consumer reads each event as written.
///
/// Breaks under `batch_per_slot` (the cursor advances slot by slot inside a batch, so the
/// consumer can observe half a batch).
#[test]
#[cfg_attr(peregrine_mutation = "batch_per_slot", should_panic)]
fn batch_publish_is_all_or_nothing() {
    scenarios::batches_are_all_or_nothing(|n| single_producer(n, || 0u64).unwrap(), 2, 2);
}

/// A pipeline `producer -> first -> second` over two slots and three events, each poller
/// on its own thread; `second` is gated on `first` with `.after(&[first])`.
///
/// Property: the gated stage never overtakes the stage it depends on: when `second`
/// handles sequence `s`, `first` has already handled `s` (and what `first` did is
/// visible). The producer, gated only on `second`, therefore never overwrites a slot
/// `first` has not read either.
///
/// Breaks under `barrier_ignores_deps` (`second` reads behind the producer cursor instead
/// of behind `first`).
#[test]
#[cfg_attr(peregrine_mutation = "barrier_ignores_deps", should_panic)]
fn gated_stage_never_overtakes_its_dependency() {
    check(2, || {
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let first = b.poller("first").add().unwrap();
        let second = b.poller("second").after(&[first]).add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut first = ring.take_poller(first).unwrap();
        let mut second = ring.take_poller(second).unwrap();
        // How many events `first` has started handling, stored inside its handler, so
        // before `first` publishes its sequence.
        let first_seen = Arc::new(AtomicU64::new(0));

        let tp = thread::spawn(move || {
            for s in 0..3 {
                producer.publish(|e| *e = value(s)).unwrap();
            }
        });
        let seen_by_first = Arc::clone(&first_seen);
        let tf = thread::spawn(move || {
            consume(
                &mut first,
                |e, s| {
                    assert_eq!(*e, value(s), "first read a slot that was not its event");
                    seen_by_first.store(s + 1, Ordering::SeqCst);
                },
                |_| {},
            )
        });
        let mut handled = Vec::new();
        consume(
            &mut second,
            |e, s| {
                let first_done = first_seen.load(Ordering::SeqCst);
                assert!(
                    first_done > s,
                    "second handled sequence {s} before first (first at {first_done})"
                );
                handled.push((s, *e));
            },
            |_| {},
        );
        tp.join().unwrap();
        tf.join().unwrap();
        let expected: Vec<_> = (0..3).map(|s| (s, value(s))).collect();
        assert_eq!(handled, expected);
    });
}

/// The parking protocol on its own: one thread sets a flag and calls
/// [`Notifier::signal`]; another waits for the flag with [`Notifier::wait`] (no timeout).
///
/// Property: no lost wake-up. Whatever the interleaving of the waiter's announce, re-check
/// and park with the signaller's store and waiter-count load, the waiter returns (loom
/// reports a deadlock otherwise).
///
/// Breaks under `notifier_no_fence` (without the two SeqCst fences the waiter can miss the
/// flag while the signaller misses the waiter: both read stale values, the waiter parks for
/// ever).
#[test]
#[cfg_attr(peregrine_mutation = "notifier_no_fence", should_panic)]
fn blocking_notifier_loses_no_wakeup() {
    check(3, || {
        let notifier = Hold::new(Arc::new(Notifier::new()));
        let flag = Hold::new(Arc::new(AtomicU64::new(0)));
        let (n, f) = (
            Hold::new(Arc::clone(&notifier)),
            Hold::new(Arc::clone(&flag)),
        );
        let t = thread::spawn(move || {
            // Relaxed, like a sequence the waiter polls: the fence in `signal` is what
            // must order it before the waiter-count load.
            f.store(1, Ordering::Relaxed);
            n.signal();
        });
        let got = notifier.wait(None, || match flag.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        });
        assert_eq!(got, Ok(1));
        t.join().unwrap();
    });
}

/// The blocking strategy through a whole ring: two slots, three events, a consumer that
/// parks in `poll_wait` while the ring is empty and a producer that parks while it is full
/// (the third event), so wake-ups race with parking in both directions. The producer is
/// kept alive until the consumer is done, so the close at the end (which wakes everyone)
/// cannot hide a lost wake-up.
///
/// Property: neither side parks for ever (loom reports a deadlock otherwise), and the
/// consumer handles the three events in order.
///
/// Breaks under `notifier_no_fence` (a publish or a consumer's progress can miss the
/// thread parking for it).
#[test]
#[cfg_attr(peregrine_mutation = "notifier_no_fence", should_panic)]
fn blocking_ring_loses_no_wakeup() {
    scenarios::blocking_ring_loses_no_wakeup(|n| single_producer(n, || 0u64).unwrap());
}

/// The last producer drops (closing the ring) right after publishing, racing with a
/// consumer that is polling: the consumer may see the ring closed before it sees the last
/// events published.
///
/// Property: a consumer reports `Drained` only after handling every event published
/// before the close: all three events arrive, in order.
///
/// Breaks under `close_no_recheck` (the consumer stops as soon as it sees the ring closed,
/// without a last look at the cursor, and loses the events published just before).
#[test]
#[cfg_attr(peregrine_mutation = "close_no_recheck", should_panic)]
fn close_racing_publish_drains_everything() {
    scenarios::close_racing_publish_drains(|n| single_producer(n, || 0u64).unwrap());
}

/// The stage-thread side of the close: a producer publishes three events into a two-slot
/// ring with a stage thread (blocking strategy) and is dropped, the last producer, which
/// closes the ring and joins the stage while it may still be draining.
///
/// Property: the drop returns only once the stage has handled all three events, in order
/// (no hang, nothing lost at the close).
///
/// Breaks under `close_no_recheck` (the stage loop sees the close without a last look at
/// the cursor and stops with published events unhandled).
#[test]
#[cfg_attr(peregrine_mutation = "close_no_recheck", should_panic)]
fn last_producer_drop_drains_stage() {
    check(3, || {
        let handled = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&handled);
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        b.stage("stage", move |e: &u64, s: u64, _: bool| {
            // A panic here halts the ring; the count below then stays short.
            assert_eq!(counter.load(Ordering::Relaxed), s, "events out of order");
            assert_eq!(*e, value(s));
            counter.store(s + 1, Ordering::Relaxed);
        })
        .add()
        .unwrap();
        let (mut producer, ring) = b.build().unwrap();
        for s in 0..3 {
            assert_eq!(producer.publish(|e| *e = value(s)), Ok(s));
        }
        drop(producer); // closes the ring and joins the stage thread
        assert_eq!(handled.load(Ordering::Relaxed), 3);
        assert_eq!(ring.failure(), None);
    });
}

/// [`Ring::shutdown`](peregrine_ring::Ring::shutdown) from one thread while a producer on
/// another publishes three events into a two-slot ring with a stage thread (blocking
/// strategy).
///
/// Property: no hang (the stage drains and is joined, a producer waiting for room is
/// released with `Halted` once the shutdown halts the ring), every event acknowledged to
/// the producer before the shutdown began is handled, the stage handles events in order,
/// and the shutdown reports success.
///
/// Breaks under `close_no_recheck` (the stage stops on the close without a last look and
/// leaves acknowledged events unhandled) and `halt_ignored` (a producer waiting for room
/// after the stage stopped is never released).
///
/// `Ring::shutdown` waits for the stage threads through the concurrency shim (a yielding
/// sleep under loom), which is what lets loom model it.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "close_no_recheck",
        peregrine_mutation = "halt_ignored"
    ),
    should_panic
)]
fn shutdown_racing_publish_drains_and_releases() {
    // The producer outlives the shutdown: see `shutdown_racing_last_producer_drop` for
    // the case where it does not.
    check(2, || shutdown_racing_publish(false));
}

/// As `shutdown_racing_publish_drains_and_releases`, but the producer thread drops the last
/// producer (which closes the ring and joins the stage threads) while `Ring::shutdown`
/// runs, as a service that stops its input and its ring at the same time would.
///
/// Property: the same; in particular `shutdown` returns `Ok` only once the stage has
/// drained every acknowledged event.
///
/// This model found that `shutdown` returned `Ok` while the stage still had acknowledged
/// events to handle: the joining producer had taken the stage handles out of
/// `Core::threads`, so `shutdown` saw no thread left and halted at once.
///
/// `Core::joining`, the lock that serialises joiners, is held across a join, so it is a
/// loom mutex under loom (from the shim): loom sees the producer's drop wait for it.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "close_no_recheck",
        peregrine_mutation = "halt_ignored"
    ),
    should_panic
)]
fn shutdown_racing_last_producer_drop() {
    check(2, || shutdown_racing_publish(true));
}

/// The scenario of the two shutdown models; `drop_in_thread` drops the last producer on
/// its thread, racing with the shutdown, instead of after it.
fn shutdown_racing_publish(drop_in_thread: bool) {
    let handled = Hold::new(Arc::new(AtomicU64::new(0)));
    let counter = Arc::clone(&handled);
    let mut b = single_producer(2, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("stage", move |e: &u64, s: u64, _: bool| {
        // A panic here halts the ring, which the shutdown reports as a failure.
        assert_eq!(counter.load(Ordering::Relaxed), s, "events out of order");
        assert_eq!(*e, value(s));
        counter.store(s + 1, Ordering::Relaxed);
    })
    .add()
    .unwrap();
    let (producer, ring) = b.build().unwrap();
    let (mut producer, ring) = (Hold::new(producer), Hold::new(ring));
    let acked = Hold::new(Arc::new(AtomicU64::new(0)));
    let acks = Hold::new(Arc::clone(&acked));
    let t = thread::spawn(move || {
        let mut refused = false;
        for s in 0..3 {
            match producer.publish(|e| *e = value(s)) {
                Ok(seq) => {
                    assert!(!refused, "a publish succeeded after one was refused");
                    assert_eq!(seq, s);
                    acks.store(s + 1, Ordering::SeqCst);
                }
                // Refused once the shutdown has begun (closed), or ended (halted).
                Err(PublishError::Closed | PublishError::Halted) => refused = true,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        if drop_in_thread {
            drop(producer.into_inner());
            None
        } else {
            Some(producer)
        }
    });
    let acked_before = acked.load(Ordering::SeqCst);
    assert_eq!(ring.shutdown(std::time::Duration::from_secs(3600)), Ok(()));
    // The stage thread is joined: its last store is visible.
    let done = handled.load(Ordering::Relaxed);
    assert!(
        done >= acked_before,
        "{acked_before} events acknowledged before the shutdown, {done} handled"
    );
    drop(t.join().unwrap());
    assert!(done <= acked.load(Ordering::SeqCst));
}

/// [`Ring::halt`](peregrine_ring::Ring::halt) while the producer is blocked on a full
/// two-slot ring whose consumer never polls (blocking strategy, so the producer parks).
///
/// Property: the halt releases the producer: its publishes succeed until the ring is full
/// or halted, then every publish returns `Err(Halted)`; nothing hangs; the consumer then
/// reports `Halted`.
///
/// Breaks under `halt_ignored` (the waiting producer ignores the halt and parks again:
/// loom reports the deadlock).
#[test]
#[cfg_attr(peregrine_mutation = "halt_ignored", should_panic)]
fn halt_releases_blocked_producer() {
    check(3, || {
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let id = b.poller("consumer").add().unwrap();
        let (producer, ring) = b.build().unwrap();
        let (mut producer, mut ring) = (Hold::new(producer), Hold::new(ring));
        let mut poller = Hold::new(ring.take_poller(id).unwrap());
        let t = thread::spawn(move || {
            (0..3)
                .map(|s| producer.publish(|e| *e = value(s)))
                .collect::<Vec<_>>()
        });
        ring.halt();
        let results = t.join().unwrap();
        let ok = results.iter().take_while(|r| r.is_ok()).count();
        assert!(ok <= 2, "three events in a two-slot ring nobody consumes");
        assert!(
            results[ok..]
                .iter()
                .all(|r| *r == Err(PublishError::Halted)),
            "after the first refusal every publish is refused: {results:?}"
        );
        // A halted ring hands out nothing more, even what was published before the halt.
        assert_eq!(
            poller.poll(|_, s, _| panic!("sequence {s} handed out after the halt")),
            PollState::Halted
        );
    });
}

/// The failure policy "halt" (the default): a stage whose handler fails on the first event
/// halts the ring while the producer is publishing three events into two slots, so the
/// producer blocks on the full ring unless the halt came first.
///
/// Property: the failing stage releases the blocked producer: publishes succeed (at most
/// two, since the stage frees nothing) until one returns `Err(Halted)`, and every later
/// one does too; the ring reports which stage failed; nothing hangs.
///
/// Breaks under `halt_ignored` (the producer waiting for room never notices the halt).
#[test]
#[cfg_attr(peregrine_mutation = "halt_ignored", should_panic)]
fn failure_policy_halt_releases_blocked_producer() {
    check(3, || {
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        b.try_stage("fails", |_: &u64, _: u64, _: bool| Err("refused"))
            .add()
            .unwrap();
        let (producer, ring) = b.build().unwrap();
        let (mut producer, ring) = (Hold::new(producer), Hold::new(ring));
        let results: Vec<_> = (0..3)
            .map(|s| producer.publish(|e| *e = value(s)))
            .collect();
        let ok = results.iter().take_while(|r| r.is_ok()).count();
        assert!((1..=2).contains(&ok), "results: {results:?}");
        assert!(
            results[ok..]
                .iter()
                .all(|r| *r == Err(PublishError::Halted)),
            "after the first refusal every publish is refused: {results:?}"
        );
        assert!(ring.is_halted());
        let (stage, _) = ring.failure().expect("the failure is recorded");
        assert_eq!(stage, "fails");
        drop(producer.into_inner()); // joins the stage thread
    });
}

/// The runtime pipeline's side cell (`peregrine::pipeline`): a `decode` stage writes its
/// result into a cell of the slot through a shared reference while the slot is published,
/// and a `logic` stage gated on `decode` reads it; the producer reuses the slot only
/// after `logic` has passed it. Two slots, three events, so the producer wraps and the
/// cell is written for a second lap while its first value may still be read.
///
/// Property: every access to the cell is ordered by happens-before with every other (loom
/// reports a racing `UnsafeCell` access otherwise): `logic` reads what `decode` wrote for
/// the same sequence, never a stale lap and never a write in progress.
///
/// Breaks under `barrier_ignores_deps` (`logic` reads the cell before `decode` wrote it)
/// and `no_gating` (the next lap's write races `logic`'s read).
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "barrier_ignores_deps",
        peregrine_mutation = "no_gating"
    ),
    should_panic
)]
fn a_side_cell_written_by_one_stage_is_read_by_its_dependent() {
    use loom::cell::UnsafeCell;

    #[derive(Default)]
    struct Slot {
        value: u64,
        decoded: UnsafeCell<u64>,
    }
    // SAFETY: the model checks exactly this: `decoded` is written only by the decode
    // poller and read only by the logic poller, ordered by the ring's barrier and gating.
    unsafe impl Sync for Slot {}

    check(2, || {
        let mut b = single_producer(2, Slot::default)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let decode = b.poller("decode").add().unwrap();
        let logic = b.poller("logic").after(&[decode]).add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut decode = ring.take_poller(decode).unwrap();
        let mut logic = ring.take_poller(logic).unwrap();

        let tp = thread::spawn(move || {
            for s in 0..3 {
                producer.publish(|e| e.value = value(s)).unwrap();
            }
        });
        let td = thread::spawn(move || {
            consume(
                &mut decode,
                |e: &Slot, _| {
                    // SAFETY: the property under test.
                    e.decoded.with_mut(|d| unsafe { *d = e.value * 2 });
                },
                |_| {},
            )
        });
        let mut seen = Vec::new();
        consume(
            &mut logic,
            |e: &Slot, s| {
                // SAFETY: the property under test.
                seen.push((s, e.decoded.with(|d| unsafe { *d })));
            },
            |_| {},
        );
        tp.join().unwrap();
        td.join().unwrap();
        let expected: Vec<_> = (0..3).map(|s| (s, value(s) * 2)).collect();
        assert_eq!(seen, expected);
    });
}
