//! Reading a journal: replay from any sequence ([`Reader`]), live tailing ([`Tailer`]) and a
//! full consistency check ([`verify`]).
//!
//! A reader maps segments read-only with its own file handle, so it needs only read
//! permission, never blocks the appender, and keeps reading a segment that retention unlinks
//! (on Linux an unlinked file lives until its last mapping and descriptor are gone).
//!
//! Seeking is O(log n): a binary search over the segments' base sequences, a binary search
//! over the segment's sparse index (one slot per `index_block` bytes, each the offset and
//! sequence of the first record starting in that block or later), then a scan of at most one
//! index block.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::catalog::{self, SegmentEntry};
use crate::error::{Fault, OpenError, ReadError};
use crate::format::{
    self, align8, slot_count, slot_offset, unpack_slot, Step, Stop, RECORD_HEADER_LEN,
};
use crate::map::SegmentView;

/// One record read from the journal, borrowing its payload from the mapped segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    sequence: u64,
    payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's sequence: its position in the journal, counting from 0.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The record's payload, verified against its CRC32C.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// A segment a reader has mapped.
#[derive(Debug)]
struct OpenSegment {
    path: PathBuf,
    header: format::SegmentHeader,
    view: SegmentView,
}

impl OpenSegment {
    /// Opens and maps a published segment; `Ok(None)` when the file does not exist.
    fn open(path: PathBuf) -> Result<Option<OpenSegment>, Fault> {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Fault::Io(path, e)),
        };
        let header = catalog::read_header_of(&file, &path)?;
        // SAFETY: read-only mapping of a segment whose length matches its header; see
        // `SegmentMap`'s `# Safety` for the contract on files shared with other processes.
        let view = unsafe { SegmentView::new(&file) }.map_err(Fault::io(&path))?;
        if view.bytes().len() as u64 != header.segment_size {
            return Err(Fault::BadHeader(
                path,
                32,
                "segment size changed while opening",
            ));
        }
        Ok(Some(OpenSegment { path, header, view }))
    }

    /// Offset and sequence of a record at or before `target` from which a scan reaches
    /// `target` within one index block; falls back to the first record when the index is
    /// empty or does not check out.
    fn locate(&self, target: u64) -> (usize, u64) {
        let header = &self.header;
        let start = (header.data_offset as usize, header.base_sequence);
        let Some(delta) = target.checked_sub(header.base_sequence) else {
            return start;
        };
        let slots = slot_count(header.segment_size, header.index_block);
        let slot = |i: usize| self.view.load_u64(slot_offset(i));
        let filled = partition_point(slots, |i| slot(i) != 0);
        let k = partition_point(filled, |i| unpack_slot(slot(i)).1 <= delta);
        if k == 0 {
            return start;
        }
        let (offset, slot_delta) = unpack_slot(slot(k - 1));
        let bytes = self.view.bytes();
        let plausible = offset >= header.data_offset as usize
            && offset % 8 == 0
            && offset + RECORD_HEADER_LEN <= bytes.len();
        if !plausible {
            return start;
        }
        let sequence = header.base_sequence + slot_delta;
        match format::step(bytes, offset, self.view.load_u32(offset), sequence) {
            Step::Record { .. } => (offset, sequence),
            _ => start,
        }
    }
}

/// First index in `0..n` for which `pred` is false, given `pred` is true then false.
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Replays a journal from any sequence, in order, verifying every record's CRC.
///
/// [`next`](Reader::next) returns `Ok(None)` when it has caught up with the appender; calling
/// it again later returns records appended since, including across segment rolls and from
/// another process. [`Tailer`] adds waiting on top.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("pj-doc-reader-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// use peregrine_journal::{Appender, Config, Reader};
///
/// let (mut appender, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024))?;
/// for i in 0..1000u32 {
///     appender.append(&i.to_le_bytes())?;
/// }
/// let mut reader = Reader::open(&dir)?;
/// reader.seek(990)?;
/// let mut seen = Vec::new();
/// while let Some(record) = reader.next()? {
///     seen.push(u32::from_le_bytes(record.payload().try_into()?));
/// }
/// assert_eq!(seen, (990..1000).collect::<Vec<_>>());
/// # drop(appender);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    current: Option<OpenSegment>,
    /// Offset of the next record in `current`.
    offset: usize,
    /// Sequence of the record at `offset`.
    sequence: u64,
    /// Records below this sequence are skipped (the target of the last seek).
    skip_below: u64,
    /// A record found by [`Reader::ready`] and not yet returned: (offset, length word, sequence).
    peeked: Option<(usize, usize, u64)>,
}

impl Reader {
    /// Opens the journal in `dir` for reading, positioned at its first record. The directory
    /// may be empty or missing (the appender has not started yet): the reader then waits for
    /// the first segment.
    ///
    /// # Errors
    ///
    /// [`OpenError::ForeignFile`] and [`OpenError::BadHeader`] when the directory or a
    /// segment was not written by this crate; [`OpenError::Io`] for failed system calls.
    pub fn open(dir: impl AsRef<Path>) -> Result<Reader, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let listing = catalog::list(&dir)?;
        let first = listing
            .segments
            .first()
            .map_or(0, |s| s.header.base_sequence);
        Ok(Reader {
            dir,
            current: None,
            offset: 0,
            sequence: first,
            skip_below: 0,
            peeked: None,
        })
    }

    /// Positions the reader so that the next record returned is `sequence` (or, when it is
    /// not written yet, the first record at or after it once it is).
    ///
    /// # Errors
    ///
    /// [`ReadError::SequenceRemoved`] when retention removed `sequence`; the errors of
    /// [`Reader::open`] for segments examined on the way.
    pub fn seek(&mut self, sequence: u64) -> Result<(), ReadError> {
        self.current = None;
        self.peeked = None;
        self.skip_below = sequence;
        self.sequence = sequence;
        self.open_for(sequence)?;
        Ok(())
    }

    /// Positions the reader after the last record committed now, so that the next record
    /// it returns is the first one appended after this call; returns that record's
    /// sequence. Reads only the end of the last segment (from its last sparse-index entry),
    /// however long the journal is. A journal with no segment yet positions at sequence 0.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("peregrine-doc-seek-end-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// use peregrine_journal::{Appender, Config, Reader};
    ///
    /// let (mut appender, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024))?;
    /// for i in 0..10_000u64 {
    ///     appender.append(&i.to_le_bytes())?;
    /// }
    /// let mut reader = Reader::open(&dir)?;
    /// assert_eq!(reader.seek_end()?, 10_000);
    /// assert!(reader.next()?.is_none());
    /// appender.append(b"new")?;
    /// assert_eq!(reader.next()?.map(|r| r.sequence()), Some(10_000));
    /// # drop(appender);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`next`](Reader::next), for the records between the last index entry and the end.
    pub fn seek_end(&mut self) -> Result<u64, ReadError> {
        self.current = None;
        self.peeked = None;
        self.skip_below = 0;
        if !self.open_for(u64::MAX)? {
            self.sequence = 0;
            return Ok(0);
        }
        while self.advance()?.is_some() {}
        Ok(self.sequence)
    }

    /// The sequence of the next record this reader returns.
    pub fn position(&self) -> u64 {
        match self.peeked {
            Some((_, _, sequence)) => sequence,
            None => self.sequence.max(self.skip_below),
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next record, or `Ok(None)` when the reader has caught up with the appender.
    ///
    /// # Errors
    ///
    /// [`ReadError::Corrupt`] naming the segment and offset of a committed record that fails
    /// validation; [`ReadError::SequenceRemoved`] when retention removed the next segment
    /// before the reader reached it; [`ReadError::BadHeader`] and [`ReadError::Io`] for the
    /// next segment. After an error the reader stays where it was.
    #[allow(clippy::should_implement_trait)] // lends from `self`, so not an `Iterator`
    pub fn next(&mut self) -> Result<Option<Record<'_>>, ReadError> {
        let found = match self.peeked.take() {
            Some(found) => Some(found),
            None => self.advance()?,
        };
        Ok(found.map(|(offset, len, sequence)| {
            let current = self.current.as_ref().expect("a found record has a segment");
            Record {
                sequence,
                payload: &current.view.bytes()[offset + RECORD_HEADER_LEN..offset + len],
            }
        }))
    }

    /// Whether a record is ready, without returning it: the next [`next`](Reader::next)
    /// returns it without further checks.
    ///
    /// # Errors
    ///
    /// As [`next`](Reader::next).
    pub fn ready(&mut self) -> Result<bool, ReadError> {
        if self.peeked.is_none() {
            self.peeked = self.advance()?;
        }
        Ok(self.peeked.is_some())
    }

    /// Finds the next record: (offset, length word, sequence).
    fn advance(&mut self) -> Result<Option<(usize, usize, u64)>, ReadError> {
        loop {
            if self.current.is_none() && !self.open_for(self.sequence)? {
                return Ok(None);
            }
            let current = self.current.as_ref().expect("opened above");
            let bytes = current.view.bytes();
            let offset = self.offset;
            let step = if offset + 4 > bytes.len() {
                Step::Sealed
            } else {
                format::step(bytes, offset, current.view.load_u32(offset), self.sequence)
            };
            match step {
                Step::Record { len } => {
                    self.offset += align8(len);
                    let sequence = self.sequence;
                    self.sequence += 1;
                    if sequence >= self.skip_below {
                        return Ok(Some((offset, len, sequence)));
                    }
                }
                Step::End => return Ok(None),
                Step::Invalid(reason) => {
                    return Err(ReadError::Corrupt {
                        path: current.path.clone(),
                        offset: offset as u64,
                        reason,
                    })
                }
                Step::Sealed => {
                    let index = current.header.index + 1;
                    let path = self.dir.join(format::segment_name(index));
                    match OpenSegment::open(path.clone())? {
                        Some(next) => {
                            if next.header.base_sequence != self.sequence {
                                return Err(ReadError::BadHeader {
                                    path,
                                    offset: 24,
                                    reason: "base sequence does not continue previous segment",
                                });
                            }
                            self.offset = next.header.data_offset as usize;
                            self.current = Some(next);
                        }
                        None => {
                            // Either the appender is between sealing and publishing (wait), or
                            // retention removed the segment (an error).
                            let listing = catalog::list(&self.dir)?;
                            if let Some(first) = listing.segments.first() {
                                if first.header.index > index {
                                    return Err(ReadError::SequenceRemoved {
                                        sequence: self.sequence,
                                        first_available: first.header.base_sequence,
                                    });
                                }
                            }
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// Opens the segment holding `sequence` and positions at or just before it with the
    /// sparse index. `Ok(false)` when the journal has no segment yet.
    fn open_for(&mut self, sequence: u64) -> Result<bool, ReadError> {
        let listing = catalog::list(&self.dir)?;
        let segments: &[SegmentEntry] = &listing.segments;
        let Some(first) = segments.first() else {
            return Ok(false);
        };
        let at = segments.partition_point(|s| s.header.base_sequence <= sequence);
        if at == 0 {
            return Err(ReadError::SequenceRemoved {
                sequence,
                first_available: first.header.base_sequence,
            });
        }
        let Some(segment) = OpenSegment::open(segments[at - 1].path.clone())? else {
            // Removed between listing and opening: retention moved past it.
            return Err(ReadError::SequenceRemoved {
                sequence,
                first_available: segments
                    .get(at)
                    .map_or(sequence, |s| s.header.base_sequence),
            });
        };
        let (offset, found) = segment.locate(sequence);
        self.offset = offset;
        self.sequence = found;
        self.current = Some(segment);
        Ok(true)
    }
}

/// How a [`Tailer`] waits when it has caught up with the appender.
///
/// | strategy | reaction to a new record | CPU while idle |
/// |---|---|---|
/// | `Backoff` (default) | well under a microsecond while records keep coming; up to `sleep` plus the scheduler's wake-up once idle | spins, then yields, then sleeps: almost none when idle |
/// | `BusySpin` | one cache-line transfer (about 100 to 300 ns) | a whole core, always |
/// | `Yield` | a scheduler round trip when other threads want the core | a whole core when alone on it |
/// | `Sleep(d)` | up to `d` plus the scheduler's wake-up | almost none |
///
/// `BusySpin` is for a tailer on a dedicated core (Chronicle Queue's published latencies
/// assume one); on a machine with fewer free cores than spinning threads it makes latency
/// worse, because the spinner and the appender take turns on one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TailerWait {
    /// Spin 256 times, then yield 256 times, then sleep 50 µs between checks; starts over
    /// after each record.
    #[default]
    Backoff,
    /// Check again at once, with a spin-loop hint between checks.
    BusySpin,
    /// Yield the CPU to the scheduler between checks.
    Yield,
    /// Sleep this long between checks.
    Sleep(Duration),
}

impl TailerWait {
    /// Waits once, the `idle`-th time in a row that no record was ready (counting from 1).
    #[inline]
    fn pause(self, idle: u32) {
        match self {
            TailerWait::BusySpin => std::hint::spin_loop(),
            TailerWait::Yield => std::thread::yield_now(),
            TailerWait::Sleep(d) => std::thread::sleep(d),
            TailerWait::Backoff => {
                if idle < 256 {
                    std::hint::spin_loop();
                } else if idle < 512 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
}

/// Follows a journal live: a [`Reader`] that waits for new records according to its
/// [`TailerWait`] strategy (by default spinning briefly, then yielding, then sleeping, so an
/// idle tailer costs little CPU and a busy one reacts in well under a microsecond). Works
/// across processes: the appender's `Release` store of each length word is visible through
/// the tailer's own mapping of the same file.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("pj-doc-tailer-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// use peregrine_journal::{Appender, Config, Tailer, TailerWait};
/// use std::time::Duration;
///
/// let (mut appender, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024))?;
/// let mut tailer = Tailer::open(&dir, 0)?;
/// assert!(tailer.next_timeout(Duration::from_millis(1))?.is_none());
/// appender.append(b"tick")?;
/// let record = tailer.next_timeout(Duration::from_secs(1))?.expect("appended");
/// assert_eq!((record.sequence(), record.payload()), (0, &b"tick"[..]));
///
/// // On a dedicated core: spin instead of backing off.
/// let mut spinning = Tailer::open(&dir, 0)?.wait(TailerWait::BusySpin);
/// assert_eq!(spinning.next_timeout(Duration::from_secs(1))?.expect("appended").sequence(), 0);
/// # drop(appender);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Tailer {
    reader: Reader,
    wait: TailerWait,
}

impl Tailer {
    /// Opens a tailer on `dir` that starts at sequence `from`, waiting with
    /// [`TailerWait::Backoff`].
    ///
    /// # Errors
    ///
    /// The errors of [`Reader::open`], and [`OpenError::Io`] wrapping a seek error.
    pub fn open(dir: impl AsRef<Path>, from: u64) -> Result<Tailer, OpenError> {
        let mut reader = Reader::open(dir)?;
        reader.seek(from).map_err(|e| OpenError::Io {
            path: reader.dir().to_path_buf(),
            source: io::Error::other(e),
        })?;
        Ok(Tailer::from_reader(reader))
    }

    /// A tailer continuing from where `reader` is, waiting with [`TailerWait::Backoff`].
    pub fn from_reader(reader: Reader) -> Tailer {
        Tailer {
            reader,
            wait: TailerWait::default(),
        }
    }

    /// This tailer, waiting with `wait` from now on.
    #[must_use]
    pub fn wait(mut self, wait: TailerWait) -> Tailer {
        self.wait = wait;
        self
    }

    /// How this tailer waits.
    pub fn wait_strategy(&self) -> TailerWait {
        self.wait
    }

    /// The next record if one is ready; never waits.
    ///
    /// # Errors
    ///
    /// As [`Reader::next`].
    pub fn try_next(&mut self) -> Result<Option<Record<'_>>, ReadError> {
        self.reader.next()
    }

    /// The next record, waiting for it with this tailer's [`TailerWait`] strategy for up to
    /// `timeout`; `Ok(None)` on timeout.
    ///
    /// # Errors
    ///
    /// As [`Reader::next`].
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record<'_>>, ReadError> {
        if !self.reader.ready()? {
            let start = Instant::now();
            let mut idle = 0u32;
            while !self.reader.ready()? {
                // A busy spinner reads the clock only every 64th check: a clock read costs
                // more than a check, and the spinner should see a new record at once.
                let check = self.wait != TailerWait::BusySpin || idle % 64 == 0;
                if check && start.elapsed() >= timeout {
                    return Ok(None);
                }
                idle = idle.saturating_add(1);
                self.wait.pause(idle);
            }
        }
        self.reader.next()
    }

    /// The sequence of the next record this tailer returns.
    pub fn position(&self) -> u64 {
        self.reader.position()
    }

    /// The underlying reader.
    pub fn into_reader(self) -> Reader {
        self.reader
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Records checked (CRC, sequence, bounds).
    pub records: u64,
    /// Bytes of records, headers included, padding excluded.
    pub record_bytes: u64,
    /// Sequence of the first record.
    pub first_sequence: u64,
    /// Sequence after the last record.
    pub next_sequence: u64,
}

/// How far [`verify_with_progress`] has got, reported after each segment it has checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyProgress {
    /// Segments checked so far (1 after the first).
    pub segments_done: usize,
    /// Segments to check in all.
    pub segments: usize,
    /// Records checked so far.
    pub records: u64,
    /// Bytes of the records checked so far, headers included, padding excluded.
    pub record_bytes: u64,
    /// Bytes of the segment files checked so far (what a scan reads).
    pub segment_bytes: u64,
    /// Bytes of all the segment files.
    pub total_segment_bytes: u64,
}

/// Checks every record of every segment: headers, contiguous segment indices and sequences,
/// each record's bounds, sequence and CRC32C, and that every segment but the last is sealed.
/// When no appender holds the journal, also checks that the last segment has no torn tail
/// left to recover (garbage after its last record). Reads only; repairs nothing (opening an
/// [`Appender`](crate::Appender) repairs a torn tail).
///
/// [`verify_with_progress`] does the same and reports after each segment.
///
/// # Errors
///
/// The first problem found, as [`OpenError::Corrupt`] or [`OpenError::BadHeader`] naming the
/// segment and offset, or the errors of [`Reader::open`].
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport, OpenError> {
    verify_with_progress(dir, |_| {})
}

/// [`verify`], calling `progress` after each segment it has checked (a scan reads every
/// byte of every segment, which takes seconds per ten gigabytes).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("peregrine-doc-verify-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// use peregrine_journal::{verify_with_progress, Appender, Config};
///
/// let (mut appender, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024))?;
/// for i in 0..10_000u64 {
///     appender.append(&i.to_le_bytes())?;
/// }
/// let mut seen = Vec::new();
/// let report = verify_with_progress(&dir, |p| seen.push((p.segments_done, p.segments)))?;
/// assert_eq!(report.records, 10_000);
/// // Once per segment, the last report after the last segment.
/// assert_eq!(seen.len(), report.segments);
/// assert_eq!(seen.last(), Some(&(report.segments, report.segments)));
/// # drop(appender);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`verify`]; `progress` has then been called for the segments checked before the one
/// with the problem.
pub fn verify_with_progress(
    dir: impl AsRef<Path>,
    mut progress: impl FnMut(&VerifyProgress),
) -> Result<VerifyReport, OpenError> {
    let dir = dir.as_ref();
    let writer_active = catalog::appender_active(dir);
    let listing = catalog::list(dir)?;
    let mut report = VerifyReport {
        segments: listing.segments.len(),
        ..VerifyReport::default()
    };
    let mut expected = listing.segments.first().map(|s| s.header.base_sequence);
    report.first_sequence = expected.unwrap_or(0);
    let last = listing.segments.len().saturating_sub(1);
    let mut done = VerifyProgress {
        segments_done: 0,
        segments: listing.segments.len(),
        records: 0,
        record_bytes: 0,
        segment_bytes: 0,
        total_segment_bytes: listing.segments.iter().map(|s| s.header.segment_size).sum(),
    };
    for (i, entry) in listing.segments.iter().enumerate() {
        let Some(segment) = OpenSegment::open(entry.path.clone())? else {
            return Err(OpenError::Io {
                path: entry.path.clone(),
                source: io::ErrorKind::NotFound.into(),
            });
        };
        let header = segment.header;
        if Some(header.base_sequence) != expected {
            return Err(OpenError::BadHeader {
                path: segment.path,
                offset: 24,
                reason: "base sequence does not continue previous segment",
            });
        }
        let bytes = segment.view.bytes();
        let mut bad_padding = None;
        let end = format::scan(
            bytes,
            |at| segment.view.load_u32(at),
            header.data_offset as usize,
            header.base_sequence,
            |at, len| {
                report.records += 1;
                report.record_bytes += len as u64;
                let padding = &bytes[at + len..at + align8(len)];
                if bad_padding.is_none() && padding.iter().any(|&b| b != 0) {
                    bad_padding = Some(at + len);
                }
            },
        );
        let corrupt = |offset: usize, reason| OpenError::Corrupt {
            path: segment.path.clone(),
            offset: offset as u64,
            reason,
        };
        if let Some(at) = bad_padding {
            return Err(corrupt(at, "non-zero record padding"));
        }
        match end.stop {
            Stop::Invalid(reason) => return Err(corrupt(end.offset, reason)),
            Stop::End if i != last => {
                return Err(corrupt(end.offset, "unsealed segment before the tail"))
            }
            Stop::End if !writer_active => {
                if let Some(at) = bytes[end.offset..].iter().position(|&b| b != 0) {
                    return Err(corrupt(end.offset + at, "torn tail not yet recovered"));
                }
            }
            Stop::Sealed if end.offset + 4 <= bytes.len() => {
                if let Some(at) = bytes[end.offset + 4..].iter().position(|&b| b != 0) {
                    return Err(corrupt(end.offset + 4 + at, "data after seal"));
                }
            }
            Stop::End | Stop::Sealed => {}
        }
        // A live appender may index a batch it has not published yet.
        if !(writer_active && i == last) {
            if let Some((offset, reason)) = check_index(&segment, end.offset) {
                return Err(corrupt(offset, reason));
            }
        }
        expected = Some(end.sequence);
        done.segments_done = i + 1;
        done.records = report.records;
        done.record_bytes = report.record_bytes;
        done.segment_bytes += bytes.len() as u64;
        progress(&done);
    }
    report.next_sequence = expected.unwrap_or(0);
    Ok(report)
}

/// Checks a segment's sparse index against its records (which `verify` has validated up to
/// `end`): filled slots form a prefix, each points at a valid record with the slot's sequence,
/// at or after the slot's block, in order. Returns the offset of the first bad slot.
fn check_index(segment: &OpenSegment, end: usize) -> Option<(usize, &'static str)> {
    let header = &segment.header;
    let slots = slot_count(header.segment_size, header.index_block);
    let shift = header.index_block.trailing_zeros();
    let bytes = segment.view.bytes();
    let mut previous = 0;
    let mut filled = true;
    for slot in 0..slots {
        let at = slot_offset(slot);
        let value = segment.view.load_u64(at);
        if value == 0 {
            filled = false;
            continue;
        }
        if !filled {
            return Some((at, "index slot after an empty slot"));
        }
        let (offset, delta) = unpack_slot(value);
        let valid = offset >= header.data_offset as usize
            && offset < end
            && offset % 8 == 0
            && offset >= previous
            && (offset >> shift) >= slot
            && matches!(
                format::step(
                    bytes,
                    offset,
                    segment.view.load_u32(offset),
                    header.base_sequence.wrapping_add(delta)
                ),
                Step::Record { .. }
            );
        if !valid {
            return Some((at, "index slot does not match records"));
        }
        previous = offset;
    }
    None
}
