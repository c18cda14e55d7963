//! Shared code for the peregrine benchmarks: run settings, the peers, the scenarios and
//! the machine-readable result lines that `benches/run.sh` turns into BENCHMARKS.md.
//!
//! Every scenario is written once and run for peregrine and each peer that can express it:
//!
//! - [`link::Link`] is a one-way, non-blocking channel between two threads (peregrine and the
//!   `disruptor` crate through a producer and a poller; rtrb, crossbeam `ArrayQueue`,
//!   crossbeam-channel and std `sync_channel`; and the cache-line [`link::Floor`]). The
//!   latency bench is written once over it, and so are the queue versions of every
//!   throughput topology ([`topology::Queued`]).
//! - [`topology::Peer`] builds a throughput [`topology::Topology`] (unicast, pipeline,
//!   multicast, diamond, three producers) and hands its producers to a
//!   [`topology::Visit`], the measurement written once in `benches/throughput.rs`.
//!
//! Figures are always reported next to a peer or a floor measured in the same run: the
//! machines these run on are shared and noisy, so only ratios travel.

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

pub mod link;
pub mod topology;

use std::fs::OpenOptions;
use std::io::Write;

/// Environment variable that selects quick mode (`1`), as `--quick` does.
pub const QUICK_ENV: &str = "PEREGRINE_BENCH_QUICK";
/// Environment variable naming a file that result lines are appended to (tab-separated).
pub const OUT_ENV: &str = "PEREGRINE_BENCH_OUT";

/// True when the bench was asked to run in a few seconds: `--quick` on the command line
/// (after `--`) or `PEREGRINE_BENCH_QUICK=1`.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick") || std::env::var(QUICK_ENV).is_ok_and(|v| v == "1")
}

/// The cores this process may run on (read once, before any thread pins itself).
pub fn cores() -> &'static [usize] {
    peregrine_ring::affinity::allowed_cores()
}

/// Pins the calling thread to `core`; returns whether the operating system accepted.
pub fn pin(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Runs `f` with the calling thread allowed on every core in [`cores`], then restores the
/// thread's own affinity mask.
///
/// Libraries that check a pinning request against the calling thread's mask (the
/// `disruptor` crate does) would otherwise refuse every core but the one a pinned bench
/// thread sits on.
pub fn with_all_cores<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: `cpu_set_t` is a plain bit set; all zeroes is the empty set.
    let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `saved` is a valid, writable `cpu_set_t` of `size` bytes; pid 0 is this thread.
    let have_saved = unsafe { libc::sched_getaffinity(0, size, &mut saved) } == 0;
    // SAFETY: as above, all zeroes is the empty set.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores() {
        // SAFETY: `CPU_SET` writes one bit of a valid set; core ids come from the mask
        // the kernel reported, so they fit in it.
        unsafe { libc::CPU_SET(c, &mut all) };
    }
    // SAFETY: `all` is a valid `cpu_set_t` of `size` bytes; pid 0 is this thread.
    unsafe { libc::sched_setaffinity(0, size, &all) };
    let result = f();
    if have_saved {
        // SAFETY: `saved` was filled by `sched_getaffinity` above.
        unsafe { libc::sched_setaffinity(0, size, &saved) };
    }
    result
}

/// Appends one tab-separated result line to the file named by `PEREGRINE_BENCH_OUT`, if set.
///
/// The first field says what kind of line it is (`throughput-note`, `latency`, ...);
/// `benches/run.sh` reads them back. Write failures are reported on stderr and otherwise
/// ignored: a bench must never fail because its report could not be written.
pub fn emit(fields: &[&str]) {
    let Ok(path) = std::env::var(OUT_ENV) else {
        return;
    };
    let line = fields
        .iter()
        .map(|f| f.replace(['\t', '\n'], " "))
        .collect::<Vec<_>>()
        .join("\t");
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("could not append to {path}: {e}");
    }
}
