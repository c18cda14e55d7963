//! Core pinning.
//!
//! The set of cores the process may use is read once, the first time it is needed: after a
//! thread pins itself its own affinity mask shrinks to one core, so reading the mask again
//! from a pinned thread would wrongly report the other cores as forbidden.

use std::sync::OnceLock;

/// The cores this process may run on, as read (once) from its affinity mask.
pub fn allowed_cores() -> &'static [usize] {
    static ALLOWED: OnceLock<Vec<usize>> = OnceLock::new();
    ALLOWED.get_or_init(|| {
        let mut cores: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        cores.sort_unstable();
        if cores.is_empty() {
            // The mask could not be read; assume every online core is usable.
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores = (0..n).collect();
        }
        cores
    })
}

/// Pins the calling thread to `core`; `false` if the operating system refused.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn pin_current(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}
