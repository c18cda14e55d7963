//! A handler that fails on every 1000th event, under each failure policy, for a returned
//! error and for a panic; the outcome is checked event by event.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peregrine_ring::{
    single_producer, FailurePolicy, MemoryDeadLetters, PublishError, WaitStrategy,
};

const EVENTS: u64 = 20_000;

fn fails(sequence: u64) -> bool {
    sequence % 1000 == 999
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    Error,
    Panic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Fails every time it sees a failing sequence.
    Always,
    /// Fails only the first time it sees a failing sequence.
    Once,
}

struct Outcome {
    /// Every `on_event` call of the failing stage, in order.
    calls: Vec<u64>,
    /// What the stage after it saw, in order.
    downstream: Vec<u64>,
    publish_error: Option<PublishError>,
    failure: Option<(String, String)>,
    failures_counted: u64,
}

fn run(how: How, fault: Fault, policy: FailurePolicy<u64>) -> Outcome {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let downstream = Arc::new(Mutex::new(Vec::new()));
    let mut b = single_producer(256, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let log = Arc::clone(&calls);
    let mut failed_once = HashSet::new();
    let flaky = b
        .try_stage("flaky", move |e: &u64, seq: u64, _: bool| {
            assert_eq!(*e, seq * 7, "the event the policy hands back is intact");
            log.lock().unwrap().push(seq);
            let fail = fails(seq)
                && match fault {
                    Fault::Always => true,
                    Fault::Once => failed_once.insert(seq),
                };
            if fail {
                match how {
                    How::Error => return Err(format!("bad event {seq}")),
                    How::Panic => panic!("bad event {seq}"),
                }
            }
            Ok(())
        })
        .on_failure(policy)
        .add()
        .unwrap();
    let seen = Arc::clone(&downstream);
    b.stage("after", move |_: &u64, seq: u64, _: bool| {
        seen.lock().unwrap().push(seq)
    })
    .after(&[flaky])
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    let mut publish_error = None;
    for i in 0..EVENTS {
        if let Err(e) = p.publish(|e| *e = i * 7) {
            publish_error = Some(e);
            break;
        }
    }
    drop(p);
    let failures_counted = ring.telemetry().stages[0].failures;
    let out = Outcome {
        calls: std::mem::take(&mut calls.lock().unwrap()),
        downstream: std::mem::take(&mut downstream.lock().unwrap()),
        publish_error,
        failure: ring.failure(),
        failures_counted,
    };
    out
}

fn all() -> Vec<u64> {
    (0..EVENTS).collect()
}

fn failing() -> Vec<u64> {
    (0..EVENTS).filter(|&s| fails(s)).collect()
}

#[test]
fn halt_stops_at_the_first_failure_and_releases_the_producer() {
    for how in [How::Error, How::Panic] {
        let out = run(how, Fault::Always, FailurePolicy::Halt);
        assert_eq!(out.calls, (0..=999).collect::<Vec<_>>(), "{how:?}");
        assert_eq!(out.publish_error, Some(PublishError::Halted), "{how:?}");
        let (stage, failure) = out.failure.expect("halt records the failure");
        assert_eq!(stage, "flaky");
        assert!(failure.contains("bad event 999"), "{failure}");
        let prefix: Vec<u64> = (0..out.downstream.len() as u64).collect();
        assert_eq!(out.downstream, prefix, "downstream saw a prefix, in order");
        // The failing batch is never committed, so the stage after sees the batches
        // before it: at most 0..=998, all of them when the failing batch starts at 999
        // (which batch boundaries allow, depending on timing).
        assert!(
            out.downstream.len() <= 999,
            "nothing from the failing event on passed"
        );
        assert_eq!(out.failures_counted, 1);
    }
}

#[test]
fn log_and_continue_skips_each_failing_event_once() {
    for how in [How::Error, How::Panic] {
        let out = run(how, Fault::Always, FailurePolicy::LogAndContinue);
        assert_eq!(
            out.calls,
            all(),
            "{how:?}: every event handled exactly once"
        );
        assert_eq!(out.downstream, all(), "{how:?}: nothing lost downstream");
        assert_eq!(out.publish_error, None);
        assert_eq!(out.failure, None);
        assert_eq!(out.failures_counted, failing().len() as u64);
    }
}

#[test]
fn retry_handles_a_transient_failure_with_one_more_call() {
    for how in [How::Error, How::Panic] {
        let out = run(
            how,
            Fault::Once,
            FailurePolicy::retry(3, Duration::from_micros(10)),
        );
        let mut expected = Vec::new();
        for s in 0..EVENTS {
            expected.push(s);
            if fails(s) {
                expected.push(s); // the retry
            }
        }
        assert_eq!(out.calls, expected, "{how:?}");
        assert_eq!(out.downstream, all(), "{how:?}");
        assert_eq!(out.failure, None);
    }
}

#[test]
fn retry_then_dead_letter_hands_over_each_persistent_failure() {
    for how in [How::Error, How::Panic] {
        let sink = Arc::new(MemoryDeadLetters::new());
        let policy = FailurePolicy::retry(2, Duration::from_micros(10))
            .or_else(FailurePolicy::dead_letter(sink.clone()));
        let out = run(how, Fault::Always, policy);
        let mut expected = Vec::new();
        for s in 0..EVENTS {
            expected.push(s);
            if fails(s) {
                expected.extend([s, s]); // two retries, then the dead letter
            }
        }
        assert_eq!(out.calls, expected, "{how:?}");
        assert_eq!(
            out.downstream,
            all(),
            "{how:?}: dead letters do not block the flow"
        );
        let letters = sink.take();
        assert_eq!(
            letters.iter().map(|l| l.sequence).collect::<Vec<_>>(),
            failing()
        );
        for l in &letters {
            assert_eq!(l.event, l.sequence * 7);
            assert_eq!(l.stage, "flaky");
            assert!(l.failure.contains(&format!("bad event {}", l.sequence)));
        }
        assert_eq!(out.failures_counted, 3 * failing().len() as u64);
    }
}

#[test]
fn rewind_replays_the_batch_from_its_start() {
    for how in [How::Error, How::Panic] {
        let out = run(how, Fault::Once, FailurePolicy::rewind(2));
        assert_eq!(
            out.downstream,
            all(),
            "{how:?}: every event passes exactly once"
        );
        // Walk the call log: it is 0, 1, 2, ... except that right after the first call on a
        // failing sequence it jumps back to the start of that batch (at or before it), and
        // replays from there.
        let mut next = 0u64;
        let mut rewinds = 0;
        let mut last_failed = None;
        for &c in &out.calls {
            if c == next {
                next += 1;
            } else {
                let f = last_failed.expect("a jump back only follows a failure");
                assert!(c <= f, "{how:?}: rewound forward to {c} after {f}");
                assert_eq!(next, f + 1, "{how:?}: the jump follows the failing call");
                next = c + 1;
                rewinds += 1;
            }
            last_failed = fails(c).then_some(c);
        }
        assert_eq!(next, EVENTS);
        assert_eq!(rewinds, failing().len(), "{how:?}: one replay per failure");
    }
}

#[test]
fn rewind_gives_up_to_its_fallback_after_the_allowed_replays() {
    let sink = Arc::new(MemoryDeadLetters::new());
    let out = run(
        How::Panic,
        Fault::Always,
        FailurePolicy::rewind(1).or_else(FailurePolicy::dead_letter(sink.clone())),
    );
    assert_eq!(out.downstream, all());
    assert_eq!(
        sink.take().iter().map(|l| l.sequence).collect::<Vec<_>>(),
        failing()
    );
}
