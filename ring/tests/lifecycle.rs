//! Publishing edge cases, build errors, hooks, and the lifecycle: drain on drop, shutdown
//! with a timeout, halt, stage panics, pinning.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use peregrine_ring::{
    affinity, multi_producer, single_producer, BuildError, EventHandler, PollState, PublishError,
    ShutdownError, TryPublishError, WaitStrategy,
};

fn noop(_: &u64, _: u64, _: bool) {}

#[test]
fn wraps_around_a_small_ring_many_times() {
    let seen = Arc::new(Mutex::new((0u64, true)));
    let s = Arc::clone(&seen);
    let mut b = single_producer(4, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("check", move |e: &u64, seq: u64, _: bool| {
        let mut g = s.lock().unwrap();
        g.1 &= *e == seq * 3 && g.0 == seq;
        g.0 = seq + 1;
    })
    .add()
    .unwrap();
    let (mut p, _ring) = b.build().unwrap();
    for i in 0..200_000u64 {
        p.publish(|e| *e = i * 3).unwrap();
    }
    drop(p);
    let g = seen.lock().unwrap();
    assert_eq!(g.0, 200_000, "every event of 50,000 laps was handled");
    assert!(g.1, "values and order held across wrap-around");
}

/// A single producer's next claim starts at its cursor, so a claim that is forgotten
/// instead of published is claimed again: its slot is written over and no event is skipped
/// or delivered twice, in the classic ring and the stamped one.
#[test]
fn a_forgotten_claim_is_claimed_again_and_nothing_is_skipped() {
    fn check<S: peregrine_ring::Sequencer>(b: peregrine_ring::RingBuilder<u64, S>) {
        let mut b = b;
        let id = b.poller("p").add().unwrap();
        let (mut p, mut ring) = b.build().unwrap();
        let mut poller = ring.take_poller(id).unwrap();
        p.publish(|e| *e = 10).unwrap();
        let mut claim = p.claim().unwrap();
        assert_eq!(claim.sequence(), 1);
        *claim = 99;
        std::mem::forget(claim);
        assert_eq!(
            poller.poll(|_, _, _| {}),
            PollState::Events(1),
            "only the first"
        );
        assert_eq!(p.publish(|e| *e = 11), Ok(1), "the forgotten slot again");
        p.publish_batch(2, |e, s| *e = 10 + s).unwrap();
        let mut seen = Vec::new();
        assert_eq!(
            poller.poll(|e, s, _| seen.push((s, *e))),
            PollState::Events(3)
        );
        assert_eq!(seen, [(1, 11), (2, 12), (3, 13)]);
        assert_eq!(p.remaining_capacity(), 4);
    }
    check(single_producer(4, || 0u64).unwrap());
    check(peregrine_ring::single_producer_stamped(4, || 0u64).unwrap());
}

#[test]
fn try_publish_reports_full_and_never_blocks() {
    let mut b = single_producer(4, || 0u64).unwrap();
    let id = b.poller("slow").add().unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let mut poller = ring.take_poller(id).unwrap();
    assert_eq!(p.remaining_capacity(), 4);
    for i in 0..4 {
        assert_eq!(p.try_publish(|e| *e = i), Ok(i));
    }
    assert_eq!(p.remaining_capacity(), 0);
    let mut called = false;
    assert_eq!(p.try_publish(|_| called = true), Err(TryPublishError::Full));
    assert!(!called, "the writer is not called when the ring is full");
    assert!(matches!(p.try_claim_batch(1), Err(TryPublishError::Full)));
    // Handle one event: exactly one slot frees up.
    let mut got = Vec::new();
    let mut first = true;
    poller.poll(|e, _, _| {
        if std::mem::take(&mut first) {
            got.push(*e)
        }
    });
    assert_eq!(got, [0]);
    assert_eq!(p.remaining_capacity(), 4);
    assert_eq!(p.try_publish_batch(4, |e, s| *e = s), Ok(4..8));
    assert_eq!(p.try_publish(|_| {}), Err(TryPublishError::Full));
}

#[test]
fn batches_larger_than_the_ring_are_errors() {
    let mut b = single_producer(8, || 0u64).unwrap();
    b.poller("p").add().unwrap();
    let (mut p, _ring) = b.build().unwrap();
    assert_eq!(
        p.publish_batch(9, |_, _| {}).unwrap_err(),
        PublishError::BatchTooLarge {
            requested: 9,
            capacity: 8
        }
    );
    assert!(matches!(
        p.try_publish_batch(0, |_, _| {}),
        Err(TryPublishError::BatchTooLarge { requested: 0, .. })
    ));
    assert_eq!(
        p.publish_batch(8, |e, s| *e = s).unwrap(),
        0..8,
        "a batch of exactly the capacity fits"
    );
}

#[test]
fn a_panicking_writer_still_publishes_its_slot() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let mut b = single_producer(8, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("after-panic", move |e: &u64, seq: u64, _: bool| {
        s.lock().unwrap().push((seq, *e))
    })
    .add()
    .unwrap();
    let (mut p, _ring) = b.build().unwrap();
    p.publish(|e| *e = 10).unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        p.publish(|e| {
            *e = 11;
            panic!("writer failed half way");
        })
    }));
    assert!(panicked.is_err());
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        p.publish_batch(3, |e, seq| {
            *e = 20 + seq;
            assert!(seq < 3, "writer failed inside a batch");
        })
    }));
    assert!(panicked.is_err());
    // More events after the panics flow: no gap stalls the stage.
    for i in 0..20 {
        p.publish(|e| *e = 100 + i).unwrap();
    }
    drop(p);
    let seen = seen.lock().unwrap();
    let sequences: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, (0..25).collect::<Vec<_>>());
    assert_eq!(seen[1], (1, 11), "the slot holds what the writer wrote");
    assert_eq!(seen[24], (24, 119));
}

/// A handler that blocks on a channel until released.
struct Stuck {
    release: mpsc::Receiver<()>,
    entered: Arc<AtomicBool>,
}

impl EventHandler<u64> for Stuck {
    fn on_event(&mut self, _: &u64, _: u64, _: bool) {
        self.entered.store(true, Ordering::SeqCst);
        let _ = self.release.recv();
    }
}

#[test]
fn shutdown_times_out_on_a_stuck_stage_and_reports_what_is_left() {
    let (release, rx) = mpsc::channel();
    let entered = Arc::new(AtomicBool::new(false));
    let mut b = single_producer(16, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage(
        "stuck",
        Stuck {
            release: rx,
            entered: Arc::clone(&entered),
        },
    )
    .add()
    .unwrap();
    b.stage("quick", noop).add().unwrap();
    let (mut p, ring) = b.build().unwrap();
    for i in 0..10 {
        p.publish(|e| *e = i).unwrap();
    }
    while !entered.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let start = Instant::now();
    let err = ring.shutdown(Duration::from_millis(100)).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown honoured its timeout"
    );
    let ShutdownError::Timeout { left } = &err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert_eq!(left.len(), 1, "only the stuck stage is reported: {left:?}");
    assert_eq!(left[0].name, "stuck");
    assert_eq!(left[0].sequence, 0);
    assert_eq!(left[0].remaining, 10);
    assert!(err.to_string().contains("10 unhandled event(s)"), "{err}");
    // The ring is halted: producers get an error instead of waiting.
    assert_eq!(p.publish(|_| {}), Err(PublishError::Halted));
    // Let the stuck thread finish so the test leaves nothing behind.
    for _ in 0..10 {
        let _ = release.send(());
    }
}

#[test]
fn shutdown_drains_then_halts() {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let mut b = single_producer(64, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::phased());
    b.stage("count", move |_: &u64, _: u64, _: bool| {
        c.fetch_add(1, Ordering::Relaxed);
    })
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    for i in 0..1000 {
        p.publish(|e| *e = i).unwrap();
    }
    ring.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(count.load(Ordering::Relaxed), 1000);
    assert!(ring.is_halted());
    assert_eq!(p.publish(|_| {}), Err(PublishError::Halted));
    assert_eq!(p.try_publish(|_| {}), Err(TryPublishError::Halted));
}

#[test]
fn halt_releases_a_producer_blocked_on_a_full_ring() {
    let mut b = single_producer(4, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.poller("never-polled").add().unwrap();
    let (mut p, ring) = b.build().unwrap();
    let blocked = std::thread::spawn(move || {
        for i in 0..4 {
            p.publish(|e| *e = i).unwrap();
        }
        p.publish(|e| *e = 99) // blocks: the ring is full
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!blocked.is_finished(), "the fifth publish waits for room");
    ring.halt();
    assert_eq!(blocked.join().unwrap(), Err(PublishError::Halted));
}

#[test]
fn a_panicking_stage_halts_the_ring_and_releases_producers() {
    let mut b = single_producer(8, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("fragile", |e: &u64, _: u64, _: bool| {
        assert!(*e != 3, "cannot handle three");
    })
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    let mut result = Ok(0);
    for i in 0..1_000 {
        result = p.publish(|e| *e = i);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        result,
        Err(PublishError::Halted),
        "no producer waits forever"
    );
    let (stage, message) = ring.failure().expect("the failure is recorded");
    assert_eq!(stage, "fragile");
    assert!(message.contains("cannot handle three"), "{message}");
    assert!(matches!(
        ring.shutdown(Duration::from_secs(1)),
        Err(ShutdownError::StageFailed { .. })
    ));
}

#[derive(Default)]
struct Hooks {
    calls: Arc<Mutex<Vec<String>>>,
}

impl EventHandler<u64> for Hooks {
    fn on_event(&mut self, _: &u64, seq: u64, end_of_batch: bool) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("event {seq} {end_of_batch}"));
    }
    fn on_batch_start(&mut self, batch_size: u64, queue_depth: u64) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("batch {batch_size}/{queue_depth}"));
    }
    fn on_start(&mut self) {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        self.calls.lock().unwrap().push(format!("start on {name}"));
    }
    fn on_shutdown(&mut self) {
        self.calls.lock().unwrap().push("shutdown".into());
    }
}

#[test]
fn hooks_run_in_order_on_a_thread_named_after_the_stage() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut b = single_producer(16, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let id = b.poller("gate").add().unwrap();
    b.stage(
        "hooks",
        Hooks {
            calls: Arc::clone(&calls),
        },
    )
    .after(&[id])
    .max_batch(2)
    .add()
    .unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let mut gate = ring.take_poller(id).unwrap();
    p.publish_batch(5, |e, s| *e = s).unwrap();
    // Release all five to the hooks stage at once, so it sees a depth of 5.
    assert_eq!(gate.poll(|_, _, _| {}), PollState::Events(5));
    drop(p);
    assert_eq!(gate.poll(|_, _, _| {}), PollState::Drained);
    let calls = calls.lock().unwrap();
    assert_eq!(
        *calls,
        [
            "start on hooks",
            "batch 2/5",
            "event 0 false",
            "event 1 true",
            "batch 2/3",
            "event 2 false",
            "event 3 true",
            "batch 1/1",
            "event 4 true",
            "shutdown"
        ]
    );
}

struct Timeouts(Arc<AtomicUsize>);

impl EventHandler<u64> for Timeouts {
    fn on_event(&mut self, _: &u64, _: u64, _: bool) {}
    fn on_timeout(&mut self, sequence: u64) {
        assert_eq!(sequence, 0);
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_strategy_reaches_the_timeout_hook() {
    for wait in [
        WaitStrategy::blocking(),
        WaitStrategy::phased_for(Duration::from_micros(50), Duration::from_micros(50)),
        WaitStrategy::sleeping_for(Duration::from_micros(200)),
        WaitStrategy::yielding(),
        WaitStrategy::yielding_after(100),
        WaitStrategy::busy_spin(),
    ] {
        let timeouts = Arc::new(AtomicUsize::new(0));
        let mut b = single_producer(4, || 0u64)
            .unwrap()
            .wait_strategy(wait.with_timeout(Duration::from_millis(5)));
        b.stage("idle", Timeouts(Arc::clone(&timeouts)))
            .add()
            .unwrap();
        let (p, _ring) = b.build().unwrap();
        let start = Instant::now();
        while timeouts.load(Ordering::SeqCst) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{wait:?} never timed out"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(p);
    }
}

#[test]
fn build_errors_are_clear() {
    assert_eq!(
        single_producer(1000, || 0u64).unwrap_err(),
        BuildError::CapacityNotPowerOfTwo { capacity: 1000 }
    );
    assert!(single_producer(0, || 0u64).is_err());

    let b = single_producer(8, || 0u64).unwrap();
    assert_eq!(b.build().unwrap_err(), BuildError::NoConsumer);

    let mut other = single_producer(8, || 0u64).unwrap();
    let foreign = other.stage("elsewhere", noop).add().unwrap();
    let mut b = single_producer(8, || 0u64).unwrap();
    assert_eq!(
        b.stage("mine", noop).after(&[foreign]).add().unwrap_err(),
        BuildError::ForeignStage {
            stage: "mine".into()
        }
    );
    b.stage("twice", noop).add().unwrap();
    assert_eq!(
        b.stage("twice", noop).add().unwrap_err(),
        BuildError::DuplicateStageName {
            name: "twice".into()
        }
    );
    assert_eq!(
        b.stage("zero", noop).max_batch(0).add().unwrap_err(),
        BuildError::ZeroMaxBatch {
            stage: "zero".into()
        }
    );
    let msg = BuildError::CapacityNotPowerOfTwo { capacity: 3 }.to_string();
    assert_eq!(msg, "capacity 3 is not a power of two");
}

#[test]
fn more_busy_spinning_stages_than_cores_is_refused_unless_allowed() {
    let cores = affinity::allowed_cores().len();
    let mut b = single_producer(8, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::busy_spin());
    for i in 0..=cores {
        b.stage(&format!("spin-{i}"), noop).add().unwrap();
    }
    assert_eq!(
        b.build().unwrap_err(),
        BuildError::Oversubscribed {
            threads: cores + 1,
            cores
        }
    );
}

#[test]
fn an_unavailable_core_is_an_error_naming_it() {
    let allowed = affinity::allowed_cores();
    let forbidden = (0..100_000).find(|c| !allowed.contains(c)).unwrap();
    let mut b = single_producer(8, || 0u64).unwrap();
    b.stage("pinned", noop).pin(forbidden).add().unwrap();
    let err = b.build().unwrap_err();
    assert_eq!(
        err,
        BuildError::CoreUnavailable {
            stage: "pinned".into(),
            core: forbidden,
            allowed: allowed.to_vec()
        }
    );
    assert!(
        err.to_string().contains(&format!("core {forbidden}")),
        "{err}"
    );
}

#[test]
fn pinning_to_an_allowed_core_runs_there() {
    let core = *affinity::allowed_cores().last().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let mut b = single_producer(8, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("pinned", move |_: &u64, _: u64, _: bool| {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc_sched_getcpu() };
        assert_eq!(cpu, core as i32, "the stage runs on its pinned core");
        c.fetch_add(1, Ordering::Relaxed);
    })
    .pin(core)
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    for i in 0..100 {
        p.publish(|e| *e = i).unwrap();
    }
    drop(p);
    assert!(ring.failure().is_none(), "{:?}", ring.failure());
    assert_eq!(count.load(Ordering::Relaxed), 100);
    // The process-wide set is unchanged by the pinned thread.
    assert_eq!(affinity::allowed_cores().last(), Some(&core));
}

extern "C" {
    #[link_name = "sched_getcpu"]
    fn libc_sched_getcpu() -> i32;
}

#[test]
fn multi_producer_keeps_each_producers_order() {
    let per = 100_000u64;
    let seen = Arc::new(Mutex::new((vec![0u64; 2], true, 0u64)));
    let s = Arc::clone(&seen);
    let mut b = multi_producer(64, || (0usize, 0u64))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("merge", move |e: &(usize, u64), _: u64, _: bool| {
        let mut g = s.lock().unwrap();
        let (who, n) = *e;
        g.1 &= g.0[who] == n;
        g.0[who] = n + 1;
        g.2 += 1;
    })
    .add()
    .unwrap();
    let (producer, _ring) = b.build().unwrap();
    let threads: Vec<_> = (0..2)
        .map(|who| {
            let mut p = producer.clone();
            std::thread::spawn(move || {
                for n in 0..per {
                    p.publish(|e| *e = (who, n)).unwrap();
                }
            })
        })
        .collect();
    drop(producer);
    for t in threads {
        t.join().unwrap();
    }
    let g = seen.lock().unwrap();
    assert!(g.1, "per-producer order held");
    assert_eq!(g.2, 2 * per, "exactly once");
}

/// Counts drops so the test can tell every slot is dropped exactly once.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_slot_is_dropped_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    {
        let mut b = single_producer(8, move || Counted(Arc::clone(&d)))
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        b.stage("x", |_: &Counted, _: u64, _: bool| {})
            .add()
            .unwrap();
        let (mut p, ring) = b.build().unwrap();
        for _ in 0..100 {
            p.publish(|_| {}).unwrap();
        }
        drop(p);
        drop(ring);
    }
    assert_eq!(drops.load(Ordering::SeqCst), 8);
}
