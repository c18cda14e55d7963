//! The single writer of a journal: configuration, durability modes, recovery on open, the
//! append hot path (single, batched, in place) and rolling to the next segment.
//!
//! Hot path of one append: bounds check, copy the sequence and payload into the mapped
//! segment, CRC32C (hardware instruction), a `Release` store of the length word, and, once
//! every `index_block` bytes, a sparse index slot. No system call, no allocation, no page
//! fault when the segment was pre-faulted. Rolling happens once per segment; the next
//! segments (two by default, [`Config::prepare_ahead`]) are created and pre-faulted by a
//! background thread while the current one fills (or, under [`Pretouch::OnIdle`], in steps
//! by the appending thread), so the roll itself is a header write, a seal and a `rename`. A batch checksums four records at a time.
//! The same thread touches the pages just ahead of the appender ([`Config::touch_ahead`]),
//! so that their page-table entries are marked accessed when the appender gets there.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::catalog::{self, Prepared};
use crate::crc;
use crate::error::{AppendError, Fault, OpenError};
use crate::format::{
    self, align8, pack_slot, record_crc, slot_count, slot_offset, unpack_slot, SegmentHeader, Step,
    Stop, HEADER_LEN, RECORD_HEADER_LEN, SEAL,
};
use crate::map::{PageToucher, SegmentMap};

/// When appended records reach stable storage.
///
/// Every mode publishes a record to readers (in any process) as soon as the append returns:
/// the bytes are in the operating system's page cache, shared by every mapping of the file.
///
/// | mode | survives the process being killed | survives power loss / kernel crash |
/// |---|---|---|
/// | `None` | every appended record | only what the kernel happened to write back, and what an explicit [`Appender::sync`] covered |
/// | `Batch` | every appended record | every record below [`Appender::durable_watermark`]: at most `max_records` records or `max_delay` (checked on each append and by [`Appender::sync_if_due`]) are at risk; a batch append is synced before it returns |
/// | `Always` | every appended record | every record whose append returned |
///
/// The cost is one `msync(MS_SYNC)` of the dirty pages per sync: microseconds on a page
/// cache backed by NVMe with a volatile write cache, milliseconds on devices that flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// No `msync` on the hot path. Appends cost a memory copy.
    #[default]
    None,
    /// Group commit: `msync` after every `max_records` records, when the oldest unsynced
    /// record is older than `max_delay`, and at the end of every [`Appender::append_batch`].
    Batch {
        /// Sync once this many records are pending (at least 1).
        max_records: u32,
        /// Sync once the oldest pending record is this old.
        max_delay: Duration,
    },
    /// `msync` after every append (and once per batch).
    Always,
}

/// Who creates and pre-faults the next segments, so that appends take no page faults and a
/// roll does not create a file.
///
/// | mode | who | fits |
/// |---|---|---|
/// | `Background` (default) | a background thread, [`Config::prepare_ahead`] segments ahead (two by default) | a spare core for it, or an appender that may be preempted now and then |
/// | `OnIdle` | the appending thread, one step per [`Appender::pretouch`] call from its idle loop | busy-spinning appenders and readers with no core to spare (Chronicle Queue's model) |
/// | `Off` | nobody: each first write to a page faults, and a roll creates the file | tests, tiny journals |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Pretouch {
    /// No pre-faulting.
    Off,
    /// A background thread prepares the next segments (two by default, see
    /// [`Config::prepare_ahead`]) while the current one fills.
    #[default]
    Background,
    /// The appending thread prepares the next segment in steps, when it calls
    /// [`Appender::pretouch`]. A roll takes the prepared segment as far as it got.
    OnIdle,
}

/// How a journal is opened for appending.
///
/// ```
/// use peregrine_journal::{Config, Durability};
/// use std::time::Duration;
///
/// let config = Config::default()
///     .segment_size(64 * 1024 * 1024)
///     .durability(Durability::Batch { max_records: 64, max_delay: Duration::from_micros(200) })
///     .pretouch(true);
/// assert_eq!(config.get_segment_size(), 64 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    segment_size: u64,
    index_block: u32,
    durability: Durability,
    pretouch: Pretouch,
    prepare_ahead: usize,
    repair_corrupt_tail: bool,
    huge_pages: bool,
    touch_ahead: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            segment_size: 64 * 1024 * 1024,
            index_block: 4096,
            durability: Durability::None,
            pretouch: Pretouch::Background,
            prepare_ahead: 2,
            repair_corrupt_tail: false,
            huge_pages: false,
            touch_ahead: true,
        }
    }
}

impl Config {
    /// Size of each new segment file in bytes: a multiple of 4096 between 8 KiB and 2 GiB.
    /// Existing segments keep the size they were created with. Default 64 MiB.
    #[must_use]
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Bytes of segment covered by one sparse index slot: a power of two, at least 64. A seek
    /// scans at most this many bytes after its binary searches. Default 4096.
    #[must_use]
    pub fn index_block(mut self, bytes: u32) -> Self {
        self.index_block = bytes;
        self
    }

    /// The durability mode. Default [`Durability::None`].
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether a background thread creates, preallocates and pre-faults the next segments
    /// (two, or [`prepare_ahead`](Self::prepare_ahead)) while the current one fills, keeping page faults and file creation off the
    /// append path: `true` is [`Pretouch::Background`] (the default), `false`
    /// [`Pretouch::Off`]. See [`pretouch_mode`](Self::pretouch_mode) for the third choice.
    ///
    /// The background thread does not inherit the appending thread's CPU pinning: it may run
    /// on any CPU the process is allowed, so it never time-slices with a busy-spinning
    /// appender pinned to its own core.
    ///
    /// The same thread unmaps the segments the appender has left, once the appender has not
    /// moved for 5 ms (and the oldest at once when more than 1 GiB of them is mapped):
    /// unmapping a segment with dirty pages interrupts every core the process runs on, 16
    /// times per 32 MiB, which is best done while the appender pauses. Until then they stay
    /// mapped, which costs address space, not memory: their pages are in the page cache
    /// either way.
    ///
    /// See [`Config::huge_pages`] for preparing segments in 2 MiB pages.
    ///
    /// Pre-faulting for write marks the segment's (zeroed) pages dirty. When kernel writeback
    /// cleans such a page before the appender reaches it (after `vm.dirty_expire_centisecs`,
    /// 30 s by default, or under dirty-memory pressure), the first append to that page takes a
    /// write fault again. Segments sized to fill within that time keep the benefit.
    #[must_use]
    pub fn pretouch(mut self, pretouch: bool) -> Self {
        self.pretouch = if pretouch {
            Pretouch::Background
        } else {
            Pretouch::Off
        };
        self
    }

    /// Prepares new segments in 2 MiB pages (transparent huge pages) under
    /// [`Durability::None`] with pre-touching on. Default off.
    ///
    /// The zeros of a prepared segment are then written 2 MiB at a time and the mapping
    /// asks for huge pages (`MADV_HUGEPAGE`); where the file system caches files in large
    /// folios (ext4 and xfs on Linux 6.x) the page cache holds the segment in 2 MiB folios
    /// and the mapping maps them whole (`FilePmdMapped` in `/proc/meminfo`). Appends then
    /// cross no 4 KiB page boundary and take no page-table walk: on the reference machine
    /// the p99.99 of 64-byte appends, 4.8x to 20x their p50 in 4 KiB pages, was 2.4x to
    /// 4.5x in four runs of five (10.5x in the fifth). Where the file system does not do
    /// this, nothing changes.
    ///
    /// The cost is in preparing segments. Each 2 MiB folio is a high-order allocation; in
    /// a virtual machine that hands free memory back to its host (virtio-balloon free page
    /// reporting) those come from memory the host must fault in again, and preparing a
    /// 32 MiB segment took from 6 ms up to 70 ms on the reference machine, against 6 ms in
    /// 4 KiB pages. That work runs on the preparing thread, but on a machine with few cores
    /// it competes with the latency-critical ones: the order engine's round-trip p99 rose
    /// from about 1.1x to 3x-21x the bare echo's with it on. Turn it on where the machine
    /// has cores to spare for preparation, or where memory is not handed back to a host.
    /// Not under `Batch` and `Always`, where each `msync` would write back whole 2 MiB
    /// folios.
    #[must_use]
    pub fn huge_pages(mut self, huge: bool) -> Self {
        self.huge_pages = huge;
        self
    }

    /// Whether the background thread ([`Pretouch::Background`]) also touches the pages just
    /// ahead of the appender while it writes, one load per 4 KiB page, through the
    /// appender's own mapping. Default on.
    ///
    /// Pre-faulting leaves every page of a prepared segment mapped and marked accessed, but
    /// scanners that sample which memory is in use (DAMON-based proactive reclaim and
    /// memory tiering, idle page tracking, `MADV_COLD`) clear the accessed bits of the
    /// page-table entries they sample. A store to a page whose bit is clear waits for a
    /// second page walk that sets it, which the appender's prefetch cannot start early:
    /// about 200 ns per page on the reference machine, a virtual machine whose kernel runs
    /// DAMON reclaim. Such a scan clears a whole page-cache folio's entries at once (64
    /// pages when segments are prepared in 256 KiB writes), so the p99.99 of 64-byte appends
    /// went from about 4x to 13x-20x their p50 in the runs it hit. Touching ahead sets the
    /// bits again from the background thread just before the appender needs them.
    ///
    /// The thread then wakes every 5 ms, also while the appender is idle (a thread that
    /// slept longer would miss the start of the next burst, and the appender cannot wake it
    /// without a system call on its hot path). Each turn touches what the appender writes in
    /// 10 ms at its recent rate (at least 256 KiB, at most 32 MiB), starting 64 KiB past
    /// its position so as not to take back lines it is about to write: about 10 ns per page
    /// whose bit is set, 250 ns per page whose bit was cleared. Not with
    /// [`huge_pages`](Self::huge_pages), where a segment has one bit per 2 MiB, and no
    /// effect under the other [`Pretouch`] modes.
    ///
    /// ```
    /// use peregrine_journal::Config;
    ///
    /// assert!(Config::default().get_touch_ahead());
    /// // A machine with no scanner clearing accessed bits, and a core better left alone.
    /// let config = Config::default().touch_ahead(false);
    /// assert!(!config.get_touch_ahead());
    /// ```
    #[must_use]
    pub fn touch_ahead(mut self, touch: bool) -> Self {
        self.touch_ahead = touch;
        self
    }

    /// Whether [`Config::touch_ahead`] is on.
    pub fn get_touch_ahead(&self) -> bool {
        self.touch_ahead
    }

    /// Who pre-faults the next segments; see [`Pretouch`]. Default [`Pretouch::Background`].
    /// What [`pretouch`](Self::pretouch) says about writeback, and what
    /// [`huge_pages`](Self::huge_pages) says, apply to every mode but `Off`.
    #[must_use]
    pub fn pretouch_mode(mut self, mode: Pretouch) -> Self {
        self.pretouch = mode;
        self
    }

    /// How many segments the background thread ([`Pretouch::Background`]) keeps created and
    /// pre-faulted ahead of the one being written: the runway an appender has before it
    /// waits at a roll for a segment the kernel is still zeroing. Default 2, between 1 and
    /// [`MAX_PREPARE_AHEAD`]. The other modes prepare one segment ahead whatever this says.
    ///
    /// Each segment of runway holds [`segment_size`](Self::segment_size) bytes of page cache
    /// and disk. A sustained append rate is bounded by how fast the kernel zeroes and the
    /// background thread faults in new pages (on the reference machine about a third of a
    /// plain memory copy); a longer runway lets a burst of up to `segments × segment_size`
    /// bytes run at the speed of a copy into memory that is already mapped. Pair it with
    /// [`Appender::wait_prepared`] before the burst (before a market opens, say) so the runway
    /// is complete when it starts.
    ///
    /// ```
    /// use peregrine_journal::Config;
    ///
    /// // A 256 MiB runway: eight 32 MiB segments prepared ahead.
    /// let config = Config::default().segment_size(32 << 20).prepare_ahead(8);
    /// assert_eq!(config.get_prepare_ahead(), 8);
    /// ```
    #[must_use]
    pub fn prepare_ahead(mut self, segments: usize) -> Self {
        self.prepare_ahead = segments;
        self
    }

    /// What [`Appender::open`] does when the tail segment holds a record that fails
    /// validation and valid records follow it. That is damage, not a torn write (a killed
    /// appender leaves a zero length word, never a wrong one), though a power loss can
    /// produce it for records that were not yet durable. `false` (the default): opening
    /// fails with [`OpenError::Corrupt`] naming the segment and offset, so an operator
    /// decides. `true`: the bad record and everything after it are zeroed and reported in
    /// the [`RecoveryReport`], like a torn tail.
    #[must_use]
    pub fn repair_corrupt_tail(mut self, repair: bool) -> Self {
        self.repair_corrupt_tail = repair;
        self
    }

    /// The configured segment size.
    pub fn get_segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The configured durability mode.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// The configured number of segments prepared ahead (see [`Config::prepare_ahead`]).
    pub fn get_prepare_ahead(&self) -> usize {
        self.prepare_ahead
    }

    /// Whether new segments are prepared in 2 MiB pages: asked for with
    /// [`Config::huge_pages`], under [`Durability::None`], with pre-touching on.
    fn use_huge_pages(&self) -> bool {
        self.huge_pages && self.pretouch != Pretouch::Off && self.durability == Durability::None
    }

    /// Whether [`Config::huge_pages`] was asked for.
    pub fn get_huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Largest payload one record can carry with this configuration.
    pub fn max_payload(&self) -> usize {
        (self.segment_size - format::data_offset(self.segment_size, self.index_block)) as usize
            - RECORD_HEADER_LEN
    }

    fn validate(&self) -> Result<(), OpenError> {
        if !(format::MIN_SEGMENT_SIZE..=format::MAX_SEGMENT_SIZE).contains(&self.segment_size)
            || self.segment_size % format::PAGE != 0
        {
            return Err(OpenError::Config(
                "segment size must be a multiple of 4096 between 8 KiB and 2 GiB",
            ));
        }
        if !self.index_block.is_power_of_two() || self.index_block < 64 {
            return Err(OpenError::Config(
                "index block must be a power of two of at least 64",
            ));
        }
        if format::data_offset(self.segment_size, self.index_block) + 64 > self.segment_size {
            return Err(OpenError::Config(
                "index block too small for the segment size",
            ));
        }
        if !(1..=MAX_PREPARE_AHEAD).contains(&self.prepare_ahead) {
            return Err(OpenError::Config(
                "prepare_ahead must be between 1 and 1024 segments",
            ));
        }
        if let Durability::Batch { max_records: 0, .. } = self.durability {
            return Err(OpenError::Config("batch durability needs max_records >= 1"));
        }
        Ok(())
    }
}

/// What [`Appender::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments in the journal after opening.
    pub segments: usize,
    /// Sequence of the first record still in the journal.
    pub first_sequence: u64,
    /// Sequence the next append gets.
    pub next_sequence: u64,
    /// Valid records found in the tail segment.
    pub tail_records: u64,
    /// Records found in the discarded torn tail. Best effort: a record whose length word
    /// never reached the file (the usual torn write) cannot be recognised and is not counted.
    pub discarded_records: u64,
    /// Bytes of the torn tail that were zeroed.
    pub discarded_bytes: u64,
    /// Segment and offset where the discarded tail began, if anything was discarded.
    pub discarded_at: Option<(PathBuf, u64)>,
    /// Segments prepared ahead of a roll but never published, removed.
    pub removed_prepared: usize,
}

/// The segment the appender writes.
#[derive(Debug)]
struct Active {
    header: SegmentHeader,
    path: PathBuf,
    map: SegmentMap,
    /// Kept open for the life of the mapping (not needed by `mmap`, but by diagnostics).
    _file: File,
}

/// The single writer of a journal directory.
///
/// Holds the directory's lock file for its lifetime: a second `Appender::open` on the same
/// directory, from this or another process, fails with [`OpenError::Locked`].
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("pj-doc-appender-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// use peregrine_journal::{Appender, Config};
///
/// let (mut appender, report) = Appender::open(&dir, Config::default().segment_size(64 * 1024))?;
/// assert_eq!(report.next_sequence, 0);
/// assert_eq!(appender.append(b"new order")?, 0);
/// assert_eq!(appender.append_batch([b"fill".as_slice(), b"cancel"])?, 1..3);
/// let seq = appender.append_with(8, |buf| buf.copy_from_slice(&42u64.to_le_bytes()))?;
/// assert_eq!(seq, 3);
/// assert_eq!(appender.sync()?, 4);
/// # drop(appender);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    config: Config,
    active: Active,
    /// Next write offset in the active segment; 8-aligned, `<= segment_size`.
    offset: usize,
    next_sequence: u64,
    /// First sparse index slot not yet filled in the active segment.
    next_slot: usize,
    /// log2 of the active segment's index block.
    block_shift: u32,
    /// Every record below this sequence has been `msync`ed.
    durable: u64,
    /// Offset in the active segment from which bytes have not been `msync`ed.
    sync_from: usize,
    pending_records: u32,
    pending_since: Option<Instant>,
    /// Under `Durability::None`, segments were left since the last sync without an `msync`:
    /// the next sync also syncs the file system.
    rolled_since_sync: bool,
    /// First record of a batch in progress: written but its length word not yet stored.
    /// Stored before anything else happens, so a panic inside a batch's iterator never leaves
    /// a hole that stops readers.
    uncommitted: Option<(usize, u32)>,
    /// The background thread that prepares the next segment and unmaps retired ones.
    pretoucher: Option<Pretoucher>,
    /// Where the appender writes, for the background thread's [`Follower`].
    progress: Arc<Progress>,
    /// The same work under [`Pretouch::OnIdle`], done by [`Appender::pretouch`].
    idle: IdleWork,
    /// Set while a roll is in progress; stays set if the roll failed half way.
    failed: bool,
    max_payload: usize,
    _lock: File,
}

impl Appender {
    /// Opens (creating if needed) the journal in `dir` for appending, recovering its tail.
    ///
    /// Recovery checks every segment header, scans the tail segment record by record
    /// (length, sequence, CRC32C), zeroes a torn tail after the last valid record, clears
    /// index slots that point into it, and `msync`s the tail segment, so that on return
    /// [`durable_watermark`](Self::durable_watermark) equals
    /// [`next_sequence`](Self::next_sequence). A tail record that fails validation with
    /// valid records after it is damage, not a torn write, and fails the open (see
    /// [`Config::repair_corrupt_tail`]). Segments before the tail are checked by
    /// [`verify`](crate::verify) and by readers, not here, so opening is fast.
    ///
    /// # Errors
    ///
    /// [`OpenError::Locked`] when another appender holds the journal; [`OpenError::Config`]
    /// for an unusable configuration; [`OpenError::ForeignFile`], [`OpenError::BadHeader`]
    /// for a directory or segment this crate did not write; [`OpenError::Corrupt`] naming
    /// the segment and offset of damage in the tail segment; [`OpenError::Io`] for failed
    /// system calls (permission denied, disk full), each with the path involved.
    pub fn open(
        dir: impl AsRef<Path>,
        config: Config,
    ) -> Result<(Appender, RecoveryReport), OpenError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|source| OpenError::Io {
                path: dir.clone(),
                source,
            })?;
        let lock = catalog::lock(&dir)?;
        let listing = catalog::list(&dir)?;
        let mut report = RecoveryReport::default();
        for path in &listing.prepared {
            fs::remove_file(path).map_err(Fault::io(path))?;
            report.removed_prepared += 1;
        }
        let durable_mode = config.durability != Durability::None;
        let (active, tail) = match listing.segments.last() {
            Some(last) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(Fault::io(&last.path))?;
                // SAFETY: the journal lock is held, so this is the only writer; the file's
                // length was checked against its header (see `SegmentMap`'s `# Safety`).
                let map = unsafe { SegmentMap::new(&file) }.map_err(Fault::io(&last.path))?;
                let mut active = Active {
                    header: last.header,
                    path: last.path.clone(),
                    map,
                    _file: file,
                };
                let tail = recover_tail(&mut active, &mut report, config.repair_corrupt_tail)?;
                (active, tail)
            }
            None => {
                let prepared = catalog::prepare(
                    &dir,
                    0,
                    config.segment_size,
                    config.pretouch != Pretouch::Off,
                    config.use_huge_pages(),
                )?;
                let active = publish(&dir, prepared, 0, &config, durable_mode)?;
                let tail = Tail {
                    offset: active.header.data_offset as usize,
                    next_sequence: 0,
                    next_slot: 0,
                };
                (active, tail)
            }
        };
        report.segments = listing.segments.len().max(1);
        report.first_sequence = listing
            .segments
            .first()
            .map_or(0, |s| s.header.base_sequence);
        report.next_sequence = tail.next_sequence;
        // Sync what holds data (header, index, records) and no more: `msync` cleans and
        // write-protects every page it covers, and the pre-faulted pages after the end must
        // stay writable or each would take a fault on its first append.
        active
            .map
            .flush_range(0, tail.offset.min(active.map.bytes().len()))
            .map_err(Fault::io(&active.path))?;
        let mut active = active;
        if config.pretouch != Pretouch::Off {
            // A reopened tail was faulted in by the previous process, not this one.
            if config.use_huge_pages() {
                active.map.advise_huge_pages();
            }
            // From the next index slot on: the `msync` above write-protected the index
            // pages too, and each would otherwise fault when the appender first stores a slot
            // there (every 2 MiB of records with the default index block).
            active
                .map
                .prefault_from(slot_offset(tail.next_slot).min(tail.offset));
        }
        let mut appender = Appender {
            max_payload: config.max_payload(),
            block_shift: active.header.index_block.trailing_zeros(),
            dir,
            config,
            offset: tail.offset,
            next_sequence: tail.next_sequence,
            next_slot: tail.next_slot,
            durable: tail.next_sequence,
            sync_from: tail.offset,
            pending_records: 0,
            pending_since: None,
            rolled_since_sync: false,
            uncommitted: None,
            pretoucher: None,
            progress: Arc::new(Progress::default()),
            idle: IdleWork::default(),
            failed: false,
            active,
            _lock: lock,
        };
        appender.prepare_next();
        Ok((appender, report))
    }

    /// Appends one record and returns its sequence. The record is visible to readers when
    /// this returns; when it is durable depends on the [`Durability`] mode.
    ///
    /// # Errors
    ///
    /// [`AppendError::RecordTooLarge`] when the payload cannot fit in a segment;
    /// [`AppendError::Io`] when rolling to a new segment or `msync` fails;
    /// [`AppendError::Failed`] after an earlier failed roll.
    #[inline]
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, AppendError> {
        self.append_with(payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// Appends one record of `len` bytes written in place by `fill`, which receives the
    /// record's payload area inside the mapped segment (zeroed). Saves a copy when the
    /// caller serialises straight into the journal.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    ///
    /// # Panics
    ///
    /// If `fill` panics, nothing is published and the space is reused by the next append.
    #[inline]
    pub fn append_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64, AppendError> {
        self.commit_uncommitted();
        self.make_room(len)?;
        let (offset, length_word) = self.write_record(len, fill);
        self.active.map.store_u32(offset, length_word);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.index(offset, sequence);
        self.after_commit(1, false)?;
        Ok(sequence)
    }

    /// Appends every payload of `payloads` as one batch and returns the range of sequences
    /// they got. The records are published together, by one `Release` store of the first
    /// record's length word after all of them are written, so a reader sees all or none of
    /// them. A batch that does not fit in the rest of the segment is published in two parts,
    /// one per segment. Under [`Durability::Batch`] and [`Durability::Always`] the batch is
    /// synced once, before this returns.
    ///
    /// Each payload is copied as it comes; checksums are computed four records at a time, as
    /// four interleaved CRC chains, which is what makes a batch cheaper per record than
    /// single appends.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append). Records before the failing one stay appended.
    ///
    /// # Panics
    ///
    /// If the iterator panics, the records it yielded before are published (no hole is
    /// left for readers) and the panic continues.
    pub fn append_batch<I, P>(&mut self, payloads: I) -> Result<Range<u64>, AppendError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.commit_uncommitted();
        let first = self.next_sequence;
        {
            let mut pending = PendingCrcs {
                appender: self,
                records: [(0, 0); 4],
                len: 0,
            };
            for payload in payloads {
                pending.push(payload.as_ref())?;
            }
            // Dropping `pending` checksums and stages what it holds, also on an early return
            // or a panic in the iterator.
        }
        self.commit_uncommitted();
        let count = self.next_sequence - first;
        if count > 0 {
            self.after_commit(u32::try_from(count).unwrap_or(u32::MAX), true)?;
        }
        Ok(first..self.next_sequence)
    }

    /// Stores the length word of a batch's record written at `offset` and gives it the next
    /// sequence. The batch's first length word is held back (in `uncommitted`) and stored
    /// last, with `Release`, by `commit_uncommitted`: readers stop at a zero length word, so
    /// none reaches this record (or any later record of the batch) before that store, and
    /// that store makes every byte of the batch visible. The other length words therefore
    /// need no ordering of their own.
    #[inline]
    fn stage(&mut self, offset: usize, length_word: u32) {
        if self.uncommitted.is_none() {
            self.uncommitted = Some((offset, length_word));
        } else {
            self.active.map.store_u32_relaxed(offset, length_word);
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.index(offset, sequence);
    }

    /// `msync`s everything appended so far and returns the new durable watermark.
    ///
    /// # Errors
    ///
    /// [`AppendError::Io`] when `msync` fails.
    pub fn sync(&mut self) -> Result<u64, AppendError> {
        self.commit_uncommitted();
        self.flush()?;
        Ok(self.durable)
    }

    /// Under [`Durability::Batch`], syncs when the oldest pending record is older than
    /// `max_delay`; otherwise does nothing. Call it from an idle loop so the delay bound holds
    /// when appends stop. Returns the durable watermark.
    ///
    /// # Errors
    ///
    /// [`AppendError::Io`] when `msync` fails.
    pub fn sync_if_due(&mut self) -> Result<u64, AppendError> {
        if let Durability::Batch { max_delay, .. } = self.config.durability {
            if self.pending_since.is_some_and(|t| t.elapsed() >= max_delay) {
                self.flush()?;
            }
        }
        Ok(self.durable)
    }

    /// Every record with a sequence below this one has been `msync`ed to stable storage.
    pub fn durable_watermark(&self) -> u64 {
        self.durable
    }

    /// The sequence the next append gets; every record below it is visible to readers.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration this appender was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Index of the segment being written.
    pub fn segment_index(&self) -> u64 {
        self.active.header.index
    }

    /// Under [`Pretouch::OnIdle`], does one bounded step of preparing the next segment on
    /// this thread and returns whether more steps are left; under other modes does nothing
    /// and returns `false`. Call it from the appending thread's idle loop (when the next
    /// message is not due yet) until it returns `false`, and again after each roll.
    ///
    /// A step is one of: unmap the segment left at the last roll; create, preallocate and
    /// map the next segment file; pre-fault the next 2 MiB of it (write zeros into the page
    /// cache, then map them: about 0.4 ms on the reference machine, though a step that has to
    /// wait for the kernel to reclaim or write back memory can take milliseconds). A segment
    /// of `S` MiB takes `S / 2 + 2` steps.
    ///
    /// # Errors
    ///
    /// [`AppendError::Io`] when creating, preallocating or zero-filling the next segment
    /// file fails, for example on a full disk (the roll then tries again and reports its own
    /// error).
    pub fn pretouch(&mut self) -> Result<bool, AppendError> {
        if self.config.pretouch != Pretouch::OnIdle {
            return Ok(false);
        }
        if let Some(retired) = self.idle.retired.take() {
            drop(retired);
            return Ok(true);
        }
        let index = self.active.header.index + 1;
        match &mut self.idle.next {
            Some(next) if next.prepared.index == index => {
                let len = next.prepared.map.bytes().len();
                if next.faulted < len {
                    next.prepared
                        .prefault(next.faulted, IDLE_STEP)
                        .map_err(Fault::io(&next.prepared.path))?;
                    next.faulted = (next.faulted + IDLE_STEP).min(len);
                }
                Ok(next.faulted < len)
            }
            _ => {
                let prepared = catalog::prepare(
                    &self.dir,
                    index,
                    self.config.segment_size,
                    false,
                    self.config.use_huge_pages(),
                )?;
                self.idle.next = Some(IdleNext {
                    prepared,
                    faulted: 0,
                });
                Ok(true)
            }
        }
    }

    /// Writes everything of a record but its length word at `self.offset` and advances the
    /// offset. The caller made room and publishes the returned length word.
    #[inline]
    fn write_record(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> (usize, u32) {
        let offset = self.offset;
        let total = RECORD_HEADER_LEN + len;
        let length_word = total as u32;
        let sequence = self.next_sequence;
        self.active
            .map
            .prefetch_range(offset + PREFETCH_AHEAD, total);
        let bytes = &mut self.active.map.bytes_mut()[offset..offset + total];
        bytes[8..16].copy_from_slice(&sequence.to_le_bytes());
        fill(&mut bytes[RECORD_HEADER_LEN..]);
        let crc = record_crc(length_word, &bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        self.offset = offset + align8(total);
        (offset, length_word)
    }

    /// Records `offset` in the sparse index when it starts a new index block. Slots skipped
    /// by a long record get the same value, so filled slots form a sorted prefix.
    #[inline]
    fn index(&mut self, offset: usize, sequence: u64) {
        let block = offset >> self.block_shift;
        if block >= self.next_slot {
            let value = pack_slot(offset, sequence - self.active.header.base_sequence);
            for slot in self.next_slot..=block {
                self.active.map.store_u64(slot_offset(slot), value);
            }
            self.next_slot = block + 1;
            self.progress.set(self.active.header.index, self.offset);
            // The slots of the next cache line are written about 8 blocks from now; fetch
            // that line now so the first of them does not wait for memory.
            self.active
                .map
                .prefetch_range(slot_offset(self.next_slot + INDEX_SLOTS_PER_LINE), 8);
        }
    }

    /// Ensures a record with a `len`-byte payload fits at `self.offset`, rolling if needed.
    #[inline]
    fn make_room(&mut self, len: usize) -> Result<(), AppendError> {
        if self.failed {
            return Err(AppendError::Failed);
        }
        if len > self.max_payload {
            return Err(AppendError::RecordTooLarge {
                len,
                max: self.max_payload,
            });
        }
        let need = align8(RECORD_HEADER_LEN + len);
        if self.offset + need > self.active.map.bytes().len() {
            self.roll()?;
        }
        Ok(())
    }

    #[inline]
    fn commit_uncommitted(&mut self) {
        if let Some((offset, length_word)) = self.uncommitted.take() {
            self.active.map.store_u32(offset, length_word);
        }
    }

    #[inline]
    fn after_commit(&mut self, records: u32, end_of_batch: bool) -> Result<(), AppendError> {
        match self.config.durability {
            Durability::None => Ok(()),
            Durability::Always => self.flush(),
            Durability::Batch {
                max_records,
                max_delay,
            } => {
                self.pending_records = self.pending_records.saturating_add(records);
                let now = Instant::now();
                let since = *self.pending_since.get_or_insert(now);
                if end_of_batch
                    || self.pending_records >= max_records
                    || now.duration_since(since) >= max_delay
                {
                    self.flush()
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `msync`s the active segment from `sync_from` to the write offset (and, after rolls
    /// under `Durability::None`, the segments left behind, with `syncfs`).
    fn flush(&mut self) -> Result<(), AppendError> {
        if self.rolled_since_sync {
            catalog::sync_fs(&self.dir)?;
            self.rolled_since_sync = false;
        }
        let end = self.offset.min(self.active.map.bytes().len());
        if end > self.sync_from {
            self.active
                .map
                .flush_range(self.sync_from, end - self.sync_from)
                .map_err(Fault::io(&self.active.path))?;
            // The index slots live in the first pages; they are hints, validated on use,
            // but sync them too so a recovered journal seeks fast.
            self.active
                .map
                .flush_range(0, self.active.header.data_offset as usize)
                .map_err(Fault::io(&self.active.path))?;
            self.sync_from = end;
        }
        self.durable = self.next_sequence;
        self.pending_records = 0;
        self.pending_since = None;
        Ok(())
    }

    /// Asks the background thread to prepare the [`Config::prepare_ahead`] segments after
    /// the active one, starting the thread on first use.
    fn prepare_next(&mut self) {
        if self.config.pretouch != Pretouch::Background {
            return;
        }
        if self.pretoucher.is_none() {
            // Segments in huge pages have one accessed bit per 2 MiB: nothing to follow.
            let follow = self.config.touch_ahead && !self.config.use_huge_pages();
            let follower = follow.then(|| {
                self.progress.set(self.active.header.index, self.offset);
                Follower::new(
                    Arc::clone(&self.progress),
                    self.followed(),
                    self.config.index_block as usize,
                )
            });
            self.pretoucher = Pretoucher::start(
                self.dir.clone(),
                self.config.segment_size,
                self.config.use_huge_pages(),
                self.config.prepare_ahead,
                follower,
                Arc::clone(&self.progress),
            );
        }
        let active = self.active.header.index;
        if let Some(pretoucher) = &mut self.pretoucher {
            while pretoucher.ahead() < self.config.prepare_ahead {
                let index = pretoucher.last_asked().unwrap_or(active) + 1;
                if pretoucher.jobs.send(Job::Prepare(index)).is_err() {
                    break;
                }
                pretoucher.pending.push_back(index);
            }
        }
    }

    /// Blocks until the segments ahead of the active one are prepared, and returns how many
    /// are: under [`Pretouch::Background`], every segment the background thread was asked
    /// for (the [`Config::prepare_ahead`] runway); under [`Pretouch::OnIdle`], the next
    /// segment, pre-faulted here by running the [`pretouch`](Self::pretouch) steps to the
    /// end; under [`Pretouch::Off`], none (returns 0 at once).
    ///
    /// Call it after [`open`](Self::open), or in a quiet period after a burst, before
    /// latency-critical appends, so that they take no page fault and no roll waits for the
    /// kernel. Preparing a segment costs about as much as writing it once; with a long
    /// runway this can take a while (tens of milliseconds per 32 MiB segment).
    ///
    /// ```
    /// use peregrine_journal::{Appender, Config};
    ///
    /// # let dir = std::env::temp_dir().join(format!("pj-doc-wait-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let config = Config::default().segment_size(1 << 20).prepare_ahead(3);
    /// let (mut appender, _) = Appender::open(&dir, config)?;
    /// assert_eq!(appender.wait_prepared()?, 3);
    /// appender.append(b"first order of the day")?;
    /// # drop(appender);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AppendError::Io`] when the background thread failed to create, preallocate or
    /// pre-fault a segment (a full disk, say), naming its path; that segment is prepared
    /// again, on the appending thread, when the appender reaches it. Under
    /// [`Pretouch::OnIdle`], the errors of [`pretouch`](Self::pretouch).
    pub fn wait_prepared(&mut self) -> Result<usize, AppendError> {
        match self.config.pretouch {
            Pretouch::Off => Ok(0),
            Pretouch::OnIdle => {
                while self.pretouch()? {}
                Ok(usize::from(self.idle.next.is_some()))
            }
            Pretouch::Background => {
                self.prepare_next();
                let Some(pretoucher) = &mut self.pretoucher else {
                    return Ok(0);
                };
                let mut failed = None;
                while pretoucher.pending.pop_front().is_some() {
                    match pretoucher.ready.recv() {
                        Ok(Ok(prepared)) => pretoucher.received.push_back(prepared),
                        Ok(Err(fault)) => {
                            failed.get_or_insert(fault);
                        }
                        // The thread is gone; rolls prepare their segments themselves.
                        Err(mpsc::RecvError) => break,
                    }
                }
                match failed {
                    Some(fault) => Err(fault.into()),
                    None => Ok(pretoucher.received.len()),
                }
            }
        }
    }

    /// The prepared segment `index`: from the background thread when it has (or is making)
    /// one, otherwise made here, without pre-faulting.
    fn take_prepared(&mut self, index: u64) -> Result<Prepared, Fault> {
        if let Some(next) = self.idle.next.take() {
            if next.prepared.index == index {
                // Pages not pre-faulted yet fault on first write.
                return Ok(next.prepared);
            }
        }
        if let Some(pretoucher) = &mut self.pretoucher {
            // Segments are asked for, and arrive, in index order: the oldest received one, or
            // else the oldest pending one, is `index` unless preparing it failed.
            if pretoucher
                .received
                .front()
                .is_some_and(|p| p.index == index)
            {
                if let Some(prepared) = pretoucher.received.pop_front() {
                    return Ok(prepared);
                }
            }
            if pretoucher.received.is_empty() && pretoucher.pending.front() == Some(&index) {
                pretoucher.pending.pop_front();
                if let Ok(Ok(prepared)) = pretoucher.ready.recv() {
                    if prepared.index == index {
                        return Ok(prepared);
                    }
                }
            }
        }
        // Not prepared, or preparing failed: do it here, reporting errors.
        catalog::prepare(&self.dir, index, self.config.segment_size, false, false)
    }

    /// The active segment, as the background thread's [`Follower`] sees it.
    fn followed(&self) -> Followed {
        Followed {
            index: self.active.header.index,
            pages: self.active.map.toucher(),
            block: self.active.header.index_block as usize,
        }
    }

    /// Moves to the next segment: publish its header, seal the active one, rename the new one
    /// into place. A tailer that sees the seal before the rename waits for the file.
    #[cold]
    fn roll(&mut self) -> Result<(), AppendError> {
        self.failed = true;
        self.commit_uncommitted();
        let durable_mode = self.config.durability != Durability::None;
        if durable_mode {
            self.flush()?;
        } else {
            self.rolled_since_sync = true;
        }
        let index = self.active.header.index + 1;
        let prepared = self.take_prepared(index)?;
        let size = self.active.map.bytes().len();
        if self.offset + 4 <= size {
            self.active.map.store_u32(self.offset, SEAL);
            if durable_mode {
                self.active
                    .map
                    .flush_range(self.offset, 4)
                    .map_err(Fault::io(&self.active.path))?;
            }
        }
        let active = publish(
            &self.dir,
            prepared,
            self.next_sequence,
            &self.config,
            durable_mode,
        )?;
        self.block_shift = active.header.index_block.trailing_zeros();
        self.offset = active.header.data_offset as usize;
        self.sync_from = self.offset;
        self.next_slot = 0;
        let retired = std::mem::replace(&mut self.active, active);
        self.progress.set(self.active.header.index, self.offset);
        // Unmapping a large dirty mapping takes tens of microseconds or more: not here.
        match &self.pretoucher {
            Some(pretoucher) => {
                let job = Job::Rolled {
                    retired: Box::new(retired),
                    entered: self.followed(),
                };
                if let Err(mpsc::SendError(job)) = pretoucher.jobs.send(job) {
                    drop(job);
                }
            }
            None if self.config.pretouch == Pretouch::OnIdle => {
                // Unmapped by the next `pretouch` call (or the next roll).
                drop(self.idle.retired.replace(Box::new(retired)));
            }
            None => drop(retired),
        }
        self.failed = false;
        self.prepare_next();
        Ok(())
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.commit_uncommitted();
        if self.config.durability != Durability::None {
            // Errors cannot be reported from drop; call `sync` first to see them.
            let _ = self.flush();
        }
        if let Some(Pretoucher {
            jobs,
            ready,
            handle,
            ..
        }) = self.pretoucher.take()
        {
            // The thread finishes its queue and exits; a prepared file stays as `.seg.pre`
            // and the next open removes it.
            drop(jobs);
            let _ = handle.join();
            drop(ready);
        }
    }
}

/// Records of a batch copied into the segment whose checksums and length words are not
/// written yet: up to four, checksummed together as four interleaved CRC chains when the
/// fourth arrives, one by one when fewer are left (before a roll, at the end of the batch).
/// Dropping it finishes what it holds, so an early return or a panic in the caller's iterator
/// never leaves a record without its length word.
struct PendingCrcs<'a> {
    appender: &'a mut Appender,
    /// (offset, length word) of each pending record, in order; the first `len` are used.
    records: [(usize, u32); 4],
    len: usize,
}

impl PendingCrcs<'_> {
    /// Copies the sequence and payload of the batch's next record into the segment, rolling
    /// first (after finishing the pending records) when it does not fit.
    #[inline]
    fn push(&mut self, payload: &[u8]) -> Result<(), AppendError> {
        let total = RECORD_HEADER_LEN + payload.len();
        let appender = &mut *self.appender;
        if appender.failed
            || payload.len() > appender.max_payload
            || appender.offset + align8(total) > appender.active.map.bytes().len()
        {
            self.finish();
            self.appender.make_room(payload.len())?;
        }
        let appender = &mut *self.appender;
        let offset = appender.offset;
        let sequence = appender.next_sequence + self.len as u64;
        appender
            .active
            .map
            .prefetch_range(offset + PREFETCH_AHEAD, total);
        let record = &mut appender.active.map.bytes_mut()[offset..offset + total];
        record[8..16].copy_from_slice(&sequence.to_le_bytes());
        record[RECORD_HEADER_LEN..].copy_from_slice(payload);
        appender.offset = offset + align8(total);
        self.records[self.len] = (offset, total as u32);
        self.len += 1;
        if self.len == 4 {
            self.finish();
        }
        Ok(())
    }

    /// Writes the pending records' checksums and stages their length words.
    #[inline]
    fn finish(&mut self) {
        let records = &self.records[..self.len];
        let appender = &mut *self.appender;
        let bytes = appender.active.map.bytes();
        let body =
            |(offset, length_word): (usize, u32)| &bytes[offset + 8..offset + length_word as usize];
        let mut crcs = [0u32; 4];
        if let [a, b, c, d] = *records {
            crcs = crc::crc32c_append4([a.1, b.1, c.1, d.1], [a, b, c, d].map(body));
        } else {
            for (crc, &record) in crcs.iter_mut().zip(records) {
                *crc = record_crc(record.1, body(record));
            }
        }
        let bytes = appender.active.map.bytes_mut();
        for (&(offset, _), crc) in records.iter().zip(crcs) {
            bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        }
        for &(offset, length_word) in records {
            appender.stage(offset, length_word);
        }
        self.len = 0;
    }
}

impl Drop for PendingCrcs<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl std::fmt::Debug for PendingCrcs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCrcs")
            .field("records", &&self.records[..self.len])
            .finish_non_exhaustive()
    }
}

/// How far ahead of each record the appender prefetches the segment (every cache line the
/// record will span, with write intent): a page, so that the first write to each new page
/// finds its lines (and its page-table entry) already fetched, where the hardware
/// prefetchers, which stop at page boundaries, leave it cold.
const PREFETCH_AHEAD: usize = 4096;

/// Index slots (8 bytes each) in one cache line: how far ahead [`Appender::index`] prefetches.
const INDEX_SLOTS_PER_LINE: usize = 8;

/// Bytes one [`Appender::pretouch`] step pre-faults: one huge page.
const IDLE_STEP: usize = 2 << 20;

/// The background thread's work when the appending thread does it ([`Pretouch::OnIdle`]).
#[derive(Debug, Default)]
struct IdleWork {
    /// The next segment, created and pre-faulted as far as the steps got.
    next: Option<IdleNext>,
    /// The segment left at the last roll, still mapped.
    retired: Option<Box<Active>>,
}

/// A segment being prepared by [`Appender::pretouch`].
#[derive(Debug)]
struct IdleNext {
    prepared: Prepared,
    /// Bytes from the start already pre-faulted.
    faulted: usize,
}

/// The largest [`Config::prepare_ahead`]. The default, two, gives a background thread that
/// was descheduled for a while (or slowed by the appender's own memory traffic) a whole
/// segment's time to catch up before the appender waits at a roll.
pub const MAX_PREPARE_AHEAD: usize = 1024;

/// Work for the background thread.
enum Job {
    /// Create, preallocate and pre-fault this segment under its prepared name.
    Prepare(u64),
    /// The appender rolled: unmap and close the segment it left, follow the one it entered.
    Rolled {
        retired: Box<Active>,
        entered: Followed,
    },
}

/// The appender's background thread: prepares the next segment while the current one fills,
/// and unmaps the previous one, so a roll costs a header write, a seal and a rename.
#[derive(Debug)]
struct Pretoucher {
    jobs: mpsc::Sender<Job>,
    ready: mpsc::Receiver<Result<Prepared, Fault>>,
    /// Indices of the segments asked for and not yet received, oldest first.
    pending: VecDeque<u64>,
    /// Segments received by [`Appender::wait_prepared`] and not yet rolled to, oldest first;
    /// all of them have lower indices than every pending one.
    received: VecDeque<Prepared>,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Prepare(index) => f.debug_tuple("Prepare").field(index).finish(),
            Job::Rolled { retired, entered } => f
                .debug_struct("Rolled")
                .field("retired", &retired.path)
                .field("entered", &entered.index)
                .finish(),
        }
    }
}

impl Pretoucher {
    /// Starts the thread; `None` if it cannot be spawned (rolls then prepare inline).
    fn start(
        dir: PathBuf,
        segment_size: u64,
        huge_pages: bool,
        ahead: usize,
        mut follower: Option<Follower>,
        progress: Arc<Progress>,
    ) -> Option<Pretoucher> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let mut retired = Retired::new(progress, MAX_RETIRED_BYTES.max(segment_size as usize));
        let handle = std::thread::Builder::new()
            .name("journal-pretouch".into())
            .spawn(move || {
                unpin_current_thread();
                loop {
                    let timed = follower.is_some() || !retired.is_empty();
                    let job = if timed {
                        match job_rx.recv_timeout(FOLLOW_PERIOD) {
                            Ok(job) => Ok(job),
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                if let Some(follower) = &mut follower {
                                    let _ = follower.touch();
                                }
                                retired.tick();
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                        }
                    } else {
                        job_rx.recv().map_err(|_| ())
                    };
                    let Ok(job) = job else { break };
                    match job {
                        Job::Prepare(index) => {
                            let prepared = catalog::prepare_with(
                                &dir,
                                index,
                                segment_size,
                                true,
                                huge_pages,
                                || {
                                    if let Some(follower) = &mut follower {
                                        follower.touch_if_due();
                                    }
                                },
                            );
                            if let (Some(follower), Ok(prepared)) = (&mut follower, &prepared) {
                                follower.prepared(index, prepared.map.toucher());
                            }
                            if ready_tx.send(prepared).is_err() {
                                break;
                            }
                        }
                        Job::Rolled {
                            retired: left,
                            entered,
                        } => {
                            if let Some(follower) = &mut follower {
                                follower.rolled(entered);
                            }
                            retired.push(left);
                        }
                    }
                    if let Some(follower) = &mut follower {
                        follower.touch_if_due();
                    }
                }
            })
            .ok()?;
        Some(Pretoucher {
            jobs,
            ready,
            pending: VecDeque::with_capacity(ahead),
            received: VecDeque::with_capacity(ahead),
            handle,
        })
    }

    /// Segments asked for and not yet rolled to.
    fn ahead(&self) -> usize {
        self.pending.len() + self.received.len()
    }

    /// Index of the last segment asked for, if any is still ahead.
    fn last_asked(&self) -> Option<u64> {
        self.pending
            .back()
            .copied()
            .or_else(|| self.received.back().map(|p| p.index))
    }
}

/// The appender's write position, for its background thread: the active segment's index
/// (its low 32 bits) in the high half, and in the low half where the appender's next record
/// goes, as of the last record that started an index block (segments are at most 2 GiB).
///
/// A hint, on its own cache line, with one writer and one reader. Its loads and stores are
/// `Relaxed` and pair with nothing: nothing is published through it and no memory access is
/// safe only because of its value (any value, even a torn or stale one, leads to loads that
/// are clamped to a live mapping, see [`PageToucher::touch`]). It is therefore no atomic
/// protocol and has no loom model. A stale value only makes [`Follower::touch`] touch from
/// an earlier position, or skip a turn.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Progress(AtomicU64);

impl Progress {
    #[inline]
    fn set(&self, index: u64, offset: usize) {
        self.0.store(
            (index << 32) | (offset as u64 & 0xffff_ffff),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> (u32, usize) {
        let word = self.0.load(Ordering::Relaxed);
        ((word >> 32) as u32, (word & 0xffff_ffff) as usize)
    }
}

/// Most bytes of segments the appender has left that [`Retired`] keeps mapped.
const MAX_RETIRED_BYTES: usize = 1 << 30;

/// Segments the appender has left, kept mapped on the background thread until the appender
/// pauses. Unmapping a segment whose pages are dirty makes the kernel flush the TLB of
/// every CPU the process runs on, once per 2 MiB: each an interrupt of several microseconds
/// on the appending core in a virtual machine, 16 per 32 MiB segment, which were about half
/// of the slowest 0.01% of 64-byte appends once the accessed-bit stalls were gone. They are
/// unmapped together once the appender has not moved for a [`FOLLOW_PERIOD`], and the
/// oldest at once beyond [`MAX_RETIRED_BYTES`] (at least one is always unmapped at a roll
/// past that).
#[derive(Debug)]
struct Retired {
    segments: VecDeque<Box<Active>>,
    bytes: usize,
    /// At most this many bytes stay mapped.
    cap: usize,
    progress: Arc<Progress>,
    /// The appender's position at the last tick.
    last: (u32, usize),
}

impl Retired {
    fn new(progress: Arc<Progress>, cap: usize) -> Self {
        Retired {
            segments: VecDeque::new(),
            bytes: 0,
            cap,
            last: progress.get(),
            progress,
        }
    }

    fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The appender left `segment`.
    fn push(&mut self, segment: Box<Active>) {
        self.bytes += segment.map.bytes().len();
        self.segments.push_back(segment);
        while self.bytes > self.cap {
            match self.segments.pop_front() {
                Some(oldest) => self.bytes -= oldest.map.bytes().len(),
                None => break,
            }
        }
    }

    /// A timed turn: unmaps every retired segment when the appender has not moved since the
    /// last one.
    fn tick(&mut self) {
        let now = self.progress.get();
        if now == self.last {
            self.segments.clear();
            self.bytes = 0;
        }
        self.last = now;
    }
}

/// A segment the appender writes (or will write), as the [`Follower`] holds it: the handle
/// keeps the mapping mapped for as long as the follower may touch it.
#[derive(Debug)]
struct Followed {
    index: u64,
    pages: PageToucher,
    /// The segment's index block: how far behind the appender [`Progress`] may be there.
    block: usize,
}

/// How often the [`Follower`] touches ahead, and [`Retired`] looks whether the appender
/// paused. Constant, also while the appender is idle: it cannot wake the thread when a burst
/// starts without a system call on its hot path, and a thread that backed off while it was
/// idle would sleep through the burst. Each wake-up of the background thread costs the
/// appending core a little too where the two share a physical core or a cache, so turns are
/// few and each covers [`FOLLOW_LEAD`].
const FOLLOW_PERIOD: Duration = Duration::from_millis(5);

/// How far ahead, in the appender's time at its recent rate, the [`Follower`] touches:
/// twice its period, so that a late turn still finds the pages touched, and short next to
/// the scanners' sampling intervals (DAMON's default is 100 ms per sample; the reference
/// machine's reclaim samples every 500 ms).
const FOLLOW_LEAD: Duration = Duration::from_millis(10);

/// How far past the appender's published position (and an index block) the [`Follower`]
/// starts touching. Lines the appender is about to write, and has prefetched, must stay in its
/// cache: a load from this thread would take them back and make the appender's stores wait
/// for them. What lies closer was touched by earlier turns (see [`follow_window`]).
const FOLLOW_GAP: usize = 64 << 10;

/// The least the [`Follower`] touches ahead of the appender's last index block.
const FOLLOW_MIN_WINDOW: usize = 256 << 10;

/// The most the [`Follower`] touches ahead in one turn.
const FOLLOW_MAX_WINDOW: usize = 32 << 20;

/// Runs on the background thread ([`Config::touch_ahead`]): touches the pages just ahead
/// of the appender, in the mapping it writes through, so that their page-table entries are
/// marked accessed when it gets there (see [`PageToucher::touch`]).
#[derive(Debug)]
struct Follower {
    progress: Arc<Progress>,
    /// The segment the appender was last known to write.
    active: Followed,
    /// Segments this thread prepared that the appender has not entered, oldest first.
    prepared: VecDeque<Followed>,
    /// The index block of the segments this thread prepares ([`Config::index_block`]).
    prepared_block: usize,
    /// The position the last turn saw, and when.
    last: (u32, usize, Instant),
    /// Bytes touched per turn (see [`follow_window`]).
    window: usize,
}

impl Follower {
    fn new(progress: Arc<Progress>, active: Followed, prepared_block: usize) -> Self {
        let (index, offset) = progress.get();
        Follower {
            last: (index, offset, Instant::now()),
            progress,
            active,
            prepared: VecDeque::new(),
            prepared_block,
            window: FOLLOW_MAX_WINDOW,
        }
    }

    /// This thread prepared segment `index`. It replaces an earlier one of the same index,
    /// which the appender dropped (a roll that failed asks for the segment again).
    fn prepared(&mut self, index: u64, pages: PageToucher) {
        self.prepared.retain(|p| p.index != index);
        self.prepared.push_back(Followed {
            index,
            pages,
            block: self.prepared_block,
        });
    }

    /// The appender entered `entered`; segments before it are no longer touched.
    fn rolled(&mut self, entered: Followed) {
        while self
            .prepared
            .front()
            .is_some_and(|p| p.index <= entered.index)
        {
            self.prepared.pop_front();
        }
        self.active = entered;
    }

    /// A turn if the last one is a period old: between the steps of preparing a segment.
    fn touch_if_due(&mut self) {
        if self.last.2.elapsed() >= FOLLOW_PERIOD {
            let _ = self.touch();
        }
    }

    /// One turn: touches the window ahead of the appender's position, spilling into the
    /// next prepared segment when the window passes the end of the active one.
    ///
    /// Returns what it touched: segment index and byte range in it, for each of the (at most
    /// two) segments; an empty range where the window did not reach.
    fn touch(&mut self) -> [(u64, Range<usize>); 2] {
        let mut touched = [(0, 0..0), (0, 0..0)];
        let (index, offset) = self.progress.get();
        let now = Instant::now();
        let advanced = if index == self.last.0 {
            offset.saturating_sub(self.last.1)
        } else {
            offset
        };
        self.window = follow_window(self.window, advanced, now.duration_since(self.last.2));
        self.last = (index, offset, now);
        // The appender may have rolled into a segment whose `Rolled` job is still queued.
        let mut segments = std::iter::once(&self.active)
            .chain(&self.prepared)
            .skip_while(|s| s.index as u32 != index);
        let Some(current) = segments.next() else {
            return touched;
        };
        let (from, to) = follow_range(offset, self.window, current.block);
        let len = current.pages.len();
        touched[0] = (current.index, from.min(len)..to.min(len));
        current.pages.touch(from, to - from);
        if to > len {
            if let Some(next) = segments.next().filter(|n| n.index == current.index + 1) {
                let start = from.saturating_sub(len).min(next.pages.len());
                let end = (to - len).min(next.pages.len());
                touched[1] = (next.index, start..end);
                next.pages.touch(start, end - start);
            }
        }
        touched
    }
}

/// How many bytes the [`Follower`] touches in its next turns (before the index block it
/// adds), given the last turn's `window` and that the appender moved `advanced` bytes in
/// `elapsed`: what the appender writes in [`FOLLOW_LEAD`] at that rate, or, when that is
/// less, the last window shrunk by 1/64 (about halved in 45 turns, a quarter second), so that
/// the first turns of a burst after a quiet spell still reach as far as the last burst went;
/// at least [`FOLLOW_MIN_WINDOW`] and at most [`FOLLOW_MAX_WINDOW`]. A follower starts at
/// the most, knowing nothing of the rate yet.
fn follow_window(window: usize, advanced: usize, elapsed: Duration) -> usize {
    let lead = FOLLOW_LEAD.as_nanos();
    let at_rate = (advanced as u128 * lead)
        .checked_div(elapsed.as_nanos())
        .unwrap_or(u128::MAX);
    let at_rate = usize::try_from(at_rate).unwrap_or(usize::MAX);
    at_rate
        .max(window - window / 64)
        .clamp(FOLLOW_MIN_WINDOW, FOLLOW_MAX_WINDOW)
}

/// The bytes the [`Follower`] touches when the appender's published position is `offset`
/// in a segment whose index block is `block` (the appender may be up to a block, plus a
/// record, further on): from a block and [`FOLLOW_GAP`] past it to `window` further, as
/// offsets that may run past the end of the segment into the next one.
fn follow_range(offset: usize, window: usize, block: usize) -> (usize, usize) {
    let from = offset.saturating_add(block).saturating_add(FOLLOW_GAP);
    (from, from.saturating_add(window))
}

/// Lets the calling (background) thread run on every CPU the process may use: a thread
/// inherits its creator's affinity, and the creator is often an appender pinned to one core.
/// Failure only means the thread stays where it was.
fn unpin_current_thread() {
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: `cpu < CPU_SETSIZE`, the number of bits in `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; pid 0 is the calling thread.
    // The kernel drops CPUs outside the process's cpuset.
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// Writes the header of a prepared segment and renames it to its published name.
fn publish(
    dir: &Path,
    mut prepared: Prepared,
    base_sequence: u64,
    config: &Config,
    durable_mode: bool,
) -> Result<Active, Fault> {
    let size = prepared.map.bytes().len() as u64;
    let header = SegmentHeader {
        index: prepared.index,
        base_sequence,
        segment_size: size,
        data_offset: format::data_offset(size, config.index_block) as u32,
        index_block: config.index_block,
        created_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    prepared.map.bytes_mut()[..HEADER_LEN].copy_from_slice(&header.encode());
    if durable_mode {
        prepared
            .map
            .flush_range(0, HEADER_LEN)
            .map_err(Fault::io(&prepared.path))?;
    }
    let path = dir.join(format::segment_name(prepared.index));
    fs::rename(&prepared.path, &path).map_err(Fault::io(&path))?;
    if durable_mode {
        catalog::sync_dir(dir)?;
    }
    Ok(Active {
        header,
        path,
        map: prepared.map,
        _file: prepared.file,
    })
}

/// Where appending resumes in the tail segment.
#[derive(Debug)]
struct Tail {
    offset: usize,
    next_sequence: u64,
    next_slot: usize,
}

/// Scans the tail segment, zeroes a torn tail and stale index slots, and says where to resume.
fn recover_tail(
    active: &mut Active,
    report: &mut RecoveryReport,
    repair_corrupt_tail: bool,
) -> Result<Tail, OpenError> {
    let header = active.header;
    let size = active.map.bytes().len();
    let map = &active.map;
    let scanned = format::scan(
        map.bytes(),
        |at| map.load_u32(at),
        header.data_offset as usize,
        header.base_sequence,
        |_, _| report.tail_records += 1,
    );
    let (offset, sequence) = (scanned.offset, scanned.sequence);
    let sealed = scanned.stop == Stop::Sealed;
    let end = if sealed {
        // A roll stopped between sealing this segment and publishing the next: the first
        // append rolls again.
        size
    } else {
        offset
    };
    if !sealed {
        let bytes = active.map.bytes();
        let last_nonzero = bytes[offset..]
            .chunks(8)
            .rposition(|chunk| chunk.iter().any(|&b| b != 0));
        if let Some(chunk) = last_nonzero {
            let garbage_end = (offset + (chunk + 1) * 8).min(size);
            let found = count_records(bytes, offset, garbage_end, sequence);
            // A record that fails validation with valid records after it is not a torn
            // write (the length word is published last, so a killed appender leaves a zero
            // length, never a wrong one): it is damage, and truncating would drop records.
            if let (Stop::Invalid(reason), true) = (scanned.stop, found > 0) {
                if !repair_corrupt_tail {
                    return Err(OpenError::Corrupt {
                        path: active.path.clone(),
                        offset: offset as u64,
                        reason,
                    });
                }
            }
            report.discarded_records = found;
            report.discarded_bytes = (garbage_end - offset) as u64;
            report.discarded_at = Some((active.path.clone(), offset as u64));
            active.map.bytes_mut()[offset..garbage_end].fill(0);
        }
    }
    // Index slots form a sorted prefix; drop any that point at or past the end.
    let slots = slot_count(header.segment_size, header.index_block);
    let mut next_slot = slots;
    for slot in 0..slots {
        let value = active.map.load_u64(slot_offset(slot));
        let (slot_at, _) = unpack_slot(value);
        if value == 0 || slot_at >= end || slot_at < header.data_offset as usize {
            next_slot = slot;
            break;
        }
    }
    for slot in next_slot..slots {
        if active.map.load_u64(slot_offset(slot)) != 0 {
            active.map.store_u64(slot_offset(slot), 0);
        }
    }
    Ok(Tail {
        offset: end,
        next_sequence: sequence,
        next_slot,
    })
}

/// Counts the records that can still be recognised in a discarded tail, for the recovery
/// report: any 8-aligned position holding a length, a sequence not before `sequence` and a
/// matching CRC. A torn batch (first length word missing) still counts its later records.
fn count_records(bytes: &[u8], from: usize, to: usize, sequence: u64) -> u64 {
    let mut at = from;
    let mut count = 0;
    while at + RECORD_HEADER_LEN <= to {
        let word = format::read_u32(bytes, at);
        let len = word as usize;
        let found = len >= RECORD_HEADER_LEN && word != SEAL && len <= to - at && {
            let seq = format::read_u64(bytes, at + 8);
            seq.wrapping_sub(sequence) < (1 << 32)
                && matches!(format::step(bytes, at, word, seq), Step::Record { .. })
        };
        if found {
            count += 1;
            at += align8(len);
        } else {
            at += 8;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS5: Duration = Duration::from_millis(5);

    #[test]
    fn the_window_follows_the_rate_and_shrinks_slowly_when_idle() {
        // A new follower knows no rate: it starts at the most and an idle turn shrinks that.
        let first = follow_window(FOLLOW_MAX_WINDOW, 0, MS5);
        assert_eq!(first, FOLLOW_MAX_WINDOW - FOLLOW_MAX_WINDOW / 64);
        // Idle for long, it comes down to the least and stays there.
        let mut window = FOLLOW_MAX_WINDOW;
        for _ in 0..1000 {
            window = follow_window(window, 0, MS5);
        }
        assert_eq!(window, FOLLOW_MIN_WINDOW);
        // 1 MiB in 5 ms is 2 MiB in the 10 ms lead.
        assert_eq!(follow_window(window, 1 << 20, MS5), 2 << 20);
        // A faster burst is capped; no time at all counts as the fastest.
        assert_eq!(follow_window(window, 1 << 30, MS5), FOLLOW_MAX_WINDOW);
        assert_eq!(follow_window(window, 1, Duration::ZERO), FOLLOW_MAX_WINDOW);
        // After a burst the window stays near it for the next turns rather than dropping.
        let after = follow_window(8 << 20, 0, MS5);
        assert!(after > 7 << 20 && after < 8 << 20, "{after}");
    }

    #[test]
    fn the_range_starts_past_the_block_and_the_gap() {
        assert_eq!(
            follow_range(40_960, 1 << 20, 4096),
            (
                40_960 + 4096 + FOLLOW_GAP,
                40_960 + 4096 + FOLLOW_GAP + (1 << 20)
            )
        );
        assert_eq!(
            follow_range(usize::MAX - 10, 1 << 20, 4096),
            (usize::MAX, usize::MAX)
        );
    }

    /// Three 1 MiB segments prepared in a fresh directory, as the background thread has them.
    fn segments(tag: &str) -> (PathBuf, Vec<Prepared>) {
        let dir = std::env::temp_dir().join(format!(
            "peregrine-journal-follower-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let prepared = (0..3)
            .map(|index| catalog::prepare(&dir, index, 1 << 20, true, false).unwrap())
            .collect();
        (dir, prepared)
    }

    fn followed(prepared: &Prepared) -> Followed {
        Followed {
            index: prepared.index,
            pages: prepared.map.toucher(),
            block: 4096,
        }
    }

    #[test]
    fn retired_segments_stay_mapped_until_the_appender_pauses_or_the_cap() {
        let (dir, prepared) = segments("retired");
        let config = Config::default().segment_size(1 << 20);
        let progress = Arc::new(Progress::default());
        progress.set(0, 100);
        let mut retired = Retired::new(Arc::clone(&progress), 2 << 20);
        // Mappings of this test's segment files in this process.
        let mapped = || {
            let maps = fs::read_to_string("/proc/self/maps").unwrap();
            let dir = dir.to_string_lossy().into_owned();
            maps.lines().filter(|l| l.contains(dir.as_str())).count()
        };
        for (sequence, prepared) in (0..).zip(prepared) {
            let active = publish(&dir, prepared, sequence, &config, false).unwrap();
            retired.push(Box::new(active));
        }
        // Three 1 MiB segments against a 2 MiB cap: the oldest went at once.
        assert_eq!(retired.segments.len(), 2);
        assert_eq!(retired.bytes, 2 << 20);
        assert_eq!(retired.segments[0].header.index, 1);
        assert_eq!(mapped(), 2);
        // The appender moved since the last tick: nothing is unmapped.
        progress.set(3, 4096);
        retired.tick();
        assert_eq!(mapped(), 2);
        // It stood still for a whole tick: everything is.
        retired.tick();
        assert!(retired.is_empty());
        assert_eq!(retired.bytes, 0);
        assert_eq!(mapped(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_turn_touches_ahead_of_the_appender_and_into_the_next_segment() {
        let (dir, prepared) = segments("turn");
        let progress = Arc::new(Progress::default());
        progress.set(0, 8192);
        let mut follower = Follower::new(Arc::clone(&progress), followed(&prepared[0]), 4096);
        follower.prepared(1, prepared[1].map.toucher());
        follower.prepared(2, prepared[2].map.toucher());
        let mib = 1 << 20;
        // The window starts at its largest: the rest of segment 0 past the gap, then all of
        // segment 1 (a window never reaches two segments on).
        let [first, second] = follower.touch();
        assert_eq!(first, (0, 8192 + 4096 + FOLLOW_GAP..mib));
        assert_eq!(second, (1, 0..mib));
        // Idle turns shrink the window to the least: it ends inside segment 0.
        for _ in 0..1000 {
            let _ = follower.touch();
        }
        let [first, second] = follower.touch();
        let from = 8192 + 4096 + FOLLOW_GAP;
        assert_eq!(first, (0, from..from + FOLLOW_MIN_WINDOW));
        assert_eq!(second.1, 0..0);
        // Near the end of segment 0 it spills into segment 1 by what does not fit.
        let offset = mib - 128 * 1024;
        progress.set(0, offset);
        let [first, second] = follower.touch();
        assert_eq!(first.1, offset + 4096 + FOLLOW_GAP..mib);
        assert_eq!(second.0, 1);
        assert_eq!(second.1.start, 0);
        assert!(second.1.end >= 4096 + FOLLOW_GAP + FOLLOW_MIN_WINDOW - 128 * 1024);
        // The appender rolled into segment 1 before its `Rolled` job arrived: the turn
        // follows it there already.
        progress.set(1, 4096);
        let [first, _] = follower.touch();
        assert_eq!(first.0, 1);
        assert_eq!(first.1.start, 4096 + 4096 + FOLLOW_GAP);
        // After the roll, segments before the one entered are dropped.
        follower.rolled(followed(&prepared[1]));
        assert_eq!(follower.prepared.len(), 1);
        assert_eq!(follower.prepared[0].index, 2);
        // A segment prepared again (after a failed roll) replaces the one of its index.
        follower.prepared(2, prepared[2].map.toucher());
        assert_eq!(follower.prepared.len(), 1);
        // A position in a segment the follower does not know touches nothing.
        progress.set(7, 4096);
        assert_eq!(follower.touch(), [(0, 0..0), (0, 0..0)]);
        drop(prepared);
        // The follower still holds its mappings: touching them after the appender let go is
        // allowed (they stay mapped until the follower drops them).
        progress.set(2, 0);
        assert_eq!(follower.touch()[0].0, 2);
        drop(follower);
        let _ = fs::remove_dir_all(&dir);
    }
}
