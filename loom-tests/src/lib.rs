//! loom models of peregrine's concurrent protocols.
//!
//! Everything here is built only with `RUSTFLAGS="--cfg loom -C debug-assertions"`; without
//! `--cfg loom` the package is empty, so `cargo test --workspace` does not pay for it. The
//! models live in `tests/models.rs`; this library holds what they share: how a model is
//! bounded, and a consumer loop that lets loom schedule the producers.
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
