//! Shared scenario code for the benchmarks.
