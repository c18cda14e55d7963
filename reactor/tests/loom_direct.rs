//! The direct-egress protocol (`src/direct.rs`) under the loom model checker: the real
//! `Table` and wake handshake (`SleepFlag`), driven by publisher threads that do what
//! `Egress::publish` does and by a loop that does what `Loop` (`src/reactor.rs`) does with
//! the table, against fake sockets.
//!
//! Run (under a second of model checking at the default bound of 3 preemptions; the
//! build takes about a minute):
//! `RUSTFLAGS="--cfg loom -C debug-assertions" CARGO_TARGET_DIR=target/loom cargo test -p peregrine-reactor --release --test loom_direct`
//!
//! What the harness checks in every model:
//! - **Order**: each fake socket records the bytes it took; at the end they must be the
//!   responses of its connection in publish order (or, for a closed connection, a prefix).
//! - **No concurrent socket or spill access**: a fake socket keeps its bytes in a loom
//!   `UnsafeCell`, so a publisher's send and the loop's send (or its close) that are not
//!   ordered by happens-before is a reported data race; so is an unordered access to the
//!   table's `spill`.
//! - **No lost hand-off or wake-up**: the loop blocks only on the fake eventfd. When every
//!   publisher is done it says goodbye on the eventfd; a loop that blocked and is woken by
//!   the goodbye alone must then find nothing to do (no hand-off, no ring entry), and all
//!   bytes must have arrived. A wake-up that was lost outright is a loom deadlock.
//!
//! Each model's docs name the deliberate bugs it was seen to catch (each applied by hand to
//! `src/direct.rs` or `src/waker.rs`, then reverted).
#![cfg(loom)]

use std::collections::VecDeque;
use std::io;

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use peregrine_reactor::model::{Direct, SleepFlag, Table};
use peregrine_reactor::ConnId;

fn conn(idx: usize, generation: u32) -> ConnId {
    ConnId(((generation as u64) << 32) | idx as u64)
}

/// A socket's write side: the bytes it took, whether it is closed, and how many bytes it
/// takes before one `WouldBlock` (a full send buffer that the peer then drains).
#[derive(Debug, Default)]
struct SocketState {
    bytes: Vec<u8>,
    closed: bool,
    room: Option<usize>,
}

#[derive(Debug)]
struct Socket(UnsafeCell<SocketState>);

impl Socket {
    fn new(room: Option<usize>) -> Self {
        Self(UnsafeCell::new(SocketState {
            room,
            ..SocketState::default()
        }))
    }

    fn send(&self, b: &[u8]) -> io::Result<usize> {
        self.0.with_mut(|s| {
            // SAFETY: the protocol under test must order every send on one socket (loom
            // reports a race otherwise).
            let s = unsafe { &mut *s };
            assert!(!s.closed, "a send on a closed fd");
            match s.room {
                Some(0) => {
                    s.room = None;
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Some(r) => {
                    let n = r.min(b.len());
                    s.room = Some(r - n);
                    s.bytes.extend_from_slice(&b[..n]);
                    Ok(n)
                }
                None => {
                    s.bytes.extend_from_slice(b);
                    Ok(b.len())
                }
            }
        })
    }

    fn close(&self) {
        // SAFETY: as `send`: a close racing a send is a reported race.
        self.0.with_mut(|s| unsafe { (*s).closed = true });
    }

    fn bytes(&self) -> Vec<u8> {
        // SAFETY: read after every thread that sends was joined.
        self.0.with(|s| unsafe { (*s).bytes.clone() })
    }
}

/// The eventfd: `woken` by a publisher's `force` (after `SleepFlag::must_wake`), `bye`
/// once every publisher is done.
#[derive(Debug, Default)]
struct EventFdState {
    woken: bool,
    done: usize,
}

/// An egress ring entry: sequence, destination, encoded bytes.
type RingEntry = (u64, ConnId, Vec<u8>);

#[derive(Debug, Default)]
struct Ring {
    next: u64,
    entries: VecDeque<RingEntry>,
}

#[derive(Debug)]
struct World {
    table: Table,
    sleep: SleepFlag,
    eventfd: Mutex<EventFdState>,
    ready: Condvar,
    ring: Mutex<Ring>,
    sockets: Vec<Socket>,
    publishers: usize,
}

impl World {
    fn new(connections: usize, sockets: Vec<Socket>, publishers: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Table::new(connections),
            sleep: SleepFlag::default(),
            eventfd: Mutex::new(EventFdState::default()),
            ready: Condvar::new(),
            ring: Mutex::new(Ring::default()),
            sockets,
            publishers,
        })
    }

    /// `Egress::publish`: a direct write if the connection is idle, else through the ring;
    /// the loop woken when the ring was used or a direct write handed the connection back.
    fn publish(&self, to: ConnId, bytes: &[u8]) {
        let mut wake = false;
        let route = !self.table.idle(to)
            || self.table.write_with(to, bytes, &mut wake, |fd, b| {
                self.sockets[fd as usize].send(b)
            }) == Direct::Route;
        if route {
            let mut ring = self.ring.lock().unwrap();
            let sequence = ring.next;
            ring.next += 1;
            // Marked before it is published (visible to the loop).
            self.table.routed(to, sequence);
            ring.entries.push_back((sequence, to, bytes.to_vec()));
            wake = true;
        }
        if wake && self.sleep.must_wake() {
            let mut e = self.eventfd.lock().unwrap();
            e.woken = true;
            self.ready.notify_one();
        }
    }

    /// A publisher is done (after its last wake-up).
    fn goodbye(&self) {
        let mut e = self.eventfd.lock().unwrap();
        e.done += 1;
        self.ready.notify_one();
    }
}

/// The loop's view of one connection (`Conn` in `src/reactor.rs`).
#[derive(Debug)]
struct Conn {
    generation: u32,
    fd: i32,
    wbuf: Vec<u8>,
    busy: bool,
    dirty: bool,
}

/// The loop: what `Loop` does with the table, step by step.
struct Loop {
    w: Arc<World>,
    conns: Vec<Option<Conn>>,
    dirty: Vec<usize>,
    consumed: u64,
}

impl Loop {
    fn new(w: &Arc<World>) -> Self {
        Self {
            w: Arc::clone(w),
            conns: Vec::new(),
            dirty: Vec::new(),
            consumed: 0,
        }
    }

    /// `Loop::accept`.
    fn open(&mut self, idx: usize, generation: u32, fd: i32) {
        if self.conns.len() <= idx {
            self.conns.resize_with(idx + 1, || None);
        }
        self.conns[idx] = Some(Conn {
            generation,
            fd,
            wbuf: Vec::new(),
            busy: false,
            dirty: false,
        });
        self.w.table.open(idx, generation, fd);
    }

    /// `Loop::close`: retire, then close the fd.
    fn close(&mut self, idx: usize) {
        let c = self.conns[idx].take().expect("open");
        drop(self.w.table.retire(idx));
        self.w.sockets[c.fd as usize].close();
    }

    /// `Loop::take_handoffs`.
    fn take_handoffs(&mut self) {
        if !self.w.table.take_handoff() {
            return;
        }
        for (idx, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if c.busy || self.w.table.is_busy(idx) {
                c.busy = true;
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push(idx);
                }
            }
        }
    }

    /// `Loop::pump_egress`.
    fn pump(&mut self) -> bool {
        let taken: Vec<RingEntry> = self.w.ring.lock().unwrap().entries.drain(..).collect();
        let Some(&(last, _, _)) = taken.last() else {
            return false;
        };
        for (_, dest, bytes) in taken {
            let idx = dest.0 as u32 as usize;
            match self.conns.get_mut(idx).and_then(Option::as_mut) {
                Some(c) if c.generation == (dest.0 >> 32) as u32 => {
                    if !c.busy {
                        // Before `consumed` moves past this entry.
                        c.busy = true;
                        self.w.table.mark_busy(idx);
                    }
                    c.wbuf.extend_from_slice(&bytes);
                    if !c.dirty {
                        c.dirty = true;
                        self.dirty.push(idx);
                    }
                }
                _ => {} // undeliverable: its connection is gone
            }
        }
        if last + 1 != self.consumed {
            self.consumed = last + 1;
            self.w.table.set_consumed(last + 1);
        }
        true
    }

    /// `Loop::flush` with a readiness backend whose socket reports writable at once.
    fn flush(&mut self) {
        for idx in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns[idx].as_mut() else {
                continue;
            };
            c.dirty = false;
            if c.busy {
                let mut spill = Vec::new();
                if !self.w.table.take_for_send(idx, &mut spill) {
                    continue; // the publisher hands it back
                }
                if !spill.is_empty() {
                    spill.append(&mut c.wbuf);
                    c.wbuf = spill;
                }
            }
            let mut written = 0;
            while written < c.wbuf.len() {
                match self.w.sockets[c.fd as usize].send(&c.wbuf[written..]) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
            c.wbuf.drain(..written);
            if c.busy && c.wbuf.is_empty() {
                c.busy = false;
                self.w.table.settle(idx);
            }
            if !c.wbuf.is_empty() {
                // `Event::Sent` once the socket drains (at once here).
                c.dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    /// One turn of `Loop::run` without its wait; whether it must not sleep.
    fn turn(&mut self) -> bool {
        self.take_handoffs();
        let mut busy = self.pump();
        self.flush();
        busy |= !self.dirty.is_empty();
        busy
    }

    /// `Loop::run` until every publisher said goodbye while the loop slept.
    fn run(&mut self) {
        loop {
            let mut block = false;
            if !self.turn() {
                // The wake protocol: announce, fence, re-check.
                self.w.sleep.announce();
                if self.pump() || self.w.table.handoff_pending() {
                    self.flush();
                } else {
                    block = true;
                }
            }
            let (woken, bye) = {
                let mut e = self.w.eventfd.lock().unwrap();
                while block && !e.woken && e.done < self.w.publishers {
                    e = self.w.ready.wait(e).unwrap();
                }
                let r = (e.woken, e.done == self.w.publishers);
                e.woken = false;
                r
            };
            self.w.sleep.awake();
            if block && bye && !woken {
                // Slept with no wake-up pending while publishers finished: nothing may be
                // left for the loop.
                assert!(!self.w.table.take_handoff(), "a hand-off without a wake-up");
                assert!(!self.pump(), "a ring entry without a wake-up");
                return;
            }
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    // Three preemptions unless LOOM_MAX_PREEMPTIONS says otherwise.
    b.preemption_bound.get_or_insert(3);
    b.check(f);
}

/// One publisher, one connection whose socket takes one byte and then would block once:
/// the first response is written short and spilled, later ones go through the ring or
/// directly. The bytes must arrive whole and in order, with no lost hand-off.
///
/// Caught when broken on purpose: `write_with` skipping the `consumed >= routed` check (a
/// direct write overtakes a routed response: wrong order); the loop sending a spill after
/// its queued bytes instead of before (wrong order).
#[test]
fn one_publisher_keeps_order_across_direct_routed_and_spilled() {
    model(|| {
        let w = World::new(1, vec![Socket::new(Some(1))], 1);
        let mut lp = Loop::new(&w);
        lp.open(0, 0, 0);
        let p = {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                w.publish(conn(0, 0), &[1, 2]);
                w.publish(conn(0, 0), &[3]);
                w.publish(conn(0, 0), &[4]);
                w.goodbye();
            })
        };
        lp.run();
        p.join().unwrap();
        assert_eq!(
            w.sockets[0].bytes(),
            [1, 2, 3, 4],
            "bytes lost or out of order"
        );
    });
}

/// Two publishers, each with its own connection whose first write comes up short: both
/// hand their connection back through the one `handoff` flag; the loop must deliver both.
///
/// Caught when broken on purpose: `handoff` raised with a Relaxed store (the bug this
/// model was written for), or with a plain Release store instead of a Release swap (a
/// second raise breaks the release sequence of the first, so the loop's Acquire take need
/// not see the first connection `BUSY`: its spill is stranded); `SleepFlag::must_wake`
/// without its SeqCst fence (a hand-off without a wake-up).
#[test]
fn two_publishers_lose_no_handoff() {
    model(|| {
        let w = World::new(2, vec![Socket::new(Some(1)), Socket::new(Some(1))], 2);
        let mut lp = Loop::new(&w);
        lp.open(0, 0, 0);
        lp.open(1, 0, 1);
        let ps: Vec<_> = [(0usize, [1u8, 2]), (1, [3, 4])]
            .into_iter()
            .map(|(idx, bytes)| {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    w.publish(conn(idx, 0), &bytes);
                    w.goodbye();
                })
            })
            .collect();
        lp.run();
        for p in ps {
            p.join().unwrap();
        }
        assert_eq!(w.sockets[0].bytes(), [1, 2], "bytes lost");
        assert_eq!(w.sockets[1].bytes(), [3, 4], "bytes lost");
    });
}

/// The loop closes a connection while a publisher writes to it, and reuses its index for a
/// new generation on another fd. The close must wait for a write in progress (the fake
/// socket reports a send after or racing its close), the old connection's bytes must be a
/// prefix of what was published, and the stale publisher must never write the new fd.
///
/// Caught when broken on purpose: `retire` not waiting for `WRITING` (a send races the
/// close, or the spill is taken while the publisher writes it: data race); `write_with`
/// taking the expected generation from the state word instead of the `ConnId` (the stale
/// publisher writes the new connection); the spill sent after queued bytes.
#[test]
fn close_waits_for_the_writer_and_a_reused_index_is_not_written_stale() {
    model(|| {
        let w = World::new(1, vec![Socket::new(Some(1)), Socket::new(None)], 1);
        let mut lp = Loop::new(&w);
        lp.open(0, 0, 0);
        let p = {
            let w = Arc::clone(&w);
            thread::spawn(move || {
                w.publish(conn(0, 0), &[1, 2]);
                w.publish(conn(0, 0), &[3]);
                w.goodbye();
            })
        };
        lp.turn();
        lp.close(0);
        lp.open(0, 1, 1);
        lp.run();
        p.join().unwrap();
        let old = w.sockets[0].bytes();
        assert!([1, 2, 3].starts_with(&old), "torn or reordered: {old:?}");
        assert!(
            w.sockets[1].bytes().is_empty(),
            "a stale publisher wrote the new fd"
        );
    });
}
