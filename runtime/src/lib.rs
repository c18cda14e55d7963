//! peregrine: a lock-free, thread-per-core event runtime.
//!
//! This is the one dependency a user adds. It re-exports the ring
//! ([`ring`]: `peregrine-ring`), the journal ([`journal`]: `peregrine-journal`) and the
//! reactor ([`reactor`]: `peregrine-reactor`), and adds the composition: the LMAX
//! [`pipeline`] (network in, journal and decode in parallel, one business-logic thread,
//! network out, with recovery before the network opens), [`placement`] of stages on
//! cores, the journal stage, snapshots and recovery ([`journaled`]), [`metrics`] in
//! Prometheus text format, and graceful shutdown on [`signals`].

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

pub use peregrine_journal as journal;
pub use peregrine_reactor as reactor;
pub use peregrine_ring as ring;

pub mod journaled;
pub mod metrics;
pub mod pipeline;
pub mod placement;
pub mod signals;
