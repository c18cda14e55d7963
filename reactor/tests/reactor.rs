//! Integration tests, each run on both backends: `mio::` forces mio; `io_uring::` asks
//! for io_uring and, where the kernel refuses it, asserts the documented fallback.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use peregrine_reactor::{BackendChoice, CloseReason, RateAction, RateLimit};

const LONG: Duration = Duration::from_secs(20);

fn many_clients_in_order(backend: BackendChoice) {
    let handle = echo_server(config(backend), 256, None);
    const CLIENTS: usize = 24;
    const FRAMES: u32 = 300;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut s = connect(&handle);
            std::thread::spawn(move || {
                let mut burst = Vec::new();
                for i in 0..FRAMES {
                    let payload = format!("client {c} frame {i} {}", "x".repeat(i as usize % 50));
                    burst.extend_from_slice(&frame(payload.as_bytes()));
                    if i % 50 == 49 {
                        s.write_all(&burst).unwrap();
                        burst.clear();
                    }
                }
                s.write_all(&burst).unwrap();
                for i in 0..FRAMES {
                    let want = format!("client {c} frame {i} {}", "x".repeat(i as usize % 50));
                    assert_eq!(read_frame(&mut s).unwrap(), want.as_bytes(), "client {c}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = handle.stats();
    assert_eq!(stats.frames_in, CLIENTS as u64 * FRAMES as u64);
    eventually("all responses out", LONG, || {
        handle.stats().frames_out == CLIENTS as u64 * FRAMES as u64
    });
    eventually("clients' closes counted", LONG, || {
        handle.stats().closed(CloseReason::PeerClosed) == CLIENTS as u64
    });
    assert_eq!(handle.stats().closed_total(), CLIENTS as u64);
    handle.shutdown().unwrap();
}

fn back_pressure(backend: BackendChoice) {
    let gate = Gate::closed();
    let handle = echo_server(config(backend), 8, Some(Arc::clone(&gate)));
    const FRAMES: usize = 16_000;
    let payload = vec![7u8; 1024];
    let mut writer_side = connect(&handle);
    let mut reader_side = writer_side.try_clone().unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = Arc::clone(&sent);
    let one = frame(&payload);
    let writer = std::thread::spawn(move || {
        for _ in 0..FRAMES {
            writer_side.write_all(&one).unwrap();
            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    eventually("the ring fills", LONG, || handle.stats().ring_full > 0);
    // The stalled consumer makes the client block: its writes stop progressing.
    std::thread::sleep(Duration::from_millis(200));
    let before = sent.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let after = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        before, after,
        "client should be blocked by TCP back-pressure"
    );
    assert!(
        after < FRAMES,
        "everything was sent despite a stalled consumer"
    );
    gate.open();
    for i in 0..FRAMES {
        assert_eq!(read_frame(&mut reader_side).unwrap(), payload, "frame {i}");
    }
    writer.join().unwrap();
    let stats = handle.stats();
    assert_eq!(stats.frames_in, FRAMES as u64);
    assert_eq!(stats.closed_total(), 0);
    handle.shutdown().unwrap();
}

fn bad_frame_closes_only_its_connection(
    backend: BackendChoice,
    bytes: Vec<u8>,
    reason: CloseReason,
) {
    let mut cfg = config(backend);
    cfg.max_frame = 1024;
    let handle = echo_server(cfg, 64, None);
    let mut good = connect(&handle);
    round_trip(&mut good, b"before");
    let mut bad = connect(&handle);
    bad.write_all(&frame(b"fine")).unwrap();
    assert_eq!(read_frame(&mut bad).unwrap(), b"fine");
    bad.write_all(&bytes).unwrap();
    assert!(closed_by_server(&mut bad));
    eventually("reason counted", LONG, || {
        handle.stats().closed(reason) == 1
    });
    round_trip(&mut good, b"after");
    let stats = handle.stats();
    assert_eq!(stats.closed_total(), 1);
    assert_eq!(stats.open, 1);
    handle.shutdown().unwrap();
}

fn oversized(backend: BackendChoice) {
    let mut bytes = 5000u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[1; 100]);
    bad_frame_closes_only_its_connection(backend, bytes, CloseReason::Oversized);
}

fn malformed(backend: BackendChoice) {
    bad_frame_closes_only_its_connection(backend, vec![0, 0, 0, 0, 9, 9], CloseReason::Malformed);
}

fn connection_limit(backend: BackendChoice) {
    let mut cfg = config(backend);
    cfg.max_connections = 2;
    let handle = echo_server(cfg, 64, None);
    let mut a = connect(&handle);
    let mut b = connect(&handle);
    round_trip(&mut a, b"a");
    round_trip(&mut b, b"b");
    let mut c = connect(&handle);
    assert!(closed_by_server(&mut c));
    eventually("refusal counted", LONG, || {
        handle.stats().closed(CloseReason::ConnectionLimit) == 1
    });
    round_trip(&mut a, b"a again");
    drop(b);
    eventually("b closed", LONG, || handle.stats().open == 1);
    let mut d = connect(&handle);
    round_trip(&mut d, b"d takes b's place");
    handle.shutdown().unwrap();
}

fn disconnect_mid_frame(backend: BackendChoice) {
    let handle = echo_server(config(backend), 64, None);
    let mut other = connect(&handle);
    let mut s = connect(&handle);
    round_trip(&mut s, b"whole");
    let mut partial = frame(&[3u8; 100]);
    partial.truncate(50);
    s.write_all(&partial).unwrap();
    drop(s);
    eventually("mid-frame close counted", LONG, || {
        handle.stats().closed(CloseReason::ClosedMidFrame) == 1
    });
    assert_eq!(handle.stats().frames_in, 1);
    round_trip(&mut other, b"unaffected");
    handle.shutdown().unwrap();
}

fn slow_client_times_out(backend: BackendChoice) {
    let mut cfg = config(backend);
    cfg.frame_timeout = Some(Duration::from_millis(150));
    cfg.idle_timeout = Some(Duration::from_millis(600));
    let handle = echo_server(cfg, 64, None);
    let mut slow = connect(&handle);
    slow.write_all(&frame(b"started")[..6]).unwrap();
    let mut idle = connect(&handle);
    assert!(closed_by_server(&mut slow));
    assert!(closed_by_server(&mut idle));
    let stats = handle.stats();
    assert_eq!(stats.closed(CloseReason::FrameTimeout), 1);
    assert_eq!(stats.closed(CloseReason::IdleTimeout), 1);
    handle.shutdown().unwrap();
}

fn rate_limit(backend: BackendChoice) {
    let mut cfg = config(backend);
    cfg.rate_limit = Some(RateLimit {
        frames_per_sec: 200.0,
        burst: 10.0,
        action: RateAction::Throttle,
    });
    let handle = echo_server(cfg.clone(), 64, None);
    let mut s = connect(&handle);
    let burst: Vec<u8> = (0..50u8).flat_map(|i| frame(&[i; 8])).collect();
    s.write_all(&burst).unwrap();
    for i in 0..50u8 {
        assert_eq!(read_frame(&mut s).unwrap(), [i; 8]);
    }
    assert!(handle.stats().throttled > 0);
    handle.shutdown().unwrap();

    cfg.rate_limit.as_mut().unwrap().action = RateAction::Close;
    let handle = echo_server(cfg, 64, None);
    let mut s = connect(&handle);
    s.write_all(&burst).unwrap();
    assert!(closed_by_server(&mut s));
    eventually("rate close counted", LONG, || {
        handle.stats().closed(CloseReason::RateLimited) == 1
    });
    handle.shutdown().unwrap();
}

fn client_that_does_not_read(backend: BackendChoice) {
    // Regression: a connection paused because its responses piled up stayed paused when
    // the flush after the pause emptied its queue.
    let mut cfg = config(backend);
    cfg.write_high_water = 64 * 1024;
    let handle = echo_server(cfg, 64, None);
    const FRAMES: usize = 12_000;
    let payload = vec![5u8; 1000];
    let mut writer_side = connect(&handle);
    let mut reader_side = writer_side.try_clone().unwrap();
    let one = frame(&payload);
    let writer = std::thread::spawn(move || {
        for _ in 0..FRAMES {
            writer_side.write_all(&one).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..FRAMES {
        assert_eq!(read_frame(&mut reader_side).unwrap(), payload, "frame {i}");
    }
    writer.join().unwrap();
    assert_eq!(handle.stats().closed_total(), 0);
    handle.shutdown().unwrap();
}

/// A busy-polling loop (io_uring then polls its completion queue without entering the
/// kernel) still sees every frame and answers in order.
fn busy_poll(backend: BackendChoice) {
    let cfg = peregrine_reactor::Config {
        busy_poll: Some(Duration::from_millis(5)),
        ..config(backend)
    };
    let handle = echo_server(cfg, 64, None);
    let mut s = connect(&handle);
    for i in 0..300u32 {
        round_trip(&mut s, &i.to_le_bytes());
        if i % 100 == 99 {
            // Let the polling window lapse so the loop sleeps and is woken again.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    handle.shutdown().unwrap();
}

macro_rules! on_backend {
    ($name: ident, $choice: expr) => {
        mod $name {
            use super::*;
            #[test]
            fn many_clients_in_order() {
                super::many_clients_in_order($choice)
            }
            #[test]
            fn back_pressure() {
                super::back_pressure($choice)
            }
            #[test]
            fn oversized() {
                super::oversized($choice)
            }
            #[test]
            fn malformed() {
                super::malformed($choice)
            }
            #[test]
            fn connection_limit() {
                super::connection_limit($choice)
            }
            #[test]
            fn disconnect_mid_frame() {
                super::disconnect_mid_frame($choice)
            }
            #[test]
            fn slow_client_times_out() {
                super::slow_client_times_out($choice)
            }
            #[test]
            fn client_that_does_not_read() {
                super::client_that_does_not_read($choice)
            }
            #[test]
            fn rate_limit() {
                super::rate_limit($choice)
            }
            #[test]
            fn busy_poll() {
                super::busy_poll($choice)
            }
        }
    };
}

on_backend!(mio, BackendChoice::Mio);
on_backend!(io_uring, BackendChoice::IoUring);
