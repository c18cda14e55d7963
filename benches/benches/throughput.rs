//! Throughput of peregrine and its peers, every scenario written once.
//!
//! ```text
//! cargo bench -p peregrine-benches --bench throughput              # full run
//! cargo bench -p peregrine-benches --bench throughput -- --quick   # seconds (CI)
//! PEREGRINE_BENCH_QUICK=1 cargo bench -p peregrine-benches --bench throughput
//! ```
//!
//! Each criterion iteration publishes one event (or one batch, or one event per producer)
//! and every sample ends only when the last stage of each branch has handled everything
//! published, so the time is end-to-end; criterion's slope over samples of growing length
//! removes the fixed cost of that final wait. The `base` group measures the harness alone
//! (the same loop publishing into nothing).
//!
//! Peers: peregrine and the `disruptor` crate with their stage threads; rtrb, crossbeam
//! `ArrayQueue`, crossbeam-channel and std `sync_channel` with one thread per stage and one
//! queue per edge (see `peregrine_benches::topology`). Every thread of a scenario waits the
//! same way: busy-spin where the machine has a core per thread (the bench thread pinned to
//! the first allowed core, the stages to the next ones), otherwise yield between tries,
//! which the group's report line says (set `PEREGRINE_BENCH_SKIP_OVERSUBSCRIBED=1` to skip
//! such scenarios instead). Result notes go to the file named by `PEREGRINE_BENCH_OUT`;
//! criterion's own estimates go under `CRITERION_HOME` (default `target/criterion`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use peregrine_benches::link::{ArrayQueue, Channel, Rtrb, StdMpsc};
use peregrine_benches::topology::{
    DisruptorRing, Peer, PeregrineRing, PeregrineStampedRing, Plan, Queued, Sender, Sinks,
    Topology, Visit, Wait,
};
use peregrine_benches::{cores, emit, pin, quick};

/// Slots per ring or queue, the same for every peer.
const CAPACITY: usize = 8192;

/// The measurement, written once: drives a built topology's producers from criterion.
struct Measure<'a, 'b> {
    group: &'a mut BenchmarkGroup<'b, WallTime>,
    id: &'static str,
    batch: usize,
    wait: Wait,
}

impl Visit for Measure<'_, '_> {
    fn visit<S: Sender>(self, mut producers: Vec<S>, sinks: &Sinks) {
        let (batch, wait) = (self.batch, self.wait);
        let mut sent = 0u64;
        if producers.len() == 1 {
            let mut p = producers.pop().expect("one producer");
            self.group.bench_function(self.id, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    if batch == 1 {
                        for i in 0..iters {
                            p.send(sent + i, wait);
                        }
                    } else {
                        for i in 0..iters {
                            p.send_batch(sent + i * batch as u64, batch, wait);
                        }
                    }
                    sent += iters * batch as u64;
                    sinks.wait_for(sent, wait);
                    start.elapsed()
                })
            });
        } else {
            let threads = producers.len() as u64;
            self.group.bench_function(self.id, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for p in producers.iter_mut() {
                            s.spawn(move || {
                                for i in 0..iters {
                                    p.send(i, wait);
                                }
                            });
                        }
                    });
                    sent += iters * threads;
                    sinks.wait_for(sent, wait);
                    start.elapsed()
                })
            });
        }
    }
}

/// One scenario (a topology, single or batch publishing) for every peer.
struct Scenario<'c> {
    c: &'c mut Criterion,
    topology: Topology,
    batch: usize,
    plan: Plan,
}

impl Scenario<'_> {
    fn group_name(&self) -> String {
        if self.batch == 1 {
            self.topology.name().to_owned()
        } else {
            format!("{}_batch{}", self.topology.name(), self.batch)
        }
    }

    fn run<P: Peer>(&mut self) {
        let name = self.group_name();
        if let Err(reason) = P::supports(self.topology, self.batch > 1) {
            println!("{name}/{}: skipped ({reason})", P::NAME);
            emit(&["throughput-skip", &name, P::NAME, reason]);
            return;
        }
        let mut group = self.c.benchmark_group(&name);
        let per_iter = self.batch.max(self.topology.producers()) as u64;
        group.throughput(Throughput::Elements(per_iter));
        P::run(
            self.topology,
            &self.plan,
            Measure {
                group: &mut group,
                id: P::NAME,
                batch: self.batch,
                wait: self.plan.wait,
            },
        );
        group.finish();
    }
}

/// The harness alone: the same loop and final wait, publishing into nothing.
fn base(c: &mut Criterion) {
    let mut group = c.benchmark_group("base");
    group.throughput(Throughput::Elements(1));
    let sinks = Sinks::new(1);
    group.bench_function("noop", |b| {
        let mut sent = 0u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                black_box(sent + i);
            }
            sent += iters;
            sinks.record(0, sent);
            sinks.wait_for(sent, Wait::Spin);
            start.elapsed()
        })
    });
    group.finish();
}

fn main() {
    let quick = quick();
    // Read the allowed cores before this thread pins itself (pinning shrinks the mask).
    let allowed = cores().to_vec();
    let skip_oversubscribed =
        std::env::var("PEREGRINE_BENCH_SKIP_OVERSUBSCRIBED").is_ok_and(|v| v == "1");
    let mut c = if quick {
        Criterion::default()
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(300))
            .sample_size(10)
            .nresamples(10_000)
    } else {
        Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(20)
    }
    .configure_from_args();

    println!(
        "throughput: {} allowed cores {:?}, capacity {CAPACITY}, {} mode",
        allowed.len(),
        allowed,
        if quick { "quick" } else { "full" }
    );
    emit(&[
        "throughput-machine",
        &allowed.len().to_string(),
        &format!("{allowed:?}"),
    ]);
    if allowed.len() >= 2 {
        pin(allowed[0]);
    }

    base(&mut c);

    let scenarios: [(Topology, usize); 7] = [
        (Topology::Unicast, 1),
        (Topology::Unicast, 10),
        (Topology::Unicast, 100),
        (Topology::Pipeline, 1),
        (Topology::Multicast, 1),
        (Topology::Diamond, 1),
        (Topology::ThreeProducers, 1),
    ];
    for (topology, batch) in scenarios {
        let threads = topology.threads();
        let fits = threads <= allowed.len();
        let plan = Plan {
            wait: if fits { Wait::Spin } else { Wait::Yield },
            capacity: CAPACITY,
            // The bench thread holds the first core; stages take the next ones.
            cores: if fits && topology.producers() == 1 {
                allowed[1..=topology.consumers()].to_vec()
            } else {
                Vec::new()
            },
        };
        let mut scenario = Scenario {
            c: &mut c,
            topology,
            batch,
            plan,
        };
        let name = scenario.group_name();
        let note = if fits {
            format!(
                "busy-spin, {threads} threads on {} cores, pinned",
                allowed.len()
            )
        } else if skip_oversubscribed {
            let reason = format!(
                "needs {threads} busy-spinning threads, {} cores allowed",
                allowed.len()
            );
            println!("{name}: skipped ({reason})");
            emit(&["throughput-skip", &name, "all", &reason]);
            continue;
        } else {
            format!(
                "oversubscribed: {threads} threads on {} cores, every peer yields between tries",
                allowed.len()
            )
        };
        println!("{name}: {note}");
        emit(&["throughput-note", &name, &note]);
        scenario.run::<PeregrineRing>();
        scenario.run::<PeregrineStampedRing>();
        scenario.run::<DisruptorRing>();
        scenario.run::<Queued<Rtrb>>();
        scenario.run::<Queued<ArrayQueue>>();
        scenario.run::<Queued<Channel>>();
        scenario.run::<Queued<StdMpsc>>();
    }
    c.final_summary();
}
