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
//! meanwhile, or the spill), it raises `handoff` (a Release swap) and wakes the loop, which
//! checks `handoff` before sleeping (the same fence handshake as [`crate::LoopWaker`]) and
//! takes it with an Acquire swap before it looks for busy connections.
//!
//! Closing: the loop clears every flag but `WRITING`, so no publisher can start, waits for
//! a publisher still writing to finish (one non-blocking `send(2)`), then takes any spill
//! and only then closes the fd. Entries published with
//! [`Egress::producer`](crate::Egress::producer) carry no `routed` mark, so the first use
//! of it sets `raw`, which turns direct writes off for the loop.

//!
//! The atomics and the `spill` cell come from [`crate::sync`] and the socket write is a
//! parameter of [`Table::write_with`], so that `reactor/tests/loom_direct.rs` runs this
//! very code under the loom model checker against a fake socket. The items are `pub` only
//! for that: the module is private, and re-exported (hidden) only under `cfg(loom)`.

use std::io;
use std::os::fd::RawFd;

use crate::codec::ConnId;
use crate::sync::{AtomicBool, AtomicI32, AtomicU64, Ordering, UnsafeCell};

/// State flag: the entry describes the live connection of its generation.
pub const OPEN: u64 = 1;
/// State flag: the loop holds (or has in flight) bytes for the connection, or a publisher
/// left it a spill; publishers go through the ring.
pub const BUSY: u64 = 2;
/// State flag: a publisher owns the socket's write side.
pub const WRITING: u64 = 4;
/// State flag: `spill` holds the unsent tail of a short direct write.
pub const SPILL: u64 = 8;

/// At most this many connection indices can be written directly (64 bytes each); a
/// connection with a larger index always goes through the loop.
const MAX_ENTRIES: usize = 1 << 14;

/// One connection's direct-write state.
#[repr(align(64))] // one cache line per connection: publishers of different connections do not contend
#[derive(Debug)]
pub struct Entry {
    /// `generation << 32 | flags` (see the module docs).
    state: AtomicU64,
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
pub struct Table {
    entries: Box<[Entry]>,
    /// The loop's egress poller position: every ring entry below it has been taken by the
    /// loop, and its connection marked `BUSY`.
    consumed: AtomicU64,
    /// A publisher handed a connection back to the loop (cleared `WRITING` while `BUSY`).
    /// Raised with a Release read-modify-write, so that the loop's Acquire swap that
    /// takes it synchronises with every publisher that raised it since the last take.
    handoff: AtomicBool,
    /// An egress producer was used raw: direct writes are off.
    raw: AtomicBool,
}

// SAFETY: every field but `spill` is atomic; `spill` is accessed by one thread at a time
// under the `WRITING` / `SPILL` / `OPEN` rules of the module docs, with the state word's
// Acquire/Release transitions ordering the accesses (checked by `tests/loom_direct.rs`).
unsafe impl Sync for Table {}

/// What a direct write attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// Written, or left (in part) to the loop as a spill; carries the bytes the socket
    /// took.
    Written(usize),
    /// Not written: publish it through the ring.
    Route,
}

/// One non-blocking `send(2)` of `bytes` on `fd` (`MSG_DONTWAIT`: never block the
/// publisher; `MSG_NOSIGNAL`: a closed peer is an error, not SIGPIPE).
pub fn send_nonblocking(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a live buffer of `bytes.len()` bytes; `fd` is the caller's open
    // socket (`Table::write_with` holds `WRITING`, so the loop does not close it).
    syscall!(send(
        fd,
        bytes.as_ptr().cast(),
        bytes.len(),
        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
    ))
    .map(|n| n as usize)
}

impl Table {
    /// A table for connection indices `0..connections` (at most `MAX_ENTRIES`).
    pub fn new(connections: usize) -> Self {
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

    fn entry(&self, idx: usize) -> Option<&Entry> {
        self.entries.get(idx)
    }

    /// Loop: connection `idx` of `generation` is live on `fd`.
    pub fn open(&self, idx: usize, generation: u32, fd: RawFd) {
        if let Some(e) = self.entry(idx) {
            debug_assert_eq!(e.state.load(Ordering::Relaxed) & u32::MAX as u64, 0);
            e.fd.store(fd, Ordering::Relaxed);
            // Release: the fd above is visible to whoever acquires this state.
            e.state
                .store(((generation as u64) << 32) | OPEN, Ordering::Release);
        }
    }

    /// Loop: every egress entry below `next` has been taken (and its connection marked
    /// `BUSY`).
    pub fn set_consumed(&self, next: u64) {
        // Release: pairs with the Acquire load in `write_with`; the loop's `fetch_or(BUSY)`
        // for each entry below `next` happens before a publisher that reads this value.
        self.consumed.store(next, Ordering::Release);
    }

    /// Loop: marks `idx` busy; returns whether a publisher is writing it now.
    pub fn mark_busy(&self, idx: usize) -> bool {
        match self.entry(idx) {
            // AcqRel: Acquire pairs with a publisher's Release clear of `WRITING` (its
            // sends happen before the loop's); Release orders the loop's earlier sends
            // before a publisher that later acquires the state.
            Some(e) => e.state.fetch_or(BUSY, Ordering::AcqRel) & WRITING != 0,
            None => false,
        }
    }

    /// Loop: whether `idx` is `BUSY` (set by the loop, or by a publisher that spilled).
    pub fn is_busy(&self, idx: usize) -> bool {
        self.entry(idx)
            .is_some_and(|e| e.state.load(Ordering::Acquire) & BUSY != 0)
    }

    /// Loop: whether the loop may send on `idx` now, and the spilled bytes it must send
    /// first (appended to `into`, which must be empty).
    pub fn take_for_send(&self, idx: usize, into: &mut Vec<u8>) -> bool {
        let Some(e) = self.entry(idx) else {
            return true;
        };
        // Acquire: a publisher's writes to `spill` (and its sends) happen before it
        // cleared `WRITING` with Release.
        let s = e.state.load(Ordering::Acquire);
        if s & WRITING != 0 {
            return false;
        }
        if s & SPILL != 0 {
            e.spill.with_mut(|spill| {
                // SAFETY: `SPILL` set and `WRITING` clear: no publisher can take `WRITING`
                // (that needs the state to be exactly `OPEN`, and `SPILL` comes with
                // `BUSY`, which only this thread clears), so the loop alone owns `spill`.
                into.append(unsafe { &mut *spill });
            });
            // Relaxed: only the loop reads `SPILL` back; `BUSY` stays set, and its
            // Release clear in `settle` orders the take above before the next publisher.
            e.state.fetch_and(!SPILL, Ordering::Relaxed);
        }
        true
    }

    /// Loop: `idx` has nothing queued nor in flight; publishers may write it again.
    pub fn settle(&self, idx: usize) {
        if let Some(e) = self.entry(idx) {
            debug_assert_eq!(e.state.load(Ordering::Relaxed) & (WRITING | SPILL), 0);
            // Release: the loop's sends (and its take of a spill) happen before a
            // publisher's compare-and-swap that acquires this.
            e.state.fetch_and(!BUSY, Ordering::Release);
        }
    }

    /// Loop: connection `idx` is closing. Stops direct writes to it, waits for one in
    /// progress, and returns the tail a publisher spilled (empty if none). After it
    /// returns no publisher touches the connection's fd again.
    pub fn retire(&self, idx: usize) -> Vec<u8> {
        let Some(e) = self.entry(idx) else {
            return Vec::new();
        };
        // Clears `OPEN`, `BUSY` and `SPILL`, keeps `WRITING` and the generation: no
        // publisher can start (its compare-and-swap wants `OPEN`).
        e.state
            .fetch_and(WRITING | !(u32::MAX as u64), Ordering::AcqRel);
        // A publisher holds the write side for one non-blocking send.
        // Acquire: pairs with its Release clear of `WRITING` (its `spill` writes and its
        // sends happen before the close that follows).
        while e.state.load(Ordering::Acquire) & WRITING != 0 {
            crate::sync::yield_now();
        }
        // Drops the `SPILL | BUSY` a publisher that finished short may have left.
        e.state.fetch_and(!(u32::MAX as u64), Ordering::Relaxed);
        e.spill.with_mut(|spill| {
            // SAFETY: no `OPEN` and no `WRITING`: no publisher can take `WRITING`, and the
            // last one's writes to `spill` happen before its Release clear of it
            // (acquired above).
            std::mem::take(unsafe { &mut *spill })
        })
    }

    /// Loop, when it ends for any reason (a panic included): retires every connection,
    /// so that no publisher writes to an fd the loop's backend closes as it drops.
    pub fn retire_all(&self) {
        for idx in 0..self.entries.len() {
            self.retire(idx);
        }
    }

    /// Loop: takes the hand-off flag; `true` if a publisher raised it since the last take.
    /// Every connection handed back since then then reads `BUSY` in [`is_busy`](Self::is_busy).
    pub fn take_handoff(&self) -> bool {
        // Acquire: pairs with the publishers' Release swaps (an unbroken release sequence
        // of read-modify-writes), so their state updates are visible to `is_busy`.
        self.handoff.load(Ordering::Relaxed) && self.handoff.swap(false, Ordering::Acquire)
    }

    /// Loop, after announcing its sleep: whether a hand-off is pending (then it must not
    /// sleep). Relaxed: the SeqCst fences of the wake handshake order it.
    pub fn handoff_pending(&self) -> bool {
        self.handoff.load(Ordering::Relaxed)
    }

    /// Publisher: direct writes are off from now on ([`Egress::producer`](crate::Egress::producer)).
    pub fn disable(&self) {
        self.raw.store(true, Ordering::Relaxed);
    }

    /// Publisher: `conn` gets an entry through the ring at `sequence`; call before it is
    /// published.
    pub fn routed(&self, conn: ConnId, sequence: u64) {
        if let Some(e) = self.entry(conn.index()) {
            // Release: pairs with the Acquire load in `write_with` of a publisher that
            // learns of this entry's publish.
            e.routed.fetch_max(sequence + 1, Ordering::Release);
        }
    }

    /// Publisher: a cheap first look; `false` when `conn` cannot be written directly now.
    #[inline]
    pub fn idle(&self, conn: ConnId) -> bool {
        self.entry(conn.index()).is_some_and(|e| {
            e.state.load(Ordering::Relaxed) == ((conn.generation() as u64) << 32) | OPEN
        })
    }

    /// Publisher: writes `bytes` (one encoded response for `conn`) to its socket with
    /// `send(2)`; see [`write_with`](Self::write_with).
    #[inline]
    pub fn write(&self, conn: ConnId, bytes: &[u8], wake: &mut bool) -> Direct {
        self.write_with(conn, bytes, wake, send_nonblocking)
    }

    /// Publisher: writes `bytes` (one encoded response for `conn`) to its socket with
    /// `send` (a non-blocking `send(2)`: bytes taken, or an error) if the protocol allows
    /// it. A short write (or a socket error) leaves the tail to the loop (`SPILL`); then,
    /// or when the loop queued something meanwhile, `handoff` is raised and the caller
    /// must wake the loop (`*wake = true`).
    pub fn write_with(
        &self,
        conn: ConnId,
        bytes: &[u8],
        wake: &mut bool,
        mut send: impl FnMut(RawFd, &[u8]) -> io::Result<usize>,
    ) -> Direct {
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
        // Acquire: pairs with `routed`; a publisher that knows an entry was routed knows
        // its mark.
        let routed = e.routed.load(Ordering::Acquire);
        // Acquire: pairs with `set_consumed`; see the module docs.
        if self.consumed.load(Ordering::Acquire) < routed {
            return Direct::Route;
        }
        // Acquire: the fd (and the loop's last sends, and its take of the last spill)
        // happen before this; pairs with the Release of `open` and `settle`.
        if e.state
            .compare_exchange(idle, idle | WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Direct::Route;
        }
        let fd = e.fd.load(Ordering::Relaxed);
        let mut sent = 0;
        while sent < bytes.len() {
            match send(fd, &bytes[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n.min(bytes.len() - sent),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // Would block, or a broken connection: the loop sends the tail (and, on a
                // broken connection, sees the error on its side and closes it). Dropping
                // the tail here would leave a torn frame on a connection that lives on.
                Err(_) => break,
            }
        }
        let prev = if sent < bytes.len() {
            e.spill.with_mut(|spill| {
                // SAFETY: this thread holds `WRITING`, which it took from a state without
                // `SPILL`; the loop touches `spill` only while `WRITING` is clear.
                let spill = unsafe { &mut *spill };
                debug_assert!(spill.is_empty(), "a spill was left behind");
                spill.extend_from_slice(&bytes[sent..]);
            });
            // Release: the spill (and the sends) happen before the loop acquires `SPILL`.
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
            // Release, and a read-modify-write so that the release sequence of an earlier
            // publisher's raise is not broken: the loop's Acquire take of the flag then
            // sees this connection `BUSY` (and `WRITING` clear). The caller's wake-up
            // (a SeqCst fence, then `sleeping`) pairs with the loop's pre-sleep check of
            // `handoff_pending`.
            self.handoff.swap(true, Ordering::Release);
            *wake = true;
        }
        Direct::Written(sent)
    }
}
