//! Async adapters: an async publish that waits for room without spinning, and a poller as
//! a `Stream`.
#![cfg(feature = "async")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use peregrine_ring::{
    single_producer, AsyncError, AsyncProducer, PollerStream, PublishError, WaitStrategy, WhenFull,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `fut` to completion, counting how often it was polled.
async fn counting<F: Future>(fut: F, polls: Arc<AtomicUsize>) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        polls.fetch_add(1, Ordering::SeqCst);
        fut.as_mut().poll(cx)
    })
    .await
}

#[test]
fn async_publish_waits_for_room_without_spinning() {
    runtime().block_on(async {
        let mut b = single_producer(4, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::blocking());
        let id = b.poller("slow").add().unwrap();
        let (producer, mut ring) = b.build().unwrap();
        let mut poller = ring.take_poller(id).unwrap();
        let mut producer = AsyncProducer::new(producer).unwrap();
        for v in 0..4 {
            producer.publish(|e| *e = v).await.unwrap();
        }
        // The ring is full. A consumer thread frees room after 100 ms.
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            while got.len() < 5 {
                poller.poll(|e, _, _| got.push(*e));
                std::thread::sleep(Duration::from_millis(1));
            }
            got
        });
        let polls = Arc::new(AtomicUsize::new(0));
        let seq = counting(producer.publish(|e| *e = 4), Arc::clone(&polls))
            .await
            .unwrap();
        assert_eq!(seq, 4);
        let polls = polls.load(Ordering::SeqCst);
        assert!(
            polls <= 4,
            "the publish was polled {polls} times while waiting 100 ms: it spun"
        );
        assert_eq!(consumer.join().unwrap(), [0, 1, 2, 3, 4]);
    });
}

#[test]
fn a_poller_stream_yields_every_event_then_ends() {
    runtime().block_on(async {
        let mut b = single_producer(8, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::phased());
        let id = b.poller("stream").add().unwrap();
        let (mut producer, mut ring) = b.build().unwrap();
        let mut stream =
            PollerStream::new(ring.take_poller(id).unwrap(), |e: &u64, seq| (seq, *e)).unwrap();
        let writer = std::thread::spawn(move || {
            for v in 0..1000u64 {
                producer.publish(|e| *e = v * 2).unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(item) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await
        {
            got.push(item);
        }
        writer.join().unwrap();
        assert_eq!(got, (0..1000).map(|s| (s, s * 2)).collect::<Vec<_>>());
    });
}

#[test]
fn a_halt_wakes_a_waiting_publish_with_an_error() {
    runtime().block_on(async {
        let mut b = single_producer(2, || 0u64)
            .unwrap()
            .wait_strategy(WaitStrategy::busy_spin())
            .when_full(WhenFull::Park);
        b.poller("never").add().unwrap();
        let (producer, ring) = b.build().unwrap();
        let mut producer = AsyncProducer::new(producer).expect("WhenFull::Park signals");
        producer.publish(|_| {}).await.unwrap();
        producer.publish(|_| {}).await.unwrap();
        let halter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ring.halt();
        });
        assert_eq!(producer.publish(|_| {}).await, Err(PublishError::Halted));
        halter.join().unwrap();
    });
}

#[test]
fn adapters_refuse_a_ring_that_never_signals() {
    let mut b = single_producer(2, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::yielding());
    let id = b.poller("p").add().unwrap();
    let (producer, mut ring) = b.build().unwrap();
    let poller = ring.take_poller(id).unwrap();
    assert!(matches!(
        PollerStream::new(poller, |e: &u64, _| *e),
        Err(AsyncError::RingDoesNotSignal)
    ));
    assert_eq!(
        AsyncProducer::new(producer).unwrap_err(),
        AsyncError::RingDoesNotSignal
    );
}
