//! `peregrine`: inspect journals and run the quick benchmark suite.
//!
//! ```text
//! peregrine journal verify DIR [--progress]   check every record of every segment
//! peregrine journal dump DIR [--from N] [--limit N] [--json]
//! peregrine journal tail DIR [--from N] [--json] [--idle-exit-ms MS]
//! peregrine journal stats DIR [--progress]
//! peregrine bench [--quick]             in-process ring and journal benchmarks
//! ```
//!
//! Errors are one line on stderr and a non-zero exit status. `verify` and `stats` read every
//! segment; they show how far they have got on stderr when it is a terminal (or with
//! `--progress`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use peregrine::journal::{
    verify_with_progress, Appender, Config, Reader, Record, Tailer, VerifyProgress, VerifyReport,
};
use peregrine::ring::{single_producer, WaitStrategy};
use peregrine::signals::ShutdownSignal;

#[derive(Parser)]
#[command(
    name = "peregrine",
    version,
    about = "Inspect peregrine journals and run quick benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Journal tools.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Runs the in-process benchmark suite (ring throughput and round trip, journal appends).
    Bench {
        /// A shorter run (a couple of seconds).
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Checks every record of every segment (CRC, sequence, bounds).
    Verify {
        /// The journal directory.
        dir: PathBuf,
        /// Show progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Prints records, as text or JSON lines.
    Dump {
        /// The journal directory.
        dir: PathBuf,
        /// First sequence to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Follows the journal as records are appended (until Ctrl-C).
    Tail {
        /// The journal directory.
        dir: PathBuf,
        /// First sequence to print (default: the end, only new records).
        #[arg(long)]
        from: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Exit after this many milliseconds without a new record.
        #[arg(long)]
        idle_exit_ms: Option<u64>,
    },
    /// Prints segment and record counts and the sequence range.
    Stats {
        /// The journal directory.
        dir: PathBuf,
        /// Show progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_record(out: &mut impl Write, record: &Record<'_>, json: bool) -> std::io::Result<()> {
    let payload = record.payload();
    if json {
        writeln!(
            out,
            "{{\"sequence\":{},\"length\":{},\"payload_hex\":\"{}\"}}",
            record.sequence(),
            payload.len(),
            hex(payload)
        )
    } else {
        let shown = &payload[..payload.len().min(32)];
        let more = if payload.len() > 32 { "..." } else { "" };
        writeln!(
            out,
            "{:>12}  {:>6} B  {}{more}",
            record.sequence(),
            payload.len(),
            hex(shown)
        )
    }
}

/// A journal directory must exist: tools never create one.
fn existing(dir: &std::path::Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("{}: no such journal directory", dir.display()))
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Journal { command } => match command {
            JournalCommand::Verify { dir, .. }
            | JournalCommand::Stats { dir, .. }
            | JournalCommand::Dump { dir, .. }
            | JournalCommand::Tail { dir, .. }
                if !dir.is_dir() =>
            {
                existing(&dir)?;
            }
            JournalCommand::Verify { dir, progress } => {
                let r = verify_shown(&dir, progress)?;
                writeln!(
                    out,
                    "ok: {} segment(s), {} record(s), {} bytes, sequences {}..{}",
                    r.segments, r.records, r.record_bytes, r.first_sequence, r.next_sequence
                )
                .map_err(|e| e.to_string())?;
            }
            JournalCommand::Stats { dir, progress } => {
                let r = verify_shown(&dir, progress)?;
                let mean = if r.records == 0 {
                    0.0
                } else {
                    r.record_bytes as f64 / r.records as f64
                };
                writeln!(
                    out,
                    "segments: {}\nrecords: {}\nrecord bytes: {}\nmean record bytes: {mean:.1}\nfirst sequence: {}\nnext sequence: {}",
                    r.segments, r.records, r.record_bytes, r.first_sequence, r.next_sequence
                )
                .map_err(|e| e.to_string())?;
            }
            JournalCommand::Dump {
                dir,
                from,
                limit,
                json,
            } => {
                let mut reader = Reader::open(&dir).map_err(|e| e.to_string())?;
                reader.seek(from).map_err(|e| e.to_string())?;
                let mut printed = 0;
                while limit.is_none_or(|l| printed < l) {
                    match reader.next().map_err(|e| e.to_string())? {
                        Some(record) => {
                            print_record(&mut out, &record, json).map_err(|e| e.to_string())?
                        }
                        None => break,
                    }
                    printed += 1;
                }
            }
            JournalCommand::Tail {
                dir,
                from,
                json,
                idle_exit_ms,
            } => {
                let signal = ShutdownSignal::install().map_err(|e| e.to_string())?;
                let mut reader = Reader::open(&dir).map_err(|e| e.to_string())?;
                match from {
                    Some(s) => reader.seek(s).map_err(|e| e.to_string())?,
                    // Only the end of the last segment is read, however long the journal.
                    None => {
                        reader.seek_end().map_err(|e| e.to_string())?;
                    }
                }
                let mut tailer = Tailer::from_reader(reader);
                let mut idle_since = Instant::now();
                while !signal.requested() {
                    match tailer
                        .next_timeout(Duration::from_millis(100))
                        .map_err(|e| e.to_string())?
                    {
                        Some(record) => {
                            print_record(&mut out, &record, json).map_err(|e| e.to_string())?;
                            out.flush().map_err(|e| e.to_string())?;
                            idle_since = Instant::now();
                        }
                        None => {
                            if idle_exit_ms
                                .is_some_and(|ms| idle_since.elapsed() >= Duration::from_millis(ms))
                            {
                                break;
                            }
                        }
                    }
                }
            }
        },
        Command::Bench { quick } => bench(&mut out, quick).map_err(|e| e.to_string())?,
    }
    Ok(())
}

/// [`verify_with_progress`], showing progress on stderr when `forced` or when stderr is a
/// terminal: at most five updates a second, and one after the last segment.
fn verify_shown(dir: &std::path::Path, forced: bool) -> Result<VerifyReport, String> {
    let stderr = std::io::stderr();
    let terminal = stderr.is_terminal();
    let shown = forced || terminal;
    let started = Instant::now();
    let mut last: Option<Instant> = None;
    let result = verify_with_progress(dir, |p: &VerifyProgress| {
        let finished = p.segments_done == p.segments;
        if !shown || (!finished && last.is_some_and(|t| t.elapsed() < Duration::from_millis(200))) {
            return;
        }
        last = Some(Instant::now());
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let line = format!(
            "verified {}/{} segment(s), {} record(s), {:.1} of {:.1} MiB in {:.1} s",
            p.segments_done,
            p.segments,
            p.records,
            mib(p.segment_bytes),
            mib(p.total_segment_bytes),
            started.elapsed().as_secs_f64()
        );
        // A terminal gets one line rewritten in place; a log gets a line per update.
        let mut err = stderr.lock();
        let _ = match (terminal, finished) {
            (true, false) => write!(err, "\r{line}"),
            (true, true) => writeln!(err, "\r{line}"),
            (false, _) => writeln!(err, "{line}"),
        };
    });
    if terminal && last.is_some() && result.is_err() {
        // End the line rewritten in place, so the error starts a line of its own.
        eprintln!();
    }
    result.map_err(|e| e.to_string())
}

/// The in-process quick suite: each figure next to a floor measured in the same run.
fn bench(out: &mut impl Write, quick: bool) -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = if quick { 2_000_000 } else { 20_000_000 };
    let cores = peregrine::ring::affinity::allowed_cores().len();
    let wait = if cores >= 2 {
        WaitStrategy::busy_spin()
    } else {
        WaitStrategy::phased()
    };
    writeln!(
        out,
        "peregrine quick bench: {cores} usable core(s), strategy {wait:?}"
    )?;

    // Ring: one producer, one stage.
    let mut b = single_producer(64 * 1024, || 0u64)?.wait_strategy(wait);
    b.stage("bench-consumer", |e: &u64, _: u64, _: bool| {
        std::hint::black_box(*e);
    })
    .add()?;
    let (mut p, _ring) = b.build()?;
    let start = Instant::now();
    let mut i = 0;
    while i < events {
        p.publish_batch(100, |e, s| *e = s)?;
        i += 100;
    }
    drop(p);
    let ring_rate = events as f64 / start.elapsed().as_secs_f64();

    // Floor: a plain loop writing the same values into a local buffer.
    let mut buf = vec![0u64; 64 * 1024];
    let start = Instant::now();
    for s in 0..events {
        buf[(s & 0xFFFF) as usize] = s;
    }
    std::hint::black_box(&buf);
    let floor = events as f64 / start.elapsed().as_secs_f64();
    writeln!(
        out,
        "ring 1P1C batch-100: {:.1} M events/s ({:.3} of a single-thread store loop at {:.1} M/s)",
        ring_rate / 1e6,
        ring_rate / floor,
        floor / 1e6
    )?;

    // Journal: 64-byte appends, durability none, against memcpy into a Vec.
    let dir = std::env::temp_dir().join(format!("peregrine-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records: u64 = if quick { 200_000 } else { 2_000_000 };
    let (mut appender, _) = Appender::open(&dir, Config::default())?;
    let payload = [7u8; 64];
    let start = Instant::now();
    for _ in 0..records {
        appender.append(&payload)?;
    }
    let journal_rate = records as f64 / start.elapsed().as_secs_f64();
    drop(appender);
    std::fs::remove_dir_all(&dir)?;
    let mut sink = vec![0u8; 64 * 1024 * 1024];
    let start = Instant::now();
    for r in 0..records as usize {
        let at = (r * 64) % (sink.len() - 64);
        sink[at..at + 64].copy_from_slice(&payload);
    }
    std::hint::black_box(&sink);
    let memcpy = records as f64 / start.elapsed().as_secs_f64();
    writeln!(
        out,
        "journal 64 B append: {:.2} M records/s ({:.3} of memcpy into memory at {:.1} M/s)",
        journal_rate / 1e6,
        journal_rate / memcpy,
        memcpy / 1e6
    )?;
    writeln!(
        out,
        "full suite with peers: cargo bench -p peregrine-benches (see BENCHMARKS.md)"
    )?;
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peregrine: {e}");
            ExitCode::FAILURE
        }
    }
}
