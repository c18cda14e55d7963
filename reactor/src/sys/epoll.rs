//! The readiness backend: mio over epoll, edge-triggered.
//!
//! Owns the listener's and each connection's registration. Reads go straight into the
//! connection's buffer (no intermediate copy); writes go straight from its pending buffer.
//! Pausing a connection only stops reading it: with edge-triggered readiness the kernel's
//! receive buffer then fills and TCP pushes back, and resuming reports the connection as
//! readable at once (see the contract in [`super`]).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Event, ReadOutcome};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// One registered connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    reading: bool,
    /// The peer's end of stream (or an error) was reported: read until `read` says so.
    hup: bool,
}

/// The mio (epoll) backend.
#[derive(Debug)]
pub(crate) struct Epoll {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    waker_fd: RawFd,
    conns: Vec<Option<Conn>>,
    /// The last accept failed for lack of resources (EMFILE, ENFILE, ENOBUFS): retry it on
    /// every wait, since edge-triggered readiness will not report the listener again.
    accept_retry: bool,
}

impl Epoll {
    /// Registers `listener` (already non-blocking) and the waker's eventfd.
    pub(crate) fn new(listener: TcpListener, waker_fd: RawFd) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        poll.registry()
            .register(&mut SourceFd(&waker_fd), WAKER, Interest::READABLE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            listener,
            waker_fd,
            conns: Vec::new(),
            accept_retry: false,
        })
    }

    pub(crate) fn adopt(&mut self, idx: usize, stream: TcpStream) -> io::Result<()> {
        self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if self.conns.len() <= idx {
            self.conns.resize_with(idx + 1, || None);
        }
        self.conns[idx] = Some(Conn {
            stream,
            reading: true,
            hup: false,
        });
        Ok(())
    }

    /// Reads at most `max` bytes into the spare capacity of `into`.
    pub(crate) fn read(&mut self, idx: usize, into: &mut Vec<u8>, max: usize) -> ReadOutcome {
        let Some(conn) = self.conns.get(idx).and_then(Option::as_ref) else {
            return ReadOutcome::WouldBlock;
        };
        into.reserve(max);
        let len = into.len();
        let spare = into.capacity() - len;
        // SAFETY: `into` has `spare` bytes of capacity after its `len` initialised bytes;
        // read(2) writes at most `spare` bytes there and the fd is the live socket.
        let res = syscall!(read(
            conn.stream.as_raw_fd(),
            into.as_mut_ptr().add(len).cast(),
            spare
        ));
        match res {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => {
                // SAFETY: read(2) initialised `n <= spare` bytes after `len`.
                unsafe { into.set_len(len + n as usize) };
                // A short read emptied the socket: edge-triggered readiness reports the
                // next bytes, so there is no need to read again until then.
                if (n as usize) < spare && !conn.hup {
                    ReadOutcome::Drained(n as usize)
                } else {
                    ReadOutcome::Data(n as usize)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadOutcome::Data(0),
            Err(e) => ReadOutcome::Failed(e),
        }
    }

    pub(crate) fn set_reading(&mut self, idx: usize, on: bool, events: &mut Vec<Event>) {
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
            conn.reading = on;
            if on {
                events.push(Event::Readable(idx));
            }
        }
    }

    pub(crate) fn send(&mut self, idx: usize, pending: &mut Vec<u8>, events: &mut Vec<Event>) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            pending.clear();
            return;
        };
        let mut written = 0;
        while written < pending.len() {
            let rest = &pending[written..];
            // SAFETY: `rest` is a live, initialised buffer of `rest.len()` bytes and the fd
            // is the connection's socket. MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
            match syscall!(send(
                conn.stream.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL
            )) {
                Ok(0) => break,
                Ok(n) => written += n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    events.push(Event::Failed(idx, e));
                    break;
                }
            }
        }
        pending.drain(..written);
    }

    pub(crate) fn close(&mut self, idx: usize) -> bool {
        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::take) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        }
        true
    }

    fn accept(&mut self, events: &mut Vec<Event>) {
        self.accept_retry = false;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        let _ = stream.set_nodelay(true);
                        events.push(Event::Accepted(stream));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED) | Some(libc::EPROTO)
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying on the next turn");
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    pub(crate) fn wait(&mut self, timeout: Duration, events: &mut Vec<Event>) -> io::Result<()> {
        let timeout = if self.accept_retry {
            timeout.min(Duration::from_millis(10))
        } else {
            timeout
        };
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut accept = self.accept_retry;
        let mut woken = false;
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKER => woken = true,
                Token(idx) => {
                    if ev.is_writable() {
                        events.push(Event::Sent(idx));
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        if let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                            conn.hup |= ev.is_read_closed() || ev.is_error();
                            if conn.reading {
                                events.push(Event::Readable(idx));
                            }
                        }
                    }
                }
            }
        }
        if woken {
            super::eventfd_read(self.waker_fd);
            events.push(Event::Wake);
        }
        if accept {
            self.accept(events);
        }
        Ok(())
    }
}
