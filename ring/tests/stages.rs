//! Work pools, exclusive (mutable) stages, telemetry and the full-ring producer policies.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peregrine_ring::{
    multi_producer, single_producer, BuildError, PollState, PublishError, TryPublishError,
    WaitStrategy, WhenFull,
};

fn events(default: u64) -> u64 {
    std::env::var("PEREGRINE_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_pool_of_two_delivers_each_of_five_million_events_exactly_once() {
    let n = events(5_000_000);
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..n).map(|_| AtomicU8::new(0)).collect());
    let per_worker: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let mut b = single_producer(1024, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    // A pool in the middle of a graph: first -> pool -> last.
    let first = b
        .stage("first", |_: &u64, _: u64, _: bool| {})
        .add()
        .unwrap();
    let (s, w, err) = (
        Arc::clone(&seen),
        Arc::clone(&per_worker),
        Arc::clone(&errors),
    );
    let pool = b
        .pool("work", 2, move |worker| {
            let (s, w, err) = (Arc::clone(&s), Arc::clone(&w), Arc::clone(&err));
            move |e: &u64, seq: u64, _: bool| {
                if *e != seq + 1 {
                    err.fetch_add(1, Ordering::Relaxed);
                }
                s[seq as usize].fetch_add(1, Ordering::Relaxed);
                w[worker].fetch_add(1, Ordering::Relaxed);
            }
        })
        .after(&[first])
        .add()
        .unwrap();
    let (s, err) = (Arc::clone(&seen), Arc::clone(&errors));
    let mut last_seen = 0u64;
    b.stage("last", move |_: &u64, seq: u64, _: bool| {
        // Gated on the whole pool: the worker that took `seq` has finished it.
        if s[seq as usize].load(Ordering::Relaxed) != 1 || seq != last_seen {
            err.fetch_add(1, Ordering::Relaxed);
        }
        last_seen = seq + 1;
    })
    .after(&[pool])
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    let mut i = 0;
    while i < n {
        let k = 64.min(n - i) as usize;
        p.publish_batch(k, |e, seq| *e = seq + 1).unwrap();
        i += k as u64;
    }
    drop(p);
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(
        seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
        "every event handled by exactly one worker"
    );
    let counts: Vec<u64> = per_worker
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), n);
    let names: Vec<String> = ring
        .telemetry()
        .stages
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["first", "work-0", "work-1", "last"]);
}

#[test]
fn a_pool_worker_failure_follows_the_policy() {
    let handled = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&handled);
    let mut b = single_producer(64, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.try_pool("work", 2, move |_| {
        let h = Arc::clone(&h);
        move |_: &u64, seq: u64, _: bool| {
            if seq == 500 {
                return Err("cannot");
            }
            h.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    })
    .on_failure(peregrine_ring::FailurePolicy::LogAndContinue)
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    for i in 0..1000 {
        p.publish(|e| *e = i).unwrap();
    }
    drop(p);
    assert_eq!(handled.load(Ordering::Relaxed), 999);
    let failures: u64 = ring.telemetry().stages.iter().map(|s| s.failures).sum();
    assert_eq!(failures, 1);
}

#[derive(Default)]
struct Order {
    raw: u64,
    decoded: u64,
}

#[test]
fn an_exclusive_stage_writes_are_visible_to_later_stages() {
    let n = events(1_000_000);
    let bad = Arc::new(AtomicU64::new(0));
    let mut b = single_producer(256, Order::default)
        .unwrap()
        .wait_strategy(WaitStrategy::phased());
    let journal = b
        .stage("journal", |_: &Order, _: u64, _: bool| {})
        .add()
        .unwrap();
    let decode = b
        .exclusive_stage("decode", |o: &mut Order, seq: u64, _: bool| {
            o.decoded = o.raw * 3 + seq
        })
        .after(&[journal])
        .add()
        .unwrap();
    let (b1, b2) = (Arc::clone(&bad), Arc::clone(&bad));
    let logic = b
        .stage("logic", move |o: &Order, seq: u64, _: bool| {
            if o.decoded != o.raw * 3 + seq {
                b1.fetch_add(1, Ordering::Relaxed);
            }
        })
        .after(&[decode])
        .add()
        .unwrap();
    b.stage("send", move |o: &Order, seq: u64, _: bool| {
        if o.decoded != o.raw * 3 + seq {
            b2.fetch_add(1, Ordering::Relaxed);
        }
    })
    .after(&[logic])
    .add()
    .unwrap();
    let (mut p, _ring) = b.build().unwrap();
    for i in 0..n {
        // The producer resets `decoded`, so a stale value from the last lap is caught.
        p.publish(|o| {
            o.raw = i;
            o.decoded = u64::MAX;
        })
        .unwrap();
    }
    drop(p);
    assert_eq!(bad.load(Ordering::Relaxed), 0);
}

#[test]
fn the_builder_refuses_an_exclusive_stage_that_is_not_alone() {
    let mut b = single_producer(8, Order::default).unwrap();
    let a = b.stage("a", |_: &Order, _: u64, _: bool| {}).add().unwrap();
    b.exclusive_stage("m", |_: &mut Order, _: u64, _: bool| {})
        .after(&[a])
        .add()
        .unwrap();
    b.stage("b", |_: &Order, _: u64, _: bool| {}).add().unwrap();
    let err = b.build().unwrap_err();
    assert_eq!(
        err,
        BuildError::NotExclusive {
            stage: "m".into(),
            parallel_with: "b".into()
        }
    );

    // A poller reading in parallel counts too.
    let mut b = single_producer(8, Order::default).unwrap();
    b.exclusive_stage("m", |_: &mut Order, _: u64, _: bool| {})
        .add()
        .unwrap();
    b.poller("peek").add().unwrap();
    assert!(matches!(b.build(), Err(BuildError::NotExclusive { .. })));
}

#[test]
fn telemetry_lag_matches_the_injected_lag() {
    let mut b = single_producer(128, || 0u64).unwrap();
    let id = b.poller("lagging").add().unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let mut poller = ring.take_poller(id).unwrap();
    p.publish_batch(100, |e, s| *e = s).unwrap();
    let t = ring.telemetry();
    assert_eq!(t.cursor, 100);
    assert_eq!(t.stages[0].lag, 100);
    assert_eq!(t.stages[0].sequence, 0);

    let mut handled = 0;
    assert_eq!(poller.poll(|_, _, _| handled += 1), PollState::Events(100));
    p.publish_batch(40, |e, s| *e = s).unwrap();
    let t = ring.telemetry();
    assert_eq!(t.stages[0].lag, 40);
    assert_eq!(t.stages[0].events, 100);
    assert_eq!(t.stages[0].batches, 1);
    assert_eq!(
        t.stages[0].batch_sizes[6], 1,
        "a batch of 100 is in bucket 64..=127"
    );
    assert_eq!(t.stages[0].batch_sizes.iter().sum::<u64>(), 1);

    // Fill the ring: a failed try is a producer stall.
    assert_eq!(t.producer_stalls, 0);
    while p.try_publish(|_| {}).is_ok() {}
    assert!(ring.telemetry().producer_stalls >= 1);
    assert_eq!(ring.telemetry().stages[0].lag, 128);
}

#[test]
fn stage_telemetry_counts_events_and_batches() {
    let mut b = single_producer(64, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("counted", |_: &u64, _: u64, _: bool| {})
        .max_batch(8)
        .add()
        .unwrap();
    let (mut p, ring) = b.build().unwrap();
    for i in 0..1000 {
        p.publish(|e| *e = i).unwrap();
    }
    drop(p);
    let t = ring.telemetry();
    let s = &t.stages[0];
    assert_eq!((s.events, s.sequence, s.lag), (1000, 1000, 0));
    assert_eq!(s.batch_sizes.iter().sum::<u64>(), s.batches);
    assert_eq!(
        s.batch_sizes[4..].iter().sum::<u64>(),
        0,
        "max batch 8 respected"
    );
}

fn full_ring(
    when_full: WhenFull,
) -> (
    peregrine_ring::SingleProducer<u64>,
    peregrine_ring::Poller<u64, peregrine_ring::Single>,
    peregrine_ring::Ring<u64, peregrine_ring::Single>,
) {
    let mut b = single_producer(4, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking())
        .when_full(when_full);
    let id = b.poller("slow").add().unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let poller = ring.take_poller(id).unwrap();
    p.publish_batch(4, |e, s| *e = s).unwrap();
    (p, poller, ring)
}

#[test]
fn when_full_fail_fails_at_once() {
    let (mut p, _poller, ring) = full_ring(WhenFull::Fail);
    let start = Instant::now();
    assert_eq!(p.publish(|_| {}), Err(PublishError::Full));
    assert!(matches!(p.claim_batch(1), Err(PublishError::Full)));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(ring.telemetry().producer_stalls >= 2);
}

#[test]
fn when_full_wait_up_to_times_out_and_publish_timeout_too() {
    let (mut p, _poller, _ring) = full_ring(WhenFull::WaitUpTo(Duration::from_millis(20)));
    let start = Instant::now();
    assert_eq!(p.publish(|_| {}), Err(PublishError::Timeout));
    assert!(start.elapsed() >= Duration::from_millis(20));

    let (mut p, _poller, _ring) = full_ring(WhenFull::Wait);
    let start = Instant::now();
    assert_eq!(
        p.publish_timeout(Duration::from_millis(20), |_| {}),
        Err(PublishError::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(20));
    assert_eq!(p.try_publish(|_| {}), Err(TryPublishError::Full));
}

#[test]
fn every_waiting_policy_resumes_when_room_appears() {
    for when_full in [
        WhenFull::Spin,
        WhenFull::Yield,
        WhenFull::Park,
        WhenFull::Wait,
    ] {
        let (mut p, mut poller, _ring) = full_ring(when_full);
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            let mut got = Vec::new();
            while got.len() < 6 {
                poller.poll(|e, _, _| got.push(*e));
                std::thread::sleep(Duration::from_millis(1));
            }
            got
        });
        assert_eq!(p.publish(|e| *e = 4), Ok(4), "{when_full:?}");
        assert_eq!(p.publish(|e| *e = 5), Ok(5), "{when_full:?}");
        assert_eq!(
            consumer.join().unwrap(),
            [0, 1, 2, 3, 4, 5],
            "{when_full:?}"
        );
    }
}

#[test]
fn a_timed_out_multi_producer_claim_leaves_no_gap() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut b = multi_producer(4, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking())
        .when_full(WhenFull::WaitUpTo(Duration::from_millis(5)));
    let id = b.poller("p").add().unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let mut poller = ring.take_poller(id).unwrap();
    let mut p2 = p.clone();
    p.publish_batch(4, |e, s| *e = s).unwrap();
    assert_eq!(p2.publish(|_| {}), Err(PublishError::Timeout));
    assert_eq!(p.publish(|_| {}), Err(PublishError::Timeout));
    let s = Arc::clone(&seen);
    poller.poll(|e, _, _| s.lock().unwrap().push(*e));
    p2.publish(|e| *e = 4).unwrap();
    p.publish(|e| *e = 5).unwrap();
    drop((p, p2));
    let s = Arc::clone(&seen);
    assert_eq!(
        poller.poll(|e, _, _| s.lock().unwrap().push(*e)),
        PollState::Events(2)
    );
    assert_eq!(poller.poll(|_, _, _| {}), PollState::Drained);
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn paced_stages_deliver_every_event_in_order_and_pacing_can_be_turned_off() {
    let n = events(200_000);
    for pause in [Duration::ZERO, Duration::from_micros(20)] {
        let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut b = single_producer(256, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::phased());
        let first_seen = Arc::new(AtomicU64::new(0));
        let f = Arc::clone(&first_seen);
        let first = b
            .stage("first", move |e: &u64, s: u64, _: bool| {
                assert_eq!(*e, s * 3, "first stage: event {s}");
                assert_eq!(f.fetch_add(1, Ordering::Relaxed), s, "first stage order");
            })
            .stream_backoff(pause)
            .add()
            .unwrap();
        let out = Arc::clone(&seen);
        let mut last = None;
        b.stage("second", move |e: &u64, s: u64, end: bool| {
            assert_eq!(*e, s * 3, "second stage: event {s}");
            assert_eq!(last.map_or(0, |l| l + 1), s, "second stage order");
            last = Some(s);
            if end {
                out.lock().unwrap().push((s, *e));
            }
        })
        .after(&[first])
        .stream_backoff(pause)
        .add()
        .unwrap();
        let (mut p, ring) = b.build().unwrap();
        for i in 0..n {
            p.publish(|e| *e = i * 3).unwrap();
        }
        drop(p);
        assert_eq!(first_seen.load(Ordering::Relaxed), n, "pause {pause:?}");
        let ends = seen.lock().unwrap();
        assert_eq!(ends.last(), Some(&(n - 1, (n - 1) * 3)), "pause {pause:?}");
        let t = ring.telemetry();
        assert!(t.stages.iter().all(|s| s.events == n), "{t:?}");
    }
}
