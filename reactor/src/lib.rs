//! A network event loop that feeds a peregrine ring: TCP in, frames decoded straight into
//! ring slots, responses from another ring written back out.
//!
//! # A tour
//!
//! An echo server: the reactor decodes length-prefixed frames into the ingress ring; a
//! `logic` stage copies each into the egress ring; the reactor writes them back.
//!
//! ```
//! use std::io::{Read, Write};
//! use peregrine_reactor::{Config, Frame, LengthPrefixed, Reactor};
//! use peregrine_ring::{single_producer, WaitStrategy};
//!
//! let config = Config::with_addr("127.0.0.1:0".parse()?);
//! let max = config.max_frame;
//! let reactor = Reactor::bind(config)?;
//!
//! // Egress: the loop polls it and writes each frame to `frame.conn`.
//! let mut out = single_producer(1024, move || Frame::with_capacity(max))?
//!     .wait_strategy(WaitStrategy::blocking());
//! let poller = out.poller("egress").add()?;
//! let (out_producer, mut out_ring) = out.build()?;
//! let egress_poller = out_ring.take_poller(poller).expect("added above");
//! let mut egress = reactor.egress(out_producer);
//!
//! // Ingress: the loop publishes each decoded frame; `logic` answers it.
//! let mut ingress = single_producer(1024, move || Frame::with_capacity(max))?
//!     .wait_strategy(WaitStrategy::blocking());
//! ingress
//!     .stage("logic", move |f: &Frame, _seq: u64, _end: bool| {
//!         egress.publish(|o| o.set(f.conn, &f.payload)).expect("egress ring runs");
//!     })
//!     .add()?;
//! let (in_producer, _in_ring) = ingress.build()?;
//!
//! let handle = reactor.spawn(in_producer, Some(egress_poller))?;
//! println!("serving on {} with {}", handle.local_addr(), handle.backend());
//!
//! let mut client = std::net::TcpStream::connect(handle.local_addr())?;
//! let mut request = Vec::new();
//! LengthPrefixed::write_frame(b"hello", &mut request);
//! client.write_all(&request)?;
//! let mut reply = [0u8; 9];
//! client.read_exact(&mut reply)?;
//! assert_eq!(reply, request[..]);
//! handle.shutdown()?; // closes connections, drops the ingress producer: `logic` drains
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Topology
//!
//! ```text
//!   sockets --> [reactor thread] --decode--> ingress ring --> stages (logic, journal..)
//!      ^                                                            |
//!      +------- [reactor thread] <--poll--- egress ring <--publish--+  (Egress wakes it)
//!      ^                                                            |
//!      +------------------ send(2) on the stage's thread -----------+  (idle connection)
//! ```
//!
//! One loop per thread ([`Reactor::spawn`] or [`Reactor::run`] on a thread you own; pin it
//! with [`Config::pin`]). Each loop has its own listener, connections, ingress producer and
//! egress poller; run several loops with several rings for more cores.
//!
//! ## Backends
//!
//! | backend | how | notes |
//! |---|---|---|
//! | [`BackendKind::IoUring`] | completions: multishot accept, multishot receive into a ring of provided buffers, batched submission, optional SQPOLL ([`Config::sqpoll_idle`]) | Linux 6.0+; the default when the kernel allows it |
//! | [`BackendKind::Mio`] | readiness: edge-triggered epoll, reads straight into the connection's buffer | portable fallback |
//!
//! The backend is chosen at runtime. When io_uring cannot be set up (old kernel, seccomp,
//! `io_uring_disabled`), the loop logs a warning, falls back to mio, and says so through
//! [`Reactor::backend`] and [`Reactor::fallback_reason`]. [`Config::backend`] or the
//! environment variable `PEREGRINE_REACTOR_BACKEND=mio` forces mio.
//!
//! ## Framing
//!
//! [`LengthPrefixed`] (a `u32` little-endian length, then the payload) into [`Frame`]
//! slots is the default; implement [`Codec`] for another framing or slot type. A frame is
//! decoded only once it is complete, directly into a claimed ring slot: no queue and no
//! allocation per frame when the slots are preallocated.
//!
//! ## Back-pressure and limits
//!
//! - When the ingress ring is full, the connection whose frame did not fit stops being
//!   read; its socket buffer fills and TCP pushes back on the client. The loop resumes it
//!   (in order, nothing dropped) as soon as the ring has room.
//! - A connection whose responses pile up ([`Config::write_high_water`]) stops being read
//!   until its client reads; past [`Config::write_limit`] it is closed.
//! - [`Config::max_connections`], [`Config::max_frame`], [`Config::rate_limit`] (token
//!   bucket, throttle or close), [`Config::idle_timeout`] (half-open peers) and
//!   [`Config::frame_timeout`] (slow clients). A bad frame closes only its connection;
//!   every close is counted by [`CloseReason`] in [`StatsSnapshot`].
//! - The default address is loopback (`127.0.0.1:7070`).
//!
//! ## Latency and CPU
//!
//! The loop sleeps in its kernel wait (epoll or `io_uring_enter`) when idle; an
//! [`Egress`] publish wakes it through an eventfd only while it sleeps (one fence and one
//! load otherwise; see [`LoopWaker`]). An [`Egress`] made by [`Reactor::egress`] skips
//! the way back when it can: if the loop holds nothing for the response's connection, it
//! writes the response to the socket itself (one non-blocking `send(2)` on the stage's
//! thread), and only a busy connection or a socket that would block goes through the
//! egress ring and the loop, in order ([`Config::direct_egress`], [`Codec::egress_encoder`]).
//! That leaves one hand-off per request (loop -> stage), a wake-up of a sleeping thread
//! with blocking ring strategies. Where cores allow it, [`Config::busy_poll`] keeps the loop polling
//! for a while after activity, and a spinning or phased ring strategy keeps the stages
//! awake, trading CPU for those wake-ups.

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

#[macro_use]
pub(crate) mod sys;
mod codec;
mod config;
mod direct;
mod error;
mod reactor;
mod stats;
mod sync;
mod waker;

/// The direct-egress protocol's internals, exposed only to the loom models of
/// `tests/loom_direct.rs` (built with `RUSTFLAGS="--cfg loom"`); not part of the API.
#[cfg(loom)]
#[doc(hidden)]
pub mod model {
    pub use crate::direct::{Direct, Table, BUSY, OPEN, SPILL, WRITING};
    pub use crate::waker::SleepFlag;
}

pub use codec::{Codec, ConnId, Frame, FrameError, LengthPrefixed, HEADER_LEN};
pub use config::{BackendChoice, Config, RateAction, RateLimit, BACKEND_ENV};
pub use error::ReactorError;
pub use reactor::{BackendKind, Inline, Reactor, ReactorHandle, Stopper};
pub use stats::{CloseReason, StatsSnapshot};
pub use waker::{Backlog, Egress, LoopWaker, WRITTEN_DIRECTLY};
