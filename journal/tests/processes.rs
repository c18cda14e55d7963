//! Tests that run a second process: the test binary re-executes itself with an environment
//! variable that selects a child role (`--exact <child test> --nocapture`). Child tests do
//! nothing when the variable is absent.
//!
//! - crash: a child appends a known pattern under `Durability::None` and prints each
//!   acknowledged sequence; the parent kills it with SIGKILL at random moments, 100 times,
//!   and checks after each kill that every acknowledged record is present and intact.
//! - cross-process tailing: a child appends, the parent tails, every record in order.
//! - permissions: a child running as an unprivileged user is refused with the path.
//! - single writer: a child cannot open an appender while the parent holds one.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{pattern, small_config, TempDir, XorShift};
use peregrine_journal::{verify, Appender, OpenError, Reader, Tailer};

const CRASH_DIR: &str = "PEREGRINE_JOURNAL_CRASH_CHILD";
const WRITER_DIR: &str = "PEREGRINE_JOURNAL_WRITER_CHILD";
const PERMISSION_DIR: &str = "PEREGRINE_JOURNAL_PERMISSION_CHILD";
const SECOND_WRITER_DIR: &str = "PEREGRINE_JOURNAL_SECOND_WRITER_CHILD";
const WRITER_RECORDS: u64 = 30_000;

fn child(test: &str, var: &str, dir: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(var, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Child role: append the pattern forever, printing `ack <sequence>` after each append
/// returns (for a batch, its last sequence).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let (mut appender, _) = Appender::open(&dir, small_config()).unwrap();
    let mut out = std::io::stdout().lock();
    let mut rng = XorShift::new(u64::from(std::process::id()));
    loop {
        let next = appender.next_sequence();
        let acked = if rng.below(4) == 0 {
            let n = 1 + rng.below(8);
            let range = appender
                .append_batch((next..next + n).map(pattern))
                .unwrap();
            range.end - 1
        } else {
            appender.append(&pattern(next)).unwrap()
        };
        writeln!(out, "ack {acked}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn crash_kill_recover_100_times() {
    let dir = TempDir::new("crash");
    let mut rng = XorShift::new(0x5eed);
    let mut checked_up_to = 0u64;
    let mut total_discarded = 0u64;
    let started = Instant::now();
    for round in 0..100 {
        let mut child = child("crash_child", CRASH_DIR, dir.path()).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let drain = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(25_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let text = drain.join().unwrap();
        // Only whole lines count: the last may have been cut by the kill.
        let acked = text
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .filter_map(|line| line.strip_prefix("ack "))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .max();

        let (appender, report) = Appender::open(dir.path(), small_config())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        total_discarded += report.discarded_bytes;
        if let Some(acked) = acked {
            assert!(
                report.next_sequence > acked,
                "round {round}: acknowledged {acked} but journal ends at {}",
                report.next_sequence
            );
        }
        // Everything since the previous round's check is present, intact and in order, and
        // nothing past the recovered end is visible.
        let mut reader = Reader::open(dir.path()).unwrap();
        reader.seek(checked_up_to).unwrap();
        let mut expected = checked_up_to;
        while let Some(record) = reader.next().unwrap() {
            assert_eq!(record.sequence(), expected, "round {round}");
            assert_eq!(record.payload(), &pattern(expected)[..], "round {round}");
            expected += 1;
        }
        assert_eq!(expected, report.next_sequence, "round {round}");
        checked_up_to = report.next_sequence.saturating_sub(1);
        drop(appender);
    }
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.first_sequence, 0);
    let mut reader = Reader::open(dir.path()).unwrap();
    let mut expected = 0;
    while let Some(record) = reader.next().unwrap() {
        assert_eq!(record.payload(), &pattern(expected)[..]);
        expected += 1;
    }
    assert_eq!(expected, report.next_sequence);
    assert!(expected > 1000, "children appended: {expected}");
    eprintln!(
        "crash test: 100 kills, {expected} records, {total_discarded} torn bytes discarded, {:?}",
        started.elapsed()
    );
}

/// Child role: append `WRITER_RECORDS` records of the pattern, singles and batches.
#[test]
fn writer_child() {
    let Some(dir) = std::env::var_os(WRITER_DIR) else {
        return;
    };
    let (mut appender, _) = Appender::open(&dir, small_config()).unwrap();
    while appender.next_sequence() < WRITER_RECORDS {
        let next = appender.next_sequence();
        if next % 5 == 0 {
            let end = (next + 4).min(WRITER_RECORDS);
            appender.append_batch((next..end).map(pattern)).unwrap();
        } else {
            appender.append(&pattern(next)).unwrap();
        }
    }
    println!("\nwriter done");
}

#[test]
fn cross_process_tailer_receives_every_record_in_order() {
    let dir = TempDir::new("cross-process");
    // The tailer starts before the writer has created anything.
    let mut tailer = Tailer::open(dir.path(), 0).unwrap();
    let mut writer = child("writer_child", WRITER_DIR, dir.path())
        .spawn()
        .unwrap();
    for expected in 0..WRITER_RECORDS {
        let record = tailer
            .next_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap_or_else(|| panic!("timed out waiting for {expected}"));
        assert_eq!(record.sequence(), expected);
        assert_eq!(record.payload(), &pattern(expected)[..]);
    }
    let status = writer.wait().unwrap();
    assert!(status.success());
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap() == "writer done"));
    assert!(tailer.try_next().unwrap().is_none());
    assert!(
        verify(dir.path()).unwrap().segments > 10,
        "rolled many times"
    );
}

/// Child role, run as user `nobody`: opening a journal it may not read must fail with the path.
#[test]
fn permission_child() {
    let Some(dir) = std::env::var_os(PERMISSION_DIR) else {
        return;
    };
    match Reader::open(&dir) {
        Err(OpenError::Io { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            println!("\ndenied {}", path.display());
        }
        other => println!("unexpected {other:?}"),
    }
    match Appender::open(&dir, small_config()) {
        Err(OpenError::Io { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            println!("\ndenied {}", path.display());
        }
        other => println!("unexpected {other:?}"),
    }
}

#[test]
fn permission_denied_names_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("permission");
    let journal = dir.join("locked-away");
    let (appender, _) = Appender::open(&journal, small_config()).unwrap();
    drop(appender);
    // Files are created owner-write only.
    let segment = journal.join("00000000000000000000.seg");
    let mode = std::fs::metadata(&segment).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o022,
        0,
        "segment mode {mode:o} is group/other writable"
    );
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o700)).unwrap();

    // SAFETY: `geteuid` has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let output = if root {
        // Root bypasses permission bits: run the check as `nobody`.
        let mut command = child("permission_child", PERMISSION_DIR, &journal);
        command.uid(65534).gid(65534);
        command.output().unwrap()
    } else {
        child("permission_child", PERMISSION_DIR, &journal)
            .output()
            .unwrap()
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let denied: Vec<&str> = text.lines().filter(|l| l.starts_with("denied ")).collect();
    if !root {
        // Not root: the owner may read its own directory; check on a file instead.
        std::fs::set_permissions(&segment, std::fs::Permissions::from_mode(0o000)).unwrap();
        let err = Reader::open(&journal).unwrap_err();
        assert!(
            err.to_string().contains("00000000000000000000.seg"),
            "{err}"
        );
        return;
    }
    assert_eq!(denied.len(), 2, "child output: {text}");
    assert!(denied.iter().all(|l| l.contains("locked-away")), "{text}");
}

/// Child role: try to become a second appender and report the outcome.
#[test]
fn second_writer_child() {
    let Some(dir) = std::env::var_os(SECOND_WRITER_DIR) else {
        return;
    };
    match Appender::open(&dir, small_config()) {
        Err(err @ OpenError::Locked { .. }) => println!("\nrejected: {err}"),
        Err(other) => println!("\nunexpected error {other:?}"),
        Ok(_) => println!("\nopened"),
    }
}

#[test]
fn second_writer_in_another_process_is_rejected() {
    let dir = TempDir::new("second-writer");
    let (mut appender, _) = Appender::open(dir.path(), small_config()).unwrap();
    appender.append(b"held").unwrap();
    // A concurrent verify probes the lock without taking it from anyone.
    verify(dir.path()).unwrap();
    let output = child("second_writer_child", SECOND_WRITER_DIR, dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.lines().any(
            |l| l.starts_with("rejected: journal is locked by another appender: ")
                && l.ends_with("journal.lock")
        ),
        "child output: {text}"
    );
    drop(appender);
    let output = child("second_writer_child", SECOND_WRITER_DIR, dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l == "opened"));
}
