//! Error types, one small enum per operation. Every variant that concerns a file names its
//! path, and every variant that concerns bytes inside a file names the offset. `Display`
//! texts are lowercase and stable.

use std::io;
use std::path::PathBuf;

/// Errors from opening a journal ([`Appender::open`](crate::Appender::open),
/// [`Reader::open`](crate::Reader::open)) and from [`verify`](crate::verify).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An operating-system call on `path` failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another appender holds the journal's lock file.
    #[error("journal is locked by another appender: {path}")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file in the journal directory that the journal did not create.
    #[error("foreign file in journal directory: {path}")]
    ForeignFile {
        /// The unexpected file.
        path: PathBuf,
    },
    /// A segment header is missing, truncated or inconsistent.
    #[error("bad segment header in {path} at offset {offset}: {reason}")]
    BadHeader {
        /// The segment file.
        path: PathBuf,
        /// Offset of the offending field.
        offset: u64,
        /// What is wrong, stable lowercase text.
        reason: &'static str,
    },
    /// A record that cannot be trusted, somewhere other than a torn tail.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// What is wrong, stable lowercase text.
        reason: &'static str,
    },
    /// The configuration cannot be used.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// Errors from appending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// An operating-system call on `path` failed (rolling, `msync`).
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The payload does not fit in an empty segment.
    #[error("record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload a segment can hold.
        max: usize,
    },
    /// An earlier I/O error left the appender unable to continue; reopen the journal.
    #[error("appender failed earlier and must be reopened")]
    Failed,
}

/// Errors from reading, seeking and tailing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An operating-system call on `path` failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment header is missing, truncated or inconsistent.
    #[error("bad segment header in {path} at offset {offset}: {reason}")]
    BadHeader {
        /// The segment file.
        path: PathBuf,
        /// Offset of the offending field.
        offset: u64,
        /// What is wrong, stable lowercase text.
        reason: &'static str,
    },
    /// A committed record failed validation.
    #[error("corrupt record in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// What is wrong, stable lowercase text.
        reason: &'static str,
    },
    /// The requested sequence was removed by retention.
    #[error("sequence {sequence} was removed; the first available is {first_available}")]
    SequenceRemoved {
        /// The sequence asked for.
        sequence: u64,
        /// The first sequence still in the journal.
        first_available: u64,
    },
}

/// Errors from named cursors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// An operating-system call on `path` failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Cursor names are 1 to 64 characters of `[A-Za-z0-9_-]`.
    #[error("invalid cursor name: {0:?}")]
    InvalidName(String),
    /// The cursor file exists but does not hold a valid position.
    #[error("corrupt cursor file {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The cursor file.
        path: PathBuf,
        /// Offset of the offending field.
        offset: u64,
        /// What is wrong, stable lowercase text.
        reason: &'static str,
    },
}

/// Errors from [`Cursor::commit_with`](crate::Cursor::commit_with): either the consumer's own
/// processing failed (the cursor did not move) or saving the position failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E> {
    /// The consumer's closure returned an error; the saved position is unchanged.
    #[error("consumer failed before commit")]
    Consumer(#[source] E),
    /// Saving the position failed after the consumer succeeded.
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// Errors from retention.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// An operating-system call on `path` failed; segments before it were already handled.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Where something happened in a journal: internal, turned into the public enums above.
#[derive(Debug)]
pub(crate) enum Fault {
    Io(PathBuf, io::Error),
    BadHeader(PathBuf, u64, &'static str),
    Foreign(PathBuf),
}

impl Fault {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Fault {
        let path = path.into();
        move |e| Fault::Io(path, e)
    }
}

impl From<Fault> for OpenError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Io(path, source) => OpenError::Io { path, source },
            Fault::BadHeader(path, offset, reason) => OpenError::BadHeader {
                path,
                offset,
                reason,
            },
            Fault::Foreign(path) => OpenError::ForeignFile { path },
        }
    }
}

impl From<Fault> for ReadError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Io(path, source) => ReadError::Io { path, source },
            Fault::BadHeader(path, offset, reason) => ReadError::BadHeader {
                path,
                offset,
                reason,
            },
            Fault::Foreign(path) => ReadError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "foreign file"),
            },
        }
    }
}

impl From<Fault> for AppendError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Io(path, source) => AppendError::Io { path, source },
            Fault::BadHeader(path, _, reason) => AppendError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, reason),
            },
            Fault::Foreign(path) => AppendError::Io {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "foreign file"),
            },
        }
    }
}
