//! Shared code for the example programs.
