//! Rebuilds the order books from an engine's journal directory and reports how fast.
//!
//! ```text
//! replay DIR [--instruments N] [--top]
//! ```
//!
//! Prints the raw journal scan rate (reading every record, nothing else) and the replay
//! rate (decoding and applying every record to the books) measured in the same run, the
//! ratio between them, and the rebuilt books' hash. `DIR` is the engine's `--dir` (its
//! `journal/` subdirectory is read; snapshots are ignored: this replays everything).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use peregrine::journal::Reader;
use peregrine_examples::book::{Command, Exchange, Side};

#[derive(Parser, Debug)]
#[command(name = "replay", about = "Rebuild order books from a journal")]
struct Args {
    /// The engine's directory (containing `journal/`), or a journal directory itself.
    dir: PathBuf,
    /// Instruments the engine traded.
    #[arg(long, default_value_t = 8)]
    instruments: u32,
    /// Print the best bid and ask of each instrument.
    #[arg(long)]
    top: bool,
}

fn main() {
    match run(Args::parse()) {
        Ok(()) => {}
        // A closed pipe (`replay DIR --top | head`) is the reader's choice, not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {}
        Err(e) => {
            eprintln!("replay: {e}");
            std::process::exit(1);
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let journal = if args.dir.join("journal").is_dir() {
        args.dir.join("journal")
    } else {
        args.dir.clone()
    };
    if !journal.is_dir() {
        return Err(format!("{}: no such journal directory", journal.display()).into());
    }

    // Warm-up pass: fault the segments in, so both timed passes read from memory.
    let mut reader = Reader::open(&journal)?;
    while reader.next()?.is_some() {}

    // Raw scan: every record read and touched, nothing else.
    let start = Instant::now();
    let mut reader = Reader::open(&journal)?;
    let (mut records, mut bytes, mut checksum) = (0u64, 0u64, 0u64);
    while let Some(r) = reader.next()? {
        records += 1;
        bytes += r.payload().len() as u64;
        checksum = checksum.wrapping_add(r.payload().first().copied().unwrap_or(0) as u64);
    }
    std::hint::black_box(checksum);
    let scan = start.elapsed();

    // Replay: decode and apply every record.
    let start = Instant::now();
    let mut books = Exchange::new(args.instruments);
    let mut reader = Reader::open(&journal)?;
    let mut reports = Vec::new();
    let mut rejected = 0u64;
    while let Some(r) = reader.next()? {
        match Command::decode(r.payload()) {
            Ok(command) => {
                reports.clear();
                books.apply(&command, &mut reports);
            }
            Err(_) => rejected += 1,
        }
    }
    let replay = start.elapsed();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let rate = |d: std::time::Duration| records as f64 / d.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "journal: {records} records, {bytes} payload bytes ({rejected} malformed)"
    )?;
    writeln!(out, "raw scan: {:.2} M records/s", rate(scan) / 1e6)?;
    writeln!(
        out,
        "replay into the books: {:.2} M records/s ({:.2} of the raw scan rate)",
        rate(replay) / 1e6,
        scan.as_secs_f64() / replay.as_secs_f64().max(1e-9)
    )?;
    writeln!(
        out,
        "rebuilt {} resting orders; hash {:016x}",
        books.resting_orders(),
        books.book_hash()
    )?;
    if args.top {
        for i in 0..args.instruments {
            let resting = books.resting(i);
            let bid = resting.iter().find(|r| r.0 == Side::Buy);
            let ask = resting.iter().find(|r| r.0 == Side::Sell);
            writeln!(
                out,
                "instrument {i}: best bid {}  best ask {}",
                bid.map_or("-".into(), |b| format!("{}x{}", b.1, b.3)),
                ask.map_or("-".into(), |a| format!("{}x{}", a.1, a.3))
            )?;
        }
    }
    Ok(())
}
