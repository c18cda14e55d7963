//! The LMAX pipeline end to end over loopback: replies in order per connection, recovery
//! by replay and from snapshots, failure policies, placement, and a journal that lost
//! records.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use peregrine::journal::Reader;
use peregrine::journaled::{JournalDeadLetters, RecoverError, Snapshot};
use peregrine::pipeline::{Layout, Logic, OnFailure, Pipeline, PipelineError, Reply, Role};
use peregrine::placement::{PlacementError, Topology};
use peregrine::ring::{BoxError, WaitStrategy};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-pipe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Balances of 16 accounts. A command is `[account, delta i64 LE]` (9 bytes); anything
/// else is rejected. Replies: `[0, balance i64 LE]` (three times for account 15) or `[1]`
/// for a reject.
#[derive(Debug, Default, Clone, PartialEq)]
struct Ledger {
    balances: [i64; 16],
    applied: u64,
    rejected: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
enum Command {
    #[default]
    Invalid,
    Add(usize, i64),
}

impl Snapshot for Ledger {
    fn save(&self, out: &mut Vec<u8>) {
        for b in self.balances {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&self.rejected.to_le_bytes());
    }
    fn load(bytes: &[u8]) -> Result<Self, BoxError> {
        if bytes.len() != 18 * 8 {
            return Err("not a ledger snapshot".into());
        }
        let word = |i: usize| i64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        let mut l = Ledger::default();
        for (i, b) in l.balances.iter_mut().enumerate() {
            *b = word(i);
        }
        l.applied = word(16) as u64;
        l.rejected = word(17) as u64;
        Ok(l)
    }
}

impl Logic for Ledger {
    type Command = Command;

    fn decode(payload: &[u8]) -> Command {
        if payload == b"panic in decode" {
            panic!("decode refused the command");
        }
        match payload {
            [account, delta @ ..] if delta.len() == 8 && (*account as usize) < 16 => Command::Add(
                *account as usize,
                i64::from_le_bytes(delta.try_into().unwrap()),
            ),
            _ => Command::Invalid,
        }
    }

    fn apply(&mut self, command: &Command, reply: &mut Reply<'_>) {
        match *command {
            Command::Add(account, delta) => {
                if delta == i64::MIN {
                    panic!("apply refused the command");
                }
                self.balances[account] += delta;
                self.applied += 1;
                let balance = self.balances[account];
                for _ in 0..if account == 15 { 3 } else { 1 } {
                    reply.send(|out| {
                        out.push(0);
                        out.extend_from_slice(&balance.to_le_bytes());
                    });
                }
            }
            Command::Invalid => {
                self.rejected += 1;
                reply.send(|out| out.push(1));
            }
        }
    }
}

fn add(account: u8, delta: i64) -> Vec<u8> {
    let mut payload = vec![account];
    payload.extend_from_slice(&delta.to_le_bytes());
    payload
}

struct Client(TcpStream);

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client(s)
    }
    fn send(&mut self, payload: &[u8]) {
        self.0
            .write_all(&(payload.len() as u32).to_le_bytes())
            .unwrap();
        self.0.write_all(payload).unwrap();
    }
    fn recv(&mut self) -> Vec<u8> {
        let mut header = [0u8; 4];
        self.0.read_exact(&mut header).expect("reply header");
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        self.0.read_exact(&mut body).expect("reply body");
        body
    }
}

fn pipeline(dir: &PathBuf, layout: Layout) -> Pipeline {
    // Blocking waits: the tests run on two cores next to other tests.
    Pipeline::new(dir)
        .wait_strategy(WaitStrategy::blocking())
        .layout(layout)
}

fn replies_come_back_in_order_per_connection_and_a_restart_replays_the_journal(layout: Layout) {
    let dir = temp(&format!("order-{layout:?}"));
    let running = pipeline(&dir, layout).start(Ledger::default).unwrap();
    assert_eq!(running.layout(), layout);
    assert_eq!(running.recovery().replayed, 0);
    let addr = running.local_addr();
    // Each client owns one account, so its running balance is known in advance.
    let clients: Vec<_> = (0..4u8)
        .map(|account| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut expected = 0i64;
                for i in 1..=2_000i64 {
                    let delta = if i % 3 == 0 { -i } else { i };
                    c.send(&add(account, delta));
                    expected += delta;
                    // Pipelined: read a reply every few commands.
                    if i % 8 == 0 {
                        for _ in 0..8 {
                            assert_eq!(c.recv()[0], 0);
                        }
                    }
                }
                c.send(b"garbage");
                assert_eq!(c.recv(), vec![1], "garbage is answered with a reject");
                c.send(&add(account, 0));
                let last = c.recv();
                assert_eq!(last[0], 0);
                assert_eq!(i64::from_le_bytes(last[1..].try_into().unwrap()), expected);
                expected
            })
        })
        .collect();
    let expected: Vec<i64> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let stopped = running.stop().unwrap();
    assert!(stopped.failure.is_none());
    assert_eq!(&stopped.state.balances[..4], &expected[..]);
    assert_eq!(stopped.state.applied, 4 * 2_001);
    assert_eq!(stopped.state.rejected, 4);
    assert!(stopped
        .metrics
        .render()
        .contains("pipeline_ingress_to_logic"));

    let again = pipeline(&dir, layout).start(Ledger::default).unwrap();
    let recovery = again.recovery();
    assert_eq!((recovery.snapshot, recovery.replayed), (None, 4 * 2_002));
    assert_eq!(recovery.next_sequence, 4 * 2_002);
    // Live commands continue the journal after the replayed ones.
    let mut c = Client::connect(again.local_addr());
    c.send(&add(0, 1));
    assert_eq!(
        i64::from_le_bytes(c.recv()[1..].try_into().unwrap()),
        expected[0] + 1
    );
    let state = again.stop().unwrap().state;
    assert_eq!(state.balances[0], expected[0] + 1);
    assert_eq!(state.applied, stopped.state.applied + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn snapshots_bound_the_replay_and_on_demand_snapshots_are_taken(layout: Layout) {
    let dir = temp(&format!("snap-{layout:?}"));
    let running = pipeline(&dir, layout)
        .snapshot_every(100)
        .start(Ledger::default)
        .unwrap();
    let mut c = Client::connect(running.local_addr());
    for i in 0..250 {
        c.send(&add(1, i));
        c.recv();
    }
    running.request_snapshot();
    // The request is served at the end of the next batch.
    c.send(&add(1, 1000));
    c.recv();
    let before = running.stop().unwrap();
    assert!(
        before
            .metrics
            .render()
            .contains("pipeline_snapshots_total 3"),
        "{}",
        before.metrics.render()
    );

    let again = pipeline(&dir, layout).start(Ledger::default).unwrap();
    let r = again.recovery();
    // The request is served at the end of the batch running when it arrives: the one of
    // the 250th command (whose reply may already be out) or of the 251st.
    let at = r.snapshot.expect("a snapshot");
    assert!(
        at == 250 || at == 251,
        "the on-demand snapshot is the newest: {at}"
    );
    assert_eq!(r.replayed, 251 - at);
    assert_eq!(again.stop().unwrap().state, before.state);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_failed_decode_is_skipped_under_the_skip_policy_and_the_rest_applied(layout: Layout) {
    let dir = temp(&format!("skip-{layout:?}"));
    let running = pipeline(&dir, layout)
        .on_failure(OnFailure::Skip)
        .start(Ledger::default)
        .unwrap();
    let mut c = Client::connect(running.local_addr());
    c.send(&add(2, 5));
    c.send(b"panic in decode");
    c.send(&add(2, 7));
    assert_eq!(i64::from_le_bytes(c.recv()[1..].try_into().unwrap()), 5);
    // The panicking command gets no reply; the next one is applied.
    assert_eq!(i64::from_le_bytes(c.recv()[1..].try_into().unwrap()), 12);
    assert!(running.failure().is_none());
    let stopped = running.stop().unwrap();
    assert_eq!(stopped.state.balances[2], 12);
    assert!(stopped
        .metrics
        .render()
        .contains("pipeline_commands_skipped_total 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_panic_in_the_logic_halts_the_pipeline_and_says_where(layout: Layout) {
    let dir = temp(&format!("halt-{layout:?}"));
    let running = pipeline(&dir, layout).start(Ledger::default).unwrap();
    let mut c = Client::connect(running.local_addr());
    c.send(&add(3, 1));
    c.recv();
    c.send(&add(3, i64::MIN));
    let failure = halted_by(&running);
    assert_eq!(failure.0, "logic");
    assert!(
        failure.1.contains("apply refused the command"),
        "{failure:?}"
    );
    let stopped = running.stop().unwrap();
    assert_eq!(stopped.state.balances[3], 1);
    assert_eq!(stopped.failure.map(|f| f.0).as_deref(), Some("logic"));
    // The journal holds the command that halted it: replaying it fails the same way, and
    // recovery says which record instead of panicking.
    match pipeline(&dir, layout).start(Ledger::default) {
        Err(PipelineError::Recover(RecoverError::Failed { sequence, failure })) => {
            assert_eq!(sequence, 1);
            assert!(failure.contains("apply refused the command"), "{failure}");
        }
        other => panic!("expected a failed replay, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn dead_letters_are_journaled_and_replay_skips_them_as_live_did(layout: Layout) {
    let dir = temp(&format!("dead-{layout:?}"));
    let running = pipeline(&dir, layout)
        .on_failure(OnFailure::DeadLetter)
        .start(Ledger::default)
        .unwrap();
    let mut c = Client::connect(running.local_addr());
    c.send(&add(4, 2));
    c.send(b"panic in decode");
    c.send(&add(4, 3));
    c.send(&add(5, i64::MIN)); // panics in apply
    c.send(&add(4, 4));
    for want in [2, 5, 9] {
        assert_eq!(i64::from_le_bytes(c.recv()[1..].try_into().unwrap()), want);
    }
    let stopped = running.stop().unwrap();
    assert!(stopped.failure.is_none());
    let text = stopped.metrics.render();
    for family in [
        "pipeline_ingress_to_journaled",
        "pipeline_ingress_to_decoded",
        "pipeline_ingress_to_logic",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }

    let mut letters = Reader::open(dir.join("dead-letters")).unwrap();
    let mut seen = Vec::new();
    while let Some(r) = letters.next().unwrap() {
        let (sequence, stage, failure, payload) =
            JournalDeadLetters::<(), fn(&(), &mut Vec<u8>)>::parse(r.payload()).unwrap();
        seen.push((sequence, stage.to_string(), payload.to_vec()));
        assert!(failure.contains("refused the command"), "{failure}");
    }
    assert_eq!(
        seen,
        vec![
            (1, "decode".to_string(), b"panic in decode".to_vec()),
            (3, "logic".to_string(), add(5, i64::MIN)),
        ]
    );

    let again = pipeline(&dir, layout)
        .on_failure(OnFailure::DeadLetter)
        .start(Ledger::default)
        .unwrap();
    assert_eq!(again.recovery().replayed, 5);
    assert_eq!(again.stop().unwrap().state, stopped.state);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_journal_behind_the_newest_snapshot_is_refused(layout: Layout) {
    let dir = temp(&format!("behind-{layout:?}"));
    let running = pipeline(&dir, layout).start(Ledger::default).unwrap();
    let mut c = Client::connect(running.local_addr());
    c.send(&add(0, 1));
    c.recv();
    running.request_snapshot();
    c.send(&add(0, 1));
    c.recv();
    running.stop().unwrap();
    std::fs::remove_dir_all(dir.join("journal")).unwrap();
    match pipeline(&dir, layout).start(Ledger::default) {
        Err(PipelineError::Inconsistent { journal, recovered }) => {
            assert_eq!(journal, 0);
            assert!(recovered == 1 || recovered == 2, "{recovered}");
        }
        other => panic!("expected Inconsistent, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn placement_keeps_the_pipeline_in_one_cache_and_refuses_busy_oversubscription() {
    let eight = Topology {
        online: (0..8).collect(),
        allowed: (0..8).collect(),
        cache_groups: vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]],
    };
    let plan = Pipeline::new("unused")
        .topology(eight.clone())
        .plan()
        .unwrap();
    let cores: Vec<usize> = plan.iter().map(|c| c.expect("a core each")).collect();
    let group = |c: usize| c / 4;
    assert!(
        cores.iter().all(|&c| group(c) == group(cores[0])),
        "{cores:?}"
    );
    let mut distinct = cores.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);

    let plan = Pipeline::new("unused")
        .topology(eight.clone())
        .core(Role::Logic, 6)
        .plan()
        .unwrap();
    assert_eq!(plan[Role::Logic as usize], Some(6));

    let two = Topology {
        online: vec![0, 1],
        allowed: vec![0, 1],
        cache_groups: vec![vec![0, 1]],
    };
    // Four cores or more: the parallel layout; fewer: the inline one (the event loop
    // does everything); the fused one runs journal and decode on the logic thread.
    assert_eq!(
        Pipeline::new("unused")
            .topology(eight.clone())
            .planned_layout()
            .unwrap(),
        Layout::Parallel
    );
    let auto = Pipeline::new("unused").topology(two.clone());
    assert_eq!(auto.planned_layout().unwrap(), Layout::Inline);
    let plan = auto.plan().unwrap();
    assert!(plan[Role::Reactor as usize].is_some());
    assert_eq!(plan[1..], [None, None, None]);
    let fused = Pipeline::new("unused")
        .topology(two.clone())
        .layout(Layout::Fused);
    let plan = fused.plan().unwrap();
    assert_eq!(plan[Role::Journal as usize], None);
    assert_eq!(plan[Role::Decode as usize], None);
    assert_ne!(plan[Role::Reactor as usize], plan[Role::Logic as usize]);
    // Pinning the journal or decode thread asks for the parallel layout.
    assert_eq!(
        Pipeline::new("unused")
            .topology(two.clone())
            .core(Role::Journal, 1)
            .planned_layout()
            .unwrap(),
        Layout::Parallel
    );

    // Busy-spinning: one stage thread fits two cores; three do not.
    let busy = Pipeline::new("unused")
        .topology(two.clone())
        .wait_strategy(WaitStrategy::busy_spin());
    assert!(busy.clone().layout(Layout::Fused).plan().is_ok());
    let busy = busy.layout(Layout::Parallel);
    assert!(matches!(
        busy.plan(),
        Err(PipelineError::Placement(PlacementError::Oversubscribed {
            busy: 3,
            cores: 2
        }))
    ));
    assert!(busy.allow_oversubscription(true).plan().is_ok());
    assert!(matches!(
        Pipeline::new("unused")
            .topology(two)
            .core(Role::Decode, 5)
            .plan(),
        Err(PipelineError::Placement(PlacementError::CoreUnavailable {
            core: 5,
            ..
        }))
    ));
}

/// Waits for the pipeline to report the failure that halted it.
fn halted_by(running: &peregrine::pipeline::Running<Ledger>) -> (String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(f) = running.failure() {
            return f;
        }
        assert!(std::time::Instant::now() < deadline, "no failure reported");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn a_panic_in_decode_halts_the_pipeline_and_names_decode(layout: Layout) {
    let dir = temp(&format!("decode-halt-{layout:?}"));
    let running = pipeline(&dir, layout).start(Ledger::default).unwrap();
    let mut c = Client::connect(running.local_addr());
    c.send(&add(7, 2));
    c.recv();
    c.send(b"panic in decode");
    c.send(&add(7, 3));
    let (stage, failure) = halted_by(&running);
    assert_eq!(stage, "decode");
    assert!(failure.contains("decode refused the command"), "{failure}");
    let stopped = running.stop().unwrap();
    // Nothing from the failing command on was applied.
    assert_eq!(stopped.state.balances[7], 2);
    assert_eq!(stopped.failure.map(|f| f.0).as_deref(), Some("decode"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn a_journal_error_halts_before_the_command_is_applied(layout: Layout) {
    let dir = temp(&format!("journal-halt-{layout:?}"));
    // A record of 10,000 bytes cannot fit in a segment of 8 KiB: the append fails.
    let running = pipeline(&dir, layout)
        .max_payload(16 * 1024)
        .journal(peregrine::journal::Config::default().segment_size(8 * 1024))
        .start(Ledger::default)
        .unwrap();
    let mut c = Client::connect(running.local_addr());
    c.send(&add(6, 1));
    assert_eq!(i64::from_le_bytes(c.recv()[1..].try_into().unwrap()), 1);
    c.send(&vec![0u8; 10_000]);
    let (stage, failure) = halted_by(&running);
    assert_eq!(stage, "journal");
    assert!(failure.contains("error"), "{failure}");
    let stopped = running.stop().unwrap();
    // The command the journal refused was never applied (it would have been rejected).
    assert_eq!(stopped.state.rejected, 0);
    assert_eq!(stopped.state.applied, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn replies_held_back_by_a_client_that_does_not_read_arrive_in_order(layout: Layout) {
    // Small rings, three replies a command, and a client that reads nothing for a while:
    // the socket's send buffer, then the output ring fill (in the inline layout, replies
    // then wait in the loop's overflow), then the input ring, and TCP pushes back on the
    // writer.
    let dir = temp(&format!("slow-reader-{layout:?}"));
    let running = pipeline(&dir, layout)
        .ring_size(64)
        .start(Ledger::default)
        .unwrap();
    const N: i64 = 200_000;
    let mut writer = Client::connect(running.local_addr());
    let mut reader = Client(writer.0.try_clone().unwrap());
    let w = std::thread::spawn(move || {
        for _ in 0..N {
            writer.send(&add(15, 1));
        }
        writer
    });
    std::thread::sleep(Duration::from_millis(300));
    for want in 1..=N {
        for _ in 0..3 {
            assert_eq!(
                i64::from_le_bytes(reader.recv()[1..].try_into().unwrap()),
                want
            );
        }
    }
    drop(w.join().unwrap());
    let stopped = running.stop().unwrap();
    assert_eq!(stopped.state.balances[15], N);
    let metrics = stopped.metrics.render();
    assert!(
        metrics.contains("pipeline_replies_undelivered_total 0"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every behaviour above, in both layouts (on any machine: the layout is set, not
/// chosen by the core count).
macro_rules! in_layout {
    ($name: ident, $layout: expr) => {
        mod $name {
            use super::*;
            #[test]
            fn replies_come_back_in_order_per_connection_and_a_restart_replays_the_journal() {
                super::replies_come_back_in_order_per_connection_and_a_restart_replays_the_journal(
                    $layout,
                )
            }
            #[test]
            fn snapshots_bound_the_replay_and_on_demand_snapshots_are_taken() {
                super::snapshots_bound_the_replay_and_on_demand_snapshots_are_taken($layout)
            }
            #[test]
            fn a_failed_decode_is_skipped_under_the_skip_policy_and_the_rest_applied() {
                super::a_failed_decode_is_skipped_under_the_skip_policy_and_the_rest_applied(
                    $layout,
                )
            }
            #[test]
            fn a_panic_in_the_logic_halts_the_pipeline_and_says_where() {
                super::a_panic_in_the_logic_halts_the_pipeline_and_says_where($layout)
            }
            #[test]
            fn dead_letters_are_journaled_and_replay_skips_them_as_live_did() {
                super::dead_letters_are_journaled_and_replay_skips_them_as_live_did($layout)
            }
            #[test]
            fn a_journal_behind_the_newest_snapshot_is_refused() {
                super::a_journal_behind_the_newest_snapshot_is_refused($layout)
            }
            #[test]
            fn a_panic_in_decode_halts_the_pipeline_and_names_decode() {
                super::a_panic_in_decode_halts_the_pipeline_and_names_decode($layout)
            }
            #[test]
            fn a_journal_error_halts_before_the_command_is_applied() {
                super::a_journal_error_halts_before_the_command_is_applied($layout)
            }
            #[test]
            fn replies_held_back_by_a_client_that_does_not_read_arrive_in_order() {
                super::replies_held_back_by_a_client_that_does_not_read_arrive_in_order($layout)
            }
        }
    };
}

in_layout!(parallel, Layout::Parallel);
in_layout!(fused, Layout::Fused);
in_layout!(inline, Layout::Inline);

/// A logic that takes at least a microsecond per command, so that a replay of a few
/// hundred thousand commands lasts long enough to be reported on along the way.
#[derive(Debug, Default)]
struct Slow {
    applied: u64,
}

impl Snapshot for Slow {
    fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.applied.to_le_bytes());
    }
    fn load(bytes: &[u8]) -> Result<Self, BoxError> {
        let applied = u64::from_le_bytes(bytes.try_into().map_err(|_| "not a Slow snapshot")?);
        Ok(Slow { applied })
    }
}

impl Logic for Slow {
    type Command = ();

    fn decode(_: &[u8]) {}

    fn apply(&mut self, _: &(), _: &mut Reply<'_>) {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_micros(1) {
            std::hint::spin_loop();
        }
        self.applied += 1;
    }
}

#[test]
fn recovery_reports_its_progress_and_its_end() {
    use peregrine::journal::{Appender, Config};
    use peregrine::pipeline::RecoveryProgress;
    use std::sync::{Arc, Mutex};

    const RECORDS: u64 = 400_000;
    let dir = temp("recovery-progress");
    let (mut appender, _) =
        Appender::open(dir.join("journal"), Config::default().segment_size(4 << 20)).unwrap();
    for i in 0..RECORDS {
        appender.append(&i.to_le_bytes()).unwrap();
    }
    drop(appender);

    let seen: Arc<Mutex<Vec<RecoveryProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let recovered = Pipeline::new(&dir)
        .on_recovery_progress(move |p| sink.lock().unwrap().push(*p))
        .recover(Slow::default)
        .unwrap();
    assert_eq!(recovered.state.applied, RECORDS);

    let seen = seen.lock().unwrap();
    let (last, along) = seen.split_last().expect("a final report");
    assert!(last.done);
    assert_eq!(
        (last.replayed, last.next_sequence, last.end_sequence),
        (RECORDS, RECORDS, RECORDS)
    );
    assert_eq!(last.snapshot, None);
    // At least 400 ms of replay, reported at most every 100 ms, checked every 65,536
    // records (65 ms here): at least two reports along the way.
    assert!(along.len() >= 2, "{seen:?}");
    for (i, p) in along.iter().enumerate() {
        assert!(!p.done, "{p:?}");
        assert_eq!(p.end_sequence, RECORDS, "known from the start: {p:?}");
        assert!(p.replayed > 0 && p.replayed < RECORDS, "{p:?}");
        assert_eq!(p.next_sequence, p.replayed, "no snapshot: {p:?}");
        if i > 0 {
            assert!(p.replayed > along[i - 1].replayed, "{seen:?}");
            assert!(p.elapsed >= along[i - 1].elapsed + Duration::from_millis(100));
        }
    }
    drop(seen);
    std::fs::remove_dir_all(&dir).unwrap();
}
