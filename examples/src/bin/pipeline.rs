//! A multi-stage pipeline with events routed by kind and a dead-letter stage.
//!
//! ```text
//!                      +--> trades (Trade events; bad ones dead-lettered) --+
//!  feed --> validate --+                                                     +--> audit
//!   (exclusive: marks  +--> quotes (Quote events)                    -------+
//!    bad events)
//! ```
//!
//! `validate` is an exclusive stage: it writes its verdict into each event, which the
//! later stages read. `trades` and `quotes` each handle their own kind (routing by kind
//! in a multicast ring costs one compare per event per stage, and keeps every stage on
//! its own thread with no queue between them). A trade the `trades` stage cannot book
//! goes, with its error, to the dead-letter sink; `audit` sees every event after both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use peregrine::ring::{single_producer, FailurePolicy, MemoryDeadLetters, WaitStrategy};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Kind {
    #[default]
    Heartbeat,
    Trade,
    Quote,
}

#[derive(Debug, Clone, Default)]
struct Event {
    kind: Kind,
    price: i64,
    quantity: i64,
    /// Written by `validate`.
    valid: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dead = Arc::new(MemoryDeadLetters::new());
    let (trades, quotes, audited) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut b = single_producer(1024, Event::default)?.wait_strategy(WaitStrategy::phased());
    let validate = b
        .exclusive_stage("validate", |e: &mut Event, _: u64, _: bool| {
            e.valid = e.kind == Kind::Heartbeat || (e.price > 0 && e.quantity > 0);
        })
        .add()?;
    let t = Arc::clone(&trades);
    let trade_stage = b
        .try_stage("trades", move |e: &Event, _: u64, _: bool| {
            if e.kind != Kind::Trade {
                return Ok(());
            }
            if !e.valid {
                return Err(format!(
                    "cannot book a trade of {} at {}",
                    e.quantity, e.price
                ));
            }
            t.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .after(&[validate])
        .on_failure(FailurePolicy::dead_letter(dead.clone()))
        .add()?;
    let q = Arc::clone(&quotes);
    let quote_stage = b
        .stage("quotes", move |e: &Event, _: u64, _: bool| {
            if e.kind == Kind::Quote && e.valid {
                q.fetch_add(1, Ordering::Relaxed);
            }
        })
        .after(&[validate])
        .add()?;
    let a = Arc::clone(&audited);
    b.stage("audit", move |_: &Event, _: u64, _: bool| {
        a.fetch_add(1, Ordering::Relaxed);
    })
    .after(&[trade_stage, quote_stage])
    .add()?;
    let (mut producer, ring) = b.build()?;

    let n = 1_000_000i64;
    for i in 0..n {
        producer.publish(|e| {
            e.kind = match i % 3 {
                0 => Kind::Trade,
                1 => Kind::Quote,
                _ => Kind::Heartbeat,
            };
            // Every 10,000th event carries a bad quantity.
            e.quantity = if i % 10_000 == 0 { -1 } else { 1 + i % 100 };
            e.price = 100 + i % 7;
            e.valid = false;
        })?;
    }
    drop(producer); // drains every stage

    let letters = dead.take();
    println!(
        "{n} events: {} trades booked, {} quotes, {} audited, {} dead letters",
        trades.load(Ordering::Relaxed),
        quotes.load(Ordering::Relaxed),
        audited.load(Ordering::Relaxed),
        letters.len()
    );
    if let Some(first) = letters.first() {
        println!(
            "first dead letter: stage {}, sequence {}, {}",
            first.stage, first.sequence, first.failure
        );
    }
    for s in ring.telemetry().stages {
        println!(
            "  {:<10} handled {:>8} in {:>7} batches, failures {}",
            s.name, s.events, s.batches, s.failures
        );
    }
    let bad_trades = (0..n).filter(|i| i % 10_000 == 0 && i % 3 == 0).count();
    assert_eq!(
        letters.len(),
        bad_trades,
        "every bad trade is dead-lettered"
    );
    assert_eq!(audited.load(Ordering::Relaxed), n as u64, "nothing lost");
    Ok(())
}
