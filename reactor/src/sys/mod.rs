//! The I/O backends: what each owns and the contract each meets.
//!
//! The event loop ([`crate::Reactor`]) owns the protocol: connection table, framing, limits,
//! back-pressure and egress buffering. A backend owns only the sockets and the kernel
//! interface, and speaks to the loop through [`Event`]s. Both backends meet this contract:
//!
//! 1. **Accept.** Every connection the kernel accepts on the listener is reported once as
//!    [`Event::Accepted`], already non-blocking. The loop either adopts it
//!    ([`Backend::adopt`], giving it a connection index) or drops it (which closes it).
//! 2. **Receive.** For an adopted connection whose reading is enabled, bytes are reported
//!    in order, either as [`Event::Readable`] (readiness: the loop then calls
//!    [`Backend::read`] until it would block or reports [`ReadOutcome::Drained`]: a short
//!    read with no end of stream pending, after which the next bytes raise a new
//!    `Readable`) or as [`Event::Received`] (completion: the
//!    bytes sit in a provided buffer that the loop copies with [`Backend::received`], which
//!    hands the buffer back to the kernel). End of stream is [`Event::Eof`]; a socket error
//!    is [`Event::Failed`]. Nothing is reported for an index after it is released.
//! 3. **Pause.** [`Backend::set_reading`]`(idx, false)` stops asking the kernel for bytes,
//!    so the socket's receive buffer fills and TCP flow control pushes back on the peer.
//!    A completion backend may still report bytes that were already in flight; the loop
//!    buffers them. `set_reading(idx, true)` resumes; a readiness backend then reports
//!    [`Event::Readable`] at once so that bytes that arrived while paused are not
//!    stranded (edge-triggered readiness would not report them again).
//! 4. **Send.** [`Backend::send`] takes the connection's pending bytes (it may take all of
//!    them, or leave what the socket did not accept) and reports [`Event::Sent`] when the
//!    connection can take more; bytes of one connection go out in the order given.
//! 5. **Close.** [`Backend::close`] shuts the socket down. It returns `true` when the
//!    index is free at once; otherwise [`Event::Released`] follows once no kernel operation
//!    refers to the connection's buffers any more.
//! 6. **Wait.** [`Backend::wait`] submits queued work and blocks for at most the timeout
//!    (zero: never blocks) until at least one event is ready; a write to the loop's
//!    [`Waker`](crate::LoopWaker) eventfd ends the wait with [`Event::Wake`].
//!
//! Every raw libc call goes through one `syscall!` macro (defined here), which turns `-1` into
//! `io::Error::last_os_error()`.

use std::io;
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::time::Duration;

/// Calls a libc function, turning a `-1` return into `io::Error::last_os_error()`.
///
/// The call is `unsafe`: each use site states why its arguments are valid.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: the caller of `syscall!` upholds the function's contract (valid fds and
        // pointers to live buffers of the stated length); see each use site.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

pub(crate) mod epoll;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// What a backend reports to the loop (see the module docs for the contract).
#[derive(Debug)]
pub(crate) enum Event {
    /// A new connection from the listener.
    Accepted(TcpStream),
    /// Readiness: connection `idx` may have bytes; call [`Backend::read`].
    Readable(usize),
    /// Completion: `len` bytes for connection `idx` in provided buffer `buf`.
    Received { idx: usize, buf: u16, len: usize },
    /// The peer closed its side.
    Eof(usize),
    /// A socket error on connection `idx`.
    Failed(usize, io::Error),
    /// Connection `idx` can take more bytes (a send finished or the socket became writable).
    Sent(usize),
    /// Connection `idx` is closed and its index may be reused.
    Released(usize),
    /// The loop's waker was written.
    Wake,
}

/// The outcome of one [`Backend::read`].
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// This many bytes were appended; there may be more.
    Data(usize),
    /// This many bytes were appended and the socket had no more.
    Drained(usize),
    /// Nothing more now.
    WouldBlock,
    /// End of stream.
    Eof,
    /// A socket error.
    Failed(io::Error),
}

/// The two backends, chosen at runtime.
#[derive(Debug)]
pub(crate) enum Backend {
    Epoll(epoll::Epoll),
    #[cfg(target_os = "linux")]
    Uring(Box<uring::Uring>),
}

macro_rules! dispatch {
    ($self: ident, $b: ident => $e: expr) => {
        match $self {
            Backend::Epoll($b) => $e,
            #[cfg(target_os = "linux")]
            Backend::Uring($b) => $e,
        }
    };
}

impl Backend {
    pub(crate) fn kind(&self) -> crate::BackendKind {
        match self {
            Backend::Epoll(_) => crate::BackendKind::Mio,
            #[cfg(target_os = "linux")]
            Backend::Uring(_) => crate::BackendKind::IoUring,
        }
    }

    /// Prepares the backend on the loop's own thread, before the first wait.
    pub(crate) fn start(&mut self) -> io::Result<()> {
        match self {
            Backend::Epoll(_) => Ok(()),
            #[cfg(target_os = "linux")]
            Backend::Uring(b) => b.start(),
        }
    }

    pub(crate) fn adopt(&mut self, idx: usize, stream: TcpStream) -> io::Result<()> {
        dispatch!(self, b => b.adopt(idx, stream))
    }

    pub(crate) fn read(&mut self, idx: usize, into: &mut Vec<u8>, max: usize) -> ReadOutcome {
        match self {
            Backend::Epoll(b) => b.read(idx, into, max),
            #[cfg(target_os = "linux")]
            Backend::Uring(_) => ReadOutcome::WouldBlock,
        }
    }

    /// Copies a provided buffer into `into` (or only recycles it when `into` is `None`).
    pub(crate) fn received(&mut self, buf: u16, len: usize, into: Option<&mut Vec<u8>>) {
        match self {
            Backend::Epoll(_) => {}
            #[cfg(target_os = "linux")]
            Backend::Uring(b) => b.received(buf, len, into),
        }
    }

    pub(crate) fn set_reading(&mut self, idx: usize, on: bool, events: &mut Vec<Event>) {
        dispatch!(self, b => b.set_reading(idx, on, events))
    }

    pub(crate) fn send(&mut self, idx: usize, pending: &mut Vec<u8>, events: &mut Vec<Event>) {
        dispatch!(self, b => b.send(idx, pending, events))
    }

    /// Whether no send of connection `idx` is in flight in the kernel (a readiness backend
    /// sends synchronously: always).
    pub(crate) fn send_idle(&self, idx: usize) -> bool {
        match self {
            Backend::Epoll(_) => true,
            #[cfg(target_os = "linux")]
            Backend::Uring(b) => b.send_idle(idx),
        }
    }

    pub(crate) fn close(&mut self, idx: usize) -> bool {
        dispatch!(self, b => b.close(idx))
    }

    pub(crate) fn wait(&mut self, timeout: Duration, events: &mut Vec<Event>) -> io::Result<()> {
        dispatch!(self, b => b.wait(timeout, events))
    }
}

/// Creates a non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<RawFd> {
    syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
}

/// Adds one to an eventfd's counter (wakes whoever waits on it).
pub(crate) fn eventfd_write(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // The counter saturating (EAGAIN) still leaves the fd readable, which is all a wake needs.
    match syscall!(write(fd, (&one as *const u64).cast(), 8)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resets an eventfd's counter.
pub(crate) fn eventfd_read(fd: RawFd) {
    let mut value: u64 = 0;
    // Nothing to read (EAGAIN) means someone else already reset it.
    let _ = syscall!(read(fd, (&mut value as *mut u64).cast(), 8));
}
