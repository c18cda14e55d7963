//! The journal directory: which files belong to it, the segment headers, the lock file that
//! admits a single appender, and creating (preallocating, pre-faulting) segment files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Fault, OpenError};
use crate::format::{self, SegmentHeader, HEADER_LEN};
use crate::map::SegmentMap;

/// Mode of every file the journal creates: owner read-write, everyone else read-only.
pub(crate) const FILE_MODE: u32 = 0o644;

/// One published segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegmentEntry {
    pub path: PathBuf,
    pub header: SegmentHeader,
}

/// What a directory listing found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Published segments, sorted by index, indices contiguous, base sequences increasing.
    pub segments: Vec<SegmentEntry>,
    /// Segments prepared ahead of a roll and never published (left by a crash or a close).
    pub prepared: Vec<PathBuf>,
}

/// Lists and validates the journal directory. A missing directory is an empty journal.
pub(crate) fn list(dir: &Path) -> Result<Listing, Fault> {
    let mut listing = Listing::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(Fault::Io(dir.to_path_buf(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(Fault::io(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(Fault::Foreign(path));
        };
        if let Some(index) = format::parse_segment_name(&name) {
            let header = read_header(&path)?;
            if header.index != index {
                return Err(Fault::BadHeader(
                    path,
                    16,
                    "segment index does not match file name",
                ));
            }
            listing.segments.push(SegmentEntry { path, header });
        } else if name.ends_with(format::PREPARED_SUFFIX) {
            listing.prepared.push(path);
        } else if name == format::LOCK_FILE
            || name.ends_with(format::CURSOR_SUFFIX)
            || name.ends_with(format::CURSOR_TMP_SUFFIX)
            || (name == format::ARCHIVE_DIR && path.is_dir())
        {
            // Ours, handled elsewhere.
        } else {
            return Err(Fault::Foreign(path));
        }
    }
    listing.segments.sort_by_key(|s| s.header.index);
    for pair in listing.segments.windows(2) {
        if pair[1].header.index != pair[0].header.index + 1 {
            return Err(Fault::BadHeader(
                pair[1].path.clone(),
                16,
                "segment index not contiguous",
            ));
        }
        if pair[1].header.base_sequence <= pair[0].header.base_sequence {
            return Err(Fault::BadHeader(
                pair[1].path.clone(),
                24,
                "base sequence not increasing",
            ));
        }
    }
    Ok(listing)
}

/// Reads and validates the header of one segment file, and checks the file's length.
pub(crate) fn read_header(path: &Path) -> Result<SegmentHeader, Fault> {
    let file = File::open(path).map_err(Fault::io(path))?;
    read_header_of(&file, path)
}

/// As [`read_header`], for an open file.
pub(crate) fn read_header_of(file: &File, path: &Path) -> Result<SegmentHeader, Fault> {
    let len = file.metadata().map_err(Fault::io(path))?.len();
    let mut buf = [0u8; HEADER_LEN];
    let want = HEADER_LEN.min(len as usize);
    file.read_exact_at(&mut buf[..want], 0)
        .map_err(Fault::io(path))?;
    let header = SegmentHeader::decode(&buf[..want])
        .map_err(|(offset, reason)| Fault::BadHeader(path.to_path_buf(), offset, reason))?;
    if len < header.segment_size {
        return Err(Fault::BadHeader(
            path.to_path_buf(),
            len,
            "segment too short",
        ));
    }
    if len > header.segment_size {
        return Err(Fault::BadHeader(
            path.to_path_buf(),
            header.segment_size,
            "segment longer than its header says",
        ));
    }
    Ok(header)
}

/// Takes the journal's exclusive lock (`flock`), creating the lock file if needed. The lock is
/// released when the returned file is closed, including when the process dies.
pub(crate) fn lock(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(format::LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|source| OpenError::Io {
            path: path.clone(),
            source,
        })?;
    // `verify` probes the lock with a shared `flock` for a few microseconds; retry briefly so
    // that probe is never mistaken for a second appender.
    let mut attempts = 0;
    loop {
        // SAFETY: `flock` on a file descriptor we own; it touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let source = io::Error::last_os_error();
        if source.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(OpenError::Io { path, source });
        }
        attempts += 1;
        if attempts == 5 {
            return Err(OpenError::Locked { path });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The pid is informational, for an operator wondering who holds the lock.
    let io = |source| OpenError::Io {
        path: path.clone(),
        source,
    };
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// Whether some process holds the appender lock right now (without taking it for long).
pub(crate) fn appender_active(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(format::LOCK_FILE)) else {
        return false;
    };
    // SAFETY: `flock` on a file descriptor we own; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}

/// `fsync` of a directory, so that a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Fault> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Fault::io(dir))
}

/// `syncfs` of the file system holding `dir`: makes every segment written through a mapping
/// that has since been unmapped durable, without keeping their descriptors.
pub(crate) fn sync_fs(dir: &Path) -> Result<(), Fault> {
    let file = File::open(dir).map_err(Fault::io(dir))?;
    // SAFETY: `syncfs` on a descriptor we own; it touches no memory.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(Fault::Io(dir.to_path_buf(), io::Error::last_os_error()));
    }
    Ok(())
}

/// A segment file created, preallocated and mapped, under its `.seg.pre` name, header not
/// yet written: the appender publishes it when it rolls.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub index: u64,
    pub path: PathBuf,
    pub file: File,
    pub map: SegmentMap,
    /// Asked for huge pages: zeros go into the page cache 2 MiB at a time (see
    /// [`Prepared::prefault`]).
    pub huge_pages: bool,
}

/// Creates segment `index` under its prepared name: preallocated to `size` bytes (zeroed),
/// mapped, asking for huge pages with `huge_pages` (see [`SegmentMap::advise_huge_pages`]),
/// and with every page faulted in when `prefault` is set.
pub(crate) fn prepare(
    dir: &Path,
    index: u64,
    size: u64,
    prefault: bool,
    huge_pages: bool,
) -> Result<Prepared, Fault> {
    prepare_with(dir, index, size, prefault, huge_pages, || {})
}

/// As [`prepare`], calling `between` after each 2 MiB pre-faulted (the background thread
/// follows the appender in between, see `Follower` in the appender).
pub(crate) fn prepare_with(
    dir: &Path,
    index: u64,
    size: u64,
    prefault: bool,
    huge_pages: bool,
    mut between: impl FnMut(),
) -> Result<Prepared, Fault> {
    let path = dir.join(format::prepared_name(index));
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Fault::Io(path, e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(Fault::io(&path))?;
    if prefault {
        // Writing the zeros below reserves the space (ext4 and xfs delayed allocation), so
        // a full disk is an error here too, without `fallocate`: its block allocation reads
        // block-group bitmaps from disk when they are not cached, which stalled preparing a
        // segment for up to 80 ms on the reference machine.
        file.set_len(size).map_err(Fault::io(&path))?;
    } else {
        preallocate(&file, size).map_err(Fault::io(&path))?;
    }
    // SAFETY: the file was just created by this process under a name no reader opens; the
    // appender is its only writer and never truncates it (see `SegmentMap`'s `# Safety`).
    let map = unsafe { SegmentMap::new(&file) }.map_err(Fault::io(&path))?;
    if huge_pages {
        map.advise_huge_pages();
    }
    let mut prepared = Prepared {
        index,
        path,
        file,
        map,
        huge_pages,
    };
    if prefault {
        let size = size as usize;
        let mut at = 0;
        while at < size {
            prepared
                .prefault(at, PREFAULT_STEP)
                .map_err(Fault::io(&prepared.path))?;
            at += PREFAULT_STEP;
            between();
        }
    }
    Ok(prepared)
}

impl Prepared {
    /// Brings `offset .. offset + len` of the new segment into the page cache and faults it
    /// into the mapping for writing, so appends there take no page fault.
    ///
    /// The range is first written with zeros through `pwrite`: on ext4 a write fault on a
    /// preallocated (unwritten) page that is not cached goes through the read path, and
    /// faulting 8 MiB that way took 25 ms on the reference machine against 2 ms for
    /// `pwrite` of zeros followed by the (then cheap) fault-in. The file is not published
    /// yet and holds zeros, so writing zeros changes nothing a reader could see.
    ///
    /// A file system that caches files in large folios sizes them by the write: zeros
    /// written 2 MiB at a time (at 2 MiB-aligned offsets) land in 2 MiB folios, which a
    /// mapping that asked for huge pages then maps whole, one TLB entry per 2 MiB
    /// (`FilePmdMapped` in `/proc/meminfo`; ext4 on Linux 6.18 does this, 256 KiB writes
    /// left every page at 4 KiB). Without huge pages the writes are 256 KiB.
    ///
    /// # Errors
    ///
    /// The `pwrite` error, `ENOSPC` when the disk is full.
    pub(crate) fn prefault(&mut self, offset: usize, len: usize) -> io::Result<()> {
        static ZEROS: [u8; HUGE_PAGE] = [0; HUGE_PAGE];
        let chunk = if self.huge_pages {
            HUGE_PAGE
        } else {
            256 * 1024
        };
        let end = offset.saturating_add(len).min(self.map.bytes().len());
        let mut at = offset;
        while at < end {
            // Up to the next chunk boundary, so that later writes are aligned.
            let n = (chunk - at % chunk).min(end - at);
            self.file.write_all_at(&ZEROS[..n], at as u64)?;
            at += n;
        }
        self.map.prefault_range(offset, end.saturating_sub(offset));
        Ok(())
    }
}

/// Bytes in a huge page (a PMD mapping) on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Bytes [`prepare_with`] pre-faults between two calls of its `between`: a huge page, so
/// that the steps stay aligned to the chunks [`Prepared::prefault`] writes.
const PREFAULT_STEP: usize = HUGE_PAGE;

/// Reserves disk blocks for the whole file so that a full disk is an error now, not a
/// `SIGBUS` on some later append. Falls back to `set_len` where `fallocate` is unsupported.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `posix_fallocate` on a file descriptor we own; it touches no memory.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
