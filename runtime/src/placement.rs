//! Placement: which core each stage thread runs on.
//!
//! The machine's shape is read once into a [`Topology`] (plain data, so tests build fake
//! ones): the online cores, the cores this process may use, and which cores share a last-
//! level (L3) cache. [`place`] then puts each stage on its own core, keeping a stage next to
//! the stage it depends on (same L3 group, so the handoff stays in cache), honouring
//! explicit core choices, and refusing a plan that busy-spins more threads than there are
//! cores unless asked to.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The cores of a machine as the scheduler sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Cores that are online.
    pub online: Vec<usize>,
    /// Cores this process may run on (its affinity mask), a subset of `online`.
    pub allowed: Vec<usize>,
    /// Groups of cores sharing a last-level cache; every online core is in exactly one.
    pub cache_groups: Vec<Vec<usize>>,
}

/// Why the topology could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A sysfs file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// A CPU list (such as `0-3,8`) was malformed.
    #[error("malformed cpu list {text:?} in {path}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content.
        text: String,
    },
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cores = BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                cores.extend(a..=b);
            }
            None => {
                cores.insert(part.trim().parse().ok()?);
            }
        }
    }
    Some(cores.into_iter().collect())
}

impl Topology {
    /// Reads this machine: sysfs under `/sys/devices/system/cpu` and the process's
    /// affinity mask (read once per process; see [`peregrine_ring::affinity`]).
    ///
    /// # Errors
    ///
    /// [`TopologyError`] if sysfs cannot be read or parsed.
    pub fn detect() -> Result<Self, TopologyError> {
        let allowed = peregrine_ring::affinity::allowed_cores().to_vec();
        Self::from_sysfs(Path::new("/sys/devices/system/cpu"), allowed)
    }

    /// Reads a sysfs-shaped tree at `root` (`online`, `cpuN/cache/indexK/{level,
    /// shared_cpu_list}`), with `allowed` as the affinity mask. Cores without cache
    /// information form groups of one.
    ///
    /// # Errors
    ///
    /// [`TopologyError`] if `root/online` cannot be read or a list is malformed.
    pub fn from_sysfs(root: &Path, allowed: Vec<usize>) -> Result<Self, TopologyError> {
        let read = |path: PathBuf| -> Result<String, TopologyError> {
            fs::read_to_string(&path).map_err(|source| TopologyError::Read { path, source })
        };
        let list = |path: PathBuf| -> Result<Vec<usize>, TopologyError> {
            let text = read(path.clone())?;
            parse_cpu_list(&text).ok_or(TopologyError::Malformed { path, text })
        };
        let online = list(root.join("online"))?;
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &cpu in &online {
            if groups.iter().any(|g| g.contains(&cpu)) {
                continue;
            }
            let shared = last_level_cache(root, cpu, &list)?
                .map(|g| {
                    g.into_iter()
                        .filter(|c| online.contains(c))
                        .collect::<Vec<_>>()
                })
                .filter(|g| g.contains(&cpu))
                .unwrap_or_else(|| vec![cpu]);
            groups.push(shared);
        }
        let allowed = allowed.into_iter().filter(|c| online.contains(c)).collect();
        Ok(Self {
            online,
            allowed,
            cache_groups: groups,
        })
    }

    /// The cache group of `core`.
    pub fn group_of(&self, core: usize) -> Option<usize> {
        self.cache_groups.iter().position(|g| g.contains(&core))
    }
}

/// The highest-level cache's `shared_cpu_list` for `cpu`, if sysfs has one.
fn last_level_cache(
    root: &Path,
    cpu: usize,
    list: &dyn Fn(PathBuf) -> Result<Vec<usize>, TopologyError>,
) -> Result<Option<Vec<usize>>, TopologyError> {
    let cache = root.join(format!("cpu{cpu}/cache"));
    let Ok(entries) = fs::read_dir(&cache) else {
        return Ok(None);
    };
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in entries.flatten() {
        let dir = entry.path();
        let level = fs::read_to_string(dir.join("level"))
            .ok()
            .and_then(|l| l.trim().parse::<u32>().ok());
        if let Some(level) = level {
            if best.as_ref().is_none_or(|(b, _)| level > *b) {
                best = Some((level, dir));
            }
        }
    }
    match best {
        Some((_, dir)) => list(dir.join("shared_cpu_list")).map(Some),
        None => Ok(None),
    }
}

/// A stage to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageNeed {
    /// The stage's name (for errors).
    pub name: String,
    /// Indices (into the same slice) of the stages it is gated on.
    pub after: Vec<usize>,
    /// True if it busy-spins (so it needs a core of its own).
    pub busy: bool,
    /// An explicit core, overriding placement.
    pub core: Option<usize>,
}

/// Why a plan was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementError {
    /// An explicit core is not one this process may use.
    #[error("stage `{stage}` asks for core {core}, which this process may not use (allowed: {allowed:?})")]
    CoreUnavailable {
        /// The stage.
        stage: String,
        /// The core.
        core: usize,
        /// The cores the process may use.
        allowed: Vec<usize>,
    },
    /// Two stages ask for the same core explicitly and one of them busy-spins.
    #[error("stages `{first}` and `{second}` both ask for core {core} and one busy-spins")]
    SharedBusyCore {
        /// One stage.
        first: String,
        /// The other.
        second: String,
        /// The core.
        core: usize,
    },
    /// More busy-spinning stages than cores the process may use.
    #[error("{busy} busy-spinning stages but only {cores} usable cores; use a blocking or phased strategy, or allow oversubscription")]
    Oversubscribed {
        /// Busy stages.
        busy: usize,
        /// Usable cores.
        cores: usize,
    },
}

/// Places `stages` on the `topology`: returns a core for each stage, or `None` for a stage
/// left to the scheduler (when cores run out, non-busy stages are left unpinned).
///
/// Each stage goes, in order, to a free core in the cache group of the first stage it
/// depends on (or, for a first stage, the group with the most free cores), so a pipeline
/// stays inside one L3 where it fits.
///
/// # Errors
///
/// [`PlacementError`] for an unusable explicit core, a busy core shared, or more busy
/// stages than usable cores (unless `allow_oversubscription`).
pub fn place(
    topology: &Topology,
    stages: &[StageNeed],
    allow_oversubscription: bool,
) -> Result<Vec<Option<usize>>, PlacementError> {
    let usable = &topology.allowed;
    let busy = stages.iter().filter(|s| s.busy).count();
    if busy > usable.len() && !allow_oversubscription {
        return Err(PlacementError::Oversubscribed {
            busy,
            cores: usable.len(),
        });
    }
    let mut plan: Vec<Option<usize>> = vec![None; stages.len()];
    let mut taken: Vec<(usize, usize)> = Vec::new(); // (core, stage)
    for (i, s) in stages.iter().enumerate() {
        if let Some(core) = s.core {
            if !usable.contains(&core) {
                return Err(PlacementError::CoreUnavailable {
                    stage: s.name.clone(),
                    core,
                    allowed: usable.clone(),
                });
            }
            if let Some(&(_, other)) = taken.iter().find(|(c, _)| *c == core) {
                if s.busy || stages[other].busy {
                    return Err(PlacementError::SharedBusyCore {
                        first: stages[other].name.clone(),
                        second: s.name.clone(),
                        core,
                    });
                }
            }
            taken.push((core, i));
            plan[i] = Some(core);
        }
    }
    let is_free = |core: &usize, taken: &[(usize, usize)]| !taken.iter().any(|(c, _)| c == core);
    for (i, s) in stages.iter().enumerate() {
        if plan[i].is_some() {
            continue;
        }
        let preferred_group = s
            .after
            .iter()
            .find_map(|&d| plan.get(d).copied().flatten())
            .and_then(|c| topology.group_of(c));
        let free_in = |g: usize, taken: &[(usize, usize)]| {
            topology.cache_groups[g]
                .iter()
                .copied()
                .filter(|c| usable.contains(c) && is_free(c, taken))
                .collect::<Vec<_>>()
        };
        let group = preferred_group
            .filter(|&g| !free_in(g, &taken).is_empty())
            .or_else(|| {
                (0..topology.cache_groups.len())
                    .max_by_key(|&g| (free_in(g, &taken).len(), std::cmp::Reverse(g)))
                    .filter(|&g| !free_in(g, &taken).is_empty())
            });
        if let Some(g) = group {
            let core = free_in(g, &taken)[0];
            taken.push((core, i));
            plan[i] = Some(core);
        }
        // No free core: a busy stage was allowed to oversubscribe, or a non-busy stage
        // shares; either way the scheduler decides.
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }
}
