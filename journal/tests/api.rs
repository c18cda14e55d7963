//! Public-API tests: round trips, batches, rolls, reopen, seek, tailing in one process,
//! durability watermarks, cursors, retention, the single-writer lock.

mod common;

use std::time::Duration;

use common::{pattern, small_config, TempDir};
use peregrine_journal::{
    verify, verify_with_progress, AppendError, Appender, CommitError, Config, Cursor, Durability,
    OpenError, Pretouch, ReadError, Reader, Retention, Tailer, TailerWait, VerifyProgress,
};

/// An appender on `dir` (small segments) that has appended `pattern(0 .. records)`.
fn filled(dir: &std::path::Path, records: u64) -> Appender {
    let (mut appender, _) = Appender::open(dir, small_config()).unwrap();
    for s in 0..records {
        appender.append(&pattern(s)).unwrap();
    }
    appender
}

fn read_all(dir: &std::path::Path, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = Reader::open(dir).unwrap();
    reader.seek(from).unwrap();
    let mut out = Vec::new();
    while let Some(record) = reader.next().unwrap() {
        out.push((record.sequence(), record.payload().to_vec()));
    }
    out
}

#[test]
fn round_trip() {
    let dir = TempDir::new("round-trip");
    let (mut appender, report) = Appender::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.next_sequence, 0);
    for s in 0..100 {
        assert_eq!(appender.append(&pattern(s)).unwrap(), s);
    }
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 100);
    for (s, (seq, payload)) in records.into_iter().enumerate() {
        assert_eq!(seq, s as u64);
        assert_eq!(payload, pattern(s as u64));
    }
}

#[test]
fn empty_payload_and_append_with() {
    let dir = TempDir::new("empty");
    let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    assert_eq!(appender.append(b"").unwrap(), 0);
    assert_eq!(
        appender
            .append_with(5, |buf| buf.copy_from_slice(b"hello"))
            .unwrap(),
        1
    );
    let records = read_all(dir.path(), 0);
    assert_eq!(records, vec![(0, vec![]), (1, b"hello".to_vec())]);
}

#[test]
fn batch_append() {
    let dir = TempDir::new("batch");
    let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    let payloads: Vec<Vec<u8>> = (0..1000).map(pattern).collect();
    let mut next = 0;
    for chunk in payloads.chunks(37) {
        let range = appender.append_batch(chunk).unwrap();
        assert_eq!(range, next..next + chunk.len() as u64);
        next = range.end;
    }
    assert_eq!(
        appender.append_batch(Vec::<Vec<u8>>::new()).unwrap(),
        1000..1000
    );
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 1000);
    assert!(records.iter().all(|(s, p)| *p == pattern(*s)));
    assert!(appender.segment_index() > 0, "batches crossed segments");
}

#[test]
fn a_reader_in_another_thread_never_sees_part_of_a_batch() {
    // One segment holds everything, so no batch is split by a roll: every batch must appear
    // whole or not at all. Batch sizes 1 to 9 cover the four-at-a-time checksum groups and
    // the records left over after them; payload sizes vary within a batch.
    const BATCHES: u64 = 3_000;
    let dir = TempDir::new("batch-atomic");
    let config = small_config().segment_size(16 << 20);
    let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
    let size = |b: u64| 1 + b % 9;
    let ends: Vec<u64> = (0..BATCHES)
        .scan(0, |end, b| {
            *end += size(b);
            Some(*end)
        })
        .collect();
    let total = *ends.last().unwrap();
    let path = dir.path().to_path_buf();
    let started = std::sync::Arc::new(std::sync::Barrier::new(2));
    let reader_started = started.clone();
    let reader = std::thread::spawn(move || {
        let mut reader = Reader::open(&path).unwrap();
        reader_started.wait();
        let mut seen = 0u64;
        let mut caught_up = 0u64;
        while seen < total {
            match reader.next().unwrap() {
                Some(record) => {
                    assert_eq!(record.sequence(), seen);
                    assert_eq!(record.payload(), &pattern(seen)[..]);
                    seen += 1;
                }
                None => {
                    assert!(
                        seen == 0 || ends.binary_search(&seen).is_ok(),
                        "caught up after {seen} records, inside a batch"
                    );
                    caught_up += 1;
                    std::hint::spin_loop();
                }
            }
        }
        caught_up
    });
    started.wait();
    let mut next = 0;
    for b in 0..BATCHES {
        let batch: Vec<Vec<u8>> = (next..next + size(b)).map(pattern).collect();
        let range = appender.append_batch(&batch).unwrap();
        assert_eq!(range, next..next + size(b));
        next = range.end;
        // Let the reader catch up now and then, so it often reads right behind the appender.
        for _ in 0..b % 64 * 16 {
            std::hint::spin_loop();
        }
    }
    assert_eq!(appender.segment_index(), 0, "no roll split a batch");
    let caught_up = reader.join().unwrap();
    assert!(caught_up > 0, "the reader raced the appender at least once");
}

#[test]
fn panic_inside_batch_leaves_no_hole() {
    let dir = TempDir::new("batch-panic");
    let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let payloads = (0..10u64).map(|i| {
            assert!(i < 5, "producer failed");
            pattern(i)
        });
        appender.append_batch(payloads).unwrap();
    }));
    assert!(result.is_err());
    assert_eq!(appender.append(&pattern(5)).unwrap(), 5);
    let records = read_all(dir.path(), 0);
    assert_eq!(
        records.len(),
        6,
        "the five written before the panic are published"
    );
}

#[test]
fn segment_roll_and_seek_everywhere() {
    let dir = TempDir::new("roll");
    let mut appender = filled(dir.path(), 5000);
    assert!(appender.segment_index() >= 5, "rolled several times");
    let mut reader = Reader::open(dir.path()).unwrap();
    for target in (0..5000).step_by(97).chain([4999, 0, 1]) {
        reader.seek(target).unwrap();
        let record = reader.next().unwrap().unwrap();
        assert_eq!(record.sequence(), target);
        assert_eq!(record.payload(), &pattern(target)[..]);
    }
    reader.seek(5000).unwrap();
    assert!(reader.next().unwrap().is_none());
    appender.append(&pattern(5000)).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().sequence(), 5000);
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.records, 5001);
    assert_eq!(report.segments as u64, appender.segment_index() + 1);
}

/// Flips a bit 4 KiB before the end of a full segment file: inside its records.
fn damage_a_record(segment: &std::path::Path) {
    let mut bytes = std::fs::read(segment).unwrap();
    let at = bytes.len() - 4096;
    bytes[at] ^= 0x40;
    std::fs::write(segment, &bytes).unwrap();
}

#[test]
fn verify_reports_progress_after_each_segment_and_stops_at_corruption() {
    let dir = TempDir::new("verify-progress");
    let appender = filled(dir.path(), 5000);
    drop(appender);
    let mut seen: Vec<VerifyProgress> = Vec::new();
    let report = verify_with_progress(dir.path(), |p| seen.push(*p)).unwrap();
    assert!(report.segments >= 5, "rolled several times");
    assert_eq!(seen.len(), report.segments);
    for (i, p) in seen.iter().enumerate() {
        assert_eq!((p.segments_done, p.segments), (i + 1, report.segments));
        assert_eq!(p.total_segment_bytes, report.segments as u64 * 64 * 1024);
        assert_eq!(p.segment_bytes, (i as u64 + 1) * 64 * 1024);
        if i > 0 {
            assert!(p.records > seen[i - 1].records, "{p:?}");
            assert!(p.record_bytes > seen[i - 1].record_bytes, "{p:?}");
        }
    }
    let last = seen.last().unwrap();
    assert_eq!(
        (last.records, last.record_bytes),
        (report.records, report.record_bytes)
    );
    assert_eq!(report, verify(dir.path()).unwrap());

    // Flip a byte inside the records of the third segment: the two before it were reported,
    // then the error names the third.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    names.sort();
    let third = &names[2];
    damage_a_record(third);
    seen.clear();
    let err = verify_with_progress(dir.path(), |p| seen.push(*p)).unwrap_err();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(err.to_string().contains(&*third.to_string_lossy()), "{err}");
}

#[test]
fn seek_end_reads_only_what_follows() {
    let dir = TempDir::new("seek-end");
    let mut reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.seek_end().unwrap(), 0, "no segment yet");
    let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    for end in [1u64, 700, 701, 5000] {
        while appender.next_sequence() < end {
            let s = appender.next_sequence();
            appender.append(&pattern(s)).unwrap();
        }
        let mut reader = Reader::open(dir.path()).unwrap();
        reader.seek(3).unwrap_or(());
        assert_eq!(reader.seek_end().unwrap(), end);
        assert_eq!(reader.position(), end);
        assert!(reader.next().unwrap().is_none());
        appender.append(&pattern(end)).unwrap();
        let record = reader.next().unwrap().unwrap();
        assert_eq!(record.sequence(), end);
        assert_eq!(record.payload(), &pattern(end)[..]);
    }
    // The reader opened before the first segment follows from the start.
    assert_eq!(reader.next().unwrap().unwrap().sequence(), 0);

    // Only the end is read: a damaged record in the first segment does not stop it (a
    // scan from the start would fail there).
    damage_a_record(&dir.path().join(format!("{:020}.seg", 0)));
    assert!(verify(dir.path()).is_err());
    let mut reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.seek_end().unwrap(), 5001);
}

#[test]
fn reopen_continues_sequence() {
    let dir = TempDir::new("reopen");
    for round in 0..4u64 {
        let (mut appender, report) = Appender::open(dir.path(), small_config()).unwrap();
        assert_eq!(report.next_sequence, round * 700);
        assert_eq!(report.discarded_bytes, 0);
        for s in round * 700..(round + 1) * 700 {
            assert_eq!(appender.append(&pattern(s)).unwrap(), s);
        }
    }
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 2800);
    assert!(records.iter().all(|(s, p)| *p == pattern(*s)));
}

#[test]
fn record_too_large_is_an_error() {
    let dir = TempDir::new("too-large");
    let config = small_config();
    let max = config.max_payload();
    let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
    assert!(matches!(
        appender.append(&vec![0u8; max + 1]),
        Err(AppendError::RecordTooLarge { len, .. }) if len == max + 1
    ));
    appender.append(b"x").unwrap();
    assert_eq!(appender.append(&vec![7u8; max]).unwrap(), 1, "largest fits");
    assert_eq!(read_all(dir.path(), 1)[0].1.len(), max);
}

#[test]
fn tailer_follows_rolls_in_another_thread() {
    let dir = TempDir::new("tail-thread");
    let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    let path = dir.path().to_path_buf();
    let tail = std::thread::spawn(move || {
        let mut tailer = Tailer::open(&path, 0).unwrap();
        for s in 0..20_000u64 {
            let record = tailer
                .next_timeout(Duration::from_secs(10))
                .unwrap()
                .expect("record within timeout");
            assert_eq!(record.sequence(), s);
            assert_eq!(record.payload(), &pattern(s)[..]);
        }
    });
    for s in 0..20_000u64 {
        if s % 3 == 0 {
            appender.append(&pattern(s)).unwrap();
        } else if s % 3 == 1 {
            appender.append_batch([pattern(s), pattern(s + 1)]).unwrap();
        }
    }
    tail.join().unwrap();
}

#[test]
fn every_tailer_wait_strategy_follows_rolls_and_times_out() {
    let strategies = [
        TailerWait::BusySpin,
        TailerWait::Yield,
        TailerWait::Sleep(Duration::from_micros(20)),
        TailerWait::Backoff,
    ];
    for wait in strategies {
        let dir = TempDir::new("tail-wait");
        let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
        let mut tailer = Tailer::open(dir.path(), 0).unwrap().wait(wait);
        assert_eq!(tailer.wait_strategy(), wait);
        let started = std::time::Instant::now();
        assert!(tailer
            .next_timeout(Duration::from_millis(5))
            .unwrap()
            .is_none());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(5) && waited < Duration::from_secs(2),
            "{wait:?} waited {waited:?} for a 5 ms timeout"
        );
        let tail = std::thread::spawn(move || {
            for s in 0..5_000u64 {
                let record = tailer
                    .next_timeout(Duration::from_secs(10))
                    .unwrap()
                    .expect("record within timeout");
                assert_eq!(record.sequence(), s);
                assert_eq!(record.payload(), &pattern(s)[..]);
            }
        });
        for s in 0..5_000u64 {
            appender.append(&pattern(s)).unwrap();
            if s % 500 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        tail.join().unwrap();
        assert!(appender.segment_index() > 0, "the tailer crossed rolls");
    }
}

#[test]
fn durability_watermarks() {
    let dir = TempDir::new("durable");
    let (mut appender, _) =
        Appender::open(dir.path(), small_config().durability(Durability::Always)).unwrap();
    appender.append(b"a").unwrap();
    assert_eq!(appender.durable_watermark(), 1);
    drop(appender);

    let batch = Durability::Batch {
        max_records: 4,
        max_delay: Duration::from_secs(3600),
    };
    let (mut appender, _) = Appender::open(dir.path(), small_config().durability(batch)).unwrap();
    assert_eq!(appender.durable_watermark(), 1, "recovery syncs the tail");
    for _ in 0..3 {
        appender.append(b"b").unwrap();
    }
    assert_eq!(
        appender.durable_watermark(),
        1,
        "three pending, below max_records"
    );
    appender.append(b"b").unwrap();
    assert_eq!(
        appender.durable_watermark(),
        5,
        "fourth triggers the group commit"
    );
    appender.append(b"c").unwrap();
    assert_eq!(appender.durable_watermark(), 5);
    appender.append_batch([b"d", b"e"]).unwrap();
    assert_eq!(
        appender.durable_watermark(),
        8,
        "a batch is synced at its end"
    );
    appender.append(b"f").unwrap();
    assert_eq!(appender.sync().unwrap(), 9);
    drop(appender);

    let delay = Durability::Batch {
        max_records: 1000,
        max_delay: Duration::from_millis(5),
    };
    let (mut appender, _) = Appender::open(dir.path(), small_config().durability(delay)).unwrap();
    appender.append(b"g").unwrap();
    assert_eq!(appender.durable_watermark(), 9);
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(appender.sync_if_due().unwrap(), 10);

    let (mut appender_none, _) = {
        drop(appender);
        Appender::open(dir.path(), small_config()).unwrap()
    };
    appender_none.append(b"h").unwrap();
    assert_eq!(
        appender_none.durable_watermark(),
        10,
        "none never syncs by itself"
    );
    assert_eq!(appender_none.next_sequence(), 11);
}

#[test]
fn sync_under_none_covers_rolled_segments() {
    let dir = TempDir::new("sync-none");
    let mut appender = filled(dir.path(), 3000);
    assert!(appender.segment_index() > 0);
    assert_eq!(appender.durable_watermark(), 0);
    assert_eq!(appender.sync().unwrap(), 3000);
    assert_eq!(appender.sync_if_due().unwrap(), 3000);
}

#[test]
fn second_writer_rejected() {
    let dir = TempDir::new("lock");
    let (appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    match Appender::open(dir.path(), small_config()) {
        Err(err @ OpenError::Locked { .. }) => {
            assert!(err.to_string().contains("journal.lock"), "{err}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(appender);
    Appender::open(dir.path(), small_config()).expect("lock released on drop");
}

#[test]
fn cursors_persist_and_resume() {
    let dir = TempDir::new("cursor");
    let appender = filled(dir.path(), 3000);
    // First run: process 0..1234, committing every 100 and at the end.
    let mut processed = Vec::new();
    {
        let mut cursor = Cursor::open(dir.path(), "risk-engine").unwrap();
        assert_eq!(cursor.position(), 0);
        let mut reader = Reader::open(dir.path()).unwrap();
        reader.seek(cursor.position()).unwrap();
        while let Some(record) = reader.next().unwrap() {
            processed.push(record.sequence());
            if record.sequence() == 1233 {
                cursor.commit(1234).unwrap();
                break;
            }
            if record.sequence() % 100 == 99 {
                cursor.commit(record.sequence() + 1).unwrap();
            }
        }
    }
    // A failed consumer step leaves the position alone.
    let mut cursor = Cursor::open(dir.path(), "risk-engine").unwrap();
    assert_eq!(cursor.position(), 1234);
    let failed = cursor.commit_with(2000, |_| Err("database down"));
    assert!(matches!(
        failed,
        Err(CommitError::Consumer("database down"))
    ));
    assert_eq!(
        Cursor::open(dir.path(), "risk-engine").unwrap().position(),
        1234
    );
    // Second run resumes exactly where the first committed.
    let mut reader = Reader::open(dir.path()).unwrap();
    reader.seek(cursor.position()).unwrap();
    let record = reader.next().unwrap().unwrap();
    assert_eq!(record.sequence(), 1234);
    // Independent cursors, and names are checked.
    assert_eq!(Cursor::open(dir.path(), "other").unwrap().position(), 0);
    assert!(Cursor::open(dir.path(), "../escape").is_err());
    assert!(Cursor::open(dir.path(), "").is_err());
    // The journal directory with cursor files is still a valid journal.
    verify(dir.path()).unwrap();
    drop(appender);
    Appender::open(dir.path(), small_config()).unwrap();
}

#[test]
fn corrupt_cursor_file_is_an_error_with_path() {
    let dir = TempDir::new("cursor-bad");
    let mut cursor = Cursor::open(dir.path(), "c").unwrap();
    cursor.commit(42).unwrap();
    let mut bytes = std::fs::read(cursor.path()).unwrap();
    bytes[9] ^= 0x10;
    std::fs::write(cursor.path(), &bytes).unwrap();
    let err = Cursor::open(dir.path(), "c").unwrap_err();
    assert!(err.to_string().contains("c.cursor"), "{err}");
    assert!(err.to_string().contains("offset 16"), "{err}");
}

#[test]
fn retention_while_a_reader_holds_an_old_segment() {
    let dir = TempDir::new("retention");
    let mut appender = filled(dir.path(), 6000);
    let segments_before = appender.segment_index() + 1;
    assert!(segments_before >= 6);
    let mut reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().sequence(), 0);

    let report = appender
        .retain(&Retention::delete().below_sequence(3000))
        .unwrap();
    assert!(report.segments_removed >= 2);
    assert!(report.first_sequence <= 3000 && report.first_sequence > 0);
    assert!(!dir.join("00000000000000000000.seg").exists());

    // The reader keeps reading the unlinked segment it has mapped...
    let mut last = 0;
    let err = loop {
        match reader.next() {
            Ok(Some(record)) => {
                assert_eq!(record.payload(), &pattern(record.sequence())[..]);
                last = record.sequence();
            }
            Ok(None) => panic!("reader stopped silently at {last}"),
            Err(e) => break e,
        }
    };
    assert!(
        last > 0,
        "read past the first record of the removed segment"
    );
    // ...and then learns that the next one is gone.
    assert!(
        matches!(err, ReadError::SequenceRemoved { sequence, first_available }
        if sequence == last + 1 && first_available == report.first_sequence)
    );
    // New readers start at the new first sequence; seeking below it is an error.
    let mut fresh = Reader::open(dir.path()).unwrap();
    assert_eq!(
        fresh.next().unwrap().unwrap().sequence(),
        report.first_sequence
    );
    assert!(matches!(
        fresh.seek(0),
        Err(ReadError::SequenceRemoved { sequence: 0, .. })
    ));
    assert_eq!(
        verify(dir.path()).unwrap().first_sequence,
        report.first_sequence
    );

    // Size-based retention into an archive directory inside the journal.
    let archive = dir.join("archive");
    let report = appender
        .retain(&Retention::archive(&archive).max_total_bytes(2 * 64 * 1024))
        .unwrap();
    assert!(report.segments_removed >= 1);
    assert_eq!(
        std::fs::read_dir(&archive).unwrap().count(),
        report.segments_removed
    );
    let left = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
        .count();
    assert!(left <= 2, "{left} segments left");
    drop(appender);
    let (_, reopened) = Appender::open(dir.path(), small_config()).unwrap();
    assert_eq!(reopened.next_sequence, 6000);
}

#[test]
fn config_is_validated() {
    let dir = TempDir::new("config");
    for config in [
        Config::default().segment_size(1000),
        Config::default().segment_size(4096),
        Config::default().segment_size(64 * 1024).index_block(100),
        Config::default().durability(Durability::Batch {
            max_records: 0,
            max_delay: Duration::ZERO,
        }),
        Config::default().prepare_ahead(0),
        Config::default().prepare_ahead(peregrine_journal::MAX_PREPARE_AHEAD + 1),
    ] {
        assert!(matches!(
            Appender::open(dir.path(), config),
            Err(OpenError::Config(_))
        ));
    }
}

#[test]
fn pretouch_on_idle_prepares_the_next_segment_in_steps() {
    let dir = TempDir::new("pretouch-idle");
    let segment = 4u64 << 20;
    let config = small_config()
        .segment_size(segment)
        .pretouch_mode(Pretouch::OnIdle);
    let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
    let prepared = |index: u64| dir.join(&format!("{index:020}.seg.pre")).exists();
    // Create, then two 2 MiB steps; nothing runs in the background.
    let mut steps = 0;
    while appender.pretouch().unwrap() {
        steps += 1;
        assert!(steps < 10, "a 4 MiB segment takes a handful of steps");
    }
    assert_eq!(steps, 2, "create, 2 MiB, then the last 2 MiB returns false");
    assert!(prepared(1));
    assert!(!prepared(2), "only the next segment, and only when asked");
    let payload = vec![7u8; 4000];
    let mut written = 0u64;
    while appender.segment_index() < 3 {
        appender.append(&payload).unwrap();
        written += 1;
        // Half-prepared segments are taken as they are at a roll.
        if written % 300 == 0 {
            appender.pretouch().unwrap();
        }
    }
    assert_eq!(verify(dir.path()).unwrap().next_sequence, written);
    assert!(read_all(dir.path(), 0).iter().all(|(_, p)| *p == payload));
    // Other modes do nothing.
    drop(appender);
    let (mut background, _) = Appender::open(dir.path(), small_config()).unwrap();
    assert!(!background.pretouch().unwrap());
}

#[test]
fn pretouch_off_still_rolls() {
    let dir = TempDir::new("no-pretouch");
    let (mut appender, _) = Appender::open(dir.path(), small_config().pretouch(false)).unwrap();
    for s in 0..3000 {
        appender.append(&pattern(s)).unwrap();
    }
    assert!(appender.segment_index() >= 3);
    assert_eq!(read_all(dir.path(), 0).len(), 3000);
}

#[test]
fn wait_prepared_readies_the_whole_runway_and_rolls_use_it() {
    let dir = TempDir::new("runway");
    let segment = 64u64 << 10;
    let config = small_config().segment_size(segment).prepare_ahead(5);
    let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
    let prepared = |index: u64| dir.join(&format!("{index:020}.seg.pre")).exists();
    assert_eq!(appender.wait_prepared().unwrap(), 5);
    for index in 1..=5 {
        assert!(prepared(index), "segment {index} is ready ahead");
    }
    assert!(!prepared(6), "no further than asked");
    // Roll through the runway and past it: every record lands, in order, and the runway is
    // topped up behind the appender.
    let mut written = 0u64;
    while appender.segment_index() < 8 {
        appender.append(&pattern(written)).unwrap();
        written += 1;
    }
    assert_eq!(appender.wait_prepared().unwrap(), 5);
    for index in 9..=13 {
        assert!(prepared(index), "segment {index} is ready after the rolls");
    }
    assert_eq!(verify(dir.path()).unwrap().next_sequence, written);
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len() as u64, written);
    assert!(records.iter().all(|(s, p)| *p == pattern(*s)));
    // Reopening removes the prepared leftovers and carries on.
    drop(appender);
    let (mut reopened, report) = Appender::open(dir.path(), small_config()).unwrap();
    assert_eq!(report.removed_prepared, 5);
    assert_eq!(report.next_sequence, written);
    assert_eq!(reopened.append(b"after").unwrap(), written);
}

#[test]
fn touching_ahead_follows_the_appender_through_many_rolls_and_changes_nothing() {
    // The background thread touches pages just ahead of the appender through its mapping,
    // across rolls and into prepared segments, while the appender writes and retires them.
    // Bursts with pauses between them let its periodic turns land at every point of a
    // segment; records of every size straddle pages and segment ends. Run with the
    // follower on (the default) and off: the journals must read back the same.
    for touch_ahead in [true, false] {
        let dir = TempDir::new("touch-ahead");
        let config = small_config()
            .segment_size(64 << 10)
            .prepare_ahead(3)
            .touch_ahead(touch_ahead);
        assert_eq!(config.get_touch_ahead(), touch_ahead);
        let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
        // Up to 699 bytes, so records straddle pages and segment ends.
        let payload = |sequence: u64| -> Vec<u8> {
            let len = (sequence * 131 % 700) as usize;
            (0..len).map(|i| (sequence as u8) ^ (i as u8)).collect()
        };
        let mut written = 0u64;
        for burst in 0..40u64 {
            for _ in 0..(50 + burst * 37 % 300) {
                assert_eq!(appender.append(&payload(written)).unwrap(), written);
                written += 1;
            }
            if burst % 4 == 0 {
                std::thread::sleep(Duration::from_millis(6));
            }
        }
        assert!(
            appender.segment_index() > 20,
            "rolled {}",
            appender.segment_index()
        );
        drop(appender);
        let records = read_all(dir.path(), 0);
        assert_eq!(records.len() as u64, written);
        for (sequence, bytes) in records {
            assert_eq!(bytes, payload(sequence), "record {sequence}");
        }
        assert_eq!(verify(dir.path()).unwrap().next_sequence, written);
    }
}

#[test]
fn wait_prepared_in_the_other_pretouch_modes() {
    let dir = TempDir::new("runway-modes");
    let (mut idle, _) = Appender::open(
        dir.path(),
        small_config()
            .pretouch_mode(Pretouch::OnIdle)
            .prepare_ahead(4),
    )
    .unwrap();
    assert_eq!(
        idle.wait_prepared().unwrap(),
        1,
        "on idle: the next segment only"
    );
    assert!(!idle.pretouch().unwrap(), "nothing left to step through");
    assert!(dir.join(&format!("{:020}.seg.pre", 1)).exists());
    drop(idle);
    let (mut off, _) = Appender::open(dir.path(), small_config().pretouch(false)).unwrap();
    assert_eq!(off.wait_prepared().unwrap(), 0);
}

/// Minor page faults taken by the calling thread so far.
fn thread_minor_faults() -> i64 {
    // SAFETY: `getrusage` fills the `rusage` it is given; all zeroes is a valid initial value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    usage.ru_minflt
}

#[test]
fn appends_to_a_prepared_segment_take_no_page_faults() {
    let dir = TempDir::new("no-faults");
    // 32 MiB segments with 4 KiB index blocks: the index slots of every 2 MiB of records
    // fill a new index page, which the `msync` at open had write-protected.
    let config = Config::default().segment_size(32 << 20).prepare_ahead(1);
    let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
    appender.wait_prepared().unwrap();
    let payload = [0x5Au8; 112];
    let records = (24 << 20) / 128;
    let before = thread_minor_faults();
    for _ in 0..records {
        appender.append(&payload).unwrap();
    }
    let faults = thread_minor_faults() - before;
    assert_eq!(
        appender.segment_index(),
        0,
        "the run stays in the first segment"
    );
    // Twelve index pages were filled. Zero faults is what a quiet machine shows; one or two
    // are allowed for the kernel writing back (and write-protecting) a page meanwhile.
    assert!(faults <= 2, "{faults} page faults appending 24 MiB");
    drop(appender);
    assert_eq!(verify(dir.path()).unwrap().next_sequence, records as u64);
}

/// Kilobytes of `FilePmdMapped` (file pages mapped 2 MiB at a time) over this process's
/// mappings of files under `dir`, from `/proc/self/smaps`.
fn pmd_mapped_kib(dir: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let dir = dir.to_string_lossy().into_owned();
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with(&dir));
        } else if inside {
            if let Some(kib) = line.strip_prefix("FilePmdMapped:") {
                total += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn segments_asked_for_in_huge_pages_get_them_where_a_plain_file_does() {
    use std::os::unix::fs::FileExt;
    // First ask the platform: a file filled with zeros 2 MiB at a time and mapped with
    // MADV_HUGEPAGE. Whether its pages are then mapped 2 MiB at a time depends on the
    // kernel and the file system (large folios); where they are not, there is nothing to
    // hold the journal to.
    let probe_dir = TempDir::new("huge-probe");
    let path = probe_dir.join("probe");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(4 << 20).unwrap();
    let zeros = vec![0u8; 2 << 20];
    file.write_all_at(&zeros, 0).unwrap();
    file.write_all_at(&zeros, 2 << 20).unwrap();
    // SAFETY: a file this test just created; nothing else maps or truncates it.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let _ = map.advise(memmap2::Advice::HugePage);
    let _ = map.advise(memmap2::Advice::PopulateWrite);
    let platform = pmd_mapped_kib(probe_dir.path());
    drop(map);
    if platform == 0 {
        eprintln!(
            "skipped: this kernel and file system map none of a plain 2 MiB-written file in \
             huge pages, so there is no journal behaviour to check"
        );
        return;
    }

    // By default the segments stay in 4 KiB pages.
    let small = TempDir::new("small-journal");
    let config = Config::default().segment_size(8 << 20).prepare_ahead(1);
    assert!(!config.get_huge_pages());
    let (mut appender, _) = Appender::open(small.path(), config).unwrap();
    appender.wait_prepared().unwrap();
    appender.append(b"one record").unwrap();
    assert_eq!(
        pmd_mapped_kib(small.path()),
        0,
        "huge pages are off by default"
    );
    drop(appender);

    // Asked for, under Durability::None (the default): the active segment and the one
    // prepared ahead.
    let dir = TempDir::new("huge-journal");
    let config = Config::default()
        .segment_size(8 << 20)
        .prepare_ahead(1)
        .huge_pages(true);
    assert!(config.get_huge_pages());
    let (mut appender, _) = Appender::open(dir.path(), config).unwrap();
    appender.wait_prepared().unwrap();
    appender.append(b"one record").unwrap();
    let journal = pmd_mapped_kib(dir.path());
    assert!(
        journal >= 2 << 10,
        "the platform maps a plain file in huge pages ({platform} KiB) but the journal's \
         segments got {journal} KiB"
    );
}
