//! Journal stage, snapshots, recovery and the durable dead-letter sink.

use std::path::PathBuf;
use std::sync::Arc;

use peregrine::journal::{Appender, Config, Reader};
use peregrine::journaled::{recover, JournalDeadLetters, JournalStage, Snapshot, SnapshotStore};
use peregrine::ring::{single_producer, BoxError, FailurePolicy, WaitStrategy};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[derive(Debug, Default, PartialEq)]
struct Sum {
    total: u64,
    count: u64,
}

impl Snapshot for Sum {
    fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.total.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
    }
    fn load(bytes: &[u8]) -> Result<Self, BoxError> {
        if bytes.len() != 16 {
            return Err("bad snapshot length".into());
        }
        Ok(Sum {
            total: u64::from_le_bytes(bytes[..8].try_into()?),
            count: u64::from_le_bytes(bytes[8..].try_into()?),
        })
    }
}

fn apply(s: &mut Sum, _seq: u64, payload: &[u8]) {
    s.total += u64::from_le_bytes(payload.try_into().unwrap());
    s.count += 1;
}

fn journal_values(dir: &PathBuf, values: std::ops::Range<u64>) {
    let (appender, _) = Appender::open(dir, Config::default().segment_size(64 * 1024)).unwrap();
    let mut b = single_producer(16, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.try_stage(
        "journal",
        JournalStage::new(appender, |e: &u64, out: &mut Vec<u8>| {
            out.extend_from_slice(&e.to_le_bytes())
        }),
    )
    .add()
    .unwrap();
    let (mut p, ring) = b.build().unwrap();
    for v in values {
        p.publish(|e| *e = v).unwrap();
    }
    drop(p);
    assert!(ring.failure().is_none());
}

#[test]
fn recovery_uses_the_newest_intact_snapshot_then_replays_the_rest() {
    let dir = temp("recover");
    let journal = dir.join("journal");
    journal_values(&journal, 0..1000);
    let store = SnapshotStore::open(dir.join("snapshots")).unwrap();

    // A snapshot after 600 events, computed from the journal itself.
    let mut at_600 = Sum::default();
    let mut reader = Reader::open(&journal).unwrap();
    while let Some(r) = reader.next().unwrap() {
        if r.sequence() == 600 {
            break;
        }
        apply(&mut at_600, r.sequence(), r.payload());
    }
    store.save(600, &at_600).unwrap();
    // A newer but damaged snapshot must be skipped.
    let damaged = store.save(900, &Sum { total: 1, count: 1 }).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&damaged, bytes).unwrap();

    let r = recover(&journal, &store, Sum::default, apply).unwrap();
    assert_eq!(r.snapshot, Some(600));
    assert_eq!(r.replayed, 400);
    assert_eq!(r.next_sequence, 1000);
    assert_eq!(
        r.state,
        Sum {
            total: (0..1000).sum(),
            count: 1000
        }
    );

    // Without snapshots: a full replay gives the same state.
    let empty = SnapshotStore::open(dir.join("none")).unwrap();
    let full = recover(&journal, &empty, Sum::default, apply).unwrap();
    assert_eq!(
        (full.state, full.replayed, full.snapshot),
        (r.state, 1000, None)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_journal_recovers_to_the_initial_state() {
    let dir = temp("fresh");
    let store = SnapshotStore::open(dir.join("snapshots")).unwrap();
    let r = recover(&dir.join("journal"), &store, Sum::default, apply).unwrap();
    assert_eq!(
        (r.state, r.next_sequence, r.replayed),
        (Sum::default(), 0, 0)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dead_letters_are_journaled() {
    let dir = temp("dead");
    let (appender, _) =
        Appender::open(dir.join("dead"), Config::default().segment_size(64 * 1024)).unwrap();
    let sink = Arc::new(JournalDeadLetters::new(
        appender,
        |e: &u64, out: &mut Vec<u8>| out.extend_from_slice(&e.to_le_bytes()),
    ));
    let mut b = single_producer(16, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    b.stage("picky", |e: &u64, _: u64, _: bool| {
        assert!(*e % 10 != 3, "no threes")
    })
    .on_failure(FailurePolicy::dead_letter(sink.clone()))
    .add()
    .unwrap();
    let (mut p, _ring) = b.build().unwrap();
    for v in 0..30u64 {
        p.publish(|e| *e = v).unwrap();
    }
    drop(p);
    drop(sink);
    let mut reader = Reader::open(dir.join("dead")).unwrap();
    let mut letters = Vec::new();
    while let Some(r) = reader.next().unwrap() {
        let (seq, stage, failure, event) =
            JournalDeadLetters::<u64, fn(&u64, &mut Vec<u8>)>::parse(r.payload()).unwrap();
        assert_eq!(stage, "picky");
        assert!(failure.contains("no threes"), "{failure}");
        letters.push((seq, u64::from_le_bytes(event.try_into().unwrap())));
    }
    assert_eq!(letters, [(3, 3), (13, 13), (23, 23)]);
    std::fs::remove_dir_all(&dir).unwrap();
}
