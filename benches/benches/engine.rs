//! The order engine end to end, against floors measured in the same run.
//!
//! ```text
//! cargo bench -p peregrine-benches --bench engine              # about a minute
//! cargo bench -p peregrine-benches --bench engine -- --quick   # seconds (CI)
//! ```
//!
//! 1. **Round trip** at a fixed offered rate (100,000 orders/s over two loopback
//!    connections by default): the engine (reactor, journal ‖ decode, order books, egress:
//!    the `peregrine_examples::engine` pipeline), in each layout (the one this machine
//!    gets by default first: see `peregrine::pipeline::Layout`), against a bare loopback TCP echo server
//!    (one blocking thread per connection, the same frames, the same load generator), and
//!    a closed-loop TCP ping-pong of the same message size. Each reply is timed from its
//!    command's intended send time, so a stall shows in the tail (no coordinated omission).
//! 2. **Replay**: rebuilding the books from a journal of random orders through the
//!    pipeline's recovery (decode and apply each record), against a raw scan of the same
//!    journal (CRC-checked read of every record) on the same warm page cache.
//!
//! `-- round-trip` or `-- replay` runs one part; `PEREGRINE_BENCH_WAIT=blocking|phased` or
//! `phased:SPIN_US:YIELD_US` sets the engine's wait strategy (default phased, the pipeline's
//! own); `PEREGRINE_BENCH_LAYOUTS=inline,fused` runs only those layouts besides the
//! machine's default; `PEREGRINE_BENCH_BUSY_POLL_US` gives the engine's event loop a
//! busy-poll budget (`peregrine::reactor::Config::busy_poll`). Prints markdown tables (`benches/run.sh` copies them into BENCHMARKS.md).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peregrine::journal::{Appender, Config, Reader};
use peregrine::pipeline::{Layout, Pipeline};
use peregrine::reactor::Config as ReactorConfig;
use peregrine::ring::WaitStrategy;
use peregrine_benches::quick;
use peregrine_examples::book::{market_commands, random_commands, Command, COMMAND_LEN};
use peregrine_examples::engine::{load, load_polling, pipeline, Books, Load, MAX_PAYLOAD};

const INSTRUMENTS: u32 = 8;

struct Plan {
    rate: u64,
    connections: u64,
    duration: Duration,
    rounds: usize,
    ping_pongs: usize,
    replay_records: usize,
    replay_reps: usize,
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "peregrine-engine-bench-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A bare loopback TCP server answering each length-prefixed frame with itself: one
/// blocking thread per connection, no ring, no journal. Under the polling load generator
/// its threads are pinned to the first allowed core, as the engine's event loop is, so
/// the generator (on the last core) does not share a core with them.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("floor-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_nodelay(true);
                std::thread::Builder::new()
                    .name("floor-echo".into())
                    .spawn(move || {
                        if polling_client() {
                            pin_apart(true);
                        }
                        let mut frame = vec![0u8; 4 + 1024];
                        loop {
                            if stream.read_exact(&mut frame[..4]).is_err() {
                                return;
                            }
                            let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
                            if len > 1024 || stream.read_exact(&mut frame[4..4 + len]).is_err() {
                                return;
                            }
                            if stream.write_all(&frame[..4 + len]).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawn echo thread");
            }
        })
        .expect("spawn accept thread");
    addr
}

/// Closed loop: one frame of the command's size in flight at a time.
fn ping_pong(addr: SocketAddr, n: usize) -> Histogram<u64> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut frame = vec![0u8; 4 + COMMAND_LEN];
    frame[..4].copy_from_slice(&(COMMAND_LEN as u32).to_le_bytes());
    let mut reply = frame.clone();
    let h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    // Under the polling load generator the ping-pong polls too (from the last core), so
    // that no wake-up of the client's own counts in the floor either.
    let polling = polling_client();
    if polling {
        stream.set_nonblocking(true).expect("nonblocking");
    }
    let run = move || {
        if polling {
            pin_apart(false);
        }
        let mut h = h;
        for i in 0..n + n / 10 {
            let start = Instant::now();
            stream.write_all(&frame).expect("write");
            let mut got = 0;
            while got < reply.len() {
                match stream.read(&mut reply[got..]) {
                    Ok(0) => panic!("the echo server closed the ping-pong connection"),
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::hint::spin_loop();
                    }
                    Err(e) => panic!("ping-pong read: {e}"),
                }
            }
            if i >= n / 10 {
                h.saturating_record(start.elapsed().as_nanos() as u64);
            }
        }
        h
    };
    std::thread::spawn(run).join().expect("ping-pong thread")
}

struct Row {
    name: String,
    latency: Histogram<u64>,
    sent: u64,
    answered: u64,
}

impl Row {
    fn new(name: impl Into<String>) -> Self {
        Row {
            name: name.into(),
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
            sent: 0,
            answered: 0,
        }
    }
    fn add(&mut self, l: &Load) {
        self.latency.add(&l.latency).expect("same bounds");
        self.sent += l.sent;
        self.answered += l.answered;
    }
}

/// The engine's wait strategy: `PEREGRINE_BENCH_WAIT=blocking|phased|phased:SPIN_US:YIELD_US`
/// (default: the pipeline's own, phased).
fn strategy() -> WaitStrategy {
    let var = std::env::var("PEREGRINE_BENCH_WAIT").unwrap_or_default();
    let mut parts = var.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("blocking"), None, None) => WaitStrategy::blocking(),
        (Some("phased"), Some(spin), Some(yield_for)) => WaitStrategy::phased_for(
            Duration::from_micros(spin.parse().expect("spin microseconds")),
            Duration::from_micros(yield_for.parse().expect("yield microseconds")),
        ),
        _ => WaitStrategy::phased(),
    }
}

/// Whether `PEREGRINE_BENCH_LAYOUTS` (a comma-separated list such as `inline,fused`) asks
/// for `layout`; without it every layout runs. The machine's default layout always runs:
/// the target is judged on it.
fn layouts_wanted(layout: Layout) -> bool {
    std::env::var("PEREGRINE_BENCH_LAYOUTS").map_or(true, |list| {
        list.split(',')
            .any(|name| name.trim().eq_ignore_ascii_case(&format!("{layout:?}")))
    })
}

/// The engine reactor's busy-poll budget: `PEREGRINE_BENCH_BUSY_POLL_US` (default none: the
/// loop sleeps in the kernel when it has nothing to do).
fn busy_poll() -> Option<Duration> {
    std::env::var("PEREGRINE_BENCH_BUSY_POLL_US")
        .ok()
        .map(|v| Duration::from_micros(v.parse().expect("busy-poll microseconds")))
}

/// The load generator: `PEREGRINE_BENCH_CLIENT=sleep` (default) or `poll`
/// ([`load_polling`], one thread polling every connection; it holds one core).
fn run_load(
    addr: SocketAddr,
    connections: u64,
    rate: u64,
    duration: Duration,
) -> Result<Load, peregrine::ring::BoxError> {
    if polling_client() {
        load_polling(addr, connections, rate, duration, INSTRUMENTS)
    } else {
        load(addr, connections, rate, duration, INSTRUMENTS)
    }
}

/// Under the polling load generator, keeps servers and clients on different cores where
/// there are two or more: servers (`server`) on the first allowed core, where the engine's
/// event loop is placed, clients on the last, where `load_polling` pins itself.
fn pin_apart(server: bool) {
    let cores = peregrine::ring::affinity::allowed_cores();
    let core = if server { cores.first() } else { cores.last() };
    if let (true, Some(&id)) = (cores.len() >= 2, core) {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

fn polling_client() -> bool {
    std::env::var("PEREGRINE_BENCH_CLIENT").is_ok_and(|c| c == "poll")
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn round_trip(plan: &Plan) {
    println!("### Round trip at {} orders/s offered\n", plan.rate);
    println!(
        "{} connection(s), {} round(s) of {:.1} s per server, interleaved; {} instruments. \
         Microseconds from each command's intended send time to its reply.\n",
        plan.connections,
        plan.rounds,
        plan.duration.as_secs_f64(),
        INSTRUMENTS
    );
    let floor_addr = echo_server();
    let mut floor = Row::new("floor: bare TCP echo, same load");
    // The layout a user gets on this machine first (the target is judged on it), then
    // the other one.
    let auto = pipeline(
        Path::new("unused"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        0,
    )
    .planned_layout()
    .expect("read the topology");
    let others = [Layout::Inline, Layout::Fused, Layout::Parallel]
        .into_iter()
        .filter(|&l| l != auto)
        .filter(|l| layouts_wanted(*l));
    let mut engines: Vec<(Layout, Row)> = std::iter::once(auto)
        .chain(others)
        .map(|layout| {
            let default = if layout == auto {
                ", the default here"
            } else {
                ""
            };
            (
                layout,
                Row::new(format!("**peregrine engine** ({layout:?} layout{default})")),
            )
        })
        .collect();
    for round in 0..plan.rounds {
        let l = run_load(floor_addr, plan.connections, plan.rate, plan.duration)
            .expect("load against the echo floor");
        floor.add(&l);

        for (layout, row) in &mut engines {
            let dir = temp(&format!("rt{round}-{layout:?}"));
            let mut engine = pipeline(&dir, SocketAddr::from(([127, 0, 0, 1], 0)), 0);
            if let Some(spin) = busy_poll() {
                engine = engine
                    .reactor(ReactorConfig {
                        busy_poll: Some(spin),
                        ..ReactorConfig::with_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
                    })
                    .max_payload(MAX_PAYLOAD);
            }
            let running = engine
                .wait_strategy(strategy())
                .layout(*layout)
                .start(|| Books::new(INSTRUMENTS))
                .expect("start the engine");
            let l = run_load(
                running.local_addr(),
                plan.connections,
                plan.rate,
                plan.duration,
            )
            .expect("load against the engine");
            let stopped = running.stop().expect("stop the engine");
            assert!(stopped.failure.is_none(), "{:?}", stopped.failure);
            row.add(&l);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let pp = ping_pong(floor_addr, plan.ping_pongs);
    println!("| server | answered | p50 | p99 | p99.9 | p99.99 | max | p99 ÷ echo p99 | p99 ÷ ping-pong p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (echo_p99, pp_p99) = (
        floor.latency.value_at_quantile(0.99).max(1),
        pp.value_at_quantile(0.99).max(1),
    );
    let line = |name: &str, h: &Histogram<u64>, answered: String| {
        let p99 = h.value_at_quantile(0.99);
        println!(
            "| {name} | {answered} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            us(h.value_at_quantile(0.5)),
            us(p99),
            us(h.value_at_quantile(0.999)),
            us(h.value_at_quantile(0.9999)),
            us(h.max()),
            p99 as f64 / echo_p99 as f64,
            p99 as f64 / pp_p99 as f64,
        );
    };
    line(
        "floor: TCP ping-pong, one in flight",
        &pp,
        format!("{} of {}", pp.len(), pp.len()),
    );
    for row in std::iter::once(&floor).chain(engines.iter().map(|(_, r)| r)) {
        line(
            &row.name,
            &row.latency,
            format!("{} of {}", row.answered, row.sent),
        );
    }
    let engine_p99 = engines[0].1.latency.value_at_quantile(0.99) as f64;
    let same_load = engine_p99 / echo_p99 as f64;
    println!(
        "\ntarget ({auto:?} layout, the default on this machine): engine p99 within 2x a bare loopback TCP exchange of the same message size at the same offered rate: {same_load:.2}x ({}); against the closed-loop ping-pong (one message in flight, no queueing): {:.0}x\n",
        verdict(same_load <= 2.0),
        engine_p99 / pp_p99 as f64
    );
}

/// Writes `commands` to a fresh journal as the engine journals them (each command's
/// payload, appended in batches); returns the payload bytes.
fn write_journal(dir: &Path, commands: &[Command]) -> u64 {
    let (mut appender, _) = Appender::open(
        dir.join("journal"),
        Config::default().segment_size(64 << 20),
    )
    .expect("open journal");
    let encoded: Vec<_> = commands.iter().map(|c| c.encode()).collect();
    for batch in encoded.chunks(64) {
        appender
            .append_batch(batch.iter().map(|c| &c[..]))
            .expect("append");
    }
    appender.sync().expect("sync");
    encoded.iter().map(|c| c.len() as u64).sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Times a raw scan and a replay of one journal, interleaved; returns (scan, replay,
/// orders resting at the end).
fn scan_and_replay(dir: &Path, records: usize, reps: usize) -> (Duration, Duration, usize) {
    let mut scans = Vec::new();
    let mut replays = Vec::new();
    let mut hash = None;
    let mut resting = 0;
    for _ in 0..reps {
        let start = Instant::now();
        let mut reader = Reader::open(dir.join("journal")).expect("open reader");
        let (mut n, mut sum) = (0usize, 0u64);
        while let Some(r) = reader.next().expect("read") {
            n += 1;
            sum = sum.wrapping_add(r.payload()[0] as u64);
        }
        std::hint::black_box(sum);
        scans.push(start.elapsed());
        assert_eq!(n, records);

        let start = Instant::now();
        let recovered = Pipeline::new(dir)
            .recover(|| Books::new(INSTRUMENTS))
            .expect("recover");
        replays.push(start.elapsed());
        assert_eq!(recovered.replayed as usize, records);
        resting = recovered.state.exchange.resting_orders();
        let h = recovered.state.exchange.book_hash();
        assert!(hash.is_none_or(|x| x == h), "replay is deterministic");
        hash = Some(h);
    }
    (median(scans), median(replays), resting)
}

fn replay(plan: &Plan) {
    const LIFETIME: u64 = 10_000;
    println!(
        "### Replay into the books
"
    );
    println!(
        "{} commands per journal on {} instruments, median of {} interleaved repetitions on a \
         warm page cache. The floor is a raw scan of the same journal (a CRC-checked read of \
         every record); replay is `Pipeline::recover`, decoding and applying each record to \
         the books as a restart does.\n",
        plan.replay_records, INSTRUMENTS, plan.replay_reps
    );
    println!("| order flow | orders resting at the end | raw scan M rec/s | replay M rec/s | replay ÷ scan |");
    println!("|---|---:|---:|---:|---:|");
    let flows: [(&str, Vec<Command>); 2] = [
        (
            "venue-like: prices near a drifting mid, 9 in 10 orders cancelled (mean lifetime 10,000 commands)",
            market_commands(0x5EED, plan.replay_records, INSTRUMENTS, 1, LIFETIME),
        ),
        (
            "uniform random (the tests' stream): cancels of random past ids, the book grows without bound",
            random_commands(0x5EED, plan.replay_records, INSTRUMENTS, 1),
        ),
    ];
    let mut target = None;
    for (name, commands) in flows {
        let dir = temp("replay");
        write_journal(&dir, &commands);
        drop(commands);
        let (scan, rebuild, resting) = scan_and_replay(&dir, plan.replay_records, plan.replay_reps);
        let rate = |d: Duration| plan.replay_records as f64 / d.as_secs_f64() / 1e6;
        let ratio = scan.as_secs_f64() / rebuild.as_secs_f64();
        println!(
            "| {name} | {resting} | {:.2} | {:.2} | {ratio:.2} |",
            rate(scan),
            rate(rebuild)
        );
        target.get_or_insert(ratio);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let ratio = target.unwrap_or(0.0);
    println!(
        "\ntarget: replay into the books at 0.5x or more of the raw scan rate (venue-like flow): {ratio:.2}x ({})\n",
        verdict(ratio >= 0.5)
    );
}

/// How a target line reads: quick mode (CI) runs too little to judge a target by.
fn verdict(met: bool) -> &'static str {
    match (quick(), met) {
        (true, _) => "not judged in quick mode",
        (false, true) => "met",
        (false, false) => "missed",
    }
}

fn main() {
    let quick = quick();
    let plan = if quick {
        Plan {
            rate: 100_000,
            connections: 2,
            duration: Duration::from_millis(300),
            rounds: 1,
            ping_pongs: 5_000,
            replay_records: 100_000,
            replay_reps: 3,
        }
    } else {
        Plan {
            rate: 100_000,
            connections: 2,
            duration: Duration::from_secs(3),
            rounds: 3,
            ping_pongs: 200_000,
            replay_records: 2_000_000,
            replay_reps: 5,
        }
    };
    let started = Instant::now();
    println!(
        "## Engine ({} mode)\n",
        if quick { "quick" } else { "full" }
    );
    println!(
        "`cargo bench -p peregrine-benches --bench engine{}`; {} usable core(s).\n",
        if quick { " -- --quick" } else { "" },
        peregrine_benches::cores().len()
    );
    // `-- replay` or `-- round-trip` runs one part only.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if wanted("round-trip") {
        round_trip(&plan);
    }
    if wanted("replay") {
        replay(&plan);
    }
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
