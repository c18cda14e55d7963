//! The completion backend: io_uring through the io-uring crate.
//!
//! - One multishot accept on the listener; one multishot poll on the waker's eventfd.
//! - One multishot receive per connection into a ring of provided buffers (a "buf ring"
//!   shared with the kernel); the loop copies each completion out and hands the buffer
//!   straight back.
//! - Sends are submitted from the connection's pending bytes, one in flight per
//!   connection; the bytes move into an in-flight buffer the kernel reads from.
//! - Submission is batched: entries are queued during a loop turn and submitted by the one
//!   `io_uring_enter` that also waits for completions. SQPOLL is optional.
//! - Completions are posted when the loop asks for them (`DEFER_TASKRUN` on a
//!   single-issuer ring that the loop's thread enables, Linux 6.1+), so the kernel never
//!   interrupts the loop with task work; older kernels get cooperative task running
//!   (5.19+) or the plain mode. With SQPOLL the cooperative mode is used.
//!
//! Pausing a connection cancels its receive; bytes already in flight still complete and
//! the loop buffers them. Closing shuts the socket down, waits for every operation that
//! refers to the connection to complete, and only then closes the fd and reports
//! [`Event::Released`], so no kernel write can land in freed memory.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::Event;

/// The provided-buffer group id of the receive buffers.
const BGID: u16 = 0;

const OP_ACCEPT: u64 = 1;
const OP_WAKE: u64 = 2;
const OP_RECV: u64 = 3;
const OP_SEND: u64 = 4;
const OP_CANCEL: u64 = 5;

/// How long to wait before accepting again after an accept failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

fn user_data(op: u64, idx: usize) -> u64 {
    ((idx as u64) << 8) | op
}

/// How completions reach the loop (newest kernels first; see `Uring::with_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Deferred,
    Cooperative,
    Plain,
}

/// io_uring settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UringConfig {
    pub(crate) entries: u32,
    pub(crate) sqpoll_idle: Option<Duration>,
    pub(crate) buf_count: u16,
    pub(crate) buf_size: u32,
}

/// Page-aligned anonymous memory, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // Not `syscall!`: mmap reports failure as MAP_FAILED, a pointer, not -1.
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` describe a mapping made in `new` and not unmapped since.
            let _ = syscall!(munmap(self.ptr.cast(), self.len));
        }
    }
}

// SAFETY: the mapping is plain memory owned by one `Uring`; moving it to another thread
// moves the only handle to it.
unsafe impl Send for Mapping {}

/// The provided buffers: `count` buffers of `size` bytes and the ring of entries through
/// which they are handed to the kernel.
///
/// Invariant: a buffer id is either in the kernel's hands (published in the ring) or
/// described by exactly one pending [`Event::Received`]; the loop copies it out and
/// [`BufRing::recycle`]s it before anything else can reuse it.
#[derive(Debug)]
struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    size: u32,
    tail: u16,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<Self> {
        debug_assert!(count.is_power_of_two());
        let entries = Mapping::new(count as usize * std::mem::size_of::<types::BufRingEntry>())?;
        let buffers = Mapping::new(count as usize * size as usize)?;
        let mut ring = Self {
            entries,
            buffers,
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn base(&self) -> *mut types::BufRingEntry {
        self.entries.ptr.cast()
    }

    /// Writes buffer `bid` into the next ring entry (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `slot < count` entries lie in the mapping; the kernel reads only entries
        // below the published tail, and this one is at or above it.
        let entry = unsafe { &mut *self.base().add(slot) };
        // SAFETY: `bid < count`, so the buffer lies within the buffers mapping.
        let addr = unsafe { self.buffers.ptr.add(bid as usize * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel.
    fn publish(&self) {
        // SAFETY: the base is the first entry of a page-aligned, initialised ring, as
        // `BufRingEntry::tail` requires; the tail field is a u16 the kernel reads atomically.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.base()) as *const AtomicU16) };
        // Release: the entry contents written by `push` happen before the kernel reads them.
        tail.store(self.tail, Ordering::Release);
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size as usize);
        // SAFETY: in bounds (asserted); the kernel finished writing this buffer when it
        // posted the completion, and does not reuse it until it is recycled.
        unsafe {
            std::slice::from_raw_parts(self.buffers.ptr.add(bid as usize * self.size as usize), len)
        }
    }

    fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }
}

/// One connection's kernel-side state.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    reading: bool,
    recv_armed: bool,
    cancel_sent: bool,
    send_armed: bool,
    /// Bytes the kernel is sending; not touched while `send_armed`.
    inflight: Vec<u8>,
    sent: usize,
    /// Operations submitted and not yet finally completed.
    ops: u32,
    closing: bool,
}

/// The io_uring backend.
pub(crate) struct Uring {
    ring: IoUring,
    listener: TcpListener,
    waker_fd: RawFd,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    accept_armed: bool,
    wake_armed: bool,
    rearm: Vec<usize>,
    cqes: Vec<(u64, i32, u32)>,
    mode: Mode,
    /// After a failed accept, when to accept again.
    accept_after: Option<std::time::Instant>,
    /// `start` ran: the ring is enabled and owned by the loop's thread.
    started: bool,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("listener", &self.listener)
            .field("bufs", &self.bufs.count)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The running kernel's (major, minor) version.
fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: `utsname` is plain old data; zeroed is a valid value for uname to fill.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    syscall!(uname(&mut uts)).ok()?;
    // SAFETY: uname filled `release` with a NUL-terminated string.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    let mut parts = release.to_str().ok()?.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Uring {
    /// Sets up the ring, the provided buffers, and the accept and waker operations.
    ///
    /// Fails (so that the loop falls back to mio) when io_uring is forbidden (ENOSYS,
    /// EPERM), the kernel predates multishot receive (6.0), or a feature it needs is
    /// missing.
    pub(crate) fn new(
        listener: TcpListener,
        waker_fd: RawFd,
        config: UringConfig,
    ) -> io::Result<Self> {
        match kernel_version() {
            Some(v) if v >= (6, 0) => {}
            v => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("kernel {v:?} predates multishot receive (6.0)"),
                ))
            }
        }
        let mut last = None;
        for mode in [Mode::Deferred, Mode::Cooperative, Mode::Plain] {
            if mode == Mode::Deferred && config.sqpoll_idle.is_some() {
                continue; // deferred task running excludes a kernel submission thread
            }
            match Self::with_mode(&listener, waker_fd, config, mode) {
                Ok(uring) => return Ok(uring),
                // An older kernel refuses a setup flag it does not know; try fewer.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one mode was tried"))
    }

    fn with_mode(
        listener: &TcpListener,
        waker_fd: RawFd,
        config: UringConfig,
        mode: Mode,
    ) -> io::Result<Self> {
        let mut builder = IoUring::<squeue::Entry, cqueue::Entry>::builder();
        if let Some(idle) = config.sqpoll_idle {
            builder.setup_sqpoll(idle.as_millis().clamp(1, u32::MAX as u128) as u32);
        }
        match mode {
            // Completions are posted only when the loop asks for them (it enters the
            // kernel every turn anyway): no task-work interrupts while it runs. The ring
            // belongs to the thread that enables it, so it starts disabled and the loop's
            // thread enables it in `start`.
            Mode::Deferred => {
                builder
                    .setup_r_disabled()
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
            // Completions do not interrupt the loop while it runs; the flag tells
            // `submit` when work is pending.
            Mode::Cooperative => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            Mode::Plain => {}
        }
        // Room for a burst of completions from every connection between two reaps.
        builder.setup_cqsize(config.entries.saturating_mul(4));
        let ring = builder.build(config.entries)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEATURE_EXT_ARG",
            ));
        }
        let count = config.buf_count.next_power_of_two().clamp(2, 1 << 15);
        let bufs = BufRing::new(count, config.buf_size)?;
        // SAFETY: the entries mapping stays alive (owned by `bufs`, owned by `self`) until the
        // ring is dropped; `Uring`'s fields drop `ring` first.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.base() as u64, count, BGID, 0)?;
        }
        Ok(Self {
            ring,
            listener: listener.try_clone()?,
            waker_fd,
            bufs,
            conns: Vec::new(),
            accept_armed: false,
            wake_armed: false,
            rearm: Vec::new(),
            cqes: Vec::with_capacity(1024),
            mode,
            accept_after: None,
            started: false,
        })
    }

    /// Enables the ring for the calling thread (the loop's) and arms accept and the waker.
    pub(crate) fn start(&mut self) -> io::Result<()> {
        if self.mode == Mode::Deferred {
            self.ring.submitter().register_enable_rings()?;
        }
        self.started = true;
        self.arm_accept();
        self.arm_wake();
        self.ring.submit()?;
        tracing::debug!(mode = ?self.mode, "io_uring started");
        Ok(())
    }

    /// Queues `entry`, submitting first when the submission queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here refers only to fds and buffers that outlive
            // the operation: the listener and eventfd live as long as `self`; a connection's
            // socket and in-flight buffer are kept until its `ops` count reaches zero; the
            // receive buffers belong to the registered buf ring.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed while the queue was full");
            }
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(OP_ACCEPT, 0));
        self.push(e);
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.waker_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(OP_WAKE, 0));
        self.push(e);
        self.wake_armed = true;
    }

    fn arm_recv(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if conn.recv_armed || conn.closing || !conn.reading {
            return;
        }
        conn.recv_armed = true;
        conn.cancel_sent = false;
        conn.ops += 1;
        let e = opcode::RecvMulti::new(types::Fd(conn.stream.as_raw_fd()), BGID)
            .build()
            .user_data(user_data(OP_RECV, idx));
        self.push(e);
    }

    pub(crate) fn adopt(&mut self, idx: usize, stream: TcpStream) -> io::Result<()> {
        if self.conns.len() <= idx {
            self.conns.resize_with(idx + 1, || None);
        }
        debug_assert!(
            self.conns[idx].is_none(),
            "index {idx} reused before release"
        );
        self.conns[idx] = Some(Conn {
            stream,
            reading: true,
            recv_armed: false,
            cancel_sent: false,
            send_armed: false,
            inflight: Vec::new(),
            sent: 0,
            ops: 0,
            closing: false,
        });
        self.arm_recv(idx);
        Ok(())
    }

    /// Copies a received buffer into `into` (or drops it) and gives it back to the kernel.
    pub(crate) fn received(&mut self, buf: u16, len: usize, into: Option<&mut Vec<u8>>) {
        if let Some(into) = into {
            into.extend_from_slice(self.bufs.bytes(buf, len));
        }
        self.bufs.recycle(buf);
    }

    pub(crate) fn set_reading(&mut self, idx: usize, on: bool, _events: &mut Vec<Event>) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        conn.reading = on;
        if on {
            // If a cancel is still on its way, the final completion re-arms.
            if !conn.recv_armed {
                self.arm_recv(idx);
            }
        } else if conn.recv_armed && !conn.cancel_sent {
            conn.cancel_sent = true;
            conn.ops += 1;
            let e = opcode::AsyncCancel::new(user_data(OP_RECV, idx))
                .build()
                .user_data(user_data(OP_CANCEL, idx));
            self.push(e);
        }
    }

    pub(crate) fn send(&mut self, idx: usize, pending: &mut Vec<u8>, _events: &mut Vec<Event>) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            pending.clear();
            return;
        };
        if conn.send_armed || conn.closing || pending.is_empty() {
            return;
        }
        conn.inflight.clear();
        std::mem::swap(pending, &mut conn.inflight);
        conn.sent = 0;
        self.submit_send(idx);
    }

    pub(crate) fn send_idle(&self, idx: usize) -> bool {
        self.conns
            .get(idx)
            .and_then(Option::as_ref)
            .is_none_or(|c| !c.send_armed)
    }

    fn submit_send(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let rest = &conn.inflight[conn.sent..];
        let e = opcode::Send::new(
            types::Fd(conn.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len().min(u32::MAX as usize) as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(OP_SEND, idx));
        conn.send_armed = true;
        conn.ops += 1;
        self.push(e);
    }

    pub(crate) fn close(&mut self, idx: usize) -> bool {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return true;
        };
        conn.closing = true;
        conn.reading = false;
        // Completes the receive (end of stream) and any send (EPIPE) in flight.
        // SAFETY: the fd is the connection's live socket.
        let _ = syscall!(shutdown(conn.stream.as_raw_fd(), libc::SHUT_RDWR));
        if conn.ops == 0 {
            self.conns[idx] = None;
            true
        } else {
            false
        }
    }

    /// One operation of connection `idx` finished for good.
    fn op_done(&mut self, idx: usize, events: &mut Vec<Event>) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        conn.ops -= 1;
        if conn.closing && conn.ops == 0 {
            self.conns[idx] = None;
            events.push(Event::Released(idx));
        }
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, events: &mut Vec<Event>) {
        let op = ud & 0xff;
        let idx = (ud >> 8) as usize;
        let more = cqueue::more(flags);
        match op {
            OP_ACCEPT => {
                if res >= 0 {
                    // SAFETY: a non-negative accept result is a new socket fd that nothing
                    // else owns.
                    let stream = unsafe { TcpStream::from_raw_fd(res) };
                    let _ = stream.set_nodelay(true);
                    events.push(Event::Accepted(stream));
                } else {
                    let e = io::Error::from_raw_os_error(-res);
                    tracing::warn!(error = %e, "io_uring accept failed");
                    // Out of fds or memory: do not re-arm into the same failure at once.
                    self.accept_after = Some(std::time::Instant::now() + ACCEPT_RETRY);
                }
                if !more {
                    self.accept_armed = false;
                }
            }
            OP_WAKE => {
                super::eventfd_read(self.waker_fd);
                events.push(Event::Wake);
                if !more {
                    self.wake_armed = false;
                }
            }
            OP_RECV => {
                let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.bufs.recycle(bid);
                    }
                    return;
                };
                if res > 0 {
                    let bid =
                        cqueue::buffer_select(flags).expect("a receive with data names its buffer");
                    if conn.closing {
                        self.bufs.recycle(bid);
                    } else {
                        events.push(Event::Received {
                            idx,
                            buf: bid,
                            len: res as usize,
                        });
                    }
                }
                if !more {
                    conn.recv_armed = false;
                    conn.cancel_sent = false;
                    let closing = conn.closing;
                    let reading = conn.reading;
                    if !closing {
                        match res {
                            0 => events.push(Event::Eof(idx)),
                            // Out of buffers, cancelled (paused), or ended after data:
                            // receive again once reading is wanted.
                            r if r == -libc::ENOBUFS || r == -libc::ECANCELED || r > 0 => {
                                self.rearm.extend(reading.then_some(idx));
                            }
                            r if r < 0 => {
                                events.push(Event::Failed(idx, io::Error::from_raw_os_error(-r)))
                            }
                            _ => {}
                        }
                    }
                    self.op_done(idx, events);
                }
            }
            OP_SEND => {
                let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                    return;
                };
                conn.send_armed = false;
                if !conn.closing {
                    if res < 0 {
                        events.push(Event::Failed(idx, io::Error::from_raw_os_error(-res)));
                    } else {
                        conn.sent += res as usize;
                        if conn.sent < conn.inflight.len() {
                            self.submit_send(idx);
                        } else {
                            conn.inflight.clear();
                            events.push(Event::Sent(idx));
                        }
                    }
                }
                self.op_done(idx, events);
            }
            OP_CANCEL => self.op_done(idx, events),
            _ => {}
        }
    }

    pub(crate) fn wait(&mut self, timeout: Duration, events: &mut Vec<Event>) -> io::Result<()> {
        for idx in std::mem::take(&mut self.rearm) {
            self.arm_recv(idx);
        }
        let accept_due = match self.accept_after {
            Some(t) => std::time::Instant::now() >= t,
            None => true,
        };
        if !self.accept_armed && accept_due {
            self.accept_after = None;
            self.arm_accept();
        }
        if !self.wake_armed {
            self.arm_wake();
        }
        let res = if timeout.is_zero() {
            let sq = self.ring.submission();
            // Nothing to submit, no deferred completions to run, no overflow: the
            // completion queue in shared memory is all there is to see, so a busy-polling
            // loop reads it without entering the kernel.
            if sq.is_empty() && !sq.taskrun() && !sq.cq_overflow() {
                drop(sq);
                Ok(0)
            } else {
                drop(sq);
                self.ring.submit()
            }
        } else {
            let ts = types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        for cqe in self.ring.completion() {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        let cqes = std::mem::take(&mut self.cqes);
        for &(ud, res, flags) in &cqes {
            self.complete(ud, res, flags, events);
        }
        self.cqes = cqes;
        Ok(())
    }
}

impl Drop for Uring {
    /// Shuts every connection down and waits (briefly) for every operation that refers to
    /// a buffer of ours to complete before the buffers are freed.
    fn drop(&mut self) {
        if !self.started {
            return; // nothing was ever submitted
        }
        for idx in 0..self.conns.len() {
            self.close(idx);
        }
        let mut events = Vec::new();
        for _ in 0..200 {
            if self.conns.iter().all(Option::is_none) {
                break;
            }
            if self.wait(Duration::from_millis(5), &mut events).is_err() {
                break;
            }
            for ev in events.drain(..) {
                if let Event::Received { buf, .. } = ev {
                    self.bufs.recycle(buf);
                }
            }
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        if self.conns.iter().any(Option::is_some) {
            // Operations still in flight could write into the buffers: keep them mapped.
            tracing::warn!("io_uring operations outlived the reactor; leaking its buffers");
            std::mem::forget(std::mem::replace(
                &mut self.bufs.buffers,
                Mapping {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> UringConfig {
        UringConfig {
            entries: 64,
            sqpoll_idle: None,
            buf_count: 8,
            buf_size: 4096,
        }
    }

    #[test]
    fn deferred_completions_where_the_kernel_has_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let waker = crate::sys::eventfd().unwrap();
        match Uring::new(listener, waker, config()) {
            Ok(mut uring) => {
                // DEFER_TASKRUN arrived in 6.1.
                if kernel_version().is_some_and(|v| v >= (6, 1)) {
                    assert_eq!(uring.mode, Mode::Deferred);
                }
                uring.start().unwrap();
                let mut events = Vec::new();
                uring.wait(Duration::ZERO, &mut events).unwrap();
            }
            Err(e) => eprintln!("io_uring unavailable here: {e}"),
        }
        // SAFETY: `waker` is the eventfd made above, closed once.
        let _ = syscall!(close(waker));
    }
}
