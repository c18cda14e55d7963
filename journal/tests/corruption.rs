//! Damaged journals: flipped bits and truncations are always detected, bad input is an error
//! naming path and offset, and thousands of randomly mutated segment files never make
//! `open`, `verify` or reading panic or return a wrong record.

mod common;

use std::fs;
use std::path::Path;

use common::{pattern, TempDir, XorShift};
use peregrine_journal::{verify, Appender, Config, OpenError, ReadError, Reader};

const SEGMENT: u64 = 16 * 1024;

fn config() -> Config {
    Config::default()
        .segment_size(SEGMENT)
        .index_block(256)
        .pretouch(false)
}

/// A closed journal of `records` pattern records, returned as (file name, bytes) of its
/// segments, sorted.
fn fixture(records: u64) -> Vec<(String, Vec<u8>)> {
    let dir = TempDir::new("fixture");
    let (mut appender, _) = Appender::open(dir.path(), config()).unwrap();
    for s in 0..records {
        if s % 4 == 0 {
            appender.append_batch([pattern(s), pattern(s + 1)]).unwrap();
        } else if s % 4 != 1 {
            appender.append(&pattern(s)).unwrap();
        }
    }
    drop(appender);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".seg"))
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn install(dir: &Path, files: &[(String, Vec<u8>)]) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(path).unwrap();
        } else {
            fs::remove_file(path).unwrap();
        }
    }
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Reads everything readable; every record returned must be the one written.
/// Returns (records read, whether reading ended in an error).
fn read_checked(dir: &Path, from: u64) -> (u64, bool) {
    let Ok(mut reader) = Reader::open(dir) else {
        return (0, true);
    };
    if reader.seek(from).is_err() {
        return (0, true);
    }
    let mut count = 0;
    for _ in 0..100_000 {
        match reader.next() {
            Ok(Some(record)) => {
                assert_eq!(
                    record.payload(),
                    &pattern(record.sequence())[..],
                    "silently wrong record {}",
                    record.sequence()
                );
                count += 1;
            }
            Ok(None) => return (count, false),
            Err(_) => return (count, true),
        }
    }
    panic!("reader did not stop");
}

#[test]
fn flipped_bits_are_always_detected() {
    let files = fixture(500);
    assert!(files.len() >= 4, "fixture spans segments");
    let dir = TempDir::new("flip");
    let mut rng = XorShift::new(7);
    let mut by_open = 0;
    for trial in 0..600 {
        let mut damaged = files.clone();
        let which = rng.below(damaged.len() as u64) as usize;
        let bit = rng.below(SEGMENT * 8);
        damaged[which].1[(bit / 8) as usize] ^= 1 << (bit % 8);
        install(dir.path(), &damaged);

        let err = verify(dir.path()).expect_err(&format!(
            "trial {trial}: flip of bit {bit} in {} not detected",
            damaged[which].0
        ));
        assert!(
            err.to_string().contains(&damaged[which].0),
            "trial {trial}: error does not name the segment: {err}"
        );
        // Whatever open and read do, they never return a wrong record.
        read_checked(dir.path(), 0);
        if let Ok((_, report)) = Appender::open(dir.path(), config()) {
            if report.discarded_bytes > 0 {
                by_open += 1;
                let (path, _) = report.discarded_at.clone().unwrap();
                assert!(path.ends_with(&damaged[which].0));
            }
        }
        read_checked(dir.path(), 0);
    }
    assert!(
        by_open > 0,
        "some flips hit the tail segment and were discarded"
    );
}

#[test]
fn truncations_are_always_detected() {
    let files = fixture(500);
    let dir = TempDir::new("truncate");
    let mut rng = XorShift::new(11);
    for trial in 0..300 {
        let mut damaged = files.clone();
        let which = rng.below(damaged.len() as u64) as usize;
        let len = rng.below(SEGMENT) as usize;
        damaged[which].1.truncate(len);
        install(dir.path(), &damaged);
        for err in [
            verify(dir.path()).unwrap_err(),
            Reader::open(dir.path()).unwrap_err(),
            Appender::open(dir.path(), config()).unwrap_err(),
        ] {
            match &err {
                OpenError::BadHeader { path, offset, .. } => {
                    assert!(path.ends_with(&damaged[which].0), "trial {trial}: {err}");
                    assert!(*offset <= len as u64, "trial {trial}: {err}");
                }
                other => panic!("trial {trial}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn torn_tail_is_discarded_and_reported() {
    let files = fixture(200);
    let dir = TempDir::new("torn");
    let mut damaged = files.clone();
    let tail = damaged.last_mut().unwrap();
    // A write that never got its length word: payload bytes after the last record.
    let end = tail.1.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = (end + 7) & !7;
    tail.1[at + 8..at + 40].fill(0xAB);
    let tail_name = tail.0.clone();
    install(dir.path(), &damaged);
    assert!(
        verify(dir.path()).is_err(),
        "verify sees the unrecovered tail"
    );
    let before = read_checked(dir.path(), 0);
    let (_, report) = Appender::open(dir.path(), config()).unwrap();
    assert_eq!(report.discarded_bytes, 32 + 8);
    let (path, offset) = report.discarded_at.unwrap();
    assert!(path.ends_with(&tail_name));
    assert_eq!(offset, at as u64);
    assert_eq!(report.next_sequence, 200);
    verify(dir.path()).unwrap();
    assert_eq!(read_checked(dir.path(), 0), before);
}

#[test]
fn bad_input_errors_carry_path_and_offset() {
    let files = fixture(300);
    let dir = TempDir::new("bad-input");
    let first = &files[0].0;

    // A foreign file.
    install(dir.path(), &files);
    fs::write(dir.join("notes.txt"), b"hello").unwrap();
    for err in [
        Reader::open(dir.path()).unwrap_err(),
        Appender::open(dir.path(), config()).unwrap_err(),
        verify(dir.path()).unwrap_err(),
    ] {
        assert!(matches!(&err, OpenError::ForeignFile { path } if path.ends_with("notes.txt")));
        assert!(err
            .to_string()
            .starts_with("foreign file in journal directory: "));
    }

    let header_case = |mutate: &dyn Fn(&mut Vec<u8>), offset: u64, reason: &str| {
        let mut damaged = files.clone();
        mutate(&mut damaged[0].1);
        install(dir.path(), &damaged);
        for err in [
            Reader::open(dir.path()).unwrap_err(),
            Appender::open(dir.path(), config()).unwrap_err(),
            verify(dir.path()).unwrap_err(),
        ] {
            match &err {
                OpenError::BadHeader {
                    path,
                    offset: o,
                    reason: r,
                } => {
                    assert!(path.ends_with(first), "{err}");
                    assert_eq!((*o, *r), (offset, reason), "{err}");
                    assert!(err.to_string().contains(&format!("at offset {offset}")));
                }
                other => panic!("{reason}: unexpected {other:?}"),
            }
        }
    };
    header_case(&|b| b[0..8].copy_from_slice(b"NOTOURS!"), 0, "wrong magic");
    header_case(&|b| b[8] = 2, 8, "unsupported format version");
    header_case(&|b| b.truncate(10), 10, "truncated header");
    header_case(&|b| b.clear(), 0, "truncated header");
    header_case(&|b| b[20] ^= 0x40, 12, "header checksum mismatch");
    header_case(&|b| b.truncate(8192), 8192, "segment too short");
    header_case(
        &|b| b.extend_from_slice(&[0; 4096]),
        SEGMENT,
        "segment longer than its header says",
    );

    // An absurd length in a committed record of the first (sealed) segment.
    let mut damaged = files.clone();
    let data_offset = u32::from_le_bytes(damaged[0].1[40..44].try_into().unwrap()) as usize;
    let first_len = u32::from_le_bytes(
        damaged[0].1[data_offset..data_offset + 4]
            .try_into()
            .unwrap(),
    );
    let second = data_offset + ((first_len as usize + 7) & !7);
    damaged[0].1[second..second + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    install(dir.path(), &damaged);
    match verify(dir.path()).unwrap_err() {
        OpenError::Corrupt {
            path,
            offset,
            reason,
        } => {
            assert!(path.ends_with(first));
            assert_eq!(offset, second as u64);
            assert_eq!(reason, "length beyond segment end");
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().sequence(), 0);
    match reader.next().unwrap_err() {
        err @ ReadError::Corrupt { .. } => {
            let text = err.to_string();
            assert!(text.contains(first.as_str()) && text.contains(&format!("offset {second}")));
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Recomputes a segment header's CRC after a deliberate field change, so the mutation
/// reaches the checks behind the checksum.
fn fix_header_crc(bytes: &mut [u8]) {
    if bytes.len() < 64 {
        return;
    }
    let mut copy = [0u8; 64];
    copy.copy_from_slice(&bytes[..64]);
    copy[12..16].fill(0);
    let crc = crc32c::crc32c(&copy);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn fuzz_mutated_segments_never_panic() {
    let files = fixture(150);
    let dir = TempDir::new("fuzz");
    let mut rng = XorShift::new(0xf022);
    let interesting32 = [
        0u32,
        1,
        8,
        15,
        16,
        17,
        24,
        255,
        4096,
        16383,
        16384,
        u32::MAX,
        u32::MAX - 1,
    ];
    let interesting64 = [
        0u64,
        1,
        63,
        64,
        4096,
        8192,
        16384,
        1 << 31,
        1 << 32,
        u64::MAX,
    ];
    for trial in 0..3000 {
        let mut damaged = files.clone();
        let which = rng.below(damaged.len() as u64) as usize;
        let bytes = &mut damaged[which].1;
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(16) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = rng.next_u64() as u8;
                }
            }
            1 => {
                // A length word somewhere in the records.
                let at = (576 + rng.below(SEGMENT - 600) as usize) & !7;
                let value = interesting32[rng.below(interesting32.len() as u64) as usize];
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            2 => {
                // A header field, with a valid header checksum.
                let field = [16usize, 24, 32, 40, 44][rng.below(5) as usize];
                let value = interesting64[rng.below(interesting64.len() as u64) as usize];
                let width = if field >= 40 { 4 } else { 8 };
                bytes[field..field + width].copy_from_slice(&value.to_le_bytes()[..width]);
                fix_header_crc(bytes);
            }
            3 => {
                // A sparse index slot.
                let slot = rng.below(64) as usize;
                let value = if rng.below(2) == 0 {
                    rng.next_u64()
                } else {
                    (rng.below(16) << 32) | (rng.below(SEGMENT + 64) & !7)
                };
                bytes[64 + slot * 8..72 + slot * 8].copy_from_slice(&value.to_le_bytes());
            }
            4 => {
                let len = rng.below(SEGMENT * 2) as usize;
                bytes.resize(len, rng.next_u64() as u8);
            }
            _ => {
                // A sequence number.
                let at = (576 + rng.below(SEGMENT - 600) as usize) & !7;
                let value = rng.below(400);
                bytes[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
            }
        }
        install(dir.path(), &damaged);
        let _ = verify(dir.path());
        let from = rng.below(200);
        read_checked(dir.path(), from);
        if let Ok((mut appender, report)) = Appender::open(dir.path(), config()) {
            let next = report.next_sequence;
            if next < 100_000 {
                let _ = appender.append(&pattern(next));
            }
            drop(appender);
            read_checked(dir.path(), 0);
        }
        let _ = trial;
    }
}

#[test]
fn damage_inside_the_tail_segment_is_an_error_not_a_truncation() {
    let files = fixture(500);
    let dir = TempDir::new("mid-tail");
    let mut damaged = files.clone();
    let tail = &mut damaged.last_mut().unwrap().1;
    let data_offset = u32::from_le_bytes(tail[40..44].try_into().unwrap()) as usize;
    let first_len = u32::from_le_bytes(tail[data_offset..data_offset + 4].try_into().unwrap());
    assert!(first_len > 16);
    // Flip a payload byte of the tail segment's first record; later records stay valid.
    tail[data_offset + 16] ^= 0x01;
    install(dir.path(), &damaged);
    match Appender::open(dir.path(), config()).unwrap_err() {
        OpenError::Corrupt {
            path,
            offset,
            reason,
        } => {
            assert!(path.ends_with(&damaged.last().unwrap().0));
            assert_eq!(offset, data_offset as u64);
            assert_eq!(reason, "checksum mismatch");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Nothing was changed by the failed open; an explicit repair truncates and reports.
    assert_eq!(
        fs::read(dir.join(&damaged.last().unwrap().0)).unwrap(),
        damaged.last().unwrap().1
    );
    let (_, report) = Appender::open(dir.path(), config().repair_corrupt_tail(true)).unwrap();
    assert!(report.discarded_records >= 1, "{report:?}");
    assert_eq!(report.discarded_at.unwrap().1, data_offset as u64);
    verify(dir.path()).unwrap();
}
