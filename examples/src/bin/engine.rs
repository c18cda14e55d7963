//! The order-matching engine: an LMAX-style exchange core on peregrine, and the main job.
//!
//! ```text
//!  clients --TCP--> [reactor] --> input ring --+--> journal --+--> logic (order books) --> output ring --> [reactor] --TCP--> clients
//!                                              +--> decode ---+
//! ```
//!
//! Run with no arguments: starts the engine and a load generator on built-in defaults,
//! runs for a few seconds, prints throughput and latency percentiles, stops, rebuilds the
//! books from the journal, and checks that the rebuilt books equal the ones before (by
//! hash). `--serve` runs the engine until SIGINT/SIGTERM; `--recover-only` prints what
//! recovery rebuilds from a directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use peregrine::journal::{Appender, Config as JournalConfig};
use peregrine::journaled::{recover, JournalStage, Recovered, Snapshot, SnapshotStore};
use peregrine::metrics::Metrics;
use peregrine::placement::{place, StageNeed, Topology};
use peregrine::reactor::{Codec, Config as ReactorConfig, ConnId, Egress, FrameError, Reactor};
use peregrine::ring::{
    single_producer, BoxError, EventHandler, Single, StageBuilder, WaitStrategy,
};
use peregrine::signals::ShutdownSignal;
use peregrine_examples::book::{random_commands, Command, Exchange, Reject, Report, COMMAND_LEN};

#[derive(Parser, Debug)]
#[command(name = "engine", about = "An order-matching engine on peregrine")]
struct Args {
    /// Directory for the journal and snapshots (default: a fresh temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Instruments traded.
    #[arg(long, default_value_t = 8)]
    instruments: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Orders per second offered by the load generator (all connections together).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Client connections of the load generator.
    #[arg(long, default_value_t = 2)]
    connections: u64,
    /// Take a snapshot every this many commands (0: never).
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// Run the engine until SIGINT/SIGTERM, printing `listening on ADDR` first.
    #[arg(long)]
    serve: bool,
    /// Only rebuild the books from `--dir` and print `recovered next_sequence N hash H`.
    #[arg(long)]
    recover_only: bool,
    /// Serve Prometheus metrics on this loopback address (with `--serve`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

/// The decoded command, written by `decode` while `journal` reads the raw bytes of the
/// same slot: atomics (plain moves on x86 with Relaxed) rather than `&mut`, so the two
/// stages can share the slot. `logic` reads them after acquiring `decode`'s sequence.
#[derive(Debug, Default)]
struct Decoded {
    valid: AtomicBool,
    kind: AtomicU8,
    side: AtomicU8,
    instrument: AtomicU32,
    order: AtomicU64,
    price: AtomicU64,
    quantity: AtomicU64,
}

impl Decoded {
    fn store(&self, decoded: Result<Command, u64>) {
        let r = Ordering::Relaxed;
        match decoded {
            Ok(Command::New {
                instrument,
                order,
                side,
                price,
                quantity,
            }) => {
                self.kind.store(1, r);
                self.instrument.store(instrument, r);
                self.order.store(order, r);
                self.side.store(side as u8, r);
                self.price.store(price, r);
                self.quantity.store(quantity, r);
                self.valid.store(true, r);
            }
            Ok(Command::Cancel { instrument, order }) => {
                self.kind.store(2, r);
                self.instrument.store(instrument, r);
                self.order.store(order, r);
                self.valid.store(true, r);
            }
            Err(order) => {
                self.order.store(order, r);
                self.valid.store(false, r);
            }
        }
    }

    fn load(&self) -> Result<Command, u64> {
        let r = Ordering::Relaxed;
        let (instrument, order) = (self.instrument.load(r), self.order.load(r));
        if !self.valid.load(r) {
            return Err(order);
        }
        Ok(match self.kind.load(r) {
            1 => Command::New {
                instrument,
                order,
                side: if self.side.load(r) == peregrine_examples::book::Side::Buy as u8 {
                    peregrine_examples::book::Side::Buy
                } else {
                    peregrine_examples::book::Side::Sell
                },
                price: self.price.load(r),
                quantity: self.quantity.load(r),
            },
            _ => Command::Cancel { instrument, order },
        })
    }
}

/// An input slot: the raw command as received, and its decoded form.
#[derive(Debug)]
struct OrderIn {
    conn: ConnId,
    /// When the reactor decoded the frame (nanoseconds since the engine's epoch).
    received: u64,
    len: usize,
    raw: [u8; MAX_PAYLOAD],
    decoded: Decoded,
}

impl Default for OrderIn {
    fn default() -> Self {
        Self {
            conn: ConnId::NONE,
            received: 0,
            len: 0,
            raw: [0; MAX_PAYLOAD],
            decoded: Decoded::default(),
        }
    }
}

/// An output slot: every report of one command, encoded, for one connection.
#[derive(Debug, Default)]
struct ReportsOut {
    conn: ConnId,
    bytes: Vec<u8>,
}

const MAX_PAYLOAD: usize = 64;
const HEADER: usize = 4;

/// Length-prefixed framing (u32 LE) into [`OrderIn`] slots; replies are length-prefixed
/// runs of 33-byte reports.
#[derive(Debug)]
struct OrderCodec {
    epoch: Instant,
}

impl Codec for OrderCodec {
    type In = OrderIn;
    type Out = ReportsOut;

    fn frame_len(&mut self, buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
        let Some(h) = buf.get(..HEADER) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(FrameError::Malformed("zero-length frame"));
        }
        let total = HEADER + len;
        if total > max_frame {
            return Err(FrameError::Oversized {
                len: total,
                max: max_frame,
            });
        }
        Ok((buf.len() >= total).then_some(total))
    }

    fn decode(&mut self, conn: ConnId, frame: &[u8], slot: &mut OrderIn) {
        let payload = &frame[HEADER..];
        slot.conn = conn;
        slot.received = self.epoch.elapsed().as_nanos() as u64;
        slot.len = payload.len().min(MAX_PAYLOAD);
        slot.raw[..slot.len].copy_from_slice(&payload[..slot.len]);
    }

    fn destination(&self, event: &ReportsOut) -> ConnId {
        event.conn
    }

    fn encode(&mut self, event: &ReportsOut, out: &mut Vec<u8>) {
        out.extend_from_slice(&(event.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&event.bytes);
    }
}

/// The books, as a snapshot.
struct Books(Exchange);

impl Snapshot for Books {
    fn save(&self, out: &mut Vec<u8>) {
        self.0.save(out)
    }
    fn load(bytes: &[u8]) -> Result<Self, BoxError> {
        Exchange::load(bytes)
            .map(Books)
            .ok_or_else(|| "not a snapshot of the books".into())
    }
}

/// The single-threaded business logic: applies each command to the books and sends the
/// reports back.
struct Logic {
    books: Exchange,
    egress: Egress<ReportsOut, Single>,
    reports: Vec<Report>,
    snapshots: SnapshotStore,
    snapshot_every: u64,
    /// Journal sequence of ring sequence 0 (the journal continues across restarts).
    base: u64,
    done: mpsc::Sender<Exchange>,
    epoch: Instant,
    latency: peregrine::metrics::LatencyRecorder,
}

impl EventHandler<OrderIn> for Logic {
    fn on_event(&mut self, e: &OrderIn, sequence: u64, _end_of_batch: bool) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.latency.record_nanos(now.saturating_sub(e.received));
        self.reports.clear();
        match e.decoded.load() {
            Ok(command) => self.books.apply(&command, &mut self.reports),
            Err(order) => self.reports.push(Report::Rejected {
                order,
                reason: Reject::Malformed,
            }),
        }
        let reports = &self.reports;
        // The egress ring halts only at shutdown, when no one is waiting for replies.
        let _ = self.egress.publish(|out| {
            out.conn = e.conn;
            out.bytes.clear();
            for r in reports {
                r.encode(&mut out.bytes);
            }
        });
        let applied = self.base + sequence + 1;
        if self.snapshot_every > 0 && applied % self.snapshot_every == 0 {
            if let Err(err) = self.snapshots.save(applied, &BooksRef(&self.books)) {
                eprintln!("engine: snapshot at {applied} failed: {err}");
            }
        }
    }

    fn on_shutdown(&mut self) {
        let books = std::mem::replace(&mut self.books, Exchange::new(0));
        let _ = self.done.send(books);
    }
}

/// Saves borrowed books (snapshots are taken on the logic thread without copying).
struct BooksRef<'a>(&'a Exchange);

impl Snapshot for BooksRef<'_> {
    fn save(&self, out: &mut Vec<u8>) {
        self.0.save(out)
    }
    fn load(_: &[u8]) -> Result<Self, BoxError> {
        Err("load snapshots as Books".into())
    }
}

/// Applies one journaled command during recovery (rejected commands change nothing).
fn replay(books: &mut Books, _sequence: u64, payload: &[u8]) {
    if let Ok(command) = Command::decode(payload) {
        let mut sink = Vec::new();
        books.0.apply(&command, &mut sink);
    }
}

fn recover_books(dir: &Path, instruments: u32) -> Result<Recovered<Books>, BoxError> {
    let snapshots = SnapshotStore::open(dir.join("snapshots"))?;
    Ok(recover(
        &dir.join("journal"),
        &snapshots,
        || Books(Exchange::new(instruments)),
        replay,
    )?)
}

/// A running engine.
struct Engine {
    reactor: peregrine::reactor::ReactorHandle,
    books: mpsc::Receiver<Exchange>,
    metrics: Metrics,
    addr: SocketAddr,
}

fn start(
    dir: &Path,
    listen: SocketAddr,
    instruments: u32,
    snapshot_every: u64,
) -> Result<Engine, BoxError> {
    let recovered = recover_books(dir, instruments)?;
    println!(
        "engine: recovered {} resting orders (snapshot {:?}, {} journal records replayed); next sequence {}",
        recovered.state.0.resting_orders(),
        recovered.snapshot,
        recovered.replayed,
        recovered.next_sequence
    );
    let (appender, _) = Appender::open(
        dir.join("journal"),
        JournalConfig::default()
            .segment_size(16 << 20)
            .pretouch(true),
    )?;
    // One core per thread where the machine has them, dependent stages sharing a cache;
    // on a small machine the rest are left to the scheduler (nothing here busy-spins).
    let topology = Topology::detect()?;
    let need = |name: &str, after: &[usize]| StageNeed {
        name: name.into(),
        after: after.to_vec(),
        busy: false,
        core: None,
    };
    let plan = place(
        &topology,
        &[
            need("reactor", &[]),
            need("journal", &[0]),
            need("decode", &[0]),
            need("logic", &[1, 2]),
        ],
        false,
    )?;
    println!("engine: placement reactor/journal/decode/logic on cores {plan:?}");
    let epoch = Instant::now();
    let mut config = ReactorConfig::with_addr(listen);
    config.max_frame = HEADER + MAX_PAYLOAD;
    config.pin = plan[0];
    let reactor = Reactor::with_codec(config, OrderCodec { epoch })?;
    let addr = reactor.local_addr();

    let mut out = single_producer(4096, ReportsOut::default)?.wait_strategy(WaitStrategy::phased());
    let egress_id = out.poller("egress").add()?;
    let (out_producer, mut out_ring) = out.build()?;
    let egress_poller = out_ring.take_poller(egress_id).expect("added above");

    let mut input = single_producer(4096, OrderIn::default)?.wait_strategy(WaitStrategy::phased());
    fn pinned(
        b: StageBuilder<'_, OrderIn, Single>,
        core: Option<usize>,
    ) -> StageBuilder<'_, OrderIn, Single> {
        match core {
            Some(c) => b.pin(c),
            None => b,
        }
    }
    let journal = pinned(
        input.try_stage(
            "journal",
            JournalStage::new(appender, |e: &OrderIn, out: &mut Vec<u8>| {
                out.extend_from_slice(&e.raw[..e.len])
            }),
        ),
        plan[1],
    )
    .add()?;
    let decode = pinned(
        input.stage("decode", |e: &OrderIn, _: u64, _: bool| {
            e.decoded.store(Command::decode(&e.raw[..e.len]))
        }),
        plan[2],
    )
    .add()?;
    let (done, books) = mpsc::channel();
    let metrics = Metrics::new();
    let logic = Logic {
        books: recovered.state.0,
        egress: reactor.egress(out_producer),
        reports: Vec::with_capacity(64),
        snapshots: SnapshotStore::open(dir.join("snapshots"))?,
        snapshot_every,
        base: recovered.next_sequence,
        done,
        epoch,
        latency: metrics.latency("ingress_to_logic"),
    };
    pinned(
        input.stage("logic", logic).after(&[journal, decode]),
        plan[3],
    )
    .add()?;
    let (in_producer, in_ring) = input.build()?;
    let (in_ring, out_ring) = (Arc::new(in_ring), Arc::new(out_ring));
    let r = Arc::clone(&in_ring);
    metrics.watch_ring("input", move || r.telemetry());
    let r = Arc::clone(&out_ring);
    metrics.watch_ring("output", move || r.telemetry());
    let reactor = reactor.spawn(in_producer, Some(egress_poller))?;
    Ok(Engine {
        reactor,
        books,
        metrics,
        addr,
    })
}

impl Engine {
    /// Stops the network, drains the pipeline, and returns the final books.
    fn stop(self) -> Result<(Exchange, Metrics), BoxError> {
        self.reactor.shutdown()?;
        let books = self.books.recv_timeout(Duration::from_secs(30))?;
        Ok((books, self.metrics))
    }
}

/// Load generator results.
struct Load {
    sent: u64,
    answered: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// Sends random commands at a fixed rate on `connections` connections and times each
/// reply from the command's intended send time (so a stalled engine cannot hide its
/// stall: no coordinated omission).
fn load(
    addr: SocketAddr,
    connections: u64,
    rate: u64,
    seconds: u64,
    instruments: u32,
) -> Result<Load, BoxError> {
    let per_conn = (rate / connections).max(1);
    let interval = Duration::from_nanos(1_000_000_000 / per_conn);
    let count = (per_conn * seconds) as usize;
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
                    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
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
                    let mut frame = Vec::with_capacity(HEADER + COMMAND_LEN);
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

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("engine: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), BoxError> {
    let temporary = args.dir.is_none();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("peregrine-engine-{}", std::process::id()))
    });
    if args.recover_only {
        let r = recover_books(&dir, args.instruments)?;
        println!(
            "recovered next_sequence {} hash {:016x}",
            r.next_sequence,
            r.state.0.book_hash()
        );
        return Ok(());
    }
    if args.serve {
        let signal = ShutdownSignal::install()?;
        let engine = start(&dir, args.listen, args.instruments, args.snapshot_every)?;
        let server = match args.metrics {
            Some(addr) => Some(engine.metrics.serve(addr)?),
            None => None,
        };
        if let Some(s) = &server {
            println!("metrics on http://{}/metrics", s.local_addr());
        }
        println!("listening on {}", engine.addr);
        std::io::stdout().flush()?;
        while !signal.wait_timeout(Duration::from_millis(200)) {}
        drop(server);
        let (books, metrics) = engine.stop()?;
        println!("{}", metrics.summary());
        println!("final hash {:016x}", books.book_hash());
        return Ok(());
    }

    // The main job.
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let engine = start(&dir, args.listen, args.instruments, args.snapshot_every)?;
    println!(
        "engine: listening on {}; offering {} orders/s on {} connection(s) for {} s",
        engine.addr, args.rate, args.connections, args.seconds
    );
    let result = load(
        engine.addr,
        args.connections,
        args.rate,
        args.seconds,
        args.instruments,
    )?;
    let (books, metrics) = engine.stop()?;
    let us = |q: f64| result.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "load: {} commands sent, {} answered in {:.2} s: {:.0} commands/s",
        result.sent,
        result.answered,
        result.elapsed.as_secs_f64(),
        result.answered as f64 / result.elapsed.as_secs_f64()
    );
    println!(
        "round trip from intended send time: p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  p99.99 {:.1} us  max {:.1} us",
        us(0.5),
        us(0.99),
        us(0.999),
        us(0.9999),
        result.latency.max() as f64 / 1000.0
    );
    print!("{}", metrics.summary());
    let before = books.book_hash();
    let started = Instant::now();
    let recovered = recover_books(&dir, args.instruments)?;
    let after = recovered.state.0.book_hash();
    println!(
        "restart: rebuilt {} resting orders from the journal ({} records, snapshot {:?}) in {:.1} ms",
        recovered.state.0.resting_orders(),
        recovered.replayed,
        recovered.snapshot,
        started.elapsed().as_secs_f64() * 1000.0
    );
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if before != after || result.answered != result.sent {
        return Err(format!(
            "recovered books differ or replies are missing: hash before {before:016x}, after {after:016x}; {} of {} answered",
            result.answered, result.sent
        )
        .into());
    }
    println!("recovered books match: hash {after:016x}");
    Ok(())
}
