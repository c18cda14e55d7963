//! A tokio service publishing into the ring and awaiting results.
//!
//! Many tasks each submit quote requests. A request is published into the ring with an
//! async publish (which suspends the task while the ring is full) together with a oneshot
//! sender; a `pricing` stage on its own thread computes the price in place (an exclusive
//! stage may take the sender out of the slot) and answers; an `audit` stage after it sees
//! every priced request. The task awaits its answer.
//!
//! Run: `cargo run -p peregrine-ring --example tokio_service --features async`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use peregrine_ring::{single_producer, AsyncProducer, WaitStrategy};
use tokio::sync::{oneshot, Mutex};

#[derive(Default)]
struct Request {
    instrument: u32,
    quantity: u64,
    price: u64,
    reply: Option<oneshot::Sender<u64>>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let audited = Arc::new(AtomicU64::new(0));
    let mut builder = single_producer(256, Request::default)?.wait_strategy(WaitStrategy::phased());
    let pricing = builder
        .exclusive_stage("pricing", |r: &mut Request, _seq: u64, _end: bool| {
            r.price = 100 + u64::from(r.instrument) * 10 + r.quantity / 100;
            if let Some(reply) = r.reply.take() {
                // The requester may have given up; nothing to do then.
                let _ = reply.send(r.price);
            }
        })
        .add()?;
    let count = Arc::clone(&audited);
    builder
        .stage("audit", move |r: &Request, _seq: u64, _end: bool| {
            assert!(r.price > 0, "audit sees priced requests only");
            count.fetch_add(1, Ordering::Relaxed);
        })
        .after(&[pricing])
        .add()?;
    let (producer, ring) = builder.build()?;
    // One producer shared by the tasks (a single-producer ring: publishes are serialised).
    let producer = Arc::new(Mutex::new(AsyncProducer::new(producer)?));

    let clients: Vec<_> = (0..8u32)
        .map(|client| {
            let producer = Arc::clone(&producer);
            tokio::spawn(async move {
                let mut total = 0;
                for i in 0..500u64 {
                    let (tx, rx) = oneshot::channel();
                    producer
                        .lock()
                        .await
                        .publish(|r| {
                            r.instrument = client;
                            r.quantity = i * 100;
                            r.reply = Some(tx);
                        })
                        .await
                        .expect("ring running");
                    let price = rx.await.expect("pricing answers every request");
                    assert_eq!(price, 100 + u64::from(client) * 10 + i);
                    total += price;
                }
                total
            })
        })
        .collect();
    let mut total = 0;
    for c in clients {
        total += c.await?;
    }
    drop(producer); // the last producer: the ring drains and its threads are joined
    let t = ring.telemetry();
    println!(
        "4000 quotes answered, total {total}; audited {}; stages: {}",
        audited.load(Ordering::Relaxed),
        t.stages
            .iter()
            .map(|s| format!("{} handled {} in {} batches", s.name, s.events, s.batches))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(audited.load(Ordering::Relaxed), 4000);
    Ok(())
}
