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
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use peregrine::journal::Config as JournalConfig;
use peregrine::journaled::{Recovered, Snapshot};
use peregrine::pipeline::{Logic, Pipeline, Reply, Running};
use peregrine::ring::BoxError;
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

/// Largest command payload accepted (a command is `COMMAND_LEN` bytes).
const MAX_PAYLOAD: usize = 64;

/// A command as the decode stage leaves it: decoded, or the order id of a malformed one
/// (0 when even that is unreadable).
#[derive(Debug)]
struct Order(Result<Command, u64>);

impl Default for Order {
    fn default() -> Self {
        Order(Err(0))
    }
}

/// The business logic: the books of every instrument. Reports of one command go back as
/// one frame (a run of encoded reports).
struct Books {
    exchange: Exchange,
    reports: Vec<Report>,
}

impl Books {
    fn new(instruments: u32) -> Self {
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

/// The engine on the LMAX pipeline: reactor -> journal || decode -> logic -> reactor.
fn pipeline(dir: &Path, listen: SocketAddr, snapshot_every: u64) -> Pipeline {
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

fn start(
    dir: &Path,
    listen: SocketAddr,
    instruments: u32,
    snapshot_every: u64,
) -> Result<Running<Books>, BoxError> {
    let running = pipeline(dir, listen, snapshot_every).start(|| Books::new(instruments))?;
    let r = running.recovery();
    println!(
        "engine: recovered (snapshot {:?}, {} journal records replayed in {:.1} ms); next sequence {}",
        r.snapshot,
        r.replayed,
        r.elapsed.as_secs_f64() * 1e3,
        r.next_sequence
    );
    println!(
        "engine: {} backend; reactor/journal/decode/logic on cores {:?}",
        running.backend(),
        running.plan()
    );
    Ok(running)
}

fn recover_books(dir: &Path, instruments: u32) -> Result<Recovered<Books>, BoxError> {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(pipeline(dir, listen, 0).recover(|| Books::new(instruments))?)
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
            r.state.exchange.book_hash()
        );
        return Ok(());
    }
    if args.serve {
        let signal = ShutdownSignal::install()?;
        let engine = start(&dir, args.listen, args.instruments, args.snapshot_every)?;
        let server = match args.metrics {
            Some(addr) => Some(engine.metrics().serve(addr)?),
            None => None,
        };
        if let Some(s) = &server {
            println!("metrics on http://{}/metrics", s.local_addr());
        }
        println!("listening on {}", engine.local_addr());
        std::io::stdout().flush()?;
        while !signal.wait_timeout(Duration::from_millis(200)) {}
        drop(server);
        let stopped = engine.stop()?;
        println!("{}", stopped.metrics.summary());
        println!("final hash {:016x}", stopped.state.exchange.book_hash());
        return Ok(());
    }

    // The main job.
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let engine = start(&dir, args.listen, args.instruments, args.snapshot_every)?;
    println!(
        "engine: listening on {}; offering {} orders/s on {} connection(s) for {} s",
        engine.local_addr(),
        args.rate,
        args.connections,
        args.seconds
    );
    let result = load(
        engine.local_addr(),
        args.connections,
        args.rate,
        args.seconds,
        args.instruments,
    )?;
    let stopped = engine.stop()?;
    if let Some((stage, failure)) = &stopped.failure {
        return Err(format!("stage {stage} failed: {failure}").into());
    }
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
    print!("{}", stopped.metrics.summary());
    let before = stopped.state.exchange.book_hash();
    // Restart: a new pipeline over the same directory rebuilds the books from the newest
    // snapshot and the journal before it listens.
    let again = start(&dir, args.listen, args.instruments, args.snapshot_every)?;
    let r = again.recovery();
    let rebuilt = again.stop()?.state.exchange;
    let after = rebuilt.book_hash();
    println!(
        "restart: rebuilt {} resting orders from the journal ({} records after snapshot {:?}) in {:.1} ms",
        rebuilt.resting_orders(),
        r.replayed,
        r.snapshot,
        r.elapsed.as_secs_f64() * 1000.0
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
