//! The on-disk format: segment file names, the segment header, the record header and the
//! sparse index layout. Everything here is plain arithmetic on byte slices; no I/O.
//!
//! ```text
//! segment file (segment_size bytes, preallocated)
//! +--------------------+----------------------+-----------------------------------------+
//! | header (64 bytes)  | sparse index         | records ...              | zeros        |
//! |                    | slots x u64          | (8-byte aligned)         | (unwritten)  |
//! +--------------------+----------------------+-----------------------------------------+
//! 0                    64                     data_offset
//!
//! record
//! +-------------+-------------+-----------------+-------------------+---------+
//! | length u32  | crc32c u32  | sequence u64    | payload           | padding |
//! +-------------+-------------+-----------------+-------------------+---------+
//! length = 16 + payload length (never 0); 0 means "nothing written here yet";
//! u32::MAX means "segment sealed, continue in the next segment".
//! crc32c: CRC register seeded with the length word, over the sequence and the payload.
//! ```
//!
//! Header fields (little endian): magic `PRGNJRNL` at 0, format version u32 at 8, header
//! CRC32C u32 at 12 (computed with this field zeroed), segment index u64 at 16, base
//! sequence u64 at 24, segment size u64 at 32, data offset u32 at 40, index block size u32
//! at 44, creation time in nanoseconds since the Unix epoch u64 at 48, reserved to 64.

/// Magic bytes at the start of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"PRGNJRNL";
/// Format version written by this crate; other versions are refused.
pub(crate) const VERSION: u32 = 1;
/// Size of the segment header in bytes.
pub(crate) const HEADER_LEN: usize = 64;
/// Size of the record header in bytes.
pub(crate) const RECORD_HEADER_LEN: usize = 16;
/// Length word value that seals a segment: the writer continues in the next one.
pub(crate) const SEAL: u32 = u32::MAX;
/// Segment files are named `<index, 20 digits>.seg`.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// A segment prepared ahead of the roll is named `<index>.seg.pre` until it is published.
pub(crate) const PREPARED_SUFFIX: &str = ".seg.pre";
/// Name of the lock file that enforces a single appender.
pub(crate) const LOCK_FILE: &str = "journal.lock";
/// Cursor files are named `<name>.cursor`.
pub(crate) const CURSOR_SUFFIX: &str = ".cursor";
/// A cursor being written is named `<name>.cursor.tmp` until it is renamed into place.
pub(crate) const CURSOR_TMP_SUFFIX: &str = ".cursor.tmp";
/// The default archive directory for retention, inside the journal directory.
pub(crate) const ARCHIVE_DIR: &str = "archive";
/// Smallest segment size accepted.
pub(crate) const MIN_SEGMENT_SIZE: u64 = 8 * 1024;
/// Largest segment size accepted (offsets are stored as u32).
pub(crate) const MAX_SEGMENT_SIZE: u64 = 1 << 31;
/// Page granularity the segment size is rounded to.
pub(crate) const PAGE: u64 = 4096;

/// Rounds `n` up to a multiple of 8.
#[inline]
pub(crate) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// File name of segment `index`.
pub(crate) fn segment_name(index: u64) -> String {
    format!("{index:020}{SEGMENT_SUFFIX}")
}

/// File name of the prepared (not yet published) segment `index`.
pub(crate) fn prepared_name(index: u64) -> String {
    format!("{index:020}{PREPARED_SUFFIX}")
}

/// Parses a segment file name, `None` when `name` is not one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where the sparse index ends and records begin, for a segment of `segment_size` bytes
/// with one index slot per `index_block` bytes of file.
pub(crate) const fn data_offset(segment_size: u64, index_block: u32) -> u64 {
    let slots = segment_size.div_ceil(index_block as u64);
    (HEADER_LEN as u64 + slots * 8).div_ceil(64) * 64
}

/// Number of sparse index slots in a segment.
pub(crate) const fn slot_count(segment_size: u64, index_block: u32) -> usize {
    segment_size.div_ceil(index_block as u64) as usize
}

/// Byte offset of index slot `slot`.
#[inline]
pub(crate) const fn slot_offset(slot: usize) -> usize {
    HEADER_LEN + slot * 8
}

/// Packs an index slot: record offset in the low half, sequence minus base in the high half.
/// Zero means "empty"; it never collides because a record offset is never zero.
#[inline]
pub(crate) const fn pack_slot(offset: usize, sequence_delta: u64) -> u64 {
    (sequence_delta << 32) | offset as u64
}

/// Unpacks an index slot into (offset, sequence minus base).
#[inline]
pub(crate) const fn unpack_slot(slot: u64) -> (usize, u64) {
    ((slot & 0xffff_ffff) as usize, slot >> 32)
}

/// The fixed header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Position of this segment in the journal, counting from 0; matches the file name.
    pub index: u64,
    /// Sequence of the first record in this segment.
    pub base_sequence: u64,
    /// Size of the segment file in bytes.
    pub segment_size: u64,
    /// Offset of the first record.
    pub data_offset: u32,
    /// Bytes of file covered by one sparse index slot (a power of two).
    pub index_block: u32,
    /// Creation time, nanoseconds since the Unix epoch (informational).
    pub created_nanos: u64,
}

impl SegmentHeader {
    /// Encodes the header, checksum included.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.index.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_size.to_le_bytes());
        b[40..44].copy_from_slice(&self.data_offset.to_le_bytes());
        b[44..48].copy_from_slice(&self.index_block.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_nanos.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header. On failure returns the offset of the offending field
    /// and a stable lowercase reason.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, (u64, &'static str)> {
        if bytes.len() < HEADER_LEN {
            return Err((bytes.len() as u64, "truncated header"));
        }
        if bytes[0..8] != MAGIC {
            return Err((0, "wrong magic"));
        }
        if read_u32(bytes, 8) != VERSION {
            return Err((8, "unsupported format version"));
        }
        let mut copy = [0u8; HEADER_LEN];
        copy.copy_from_slice(&bytes[..HEADER_LEN]);
        copy[12..16].fill(0);
        if crc32c::crc32c(&copy) != read_u32(bytes, 12) {
            return Err((12, "header checksum mismatch"));
        }
        let header = SegmentHeader {
            index: read_u64(bytes, 16),
            base_sequence: read_u64(bytes, 24),
            segment_size: read_u64(bytes, 32),
            data_offset: read_u32(bytes, 40),
            index_block: read_u32(bytes, 44),
            created_nanos: read_u64(bytes, 48),
        };
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&header.segment_size)
            || header.segment_size % PAGE != 0
        {
            return Err((32, "segment size out of range"));
        }
        if !header.index_block.is_power_of_two() || header.index_block < 64 {
            return Err((44, "index block size invalid"));
        }
        let expected = data_offset(header.segment_size, header.index_block);
        if u64::from(header.data_offset) != expected
            || expected + RECORD_HEADER_LEN as u64 > header.segment_size
        {
            return Err((40, "data offset inconsistent with layout"));
        }
        Ok(header)
    }
}

/// Reads a little-endian u32 at `at`; the caller has checked bounds.
#[inline]
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at`; the caller has checked bounds.
#[inline]
pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// CRC32C of a record: the CRC register is seeded with the length word, then the sequence
/// and payload (contiguous in the record, `body` = bytes `8 .. length`) are folded in. One pass
/// over contiguous bytes, and a changed length changes the checksum like changed data would.
#[inline]
pub(crate) fn record_crc(length: u32, body: &[u8]) -> u32 {
    crate::crc::crc32c_append(length, body)
}

/// What one step of a record scan found at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A valid record: `len` is its length word, the next record starts at `offset + align8(len)`.
    Record {
        /// Length word (header plus payload).
        len: usize,
    },
    /// Nothing written here yet: the end of committed data.
    End,
    /// The segment is sealed (or exactly full): continue in the next segment.
    Sealed,
    /// Something that is not a valid record; the reason is stable lowercase text.
    Invalid(&'static str),
}

/// Classifies the bytes at `offset` given the length word already loaded (with Acquire) by the
/// caller. `bytes` is the whole segment. Never reads out of bounds.
pub(crate) fn step(bytes: &[u8], offset: usize, length_word: u32, expected_sequence: u64) -> Step {
    if offset + 4 > bytes.len() {
        return Step::Sealed;
    }
    if length_word == 0 {
        return Step::End;
    }
    if length_word == SEAL {
        return Step::Sealed;
    }
    let len = length_word as usize;
    if len < RECORD_HEADER_LEN {
        return Step::Invalid("length below record header size");
    }
    if len > bytes.len() - offset {
        return Step::Invalid("length beyond segment end");
    }
    let sequence = read_u64(bytes, offset + 8);
    if sequence != expected_sequence {
        return Step::Invalid("sequence out of order");
    }
    let crc = read_u32(bytes, offset + 4);
    if record_crc(length_word, &bytes[offset + 8..offset + len]) != crc {
        return Step::Invalid("checksum mismatch");
    }
    Step::Record { len }
}

/// How a scan of a segment's records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A zero length word: the end of committed data.
    End,
    /// A seal, or the end of the segment.
    Sealed,
    /// An invalid record; the reason is stable lowercase text.
    Invalid(&'static str),
}

/// Where a scan of a segment's records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// Offset just after the last valid record.
    pub offset: usize,
    /// Sequence the next record would have.
    pub sequence: u64,
    /// Why the scan stopped.
    pub stop: Stop,
}

/// Walks records from `offset`, expecting `sequence` first, calling `visit(offset, len)` for
/// each valid one. `load` reads a length word with `Acquire`. One walk serves recovery,
/// `verify` and readers' bounded scans.
pub(crate) fn scan(
    bytes: &[u8],
    load: impl Fn(usize) -> u32,
    mut offset: usize,
    mut sequence: u64,
    mut visit: impl FnMut(usize, usize),
) -> ScanEnd {
    loop {
        if offset + 4 > bytes.len() {
            return ScanEnd {
                offset,
                sequence,
                stop: Stop::Sealed,
            };
        }
        let stop = match step(bytes, offset, load(offset), sequence) {
            Step::Record { len } => {
                visit(offset, len);
                offset += align8(len);
                sequence += 1;
                continue;
            }
            Step::End => Stop::End,
            Step::Sealed => Stop::Sealed,
            Step::Invalid(reason) => Stop::Invalid(reason),
        };
        return ScanEnd {
            offset,
            sequence,
            stop,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader {
            index: 3,
            base_sequence: 77,
            segment_size: 65536,
            data_offset: data_offset(65536, 4096) as u32,
            index_block: 4096,
            created_nanos: 1,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&b),
            Err((12, "header checksum mismatch"))
        );
        assert_eq!(
            SegmentHeader::decode(&b[..10]).unwrap_err().1,
            "truncated header"
        );
    }

    #[test]
    fn names() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name(&prepared_name(1)), None);
    }
}
