//! Shared code for the example programs.

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

pub mod book;
pub mod echo;
pub mod engine;
