//! The ring and the journal together: a stage that journals every event (one journal
//! commit per ring batch), a durable dead-letter sink, snapshots, and recovery by
//! snapshot + journal replay.
//!
//! ```
//! use peregrine::journaled::{recover, JournalStage, Snapshot, SnapshotStore};
//! use peregrine::journal::{Appender, Config};
//! use peregrine::ring::{single_producer, WaitStrategy};
//!
//! #[derive(Default)]
//! struct Total(u64);
//! impl Snapshot for Total {
//!     fn save(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.0.to_le_bytes()) }
//!     fn load(bytes: &[u8]) -> Result<Self, peregrine::ring::BoxError> {
//!         Ok(Total(u64::from_le_bytes(bytes.try_into()?)))
//!     }
//! }
//!
//! let dir = std::env::temp_dir().join(format!("peregrine-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let (appender, _report) = Appender::open(dir.join("journal"), Config::default().segment_size(1 << 20))?;
//! let mut b = single_producer(64, || 0u64)?.wait_strategy(WaitStrategy::blocking());
//! b.try_stage("journal", JournalStage::new(appender, |e: &u64, out: &mut Vec<u8>| {
//!     out.extend_from_slice(&e.to_le_bytes())
//! }))
//! .add()?;
//! let (mut p, _ring) = b.build()?;
//! for v in 1..=10 { p.publish(|e| *e = v)?; }
//! drop(p); // drains: everything is journaled
//!
//! // After a crash: rebuild the state by replaying the journal.
//! let snapshots = SnapshotStore::open(dir.join("snapshots"))?;
//! let recovered = recover(&dir.join("journal"), &snapshots, Total::default, |t, _seq, payload| {
//!     t.0 += u64::from_le_bytes(payload.try_into().unwrap());
//! })?;
//! assert_eq!((recovered.state.0, recovered.next_sequence), (55, 10));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use peregrine_journal::{AppendError, Appender, OpenError, ReadError, Reader};
use peregrine_ring::{BoxError, DeadLetterSink, Failure, TryEventHandler};
use thiserror::Error;

/// Turns an event into journal bytes.
pub trait Encode<E>: Send + 'static {
    /// Appends the encoding of `event` to `out`.
    fn encode(&mut self, event: &E, out: &mut Vec<u8>);
}

impl<E, F: FnMut(&E, &mut Vec<u8>) + Send + 'static> Encode<E> for F {
    fn encode(&mut self, event: &E, out: &mut Vec<u8>) {
        self(event, out)
    }
}

/// A ring stage that appends every event to a journal, committing once per ring batch
/// (at `end_of_batch`), so the journal's group commit follows the ring's natural batching.
///
/// Encoded events of a batch are gathered in one reusable buffer (no allocation once
/// warm) and appended with [`Appender::append_batch`]: a reader sees all of a batch or none.
pub struct JournalStage<E, C> {
    appender: Appender,
    codec: C,
    buffer: Vec<u8>,
    ends: Vec<usize>,
    event: PhantomData<fn(&E)>,
}

impl<E, C: Encode<E>> JournalStage<E, C> {
    /// A stage appending to `appender`, encoding with `codec`.
    pub fn new(appender: Appender, codec: C) -> Self {
        Self {
            appender,
            codec,
            buffer: Vec::with_capacity(64 * 1024),
            ends: Vec::with_capacity(1024),
            event: PhantomData,
        }
    }

    fn flush(&mut self) -> Result<(), AppendError> {
        if self.ends.is_empty() {
            return Ok(());
        }
        let buffer = &self.buffer;
        let mut start = 0;
        let payloads = self.ends.iter().map(|&end| {
            let p = &buffer[start..end];
            start = end;
            p
        });
        let result = self.appender.append_batch(payloads).map(|_| ());
        self.buffer.clear();
        self.ends.clear();
        result
    }
}

impl<E: 'static, C: Encode<E>> TryEventHandler<E> for JournalStage<E, C> {
    type Error = AppendError;

    fn on_event(
        &mut self,
        event: &E,
        _sequence: u64,
        end_of_batch: bool,
    ) -> Result<(), AppendError> {
        self.codec.encode(event, &mut self.buffer);
        self.ends.push(self.buffer.len());
        if end_of_batch {
            self.flush()?;
        }
        Ok(())
    }

    fn on_shutdown(&mut self) {
        // Whatever is buffered was appended at its end of batch; make it durable.
        if let Err(e) = self.appender.sync() {
            tracing::error!(error = %e, "final journal sync failed");
        }
    }
}

impl<E, C> std::fmt::Debug for JournalStage<E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStage")
            .field("appender", &self.appender.dir())
            .field("buffered", &self.ends.len())
            .finish_non_exhaustive()
    }
}

/// A durable dead-letter sink: each letter is one journal record holding the stage name,
/// the event's sequence, the failure text and the encoded event.
///
/// Record layout (little-endian): `sequence u64`, `stage_len u16`, `stage`, `failure_len
/// u32`, `failure`, then the encoded event to the end.
pub struct JournalDeadLetters<E, C> {
    inner: Mutex<(Appender, C, Vec<u8>)>,
    event: PhantomData<fn(&E)>,
}

impl<E, C: Encode<E>> JournalDeadLetters<E, C> {
    /// A sink appending to `appender` (use a journal directory of its own).
    pub fn new(appender: Appender, codec: C) -> Self {
        Self {
            inner: Mutex::new((appender, codec, Vec::new())),
            event: PhantomData,
        }
    }

    /// Splits a dead-letter record into (sequence, stage, failure, encoded event).
    pub fn parse(record: &[u8]) -> Option<(u64, &str, &str, &[u8])> {
        let sequence = u64::from_le_bytes(record.get(..8)?.try_into().ok()?);
        let stage_len = u16::from_le_bytes(record.get(8..10)?.try_into().ok()?) as usize;
        let stage = std::str::from_utf8(record.get(10..10 + stage_len)?).ok()?;
        let at = 10 + stage_len;
        let failure_len = u32::from_le_bytes(record.get(at..at + 4)?.try_into().ok()?) as usize;
        let failure = std::str::from_utf8(record.get(at + 4..at + 4 + failure_len)?).ok()?;
        Some((
            sequence,
            stage,
            failure,
            record.get(at + 4 + failure_len..)?,
        ))
    }
}

impl<E: 'static, C: Encode<E>> DeadLetterSink<E> for JournalDeadLetters<E, C> {
    fn accept(&self, stage: &str, sequence: u64, event: &E, failure: &Failure) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (appender, codec, buf) = &mut *inner;
        buf.clear();
        let failure = failure.to_string();
        let stage = &stage.as_bytes()[..stage.len().min(u16::MAX as usize)];
        buf.extend_from_slice(&sequence.to_le_bytes());
        buf.extend_from_slice(&(stage.len() as u16).to_le_bytes());
        buf.extend_from_slice(stage);
        buf.extend_from_slice(&(failure.len() as u32).to_le_bytes());
        buf.extend_from_slice(failure.as_bytes());
        codec.encode(event, buf);
        if let Err(e) = appender.append(buf).and_then(|_| appender.sync()) {
            // The sink cannot fail the stage; say so loudly instead.
            tracing::error!(error = %e, sequence, "dead letter could not be journaled");
        }
    }
}

impl<E, C> std::fmt::Debug for JournalDeadLetters<E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalDeadLetters").finish_non_exhaustive()
    }
}

/// Business state that can be saved to and loaded from bytes.
pub trait Snapshot: Sized {
    /// Appends the state's bytes to `out`.
    fn save(&self, out: &mut Vec<u8>);

    /// Rebuilds the state from bytes written by [`save`](Self::save).
    ///
    /// # Errors
    ///
    /// When the bytes are not a snapshot of this type.
    fn load(bytes: &[u8]) -> Result<Self, BoxError>;
}

/// Snapshot files in a directory: `snapshot-<next sequence, 20 digits>.snap`, each with a
/// CRC32C, written to a temporary file, synced, then renamed into place.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"PGSNAP01";

impl SnapshotStore {
    /// Opens (creating if needed) the snapshot directory.
    ///
    /// # Errors
    ///
    /// The error creating the directory.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Saves `state` as the snapshot taken after applying everything before
    /// `next_sequence`. Returns the file written.
    ///
    /// # Errors
    ///
    /// An I/O error writing, syncing or renaming the file.
    pub fn save(&self, next_sequence: u64, state: &impl Snapshot) -> io::Result<PathBuf> {
        let mut body = Vec::new();
        state.save(&mut body);
        let path = self.dir.join(format!("snapshot-{next_sequence:020}.snap"));
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(SNAPSHOT_MAGIC)?;
        file.write_all(&next_sequence.to_le_bytes())?;
        file.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
        file.write_all(&(body.len() as u64).to_le_bytes())?;
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// The newest snapshot that reads back intact, as (next sequence, bytes); damaged
    /// files are skipped with a warning.
    ///
    /// # Errors
    ///
    /// An I/O error listing the directory.
    pub fn latest(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name
                    .strip_prefix("snapshot-")?
                    .strip_suffix(".snap")?
                    .parse()
                    .ok()?;
                Some((seq, e.path()))
            })
            .collect();
        names.sort_unstable_by_key(|n| std::cmp::Reverse(n.0));
        for (seq, path) in names {
            match read_snapshot(&path) {
                Some((s, body)) if s == seq => return Ok(Some((seq, body))),
                _ => tracing::warn!(path = %path.display(), "skipping a damaged snapshot"),
            }
        }
        Ok(None)
    }
}

fn read_snapshot(path: &Path) -> Option<(u64, Vec<u8>)> {
    let bytes = fs::read(path).ok()?;
    if bytes.get(..8)? != SNAPSHOT_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    let crc = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?);
    let len = u64::from_le_bytes(bytes.get(20..28)?.try_into().ok()?) as usize;
    let body = bytes.get(28..28usize.checked_add(len)?)?;
    (crc32c::crc32c(body) == crc).then(|| (seq, body.to_vec()))
}

/// What [`recover`] rebuilt.
#[derive(Debug)]
pub struct Recovered<S> {
    /// The state after the snapshot and the replay.
    pub state: S,
    /// The next journal sequence to apply (where live processing resumes).
    pub next_sequence: u64,
    /// The snapshot used, by its next sequence.
    pub snapshot: Option<u64>,
    /// Journal records replayed after the snapshot.
    pub replayed: u64,
}

/// Why recovery failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// The snapshot directory could not be read.
    #[error("cannot read snapshots: {0}")]
    Snapshots(#[from] io::Error),
    /// The newest intact snapshot did not load.
    #[error("snapshot at sequence {sequence} does not load: {source}")]
    Snapshot {
        /// Its next sequence.
        sequence: u64,
        /// The loader's error.
        source: BoxError,
    },
    /// The journal could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The journal could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The thread that reads the journal during a pipelined replay could not start.
    #[error("cannot start the replay thread: {0}")]
    Spawn(#[source] io::Error),
    /// Decoding or applying a journaled record failed (panicked) during replay, under a
    /// policy that halts on failure: the state cannot be rebuilt past it.
    #[error("replaying journal record {sequence} failed: {failure}")]
    Failed {
        /// The record's journal sequence.
        sequence: u64,
        /// The panic message.
        failure: String,
    },
}

/// The newest intact snapshot and its next sequence, or `initial()` and `None`.
pub(crate) fn load_latest<S: Snapshot>(
    snapshots: &SnapshotStore,
    initial: impl FnOnce() -> S,
) -> Result<(S, Option<u64>), RecoverError> {
    Ok(match snapshots.latest()? {
        Some((sequence, bytes)) => (
            S::load(&bytes).map_err(|source| RecoverError::Snapshot { sequence, source })?,
            Some(sequence),
        ),
        None => (initial(), None),
    })
}

/// Rebuilds state after a restart: loads the newest intact snapshot (or `initial()`), then
/// replays every journal record from the snapshot's sequence with `apply(state, sequence,
/// payload)`. A missing journal directory means nothing to replay.
///
/// # Errors
///
/// [`RecoverError`] when a snapshot does not load or the journal is unreadable (corruption
/// before the tail is reported with its segment and offset, never skipped).
pub fn recover<S: Snapshot>(
    journal: &Path,
    snapshots: &SnapshotStore,
    initial: impl FnOnce() -> S,
    mut apply: impl FnMut(&mut S, u64, &[u8]),
) -> Result<Recovered<S>, RecoverError> {
    let (mut state, from) = load_latest(snapshots, initial)?;
    let mut next_sequence = from.unwrap_or(0);
    let mut replayed = 0;
    if journal.exists() {
        let mut reader = Reader::open(journal)?;
        reader.seek(next_sequence)?;
        while let Some(record) = reader.next()? {
            apply(&mut state, record.sequence(), record.payload());
            next_sequence = record.sequence() + 1;
            replayed += 1;
        }
    }
    Ok(Recovered {
        state,
        next_sequence,
        snapshot: from,
        replayed,
    })
}
