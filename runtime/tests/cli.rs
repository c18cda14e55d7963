//! The `peregrine` command-line tool against real journals.

use std::path::PathBuf;
use std::process::Command;

use peregrine::journal::{Appender, Config};

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peregrine"))
}

fn journal_with(name: &str, records: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut a, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024)).unwrap();
    for i in 0..records {
        a.append(&i.to_le_bytes()).unwrap();
    }
    dir
}

#[test]
fn verify_and_stats_report_the_records() {
    let dir = journal_with("verify", 5000);
    let out = tool()
        .args(["journal", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("5000 record(s)"), "{text}");
    assert!(text.contains("sequences 0..5000"), "{text}");

    let out = tool()
        .args(["journal", "stats"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("records: 5000"), "{text}");
    assert!(text.contains("next sequence: 5000"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dump_prints_text_and_json_lines() {
    let dir = journal_with("dump", 100);
    let out = tool()
        .args(["journal", "dump", "--json", "--from", "90"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(
        lines[0],
        format!(
            "{{\"sequence\":90,\"length\":8,\"payload_hex\":\"{}\"}}",
            90u64
                .to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    );
    let out = tool()
        .args(["journal", "dump", "--limit", "3"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(
        text.lines().next().unwrap().trim_start().starts_with("0 "),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tail_prints_from_a_sequence_and_exits_when_idle() {
    let dir = journal_with("tail", 20);
    let out = tool()
        .args(["journal", "tail", "--from", "15", "--idle-exit-ms", "200"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_are_one_line_and_a_failure_status() {
    let out = tool()
        .args(["journal", "verify", "/nonexistent/peregrine"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no such journal directory"), "{err}");

    // A corrupted record is reported, not skipped.
    let dir = journal_with("corrupt", 3000);
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "seg") || p.to_string_lossy().contains("seg")
        })
        .min()
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 4;
    bytes[at] ^= 0x5A;
    std::fs::write(&segment, bytes).unwrap();
    let out = tool()
        .args(["journal", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "corruption must fail verify");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_quick_bench_runs() {
    let out = tool().args(["bench", "--quick"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ring 1P1C batch-100"), "{text}");
    assert!(text.contains("journal 64 B append"), "{text}");
}

#[test]
fn verify_shows_progress_on_stderr_when_asked() {
    let dir = journal_with("progress", 5000);
    let out = tool()
        .args(["journal", "verify", "--progress"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().expect("a progress line");
    assert!(last.starts_with("verified "), "{err}");
    let (done, rest) = last["verified ".len()..].split_once(' ').unwrap();
    let (done, total) = done.split_once('/').unwrap();
    assert_eq!(
        done, total,
        "the last update is after the last segment: {err}"
    );
    assert!(total.parse::<usize>().unwrap() > 1, "{err}");
    assert!(rest.contains("5000 record(s)"), "{err}");
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("5000 record(s)"));

    // Not a terminal and not asked: stderr stays empty (output for scripts).
    let out = tool()
        .args(["journal", "stats"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tail_without_from_starts_after_the_last_record() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = journal_with("tail-end", 3000);
    let mut child = tool()
        .args(["journal", "tail", "--json", "--idle-exit-ms", "1500"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let _ = tx.send(());
            lines.push(line);
        }
        lines
    });
    // Appends keep coming until the tool has printed one of them (however late it
    // started), then five more.
    let (mut a, _) = Appender::open(&dir, Config::default().segment_size(64 * 1024)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut more = 5;
    while more > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tool printed nothing"
        );
        a.append(&a.next_sequence().to_le_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(25));
        if rx.try_recv().is_ok() || more < 5 {
            more -= 1;
        }
    }
    let last = a.next_sequence() - 1;
    drop(a);
    assert!(child.wait().unwrap().success());
    let lines = lines.join().unwrap();
    let sequences: Vec<u64> = lines
        .iter()
        .map(|l| {
            let rest = l.strip_prefix("{\"sequence\":").expect("a JSON line");
            rest[..rest.find(',').unwrap()].parse().unwrap()
        })
        .collect();
    assert!(!sequences.is_empty(), "the records appended after start");
    assert!(
        sequences[0] >= 3000,
        "nothing from before the start: {lines:?}"
    );
    assert_eq!(*sequences.last().unwrap(), last);
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
