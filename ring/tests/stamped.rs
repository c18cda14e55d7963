//! Stamped single-producer rings (`single_producer_stamped`): delivery, batches, backlogs,
//! wrap-around, pipelines and the close, as for the classic ring, since readers find events
//! by the slots' stamps as well as by the cursor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peregrine_ring::{single_producer_stamped, PollState, WaitStrategy, WhenFull};

/// Records `(sequence, value, end_of_batch)` of every event a stage sees.
type Log = Arc<Mutex<Vec<(u64, u64, bool)>>>;

#[test]
fn a_stage_sees_singles_and_batches_in_order_across_many_laps() {
    let log: Log = Arc::default();
    let l = Arc::clone(&log);
    let mut b = single_producer_stamped(8, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("check", move |e: &u64, s: u64, end: bool| {
        l.lock().unwrap().push((s, *e, end))
    })
    .add()
    .unwrap();
    let (mut p, _ring) = b.build().unwrap();
    let mut next = 0u64;
    for round in 0..20_000u64 {
        // One single, then a batch of 1 to 5: batches wrap the 8-slot ring at every offset.
        p.publish(|e| *e = next * 7).unwrap();
        next += 1;
        let n = (round % 5 + 1) as usize;
        let range = p.publish_batch(n, |e, s| *e = s * 7).unwrap();
        assert_eq!(range.start, next);
        next = range.end;
    }
    drop(p); // drains the stage and joins it
    let log = log.lock().unwrap();
    assert_eq!(log.len() as u64, next, "every event exactly once");
    for (i, &(s, v, _)) in log.iter().enumerate() {
        assert_eq!((s, v), (i as u64, i as u64 * 7), "in order, as written");
    }
    assert!(log.last().unwrap().2, "the last event ends a batch");
}

#[test]
fn a_poll_hands_over_every_event_ready_now() {
    let mut b = single_producer_stamped(16, || 0u64).unwrap();
    let id = b.poller("p").add().unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let mut poller = ring.take_poller(id).unwrap();
    assert_eq!(poller.poll(|_, _, _| {}), PollState::Idle);
    // Four single publishes, then a batch of three: one poll takes all seven.
    for i in 0..4 {
        p.publish(|e| *e = i).unwrap();
    }
    p.publish_batch(3, |e, s| *e = s).unwrap();
    let mut seen = Vec::new();
    assert_eq!(
        poller.poll(|e, s, end| seen.push((s, *e, end))),
        PollState::Events(7)
    );
    let ends: Vec<bool> = seen.iter().map(|x| x.2).collect();
    assert_eq!(ends, [false, false, false, false, false, false, true]);
    assert!(seen.iter().all(|&(s, v, _)| s == v));
    // A lone event after an idle look: found by its stamp alone.
    assert_eq!(poller.poll(|_, _, _| {}), PollState::Idle);
    p.publish(|e| *e = 70).unwrap();
    let mut got = None;
    assert_eq!(
        poller.poll(|e, s, end| got = Some((s, *e, end))),
        PollState::Events(1)
    );
    assert_eq!(got, Some((7, 70, true)));
}

#[test]
fn poll_one_can_split_a_batch_and_the_rest_follows() {
    let mut b = single_producer_stamped(8, || 0u64).unwrap();
    let id = b.poller("p").add().unwrap();
    let (mut p, mut ring) = b.build().unwrap();
    let mut poller = ring.take_poller(id).unwrap();
    p.publish_batch(5, |e, s| *e = 100 + s).unwrap();
    let mut seen = Vec::new();
    assert_eq!(
        poller.poll_one(|e, s, _| seen.push((s, *e))),
        PollState::Events(1)
    );
    assert_eq!(
        poller.poll(|e, s, _| seen.push((s, *e))),
        PollState::Events(4)
    );
    assert_eq!(seen, (0..5).map(|s| (s, 100 + s)).collect::<Vec<_>>());
    // Wrap: the ring's slots hold the next lap's stamps now.
    for lap in 1..4u64 {
        p.publish_batch(8, |e, s| *e = 100 + s).unwrap();
        let mut n = 0;
        while n < 8 {
            match poller.poll(|e, s, _| assert_eq!(*e, 100 + s)) {
                PollState::Events(k) => n += k,
                other => panic!("lap {lap}: {other:?}"),
            }
        }
    }
    assert_eq!(poller.sequence(), 29);
}

#[test]
fn stages_in_a_pipeline_and_side_by_side_see_every_event() {
    // `a` and `b` read straight behind the producer (by stamps and cursor); `c` is gated
    // on both and must never see an event before they have.
    let a_done = Arc::new(AtomicU64::new(0));
    let b_done = Arc::new(AtomicU64::new(0));
    let c_seen = Arc::new(AtomicU64::new(0));
    let mut builder = single_producer_stamped(64, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::phased());
    let (ad, bd) = (Arc::clone(&a_done), Arc::clone(&b_done));
    let a = builder
        .stage("a", move |e: &u64, s: u64, _: bool| {
            assert_eq!(*e, s);
            ad.store(s + 1, Ordering::Release);
        })
        .add()
        .unwrap();
    let b = builder
        .stage("b", move |e: &u64, s: u64, _: bool| {
            assert_eq!(*e, s);
            bd.store(s + 1, Ordering::Release);
        })
        .add()
        .unwrap();
    let (ad, bd, cs) = (
        Arc::clone(&a_done),
        Arc::clone(&b_done),
        Arc::clone(&c_seen),
    );
    builder
        .stage("c", move |e: &u64, s: u64, _: bool| {
            assert_eq!(*e, s);
            assert!(ad.load(Ordering::Acquire) > s, "c overtook a at {s}");
            assert!(bd.load(Ordering::Acquire) > s, "c overtook b at {s}");
            assert_eq!(cs.fetch_add(1, Ordering::Relaxed), s);
        })
        .after(&[a, b])
        .add()
        .unwrap();
    let (mut p, ring) = builder.allow_oversubscription(true).build().unwrap();
    for s in 0..100_000u64 {
        if s % 3 == 0 {
            p.publish(|e| *e = s).unwrap();
        } else if s % 3 == 1 {
            p.publish_batch(2, |e, seq| *e = seq).unwrap();
        }
    }
    let published = ring.cursor();
    drop(p);
    assert!(ring.failure().is_none(), "{:?}", ring.failure());
    assert_eq!(c_seen.load(Ordering::Relaxed), published);
    assert_eq!(a_done.load(Ordering::Relaxed), published);
    assert_eq!(b_done.load(Ordering::Relaxed), published);
}

#[test]
fn a_pool_of_workers_takes_every_event_of_batches() {
    // Workers take whichever sequence comes next, often one inside a batch, whose slot
    // carries no stamp of this lap: they must look at the cursor, or a worker waits there
    // for good and the full ring stops the producer (which then times out here).
    let seen = Arc::new(Mutex::new(vec![0u8; 40_000]));
    let mut b = single_producer_stamped(8, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking())
        .when_full(WhenFull::WaitUpTo(Duration::from_secs(20)));
    let s = Arc::clone(&seen);
    b.pool("workers", 2, move |_| {
        let s = Arc::clone(&s);
        move |e: &u64, seq: u64, _: bool| {
            assert_eq!(*e, seq * 3);
            s.lock().unwrap()[seq as usize] += 1;
        }
    })
    .add()
    .unwrap();
    let (mut p, _ring) = b.build().unwrap();
    for _ in 0..20_000 {
        p.publish_batch(2, |e, seq| *e = seq * 3)
            .expect("the workers keep up: no worker waits on a stamp inside a batch");
    }
    drop(p);
    assert!(
        seen.lock().unwrap().iter().all(|&n| n == 1),
        "each event exactly once"
    );
}
