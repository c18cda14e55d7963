//! Named cursors: a consumer's position saved in the journal directory, so that after a
//! restart it resumes where it stopped.
//!
//! A cursor file `<name>.cursor` holds 20 bytes: magic `PRGNCUR1`, the next sequence to
//! process (u64, little endian) and a CRC32C of those 16 bytes. It is replaced atomically:
//! written to `<name>.cursor.tmp`, `fsync`ed, renamed over the old file, and the directory is
//! `fsync`ed, so after any crash the file holds either the old or the new position.
//!
//! Delivery is at-least-once: a consumer that processes a record and crashes before it
//! commits the position sees the record again. [`Cursor::commit_with`] narrows the window to
//! the consumer's own step; a consumer that stores the position inside its own state, in the
//! same atomic write, gets exactly-once and can use [`Reader::seek`](crate::Reader::seek)
//! with that position instead of a cursor.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::catalog::{self, FILE_MODE};
use crate::error::{CommitError, CursorError};
use crate::format::{self, read_u32, read_u64};

const MAGIC: [u8; 8] = *b"PRGNCUR1";
const LEN: usize = 20;

/// A named, persistent consumer position in a journal.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("pj-doc-cursor-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// use peregrine_journal::{Appender, Config, Cursor, Reader};
///
/// let (mut appender, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024))?;
/// appender.append_batch([b"a", b"b", b"c"])?;
///
/// let mut cursor = Cursor::open(&dir, "risk")?;
/// let mut reader = Reader::open(&dir)?;
/// reader.seek(cursor.position())?;
/// let mut state = Vec::new();
/// while let Some(record) = reader.next()? {
///     let next = record.sequence() + 1;
///     let payload = record.payload().to_vec();
///     // The position is saved only if the consumer's own step succeeds.
///     cursor.commit_with(next, |_| {
///         state.push(payload);
///         Ok::<(), std::io::Error>(())
///     })?;
/// }
/// assert_eq!(Cursor::open(&dir, "risk")?.position(), 3);
/// # drop(appender);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Cursor {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    position: u64,
}

impl Cursor {
    /// Opens cursor `name` in journal directory `dir`, loading its saved position, or
    /// position 0 when it was never committed. Names are 1 to 64 characters of
    /// `[A-Za-z0-9_-]`.
    ///
    /// # Errors
    ///
    /// [`CursorError::InvalidName`]; [`CursorError::Corrupt`] when the file exists but is not
    /// a valid cursor; [`CursorError::Io`] when it cannot be read.
    pub fn open(dir: impl AsRef<Path>, name: &str) -> Result<Cursor, CursorError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(CursorError::InvalidName(name.to_owned()));
        }
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(format!("{name}{}", format::CURSOR_SUFFIX));
        let tmp = dir.join(format!("{name}{}", format::CURSOR_TMP_SUFFIX));
        let position = match fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|(offset, reason)| CursorError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => return Err(CursorError::Io { path, source }),
        };
        Ok(Cursor {
            dir,
            path,
            tmp,
            position,
        })
    }

    /// The saved position: the sequence of the next record to process.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Saves `next_sequence` as the position, atomically and durably.
    ///
    /// # Errors
    ///
    /// [`CursorError::Io`] when writing, syncing or renaming fails; the saved position is
    /// then the previous one.
    pub fn commit(&mut self, next_sequence: u64) -> Result<(), CursorError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CursorError::Io { path, source }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&self.tmp)
            .map_err(io(&self.tmp))?;
        file.write_all(&encode(next_sequence))
            .and_then(|()| file.sync_all())
            .map_err(io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        catalog::sync_dir(&self.dir).map_err(|f| match f {
            crate::error::Fault::Io(path, source) => CursorError::Io { path, source },
            _ => CursorError::Io {
                path: self.dir.clone(),
                source: io::Error::other("directory sync failed"),
            },
        })?;
        self.position = next_sequence;
        Ok(())
    }

    /// Runs the consumer's own step `process` (given the new position), then saves
    /// `next_sequence` only if it succeeded. A crash between the two replays the records
    /// since the previous commit: at-least-once.
    ///
    /// # Errors
    ///
    /// [`CommitError::Consumer`] with the closure's error (position unchanged), or
    /// [`CommitError::Cursor`] when saving fails.
    pub fn commit_with<E>(
        &mut self,
        next_sequence: u64,
        process: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<(), CommitError<E>> {
        process(next_sequence).map_err(CommitError::Consumer)?;
        self.commit(next_sequence)?;
        Ok(())
    }

    /// The cursor file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn encode(position: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&position.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(bytes: &[u8]) -> Result<u64, (u64, &'static str)> {
    if bytes.len() != LEN {
        return Err((bytes.len().min(LEN) as u64, "cursor file has wrong length"));
    }
    if bytes[..8] != MAGIC {
        return Err((0, "wrong magic"));
    }
    if crc32c::crc32c(&bytes[..16]) != read_u32(bytes, 16) {
        return Err((16, "checksum mismatch"));
    }
    Ok(read_u64(bytes, 8))
}
