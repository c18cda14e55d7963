//! Direct egress: an `Egress` writes a response straight to an idle connection's socket,
//! and falls back to the loop (keeping each connection's order) when the socket would
//! block or the loop holds bytes for it. Each test runs on both backends.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use peregrine_reactor::{
    BackendChoice, CloseReason, Codec, Config, ConnId, Frame, FrameError, LengthPrefixed, Reactor,
    ReactorError, ReactorHandle, HEADER_LEN, WRITTEN_DIRECTLY,
};
use peregrine_ring::{single_producer, WaitStrategy};

const LONG: Duration = Duration::from_secs(20);

/// A payload of `len` bytes that carries its frame number and a pattern derived from it.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(4)];
    p[..4].copy_from_slice(&i.to_le_bytes());
    for (k, b) in p[4..].iter_mut().enumerate() {
        *b = (i as usize + k) as u8;
    }
    p
}

fn idle_connections_are_written_directly(backend: BackendChoice) {
    let handle = echo_server(config(backend), 64, None);
    let mut s = connect(&handle);
    for i in 0..200 {
        round_trip(&mut s, &numbered(i, 16));
    }
    // Counted once the send returns, which may be after the client has the bytes.
    eventually("the last write counted", LONG, || {
        handle.stats().frames_out == 200
    });
    // One request at a time: the loop never holds a response, so none goes through it.
    assert_eq!(handle.stats().direct_out, 200);
    handle.shutdown().unwrap();
}

fn direct_egress_can_be_turned_off(backend: BackendChoice) {
    let cfg = Config {
        direct_egress: false,
        ..config(backend)
    };
    let handle = echo_server(cfg, 64, None);
    let mut s = connect(&handle);
    for i in 0..50 {
        round_trip(&mut s, &numbered(i, 16));
    }
    assert_eq!(handle.stats().direct_out, 0);
    assert_eq!(handle.stats().frames_out, 50);
    handle.shutdown().unwrap();
}

/// Regression guard for the handoff: a client that stops reading fills the server's send
/// buffer, so a direct write comes up short; its tail and every later response must go
/// out through the loop, after it and in order, and direct writes resume afterwards.
fn order_kept_when_direct_writes_block(backend: BackendChoice) {
    let handle = echo_server(config(backend), 64, None);
    const FRAMES: u32 = 3000;
    // Sizes up to 32 KiB, so the send buffer fills in the middle of a frame.
    let size = |i: u32| 1 + (i as usize * 7919) % (32 * 1024);
    let mut writer_side = connect(&handle);
    let mut reader_side = writer_side.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..FRAMES {
            writer_side
                .write_all(&frame(&numbered(i, size(i))))
                .unwrap();
        }
    });
    // Let the server's send buffer and both rings fill while nobody reads.
    eventually("responses queue on the loop", LONG, || {
        let s = handle.stats();
        s.frames_out > s.direct_out
    });
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..FRAMES {
        let got = read_frame(&mut reader_side).unwrap();
        assert!(
            got == numbered(i, size(i)),
            "frame {i} out of order or torn"
        );
    }
    writer.join().unwrap();
    // A direct write is counted once its send returns, which may be after the client
    // has read it; every frame arrived above, so the count must catch up.
    eventually("every write counted", LONG, || {
        handle.stats().frames_out == FRAMES as u64
    });
    let stats = handle.stats();
    assert_eq!(stats.frames_out, FRAMES as u64);
    // With one publisher, the first response routed through the loop follows a direct
    // write that came up short (nothing else makes a connection busy): both paths ran.
    assert!(stats.direct_out > 0 && stats.direct_out < FRAMES as u64);
    // Idle again: back to direct writes.
    let before = stats.direct_out;
    eventually("the loop settles the connection", LONG, || {
        let mut s = reader_side.try_clone().unwrap();
        round_trip(&mut s, b"after");
        handle.stats().direct_out > before
    });
    assert_eq!(handle.stats().closed_total(), 0);
    handle.shutdown().unwrap();
}

/// An echo server whose stage publishes every other response through the raw producer
/// (which carries no per-connection mark): order must still hold.
fn raw_producer_server(backend: BackendChoice) -> ReactorHandle {
    let cfg = config(backend);
    let max = cfg.max_frame;
    let reactor = Reactor::bind(cfg).unwrap();
    let mut out = single_producer(64, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let pid = out.poller("egress").add().unwrap();
    let (out_producer, mut out_ring) = out.build().unwrap();
    let poller = out_ring.take_poller(pid).unwrap();
    let mut egress = reactor.egress(out_producer);
    assert!(egress.writes_directly());
    let mut ingress = single_producer(64, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    ingress
        .stage("echo", move |f: &Frame, seq: u64, _: bool| {
            if seq % 2 == 1 {
                let _ = egress.producer().publish(|o| o.set(f.conn, &f.payload));
                egress.wake();
            } else {
                let _ = egress.publish(|o| o.set(f.conn, &f.payload));
            }
        })
        .add()
        .unwrap();
    let (in_producer, _) = ingress.build().unwrap();
    reactor.spawn(in_producer, Some(poller)).unwrap()
}

fn raw_producer_keeps_order(backend: BackendChoice) {
    let handle = raw_producer_server(backend);
    let mut s = connect(&handle);
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend_from_slice(&frame(&numbered(i, 8 + i as usize % 100)));
    }
    s.write_all(&burst).unwrap();
    for i in 0..500 {
        assert_eq!(
            read_frame(&mut s).unwrap(),
            numbered(i, 8 + i as usize % 100)
        );
    }
    // Only frame 0 can have gone out before the raw producer turned direct writes off.
    assert!(handle.stats().direct_out <= 1);
    handle.shutdown().unwrap();
}

/// Clients that vanish while their responses are being written directly: the server
/// closes them and keeps serving.
fn clients_vanish_mid_write(backend: BackendChoice) {
    let handle = echo_server(config(backend), 256, None);
    let payload = vec![3u8; 8 * 1024];
    let one = frame(&payload);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let mut s = connect(&handle);
            let one = one.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if s.write_all(&one).is_err() {
                        break;
                    }
                }
                // Dropped unread: the server's writes fail or find a reset socket.
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eventually("every vanished client closed", LONG, || {
        handle.stats().closed_total() == 8
    });
    let mut s = connect(&handle);
    round_trip(&mut s, b"still serving");
    assert_eq!(handle.stats().closed(CloseReason::SlowReader), 0);
    handle.shutdown().unwrap();
}

/// Length-prefixed frames, but decoding the payload `boom` panics (a buggy codec).
struct PanicsOnBoom;

impl Codec for PanicsOnBoom {
    type In = Frame;
    type Out = Frame;
    fn frame_len(&mut self, buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
        LengthPrefixed.frame_len(buf, max_frame)
    }
    fn decode(&mut self, conn: ConnId, frame: &[u8], slot: &mut Frame) {
        assert_ne!(&frame[HEADER_LEN..], b"boom", "the codec gives up");
        LengthPrefixed.decode(conn, frame, slot);
    }
    fn destination(&self, event: &Frame) -> ConnId {
        event.conn
    }
    fn encode(&mut self, event: &Frame, out: &mut Vec<u8>) {
        LengthPrefixed.encode(event, out);
    }
    fn egress_encoder(&self) -> Option<(Self, Frame)> {
        Some((PanicsOnBoom, Frame::default()))
    }
}

/// Regression: a loop that panicked left its connections open in the direct-write table,
/// so an `Egress` went on writing straight to fds that the loop's backend had closed as it
/// dropped (and that the process may since have reused for another socket or a file).
fn no_direct_write_after_the_loop_panics(backend: BackendChoice) {
    let cfg = config(backend);
    let max = cfg.max_frame;
    let reactor = Reactor::with_codec(cfg, PanicsOnBoom).unwrap();
    let mut out = single_producer(64, move || Frame::with_capacity(max)).unwrap();
    let out_id = out.poller("egress").add().unwrap();
    let (out_producer, mut out_ring) = out.build().unwrap();
    let egress_poller = out_ring.take_poller(out_id).unwrap();
    let mut egress = reactor.egress(out_producer);
    assert!(egress.writes_directly());
    let mut ingress = single_producer(64, move || Frame::with_capacity(max)).unwrap();
    let in_id = ingress.poller("test").add().unwrap();
    let (in_producer, mut in_ring) = ingress.build().unwrap();
    let mut requests = in_ring.take_poller(in_id).unwrap();
    let handle = reactor.spawn(in_producer, Some(egress_poller)).unwrap();

    let mut s = connect(&handle);
    s.write_all(&frame(b"hello")).unwrap();
    let mut conn = None;
    eventually("the request arrives", LONG, || {
        requests.poll(|f: &Frame, _, _| conn = Some(f.conn));
        conn.is_some()
    });
    let conn = conn.unwrap();
    let sent = egress.publish(|o| o.set(conn, b"hello")).unwrap();
    assert_eq!(
        sent, WRITTEN_DIRECTLY,
        "an idle connection is written directly"
    );
    assert_eq!(read_frame(&mut s).unwrap(), b"hello");

    s.write_all(&frame(b"boom")).unwrap();
    eventually("the dead loop's sockets close", LONG, || {
        closed_by_server(&mut s)
    });
    assert!(matches!(handle.shutdown(), Err(ReactorError::Panicked)));
    let late = egress.try_publish(|o| o.set(conn, b"late"));
    assert!(
        !matches!(late, Ok(WRITTEN_DIRECTLY)),
        "written straight to the fd of a connection whose loop is gone"
    );
}

macro_rules! on_backend {
    ($name: ident, $choice: expr) => {
        mod $name {
            use super::*;
            #[test]
            fn idle_connections_are_written_directly() {
                super::idle_connections_are_written_directly($choice)
            }
            #[test]
            fn direct_egress_can_be_turned_off() {
                super::direct_egress_can_be_turned_off($choice)
            }
            #[test]
            fn order_kept_when_direct_writes_block() {
                super::order_kept_when_direct_writes_block($choice)
            }
            #[test]
            fn raw_producer_keeps_order() {
                super::raw_producer_keeps_order($choice)
            }
            #[test]
            fn clients_vanish_mid_write() {
                super::clients_vanish_mid_write($choice)
            }
            #[test]
            fn no_direct_write_after_the_loop_panics() {
                super::no_direct_write_after_the_loop_panics($choice)
            }
        }
    };
}

on_backend!(mio, BackendChoice::Mio);
on_backend!(io_uring, BackendChoice::IoUring);
