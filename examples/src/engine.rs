//! The order-matching engine as a library: the business logic ([`Books`]) on the
//! [`Pipeline`], and the fixed-rate load generator ([`load`]) that times each reply from
//! its intended send time. The `engine` binary and the engine benchmark both use them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peregrine::journal::Config as JournalConfig;
use peregrine::journaled::Snapshot;
use peregrine::pipeline::{Logic, Pipeline, Reply};
use peregrine::ring::BoxError;

use crate::book::{random_commands, Command, Exchange, Reject, Report, COMMAND_LEN};

/// Largest command payload accepted (a command is `COMMAND_LEN` bytes).
pub const MAX_PAYLOAD: usize = 64;

/// A command as the decode stage leaves it: decoded, or the order id of a malformed one
/// (0 when even that is unreadable).
#[derive(Debug)]
pub struct Order(pub Result<Command, u64>);

impl Default for Order {
    fn default() -> Self {
        Order(Err(0))
    }
}

/// The business logic: the books of every instrument. Reports of one command go back as
/// one frame (a run of encoded reports).
#[derive(Debug)]
pub struct Books {
    /// The books.
    pub exchange: Exchange,
    reports: Vec<Report>,
}

impl Books {
    /// Empty books for `instruments` instruments.
    pub fn new(instruments: u32) -> Self {
        Books {
            exchange: Exchange::new(instruments),
            reports: Vec::with_capacity(64),
        }
    }
}

impl Snapshot for Books {
    fn save(&self, out: &mut Vec<u8>) {
        self.exchange.save(out)
    }
    fn load(bytes: &[u8]) -> Result<Self, BoxError> {
        let exchange = Exchange::load(bytes).ok_or("not a snapshot of the books")?;
        Ok(Books {
            exchange,
            reports: Vec::with_capacity(64),
        })
    }
}

impl Logic for Books {
    type Command = Order;

    fn decode(payload: &[u8]) -> Order {
        Order(Command::decode(payload))
    }

    fn apply(&mut self, command: &Order, reply: &mut Reply<'_>) {
        if reply.is_replay() {
            // Answered before the restart: only the books matter.
            if let Ok(command) = &command.0 {
                self.exchange.apply_with(command, |_| {});
            }
            return;
        }
        self.reports.clear();
        match &command.0 {
            Ok(command) => self.exchange.apply(command, &mut self.reports),
            Err(order) => self.reports.push(Report::Rejected {
                order: *order,
                reason: Reject::Malformed,
            }),
        }
        let reports = &self.reports;
        reply.send(|out| reports.iter().for_each(|r| r.encode(out)));
    }
}

/// The engine on the LMAX pipeline: reactor -> journal || decode -> logic -> reactor,
/// keeping its journal and snapshots in `dir`.
pub fn pipeline(dir: &Path, listen: SocketAddr, snapshot_every: u64) -> Pipeline {
    Pipeline::new(dir)
        .listen(listen)
        .max_payload(MAX_PAYLOAD)
        .journal(
            JournalConfig::default()
                .segment_size(16 << 20)
                .pretouch(true),
        )
        .snapshot_every(snapshot_every)
}

/// Load generator results.
#[derive(Debug)]
pub struct Load {
    /// Commands sent.
    pub sent: u64,
    /// Replies received.
    pub answered: u64,
    /// From the first intended send to the last reply.
    pub elapsed: Duration,
    /// Round trips in nanoseconds, from each command's intended send time.
    pub latency: Histogram<u64>,
}

/// The load generators' schedule: `count` commands on each of `connections` connections,
/// `interval` nanoseconds apart, together `rate` a second for `duration`.
struct Schedule {
    connections: u64,
    interval: u64,
    count: usize,
}

impl Schedule {
    fn new(connections: u64, rate: u64, duration: Duration) -> Schedule {
        let connections = connections.max(1);
        let per_conn = (rate / connections).max(1);
        Schedule {
            connections,
            interval: 1_000_000_000 / per_conn,
            count: ((per_conn as u128 * duration.as_nanos()) / 1_000_000_000).max(1) as usize,
        }
    }
}

/// Sends random commands at a fixed rate on `connections` connections and times each
/// reply from the command's intended send time (so a stalled engine cannot hide its
/// stall: no coordinated omission).
///
/// Any server that answers each length-prefixed frame with one length-prefixed frame, in
/// order, can be measured this way (the engine, or a bare echo server as a floor).
///
/// # Errors
///
/// A connection fails, or a reply does not come within 10 seconds.
pub fn load(
    addr: SocketAddr,
    connections: u64,
    rate: u64,
    duration: Duration,
    instruments: u32,
) -> Result<Load, BoxError> {
    let Schedule {
        connections,
        interval,
        count,
    } = Schedule::new(connections, rate, duration);
    let interval = Duration::from_nanos(interval);
    let start = Instant::now() + Duration::from_millis(50);
    let mut threads = Vec::new();
    for c in 0..connections {
        let commands = random_commands(0xC0FFEE + c, count, instruments, (c + 1) << 40);
        threads.push(
            std::thread::Builder::new()
                .name(format!("load-{c}"))
                .spawn(move || -> Result<(u64, Histogram<u64>), String> {
                    let stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                    stream.set_nodelay(true).map_err(|e| e.to_string())?;
                    let reader = stream.try_clone().map_err(|e| e.to_string())?;
                    let receiver =
                        std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                                .expect("bounds");
                            let mut header = [0u8; 4];
                            let mut body = vec![0u8; 1 << 16];
                            let mut answered = 0u64;
                            reader
                                .set_read_timeout(Some(Duration::from_secs(10)))
                                .map_err(|e| e.to_string())?;
                            // Replies arrive in runs: take each run in one read.
                            let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
                            while (answered as usize) < count {
                                reader
                                    .read_exact(&mut header)
                                    .map_err(|e| format!("reply {answered}: {e}"))?;
                                let len = u32::from_le_bytes(header) as usize;
                                if len > body.len() {
                                    body.resize(len, 0);
                                }
                                reader
                                    .read_exact(&mut body[..len])
                                    .map_err(|e| e.to_string())?;
                                // Replies come back in command order on a connection.
                                let intended = start + interval * answered as u32;
                                h.saturating_record(intended.elapsed().as_nanos() as u64);
                                answered += 1;
                            }
                            Ok((answered, h))
                        });
                    let mut writer = stream;
                    let mut frame = Vec::with_capacity(4 + COMMAND_LEN);
                    for (i, command) in commands.iter().enumerate() {
                        let intended = start + interval * i as u32;
                        while Instant::now() < intended {
                            std::thread::sleep(
                                Duration::from_micros(20).min(intended - Instant::now()),
                            );
                        }
                        frame.clear();
                        frame.extend_from_slice(&(COMMAND_LEN as u32).to_le_bytes());
                        frame.extend_from_slice(&command.encode());
                        writer.write_all(&frame).map_err(|e| e.to_string())?;
                    }
                    receiver
                        .join()
                        .map_err(|_| "receiver panicked".to_string())?
                })?,
        );
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut answered = 0;
    for t in threads {
        let (n, h) = t.join().map_err(|_| "load thread panicked")??;
        answered += n;
        latency.add(&h)?;
    }
    Ok(Load {
        sent: count as u64 * connections,
        answered,
        elapsed: start.elapsed(),
        latency,
    })
}

/// [`load`] from one thread that polls non-blocking sockets for its send times and for
/// replies, instead of a sleeping sender and a blocked receiver per connection. It holds
/// one core while it runs (the last core the process may use, where it pins itself when
/// there are two or more, so that it stays off the first, where the engine's event loop
/// is placed), and adds no wake-up of its own to a round trip: a sleeping sender on a VM
/// can wake tens of microseconds late, and that lateness is charged to the server under
/// test. Same schedule, commands and accounting as [`load`].
///
/// # Errors
///
/// A connection fails, or no reply comes for 10 seconds.
pub fn load_polling(
    addr: SocketAddr,
    connections: u64,
    rate: u64,
    duration: Duration,
    instruments: u32,
) -> Result<Load, BoxError> {
    std::thread::Builder::new()
        .name("load".into())
        .spawn(move || {
            let cores = peregrine::ring::affinity::allowed_cores();
            if let (true, Some(&last)) = (cores.len() >= 2, cores.last()) {
                core_affinity::set_for_current(core_affinity::CoreId { id: last });
            }
            poll_load(addr, connections, rate, duration, instruments).map_err(|e| e.to_string())
        })?
        .join()
        .map_err(|_| "the load thread panicked")?
        .map_err(Into::into)
}

fn poll_load(
    addr: SocketAddr,
    connections: u64,
    rate: u64,
    duration: Duration,
    instruments: u32,
) -> Result<Load, BoxError> {
    struct Conn {
        stream: TcpStream,
        commands: Vec<Command>,
        sent: usize,
        answered: usize,
        out: Vec<u8>,
        inbuf: Vec<u8>,
        have: usize,
    }
    let Schedule {
        connections,
        interval,
        count,
    } = Schedule::new(connections, rate, duration);
    let mut conns = Vec::new();
    for c in 0..connections {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        conns.push(Conn {
            stream,
            commands: random_commands(0xC0FFEE + c, count, instruments, (c + 1) << 40),
            sent: 0,
            answered: 0,
            out: Vec::with_capacity(1 << 16),
            inbuf: vec![0u8; 1 << 16],
            have: 0,
        });
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let start = Instant::now() + Duration::from_millis(50);
    while Instant::now() < start {
        std::hint::spin_loop();
    }
    let mut last_progress = Instant::now();
    let mut answered_all = 0usize;
    while answered_all < count * conns.len() {
        let now = start.elapsed().as_nanos() as u64;
        for conn in &mut conns {
            while conn.sent < count && conn.sent as u64 * interval <= now {
                conn.out
                    .extend_from_slice(&(COMMAND_LEN as u32).to_le_bytes());
                conn.out
                    .extend_from_slice(&conn.commands[conn.sent].encode());
                conn.sent += 1;
            }
            if !conn.out.is_empty() {
                match conn.stream.write(&conn.out) {
                    Ok(n) => {
                        conn.out.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if conn.have == conn.inbuf.len() {
                let len = conn.inbuf.len();
                conn.inbuf.resize(len * 2, 0);
            }
            match conn.stream.read(&mut conn.inbuf[conn.have..]) {
                Ok(0) => return Err("the server closed a load connection".into()),
                Ok(n) => conn.have += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            let arrived = start.elapsed().as_nanos() as u64;
            let mut at = 0;
            while conn.have - at >= 4 {
                let len = u32::from_le_bytes(conn.inbuf[at..at + 4].try_into().expect("4 bytes"))
                    as usize;
                if conn.have - at < 4 + len {
                    break;
                }
                // Replies come back in command order on a connection.
                let intended = conn.answered as u64 * interval;
                latency.saturating_record(arrived.saturating_sub(intended));
                conn.answered += 1;
                answered_all += 1;
                last_progress = Instant::now();
                at += 4 + len;
            }
            conn.inbuf.copy_within(at..conn.have, 0);
            conn.have -= at;
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "no reply for 10 s ({answered_all} of {} answered)",
                count * conns.len()
            )
            .into());
        }
        std::hint::spin_loop();
    }
    Ok(Load {
        sent: (count * conns.len()) as u64,
        answered: answered_all as u64,
        elapsed: start.elapsed(),
        latency,
    })
}
