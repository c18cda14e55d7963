//! Retention: removing or archiving whole segments from the head of the journal.
//!
//! Only whole segments go, oldest first, and never the segment the appender writes, so the
//! journal stays a contiguous range of sequences. A reader that is still reading a removed
//! segment is unaffected: it holds its own descriptor and mapping, and on Linux an unlinked
//! (or renamed) file stays readable until the last of those is closed. A reader that later
//! needs a removed segment gets [`ReadError::SequenceRemoved`](crate::ReadError::SequenceRemoved).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use crate::appender::Appender;
use crate::catalog;
use crate::error::{Fault, RetentionError};

/// What happens to segments that retention takes out of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionAction {
    /// Unlink them.
    Delete,
    /// Move them into this directory (created if missing; must be on the same file system).
    /// `archive` inside the journal directory is recognised as the journal's own.
    Archive(PathBuf),
}

/// Which segments retention takes out of the journal.
///
/// ```
/// use peregrine_journal::{Retention, RetentionAction};
///
/// let policy = Retention::delete().below_sequence(1_000_000).max_total_bytes(8 << 30);
/// assert_eq!(policy.action(), &RetentionAction::Delete);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    below_sequence: Option<u64>,
    max_total_bytes: Option<u64>,
    action: RetentionAction,
}

impl Retention {
    /// A policy that deletes; add limits with the builder methods.
    pub fn delete() -> Retention {
        Retention {
            below_sequence: None,
            max_total_bytes: None,
            action: RetentionAction::Delete,
        }
    }

    /// A policy that moves segments into `dir`; add limits with the builder methods.
    pub fn archive(dir: impl Into<PathBuf>) -> Retention {
        Retention {
            action: RetentionAction::Archive(dir.into()),
            ..Retention::delete()
        }
    }

    /// Take out segments whose records all have sequences below `sequence`.
    #[must_use]
    pub fn below_sequence(mut self, sequence: u64) -> Retention {
        self.below_sequence = Some(sequence);
        self
    }

    /// Take out the oldest segments until the journal's files total at most `bytes`.
    #[must_use]
    pub fn max_total_bytes(mut self, bytes: u64) -> Retention {
        self.max_total_bytes = Some(bytes);
        self
    }

    /// What is done with the segments taken out.
    pub fn action(&self) -> &RetentionAction {
        &self.action
    }
}

/// What [`Appender::retain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Segments deleted or archived.
    pub segments_removed: usize,
    /// Their total size in bytes.
    pub bytes_removed: u64,
    /// The first sequence left in the journal.
    pub first_sequence: u64,
}

impl Appender {
    /// Applies `policy`: deletes or archives the oldest whole segments it selects, never the
    /// segment being written. Safe while readers read the segments it removes (see the
    /// module documentation of retention in the crate docs).
    ///
    /// # Errors
    ///
    /// [`RetentionError::Io`] naming the file that could not be removed or moved, or a
    /// segment whose header could not be read; segments before it were already handled.
    pub fn retain(&mut self, policy: &Retention) -> Result<RetentionReport, RetentionError> {
        let dir = self.dir().to_path_buf();
        let to_error = |f: Fault| match f {
            Fault::Io(path, source) => RetentionError::Io { path, source },
            Fault::BadHeader(path, _, reason) => RetentionError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, reason),
            },
            Fault::Foreign(path) => RetentionError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "foreign file"),
            },
        };
        let listing = catalog::list(&dir).map_err(to_error)?;
        let segments = &listing.segments;
        let mut total: u64 = segments.iter().map(|s| s.header.segment_size).sum();
        let mut remove = 0;
        // Never the last segment: the appender writes it.
        while remove + 1 < segments.len() {
            let below = policy
                .below_sequence
                .is_some_and(|seq| segments[remove + 1].header.base_sequence <= seq);
            let over = policy.max_total_bytes.is_some_and(|max| total > max);
            if !(below || over) {
                break;
            }
            total -= segments[remove].header.segment_size;
            remove += 1;
        }
        let mut report = RetentionReport {
            first_sequence: segments.first().map_or(0, |s| s.header.base_sequence),
            ..RetentionReport::default()
        };
        if let RetentionAction::Archive(archive) = &policy.action {
            if remove > 0 {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(archive)
                    .map_err(|source| RetentionError::Io {
                        path: archive.clone(),
                        source,
                    })?;
            }
        }
        for segment in &segments[..remove] {
            let result = match &policy.action {
                RetentionAction::Delete => fs::remove_file(&segment.path),
                RetentionAction::Archive(archive) => {
                    let name = segment.path.file_name().expect("segment paths have names");
                    fs::rename(&segment.path, archive.join(name))
                }
            };
            result.map_err(|source| RetentionError::Io {
                path: segment.path.clone(),
                source,
            })?;
            report.segments_removed += 1;
            report.bytes_removed += segment.header.segment_size;
        }
        if let Some(first) = segments.get(remove) {
            report.first_sequence = first.header.base_sequence;
        }
        if remove > 0 {
            catalog::sync_dir(&dir).map_err(to_error)?;
        }
        Ok(report)
    }
}
