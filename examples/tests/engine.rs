//! The engine end to end, as a separate process: orders over loopback TCP, execution
//! reports checked against the reference matcher, bad input rejected, and recovery after
//! SIGKILL equal to the reference at the last journaled sequence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peregrine_examples::book::{
    random_commands, Command, ReferenceMatcher, Reject, Report, COMMAND_LEN, REPORT_LEN,
};

const INSTRUMENTS: u32 = 3;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts `engine --serve` and returns it with its address; the caller waits for it.
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path) -> (Child, SocketAddr, BufReader<std::process::ChildStdout>) {
    let mut child = Process::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "--serve",
            "--instruments",
            &INSTRUMENTS.to_string(),
            "--snapshot-every",
            "2500",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let status = child.wait();
            panic!("engine exited early: {status:?}");
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            return (child, addr.parse().unwrap(), out);
        }
    }
}

fn send(stream: &mut TcpStream, payload: &[u8]) {
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame).unwrap();
}

fn read_reply(stream: &mut TcpStream) -> Vec<Report> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(body.len() % REPORT_LEN, 0);
    body.chunks(REPORT_LEN)
        .map(|c| Report::decode(c).unwrap())
        .collect()
}

fn recovered(dir: &Path) -> (u64, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--recover-only", "--instruments", &INSTRUMENTS.to_string()])
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("recovered next_sequence"))
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[2].parse().unwrap(), words[4].to_owned())
}

#[test]
fn reports_over_tcp_match_the_reference_matcher() {
    let dir = temp("reports");
    let (mut child, addr, mut out) = serve(&dir);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reference = ReferenceMatcher::new(INSTRUMENTS);
    let commands = random_commands(99, 6000, INSTRUMENTS, 1);
    let mut expected = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        // Every 500th message is garbage of the right framing: rejected, nothing else.
        if i % 500 == 250 {
            let mut garbage = [0xEEu8; COMMAND_LEN];
            garbage[5..13].copy_from_slice(&7u64.to_le_bytes());
            send(&mut stream, &garbage);
            assert_eq!(
                read_reply(&mut stream),
                [Report::Rejected {
                    order: 7,
                    reason: Reject::Malformed
                }]
            );
            send(&mut stream, b"short");
            assert_eq!(
                read_reply(&mut stream),
                [Report::Rejected {
                    order: 0,
                    reason: Reject::Malformed
                }]
            );
        }
        send(&mut stream, &c.encode());
        expected.clear();
        reference.apply(c, &mut expected);
        assert_eq!(read_reply(&mut stream), expected, "command {i}: {c:?}");
    }
    // The stream covered every kind of report, rejects included.
    let kinds = |f: fn(&Command) -> bool| commands.iter().filter(|c| f(c)).count();
    assert!(kinds(|c| matches!(c, Command::Cancel { .. })) > 0);
    assert!(kinds(|c| matches!(c, Command::New { quantity: 0, .. })) > 0);
    assert!(
        kinds(|c| matches!(c, Command::New { instrument, .. } if *instrument == INSTRUMENTS)) > 0
    );

    // SIGTERM: graceful shutdown, the final books equal the reference's.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let want = format!("final hash {:016x}", reference.book_hash());
    assert!(rest.contains(&want), "{rest}");
    // And recovery from the journal (and snapshots) rebuilds the same books.
    let (next, hash) = recovered(&dir);
    assert_eq!(
        next,
        6000 + 2 * 12,
        "every message was journaled, garbage included"
    );
    assert_eq!(hash, format!("{:016x}", reference.book_hash()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recovery_after_sigkill_equals_the_reference_at_the_last_journaled_sequence() {
    let dir = temp("kill");
    let (mut child, addr, _out) = serve(&dir);
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let commands = random_commands(7, 25_000, INSTRUMENTS, 1);
    // Count replies, so the kill lands mid-stream: after the engine has journaled and
    // answered some commands, while thousands more are in flight.
    let answered = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&answered);
    let drain = std::thread::spawn(move || {
        let mut header = [0u8; 4];
        let mut body = vec![0u8; 1 << 16];
        while reader.read_exact(&mut header).is_ok() {
            let len = u32::from_le_bytes(header) as usize;
            if reader.read_exact(&mut body[..len]).is_err() {
                break;
            }
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    for c in &commands {
        send(&mut stream, &c.encode());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < 2_000 {
        assert!(
            Instant::now() < deadline,
            "the engine answered too little to test a kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let answered_before_kill = answered.load(Ordering::SeqCst);
    drop(stream);
    drain.join().unwrap();

    let (next, hash) = recovered(&dir);
    // Every answered command was journaled first (logic runs after the journal stage).
    assert!(
        next >= answered_before_kill && next <= 25_000,
        "journaled {next}, answered {answered_before_kill}"
    );
    let mut reference = ReferenceMatcher::new(INSTRUMENTS);
    let mut sink = Vec::new();
    for c in &commands[..next as usize] {
        reference.apply(c, &mut sink);
    }
    assert_eq!(
        hash,
        format!("{:016x}", reference.book_hash()),
        "after {next} commands"
    );

    // The engine restarts on the same directory and carries on from there.
    let (mut child, addr, _out) = serve(&dir);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let more = random_commands(8, 500, INSTRUMENTS, 1 << 40);
    let mut expected = Vec::new();
    for c in &more {
        send(&mut stream, &c.encode());
        expected.clear();
        reference.apply(c, &mut expected);
        assert_eq!(read_reply(&mut stream), expected);
    }
    child.kill().unwrap();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
