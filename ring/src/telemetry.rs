//! Telemetry cheap enough to leave on.
//!
//! Each stage thread is the only writer of its own counters (plain Relaxed load + store on
//! a cache line of its own, once per batch, never per event); readers take a
//! [`Telemetry`] snapshot of plain numbers whenever they like.

use std::sync::Mutex;

use crate::sync::{AtomicU64, CachePadded, Ordering};

/// Number of batch-size buckets: bucket `i` counts batches of `2^i ..= 2^(i+1) - 1` events.
pub const BATCH_BUCKETS: usize = 32;

/// Counters one stage thread writes.
#[derive(Debug)]
pub(crate) struct StageStats {
    counters: CachePadded<Counters>,
    /// The last failure, as text (written only on the failure path).
    last_failure: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Counters {
    events: AtomicU64,
    batches: AtomicU64,
    failures: AtomicU64,
    histogram: [AtomicU64; BATCH_BUCKETS],
}

/// Adds `n` to a counter that has one writer: no locked instruction needed.
#[inline(always)]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl StageStats {
    pub(crate) fn new() -> Self {
        Self {
            counters: CachePadded::new(Counters {
                events: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                histogram: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
            last_failure: Mutex::new(None),
        }
    }

    /// Records a handled batch of `size` events (called by the stage's only thread).
    #[inline(always)]
    pub(crate) fn batch(&self, size: u64) {
        let c = &*self.counters;
        bump(&c.events, size);
        bump(&c.batches, 1);
        let bucket = (63 - size.max(1).leading_zeros() as usize).min(BATCH_BUCKETS - 1);
        bump(&c.histogram[bucket], 1);
    }

    /// Records a failure (called by the stage's only thread).
    pub(crate) fn failure(&self, text: String) {
        bump(&self.counters.failures, 1);
        *crate::core::lock(&self.last_failure) = Some(text);
    }

    pub(crate) fn snapshot(&self, name: &str, sequence: u64, cursor: u64) -> StageTelemetry {
        let c = &*self.counters;
        StageTelemetry {
            name: name.to_owned(),
            sequence,
            lag: cursor.saturating_sub(sequence),
            events: c.events.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| c.histogram[i].load(Ordering::Relaxed)),
            failures: c.failures.load(Ordering::Relaxed),
            last_failure: crate::core::lock(&self.last_failure).clone(),
        }
    }
}

/// A snapshot of one stage (or one worker of a pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTelemetry {
    /// The stage's (or worker's) name.
    pub name: String,
    /// Events the stage has handled (for a pool worker: the lowest sequence it may still
    /// be working on).
    pub sequence: u64,
    /// How far the stage is behind the producer cursor.
    pub lag: u64,
    /// Events handled (including skipped failures).
    pub events: u64,
    /// Batches handled.
    pub batches: u64,
    /// Batch-size histogram: entry `i` counts batches of `2^i ..= 2^(i+1) - 1` events.
    pub batch_sizes: [u64; BATCH_BUCKETS],
    /// Failures seen (errors and panics, each retry counted).
    pub failures: u64,
    /// The last failure, as text.
    pub last_failure: Option<String>,
}

/// A snapshot of a whole ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// Sequences claimed by producers.
    pub cursor: u64,
    /// Times a producer found the ring full and had to wait (or failed).
    pub producer_stalls: u64,
    /// Every stage and pool worker, in the order they were added.
    pub stages: Vec<StageTelemetry>,
}
