//! peregrine: the facade crate. Re-exports the ring, journal and reactor crates.
pub use peregrine_journal as journal;
pub use peregrine_reactor as reactor;
pub use peregrine_ring as ring;
