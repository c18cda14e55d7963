//! An echo server on the reactor, and clients, shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use peregrine_reactor::{
    BackendChoice, BackendKind, Config, Frame, LengthPrefixed, Reactor, ReactorHandle,
};
use peregrine_ring::{single_producer, WaitStrategy};

/// A gate the echo stage waits on before handling each frame (a stalled consumer).
#[derive(Debug, Default)]
pub struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            closed: Mutex::new(true),
            cv: Condvar::new(),
        })
    }
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.cv.wait(closed).unwrap();
        }
    }
}

pub fn config(backend: BackendChoice) -> Config {
    Config {
        backend,
        ..Config::with_addr("127.0.0.1:0".parse().unwrap())
    }
}

/// Asserts that the loop runs on what was asked for; for io_uring, either it does or the
/// documented fallback happened (mio, with the kernel's reason recorded).
pub fn check_backend(handle: &ReactorHandle, asked: BackendChoice) {
    match asked {
        BackendChoice::Mio => {
            assert_eq!(handle.backend(), BackendKind::Mio);
            assert!(handle.fallback_reason().is_none());
        }
        _ => match handle.backend() {
            BackendKind::IoUring => assert!(handle.fallback_reason().is_none()),
            BackendKind::Mio => {
                let reason = handle.fallback_reason().expect("fallback must say why");
                eprintln!("io_uring unavailable, fell back to mio: {reason}");
            }
        },
    }
}

/// Starts an echo server: reactor -> ingress ring -> `echo` stage -> egress ring -> reactor.
pub fn echo_server(config: Config, ring: usize, gate: Option<Arc<Gate>>) -> ReactorHandle {
    let asked = config.backend;
    let max = config.max_frame;
    let reactor = Reactor::bind(config).expect("bind");
    let mut out = single_producer(ring, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let pid = out.poller("egress").add().unwrap();
    let (out_producer, mut out_ring) = out.build().unwrap();
    let poller = out_ring.take_poller(pid).unwrap();
    let mut egress = reactor.egress(out_producer);
    let mut ingress = single_producer(ring, move || Frame::with_capacity(max))
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    ingress
        .stage("echo", move |f: &Frame, _: u64, _: bool| {
            if let Some(g) = &gate {
                g.pass();
            }
            let _ = egress.publish(|o| o.set(f.conn, &f.payload));
        })
        .add()
        .unwrap();
    let (in_producer, _in_ring) = ingress.build().unwrap();
    let handle = reactor.spawn(in_producer, Some(poller)).expect("spawn");
    check_backend(&handle, asked);
    handle
}

pub fn connect(handle: &ReactorHandle) -> TcpStream {
    let s = TcpStream::connect(handle.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    LengthPrefixed::write_frame(payload, &mut v);
    v
}

pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let mut payload = vec![0u8; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut payload)?;
    Ok(payload)
}

/// Sends one frame and expects it back.
pub fn round_trip(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&frame(payload)).unwrap();
    assert_eq!(read_frame(s).unwrap(), payload);
}

/// True once the server has closed `s` (end of stream or reset).
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
