//! Inline work: the event loop consumes its own ingress ring between reads
//! (`Reactor::spawn_inline`). Each test runs on both backends.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use peregrine_reactor::{
    BackendChoice, Backlog, Config, ConnId, Egress, Frame, Inline, Reactor, ReactorHandle,
};
use peregrine_ring::{single_producer, Poller, Single, WaitStrategy};

/// Echoes each frame from the loop's own thread, through a `Backlog` (responses the
/// egress ring has no room for wait there, in order).
struct InlineEcho {
    frames: Poller<Frame, Single>,
    egress: Egress<Frame, Single>,
    backlog: Backlog<Frame>,
    /// Frames echoed in `finish`, after the loop stopped; `u64::MAX` until it runs.
    finished: Arc<AtomicU64>,
}

impl InlineEcho {
    fn echo(&mut self) -> u64 {
        let (egress, backlog) = (&mut self.egress, &mut self.backlog);
        let mut n = 0;
        self.frames.poll(|f, _, _| {
            n += 1;
            let _ = backlog.send(egress, |o| o.set(f.conn, &f.payload));
        });
        n
    }
}

impl Inline for InlineEcho {
    fn turn(&mut self) -> bool {
        if self.backlog.flush(&mut self.egress) == Ok(false) {
            return true;
        }
        self.echo() > 0
    }

    fn finish(&mut self) {
        let mut n = 0;
        loop {
            let more = self.echo();
            if more == 0 {
                break;
            }
            n += more;
        }
        self.finished.store(n, Ordering::Release);
    }
}

fn inline_echo_server(config: Config, ring: usize, finished: Arc<AtomicU64>) -> ReactorHandle {
    let max = config.max_frame;
    let asked = config.backend;
    let reactor = Reactor::bind(config).unwrap();
    let mut out = single_producer(ring, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let out_id = out.poller("egress").add().unwrap();
    let (out_producer, mut out_ring) = out.build().unwrap();
    let egress_poller = out_ring.take_poller(out_id).unwrap();
    let mut ingress = single_producer(ring, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let in_id = ingress.poller("echo").add().unwrap();
    let (in_producer, mut in_ring) = ingress.build().unwrap();
    let echo = InlineEcho {
        frames: in_ring.take_poller(in_id).unwrap(),
        egress: reactor.egress(out_producer),
        backlog: Backlog::default(),
        finished,
    };
    let handle = reactor
        .spawn_inline(in_producer, Some(egress_poller), echo)
        .unwrap();
    check_backend(&handle, asked);
    handle
}

fn clients_are_answered_in_order_from_the_loop_thread(backend: BackendChoice) {
    let finished = Arc::new(AtomicU64::new(u64::MAX));
    // Rings of 16 slots: bursts of 300 frames overflow them many times over.
    let handle = inline_echo_server(config(backend), 16, Arc::clone(&finished));
    let threads: Vec<_> = (0..4u32)
        .map(|c| {
            let mut s = connect(&handle);
            std::thread::spawn(move || {
                let mut burst = Vec::new();
                for i in 0..300u32 {
                    burst.extend_from_slice(&frame(format!("client {c} frame {i}").as_bytes()));
                }
                s.write_all(&burst).unwrap();
                for i in 0..300u32 {
                    let want = format!("client {c} frame {i}");
                    assert_eq!(read_frame(&mut s).unwrap(), want.as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(handle.stats().frames_in, 1200);
    handle.shutdown().unwrap();
    // Every frame was answered while the loop ran: nothing was left for `finish`, which
    // ran once the loop stopped.
    assert_eq!(finished.load(Ordering::Acquire), 0);
}

#[test]
fn a_backlog_holds_what_the_ring_cannot_take_and_keeps_the_order() {
    let reactor = Reactor::bind(config(BackendChoice::Mio)).unwrap();
    let mut out = single_producer(4, Frame::default).unwrap();
    let id = out.poller("egress").add().unwrap();
    let (producer, mut ring) = out.build().unwrap();
    let mut poller = ring.take_poller(id).unwrap();
    // No direct path: every response goes through the 4-slot ring.
    let mut egress = Egress::new(producer, reactor.waker());
    let mut backlog = Backlog::default();
    let conn = ConnId::NONE;
    for i in 0..10u8 {
        backlog.send(&mut egress, |f| f.set(conn, &[i])).unwrap();
    }
    assert!(!backlog.is_empty());
    let mut seen = Vec::new();
    loop {
        poller.poll(|f, _, _| seen.push(f.payload[0]));
        if backlog.flush(&mut egress) == Ok(true) {
            poller.poll(|f, _, _| seen.push(f.payload[0]));
            break;
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    // Held responses that the ring will never take are dropped and counted.
    for i in 0..6u8 {
        backlog.send(&mut egress, |f| f.set(conn, &[i])).unwrap();
    }
    drop(poller);
    ring.halt();
    assert_eq!(backlog.flush(&mut egress), Err(2));
    assert!(backlog.is_empty());
}

macro_rules! on_backend {
    ($name: ident, $choice: expr) => {
        mod $name {
            use super::*;
            #[test]
            fn clients_are_answered_in_order_from_the_loop_thread() {
                super::clients_are_answered_in_order_from_the_loop_thread($choice)
            }
        }
    };
}

on_backend!(mio, BackendChoice::Mio);
on_backend!(io_uring, BackendChoice::Auto);
