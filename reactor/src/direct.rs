//! Direct egress: the table through which an [`Egress`](crate::Egress) writes a response
//! straight to its connection's socket from the publishing thread, when nothing for that
//! connection is queued on the loop, instead of going through the egress ring and waking
//! the loop. Everything else (a connection with bytes queued, a socket that would block)
//! still goes through the loop, and per-connection order is kept.
//!
//! # The protocol
//!
//! One entry per connection index, holding a state word `generation << 32 | flags`:
//!
//! - `OPEN`: the entry describes the live connection of that generation (set by the loop
//!   when it adopts one, cleared when it closes it);
//! - `BUSY`: the loop holds bytes or egress entries for the connection, or a publisher
//!   left bytes for it; publishers send through the ring. Only the loop clears it, once
//!   its queue and the backend's in-flight send for the connection are empty;
//! - `WRITING`: one publisher owns the socket's write side (a non-blocking `send(2)`);
//!   the loop does not send for the connection, nor close its fd, while it is set;
//! - `SPILL`: a publisher's send was short; the unsent tail is in the entry's `spill`
//!   buffer, which the loop sends before anything it queued.
//!
//! A publisher writes directly only if it moves the state from exactly
//! `generation << 32 | OPEN` to `... | WRITING` (compare-and-swap): a connection that is
//! busy, being written, spilled, closed or reused is never written directly. Before that
//! it checks that every egress entry routed to this connection through the ring has been
//! taken by the loop: a publisher that routes an entry raises the entry's `routed` mark to
//! the entry's sequence + 1 *before* publishing it, and the loop sets `BUSY` for every
//! entry it takes *before* it raises `consumed` (Release) past it. A publisher that reads
//! `consumed >= routed` (Acquire) therefore sees `BUSY` in its compare-and-swap for every
//! routed entry not yet sent, since the loop's `fetch_or` happens before it. An entry
//! routed concurrently with a direct write is unordered with it, as two concurrent
//! publishes are.
//!
//! When the publisher is done it clears `WRITING`; if its send was short it also sets
//! `SPILL | BUSY` in the same update. If `BUSY` was then set (the loop queued something
//! meanwhile, or the spill), it raises `handoff` and wakes the loop, which checks
//! `handoff` before sleeping (the same fence handshake as [`crate::LoopWaker`]).
//!
//! Closing: the loop clears every flag but `WRITING`, so no publisher can start, waits for
//! a publisher still writing to finish (one non-blocking `send(2)`), then takes any spill
//! and only then closes the fd. Entries published with
//! [`Egress::producer`](crate::Egress::producer) carry no `routed` mark, so the first use
//! of it sets `raw`, which turns direct writes off for the loop.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use crate::codec::ConnId;

pub(crate) const OPEN: u64 = 1;
pub(crate) const BUSY: u64 = 2;
pub(crate) const WRITING: u64 = 4;
pub(crate) const SPILL: u64 = 8;

/// At most this many connection indices can be written directly (64 bytes each); a
/// connection with a larger index always goes through the loop.
const MAX_ENTRIES: usize = 1 << 14;

/// One connection's direct-write state.
#[repr(align(64))] // one cache line per connection: publishers of different connections do not contend
#[derive(Debug)]
pub(crate) struct Entry {
    /// `generation << 32 | flags` (see the module docs).
    pub(crate) state: AtomicU64,
    /// The socket; valid while `OPEN` (written before `OPEN` is published with Release).
    fd: AtomicI32,
    /// One past the ring sequence of the last egress entry routed to this connection
    /// through the ring; raised before that entry is published.
    routed: AtomicU64,
    /// The unsent tail of a short direct write. Accessed only by the publisher holding
    /// `WRITING`, or by the loop while `WRITING` is clear and `SPILL` or no `OPEN` is set.
    spill: UnsafeCell<Vec<u8>>,
}

/// The direct-write table of one loop, shared by the loop and its [`Egress`](crate::Egress)es.
#[derive(Debug)]
pub(crate) struct Table {
    entries: Box<[Entry]>,
    /// The loop's egress poller position: every ring entry below it has been taken by the
    /// loop, and its connection marked `BUSY`.
    consumed: AtomicU64,
    /// A publisher handed a connection back to the loop (cleared `WRITING` while `BUSY`).
    pub(crate) handoff: AtomicBool,
    /// An egress producer was used raw: direct writes are off.
    raw: AtomicBool,
}

// SAFETY: every field but `spill` is atomic; `spill` is accessed by one thread at a time
// under the `WRITING` / `SPILL` / `OPEN` rules of the module docs, with the state word's
// Acquire/Release transitions ordering the accesses.
unsafe impl Sync for Table {}

/// What a direct write attempt did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Written (or dropped on a socket error: the loop sees the error on its side); carries
    /// the bytes handed to the socket.
    Written(usize),
    /// Not written: publish it through the ring.
    Route,
}

impl Table {
    pub(crate) fn new(connections: usize) -> Self {
        let n = connections.clamp(1, MAX_ENTRIES);
        Self {
            entries: (0..n)
                .map(|_| Entry {
                    state: AtomicU64::new(0),
                    fd: AtomicI32::new(-1),
                    routed: AtomicU64::new(0),
                    spill: UnsafeCell::new(Vec::new()),
                })
                .collect(),
            consumed: AtomicU64::new(0),
            handoff: AtomicBool::new(false),
            raw: AtomicBool::new(false),
        }
    }

    pub(crate) fn entry(&self, idx: usize) -> Option<&Entry> {
        self.entries.get(idx)
    }

    /// Loop: connection `idx` of `generation` is live on `fd`.
    pub(crate) fn open(&self, idx: usize, generation: u32, fd: RawFd) {
        if let Some(e) = self.entry(idx) {
            debug_assert_eq!(e.state.load(Ordering::Relaxed) & WRITING, 0);
            e.fd.store(fd, Ordering::Relaxed);
            // Release: the fd above is visible to whoever acquires this state.
            e.state
                .store(((generation as u64) << 32) | OPEN, Ordering::Release);
        }
    }

    /// Loop: every egress entry below `next` has been taken (and its connection marked
    /// `BUSY`).
    pub(crate) fn set_consumed(&self, next: u64) {
        // Release: pairs with the Acquire load in `write`; the loop's `fetch_or(BUSY)` for
        // each entry below `next` happens before a publisher that reads this value.
        self.consumed.store(next, Ordering::Release);
    }

    /// Loop: marks `idx` busy; returns whether a publisher is writing it now.
    pub(crate) fn mark_busy(&self, idx: usize) -> bool {
        match self.entry(idx) {
            Some(e) => e.state.fetch_or(BUSY, Ordering::AcqRel) & WRITING != 0,
            None => false,
        }
    }

    /// Loop: whether `idx` is `BUSY` (set by the loop, or by a publisher that spilled).
    pub(crate) fn is_busy(&self, idx: usize) -> bool {
        self.entry(idx)
            .is_some_and(|e| e.state.load(Ordering::Acquire) & BUSY != 0)
    }

    /// Loop: whether the loop may send on `idx` now, and the spilled bytes it must send
    /// first (appended to `into`, which must be empty).
    pub(crate) fn take_for_send(&self, idx: usize, into: &mut Vec<u8>) -> bool {
        let Some(e) = self.entry(idx) else {
            return true;
        };
        // Acquire: a publisher's writes to `spill` happen before it cleared `WRITING`.
        let s = e.state.load(Ordering::Acquire);
        if s & WRITING != 0 {
            return false;
        }
        if s & SPILL != 0 {
            // SAFETY: `SPILL` set and `WRITING` clear: no publisher can take `WRITING`
            // (that needs the state to be exactly `OPEN`), so the loop alone owns `spill`.
            let spill = unsafe { &mut *e.spill.get() };
            into.append(spill);
            e.state.fetch_and(!SPILL, Ordering::Relaxed);
        }
        true
    }

    /// Loop: `idx` has nothing queued nor in flight; publishers may write it again.
    pub(crate) fn settle(&self, idx: usize) {
        if let Some(e) = self.entry(idx) {
            debug_assert_eq!(e.state.load(Ordering::Relaxed) & (WRITING | SPILL), 0);
            // Release: the loop's sends happen before a publisher's that acquires this.
            e.state.fetch_and(!BUSY, Ordering::Release);
        }
    }

    /// Loop: connection `idx` is closing. Stops direct writes to it, waits for one in
    /// progress, and returns the tail a publisher spilled (empty if none).
    pub(crate) fn retire(&self, idx: usize) -> Vec<u8> {
        let Some(e) = self.entry(idx) else {
            return Vec::new();
        };
        e.state.fetch_and(WRITING | !0xffff_ffff, Ordering::AcqRel);
        // A publisher holds the write side for one non-blocking send.
        while e.state.load(Ordering::Acquire) & WRITING != 0 {
            std::thread::yield_now();
        }
        e.state.fetch_and(!0xffff_ffff, Ordering::Relaxed);
        // SAFETY: no `OPEN` and no `WRITING`: no publisher can take `WRITING`, and the
        // last one's writes to `spill` happen before its Release clear of it (acquired above).
        std::mem::take(unsafe { &mut *e.spill.get() })
    }

    /// Publisher: direct writes are off from now on ([`Egress::producer`](crate::Egress::producer)).
    pub(crate) fn disable(&self) {
        self.raw.store(true, Ordering::Relaxed);
    }

    /// Publisher: `conn` gets an entry through the ring at `sequence`; call before it is
    /// published.
    pub(crate) fn routed(&self, conn: ConnId, sequence: u64) {
        if let Some(e) = self.entry(conn.index()) {
            e.routed.fetch_max(sequence + 1, Ordering::Release);
        }
    }

    /// Publisher: a cheap first look; `false` when `conn` cannot be written directly now.
    #[inline]
    pub(crate) fn idle(&self, conn: ConnId) -> bool {
        self.entry(conn.index()).is_some_and(|e| {
            e.state.load(Ordering::Relaxed) == ((conn.generation() as u64) << 32) | OPEN
        })
    }

    /// Publisher: writes `bytes` (one encoded response for `conn`) to its socket if the
    /// protocol allows it. A short write leaves the tail to the loop (`SPILL`); then, or
    /// when the loop queued something meanwhile, `handoff` is raised and the caller must
    /// wake the loop (`*wake = true`).
    pub(crate) fn write(&self, conn: ConnId, bytes: &[u8], wake: &mut bool) -> Direct {
        let Some(e) = self.entry(conn.index()) else {
            return Direct::Route;
        };
        if self.raw.load(Ordering::Relaxed) {
            return Direct::Route;
        }
        let idle = ((conn.generation() as u64) << 32) | OPEN;
        if e.state.load(Ordering::Relaxed) != idle {
            return Direct::Route;
        }
        let routed = e.routed.load(Ordering::Acquire);
        // Acquire: pairs with `set_consumed`; see the module docs.
        if self.consumed.load(Ordering::Acquire) < routed {
            return Direct::Route;
        }
        // Acquire: the fd (and the loop's last sends) happen before this.
        if e.state
            .compare_exchange(idle, idle | WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Direct::Route;
        }
        let fd = e.fd.load(Ordering::Relaxed);
        let mut sent = 0;
        let mut short = false;
        while sent < bytes.len() {
            let rest = &bytes[sent..];
            // SAFETY: `rest` is a live buffer of `rest.len()` bytes; `fd` is the open socket
            // of this connection, which the loop does not close while `WRITING` is held.
            // MSG_DONTWAIT: never block the publisher; MSG_NOSIGNAL: no SIGPIPE.
            match syscall!(send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
            )) {
                Ok(n) => sent += n as usize,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    short = true;
                    break;
                }
                // A broken connection: the loop sees the error (or end of stream) on its
                // side and closes it; the response is lost with it.
                Err(_) => break,
            }
        }
        let prev = if short {
            // SAFETY: this thread holds `WRITING`, and `spill` was empty (no `SPILL` in the
            // state it swapped from).
            unsafe { &mut *e.spill.get() }.extend_from_slice(&bytes[sent..]);
            // Release: the spill is written before the loop acquires `SPILL`.
            e.state
                .fetch_update(Ordering::Release, Ordering::Relaxed, |s| {
                    Some((s & !WRITING) | SPILL | BUSY)
                })
                .expect("the closure always returns Some")
                | BUSY
        } else {
            // Release: this send happens before the loop's next one.
            e.state.fetch_and(!WRITING, Ordering::Release)
        };
        if prev & BUSY != 0 && prev & OPEN != 0 {
            self.handoff.store(true, Ordering::Relaxed);
            *wake = true;
        }
        Direct::Written(sent)
    }
}
