//! Echo round trip and small-frame ingress throughput over loopback, side by side:
//! peregrine on mio, peregrine on io_uring, and an equivalent tokio server.
//!
//! ```text
//! cargo bench -p peregrine-reactor --bench echo            # full (about a minute)
//! cargo bench -p peregrine-reactor --bench echo -- --quick # or PEREGRINE_BENCH_QUICK=1
//! ```
//!
//! Knobs: `PEREGRINE_BENCH_RATE` (frames/s), `PEREGRINE_BENCH_WAIT=blocking|phased|yielding`
//! (the rings' wait strategy), `PEREGRINE_BENCH_CLIENT=spin|sleep` (the load generator, see
//! below), `PEREGRINE_BENCH_BUSY_POLL_US` (the `+busy-poll` rows),
//! `PEREGRINE_BENCH_ONLY=peregrine-mio,peregrine-io_uring` (a subset; tokio and the floor
//! always run).
//!
//! - **Echo latency.** One connection carrying 16-byte frames at a fixed rate, each with
//!   its *intended* send time; `arrival - intended` goes into an HDR histogram. A client
//!   that falls behind keeps the schedule, so stalls are charged in full (no coordinated
//!   omission). The default client is one thread polling a non-blocking socket for its
//!   send times and for replies; `PEREGRINE_BENCH_CLIENT=sleep` uses a sender thread that
//!   sleeps until each send time and a receiver blocked in `read`, whose own wake-ups
//!   (about 37 µs at the median on the 2-core VM) then count in every round trip. The
//!   client's send lag is printed per server. The floor row is a thread polling the
//!   accepted socket and writing each read straight back.
//!   peregrine: reactor -> ingress ring -> `echo` stage, which writes the response to the
//!   socket itself while the connection is idle (direct egress; otherwise egress ring ->
//!   reactor). The `-inline` rows: the echo runs on the event loop's own thread
//!   (`Reactor::spawn_inline`), its responses leaving with the loop's next writes.
//!   tokio: a current-thread runtime, one task per connection reading a frame and writing
//!   it back (no hop to another thread).
//! - **Ingress throughput.** Two connections blast 16-byte frames as fast as they can;
//!   the figure is frames per second that reach a consumer on another thread.
//!   peregrine: decoded straight into ring slots, counted by a stage. tokio: each frame
//!   copied into a `Vec` and sent over a bounded `tokio::sync::mpsc` channel to a thread.
//!
//! Every figure is also given as a ratio against tokio measured in the same run.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peregrine_reactor::{
    BackendChoice, BackendKind, Backlog, Config, Egress, Frame, Inline, Reactor, ReactorHandle,
};
use peregrine_ring::{single_producer, PollState, Poller, Single, WaitStrategy};

const PAYLOAD: usize = 16;
const RING: usize = 4096;

/// The wait strategy of the bench rings: `PEREGRINE_BENCH_WAIT=phased|yielding|blocking`
/// (default blocking: on a 2-core machine spinning stages steal the loop's core).
fn strategy() -> WaitStrategy {
    match std::env::var("PEREGRINE_BENCH_WAIT").as_deref() {
        Ok("phased") => WaitStrategy::phased(),
        Ok("yielding") => WaitStrategy::yielding(),
        _ => WaitStrategy::blocking(),
    }
}

struct Settings {
    rate: u64,
    latency_secs: f64,
    warmup_secs: f64,
    throughput_secs: f64,
    rounds: usize,
}

/// A server under test; dropping it stops it.
trait Server {
    fn addr(&self) -> SocketAddr;
    /// Frames that reached the consumer (ingress servers).
    fn consumed(&self) -> u64;
}

struct Peregrine {
    handle: Option<ReactorHandle>,
    consumed: Arc<AtomicU64>,
}

impl Server for Peregrine {
    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().unwrap().local_addr()
    }
    fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
}

impl Drop for Peregrine {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().unwrap();
        }
    }
}

/// The busy-poll budget of the `+busy-poll` rows: the loop keeps polling this long
/// after activity instead of sleeping (costs CPU; see `Config::busy_poll`).
/// `PEREGRINE_BENCH_BUSY_POLL_US` overrides it.
fn busy_poll() -> Duration {
    std::env::var("PEREGRINE_BENCH_BUSY_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_micros(20), Duration::from_micros)
}

fn peregrine_config(backend: BackendChoice, busy_poll: Option<Duration>) -> Config {
    Config {
        backend,
        busy_poll,
        // Slots sized for the bench's small frames (each slot preallocates this much).
        max_frame: 256,
        idle_timeout: None,
        ..Config::with_addr("127.0.0.1:0".parse().unwrap())
    }
}

fn check_backend(handle: &ReactorHandle, want: BackendKind) {
    if handle.backend() != want {
        eprintln!(
            "note: asked for {want}, running on {} ({})",
            handle.backend(),
            handle.fallback_reason().unwrap_or("forced")
        );
    }
}

fn peregrine_echo(
    backend: BackendChoice,
    want: BackendKind,
    busy_poll: Option<Duration>,
) -> Box<dyn Server> {
    let config = peregrine_config(backend, busy_poll);
    let max = config.max_frame;
    let reactor = Reactor::bind(config).unwrap();
    let mut out = single_producer(RING, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(strategy());
    let id = out.poller("egress").add().unwrap();
    let (out_producer, mut out_ring) = out.build().unwrap();
    let poller = out_ring.take_poller(id).unwrap();
    let mut egress = reactor.egress(out_producer);
    let mut ingress = single_producer(RING, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(strategy());
    ingress
        .stage("echo", move |f: &Frame, _: u64, _: bool| {
            let _ = egress.publish(|o| o.set(f.conn, &f.payload));
        })
        .add()
        .unwrap();
    let (in_producer, _) = ingress.build().unwrap();
    let handle = reactor.spawn(in_producer, Some(poller)).unwrap();
    check_backend(&handle, want);
    Box::new(Peregrine {
        handle: Some(handle),
        consumed: Arc::new(AtomicU64::new(0)),
    })
}

/// Echoes from the event loop's own thread ([`Reactor::spawn_inline`]): no stage
/// thread, no hand-off. Responses the egress ring has no room for wait in a [`Backlog`].
struct InlineEcho {
    frames: Poller<Frame, Single>,
    egress: Egress<Frame, Single>,
    backlog: Backlog<Frame>,
}

impl Inline for InlineEcho {
    fn turn(&mut self) -> bool {
        if self.backlog.flush(&mut self.egress) == Ok(false) {
            return true;
        }
        let (egress, backlog) = (&mut self.egress, &mut self.backlog);
        let state = self.frames.poll(|f, _, _| {
            let _ = backlog.send(egress, |o| o.set(f.conn, &f.payload));
        });
        matches!(state, PollState::Events(_))
    }
}

/// The busy-poll budget of the `-inline+spin` rows: long enough that the loop never sleeps
/// between requests while traffic flows (it holds one core).
const SPIN: Duration = Duration::from_secs(1);

fn peregrine_inline_echo(
    backend: BackendChoice,
    want: BackendKind,
    busy_poll: Option<Duration>,
) -> Box<dyn Server> {
    let config = Config {
        // Responses made on the loop's thread leave with its writes, one send per turn.
        direct_egress: false,
        ..peregrine_config(backend, busy_poll)
    };
    let max = config.max_frame;
    let reactor = Reactor::bind(config).unwrap();
    let mut out = single_producer(RING, move || Frame::with_capacity(max)).unwrap();
    let out_id = out.poller("egress").add().unwrap();
    let (out_producer, mut out_ring) = out.build().unwrap();
    let egress_poller = out_ring.take_poller(out_id).unwrap();
    let mut ingress = single_producer(RING, move || Frame::with_capacity(max)).unwrap();
    let in_id = ingress.poller("echo").add().unwrap();
    let (in_producer, mut in_ring) = ingress.build().unwrap();
    let echo = InlineEcho {
        frames: in_ring.take_poller(in_id).unwrap(),
        egress: reactor.egress(out_producer),
        backlog: Backlog::default(),
    };
    let handle = reactor
        .spawn_inline(in_producer, Some(egress_poller), echo)
        .unwrap();
    check_backend(&handle, want);
    Box::new(Peregrine {
        handle: Some(handle),
        consumed: Arc::new(AtomicU64::new(0)),
    })
}

fn peregrine_ingress(backend: BackendChoice, want: BackendKind) -> Box<dyn Server> {
    let config = peregrine_config(backend, None);
    let max = config.max_frame;
    let reactor = Reactor::bind(config).unwrap();
    let consumed = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&consumed);
    let mut seen = 0u64;
    let mut ingress = single_producer(RING, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(strategy());
    ingress
        .stage("count", move |f: &Frame, _: u64, end: bool| {
            std::hint::black_box(f.payload.len());
            seen += 1;
            if end {
                count.store(seen, Ordering::Relaxed);
            }
        })
        .add()
        .unwrap();
    let (in_producer, _) = ingress.build().unwrap();
    let handle = reactor
        .spawn(in_producer, None::<Poller<Frame, Single>>)
        .unwrap();
    check_backend(&handle, want);
    Box::new(Peregrine {
        handle: Some(handle),
        consumed,
    })
}

struct Tokio {
    addr: SocketAddr,
    consumed: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server for Tokio {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
}

impl Drop for Tokio {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// What a tokio server does with each frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TokioMode {
    /// Writes it back from the connection's task (no other thread involved).
    Echo,
    /// Hands it to a logic thread over a channel, which hands it back over another to
    /// the connection's writer task: the same two hops as the peregrine pipeline.
    Pipeline,
    /// Hands it to a consumer thread over a bounded channel (ingress).
    Ingress,
}

type Reply = tokio::sync::mpsc::UnboundedSender<Vec<u8>>;

/// The floor: a plain thread that accepts a connection, then polls its non-blocking
/// socket and writes each read straight back (no framing, no ring, no event loop). No
/// server on this machine answers sooner; it holds one core while a connection is open.
struct Floor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server for Floor {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn consumed(&self) -> u64 {
        0
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn floor_server() -> Box<dyn Server> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !flag.load(Ordering::Relaxed) {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                Err(e) => panic!("floor accept failed: {e}"),
            };
            stream.set_nodelay(true).unwrap();
            stream.set_nonblocking(true).unwrap();
            'conn: while !flag.load(Ordering::Relaxed) {
                let n = match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Err(_) => break,
                };
                let mut at = 0;
                while at < n {
                    match stream.write(&buf[at..n]) {
                        Ok(k) => at += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::hint::spin_loop();
                        }
                        Err(_) => break 'conn,
                    }
                }
            }
        }
    });
    Box::new(Floor {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// A tokio server on a current-thread runtime, in one of the [`TokioMode`]s.
fn tokio_server(mode: TokioMode) -> Box<dyn Server> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let consumed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let count = Arc::clone(&consumed);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, Option<Reply>)>(RING);
            let consumer = std::thread::spawn(move || {
                let mut seen = 0u64;
                while let Some((frame, reply)) = rx.blocking_recv() {
                    seen += 1;
                    count.store(seen, Ordering::Relaxed);
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(frame);
                        }
                        None => {
                            std::hint::black_box(frame.len());
                        }
                    }
                }
            });
            let accept = async {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let (r, w) = stream.into_split();
                        let mut w = Some(w);
                        let mut r = tokio::io::BufReader::with_capacity(64 * 1024, r);
                        let reply = (mode == TokioMode::Pipeline).then(|| {
                            let mut w = w.take().expect("the write half");
                            let (reply, mut replies) =
                                tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
                            tokio::spawn(async move {
                                let mut out = Vec::with_capacity(64 * 1024);
                                while let Some(payload) = replies.recv().await {
                                    out.clear();
                                    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                                    out.extend_from_slice(&payload);
                                    if w.write_all(&out).await.is_err() {
                                        return;
                                    }
                                }
                            });
                            reply
                        });
                        let mut w = w.filter(|_| mode == TokioMode::Echo);
                        let mut buf = Vec::with_capacity(64 * 1024);
                        let mut out = Vec::with_capacity(64 * 1024);
                        loop {
                            let mut header = [0u8; 4];
                            if r.read_exact(&mut header).await.is_err() {
                                return;
                            }
                            let len = u32::from_le_bytes(header) as usize;
                            if len == 0 || len > 64 * 1024 {
                                return;
                            }
                            buf.resize(len, 0);
                            if r.read_exact(&mut buf).await.is_err() {
                                return;
                            }
                            if let Some(w) = w.as_mut() {
                                out.clear();
                                out.extend_from_slice(&header);
                                out.extend_from_slice(&buf);
                                if w.write_all(&out).await.is_err() {
                                    return;
                                }
                            } else if tx.send((buf.clone(), reply.clone())).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stop_rx => {}
            }
            drop(tx);
            // Connection tasks hold senders; the runtime drops them at shutdown, which
            // ends the consumer thread (detached here).
            let _ = consumer;
        });
    });
    let addr = addr_rx.recv().unwrap();
    Box::new(Tokio {
        addr,
        consumed,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Lets this thread's sleeps end within microseconds instead of the default 50 µs slack.
fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (nanoseconds) and affects only
    // the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// The echo load generator: `PEREGRINE_BENCH_CLIENT=spin` (default) or `sleep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// One thread on a non-blocking socket that polls for its next send time and for
    /// replies: it holds one core, and adds no wake-up of its own to a round trip.
    Spin,
    /// A sender thread that sleeps until each send time and a receiver thread blocked in
    /// `read`: both wake-ups (tens of microseconds in a VM) count in every round trip.
    Sleep,
}

fn client() -> Client {
    match std::env::var("PEREGRINE_BENCH_CLIENT").as_deref() {
        Ok("sleep") => Client::Sleep,
        _ => Client::Spin,
    }
}

/// One echo round: the round-trip histogram and the client's own send lag (how late
/// after its intended time each frame left), both in nanoseconds.
struct EchoRound {
    rtt: Histogram<u64>,
    lag: Histogram<u64>,
}

fn echo_latency(addr: SocketAddr, s: &Settings) -> EchoRound {
    match client() {
        Client::Spin => echo_latency_spinning(addr, s),
        Client::Sleep => echo_latency_sleeping(addr, s),
    }
}

/// Bytes of one echo frame: the length prefix and the payload.
const FRAME: usize = 4 + PAYLOAD;

/// Fixed-rate echo from one polling thread. A frame is sent as soon as its intended time
/// has come (several at once if the thread fell behind), replies are read as they arrive,
/// and each round trip is charged from the intended send time.
fn echo_latency_spinning(addr: SocketAddr, s: &Settings) -> EchoRound {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_nonblocking(true).unwrap();
    let total = ((s.warmup_secs + s.latency_secs) * s.rate as f64) as u64;
    let warmup = (s.warmup_secs * s.rate as f64) as u64;
    let interval = 1_000_000_000 / s.rate;
    let epoch = Instant::now() + Duration::from_millis(20);
    let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut lag = rtt.clone();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut inbuf = vec![0u8; 64 * 1024];
    let (mut have, mut sent, mut received) = (0usize, 0u64, 0u64);
    let deadline = epoch + Duration::from_secs_f64(s.warmup_secs + s.latency_secs + 30.0);
    while Instant::now() < epoch {
        std::hint::spin_loop();
    }
    while received < total {
        let now = nanos_since(epoch);
        while sent < total && sent * interval <= now {
            let intended = sent * interval;
            out.extend_from_slice(&(PAYLOAD as u32).to_le_bytes());
            out.extend_from_slice(&sent.to_le_bytes());
            out.extend_from_slice(&intended.to_le_bytes());
            if sent >= warmup {
                lag.record(now.saturating_sub(intended).max(1)).unwrap();
            }
            sent += 1;
        }
        if !out.is_empty() {
            match stream.write(&out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("echo send failed: {e}"),
            }
        }
        match stream.read(&mut inbuf[have..]) {
            Ok(0) => panic!("the server closed the echo connection"),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("echo receive failed: {e}"),
        }
        let arrived = nanos_since(epoch);
        let mut at = 0;
        while have - at >= FRAME {
            let frame = &inbuf[at..at + FRAME];
            let seq = u64::from_le_bytes(frame[4..12].try_into().unwrap());
            assert_eq!(seq, received, "echo out of order");
            let intended = u64::from_le_bytes(frame[12..20].try_into().unwrap());
            if seq >= warmup {
                rtt.record(arrived.saturating_sub(intended).max(1)).unwrap();
            }
            received += 1;
            at += FRAME;
        }
        inbuf.copy_within(at..have, 0);
        have -= at;
        assert!(Instant::now() < deadline, "echo replies stopped coming");
        std::hint::spin_loop();
    }
    EchoRound { rtt, lag }
}

/// Fixed-rate echo from a sleeping sender and a blocked receiver.
fn echo_latency_sleeping(addr: SocketAddr, s: &Settings) -> EchoRound {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let total = ((s.warmup_secs + s.latency_secs) * s.rate as f64) as u64;
    let warmup = (s.warmup_secs * s.rate as f64) as u64;
    let interval = Duration::from_nanos(1_000_000_000 / s.rate);
    let epoch = Instant::now() + Duration::from_millis(20);
    let sender = std::thread::spawn(move || {
        tight_timer_slack();
        let mut frame = [0u8; FRAME];
        frame[..4].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
        let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for seq in 0..total {
            let intended = epoch + interval * seq as u32;
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let intended_ns = (intended - epoch).as_nanos() as u64;
            if seq >= warmup {
                let late = nanos_since(epoch).saturating_sub(intended_ns);
                lag.record(late.max(1)).unwrap();
            }
            frame[4..12].copy_from_slice(&seq.to_le_bytes());
            frame[12..20].copy_from_slice(&intended_ns.to_le_bytes());
            writer.write_all(&frame).unwrap();
        }
        lag
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut frame = [0u8; FRAME];
    for expect in 0..total {
        reader.read_exact(&mut frame).unwrap();
        let now = if Instant::now() > epoch {
            nanos_since(epoch)
        } else {
            0
        };
        let seq = u64::from_le_bytes(frame[4..12].try_into().unwrap());
        assert_eq!(seq, expect, "echo out of order");
        let intended = u64::from_le_bytes(frame[12..20].try_into().unwrap());
        if seq >= warmup {
            hist.record(now.saturating_sub(intended).max(1)).unwrap();
        }
    }
    let lag = sender.join().unwrap();
    EchoRound { rtt: hist, lag }
}

/// Two connections blasting small frames; returns frames per second consumed.
fn ingress_throughput(server: &dyn Server, s: &Settings) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut chunk = Vec::new();
    while chunk.len() < 64 * 1024 {
        chunk.extend_from_slice(&(PAYLOAD as u32).to_le_bytes());
        chunk.extend_from_slice(&[0xab; PAYLOAD]);
    }
    let chunk = Arc::new(chunk);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            let stop = Arc::clone(&stop);
            let chunk = Arc::clone(&chunk);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(s.warmup_secs));
    let (c0, t0) = (server.consumed(), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(s.throughput_secs));
    let (c1, t1) = (server.consumed(), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// The floor row's name (see [`floor_server`]).
const FLOOR: &str = "floor: polling std echo thread";

struct Row {
    name: &'static str,
    hist: Histogram<u64>,
    /// The client's send lag during this server's rounds.
    lag: Histogram<u64>,
    /// Each round's p50, for the median over rounds (robust to a disturbed round).
    p50s: Vec<u64>,
    ingress: f64,
}

impl Row {
    fn median_p50(&self) -> u64 {
        let mut v = self.p50s.clone();
        v.sort_unstable();
        v[v.len() / 2]
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// Echo send rate: `PEREGRINE_BENCH_RATE` frames per second (default 10 000).
fn rate() -> u64 {
    std::env::var("PEREGRINE_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("PEREGRINE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let s = if quick {
        Settings {
            rate: rate(),
            latency_secs: 1.0,
            warmup_secs: 0.25,
            throughput_secs: 0.75,
            rounds: 3,
        }
    } else {
        Settings {
            rate: rate(),
            latency_secs: 2.0,
            warmup_secs: 0.5,
            throughput_secs: 1.0,
            rounds: 6,
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# reactor echo bench ({} mode): {cores} cores, {} B payload, echo at {} frames/s on one connection, {} rounds of {} s echo and {} s ingress (two connections) per server",
        if quick { "quick" } else { "full" },
        PAYLOAD,
        s.rate,
        s.rounds,
        s.latency_secs,
        s.throughput_secs
    );
    type Make = fn() -> Box<dyn Server>;
    let servers: [(&'static str, Make, Option<Make>); 11] = [
        (
            "tokio",
            || tokio_server(TokioMode::Echo),
            Some(|| tokio_server(TokioMode::Ingress)),
        ),
        (FLOOR, floor_server, None),
        ("tokio-pipeline", || tokio_server(TokioMode::Pipeline), None),
        (
            "peregrine-mio",
            || peregrine_echo(BackendChoice::Mio, BackendKind::Mio, None),
            Some(|| peregrine_ingress(BackendChoice::Mio, BackendKind::Mio)),
        ),
        (
            "peregrine-io_uring",
            || peregrine_echo(BackendChoice::IoUring, BackendKind::IoUring, None),
            Some(|| peregrine_ingress(BackendChoice::IoUring, BackendKind::IoUring)),
        ),
        (
            "peregrine-mio-inline",
            || peregrine_inline_echo(BackendChoice::Mio, BackendKind::Mio, None),
            None,
        ),
        (
            "peregrine-io_uring-inline",
            || peregrine_inline_echo(BackendChoice::IoUring, BackendKind::IoUring, None),
            None,
        ),
        (
            "peregrine-mio-inline+spin",
            || peregrine_inline_echo(BackendChoice::Mio, BackendKind::Mio, Some(SPIN)),
            None,
        ),
        (
            "peregrine-io_uring-inline+spin",
            || peregrine_inline_echo(BackendChoice::IoUring, BackendKind::IoUring, Some(SPIN)),
            None,
        ),
        (
            "peregrine-mio+busy-poll",
            || peregrine_echo(BackendChoice::Mio, BackendKind::Mio, Some(busy_poll())),
            None,
        ),
        (
            "peregrine-io_uring+busy-poll",
            || {
                peregrine_echo(
                    BackendChoice::IoUring,
                    BackendKind::IoUring,
                    Some(busy_poll()),
                )
            },
            None,
        ),
    ];
    // `PEREGRINE_BENCH_ONLY=name,name`: run only these servers (tokio, the base of every
    // ratio, always runs).
    let only = std::env::var("PEREGRINE_BENCH_ONLY").ok();
    let servers: Vec<_> = servers
        .into_iter()
        .filter(|(name, _, _)| {
            *name == "tokio"
                || *name == FLOOR
                || only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|n| n == *name))
        })
        .collect();
    // Rounds, each server in turn: on a shared, noisy machine, load that comes and goes
    // then spreads over every server instead of landing on one.
    let mut rows: Vec<Row> = servers
        .iter()
        .map(|(name, _, _)| Row {
            name,
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
            lag: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
            p50s: Vec::new(),
            ingress: 0.0,
        })
        .collect();
    for round in 0..s.rounds {
        for (row, (name, echo, ingress)) in rows.iter_mut().zip(&servers) {
            let server = echo();
            let EchoRound { rtt: hist, lag } = echo_latency(server.addr(), &s);
            drop(server);
            let rate = match ingress {
                Some(make) => {
                    let server = make();
                    let rate = ingress_throughput(server.as_ref(), &s);
                    drop(server);
                    rate
                }
                None => 0.0,
            };
            eprintln!(
                "round {round} {name}: p50 {} µs, ingress {:.2} M frames/s",
                us(hist.value_at_quantile(0.5)),
                rate / 1e6
            );
            row.hist.add(&hist).unwrap();
            row.lag.add(&lag).unwrap();
            row.p50s.push(hist.value_at_quantile(0.5));
            row.ingress += rate / s.rounds as f64;
        }
    }
    let floor_p50 = rows
        .iter()
        .find(|r| r.name == FLOOR)
        .map_or(f64::NAN, |r| r.hist.value_at_quantile(0.5) as f64);
    let base_p50 = rows[0].hist.value_at_quantile(0.5) as f64;
    let base_median = rows[0].median_p50() as f64;
    let base_in = rows[0].ingress;
    println!();
    println!("Echo round trip at a fixed rate, from the intended send time (all rounds merged), and ingress throughput:");
    println!();
    println!("| server | p50 µs | p99 µs | p99.9 µs | p99.99 µs | max µs | p50 vs tokio | median of round p50s µs | vs tokio | p50 vs floor | client send lag p50 / p99 µs | ingress frames/s | ingress vs tokio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let h = &r.hist;
        let (ingress, ratio) = if r.ingress > 0.0 {
            (
                format!("{:.0}", r.ingress),
                format!("{:.2}x", r.ingress / base_in),
            )
        } else {
            ("-".to_string(), "-".to_string())
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2}x | {} | {:.2}x | {:.2}x | {} / {} | {} | {} |",
            r.name,
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.value_at_quantile(0.9999)),
            us(h.max()),
            h.value_at_quantile(0.5) as f64 / base_p50,
            us(r.median_p50()),
            r.median_p50() as f64 / base_median,
            h.value_at_quantile(0.5) as f64 / floor_p50,
            us(r.lag.value_at_quantile(0.5)),
            us(r.lag.value_at_quantile(0.99)),
            ingress,
            ratio,
        );
    }
    println!();
    println!("Targets: echo p50 <= 0.8x tokio; ingress >= 1.5x tokio; io_uring >= mio.");
    match client() {
        Client::Spin => println!("Client: one thread polling a non-blocking socket for its send times and replies (PEREGRINE_BENCH_CLIENT=spin); it holds one core."),
        Client::Sleep => println!("Client: a sender thread sleeping until each send time and a receiver thread blocked in read (PEREGRINE_BENCH_CLIENT=sleep); their wake-ups count in every round trip."),
    }
    println!("{FLOOR}: a thread polling the accepted socket and writing each read straight back; no server here answers sooner. Client send lag: how late after its intended time the client sent (charged to the round trip).");
    println!("tokio-pipeline hands each frame to a logic thread and back (the same two hops as peregrine); its ingress is tokio's.");
    println!("-inline: the echo runs on the event loop's own thread (Reactor::spawn_inline), no stage thread; echo only.");
    println!("+busy-poll: the loop polls for {} µs after activity before sleeping (Config::busy_poll); echo only.", busy_poll().as_micros());
    println!("-inline+spin: inline, and the loop polls for {} s after activity (Config::busy_poll), so it never sleeps between requests: it holds one core; echo only.", SPIN.as_secs());
}
