//! A segmented, memory-mapped, append-only journal for replay and recovery.
//!
//! Every input event of a system is appended here before it is processed; after a crash the
//! state is rebuilt by replaying the journal (the LMAX pattern). The design borrows from
//! Chronicle Queue (memory-mapped files, a length word published last so readers in other
//! processes see whole records), Aeron Archive (pre-faulted segments, explicit durability)
//! and Kafka's log (fixed-size segments, a sparse index, retention of whole segments).
//!
//! # A tour
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("pj-doc-tour-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! use peregrine_journal::{verify, Appender, Config, Cursor, Durability, Reader, Retention};
//!
//! // One appender per directory (a lock file enforces it). Opening recovers the tail.
//! let config = Config::default().segment_size(64 * 1024).durability(Durability::None);
//! let (mut appender, report) = Appender::open(&dir, config.clone())?;
//! assert_eq!(report.discarded_bytes, 0);
//!
//! // Single and batched appends return sequences, counting from 0.
//! for i in 0..5_000u64 {
//!     appender.append(&i.to_le_bytes())?;
//! }
//! let batch = appender.append_batch([b"open".as_slice(), b"close"])?;
//! assert_eq!(batch, 5_000..5_002);
//! assert!(appender.segment_index() > 0, "64 KiB segments rolled");
//!
//! // Replay from any sequence (O(log n) seek through the sparse index).
//! let mut reader = Reader::open(&dir)?;
//! reader.seek(4_000)?;
//! let first = reader.next()?.expect("written");
//! assert_eq!(first.payload(), &4_000u64.to_le_bytes());
//!
//! // A named cursor remembers where a consumer stopped.
//! let mut cursor = Cursor::open(&dir, "matching-engine")?;
//! cursor.commit(4_001)?;
//!
//! // Retention drops whole old segments; `verify` checks every record that is left.
//! let removed = appender.retain(&Retention::delete().below_sequence(4_000))?;
//! assert!(removed.segments_removed > 0);
//! let checked = verify(&dir)?;
//! assert_eq!(checked.next_sequence, 5_002);
//!
//! // Reopening continues the numbering.
//! drop(appender);
//! let (mut appender, report) = Appender::open(&dir, config)?;
//! assert_eq!(report.next_sequence, 5_002);
//! assert_eq!(appender.append(b"after restart")?, 5_002);
//! # drop(appender);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! ```text
//! journal/
//!   journal.lock                   flock()ed by the single Appender
//!   00000000000000000000.seg       sealed: readers continue in the next segment
//!   00000000000000000001.seg       written by the Appender (mapped read-write)
//!   00000000000000000002.seg.pre   next two segments, preallocated and pre-faulted
//!   00000000000000000003.seg.pre   in the background
//!   matching-engine.cursor         a consumer's saved position
//!   archive/                       where Retention::archive may move old segments
//!
//!   Appender ──memcpy + Release store──▶ page cache ◀──Acquire load── Reader / Tailer
//!                                           │                        (any process)
//!                                      msync (Durability)
//!                                           ▼
//!                                         disk
//! ```
//!
//! The on-disk format (segment header, 16-byte record header with length, CRC32C and
//! sequence, sparse index) is described in the `format` module's source.
//!
//! # Durability
//!
//! A record is visible to readers as soon as its append returns, in every mode. What
//! survives what is decided by [`Durability`]:
//!
//! - [`Durability::None`]: a killed process loses nothing that was appended (the bytes are
//!   in the kernel's page cache); a power loss or kernel crash loses whatever the kernel had
//!   not written back. Appends cost a memory copy and a CRC.
//! - [`Durability::Batch`]: group commit. Everything below
//!   [`Appender::durable_watermark`] survives power loss; at most `max_records` records or
//!   `max_delay` of appends are at risk. One `msync` covers many records.
//! - [`Durability::Always`]: each append returns after its `msync`. The slowest, by the
//!   cost of a device flush per append.
//!
//! # Recovery
//!
//! [`Appender::open`] checks every segment header and scans the tail segment: a record whose
//! length word never reached the file is not part of the journal (the protocol guarantees
//! that a published length means the whole record was written). Bytes after the last valid
//! record (a torn write, or a record that fails its CRC after a power loss) are zeroed and
//! reported in the [`RecoveryReport`] with the segment and offset where they began. A record
//! that fails validation with valid records after it is damage, not a torn write: opening
//! fails with an error naming the segment and offset (or, with
//! [`Config::repair_corrupt_tail`], truncates and reports it). Damage in earlier segments
//! is never skipped either: readers and [`verify`] return an error naming the segment and
//! offset.
//!
//! # Readers, tailers, cursors
//!
//! [`Reader`] replays from any sequence; [`Tailer`] waits for new records (spinning, yielding,
//! sleeping or backing off, see [`TailerWait`]) and follows the appender across segment rolls
//! and processes; [`Cursor`] saves a consumer's position
//! atomically in the journal directory (at-least-once; see [`Cursor::commit_with`]).
//!
//! # Retention
//!
//! [`Appender::retain`] deletes or archives whole segments below a sequence or beyond a
//! total size. Readers that still read a removed segment keep going: each holds its own
//! descriptor and mapping, which on Linux stay valid after the file is unlinked or moved.
//!
//! # Bad input
//!
//! A foreign file in the directory, a wrong magic or version, a truncated header, an absurd
//! record length, a segment shorter than its header says or a permission error: each is an
//! error naming the path (and the offset where it applies). Every length read from a file is
//! bounds-checked before use.
//!
//! # Platform
//!
//! Linux (it relies on `flock`, `posix_fallocate`, `MADV_POPULATE_WRITE` when available, and
//! unlinked files staying readable). Files are created with mode `0o644`.

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

mod appender;
mod catalog;
mod crc;
mod cursor;
mod error;
mod format;
mod map;
mod reader;
mod retention;

pub use appender::{Appender, Config, Durability, Pretouch, RecoveryReport, MAX_PREPARE_AHEAD};
pub use cursor::Cursor;
pub use error::{AppendError, CommitError, CursorError, OpenError, ReadError, RetentionError};
pub use reader::{
    verify, verify_with_progress, Reader, Record, Tailer, TailerWait, VerifyProgress, VerifyReport,
};
pub use retention::{Retention, RetentionAction, RetentionReport};
