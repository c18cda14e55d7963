//! Memory-mapped segment files. This module owns every raw-pointer access to mapped memory:
//! the atomic length words that publish records, the atomic index slots, page pre-faulting
//! and `msync`. The rest of the crate uses the safe methods below.
//!
//! Publication protocol (the same one Chronicle Queue and Aeron use for their logs): the
//! appender writes a record's sequence, checksum and payload with plain stores, then stores
//! its length word with `Release`. A reader loads the length word with `Acquire`; a non-zero
//! value makes every byte written before that store visible, in this process or in any other
//! process that maps the same file, because both mappings share the same physical pages.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{Advice, Mmap, MmapOptions, MmapRaw};

/// Bytes in a cache line on the CPUs the journal targets: the stride of
/// [`SegmentMap::prefetch_range`].
const CACHE_LINE: usize = 64;

/// A writable shared mapping of a whole segment file, used by the single appender.
///
/// # Safety
///
/// A segment file is shared state outside Rust's control: readers in other processes map it,
/// and any process with permission may write to it or truncate it. Creating a mapping is
/// therefore `unsafe`, and the caller of [`SegmentMap::new`] or [`SegmentView::new`] must
/// uphold what the compiler cannot check:
///
/// - the file is not truncated while mapped (an access past the new end raises `SIGBUS`);
///   the journal itself never shrinks a segment file;
/// - bytes may be changed by another process at any time; this crate only trusts bytes that
///   a `Release` store of a length word published, re-validates them with a CRC, and never
///   derives a memory access from them without a bounds check;
/// - only the single appender (enforced by the journal's lock file) writes record bytes.
///
/// Under those rules the bytes behave like memory that another thread of this process writes
/// before a `Release` store, which is what the atomics below synchronise with.
///
/// The mapping is reference counted only so that a [`PageToucher`] can keep it mapped; the
/// `SegmentMap` is the only handle that reads or writes its bytes.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: Arc<MmapRaw>,
}

impl SegmentMap {
    /// Maps `file` read-write and shared.
    ///
    /// # Safety
    ///
    /// See the type-level `# Safety` section of [`SegmentMap`].
    pub(crate) unsafe fn new(file: &File) -> io::Result<Self> {
        // Mapping is safe in itself here (`MmapRaw` hands out no references); the accessors
        // below rely on the caller upholding the type-level `# Safety` contract.
        let map = MmapOptions::new().map_raw(file)?;
        Ok(Self { map: Arc::new(map) })
    }

    /// The whole segment.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and stays mapped while `self` (one of
        // its `Arc`s) lives. The shared-file contract is in the type-level `# Safety`; a
        // `PageToucher` never creates a reference to these bytes and never writes them.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    /// The whole segment, writable.
    #[inline]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the mapping is writable. `&mut self` makes this the only
        // reference to the bytes in this process: the `SegmentMap` is their only Rust handle
        // (a `PageToucher` only issues loads whose value is discarded, see its `touch`).
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.map.len()) }
    }

    /// A handle that keeps this mapping mapped and touches its pages from another thread.
    pub(crate) fn toucher(&self) -> PageToucher {
        PageToucher {
            map: Arc::clone(&self.map),
        }
    }

    /// Publishes a length word with `Release`: pairs with the `Acquire` load in
    /// [`SegmentView::load_u32`] (and [`SegmentMap::load_u32`]), so a reader that sees the
    /// value also sees the record bytes written before this call.
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 4-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn store_u32(&mut self, offset: usize, value: u32) {
        assert!(offset % 4 == 0 && offset + 4 <= self.map.len());
        let ptr = self.map.as_mut_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: `ptr` is 4-byte aligned (the mapping is page aligned and `offset % 4 == 0`),
        // inside the mapping (checked above) and valid for reads and writes for as long as
        // `self` lives; other accesses to this word are atomic (loads in readers) or happen
        // through `&mut self`, so there is no mixed-size race with Rust code of this process.
        let word = unsafe { AtomicU32::from_ptr(ptr) };
        word.store(value, Ordering::Release);
    }

    /// Stores a length word without ordering: for the records of a batch after its first,
    /// which a later `Release` [`store_u32`](Self::store_u32) of the batch's first length
    /// word publishes (readers cannot reach them before they see that word).
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 4-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn store_u32_relaxed(&mut self, offset: usize, value: u32) {
        assert!(offset % 4 == 0 && offset + 4 <= self.map.len());
        let ptr = self.map.as_mut_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: as in `store_u32`.
        let word = unsafe { AtomicU32::from_ptr(ptr) };
        word.store(value, Ordering::Relaxed);
    }

    /// Asks the CPU to bring every cache line of `offset..offset + len` into its cache with
    /// the intent to write (`PREFETCHW` where the CPU has it), so that writes there soon
    /// neither wait for memory nor, on a new page, for a page-table walk. A hint with no
    /// visible effect; lines past the end of the mapping are skipped.
    #[inline]
    pub(crate) fn prefetch_range(&self, offset: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let end = offset.saturating_add(len).min(self.map.len());
            let mut line = offset & !(CACHE_LINE - 1);
            while line < end {
                let ptr = self.map.as_ptr().wrapping_add(line).cast::<i8>();
                // SAFETY: a prefetch reads nothing into the program and never faults; `ptr`
                // is inside the mapping (`line < end <= len`) in any case.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(ptr)
                };
                line += CACHE_LINE;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (offset, len);
    }

    /// Loads a length word with `Acquire`; pairs with [`SegmentMap::store_u32`].
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 4-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn load_u32(&self, offset: usize) -> u32 {
        load_u32(self.bytes(), offset)
    }

    /// Publishes a sparse index slot with `Release`, after the record it points to; pairs
    /// with the `Acquire` load in [`SegmentView::load_u64`].
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 8-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn store_u64(&mut self, offset: usize, value: u64) {
        assert!(offset % 8 == 0 && offset + 8 <= self.map.len());
        let ptr = self.map.as_mut_ptr().wrapping_add(offset).cast::<u64>();
        // SAFETY: as in `store_u32`, with 8-byte alignment checked above.
        let word = unsafe { AtomicU64::from_ptr(ptr) };
        word.store(value, Ordering::Release);
    }

    /// Loads an index slot with `Acquire`.
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 8-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn load_u64(&self, offset: usize) -> u64 {
        load_u64(self.bytes(), offset)
    }

    /// `msync(MS_SYNC)` of the pages covering `offset .. offset + len`.
    pub(crate) fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.map.flush_range(offset, len)
    }

    /// Asks for transparent huge pages (`MADV_HUGEPAGE`) before pages are faulted in: where
    /// the file system caches files in large folios (ext4 and xfs on recent kernels) the
    /// segment is then faulted in and mapped 2 MiB at a time, which makes pre-faulting
    /// several times faster, unmapping cheaper and appends take fewer TLB misses. Only
    /// advice: ignored where unsupported.
    pub(crate) fn advise_huge_pages(&self) {
        let _ = self.map.advise(Advice::HugePage);
    }

    /// Faults every page from `offset` on in for writing; see [`prefault_range`](Self::prefault_range).
    pub(crate) fn prefault_from(&mut self, offset: usize) {
        self.prefault_range(offset, self.map.len().saturating_sub(offset));
    }

    /// Faults the pages covering `offset .. offset + len` (clamped to the segment) in for
    /// writing so that appends do not take page faults. Uses `MADV_POPULATE_WRITE` (Linux
    /// 5.14+) and falls back to touching one byte per page (reading it and writing the same
    /// value back, so contents are unchanged).
    pub(crate) fn prefault_range(&mut self, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.map.len());
        let start = offset / 4096 * 4096;
        if start >= end {
            return;
        }
        if self
            .map
            .advise_range(Advice::PopulateWrite, start, end - start)
            .is_ok()
        {
            return;
        }
        let base = self.map.as_mut_ptr();
        let mut at = start;
        while at < end {
            // SAFETY: `at < end <= len`, so the byte is inside the mapping; only the single appender
            // writes segment bytes (see the type-level `# Safety`), and writing back the value
            // just read changes nothing but forces a write fault on the page.
            unsafe {
                let p = base.add(at);
                p.write_volatile(p.read_volatile());
            }
            at += 4096;
        }
    }
}

/// A handle on an appender's mapping of a segment, held by the appender's background thread:
/// it keeps the mapping mapped and can only [`touch`](Self::touch) its pages.
#[derive(Debug, Clone)]
pub(crate) struct PageToucher {
    map: Arc<MmapRaw>,
}

impl PageToucher {
    /// Bytes in the mapping.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Loads one byte of every 4 KiB page that `offset .. offset + len` (clamped to the
    /// mapping) starts in, and discards it.
    ///
    /// The load goes through the page-table entries of the appender's mapping, which makes
    /// the CPU set their accessed bits. Memory-tiering and proactive-reclaim scanners (DAMON,
    /// idle page tracking, `MADV_COLD`) clear those bits to sample which memory is in use,
    /// and an entry found clear costs the next access to its page a second, slower page walk
    /// that sets the bit again: about 200 ns on the reference machine, which the appender's
    /// prefetch cannot hide because a prefetch does not set the bit. A store needs the bit
    /// set; touching pages just ahead of the appender moves that cost to this thread.
    pub(crate) fn touch(&self, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.map.len());
        let mut at = offset & !(TOUCH_PAGE - 1);
        let base = self.map.as_ptr();
        while at < end {
            // SAFETY: `at < end <= len`, so `ptr` is inside the mapping, which `self.map` keeps
            // mapped; the journal never truncates a mapped segment file (`SegmentMap`'s
            // `# Safety`). The appender may be writing this byte at the same moment, through a
            // `&mut [u8]`: the loaded value goes to a scratch register the program never reads,
            // so for the program the load is an operation with no effect (what it changes is
            // outside the language: the cache line's state, the page-table entry's accessed bit
            // and, for a page not yet faulted in, a read fault). It creates no reference and
            // writes nothing, so it neither races with nor aliases the appender's accesses.
            unsafe { load_and_discard(base.wrapping_add(at)) };
            at += TOUCH_PAGE;
        }
    }
}

/// The page size [`PageToucher::touch`] steps by: the smallest on the targets.
const TOUCH_PAGE: usize = 4096;

/// Loads the byte at `ptr` into a scratch register and discards it.
///
/// # Safety
///
/// `ptr` must point into memory that is mapped and readable.
#[inline]
unsafe fn load_and_discard(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees `ptr` is readable; the asm reads one byte from it into a
    // register it declares clobbered and touches nothing else.
    unsafe {
        std::arch::asm!(
            "movzx {scratch:e}, byte ptr [{ptr}]",
            ptr = in(reg) ptr,
            scratch = out(reg) _,
            options(nostack, preserves_flags, readonly),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!(
            "ldrb {scratch:w}, [{ptr}]",
            ptr = in(reg) ptr,
            scratch = out(reg) _,
            options(nostack, preserves_flags, readonly),
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = ptr;
}

/// A read-only shared mapping of a whole segment file, used by readers, tailers and `verify`.
///
/// See the `# Safety` section of [`SegmentMap`]: the same contract applies.
#[derive(Debug)]
pub(crate) struct SegmentView {
    map: Mmap,
}

impl SegmentView {
    /// Maps `file` read-only and shared.
    ///
    /// # Safety
    ///
    /// See the type-level `# Safety` section of [`SegmentMap`].
    pub(crate) unsafe fn new(file: &File) -> io::Result<Self> {
        // SAFETY: the caller upholds the contract in `SegmentMap`'s `# Safety` section.
        let map = unsafe { MmapOptions::new().map(file)? };
        // Pages the appender cached as huge folios are then mapped 2 MiB at a time: fewer
        // faults and TLB misses for a scan. Only advice; ignored where unsupported.
        let _ = map.advise(Advice::HugePage);
        Ok(Self { map })
    }

    /// The whole segment.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Loads a length word with `Acquire`; pairs with [`SegmentMap::store_u32`] in the
    /// appender (possibly in another process).
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 4-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn load_u32(&self, offset: usize) -> u32 {
        load_u32(&self.map, offset)
    }

    /// Loads an index slot with `Acquire`; pairs with [`SegmentMap::store_u64`].
    ///
    /// # Panics
    ///
    /// Panics if `offset` is not 8-byte aligned or not inside the segment.
    #[inline]
    pub(crate) fn load_u64(&self, offset: usize) -> u64 {
        load_u64(&self.map, offset)
    }
}

#[inline]
fn load_u32(bytes: &[u8], offset: usize) -> u32 {
    assert!(offset % 4 == 0 && offset + 4 <= bytes.len());
    let ptr = bytes.as_ptr().wrapping_add(offset).cast::<AtomicU32>();
    // SAFETY: `ptr` is aligned (page-aligned mapping, `offset % 4 == 0`) and in bounds (checked
    // above) for the lifetime of `bytes`. A plain atomic `load` of a lock-free size is allowed
    // even on read-only memory (std::sync::atomic, "Atomic accesses to read-only memory"), and
    // the only writer of this word stores it atomically.
    let word = unsafe { &*ptr };
    word.load(Ordering::Acquire)
}

#[inline]
fn load_u64(bytes: &[u8], offset: usize) -> u64 {
    assert!(offset % 8 == 0 && offset + 8 <= bytes.len());
    let ptr = bytes.as_ptr().wrapping_add(offset).cast::<AtomicU64>();
    // SAFETY: as in `load_u32`, with 8-byte alignment checked above.
    let word = unsafe { &*ptr };
    word.load(Ordering::Acquire)
}
