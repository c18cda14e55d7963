//! loom models of peregrine's concurrent protocols.
//!
//! Everything here is built only with `RUSTFLAGS="--cfg loom -C debug-assertions"`; without
//! `--cfg loom` the package is empty, so `cargo test --workspace` does not pay for it. The
//! models live in `tests/models.rs` and `tests/stamped.rs`; this library holds what they
//! share: how a model is bounded, a consumer loop that lets loom schedule the producers,
//! and the scenarios run against both kinds of single-producer ring.
//!
//! ```text
//! RUSTFLAGS="--cfg loom -C debug-assertions" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p peregrine-loom-tests --release
//! ```
//!
//! Each model is also built once per deliberate bug of the ring (`--cfg
//! peregrine_mutation="NAME"`, see `run-mutations.sh`); the model that guards against that
//! bug is then expected to fail, and is marked `should_panic` under that cfg.
//!
//! Debug assertions are required: the ring checks its invariants (sequences never go
//! backwards, a single producer publishes in order) with `debug_assert!`, and the models
//! rely on those checks too. `--release` alone turns them off, hence the explicit
//! `-C debug-assertions`.

#[cfg(all(loom, not(debug_assertions)))]
compile_error!(
    "peregrine-loom-tests needs debug assertions (the ring checks its invariants with \
     debug_assert!); `--release` turns them off, so add `-C debug-assertions`: \
     RUSTFLAGS=\"--cfg loom -C debug-assertions\" cargo test -p peregrine-loom-tests --release"
);

#[cfg(loom)]
pub use model::{check, consume, drain, Hold};

/// Scenarios that run against more than one kind of single-producer ring (the classic one
/// and the stamped one): each model names its ring by a constructor.
#[cfg(loom)]
pub mod scenarios {
    use loom::thread;
    use peregrine_ring::{PollState, RingBuilder, Sequencer, WaitStrategy};

    use crate::{check, drain, Hold};

    /// Builds a ring of `u64` with the given capacity.
    pub type Make<S> = fn(usize) -> RingBuilder<u64, S>;

    /// The value a producer writes for sequence `s`: never the slots' initial `0`, so a
    /// consumer that reads a slot nobody wrote yet (or one already overwritten) notices.
    pub fn value(s: u64) -> u64 {
        1000 + s
    }

    /// Two slots, four events published one by one: the producer wraps and must wait for
    /// the consumer. The consumer must see exactly the events published, in order, each
    /// with its own sequence (loom checks that every slot read follows its write). The
    /// fourth claim comes after the producer has looked at the consumer once, so a single
    /// producer that found it behind claims from the cursor (`SingleLocal`'s streaming).
    pub fn wraps_without_overwriting<S: Sequencer>(make: Make<S>) {
        check(3, move || {
            let mut b = make(2).wait_strategy(WaitStrategy::busy_spin());
            let id = b.poller("consumer").add().unwrap();
            let (mut producer, mut ring) = b.build().unwrap();
            let mut poller = ring.take_poller(id).unwrap();
            let t = thread::spawn(move || {
                for s in 0..4 {
                    assert_eq!(producer.publish(|e| *e = value(s)).unwrap(), s);
                }
            });
            let seen = drain(&mut poller, |_| {});
            t.join().unwrap();
            let expected: Vec<_> = (0..4).map(|s| (s, value(s))).collect();
            assert_eq!(seen, expected);
        });
    }

    /// Two batches of `batch` events through a ring of `capacity` slots: every poll that
    /// finds events must find whole batches, each event as written.
    pub fn batches_are_all_or_nothing<S: Sequencer>(make: Make<S>, capacity: usize, batch: u64) {
        check(3, move || {
            let mut b = make(capacity).wait_strategy(WaitStrategy::busy_spin());
            let id = b.poller("consumer").add().unwrap();
            let (mut producer, mut ring) = b.build().unwrap();
            let mut poller = ring.take_poller(id).unwrap();
            let t = thread::spawn(move || {
                for k in 0..2 {
                    let range = producer
                        .publish_batch(batch as usize, |e, s| *e = value(s))
                        .unwrap();
                    assert_eq!(range, k * batch..(k + 1) * batch);
                }
            });
            let seen = drain(&mut poller, |n| {
                assert_eq!(n % batch, 0, "saw {n} events: part of a batch was visible");
            });
            t.join().unwrap();
            let expected: Vec<_> = (0..2 * batch).map(|s| (s, value(s))).collect();
            assert_eq!(seen, expected);
        });
    }

    /// The blocking strategy through a whole ring: two slots, three events, a consumer that
    /// parks in `poll_wait` while the ring is empty and a producer that parks while it is
    /// full. The producer is kept alive until the consumer is done, so the close cannot
    /// hide a lost wake-up: neither side may park for ever (loom reports a deadlock), and
    /// the consumer handles the three events in order, then sees the ring drained.
    pub fn blocking_ring_loses_no_wakeup<S: Sequencer>(make: Make<S>) {
        check(3, move || {
            let mut b = make(2).wait_strategy(WaitStrategy::blocking());
            let id = b.poller("consumer").add().unwrap();
            let (producer, ring) = b.build().unwrap();
            let (mut producer, mut ring) = (Hold::new(producer), Hold::new(ring));
            let mut poller = Hold::new(ring.take_poller(id).unwrap());
            let t = thread::spawn(move || {
                for s in 0..3 {
                    producer.publish(|e| *e = value(s)).unwrap();
                }
                producer // dropped only after the consumer has everything
            });
            let mut seen = Vec::new();
            while seen.len() < 3 {
                match poller.poll_wait(|e, s, _| seen.push((s, *e))) {
                    PollState::Events(n) => assert!(n > 0),
                    other => panic!("open ring with events to come returned {other:?}"),
                }
            }
            drop(t.join().unwrap());
            assert_eq!(poller.poll_wait(|_, _, _| {}), PollState::Drained);
            let expected: Vec<_> = (0..3).map(|s| (s, value(s))).collect();
            assert_eq!(seen, expected);
        });
    }

    /// The last producer drops (closing the ring) right after publishing three events into
    /// two slots, racing with a polling consumer: the consumer must report `Drained` only
    /// after handling all three, in order.
    pub fn close_racing_publish_drains<S: Sequencer>(make: Make<S>) {
        check(3, move || {
            let mut b = make(2).wait_strategy(WaitStrategy::busy_spin());
            let id = b.poller("consumer").add().unwrap();
            let (mut producer, mut ring) = b.build().unwrap();
            let mut poller = ring.take_poller(id).unwrap();
            let t = thread::spawn(move || {
                for s in 0..3 {
                    producer.publish(|e| *e = value(s)).unwrap();
                }
                // `producer` drops here: the last one, so the ring closes.
            });
            let seen = drain(&mut poller, |_| {});
            t.join().unwrap();
            let expected: Vec<_> = (0..3).map(|s| (s, value(s))).collect();
            assert_eq!(seen, expected);
        });
    }
}

#[cfg(loom)]
mod model {
    use peregrine_ring::{PollState, Poller, Sequencer};

    /// Scheduling points allowed in one execution before loom reports a livelock.
    const MAX_BRANCHES: usize = 50_000;

    /// Runs `f` under loom, exploring every interleaving with at most `preemptions`
    /// preemptions per execution (`LOOM_MAX_PREEMPTIONS` in the environment overrides it).
    ///
    /// The bound keeps each model to seconds or minutes; loom's authors report that almost
    /// every real bug shows up within two or three preemptions.
    pub fn check<F>(preemptions: usize, f: F)
    where
        F: Fn() + Send + Sync + 'static,
    {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(preemptions);
        }
        if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
            // One execution of a model is a few thousand scheduling points (every atomic
            // access is one); loom's default of 1,000 is meant for smaller structures.
            builder.max_branches = MAX_BRANCHES;
        }
        let executions = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = std::sync::Arc::clone(&executions);
        let start = std::time::Instant::now();
        builder.check(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f();
        });
        eprintln!(
            "{}: {} executions in {:.1?} (preemption bound {})",
            std::thread::current().name().unwrap_or("model"),
            executions.load(std::sync::atomic::Ordering::Relaxed),
            start.elapsed(),
            builder.preemption_bound.unwrap_or(preemptions),
        );
    }

    /// Owns a value for a model and drops it normally, except while the thread unwinds.
    ///
    /// When loom finds a deadlock it panics with no thread active, then unwinds every
    /// model thread; dropping a ring, producer or loom `Arc` then calls into loom, which
    /// panics again and aborts the process, so a model that is *expected* to deadlock (in
    /// a mutation test) would crash instead of failing. Models hold such values in a
    /// `Hold`, which leaks them during unwinding instead.
    #[derive(Debug)]
    pub struct Hold<T>(Option<T>);

    impl<T> Hold<T> {
        /// Holds `value`.
        pub fn new(value: T) -> Self {
            Self(Some(value))
        }

        /// Gives the value back (to be dropped normally).
        pub fn into_inner(mut self) -> T {
            self.0
                .take()
                .expect("a Hold always holds a value until into_inner")
        }
    }

    impl<T> std::ops::Deref for Hold<T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0
                .as_ref()
                .expect("a Hold always holds a value until into_inner")
        }
    }

    impl<T> std::ops::DerefMut for Hold<T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0
                .as_mut()
                .expect("a Hold always holds a value until into_inner")
        }
    }

    impl<T> Drop for Hold<T> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                std::mem::forget(self.0.take());
            }
        }
    }

    /// Polls `poller` with [`Poller::poll_wait`] (so it waits by the ring's strategy:
    /// spinning, which yields to loom, or parking) until the ring is drained, calling
    /// `on_event(event, sequence)` for each event; `on_batch` sees the size of each batch.
    ///
    /// # Panics
    ///
    /// If the ring halts: the models that use this never halt it.
    pub fn consume<E, S: Sequencer>(
        poller: &mut Poller<E, S>,
        mut on_event: impl FnMut(&E, u64),
        mut on_batch: impl FnMut(u64),
    ) {
        loop {
            match poller.poll_wait(|e, s, _| on_event(e, s)) {
                PollState::Events(n) => on_batch(n),
                PollState::Idle => unreachable!("loom models set no timeout"),
                PollState::Drained => return,
                PollState::Halted => panic!("the ring halted, but nothing halts it"),
            }
        }
    }

    /// [`consume`] that returns every `(sequence, event)` handled, in order.
    ///
    /// # Panics
    ///
    /// If the ring halts: the models that use this never halt it.
    pub fn drain<E: Copy, S: Sequencer>(
        poller: &mut Poller<E, S>,
        on_batch: impl FnMut(u64),
    ) -> Vec<(u64, E)> {
        let mut seen = Vec::new();
        consume(poller, |e, s| seen.push((s, *e)), on_batch);
        seen
    }
}
