//! Segmented memory-mapped append-only journal (work in progress).
