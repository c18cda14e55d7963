//! Errors, one small enum per operation, with stable lowercase messages.

use thiserror::Error;

/// Why a ring or one of its stages could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The capacity is zero or not a power of two.
    #[error("capacity {capacity} is not a power of two")]
    CapacityNotPowerOfTwo {
        /// The capacity asked for.
        capacity: usize,
    },
    /// A stage named a dependency that belongs to another ring's builder.
    #[error("stage `{stage}` depends on a stage of another ring")]
    ForeignStage {
        /// The stage being added.
        stage: String,
    },
    /// Two stages share a name (names label threads and reports, so they must be unique).
    #[error("a stage named `{name}` already exists")]
    DuplicateStageName {
        /// The repeated name.
        name: String,
    },
    /// A maximum batch size of zero.
    #[error("stage `{stage}` has a maximum batch size of zero")]
    ZeroMaxBatch {
        /// The stage.
        stage: String,
    },
    /// The graph has no stage and no poller, so nothing would ever free a slot.
    #[error("the ring has no consumer: add a stage or a poller")]
    NoConsumer,
    /// A stage asked to be pinned to a core this process may not run on.
    #[error("stage `{stage}` asks for core {core}, which this process may not use (allowed: {allowed:?})")]
    CoreUnavailable {
        /// The stage.
        stage: String,
        /// The core asked for.
        core: usize,
        /// The cores the process may use.
        allowed: Vec<usize>,
    },
    /// More busy-spinning stage threads than cores the process may use.
    #[error("{threads} busy-spinning stage threads exceed the {cores} cores this process may use; use a blocking or phased strategy, or allow oversubscription")]
    Oversubscribed {
        /// Busy stage threads asked for.
        threads: usize,
        /// Cores the process may use.
        cores: usize,
    },
    /// An exclusive stage runs in parallel with another stage that reads the same events.
    #[error("exclusive stage `{stage}` is not alone with its events: `{parallel_with}` is neither upstream nor downstream of it")]
    NotExclusive {
        /// The exclusive stage.
        stage: String,
        /// A stage that may read the events while it writes them.
        parallel_with: String,
    },
    /// A work pool with no worker.
    #[error("pool `{stage}` has no worker")]
    EmptyPool {
        /// The pool.
        stage: String,
    },
    /// The operating system refused to start a stage thread.
    #[error("could not start the thread of stage `{stage}`: {reason}")]
    Spawn {
        /// The stage.
        stage: String,
        /// The operating system's reason.
        reason: String,
    },
}

/// Why a publish that may wait did not publish.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The ring was halted (by [`Ring::halt`](crate::Ring::halt), a failed stage, or the
    /// end of a shutdown); nothing will consume further events.
    #[error("ring is halted")]
    Halted,
    /// A batch larger than the ring can ever hold.
    #[error("batch of {requested} exceeds ring capacity {capacity}")]
    BatchTooLarge {
        /// Slots asked for.
        requested: u64,
        /// Ring capacity.
        capacity: u64,
    },
    /// The ring is shutting down ([`Ring::shutdown`](crate::Ring::shutdown)): stages are
    /// draining what was published before and take nothing new.
    #[error("ring is shut down")]
    Closed,
    /// The ring was full and the producer policy is [`WhenFull::Fail`](crate::WhenFull::Fail).
    #[error("ring is full")]
    Full,
    /// The ring stayed full for the whole timeout.
    #[error("timed out waiting for room in the ring")]
    Timeout,
}

/// Why a publish that never waits did not publish.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryPublishError {
    /// No room: the slowest stage is a whole ring behind. Nothing was written; try again
    /// later.
    #[error("ring is full")]
    Full,
    /// The ring was halted; nothing will consume further events.
    #[error("ring is halted")]
    Halted,
    /// The ring is shutting down; stages take nothing new.
    #[error("ring is shut down")]
    Closed,
    /// A batch larger than the ring can ever hold.
    #[error("batch of {requested} exceeds ring capacity {capacity}")]
    BatchTooLarge {
        /// Slots asked for.
        requested: u64,
        /// Ring capacity.
        capacity: u64,
    },
}

/// Progress of one stage, as reported by [`Ring::progress`](crate::Ring::progress) and by a
/// shutdown that timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageProgress {
    /// The stage's name.
    pub name: String,
    /// Events the stage has handled.
    pub sequence: u64,
    /// Events published but not yet handled by the stage.
    pub remaining: u64,
}

/// Why [`Ring::shutdown`](crate::Ring::shutdown) did not drain cleanly.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The timeout passed before every stage drained; the ring was halted and the stages
    /// that had not finished are listed with what they left unhandled. Their threads are
    /// detached, not joined.
    #[error("shutdown timed out with {} unhandled event(s) across {} stage(s)", left.iter().map(|s| s.remaining).sum::<u64>(), left.len())]
    Timeout {
        /// The stages still running when the timeout passed.
        left: Vec<StageProgress>,
    },
    /// A stage failed under the halt policy (an error or a panic); the ring halted.
    #[error("stage `{stage}` failed: {failure}")]
    StageFailed {
        /// The stage.
        stage: String,
        /// The failure, as text (`error: ...` or `panic: ...`).
        failure: String,
    },
}
