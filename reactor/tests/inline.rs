//! Inline work: the event loop consumes its own ingress ring between reads
//! (`Reactor::spawn_inline`). Each test runs on both backends.

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use peregrine_reactor::{BackendChoice, Config, Egress, Frame, Inline, Reactor, ReactorHandle};
use peregrine_ring::{single_producer, Poller, Single, TryPublishError, WaitStrategy};

/// Echoes each frame from the loop's own thread. Responses the egress ring has no room
/// for wait in `held`, in order, and no new frame is taken until they are out.
struct InlineEcho {
    frames: Poller<Frame, Single>,
    egress: Egress<Frame, Single>,
    held: VecDeque<Frame>,
    /// Frames echoed in `finish`, after the loop stopped; `u64::MAX` until it runs.
    finished: Arc<AtomicU64>,
}

impl InlineEcho {
    fn send_held(&mut self) -> bool {
        while let Some(f) = self.held.front() {
            match self.egress.try_publish(|o| o.set(f.conn, &f.payload)) {
                Ok(_) => {
                    self.held.pop_front();
                }
                Err(TryPublishError::Full) => return false,
                Err(_) => self.held.clear(),
            }
        }
        true
    }

    fn echo(&mut self) -> u64 {
        let (egress, held) = (&mut self.egress, &mut self.held);
        let mut n = 0;
        self.frames.poll(|f, _, _| {
            n += 1;
            let tried = match held.is_empty() {
                true => egress.try_publish(|o| o.set(f.conn, &f.payload)),
                false => Err(TryPublishError::Full),
            };
            if let Err(TryPublishError::Full) = tried {
                let mut copy = Frame::with_capacity(f.payload.len());
                copy.set(f.conn, &f.payload);
                held.push_back(copy);
            }
        });
        n
    }
}

impl Inline for InlineEcho {
    fn turn(&mut self) -> bool {
        if !self.send_held() {
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
        held: VecDeque::new(),
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
