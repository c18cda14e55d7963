//! Throughput topologies, each built by every peer that can express it.
//!
//! ```text
//!  unicast       pipeline               multicast       diamond          three producers
//!
//!                                          +-> A          +-> A --+       P1 --+
//!  P -> A        P -> A -> B -> C      P --+-> B      P --+       +-> C   P2 --+-> A
//!                                          +-> C          +-> B --+       P3 --+
//! ```
//!
//! A [`Peer`] builds the topology, hands its producers to a [`Visit`] (the measurement,
//! written once in `benches/throughput.rs`), then tears it down. The last stage of each
//! branch reports how many events it has handled through [`Sinks`], so the measurement
//! knows when everything it sent has gone all the way through.
//!
//! Rings (peregrine, the `disruptor` crate) run their own stage threads. Queues run the
//! same graph with one thread per stage and one queue per edge ([`Queued`]): a pipeline
//! forwards each value from queue to queue, a multicast producer sends each value into
//! three queues, and the diamond's last stage takes one value from each branch.

use std::hint::black_box;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_utils::CachePadded;
use disruptor::{BusySpin, ProcessorSettings};
use peregrine_ring::{RingBuilder, Sequencer, StageId, WaitStrategy, WhenFull};

use crate::link::Link;

/// A throughput scenario: who publishes and which stages handle each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One producer, one consumer.
    Unicast,
    /// One producer, three stages in a row.
    Pipeline,
    /// One producer, three stages that each see every event.
    Multicast,
    /// One producer, two stages in parallel, a third after both.
    Diamond,
    /// Three producers, one consumer.
    ThreeProducers,
}

impl Topology {
    /// Every topology, in report order.
    pub const ALL: [Topology; 5] = [
        Topology::Unicast,
        Topology::Pipeline,
        Topology::Multicast,
        Topology::Diamond,
        Topology::ThreeProducers,
    ];

    /// Short name, used as the criterion group.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Unicast => "unicast_1p1c",
            Topology::Pipeline => "pipeline_1p3c",
            Topology::Multicast => "multicast_1p3c",
            Topology::Diamond => "diamond_1p3c",
            Topology::ThreeProducers => "mp_3p1c",
        }
    }

    /// Publishing threads.
    pub fn producers(self) -> usize {
        match self {
            Topology::ThreeProducers => 3,
            _ => 1,
        }
    }

    /// Consuming threads (stages).
    pub fn consumers(self) -> usize {
        match self {
            Topology::Unicast | Topology::ThreeProducers => 1,
            Topology::Pipeline | Topology::Multicast | Topology::Diamond => 3,
        }
    }

    /// Threads that spin while the topology runs.
    pub fn threads(self) -> usize {
        self.producers() + self.consumers()
    }

    /// Stages that report progress (the ends of the branches).
    pub fn sinks(self) -> usize {
        match self {
            Topology::Multicast => 3,
            _ => 1,
        }
    }
}

/// How every thread of a scenario waits: the same for every peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Spin with a pause hint: one core per thread.
    Spin,
    /// Yield the time slice between tries: for more threads than cores.
    Yield,
}

impl Wait {
    /// One wait between two tries.
    #[inline(always)]
    pub fn idle(self) {
        match self {
            Wait::Spin => std::hint::spin_loop(),
            Wait::Yield => std::thread::yield_now(),
        }
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Wait::Spin => "busy-spin",
            Wait::Yield => "yield",
        }
    }
}

/// Progress counters of the stages at the ends of the branches, one cache line each.
#[derive(Debug)]
pub struct Sinks {
    counts: Box<[CachePadded<AtomicU64>]>,
}

impl Sinks {
    /// `n` counters at zero.
    pub fn new(n: usize) -> Self {
        Self {
            counts: (0..n)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Sink `i` has handled `handled` events in all.
    #[inline(always)]
    pub fn record(&self, i: usize, handled: u64) {
        // Release: pairs with the Acquire in `wait_for` (only a count travels, no data).
        self.counts[i].store(handled, Ordering::Release);
    }

    /// Waits until every sink has handled `target` events.
    pub fn wait_for(&self, target: u64, wait: Wait) {
        for c in self.counts.iter() {
            while c.load(Ordering::Acquire) < target {
                wait.idle();
            }
        }
    }
}

/// Where and how a scenario runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How every thread waits.
    pub wait: Wait,
    /// Slots per ring or queue.
    pub capacity: usize,
    /// Cores for the consuming threads, in stage order; empty to leave them unpinned.
    pub cores: Vec<usize>,
}

impl Plan {
    /// The core for consuming thread `i`, if the plan pins.
    pub fn core(&self, i: usize) -> Option<usize> {
        self.cores.get(i).copied()
    }
}

/// A producer handle as the measurement drives it.
pub trait Sender: Send {
    /// Publishes one event, waiting (by `wait`) while there is no room.
    fn send(&mut self, value: u64, wait: Wait);
    /// Publishes `n` events as one batch, waiting while there is no room.
    fn send_batch(&mut self, first: u64, n: usize, wait: Wait);
}

/// The measurement: receives a built topology's producers (one per producing thread).
pub trait Visit {
    /// Runs the measurement; every event sent must be handled before this returns.
    fn visit<S: Sender>(self, producers: Vec<S>, sinks: &Sinks);
}

/// A library that can run (some of) the topologies.
pub trait Peer {
    /// The name printed in tables and result lines.
    const NAME: &'static str;

    /// `Err(reason)` when this peer cannot express `topology` (with batch publishing when
    /// `batch`).
    fn supports(topology: Topology, batch: bool) -> Result<(), &'static str>;

    /// Builds `topology` by `plan`, runs `visit` on it, and tears it down.
    fn run<V: Visit>(topology: Topology, plan: &Plan, visit: V);
}

/// What every consuming stage does with an event, whichever library delivers it: reads the
/// value and, at the end of a batch in a sink, reports its progress.
#[derive(Debug)]
struct Handler {
    sink: Option<(Arc<Sinks>, usize)>,
}

impl Handler {
    fn new(sinks: &Arc<Sinks>, sink: Option<usize>) -> Self {
        Self {
            sink: sink.map(|i| (Arc::clone(sinks), i)),
        }
    }

    #[inline(always)]
    fn on_event(&mut self, value: u64, sequence: u64, end_of_batch: bool) {
        black_box(value);
        if end_of_batch {
            if let Some((sinks, i)) = &self.sink {
                sinks.record(*i, sequence + 1);
            }
        }
    }
}

/// peregrine's ring with stage threads.
#[derive(Debug)]
pub struct PeregrineRing;

/// A peregrine producer as a [`Sender`].
#[derive(Debug)]
pub struct RingTx<S: Sequencer>(peregrine_ring::Producer<u64, S>);

impl<S: Sequencer> Sender for RingTx<S> {
    #[inline]
    fn send(&mut self, value: u64, _wait: Wait) {
        // The ring's own `when_full` policy waits (set from the plan).
        self.0.publish(|e| *e = value).expect("ring halted");
    }

    #[inline]
    fn send_batch(&mut self, first: u64, n: usize, _wait: Wait) {
        self.0
            .publish_batch(n, |e, s| *e = first.wrapping_add(s))
            .expect("ring halted");
    }
}

impl PeregrineRing {
    fn configure<S: Sequencer>(b: RingBuilder<u64, S>, plan: &Plan) -> RingBuilder<u64, S> {
        match plan.wait {
            Wait::Spin => b
                .wait_strategy(WaitStrategy::busy_spin())
                .when_full(WhenFull::Spin),
            Wait::Yield => b
                .wait_strategy(WaitStrategy::yielding())
                .when_full(WhenFull::Yield)
                .allow_oversubscription(true),
        }
    }

    fn stage<S: Sequencer>(
        b: &mut RingBuilder<u64, S>,
        name: &str,
        core: Option<usize>,
        after: &[StageId],
        mut handler: Handler,
    ) -> StageId {
        let mut stage = b
            .stage(name, move |e: &u64, s: u64, eob: bool| {
                handler.on_event(*e, s, eob)
            })
            .after(after);
        if let Some(c) = core {
            stage = stage.pin(c);
        }
        stage.add().expect("valid stage")
    }

    fn stages<S: Sequencer>(
        b: &mut RingBuilder<u64, S>,
        t: Topology,
        plan: &Plan,
        sinks: &Arc<Sinks>,
    ) {
        let h = |sink| Handler::new(sinks, sink);
        match t {
            Topology::Unicast | Topology::ThreeProducers => {
                Self::stage(b, "sink", plan.core(0), &[], h(Some(0)));
            }
            Topology::Pipeline => {
                let a = Self::stage(b, "stage-a", plan.core(0), &[], h(None));
                let bb = Self::stage(b, "stage-b", plan.core(1), &[a], h(None));
                Self::stage(b, "sink", plan.core(2), &[bb], h(Some(0)));
            }
            Topology::Multicast => {
                for i in 0..3 {
                    Self::stage(b, &format!("sink-{i}"), plan.core(i), &[], h(Some(i)));
                }
            }
            Topology::Diamond => {
                let a = Self::stage(b, "stage-a", plan.core(0), &[], h(None));
                let bb = Self::stage(b, "stage-b", plan.core(1), &[], h(None));
                Self::stage(b, "sink", plan.core(2), &[a, bb], h(Some(0)));
            }
        }
    }
}

impl Peer for PeregrineRing {
    const NAME: &'static str = "peregrine";

    fn supports(_topology: Topology, _batch: bool) -> Result<(), &'static str> {
        Ok(())
    }

    fn run<V: Visit>(t: Topology, plan: &Plan, visit: V) {
        let sinks = Arc::new(Sinks::new(t.sinks()));
        if t.producers() == 1 {
            let b = peregrine_ring::single_producer(plan.capacity, || 0u64).expect("capacity");
            let mut b = Self::configure(b, plan);
            Self::stages(&mut b, t, plan, &sinks);
            let (p, _ring) = b.build().expect("ring builds");
            visit.visit(vec![RingTx(p)], &sinks);
        } else {
            let b = peregrine_ring::multi_producer(plan.capacity, || 0u64).expect("capacity");
            let mut b = Self::configure(b, plan);
            Self::stages(&mut b, t, plan, &sinks);
            let (p, _ring) = b.build().expect("ring builds");
            let mut producers: Vec<_> = (1..t.producers()).map(|_| RingTx(p.clone())).collect();
            producers.push(RingTx(p));
            visit.visit(producers, &sinks);
        }
    }
}

/// peregrine's stamped single-producer ring (`single_producer_stamped`) with stage threads:
/// the ring built for latency, measured for its throughput cost.
#[derive(Debug)]
pub struct PeregrineStampedRing;

impl Peer for PeregrineStampedRing {
    const NAME: &'static str = "peregrine-stamped";

    fn supports(topology: Topology, _batch: bool) -> Result<(), &'static str> {
        if topology.producers() == 1 {
            Ok(())
        } else {
            Err("single producer only")
        }
    }

    fn run<V: Visit>(t: Topology, plan: &Plan, visit: V) {
        let sinks = Arc::new(Sinks::new(t.sinks()));
        let b = peregrine_ring::single_producer_stamped(plan.capacity, || 0u64).expect("capacity");
        let mut b = PeregrineRing::configure(b, plan);
        PeregrineRing::stages(&mut b, t, plan, &sinks);
        let (p, _ring) = b.build().expect("ring builds");
        visit.visit(vec![RingTx(p)], &sinks);
    }
}

/// The `disruptor` crate with its processor threads.
#[derive(Debug)]
pub struct DisruptorRing;

/// The `disruptor` crate's wait strategy for oversubscribed runs: yield between tries (the
/// crate ships busy-spin and sleep only).
#[derive(Debug, Clone, Copy)]
pub struct YieldWait;

impl disruptor::wait_strategies::WaitStrategy for YieldWait {
    #[inline]
    fn wait_for(&self, _sequence: i64) {
        std::thread::yield_now();
    }
}

/// A `disruptor` producer as a [`Sender`].
#[derive(Debug)]
pub struct DisruptorTx<P>(P);

impl<P: disruptor::Producer<u64> + Send> Sender for DisruptorTx<P> {
    #[inline]
    fn send(&mut self, value: u64, wait: Wait) {
        match wait {
            // The crate's own publish spins (without a pause hint) while the ring is full.
            Wait::Spin => self.0.publish(|e| *e = value),
            Wait::Yield => {
                while self.0.try_publish(|e| *e = value).is_err() {
                    wait.idle();
                }
            }
        }
    }

    #[inline]
    fn send_batch(&mut self, first: u64, n: usize, wait: Wait) {
        match wait {
            Wait::Spin => self.0.batch_publish(n, |iter| {
                for (i, e) in iter.enumerate() {
                    *e = first + i as u64;
                }
            }),
            Wait::Yield => {
                while self
                    .0
                    .try_batch_publish(n, |iter| {
                        for (i, e) in iter.enumerate() {
                            *e = first + i as u64;
                        }
                    })
                    .is_err()
                {
                    wait.idle();
                }
            }
        }
    }
}

impl DisruptorRing {
    fn run_with<W, V>(w: W, t: Topology, plan: &Plan, visit: V)
    where
        W: disruptor::wait_strategies::WaitStrategy + 'static,
        V: Visit,
    {
        fn pin<B: ProcessorSettings<u64, W>, W>(
            b: B,
            core: Option<usize>,
            name: &'static str,
        ) -> B {
            let b = b.thread_name(name);
            match core {
                Some(c) => crate::with_all_cores(|| b.pin_at_core(c)),
                None => b,
            }
        }
        let sinks = Arc::new(Sinks::new(t.sinks()));
        let h = |sink| {
            let mut h = Handler::new(&sinks, sink);
            move |e: &u64, s: i64, eob: bool| h.on_event(*e, s as u64, eob)
        };
        let cap = plan.capacity;
        let single = || disruptor::build_single_producer(cap, || 0u64, w);
        match t {
            Topology::Unicast => {
                let p = pin(single(), plan.core(0), "sink")
                    .handle_events_with(h(Some(0)))
                    .build();
                visit.visit(vec![DisruptorTx(p)], &sinks);
            }
            Topology::Pipeline => {
                let b = pin(single(), plan.core(0), "stage-a").handle_events_with(h(None));
                let b = pin(b.and_then(), plan.core(1), "stage-b").handle_events_with(h(None));
                let p = pin(b.and_then(), plan.core(2), "sink")
                    .handle_events_with(h(Some(0)))
                    .build();
                visit.visit(vec![DisruptorTx(p)], &sinks);
            }
            Topology::Multicast => {
                let b = pin(single(), plan.core(0), "sink-0").handle_events_with(h(Some(0)));
                let b = pin(b, plan.core(1), "sink-1").handle_events_with(h(Some(1)));
                let p = pin(b, plan.core(2), "sink-2")
                    .handle_events_with(h(Some(2)))
                    .build();
                visit.visit(vec![DisruptorTx(p)], &sinks);
            }
            Topology::Diamond => {
                let b = pin(single(), plan.core(0), "stage-a").handle_events_with(h(None));
                let b = pin(b, plan.core(1), "stage-b").handle_events_with(h(None));
                let p = pin(b.and_then(), plan.core(2), "sink")
                    .handle_events_with(h(Some(0)))
                    .build();
                visit.visit(vec![DisruptorTx(p)], &sinks);
            }
            Topology::ThreeProducers => {
                let b = disruptor::build_multi_producer(cap, || 0u64, w);
                let p = pin(b, plan.core(0), "sink")
                    .handle_events_with(h(Some(0)))
                    .build();
                let mut producers: Vec<_> =
                    (1..t.producers()).map(|_| DisruptorTx(p.clone())).collect();
                producers.push(DisruptorTx(p));
                visit.visit(producers, &sinks);
            }
        }
    }
}

impl Peer for DisruptorRing {
    const NAME: &'static str = "disruptor";

    fn supports(_topology: Topology, _batch: bool) -> Result<(), &'static str> {
        Ok(())
    }

    fn run<V: Visit>(t: Topology, plan: &Plan, visit: V) {
        match plan.wait {
            Wait::Spin => Self::run_with(BusySpin, t, plan, visit),
            Wait::Yield => Self::run_with(YieldWait, t, plan, visit),
        }
    }
}

/// A queue or channel ([`Link`]) running a topology with one thread per stage and one queue
/// per edge.
#[derive(Debug)]
pub struct Queued<L>(PhantomData<L>);

/// The sending ends a queue producer writes each value into (three for a multicast, two for
/// a diamond).
#[derive(Debug)]
pub struct QueueTx<L: Link>(Vec<L::Tx>);

impl<L: Link> Sender for QueueTx<L> {
    #[inline]
    fn send(&mut self, value: u64, wait: Wait) {
        for tx in &mut self.0 {
            while !L::try_send(tx, value) {
                wait.idle();
            }
        }
    }

    #[inline]
    fn send_batch(&mut self, first: u64, n: usize, wait: Wait) {
        for tx in &mut self.0 {
            while !L::try_send_batch(tx, first, n) {
                wait.idle();
            }
        }
    }
}

/// Stage threads of a queue topology, stopped together.
struct Stages {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    wait: Wait,
}

impl Stages {
    fn spawn(
        &mut self,
        name: &str,
        core: Option<usize>,
        body: impl FnOnce(&AtomicBool, Wait) + Send + 'static,
    ) {
        let stop = Arc::clone(&self.stop);
        let wait = self.wait;
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Some(c) = core {
                    crate::pin(c);
                }
                body(&stop, wait)
            })
            .expect("spawn a stage thread");
        self.threads.push(handle);
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("stage thread");
        }
    }
}

impl<L: Link> Queued<L> {
    /// Last stage of a branch: handles what is ready, then reports its count.
    fn sink(mut rx: L::Rx, sinks: Arc<Sinks>, i: usize) -> impl FnOnce(&AtomicBool, Wait) + Send {
        move |stop, wait| {
            let mut handled = 0;
            loop {
                let n = L::drain(&mut rx, |v| {
                    black_box(v);
                });
                if n > 0 {
                    handled += n;
                    sinks.record(i, handled);
                } else if stop.load(Ordering::Relaxed) {
                    break;
                } else {
                    wait.idle();
                }
            }
        }
    }

    /// A middle stage: handles each value and sends it on.
    fn forward(mut rx: L::Rx, mut tx: L::Tx) -> impl FnOnce(&AtomicBool, Wait) + Send {
        move |stop, wait| loop {
            let n = L::drain(&mut rx, |v| {
                black_box(v);
                while !L::try_send(&mut tx, v) {
                    wait.idle();
                }
            });
            if n == 0 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                wait.idle();
            }
        }
    }

    /// The diamond's last stage: one value from each branch makes one event.
    fn join(
        mut a: L::Rx,
        mut b: L::Rx,
        sinks: Arc<Sinks>,
    ) -> impl FnOnce(&AtomicBool, Wait) + Send {
        move |stop, wait| {
            let take = |rx: &mut L::Rx| loop {
                if let Some(v) = L::try_recv(rx) {
                    return Some(v);
                }
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                wait.idle();
            };
            let mut handled = 0;
            while let (Some(x), Some(y)) = (take(&mut a), take(&mut b)) {
                black_box((x, y));
                handled += 1;
                sinks.record(0, handled);
            }
        }
    }
}

impl<L: Link> Peer for Queued<L> {
    const NAME: &'static str = L::NAME;

    fn supports(t: Topology, batch: bool) -> Result<(), &'static str> {
        if batch && !L::BATCH {
            return Err("no batch send");
        }
        if t.producers() > 1 {
            let (tx, _rx) = L::link(2);
            if L::clone_tx(&tx).is_none() {
                return Err("single producer only");
            }
        }
        Ok(())
    }

    fn run<V: Visit>(t: Topology, plan: &Plan, visit: V) {
        let sinks = Arc::new(Sinks::new(t.sinks()));
        let mut stages = Stages {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            wait: plan.wait,
        };
        let cap = plan.capacity;
        let name = |stage: &str| format!("{}-{stage}", L::NAME);
        let producers = match t {
            Topology::Unicast | Topology::ThreeProducers => {
                let (tx, rx) = L::link(cap);
                stages.spawn(
                    &name("sink"),
                    plan.core(0),
                    Self::sink(rx, Arc::clone(&sinks), 0),
                );
                let mut txs: Vec<L::Tx> = (1..t.producers())
                    .map(|_| L::clone_tx(&tx).expect("checked by supports"))
                    .collect();
                txs.push(tx);
                txs.into_iter().map(|tx| QueueTx::<L>(vec![tx])).collect()
            }
            Topology::Pipeline => {
                let (t1, r1) = L::link(cap);
                let (t2, r2) = L::link(cap);
                let (t3, r3) = L::link(cap);
                stages.spawn(&name("a"), plan.core(0), Self::forward(r1, t2));
                stages.spawn(&name("b"), plan.core(1), Self::forward(r2, t3));
                stages.spawn(
                    &name("sink"),
                    plan.core(2),
                    Self::sink(r3, Arc::clone(&sinks), 0),
                );
                vec![QueueTx::<L>(vec![t1])]
            }
            Topology::Multicast => {
                let mut txs = Vec::new();
                for i in 0..3 {
                    let (tx, rx) = L::link(cap);
                    stages.spawn(
                        &name(&format!("sink-{i}")),
                        plan.core(i),
                        Self::sink(rx, Arc::clone(&sinks), i),
                    );
                    txs.push(tx);
                }
                vec![QueueTx::<L>(txs)]
            }
            Topology::Diamond => {
                let (ta, ra) = L::link(cap);
                let (tb, rb) = L::link(cap);
                let (tac, rac) = L::link(cap);
                let (tbc, rbc) = L::link(cap);
                stages.spawn(&name("a"), plan.core(0), Self::forward(ra, tac));
                stages.spawn(&name("b"), plan.core(1), Self::forward(rb, tbc));
                stages.spawn(
                    &name("sink"),
                    plan.core(2),
                    Self::join(rac, rbc, Arc::clone(&sinks)),
                );
                vec![QueueTx::<L>(vec![ta, tb])]
            }
        };
        visit.visit(producers, &sinks);
        stages.finish();
    }
}
