//! loom models; compiled only with `--cfg loom`.
