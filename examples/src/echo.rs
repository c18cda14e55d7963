//! The echo server on the reactor: every length-prefixed frame a client sends comes back
//! to it, through the whole pipeline.
//!
//! ```text
//! client -> reactor -> ingress ring -> "echo" stage -> egress ring -> reactor -> client
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peregrine_reactor::{Config, Frame, LengthPrefixed, Reactor, ReactorError, ReactorHandle};
use peregrine_ring::{single_producer, BuildError, WaitStrategy};

/// Ring capacity of both rings.
pub const RING: usize = 4096;

/// Why the echo server could not start.
#[derive(Debug)]
pub enum EchoError {
    /// The reactor could not bind or start.
    Reactor(ReactorError),
    /// A ring could not be built.
    Ring(BuildError),
}

impl std::fmt::Display for EchoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EchoError::Reactor(e) => write!(f, "{e}"),
            EchoError::Ring(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EchoError {}

impl From<ReactorError> for EchoError {
    fn from(e: ReactorError) -> Self {
        EchoError::Reactor(e)
    }
}

impl From<BuildError> for EchoError {
    fn from(e: BuildError) -> Self {
        EchoError::Ring(e)
    }
}

/// Starts the echo server; it runs until the handle is shut down or dropped.
///
/// # Errors
///
/// [`EchoError`] if the address cannot be bound or a ring cannot be built.
pub fn spawn(config: Config) -> Result<ReactorHandle, EchoError> {
    let max = config.max_frame;
    let reactor = Reactor::bind(config)?;
    let mut out = single_producer(RING, move || Frame::with_capacity(max))?
        .wait_strategy(WaitStrategy::blocking());
    let id = out.poller("egress").add()?;
    let (out_producer, mut out_ring) = out.build()?;
    let poller = out_ring.take_poller(id).expect("the poller added above");
    let mut egress = reactor.egress(out_producer);
    let mut ingress = single_producer(RING, move || Frame::with_capacity(max))?
        .wait_strategy(WaitStrategy::phased());
    ingress
        .stage("echo", move |f: &Frame, _seq: u64, _end: bool| {
            // Fails only once the loop has stopped; nothing is left to answer then.
            let _ = egress.publish(|o| o.set(f.conn, &f.payload));
        })
        .add()?;
    let (in_producer, _in_ring) = ingress.build()?;
    Ok(reactor.spawn(in_producer, Some(poller))?)
}

/// Connects `clients` clients to `addr`, each sending `frames` frames and checking every
/// echo (content and order). Returns the frames echoed and the time taken.
///
/// # Errors
///
/// Any socket error, or `InvalidData` when an echo does not match what was sent.
pub fn check(
    addr: SocketAddr,
    clients: usize,
    frames: usize,
) -> std::io::Result<(usize, Duration)> {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || -> std::io::Result<usize> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut wire = Vec::new();
                let mut header = [0u8; 4];
                let mut got = Vec::new();
                for i in 0..frames {
                    let payload = format!("client {c} says {i}");
                    wire.clear();
                    LengthPrefixed::write_frame(payload.as_bytes(), &mut wire);
                    s.write_all(&wire)?;
                    s.read_exact(&mut header)?;
                    got.resize(u32::from_le_bytes(header) as usize, 0);
                    s.read_exact(&mut got)?;
                    if got != payload.as_bytes() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("client {c} frame {i}: echo does not match"),
                        ));
                    }
                }
                Ok(frames)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().expect("client thread")?;
    }
    Ok((total, start.elapsed()))
}
