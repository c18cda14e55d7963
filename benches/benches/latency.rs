//! Latency of peregrine, its peers and the physical floor, as HDR-histogram percentiles.
//!
//! ```text
//! cargo bench -p peregrine-benches --bench latency              # full run
//! cargo bench -p peregrine-benches --bench latency -- --quick   # seconds (CI)
//! PEREGRINE_BENCH_QUICK=1 cargo bench -p peregrine-benches --bench latency
//! ```
//!
//! Two scenarios, written once over [`Link`] and run for every channel:
//!
//! - **ping-pong**: the bench thread sends a value over one link; an echo thread sends it
//!   back over a second link; the round trip is timed on the bench thread.
//! - **one-way at a fixed rate**: the bench thread sends on a fixed schedule, each value
//!   being its own intended send time; the receiving thread records `now - intended`. A
//!   send that is late (the sender was descheduled, or the link was full) is charged from
//!   when it should have gone, so stalls show up instead of being omitted.
//!
//! The floor is the same two threads passing the value through one cache line per
//! direction (see `peregrine_benches::link::Floor`). Both threads spin between tries (pause
//! hint), the same loop for every channel, and sit on two different allowed cores when
//! there are two. Rows go to the file named by `PEREGRINE_BENCH_OUT`.

use std::hint::spin_loop;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peregrine_benches::link::{
    ArrayQueue, Channel, Disruptor, Floor, Link, Peregrine, PeregrineStamped, Rtrb, StdMpsc,
};
use peregrine_benches::{cores, emit, pin, quick};

/// Slots per ring or queue.
const CAPACITY: usize = 1024;
/// Ends the echo and receiving threads (never a real value: values are counters or
/// nanosecond stamps).
const STOP: u64 = u64::MAX;

/// Run sizes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warmup: u64,
    round_trips: u64,
    messages: u64,
    interval: Duration,
    /// Interleaved rounds the samples are split into (see [`scenario`]).
    rounds: u64,
    /// Core for the bench thread and for the other thread, when there are two.
    cores: Option<(usize, usize)>,
}

/// Percentiles in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Row {
    p50: u64,
    p99: u64,
    p999: u64,
    p9999: u64,
    max: u64,
    count: u64,
}

impl Row {
    fn of(h: &Histogram<u64>) -> Row {
        Row {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            count: h.len(),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

#[inline(always)]
fn send<L: Link>(tx: &mut L::Tx, v: u64) {
    while !L::try_send(tx, v) {
        spin_loop();
    }
}

#[inline(always)]
fn recv<L: Link>(rx: &mut L::Rx) -> u64 {
    loop {
        if let Some(v) = L::try_recv(rx) {
            return v;
        }
        spin_loop();
    }
}

/// Round trips over two links of `L`.
fn ping_pong<L: Link>(plan: &Plan) -> Histogram<u64> {
    let (mut to_echo, mut echo_rx) = L::link(CAPACITY);
    let (mut echo_tx, mut back) = L::link(CAPACITY);
    let other = plan.cores.map(|(_, b)| b);
    let echo = std::thread::Builder::new()
        .name(format!("{}-echo", L::NAME))
        .spawn(move || {
            if let Some(c) = other {
                pin(c);
            }
            loop {
                let v = recv::<L>(&mut echo_rx);
                send::<L>(&mut echo_tx, v);
                if v == STOP {
                    break;
                }
            }
        })
        .expect("spawn the echo thread");
    let mut h = histogram();
    for i in 1..=plan.warmup + plan.round_trips {
        let start = Instant::now();
        send::<L>(&mut to_echo, i);
        let got = recv::<L>(&mut back);
        let rtt = start.elapsed().as_nanos() as u64;
        debug_assert_eq!(got, i);
        if i > plan.warmup {
            h.record(rtt.max(1)).expect("in bounds");
        }
    }
    send::<L>(&mut to_echo, STOP);
    recv::<L>(&mut back);
    echo.join().expect("echo thread");
    h
}

/// One-way latency at a fixed rate, timed from each message's intended send time.
fn one_way<L: Link>(plan: &Plan) -> Histogram<u64> {
    let (mut tx, mut rx) = L::link(CAPACITY);
    let epoch = Instant::now();
    let other = plan.cores.map(|(_, b)| b);
    let warm = plan.warmup.min(plan.messages / 10);
    let receiver = std::thread::Builder::new()
        .name(format!("{}-recv", L::NAME))
        .spawn(move || {
            if let Some(c) = other {
                pin(c);
            }
            let mut h = histogram();
            let mut seen = 0u64;
            loop {
                let intended = recv::<L>(&mut rx);
                if intended == STOP {
                    break;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                seen += 1;
                if seen > warm {
                    h.record(now.saturating_sub(intended).max(1))
                        .expect("in bounds");
                }
            }
            h
        })
        .expect("spawn the receiving thread");
    // Start a little later so the receiver is spinning; stamps are never zero.
    let first = epoch + Duration::from_millis(1);
    for i in 0..warm + plan.messages {
        let intended = first + plan.interval * i as u32;
        while Instant::now() < intended {
            spin_loop();
        }
        let stamp = (intended - epoch).as_nanos() as u64;
        send::<L>(&mut tx, stamp);
    }
    send::<L>(&mut tx, STOP);
    receiver.join().expect("receiving thread")
}

/// Prints one row and emits it.
fn row(scenario: &str, name: &str, r: Row, floor: Row) {
    println!(
        "| {:<22} | {:>7} | {:>7} | {:>7} | {:>8} | {:>9} | {:>6.2} | {:>9} |",
        name,
        r.p50,
        r.p99,
        r.p999,
        r.p9999,
        r.max,
        r.p50 as f64 / floor.p50.max(1) as f64,
        r.count
    );
    emit(&[
        "latency",
        scenario,
        name,
        &r.p50.to_string(),
        &r.p99.to_string(),
        &r.p999.to_string(),
        &r.p9999.to_string(),
        &r.max.to_string(),
        &r.count.to_string(),
    ]);
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!(
        "| channel | p50 ns | p99 ns | p99.9 ns | p99.99 ns | max ns | p50 / floor | samples |"
    );
    println!("|---|---|---|---|---|---|---|---|");
}

/// Runs `f` for every channel in `plan.rounds` interleaved rounds (floor, peregrine, each
/// peer, then again), each a share of the samples, and merges each channel's rounds: a
/// machine whose speed drifts during the run moves every channel alike instead of
/// whichever happened to run during the slow spell.
fn scenario(name: &str, title: &str, plan: &Plan, f: Runner) {
    header(title);
    let channels: [(&str, Measure); 8] = [
        (Floor::NAME, f.floor),
        (Peregrine::NAME, f.peregrine),
        (PeregrineStamped::NAME, f.peregrine_stamped),
        (Disruptor::NAME, f.disruptor),
        (Rtrb::NAME, f.rtrb),
        (ArrayQueue::NAME, f.array_queue),
        (Channel::NAME, f.channel),
        (StdMpsc::NAME, f.std_mpsc),
    ];
    let rounds = plan.rounds.max(1);
    let share = Plan {
        warmup: (plan.warmup / rounds).max(1_000),
        round_trips: plan.round_trips / rounds,
        messages: plan.messages / rounds,
        ..*plan
    };
    let mut merged: Vec<Histogram<u64>> = channels.iter().map(|_| histogram()).collect();
    for _ in 0..rounds {
        for ((_, run), total) in channels.iter().zip(merged.iter_mut()) {
            total.add(run(&share)).expect("same bounds");
        }
    }
    let floor = Row::of(&merged[0]);
    for ((channel, _), h) in channels.iter().zip(&merged) {
        row(name, channel, Row::of(h), floor);
    }
}

/// One scenario run for one channel, returning its histogram.
type Measure = fn(&Plan) -> Histogram<u64>;

/// One scenario instantiated for every channel.
struct Runner {
    floor: Measure,
    peregrine: Measure,
    peregrine_stamped: Measure,
    disruptor: Measure,
    rtrb: Measure,
    array_queue: Measure,
    channel: Measure,
    std_mpsc: Measure,
}

macro_rules! runner {
    ($f:ident) => {
        Runner {
            floor: $f::<Floor>,
            peregrine: $f::<Peregrine>,
            peregrine_stamped: $f::<PeregrineStamped>,
            disruptor: $f::<Disruptor>,
            rtrb: $f::<Rtrb>,
            array_queue: $f::<ArrayQueue>,
            channel: $f::<Channel>,
            std_mpsc: $f::<StdMpsc>,
        }
    };
}

/// The cost of one `Instant::now()`, which every figure includes once or twice.
fn timer_cost() -> u64 {
    let n = 100_000u32;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Instant::now());
    }
    (start.elapsed() / n).as_nanos() as u64
}

fn main() {
    let started = Instant::now();
    let quick = quick();
    // Read the allowed cores before this thread pins itself (pinning shrinks the mask).
    let allowed = cores().to_vec();
    let pair = (allowed.len() >= 2).then(|| (allowed[0], allowed[1]));
    if let Some((a, _)) = pair {
        pin(a);
    }
    let plan = if quick {
        Plan {
            warmup: 10_000,
            round_trips: 50_000,
            messages: 20_000,
            interval: Duration::from_micros(10),
            rounds: 1,
            cores: pair,
        }
    } else {
        Plan {
            warmup: 100_000,
            round_trips: 1_000_000,
            messages: 300_000,
            interval: Duration::from_micros(10),
            rounds: 5,
            cores: pair,
        }
    };
    let timer = timer_cost();
    println!(
        "latency: {} mode; cores {:?} (bench thread, other thread: {:?}); Instant::now() costs {timer} ns",
        if quick { "quick" } else { "full" },
        allowed,
        pair
    );
    let placement = match pair {
        Some((a, b)) => format!("{a} and {b}"),
        None => "one shared core".to_owned(),
    };
    emit(&[
        "latency-machine",
        &allowed.len().to_string(),
        &placement,
        &timer.to_string(),
    ]);
    if pair.is_none() {
        println!("only one allowed core: both threads share it, figures include context switches");
    }
    scenario(
        "ping-pong",
        &format!(
            "Ping-pong round trip ({} round trips after {} warm-up)",
            plan.round_trips, plan.warmup
        ),
        &plan,
        runner!(ping_pong),
    );
    scenario(
        "one-way",
        &format!(
            "One-way at a fixed rate ({} messages, one every {:?}, from the intended send time)",
            plan.messages, plan.interval
        ),
        &plan,
        runner!(one_way),
    );
    println!("\ntotal bench time: {:.2?}", started.elapsed());
}
