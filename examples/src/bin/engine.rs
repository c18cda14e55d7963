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

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use peregrine::journaled::Recovered;
use peregrine::pipeline::{RecoveryProgress, Running};
use peregrine::ring::BoxError;
use peregrine::signals::ShutdownSignal;
use peregrine_examples::engine::{load, pipeline, Books};

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

fn start(
    dir: &Path,
    listen: SocketAddr,
    instruments: u32,
    snapshot_every: u64,
) -> Result<Running<Books>, BoxError> {
    let running = pipeline(dir, listen, snapshot_every)
        .on_recovery_progress(show_recovery)
        .start(|| Books::new(instruments))?;
    let r = running.recovery();
    println!(
        "engine: recovered (snapshot {:?}, {} journal records replayed in {:.1} ms); next sequence {}",
        r.snapshot,
        r.replayed,
        r.elapsed.as_secs_f64() * 1e3,
        r.next_sequence
    );
    println!(
        "engine: {} backend; {:?} layout; reactor/journal/decode/logic on cores {:?}",
        running.backend(),
        running.layout(),
        running.plan()
    );
    Ok(running)
}

fn recover_books(dir: &Path, instruments: u32) -> Result<Recovered<Books>, BoxError> {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(pipeline(dir, listen, 0)
        .on_recovery_progress(show_recovery)
        .recover(|| Books::new(instruments))?)
}

/// A line on stderr for each report along a replay long enough to get one (a tenth of a
/// second or more); the summary after it comes from the caller.
fn show_recovery(p: &RecoveryProgress) {
    if !p.done {
        eprintln!(
            "engine: recovering: at journal sequence {} of {} ({:.0}%, {} replayed) after {:.1} s",
            p.next_sequence,
            p.end_sequence,
            100.0 * p.next_sequence as f64 / p.end_sequence.max(1) as f64,
            p.replayed,
            p.elapsed.as_secs_f64()
        );
    }
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
        Duration::from_secs(args.seconds),
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
